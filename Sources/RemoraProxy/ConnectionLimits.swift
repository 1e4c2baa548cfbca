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

    /// A connection over a limit: HTTP listeners answer 503 with `Connection: close` first (an h2c
    /// client reading it as HTTP/2 sees a protocol error, as if closed: which protocol the client
    /// speaks is only known once it has sent something, and waiting for that is what the limit
    /// avoids); TCP listeners close. Never left in the backlog, where the kernel would hold it for
    /// the client as if accepted.
    static func refuse(_ c: TCPConnection, http: Bool) {
        guard http else { c.close(); return }
        c.write(UnsafeRawBufferPointer(start: overflowResponse.utf8Start, count: overflowResponse.utf8CodeUnitCount))
        c.finish(linger: 200)
    }

    static let overflowResponse: StaticString =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 28\r\nconnection: close\r\n\r\ntoo many connections, retry\n"
}
