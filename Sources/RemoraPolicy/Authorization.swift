/// Authorization policies (`authorization:` on a listener, and on a route): deny rules first, then
/// allow rules; when any allow rule exists a request must match one of them (an allow-list). The
/// config model is plain values; `Authorizer` is its compiled form, built once per snapshot and
/// shared read-only by every worker. Deciding allocates nothing and copies nothing: the request is
/// read through `AuthorizationRequest`, whose fields point into the codec's buffers.
///
/// The shape follows Istio's AuthorizationPolicy (`from` / `to`, `action`) and what Envoy's RBAC
/// filter evaluates (principals, source IPs, methods, paths, headers, SNI). Within a rule every
/// given condition must hold; within one condition's list any entry may match.

// MARK: Config model

/// A listener's or a route's policy.
public struct AuthorizationPolicy: Sendable, Equatable {
    /// Checked in order after `deny`; the first match allows. Empty: everything not denied is allowed.
    public var allow: [AuthorizationRule]
    /// Checked first, in order; the first match denies.
    public var deny: [AuthorizationRule]

    public init(allow: [AuthorizationRule] = [], deny: [AuthorizationRule] = []) {
        self.allow = allow; self.deny = deny
    }

    /// Every rule, deny rules first: the order of `Authorizer.ruleNames` and of rule stats.
    public var rules: [AuthorizationRule] { deny + allow }
}

/// One rule: who (`from`) may do what (`to`). A rule without conditions matches every request.
public struct AuthorizationRule: Sendable, Equatable {
    /// Unique within its policy; in stat names (`authz.<listener>.<rule>.denied`).
    public var name: String
    /// `from.principals`: the peer's identity (mTLS) matches one of these; empty = anyone, with or
    /// without an identity.
    public var principals: [PrincipalMatch]
    /// `from.source_cidrs`: the client's address lies in one of these; empty = any address.
    public var sourceCIDRs: [CIDR]
    /// `to.methods`: one of these methods (case-sensitive); empty = any.
    public var methods: [String]
    /// `to.paths`: the normalized path (without the query) matches one of these; empty = any.
    public var paths: [AuthorizationPathMatch]
    /// `to.headers`: every one of these holds; empty = no condition.
    public var headers: [AuthorizationHeaderMatch]
    /// `to.server_names`: the TLS SNI is one of these (`api.example.com`, `*.example.com`; ignoring
    /// case); empty = any (and no SNI at all).
    public var serverNames: [String]
    /// `to.ports`: the port the connection was going to (its original destination when redirected,
    /// else the listener's) is one of these; empty = any. tcp and tls listeners.
    public var ports: [Int]

    public init(name: String, principals: [PrincipalMatch] = [], sourceCIDRs: [CIDR] = [], methods: [String] = [],
                paths: [AuthorizationPathMatch] = [], headers: [AuthorizationHeaderMatch] = [], serverNames: [String] = [],
                ports: [Int] = []) {
        self.name = name; self.principals = principals; self.sourceCIDRs = sourceCIDRs; self.methods = methods
        self.paths = paths; self.headers = headers; self.serverNames = serverNames; self.ports = ports
    }

    /// Conditions on the request itself (method, path, headers): meaningless on a TCP listener.
    public var hasRequestConditions: Bool { !methods.isEmpty || !paths.isEmpty || !headers.isEmpty }
}

/// A peer identity condition. YAML strings: `*` (any identity: an authenticated peer), `spiffe://…/*`
/// (a prefix: a trailing `*`), anything else exact.
public enum PrincipalMatch: Sendable, Equatable {
    case any
    case exact(String)
    case prefix(String)

    /// `*` → any, `x*` → prefix x, else exact.
    public init(_ s: String) {
        if s == "*" { self = .any } else if s.hasSuffix("*") { self = .prefix(String(s.dropLast())) } else { self = .exact(s) }
    }
}

public enum AuthorizationPathMatch: Sendable, Equatable {
    case exact(String)
    case prefix(String)
    /// RE2 syntax, matching the whole path.
    case regex(String)
}

/// A header condition: the value test holds for some occurrence of the name (`present`: the name
/// occurs); `invert` turns the result around (`present` inverted: the header is absent). The name
/// `host` is the authority (`:authority` over HTTP/2).
public struct AuthorizationHeaderMatch: Sendable, Equatable {
    public enum Value: Sendable, Equatable {
        case present
        case exact(String), prefix(String), suffix(String), contains(String)
        /// RE2 syntax, matching the whole value.
        case regex(String)
    }
    public var name: String
    public var value: Value
    public var invert: Bool

    public init(name: String, _ value: Value, invert: Bool = false) {
        self.name = name; self.value = value; self.invert = invert
    }
}

/// An IPv4 or IPv6 address, 128 bits; IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so
/// one compare covers a client that reached an IPv6 socket with an IPv4 address.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public var hi: UInt64
    public var lo: UInt64

    public init(hi: UInt64, lo: UInt64) { self.hi = hi; self.lo = lo }

    /// The address is an IPv4 one (IPv4-mapped).
    public var isIPv4: Bool { hi == 0 && lo >> 32 == 0xFFFF }

    /// Parses a numeric literal: "10.1.2.3", "::1", "fe80::1", "::ffff:10.1.2.3" (no brackets, no
    /// zone, no port). nil when it is not one.
    public static func parse(_ s: String) -> IPAddress? {
        var s = s
        return s.withUTF8 { parse(UnsafeRawBufferPointer($0)) }
    }

    public static func parse(_ b: UnsafeRawBufferPointer) -> IPAddress? {
        if let v4 = parseV4(b, from: 0) { return IPAddress(hi: 0, lo: 0xFFFF_0000_0000 | UInt64(v4)) }
        return parseV6(b)
    }

    /// A dotted quad from `from` to the end.
    static func parseV4(_ b: UnsafeRawBufferPointer, from: Int) -> UInt32? {
        var out: UInt32 = 0, part: UInt32 = 0, digits = 0, dots = 0
        var i = from
        while i < b.count {
            let c = b[i]
            if c == 0x2E {
                guard digits > 0, dots < 3 else { return nil }
                out = out << 8 | part; part = 0; digits = 0; dots += 1
            } else if c &- 0x30 < 10 {
                guard digits < 3, !(digits == 1 && part == 0) else { return nil }   // no leading zeros ("010")
                part = part * 10 + UInt32(c - 0x30); digits += 1
                if part > 255 { return nil }
            } else {
                return nil
            }
            i += 1
        }
        guard digits > 0, dots == 3 else { return nil }
        return out << 8 | part
    }

    static func parseV6(_ b: UnsafeRawBufferPointer) -> IPAddress? {
        var groups = [UInt16](repeating: 0, count: 8)
        var n = 0, gap = -1, i = 0
        if b.count >= 2 && b[0] == 0x3A && b[1] == 0x3A { gap = 0; i = 2 } else if b.first == 0x3A { return nil }
        while i < b.count {
            // An embedded IPv4 address in the last 32 bits.
            var j = i
            while j < b.count && b[j] != 0x3A && b[j] != 0x2E { j += 1 }
            if j < b.count && b[j] == 0x2E {
                guard n <= 6, let v4 = parseV4(b, from: i) else { return nil }
                groups[n] = UInt16(v4 >> 16); groups[n + 1] = UInt16(v4 & 0xFFFF); n += 2
                i = b.count
                break
            }
            guard j > i, j - i <= 4, n < 8 else { return nil }
            var g: UInt16 = 0
            for k in i..<j {
                let c = b[k]
                let d: UInt8
                if c &- 0x30 < 10 { d = c - 0x30 } else if (c | 0x20) &- 0x61 < 6 { d = (c | 0x20) - 0x61 + 10 } else { return nil }
                g = g << 4 | UInt16(d)
            }
            groups[n] = g; n += 1
            i = j
            if i < b.count {   // at a ':'
                if i + 1 < b.count && b[i + 1] == 0x3A {
                    guard gap < 0 else { return nil }
                    gap = n; i += 2
                } else {
                    i += 1
                    guard i < b.count else { return nil }   // trailing single ':'
                }
            }
        }
        if gap >= 0 {
            guard n < 8 else { return nil }
            let tail = Array(groups[gap..<n])
            for k in gap..<8 { groups[k] = 0 }
            for (k, g) in tail.enumerated() { groups[8 - tail.count + k] = g }
        } else if n != 8 {
            return nil
        }
        var hi: UInt64 = 0, lo: UInt64 = 0
        for k in 0..<4 { hi = hi << 16 | UInt64(groups[k]) }
        for k in 4..<8 { lo = lo << 16 | UInt64(groups[k]) }
        return IPAddress(hi: hi, lo: lo)
    }

    public var description: String {
        if isIPv4 { return "\(lo >> 24 & 0xFF).\(lo >> 16 & 0xFF).\(lo >> 8 & 0xFF).\(lo & 0xFF)" }
        var g: [String] = []
        for k in 0..<8 {
            let word: UInt64 = k < 4 ? hi : lo
            let shift = UInt64(48 - 16 * (k % 4))
            g.append(String((word >> shift) & 0xFFFF, radix: 16))
        }
        return g.joined(separator: ":")
    }
}

/// An address range: "10.0.0.0/8", "192.168.1.7" (/32), "fd00::/8", "::1" (/128). An IPv4 range
/// also covers the IPv4-mapped IPv6 addresses of its addresses.
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    /// The first address (host bits cleared).
    public var address: IPAddress
    /// Leading bits that must equal, over the 128-bit form (an IPv4 /8 is 96 + 8 = 104).
    public var bits: Int

    /// nil when `s` is not an address, optionally followed by "/length" (0 ... 32 for IPv4, 0 ... 128
    /// for IPv6).
    public init?(_ s: String) {
        let parts = s.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let a = IPAddress.parse(String(parts[0])) else { return nil }
        let max = a.isIPv4 && !parts[0].contains(":") ? 32 : 128
        var length = max
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 3, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                  let l = Int(parts[1]), l <= max else { return nil }
            length = l
        }
        bits = length + (max == 32 ? 96 : 0)
        let (mh, ml) = CIDR.mask(bits)
        address = IPAddress(hi: a.hi & mh, lo: a.lo & ml)
    }

    @inline(__always)
    static func mask(_ bits: Int) -> (UInt64, UInt64) {
        let hi: UInt64 = bits >= 64 ? ~0 : (bits == 0 ? 0 : ~0 << UInt64(64 - bits))
        let lo: UInt64 = bits >= 128 ? ~0 : (bits <= 64 ? 0 : ~0 << UInt64(128 - bits))
        return (hi, lo)
    }

    @inline(__always)
    public func contains(_ a: IPAddress) -> Bool {
        let (mh, ml) = CIDR.mask(bits)
        return a.hi & mh == address.hi && a.lo & ml == address.lo
    }

    public var description: String {
        address.isIPv4 && bits >= 96 ? "\(address)/\(bits - 96)" : "\(address)/\(bits)"
    }
}

// MARK: Deciding

/// A request as the authorizer reads it; every buffer is valid for the call. Conformers are plain
/// structs over the codec's buffers (RemoraProxy's), or test values.
public protocol AuthorizationRequest {
    /// "GET" …; empty for a connection (TCP listener).
    var method: UnsafeRawBufferPointer { get }
    /// The path as normalized (no query); empty for a connection.
    var path: UnsafeRawBufferPointer { get }
    /// `:authority` / Host.
    var authority: UnsafeRawBufferPointer { get }
    /// The peer's verified identity; nil when it has none (raw TCP, no client certificate).
    var principal: UnsafeRawBufferPointer? { get }
    /// The client's address; nil when unknown.
    var source: IPAddress? { get }
    /// The TLS SNI the client sent; nil when none.
    var serverName: UnsafeRawBufferPointer? { get }
    var headerCount: Int { get }
    func headerName(_ i: Int) -> UnsafeRawBufferPointer
    func headerValue(_ i: Int) -> UnsafeRawBufferPointer
    /// The port the connection was going to; -1 when unknown (requests: rules with ports are
    /// only allowed on tcp and tls listeners).
    var destinationPort: Int { get }
}

extension AuthorizationRequest {
    public var destinationPort: Int { -1 }
}

/// What the authorizer decided, and why.
public struct AuthorizationDecision: Sendable, Equatable {
    public var allowed: Bool
    /// The rule that decided (index in `Authorizer.ruleNames`, deny rules first); -1 = none: allowed
    /// because there is no allow rule, or denied because no allow rule matched.
    public var rule: Int

    public init(allowed: Bool, rule: Int) { self.allowed = allowed; self.rule = rule }
}

/// A compiled `AuthorizationPolicy`: every string in one byte arena, every list a range of a flat
/// array of trivial values, regexes compiled once (RE2). Immutable, shared by every worker.
public final class Authorizer: @unchecked Sendable {   // immutable after init; RE2 objects are thread-safe
    /// Rule names, deny rules first (the index a decision reports).
    public let ruleNames: [String]
    /// Deny rules are `0 ..< denyCount`; allow rules the rest.
    public let denyCount: Int
    /// Some rule asks for the peer identity / the client address / the SNI (the caller fetches them
    /// only then).
    public let needsPrincipal: Bool
    public let needsSource: Bool
    public let needsServerName: Bool
    public let needsPort: Bool

    struct Span { var start: Int32; var count: Int32 }
    struct Rule {
        var principals: Span, cidrs: Span, methods: Span, paths: Span, headers: Span, serverNames: Span
        var ports: Span = Span(start: 0, count: 0)
    }
    /// kind: 0 any, 1 exact, 2 prefix (principals); 1 exact, 2 prefix, 3 regex (paths); 1 exact,
    /// 2 suffix "*.x" (server names, lowercase).
    struct Text { var kind: UInt8; var text: Span; var regex: Int32 }
    struct Header {
        enum Op: UInt8 { case present, exact, prefix, suffix, contains, regex }
        var op: Op
        var invert: Bool
        var isHost: Bool
        var name: Span                // lowercase
        var value: Span
        var regex: Int32
    }

    /// Every string of the policy, by `Span` (allocated once, freed in deinit).
    let bytes: UnsafeMutableRawBufferPointer
    // Flat storage allocated once (no array bookkeeping when matching).
    let rules: UnsafeMutableBufferPointer<Rule>
    let texts: UnsafeMutableBufferPointer<Text>   // principals, methods, paths, server names
    let cidrs: UnsafeMutableBufferPointer<CIDR>
    let headers: UnsafeMutableBufferPointer<Header>
    let regexes: UnsafeMutableBufferPointer<OpaquePointer>
    let ports: UnsafeMutableBufferPointer<Int>

    /// Compiles `policy`; an invalid regex throws its message (the config loader checked them).
    public init(_ policy: AuthorizationPolicy) throws(RegexError) {
        var bytes: [UInt8] = [], rules: [Rule] = [], texts: [Text] = [], cidrs: [CIDR] = []
        var headers: [Header] = [], regexes: [OpaquePointer] = [], ports: [Int] = []
        func add(_ b: [UInt8]) -> Span {
            bytes += b
            return Span(start: Int32(bytes.count - b.count), count: Int32(b.count))
        }
        func regex(_ pattern: String) throws(RegexError) -> Int32 {
            switch Regex.compile(pattern, ignoreCase: false) {
            case .success(let re): regexes.append(re); return Int32(regexes.count - 1)
            case .failure(let e): regexes.forEach(Regex.free); throw e
            }
        }
        func lower(_ s: String) -> [UInt8] { s.utf8.map { $0 &- 65 < 26 ? $0 | 0x20 : $0 } }
        var principal = false, source = false, sni = false, port = false
        for r in policy.rules {
            var c = Rule(principals: Span(start: Int32(texts.count), count: 0), cidrs: Span(start: 0, count: 0),
                         methods: Span(start: 0, count: 0), paths: Span(start: 0, count: 0),
                         headers: Span(start: 0, count: 0), serverNames: Span(start: 0, count: 0))
            for p in r.principals {
                switch p {
                case .any: texts.append(Text(kind: 0, text: add([]), regex: -1))
                case .exact(let s): texts.append(Text(kind: 1, text: add(Array(s.utf8)), regex: -1))
                case .prefix(let s): texts.append(Text(kind: 2, text: add(Array(s.utf8)), regex: -1))
                }
            }
            c.principals.count = Int32(r.principals.count)
            c.cidrs = Span(start: Int32(cidrs.count), count: Int32(r.sourceCIDRs.count))
            cidrs += r.sourceCIDRs
            c.methods.start = Int32(texts.count)
            for m in r.methods { texts.append(Text(kind: 1, text: add(Array(m.utf8)), regex: -1)) }
            c.methods.count = Int32(r.methods.count)
            c.paths.start = Int32(texts.count)
            for p in r.paths {
                switch p {
                case .exact(let s): texts.append(Text(kind: 1, text: add(Array(s.utf8)), regex: -1))
                case .prefix(let s): texts.append(Text(kind: 2, text: add(Array(s.utf8)), regex: -1))
                case .regex(let s): texts.append(Text(kind: 3, text: add([]), regex: try regex(s)))
                }
            }
            c.paths.count = Int32(r.paths.count)
            c.serverNames.start = Int32(texts.count)
            for s in r.serverNames {
                if s.hasPrefix("*.") {
                    texts.append(Text(kind: 2, text: add(lower(String(s.dropFirst()))), regex: -1))
                } else {
                    texts.append(Text(kind: 1, text: add(lower(s)), regex: -1))
                }
            }
            c.serverNames.count = Int32(r.serverNames.count)
            c.headers.start = Int32(headers.count)
            for h in r.headers {
                let name = lower(h.name)
                var x = Header(op: .present, invert: h.invert, isHost: name == Array("host".utf8) || name == Array(":authority".utf8),
                               name: add(name), value: add([]), regex: -1)
                switch h.value {
                case .present: break
                case .exact(let s): x.op = .exact; x.value = add(Array(s.utf8))
                case .prefix(let s): x.op = .prefix; x.value = add(Array(s.utf8))
                case .suffix(let s): x.op = .suffix; x.value = add(Array(s.utf8))
                case .contains(let s): x.op = .contains; x.value = add(Array(s.utf8))
                case .regex(let s): x.op = .regex; x.regex = try regex(s)
                }
                headers.append(x)
            }
            c.headers.count = Int32(r.headers.count)
            c.ports = Span(start: Int32(ports.count), count: Int32(r.ports.count))
            ports += r.ports
            port = port || !r.ports.isEmpty
            principal = principal || !r.principals.isEmpty
            source = source || !r.sourceCIDRs.isEmpty
            sni = sni || !r.serverNames.isEmpty
            rules.append(c)
        }
        self.bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
        self.bytes.copyBytes(from: bytes)
        self.rules = freeze(rules); self.texts = freeze(texts); self.cidrs = freeze(cidrs)
        self.headers = freeze(headers); self.regexes = freeze(regexes); self.ports = freeze(ports)
        ruleNames = policy.rules.map(\.name)
        denyCount = policy.deny.count
        needsPrincipal = principal; needsSource = source; needsServerName = sni; needsPort = port
    }

    deinit {
        regexes.forEach(Regex.free)
        bytes.deallocate()
        rules.deallocate(); texts.deallocate(); cidrs.deallocate(); headers.deallocate(); regexes.deallocate()
        ports.deallocate()
    }

    /// Deny rules in order (the first match denies), then allow rules (the first match allows);
    /// with allow rules and none matching, denied.
    @inline(__always)
    public func decide<R: AuthorizationRequest>(_ r: R) -> AuthorizationDecision {
        var i = 0
        while i < denyCount {
            if matches(rules[i], r) { return AuthorizationDecision(allowed: false, rule: i) }
            i += 1
        }
        if i == rules.count { return AuthorizationDecision(allowed: true, rule: -1) }
        while i < rules.count {
            if matches(rules[i], r) { return AuthorizationDecision(allowed: true, rule: i) }
            i += 1
        }
        return AuthorizationDecision(allowed: false, rule: -1)
    }

    func matches<R: AuthorizationRequest>(_ rule: Rule, _ r: R) -> Bool {
        if rule.cidrs.count > 0 {
            guard let a = r.source else { return false }
            var hit = false
            for k in range(rule.cidrs) where cidrs[k].contains(a) { hit = true; break }
            if !hit { return false }
        }
        if rule.principals.count > 0 {
            guard let p = r.principal else { return false }
            var hit = false
            for k in range(rule.principals) where text(texts[k], p) { hit = true; break }
            if !hit { return false }
        }
        if rule.methods.count > 0 && !any(rule.methods, r.method) { return false }
        if rule.paths.count > 0 && !any(rule.paths, r.path) { return false }
        if rule.serverNames.count > 0 {
            guard let s = r.serverName, any(rule.serverNames, s, ignoreCase: true) else { return false }
        }
        for k in range(rule.headers) where !holds(headers[k], r) { return false }
        if rule.ports.count > 0 {
            let p = r.destinationPort
            var hit = false
            for k in range(rule.ports) where ports[k] == p { hit = true; break }
            if !hit { return false }
        }
        return true
    }

    @inline(__always) func range(_ s: Span) -> Range<Int> { Int(s.start)..<Int(s.start + s.count) }

    @inline(__always)
    func any(_ s: Span, _ v: UnsafeRawBufferPointer, ignoreCase: Bool = false) -> Bool {
        for k in range(s) where text(texts[k], v, ignoreCase: ignoreCase) { return true }
        return false
    }

    /// `v` against one text condition (kind: 0 any, 1 exact, 2 prefix — for server names, a "*.x"
    /// suffix —, 3 regex).
    @inline(__always)
    func text(_ t: Text, _ v: UnsafeRawBufferPointer, ignoreCase: Bool = false) -> Bool {
        let n = Int(t.text.count)
        switch t.kind {
        case 0: return true
        case 1: return v.count == n && same(v, 0, t.text, ignoreCase)
        case 2: return ignoreCase ? v.count > n && same(v, v.count - n, t.text, true) : v.count >= n && same(v, 0, t.text, false)
        default: return Regex.fullMatch(regexes[Int(t.regex)], v)
        }
    }

    /// One header condition: the test passes for some occurrence (present: there is one), inverted
    /// when asked.
    func holds<R: AuthorizationRequest>(_ h: Header, _ r: R) -> Bool {
        var found = false
        if h.isHost {
            found = r.authority.count > 0 && test(h, r.authority)
        } else {
            var j = 0
            let n = Int(h.name.count)
            while j < r.headerCount && !found {
                let name = r.headerName(j)
                found = name.count == n && same(name, 0, h.name, true) && test(h, r.headerValue(j))
                j += 1
            }
        }
        return found != h.invert
    }

    @inline(__always)
    func test(_ h: Header, _ v: UnsafeRawBufferPointer) -> Bool {
        let n = Int(h.value.count)
        switch h.op {
        case .present: return true
        case .exact: return v.count == n && same(v, 0, h.value, false)
        case .prefix: return v.count >= n && same(v, 0, h.value, false)
        case .suffix: return v.count >= n && same(v, v.count - n, h.value, false)
        case .contains:
            if n == 0 { return true }
            if v.count < n { return false }
            for i in 0...(v.count - n) where same(v, i, h.value, false) { return true }
            return false
        case .regex: return Regex.fullMatch(regexes[Int(h.regex)], v)
        }
    }

    /// v[at ..< at + s.count] equals the arena bytes of `s` (the arena side lowercase when
    /// `ignoreCase`, the request side folded).
    @inline(__always)
    func same(_ v: UnsafeRawBufferPointer, _ at: Int, _ s: Span, _ ignoreCase: Bool) -> Bool {
        let n = Int(s.count)
        if n == 0 { return true }
        let a = v.baseAddress! + at, b = UnsafeRawPointer(bytes.baseAddress!) + Int(s.start)
        var k = 0
        while k < n {
            var c = a.load(fromByteOffset: k, as: UInt8.self)
            if ignoreCase && c &- 65 < 26 { c |= 0x20 }
            if c != b.load(fromByteOffset: k, as: UInt8.self) { return false }
            k += 1
        }
        return true
    }
}

private func freeze<T>(_ a: [T]) -> UnsafeMutableBufferPointer<T> {
    let p = UnsafeMutableBufferPointer<T>.allocate(capacity: max(a.count, 1))
    _ = p.initialize(from: a)
    return UnsafeMutableBufferPointer(start: p.baseAddress, count: a.count)
}
