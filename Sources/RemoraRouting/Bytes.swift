/// Byte helpers of the matcher: ASCII case folding, comparisons against the table's arena,
/// request-target and authority splitting, the sticky hash and the per-worker PRNG.
enum Bytes {
    /// ASCII lowercase; every other byte unchanged (not `| 0x20`, which would fold "^" into "~").
    @inline(__always)
    static func lower(_ c: UInt8) -> UInt8 { c &- 65 < 26 ? c | 0x20 : c }

    /// ASCII lowercase bytes (not `String.lowercased()`, whose Unicode mappings change lengths).
    static func lower(_ s: String) -> [UInt8] { s.utf8.map(lower) }

    /// a[0..<n] == b[0..<n]; with `ignoreCase`, `b` is already lowercase and `a` is folded.
    /// Word at a time (the last word overlaps), so the cost hardly depends on where they differ.
    @inline(__always)
    static func equal(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int, ignoreCase: Bool) -> Bool {
        let fold = { (x: UInt64) in ignoreCase ? lower(word: x) : x }
        if n < 8 { return fold(word(a, n)) == word(b, n) }
        var i = 0
        while i + 8 < n {
            if fold(load(a, i)) != load(b, i) { return false }
            i += 8
        }
        return fold(load(a, n - 8)) == load(b, n - 8)
    }

    /// 8 bytes at p + offset as a little-endian word.
    @inline(__always)
    static func load(_ p: UnsafeRawPointer, _ offset: Int) -> UInt64 {
        UInt64(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// The first n < 8 bytes at p as a little-endian word, the rest zero; two overlapping loads
    /// (or three bytes), no loop.
    @inline(__always)
    static func word(_ p: UnsafeRawPointer, _ n: Int) -> UInt64 {
        if n >= 4 {
            let lo = UInt64(UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
            let hi = UInt64(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: n - 4, as: UInt32.self)))
            return lo | hi << (8 * UInt64(n - 4))
        }
        if n == 0 { return 0 }
        let byte = { (i: Int) in UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << (8 * UInt64(i)) }
        return byte(0) | byte(n / 2) | byte(n - 1)
    }

    /// The first 8 bytes as a little-endian word, zero-padded.
    @inline(__always)
    static func head(_ p: UnsafeRawBufferPointer) -> UInt64 {
        guard let base = p.baseAddress else { return 0 }
        return p.count >= 8 ? load(base, 0) : word(base, p.count)
    }

    /// `lower` on each byte of a word (SWAR: a byte is a capital when it is >= "A" and not > "Z").
    @inline(__always)
    static func lower(word x: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101, low7 = x & (0x7F &* ones)
        let capital = (low7 &+ 0x3F &* ones) & ~(low7 &+ 0x25 &* ones) & ~x & (0x80 &* ones)
        return x | capital >> 2
    }

    /// `needle` occurs in `hay` (same case rule as `equal`).
    @inline(__always)
    static func contains(_ hay: UnsafeRawBufferPointer, _ needle: UnsafeRawPointer, _ n: Int, ignoreCase: Bool) -> Bool {
        if n == 0 { return true }
        guard let h = hay.baseAddress, hay.count >= n else { return false }
        for i in 0...(hay.count - n) where equal(h + i, needle, n, ignoreCase: ignoreCase) { return true }
        return false
    }

    /// The path of a request target: up to `?` or `#`; absolute-form targets lose scheme and authority.
    @inline(__always)
    static func path(_ t: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var start = 0
        if t.count > 7 && lower(t[0]) == 0x68 && lower(t[1]) == 0x74 {   // "http://" or "https://"
            if let colon = t.firstIndex(of: 0x3A), colon + 2 < t.count, t[colon + 1] == 0x2F, t[colon + 2] == 0x2F {
                start = colon + 3
                while start < t.count && t[start] != 0x2F { start += 1 }
            }
        }
        var end = start
        while end < t.count && t[end] != 0x3F && t[end] != 0x23 { end += 1 }
        return UnsafeRawBufferPointer(rebasing: t[start..<end])
    }

    /// What follows `path` in `target`: "?query" (and a "#fragment" if a client sent one), or empty.
    @inline(__always)
    static func rest(_ target: UnsafeRawBufferPointer, after path: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        guard let t = target.baseAddress, let p = path.baseAddress else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        let end = p - t + path.count
        return UnsafeRawBufferPointer(rebasing: target[end...])
    }

    /// The query of a request target, without "?" and any fragment; empty when there is none.
    @inline(__always)
    static func query(_ target: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        guard var start = target.firstIndex(of: 0x3F) else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        start += 1
        var end = start
        while end < target.count && target[end] != 0x23 { end += 1 }
        return UnsafeRawBufferPointer(rebasing: target[start..<end])
    }

    /// Host and port of an authority ("h", "h:80", "[::1]:80"); port -1 when absent or not a
    /// port number ("h:" too).
    @inline(__always)
    static func splitAuthority(_ a: UnsafeRawBufferPointer) -> (host: UnsafeRawBufferPointer, port: Int) {
        var i = a.count
        while i > 0 && a[i - 1] &- 0x30 < 10 { i -= 1 }
        guard i > 0, a[i - 1] == 0x3A else { return (a, -1) }   // no ":digits" at the end
        let host = UnsafeRawBufferPointer(rebasing: a[..<(i - 1)])
        guard a.count - i >= 1 && a.count - i <= 5 else { return (host, -1) }
        var port = 0
        for j in i..<a.count { port = port * 10 + Int(a[j] &- 0x30) }
        return (host, port <= 65535 ? port : -1)
    }

    /// Stable 64-bit hash of a sticky key (wyhash-style multiply-mix over little-endian words).
    /// Part of the routing contract: changing it moves every sticky user once.
    @inline(__always)
    static func stickyHash(_ k: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15
        var i = 0
        while i + 8 <= k.count {
            h = mix(load(k.baseAddress!, i) ^ 0xA076_1D64_78BD_642F, h ^ 0xE703_7ED1_A0B4_28DB)
            i += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while i < k.count { tail |= UInt64(k[i]) << shift; shift += 8; i += 1 }
        h = mix(tail ^ 0xA076_1D64_78BD_642F, h ^ 0x8EBC_6AF0_9C88_C6E3)
        return mix(h ^ 0xE703_7ED1_A0B4_28DB, UInt64(k.count) ^ 0x5899_65CC_7537_4CC3)
    }

    @inline(__always)
    static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let m = a.multipliedFullWidth(by: b)
        return m.high ^ m.low
    }

    /// `x` scaled from [0, 2^64) to [0, n): the high word of x * n (Lemire). Unlike `x % n`, the
    /// point keeps its relative position when `n` changes, which is what keeps sticky keys in place
    /// when a weight changes the total.
    @inline(__always)
    static func scale(_ x: UInt64, _ n: UInt64) -> UInt64 { x.multipliedFullWidth(by: n).high }
}

extension Bytes {
    /// The non-empty value of cookie `name` in one Cookie header value ("a=1; b=2"), trimmed.
    static func cookie(in v: UnsafeRawBufferPointer, named name: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        let n = name.count
        var i = 0
        while i < v.count {
            while i < v.count && (v[i] == 0x20 || v[i] == 0x09) { i += 1 }
            var end = i
            while end < v.count && v[end] != 0x3B { end += 1 }              // ';'
            if end - i > n + 1 && v[i + n] == 0x3D && (n == 0 || equal(v.baseAddress! + i, name.baseAddress!, n, ignoreCase: false)) {
                var last = end
                while last > i + n + 1 && (v[last - 1] == 0x20 || v[last - 1] == 0x09) { last -= 1 }
                if last > i + n + 1 { return UnsafeRawBufferPointer(rebasing: v[(i + n + 1)..<last]) }
            }
            i = end + 1
        }
        return nil
    }
}
