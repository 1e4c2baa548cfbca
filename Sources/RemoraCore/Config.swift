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

    public init(admin: AdminConfig? = nil, workers: Int = 0, drainTimeout: Millis = 5_000,
                listeners: [ListenerConfig] = [], clusters: [ClusterConfig] = []) {
        self.admin = admin; self.workers = workers; self.drainTimeout = drainTimeout
        self.listeners = listeners; self.clusters = clusters
    }

    public func cluster(named name: String) -> ClusterConfig? { clusters.first { $0.name == name } }
}

public struct AdminConfig: Sendable, Equatable {
    public var address: HostPort
    public init(address: HostPort) { self.address = address }
}

public enum ListenerProtocol: String, Sendable, Equatable, CaseIterable {
    /// HTTP/1.1 (and, from the HTTP/2 issue on, h2c with prior knowledge on the same port).
    case http
    /// Raw TCP forwarded to one cluster.
    case tcp
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
    /// HTTP only: ordered; the first match wins; no match -> 404 from the proxy.
    public var routes: [RouteConfig]
    /// TCP only: the cluster that receives the bytes.
    public var cluster: String?

    public init(name: String, address: HostPort, protocol: ListenerProtocol = .http,
                requestHeaderTimeout: Millis = 10_000, maxRequestHeaderBytes: Int = 60 * 1024,
                idleTimeout: Millis = 60_000, http2: HTTP2Settings = HTTP2Settings(), routes: [RouteConfig] = [],
                cluster: String? = nil) {
        self.name = name; self.address = address; self.protocol = `protocol`; self.http2 = http2
        self.requestHeaderTimeout = requestHeaderTimeout; self.maxRequestHeaderBytes = maxRequestHeaderBytes
        self.idleTimeout = idleTimeout; self.routes = routes; self.cluster = cluster
    }
}

public struct RouteConfig: Sendable, Equatable {
    /// Unique within its listener; used in stat names.
    public var name: String
    public var match: RouteMatch
    /// One or more clusters with integer weights (share = weight / sum). At least one weight > 0.
    public var backends: [WeightedBackend]
    /// Time allowed for the upstream to produce the response head, after which the proxy answers
    /// 504. 0 disables it. Default 15 s.
    public var timeout: Millis

    public init(name: String, match: RouteMatch = RouteMatch(), backends: [WeightedBackend], timeout: Millis = 15_000) {
        self.name = name; self.match = match; self.backends = backends; self.timeout = timeout
    }
}

/// What a request must look like for a route to apply. All given conditions must hold.
/// (The routing issue adds header, query, method, host and gRPC matchers here.)
public struct RouteMatch: Sendable, Equatable {
    public var path: PathMatch

    public init(path: PathMatch = .prefix("/")) { self.path = path }
}

public enum PathMatch: Sendable, Equatable {
    /// The path (query excluded) starts with this string.
    case prefix(String)
    /// The path (query excluded) equals this string.
    case exact(String)
}

public struct WeightedBackend: Sendable, Equatable {
    public var cluster: String
    /// 0 ... 1_000_000; 0 drains the backend. Default 1.
    public var weight: UInt32
    public init(cluster: String, weight: UInt32 = 1) { self.cluster = cluster; self.weight = weight }
}

public enum ClusterProtocol: String, Sendable, Equatable, CaseIterable {
    case http1
    case http2
}

public struct ClusterConfig: Sendable, Equatable {
    /// Unique among clusters; used in stat names (`cluster.<name>.…`).
    public var name: String
    public var `protocol`: ClusterProtocol
    /// At least one. Names are resolved once when the config is loaded.
    public var endpoints: [HostPort]
    /// Time allowed for a TCP connect to an endpoint. Default 5 s.
    public var connectTimeout: Millis
    /// Idle keep-alive connections kept per endpoint per worker. Default 128, range 0 ... 100_000.
    public var maxIdlePerEndpoint: Int
    /// `protocol: http2` only: what this proxy advertises to the upstream. The peer's own
    /// SETTINGS_MAX_CONCURRENT_STREAMS decides how many streams share one connection.
    public var http2: HTTP2Settings

    public init(name: String, protocol: ClusterProtocol = .http1, endpoints: [HostPort],
                connectTimeout: Millis = 5_000, maxIdlePerEndpoint: Int = 128, http2: HTTP2Settings = HTTP2Settings()) {
        self.name = name; self.protocol = `protocol`; self.endpoints = endpoints; self.http2 = http2
        self.connectTimeout = connectTimeout; self.maxIdlePerEndpoint = maxIdlePerEndpoint
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
