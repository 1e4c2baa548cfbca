import Glibc
import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraTLS

/// The connection pools of a cluster, per endpoint: idle HTTP/1.1 connections and HTTP/2
/// connections with free streams. An attempt starts here (the endpoint counts it active) and ends
/// at the outcome hook (`Cluster.attemptEnded`).
///
/// Idle HTTP/1.1 connections are kept by demand and age, as Envoy and HAProxy do: a connection
/// whose exchange ended cleanly goes back on its endpoint's stack (LIFO), and one that stays idle
/// for the cluster's `idle_timeout` closes (its own deadline). A new connection is opened only when
/// the stack is empty, that is when every connection to the endpoint is busy, so the pool never
/// holds more than the peak of concurrent requests to the endpoint within the last idle timeout;
/// when demand falls, the connections at the bottom of the stack go unused and expire. The optional
/// `max_idle_per_endpoint` is a hard cap on top.
extension Cluster {
    // MARK: HTTP/1.1

    /// A connection carrying `head` for `exchange`: a pooled one (unless `fresh`) or a new one
    /// (connecting; writes wait for it). nil when no connect could even start.
    func openHTTP1(for exchange: Exchange, head: UnsafeRawBufferPointer, isHEAD: Bool, fresh: Bool, hash: UInt64 = 0,
                   endpoint pinned: Endpoint.Ref? = nil) -> H1Upstream? {
        if live.isEmpty { return nil }   // no endpoint (yet): a name `dns_refresh` has not resolved
        let ref: Endpoint.Ref
        if let pinned { ref = pinned } else { ref = pickEndpoint(hash: hash) }   // (`??` costs an autoclosure here)
        return ref._withUnsafeGuaranteedRef { e in
            if !fresh {
                while let u = e.idle.popLast() {
                    u.isIdle = false
                    if !u.conn.connecting { u.conn.clearDeadline() }   // the idle timeout
                    if closesExpired && certificateExpired(u.conn) { u.conn.close(); continue }
                    stats.inc(.upstream_cx_pool_reuse)
                    if u.begin(exchange: exchange, head: head, isHEAD: isHEAD) {
                        e.activeRequests += 1
                        return u
                    }
                    u.conn.close()   // the backend closed it while pooled
                }
            }
            guard let c = connect(e, h2: false) else { return nil }
            let u = H1Upstream(cluster: self, endpoint: ref, conn: c)
            _ = u.begin(exchange: exchange, head: head, isHEAD: isHEAD)
            e.activeRequests += 1
            return u
        }
    }

    /// Takes back a connection whose exchange finished cleanly, idle until reused or until the
    /// idle timeout; closes it when the endpoint's hard cap is reached or the worker is draining.
    func release(_ u: H1Upstream) {
        if retired, !u.conn.connecting, let (next, ne) = heir(of: u.endpoint.takeUnretainedValue()),
           next.takeConnection(from: self) {
            u.cluster = next   // the endpoint set changed while it was busy: it goes on in the new one
            u.endpoint = Unmanaged.passUnretained(ne)
            next.release(u)
            return
        }
        u.endpoint._withUnsafeGuaranteedRef { e in
            if worker.draining || retired || e.idle.count >= maxIdlePerEndpoint || (closesExpired && certificateExpired(u.conn)) {
                u.conn.close()
                return
            }
            u.isIdle = true
            // A connecting one keeps its connect timeout (the idle timeout starts once it is connected).
            if !u.conn.connecting { u.conn.setDeadline(after: config.idleTimeout) }
            e.idle.append(u)
        }
    }

    /// Forgets an idle connection that closed.
    func removeIdle(_ u: H1Upstream) {
        guard u.isIdle else { return }
        u.isIdle = false
        let e = u.endpoint.takeUnretainedValue()
        if let i = e.idle.firstIndex(where: { $0 === u }) { e.idle.remove(at: i) }
    }

    // MARK: HTTP/2

    /// A stream for `exchange` on a connection to the next endpoint that has room (the peer's
    /// SETTINGS_MAX_CONCURRENT_STREAMS), or on a new connection.
    /// `retry`: a stream the peer refused goes where the peer's limit is known, or on a new connection.
    /// `extendedConnect` (RFC 8441 passed through): see `H2UpstreamConnection.open`.
    func openHTTP2(for exchange: Exchange, head: HeaderBlock, hasBody: Bool, retry: Bool = false, hash: UInt64 = 0,
                   extendedConnect: Bool = false, endpoint pinned: Endpoint.Ref? = nil) -> H2UpstreamStream? {
        if live.isEmpty { return nil }
        let ref: Endpoint.Ref
        if let pinned { ref = pinned } else { ref = pickEndpoint(hash: hash) }
        return ref._withUnsafeGuaranteedRef { e in
            var conn = H2UpstreamConnection.withRoom(in: e, settingsKnown: retry)
            while closesExpired, let c = conn?.takeUnretainedValue(), certificateExpired(c.conn) {   // (retained: it may leave the list)
                c.drain()   // no new streams (GOAWAY); closes once its streams end
                conn = H2UpstreamConnection.withRoom(in: e, settingsKnown: retry)
            }
            if conn == nil {
                guard let c = connect(e, h2: true) else { return nil }
                let n = H2UpstreamConnection(cluster: self, endpoint: ref, conn: c)
                e.h2.append(n)   // (the endpoint's list holds it from here)
                conn = Unmanaged.passUnretained(n)
            }
            let s = freeStreams.take() ?? H2UpstreamStream()
            if !conn!._withUnsafeGuaranteedRef({ $0.open(s, for: exchange, head: head, hasBody: hasBody, extendedConnect: extendedConnect) }) {
                freeStreams.give(s)
                return nil
            }
            stats.inc(.upstream_cx_pool_reuse)
            e.activeRequests += 1
            return s
        }
    }

    /// `close_expired`: the connection's certificate (the server's, or ours) has expired; counted
    /// (the caller retires the connection, so once per connection).
    func certificateExpired(_ c: TCPConnection) -> Bool {
        guard let t = c.transportSocket as? TLSSocket, t.expiresAt > 0, Int64(time(nil)) >= t.expiresAt else { return false }
        stats.inc(.ssl_connection_expired)
        return true
    }

    func removeHTTP2(_ c: H2UpstreamConnection) {
        let e = c.endpoint.takeUnretainedValue()
        if let i = e.h2.firstIndex(where: { $0 === c }) { e.h2.remove(at: i) }
    }

    // MARK: protocol: auto

    /// A connection of an `auto` cluster finished its TLS handshake: its endpoint speaks what the
    /// server chose (requests to it are sent in that protocol from now on); true when the owner
    /// wrote for the other protocol and must switch (`TLSSocket.alpnSwitched`, cleared here).
    func learned(_ c: TCPConnection, endpoint: Endpoint.Ref) -> Bool {
        guard let t = c.transportSocket as? TLSSocket else { return false }
        let h2 = t.alpn == "h2"
        endpoint._withUnsafeGuaranteedRef { $0.speaksH2 = h2 }
        stats.inc(h2 ? .upstream_cx_http2_total : .upstream_cx_http1_total)
        guard t.alpnSwitched else { return false }
        t.alpnSwitched = false
        stats.inc(.upstream_cx_alpn_switched)
        return true
    }
}
