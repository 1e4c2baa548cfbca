import Testing
import RemoraCore
import RemoraPolicy
@testable import RemoraConfig

@Suite struct ResilienceConfigTests {
    func parse(_ route: String) -> Result<Config, ConfigErrors> {
        ConfigLoader.parse(yaml: """
        listeners:
          - name: web
            address: 127.0.0.1:0
            routes:
              - name: a
                backends: [ { cluster: app } ]
                \(route)
        clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ] } ]
        """, file: "t.yaml")
    }

    func forward(_ route: String) -> ForwardAction? {
        guard case .success(let c) = parse(route), case .forward(let f) = c.listeners[0].virtualHosts[0].routes[0].action else { return nil }
        return f
    }

    func errors(_ route: String) -> [String] {
        guard case .failure(let e) = parse(route) else { return [] }
        return e.errors.map(\.message)
    }

    @Test func faultFields() {
        let f = forward("fault: { delay: { fixed: 2s, percent: 10 }, abort: { status: 503, percent: 5 }, only_with_header: X-Remora-Fault }")?.fault
        #expect(f == FaultPolicy(delay: 2000, delayShare: 100_000, abortStatus: 503, abortShare: 50_000, onlyWithHeader: "x-remora-fault"))
        let g = forward("fault: { abort: { grpc_status: 14, percent: 0.5 } }")?.fault
        #expect(g?.abortGRPCStatus == 14 && g?.abortStatus == 503 && g?.abortShare == 5_000 && g?.delay == 0)
        #expect(forward("retry: { attempts: 2 }")?.fault == nil)
    }

    @Test func faultMistakes() {
        #expect(errors("fault: {}").contains { $0.contains(#"expected "delay", "abort" or both"#) })
        #expect(errors("fault: { abort: { percent: 5 } }").contains { $0.contains(#""status", "grpc_status" or both"#) })
        #expect(errors("fault: { abort: { status: 503, percent: 101 } }").contains { $0.contains("percentage") })
        #expect(errors("fault: { delay: { percent: 10 } }").contains { $0.contains(#"missing required key "fixed""#) })
        #expect(errors("fault: { abort: { status: 99, percent: 1 } }").contains { $0.contains("between 200 and 599") })
        #expect(errors("fault: { abort: { grpc_status: 0, percent: 1 } }").contains { $0.contains("between 1 and 16") })
    }

    @Test func rateLimitFields() {
        let r = forward("rate_limit: { per_second: 100, burst: 200 }")?.rateLimit
        #expect(r == RateLimitPolicy(perSecond: 100, burst: 200))
        #expect(forward("rate_limit: { per_second: 50 }")?.rateLimit?.burst == 50)
        #expect(errors("rate_limit: { burst: 5 }").contains { $0.contains(#"missing required key "per_second""#) })
        #expect(errors("rate_limit: { per_second: 0 }").contains { $0.contains("between 1 and 1000000") })
    }

    @Test func hedgeAfter() {
        #expect(forward("retry: { attempts: 2, hedge_after: 50ms }")?.retry?.hedgeAfter == 50)
        #expect(forward("retry: { attempts: 2 }")?.retry?.hedgeAfter == 0)
    }

    @Test func onlyOnForwardingRoutes() {
        let yaml = """
        listeners:
          - name: web
            address: 127.0.0.1:0
            routes:
              - name: a
                direct_response: { status: 200 }
                rate_limit: { per_second: 1 }
                fault: { abort: { status: 503, percent: 1 } }
        clusters: []
        """
        guard case .failure(let e) = ConfigLoader.parse(yaml: yaml, file: "t.yaml") else { Issue.record("accepted"); return }
        #expect(e.errors.filter { $0.message == "only allowed with backends" }.count == 2)
    }
}

/// Tunnels (issue 18): `upgrade:` per route, `tunnel_idle_timeout` and `connect:` per listener.
@Suite struct TunnelConfigTests {
    func parse(listener: String = "", route: String = "") -> Result<Config, ConfigErrors> {
        ConfigLoader.parse(yaml: """
        listeners:
          - name: web
            address: 127.0.0.1:0
            \(listener)
            routes:
              - name: a
                backends: [ { cluster: app } ]
                \(route)
        clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ] } ]
        """, file: "t.yaml")
    }

    func errors(_ r: Result<Config, ConfigErrors>) -> [String] {
        guard case .failure(let e) = r else { return [] }
        return e.errors.map { "\($0)" }
    }

    @Test func defaults() throws {
        let c = try parse().get()
        #expect(c.listeners[0].tunnelIdleTimeout == 300_000 && c.listeners[0].connect == nil)
        guard case .forward(let f) = c.listeners[0].virtualHosts[0].routes[0].action else { Issue.record("forward"); return }
        #expect(f.upgrade == [.websocket], "WebSocket is on by default")
    }

    @Test func fields() throws {
        let c = try parse(listener: "tunnel_idle_timeout: 30s\n    connect: { cluster: app }", route: "upgrade: []").get()
        #expect(c.listeners[0].tunnelIdleTimeout == 30_000 && c.listeners[0].connect == ConnectConfig(cluster: "app"))
        guard case .forward(let f) = c.listeners[0].virtualHosts[0].routes[0].action else { Issue.record("forward"); return }
        #expect(f.upgrade.isEmpty)
    }

    @Test func mistakesNameTheLineAndField() {
        let bad = errors(parse(route: "upgrade: [ spdy ]"))
        #expect(bad.contains { $0.contains("t.yaml:8") && $0.contains("upgrade[0]") && $0.contains("websocket") }, "\(bad)")
        let noCluster = errors(parse(listener: "connect: { cluster: nope }"))
        #expect(noCluster.contains { $0.contains("connect.cluster") && $0.contains(#"cluster "nope" is not defined"#) }, "\(noCluster)")
        let tcp = errors(ConfigLoader.parse(yaml: """
        listeners: [ { name: t, address: 127.0.0.1:0, protocol: tcp, cluster: app, connect: { cluster: app } } ]
        clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ] } ]
        """, file: "t.yaml"))
        #expect(tcp.contains { $0.contains("connect") && $0.contains("only allowed on an http listener") }, "\(tcp)")
    }
}

extension TunnelConfigTests {
    @Test func grpcWeb() throws {
        let c = try parse(route: "grpc_web: { allow_origins: [ \"https://a.example\" ] }").get()
        guard case .forward(let f) = c.listeners[0].virtualHosts[0].routes[0].action else { Issue.record("forward"); return }
        #expect(f.grpcWeb == GRPCWebConfig(allowOrigins: ["https://a.example"]))
        #expect(f.grpcWeb?.allows("https://a.example") == true && f.grpcWeb?.allows("https://b.example") == false)
        let plain = try parse(route: "grpc_web: {}").get()
        guard case .forward(let g) = plain.listeners[0].virtualHosts[0].routes[0].action else { Issue.record("forward"); return }
        #expect(g.grpcWeb == GRPCWebConfig())
        #expect(errors(parse(route: "grpc_web: { origins: [x] }")).contains { $0.contains("grpc_web.origins") })
    }
}
