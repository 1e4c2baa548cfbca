import Histogram
import RemoraIO

/// Everything the threads of one run share, decided before they start. Immutable.
public struct BenchPlan: Sendable {
    /// Where to connect; connection `i` of a thread uses `addresses[i % count]`.
    public var addresses: [SocketAddress]
    public var threads: Int
    /// Connections each thread keeps open (the load in closed loop, the pool in open loop).
    public var connections: [Int]
    /// Open loop: connections each thread may grow to when all are busy.
    public var maxConnections: [Int]
    /// Open loop: requests per second in total. nil = closed loop.
    public var rate: Double?
    /// Measured requests each thread sends (`--requests`); nil = run for the duration.
    public var requests: [UInt64]?
    /// Run start (open loop: intended time of request 0), ns, monotonic clock.
    public var start: UInt64
    /// Start of the measured period (start + warm-up), ns.
    public var measureStart: UInt64
    /// End of the measured period, ns (duration mode); nil with `requests`.
    public var end: UInt64?
    /// Per-request timeout, ns.
    public var timeout: UInt64
    /// Post a progress snapshot to the main thread each second.
    public var progress: Bool

    /// Splits `options` across `threads`; `now` is the monotonic time at which the run begins.
    public init(options o: BenchOptions, addresses: [SocketAddress], threads: Int, now: UInt64) {
        self.addresses = addresses
        self.threads = threads
        connections = BenchPlan.split(o.connections, threads)
        maxConnections = BenchPlan.split(max(o.maxConnections ?? o.connections, o.connections), threads)
        rate = o.rate
        requests = o.requests.map { BenchPlan.split($0, threads) }
        // Open loop: a few ms for the threads to start and connect before request 0 is due.
        // Closed loop: requests start as connections come up, all after `now`.
        start = now + (o.rate != nil ? 5 * nsPerMilli : 0)
        measureStart = start + o.warmup
        end = o.requests == nil ? measureStart + o.duration : nil
        timeout = o.timeout
        progress = o.progress ?? false
    }

    /// `total` split into `parts` shares differing by at most one, larger shares first.
    public static func split<T: BinaryInteger>(_ total: T, _ parts: Int) -> [T] {
        let p = T(parts)
        return (0..<parts).map { i in total / p + (T(i) < total % p ? 1 : 0) }
    }
}

/// Worker → main thread.
public enum BenchMainMessage: Sendable {
    case started(thread: Int, mailbox: Mailbox<BenchWorkerCommand>)
    case progress(thread: Int, BenchProgress)
    case finished(thread: Int, BenchResult)
}

/// Main thread → worker.
public enum BenchWorkerCommand: Sendable {
    /// Ctrl-C: close every connection now and report what was measured.
    case abort
}

/// One thread's view so far, sent each second for the progress line.
public struct BenchProgress: Sendable {
    /// Seconds since the thread started (1, 2, …).
    public var tick: Int
    public var responses: UInt64
    public var errors: UInt64
    /// gRPC messages sent and received so far.
    public var messagesSent: UInt64
    public var messagesReceived: UInt64
    /// Measured latency so far (a copy; µs).
    public var latency: Histogram<UInt64>
    public var warmingUp: Bool
}
