import RemoraCore
import Testing

@Suite struct SidecarIPTablesTests {
    @Test func istioShapedRules() {
        var t = SidecarIPTables(uid: 1337)
        t.excludeInboundPorts = [22]
        t.ipv6 = false
        let lines = t.rules().map { $0.joined(separator: " ") }
        #expect(lines == [
            "iptables -t nat -N REMORA_INBOUND",
            "iptables -t nat -N REMORA_IN_REDIRECT",
            "iptables -t nat -N REMORA_OUTPUT",
            "iptables -t nat -N REMORA_REDIRECT",
            "iptables -t nat -A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "iptables -t nat -A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "iptables -t nat -A PREROUTING -p tcp -j REMORA_INBOUND",
            "iptables -t nat -A REMORA_INBOUND -p tcp --dport 15000 -j RETURN",
            "iptables -t nat -A REMORA_INBOUND -p tcp --dport 22 -j RETURN",
            "iptables -t nat -A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT",
            "iptables -t nat -A OUTPUT -p tcp -j REMORA_OUTPUT",
            "iptables -t nat -A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "iptables -t nat -A REMORA_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "iptables -t nat -A REMORA_OUTPUT -j REMORA_REDIRECT",
        ])
    }

    @Test func ipv6PortsAndGid() {
        var t = SidecarIPTables(uid: 0)
        t.gid = 1337
        t.outboundPort = 16001
        t.inboundPorts = [8080, 9090]
        t.excludeOutboundPorts = [53]
        t.adminPort = nil
        let lines = t.rules().map { $0.joined(separator: " ") }
        #expect(lines.count == 2 * lines.filter { $0.hasPrefix("iptables ") }.count)
        #expect(lines.contains("ip6tables -t nat -A REMORA_OUTPUT -d ::1/128 -j RETURN"))
        #expect(lines.contains("ip6tables -t nat -A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 16001"))
        #expect(lines.contains("iptables -t nat -A REMORA_INBOUND -p tcp --dport 9090 -j REMORA_IN_REDIRECT"))
        #expect(!lines.contains("iptables -t nat -A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT"))
        #expect(lines.contains("iptables -t nat -A REMORA_OUTPUT -m owner --gid-owner 1337 -j RETURN"))
        #expect(lines.contains("iptables -t nat -A REMORA_OUTPUT -p tcp --dport 53 -j RETURN"))
        #expect(!lines.contains { $0.contains("15000") })
        // The uid's exception comes before the redirect, in both families.
        for cmd in ["iptables", "ip6tables"] {
            let own = lines.firstIndex(of: "\(cmd) -t nat -A REMORA_OUTPUT -m owner --uid-owner 0 -j RETURN")!
            let redirect = lines.firstIndex(of: "\(cmd) -t nat -A REMORA_OUTPUT -j REMORA_REDIRECT")!
            #expect(own < redirect)
        }
        #expect(t.cleanup().count == 2 * 10)
    }
}
