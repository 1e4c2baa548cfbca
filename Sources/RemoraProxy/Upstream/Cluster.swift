import RemoraCore
import RemoraIO
import RemoraPolicy

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
    let stats: StatBlock<ClusterStat>
    /// Picks the endpoint of each attempt (today round robin; RemoraPolicy holds the balancers).
    var balancer: RoundRobin
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

    init(worker: Worker, index: Int, config: ClusterConfig, endpoints: [SocketAddress], stats: StatBlock<ClusterStat>) {
        self.worker = worker; self.index = index; self.config = config; self.stats = stats
        self.endpoints = endpoints.enumerated().map { Endpoint(index: $0.offset, address: $0.element) }
        maxIdlePerEndpoint = config.maxIdlePerEndpoint ?? Int.max
        connectCredit = config.maxConnectsPerSecond * 1000
        for e in self.endpoints { e.idle.reserveCapacity(min(maxIdlePerEndpoint, 64)) }
        balancer = RoundRobin(for: self.endpoints)
        retryBudget = config.retryBudget
        random = FastRandom(seed: worker.rng.next())
    }

    /// The endpoint for the next attempt (HTTP pools and the TCP proxy alike), unretained.
    @inline(__always)
    func pickEndpoint() -> Endpoint.Ref {
        var i = balancer.pick(endpoints, random: &random)
        if let avoid = avoidNext {   // a retry: another endpoint than the last try's, when there is one
            avoidNext = nil
            if endpoints.count > 1 && endpoints[i] === avoid.takeUnretainedValue() { i = balancer.pick(endpoints, random: &random) }
        }
        return Unmanaged.passUnretained(endpoints[i])
    }

    /// The outcome hook: every upstream attempt ends here exactly once, with its endpoint and what
    /// happened (`Exchange.endAttempt`). The endpoint keeps its part (active requests, failures in a
    /// row, last outcome); outlier detection, breakers, budgets and latency-aware balancing hang here.
    /// Allocates nothing.
    @inline(__always)
    func attemptEnded(endpoint: Endpoint.Ref, _ outcome: AttemptOutcome) {
        endpoint._withUnsafeGuaranteedRef { $0.attemptEnded(outcome) }
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

    /// A new TCP connection to `endpoint`, connecting, with the connect timeout armed.
    func connect(_ endpoint: Endpoint) -> TCPConnection? {
        guard mayConnect() else { return nil }
        let c = TCPConnection(loop: worker.loop)
        stats.inc(.upstream_cx_total)
        stats.inc(.upstream_cx_active)
        if c.connect(to: endpoint.address) != 0 {
            stats.inc(.upstream_cx_connect_fail)
            stats.dec(.upstream_cx_active)
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
