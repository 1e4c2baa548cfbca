// libFuzzer target: bytes -> PathNormalizer (RemoraHTTP) and IPAddress / CIDR parsing (RemoraPolicy).
// Byte 0 picks the options (bit 0 dot segments, bit 1 unreserved escapes, bit 2 merge slashes, bits
// 3-4 escaped slashes: keep, reject, decode); the rest is a request target ("/" put in front when it
// has none). Checks: the output is never longer than the input, starts with "/", keeps the query as it
// was, has no "//" when merging, no "." or ".." segment when removing them, no "%2F"/"%5C" when they
// are refused or decoded, and normalizing it again changes nothing. Addresses: what parses prints back
// to the same address. See Tests/fuzz/README.md.
import Glibc
import RemoraCore
import RemoraHTTP
import RemoraPolicy

func check(_ ok: Bool, _ what: String, _ input: [UInt8]) {
    if !ok { fatalError("\(what): \(String(decoding: input, as: UTF8.self).debugDescription)") }
}

func normalize(_ t: [UInt8], _ o: PathNormalizer.Options) -> PathNormalizer.Outcome {
    var out = [UInt8](repeating: 0, count: max(t.count, 1))
    return t.withUnsafeBytes { tb in out.withUnsafeMutableBytes { PathNormalizer.normalize(tb, o, into: $0) } }
}

func normalized(_ t: [UInt8], _ o: PathNormalizer.Options) -> [UInt8]? {
    var out = [UInt8](repeating: 0, count: max(t.count, 1))
    let r = t.withUnsafeBytes { tb in out.withUnsafeMutableBytes { PathNormalizer.normalize(tb, o, into: $0) } }
    switch r {
    case .unchanged: return t
    case .changed(let n): return Array(out[0..<n])
    case .rejected: return nil
    }
}

func run(_ input: UnsafeRawBufferPointer) {
    guard let first = input.first else { return }
    let modes: [PathNormalization.EscapedSlashes] = [.keep, .reject, .decode, .keep]
    let o = PathNormalizer.Options(removeDotSegments: first & 1 != 0, decodeUnreserved: first & 2 != 0,
                                   mergeSlashes: first & 4 != 0, escapedSlashes: modes[Int(first >> 3 & 3)])
    var t = Array(input.dropFirst())
    if t.first != 0x2F { t.insert(0x2F, at: 0) }
    if let out = normalized(t, o) {
        check(out.count <= t.count, "longer", t)
        check(out.first == 0x2F, "no leading slash", t)
        let split = { (b: [UInt8]) -> ([UInt8], [UInt8]) in
            let i = b.firstIndex { $0 == 0x3F || $0 == 0x23 } ?? b.count
            return (Array(b[..<i]), Array(b[i...]))
        }
        let (path, rest) = split(out), (_, restIn) = split(t)
        check(rest == restIn, "query changed", t)
        let segments = path.split(separator: 0x2F, omittingEmptySubsequences: false).dropFirst()
        if o.mergeSlashes { check(!segments.dropLast().contains { $0.isEmpty }, "empty segment left", t) }
        if o.removeDotSegments { check(!segments.contains { $0.elementsEqual([0x2E]) || $0.elementsEqual([0x2E, 0x2E]) }, "dot segment left", t) }
        if o.escapedSlashes != .keep {
            let upper = String(decoding: path, as: UTF8.self).uppercased()
            check(!upper.contains("%2F") && !upper.contains("%5C"), "escaped slash left", t)
        }
        check(normalized(out, o) == out, "not idempotent", t)
    }
    _ = normalize(t, o)
    // Addresses and ranges.
    let text = String(decoding: input.dropFirst(), as: UTF8.self)
    if let a = IPAddress.parse(text) {
        check(IPAddress.parse(a.description) == a, "address does not print back", Array(input))
    }
    if let c = CIDR(text) {
        check(c.contains(c.address), "range without its first address", Array(input))
        check(CIDR(c.description) == c, "range does not print back", Array(input))
    }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ cb: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
    run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
})
