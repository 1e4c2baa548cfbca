import RemoraIO

/// The seam between the load shape (`BenchWorker`: closed/open loop, timing, recording) and the
/// wire (one driver per target kind). HTTP/1.1 is `HTTP1Protocol`; h2c and gRPC slot in as two
/// more conformers whose connections carry many streams (`streamsPerConnection` = concurrent
/// streams) and report `grpc-status` alongside the HTTP status.
///
/// A protocol object is immutable and shared by every thread: it holds what is prepared once per
/// run (the pre-serialized request, the header block), never per-connection state.
public protocol BenchProtocol: AnyObject, Sendable {
    /// Shown in the summary ("HTTP/1.1").
    var name: String { get }
    /// Most requests one connection carries at once: the pipelining depth for HTTP/1.1, the
    /// number of concurrent streams for HTTP/2.
    var streamsPerConnection: Int { get }
    /// A new, unconnected connection on `worker`'s loop. Called on that loop's thread.
    func makeConnection(worker: BenchWorker) -> any BenchConnection
    /// gRPC: requests are calls, and their messages are counted too.
    var isGRPC: Bool { get }
}

extension BenchProtocol {
    public var isGRPC: Bool { false }
}

/// One connection of a worker: its socket, its codec, its in-flight requests and their deadline.
///
/// The contract, in both directions:
/// - The worker calls `connect`, then `send` while `freeSlots > 0`, and `closeWhenIdle` /
///   `abort` at the end. None of these calls back into the worker synchronously.
/// - The connection reports from its I/O callbacks only: `BenchWorker.connectionUp` once
///   connected, `responded` per response (the worker may `send` again from inside it),
///   `failed` per request lost (timeout, reset, parse), then `connectionGone` exactly once,
///   after its socket is closed — for a failed connect too.
/// - Every request has a deadline (`--timeout`); a connection with requests in flight is never
///   left without one.
public protocol BenchConnection: AnyObject {
    /// Starts connecting. A failure is reported through `connectionGone(connectFailed: true)`.
    func connect(to address: SocketAddress)
    /// Requests that may be sent now (0 while connecting, when full, or when closing).
    var freeSlots: Int { get }
    /// Writes one request. `origin` is where its latency is measured from (its intended send time
    /// in open loop, `now` in closed loop). Returns the bytes written (for the byte counters).
    func send(origin: UInt64, now: UInt64) -> Int
    /// Closes once nothing is in flight (at once when idle or still connecting).
    func closeWhenIdle()
    /// Closes now; in-flight requests are dropped, not counted (Ctrl-C).
    func abort()
    /// Writes what `send` queued outside the connection's own callbacks (after
    /// `BenchWorker.deferFlush`). Connections that write in `send` need not implement it.
    func flush()
}

extension BenchConnection {
    public func flush() {}
}
