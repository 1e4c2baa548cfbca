import RemoraCore

/// A small JSON value: written by the report (hand-made, the binary has no Foundation), read back
/// by `--plot-compare`. Numbers keep their literal text, so 64-bit counts round-trip exactly.
public indirect enum JSON: Equatable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSON])
    /// Keys in insertion order (the output reads top-down like the human summary).
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    public static func int<T: BinaryInteger>(_ v: T) -> JSON { .number(String(v)) }
    /// A finite number with `decimals` digits after the point (NaN and infinities become 0).
    public static func double(_ v: Double, _ decimals: Int = 3) -> JSON { .number(Fmt.fixed(v, decimals)) }

    public subscript(_ key: String) -> JSON? {
        if case let .object(fields) = self { return fields.first(where: { $0.0 == key })?.1 }
        return nil
    }

    public var stringValue: String? { if case let .string(s) = self { return s }; return nil }
    public var doubleValue: Double? { if case let .number(n) = self { return Double(n) }; return nil }
    public var arrayValue: [JSON]? { if case let .array(a) = self { return a }; return nil }

    // MARK: writing

    /// Pretty-printed, two spaces per level; arrays of scalars stay on one line.
    public func serialized() -> String {
        var out = ""
        write(into: &out, indent: 0)
        out += "\n"
        return out
    }

    func write(into out: inout String, indent: Int) {
        switch self {
        case .null: out += "null"
        case let .bool(b): out += b ? "true" : "false"
        case let .number(n): out += n
        case let .string(s): JSON.quote(s, into: &out)
        case let .array(items):
            if items.allSatisfy({ $0.isScalar }) {
                out += "["
                for (i, v) in items.enumerated() {
                    if i > 0 { out += ", " }
                    v.write(into: &out, indent: indent)
                }
                out += "]"
            } else {
                out += "[\n"
                for (i, v) in items.enumerated() {
                    out += String(repeating: " ", count: indent + 2)
                    v.write(into: &out, indent: indent + 2)
                    out += i + 1 < items.count ? ",\n" : "\n"
                }
                out += String(repeating: " ", count: indent) + "]"
            }
        case let .object(fields):
            if fields.isEmpty { out += "{}"; return }
            out += "{\n"
            for (i, (k, v)) in fields.enumerated() {
                out += String(repeating: " ", count: indent + 2)
                JSON.quote(k, into: &out)
                out += ": "
                v.write(into: &out, indent: indent + 2)
                out += i + 1 < fields.count ? ",\n" : "\n"
            }
            out += String(repeating: " ", count: indent) + "}"
        }
    }

    var isScalar: Bool {
        switch self {
        case .array, .object: return false
        default: return true
        }
    }

    static func quote(_ s: String, into out: inout String) { JSONText.appendQuoted(s, into: &out) }

    // MARK: reading

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    public static func parse(_ text: String) throws(ParseError) -> JSON {
        var p = Parser(bytes: Array(text.utf8))
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.pos == p.bytes.count else { throw p.error("trailing characters") }
        return v
    }

    struct Parser {
        let bytes: [UInt8]
        var pos = 0

        func error(_ m: String) -> ParseError { ParseError(description: "JSON: \(m) at byte \(pos)") }

        mutating func skipSpace() {
            while pos < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[pos]) { pos += 1 }
        }

        mutating func literal(_ word: String, _ v: JSON) throws(ParseError) -> JSON {
            let w = Array(word.utf8)
            guard pos + w.count <= bytes.count, Array(bytes[pos..<(pos + w.count)]) == w else { throw error("unexpected token") }
            pos += w.count
            return v
        }

        mutating func value(depth: Int) throws(ParseError) -> JSON {
            guard depth < 64 else { throw error("nested too deeply") }
            skipSpace()
            guard pos < bytes.count else { throw error("unexpected end") }
            switch bytes[pos] {
            case UInt8(ascii: "{"):
                pos += 1
                var fields: [(String, JSON)] = []
                skipSpace()
                if pos < bytes.count && bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(fields) }
                while true {
                    skipSpace()
                    guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw error("expected a key") }
                    let k = try string()
                    skipSpace()
                    guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else { throw error("expected :") }
                    pos += 1
                    fields.append((k, try value(depth: depth + 1)))
                    skipSpace()
                    guard pos < bytes.count else { throw error("unexpected end") }
                    if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                    if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(fields) }
                    throw error("expected , or }")
                }
            case UInt8(ascii: "["):
                pos += 1
                var items: [JSON] = []
                skipSpace()
                if pos < bytes.count && bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
                while true {
                    items.append(try value(depth: depth + 1))
                    skipSpace()
                    guard pos < bytes.count else { throw error("unexpected end") }
                    if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
                    if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
                    throw error("expected , or ]")
                }
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try literal("true", .bool(true))
            case UInt8(ascii: "f"): return try literal("false", .bool(false))
            case UInt8(ascii: "n"): return try literal("null", .null)
            default:
                let start = pos
                while pos < bytes.count, "+-0123456789.eE".utf8.contains(bytes[pos]) { pos += 1 }
                let text = String(decoding: bytes[start..<pos], as: UTF8.self)
                guard !text.isEmpty, Double(text) != nil else { throw error("bad number") }
                return .number(text)
            }
        }

        mutating func string() throws(ParseError) -> String {
            pos += 1   // opening quote
            var out: [UInt8] = []
            while pos < bytes.count {
                let c = bytes[pos]
                pos += 1
                switch c {
                case UInt8(ascii: "\""): return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard pos < bytes.count else { throw error("unexpected end") }
                    let e = bytes[pos]
                    pos += 1
                    switch e {
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "u"):
                        guard pos + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[pos..<(pos + 4)], as: UTF8.self), radix: 16)
                        else { throw error("bad \\u escape") }
                        pos += 4
                        out += Array(String(Unicode.Scalar(v) ?? "\u{FFFD}").utf8)
                    default: out.append(e)
                    }
                default: out.append(c)
                }
            }
            throw error("unterminated string")
        }
    }
}
