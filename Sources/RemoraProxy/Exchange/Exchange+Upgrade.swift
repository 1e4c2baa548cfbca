import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraRouting

/// Upgrades (issue 18): a WebSocket handshake (`Connection: upgrade` + `Upgrade: websocket`) is an
/// ordinary exchange until its answer — routing, filters, header actions, retries, timeouts, access
/// log and stats all apply to it — and is forwarded with its upgrade fields. An upstream `101`
/// ends the exchange and turns the two connections into a byte tunnel (the TCP proxy's pump,
/// `TCP/TCPProxySession.swift`); any other answer is a normal response and both connections stay HTTP.
extension Exchange {
    /// Whether the route and cluster refuse this upgrade request; when they do, it is answered (403).
    func refusesUpgrade(_ route: RouteTable.Route, _ cl: Cluster) -> Bool {
        let why: String
        if upgrade == .other {
            why = "this upgrade protocol is not supported (websocket is)\n"
        } else if !route.upgradeWebSocket {
            why = "websocket upgrades are not allowed on this route\n"
        } else if cl.config.protocol != .http1 {
            why = "websocket upgrades need an http1 cluster\n"
        } else if requestHasBody {
            why = "an upgrade request cannot have a body\n"
        } else {
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
