import RemoraCore

/// What a filter decides about a request.
enum FilterVerdict {
    /// Go on: the next filter, and at the end the router.
    case next
    /// Answer the request from the proxy now (gRPC requests get it in gRPC form only if the filter
    /// says so in its status; the router's own answers are gRPC-shaped).
    case respond(status: Int, body: String)
}

/// An HTTP filter: one concern (authorization, rate limiting, fault injection, tracing, access
/// logging…) seen at fixed phases of every exchange of a listener, in the style of Pingora's proxy
/// phases and Envoy's filter chain. Every phase has a no-op default, so a filter implements only
/// the phases it needs. The order of a request: `requestHeaders` of each filter in the listener's
/// order, then the router (the last request filter: `Exchange+Router.swift`), which picks the route
/// and the upstream; `responseHeaders` before a response head is forwarded; `log` once the exchange
/// is over. Filters run on the worker's loop and must not block or allocate per request on the hot
/// path. A listener with no filters pays one empty-array check per request.
protocol HTTPFilter: AnyObject {
    /// The request head arrived (before routing). `.respond` answers it without going upstream.
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
