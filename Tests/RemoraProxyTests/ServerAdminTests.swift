import RemoraAdmin
import RemoraConfig
import RemoraCore
@testable import RemoraProxy
import Testing

/// The Server's side of the admin seam (Server+Admin.swift), driven through the admin router
/// without sockets or workers.
@Suite struct ServerAdminTests {
    let yaml = """
        listeners:
          - name: web
            address: 127.0.0.1:0
            routes:
              - name: all
                backends: [ { cluster: app } ]
        clusters:
          - name: app
            endpoints: [ 127.0.0.1:1 ]
        """

    func config() throws -> Config { try ConfigLoader.parse(yaml: yaml, file: "test.yaml").get() }

    func get(_ server: Server, _ path: String, method: String = "GET") -> LocalHTTPServer.Response {
        AdminRouter(access: LocalRequestGuard(token: nil))
            .respond(to: .init(method: method, target: path, headers: [("host", "127.0.0.1")]), target: server)
    }

    @Test func beforeStart() throws {
        let server = Server(config: try config(), source: yaml)
        #expect(server.readiness == .starting)
        let ready = get(server, "/ready")
        #expect(ready.status == 503 && ready.body == "starting\n")
        #expect(get(server, "/config_dump").body == "# version 1\n" + yaml)
        #expect(get(server, "/stats").body == "server.workers 0\nserver.config_version 1\nserver.draining 0\nserver.overload_level 0\nserver.overload_rss_bytes 0\n")
        server.awaitingControl = true
        #expect(get(server, "/ready").body == "waiting for the control server\n")
        server.ready = true
        server.awaitingControl = false
        #expect(get(server, "/ready").body == "ready\n")
        #expect(server.loop.close())   // never run: nothing was opened on it
    }

    /// Every listener, cluster and route stat, summed over workers, in the order /stats has always had.
    @Test func statsSumWorkersInOrder() throws {
        let snap = try Snapshot(config: try config())
        let registry = StatRegistry(workers: 2)
        let stats = registry.stats(for: snap)
        stats[0].listeners[0].add(.downstream_rq_total, 2)
        stats[1].listeners[0].add(.downstream_rq_total, 3)
        stats[1].clusters[0].inc(.upstream_cx_connect_fail)
        stats[0].routeBackends[0][0].inc(.upstream_rq_5xx)
        var out = StatsSnapshot()
        registry.collect(snap, into: &out)
        let lines = StatsRenderers.text(out).split(separator: "\n")
        #expect(lines.count == ListenerStat.allCases.count + ClusterStat.allCases.count + RouteBackendStat.allCases.count)
        #expect(lines.first == "listener.web.downstream_cx_total 0")
        #expect(lines.contains("listener.web.downstream_rq_total 5"))
        #expect(lines.contains("cluster.app.upstream_cx_connect_fail 1"))
        #expect(lines.contains("route.web.all.app.upstream_rq_5xx 1"))
        #expect(lines.last == "route.web.all.app.upstream_rq_5xx 1")
        let firstCluster = lines.firstIndex { $0.hasPrefix("cluster.") }!
        #expect(firstCluster == ListenerStat.allCases.count)
    }
}
