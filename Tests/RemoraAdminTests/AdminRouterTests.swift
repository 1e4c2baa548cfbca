import RemoraAdmin
import RemoraCore
import Testing

/// A process as the admin endpoints see it, with what they asked it to do.
final class FakeTarget: AdminTarget {
    var readiness: Readiness = .ready
    var stats = StatsSnapshot()
    var configDump = ConfigDump(version: 1, yaml: "")
    var drains: [Bool] = []

    func statsSnapshot() -> StatsSnapshot { stats }
    func drain(quick: Bool) { drains.append(quick) }
}

/// Admin endpoint routing without sockets: method, access checks, 404, each endpoint's answer.
@Suite struct AdminRouterTests {
    typealias Request = LocalHTTPServer.Request

    let router = AdminRouter(access: LocalRequestGuard(token: nil))

    func req(_ method: String, _ target: String, _ headers: [(String, String)] = [("host", "127.0.0.1:9901")]) -> Request {
        Request(method: method, target: target, headers: headers.map { (name: $0.0, value: $0.1) })
    }

    func header(_ r: LocalHTTPServer.Response, _ name: String) -> String? { r.headers.first { $0.name == name }?.value }

    @Test func ready() {
        let t = FakeTarget()
        let cases: [(Readiness, Int, String)] = [
            (.starting, 503, "starting\n"), (.waitingForControl, 503, "waiting for the control server\n"),
            (.draining, 503, "draining\n"), (.ready, 200, "ready\n"),
            (.readyControlUnreachable(staleSeconds: 7), 200, "ready (control server unreachable, 7s stale)\n"),
        ]
        for (state, status, body) in cases {
            t.readiness = state
            for m in ["GET", "HEAD"] {
                let r = router.respond(to: req(m, "/ready"), target: t)
                #expect(r.status == status && r.body == body, "\(state) \(m)")
            }
        }
        #expect(router.respond(to: req("GET", "/ready?verbose=1"), target: t).status == 200)   // query ignored
    }

    @Test func statsAndConfigDump() {
        let t = FakeTarget()
        t.stats.add(scope: "listener", name: "web", stat: "downstream_rq_total", value: 3)
        t.stats.add(scope: "server", stat: "workers", value: 2)
        let s = router.respond(to: req("GET", "/stats"), target: t)
        #expect(s.status == 200 && s.body == "listener.web.downstream_rq_total 3\nserver.workers 2\n")
        #expect("\(s.contentType)" == "text/plain")
        t.configDump = ConfigDump(version: 4, yaml: "workers: 1\n")
        let d = router.respond(to: req("GET", "/config_dump"), target: t)
        #expect(d.status == 200 && d.body == "# version 4\nworkers: 1\n" && "\(d.contentType)" == "application/yaml")
    }

    @Test func methods() {
        let t = FakeTarget()
        for path in ["/ready", "/stats", "/config_dump"] {
            for m in ["POST", "PUT", "DELETE"] {
                let r = router.respond(to: req(m, path), target: t)
                #expect(r.status == 405 && header(r, "allow") == "GET, HEAD" && r.body == "use GET for \(path)\n")
            }
        }
        for path in ["/drain", "/quitquitquit"] {
            for m in ["GET", "HEAD", "PUT"] {
                let r = router.respond(to: req(m, path), target: t)
                #expect(r.status == 405 && header(r, "allow") == "POST" && r.body == "use POST for \(path)\n")
            }
        }
        #expect(t.drains.isEmpty)   // nothing changes state on GET
    }

    @Test func drainAndQuit() {
        let t = FakeTarget()
        let d = router.respond(to: req("POST", "/drain"), target: t)
        #expect(d.status == 200 && d.body == "draining; the process exits when in-flight requests are done\n")
        let q = router.respond(to: req("POST", "/quitquitquit"), target: t)
        #expect(q.status == 200 && q.body == "exiting\n")
        #expect(t.drains == [false, true])
    }

    @Test func notFoundListsEveryEndpoint() {
        let r = router.respond(to: req("GET", "/nope"), target: FakeTarget())
        #expect(r.status == 404)
        #expect(r.body == "admin endpoints: GET /, GET /ready, GET /stats, GET /stats/prometheus, GET /clusters, GET /routes, "
                + "GET /config_dump, GET /certs, POST /drain, POST /quitquitquit\n")
    }

    @Test func accessChecksComeFirst() {
        let t = FakeTarget()
        // DNS rebinding: a name as Host gets 421 on every path, known or not.
        for path in ["/ready", "/config_dump", "/drain", "/nope"] {
            #expect(router.respond(to: req("GET", path, [("host", "evil.example:9901")]), target: t).status == 421)
        }
        // A page of another origin cannot drain.
        let cross = req("POST", "/drain", [("host", "127.0.0.1:9901"), ("origin", "http://evil.example")])
        #expect(router.respond(to: cross, target: t).status == 403)
        let site = req("POST", "/quitquitquit", [("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")])
        #expect(router.respond(to: site, target: t).status == 403)
        // But it may read (same as curl): the Host is an address.
        #expect(router.respond(to: req("GET", "/stats", [("host", "127.0.0.1:9901"), ("origin", "http://evil.example")]),
                               target: t).status == 200)
        #expect(t.drains.isEmpty)
    }

    @Test func token() {
        let t = FakeTarget()
        let guarded = AdminRouter(access: LocalRequestGuard(token: "s3cret"))
        let r = guarded.respond(to: req("POST", "/drain"), target: t)
        #expect(r.status == 401 && header(r, "www-authenticate") == "Bearer")
        #expect(guarded.respond(to: req("GET", "/stats"), target: t).status == 200)   // reads need none
        let auth = [("host", "127.0.0.1:9901"), ("authorization", "Bearer s3cret")]
        #expect(guarded.respond(to: req("POST", "/quitquitquit", auth), target: t).status == 200)
        #expect(t.drains == [true])
        // With the token, a name as Host is accepted (a page cannot add the header).
        #expect(guarded.respond(to: req("GET", "/ready", [("host", "remora.svc"), ("authorization", "Bearer s3cret")]),
                                target: t).status == 200)
    }

    /// A new endpoint is one more table entry: routed, method-checked and listed with no other change.
    @Test func addingAnEndpoint() {
        let hello = AdminEndpoint("/hello") { r, _ in .init(status: 200, body: "hi \(r.query)\n") }
        let rotate = AdminEndpoint("/rotate", changesState: true) { _, _ in .init(status: 200, body: "rotated\n") }
        let router = AdminRouter(endpoints: AdminEndpoint.all + [hello, rotate], access: LocalRequestGuard(token: nil))
        let t = FakeTarget()
        #expect(router.respond(to: req("GET", "/hello?x=1"), target: t).body == "hi x=1\n")
        #expect(router.respond(to: req("GET", "/rotate"), target: t).status == 405)
        #expect(router.respond(to: req("POST", "/rotate", [("origin", "http://evil.example")]), target: t).status == 403)
        #expect(router.respond(to: req("POST", "/rotate"), target: t).body == "rotated\n")
        // (GET / is the dashboard now: an unknown path shows the list.)
        #expect(router.respond(to: req("GET", "/nope"), target: t).body.hasSuffix("POST /quitquitquit, GET /hello, POST /rotate\n"))
    }

    @Test func statsText() {
        var s = StatsSnapshot()
        #expect(StatsRenderers.text(s) == "")
        s.add(scope: "route", name: "web.all.app", stat: "upstream_rq_2xx", value: UInt64.max)
        s.add(scope: "control", stat: "connected", value: 0)
        #expect(StatsRenderers.text(s) == "route.web.all.app.upstream_rq_2xx 18446744073709551615\ncontrol.connected 0\n")
    }
}
