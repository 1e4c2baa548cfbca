import RemoraPolicy
import Testing

@Suite struct RateLimitTests {
    let s: UInt64 = 1_000_000_000   // one second in ns

    @Test func aFullBucketGivesTheBurstThenTheRate() {
        let p = RateLimitPolicy(perSecond: 100, burst: 200)
        #expect(p.interval == 10_000_000)
        let t0 = 50 * s
        var tat: UInt64 = 0   // never used: full
        var passed: UInt64 = 0
        for _ in 0..<300 {
            let t = p.take(tat: tat, now: t0, want: 1)
            tat = t.tat
            passed += t.granted
        }
        #expect(passed == 200)
        let over = p.take(tat: tat, now: t0, want: 1)
        #expect(over.granted == 0 && over.retryAfter == p.interval)
        // One second later: 100 more.
        passed = 0
        for _ in 0..<300 { let t = p.take(tat: tat, now: t0 + s, want: 1); tat = t.tat; passed += t.granted }
        #expect(passed == 100)
        #expect(p.remaining(tat: tat, now: t0 + s) == 0 && p.remaining(tat: tat, now: t0 + 3 * s) == 200)
    }

    @Test func batchesTakeWhatIsLeft() {
        let p = RateLimitPolicy(perSecond: 100_000, burst: 100)
        #expect(p.batch == 12)   // min(64, 100 per ms, burst / 8)
        let t0 = 7 * s
        var t = p.take(tat: 0, now: t0, want: 64)
        #expect(t.granted == 64)
        t = p.take(tat: t.tat, now: t0, want: 64)
        #expect(t.granted == 36)
        t = p.take(tat: t.tat, now: t0, want: 64)
        #expect(t.granted == 0 && t.retryAfter == p.interval)
    }

    @Test func batchSizeFollowsTheRate() {
        #expect(RateLimitPolicy(perSecond: 100, burst: 100).batch == 1)
        #expect(RateLimitPolicy(perSecond: 1_000_000, burst: 1_000_000).batch == 64)
        #expect(RateLimitPolicy(perSecond: 5).burst == 5)
    }

    @Test func aQuietBucketDoesNotOverfill() {
        let p = RateLimitPolicy(perSecond: 10, burst: 5)
        let t = p.take(tat: 1 * s, now: 1000 * s, want: 100)
        #expect(t.granted == 5)
    }
}
