import Glibc
import RemoraCore
import RemoraIO
import RemoraTLS

/// `close_expired` (`listeners[].tls.close_expired`, default true): a connection is closed gracefully
/// once a certificate it was made with (the listener's or the client's) expires, so a renewed
/// certificate reaches every client and no connection outlives its credential. Each worker keeps one
/// timer, armed for the earliest expiry among its TLS connections; when it fires, the worker walks
/// its sessions once, closes the expired ones (HTTP/1.1 after the request in flight, HTTP/2 with
/// GOAWAY, TCP at once) and arms the timer for the next expiry. Certificates live for days, so the
/// walk is rare; a handshake costs one comparison.
extension Worker: TLSObserver {
    func tlsHandshakeDone(_ s: TLSSocket) {
        guard s.expiresAt > 0, !draining else { return }
        if expiryDue == 0 || s.expiresAt < expiryDue { armExpiry(s.expiresAt) }
    }

    func armExpiry(_ at: Int64) {
        let timer = expiryTimer ?? LoopTimer(loop: loop)
        expiryTimer = timer
        expiryDue = at
        let wait = max(0, at - Int64(time(nil)))
        timer.start(after: UInt64(min(wait, 86_400 * 365)) * 1000 + 20) { [unowned self] in self.sweepExpired() }
    }

    /// Closes the sessions whose certificate expired; arms the timer for the next expiry.
    func sweepExpired() {
        expiryDue = 0
        let now = Int64(time(nil))
        var next: Int64 = 0
        var s = sessionHead
        while let cur = s {
            s = cur.next
            guard let c = cur.downstreamConnection, let t = c.transportSocket as? TLSSocket, t.expiresAt > 0,
                  !c.isClosing else { continue }
            if t.expiresAt <= now {
                cur.slot?.current.stats.inc(.ssl_connection_expired)
                cur.closeExpired()
            } else if next == 0 || t.expiresAt < next {
                next = t.expiresAt
            }
        }
        if next > 0 && !draining { armExpiry(next) }
    }
}
