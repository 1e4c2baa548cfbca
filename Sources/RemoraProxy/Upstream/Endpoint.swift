import RemoraIO
import RemoraPolicy

/// One endpoint of a cluster, in one worker: its address, its connections and what the outcome
/// hook has told it (Envoy's `Host`). Everything about an endpoint lives here: health, outlier
/// ejection, circuit-breaker counts and latency (EWMA) state are fields of this object when they
/// come, fed by `attemptEnded`. Owned by its `Cluster`; lives as long as the cluster does.
final class Endpoint: BalancedEndpoint {
    /// How connections, streams and exchanges name their endpoint on the hot path: an unretained
    /// reference (no retain/release per request), sound because the cluster owns its endpoints and
    /// outlives every connection and attempt of theirs (a retired cluster stays in `Worker.retired`
    /// until its last connection has closed).
    typealias Ref = Unmanaged<Endpoint>

    /// Position in the cluster's `endpoints` (the snapshot's endpoint order).
    let index: Int
    let address: SocketAddress
    /// Relative share of requests for the load balancer, 1 ... 10_000 (`{ address, weight }`).
    let weight: Int
    /// The address's hash: the endpoint's place on a hash ring or maglev table, the same in every
    /// worker and snapshot.
    let hashKey: UInt64

    /// Idle HTTP/1.1 keep-alive connections, most recently used last (LIFO: the warmest is the least
    /// likely to have been closed by the backend, and the coldest, unused while demand stays below
    /// its peak, reach the cluster's idle timeout and close: the pool follows demand).
    var idle: [H1Upstream] = []
    /// HTTP/2 connections (new streams go to the first with room).
    var h2: [H2UpstreamConnection] = []

    /// Attempts under way (started by the cluster's pool, not yet reported to `attemptEnded`).
    var activeRequests = 0
    /// Failures in a row since the last success (what consecutive-5xx outlier detection reads).
    var consecutiveFailures = 0
    /// How the last reported attempt ended (nil before the first).
    var lastOutcome: AttemptOutcome.Kind?
    /// Peak-EWMA latency, fed by the outcome hook when the cluster balances by it (`peak_ewma`).
    var latency: PeakEWMA
    /// Out of load balancing (outlier detection ejected it); set from the process-wide decision.
    var ejected = false

    init(index: Int, address: SocketAddress, weight: Int = 1, now: UInt64 = 0) {
        self.index = index
        self.address = address
        self.weight = weight
        hashKey = KeyHash.string(address.description)
        latency = PeakEWMA(stamp: now)
    }

    /// The outcome hook's endpoint half: one call per attempt (`Cluster.attemptEnded`). A
    /// cancellation says nothing about the endpoint: it only ends the attempt.
    @inline(__always)
    func attemptEnded(_ outcome: AttemptOutcome) {
        activeRequests -= 1
        lastOutcome = outcome.kind
        if outcome.isFailure {
            consecutiveFailures += 1
        } else if outcome.kind == .response {
            consecutiveFailures = 0
        }
    }

    /// Feeds the latency estimate (`peak_ewma`): a response's or a timeout's latency as it was; a
    /// connect failure, reset or invalid response (often fast, never good) as at least twice the
    /// current estimate, so a failing endpoint looks slow rather than quick. Cancellations and
    /// refused streams say nothing.
    @inline(__always)
    func observeLatency(_ o: AttemptOutcome, now: UInt64) {
        switch o.kind {
        case .response, .timeout: latency.observe(o.latency, now: now)
        case .connectFailure, .reset, .protocolError:
            latency.observe(max(o.latency, UInt64(min(latency.current(now: now) * 2, 3_600_000))), now: now)
        case .cancelled, .refused: break
        }
    }
}
