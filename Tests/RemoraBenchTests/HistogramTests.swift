import Histogram
import Testing
@testable import RemoraBench

@Suite struct HistogramTests {
    /// A deterministic spread of latencies (µs), with a long tail.
    func values(seed: UInt64, count: Int) -> [UInt64] {
        var x = seed
        return (0..<count).map { _ in
            x = x &* 6364136223846793005 &+ 1442695040888963407
            let r = x >> 33
            return r % 10 == 0 ? 1_000 + r % 5_000_000 : 20 + r % 400
        }
    }

    @Test func mergingThreadsEqualsRecordingEverythingInOne() {
        var all = LatencyHistogram.make()
        var merged = BenchResult()
        for t in 0..<4 {
            var r = BenchResult()
            r.measureStart = 100
            r.measureEnd = 1_000 + UInt64(t)
            for v in values(seed: UInt64(t), count: 5_000) {
                r.latency.record(v)
                all.record(v)
            }
            r.counters.responses = 5_000
            r.counters.status[200] = 4_000
            r.counters.status[503] = 1_000
            r.counters[.timeout] = UInt64(t)
            r.counters.maxLatenessNs = UInt64(t * 10)
            merged.merge(r)
        }
        #expect(merged.latency == all)
        #expect(merged.latency.totalCount == 20_000)
        #expect(merged.counters.responses == 20_000)
        #expect(merged.counters.status[200] == 16_000 && merged.counters.status[503] == 4_000)
        #expect(merged.counters[.timeout] == 6)
        #expect(merged.counters.maxLatenessNs == 30)
        #expect(merged.counters.statusCounts.map(\.code) == [200, 503])
        #expect(merged.elapsedNs == 1_003 - 100)
        for p in [50.0, 99, 99.9, 100] {
            #expect(merged.latency.valueAtPercentile(p) == all.valueAtPercentile(p))
        }
    }

    @Test func layoutMatchesTheLibrary() {
        let l = HistogramCodec.Layout(lowestDiscernibleValue: 1, significantDigits: 3)
        #expect(l.subBucketHalfCountMagnitude == 10)
        #expect(l.unitMagnitude == 0)
        var h = LatencyHistogram.make()
        for v in values(seed: 9, count: 2_000) { h.record(v) }
        for v in h.recordedValues() {
            // every recorded bucket's value maps to an index whose value is in the same bucket
            let i = l.index(of: v.value)
            #expect(h.valuesAreEquivalent(l.value(at: i), v.value))
            #expect(l.index(of: l.value(at: i)) == i)
        }
        #expect(l.index(of: 0) == 0)
        #expect(l.index(of: 2047) == 2047)
        #expect(l.index(of: 2048) == 2048)
        #expect(l.index(of: 4096) == 3072)
    }

    @Test func encodingRoundTrips() throws {
        var h = LatencyHistogram.make()
        for v in values(seed: 3, count: 20_000) { h.record(v) }
        h.record(LatencyHistogram.highestTrackable)   // the clamped maximum
        let b64 = HistogramCodec.encodeCompressedBase64(h)
        #expect(b64.hasPrefix("HISTF"))   // compressed V2 cookie, as in HdrHistogram logs
        let back = try HistogramCodec.decodeCompressedBase64(b64)
        #expect(back.totalCount == h.totalCount)
        #expect(HistogramCodec.sparseCounts(back).map(\.index) == HistogramCodec.sparseCounts(h).map(\.index))
        #expect(HistogramCodec.sparseCounts(back).map(\.count) == HistogramCodec.sparseCounts(h).map(\.count))
        for p in [0.0, 50, 90, 99, 99.99] {
            #expect(h.valuesAreEquivalent(back.valueAtPercentile(p), h.valueAtPercentile(p)))
        }
        #expect(back.highestTrackableValue == h.highestTrackableValue)
    }

    @Test func emptyHistogramEncodes() throws {
        let h = LatencyHistogram.make()
        let back = try HistogramCodec.decodeCompressedBase64(HistogramCodec.encodeCompressedBase64(h))
        #expect(back.totalCount == 0)
    }

    @Test func v2HeaderAndZigZagRuns() {
        var h = LatencyHistogram.make()
        h.record(1)
        h.record(3, count: 300)
        let b = HistogramCodec.encodeV2(h)
        #expect(Array(b[0..<4]) == [0x1c, 0x84, 0x93, 0x13])
        #expect(Array(b[4..<8]) == [0, 0, 0, 5])   // payload bytes
        #expect(Array(b[12..<16]) == [0, 0, 0, 3])  // significant digits
        // index 0: run of 1 zero -> 0; index 1: 1 -> 2; index 2: 0 -> 0; index 3: 300 -> 600 = d8 04
        #expect(Array(b[40...]) == [0x00, 0x02, 0x00, 0xd8, 0x04])
        var h2 = LatencyHistogram.make()
        h2.record(100)
        // 100 zeros before index 100: -100 -> zigzag 199 = c7 01; then 1 -> 02
        #expect(Array(HistogramCodec.encodeV2(h2)[40...]) == [0xc7, 0x01, 0x02])
    }

    @Test func zlibStoredBlocksAreValid() throws {
        let data = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let z = HistogramCodec.zlibStored(data)
        #expect(z[0] == 0x78 && (Int(z[0]) * 256 + Int(z[1])) % 31 == 0)
        #expect(try HistogramCodec.inflateStored(z) == data)
        #expect(HistogramCodec.adler32(Array("Wikipedia".utf8)) == 0x11E6_0398)
        var bad = z
        bad[bad.count - 1] ^= 1
        #expect(throws: HistogramCodec.DecodeError.self) { try HistogramCodec.inflateStored(bad) }
    }

    @Test func base64() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            #expect(Base64.decode(Base64.encode(Array(s.utf8))) == Array(s.utf8))
        }
        #expect(Base64.encode(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(Base64.encode(Array("fo".utf8)) == "Zm8=")
        #expect(Base64.decode("Zm9v!") == nil)
    }

    @Test func decodingGarbageFailsCleanly() {
        for s in ["", "!!!", "AAAA", Base64.encode([0x1c, 0x84, 0x93, 0x14, 0, 0, 0, 50, 1, 2])] {
            #expect(throws: HistogramCodec.DecodeError.self) { try HistogramCodec.decodeCompressedBase64(s) }
        }
    }
}
