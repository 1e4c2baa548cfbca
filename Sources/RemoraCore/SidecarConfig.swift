import RemoraPolicy

/// Sidecar mode (docs/sidecar.md): iptables REDIRECT sends an application's outbound connections to
/// the outbound listener and connections to it to the inbound listener, in the style of Istio's
/// ports 15001 and 15006. The section (or `remora run --sidecar`) adds those listeners, and one
/// internal HTTP listener per service, to the configuration (`SidecarConfig.expand`).
public struct SidecarConfig: Sendable, Equatable {
    /// The outbound listener's port (iptables REDIRECT --to-ports). Default 15001.
    public var outboundPort: UInt16 = 15001
    /// The inbound listener's port. Default 15006.
    public var inboundPort: UInt16 = 15006
    /// Also listen on `[::]` for IPv6 (`ip6tables` rules). Default true.
    public var ipv6 = true
    /// A connection whose original destination is no service's: sent there (`allow`, the default)
    /// or closed (`deny`).
    public var passthrough = true
    /// How long the outbound listener waits for the client's first bytes to decide the protocol;
    /// then it proxies as opaque TCP. Default 300 ms, range 10 ms ... 10 s.
    public var sniffTimeout: Millis = 300
    /// Ports of protocols where the server speaks first (SMTP, MySQL, SSH): not sniffed, proxied as
    /// TCP at once. Default [22, 25, 3306].
    public var serverFirstPorts: [UInt16] = [22, 25, 3306]
    /// Destinations the proxy knows, by original address and port.
    public var services: [SidecarService] = []
    /// Inbound ports served as HTTP (or sniffed, `auto`): their connections go through an internal
    /// HTTP listener `inbound_<port>` (request stats, access logs, the request-head policy) to the
    /// cluster `inbound_<port>`, the application at 127.0.0.1:<port>. Other inbound ports: bytes to
    /// 127.0.0.1:<port> ([::1] for IPv6). Default none.
    public var inbound: [SidecarInboundPort] = []
    /// Mutual TLS between sidecars (`mtls:`): the workload's certificate and the mesh CA. Inbound,
    /// the inbound listeners terminate TLS and require a certificate the CA signed (`strict`), or
    /// also take plaintext (`permissive`); outbound, the clusters of services with `mtls: true`
    /// originate mTLS with the same certificate. nil (default): plaintext both ways, no cost.
    public var mtls: SidecarMTLS?
    /// An access log for every listener of the sidecar (outbound, inbound, the services' and inbound
    /// ports' HTTP listeners): requests and byte connections, with the peer's identity under mtls.
    /// nil (default): none.
    public var accessLog: AccessLogConfig?
    /// Outbound connections whose sniffing found HTTP go through the HTTP listener of their service;
    /// its settings (timeouts, limits) are these listener defaults.
    public init() {}

    public static let outboundName = "sidecar_outbound"
    public static let inboundName = "sidecar_inbound"

    /// The listeners the section stands for: outbound and inbound (and their IPv6 twins), one
    /// internal HTTP listener per service (`outbound_<service>`).
    public func listeners() -> [ListenerConfig] {
        var out: [ListenerConfig] = []
        var outbound = SidecarOutbound(services: services, passthrough: passthrough, serverFirstPorts: serverFirstPorts)
        for i in outbound.services.indices { outbound.services[i].httpListener = "outbound_" + services[i].name }
        func make(_ name: String, _ host: String, _ port: UInt16, _ proto: ListenerProtocol) -> ListenerConfig {
            var l = ListenerConfig(name: name, address: HostPort(host: host, port: port), protocol: proto)
            l.accessLog = accessLog
            if proto == .sidecarOutbound {
                l.sidecar = outbound
                l.sniffTimeout = sniffTimeout
            }
            return l
        }
        out.append(make(Self.outboundName, "0.0.0.0", outboundPort, .sidecarOutbound))
        if ipv6 { out.append(make(Self.outboundName + "_ipv6", "::", outboundPort, .sidecarOutbound)) }
        let inboundServices = inboundRoutes()
        func makeInbound(_ name: String, _ host: String) -> ListenerConfig {
            var l = ListenerConfig(name: name, address: HostPort(host: host, port: inboundPort), protocol: .sidecarInbound)
            l.tls = mtls?.listenerTLS
            l.accessLog = accessLog
            if !inbound.isEmpty {
                l.sidecar = inboundServices
                l.sniffTimeout = sniffTimeout
            }
            return l
        }
        out.append(makeInbound(Self.inboundName, "0.0.0.0"))
        if ipv6 { out.append(makeInbound(Self.inboundName + "_ipv6", "::")) }
        for s in outbound.services + inboundServices.services where s.protocol != .tcp {
            var l = ListenerConfig(name: s.httpListener, address: HostPort(host: "0.0.0.0", port: 0), protocol: .http)
            l.isInternal = true
            let routes = s.routes.isEmpty
                ? [RouteConfig(name: "default", action: .forward(ForwardAction(backends: [WeightedBackend(cluster: s.cluster)])))]
                : s.routes
            l.virtualHosts = [VirtualHostConfig(name: "default", routes: routes)]
            l.authorization = s.authorization
            l.accessLog = accessLog
            out.append(l)
        }
        return out
    }
}

extension SidecarConfig {
    /// The inbound ports as services of the inbound listener: by port alone, each to its cluster
    /// and HTTP listener `inbound_<port>`; unlisted ports as bytes at once, never sniffed.
    func inboundRoutes() -> SidecarOutbound {
        var r = SidecarOutbound(services: inbound.map {
            var s = SidecarService(name: "inbound_\($0.port)", port: $0.port, cluster: "inbound_\($0.port)", protocol: $0.protocol)
            s.httpListener = s.name
            s.authorization = $0.authorization
            return s
        }, passthrough: true, serverFirstPorts: [])
        r.sniffUnknown = false
        return r
    }

    /// The clusters the section stands for: `inbound_<port>`, the application at 127.0.0.1:<port>.
    public func clusters() -> [ClusterConfig] {
        inbound.map { ClusterConfig(name: "inbound_\($0.port)", endpoints: [HostPort(host: "127.0.0.1", port: $0.port)]) }
    }
}

/// One `sidecar.inbound` entry: a port of the application, and how its traffic is read.
public struct SidecarInboundPort: Sendable, Equatable {
    public var port: UInt16
    public var `protocol`: SidecarService.Kind
    /// Who may call this port (`authorization:` of its HTTP listener `inbound_<port>`): with `mtls`,
    /// rules name the calling workloads' SPIFFE identities (`principals`). nil: everyone.
    public var authorization: AuthorizationPolicy?
    public init(port: UInt16, protocol: SidecarService.Kind = .auto, authorization: AuthorizationPolicy? = nil) {
        self.port = port; self.protocol = `protocol`; self.authorization = authorization
    }
}

/// `sidecar.mtls`: the workload's identity and the mesh's CA (docs/sidecar.md "Mutual TLS").
public struct SidecarMTLS: Sendable, Equatable {
    public enum Mode: String, Sendable, Equatable, CaseIterable {
        /// Inbound connections must be mTLS with a certificate the CA signed.
        case strict
        /// Inbound connections may also be plaintext (Istio's PERMISSIVE; `allow_plaintext`).
        case permissive
    }
    /// The workload's certificate (PEM, leaf first; its SPIFFE URI SAN is the workload's identity)
    /// and its key: presented inbound as the server's and outbound as the client's.
    public var cert: String
    public var key: String
    /// The mesh CA bundle (PEM): peers' certificates must verify against it, both ways.
    public var ca: String
    /// Default `permissive`, as Istio's.
    public var mode: Mode
    /// `from_control: true`: the certificate, key and bundle are issued by `remora control` and kept
    /// by the proxy in `cert`, `key` and `ca` (paths in `fromControl.directory`). nil: operator's files.
    public var fromControl: MeshIdentitySource?

    public init(cert: String, key: String, ca: String, mode: Mode = .permissive) {
        self.cert = cert; self.key = key; self.ca = ca; self.mode = mode
    }

    /// The identity from the control server: certificate and key in `<directory>/identity.pem`, the
    /// trust bundle in `<directory>/bundle.pem` (written by the proxy's identity agent).
    public init(fromControl source: MeshIdentitySource, mode: Mode = .permissive) {
        self.init(cert: source.identityFile, key: source.identityFile, ca: source.bundleFile, mode: mode)
        fromControl = source
    }

    /// The ALPN protocol a sidecar offers to a peer sidecar: an inbound sidecar in `permissive`
    /// terminates TLS that offers it and passes any other TLS (the application's own) through.
    public static let meshALPN = "remora-mesh"

    /// The inbound listeners' `tls:`: the workload certificate, client certificates required and
    /// verified against `ca` (their identity is the principal, `x-forwarded-client-cert` forwarded),
    /// plaintext accepted only in `permissive`, where TLS without the `remora-mesh` ALPN is passed
    /// through as bytes too. No ALPN is chosen: the sniffing decides the protocol.
    public var listenerTLS: ListenerTLSConfig {
        var t = ListenerTLSConfig(certificates: [TLSCertificateFiles(cert: cert, key: key)], alpn: [], clientCA: ca,
                                  allowPlaintext: mode == .permissive)
        t.meshPeersOnly = mode == .permissive
        return t
    }

    /// A mesh cluster's `tls:`: the peer sidecar's certificate verified against `ca` (and carrying
    /// one of `identities`, when given), the workload certificate presented, ALPN `remora-mesh`
    /// offered (the peer's inbound chooses none).
    public func clusterTLS(identities: [String]) -> ClusterTLSConfig {
        ClusterTLSConfig(ca: ca, verifySAN: identities, cert: cert, key: key, alpn: [Self.meshALPN])
    }
}

/// `sidecar.mtls: { from_control: true, token_file, ... }`: the workload's identity comes from
/// `remora control` (docs/sidecar.md "Identity from the control server").
public struct MeshIdentitySource: Sendable, Equatable {
    /// The bootstrap token `remora control token NS SA` printed, first line of this file.
    public var tokenFile: String
    /// `http://HOST:PORT` of the control server; nil: the `--control` URL of `remora run`.
    public var control: String?
    /// Where the proxy keeps the key, the certificate and the bundle. Default `/var/run/remora/identity`.
    public var directory: String
    /// The mesh's SPIFFE trust domain (services' `service_account` becomes
    /// `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`). Default `mesh.local`.
    public var trustDomain: String
    /// How often the trust bundle is fetched again. Default 30 s.
    public var bundleRefresh: Millis

    public init(tokenFile: String, control: String? = nil, directory: String = "/var/run/remora/identity",
                trustDomain: String = "mesh.local", bundleRefresh: Millis = 30_000) {
        self.tokenFile = tokenFile; self.control = control; self.directory = directory
        self.trustDomain = trustDomain; self.bundleRefresh = bundleRefresh
    }

    public var identityFile: String { directory + "/identity.pem" }
    public var bundleFile: String { directory + "/bundle.pem" }
}

/// What the outbound listener knows (copied into its `ListenerConfig.sidecar`); the inbound
/// listener's inbound ports have the same shape.
public struct SidecarOutbound: Sendable, Equatable {
    public var services: [SidecarService]
    /// Unknown destinations: connect to the original destination (true) or close (false).
    public var passthrough: Bool
    public var serverFirstPorts: [UInt16]
    /// Unknown destinations are sniffed first (outbound: for the stats); false: bytes at once (inbound).
    public var sniffUnknown = true

    public init(services: [SidecarService], passthrough: Bool, serverFirstPorts: [UInt16]) {
        self.services = services; self.passthrough = passthrough; self.serverFirstPorts = serverFirstPorts
    }
}

/// One destination of outbound traffic: its addresses (service VIPs) and port, and the cluster
/// that serves it.
public struct SidecarService: Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        /// Sniffed: HTTP/1.1 and h2c go through the service's HTTP listener, the rest as TCP.
        case auto
        /// Always the HTTP listener (after the sniffing, which only feeds it the bytes it read).
        case http
        /// Always TCP to the cluster; no HTTP listener.
        case tcp
    }
    /// Unique among services; the HTTP listener is `outbound_<name>`.
    public var name: String
    /// IP literals; empty = any address with this port (an exact address and port wins over a port).
    public var addresses: [String]
    public var port: UInt16
    public var cluster: String
    public var `protocol`: Kind
    /// HTTP routes for this service; empty = one route, any path, to `cluster`.
    public var routes: [RouteConfig]
    /// Set by the expansion: the internal HTTP listener's name.
    public var httpListener = ""
    /// Connections to the service's clusters (`cluster` and the backends of `routes`) are mutual TLS
    /// with `sidecar.mtls`'s certificate: the endpoints are peer sidecars. Default false.
    public var mtls = false
    /// With `mtls`: the peer's certificate must carry one of these SANs (its SPIFFE identity).
    /// Empty: any certificate the mesh CA signed.
    public var identities: [String] = []
    /// Inbound ports only: the HTTP listener's authorization (copied from `SidecarInboundPort`).
    public var authorization: AuthorizationPolicy?

    public init(name: String, addresses: [String] = [], port: UInt16, cluster: String, protocol: Kind = .auto,
                routes: [RouteConfig] = []) {
        self.name = name; self.addresses = addresses; self.port = port; self.cluster = cluster
        self.protocol = `protocol`; self.routes = routes
    }
}

/// One `sni:` entry of a `protocol: tls` listener.
public struct SNIRoute: Sendable, Equatable {
    /// Exact names or `*.suffix` wildcards, any case.
    public var serverNames: [String]
    public var cluster: String
    public init(serverNames: [String], cluster: String) { self.serverNames = serverNames; self.cluster = cluster }
}

extension Config {
    /// Adds the listeners and clusters of `sidecar` (`SidecarConfig.listeners`, `.clusters`).
    /// Returns the names that were already taken (then nothing is added).
    public mutating func addSidecar(_ sidecar: SidecarConfig) -> [String] {
        let new = sidecar.listeners()
        let newClusters = sidecar.clusters()
        let taken = Set(listeners.map(\.name))
        let takenClusters = Set(clusters.map(\.name))
        let clash = new.map(\.name).filter(taken.contains) + newClusters.map(\.name).filter(takenClusters.contains)
        guard clash.isEmpty else { return clash }
        self.sidecar = sidecar
        listeners += new
        clusters += newClusters
        return []
    }

    /// `services[].mtls`: gives every cluster an mTLS service sends to (its `cluster` and its routes'
    /// backends) the mesh `tls:` (`SidecarMTLS.clusterTLS`). Returns what is wrong, as (index in
    /// `services`, message): `mtls` without `sidecar.mtls`, a cluster with its own `tls:`, a cluster
    /// two services want verified against different identities.
    public mutating func applySidecarMTLS(_ sidecar: SidecarConfig) -> [(service: Int, message: String)] {
        var problems: [(service: Int, message: String)] = []
        var given: [String: (service: String, identities: [String])] = [:]
        for (i, s) in sidecar.services.enumerated() where s.mtls {
            let field = i
            guard let mtls = sidecar.mtls else {
                problems.append((field, "needs sidecar.mtls (the workload certificate, key and mesh CA)"))
                continue
            }
            var names = [s.cluster]
            for r in s.routes { names += r.clusterNames }
            for name in names {
                guard let j = clusters.firstIndex(where: { $0.name == name }) else { continue }   // reported elsewhere
                if let prev = given[name] {
                    if prev.identities != s.identities {
                        problems.append((field, "cluster \(name) is also used by the mtls service \(prev.service) with other identities"))
                    }
                    continue
                }
                if clusters[j].tls != nil {
                    problems.append((field, "cluster \(name) has its own tls: (leave it out: mtls gives it the mesh certificate and CA)"))
                    continue
                }
                clusters[j].tls = mtls.clusterTLS(identities: s.identities)
                given[name] = (s.name, s.identities)
            }
        }
        return problems
    }
}

extension RouteConfig {
    /// The clusters a forwarding route sends to: its backends' and its mirror's.
    public var clusterNames: [String] {
        guard case .forward(let f) = action else { return [] }
        return f.backends.map(\.cluster) + (f.mirror.map { [$0.cluster] } ?? [])
    }
}
