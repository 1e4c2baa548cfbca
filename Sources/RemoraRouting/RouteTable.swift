import RemoraCore
import RemoraPolicy

/// A listener's virtual hosts and routes, compiled once per config and shared read-only by every
/// worker. `match` picks the virtual host by authority, then the first route of that host whose
/// conditions all hold; the route's actions are then read from this table by route index.
///
/// Stored flat: every element is a trivial value in memory allocated once by `init` and freed by
/// `deinit` (strings live in one byte arena and are referred to by offset), so matching, picking a
/// backend and applying actions copy no reference-counted value and allocate nothing. Pointers
/// handed out (`HeaderMutation`, `body`) stay valid as long as the table.
public final class RouteTable: @unchecked Sendable {   // immutable after init; RE2 objects are thread-safe
    // MARK: Public values

    /// What a matched route does; trivial, read on every request.
    public struct Route {
        public enum Action: UInt8, Sendable {
            /// Proxy to a backend: `pick`, `rewriteTarget`, `requestHeaders`, `mirror`, `timeout`.
            case forward
            /// Answer `status` with `writeLocation`.
            case redirect
            /// Answer `status` with `body`.
            case respond
        }
        public let action: Action
        /// Forward: time allowed for the upstream's response head, ms; 0 = none.
        public let timeout: Millis
        /// Forward: the route's own request timeout, ms (0 = none); `UInt64.max` = the listener's.
        public let requestTimeout: Millis
        /// Redirect: 301, 302, 303, 307 or 308. Respond: 200 ... 599. Forward: 0.
        public let status: Int
        let backends: Span          // into `backends`; empty unless forward
        let total: UInt64           // sum of the weights, > 0 when forward
        let hashHeader: Span        // sticky key: header name (lowercase), or "cookie"; empty = not sticky
        let hashCookie: Span        // cookie name when the key is a cookie, else empty
        let mirrorCluster: Int      // -1 = no mirror
        let mirrorPerMillion: UInt64
        let rewrite: Rewrite
        let rewriteText: Span       // .path/.prefix: replacement bytes; .regex: range of `pieces`
        let rewriteRegex: Int       // .regex: index in `regexes`
        let rewriteGroups: Int      // .regex: groups to capture (1 + highest referenced group)
        let scheme: Span            // redirect; empty = keep
        let host: Span              // redirect; empty = keep
        let stripQuery: Bool
        let body: Span              // respond
        let requestHeaders: Span    // into `mutations`
        let responseHeaders: Span   // into `mutations`
        /// Forward: `Upgrade: websocket` requests are forwarded as upgrades (`upgrade:`, issue 18).
        public let upgradeWebSocket: Bool
        /// Forward: gRPC-Web requests are translated (`grpc_web:`; its settings in `grpcWeb`).
        public let grpcWeb: Bool
    }

    /// One backend of a forward route: the cluster (index in the snapshot's clusters) and its slot,
    /// a number 0 ..< `backendCount` unique over the table (per-backend counters).
    public struct Backend: Sendable, Equatable {
        public let cluster: Int
        public let slot: Int
        let upper: UInt64           // end of this backend's range in [0, total)
    }

    /// A header change; `name` is lowercase; `value` is empty for `.remove`.
    public struct HeaderMutation {
        public enum Op: UInt8, Sendable { case remove, set, add }
        public let op: Op
        public let name: UnsafeRawBufferPointer
        public let value: UnsafeRawBufferPointer
    }

    /// Names and backends of a route, for stat names (`route.<listener>.<route>.<cluster>.…`) and logs.
    public struct RouteInfo: Sendable {
        public let name: String
        public let virtualHost: String
        /// Forward routes: the backends in config order. Others: empty.
        public let backends: [BackendInfo]
        /// The shadow cluster's index and name, when the route mirrors.
        public let mirror: (cluster: Int, name: String)?
    }

    public struct BackendInfo: Sendable, Equatable {
        public let slot: Int
        public let cluster: Int
        public let clusterName: String
        public let weight: UInt32
    }

    /// By route index, as returned by `match`. Not for the hot path (strings).
    public let info: [RouteInfo]
    /// Backend slots over all routes.
    public let backendCount: Int

    // MARK: Storage (trivial elements, allocated once)

    let bytes: UnsafeMutableRawBufferPointer            // every string, by `Span`
    let domains: UnsafeMutableBufferPointer<Domain>     // most specific first
    let hosts: UnsafeMutableBufferPointer<Span>         // per virtual host: its routes
    let screens: UnsafeMutableBufferPointer<Screen>     // per route
    let matchers: UnsafeMutableBufferPointer<Matcher>   // per route
    let routes: UnsafeMutableBufferPointer<Route>       // per route
    let conditions: UnsafeMutableBufferPointer<Condition>
    let methods: UnsafeMutableBufferPointer<Span>
    let backends: UnsafeMutableBufferPointer<Backend>
    let pieces: UnsafeMutableBufferPointer<Piece>
    let mutations: UnsafeMutableBufferPointer<HeaderMutation>
    let regexes: UnsafeMutableBufferPointer<OpaquePointer>

    /// Compiles the listener's virtual hosts. `clusters` maps a cluster name to its index in the
    /// snapshot. Throws every problem found (invalid regex or domain, unknown cluster), for
    /// configs that did not come through `ConfigLoader`, which reports the same problems with lines.
    public init(_ listener: ListenerConfig, clusters: [String: Int]) throws(ConfigErrors) {
        var c = Compiler(listener: listener.name, clusters: clusters)
        c.compile(listener.virtualHosts)
        guard c.errors.isEmpty else {
            c.regexes.forEach(Regex.free)
            throw ConfigErrors(c.errors)
        }
        bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: max(c.bytes.count, 1), alignment: 8)
        bytes.copyBytes(from: c.bytes)
        domains = freeze(c.domains)
        hosts = freeze(c.hosts)
        screens = freeze(c.screens)
        matchers = freeze(c.matchers)
        routes = freeze(c.routes)
        conditions = freeze(c.conditions)
        methods = freeze(c.methods)
        backends = freeze(c.backends)
        pieces = freeze(c.pieces)
        regexes = freeze(c.regexes)
        let base = UnsafeRawPointer(bytes.baseAddress!)
        mutations = freeze(c.mutations.map { m in
            HeaderMutation(op: m.op, name: UnsafeRawBufferPointer(start: base + m.name.start, count: m.name.count),
                           value: UnsafeRawBufferPointer(start: base + m.value.start, count: m.value.count))
        })
        info = c.info
        matchesPrincipal = c.matchers.contains { $0.principalKind != 0 }
        retryPolicies = c.retryPolicies
        faults = c.faults
        rateLimits = c.rateLimits
        grpcWeb = c.grpcWeb
        backendCount = c.backends.count
    }

    deinit {
        regexes.forEach(Regex.free)
        bytes.deallocate()
        domains.deallocate(); hosts.deallocate(); screens.deallocate(); matchers.deallocate(); routes.deallocate()
        conditions.deallocate(); methods.deallocate(); backends.deallocate(); pieces.deallocate()
        mutations.deallocate(); regexes.deallocate()
    }

    /// Routes over all virtual hosts.
    public var count: Int { routes.count }

    /// Some route matches on the peer identity (`match.principal`): the caller fills
    /// `RequestView.principal` before `match` (only then).
    public let matchesPrincipal: Bool

    /// Per route: its retry policy (nil: none). Read only by requests of routes that have one.
    let retryPolicies: [RetryPolicy?]

    /// Per route: fault injection and the local rate limit (nil: none). Read by the listener's fault
    /// and rate-limit filters, which exist only when some route of the listener has one.
    public let faults: [FaultPolicy?]
    public let rateLimits: [RateLimitPolicy?]
    /// Per route: gRPC-Web settings (nil: off). Read only for routes whose `Route.grpcWeb` is set.
    public let grpcWeb: [GRPCWebConfig?]

    /// The route's retry policy, nil when it has none (cheap: no copy unless there is one).
    @inline(__always)
    public func retryPolicy(route: Int) -> RetryPolicy? { retryPolicies[route] }

    @inline(__always)
    public subscript(route: Int) -> Route { routes[route] }

    // MARK: Matching

    /// Index of the route the request goes to, or nil (no virtual host for its authority, or no
    /// route of that host matches): the proxy answers 404, or gRPC UNIMPLEMENTED.
    @inline(__always)
    public func match(_ r: RequestView) -> Int? {
        guard let host = virtualHost(r.authority) else { return nil }
        let path = Bytes.path(r.target)
        let head = Bytes.head(path), lowerHead = Bytes.lower(word: head)
        let span = hosts[host]
        var seen = Seen()
        var i = span.start
        // Most routes fail the screen (a masked compare of the path's first 8 bytes and a length
        // check), a short loop over 24-byte entries that predicts well; the rest is checked in full.
        while i < span.start + span.count {
            let s = screens[i]
            if (s.ignoreCase ? lowerHead : head) & s.mask == s.head && (s.exact ? path.count == s.length : path.count >= s.length)
                && matches(matchers[i], path, r, &seen) {
                return i
            }
            i += 1
        }
        return nil
    }

    /// The virtual host for an authority: the first domain pattern it satisfies, most specific first.
    @inline(__always)
    func virtualHost(_ authority: UnsafeRawBufferPointer) -> Int? {
        let (host, port) = Bytes.splitAuthority(authority)
        for d in domains where d.port < 0 || d.port == port {
            switch d.kind {
            case .exact: if host.count == d.host.count && same(host, at: 0, d.host, ignoreCase: true) { return d.virtualHost }
            case .suffix:
                if host.count > d.host.count && same(host, at: host.count - d.host.count, d.host, ignoreCase: true) {
                    return d.virtualHost
                }
            case .any: return d.virtualHost
            }
        }
        return nil
    }

    /// The rest of a route's conditions, once its screen passed.
    @inline(__always)
    func matches(_ m: Matcher, _ path: UnsafeRawBufferPointer, _ r: RequestView, _ seen: inout Seen) -> Bool {
        let n = m.literal.count
        if n > 8 && !Bytes.equal(path.baseAddress! + 8, bytes.baseAddress! + m.literal.start + 8, n - 8, ignoreCase: m.ignoreCase) {
            return false
        }
        if m.kind == .regex && !Regex.fullMatch(regexes[m.regex], path) { return false }
        if m.principalKind != 0 {
            let p = r.principal, n = m.principal.count
            guard p.count > 0, m.principalKind == 1 ? p.count == n : p.count >= n, same(p, at: 0, m.principal, ignoreCase: false)
            else { return false }
        }
        if m.methods.count > 0 && !methods[m.methods.range].contains(where: { r.method.count == $0.count && same(r.method, at: 0, $0, ignoreCase: false) }) {
            return false
        }
        for c in conditions[m.conditions.range] where !holds(c, r, &seen) { return false }
        return true
    }

    /// A header or query condition. A value test holds when any occurrence of the name passes it.
    @inline(__always)
    func holds(_ c: Condition, _ r: RequestView, _ seen: inout Seen) -> Bool {
        var found = false
        if c.query {
            let q = Bytes.query(r.target)
            var i = 0
            while i < q.count && !found {
                var end = i, eq = i
                while end < q.count && q[end] != 0x26 { end += 1 }              // '&'
                while eq < end && q[eq] != 0x3D { eq += 1 }                     // '='
                if eq - i == c.name.count && same(q, at: i, c.name, ignoreCase: false) {
                    found = c.op.isPresence || test(c, UnsafeRawBufferPointer(rebasing: q[min(eq + 1, end)..<end]))
                }
                i = end + 1
            }
        } else if c.name.count == 4 && text(c.name).equalsLowercase("host") {
            // Host is the authority: the Host header over HTTP/1.1, `:authority` over HTTP/2.
            found = r.authority.count > 0 && (c.op.isPresence || test(c, r.authority))
        } else {
            if seen.name != c.name.start { seen = locate(c.name, r.headers) }
            let (first, last) = (seen.first, seen.last)
            found = first >= 0 && c.op.isPresence
            var j = first
            while j >= 0 && j <= last && !found {
                let h = r.headers[j]
                found = h.name.count == c.name.count && same(h.name, at: 0, c.name, ignoreCase: true) && test(c, h.value)
                j += 1
            }
        }
        return (c.op == .absent ? !found : found) != c.invert
    }

    /// First and last index of the header named `name`.
    @inline(__always)
    func locate(_ name: Span, _ headers: UnsafeBufferPointer<HeaderRef>) -> Seen {
        var seen = Seen(name: name.start, first: -1, last: -1)
        for (j, h) in headers.enumerated() where h.name.count == name.count && same(h.name, at: 0, name, ignoreCase: true) {
            if seen.first < 0 { seen.first = j }
            seen.last = j
        }
        return seen
    }

    @inline(__always)
    func test(_ c: Condition, _ v: UnsafeRawBufferPointer) -> Bool {
        let n = c.value.count
        switch c.op {
        case .present, .absent: return true
        case .exact: return v.count == n && same(v, at: 0, c.value, ignoreCase: c.ignoreCase)
        case .prefix: return v.count >= n && same(v, at: 0, c.value, ignoreCase: c.ignoreCase)
        case .suffix: return v.count >= n && same(v, at: v.count - n, c.value, ignoreCase: c.ignoreCase)
        case .contains: return Bytes.contains(v, bytes.baseAddress! + c.value.start, n, ignoreCase: c.ignoreCase)
        case .regex: return Regex.fullMatch(regexes[c.value.start], v)
        case .grpc:   // "application/grpc", optionally followed by "+format" or ";params"
            return v.count >= n && same(v, at: 0, c.value, ignoreCase: true) && (v.count == n || v[n] == 0x2B || v[n] == 0x3B)
        }
    }

    // MARK: Arena access

    /// a[offset ..< offset + s.count] equals the arena bytes of `s`; the caller checked the length.
    @inline(__always)
    func same(_ a: UnsafeRawBufferPointer, at offset: Int, _ s: Span, ignoreCase: Bool) -> Bool {
        s.count == 0 || Bytes.equal(a.baseAddress! + offset, bytes.baseAddress! + s.start, s.count, ignoreCase: ignoreCase)
    }

    @inline(__always)
    func text(_ s: Span) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: bytes.baseAddress! + s.start, count: s.count) }

}

// MARK: Compiled elements

/// A range in one of the table's arrays (bytes, conditions, …).
struct Span {
    var start: Int
    var count: Int
    static let empty = Span(start: 0, count: 0)
    var range: Range<Int> { start..<start + count }
}

/// The last header lookup of one `match`, so that routes asking about the same header (x-tenant,
/// x-canary, content-type) scan the request's headers once. Names are interned in the arena: a
/// name is its offset.
struct Seen {
    var name = -1                   // arena offset of the name; -1 = nothing yet
    var first = -1                  // first and last index of that header, -1 when absent
    var last = -1
}

/// A route's first test: the path's length and first 8 bytes against its literal.
struct Screen {
    var head: UInt64                // the literal's first 8 bytes, little-endian, zero-padded
    var mask: UInt64                // covers min(8, literal.count) bytes
    var length: Int32               // of the literal: the path's minimum (exact: its) length
    var exact: Bool
    var ignoreCase: Bool
}

/// The request-independent part of a route's conditions.
struct Matcher {
    enum Kind: UInt8 { case prefix, exact, regex }
    var kind: Kind
    var ignoreCase: Bool            // of the path (lowercase literal, folded request)
    /// What the path starts with: prefix/exact: the whole literal; regex: the prefix every match
    /// has (from RE2's bounds on its matches), checked before RE2 runs.
    var literal: Span
    var regex: Int                  // index in `regexes`
    var methods: Span               // into `methods`; empty = any
    var conditions: Span            // into `conditions`, all must hold
    var principalKind: UInt8 = 0    // 0 none, 1 exact, 2 prefix (`match.principal`)
    var principal = Span.empty
}

struct Condition {
    enum Op: UInt8 {
        case present, absent, exact, prefix, suffix, contains, regex
        case grpc                   // content-type is gRPC
        var isPresence: Bool { self == .present || self == .absent }
    }
    var op: Op
    var query: Bool                 // a query parameter, else a header
    var ignoreCase: Bool            // of the value
    var invert: Bool
    var name: Span                  // header: lowercase
    var value: Span                 // regex: start = regex index
}

struct Domain {
    enum Kind: UInt8 { case exact, suffix, any }
    var kind: Kind
    var host: Span                  // lowercase; suffix: without the "*"
    var port: Int                   // -1 = any
    var virtualHost: Int
}

/// A regex substitution, parsed: literal bytes (group < 0) or a capture group.
struct Piece {
    var group: Int
    var text: Span
}

enum Rewrite: UInt8 { case none, path, prefix, regex }

private func freeze<T>(_ a: [T]) -> UnsafeMutableBufferPointer<T> {
    let p = UnsafeMutableBufferPointer<T>.allocate(capacity: max(a.count, 1))
    _ = p.initialize(from: a)
    return UnsafeMutableBufferPointer(start: p.baseAddress, count: a.count)
}
