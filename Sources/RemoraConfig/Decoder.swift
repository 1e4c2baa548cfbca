import RemoraCore

/// Turns `Node`s into values while collecting every problem. Each decode function reports what is
/// wrong with its node and returns nil, so callers keep going and one pass reports everything.
final class Decoder {
    let file: String
    private(set) var errors: [ConfigError] = []

    init(file: String) { self.file = file }

    func fail(_ line: Int, _ path: String, _ message: String) {
        errors.append(ConfigError(file: file, line: line, path: path, message: message))
    }

    /// Errors by line; errors on the same line keep the order they were found in.
    var sortedErrors: [ConfigError] {
        errors.enumerated().sorted { ($0.element.line, $0.offset) < ($1.element.line, $1.offset) }.map(\.element)
    }

    // MARK: Collections

    /// A mapping whose keys must all be in `keys`; reports unknown and duplicate keys.
    func mapping(_ n: Node, _ p: String, keys: [String]) -> Fields? {
        let known = entries(n, p) { e, path -> Node.Entry? in
            if keys.contains(e.key) { return e }
            fail(e.keyLine, path, "unknown key \"\(e.key)\" (expected one of: \(keys.joined(separator: ", ")))")
            return nil
        }
        guard let known else { return nil }
        var fields = Fields(decoder: self, path: p, line: n.line)
        for e in known { fields.nodes[e.key] = e.value }
        return fields
    }

    /// A mapping with free keys (header names, …), in order; reports duplicate keys. Returns the
    /// entries `element` accepts; nil when `n` is not a mapping.
    func entries<T>(_ n: Node, _ p: String, _ element: (Node.Entry, String) -> T?) -> [T]? {
        guard case .map(let entries) = n.value else {
            fail(n.line, p, "expected a mapping, got \(n.summary)")
            return nil
        }
        var seen: [String: Int] = [:]
        return entries.compactMap { e in
            let path = Fields.join(p, e.key)
            if let first = seen[e.key] {
                fail(e.keyLine, path, "duplicate key \"\(e.key)\" (first on line \(first))")
                return nil
            }
            seen[e.key] = e.keyLine
            return element(e, path)
        }
    }

    /// A list whose elements all decode; nil (after reporting) otherwise. `ifEmpty` makes [] an error.
    func list<T>(_ n: Node, _ p: String, ifEmpty: String? = nil, _ element: (Node, String) -> T?) -> [T]? {
        guard case .list(let items) = n.value else {
            fail(n.line, p, "expected a list, got \(n.summary)")
            return nil
        }
        if items.isEmpty, let ifEmpty {
            fail(n.line, p, ifEmpty)
            return nil
        }
        let decoded = items.enumerated().compactMap { i, item in element(item, "\(p)[\(i)]") }
        return decoded.count == items.count ? decoded : nil
    }

    // MARK: Scalars

    /// A non-null scalar that `parse` accepts; otherwise reports "expected <expected>, got …"
    /// (or "must not be negative" when `parse` would take it without a leading "-").
    func value<T>(_ n: Node, _ p: String, _ expected: String, _ parse: (String) -> T?) -> T? {
        if case .scalar(let s, _) = n.value, !n.isNull {
            if let v = parse(s) { return v }
            if s.hasPrefix("-"), s.dropFirst().first?.isNumber == true, parse(String(s.dropFirst())) != nil {
                fail(n.line, p, "must not be negative, got \(s)")
                return nil
            }
        }
        fail(n.line, p, "expected \(expected), got \(n.summary)")
        return nil
    }

    func string(_ n: Node, _ p: String) -> String? { value(n, p, "a string") { $0 } }

    func bool(_ n: Node, _ p: String) -> Bool? { value(n, p, "true or false") { ["true": true, "false": false][$0] } }

    /// A string `check` accepts (it returns nil, or what is wrong).
    func checked(_ n: Node, _ p: String, _ check: (String) -> String?) -> String? {
        guard let s = string(n, p) else { return nil }
        if let problem = check(s) {
            fail(n.line, p, problem)
            return nil
        }
        return s
    }

    /// `[A-Za-z0-9_.-]+`: listener, route and cluster names, which end up in stat names.
    func name(_ n: Node, _ p: String) -> String? {
        value(n, p, "a name made of letters, digits, \"_\", \".\" and \"-\"") { s in
            !s.isEmpty && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) } ? s : nil
        }
    }

    func int(_ n: Node, _ p: String, in range: ClosedRange<Int>) -> Int? {
        within(range, value(n, p, "an integer") { Int($0) }, n, p)
    }

    func duration(_ n: Node, _ p: String, positive: Bool = false) -> Millis? {
        guard let ms = value(n, p, #"a duration like "250ms", "5s" or "2m""#, ConfigValue.duration) else { return nil }
        if positive && ms == 0 {
            fail(n.line, p, "must be greater than 0")
            return nil
        }
        return ms
    }

    func size(_ n: Node, _ p: String, in range: ClosedRange<Int>) -> Int? {
        within(range, value(n, p, #"a size like "60KiB", "1MiB" or "512""#, ConfigValue.size), n, p,
               ConfigValue.sizeText)
    }

    func oneOf<E: CaseIterable & RawRepresentable>(_ n: Node, _ p: String) -> E? where E.RawValue == String {
        let names = E.allCases.map(\.rawValue)
        return value(n, p, names.dropLast().joined(separator: ", ") + " or " + names.last!) { E(rawValue: $0) }
    }

    /// `host:port`; a listener may ask for port 0 (the OS picks), an endpoint may not.
    func hostPort(_ n: Node, _ p: String, portZero: Bool) -> HostPort? {
        guard let a = value(n, p, #"host:port like "127.0.0.1:8080" or "[::1]:8080""#, HostPort.parse) else { return nil }
        if !portZero && a.port == 0 {
            fail(n.line, p, "port must be between 1 and 65535, got 0")
            return nil
        }
        return a
    }

    /// Records `key` as seen at `n`; reports it if it was seen before.
    func unique<K: Hashable>(_ key: K, _ what: String, _ n: Node, _ p: String, in seen: inout [K: Int]) {
        if let first = seen[key] {
            fail(n.line, p, "duplicate \(what) (first used on line \(first))")
        } else {
            seen[key] = n.line
        }
    }

    private func within<T: Comparable>(_ range: ClosedRange<T>, _ v: T?, _ n: Node, _ p: String,
                                       _ show: (T) -> String = { "\($0)" }) -> T? {
        guard let v else { return nil }
        if range.contains(v) { return v }
        fail(n.line, p, "must be between \(show(range.lowerBound)) and \(show(range.upperBound)), got \(n.text)")
        return nil
    }
}

/// The known keys of one mapping, read through decode functions. An absent or null optional key
/// means "use the default"; a required key that is absent is reported once, at the mapping.
struct Fields {
    let decoder: Decoder
    let path: String
    let line: Int
    fileprivate(set) var nodes: [String: Node] = [:]

    static func join(_ base: String, _ key: String) -> String { base.isEmpty ? key : "\(base).\(key)" }

    /// Present and not null.
    func has(_ key: String) -> Bool { nodes[key].map { !$0.isNull } ?? false }

    func optional<T>(_ key: String, _ decode: (Node, String) -> T?) -> T? {
        guard let n = nodes[key], !n.isNull else { return nil }
        return decode(n, Fields.join(path, key))
    }

    /// A null value goes to `decode`, which reports "got nothing".
    func required<T>(_ key: String, _ decode: (Node, String) -> T?) -> T? {
        guard let n = nodes[key] else {
            decoder.fail(line, Fields.join(path, key), "missing required key \"\(key)\"")
            return nil
        }
        return decode(n, Fields.join(path, key))
    }

    /// Of `keys`, the one that is set; reports (at the mapping) when none or several are.
    func one(of keys: [String]) -> String? {
        let given = keys.filter(has)
        if given.count == 1 { return given[0] }
        let names = keys.dropLast().joined(separator: ", ") + " or " + keys.last!
        decoder.fail(line, path, "expected exactly one of \(names)" + (given.isEmpty ? "" : ", got \(given.joined(separator: " and "))"))
        return nil
    }

    /// Reports each of `keys` that is set, and drops it so it is not decoded too.
    mutating func forbid(_ keys: [String], _ message: String) {
        for key in keys where has(key) {
            decoder.fail(nodes[key]!.line, Fields.join(path, key), message)
            nodes[key] = nil
        }
    }
}
