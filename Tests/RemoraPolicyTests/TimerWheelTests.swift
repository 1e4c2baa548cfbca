import RemoraPolicy
import Testing

/// The health checker's timing wheel on a manual clock: never early, at most one tick late, each
/// wake once, rescheduling and cancelling, long waits over several turns, long sleeps.
@Suite struct TimerWheelTests {
    func drain(_ w: inout TimerWheel, _ now: UInt64) -> [Int] {
        var out: [Int] = []
        w.expire(now: now, into: &out)
        return out.sorted()
    }

    @Test func firesOnceAtMostOneTickLateNeverEarly() {
        var w = TimerWheel(tick: 10, slots: 8, count: 4, now: 1_000)
        w.schedule(0, at: 1_005)
        w.schedule(1, at: 1_012)
        w.schedule(2, at: 1_040)
        #expect(w.nextWake() == 1_009)
        #expect(drain(&w, 1_004).isEmpty)
        #expect(drain(&w, 1_009) == [0])
        #expect(drain(&w, 1_009).isEmpty)   // once
        #expect(w.nextWake() == 1_019)
        #expect(drain(&w, 1_018).isEmpty && drain(&w, 1_019) == [1])
        #expect(drain(&w, 1_048).isEmpty && drain(&w, 1_049) == [2])
        #expect(w.nextWake() == nil)
    }

    @Test func everyDueTimeComesOutWithinOneTick() {
        var r = FastRandom(seed: 3)
        var w = TimerWheel(tick: 10, slots: 16, count: 200, now: 0)
        var due = [UInt64](repeating: 0, count: 200)
        for i in 0..<200 { due[i] = r.below(2_000); w.schedule(i, at: due[i]) }
        var fired = [UInt64?](repeating: nil, count: 200)
        var now: UInt64 = 0
        while now < 2_100 {
            now += r.below(7)   // irregular wake-ups
            var out: [Int] = []
            w.expire(now: now, into: &out)
            for i in out { #expect(fired[i] == nil); fired[i] = now }
        }
        for i in 0..<200 {
            let f = fired[i]!
            #expect(f >= due[i] && f < due[i] + 10 + 7, "item \(i) due \(due[i]) fired \(f)")
        }
    }

    @Test func rescheduleAndCancelLeaveNoStrayWake() {
        var w = TimerWheel(tick: 10, slots: 8, count: 3, now: 0)
        w.schedule(0, at: 15)
        w.schedule(0, at: 55)     // moved: the entry at 15 is stale
        w.schedule(1, at: 15)
        w.cancel(1)
        #expect(!w.isScheduled(1) && w.isScheduled(0))
        #expect(drain(&w, 19).isEmpty)
        #expect(drain(&w, 59) == [0])
        w.schedule(2, at: 3)      // already passed ticks: the next tick
        #expect(drain(&w, 69) == [2])
        // moved back and forth between two slots many times: one wake
        for k in 0..<100 { w.schedule(0, at: k % 2 == 0 ? 75 : 85) }
        #expect(drain(&w, 200) == [0] && w.nextWake() == nil)
    }

    @Test func waitsLongerThanATurnAndLongSleeps() {
        var w = TimerWheel(tick: 10, slots: 4, count: 2, now: 0)
        w.schedule(0, at: 1_000)   // 25 turns of a 40 ms wheel
        w.schedule(1, at: 95)
        var now: UInt64 = 0
        var seen: [Int: UInt64] = [:]
        while now <= 1_020 {
            now += 5
            var out: [Int] = []
            w.expire(now: now, into: &out)
            for i in out { seen[i] = now }
        }
        #expect(seen[1] == 100 && seen[0] == 1_010)
        w.schedule(0, at: 5_000)
        #expect(drain(&w, 1_000_000) == [0])   // a long sleep: every slot visited once
    }
}
