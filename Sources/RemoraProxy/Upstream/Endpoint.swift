import CRemoraSupport
import RemoraIO
import RemoraPolicy

/// The words of an endpoint's counters in one worker (`Endpoint.words`; 8 words, one cache line).
enum EndpointWord: Int {
    /// Attempts under way (what the balancers read as `activeRequests`).
    case active = 0
    /// Attempts ended (reported to the outcome hook), whatever the outcome.
    case ended
    /// Attempts answered with a 5xx status.
    case responses5xx
    /// Attempts failed without a response (connect failure, reset, timeout, invalid response).
    case localFailures
    /// The peak-EWMA estimate (Double bits) and its stamp (loop ms), copied at each observation
    /// (`peak_ewma` clusters only; stamp 0 = none yet).
    case latencyEstimate
    case latencyStamp
    static let count = 8
}

/// One endpoint of a cluster, in one worker: its address, its connections and what the outcome
/// hook has told it (Envoy's `Host`). Everything about an endpoint lives here: health, outlier
/// ejection, circuit-breaker counts and latency (EWMA) state are fields of this object when they
/// come, fed by `attemptEnded`. Owned by its `Cluster`; lives as long as the cluster does.
///
/// Its counters for the admin (`/clusters`: active, total, 5xx, local failures, latency) are
/// `words`, this worker's row in `ClusterShared` (one cache line per endpoint per worker), written
/// by this worker only with relaxed plain stores (no locked instruction on the request path) and
/// summed over workers by `ClusterShared.endpointStatus` on the main loop.
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
    /// `protocol: auto`: what the endpoint's last TLS handshake chose (true: h2, false: HTTP/1.1);
    /// nil until one finished. Requests to it are sent in that protocol; a new connection whose
    /// server answers otherwise switches (`Cluster.learned`).
    var speaksH2: Bool?

    /// Attempts under way (started by the cluster's pool, not yet reported to `attemptEnded`),
    /// kept in `words` so the admin can read it. A plain aligned word load and store here, not the C
    /// relaxed helpers: the balancers read it for endpoints taken from the `live` array, and a call
    /// into C between taking and using such a reference makes Swift retain and release it (+3
    /// retains per request with `peak_ewma`); an aligned 8-byte access is a single `mov` either way.
    var activeRequests: Int {
        @inline(__always) get { Int(truncatingIfNeeded: words.pointee) }
        @inline(__always) set { words.pointee = UInt64(truncatingIfNeeded: newValue) }
    }
    /// This endpoint's counters in this worker (`EndpointWord`): in `ClusterShared`, or its own
    /// (`ownsWords`) when it has no row there (tests; a worker beyond the rows).
    let words: UnsafeMutablePointer<UInt64>
    let ownsWords: Bool
    /// Failures in a row since the last success (what consecutive-5xx outlier detection reads).
    var consecutiveFailures = 0
    /// How the last reported attempt ended (nil before the first).
    var lastOutcome: AttemptOutcome.Kind?
    /// Peak-EWMA latency, fed by the outcome hook when the cluster balances by it (`peak_ewma`).
    var latency: PeakEWMA
    /// Out of load balancing (outlier detection ejected it); set from the process-wide decision.
    var ejected = false
    /// When it last came into balancing (loop ms): new in a changed endpoint set, or back from an
    /// ejection or failed health checks; 0 = since the cluster began. `slow_start` ramps from here.
    var rampSince: UInt64 = 0

    init(index: Int, address: SocketAddress, weight: Int = 1, now: UInt64 = 0, words: UnsafeMutablePointer<UInt64>? = nil) {
        self.index = index
        self.address = address
        self.weight = weight
        hashKey = KeyHash.string(address.description)
        latency = PeakEWMA(stamp: now)
        if let words {
            self.words = words
            ownsWords = false
        } else {
            self.words = .allocate(capacity: EndpointWord.count)
            self.words.initialize(repeating: 0, count: EndpointWord.count)
            ownsWords = true
        }
    }

    deinit { if ownsWords { words.deallocate() } }

    @inline(__always) func count(_ w: EndpointWord) { remora_counter_add(words + w.rawValue, 1) }

    /// The outcome hook's endpoint half: one call per attempt (`Cluster.attemptEnded`). A
    /// cancellation says nothing about the endpoint: it only ends the attempt.
    @inline(__always)
    func attemptEnded(_ outcome: AttemptOutcome) {
        activeRequests -= 1
        count(.ended)
        lastOutcome = outcome.kind
        if outcome.isFailure {
            consecutiveFailures += 1
            count(outcome.kind == .response ? .responses5xx : .localFailures)
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
        case .cancelled, .refused: return
        }
        remora_counter_store(words + EndpointWord.latencyEstimate.rawValue, latency.estimate.bitPattern)
        remora_counter_store(words + EndpointWord.latencyStamp.rawValue, max(latency.stamp, 1))
    }
}
