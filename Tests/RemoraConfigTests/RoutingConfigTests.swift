import RemoraConfig
import RemoraCore
import Testing

/// The routing part of the schema (issue 4): virtual hosts, matchers, actions.
@Suite struct RoutingConfigTests {
    static let clusters = """
        clusters:
          - { name: app, endpoints: [ 127.0.0.1:1 ] }
          - { name: canary, endpoints: [ 127.0.0.1:2 ] }
          - { name: shadow, endpoints: [ 127.0.0.1:3 ] }
        """

    func load(_ yaml: String) -> Result<Config, ConfigErrors> {
        ConfigLoader.parse(yaml: yaml + "\n" + Self.clusters, file: "t.yaml")
    }

    @Test func everyRoutingField() throws {
        let c = try load("""
            listeners:
              - name: web
                address: 127.0.0.1:0
                virtual_hosts:
                  - name: api
                    domains: [ api.example.com, "api.example.com:8443", "*.api.example.com" ]
                    routes:
                      - name: canary-override
                        match:
                          path: { prefix: /v1/, ignore_case: true }
                          methods: [ GET, POST ]
                          headers:
                            - { name: x-canary, exact: always }
                            - { name: X-Env, prefix: prod, ignore_case: true }
                            - { name: ua, suffix: bot, invert: true }
                            - { name: ua, contains: curl }
                            - { name: x-v, regex: "[0-9]+" }
                            - { name: x-debug, present: true }
                            - { name: x-trace, absent: true }
                            - { name: x-a, present: false }
                          query:
                            - { name: q, exact: "a%20b" }
                            - { name: v, regex: "[0-9]+" }
                            - { name: debug, present: true }
                        backends: [ { cluster: canary } ]
                      - name: users
                        match: { path: { regex: "/users/[0-9]+" } }
                        backends:
                          - { cluster: app, weight: 99 }
                          - { cluster: canary, weight: 1 }
                        hash_on: { header: x-user-id }
                        timeout: 2s
                        mirror: { cluster: shadow, percent: 12.5 }
                        rewrite: { regex: "^/users/(.*)$", substitution: "/u/\\\\1" }
                        request_headers:
                          set: { x-env: prod }
                          add: { x-via: remora }
                          remove: [ x-debug ]
                        response_headers: { set: { server: remora } }
                      - name: grpc
                        match: { grpc: { service: pkg.v1.Greeter, method: SayHello } }
                        backends: [ { cluster: app } ]
                        hash_on: { cookie: session }
                        rewrite: { prefix: /pkg.v2.Greeter/SayHello }
                  - name: default
                    domains: [ "*" ]
                    routes:
                      - name: old
                        match: { path: { exact: /old } }
                        redirect: { scheme: https, host: "new.example.com:8443", code: 308, strip_query: true }
                        rewrite: { path: /new }
                        response_headers: { set: { cache-control: no-store } }
                      - name: health
                        match: { path: { exact: /healthz } }
                        direct_response: { status: 200, body: "ok\\n" }
                      - name: mirror-all
                        backends: [ { cluster: app } ]
                        mirror: { cluster: shadow }
            """).get()
        let hosts = c.listeners[0].virtualHosts
        #expect(hosts.map(\.name) == ["api", "default"])
        #expect(hosts[0].domains == ["api.example.com", "api.example.com:8443", "*.api.example.com"])
        #expect(hosts[1].domains == ["*"])
        let r = hosts[0].routes + hosts[1].routes
        #expect(r[0] == RouteConfig(
            name: "canary-override",
            match: RouteMatch(path: .prefix("/v1/", ignoreCase: true), methods: ["GET", "POST"], headers: [
                FieldMatch(name: "x-canary", .exact("always")),
                FieldMatch(name: "X-Env", .prefix("prod"), ignoreCase: true),
                FieldMatch(name: "ua", .suffix("bot"), invert: true),
                FieldMatch(name: "ua", .contains("curl")),
                FieldMatch(name: "x-v", .regex("[0-9]+")),
                FieldMatch(name: "x-debug", .present),
                FieldMatch(name: "x-trace", .absent),
                FieldMatch(name: "x-a", .absent),
            ], queryParameters: [
                FieldMatch(name: "q", .exact("a%20b")), FieldMatch(name: "v", .regex("[0-9]+")), FieldMatch(name: "debug", .present),
            ]),
            action: .forward(ForwardAction(backends: [WeightedBackend(cluster: "canary")]))))
        #expect(r[1] == RouteConfig(
            name: "users", match: RouteMatch(path: .regex("/users/[0-9]+")),
            action: .forward(ForwardAction(backends: [WeightedBackend(cluster: "app", weight: 99), WeightedBackend(cluster: "canary", weight: 1)],
                                           hashOn: .header("x-user-id"), timeout: 2_000,
                                           mirror: MirrorPolicy(cluster: "shadow", perMillion: 125_000))),
            rewrite: .regex("^/users/(.*)$", substitution: "/u/\\1"),
            requestHeaders: HeaderRewrite(set: [HeaderValue("x-env", "prod")], add: [HeaderValue("x-via", "remora")], remove: ["x-debug"]),
            responseHeaders: HeaderRewrite(set: [HeaderValue("server", "remora")])))
        #expect(r[2] == RouteConfig(
            name: "grpc", match: RouteMatch(grpc: GRPCMatch(service: "pkg.v1.Greeter", method: "SayHello")),
            action: .forward(ForwardAction(backends: [WeightedBackend(cluster: "app")], hashOn: .cookie("session"))),
            rewrite: .prefix("/pkg.v2.Greeter/SayHello")))
        #expect(r[3] == RouteConfig(
            name: "old", match: RouteMatch(path: .exact("/old")),
            action: .redirect(RedirectAction(scheme: "https", host: "new.example.com:8443", code: 308, stripQuery: true)),
            rewrite: .path("/new"), responseHeaders: HeaderRewrite(set: [HeaderValue("cache-control", "no-store")])))
        #expect(r[4].action == .respond(DirectResponse(status: 200, body: "ok\n")))
        #expect(r[5].action == .forward(ForwardAction(backends: [WeightedBackend(cluster: "app")], mirror: MirrorPolicy(cluster: "shadow"))))
    }

    @Test func defaults() throws {
        let c = try load("""
            listeners:
              - name: web
                address: 127.0.0.1:0
                virtual_hosts:
                  - name: a
                    domains: [ a.test ]
                  - name: b
                    domains: [ b.test ]
                    routes:
                      - name: r
                        redirect: {}
                      - name: s
                        direct_response: { status: 404 }
            """).get()
        let hosts = c.listeners[0].virtualHosts
        #expect(hosts[0].routes.isEmpty)
        #expect(hosts[1].routes[0] == RouteConfig(name: "r", action: .redirect(RedirectAction(code: 301))))
        #expect(hosts[1].routes[1].action == .respond(DirectResponse(status: 404, body: "")))
    }

    /// One broken routing field per config: line, path and message of the single error.
    @Test(arguments: [
        ("routes: [ { name: r, backends: [ { cluster: app } ] } ]\n    virtual_hosts: []", 6, "listeners[0].virtual_hosts",
         "not allowed with routes"),
        ("virtual_hosts: [ { name: h } ]", 5, "listeners[0].virtual_hosts[0].domains", #"missing required key "domains""#),
        ("virtual_hosts: [ { name: h, domains: [] } ]", 5, "listeners[0].virtual_hosts[0].domains", "at least one domain is required"),
        ("virtual_hosts: [ { name: h, domains: [ a b ] } ]", 5, "listeners[0].virtual_hosts[0].domains[0]",
         #"expected a host, "host:port", "*.suffix" or "*""#),
        ("virtual_hosts: [ { name: h, domains: [ \"a.*\" ] } ]", 5, "listeners[0].virtual_hosts[0].domains[0]", "expected a host"),
        ("virtual_hosts: [ { name: h, domains: [ \"h:0\" ] } ]", 5, "listeners[0].virtual_hosts[0].domains[0]", "expected a host"),
        ("virtual_hosts:\n      - { name: h, domains: [ A.test ] }\n      - { name: i, domains: [ a.TEST ] }", 7,
         "listeners[0].virtual_hosts[1].domains[0]", #"duplicate domain "a.TEST" (first used on line 6)"#),
        ("virtual_hosts:\n      - { name: h, domains: [ a ] }\n      - { name: h, domains: [ b ] }", 7,
         "listeners[0].virtual_hosts[1].name", #"duplicate virtual host name "h" (first used on line 6)"#),
        ("virtual_hosts:\n      - { name: h, domains: [ a ], routes: [ { name: r, backends: [ { cluster: app } ] } ] }\n"
            + "      - { name: i, domains: [ b ], routes: [ { name: r, backends: [ { cluster: app } ] } ] }", 7,
         "listeners[0].virtual_hosts[1].routes[0].name", #"duplicate route name "r" (first used on line 6)"#),
        (route("match: { path: { regex: \"(a\" } }"), 8, "listeners[0].routes[0].match.path.regex", "invalid regex: missing ): (a"),
        (route("match: { path: { regex: \"[z-a]\", ignore_case: true } }"), 8, "listeners[0].routes[0].match.path.regex",
         "invalid regex: invalid character class range: z-a"),
        (route("match: { path: { prefix: /, ignore_case: maybe } }"), 8, "listeners[0].routes[0].match.path.ignore_case",
         #"expected true or false, got "maybe""#),
        (route("match: { path: { exact: /a, regex: /b } }"), 8, "listeners[0].routes[0].match.path",
         "expected exactly one of prefix, exact or regex, got exact and regex"),
        (route("match: { path: { prefix: /a }, grpc: { service: a.B } }"), 8, "listeners[0].routes[0].match.path",
         "not allowed with grpc"),
        (route("match: { grpc: { method: M } }"), 8, "listeners[0].routes[0].match.grpc.service", #"missing required key "service""#),
        (route("match: { grpc: { service: a/B } }"), 8, "listeners[0].routes[0].match.grpc.service",
         #"expected a service name like "pkg.v1.Greeter", got "a/B""#),
        (route("match: { grpc: { service: a.B, method: a.b } }"), 8, "listeners[0].routes[0].match.grpc.method",
         #"expected a method name like "SayHello""#),
        (route("match: { methods: [ \"G T\" ] }"), 8, "listeners[0].routes[0].match.methods[0]", "expected a method name such as GET"),
        (route("match: { headers: [ { exact: a } ] }"), 8, "listeners[0].routes[0].match.headers[0].name", #"missing required key "name""#),
        (route("match: { headers: [ { name: \"x y\", present: true } ] }"), 8, "listeners[0].routes[0].match.headers[0].name",
         "expected a header name"),
        (route("match: { headers: [ { name: x } ] }"), 8, "listeners[0].routes[0].match.headers[0]",
         "expected exactly one of exact, prefix, suffix, contains, regex, present or absent"),
        (route("match: { headers: [ { name: x, exact: a, prefix: b } ] }"), 8, "listeners[0].routes[0].match.headers[0]",
         "got exact and prefix"),
        (route("match: { headers: [ { name: x, regex: \"a**\" } ] }"), 8, "listeners[0].routes[0].match.headers[0].regex",
         "invalid regex: bad repetition operator: **"),
        (route("match: { headers: [ { name: x, present: yes } ] }"), 8, "listeners[0].routes[0].match.headers[0].present",
         #"expected true or false, got "yes""#),
        (route("match: { headers: [ { name: x, exact: a, invert: 1 } ] }"), 8, "listeners[0].routes[0].match.headers[0].invert",
         "expected true or false"),
        (route("match: { query: [ { name: \"a=b\", present: true } ] }"), 8, "listeners[0].routes[0].match.query[0].name",
         "expected a query parameter name"),
        (route("match: { queries: [] }"), 8, "listeners[0].routes[0].match.queries", #"unknown key "queries""#),
        (route("redirect: { code: 301 }", backends: true), 8, "listeners[0].routes[0].redirect", "not allowed with backends"),
        (route("timeout: 5s", backends: false), 6, "listeners[0].routes[0].backends",
         #"missing required key "backends" (or "redirect" or "direct_response")"#),
        (route("redirect: { code: 301 }\n        timeout: 5s", backends: false), 8, "listeners[0].routes[0].timeout",
         "only allowed with backends"),
        (route("direct_response: { status: 200 }\n        hash_on: { header: x }", backends: false), 8,
         "listeners[0].routes[0].hash_on", "only allowed with backends"),
        (route("redirect: { code: 305 }", backends: false), 7, "listeners[0].routes[0].redirect.code",
         #"expected 301, 302, 303, 307 or 308, got "305""#),
        (route("redirect: { scheme: ftp }", backends: false), 7, "listeners[0].routes[0].redirect.scheme", "expected http or https"),
        (route("redirect: { host: \"*.a\" }", backends: false), 7, "listeners[0].routes[0].redirect.host", #"expected a host or "host:port""#),
        (route("redirect: { path: /x }", backends: false), 7, "listeners[0].routes[0].redirect.path", #"unknown key "path""#),
        (route("direct_response: { status: 700 }", backends: false), 7, "listeners[0].routes[0].direct_response.status",
         "must be between 200 and 599, got 700"),
        (route("direct_response: { body: x }", backends: false), 7, "listeners[0].routes[0].direct_response.status",
         #"missing required key "status""#),
        (route("direct_response: { status: 200 }\n        rewrite: { path: /x }", backends: false), 8,
         "listeners[0].routes[0].rewrite", "not allowed with direct_response"),
        (route("hash_on: { header: a, cookie: b }"), 8, "listeners[0].routes[0].hash_on",
         "expected exactly one of header or cookie, got header and cookie"),
        (route("hash_on: {}"), 8, "listeners[0].routes[0].hash_on", "expected exactly one of header or cookie"),
        (route("hash_on: { header: \"a b\" }"), 8, "listeners[0].routes[0].hash_on.header", "expected a header name"),
        (route("mirror: { cluster: shadow, percent: 101 }"), 8, "listeners[0].routes[0].mirror.percent",
         #"expected a percentage from 0 to 100 like "5" or "0.25" (at most 4 decimals), got "101""#),
        (route("mirror: { cluster: shadow, percent: 0.00001 }"), 8, "listeners[0].routes[0].mirror.percent", "at most 4 decimals"),
        (route("mirror: { cluster: nope }"), 8, "listeners[0].routes[0].mirror.cluster", #"cluster "nope" is not defined"#),
        (route("mirror: { percent: 5 }"), 8, "listeners[0].routes[0].mirror.cluster", #"missing required key "cluster""#),
        (route("match: { path: { regex: /a.* } }\n        rewrite: { prefix: /b }"), 9, "listeners[0].routes[0].rewrite.prefix",
         "needs a prefix or exact path match"),
        (route("rewrite: { regex: a }"), 8, "listeners[0].routes[0].rewrite.substitution", #"missing required key "substitution""#),
        (route("rewrite: { path: /a, substitution: b }"), 8, "listeners[0].routes[0].rewrite.substitution", "only allowed with regex"),
        (route("rewrite: { regex: \"(a)\", substitution: \"\\\\2\" }"), 8, "listeners[0].routes[0].rewrite.substitution",
         "invalid substitution: Rewrite schema requests 2 matches, but the regexp only has 1 parenthesized subexpressions"),
        (route("rewrite: { regex: \"(a\", substitution: x }"), 8, "listeners[0].routes[0].rewrite.regex", "invalid regex"),
        (route("rewrite: { path: x }"), 8, "listeners[0].routes[0].rewrite.path", #"expected a path starting with "/""#),
        (route("rewrite: { prefix: \"/a?b\" }"), 8, "listeners[0].routes[0].rewrite.prefix", ##"(no "?", "#", spaces or control characters)"##),
        (route("request_headers: { set: { content-length: \"1\" } }"), 8, "listeners[0].routes[0].request_headers.set.content-length",
         "content-length is managed by the proxy and cannot be changed by a route"),
        (route("request_headers: { set: { x-a: \"a\\nb\" } }"), 8, "listeners[0].routes[0].request_headers.set.x-a",
         "must not contain CR, LF or NUL"),
        (route("request_headers: { set: { \"x a\": b } }"), 8, "listeners[0].routes[0].request_headers.set.x a", "expected a header name"),
        (route("request_headers: { set: { x-a: 1, x-a: 2 } }"), 8, "listeners[0].routes[0].request_headers.set.x-a",
         #"duplicate key "x-a""#),
        (route("request_headers: { append: {} }"), 8, "listeners[0].routes[0].request_headers.append",
         #"unknown key "append" (expected one of: set, add, remove)"#),
        (route("response_headers: { remove: [ Transfer-Encoding ] }"), 8, "listeners[0].routes[0].response_headers.remove[0]",
         "Transfer-Encoding is managed by the proxy"),
        (route("response_headers: { set: [ a ] }"), 8, "listeners[0].routes[0].response_headers.set", "expected a mapping, got a list"),
    ] as [(String, Int, String, String)])
    func singleError(listenerTail: String, line: Int, path: String, message: String) {
        let yaml = "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    protocol: http\n    " + listenerTail
        guard case .failure(let e) = load(yaml) else {
            Issue.record("expected an error for:\n\(yaml)")
            return
        }
        #expect(e.errors.count == 1, "\(e)")
        guard let first = e.errors.first else { return }
        #expect(first.line == line, "\(first)")
        #expect(first.path == path, "\(first)")
        #expect(first.message.contains(message), "\(first)")
    }

    @Test func tcpListenerHasNoVirtualHosts() {
        guard case .failure(let e) = load("""
            listeners:
              - { name: t, address: 127.0.0.1:0, protocol: tcp, cluster: app, virtual_hosts: [] }
            """) else { Issue.record("expected an error"); return }
        #expect(e.errors.map(\.description) == ["t.yaml:2: listeners[0].virtual_hosts: only allowed on an http listener"])
    }

    @Test(arguments: [("0", 0), ("5", 50_000), ("0.01", 100), ("12.5", 125_000), ("100", 1_000_000), ("0.0001", 1)] as [(String, UInt32)])
    func percent(text: String, perMillion: UInt32) {
        #expect(ConfigValue.percent(text) == perMillion)
    }

    @Test(arguments: ["", "-1", "100.0001", "1e2", "5%", "0.00001", ".5"])
    func badPercent(text: String) {
        #expect(ConfigValue.percent(text) == nil)
    }
}

/// A listener tail with one route: `backends` gives it a backend before `extra` (indented as a route key).
private func route(_ extra: String, backends: Bool = true) -> String {
    "routes:\n      - name: r\n" + (backends ? "        backends: [ { cluster: app } ]\n" : "") + "        " + extra
}
