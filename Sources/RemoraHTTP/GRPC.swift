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

    // MARK: grpc.health.v1.Health/Check (health_check: { grpc: { service } })

    /// The path of the standard health-checking method (grpc/doc/health-checking.md).
    public static let healthCheckPath = "/grpc.health.v1.Health/Check"

    /// A length-prefixed `HealthCheckRequest { string service = 1; }` (uncompressed), ready to send
    /// as a request body. The empty service (the server as a whole) is an empty message.
    public static func healthCheckRequest(service: String) -> [UInt8] {
        var message: [UInt8] = []
        let s = Array(service.utf8)
        if !s.isEmpty {
            message.append(0x0A)   // field 1, length-delimited
            var n = s.count
            while n >= 0x80 { message.append(UInt8(n & 0x7F) | 0x80); n >>= 7 }
            message.append(UInt8(n))
            message += s
        }
        let n = UInt32(message.count)
        return [0, UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)] + message
    }

    /// `HealthCheckResponse.ServingStatus` values.
    public enum ServingStatus: Int {
        case unknown = 0, serving = 1, notServing = 2, serviceUnknown = 3
    }

    /// The serving status in a response body holding one length-prefixed, uncompressed
    /// `HealthCheckResponse { ServingStatus status = 1; }` (a missing field is 0, UNKNOWN; unknown
    /// fields are skipped). nil when the body is not exactly one such message: compressed,
    /// truncated, trailing bytes, or malformed protobuf.
    public static func healthCheckStatus(_ body: UnsafeRawBufferPointer) -> Int? {
        guard body.count >= 5, body[0] == 0 else { return nil }
        let length = Int(body[1]) << 24 | Int(body[2]) << 16 | Int(body[3]) << 8 | Int(body[4])
        guard body.count == 5 + length else { return nil }
        var i = 5
        func varint() -> UInt64? {
            var v: UInt64 = 0, shift: UInt64 = 0
            while i < body.count && shift < 64 {
                let b = body[i]
                i += 1
                v |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return v }
                shift += 7
            }
            return nil
        }
        var status = 0
        while i < body.count {
            guard let key = varint() else { return nil }
            switch key & 7 {
            case 0:
                guard let v = varint() else { return nil }
                if key >> 3 == 1 { status = Int(truncatingIfNeeded: v) }
            case 1: i += 8
            case 2:
                guard let n = varint(), n <= UInt64(body.count - i) else { return nil }
                i += Int(n)
            case 5: i += 4
            default: return nil
            }
        }
        return i == body.count ? status : nil
    }
}
