import Testing
@testable import RemoraCore

/// Pools let go of what a whole period did not use (`Worker.trimPools` calls `trim` every 5 s).
@Suite struct RecyclerTests {
    final class Item {
        let n: Int
        init(_ n: Int) { self.n = n }
    }

    @Test func trimDropsOnlyWhatNoTakeReachedSinceTheLastTrim() {
        var r = Recycler<Item>()
        for i in 0..<10 { r.give(Item(i)) }
        #expect(r.trim() == 0)                    // the first period starts here: nothing measured yet
        let a = r.take()!, b = r.take()!, c = r.take()!   // the load uses 3 of the 10
        #expect([a.n, b.n, c.n] == [9, 8, 7])     // last given, first taken
        r.give(c); r.give(b); r.give(a)
        var dropped: [Int] = []
        #expect(r.trim { dropped.append($0.n) } == 7)
        #expect(dropped == Array(0..<7))          // the bottom of the stack: untouched for the period
        #expect(r.stack.map(\.n) == [7, 8, 9])    // what the load used stays, in order
        #expect(r.trim() == 3)                    // a period without any take: the rest goes
        #expect(r.stack.count == 0)
        #expect(r.trim() == 0)
    }

    @Test func aBurstWithinThePeriodKeepsEverything() {
        var r = Recycler<Item>()
        for i in 0..<4 { r.give(Item(i)) }
        r.trim()
        var taken: [Item] = []
        for _ in 0..<4 { taken.append(r.take()!) }   // all in use at once
        #expect(r.take() == nil)
        for x in taken.reversed() { r.give(x) }
        #expect(r.trim() == 0)
        #expect(r.stack.count == 4)
    }

    @Test func bufferPoolTrimFreesTheBuffersNoTakeReached() {
        let pool = BufferPool(initialCapacity: 64, maxKept: 16)
        var held = (0..<8).map { _ in pool.take() }
        for i in held.indices { pool.give(&held[i]) }
        #expect(pool.kept == 8)
        #expect(pool.trim() == 0)
        var b = pool.take(), c = pool.take()
        pool.give(&c); pool.give(&b)
        #expect(pool.trim() == 6)
        #expect(pool.kept == 2)
        var d = pool.take()                        // still usable after the shift down
        #expect(d.capacity >= 64 && d.count == 0)
        pool.give(&d)
        #expect(pool.trim() == 1)                  // the one not taken in this period
        #expect(pool.trim() == 1)
        #expect(pool.kept == 0)
    }
}
