import RemoraPolicy
import Testing

/// The endpoint-set diff a DNS refresh (or a new snapshot) is applied by.
@Suite struct EndpointSetDiffTests {
    @Test func keptAddedRemoved() {
        let d = EndpointSetDiff(old: ["a:1", "b:1", "c:1"], new: ["c:1", "d:1", "a:1"])
        #expect(d.oldIndex == [2, nil, 0] && d.removed == [1])
        #expect(d.added == 1 && d.kept == 2 && !d.isIdentity)
    }

    @Test func identityAndReorder() {
        #expect(EndpointSetDiff(old: ["a", "b"], new: ["a", "b"]).isIdentity)
        let r = EndpointSetDiff(old: ["a", "b"], new: ["b", "a"])
        #expect(!r.isIdentity && r.removed.isEmpty && r.oldIndex == [1, 0])
        #expect(EndpointSetDiff(old: [String](), new: []).isIdentity)
    }

    @Test func repeatedAddressesMatchOccurrenceByOccurrence() {
        let d = EndpointSetDiff(old: ["x", "x", "y"], new: ["x", "y", "x", "x"])
        #expect(d.oldIndex == [0, 2, 1, nil] && d.removed.isEmpty)
        let shrink = EndpointSetDiff(old: ["x", "x", "x"], new: ["x"])
        #expect(shrink.oldIndex == [0] && shrink.removed == [1, 2])
    }

    @Test func everythingNewOrEverythingGone() {
        let d = EndpointSetDiff(old: ["127.0.0.1:80"], new: ["[::1]:80", "127.0.0.2:80"])
        #expect(d.oldIndex == [nil, nil] && d.removed == [0] && d.kept == 0)
        #expect(EndpointSetDiff(old: ["a"], new: [String]()).removed == [0])
    }

    // What a changed endpoint set keeps: outlier detection's ejections, health state.

    @Test func ejectionsFollowTheirEndpointIntoTheNewSet() {
        let config = OutlierDetectionConfig(baseEjectionTime: 1_000, maxEjectionTime: 10_000, maxEjectionPercent: 50)
        var old = OutlierDetector(config: config, endpoints: 4)
        #expect(old.failed(endpoint: 1, now: 0) == .ejected(until: 1_000))
        _ = old.tick(now: 1_000)
        #expect(old.failed(endpoint: 1, now: 1_000) == .ejected(until: 3_000))   // ejected twice
        // a:0 b:1 c:2 d:3  ->  e(new) b c d a
        let diff = EndpointSetDiff(old: ["a", "b", "c", "d"], new: ["e", "b", "c", "d", "a"])
        var d = OutlierDetector(config: config, carrying: old, oldIndex: diff.oldIndex)
        #expect(d.endpoints == 5 && d.ejectedCount == 1)
        #expect(d.isEjected(1) && !d.isEjected(0) && !d.isEjected(4))
        #expect(d.timesEjected == [0, 2, 0, 0, 0])
        #expect(d.tick(now: 2_999) == [] && d.tick(now: 3_000) == [1])   // returns when it would have
        #expect(d.failed(endpoint: 1, now: 3_000) == .ejected(until: 6_000))   // the count went on (3 × base)
    }

    @Test func aSmallerSetEndsTheEjectionsItCannotHold() {
        let config = OutlierDetectionConfig(baseEjectionTime: 1_000, maxEjectionPercent: 50)
        var old = OutlierDetector(config: config, endpoints: 4)
        #expect(old.failed(endpoint: 0, now: 0) == .ejected(until: 1_000))
        #expect(old.failed(endpoint: 2, now: 500) == .ejected(until: 1_500))
        // Only the two ejected ones stay: 50 % of 2 is 1, so the one that ends soonest (0) ends now.
        let d = OutlierDetector(config: config, carrying: old, oldIndex: [0, 2])
        #expect(d.ejectedCount == 1 && !d.isEjected(0) && d.isEjected(1))
        // One left: never the last.
        let one = OutlierDetector(config: config, carrying: old, oldIndex: [2])
        #expect(one.ejectedCount == 0 && !one.isEjected(0))
    }

    @Test func aNewEndpointWaitsForItsFirstProbe() {
        var s = HealthState.pendingFirstCheck
        #expect(!s.healthy && s.pending)
        #expect(s.record(passed: true, unhealthyThreshold: 3, healthyThreshold: 2) == true)   // one pass is enough
        #expect(s.healthy && !s.pending)
        var f = HealthState.pendingFirstCheck
        #expect(f.record(passed: false, unhealthyThreshold: 3, healthyThreshold: 2) == nil)   // stays out
        #expect(!f.healthy && !f.pending)
        #expect(f.record(passed: true, unhealthyThreshold: 3, healthyThreshold: 2) == nil)
        #expect(f.record(passed: true, unhealthyThreshold: 3, healthyThreshold: 2) == true)   // then by the threshold
    }

    @Test func everyBalancerCanBeBuiltForNoEndpoint() {
        // A `dns_refresh` cluster whose names have not resolved yet has none (the proxy never picks then).
        for kind in BalancerKind.allCases {
            let b = Balancer(kind, for: [TestEndpoint](), slowStart: kind.isConsistentHash ? nil : SlowStart(window: 1_000), now: 5)
            #expect(b.kind == kind)
        }
        #expect(OutlierDetector(config: OutlierDetectionConfig(), endpoints: 0).maxEjected <= 0)
    }
}

