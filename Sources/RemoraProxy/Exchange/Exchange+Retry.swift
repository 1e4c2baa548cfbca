import RemoraCore
import RemoraHTTP
import RemoraPolicy

extension Exchange {
    // MARK: retries by the route's policy (`retry:`; the decisions are RemoraPolicy's RetryState)

    /// Whether to try again after an attempt that ended as `o` with nothing of it sent to the
    /// client: the wait in ms, with one unit of the cluster's retry budget taken, or nil (counted
    /// by reason). `pushback` is the server's requested wait (Retry-After, grpc-retry-pushback-ms).
    /// A request holds at most one unit: from its first retry until it ends (a retried request in
    /// flight, waiting or streaming its answer, counts against the budget).
    func retryDecision(_ o: AttemptOutcome, pushback: UInt64? = nil) -> UInt64? {
        guard retry != nil, !responseStarted, let cl = cluster else { return nil }
        let now = timer.now
        var remaining: UInt64?
        for d in [headDeadline, grpcDeadline] where d != 0 {
            let left = d > now ? d - now : 0
            remaining = min(remaining ?? left, left)
        }
        // gRPC calls are all POSTs: their retries are decided by status, as gRPC's own retry policy
        // (gRFC A6) does, not by method.
        let methodAllowed = isGRPC || (retry!.policy.allowsMethod(requestMethod) ?? methodIsIdempotent)
        switch retry!.decide(o, methodAllowed: methodAllowed, replayable: replayable, pushback: pushback,
                             remaining: remaining, random: &worker.rng) {
        case .stop(let why):
            switch why {
            case .limitExceeded:
                cl.stats.inc(.upstream_rq_retry_limit_exceeded)
                observe.flags.insert(.URX)   // retriable, and the retries are used up (Envoy's URX)
            case .bodyTooLarge: cl.stats.inc(.upstream_rq_retry_body_too_large)
            default: break
            }
            return nil
        case .retry(let wait):
            if takeRetryBudget(cl) { return wait }
            observe.flags.insert(.UO)   // the retry budget or max_retries refused it (Envoy's UO)
            return nil
        }
    }

    /// The request's one unit of the retry budget (per worker) and of the max_retries breaker (per
    /// process), taken for its first retry or hedge and held until it ends; false (counted) when
    /// either is spent.
    func takeRetryBudget(_ cl: Cluster) -> Bool {
        if holdsRetryBudget { return true }
        if cl.retryBudget != nil {
            guard cl.retryBudget!.admit(activeRequests: Int(cl.stats.load(.upstream_rq_active))) else {
                cl.stats.inc(.upstream_rq_retry_overflow)
                return false
            }
        }
        guard cl.admitRetry() else {
            cl.retryBudget?.release()
            cl.stats.inc(.upstream_rq_retry_overflow)
            return false
        }
        holdsRetryBudget = true
        return true
    }

    /// Starts the next try now, or after `wait` ms (the timer's `retryAt`).
    func scheduleRetry(after wait: UInt64) {
        clusterStats?.inc(.upstream_rq_retry)
        if wait == 0 { startRetry(); return }
        clusterStats?.inc(.upstream_rq_retry_backoff_exponential)
        retryAt = timer.now &+ wait
        arm(deadlineKind)
    }

    /// The next try, on another endpoint than the last when the cluster has one.
    func startRetry() {
        cluster?.avoidNext = lastTryEndpoint
        dispatch(fresh: true)
    }

    /// The try's `per_try_timeout` passed before its response head: cancel it (HTTP/2 RST_STREAM
    /// CANCEL, HTTP/1.1 connection closed), then retry if the policy allows, else 504.
    func tryTimedOut() {
        if hedgeAt != 0 {   // time for the hedge (the per-try timeout, if any, is later)
            let perTry = retry?.policy.perTryTimeout ?? 0
            hedgeAt = 0
            tryDeadline = perTry != 0 ? attemptStart &+ perTry : 0
            startHedge()
            if tryDeadline == 0 || timer.now < tryDeadline { arm(deadlineKind); return }
        }
        tryDeadline = 0
        clusterStats?.inc(.upstream_rq_per_try_timeout)
        if let u = upstream {
            upstream = nil
            endAttempt(.timeout)
            u.detach(clean: false)
        }
        if hedge != nil { return }   // the hedge under way is the next try
        if let wait = retryDecision(AttemptOutcome(kind: .timeout)) {
            scheduleRetry(after: wait)
            return
        }
        clusterStats?.inc(.upstream_rq_timeout)
        stats.inc(.downstream_rq_timeout)
        observe.flags.insert(.UT)
        if isGRPC { grpcLocal(.deadlineExceeded, "upstream per-try timeout") } else { local(504, "upstream per-try timeout\n") }
    }

    /// Request body bytes that arrive while a retry waits its backoff: kept for the next try while
    /// they fit the replay buffer; beyond it the retry is given up (502, as the failed try).
    func bufferWhileWaiting(_ data: UnsafeRawBufferPointer) {
        if dispatchDelay != 0 { holdDuringDelay(data); return }   // the first try waits a filter's delay
        downstream?.requestConsumed(data.count)
        if replayable && replay.count + data.count <= Exchange.replayLimit {
            if replay.base == nil { replay = pool.take() }
            replay.append(data)
            return
        }
        replayable = false
        retryAt = 0
        if holdsRetryBudget { releaseRetryBudget() }
        clusterStats?.inc(.upstream_rq_retry_body_too_large)
        noUpstream(.reset(code: 0))
    }

    func releaseRetryBudget() {
        holdsRetryBudget = false
        cluster?.retryBudget?.release()
        cluster?.releaseRetry()
    }

    /// The server's requested wait before a retry: Retry-After (503, 429) or grpc-retry-pushback-ms.
    static func pushback(status: Int, headers: UnsafeBufferPointer<HeaderRef>, grpc: Bool) -> UInt64? {
        if grpc, let i = headers.firstIndex(named: "grpc-retry-pushback-ms") { return RetryPushback.grpcPushback(headers[i].value) }
        if status == 503 || status == 429, let i = headers.firstIndex(named: "retry-after") {
            return RetryPushback.retryAfter(headers[i].value)
        }
        return nil
    }

    /// The request's method as stored for the upstream (the request line toward HTTP/1.1, `:method`
    /// toward HTTP/2).
    var requestMethod: UnsafeRawBufferPointer {
        if upstreamIsHTTP2 { return reqHead.count > 0 ? reqHead.value(0) : UnsafeRawBufferPointer(start: nil, count: 0) }
        let line = upHead.bytes
        guard let sp = line.firstIndex(of: 0x20) else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(rebasing: line[..<sp])
    }
}
