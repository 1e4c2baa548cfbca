/// What a TLS ClientHello says about where the client wants to go (RFC 8446 §4.1.2, RFC 6066 §3,
/// RFC 7301 §3.1), read without terminating TLS: for `protocol: tls` listeners (routing by SNI) and
/// the sidecar's protocol sniffing. Pure code over the bytes read so far; nothing is allocated but
/// the result's strings.
public struct ClientHello: Sendable, Equatable {
    /// The `server_name` extension's host name, lowercased; nil when there is none, or when it is
    /// not a plausible DNS name (1 ... 255 bytes of letters, digits, `-`, `_`, `.`; a trailing dot
    /// removed), so that a name that routing could never match is treated as no name.
    public var serverName: String?
    /// The ALPN protocol names in the client's order (empty: no ALPN extension).
    public var alpn: [String]
    /// Bytes of the input up to the end of the record holding the ClientHello's last byte.
    public var length: Int

    public init(serverName: String?, alpn: [String], length: Int) {
        self.serverName = serverName; self.alpn = alpn; self.length = length
    }

    /// The result of looking at the first bytes of a connection.
    public enum Parse: Sendable, Equatable {
        /// A whole ClientHello.
        case hello(ClientHello)
        /// Everything so far is a valid beginning of a ClientHello: read more.
        case needMore
        /// Not TLS (the first record is not a handshake record of TLS 1.x), or a malformed ClientHello.
        case notTLS
    }

    /// Largest TLS record body accepted (2^14 plus the 2048 bytes of expansion RFC 8446 §5.2 allows).
    public static let maxRecord = 16_384 + 2_048
    /// Largest ClientHello handshake message accepted (it may span records). Real ones are under
    /// 2 KiB (post-quantum key shares included).
    public static let maxHandshake = 65_536
    /// Most records a ClientHello may span (real ones use one, rarely two or three). Bounds the work
    /// of a client that cuts its hello into one-byte records: a caller re-parses once per record
    /// (`recordBoundary`), so at most this many times.
    public static let maxRecords = 128

    /// Where the records that start at `from` end, walking their headers: the end of the last one
    /// whose header is whole (beyond `bytes.count` while it is incomplete), or the offset of a header
    /// that is not a handshake record's. A caller that has `bytes.count` below the answer can wait
    /// for more before parsing again: no record completed since the last parse. Pass the previous
    /// answer as `from` so that each header is read once.
    public static func recordBoundary(_ bytes: UnsafeRawBufferPointer, from: Int) -> Int {
        var pos = from
        while pos + 5 <= bytes.count {
            guard bytes[pos] == 22 else { return pos }
            pos += 5 + (Int(bytes[pos + 3]) << 8 | Int(bytes[pos + 4]))
        }
        return pos < bytes.count ? pos + 5 : pos   // a partial header: at least the rest of it is needed
    }

    /// Parses the ClientHello at the start of `bytes` (what the client sent so far). Each byte is
    /// looked at once at most, and every length is checked against the one that encloses it.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> Parse {
        var r = HandshakeReader(bytes)
        // The first record: a handshake (22) of TLS 1.x (major 3), checked as soon as the bytes are there.
        if bytes.count >= 1 && bytes[0] != 22 { return .notTLS }
        if bytes.count >= 2 && bytes[1] != 3 { return .notTLS }
        guard let type = r.u8(), let hsLen = r.u24() else { return r.result }
        guard type == 1, hsLen >= 41, hsLen <= maxHandshake else { return .notTLS }   // client_hello
        let end = r.offset + hsLen
        // legacy_version, random, legacy_session_id, cipher_suites, legacy_compression_methods
        guard r.skip(2 + 32) else { return r.result }
        guard let sid = r.u8() else { return r.result }
        guard sid <= 32, r.offset + Int(sid) <= end else { return .notTLS }
        guard r.skip(Int(sid)), let suites = r.u16() else { return r.result }
        guard suites >= 2, suites & 1 == 0, r.offset + suites <= end else { return .notTLS }
        guard r.skip(suites), let comp = r.u8() else { return r.result }
        guard comp >= 1, r.offset + Int(comp) <= end else { return .notTLS }
        guard r.skip(Int(comp)) else { return r.result }
        var hello = ClientHello(serverName: nil, alpn: [], length: 0)
        if r.offset < end {   // extensions (absent in a bare TLS 1.0 hello)
            guard let extLen = r.u16() else { return r.result }
            guard r.offset + extLen == end else { return .notTLS }
            var seenSNI = false, seenALPN = false
            while r.offset < end {
                guard let extType = r.u16(), let len = r.u16() else { return r.result }
                let extEnd = r.offset + len
                guard extEnd <= end else { return .notTLS }
                switch extType {
                case 0 where !seenSNI:   // server_name
                    seenSNI = true
                    guard let listLen = r.u16() else { return r.result }
                    guard r.offset + listLen == extEnd else { return .notTLS }
                    while r.offset < extEnd {
                        guard let nameType = r.u8(), let nameLen = r.u16() else { return r.result }
                        guard nameLen >= 1, r.offset + nameLen <= extEnd else { return .notTLS }
                        if nameType == 0 && hello.serverName == nil {
                            guard let name = r.hostName(nameLen) else { return r.result }
                            hello.serverName = name
                        } else if !r.skip(nameLen) { return r.result }
                    }
                case 16 where !seenALPN:   // application_layer_protocol_negotiation
                    seenALPN = true
                    guard let listLen = r.u16() else { return r.result }
                    guard listLen >= 2, r.offset + listLen == extEnd else { return .notTLS }
                    while r.offset < extEnd {
                        guard let n = r.u8() else { return r.result }
                        guard n >= 1, r.offset + Int(n) <= extEnd else { return .notTLS }
                        guard let p = r.string(Int(n)) else { return r.result }
                        if hello.alpn.count < 32 { hello.alpn.append(p) }
                    }
                case 0, 16: return .notTLS   // a repeated extension (RFC 8446 §4.2)
                default:
                    guard r.skip(len) else { return r.result }
                }
                guard r.offset == extEnd else { return .notTLS }
            }
        }
        guard r.offset == end else { return .notTLS }
        hello.length = min(r.recordEnd, bytes.count)
        return .hello(hello)
    }
}

/// Reads the handshake layer over the record layer: bytes of consecutive handshake records, their
/// headers skipped and checked as they are crossed. `offset` counts handshake bytes, not input bytes.
struct HandshakeReader {
    let b: UnsafeRawBufferPointer
    /// Input index of the next byte, and of the end of the current record.
    var pos = 0
    var recordEnd = 0
    /// Handshake bytes read so far.
    var offset = 0
    /// A record header was not a TLS handshake record.
    var failed = false
    /// Records entered so far (`ClientHello.maxRecords`).
    var records = 0

    init(_ b: UnsafeRawBufferPointer) { self.b = b }

    /// What running out of input means: more is needed, unless a record header was wrong.
    var result: ClientHello.Parse { failed ? .notTLS : .needMore }

    /// Makes the next handshake byte available at `pos`: false at the end of the input (or on a bad header).
    @inline(__always) mutating func ready() -> Bool {
        while pos == recordEnd {   // at a record boundary (the first one included)
            guard pos + 5 <= b.count else {
                // Check what there is of the header (the first one is checked by the caller).
                if pos < b.count && b[pos] != 22 { failed = true }
                if pos + 1 < b.count && b[pos + 1] != 3 { failed = true }
                return false
            }
            let len = Int(b[pos + 3]) << 8 | Int(b[pos + 4])
            records += 1
            guard b[pos] == 22, b[pos + 1] == 3, len >= 1, len <= ClientHello.maxRecord, records <= ClientHello.maxRecords
            else { failed = true; return false }
            pos += 5
            recordEnd = pos + len
        }
        return pos < b.count
    }

    mutating func u8() -> UInt8? {
        guard ready() else { return nil }
        let v = b[pos]
        pos += 1
        offset += 1
        return v
    }

    mutating func u16() -> Int? {
        guard let h = u8(), let l = u8() else { return nil }
        return Int(h) << 8 | Int(l)
    }

    mutating func u24() -> Int? {
        guard let h = u8(), let m = u8(), let l = u8() else { return nil }
        return Int(h) << 16 | Int(m) << 8 | Int(l)
    }

    /// Skips `n` handshake bytes; false when the input ends first.
    mutating func skip(_ n: Int) -> Bool {
        var left = n
        while left > 0 {
            guard ready() else { return false }
            let step = min(left, min(recordEnd, b.count) - pos)
            pos += step
            offset += step
            left -= step
        }
        return true
    }

    /// `n` bytes as a String (invalid UTF-8 repaired); nil when the input ends first.
    mutating func string(_ n: Int) -> String? {
        var out = [UInt8]()
        out.reserveCapacity(n)
        for _ in 0..<n {
            guard let c = u8() else { return nil }
            out.append(c)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A host name of `n` bytes, lowercased, its trailing dot removed; "" when it is not a plausible
    /// DNS name (letters, digits, `-`, `_`, `.`, at most 255 bytes, no empty label); nil when the
    /// input ends first.
    mutating func hostName(_ n: Int) -> String?? {
        var out = [UInt8]()
        out.reserveCapacity(min(n, 256))
        var ok = n <= 256
        var prev: UInt8 = UInt8(ascii: ".")
        for _ in 0..<n {
            guard var c = u8() else { return nil }
            if c >= 65 && c <= 90 { c |= 0x20 }
            let valid = (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45 || c == 95 || c == 46
            if !valid || (c == 46 && prev == 46) { ok = false }
            prev = c
            if ok { out.append(c) }
        }
        if ok && out.last == 46 { out.removeLast() }
        if !ok || out.isEmpty || out.count > 255 { return .some(nil) }
        return .some(String(decoding: out, as: UTF8.self))
    }
}
