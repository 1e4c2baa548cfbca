/// Many deadlines on one timer: a hashed timing wheel (Varghese & Lauck; the shape of h2o's
/// timerwheel and Kafka's purgatory) for items numbered `0 ..< count`, each with at most one pending
/// wake. Time is cut into ticks of `tick` ms; an item waits in the slot of its tick and is handed
/// out once that tick has wholly passed, so it fires at most one tick late and never early. Items
/// whose ticks are due together come out together: their owner wakes once for all of them (the
/// health checker's probes: one loop wake-up and no timer-heap work per probe).
///
/// Rescheduling an item leaves its old entry in place; the entry is recognised as stale and dropped
/// when its slot is next visited (nothing is searched). Pure: the time is passed in; no allocation
/// once the slots have grown to their working size.
public struct TimerWheel: Sendable {
    public let tick: UInt64
    let mask: Int
    var slots: [[Int32]]
    /// Per item: when it is due (ms), and the slot holding its live entry (-1: none).
    var due: [UInt64]
    var slotOf: [Int32]
    /// Every tick (time / `tick`) up to and including this one has been handed out.
    var done: Int
    /// Scratch for the slot being visited.
    var visiting: [Int32] = []

    /// `slots` is rounded up to a power of two; `now` is the current time (ms).
    public init(tick: UInt64, slots: Int = 256, count: Int, now: UInt64) {
        self.tick = max(1, tick)
        var n = 1
        while n < max(2, slots) { n <<= 1 }
        mask = n - 1
        self.slots = Array(repeating: [], count: n)
        due = Array(repeating: 0, count: count)
        slotOf = Array(repeating: -1, count: count)
        done = Int(now / self.tick) - 1
    }

    /// `item` is due at `time` (ms; a time already passed fires at the next tick). Replaces the
    /// item's pending wake, if any.
    public mutating func schedule(_ item: Int, at time: UInt64) {
        let t = max(Int(time / tick), done + 1)
        due[item] = max(time, UInt64(t) * tick)
        let s = Int32(t & mask)
        if slotOf[item] == s { return }   // its entry is already there (an earlier wake in this slot's rounds)
        slotOf[item] = s
        slots[Int(s)].append(Int32(item))
    }

    /// Forgets `item`'s pending wake.
    public mutating func cancel(_ item: Int) { slotOf[item] = -1 }

    /// Whether `item` has a pending wake.
    public func isScheduled(_ item: Int) -> Bool { slotOf[item] >= 0 }

    /// Hands out (appends to `out`) every item due by `now` whose tick has wholly passed, each once,
    /// and forgets their wakes.
    public mutating func expire(now: UInt64, into out: inout [Int]) {
        let last = Int((now + 1) / tick) - 1   // the last tick that has wholly passed
        guard last > done else { return }
        var k = done + 1
        for _ in 0..<min(last - done, mask + 1) {   // past a full turn, every slot once
            visit(k & mask, now: now, into: &out)
            k += 1
        }
        done = last
    }

    mutating func visit(_ slot: Int, now: UInt64, into out: inout [Int]) {
        if slots[slot].isEmpty { return }
        swap(&visiting, &slots[slot])
        for i in visiting {
            let item = Int(i)
            guard slotOf[item] == Int32(slot) else { continue }       // stale: rescheduled elsewhere
            if due[item] > now { slots[slot].append(i); continue }    // a later turn of the wheel
            slotOf[item] = -1
            out.append(item)
        }
        visiting.removeAll(keepingCapacity: true)
    }

    /// When the owner should wake next (ms): the end of the first tick after the handed-out ones
    /// whose slot holds an entry (possibly stale or for a later turn: an early wake that finds
    /// nothing, never a late one); nil when the wheel is empty.
    public func nextWake() -> UInt64? {
        var k = done + 1
        for _ in 0...mask {
            if !slots[k & mask].isEmpty { return UInt64(k + 1) * tick - 1 }
            k += 1
        }
        return nil
    }
}
