/// Picks a value by TLS server name (SNI), for `protocol: tls` listeners: exact names first, then
/// the longest matching `*.suffix` wildcard (`*.example.com` matches `a.example.com` and
/// `a.b.example.com`, not `example.com`), then the default. Names compare ignoring ASCII case.
/// Built once per snapshot; a lookup is one hash per dot of the name, no allocation but the
/// lowercased copy of a name that has upper-case letters (a parsed ClientHello's never has).
public struct ServerNameTable<Value: Sendable>: Sendable {
    var exact: [String: Value] = [:]
    /// By suffix with its leading dot: ".example.com".
    var wildcard: [String: Value] = [:]
    public var defaultValue: Value?

    public init(defaultValue: Value? = nil) { self.defaultValue = defaultValue }

    /// Adds `pattern` (`name` or `*.suffix`); false when the same pattern was added before.
    @discardableResult
    public mutating func add(_ pattern: String, _ value: Value) -> Bool {
        let p = pattern.lowercased()
        if p.hasPrefix("*.") {
            let key = String(p.dropFirst())
            if wildcard[key] != nil { return false }
            wildcard[key] = value
        } else {
            if exact[p] != nil { return false }
            exact[p] = value
        }
        return true
    }

    /// The value for `name` (nil name: the default).
    public func lookup(_ name: String?) -> Value? { match(name) ?? defaultValue }

    /// The value of the exact name or wildcard `name` matches, without the default.
    public func match(_ name: String?) -> Value? {
        guard var n = name, !n.isEmpty else { return nil }
        if n.utf8.contains(where: { $0 >= 65 && $0 <= 90 }) { n = n.lowercased() }
        if let v = exact[n] { return v }
        if !wildcard.isEmpty {
            var i = n.startIndex
            while let dot = n[i...].firstIndex(of: ".") {   // leftmost dot first: the longest suffix
                if let v = wildcard[String(n[dot...])] { return v }
                i = n.index(after: dot)
            }
        }
        return nil
    }

    /// Checks a pattern as written in the config: nil when valid, else what is wrong.
    public static func problem(_ pattern: String) -> String? {
        var host = Substring(pattern)
        if host.hasPrefix("*.") { host = host.dropFirst(2) }
        let ok = !host.isEmpty && host.utf8.count <= 253 && !host.hasPrefix(".") && !host.hasSuffix(".") && !host.contains("..")
            && host.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 95 || $0 == 46 }
        return ok ? nil : #"expected a host name ("api.example.com") or a wildcard ("*.example.com")"#
    }
}
