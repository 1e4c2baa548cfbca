import Testing
@testable import RemoraBench

@Suite struct RateScheduleTests {
    @Test func oneThreadIsEvenlySpacedFromStart() {
        let s = RateSchedule(start: 1_000, rate: 1000, thread: 0, threads: 1)
        #expect(s.intended(0) == 1_000)
        #expect(s.intended(1) == 1_000 + 1_000_000)
        #expect(s.intended(1000) == 1_000 + 1_000_000_000)
        #expect(s.next == 1_000)
    }

    @Test func threadsInterleaveIntoOneStreamAtTheTotalRate() {
        // 3 threads at 3,000/s in total: together, one request every 1/3 ms, each exactly once.
        let threads = 3
        var all: [UInt64] = []
        for k in 0..<threads {
            let s = RateSchedule(start: 0, rate: 3000, thread: k, threads: threads)
            for j in 0..<100 { all.append(s.intended(UInt64(j))) }
        }
        all.sort()
        for (g, t) in all.enumerated() {
            #expect(t == UInt64((Double(g) * 1e9 / 3000).rounded()))
        }
    }

    @Test func fractionalRatesDoNotDrift() {
        let s = RateSchedule(start: 0, rate: 7, thread: 0, threads: 1)
        #expect(s.intended(7_000_000) == 1_000_000 * nsPerSecond)   // a million seconds later, to the ns
    }

    @Test func takeReturnsOnlyWhatIsDue() {
        var s = RateSchedule(start: 10_000_000, rate: 1000, thread: 0, threads: 1)
        #expect(s.take(now: 9_999_999) == nil)
        #expect(s.take(now: 10_000_000) == 10_000_000)
        #expect(s.take(now: 10_500_000) == nil)
        // Late by 3.5 ms: three requests are due at once, each keeping its own intended time.
        #expect(s.take(now: 13_500_000) == 11_000_000)
        #expect(s.take(now: 13_500_000) == 12_000_000)
        #expect(s.take(now: 13_500_000) == 13_000_000)
        #expect(s.take(now: 13_500_000) == nil)
        #expect(s.taken == 4)
        s.stop()
        #expect(s.next == nil)
        #expect(s.take(now: .max) == nil)
    }

    @Test func limitStopsTheSchedule() {
        var s = RateSchedule(start: 0, rate: 1e6, thread: 1, threads: 2, limit: 2)
        #expect(s.take(now: .max) == 1_000)
        #expect(s.take(now: .max) == 3_000)
        #expect(s.take(now: .max) == nil)
        #expect(s.remaining == 0)
    }

    @Test func timerDelaysNeverOversleepByMoreThanAQuarterMillisecond() {
        #expect(RateSchedule.timerDelayMs(deltaNs: -5) == 0)
        #expect(RateSchedule.timerDelayMs(deltaNs: 0) == 0)
        #expect(RateSchedule.timerDelayMs(deltaNs: 740_000) == 0)    // poll rather than sleep ~1 ms
        #expect(RateSchedule.timerDelayMs(deltaNs: 750_000) == 1)
        #expect(RateSchedule.timerDelayMs(deltaNs: 1_000_000) == 1)
        #expect(RateSchedule.timerDelayMs(deltaNs: 1_740_000) == 1)
        #expect(RateSchedule.timerDelayMs(deltaNs: 10_000_000) == 10)
        for delta in stride(from: Int64(0), to: 20_000_000, by: 12_345) {
            let wake = Int64(RateSchedule.timerDelayMs(deltaNs: delta)) * 1_000_000
            #expect(wake - delta <= 250_000)
        }
    }

    @Test func ringKeepsOrderAcrossGrowth() {
        var r = UInt64Ring(capacity: 16)
        defer { r.release() }
        for i in 0..<10 { r.push(UInt64(i)) }
        for i in 0..<8 { #expect(r.pop() == UInt64(i)) }
        for i in 10..<100 { r.push(UInt64(i)) }   // wraps, then grows
        #expect(r.count == 92)
        for i in 8..<100 { #expect(r.pop() == UInt64(i)) }
        #expect(r.pop() == nil)
        #expect(r.isEmpty)
    }
}
