/// How a cluster's endpoint set changed (a DNS refresh, a new snapshot): which endpoints stay
/// (old position → new position), which are new, which are gone. Endpoints are matched by key (the
/// address, "10.0.0.5:9000"); an address listed several times is matched occurrence by occurrence
/// (the first old one to the first new one). What stays keeps its state — connections, latency
/// estimate, slow-start ramp — in the proxy; what is new ramps up (`slow_start`); what is gone is
/// let go once its requests have finished. Pure: keys in, positions out.
public struct EndpointSetDiff: Sendable, Equatable {
    /// Per new position: the old position of the same endpoint, or nil (new).
    public let oldIndex: [Int?]
    /// Old positions with no counterpart in the new set, ascending.
    public let removed: [Int]

    public var added: Int { oldIndex.lazy.filter { $0 == nil }.count }
    public var kept: Int { oldIndex.count - added }
    /// Nothing changed: the same keys in the same order.
    public var isIdentity: Bool { removed.isEmpty && oldIndex.enumerated().allSatisfy { $0.element == $0.offset } }

    public init<K: Hashable>(old: [K], new: [K]) {
        var positions: [K: [Int]] = [:]
        for (i, k) in old.enumerated() { positions[k, default: []].append(i) }
        var taken: [K: Int] = [:]
        var oldIndex: [Int?] = []
        var used = [Bool](repeating: false, count: old.count)
        for k in new {
            let n = taken[k, default: 0]
            if let list = positions[k], n < list.count {
                oldIndex.append(list[n])
                used[list[n]] = true
                taken[k] = n + 1
            } else {
                oldIndex.append(nil)
            }
        }
        self.oldIndex = oldIndex
        removed = used.indices.filter { !used[$0] }
    }
}
