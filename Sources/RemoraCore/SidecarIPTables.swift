/// The iptables rules that capture a workload's traffic for the sidecar (`remora iptables`), in
/// the shape of Istio's `istio-iptables`: the nat table's PREROUTING sends inbound TCP to the
/// inbound port, OUTPUT sends outbound TCP to the outbound port, except what must not loop or be
/// captured: the proxy's own connections (its uid, and gid if given), traffic to the loopback
/// address, the admin port and the excluded ports. The same rules for IPv4 (`iptables`) and IPv6
/// (`ip6tables`). Pure: a list of command lines; `remora iptables --apply` runs them.
public struct SidecarIPTables: Sendable, Equatable {
    /// The proxy's uid: its own connections (to clusters, to the original destination, to the
    /// application on 127.0.0.1) are never redirected.
    public var uid: UInt32
    public var gid: UInt32?
    public var outboundPort: UInt16 = 15001
    public var inboundPort: UInt16 = 15006
    /// Inbound connections to it are not redirected (health checks and the admin API reach it).
    public var adminPort: UInt16? = 15000
    /// Captured inbound ports; empty = every port.
    public var inboundPorts: [UInt16] = []
    public var excludeInboundPorts: [UInt16] = []
    public var excludeOutboundPorts: [UInt16] = []
    public var ipv6 = true

    public init(uid: UInt32) { self.uid = uid }

    static let chains = ["REMORA_INBOUND", "REMORA_IN_REDIRECT", "REMORA_OUTPUT", "REMORA_REDIRECT"]

    /// The commands that install the rules, one per line (`iptables ...`, then `ip6tables ...`).
    public func rules() -> [[String]] {
        var out: [[String]] = []
        for v6 in ipv6 ? [false, true] : [false] {
            let cmd = v6 ? "ip6tables" : "iptables"
            func add(_ args: String) { out.append([cmd, "-t", "nat"] + args.split(separator: " ").map(String.init)) }
            for c in Self.chains { add("-N \(c)") }
            add("-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports \(inboundPort)")
            add("-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports \(outboundPort)")
            // Inbound: everything (or the listed ports) but the admin port and the excluded ones.
            add("-A PREROUTING -p tcp -j REMORA_INBOUND")
            for p in ([adminPort].compactMap { $0 } + excludeInboundPorts) { add("-A REMORA_INBOUND -p tcp --dport \(p) -j RETURN") }
            if inboundPorts.isEmpty {
                add("-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT")
            } else {
                for p in inboundPorts { add("-A REMORA_INBOUND -p tcp --dport \(p) -j REMORA_IN_REDIRECT") }
            }
            // Outbound: not the proxy's own connections, not loopback, not the excluded ports.
            add("-A OUTPUT -p tcp -j REMORA_OUTPUT")
            add("-A REMORA_OUTPUT -m owner --uid-owner \(uid) -j RETURN")
            if let gid { add("-A REMORA_OUTPUT -m owner --gid-owner \(gid) -j RETURN") }
            add("-A REMORA_OUTPUT -d \(v6 ? "::1/128" : "127.0.0.1/32") -j RETURN")
            for p in excludeOutboundPorts { add("-A REMORA_OUTPUT -p tcp --dport \(p) -j RETURN") }
            add("-A REMORA_OUTPUT -j REMORA_REDIRECT")
        }
        return out
    }

    /// The commands that remove them (each may fail harmlessly when a rule or chain is not there).
    public func cleanup() -> [[String]] {
        var out: [[String]] = []
        for v6 in ipv6 ? [false, true] : [false] {
            let cmd = v6 ? "ip6tables" : "iptables"
            func add(_ args: String) { out.append([cmd, "-t", "nat"] + args.split(separator: " ").map(String.init)) }
            add("-D PREROUTING -p tcp -j REMORA_INBOUND")
            add("-D OUTPUT -p tcp -j REMORA_OUTPUT")
            for c in Self.chains { add("-F \(c)") }
            for c in Self.chains { add("-X \(c)") }
        }
        return out
    }
}
