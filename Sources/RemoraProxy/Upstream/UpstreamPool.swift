import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy

/// One cluster's per-worker state: endpoints, round-robin position, idle HTTP/1.1 keep-alive
/// connections, HTTP/2 connections and their free stream objects.
final class ClusterRuntime {
    unowned(unsafe) let worker: Worker
    let index: Int
    let config: ClusterConfig
    let endpoints: [SocketAddress]
    let stats: StatBlock<ClusterStat>
    /// Idle HTTP/1.1 connections per endpoint, most recently used last (LIFO: the warmest is the
    /// least likely to have been closed by the backend).
    var idle: [[H1Upstream]]
    /// HTTP/2 connections per endpoint (new streams go to the first with room).
    var h2: [[H2UpstreamConnection]]
    /// Recycled HTTP/2 stream objects.
    var freeStreams: [H2UpstreamStream] = []
    var rr = 0
    /// Upstream connections open (or connecting) from this runtime.
    var openConnections = 0
    /// Connect rate limit (`max_connects_per_second`): credit in thousandths of a connect, refilled
    /// with loop time, at most one second's worth.
    var connectCredit: Int
    var creditAt: UInt64 = 0
    /// A retired runtime can be let go once nothing of it is open.
    var isUnused: Bool { openConnections == 0 }
    /// A newer snapshot dropped or changed this cluster: connections close instead of being pooled.
    var retired = false

    init(worker: Worker, index: Int, config: ClusterConfig, endpoints: [SocketAddress], stats: StatBlock<ClusterStat>) {
        self.worker = worker; self.index = index; self.config = config; self.endpoints = endpoints; self.stats = stats
        idle = Array(repeating: [], count: endpoints.count)
        h2 = Array(repeating: [], count: endpoints.count)
        connectCredit = config.maxConnectsPerSecond * 1000
        idle.indices.forEach { idle[$0].reserveCapacity(min(config.maxIdlePerEndpoint, 256)) }
    }

    /// One more connect within `max_connects_per_second`? Counts a refusal.
    func mayConnect() -> Bool {
        let rate = config.maxConnectsPerSecond
        if rate == 0 { return true }
        let now = worker.loop.now
        if now > creditAt {
            connectCredit = min(rate * 1000, connectCredit + Int(min(now - creditAt, 1000)) * rate)
            creditAt = now
        }
        if connectCredit < 1000 {
            stats.inc(.upstream_cx_connect_rate_limited)
            return false
        }
        connectCredit -= 1000
        return true
    }

    /// The next endpoint in round-robin order.
    @inline(__always)
    func nextEndpoint() -> Int {
        let e = rr
        rr = rr + 1 == endpoints.count ? 0 : rr + 1
        return e
    }

    /// The outcome hook: every upstream attempt of an exchange ends here exactly once, with its
    /// endpoint (an index in `endpoints`) and what happened. Endpoint health, outlier detection,
    /// breakers, budgets and latency-aware balancing hang on it (none yet).
    @inline(__always)
    func attemptEnded(endpoint: Int, _ outcome: AttemptOutcome) {}

    // MARK: HTTP/1.1

    /// A connection carrying `head` for `exchange`: a pooled one (unless `fresh`) or a new one
    /// (connecting; writes wait for it). nil when no connect could even start.
    func openHTTP1(for exchange: Exchange, head: UnsafeRawBufferPointer, isHEAD: Bool, fresh: Bool) -> H1Upstream? {
        let e = nextEndpoint()
        if !fresh {
            while let u = idle[e].popLast() {
                u.isIdle = false
                stats.inc(.upstream_cx_pool_reuse)
                if u.begin(exchange: exchange, head: head, isHEAD: isHEAD) { return u }
                u.conn.close()   // the backend closed it while pooled
            }
        }
        guard let c = connect(e) else { return nil }
        let u = H1Upstream(cluster: self, endpoint: e, conn: c)
        _ = u.begin(exchange: exchange, head: head, isHEAD: isHEAD)
        return u
    }

    /// A new TCP connection to `endpoint`, connecting, with the connect timeout armed.
    func connect(_ endpoint: Int) -> TCPConnection? {
        guard mayConnect() else { return nil }
        let c = TCPConnection(loop: worker.loop)
        stats.inc(.upstream_cx_total)
        stats.inc(.upstream_cx_active)
        if c.connect(to: endpoints[endpoint]) != 0 {
            stats.inc(.upstream_cx_connect_fail)
            stats.dec(.upstream_cx_active)
            c.close()
            return nil
        }
        openConnections += 1
        c.setDeadline(after: config.connectTimeout)
        return c
    }

    /// Takes back a connection whose exchange finished cleanly; closes it when the pool is full
    /// or the worker is draining.
    func release(_ u: H1Upstream) {
        if worker.draining || retired || idle[u.endpoint].count >= config.maxIdlePerEndpoint {
            u.conn.close()
            return
        }
        u.isIdle = true
        if !u.conn.connecting { u.conn.clearDeadline() }   // a connecting one keeps its connect timeout
        idle[u.endpoint].append(u)
    }

    /// Forgets an idle connection that closed.
    func removeIdle(_ u: H1Upstream) {
        guard u.isIdle else { return }
        u.isIdle = false
        if let i = idle[u.endpoint].firstIndex(where: { $0 === u }) { idle[u.endpoint].remove(at: i) }
    }

    // MARK: HTTP/2

    /// A stream for `exchange` on a connection to the next endpoint that has room (the peer's
    /// SETTINGS_MAX_CONCURRENT_STREAMS), or on a new connection.
    /// `retry`: a stream the peer refused goes where the peer's limit is known, or on a new connection.
    func openHTTP2(for exchange: Exchange, head: HeaderBlock, hasBody: Bool, retry: Bool = false) -> H2UpstreamStream? {
        let e = nextEndpoint()
        var conn = h2[e].first { $0.hasRoom && (!retry || $0.settingsKnown) }
        if conn == nil {
            guard let c = connect(e) else { return nil }
            let n = H2UpstreamConnection(cluster: self, endpoint: e, conn: c)
            h2[e].append(n)
            conn = n
        }
        let s = freeStreams.popLast() ?? H2UpstreamStream()
        if !conn!.open(s, for: exchange, head: head, hasBody: hasBody) {
            freeStreams.append(s)
            return nil
        }
        stats.inc(.upstream_cx_pool_reuse)
        return s
    }

    func removeHTTP2(_ c: H2UpstreamConnection) {
        if let i = h2[c.endpoint].firstIndex(where: { $0 === c }) { h2[c.endpoint].remove(at: i) }
    }

    func closeIdle() {
        for e in idle.indices {
            let list = idle[e]
            idle[e].removeAll()
            for u in list { u.isIdle = false; u.conn.close() }
        }
        for e in h2.indices { for c in h2[e] { c.drain() } }
    }
}

/// An HTTP/1.1 client connection to one endpoint, serving one exchange at a time.
final class H1Upstream: UpstreamStream, TCPConnectionDelegate, HTTP1ParserDelegate {
    unowned(unsafe) let cluster: ClusterRuntime
    let endpoint: Int
    let conn: TCPConnection
    let parser: HTTP1Parser
    unowned(unsafe) var exchange: Exchange?
    var isIdle = false
    var reused = false
    var gotResponseBytes = false
    /// The current response is a 1xx interim response (not forwarded; the final one follows).
    var interim = false
    var requestIsHEAD = false
    var responseDone = false
    var framing = BodyFraming.none
    /// At `begin`: nothing was queued, and the connection's write count then. If neither changed
    /// when the exchange is cancelled, no byte of its request left: the queue is dropped and the
    /// connection (even one still connecting) goes back to the pool instead of being closed.
    var startedEmpty = false
    var writesAtBegin: UInt64 = 0

    init(cluster: ClusterRuntime, endpoint: Int, conn: TCPConnection) {
        self.cluster = cluster
        self.endpoint = endpoint
        self.conn = conn
        parser = HTTP1Parser(kind: .response, maxHeadBytes: 256 * 1024, maxHeaders: 200, pauseAfterMessage: true)
        parser.delegate = self
        parser.pool = cluster.worker.pool
        conn.delegate = self
        conn.owner = self
        conn.startReading()
    }

    /// Starts serving `exchange`, `head` first. False when the connection is already unusable.
    func begin(exchange e: Exchange, head: UnsafeRawBufferPointer, isHEAD: Bool) -> Bool {
        exchange = e
        requestIsHEAD = isHEAD
        framing = e.reqFraming
        gotResponseBytes = false
        responseDone = false
        interim = false
        if e.inDownstreamRead { conn.cork() }   // head and body of the same read leave together
        startedEmpty = conn.queuedBytes == 0
        writesAtBegin = conn.writesStarted
        return conn.write(head)
    }

    // MARK: UpstreamStream

    func sendBody(_ data: UnsafeRawBufferPointer) {
        if framing == .chunked {
            let w = cluster.worker
            w.scratch.clear()
            HTTP1Head.writeChunkHeader(data.count, into: &w.scratch)
            conn.write(w.scratch.bytes, data, rawBytes("\r\n"))
        } else {
            conn.write(data)
        }
    }

    func sendEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {
        guard framing == .chunked else { return }
        let w = cluster.worker
        w.scratch.clear()
        HTTP1Head.writeLastChunk(trailers: trailers, into: &w.scratch)
        conn.write(w.scratch.bytes)
    }

    var requestBlocked: Bool { conn.isAboveHighWatermark }
    func pauseResponse() { conn.stopReading() }
    func resumeResponse() { conn.startReading() }
    func responseConsumed(_ n: Int) {}
    var wasReused: Bool { reused }
    func flushRequest() { conn.uncork() }

    func detach(clean: Bool) {
        exchange = nil
        if !clean && unsent() {
            cluster.stats.inc(.upstream_rq_cancelled_unsent)
            conn.uncork()
            cluster.release(self)
            return
        }
        conn.uncork()
        if clean && responseDone && parser.shouldKeepAlive && !conn.isClosing && !conn.failed {
            reused = true
            conn.startReading()
            parser.trim()
            cluster.release(self)
        } else {
            conn.close()
        }
    }

    /// Nothing of the current request left (it was corked or waiting for the connect) and no
    /// response byte came: drops the queued request, true when the connection is clean again.
    func unsent() -> Bool {
        guard startedEmpty, conn.writesStarted == writesAtBegin, !gotResponseBytes, !conn.isClosing, !conn.failed,
              conn.discardQueued() else { return false }
        return true
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        if status != 0 {
            cluster.stats.inc(.upstream_cx_connect_fail)
            if exchange == nil { c.close(); return }   // pooled while connecting
            fail(.connectFailed)
            return
        }
        c.clearDeadline()
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        guard let e = exchange, !responseDone else {
            c.close()   // bytes nobody asked for: the connection is out of sync
            return
        }
        gotResponseBytes = true
        var input = data
        parsing: while true {
            switch parser.feed(input) {
            case .ok:
                break parsing
            case .paused(let consumed):   // after a complete message: an interim 1xx, or the response
                parser.resume()
                if consumed == input.count { break parsing }
                if responseDone { c.close(); break parsing }   // bytes after the response: out of sync
                input = UnsafeRawBufferPointer(rebasing: input[consumed...])
            case .error:
                fail(.protocolError)
                return
            }
        }
        e.upstreamReadDone()
    }

    func connectionEOF(_ c: TCPConnection) {
        if exchange != nil && !responseDone && gotResponseBytes {
            // A response delimited by the connection's end completes here; anything else was cut short.
            _ = parser.finish()
            if responseDone { return }
        }
        if exchange != nil && !responseDone { cluster.stats.inc(.upstream_cx_destroy_remote) }
        fail(.reset(code: 0))
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) {
        cluster.stats.inc(.upstream_cx_destroy_remote)
        fail(.reset(code: 0))
    }

    func connectionTimeout(_ c: TCPConnection) {
        // Only armed while connecting.
        cluster.stats.inc(.upstream_cx_connect_timeout)
        cluster.stats.inc(.upstream_cx_connect_fail)
        if exchange == nil { c.close(); return }   // pooled while connecting
        fail(.connectFailed)
    }

    func connectionDrained(_ c: TCPConnection) { exchange?.upstreamDrained() }

    func connectionClosed(_ c: TCPConnection) {
        cluster.stats.dec(.upstream_cx_active)
        cluster.openConnections -= 1
        cluster.removeIdle(self)
        parser.delegate = nil
    }

    func fail(_ why: UpstreamFailure) {
        let e = exchange
        conn.close()
        if !responseDone { e?.upstreamFailed(why) }   // the exchange detaches us
        exchange = nil
    }

    // MARK: HTTP1ParserDelegate

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        let status = p.statusCode
        if status >= 100 && status < 200 {
            interim = true
            return false
        }
        interim = false
        // No body after 204, 304 or a response to HEAD, whatever Content-Length says (RFC 9112 §6.3).
        let noBody = requestIsHEAD || status == 204 || status == 304
        guard let e = exchange else { return true }
        p.withHeaderRefs { h in
            e.upstreamHead(status: status, reason: p.startLine, headers: h,
                           lengthKnown: p.hasContentLength && !p.isChunked, endStream: false)
        }
        return noBody
    }

    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {
        exchange?.upstreamBody(data)
    }

    func parserMessageComplete(_ p: HTTP1Parser) {
        if interim { interim = false; return }
        responseDone = true
        if p.trailers.count > 0 { p.trailers.withRefs { exchange?.upstreamEnd(trailers: $0) } } else { exchange?.upstreamEnd(trailers: nil) }
        p.clearTrailers()
    }
}
