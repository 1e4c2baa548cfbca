import RemoraCore

/// A listener's routes compiled for matching: ordered, first match wins. A value shared read-only
/// by every worker; matching allocates nothing.
public struct RouteTable: Sendable {
    public struct Route: Sendable {
        public let name: String
        let kind: UInt8              // 0 prefix, 1 exact
        let path: [UInt8]
        /// Backends as indices into the snapshot's cluster list, with cumulative weights.
        public let split: WeightedSplit
        /// Upstream response-head timeout in ms; 0 = none.
        public let timeout: Millis
    }

    public let routes: [Route]

    /// `clusterIndex` maps a cluster name to its index in the snapshot.
    public init(_ configs: [RouteConfig], clusterIndex: (String) -> Int?) {
        routes = configs.map { r in
            let (kind, path): (UInt8, String) = switch r.match.path {
            case .prefix(let p): (0, p)
            case .exact(let p): (1, p)
            }
            let split = WeightedSplit(r.backends.map { (clusterIndex($0.cluster) ?? -1, $0.weight) })
            return Route(name: r.name, kind: kind, path: Array(path.utf8), split: split, timeout: r.timeout)
        }
    }

    /// Index of the first route matching the request target's path (query excluded), or nil.
    @inline(__always)
    public func match(target: UnsafeRawBufferPointer) -> Int? {
        let path = RouteTable.pathOf(target)
        for i in routes.indices {
            let r = routes[i]
            let ok: Bool = r.path.withUnsafeBytes { want in
                if r.kind == 1 {
                    return path.count == want.count && memeq(path.baseAddress, want.baseAddress, want.count)
                }
                return path.count >= want.count && memeq(path.baseAddress, want.baseAddress, want.count)
            }
            if ok { return i }
        }
        return nil
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

/// Integer weights of any total (share = w / Σw). Picking is a binary search over cumulative weights.
public struct WeightedSplit: Sendable {
    /// Cluster index of each backend.
    public let targets: [Int]
    let cumulative: [UInt64]
    public var total: UInt64 { cumulative.last ?? 0 }

    public init(_ backends: [(Int, UInt32)]) {
        targets = backends.map(\.0)
        var sum: UInt64 = 0
        cumulative = backends.map { sum += UInt64($0.1); return sum }
    }

    /// The backend position for a uniformly random `r`.
    @inline(__always)
    public func pick(_ r: UInt64) -> Int {
        if targets.count == 1 { return 0 }
        let x = r % total
        var lo = 0, hi = cumulative.count - 1
        while lo < hi {
            let mid = (lo + hi) / 2
            if cumulative[mid] > x { hi = mid } else { lo = mid + 1 }
        }
        return lo
    }
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
