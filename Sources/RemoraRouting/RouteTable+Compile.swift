import RemoraCore
import RemoraPolicy

/// Turns a listener's virtual hosts into the table's flat arrays; collects every problem.
struct Compiler {
    let listener: String
    let clusters: [String: Int]
    var errors: [ConfigError] = []
    var bytes: [UInt8] = []
    var interned: [[UInt8]: Span] = [:]
    var domains: [Domain] = []
    var hosts: [Span] = []
    var screens: [Screen] = []
    var matchers: [Matcher] = []
    var routes: [RouteTable.Route] = []
    var conditions: [Condition] = []
    var methods: [Span] = []
    var backends: [RouteTable.Backend] = []
    var pieces: [Piece] = []
    var mutations: [(op: RouteTable.HeaderMutation.Op, name: Span, value: Span)] = []
    var regexes: [OpaquePointer] = []
    var info: [RouteTable.RouteInfo] = []
    var retryPolicies: [RetryPolicy?] = []
    var faults: [FaultPolicy?] = []
    var rateLimits: [RateLimitPolicy?] = []
    var grpcWeb: [GRPCWebConfig?] = []

    init(listener: String, clusters: [String: Int]) { self.listener = listener; self.clusters = clusters }

    mutating func compile(_ virtualHosts: [VirtualHostConfig]) {
        var found: [(order: Int, domain: Domain)] = []
        for (v, host) in virtualHosts.enumerated() {
            for d in host.domains {
                guard let p = RouteSyntax.parseDomain(d) else {
                    fail("listeners.\(listener).virtual_hosts.\(host.name).domains", "\(d): " + RouteSyntax.domain(d)!)
                    continue
                }
                found.append((found.count, Domain(kind: p.kind, host: add(p.host), port: p.port, virtualHost: v)))
            }
            hosts.append(Span(start: routes.count, count: host.routes.count))
            for r in host.routes { route(r, virtualHost: host.name) }
        }
        // Most specific first: exact, then the longest suffix, then "*"; with a port before without.
        domains = found.sorted { a, b in
            let x = a.domain, y = b.domain
            return (x.kind.rawValue, -x.host.count, x.port < 0 ? 1 : 0, a.order) < (y.kind.rawValue, -y.host.count, y.port < 0 ? 1 : 0, b.order)
        }.map(\.domain)
    }

    mutating func route(_ r: RouteConfig, virtualHost: String) {
        let at = "listeners.\(listener).routes.\(r.name)"
        let matcher = self.matcher(r.match, at)
        var backendInfo: [RouteTable.BackendInfo] = []
        var mirror: (cluster: Int, name: String)?
        var action = RouteTable.Route.Action.forward, timeout: Millis = 0, requestTimeout = Millis.max, status = 0
        var backendSpan = Span(start: backends.count, count: 0), total: UInt64 = 0
        var hashHeader = Span.empty, hashCookie = Span.empty, mirrorPerMillion: UInt64 = 0
        var scheme = Span.empty, host = Span.empty, stripQuery = false, body = Span.empty
        switch r.action {
        case .forward(let f):
            for b in f.backends {
                total += UInt64(b.weight)
                let c = cluster(b.cluster, at + ".backends")
                backends.append(RouteTable.Backend(cluster: c, slot: backends.count, upper: total))
                backendInfo.append(RouteTable.BackendInfo(slot: backends.count - 1, cluster: c, clusterName: b.cluster, weight: b.weight))
            }
            backendSpan.count = f.backends.count
            if total == 0 { fail(at + ".backends", "at least one backend must have a weight above 0") }
            switch f.hashOn {
            case .header(let name): hashHeader = add(Bytes.lower(name))
            case .cookie(let name): hashHeader = add(Array("cookie".utf8)); hashCookie = add(Array(name.utf8))
            case nil: break
            }
            if let m = f.mirror {
                mirror = (cluster(m.cluster, at + ".mirror.cluster"), m.cluster)
                mirrorPerMillion = UInt64(m.perMillion)
            }
            timeout = f.timeout
            requestTimeout = f.requestTimeout ?? .max
        case .redirect(let d):
            action = .redirect; status = d.code; stripQuery = d.stripQuery
            scheme = add(Array((d.scheme ?? "").utf8)); host = add(Array((d.host ?? "").utf8))
        case .respond(let d):
            action = .respond; status = d.status; body = add(Array(d.body.utf8))
        }
        var rewrite = Rewrite.none, rewriteText = Span.empty, rewriteRegex = 0, rewriteGroups = 0
        switch action == .respond ? nil : r.rewrite {
        case .path(let s): rewrite = .path; rewriteText = add(Array(s.utf8))
        case .prefix(let s):
            rewrite = .prefix; rewriteText = add(Array(s.utf8))
            if matcher.kind == .regex { fail(at + ".rewrite.prefix", "needs a prefix or exact path match") }
        case .regex(let pattern, let substitution):
            rewrite = .regex
            rewriteRegex = regex(pattern, ignoreCase: false, at + ".rewrite.regex") ?? 0
            if let e = RouteSyntax.substitution(substitution, regex: pattern) { fail(at + ".rewrite.substitution", e) }
            (rewriteText, rewriteGroups) = parseSubstitution(substitution)
        case nil: break
        }
        let requestHeaders = action == .forward ? headerMutations(r.requestHeaders, at + ".request_headers") : .empty
        let responseHeaders = headerMutations(r.responseHeaders, at + ".response_headers")
        matchers.append(matcher)
        if case .forward(let f) = r.action {
            retryPolicies.append(f.retry); faults.append(f.fault); rateLimits.append(f.rateLimit); grpcWeb.append(f.grpcWeb)
        } else {
            retryPolicies.append(nil); faults.append(nil); rateLimits.append(nil); grpcWeb.append(nil)
        }
        routes.append(RouteTable.Route(
            action: action, timeout: timeout, requestTimeout: requestTimeout, status: status, backends: backendSpan, total: total,
            hashHeader: hashHeader, hashCookie: hashCookie, mirrorCluster: mirror?.cluster ?? -1,
            mirrorPerMillion: mirrorPerMillion, rewrite: rewrite, rewriteText: rewriteText, rewriteRegex: rewriteRegex,
            rewriteGroups: rewriteGroups, scheme: scheme, host: host, stripQuery: stripQuery, body: body,
            requestHeaders: requestHeaders, responseHeaders: responseHeaders,
            upgradeWebSocket: { if case .forward(let f) = r.action { return f.upgrade.contains(.websocket) }; return false }(),
            grpcWeb: { if case .forward(let f) = r.action { return f.grpcWeb != nil }; return false }()))
        info.append(RouteTable.RouteInfo(name: r.name, virtualHost: virtualHost, backends: backendInfo, mirror: mirror))
    }

    mutating func matcher(_ m: RouteMatch, _ at: String) -> Matcher {
        var out = Matcher(kind: .prefix, ignoreCase: false, literal: .empty, regex: 0, methods: .empty, conditions: .empty)
        let first = conditions.count
        var literal: [UInt8] = []
        if let g = m.grpc {
            out.kind = g.method == nil ? .prefix : .exact
            literal = Array("/\(g.service)/\(g.method ?? "")".utf8)
            conditions.append(Condition(op: .grpc, query: false, ignoreCase: true, invert: false,
                                        name: add(Array("content-type".utf8)), value: add(Array("application/grpc".utf8))))
        } else {
            let p = m.path
            out.ignoreCase = p.ignoreCase
            switch p.kind {
            case .prefix, .exact:
                out.kind = p.kind == .prefix ? .prefix : .exact
                literal = p.ignoreCase ? Bytes.lower(p.value) : Array(p.value.utf8)
            case .regex:
                out.kind = .regex
                out.regex = regex(p.value, ignoreCase: p.ignoreCase, at + ".match.path.regex") ?? 0
                // Every match lies between RE2's bounds min and max, so it starts with their common
                // prefix (cut before any non-ASCII byte, where RE2's UTF-8 handling starts; and
                // before any letter when ignoring case, whose bounds differ in case anyway).
                if let (lo, hi) = regexes.indices.contains(out.regex) ? Regex.range(regexes[out.regex]) : nil {
                    literal = Array(zip(lo, hi).prefix { $0 == $1 && $0 < 0x80 }.map(\.0))
                    if p.ignoreCase { literal = Array(literal.prefix { Bytes.lower($0) &- 0x61 >= 26 }) }
                }
            }
        }
        out.literal = add(literal)
        var screen = Screen(head: 0, mask: 0, length: Int32(literal.count), exact: out.kind == .exact, ignoreCase: out.ignoreCase)
        literal.withUnsafeBytes { screen.head = Bytes.head($0) }
        screen.mask = literal.count >= 8 ? ~0 : (1 << (8 * UInt64(literal.count))) - 1
        screens.append(screen)
        out.methods.start = methods.count
        for method in m.methods { methods.append(add(Array(method.utf8))) }
        out.methods.count = m.methods.count
        for f in m.headers { condition(f, query: false, at + ".match.headers") }
        for f in m.queryParameters { condition(f, query: true, at + ".match.query") }
        out.conditions = Span(start: first, count: conditions.count - first)
        switch m.principal {
        case .exact(let s)?: out.principalKind = 1; out.principal = add(Array(s.utf8))
        case .prefix(let s)?: out.principalKind = 2; out.principal = add(Array(s.utf8))
        case .any?: out.principalKind = 2; out.principal = .empty   // any identity at all
        case nil: break
        }
        return out
    }

    mutating func condition(_ f: FieldMatch, query: Bool, _ at: String) {
        var c = Condition(op: .present, query: query, ignoreCase: f.ignoreCase, invert: f.invert,
                          name: add(query ? Array(f.name.utf8) : Bytes.lower(f.name)), value: .empty)
        let text = { (s: String) in f.ignoreCase ? Bytes.lower(s) : Array(s.utf8) }
        switch f.value {
        case .present: c.op = .present
        case .absent: c.op = .absent
        case .exact(let s): c.op = .exact; c.value = add(text(s))
        case .prefix(let s): c.op = .prefix; c.value = add(text(s))
        case .suffix(let s): c.op = .suffix; c.value = add(text(s))
        case .contains(let s): c.op = .contains; c.value = add(text(s))
        case .regex(let s): c.op = .regex; c.value.start = regex(s, ignoreCase: f.ignoreCase, at + ".\(f.name).regex") ?? 0
        }
        conditions.append(c)
    }

    mutating func headerMutations(_ h: HeaderRewrite, _ at: String) -> Span {
        let first = mutations.count
        for name in h.remove { mutations.append((.remove, add(Bytes.lower(name)), .empty)) }
        for (op, list) in [(RouteTable.HeaderMutation.Op.set, h.set), (.add, h.add)] {
            for v in list {
                if let e = RouteSyntax.mutableHeaderName(v.name) ?? RouteSyntax.headerValue(v.value) { fail(at + ".\(v.name)", e) }
                mutations.append((op, add(Bytes.lower(v.name)), add(Array(v.value.utf8))))
            }
        }
        return Span(start: first, count: mutations.count - first)
    }

    /// `\N` becomes group N, `\\` a backslash, the rest literal; returns the pieces and the groups
    /// a search must capture (1 + the highest referenced).
    mutating func parseSubstitution(_ s: String) -> (Span, Int) {
        let first = pieces.count
        var groups = 1, literal: [UInt8] = [], escaped = false
        for c in s.utf8 {
            if escaped, c &- 0x30 < 10 {
                if !literal.isEmpty { pieces.append(Piece(group: -1, text: add(literal))); literal = [] }
                pieces.append(Piece(group: Int(c - 0x30), text: .empty))
                groups = max(groups, Int(c - 0x30) + 1)
            } else if !escaped && c == 0x5C {
                escaped = true
                continue
            } else {
                literal.append(c)
            }
            escaped = false
        }
        if !literal.isEmpty { pieces.append(Piece(group: -1, text: add(literal))) }
        return (Span(start: first, count: pieces.count - first), groups)
    }

    /// Compiles into `regexes` and returns its index; nil after reporting a failure.
    mutating func regex(_ pattern: String, ignoreCase: Bool, _ at: String) -> Int? {
        switch Regex.compile(pattern, ignoreCase: ignoreCase) {
        case .success(let re): regexes.append(re); return regexes.count - 1
        case .failure(let e): fail(at, e.message); return nil
        }
    }

    mutating func cluster(_ name: String, _ at: String) -> Int {
        if let i = clusters[name] { return i }
        fail(at, "cluster \"\(name)\" is not defined")
        return -1
    }

    /// The arena span of `b`; equal strings share one (header lookups are remembered by offset).
    mutating func add(_ b: [UInt8]) -> Span {
        if let s = interned[b] { return s }
        bytes += b
        let s = Span(start: bytes.count - b.count, count: b.count)
        interned[b] = s
        return s
    }

    mutating func fail(_ path: String, _ message: String) {
        errors.append(ConfigError(file: "", line: 0, path: path, message: message))
    }
}
