import Testing
import RemoraCore
import RemoraPolicy
@testable import RemoraConfig

/// `authorization:`, `path_normalization:`, `max_connections:` and `match.principal`.
@Suite struct SecurityConfigTests {
    func parse(listener: String, route: String = "", top: String = "", proto: String = "http") -> Result<Config, ConfigErrors> {
        let body = proto == "tcp" || proto == "tls" ? "cluster: app" : """
            routes:
                  - name: a
                    backends: [ { cluster: app } ]
                    \(route)
            """
        return ConfigLoader.parse(yaml: """
        \(top)
        listeners:
          - name: web
            address: 127.0.0.1:0
            protocol: \(proto)
            \(listener)
            \(body)
        clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ] } ]
        """, file: "t.yaml")
    }

    func config(_ listener: String, route: String = "", top: String = "", proto: String = "http") -> Config? {
        if case .success(let c) = parse(listener: listener, route: route, top: top, proto: proto) { return c }
        return nil
    }

    func errors(_ listener: String, route: String = "", top: String = "", proto: String = "http") -> [String] {
        guard case .failure(let e) = parse(listener: listener, route: route, top: top, proto: proto) else { return [] }
        return e.errors.map { "\($0.path): \($0.message)" }
    }

    @Test func theIssuesSketch() throws {
        let c = try #require(config("""
        authorization:
              action: allow
              rules:
                - from: { principals: ["spiffe://mesh.local/ns/shop/sa/frontend"] }
                  to: { methods: [GET, POST], paths: [ { prefix: /api/ } ] }
                - name: health
                  from: { source_cidrs: [127.0.0.0/8, "::1"] }
                  to: { paths: [ { exact: /healthz } ] }
              deny:
                - to: { paths: [ { prefix: /admin } ], headers: [ { name: x-debug, present: true } ] }
        """))
        let p = try #require(c.listeners[0].authorization)
        #expect(p.deny.count == 1 && p.allow.count == 2)
        #expect(p.rules.map(\.name) == ["deny-0", "rule-0", "health"])
        #expect(p.allow[0].principals == [.exact("spiffe://mesh.local/ns/shop/sa/frontend")])
        #expect(p.allow[0].methods == ["GET", "POST"] && p.allow[0].paths == [.prefix("/api/")])
        #expect(p.allow[1].sourceCIDRs == [CIDR("127.0.0.0/8")!, CIDR("::1")!])
        #expect(p.deny[0].headers == [AuthorizationHeaderMatch(name: "x-debug", .present)])
        #expect(c.listeners[0].escapedSlashes == .reject, "escaped slashes are refused by default on a listener with a policy")
    }

    @Test func actionDenyMakesRulesDenyRules() throws {
        let c = try #require(config("authorization: { action: deny, rules: [ { to: { methods: [DELETE] } } ] }"))
        #expect(c.listeners[0].authorization == AuthorizationPolicy(allow: [], deny: [AuthorizationRule(name: "rule-0", methods: ["DELETE"])]))
    }

    @Test func routePoliciesAndPrincipalMatch() throws {
        let c = try #require(config("", route: """
        authorization: { rules: [ { from: { principals: ["spiffe://mesh.local/*"] } } ] }
                match: { principal: { prefix: "spiffe://mesh.local/ns/shop/" } }
        """))
        let r = c.listeners[0].virtualHosts[0].routes[0]
        #expect(r.authorization?.allow[0].principals == [.prefix("spiffe://mesh.local/")])
        #expect(r.match.principal == .prefix("spiffe://mesh.local/ns/shop/"))
        #expect(c.listeners[0].hasAuthorization)
    }

    @Test func authorizationMistakes() {
        #expect(errors("authorization: { rules: [ { from: { source_cidrs: [10.0.0.0/33] } } ] }").contains { $0.contains("source_cidrs[0]") && $0.contains("10.0.0.0/8") })
        #expect(errors("authorization: { rules: [ { to: { paths: [ { regex: \"(\" } ] } } ] }").contains { $0.contains("regex") })
        #expect(errors("authorization: { rules: [ { to: { paths: [ { prefix: admin } ] } } ] }").contains { $0.contains(#"starting with "/""#) })
        #expect(errors("authorization: { action: maybe }").contains { $0.contains("allow or deny") })
        #expect(errors("authorization: { rules: [ { name: a }, { name: a } ] }").contains { $0.contains("\"a\"") })
        #expect(errors("authorization: { rules: [ { from: { users: [x] } } ] }").contains { $0.contains("users") })
        #expect(errors("authorization: { rules: [ { to: { headers: [ { name: x, exact: y, ignore_case: true } ] } } ] }")
            .contains { $0.contains("not supported in authorization rules") })
        #expect(errors("authorization: { rules: [ { to: { server_names: [\"*\"] } } ] }").contains { $0.contains("server name") })
    }

    @Test func tcpListenersTakeConnectionRulesOnly() throws {
        let c = try #require(config("authorization: { rules: [ { from: { source_cidrs: [127.0.0.1] } } ] }", proto: "tcp"))
        #expect(c.listeners[0].authorization?.allow[0].sourceCIDRs == [CIDR("127.0.0.1")!])
        #expect(errors("authorization: { rules: [ { to: { paths: [ { prefix: / } ] } } ] }", proto: "tcp")
            .contains { $0.contains("paths") && $0.contains("not allowed on a tcp listener") })
        #expect(errors("path_normalization: false", proto: "tcp").contains { $0.contains("only allowed on an http listener") })
    }

    /// tls (passthrough) listeners: SNI, source and port rules at connection time; no principals
    /// (nothing is terminated, so nobody has an identity), refused with the line and why.
    @Test func passthroughListenersTakeSNISourceAndPortRules() throws {
        let ok = "authorization: { rules: [ { from: { source_cidrs: [127.0.0.0/8] }, to: { server_names: [a.test], ports: [443, 8443] } } ] }"
        let c = try #require(config(ok, proto: "tls"))
        let r = try #require(c.listeners[0].authorization?.allow[0])
        #expect(r.serverNames == ["a.test"] && r.ports == [443, 8443] && r.sourceCIDRs == [CIDR("127.0.0.0/8")!])
        let principals = errors("authorization: { rules: [ { from: { principals: [\"*\"] } } ] }", proto: "tls")
        #expect(principals.contains { $0.hasPrefix("listeners[0].authorization.rules[0].from.principals: not allowed on a tls listener") && $0.contains("no identity") },
                "\(principals)")
        #expect(errors("authorization: { rules: [ { to: { methods: [GET] } } ] }", proto: "tls")
            .contains { $0.contains("methods") && $0.contains("not allowed on a tls listener") })
        #expect(errors("authorization: { rules: [ { to: { ports: [80] } } ] }").contains { $0.contains("ports") && $0.contains("only allowed on tcp and tls") })
        #expect(errors("authorization: { rules: [ { to: { ports: [0] } } ] }", proto: "tcp").contains { $0.contains("ports[0]") })
        #expect(try #require(config("authorization: { rules: [ { to: { ports: [5432] } } ] }", proto: "tcp")).listeners[0].authorization?.allow[0].ports == [5432])
    }

    @Test func pathNormalizationFields() throws {
        #expect(try #require(config("")).listeners[0].pathNormalization == PathNormalization())
        #expect(try #require(config("path_normalization: false")).listeners[0].pathNormalization == .off)
        #expect(try #require(config("path_normalization: false")).listeners[0].normalizesPaths == false)
        let p = try #require(config("path_normalization: { merge_slashes: false, escaped_slashes: decode }")).listeners[0].pathNormalization
        #expect(p == PathNormalization(mergeSlashes: false, escapedSlashes: .decode))
        #expect(errors("path_normalization: { escaped_slashes: drop }").contains { $0.contains("keep") })
        #expect(errors("path_normalization: { normalize: true }").contains { $0.contains("normalize") })
    }

    @Test func connectionLimits() throws {
        let c = try #require(config("max_connections: 100", top: "max_connections: 1000"))
        #expect(c.maxConnections == 1000 && c.listeners[0].maxConnections == 100)
        #expect(try #require(config("")).listeners[0].maxConnections == nil)
        #expect(errors("max_connections: 0").contains { $0.contains("between 1 and 10000000") })
        #expect(errors("", top: "max_connections: many").contains { $0.contains("max_connections") })
    }

    @Test func routeMatchPrincipalMistakes() {
        #expect(errors("", route: "match: { principal: { suffix: x } }").contains { $0.contains("exact or prefix") || $0.contains("suffix") })
        #expect(errors("", route: "match: { principal: { exact: \"\" } }").contains { $0.contains("non-empty identity") })
    }
}
