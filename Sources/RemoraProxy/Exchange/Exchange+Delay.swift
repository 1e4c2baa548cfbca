import RemoraCore
import RemoraHTTP

extension Exchange {
    // MARK: a filter's delay (fault injection): the first try waits, on the exchange's timer

    /// The router prepared the upstream request; the first try starts after `dispatchDelay` ms
    /// (the wait shares `retryAt` with a retry's backoff: one timer, one deadline). The delay is time
    /// the client waits for a head, so it counts against the route's `timeout`.
    func delayDispatch(fresh: Bool) {
        delayedFresh = fresh
        retryAt = timer.now &+ dispatchDelay
    }

    /// Answers `reply` after `ms` (a fault's delay, then abort); the router does not run.
    func delayThenAnswer(_ ms: Millis, _ reply: LocalReply) {
        dispatchDelay = ms
        delayedReply = reply
        routeTimeout = 0   // no upstream: only the delay and the client's own deadlines run
        retryAt = timer.now &+ ms
        arm(requestDone ? .upstreamHead : .stream)
    }

    /// The delay is over: answer, or start the first try (and resume a client paused meanwhile).
    func endDelay() {
        dispatchDelay = 0
        if let reply = delayedReply {
            delayedReply = nil
            answer(reply)
            return
        }
        if replay.count > Exchange.replayLimit { replayable = false }
        dispatch(fresh: delayedFresh)
        if !replayable { pool.give(&replay) }
        guard active else { return }
        if requestPaused, let u = upstream, !u.requestBlocked { upstreamDrained() }
        if !responseStarted { armAfterRequestProgress() }
    }

    /// Request body bytes that arrive during the delay: kept for the first try. Past the replay
    /// buffer's size they are still kept but no longer acknowledged: the client is paused (HTTP/1.1
    /// stops reading, HTTP/2 withholds credit) until the try starts, so what is held stays bounded.
    /// Bytes of a request that will be answered locally are dropped.
    func holdDuringDelay(_ data: UnsafeRawBufferPointer) {
        if delayedReply != nil { downstream?.requestConsumed(data.count); return }
        if shadow != nil { feedShadow(data) }
        if replay.base == nil { replay = pool.take() }
        replay.append(data)
        if replay.count > Exchange.replayLimit {
            owedCredit += data.count
            if !requestPaused { requestPaused = true; downstream?.pauseRequest() }
        } else {
            downstream?.requestConsumed(data.count)
        }
    }

    /// A filter's answer: plain for HTTP requests, trailers-only for gRPC ones.
    func answer(_ r: LocalReply) {
        let extra = r.extraFields
        if isGRPC {
            grpcLocal(code: Int(r.grpcStatus), String(describing: r.message), extra: extra)
        } else {
            var body = ByteBuffer(capacity: r.message.utf8CodeUnitCount + 1)
            body.append(r.message)
            body.append(byte: 0x0A)
            local(Int(r.status), body: body.bytes, location: nil, extra: extra)
            body.release()
        }
    }
}
