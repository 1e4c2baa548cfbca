import RemoraPolicy

/// The validated configuration model. Produced by `RemoraConfig` from YAML (or, later, by the
/// control plane), compiled once, then shared read-only by every worker as part of a snapshot.
/// Every duration is in milliseconds, every size in bytes.

/// Milliseconds. libuv timers count in milliseconds, so durations stay in this unit end to end.
public typealias Millis = UInt64

/// A `host:port` as written in the config: IPv4 literal, `[IPv6]` literal, or a DNS name that is
/// resolved once when the config is loaded.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    /// Host without brackets: "127.0.0.1", "::1", "localhost".
    public var host: String
    /// TCP port, 0...65535 (0 = let the OS choose; only meaningful for listeners).
    public var port: UInt16

    public init(host: String, port: UInt16) { self.host = host; self.port = port }

    /// True when `host` is an IPv6 literal (contains a colon).
    public var isIPv6Literal: Bool { host.contains(":") }

    public var description: String { isIPv6Literal ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses "1.2.3.4:80", "[::1]:80", "name:80". Returns nil on any malformed input.
    public static func parse(_ s: String) -> HostPort? {
        var host: Substring
        var portPart: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { return nil }
            host = s[s.index(after: s.startIndex)..<close]
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portPart = rest.dropFirst()
            guard host.contains(":") else { return nil }
        } else {
            guard let colon = s.lastIndex(of: ":") else { return nil }
            host = s[..<colon]
            portPart = s[s.index(after: colon)...]
            if host.contains(":") { return nil } // IPv6 must be bracketed
        }
        guard !host.isEmpty, !portPart.isEmpty, portPart.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = UInt16(portPart) else { return nil }
        return HostPort(host: String(host), port: port)
    }
}

public struct Config: Sendable, Equatable {
    /// Admin server (GET /ready, GET /stats). nil = no admin server.
    public var admin: AdminConfig?
    /// Worker threads, each with its own event loop. 0 = one per CPU core (resolved at start).
    public var workers: Int
    /// How long SIGTERM waits for in-flight requests before closing what is left. Default 5 s.
    public var drainTimeout: Millis
    public var listeners: [ListenerConfig]
    public var clusters: [ClusterConfig]
    /// Process-wide overload actions by resident memory. nil = none (the default: the per-connection
    /// buffer limits already bound what clients can make the proxy hold).
    public var overload: OverloadConfig?
    /// This proxy's name in Istio's metrics (`source_workload`). nil = `--node`, else "remora".
    public var node: String?
    /// Downstream connections open at once over the whole process, every listener together
    /// (`max_connections:` at the top level); over it a new connection is accepted and closed at
    /// once (`downstream_global_cx_overflow`). nil = no limit (the default). Range 1 ... 10_000_000.
    public var maxConnections: Int?
    /// Sidecar mode (`sidecar:`, `remora run --sidecar`); its listeners are in `listeners`. nil = off.
    public var sidecar: SidecarConfig?

    public init(admin: AdminConfig? = nil, workers: Int = 0, drainTimeout: Millis = 5_000,
                listeners: [ListenerConfig] = [], clusters: [ClusterConfig] = [], overload: OverloadConfig? = nil,
                node: String? = nil) {
        self.admin = admin; self.workers = workers; self.drainTimeout = drainTimeout
        self.listeners = listeners; self.clusters = clusters; self.overload = overload; self.node = node
    }

    public func cluster(named name: String) -> ClusterConfig? { clusters.first { $0.name == name } }
}

/// What the proxy does when its resident memory (RSS, sampled once a second) grows too large.
/// YAML: `overload: { refuse_streams_above: 1GiB, refuse_connections_above: 1280MiB }`.
public struct OverloadConfig: Sendable, Equatable {
    /// Above this RSS, bytes: new requests are refused (HTTP/2 RST_STREAM REFUSED_STREAM, HTTP/1.1
    /// 503 and close); requests in flight go on. Range 1 MiB ... 1 TiB.
    public var refuseStreamsAbove: Int
    /// Above this RSS, bytes: new connections are accepted and closed at once. At least
    /// `refuseStreamsAbove`; default 1.25 x it.
    public var refuseConnectionsAbove: Int

    public init(refuseStreamsAbove: Int, refuseConnectionsAbove: Int? = nil) {
        self.refuseStreamsAbove = refuseStreamsAbove
        self.refuseConnectionsAbove = refuseConnectionsAbove ?? refuseStreamsAbove + refuseStreamsAbove / 4
    }
}

public struct AdminConfig: Sendable, Equatable {
    public var address: HostPort
    /// Bearer token that `POST /drain` and `POST /quitquitquit` must carry (`authorization: Bearer
    /// TOKEN`); nil = none (a warning at start when `address` is not loopback). Fixed at start.
    public var token: String?
    public init(address: HostPort, token: String? = nil) { self.address = address; self.token = token }
}

public enum ListenerProtocol: String, Sendable, Equatable, CaseIterable {
    /// HTTP/1.1 (and, from the HTTP/2 issue on, h2c with prior knowledge on the same port).
    case http
    /// Raw TCP forwarded to one cluster.
    case tcp
    /// TLS passed through without being terminated, to a cluster chosen by the ClientHello's server
    /// name (SNI): `sni` routes, `cluster` the default.
    case tls
    /// The sidecar's outbound listener (made by the `sidecar:` section, not written as a protocol):
    /// connections redirected by iptables, sent on by their original destination.
    case sidecarOutbound = "sidecar_outbound"
    /// The sidecar's inbound listener: redirected connections sent to the application on 127.0.0.1.
    case sidecarInbound = "sidecar_inbound"
}

public struct ListenerConfig: Sendable, Equatable {
    /// Unique among listeners; used in stat names (`listener.<name>.…`).
    public var name: String
    public var address: HostPort
    public var `protocol`: ListenerProtocol
    /// HTTP: the request head must be complete within this long, else 408 and close. Default 10 s.
    public var requestHeaderTimeout: Millis
    /// HTTP: a request head larger than this gets 431. Default 60 KiB. Range 1 KiB ... 1 MiB.
    public var maxRequestHeaderBytes: Int
    /// HTTP: idle keep-alive connections close after this long; a stalled body stream is aborted
    /// after this long without progress. TCP: a connection with no bytes either way closes. Default 60 s.
    public var idleTimeout: Millis
    /// HTTP only: HTTP/2 (h2c) settings advertised to clients on this listener.
    public var http2: HTTP2Settings
    /// HTTP only: the request's authority picks one virtual host (see `VirtualHostConfig`), whose
    /// routes are tried in order; the first match wins. No host or no route matches -> 404 from the
    /// proxy (gRPC: UNIMPLEMENTED). YAML `routes:` is one catch-all virtual host named "default".
    public var virtualHosts: [VirtualHostConfig]
    /// TCP only: the cluster that receives the bytes.
    public var cluster: String?
    /// HTTP: a request must be received whole (body included) within this long after its head,
    /// else 408 (the response not started) or a reset; bounds slow-body attacks that the idle
    /// timeout cannot (every byte is progress). gRPC requests are exempt: their deadline is
    /// `grpc-timeout`, and a healthy client stream may last hours. A route may set its own. 0 = off.
    /// Default 60 s.
    public var requestTimeout: Millis
    /// HTTP: largest request body, bytes: a larger Content-Length gets 413 before anything is
    /// forwarded; a body without a length (chunked, HTTP/2) that grows past it gets 413, or a reset
    /// once the response started. gRPC requests are exempt. 0 = no limit. Default 1 GiB.
    public var maxRequestBodyBytes: UInt64
    /// HTTP: request header names containing `_`. Default `drop`.
    public var headersWithUnderscores: HeadersWithUnderscores
    /// HTTP only: response bytes all the HTTP/2 streams of one client connection may hold in the
    /// proxy together (Envoy's per_connection_buffer_limit_bytes). Beyond it the upstreams feeding
    /// that connection stop being read (HTTP/1.1) or get no more credit (HTTP/2) until the client
    /// has taken half of it. Default 1 MiB, range 64 KiB ... 1 GiB.
    public var perConnectionBufferLimit: Int
    /// The listener's access log: one line per request (HTTP) or per connection (TCP), written off
    /// the request path. nil = none (the default).
    public var accessLog: AccessLogConfig?
    /// HTTP: request ids and trace propagation. nil = none (the default): headers pass as they are.
    public var tracing: TracingConfig?
    /// TLS termination (certificates, ALPN, mutual TLS). nil = plaintext (the default).
    public var tls: ListenerTLSConfig?
    /// HTTP: how request paths are normalized before routing, authorization and forwarding
    /// (`path_normalization:`). Default: every step on, escaped slashes per `escapedSlashes`.
    public var pathNormalization = PathNormalization()
    /// Who may do what (`authorization:`): HTTP listeners check every request (403, gRPC
    /// PERMISSION_DENIED), TCP listeners every connection (closed at once). nil = everything allowed.
    public var authorization: AuthorizationPolicy?
    /// Connections open at once on this listener over all workers (`max_connections:`); over it a
    /// new connection is accepted and closed at once (HTTP: a 503 first), counted in
    /// `downstream_cx_overflow`. nil = no limit (the default). Range 1 ... 10_000_000.
    public var maxConnections: Int?
    /// TLS: clusters by the ClientHello's server name, tried exact names first, then the longest
    /// `*.suffix` wildcard; `cluster` is the default (none: such connections are closed).
    public var sni: [SNIRoute] = []
    /// TLS and the sidecar's outbound listener: how long the first bytes (a whole ClientHello on a
    /// TLS listener) may take after the accept. TLS: the connection is closed after it (default 5 s);
    /// sidecar: what came is proxied as opaque TCP (default 300 ms, `sidecar.sniff_timeout`).
    public var sniffTimeout: Millis = 5_000
    /// TLS and the sidecar's outbound listener: the most bytes read while deciding (a ClientHello
    /// larger than this is not routed by its name). Default 16 KiB, range 1 KiB ... 64 KiB.
    public var maxSniffBytes: Int = 16 * 1024
    /// Made by the `sidecar:` section for one service's HTTP traffic: not bound to an address; the
    /// outbound listener hands it the connections its sniffing found to be HTTP.
    public var isInternal = false
    /// The sidecar's outbound listener: its services and passthrough policy.
    public var sidecar: SidecarOutbound?
    // Tunnels (issue 18: WebSocket, CONNECT).
    /// HTTP: a tunnel (an upgraded WebSocket connection) with no byte either way for this long is
    /// closed. 0 = never. Default 5 min (Envoy's stream idle timeout, which its upgrades inherit).
    public var tunnelIdleTimeout: Millis = 300_000
    /// HTTP: `CONNECT host:port` opens a TCP tunnel to an allowed destination (`connect:`); nil =
    /// CONNECT is refused with 405 (the default: an open proxy is never an accident).
    public var connect: ConnectConfig?

    public init(name: String, address: HostPort, protocol: ListenerProtocol = .http,
                requestHeaderTimeout: Millis = 10_000, maxRequestHeaderBytes: Int = 60 * 1024,
                idleTimeout: Millis = 60_000, http2: HTTP2Settings = HTTP2Settings(),
                virtualHosts: [VirtualHostConfig] = [], cluster: String? = nil, requestTimeout: Millis = 60_000,
                maxRequestBodyBytes: UInt64 = 1 << 30, headersWithUnderscores: HeadersWithUnderscores = .drop,
                perConnectionBufferLimit: Int = 1 << 20, accessLog: AccessLogConfig? = nil, tracing: TracingConfig? = nil) {
        self.name = name; self.address = address; self.protocol = `protocol`; self.http2 = http2
        self.requestHeaderTimeout = requestHeaderTimeout; self.maxRequestHeaderBytes = maxRequestHeaderBytes
        self.idleTimeout = idleTimeout; self.virtualHosts = virtualHosts; self.cluster = cluster
        self.requestTimeout = requestTimeout; self.maxRequestBodyBytes = maxRequestBodyBytes
        self.headersWithUnderscores = headersWithUnderscores
        self.perConnectionBufferLimit = perConnectionBufferLimit
        self.accessLog = accessLog
        self.tracing = tracing
    }
}

/// What becomes of a request header whose name contains `_`. A CGI/WSGI backend maps `_` and `-`
/// to the same variable, so `Transfer_Encoding: chunked` beside a real Content-Length could change
/// the framing there. nginx drops such fields by default; Envoy can drop or reject them.
public enum HeadersWithUnderscores: String, Sendable, Equatable, CaseIterable {
    /// Forwarded unchanged.
    case allow
    /// Removed before routing and forwarding, counted (`dropped_headers_with_underscores`).
    case drop
    /// The request gets 400 (`requests_rejected_with_underscores_in_headers`).
    case reject
}

/// A set of domains one listener serves, with its own routes (Envoy's virtual host).
public struct VirtualHostConfig: Sendable, Equatable {
    /// Unique within its listener.
    public var name: String
    /// At least one; each unique within the listener, compared ignoring case. `api.example.com`
    /// (that host, any port), `api.example.com:8443` (that host and port), `*.example.com` (any host
    /// ending in ".example.com", not example.com itself), `*` (any host). The most specific pattern
    /// wins whatever the order: exact, then the longest wildcard suffix, then `*`; with a port
    /// before without.
    public var domains: [String]
    /// Ordered; the first match wins.
    public var routes: [RouteConfig]

    public init(name: String, domains: [String] = ["*"], routes: [RouteConfig]) {
        self.name = name; self.domains = domains; self.routes = routes
    }
}

public struct RouteConfig: Sendable, Equatable {
    /// Unique within its listener (across its virtual hosts); used in stat names.
    public var name: String
    public var match: RouteMatch
    public var action: RouteAction
    /// Forward: the path sent upstream; redirect: the path in Location. nil = unchanged.
    public var rewrite: PathRewrite?
    /// Forward only: applied to the request sent upstream.
    public var requestHeaders: HeaderRewrite
    /// Applied to the response sent downstream (upstream responses, redirects, direct responses).
    public var responseHeaders: HeaderRewrite
    /// Checked after the listener's policy (both must allow): a route can only narrow what its
    /// listener allows. nil = the listener's alone.
    public var authorization: AuthorizationPolicy?

    public init(name: String, match: RouteMatch = RouteMatch(), action: RouteAction, rewrite: PathRewrite? = nil,
                requestHeaders: HeaderRewrite = HeaderRewrite(), responseHeaders: HeaderRewrite = HeaderRewrite()) {
        self.name = name; self.match = match; self.action = action; self.rewrite = rewrite
        self.requestHeaders = requestHeaders; self.responseHeaders = responseHeaders
    }
}

/// What a request must look like for a route to apply. All given conditions must hold.
public struct RouteMatch: Sendable, Equatable {
    /// Matched against the path without the query, after the listener's `path_normalization`
    /// (nothing else is decoded). Ignored when `grpc` is set.
    public var path: PathMatch
    /// gRPC sugar: path `/service/method` (or prefix `/service/` without a method) and a
    /// content-type `application/grpc`, `application/grpc+…` or `application/grpc;…`.
    public var grpc: GRPCMatch?
    /// Any of these methods (case-sensitive, "GET"); empty = any method.
    public var methods: [String]
    /// Header conditions, all of which must hold; names compared ignoring case.
    public var headers: [FieldMatch]
    /// Query parameter conditions, all of which must hold. Names and values are compared as
    /// received, percent-encoding included (`a%20b` is not `a b`).
    public var queryParameters: [FieldMatch]
    /// The peer's verified identity (mTLS: SPIFFE URI SAN, else the first DNS SAN) is this (`exact`)
    /// or starts with it (`prefix`); a request without one never matches. nil = no condition.
    public var principal: PrincipalMatch?

    public init(path: PathMatch = .prefix("/"), grpc: GRPCMatch? = nil, methods: [String] = [],
                headers: [FieldMatch] = [], queryParameters: [FieldMatch] = []) {
        self.path = path; self.grpc = grpc; self.methods = methods
        self.headers = headers; self.queryParameters = queryParameters
    }
}

public struct PathMatch: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// The path starts with `value`.
        case prefix
        /// The path equals `value`.
        case exact
        /// `value` (RE2 syntax) matches the whole path.
        case regex
    }
    public var kind: Kind
    public var value: String
    /// ASCII letters compare ignoring case (for a regex: RE2's case-insensitive mode).
    public var ignoreCase: Bool

    public init(_ kind: Kind, _ value: String, ignoreCase: Bool = false) {
        self.kind = kind; self.value = value; self.ignoreCase = ignoreCase
    }
    public static func prefix(_ v: String, ignoreCase: Bool = false) -> PathMatch { PathMatch(.prefix, v, ignoreCase: ignoreCase) }
    public static func exact(_ v: String, ignoreCase: Bool = false) -> PathMatch { PathMatch(.exact, v, ignoreCase: ignoreCase) }
    public static func regex(_ v: String, ignoreCase: Bool = false) -> PathMatch { PathMatch(.regex, v, ignoreCase: ignoreCase) }
}

public struct GRPCMatch: Sendable, Equatable {
    /// Fully qualified service: "pkg.Svc".
    public var service: String
    /// nil = every method of the service.
    public var method: String?
    public init(service: String, method: String? = nil) { self.service = service; self.method = method }
}

/// One condition on a header or a query parameter. When the name occurs several times, a value
/// condition holds if any occurrence satisfies it.
public struct FieldMatch: Sendable, Equatable {
    /// Header name (any case) or query parameter name (exact bytes).
    public var name: String
    public var value: ValueMatch
    /// ASCII letters of the value compare ignoring case (regex: case-insensitive mode).
    public var ignoreCase: Bool
    /// The condition holds when the test fails.
    public var invert: Bool

    public init(name: String, _ value: ValueMatch, ignoreCase: Bool = false, invert: Bool = false) {
        self.name = name; self.value = value; self.ignoreCase = ignoreCase; self.invert = invert
    }
}

public enum ValueMatch: Sendable, Equatable {
    case present, absent
    case exact(String), prefix(String), suffix(String), contains(String)
    /// RE2 syntax, matched against the whole value.
    case regex(String)
}

public enum RouteAction: Sendable, Equatable {
    /// Proxy to one of the backends.
    case forward(ForwardAction)
    /// Answer with a redirect.
    case redirect(RedirectAction)
    /// Answer with a fixed response.
    case respond(DirectResponse)
}

public struct ForwardAction: Sendable, Equatable {
    /// One or more clusters with integer weights (share = weight / sum). At least one weight > 0.
    public var backends: [WeightedBackend]
    /// Sticky split: requests with the same key go to the same backend while the weights stay the
    /// same. nil, or no key in the request = a random pick.
    public var hashOn: HashKey?
    /// Time allowed for the upstream to produce the response head, after which the proxy answers
    /// 504. 0 disables it. Default 15 s.
    public var timeout: Millis
    /// Copies of a share of the requests go to a shadow cluster (responses discarded).
    public var mirror: MirrorPolicy?
    /// The listener's `requestTimeout` for this route's requests; nil = the listener's.
    public var requestTimeout: Millis?
    /// Retries of failed tries (`retry:`); nil = none beyond the proxy's own safe ones (connect
    /// failure with another endpoint, refused streams, the keep-alive race of idempotent requests).
    public var retry: RetryPolicy?
    /// Fault injection (`fault:`): delays and aborts for a share of the requests; nil = none.
    public var fault: FaultPolicy?
    /// Local rate limit (`rate_limit:`), one token bucket for the route over the whole proxy; nil = none.
    public var rateLimit: RateLimitPolicy?
    // Upgrades (issue 18).
    /// Protocols a request may switch to on this route (`upgrade:`): `Connection: upgrade` +
    /// `Upgrade: websocket` is forwarded and a 101 turns both connections into a tunnel. Default
    /// `[websocket]` (see docs/config.md); `[]` refuses upgrades with 403. Applies toward HTTP/1.1
    /// clusters; an upgrade toward an HTTP/2 cluster is refused.
    public var upgrade: [UpgradeProtocol] = [.websocket]
    /// gRPC-Web (`grpc_web:`, issue 18): `application/grpc-web(+proto)` and `-text` requests are
    /// translated to gRPC toward the (HTTP/2) cluster and their responses back; nil = off.
    public var grpcWeb: GRPCWebConfig?

    public init(backends: [WeightedBackend], hashOn: HashKey? = nil, timeout: Millis = 15_000, mirror: MirrorPolicy? = nil,
                requestTimeout: Millis? = nil) {
        self.backends = backends; self.hashOn = hashOn; self.timeout = timeout; self.mirror = mirror
        self.requestTimeout = requestTimeout
    }

    public init(backends: [WeightedBackend], hashOn: HashKey? = nil, timeout: Millis = 15_000, mirror: MirrorPolicy? = nil,
                requestTimeout: Millis? = nil, retry: RetryPolicy?) {
        self.init(backends: backends, hashOn: hashOn, timeout: timeout, mirror: mirror, requestTimeout: requestTimeout)
        self.retry = retry
    }
}

/// CONNECT tunnels on a listener (issue 18), the egress-proxy case: `connect: { cluster: NAME }`.
/// The allowed destinations are that cluster's endpoints, as written (`host:port`, a name compared
/// ignoring case) or as the addresses they resolve to; a CONNECT to anything else gets 403. The
/// tunnel counts in the cluster's stats and obeys its connect timeout and circuit breakers.
public struct ConnectConfig: Sendable, Equatable {
    public var cluster: String
    public init(cluster: String) { self.cluster = cluster }
}

/// gRPC-Web on a route (`grpc_web: { allow_origins: [...] }`).
public struct GRPCWebConfig: Sendable, Equatable {
    /// Origins whose browsers may call the route (CORS): a preflight (`OPTIONS` with
    /// `Access-Control-Request-Method`) from one is answered 204 by the proxy, and responses to it
    /// carry `access-control-allow-origin` and expose the grpc-status fields. `"*"` = any origin.
    /// Empty (the default) = no CORS handling.
    public var allowOrigins: [String]
    public init(allowOrigins: [String] = []) { self.allowOrigins = allowOrigins }

    /// Whether `origin` is allowed.
    public func allows(_ origin: String) -> Bool { allowOrigins.contains("*") || allowOrigins.contains(origin) }
}

/// A protocol a route lets requests upgrade to (`upgrade:`).
public enum UpgradeProtocol: String, Sendable, Equatable, CaseIterable {
    case websocket
}

public enum HashKey: Sendable, Equatable {
    /// The first value of this header (any case).
    case header(String)
    /// The value of this cookie.
    case cookie(String)
}

public struct MirrorPolicy: Sendable, Equatable {
    public var cluster: String
    /// Share of requests copied, in millionths: 0 ... 1_000_000 (= all). YAML `percent: 12.5`.
    public var perMillion: UInt32
    public init(cluster: String, perMillion: UInt32 = 1_000_000) { self.cluster = cluster; self.perMillion = perMillion }
}

public struct RedirectAction: Sendable, Equatable {
    /// "http" or "https"; nil keeps the request's scheme.
    public var scheme: String?
    /// "host" or "host:port"; nil keeps the request's authority (without its port when `scheme` is set).
    public var host: String?
    /// 301, 302, 303, 307 or 308. Default 301.
    public var code: Int
    /// Drop the request's query from Location.
    public var stripQuery: Bool

    public init(scheme: String? = nil, host: String? = nil, code: Int = 301, stripQuery: Bool = false) {
        self.scheme = scheme; self.host = host; self.code = code; self.stripQuery = stripQuery
    }
}

public struct DirectResponse: Sendable, Equatable {
    /// 200 ... 599.
    public var status: Int
    public var body: String
    public init(status: Int, body: String = "") { self.status = status; self.body = body }
}

public enum PathRewrite: Sendable, Equatable {
    /// The whole path becomes this.
    case path(String)
    /// The part of the path the route's prefix (or exact) match covered becomes this.
    case prefix(String)
    /// Every match of `regex` in the path is replaced by `substitution` (`\1` = group 1, `\\` = a backslash).
    case regex(String, substitution: String)
}

/// Header changes, applied in this order: remove, set (replaces every value), add (appends a value).
/// Values are literal.
public struct HeaderRewrite: Sendable, Equatable {
    public var set: [HeaderValue]
    public var add: [HeaderValue]
    public var remove: [String]
    public init(set: [HeaderValue] = [], add: [HeaderValue] = [], remove: [String] = []) {
        self.set = set; self.add = add; self.remove = remove
    }
}

public struct HeaderValue: Sendable, Equatable {
    public var name: String
    public var value: String
    public init(_ name: String, _ value: String) { self.name = name; self.value = value }
}

public struct WeightedBackend: Sendable, Equatable {
    public var cluster: String
    /// 0 ... 1_000_000; 0 drains the backend. Default 1.
    public var weight: UInt32
    public init(cluster: String, weight: UInt32 = 1) { self.cluster = cluster; self.weight = weight }
}

/// `dns_lookup_family:` — which of the addresses an endpoint name resolves to become endpoints
/// (IP literals are taken as written).
public enum DNSLookupFamily: String, Sendable, Equatable, CaseIterable {
    /// Every address, IPv4 and IPv6 (the default).
    case all
    /// IPv4 addresses only (a name with none does not resolve).
    case v4Only = "v4_only"
    /// IPv6 addresses only (a name with none does not resolve).
    case v6Only = "v6_only"
    /// The IPv4 addresses when there are any, else the IPv6 ones: `localhost` is 127.0.0.1 only,
    /// not also ::1 where nothing listens.
    case v4Preferred = "v4_preferred"

    /// The addresses to keep of `isIPv6` (one per address, in the resolver's order), by index.
    public func keep(_ isIPv6: [Bool]) -> [Int] {
        let v4 = isIPv6.indices.filter { !isIPv6[$0] }, v6 = isIPv6.indices.filter { isIPv6[$0] }
        switch self {
        case .all: return Array(isIPv6.indices)
        case .v4Only: return v4
        case .v6Only: return v6
        case .v4Preferred: return v4.isEmpty ? v6 : v4
        }
    }
}

public enum ClusterProtocol: String, Sendable, Equatable, CaseIterable {
    case http1
    case http2
    /// TLS clusters only: each connection speaks what the server's ALPN answer picks (`h2`:
    /// HTTP/2, `http/1.1` or none: HTTP/1.1). The default of a TLS cluster whose `alpn` offers both.
    case auto
}

public struct ClusterConfig: Sendable, Equatable {
    /// Unique among clusters; used in stat names (`cluster.<name>.…`).
    public var name: String
    public var `protocol`: ClusterProtocol
    /// At least one. Names are resolved once when the config is loaded.
    public var endpoints: [HostPort]
    /// Time allowed for a TCP connect to an endpoint. Default 5 s.
    public var connectTimeout: Millis
    /// A hard cap on idle HTTP/1.1 keep-alive connections per endpoint per worker, range 0 ... 100_000.
    /// Default nil: no cap but demand (the pool keeps what the recent peak of concurrent requests
    /// needed; `idleTimeout` closes the rest).
    public var maxIdlePerEndpoint: Int?
    /// An upstream connection that carries no request for this long closes (HTTP/1.1 idle in the
    /// pool; HTTP/2 with no stream open). Default 60 s; more than 0.
    public var idleTimeout: Millis
    /// `protocol: http2` only: what this proxy advertises to the upstream. The peer's own
    /// SETTINGS_MAX_CONCURRENT_STREAMS decides how many streams share one connection.
    public var http2: HTTP2Settings
    /// New TCP connections each worker may open to this cluster per second (a token bucket holding
    /// one second's worth). A request that would need one more gets 503 (gRPC UNAVAILABLE) at once.
    /// 0 = no limit. Default 1000, range 0 ... 1_000_000.
    public var maxConnectsPerSecond: Int
    /// Retries in flight per worker may not exceed this share of the cluster's active requests
    /// (with a floor); nil = unbounded (only `attempts` limits them). On by default: 20 %, 3.
    public var retryBudget: RetryBudget?
    /// Per endpoint (same order as `endpoints`): its relative share, 1 ... 10_000 (`{ address, weight }`).
    /// Empty: every endpoint weighs 1. An endpoint named by a host resolving to several
    /// addresses gives each address its weight.
    public var endpointWeights: [Int] = []
    /// The load balancer (`lb:`). Default `peak_ewma` (docs/config.md says why).
    public var lb: BalancerKind = ClusterConfig.defaultBalancer
    /// `ring_hash` / `maglev`: where a request's key comes from; nil (or a request without one) = random.
    public var hashOn: ClusterHashKey?
    /// Limits per cluster per process (`circuit_breaker:`); nil = none.
    public var circuitBreaker: CircuitBreakerConfig?
    /// Passive health checking on the outcome hook (`outlier_detection:`); nil = off.
    public var outlierDetection: OutlierDetectionConfig?
    /// Active health checking (`health_check:`), once per process; nil = off.
    public var healthCheck: HealthCheckConfig?
    /// Below this share of available (not ejected) endpoints, in percent, the balancer uses every
    /// endpoint (`lb_healthy_panic`). 0 ... 100, default 50; 0 turns panic mode off.
    public var panicThreshold: Int = 50
    /// TLS toward the endpoints (verification, SNI, client certificate). nil = plaintext (the default).
    public var tls: ClusterTLSConfig?
    /// `slow_start:` — an endpoint new to balancing, healthy again or back from an ejection ramps
    /// its share up over a window; nil = off (full share at once).
    public var slowStart: SlowStart?
    /// `dns_refresh:` — endpoints given by name are resolved again this often (ms) on the main loop
    /// and the endpoint set follows (each address an endpoint); nil = resolved once, at load.
    public var dnsRefresh: Millis?
    /// `dns_lookup_family:` — which addresses of a name are endpoints (default all).
    public var dnsLookupFamily: DNSLookupFamily = .all

    /// The same cluster apart from its endpoint list (a DNS refresh or a reload that only moved
    /// endpoints): what stays may keep its connections.
    public func sameApartFromEndpoints(_ o: ClusterConfig) -> Bool {
        var a = self, b = o
        a.endpoints = []; b.endpoints = []
        a.endpointWeights = []; b.endpointWeights = []
        return a == b
    }

    public static let defaultBalancer = BalancerKind.peakEWMA

    /// The weight of endpoint `i` (1 when none is given).
    public func weight(ofEndpoint i: Int) -> Int { i < endpointWeights.count ? endpointWeights[i] : 1 }

    public init(name: String, protocol: ClusterProtocol = .http1, endpoints: [HostPort],
                connectTimeout: Millis = 5_000, maxIdlePerEndpoint: Int? = nil, http2: HTTP2Settings = HTTP2Settings(),
                maxConnectsPerSecond: Int = 1000, idleTimeout: Millis = 60_000, retryBudget: RetryBudget? = RetryBudget()) {
        self.retryBudget = retryBudget
        self.name = name; self.protocol = `protocol`; self.endpoints = endpoints; self.http2 = http2
        self.connectTimeout = connectTimeout; self.maxIdlePerEndpoint = maxIdlePerEndpoint
        self.maxConnectsPerSecond = maxConnectsPerSecond; self.idleTimeout = idleTimeout
    }
}

/// A cluster's `hash_on` (ring_hash, maglev): the key a request is placed by.
public enum ClusterHashKey: Sendable, Equatable {
    /// The first non-empty value of this header (any case).
    case header(String)
    /// The value of this cookie.
    case cookie(String)
    /// The client's address (the downstream connection's peer IP; for the TCP proxy too).
    case sourceIP
}

/// `circuit_breaker:` — limits per cluster per process (summed over workers), Envoy's thresholds.
/// A request over a limit fails at once: 503 with `x-remora-overloaded: true` (gRPC UNAVAILABLE).
public struct CircuitBreakerConfig: Sendable, Equatable {
    /// Upstream connections open at once. Default 1024, range 1 ... 1_000_000.
    public var maxConnections: Int
    /// Requests waiting for a connection being established at once. Default 1024, range 1 ... 1_000_000.
    public var maxPending: Int
    /// Requests under way at once. Default 1024, range 1 ... 1_000_000.
    public var maxRequests: Int
    /// Retries under way at once. Default 3, range 0 ... 1_000_000.
    public var maxRetries: Int

    public init(maxConnections: Int = 1024, maxPending: Int = 1024, maxRequests: Int = 1024, maxRetries: Int = 3) {
        self.maxConnections = maxConnections; self.maxPending = maxPending
        self.maxRequests = maxRequests; self.maxRetries = maxRetries
    }
}

/// HTTP/2 settings (RFC 9113 §6.5.2) one side advertises. YAML: `http2: { max_concurrent_streams: 100, … }`.
public struct HTTP2Settings: Sendable, Equatable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS. Default 100, range 1 ... 10_000.
    public var maxConcurrentStreams: Int
    /// SETTINGS_INITIAL_WINDOW_SIZE: per-stream receive window, bytes. Default 1 MiB, range 64 KiB ... 16 MiB.
    public var initialStreamWindow: Int
    /// Connection-level receive window, bytes. Default 4 MiB, range 64 KiB ... 1 GiB.
    public var connectionWindow: Int
    /// SETTINGS_MAX_HEADER_LIST_SIZE, bytes; larger header blocks are refused. Default 64 KiB, range 1 KiB ... 1 MiB.
    public var maxHeaderListSize: Int

    public init(maxConcurrentStreams: Int = 100, initialStreamWindow: Int = 1 << 20, connectionWindow: Int = 4 << 20,
                maxHeaderListSize: Int = 64 * 1024) {
        self.maxConcurrentStreams = maxConcurrentStreams; self.initialStreamWindow = initialStreamWindow
        self.connectionWindow = connectionWindow; self.maxHeaderListSize = maxHeaderListSize
    }
}
