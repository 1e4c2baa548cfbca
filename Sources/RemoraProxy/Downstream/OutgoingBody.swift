import RemoraCore
import RemoraHTTP

/// A body we send on an HTTP/2 stream (a response downstream, a request upstream): bytes waiting
/// for nghttp2's data source to take them, its end, and trailer fields. Storage comes from and goes
/// back to the worker's pool.
struct OutgoingBody {
    /// Bytes taken by the data source are skipped (`head`), not moved, so draining a large buffer
    /// frame by frame costs no copying of what is left; the rest moves to the front only when the
    /// skipped part is at least half the buffer.
    var bytes = ByteBuffer()
    /// Bytes of `bytes` already taken.
    var head = 0
    /// No more bytes will be added.
    var ended = false
    var trailers = HeaderBlock()
    var hasTrailers = false
    /// The trailers' names are lowercase and none is hop-by-hop (they came over HTTP/2): submitted
    /// without a second filtering pass.
    var trailersClean = false
    /// The data source said "nothing yet": nghttp2 waits for `resumeData`.
    var deferred = false

    /// Bytes waiting to be taken.
    @inline(__always) var pending: Int { bytes.count - head }

    mutating func reset() {
        ended = false
        hasTrailers = false
        trailersClean = false
        deferred = false
        head = 0
        bytes.count = 0
    }

    mutating func append(_ data: UnsafeRawBufferPointer, pool: BufferPool) {
        if bytes.base == nil { bytes = pool.take() }
        if head > 0 && head >= bytes.count - head {   // compact: moves at most as much as was taken
            bytes.consume(head)
            head = 0
        }
        bytes.append(data)
    }

    mutating func end(trailers t: UnsafeBufferPointer<HeaderRef>?, pool: BufferPool) {
        ended = true
        if let t, t.count > 0 {
            hasTrailers = true
            trailers.prepare(pool)
            for f in t { trailers.append(f.name, f.value) }   // lowercased and filtered when submitted
        }
    }

    /// Deferred, with something for nghttp2 to take now.
    var ready: Bool { deferred && (pending > 0 || ended) }

    /// The data source's read: copies what is buffered into nghttp2's `buf`; the end (with trailers
    /// or not) once everything went; nil (deferred) when nothing is buffered yet.
    mutating func read(into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? {
        let n = min(buf.count, pending)
        if n > 0 {
            buf.baseAddress!.copyMemory(from: bytes.base! + head, byteCount: n)
            head += n
            if head == bytes.count { head = 0; bytes.count = 0 }
        }
        if pending == 0 && ended { return (n, true, hasTrailers) }
        if n == 0 { deferred = true; return nil }
        return (n, false, false)
    }

    mutating func release(to pool: BufferPool) {
        trailers.release(to: pool)
        head = 0
        pool.give(&bytes)
    }
}

/// What the HTTP/2 streams of one downstream connection may hold toward the client, together
/// (`listeners[].per_connection_buffer_limit`). `buffered` counts the response bytes queued in
/// the streams; `pledged` the HTTP/2 upstream credit granted to them beyond the protocol's initial
/// 64 KiB window (bytes that may still arrive). Beyond `limit` buffered, the connection is `over`:
/// every exchange feeding it pauses its upstream until the client has taken the buffer down to half.
final class ResponseBudget {
    /// Bytes, 64 KiB ... 1 GiB.
    let limit: Int
    var buffered = 0
    var pledged = 0
    var over = false

    init(limit: Int) { self.limit = limit }

    /// Whether `n` more bytes of upstream credit may be granted.
    @inline(__always) func canPledge(_ n: Int) -> Bool { !over && buffered + pledged + n <= limit }
}
