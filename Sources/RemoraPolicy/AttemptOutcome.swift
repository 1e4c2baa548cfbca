/// How one upstream attempt ended: what the outcome hook reports, exactly once per attempt, to the
/// attempt's endpoint and cluster (`Cluster.attemptEnded`, passed on to `Endpoint.attemptEnded`).
/// Outlier detection, circuit breakers, retry budgets, latency-aware balancing and per-endpoint
/// stats read it there.
public struct AttemptOutcome: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        /// The TCP connect failed or timed out (or was refused by the connect rate limit).
        case connectFailure
        /// The upstream never processed the request (HTTP/2 REFUSED_STREAM, above GOAWAY's last id).
        case refused
        /// The connection closed or the stream was reset before the response ended.
        case reset
        /// The upstream sent something that is not a valid response.
        case protocolError
        /// No response head within the route timeout (or the gRPC deadline passed).
        case timeout
        /// The proxy gave up on the attempt for a reason of its own (the client went away, a body
        /// limit, a retry started elsewhere): says nothing about the endpoint.
        case cancelled
        /// A complete response (its head's status in `status`).
        case response
    }

    public var kind: Kind
    /// The response head's HTTP status; 0 when no head arrived.
    public var status: Int
    /// The response's grpc-status (trailers-only or trailers), -1 when none.
    public var grpcStatus: Int
    /// Milliseconds from the attempt's start to its response head, or to its failure.
    public var latency: UInt64

    public init(kind: Kind, status: Int = 0, grpcStatus: Int = -1, latency: UInt64 = 0) {
        self.kind = kind; self.status = status; self.grpcStatus = grpcStatus; self.latency = latency
    }

    /// A failure that speaks about the endpoint's health (connect failure, reset, timeout, an
    /// invalid response, or a 5xx response): what outlier detection counts as "local" or "gateway".
    public var isFailure: Bool {
        switch kind {
        case .connectFailure, .reset, .protocolError, .timeout: return true
        case .response: return status >= 500
        case .refused, .cancelled: return false
        }
    }
}
