import RemoraCore
import RemoraHTTP
import RemoraPolicy

extension Exchange {
    // MARK: hedging (`retry.hedge_after`): a second try races the first; the first head wins

    /// The first try has no head after `hedge_after`: a second try starts on another endpoint, run by
    /// a helper exchange (`hedge`, its downstream the worker's discard side) so the two upstreams'
    /// callbacks stay apart. Only for a complete request whose body fits the replay buffer, while
    /// `attempts` allows another try and the cluster's retry budget admits it (a hedge holds the
    /// request's one unit, as a retry does). Never for an upgrade (WebSocket, RFC 8441): a second
    /// handshake would open a second tunnel on another backend, to be cut when the first answers.
    func startHedge() {
        guard hedge == nil, requestDone, replayable, !responseStarted, upgrade == .none, let cl = cluster, retry != nil else { return }
        // As for retries: gRPC calls by their policy, other requests when their method may be sent twice.
        guard isGRPC || (retry!.policy.allowsMethod(requestMethod) ?? methodIsIdempotent) else { return }
        guard takeRetryBudget(cl) else { return }
        guard retry!.hedge() else { return }
        cl.stats.inc(.upstream_rq_hedged)
        let h = worker.takeExchange()
        hedge = h
        h.hedgeOf = self
        worker.discard.running.append(h)
        h.begin(downstream: worker.discard, listener: listener, stats: worker.shadowStats, isHEAD: isHEAD, endStream: true)
        h.stats.inc(.downstream_rq_active)
        h.requestHasBody = requestHasBody
        h.replayable = false
        h.isGRPC = isGRPC
        h.cluster = cl
        h.upstreamIsHTTP2 = upstreamIsHTTP2
        h.upstreamAuto = upstreamAuto
        h.reqFraming = reqFraming
        if upstreamIsHTTP2 || upstreamAuto {
            h.reqHead = reqHead   // borrowed: this exchange outlives the hedge (`endHedge` gives it back)
        }
        if !upstreamIsHTTP2 || upstreamAuto {
            h.upHead = pool.take()
            h.upHead.append(upHead.bytes)
        }
        if !replay.isEmpty { h.replay = pool.take(); h.replay.append(replay.bytes) }
        h.reuseRetries = 0
        h.connectRetries = 0
        h.refusedRetries = 0
        cl.avoidNext = attemptEndpoint ?? lastTryEndpoint
        h.dispatch(fresh: false)
    }

    /// The hedge's head came first: the first try (if still under way) is cancelled and the hedge's
    /// upstream becomes this exchange's, which then takes the head as its own. The hedge stays until
    /// its upstream's read is over (`hedgeReadDone`), whose end it passes on here.
    func hedgeHead(_ h: Exchange, status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                   lengthKnown: Bool, endStream: Bool) {
        guard active, hedge === h, let u = h.upstream else { hedge = nil; Exchange.endHedge(h); return }
        hedge = nil
        if let a = upstream {
            upstream = nil
            endAttempt(.cancelled)
            a.detach(clean: false)
        }
        h.upstream = nil
        h.relaying = true
        u.exchange = self
        upstream = u
        upstreamIsHTTP2 = h.upstreamIsHTTP2   // (`protocol: auto`: the hedge's endpoint may speak the other one)
        attemptEndpoint = h.attemptEndpoint
        attemptStart = h.attemptStart
        attemptStatus = 0
        attemptGRPCStatus = -1
        h.attemptEndpoint = nil
        tryDeadline = 0
        hedgeAt = 0
        retryAt = 0
        upstreamHead(status: status, reason: reason, headers: headers, lengthKnown: lengthKnown, endStream: endStream)
    }

    /// A hedge's upstream finished a read: before its head, nothing to do; after it handed its
    /// upstream over, the read's end goes to the exchange that took it, and the hedge ends.
    func hedgeReadDone() {
        guard relaying, let p = hedgeOf else { return }
        Exchange.endHedge(self)
        p.upstreamReadDone()
    }

    /// The hedge failed (connect, reset, no endpoint). If the first try is still under way (or a retry
    /// waits), it goes on; if it had failed too, the request fails or retries as after any try.
    func hedgeFailed(_ h: Exchange, _ why: UpstreamFailure) {
        guard hedge === h else { Exchange.endHedge(h); return }
        hedge = nil
        Exchange.endHedge(h)
        guard active, !responseStarted, upstream == nil, retryAt == 0 else { return }
        if let wait = retryDecision(AttemptOutcome(kind: why.outcomeKind)) {
            scheduleRetry(after: wait)
            return
        }
        noUpstream(why)
    }

    /// Ends a hedge exchange: its try, if any, is cancelled (HTTP/2 RST_STREAM CANCEL, HTTP/1.1
    /// connection closed); the borrowed HTTP/2 head is left to its owner.
    static func endHedge(_ h: Exchange) {
        h.hedgeOf = nil
        h.relaying = false
        if h.upstreamIsHTTP2 || h.upstreamAuto { h.reqHead = HeaderBlock() }
        h.finish(clean: false)
    }
}
