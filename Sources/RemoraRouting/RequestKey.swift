import RemoraCore
import RemoraPolicy

/// A cluster's `hash_on` compiled for the request path: where a request's key for `ring_hash` and
/// `maglev` comes from (a header's first non-empty value, a cookie, or the client's address) and
/// its 64-bit hash (`KeyHash`). Reads the request's headers in place; allocates nothing.
public struct RequestKey: Sendable {
    /// Header name, lowercase ("cookie" for a cookie key); empty for the source address.
    let header: [UInt8]
    /// Cookie name; empty unless the key is a cookie.
    let cookie: [UInt8]

    public init(_ k: ClusterHashKey) {
        switch k {
        case .header(let name): header = Bytes.lower(name); cookie = []
        case .cookie(let name): header = Array("cookie".utf8); cookie = Array(name.utf8)
        case .sourceIP: header = []; cookie = []
        }
    }

    /// The hash of the request's key, or nil when the request has none (the balancer then draws at random).
    public func hash(_ headers: UnsafeBufferPointer<HeaderRef>, clientIP: UnsafeRawBufferPointer) -> UInt64? {
        if header.isEmpty { return clientIP.count > 0 ? KeyHash.bytes(clientIP) : nil }
        return header.withUnsafeBytes { name -> UInt64? in
            for h in headers where h.name.count == name.count
                && Bytes.equal(h.name.baseAddress!, name.baseAddress!, name.count, ignoreCase: true) {
                if cookie.isEmpty {
                    if h.value.count > 0 { return KeyHash.bytes(h.value) }
                    continue
                }
                if let v = cookie.withUnsafeBytes({ Bytes.cookie(in: h.value, named: $0) }) { return KeyHash.bytes(v) }
            }
            return nil
        }
    }
}
