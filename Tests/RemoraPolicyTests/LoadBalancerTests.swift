import RemoraPolicy
import Testing

@Suite struct LoadBalancerTests {
    @Test func roundRobinVisitsEndpointsInOrderFromTheFirst() {
        var rr = RoundRobin()
        var random = ScriptedRandom([0])
        let eps = (0..<3).map { _ in TestEndpoint() }
        let picks = (0..<7).map { _ in rr.pick(eps, random: &random) }
        #expect(picks == [0, 1, 2, 0, 1, 2, 0])
    }

    @Test func roundRobinWithOneEndpointAlwaysPicksIt() {
        var rr = RoundRobin()
        var random = FastRandom(seed: 1)
        let eps = [TestEndpoint()]
        #expect((0..<4).map { _ in rr.pick(eps, random: &random) } == [0, 0, 0, 0])
    }

    @Test func roundRobinIgnoresRandomnessAndLoad() {
        // Two balancers fed different random sequences, with different active counts, agree.
        let eps = (0..<4).map { _ in TestEndpoint() }
        eps[1].activeRequests = 100
        var a = RoundRobin(), b = RoundRobin()
        var ra = ScriptedRandom([0]), rb = FastRandom(seed: 99)
        for _ in 0..<10 { #expect(a.pick(eps, random: &ra) == b.pick(eps, random: &rb)) }
    }

    @Test func weightedRoundRobinIsSmoothAndProportional() {
        let eps = [TestEndpoint(weight: 5), TestEndpoint(weight: 1), TestEndpoint(weight: 1)]
        var rr = RoundRobin(for: eps)
        var random = ScriptedRandom([0])
        let picks = (0..<7).map { _ in rr.pick(eps, random: &random) }
        #expect(picks == [0, 0, 1, 0, 2, 0, 0])   // nginx's smooth weighted round robin for 5, 1, 1
        var counts = [0, 0, 0]
        for _ in 0..<700 { counts[rr.pick(eps, random: &random)] += 1 }
        #expect(counts == [500, 100, 100])
    }

    @Test func weightZeroIsNeverPicked() {
        let eps = [TestEndpoint(weight: 2), TestEndpoint(weight: 0), TestEndpoint(weight: 1)]
        var rr = RoundRobin(for: eps)
        var random = ScriptedRandom([0])
        let picks = (0..<30).map { _ in rr.pick(eps, random: &random) }
        #expect(!picks.contains(1))
        #expect(picks.filter { $0 == 0 }.count == 20)
    }

    @Test func equalWeightsRotate() {
        let eps = (0..<3).map { _ in TestEndpoint(weight: 7) }
        var rr = RoundRobin(for: eps)
        var random = ScriptedRandom([0])
        #expect((0..<4).map { _ in rr.pick(eps, random: &random) } == [0, 1, 2, 0])
    }
}
