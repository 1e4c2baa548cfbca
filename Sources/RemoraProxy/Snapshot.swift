import CRemoraSupport
import RemoraCore
import RemoraIO
import RemoraPolicy
import RemoraRouting
import RemoraTLS

/// One validated, compiled, immutable configuration, shared read-only by every worker.
/// Endpoint names are resolved here, once, off the workers.
public final class Snapshot: Sendable {
    public let config: Config
    /// Per listener (same order as config.listeners): compiled route table (empty for TCP).
    public let routeTables: [RouteTable]
    /// Per cluster (same order as config.clusters): resolved endpoint addresses.
    public let endpoints: [[SocketAddress]]
    /// Per cluster, per resolved address: its weight (an address inherits its name's).
    public let weights: [[Int]]
    /// Per cluster, per configured endpoint: the addresses it resolved to (`endpoints` flattens
    /// these; a DNS refresh compares and replaces them).
    public let resolved: [[[SocketAddress]]]
    /// Endpoint names of `dns_refresh` clusters that did not resolve here ("cluster: host:port") and
    /// had no addresses in `previous`: they count none until a refresh resolves them (a name with
    /// addresses in `previous` keeps those; other clusters' names must resolve).
    public let unresolved: [String]
    /// Per TCP listener: cluster index; -1 for HTTP listeners.
    public let tcpCluster: [Int]
    /// Per listener: the cluster of its CONNECT tunnels (`connect:`), -1 = none.
    let connectCluster: [Int]
    /// Per cluster: the CONNECT targets it allows, as written (`host:port`, lowercased) and as
    /// resolved, each to the index of its (first) resolved endpoint.
    let connectTargets: [[String: Int]]
    /// Per listener, per route: the route's local rate limit bucket, shared by every worker (nil: none).
    let rateLimitBuckets: [[SharedTokenBucket?]]
    /// Per cluster: what its workers share (breaker counts, outlier detection), the previous
    /// snapshot's when the cluster's config and endpoints did not change.
    let shared: [ClusterShared]
    /// Per listener: its TLS server side (certificates by SNI, ticket keys), nil for plaintext.
    /// Kept from the previous snapshot while the listener's `tls:` is unchanged (its certificates
    /// reload when their files change, `Server+TLS.swift`), so tickets stay valid across reloads.
    let listenerTLS: [TLSServerContext?]
    /// Per cluster: its TLS client side (CA, SANs, client certificate, last session), or nil.
    let clusterTLS: [TLSClientContext?]
    /// Per listener: its compiled authorization policies (nil: none).
    let authorization: [ListenerAuthorization?]
    /// Per listener: its open connections over all workers (`max_connections`), the previous
    /// snapshot's counter for a listener of the same name; and the process's.
    let connections: [ConnectionCounter]
    let processConnections: ConnectionCounter

    /// `previous`: the snapshot this one replaces (its clusters' shared state carries over).
    /// `resolved`: per cluster index, the addresses of each configured endpoint already resolved
    /// (a DNS refresh); the other clusters' names are resolved here, synchronously.
    public init(config: Config, previous: Snapshot? = nil, resolved given: [Int: [[SocketAddress]]] = [:]) throws {
        self.config = config
        var index: [String: Int] = [:]
        for (i, c) in config.clusters.enumerated() { index[c.name] = i }
        var tables: [RouteTable] = []
        for l in config.listeners { tables.append(try RouteTable(l, clusters: index)) }
        routeTables = tables
        authorization = try config.listeners.map { l in try ListenerAuthorization(l) }
        let process = previous?.processConnections ?? ConnectionCounter(process: nil)
        processConnections = process
        connections = config.listeners.map { l in
            if let p = previous, let j = p.config.listeners.firstIndex(where: { $0.name == l.name }) { return p.connections[j] }
            return ConnectionCounter(process: process)
        }
        rateLimitBuckets = tables.map { $0.rateLimits.map { $0.map(SharedTokenBucket.init) } }
        tcpCluster = config.listeners.map { l in l.cluster.flatMap { index[$0] } ?? -1 }
        connectCluster = config.listeners.map { l in l.connect.flatMap { index[$0.cluster] } ?? -1 }
        var targets: [[String: Int]] = []
        var eps: [[SocketAddress]] = []
        var ws: [[Int]] = []
        var all: [[[SocketAddress]]] = []
        var missing: [String] = []
        for (ci, c) in config.clusters.enumerated() {
            var list: [SocketAddress] = []
            var w: [Int] = []
            var t: [String: Int] = [:]
            var per: [[SocketAddress]] = []
            for (i, e) in c.endpoints.enumerated() {
                do {
                    let resolved = try given[ci].map { $0[i] } ?? Snapshot.lookup(e, c.dnsLookupFamily)
                    if !resolved.isEmpty, t[e.description.lowercased()] == nil { t[e.description.lowercased()] = list.count }
                    for (k, a) in resolved.enumerated() where t[a.description] == nil { t[a.description] = list.count + k }
                    list += resolved
                    per.append(resolved)
                    w += Array(repeating: c.weight(ofEndpoint: i), count: resolved.count)
                } catch where c.dnsRefresh != nil && SocketAddress(ip: e.host, port: e.port) == nil {
                    // Its last addresses (a reload while the lookup fails), or none yet; the refresh keeps trying.
                    if let p = previous, let j = p.config.clusters.firstIndex(where: { $0.name == c.name }),
                       let k = p.config.clusters[j].endpoints.firstIndex(of: e), !p.resolved[j][k].isEmpty {
                        let last = p.resolved[j][k]
                        list += last
                        per.append(last)
                        w += Array(repeating: c.weight(ofEndpoint: i), count: last.count)
                    } else {
                        per.append([])
                        missing.append("\(c.name): \(e)")
                    }
                } catch {
                    throw ConfigErrors([ConfigError(file: "", line: 0, path: "clusters.\(c.name).endpoints",
                                                    message: "cannot resolve \(e): \(error)")])
                }
            }
            eps.append(list)
            ws.append(w)
            targets.append(t)
            all.append(per)
        }
        endpoints = eps
        weights = ws
        resolved = all
        unresolved = missing
        listenerTLS = try Snapshot.listenerTLS(config, previous: previous)
        clusterTLS = try Snapshot.clusterTLS(config, previous: previous)
        connectTargets = targets
        shared = config.clusters.enumerated().map { i, c in
            if let p = previous, let j = p.config.clusters.firstIndex(where: { $0.name == c.name }),
               p.config.clusters[j] == c, p.endpoints[j].map(\.description) == eps[i].map(\.description), p.weights[j] == ws[i] {
                return p.shared[j]
            }
            let s = ClusterShared(config: c, endpoints: eps[i].count, addresses: eps[i].map(\.description), weights: ws[i],
                                  workers: config.workers > 0 ? config.workers : onlineCPUs())
            // Only the endpoint set changed: what stays keeps its health, ejection and counters.
            if let p = previous, let j = p.config.clusters.firstIndex(where: { $0.name == c.name }),
               p.config.clusters[j].sameApartFromEndpoints(c) {
                s.inherit(from: p.shared[j], oldIndex: EndpointSetDiff(old: p.endpoints[j].map(\.description),
                                                                       new: eps[i].map(\.description)).oldIndex)
            }
            return s
        }
    }

    /// Loads every certificate, key and CA file `config` names (`remora validate`): the first problem,
    /// by the path of its field, or nil.
    /// The identity files of `sidecar.mtls.from_control` are not checked: the proxy fetches them.
    public static func checkTLSFiles(_ config: Config) -> ConfigErrors? {
        var config = config
        if let id = config.sidecar?.mtls?.fromControl {
            for i in config.listeners.indices where config.listeners[i].tls?.certificates.first?.cert == id.identityFile {
                config.listeners[i].tls = nil
            }
            for i in config.clusters.indices where config.clusters[i].tls?.cert == id.identityFile { config.clusters[i].tls = nil }
        }
        do {
            _ = try listenerTLS(config, previous: nil)
            _ = try clusterTLS(config, previous: nil)
            return nil
        } catch let e as ConfigErrors { return e } catch { return ConfigErrors([]) }
    }

    /// Per listener: its TLS server side, the previous snapshot's when its `tls:` did not change.
    static func listenerTLS(_ config: Config, previous: Snapshot?) throws -> [TLSServerContext?] {
        var out: [TLSServerContext?] = []
        for l in config.listeners {
            guard let t = l.tls else { out.append(nil); continue }
            if let p = previous, let j = p.config.listeners.firstIndex(where: { $0.name == l.name }),
               p.config.listeners[j].tls == t, p.config.listeners[j].protocol == l.protocol, let old = p.listenerTLS[j] {
                out.append(old)
                continue
            }
            let alpn = l.protocol == .http ? t.alpn : []
            switch Result(catching: { () throws(TLSLoadError) in try TLSServerContext(listener: l.name, config: t, alpn: alpn) }) {
            case .success(let c): out.append(c)
            case .failure(let e):
                // The sidecar's inbound listeners take their `tls:` from `sidecar.mtls`: name that field.
                let path = l.protocol == .sidecarInbound
                    ? "sidecar.mtls." + (e.field == "client_ca" ? "ca" : e.field.hasSuffix(".key") ? "key" : "cert")
                    : "listeners.\(l.name).tls.\(e.field)"
                throw ConfigErrors([ConfigError(file: "", line: 0, path: path, message: e.message)])
            }
        }
        return out
    }

    /// Per cluster: its TLS client side, the previous snapshot's when its `tls:` did not change.
    static func clusterTLS(_ config: Config, previous: Snapshot?) throws -> [TLSClientContext?] {
        var out: [TLSClientContext?] = []
        for c in config.clusters {
            guard let t = c.tls else { out.append(nil); continue }
            if let p = previous, let j = p.config.clusters.firstIndex(where: { $0.name == c.name }),
               p.config.clusters[j].tls == t, p.config.clusters[j].protocol == c.protocol, let old = p.clusterTLS[j] {
                out.append(old)
                continue
            }
            let h2 = c.protocol != .http1, auto = c.protocol == .auto
            switch Result(catching: { () throws(TLSLoadError) in try TLSClientContext(cluster: c.name, config: t, http2: h2, auto: auto) }) {
            case .success(let ctx): out.append(ctx)
            case .failure(let e):
                throw ConfigErrors([ConfigError(file: "", line: 0, path: "clusters.\(c.name).tls.\(e.field)", message: e.message)])
            }
        }
        return out
    }
}

extension Snapshot {
    /// The endpoints of name or literal `e` (synchronously, at load): a name's addresses of
    /// `family`; throws when it has none.
    static func lookup(_ e: HostPort, _ family: DNSLookupFamily) throws -> [SocketAddress] {
        let all = try Resolver.resolve(e)
        if SocketAddress(ip: e.host, port: e.port) != nil { return all }
        let kept = family.keep(all.map(\.isIPv6)).map { all[$0] }
        if kept.isEmpty { throw NoAddressOfFamily(family: family) }
        return kept
    }

    struct NoAddressOfFamily: Error, CustomStringConvertible {
        let family: DNSLookupFamily
        var description: String { "no address of dns_lookup_family \(family.rawValue)" }
    }
}

/// Stats blocks of one worker for one snapshot: written only by that worker, read by the admin
/// server. Blocks come from `StatRegistry`, so a counter keeps its value across snapshots.
public final class WorkerStats: @unchecked Sendable {   // the rings: each written by its worker only
    public let listeners: [StatBlock<ListenerStat>]
    public let clusters: [StatBlock<ClusterStat>]
    /// Per listener, per backend slot of its route table.
    public let routeBackends: [[StatBlock<RouteBackendStat>]]
    /// Per listener: this worker's ring of the listener's access log file and the listener's
    /// format there (nil: no access log).
    let accessLogs: [(ring: UnsafeMutablePointer<remora_log_ring>, format: UInt16)?]
    let accessLogWriter: AccessLogWriter
    /// Per listener, per rule slot of its authorization (`ListenerAuthorization.slotNames`).
    let authzRules: [[StatBlock<AuthzRuleStat>]]
    /// Per listener: this worker's ring of the listener's span exporter (nil: no `tracing.otlp`).
    var spanExports: [(ring: UnsafeMutablePointer<remora_log_ring>, exporter: SpanExporter)?] = []

    init(listeners: [StatBlock<ListenerStat>], clusters: [StatBlock<ClusterStat>],
         routeBackends: [[StatBlock<RouteBackendStat>]], accessLogs: [(ring: UnsafeMutablePointer<remora_log_ring>, format: UInt16)?],
         accessLogWriter: AccessLogWriter, authzRules: [[StatBlock<AuthzRuleStat>]] = []) {
        self.listeners = listeners; self.clusters = clusters; self.routeBackends = routeBackends
        self.accessLogs = accessLogs; self.accessLogWriter = accessLogWriter; self.authzRules = authzRules
    }
}

/// Every stat block ever created, by full name and worker (main thread only). Blocks are never
/// freed: a worker may still write one after a snapshot dropped its name.
final class StatRegistry {
    let workers: Int
    var listeners: [String: [StatBlock<ListenerStat>]] = [:]
    var clusters: [String: [StatBlock<ClusterStat>]] = [:]
    var routes: [String: [StatBlock<RouteBackendStat>]] = [:]
    var authz: [String: [StatBlock<AuthzRuleStat>]] = [:]

    /// The access logs' writer thread (started with the first access log).
    let accessLogWriter = AccessLogWriter()
    /// One span exporter (and its thread) per OTLP collector, created on first use, kept.
    var spanExporters: [OTLPConfig: SpanExporter] = [:]

    init(workers: Int) { self.workers = workers }

    func blocks<G: StatGroup>(_ table: inout [String: [StatBlock<G>]], _ name: String) -> [StatBlock<G>] {
        if let b = table[name] { return b }
        let b = (0..<workers).map { _ in StatBlock<G>() }
        table[name] = b
        return b
    }

    /// `route.<listener>.<route>.<cluster>` names of a snapshot, per listener, by backend slot.
    static func routeNames(_ s: Snapshot) -> [[String]] {
        routeParts(s).map { $0.map { $0.joined(separator: ".") } }
    }

    /// The same names as their parts (listener, route, cluster): Prometheus labels.
    static func routeParts(_ s: Snapshot) -> [[[String]]] {
        s.routeTables.enumerated().map { l, table in
            var names = Array(repeating: [String](), count: table.backendCount)
            for r in table.info { for b in r.backends { names[b.slot] = [s.config.listeners[l].name, r.name, b.clusterName] } }
            return names
        }
    }

    /// One `WorkerStats` per worker for `snapshot`.
    func stats(for snapshot: Snapshot) -> [WorkerStats] {
        let l = snapshot.config.listeners.map { blocks(&listeners, $0.name) }
        let c = snapshot.config.clusters.map { blocks(&clusters, $0.name) }
        let r = StatRegistry.routeNames(snapshot).map { names in names.map { blocks(&routes, $0) } }
        let logs = snapshot.config.listeners.map { l in
            l.accessLog.map { log in
                let sink = accessLogWriter.sink(path: log.path, workers: workers)
                return (sink, accessLogWriter.register(log.format, in: sink))
            }
        }
        let a = StatRegistry.authzNames(snapshot).map { names in names.map { blocks(&authz, $0) } }
        let exporters = snapshot.config.listeners.map { l in
            l.tracing?.otlp.map { o in
                if let e = spanExporters[o] { return e }
                let e = SpanExporter(target: o, serviceName: snapshot.config.node ?? "remora", workers: workers)
                spanExporters[o] = e
                return e
            }
        }
        return (0..<workers).map { w in
            let s = WorkerStats(listeners: l.map { $0[w] }, clusters: c.map { $0[w] }, routeBackends: r.map { $0.map { $0[w] } },
                                accessLogs: logs.map { $0.map { ($0.0.rings[w], $0.1) } }, accessLogWriter: accessLogWriter,
                                authzRules: a.map { $0.map { $0[w] } })
            s.spanExports = exporters.map { $0.map { ($0.rings[w], $0) } }
            return s
        }
    }

    /// `authz.<listener>.<rule>` names of a snapshot (without the scope), per listener, by rule slot.
    static func authzNames(_ s: Snapshot) -> [[String]] {
        zip(s.config.listeners, s.authorization).map { l, a in (a?.slotNames ?? []).map { "\(l.name).\($0)" } }
    }

    /// The stats of the names `snapshot` uses, summed over workers (listeners, clusters, routes).
    func collect(_ snapshot: Snapshot, into out: inout StatsSnapshot) {
        // Labelled request series: a listener's are its requests answered without a cluster.
        for l in snapshot.config.listeners { out.add(ListenerStat.self, name: l.name, blocks: blocks(&listeners, l.name), destination: "") }
        for (i, c) in snapshot.config.clusters.enumerated() {
            out.add(ClusterStat.self, name: c.name, blocks: blocks(&clusters, c.name), destination: c.name)
            snapshot.shared[i].collect(into: &out)
        }
        for names in StatRegistry.authzNames(snapshot) {
            for n in names { out.add(AuthzRuleStat.self, name: n, blocks: blocks(&authz, n)) }
        }
        for names in StatRegistry.routeParts(snapshot) {
            for parts in names {
                let n = parts.joined(separator: ".")
                out.add(RouteBackendStat.self, name: n, nameParts: parts, blocks: blocks(&routes, n))
            }
        }
        for e in spanExporters.values.sorted(by: { "\($0.target.host):\($0.target.port)" < "\($1.target.host):\($1.target.port)" }) {
            e.collect(into: &out)
        }
    }
}
