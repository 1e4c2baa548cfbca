// libFuzzer target: bytes from a client after the connection preface -> a server-side HTTP2Session
// (nghttp2 with the proxy's options and default listener settings) with a small delegate that acts
// like H2ServerConnection: it copies each header block into a pooled HeaderBlock, answers every
// request (its headers echoed back through submitResponse's filter-and-lowercase path, a body from
// the data source, sometimes trailers or a reset), returns flow-control credit, and writes with
// mem_send after every read. See Tests/fuzz/README.md.
//
// Input: byte 0 chooses how the rest is cut into reads (bits 0-1) and how the delegate answers
// (bit 2: bodies, bit 3: trailers, bit 4: reset every other stream, bit 5: never return credit);
// bytes 1... follow the preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", which the target sends first.
// Checked: no crash, no memory error, no leak; the session never asks to be written to forever.
import Glibc
import RemoraCore
import RemoraHTTP

final class Server: HTTP2SessionDelegate {
    final class Stream {
        var fields = HeaderBlock()
        var started = false
        var answered = false
        var bodyLeft = 0
        var trailers = HeaderBlock()
    }

    let pool = BufferPool()
    let settings = HTTP2Settings()
    let h2: HTTP2Session
    let mode: UInt8
    var streams: [Int32: Stream] = [:]
    var pending: [Int32] = []
    var toConsume: [(Int32, Int)] = []
    var connectionCredit = 0
    var written = 0
    var inSession = false

    init(mode: UInt8) {
        self.mode = mode
        h2 = HTTP2Session(role: .server, settings: settings)
        h2.delegate = self
    }

    func release() {
        h2.delegate = nil
        for (_, s) in streams { s.fields.release(to: pool); s.trailers.release(to: pool) }
        streams.removeAll()
    }

    // MARK: HTTP2SessionDelegate (record only; nothing calls back into the session from here)

    func h2BeginHeaders(_ s: HTTP2Session, stream id: Int32) {
        precondition(inSession)
        if let st = streams[id] { st.fields.removeAll(); return }
        let st = Stream()
        st.fields.prepare(pool)
        streams[id] = st
    }

    func h2Header(_ s: HTTP2Session, stream id: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        guard let st = streams[id] else { return false }
        st.fields.append(name, value)
        return st.fields.listSize <= settings.maxHeaderListSize
    }

    func h2HeadersComplete(_ s: HTTP2Session, stream id: Int32, endStream: Bool) {
        guard let st = streams[id] else { return }
        if st.started { return }   // request trailers
        st.started = true
        // What H2ServerConnection reads from the head: pseudo-headers, then the regular fields.
        st.fields.withRefs { refs in
            var n = 0
            for f in refs where f.name.first == 0x3A { n += 1 }
            precondition(n <= refs.count)
            if let i = UnsafeBufferPointer(rebasing: refs[n...]).firstIndex(named: "content-length") {
                var v: UInt64 = 0
                for c in refs[n + i].value { v = v &* 10 &+ UInt64(c &- 0x30) }
                _ = v
            }
        }
        pending.append(id)
    }

    func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer) {
        connectionCredit += data.count
        if data.count > 0 { _ = data[data.count - 1] }
        toConsume.append((stream, data.count))
    }

    func h2DataEnd(_ s: HTTP2Session, stream: Int32) {}

    func h2StreamClosed(_ s: HTTP2Session, stream id: Int32, errorCode: UInt32) {
        guard let st = streams.removeValue(forKey: id) else { return }
        st.fields.release(to: pool)
        st.trailers.release(to: pool)
    }

    func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32) {}
    func h2Settings(_ s: HTTP2Session) {}

    static let body = [UInt8](repeating: 0x61, count: 40_000)

    func h2ReadBody(_ s: HTTP2Session, stream id: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? {
        guard let st = streams[id] else { return (0, true, false) }
        let n = min(buf.count, st.bodyLeft)
        Server.body.withUnsafeBytes { buf.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
        st.bodyLeft -= n
        if st.bodyLeft > 0 { return (n, false, false) }
        return (n, true, st.trailers.count > 0)
    }

    // MARK: the owner's side (H2ServerConnection.flush)

    func receive(_ data: UnsafeRawBufferPointer) -> Bool {
        inSession = true
        let ok = h2.receive(data)
        inSession = false
        return ok
    }

    func flush() -> Bool {
        if mode & 0x20 == 0 {
            for (id, n) in toConsume { h2.consume(stream: id, n) }
            h2.consumeConnection(connectionCredit)
        }
        toConsume.removeAll(keepingCapacity: true)
        connectionCredit = 0
        for id in pending {
            guard let st = streams[id], !st.answered else { continue }
            st.answered = true
            if mode & 0x10 != 0 && id % 4 == 3 { h2.reset(stream: id, code: 8); continue }
            let hasBody = mode & 0x04 != 0
            st.bodyLeft = hasBody ? Int(id % 5) * 9000 + 1 : 0
            if mode & 0x08 != 0 {
                st.trailers.prepare(pool)
                st.fields.withRefs { for f in $0 where f.name.first != 0x3A { st.trailers.append(f.name, f.value) } }
                if st.trailers.count == 0 { st.trailers.append(rawBytes("grpc-status"), rawBytes("0")) }
            }
            // The request's regular fields as response headers: names lowercased and hop-by-hop dropped here.
            st.fields.withRefs { refs in
                var n = 0
                while n < refs.count && refs[n].name.first == 0x3A { n += 1 }
                _ = h2.submitResponse(stream: id, status: 200, headers: UnsafeBufferPointer(rebasing: refs[n...]),
                                      hasBody: hasBody, clean: false)
            }
        }
        pending.removeAll(keepingCapacity: true)
        var ok = send()
        var rounds = 0
        while ok && !h2.trailersDue.isEmpty {
            rounds += 1
            precondition(rounds < 10_000, "trailers never end")
            let due = h2.trailersDue
            h2.trailersDue.removeAll(keepingCapacity: true)
            for id in due { if let st = streams[id] { st.trailers.withRefs { h2.submitTrailers(stream: id, $0) } } }
            ok = send()
        }
        return ok
    }

    func send() -> Bool {
        inSession = true
        defer { inSession = false }
        var frames = 0
        let ok = h2.send { b in
            frames += 1
            precondition(frames < 100_000, "mem_send never ends")
            precondition(b.count > 0)
            written += b.count
            return true
        }
        return ok
    }
}

func rawBytes(_ s: StaticString) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount) }

let preface: StaticString = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

func run(_ input: UnsafeRawBufferPointer, mode: UInt8) {
    let server = Server(mode: mode)
    defer { server.release() }
    guard server.receive(rawBytes(preface)) else { fatalError("preface refused") }
    guard server.flush() else { return }
    var rng = UInt32(mode) &* 2654435761 | 1
    var offset = 0
    while offset < input.count {
        rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5
        let piece: Int
        switch mode & 3 {
        case 0: piece = input.count
        case 1: piece = 1 + Int(rng % 9)
        case 2: piece = 1 + Int(rng % 100)
        default: piece = 1 + Int(rng % 2000)
        }
        let n = min(piece, input.count - offset)
        let ok = server.receive(UnsafeRawBufferPointer(rebasing: input[offset..<offset + n]))
        offset += n
        let sent = server.flush()
        if !ok || !sent || server.h2.abused { return }   // the proxy closes the connection here
        if !server.h2.wantsRead && !server.h2.wantsWrite { return }
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ cb: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    guard let data, size > 0 else { return 0 }
    run(UnsafeRawBufferPointer(start: data + 1, count: size - 1), mode: data[0])
    return 0
})
