import CYAML

/// A YAML node as the config decoder sees it: a scalar, a list or a mapping, with its 1-based line.
struct Node {
    enum Value {
        /// `plain` = unquoted; only plain scalars can be null (`~`, `null`, or nothing at all).
        case scalar(String, plain: Bool)
        case list([Node])
        case map([Entry])
    }

    struct Entry {
        var key: String
        var keyLine: Int
        var value: Node
    }

    var value: Value
    var line: Int

    var isNull: Bool {
        if case .scalar(let s, plain: true) = value { return ["", "~", "null", "Null", "NULL"].contains(s) }
        return false
    }

    /// The scalar's text; "" for collections.
    var text: String {
        if case .scalar(let s, _) = value { return s }
        return ""
    }

    /// How the node reads in "got …" messages.
    var summary: String {
        switch value {
        case .list: "a list"
        case .map: "a mapping"
        case .scalar(let s, _): isNull ? "nothing" : "\"\(s)\""
        }
    }
}

/// A problem libyaml (or the tree builder) found before any schema checks.
struct SyntaxError: Error {
    var line: Int
    var message: String
}

/// What a YAML document may cost, for every reader of config YAML (the loader, the control
/// server's weight edit).
public enum YAMLLimits {
    /// Aliases may repeat at most this many nodes in all, or `aliasRatio` times the nodes the
    /// document spells out, whichever is more: enough for any config that reuses a block, while a
    /// "billion laughs" (anchors of aliases of anchors…) is refused at the alias that crosses it,
    /// in milliseconds, instead of the decoder walking an exponential tree.
    public static let aliasNodes = 100_000
    public static let aliasRatio = 10
    /// Collections may nest this deep (a config needs about 8). Deeper input is refused before
    /// libyaml's cost grows (it is quadratic in flow nesting) and before anything recurses on it.
    public static let depth = 64

    /// The most nodes aliases may repeat in a document that spells out `written` nodes.
    public static func aliasLimit(written: Int) -> Int { max(aliasNodes, aliasRatio * written) }
}

enum YAML {
    /// Parses a stream holding at most one document into a node tree; nil when the stream is empty.
    /// Aliases are expanded (an alias must refer to an anchor that is already complete), within
    /// `YAMLLimits`; collections nest at most `YAMLLimits.depth` deep.
    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> Result<Node?, SyntaxError> {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return .success(nil) }
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) != 0 else {
            return .failure(SyntaxError(line: 0, message: "libyaml could not allocate a parser"))
        }
        defer { yaml_parser_delete(&parser) }
        yaml_parser_set_input_string(&parser, base, bytes.count)

        var builder = TreeBuilder()
        var event = yaml_event_t()
        while true {
            guard yaml_parser_parse(&parser, &event) != 0 else { return .failure(syntaxError(parser)) }
            defer { yaml_event_delete(&event) }
            do {
                if try builder.handle(event) { return .success(builder.root) }
            } catch {
                return .failure(error)
            }
        }
    }

    private static func syntaxError(_ p: yaml_parser_t) -> SyntaxError {
        var message = "invalid YAML: " + (p.problem.map { String(cString: $0) } ?? "unknown error")
        if let context = p.context {
            message += " (\(String(cString: context)) on line \(p.context_mark.line + 1))"
        }
        return SyntaxError(line: Int(p.problem_mark.line) + 1, message: message)
    }
}

/// Turns libyaml events into a `Node` tree.
private struct TreeBuilder {
    private struct Open {
        var line: Int
        var anchor: String?
        var isMap: Bool
        var items: [Node] = []
        /// Nodes in this collection once aliases are expanded, itself included.
        var size = 1
    }

    private(set) var root: Node?
    private var open: [Open] = []
    /// Each anchored node with its size (nodes, aliases expanded).
    private var anchors: [String: (node: Node, size: Int)] = [:]
    private var documents = 0
    /// Nodes spelled out in the text (scalars, lists, mappings; not aliases).
    private var written = 0
    /// Nodes repeated by aliases.
    private var repeated = 0

    /// Returns true at the end of the stream.
    mutating func handle(_ e: yaml_event_t) throws(SyntaxError) -> Bool {
        let line = Int(e.start_mark.line) + 1
        switch e.type {
        case YAML_STREAM_END_EVENT:
            return true
        case YAML_DOCUMENT_START_EVENT:
            documents += 1
            if documents > 1 { throw SyntaxError(line: line, message: "expected one YAML document, found a second one") }
        case YAML_SCALAR_EVENT:
            let s = e.data.scalar
            let text = String(decoding: UnsafeBufferPointer(start: s.value, count: s.length), as: UTF8.self)
            written += 1
            add(Node(value: .scalar(text, plain: s.style == YAML_PLAIN_SCALAR_STYLE), line: line), size: 1,
                anchor: string(s.anchor))
        case YAML_SEQUENCE_START_EVENT:
            try push(Open(line: line, anchor: string(e.data.sequence_start.anchor), isMap: false))
        case YAML_MAPPING_START_EVENT:
            try push(Open(line: line, anchor: string(e.data.mapping_start.anchor), isMap: true))
        case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
            let o = open.removeLast()
            add(Node(value: o.isMap ? .map(try entries(o.items)) : .list(o.items), line: o.line), size: o.size,
                anchor: o.anchor)
        case YAML_ALIAS_EVENT:
            let name = string(e.data.alias.anchor) ?? ""
            guard let anchored = anchors[name] else {
                throw SyntaxError(line: line, message: "alias *\(name) refers to no complete anchor &\(name)")
            }
            repeated += anchored.size
            let limit = YAMLLimits.aliasLimit(written: written)
            if repeated > limit {
                throw SyntaxError(line: line, message: "alias *\(name): aliases would repeat more than \(limit) nodes "
                    + "(at most \(YAMLLimits.aliasNodes), or \(YAMLLimits.aliasRatio) times the nodes written out); "
                    + "refusing the document (an alias bomb?)")
            }
            add(anchored.node, size: anchored.size, anchor: nil)
        default:
            break
        }
        return false
    }

    private mutating func push(_ o: Open) throws(SyntaxError) {
        written += 1
        if open.count >= YAMLLimits.depth {
            throw SyntaxError(line: o.line, message: "lists and mappings nested more than \(YAMLLimits.depth) deep")
        }
        open.append(o)
    }

    private mutating func add(_ node: Node, size: Int, anchor: String?) {
        if let anchor { anchors[anchor] = (node, size) }
        if open.isEmpty {
            root = node
        } else {
            open[open.count - 1].items.append(node)
            open[open.count - 1].size += size
        }
    }

    private func entries(_ items: [Node]) throws(SyntaxError) -> [Node.Entry] {
        var result: [Node.Entry] = []
        for i in stride(from: 0, to: items.count - 1, by: 2) {
            let key = items[i]
            var value = items[i + 1]
            guard case .scalar = key.value else {
                throw SyntaxError(line: key.line, message: "a mapping key must be a plain string, got \(key.summary)")
            }
            if value.isNull { value.line = key.line } // an empty value is "on" its key's line
            result.append(Node.Entry(key: key.text, keyLine: key.line, value: value))
        }
        return result
    }

    private func string(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        p.map { String(cString: $0) }
    }
}
