/// Where policies get randomness (balancers, backoff jitter): injected, so tests can replay exact
/// sequences. One per worker or per owner; never shared across threads.
public protocol RandomSource {
    /// 64 uniformly distributed bits.
    mutating func next() -> UInt64
}

extension RandomSource {
    /// Uniform in `0 ..< n` (`n` > 0): the high word of a 64 × 64-bit product (Lemire), no division.
    @inline(__always)
    public mutating func below(_ n: UInt64) -> UInt64 { next().multipliedFullWidth(by: n).high }
}

/// A small fast PRNG (wyrand): the workers' random source (route splits, mirroring, balancers).
public struct FastRandom: RandomSource {
    /// Advances by a fixed odd constant per draw; any seed is fine.
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0xA076_1D64_78BD_642F
        let m = state.multipliedFullWidth(by: state ^ 0xE703_7ED1_A0B4_28DB)
        return m.high ^ m.low
    }
}
