import RemoraPolicy
import Testing

/// The balancers other than round robin, on scripted randomness and an injected clock.
@Suite struct BalancerTests {
    /// A draw whose low and high 32-bit halves pick `a` then `b` (of the others) among `n`.
    func draw(_ a: Int, _ b: Int, of n: Int) -> UInt64 {
        let lo = (UInt64(a) << 32 + (1 << 31)) / UInt64(n)
        let hi = (UInt64(b) << 32 + (1 << 31)) / UInt64(n - 1)
        return hi << 32 | lo
    }

    @Test func randomIsUniformAndFollowsWeights() {
        var r = FastRandom(seed: 7)
        let eps = (0..<4).map { _ in TestEndpoint() }
        var b = RandomBalancer(for: eps)
        var counts = [0, 0, 0, 0]
        for _ in 0..<40_000 { counts[b.pick(eps, random: &r)] += 1 }
        for c in counts { #expect(abs(c - 10_000) < 400) }   // 4 sd of a binomial(40000, 1/4) is ~350
        let weighted = [TestEndpoint(weight: 3), TestEndpoint(weight: 1)]
        var w = RandomBalancer(for: weighted)
        var s = ScriptedRandom([0, UInt64.max / 4 * 3 - 1 << 20, UInt64.max / 4 * 3 + 1 << 20, UInt64.max])
        #expect((0..<4).map { _ in w.pick(weighted, random: &s) } == [0, 0, 1, 1])
    }

    @Test func twoChoicesAreDistinct() {
        let eps = (0..<3).map { _ in TestEndpoint() }
        var b = LeastRequest()
        for n in [2, 3, 5] {
            let eps = (0..<n).map { _ in TestEndpoint() }
            var r = FastRandom(seed: UInt64(n))
            for _ in 0..<1000 { _ = b.pick(eps, random: &r) }
        }
        eps[0].activeRequests = 5; eps[1].activeRequests = 0; eps[2].activeRequests = 5
        var s = ScriptedRandom([draw(0, 1, of: 3)])   // candidates 0 and 2 (the second skips 0)
        let i = b.pick(eps, random: &s)
        #expect(i == 0)   // a tie goes to the first drawn
    }

    @Test func leastRequestPicksTheLessLoadedOfTwo() {
        let eps = (0..<3).map { _ in TestEndpoint() }
        eps[0].activeRequests = 4; eps[1].activeRequests = 1; eps[2].activeRequests = 9
        var b = LeastRequest()
        var s = ScriptedRandom([draw(0, 0, of: 3), draw(2, 0, of: 3), draw(2, 1, of: 3)])
        #expect(b.pick(eps, random: &s) == 1)   // 0 vs 1
        #expect(b.pick(eps, random: &s) == 0)   // 2 vs 0
        #expect(b.pick(eps, random: &s) == 1)   // 2 vs 1
        // Per unit of weight: 4 active on weight 4 beats 2 active on weight 1.
        let w = [TestEndpoint(weight: 4), TestEndpoint(weight: 1)]
        w[0].activeRequests = 4; w[1].activeRequests = 2
        var t = ScriptedRandom([draw(1, 0, of: 2)])
        #expect(b.pick(w, random: &t) == 0)
    }

    @Test func leastRequestNeverPicksTheBusiestOfThree() {
        let eps = (0..<3).map { _ in TestEndpoint() }
        eps[1].activeRequests = 100
        var b = LeastRequest()
        var r = FastRandom(seed: 3)
        for _ in 0..<1000 { #expect(b.pick(eps, random: &r) != 1) }
    }

    @Test func peakEWMATakesPeaksAtOnceAndDecaysOnAClock() {
        let clock = ManualClock(1_000)
        var e = PeakEWMA(stamp: clock.nowMillis)
        #expect(e.current(now: clock.nowMillis) == 30)        // the default RTT for a new endpoint
        e.observe(200, now: clock.nowMillis)
        #expect(e.estimate == 200)                              // a peak replaces the estimate
        e.observe(10, now: clock.nowMillis)
        #expect(e.estimate == 200)                              // no time passed: a lower one moves nothing
        clock.advance(10_000)                                   // one time constant
        #expect(abs(e.current(now: clock.nowMillis) - 200 * 0.3679) < 200 * 0.37 * 0.02)   // ≈ e^-1
        e.observe(10, now: clock.nowMillis)
        let expected = 200 * 0.3679 + 10 * (1 - 0.3679)
        #expect(abs(e.estimate - expected) < 3)
        clock.advance(100_000)
        #expect(e.current(now: clock.nowMillis) < 0.1)          // idle long enough: tried again
        #expect(e.cost(now: clock.nowMillis, active: 3) >= 4)   // (estimate + 1 ms) × (active + 1)
    }

    @Test func peakEWMAAvoidsTheSlowEndpointAndWeighsLoad() {
        let clock = ManualClock(5_000)
        let eps = (0..<3).map { _ in TestEndpoint() }
        for e in eps { e.latency = PeakEWMA(stamp: clock.nowMillis) }
        eps[0].latency.observe(5, now: clock.nowMillis)
        eps[1].latency.observe(100, now: clock.nowMillis)       // 20× slower
        eps[2].latency.observe(5, now: clock.nowMillis)
        var b = PeakEWMABalancer()
        var r = FastRandom(seed: 11)
        var counts = [0, 0, 0]
        for _ in 0..<3000 { counts[b.pick(eps, hash: 0, now: clock.nowMillis, random: &r)] += 1 }
        #expect(counts[1] == 0)
        // With enough requests waiting on the fast ones, the slow one gets its share.
        eps[0].activeRequests = 40; eps[2].activeRequests = 40
        var s = ScriptedRandom([draw(0, 0, of: 3)])
        #expect(b.pick(eps, hash: 0, now: clock.nowMillis, random: &s) == 1)
        // A new endpoint (default RTT 30 ms) is neither starved nor flooded: it wins over a fast
        // endpoint only once that one has requests waiting.
        let pair = [TestEndpoint(), TestEndpoint()]
        pair[0].latency = PeakEWMA(stamp: clock.nowMillis); pair[0].latency.observe(5, now: clock.nowMillis)
        pair[1].latency = PeakEWMA(stamp: clock.nowMillis)
        var t = ScriptedRandom([draw(0, 0, of: 2)])
        #expect(b.pick(pair, hash: 0, now: clock.nowMillis, random: &t) == 0)
        pair[0].activeRequests = 6
        #expect(b.pick(pair, hash: 0, now: clock.nowMillis, random: &t) == 1)
    }

    @Test func ringHashKeepsKeysAndMovesAboutOneNth() {
        let four = (0..<4).map { TestEndpoint(named: $0) }
        var ring = RingHash(for: four)
        #expect(ring.ringSize >= RingHash.minimumRing)
        var r = ScriptedRandom([0])
        let keys = (0..<4000).map { KeyHash.string("user-\($0)") }
        let before = keys.map { ring.pick(four, hash: $0, now: 0, random: &r) }
        #expect(keys.map { ring.pick(four, hash: $0, now: 0, random: &r) } == before)   // stable
        var counts = [0, 0, 0, 0]
        for b in before { counts[b] += 1 }
        for c in counts { #expect(c > 600 && c < 1400) }
        let five = four + [TestEndpoint(named: 4)]
        var ring5 = RingHash(for: five)
        let after = keys.map { ring5.pick(five, hash: $0, now: 0, random: &r) }
        let moved = zip(before, after).filter { $0 != $1 }
        #expect(moved.allSatisfy { $0.1 == 4 })                 // only to the new endpoint
        #expect(moved.count > 4000 / 5 / 2 && moved.count < 4000 / 5 * 2)   // ~1/5
    }

    @Test func maglevFillsItsTableEvenlyAndMovesAboutOneNth() {
        let four = (0..<4).map { TestEndpoint(named: $0) }
        var m = Maglev(for: four)
        var r = ScriptedRandom([0])
        let keys = (0..<4000).map { KeyHash.string("user-\($0)") }
        let before = keys.map { m.pick(four, hash: $0, now: 0, random: &r) }
        var counts = [0, 0, 0, 0]
        for b in before { counts[b] += 1 }
        for c in counts { #expect(c > 800 && c < 1200) }
        let five = four + [TestEndpoint(named: 4)]
        var m5 = Maglev(for: five)
        let after = keys.map { m5.pick(five, hash: $0, now: 0, random: &r) }
        let moved = zip(before, after).filter { $0 != $1 }.count
        #expect(moved > 4000 / 5 / 2 && moved < 4000 / 5 * 3 / 2)
        // Weights: 3, 1 → about 3/4 of the keys on the first.
        let weighted = [TestEndpoint(named: 0, weight: 3), TestEndpoint(named: 1, weight: 1)]
        var mw = Maglev(for: weighted)
        let first = keys.filter { mw.pick(weighted, hash: $0, now: 0, random: &r) == 0 }.count
        #expect(first > 2800 && first < 3200)
    }

    @Test func balancerDispatchesByKind() {
        let eps = (0..<3).map { TestEndpoint(named: $0) }
        var r = ScriptedRandom([0])
        var rr = Balancer(.roundRobin, for: eps)
        #expect((0..<4).map { _ in rr.pick(eps, hash: 0, now: 0, random: &r) } == [0, 1, 2, 0])
        for kind in [BalancerKind.ringHash, .maglev] {
            var b = Balancer(kind, for: eps)
            let h = KeyHash.string("k")
            let first = b.pick(eps, hash: h, now: 0, random: &r)
            #expect((0..<5).allSatisfy { _ in b.pick(eps, hash: h, now: 0, random: &r) == first })
        }
        #expect(Balancer(.peakEWMA, for: eps).needsClock && !Balancer(.leastRequest, for: eps).needsClock)
        #expect(BalancerKind(rawValue: "least_request") == .leastRequest)
    }
}
