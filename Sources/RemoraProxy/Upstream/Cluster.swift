import RemoraCore
import RemoraIO
import RemoraPolicy
import RemoraRouting
import RemoraTLS

/// One cluster in one worker (Envoy's per-worker cluster): its endpoints (objects carrying their own
/// connections and outcome state), the load balancer that picks among them, the connect rate
/// limit, and the outcome hook every attempt ends in. The pools are in `Cluster+Pool.swift`, the
/// connections in `H1Upstream.swift` and `H2Upstream.swift`. Nothing here is shared with other workers.
final class Cluster {
    unowned(unsafe) let worker: Worker
    /// Position in the snapshot's cluster list.
    let index: Int
    let config: ClusterConfig
    /// At least one, in the snapshot's order.
    let endpoints: [Endpoint]
    /// What the balancer picks among: the endpoints not ejected, or every endpoint when fewer than
    /// `panic_threshold` % are available (panic mode, counted per pick as `lb_healthy_panic`).
    var live: [Endpoint]
    var panicking = false
    let stats: StatBlock<ClusterStat>
    /// Picks the endpoint of each attempt among `live` (`lb:`; RemoraPolicy's balancers), rebuilt
    /// when `live` changes.
    var balancer: Balancer
    /// `peak_ewma`: the outcome hook feeds each endpoint's latency estimate.
    let tracksLatency: Bool
    /// `ring_hash` / `maglev`: where a request's key is read (`hash_on`); nil = random keys.
    let requestKey: RequestKey?
    /// The balancer's random source (seeded from the worker's; kept here so a pick touches only the cluster).
    var random: FastRandom
    /// Idle HTTP/1.1 connections kept per endpoint at most (`max_idle_per_endpoint`; unset: no cap
    /// but demand, see `Cluster+Pool.swift`).
    let maxIdlePerEndpoint: Int
    /// Upstream connections open (or connecting) from this cluster.
    var openConnections = 0
    /// Connect rate limit (`max_connects_per_second`): credit in thousandths of a connect, refilled
    /// with loop time, at most one second's worth.
    var connectCredit: Int
    var creditAt: UInt64 = 0
    /// A retired cluster can be let go once nothing of it is open.
    var isUnused: Bool { openConnections == 0 }
    /// A newer snapshot dropped or changed this cluster: connections close instead of being pooled.
    var retired = false
    /// Recycled HTTP/2 stream objects (shared by the cluster's HTTP/2 connections).
    var freeStreams: [H2UpstreamStream] = []
    /// Retries in flight from this worker, within a share of the cluster's active requests
    /// (`retry_budget`); nil = unbounded.
    var retryBudget: RetryBudget?
    /// The next pick avoids this endpoint when the cluster has another (set for one retry).
    var avoidNext: Endpoint.Ref?
    /// What the cluster's workers share: circuit-breaker counts, outlier detection.
    let shared: ClusterShared
    /// `circuit_breaker:` (nil: no limits, nothing counted).
    let breaker: CircuitBreakerConfig?
    /// The last `connect` was refused by a circuit breaker (the request is answered 503 overloaded,
    /// not "connection failed"); read and cleared by the caller.
    var overflowed = false
    /// The ejections' version this worker applied (`ClusterShared.version`).
    var appliedVersion: Int64 = 0
    /// `outlier_detection:` thresholds by kind (5xx, gateway, local; 0 = off); nil = not detecting.
    let outlierThresholds: (Int, Int, Int)?

    /// TLS toward the endpoints (`tls:`), shared by every worker; nil: plaintext.
    let tls: TLSClientContext?
    /// `tls.close_expired`: connections are checked for an expired certificate before reuse.
    let closesExpired: Bool

    init(worker: Worker, index: Int, config: ClusterConfig, endpoints: [SocketAddress], weights: [Int] = [],
         shared: ClusterShared? = nil, stats: StatBlock<ClusterStat>, tls: TLSClientContext? = nil) {
        self.worker = worker; self.index = index; self.config = config; self.stats = stats; self.tls = tls
        closesExpired = tls?.config.closeExpired ?? false
        self.shared = shared ?? ClusterShared(config: config, endpoints: endpoints.count)
        breaker = config.circuitBreaker
        outlierThresholds = config.outlierDetection.map { ($0.consecutive5xx, $0.consecutiveGatewayErrors, $0.consecutiveLocalFailures) }
        let now = worker.loop.now
        self.endpoints = endpoints.enumerated().map {
            Endpoint(index: $0.offset, address: $0.element, weight: $0.offset < weights.count ? weights[$0.offset] : 1, now: now)
        }
        live = self.endpoints
        balancer = Balancer(config.lb, for: self.endpoints)
        tracksLatency = config.lb == .peakEWMA
        requestKey = config.lb.isConsistentHash ? config.hashOn.map(RequestKey.init) : nil
        maxIdlePerEndpoint = config.maxIdlePerEndpoint ?? Int.max
        connectCredit = config.maxConnectsPerSecond * 1000
        for e in self.endpoints { e.idle.reserveCapacity(min(maxIdlePerEndpoint, 64)) }
        retryBudget = config.retryBudget
        random = FastRandom(seed: worker.rng.next())
        applyEjections()
    }

    /// The endpoint for the next attempt (HTTP pools and the TCP proxy alike), unretained. `hash`:
    /// the request's key for `ring_hash` / `maglev` (`requestHash`); ignored by the others.
    @inline(__always)
    func pickEndpoint(hash: UInt64 = 0) -> Endpoint.Ref {
        let now = balancer.needsClock ? worker.loop.now : 0
        if panicking { stats.inc(.lb_healthy_panic) }
        var i = balancer.pick(live, hash: hash, now: now, random: &random)
        if let avoid = avoidNext {   // a retry: another endpoint than the last try's, when there is one
            avoidNext = nil
            if live.count > 1 && live[i] === avoid.takeUnretainedValue() {
                i = balancer.pick(live, hash: KeyHash.mix(hash), now: now, random: &random)
            }
        }
        return Unmanaged.passUnretained(live[i])
    }

    /// The key hash a request is balanced by: its `hash_on` key's, or a random one (no key, or a
    /// balancer that does not hash).
    @inline(__always)
    func requestHash(_ headers: UnsafeBufferPointer<HeaderRef>, clientIP: UnsafeRawBufferPointer) -> UInt64 {
        guard let k = requestKey else { return 0 }
        return k.hash(headers, clientIP: clientIP) ?? random.next()
    }

    /// Takes the process's ejections (outlier detection, decided on the main loop) when they changed
    /// since this worker last looked.
    func applyEjections() {
        let v = shared.version
        guard v != appliedVersion else { return }
        appliedVersion = v
        for e in endpoints { e.ejected = shared.isEjected(e.index) }
        endpointsChanged()
    }

    /// `live` and the balancer again, after endpoints were ejected or returned.
    func endpointsChanged() {
        let available = endpoints.filter { !$0.ejected }
        panicking = available.isEmpty || available.count * 100 < endpoints.count * config.panicThreshold
        live = panicking ? endpoints : available
        balancer = Balancer(config.lb, for: live)
    }

    /// The outcome hook: every upstream attempt ends here exactly once, with its endpoint and what
    /// happened (`Exchange.endAttempt`). The endpoint keeps its part (active requests, failures in a
    /// row, last outcome, latency); outlier detection, breakers and budgets hang here.
    /// Allocates nothing.
    @inline(__always)
    func attemptEnded(endpoint: Endpoint.Ref, _ outcome: AttemptOutcome) {
        endpoint._withUnsafeGuaranteedRef { e in
            e.attemptEnded(outcome)
            if tracksLatency { e.observeLatency(outcome, now: worker.loop.now) }
            if let t = outlierThresholds, let k = shared.countFailure(e.index, outcome, thresholds: t) {
                worker.main.post(.outlier(shared, endpoint: e.index, kind: k))
            }
        }
    }

    /// One more connect within `max_connects_per_second`? Counts a refusal.
    func mayConnect() -> Bool {
        let rate = config.maxConnectsPerSecond
        if rate == 0 { return true }
        let now = worker.loop.now
        if now > creditAt {
            connectCredit = min(rate * 1000, connectCredit + Int(min(now - creditAt, 1000)) * rate)
            creditAt = now
        }
        if connectCredit < 1000 {
            stats.inc(.upstream_cx_connect_rate_limited)
            return false
        }
        connectCredit -= 1000
        return true
    }

    // MARK: circuit breakers (`circuit_breaker:`, per cluster per process)

    /// A request may start within `max_requests` (counted until `releaseRequest`); a refusal is
    /// counted (`upstream_rq_overflow`).
    @inline(__always)
    func admitRequest() -> Bool {
        guard let b = breaker else { return true }
        if shared.acquire(.requests, limit: b.maxRequests) { return true }
        stats.inc(.upstream_rq_overflow)
        return false
    }

    @inline(__always) func releaseRequest() { if breaker != nil { shared.release(.requests) } }

    /// A retry may start within `max_retries` (counted until `releaseRetry`).
    func admitRetry() -> Bool {
        guard let b = breaker else { return true }
        return shared.acquire(.retries, limit: b.maxRetries)
    }

    func releaseRetry() { if breaker != nil { shared.release(.retries) } }

    /// Within `max_connections` and `max_pending` for one more connection (the request that needs
    /// it waits for it: pending, until `connectSettled`). Refusals are counted and set `overflowed`.
    func admitConnection(_ c: TCPConnection) -> Bool {
        guard let b = breaker else { return true }
        guard shared.acquire(.connections, limit: b.maxConnections) else {
            stats.inc(.upstream_cx_overflow)
            overflowed = true
            return false
        }
        guard shared.acquire(.pending, limit: b.maxPending) else {
            shared.release(.connections)
            stats.inc(.upstream_rq_pending_overflow)
            overflowed = true
            return false
        }
        c.tag = 1   // holds a pending slot until connected or closed
        return true
    }

    /// The connect of `c` ended (connected, failed, or closed first): its pending slot is free.
    @inline(__always)
    func connectSettled(_ c: TCPConnection) {
        if c.tag == 1 { c.tag = 0; shared.release(.pending) }
    }

    /// An upstream connection of this cluster closed (HTTP pools and the TCP proxy alike).
    func connectionClosed(_ c: TCPConnection) {
        openConnections -= 1
        connectSettled(c)
        if breaker != nil { shared.release(.connections) }
    }

    /// A connect that failed in its TLS handshake (`TLSSocket.handshakeFailed`): one log line saying why
    /// (the request gets 503 with UF like any failed connect).
    func connectFailed(_ c: TCPConnection, _ status: Int32) {
        guard status == TLSSocket.handshakeFailed, let t = c.transportSocket as? TLSSocket else { return }
        worker.log("cluster \(config.name): TLS handshake with \(c.peerIP()) failed: \(t.failure ?? "unknown reason")")
    }

    /// A new TCP connection to `endpoint`, connecting, with the connect timeout armed.
    func connect(_ endpoint: Endpoint) -> TCPConnection? {
        guard mayConnect() else { return nil }
        let c = TCPConnection(loop: worker.loop)
        guard admitConnection(c) else { c.close(); return nil }
        if let tls {
            guard let layer = TLSSocket(client: tls) else { c.close(); return nil }
            layer.clusterStats = stats
            c.transportSocket = layer
        }
        stats.inc(.upstream_cx_total)
        stats.inc(.upstream_cx_active)
        if c.connect(to: endpoint.address) != 0 {
            stats.inc(.upstream_cx_connect_fail)
            stats.dec(.upstream_cx_active)
            connectSettled(c)
            if breaker != nil { shared.release(.connections) }
            c.close()
            return nil
        }
        openConnections += 1
        c.setDeadline(after: config.connectTimeout)
        return c
    }

    /// Closes every idle connection and lets HTTP/2 connections finish their streams (draining, or
    /// a snapshot retired the cluster).
    func closeIdle() {
        for e in endpoints {
            let list = e.idle
            e.idle.removeAll()
            for u in list { u.isIdle = false; u.conn.close() }
            for c in e.h2 { c.drain() }
        }
    }
}
