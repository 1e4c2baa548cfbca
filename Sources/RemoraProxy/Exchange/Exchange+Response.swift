import RemoraCore
import RemoraHTTP
import RemoraPolicy

extension Exchange {
    // MARK: the response (from the upstream)

    /// What to do with an upstream response head before anything of it reaches the client: the
    /// decision point of response-side policies. Forward it, or try again after `wait` ms (the
    /// route's retry policy matched its status or gRPC status, and the budget allowed it).
    /// `drop`: this try's answer is dropped and the hedge under way awaited.
    enum ResponseHeadDecision { case forward, retry(wait: UInt64), drop }

    @inline(__always)
    func decideResponseHead(status: Int, headers: UnsafeBufferPointer<HeaderRef>, endStream: Bool) -> ResponseHeadDecision {
        guard let r = retry else { return .forward }
        let o = AttemptOutcome(kind: .response, status: status, grpcStatus: attemptGRPCStatus)
        guard r.policy.matches(o) else {
            if r.tries > 1 { clusterStats?.inc(.upstream_rq_retry_success) }
            if let h = hedge { hedge = nil; Exchange.endHedge(h) }   // this head won: the hedge is cancelled
            return .forward
        }
        if hedge != nil { return .drop }
        let wait = retryDecision(o, pushback: Exchange.pushback(status: status, headers: headers, grpc: isGRPC))
        return wait.map { .retry(wait: $0) } ?? .forward
    }

    func upstreamHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                      lengthKnown: Bool, endStream: Bool) {
        if let p = hedgeOf { p.hedgeHead(self, status: status, reason: reason, headers: headers, lengthKnown: lengthKnown,
                                         endStream: endStream); return }
        guard active else { return }
        withDownstream(()) { d in
            upstreamHead(d, status: status, reason: reason, headers: headers, lengthKnown: lengthKnown, endStream: endStream)
        }
    }

    @inline(__always)
    func upstreamHead(_ d: any DownstreamSide, status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                      lengthKnown: Bool, endStream: Bool) {
        attemptStatus = status
        attemptHeadAt = timer.now
        if isGRPC && endStream, let i = headers.firstIndex(named: "grpc-status") { attemptGRPCStatus = GRPC.statusCode(headers[i].value) }
        switch decideResponseHead(status: status, headers: headers, endStream: endStream) {
        case .forward:
            break
        case .retry(let wait):   // this try's answer is dropped (its connection or stream cancelled)
            clusterStats?.incClass(.upstream_rq_1xx, status: status)
            if let u = upstream {
                upstream = nil
                endAttempt(.response)
                u.detach(clean: false)
            }
            scheduleRetry(after: wait)
            return
        case .drop:
            clusterStats?.incClass(.upstream_rq_1xx, status: status)
            if let u = upstream {
                upstream = nil
                endAttempt(.response)
                u.detach(clean: false)
            }
            return
        }
        responseStarted = true
        observe.status = status
        stats.incClass(.downstream_rq_1xx, status: status)
        clusterStats?.incClass(.upstream_rq_1xx, status: status)
        backendStats?.incClass(.upstream_rq_1xx, status: status)
        responseNamesLowercase = responseMutations.isEmpty && upstreamIsHTTP2
        if grpcWeb != .off {
            responseNamesLowercase = false
            respondGRPCWebHead(d, status: status, reason: reason, headers: headers, endStream: endStream)
        } else if responseMutations.isEmpty {   // (no closure: its context would retain `self` and `d`)
            if runsFilters && listener.hasResponseFilters { runResponseFilters(status: status, headers: headers) }
            d.respondHead(status: status, reason: reason, headers: headers, lengthKnown: lengthKnown, endStream: endStream)
        } else {
            withMutated(headers, responseMutations) { h in
                if runsFilters && listener.hasResponseFilters { runResponseFilters(status: status, headers: h) }
                d.respondHead(status: status, reason: reason, headers: h, lengthKnown: lengthKnown, endStream: endStream)
            }
        }
        if endStream {   // trailers-only (a gRPC error): the response is complete
            responseDone = true
            finish(clean: requestDone)
            return
        }
        if upgrade == .websocket && upstreamIsHTTP2 && status / 100 == 2 { upstreamStreamTunnel() }   // RFC 8441 through
        arm(.stream)
    }

    func upstreamBody(_ data: UnsafeRawBufferPointer) {
        guard active else { return }
        withDownstream(()) { upstreamBody($0, data) }
    }

    @inline(__always)
    func upstreamBody(_ d: any DownstreamSide, _ data: UnsafeRawBufferPointer) {
        guard hasUpstream else { return }
        clusterStats?.add(.upstream_cx_rx_bytes_total, UInt64(data.count))
        observe.bytesSent &+= UInt64(data.count)
        if grpcWeb != .off { respondGRPCWebBody(d, data) } else { d.respondBody(data) }
        if d.responseBlocked {
            owedUpstreamCredit += data.count
            if !responsePaused { responsePaused = true; withUpstream(()) { $0.pauseResponse() } }
        } else {
            withUpstream(()) { $0.responseConsumed(data.count) }
        }
        arm(.stream)
    }

    func upstreamEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {
        guard active else { return }
        withDownstream(()) { upstreamEnd($0, trailers: trailers) }
    }

    @inline(__always)
    func upstreamEnd(_ d: any DownstreamSide, trailers: UnsafeBufferPointer<HeaderRef>?) {
        if isGRPC, let t = trailers, let i = t.firstIndex(named: "grpc-status") { attemptGRPCStatus = GRPC.statusCode(t[i].value) }
        responseDone = true
        if grpcWeb != .off { respondGRPCWebEnd(d, trailers: trailers) } else { d.respondEnd(trailers: trailers) }
        finish(clean: requestDone)
    }

    /// Each filter's response-headers phase, in order.
    func runResponseFilters(status: Int, headers: UnsafeBufferPointer<HeaderRef>) {
        for f in listener.filters { f.responseHeaders(self, status: status, headers: headers) }
    }
}
