import RemoraCore
import RemoraHTTP
import RemoraIO

/// One cluster's per-worker state: endpoints, round-robin position, idle keep-alive connections.
final class ClusterRuntime {
    unowned(unsafe) let worker: Worker
    let index: Int
    let config: ClusterConfig
    let endpoints: [SocketAddress]
    let stats: StatBlock<ClusterStat>
    /// Idle connections per endpoint, most recently used last (LIFO: the warmest is least likely
    /// to have been closed by the backend).
    var idle: [[UpstreamConnection]]
    var rr = 0

    init(worker: Worker, index: Int, config: ClusterConfig, endpoints: [SocketAddress], stats: StatBlock<ClusterStat>) {
        self.worker = worker; self.index = index; self.config = config; self.endpoints = endpoints; self.stats = stats
        idle = Array(repeating: [], count: endpoints.count)
        idle.indices.forEach { idle[$0].reserveCapacity(min(config.maxIdlePerEndpoint, 256)) }
    }

    /// The next endpoint in round-robin order.
    @inline(__always)
    func nextEndpoint() -> Int {
        let e = rr
        rr = rr + 1 == endpoints.count ? 0 : rr + 1
        return e
    }

    /// An idle connection to `endpoint`, or nil.
    @inline(__always)
    func takeIdle(_ endpoint: Int) -> UpstreamConnection? {
        guard let u = idle[endpoint].popLast() else { return nil }
        u.isIdle = false
        stats.inc(.upstream_cx_pool_reuse)
        return u
    }

    /// A new connection to `endpoint` (connecting; writes are queued until it is up), or nil when
    /// the connect could not even start.
    func connect(_ endpoint: Int) -> UpstreamConnection? {
        let c = TCPConnection(loop: worker.loop)
        let u = UpstreamConnection(cluster: self, endpoint: endpoint, conn: c)
        stats.inc(.upstream_cx_total)
        stats.inc(.upstream_cx_active)
        let rc = c.connect(to: endpoints[endpoint])
        if rc != 0 {
            stats.inc(.upstream_cx_connect_fail)
            c.close()
            return nil
        }
        c.setDeadline(after: config.connectTimeout)
        return u
    }

    /// Takes back a connection whose exchange finished cleanly; closes it when the pool is full
    /// or the worker is draining.
    func release(_ u: UpstreamConnection) {
        if worker.draining || idle[u.endpoint].count >= config.maxIdlePerEndpoint {
            u.conn.close()
            return
        }
        u.isIdle = true
        u.conn.clearDeadline()
        idle[u.endpoint].append(u)
    }

    /// Forgets an idle connection that closed.
    func removeIdle(_ u: UpstreamConnection) {
        guard u.isIdle else { return }
        u.isIdle = false
        if let i = idle[u.endpoint].firstIndex(where: { $0 === u }) { idle[u.endpoint].remove(at: i) }
    }

    func closeIdle() {
        for e in idle.indices {
            let list = idle[e]
            idle[e].removeAll()
            for u in list { u.isIdle = false; u.conn.close() }
        }
    }
}

/// What an upstream connection tells the request it serves.
protocol UpstreamOwner: AnyObject {
    /// Return true when the response has no body whatever its headers say (HEAD).
    func upstreamHead(_ u: UpstreamConnection, _ p: HTTP1Parser) -> Bool
    func upstreamBody(_ u: UpstreamConnection, _ data: UnsafeRawBufferPointer)
    func upstreamComplete(_ u: UpstreamConnection)
    /// The connection failed; `connectFailed` when it never came up.
    func upstreamFailed(_ u: UpstreamConnection, connectFailed: Bool, timedOut: Bool)
    /// One read from the upstream has been parsed (the owner flushes what it collected).
    func upstreamReadDone(_ u: UpstreamConnection)
    /// The connection's write queue emptied after being above its high watermark.
    func upstreamDrained(_ u: UpstreamConnection)
}

/// An HTTP/1.1 client connection to one endpoint, serving one request at a time.
final class UpstreamConnection: TCPConnectionDelegate, HTTP1ParserDelegate {
    unowned(unsafe) let cluster: ClusterRuntime
    let endpoint: Int
    let conn: TCPConnection
    let parser: HTTP1Parser
    unowned(unsafe) var owner: (any UpstreamOwner)?
    var isIdle = false
    var connected = false
    /// Has carried at least one complete exchange (so a failure may be the keep-alive close race).
    var reused = false
    /// Any byte of the current response arrived.
    var gotResponseBytes = false
    /// The current response is a 1xx interim response (not forwarded; the final one follows).
    var interim = false
    /// The request being answered was HEAD.
    var requestIsHEAD = false
    var responseDone = false

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

    /// Starts serving a request; `head` is written first.
    func begin(owner: any UpstreamOwner, head: UnsafeRawBufferPointer, isHEAD: Bool) -> Bool {
        self.owner = owner
        requestIsHEAD = isHEAD
        gotResponseBytes = false
        responseDone = false
        interim = false
        return conn.write(head)
    }

    /// Ends the current exchange: back to the pool when the response completed on a reusable
    /// connection, closed otherwise (the backend then sees the request cancelled).
    func finish(reusable: Bool) {
        owner = nil
        if reusable && responseDone && parser.shouldKeepAlive && !conn.isClosing && !conn.failed {
            reused = true
            parser.trim()
            cluster.release(self)
        } else {
            conn.close()
        }
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        if status != 0 {
            cluster.stats.inc(.upstream_cx_connect_fail)
            let o = owner
            owner = nil
            c.close()
            o?.upstreamFailed(self, connectFailed: true, timedOut: false)
            return
        }
        connected = true
        c.clearDeadline()
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        cluster.stats.add(.upstream_cx_rx_bytes_total, UInt64(data.count))
        guard owner != nil, !responseDone else {
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
                fail(timedOut: false)
                return
            }
        }
        owner?.upstreamReadDone(self)
    }

    func connectionEOF(_ c: TCPConnection) {
        if owner != nil && !responseDone && gotResponseBytes {
            // A response delimited by the connection's end completes here; anything else was cut short.
            _ = parser.finish()
            if responseDone { return }
        }
        if owner != nil && !responseDone { cluster.stats.inc(.upstream_cx_destroy_remote) }
        fail(timedOut: false)
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) {
        cluster.stats.inc(.upstream_cx_destroy_remote)
        fail(timedOut: false)
    }

    func connectionTimeout(_ c: TCPConnection) {
        // Only armed while connecting.
        cluster.stats.inc(.upstream_cx_connect_timeout)
        cluster.stats.inc(.upstream_cx_connect_fail)
        let o = owner
        owner = nil
        c.close()
        o?.upstreamFailed(self, connectFailed: true, timedOut: true)
    }

    func connectionDrained(_ c: TCPConnection) { owner?.upstreamDrained(self) }

    func connectionClosed(_ c: TCPConnection) {
        cluster.stats.dec(.upstream_cx_active)
        cluster.removeIdle(self)
        parser.delegate = nil
    }

    func fail(timedOut: Bool) {
        let o = owner
        owner = nil
        conn.close()
        if !responseDone { o?.upstreamFailed(self, connectFailed: false, timedOut: timedOut) }
    }

    // MARK: HTTP1ParserDelegate

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        let status = p.statusCode
        if status >= 100 && status < 200 {
            interim = true
            return false
        }
        interim = false
        guard let o = owner else { return true }
        // No body after 204, 304 or a response to HEAD, whatever Content-Length says (RFC 9112 §6.3).
        return o.upstreamHead(self, p) || requestIsHEAD || status == 204 || status == 304
    }

    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {
        owner?.upstreamBody(self, data)
    }

    func parserMessageComplete(_ p: HTTP1Parser) {
        if interim { interim = false; return }
        responseDone = true
        owner?.upstreamComplete(self)
    }
}
