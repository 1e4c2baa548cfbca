import CYAML
import RemoraConfig
import RemoraCore

// The split edit: new weights for one route's backends, written into the stored YAML text itself.
// libyaml tells where each node sits; only the weight scalars change (or a `weight:` entry is added
// to a backend that had none), so comments, layout and every other byte of the operator's document
// stay as they were. The result is checked by parsing it again: it must be the same `Config` with
// only those weights changed.

/// A YAML node with where it sits in the text (byte offsets).
struct MarkedNode {
    enum Kind {
        case scalar(String)
        case list([MarkedNode])
        case map([(key: MarkedNode, value: MarkedNode)])
    }
    var kind: Kind
    /// Byte offsets of the node's text: [start, end). A scalar's quotes, tag and anchor included.
    var start: Int
    var end: Int
    /// 1-based.
    var line: Int
    /// Flow style (`{ }`, `[ ]`) for collections.
    var flow: Bool
    /// Carries an anchor (`&a`): other places may be aliases of it.
    var anchored: Bool
    /// A copy made by an alias (`*a`): its offsets are the anchor's.
    var viaAlias = false

    var text: String? { if case .scalar(let s) = kind { return s }; return nil }

    subscript(key: String) -> MarkedNode? {
        guard case .map(let entries) = kind else { return nil }
        return entries.first { $0.key.text == key }?.value
    }

    var items: [MarkedNode]? { if case .list(let l) = kind { return l }; return nil }

    /// True when this node or anything under it is anchored or an alias copy.
    var sharesText: Bool {
        if anchored || viaAlias { return true }
        switch kind {
        case .scalar: return false
        case .list(let l): return l.contains { $0.sharesText }
        case .map(let m): return m.contains { $0.key.sharesText || $0.value.sharesText }
        }
    }

    /// Returns the number of nodes marked.
    mutating func markAliasCopy() -> Int {
        viaAlias = true
        var n = 1
        switch kind {
        case .scalar: break
        case .list(var l):
            for i in l.indices { n += l[i].markAliasCopy() }
            kind = .list(l)
        case .map(var m):
            for i in m.indices { n += m[i].key.markAliasCopy() + m[i].value.markAliasCopy() }
            kind = .map(m)
        }
        return n
    }
}

enum MarkedYAML {
    /// Parses the first document of `bytes`; nil for an empty stream. libyaml counts marks in
    /// characters (after a BOM); they are turned into byte offsets here.
    static func parse(_ bytes: [UInt8]) throws(ControlError) -> MarkedNode? {
        let bom = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
        // Byte offset of each character index.
        var offsets: [Int] = []
        offsets.reserveCapacity(bytes.count + 1)
        var i = bom
        while i < bytes.count {
            offsets.append(i)
            let b = bytes[i]
            i += b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4
        }
        offsets.append(bytes.count)
        func byte(_ mark: yaml_mark_t) -> Int { offsets[min(Int(mark.index), offsets.count - 1)] }

        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) != 0 else { throw ControlError(500, "libyaml could not allocate a parser") }
        defer { yaml_parser_delete(&parser) }
        return try bytes.withUnsafeBufferPointer { buf throws(ControlError) -> MarkedNode? in
            yaml_parser_set_input_string(&parser, buf.baseAddress, buf.count)
            struct Open { var node: MarkedNode; var children: [MarkedNode]; var anchor: String? }
            var open: [Open] = []
            var anchors: [String: MarkedNode] = [:]
            var root: MarkedNode?
            var written = 0, repeated = 0   // nodes spelled out, nodes copied by aliases (YAMLLimits)
            var event = yaml_event_t()
            func add(_ n: MarkedNode, anchor: String?) {
                if let anchor { anchors[anchor] = n }
                if open.isEmpty { root = n } else { open[open.count - 1].children.append(n) }
            }
            while true {
                guard yaml_parser_parse(&parser, &event) != 0 else {
                    let problem = parser.problem.map { String(cString: $0) } ?? "unknown error"
                    throw ControlError(400, "invalid YAML on line \(parser.problem_mark.line + 1): \(problem)")
                }
                defer { yaml_event_delete(&event) }
                let line = Int(event.start_mark.line) + 1
                switch event.type {
                case YAML_STREAM_END_EVENT, YAML_DOCUMENT_END_EVENT:
                    return root
                case YAML_SCALAR_EVENT:
                    written += 1
                    let s = event.data.scalar
                    let text = String(decoding: UnsafeBufferPointer(start: s.value, count: s.length), as: UTF8.self)
                    add(MarkedNode(kind: .scalar(text), start: byte(event.start_mark), end: byte(event.end_mark), line: line,
                                   flow: false, anchored: s.anchor != nil),
                        anchor: s.anchor.map { String(cString: $0) })
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    written += 1
                    if open.count >= YAMLLimits.depth {
                        throw ControlError(400, "lists and mappings nested more than \(YAMLLimits.depth) deep on line \(line)")
                    }
                    let isMap = event.type == YAML_MAPPING_START_EVENT
                    let anchor = isMap ? event.data.mapping_start.anchor : event.data.sequence_start.anchor
                    let flow = isMap ? event.data.mapping_start.style == YAML_FLOW_MAPPING_STYLE
                                     : event.data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE
                    open.append(Open(node: MarkedNode(kind: .list([]), start: byte(event.start_mark), end: 0, line: line,
                                                      flow: flow, anchored: anchor != nil),
                                     children: [], anchor: anchor.map { String(cString: $0) }))
                    if isMap { open[open.count - 1].node.kind = .map([]) }
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    var o = open.removeLast()
                    o.node.end = byte(event.end_mark)
                    if case .map = o.node.kind {
                        var entries: [(key: MarkedNode, value: MarkedNode)] = []
                        for k in stride(from: 0, to: o.children.count - 1, by: 2) {
                            entries.append((o.children[k], o.children[k + 1]))
                        }
                        o.node.kind = .map(entries)
                    } else {
                        o.node.kind = .list(o.children)
                    }
                    add(o.node, anchor: o.anchor)
                case YAML_ALIAS_EVENT:
                    let name = event.data.alias.anchor.map { String(cString: $0) } ?? ""
                    guard var copy = anchors[name] else { throw ControlError(400, "alias *\(name) refers to no anchor") }
                    repeated += copy.markAliasCopy()
                    if repeated > YAMLLimits.aliasLimit(written: written) {
                        throw ControlError(400, "alias *\(name) on line \(line): aliases would repeat more than "
                                           + "\(YAMLLimits.aliasLimit(written: written)) nodes; refusing the document")
                    }
                    add(copy, anchor: nil)
                default:
                    break
                }
            }
        }
    }
}

public enum WeightEdit {
    /// `document` with new weights for the backends of route `route` (`ROUTE` in every listener, or
    /// `LISTENER/ROUTE`). A sidecar service's routes (`sidecar.services[].routes`) are those of its
    /// listener `outbound_<service>`. Clusters not named keep their weight. Errors: 404 no such route,
    /// 400 a cluster that is not one of the route's backends, a route without backends, or a route whose
    /// backends are written with YAML anchors or aliases (shared text cannot be edited in one place).
    public static func apply(to document: String, route spec: String, weights: [ClusterWeight]) throws(ControlError) -> String {
        let (listenerName, routeName) = split(spec)
        let bytes = Array(document.utf8)
        guard let root = try MarkedYAML.parse(bytes) else {
            throw ControlError(404, "no route \(spec): the document has no listeners")
        }
        // (listener name, its route lists, whether its text is shared through anchors or aliases)
        var places: [(name: String, routeLists: [MarkedNode], shared: Bool)] = []
        if let listeners = root["listeners"] {
            for l in listeners.items ?? [] {
                var routeLists: [MarkedNode] = []
                if let r = l["routes"] { routeLists.append(r) }
                for vh in l["virtual_hosts"]?.items ?? [] { if let r = vh["routes"] { routeLists.append(r) } }
                places.append((l["name"]?.text ?? "", routeLists, root.anchored || listeners.anchored || l.anchored || l.viaAlias))
            }
        }
        if let sidecar = root["sidecar"], let services = sidecar["services"] {
            for s in services.items ?? [] {
                guard let name = s["name"]?.text, let r = s["routes"] else { continue }
                places.append(("outbound_" + name, [r],
                               root.anchored || sidecar.anchored || sidecar.viaAlias || services.anchored || services.viaAlias
                                   || s.anchored || s.viaAlias))
            }
        }
        if places.isEmpty { throw ControlError(404, "no route \(spec): the document has no listeners") }
        var edits: [(start: Int, end: Int, text: String)] = []
        var found = 0
        for (lname, routeLists, shared) in places {
            if let listenerName, lname != listenerName { continue }
            for list in routeLists {
                for r in list.items ?? [] where r["name"]?.text == routeName {
                    found += 1
                    if shared || list.anchored || list.viaAlias || r.sharesText {
                        throw ControlError(400, "route \(lname)/\(routeName) is written with YAML anchors or aliases (line \(r.line)): "
                                           + "change its weights in the document and apply it")
                    }
                    guard let backends = r["backends"]?.items else {
                        throw ControlError(400, "route \(lname)/\(routeName) has no backends (line \(r.line))")
                    }
                    let names = backends.compactMap { $0["cluster"]?.text }
                    for w in weights where !names.contains(w.cluster) {
                        throw ControlError(400, "cluster \(w.cluster) is not a backend of route \(lname)/\(routeName) "
                                           + "(its backends: \(names.joined(separator: ", ")))")
                    }
                    for b in backends {
                        guard let c = b["cluster"]?.text, let w = weights.first(where: { $0.cluster == c }) else { continue }
                        edits.append(edit(backend: b, weight: w.weight, bytes: bytes))
                    }
                }
            }
        }
        if found == 0 { throw ControlError(404, "no route \(spec) in the document") }
        var out = bytes
        for e in edits.sorted(by: { $0.start > $1.start }) {
            out.replaceSubrange(e.start..<e.end, with: Array(e.text.utf8))
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func split(_ spec: String) -> (listener: String?, route: String) {
        guard let slash = spec.firstIndex(of: "/") else { return (nil, spec) }
        return (String(spec[..<slash]), String(spec[spec.index(after: slash)...]))
    }

    /// The change that gives backend `b` the weight `w`.
    static func edit(backend b: MarkedNode, weight w: UInt32, bytes: [UInt8]) -> (start: Int, end: Int, text: String) {
        if let node = b["weight"] {
            // `weight:` with nothing after it is an empty scalar placed right after the colon.
            let pad = node.start == node.end && node.start > 0 && bytes[node.start - 1] == UInt8(ascii: ":") ? " " : ""
            return (node.start, node.end, pad + "\(w)")
        }
        // No weight yet: a new first entry, before the first key, in the mapping's own style.
        guard case .map(let entries) = b.kind, let first = entries.first else { return (b.start, b.start, "") }
        let at = first.key.start
        if b.flow { return (at, at, "weight: \(w), ") }
        var lineStart = at
        while lineStart > 0 && bytes[lineStart - 1] != 0x0A { lineStart -= 1 }
        // The key's column, as spaces (a "- " before it counts as indentation too).
        let column = String(decoding: bytes[lineStart..<at], as: UTF8.self).count
        return (at, at, "weight: \(w)\n" + String(repeating: " ", count: column))
    }
}

extension Config {
    /// This configuration with new weights for the backends of route `spec` (see `WeightEdit`).
    public func settingWeights(route spec: String, _ weights: [ClusterWeight]) -> Config {
        let (listenerName, routeName) = WeightEdit.split(spec)
        var c = self
        for li in c.listeners.indices where listenerName == nil || c.listeners[li].name == listenerName {
            for vi in c.listeners[li].virtualHosts.indices {
                for ri in c.listeners[li].virtualHosts[vi].routes.indices
                where c.listeners[li].virtualHosts[vi].routes[ri].name == routeName {
                    guard case .forward(var f) = c.listeners[li].virtualHosts[vi].routes[ri].action else { continue }
                    for bi in f.backends.indices {
                        if let w = weights.first(where: { $0.cluster == f.backends[bi].cluster }) { f.backends[bi].weight = w.weight }
                    }
                    c.listeners[li].virtualHosts[vi].routes[ri].action = .forward(f)
                }
            }
        }
        // A sidecar service's routes are also kept in the section and in the outbound listeners'
        // copies of the services (its HTTP listener `outbound_<name>` was edited above).
        func edit(_ services: inout [SidecarService]) {
            for si in services.indices where listenerName == nil || "outbound_" + services[si].name == listenerName {
                for ri in services[si].routes.indices where services[si].routes[ri].name == routeName {
                    guard case .forward(var f) = services[si].routes[ri].action else { continue }
                    for bi in f.backends.indices {
                        if let w = weights.first(where: { $0.cluster == f.backends[bi].cluster }) { f.backends[bi].weight = w.weight }
                    }
                    services[si].routes[ri].action = .forward(f)
                }
            }
        }
        if c.sidecar != nil { edit(&c.sidecar!.services) }
        for li in c.listeners.indices where c.listeners[li].protocol == .sidecarOutbound && c.listeners[li].sidecar != nil {
            edit(&c.listeners[li].sidecar!.services)
        }
        return c
    }

    /// The backends of the first route named `spec` (`ROUTE` or `LISTENER/ROUTE`), nil when there is
    /// no such route or it does not forward.
    public func backends(ofRoute spec: String) -> [WeightedBackend]? {
        let (listenerName, routeName) = WeightEdit.split(spec)
        for l in listeners where listenerName == nil || l.name == listenerName {
            for vh in l.virtualHosts {
                for r in vh.routes where r.name == routeName {
                    if case .forward(let f) = r.action { return f.backends }
                    return nil
                }
            }
        }
        return nil
    }
}
