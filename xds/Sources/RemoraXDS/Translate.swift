import Foundation
import RemoraXDSProto
import SwiftProtobuf

public typealias Listener = Envoy_Config_Listener_V3_Listener
public typealias HCM = Envoy_Extensions_Filters_Network_HttpConnectionManager_V3_HttpConnectionManager
public typealias TcpProxy = Envoy_Extensions_Filters_Network_TcpProxy_V3_TcpProxy
public typealias Router = Envoy_Extensions_Filters_Http_Router_V3_Router
public typealias HTTPFault = Envoy_Extensions_Filters_Http_Fault_V3_HTTPFault
public typealias LocalRateLimit = Envoy_Extensions_Filters_Http_LocalRatelimit_V3_LocalRateLimit
public typealias FileAccessLog = Envoy_Extensions_AccessLoggers_File_V3_FileAccessLog
public typealias RouteConfiguration = Envoy_Config_Route_V3_RouteConfiguration
public typealias Cluster = Envoy_Config_Cluster_V3_Cluster
public typealias ClusterLoadAssignment = Envoy_Config_Endpoint_V3_ClusterLoadAssignment
public typealias UpstreamHTTPOptions = Envoy_Extensions_Upstreams_Http_V3_HttpProtocolOptions
public typealias Duration = Google_Protobuf_Duration
public typealias Secret = Envoy_Extensions_TransportSockets_Tls_V3_Secret
public typealias SdsSecretConfig = Envoy_Extensions_TransportSockets_Tls_V3_SdsSecretConfig

/// The xDS resource types remora-xds subscribes to (ADS, state of the world).
public enum XDSType: String, CaseIterable, Sendable {
    case listener = "type.googleapis.com/envoy.config.listener.v3.Listener"
    case route = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    case cluster = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    case endpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    /// SDS over the ADS stream: the secrets the TLS contexts name (`sds_config: { ads: {} }`).
    case secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

    /// Envoy's short names (LDS, RDS, CDS, EDS, SDS), for logs.
    public var short: String {
        switch self { case .listener: "LDS"; case .route: "RDS"; case .cluster: "CDS"; case .endpoint: "EDS"; case .secret: "SDS" }
    }
    /// Wildcard types get everything; the others only the names the accepted resources reference.
    public var isWildcard: Bool { self == .listener || self == .cluster }
}

/// The accepted xDS state: every resource by name, per type.
public struct XDSResources: Sendable {
    public var listeners: [String: Listener] = [:]
    public var routes: [String: RouteConfiguration] = [:]
    public var clusters: [String: Cluster] = [:]
    public var endpoints: [String: ClusterLoadAssignment] = [:]
    public var secrets: [String: Secret] = [:]
    public init() {}

    /// Decodes a response's resources into this state's `type` (replacing it: state of the world).
    /// A resource of another type, or one that does not decode, is an error.
    public mutating func replace(_ type: XDSType, with resources: [Google_Protobuf_Any]) throws(XDSError) {
        do {
            switch type {
            case .listener: listeners = try Self.decode(resources, type) { (m: Listener) in m.name }
            case .route: routes = try Self.decode(resources, type) { (m: RouteConfiguration) in m.name }
            case .cluster: clusters = try Self.decode(resources, type) { (m: Cluster) in m.name }
            case .endpoint: endpoints = try Self.decode(resources, type) { (m: ClusterLoadAssignment) in m.clusterName }
            case .secret: secrets = try Self.decode(resources, type) { (m: Secret) in m.name }
            }
        } catch let e as XDSError { throw e } catch { throw XDSError("\(type.short): \(error)") }
    }

    /// Delta: `updated` replace (or add) resources by name, `removed` names go.
    public mutating func apply(_ type: XDSType, updated: [Envoy_Service_Discovery_V3_Resource], removed: [String]) throws(XDSError) {
        for n in removed { remove(type, name: n) }
        do {
            for res in updated {
                guard res.hasResource else { throw XDSError("\(type.short): resource \(res.name) without its body") }
                switch type {
                case .listener: listeners[res.name] = try Self.decodeOne(res, type) { (m: Listener) in m.name }
                case .route: routes[res.name] = try Self.decodeOne(res, type) { (m: RouteConfiguration) in m.name }
                case .cluster: clusters[res.name] = try Self.decodeOne(res, type) { (m: Cluster) in m.name }
                case .endpoint: endpoints[res.name] = try Self.decodeOne(res, type) { (m: ClusterLoadAssignment) in m.clusterName }
                case .secret: secrets[res.name] = try Self.decodeOne(res, type) { (m: Secret) in m.name }
                }
            }
        } catch let e as XDSError { throw e } catch { throw XDSError("\(type.short): \(error)") }
    }

    public mutating func remove(_ type: XDSType, name: String) {
        switch type {
        case .listener: listeners[name] = nil
        case .route: routes[name] = nil
        case .cluster: clusters[name] = nil
        case .endpoint: endpoints[name] = nil
        case .secret: secrets[name] = nil
        }
    }

    static func decodeOne<M: Message>(_ r: Envoy_Service_Discovery_V3_Resource, _ type: XDSType, name: (M) -> String) throws -> M {
        let m = try decode([r.resource], type, name: name)
        guard let (n, v) = m.first else { throw XDSError("\(type.short): resource \(r.name) is empty") }
        guard n == r.name else { throw XDSError("\(type.short): resource \(r.name) carries a resource named \(n)") }
        return v
    }

    static func decode<M: Message>(_ rs: [Google_Protobuf_Any], _ type: XDSType, name: (M) -> String) throws -> [String: M] {
        var out: [String: M] = [:]
        for r in rs {
            guard r.typeURL == type.rawValue else {
                throw XDSError("\(type.short): a resource of type \(r.typeURL) in a response of type \(type.rawValue)")
            }
            let m: M
            do { m = try M(serializedBytes: r.value) } catch { throw XDSError("\(type.short): a resource does not decode: \(error)") }
            let n = name(m)
            guard !n.isEmpty else { throw XDSError("\(type.short): a resource without a name") }
            guard out[n] == nil else { throw XDSError("\(type.short): resource \(n) given twice") }
            out[n] = m
        }
        return out
    }

    /// Route configurations the listeners ask for over RDS, sorted.
    public var rdsNames: [String] {
        var s = Set<String>()
        for l in listeners.values {
            for fc in l.filterChains + (l.hasDefaultFilterChain ? [l.defaultFilterChain] : []) {
                for f in fc.filters {
                    if case .typedConfig(let any)? = f.configType, any.typeURL.hasSuffix("/" + HCM.protoMessageName),
                       let h = try? HCM(unpackingAny: any), case .rds(let rds)? = h.routeSpecifier {
                        s.insert(rds.routeConfigName)
                    }
                }
            }
        }
        return s.sorted()
    }

    /// Secrets the listeners' and clusters' TLS contexts ask for over SDS (`sds_config.ads`), sorted.
    public var sdsNames: [String] {
        var s = Set<String>()
        func add(_ c: Envoy_Extensions_TransportSockets_Tls_V3_CommonTlsContext) {
            for sc in c.tlsCertificateSdsSecretConfigs where Self.overADS(sc) { s.insert(sc.name) }
            switch c.validationContextType {
            case .validationContextSdsSecretConfig(let sc)? where Self.overADS(sc): s.insert(sc.name)
            case .combinedValidationContext(let cv)? where Self.overADS(cv.validationContextSdsSecretConfig): s.insert(cv.validationContextSdsSecretConfig.name)
            default: break
            }
        }
        for l in listeners.values {
            for fc in l.filterChains + (l.hasDefaultFilterChain ? [l.defaultFilterChain] : []) where fc.hasTransportSocket {
                if case .typedConfig(let any)? = fc.transportSocket.configType, let d = try? DownstreamTLS(unpackingAny: any) {
                    add(d.commonTlsContext)
                }
            }
        }
        for c in clusters.values where c.hasTransportSocket {
            if case .typedConfig(let any)? = c.transportSocket.configType, let u = try? UpstreamTLS(unpackingAny: any) {
                add(u.commonTlsContext)
            }
        }
        return s.sorted()
    }

    static func overADS(_ sc: SdsSecretConfig) -> Bool {
        guard !sc.name.isEmpty, sc.hasSdsConfig, case .ads? = sc.sdsConfig.configSourceSpecifier else { return false }
        return true
    }

    /// ClusterLoadAssignments the EDS clusters ask for, sorted.
    public var edsNames: [String] {
        Set(clusters.values.compactMap { c -> String? in
            guard case .type(.eds)? = c.clusterDiscoveryType else { return nil }
            return c.edsClusterConfig.serviceName.isEmpty ? c.name : c.edsClusterConfig.serviceName
        }).sorted()
    }
}

/// What the translation made of the state.
public enum Translation: Equatable, Sendable {
    /// A complete configuration in Remora's schema.
    case config(YAMLNode)
    /// Something referenced has not arrived yet (an RDS route configuration, an EDS assignment, any listener).
    case pending(String)
}

/// xDS resources → one Remora configuration (docs/xds.md has the table). Pure: no I/O. Every field the
/// translation does not read makes it throw an `XDSError` naming the field (`leftoverFields`).
public struct Translator: Sendable {
    /// `workers:` of the generated configuration (nil: the proxy's default).
    public var workers: Int?
    /// Where the agent writes secrets that SDS delivers inline (`<dir>/<name>.cert.pem`, `.key.pem`,
    /// `.ca.pem`: `secretFiles`); the configuration names these paths.
    public var secretsDirectory = "secrets"
    /// Checks a file a TLS context names (`filename`): nil when it can be read, else why not. nil (the
    /// default, and the unit tests'): not checked. The agent checks (`readableFile`), so a missing file
    /// is NACKed with its field, as Envoy does, rather than pushed for the proxy to refuse.
    public var checkFile: (@Sendable (String) -> String?)?
    public init(workers: Int? = nil) { self.workers = workers }

    /// `checkFile` reading the file as the agent's user.
    public static let readableFile: @Sendable (String) -> String? = { path in
        guard let f = fopen(path, "rb") else { return "cannot read \(path): \(String(cString: strerror(errno)))" }
        fclose(f)
        return nil
    }

    public func translate(_ r: XDSResources) throws(XDSError) -> Translation {
        var names = NameMap()
        // Clusters first: routes refer to them by name.
        var clusterNodes: [YAMLNode] = []
        var empty = Set<String>()
        var pendingEDS: [String] = []
        for name in r.clusters.keys.sorted() {
            let c = r.clusters[name]!
            switch try cluster(c, r, &names) {
            case .some(let node) where node["endpoints"] == .list([]): empty.insert(name)
            case .some(let node): clusterNodes.append(node)
            case .none: pendingEDS.append(c.edsClusterConfig.serviceName.isEmpty ? c.name : c.edsClusterConfig.serviceName)
            }
        }
        var listenerNodes: [YAMLNode] = []
        var pendingRDS: [String] = []
        let hashKeys = HashKeys()
        for name in r.listeners.keys.sorted() {
            let ctx = Context(resources: r, empty: empty, clusterNames: names, hashKeys: hashKeys)
            switch try listener(r.listeners[name]!, ctx, &names) {
            case .some(let node): listenerNodes.append(node)
            case .none: pendingRDS.append(name)
            }
        }
        if !pendingEDS.isEmpty { return .pending("EDS assignments \(pendingEDS.joined(separator: ", "))") }
        let missingSecrets = r.sdsNames.filter { r.secrets[$0] == nil }
        if !missingSecrets.isEmpty { return .pending("SDS secrets \(missingSecrets.joined(separator: ", "))") }
        if !pendingRDS.isEmpty { return .pending("RDS route configurations of listeners \(pendingRDS.joined(separator: ", "))") }
        if listenerNodes.isEmpty { return .pending("a listener (LDS has none)") }
        // The routes' hash policies become their clusters' hash_on (consistent-hash clusters only: for the
        // others Envoy has no use for the key either).
        let xdsName = hashKeys.byCluster.isEmpty ? [:] : Dictionary(names.clusters.map { ($0.value, $0.key) }) { a, _ in a }
        if !xdsName.isEmpty { clusterNodes = clusterNodes.map { node in
            guard case .map(var kv) = node, case .string(let lb)? = node["lb"], lb == "ring_hash" || lb == "maglev",
                  case .string(let name)? = node["name"], let x = xdsName[name],
                  let key = hashKeys.byCluster[x]?.key else { return node }
            kv.append(("hash_on", key))
            return .map(kv)
        } }
        var doc: [(String, YAMLNode)] = []
        if let workers { doc.append(("workers", .int(workers))) }
        doc.append(("listeners", .list(listenerNodes)))
        doc.append(("clusters", .list(clusterNodes)))
        return .config(.map(doc))
    }

    struct Context {
        var resources: XDSResources
        /// Clusters whose endpoints are all absent or unhealthy: left out of the configuration; a route
        /// only to them answers 503 `no healthy upstream`, as Envoy's does.
        var empty: Set<String>
        var clusterNames: NameMap
        /// A route to a cluster CDS does not have is an error (NACK) when true, else it answers 503 as
        /// Envoy's does (`validate_clusters`: by default true for inline route configurations, false for RDS).
        var validateClusters = true
        /// The routes' hash policies, by the xDS cluster they send to (Remora keys a cluster, not a route).
        var hashKeys = HashKeys()
        /// The HTTP filters of the listener's chain before the router (fault, local rate limit).
        var filters = HTTPFilters()
    }

    /// The fault and local rate limit filters of a listener: their names (the keys of the routes'
    /// `typed_per_filter_config`) and what the fault filter does on routes without a config of their own.
    struct HTTPFilters {
        var faultName: String?
        var fault: YAMLNode?
        var rateLimitName: String?
    }

    /// Envoy's `hash_policy` is a route's and feeds the consistent-hash balancer of the cluster it picks;
    /// Remora's `hash_on` is the cluster's. Every route to one cluster must then agree.
    final class HashKeys {
        var byCluster: [String: (key: YAMLNode, at: String)] = [:]
    }

    // MARK: listeners

    func listener(_ l: Listener, _ ctx: Context, _ names: inout NameMap) throws(XDSError) -> YAMLNode? {
        let at = "Listener \(l.name)"
        var rest = l
        rest.name = ""; rest.clearAddress(); rest.filterChains = []; rest.clearDefaultFilterChain()
        rest.statPrefix = ""                 // stats are named after the listener
        rest.trafficDirection = .unspecified // informational
        var limit: Int?
        if l.hasPerConnectionBufferLimitBytes {
            limit = Int(l.perConnectionBufferLimitBytes.value); rest.clearPerConnectionBufferLimitBytes()
            guard limit! >= 65536 else { throw XDSError("\(at): per_connection_buffer_limit_bytes below 65536 is not supported") }
        }
        // Listener filters: the TLS and HTTP inspectors only, which Envoy needs to match chains by
        // server_names, transport_protocol (and application_protocols); a Remora listener looks at the
        // first bytes itself (TLS passthrough, allow_plaintext, h2c).
        for (i, lf) in l.listenerFilters.enumerated() {
            let lat = "\(at): listener_filters[\(i)]"
            var lr = lf
            lr.name = ""; lr.configType = nil
            try refuseLeftovers(lr, at: lat)
            let inspectors = ["envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
                              "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"]
            switch lf.configType {
            case .typedConfig(let any)?:
                guard inspectors.contains(where: { any.typeURL.hasSuffix("/" + $0) }) else {
                    throw XDSError("\(lat) (\(lf.name)): listener filter \(any.typeURL) is not supported (tls_inspector and http_inspector are)")
                }
                guard any.value.isEmpty else { throw XDSError("\(lat).typed_config: the inspector's fields are not supported") }
            case nil:
                guard ["envoy.filters.listener.tls_inspector", "envoy.filters.listener.http_inspector"].contains(lf.name) else {
                    throw XDSError("\(lat): listener filter \(lf.name) is not supported (tls_inspector and http_inspector are)")
                }
            default:
                throw XDSError("\(lat) (\(lf.name)): only typed_config is supported")
            }
        }
        rest.listenerFilters = []
        try refuseLeftovers(rest, at: at)
        var node: [(String, YAMLNode)] = [("name", .string(names.listener(l.name))), ("address", .string(try address(l.address, at: at + ": address")))]
        let (chains, shape) = try selectChains(l, at: at)
        switch shape {
        case .one, .permissive:
            let c = chains[0]
            guard var entries = try filterChain(c.fc, at: "\(at): \(c.at)", limit: limit, ctx, &names) else { return nil }
            if shape == .permissive {
                // TLS for connections that start with a handshake record, plaintext for the others: the
                // raw_buffer chain (same filters) is the listener's allow_plaintext.
                guard let i = entries.firstIndex(where: { $0.0 == "tls" }), case .map(var kv) = entries[i].1 else {
                    throw XDSError("\(at): \(c.at): transport_protocol tls without a TLS transport_socket is not supported")
                }
                kv.append(("allow_plaintext", .bool(true)))
                entries[i].1 = .map(kv)
            }
            node.append(contentsOf: entries)
        case .passthrough(let fallback):
            if limit != nil { throw XDSError("\(at): per_connection_buffer_limit_bytes is not supported with tcp_proxy") }
            var sni: [YAMLNode] = []
            var cluster: String?
            for c in chains + (fallback.map { [$0] } ?? []) {
                let target = try passthroughCluster(c, at: "\(at): \(c.at)", ctx)
                if c.match.serverNames.isEmpty {
                    cluster = target
                } else {
                    sni.append(.map([("server_names", .list(c.match.serverNames.map { .string($0) })), ("cluster", .string(target))]))
                }
            }
            node.append(("protocol", .string("tls")))
            node.append(("sni", .list(sni)))
            if let cluster { node.append(("cluster", .string(cluster))) }
        }
        return .map(node)
    }

    /// One filter chain (its `filter_chain_match` already read by `selectChains`) → the listener's
    /// protocol, filter settings and `tls`. nil: it waits for RDS.
    func filterChain(_ fc: Envoy_Config_Listener_V3_FilterChain, at cat: String, limit: Int?, _ ctx: Context,
                     _ names: inout NameMap) throws(XDSError) -> [(String, YAMLNode)]? {
        var node: [(String, YAMLNode)] = []
        var fcRest = fc
        fcRest.filters = []; fcRest.name = ""; fcRest.clearTransportSocket(); fcRest.clearFilterChainMatch()
        try refuseLeftovers(fcRest, at: cat)
        guard fc.filters.count == 1 else {
            throw XDSError("\(cat) has \(fc.filters.count) network filters; exactly one, http_connection_manager or tcp_proxy, is supported")
        }
        let f = fc.filters[0]
        guard case .typedConfig(let any)? = f.configType else {
            throw XDSError("\(cat).filters[0] (\(f.name)): only typed_config is supported")
        }
        let fat = "\(cat).filters[0]"
        if any.typeURL.hasSuffix("/" + HCM.protoMessageName) {
            let h: HCM
            do { h = try HCM(unpackingAny: any) } catch { throw XDSError("\(fat): does not decode: \(error)") }
            if limit != nil { node.append(("per_connection_buffer_limit", .int(limit!))) }
            guard let http = try hcm(h, at: fat + ".typed_config", ctx, &names) else { return nil }
            if fc.hasTransportSocket {
                node.append(("tls", try downstreamTLS(fc.transportSocket, at: "\(cat).transport_socket", http: true,
                                                      forwardClientCert: h.forwardClientCertDetails == .sanitizeSet, ctx.resources)))
            }
            node.append(contentsOf: http)
        } else if any.typeURL.hasSuffix("/" + TcpProxy.protoMessageName) {
            let t: TcpProxy
            do { t = try TcpProxy(unpackingAny: any) } catch { throw XDSError("\(fat): does not decode: \(error)") }
            if limit != nil { throw XDSError("\(cat.prefix { $0 != ":" }): per_connection_buffer_limit_bytes is not supported with tcp_proxy") }
            if fc.hasTransportSocket {
                node.append(("tls", try downstreamTLS(fc.transportSocket, at: "\(cat).transport_socket", http: false,
                                                      forwardClientCert: false, ctx.resources)))
            }
            node.append(contentsOf: try tcpProxy(t, at: fat + ".typed_config", ctx))
        } else {
            throw XDSError("\(fat) (\(f.name)): network filter \(any.typeURL) is not supported (http_connection_manager and tcp_proxy are)")
        }
        return node
    }

    // MARK: filter chain selection

    typealias FilterChainMatch = Envoy_Config_Listener_V3_FilterChainMatch

    struct Chain {
        var fc: Envoy_Config_Listener_V3_FilterChain
        /// `filter_chains[i]` or `default_filter_chain`.
        var at: String
        var match: FilterChainMatch
    }

    /// What the chains that can match make of the listener.
    enum ChainShape: Equatable {
        /// One chain serves every connection.
        case one
        /// Two chains with the same filters: `transport_protocol: tls` with TLS, and one for plaintext
        /// (Istio's PERMISSIVE inbound): one TLS listener with `allow_plaintext`. The TLS chain is first.
        case permissive
        /// tcp_proxy chains chosen by `server_names`, without TLS termination (TLS passthrough); the
        /// chain without names (if any) is the default, or the `default_filter_chain` (the associated value).
        case passthrough(fallback: Chain?)
        static func == (a: ChainShape, b: ChainShape) -> Bool {
            switch (a, b) { case (.one, .one), (.permissive, .permissive), (.passthrough, .passthrough): true; default: false }
        }
    }

    /// Envoy's filter chain matching, decided once per listener (a Remora listener has one protocol and
    /// one TLS context): `destination_port` and `prefix_ranges` (the destination address) against the
    /// listener's own address — without `use_original_dst` (which is NACKed) every connection's
    /// destination is that address, so a chain either always or never matches, and the most specific
    /// ones win, as in Envoy; chains that can never match are not translated. Then `server_names` and
    /// `transport_protocol` must make one of the shapes of `ChainShape`; anything else, and every other
    /// field of `filter_chain_match` (`application_protocols`, the source matches, …), is NACKed by name.
    func selectChains(_ l: Listener, at: String) throws(XDSError) -> ([Chain], ChainShape) {
        var chains = l.filterChains.enumerated().map { Chain(fc: $0.element, at: "filter_chains[\($0.offset)]", match: $0.element.filterChainMatch) }
        let fallback = l.hasDefaultFilterChain ? Chain(fc: l.defaultFilterChain, at: "default_filter_chain", match: FilterChainMatch()) : nil
        if let fallback, fallback.fc.hasFilterChainMatch {
            throw XDSError("\(at): default_filter_chain.filter_chain_match is not supported (the default chain matches what no other does)")
        }
        guard !chains.isEmpty || fallback != nil else { throw XDSError("\(at): filter_chains: at least one is required") }
        for c in chains {
            let mat = "\(at): \(c.at).filter_chain_match"
            var rest = c.match
            rest.clearDestinationPort(); rest.prefixRanges = []; rest.serverNames = []; rest.transportProtocol = ""
            try refuseLeftovers(rest, at: mat, note: "destination_port, prefix_ranges, server_names and transport_protocol are")
            guard ["", "tls", "raw_buffer"].contains(c.match.transportProtocol) else {
                throw XDSError("\(mat).transport_protocol: \(c.match.transportProtocol) is not supported (tls and raw_buffer are)")
            }
        }
        let sa = l.address.socketAddress
        // destination_port: the listener's own port, or never.
        chains = chains.filter { !$0.match.hasDestinationPort || $0.match.destinationPort.value == sa.portValue }
        if chains.contains(where: { $0.match.hasDestinationPort }) { chains = chains.filter { $0.match.hasDestinationPort } }
        // prefix_ranges: the longest range holding the listener's own address wins; none: the chains without.
        if let c = chains.first(where: { !$0.match.prefixRanges.isEmpty }) {
            guard let ip = IPBytes(sa.address), !ip.isUnspecified else {
                throw XDSError("\(at): \(c.at).filter_chain_match.prefix_ranges is not supported on a listener bound to \(sa.address) (the destination address differs between connections)")
            }
            var longest: [Int] = []
            for c in chains {
                var best = -1
                for (i, r) in c.match.prefixRanges.enumerated() {
                    guard let net = IPBytes(r.addressPrefix) else {
                        throw XDSError("\(at): \(c.at).filter_chain_match.prefix_ranges[\(i)].address_prefix: \(r.addressPrefix) is not an IP address")
                    }
                    let len = r.hasPrefixLen ? Int(r.prefixLen.value) : 0
                    if net.contains(ip, prefix: len) { best = max(best, len) }
                }
                longest.append(c.match.prefixRanges.isEmpty ? -2 : best)
            }
            let top = longest.max() ?? -2
            chains = zip(chains, longest).filter { top >= 0 ? $0.1 == top : $0.1 == -2 }.map { $0.0 }
        }
        if chains.isEmpty {
            guard let fallback else {
                throw XDSError("\(at): no filter chain can match the listener's address \(sa.address):\(sa.portValue) (destination_port, prefix_ranges) and there is no default_filter_chain")
            }
            return ([fallback], .one)
        }
        // server_names: TLS passthrough only.
        if chains.contains(where: { !$0.match.serverNames.isEmpty }) {
            let unnamed = chains.filter { $0.match.serverNames.isEmpty }
            guard unnamed.count + (fallback == nil ? 0 : 1) <= 1 else {
                throw XDSError("\(at): \((unnamed.map(\.at) + (fallback.map { [$0.at] } ?? [])).joined(separator: " and ")): more than one chain without server_names")
            }
            for c in chains + (fallback.map { [$0] } ?? []) where c.match.transportProtocol == "raw_buffer" || c.fc.hasTransportSocket {
                throw XDSError("\(at): \(c.at): chains chosen by filter_chain_match.server_names are supported for TLS passthrough only (tcp_proxy, no transport_socket, transport_protocol tls or none)")
            }
            return (chains.filter { !$0.match.serverNames.isEmpty } + unnamed, .passthrough(fallback: fallback))
        }
        // transport_protocol: one chain for all, or tls + plaintext with the same filters (permissive). The
        // default chain takes what the others leave: plaintext when they are all tls, TLS when all raw_buffer.
        var tlsSide = chains.filter { $0.match.transportProtocol == "tls" }
        var plainSide = chains.filter { $0.match.transportProtocol != "tls" }
        if let fallback {
            if plainSide.isEmpty { plainSide = [fallback] }
            else if tlsSide.isEmpty && plainSide.allSatisfy({ $0.match.transportProtocol == "raw_buffer" }) { tlsSide = [fallback] }
        }
        if tlsSide.count == 1 && plainSide.count == 1 {
            let t = tlsSide[0], p = plainSide[0]
            guard t.fc.hasTransportSocket, !p.fc.hasTransportSocket, t.fc.filters == p.fc.filters else {
                throw XDSError("\(at): \(t.at) (TLS clients) and \(p.at) (plaintext clients): only the same filters, TLS on the first and none on the second, are supported (TLS with allow_plaintext)")
            }
            return ([t], .permissive)
        }
        if chains.count == 1 && (tlsSide.isEmpty || plainSide.isEmpty) {
            let c = chains[0]
            if c.match.transportProtocol == "tls" && !c.fc.hasTransportSocket {
                throw XDSError("\(at): \(c.at).filter_chain_match.transport_protocol tls without a transport_socket (TLS passthrough by transport protocol) is not supported")
            }
            if c.match.transportProtocol == "raw_buffer" && c.fc.hasTransportSocket {
                throw XDSError("\(at): \(c.at).filter_chain_match.transport_protocol raw_buffer with a TLS transport_socket never matches a TLS client")
            }
            return ([c], .one)
        }
        throw XDSError("\(at): \(chains.count) filter chains that filter_chain_match does not tell apart (\(chains.map(\.at).joined(separator: ", "))); Remora supports one chain per listener, TLS passthrough by server_names, or TLS and plaintext (transport_protocol) with the same filters")
    }

    /// A passthrough chain's cluster: tcp_proxy with `cluster` only.
    func passthroughCluster(_ c: Chain, at cat: String, _ ctx: Context) throws(XDSError) -> String {
        var fcRest = c.fc
        fcRest.filters = []; fcRest.name = ""; fcRest.clearFilterChainMatch()
        try refuseLeftovers(fcRest, at: cat)
        guard c.fc.filters.count == 1, case .typedConfig(let any)? = c.fc.filters[0].configType,
              any.typeURL.hasSuffix("/" + TcpProxy.protoMessageName) else {
            throw XDSError("\(cat).filters: exactly one tcp_proxy is required on a chain chosen by server_names (TLS passthrough)")
        }
        let fat = "\(cat).filters[0].typed_config"
        let t: TcpProxy
        do { t = try TcpProxy(unpackingAny: any) } catch { throw XDSError("\(fat): does not decode: \(error)") }
        var rest = t
        rest.statPrefix = ""; rest.clusterSpecifier = nil
        try refuseLeftovers(rest, at: fat, note: "a TLS passthrough chain reads cluster only")
        guard case .cluster(let name)? = t.clusterSpecifier else { throw XDSError("\(fat).cluster: required") }
        guard ctx.resources.clusters[name] != nil else { throw XDSError("\(fat).cluster: unknown cluster \(name)") }
        guard !ctx.empty.contains(name) else { throw XDSError("\(fat).cluster: cluster \(name) has no healthy endpoint (Remora cannot keep a TCP listener on an empty cluster)") }
        return ctx.clusterNames.clusterName(name)
    }

    func tcpProxy(_ t: TcpProxy, at: String, _ ctx: Context) throws(XDSError) -> [(String, YAMLNode)] {
        var rest = t
        rest.statPrefix = ""; rest.clusterSpecifier = nil; rest.clearIdleTimeout(); rest.accessLog = []
        try refuseLeftovers(rest, at: at)
        guard case .cluster(let c)? = t.clusterSpecifier else { throw XDSError("\(at).cluster: required") }
        guard ctx.resources.clusters[c] != nil else { throw XDSError("\(at).cluster: unknown cluster \(c)") }
        guard !ctx.empty.contains(c) else { throw XDSError("\(at).cluster: cluster \(c) has no healthy endpoint (Remora cannot keep a TCP listener on an empty cluster)") }
        var out: [(String, YAMLNode)] = [("protocol", .string("tcp")), ("cluster", .string(ctx.clusterNames.clusterName(c)))]
        if t.hasIdleTimeout {
            guard let ms = try positive(t.idleTimeout, at: at + ".idle_timeout") else {
                throw XDSError("\(at).idle_timeout: 0 (no idle timeout) is not supported")
            }
            out.append(("idle_timeout", .string(ms)))
        }
        if let log = try accessLog(t.accessLog, at: at + ".access_log") { out.append(("access_log", log)) }
        return out
    }

    /// `access_log` (one file logger) → the listener's `access_log`. No format is Envoy's default line,
    /// which is Remora's `text`; a format string keeps Envoy's `%COMMAND%`s (Remora's loader refuses the
    /// ones it does not know, and that message is the NACK's).
    func accessLog(_ logs: [Envoy_Config_Accesslog_V3_AccessLog], at: String) throws(XDSError) -> YAMLNode? {
        guard let l = logs.first else { return nil }
        guard logs.count == 1 else { throw XDSError("\(at): \(logs.count) access logs; one is supported") }
        let lat = at + "[0]"
        var lr = l
        lr.name = ""; lr.configType = nil
        try refuseLeftovers(lr, at: lat)
        guard case .typedConfig(let any)? = l.configType, any.typeURL.hasSuffix("/" + FileAccessLog.protoMessageName) else {
            throw XDSError("\(lat) (\(l.name)): \(l.typedConfig.typeURL) is not supported (the file logger, envoy.extensions.access_loggers.file.v3.FileAccessLog, is)")
        }
        let f: FileAccessLog
        do { f = try FileAccessLog(unpackingAny: any) } catch { throw XDSError("\(lat).typed_config: does not decode: \(error)") }
        let fat = lat + ".typed_config"
        var fr = f
        fr.path = ""; fr.accessLogFormat = nil
        try refuseLeftovers(fr, at: fat)
        let path = f.path == "/dev/stdout" ? "stdout" : f.path
        guard path == "stdout" || path.hasPrefix("/") else { throw XDSError("\(fat).path: \(f.path): an absolute path or /dev/stdout is required") }
        var format = "text"
        switch f.accessLogFormat {
        case nil: break
        case .format(let s)?: format = s
        case .logFormat(let lf)?:
            var r = lf
            r.format = nil
            try refuseLeftovers(r, at: fat + ".log_format")
            switch lf.format {
            case .textFormat(let s)?: format = s
            case .textFormatSource(let ds)?:
                guard case .inlineString(let s)? = ds.specifier else {
                    throw XDSError("\(fat).log_format.text_format_source: only inline_string is supported")
                }
                format = s
            case .jsonFormat?: throw XDSError("\(fat).log_format.json_format is not supported (Remora's json access log has fixed keys: docs/observability.md)")
            case nil: break
            }
        case .jsonFormat?, .typedJsonFormat?:
            throw XDSError("\(fat): json_format is not supported (Remora's json access log has fixed keys: docs/observability.md)")
        }
        // Envoy's format carries its own line end; Remora ends every line.
        if format != "text" && format.hasSuffix("\n") { format.removeLast() }
        if format.isEmpty { format = "text" }
        return .map([("path", .string(path)), ("format", .string(format))])
    }

    func hcm(_ h: HCM, at: String, _ ctx: Context, _ names: inout NameMap) throws(XDSError) -> [(String, YAMLNode)]? {
        var rest = h
        rest.statPrefix = ""; rest.routeSpecifier = nil; rest.httpFilters = []
        rest.clearRequestTimeout(); rest.clearRequestHeadersTimeout(); rest.clearStreamIdleTimeout()
        rest.clearCommonHTTPProtocolOptions(); rest.clearHTTP2ProtocolOptions(); rest.accessLog = []
        if h.codecType != .auto {
            throw XDSError("\(at).codec_type: \(h.codecType) is not supported: a Remora listener serves HTTP/1.1 and h2c on one port (AUTO)")
        }
        // x-forwarded-client-cert: SANITIZE (the default) removes the client's and adds none; SANITIZE_SET
        // with uri and dns writes Remora's element (By, Hash, URI, DNS: Envoy's format). listener() reads it.
        if h.forwardClientCertDetails == .sanitizeSet {
            var want = HCM.SetCurrentClientCertDetails()
            want.uri = true; want.dns = true
            guard h.setCurrentClientCertDetails == want else {
                throw XDSError("\(at).set_current_client_cert_details: only uri and dns together are supported (Remora's x-forwarded-client-cert carries By, Hash, URI and DNS)")
            }
            rest.forwardClientCertDetails = .sanitize; rest.clearSetCurrentClientCertDetails()
        }
        try refuseLeftovers(rest, at: at)
        // Filters: fault and local rate limit (each at most once), then the router, last.
        guard !h.httpFilters.isEmpty else { throw XDSError("\(at).http_filters: empty (the router is required)") }
        var filters = HTTPFilters()
        for (i, f) in h.httpFilters.enumerated() {
            let fat = "\(at).http_filters[\(i)]"
            var fr = f
            fr.name = ""; fr.configType = nil
            try refuseLeftovers(fr, at: fat)
            let last = i == h.httpFilters.count - 1
            if case .typedConfig(let any)? = f.configType {
                func decode<M: Message>(_: M.Type) throws(XDSError) -> M {
                    do { return try M(unpackingAny: any) } catch { throw XDSError("\(fat): does not decode: \(error)") }
                }
                if any.typeURL.hasSuffix("/" + Router.protoMessageName) {
                    try refuseLeftovers(try decode(Router.self), at: fat + ".typed_config")
                    guard last else { throw XDSError("\(fat): the router must be the last filter") }
                    continue
                }
                if any.typeURL.hasSuffix("/" + HTTPFault.protoMessageName) {
                    guard !last else { throw XDSError("\(fat) (\(f.name)): the last HTTP filter must be the router") }
                    guard filters.faultName == nil else { throw XDSError("\(fat): a second fault filter is not supported") }
                    filters.faultName = f.name
                    filters.fault = try fault(try decode(HTTPFault.self), at: fat + ".typed_config")
                    continue
                }
                if any.typeURL.hasSuffix("/" + LocalRateLimit.protoMessageName) {
                    guard !last else { throw XDSError("\(fat) (\(f.name)): the last HTTP filter must be the router") }
                    guard filters.rateLimitName == nil else { throw XDSError("\(fat): a second local rate limit filter is not supported") }
                    filters.rateLimitName = f.name
                    if try rateLimit(try decode(LocalRateLimit.self), at: fat + ".typed_config") != nil {
                        throw XDSError("\(fat).typed_config.token_bucket: a listener-wide bucket is not supported (Remora's buckets are per route: typed_per_filter_config)")
                    }
                    continue
                }
            } else if f.configType == nil && f.name == "envoy.filters.http.router" {
                guard last else { throw XDSError("\(fat): the router must be the last filter") }
                continue
            }
            throw XDSError("\(fat) (\(f.name)): HTTP filter \(f.typedConfig.typeURL.isEmpty ? f.name : f.typedConfig.typeURL) is not supported (the router, fault and local rate limit are)")
        }
        var ctx = ctx
        ctx.filters = filters
        var out: [(String, YAMLNode)] = [("protocol", .string("http"))]
        if h.hasRequestTimeout {
            out.append(("request_timeout", .string(try duration(h.requestTimeout, at: at + ".request_timeout"))))
        }
        if h.hasRequestHeadersTimeout {
            guard let ms = try positive(h.requestHeadersTimeout, at: at + ".request_headers_timeout") else {
                throw XDSError("\(at).request_headers_timeout: 0 (no limit) is not supported")
            }
            out.append(("request_header_timeout", .string(ms)))
        }
        // One idle timeout in Remora: the smaller of the connection's and the stream's.
        var idle: [Duration] = []
        if h.hasStreamIdleTimeout { idle.append(h.streamIdleTimeout) }
        if h.hasCommonHTTPProtocolOptions {
            var c = h.commonHTTPProtocolOptions
            if c.hasIdleTimeout { idle.append(c.idleTimeout); c.clearIdleTimeout() }
            try refuseLeftovers(c, at: at + ".common_http_protocol_options")
        }
        var least: UInt64?
        for d in idle {
            guard let ms = try positive(d, at: at + ".idle_timeout"), let v = UInt64(ms.dropLast(2)) else {
                throw XDSError("\(at): an idle timeout of 0 (none) is not supported")
            }
            least = min(least ?? v, v)
        }
        if let least { out.append(("idle_timeout", .string("\(least)ms"))) }
        if h.hasHTTP2ProtocolOptions {
            out.append(("http2", try http2(h.http2ProtocolOptions, at: at + ".http2_protocol_options", listener: true)))
        }
        if let log = try accessLog(h.accessLog, at: at + ".access_log") { out.append(("access_log", log)) }
        let rc: RouteConfiguration
        var inlineRoutes = true
        switch h.routeSpecifier {
        case .routeConfig(let inline)?:
            rc = inline
        case .rds(let rds)?:
            var rr = rds
            rr.routeConfigName = ""; rr.clearConfigSource()
            try refuseLeftovers(rr, at: at + ".rds")
            try adsSource(rds.configSource, at: at + ".rds.config_source")
            guard let got = ctx.resources.routes[rds.routeConfigName] else { return nil }
            rc = got
            inlineRoutes = false
        default:
            throw XDSError("\(at): route_config or rds is required (scoped_routes is not supported)")
        }
        var rctx = ctx
        rctx.validateClusters = rc.hasValidateClusters ? rc.validateClusters.value : inlineRoutes
        out.append(contentsOf: try routeConfiguration(rc, at: "RouteConfiguration \(rc.name)", rctx))
        return out
    }

    func adsSource(_ s: Envoy_Config_Core_V3_ConfigSource, at: String) throws(XDSError) {
        var rest = s
        guard case .ads? = s.configSourceSpecifier else {
            throw XDSError("\(at): only ads is supported (remora-xds has one ADS stream)")
        }
        rest.configSourceSpecifier = nil; rest.resourceApiVersion = .auto; rest.clearInitialFetchTimeout()
        try refuseLeftovers(rest, at: at)
        if s.resourceApiVersion != .auto && s.resourceApiVersion != .v3 { throw XDSError("\(at).resource_api_version: only V3") }
    }

    func http2(_ o: Envoy_Config_Core_V3_Http2ProtocolOptions, at: String, listener: Bool) throws(XDSError) -> YAMLNode {
        var rest = o
        var out: [(String, YAMLNode)] = []
        if o.hasMaxConcurrentStreams {
            out.append(("max_concurrent_streams", .int(Int(o.maxConcurrentStreams.value)))); rest.clearMaxConcurrentStreams()
        }
        if o.hasInitialStreamWindowSize {
            out.append(("initial_stream_window", .int(Int(o.initialStreamWindowSize.value)))); rest.clearInitialStreamWindowSize()
        }
        if o.hasInitialConnectionWindowSize {
            out.append(("connection_window", .int(Int(o.initialConnectionWindowSize.value)))); rest.clearInitialConnectionWindowSize()
        }
        try refuseLeftovers(rest, at: at)
        return .map(out)
    }

    // MARK: routes

    func routeConfiguration(_ rc: RouteConfiguration, at: String, _ ctx: Context) throws(XDSError) -> [(String, YAMLNode)] {
        var rest = rc
        rest.name = ""; rest.virtualHosts = []; rest.clearValidateClusters()
        rest.requestHeadersToAdd = []; rest.requestHeadersToRemove = []; rest.responseHeadersToAdd = []; rest.responseHeadersToRemove = []
        rest.mostSpecificHeaderMutationsWins = false   // which level wins a conflict: conflicts are refused
        try refuseLeftovers(rest, at: at)
        var routeNames = NameMap()
        var vhosts: [YAMLNode] = []
        var vhostNames = NameMap()
        for (vi, vh) in rc.virtualHosts.enumerated() {
            let vat = "\(at): virtual_hosts[\(vi)] (\(vh.name))"
            var vr = vh
            vr.name = ""; vr.domains = []; vr.routes = []; vr.clearRetryPolicy()
            vr.requestHeadersToAdd = []; vr.requestHeadersToRemove = []; vr.responseHeadersToAdd = []; vr.responseHeadersToRemove = []
            try refuseLeftovers(vr, at: vat)
            // Header changes of the virtual host and the route configuration apply to each route as well.
            let outer = OuterHeaders(
                requestAdd: vh.requestHeadersToAdd + rc.requestHeadersToAdd, requestRemove: vh.requestHeadersToRemove + rc.requestHeadersToRemove,
                responseAdd: vh.responseHeadersToAdd + rc.responseHeadersToAdd, responseRemove: vh.responseHeadersToRemove + rc.responseHeadersToRemove)
            guard !vh.domains.isEmpty else { throw XDSError("\(vat).domains: empty") }
            for d in vh.domains where d != "*" && (d.dropFirst().contains("*") || (d.hasSuffix("*") && d.count > 1)) {
                throw XDSError("\(vat).domains: \(d): only exact domains, \"*\" and \"*suffix\" wildcards are supported")
            }
            var routes: [YAMLNode] = []
            for (ri, r) in vh.routes.enumerated() {
                routes.append(try route(r, at: "\(vat): routes[\(ri)]", index: ri, vhostRetry: vh.hasRetryPolicy ? vh.retryPolicy : nil,
                                        outer: outer, ctx, &routeNames))
            }
            vhosts.append(.map([("name", .string(vhostNames.unique(vh.name.isEmpty ? "vhost\(vi)" : vh.name))),
                                ("domains", .list(vh.domains.map { .string($0) })), ("routes", .list(routes))]))
        }
        if vhosts.count == 1, vhosts[0]["domains"] == .list([.string("*")]), let routes = vhosts[0]["routes"] {
            return [("routes", routes)]
        }
        return [("virtual_hosts", .list(vhosts))]
    }

    /// The header changes of a route's virtual host and route configuration (Envoy applies route, then
    /// virtual host, then route configuration; a header changed at two levels is refused, so the order
    /// does not matter).
    struct OuterHeaders {
        var requestAdd: [Envoy_Config_Core_V3_HeaderValueOption] = []
        var requestRemove: [String] = []
        var responseAdd: [Envoy_Config_Core_V3_HeaderValueOption] = []
        var responseRemove: [String] = []
    }

    func route(_ r: Envoy_Config_Route_V3_Route, at: String, index: Int, vhostRetry: Envoy_Config_Route_V3_RetryPolicy?,
               outer: OuterHeaders = OuterHeaders(), _ ctx: Context, _ names: inout NameMap) throws(XDSError) -> YAMLNode {
        var rest = r
        rest.name = ""; rest.clearMatch(); rest.action = nil
        rest.requestHeadersToAdd = []; rest.requestHeadersToRemove = []
        rest.responseHeadersToAdd = []; rest.responseHeadersToRemove = []; rest.typedPerFilterConfig = [:]
        rest.decorator = Data()   // the span's operation name: Remora propagates traces, it reports no spans
        rest.metadata = Data()    // read by filters, none of which is translated
        try refuseLeftovers(rest, at: at)
        // Per-route configurations of the listener's filters; a route without one gets the filter's own.
        var fault = ctx.filters.fault
        var rateLimit: YAMLNode?
        for key in r.typedPerFilterConfig.keys.sorted() {
            let any = r.typedPerFilterConfig[key]!
            let pat = "\(at).typed_per_filter_config[\(key)]"
            if key == ctx.filters.faultName, any.typeURL.hasSuffix("/" + HTTPFault.protoMessageName) {
                do { fault = try self.fault(try HTTPFault(unpackingAny: any), at: pat) }
                catch let e as XDSError { throw e } catch { throw XDSError("\(pat): does not decode: \(error)") }
            } else if key == ctx.filters.rateLimitName, any.typeURL.hasSuffix("/" + LocalRateLimit.protoMessageName) {
                do { rateLimit = try self.rateLimit(try LocalRateLimit(unpackingAny: any), at: pat) }
                catch let e as XDSError { throw e } catch { throw XDSError("\(pat): does not decode: \(error)") }
            } else {
                throw XDSError("\(pat): \(any.typeURL) is not supported (only the configurations of the listener's fault and local rate limit filters, by their names)")
            }
        }
        var node: [(String, YAMLNode)] = [("name", .string(names.unique(r.name.isEmpty ? "route\(index)" : r.name)))]
        node.append(("match", try match(r.match, at: at + ".match")))
        var backendsTo503 = false
        switch r.action {
        case .route(let a)?:
            let (items, local) = try routeAction(a, at: at + ".route", vhostRetry: vhostRetry, ctx)
            if let local {
                backendsTo503 = true
                fault = nil; rateLimit = nil   // no upstream to delay or spare: answered 503 at once
                node.append(("direct_response", .map([("status", .int(503)), ("body", .string(local))])))
            } else {
                node.append(contentsOf: items)
                if let fault { node.append(("fault", fault)) }
                if let rateLimit { node.append(("rate_limit", rateLimit)) }
                fault = nil; rateLimit = nil
            }
        case .redirect(let rd)?:
            node.append(contentsOf: try redirect(rd, at: at + ".redirect"))
        case .directResponse(let d)?:
            var dr = d
            dr.status = 0; dr.clearBody()
            try refuseLeftovers(dr, at: at + ".direct_response")
            guard d.status >= 200 && d.status <= 599 else { throw XDSError("\(at).direct_response.status: \(d.status) (200...599)") }
            var m: [(String, YAMLNode)] = [("status", .int(Int(d.status)))]
            if d.hasBody {
                switch d.body.specifier {
                case .inlineString(let s)?: m.append(("body", .string(s)))
                case .inlineBytes(let b)?:
                    guard let s = String(validating: b, as: UTF8.self) else { throw XDSError("\(at).direct_response.body.inline_bytes: not UTF-8") }
                    m.append(("body", .string(s)))
                default: throw XDSError("\(at).direct_response.body: only inline_string and inline_bytes are supported")
                }
            }
            node.append(("direct_response", .map(m)))
        default:
            throw XDSError("\(at): the action must be route, redirect or direct_response")
        }
        if fault != nil {
            throw XDSError("\(at): a fault on a route that does not proxy (redirect, direct_response) is not supported")
        }
        if rateLimit != nil {
            throw XDSError("\(at): a local rate limit on a route that does not proxy (redirect, direct_response) is not supported")
        }
        if !r.requestHeadersToAdd.isEmpty || !r.requestHeadersToRemove.isEmpty {
            guard case .route? = r.action else { throw XDSError("\(at).request_headers_to_add: only on routes that proxy") }
        }
        // The virtual host's and route configuration's request changes: without effect where nothing is proxied.
        if case .route? = r.action, !backendsTo503 {
            let add = r.requestHeadersToAdd + outer.requestAdd, remove = r.requestHeadersToRemove + outer.requestRemove
            if !add.isEmpty || !remove.isEmpty {
                node.append(("request_headers", try headerChanges(add, remove, at: at + ".request_headers_to_add",
                                                                  levels: !outer.requestAdd.isEmpty || !outer.requestRemove.isEmpty)))
            }
        }
        let add = r.responseHeadersToAdd + outer.responseAdd, remove = r.responseHeadersToRemove + outer.responseRemove
        if !add.isEmpty || !remove.isEmpty {
            node.append(("response_headers", try headerChanges(add, remove, at: at + ".response_headers_to_add",
                                                               levels: !outer.responseAdd.isEmpty || !outer.responseRemove.isEmpty)))
        }
        return .map(node)
    }

    func match(_ m: Envoy_Config_Route_V3_RouteMatch, at: String) throws(XDSError) -> YAMLNode {
        var rest = m
        rest.pathSpecifier = nil; rest.clearCaseSensitive(); rest.headers = []; rest.queryParameters = []; rest.grpc = Data()
        try refuseLeftovers(rest, at: at)
        var out: [(String, YAMLNode)] = []
        var path: [(String, YAMLNode)] = []
        switch m.pathSpecifier {
        case .prefix(let p)?:
            let p = p.isEmpty ? "/" : p
            guard p.hasPrefix("/") else { throw XDSError("\(at).prefix: \(p): must start with /") }
            path.append(("prefix", .string(p)))
        case .path(let p)?:
            guard p.hasPrefix("/") else { throw XDSError("\(at).path: \(p): must start with /") }
            path.append(("exact", .string(p)))
        case .safeRegex(let r)?:
            path.append(("regex", .string(try regex(r, at: at + ".safe_regex"))))
        case .some(let other):
            throw XDSError("\(at): path match \(Self.caseName(other)) is not supported (prefix, path and safe_regex are)")
        case nil:
            throw XDSError("\(at): a path match (prefix, path or safe_regex) is required")
        }
        if m.hasCaseSensitive && !m.caseSensitive.value { path.append(("ignore_case", .bool(true))) }
        out.append(("path", .map(path)))
        var conditions: [YAMLNode] = []
        var methods: [YAMLNode] = []
        if !m.grpc.isEmpty {
            conditions.append(.map([("name", .string("content-type")), ("prefix", .string("application/grpc"))]))
        }
        for (i, h) in m.headers.enumerated() {
            let hat = "\(at).headers[\(i)] (\(h.name))"
            if h.name == ":method" {
                guard case .exactMatch(let v)? = h.headerMatchSpecifier ?? nil, !h.invertMatch else {
                    if case .stringMatch(let s)? = h.headerMatchSpecifier, case .exact(let v)? = s.matchPattern, !s.ignoreCase, !h.invertMatch {
                        methods.append(.string(v)); continue
                    }
                    throw XDSError("\(hat): only an exact :method match is supported")
                }
                methods.append(.string(v)); continue
            }
            guard !h.name.hasPrefix(":") else { throw XDSError("\(hat): pseudo-header matches other than :method are not supported") }
            conditions.append(try headerCondition(h, at: hat))
        }
        if !methods.isEmpty { out.append(("methods", .list(methods))) }
        if !conditions.isEmpty { out.append(("headers", .list(conditions))) }
        var query: [YAMLNode] = []
        for (i, q) in m.queryParameters.enumerated() {
            let qat = "\(at).query_parameters[\(i)] (\(q.name))"
            var c: [(String, YAMLNode)] = [("name", .string(q.name))]
            switch q.queryParameterMatchSpecifier {
            case .stringMatch(let s)?: c.append(contentsOf: try stringMatch(s, at: qat + ".string_match"))
            case .presentMatch(let p)?: c.append(p ? ("present", .bool(true)) : ("absent", .bool(true)))
            case nil: c.append(("present", .bool(true)))
            }
            query.append(.map(c))
        }
        if !query.isEmpty { out.append(("query", .list(query))) }
        return .map(out)
    }

    static func caseName<T>(_ v: T) -> String {
        let s = String(describing: v)
        return String(s.prefix { $0 != "(" })
    }

    func headerCondition(_ h: Envoy_Config_Route_V3_HeaderMatcher, at: String) throws(XDSError) -> YAMLNode {
        var rest = h
        rest.name = ""; rest.headerMatchSpecifier = nil; rest.invertMatch = false
        try refuseLeftovers(rest, at: at)
        var c: [(String, YAMLNode)] = [("name", .string(h.name))]
        switch h.headerMatchSpecifier {
        case .exactMatch(let v)?: c.append(("exact", .string(v)))
        case .prefixMatch(let v)?: c.append(("prefix", .string(v)))
        case .suffixMatch(let v)?: c.append(("suffix", .string(v)))
        case .containsMatch(let v)?: c.append(("contains", .string(v)))
        case .safeRegexMatch(let r)?: c.append(("regex", .string(try regex(r, at: at + ".safe_regex_match"))))
        case .presentMatch(let p)?: c.append(p ? ("present", .bool(true)) : ("absent", .bool(true)))
        case .stringMatch(let s)?: c.append(contentsOf: try stringMatch(s, at: at + ".string_match"))
        case .rangeMatch?: throw XDSError("\(at).range_match is not supported")
        case nil: c.append(("present", .bool(true)))
        }
        if h.invertMatch { c.append(("invert", .bool(true))) }
        return .map(c)
    }

    func stringMatch(_ s: Envoy_Type_Matcher_V3_StringMatcher, at: String) throws(XDSError) -> [(String, YAMLNode)] {
        var out: [(String, YAMLNode)]
        switch s.matchPattern {
        case .exact(let v)?: out = [("exact", .string(v))]
        case .prefix(let v)?: out = [("prefix", .string(v))]
        case .suffix(let v)?: out = [("suffix", .string(v))]
        case .contains(let v)?: out = [("contains", .string(v))]
        case .safeRegex(let r)?: out = [("regex", .string(try regex(r, at: at + ".safe_regex")))]
        case .custom?: throw XDSError("\(at).custom is not supported")
        case nil: throw XDSError("\(at): a match pattern is required")
        }
        if s.ignoreCase { out.append(("ignore_case", .bool(true))) }
        return out
    }

    func regex(_ r: Envoy_Type_Matcher_V3_RegexMatcher, at: String) throws(XDSError) -> String {
        var rest = r
        rest.regex = ""; rest.engineType = nil   // google_re2 is the only engine; Remora's is RE2 too
        try refuseLeftovers(rest, at: at)
        return r.regex
    }

    /// Backends and their options, or the body of the 503 Envoy would answer (`local`) when no backend is
    /// a cluster with healthy endpoints: `no healthy upstream`, or an empty body when none is known to CDS.
    func routeAction(_ a: Envoy_Config_Route_V3_RouteAction, at: String, vhostRetry: Envoy_Config_Route_V3_RetryPolicy?,
                     _ ctx: Context) throws(XDSError) -> (items: [(String, YAMLNode)], local: String?) {
        var rest = a
        rest.clusterSpecifier = nil; rest.clearTimeout(); rest.clearRetryPolicy(); rest.prefixRewrite = ""; rest.clearRegexRewrite()
        rest.requestMirrorPolicies = []; rest.hashPolicy = []; rest.clearMaxStreamDuration()
        try refuseLeftovers(rest, at: at)
        if a.hasMaxStreamDuration {
            // Istio sends zeros: no stream limit, and the gRPC deadline (grpc-timeout) honored without a
            // cap, which is what Remora does. Anything else is a limit Remora does not have.
            let m = a.maxStreamDuration, mat = at + ".max_stream_duration"
            var mr = m
            mr.clearMaxStreamDuration(); mr.clearGrpcTimeoutHeaderMax(); mr.clearGrpcTimeoutHeaderOffset()
            try refuseLeftovers(mr, at: mat)
            for (has, d, name) in [(m.hasMaxStreamDuration, m.maxStreamDuration, "max_stream_duration"),
                                   (m.hasGrpcTimeoutHeaderMax, m.grpcTimeoutHeaderMax, "grpc_timeout_header_max"),
                                   (m.hasGrpcTimeoutHeaderOffset, m.grpcTimeoutHeaderOffset, "grpc_timeout_header_offset")]
                where has && Self.ms(d) != 0 {
                throw XDSError("\(mat).\(name): only 0 is supported (Remora has no stream duration limit; it honors grpc-timeout as sent)")
            }
        }
        var backends: [(name: String, weight: Int)] = []
        switch a.clusterSpecifier {
        case .cluster(let c)?: backends = [(c, 1)]
        case .weightedClusters(let w)?:
            var wr = w
            wr.clusters = []
            try refuseLeftovers(wr, at: at + ".weighted_clusters")
            for (i, cw) in w.clusters.enumerated() {
                var cr = cw
                cr.name = ""; cr.clearWeight()
                try refuseLeftovers(cr, at: "\(at).weighted_clusters.clusters[\(i)]")
                backends.append((cw.name, cw.hasWeight ? Int(cw.weight.value) : 0))
            }
        case .some(let other):
            throw XDSError("\(at): \(Self.caseName(other)) is not supported (cluster and weighted_clusters are)")
        case nil:
            throw XDSError("\(at): a cluster is required")
        }
        let unknown = backends.filter { ctx.resources.clusters[$0.name] == nil }.map(\.name)
        if let u = unknown.first, ctx.validateClusters {
            throw XDSError("\(at): unknown cluster \(u)")
        }
        let live = backends.filter { !ctx.empty.contains($0.name) && ctx.resources.clusters[$0.name] != nil }
        if live.isEmpty { return ([], unknown.count == backends.count ? "" : "no healthy upstream") }
        if live.count != backends.count {
            let gone = backends.filter { ctx.empty.contains($0.name) || ctx.resources.clusters[$0.name] == nil }.map(\.name)
            throw XDSError("\(at): cluster(s) \(gone.joined(separator: ", ")) unknown or without a healthy endpoint; a split with such a cluster is not supported")
        }
        if !a.hashPolicy.isEmpty {
            let key = try hashKey(a.hashPolicy, at: at + ".hash_policy")
            for b in backends {
                if let had = ctx.hashKeys.byCluster[b.name], had.key != key {
                    throw XDSError("\(at).hash_policy: cluster \(b.name) is given another hash policy by \(had.at) (Remora keys the consistent hash per cluster, so every route to a cluster must hash on the same key)")
                }
                ctx.hashKeys.byCluster[b.name] = (key, at)
            }
        }
        var items: [(String, YAMLNode)] = []
        items.append(("backends", .list(backends.map { b in
            .map([("cluster", .string(ctx.clusterNames.clusterName(b.name))), ("weight", .int(b.weight))])
        })))
        if let m = try mirror(a.requestMirrorPolicies, at: at + ".request_mirror_policies", ctx) { items.append(("mirror", m)) }
        // Envoy's default route timeout is 15 s, as Remora's.
        if a.hasTimeout { items.append(("timeout", .string(try duration(a.timeout, at: at + ".timeout")))) }
        if a.hasRetryPolicy || vhostRetry != nil {
            items.append(("retry", try retry(a.hasRetryPolicy ? a.retryPolicy : vhostRetry!, at: at + ".retry_policy")))
        }
        if !a.prefixRewrite.isEmpty {
            items.append(("rewrite", .map([("prefix", .string(a.prefixRewrite))])))
        } else if a.hasRegexRewrite {
            var rr = a.regexRewrite
            rr.clearPattern(); rr.substitution = ""
            try refuseLeftovers(rr, at: at + ".regex_rewrite")
            items.append(("rewrite", .map([("regex", .string(try regex(a.regexRewrite.pattern, at: at + ".regex_rewrite.pattern"))),
                                            ("substitution", .string(a.regexRewrite.substitution))])))
        }
        return (items, nil)
    }

    /// `request_mirror_policies` (at most one) → `mirror`. nil when there is none, or when its cluster has
    /// no endpoint or (unvalidated) does not exist: Envoy's shadow then fails unseen, and Remora sends none.
    func mirror(_ ps: [Envoy_Config_Route_V3_RouteAction.RequestMirrorPolicy], at: String, _ ctx: Context) throws(XDSError) -> YAMLNode? {
        guard let p = ps.first else { return nil }
        guard ps.count == 1 else { throw XDSError("\(at): \(ps.count) mirror policies; one is supported") }
        let pat = at + "[0]"
        var rest = p
        rest.cluster = ""; rest.clearRuntimeFraction()
        rest.disableShadowHostSuffixAppend = false   // Remora's shadow keeps the Host as it is (docs/xds.md)
        rest.clearTraceSampled()                     // tracing of the shadow: without effect
        try refuseLeftovers(rest, at: pat)
        guard !p.cluster.isEmpty else { throw XDSError("\(pat).cluster: required (cluster_header is not supported)") }
        var percent = "100"
        if p.hasRuntimeFraction {
            var rf = p.runtimeFraction
            rf.runtimeKey = ""   // no runtime layer: the default value applies, as in Envoy without one
            let f = rf.defaultValue
            rf.clearDefaultValue()
            try refuseLeftovers(rf, at: pat + ".runtime_fraction")
            percent = try Self.percent(f, at: pat + ".runtime_fraction.default_value")
        }
        if ctx.resources.clusters[p.cluster] == nil {
            if ctx.validateClusters { throw XDSError("\(pat).cluster: unknown cluster \(p.cluster)") }
            return nil
        }
        if ctx.empty.contains(p.cluster) { return nil }
        return .map([("cluster", .string(ctx.clusterNames.clusterName(p.cluster))), ("percent", .string(percent))])
    }

    /// A FractionalPercent as a decimal percentage (`"12.5"`); above 100 % counts as 100 %, as in Envoy.
    static func percent(_ f: Envoy_Type_V3_FractionalPercent, at: String) throws(XDSError) -> String {
        let denominator: UInt64
        switch f.denominator {
        case .hundred: denominator = 100
        case .tenThousand: denominator = 10_000
        case .million: denominator = 1_000_000
        default: throw XDSError("\(at).denominator: \(f.denominator)")
        }
        // In millionths of the whole, then printed as a percentage with up to 4 decimals.
        let ppm = min(UInt64(f.numerator) * (1_000_000 / denominator), 1_000_000)
        let whole = ppm / 10_000, frac = ppm % 10_000
        if frac == 0 { return "\(whole)" }
        var d = String(frac)
        d = String(repeating: "0", count: 4 - d.count) + d
        while d.hasSuffix("0") { d.removeLast() }
        return "\(whole).\(d)"
    }

    /// `hash_policy` (one policy) → a cluster `hash_on`: header, cookie (without ttl: Remora makes no
    /// cookie) or the source IP.
    func hashKey(_ ps: [Envoy_Config_Route_V3_RouteAction.HashPolicy], at: String) throws(XDSError) -> YAMLNode {
        guard ps.count == 1 else { throw XDSError("\(at): \(ps.count) hash policies; one is supported") }
        let p = ps[0]
        let pat = at + "[0]"
        var rest = p
        rest.policySpecifier = nil; rest.terminal = false   // terminal: meaningful only with several policies
        try refuseLeftovers(rest, at: pat)
        switch p.policySpecifier {
        case .header(let h)?:
            var hr = h
            hr.headerName = ""
            try refuseLeftovers(hr, at: pat + ".header")
            guard !h.headerName.isEmpty, !h.headerName.hasPrefix(":") else {
                throw XDSError("\(pat).header.header_name: \(h.headerName.isEmpty ? "required" : "pseudo-headers are not supported")")
            }
            return .map([("header", .string(h.headerName.lowercased()))])
        case .cookie(let c)?:
            var cr = c
            cr.name = ""
            try refuseLeftovers(cr, at: pat + ".cookie", note: c.hasTtl ? "Remora hashes on a cookie the client sends; it does not make one" : "")
            guard !c.name.isEmpty else { throw XDSError("\(pat).cookie.name: required") }
            return .map([("cookie", .string(c.name))])
        case .connectionProperties(let cp)?:
            var cr = cp
            cr.sourceIp = false
            try refuseLeftovers(cr, at: pat + ".connection_properties")
            guard cp.sourceIp else { throw XDSError("\(pat).connection_properties.source_ip: false hashes on nothing") }
            return .string("source_ip")
        case .queryParameter?: throw XDSError("\(pat).query_parameter is not supported (header, cookie and connection_properties are)")
        case .filterState?: throw XDSError("\(pat).filter_state is not supported (header, cookie and connection_properties are)")
        case nil: throw XDSError("\(pat): a policy is required")
        }
    }

    /// An HTTPFault → `fault` (nil: it does nothing). Envoy's unset percentage is 0 %.
    func fault(_ f: HTTPFault, at: String) throws(XDSError) -> YAMLNode? {
        var rest = f
        rest.clearDelay(); rest.clearAbort(); rest.headers = []
        // Runtime keys: no runtime layer, so the configured values apply (as in Envoy without one).
        rest.delayPercentRuntime = ""; rest.abortPercentRuntime = ""; rest.delayDurationRuntime = ""
        rest.abortHTTPStatusRuntime = ""; rest.maxActiveFaultsRuntime = ""; rest.responseRateLimitPercentRuntime = ""
        rest.abortGrpcStatusRuntime = ""; rest.disableDownstreamClusterStats = false
        try refuseLeftovers(rest, at: at)
        var out: [(String, YAMLNode)] = []
        if f.hasDelay {
            var d = f.delay
            d.faultDelaySecifier = nil; d.clearPercentage()
            try refuseLeftovers(d, at: at + ".delay")
            guard case .fixedDelay(let fixed)? = f.delay.faultDelaySecifier else {
                throw XDSError("\(at).delay: fixed_delay is required (header_delay is not supported)")
            }
            guard let ms = try positive(fixed, at: at + ".delay.fixed_delay") else { throw XDSError("\(at).delay.fixed_delay: must be > 0") }
            out.append(("delay", .map([("fixed", .string(ms)), ("percent", .string(try Self.percent(f.delay.percentage, at: at + ".delay.percentage")))])))
        }
        if f.hasAbort {
            var a = f.abort
            a.errorType = nil; a.clearPercentage()
            try refuseLeftovers(a, at: at + ".abort")
            var m: [(String, YAMLNode)] = []
            switch f.abort.errorType {
            case .httpStatus(let s)?:
                guard s >= 200 && s <= 599 else { throw XDSError("\(at).abort.http_status: \(s) (200...599)") }
                m.append(("status", .int(Int(s))))
            case .grpcStatus(let g)?:
                guard g >= 1 && g <= 16 else { throw XDSError("\(at).abort.grpc_status: \(g) (1...16)") }
                m.append(("grpc_status", .int(Int(g))))
            case .headerAbort?: throw XDSError("\(at).abort.header_abort is not supported")
            case nil: throw XDSError("\(at).abort: http_status or grpc_status is required")
            }
            m.append(("percent", .string(try Self.percent(f.abort.percentage, at: at + ".abort.percentage"))))
            out.append(("abort", .map(m)))
        }
        if !f.headers.isEmpty {
            let h = f.headers[0]
            var hr = h
            hr.name = ""
            if case .presentMatch(true)? = h.headerMatchSpecifier { hr.headerMatchSpecifier = nil }
            guard f.headers.count == 1, leftoverFields(hr).isEmpty, !h.name.isEmpty, !h.name.hasPrefix(":") else {
                throw XDSError("\(at).headers: only one header that is present (present_match) is supported")
            }
            if !out.isEmpty { out.append(("only_with_header", .string(h.name.lowercased()))) }
        }
        return out.isEmpty ? nil : .map(out)
    }

    /// A LocalRateLimit → `rate_limit` (nil: no bucket, or a filter that is not enabled and enforced on
    /// every request, which in Envoy only counts). Answers 429 `local_rate_limited`, as Envoy's.
    func rateLimit(_ l: LocalRateLimit, at: String) throws(XDSError) -> YAMLNode? {
        var rest = l
        rest.statPrefix = ""; rest.clearTokenBucket(); rest.clearFilterEnabled(); rest.clearFilterEnforced()
        try refuseLeftovers(rest, at: at)
        func share(_ has: Bool, _ r: Envoy_Config_Core_V3_RuntimeFractionalPercent, _ name: String) throws(XDSError) -> String {
            guard has else { return "0" }   // Envoy: unset is 0 %
            var rr = r
            rr.runtimeKey = ""; rr.clearDefaultValue()
            try refuseLeftovers(rr, at: "\(at).\(name)")
            return try Self.percent(r.defaultValue, at: "\(at).\(name).default_value")
        }
        let enabled = try share(l.hasFilterEnabled, l.filterEnabled, "filter_enabled")
        let enforced = try share(l.hasFilterEnforced, l.filterEnforced, "filter_enforced")
        guard l.hasTokenBucket else { return nil }
        if enabled == "0" || enforced == "0" { return nil }
        guard enabled == "100" && enforced == "100" else {
            throw XDSError("\(at): filter_enabled \(enabled) % and filter_enforced \(enforced) % (only 0 or 100 are supported)")
        }
        let b = l.tokenBucket
        var br = b
        br.maxTokens = 0; br.clearTokensPerFill(); br.clearFillInterval()
        try refuseLeftovers(br, at: at + ".token_bucket")
        let perFill = UInt64(b.hasTokensPerFill ? b.tokensPerFill.value : 1)
        let interval = Self.ms(b.fillInterval)
        guard b.maxTokens >= 1, perFill >= 1, interval >= 1, (perFill * 1000) % interval == 0 else {
            throw XDSError("\(at).token_bucket: \(perFill) token(s) every \(interval) ms is not a whole number per second (Remora: per_second 1...1000000, burst = max_tokens)")
        }
        let perSecond = perFill * 1000 / interval
        guard perSecond <= 1_000_000, b.maxTokens <= 1_000_000 else { throw XDSError("\(at).token_bucket: above 1000000 per second or burst") }
        return .map([("per_second", .int(Int(perSecond))), ("burst", .int(Int(b.maxTokens)))])
    }

    static let retryOn: [String: String] = [
        "5xx": "5xx", "gateway-error": "gateway-error", "reset": "reset", "connect-failure": "connect-failure",
        "refused-stream": "refused-stream", "retriable-status-codes": "retriable-status-codes",
        "cancelled": "cancelled", "deadline-exceeded": "deadline-exceeded", "internal": "internal",
        "resource-exhausted": "resource-exhausted", "unavailable": "unavailable",
    ]

    func retry(_ p: Envoy_Config_Route_V3_RetryPolicy, at: String) throws(XDSError) -> YAMLNode {
        var rest = p
        rest.retryOn = ""; rest.clearNumRetries(); rest.clearPerTryTimeout(); rest.retriableStatusCodes = []; rest.clearRetryBackOff()
        rest.hostSelectionRetryMaxAttempts = 0; rest.retryHostPredicate = []
        try refuseLeftovers(rest, at: at)
        // previous_hosts (Istio's default): Remora's retry already goes to another endpoint than the try
        // before it when the cluster has one.
        for (i, hp) in p.retryHostPredicate.enumerated() {
            var hr = hp
            hr.name = ""; hr.configType = nil
            try refuseLeftovers(hr, at: "\(at).retry_host_predicate[\(i)]")
            guard case .typedConfig(let any)? = hp.configType,
                  any.typeURL == "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
                  any.value.isEmpty else {
                throw XDSError("\(at).retry_host_predicate[\(i)] (\(hp.name)): only envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate is supported")
            }
        }
        var on: [YAMLNode] = []
        for c in p.retryOn.split(separator: ",").map({ $0.trimmingCharacters() }) where !c.isEmpty {
            guard let r = Self.retryOn[c] else { throw XDSError("\(at).retry_on: \(c) is not supported") }
            on.append(.string(r))
        }
        guard !on.isEmpty else { throw XDSError("\(at).retry_on: empty") }
        let retries = p.hasNumRetries ? Int(p.numRetries.value) : 1
        guard retries <= 9 else { throw XDSError("\(at).num_retries: \(retries) (Remora allows at most 9)") }
        var out: [(String, YAMLNode)] = [("attempts", .int(retries + 1)), ("on", .list(on))]
        if !p.retriableStatusCodes.isEmpty { out.append(("status_codes", .list(p.retriableStatusCodes.map { .int(Int($0)) }))) }
        if p.hasPerTryTimeout { out.append(("per_try_timeout", .string(try duration(p.perTryTimeout, at: at + ".per_try_timeout")))) }
        // Envoy retries any method; Remora's default is the idempotent ones.
        out.append(("methods", .list(["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST", "PATCH"].map { .string($0) })))
        if p.hasRetryBackOff {
            var b = p.retryBackOff
            let base = try duration(b.baseInterval, at: at + ".retry_back_off.base_interval")
            // Envoy's default max is 10 × base.
            let max = b.hasMaxInterval ? try duration(b.maxInterval, at: at + ".retry_back_off.max_interval")
                                       : "\(Self.ms(b.baseInterval) * 10)ms"
            b.clearBaseInterval(); b.clearMaxInterval()
            try refuseLeftovers(b, at: at + ".retry_back_off")
            out.append(("backoff", .map([("base", .string(base)), ("max", .string(max))])))
        }
        return .map(out)
    }

    func redirect(_ r: Envoy_Config_Route_V3_RedirectAction, at: String) throws(XDSError) -> [(String, YAMLNode)] {
        var rest = r
        rest.schemeRewriteSpecifier = nil; rest.hostRedirect = ""; rest.portRedirect = 0; rest.pathRewriteSpecifier = nil
        rest.responseCode = .movedPermanently; rest.stripQuery = false
        try refuseLeftovers(rest, at: at)
        var m: [(String, YAMLNode)] = []
        switch r.schemeRewriteSpecifier {
        case .httpsRedirect(true)?: m.append(("scheme", .string("https")))
        case .schemeRedirect(let s)? where s == "http" || s == "https": m.append(("scheme", .string(s)))
        case .schemeRedirect(let s)?: throw XDSError("\(at).scheme_redirect: \(s) (http or https)")
        default: break
        }
        if !r.hostRedirect.isEmpty || r.portRedirect != 0 {
            guard !r.hostRedirect.isEmpty else { throw XDSError("\(at).port_redirect without host_redirect is not supported") }
            m.append(("host", .string(r.portRedirect != 0 ? "\(r.hostRedirect):\(r.portRedirect)" : r.hostRedirect)))
        }
        let code: Int
        switch r.responseCode {
        case .movedPermanently: code = 301
        case .found: code = 302
        case .seeOther: code = 303
        case .temporaryRedirect: code = 307
        case .permanentRedirect: code = 308
        default: throw XDSError("\(at).response_code: \(r.responseCode)")
        }
        m.append(("code", .int(code)))
        if r.stripQuery { m.append(("strip_query", .bool(true))) }
        var out: [(String, YAMLNode)] = [("redirect", .map(m))]
        switch r.pathRewriteSpecifier {
        case .pathRedirect(let p)?: out.append(("rewrite", .map([("path", .string(p))])))
        case .prefixRewrite(let p)?: out.append(("rewrite", .map([("prefix", .string(p))])))
        case .regexRewrite?: throw XDSError("\(at).regex_rewrite is not supported in redirects")
        case nil: break
        }
        return out
    }

    /// `levels`: the changes come from the route and its virtual host or route configuration; a header
    /// both removed and added, or added twice, is then refused (which level wins is Envoy's ordering).
    func headerChanges(_ add: [Envoy_Config_Core_V3_HeaderValueOption], _ remove: [String], at: String,
                       levels: Bool = false) throws(XDSError) -> YAMLNode {
        var set: [(String, YAMLNode)] = [], append: [(String, YAMLNode)] = []
        var seen = Set<String>()
        let removed = Set(remove.map { $0.lowercased() })
        if levels, removed.count != remove.count {
            throw XDSError("\(at): a header removed at two levels (route, virtual host, route configuration) is not supported")
        }
        for (i, o) in add.enumerated() {
            let hat = "\(at)[\(i)]"
            var rest = o
            rest.clearHeader(); rest.clearAppend(); rest.appendAction = .appendIfExistsOrAdd
            try refuseLeftovers(rest, at: hat)
            var hv = o.header
            let name = hv.key.lowercased()
            var value = hv.value
            if value.isEmpty && !hv.rawValue.isEmpty {
                guard let s = String(validating: hv.rawValue, as: UTF8.self) else { throw XDSError("\(hat).header.raw_value: not UTF-8") }
                value = s
            }
            hv.key = ""; hv.value = ""; hv.rawValue = Data()
            try refuseLeftovers(hv, at: hat + ".header")
            guard !value.contains("%") else { throw XDSError("\(hat).header.value: %VARIABLE% formatters are not supported (values are literal)") }
            guard seen.insert(name).inserted else {
                throw XDSError("\(hat): header \(name) changed twice\(levels ? " (route, virtual host and route configuration levels together)" : "") is not supported")
            }
            if levels && removed.contains(name) {
                throw XDSError("\(hat): header \(name) both added and removed (route, virtual host and route configuration levels together) is not supported")
            }
            let overwrite: Bool
            if o.hasAppend {
                overwrite = !o.append.value
            } else {
                switch o.appendAction {
                case .appendIfExistsOrAdd: overwrite = false
                case .overwriteIfExistsOrAdd: overwrite = true
                default: throw XDSError("\(hat).append_action: \(o.appendAction) is not supported")
                }
            }
            if overwrite { set.append((name, .string(value))) } else { append.append((name, .string(value))) }
        }
        var out: [(String, YAMLNode)] = []
        if !set.isEmpty { out.append(("set", .map(set))) }
        if !append.isEmpty { out.append(("add", .map(append))) }
        if !remove.isEmpty { out.append(("remove", .list(remove.map { .string($0.lowercased()) }))) }
        return .map(out)
    }

    // MARK: clusters

    /// nil: an EDS cluster whose assignment has not arrived. A node with `endpoints: []`: no healthy endpoint.
    func cluster(_ c: Cluster, _ r: XDSResources, _ names: inout NameMap) throws(XDSError) -> YAMLNode? {
        let at = "Cluster \(c.name)"
        var rest = c
        rest.name = ""; rest.clusterDiscoveryType = nil; rest.clearEdsClusterConfig(); rest.clearConnectTimeout()
        rest.lbPolicy = .roundRobin; rest.clearLoadAssignment(); rest.healthChecks = []; rest.clearCircuitBreakers()
        rest.clearOutlierDetection(); rest.clearHTTP2ProtocolOptions(); rest.typedExtensionProtocolOptions = [:]
        rest.clearCommonHTTPProtocolOptions(); rest.clearCommonLbConfig()
        rest.metadata = Data()   // read by filters and subset balancing, neither of which is translated
        if c.type != .strictDns {   // DNS settings of a cluster that resolves nothing: without effect in Envoy too
            rest.dnsLookupFamily = .auto; rest.respectDnsTtl = false; rest.clearDnsRefreshRate()
        }
        rest.clearTransportSocket()
        try refuseLeftovers(rest, at: at)
        var node: [(String, YAMLNode)] = [("name", .string(names.cluster(c.name)))]
        let cla: ClusterLoadAssignment
        switch c.clusterDiscoveryType {
        case .type(.static)?, .type(.strictDns)?, nil:
            cla = c.loadAssignment
        case .type(.eds)?:
            var e = c.edsClusterConfig
            try adsSource(e.edsConfig, at: at + ".eds_cluster_config.eds_config")
            e.clearEdsConfig(); e.serviceName = ""
            try refuseLeftovers(e, at: at + ".eds_cluster_config")
            guard let got = r.endpoints[c.edsClusterConfig.serviceName.isEmpty ? c.name : c.edsClusterConfig.serviceName] else { return nil }
            cla = got
        case .type(let t)?:
            throw XDSError("\(at).type: \(t) is not supported (STATIC, STRICT_DNS and EDS are)")
        case .clusterType?:
            throw XDSError("\(at).cluster_type is not supported")
        }
        var protocolOptions: (http2: Envoy_Config_Core_V3_Http2ProtocolOptions?, idle: Duration?) = (nil, nil)
        if c.hasHTTP2ProtocolOptions { protocolOptions.http2 = c.http2ProtocolOptions }
        if c.hasCommonHTTPProtocolOptions {
            var o = c.commonHTTPProtocolOptions
            if o.hasIdleTimeout { protocolOptions.idle = o.idleTimeout; o.clearIdleTimeout() }
            try refuseLeftovers(o, at: at + ".common_http_protocol_options")
        }
        for (key, any) in c.typedExtensionProtocolOptions {
            let oat = "\(at).typed_extension_protocol_options[\(key)]"
            guard any.typeURL.hasSuffix("/" + UpstreamHTTPOptions.protoMessageName) else {
                throw XDSError("\(oat): \(any.typeURL) is not supported")
            }
            let o: UpstreamHTTPOptions
            do { o = try UpstreamHTTPOptions(unpackingAny: any) } catch { throw XDSError("\(oat): does not decode: \(error)") }
            var or = o
            or.clearCommonHTTPProtocolOptions(); or.upstreamProtocolOptions = nil
            try refuseLeftovers(or, at: oat)
            if o.hasCommonHTTPProtocolOptions {
                var co = o.commonHTTPProtocolOptions
                if co.hasIdleTimeout { protocolOptions.idle = co.idleTimeout; co.clearIdleTimeout() }
                try refuseLeftovers(co, at: oat + ".common_http_protocol_options")
            }
            switch o.upstreamProtocolOptions {
            case .explicitHTTPConfig(let e)?:
                switch e.protocolConfig {
                case .http2ProtocolOptions(let h2)?: protocolOptions.http2 = h2
                case .httpProtocolOptions(let h1)?: try refuseLeftovers(h1, at: oat + ".explicit_http_config.http_protocol_options")
                default: throw XDSError("\(oat).explicit_http_config: only http_protocol_options and http2_protocol_options are supported")
                }
            case nil: break
            default: throw XDSError("\(oat): only explicit_http_config is supported")
            }
        }
        if let h2 = protocolOptions.http2 {
            node.append(("protocol", .string("http2")))
            let s = try http2(h2, at: at + ".http2_protocol_options", listener: false)
            if s != .map([]) { node.append(("http2", s)) }
        }
        if c.hasTransportSocket {
            let tls = try upstreamTLS(c.transportSocket, at: at + ".transport_socket", r)
            // Without http2 options Envoy speaks HTTP/1.1 whatever ALPN the server picks; Remora would
            // take a TLS cluster offering both h2 and http/1.1 for `protocol: auto`, so say http1.
            if protocolOptions.http2 == nil, case .map(let fields) = tls,
               case .list(let alpn)? = fields.first(where: { $0.0 == "alpn" })?.1,
               alpn.contains(.string("h2")) && alpn.contains(.string("http/1.1")) {
                node.append(("protocol", .string("http1")))
            }
            node.append(("tls", tls))
        }
        node.append(("endpoints", .list(try endpoints(cla, at: at))))
        let lb: String
        switch c.lbPolicy {
        case .roundRobin: lb = "round_robin"
        case .leastRequest: lb = "least_request"
        case .ringHash: lb = "ring_hash"
        case .random: lb = "random"
        case .maglev: lb = "maglev"
        default: throw XDSError("\(at).lb_policy: \(c.lbPolicy) is not supported")
        }
        node.append(("lb", .string(lb)))
        if c.hasConnectTimeout {
            guard let ms = try positive(c.connectTimeout, at: at + ".connect_timeout") else { throw XDSError("\(at).connect_timeout: must be > 0") }
            node.append(("connect_timeout", .string(ms)))
        }
        if let idle = protocolOptions.idle {
            guard let ms = try positive(idle, at: at + ".idle_timeout") else { throw XDSError("\(at): idle_timeout 0 (none) is not supported") }
            node.append(("idle_timeout", .string(ms)))
        }
        // Envoy's clusters always have breakers (1024 connections, pending, requests; 3 retries: Remora's
        // defaults for a `circuit_breaker:`), and no retry budget unless one is given (Remora's is on by default).
        let (breaker, budget) = try breakers(c.hasCircuitBreakers ? c.circuitBreakers : .init(), at: at + ".circuit_breakers")
        node.append(("circuit_breaker", breaker))
        node.append(("retry_budget", budget))
        if c.hasCommonLbConfig {
            var l = c.commonLbConfig
            let lat = at + ".common_lb_config"
            // Locality weighting: one locality is all Remora knows (locality is ignored); the merge window
            // only batches updates.
            if case .localityWeightedLbConfig? = l.localityConfigSpecifier { l.localityConfigSpecifier = nil }
            l.clearUpdateMergeWindow(); l.clearHealthyPanicThreshold()
            try refuseLeftovers(l, at: lat)
            if c.commonLbConfig.hasHealthyPanicThreshold {
                let v = c.commonLbConfig.healthyPanicThreshold.value
                guard v >= 0, v <= 100, v == v.rounded() else {
                    throw XDSError("\(lat).healthy_panic_threshold: \(v) (Remora: a whole percentage 0...100)")
                }
                node.append(("panic_threshold", .int(Int(v))))   // Envoy's default, 50, is Remora's
            }
        }
        if c.hasOutlierDetection { node.append(("outlier_detection", try outlier(c.outlierDetection, at: at + ".outlier_detection"))) }
        if c.healthChecks.count > 1 { throw XDSError("\(at).health_checks: \(c.healthChecks.count) health checks; at most one is supported") }
        if let hc = c.healthChecks.first { node.append(("health_check", try healthCheck(hc, at: at + ".health_checks[0]"))) }
        return .map(node)
    }

    func endpoints(_ cla: ClusterLoadAssignment, at: String) throws(XDSError) -> [YAMLNode] {
        var rest = cla
        rest.clusterName = ""; rest.endpoints = []
        try refuseLeftovers(rest, at: at + " (ClusterLoadAssignment \(cla.clusterName))")
        var out: [YAMLNode] = []
        for (li, loc) in cla.endpoints.enumerated() {
            let lat = "\(at): endpoints[\(li)]"
            var lr = loc
            lr.lbEndpoints = []; lr.locality = Data()   // locality: informational (no zone-aware balancing)
            lr.metadata = Data()   // metadata: read by subset balancing and transport socket matches, neither translated
            try refuseLeftovers(lr, at: lat)
            for (ei, e) in loc.lbEndpoints.enumerated() {
                let eat = "\(lat).lb_endpoints[\(ei)]"
                var er = e
                er.hostIdentifier = nil; er.healthStatus = .unknown; er.clearLoadBalancingWeight()
                er.metadata = Data()   // Istio's labels and tlsMode: see the locality's metadata
                try refuseLeftovers(er, at: eat)
                guard case .endpoint(let ep)? = e.hostIdentifier else { throw XDSError("\(eat): endpoint is required (endpoint_name is not supported)") }
                var epr = ep
                epr.clearAddress(); epr.hostname = ""
                try refuseLeftovers(epr, at: eat + ".endpoint")
                switch e.healthStatus {
                case .unhealthy, .draining, .timeout: continue    // out of load balancing, as in Envoy
                default: break
                }
                let addr = try address(ep.address, at: eat + ".endpoint.address")
                if e.hasLoadBalancingWeight {
                    let w = Int(e.loadBalancingWeight.value)
                    guard w >= 1 && w <= 10000 else { throw XDSError("\(eat).load_balancing_weight: \(w) (Remora: 1...10000)") }
                    out.append(.map([("address", .string(addr)), ("weight", .int(w))]))
                } else {
                    out.append(.string(addr))
                }
            }
        }
        return out
    }

    /// `circuit_breaker` and `retry_budget`. Limits above Remora's 1,000,000 (Istio sends 2^32 - 1 for
    /// "no limit") become 1,000,000. With a `retry_budget`, Envoy no longer applies `max_retries`.
    func breakers(_ b: Envoy_Config_Cluster_V3_CircuitBreakers, at: String) throws(XDSError) -> (YAMLNode, YAMLNode) {
        var rest = b
        rest.thresholds = []
        try refuseLeftovers(rest, at: at)
        var out: [(String, YAMLNode)] = []
        var budget: YAMLNode = .string("off")
        func limit(_ v: UInt32) -> YAMLNode { .int(min(Int(v), 1_000_000)) }
        for (i, t) in b.thresholds.enumerated() {
            let tat = "\(at).thresholds[\(i)]"
            guard t.priority == .default else { throw XDSError("\(tat).priority: \(t.priority) (only DEFAULT is supported)") }
            var tr = t
            tr.clearMaxConnections(); tr.clearMaxPendingRequests(); tr.clearMaxRequests(); tr.clearMaxRetries(); tr.trackRemaining = false
            tr.clearRetryBudget()
            try refuseLeftovers(tr, at: tat)
            if t.hasMaxConnections { out.append(("max_connections", limit(t.maxConnections.value))) }
            if t.hasMaxPendingRequests { out.append(("max_pending", limit(t.maxPendingRequests.value))) }
            if t.hasMaxRequests { out.append(("max_requests", limit(t.maxRequests.value))) }
            if t.hasRetryBudget {
                var rb = t.retryBudget
                rb.clearBudgetPercent(); rb.clearMinRetryConcurrency()
                try refuseLeftovers(rb, at: tat + ".retry_budget")
                // Envoy's defaults, 20 % and 3, are Remora's.
                let percent = t.retryBudget.hasBudgetPercent ? t.retryBudget.budgetPercent.value : 20
                guard percent >= 0, percent <= 100 else { throw XDSError("\(tat).retry_budget.budget_percent: \(percent) (0...100)") }
                var p = String(percent)
                if p.hasSuffix(".0") { p.removeLast(2) }
                budget = .map([("percent", .string(p)),
                               ("min_concurrency", .int(Int(t.retryBudget.hasMinRetryConcurrency ? t.retryBudget.minRetryConcurrency.value : 3)))])
                out.append(("max_retries", .int(1_000_000)))
            } else if t.hasMaxRetries {
                out.append(("max_retries", limit(t.maxRetries.value)))
            }
        }
        return (.map(out), budget)
    }

    func outlier(_ o: Envoy_Config_Cluster_V3_OutlierDetection, at: String) throws(XDSError) -> YAMLNode {
        var rest = o
        rest.clearConsecutive5Xx(); rest.clearConsecutiveGatewayFailure(); rest.clearConsecutiveLocalOriginFailure()
        rest.clearInterval(); rest.clearBaseEjectionTime(); rest.clearMaxEjectionTime(); rest.clearMaxEjectionPercent()
        rest.clearEnforcingConsecutive5Xx(); rest.clearEnforcingConsecutiveGatewayFailure()
        rest.clearEnforcingConsecutiveLocalOriginFailure(); rest.splitExternalLocalOriginErrors = false
        if o.hasEnforcingSuccessRate && o.enforcingSuccessRate.value == 0 { rest.clearEnforcingSuccessRate() }
        try refuseLeftovers(rest, at: at, note: "success-rate and failure-percentage ejection are not supported")
        func enforced(_ has: Bool, _ v: UInt32, default d: Bool, _ name: String) throws(XDSError) -> Bool {
            guard has else { return d }
            guard v == 0 || v == 100 else { throw XDSError("\(at).\(name): \(v) (only 0 or 100 are supported)") }
            return v == 100
        }
        var out: [(String, YAMLNode)] = []
        // Envoy's defaults: 5xx enforced at 100 %, gateway failures at 0 % (detected, never ejected), local
        // origin failures only apart from 5xx when split_external_local_origin_errors.
        let e5 = try enforced(o.hasEnforcingConsecutive5Xx, o.enforcingConsecutive5Xx.value, default: true, "enforcing_consecutive_5xx")
        out.append(("consecutive_5xx", .int(e5 ? Int(o.hasConsecutive5Xx ? o.consecutive5Xx.value : 5) : 0)))
        let eg = try enforced(o.hasEnforcingConsecutiveGatewayFailure, o.enforcingConsecutiveGatewayFailure.value, default: false,
                              "enforcing_consecutive_gateway_failure")
        out.append(("consecutive_gateway_errors", .int(eg ? Int(o.hasConsecutiveGatewayFailure ? o.consecutiveGatewayFailure.value : 5) : 0)))
        let el = try enforced(o.hasEnforcingConsecutiveLocalOriginFailure, o.enforcingConsecutiveLocalOriginFailure.value, default: true,
                              "enforcing_consecutive_local_origin_failure")
        let local = o.splitExternalLocalOriginErrors && el
        out.append(("consecutive_local_failures", .int(local ? Int(o.hasConsecutiveLocalOriginFailure ? o.consecutiveLocalOriginFailure.value : 5) : 0)))
        out.append(("interval", .string(o.hasInterval ? try duration(o.interval, at: at + ".interval") : "10s")))
        out.append(("base_ejection_time", .string(o.hasBaseEjectionTime ? try duration(o.baseEjectionTime, at: at + ".base_ejection_time") : "30s")))
        out.append(("max_ejection_time", .string(o.hasMaxEjectionTime ? try duration(o.maxEjectionTime, at: at + ".max_ejection_time") : "300s")))
        // Envoy's default is 10 %.
        out.append(("max_ejection_percent", .int(o.hasMaxEjectionPercent ? Int(o.maxEjectionPercent.value) : 10)))
        return .map(out)
    }

    func healthCheck(_ h: Envoy_Config_Core_V3_HealthCheck, at: String) throws(XDSError) -> YAMLNode {
        var rest = h
        rest.clearTimeout(); rest.clearInterval(); rest.clearUnhealthyThreshold(); rest.clearHealthyThreshold()
        rest.intervalJitterPercent = 0; rest.healthChecker = nil; rest.clearReuseConnection()
        try refuseLeftovers(rest, at: at)
        if h.hasReuseConnection && !h.reuseConnection.value { throw XDSError("\(at).reuse_connection: false is not supported") }
        var out: [(String, YAMLNode)] = []
        switch h.healthChecker {
        case .httpHealthCheck(let hh)?:
            var hr = hh
            hr.path = ""; hr.expectedStatuses = []; hr.codecClientType = .http1
            try refuseLeftovers(hr, at: at + ".http_health_check")
            guard hh.codecClientType == .http1 else { throw XDSError("\(at).http_health_check.codec_client_type: only HTTP1") }
            var m: [(String, YAMLNode)] = [("path", .string(hh.path))]
            if !hh.expectedStatuses.isEmpty {
                var codes: [YAMLNode] = []
                for r in hh.expectedStatuses {
                    guard r.start >= 100, r.end <= 600, r.start < r.end, codes.count + Int(r.end - r.start) <= 500 else {
                        throw XDSError("\(at).http_health_check.expected_statuses: [\(r.start), \(r.end)) is not supported")
                    }
                    for c in r.start..<r.end { codes.append(.int(Int(c))) }
                }
                m.append(("expect", .list(codes)))
            }
            out.append(("http", .map(m)))
        case .tcpHealthCheck(let t)?:
            try refuseLeftovers(t, at: at + ".tcp_health_check")
            out.append(("tcp", .map([])))
        default:
            throw XDSError("\(at): only http_health_check and tcp_health_check are supported")
        }
        guard h.hasTimeout, h.hasInterval, h.hasUnhealthyThreshold, h.hasHealthyThreshold else {
            throw XDSError("\(at): timeout, interval, unhealthy_threshold and healthy_threshold are required")
        }
        out.append(("interval", .string(try duration(h.interval, at: at + ".interval"))))
        out.append(("timeout", .string(try duration(h.timeout, at: at + ".timeout"))))
        out.append(("jitter", .int(Int(h.intervalJitterPercent))))
        out.append(("unhealthy_threshold", .int(Int(h.unhealthyThreshold.value))))
        out.append(("healthy_threshold", .int(Int(h.healthyThreshold.value))))
        return .map(out)
    }

    // MARK: values

    func address(_ a: Envoy_Config_Core_V3_Address, at: String) throws(XDSError) -> String {
        guard case .socketAddress(let s)? = a.address else { throw XDSError("\(at): only socket_address is supported") }
        var rest = s
        rest.address = ""; rest.portSpecifier = nil
        try refuseLeftovers(rest, at: at + ".socket_address")
        guard case .portValue(let p)? = s.portSpecifier, p <= 65535 else { throw XDSError("\(at).socket_address: port_value is required") }
        guard !s.address.isEmpty else { throw XDSError("\(at).socket_address.address: required") }
        return s.address.contains(":") ? "[\(s.address)]:\(p)" : "\(s.address):\(p)"
    }

    static func ms(_ d: Duration) -> UInt64 {
        UInt64(max(0, d.seconds)) * 1000 + UInt64((max(0, d.nanos) + 999_999) / 1_000_000)
    }

    /// `"Nms"`; Envoy's nanoseconds are rounded up to whole milliseconds.
    func duration(_ d: Duration, at: String) throws(XDSError) -> String {
        guard d.seconds >= 0, d.nanos >= 0 else { throw XDSError("\(at): negative duration") }
        guard d.seconds < 100_000_000 else { throw XDSError("\(at): too long") }
        return "\(Self.ms(d))ms"
    }

    /// nil for a zero duration.
    func positive(_ d: Duration, at: String) throws(XDSError) -> String? {
        let s = try duration(d, at: at)
        return Self.ms(d) == 0 ? nil : s
    }
}

/// xDS names → Remora names (`[A-Za-z0-9_.-]+`, unique): other bytes become `_`, a clash gets `_2`, `_3`….
struct NameMap: Sendable {
    var listeners: [String: String] = [:]
    var clusters: [String: String] = [:]
    var used = Set<String>()
    var usedClusters = Set<String>()

    static func clean(_ s: String) -> String {
        let c = String(String.UnicodeScalarView(s.unicodeScalars.map { u in
            (u.value < 128 && (u.properties.isAlphabetic || ("0"..."9").contains(Character(u)) || u == "_" || u == "." || u == "-")) ? u : "_"
        }))
        return c.isEmpty ? "_" : String(c.prefix(200))
    }

    mutating func unique(_ s: String) -> String {
        let base = Self.clean(s)
        var n = base, i = 2
        while !used.insert(n).inserted { n = "\(base)_\(i)"; i += 1 }
        return n
    }

    mutating func listener(_ s: String) -> String {
        if let n = listeners[s] { return n }
        let n = unique(s)
        listeners[s] = n
        return n
    }

    mutating func cluster(_ s: String) -> String {
        if let n = clusters[s] { return n }
        let base = Self.clean(s)
        var n = base, i = 2
        while !usedClusters.insert(n).inserted { n = "\(base)_\(i)"; i += 1 }
        clusters[s] = n
        return n
    }

    /// The name a cluster was given (translated before the routes).
    func clusterName(_ s: String) -> String { clusters[s] ?? Self.clean(s) }
}

extension Substring {
    func trimmingCharacters() -> String {
        String(self.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

/// An IPv4 or IPv6 address as bytes (4 or 16), for `prefix_ranges`.
struct IPBytes {
    var bytes: [UInt8]

    init?(_ s: String) {
        var b4 = in_addr()
        if inet_pton(AF_INET, s, &b4) == 1 {
            bytes = withUnsafeBytes(of: &b4) { Array($0) }
            return
        }
        var b6 = in6_addr()
        if inet_pton(AF_INET6, s, &b6) == 1 {
            bytes = withUnsafeBytes(of: &b6) { Array($0) }
            return
        }
        return nil
    }

    var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }

    /// `ip` is in this network of `prefix` bits (same family only).
    func contains(_ ip: IPBytes, prefix: Int) -> Bool {
        guard ip.bytes.count == bytes.count, prefix >= 0, prefix <= bytes.count * 8 else { return false }
        var left = prefix
        for i in 0..<bytes.count where left > 0 {
            let bits = min(8, left)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - bits))
            if bytes[i] & mask != ip.bytes[i] & mask { return false }
            left -= bits
        }
        return true
    }
}
