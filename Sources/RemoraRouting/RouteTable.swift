import RemoraCore

/// A listener's routes compiled for matching: ordered, first match wins. Shared read-only by every
/// worker. Stored flat (trivial entries plus one byte arena and one split arena) so that matching
/// and picking copy no reference-counted value and allocate nothing.
public final class RouteTable: Sendable {
    /// One route; every field trivial.
    public struct Entry: Sendable {
        let kind: UInt8              // 0 prefix, 1 exact
        let pathOffset: Int
        let pathLength: Int
        let splitOffset: Int
        let splitCount: Int
        /// Upstream response-head timeout in ms; 0 = none.
        public let timeout: Millis
    }

    public let entries: [Entry]
    /// Route names, by index (stats, logs).
    public let names: [String]
    let bytes: [UInt8]
    /// Per backend of every route: cluster index and cumulative weight.
    let targets: [Int]
    let cumulative: [UInt64]

    /// `clusterIndex` maps a cluster name to its index in the snapshot.
    public init(_ configs: [RouteConfig], clusterIndex: (String) -> Int?) {
        var entries: [Entry] = [], bytes: [UInt8] = [], targets: [Int] = [], cumulative: [UInt64] = []
        for r in configs {
            let (kind, path): (UInt8, String) = switch r.match.path {
            case .prefix(let p): (0, p)
            case .exact(let p): (1, p)
            }
            let offset = bytes.count
            bytes += Array(path.utf8)
            let splitOffset = targets.count
            var sum: UInt64 = 0
            for b in r.backends {
                sum += UInt64(b.weight)
                targets.append(clusterIndex(b.cluster) ?? -1)
                cumulative.append(sum)
            }
            entries.append(Entry(kind: kind, pathOffset: offset, pathLength: bytes.count - offset,
                                 splitOffset: splitOffset, splitCount: r.backends.count, timeout: r.timeout))
        }
        self.entries = entries
        self.names = configs.map(\.name)
        self.bytes = bytes
        self.targets = targets
        self.cumulative = cumulative
    }

    /// Index of the first route matching the request target's path (query excluded), or nil.
    @inline(__always)
    public func match(target: UnsafeRawBufferPointer) -> Int? {
        let path = RouteTable.pathOf(target)
        return bytes.withUnsafeBytes { arena in
            entries.withUnsafeBufferPointer { es in
                for i in es.indices {
                    let e = es[i]
                    if e.kind == 1 ? path.count != e.pathLength : path.count < e.pathLength { continue }
                    if memeq(path.baseAddress, arena.baseAddress.map { $0 + e.pathOffset }, e.pathLength) { return i }
                }
                return nil
            }
        }
    }

    /// The cluster index route `route` sends to, for a uniformly random `r` (weighted split:
    /// share = weight / Σweights; binary search over cumulative weights).
    @inline(__always)
    public func pickCluster(route: Int, random r: UInt64) -> Int {
        let e = entries[route]
        if e.splitCount == 1 { return targets[e.splitOffset] }
        return cumulative.withUnsafeBufferPointer { cum in
            let total = cum[e.splitOffset + e.splitCount - 1]
            let x = r % total
            var lo = e.splitOffset, hi = e.splitOffset + e.splitCount - 1
            while lo < hi {
                let mid = (lo + hi) / 2
                if cum[mid] > x { hi = mid } else { lo = mid + 1 }
            }
            return targets[lo]
        }
    }

    /// The path part of a request target: up to `?` or `#`; absolute-form targets lose scheme and authority.
    @inline(__always)
    public static func pathOf(_ t: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var start = 0
        if t.count > 7 && (t[0] | 0x20) == 0x68 && (t[1] | 0x20) == 0x74 {   // "http://" or "https://"
            if let colon = t.firstIndex(of: 0x3A), colon + 2 < t.count, t[colon + 1] == 0x2F, t[colon + 2] == 0x2F {
                start = colon + 3
                while start < t.count && t[start] != 0x2F { start += 1 }
            }
        }
        var end = start
        while end < t.count && t[end] != 0x3F && t[end] != 0x23 { end += 1 }
        return UnsafeRawBufferPointer(rebasing: t[start..<end])
    }
}

@inline(__always)
func memeq(_ a: UnsafeRawPointer?, _ b: UnsafeRawPointer?, _ n: Int) -> Bool {
    if n == 0 { return true }
    guard let a, let b else { return false }
    for i in 0..<n where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
    return true
}

/// A small fast PRNG (wyrand), one per worker; never shared across threads.
public struct FastRandom {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0xA076_1D64_78BD_642F
        let m = state.multipliedFullWidth(by: state ^ 0xE703_7ED1_A0B4_28DB)
        return m.high ^ m.low
    }
}
