import RemoraPolicy
import Testing

@Suite struct AttemptOutcomeTests {
    @Test func failuresSpeakAboutTheEndpoint() {
        for kind: AttemptOutcome.Kind in [.connectFailure, .reset, .protocolError, .timeout] {
            #expect(AttemptOutcome(kind: kind).isFailure)
        }
        #expect(!AttemptOutcome(kind: .refused).isFailure)     // never processed: says nothing bad
        #expect(!AttemptOutcome(kind: .cancelled).isFailure)   // the proxy's own reason
    }

    @Test func responsesFailOnlyWith5xx() {
        #expect(!AttemptOutcome(kind: .response, status: 200).isFailure)
        #expect(!AttemptOutcome(kind: .response, status: 404).isFailure)
        #expect(!AttemptOutcome(kind: .response, status: 499).isFailure)
        #expect(AttemptOutcome(kind: .response, status: 500).isFailure)
        #expect(AttemptOutcome(kind: .response, status: 503).isFailure)
        // A gRPC error in a 200 response is not an endpoint failure by itself.
        #expect(!AttemptOutcome(kind: .response, status: 200, grpcStatus: 14).isFailure)
    }
}

@Suite struct ClockTests {
    @Test func manualClockMovesOnlyWhenTold() {
        let c = ManualClock(1000)
        let clock: any Clock = c
        #expect(clock.nowMillis == 1000)
        c.advance(250)
        #expect(clock.nowMillis == 1250)
    }
}
