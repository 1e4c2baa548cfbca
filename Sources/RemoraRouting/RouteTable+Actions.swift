import RemoraCore
import RemoraPolicy

/// What the proxy does with a matched route, as pure functions of the table, the route index and
/// the request. Only the proxy sends anything.
extension RouteTable {
    /// Forward routes only: the backend for this request. Sticky routes hash the key (header or
    /// cookie value) when the request has a non-empty one; otherwise `random` decides. The point
    /// chosen in [0, Σweights) falls in one backend's range, ranges laid out in config order.
    @inline(__always)
    public func pick(route i: Int, request r: RequestView, random: UInt64) -> Backend {
        let route = routes[i]
        precondition(route.total > 0, "pick(route:) on a route that does not forward")
        if route.backends.count == 1 { return backends[route.backends.start] }
        var x = random
        if route.hashHeader.count > 0, let key = stickyKey(route, r) { x = Bytes.stickyHash(key) }
        let point = Bytes.scale(x, route.total)
        var b = route.backends.start
        while backends[b].upper <= point { b += 1 }
        return backends[b]
    }

    /// The sticky key of a request: the first non-empty value of the header, or of the cookie.
    @inline(__always)
    func stickyKey(_ route: Route, _ r: RequestView) -> UnsafeRawBufferPointer? {
        for h in r.headers where h.name.count == route.hashHeader.count && same(h.name, at: 0, route.hashHeader, ignoreCase: true) {
            if route.hashCookie.count == 0 {
                if h.value.count > 0 { return h.value }
                continue
            }
            // Cookie: "a=1; b=2"; HTTP/2 may split it over several headers.
            if let v = Bytes.cookie(in: h.value, named: text(route.hashCookie)) { return v }
        }
        return nil
    }

    /// Forward routes: the shadow cluster to send a copy of this request to, or nil (no mirror, or
    /// this request is not in the mirrored share). `random` uniform in UInt64.
    @inline(__always)
    public func mirror(route i: Int, random: UInt64) -> Int? {
        let route = routes[i]
        return route.mirrorCluster >= 0 && Bytes.scale(random, 1_000_000) < route.mirrorPerMillion ? route.mirrorCluster : nil
    }

    /// Forward routes: appends the target to send upstream (rewritten path, then the original
    /// "?query") and returns true; returns false, appending nothing, when the route does not
    /// rewrite (send the target as received). An absolute-form target comes out in origin form.
    public func rewriteTarget(route i: Int, target: UnsafeRawBufferPointer, into out: inout ByteBuffer) -> Bool {
        if routes[i].rewrite == .none { return false }   // (before the scan for "?": most routes do not rewrite)
        let path = Bytes.path(target)
        guard writePath(route: i, path, into: &out) else { return false }
        out.append(Bytes.rest(target, after: path))
        return true
    }

    /// Redirect routes: appends the Location value: scheme (the route's, else `scheme`, the one the
    /// request came with), authority (the route's host, else the request's, without its port when
    /// the route changes the scheme), the path (rewritten if the route rewrites) and the query
    /// (unless the route strips it).
    public func writeLocation(route i: Int, request r: RequestView, scheme: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        let route = routes[i]
        let host = route.host.count > 0 ? text(route.host)
            : (route.scheme.count > 0 ? Bytes.splitAuthority(r.authority).host : r.authority)
        if host.count > 0 {   // no host known (HTTP/1.0 without Host): a relative reference
            out.append(route.scheme.count > 0 ? text(route.scheme) : scheme)
            out.append("://")
            out.append(host)
        }
        let path = Bytes.path(r.target)
        if !writePath(route: i, path, into: &out) { out.append(path) }
        if !route.stripQuery { out.append(Bytes.rest(r.target, after: path)) }
    }

    /// Respond routes: the body (valid as long as the table).
    public func body(route i: Int) -> UnsafeRawBufferPointer { text(routes[i].body) }

    /// Forward routes: changes to the request headers sent upstream.
    public func requestHeaders(route i: Int) -> HeaderMutations { mutationList(routes[i].requestHeaders) }

    /// Changes to the response headers sent downstream (any action).
    public func responseHeaders(route i: Int) -> HeaderMutations { mutationList(routes[i].responseHeaders) }

    @inline(__always)
    func mutationList(_ s: Span) -> HeaderMutations {
        HeaderMutations(items: UnsafeBufferPointer(rebasing: mutations[s.range]))
    }

    /// Appends the rewritten path; false when the route does not rewrite.
    func writePath(route i: Int, _ path: UnsafeRawBufferPointer, into out: inout ByteBuffer) -> Bool {
        let route = routes[i]
        switch route.rewrite {
        case .none: return false
        case .path: out.append(text(route.rewriteText))
        case .prefix:   // replaces what the prefix (or exact) match covered
            out.append(text(route.rewriteText))
            out.append(UnsafeRawBufferPointer(rebasing: path[min(matchers[i].literal.count, path.count)...]))
        case .regex: replaceAll(regexes[route.rewriteRegex], groups: route.rewriteGroups, route.rewriteText, path, into: &out)
        }
        return true
    }

    /// Every match of `re` in `text` replaced by the substitution `subst` (RE2's GlobalReplace:
    /// an empty match right after the previous match is skipped).
    func replaceAll(_ re: OpaquePointer, groups: Int, _ subst: Span, _ text: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * groups) { spans in
            var p = 0, lastEnd = -1
            while p <= text.count && Regex.search(re, text, from: p, spans) {
                let start = spans[0], end = spans[1]
                if p < start { out.append(UnsafeRawBufferPointer(rebasing: text[p..<start])) }
                if start == end && start == lastEnd {   // step over one UTF-8 character
                    guard p < text.count else { break }
                    var n = 1
                    while p + n < text.count && text[p + n] & 0xC0 == 0x80 { n += 1 }
                    out.append(UnsafeRawBufferPointer(rebasing: text[p..<(p + n)]))
                    p += n
                    continue
                }
                for piece in pieces[subst.range] {
                    if piece.group < 0 {
                        out.append(self.text(piece.text))
                    } else if spans[2 * piece.group] >= 0 {
                        out.append(UnsafeRawBufferPointer(rebasing: text[spans[2 * piece.group]..<spans[2 * piece.group + 1]]))
                    }
                }
                p = end
                lastEnd = end
            }
            if p < text.count { out.append(UnsafeRawBufferPointer(rebasing: text[p...])) }
        }
    }
}

/// A route's header changes, as the proxy applies them to one header list: every header whose
/// name a remove or a set names is dropped, then each set and add is appended, in config order.
public struct HeaderMutations {
    public let items: UnsafeBufferPointer<RouteTable.HeaderMutation>

    /// No changes.
    public init() { items = UnsafeBufferPointer(start: nil, count: 0) }

    init(items: UnsafeBufferPointer<RouteTable.HeaderMutation>) { self.items = items }

    public var isEmpty: Bool { items.isEmpty }

    /// An incoming header of this name (any case) must be dropped.
    @inline(__always)
    public func drops(_ name: UnsafeRawBufferPointer) -> Bool {
        items.contains { m in
            m.op != .add && m.name.count == name.count
                && (name.count == 0 || Bytes.equal(name.baseAddress!, m.name.baseAddress!, name.count, ignoreCase: true))
        }
    }

    /// Calls `emit` for each header of the result: the kept ones of `headers` in order, then the
    /// appended ones.
    @inline(__always)
    public func apply(to headers: UnsafeBufferPointer<HeaderRef>,
                      _ emit: (_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) -> Void) {
        for h in headers where !drops(h.name) { emit(h.name, h.value) }
        for m in items where m.op != .remove { emit(m.name, m.value) }
    }
}
