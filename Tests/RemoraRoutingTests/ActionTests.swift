import RemoraCore
import RemoraPolicy
import Testing
@testable import RemoraRouting

@Suite struct ActionTests {
    func rewritten(_ match: RouteMatch, _ rewrite: PathRewrite?, _ target: String) throws -> String? {
        let t = try table([forward("r", match, rewrite: rewrite)])
        var out = ByteBuffer()
        defer { out.release() }
        let wrote = Array(target.utf8).withUnsafeBytes { t.rewriteTarget(route: 0, target: $0, into: &out) }
        #expect(wrote || out.isEmpty)
        return wrote ? string(out) : nil
    }

    @Test(arguments: [
        (RouteMatch(path: .prefix("/api/")), PathRewrite.prefix("/v2/"), "/api/users?x=1", "/v2/users?x=1"),
        (RouteMatch(path: .prefix("/api/")), .prefix("/"), "/api/", "/"),
        (RouteMatch(path: .prefix("/Api/", ignoreCase: true)), .prefix("/v2/"), "/aPI/x", "/v2/x"),
        (RouteMatch(path: .prefix("/api/")), .prefix("/v2/"), "http://h:80/api/x?q", "/v2/x?q"),
        (RouteMatch(path: .exact("/old")), .prefix("/new"), "/old?a=b", "/new?a=b"),
        (RouteMatch(grpc: GRPCMatch(service: "a.Svc")), .prefix("/b.Svc/"), "/a.Svc/Get", "/b.Svc/Get"),
        (RouteMatch(), .path("/fixed"), "/any/thing?k=v", "/fixed?k=v"),
        (RouteMatch(), .regex("^/v1/(.*)$", substitution: "/api/\\1"), "/v1/users/7?x", "/api/users/7?x"),
        (RouteMatch(), .regex("^/v1/(.*)$", substitution: "/api/\\1"), "/v2/users", "/v2/users"),
        (RouteMatch(), .regex("a", substitution: "b"), "/aXa", "/bXb"),
        (RouteMatch(), .regex("x*", substitution: "-"), "/abc", "-/-a-b-c-"),
        (RouteMatch(), .regex("(a)|(b)", substitution: "[\\1\\2]"), "/ab", "/[a][b]"),
        (RouteMatch(), .regex("/([^/]+)/([^/]+)", substitution: "/\\2/\\1\\\\\\0"), "/x/y", "/y/x\\/x/y"),
        (RouteMatch(path: .regex("/users/[0-9]+")), .regex("[0-9]+", substitution: "id"), "/users/42", "/users/id"),
    ] as [(RouteMatch, PathRewrite, String, String)])
    func rewriteTarget(match: RouteMatch, rewrite: PathRewrite, target: String, expected: String) throws {
        #expect(try rewritten(match, rewrite, target) == expected)
    }

    @Test func noRewriteWritesNothing() throws {
        #expect(try rewritten(RouteMatch(), nil, "/a?b") == nil)
    }

    @Test(arguments: [
        (RedirectAction(scheme: "https"), nil, "example.com:8080", "/a?b=1", "https://example.com/a?b=1"),
        (RedirectAction(), nil, "example.com:8080", "/a?b=1", "http://example.com:8080/a?b=1"),
        (RedirectAction(host: "new.example.com:8443", code: 308), nil, "old.example.com", "/a", "http://new.example.com:8443/a"),
        (RedirectAction(scheme: "https", host: "login.example.com", code: 302, stripQuery: true), PathRewrite.path("/login"),
         "example.com", "/account?next=1", "https://login.example.com/login"),
        (RedirectAction(), .prefix("/new/"), "h", "/old/x?y", "http://h/new/x?y"),
        (RedirectAction(scheme: "https"), nil, "[::1]:8080", "/", "https://[::1]/"),
    ] as [(RedirectAction, PathRewrite?, String, String, String)])
    func redirectLocation(redirect: RedirectAction, rewrite: PathRewrite?, authority: String, target: String, expected: String) throws {
        let t = try table([RouteConfig(name: "r", match: RouteMatch(path: .prefix("/old/")), action: .redirect(redirect), rewrite: rewrite),
                           RouteConfig(name: "r2", action: .redirect(redirect), rewrite: rewrite)])
        var out = ByteBuffer()
        defer { out.release() }
        let i = try #require(t.match(Req(target, authority: authority)))
        #expect(t[i].action == .redirect && t[i].status == redirect.code)
        Req(target, authority: authority).with { r in
            Array("http".utf8).withUnsafeBytes { t.writeLocation(route: i, request: r, scheme: $0, into: &out) }
        }
        #expect(string(out) == expected)
    }

    @Test func directResponseAndTimeout() throws {
        let t = try table([
            RouteConfig(name: "health", match: RouteMatch(path: .exact("/healthz")), action: .respond(DirectResponse(status: 200, body: "ok\n"))),
            RouteConfig(name: "gone", match: RouteMatch(path: .exact("/gone")), action: .respond(DirectResponse(status: 410))),
            RouteConfig(name: "api", action: .forward(ForwardAction(backends: [.init(cluster: "b")], timeout: 250))),
        ])
        #expect(t[0].action == .respond && t[0].status == 200 && string(t.body(route: 0)) == "ok\n")
        #expect(t[1].action == .respond && t[1].status == 410 && t.body(route: 1).isEmpty)
        #expect(t[2].action == .forward && t[2].timeout == 250 && t[2].status == 0)
        #expect(t.pick(2, Req(), random: 0) == 1)
    }

    @Test func mirrorShare() throws {
        let t = try table([
            forward("ten", mirror: MirrorPolicy(cluster: "shadow", perMillion: 100_000)),
            forward("all", mirror: MirrorPolicy(cluster: "shadow")),
            forward("none", mirror: MirrorPolicy(cluster: "shadow", perMillion: 0)),
            forward("plain"),
        ])
        var rng = FastRandom(seed: 3)
        var mirrored = 0
        for _ in 0..<100_000 {
            if let c = t.mirror(route: 0, random: rng.next()) { #expect(c == 3); mirrored += 1 }
        }
        #expect(withinFourSigma(mirrored, n: 100_000, p: 0.1), "\(mirrored)")
        #expect([0, 1 << 63, .max].allSatisfy { t.mirror(route: 1, random: $0) == 3 })
        #expect([0, 1 << 63, .max].allSatisfy { t.mirror(route: 2, random: $0) == nil && t.mirror(route: 3, random: $0) == nil })
        #expect(t.info[0].mirror?.cluster == 3 && t.info[0].mirror?.name == "shadow" && t.info[3].mirror == nil)
    }

    @Test func headerMutations() throws {
        let t = try table([RouteConfig(
            name: "r", action: .forward(ForwardAction(backends: [.init(cluster: "a")])),
            requestHeaders: HeaderRewrite(set: [HeaderValue("X-A", "1")], add: [HeaderValue("x-b", "2"), HeaderValue("x-b", "3")],
                                          remove: ["X-C"]),
            responseHeaders: HeaderRewrite(set: [HeaderValue("server", "remora")]))])
        let request = t.requestHeaders(route: 0)
        var result: [String] = []
        Req("/", [("x-a", "old"), ("X-C", "1"), ("x-c", "2"), ("x-d", "keep"), ("X-A", "old2")]).with { r in
            request.apply(to: r.headers) { result.append("\(string($0)): \(string($1))") }
        }
        #expect(result == ["x-d: keep", "x-a: 1", "x-b: 2", "x-b: 3"])
        #expect(request.items.map { $0.op } == [.remove, .set, .add, .add])
        let name = { (s: String) in Array(s.utf8).withUnsafeBytes { request.drops($0) } }
        #expect(name("X-a") && name("x-c") && !name("x-b") && !name("x-"))
        let response = t.responseHeaders(route: 0)
        #expect(response.items.count == 1 && string(response.items[0].name) == "server" && string(response.items[0].value) == "remora")
    }

    @Test func nonForwardRoutesHaveNoRequestSide() throws {
        let t = try table([RouteConfig(name: "r", action: .respond(DirectResponse(status: 204)),
                                       requestHeaders: HeaderRewrite(set: [HeaderValue("a", "1")]),
                                       responseHeaders: HeaderRewrite(add: [HeaderValue("b", "2")]))])
        #expect(t.requestHeaders(route: 0).isEmpty && t.responseHeaders(route: 0).items.count == 1)
        #expect(t.info[0].backends.isEmpty)
    }

    /// Per-backend counters: each backend of each route has its own slot; names for the stats.
    @Test func routeInfo() throws {
        let t = try RouteTable(listener([
            VirtualHostConfig(name: "api", domains: ["api.test"], routes: [
                forward("split", to: [.init(cluster: "a", weight: 9), .init(cluster: "b", weight: 1)]),
            ]),
            VirtualHostConfig(name: "default", routes: [
                RouteConfig(name: "health", action: .respond(DirectResponse(status: 200))),
                forward("rest", to: [.init(cluster: "c")]),
            ]),
        ]), clusters: clusterIndex)
        #expect(t.info.map(\.name) == ["split", "health", "rest"])
        #expect(t.info.map(\.virtualHost) == ["api", "default", "default"])
        #expect(t.info[0].backends == [RouteTable.BackendInfo(slot: 0, cluster: 0, clusterName: "a", weight: 9),
                                       RouteTable.BackendInfo(slot: 1, cluster: 1, clusterName: "b", weight: 1)])
        #expect(t.info[2].backends == [RouteTable.BackendInfo(slot: 2, cluster: 2, clusterName: "c", weight: 1)])
        #expect(t.backendCount == 3)
        let picked = Req("/", authority: "api.test").with { t.pick(route: 0, request: $0, random: .max) }
        #expect(picked == RouteTable.Backend(cluster: 1, slot: 1, upper: 10))
    }

    /// Configs that did not come through the loader: every problem, with a path.
    @Test func compileErrors() {
        do {
            _ = try RouteTable(listener([VirtualHostConfig(name: "h", domains: ["ok.test", "bad host", "*"], routes: [
                forward("re", RouteMatch(path: .regex("(unclosed"))),
                forward("hdr", RouteMatch(headers: [FieldMatch(name: "x", .regex("[z-a]"))])),
                forward("cl", to: [.init(cluster: "nope")]),
                forward("w", to: [.init(cluster: "a", weight: 0)]),
                forward("rw", RouteMatch(path: .regex("/x")), rewrite: .prefix("/y")),
                forward("sub", rewrite: .regex("(a)", substitution: "\\2")),
                RouteConfig(name: "hv", action: .forward(ForwardAction(backends: [.init(cluster: "a")])),
                            requestHeaders: HeaderRewrite(set: [HeaderValue("x", "a\r\nb")], remove: [])),
            ])]), clusters: clusterIndex)
            Issue.record("expected errors")
        } catch {
            #expect(error.errors.map(\.path) == [
                "listeners.web.virtual_hosts.h.domains",
                "listeners.web.routes.re.match.path.regex",
                "listeners.web.routes.hdr.match.headers.x.regex",
                "listeners.web.routes.cl.backends",
                "listeners.web.routes.w.backends",
                "listeners.web.routes.rw.rewrite.prefix",
                "listeners.web.routes.sub.rewrite.substitution",
                "listeners.web.routes.hv.request_headers.x",
            ])
            #expect(error.errors[1].message.hasPrefix("invalid regex: missing ): (unclosed"), "\(error.errors[1])")
            #expect(error.errors[3].message == #"cluster "nope" is not defined"#)
        }
    }

    @Test(arguments: [
        ("api.example.com", true), ("api.example.com:8080", true), ("*.example.com", true), ("*", true), ("*:8080", true),
        ("[::1]", true), ("[::1]:80", true), ("*-api.example.com", true), ("API.Example.com", true),
        ("", false), ("a b", false), ("api.*.com", false), ("*.", true), ("h:0", false), ("h:65536", false), ("h:", false),
        ("[::1", false), ("::1", false), ("a/b", false), ("**", false),
    ])
    func domainSyntax(domain: String, valid: Bool) {
        #expect((RouteSyntax.domain(domain) == nil) == valid)
    }

    @Test func otherSyntax() {
        #expect(RouteSyntax.regex("a(b") != nil && RouteSyntax.regex("a(b)") == nil)
        #expect(RouteSyntax.substitution("\\1", regex: "(a)") == nil && RouteSyntax.substitution("\\2", regex: "(a)") != nil)
        #expect(RouteSyntax.substitution("\\q", regex: "(a)") != nil)
        #expect(RouteSyntax.headerName("x-user-id") == nil && RouteSyntax.headerName("x user") != nil && RouteSyntax.headerName("") != nil)
        #expect(RouteSyntax.mutableHeaderName("Content-Length") != nil && RouteSyntax.mutableHeaderName("x-a") == nil)
        #expect(RouteSyntax.headerValue("a\nb") != nil && RouteSyntax.headerValue("é \t x") == nil)
        #expect(RouteSyntax.method("GET") == nil && RouteSyntax.method("G T") != nil)
        #expect(RouteSyntax.host("a.b:80") == nil && RouteSyntax.host("*.b") != nil && RouteSyntax.host("*") != nil)
    }
}
