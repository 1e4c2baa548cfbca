import CRemoraSupport
import RemoraCore
import RemoraPolicy
import RemoraRouting

/// One route's token bucket over the whole proxy, shared by every worker without a lock: its state
/// is one 64-bit word (the GCRA theoretical arrival time, `RateLimitPolicy`) updated by a
/// compare-and-swap, on a cache line of its own. Workers take tokens in batches
/// (`RateLimitPolicy.batch`), so the word is touched once per batch, not per request. Created with
/// the snapshot (a reload starts the buckets full).
final class SharedTokenBucket: @unchecked Sendable {
    let policy: RateLimitPolicy
    /// The TAT, ns on the loops' clock (`uv_now` × 10⁶: every loop reads the same monotonic clock).
    let word: UnsafeMutablePointer<UInt64>

    init(_ policy: RateLimitPolicy) {
        self.policy = policy
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        word = raw.initializeMemory(as: UInt64.self, repeating: 0, count: 8)
    }

    deinit { UnsafeMutableRawPointer(word).deallocate() }

    /// Takes up to `want` tokens at `now` (ns): the tokens granted (0: over the limit).
    func take(now: UInt64, want: UInt64) -> RateLimitPolicy.Take {
        var old = remora_shared_load(word)
        while true {
            let t = policy.take(tat: old, now: now, want: want)
            if t.granted == 0 || remora_shared_cas(word, &old, t.tat) != 0 { return t }
        }
    }
}

/// Local rate limits (`rate_limit:` on a route): a request over its route's bucket is answered 429
/// with `x-ratelimit-limit` (per second), `x-ratelimit-remaining` (0) and `x-ratelimit-reset`
/// (seconds until a token is back); a gRPC request gets RESOURCE_EXHAUSTED (8). One per listener
/// and worker, present only when some route of the listener has `rate_limit:`; it holds the
/// worker's unspent tokens of each route's last batch. Counted in
/// `listener.<name>.downstream_rq_rate_limited`.
final class RateLimitFilter: HTTPFilter {
    /// Per route of the listener's table (nil: no limit); shared with the other workers.
    let buckets: [SharedTokenBucket?]
    /// Per route: tokens this worker took from the bucket and has not spent yet.
    var held: [UInt64]

    init?(buckets: [SharedTokenBucket?]) {
        guard buckets.contains(where: { $0 != nil }) else { return nil }
        self.buckets = buckets
        held = Array(repeating: 0, count: buckets.count)
    }

    func requestHeaders(_ e: Exchange, _ request: RequestView) -> FilterVerdict {
        let ri = e.routeIndex
        guard ri >= 0, let b = buckets[ri] else { return .next }
        if held[ri] > 0 { held[ri] -= 1; return .next }
        let t = b.take(now: e.timer.now &* 1_000_000, want: b.policy.batch)
        if t.granted > 0 { held[ri] = t.granted - 1; return .next }
        e.stats.inc(.downstream_rq_rate_limited)
        e.observe.flags.insert(.RL)
        var reply = LocalReply(.rateLimited, status: 429, grpcStatus: 8)
        reply.values = (UInt32(b.policy.perSecond), 0, UInt32(min(max(1, (t.retryAfter + 999_999_999) / 1_000_000_000), 86_400)))
        return .reply(reply)
    }
}

/// The resilience filters of a listener whose routes ask for them, in order: fault injection, then
/// the rate limit (an injected abort stands for the upstream failing and spends no token). None when
/// no route has `fault:` or `rate_limit:`, so such listeners keep an empty filter list.
func resilienceFilters(routes: RouteTable, buckets: [SharedTokenBucket?]) -> [any HTTPFilter] {
    var filters: [any HTTPFilter] = []
    if let f = FaultFilter(routes: routes) { filters.append(f) }
    if let r = RateLimitFilter(buckets: buckets) { filters.append(r) }
    return filters
}
