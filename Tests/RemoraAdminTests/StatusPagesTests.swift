import RemoraAdmin
import Testing

@Suite struct StatusPagesTests {
    let clusters = [ClusterStatus(name: "app", lb: "peak_ewma", fields: [StatusField("rq_active", 2)],
                                  endpoints: [HostStatus(address: "10.0.0.1:80", weight: 3),
                                              HostStatus(address: "10.0.0.2:80", weight: 1, failedHealthCheck: true, ejected: true,
                                                             fields: [StatusField("rq_active", 1)])])]

    @Test func clustersText() {
        #expect(StatusPages.clustersText(clusters) == """
            app::lb::peak_ewma
            app::rq_active::2
            app::10.0.0.1:80::health_flags::healthy
            app::10.0.0.1:80::weight::3
            app::10.0.0.2:80::health_flags::/failed_active_hc/failed_outlier_check
            app::10.0.0.2:80::weight::1
            app::10.0.0.2:80::rq_active::1

            """)
    }

    @Test func clustersJSON() {
        let j = StatusPages.clustersJSON(clusters)
        #expect(j.hasPrefix("{\"cluster_statuses\":[{\"name\":\"app\",\"lb\":\"peak_ewma\",\"stats\":{\"rq_active\":2},\"host_statuses\":["))
        #expect(j.contains("{\"address\":\"10.0.0.2:80\",\"weight\":1,\"healthy\":false,\"health_flags\":\"/failed_active_hc/failed_outlier_check\","
                           + "\"failed_active_health_check\":true,\"failed_outlier_check\":true,\"stats\":{\"rq_active\":1}}"))
    }

    @Test func routes() {
        let r = [RouteStatus(listener: "web", virtualHost: "default", name: "api", match: "prefix /api", action: "forward",
                             backends: [RouteBackendStatus(cluster: "v1", weight: 90, requests: 900),
                                        RouteBackendStatus(cluster: "v\"2", weight: 10, requests: 100)])]
        #expect(StatusPages.routesText(r).contains("web::default::api::backend::v1::weight::90::requests::900::share::90.0%\n"))
        #expect(StatusPages.routesJSON(r) == "{\"routes\":[{\"listener\":\"web\",\"virtual_host\":\"default\",\"name\":\"api\","
                + "\"match\":\"prefix /api\",\"action\":\"forward\",\"backends\":[{\"cluster\":\"v1\",\"weight\":90,\"requests\":900},"
                + "{\"cluster\":\"v\\\"2\",\"weight\":10,\"requests\":100}]}]}\n")
    }
}
