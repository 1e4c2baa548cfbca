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
