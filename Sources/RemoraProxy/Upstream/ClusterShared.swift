import CRemoraSupport
import RemoraCore
import RemoraIO
import RemoraPolicy

/// What one cluster shares across the workers of the process: the circuit breakers' counts and
/// outlier detection's failures in a row (atomic words: checked and counted without a lock on the
/// request path), and outlier detection's ejections (written by the main loop only, which decides
/// them, then tells the workers through their mailboxes). One per cluster per snapshot, kept by
/// the next snapshot while the cluster's config and endpoints stay the same; the workers' `Cluster`
/// objects of that cluster all hold it.
final class ClusterShared: @unchecked Sendable {
    enum Count: Int { case connections = 0, pending, requests, retries }

    let name: String
    let breaker: CircuitBreakerConfig?
    let outlier: OutlierDetectionConfig?
    let endpointCount: Int
    /// `Count` words and the ejections' version, each on its own cache line (8 words apart), then
    /// per endpoint and per `OutlierKind` the failures in a row, then per endpoint why it is out of
    /// load balancing (bit 0: ejected by outlier detection, bit 1: failing its health checks; 0 = in).
    private let words: UnsafeMutablePointer<Int64>
    private static let stride = 8
    private var failuresBase: Int { 5 * ClusterShared.stride }
    private var ejectedBase: Int { failuresBase + endpointCount * 3 }

    // Main loop only: the decisions and what they are counted as.
    var detector: OutlierDetector?
    /// The review every `interval` (main loop), while a snapshot holds this cluster.
    var timer: LoopTimer?
    /// The endpoints' addresses (for logs).
    let addresses: [String]
    var ejectionsTotal: UInt64 = 0
    var ejectionsByKind: [UInt64] = [0, 0, 0]
    var ejectionsOverflow: UInt64 = 0
    /// Active health checking (`health_check:`), while a snapshot holds this cluster.
    var checker: HealthChecker?
    /// DNS refresh of its endpoint names (`dns_refresh:`), for its counters.
    var dns: DNSWatch?
    /// What the health checker of a changed endpoint set starts from (`inherit`): per endpoint its
    /// state, and the previous checker's counters; nil = a fresh start (every endpoint healthy).
    var carriedHealth: (states: [HealthState], attempts: UInt64, successes: UInt64, failures: UInt64)?
    var overflowLogged = false
    /// The endpoints' weights (for `endpointStatus`).
    let weights: [Int]
    /// Per worker (`rows` of them), per endpoint: the `Endpoint.words` of that worker's `Endpoint`
    /// (`EndpointWord.count` words, 64-byte aligned: one cache line per endpoint per worker).
    let rows: Int
    private let endpointBlock: UnsafeMutablePointer<UInt64>

    init(config: ClusterConfig, endpoints: Int, addresses: [String] = [], weights: [Int] = [], workers: Int = 1) {
        name = config.name
        self.addresses = addresses
        self.weights = weights
        rows = max(1, workers)
        let m = rows * max(1, endpoints) * EndpointWord.count
        endpointBlock = UnsafeMutableRawPointer.allocate(byteCount: m * 8, alignment: 64).bindMemory(to: UInt64.self, capacity: m)
        endpointBlock.initialize(repeating: 0, count: m)
        breaker = config.circuitBreaker
        outlier = config.outlierDetection
        endpointCount = endpoints
        let n = 5 * ClusterShared.stride + endpoints * 4
        words = .allocate(capacity: n)
        words.initialize(repeating: 0, count: n)
        if let o = outlier { detector = OutlierDetector(config: o, endpoints: endpoints) }
    }

    deinit {
        words.deallocate()
        endpointBlock.deallocate()
    }

    // MARK: a changed endpoint set

    /// Main loop, when a new snapshot replaces `old` by this one because only the endpoint set
    /// changed (a DNS refresh, a reload that moved endpoints; `ClusterConfig.sameApartFromEndpoints`).
    /// `oldIndex`: per endpoint here, its position in `old` (`EndpointSetDiff`), nil when new. An
    /// endpoint that stays keeps what the process knew of it: its outlier ejection (until when, and
    /// how many times: `OutlierDetector(carrying:)`), its failures in a row, its health (the next
    /// checker starts from its `HealthState`) and its counters for the admin (not its active count:
    /// attempts under way end on the old set's words). A new endpoint of a health-checked cluster
    /// is out of load balancing until its first probe passes (`HealthState.pendingFirstCheck`). The
    /// cluster's counters (ejections, health-check attempts) go on from the old ones.
    func inherit(from old: ClusterShared, oldIndex: [Int?]) {
        if let o = outlier, let od = old.detector { detector = OutlierDetector(config: o, carrying: od, oldIndex: oldIndex) }
        ejectionsTotal = old.ejectionsTotal
        ejectionsByKind = old.ejectionsByKind
        ejectionsOverflow = old.ejectionsOverflow
        let checked = old.checker
        for (i, j) in oldIndex.enumerated() where i < endpointCount {
            let ejected: Int64 = detector?.isEjected(i) == true ? 1 : 0
            guard let j, j < old.endpointCount else {
                if checked != nil { remora_atomic_store(words + ejectedBase + i, 2) }   // pending its first probe
                continue
            }
            remora_atomic_store(words + ejectedBase + i, remora_atomic_load(old.words + old.ejectedBase + j) & 2 | ejected)
            for k in OutlierKind.allCases { remora_atomic_store(failures(i, k), remora_atomic_load(old.failures(j, k))) }
            for w in 0..<min(rows, old.rows) {
                guard let to = endpointWords(worker: w, endpoint: i), let from = old.endpointWords(worker: w, endpoint: j) else { continue }
                for k in [EndpointWord.ended, .responses5xx, .localFailures, .latencyEstimate, .latencyStamp] {
                    remora_counter_store(to + k.rawValue, remora_counter_load(from + k.rawValue))
                }
            }
        }
        if let h = checked {
            carriedHealth = (oldIndex.map { j in j.flatMap { $0 < h.probes.count ? h.probes[$0].state : nil } ?? .pendingFirstCheck },
                             h.attempts, h.successes, h.failures)
        }
        remora_atomic_add(words + 4 * ClusterShared.stride, 1)   // a new Cluster applies the flags
    }

    // MARK: per-endpoint counters (`Endpoint.words`, read by `endpointStatus`)

    /// Worker `worker`'s words for `endpoint`; nil beyond the rows (the endpoint keeps its own).
    func endpointWords(worker: Int, endpoint: Int) -> UnsafeMutablePointer<UInt64>? {
        guard worker >= 0, worker < rows, endpoint < endpointCount else { return nil }
        return endpointBlock + (worker * endpointCount + endpoint) * EndpointWord.count
    }

    /// Main loop: every endpoint as the process sees it now (counters summed over workers, health
    /// and ejection flags, latency decayed to `now`). Reads each word once, relaxed: a value may lag
    /// a request behind, never tear.
    func endpointStatus(now: UInt64) -> [EndpointStatus] {
        (0..<endpointCount).map { e in
            let flags = remora_atomic_load(words + ejectedBase + e)
            var s = EndpointStatus(address: e < addresses.count ? addresses[e] : "#\(e)", weight: e < weights.count ? weights[e] : 1,
                                   failedHealthCheck: flags & 2 != 0, ejected: flags & 1 != 0)
            var latencySum = 0.0, measured = 0
            for w in 0..<rows {
                let p = endpointBlock + (w * endpointCount + e) * EndpointWord.count
                @inline(__always) func word(_ k: EndpointWord) -> UInt64 { remora_counter_load(p + k.rawValue) }
                let active = UInt64(max(0, Int64(bitPattern: word(.active))))
                s.activeRequests += active
                s.requestsTotal += word(.ended) + active
                s.responses5xx += word(.responses5xx)
                s.localFailures += word(.localFailures)
                let stamp = word(.latencyStamp)
                if stamp != 0 {
                    latencySum += PeakEWMA(estimate: Double(bitPattern: word(.latencyEstimate)), stamp: stamp).current(now: now)
                    measured += 1
                }
            }
            if measured > 0 { s.latencyMs = latencySum / Double(measured) }
            return s
        }
    }

    // MARK: circuit breakers

    @inline(__always) func load(_ c: Count) -> Int64 { remora_atomic_load(words + c.rawValue * ClusterShared.stride) }

    /// One more of `c` within `limit`: counted and true, or false (nothing counted).
    @inline(__always)
    func acquire(_ c: Count, limit: Int) -> Bool {
        let p = words + c.rawValue * ClusterShared.stride
        if remora_atomic_add(p, 1) >= Int64(limit) {
            remora_atomic_add(p, -1)
            return false
        }
        return true
    }

    @inline(__always) func release(_ c: Count) { remora_atomic_add(words + c.rawValue * ClusterShared.stride, -1) }

    // MARK: outlier detection

    @inline(__always)
    func failures(_ endpoint: Int, _ k: OutlierKind) -> UnsafeMutablePointer<Int64> {
        words + failuresBase + endpoint * 3 + k.rawValue
    }

    /// Out of load balancing: ejected, or failing its health checks.
    func isEjected(_ endpoint: Int) -> Bool { remora_atomic_load(words + ejectedBase + endpoint) != 0 }

    /// Main loop: marks `endpoint` ejected or back, and forgets its failures in a row.
    func setEjected(_ endpoint: Int, _ on: Bool) {
        setFlag(endpoint, 1, on)
        resetFailures(endpoint)
    }

    /// Main loop: marks `endpoint` unhealthy (its health checks failed) or healthy again.
    func setUnhealthy(_ endpoint: Int, _ on: Bool) { setFlag(endpoint, 2, on) }

    private func setFlag(_ endpoint: Int, _ bit: Int64, _ on: Bool) {
        let p = words + ejectedBase + endpoint
        let v = remora_atomic_load(p)
        remora_atomic_store(p, on ? v | bit : v & ~bit)   // only the main loop writes it
        remora_atomic_add(words + 4 * ClusterShared.stride, 1)
    }

    func resetFailures(_ endpoint: Int) {
        for k in OutlierKind.allCases { remora_atomic_store(failures(endpoint, k), 0) }
    }

    /// Worker: counts `o` on `endpoint`'s failures in a row; true when a kind just reached its
    /// threshold (`thresholds`, by `OutlierKind`; 0 = off), which the caller reports to the main loop.
    @inline(__always)
    func countFailure(_ endpoint: Int, _ o: AttemptOutcome, thresholds: (Int, Int, Int)) -> OutlierKind? {
        if o.kind == .cancelled || o.kind == .refused { return nil }   // says nothing about the endpoint
        var reached: OutlierKind?
        count(endpoint, o, .consecutive5xx, thresholds.0, &reached)
        count(endpoint, o, .consecutiveGateway, thresholds.1, &reached)
        count(endpoint, o, .consecutiveLocal, thresholds.2, &reached)
        return reached
    }

    @inline(__always)
    private func count(_ endpoint: Int, _ o: AttemptOutcome, _ k: OutlierKind, _ limit: Int, _ reached: inout OutlierKind?) {
        guard limit > 0, let fails = k.counts(o) else { return }
        let p = failures(endpoint, k)
        if fails {
            if remora_atomic_add(p, 1) + 1 == Int64(limit) && reached == nil { reached = k }
        } else if remora_atomic_load(p) != 0 {
            remora_atomic_store(p, 0)
        }
    }

    /// Bumped (main loop) each time the ejected set changes; a worker compares it with the one it applied.
    var version: Int64 { remora_atomic_load(words + 4 * ClusterShared.stride) }

    // MARK: stats (main loop, when /stats is read)

    /// Gauges of how close each breaker is (`circuit_breakers.default.rq_open` 0/1, `remaining_rq`,
    /// and the same for connections, pending requests and retries), and outlier detection's counts.
    func collect(into out: inout StatsSnapshot) {
        if let b = breaker {
            for (c, limit, open, remaining) in [(Count.connections, b.maxConnections, "cx_open", "remaining_cx"),
                                                (.pending, b.maxPending, "rq_pending_open", "remaining_pending"),
                                                (.requests, b.maxRequests, "rq_open", "remaining_rq"),
                                                (.retries, b.maxRetries, "rq_retry_open", "remaining_retries")] {
                let n = max(0, load(c))
                out.add(scope: "cluster", name: name, stat: "circuit_breakers.default.\(open)", value: n >= Int64(limit) ? 1 : 0)
                out.add(scope: "cluster", name: name, stat: "circuit_breakers.default.\(remaining)",
                        value: UInt64(max(0, Int64(limit) - n)))
            }
        }
        if let d = detector {
            out.add(scope: "cluster", name: name, stat: "outlier_detection.ejections_active", value: UInt64(d.ejectedCount))
            out.add(scope: "cluster", name: name, stat: "outlier_detection.ejections_total", value: ejectionsTotal)
            for k in OutlierKind.allCases {
                out.add(scope: "cluster", name: name, stat: "outlier_detection.ejections_\(k.name)", value: ejectionsByKind[k.rawValue])
            }
            out.add(scope: "cluster", name: name, stat: "outlier_detection.ejections_overflow", value: ejectionsOverflow)
        }
        if let h = checker {
            out.add(scope: "cluster", name: name, stat: "health_check.attempt", value: h.attempts)
            out.add(scope: "cluster", name: name, stat: "health_check.success", value: h.successes)
            out.add(scope: "cluster", name: name, stat: "health_check.failure", value: h.failures)
            out.add(scope: "cluster", name: name, stat: "health_check.healthy", value: UInt64(h.healthyCount))
        }
        if let w = dns {
            out.add(scope: "cluster", name: name, stat: "update_attempt", value: w.attempts)
            out.add(scope: "cluster", name: name, stat: "update_success", value: w.successes)
            out.add(scope: "cluster", name: name, stat: "update_failure", value: w.failures)
            out.add(scope: "cluster", name: name, stat: "update_no_rebuild", value: w.noRebuild)
            out.add(scope: "cluster", name: name, stat: "membership_change", value: w.changes)
        }
    }
}
