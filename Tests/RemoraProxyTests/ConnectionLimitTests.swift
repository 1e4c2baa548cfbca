import RemoraCore
import RemoraPolicy
@testable import RemoraProxy
import Testing

/// `max_connections`: one counter per listener and one per process, shared by the workers.
@Suite struct ConnectionLimitTests {
    @Test func listenerLimitThenProcessLimit() {
        let process = ConnectionCounter(process: nil)
        let a = ConnectionCounter(process: process), b = ConnectionCounter(process: process)
        for _ in 0..<3 { #expect(a.acquire(limit: 3, processLimit: 5) == .admitted) }
        #expect(a.acquire(limit: 3, processLimit: 5) == .overListener, "the 4th on a listener of 3")
        #expect(a.open == 3 && process.open == 3, "a refusal leaves the counts as they were")
        #expect(b.acquire(limit: 10, processLimit: 5) == .admitted)
        #expect(b.acquire(limit: 10, processLimit: 5) == .admitted)
        #expect(b.acquire(limit: 10, processLimit: 5) == .overProcess, "the 6th in a process of 5")
        #expect(b.open == 2 && process.open == 5)
        a.release()
        #expect(a.open == 2 && process.open == 4)
        #expect(b.acquire(limit: 10, processLimit: 5) == .admitted)
        #expect(b.acquire(limit: Int.max, processLimit: Int.max) == .admitted, "no limits: counted anyway")
        #expect(process.open == 6)
    }

    @Test func countsStayExactUnderConcurrentWorkers() async {
        let process = ConnectionCounter(process: nil)
        let l = ConnectionCounter(process: process)
        let admitted = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    var n = 0
                    for _ in 0..<1000 where l.acquire(limit: 100, processLimit: 1000) == .admitted { n += 1 }
                    return n
                }
            }
            return await group.reduce(0, +)
        }
        #expect(admitted == 100 && l.open == 100 && process.open == 100)
    }

    @Test func theOverflowAnswerIsOneWholeResponse() throws {
        let s = String(decoding: UnsafeRawBufferPointer(start: ConnectionCounter.overflowResponse.utf8Start,
                                                        count: ConnectionCounter.overflowResponse.utf8CodeUnitCount), as: UTF8.self)
        let bytes = Array(s.utf8)
        let end = try #require((0..<bytes.count - 3).first { bytes[$0..<$0 + 4].elementsEqual([13, 10, 13, 10]) })
        let head = String(decoding: bytes[..<end], as: UTF8.self), body = bytes[(end + 4)...]
        #expect(head.hasPrefix("HTTP/1.1 503 "))
        #expect(head.contains("content-length: \(body.count)") && head.contains("connection: close"))
    }
}
