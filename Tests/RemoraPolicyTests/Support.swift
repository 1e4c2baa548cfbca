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
    init(weight: Int = 1) { self.weight = weight }
}
