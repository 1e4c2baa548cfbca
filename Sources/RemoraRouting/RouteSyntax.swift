import RemoraPolicy

/// The rules route config values must follow, shared by `ConfigLoader` (which reports them with
/// file and line) and `RouteTable.init` (for configs from elsewhere). Each returns nil when the
/// value is fine, else what is wrong.
public enum RouteSyntax {
    /// RE2 syntax; compiles it.
    public static func regex(_ pattern: String, ignoreCase: Bool = false) -> String? {
        switch Regex.compile(pattern, ignoreCase: ignoreCase) {
        case .success(let re): Regex.free(re); return nil
        case .failure(let e): return e.message
        }
    }

    /// A substitution for `regex` (assumed valid): `\0` ... `\9` naming groups it has, `\\`.
    public static func substitution(_ s: String, regex: String) -> String? {
        guard case .success(let re) = Regex.compile(regex, ignoreCase: false) else { return nil }
        defer { Regex.free(re) }
        return Regex.checkSubstitution(re, s).map { "invalid substitution: \($0)" }
    }

    /// `host`, `host:port`, `*.suffix` (any non-empty suffix after the "*"), `*`, each optionally
    /// with `:port`; IPv6 hosts in brackets.
    public static func domain(_ s: String) -> String? {
        parseDomain(s) == nil ? #"expected a host, "host:port", "*.suffix" or "*" (optionally with ":port")"# : nil
    }

    /// A redirect's host: `host` or `host:port`, no wildcard.
    public static func host(_ s: String) -> String? {
        parseDomain(s)?.kind == .exact ? nil : #"expected a host or "host:port""#
    }

    /// An HTTP field name (RFC 9110 token).
    public static func headerName(_ s: String) -> String? {
        !s.isEmpty && s.utf8.allSatisfy(isToken) ? nil : "expected a header name (letters, digits and !#$%&'*+-.^_`|~)"
    }

    /// A header a route may change: not one that frames the message or belongs to one connection.
    public static func mutableHeaderName(_ s: String) -> String? {
        if let e = headerName(s) { return e }
        let framing = ["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
                       "proxy-connection"]
        return framing.contains(String(decoding: Bytes.lower(s), as: UTF8.self))
            ? "\(s) is managed by the proxy and cannot be changed by a route" : nil
    }

    /// A header value: visible ASCII, spaces, tabs and UTF-8; no CR, LF or NUL.
    public static func headerValue(_ s: String) -> String? {
        s.utf8.contains { $0 == 0 || $0 == 0x0A || $0 == 0x0D } ? "must not contain CR, LF or NUL" : nil
    }

    /// A method name (a token, case-sensitive).
    public static func method(_ s: String) -> String? {
        !s.isEmpty && s.utf8.allSatisfy(isToken) ? nil : "expected a method name such as GET"
    }

    /// Kind, lowercase host (without the "*" of a suffix), port (-1 = any).
    static func parseDomain(_ s: String) -> (kind: Domain.Kind, host: [UInt8], port: Int)? {
        var host = Bytes.lower(s)
        var port = -1
        let close = host.lastIndex(of: 0x5D)  // ']'
        if let colon = host.lastIndex(of: 0x3A), close.map({ $0 < colon }) ?? true {
            let digits = host[(colon + 1)...]
            guard (1...5).contains(digits.count), digits.allSatisfy({ $0 &- 0x30 < 10 }),
                  let p = Int(String(decoding: digits, as: UTF8.self)), (1...65535).contains(p) else { return nil }
            port = p
            host.removeSubrange(colon...)
        }
        let hostChar = { (c: UInt8) in c &- 0x61 < 26 || c &- 0x30 < 10 || c == 0x2E || c == 0x2D || c == 0x5F }
        if host == [0x2A] { return (.any, [], port) }
        if host.first == 0x2A {
            host.removeFirst()
            return !host.isEmpty && host.allSatisfy(hostChar) ? (.suffix, host, port) : nil
        }
        if host.first == 0x5B {  // "[v6]"
            return host.count > 2 && host.last == 0x5D
                && host.dropFirst().dropLast().allSatisfy({ $0 &- 0x30 < 10 || $0 &- 0x61 < 6 || $0 == 0x3A || $0 == 0x2E })
                ? (.exact, host, port) : nil
        }
        return !host.isEmpty && host.allSatisfy(hostChar) ? (.exact, host, port) : nil
    }

    private static func isToken(_ c: UInt8) -> Bool {
        c &- 0x30 < 10 || Bytes.lower(c) &- 0x61 < 26 || "!#$%&'*+-.^_`|~".utf8.contains(c)
    }
}
