import RemoraCore
import RemoraHTTP
import RemoraPolicy
import RemoraRouting

/// A listener's authorization, compiled once per snapshot (`Authorizer`, RemoraPolicy) and shared
/// read-only by the workers: the listener's policy and its routes' (by route index of the
/// listener's table), and the stat slot of every rule (`authz.<listener>.<rule>`, a route's rules
/// `authz.<listener>.<route>.<rule>`).
final class ListenerAuthorization: @unchecked Sendable {   // immutable
    let listener: Authorizer?
    /// By route index; empty when no route has a policy.
    let routes: [Authorizer?]
    /// Stat slot of rule 0 of `routes[i]` (the listener's rules come first, from slot 0).
    let routeBase: [Int]
    /// Per slot: the stat name under `authz.<listener>.`.
    let slotNames: [String]
    let needsPrincipal: Bool
    let needsSource: Bool
    let needsServerName: Bool
    let needsPort: Bool

    /// nil when neither the listener nor any of its routes has a policy.
    init?(_ l: ListenerConfig) throws {
        guard l.hasAuthorization else { return nil }
        var listener: Authorizer?
        if let p = l.authorization { listener = try Authorizer(p) }
        var names = listener?.ruleNames ?? []
        var routes: [Authorizer?] = [], bases: [Int] = []
        let all = l.virtualHosts.flatMap(\.routes)
        if all.contains(where: { $0.authorization != nil }) {
            for r in all {
                bases.append(names.count)
                var a: Authorizer?
                if let p = r.authorization { a = try Authorizer(p) }
                routes.append(a)
                names += (a?.ruleNames ?? []).map { "\(r.name).\($0)" }
            }
        }
        self.listener = listener; self.routes = routes; routeBase = bases; slotNames = names
        let every = [listener] + routes
        needsPrincipal = every.contains { $0?.needsPrincipal ?? false }
        needsSource = every.contains { $0?.needsSource ?? false }
        needsServerName = every.contains { $0?.needsServerName ?? false }
        needsPort = every.contains { $0?.needsPort ?? false }
    }
}

/// A request as the authorizer reads it: the view's fields (the path normalized, without the
/// query), the peer's identity, address and SNI.
struct HTTPAuthorizationInput: AuthorizationRequest {
    let view: RequestView
    let path: UnsafeRawBufferPointer
    let source: IPAddress?
    let serverName: UnsafeRawBufferPointer?

    var method: UnsafeRawBufferPointer { view.method }
    var authority: UnsafeRawBufferPointer { view.authority }
    var principal: UnsafeRawBufferPointer? { view.principal.count > 0 ? view.principal : nil }
    var headerCount: Int { view.headers.count }
    func headerName(_ i: Int) -> UnsafeRawBufferPointer { view.headers[i].name }
    func headerValue(_ i: Int) -> UnsafeRawBufferPointer { view.headers[i].value }
}

/// A connection as the authorizer reads it (tcp and tls listeners): no request, only the peer.
struct ConnectionAuthorizationInput: AuthorizationRequest {
    let principal: UnsafeRawBufferPointer?
    let source: IPAddress?
    let serverName: UnsafeRawBufferPointer?
    var destinationPort: Int = -1
    var method: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }
    var path: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }
    var authority: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }
    var headerCount: Int { 0 }
    func headerName(_ i: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }
    func headerValue(_ i: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: nil, count: 0) }
}

/// Authorization (`authorization:` on a listener or a route), as Envoy's RBAC filter: the listener's
/// policy, then the matched route's (both must allow). A denied request is answered 403 "RBAC:
/// access denied" (gRPC: PERMISSION_DENIED, trailers-only), flagged `UAEX` in the access log and
/// Istio's metrics, and counted (`rbac_denied`, and on the rule that denied it). First among the
/// resilience filters: a denied request spends no rate-limit token and meets no injected fault.
/// One per listener and worker, present only when the listener or one of its routes has a policy.
final class AuthorizationFilter: HTTPFilter {
    /// The listener's policy, and its routes' by route index (empty when none has one).
    let listenerPolicy: Authorizer?
    let routePolicies: [Authorizer?]
    let routeBase: [Int]
    let needsSource: Bool
    let needsServerName: Bool
    let stats: StatBlock<ListenerStat>
    /// By rule slot.
    let rules: [StatBlock<AuthzRuleStat>]

    init(_ authz: ListenerAuthorization, stats: StatBlock<ListenerStat>, rules: [StatBlock<AuthzRuleStat>]) {
        listenerPolicy = authz.listener; routePolicies = authz.routes; routeBase = authz.routeBase
        needsSource = authz.needsSource; needsServerName = authz.needsServerName
        self.stats = stats; self.rules = rules
    }

    func requestHeaders(_ e: Exchange, _ request: RequestView) -> FilterVerdict {
        let t = request.target
        var end = 0
        if let p = t.baseAddress {
            while end < t.count {
                let c = p.load(fromByteOffset: end, as: UInt8.self)
                if c == 0x3F || c == 0x23 { break }
                end += 1
            }
        }
        let path = UnsafeRawBufferPointer(start: t.baseAddress, count: end)
        let source = needsSource ? e.downstream?.sourceAddress : nil
        let allowed: Bool
        if needsServerName, var sni = e.downstream?.transportConnection?.serverName {
            allowed = sni.withUTF8 { s in
                decide(e, HTTPAuthorizationInput(view: request, path: path, source: source, serverName: UnsafeRawBufferPointer(s)))
            }
        } else {
            allowed = decide(e, HTTPAuthorizationInput(view: request, path: path, source: source, serverName: nil))
        }
        if allowed { return .next }
        e.observe.flags.insert(.UAEX)
        return .reply(LocalReply(.accessDenied, status: 403, grpcStatus: 7))
    }

    /// The listener's policy, then the route's; counts the outcome.
    @inline(__always)
    func decide(_ e: Exchange, _ input: HTTPAuthorizationInput) -> Bool {
        if let a = listenerPolicy, !check(a, base: 0, input) { return false }
        let ri = e.routeIndex
        if ri >= 0 && ri < routePolicies.count, let a = routePolicies[ri], !check(a, base: routeBase[ri], input) {
            return false
        }
        stats.inc(.rbac_allowed)
        return true
    }

    @inline(__always)
    func check(_ a: Authorizer, base: Int, _ input: HTTPAuthorizationInput) -> Bool {
        let d = a.decide(input)
        if d.rule >= 0 { rules[base + d.rule].inc(d.allowed ? .allowed : .denied) }
        if !d.allowed { stats.inc(.rbac_denied) }
        return d.allowed
    }

    /// A request without a route (a TCP listener's connection, a CONNECT): the listener's policy
    /// alone decides (counted); false = refuse it.
    static func admit<R: AuthorizationRequest>(_ authz: ListenerAuthorization, _ c: R, stats: StatBlock<ListenerStat>,
                                               rules: [StatBlock<AuthzRuleStat>]) -> Bool {
        guard let a = authz.listener else { return true }
        let d = a.decide(c)
        if d.rule >= 0 && d.rule < rules.count { rules[d.rule].inc(d.allowed ? .allowed : .denied) }
        stats.inc(d.allowed ? .rbac_allowed : .rbac_denied)
        return d.allowed
    }
}
