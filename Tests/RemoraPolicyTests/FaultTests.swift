import RemoraPolicy
import Testing

@Suite struct FaultTests {
    /// A draw that lands at `share` millionths of the range (below(1e6) of it gives `share`).
    func draw(_ share: UInt64) -> UInt64 { (UInt64.max / 1_000_000 + 1) * share }

    @Test func drawsDecideDelayThenAbortIndependently() {
        let p = FaultPolicy(delay: 2000, delayShare: FaultPolicy.share(percent: 10), abortShare: FaultPolicy.share(percent: 5))
        #expect(p.delayShare == 100_000 && p.abortShare == 50_000)
        // First draw: delay (below 10 %), second: abort (below 5 %).
        var r = ScriptedRandom([draw(99_999), draw(49_999)])
        #expect(p.decide(random: &r) == FaultDecision(delay: 2000, abort: true))
        var r2 = ScriptedRandom([draw(100_000), draw(50_000)])
        #expect(p.decide(random: &r2).isNone)
        var r3 = ScriptedRandom([draw(100_000), draw(0)])
        #expect(p.decide(random: &r3) == FaultDecision(delay: 0, abort: true))
    }

    @Test func unconfiguredFaultsDrawNothing() {
        var r = ScriptedRandom([0, 0])
        _ = FaultPolicy(abortShare: 1_000_000).decide(random: &r)
        #expect(r.i == 1, "only the abort is drawn")
        var r2 = ScriptedRandom([0])
        #expect(FaultPolicy().decide(random: &r2).isNone && r2.i == 0)
    }

    @Test func shareOverManyDrawsIsThePercent() {
        let p = FaultPolicy(delay: 1, delayShare: FaultPolicy.share(percent: 20), abortShare: FaultPolicy.share(percent: 10))
        var rng = FastRandom(seed: 42)
        var delays = 0, aborts = 0
        for _ in 0..<100_000 {
            let d = p.decide(random: &rng)
            if d.delay != 0 { delays += 1 }
            if d.abort { aborts += 1 }
        }
        #expect(abs(delays - 20_000) < 4 * 126 && abs(aborts - 10_000) < 4 * 95)   // 4 sd
    }

    @Test func grpcAbortStatusDefaultsToTheHTTPMapping() {
        #expect(FaultPolicy(abortStatus: 503).grpcAbortStatus == 14)
        #expect(FaultPolicy(abortStatus: 404).grpcAbortStatus == 12)
        #expect(FaultPolicy(abortStatus: 500).grpcAbortStatus == 2)
        #expect(FaultPolicy(abortStatus: 503, abortGRPCStatus: 8).grpcAbortStatus == 8)
        #expect(FaultPolicy.share(percent: 0.0001) == 1 && FaultPolicy.share(percent: 100) == 1_000_000)
    }
}
