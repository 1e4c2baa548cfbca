/// A route's local rate limit (config `rate_limit:`), compiled: a token bucket of `burst` tokens
/// refilled at `perSecond`, over the whole proxy (all workers together).
///
/// The bucket is kept as GCRA (the generic cell rate algorithm, as in ATM networks and redis-cell):
/// one number, the *theoretical arrival time* (TAT) — the time at which the bucket would be full
/// again. Taking k tokens at time t moves it to max(TAT, t) + k·T (T = one token's interval); it is
/// allowed while the result is at most t + burst·T. One word of state means one atomic
/// compare-and-swap updates it, with no lock (the proxy's `SharedTokenBucket`); this type is the
/// arithmetic alone, pure, tested on given times.
public struct RateLimitPolicy: Sendable, Equatable {
    /// Tokens added per second (1 ... 1_000_000).
    public let perSecond: UInt64
    /// Bucket size: requests allowed at once after a quiet period (1 ... 1_000_000; default perSecond).
    public let burst: UInt64
    /// One token's interval, ns (1e9 / perSecond).
    public let interval: UInt64
    /// Tokens a worker takes from the shared bucket at a time: about 1 ms of the rate, at most 64 and
    /// at most an eighth of the burst, at least 1. A worker may hold up to this many tokens it has
    /// not used yet, so the proxy as a whole may pass up to `workers × batch` requests more than the
    /// bucket over a short window; in exchange a worker touches the shared word once per batch.
    public let batch: UInt64

    public init(perSecond: UInt64, burst: UInt64? = nil) {
        self.perSecond = max(perSecond, 1)
        self.burst = max(burst ?? perSecond, 1)
        interval = 1_000_000_000 / self.perSecond
        batch = max(1, min(64, self.perSecond / 1000, self.burst / 8))
    }

    /// What a take leaves: the new TAT and how many tokens were granted (0 = none: over the limit).
    public struct Take: Equatable, Sendable {
        public var tat: UInt64
        public var granted: UInt64
        /// When nothing was granted: ns until one token is back.
        public var retryAfter: UInt64
    }

    /// Takes up to `want` tokens at time `now` (ns) from a bucket whose TAT is `tat`: as many as
    /// fit, so a worker asking for a batch near the limit gets what is left.
    public func take(tat: UInt64, now: UInt64, want: UInt64) -> Take {
        let start = max(tat, now)
        let horizon = now &+ burst &* interval   // the latest a TAT may be
        guard start < horizon, horizon - start >= interval else {
            let back = start &+ interval
            return Take(tat: tat, granted: 0, retryAfter: back > horizon ? back - horizon : 1)
        }
        let k = min(want, (horizon - start) / interval)
        return Take(tat: start &+ k &* interval, granted: k, retryAfter: 0)
    }

    /// Tokens left in the bucket at `now` (for `x-ratelimit-remaining`).
    public func remaining(tat: UInt64, now: UInt64) -> UInt64 {
        let horizon = now &+ burst &* interval
        let start = max(tat, now)
        return start >= horizon ? 0 : (horizon - start) / interval
    }
}
