import RemoraCore
import RemoraHTTP
import RemoraPolicy
import RemoraRouting

/// Fault injection (`fault:` on a route): delays a share of the requests before the upstream is
/// contacted and answers a share from the proxy (503 or the route's status; for gRPC requests a
/// trailers-only grpc-status), as Envoy's fault filter does. One per listener and worker, present
/// only when some route of the listener has `fault:`. Decided once per request on the worker's
/// random source (`FaultPolicy.decide`, RemoraPolicy); counted in `listener.<name>.fault_*`.
final class FaultFilter: HTTPFilter {
    /// Per route of the listener's table (nil: no faults), without `onlyWithHeader` (kept apart in
    /// `headers`, so reading a policy copies no reference).
    let faults: [FaultPolicy?]
    /// Per route: the header a request must carry for faults to apply (lowercase), or nil.
    let headers: [String?]

    init?(routes: RouteTable) {
        guard routes.faults.contains(where: { $0 != nil }) else { return nil }
        headers = routes.faults.map { $0?.onlyWithHeader }
        faults = routes.faults.map { $0.map { var f = $0; f.onlyWithHeader = nil; return f } }
    }

    func requestHeaders(_ e: Exchange, _ request: RequestView) -> FilterVerdict {
        let ri = e.routeIndex
        guard ri >= 0, let f = faults[ri] else { return .next }
        if let name = headers[ri], !FaultFilter.has(request.headers, name) { return .next }
        let d = f.decide(random: &e.worker.rng)
        if d.isNone { return .next }
        let reply = LocalReply(.faultAbort, status: f.abortStatus, grpcStatus: f.grpcAbortStatus)
        if d.delay != 0 { e.stats.inc(.fault_delays_injected); e.observe.flags.insert(.DI) }
        if d.abort { e.stats.inc(.fault_aborts_injected); e.observe.flags.insert(.FI) }
        if d.delay == 0 { return .reply(reply) }
        return .delay(d.delay, then: d.abort ? reply : nil)
    }

    /// A field named `lower` (lowercase) is among `headers`, in any case.
    static func has(_ headers: UnsafeBufferPointer<HeaderRef>, _ lower: String) -> Bool {
        var lower = lower
        return lower.withUTF8 { l in
            headers.contains { h in
                h.name.count == l.count && zip(h.name, l).allSatisfy { a, b in a | 0x20 == b || a == b }
            }
        }
    }
}
