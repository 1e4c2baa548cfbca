import Testing
import RemoraHTTP
@testable import RemoraBench

/// Feeds `chunks` one after the other (as successive reads) and returns every event but
/// `.needMore`, then what `finish` says at the connection's end when `eof`.
func frame(_ chunks: [[UInt8]], head: Bool = false, eof: Bool = false, maxHeadBytes: Int = 256 * 1024) -> [HTTP1ResponseParser.Event] {
    var p = HTTP1ResponseParser(isHEAD: head, maxHeadBytes: maxHeadBytes, maxHeaders: 8)
    defer { p.release() }
    var events: [HTTP1ResponseParser.Event] = []
    for chunk in chunks {
        chunk.withUnsafeBytes { data in
            var offset = 0
            while true {
                let e = p.next(data, &offset)
                if e == .needMore { #expect(offset == data.count); return }
                events.append(e)
                if e == .error { return }
            }
        }
        if events.last == .error { return events }
    }
    if eof {
        let e = p.finish()
        if e != .needMore { events.append(e) }
    }
    return events
}

func frame(_ text: String, head: Bool = false, eof: Bool = false) -> [HTTP1ResponseParser.Event] {
    frame([Array(text.utf8)], head: head, eof: eof)
}

/// The same events whatever the reads: whole, cut in two at every byte, one byte at a time.
func frameEverySplit(_ text: String, head: Bool = false, eof: Bool = false) -> [HTTP1ResponseParser.Event] {
    let bytes = Array(text.utf8)
    let whole = frame([bytes], head: head, eof: eof)
    for i in 1..<bytes.count {
        #expect(frame([Array(bytes[..<i]), Array(bytes[i...])], head: head, eof: eof) == whole, "split at \(i)")
    }
    #expect(frame(bytes.map { [$0] }, head: head, eof: eof) == whole, "byte by byte")
    return whole
}

func ok(_ status: Int = 200, keepAlive: Bool = true) -> HTTP1ResponseParser.Event {
    .response(status: status, keepAlive: keepAlive)
}

@Suite struct HTTP1ResponseParserTests {
    @Test func contentLengthResponsesPipelined() {
        let r = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
            + "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
            + "HTTP/1.1 503\r\nCONTENT-LENGTH:  5 \r\nX-Other: a:b\r\n\r\nhello"
        #expect(frameEverySplit(r) == [ok(200), ok(404), ok(503)])
    }

    @Test func chunkedWithExtensionsAndTrailers() {
        let r = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"
            + "5;name=value\r\nhello\r\nA \r\n0123456789\r\n0\r\nGrpc-Status: 0\r\nX-T: y\r\n\r\n"
            + "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        #expect(frameEverySplit(r) == [ok(200), ok(201)])
    }

    @Test func bareLineFeedsAreAccepted() {
        #expect(frameEverySplit("HTTP/1.1 200 OK\nContent-Length: 2\n\nokHTTP/1.1 204 No Content\n\n") == [ok(200), ok(204)])
    }

    @Test func bodyUntilTheConnectionCloses() {
        #expect(frameEverySplit("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this", eof: true)
                == [ok(200, keepAlive: false)])
        // a transfer coding other than chunked last: also until the close
        #expect(frame("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", eof: true)
                == [ok(200, keepAlive: false)])
        // ... and not before: no event until then
        #expect(frame("HTTP/1.1 200 OK\r\n\r\nmore") == [])
    }

    @Test func theConnectionEndingMidResponseCompletesNothing() {
        #expect(frame("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", eof: true) == [])
        #expect(frame("HTTP/1.1 200 OK\r\nContent-Le", eof: true) == [])
        #expect(frame("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", eof: true) == [])
    }

    @Test func responsesWithoutABody() {
        // HEAD: the Content-Length is the GET's; no body follows
        #expect(frameEverySplit("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
                                head: true) == [ok(), ok()])
        #expect(frame("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")
                == [ok(204), ok(304)])
    }

    @Test func interimResponsesAreSkipped() {
        let r = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        #expect(frameEverySplit(r) == [ok(200)])
    }

    @Test func switchingProtocolsEndsHTTP() {
        #expect(frame("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nnot HTTP any more\r\n\r\n")
                == [ok(101, keepAlive: false)])
    }

    @Test func keepAlive() {
        #expect(frame("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n") == [ok(keepAlive: false)])
        #expect(frame("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                == [ok(), ok(keepAlive: false)])
        #expect(frame("HTTP/1.1 200 OK\r\nConnection: upgrade, CLOSE\r\nContent-Length: 0\r\n\r\n") == [ok(keepAlive: false)])
        #expect(frame("HTTP/1.1 200 OK\r\nConnection: closed\r\nContent-Length: 0\r\n\r\n") == [ok()])
        // after a response that ends the connection, what follows is ignored
        #expect(frame("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
                == [ok(keepAlive: false)])
    }

    @Test func sameContentLengthTwiceIsFine() {
        #expect(frame("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok") == [ok()])
    }

    @Test(arguments: [
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.2 200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 2x0 OK\r\n\r\n",
        "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1  200 OK\r\n\r\n",
        "\r\nHTTP/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 x\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\nI: 9\r\n\r\n",   // > 8 fields
    ])
    func refused(_ r: String) {
        #expect(frameEverySplit(r) == [.error])
    }

    @Test func errorsAreFinal() {
        var p = HTTP1ResponseParser(isHEAD: false)
        defer { p.release() }
        Array("HTTP/9.9 200 OK\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8).withUnsafeBytes { data in
            var offset = 0
            #expect(p.next(data, &offset) == .error)
            #expect(p.next(data, &offset) == .error)
        }
        #expect(p.finish() == .error)
    }

    @Test func headLimit() {
        let r = Array("HTTP/1.1 200 OK\r\nX-Long: \(String(repeating: "a", count: 200))\r\n\r\n".utf8)
        #expect(frame([r], maxHeadBytes: 200) == [.error])
        #expect(frame([Array(r[..<150]), Array(r[150...])], maxHeadBytes: 200) == [.error])   // cut inside the long line
        #expect(frame([r], maxHeadBytes: 300) == [])   // under the limit; no length: the body runs until the close
        #expect(frame(r.map { [$0] }, maxHeadBytes: 100) == [.error])
    }

    /// The same framing as the data plane's llhttp-based parser on generated responses: statuses,
    /// keep-alive, how many responses, for every way of cutting the bytes into two reads.
    @Test func agreesWithLLHTTP() {
        var rng = SplitMix(seed: 0x5eed)
        for round in 0..<500 {
            let head = round % 7 == 0
            var text = ""
            for _ in 0..<(1 + rng.next(3)) { text += generatedResponse(&rng, head: head) }
            let bytes = Array(text.utf8)
            let expected = llhttpFrames(bytes, head: head)
            #expect(frame([bytes], head: head) == expected, "\(text)")
            let cut = rng.next(bytes.count)
            #expect(frame([Array(bytes[..<cut]), Array(bytes[cut...])], head: head) == expected, "cut at \(cut): \(text)")
        }
    }
}

/// A keep-alive response with a random framing, status, version, header spelling and body.
func generatedResponse(_ rng: inout SplitMix, head: Bool) -> String {
    let statuses = [200, 200, 201, 204, 304, 404, 500, 100]
    let status = statuses[rng.next(statuses.count)]
    var r = (status == 100 ? "HTTP/1.1 100 Continue\r\n\r\n" : "")
    let final = status == 100 ? 200 : status
    let http10 = rng.next(6) == 0
    r += "HTTP/1.\(http10 ? 0 : 1) \(final) Reason\(rng.next(2) == 0 ? " Phrase" : "")\r\n"
    /// lowercase, UPPERCASE or Capitalized-Words
    func name(_ n: String) -> String {
        switch rng.next(3) {
        case 0: return n
        case 1: return n.uppercased()
        default: return n.split(separator: "-").map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined(separator: "-")
        }
    }
    // (not a tab after the value: llhttp refuses it in Content-Length and misses the keep-alive
    // token before it, where RFC 9110 §5.5 says it is whitespace around the value, as a space)
    func ows() -> String { ["", " ", "  ", "\t"][rng.next(4)] }
    func trailingOWS() -> String { ["", " ", "  "][rng.next(3)] }
    if http10 { r += "\(name("connection")):\(ows())keep-alive\(trailingOWS())\r\n" }
    for _ in 0..<rng.next(3) { r += "X-Filler-\(rng.next(100)): \(String(repeating: "v", count: rng.next(40)))\r\n" }
    let body = String(repeating: "b", count: rng.next(30))
    let noBody = head || final == 204 || final == 304
    if rng.next(3) == 0 {
        r += "\(name("transfer-encoding")):\(ows())chunked\(trailingOWS())\r\n\r\n"
        if noBody { return r }
        var left = body
        while !left.isEmpty {
            let n = 1 + rng.next(left.count)
            r += String(n, radix: 16, uppercase: rng.next(2) == 0) + (rng.next(4) == 0 ? ";ext=1" : "") + "\r\n"
            r += left.prefix(n) + "\r\n"
            left.removeFirst(n)
        }
        return r + "0\r\n" + (rng.next(2) == 0 ? "Trailer-Field: x\r\n" : "") + "\r\n"
    }
    r += "\(name("content-length")):\(ows())\(body.count)\(trailingOWS())\r\n\r\n"
    return noBody ? r : r + body
}

/// What the data plane's parser (llhttp) makes of `bytes`, as framing events.
func llhttpFrames(_ bytes: [UInt8], head: Bool) -> [HTTP1ResponseParser.Event] {
    final class Collector: HTTP1ParserDelegate {
        let head: Bool
        var status = 0
        var interim = false
        var events: [HTTP1ResponseParser.Event] = []
        init(head: Bool) { self.head = head }
        func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
            status = p.statusCode
            interim = status >= 100 && status < 200 && status != 101
            return head || status == 204 || status == 304
        }
        func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {}
        func parserMessageComplete(_ p: HTTP1Parser) {
            if interim { interim = false; return }
            events.append(.response(status: status, keepAlive: p.shouldKeepAlive && status != 101))
        }
    }
    let c = Collector(head: head)
    let p = HTTP1Parser(kind: .response, maxHeadBytes: 256 * 1024, maxHeaders: 8, pauseAfterMessage: false)
    p.delegate = c
    let r = bytes.withUnsafeBytes { p.feed($0) }
    if r == .error { c.events.append(.error) }
    return c.events
}

/// A small deterministic generator (SplitMix64).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next(_ bound: Int) -> Int {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return bound <= 1 ? 0 : Int((z ^ (z >> 31)) % UInt64(bound))
    }
}
