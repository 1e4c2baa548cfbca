import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraRouting

/// Upgrades (issue 18): a WebSocket handshake (`Connection: upgrade` + `Upgrade: websocket`) is an
/// ordinary exchange until its answer — routing, filters, header actions, retries, timeouts, access
/// log and stats all apply to it — and is forwarded with its upgrade fields. An upstream `101`
/// ends the exchange and turns the two connections into a byte tunnel (the TCP proxy's pump,
/// `TCP/TCPProxySession.swift`); any other answer is a normal response and both connections stay HTTP.
///
/// From an HTTP/2 client (RFC 8441: CONNECT with `:protocol websocket` on a connection that announced
/// SETTINGS_ENABLE_CONNECT_PROTOCOL) the request becomes an HTTP/1.1 handshake (GET, upgrade fields,
/// a Sec-WebSocket-Key made here); the 101 is answered `200` on the stream, and the exchange stays
/// open as the tunnel: DATA frames are written to the upstream connection as bytes and its bytes
/// come back as DATA (the exchange's flow control both ways, the tunnel idle timeout as its stream
/// timeout); an upstream end ends the stream, a client END_STREAM half-closes the upstream.
/// Toward an HTTP/2 cluster the extended CONNECT is passed through as it is (`:protocol websocket`)
/// on a connection whose peer announced SETTINGS_ENABLE_CONNECT_PROTOCOL (a new connection's stream
/// waits for the peer's SETTINGS; one that lacks it fails the attempt: 502); its 2xx makes the
/// exchange the tunnel, DATA both ways (`upstreamStreamTunnel`).
extension Exchange {
    /// Whether the route and cluster refuse this upgrade request; when they do, it is answered (403).
    /// Otherwise the request is set up as a tunnel's start: no body limit or request timeout.
    func refusesUpgrade(_ route: RouteTable.Route, _ cl: Cluster, _ r: RequestStart) -> Bool {
        let why: String
        if upgrade == .other {
            why = "this upgrade protocol is not supported (websocket is)\n"
        } else if !route.upgradeWebSocket {
            why = "websocket upgrades are not allowed on this route\n"
        } else if cl.config.protocol != .http1 && !r.fromHTTP2 {
            why = "websocket upgrades from HTTP/1.1 need an http1 cluster\n"
        } else if requestHasBody && !r.fromHTTP2 {
            why = "an upgrade request cannot have a body\n"
        } else {
            tunnelOverStream = r.fromHTTP2
            maxRequestBody = 0
            requestDeadline = 0
            return false
        }
        stats.inc(.downstream_rq_upgrade_refused)
        local(403, why)
        return true
    }

    /// The upstream answered the upgrade with 101 (its head already went to the client through
    /// `upstreamHead`): the attempt ends there, the exchange finishes (the access log and stats see
    /// a 101), and the downstream hands both connections to a tunnel. `leftover`: bytes the
    /// upstream sent after its 101, the first of the tunnel. Returns false when the downstream
    /// cannot tunnel (the upstream connection is then closed).
    func upstreamUpgraded(_ u: H1Upstream, leftover: UnsafeRawBufferPointer) {
        guard active, upstream === u, let d = downstream, let cl = cluster else { u.conn.close(); return }
        if tunnelOverStream {   // RFC 8441: this exchange is the tunnel from now on
            endAttempt(.response)
            stopReplay()
            u.tunnel = true
            streamIdleTimeout = listener.config.tunnelIdleTimeout
            stats.inc(.downstream_cx_upgrades_total)
            if leftover.count > 0 { upstreamBody(leftover) }
            arm(.stream)
            return
        }
        withExtendedLifetime(d) {
            upstream = nil
            endAttempt(.response)
            let conn = u.handOver()
            responseDone = true
            if !d.startTunnel(cluster: cl, upstream: conn, leftover: leftover) {
                conn.close()
                d.respondReset(code: 2)
            }
            finish(clean: true)
        }
    }
}

extension Exchange {
    /// An HTTP/2 upstream accepted the extended CONNECT (2xx; its head already went to the client):
    /// the attempt ends there (no retry after it, the route timeout no longer applies) and the
    /// exchange carries the tunnel until either side ends its stream, bounded by the tunnel idle timeout.
    func upstreamStreamTunnel() {
        endAttempt(.response)
        stopReplay()
        streamIdleTimeout = listener.config.tunnelIdleTimeout
        stats.inc(.downstream_cx_upgrades_total)
    }

    /// A tunnel carried by this exchange is never tried again: its bytes are no longer kept for a replay.
    func stopReplay() {
        replayable = false
        pool.give(&replay)
    }

    /// The handshake as an HTTP/1.1 upstream gets it: the request-head policy's fields, then the
    /// upgrade fields (from HTTP/2: method GET and a Sec-WebSocket-Key, RFC 8441 §5 in reverse).
    func writeUpgradeRequest(_ view: RequestView, _ r: RequestStart, clientIP: UnsafeRawBufferPointer, scheme: StaticString,
                             addHost: Bool, extra: AddedFields) {
        if !r.fromHTTP2 {
            HTTP1Head.writeRequest(view, framing: .none, addHost: addHost, clientIP: clientIP, proto: scheme,
                                   dropExpect: r.dropExpect, clientCert: r.clientCert, extraLines: extra.lines,
                                   upgradeFields: rawBytes(UpgradeRequest.websocketFields), into: &upHead)
            return
        }
        var fields = pool.take()
        UpgradeRequest.writeWebSocketFields(key: (worker.rng.next(), worker.rng.next()), into: &fields)
        var get = view
        get.method = rawBytes("GET")
        HTTP1Head.writeRequest(get, framing: .none, addHost: true, clientIP: clientIP, proto: scheme, dropExpect: true,
                               clientCert: r.clientCert, extraLines: extra.lines, upgradeFields: fields.bytes, into: &upHead)
        pool.give(&fields)
    }
}

extension Exchange {
    /// An HTTP/2 CONNECT (issue 18): allowed when the listener has `connect:` and `:authority` is
    /// one of its cluster's endpoints (else 405 / 403). The exchange carries the tunnel as for
    /// RFC 8441: an upstream connection in tunnel mode from the start, `200` once it is connected
    /// (a failed connect is answered 503), DATA <-> bytes, the tunnel idle timeout.
    func connectTunnel(_ r: RequestStart, _ l: ListenerRuntime) {
        guard let cl = l.connectCluster else { local(405, "CONNECT is not supported\n"); return }
        guard let i = l.connectTargets[String(decoding: r.view.authority, as: UTF8.self).lowercased()] else {
            stats.inc(.downstream_rq_upgrade_refused)
            local(403, "CONNECT to this destination is not allowed\n")
            return
        }
        if let a = l.authorization,
           !l.admitConnect(r.view, downstream?.transportConnection, source: a.needsSource ? downstream?.sourceAddress : nil) {
            observe.flags.insert(.UAEX)
            local(403, "RBAC: access denied\n")
            return
        }
        cluster = cl
        upstreamIsHTTP2 = false
        upstreamAuto = false
        tunnelOverStream = true
        streamIdleTimeout = l.config.tunnelIdleTimeout
        reqFraming = .contentLength
        replayable = false
        cl.stats.inc(.upstream_rq_total)
        cl.stats.inc(.upstream_rq_active)
        clusterActive = true
        guard let u = cl.openTunnel(for: self, endpoint: i) else {
            if cl.overflowed { cl.overflowed = false; overloaded(cl) } else { noUpstream(.connectFailed) }
            return
        }
        upstream = u
        attemptEndpoint = u.endpoint
        attemptStart = timer.now
        attemptHeadAt = 0
        attemptStatus = 0
        attemptGRPCStatus = -1
        stats.inc(.downstream_cx_upgrades_total)
        if !replay.isEmpty { u.sendBody(replay.bytes) }
        arm(.stream)
    }
}

extension Cluster {
    /// A new connection to endpoint `i` in tunnel mode for `exchange` (an HTTP/2 CONNECT), or nil.
    func openTunnel(for exchange: Exchange, endpoint i: Int) -> H1Upstream? {
        guard i >= 0 && i < endpoints.count else { return nil }
        let e = endpoints[i]
        guard let c = connect(e) else { return nil }
        let u = H1Upstream(cluster: self, endpoint: Unmanaged.passUnretained(e), conn: c)
        u.exchange = exchange
        u.framing = .contentLength
        u.tunnel = true
        u.answerConnect = true
        e.activeRequests += 1
        return u
    }
}
