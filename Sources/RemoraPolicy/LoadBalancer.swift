/// What a load balancer may read of an endpoint. The proxy's `Endpoint` (one per endpoint per
/// worker) conforms; tests use plain stand-ins.
public protocol BalancedEndpoint: AnyObject {
    /// Relative share of requests, ≥ 1 (config `{ address: …, weight: 3 }`; default 1).
    var weight: Int { get }
    /// Attempts under way to this endpoint (started, outcome not yet reported).
    var activeRequests: Int { get }
    /// Latency estimate fed by the outcome hook (read by `peak_ewma`).
    var latency: PeakEWMA { get }
    /// A stable identity for consistent hashing (`ring_hash`, `maglev`): a hash of the endpoint's
    /// address, the same in every worker and every snapshot, so a key stays where it was.
    var hashKey: UInt64 { get }
    /// When the endpoint came into balancing (new, healthy again, back from an ejection), ms of
    /// the loop clock; 0 = never, or long ago. Read by `slow_start` when the balancer is built.
    var rampSince: UInt64 { get }
}

extension BalancedEndpoint {
    public var latency: PeakEWMA { PeakEWMA() }
    public var rampSince: UInt64 { 0 }
    public var hashKey: UInt64 { UInt64(UInt(bitPattern: ObjectIdentifier(self).hashValue)) }
}

/// Picks the endpoint for the next attempt among a cluster's endpoints. Pure and per worker: no
/// locks, no I/O; the randomness it needs comes from `random` (injected; tests replay it), the
/// time from `now` (loop milliseconds; injected too), the request's key from `hash` (ring hash
/// and maglev; 0 or any value for the others).
public protocol LoadBalancer {
    /// An index into `endpoints` (which is never empty).
    mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], hash: UInt64, now: UInt64,
                                                            random: inout R) -> Int
}

extension LoadBalancer {
    /// A pick that needs neither a key nor the time.
    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], random: inout R) -> Int {
        pick(endpoints, hash: 0, now: 0, random: &random)
    }
}

/// The balancers a cluster can use (`lb:`).
public enum BalancerKind: String, Sendable, Equatable, CaseIterable {
    case roundRobin = "round_robin"
    case random
    case leastRequest = "least_request"
    case peakEWMA = "peak_ewma"
    case ringHash = "ring_hash"
    case maglev

    /// Picks by the request's key (`hash_on`).
    public var isConsistentHash: Bool { self == .ringHash || self == .maglev }
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
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], hash: UInt64, now: UInt64,
                                                                   random: inout R) -> Int {
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

/// A uniformly random endpoint, or with unequal weights a random one in proportion to its weight.
public struct RandomBalancer: LoadBalancer {
    /// Running sums of the weights when they differ (empty: equal weights).
    let cumulative: [UInt64]

    public init(weights: [Int] = []) {
        if weights.allSatisfy({ $0 == weights.first }) { cumulative = [] } else {
            var sum: UInt64 = 0
            cumulative = weights.map { sum += UInt64(max($0, 0)); return sum }
        }
    }

    public init<E: BalancedEndpoint>(for endpoints: [E]) { self.init(weights: endpoints.map(\.weight)) }

    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], hash: UInt64, now: UInt64,
                                                                   random: inout R) -> Int {
        if cumulative.isEmpty { return Int(random.below(UInt64(endpoints.count))) }
        let x = random.below(cumulative[cumulative.count - 1])
        var i = 0
        while cumulative[i] <= x { i += 1 }
        return i
    }
}

/// Two distinct random indices in `0 ..< n` (n ≥ 2) from one 64-bit draw: the power of two choices.
@inline(__always)
func twoChoices<R: RandomSource>(_ n: Int, _ random: inout R) -> (Int, Int) {
    let r = random.next()
    let a = Int(((r & 0xFFFF_FFFF) &* UInt64(n)) >> 32)
    var b = Int(((r >> 32) &* UInt64(n - 1)) >> 32)
    if b >= a { b += 1 }
    return (a, b)
}

/// Least request, by the power of two choices (Mitzenmacher; Envoy's and Linkerd's least request):
/// two distinct endpoints drawn at random, the one with fewer active requests per unit of weight
/// wins (ties: the first drawn). Reads `activeRequests` only; no state of its own.
public struct LeastRequest: LoadBalancer {
    public init() {}

    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], hash: UInt64, now: UInt64,
                                                                   random: inout R) -> Int {
        let n = endpoints.count
        if n == 1 { return 0 }
        let (a, b) = twoChoices(n, &random)
        let ea = endpoints[a], eb = endpoints[b]
        // active_a / weight_a <= active_b / weight_b, without a division.
        return ea.activeRequests &* eb.weight <= eb.activeRequests &* ea.weight ? a : b
    }
}

/// A peak-sensitive moving average of an endpoint's latency (Linkerd's and Finagle's peak EWMA,
/// tower's `PeakEwma`): a latency above the estimate replaces it at once (the peak), one below it
/// pulls it down by how much time has passed since the last observation (decay `tau`); with no
/// observation the estimate decays toward zero, so an endpoint that was once slow is tried again.
/// A new endpoint starts at the default RTT (30 ms): neither starved nor flooded. Times in
/// milliseconds (the loop clock); `estimate` in milliseconds.
public struct PeakEWMA: Sendable, Equatable {
    /// The latency estimate at `stamp`, ms (≥ 0).
    public private(set) var estimate: Double
    /// Loop time of the last observation, ms.
    public private(set) var stamp: UInt64

    public static let defaultRTT: Double = 30
    /// The decay time constant, ms (10 s, Linkerd's default).
    public static let tau: Double = 10_000

    public init(estimate: Double = PeakEWMA.defaultRTT, stamp: UInt64 = 0) {
        self.estimate = estimate; self.stamp = stamp
    }

    /// e^(−dt/τ) as (e^(−x/4))⁴ with e^(−y) ≈ 1 / (1 + y + y²/2 + y³/6), x = dt/τ: no libm call on
    /// the request path, within 0.1 % of e^(−x) for x ≤ 1, monotone, → 0 as dt grows.
    @inline(__always)
    static func decay(_ dt: UInt64) -> Double {
        let y = Double(dt) * (0.25 / tau)
        let q = 1 / (1 + y * (1 + y * (0.5 + y * (1.0 / 6))))
        let q2 = q * q
        return q2 * q2
    }

    /// The estimate as of `now` (decayed since the last observation).
    @inline(__always)
    public func current(now: UInt64) -> Double {
        now > stamp ? estimate * PeakEWMA.decay(now - stamp) : estimate
    }

    /// An attempt took `rtt` ms, observed at `now`.
    @inline(__always)
    public mutating func observe(_ rtt: UInt64, now: UInt64) {
        let r = Double(rtt)
        if r >= estimate {
            estimate = r
        } else {
            let d = now > stamp ? PeakEWMA.decay(now - stamp) : 1
            estimate = estimate * d + r * (1 - d)
        }
        stamp = max(stamp, now)
    }

    /// What `peak_ewma` minimises: (estimate + 1 ms) × (active requests + 1). The millisecond
    /// added is the loop clock's resolution, so that on backends faster than the clock the
    /// active requests still count.
    @inline(__always)
    public func cost(now: UInt64, active: Int) -> Double { (current(now: now) + 1) * Double(active + 1) }
}

/// Latency-aware balancing (Linkerd's default): the power of two choices on peak-EWMA cost,
/// latency × (active + 1), divided by weight. Reads each endpoint's `latency`, which the outcome
/// hook feeds; no state of its own.
public struct PeakEWMABalancer: LoadBalancer {
    public init() {}

    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], hash: UInt64, now: UInt64,
                                                                   random: inout R) -> Int {
        let n = endpoints.count
        if n == 1 { return 0 }
        let (a, b) = twoChoices(n, &random)
        let ea = endpoints[a], eb = endpoints[b]
        let ca = ea.latency.cost(now: now, active: ea.activeRequests) * Double(eb.weight)
        let cb = eb.latency.cost(now: now, active: eb.activeRequests) * Double(ea.weight)
        return ca <= cb ? a : b
    }
}

/// 64-bit hashing for consistent hashing: request keys and endpoint identities (FNV-1a over the
/// bytes, then MurmurHash3's 64-bit finalizer so that every input bit reaches every output bit).
public enum KeyHash {
    @inline(__always)
    public static func mix(_ x: UInt64) -> UInt64 {
        var k = x
        k ^= k >> 33
        k &*= 0xFF51_AFD7_ED55_8CCD
        k ^= k >> 33
        k &*= 0xC4CE_B9FE_1A85_EC53
        k ^= k >> 33
        return k
    }

    public static func bytes(_ b: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for c in b { h = (h ^ UInt64(c)) &* 0x0000_0100_0000_01B3 }
        return mix(h)
    }

    public static func string(_ s: String) -> UInt64 {
        var s = s
        return s.withUTF8 { bytes(UnsafeRawBufferPointer($0)) }
    }
}

/// Consistent hashing on a ring (Karger et al.; Envoy's `ring_hash`, ketama-like): each endpoint
/// owns points on a 64-bit ring in proportion to its weight, at least `minimumRing` points in all;
/// a request goes to the owner of the first point at or after its key's hash. Points per unit of
/// weight: the power of two that makes the ring at least `minimumRing` points, so an endpoint's
/// points stay where they were when another is added (unless that crosses a power of two): adding
/// an endpoint moves about 1/N of the keys, all of them to it. Built once per endpoint set (O(P log P)).
public struct RingHash: LoadBalancer {
    /// Virtual nodes on the ring at least (Envoy's minimum_ring_size).
    public static let minimumRing = 1024
    /// The points, ascending, and the endpoint owning each.
    let points: [UInt64]
    let owners: [UInt32]

    public init(keys: [UInt64], weights: [Int], minimumRing: Int = RingHash.minimumRing) {
        let total = max(1, weights.reduce(0) { $0 + max($1, 0) })
        var perWeight = 1
        while perWeight * total < minimumRing { perWeight <<= 1 }
        var ring: [(UInt64, UInt32)] = []
        for (i, key) in keys.enumerated() where weights[i] > 0 {
            let n = perWeight * weights[i]
            for r in 0..<n { ring.append((KeyHash.mix(key &+ UInt64(r) &* 0x9E37_79B9_7F4A_7C15), UInt32(i))) }
        }
        ring.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        points = ring.map(\.0)
        owners = ring.map(\.1)
    }

    public init<E: BalancedEndpoint>(for endpoints: [E]) {
        self.init(keys: endpoints.map(\.hashKey), weights: endpoints.map(\.weight))
    }

    public var ringSize: Int { points.count }

    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], hash: UInt64, now: UInt64,
                                                                   random: inout R) -> Int {
        if points.isEmpty { return 0 }
        var lo = 0, hi = points.count   // first point ≥ hash
        while lo < hi {
            let mid = (lo + hi) >> 1
            if points[mid] < hash { lo = mid + 1 } else { hi = mid }
        }
        return Int(owners[lo == points.count ? 0 : lo])
    }
}

/// Maglev hashing (Eisenbud et al., NSDI 2016; Envoy's `maglev`): a lookup table of a prime size
/// (65,537) filled by each endpoint in turn along its own permutation, so every endpoint owns
/// nearly the same number of entries (times its weight) and a change of the endpoint set moves
/// few keys. A pick is one table read. Built once per endpoint set (O(M log M)); 128 KiB.
public struct Maglev: LoadBalancer {
    public static let tableSize = 65_537
    let table: [UInt16]

    public init(keys: [UInt64], weights: [Int], tableSize: Int = Maglev.tableSize) {
        let n = min(keys.count, Int(UInt16.max))
        let m = UInt64(tableSize)
        var offset = [UInt64](repeating: 0, count: n), skip = [UInt64](repeating: 0, count: n)
        for i in 0..<n {
            offset[i] = KeyHash.mix(keys[i]) % m
            skip[i] = KeyHash.mix(keys[i] ^ 0x5851_F42D_4C95_7F2D) % (m - 1) + 1
        }
        let maxWeight = max(1, weights.prefix(n).max() ?? 1)
        var next = [UInt64](repeating: 0, count: n)
        var credit = [Int](repeating: 0, count: n)
        var table = [UInt16](repeating: UInt16.max, count: tableSize)
        var filled = 0
        if weights.prefix(n).contains(where: { $0 > 0 }) {
            outer: while true {
                for i in 0..<n where weights[i] > 0 {
                    // Weighted maglev (as Envoy): an endpoint takes a turn each time its credit reaches
                    // the largest weight, so turns are in proportion to weights.
                    credit[i] += weights[i]
                    if credit[i] < maxWeight { continue }
                    credit[i] -= maxWeight
                    var c = (offset[i] &+ next[i] &* skip[i]) % m
                    while table[Int(c)] != UInt16.max {
                        next[i] += 1
                        c = (offset[i] &+ next[i] &* skip[i]) % m
                    }
                    table[Int(c)] = UInt16(i)
                    next[i] += 1
                    filled += 1
                    if filled == tableSize { break outer }
                }
            }
        } else {
            for i in 0..<tableSize { table[i] = 0 }
        }
        self.table = table
    }

    public init<E: BalancedEndpoint>(for endpoints: [E]) {
        self.init(keys: endpoints.map(\.hashKey), weights: endpoints.map(\.weight))
    }

    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], hash: UInt64, now: UInt64,
                                                                   random: inout R) -> Int {
        let i = Int(table[Int(hash % UInt64(table.count))])
        return i < endpoints.count ? i : 0
    }
}

/// The cluster's balancer, whichever `lb:` says: one value with a switch on its kind (no existential,
/// no allocation per pick). Built for one endpoint list (the endpoints available now); rebuilt when
/// that list changes (an ejection, a health change, a new snapshot), never per request.
///
/// `slow_start` (round_robin, random, least_request, peak_ewma; not the consistent hashes, whose
/// point is that a key stays put): while an endpoint of the list is ramping, each pick scales the
/// weights by `Ramps` (O(n) per pick, for the window only); otherwise a pick pays one compare.
public struct Balancer {
    public let kind: BalancerKind
    var roundRobin: RoundRobin
    var random: RandomBalancer
    var ring: RingHash?
    var maglev: Maglev?
    public private(set) var ramps: Ramps
    /// Smooth weighted round robin's scores on the ramped weights.
    var rampScores: [Double] = []
    /// The balancer reads the time (`now` must be the loop's): peak EWMA, or a ramp under way. A
    /// stored flag, so that the caller's test reads one byte of the balancer (a computed property
    /// of a struct held by a class can cost a copy of the whole struct per request).
    public private(set) var needsClock: Bool

    public init<E: BalancedEndpoint>(_ kind: BalancerKind, for endpoints: [E], slowStart: SlowStart? = nil, now: UInt64 = 0) {
        self.kind = kind
        roundRobin = kind == .roundRobin ? RoundRobin(for: endpoints) : RoundRobin()
        random = kind == .random ? RandomBalancer(for: endpoints) : RandomBalancer()
        ring = kind == .ringHash ? RingHash(for: endpoints) : nil
        maglev = kind == .maglev ? Maglev(for: endpoints) : nil
        ramps = kind.isConsistentHash ? Ramps() : Ramps(slowStart, for: endpoints, now: now)
        needsClock = kind == .peakEWMA || ramps.until != 0
    }

    @inline(__always)
    public mutating func pick<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], hash: UInt64, now: UInt64,
                                                                   random r: inout R) -> Int {
        if ramps.until != 0 {
            if ramps.active(now: now) { return pickRamping(endpoints, now: now, random: &r) }
            needsClock = kind == .peakEWMA   // the last ramp is over
        }
        switch kind {
        case .roundRobin: return roundRobin.pick(endpoints, hash: hash, now: now, random: &r)
        case .random: return random.pick(endpoints, hash: hash, now: now, random: &r)
        case .leastRequest:
            var b = LeastRequest()
            return b.pick(endpoints, hash: hash, now: now, random: &r)
        case .peakEWMA:
            var b = PeakEWMABalancer()
            return b.pick(endpoints, hash: hash, now: now, random: &r)
        case .ringHash: return ring!.pick(endpoints, hash: hash, now: now, random: &r)
        case .maglev: return maglev!.pick(endpoints, hash: hash, now: now, random: &r)
        }
    }
}

extension Balancer {
    /// A pick while some endpoint ramps up (`slow_start`), on the scaled weights: smooth weighted
    /// round robin, weighted random, or for the power-of-two-choices balancers two candidates drawn
    /// in proportion to their scaled weights, the less loaded winning (a P2C comparison alone
    /// would ignore weights whenever loads tie, as they do at low concurrency).
    mutating func pickRamping<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], now: UInt64, random r: inout R) -> Int {
        let n = endpoints.count
        if n == 1 { return 0 }
        switch kind {
        case .roundRobin:
            if rampScores.count != n { rampScores = Array(repeating: 0, count: n) }
            var best = 0, total = 0.0
            for i in 0..<n {
                let w = ramps.weight(i, endpoints[i].weight, now: now)
                rampScores[i] += w
                total += w
                if rampScores[i] > rampScores[best] { best = i }
            }
            rampScores[best] -= total
            return best
        case .random:
            return weightedDraw(endpoints, now: now, excluding: -1, random: &r)
        case .leastRequest:
            let a = weightedDraw(endpoints, now: now, excluding: -1, random: &r)
            let b = weightedDraw(endpoints, now: now, excluding: a, random: &r)
            return endpoints[a].activeRequests <= endpoints[b].activeRequests ? a : b
        case .peakEWMA:
            let a = weightedDraw(endpoints, now: now, excluding: -1, random: &r)
            let b = weightedDraw(endpoints, now: now, excluding: a, random: &r)
            let ea = endpoints[a], eb = endpoints[b]
            return ea.latency.cost(now: now, active: ea.activeRequests) <= eb.latency.cost(now: now, active: eb.activeRequests) ? a : b
        case .ringHash, .maglev:
            return 0   // never ramping (`Ramps()`)
        }
    }

    /// An index drawn in proportion to the ramped weights, never `excluding`.
    func weightedDraw<E: BalancedEndpoint, R: RandomSource>(_ endpoints: [E], now: UInt64, excluding: Int,
                                                            random r: inout R) -> Int {
        var total = 0.0
        for i in endpoints.indices where i != excluding { total += ramps.weight(i, endpoints[i].weight, now: now) }
        var x = Double(r.next() >> 11) * 0x1p-53 * total
        var last = 0
        for i in endpoints.indices where i != excluding {
            x -= ramps.weight(i, endpoints[i].weight, now: now)
            if x < 0 { return i }
            last = i
        }
        return last
    }
}
