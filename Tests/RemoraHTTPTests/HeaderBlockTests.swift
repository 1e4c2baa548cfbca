import Testing
import RemoraCore
@testable import RemoraHTTP

@Suite struct HeaderBlockTests {
    /// Fields point into the arena: when it grows (moves), every earlier field must move with it.
    @Test func fieldsSurviveArenaGrowth() {
        let pool = BufferPool(initialCapacity: 16, maxKept: 4)
        var b = HeaderBlock()
        b.prepare(pool)
        var expected: [(String, String)] = []
        for i in 0..<200 {
            let name = "x-field-\(i)", value = String(repeating: "v", count: i % 37) + "\(i)"
            var n = name, v = value
            n.withUTF8 { np in v.withUTF8 { vp in b.append(UnsafeRawBufferPointer(np), UnsafeRawBufferPointer(vp)) } }
            expected.append((name, value))
        }
        // A field built in pieces (a large piece moves the arena mid-field), and one with its name lowercased.
        let off = b.beginField(rawBytes("x-forwarded-for"))
        b.appendToValue(rawBytes("10.0.0.1, "))
        var big = String(repeating: "9", count: 50_000)
        big.withUTF8 { b.appendToValue(UnsafeRawBufferPointer($0)) }
        b.endField(nameOffset: off, nameLength: 15)
        b.append(lowercasingName: rawBytes("Content-TYPE"), rawBytes("text/plain"))
        expected.append(("x-forwarded-for", "10.0.0.1, " + big))
        expected.append(("content-type", "text/plain"))
        let got = b.withRefs { refs in refs.map { ($0.name.string, $0.value.string) } }
        #expect(got.count == expected.count)
        #expect(got.elementsEqual(expected) { $0.0 == $1.0 && $0.1 == $1.1 })
        #expect(b.name(3).string == "x-field-3" && b.value(3).string == "vvv3")
        #expect(b.listSize == expected.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 32 })
        b.release(to: pool)
        #expect(b.count == 0 && b.withRefs { $0.count } == 0)
    }

    @Test func emptyValuesAndReuse() {
        let pool = BufferPool(initialCapacity: 64, maxKept: 4)
        var b = HeaderBlock()
        b.prepare(pool)
        b.append(rawBytes("a"), UnsafeRawBufferPointer(start: nil, count: 0))
        b.append(rawBytes("b"), rawBytes("2"))
        #expect(b.withRefs { $0.map { $0.name.string + "=" + $0.value.string } } == ["a=", "b=2"])
        b.removeAll()
        b.append(rawBytes("c"), rawBytes("3"))
        #expect(b.withRefs { $0.map { $0.name.string + "=" + $0.value.string } } == ["c=3"])
        b.release(to: pool)
    }
}
