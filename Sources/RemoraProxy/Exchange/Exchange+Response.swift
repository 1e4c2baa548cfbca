import RemoraCore
import RemoraHTTP

extension Exchange {
    // MARK: the response (from the upstream)

    /// What to do with an upstream response head before anything of it reaches the client: the
    /// decision point of response-side policies (a retry on 503, on a gRPC status). Today every head
    /// is forwarded.
    enum ResponseHeadDecision { case forward }

    @inline(__always)
    func decideResponseHead(status: Int, headers: UnsafeBufferPointer<HeaderRef>, endStream: Bool) -> ResponseHeadDecision {
        .forward
    }

    func upstreamHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                      lengthKnown: Bool, endStream: Bool) {
        guard active, let d = downstream else { return }
        attemptStatus = status
        if isGRPC && endStream, let i = headers.firstIndex(named: "grpc-status") { attemptGRPCStatus = GRPC.statusCode(headers[i].value) }
        switch decideResponseHead(status: status, headers: headers, endStream: endStream) {
        case .forward: break
        }
        responseStarted = true
        observe.status = status
        stats.incClass(.downstream_rq_1xx, status: status)
        clusterStats?.incClass(.upstream_rq_1xx, status: status)
        backendStats?.incClass(.upstream_rq_1xx, status: status)
        responseNamesLowercase = responseMutations.isEmpty && upstreamIsHTTP2
        withMutated(headers, responseMutations) { h in
            if runsFilters { runResponseFilters(status: status, headers: h) }
            d.respondHead(status: status, reason: reason, headers: h, lengthKnown: lengthKnown, endStream: endStream)
        }
        if endStream {   // trailers-only (a gRPC error): the response is complete
            responseDone = true
            finish(clean: requestDone)
            return
        }
        arm(.stream)
    }

    func upstreamBody(_ data: UnsafeRawBufferPointer) {
        guard active, let d = downstream, let u = upstream else { return }
        clusterStats?.add(.upstream_cx_rx_bytes_total, UInt64(data.count))
        observe.bytesSent &+= UInt64(data.count)
        d.respondBody(data)
        if d.responseBlocked {
            owedUpstreamCredit += data.count
            if !responsePaused { responsePaused = true; u.pauseResponse() }
        } else {
            u.responseConsumed(data.count)
        }
        arm(.stream)
    }

    func upstreamEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {
        guard active, let d = downstream else { return }
        if isGRPC, let t = trailers, let i = t.firstIndex(named: "grpc-status") { attemptGRPCStatus = GRPC.statusCode(t[i].value) }
        responseDone = true
        d.respondEnd(trailers: trailers)
        finish(clean: requestDone)
    }

    /// Each filter's response-headers phase, in order.
    func runResponseFilters(status: Int, headers: UnsafeBufferPointer<HeaderRef>) {
        for f in listener.filters { f.responseHeaders(self, status: status, headers: headers) }
    }
}
