import RemoraPolicy
import Testing

/// A request as authorization tests write it.
struct AuthzReq: AuthorizationRequest {
    var bytes: [String: [UInt8]] = [:]
    var methodS = "GET", pathS = "/", authorityS = "example.com"
    var principalS: String?
    var sourceS: String?
    var sniS: String?
    var headers: [(String, String)] = []
    var destinationPort = -1

    init(_ path: String = "/", method: String = "GET", principal: String? = nil, source: String? = nil, sni: String? = nil,
         headers: [(String, String)] = [], authority: String = "example.com") {
        pathS = path; methodS = method; principalS = principal; sourceS = source; sniS = sni
        self.headers = headers; authorityS = authority
    }

    // Test strings are immortal literals or kept alive by the test: point at their UTF-8.
    static func raw(_ s: String) -> UnsafeRawBufferPointer {
        let a = ContiguousArray(s.utf8)
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: max(a.count, 1), alignment: 1)
        a.withUnsafeBytes { p.copyMemory(from: $0) }
        return UnsafeRawBufferPointer(start: p.baseAddress, count: a.count)   // leaked: tests only
    }
    var method: UnsafeRawBufferPointer { AuthzReq.raw(methodS) }
    var path: UnsafeRawBufferPointer { AuthzReq.raw(pathS) }
    var authority: UnsafeRawBufferPointer { AuthzReq.raw(authorityS) }
    var principal: UnsafeRawBufferPointer? { principalS.map(AuthzReq.raw) }
    var source: IPAddress? { sourceS.flatMap { IPAddress.parse($0) } }
    var serverName: UnsafeRawBufferPointer? { sniS.map(AuthzReq.raw) }
    var headerCount: Int { headers.count }
    func headerName(_ i: Int) -> UnsafeRawBufferPointer { AuthzReq.raw(headers[i].0) }
    func headerValue(_ i: Int) -> UnsafeRawBufferPointer { AuthzReq.raw(headers[i].1) }
}

@Suite struct AuthorizationTests {
    let frontend = "spiffe://mesh.local/ns/shop/sa/frontend"

    /// The sketch: two allow rules, one deny rule.
    func sketch() throws -> Authorizer {
        try Authorizer(AuthorizationPolicy(
            allow: [AuthorizationRule(name: "frontend", principals: [.exact(frontend)], methods: ["GET", "POST"], paths: [.prefix("/api/")]),
                    AuthorizationRule(name: "health", sourceCIDRs: [CIDR("127.0.0.0/8")!], paths: [.exact("/healthz")])],
            deny: [AuthorizationRule(name: "admin", paths: [.prefix("/admin")])]))
    }

    @Test func denyRulesComeFirstThenAllowRulesAsAnAllowList() throws {
        let a = try sketch()
        #expect(a.ruleNames == ["admin", "frontend", "health"])
        #expect(a.decide(AuthzReq("/api/x", principal: frontend)) == AuthorizationDecision(allowed: true, rule: 1))
        // The deny rule wins even for a principal an allow rule names.
        #expect(a.decide(AuthzReq("/admin/x", principal: frontend)) == AuthorizationDecision(allowed: false, rule: 0))
        #expect(a.decide(AuthzReq("/healthz", source: "127.0.0.1")) == AuthorizationDecision(allowed: true, rule: 2))
        // No allow rule matches: denied by the allow-list, no rule named.
        #expect(a.decide(AuthzReq("/healthz", source: "10.0.0.1")) == AuthorizationDecision(allowed: false, rule: -1))
        #expect(a.decide(AuthzReq("/api/x", method: "DELETE", principal: frontend)) == AuthorizationDecision(allowed: false, rule: -1))
        #expect(a.decide(AuthzReq("/api/x")) == AuthorizationDecision(allowed: false, rule: -1), "no identity")
        #expect(a.needsPrincipal && a.needsSource && !a.needsServerName)
    }

    @Test func withoutAllowRulesEverythingNotDeniedPasses() throws {
        let a = try Authorizer(AuthorizationPolicy(deny: [AuthorizationRule(name: "d", methods: ["DELETE"])]))
        #expect(a.decide(AuthzReq("/x")) == AuthorizationDecision(allowed: true, rule: -1))
        #expect(a.decide(AuthzReq("/x", method: "DELETE")) == AuthorizationDecision(allowed: false, rule: 0))
        let empty = try Authorizer(AuthorizationPolicy())
        #expect(empty.decide(AuthzReq()).allowed)
    }

    @Test func aRuleWithoutConditionsMatchesEverything() throws {
        let a = try Authorizer(AuthorizationPolicy(allow: [AuthorizationRule(name: "all")]))
        #expect(a.decide(AuthzReq("/anything")) == AuthorizationDecision(allowed: true, rule: 0))
    }

    @Test func principalsExactPrefixAndAny() throws {
        let rule = { (p: PrincipalMatch) in try Authorizer(AuthorizationPolicy(allow: [AuthorizationRule(name: "r", principals: [p])])) }
        let exact = try rule(.exact(frontend)), prefix = try rule(PrincipalMatch("spiffe://mesh.local/ns/shop/*")), any = try rule(PrincipalMatch("*"))
        #expect(PrincipalMatch("spiffe://mesh.local/ns/shop/*") == .prefix("spiffe://mesh.local/ns/shop/"))
        #expect(exact.decide(AuthzReq(principal: frontend)).allowed)
        #expect(!exact.decide(AuthzReq(principal: frontend + "x")).allowed)
        #expect(!exact.decide(AuthzReq(principal: "spiffe://mesh.local/ns/shop/sa/front")).allowed)
        #expect(prefix.decide(AuthzReq(principal: frontend)).allowed)
        #expect(!prefix.decide(AuthzReq(principal: "spiffe://mesh.local/ns/other/sa/x")).allowed)
        #expect(any.decide(AuthzReq(principal: "x")).allowed)
        #expect(!any.decide(AuthzReq()).allowed, "* means an authenticated peer")
        #expect(!prefix.decide(AuthzReq()).allowed)
    }

    @Test func methodsPathsAndRegex() throws {
        let a = try Authorizer(AuthorizationPolicy(allow: [
            AuthorizationRule(name: "r", methods: ["GET"], paths: [.exact("/a"), .prefix("/b/"), .regex("/c/[0-9]+")])]))
        #expect(a.decide(AuthzReq("/a")).allowed)
        #expect(!a.decide(AuthzReq("/a/")).allowed)
        #expect(a.decide(AuthzReq("/b/x")).allowed)
        #expect(!a.decide(AuthzReq("/b")).allowed)
        #expect(a.decide(AuthzReq("/c/42")).allowed)
        #expect(!a.decide(AuthzReq("/c/42x")).allowed, "the regex matches the whole path")
        #expect(!a.decide(AuthzReq("/a", method: "get")).allowed, "methods are case-sensitive")
    }

    @Test func headersAllMustHoldHostIsTheAuthority() throws {
        let a = try Authorizer(AuthorizationPolicy(allow: [AuthorizationRule(name: "r", headers: [
            AuthorizationHeaderMatch(name: "X-Team", .exact("blue")),
            AuthorizationHeaderMatch(name: "x-debug", .present, invert: true),
            AuthorizationHeaderMatch(name: "host", .suffix(".example.com")),
        ])]))
        #expect(a.decide(AuthzReq(headers: [("x-team", "red"), ("X-TEAM", "blue")], authority: "api.example.com")).allowed)
        #expect(!a.decide(AuthzReq(headers: [("x-team", "blue"), ("x-debug", "1")], authority: "api.example.com")).allowed)
        #expect(!a.decide(AuthzReq(headers: [("x-team", "blue")], authority: "example.org")).allowed)
        #expect(!a.decide(AuthzReq(headers: [], authority: "api.example.com")).allowed)
        let re = try Authorizer(AuthorizationPolicy(deny: [AuthorizationRule(name: "r", headers: [
            AuthorizationHeaderMatch(name: "user-agent", .regex(".*curl.*")), AuthorizationHeaderMatch(name: "x", .contains("ab"))])]))
        #expect(!re.decide(AuthzReq(headers: [("user-agent", "curl/8"), ("x", "zabz")])).allowed)
        #expect(re.decide(AuthzReq(headers: [("user-agent", "curl/8"), ("x", "zz")])).allowed)
    }

    @Test func serverNamesExactAndWildcardIgnoringCase() throws {
        let a = try Authorizer(AuthorizationPolicy(allow: [AuthorizationRule(name: "r", serverNames: ["api.example.com", "*.internal"])]))
        #expect(a.needsServerName)
        #expect(a.decide(AuthzReq(sni: "API.example.com")).allowed)
        #expect(a.decide(AuthzReq(sni: "db.internal")).allowed)
        #expect(!a.decide(AuthzReq(sni: "internal")).allowed)
        #expect(!a.decide(AuthzReq(sni: "example.com")).allowed)
        #expect(!a.decide(AuthzReq()).allowed, "no SNI")
    }

    @Test func destinationPorts() throws {
        let a = try Authorizer(AuthorizationPolicy(allow: [AuthorizationRule(name: "r", ports: [443, 8443])],
                                                   deny: [AuthorizationRule(name: "d", serverNames: ["bad.test"], ports: [8443])]))
        let none = try Authorizer(AuthorizationPolicy(allow: [AuthorizationRule(name: "r")]))
        #expect(a.needsPort && !none.needsPort)
        var r = AuthzReq()
        #expect(!a.decide(r).allowed, "an unknown port matches no port rule")
        r.destinationPort = 443
        #expect(a.decide(r).allowed)
        r.destinationPort = 444
        #expect(!a.decide(r).allowed)
        var bad = AuthzReq(sni: "bad.test")
        bad.destinationPort = 8443
        #expect(a.decide(bad) == AuthorizationDecision(allowed: false, rule: 0))
        bad.destinationPort = 443
        #expect(a.decide(bad).allowed)
    }

    @Test func cidrsIPv4AndIPv6() throws {
        #expect(CIDR("10.0.0.0/8")!.contains(IPAddress.parse("10.255.1.2")!))
        #expect(!CIDR("10.0.0.0/8")!.contains(IPAddress.parse("11.0.0.1")!))
        #expect(CIDR("10.1.2.3")!.contains(IPAddress.parse("10.1.2.3")!))
        #expect(!CIDR("10.1.2.3")!.contains(IPAddress.parse("10.1.2.4")!))
        #expect(CIDR("0.0.0.0/0")!.contains(IPAddress.parse("203.0.113.9")!))
        #expect(!CIDR("0.0.0.0/0")!.contains(IPAddress.parse("::1")!), "an IPv4 range holds only IPv4 addresses")
        #expect(CIDR("::/0")!.contains(IPAddress.parse("10.0.0.1")!), "::/0 holds every address")
        // An IPv4 client on a dual-stack socket shows up IPv4-mapped.
        #expect(CIDR("127.0.0.0/8")!.contains(IPAddress.parse("::ffff:127.0.0.1")!))
        #expect(CIDR("fd00::/8")!.contains(IPAddress.parse("fd12:3456::1")!))
        #expect(!CIDR("fd00::/8")!.contains(IPAddress.parse("fe80::1")!))
        #expect(CIDR("::1")!.contains(IPAddress.parse("::1")!))
        #expect(!CIDR("::1")!.contains(IPAddress.parse("::2")!))
        #expect(CIDR("2001:db8::/33")!.contains(IPAddress.parse("2001:db8:7fff::1")!))
        #expect(!CIDR("2001:db8::/33")!.contains(IPAddress.parse("2001:db8:8000::1")!))
        #expect(CIDR("2001:db8::1:0:0:1/127")!.contains(IPAddress.parse("2001:db8:0:0:1::")!))
        #expect(CIDR("10.1.2.3/8")!.address == IPAddress.parse("10.0.0.0")!, "host bits cleared")
        #expect(CIDR("10.0.0.0/8")!.description == "10.0.0.0/8")
        for bad in ["10.0.0.0/33", "10.0.0/8", "::/129", "10.0.0.0/", "x", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", ":::1", "1::2::3",
                    "12345::1", "::1/-1", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:", "[::1]"] {
            #expect(CIDR(bad) == nil, "\(bad)")
        }
        #expect(IPAddress.parse("1:2:3:4:5:6:7:8") != nil)
        #expect(IPAddress.parse("::") == IPAddress(hi: 0, lo: 0))
        #expect(IPAddress.parse("1::") == IPAddress(hi: 1 << 48, lo: 0))
        #expect(IPAddress.parse("::ffff:1.2.3.4") == IPAddress.parse("1.2.3.4"))
    }

    @Test func sourceRulesNeedAnAddress() throws {
        let a = try Authorizer(AuthorizationPolicy(deny: [AuthorizationRule(name: "r", sourceCIDRs: [CIDR("10.0.0.0/8")!])]))
        #expect(a.decide(AuthzReq()).allowed, "an unknown address is in no range")
        #expect(!a.decide(AuthzReq(source: "10.0.0.1")).allowed)
    }

    @Test func invalidRegexThrows() {
        #expect(throws: RegexError.self) {
            _ = try Authorizer(AuthorizationPolicy(allow: [AuthorizationRule(name: "r", paths: [.regex("(")])]))
        }
    }
}
