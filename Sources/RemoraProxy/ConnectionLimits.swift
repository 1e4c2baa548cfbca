import CRemoraSupport
import RemoraIO

/// Connections open at once on one listener over all workers, and over the whole process
/// (`max_connections` on a listener and at the top level). One counter per listener name and one
/// for the process, each a word on its own cache line changed with a locked add when a
/// connection is accepted and when it closes (never per request); carried from snapshot to
/// snapshot (`Snapshot.connections`), so connections accepted before a reload stay counted.
/// Counting is always on (two locked adds per connection); only the comparison needs a limit.
final class ConnectionCounter: @unchecked Sendable {   // the word is only changed atomically
    /// Open connections counted here (for a listener: its own; for the process: all).
    let word: UnsafeMutablePointer<Int64>
    /// The process-wide counter a listener's counter also counts in; nil for that one itself.
    let process: ConnectionCounter?

    init(process: ConnectionCounter?) {
        self.process = process
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        word = raw.initializeMemory(as: Int64.self, repeating: 0, count: 8)
    }

    deinit { UnsafeMutableRawPointer(word).deallocate() }

    enum Admission { case admitted, overListener, overProcess }

    /// Counts one more connection unless that would pass `limit` (this listener) or `processLimit`
    /// (the process); correct across workers accepting at once (each add sees the others').
    @inline(__always)
    func acquire(limit: Int, processLimit: Int) -> Admission {
        if remora_atomic_add(word, 1) >= Int64(limit) {
            remora_atomic_add(word, -1)
            return .overListener
        }
        if let p = process, remora_atomic_add(p.word, 1) >= Int64(processLimit) {
            remora_atomic_add(p.word, -1)
            remora_atomic_add(word, -1)
            return .overProcess
        }
        return .admitted
    }

    /// A counted connection closed.
    @inline(__always)
    func release() {
        remora_atomic_add(word, -1)
        if let p = process { remora_atomic_add(p.word, -1) }
    }

    /// Connections counted now.
    var open: Int64 { remora_atomic_load(word) }

    /// A connection over a limit: HTTP listeners answer 503 with `Connection: close` first; TCP
    /// listeners close. Never left in the backlog, where the kernel would hold it for the client as
    /// if accepted. (A plaintext HTTP listener first looks at the client's first bytes:
    /// `OverflowRefusal`.)
    static func refuse(_ c: TCPConnection, http: Bool) {
        guard http else { c.close(); return }
        c.write(UnsafeRawBufferPointer(start: overflowResponse.utf8Start, count: overflowResponse.utf8CodeUnitCount))
        c.finish(linger: 200)
    }

    static let overflowResponse: StaticString =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 28\r\nconnection: close\r\n\r\ntoo many connections, retry\n"
}

/// A plaintext HTTP connection over a connection limit: HTTP/1.1 clients get `503` and a close,
/// h2c clients (their first bytes are the HTTP/2 connection preface) an empty SETTINGS and a
/// GOAWAY (last stream 0, REFUSED_STREAM, "too many connections": nothing was processed, the
/// client may retry), then a close. The first bytes are waited for at most `wait` ms (then: 503),
/// with at most `maxWaiting` such connections per worker (beyond: 503 at once, as before), so a
/// flood over the limit holds no more than that many sockets for that long. Clients always speak
/// first in HTTP, and they send the preface and their first request at once: one read decides.
final class OverflowRefusal: TCPConnectionDelegate {
    static let wait: UInt64 = 1_000
    static let maxWaiting = 256
    unowned(unsafe) let worker: Worker
    /// Bytes of the preface matched so far.
    var matched = 0
    var decided = false

    init(worker: Worker) { self.worker = worker }

    static func refuse(_ c: TCPConnection, worker: Worker, http: Bool, plaintext: Bool) {
        guard http, plaintext, worker.refusalsWaiting < maxWaiting else {
            ConnectionCounter.refuse(c, http: http)
            return
        }
        let r = OverflowRefusal(worker: worker)
        worker.refusalsWaiting += 1
        c.delegate = r
        c.owner = r
        c.setDeadline(after: wait)
        c.startReading()
    }

    /// RFC 9113 §3.4.
    static let preface: StaticString = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    /// Whether `bytes`, following the `matched` bytes before them, go on being the preface: true
    /// (all 24 matched), false (they differ), nil (a prefix so far).
    static func isPreface(_ bytes: UnsafeRawBufferPointer, matched: inout Int) -> Bool? {
        let p = UnsafeRawBufferPointer(start: preface.utf8Start, count: preface.utf8CodeUnitCount)
        for b in bytes {
            if matched == p.count { return true }
            if b != p[matched] { return false }
            matched += 1
        }
        return matched == p.count ? true : nil
    }

    /// SETTINGS (empty), then GOAWAY: last stream 0, REFUSED_STREAM (7), debug data.
    static let goAway: [UInt8] = {
        let debug = Array("too many connections".utf8)
        var f: [UInt8] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0]
        let n = 8 + debug.count
        f += [UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), 0x7, 0, 0, 0, 0, 0]
        f += [0, 0, 0, 0, 0, 0, 0, 0x7]
        return f + debug
    }()

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        guard !decided else { return }   // lingering: the rest is discarded by the connection
        guard let h2 = OverflowRefusal.isPreface(data, matched: &matched) else { return }
        decided = true
        c.clearDeadline()
        if h2 {
            OverflowRefusal.goAway.withUnsafeBytes { _ = c.write($0) }
            c.finish(linger: 200)
        } else {
            ConnectionCounter.refuse(c, http: true)
        }
    }

    func connectionEOF(_ c: TCPConnection) { c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }

    func connectionTimeout(_ c: TCPConnection) {
        if decided { c.close(); return }   // finish's linger ran out
        decided = true
        ConnectionCounter.refuse(c, http: true)
    }

    func connectionClosed(_ c: TCPConnection) { worker.refusalsWaiting -= 1 }
}
