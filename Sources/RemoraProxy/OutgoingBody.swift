import RemoraCore
import RemoraHTTP

/// A body we send on an HTTP/2 stream (a response downstream, a request upstream): bytes waiting
/// for nghttp2's data source to take them, its end, and trailer fields. Storage comes from and goes
/// back to the worker's pool.
struct OutgoingBody {
    var bytes = ByteBuffer()
    /// No more bytes will be added.
    var ended = false
    var trailers = HeaderBlock()
    var hasTrailers = false
    /// The data source said "nothing yet": nghttp2 waits for `resumeData`.
    var deferred = false

    mutating func reset() {
        ended = false
        hasTrailers = false
        deferred = false
    }

    mutating func append(_ data: UnsafeRawBufferPointer, pool: BufferPool) {
        if bytes.base == nil { bytes = pool.take() }
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
    var ready: Bool { deferred && (bytes.count > 0 || ended) }

    /// The data source's read: copies what is buffered into nghttp2's `buf`; the end (with trailers
    /// or not) once everything went; nil (deferred) when nothing is buffered yet.
    mutating func read(into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? {
        let n = min(buf.count, bytes.count)
        if n > 0 {
            buf.baseAddress!.copyMemory(from: bytes.base!, byteCount: n)
            bytes.consume(n)
        }
        if bytes.count == 0 && ended { return (n, true, hasTrailers) }
        if n == 0 { deferred = true; return nil }
        return (n, false, false)
    }

    mutating func release(to pool: BufferPool) {
        trailers.release(to: pool)
        pool.give(&bytes)
    }
}
