/// What a load balancer may read of an endpoint. The proxy's `Endpoint` (one per endpoint per
/// worker) conforms; tests use plain stand-ins.
public protocol BalancedEndpoint: AnyObject {
    /// Relative share of requests, ≥ 1 (today every endpoint has weight 1).
    var weight: Int { get }
    /// Attempts under way to this endpoint (started, outcome not yet reported).
    var activeRequests: Int { get }
}

/// Picks the endpoint for the next attempt among a cluster's endpoints. Pure and per worker: no
/// locks, no I/O; the randomness it needs comes from `random` (injected; tests replay it).
/// Round robin is today's; least-request (power of two choices on `activeRequests`), ring hash
/// and latency-aware (peak EWMA) balancers implement the same method.
public protocol LoadBalancer {
    /// An index into `endpoints` (which is never empty).
    mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], random: inout R) -> Int
}

/// Endpoints in turn, each `weight` times per round (weight-1 endpoints: plain rotation 0, 1, 2, …,
/// starting at 0). Weighted rounds are interleaved smoothly (nginx's smooth weighted round robin:
/// weights 5, 1, 1 give a a b a c a a, not a a a a a b c).
public struct RoundRobin: LoadBalancer {
    /// The index picked next when every weight is 1.
    var position = 0
    /// Smooth weighted round robin's running scores, one per endpoint (empty while weights are all 1).
    var current: [Int] = []

    public init() {}

    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], random: inout R) -> Int {
        if current.isEmpty {
            let e = position
            position = e + 1 >= endpoints.count ? 0 : e + 1
            if endpoints[e].weight == 1 { return e }
            current = Array(repeating: 0, count: endpoints.count)   // the first weight other than 1: weighted from now on
        }
        return pickWeighted(endpoints)
    }

    mutating func pickWeighted<E: BalancedEndpoint>(_ endpoints: [E]) -> Int {
        if current.count != endpoints.count { current = Array(repeating: 0, count: endpoints.count) }
        var best = 0, total = 0
        for i in endpoints.indices {
            let w = max(endpoints[i].weight, 0)
            current[i] += w
            total += w
            if current[i] > current[best] { best = i }
        }
        current[best] -= total
        return best
    }
}
