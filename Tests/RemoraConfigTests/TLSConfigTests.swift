import RemoraConfig
import RemoraCore
import Testing

/// `tls:` on listeners and clusters (docs/config.md, docs/tls.md).
@Suite struct TLSConfigTests {
    func parse(_ yaml: String) -> Result<Config, ConfigErrors> { ConfigLoader.parse(yaml: yaml, file: "t.yaml") }

    func config(listenerTLS: String = "", clusterTLS: String = "") -> String {
        """
        listeners:
          - name: web
            address: 127.0.0.1:1
        \(listenerTLS.isEmpty ? "" : "    tls: \(listenerTLS)")
            routes: [ { name: all, backends: [ { cluster: app } ] } ]
        clusters:
          - name: app
            endpoints: [ 127.0.0.1:2 ]
        \(clusterTLS.isEmpty ? "" : "    tls: \(clusterTLS)")
        """
    }

    func errors(_ yaml: String) -> [ConfigError] {
        guard case .failure(let e) = parse(yaml) else { Issue.record("accepted:\n\(yaml)"); return [] }
        return e.errors
    }

    @Test func listenerDefaultsAndFields() throws {
        let c = try parse(config(listenerTLS: "{ certificates: [ { cert: a.pem, key: a-key.pem } ] }")).get()
        let t = try #require(c.listeners[0].tls)
        #expect(t.certificates == [TLSCertificateFiles(cert: "a.pem", key: "a-key.pem")])
        #expect(t.alpn == ["h2", "http/1.1"])
        #expect(t.clientCA == nil && !t.forwardClientCert)
        #expect(t.minVersion == .tls12 && t.ticketKeyRotation == 3_600_000 && t.closeExpired)
        let off = try parse(config(listenerTLS: "{ certificates: [ { cert: a.pem, key: b } ], close_expired: false }")).get()
        #expect(off.listeners[0].tls?.closeExpired == false)
        #expect(t.allowPlaintext == false)
        let mixed = try parse(config(listenerTLS: "{ certificates: [ { cert: a.pem, key: b } ], allow_plaintext: true }")).get()
        #expect(mixed.listeners[0].tls?.allowPlaintext == true)
        let m = try parse(config(listenerTLS: """
            { certificates: [ { cert: a.pem, key: a.key }, { cert: b.pem, key: b.key } ], alpn: [ http/1.1 ], \
            client_ca: ca.pem, min_version: "1.3", ticket_key_rotation: 10m }
            """)).get().listeners[0].tls
        #expect(m == ListenerTLSConfig(certificates: [.init(cert: "a.pem", key: "a.key"), .init(cert: "b.pem", key: "b.key")],
                                       alpn: ["http/1.1"], clientCA: "ca.pem", minVersion: .tls13, ticketKeyRotation: 600_000))
        #expect(m?.forwardClientCert == true)   // on by default with client_ca
    }

    @Test func listenerErrorsNameTheField() {
        let cases: [(String, String, String)] = [
            ("{ alpn: [ h2 ] }", "listeners[0].tls.certificates", "missing required key"),
            ("{ certificates: [] }", "listeners[0].tls.certificates", "at least one certificate"),
            ("{ certificates: [ { cert: a.pem } ] }", "listeners[0].tls.certificates[0].key", "missing required key"),
            ("{ certificates: [ { cert: a.pem, key: b } ], alpn: [ h3 ] }", "listeners[0].tls.alpn[0]", "h2 or http/1.1"),
            ("{ certificates: [ { cert: a.pem, key: b } ], min_version: \"1.1\" }", "listeners[0].tls.min_version", "1.2 or 1.3"),
            ("{ certificates: [ { cert: a.pem, key: b } ], ticket_key_rotation: 1s }", "listeners[0].tls.ticket_key_rotation", "between"),
            ("{ certificates: [ { cert: a.pem, key: b } ], sni: x }", "listeners[0].tls.sni", "unknown key"),
            ("{ certificates: [ { cert: a.pem, key: b } ], allow_plaintext: sometimes }", "listeners[0].tls.allow_plaintext", ""),
        ]
        for (tls, path, message) in cases {
            let e = errors(config(listenerTLS: tls))
            #expect(e.contains { $0.path == path && $0.message.contains(message) && $0.line == 4 }, "\(tls): \(e)")
        }
    }

    @Test func cluster() throws {
        let t = try parse(config(clusterTLS: """
            { ca: ca.pem, server_name: app.shop.svc, verify_san: [ "spiffe://mesh.local/ns/shop/sa/app", "*.shop.svc" ], \
            cert: s.pem, key: s.key, alpn: [ http/1.1 ], min_version: "1.3" }
            """)).get().clusters[0].tls
        #expect(t == ClusterTLSConfig(ca: "ca.pem", serverName: "app.shop.svc",
                                      verifySAN: ["spiffe://mesh.local/ns/shop/sa/app", "*.shop.svc"], cert: "s.pem",
                                      key: "s.key", alpn: ["http/1.1"], minVersion: .tls13))
        #expect(try parse(config(clusterTLS: "{}")).get().clusters[0].tls == ClusterTLSConfig())
        #expect(ClusterTLSConfig().closeExpired)
        #expect(try parse(config(clusterTLS: "{ close_expired: false }")).get().clusters[0].tls?.closeExpired == false)
        #expect(errors(config(clusterTLS: "{ cert: s.pem }")).contains { $0.message.contains("cert and key go together") })
        #expect(errors(config(clusterTLS: "{ server_name: \"a b\" }")).contains { $0.path == "clusters[0].tls.server_name" })
        #expect(errors(config(clusterTLS: "{ verify_san: [] }")).contains { $0.path == "clusters[0].tls.verify_san" })
    }

    /// `protocol: auto` (the server's ALPN answer picks), explicit or implied by a TLS `alpn` offering both.
    @Test func autoProtocol() throws {
        func proto(_ yaml: String) throws -> ClusterConfig { try parse(yaml).get().clusters[0] }
        let implied = try proto(config(clusterTLS: "{ alpn: [ h2, http/1.1 ] }"))
        #expect(implied.protocol == .auto && implied.tls?.alpn == ["h2", "http/1.1"])
        #expect(try proto(config(clusterTLS: "{ alpn: [ http/1.1, h2 ] }")).protocol == .auto)
        #expect(try proto(config(clusterTLS: "{ alpn: [ http/1.1 ] }")).protocol == .http1)
        #expect(try proto(config(clusterTLS: "{}")).protocol == .http1)
        let explicit = try proto(config(clusterTLS: "{ ca: ca.pem }").replacing("    endpoints:", with: "    protocol: auto\n    endpoints:"))
        #expect(explicit.protocol == .auto && explicit.tls?.alpn == ["h2", "http/1.1"], "auto offers both by default")
        let noTLS = errors(config().replacing("    endpoints:", with: "    protocol: auto\n    endpoints:"))
        #expect(noTLS.contains { $0.path == "clusters[0].protocol" && $0.message.contains("auto needs tls") && $0.line == 8 }, "\(noTLS)")
        let one = errors(config(clusterTLS: "{ alpn: [ h2 ] }").replacing("    endpoints:", with: "    protocol: auto\n    endpoints:"))
        #expect(one.contains { $0.path == "clusters[0].tls.alpn" && $0.message.contains("both h2 and http/1.1") }, "\(one)")
        // http2 settings go with auto too (they apply to its h2 connections).
        #expect(try proto(config(clusterTLS: "{ alpn: [ h2, http/1.1 ] }").replacing(
            "    endpoints:", with: "    http2: { max_concurrent_streams: 50 }\n    endpoints:")).http2.maxConcurrentStreams == 50)
    }

    @Test func identity() {
        let both = PeerIdentity(sanLines: "D frontend.shop\nU https://x/y\nU spiffe://mesh.local/ns/shop/sa/frontend\nD b.shop\n")
        #expect(both.uris == ["https://x/y", "spiffe://mesh.local/ns/shop/sa/frontend"] && both.dns == ["frontend.shop", "b.shop"])
        #expect(both.principal == "spiffe://mesh.local/ns/shop/sa/frontend")   // SPIFFE first, whatever the order
        #expect(PeerIdentity(uris: ["https://x"], dns: ["a.shop"]).principal == "a.shop")
        #expect(PeerIdentity().principal == nil)
        let xfcc = both.forwardedClientCert(by: "spiffe://mesh.local/ns/shop/sa/web", hash: "ab12")
        #expect(xfcc == "By=spiffe://mesh.local/ns/shop/sa/web;Hash=ab12;URI=https://x/y;DNS=frontend.shop;DNS=b.shop")
        #expect(PeerIdentity(uris: ["spiffe://a/b;c=\"d\""]).forwardedClientCert(by: nil, hash: "00")
                == "Hash=00;URI=\"spiffe://a/b;c=\\\"d\\\"\"")
    }

    @Test func sanMatching() {
        let id = PeerIdentity(uris: ["spiffe://mesh.local/ns/shop/sa/app"], dns: ["*.shop.svc", "App.Example.com"])
        #expect(id.carries("spiffe://mesh.local/ns/shop/sa/app"))
        #expect(!id.carries("spiffe://mesh.local/ns/shop/sa/ap"))
        #expect(id.carries("db.shop.svc") && !id.carries("a.b.shop.svc") && !id.carries("shop.svc"))
        #expect(id.carries("app.example.com"))
        #expect(ALPN.wire(["h2", "http/1.1"]) == [2, 0x68, 0x32, 8] + Array("http/1.1".utf8))
    }
}
