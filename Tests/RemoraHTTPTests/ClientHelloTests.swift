import Testing
@testable import RemoraHTTP

func parseHello(_ b: [UInt8]) -> ClientHello.Parse { b.withUnsafeBytes { ClientHello.parse($0) } }
func sniff(_ b: [UInt8], max: Int = 16 * 1024) -> SniffedProtocol? { b.withUnsafeBytes { ProtocolSniffer.classify($0, maxBytes: max) } }
func sniff(_ s: String) -> SniffedProtocol? { sniff(Array(s.utf8)) }

/// A ClientHello handshake message (no record layer) with the given extensions.
func helloMessage(sni: [UInt8]? = nil, alpn: [String]? = nil, extra: [UInt8] = [], sessionID: Int = 32) -> [UInt8] {
    func u16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
    var ext: [UInt8] = []
    if let sni {
        let entry = [0] + u16(sni.count) + sni
        ext += u16(0) + u16(entry.count + 2) + u16(entry.count) + entry
    }
    if let alpn {
        let list = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
        ext += u16(16) + u16(list.count + 2) + u16(list.count) + list
    }
    ext += extra
    var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32) + [UInt8(sessionID)] + [UInt8](repeating: 1, count: sessionID)
    body += u16(4) + [0x13, 0x01, 0x13, 0x02] + [1, 0]
    body += u16(ext.count) + ext
    return [1, UInt8(body.count >> 16), UInt8(body.count >> 8 & 0xff), UInt8(body.count & 0xff)] + body
}

/// `message` in TLS records of at most `fragment` bytes each.
func records(_ message: [UInt8], fragment: Int = 16_384) -> [UInt8] {
    var out: [UInt8] = []
    var i = 0
    while i < message.count {
        let n = min(fragment, message.count - i)
        out += [22, 3, 1, UInt8(n >> 8), UInt8(n & 0xff)] + message[i..<i + n]
        i += n
    }
    return out
}

@Suite struct ClientHelloTests {
    @Test func opensslWithSNIAndALPN() {
        let b = ClientHelloSamples.opensslSniAlpn
        #expect(parseHello(b) == .hello(ClientHello(serverName: "api.example.com", alpn: ["h2", "http/1.1"], length: b.count)))
    }

    @Test func opensslTLS12WithoutSNI() {
        let b = ClientHelloSamples.opensslTls12Nosni
        #expect(parseHello(b) == .hello(ClientHello(serverName: nil, alpn: [], length: b.count)))
    }

    @Test func pythonSSL() {
        let b = ClientHelloSamples.pythonSniAlpn
        #expect(parseHello(b) == .hello(ClientHello(serverName: "db.internal", alpn: ["postgresql", "http/1.1"], length: b.count)))
        let c = ClientHelloSamples.pythonNosni
        #expect(parseHello(c) == .hello(ClientHello(serverName: nil, alpn: [], length: c.count)))
    }

    /// Every proper prefix of a real ClientHello asks for more; never a wrong answer.
    @Test func everyPrefixNeedsMore() {
        for b in [ClientHelloSamples.opensslSniAlpn, ClientHelloSamples.pythonSniAlpn] {
            for n in 0..<b.count { #expect(parseHello(Array(b[0..<n])) == .needMore, "prefix \(n)") }
        }
    }

    /// Bytes after the ClientHello (the client's next flight, or pipelined data) do not change the answer.
    @Test func trailingBytesIgnored() {
        let b = ClientHelloSamples.opensslSniAlpn
        #expect(parseHello(b + [23, 3, 3, 0, 1, 0]) == .hello(ClientHello(serverName: "api.example.com", alpn: ["h2", "http/1.1"], length: b.count)))
    }

    @Test func spansRecords() {
        let m = helloMessage(sni: Array("Multi.Example.COM.".utf8), alpn: ["h2"])
        for fragment in [2, 7, 100] {
            let b = records(m, fragment: fragment)
            #expect(parseHello(b) == .hello(ClientHello(serverName: "multi.example.com", alpn: ["h2"], length: b.count)), "fragment \(fragment)")
            #expect(parseHello(Array(b.dropLast())) == .needMore)
        }
    }

    /// A hello cut into more than `maxRecords` records is refused (it would cost one parse per record).
    @Test func tooManyRecords() {
        let padding: [UInt8] = [0, 21, 0, 100] + [UInt8](repeating: 0, count: 100)   // the padding extension
        let m = helloMessage(sni: Array("x.example".utf8), alpn: ["h2"], extra: padding)
        #expect(m.count > ClientHello.maxRecords)
        #expect(parseHello(records(m, fragment: 2)) != .notTLS)
        #expect(parseHello(records(m, fragment: 1)) == .notTLS)
    }

    @Test func recordBoundary() {
        let b = records(helloMessage(sni: Array("a.b".utf8)), fragment: 10)
        b.withUnsafeBytes { all in
            #expect(ClientHello.recordBoundary(all, from: 0) == b.count)
            let part = UnsafeRawBufferPointer(rebasing: all[0..<23])   // two records and 3 bytes of the third
            #expect(ClientHello.recordBoundary(part, from: 0) == 30)    // beyond 23: wait
            #expect(ClientHello.recordBoundary(part, from: 15) == 30)
            let header = UnsafeRawBufferPointer(rebasing: all[0..<32])   // a partial third header
            #expect(ClientHello.recordBoundary(header, from: 0) == 35)
            #expect(ClientHello.recordBoundary(header, from: 30) == 35)
            let whole = UnsafeRawBufferPointer(rebasing: all[0..<30])    // two whole records: parse
            #expect(ClientHello.recordBoundary(whole, from: 0) == 30)
        }
        let http = Array("GET / HTTP/1.1\r\n".utf8)
        http.withUnsafeBytes { #expect(ClientHello.recordBoundary($0, from: 0) == 0) }
    }

    @Test func notTLS() {
        #expect(parseHello(Array("GET / HTTP/1.1\r\n".utf8)) == .notTLS)
        #expect(parseHello([22, 2]) == .notTLS)                        // SSL 2 / not version 3
        #expect(parseHello([22, 3, 1, 0, 0]) == .notTLS)               // an empty record
        #expect(parseHello([22, 3, 1, 0x48, 1]) == .notTLS)            // a record over 18 KiB
        #expect(parseHello([22, 3, 1, 0, 4, 2, 0, 0, 41]) == .notTLS)  // a ServerHello
        #expect(parseHello([21, 3, 1, 0, 2, 2, 40]) == .notTLS)        // an alert
        #expect(parseHello([0x80, 0x2e, 1]) == .notTLS)                // an SSLv2-style hello
        // The second record is not a handshake record.
        var b = records(helloMessage(sni: Array("a.b".utf8)), fragment: 10)
        b[15] = 23
        #expect(parseHello(b) == .notTLS)
    }

    @Test func malformedLengths() {
        var m = helloMessage(sni: Array("a.example".utf8))
        m[38] = 33   // session id longer than 32
        #expect(parseHello(records(m)) == .notTLS)
        // The extensions' length does not reach the end of the message.
        var e = helloMessage(sni: Array("a.example".utf8))
        let extLenAt = 4 + 2 + 32 + 1 + 32 + 2 + 4 + 2
        e[extLenAt + 1] &-= 1
        #expect(parseHello(records(e)) == .notTLS)
        // A server_name list longer than its extension.
        var s = helloMessage(sni: Array("a.example".utf8))
        s[extLenAt + 2 + 4 + 1] &+= 1
        #expect(parseHello(records(s)) == .notTLS)
        // Two server_name extensions.
        let sniExt: [UInt8] = [0, 0, 0, 6, 0, 4, 0, 0, 1, 0x61]
        #expect(parseHello(records(helloMessage(sni: Array("b".utf8), extra: sniExt))) == .notTLS)
        // An empty ALPN name.
        #expect(parseHello(records(helloMessage(alpn: ["h2", ""]))) == .notTLS)
    }

    @Test func implausibleNamesAreNoName() {
        for bad in ["a b", "a..b", "ünï", "x/y", String(repeating: "a", count: 300)] {
            let b = records(helloMessage(sni: Array(bad.utf8), alpn: ["h2"]))
            #expect(parseHello(b) == .hello(ClientHello(serverName: nil, alpn: ["h2"], length: b.count)), "\(bad)")
        }
    }

    @Test func unknownExtensionsSkipped() {
        let grease: [UInt8] = [0x0a, 0x0a, 0, 3, 9, 9, 9, 0, 0x2b, 0, 3, 2, 3, 4]
        let b = records(helloMessage(sni: Array("x.io".utf8), extra: grease), fragment: 50)
        #expect(parseHello(b) == .hello(ClientHello(serverName: "x.io", alpn: [], length: b.count)))
    }
}

@Suite struct ProtocolSnifferTests {
    @Test func http1Methods() {
        #expect(sniff("GET / HTTP/1.1\r\n") == .http1)
        #expect(sniff("DELETE /x") == .http1)
        #expect(sniff("PATCH ") == .http1)
        #expect(sniff("") == nil)
        #expect(sniff("G") == nil)
        #expect(sniff("OPTIO") == nil)
        #expect(sniff("GETX / HTTP/1.1") == .opaque)
        #expect(sniff("get / HTTP/1.1") == .opaque)   // methods are case-sensitive
    }

    @Test func http2Preface() {
        let p = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        #expect(sniff(p) == .http2)
        #expect(sniff(p + "\0\0\0\u{4}") == .http2)
        #expect(sniff("PRI * HTTP/2") == nil)
        #expect(sniff("PRI * HTTP/1.1\r\n") == .opaque)
        #expect(sniff("P") == nil)   // PRI, POST, PUT, PATCH
    }

    @Test func tls() {
        let b = ClientHelloSamples.opensslSniAlpn
        #expect(sniff(b) == .tls(ClientHello(serverName: "api.example.com", alpn: ["h2", "http/1.1"], length: b.count)))
        #expect(sniff(Array(b[0..<100])) == nil)
        #expect(sniff(Array(b[0..<100]), max: 100) == .opaque)   // no decision within the size limit
        #expect(sniff([22, 9]) == .opaque)
    }

    @Test func serverSpeaksFirstAndBinary() {
        #expect(sniff("SSH-2.0-OpenSSH_9.2\r\n") == .opaque)
        #expect(sniff([0, 0, 0, 8, 4, 210, 22, 47]) == .opaque)   // PostgreSQL SSLRequest
        #expect(sniff("*1\r\n$4\r\nPING\r\n") == .opaque)          // Redis
    }
}
