import RemoraAdmin
import Testing

/// The rules the admin and control servers apply before their endpoints (issue #19, finding 8).
@Suite struct LocalRequestGuardTests {
    typealias Request = LocalHTTPServer.Request

    func req(_ headers: [(String, String)], method: String = "POST") -> Request {
        Request(method: method, target: "/x", headers: headers.map { (name: $0.0, value: $0.1) })
    }

    @Test func localAuthorities() {
        for ok in ["", "127.0.0.1", "127.0.0.1:9901", "10.1.2.3:1", "localhost", "LocalHost:80", "[::1]", "[::1]:9901",
                   "[fe80::1]:65535", "0.0.0.0:9901"] {
            #expect(LocalRequestGuard.isLocalAuthority(ok), "\(ok)")
        }
        for bad in ["evil.example", "evil.example:9901", "127.0.0.1.evil.example", "localhost.evil.example",
                    "localhost.", "x", "::1", "[::1", "[::1]x", "[::1]:", "127.0.0.1:", "127.0.0.1:123456",
                    "127.0.0.1:99a", "127.1", "2130706433", "0x7f.0.0.1", "[evil.example]:80", "127.0.0.1:80:80"] {
            #expect(!LocalRequestGuard.isLocalAuthority(bad), "\(bad)")
        }
    }

    @Test func hostRefusalUnlessToken() {
        let open = LocalRequestGuard(token: nil)
        #expect(open.hostRefusal(req([("host", "evil.example:9901")]))?.status == 421)
        #expect(open.hostRefusal(req([("host", "127.0.0.1:9901")])) == nil)
        #expect(open.hostRefusal(req([])) == nil)
        let guarded = LocalRequestGuard(token: "s3cret")
        #expect(guarded.hostRefusal(req([("host", "ctl.svc:9911"), ("authorization", "Bearer s3cret")])) == nil)
        #expect(guarded.hostRefusal(req([("host", "ctl.svc:9911"), ("authorization", "Bearer s3cre")]))?.status == 421)
        #expect(guarded.hostRefusal(req([("host", "ctl.svc:9911")]))?.status == 421)
    }

    @Test func crossOrigin() {
        let g = LocalRequestGuard(token: nil)
        let host = ("host", "127.0.0.1:9901")
        #expect(g.crossOriginRefusal(req([host])) == nil)
        #expect(g.crossOriginRefusal(req([host, ("origin", "http://127.0.0.1:9901")])) == nil)
        #expect(g.crossOriginRefusal(req([host, ("origin", "HTTP://127.0.0.1:9901"), ("sec-fetch-site", "same-origin")])) == nil)
        #expect(g.crossOriginRefusal(req([host, ("sec-fetch-site", "none")])) == nil)
        #expect(g.crossOriginRefusal(req([host, ("origin", "http://evil.example")]))?.status == 403)
        #expect(g.crossOriginRefusal(req([host, ("origin", "null")]))?.status == 403)
        #expect(g.crossOriginRefusal(req([host, ("origin", "https://127.0.0.1:9901")]))?.status == 403)
        #expect(g.crossOriginRefusal(req([host, ("origin", "http://127.0.0.1:3000")]))?.status == 403)
        #expect(g.crossOriginRefusal(req([("origin", "http://127.0.0.1:9901")]))?.status == 403)   // no Host to match
        #expect(g.crossOriginRefusal(req([host, ("sec-fetch-site", "cross-site")]))?.status == 403)
        #expect(g.crossOriginRefusal(req([host, ("sec-fetch-site", "same-site")]))?.status == 403)
    }

    @Test func token() {
        #expect(LocalRequestGuard(token: nil).tokenRefusal(req([])) == nil)
        #expect(LocalRequestGuard(token: "").tokenRefusal(req([])) == nil)   // empty = none
        let g = LocalRequestGuard(token: "s3cret")
        #expect(g.tokenRefusal(req([]))?.status == 401)
        #expect(g.tokenRefusal(req([("authorization", "Bearer s3cret")])) == nil)
        #expect(g.tokenRefusal(req([("authorization", "bearer s3cret")])) == nil)
        #expect(g.tokenRefusal(req([("authorization", "Bearer s3cretX")]))?.status == 401)
        #expect(g.tokenRefusal(req([("authorization", "Basic s3cret")]))?.status == 401)
        #expect(g.tokenRefusal(req([("authorization", "Bearer")]))?.status == 401)
    }
}
