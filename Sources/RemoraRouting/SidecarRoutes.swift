import RemoraCore

/// The sidecar outbound listener's decisions, as pure code (docs/sidecar.md): which service an
/// original destination is, and where its connection goes before and after sniffing. Built once
/// per snapshot from the listener's `SidecarOutbound`; the session carries the decisions out.
public struct SidecarRoutes: Sendable {
    /// What to do with a connection before any byte is read.
    public enum First: Sendable, Equatable {
        /// Closed: no service, and `passthrough: deny`.
        case deny
        /// Bytes at once, to the service (index) or, nil, the original destination: `protocol: tcp`,
        /// or a server-speaks-first port.
        case tcp(Int?)
        /// The service's HTTP listener at once (`protocol: http`).
        case http(Int)
        /// Read the first bytes, then `afterSniff`.
        case sniff(Int?)
    }

    /// Where a sniffed connection goes.
    public enum Then: Sendable, Equatable {
        case http(Int)
        case tcp(Int?)
    }

    /// An original destination: address (binary, no formatting per connection) and port.
    struct Destination: Hashable {
        var ip: IPKey
        var port: UInt16
    }

    let services: [SidecarService]
    /// By address and port, and by port alone.
    let byAddress: [Destination: Int]
    let byPort: [UInt16: Int]
    let passthrough: Bool
    let serverFirstPorts: Set<UInt16>
    let sniffUnknown: Bool

    public init(_ c: SidecarOutbound) {
        services = c.services
        var a: [Destination: Int] = [:]
        var p: [UInt16: Int] = [:]
        for (i, s) in c.services.enumerated() {
            if s.addresses.isEmpty { p[s.port] = i }
            // The loader accepts only IP literals here; one that is not could match nothing anyway.
            for ip in s.addresses { if let k = IPKey(ip) { a[Destination(ip: k, port: s.port)] = i } }
        }
        byAddress = a
        byPort = p
        passthrough = c.passthrough
        serverFirstPorts = Set(c.serverFirstPorts)
        sniffUnknown = c.sniffUnknown
    }

    /// The service whose address and port, else whose port, `ip`:`port` is.
    public func service(ip: IPKey, port: UInt16) -> Int? {
        if !byAddress.isEmpty, let i = byAddress[Destination(ip: ip, port: port)] { return i }
        return byPort[port]
    }

    /// The same for an address literal (tests, tools); a string that is no address matches by port.
    public func service(ip: String, port: UInt16) -> Int? {
        service(ip: IPKey(ip) ?? IPKey(hi: ~0, lo: ~0), port: port)
    }

    public func first(ip: String, port: UInt16) -> First { first(ip: IPKey(ip) ?? IPKey(hi: ~0, lo: ~0), port: port) }

    public func first(ip: IPKey, port: UInt16) -> First {
        guard let i = service(ip: ip, port: port) else {
            if !passthrough { return .deny }
            return !sniffUnknown || serverFirstPorts.contains(port) ? .tcp(nil) : .sniff(nil)
        }
        switch services[i].protocol {
        case .tcp: return .tcp(i)
        case .http: return .http(i)
        case .auto: return serverFirstPorts.contains(port) ? .tcp(i) : .sniff(i)
        }
    }

    /// After sniffing: HTTP to a known service goes to its HTTP listener; everything else, and HTTP to
    /// an unknown destination (no route could apply), as bytes.
    public func afterSniff(service: Int?, isHTTP: Bool) -> Then {
        if isHTTP, let i = service { return .http(i) }
        return .tcp(service)
    }
}
