import RemoraCore
import RemoraIO
import RemoraPolicy

/// A raw TCP connection forwarded to one cluster: a two-way pump with watermarks (a side whose
/// peer writes slower than it reads stops being read), half-close carried both ways, idle timeout.
final class TCPProxySession: Session, TCPConnectionDelegate {
    unowned(unsafe) let worker: Worker
    let listener: ListenerRuntime
    let cluster: Cluster
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

    init(worker: Worker, listener: ListenerRuntime, cluster: Cluster, down: TCPConnection) {
        self.worker = worker
        self.listener = listener
        self.cluster = cluster
        self.down = down
        super.init()
        if !listener.filters.isEmpty { startMicros = monotonicMicros() }
        down.delegate = self
        down.owner = self
        down.setDeadline(after: listener.config.idleTimeout)
        connectUpstream()
        down.startReading()
    }

    func connectUpstream() {
        connectAttempts += 1
        if cluster.live.isEmpty {   // a name that has not resolved yet (`dns_refresh`): nothing to connect to
            flags.insert(.UF)
            down.close()
            return
        }
        let c = TCPConnection(loop: worker.loop)
        guard cluster.admitConnection(c) else {   // over max_connections / max_pending: the client is let go
            cluster.overflowed = false
            c.close()
            down.close()
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
        let ref = cluster.pickEndpoint(hash: hash)
        endpoint = ref
        endpointIndex = ref._withUnsafeGuaranteedRef { $0.index }
        connectStart = worker.loop.now
        ref._withUnsafeGuaranteedRef { $0.activeRequests += 1 }
        if c.connect(to: ref.takeUnretainedValue().address) != 0 {
            cluster.stats.inc(.upstream_cx_connect_fail)
            flags.insert(.UF)
            abort()
            return
        }
        c.setDeadline(after: cluster.config.connectTimeout)
    }

    @inline(__always) func peer(of c: TCPConnection) -> TCPConnection? { c === down ? up : down }

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        cluster.connectSettled(c)
        if status != 0 {
            cluster.stats.inc(.upstream_cx_connect_fail)
            flags.insert(.UF)
            abort()
            return
        }
        c.clearDeadline()
        connectLatency = worker.loop.now &- connectStart
        c.startReading()
    }

    /// The outcome hook for the connection: once, when it ends (a connect that failed or timed out,
    /// or a connection that carried its stream), with the connect's latency.
    func endAttempt() {
        guard let e = endpoint else { return }
        endpoint = nil
        let latency = connectLatency ?? (worker.loop.now &- connectStart)
        cluster.attemptEnded(endpoint: e, AttemptOutcome(kind: connectLatency == nil ? .connectFailure : .response,
                                                         latency: latency))
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        guard let p = peer(of: c) else { return }
        if c === down {
            listener.stats.add(.downstream_cx_rx_bytes_total, UInt64(data.count))
            cluster.stats.add(.upstream_cx_tx_bytes_total, UInt64(data.count))
            bytesIn &+= UInt64(data.count)
        } else {
            bytesOut &+= UInt64(data.count)
            cluster.stats.add(.upstream_cx_rx_bytes_total, UInt64(data.count))
            listener.stats.add(.downstream_cx_tx_bytes_total, UInt64(data.count))
        }
        down.setDeadline(after: listener.config.idleTimeout)
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
        peer(of: c)?.shutdownWrite()
        if downEOF && upEOF {
            down.finish(linger: 0)
            up?.finish(linger: 0)
        }
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) {
        if c !== down { cluster.stats.inc(.upstream_cx_destroy_remote); flags.insert(.UC) } else { flags.insert(.DC) }
        abort()
    }

    func connectionTimeout(_ c: TCPConnection) {
        if c === down { listener.stats.inc(.downstream_cx_idle_timeout); flags.insert(.SI) } else {
            flags.insert(.UF)
            cluster.stats.inc(.upstream_cx_connect_timeout)
            cluster.stats.inc(.upstream_cx_connect_fail)
        }
        abort()
    }

    func connectionClosed(_ c: TCPConnection) {
        if c === down {
            listener.stats.dec(.downstream_cx_active)
            if startMicros != 0, let log = listener.filters.first(where: { $0 is AccessLogFilter }) as? AccessLogFilter {
                log.logConnection(self)
            }
            worker.remove(self)
        } else {
            cluster.stats.dec(.upstream_cx_active)
            cluster.connectionClosed(c)
            endAttempt()
        }
        // Both sides ended their streams: the other side is flushing and closes by itself.
        if !(downEOF && upEOF) { abort() }
    }

    override func drain() {}   // a byte stream has no request boundary: it ends when its peers end it

    override func abort() {
        down.close()
        up?.close()
    }
}
