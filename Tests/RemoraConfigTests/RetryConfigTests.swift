import Testing
import RemoraCore
import RemoraPolicy
@testable import RemoraConfig

@Suite struct RetryConfigTests {
    func load(_ yaml: String) -> Config? {
        if case .success(let c) = ConfigLoader.parse(yaml: yaml, file: "t.yaml") { return c }
        return nil
    }

    @Test func budgetOnByDefaultOffOrTuned() {
        let base = "listeners: [ { name: web, address: 127.0.0.1:0, routes: [ { name: a, backends: [ { cluster: app } ] } ] } ]\n"
        #expect(load(base + "clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ] } ]")?.clusters[0].retryBudget == RetryBudget())
        #expect(load(base + "clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ], retry_budget: off } ]")?.clusters[0].retryBudget == nil)
        #expect(load(base + "clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ], retry_budget: { percent: 50, min_concurrency: 1 } } ]")?
            .clusters[0].retryBudget == RetryBudget(percent: 50, minConcurrency: 1))
    }

    @Test func routePolicy() {
        let c = load("""
        listeners:
          - name: web
            address: 127.0.0.1:0
            routes:
              - name: a
                backends: [ { cluster: app } ]
                retry: { attempts: 3, on: [5xx, unavailable], per_try_timeout: 2s, backoff: { base: 10ms, max: 100ms }, methods: [GET, POST] }
        clusters: [ { name: app, endpoints: [ 127.0.0.1:1 ] } ]
        """)
        guard case .forward(let f)? = c?.listeners[0].virtualHosts[0].routes[0].action, let r = f.retry else {
            Issue.record("no retry policy"); return
        }
        #expect(r.attempts == 3 && r.on == [.fiveXX, .grpcUnavailable] && r.perTryTimeout == 2000)
        #expect(r.backoffBase == 10 && r.backoffMax == 100 && r.methods == ["GET", "POST"])
    }
}
