import CRemoraSupport

/// A worker's log lines on their way to the main thread, which writes them to stderr. A write(2)
/// to stderr blocks when stderr is a full pipe (a stalled log collector), and a worker's loop must
/// never block, so a worker hands each line to the main loop through its mailbox
/// (`MainMessage.log`) and the main thread writes it. Bounded: lines handed over and not yet
/// written hold at most `capacity` bytes; a line that does not fit is dropped and counted, and the
/// main thread reports the count with the next line it writes (or when the worker stops).
///
/// One producer (the worker), one consumer (the main thread). Each counter has one writer
/// (relaxed atomic stores, as stats do); the lines themselves travel in the mailbox, under its lock.
final class WorkerLog: @unchecked Sendable {
    /// Bytes of lines handed over and not yet written, at most. Default 64 KiB.
    let capacity: UInt64
    /// [0] bytes handed over (worker writes), [1] bytes written (main writes), [2] lines dropped
    /// (worker writes). Freed with the object, which both threads keep until the worker is joined.
    let words: UnsafeMutablePointer<UInt64>
    /// Lines dropped that the main thread has reported (main thread only).
    var reported: UInt64 = 0

    init(capacity: UInt64 = 64 * 1024) {
        self.capacity = capacity
        words = .allocate(capacity: 3)
        words.initialize(repeating: 0, count: 3)
    }

    deinit { words.deallocate() }

    /// Bytes handed over and not yet written.
    var inFlight: UInt64 { remora_counter_load(words) &- remora_counter_load(words + 1) }

    /// Lines dropped so far.
    var dropped: UInt64 { remora_counter_load(words + 2) }

    /// Worker: true when `line` fits, and it then counts as in flight until `written`; false when
    /// it does not (the line is counted as dropped).
    func admit(_ line: String) -> Bool {
        let n = UInt64(line.utf8.count)
        if inFlight + n > capacity {
            remora_counter_add(words + 2, 1)
            return false
        }
        remora_counter_add(words, n)
        return true
    }

    /// Main thread: `line` (one that was admitted) has been written, or will never be.
    func written(_ line: String) {
        remora_counter_add(words + 1, UInt64(line.utf8.count))
    }

    /// Main thread: lines dropped since the last call.
    func takeDropped() -> UInt64 {
        let d = dropped
        defer { reported = d }
        return d &- reported
    }
}
