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
    /// In the snapshot's order; none only while every name of a `dns_refresh` cluster is unresolved
    /// (each request is then answered 503 at once: `openHTTP1`, `openHTTP2`, the TCP proxy).
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
    /// A newer snapshot dropped or changed this cluster: connections close instead of being pooled
    /// (or move to `successor`).
    var retired = false
    /// The cluster that replaced this one in this worker when only its endpoint set changed
    /// (`adopt`), and per endpoint here the position there of the same address (nil: gone). A
    /// connection of this retired cluster that finishes its last request moves there (`heir`)
    /// instead of closing. Held strongly: a retired cluster lives until its connections are gone.
    var successor: Cluster?
    var successorIndex: [Int?] = []
    /// Recycled HTTP/2 stream objects (shared by the cluster's HTTP/2 connections).
    var freeStreams = Recycler<H2UpstreamStream>()
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
    /// `protocol: auto`: each connection speaks what its server's ALPN answer picked; an endpoint
    /// not heard from yet is tried in the preferred one (`prefersH2`: `tls.alpn` lists h2 first).
    let auto: Bool
    let prefersH2: Bool

    /// `previous`: this worker's cluster of the same name that this one replaces (its endpoint set or
    /// config changed). When only the endpoints changed, what stays keeps its state (`adopt`).
    init(worker: Worker, index: Int, config: ClusterConfig, endpoints: [SocketAddress], weights: [Int] = [],
         shared: ClusterShared? = nil, stats: StatBlock<ClusterStat>, tls: TLSClientContext? = nil, previous: Cluster? = nil) {
        self.worker = worker; self.index = index; self.config = config; self.stats = stats; self.tls = tls
        closesExpired = tls?.config.closeExpired ?? false
        auto = config.protocol == .auto && tls != nil
        prefersH2 = tls?.expectedALPN == "h2"
        self.shared = shared ?? ClusterShared(config: config, endpoints: endpoints.count)
        breaker = config.circuitBreaker
        outlierThresholds = config.outlierDetection.map { ($0.consecutive5xx, $0.consecutiveGatewayErrors, $0.consecutiveLocalFailures) }
        let now = worker.loop.now
        let sh = self.shared
        self.endpoints = endpoints.enumerated().map {
            Endpoint(index: $0.offset, address: $0.element, weight: $0.offset < weights.count ? weights[$0.offset] : 1, now: now,
                     words: sh.endpointWords(worker: worker.id, endpoint: $0.offset))
        }
        live = self.endpoints
        balancer = Balancer(config.lb, for: self.endpoints, slowStart: config.slowStart, now: now)
        tracksLatency = config.lb == .peakEWMA
        requestKey = config.lb.isConsistentHash ? config.hashOn.map(RequestKey.init) : nil
        maxIdlePerEndpoint = config.maxIdlePerEndpoint ?? Int.max
        connectCredit = config.maxConnectsPerSecond * 1000
        for e in self.endpoints { e.idle.reserveCapacity(min(maxIdlePerEndpoint, 64)) }
        retryBudget = config.retryBudget
        random = FastRandom(seed: worker.rng.next())
        if let p = previous { adopt(from: p, now: now) }
        applyEjections()
        if previous != nil { endpointsChanged() }
    }

    /// Takes over from `old` (the cluster this one replaces in this worker) what belongs to endpoints
    /// that stay (`EndpointSetDiff`, by address): their latency estimates and ramps, and their idle
    /// connections (HTTP/1.1 pooled, HTTP/2 with no stream open), which then count here, so a DNS
    /// refresh or a reload that moves endpoints drops no connection to an endpoint that stays.
    /// Busy connections finish their requests on `old` (retired) and close. New endpoints start
    /// their `slow_start` ramp now. Only when nothing but the endpoint list changed.
    func adopt(from old: Cluster, now: UInt64) {
        let diff = EndpointSetDiff(old: old.endpoints.map(\.address.description), new: endpoints.map(\.address.description))
        let keepConnections = config.sameApartFromEndpoints(old.config)
        if keepConnections {
            old.successor = self
            old.successorIndex = Array(repeating: nil, count: old.endpoints.count)
            for (i, j) in diff.oldIndex.enumerated() { if let j { old.successorIndex[j] = i } }
        }
        for (i, e) in endpoints.enumerated() {
            guard let j = diff.oldIndex[i] else {
                e.rampSince = now   // new here: `slow_start` ramps it up
                continue
            }
            let o = old.endpoints[j]
            e.latency = o.latency
            e.rampSince = o.rampSince
            guard keepConnections else { continue }
            let idle = o.idle
            o.idle.removeAll()
            for u in idle {
                if u.conn.connecting || u.conn.tag != 0 || !takeConnection(from: old) { o.idle.append(u); continue }
                u.cluster = self
                u.endpoint = Unmanaged.passUnretained(e)
                e.idle.append(u)
            }
            let h2 = o.h2
            o.h2.removeAll()
            for c in h2 {
                if !c.all.isEmpty || !c.connected || c.goingAway || c.closing || !takeConnection(from: old) { o.h2.append(c); continue }
                c.cluster = self
                c.endpoint = Unmanaged.passUnretained(e)
                e.h2.append(c)
            }
        }
    }

    /// Where a connection to `e` goes when it is free again on this retired cluster: the endpoint of
    /// the same address in the newest cluster that replaced this one with only its endpoint set
    /// changed. nil: close it (not retired, the address is gone, the config changed, draining).
    func heir(of e: Endpoint) -> (Cluster, Endpoint)? {
        guard retired, !worker.draining, let next = successor, e.index < successorIndex.count,
              let i = successorIndex[e.index] else { return nil }
        let ne = next.endpoints[i]
        return next.retired ? next.heir(of: ne) : (next, ne)
    }

    /// An HTTP/2 connection of this retired cluster whose last stream ended moves to its `heir`
    /// (counted there); false when it has none or cannot (it then closes).
    func handOver(_ c: H2UpstreamConnection) -> Bool {
        guard c.connected, !c.goingAway, !c.closing, let (next, ne) = heir(of: c.endpoint.takeUnretainedValue()),
              next.takeConnection(from: self) else { return false }
        removeHTTP2(c)
        c.cluster = next
        c.endpoint = Unmanaged.passUnretained(ne)
        ne.h2.append(c)
        return true
    }

    /// Counts one connection of `old` as this cluster's (open connections, `max_connections`).
    /// False when this cluster's breaker has no room for it (it stays with `old` and closes).
    func takeConnection(from old: Cluster) -> Bool {
        if let b = breaker, !shared.acquire(.connections, limit: b.maxConnections) { return false }
        if old.breaker != nil { old.shared.release(.connections) }
        old.openConnections -= 1
        openConnections += 1
        return true
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
        let now = worker.loop.now
        for e in endpoints {
            let out = shared.isEjected(e.index)
            if e.ejected && !out { e.rampSince = now }   // back: `slow_start` ramps it up
            e.ejected = out
        }
        endpointsChanged()
    }

    /// `live` and the balancer again, after endpoints were ejected or returned.
    func endpointsChanged() {
        let available = endpoints.filter { !$0.ejected }
        panicking = !endpoints.isEmpty && (available.isEmpty || available.count * 100 < endpoints.count * config.panicThreshold)
        live = panicking ? endpoints : available
        balancer = Balancer(config.lb, for: live, slowStart: config.slowStart, now: worker.loop.now)
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
        c.tag |= 1   // holds a pending slot until connected or closed
        return true
    }

    /// The connect of `c` ended (connected, failed, or closed first): its pending slot is free.
    /// `connected`: it succeeded, and the connect time goes to `upstream_cx_connect_ms`.
    /// (`c.tag`: bit 0, a pending slot held; the bits above, the connect's start in monotonic µs.)
    @inline(__always)
    func connectSettled(_ c: TCPConnection, connected: Bool = false) {
        if c.tag & 1 == 1 { c.tag &= ~1; shared.release(.pending) }
        if connected && c.tag > 1 {
            stats.record(.upstream_cx_connect_ms, micros: monotonicMicros() &- UInt64(c.tag >> 1))
            c.tag = 0
        }
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

    /// A new TCP connection to `endpoint`, connecting, with the connect timeout armed. `h2`: the
    /// protocol the connection's owner speaks (`protocol: auto`: the server's ALPN answer may switch it).
    func connect(_ endpoint: Endpoint, h2: Bool? = nil) -> TCPConnection? {
        guard mayConnect() else { return nil }
        let c = TCPConnection(loop: worker.loop)
        c.tag = Int(truncatingIfNeeded: monotonicMicros() << 1)   // the connect's start (connectSettled)
        guard admitConnection(c) else { c.close(); return nil }
        if let tls {
            guard let layer = TLSSocket(client: tls) else { c.close(); return nil }
            layer.clusterStats = stats
            if auto, let h2 {
                layer.speaksH2 = h2
                layer.switchesOnALPN = true
            }
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
            let moving = heir(of: e) != nil   // busy HTTP/2 connections move to the heir once free
            for c in e.h2 where !moving { c.drain() }
        }
    }
}
