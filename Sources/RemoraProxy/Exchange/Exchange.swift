import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy
import RemoraRouting

/// One request/response exchange, whatever the protocols on either side. Its concerns live in
/// `Exchange+….swift` files, in the order a request meets them:
/// - `Exchange+Router.swift`: the request head through the listener's filters, then the router (the
///   last request filter): match, local answers, split, mirroring;
/// - `Exchange+Upstream.swift`: the request head as the upstream gets it, dispatch to the cluster,
///   retries of failed attempts, and the outcome hook (one report per attempt);
/// - `Exchange+Body.swift`: request body bytes and flow control both ways;
/// - `Exchange+Response.swift`: the response-head decision point, then the response;
/// - `Exchange+Local.swift`: answers from the proxy (gRPC-shaped for gRPC requests);
/// - `Exchange+Deadlines.swift`: route timeout, stream idle, request timeout, gRPC deadline.
/// Pooled per worker: nothing here is allocated per request once the pool is warm. `begin` is the
/// one place per-request state is set; `finish` the one place it ends.
final class Exchange: DeadlineTimerDelegate {
    enum Deadline { case upstreamHead, stream }

    unowned(unsafe) let worker: Worker
    /// `worker` without a retain and release per use (`withWorker`: an `unowned(unsafe)` reference
    /// costs both at every use); the worker outlives its exchanges.
    let workerRef: Unmanaged<Worker>
    @inline(__always) func withWorker<R>(_ body: (Worker) -> R) -> R { workerRef._withUnsafeGuaranteedRef(body) }
    /// The worker records latency histograms (fixed for its life).
    let recordsHistograms: Bool
    /// The worker's buffers (a strong `let`: reached without a retain).
    let pool: BufferPool
    let timer: DeadlineTimer
    unowned(unsafe) var downstream: (any DownstreamSide)?
    /// The downstream when it is an HTTP/2 stream (its connection sets this before `start`; cleared
    /// with `downstream` in `finish`): reached on the hot path as its own type and without a retain
    /// (`withDownstream`), where a use of `downstream` costs a retain, a release and a witness call.
    var h2Downstream: Unmanaged<H2ServerStream>?

    /// `body` with the downstream (`none` when there is none), an HTTP/2 stream without a retain.
    @inline(__always)
    func withDownstream<R>(_ none: R, _ body: (any DownstreamSide) -> R) -> R {
        if let s = h2Downstream { return s._withUnsafeGuaranteedRef { body($0) } }
        guard let d = downstream else { return none }
        return body(d)
    }
    /// The listener's runtime of the snapshot this request started on (held while it runs).
    var listener: ListenerRuntime!
    /// The listener's stats (a shadow request counts in the worker's unlisted shadow block).
    var stats: StatBlock<ListenerStat>!
    /// The chosen cluster (the listener runtime this exchange holds keeps it): not retained, and
    /// reached on the hot path as a guaranteed reference (`withCluster`).
    var clusterRef: Unmanaged<Cluster>?
    var cluster: Cluster? {
        get { clusterRef?.takeUnretainedValue() }
        set { clusterRef = newValue.map { Unmanaged.passUnretained($0) }; clusterStats = newValue?.stats }
    }
    @inline(__always) func withCluster<R>(_ none: R, _ body: (Cluster) -> R) -> R {
        guard let c = clusterRef else { return none }
        return c._withUnsafeGuaranteedRef(body)
    }
    /// The cluster's counters (a plain value: counting costs no retain of the cluster).
    var clusterStats: StatBlock<ClusterStat>?
    /// The listener's stream idle timeout, ms (copied at start).
    var streamIdleTimeout: Millis = 0
    var upstream: (any UpstreamStream)? { didSet { h2Upstream = nil } }
    /// The upstream when it is an HTTP/2 stream (`dispatch` sets this after `upstream`; any change of
    /// `upstream` clears it): reached on the hot path as its own type and without a retain
    /// (`withUpstream`); `upstream` holds the reference.
    var h2Upstream: Unmanaged<H2UpstreamStream>?

    /// `body` with the upstream (`none` when there is none), an HTTP/2 stream without a retain.
    @inline(__always)
    func withUpstream<R>(_ none: R, _ body: (any UpstreamStream) -> R) -> R {
        if let s = h2Upstream { return s._withUnsafeGuaranteedRef { body($0) } }
        guard let u = upstream else { return none }
        return body(u)
    }

    /// There is an upstream (without a retain to find out).
    @inline(__always) var hasUpstream: Bool { h2Upstream != nil || upstream != nil }
    var deadlineKind = Deadline.stream

    var active = false
    var isHEAD = false
    var isGRPC = false
    var requestHasBody = false
    var requestDone = false
    var responseStarted = false
    var responseDone = false
    var clusterActive = false
    /// Time allowed for the upstream's response head, ms; 0 = none.
    var routeTimeout: Millis = 0
    /// Absolute loop time of the route timeout, fixed when first armed: all tries fit in it; 0 = not yet.
    var headDeadline: UInt64 = 0
    /// The route's retry policy and the try this request is on; nil = no policy (only the proxy's
    /// own safe retries). `Exchange+Retry.swift`.
    var retry: RetryState?
    /// A policy retry holds one unit of the cluster's retry budget until it ends.
    var holdsRetryBudget = false
    /// Absolute loop time by which the current try must have its response head (`per_try_timeout`); 0 = none.
    var tryDeadline: UInt64 = 0
    /// Absolute loop time at which the next try starts (a retry in its backoff); 0 = none waiting.
    var retryAt: UInt64 = 0
    /// The endpoint of the last try that ended (a retry prefers another).
    var lastTryEndpoint: Endpoint.Ref?
    /// Absolute loop time by which a gRPC call must be over (from grpc-timeout); 0 = none.
    var grpcDeadline: UInt64 = 0
    /// Absolute loop time by which the request body must be complete (the request timeout); 0 = none.
    var requestDeadline: UInt64 = 0
    /// Largest request body accepted, bytes; 0 = no limit (gRPC requests have none).
    var maxRequestBody: UInt64 = 0
    /// Request body bytes received so far.
    var requestBodyBytes: UInt64 = 0
    /// Framing of the body toward an HTTP/1.1 upstream.
    var reqFraming = BodyFraming.none
    /// The request head as sent to an HTTP/1.1 upstream (kept for a retry).
    var upHead = ByteBuffer()
    /// The request head for an HTTP/2 upstream: :method, :authority, :path, then regular fields.
    var reqHead = HeaderBlock()
    /// Request body bytes sent so far, while they fit (for a retry).
    var replay = ByteBuffer()
    var replayable = true
    var reuseRetries = 0
    var connectRetries = 0
    var refusedRetries = 0
    /// The attempt under way: its endpoint (nil = none open; owned by the cluster), its start (loop
    /// ms) and its response head's status (0 = none yet). The outcome hook reports it once (`endAttempt`).
    var attemptEndpoint: Endpoint.Ref?
    var attemptStart: UInt64 = 0
    var attemptStatus = 0
    /// Loop time the attempt's response head arrived (0 = not yet): the outcome's latency ends there.
    var attemptHeadAt: UInt64 = 0
    /// The request's key hash for a consistent-hash balancer (`hash_on`), set with the cluster.
    var lbHash: UInt64 = 0
    /// The attempt's grpc-status (trailers-only head or trailers), -1 = none.
    var attemptGRPCStatus = -1
    /// Header changes the matched route makes to the response (empty when none).
    var responseMutations = HeaderMutations()
    /// The response head being delivered has lowercase names and no hop-by-hop field (from HTTP/2,
    /// whose codec refuses both, or from the proxy, with no route changes): an HTTP/2 client side
    /// can pass it on as it is.
    var responseNamesLowercase = false
    /// The chosen cluster speaks HTTP/2 (copied at start; `protocol: auto`: set per attempt).
    var upstreamIsHTTP2 = false
    /// The chosen cluster is `protocol: auto`: the head is stored for both protocols (`upHead` and
    /// `reqHead`), and each attempt speaks what its endpoint's server chose.
    var upstreamAuto = false
    /// Counters of the chosen backend of the route (the real split).
    var backendStats: StatBlock<RouteBackendStat>?
    /// Request bytes passed on while the upstream was blocked: credit owed to the client.
    var owedCredit = 0
    var requestPaused = false
    var responsePaused = false
    /// Response bytes passed on while the client was blocked: credit owed to the upstream.
    var owedUpstreamCredit = 0
    /// A mirrored copy of this request (fire and forget), while it runs.
    var shadow: Exchange?
    /// For a shadow: the request it copies, while that one runs.
    unowned(unsafe) var primary: Exchange?
    /// The listener's filters see this exchange (not a shadow; none configured: false).
    var runsFilters = false
    /// The listener's access log has this exchange's request and writes its line at `finish`.
    var logsAccess = false
    /// The route the request matched (an index into the listener's route table), -1 = none; set
    /// before the filters run, so they can read per-route settings (`Filters/`).
    var routeIndex = -1
    /// A filter's `.delay`: ms the first try waits before the upstream is contacted (fault injection);
    /// 0 = none. While it waits, `retryAt` holds its end. `Exchange+Delay.swift`.
    var dispatchDelay: Millis = 0
    /// The delayed first try goes on a fresh HTTP/1.1 connection (a body that may outgrow the replay buffer).
    var delayedFresh = false
    /// Answered with this when the delay is over instead of going upstream (a fault's delay, then abort).
    var delayedReply: LocalReply?
    /// Hedging (`retry.hedge_after`, `Exchange+Hedge.swift`): the exchange running the second try,
    /// while it runs.
    var hedge: Exchange?
    /// For a hedge: the request it tries for (nil otherwise); while `relaying`, the request that took
    /// its upstream, which it passes the end of the upstream's read to.
    var hedgeOf: Exchange? {
        get { hedgeOfRef?.takeUnretainedValue() }
        set { hedgeOfRef = newValue.map { Unmanaged.passUnretained($0) } }
    }
    /// (Stored unmanaged: testing it costs no retain, on every head and read of every request.)
    var hedgeOfRef: Unmanaged<Exchange>?
    var relaying = false
    /// Absolute loop time at which the first try gets a hedge (folded into `tryDeadline`); 0 = none.
    var hedgeAt: UInt64 = 0
    /// The protocol the request asks to upgrade to (`Exchange+Upgrade.swift`); `.none` for almost all.
    var upgrade = UpgradeRequest.none
    /// With `upgrade`: the client is an HTTP/2 stream (RFC 8441 extended CONNECT), so after the
    /// upstream's 101 the exchange itself carries the tunnel (DATA <-> bytes). Read only when
    /// `upgrade` is set (which `begin` clears).
    var tunnelOverStream = false
    /// gRPC-Web (`Exchange+GRPCWeb.swift`): the request's mode (`.off` for all others), the text
    /// mode's base64 state both ways, the CORS origin echoed in the response (nil: none).
    var grpcWeb = GRPCWeb.Mode.off
    var grpcWebIn = GRPCWeb.Decoder()
    var grpcWebOut = GRPCWeb.Encoder()
    var grpcWebOrigin: String?
    /// What the metrics, the access log and tracing see of this request (`Exchange+Observe.swift`).
    var observe = Observation()
    static let replayLimit = 64 * 1024

    init(worker: Worker) {
        self.worker = worker
        workerRef = Unmanaged.passUnretained(worker)
        recordsHistograms = worker.recordsHistograms
        pool = worker.pool
        timer = DeadlineTimer(loop: worker.loop)
        timer.delegate = self
    }

    /// Per-request state for a new request (the one reset path, for requests and their shadows).
    @inline(__always)
    func begin(downstream d: any DownstreamSide, listener l: ListenerRuntime, stats s: StatBlock<ListenerStat>,
               isHEAD: Bool, endStream: Bool) {
        downstream = d
        listener = l
        stats = s
        streamIdleTimeout = l.config.idleTimeout
        active = true
        self.isHEAD = isHEAD
        requestDone = endStream
        requestHasBody = !endStream
        responseStarted = false
        responseDone = false
        replayable = true
        isGRPC = false
        owedCredit = 0
        owedUpstreamCredit = 0
        requestPaused = false
        responsePaused = false
        grpcDeadline = 0
        requestDeadline = 0
        maxRequestBody = 0
        requestBodyBytes = 0
        attemptEndpoint = nil
        headDeadline = 0
        if retry != nil { retry = nil }   // (a check: destroying an absent policy still costs a call)
        holdsRetryBudget = false
        tryDeadline = 0
        retryAt = 0
        lastTryEndpoint = nil
        runsFilters = false
        logsAccess = false
        dispatchDelay = 0
        upgrade = .none
        grpcWeb = .off
        // Not a client request until `observeStart` says so: a shadow or a hedge on a recycled exchange
        // must not record the metrics or export the span of the request the exchange served before.
        observe.startMicros = 0
        observe.hasTrace = false
    }

    var inDownstreamRead: Bool { downstream?.isReading ?? false }

    /// The downstream finished one read: what it wrote toward the upstream may leave now.
    func downstreamReadDone() { upstream?.flushRequest() }

    /// The upstream finished one read: what it wrote toward the client may leave now.
    func upstreamReadDone() {
        if hedgeOfRef != nil { hedgeReadDone(); return }
        withDownstream(()) { $0.flushResponse() }
    }

    // MARK: the end

    func detachUpstream() {
        if let u = upstream {
            upstream = nil
            endAttempt(.cancelled)
            u.detach(clean: false)
        }
    }

    /// Ends the exchange. `clean`: request and response both completed (an HTTP/1.1 upstream
    /// connection may go back to its pool). The downstream decides from `requestDone` and
    /// `responseDone` what becomes of its connection or stream.
    func finish(clean: Bool) {
        guard active else { return }
        active = false
        timer.clear()
        retryAt = 0
        if let h = hedge { hedge = nil; Exchange.endHedge(h) }
        if holdsRetryBudget { releaseRetryBudget() }
        if upstream != nil {
            var u: (any UpstreamStream)? = nil
            swap(&u, &upstream)   // moved out: no retain for the copy
            endAttempt(responseDone ? .response : .cancelled)
            u!.detach(clean: clean)
        }
        observeFinish()
        if observe.hasTrace, let u = listener.tracingRef { u._withUnsafeGuaranteedRef { if $0.spans != nil { $0.end(self) } } }
        if runsFilters { for f in listener.filters { f.log(self) } }
        if logsAccess, let a = listener.accessLogRef { a._withUnsafeGuaranteedRef { $0.log(self) } }
        stats.dec(.downstream_rq_active)
        if clusterActive { clusterStats?.dec(.upstream_rq_active); withCluster(()) { $0.releaseRequest() }; clusterActive = false }
        pool.give(&upHead)
        pool.give(&replay)
        reqHead.release(to: pool)
        upstreamAuto = false
        if let sh = shadow { shadow = nil; sh.primary = nil }   // a complete copy runs on by itself
        if let p = primary { primary = nil; p.shadow = nil }
        let d = downstream, h2 = h2Downstream
        downstream = nil
        h2Downstream = nil
        clusterRef = nil
        clusterStats = nil
        listener = nil
        backendStats = nil
        responseMutations = HeaderMutations()
        if let h2 { h2._withUnsafeGuaranteedRef { $0.exchangeDone(self) } } else { d?.exchangeDone(self) }
    }
}
