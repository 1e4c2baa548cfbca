import RemoraCore
import Testing
@testable import RemoraRouting

@Suite struct SidecarRoutesTests {
    func routes(passthrough: Bool = true) -> SidecarRoutes {
        SidecarRoutes(SidecarOutbound(services: [
            SidecarService(name: "orders", addresses: ["10.96.0.10", "fd00::10"], port: 8080, cluster: "orders"),
            SidecarService(name: "any8080", port: 8080, cluster: "other"),
            SidecarService(name: "redis", port: 6379, cluster: "redis", protocol: .tcp),
            SidecarService(name: "api", addresses: ["10.96.0.11"], port: 80, cluster: "api", protocol: .http),
            SidecarService(name: "mysql", port: 3306, cluster: "db"),
        ], passthrough: passthrough, serverFirstPorts: [25, 3306]))
    }

    @Test func serviceByAddressThenPort() {
        let r = routes()
        #expect(r.service(ip: "10.96.0.10", port: 8080) == 0)
        #expect(r.service(ip: "fd00::10", port: 8080) == 0)
        #expect(r.service(ip: "10.96.0.99", port: 8080) == 1)   // the port-only service
        #expect(r.service(ip: "10.96.0.10", port: 8081) == nil)
        #expect(r.service(ip: "10.96.0.11", port: 80) == 3)
        #expect(r.service(ip: "10.96.0.12", port: 80) == nil)
        // Addresses are compared as addresses, not as text.
        #expect(r.service(ip: "fd00:0:0::0010", port: 8080) == 0)
        #expect(r.service(ip: "::ffff:10.96.0.11", port: 80) == 3)
        #expect(r.service(ip: IPKey(ipv4: UInt32(bigEndian: 0x0A60_000B)), port: 80) == 3)   // 10.96.0.11 as stored
    }

    @Test func ipKeys() {
        #expect(IPKey("10.96.0.11") == IPKey(hi: 0, lo: 0x0000_FFFF_0A60_000B))
        #expect(IPKey("::ffff:10.96.0.11") == IPKey("10.96.0.11"))
        #expect(IPKey("fd00::10") == IPKey(hi: 0xFD00_0000_0000_0000, lo: 0x10))
        #expect(IPKey("::1") == IPKey(hi: 0, lo: 1))
        #expect(IPKey("10.96.0") == nil && IPKey("orders") == nil && IPKey("") == nil)
    }

    @Test func firstDecision() {
        let r = routes()
        #expect(r.first(ip: "10.96.0.10", port: 8080) == .sniff(0))
        #expect(r.first(ip: "1.2.3.4", port: 6379) == .tcp(2))      // protocol: tcp
        #expect(r.first(ip: "10.96.0.11", port: 80) == .http(3))    // protocol: http
        #expect(r.first(ip: "1.2.3.4", port: 3306) == .tcp(4))      // a service on a server-first port
        #expect(r.first(ip: "1.2.3.4", port: 25) == .tcp(nil))      // passthrough, server first
        #expect(r.first(ip: "1.2.3.4", port: 443) == .sniff(nil))   // passthrough, sniffed
        let deny = routes(passthrough: false)
        #expect(deny.first(ip: "1.2.3.4", port: 443) == .deny)
        #expect(deny.first(ip: "1.2.3.4", port: 25) == .deny)
        #expect(deny.first(ip: "10.96.0.10", port: 8080) == .sniff(0))
    }

    @Test func inboundPortsAreNotSniffedWhenUnknown() {
        var c = SidecarOutbound(services: [SidecarService(name: "inbound_8080", port: 8080, cluster: "inbound_8080")],
                                passthrough: true, serverFirstPorts: [])
        c.sniffUnknown = false
        let r = SidecarRoutes(c)
        #expect(r.first(ip: "10.0.0.7", port: 8080) == .sniff(0))
        #expect(r.first(ip: "10.0.0.7", port: 5432) == .tcp(nil))   // bytes to the application at once
    }

    @Test func afterSniffing() {
        let r = routes()
        #expect(r.afterSniff(service: 0, isHTTP: true) == .http(0))
        #expect(r.afterSniff(service: 0, isHTTP: false) == .tcp(0))
        #expect(r.afterSniff(service: nil, isHTTP: true) == .tcp(nil))   // HTTP to an unknown destination: bytes
        #expect(r.afterSniff(service: nil, isHTTP: false) == .tcp(nil))
    }
}
