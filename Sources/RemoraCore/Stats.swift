import CRemoraSupport
import Synchronization

/// Stats are declared once per component, in Envoy's vocabulary, as the cases of an enum. Each
/// worker owns one `StatBlock` per scope (a listener, a cluster); it is the only writer. The admin
/// thread sums blocks across workers when /stats is read. Counters and gauges are plain 64-bit words
/// written with relaxed atomic stores: no lock, no locked instruction on the request path.
public protocol StatGroup: CaseIterable, RawRepresentable where RawValue == Int {
    /// Prefix of the scope: "listener" or "cluster".
    static var scope: String { get }
    /// The component's histograms (`NoHistogram` when it has none).
    associatedtype Histogram: HistogramGroup = NoHistogram
    /// Entries of the component's labelled request series (Istio's `istio_requests_total` and
    /// `istio_request_duration_milliseconds`, one entry per label set): 0 = none, else a power of
    /// two plus one (the last entry collects the label sets that found no room).
    static var seriesCapacity: Int { get }
    /// A counter (only grows) or a gauge (goes up and down): Prometheus' TYPE.
    var kind: StatKind { get }
    /// One line for Prometheus' HELP.
    var help: String { get }
}

extension StatGroup {
    public static var seriesCapacity: Int { 0 }
    /// A component that does not say: a counter, its HELP line its name.
    public var kind: StatKind { .counter }
    public var help: String { "" }
}

/// What a stat is, declared with it: Prometheus' TYPE.
public enum StatKind: String, Sendable, Equatable { case counter, gauge }

/// A component's histograms, declared once as the cases of an enum beside its stats. Each is a
/// distribution of durations over Envoy's default buckets (0.5 ms ... 1 h), recorded in
/// microseconds per worker without a lock or a locked instruction, summed when read.
public protocol HistogramGroup: CaseIterable, RawRepresentable where RawValue == Int {
    /// One line for Prometheus' HELP.
    var help: String { get }
}

/// For components without histograms.
public enum NoHistogram: Int, HistogramGroup {
    case none
    public static var allCases: [NoHistogram] { [] }
    public var help: String { "" }
}

/// Envoy's default histogram bucket bounds, milliseconds (`le` labels): 0.5 ... 3,600,000.
public enum HistogramBuckets {
    public static let count = Int(REMORA_HIST_BUCKETS)
    /// Upper bounds in microseconds (as recorded).
    public static let boundsMicros: [UInt64] = withUnsafeBytes(of: remora_hist_bounds_us) {
        Array($0.bindMemory(to: UInt64.self))
    }
    /// `le` as Prometheus prints it: "0.5", "1", ..., "3600000".
    public static let labels: [String] = boundsMicros.map { $0 % 1000 == 0 ? "\($0 / 1000)" : "\($0 / 1000).\($0 % 1000 / 100)" }
}

/// Downstream (client side) stats of one listener: `listener.<name>.<stat>`.
public enum ListenerStat: Int, StatGroup, Sendable {
    public static let scope = "listener"
    public typealias Histogram = ListenerHistogram
    /// Label sets of requests the proxy answered without a cluster (no route, direct responses).
    public static var seriesCapacity: Int { 17 }
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
    /// Access log lines dropped because the log writer was behind (`access_log:`).
    case access_log_dropped
    /// TLS (`tls:`): handshakes completed, handshakes failed (any reason), clients refused for
    /// sending no certificate to a `client_ca` listener, and for one that did not verify; handshakes
    /// that resumed a session (ticket). Envoy's `ssl.*` names.
    case ssl_handshake, ssl_connection_error, ssl_fail_verify_no_cert, ssl_fail_verify_error, ssl_session_reused
    /// Connections a TLS listener with `allow_plaintext` served in plaintext (their first byte was not TLS).
    case ssl_plaintext_accepted
    /// Connections to a sidecar's permissive inbound listener whose TLS did not offer ALPN
    /// `remora-mesh` (the application's own TLS): passed on as bytes, not terminated.
    case ssl_passthrough_accepted
    /// Connections closed because their certificate (the listener's or the client's) expired (`close_expired`).
    case ssl_connection_expired
    /// Authorization (`authorization:`, Envoy's `rbac.allowed` / `rbac.denied`): requests (TCP
    /// listeners: connections) a policy allowed, and denied (403 / PERMISSION_DENIED / closed).
    case rbac_allowed, rbac_denied
    /// Requests refused with 400 by `path_normalization` (an escaped slash refused, a bad escape).
    case downstream_rq_failed_path_normalization
    /// Connections accepted and closed at once over the listener's `max_connections`, and over
    /// the process-wide `max_connections`.
    case downstream_cx_overflow, downstream_global_cx_overflow
    /// Protocol sniffing (`protocol: tls` listeners, the sidecar's outbound listener), with the
    /// names of Envoy's tls_inspector and http_inspector: a ClientHello read whole or not; with a
    /// server name or without; larger than `max_sniff_bytes`; HTTP/1.x or HTTP/2 found or not; the
    /// first bytes did not come within `sniff_timeout` (`downstream_pre_cx_timeout`).
    case tls_found, tls_not_found, sni_found, sni_not_found, client_hello_too_large
    case http11_found, http2_found, http_not_found, downstream_pre_cx_timeout
    /// `protocol: tls`: connections routed by an `sni` entry, sent to the default cluster, closed
    /// for want of either (Envoy's `no_filter_chain_match`).
    case sni_route_matched, sni_route_default, no_filter_chain_match
    /// Sidecar (docs/sidecar.md): connections sent to a configured service's cluster; sent on to
    /// their original destination (Istio's PassthroughCluster); closed by `passthrough: deny`
    /// (Istio's BlackHoleCluster); closed because they had no original destination (not redirected,
    /// or redirected to the proxy's own listener: a loop).
    case sidecar_service_matched, sidecar_passthrough, sidecar_passthrough_denied, sidecar_no_original_dst
    /// Upgrades (issue 18): connections that became tunnels (WebSocket after a 101), tunnels open,
    /// upgrade requests refused with 403 (not allowed on the route, or toward an HTTP/2 cluster).
    case downstream_cx_upgrades_total, downstream_cx_upgrades_active, downstream_rq_upgrade_refused
    /// Sampled spans dropped because the OTLP exporter was behind (`tracing.otlp`).
    case tracing_spans_dropped

    public var kind: StatKind {
        switch self {
        case .downstream_cx_active, .downstream_rq_active, .downstream_cx_upgrades_active: return .gauge
        default: return .counter
        }
    }

    public var help: String { Self.helpLines[self] ?? "\(self)" }

    /// HELP lines (a stat added without one shows its name).
    static let helpLines: [ListenerStat: String] = [
        .downstream_cx_total: "Connections accepted",
        .downstream_cx_active: "Connections open",
        .downstream_cx_destroy_remote: "Connections closed by the client",
        .downstream_cx_idle_timeout: "Connections closed by the idle timeout",
        .downstream_cx_protocol_error: "Connections closed on a protocol error",
        .downstream_rq_total: "Requests received",
        .downstream_rq_active: "Requests in flight",
        .downstream_rq_1xx: "Responses by status class",
        .downstream_rq_2xx: "Responses by status class",
        .downstream_rq_3xx: "Responses by status class",
        .downstream_rq_4xx: "Responses by status class",
        .downstream_rq_5xx: "Responses by status class",
        .downstream_rq_timeout: "Requests ended by a timeout",
        .downstream_rq_rx_reset: "Requests reset by the client",
        .downstream_rq_no_route: "Requests without a matching route",
        .downstream_rq_too_large: "Request heads over the size limit",
        .downstream_cx_rx_bytes_total: "Bytes received from clients",
        .downstream_cx_tx_bytes_total: "Bytes sent to clients",
        .downstream_rq_body_too_large: "Requests whose body was over max_request_body",
        .dropped_headers_with_underscores: "Request header fields dropped for an underscore in the name",
        .requests_rejected_with_underscores_in_headers: "Requests rejected for an underscore in a header name",
        .downstream_cx_buffer_limit_reached: "HTTP/2 connections that went over per_connection_buffer_limit",
        .downstream_rq_overload_refused: "Requests refused by the overload level",
        .downstream_cx_overload_reject: "Connections closed at accept by the overload level",
        .access_log_dropped: "Access log lines dropped because the writer was behind",
        .ssl_handshake: "TLS handshakes completed",
        .ssl_connection_error: "TLS handshakes that failed",
        .ssl_fail_verify_no_cert: "TLS clients refused for presenting no certificate (client_ca)",
        .ssl_fail_verify_error: "TLS clients refused for a certificate that did not verify",
        .ssl_plaintext_accepted: "Connections to a TLS listener with allow_plaintext that spoke plaintext",
        .ssl_passthrough_accepted: "TLS without ALPN remora-mesh on a permissive sidecar inbound, passed on untouched",
        .ssl_session_reused: "TLS handshakes that resumed a session",
        .ssl_connection_expired: "TLS connections closed because a certificate they were made with expired",
        .rbac_allowed: "Requests (TCP: connections) an authorization policy allowed",
        .rbac_denied: "Requests (TCP: connections) an authorization policy denied",
        .downstream_rq_failed_path_normalization: "Requests refused by path normalization (escaped slash, bad escape)",
        .downstream_cx_overflow: "Connections closed at accept over the listener's max_connections",
        .downstream_global_cx_overflow: "Connections closed at accept over the process-wide max_connections",
        .tls_found: "Connections that started with a whole TLS ClientHello",
        .tls_not_found: "Connections sniffed for TLS that did not start with a ClientHello",
        .sni_found: "ClientHellos with a server name",
        .sni_not_found: "ClientHellos without a server name",
        .client_hello_too_large: "ClientHellos larger than max_sniff_bytes",
        .http11_found: "Sniffed connections that started with an HTTP/1.x request",
        .http2_found: "Sniffed connections that started with the HTTP/2 preface",
        .http_not_found: "Sniffed connections that were not HTTP",
        .downstream_pre_cx_timeout: "Connections whose first bytes did not come within sniff_timeout",
        .sni_route_matched: "TLS connections routed by their server name",
        .sni_route_default: "TLS connections sent to the default cluster",
        .no_filter_chain_match: "TLS connections closed: no cluster for their server name",
        .sidecar_service_matched: "Sidecar connections sent to a configured service",
        .sidecar_passthrough: "Sidecar connections sent on to their original destination",
        .sidecar_passthrough_denied: "Sidecar connections closed by passthrough: deny",
        .sidecar_no_original_dst: "Sidecar connections without a usable original destination",
        .downstream_cx_upgrades_total: "Connections upgraded to a tunnel (WebSocket)",
        .downstream_cx_upgrades_active: "Upgraded connections (tunnels) open",
        .downstream_rq_upgrade_refused: "Upgrade requests refused with 403",
        .tracing_spans_dropped: "Sampled spans dropped because the OTLP exporter was behind",
    ]
}

/// Histograms of one listener: `listener.<name>.<histogram>` (Prometheus: `envoy_http_…`).
public enum ListenerHistogram: Int, HistogramGroup {
    /// From the request head to the end of the response (or of the exchange), microseconds.
    case downstream_rq_time

    public var help: String { "Time from the request head to the end of the exchange, milliseconds" }
}

/// Histograms of one cluster: `cluster.<name>.<histogram>`.
public enum ClusterHistogram: Int, HistogramGroup {
    /// From an attempt's start to its response head or its failure (the outcome hook's latency).
    case upstream_rq_time
    /// From the start of a TCP connect to the connection being established.
    case upstream_cx_connect_ms

    public var help: String {
        switch self {
        case .upstream_rq_time: return "Time from an upstream attempt's start to its response head or failure, milliseconds"
        case .upstream_cx_connect_ms: return "Time to establish an upstream connection, milliseconds"
        }
    }
}

/// Upstream (backend side) stats of one cluster: `cluster.<name>.<stat>`.
public enum ClusterStat: Int, StatGroup, Sendable {
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
    /// Mirrored copies (`mirror:`, counted in the shadow cluster) dropped by design before their
    /// request was complete: the cluster could not take body bytes at once, the client went away, or
    /// the cluster's `max_requests` was reached.
    case upstream_rq_mirror_dropped
    /// Connections closed after carrying no request for the cluster's `idle_timeout`.
    case upstream_cx_idle_timeout
    /// Picks made over every endpoint because fewer than `panic_threshold` % were available.
    case lb_healthy_panic
    /// Circuit breakers (`circuit_breaker:`): connections not opened over `max_connections`,
    /// requests refused over `max_pending` and over `max_requests` (each answered 503 overloaded).
    case upstream_cx_overflow, upstream_rq_pending_overflow, upstream_rq_overflow
    /// TLS to the endpoints (`tls:`): handshakes completed, failed (any reason), failed because the
    /// server's certificate did not verify or lacked every `verify_san`, resumed a session.
    case ssl_handshake, ssl_connection_error, ssl_fail_verify_error, ssl_session_reused
    /// Connections not used again because a certificate they were made with expired (`close_expired`).
    case ssl_connection_expired
    /// `protocol: auto`: connections whose server chose HTTP/1.1 (or no ALPN) and h2 (Envoy's
    /// names), and connections opened for one protocol whose server chose the other (their
    /// requests moved to the other codec before a byte was sent).
    case upstream_cx_http1_total, upstream_cx_http2_total, upstream_cx_alpn_switched

    public typealias Histogram = ClusterHistogram
    /// Label sets (status, grpc-status, protocol, flags) of the cluster's requests.
    public static var seriesCapacity: Int { 65 }

    public var kind: StatKind {
        switch self {
        case .upstream_cx_active, .upstream_rq_active: return .gauge
        default: return .counter
        }
    }

    public var help: String { Self.helpLines[self] ?? "\(self)" }

    /// HELP lines (a stat added without one shows its name).
    static let helpLines: [ClusterStat: String] = [
        .upstream_cx_total: "Upstream connections opened",
        .upstream_cx_active: "Upstream connections open",
        .upstream_cx_connect_fail: "Upstream connects that failed",
        .upstream_cx_connect_timeout: "Upstream connects that timed out",
        .upstream_cx_destroy_remote: "Upstream connections closed by the upstream",
        .upstream_cx_pool_reuse: "Requests sent on a pooled connection",
        .upstream_rq_total: "Requests sent to the cluster",
        .upstream_rq_active: "Requests in flight to the cluster",
        .upstream_rq_timeout: "Requests whose response head did not come in time",
        .upstream_rq_retry: "Attempts sent again",
        .upstream_rq_1xx: "Upstream responses by status class",
        .upstream_rq_2xx: "Upstream responses by status class",
        .upstream_rq_3xx: "Upstream responses by status class",
        .upstream_rq_4xx: "Upstream responses by status class",
        .upstream_rq_5xx: "Upstream responses by status class",
        .upstream_rq_reset_after_head: "Responses cut after their head was forwarded",
        .upstream_cx_rx_bytes_total: "Bytes received from upstreams",
        .upstream_cx_tx_bytes_total: "Bytes sent to upstreams",
        .upstream_cx_connect_rate_limited: "Connects refused by max_connects_per_second",
        .upstream_rq_cancelled_unsent: "Requests cancelled before any byte of them was sent",
        .upstream_rq_mirror_dropped: "Mirrored copies dropped before their request was complete (the cluster could not take the body at once, the client went away, or max_requests)",
        .ssl_handshake: "TLS handshakes with upstreams completed",
        .ssl_connection_error: "TLS handshakes with upstreams that failed",
        .ssl_fail_verify_error: "Upstream certificates that did not verify (CA or verify_san)",
        .ssl_session_reused: "TLS handshakes with upstreams that resumed a session",
        .ssl_connection_expired: "Upstream TLS connections retired because a certificate they were made with expired",
        .upstream_cx_http1_total: "protocol auto: upstream connections whose server chose HTTP/1.1 (or no ALPN)",
        .upstream_cx_http2_total: "protocol auto: upstream connections whose server chose h2",
        .upstream_cx_alpn_switched: "protocol auto: connections opened for one protocol whose server chose the other",
    ]
}

/// Per backend of a route, so an operator sees the real split:
/// `route.<listener>.<route>.<cluster>.<stat>`.
public enum RouteBackendStat: Int, StatGroup {
    public static let scope = "route"
    case upstream_rq_total, upstream_rq_1xx, upstream_rq_2xx, upstream_rq_3xx, upstream_rq_4xx, upstream_rq_5xx

    public var kind: StatKind { .counter }
    public var help: String {
        self == .upstream_rq_total ? "Requests a route sent to this backend" : "Answers to a route's backend by status class"
    }
}

/// Per rule of an authorization policy: `authz.<listener>.<rule>.<stat>` (a route's rules:
/// `authz.<listener>.<route>.<rule>.<stat>`).
public enum AuthzRuleStat: Int, StatGroup {
    public static let scope = "authz"
    /// Requests (connections) an allow rule let through; requests a deny rule refused.
    case allowed, denied

    public var kind: StatKind { .counter }
    public var help: String {
        self == .allowed ? "Requests an allow rule of an authorization policy matched" : "Requests a deny rule of an authorization policy matched"
    }
}

/// One scope's counters in one worker. Reference semantics over a malloc'd block that lives as
/// long as the worker (never freed while a reader may look at it).
/// After the counters come the component's histograms (`HistogramBuckets`, C: `REMORA_HIST_STRIDE`
/// words each), then its labelled series table (`REMORA_SERIES_ENTRY` words per entry).
public struct StatBlock<G: StatGroup>: @unchecked Sendable {
    public let words: UnsafeMutablePointer<UInt64>
    /// The first histogram's first word.
    public let histograms: UnsafeMutablePointer<UInt64>
    /// The series table (`G.seriesCapacity` entries).
    public let series: UnsafeMutablePointer<UInt64>

    public init() {
        let counters = G.allCases.count
        let hist = G.Histogram.allCases.count * Int(REMORA_HIST_STRIDE)
        let total = counters + hist + G.seriesCapacity * Int(REMORA_SERIES_ENTRY)
        words = .allocate(capacity: total)
        words.initialize(repeating: 0, count: total)
        histograms = words + counters
        series = histograms + hist
    }

    /// Records `micros` in histogram `h` (plain words, like the counters).
    @inline(__always) public func record(_ h: G.Histogram, micros: UInt64) {
        remora_histogram_record(histograms + h.rawValue * Int(REMORA_HIST_STRIDE), micros)
    }

    /// Records one request of label set `key` (non-zero, `RequestSeriesKey`) lasting `micros`.
    @inline(__always) public func recordSeries(_ key: UInt64, micros: UInt64) {
        remora_histogram_record(remora_series_find(series, UInt32(G.seriesCapacity), key), micros)
    }

    /// Histogram `h`: per-bucket counts (not cumulative, the last one above every bound) and the
    /// sum in microseconds, as read now (off the request path).
    public func read(_ h: G.Histogram) -> HistogramValue {
        HistogramValue(histograms + h.rawValue * Int(REMORA_HIST_STRIDE))
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
        public var kind: StatKind
        /// Prometheus' HELP line ("" = the stat's name).
        public var help: String
        /// The parts of `name` (a route: listener, route, cluster), for labels.
        public var nameParts: [String]

        public init(scope: String, name: String, stat: String, value: UInt64, kind: StatKind = .counter,
                    help: String = "", nameParts: [String]? = nil) {
            self.scope = scope; self.name = name; self.stat = stat; self.value = value
            self.kind = kind; self.help = help; self.nameParts = nameParts ?? (name.isEmpty ? [] : [name])
        }

        /// `scope.name.stat`, or `scope.stat` without a name.
        public var fullName: String { name.isEmpty ? "\(scope).\(stat)" : "\(scope).\(name).\(stat)" }
    }

    /// One histogram of one scope, summed over workers.
    public struct Histogram: Sendable, Equatable {
        public var scope: String
        public var name: String
        public var nameParts: [String]
        public var stat: String
        public var help: String
        public var value: HistogramValue

        public init(scope: String, name: String, nameParts: [String], stat: String, help: String, value: HistogramValue) {
            self.scope = scope; self.name = name; self.nameParts = nameParts; self.stat = stat; self.help = help; self.value = value
        }

        /// `scope.name.stat`.
        public var fullName: String { name.isEmpty ? "\(scope).\(stat)" : "\(scope).\(name).\(stat)" }
    }

    /// Requests of one label set (Istio's metrics) to one destination, summed over workers.
    public struct Series: Sendable, Equatable {
        /// The cluster, or "" for requests the proxy answered without one.
        public var destination: String
        public var key: RequestSeriesKey
        /// Durations of the requests (downstream request time); `count` is the request count.
        public var value: HistogramValue

        public init(destination: String, key: RequestSeriesKey, value: HistogramValue) {
            self.destination = destination; self.key = key; self.value = value
        }
    }

    public var samples: [Sample] = []
    public var histograms: [Histogram] = []
    public var series: [Series] = []

    public init(samples: [Sample] = [], histograms: [Histogram] = [], series: [Series] = []) {
        self.samples = samples; self.histograms = histograms; self.series = series
    }

    /// Every stat and histogram of `G` for scope `name`, each summed over `blocks` (one per
    /// worker). `nameParts`: the labels `name` is made of (default: `[name]`). `destination`:
    /// where the block's labelled series go (nil: they are not read).
    public mutating func add<G: StatGroup>(_: G.Type, name: String, nameParts: [String]? = nil, blocks: [StatBlock<G>],
                                           destination: String? = nil) {
        for s in G.allCases {
            var total: UInt64 = 0
            for b in blocks { total &+= b.load(s) }
            samples.append(Sample(scope: G.scope, name: name, stat: "\(s)", value: total, kind: s.kind, help: s.help,
                                  nameParts: nameParts))
        }
        for h in G.Histogram.allCases {
            var v = HistogramValue()
            for b in blocks { v.add(b.read(h)) }
            histograms.append(Histogram(scope: G.scope, name: name, nameParts: nameParts ?? [name], stat: "\(h)",
                                        help: h.help, value: v))
        }
        guard let destination, G.seriesCapacity > 0 else { return }
        var merged: [UInt64: HistogramValue] = [:]
        var order: [UInt64] = []
        for b in blocks {
            for i in 0..<G.seriesCapacity {
                let key = remora_series_key(b.series, UInt32(i))
                if key == 0 { continue }
                let v = HistogramValue(b.series + i * Int(REMORA_SERIES_ENTRY) + 1)
                if merged[key] == nil { order.append(key); merged[key] = v } else { merged[key]!.add(v) }
            }
        }
        for k in order.sorted() { series.append(Series(destination: destination, key: RequestSeriesKey(raw: k), value: merged[k]!)) }
    }

    /// One process-wide value: `add(scope: "server", stat: "workers", value: 4)`.
    public mutating func add(scope: String, name: String = "", stat: String, value: UInt64, kind: StatKind = .counter,
                             help: String = "") {
        samples.append(Sample(scope: scope, name: name, stat: stat, value: value, kind: kind, help: help))
    }
}

/// A histogram's value: counts per bucket of `HistogramBuckets` (not cumulative; one more at the
/// end for values above the last bound) and the sum of the values in microseconds.
public struct HistogramValue: Sendable, Equatable {
    public var buckets: [UInt64]
    public var sumMicros: UInt64

    public init(buckets: [UInt64]? = nil, sumMicros: UInt64 = 0) {
        self.buckets = buckets ?? Array(repeating: 0, count: HistogramBuckets.count + 1)
        self.sumMicros = sumMicros
    }

    /// Reads one histogram's words (`REMORA_HIST_STRIDE` of them).
    init(_ p: UnsafeMutablePointer<UInt64>) {
        buckets = (0...HistogramBuckets.count).map { remora_counter_load(p + $0) }
        sumMicros = remora_counter_load(p + HistogramBuckets.count + 1)
    }

    public mutating func add(_ o: HistogramValue) {
        for i in buckets.indices { buckets[i] &+= o.buckets[i] }
        sumMicros &+= o.sumMicros
    }

    /// Values recorded.
    public var count: UInt64 { buckets.reduce(0, &+) }

    /// Counts of values at or below each bound, then the total (`+Inf`): Prometheus' buckets.
    public var cumulative: [UInt64] {
        var run: UInt64 = 0
        return buckets.map { run &+= $0; return run }
    }

    /// The `q` quantile (0...1) in milliseconds, interpolated linearly inside its bucket (as
    /// Prometheus' histogram_quantile does); nil when empty.
    public func quantileMillis(_ q: Double) -> Double? {
        let total = count
        guard total > 0 else { return nil }
        let rank = q * Double(total)
        var run: UInt64 = 0
        for (i, c) in buckets.enumerated() {
            let prev = run
            run &+= c
            if Double(run) >= rank && c > 0 {
                let lo = i == 0 ? 0 : Double(HistogramBuckets.boundsMicros[i - 1]) / 1000
                guard i < HistogramBuckets.count else { return lo }
                let hi = Double(HistogramBuckets.boundsMicros[i]) / 1000
                return lo + (hi - lo) * (rank - Double(prev)) / Double(c)
            }
        }
        return nil
    }
}

/// The label set of one request in Istio's standard metrics, packed in one word (the series
/// table's key): response code, grpc-status, protocol, response flags, and the peers: the client's
/// identity and whether it came over mutual TLS, the upstream's identity (`PeerTag`s). Never 0.
public struct RequestSeriesKey: Sendable, Equatable, Hashable {
    public var raw: UInt64

    public init(raw: UInt64) { self.raw = raw }

    /// `status` 0...999 (0: no response), `grpcStatus` -1 (none) ... 30, `grpc`: the request was gRPC.
    @inline(__always)
    public init(status: Int, grpcStatus: Int, grpc: Bool, flags: ResponseFlags) {
        raw = 1 << 63 | UInt64(truncatingIfNeeded: status & 0x3ff) | UInt64(truncatingIfNeeded: (grpcStatus + 1) & 0x1f) << 10
            | (grpc ? 1 << 15 : 0) | UInt64(flags.rawValue) << 16
    }

    /// The same with the peers: `downstream`, `upstream` are the client's and the upstream's
    /// connection's `TCPConnection.peerTag` (0 and 0: the key above).
    @inlinable
    public init(status: Int, grpcStatus: Int, grpc: Bool, flags: ResponseFlags, downstream: UInt16, upstream: UInt16) {
        self.init(status: status, grpcStatus: grpcStatus, grpc: grpc, flags: flags)
        raw |= RequestSeriesKey.peerBits(downstream: downstream, upstream: upstream)
    }

    /// The bits the peers add to a key (0 for two plaintext connections).
    @inlinable @inline(__always)
    public static func peerBits(downstream: UInt16, upstream: UInt16) -> UInt64 {
        UInt64(downstream & 0x7f) << 48 | UInt64(upstream & 0x7f) << 55 | UInt64(downstream & 0x8000) << 47
    }

    /// The client's identity (`PeerIdentities` id; 0: none).
    public var sourcePrincipal: UInt16 { UInt16(truncatingIfNeeded: raw >> 48 & 0x7f) }
    /// The upstream's identity (its server certificate's, on a TLS cluster; 0: none).
    public var destinationPrincipal: UInt16 { UInt16(truncatingIfNeeded: raw >> 55 & 0x7f) }
    /// The client's connection was mutual TLS (a verified client certificate).
    public var mutualTLS: Bool { raw >> 62 & 1 == 1 }

    /// The entry that collects label sets that found no room in the table.
    public var isOverflow: Bool { raw == UInt64.max }
    public var status: Int { Int(raw & 0x3ff) }
    public var grpcStatus: Int { Int(raw >> 10 & 0x1f) - 1 }
    public var isGRPC: Bool { raw >> 15 & 1 == 1 }
    public var flags: ResponseFlags { ResponseFlags(rawValue: UInt32(truncatingIfNeeded: raw >> 16)) }
}

/// A connection's peer as Istio's metrics label it (`TCPConnection.peerTag`, set by the TLS layer
/// once per handshake): the low 7 bits are the peer's identity in `PeerIdentities` (0: none),
/// `mutualTLS` says a client certificate was verified (server side).
public enum PeerTag {
    public static let mutualTLS: UInt16 = 0x8000
}

/// Peer identities (mTLS principals: SPIFFE URIs, DNS names) as small numbers, so that a request's
/// metrics labels `source_principal` and `destination_principal` cost nothing per request: each is
/// interned once per TLS handshake (a lock then, never on the request path) and the request's
/// series key carries the number. At most `capacity` distinct identities per process keep their
/// own label; the rest share `overflow` (rendered `other`) and are counted (`overflowed`), so a
/// client population with many identities cannot grow the metrics without bound.
public final class PeerIdentities: Sendable {
    public static let shared = PeerIdentities()
    public static let capacity = 126
    public static let overflow: UInt16 = 127

    let state = Mutex<(ids: [String: UInt16], names: [String], overflowed: UInt64)>(([:], [], 0))

    public init() {}

    /// The identity's number, 1 ... 126, or `overflow`; 0 for nil or "".
    public func intern(_ identity: String?) -> UInt16 {
        guard let identity, !identity.isEmpty else { return 0 }
        return state.withLock { s in
            if let id = s.ids[identity] { return id }
            guard s.names.count < PeerIdentities.capacity else {
                s.overflowed &+= 1
                return PeerIdentities.overflow
            }
            s.names.append(identity)
            let id = UInt16(s.names.count)
            s.ids[identity] = id
            return id
        }
    }

    /// The label for `id`: the identity, `unknown` (0: none), `other` (over the cap).
    public func label(_ id: UInt16) -> String {
        if id == 0 { return "unknown" }
        if id == PeerIdentities.overflow { return "other" }
        return state.withLock { Int(id) <= $0.names.count ? $0.names[Int(id) - 1] : "unknown" }
    }

    /// Handshakes whose identity found no room (over `capacity`).
    public var overflowed: UInt64 { state.withLock { $0.overflowed } }
}

/// The process's overload level (`overload:`), written by the main thread once a second from the
/// resident set size and read by the workers when a request or a connection starts: 0 normal,
/// 1 refuse new requests, 2 refuse new connections as well. One aligned word with a constant
/// initializer (a plain load, no lazy-initialization check): a worker may see a new level one
/// request late, which is all the precision this needs.
nonisolated(unsafe) public var overloadLevel: UInt64 = 0
/// Resident set size at the last sample, bytes (0 while overload actions are off).
nonisolated(unsafe) public var overloadRSS: UInt64 = 0
