import RemoraControl
import Testing

private let scrape1 = """
# TYPE envoy_route_upstream_rq_total counter
envoy_route_upstream_rq_total{envoy_http_conn_manager_prefix="web",envoy_route_name="api.v1",envoy_cluster_name="stable"} 100
envoy_route_upstream_rq_total{envoy_http_conn_manager_prefix="web",envoy_route_name="api.v1",envoy_cluster_name="canary"} 10
envoy_route_upstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="web",envoy_route_name="api.v1",envoy_cluster_name="canary"} 1
envoy_route_upstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="web",envoy_route_name="api.v1",envoy_cluster_name="canary"} 9
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="web"} 110
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="1"} 50
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="5"} 100
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="10"} 100
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="+Inf"} 100
"""

private let scrape2 = """
envoy_route_upstream_rq_total{envoy_http_conn_manager_prefix="web",envoy_route_name="api.v1",envoy_cluster_name="stable"} 180
envoy_route_upstream_rq_total{envoy_http_conn_manager_prefix="web",envoy_route_name="api.v1",envoy_cluster_name="canary"} 30
envoy_route_upstream_rq_xx{envoy_response_code_class="5",envoy_http_conn_manager_prefix="web",envoy_route_name="api.v1",envoy_cluster_name="canary"} 3
envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="web"} 210
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="1"} 50
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="5"} 140
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="10"} 180
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="stable",le="+Inf"} 180
"""

@Suite struct CtlTopTests {
    @Test func parsesCommand() throws {
        let inv = try CtlInvocation.parse(["top", "http://127.0.0.1:9901", "--interval", "2s", "--count", "3"])
        #expect(inv.command == .top(admin: ControlURL(host: "127.0.0.1", port: 9901), interval: 2000, count: 3))
        #expect(throws: CtlUsageError.self) { try CtlInvocation.parse(["top"]) }
        #expect(throws: CtlUsageError.self) { try CtlInvocation.parse(["top", "nope"]) }
        #expect(throws: CtlUsageError.self) { try CtlInvocation.parse(["top", "http://h:1", "--interval", "1ms"]) }
    }

    @Test func rowsOverOneInterval() {
        let a = TopSample.parse(scrape1), b = TopSample.parse(scrape2)
        #expect(b.requests == 210)
        let rows = Top.rows(a, b, seconds: 2)
        #expect(rows.map(\.key.cluster) == ["canary", "stable"])   // by listener, route, cluster
        let canary = rows[0], stable = rows[1]
        #expect(canary.key.route == "api.v1" && canary.rps == 10 && stable.rps == 40)
        #expect(canary.share == 20 && stable.share == 80)
        #expect(canary.success == 90 && stable.success == 100)
        // The interval's latency: 40 in (1, 5], 40 in (5, 10]: p50 at the top of the first, p99 near 10.
        #expect(stable.p50 == 5)
        #expect(abs(stable.p99! - 9.9) < 1e-9)
        #expect(canary.p50 == nil)   // no buckets for that cluster
        let table = Top.table(rows, title: "t")
        #expect(table.contains("web/api.v1  stable   80.0%  40.0  100.00%     5.0     9.9"), "\(table)")
    }

    @Test func quantileEdges() {
        #expect(Top.quantile([], 0.5) == nil)
        #expect(Top.quantile([(le: 1, count: 0), (le: .infinity, count: 0)], 0.5) == nil)
        #expect(Top.quantile([(le: 1, count: 0), (le: .infinity, count: 4)], 0.99) == 1)   // above the last bound
        #expect(Top.quantile([(le: 10, count: 10), (le: .infinity, count: 10)], 0.5) == 5)
    }
}
