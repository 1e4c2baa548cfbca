import RemoraCore
import RemoraHTTP

extension Exchange {
    // MARK: request body and flow control (who pauses whom: docs/architecture.md)

    func requestBody(_ data: UnsafeRawBufferPointer) {
        if grpcWeb == .text { requestBodyGRPCWebText(data); return }   // base64 decoded first (Exchange+GRPCWeb)
        requestBodyBytes &+= UInt64(data.count)
        if maxRequestBody != 0 && requestBodyBytes > maxRequestBody && active && !responseDone {
            stats.inc(.downstream_rq_body_too_large)
            downstream?.requestConsumed(data.count)
            if responseStarted { downstream?.respondReset(code: 0x8); finish(clean: false) } else {
                local(413, "request body larger than \(maxRequestBody) bytes\n")
            }
            return
        }
        guard active, !responseDone, hasUpstream else {
            if retryAt != 0 && active && !responseDone { bufferWhileWaiting(data) } else { downstream?.requestConsumed(data.count) }
            return
        }
        if replayable {
            if replay.count + data.count <= Exchange.replayLimit {
                if replay.base == nil { replay = pool.take() }
                replay.append(data)
            } else {
                replayable = false
                pool.give(&replay)
            }
        }
        clusterStats?.add(.upstream_cx_tx_bytes_total, UInt64(data.count))
        if shadow != nil { feedShadow(data) }
        let blocked = withUpstream(false) { u in
            u.sendBody(data)
            return u.requestBlocked
        }
        if blocked {
            owedCredit += data.count
            if !requestPaused { requestPaused = true; downstream?.pauseRequest() }
        } else {
            withDownstream(()) { $0.requestConsumed(data.count) }
        }
        armAfterRequestProgress()
    }

    func requestEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {
        requestDone = true
        requestDeadline = 0
        if let sh = shadow { sh.requestEnd(trailers: trailers) }
        guard active else { return }
        if !responseDone, requestHasBody { withUpstream(()) { $0.sendEnd(trailers: trailers) } }
        if responseDone { finish(clean: true) } else { armAfterRequestProgress() }
    }

    /// The client went away or reset the stream: cancel upstream, drop everything.
    func downstreamAborted() {
        if let sh = shadow, !sh.requestDone { dropShadow(sh) }
        guard active else { return }
        stats.inc(.downstream_rq_rx_reset)
        finish(clean: false)
    }

    /// The client's connection holds too much already: stop taking response bytes from the upstream
    /// (before the head arrives the upstream is left alone: the head is small and starts the clock).
    func downstreamBlocked() {
        guard active, responseStarted, !responsePaused, let u = upstream else { return }
        responsePaused = true
        u.pauseResponse()
    }

    /// The client can take more response bytes.
    func downstreamDrained() {
        guard active, responsePaused, let u = upstream else { return }
        responsePaused = false
        u.resumeResponse()
        if owedUpstreamCredit > 0 { u.responseConsumed(owedUpstreamCredit); owedUpstreamCredit = 0 }
    }

    func upstreamDrained() {
        guard active, requestPaused else { return }
        requestPaused = false
        if owedCredit > 0 { downstream?.requestConsumed(owedCredit); owedCredit = 0 }
        downstream?.resumeRequest()
    }
}
