import RemoraPolicy
import Testing

@Suite struct BackoffTests {
    @Test func ceilingDoublesFromBaseToCap() {
        var b = Backoff(base: 100, cap: 10_000)
        var random = ScriptedRandom([0])
        var ceilings: [UInt64] = []
        for _ in 0..<10 { ceilings.append(b.ceiling); _ = b.next(random: &random) }
        #expect(ceilings == [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000])
    }

    @Test func fullJitterSpansZeroToCeiling() {
        // The smallest and the largest random value give 0 and the ceiling itself.
        var low = Backoff(base: 100, cap: 10_000)
        var zero = ScriptedRandom([0])
        #expect((0..<4).map { _ in low.next(random: &zero) } == [0, 0, 0, 0])
        var high = Backoff(base: 100, cap: 10_000)
        var top = ScriptedRandom([UInt64.max])
        #expect((0..<9).map { _ in high.next(random: &top) } == [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000])
        // Half way up the random range: half the ceiling.
        var mid = Backoff(base: 1, cap: 1000)
        var half = ScriptedRandom([1 << 63])
        #expect((0..<4).map { _ in mid.next(random: &half) } == [1, 1, 2, 4])
    }

    @Test func delaysStayWithinBoundsAndSpreadOut() {
        var random = FastRandom(seed: 42)
        var b = Backoff(base: 1, cap: 1000)
        for _ in 0..<12 { _ = b.next(random: &random) }   // at the cap
        var seen = Set<UInt64>()
        var sum: UInt64 = 0
        for _ in 0..<2000 {
            let d = b.next(random: &random)
            #expect(d <= 1000)
            seen.insert(min(d / 100, 9))
            sum += d
        }
        #expect(seen.count == 10)                       // every tenth of 0 ... 1000 is hit
        #expect(sum / 2000 > 400 && sum / 2000 < 600)   // mean ≈ cap / 2
    }

    @Test func resetStartsOverAndHugeCountsDoNotOverflow() {
        var b = Backoff(base: 3, cap: UInt64.max)
        var random = ScriptedRandom([UInt64.max])
        for _ in 0..<200 { _ = b.next(random: &random) }
        #expect(b.ceiling == UInt64.max && b.isBackingOff)
        b.reset()
        #expect(!b.isBackingOff && b.ceiling == 3 && b.next(random: &random) == 3)
    }
}
