import RemoraCore
import RemoraPolicy

extension Exchange {
    // MARK: observation (metrics, access log, tracing: Observe/)

    /// A client request starts: its clock starts.
    @inline(__always) func observeStart() {
        observe.startMicros = monotonicMicros()
        observe.flags = []
        observe.status = 0
        observe.localGRPCStatus = -1
        observe.attempts = 0
        observe.endpoint = -1
        observe.route = -1
        observe.refusedBy = nil
        observe.bytesSent = 0
        observe.hasTrace = false
        observe.upstreamPeer = 0
    }

    /// The outcome hook's report of one attempt, as the metrics see it: the cluster's upstream
    /// request time (the hook's latency, loop milliseconds), the last attempt's endpoint.
    @inline(__always) func observeAttempt(endpoint: Int, _ outcome: AttemptOutcome) {
        observe.attempts &+= 1
        observe.endpoint = endpoint
        observe.upstreamMillis = outcome.latency
        if recordsHistograms { clusterStats?.record(.upstream_rq_time, micros: outcome.latency &* 1000) }
    }

    /// The exchange ends: its duration, a DC flag when the client went away without a complete
    /// response and nothing else explains it, then the listener's request time and Istio's series
    /// (the cluster's, or the listener's when no cluster was chosen). Before the filters' log phase.
    @inline(__always) func observeFinish() {
        guard observe.startMicros != 0 else { return }
        let us = monotonicMicros() &- observe.startMicros
        observe.durationMicros = us
        if !responseDone && observe.flags.isEmpty { observe.flags.insert(.DC) }
        guard recordsHistograms else { return }
        stats.record(.downstream_rq_time, micros: us)
        let key = RequestSeriesKey(status: observe.status, grpcStatus: responseGRPCStatus, grpc: isGRPC, flags: observe.flags).raw
            | RequestSeriesKey.peerBits(downstream: withDownstream(0) { $0.peerTag }, upstream: observe.upstreamPeer)
        if let cs = clusterStats { cs.recordSeries(key, micros: us) } else { stats.recordSeries(key, micros: us) }
    }

    /// The grpc-status the client got: the proxy's own, else the upstream's (-1 = none).
    var responseGRPCStatus: Int { observe.localGRPCStatus >= 0 ? observe.localGRPCStatus : (isGRPC && observe.attempts > 0 ? attemptGRPCStatus : -1) }
}
