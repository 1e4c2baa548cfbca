import Testing
@testable import RemoraCore

@Suite struct HostPortTests {
    @Test(arguments: [
        ("127.0.0.1:80", "127.0.0.1", 80), ("[::1]:9001", "::1", 9001), ("localhost:0", "localhost", 0),
    ])
    func parses(input: String, host: String, port: Int) {
        #expect(HostPort.parse(input) == HostPort(host: host, port: UInt16(port)))
    }

    @Test(arguments: ["127.0.0.1", "::1:80", "[::1]", "host:", ":80", "host:65536", "host:8o", "[1.2.3.4]:80"])
    func rejects(input: String) { #expect(HostPort.parse(input) == nil) }

    @Test func describesIPv6WithBrackets() { #expect(HostPort(host: "::1", port: 1).description == "[::1]:1") }
}
