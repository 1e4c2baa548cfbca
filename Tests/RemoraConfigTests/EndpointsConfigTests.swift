import Testing
import RemoraCore
import RemoraPolicy
@testable import RemoraConfig

/// Issue 12's cluster fields: weights, lb, hash_on, circuit_breaker, outlier_detection, panic_threshold.
@Suite struct EndpointsConfigTests {
    let base = "listeners: [ { name: web, address: 127.0.0.1:0, routes: [ { name: a, backends: [ { cluster: app } ] } ] } ]\n"

    func load(_ clusters: String) -> Result<Config, ConfigErrors> {
        ConfigLoader.parse(yaml: base + "clusters:\n" + clusters, file: "t.yaml")
    }

    func cluster(_ yaml: String) -> ClusterConfig? {
        if case .success(let c) = load(yaml) { return c.clusters[0] }
        return nil
    }

    func error(_ yaml: String) -> String {
        if case .failure(let e) = load(yaml) { return e.errors.map(\.message).joined(separator: "; ") }
        return ""
    }

    @Test func defaults() {
        let c = cluster("  - { name: app, endpoints: [ 127.0.0.1:1, 127.0.0.1:2 ] }")
        #expect(c?.lb == .peakEWMA && c?.endpointWeights == [] && c?.weight(ofEndpoint: 1) == 1)
        #expect(c?.hashOn == nil && c?.circuitBreaker == nil && c?.outlierDetection == nil && c?.panicThreshold == 50)
    }

    @Test func weightsAndBalancers() {
        let c = cluster("""
          - name: app
            endpoints: [ 127.0.0.1:1, { address: "127.0.0.1:2", weight: 3 } ]
            lb: maglev
            hash_on: { cookie: session }
        """)
        #expect(c?.endpointWeights == [1, 3] && c?.lb == .maglev && c?.hashOn == .cookie("session"))
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], lb: ring_hash, hash_on: source_ip }")?.hashOn == .sourceIP)
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], lb: ring_hash, hash_on: { header: x-user } }")?.hashOn == .header("x-user"))
        for kind in BalancerKind.allCases {
            #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], lb: \(kind.rawValue) }")?.lb == kind)
        }
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], lb: fastest }").contains("round_robin, random"))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], hash_on: source_ip }").contains("only allowed with lb: ring_hash or maglev"))
        #expect(error("  - { name: app, endpoints: [ { address: \"127.0.0.1:1\", weight: 0 } ] }").contains("between 1 and 10000"))
        #expect(error("  - { name: app, endpoints: [ { weight: 2 } ] }").contains("missing required key \"address\""))
    }

    @Test func breakersOutliersPanic() {
        let c = cluster("""
          - name: app
            endpoints: [ 127.0.0.1:1 ]
            circuit_breaker: { max_requests: 10, max_retries: 0 }
            outlier_detection: { consecutive_5xx: 3, interval: 500ms, base_ejection_time: 1s, max_ejection_percent: 25 }
            panic_threshold: 30%
        """)
        #expect(c?.circuitBreaker == CircuitBreakerConfig(maxRequests: 10, maxRetries: 0))
        #expect(c?.outlierDetection == OutlierDetectionConfig(consecutive5xx: 3, interval: 500, baseEjectionTime: 1000,
                                                              maxEjectionPercent: 25))
        #expect(c?.panicThreshold == 30)
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], circuit_breaker: {} }")?.circuitBreaker == CircuitBreakerConfig())
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], circuit_breaker: { max_requests: 0 } }").contains("between 1"))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], outlier_detection: { base_ejection_time: 10s, max_ejection_time: 5s } }")
            .contains("must not be below base_ejection_time"))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], panic_threshold: 120% }").contains("whole percentage"))
    }

    @Test func healthCheck() {
        let c = cluster("""
          - name: app
            endpoints: [ 127.0.0.1:1 ]
            health_check: { http: { path: /healthz, expect: [200, 204] }, interval: 2s, timeout: 500ms, jitter: 5%,
                            unhealthy_threshold: 4, healthy_threshold: 1 }
        """)
        #expect(c?.healthCheck == HealthCheckConfig(kind: .http(path: "/healthz", expect: [200, 204]), interval: 2_000,
                                                    timeout: 500, jitterPercent: 5, unhealthyThreshold: 4, healthyThreshold: 1))
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], health_check: { tcp: {} } }")?.healthCheck
            == HealthCheckConfig(kind: .tcp))
        // gRPC checks (issue 12 asked for them; they were refused as "not supported yet" before).
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], health_check: { grpc: {} } }")?.healthCheck
            == HealthCheckConfig(kind: .grpc(service: "")))
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], health_check: { grpc: { service: pkg.Echo } } }")?.healthCheck
            == HealthCheckConfig(kind: .grpc(service: "pkg.Echo")))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], health_check: { grpc: { service: \"a b\" } } }").contains("printable ASCII"))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], health_check: { grpc: { path: /x } } }").contains("path"))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], health_check: { interval: 1s } }").contains("exactly one of http, tcp or grpc"))
    }

    @Test func slowStart() {
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ] }")?.slowStart == nil)
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], slow_start: 30s }")?.slowStart == SlowStart(window: 30_000))
        #expect(cluster("  - { name: app, endpoints: [ 127.0.0.1:1 ], slow_start: { window: 5s, aggression: 2, min_weight_percent: 20% } }")?
            .slowStart == SlowStart(window: 5_000, aggression: 2, minWeightPercent: 20))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], slow_start: { aggression: 2 } }").contains("window"))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], slow_start: { window: 1s, aggression: 0 } }").contains("above 0"))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], slow_start: { window: 1s, min_weight_percent: 0 } }").contains("from 1 to 100"))
        #expect(error("  - { name: app, endpoints: [ 127.0.0.1:1 ], lb: maglev, slow_start: 10s }").contains("not with lb: ring_hash or maglev"))
    }

    @Test func dnsRefresh() {
        #expect(cluster("  - { name: app, endpoints: [ localhost:1 ] }")?.dnsRefresh == nil)
        let c = cluster("  - { name: app, endpoints: [ localhost:1 ], dns_refresh: 5s }")
        #expect(c?.dnsRefresh == 5_000)
        #expect(error("  - { name: app, endpoints: [ localhost:1 ], dns_refresh: 0s }") != "")
        #expect(error("  - { name: app, endpoints: [ localhost:1 ], dns_refresh: often }") != "")
        // Only the endpoint list differs: the same cluster apart from its endpoints.
        var d = c!
        d.endpoints = [HostPort(host: "10.0.0.1", port: 1)]
        #expect(d.sameApartFromEndpoints(c!) && d != c!)
        d.dnsRefresh = 1_000
        #expect(!d.sameApartFromEndpoints(c!))
    }

    @Test func dnsLookupFamily() {
        #expect(cluster("  - { name: app, endpoints: [ localhost:1 ] }")?.dnsLookupFamily == .all)
        #expect(cluster("  - { name: app, endpoints: [ localhost:1 ], dns_lookup_family: v4_preferred }")?.dnsLookupFamily == .v4Preferred)
        #expect(error("  - { name: app, endpoints: [ localhost:1 ], dns_lookup_family: ipv4 }").contains("v4_only"))
        let v6v4v6 = [true, false, true]
        #expect(DNSLookupFamily.all.keep(v6v4v6) == [0, 1, 2])
        #expect(DNSLookupFamily.v4Only.keep(v6v4v6) == [1] && DNSLookupFamily.v6Only.keep(v6v4v6) == [0, 2])
        #expect(DNSLookupFamily.v4Preferred.keep(v6v4v6) == [1] && DNSLookupFamily.v4Preferred.keep([true, true]) == [0, 1])
        #expect(DNSLookupFamily.v4Only.keep([true]) == [])
    }
}

