import RemoraCore
import RemoraIO
import RemoraPolicy
@testable import RemoraProxy
import Testing

/// Per-endpoint counters: each worker's `Endpoint` writes its own row of `ClusterShared`; the main
/// loop's `endpointStatus` sums the rows and adds the process-wide health and ejection flags.
@Suite struct EndpointStatsTests {
    @Test func workersRowsAreSummedWithFlagsAndLatency() {
        let config = ClusterConfig(name: "app", endpoints: [HostPort(host: "127.0.0.1", port: 9), HostPort(host: "127.0.0.1", port: 10)])
        let shared = ClusterShared(config: config, endpoints: 2, addresses: ["127.0.0.1:9", "127.0.0.1:10"], weights: [1, 3], workers: 2)
        let a = SocketAddress(ip: "127.0.0.1", port: 9)!
        let w0 = Endpoint(index: 0, address: a, words: shared.endpointWords(worker: 0, endpoint: 0))
        let w1 = Endpoint(index: 0, address: a, words: shared.endpointWords(worker: 1, endpoint: 0))
        #expect(shared.endpointWords(worker: 2, endpoint: 0) == nil)   // beyond the rows: the endpoint keeps its own
        w0.activeRequests = 3
        w0.attemptEnded(AttemptOutcome(kind: .response, status: 200))
        w0.attemptEnded(AttemptOutcome(kind: .response, status: 503))
        w1.activeRequests = 2
        w1.attemptEnded(AttemptOutcome(kind: .connectFailure))
        w1.attemptEnded(AttemptOutcome(kind: .cancelled))
        w0.observeLatency(AttemptOutcome(kind: .response, status: 200, latency: 40), now: 1_000)
        shared.setUnhealthy(0, true)
        let s = shared.endpointStatus(now: 1_000)
        #expect(s.count == 2 && s[0].address == "127.0.0.1:9" && s[1].weight == 3)
        #expect(s[0].activeRequests == 1 && s[0].requestsTotal == 5)
        #expect(s[0].responses5xx == 1 && s[0].localFailures == 1 && s[0].requestErrors == 2)
        #expect(s[0].failedHealthCheck && !s[0].ejected && s[0].healthFlags == "/failed_active_hc")
        #expect(s[0].latencyMs == 40)
        #expect(s[1] == EndpointStatus(address: "127.0.0.1:10", weight: 3))
        #expect(s[1].healthFlags == "healthy")
        shared.setEjected(1, true)
        #expect(shared.endpointStatus(now: 1_000)[1].healthFlags == "/failed_outlier_check")
    }
}
