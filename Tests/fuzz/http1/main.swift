// libFuzzer target: bytes from a client -> HTTP1Parser (the proxy's request limits, pipelining) ->
// HTTP1Head.writeRequest on every request the proxy would forward. See Tests/fuzz/README.md.
//
// Input: byte 0 chooses how the rest is cut into reads (whole, 1-byte, small or mixed pieces);
// bytes 1... are what the client sends. Checked on every input:
// - no crash, no memory error (ASan);
// - the parse is the same whatever the cuts: the events of a one-piece parse (heads, bodies,
//   trailers, message ends, whether and how it failed) equal those of the cut parse, which stops after each
//   message and resumes with the rest as HTTPSession does;
// - the head written for the upstream parses back (strict llhttp) as one request with the same
//   method and target, one Host (none only for an HTTP/1.0 request without one), and the framing the proxy chose (Content-Length kept with
//   its value, or chunked, or no body).
import Glibc
import RemoraCore
import RemoraHTTP

/// What one parse saw, in order; compared between the one-piece and the cut parse.
final class Recorder: HTTP1ParserDelegate {
    var events: [UInt8] = []
    var upstream = ByteBuffer()
    var check = true
    let pool: BufferPool

    init(pool: BufferPool) { self.pool = pool }

    func note(_ tag: UInt8, _ b: UnsafeRawBufferPointer) {
        events.append(tag)
        var n = UInt32(b.count)
        withUnsafeBytes(of: &n) { events.append(contentsOf: $0) }
        events.append(contentsOf: b)
    }

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        precondition(p.startLineLength <= p.head.count)
        note(1, p.methodName)
        note(2, p.startLine)
        for i in 0..<p.headerCount { note(3, p.name(i)); note(4, p.value(i)) }
        var flags: UInt8 = p.isChunked ? 1 : 0
        if p.hasContentLength { flags |= 2 }
        if p.shouldKeepAlive { flags |= 4 }
        events.append(flags)
        if check { forward(p) }
        return false
    }

    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) { events.append(contentsOf: data) }

    func parserMessageComplete(_ p: HTTP1Parser) {
        events.append(5)
        p.trailers.withRefs { for f in $0 { note(6, f.name); note(7, f.value) } }
        p.clearTrailers()
    }

    /// What HTTPSession + Exchange do with a head they accept: the refusals first, then the upstream head.
    func forward(_ p: HTTP1Parser) {
        let isHTTP10 = p.versionMajor == 1 && p.versionMinor == 0
        if p.isCONNECT { return }
        if p.hostCount > 1 || (p.hostCount == 0 && !isHTTP10) { return }
        if !RequestTarget.isForwardable(p.startLine, isOPTIONS: p.isOPTIONS) { return }
        if p.transferEncodingIndex >= 0 && !p.value(p.transferEncodingIndex).equalsLowercase("chunked") { return }
        var expectContinue = false
        if p.expectIndex >= 0 {
            guard p.value(p.expectIndex).equalsLowercase("100-continue") else { return }
            expectContinue = !isHTTP10
        }
        let framing: BodyFraming = p.isChunked ? .chunked : (p.hasContentLength ? .contentLength : (p.hasBody ? .chunked : .none))
        let length = p.contentLength
        p.withRequestView { view in
            var v = view
            let absolute = RequestTarget.splitAbsolute(view.target)
            if let (authority, path) = absolute { v.authority = authority; v.target = path }
            upstream.clear()
            let ip: StaticString = "127.0.0.1"
            HTTP1Head.writeRequest(v, framing: framing, addHost: absolute != nil,
                                   clientIP: UnsafeRawBufferPointer(start: ip.utf8Start, count: ip.utf8CodeUnitCount),
                                   proto: "http", dropExpect: expectContinue, into: &upstream)
            // An HTTP/1.0 request may come without Host; it is then forwarded without one (reported in #19).
            verifyUpstream(method: v.method, target: v.target, framing: framing, length: length,
                           hosts: p.hostCount == 1 || absolute != nil ? 1 : 0,
                           connectionNamesFraming: namesFraming(v.headers))
        }
    }

    /// Whether a Connection header names Content-Length or Host (issue #19 item 1, see `knownDrop`).
    func namesFraming(_ h: UnsafeBufferPointer<HeaderRef>) -> Bool {
        for f in h where f.name.count == 10 && f.name.equalsLowercase("connection") {
            var lower = [UInt8](f.value)
            for i in lower.indices where lower[i] &- 0x41 < 26 { lower[i] |= 0x20 }
            let s = String(decoding: lower, as: UTF8.self)
            if s.contains("content-length") || s.contains("host") { return true }
        }
        return false
    }

    func verifyUpstream(method: UnsafeRawBufferPointer, target: UnsafeRawBufferPointer, framing: BodyFraming, length: UInt64,
                        hosts: Int, connectionNamesFraming: Bool) {
        let q = HTTP1Parser(kind: .request, maxHeadBytes: 1 << 30, maxHeaders: 1 << 20, pauseAfterMessage: true)
        let seen = HeadSeen()
        q.delegate = seen
        let r = q.feed(upstream.bytes)
        func fail(_ why: String) -> Never {
            let text = String(decoding: upstream.bytes, as: UTF8.self)
            fatalError("upstream head: \(why)\n--- written ---\n\(text.debugDescription)")
        }
        if r == .error { fail("does not parse: \(q.error?.description ?? "?")") }
        guard seen.done else { fail("incomplete") }
        if !seen.method.elementsEqual(method) { fail("method changed") }
        if !seen.target.elementsEqual(target) { fail("target changed") }
        if knownDrop && connectionNamesFraming { return }
        if seen.hostCount != hosts { fail("\(seen.hostCount) Host headers, expected \(hosts)") }
        switch framing {
        case .contentLength:
            if !seen.hasContentLength || seen.contentLength != length { fail("Content-Length \(length) not kept") }
            if seen.chunked { fail("chunked and Content-Length") }
        case .chunked:
            if !seen.chunked { fail("not chunked") }
        case .none, .closeDelimited:
            if seen.chunked || (seen.hasContentLength && seen.contentLength > 0) { fail("a body where there is none") }
        }
    }
}

/// The upstream head, parsed back.
final class HeadSeen: HTTP1ParserDelegate {
    var done = false
    var method: [UInt8] = [], target: [UInt8] = []
    var hostCount = 0, chunked = false, hasContentLength = false, contentLength: UInt64 = 0
    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        done = true
        method = Array(p.methodName); target = Array(p.startLine)
        hostCount = p.hostCount; chunked = p.isChunked; hasContentLength = p.hasContentLength; contentLength = p.contentLength
        return true
    }
    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {}
    func parserMessageComplete(_ p: HTTP1Parser) {}
}

/// Whether this build's writeRequest lets `Connection` remove Content-Length or Host (issue #19
/// item 1, fixed elsewhere): then the framing checks skip such requests instead of failing at once.
/// REMORA_FUZZ_STRICT=1 checks them anyway.
let knownDrop: Bool = {
    if getenv("REMORA_FUZZ_STRICT") != nil { return false }
    let probe = "GET / HTTP/1.1\r\nHost: x\r\nConnection: content-length, host\r\nContent-Length: 0\r\n\r\n"
    let pool = BufferPool()
    let p = HTTP1Parser(kind: .request, pauseAfterMessage: false)
    let r = Recorder(pool: pool)
    r.check = false
    p.delegate = r
    var s = probe
    _ = s.withUTF8 { p.feed(UnsafeRawBufferPointer($0)) }
    var out = ByteBuffer()
    let ip: StaticString = "1"
    var dropped = false
    defer { out.release() }
    p.withRequestView { v in
        HTTP1Head.writeRequest(v, framing: .contentLength, addHost: false,
                               clientIP: UnsafeRawBufferPointer(start: ip.utf8Start, count: 1), proto: "http",
                               dropExpect: false, into: &out)
        let text = String(decoding: out.bytes, as: UTF8.self).lowercased()
        dropped = !text.contains("content-length: 0") || !text.contains("host: x")
    }
    // (withRequestView after the parse: the head is still there, no pool)
    if dropped {
        var m = "FuzzHTTP1: writeRequest drops a Content-Length/Host named by Connection (issue #19 item 1); "
            + "the framing check skips such requests\n"
        m.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
    return dropped
}()

/// The proxy's request limits: HTTPSession's parser with ListenerConfig's default head size (60 KiB)
/// and HTTP1Parser's default header count (100).
let maxHead = 60 * 1024

func parse(_ input: UnsafeRawBufferPointer, cuts: UInt8, check: Bool) -> (events: [UInt8], status: Int) {
    let pool = BufferPool()
    let p = HTTP1Parser(kind: .request, maxHeadBytes: maxHead)
    let rec = Recorder(pool: pool)
    rec.check = check
    p.delegate = rec
    p.pool = pool
    defer { p.delegate = nil; rec.upstream.release() }
    var rng = UInt32(cuts) &* 2654435761 | 1
    func nextPiece(_ left: Int) -> Int {
        rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5
        switch cuts & 3 {
        case 0: return left
        case 1: return 1
        case 2: return 1 + Int(rng % 16)
        default: return 1 + Int(rng % 512)
        }
    }
    var stash = ByteBuffer()
    defer { stash.release() }
    var offset = 0
    // Feeds `data`; on a pause keeps the rest, resumes and goes on with it (HTTPSession.feed).
    func run(_ data: UnsafeRawBufferPointer) -> Bool {
        var input = data
        var work = ByteBuffer()
        defer { work.release() }
        while true {
            switch p.feed(input) {
            case .ok: return true
            case .error: return false
            case .paused(let consumed):
                stash.append(UnsafeRawBufferPointer(rebasing: input[consumed...]))
            }
            // the exchange ended: resume with what was kept
            p.resume()
            if rng & 0x100 != 0 { p.trim() }
            work.clear()
            work.append(stash.bytes)
            stash.clear()
            input = work.bytes
            if input.count == 0 { return true }
        }
    }
    while offset < input.count {
        let n = min(nextPiece(input.count - offset), input.count - offset)
        if !run(UnsafeRawBufferPointer(rebasing: input[offset..<offset + n])) { return (rec.events, p.error?.status ?? 400) }
        offset += n
    }
    switch p.finish() {
    case .error: return (rec.events, p.error?.status ?? 400)
    default: return (rec.events, 0)
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ cb: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

_ = knownDrop
var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    guard let data, size > 0 else { return 0 }
    let cuts = data[0]
    let input = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let whole = parse(input, cuts: 0, check: true)
    if cuts & 3 != 0 {
        let cut = parse(input, cuts: cuts, check: false)
        // 400 and 431 count as one outcome: a limit is checked when llhttp hands over a piece of a
        // name or value, so a malformed field beyond the limit is a 400 in one piece (llhttp refuses it
        // before the span ends) and a 431 when cut (its first bytes arrive, and count, alone).
        func refused(_ s: Int) -> Int { s == 431 ? 400 : s }
        if refused(whole.status) != refused(cut.status) || whole.events != cut.events {
            fatalError("cut parse differs from one-piece parse: status \(whole.status) vs \(cut.status), "
                       + "events \(whole.events.count) vs \(cut.events.count) bytes")
        }
    }
    return 0
})
