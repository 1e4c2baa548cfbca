/// A listener's access log (`access_log: { path: FILE | stdout, format: json | text | "<format>" }`).
/// Off unless configured. See docs/observability.md.
public struct AccessLogConfig: Sendable, Equatable {
    /// A file (opened for append, created 0644, reopened on SIGUSR1) or "stdout".
    public var path: String
    public var format: AccessLogFormat

    public init(path: String, format: AccessLogFormat = .text(AccessLogFormat.envoyDefault)) {
        self.path = path; self.format = format
    }
}

/// What is written per request: JSON (one object per line, `AccessLogField.jsonKey` keys), or text
/// pieces (Envoy's default line, or a `%COMMAND%` format string).
public enum AccessLogFormat: Sendable, Equatable {
    case json
    case text([AccessLogPiece])

    /// Envoy's default format:
    /// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    /// %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
    /// "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`.
    public static let envoyDefault: [AccessLogPiece] = [
        .literal("["), .field(.startTime), .literal("] \""), .field(.method), .literal(" "), .field(.path), .literal(" "),
        .field(.protocol), .literal("\" "), .field(.responseCode), .literal(" "), .field(.responseFlags), .literal(" "),
        .field(.bytesReceived), .literal(" "), .field(.bytesSent), .literal(" "), .field(.duration), .literal(" "),
        .field(.upstreamServiceTime), .literal(" \""), .field(.xForwardedFor), .literal("\" \""), .field(.userAgent),
        .literal("\" \""), .field(.requestID), .literal("\" \""), .field(.authority), .literal("\" \""),
        .field(.upstreamHost), .literal("\""),
    ]

    /// Parses a format string of literal text and `%COMMAND%`s (Envoy's command names; `%%` is a
    /// percent sign). A failure names an unknown command or an unclosed `%`.
    public static func parse(_ s: String) -> Result<[AccessLogPiece], FormatError> {
        var pieces: [AccessLogPiece] = []
        var literal = ""
        var rest = Substring(s)
        while let i = rest.firstIndex(of: "%") {
            literal += rest[..<i]
            let after = rest[rest.index(after: i)...]
            if after.hasPrefix("%") { literal += "%"; rest = after.dropFirst(); continue }
            guard let j = after.firstIndex(of: "%") else { return .failure(FormatError("unclosed % in the access log format")) }
            let command = String(after[..<j])
            guard let field = AccessLogField(command: command) else {
                return .failure(FormatError("unknown access log command %\(command)% (known: \(AccessLogField.commandList))"))
            }
            if !literal.isEmpty { pieces.append(.literal(literal)); literal = "" }
            pieces.append(.field(field))
            rest = after[after.index(after: j)...]
        }
        literal += rest
        if !literal.isEmpty { pieces.append(.literal(literal)) }
        return .success(pieces)
    }

    public struct FormatError: Error, Sendable, Equatable {
        public var message: String
        init(_ m: String) { message = m }
    }
}

public enum AccessLogPiece: Sendable, Equatable {
    case literal(String)
    case field(AccessLogField)
}

/// One thing an access log line can say about a request (a JSON key, a `%COMMAND%`).
public enum AccessLogField: String, Sendable, Equatable, CaseIterable {
    case startTime = "start_time", method, path, `protocol`, responseCode = "response_code", grpcStatus = "grpc_status"
    case responseFlags = "response_flags", bytesReceived = "bytes_received", bytesSent = "bytes_sent", duration
    case upstreamServiceTime = "upstream_service_time", upstreamHost = "upstream_host", routeName = "route_name"
    case upstreamCluster = "upstream_cluster", requestID = "request_id", xForwardedFor = "x_forwarded_for"
    case userAgent = "user_agent", authority, retryCount = "retry_count", peerIdentity = "downstream_peer_identity"

    /// The JSON key.
    public var jsonKey: String { rawValue }

    /// Its value is a number in JSON (else a string; null when absent).
    public var isNumber: Bool {
        switch self {
        case .responseCode, .grpcStatus, .bytesReceived, .bytesSent, .duration, .upstreamServiceTime, .retryCount: return true
        default: return false
        }
    }

    /// Envoy's command names.
    static let commands: [String: AccessLogField] = [
        "START_TIME": .startTime, "REQ(:METHOD)": .method, "REQ(:PATH)": .path, "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": .path,
        "PROTOCOL": .protocol, "RESPONSE_CODE": .responseCode, "GRPC_STATUS": .grpcStatus, "GRPC_STATUS_NUMBER": .grpcStatus,
        "RESPONSE_FLAGS": .responseFlags, "BYTES_RECEIVED": .bytesReceived, "BYTES_SENT": .bytesSent, "DURATION": .duration,
        "RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)": .upstreamServiceTime, "UPSTREAM_HOST": .upstreamHost, "ROUTE_NAME": .routeName,
        "UPSTREAM_CLUSTER": .upstreamCluster, "REQ(X-REQUEST-ID)": .requestID, "REQ(X-FORWARDED-FOR)": .xForwardedFor,
        "REQ(USER-AGENT)": .userAgent, "REQ(:AUTHORITY)": .authority, "UPSTREAM_REQUEST_ATTEMPT_COUNT": .retryCount,
        "DOWNSTREAM_PEER_URI_SAN": .peerIdentity,
    ]

    static var commandList: String { commands.keys.sorted().joined(separator: ", ") }

    init?(command: String) {
        guard let f = AccessLogField.commands[command.uppercased()] else { return nil }
        self = f
    }
}

/// A listener's request ids and trace propagation (`tracing: { propagate: [w3c], sample_percent: 1 }`).
/// With it, a request without `x-request-id` gets one (a UUIDv4 from the worker's fast random
/// source) and a W3C `traceparent` is continued with the proxy's own span as a child (same trace
/// id, a new span id, the sampled flag kept) or started (sampled at `samplePercent`). See
/// docs/observability.md.
public struct TracingConfig: Sendable, Equatable {
    public enum Propagation: String, Sendable, Equatable, CaseIterable { case w3c, b3 }
    /// Trace header formats read and written. Default [w3c].
    public var propagate: [Propagation]
    /// Percent (0 ... 100) of new traces marked sampled. Default 1.
    public var samplePercent: Double
    /// Where the proxy's sampled spans go (OTLP/HTTP JSON); nil = not exported.
    public var otlp: OTLPConfig?

    public init(propagate: [Propagation] = [.w3c], samplePercent: Double = 1, otlp: OTLPConfig? = nil) {
        self.propagate = propagate; self.samplePercent = samplePercent; self.otlp = otlp
    }
}

/// `tracing.otlp: { endpoint: http://HOST:PORT }`: spans are POSTed to `<endpoint>/v1/traces` as
/// OTLP/HTTP JSON by a helper thread, in batches of at most 512 spans or every 5 s.
public struct OTLPConfig: Sendable, Equatable, Hashable {
    /// `http://host:port` (an IP address or a name resolved by the exporter thread), no path.
    public var host: String
    public var port: Int

    public init(host: String, port: Int) { self.host = host; self.port = port }

    /// Parses `http://host:port`, `http://host:port/` or `host:port`; `[v6]:port` too.
    public static func parse(_ s: String) -> OTLPConfig? {
        var rest = Substring(s)
        if rest.hasPrefix("http://") { rest = rest.dropFirst(7) } else if rest.contains("://") { return nil }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        if rest.hasSuffix("/v1/traces") { rest = rest.dropLast(10) }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), port > 0, port < 65536
        else { return nil }
        var host = rest[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty, !host.contains("/") else { return nil }
        return OTLPConfig(host: String(host), port: port)
    }
}
