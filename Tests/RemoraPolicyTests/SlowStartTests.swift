import RemoraPolicy
import Testing

/// `slow_start` on a manual clock: Envoy's curve, and every balancer that ramps giving a returning
/// endpoint a share that grows over the window instead of jumping to its full share.
@Suite struct SlowStartTests {
    @Test func curve() {
        let s = SlowStart(window: 10_000)
        #expect(s.factor(elapsed: 0) == 0.1)            // min_weight_percent 10
        #expect(s.factor(elapsed: 500) == 0.1)
        #expect(abs(s.factor(elapsed: 5_000) - 0.5) < 1e-9)
        #expect(s.factor(elapsed: 10_000) == 1 && s.factor(elapsed: 99_999) == 1)
        let fast = SlowStart(window: 10_000, aggression: 2, minWeightPercent: 1)
        #expect(abs(fast.factor(elapsed: 2_500) - 0.5) < 1e-9)   // (1/4)^(1/2)
        #expect(fast.factor(elapsed: 1) == 0.01)
    }

    /// The share endpoint 0 (back at t = 1000) gets among three, in windows of `per` picks spread
    /// evenly over `window` ms.
    func shares(_ kind: BalancerKind, window: UInt64 = 10_000, steps: Int = 5, per: Int = 2_000) -> [Double] {
        let eps = (0..<3).map { TestEndpoint(named: $0) }
        eps[0].rampSince = 1_000
        var b = Balancer(kind, for: eps, slowStart: SlowStart(window: window), now: 1_000)
        #expect(b.needsClock)
        var r = FastRandom(seed: 42)
        var out: [Double] = []
        for step in 0..<steps {
            var hits = 0
            for k in 0..<per {
                let now = 1_000 + window * UInt64(step * per + k) / UInt64(steps * per)
                if b.pick(eps, hash: 0, now: now, random: &r) == 0 { hits += 1 }
            }
            out.append(Double(hits) / Double(per))
        }
        return out
    }

    @Test(arguments: [BalancerKind.roundRobin, .random, .leastRequest, .peakEWMA])
    func aReturningEndpointRampsUp(_ kind: BalancerKind) {
        let s = shares(kind)
        // full share is 1/3; at 10 % .. 90 % of the window it weighs ~0.1 .. 0.9 of the others
        #expect(s[0] < 0.12, "\(kind): \(s)")
        #expect(s[4] > 0.25, "\(kind): \(s)")
        for i in 1..<s.count { #expect(s[i] >= s[i - 1] - 0.02, "\(kind): \(s)") }
    }

    @Test func afterTheWindowPicksAreAsWithoutSlowStart() {
        let eps = (0..<3).map { TestEndpoint(named: $0) }
        eps[0].rampSince = 1_000
        var b = Balancer(.roundRobin, for: eps, slowStart: SlowStart(window: 1_000), now: 1_000)
        var r = FastRandom(seed: 1)
        _ = b.pick(eps, hash: 0, now: 2_000, random: &r)   // the ramp is over: forgotten
        #expect(!b.needsClock)
        var plain = Balancer(.roundRobin, for: eps)
        _ = plain.pick(eps, hash: 0, now: 2_000, random: &r)
        let seq = (0..<9).map { _ in b.pick(eps, hash: 0, now: 3_000, random: &r) }
        #expect(seq == (0..<9).map { _ in plain.pick(eps, hash: 0, now: 3_000, random: &r) })
    }

    @Test func noRampWhenAllStartTogetherOrForHashes() {
        let eps = (0..<3).map { TestEndpoint(named: $0) }
        for e in eps { e.rampSince = 500 }
        #expect(!Balancer(.roundRobin, for: eps, slowStart: SlowStart(window: 1_000), now: 500).needsClock)
        eps[0].rampSince = 800
        #expect(!Balancer(.ringHash, for: eps, slowStart: SlowStart(window: 1_000), now: 800).needsClock)
        #expect(!Balancer(.roundRobin, for: eps, now: 800).needsClock)
        #expect(!Balancer(.roundRobin, for: eps, slowStart: SlowStart(window: 100), now: 5_000).needsClock)   // long over
    }
}
