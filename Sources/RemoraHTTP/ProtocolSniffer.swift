/// What the first bytes of a connection are, for the sidecar's outbound listener (Istio's protocol
/// sniffing): an HTTP/1.x request line, the HTTP/2 connection preface, a TLS ClientHello, or
/// anything else. Pure code over the bytes read so far; the caller owns the timeout and the size
/// limit (`ProtocolSniffer.classify` says `needMore` until it knows).
public enum SniffedProtocol: Sendable, Equatable {
    /// Starts with a request line's method and a space (`GET `, `POST `, ...).
    case http1
    /// Starts with the 24-byte HTTP/2 client preface (h2c with prior knowledge).
    case http2
    /// A whole TLS ClientHello.
    case tls(ClientHello)
    /// Something else: proxied as bytes.
    case opaque
}

public enum ProtocolSniffer {
    /// The decision for `bytes`, or nil while every protocol it could still be needs more bytes.
    /// At `maxBytes` or more without a decision (a ClientHello too large) the answer is `opaque`.
    public static func classify(_ bytes: UnsafeRawBufferPointer, maxBytes: Int = 16 * 1024) -> SniffedProtocol? {
        if bytes.isEmpty { return nil }
        if bytes[0] == 22 {
            switch ClientHello.parse(bytes) {
            case .hello(let h): return .tls(h)
            case .notTLS: return .opaque
            case .needMore: return bytes.count >= maxBytes ? .opaque : nil
            }
        }
        let preface = h2Preface
        var i = 0
        while i < bytes.count && i < preface.count && bytes[i] == preface[i] { i += 1 }
        if i == preface.count { return .http2 }
        if i == bytes.count { return nil }   // a prefix of the preface so far
        return method(bytes)
    }

    /// The HTTP/2 client connection preface (RFC 9113 §3.4).
    static let h2Preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// Request methods recognised (RFC 9110 §9 and PATCH), each followed by a space.
    static let methods: [[UInt8]] = ["GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ", "OPTIONS ", "TRACE ",
                                     "PATCH "].map { Array($0.utf8) }

    /// `.http1` when `bytes` starts with a method and a space, nil while they are a prefix of one, else `.opaque`.
    static func method(_ bytes: UnsafeRawBufferPointer) -> SniffedProtocol? {
        var prefixOfOne = false
        for m in methods {
            let n = min(m.count, bytes.count)
            var j = 0
            while j < n && bytes[j] == m[j] { j += 1 }
            if j == m.count { return .http1 }
            if j == bytes.count { prefixOfOne = true }
        }
        return prefixOfOne ? nil : .opaque
    }
}
