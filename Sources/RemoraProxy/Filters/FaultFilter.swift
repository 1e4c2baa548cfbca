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
    /// Per route of the listener's table (nil: no faults).
    let faults: [FaultPolicy?]

    init?(routes: RouteTable) {
        guard routes.faults.contains(where: { $0 != nil }) else { return nil }
        faults = routes.faults
    }

    func requestHeaders(_ e: Exchange, _ request: RequestView) -> FilterVerdict {
        let ri = e.routeIndex
        guard ri >= 0, let f = faults[ri] else { return .next }
        if let name = f.onlyWithHeader, !FaultFilter.has(request.headers, name) { return .next }
        let d = f.decide(random: &e.worker.rng)
        if d.isNone { return .next }
        let reply = LocalReply(status: f.abortStatus, grpcStatus: f.grpcAbortStatus, message: "fault filter abort")
        if d.delay != 0 { e.stats.inc(.fault_delays_injected) }
        if d.abort { e.stats.inc(.fault_aborts_injected) }
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
