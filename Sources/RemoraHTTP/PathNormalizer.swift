import RemoraCore

/// Request path normalization (RFC 3986 §6.2.2 and §5.2.4), before routing, authorization and
/// forwarding: the same bytes reach all three, so a rule written for `/admin` also holds for
/// `//admin`, `/%61dmin`, `/a/../admin` and `/./admin`. Pure: bytes in, bytes out, no allocation.
///
/// Steps, in order, over the path only (the query and a fragment are copied unchanged):
/// 1. Percent-escapes: an encoded unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded
///    (`decodeUnreserved`); `%2F` / `%5C` are kept, refused or decoded (`escapedSlashes`); every
///    other escape is kept with uppercase hex digits; a `%` without two hex digits, and `%00`, are
///    refused. With `removeDotSegments`, a backslash (literal, or decoded from `%5C`) is a slash.
/// 2. Segments: `.` and `..` removed (`removeDotSegments`; `..` above the root stays at the root),
///    empty segments dropped (`mergeSlashes`); a path that ended in `/`, `/.` or `/..` keeps its
///    trailing `/`.
/// Targets that are not origin form (`*`) are left alone.
public enum PathNormalizer {
    public enum Outcome: Equatable {
        /// Nothing to change (the common case: found by one scan of the path).
        case unchanged
        /// The normalized target is the first `count` bytes of the output (never longer than the input).
        case changed(Int)
        /// The request must be refused (400): an escaped slash with `escapedSlashes: reject`, or a
        /// malformed percent-escape.
        case rejected(Rejection)
    }

    public enum Rejection: Equatable {
        case escapedSlash, badEscape

        public var message: StaticString {
            switch self {
            case .escapedSlash: return "escaped slash (%2F or %5C) in the path\n"
            case .badEscape: return "invalid percent-encoding in the path\n"
            }
        }
    }

    /// The options of one listener, resolved (`escapedSlashes` default applied).
    public struct Options: Sendable, Equatable {
        public var removeDotSegments: Bool
        public var decodeUnreserved: Bool
        public var mergeSlashes: Bool
        public var escapedSlashes: PathNormalization.EscapedSlashes

        public init(removeDotSegments: Bool = true, decodeUnreserved: Bool = true, mergeSlashes: Bool = true,
                    escapedSlashes: PathNormalization.EscapedSlashes = .keep) {
            self.removeDotSegments = removeDotSegments; self.decodeUnreserved = decodeUnreserved
            self.mergeSlashes = mergeSlashes; self.escapedSlashes = escapedSlashes
        }

        public init(_ l: ListenerConfig) {
            self.init(removeDotSegments: l.pathNormalization.removeDotSegments,
                      decodeUnreserved: l.pathNormalization.decodeUnreserved,
                      mergeSlashes: l.pathNormalization.mergeSlashes, escapedSlashes: l.escapedSlashes)
        }
    }

    /// The fast scan: false when normalizing `target` can change nothing (not origin form, or a
    /// path without `%`, `\\`, `/.` and `//`: the path ends at "?" or "#").
    @inline(__always)
    public static func mayChange(_ target: UnsafeRawBufferPointer) -> Bool {
        guard let base = target.baseAddress, target.count > 0, base.load(as: UInt8.self) == 0x2F else { return false }
        var i = 0
        let n = target.count
        while i < n {
            let c = base.load(fromByteOffset: i, as: UInt8.self)
            if c == 0x3F || c == 0x23 { return false }
            if c == 0x25 || c == 0x5C { return true }
            if c == 0x2F && i + 1 < n {
                let d = base.load(fromByteOffset: i + 1, as: UInt8.self)
                if d == 0x2F || d == 0x2E { return true }
            }
            i += 1
        }
        return false
    }

    /// Normalizes the origin-form `target` ("/path?query") into `out`, which must hold at least
    /// `target.count` bytes. A target `mayChange` passes over is `.unchanged` without any write.
    public static func normalize(_ target: UnsafeRawBufferPointer, _ o: Options,
                                 into out: UnsafeMutableRawBufferPointer) -> Outcome {
        mayChange(target) ? slow(target, o, into: out) : .unchanged
    }

    static func slow(_ target: UnsafeRawBufferPointer, _ o: Options, into out: UnsafeMutableRawBufferPointer) -> Outcome {
        precondition(out.count >= target.count)
        let n = target.count
        var end = 0
        while end < n && target[end] != 0x3F && target[end] != 0x23 { end += 1 }
        // Step 1: escapes, into `out`.
        var w = 0
        var i = 0
        // A backslash is a slash (as Envoy's normalize_path and Istio's BASE: Windows servers agree).
        let slashForBackslash: UInt8 = o.removeDotSegments ? 0x2F : 0x5C
        while i < end {
            let c = target[i]
            if c == 0x5C { out[w] = slashForBackslash; w += 1; i += 1; continue }
            if c != 0x25 { out[w] = c; w += 1; i += 1; continue }
            guard i + 2 < end, let hi = hex(target[i + 1]), let lo = hex(target[i + 2]) else {
                if o.decodeUnreserved || o.escapedSlashes != .keep { return .rejected(.badEscape) }
                out[w] = c; w += 1; i += 1; continue
            }
            let v = hi << 4 | lo
            // An encoded NUL ends strings in C backends: never forwarded (Istio refuses it too).
            if v == 0 && (o.decodeUnreserved || o.escapedSlashes != .keep) { return .rejected(.badEscape) }
            if v == 0x2F || v == 0x5C {
                switch o.escapedSlashes {
                case .reject: return .rejected(.escapedSlash)
                case .decode: out[w] = v == 0x5C ? slashForBackslash : v; w += 1; i += 3; continue
                case .keep: break
                }
            } else if o.decodeUnreserved && isUnreserved(v) {
                out[w] = v; w += 1; i += 3; continue
            }
            out[w] = 0x25
            out[w + 1] = o.decodeUnreserved ? upperHex(hi) : target[i + 1]
            out[w + 2] = o.decodeUnreserved ? upperHex(lo) : target[i + 2]
            w += 3; i += 3
        }
        // Step 2: segments, in place in out[0 ..< w] (the write position never passes the read one).
        let len = o.removeDotSegments || o.mergeSlashes ? segments(out, count: w, o) : w
        // The rest of the target (query, fragment), unchanged.
        var k = len
        for j in end..<n { out[k] = target[j]; k += 1 }
        if k == n && memcmpEqual(out, target, n) { return .unchanged }
        return .changed(k)
    }

    /// Dot-segment removal and slash merging over out[0 ..< count] (starting with "/"); the new length.
    static func segments(_ b: UnsafeMutableRawBufferPointer, count: Int, _ o: Options) -> Int {
        var w = 0              // output: "/seg/seg…" without a trailing "/"
        var i = 1              // past the leading "/"
        var trailing = false
        while i <= count {
            var j = i
            while j < count && b[j] != 0x2F { j += 1 }
            let len = j - i
            let last = j >= count
            if o.removeDotSegments && len == 1 && b[i] == 0x2E {
                if last { trailing = true }
            } else if o.removeDotSegments && len == 2 && b[i] == 0x2E && b[i + 1] == 0x2E {
                while w > 0 && b[w - 1] != 0x2F { w -= 1 }   // drop the last segment …
                if w > 0 { w -= 1 }                          // … and its "/"
                if last { trailing = true }
            } else if len == 0 {
                if last { trailing = true } else if !o.mergeSlashes { b[w] = 0x2F; w += 1 }
            } else {
                b[w] = 0x2F; w += 1
                if w != i { for k in 0..<len { b[w + k] = b[i + k] } }
                w += len
            }
            i = j + 1
        }
        if trailing || w == 0 { b[w] = 0x2F; w += 1 }
        return w
    }

    @inline(__always) static func hex(_ c: UInt8) -> UInt8? {
        if c &- 0x30 < 10 { return c - 0x30 }
        let l = c | 0x20
        return l &- 0x61 < 6 ? l - 0x61 + 10 : nil
    }

    @inline(__always) static func upperHex(_ v: UInt8) -> UInt8 { v < 10 ? 0x30 + v : 0x41 + v - 10 }

    /// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
    @inline(__always) static func isUnreserved(_ c: UInt8) -> Bool {
        c &- 0x30 < 10 || (c | 0x20) &- 0x61 < 26 || c == 0x2D || c == 0x2E || c == 0x5F || c == 0x7E
    }

    static func memcmpEqual(_ a: UnsafeMutableRawBufferPointer, _ b: UnsafeRawBufferPointer, _ n: Int) -> Bool {
        for k in 0..<n where a[k] != b[k] { return false }
        return true
    }
}
