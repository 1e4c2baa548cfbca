#if canImport(Glibc)
import Glibc
#endif

/// `slow_start:` — an endpoint that joins a cluster's balancing (new in the endpoint set, healthy
/// again after failing its health checks, or back from an outlier ejection) gets a share that
/// grows over `window` instead of its full share at once (Envoy's `slow_start_config`): its
/// weight is scaled by max(min_weight_percent / 100, (elapsed / window)^(1 / aggression)). An
/// endpoint that has just recovered is often cold (caches, JIT, connection pools); a full share
/// at once can knock it over again. Times in milliseconds.
public struct SlowStart: Sendable, Equatable {
    /// The ramp's length, ms, > 0.
    public var window: UInt64
    /// The curve: 1 = linear; larger ramps faster at first. > 0, default 1.
    public var aggression: Double
    /// The share of its weight an endpoint gets at least, percent 1 ... 100, default 10 (Envoy's).
    public var minWeightPercent: Int

    public init(window: UInt64, aggression: Double = 1, minWeightPercent: Int = 10) {
        self.window = window; self.aggression = aggression; self.minWeightPercent = minWeightPercent
    }

    /// The share of its weight (0 < f ≤ 1) an endpoint gets `elapsed` ms into its ramp.
    public func factor(elapsed: UInt64) -> Double {
        if elapsed >= window { return 1 }
        let t = Double(max(elapsed, 1)) / Double(window)
        let f = aggression == 1 ? t : pow(t, 1 / aggression)
        return max(Double(minWeightPercent) / 100, f)
    }
}

/// The ramps of a balancer's endpoints (`SlowStart`), as of when the balancer was built: each
/// endpoint's start time (its `rampSince`; 0 = not ramping) and when the last ramp ends. A pick
/// reads `until` only (one compare) once every ramp is over, or when no endpoint is ramping.
public struct Ramps: Sendable {
    public let slowStart: SlowStart?
    /// Per endpoint (the balancer's list): when its ramp began, ms (0: none).
    let since: [UInt64]
    /// When the last ramp ends (0: no ramp left).
    public private(set) var until: UInt64

    public init() { slowStart = nil; since = []; until = 0 }

    public init<E: BalancedEndpoint>(_ s: SlowStart?, for endpoints: [E], now: UInt64) {
        slowStart = s
        guard let s else { since = []; until = 0; return }
        since = endpoints.map { $0.rampSince != 0 && $0.rampSince + s.window > now ? $0.rampSince : 0 }
        // Every endpoint ramping since the same moment (a new cluster): shares stay as weighted.
        let first = since.first ?? 0
        until = since.allSatisfy({ $0 == first }) ? 0 : (since.max().map { $0 == 0 ? 0 : $0 + s.window } ?? 0)
    }

    /// Whether a pick at `now` must scale weights; forgets the ramps once the last is over.
    @inline(__always)
    public mutating func active(now: UInt64) -> Bool {
        if until == 0 { return false }
        if now < until { return true }
        until = 0
        return false
    }

    /// The weight of endpoint `i` (full weight `w`) at `now`.
    @inline(__always)
    public func weight(_ i: Int, _ w: Int, now: UInt64) -> Double {
        let t = since[i]
        guard t != 0, let s = slowStart, now < t + s.window else { return Double(w) }
        return Double(w) * s.factor(elapsed: now > t ? now - t : 0)
    }
}
