import Glibc

/// An IP address as two words, for comparing and hashing addresses without formatting them (the
/// sidecar's original destinations): IPv6 as its 16 bytes in network order, IPv4 as its IPv4-mapped
/// IPv6 form `::ffff:a.b.c.d`, so "10.0.0.1" and "::ffff:10.0.0.1" are one key.
public struct IPKey: Hashable, Sendable {
    public var hi: UInt64
    public var lo: UInt64

    public init(hi: UInt64, lo: UInt64) { self.hi = hi; self.lo = lo }

    /// An IPv4 address in network byte order (`sin_addr.s_addr` as stored).
    public init(ipv4 networkOrder: UInt32) {
        hi = 0
        lo = 0x0000_FFFF_0000_0000 | UInt64(UInt32(bigEndian: networkOrder))
    }

    /// An IPv6 address from its 16 bytes in network order.
    public init(ipv6 bytes: UnsafeRawBufferPointer) {
        var h: UInt64 = 0, l: UInt64 = 0
        for i in 0..<8 { h = h << 8 | UInt64(bytes[i]) }
        for i in 8..<16 { l = l << 8 | UInt64(bytes[i]) }
        hi = h; lo = l
    }

    /// A numeric IPv4 or IPv6 literal; nil for anything else.
    public init?(_ literal: String) {
        var buf = (UInt64(0), UInt64(0))
        let key: IPKey? = withUnsafeMutableBytes(of: &buf) { raw in
            if inet_pton(AF_INET, literal, raw.baseAddress) == 1 {
                return IPKey(ipv4: raw.load(as: UInt32.self))
            }
            if inet_pton(AF_INET6, literal, raw.baseAddress) == 1 { return IPKey(ipv6: UnsafeRawBufferPointer(raw)) }
            return nil
        }
        guard let key else { return nil }
        self = key
    }
}
