import RemoraPolicy

/// A random source that replays given values, then repeats the last one.
struct ScriptedRandom: RandomSource {
    var values: [UInt64]
    var i = 0
    init(_ values: [UInt64]) { self.values = values }
    mutating func next() -> UInt64 {
        defer { i += 1 }
        return values[min(i, values.count - 1)]
    }
}

/// An endpoint as a balancer sees it.
final class TestEndpoint: BalancedEndpoint {
    var weight: Int
    var activeRequests = 0
    var latency = PeakEWMA()
    var hashKey: UInt64
    var rampSince: UInt64 = 0
    init(weight: Int = 1, key: UInt64 = 0) {
        self.weight = weight
        hashKey = key
    }
    /// An endpoint named like a real one ("10.0.0.<i>:80"), hashed as the proxy hashes addresses.
    convenience init(named i: Int, weight: Int = 1) { self.init(weight: weight, key: KeyHash.string("10.0.0.\(i):80")) }
}
