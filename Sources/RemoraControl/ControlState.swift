import RemoraConfig
import RemoraCore

/// What a node last said about its group's configuration.
public enum NodeState: String, Sendable {
    /// Applied `version`.
    case ack = "ACK"
    /// Refused `version` (and keeps serving its last good one).
    case nack = "NACK"
    /// Was sent `version` (or only polled) and has not reported on it yet.
    case pending = "PENDING"
}

/// One proxy, as the control server knows it from its requests.
public struct NodeRecord: Equatable, Sendable {
    public var id: String
    public var group: String
    /// The newest version the node was sent or reported on (0 = none yet).
    public var version: UInt64
    public var state: NodeState
    /// The NACK's reason ("" otherwise).
    public var reason: String
    /// Its admin server, `HOST:PORT` ("" = not told).
    public var admin: String
    /// Clock time of its last request, ms.
    public var lastSeen: UInt64

    public init(id: String, group: String, version: UInt64, state: NodeState, reason: String, admin: String, lastSeen: UInt64) {
        self.id = id; self.group = group; self.version = version; self.state = state
        self.reason = reason; self.admin = admin; self.lastSeen = lastSeen
    }
}

/// The control server's state and rules, without I/O: groups (version + document) and the nodes.
/// Every change to a group goes through `store` first; when storing fails nothing changes.
public final class ControlState {
    public private(set) var groups: [String: StoredGroup] = [:]
    public private(set) var nodes: [String: NodeRecord] = [:]
    /// Persists a group before it changes in memory (nil: memory only, tests).
    let store: ((StoredGroup) throws(ControlError) -> Void)?
    /// At most this many node records; the one seen longest ago makes room.
    public var maxNodes = 100_000

    public init(groups: [StoredGroup] = [], store: ((StoredGroup) throws(ControlError) -> Void)? = nil) {
        for g in groups { self.groups[g.name] = g }
        self.store = store
    }

    // MARK: groups

    /// Result of a write: the group's version and whether it changed.
    public struct Written: Equatable {
        public var version: UInt64
        public var changed: Bool
        public init(version: UInt64, changed: Bool) { self.version = version; self.changed = changed }
    }

    /// Stores `document` as the group's next version after validating it (`force`: store it even if
    /// invalid). An identical document changes nothing. 400 lists every error as `file:line: path: message`.
    public func put(group: String, document: String, force: Bool) throws(ControlError) -> Written {
        if !force, case .failure(let e) = ConfigLoader.parse(yaml: document, file: group) {
            throw ControlError(400, e.description)
        }
        return try write(group: group, document: document)
    }

    /// New weights for route `route`'s backends in the group's document, stored as the next version.
    public func split(group: String, route: String, weights: [ClusterWeight]) throws(ControlError) -> Written {
        guard let g = groups[group] else { throw ControlError(404, "no group \(group)") }
        let edited = try WeightEdit.apply(to: g.document, route: route, weights: weights)
        switch ConfigLoader.parse(yaml: edited, file: group) {
        case .failure(let e):
            throw ControlError(400, e.description)
        case .success(let new):
            // The edit must change those weights and nothing else.
            if case .success(let old) = ConfigLoader.parse(yaml: g.document, file: group),
               old.settingWeights(route: route, weights) != new {
                throw ControlError(500, "internal error: editing the weights of \(route) changed more than the weights; nothing stored")
            }
        }
        return try write(group: group, document: edited)
    }

    func write(group: String, document: String) throws(ControlError) -> Written {
        let old = groups[group]
        if let old, old.document == document { return Written(version: old.version, changed: false) }
        let g = StoredGroup(name: group, version: (old?.version ?? 0) + 1, document: document)
        try store?(g)
        groups[group] = g
        return Written(version: g.version, changed: true)
    }

    /// `name version` lines, by name.
    public func groupLines() -> String {
        groups.values.sorted { $0.name < $1.name }.map { "\($0.name) \($0.version)\n" }.joined()
    }

    // MARK: polls

    public enum PollAnswer: Equatable {
        /// Send this version now.
        case send(StoredGroup)
        /// Nothing newer: wait for a change.
        case wait
    }

    /// What a poll from a node that has `version` gets. A node ahead of the server (its state was
    /// restored from an older copy) makes the group's version jump past the node's, so that versions
    /// a proxy sees only grow.
    public func poll(group: String, version: UInt64) throws(ControlError) -> PollAnswer {
        guard var g = groups[group] else { throw ControlError(404, "no group \(group)") }
        if version < g.version { return .send(g) }
        if version == g.version { return .wait }
        g.version = version + 1
        try store?(g)
        groups[group] = g
        return .send(g)
    }

    // MARK: nodes

    /// Every request from a node: who it is, where its admin server is, when it was seen.
    public func saw(node: String, group: String, admin: String?, now: UInt64) {
        if var n = nodes[node] {
            if n.group != group { n = NodeRecord(id: node, group: group, version: 0, state: .pending, reason: "", admin: n.admin, lastSeen: now) }
            if let admin { n.admin = admin }
            n.lastSeen = now
            nodes[node] = n
        } else {
            makeRoom()
            nodes[node] = NodeRecord(id: node, group: group, version: 0, state: .pending, reason: "", admin: admin ?? "", lastSeen: now)
        }
    }

    /// A poll saying the node has `version`: a version it applied or refused before (after a
    /// restart of this server, which keeps no node records, the node shows PENDING on it).
    public func polled(node: String, version: UInt64) {
        guard var n = nodes[node], version > n.version else { return }
        n.version = version
        n.state = .pending
        n.reason = ""
        nodes[node] = n
    }

    /// The node was sent `version`.
    public func delivered(node: String, version: UInt64) {
        guard var n = nodes[node], version > n.version || (version == n.version && n.state == .pending) else { return }
        n.version = version
        n.state = .pending
        n.reason = ""
        nodes[node] = n
    }

    /// ACK (`reason` nil) or NACK of `version`. A report on an older version than the node's
    /// newest is stale and only counts as a sign of life.
    public func report(node: String, group: String, version: UInt64, nack reason: String?, now: UInt64) {
        saw(node: node, group: group, admin: nil, now: now)
        guard var n = nodes[node], version >= n.version else { return }
        n.version = version
        n.state = reason == nil ? .ack : .nack
        n.reason = reason ?? ""
        nodes[node] = n
    }

    func makeRoom() {
        guard nodes.count >= maxNodes, let oldest = nodes.values.min(by: { $0.lastSeen < $1.lastSeen }) else { return }
        nodes[oldest.id] = nil
    }

    /// `node group version state reason last_seen_seconds admin` lines, by group then node; the
    /// reason and admin percent-encoded (`encodeField`), "-" when empty.
    public func statusLines(now: UInt64) -> String {
        nodes.values.sorted { ($0.group, $0.id) < ($1.group, $1.id) }.map { n in
            let seen = now >= n.lastSeen ? (now - n.lastSeen) / 1000 : 0
            return "\(n.id) \(n.group) \(n.version) \(n.state.rawValue) \(encodeField(n.reason.trimmingWhitespace)) \(seen) \(encodeField(n.admin))\n"
        }.joined()
    }
}
