import Glibc
import Histogram
import RemoraCore
import RemoraIO

/// Runs a plan: one `BenchWorker` per thread, each on its own loop; the main thread waits on its
/// own loop for their results, prints the progress line, and turns SIGINT/SIGTERM into "stop now
/// and report" (a second signal exits at once). Results are merged when every thread is done.
public final class BenchRunner {
    let plan: BenchPlan
    let proto: any BenchProtocol
    let loop = EventLoop()
    var mainMailbox: Mailbox<BenchMainMessage>!
    var workerMailboxes: [Mailbox<BenchWorkerCommand>?]
    var results: [BenchResult?]
    var latestProgress: [BenchProgress?]
    var signals: [SignalWatcher] = []
    var interrupted = false
    var lastProgressResponses: UInt64 = 0
    var lastProgressMessages: (sent: UInt64, received: UInt64) = (0, 0)
    /// Last second printed; a line is printed once every running thread has reported that second.
    var printedTick = 0
    /// Writes one progress line (stderr). Set before `run`.
    public var progressSink: ((String) -> Void)?
    /// After `run`: every loop (the main one and each thread's) closed with no handle left.
    public private(set) var closedCleanly = false

    public init(plan: BenchPlan, proto: any BenchProtocol) {
        self.plan = plan
        self.proto = proto
        workerMailboxes = Array(repeating: nil, count: plan.threads)
        results = Array(repeating: nil, count: plan.threads)
        latestProgress = Array(repeating: nil, count: plan.threads)
    }

    /// Runs to the end (or Ctrl-C) and returns the merged results.
    public func run() -> BenchResult {
        remoraIgnoreSIGPIPE()
        mainMailbox = Mailbox(loop: loop) { [unowned self] in self.handle($0) }
        for sig in [SIGINT, SIGTERM] {
            signals.append(SignalWatcher(loop: loop, signal: sig) { [unowned self] _ in self.interrupt() })
        }
        let plan = self.plan
        let proto = self.proto
        let main = mainMailbox!
        // Each thread writes only its own slot, read after the join.
        let clean = ThreadFlags(count: plan.threads)
        defer { clean.release() }
        var threads: [pthread_t] = []
        for k in 0..<plan.threads {
            threads.append(spawnThread {
                clean.set(k, BenchWorker(thread: k, plan: plan, proto: proto, main: main).run())
            })
        }
        loop.run()
        threads.forEach(joinThread)
        closedCleanly = loop.close() && clean.all
        var merged = BenchResult()
        for r in results { if let r { merged.merge(r) } }
        merged.measureStart = plan.measureStart
        merged.interrupted = merged.interrupted || interrupted
        return merged
    }

    func handle(_ m: BenchMainMessage) {
        switch m {
        case let .started(k, mb):
            workerMailboxes[k] = mb
            if interrupted { mb.post(.abort) }
        case let .progress(k, p):
            latestProgress[k] = p
            let running = (0..<plan.threads).filter { results[$0] == nil }
            let tick = running.map { latestProgress[$0]?.tick ?? 0 }.min() ?? 0
            if tick > printedTick {
                printedTick = tick
                printProgress()
            }
        case let .finished(k, r):
            results[k] = r
            workerMailboxes[k] = nil
            if results.allSatisfy({ $0 != nil }) { shutdown() }
        }
    }

    func interrupt() {
        if interrupted {
            let msg = "\nremora bench: interrupted twice, exiting without results\n"
            _ = msg.withCString { write(2, $0, strlen($0)) }
            _exit(130)
        }
        interrupted = true
        for mb in workerMailboxes { mb?.post(.abort) }
    }

    func shutdown() {
        signals.forEach { $0.close() }
        mainMailbox.close()
    }

    func printProgress() {
        guard let sink = progressSink else { return }
        var responses: UInt64 = 0
        var errors: UInt64 = 0
        var sent: UInt64 = 0
        var received: UInt64 = 0
        var warming = false
        var hist = LatencyHistogram.make()
        for p in latestProgress {
            guard let p else { continue }
            responses += p.responses
            errors += p.errors
            sent += p.messagesSent
            received += p.messagesReceived
            warming = warming || p.warmingUp
            hist.add(p.latency)
        }
        func delta(_ now: UInt64, _ before: UInt64) -> UInt64 { now >= before ? now - before : 0 }
        let rate = delta(responses, lastProgressResponses)
        let messages = (sent: delta(sent, lastProgressMessages.sent), received: delta(received, lastProgressMessages.received))
        lastProgressResponses = responses
        lastProgressMessages = (sent, received)
        sink(BenchReport.progressLine(second: printedTick, warmingUp: warming, ratePerSecond: rate,
                                      latency: hist, errors: errors, messagesPerSecond: proto.isGRPC ? messages : nil))
    }
}

/// One Bool per thread, written by that thread only and read after it was joined.
final class ThreadFlags: @unchecked Sendable {
    let flags: UnsafeMutablePointer<Bool>
    let count: Int
    init(count: Int) {
        self.count = count
        flags = .allocate(capacity: count)
        flags.initialize(repeating: false, count: count)
    }
    func set(_ k: Int, _ v: Bool) { flags[k] = v }
    var all: Bool { (0..<count).allSatisfy { flags[$0] } }
    func release() { flags.deallocate() }
}
