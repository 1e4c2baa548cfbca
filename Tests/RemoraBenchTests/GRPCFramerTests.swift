import Testing
@testable import RemoraBench

@Suite struct GRPCFramerTests {
    /// A length-prefixed gRPC message of `n` bytes (compressed flag `flag`).
    func message(_ n: Int, flag: UInt8 = 0) -> [UInt8] {
        let len = UInt32(n)
        return [flag, UInt8(len >> 24), UInt8((len >> 16) & 0xFF), UInt8((len >> 8) & 0xFF), UInt8(len & 0xFF)]
            + [UInt8](repeating: 0xAB, count: n)
    }

    /// Feeds `bytes` cut at `cuts`; returns the messages completed by each chunk.
    func feed(_ f: inout GRPCMessageFramer, _ bytes: [UInt8], cuts: [Int]) -> [Int] {
        var out: [Int] = []
        var start = 0
        for end in cuts + [bytes.count] {
            out.append(bytes[start..<end].withUnsafeBytes { f.feed($0) })
            start = end
        }
        return out
    }

    @Test func severalMessagesInOneChunk() {
        var f = GRPCMessageFramer()
        let body = message(3) + message(0) + message(70_000) + message(1)
        #expect(feed(&f, body, cuts: []) == [4])
        #expect(f.atBoundary)
    }

    @Test func zeroLengthMessages() {
        var f = GRPCMessageFramer()
        #expect(feed(&f, message(0) + message(0), cuts: []) == [2])
        // The prefix of an empty message ends a chunk: the message is complete there.
        #expect(feed(&f, message(0) + message(0), cuts: [5]) == [1, 1])
        #expect(f.atBoundary)
    }

    @Test func prefixSplitAcrossChunksAtEveryPoint() {
        // A length above 2^16 and a set compressed flag: every prefix byte matters.
        // Messages end at bytes 7 and 65,549; the empty one's prefix ends the body (65,554).
        let body = message(2, flag: 1) + message(65_537) + message(0)
        for cut in Array(1...20) + Array(65_540..<body.count) {
            var f = GRPCMessageFramer()
            let counts = feed(&f, body, cuts: [cut])
            #expect(counts.reduce(0, +) == 3, "cut at \(cut)")
            #expect(counts[0] == (cut >= 7 ? 1 : 0) + (cut >= 65_549 ? 1 : 0), "cut at \(cut)")
            #expect(f.atBoundary)
        }
    }

    @Test func oneByteAtATime() {
        var f = GRPCMessageFramer()
        let body = message(4) + message(0) + message(300)
        let counts = feed(&f, body, cuts: Array(1..<body.count))
        #expect(counts.reduce(0, +) == 3)
        #expect(counts[8] == 1)            // last byte of the first message (5 + 4 bytes)
        #expect(counts[13] == 1)           // last byte of the empty message's prefix
        #expect(counts.last == 1)
        #expect(f.atBoundary)
    }

    @Test func aBodyCutShortIsNotAtABoundary() {
        var f = GRPCMessageFramer()
        #expect(feed(&f, Array(message(10).prefix(12)), cuts: []) == [0])
        #expect(!f.atBoundary)
        var g = GRPCMessageFramer()
        #expect(feed(&g, [0, 0, 0], cuts: []) == [0])   // inside a prefix
        #expect(!g.atBoundary)
        #expect(GRPCMessageFramer().atBoundary)
    }
}
