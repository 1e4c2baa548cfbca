import RemoraCore

/// What a filter decides about a request.
enum FilterVerdict {
    /// Go on: the next filter, and at the end the router.
    case next
    /// Answer the request from the proxy now (gRPC requests get it in gRPC form only if the filter
    /// says so in its status; the router's own answers are gRPC-shaped).
    case respond(status: Int, body: String)
    /// Answer the request from the proxy now: `status` for plain HTTP requests, a trailers-only
    /// `grpcStatus` for gRPC ones (nothing allocated for the verdict).
    case reply(LocalReply)
    /// Hold the request this many ms before the upstream is contacted (fault injection's delay),
    /// carried out by the exchange on its own timer, never by blocking. Without `then`, the other
    /// filters and the router run at once (the request as the upstream gets it is copied then; body
    /// bytes wait in the replay buffer) and only the dispatch waits; several delays: the longest.
    /// With `then`, nothing else runs: the request is answered with it when the time is up.
    case delay(Millis, then: LocalReply?)
}

/// An answer from the proxy, as a filter gives it (rate limits, fault aborts): 16 bytes, so a
/// verdict is returned and copied in registers (a verdict carrying a 170-byte answer cost ~300
/// instructions of copies per request on every filter call).
struct LocalReply {
    /// Which answer: its message and extra header fields.
    enum Kind: UInt8 {
        /// A fault's abort: "fault filter abort" (Envoy's words).
        case faultAbort
        /// Over a local rate limit: "local_rate_limited", with `x-ratelimit-limit` (`values.0`),
        /// `x-ratelimit-remaining` (`values.1`), `x-ratelimit-reset` (`values.2`, seconds).
        case rateLimited
        /// Denied by an authorization policy: "RBAC: access denied" (Envoy's words).
        case accessDenied
    }
    var kind: Kind
    /// The status of a plain HTTP request's answer (its body is the message and a newline).
    var status: UInt16
    /// The grpc-status of a gRPC request's answer (HTTP 200, trailers-only, grpc-message: the message).
    var grpcStatus: UInt8
    var values: (UInt32, UInt32, UInt32) = (0, 0, 0)

    init(_ kind: Kind, status: Int, grpcStatus: Int) {
        self.kind = kind; self.status = UInt16(status); self.grpcStatus = UInt8(grpcStatus)
    }

    var message: StaticString {
        switch kind {
        case .faultAbort: return "fault filter abort"
        case .rateLimited: return "local_rate_limited"
        case .accessDenied: return "RBAC: access denied"
        }
    }

    struct NumericField { var name: StaticString; var value: UInt64 }

    /// The extra header fields of this answer.
    var extraFields: [NumericField] {
        switch kind {
        case .faultAbort, .accessDenied: return []
        case .rateLimited:
            return [NumericField(name: "x-ratelimit-limit", value: UInt64(values.0)),
                    NumericField(name: "x-ratelimit-remaining", value: UInt64(values.1)),
                    NumericField(name: "x-ratelimit-reset", value: UInt64(values.2))]
        }
    }
}

/// An HTTP filter: one concern (authorization, rate limiting, fault injection, tracing, access
/// logging…) seen at fixed phases of every exchange of a listener, in the style of Pingora's proxy
/// phases and Envoy's filter chain. Every phase has a no-op default, so a filter implements only
/// the phases it needs. The order of a request: the route is matched first (`Exchange.routeIndex`,
/// -1 = none; as Envoy resolves the route before its filters, so a filter reads per-route settings),
/// then `requestHeaders` of each filter in the listener's order, then the router (the last request
/// filter: `Exchange+Router.swift`), which answers locally or picks the upstream; `responseHeaders`
/// before a response head is forwarded; `log` once the exchange is over. Filters run on the worker's
/// loop and must not block or allocate per request on the hot path. A listener with no filters pays
/// one empty-array check per request.
protocol HTTPFilter: AnyObject {
    /// The request head arrived (the route matched, before the router acts). `.respond` / `.reply`
    /// answer it without going upstream, `.delay` holds it.
    func requestHeaders(_ exchange: Exchange, _ request: RequestView) -> FilterVerdict
    /// A response head is about to be forwarded (from the upstream or the proxy).
    func responseHeaders(_ exchange: Exchange, status: Int, headers: UnsafeBufferPointer<HeaderRef>)
    /// The exchange is over (whatever its outcome).
    func log(_ exchange: Exchange)
    /// The filter implements `responseHeaders` (the exchange skips that phase on a listener where no
    /// filter does: a loop and a call per response for nothing).
    var hasResponsePhase: Bool { get }
}

extension HTTPFilter {
    func requestHeaders(_ exchange: Exchange, _ request: RequestView) -> FilterVerdict { .next }
    func responseHeaders(_ exchange: Exchange, status: Int, headers: UnsafeBufferPointer<HeaderRef>) {}
    func log(_ exchange: Exchange) {}
    var hasResponsePhase: Bool { false }
}
