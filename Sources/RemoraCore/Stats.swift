import CRemoraSupport

/// Stats are declared once per component, in Envoy's vocabulary, as the cases of an enum. Each
/// worker owns one `StatBlock` per scope (a listener, a cluster); it is the only writer. The admin
/// thread sums blocks across workers when /stats is read. Counters and gauges are plain 64-bit words
/// written with relaxed atomic stores: no lock, no locked instruction on the request path.
public protocol StatGroup: CaseIterable, RawRepresentable where RawValue == Int {
    /// Prefix of the scope: "listener" or "cluster".
    static var scope: String { get }
}

/// Downstream (client side) stats of one listener: `listener.<name>.<stat>`.
public enum ListenerStat: Int, StatGroup {
    public static let scope = "listener"
    case downstream_cx_total, downstream_cx_active, downstream_cx_destroy_remote, downstream_cx_idle_timeout
    case downstream_cx_protocol_error
    case downstream_rq_total, downstream_rq_active
    case downstream_rq_1xx, downstream_rq_2xx, downstream_rq_3xx, downstream_rq_4xx, downstream_rq_5xx
    case downstream_rq_timeout, downstream_rq_rx_reset, downstream_rq_no_route, downstream_rq_too_large
    case downstream_cx_rx_bytes_total, downstream_cx_tx_bytes_total
    case downstream_rq_body_too_large, dropped_headers_with_underscores, requests_rejected_with_underscores_in_headers
    /// An HTTP/2 connection's streams went over `per_connection_buffer_limit` (its upstreams paused).
    case downstream_cx_buffer_limit_reached
    /// Overload (`overload:`): requests refused above `refuse_streams_above`, connections closed at
    /// accept above `refuse_connections_above`.
    case downstream_rq_overload_refused, downstream_cx_overload_reject
    /// Fault injection (`fault:` on a route): requests delayed, requests answered by an abort.
    case fault_delays_injected, fault_aborts_injected
    /// Local rate limit (`rate_limit:` on a route): requests answered 429 / RESOURCE_EXHAUSTED.
    case downstream_rq_rate_limited
}

/// Upstream (backend side) stats of one cluster: `cluster.<name>.<stat>`.
public enum ClusterStat: Int, StatGroup {
    public static let scope = "cluster"
    case upstream_cx_total, upstream_cx_active, upstream_cx_connect_fail, upstream_cx_connect_timeout
    case upstream_cx_destroy_remote, upstream_cx_pool_reuse
    case upstream_rq_total, upstream_rq_active, upstream_rq_timeout, upstream_rq_retry
    /// Retries (issue 11, `retry:` on a route): retried requests that then succeeded; tries refused
    /// because `attempts` were made, because the cluster's retry budget was spent, or because the body
    /// outgrew the replay buffer; retries that waited a backoff; tries cut by `per_try_timeout`.
    case upstream_rq_retry_success, upstream_rq_retry_limit_exceeded, upstream_rq_retry_overflow
    case upstream_rq_retry_body_too_large, upstream_rq_retry_backoff_exponential, upstream_rq_per_try_timeout
    /// Hedged requests (`retry.hedge_after`): a second try started while the first had no head yet.
    case upstream_rq_hedged
    case upstream_rq_1xx, upstream_rq_2xx, upstream_rq_3xx, upstream_rq_4xx, upstream_rq_5xx
    case upstream_rq_reset_after_head
    case upstream_cx_rx_bytes_total, upstream_cx_tx_bytes_total
    /// Connects refused by `max_connects_per_second` (the request got 503).
    case upstream_cx_connect_rate_limited
    /// Requests cancelled before any byte of them left: the connection went back to the pool.
    case upstream_rq_cancelled_unsent
    /// Connections closed after carrying no request for the cluster's `idle_timeout`.
    case upstream_cx_idle_timeout
    /// Picks made over every endpoint because fewer than `panic_threshold` % were available.
    case lb_healthy_panic
    /// Circuit breakers (`circuit_breaker:`): connections not opened over `max_connections`,
    /// requests refused over `max_pending` and over `max_requests` (each answered 503 overloaded).
    case upstream_cx_overflow, upstream_rq_pending_overflow, upstream_rq_overflow
}

/// Per backend of a route, so an operator sees the real split:
/// `route.<listener>.<route>.<cluster>.<stat>`.
public enum RouteBackendStat: Int, StatGroup {
    public static let scope = "route"
    case upstream_rq_total, upstream_rq_1xx, upstream_rq_2xx, upstream_rq_3xx, upstream_rq_4xx, upstream_rq_5xx
}

/// One scope's counters in one worker. Reference semantics over a malloc'd block that lives as
/// long as the worker (never freed while a reader may look at it).
public struct StatBlock<G: StatGroup>: @unchecked Sendable {
    public let words: UnsafeMutablePointer<UInt64>

    public init() {
        words = .allocate(capacity: G.allCases.count)
        words.initialize(repeating: 0, count: G.allCases.count)
    }

    @inline(__always) public func inc(_ s: G) { remora_counter_add(words + s.rawValue, 1) }
    @inline(__always) public func add(_ s: G, _ v: UInt64) { remora_counter_add(words + s.rawValue, v) }
    @inline(__always) public func dec(_ s: G) { remora_counter_sub(words + s.rawValue, 1) }
    @inline(__always) public func load(_ s: G) -> UInt64 { remora_counter_load(words + s.rawValue) }

    /// Increments the `_1xx` … `_5xx` counter of `status` (the cases named like that in G).
    @inline(__always) public func incClass(_ first1xx: G, status: Int) {
        let cls = status / 100
        guard cls >= 1 && cls <= 5, let s = G(rawValue: first1xx.rawValue + cls - 1) else { return }
        inc(s)
    }
}

/// Stat values at one moment, summed over workers, in the order /stats lists them: what the admin
/// renderers print (RemoraAdmin: text today). Built on the main thread when an endpoint is read,
/// never on the request path.
public struct StatsSnapshot: Sendable, Equatable {
    public struct Sample: Sendable, Equatable {
        /// "listener", "cluster", "route" (a `StatGroup.scope`), or "server" / "control" for the process.
        public var scope: String
        /// The listener, cluster or route (`listener.route.cluster`); "" for a process-wide value.
        public var name: String
        /// The stat itself: `downstream_rq_total`, `workers`.
        public var stat: String
        /// A counter's total or a gauge's current value (0 ... 2^64-1).
        public var value: UInt64

        public init(scope: String, name: String, stat: String, value: UInt64) {
            self.scope = scope; self.name = name; self.stat = stat; self.value = value
        }

        /// `scope.name.stat`, or `scope.stat` without a name.
        public var fullName: String { name.isEmpty ? "\(scope).\(stat)" : "\(scope).\(name).\(stat)" }
    }

    public var samples: [Sample] = []

    public init(samples: [Sample] = []) { self.samples = samples }

    /// Every stat of `G` for scope `name`, each summed over `blocks` (one per worker).
    public mutating func add<G: StatGroup>(_: G.Type, name: String, blocks: [StatBlock<G>]) {
        for s in G.allCases {
            var total: UInt64 = 0
            for b in blocks { total &+= b.load(s) }
            samples.append(Sample(scope: G.scope, name: name, stat: "\(s)", value: total))
        }
    }

    /// One process-wide value: `add(scope: "server", stat: "workers", value: 4)`.
    public mutating func add(scope: String, name: String = "", stat: String, value: UInt64) {
        samples.append(Sample(scope: scope, name: name, stat: stat, value: value))
    }
}

/// The process's overload level (`overload:`), written by the main thread once a second from the
/// resident set size and read by the workers when a request or a connection starts: 0 normal,
/// 1 refuse new requests, 2 refuse new connections as well. One aligned word with a constant
/// initializer (a plain load, no lazy-initialization check): a worker may see a new level one
/// request late, which is all the precision this needs.
nonisolated(unsafe) public var overloadLevel: UInt64 = 0
/// Resident set size at the last sample, bytes (0 while overload actions are off).
nonisolated(unsafe) public var overloadRSS: UInt64 = 0
