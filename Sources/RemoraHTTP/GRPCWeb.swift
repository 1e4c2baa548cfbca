import RemoraCore

/// gRPC-Web (grpc/doc/PROTOCOL-WEB.md), as Envoy's grpc_web filter translates it: pure pieces the
/// exchange uses (`Exchange+GRPCWeb.swift`) — the content types, the streaming base64 of the text
/// mode, and the trailer frame that carries a response's trailers inside its body.
public enum GRPCWeb {
    /// What a request's content-type says.
    public enum Mode: UInt8, Sendable {
        case off
        /// `application/grpc-web` or `application/grpc-web+proto` (…+json, …;…): frames as gRPC's.
        case binary
        /// `application/grpc-web-text(+proto)`: the same frames, base64-encoded both ways.
        case text
    }

    /// The mode a content-type value asks for (`off` for anything else, gRPC's own included).
    public static func mode(contentType v: UnsafeRawBufferPointer) -> Mode {
        let web: StaticString = "application/grpc-web"
        let n = web.utf8CodeUnitCount
        guard v.count >= n, UnsafeRawBufferPointer(rebasing: v[0..<n]).equalsLowercase(web) else { return .off }
        if v.count == n || v[n] == 0x2B || v[n] == 0x3B { return .binary }
        let text: StaticString = "-text"
        let t = text.utf8CodeUnitCount
        guard v.count >= n + t, UnsafeRawBufferPointer(rebasing: v[n..<(n + t)]).equalsLowercase(text) else { return .off }
        if v.count == n + t || v[n + t] == 0x2B || v[n + t] == 0x3B { return .text }
        return .off
    }

    /// The gRPC content-type sent upstream for a grpc-web one: the suffix after `grpc-web(-text)`
    /// (`+proto`, `+json`) is kept.
    public static func upstreamContentType(_ v: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        out.append("application/grpc")
        var i = 20   // after "application/grpc-web"
        if i + 5 <= v.count && v[i] == 0x2D { i += 5 }   // "-text"
        if i < v.count && v[i] == 0x2B { out.append(UnsafeRawBufferPointer(rebasing: v[i...])) }
    }

    /// The trailer frame (flag 0x80, 4-byte length, `name:value\r\n` lines) ending a response body.
    public static func writeTrailerFrame(_ trailers: UnsafeBufferPointer<HeaderRef>?, into out: inout ByteBuffer) {
        let start = out.count
        out.append(byte: 0x80)
        out.append(byte: 0); out.append(byte: 0); out.append(byte: 0); out.append(byte: 0)
        if let t = trailers {
            for f in t {
                for b in f.name { out.append(byte: b &- 0x41 < 26 ? b | 0x20 : b) }   // lowercase (PROTOCOL-WEB.md)
                out.append(":")
                out.append(f.value)
                out.append("\r\n")
            }
        }
        let len = UInt32(out.count - start - 5)
        let b = out.base!.assumingMemoryBound(to: UInt8.self) + start
        b[1] = UInt8(len >> 24); b[2] = UInt8(len >> 16 & 0xFF); b[3] = UInt8(len >> 8 & 0xFF); b[4] = UInt8(len & 0xFF)
    }

    /// Base64 decoding of a body that arrives in pieces: a quad split between pieces waits for the
    /// rest; padding may end any quad (a client may encode each message on its own), whitespace is
    /// skipped. State: up to three pending characters.
    public struct Decoder {
        var pending: UInt32 = 0
        var count = 0
        public private(set) var failed = false
        public init() {}

        /// Whether a quad is incomplete (the body ended inside one: invalid).
        public var isMidQuad: Bool { count != 0 }

        /// Decodes `input` onto `out`; false (and `failed`) on a character outside base64.
        public mutating func decode(_ input: UnsafeRawBufferPointer, into out: inout ByteBuffer) -> Bool {
            for c in input {
                var v: UInt32
                switch c {
                case 0x41...0x5A: v = UInt32(c - 0x41)
                case 0x61...0x7A: v = UInt32(c - 0x61 + 26)
                case 0x30...0x39: v = UInt32(c - 0x30 + 52)
                case 0x2B, 0x2D: v = 62   // + (and - of the URL alphabet)
                case 0x2F, 0x5F: v = 63   // / (and _)
                case 0x3D:   // '=': ends this quad
                    switch count {
                    case 2: out.append(byte: UInt8(pending >> 4 & 0xFF)); count = 0; pending = 0
                    case 3: out.append(byte: UInt8(pending >> 10 & 0xFF)); out.append(byte: UInt8(pending >> 2 & 0xFF))
                            count = 0; pending = 0
                    case 0: break   // the second '=' of "xx=="
                    default: failed = true; return false
                    }
                    continue
                case 0x20, 0x09, 0x0D, 0x0A: continue
                default: failed = true; return false
                }
                pending = pending << 6 | v
                count += 1
                if count == 4 {
                    out.append(byte: UInt8(pending >> 16 & 0xFF)); out.append(byte: UInt8(pending >> 8 & 0xFF))
                    out.append(byte: UInt8(pending & 0xFF))
                    pending = 0
                    count = 0
                }
            }
            return true
        }
    }

    /// Base64 encoding of a body sent in pieces: up to two bytes wait for the next piece, so the
    /// stream has padding only where `finish` is called (before the trailer frame, and at the end).
    public struct Encoder {
        var held: (UInt8, UInt8) = (0, 0)
        var heldCount = 0
        public init() {}

        public mutating func encode(_ input: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
            var i = 0
            if heldCount > 0 {
                var tri: (UInt8, UInt8, UInt8) = (held.0, held.1, 0)
                var n = heldCount
                while n < 3 && i < input.count {
                    if n == 1 { tri.1 = input[i] } else { tri.2 = input[i] }
                    n += 1; i += 1
                }
                if n < 3 { held = (tri.0, tri.1); heldCount = n; return }
                withUnsafeBytes(of: &tri) { Base64.encode($0, into: &out) }
                heldCount = 0
            }
            let whole = (input.count - i) / 3 * 3
            if whole > 0 { Base64.encode(UnsafeRawBufferPointer(rebasing: input[i..<(i + whole)]), into: &out) }
            i += whole
            heldCount = input.count - i
            if heldCount > 0 { held.0 = input[i] }
            if heldCount > 1 { held.1 = input[i + 1] }
        }

        /// Writes what is held, padded.
        public mutating func finish(into out: inout ByteBuffer) {
            var h = held
            let n = heldCount
            heldCount = 0
            if n > 0 { withUnsafeBytes(of: &h) { Base64.encode(UnsafeRawBufferPointer(rebasing: $0[0..<n]), into: &out) } }
        }
    }
}
