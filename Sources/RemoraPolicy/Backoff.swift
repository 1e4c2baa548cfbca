/// Capped exponential backoff with full jitter (the AWS architecture blog's "Full Jitter"; gRPC's
/// connection backoff and Envoy's `JitteredExponentialBackOffStrategy` are variants): the n-th delay
/// after consecutive failures is uniform in `0 ... min(cap, base × 2ⁿ)`, so clients that failed
/// together do not retry together. Used by the control-plane subscriber (reconnects) and by
/// `remora bench` (reconnects after failed connects).
public struct Backoff: Sendable, Equatable {
    /// First ceiling, ms (> 0).
    public let base: UInt64
    /// Largest ceiling, ms (≥ base).
    public let cap: UInt64
    /// Failures since the last `reset` (each `next` counts one).
    public private(set) var failures: Int = 0

    public init(base: UInt64, cap: UInt64) {
        precondition(base > 0 && cap >= base, "Backoff: need 0 < base <= cap")
        self.base = base; self.cap = cap
    }

    /// The ceiling of the next delay: `min(cap, base × 2^failures)`, ms.
    public var ceiling: UInt64 {
        let shift = UInt64(min(failures, 63))
        let (v, overflow) = base.multipliedReportingOverflow(by: 1 << shift)
        return overflow || v > cap ? cap : v
    }

    /// Backing off: at least one failure since the last success.
    public var isBackingOff: Bool { failures > 0 }

    /// Counts one more failure and returns the delay before the next try, ms, uniform in
    /// `0 ... ceiling` (taken before counting).
    public mutating func next<R: RandomSource>(random: inout R) -> UInt64 {
        let c = ceiling
        if failures < Int.max { failures += 1 }
        return c == UInt64.max ? random.next() : random.below(c + 1)
    }

    /// A success: the next failure starts again from `base`.
    public mutating func reset() { failures = 0 }
}
