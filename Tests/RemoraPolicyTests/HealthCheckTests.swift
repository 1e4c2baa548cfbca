import RemoraPolicy
import Testing

@Suite struct HealthCheckTests {
    @Test func thresholdsHoldForEveryFailure() {
        var s = HealthState()
        #expect(s.healthy)
        #expect(s.record(passed: false, unhealthyThreshold: 3, healthyThreshold: 2) == nil)
        #expect(s.record(passed: true, unhealthyThreshold: 3, healthyThreshold: 2) == nil)   // a pass resets the streak
        #expect(s.record(passed: false, unhealthyThreshold: 3, healthyThreshold: 2) == nil)
        #expect(s.record(passed: false, unhealthyThreshold: 3, healthyThreshold: 2) == nil)
        #expect(s.record(passed: false, unhealthyThreshold: 3, healthyThreshold: 2) == false)
        #expect(s.record(passed: true, unhealthyThreshold: 3, healthyThreshold: 2) == nil)
        #expect(s.record(passed: true, unhealthyThreshold: 3, healthyThreshold: 2) == true && s.healthy)
    }

    @Test func jitterStaysWithinItsShare() {
        let c = HealthCheckConfig(kind: .tcp, interval: 1_000, jitterPercent: 10)
        #expect(c.nextDelay(random: 0) == 900 && c.nextDelay(random: .max) == 1_100)
        var r = FastRandom(seed: 5)
        for _ in 0..<1000 { #expect((900...1_100).contains(c.nextDelay(random: r.next()))) }
        #expect(HealthCheckConfig(kind: .tcp, interval: 1_000, jitterPercent: 0).nextDelay(random: 12345) == 1_000)
    }
}
