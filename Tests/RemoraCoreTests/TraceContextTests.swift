import Testing
@testable import RemoraCore

@Suite struct TraceContextTests {
    func bytes<R>(_ s: String, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        var s = s
        return s.withUTF8 { body(UnsafeRawBufferPointer($0)) }
    }

    func written(_ n: Int, _ write: (UnsafeMutablePointer<UInt8>) -> Int) -> String {
        var b = [UInt8](repeating: 0, count: n)
        let len = b.withUnsafeMutableBufferPointer { write($0.baseAddress!) }
        return String(decoding: b[0..<len], as: UTF8.self)
    }

    /// `read` (a reader of `valid.count` hex digits at once) against a byte-by-byte one: every byte
    /// value at every position of the valid run `valid`, and random runs in both cases.
    static func expectMatchesByteByByte(_ valid: String, _ read: (UnsafeRawPointer) -> UInt64?) {
        func reference(_ b: [UInt8]) -> UInt64? {
            var x: UInt64 = 0
            for c in b {
                guard let d = "0123456789abcdef".utf8.firstIndex(of: c | (c >= 0x41 && c <= 0x46 ? 0x20 : 0)) else { return nil }
                x = x << 4 | UInt64("0123456789abcdef".utf8.distance(from: "0123456789abcdef".utf8.startIndex, to: d))
            }
            return x
        }
        let n = valid.utf8.count
        for pos in 0..<n {
            for c in 0...255 {
                var b = Array(valid.utf8)
                b[pos] = UInt8(c)
                #expect(b.withUnsafeBytes { read($0.baseAddress!) } == reference(b), "byte \(c) at \(pos)")
            }
        }
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789abcdefABCDEF".utf8)
        for _ in 0..<2000 {
            let b = (0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            #expect(b.withUnsafeBytes { read($0.baseAddress!) } == reference(b))
        }
    }

    @Test func hexEightAtOnceMatchesByteByByte() {
        Self.expectMatchesByteByByte("09afAF3c") { TraceContext.hex8($0) }
        #expect(bytes("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b") { TraceContext.parseTraceparent($0) } == nil,
                "54 bytes: short")
    }

    /// The 16-digits-at-once reader (SSE2 on x86-64).
    @Test func hexSixteenAtOnceMatchesByteByByte() {
        Self.expectMatchesByteByByte("09afAF3c4bF92f35") { TraceContext.hex16($0) }
        #expect(Array("4bf92f3577b34da6".utf8).withUnsafeBytes { TraceContext.hex16($0.baseAddress!) } == 0x4bf9_2f35_77b3_4da6)
    }

    @Test func traceparentRoundTrip() {
        let t = bytes("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") { TraceContext.parseTraceparent($0) }
        #expect(t?.traceHi == 0x4bf92f3577b34da6 && t?.traceLo == 0xa3ce929d0e0e4736 && t?.parent == 0x00f067aa0ba902b7)
        var c = t!
        c.span = 0x1122334455667788
        #expect(written(55) { c.writeTraceparent($0); return 55 } == "00-4bf92f3577b34da6a3ce929d0e0e4736-1122334455667788-01")
        for bad in ["00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "00-zz", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"] {
            #expect(bytes(bad) { TraceContext.parseTraceparent($0) } == nil, "\(bad)")
        }
    }

    @Test func b3SingleForms() {
        var d: Bool?
        let full = bytes("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90") { TraceContext.parseB3($0, decision: &d) }
        #expect(full?.traceHi == 0x80f198ee56343ba8 && full?.parent == 0xe457b5a2e4d86bd1 && full?.sampled == true)
        #expect(full?.b3Single == true && full?.undecided == false && full?.shortID == false)
        let short = bytes("64fe8b2a57d3eff7-e457b5a2e4d86bd1") { TraceContext.parseB3($0, decision: &d) }
        #expect(short?.traceHi == 0 && short?.traceLo == 0x64fe8b2a57d3eff7 && short?.shortID == true && short?.undecided == true)
        let debug = bytes("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d") { TraceContext.parseB3($0, decision: &d) }
        #expect(debug?.sampled == true)
        let no = bytes("64fe8b2a57d3eff7-e457b5a2e4d86bd1-0") { TraceContext.parseB3($0, decision: &d) }
        #expect(no?.sampled == false && no?.undecided == false)
        #expect(bytes("0") { TraceContext.parseB3($0, decision: &d) } == nil && d == false)
        for bad in ["64fe8b2a57d3eff7-e457b5a2e4d86bd", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-x", "123-e457b5a2e4d86bd1-1",
                    "64fe8b2a57d3eff7-0000000000000000-1", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3"] {
            #expect(bytes(bad) { TraceContext.parseB3($0, decision: &d) } == nil, "\(bad)")
        }
    }

    @Test func b3MultiHeaders() {
        let t = bytes("463ac35c9f6413ad48485a3953bb6124") { tid in
            bytes("a2fb4a1d1a96d312") { sid in bytes("1") { s in TraceContext.fromB3(traceID: tid, spanID: sid, sampled: s, debug: nil) } }
        }
        #expect(t?.traceHi == 0x463ac35c9f6413ad && t?.parent == 0xa2fb4a1d1a96d312 && t?.sampled == true && t?.b3Single == false)
        let undecided = bytes("463ac35c9f6413ad") { tid in
            bytes("a2fb4a1d1a96d312") { sid in TraceContext.fromB3(traceID: tid, spanID: sid, sampled: nil, debug: nil) }
        }
        #expect(undecided?.undecided == true && undecided?.shortID == true)
        #expect(bytes("a2fb4a1d1a96d312") { sid in TraceContext.fromB3(traceID: nil, spanID: sid, sampled: nil, debug: nil) } == nil)
    }

    @Test func b3WrittenAsTheProxysChild() {
        var t = TraceContext(traceHi: 0, traceLo: 0x64fe8b2a57d3eff7, span: 0x0102030405060708, parent: 0xe457b5a2e4d86bd1, flags: 1)
        t.shortID = true
        #expect(written(TraceContext.b3MaxLength) { t.writeB3Single($0) } == "64fe8b2a57d3eff7-0102030405060708-1-e457b5a2e4d86bd1")
        t.shortID = false
        t.parent = 0
        t.flags = 0
        #expect(written(TraceContext.b3MaxLength) { t.writeB3Single($0) } == "000000000000000064fe8b2a57d3eff7-0102030405060708-0")
    }

    @Test func otlpEndpoint() {
        #expect(OTLPConfig.parse("http://127.0.0.1:4318") == OTLPConfig(host: "127.0.0.1", port: 4318))
        #expect(OTLPConfig.parse("http://collector:4318/v1/traces") == OTLPConfig(host: "collector", port: 4318))
        #expect(OTLPConfig.parse("[::1]:4318/") == OTLPConfig(host: "::1", port: 4318))
        for bad in ["https://x:1", "http://x", "http://x:0", "http://:80", "http://x:80/other"] { #expect(OTLPConfig.parse(bad) == nil, "\(bad)") }
    }
}
