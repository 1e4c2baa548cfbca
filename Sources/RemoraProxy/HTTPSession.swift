import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraRouting

/// One downstream HTTP/1.1 connection: parses requests, routes each to a cluster, forwards it on a
/// pooled upstream connection and streams the response back. One exchange at a time; pipelined
/// requests wait (bytes stashed, bounded) until the previous response is complete, so answers go out
/// in order. Bodies stream both ways with watermarks: the side that writes too fast stops being read.
final class HTTPSession: Session, TCPConnectionDelegate, HTTP1ParserDelegate, UpstreamOwner {
    enum Deadline { case header, idle, upstreamHead, stream }

    unowned(unsafe) let worker: Worker
    unowned(unsafe) let listener: ListenerRuntime
    let conn: TCPConnection
    let parser: HTTP1Parser
    /// The client's IP, for X-Forwarded-For (an IPv4 address fits a String's inline storage).
    var clientIP: String
    var deadlineKind = Deadline.header

    // The current exchange.
    var active = false
    var requestDone = false
    var responseStarted = false
    var responseDone = false
    var keepAlive = true
    var isHEAD = false
    var isHTTP10 = false
    var reqFraming = BodyFraming.none
    var respFraming = BodyFraming.none
    var upstream: UpstreamConnection?
    unowned(unsafe) var cluster: ClusterRuntime?
    var clusterActive = false
    var routeTimeout: Millis = 0
    /// Serialized upstream request head, kept until the response starts (for a retry).
    var upHead = ByteBuffer()
    /// Request body bytes sent so far, while they fit in `replayLimit` (for a retry).
    var replay = ByteBuffer()
    var replayable = true
    var reuseRetries = 0
    var connectRetries = 0
    static let replayLimit = 64 * 1024

    // Input flow.
    var stash = ByteBuffer()
    var work = ByteBuffer()
    var parserPaused = false
    var inFeed = false
    var resumePending = false
    var pausedForUpstream = false
    /// We stopped reading the upstream because the client reads slower than it writes.
    var upstreamPausedByUs = false
    var resumeWhenDrained = false
    var draining = false
    var ending = false
    static let stashLimit = 64 * 1024

    init(worker: Worker, listener: ListenerRuntime, conn: TCPConnection) {
        self.worker = worker
        self.listener = listener
        self.conn = conn
        parser = HTTP1Parser(kind: .request, maxHeadBytes: listener.config.maxRequestHeaderBytes)
        clientIP = conn.peerIP()
        super.init()
        parser.delegate = self
        parser.pool = worker.pool
        conn.delegate = self
        conn.owner = self
        arm(.header, listener.config.requestHeaderTimeout)
        conn.startReading()
    }

    @inline(__always) func arm(_ kind: Deadline, _ ms: Millis) {
        deadlineKind = kind
        if ms == 0 { conn.clearDeadline() } else { conn.setDeadline(after: ms) }
    }

    var stats: StatBlock<ListenerStat> { listener.stats }

    // MARK: downstream input

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        stats.add(.downstream_cx_rx_bytes_total, UInt64(data.count))
        if ending { return }
        if parserPaused || inFeed {
            stash.append(data)
            updateReading()
            return
        }
        if !active {
            if !parser.inHead { arm(.header, listener.config.requestHeaderTimeout) }
        } else if !requestDone {
            arm(.stream, listener.config.idleTimeout)
        }
        feed(data)
    }

    /// Runs the parser over `data`, then over stashed pipelined bytes while exchanges finish
    /// synchronously (never re-entering the parser from one of its callbacks).
    func feed(_ data: UnsafeRawBufferPointer) {
        var input = data
        while true {
            inFeed = true
            let r = parser.feed(input)
            inFeed = false
            upstream?.conn.uncork()
            if ending { return }
            switch r {
            case .ok: break
            case .paused(let consumed):
                parserPaused = true
                if consumed < input.count { stash.append(UnsafeRawBufferPointer(rebasing: input[consumed...])) }
            case .error:
                parseError()
                return
            }
            work.clear(keepingAtMost: 0)
            guard resumePending else { updateReading(); return }
            resumePending = false
            parserPaused = false
            parser.resume()
            if stash.isEmpty { updateReading(); return }
            swap(&stash, &work)
            input = work.bytes
            arm(.header, listener.config.requestHeaderTimeout)
        }
    }

    /// After an exchange: lets the parser go on with the next (pipelined) request — once the client
    /// has read what is queued for it, so a client that pipelines without reading gets no more.
    func resumeInput() {
        if conn.isAboveHighWatermark { resumeWhenDrained = true; return }
        if inFeed { resumePending = true; return }
        guard parserPaused else { updateReading(); return }
        parserPaused = false
        parser.resume()
        if stash.isEmpty { updateReading(); return }
        swap(&stash, &work)
        arm(.header, listener.config.requestHeaderTimeout)
        feed(work.bytes)
    }

    func updateReading() {
        if ending { return }
        if pausedForUpstream || stash.count > HTTPSession.stashLimit { conn.stopReading() } else { conn.startReading() }
    }

    func connectionEOF(_ c: TCPConnection) {
        if active && !requestDone {
            stats.inc(.downstream_rq_rx_reset)
            abort()
        } else if active {
            keepAlive = false     // half-closed after a complete request: answer, then close
        } else {
            stats.inc(.downstream_cx_destroy_remote)
            c.close()
        }
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) {
        if active { stats.inc(.downstream_rq_rx_reset) }
        abort()
    }

    func connectionDrained(_ c: TCPConnection) {
        if resumeWhenDrained {
            resumeWhenDrained = false
            resumeInput()
        }
        if upstreamPausedByUs, let u = upstream {
            upstreamPausedByUs = false
            u.conn.startReading()
        }
    }

    func connectionTimeout(_ c: TCPConnection) {
        switch deadlineKind {
        case .header:
            if active { abort(); return }
            stats.inc(.downstream_rq_timeout)
            localResponse(408, "request header timeout\n", closing: true)
        case .idle:
            stats.inc(.downstream_cx_idle_timeout)
            c.close()
        case .upstreamHead:
            cluster?.stats.inc(.upstream_rq_timeout)
            stats.inc(.downstream_rq_timeout)
            localResponse(504, "upstream request timeout\n", closing: !requestDone)
        case .stream:
            if !responseStarted && !requestDone {
                stats.inc(.downstream_rq_timeout)
                localResponse(408, "request body timeout\n", closing: true)
            } else {
                abort()
            }
        }
    }

    func connectionClosed(_ c: TCPConnection) {
        ending = true
        if let u = upstream { upstream = nil; u.finish(reusable: false) }
        if active { endExchangeStats() }
        stats.dec(.downstream_cx_active)
        parser.delegate = nil
        worker.pool.give(&upHead); worker.pool.give(&replay); stash.release(); work.release()
        worker.remove(self)
    }

    // MARK: requests

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        active = true
        requestDone = false
        responseStarted = false
        responseDone = false
        stats.inc(.downstream_rq_total)
        stats.inc(.downstream_rq_active)
        isHEAD = p.isHEAD
        isHTTP10 = p.versionMajor == 1 && p.versionMinor == 0
        keepAlive = p.shouldKeepAlive && !draining && !worker.draining
        arm(.stream, listener.config.idleTimeout)

        if p.isCONNECT {
            localResponse(405, "CONNECT is not supported\n", closing: true)
            return false
        }
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1. §6.1: a transfer coding other than chunked
        // cannot be forwarded faithfully once the body is re-framed: refuse it.
        if p.hostCount > 1 || (p.hostCount == 0 && !isHTTP10) {
            localResponse(400, "exactly one Host header is required\n", closing: true)
            return false
        }
        if p.transferEncodingIndex >= 0 && !p.value(p.transferEncodingIndex).equalsLowercase("chunked") {
            localResponse(501, "only the chunked transfer coding is supported\n", closing: true)
            return false
        }
        guard let ri = listener.routes.match(target: p.startLine) else {
            stats.inc(.downstream_rq_no_route)
            localResponse(404, "no route\n", closing: p.hasBody)
            return false
        }
        let cl = worker.clusters[listener.routes.pickCluster(route: ri, random: worker.rng.next())]
        cluster = cl
        routeTimeout = listener.routes.entries[ri].timeout
        reqFraming = p.isChunked ? .chunked : (p.hasContentLength ? .contentLength : .none)

        var expectContinue = false
        if p.expectIndex >= 0 {
            guard p.value(p.expectIndex).equalsLowercase("100-continue") else {
                localResponse(417, "unsupported expectation\n", closing: true)
                return false
            }
            expectContinue = !isHTTP10
        }
        if upHead.base == nil { upHead = worker.pool.take() }
        upHead.clear()
        clientIP.withUTF8 { ip in
            HTTP1Head.writeRequest(p, framing: reqFraming, clientIP: UnsafeRawBufferPointer(ip), proto: "http",
                                   dropExpect: expectContinue, into: &upHead)
        }
        replay.clear()
        replayable = true
        reuseRetries = 1
        connectRetries = cl.endpoints.count > 1 ? 1 : 0
        cl.stats.inc(.upstream_rq_total)
        cl.stats.inc(.upstream_rq_active)
        clusterActive = true
        if expectContinue && p.hasBody { conn.write(rawBytes("HTTP/1.1 100 Continue\r\n\r\n")) }
        // A body that may outgrow the replay buffer goes on a fresh connection: a pooled one could
        // be closed by the backend under it (the keep-alive race) with nothing left to retry from.
        dispatch(fresh: p.isChunked || (p.hasContentLength && p.contentLength > UInt64(HTTPSession.replayLimit)))
        return false
    }

    /// Sends the request (head, and any body bytes already received) on an upstream connection:
    /// an idle pooled one unless `fresh`, else a new one.
    func dispatch(fresh: Bool) {
        guard let cl = cluster else { return }
        var fresh = fresh
        while true {
            let e = cl.nextEndpoint()
            guard let u = (fresh ? nil : cl.takeIdle(e)) ?? cl.connect(e) else {
                noUpstream(connectFailed: true)
                return
            }
            upstream = u
            cl.stats.add(.upstream_cx_tx_bytes_total, UInt64(upHead.count))
            if inFeed { u.conn.cork() }   // head and body bytes of this read leave together (see feed)
            if u.begin(owner: self, head: upHead.bytes, isHEAD: isHEAD) {
                if !replay.isEmpty { writeUpstreamBody(u, replay.bytes) }
                if requestDone && reqFraming == .chunked { u.conn.write(rawBytes("0\r\n\r\n")) }
                if requestDone && routeTimeout > 0 { arm(.upstreamHead, routeTimeout) }
                return
            }
            // The idle connection was closed by the backend since it was pooled.
            upstream = nil
            u.finish(reusable: false)
            if fresh { noUpstream(connectFailed: false); return }
            cl.stats.inc(.upstream_rq_retry)
            fresh = true
        }
    }

    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {
        guard let u = upstream, !responseDone else { return }
        if replayable {
            if replay.count + data.count <= HTTPSession.replayLimit {
                if replay.base == nil { replay = worker.pool.take() }
                replay.append(data)
            } else {
                replayable = false
                worker.pool.give(&replay)
            }
        }
        writeUpstreamBody(u, data)
        if u.conn.isAboveHighWatermark && !pausedForUpstream {
            pausedForUpstream = true
            updateReading()
        }
    }

    func writeUpstreamBody(_ u: UpstreamConnection, _ data: UnsafeRawBufferPointer) {
        cluster?.stats.add(.upstream_cx_tx_bytes_total, UInt64(data.count))
        if reqFraming == .chunked {
            worker.scratch.clear()
            HTTP1Head.writeChunkHeader(data.count, into: &worker.scratch)
            u.conn.write(worker.scratch.bytes, data, rawBytes("\r\n"))
        } else {
            u.conn.write(data)
        }
    }

    func parserMessageComplete(_ p: HTTP1Parser) {
        requestDone = true
        if let u = upstream, reqFraming == .chunked { u.conn.write(rawBytes("0\r\n\r\n")) }
        if responseDone {
            finishExchange()
        } else if !responseStarted && upstream != nil && routeTimeout > 0 {
            arm(.upstreamHead, routeTimeout)
        } else if !responseStarted {
            conn.clearDeadline()
        }
    }

    func parseError() {
        stats.inc(.downstream_cx_protocol_error)
        let status = parser.error?.status ?? 400
        if status == 431 { stats.inc(.downstream_rq_too_large) }
        if responseStarted { abort(); return }
        switch status {
        case 431: localResponse(431, "request header fields too large\n", closing: true)
        default: localResponse(400, "bad request\n", closing: true)
        }
    }

    // MARK: responses

    func upstreamHead(_ u: UpstreamConnection, _ p: HTTP1Parser) -> Bool {
        responseStarted = true
        let status = p.statusCode
        stats.incClass(.downstream_rq_1xx, status: status)
        cluster?.stats.incClass(.upstream_rq_1xx, status: status)
        if isHEAD || status == 204 || status == 304 {
            respFraming = .none
        } else if p.hasContentLength && !p.isChunked {
            respFraming = .contentLength
        } else {
            respFraming = isHTTP10 ? .closeDelimited : .chunked
        }
        if respFraming == .closeDelimited { keepAlive = false }
        if draining || worker.draining { keepAlive = false }
        worker.scratch.clear()
        HTTP1Head.writeResponse(p, framing: respFraming, keepAlive: keepAlive, into: &worker.scratch)
        conn.cork()   // the head goes out with the body bytes of the same read: one syscall
        writeDownstream(worker.scratch.bytes)
        arm(.stream, listener.config.idleTimeout)
        return false
    }

    func upstreamBody(_ u: UpstreamConnection, _ data: UnsafeRawBufferPointer) {
        if respFraming == .chunked {
            worker.scratch.clear()
            HTTP1Head.writeChunkHeader(data.count, into: &worker.scratch)
            stats.add(.downstream_cx_tx_bytes_total, UInt64(data.count))
            if !conn.write(worker.scratch.bytes, data, rawBytes("\r\n")) { abort(); return }
        } else {
            writeDownstream(data)
        }
        arm(.stream, listener.config.idleTimeout)
        if conn.isAboveHighWatermark && !upstreamPausedByUs {
            upstreamPausedByUs = true
            u.conn.stopReading()
        }
    }

    func upstreamReadDone(_ u: UpstreamConnection) { conn.uncork() }

    func upstreamComplete(_ u: UpstreamConnection) {
        if respFraming == .chunked { writeDownstream(rawBytes("0\r\n\r\n")) }
        conn.uncork()
        responseDone = true
        upstream = nil
        if upstreamPausedByUs { upstreamPausedByUs = false; u.conn.startReading() }
        u.finish(reusable: requestDone)
        if requestDone { finishExchange() } else { endConnection() }
    }

    func upstreamFailed(_ u: UpstreamConnection, connectFailed: Bool, timedOut: Bool) {
        upstream = nil
        upstreamPausedByUs = false
        guard let cl = cluster else { return }
        if responseStarted {
            // Never let a truncated response look complete: abort the downstream connection.
            cl.stats.inc(.upstream_rq_reset_after_head)
            abort()
            return
        }
        if replayable {
            if connectFailed && connectRetries > 0 {
                connectRetries -= 1
                cl.stats.inc(.upstream_rq_retry)
                dispatch(fresh: true)
                return
            }
            if !connectFailed && u.reused && !u.gotResponseBytes && reuseRetries > 0 {
                // The keep-alive close race: the backend closed a pooled connection as we reused it.
                reuseRetries -= 1
                cl.stats.inc(.upstream_rq_retry)
                dispatch(fresh: true)
                return
            }
        }
        noUpstream(connectFailed: connectFailed)
    }

    func upstreamDrained(_ u: UpstreamConnection) {
        if pausedForUpstream {
            pausedForUpstream = false
            updateReading()
        }
    }

    func noUpstream(connectFailed: Bool) {
        let name = cluster?.config.name ?? "?"
        cluster?.stats.inc(.upstream_rq_5xx)
        if connectFailed {
            localResponse(503, "no healthy upstream: connection to cluster \(name) failed\n", closing: !requestDone)
        } else {
            localResponse(502, "upstream in cluster \(name) closed the connection before responding\n", closing: !requestDone)
        }
    }

    /// Answers the current request from the proxy itself. `closing` ends the connection afterwards.
    func localResponse(_ status: Int, _ body: String, closing: Bool) {
        if !active {
            active = true
            stats.inc(.downstream_rq_total)
            stats.inc(.downstream_rq_active)
        }
        if let u = upstream { upstream = nil; u.finish(reusable: false) }
        responseStarted = true
        responseDone = true
        if closing || draining || worker.draining { keepAlive = false }
        stats.incClass(.downstream_rq_1xx, status: status)
        worker.scratch.clear()
        var body = body
        body.withUTF8 { b in
            HTTP1Head.writeLocalResponse(status: status, reason: reasonPhrase(status), body: UnsafeRawBufferPointer(b),
                                         keepAlive: keepAlive, headOnly: isHEAD, into: &worker.scratch)
        }
        writeDownstream(worker.scratch.bytes)
        conn.uncork()
        if requestDone { finishExchange() } else if !keepAlive { endConnection() }
        // else: a request without body; its end follows at once and finishes the exchange.
    }

    @inline(__always) func writeDownstream(_ b: UnsafeRawBufferPointer) {
        // (while corked this only queues; `uncork` or `finish` sends)
        stats.add(.downstream_cx_tx_bytes_total, UInt64(b.count))
        if !conn.write(b) { abort() }
    }

    func endExchangeStats() {
        stats.dec(.downstream_rq_active)
        if clusterActive { cluster?.stats.dec(.upstream_rq_active); clusterActive = false }
    }

    func finishExchange() {
        guard active else { return }
        active = false
        endExchangeStats()
        worker.pool.give(&upHead)
        worker.pool.give(&replay)
        if !keepAlive || draining || worker.draining { endConnection(); return }
        arm(.idle, listener.config.idleTimeout)
        resumeInput()
    }

    /// Flushes, sends FIN, discards what the client still sends for a moment, then closes.
    func endConnection() {
        if ending { return }
        ending = true
        if active { active = false; endExchangeStats() }
        conn.finish(linger: 1_000)
    }

    // MARK: Session

    override func drain() {
        draining = true
        if !active && !parser.inHead { conn.close() }
    }

    override func abort() {
        if let u = upstream { upstream = nil; u.finish(reusable: false) }
        ending = true
        conn.close()
    }
}

/// The bytes of a literal, for writes.
@inline(__always)
func rawBytes(_ s: StaticString) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)
}
