import Testing
@testable import RemoraHTTP

/// Feeds `chunks` one after the other (as successive reads) and returns every event but
/// `.needMore`, then what `finish` says at the connection's end when `eof`.
func frame(_ chunks: [[UInt8]], head: Bool = false, eof: Bool = false) -> [HTTP1ResponseFramer.Event] {
    let p = HTTP1ResponseFramer(isHEAD: head)
    var events: [HTTP1ResponseFramer.Event] = []
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

func frame(_ text: String, head: Bool = false, eof: Bool = false) -> [HTTP1ResponseFramer.Event] {
    frame([Array(text.utf8)], head: head, eof: eof)
}

/// The same events whatever the reads: whole, cut in two at every byte, one byte at a time.
func frameEverySplit(_ text: String, head: Bool = false, eof: Bool = false) -> [HTTP1ResponseFramer.Event] {
    let bytes = Array(text.utf8)
    let whole = frame([bytes], head: head, eof: eof)
    for i in 1..<bytes.count {
        #expect(frame([Array(bytes[..<i]), Array(bytes[i...])], head: head, eof: eof) == whole, "split at \(i)")
    }
    #expect(frame(bytes.map { [$0] }, head: head, eof: eof) == whole, "byte by byte")
    return whole
}

func ok(_ status: Int = 200, keepAlive: Bool = true) -> HTTP1ResponseFramer.Event {
    .response(status: status, keepAlive: keepAlive)
}

@Suite struct HTTP1ResponseFramerTests {
    @Test func contentLengthResponsesPipelined() {
        let r = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
            + "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
            + "HTTP/1.1 503\r\nCONTENT-LENGTH:  5 \r\nX-Other: a:b\r\n\r\nhello"
        #expect(frameEverySplit(r) == [ok(200), ok(404), ok(503)])
    }

    @Test func chunkedWithExtensionsAndTrailers() {
        let r = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"
            + "5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nGrpc-Status: 0\r\nX-T: y\r\n\r\n"
            + "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        #expect(frameEverySplit(r) == [ok(200), ok(201)])
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
        #expect(frame("HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")
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

    @Test(arguments: [
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.2 200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 2x0 OK\r\n\r\n",
        "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
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
        "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",   // bare LF (strict llhttp)
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",   // even the same value twice
    ])
    func refused(_ r: String) {
        #expect(frameEverySplit(r) == [.error])
    }

    @Test func errorsAreFinal() {
        let p = HTTP1ResponseFramer(isHEAD: false)
        Array("HTTP/9.9 200 OK\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8).withUnsafeBytes { data in
            var offset = 0
            #expect(p.next(data, &offset) == .error)
            #expect(p.next(data, &offset) == .error)
        }
        #expect(p.finish() == .error)
    }

}
