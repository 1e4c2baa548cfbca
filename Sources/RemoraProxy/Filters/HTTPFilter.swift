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

/// An answer from the proxy, as a filter gives it (rate limits, fault aborts).
struct LocalReply {
    /// The status of a plain HTTP request's answer (its body is `message` and a newline).
    var status: Int
    /// The grpc-status of a gRPC request's answer (HTTP 200, trailers-only, grpc-message `message`).
    var grpcStatus: Int
    var message: StaticString
    /// Extra header fields with decimal values (`x-ratelimit-*`), up to three: stored inline.
    var fields: (NumericField?, NumericField?, NumericField?) = (nil, nil, nil)

    struct NumericField { var name: StaticString; var value: UInt64 }

    init(status: Int, grpcStatus: Int, message: StaticString) {
        self.status = status; self.grpcStatus = grpcStatus; self.message = message
    }

    /// The extra fields as given.
    var extraFields: [NumericField] { [fields.0, fields.1, fields.2].compactMap { $0 } }
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
}

extension HTTPFilter {
    func requestHeaders(_ exchange: Exchange, _ request: RequestView) -> FilterVerdict { .next }
    func responseHeaders(_ exchange: Exchange, status: Int, headers: UnsafeBufferPointer<HeaderRef>) {}
    func log(_ exchange: Exchange) {}
}
