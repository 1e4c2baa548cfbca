import RemoraCore

/// A YAML document in Remora's schema (docs/config.md), built by the translation and printed in block
/// style, one key per line, so that the loader's `file:line: path: message` errors point at one field.
/// Every string is double-quoted (JSON escaping is valid YAML), so no xDS value can change the structure.
public indirect enum YAMLNode: Equatable, Sendable {
    case string(String)
    case int(Int)
    case bool(Bool)
    case map([(String, YAMLNode)])
    case list([YAMLNode])

    public static func == (a: YAMLNode, b: YAMLNode) -> Bool {
        switch (a, b) {
        case let (.string(x), .string(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.bool(x), .bool(y)): return x == y
        case let (.list(x), .list(y)): return x == y
        case let (.map(x), .map(y)): return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// The value at `key` of a map (nil otherwise).
    public subscript(key: String) -> YAMLNode? {
        if case .map(let kv) = self { return kv.first { $0.0 == key }?.1 }
        return nil
    }

    public var text: String {
        var out = ""
        if case .map(let kv) = self, !kv.isEmpty {
            Self.printMap(kv, indent: 0, into: &out)
        } else {
            out = inline + "\n"
        }
        return out
    }

    var isScalarOrEmpty: Bool {
        switch self {
        case .string, .int, .bool: return true
        case .map(let kv): return kv.isEmpty
        case .list(let l): return l.allSatisfy { if case .map = $0 { false } else if case .list = $0 { false } else { true } }
        }
    }

    var inline: String {
        switch self {
        case .string(let s): var o = ""; JSONText.appendQuoted(s, into: &o); return o
        case .int(let i): return String(i)
        case .bool(let b): return b ? "true" : "false"
        case .map(let kv): return kv.isEmpty ? "{}" : "{ " + kv.map { Self.key($0.0) + ": " + $0.1.inline }.joined(separator: ", ") + " }"
        case .list(let l): return l.isEmpty ? "[]" : "[ " + l.map(\.inline).joined(separator: ", ") + " ]"
        }
    }

    static func key(_ k: String) -> String {
        k.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || $0 == 95 || ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || $0 == 45 }
            && !k.isEmpty ? k : YAMLNode.string(k).inline
    }

    static func printMap(_ kv: [(String, YAMLNode)], indent: Int, into out: inout String, firstPrefix: String? = nil) {
        let pad = String(repeating: " ", count: indent)
        for (i, (k, v)) in kv.enumerated() {
            out += (i == 0 ? (firstPrefix ?? pad) : pad) + key(k) + ":"
            if v.isScalarOrEmpty {
                out += " " + v.inline + "\n"
            } else {
                out += "\n"
                printValue(v, indent: indent + 2, into: &out)
            }
        }
    }

    static func printValue(_ v: YAMLNode, indent: Int, into out: inout String) {
        let pad = String(repeating: " ", count: indent)
        switch v {
        case .map(let kv): printMap(kv, indent: indent, into: &out)
        case .list(let items):
            for item in items {
                switch item {
                case .map(let kv) where !kv.isEmpty:
                    printMap(kv, indent: indent + 2, into: &out, firstPrefix: pad + "- ")
                default:
                    out += pad + "- " + item.inline + "\n"
                }
            }
        default: out += pad + v.inline + "\n"
        }
    }
}
