import Glibc
import RemoraControl
import RemoraTLS
import Testing

@Suite struct RenewalScheduleTests {
    let s = RenewalSchedule()

    @Test func renewsAtHalfTheLifetimeWithJitter() {
        // 24 h certificate: half way is 12 h; the jitter spreads it over ± 5 % of the lifetime.
        let day: Int64 = 86_400_000
        #expect(s.renewAt(notBefore: 0, notAfter: day, random: 0.5) == day / 2)
        #expect(abs(s.renewAt(notBefore: 0, notAfter: day, random: 0) - day * 45 / 100) <= 1)
        #expect(s.renewAt(notBefore: 0, notAfter: day, random: 0.999_999) >= day * 55 / 100 - 1_000)
        // Relative to notBefore, whatever the clock says.
        #expect(s.renewAt(notBefore: 1_000_000, notAfter: 1_000_000 + 20_000, random: 0.5) == 1_010_000)
        // Every draw lands inside the window, never after expiry.
        for i in 0..<100 {
            let at = s.renewAt(notBefore: 5_000, notAfter: 25_000, random: Double(i) / 100)
            #expect(at >= 5_000 + 9_000 - 1 && at <= 5_000 + 11_000)
        }
        // A certificate already expired (or nonsense validity) renews at its start: at once.
        #expect(s.renewAt(notBefore: 10, notAfter: 5, random: 0.5) == 10)
    }

    @Test func retriesBackOffButNeverPastTheCertificate() {
        let far: Int64 = 1 << 40
        // 1 s doubling, capped at 30 s, drawn from the upper half.
        #expect(s.retryDelay(failures: 1, now: 0, notAfter: far, random: 0) == 500)
        #expect(s.retryDelay(failures: 1, now: 0, notAfter: far, random: 0.999) <= 1_000)
        #expect(s.retryDelay(failures: 2, now: 0, notAfter: far, random: 0) == 1_000)
        #expect(s.retryDelay(failures: 6, now: 0, notAfter: far, random: 0) == 15_000)
        #expect(s.retryDelay(failures: 40, now: 0, notAfter: far, random: 0.999) <= 30_000)
        // 5 s left: at most a tenth of it (the next tries come before expiry); at least 100 ms.
        #expect(s.retryDelay(failures: 10, now: 0, notAfter: 5_000, random: 0.999) <= 500)
        #expect(s.retryDelay(failures: 10, now: 10_000, notAfter: 5_000, random: 0) == 100)
    }
}

@Suite struct TokenTableTests {
    /// A stand-in hash for the checks: the token itself padded to 64 hex digits.
    static func fake(_ t: String) -> String { String(repeating: "0", count: 64 - t.count) + t }

    @Test func parsesAndChecks() throws {
        let text = """
        # comment

        \(Self.fake("a1")) shop frontend
        \(Self.fake("b2")) shop orders
        """
        let t = try TokenTable(text: text)
        #expect(t.entries.count == 2)
        #expect(t.check("a1", hash: Self.fake) == .valid(WorkloadIdentity(namespace: "shop", serviceAccount: "frontend")))
        #expect(t.check("b2", hash: Self.fake) == .valid(WorkloadIdentity(namespace: "shop", serviceAccount: "orders")))
        #expect(t.check("c3", hash: Self.fake) == .unknown)
        #expect(t.check(nil, hash: Self.fake) == .missing)
        #expect(t.check("", hash: Self.fake) == .missing)
        #expect(t.check(String(repeating: "x", count: 300), hash: Self.fake) == .unknown)
        // Round trip through the file's text.
        #expect(try TokenTable(text: t.text) == t)
    }

    @Test func realHashAndRevocation() throws {
        var t = TokenTable()
        let token = try TokenTable.newToken()
        #expect(token.utf8.count == 64)
        let id = WorkloadIdentity(namespace: "shop", serviceAccount: "frontend")
        t.add(hash: MeshPKI.sha256Hex(Array(token.utf8)), id)
        #expect(t.check(token) == .valid(id))
        #expect(t.check(token + "x") == .unknown)
        #expect(t.revoke(id) == 1)
        #expect(t.check(token) == .unknown)
        #expect(try TokenTable.newToken() != token)
    }

    @Test func refusesMalformedLines() {
        #expect(throws: ControlError.self) { try TokenTable(text: "abc shop frontend\n") }
        #expect(throws: ControlError.self) { try TokenTable(text: "\(Self.fake("a")) Shop frontend\n") }
        #expect(throws: ControlError.self) { try TokenTable(text: "\(Self.fake("a")) shop\n") }
        #expect((try? TokenTable(text: "\(Self.fake("a")) shop -frontend\n")) == nil)
    }

    @Test func names() {
        #expect(WorkloadIdentity.validName("shop", max: 63))
        #expect(WorkloadIdentity.validName("orders-v1.x", max: 63))
        #expect(!WorkloadIdentity.validName("", max: 63))
        #expect(!WorkloadIdentity.validName("Shop", max: 63))
        #expect(!WorkloadIdentity.validName("shop/x", max: 63))
        #expect(!WorkloadIdentity.validName(String(repeating: "a", count: 64), max: 63))
        #expect(WorkloadIdentity(namespace: "shop", serviceAccount: "orders").spiffeID(trustDomain: "mesh.local")
                == "spiffe://mesh.local/ns/shop/sa/orders")
    }
}

@Suite struct MeshCATests {
    static func tempDir() -> String {
        var t = Array("/tmp/remora-meshca-XXXXXX".utf8CString)
        return t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    @Test func issuesTheTokensIdentityWhateverTheRequestClaims() throws {
        let dir = Self.tempDir()
        var o = MeshCA.Options()
        o.certificateTTL = 600
        let ca = try MeshCA(stateDirectory: dir, options: o, now: 1_000_000)
        let token = try MeshCA.createToken(stateDirectory: dir, WorkloadIdentity(namespace: "shop", serviceAccount: "frontend"))
        let key = try MeshPKI.newKey()
        let csr = try MeshPKI.signingRequest(key: key, commonName: "admin", uri: "spiffe://mesh.local/ns/kube-system/sa/admin")
        let (cert, id) = try ca.issue(csr: csr, token: token, now: 2_000_000)
        #expect(id == WorkloadIdentity(namespace: "shop", serviceAccount: "frontend"))
        #expect(MeshPKI.keyMatches(cert: cert, key: key))
        let v = try #require(MeshPKI.validity(cert))
        #expect(v.notAfter == 2_000_600 && v.notBefore == 2_000_000 - 60)
        // Refusals are counted.
        #expect(throws: ControlError(401, "an identity token is required (header x-remora-identity-token)")) {
            try ca.issue(csr: csr, token: nil, now: 2_000_000)
        }
        #expect(throws: ControlError(403, "unknown identity token")) { try ca.issue(csr: csr, token: "nope", now: 2_000_000) }
        #expect(ca.refused == 2 && ca.issued == 1)
        #expect(throws: ControlError.self) { try ca.issue(csr: "not a csr", token: token, now: 2_000_000) }
        // The same root after a restart.
        let again = try MeshCA(stateDirectory: dir, options: o, now: 3_000_000)
        #expect(again.bundle == ca.bundle)
    }

    @Test func rotationKeepsTwoRootsUntilFinished() throws {
        let dir = Self.tempDir()
        var o = MeshCA.Options()
        o.certificateTTL = 100
        let ca = try MeshCA(stateDirectory: dir, options: o, now: 1_000)
        let oldBundle = ca.bundle
        try ca.rotateStart(now: 1_000, signAfter: 10)
        #expect(ca.bundle.hasSuffix(oldBundle) && ca.bundle.count > oldBundle.count)
        #expect(throws: ControlError.self) { try ca.rotateStart(now: 1_001, signAfter: 0) }
        // Before the new root signs, finishing is refused; certificates the old root signed keep it needed.
        #expect(throws: ControlError.self) { try ca.rotateFinish(now: 1_005, force: true) }
        #expect(throws: ControlError.self) { try ca.rotateFinish(now: 1_050, force: false) }
        // A restart in the middle keeps the rotation.
        let again = try MeshCA(stateDirectory: dir, options: o, now: 1_020)
        #expect(again.bundle == ca.bundle)
        try again.rotateFinish(now: 1_101, force: false)
        #expect(!again.bundle.hasSuffix(oldBundle) && again.bundle.count < ca.bundle.count)
    }
}

@Suite struct MeshCARequestTests {
    @Test func wireFormat() {
        func ok(_ m: String, _ t: String, _ body: String = "") -> ControlRequest? {
            try? ControlRequest.parse(method: m, target: t, body: Array(body.utf8)).get()
        }
        func status(_ m: String, _ t: String, _ body: String = "") -> Int {
            if case .failure(let e) = ControlRequest.parse(method: m, target: t, body: Array(body.utf8)) { return e.status }
            return 0
        }
        #expect(ok("GET", "/v1/ca") == .caStatus)
        #expect(ok("GET", "/v1/ca/bundle") == .caBundle)
        #expect(ok("POST", "/v1/ca/certificate", "PEM") == .caIssue(csr: "PEM"))
        #expect(status("POST", "/v1/ca/certificate") == 400)
        #expect(status("GET", "/v1/ca/certificate") == 405)
        #expect(ok("POST", "/v1/ca/rotate?step=start&sign_after=5") == .caRotate(start: true, signAfter: 5, force: false))
        #expect(ok("POST", "/v1/ca/rotate?step=start") == .caRotate(start: true, signAfter: 90, force: false))
        #expect(ok("POST", "/v1/ca/rotate?step=finish&force=1") == .caRotate(start: false, signAfter: 90, force: true))
        #expect(status("POST", "/v1/ca/rotate?step=later") == 400)
        #expect(status("POST", "/v1/ca/rotate") == 400)
    }

    @Test func ctlCommands() throws {
        #expect(try CtlInvocation.parse(["ca", "status"]).command == .caStatus)
        #expect(try CtlInvocation.parse(["ca", "bundle"]).command == .caBundle)
        #expect(try CtlInvocation.parse(["ca", "rotate", "start", "--sign-after", "2s"]).command
                == .caRotate(start: true, signAfter: 2, force: false))
        #expect(try CtlInvocation.parse(["ca", "rotate", "finish", "--force"]).command
                == .caRotate(start: false, signAfter: nil, force: true))
        #expect(throws: CtlUsageError.self) { try CtlInvocation.parse(["ca", "rotate"]) }
        #expect(throws: CtlUsageError.self) { try CtlInvocation.parse(["ca", "rotate", "finish", "--sign-after", "1s"]) }
    }
}
