import CRemoraSupport
import Glibc
import RemoraCore
import RemoraIO

/// Where access log lines go: one file (or stdout), with one ring per worker. Workers append whole
/// records to their own ring and never wait: a record that does not fit is dropped and counted
/// (`listener.<name>.access_log_dropped`). The writer thread formats the records into lines and
/// writes them.
final class AccessLogSink: @unchecked Sendable {
    /// "stdout" or an absolute path.
    let path: String
    /// One per worker, each `AccessLogWriter.ringCapacity` bytes; never freed.
    let rings: [UnsafeMutablePointer<remora_log_ring>]
    /// Set by SIGUSR1 (main thread), taken by the writer: close and open the path again.
    let reopenFlag: UnsafeMutablePointer<UInt64>
    /// The formats of the listeners writing here (a record names its format by index). Appended by
    /// the main thread under the writer's lock, never removed.
    var formats: [AccessLogFormat] = []
    /// Writer thread only: the open file, -1 = not open (then the rings fill and records are dropped).
    var fd: Int32 = -1
    /// Writer thread only: lines formatted and not yet taken by the file (a pipe that is not read).
    var out = ByteBuffer(capacity: 128 * 1024)
    var formatter = AccessLogFormatter()
    var scratch = ByteBuffer(capacity: AccessLogWriter.ringCapacity)

    init(path: String, workers: Int) {
        self.path = path
        rings = (0..<workers).map { _ in
            let r = UnsafeMutablePointer<remora_log_ring>.allocate(capacity: 1)
            r.initialize(to: remora_log_ring())
            r.pointee.capacity = UInt64(AccessLogWriter.ringCapacity)
            r.pointee.bytes = .allocate(capacity: AccessLogWriter.ringCapacity + 8)   // + what word copies read past
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

    /// Writer thread: formats what the rings hold and writes it. `formats`: this sink's formats
    /// as of this round.
    func drain(formats: [AccessLogFormat]) {
        while formatter.formats.count < formats.count {
            formatter.formats.append(AccessLogFormatter.compile(formats[formatter.formats.count]))
        }
        if fd < 0 || remora_flag_exchange(reopenFlag, 0) == 1 { open() }
        guard fd >= 0, flush() else { return }
        for r in rings {
            take(r)
            if out.count >= Int(AccessLogWriter.flushAt) && !flush() { return }
        }
        _ = flush()
    }

    /// Formats every record published in ring `r` into `out` and gives the space back.
    func take(_ r: UnsafeMutablePointer<remora_log_ring>) {
        takeRingRecords(r, &scratch, as: AccessLogRecord.self) { rec, strings in
            formatter.format(rec, strings: strings, into: &out)
        }
    }

    /// Writes `out`; false when the file did not take it all (the rest waits for the next round).
    func flush() -> Bool {
        var done = 0
        defer { if done > 0 { out.consume(done) } }
        while done < out.count {
            let w = write(fd, out.base! + done, out.count - done)
            if w > 0 { done += w; continue }
            if w < 0 && errno == EINTR { continue }
            if w < 0 && errno == EAGAIN { return false }
            done = out.count   // another error (a full disk, a closed pipe): these lines are lost
        }
        return true
    }
}

/// The access logs' writer thread, one per process, started with the first access log. It wakes
/// when a worker's ring holds `flushAt` bytes, and at least once a second, and writes every ring
/// to its file; on SIGUSR1 it reopens the files (after logrotate renamed them). It never holds
/// anything a worker waits for.
final class AccessLogWriter: @unchecked Sendable {
    /// Bytes a worker's ring can hold for one file: what it may hand over while the writer is away
    /// (~1,000 records of ~250 bytes).
    static let ringCapacity = 256 * 1024
    /// A worker wakes the writer when its ring holds this much (else the writer comes within 1 s);
    /// the writer writes its lines in pieces of this much.
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

    /// Main thread: `format`'s index in `sink` (what the listener's records name).
    func register(_ format: AccessLogFormat, in sink: AccessLogSink) -> UInt16 {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if let i = sink.formats.firstIndex(of: format) { return UInt16(i) }
        sink.formats.append(format)
        return UInt16(sink.formats.count - 1)
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
        for s in sinks { remora_flag_store(s.reopenFlag, 1) }
        pthread_mutex_unlock(lock)
        wake()
    }

    /// At exit: one last round, waited for at most `timeoutMs`.
    func finish(timeoutMs: Int) {
        pthread_mutex_lock(lock)
        let running = started
        pthread_mutex_unlock(lock)
        guard running else { return }
        remora_flag_store(stopping, 1)
        wake()
        var ts = AccessLogWriter.deadline(afterMs: timeoutMs)
        while sem_timedwait(finished, &ts) != 0 && errno == EINTR {}
    }

    private func run() {
        // Below the workers (nice +10, this thread only): on a busy core a worker runs first and
        // the writer takes the slack; if there is none the rings fill and records are dropped
        // and counted, as when the disk is slow.
        remora_nice_this_thread(10)
        while true {
            var ts = AccessLogWriter.deadline(afterMs: 1000)
            _ = sem_timedwait(wakeup, &ts)
            while sem_trywait(wakeup) == 0 {}   // wake-ups that came meanwhile are this round
            pthread_mutex_lock(lock)
            let list = sinks.map { ($0, $0.formats) }
            pthread_mutex_unlock(lock)
            let stop = remora_flag_load(stopping) == 1
            for (s, formats) in list { s.drain(formats: formats) }
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

/// A record a worker publishes in a `remora_log_ring`: a fixed head whose first field is the whole
/// record's length (head and strings), then its strings.
protocol RingRecord {
    static var size: Int { get }
    var length: UInt32 { get }
}

extension AccessLogRecord: RingRecord {}
extension SpanRecord: RingRecord {}

/// Takes every record published in ring `r` and calls `body` with each record's head and its
/// strings, then gives the ring's space back; a torn length ends the batch. Records are read in
/// place, or from a copy in `scratch` when the published bytes wrap around the ring's end. Either
/// way 8 bytes after the last are readable (the access log formatter's word copies).
func takeRingRecords<R: RingRecord>(_ r: UnsafeMutablePointer<remora_log_ring>, _ scratch: inout ByteBuffer, as _: R.Type,
                                    _ body: (R, UnsafeRawBufferPointer) -> Void) {
    var a: UnsafePointer<UInt8>?, b: UnsafePointer<UInt8>?
    var na: UInt64 = 0, nb: UInt64 = 0
    let n = Int(remora_log_ring_peek(r, &a, &na, &b, &nb))
    remora_flag_store(&r.pointee.signalled, 0)
    if n == 0 { return }
    defer { remora_log_ring_consume(r, UInt64(n)) }
    let all: UnsafeRawBufferPointer
    if nb == 0 {
        all = UnsafeRawBufferPointer(start: a, count: Int(na))
    } else {
        scratch.clear()
        scratch.append(UnsafeRawBufferPointer(start: a, count: Int(na)))
        scratch.append(UnsafeRawBufferPointer(start: b, count: Int(nb)))
        scratch.reserve(scratch.count + 8)
        all = scratch.bytes
    }
    var off = 0
    while off + R.size <= all.count {
        let rec = all.loadUnaligned(fromByteOffset: off, as: R.self)
        let len = Int(rec.length)
        guard len >= R.size && off + len <= all.count else { break }
        body(rec, UnsafeRawBufferPointer(rebasing: all[(off + R.size)..<(off + len)]))
        off += len
    }
}
