import RemoraCore
import Testing
@testable import RemoraIO

/// The sidecar compares original destinations as `IPKey`s read from the socket address, never as
/// formatted text: the key must be the one the literal gives.
@Suite struct SocketAddressTests {
    @Test func ipKeyIsTheLiteralsKey() {
        for ip in ["10.96.0.11", "127.0.0.1", "0.0.0.0", "255.255.255.255", "fd00::10", "::1", "2001:db8::ff00:42:8329"] {
            let a = SocketAddress(ip: ip, port: 8080)!
            #expect(a.ipKey == IPKey(ip), "\(ip)")
            #expect(a.port == 8080)
        }
        #expect(SocketAddress(ip: "10.0.0.1", port: 1)!.ipKey != SocketAddress(ip: "10.0.0.2", port: 1)!.ipKey)
    }

    @Test func loopback() {
        #expect(SocketAddress.loopback(ipv6: false, port: 9000).description == "127.0.0.1:9000")
        #expect(SocketAddress.loopback(ipv6: true, port: 9000).description == "[::1]:9000")
        #expect(SocketAddress.loopback(ipv6: true, port: 443).isIPv6)
    }
}
