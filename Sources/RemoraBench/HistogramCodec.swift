import Histogram

/// HdrHistogram's standard serialized form, so that a run's raw histogram can leave the process
/// and be read by any HdrHistogram implementation (Java `decodeFromCompressedByteBuffer`,
/// HdrHistogram_c `hdr_decode_compressed`, Python `hdrh`, the HistogramLogAnalyzer):
///
/// - V2 encoding: a 40-byte big-endian header (cookie 0x1c849313, payload length, normalizing
///   index offset 0, significant digits, lowest discernible value, highest trackable value,
///   integer-to-double ratio 1.0), then the counts array as ZigZag LEB128 varints, a run of zeros
///   written as its negated length.
/// - Compressed V2 (cookie 0x1c849314, then the zlib stream's length, then the zlib stream), base64:
///   the "HISTF…" strings of HdrHistogram logs. The zlib stream here uses stored (uncompressed)
///   deflate blocks — valid for every inflater, and no zlib needed in the binary.
public enum HistogramCodec {
    static let v2Cookie: UInt32 = 0x1c84_9303 | 0x10
    static let v2CompressedCookie: UInt32 = 0x1c84_9304 | 0x10

    public struct DecodeError: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    // MARK: layout (the counts-array index of a value, as every HdrHistogram computes it)

    /// Index math for `lowestDiscernibleValue` and significant digits; identical to the Java
    /// reference (and to hdrhistogram-swift's internal layout).
    public struct Layout: Equatable {
        public let unitMagnitude: Int
        public let subBucketHalfCountMagnitude: Int
        public let subBucketMask: UInt64
        public let leadingZeroCountBase: Int

        public init(lowestDiscernibleValue: UInt64, significantDigits: Int) {
            var largest: UInt64 = 2
            for _ in 0..<significantDigits { largest *= 10 }
            unitMagnitude = 63 - max(1, lowestDiscernibleValue).leadingZeroBitCount
            let subBucketCountMagnitude = 64 - (largest - 1).leadingZeroBitCount   // ceil(log2(largest))
            subBucketHalfCountMagnitude = max(subBucketCountMagnitude, 1) - 1
            subBucketMask = (UInt64(1) << subBucketCountMagnitude - 1) << unitMagnitude
            leadingZeroCountBase = 64 - unitMagnitude - subBucketCountMagnitude
        }

        public func index(of value: UInt64) -> Int {
            let bucket = leadingZeroCountBase - (value | subBucketMask).leadingZeroBitCount
            let sub = Int(value >> UInt64(bucket + unitMagnitude))
            return ((bucket + 1) << subBucketHalfCountMagnitude) + sub - (1 << subBucketHalfCountMagnitude)
        }

        public func value(at index: Int) -> UInt64 {
            var bucket = (index >> subBucketHalfCountMagnitude) - 1
            var sub = (index & ((1 << subBucketHalfCountMagnitude) - 1)) + (1 << subBucketHalfCountMagnitude)
            if bucket < 0 {
                sub -= 1 << subBucketHalfCountMagnitude
                bucket = 0
            }
            return UInt64(sub) << UInt64(bucket + unitMagnitude)
        }
    }

    static func layout(_ h: Histogram<UInt64>) -> Layout {
        Layout(lowestDiscernibleValue: h.lowestDiscernibleValue, significantDigits: Int(h.numberOfSignificantValueDigits.rawValue))
    }

    /// Non-zero counts by counts-array index, ascending.
    public static func sparseCounts(_ h: Histogram<UInt64>) -> [(index: Int, count: UInt64)] {
        let l = layout(h)
        var out: [(Int, UInt64)] = []
        for v in h.recordedValues() where v.count > 0 { out.append((l.index(of: v.value), v.count)) }
        return out
    }

    // MARK: encoding

    /// The uncompressed V2 encoding.
    public static func encodeV2(_ h: Histogram<UInt64>) -> [UInt8] {
        var payload: [UInt8] = []
        var next = 0   // next index to write
        for (i, c) in sparseCounts(h) {
            let zeros = i - next
            if zeros == 1 { putZigZag(&payload, 0) } else if zeros > 1 { putZigZag(&payload, -Int64(zeros)) }
            putZigZag(&payload, Int64(c))
            next = i + 1
        }
        var out: [UInt8] = []
        out.reserveCapacity(40 + payload.count)
        putBE(&out, UInt64(v2Cookie), 4)
        putBE(&out, UInt64(payload.count), 4)
        putBE(&out, 0, 4)   // normalizing index offset
        putBE(&out, UInt64(h.numberOfSignificantValueDigits.rawValue), 4)
        putBE(&out, h.lowestDiscernibleValue, 8)
        putBE(&out, h.highestTrackableValue, 8)
        putBE(&out, (1.0 as Double).bitPattern, 8)
        out += payload
        return out
    }

    /// The compressed V2 encoding, base64 ("HISTF…").
    public static func encodeCompressedBase64(_ h: Histogram<UInt64>) -> String {
        let z = zlibStored(encodeV2(h))
        var out: [UInt8] = []
        putBE(&out, UInt64(v2CompressedCookie), 4)
        putBE(&out, UInt64(z.count), 4)
        out += z
        return Base64.encode(out)
    }

    // MARK: decoding

    public static func decodeCompressedBase64(_ s: String) throws(DecodeError) -> Histogram<UInt64> {
        guard let bytes = Base64.decode(s) else { throw DecodeError("histogram: not base64") }
        guard bytes.count >= 8 else { throw DecodeError("histogram: too short") }
        let cookie = UInt32(getBE(bytes, 0, 4))
        guard cookie & ~0xF0 == 0x1c84_9304 else { throw DecodeError("histogram: not a compressed V2 HdrHistogram") }
        let n = Int(getBE(bytes, 4, 4))
        guard n <= bytes.count - 8 else { throw DecodeError("histogram: truncated") }
        return try decodeV2(try inflateStored(Array(bytes[8..<(8 + n)])))
    }

    public static func decodeV2(_ b: [UInt8]) throws(DecodeError) -> Histogram<UInt64> {
        guard b.count >= 40, UInt32(getBE(b, 0, 4)) & ~0xF0 == 0x1c84_9303 else {
            throw DecodeError("histogram: not a V2 HdrHistogram encoding")
        }
        let payloadLength = Int(getBE(b, 4, 4))
        let digits = Int(getBE(b, 12, 4))
        let lowest = getBE(b, 16, 8)
        let highest = getBE(b, 24, 8)
        guard payloadLength <= b.count - 40, let sd = SignificantDigits(rawValue: Int8(clamping: digits)),
              lowest >= 1, highest >= 2 * lowest else {
            throw DecodeError("histogram: bad header")
        }
        var h = Histogram<UInt64>(lowestDiscernibleValue: lowest, highestTrackableValue: highest, numberOfSignificantValueDigits: sd)
        let l = Layout(lowestDiscernibleValue: lowest, significantDigits: digits)
        var pos = 40
        let end = 40 + payloadLength
        var index = 0
        while pos < end {
            guard let v = getZigZag(b, &pos, end: end) else { throw DecodeError("histogram: bad varint") }
            if v < 0 {
                index += Int(-v)
            } else {
                if v > 0 { guard h.record(l.value(at: index), count: UInt64(v)) else { throw DecodeError("histogram: value out of range") } }
                index += 1
            }
        }
        return h
    }

    // MARK: pieces

    static func putBE(_ out: inout [UInt8], _ v: UInt64, _ n: Int) {
        for k in stride(from: n - 1, through: 0, by: -1) { out.append(UInt8(truncatingIfNeeded: v >> UInt64(8 * k))) }
    }

    static func getBE(_ b: [UInt8], _ at: Int, _ n: Int) -> UInt64 {
        var v: UInt64 = 0
        for k in 0..<n { v = v << 8 | UInt64(b[at + k]) }
        return v
    }

    /// HdrHistogram's ZigZag LEB128: 7 bits per byte, at most 9 bytes, the 9th carrying 8 bits.
    static func putZigZag(_ out: inout [UInt8], _ value: Int64) {
        var v = UInt64(bitPattern: (value << 1) ^ (value >> 63))
        for _ in 0..<8 {
            if v >> 7 == 0 { out.append(UInt8(v)); return }
            out.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        out.append(UInt8(truncatingIfNeeded: v))
    }

    static func getZigZag(_ b: [UInt8], _ pos: inout Int, end: Int) -> Int64? {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        for k in 0..<9 {
            guard pos < end else { return nil }
            let byte = b[pos]
            pos += 1
            if k == 8 { v |= UInt64(byte) << 56; break }
            v |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { break }
            shift += 7
        }
        return Int64(bitPattern: v >> 1) ^ -Int64(bitPattern: v & 1)
    }

    /// A zlib stream (RFC 1950) of stored deflate blocks (RFC 1951 §3.2.4).
    static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        var i = 0
        repeat {
            let n = min(65_535, data.count - i)
            let last = i + n == data.count
            out.append(last ? 1 : 0)
            out.append(UInt8(n & 0xFF)); out.append(UInt8(n >> 8))
            out.append(UInt8(~n & 0xFF)); out.append(UInt8((~n >> 8) & 0xFF))
            out += data[i..<(i + n)]
            i += n
        } while i < data.count
        putBE(&out, UInt64(adler32(data)), 4)
        return out
    }

    /// Reads a zlib stream made of stored blocks only (what `zlibStored` writes).
    static func inflateStored(_ z: [UInt8]) throws(DecodeError) -> [UInt8] {
        guard z.count >= 6, z[0] & 0x0F == 8, (Int(z[0]) << 8 | Int(z[1])) % 31 == 0, z[1] & 0x20 == 0 else {
            throw DecodeError("histogram: not a zlib stream")
        }
        var out: [UInt8] = []
        var pos = 2
        while true {
            guard pos + 5 <= z.count else { throw DecodeError("histogram: truncated zlib stream") }
            let header = z[pos]
            guard header & 0x06 == 0 else {
                throw DecodeError("histogram: compressed deflate blocks are not supported (only stored blocks)")
            }
            let n = Int(z[pos + 1]) | Int(z[pos + 2]) << 8
            let nn = Int(z[pos + 3]) | Int(z[pos + 4]) << 8
            guard n == ~nn & 0xFFFF, pos + 5 + n <= z.count else { throw DecodeError("histogram: bad stored block") }
            out += z[(pos + 5)..<(pos + 5 + n)]
            pos += 5 + n
            if header & 1 == 1 { break }
        }
        guard pos + 4 <= z.count, UInt32(getBE(z, pos, 4)) == adler32(out) else {
            throw DecodeError("histogram: zlib checksum mismatch")
        }
        return out
    }

    static func adler32(_ d: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in d {
            a = (a + UInt32(byte)) % 65_521
            b = (b + a) % 65_521
        }
        return b << 16 | a
    }
}

/// RFC 4648 base64 (standard alphabet, padded).
public enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ d: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((d.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= d.count {
            let v = UInt32(d[i]) << 16 | UInt32(d[i + 1]) << 8 | UInt32(d[i + 2])
            for s in [18, 12, 6, 0] { out.append(alphabet[Int(v >> UInt32(s) & 63)]) }
            i += 3
        }
        let rest = d.count - i
        if rest > 0 {
            let v = UInt32(d[i]) << 16 | (rest == 2 ? UInt32(d[i + 1]) << 8 : 0)
            out.append(alphabet[Int(v >> 18 & 63)])
            out.append(alphabet[Int(v >> 12 & 63)])
            out.append(rest == 2 ? alphabet[Int(v >> 6 & 63)] : UInt8(ascii: "="))
            out.append(UInt8(ascii: "="))
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ s: String) -> [UInt8]? {
        var out: [UInt8] = []
        var acc: UInt32 = 0
        var bits = 0
        var padding = 0
        for c in s.utf8 {
            let v: UInt32
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = UInt32(c - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): v = UInt32(c - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = UInt32(c - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "+"): v = 62
            case UInt8(ascii: "/"): v = 63
            case UInt8(ascii: "="): padding += 1; continue
            case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"): continue
            default: return nil
            }
            if padding > 0 { return nil }
            acc = acc << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
            }
        }
        return padding <= 2 ? out : nil
    }
}
