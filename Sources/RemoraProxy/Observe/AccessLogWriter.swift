import CRemoraSupport
import Glibc
import RemoraCore
import RemoraIO

/// Where access log lines go: one file (or stdout), with one ring per worker. Workers append whole
/// lines to their own ring and never wait: a line that does not fit is dropped and counted
/// (`listener.<name>.access_log_dropped`). The writer thread empties the rings into the file.
final class AccessLogSink: @unchecked Sendable {
    /// "stdout" or an absolute path.
    let path: String
    /// One per worker, each `AccessLogWriter.ringCapacity` bytes; never freed.
    let rings: [UnsafeMutablePointer<remora_log_ring>]
    /// Set by SIGUSR1 (main thread), taken by the writer: close and open the path again.
    let reopenFlag: UnsafeMutablePointer<UInt64>
    /// Writer thread only: the open file, -1 = not open (then the rings fill and lines are dropped).
    var fd: Int32 = -1
    /// Writer thread only: a ring whose published bytes were written in part (a pipe that took only
    /// some): it is finished first, so that lines of two workers never interleave.
    var partial = -1

    init(path: String, workers: Int) {
        self.path = path
        rings = (0..<workers).map { _ in
            let r = UnsafeMutablePointer<remora_log_ring>.allocate(capacity: 1)
            r.initialize(to: remora_log_ring())
            r.pointee.capacity = UInt64(AccessLogWriter.ringCapacity)
            r.pointee.bytes = .allocate(capacity: AccessLogWriter.ringCapacity)
            return r
        }
        reopenFlag = .allocate(capacity: 1)
        reopenFlag.initialize(to: 0)
    }

    /// Writer thread: (re)opens the file, non-blocking (a FIFO without a reader fails and is
    /// tried again on the next round; one that stops reading makes writes return EAGAIN).
    func open() {
        if path == "stdout" { fd = 1; return }
        let nfd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0o644)
        if nfd < 0 { return }
        if fd >= 0 { close(fd) }
        fd = nfd
    }

    /// Writer thread: writes what the rings hold. Returns false when the file took less than all.
    func drain() {
        if fd < 0 || remora_atomic_exchange(reopenFlag, 0) == 1 { open() }
        guard fd >= 0 else { return }
        if partial >= 0 {
            if !drain(rings[partial]) { return }
            partial = -1
        }
        for (i, r) in rings.enumerated() where !drain(r) { partial = i; return }
    }

    /// Writes one ring's published bytes; false when the file did not take them all (what it took
    /// is consumed, the rest waits).
    func drain(_ r: UnsafeMutablePointer<remora_log_ring>) -> Bool {
        var a: UnsafePointer<UInt8>?, b: UnsafePointer<UInt8>?
        var na: UInt64 = 0, nb: UInt64 = 0
        let n = remora_log_ring_peek(r, &a, &na, &b, &nb)
        remora_atomic_store(&r.pointee.signalled, 0)
        if n == 0 { return true }
        for (p, len) in [(a, na), (b, nb)] where len > 0 {
            var off = 0
            while off < Int(len) {
                let w = write(fd, p! + off, Int(len) - off)
                if w > 0 { off += w; remora_log_ring_consume(r, UInt64(w)); continue }
                if w < 0 && errno == EINTR { continue }
                if w < 0 && errno == EAGAIN { return false }
                // Another error (a full disk, a closed pipe): these bytes are lost, counted as dropped.
                remora_log_ring_consume(r, len - UInt64(off))
                break
            }
        }
        return true
    }
}

/// The access logs' writer thread, one per process, started with the first access log. It wakes
/// when a worker's ring holds `flushAt` bytes, and at least once a second, and writes every ring
/// to its file; on SIGUSR1 it reopens the files (after logrotate renamed them). It never holds
/// anything a worker waits for.
final class AccessLogWriter: @unchecked Sendable {
    /// Bytes a worker's ring can hold for one file: what it may write while the writer is away.
    static let ringCapacity = 256 * 1024
    /// A worker wakes the writer when its ring holds this much (else the writer comes within 1 s).
    static let flushAt: UInt64 = 64 * 1024

    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wakeup = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    private let finished = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    private let stopping = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    /// Guarded by `lock`; entries are never removed (a worker may still write an old sink's ring).
    private var sinks: [AccessLogSink] = []
    private var started = false

    init() {
        pthread_mutex_init(lock, nil)
        sem_init(wakeup, 0, 0)
        sem_init(finished, 0, 0)
        stopping.initialize(to: 0)
    }

    /// The sink of `path` (main thread), created on first use, with one ring per worker.
    func sink(path: String, workers: Int) -> AccessLogSink {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if let s = sinks.first(where: { $0.path == path }) { return s }
        let s = AccessLogSink(path: path, workers: workers)
        sinks.append(s)
        if !started {
            started = true
            // Detached: a writer stuck in a write to a slow file must not hold up the exit.
            let t = spawnThread { [self] in self.run() }
            pthread_detach(t)
        }
        return s
    }

    /// Any thread: come now (a worker whose ring is filling).
    @inline(__always) func wake() { sem_post(wakeup) }

    /// SIGUSR1: every file is reopened on the writer's next round, which starts now.
    func reopenAll() {
        pthread_mutex_lock(lock)
        for s in sinks { remora_atomic_store(s.reopenFlag, 1) }
        pthread_mutex_unlock(lock)
        wake()
    }

    /// At exit: one last round, waited for at most `timeoutMs`.
    func finish(timeoutMs: Int) {
        pthread_mutex_lock(lock)
        let running = started
        pthread_mutex_unlock(lock)
        guard running else { return }
        remora_atomic_store(stopping, 1)
        wake()
        var ts = AccessLogWriter.deadline(afterMs: timeoutMs)
        while sem_timedwait(finished, &ts) != 0 && errno == EINTR {}
    }

    private func run() {
        while true {
            var ts = AccessLogWriter.deadline(afterMs: 1000)
            _ = sem_timedwait(wakeup, &ts)
            while sem_trywait(wakeup) == 0 {}   // wake-ups that came meanwhile are this round
            pthread_mutex_lock(lock)
            let list = sinks
            pthread_mutex_unlock(lock)
            let stop = remora_atomic_load(stopping) == 1
            for s in list { s.drain() }
            if stop { sem_post(finished); return }
        }
    }

    static func deadline(afterMs ms: Int) -> timespec {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let ns = Int(ts.tv_nsec) + (ms % 1000) * 1_000_000
        ts.tv_sec += ms / 1000 + ns / 1_000_000_000
        ts.tv_nsec = ns % 1_000_000_000
        return ts
    }
}
