import CRemoraSupport

/// The trace one request is part of, as the proxy continues it: the trace id, the proxy's own span
/// id, its parent (the client's span; 0 when the proxy started the trace) and the flags (bit 0:
/// sampled). Read from W3C Trace Context (`traceparent`) or B3 (`b3`, `x-b3-*`), written back in the
/// formats the listener propagates. A plain value: parsing and writing allocate nothing.
public struct TraceContext: Equatable, Sendable {
    public var traceHi: UInt64 = 0
    public var traceLo: UInt64 = 0
    public var span: UInt64 = 0
    public var parent: UInt64 = 0
    public var flags: UInt8 = 0
    /// The client sent a 64-bit B3 trace id: B3 headers carry it back as 16 hex digits (W3C always
    /// has 32: the 64 bits left-padded with zeros, as the B3 spec says).
    public var shortID = false
    /// The client's B3 came as one `b3` header: the upstream gets one too (else `x-b3-*`).
    public var b3Single = false
    /// The context carried no sampling decision (B3 without `x-b3-sampled`): the proxy decides.
    public var undecided = false

    public init(traceHi: UInt64 = 0, traceLo: UInt64 = 0, span: UInt64 = 0, parent: UInt64 = 0, flags: UInt8 = 0) {
        self.traceHi = traceHi; self.traceLo = traceLo; self.span = span; self.parent = parent; self.flags = flags
    }

    public var sampled: Bool { flags & 1 != 0 }

    // MARK: reading

    /// `n` hex digits of `v` from `from` (either case) as a number; nil on any other byte, or when
    /// `v` is shorter. 16 digits (every id) are read 8 at a time.
    @inline(__always)
    static func hex(_ v: UnsafeRawBufferPointer, _ from: Int, _ n: Int) -> UInt64? {
        guard from >= 0, from + n <= v.count, let base = v.baseAddress else { return nil }
        if n == 16 {
            guard let hi = hex8(base + from), let lo = hex8(base + from + 8) else { return nil }
            return hi << 32 | lo
        }
        var x: UInt64 = 0
        for i in from..<(from + n) {
            let c = v[i]
            let d: UInt8
            switch c {
            case 0x30...0x39: d = c &- 0x30
            case 0x61...0x66: d = c &- 0x61 &+ 10
            case 0x41...0x46: d = c &- 0x41 &+ 10
            default: return nil
            }
            x = x << 4 | UInt64(d)
        }
        return x
    }

    /// The 8 hex digits (either case) at `p` as a number; nil on any other byte. All 8 at once: every
    /// byte below 0x80, then in '0'...'9' or, with bit 5 set, in 'a'...'f' (a byte b < 0x80 plus
    /// 0x80 - k has its top bit set exactly when b >= k, and no carry leaves the byte); then each
    /// byte's value (its low nibble, + 9 for a letter) and the nibbles packed in pairs, fours, eights.
    @inline(__always)
    static func hex8(_ p: UnsafeRawPointer) -> UInt64? {
        let x = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        let ones: UInt64 = 0x0101_0101_0101_0101, tops: UInt64 = 0x8080_8080_8080_8080
        if x & tops != 0 { return nil }
        @inline(__always) func atLeast(_ y: UInt64, _ k: UInt64) -> UInt64 { (y &+ (0x80 &- k) &* ones) & tops }
        let lower = x | 0x2020_2020_2020_2020
        let digit = atLeast(x, 0x30) & ~atLeast(x, 0x3A)
        let letter = atLeast(lower, 0x61) & ~atLeast(lower, 0x67)
        guard digit | letter == tops else { return nil }
        let n = (x & 0x0F0F_0F0F_0F0F_0F0F) &+ 9 &* ((x >> 6) & ones)
        let pairs = (n << 4 | n >> 8) & 0x00FF_00FF_00FF_00FF
        let fours = (pairs << 8 | pairs >> 16) & 0x0000_FFFF_0000_FFFF
        return (fours << 16 | fours >> 32) & 0xFFFF_FFFF
    }

    /// The 16 hex digits (either case) at `p` as a number; nil on any other byte (SSE2 on x86-64:
    /// `remora_hex16_read`; elsewhere two `hex8`).
    @inline(__always)
    static func hex16(_ p: UnsafeRawPointer) -> UInt64? {
        #if arch(x86_64)
        var x: UInt64 = 0
        return remora_hex16_read(p.assumingMemoryBound(to: UInt8.self), &x) == 1 ? x : nil
        #else
        guard let a = hex8(p), let b = hex8(p + 8) else { return nil }
        return a << 32 | b
        #endif
    }

    /// Parses `traceparent` version 00 (`00-<32 hex>-<16 hex>-<2 hex>`, trace id and parent id not
    /// zero; a later version's longer value is read by its first 55 bytes). nil when it is not one.
    public static func parseTraceparent(_ v: UnsafeRawBufferPointer) -> TraceContext? {
        guard v.count >= 55, let b = v.baseAddress,
              b.loadUnaligned(as: UInt32.self) & 0xFF_FFFF == 0x2D_3030,   // "00-"
              b.load(fromByteOffset: 35, as: UInt8.self) == 0x2D, b.load(fromByteOffset: 52, as: UInt8.self) == 0x2D,
              v.count == 55 || b.load(fromByteOffset: 55, as: UInt8.self) == 0x2D,
              let hi = hex16(b + 3), let lo = hex16(b + 19), let parent = hex16(b + 36),
              let flags = hex(v, 53, 2) else { return nil }
        guard hi | lo != 0, parent != 0 else { return nil }
        return TraceContext(traceHi: hi, traceLo: lo, parent: parent, flags: UInt8(flags))
    }

    /// A B3 trace id: 16 or 32 hex digits, not zero.
    static func b3TraceID(_ v: UnsafeRawBufferPointer) -> (UInt64, UInt64, short: Bool)? {
        switch v.count {
        case 16: if let lo = hex(v, 0, 16), lo != 0 { return (0, lo, true) }
        case 32: if let hi = hex(v, 0, 16), let lo = hex(v, 16, 16), hi | lo != 0 { return (hi, lo, false) }
        default: break
        }
        return nil
    }

    /// A B3 sampling state: `1` / `d` (debug) / `true` sampled, `0` / `false` not; nil otherwise.
    public static func b3SampledState(_ v: UnsafeRawBufferPointer) -> Bool? {
        if v.count == 1 { return v[0] == 0x31 || v[0] == 0x64 ? true : (v[0] == 0x30 ? false : nil) }
        if v.count == 4 && v.equalsLowercase("true") { return true }
        if v.count == 5 && v.equalsLowercase("false") { return false }
        return nil
    }

    /// Parses a single `b3` header: `<trace id>-<span id>[-<sampling>[-<parent span id>]]`. A
    /// lone sampling state (`0`, `1`, `d`) carries no ids: nil, and `decision` says it.
    public static func parseB3(_ v: UnsafeRawBufferPointer, decision: inout Bool?) -> TraceContext? {
        guard let dash = v.firstIndex(of: 0x2D) else { decision = b3SampledState(v); return nil }
        guard let (hi, lo, short) = b3TraceID(UnsafeRawBufferPointer(rebasing: v[0..<dash])),
              v.count >= dash + 17, let span = hex(v, dash + 1, 16), span != 0 else { return nil }
        var t = TraceContext(traceHi: hi, traceLo: lo, parent: span)
        t.shortID = short
        t.b3Single = true
        let rest = dash + 17
        if rest == v.count { t.undecided = true; return t }
        guard v[rest] == 0x2D, v.count >= rest + 2 else { return nil }
        let end = v[(rest + 1)...].firstIndex(of: 0x2D) ?? v.count
        guard let s = b3SampledState(UnsafeRawBufferPointer(rebasing: v[(rest + 1)..<end])) else { return nil }
        t.flags = s ? 1 : 0
        if end != v.count && (v.count != end + 17 || hex(v, end + 1, 16) == nil) { return nil }   // parent: 16 hex
        return t
    }

    /// Builds a context from the multi-header B3 fields (`x-b3-traceid`, `x-b3-spanid`,
    /// `x-b3-sampled`, `x-b3-flags`); nil unless the trace and span ids are valid.
    public static func fromB3(traceID: UnsafeRawBufferPointer?, spanID: UnsafeRawBufferPointer?,
                              sampled: UnsafeRawBufferPointer?, debug: UnsafeRawBufferPointer?) -> TraceContext? {
        guard let traceID, let spanID, spanID.count == 16, let (hi, lo, short) = b3TraceID(traceID),
              let span = hex(spanID, 0, 16), span != 0 else { return nil }
        var t = TraceContext(traceHi: hi, traceLo: lo, parent: span)
        t.shortID = short
        if let debug, debug.count == 1, debug[0] == 0x31 { t.flags = 1 }
        else if let sampled, let s = b3SampledState(sampled) { t.flags = s ? 1 : 0 }
        else { t.undecided = true }
        return t
    }

    // MARK: writing (what the upstream gets: the proxy's span is its parent)

    public static let traceparentLength = 55

    /// `00-<trace id>-<span id>-<flags>`, `traceparentLength` bytes at `b`.
    public func writeTraceparent(_ b: UnsafeMutablePointer<UInt8>) {
        b[0] = 0x30; b[1] = 0x30; b[2] = 0x2D
        remora_hex32(b + 3, traceHi, traceLo)
        b[35] = 0x2D
        remora_hex16(b + 36, span)
        b[52] = 0x2D
        remora_hex8(b + 53, UInt32(flags), 2)
    }

    /// The trace id as B3 writes it (16 or 32 hex digits) at `b`; its length.
    public func writeB3TraceID(_ b: UnsafeMutablePointer<UInt8>) -> Int {
        if shortID && traceHi == 0 { remora_hex16(b, traceLo); return 16 }
        remora_hex32(b, traceHi, traceLo)
        return 32
    }

    /// The single `b3` header's value at `b` (at most `b3MaxLength` bytes): trace, the proxy's
    /// span, sampling, and the client's span as parent when there is one; its length.
    public func writeB3Single(_ b: UnsafeMutablePointer<UInt8>) -> Int {
        var n = writeB3TraceID(b)
        b[n] = 0x2D; remora_hex16(b + n + 1, span); n += 17
        b[n] = 0x2D; b[n + 1] = sampled ? 0x31 : 0x30; n += 2
        if parent != 0 { b[n] = 0x2D; remora_hex16(b + n + 1, parent); n += 17 }
        return n
    }

    public static let b3MaxLength = 32 + 1 + 16 + 2 + 17
}
