import RemoraConfig
import RemoraCore
import Testing

private func parsed(_ yaml: String) -> Result<Config, ConfigErrors> { ConfigLoader.parse(yaml: yaml, file: "t.yaml") }

private func messages(_ yaml: String) -> [String] {
    switch parsed(yaml) {
    case .success(let c): Issue.record("expected errors, got \(c)"); return []
    case .failure(let e): return e.errors.map { "\($0.line): \($0.path): \($0.message)" }
    }
}

/// `sidecar.mtls` (issue 15): the inbound listeners' `tls:`, the mTLS services' clusters' `tls:`,
/// `inbound[].authorization`, and what is refused.
@Suite struct SidecarMTLSConfigTests {
    static let yaml = """
        sidecar:
          ipv6: false
          mtls: { cert: w.pem, key: w-key.pem, ca: ca.pem, mode: strict }
          access_log: { path: /tmp/a.log, format: json }
          services:
            - name: orders
              addresses: [10.96.0.10]
              port: 8080
              cluster: orders
              mtls: true
              identities: ["spiffe://mesh.local/ns/shop/sa/orders"]
              routes: [ { name: r, backends: [ { cluster: orders }, { cluster: orders-v2 } ] } ]
            - { name: plain, port: 9000, cluster: plain }
          inbound:
            - port: 8080
              protocol: http
              authorization:
                rules: [ { name: frontend, from: { principals: ["spiffe://mesh.local/ns/shop/sa/frontend"] } } ]
        clusters:
          - { name: orders, endpoints: ["10.1.0.5:8080"] }
          - { name: orders-v2, endpoints: ["10.1.0.6:8080"] }
          - { name: plain, endpoints: ["10.1.0.7:9000"] }
        """

    @Test func expands() throws {
        let c = try parsed(Self.yaml).get()
        let mtls = SidecarMTLS(cert: "w.pem", key: "w-key.pem", ca: "ca.pem", mode: .strict)
        #expect(c.sidecar?.mtls == mtls)
        let inbound = try #require(c.listeners.first { $0.name == "sidecar_inbound" })
        let tls = try #require(inbound.tls)
        #expect(tls.certificates == [TLSCertificateFiles(cert: "w.pem", key: "w-key.pem")])
        #expect(tls.clientCA == "ca.pem")
        #expect(tls.forwardClientCert)
        #expect(!tls.allowPlaintext)
        #expect(c.listeners.first { $0.name == "sidecar_outbound" }?.tls == nil)
        // ALPN remora-mesh offered to the peer sidecar (its permissive inbound tells it from an app's TLS).
        let want = ClusterTLSConfig(ca: "ca.pem", verifySAN: ["spiffe://mesh.local/ns/shop/sa/orders"], cert: "w.pem", key: "w-key.pem",
                                    alpn: ["remora-mesh"])
        #expect(c.clusters.first { $0.name == "orders" }?.tls == want)
        #expect(c.clusters.first { $0.name == "orders-v2" }?.tls == want)   // a route's backend too
        #expect(c.clusters.first { $0.name == "plain" }?.tls == nil)
        #expect(c.clusters.first { $0.name == "inbound_8080" }?.tls == nil)   // the application: plaintext
        let app = try #require(c.listeners.first { $0.name == "inbound_8080" })
        #expect(app.authorization?.rules.count == 1)
        #expect(c.listeners.first { $0.name == "outbound_orders" }?.authorization == nil)
        let sidecarListeners = ["sidecar_outbound", "sidecar_inbound", "outbound_orders", "outbound_plain", "inbound_8080"]
        #expect(c.listeners.filter { sidecarListeners.contains($0.name) }.allSatisfy { $0.accessLog?.path == "/tmp/a.log" })
        #expect(c.listeners.count == sidecarListeners.count)
    }

    @Test func permissiveByDefault() throws {
        let c = try parsed("""
            sidecar:
              mtls: { cert: w.pem, key: w-key.pem, ca: ca.pem }
            """).get()
        #expect(c.sidecar?.mtls?.mode == .permissive)
        #expect(c.listeners.filter { $0.protocol == .sidecarInbound }.allSatisfy { $0.tls?.allowPlaintext == true })
    }

    @Test func offByDefault() throws {
        let c = try parsed("sidecar: { services: [ { name: s, port: 80, cluster: a } ] }\nclusters: [ { name: a, endpoints: [\"127.0.0.1:1\"] } ]").get()
        #expect(c.sidecar?.mtls == nil)
        #expect(c.listeners.allSatisfy { $0.tls == nil })
        #expect(c.clusters.allSatisfy { $0.tls == nil })
    }

    @Test func refused() {
        #expect(messages("""
            sidecar:
              services:
                - { name: s, port: 80, cluster: a, mtls: true }
            clusters: [ { name: a, endpoints: ["127.0.0.1:1"] } ]
            """) == ["3: sidecar.services[0].mtls: needs sidecar.mtls (the workload certificate, key and mesh CA)"])
        #expect(messages("""
            sidecar:
              mtls: { cert: w.pem, key: k.pem, ca: c.pem }
              services:
                - { name: s, port: 80, cluster: a, mtls: true }
            clusters: [ { name: a, endpoints: ["127.0.0.1:1"], tls: { ca: x.pem } } ]
            """) == ["4: sidecar.services[0].mtls: cluster a has its own tls: (leave it out: mtls gives it the mesh certificate and CA)"])
        #expect(messages("""
            sidecar:
              mtls: { cert: w.pem, key: k.pem, ca: c.pem }
              services:
                - { name: s, port: 80, cluster: a, mtls: true, identities: ["spiffe://m/ns/a/sa/a"] }
                - { name: t, port: 81, cluster: a, mtls: true }
            clusters: [ { name: a, endpoints: ["127.0.0.1:1"] } ]
            """) == ["5: sidecar.services[1].mtls: cluster a is also used by the mtls service s with other identities"])
        #expect(messages("""
            sidecar:
              services:
                - { name: s, port: 80, cluster: a, identities: ["spiffe://m/ns/a/sa/a"] }
            clusters: [ { name: a, endpoints: ["127.0.0.1:1"] } ]
            """) == ["3: sidecar.services[0].identities: only with mtls: true (the peer's certificate is checked for them)"])
        #expect(messages("""
            sidecar:
              mtls: { cert: w.pem, key: k.pem, ca: c.pem, mode: lax }
            """).first?.hasPrefix("2: sidecar.mtls.mode:") == true)
        #expect(messages("""
            sidecar:
              mtls: { cert: w.pem, ca: c.pem }
            """) == ["2: sidecar.mtls.key: missing required key \"key\""])
        #expect(messages("""
            sidecar:
              inbound:
                - { port: 5432, protocol: tcp, authorization: { rules: [ { name: x, from: { principals: [a] } } ] } }
            """).first?.hasPrefix("3: sidecar.inbound[0].authorization: not allowed with protocol: tcp") == true)
    }

    /// `mtls: { from_control: true, ... }`: the files are the identity agent's, `service_account`
    /// names the peer's identity in the trust domain.
    @Test func fromControl() throws {
        let c = try parsed("""
            sidecar:
              ipv6: false
              mtls: { from_control: true, token_file: /etc/remora/t, dir: /run/id/, trust_domain: corp.example, mode: strict,
                      bundle_refresh: 5s }
              services:
                - { name: orders, port: 8080, cluster: orders, service_account: shop/orders }
            clusters: [ { name: orders, endpoints: ["10.1.0.5:8080"] } ]
            """).get()
        let m = try #require(c.sidecar?.mtls)
        #expect(m.fromControl == MeshIdentitySource(tokenFile: "/etc/remora/t", directory: "/run/id", trustDomain: "corp.example",
                                                    bundleRefresh: 5_000))
        #expect(m.cert == "/run/id/identity.pem" && m.key == "/run/id/identity.pem" && m.ca == "/run/id/bundle.pem")
        #expect(m.mode == .strict)
        let tls = try #require(c.clusters.first { $0.name == "orders" }?.tls)
        #expect(tls.verifySAN == ["spiffe://corp.example/ns/shop/sa/orders"] && tls.alpn == ["remora-mesh"])
        #expect(c.sidecar?.services.first?.mtls == true)
        // Defaults: /var/run/remora/identity, mesh.local, 30 s, the run's --control.
        let d = try parsed("sidecar:\n  mtls: { from_control: true, token_file: t }\n").get()
        #expect(d.sidecar?.mtls?.fromControl == MeshIdentitySource(tokenFile: "t"))
        #expect(d.sidecar?.mtls?.mode == .permissive)
        #expect(d.listeners.filter { $0.protocol == .sidecarInbound }.allSatisfy { $0.tls?.meshPeersOnly == true })
    }

    @Test func fromControlRefused() {
        #expect(messages("""
            sidecar:
              mtls: { from_control: true, token_file: t, cert: c.pem }
            """) == ["2: sidecar.mtls.cert: not with from_control: true (the control server issues the certificate and the bundle)"])
        #expect(messages("""
            sidecar:
              mtls: { from_control: true }
            """) == ["2: sidecar.mtls.token_file: missing required key \"token_file\""])
        #expect(messages("""
            sidecar:
              mtls: { cert: w.pem, key: k.pem, ca: c.pem, token_file: t }
            """) == ["2: sidecar.mtls.token_file: only with from_control: true"])
        #expect(messages("""
            sidecar:
              mtls: { from_control: true, token_file: t, control: "https://x:1" }
            """).first?.hasPrefix("2: sidecar.mtls.control: expected http://HOST:PORT") == true)
        #expect(messages("""
            sidecar:
              mtls: { from_control: true, token_file: t }
              services:
                - { name: s, port: 80, cluster: a, service_account: Shop }
            clusters: [ { name: a, endpoints: ["127.0.0.1:1"] } ]
            """).first?.hasPrefix("4: sidecar.services[0].service_account: expected NAMESPACE/SERVICE_ACCOUNT") == true)
        #expect(messages("""
            sidecar:
              mtls: { from_control: true, token_file: t }
              services:
                - { name: s, port: 80, cluster: a, service_account: shop/a, identities: [x] }
            clusters: [ { name: a, endpoints: ["127.0.0.1:1"] } ]
            """) == ["4: sidecar.services[0].identities: not with service_account (it names the identity)"])
    }
}
