import COpenSSL
import RemoraCore
import RemoraIO

/// Told when a server-role handshake completes (a worker closes connections whose certificate
/// expires: `close_expired`). No allocation: the worker is the observer.
public protocol TLSObserver: AnyObject {
    func tlsHandshakeDone(_ s: TLSSocket)
}

/// TLS as a transport socket (`RemoraIO.TransportSocket`): between a `TCPConnection`'s socket and
/// its delegate, in the server role (a TLS listener) or the client role (a TLS cluster).
///
/// Wire bytes go to OpenSSL through the C shim's BIO without a copy of ours (it reads the loop's
/// read buffer during `received`); the records OpenSSL writes collect in the shim's output buffer,
/// which goes to the socket with one `writeWire` after each step. Handshakes advance as bytes
/// arrive and never wait. Plaintext is decrypted into a 16 KiB buffer per thread and handed on
/// with `deliver`. Nothing is allocated per record beyond OpenSSL's own buffers.
///
/// Client role: application bytes written before the handshake is done are held (`held`) and
/// sealed once it is; `connectionConnected` reaches the delegate only then (or with an error:
/// `failure` says why).
public final class TLSSocket: TransportSocket {
    let tls: UnsafeMutablePointer<remora_tls_conn>
    let server: TLSServerContext?
    let client: TLSClientContext?
    public private(set) var handshakeDone = false
    /// Client: the ClientHello went out.
    var started = false
    /// Server role with `allow_plaintext`: the first bytes have not arrived yet.
    var mayBePlaintext = false
    /// Client: application bytes written before the handshake finished.
    var held = ByteBuffer()
    /// Application bytes written while the connection is corked (or parts of one write), sealed
    /// together into one record at `uncorked` (at most one record's worth: 16 KiB).
    var plain = ByteBuffer()
    public private(set) var peerPrincipal: String?
    public private(set) var serverName: String?
    /// The negotiated ALPN protocol ("h2", "http/1.1"), or "".
    public private(set) var alpn: String = ""
    /// Client role: the connection's owner speaks HTTP/2 (else HTTP/1.1): what its ALPN answer must be,
    /// unless the cluster is `auto` and the owner `switchesOnALPN`.
    public var speaksH2 = false
    /// Client role on an `auto` cluster (`protocol: auto`): a server that picks the other protocol
    /// does not fail the handshake; what the owner wrote meanwhile is dropped unsent, `alpnSwitched`
    /// is set, and the owner hands the connection to the other protocol's codec when told it is connected.
    public var switchesOnALPN = false
    public var alpnSwitched = false
    /// Why the handshake failed (for the log), once it has.
    public private(set) var failure: String?
    /// Server role with `forward_client_cert`: the `x-forwarded-client-cert` value for this
    /// connection's requests (empty: none).
    public private(set) var forwardedClientCert = ByteBuffer()
    /// Per-listener counters (server role) or per-cluster (client role); may be nil (tests).
    public var listenerStats: StatBlock<ListenerStat>?
    public var clusterStats: StatBlock<ClusterStat>?
    /// When the first of this side's and the peer's certificates expires, Unix seconds (0: unknown),
    /// known once the handshake is done (server role: with an observer; client role: with
    /// `close_expired`).
    public private(set) var expiresAt: Int64 = 0
    /// Told when the server-role handshake is done (nil: nobody asked).
    public unowned(unsafe) var observer: (any TLSObserver)?

    /// The libuv-style error a failed handshake reports (EPROTO).
    public static let handshakeFailed: Int32 = -71

    /// A server-role layer with the listener's current certificates; nil when OpenSSL cannot make one.
    public init?(server: TLSServerContext) {
        guard let t = server.makeConnection() else { return nil }
        tls = t
        self.server = server
        client = nil
        mayBePlaintext = server.config.allowPlaintext
    }

    /// A client-role layer toward the cluster's endpoints (resuming its last session).
    public init?(client: TLSClientContext) {
        guard let t = client.makeConnection() else { return nil }
        tls = t
        self.client = client
        server = nil
        speaksH2 = client.expectedALPN == "h2"
    }

    deinit {
        remora_tls_conn_free(tls)
        held.release()
        plain.release()
        forwardedClientCert.release()
    }

    /// Writes what OpenSSL produced to the socket.
    @inline(__always) @discardableResult
    func flush(_ c: TCPConnection) -> Bool {
        let n = tls.pointee.out_len
        if n == 0 { return true }
        tls.pointee.out_len = 0
        return c.writeWire(UnsafeRawBufferPointer(start: tls.pointee.out, count: n))
    }

    /// Whether the first bytes of a connection (a ClientHello) offer ALPN `remora-mesh`: the
    /// protocol name with its length byte (`0b "remora-mesh"`) inside the first TLS record. A
    /// ClientHello split over several reads (rare: it is one segment on any usual MTU) is read only
    /// as far as the first read goes.
    static func offersMeshALPN(_ wire: UnsafeRawBufferPointer) -> Bool {
        let needle: StaticString = "\u{0B}remora-mesh"
        let n = needle.utf8CodeUnitCount
        guard wire.count >= 5 + n else { return false }
        let recordEnd = min(wire.count, 5 + (Int(wire[3]) << 8 | Int(wire[4])))
        guard recordEnd - n >= 5 else { return false }
        let first = needle.utf8Start[0]
        var i = 5
        while i <= recordEnd - n {
            if wire[i] == first {
                var j = 1
                while j < n && wire[i + j] == needle.utf8Start[j] { j += 1 }
                if j == n { return true }
            }
            i += 1
        }
        return false
    }

    // MARK: TransportSocket

    public func connected(_ c: TCPConnection, status: Int32) {
        guard status == 0 else { c.deliverConnected(status); return }
        started = true
        advance(c)
    }

    public func received(_ c: TCPConnection, _ wire: UnsafeRawBufferPointer) {
        if mayBePlaintext {
            mayBePlaintext = false
            // A TLS connection starts with a handshake record (content type 22); HTTP with a method
            // or the HTTP/2 preface. A plaintext client: this layer steps aside for good (the
            // connection is raw TCP from here on, and this object goes with its last reference).
            // A sidecar's permissive inbound (`meshPeersOnly`): TLS that does not offer ALPN
            // remora-mesh is the application's own, passed on as bytes too.
            let foreign = wire.count > 0 && wire[0] == 0x16 && server?.config.meshPeersOnly == true && !Self.offersMeshALPN(wire)
            if wire.count > 0 && (wire[0] != 0x16 || foreign) {
                listenerStats?.inc(foreign ? .ssl_passthrough_accepted : .ssl_plaintext_accepted)
                c.transportSocket = nil
                if !held.isEmpty {   // a tcp listener's upstream spoke first: its bytes, unsealed
                    let h = held
                    held = ByteBuffer()
                    c.write(h.bytes)
                    var hh = h
                    hh.release()
                }
                c.deliver(wire)
                return
            }
        }
        tls.pointee.in = wire.baseAddress?.assumingMemoryBound(to: UInt8.self)
        tls.pointee.in_len = wire.count
        defer { tls.pointee.in = nil; tls.pointee.in_len = 0 }
        if !handshakeDone {
            advance(c)
            if !handshakeDone || c.isClosing { return }
        }
        let buf = remora_tls_plain_buffer()!
        while true {
            let n = remora_tls_read(tls, buf, Int32(REMORA_TLS_PLAIN_SIZE))
            if n > 0 {
                c.deliver(UnsafeRawBufferPointer(start: buf, count: Int(n)))
                if c.isClosing { return }
                if remora_tls_more(tls) == 0 { break }   // saves a read that would only want more
                continue
            }
            if n == -1 {   // a bad record: the connection cannot go on
                flush(c)
                failure = lastError()
                c.deliverEnd(TLSSocket.handshakeFailed)
                return
            }
            break   // 0: wants more bytes; -2: close_notify (the FIN follows)
        }
        flush(c)   // post-handshake messages (tickets, key updates)
    }

    public func send(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) -> Bool {
        send(c, data, UnsafeRawBufferPointer(start: nil, count: 0), UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// Small writes are sealed together: the parts of one write, and every write made while the
    /// connection is corked (an HTTP/2 flush writes frame by frame; an HTTP/1.1 response its head
    /// then its body), up to one record (16 KiB), so a batch of responses costs one record's
    /// overhead (header, tag, nonce, OpenSSL's per-call work) instead of one per frame. The bytes
    /// are copied into this connection's `plain` buffer, never the per-thread buffer: a write can
    /// happen while `received` is delivering plaintext from that one.
    public func send(_ c: TCPConnection, _ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ d: UnsafeRawBufferPointer) -> Bool {
        if !handshakeDone {
            held.append(a); held.append(b); held.append(d)
            return true
        }
        let total = a.count + b.count + d.count
        if total == 0 { return true }
        let room = Int(REMORA_TLS_PLAIN_SIZE) - plain.count
        if total <= room && (c.corked || b.count > 0 || d.count > 0 || !plain.isEmpty) {
            plain.append(a); plain.append(b); plain.append(d)
            return c.corked ? true : seal(c)
        }
        if !plain.isEmpty && !seal(c) { return false }
        for part in [a, b, d] where part.count > 0 {
            if remora_tls_write(tls, part.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(part.count)) < 0 {
                failure = lastError()
                return false
            }
        }
        return flush(c)
    }

    /// Seals what `plain` holds (one record) and writes it.
    func seal(_ c: TCPConnection) -> Bool {
        let n = plain.count
        plain.count = 0
        if n > 0 && remora_tls_write(tls, plain.base!.assumingMemoryBound(to: UInt8.self), Int32(n)) < 0 {
            failure = lastError()
            return false
        }
        return flush(c)
    }

    public func uncorked(_ c: TCPConnection) {
        if !plain.isEmpty { _ = seal(c) }
    }

    public func shutdown(_ c: TCPConnection) {
        guard handshakeDone else { return }
        if !plain.isEmpty { _ = seal(c) }   // the corked writes go before close_notify
        remora_tls_shutdown(tls)
        flush(c)
    }

    public func receivedEnd(_ c: TCPConnection, _ code: Int32) {
        if !handshakeDone && client != nil && failure == nil {
            failure = code == UVCode.eof ? "the server closed the connection during the TLS handshake" : "read failed during the TLS handshake"
            clusterStats?.inc(.ssl_connection_error)
            c.deliverConnected(TLSSocket.handshakeFailed)
            return
        }
        if !handshakeDone && server != nil { listenerStats?.inc(.ssl_connection_error) }
        c.deliverEnd(code)
    }

    public func releaseIdleBuffers(_ c: TCPConnection) {
        if plain.isEmpty { plain.release() }
        if handshakeDone { remora_tls_release_buffers(tls) }
    }

    public func discardUnsent(_ c: TCPConnection) -> Bool {
        guard !started else { return false }
        held.clear()
        return true
    }

    // MARK: the handshake

    /// Runs the handshake as far as the bytes allow; finishes or fails it.
    func advance(_ c: TCPConnection) {
        let r = remora_tls_handshake(tls)
        flush(c)   // our flight (or the alert)
        if r == 0 { return }
        if r < 0 { fail(c, r); return }
        handshakeDone = true
        if client != nil { clientDone(c) } else { serverDone(c) }
    }

    func fail(_ c: TCPConnection, _ r: Int32) {
        failure = lastError()
        if client != nil {
            clusterStats?.inc(.ssl_connection_error)
            if r == -3 { clusterStats?.inc(.ssl_fail_verify_error) }
            c.deliverConnected(TLSSocket.handshakeFailed)
            return
        }
        listenerStats?.inc(.ssl_connection_error)
        if r == -2 { listenerStats?.inc(.ssl_fail_verify_no_cert) }
        if r == -3 { listenerStats?.inc(.ssl_fail_verify_error) }
        c.deliverEnd(TLSSocket.handshakeFailed)
    }

    func serverDone(_ c: TCPConnection) {
        listenerStats?.inc(.ssl_handshake)
        sendHeld(c)
        if remora_tls_session_reused(tls) != 0 { listenerStats?.inc(.ssl_session_reused) }
        if let n = remora_tls_server_name(tls) { serverName = String(cString: n) }
        alpn = negotiatedALPN()
        if let o = observer {
            expiresAt = remora_tls_expiry(tls)
            o.tlsHandshakeDone(self)
        }
        guard remora_tls_peer_has_cert(tls) != 0, let (id, hash) = peer() else { return }
        peerPrincipal = id.principal
        c.peerTag = PeerTag.mutualTLS | PeerIdentities.shared.intern(id.principal)   // once per connection
        if let s = server, s.config.forwardClientCert {
            forwardedClientCert.append(string: id.forwardedClientCert(by: s.ownURI, hash: hash))
        }
    }

    func clientDone(_ c: TCPConnection) {
        guard let cl = client else { return }
        alpn = negotiatedALPN()
        let (id, _) = peer() ?? (PeerIdentity(), "")
        peerPrincipal = id.principal
        c.peerTag = PeerIdentities.shared.intern(id.principal)
        if !cl.config.verifySAN.isEmpty && !cl.config.verifySAN.contains(where: id.carries) {
            failure = "the server's certificate has none of the SANs in verify_san (it has: "
                + (id.uris + id.dns).joined(separator: ", ") + ")"
            clusterStats?.inc(.ssl_connection_error)
            clusterStats?.inc(.ssl_fail_verify_error)
            c.deliverConnected(TLSSocket.handshakeFailed)
            return
        }
        if cl.auto {
            // The server's answer picks the protocol (none: HTTP/1.1). The owner wrote for the other one:
            // its bytes are dropped before a byte of them is sealed, and it switches codecs.
            if switchesOnALPN && (alpn == "h2") != speaksH2 {
                alpnSwitched = true
                held.clear()
            }
        } else if !alpn.isEmpty && alpn != cl.expectedALPN {
            failure = "the server chose ALPN \(alpn), the cluster speaks \(cl.expectedALPN)"
            clusterStats?.inc(.ssl_connection_error)
            c.deliverConnected(TLSSocket.handshakeFailed)
            return
        }
        clusterStats?.inc(.ssl_handshake)
        if remora_tls_session_reused(tls) != 0 { clusterStats?.inc(.ssl_session_reused) }
        if cl.config.closeExpired { expiresAt = remora_tls_expiry(tls) }
        sendHeld(c)
        c.deliverConnected(0)
    }

    /// Seals and sends what the application wrote during the handshake (client role: the request;
    /// server role: a tcp listener's upstream that spoke first).
    func sendHeld(_ c: TCPConnection) {
        guard !held.isEmpty else { return }
        let h = held
        held = ByteBuffer()
        _ = send(c, h.bytes)
        var hh = h
        hh.release()
    }

    func negotiatedALPN() -> String {
        var p: UnsafePointer<UInt8>?
        var n: UInt32 = 0
        remora_tls_alpn(tls, &p, &n)
        guard let p, n > 0 else { return "" }
        return String(decoding: UnsafeBufferPointer(start: p, count: Int(n)), as: UTF8.self)
    }

    /// The peer certificate's SANs and SHA-256.
    func peer() -> (PeerIdentity, String)? {
        var sans = [CChar](repeating: 0, count: 4096)
        var hash = [CChar](repeating: 0, count: 65)
        let ok = sans.withUnsafeMutableBufferPointer { s in
            hash.withUnsafeMutableBufferPointer { h in remora_tls_peer_info(tls, s.baseAddress, s.count, h.baseAddress) }
        }
        guard ok != 0 else { return nil }
        return (PeerIdentity(sanLines: cString(sans)), cString(hash))
    }

    func lastError() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        buf.withUnsafeMutableBufferPointer { remora_tls_error(tls, $0.baseAddress, $0.count) }
        return cString(buf)
    }

    /// The negotiated version ("TLSv1.3").
    public var version: String { String(cString: remora_tls_version(tls)) }
}
