import RemoraCore

/// What a request asks to switch to (`Connection: upgrade` + `Upgrade: …`, RFC 9110 §7.8), as the
/// proxy decides on it. Pure: read from the request's header list only once llhttp has flagged the
/// request as an upgrade (both fields present), so an ordinary request pays one flag test.
public enum UpgradeRequest: UInt8, Sendable {
    /// Not an upgrade, or only `Upgrade: h2c`, which is ignored as before (served as HTTP/1.1).
    case none
    /// `Upgrade: websocket` (RFC 6455): forwarded with its upgrade fields on routes that allow it.
    case websocket
    /// Any other protocol: refused with 403 (no route allows it).
    case other
    /// An HTTP/2 CONNECT (no `:protocol`): a TCP tunnel to `:authority` when the listener allows it.
    case connect

    /// The upgrade `headers` ask for: `websocket` when an Upgrade field lists it (any case, among
    /// other tokens), else `other` when one lists anything but h2c, else `none`.
    public static func classify(_ headers: UnsafeBufferPointer<HeaderRef>) -> UpgradeRequest {
        var result = UpgradeRequest.none
        for f in headers where f.name.count == 7 && f.name.equalsLowercase("upgrade") {
            var stop = false
            UpgradeRequest.forEachToken(f.value) { t in
                if t.equalsLowercase("websocket") { result = .websocket; stop = true }
                else if !t.equalsLowercase("h2c") { result = .other }
            }
            if stop { return .websocket }
        }
        return result
    }

    /// Each comma-separated element of `list`, spaces around it removed, empty ones skipped. A
    /// protocol version (`websocket/13`) is part of its token.
    static func forEachToken(_ list: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
        var i = 0
        let n = list.count
        while i < n {
            while i < n && (list[i] == 0x20 || list[i] == 0x09 || list[i] == 0x2C) { i += 1 }
            let start = i
            while i < n && list[i] != 0x2C { i += 1 }
            var end = i
            while end > start && (list[end - 1] == 0x20 || list[end - 1] == 0x09) { end -= 1 }
            if end > start { body(UnsafeRawBufferPointer(rebasing: list[start..<end])) }
        }
    }
}

extension UpgradeRequest {
    /// The upgrade fields an HTTP/1.1 upstream gets for a WebSocket handshake from an HTTP/1.1 client.
    public static let websocketFields: StaticString = "connection: upgrade\r\nupgrade: websocket\r\n"

    /// The fields for a WebSocket handshake translated from an RFC 8441 extended CONNECT (HTTP/2
    /// has no Sec-WebSocket-Key: the proxy makes one from 16 random bytes, RFC 6455 §4.1).
    public static func writeWebSocketFields(key random: (UInt64, UInt64), into out: inout ByteBuffer) {
        out.append(websocketFields)
        out.append("sec-websocket-key: ")
        var r = random
        withUnsafeBytes(of: &r) { Base64.encode($0, into: &out) }
        out.append("\r\n")
    }
}

/// Base64 (RFC 4648 §4, with padding).
public enum Base64 {
    static let alphabet: StaticString = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    public static func encode(_ b: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        let a = alphabet.utf8Start
        var i = 0
        while i + 3 <= b.count {
            let v = UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2])
            out.append(byte: a[Int(v >> 18 & 63)]); out.append(byte: a[Int(v >> 12 & 63)])
            out.append(byte: a[Int(v >> 6 & 63)]); out.append(byte: a[Int(v & 63)])
            i += 3
        }
        let rest = b.count - i
        if rest == 1 {
            let v = UInt32(b[i]) << 16
            out.append(byte: a[Int(v >> 18 & 63)]); out.append(byte: a[Int(v >> 12 & 63)]); out.append("==")
        } else if rest == 2 {
            let v = UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8
            out.append(byte: a[Int(v >> 18 & 63)]); out.append(byte: a[Int(v >> 12 & 63)])
            out.append(byte: a[Int(v >> 6 & 63)]); out.append("=")
        }
    }
}
