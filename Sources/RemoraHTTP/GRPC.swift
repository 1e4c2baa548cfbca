import RemoraCore

/// gRPC over HTTP/2 details the proxy needs (grpc/doc/PROTOCOL-HTTP2.md, statuscodes.md).
public enum GRPC {
    /// Status codes the proxy produces.
    public enum Status: Int {
        case ok = 0, cancelled = 1, unknown = 2, deadlineExceeded = 4, resourceExhausted = 8
        case unimplemented = 12, internalError = 13, unavailable = 14, permissionDenied = 7
    }

    /// Whether a content-type value is gRPC's (`application/grpc`, `application/grpc+proto`, …).
    @inline(__always)
    public static func isGRPC(contentType v: UnsafeRawBufferPointer) -> Bool {
        let prefix: StaticString = "application/grpc"
        guard v.count >= prefix.utf8CodeUnitCount else { return false }
        let p = prefix.utf8Start
        for i in 0..<prefix.utf8CodeUnitCount where (v[i] | 0x20) != p[i] && v[i] != p[i] { return false }
        return v.count == prefix.utf8CodeUnitCount || v[prefix.utf8CodeUnitCount] == 0x2B || v[prefix.utf8CodeUnitCount] == 0x3B
    }

    /// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n), in milliseconds (rounded up,
    /// at least 1 for a positive value). nil when malformed.
    public static func timeout(_ v: UnsafeRawBufferPointer) -> Millis? {
        guard v.count >= 2, v.count <= 9 else { return nil }
        var n: UInt64 = 0
        for i in 0..<(v.count - 1) {
            let c = v[i]
            guard c >= 0x30 && c <= 0x39 else { return nil }
            n = n * 10 + UInt64(c - 0x30)
        }
        func up(_ x: UInt64, _ d: UInt64) -> UInt64 { x == 0 ? 0 : max(1, (x + d - 1) / d) }
        switch v[v.count - 1] {
        case 0x48: return n * 3_600_000      // H
        case 0x4D: return n * 60_000         // M
        case 0x53: return n * 1_000          // S
        case 0x6D: return n                  // m
        case 0x75: return up(n, 1_000)       // u
        case 0x6E: return up(n, 1_000_000)   // n
        default: return nil
        }
    }

    /// A grpc-status value as a number (0 ... 999), or -1 when it is not one.
    public static func statusCode(_ v: UnsafeRawBufferPointer) -> Int {
        guard v.count > 0 && v.count <= 3 else { return -1 }
        var n = 0
        for c in v {
            guard c >= 0x30 && c <= 0x39 else { return -1 }
            n = n * 10 + Int(c - 0x30)
        }
        return n
    }

    /// The gRPC status for an HTTP/2 RST_STREAM code from the upstream.
    public static func status(forResetCode code: UInt32) -> Status {
        switch code {
        case 0x7: return .unavailable            // REFUSED_STREAM: never processed
        case 0x8: return .cancelled              // CANCEL
        case 0xB: return .resourceExhausted      // ENHANCE_YOUR_CALM
        case 0xC: return .permissionDenied       // INADEQUATE_SECURITY
        default: return .unavailable             // the upstream went away mid-call
        }
    }

    /// Appends `message` percent-encoded as grpc-message requires (bytes outside 0x20…0x7E and '%').
    public static func appendEncodedMessage(_ message: String, into out: inout ByteBuffer) {
        for c in message.utf8 {
            if c >= 0x20 && c <= 0x7E && c != 0x25 { out.append(byte: c); continue }
            out.append(byte: 0x25)
            let hex: StaticString = "0123456789ABCDEF"
            out.append(byte: hex.utf8Start[Int(c >> 4)])
            out.append(byte: hex.utf8Start[Int(c & 0xF)])
        }
    }
}
