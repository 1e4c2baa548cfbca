import RemoraAdmin
import RemoraCore
import Testing

/// The Prometheus, JSON and text renderers on a hand-made snapshot (no proxy).
@Suite struct StatsRenderersTests {
    func snapshot() -> StatsSnapshot {
        var s = StatsSnapshot()
        s.add(scope: "cluster", name: "app", stat: "upstream_rq_total", value: 7)
        s.samples.append(.init(scope: "cluster", name: "app", stat: "upstream_rq_5xx", value: 2))
        s.samples.append(.init(scope: "listener", name: "web", stat: "downstream_rq_active", value: 1, kind: .gauge))
        s.samples.append(.init(scope: "route", name: "web.r.app", stat: "upstream_rq_2xx", value: 5, nameParts: ["web", "r", "app"]))
        var v = HistogramValue()
        v.buckets[0] = 3   // ≤ 0.5 ms
        v.buckets[2] = 1   // (1, 5] ms
        v.buckets[HistogramBuckets.count] = 1   // above 1 h
        v.sumMicros = 2_500
        s.histograms.append(.init(scope: "cluster", name: "app", nameParts: ["app"], stat: "upstream_rq_time", help: "t", value: v))
        s.series.append(.init(destination: "app", key: RequestSeriesKey(status: 503, grpcStatus: -1, grpc: false, flags: [.UF, .URX]),
                              value: v))
        return s
    }

    @Test func prometheusNamesLabelsAndBuckets() {
        let out = StatsRenderers.prometheus(snapshot(), node: "edge\"1")
        #expect(out.contains("# TYPE envoy_cluster_upstream_rq_total counter\nenvoy_cluster_upstream_rq_total{envoy_cluster_name=\"app\"} 7\n"))
        #expect(out.contains("envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"app\"} 2\n"))
        #expect(out.contains("# TYPE envoy_http_downstream_rq_active gauge\n"))
        #expect(out.contains("envoy_route_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"web\",envoy_route_name=\"r\",envoy_cluster_name=\"app\"} 5"))
        #expect(out.contains("# TYPE envoy_cluster_upstream_rq_time histogram\n"))
        #expect(out.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"app\",le=\"0.5\"} 3\n"))
        #expect(out.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"app\",le=\"1\"} 3\n"))
        #expect(out.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"app\",le=\"5\"} 4\n"))
        #expect(out.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"app\",le=\"3600000\"} 4\n"))
        #expect(out.contains("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"app\",le=\"+Inf\"} 5\n"))
        #expect(out.contains("envoy_cluster_upstream_rq_time_sum{envoy_cluster_name=\"app\"} 2.5\n"))
        #expect(out.contains("envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"app\"} 5\n"))
        #expect(out.contains("istio_requests_total{reporter=\"source\",source_workload=\"edge\\\"1\",destination_service=\"app\",destination_workload=\"app\",request_protocol=\"http\",response_code=\"503\",grpc_response_status=\"\",response_flags=\"UF,URX\",source_principal=\"unknown\",destination_principal=\"unknown\",connection_security_policy=\"none\"} 5\n"))
        // One HELP and one TYPE per family, even when several stats map to it.
        #expect(out.split(separator: "\n").filter { $0.hasPrefix("# TYPE envoy_cluster_upstream_rq_xx ") }.count == 1)
    }

    @Test func seriesKeyRoundTrip() {
        let k = RequestSeriesKey(status: 200, grpcStatus: 14, grpc: true, flags: [.DC])
        #expect(k.status == 200 && k.grpcStatus == 14 && k.isGRPC && k.flags == [.DC] && !k.isOverflow)
        #expect(RequestSeriesKey(status: 0, grpcStatus: -1, grpc: false, flags: []).raw != 0)
        #expect(k.sourcePrincipal == 0 && k.destinationPrincipal == 0 && !k.mutualTLS)
    }

    /// Peer identities: interned once per connection, carried in the series key (7 bits each, and
    /// the mutual-TLS bit), rendered as Istio's labels; over the cap they share `other`.
    @Test func peerIdentitiesInTheSeries() {
        let ids = PeerIdentities()
        let a = ids.intern("spiffe://mesh.local/ns/shop/sa/frontend"), b = ids.intern("app.shop.svc")
        #expect(a == 1 && b == 2 && ids.intern("spiffe://mesh.local/ns/shop/sa/frontend") == 1 && ids.intern(nil) == 0 && ids.intern("") == 0)
        #expect(ids.label(a) == "spiffe://mesh.local/ns/shop/sa/frontend" && ids.label(0) == "unknown")
        let k = RequestSeriesKey(status: 503, grpcStatus: 14, grpc: true, flags: [.UF, .URX, .UAEX],
                                 downstream: PeerTag.mutualTLS | 126, upstream: 127)
        #expect(k.status == 503 && k.grpcStatus == 14 && k.isGRPC && k.flags == [.UF, .URX, .UAEX])
        #expect(k.sourcePrincipal == 126 && k.destinationPrincipal == 127 && k.mutualTLS && !k.isOverflow)
        #expect(RequestSeriesKey(status: 200, grpcStatus: -1, grpc: false, flags: [], downstream: 3, upstream: 0).mutualTLS == false)
        for i in 3...PeerIdentities.capacity { _ = ids.intern("id-\(i)") }
        #expect(ids.intern("one too many") == PeerIdentities.overflow && ids.intern("and another") == PeerIdentities.overflow)
        #expect(ids.overflowed == 2 && ids.label(PeerIdentities.overflow) == "other")
        #expect(ids.intern("id-5") == 5, "known identities keep theirs")
    }

    @Test func quantilesAndText() {
        let s = snapshot()
        #expect(s.histograms[0].value.quantileMillis(0.5) == 0.5 * 2.5 / 3 * 1)   // rank 2.5 of 3 in (0, 0.5]
        let text = StatsRenderers.text(s)
        #expect(text.contains("cluster.app.upstream_rq_total 7\n"))
        #expect(!text.contains("upstream_rq_time"))   // histograms: JSON and Prometheus only
        let json = StatsRenderers.json(s)
        #expect(json.contains("{\"name\":\"cluster.app.upstream_rq_time\",\"count\":5,\"sum_ms\":2.5"))
        #expect(json.contains("\"response_flags\":\"UF,URX\""))
    }
}
