import Testing
import RemoraCore
@testable import RemoraHTTP

/// Records what the parser reports.
final class Recorder: HTTP1ParserDelegate {
    var heads: [(target: String, headers: [(String, String)])] = []
    var body: [UInt8] = []
    var completed = 0
    var skipBody = false

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        heads.append((p.startLine.string, (0..<p.headerCount).map { (p.name($0).string, p.value($0).string) }))
        return skipBody
    }
    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) { body += data }
    func parserMessageComplete(_ p: HTTP1Parser) { completed += 1 }
}

func feed(_ p: HTTP1Parser, _ s: String) -> HTTP1Parser.Result {
    var bytes = Array(s.utf8)
    return bytes.withUnsafeMutableBytes { p.feed(UnsafeRawBufferPointer($0)) }
}

@Suite struct HTTP1ParserTests {
    @Test func parsesHeadAcrossArbitrarySplits() {
        let msg = "GET /a/b?x=1 HTTP/1.1\r\nHost: example\r\nX-Long: " + String(repeating: "v", count: 300) + "\r\n\r\n"
        for split in [1, 2, 7, 20, 100, msg.utf8.count - 1] {
            let p = HTTP1Parser(kind: .request)
            let r = Recorder()
            p.delegate = r
            let bytes = Array(msg.utf8)
            var results: [HTTP1Parser.Result] = []
            for chunk in stride(from: 0, to: bytes.count, by: split) {
                var piece = Array(bytes[chunk..<min(chunk + split, bytes.count)])
                results.append(piece.withUnsafeMutableBytes { p.feed(UnsafeRawBufferPointer($0)) })
            }
            #expect(r.heads.count == 1, "split \(split)")
            #expect(r.heads.first?.target == "/a/b?x=1")
            #expect(r.heads.first?.headers.map(\.0) == ["Host", "X-Long"])
            #expect(r.heads.first?.headers[1].1.count == 300)
            #expect(results.last == .paused(consumed: bytes.count - (bytes.count - 1) / split * split))
        }
    }

    @Test func pausesAfterEachPipelinedMessage() {
        let p = HTTP1Parser(kind: .request)
        let r = Recorder()
        p.delegate = r
        let two = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
        let first = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n".utf8.count
        #expect(feed(p, two) == .paused(consumed: first))
        #expect(r.completed == 1)
        p.resume()
        var rest = Array(two.utf8.dropFirst(first))
        #expect(rest.withUnsafeMutableBytes { p.feed(UnsafeRawBufferPointer($0)) } == .paused(consumed: rest.count))
        #expect(r.heads.map(\.target) == ["/1", "/2"])
    }

    @Test func dechunksBodies() {
        let p = HTTP1Parser(kind: .request)
        let r = Recorder()
        p.delegate = r
        #expect(feed(p, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                != .error)
        #expect(String(decoding: r.body, as: UTF8.self) == "hello world")
        #expect(r.completed == 1)
    }

    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
        ("GET /\r\n\r\n", 400),
        ("GET / HTTP/1.1\nHost: a\n\n", 400),
        ("BREW / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nX: \(String(repeating: "a", count: 2000))\r\n\r\n", 431),
    ])
    func rejectsBadInput(input: String, status: Int) {
        let p = HTTP1Parser(kind: .request, maxHeadBytes: 1024)
        let r = Recorder()
        p.delegate = r
        #expect(feed(p, input) == .error)
        #expect(p.error?.status == status)
    }

    @Test func obsoleteLineFoldingIsRefused() {
        // RFC 9112 §5.2 allows a 400 or a space; a space let `Host: x` + ` Transfer-Encoding: chunked`
        // reach a backend as one field, so it is refused, wherever the reads split the message.
        for msg in ["GET / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n",
                    "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n",
                    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: a\r\n b\r\n\r\n"] {
            let bytes = Array(msg.utf8)
            for split in 1...bytes.count {
                let p = HTTP1Parser(kind: .request)
                let r = Recorder()
                p.delegate = r
                var last = HTTP1Parser.Result.ok
                var at = 0
                while at < bytes.count && last != .error {
                    var piece = Array(bytes[at..<min(at + split, bytes.count)])
                    last = piece.withUnsafeMutableBytes { p.feed(UnsafeRawBufferPointer($0)) }
                    at += split
                }
                #expect(last == .error, "split \(split)")
                #expect(p.error?.status == 400)
            }
        }
    }

    @Test func valuesSplitAnywhereAreNotFolding() {
        let msg = "POST /x HTTP/1.1\r\nHost: a.example:80\r\nConnection: keep-alive, x-a\r\nContent-Length: 12\r\n"
            + "X-A: one two  three\r\nUser-Agent: curl/8\r\n\r\nhello world!"
        let bytes = Array(msg.utf8)
        for split in 1...bytes.count {
            let p = HTTP1Parser(kind: .request)
            let r = Recorder()
            p.delegate = r
            var at = 0
            while at < bytes.count {
                var piece = Array(bytes[at..<min(at + split, bytes.count)])
                #expect(piece.withUnsafeMutableBytes { p.feed(UnsafeRawBufferPointer($0)) } != .error, "split \(split)")
                at += split
            }
            #expect(r.completed == 1)
            #expect(r.heads.first?.headers.map(\.1) == ["a.example:80", "keep-alive, x-a", "12", "one two  three", "curl/8"])
        }
    }

    @Test func emptyHeaderNameIsRefused() {
        for msg in ["GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", "GET / HTTP/1.1\r\n: v\r\nHost: a\r\n\r\n"] {
            let p = HTTP1Parser(kind: .request)
            p.delegate = Recorder()
            #expect(feed(p, msg) == .error)
            #expect(p.error?.status == 400)
        }
    }

    @Test func underscoreHeaderNames() {
        let msg = "POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\nX_B: 1\r\nX-C: 2\r\n\r\n"
        let drop = HTTP1Parser(kind: .request)
        let r = Recorder()
        drop.delegate = r
        #expect(feed(drop, msg) != .error)
        #expect(r.heads.first?.headers.map(\.0) == ["Host", "Content-Length", "X-C"])
        #expect(drop.droppedUnderscoreHeaders == 2)
        #expect(drop.hostIndex == 0)

        let reject = HTTP1Parser(kind: .request)
        reject.underscoreAction = .reject
        reject.delegate = Recorder()
        #expect(feed(reject, msg) == .error)
        #expect(reject.error?.status == 400)

        let allow = HTTP1Parser(kind: .request)
        allow.underscoreAction = .allow
        let ra = Recorder()
        allow.delegate = ra
        #expect(feed(allow, msg) != .error)
        #expect(ra.heads.first?.headers.count == 5)
    }

    @Test func tooManyHeadersIs431() {
        let p = HTTP1Parser(kind: .request, maxHeaders: 10)
        let r = Recorder()
        p.delegate = r
        let head = "GET / HTTP/1.1\r\n" + (0..<11).map { "X\($0): v\r\n" }.joined() + "\r\n"
        #expect(feed(p, head) == .error)
        #expect(p.error?.status == 431)
        withExtendedLifetime(r) {}
    }

    @Test func responseToHEADHasNoBodyWhenTheDelegateSaysSo() {
        let p = HTTP1Parser(kind: .response)
        let r = Recorder()
        r.skipBody = true
        p.delegate = r
        #expect(feed(p, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n") == .paused(consumed: 39))
        #expect(r.completed == 1)
        #expect(p.statusCode == 200)
    }

    @Test func closeDelimitedResponseCompletesAtEOF() {
        let p = HTTP1Parser(kind: .response)
        let r = Recorder()
        p.delegate = r
        #expect(feed(p, "HTTP/1.1 200 OK\r\n\r\nabc") == .ok)
        #expect(r.completed == 0)
        #expect(p.finish() != .error)
        #expect(r.completed == 1)
        #expect(String(decoding: r.body, as: UTF8.self) == "abc")
    }

    @Test func truncatedContentLengthResponseIsAnErrorAtEOF() {
        let p = HTTP1Parser(kind: .response)
        let r = Recorder()
        p.delegate = r
        #expect(feed(p, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc") == .ok)
        #expect(p.finish() == .error)
        withExtendedLifetime(r) {}
    }
}

@Suite struct HTTP1HeadTests {
    let recorder = Recorder()
    func parsed(_ s: String) -> HTTP1Parser {
        let p = HTTP1Parser(kind: .request)
        p.delegate = recorder
        _ = feed(p, s)
        return p
    }

    @Test func requestDropsHopByHopAndAddsForwardedHeaders() {
        let p = parsed("POST /x HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"
                       + "TE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Forwarded-For: 10.0.0.1\r\n"
                       + "X-Forwarded-Proto: https\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\nAccept: */*\r\n\r\n")
        var out = ByteBuffer()
        var ip = Array("127.0.0.1".utf8)
        ip.withUnsafeMutableBytes { ipb in
            p.withRequestView { v in
                HTTP1Head.writeRequest(v, framing: .chunked, addHost: false, clientIP: UnsafeRawBufferPointer(ipb),
                                       proto: "http", dropExpect: true, into: &out)
            }
        }
        let text = out.bytes.string
        #expect(text == "POST /x HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\ntransfer-encoding: chunked\r\n"
                + "x-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\n\r\n")
        out.release()
    }

    @Test func connectionCannotRemoveFramingOrHost() {
        // Request smuggling: a Connection token naming Content-Length would send the body unframed.
        let p = parsed("POST /x HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, Content-Length, host, X-A\r\n"
                       + "Content-Length: 4\r\nX-A: 1\r\n\r\n")
        var out = ByteBuffer()
        p.withRequestView { v in
            HTTP1Head.writeRequest(v, framing: .contentLength, addHost: false, clientIP: rawBytes("1.2.3.4"),
                                   proto: "http", dropExpect: true, into: &out)
        }
        #expect(out.bytes.string == "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n"
                + "x-forwarded-for: 1.2.3.4\r\nx-forwarded-proto: http\r\n\r\n")
        out.release()

        let r = HTTP1Parser(kind: .response)
        r.delegate = recorder
        _ = feed(r, "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n")
        var resp = ByteBuffer()
        r.withHeaderRefs { h in
            HTTP1Head.writeResponse(status: 200, reason: r.startLine, headers: h, framing: .contentLength,
                                    keepAlive: true, into: &resp)
        }
        #expect(resp.bytes.string == "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        resp.release()
    }

    @Test func responseReframesAndMarksClose() {
        let p = HTTP1Parser(kind: .response)
        p.delegate = recorder
        _ = feed(p, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nServer: s\r\n\r\n")
        var out = ByteBuffer()
        p.withHeaderRefs { h in
            HTTP1Head.writeResponse(status: p.statusCode, reason: p.startLine, headers: h, framing: .chunked,
                                    keepAlive: false, into: &out)
        }
        #expect(out.bytes.string == "HTTP/1.1 200 OK\r\nServer: s\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        out.release()
    }

    @Test func requestFromHTTP2GetsHostFromAuthority() {
        var out = ByteBuffer()
        var fields = HeaderBlock()
        fields.append(rawBytes("accept"), rawBytes("*/*"))
        fields.append(rawBytes("te"), rawBytes("trailers"))
        fields.withRefs { refs in
            HTTP1Head.writeRequest(RequestView(method: rawBytes("GET"), target: rawBytes("/a?b"), authority: rawBytes("svc:80"),
                                               headers: refs),
                                   framing: .none, addHost: true, clientIP: rawBytes("::1"), proto: "http",
                                   dropExpect: false, into: &out)
        }
        #expect(out.bytes.string == "GET /a?b HTTP/1.1\r\nhost: svc:80\r\naccept: */*\r\n"
                + "x-forwarded-for: ::1\r\nx-forwarded-proto: http\r\n\r\n")
        out.release()
        fields.release()
    }

    @Test func lastChunkCarriesTrailers() {
        var out = ByteBuffer()
        [HeaderRef(name: rawBytes("grpc-status"), value: rawBytes("0"))].withUnsafeBufferPointer {
            HTTP1Head.writeLastChunk(trailers: $0, into: &out)
        }
        #expect(out.bytes.string == "0\r\ngrpc-status: 0\r\n\r\n")
        out.release()
    }

    @Test func connectionTokenLists() {
        func check(_ list: String, _ name: String) -> Bool {
            var l = Array(list.utf8), n = Array(name.utf8)
            return l.withUnsafeMutableBytes { lb in n.withUnsafeMutableBytes { nb in
                HTTP1Head.connectionTokens(UnsafeRawBufferPointer(lb), contain: UnsafeRawBufferPointer(nb)) } }
        }
        #expect(check("close, X-Foo", "x-foo"))
        #expect(check(" x-foo ", "X-FOO"))
        #expect(!check("x-foobar", "x-foo"))
        #expect(!check("", "x"))
    }
}

func rawBytes(_ s: StaticString) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)
}

@Suite struct GRPCTests {
    @Test(arguments: [("1S", 1000), ("250m", 250), ("2M", 120_000), ("1H", 3_600_000), ("1500u", 2), ("1n", 1),
                      ("0m", 0), ("99999999m", 99_999_999)])
    func timeouts(text: String, ms: Int) {
        var b = Array(text.utf8)
        #expect(b.withUnsafeMutableBytes { GRPC.timeout(UnsafeRawBufferPointer($0)) } == UInt64(ms))
    }

    @Test(arguments: ["", "1", "S", "100000000m", "1x", "-1S", "1.5S"])
    func badTimeouts(text: String) {
        var b = Array(text.utf8)
        #expect(b.withUnsafeMutableBytes { GRPC.timeout(UnsafeRawBufferPointer($0)) } == nil)
    }

    @Test func contentTypes() {
        func check(_ s: String) -> Bool { var b = Array(s.utf8); return b.withUnsafeMutableBytes { GRPC.isGRPC(contentType: UnsafeRawBufferPointer($0)) } }
        #expect(check("application/grpc"))
        #expect(check("application/grpc+proto"))
        #expect(check("application/grpc; charset=x"))
        #expect(!check("application/grpcx"))
        #expect(!check("application/json"))
    }

    @Test func messageEncoding() {
        var out = ByteBuffer()
        GRPC.appendEncodedMessage("50% off: ü", into: &out)
        #expect(out.bytes.string == "50%25 off: %C3%BC")
        out.release()
    }
}

@Suite struct ByteBufferTests {
    @Test func numbersAndGrowth() {
        var b = ByteBuffer()
        b.appendDecimal(0); b.append(byte: 32); b.appendDecimal(18_446_744_073_709_551_615)
        b.append(byte: 32); b.appendHex(0); b.append(byte: 32); b.appendHex(0xABCDEF)
        #expect(b.bytes.string == "0 18446744073709551615 0 abcdef")
        for _ in 0..<1000 { b.append("xyz") }
        #expect(b.count == 31 + 3000)
        b.consume(31)
        #expect(b.bytes.string == String(repeating: "xyz", count: 1000))
        b.clear(keepingAtMost: 16)
        #expect(b.capacity == 0 && b.isEmpty)
        b.release()
    }
}


@Suite struct ContainsByteTests {
    @Test func everyLengthAndPosition() {
        for n in 0...40 {
            var bytes = [UInt8](repeating: 0x41, count: n)
            bytes.withUnsafeBytes { #expect(!$0.contains(byte: 0x5F), "n \(n)") }
            for at in 0..<n {
                bytes[at] = 0x5F
                bytes.withUnsafeBytes { #expect($0.contains(byte: 0x5F), "n \(n) at \(at)") }
                bytes[at] = 0xDF   // 0x5F | 0x80: not a match
                bytes.withUnsafeBytes { #expect(!$0.contains(byte: 0x5F), "n \(n) at \(at) high bit") }
                bytes[at] = 0x41
            }
        }
    }
}

@Suite struct RequestHeadPolicyTests {
    /// The one policy, seen through both writers: the same client fields go on either way.
    @Test func bothWritersForwardTheSameFields() {
        var fields = HeaderBlock()
        for (n, v) in [("Host", "svc"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("TE", "trailers"),
                       ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "https"), ("Expect", "100-continue"),
                       ("Accept", "*/*"), ("Content-Length", "3")] {
            var nb = Array(n.utf8), vb = Array(v.utf8)
            nb.withUnsafeBytes { nr in vb.withUnsafeBytes { vr in fields.append(nr, vr) } }
        }
        let view = fields.withRefs { RequestView(method: rawBytes("POST"), target: rawBytes("/p"), authority: rawBytes("svc"), headers: $0) }
        var h2 = HeaderBlock()
        HTTP2Head.storeRequest(view, clientIP: rawBytes("1.2.3.4"), proto: "http", dropExpect: true, namesLowercase: false, into: &h2)
        let got = (0..<h2.count).map { (h2.name($0).string, h2.value($0).string) }
        #expect(got.map(\.0) == [":method", ":authority", ":path", "te", "accept", "content-length",
                                 "x-forwarded-for", "x-forwarded-proto"])
        #expect(got[6].1 == "10.0.0.1, 1.2.3.4" && got[7].1 == "http")
        var h1 = ByteBuffer()
        HTTP1Head.writeRequest(view, framing: .contentLength, addHost: false, clientIP: rawBytes("1.2.3.4"), proto: "http",
                               dropExpect: true, into: &h1)
        #expect(h1.bytes.string == "POST /p HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\nContent-Length: 3\r\n"
                + "x-forwarded-for: 10.0.0.1, 1.2.3.4\r\nx-forwarded-proto: http\r\n\r\n")
        h1.release(); h2.release(); fields.release()
    }

    /// The proxy's own fields (`AddedFields`): HTTP/1.1 copies the lines after the client's fields,
    /// HTTP/2 stores the same fields there; neither goes through the request-head policy.
    @Test func bothWritersAddTheProxysFieldsAfterTheClients() {
        var fields = HeaderBlock()
        for (n, v) in [("Host", "svc"), ("Accept", "*/*")] {
            var nb = Array(n.utf8), vb = Array(v.utf8)
            nb.withUnsafeBytes { nr in vb.withUnsafeBytes { vr in fields.append(nr, vr) } }
        }
        let view = fields.withRefs { RequestView(method: rawBytes("GET"), target: rawBytes("/"), authority: rawBytes("svc"), headers: $0) }
        let lines = Array("x-request-id: abc\r\ntraceparent: 00-x-y-01\r\n".utf8)
        lines.withUnsafeBytes { text in
            let added = [HeaderRef(name: UnsafeRawBufferPointer(rebasing: text[0..<12]), value: UnsafeRawBufferPointer(rebasing: text[14..<17])),
                         HeaderRef(name: UnsafeRawBufferPointer(rebasing: text[19..<30]), value: UnsafeRawBufferPointer(rebasing: text[32..<41]))]
            added.withUnsafeBufferPointer { refs in
                let extra = AddedFields(fields: refs, lines: text)
                var h1 = ByteBuffer()
                HTTP1Head.writeRequest(view, framing: .none, addHost: false, clientIP: rawBytes("1.2.3.4"), proto: "http",
                                       dropExpect: true, extraLines: extra.lines, into: &h1)
                #expect(h1.bytes.string == "GET / HTTP/1.1\r\nHost: svc\r\nAccept: */*\r\n"
                        + "x-request-id: abc\r\ntraceparent: 00-x-y-01\r\n"
                        + "x-forwarded-for: 1.2.3.4\r\nx-forwarded-proto: http\r\n\r\n")
                var h2 = HeaderBlock()
                HTTP2Head.storeRequest(view, clientIP: rawBytes("1.2.3.4"), proto: "http", dropExpect: true, namesLowercase: false,
                                       extra: extra.fields, into: &h2)
                let got = (0..<h2.count).map { "\(h2.name($0).string): \(h2.value($0).string)" }
                #expect(got == [":method: GET", ":authority: svc", ":path: /", "accept: */*", "x-request-id: abc",
                                "traceparent: 00-x-y-01", "x-forwarded-for: 1.2.3.4", "x-forwarded-proto: http"])
                h1.release(); h2.release()
            }
        }
        fields.release()
    }
}
