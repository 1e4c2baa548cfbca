import RemoraCore
import RemoraIO

extension Exchange {
    // MARK: deadlines

    /// Arms the deadline of `kind` (upstream head: the route timeout; stream: the listener's idle
    /// timeout, renewed on progress), capped by the gRPC deadline. Nothing once the exchange is over
    /// (a call into either side may have finished it).
    @inline(__always) func arm(_ kind: Deadline) {
        guard active else { return }
        deadlineKind = kind
        let now = timer.now
        var at: UInt64
        if kind == .stream {
            at = streamIdleTimeout == 0 ? 0 : now &+ streamIdleTimeout
        } else {   // the route timeout runs once, across every try
            if headDeadline == 0 && routeTimeout != 0 { headDeadline = now &+ routeTimeout }
            at = headDeadline
        }
        if tryDeadline != 0 && !responseStarted && (at == 0 || tryDeadline < at) { at = tryDeadline }
        if retryAt != 0 && (at == 0 || retryAt < at) { at = retryAt }
        if grpcDeadline != 0 && (at == 0 || grpcDeadline < at) { at = grpcDeadline }
        if requestDeadline != 0 && (at == 0 || requestDeadline < at) { at = requestDeadline }
        if at == 0 { timer.clear(); return }
        timer.set(after: at > now ? at - now : 0)
    }

    /// While the request streams in: stream idle; once it is complete: the upstream head timeout.
    func armAfterRequestProgress() {
        if responseStarted {
            if upgrade != .none && tunnelOverStream { arm(.stream) }   // a tunnel: bytes either way are progress
            return
        }
        arm(requestDone ? .upstreamHead : .stream)
    }

    func deadlineReached(_ t: DeadlineTimer) {
        guard active else { return }
        if retryAt != 0 && timer.now >= retryAt {   // a retry's backoff, or a filter's delay, is over
            retryAt = 0
            if dispatchDelay != 0 { endDelay() } else { startRetry() }
            return
        }
        if requestDeadline != 0 && !requestDone && timer.now >= requestDeadline {
            stats.inc(.downstream_rq_timeout)
            observe.flags.insert(.DT)
            if responseStarted {
                downstream?.respondReset(code: 0x8)
                finish(clean: false)
            } else {
                local(408, "request timeout: the body did not arrive in time\n")
            }
            return
        }
        if grpcDeadline != 0 && timer.now >= grpcDeadline {
            endAttempt(.timeout)
            observe.flags.insert(.UT)
            stats.inc(.downstream_rq_timeout)
            clusterStats?.inc(.upstream_rq_timeout)
            if responseStarted {
                downstream?.respondReset(code: 0x8)   // CANCEL: the client's deadline passed
                finish(clean: false)
            } else {
                grpcLocal(.deadlineExceeded, "deadline exceeded")
            }
            return
        }
        if tryDeadline != 0 && !responseStarted && timer.now >= tryDeadline {
            tryTimedOut()
            return
        }
        switch deadlineKind {
        case .upstreamHead:
            endAttempt(.timeout)
            observe.flags.insert(.UT)
            clusterStats?.inc(.upstream_rq_timeout)
            stats.inc(.downstream_rq_timeout)
            if isGRPC { grpcLocal(.deadlineExceeded, "upstream request timeout") } else { local(504, "upstream request timeout\n") }
        case .stream:
            stats.inc(.downstream_rq_timeout)
            observe.flags.insert(.SI)
            if !responseStarted && !requestDone {
                if isGRPC { grpcLocal(.deadlineExceeded, "request body timeout") } else { local(408, "request body timeout\n") }
            } else {
                downstream?.respondReset(code: 0x8)
                finish(clean: false)
            }
        }
    }
}
