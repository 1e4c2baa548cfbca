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

private let clusters = """
    clusters:
      - { name: a, endpoints: ["127.0.0.1:1"] }
      - { name: b, endpoints: ["127.0.0.1:2"] }
    """

@Suite struct SniffConfigTests {
    @Test func tlsListener() throws {
        let c = try parsed("""
            listeners:
              - name: egress
                address: 127.0.0.1:0
                protocol: tls
                sni:
                  - { server_names: [api.example.com, "*.example.org"], cluster: a }
                  - { server_names: [B.local], cluster: b }
                cluster: b
                sniff_timeout: 2s
                max_sniff_bytes: 8KiB
            \(clusters)
            """).get()
        let l = c.listeners[0]
        #expect(l.protocol == .tls)
        #expect(l.sni == [SNIRoute(serverNames: ["api.example.com", "*.example.org"], cluster: "a"),
                          SNIRoute(serverNames: ["B.local"], cluster: "b")])
        #expect(l.cluster == "b")
        #expect(l.sniffTimeout == 2_000)
        #expect(l.maxSniffBytes == 8 * 1024)
    }

    @Test func tlsListenerErrors() {
        let m = messages("""
            listeners:
              - name: egress
                address: 127.0.0.1:0
                protocol: tls
                routes: []
                sni:
                  - { server_names: ["*", api.x], cluster: a }
                  - { server_names: [API.X], cluster: c }
                max_sniff_bytes: 1MiB
              - name: t
                address: 127.0.0.1:0
                protocol: tls
              - name: h
                address: 127.0.0.1:0
                sni: []
              - name: s
                address: 127.0.0.1:0
                protocol: sidecar_outbound
            \(clusters)
            """)
        #expect(m.contains { $0.hasPrefix("5: listeners[0].routes: only allowed on an http listener") })
        #expect(m.contains { $0.hasPrefix("7: listeners[0].sni[0].server_names[0]: expected a host name") })
        #expect(m.contains { $0.hasPrefix("8: listeners[0].sni[1].server_names[0]: duplicate server name \"API.X\"") })
        #expect(m.contains { $0.hasPrefix("8: listeners[0].sni[1].cluster: cluster \"c\" is not defined") })
        #expect(m.contains { $0.hasPrefix("9: listeners[0].max_sniff_bytes:") })
        #expect(m.contains { $0.hasPrefix("10: listeners[1].sni: a tls listener needs sni routes, a default cluster, or both") })
        #expect(m.contains { $0.hasPrefix("15: listeners[2].sni: only allowed on a tls listener") })
        #expect(m.contains { $0.hasPrefix("18: listeners[3].protocol: expected http, tcp or tls") })
    }

    @Test func sidecarSection() throws {
        let c = try parsed("""
            admin: { address: 127.0.0.1:15000 }
            sidecar:
              outbound_port: 15001
              inbound_port: 15006
              passthrough: deny
              sniff_timeout: 50ms
              server_first_ports: [3306]
              services:
                - { name: orders, addresses: [10.96.0.10, "FD00::0010"], port: 8080, cluster: a }
                - name: cache
                  port: 6379
                  cluster: b
                  protocol: tcp
                - name: web
                  port: 80
                  cluster: a
                  routes:
                    - { name: v2, match: { headers: [ { name: x-v, exact: "2" } ] }, backends: [ { cluster: b } ] }
                    - { name: rest, backends: [ { cluster: a } ] }
            \(clusters)
            """).get()
        let names = c.listeners.map(\.name)
        #expect(names == ["sidecar_outbound", "sidecar_outbound_ipv6", "sidecar_inbound", "sidecar_inbound_ipv6",
                          "outbound_orders", "outbound_web"])
        let out = c.listeners[0]
        #expect(out.protocol == .sidecarOutbound && out.address == HostPort(host: "0.0.0.0", port: 15001))
        #expect(c.listeners[1].address == HostPort(host: "::", port: 15001))
        #expect(c.listeners[2].protocol == .sidecarInbound && c.listeners[2].address.port == 15006)
        #expect(out.sniffTimeout == 50)
        let sc = try #require(out.sidecar)
        #expect(!sc.passthrough)
        #expect(sc.serverFirstPorts == [3306])
        #expect(sc.services.map(\.addresses) == [["10.96.0.10", "fd00::10"], [], []])   // canonical text
        #expect(sc.services.map(\.httpListener) == ["outbound_orders", "outbound_cache", "outbound_web"])
        #expect(sc.services[1].protocol == .tcp)
        let orders = c.listeners[4]
        #expect(orders.isInternal && orders.protocol == .http)
        #expect(orders.virtualHosts[0].routes.map(\.name) == ["default"])
        #expect(c.listeners[5].virtualHosts[0].routes.map(\.name) == ["v2", "rest"])
    }

    @Test func sidecarDefaultsAndNoListeners() throws {
        let c = try parsed("""
            sidecar:
            \(clusters)
            """).get()
        #expect(c.sidecar == SidecarConfig())
        #expect(c.listeners.map(\.name) == ["sidecar_outbound", "sidecar_outbound_ipv6", "sidecar_inbound", "sidecar_inbound_ipv6"])
        #expect(c.listeners[0].sniffTimeout == 300)
        #expect(c.listeners[0].sidecar?.passthrough == true)
    }

    @Test func sidecarErrors() {
        let m = messages("""
            listeners:
              - { name: sidecar_inbound, address: 127.0.0.1:0, protocol: tcp, cluster: a }
            sidecar:
              inbound_port: 15001
              passthrough: maybe
              services:
                - { name: x, addresses: [not-an-ip], port: 80, cluster: a }
                - { name: y, port: 80, cluster: nope, protocol: tcp, routes: [] }
                - { name: z, port: 80, cluster: a }
            \(clusters)
            """)
        #expect(m.contains { $0.contains("sidecar.inbound_port: must differ from outbound_port (15001)") })
        #expect(m.contains { $0.hasPrefix("5: sidecar.passthrough: expected allow or deny") })
        #expect(m.contains { $0.hasPrefix("7: sidecar.services[0].addresses[0]: expected an IP address") })
        #expect(m.contains { $0.hasPrefix("8: sidecar.services[1].routes: not allowed with protocol: tcp") })
        #expect(m.contains { $0.hasPrefix("8: sidecar.services[1].cluster: cluster \"nope\" is not defined") })
        #expect(m.contains { $0.hasPrefix("9: sidecar.services[2]: duplicate destination port 80") })
    }

    @Test func sidecarInboundPorts() throws {
        let c = try parsed("""
            sidecar:
              ipv6: false
              inbound:
                - { port: 8080, protocol: http }
                - { port: 9090 }
                - { port: 5432, protocol: tcp }
            """).get()
        #expect(c.sidecar?.inbound == [SidecarInboundPort(port: 8080, protocol: .http), SidecarInboundPort(port: 9090),
                                       SidecarInboundPort(port: 5432, protocol: .tcp)])
        // HTTP listeners for the HTTP and auto ports; a cluster per port, the application on 127.0.0.1.
        #expect(c.listeners.map(\.name) == ["sidecar_outbound", "sidecar_inbound", "inbound_8080", "inbound_9090"])
        #expect(c.listeners[2].isInternal && c.listeners[2].protocol == .http)
        #expect(c.clusters.map(\.name) == ["inbound_8080", "inbound_9090", "inbound_5432"])
        #expect(c.clusters[0].endpoints == [HostPort(host: "127.0.0.1", port: 8080)])
        let inbound = try #require(c.listeners[1].sidecar)
        #expect(inbound.services.map(\.cluster) == ["inbound_8080", "inbound_9090", "inbound_5432"])
        #expect(inbound.services.map(\.httpListener) == ["inbound_8080", "inbound_9090", "inbound_5432"])
        #expect(!inbound.sniffUnknown && inbound.passthrough)
        #expect(c.listeners[0].sidecar?.sniffUnknown == true)
        // Without inbound ports the inbound listener has no routes (bytes to the application).
        #expect(try parsed("sidecar: {}\n").get().listeners.first { $0.protocol == .sidecarInbound }?.sidecar == nil)
    }

    @Test func sidecarInboundErrors() {
        let m = messages("""
            sidecar:
              inbound:
                - { port: 8080 }
                - { port: 8080, protocol: grpc }
                - { port: 15006 }
                - { protocol: http }
            """)
        #expect(m.contains { $0.hasPrefix("4: sidecar.inbound[1]: duplicate inbound port 8080") })
        #expect(m.contains { $0.hasPrefix("4: sidecar.inbound[1].protocol: expected") })
        #expect(m.contains { $0.hasPrefix("5: sidecar.inbound[2].port: 15006 is the sidecar's own listener") })
        #expect(m.contains { $0.contains("sidecar.inbound[3].port") })
        let clash = messages("""
            clusters:
              - { name: inbound_8080, endpoints: ["127.0.0.1:1"] }
            sidecar:
              inbound: [ { port: 8080 } ]
            """)
        #expect(clash.contains { $0.contains("sidecar: the sidecar's listeners and clusters need these names, which are taken: inbound_8080") },
                "\(clash)")
    }

    @Test func addSidecarNameClash() {
        var c = Config(listeners: [ListenerConfig(name: "sidecar_inbound", address: HostPort(host: "127.0.0.1", port: 0))])
        #expect(c.addSidecar(SidecarConfig()) == ["sidecar_inbound"])
        #expect(c.sidecar == nil && c.listeners.count == 1)
    }
}
