import RemoraCore
import RemoraIO
@testable import RemoraProxy
import Testing

/// A worker's log lines go to the main thread through a bounded buffer: a worker never writes
/// stderr itself, and when the main thread is behind, lines are dropped and counted.
@Suite struct WorkerLogTests {
    @Test func dropsWhenFullAndCounts() {
        let log = WorkerLog(capacity: 10)
        #expect(log.admit("12345"))
        #expect(log.admit("1234"))
        #expect(log.inFlight == 9)
        #expect(!log.admit("12"))   // 11 > 10: dropped
        #expect(!log.admit("123456789012"))   // larger than the whole buffer
        #expect(log.admit("1"))     // exactly full
        #expect(log.dropped == 2)
        #expect(log.takeDropped() == 2)
        #expect(log.takeDropped() == 0)   // reported once
        log.written("12345")              // the main thread caught up on one line
        #expect(log.inFlight == 5)
        #expect(log.admit("abcde"))
        #expect(!log.admit("x"))
        #expect(log.takeDropped() == 1)
        log.written("1234"); log.written("1"); log.written("abcde")
        #expect(log.inFlight == 0)
    }
}

/// `Worker.log` never writes stderr: it posts the line to the main loop's mailbox, or drops it.
@Suite struct WorkerLogPathTests {
    final class Received { var lines: [String] = [] }

    @Test func workerLinesReachTheMainLoop() throws {
        let cfg = Config(workers: 1, listeners: [], clusters: [])
        let snap = try Snapshot(config: cfg)
        let buffer = WorkerLog(capacity: 20)
        let worker = Worker(id: 3, snapshot: snap, stats: StatRegistry(workers: 1).stats(for: snap)[0], log: buffer)
        let main = EventLoop()
        let got = Received()
        var box: Mailbox<MainMessage>!
        box = Mailbox(loop: main) { m in
            if case let .log(w, line) = m { got.lines.append("\(w) \(line)") }
            box.close()
        }
        worker.main = box
        worker.log("first")    // "worker 3: first": 15 bytes
        worker.log("second")   // 16 more: over 20, dropped
        #expect(buffer.inFlight == 15 && buffer.dropped == 1)
        let limit = LoopTimer(loop: main)   // bounds the test if nothing arrives
        limit.start(after: 2_000) { box.close() }
        limit.unref()
        main.run()
        limit.close()
        main.run()
        #expect(got.lines == ["3 worker 3: first"])
        #expect(main.close())
        #expect(worker.loop.close())
    }
}
