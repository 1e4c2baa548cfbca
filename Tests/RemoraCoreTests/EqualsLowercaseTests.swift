import RemoraCore
import Testing

/// `equalsLowercase` reads names a word at a time: against a byte-by-byte reference for names of
/// every length from 0 to 20, with each byte changed in turn.
@Suite struct EqualsLowercaseTests {
    static let literals: [StaticString] = ["", "a", "te", "via", "host", "b3-x", "x-b3-", "accept", "upgrade", "x-b3-flags",
                                           "content-type", "traceparent", "user-agent", "x-forwarded-for",
                                           "x-b3-parentspanid", "x-envoy-original-path", "proxy-connection"]

    static func reference(_ b: [UInt8], _ lower: StaticString) -> Bool {
        let l = Array(UnsafeBufferPointer(start: lower.utf8Start, count: lower.utf8CodeUnitCount))
        return b.count == l.count && zip(b, l).allSatisfy { $0 | 0x20 == $1 }
    }

    @Test func matchesByteByByteComparison() {
        for lit in Self.literals {
            let exact = Array(UnsafeBufferPointer(start: lit.utf8Start, count: lit.utf8CodeUnitCount))
            let upper = exact.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }
            for name in [exact, upper, exact + [0x61], Array(exact.dropLast())] {
                #expect(name.withUnsafeBytes { $0.equalsLowercase(lit) } == Self.reference(name, lit), "\(lit) \(name)")
            }
            for i in exact.indices {
                for c: UInt8 in [0x00, 0x0D, 0x2D, 0x41, 0x5F, 0x61, 0x7A, 0x80, 0xFF] {
                    var name = upper
                    name[i] = c
                    #expect(name.withUnsafeBytes { $0.equalsLowercase(lit) } == Self.reference(name, lit), "\(lit) byte \(c) at \(i)")
                }
            }
        }
    }
}
