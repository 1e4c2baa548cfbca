import Glibc
import RemoraIO

/// Who may use a management server (the admin server, `remora control`): the defence against a web
/// page in an operator's browser, which can send requests to 127.0.0.1 but cannot choose the Host
/// and Origin headers its browser writes, nor add an `Authorization` header it does not know.
/// Pure decisions on a request's headers; each server calls them before its endpoints
/// (docs/config.md "Admin endpoints", docs/control-plane.md "Who may call it").
///
/// - **Host** (`hostRefusal`, 421 Misdirected Request): an IP literal (`127.0.0.1`, `[::1]`, any
///   address) or `localhost`, with any port, or no Host at all. A DNS name is what a DNS-rebinding
///   page sends (its own name, now resolving to this machine), so it is refused, unless the request
///   carries the right bearer token (a page cannot add one). The port is not compared: a port
///   forward (`kubectl port-forward 19901:9901`, `docker -p`) changes it, and a page can only reach
///   this server on a port that leads here anyway, so comparing it stops nothing.
/// - **Cross-origin** (`crossOriginRefusal`, 403): an `Origin` other than `http://` + the request's
///   Host (`null` included), or a `Sec-Fetch-Site` other than `same-origin` / `none`. curl, ctl,
///   the proxy's subscriber and scrapers send neither.
/// - **Token** (`tokenRefusal`, 401): `Authorization: Bearer TOKEN`, compared in constant time.
public struct LocalRequestGuard: Sendable {
    /// The bearer token; nil = none configured (`tokenRefusal` then never refuses).
    public let token: [UInt8]?

    /// An empty token counts as none.
    public init(token: String?) {
        self.token = token.flatMap { $0.isEmpty ? nil : Array($0.utf8) }
    }

    public typealias Request = LocalHTTPServer.Request
    public typealias Response = LocalHTTPServer.Response

    /// The request carries the configured token.
    public func hasToken(_ r: Request) -> Bool {
        guard let token else { return false }
        return Self.authorized(r.header("authorization"), token: token)
    }

    /// 421 when the Host names something other than an address of this machine (and the request
    /// has no valid token); nil when it may go on.
    public func hostRefusal(_ r: Request) -> Response? {
        guard let host = r.header("host"), !Self.isLocalAuthority(host), !hasToken(r) else { return nil }
        return .init(status: 421, body: "misdirected request: Host \(host) is a name, not an address of this server "
                     + "(refused against DNS rebinding); use an IP address or localhost, or send the bearer token\n")
    }

    /// 403 when the request comes from a page of another origin; nil when it may go on.
    public func crossOriginRefusal(_ r: Request) -> Response? {
        if let site = r.header("sec-fetch-site") {
            let s = site.lowercased()
            if s != "same-origin" && s != "none" {
                return .init(status: 403, body: "forbidden: a cross-site request (sec-fetch-site: \(site))\n")
            }
        }
        if let origin = r.header("origin"), !Self.isSameOrigin(origin: origin, host: r.header("host")) {
            return .init(status: 403, body: "forbidden: a cross-origin request (origin: \(origin))\n")
        }
        return nil
    }

    /// 401 when a token is configured and the request does not carry it; nil when it may go on.
    public func tokenRefusal(_ r: Request) -> Response? {
        guard token != nil, !hasToken(r) else { return nil }
        return .init(status: 401, body: "a bearer token is required (authorization: Bearer TOKEN)\n",
                     headers: [("www-authenticate", "Bearer")])
    }

    // MARK: pure rules

    /// `IP[:PORT]`, `[IPv6][:PORT]` or `localhost[:PORT]` (any case); an empty Host counts too
    /// (a URI without authority). Anything else, names included, is false.
    public static func isLocalAuthority(_ authority: String) -> Bool {
        var host = Substring(authority)
        if host.isEmpty { return true }
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]") else { return false }
            let rest = host[host.index(after: close)...]
            guard isPortSuffix(rest) else { return false }
            return parses(String(host[host.index(after: host.startIndex)..<close]), family: AF_INET6)
        }
        if let colon = host.firstIndex(of: ":") {
            guard isPortSuffix(host[colon...]) else { return false }
            host = host[..<colon]
        }
        return host.lowercased() == "localhost" || parses(String(host), family: AF_INET)
    }

    /// "" or `:` and 1 to 5 digits.
    static func isPortSuffix(_ s: Substring) -> Bool {
        if s.isEmpty { return true }
        let digits = s.dropFirst()
        return s.first == ":" && !digits.isEmpty && digits.count <= 5 && digits.utf8.allSatisfy { $0 >= 48 && $0 <= 57 }
    }

    /// A strict IPv4 dotted quad (AF_INET) or an IPv6 literal (AF_INET6).
    static func parses(_ s: String, family: Int32) -> Bool {
        var buf = (UInt64(0), UInt64(0))
        return withUnsafeMutableBytes(of: &buf) { inet_pton(family, s, $0.baseAddress) } == 1
    }

    /// `origin` is `http://` + `host` (case-insensitive): a page served by this very server.
    public static func isSameOrigin(origin: String, host: String?) -> Bool {
        guard let host, !host.isEmpty else { return false }
        return origin.lowercased() == "http://" + host.lowercased()
    }

    /// `Bearer <token>`, compared in constant time.
    public static func authorized(_ header: String?, token: [UInt8]) -> Bool {
        guard let h = header else { return false }
        let parts = h.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return false }
        let given = Array(parts[1].utf8)
        var diff = UInt8(given.count == token.count ? 0 : 1)
        for i in 0..<token.count { diff |= token[i] ^ (i < given.count ? given[i] : 0) }
        return diff == 0
    }

    /// 127.0.0.0/8, ::1 and IPv4-mapped 127.x.
    public static func isLoopback(_ a: SocketAddress) -> Bool {
        let ip = a.ipString
        return ip.hasPrefix("127.") || ip == "::1" || ip.hasPrefix("::ffff:127.")
    }
}
