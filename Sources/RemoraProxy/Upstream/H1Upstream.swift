import RemoraCore
import RemoraHTTP
import RemoraIO

/// An HTTP/1.1 client connection to one endpoint, serving one exchange at a time; between
/// exchanges idle on its endpoint's stack (`Cluster+Pool.swift`) until reused or the idle timeout.
final class H1Upstream: UpstreamStream, TCPConnectionDelegate, HTTP1ParserDelegate {
    /// Its cluster and endpoint (the cluster owns the endpoint and outlives its connections). Both
    /// change only when a new cluster of a changed endpoint set adopts the connection while it is
    /// idle (`Cluster.adopt`).
    unowned(unsafe) var cluster: Cluster
    var endpoint: Endpoint.Ref
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
    /// The response was a 101 to an upgrade request: what follows it is the tunnel's, not HTTP.
    var upgraded = false
    /// After a 101 for an HTTP/2 client's extended CONNECT: bytes both ways are the tunnel's,
    /// passed to and from the exchange as body (`Exchange+Upgrade.swift`).
    var tunnel = false
    /// An HTTP/2 CONNECT's tunnel, connecting: the exchange hears `200` once connected.
    var answerConnect = false
    var framing = BodyFraming.none
    /// At `begin`: nothing was queued, and the connection's write count then. If neither changed
    /// when the exchange is cancelled, no byte of its request left: the queue is dropped and the
    /// connection (even one still connecting) goes back to the pool instead of being closed.
    var startedEmpty = false
    var writesAtBegin: UInt64 = 0

    init(cluster: Cluster, endpoint: Endpoint.Ref, conn: TCPConnection) {
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
        upgraded = false
        tunnel = false
        // Toward an HTTP/2 stream one read is what the stream may hold beyond its connection's limit.
        conn.readLimit = e.h2Downstream == nil ? UInt32(EventLoop.readBufferSize) : EventLoop.streamReadSize
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
        guard framing == .chunked else {
            if tunnel { conn.shutdownWrite() }   // the client half-closed its tunnel stream
            return
        }
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

    /// Gives the connection up to a tunnel after a 101: the cluster keeps counting it open (the
    /// tunnel reports its close: `Cluster.connectionClosed`); this object lets go of it.
    func handOver() -> TCPConnection {
        exchange = nil
        parser.delegate = nil
        conn.uncork()
        conn.clearDeadline()
        conn.delegate = nil
        return conn
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        cluster.connectSettled(c, connected: status == 0)
        if status != 0 {
            cluster.stats.inc(.upstream_cx_connect_fail)
            cluster.connectFailed(c, status)
            if exchange == nil { c.close(); return }   // pooled while connecting
            fail(.connectFailed)
            return
        }
        if cluster.auto && cluster.learned(c, endpoint: endpoint) { switchToHTTP2(c); return }
        if answerConnect, let e = exchange {   // an HTTP/2 CONNECT: the tunnel is open
            answerConnect = false
            c.clearDeadline()
            e.upstreamHead(status: 200, reason: UnsafeRawBufferPointer(start: nil, count: 0),
                           headers: UnsafeBufferPointer(start: nil, count: 0), lengthKnown: false, endStream: false)
            return
        }
        // Pooled while connecting (its exchange went away before a byte left): idle from now.
        if isIdle { c.setDeadline(after: cluster.config.idleTimeout) } else { c.clearDeadline() }
    }

    /// `protocol: auto`: the server chose h2 for this connection, opened for HTTP/1.1 (nothing of the
    /// request was sent: `TLSSocket.alpnSwitched`). It becomes an HTTP/2 connection of the endpoint,
    /// and the exchange, if any, starts again there as a stream (`Exchange.upstreamSwitched`).
    func switchToHTTP2(_ c: TCPConnection) {
        withExtendedLifetime(self) {
            let e = exchange
            exchange = nil
            parser.delegate = nil
            cluster.removeIdle(self)
            c.uncork()
            let n = H2UpstreamConnection(cluster: cluster, endpoint: endpoint, conn: c)   // takes the delegate
            endpoint._withUnsafeGuaranteedRef { $0.h2.append(n) }
            n.ready(c)
            e?.upstreamSwitched(toHTTP2: true)
        }
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        guard let e = exchange, !responseDone else {
            c.close()   // bytes nobody asked for: the connection is out of sync
            return
        }
        gotResponseBytes = true
        if tunnel {   // RFC 8441 tunnel: the bytes are the stream's DATA
            e.upstreamBody(data)
            e.upstreamReadDone()
            return
        }
        var input = data
        parsing: while true {
            switch parser.feed(input) {
            case .ok:
                break parsing
            case .paused(let consumed):   // after a complete message: an interim 1xx, or the response
                if upgraded {   // a 101: the rest is the tunnel's (this object is let go inside)
                    withExtendedLifetime(self) {
                        e.upstreamUpgraded(self, leftover: UnsafeRawBufferPointer(rebasing: input[consumed...]))
                    }
                    return
                }
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
        if tunnel, let e = exchange {   // the upstream ended the tunnel: the stream ends (never pooled)
            e.upstreamEnd(trailers: nil)
            return
        }
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
        // Armed while connecting, and while idle in the pool (the cluster's idle timeout).
        if isIdle && !c.connecting {
            cluster.stats.inc(.upstream_cx_idle_timeout)
            c.close()
            return
        }
        cluster.stats.inc(.upstream_cx_connect_timeout)
        cluster.stats.inc(.upstream_cx_connect_fail)
        if exchange == nil { c.close(); return }   // pooled while connecting
        fail(.connectFailed)
    }

    func connectionDrained(_ c: TCPConnection) { exchange?.upstreamDrained() }

    func connectionClosed(_ c: TCPConnection) {
        cluster.stats.dec(.upstream_cx_active)
        cluster.connectionClosed(c)
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
            if status == 101, let e = exchange, e.upgrade != .none {   // the upgrade accepted: the head goes on
                upgraded = true
                p.withHeaderRefs { h in   // (an HTTP/2 client is told 200: RFC 8441 §5)
                    e.upstreamHead(status: e.tunnelOverStream ? 200 : 101, reason: p.startLine, headers: h,
                                   lengthKnown: false, endStream: false)
                }
                return true
            }
            interim = true
            return false
        }
        interim = false
        // No body after 204, 304 or a response to HEAD, whatever Content-Length says (RFC 9112 §6.3).
        let noBody = requestIsHEAD || status == 204 || status == 304
        guard let e = exchange else { return true }
        e.observe.upstreamPeer = conn.peerTag   // the server's identity, for the metrics
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
        if upgraded { return }   // the exchange ends when the parse returns (`upstreamUpgraded`)
        responseDone = true
        if p.trailers.count > 0 { p.trailers.withRefs { exchange?.upstreamEnd(trailers: $0) } } else { exchange?.upstreamEnd(trailers: nil) }
        p.clearTrailers()
    }
}
