import RemoraPolicy
import Testing

@Suite struct RetryTests {
    func response(_ status: Int, grpc: Int = -1) -> AttemptOutcome { AttemptOutcome(kind: .response, status: status, grpcStatus: grpc) }

    @Test func conditionsMatchTheirOutcomes() {
        let gateway = RetryPolicy(on: [.gatewayError])
        #expect(gateway.matches(response(503)) && gateway.matches(response(502)) && gateway.matches(response(504)))
        #expect(!gateway.matches(response(500)) && !gateway.matches(response(200)))
        #expect(gateway.matches(AttemptOutcome(kind: .connectFailure)) && gateway.matches(AttemptOutcome(kind: .reset)))
        #expect(gateway.matches(AttemptOutcome(kind: .timeout)) && !gateway.matches(AttemptOutcome(kind: .cancelled)))   // a try timeout counts as a 504
        let codes = RetryPolicy(on: [.retriableStatusCodes], statusCodes: [409])
        #expect(codes.matches(response(409)) && !codes.matches(response(503)))
        let grpc = RetryPolicy(on: [.grpcUnavailable])
        #expect(grpc.matches(response(200, grpc: 14)) && !grpc.matches(response(200, grpc: 13)) && !grpc.matches(response(200)))
        #expect(RetryPolicy(on: [.perTryTimeout]).matches(AttemptOutcome(kind: .timeout)))
        #expect(RetryPolicy(on: [.refusedStream]).matches(AttemptOutcome(kind: .refused)))
    }

    @Test func triesAreBoundedAndBackoffIsJittered() {
        var state = RetryState(policy: RetryPolicy(attempts: 3, on: [.fiveXX], backoffBase: 25, backoffMax: 250))
        var top = ScriptedRandom([UInt64.max])   // the ceiling each time
        let o = response(503)
        do { let d = state.decide(o, methodAllowed: true, replayable: true, pushback: nil, remaining: nil, random: &top); #expect(d == .retry(after: 25)) }
        do { let d = state.decide(o, methodAllowed: true, replayable: true, pushback: nil, remaining: nil, random: &top); #expect(d == .retry(after: 50)) }
        do { let d = state.decide(o, methodAllowed: true, replayable: true, pushback: nil, remaining: nil, random: &top); #expect(d == .stop(.limitExceeded)) }
        #expect(state.tries == 3)
    }

    @Test func refusalsSayWhy() {
        var r = ScriptedRandom([0])
        var s = RetryState(policy: RetryPolicy(attempts: 3, on: [.fiveXX]))
        do { let d = s.decide(response(200), methodAllowed: true, replayable: true, pushback: nil, remaining: nil, random: &r); #expect(d == .stop(.notRetriable)) }
        do { let d = s.decide(response(500), methodAllowed: false, replayable: true, pushback: nil, remaining: nil, random: &r); #expect(d == .stop(.method)) }
        do { let d = s.decide(response(500), methodAllowed: true, replayable: false, pushback: nil, remaining: nil, random: &r); #expect(d == .stop(.bodyTooLarge)) }
        // Pushback: the server's wait replaces the backoff; "don't" or a wait past the deadline stops.
        do { let d = s.decide(response(503), methodAllowed: true, replayable: true, pushback: .max, remaining: nil, random: &r); #expect(d == .stop(.pushback)) }
        do { let d = s.decide(response(503), methodAllowed: true, replayable: true, pushback: 2000, remaining: 1500, random: &r); #expect(d == .stop(.pushback)) }
        do { let d = s.decide(response(503), methodAllowed: true, replayable: true, pushback: 1000, remaining: 1500, random: &r); #expect(d == .retry(after: 1000)) }
    }

    @Test func budgetIsAShareOfActiveRequestsWithAFloor() {
        var b = RetryBudget(percent: 20, minConcurrency: 3)
        #expect(b.limit(activeRequests: 0) == 3 && b.limit(activeRequests: 100) == 20)
        for _ in 0..<3 { let ok = b.admit(activeRequests: 1); #expect(ok) }
        do { let ok = b.admit(activeRequests: 1); #expect(!ok) }   // the floor is spent
        do { let ok = b.admit(activeRequests: 50); #expect(ok) }   // 20 % of 50 = 10
        b.release()
        #expect(b.outstanding == 3)
    }

    @Test func pushbackHeaders() {
        func parse(_ s: String, _ f: (UnsafeRawBufferPointer) -> UInt64) -> UInt64 {
            var b = Array(s.utf8)
            return b.withUnsafeBytes { f($0) }
        }
        #expect(parse("1", RetryPushback.retryAfter) == 1000)
        #expect(parse(" 2 ", RetryPushback.retryAfter) == 2000)
        #expect(parse("Wed, 21 Oct 2015 07:28:00 GMT", RetryPushback.retryAfter) == .max)
        #expect(parse("250", RetryPushback.grpcPushback) == 250)
        #expect(parse("-1", RetryPushback.grpcPushback) == .max)
        #expect(parse("", RetryPushback.grpcPushback) == .max)
    }

    @Test func onlyTheFirstTryIsHedgedAndItCountsAsATry() {
        var p = RetryPolicy(attempts: 2, on: [.fiveXX])
        var none = RetryState(policy: p)
        let noneHedged = none.hedge()
        #expect(!noneHedged, "no hedge_after: no hedge")
        p.hedgeAfter = 50
        var s = RetryState(policy: p)
        let first = s.hedge()
        #expect(first && s.tries == 2)
        let second = s.hedge()
        #expect(!second, "one hedge per request")
        var r = ScriptedRandom([0])
        let d = s.decide(AttemptOutcome(kind: .response, status: 503), methodAllowed: true, replayable: true,
                         pushback: nil, remaining: nil, random: &r)
        #expect(d == .stop(.limitExceeded), "the hedge was the second try")
        var single = RetryState(policy: RetryPolicy(attempts: 1))
        let singleHedged = single.hedge()
        #expect(!singleHedged)
    }
}
