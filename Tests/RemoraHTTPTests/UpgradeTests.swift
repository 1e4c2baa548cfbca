import Testing
import RemoraCore
@testable import RemoraHTTP

/// Upgrade decisions (issue 18): which upgrades a request asks for, the parser's flag, the heads written.
@Suite struct UpgradeTests {
    func classify(_ fields: [(StaticString, StaticString)]) -> UpgradeRequest {
        let refs = fields.map { HeaderRef(name: rawBytes($0.0), value: rawBytes($0.1)) }
        return refs.withUnsafeBufferPointer { UpgradeRequest.classify($0) }
    }

    @Test func classifiesTheUpgradeField() {
        #expect(classify([("Upgrade", "websocket")]) == .websocket)
        #expect(classify([("upgrade", "WebSocket")]) == .websocket)
        #expect(classify([("Upgrade", "foo/1, websocket")]) == .websocket)
        #expect(classify([("Upgrade", "h2c")]) == UpgradeRequest.none, "h2c is ignored as before")
        #expect(classify([("Upgrade", " h2c , ")]) == UpgradeRequest.none)
        #expect(classify([("Upgrade", "TLS/1.0")]) == .other)
        #expect(classify([("Upgrade", "h2c, foo")]) == .other)
        #expect(classify([("Upgrade", "websocketx")]) == .other)
        #expect(classify([("X-Upgrade", "websocket")]) == UpgradeRequest.none)
        #expect(classify([]) == UpgradeRequest.none)
    }

    /// RFC 8441 passed through to an HTTP/2 upstream: `:protocol` right after the pseudo-fields the
    /// session writes itself, so it goes out before every regular field; without the flag, nothing changes.
    @Test func extendedConnectStoresTheProtocolPseudoField() {
        var fields = HeaderBlock()
        fields.append(rawBytes("sec-websocket-version"), rawBytes("13"))
        fields.append(rawBytes("origin"), rawBytes("http://a"))
        let view = fields.withRefs { RequestView(method: rawBytes("CONNECT"), target: rawBytes("/chat"), authority: rawBytes("svc"), headers: $0) }
        for ext in [true, false] {
            var h2 = HeaderBlock()
            HTTP2Head.storeRequest(view, clientIP: rawBytes("1.2.3.4"), proto: "http", dropExpect: true, namesLowercase: true,
                                   extendedConnect: ext, into: &h2)
            let got = (0..<h2.count).map { (h2.name($0).string, h2.value($0).string) }
            let names = [":method", ":authority", ":path"] + (ext ? [":protocol"] : [])
                + ["sec-websocket-version", "origin", "x-forwarded-for", "x-forwarded-proto"]
            #expect(got.map(\.0) == names)
            if ext { #expect(got[3].1 == "websocket" && got[0].1 == "CONNECT") }
            h2.release()
        }
        fields.release()
    }

    @Test func parserFlagsUpgradeRequestsAndParsesThemAsPlainMessages() {
        let p = HTTP1Parser(kind: .request)
        let r = Recorder()
        p.delegate = r
        let msg = "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\u{81}\u{05}hello"
        let result = feed(p, msg)
        #expect(p.wantsUpgrade)
        #expect(r.completed == 1)
        guard case .paused(let consumed) = result else { Issue.record("expected a pause after the message"); return }
        let head = "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        #expect(consumed == head.utf8.count, "the frame after the head is left for the tunnel")
        let q = HTTP1Parser(kind: .request)
        let rq = Recorder()   // (the delegate is not retained)
        q.delegate = rq
        _ = feed(q, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")   // no Connection: upgrade
        #expect(!q.wantsUpgrade)
        let s = HTTP1Parser(kind: .response)
        let rs = Recorder()
        s.delegate = rs
        _ = feed(s, "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        #expect(s.wantsUpgrade)
        withExtendedLifetime((r, rq, rs)) {}
    }

    @Test func base64AndTheKeyField() {
        func b64(_ s: String) -> String {
            var out = ByteBuffer()
            defer { out.release() }
            Array(s.utf8).withUnsafeBytes { Base64.encode($0, into: &out) }
            return out.bytes.string
        }
        #expect(b64("") == "" && b64("f") == "Zg==" && b64("fo") == "Zm8=" && b64("foo") == "Zm9v")
        #expect(b64("foobar") == "Zm9vYmFy" && b64("the sample nonce") == "dGhlIHNhbXBsZSBub25jZQ==")
        var out = ByteBuffer()
        defer { out.release() }
        UpgradeRequest.writeWebSocketFields(key: (1, 2), into: &out)
        let text = out.bytes.string
        #expect(text.hasPrefix("connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: "))
        #expect(text.hasSuffix("==\r\n") && text.utf8.count == 21 + 20 + 19 + 24 + 2)
    }

    @Test func switchingProtocolsHeadKeepsEndToEndFieldsOnly() {
        let fields: [(StaticString, StaticString)] = [("Sec-WebSocket-Accept", "abc"), ("Connection", "Upgrade, X-Hop"),
                                                      ("X-Hop", "1"), ("Upgrade", "websocket"), ("X-Kept", "2")]
        let refs = fields.map { HeaderRef(name: rawBytes($0.0), value: rawBytes($0.1)) }
        var out = ByteBuffer()
        defer { out.release() }
        refs.withUnsafeBufferPointer { HTTP1Head.writeSwitchingProtocols(headers: $0, fallback: "websocket", into: &out) }
        #expect(out.bytes.string == "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\nX-Kept: 2\r\n"
                + "connection: upgrade\r\nupgrade: websocket\r\n\r\n")
    }
}

/// gRPC-Web's pure pieces (issue 18).
@Suite struct GRPCWebTests {
    func mode(_ s: StaticString) -> GRPCWeb.Mode { GRPCWeb.mode(contentType: rawBytes(s)) }

    @Test func contentTypes() {
        #expect(mode("application/grpc-web") == .binary && mode("application/grpc-web+proto") == .binary)
        #expect(mode("Application/GRPC-Web;charset=x") == .binary)
        #expect(mode("application/grpc-web-text") == .text && mode("application/grpc-web-text+proto") == .text)
        #expect(mode("application/grpc") == .off && mode("application/grpc+proto") == .off)
        #expect(mode("application/grpc-webx") == .off && mode("application/grpc-web-textual") == .off && mode("text/plain") == .off)
        var out = ByteBuffer()
        defer { out.release() }
        GRPCWeb.upstreamContentType(rawBytes("application/grpc-web-text+proto"), into: &out)
        #expect(out.bytes.string == "application/grpc+proto")
        out.clear()
        GRPCWeb.upstreamContentType(rawBytes("application/grpc-web"), into: &out)
        #expect(out.bytes.string == "application/grpc")
    }

    @Test func trailerFrame() {
        let t = [HeaderRef(name: rawBytes("Grpc-Status"), value: rawBytes("0")), HeaderRef(name: rawBytes("grpc-message"), value: rawBytes("ok"))]
        var out = ByteBuffer()
        defer { out.release() }
        t.withUnsafeBufferPointer { GRPCWeb.writeTrailerFrame($0, into: &out) }
        let lines = "grpc-status:0\r\ngrpc-message:ok\r\n"
        #expect(Array(out.bytes) == [0x80, 0, 0, 0, UInt8(lines.utf8.count)] + Array(lines.utf8))
    }

    @Test func base64StreamsInAnyPieces() {
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        for piece in [1, 2, 3, 4, 5, 7, 64, 1000] {
            var enc = GRPCWeb.Encoder()
            var encoded = ByteBuffer()
            defer { encoded.release() }
            var i = 0
            while i < data.count {
                let end = min(i + piece, data.count)
                data[i..<end].withUnsafeBytes { enc.encode($0, into: &encoded) }
                i = end
            }
            enc.finish(into: &encoded)
            var whole = ByteBuffer()
            defer { whole.release() }
            data.withUnsafeBytes { Base64.encode($0, into: &whole) }
            #expect(encoded.bytes.string == whole.bytes.string, "piece \(piece)")
            var dec = GRPCWeb.Decoder()
            var decoded = ByteBuffer()
            defer { decoded.release() }
            let text = Array(encoded.bytes)
            var j = 0
            while j < text.count {
                let end = min(j + piece, text.count)
                #expect(text[j..<end].withUnsafeBytes { dec.decode($0, into: &decoded) })
                j = end
            }
            #expect(Array(decoded.bytes) == data && !dec.isMidQuad)
        }
        // Padding between separately encoded messages, and bad input.
        var dec = GRPCWeb.Decoder()
        var out = ByteBuffer()
        defer { out.release() }
        #expect(Array("Zg==Zm8=Zm9v".utf8).withUnsafeBytes { dec.decode($0, into: &out) })
        #expect(out.bytes.string == "ffofoo")
        #expect(!Array("Zm9v!".utf8).withUnsafeBytes { dec.decode($0, into: &out) } && dec.failed)
    }
}
