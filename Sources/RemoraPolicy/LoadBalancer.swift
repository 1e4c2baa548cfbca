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

/// Endpoints in turn, each `weight` times per round. Equal weights: plain rotation 0, 1, 2, …,
/// starting at 0. Other weights are interleaved smoothly (nginx's smooth weighted round robin:
/// weights 5, 1, 1 give a a b a c a a, not a a a a a b c). Weights are read once, at creation (a
/// cluster's endpoints and weights are fixed for a snapshot).
public struct RoundRobin: LoadBalancer {
    /// The index picked next (equal weights).
    var position = 0
    /// The endpoints' weights when they differ (empty: equal weights, plain rotation).
    let weights: [Int]
    /// Smooth weighted round robin's running scores, one per endpoint.
    var current: [Int]

    /// Equal weights unless `weights` says otherwise (one per endpoint, ≥ 0).
    public init(weights: [Int] = []) {
        self.weights = weights.allSatisfy { $0 == weights.first } ? [] : weights.map { max($0, 0) }
        current = Array(repeating: 0, count: self.weights.count)
    }

    /// With the weights of `endpoints`.
    public init<E: BalancedEndpoint>(for endpoints: [E]) { self.init(weights: endpoints.map(\.weight)) }

    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], random: inout R) -> Int {
        if weights.isEmpty {
            let e = position
            position = e + 1 >= endpoints.count ? 0 : e + 1
            return e
        }
        return pickWeighted()
    }

    mutating func pickWeighted() -> Int {
        var best = 0, total = 0
        for i in weights.indices {
            current[i] += weights[i]
            total += weights[i]
            if current[i] > current[best] { best = i }
        }
        current[best] -= total
        return best
    }
}
