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

    /// Over the limit, a plaintext HTTP client's first bytes say which refusal it gets: the HTTP/2
    /// preface (even split over reads) a GOAWAY, anything else a 503.
    @Test func prefaceDetection() {
        func feed(_ parts: [String]) -> Bool? {
            var matched = 0
            var last: Bool?
            for p in parts {
                last = Array(p.utf8).withUnsafeBytes { OverflowRefusal.isPreface($0, matched: &matched) }
                if last != nil { return last }
            }
            return last
        }
        #expect(feed(["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\u{12}\u{4}"]) == true)
        #expect(feed(["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]) == true)
        #expect(feed(["PRI * HT", "TP/2.0\r\n\r\nSM\r\n\r\n"]) == true)
        #expect(feed(["PRI * HT"]) == nil, "a prefix: wait for more")
        #expect(feed(["GET / HTTP/1.1\r\n\r\n"]) == false)
        #expect(feed(["PRIX"]) == false)
        #expect(feed(["P", "OST /"]) == false)
        let f = OverflowRefusal.goAway
        #expect(f[0..<9] == [0, 0, 0, 4, 0, 0, 0, 0, 0], "an empty SETTINGS first")
        #expect(f[12] == 7 && f[13] == 0 && Array(f[14..<18]) == [0, 0, 0, 0], "GOAWAY on stream 0")
        #expect(Array(f[18..<22]) == [0, 0, 0, 0] && Array(f[22..<26]) == [0, 0, 0, 7], "last stream 0, REFUSED_STREAM")
        #expect(Int(f[9]) << 16 | Int(f[10]) << 8 | Int(f[11]) == f.count - 18)
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
