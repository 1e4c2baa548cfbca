import RemoraCore
import RemoraIO
import RemoraPolicy
import RemoraTLS

/// A raw TCP connection forwarded to one cluster, or to one address (the sidecar's passthrough
/// and inbound traffic): a two-way pump with watermarks (a side whose peer writes slower than it
/// reads stops being read), half-close carried both ways, idle timeout. Bytes a sniffing session
/// read before it chose the destination (`initial`) are sent upstream first. The same pump carries tunnels: an HTTP/1.1 connection whose upgrade (WebSocket) the upstream
/// accepted with 101 (`init(tunnel:…)`, `Exchange+Upgrade.swift`).
final class TCPProxySession: Session, TCPConnectionDelegate {
    unowned(unsafe) let worker: Worker
    let listener: ListenerRuntime
    /// The cluster, or nil for a connection to `target`.
    let cluster: Cluster?
    /// Where a connection without a cluster goes.
    let target: SocketAddress?
    let down: TCPConnection
    var up: TCPConnection?
    var downEOF = false
    var upEOF = false
    var closing = false
    var connectAttempts = 0
    /// The endpoint connected to, while its connection counts as one active request there (the
    /// balancers' load); reported to the outcome hook when the connection ends.
    var endpoint: Endpoint.Ref?
    /// Loop time the connect started, and the connect's latency once connected (ms).
    var connectStart: UInt64 = 0
    var connectLatency: UInt64?
    /// For the access log: start (monotonic µs), bytes each way, the endpoint, why it ended.
    var startMicros: UInt64 = 0
    var bytesIn: UInt64 = 0
    var bytesOut: UInt64 = 0
    var endpointIndex = -1
    var flags = ResponseFlags()
    /// No byte either way for this long closes the connection (ms; 0 = never): the listener's
    /// `idle_timeout`, or for a tunnel its `tunnel_idle_timeout`.
    let idleTimeout: Millis
    /// An upgraded HTTP connection (counted in `downstream_cx_upgrades_active` while open).
    let isTunnel: Bool
    /// A CONNECT tunnel: the endpoint it goes to (index in the cluster; -1: the balancer picks),
    /// and whether the client is still to be told how the connect went (200, or 503).
    var pinnedEndpoint = -1
    var answerConnect = false
    /// The CONNECT was answered 503: the client's connection closes once that is flushed.
    var refused = false

    /// `initial`: bytes already read from `down`, sent upstream before anything else.
    init(worker: Worker, listener: ListenerRuntime, cluster: Cluster?, target: SocketAddress? = nil, down: TCPConnection,
         initial: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) {
        self.worker = worker
        self.listener = listener
        self.cluster = cluster
        self.target = target
        self.down = down
        idleTimeout = listener.config.idleTimeout
        isTunnel = false
        super.init()
        if listener.accessLog != nil { startMicros = monotonicMicros() }
        down.delegate = self
        down.owner = self
        down.setDeadline(after: idleTimeout)
        if let cluster { connectUpstream(cluster) } else { connectTarget() }
        if initial.count > 0, let up, !up.isClosing {
            listener.stats.add(.downstream_cx_rx_bytes_total, UInt64(initial.count))
            cluster?.stats.add(.upstream_cx_tx_bytes_total, UInt64(initial.count))
            bytesIn &+= UInt64(initial.count)
            up.write(initial)   // queued until the connect completes
        }
        down.startReading()
    }

    /// A tunnel between two connected connections: `down` (an HTTP/1.1 client whose upgrade was
    /// accepted) and `up` (the HTTP/1.1 upstream connection that accepted it, counted open in
    /// `cluster`). Its request was the exchange's (access log, stats, outcome hook); the tunnel
    /// counts bytes and `downstream_cx_upgrades_*`.
    init(tunnel worker: Worker, listener: ListenerRuntime, cluster: Cluster, down: TCPConnection, up: TCPConnection) {
        self.worker = worker
        self.listener = listener
        self.cluster = cluster
        target = nil
        self.down = down
        self.up = up
        idleTimeout = listener.config.tunnelIdleTimeout
        isTunnel = true
        connectLatency = 0
        super.init()
        listener.stats.inc(.downstream_cx_upgrades_total)
        listener.stats.inc(.downstream_cx_upgrades_active)
        for c in [down, up] {
            c.delegate = self
            c.owner = self
            c.clearDeadline()
            c.startReading()
        }
        if idleTimeout > 0 { down.setDeadline(after: idleTimeout) }
    }

    /// A CONNECT tunnel (`HTTPSession.connectRequest`): connects to endpoint `endpoint` of
    /// `cluster`, then answers the client 200 and pumps; a failed connect is answered 503.
    init(connect worker: Worker, listener: ListenerRuntime, cluster: Cluster, endpoint: Int, down: TCPConnection) {
        self.worker = worker
        self.listener = listener
        self.cluster = cluster
        target = nil
        self.down = down
        idleTimeout = listener.config.tunnelIdleTimeout
        isTunnel = true
        pinnedEndpoint = endpoint
        answerConnect = true
        super.init()
        listener.stats.inc(.downstream_cx_upgrades_total)
        listener.stats.inc(.downstream_cx_upgrades_active)
        down.delegate = self
        down.owner = self
        if idleTimeout > 0 { down.setDeadline(after: idleTimeout) } else { down.clearDeadline() }
        connectUpstream(cluster)
        down.startReading()
    }

    /// The CONNECT's answer: 200 once connected, else 503 and the connection ends.
    func answer(connected: Bool) {
        answerConnect = false
        if connected {
            listener.stats.inc(.downstream_rq_2xx)
            down.write(rawBytes("HTTP/1.1 200 Connection Established\r\n\r\n"))
            return
        }
        listener.stats.inc(.downstream_rq_5xx)
        refused = true
        down.write(rawBytes("HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 24\r\nconnection: close\r\n\r\nupstream connect failed\n"))
        up?.close()
        down.closeWhenFlushed()
    }

    /// A connection without a cluster: straight to `target`.
    func connectTarget() {
        let c = TCPConnection(loop: worker.loop)
        c.delegate = self
        c.owner = self
        up = c
        connectStart = worker.loop.now
        guard let t = target, c.connect(to: t) == 0 else {
            flags.insert(.UF)
            abort()
            return
        }
        c.setDeadline(after: 5_000)
    }

    func connectUpstream(_ cluster: Cluster) {
        connectAttempts += 1
        if cluster.live.isEmpty {   // a name that has not resolved yet (`dns_refresh`): nothing to connect to
            flags.insert(.UF)
            down.close()
            return
        }
        let c = TCPConnection(loop: worker.loop)
        if let tls = cluster.tls {   // the cluster's `tls:` (a sidecar's mtls service): the bytes go sealed
            guard let layer = TLSSocket(client: tls) else {
                c.close()
                if answerConnect { answer(connected: false) } else { down.close() }
                return
            }
            layer.clusterStats = cluster.stats
            c.transportSocket = layer
        }
        c.tag = Int(truncatingIfNeeded: monotonicMicros() << 1)   // the connect's start (Cluster.connectSettled)
        guard cluster.admitConnection(c) else {   // over max_connections / max_pending: the client is let go
            cluster.overflowed = false
            flags.insert(.UO)
            c.close()
            if answerConnect { answer(connected: false) } else { down.close() }
            return
        }
        c.delegate = self
        c.owner = self
        cluster.stats.inc(.upstream_cx_total)
        cluster.stats.inc(.upstream_cx_active)
        cluster.openConnections += 1
        up = c
        var hash: UInt64 = 0
        if cluster.requestKey != nil {
            var ip = down.peerIP()
            hash = ip.withUTF8 { cluster.requestHash(UnsafeBufferPointer(start: nil, count: 0), clientIP: UnsafeRawBufferPointer($0)) }
        }
        let ref = pinnedEndpoint >= 0 && pinnedEndpoint < cluster.endpoints.count
            ? Unmanaged.passUnretained(cluster.endpoints[pinnedEndpoint]) : cluster.pickEndpoint(hash: hash)
        endpoint = ref
        endpointIndex = ref._withUnsafeGuaranteedRef { $0.index }
        connectStart = worker.loop.now
        ref._withUnsafeGuaranteedRef { $0.activeRequests += 1 }
        if c.connect(to: ref.takeUnretainedValue().address) != 0 {
            cluster.stats.inc(.upstream_cx_connect_fail)
            flags.insert(.UF)
            if answerConnect { answer(connected: false); return }
            abort()
            return
        }
        c.setDeadline(after: cluster.config.connectTimeout)
        if c.transportSocket != nil { c.startReading() }   // the handshake reads the server's flight
    }

    @inline(__always) func peer(of c: TCPConnection) -> TCPConnection? { c === down ? up : down }

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        cluster?.connectSettled(c, connected: status == 0)
        if status != 0 {
            cluster?.connectFailed(c, status)   // a TLS handshake that failed: the log line says why
            cluster?.stats.inc(.upstream_cx_connect_fail)
            flags.insert(.UF)
            if answerConnect { answer(connected: false); return }
            abort()
            return
        }
        c.clearDeadline()
        if answerConnect { answer(connected: true) }
        connectLatency = worker.loop.now &- connectStart
        c.startReading()
        if downEOF { c.shutdownWrite() }
    }

    /// The outcome hook for the connection: once, when it ends (a connect that failed or timed out,
    /// or a connection that carried its stream), with the connect's latency.
    func endAttempt() {
        guard let e = endpoint, let cluster else { return }
        endpoint = nil
        let latency = connectLatency ?? (worker.loop.now &- connectStart)
        cluster.attemptEnded(endpoint: e, AttemptOutcome(kind: connectLatency == nil ? .connectFailure : .response,
                                                         latency: latency))
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) { forward(from: c, data) }

    /// Passes `data`, read from `c`, to its peer; stops reading `c` while the peer is above its
    /// high watermark.
    func forward(from c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        guard let p = peer(of: c) else { return }
        if c === down {
            listener.stats.add(.downstream_cx_rx_bytes_total, UInt64(data.count))
            cluster?.stats.add(.upstream_cx_tx_bytes_total, UInt64(data.count))
            bytesIn &+= UInt64(data.count)
        } else {
            bytesOut &+= UInt64(data.count)
            cluster?.stats.add(.upstream_cx_rx_bytes_total, UInt64(data.count))
            listener.stats.add(.downstream_cx_tx_bytes_total, UInt64(data.count))
        }
        if idleTimeout > 0 { down.setDeadline(after: idleTimeout) }
        if !p.write(data) { abort(); return }
        if p.isAboveHighWatermark { c.stopReading() }
    }

    func connectionDrained(_ c: TCPConnection) {
        // `c` can take more: resume reading its peer.
        guard let p = peer(of: c), !(p === down ? downEOF : upEOF) else { return }
        p.startReading()
    }

    func connectionEOF(_ c: TCPConnection) {
        if c === down { downEOF = true } else { upEOF = true }
        // The client ended before the upstream connected: its FIN waits for the connect (a TLS
        // upstream's handshake included, which drops a FIN sent while it runs, and the bytes held
        // for after it), and goes in connectionConnected, after those bytes.
        if c === down && up != nil && connectLatency == nil { return }
        peer(of: c)?.shutdownWrite()
        if downEOF && upEOF {
            down.finish(linger: 0)
            up?.finish(linger: 0)
        }
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) {
        if c !== down { cluster?.stats.inc(.upstream_cx_destroy_remote); flags.insert(.UC) } else { flags.insert(.DC) }
        abort()
    }

    func connectionTimeout(_ c: TCPConnection) {
        if c === down { listener.stats.inc(.downstream_cx_idle_timeout); flags.insert(.SI) } else {
            flags.insert(.UF)
            cluster?.stats.inc(.upstream_cx_connect_timeout)
            cluster?.stats.inc(.upstream_cx_connect_fail)
            if answerConnect { answer(connected: false); return }
        }
        abort()
    }

    func connectionClosed(_ c: TCPConnection) {
        if c === down {
            listener.stats.dec(.downstream_cx_active)
            if isTunnel { listener.stats.dec(.downstream_cx_upgrades_active) }
            if startMicros != 0, let log = listener.accessLog {
                log.logConnection(self)
            }
            worker.remove(self)
        } else if let cluster {
            cluster.stats.dec(.upstream_cx_active)
            cluster.connectionClosed(c)
            endAttempt()
        }
        // Both sides ended their streams: the other side is flushing and closes by itself.
        if !(downEOF && upEOF) && !refused { abort() }
    }

    override var downstreamConnection: TCPConnection? { down }
    /// A byte stream cannot be ended between requests: an expired certificate closes it now.
    override func closeExpired() { abort() }
    override func drain() {}   // a byte stream has no request boundary: it ends when its peers end it

    override func abort() {
        down.close()
        up?.close()
    }
}
