import RemoraPolicy
import Testing

/// Outlier detection's decisions on an injected clock.
@Suite struct OutlierDetectorTests {
    @Test func ejectsForBaseTimesCountCappedAndReturns() {
        let clock = ManualClock(1_000)
        var d = OutlierDetector(config: OutlierDetectionConfig(interval: 1_000, baseEjectionTime: 30_000, maxEjectionTime: 70_000,
                                                               maxEjectionPercent: 50), endpoints: 4)
        #expect(d.failed(endpoint: 1, now: clock.nowMillis) == .ejected(until: 31_000))
        #expect(d.failed(endpoint: 1, now: clock.nowMillis) == .alreadyEjected)
        clock.advance(29_000)
        #expect(d.tick(now: clock.nowMillis) == [])
        clock.advance(1_000)
        #expect(d.tick(now: clock.nowMillis) == [1] && !d.isEjected(1))
        #expect(d.failed(endpoint: 1, now: clock.nowMillis) == .ejected(until: clock.nowMillis + 60_000))   // 2 × base
        clock.advance(60_000); _ = d.tick(now: clock.nowMillis)
        #expect(d.failed(endpoint: 1, now: clock.nowMillis) == .ejected(until: clock.nowMillis + 70_000))   // capped
    }

    @Test func neverMoreThanThePercentRoundedDownNorTheLast() {
        var d = OutlierDetector(config: OutlierDetectionConfig(maxEjectionPercent: 50), endpoints: 4)
        #expect(d.maxEjected == 2)
        #expect(d.failed(endpoint: 0, now: 1) != .overflow)
        #expect(d.failed(endpoint: 1, now: 1) != .overflow)
        #expect(d.failed(endpoint: 2, now: 1) == .overflow)
        #expect(d.ejectedCount == 2)
        #expect(OutlierDetector(config: OutlierDetectionConfig(maxEjectionPercent: 50), endpoints: 3).maxEjected == 1)
        #expect(OutlierDetector(config: OutlierDetectionConfig(maxEjectionPercent: 100), endpoints: 1).maxEjected == 0)
        #expect(OutlierDetector(config: OutlierDetectionConfig(maxEjectionPercent: 100), endpoints: 5).maxEjected == 4)
    }

    @Test func ejectionCountDecaysWhileInService() {
        var d = OutlierDetector(config: OutlierDetectionConfig(baseEjectionTime: 10, maxEjectionTime: 1_000), endpoints: 2)
        _ = d.failed(endpoint: 0, now: 0)
        _ = d.tick(now: 10)                 // returned
        #expect(d.timesEjected[0] == 1)
        _ = d.tick(now: 20)                 // one interval in service: forgiven
        #expect(d.timesEjected[0] == 0)
        #expect(d.failed(endpoint: 0, now: 30) == .ejected(until: 40))
    }

    @Test func kindsCountTheirFailures() {
        let r500 = AttemptOutcome(kind: .response, status: 500), r503 = AttemptOutcome(kind: .response, status: 503)
        let ok = AttemptOutcome(kind: .response, status: 200), reset = AttemptOutcome(kind: .reset)
        #expect(OutlierKind.consecutive5xx.counts(r500) == true && OutlierKind.consecutiveGateway.counts(r500) == false)
        #expect(OutlierKind.consecutiveGateway.counts(r503) == true && OutlierKind.consecutiveLocal.counts(r503) == false)
        #expect(OutlierKind.allCases.allSatisfy { $0.counts(reset) == true && $0.counts(ok) == false })
        #expect(OutlierKind.consecutive5xx.counts(AttemptOutcome(kind: .cancelled)) == nil)
    }
}
