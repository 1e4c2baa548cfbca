import RemoraIO
import RemoraPolicy
@testable import RemoraProxy
import Testing

/// The outcome hook's endpoint half: what one report per attempt leaves on the endpoint.
@Suite struct EndpointTests {
    func endpoint() -> Endpoint { Endpoint(index: 0, address: SocketAddress(ip: "127.0.0.1", port: 9)!) }

    @Test func countsActiveAttemptsAndFailuresInARow() {
        let e = endpoint()
        e.activeRequests = 3   // three attempts started (the pool counts them)
        e.attemptEnded(AttemptOutcome(kind: .connectFailure))
        e.attemptEnded(AttemptOutcome(kind: .response, status: 503))
        #expect(e.activeRequests == 1 && e.consecutiveFailures == 2)
        #expect(e.lastOutcome == .response)
        e.attemptEnded(AttemptOutcome(kind: .response, status: 200))
        #expect(e.activeRequests == 0 && e.consecutiveFailures == 0)
    }

    @Test func cancellationsAndRefusalsNeitherFailNorSucceed() {
        let e = endpoint()
        e.activeRequests = 3
        e.attemptEnded(AttemptOutcome(kind: .timeout))
        e.attemptEnded(AttemptOutcome(kind: .cancelled))
        e.attemptEnded(AttemptOutcome(kind: .refused))
        #expect(e.consecutiveFailures == 1 && e.activeRequests == 0)
        #expect(e.lastOutcome == .refused)
    }

    @Test func isWhatABalancerReads() {
        let eps = [endpoint(), endpoint()]
        var rr = RoundRobin()
        var random = FastRandom(seed: 1)
        #expect([rr.pick(eps, random: &random), rr.pick(eps, random: &random), rr.pick(eps, random: &random)] == [0, 1, 0])
        #expect(eps[0].weight == 1)
    }
}
