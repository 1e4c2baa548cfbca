import RemoraCore
import RemoraPolicy
import Testing
@testable import RemoraRouting

@Suite struct MatchTests {
    /// One route with `match`; does `request` match it?
    @Test(arguments: [
        // Path prefix / exact, case, query and absolute form.
        (RouteMatch(path: .prefix("/api")), Req("/api"), true),
        (RouteMatch(path: .prefix("/api")), Req("/api/x?y=1"), true),
        (RouteMatch(path: .prefix("/api")), Req("/apix"), true),
        (RouteMatch(path: .prefix("/api")), Req("/ap"), false),
        (RouteMatch(path: .prefix("/api")), Req("/API/x"), false),
        (RouteMatch(path: .prefix("/Api/", ignoreCase: true)), Req("/aPI/x"), true),
        (RouteMatch(path: .prefix("/api/")), Req("http://h:80/api/x"), true),
        (RouteMatch(path: .prefix("/api/")), Req("HTTPS://h/api/x"), true),
        (RouteMatch(path: .prefix("/")), Req("*", method: "OPTIONS"), false),
        (RouteMatch(path: .exact("/a")), Req("/a?x=1"), true),
        (RouteMatch(path: .exact("/a")), Req("/a#f"), true),
        (RouteMatch(path: .exact("/a")), Req("/a/"), false),
        (RouteMatch(path: .exact("/a")), Req("/A"), false),
        (RouteMatch(path: .exact("/A/b", ignoreCase: true)), Req("/a/B"), true),
        // Regex: full match of the path, query excluded.
        (RouteMatch(path: .regex("/users/[0-9]+")), Req("/users/42"), true),
        (RouteMatch(path: .regex("/users/[0-9]+")), Req("/users/42?tab=1"), true),
        (RouteMatch(path: .regex("/users/[0-9]+")), Req("/users/42/x"), false),
        (RouteMatch(path: .regex("/users/[0-9]+")), Req("/v1/users/42"), false),
        (RouteMatch(path: .regex("/users/[a-z]+", ignoreCase: true)), Req("/USERS/Abc"), true),
        (RouteMatch(path: .regex("/users/[a-z]+")), Req("/users/Abc"), false),
        (RouteMatch(path: .regex(".*\\.png")), Req("/a/b.png"), true),
        (RouteMatch(path: .regex("/(a+)+b")), Req("/" + String(repeating: "a", count: 5000) + "c"), false),
        // Methods.
        (RouteMatch(methods: ["GET", "HEAD"]), Req("/", method: "HEAD"), true),
        (RouteMatch(methods: ["GET", "HEAD"]), Req("/", method: "POST"), false),
        (RouteMatch(methods: ["GET"]), Req("/", method: "get"), false),
        // Headers: names ignore case; each test; several occurrences.
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("canary"))]), Req("/", [("X-Env", "canary")]), true),
        (RouteMatch(headers: [FieldMatch(name: "X-ENV", .exact("canary"))]), Req("/", [("x-env", "canary")]), true),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("canary"))]), Req("/", [("x-env", "Canary")]), false),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("canary"))]), Req("/", [("x-env", "canary2")]), false),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("canary"))]), Req("/", [("x-envy", "canary")]), false),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("canary"))]), Req("/"), false),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("CANARY"), ignoreCase: true)]), Req("/", [("x-env", "Canary")]), true),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("canary"))]), Req("/", [("x-env", "a"), ("x-env", "canary")]), true),
        (RouteMatch(headers: [FieldMatch(name: "a^b", .present)]), Req("/", [("a~b", "1")]), false),
        (RouteMatch(headers: [FieldMatch(name: "ua", .prefix("curl/"))]), Req("/", [("ua", "curl/8.0")]), true),
        (RouteMatch(headers: [FieldMatch(name: "ua", .prefix("curl/"))]), Req("/", [("ua", "xcurl/8.0")]), false),
        (RouteMatch(headers: [FieldMatch(name: "ua", .suffix("/8.0"))]), Req("/", [("ua", "curl/8.0")]), true),
        (RouteMatch(headers: [FieldMatch(name: "ua", .suffix("/8.0"))]), Req("/", [("ua", "8.0")]), false),
        (RouteMatch(headers: [FieldMatch(name: "ua", .contains("bot"))]), Req("/", [("ua", "googlebot/2")]), true),
        (RouteMatch(headers: [FieldMatch(name: "ua", .contains("BOT"), ignoreCase: true)]), Req("/", [("ua", "GoogleBot")]), true),
        (RouteMatch(headers: [FieldMatch(name: "ua", .contains("bot"))]), Req("/", [("ua", "GoogleBot")]), false),
        (RouteMatch(headers: [FieldMatch(name: "ua", .contains(""))]), Req("/", [("ua", "")]), true),
        (RouteMatch(headers: [FieldMatch(name: "v", .regex("[0-9]+\\.[0-9]+"))]), Req("/", [("v", "10.2")]), true),
        (RouteMatch(headers: [FieldMatch(name: "v", .regex("[0-9]+\\.[0-9]+"))]), Req("/", [("v", "v10.2")]), false),
        (RouteMatch(headers: [FieldMatch(name: "v", .regex("beta|rc"), ignoreCase: true)]), Req("/", [("v", "RC")]), true),
        (RouteMatch(headers: [FieldMatch(name: "x-debug", .present)]), Req("/", [("X-Debug", "")]), true),
        (RouteMatch(headers: [FieldMatch(name: "x-debug", .present)]), Req("/"), false),
        (RouteMatch(headers: [FieldMatch(name: "x-debug", .absent)]), Req("/"), true),
        (RouteMatch(headers: [FieldMatch(name: "x-debug", .absent)]), Req("/", [("x-debug", "1")]), false),
        (RouteMatch(headers: [FieldMatch(name: "x-debug", .present, invert: true)]), Req("/"), true),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("prod"), invert: true)]), Req("/", [("x-env", "canary")]), true),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("prod"), invert: true)]), Req("/", [("x-env", "prod")]), false),
        (RouteMatch(headers: [FieldMatch(name: "x-env", .exact("prod"), invert: true)]), Req("/"), true),
        (RouteMatch(headers: [FieldMatch(name: "a", .present), FieldMatch(name: "b", .present)]), Req("/", [("a", "1")]), false),
        // Query parameters: raw bytes, percent-encoding left as is.
        (RouteMatch(queryParameters: [FieldMatch(name: "q", .exact("a%20b"))]), Req("/s?q=a%20b"), true),
        (RouteMatch(queryParameters: [FieldMatch(name: "q", .exact("a b"))]), Req("/s?q=a%20b"), false),
        (RouteMatch(queryParameters: [FieldMatch(name: "debug", .present)]), Req("/s?debug"), true),
        (RouteMatch(queryParameters: [FieldMatch(name: "debug", .present)]), Req("/s?x=1&debug=0"), true),
        (RouteMatch(queryParameters: [FieldMatch(name: "debug", .present)]), Req("/s?debugx=1&xdebug"), false),
        (RouteMatch(queryParameters: [FieldMatch(name: "debug", .present)]), Req("/s"), false),
        (RouteMatch(queryParameters: [FieldMatch(name: "debug", .present)]), Req("/s?#debug"), false),
        (RouteMatch(queryParameters: [FieldMatch(name: "b", .present)]), Req("/s?a=1#b=2"), false),
        (RouteMatch(queryParameters: [FieldMatch(name: "flag", .exact(""))]), Req("/s?flag"), true),
        (RouteMatch(queryParameters: [FieldMatch(name: "v", .regex("[0-9]+"))]), Req("/s?v=12"), true),
        (RouteMatch(queryParameters: [FieldMatch(name: "v", .regex("[0-9]+"))]), Req("/s?v=1a"), false),
        (RouteMatch(queryParameters: [FieldMatch(name: "v", .regex("[0-9]+"))]), Req("/s?v=x&&v=3"), true),
        (RouteMatch(queryParameters: [FieldMatch(name: "Q", .exact("1"))]), Req("/s?q=1"), false),
        (RouteMatch(queryParameters: [FieldMatch(name: "v", .present, invert: true)]), Req("/s?w=1"), true),
        // gRPC sugar.
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc")), Req("/pkg.Svc/Get", method: "POST", [("content-type", "application/grpc")]), true),
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc")), Req("/pkg.Svc/Get", [("Content-Type", "Application/GRPC+proto")]), true),
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc")), Req("/pkg.Svc/Get", [("content-type", "application/grpc;charset=x")]), true),
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc")), Req("/pkg.Svc/Get", [("content-type", "application/grpc-web")]), false),
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc")), Req("/pkg.Svc/Get", [("content-type", "application/json")]), false),
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc")), Req("/pkg.Svc/Get"), false),
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc")), Req("/pkg.Svc2/Get", [("content-type", "application/grpc")]), false),
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc", method: "Get")), Req("/pkg.Svc/Get", [("content-type", "application/grpc")]), true),
        (RouteMatch(grpc: GRPCMatch(service: "pkg.Svc", method: "Get")), Req("/pkg.Svc/GetAll", [("content-type", "application/grpc")]), false),
    ] as [(RouteMatch, Req, Bool)])
    func condition(match: RouteMatch, request: Req, expected: Bool) throws {
        let t = try table([forward("r", match)])
        #expect((t.match(request) != nil) == expected, "\(request)")
    }

    @Test func firstMatchWins() throws {
        let t = try table([
            forward("exact", RouteMatch(path: .exact("/api"))),
            forward("canary", RouteMatch(path: .prefix("/api/"), headers: [FieldMatch(name: "x-canary", .exact("always"))])),
            forward("api", RouteMatch(path: .prefix("/api/"))),
            forward("rest"),
        ])
        #expect(t.match(Req("/api")) == 0)
        #expect(t.match(Req("/api/v1", [("x-canary", "always")])) == 1)
        #expect(t.match(Req("/api/v1", [("x-canary", "never")])) == 2)
        #expect(t.match(Req("/apix")) == 3)
        #expect(try table([]).match(Req("/")) == nil)
    }

    /// A regex path is first checked for the literal prefix every match has (RE2's bounds on its
    /// matches); that check only skips RE2 when RE2 would say no.
    @Test func regexLiteralPrefixAgreesWithRE2() throws {
        let prefixes = ["/users/[0-9]+": "/users/", "/api/v[12]/.*": "/api/v", "/Admin/.+": "/Admin/",
                        "/static/.*\\.(css|js)": "/static/", "/a|/b": "/", ".*\\.png": "", "/x{2,3}y": "/xx",
                        "/(a|ab)(c|bcd)": "/a", "/[a-c]?": "/", "/é.": "/", "/[^a]+": "/"]
        let alphabet = "/abcdxyAD0129.pngjsé\u{10FFFF}".map(String.init)
        var rng = FastRandom(seed: 7)
        for (pattern, prefix) in prefixes {
            for ignoreCase in [false, true] {
                let t = try table([forward("r", RouteMatch(path: .regex(pattern, ignoreCase: ignoreCase)))])
                let re = try #require(try? Regex.compile(pattern, ignoreCase: ignoreCase).get())
                defer { Regex.free(re) }
                let literal = string(t.text(t.matchers[0].literal))
                #expect(literal == (ignoreCase ? String(prefix.prefix { !$0.isLetter }) : prefix), "\(pattern)")
                for _ in 0..<2_000 {
                    var s = ["/", prefix, prefix.uppercased()][Int(rng.next() % 3)]
                    for _ in 0..<Int(rng.next() % 12) { s += alphabet[Int(rng.next() % UInt64(alphabet.count))] }
                    let direct = Array(s.utf8).withUnsafeBytes { Regex.fullMatch(re, $0) }
                    #expect((t.match(Req(s)) != nil) == direct, "\(pattern) \(s)")
                }
            }
        }
    }

    /// Virtual hosts: most specific domain wins, whatever the order; ports only when given.
    @Test(arguments: [
        ("api.example.com", "api"),
        ("API.Example.COM", "api"),
        ("api.example.com:80", "api"),
        ("api.example.com:8443", "api8443"),
        ("x.example.com", "wildcard"),
        ("x.example.com:8443", "wildcard"),
        ("a.eu.example.com", "eu"),
        ("eu.example.com", "wildcard"),
        ("example.com", "any"),
        ("api.example.com.evil", "any"),
        ("[::1]:8080", "v6"),
        ("[::1]", "v6"),
        ("localhost:9000", "local9000"),
        ("localhost", "any"),
        ("localhost:9001", "any"),
        ("", "any"),
        ("h:", "any"),
        ("h:99999", "any"),
    ])
    func virtualHost(authority: String, expected: String) throws {
        let hosts = [("any", ["*"]), ("wildcard", ["*.example.com"]), ("api", ["api.example.com"]),
                     ("api8443", ["api.example.com:8443"]), ("eu", ["*.eu.example.com"]), ("v6", ["[::1]"]),
                     ("local9000", ["Localhost:9000"])]
        let t = try RouteTable(listener(hosts.map { VirtualHostConfig(name: $0.0, domains: $0.1, routes: [forward($0.0)]) }),
                               clusters: clusterIndex)
        let i = try #require(t.match(Req("/", authority: authority)))
        #expect(t.info[i].virtualHost == expected)
        #expect(t.info[i].name == expected)
    }

    @Test func noCatchAllHostMeansNoRoute() throws {
        let t = try RouteTable(listener([VirtualHostConfig(name: "api", domains: ["api.example.com", "*.api.example.com"],
                                                           routes: [forward("a")])]), clusters: clusterIndex)
        #expect(t.match(Req("/", authority: "api.example.com")) == 0)
        #expect(t.match(Req("/", authority: "v2.api.example.com:1")) == 0)
        #expect(t.match(Req("/", authority: "example.com")) == nil)
        #expect(t.match(Req("/", authority: "")) == nil)
    }

    /// Routes of the second host are numbered after the first host's; each host only tries its own.
    @Test func routesAreNumberedAcrossHosts() throws {
        let t = try RouteTable(listener([
            VirtualHostConfig(name: "a", domains: ["a.test"], routes: [forward("a1", RouteMatch(path: .exact("/1"))), forward("a2")]),
            VirtualHostConfig(name: "b", domains: ["b.test"], routes: [forward("b1", RouteMatch(path: .exact("/1")))]),
        ]), clusters: clusterIndex)
        #expect(t.count == 3)
        #expect(t.match(Req("/1", authority: "a.test")) == 0)
        #expect(t.match(Req("/2", authority: "a.test")) == 1)
        #expect(t.match(Req("/1", authority: "b.test")) == 2)
        #expect(t.match(Req("/2", authority: "b.test")) == nil)
    }
}

/// `match.principal`: routes on the peer identity (mTLS), exact or prefix.
@Suite struct PrincipalMatchTests {
    func match(_ t: RouteTable, principal: String?) -> Int? {
        Req("/x").with { v in
            guard var p = principal else { return t.match(v) }
            return p.withUTF8 { u in
                var v = v
                v.principal = UnsafeRawBufferPointer(u)
                return t.match(v)
            }
        }
    }

    @Test func routesByIdentity() throws {
        var exact = RouteMatch(), prefix = RouteMatch()
        exact.principal = .exact("spiffe://mesh.local/ns/shop/sa/admin")
        prefix.principal = .prefix("spiffe://mesh.local/ns/shop/")
        let t = try table([forward("admin", exact), forward("shop", prefix), forward("rest")])
        #expect(t.matchesPrincipal)
        #expect(match(t, principal: "spiffe://mesh.local/ns/shop/sa/admin") == 0)
        #expect(match(t, principal: "spiffe://mesh.local/ns/shop/sa/admin2") == 1)
        #expect(match(t, principal: "spiffe://mesh.local/ns/shop/sa/web") == 1)
        #expect(match(t, principal: "spiffe://mesh.local/ns/other/sa/web") == 2)
        #expect(match(t, principal: nil) == 2, "no identity: no principal route")
        #expect(try !table([forward("rest")]).matchesPrincipal)
    }
}
