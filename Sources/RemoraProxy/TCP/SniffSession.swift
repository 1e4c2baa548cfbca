import RemoraCore
import RemoraHTTP
import RemoraIO

/// A connection whose destination depends on its first bytes, before the session that serves it
/// exists. Two kinds of listener make them:
///
/// - `protocol: tls`: the ClientHello's server name picks the cluster (`ListenerRuntime.sni`, exact
///   names, then the longest `*.suffix`, then the default); TLS is never terminated. No ClientHello
///   within `sniff_timeout`, or bytes that are not TLS: closed.
/// - the sidecar's outbound listener: the original destination (SO_ORIGINAL_DST) picks a service
///   (its cluster) or the passthrough; sniffing picks HTTP (the service's internal HTTP listener:
///   routes, retries, metrics) or bytes (the TCP proxy). Nothing within `sniff_timeout`, or a port
///   of a server-speaks-first protocol: bytes.
///
/// The bytes read while deciding (at most `max_sniff_bytes` plus one read) are handed to the
/// chosen session first: the TCP proxy sends them upstream before anything else, an HTTP session
/// parses them as if it had read them. The session then takes this one's place (`Worker.replace`).
final class SniffSession: Session, TCPConnectionDelegate {
    unowned(unsafe) let worker: Worker
    let listener: ListenerRuntime
    let down: TCPConnection
    /// What the client sent so far.
    var buffer = ByteBuffer()
    /// TLS: where the records seen so far end (`ClientHello.recordBoundary`); the ClientHello is
    /// parsed again only when a record is complete, so a client trickling bytes costs one parse per
    /// record, not one per read.
    var recordsEnd = 0
    /// Sidecar: where the client was going, and the service that destination is (nil: passthrough).
    var original: SocketAddress?
    var serviceIndex: Int?
    var serviceCluster: Cluster?

    init(worker: Worker, listener: ListenerRuntime, down: TCPConnection) {
        self.worker = worker
        self.listener = listener
        self.down = down
        super.init()
        down.delegate = self
        down.owner = self
    }

    /// Starts sniffing: reads with the sniff deadline.
    func start() {
        down.setDeadline(after: listener.config.sniffTimeout)
        down.startReading()
    }

    var stats: StatBlock<ListenerStat> { listener.stats }

    // MARK: the sidecar's outbound listener

    /// Decides what needs no bytes (original destination, service, passthrough policy, server-first
    /// ports): closes the connection, hands it over, or starts sniffing.
    func startOutbound() {
        guard let routes = listener.sidecar, let dst = down.originalDestination() else {
            stats.inc(.sidecar_no_original_dst)
            down.close()
            return
        }
        // Inbound: the application, on the loopback address at the port the peer called.
        original = listener.config.protocol == .sidecarInbound ? .loopback(ipv6: dst.isIPv6, port: dst.port) : dst
        func take(_ i: Int?) {
            guard let i else { return }
            serviceIndex = i
            serviceCluster = listener.serviceClusters[i]
        }
        switch routes.first(ip: dst.ipKey, port: dst.port) {
        case .deny:
            stats.inc(.sidecar_passthrough_denied)
            down.close()
        case .tcp(let i): take(i); toTCP()
        case .http(let i): take(i); toHTTP()
        case .sniff(let i): take(i); start()
        }
    }

    // MARK: input

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        buffer.append(data)
        withExtendedLifetime(self) { decide() }
    }

    func connectionEOF(_ c: TCPConnection) {
        withExtendedLifetime(self) {
            if listener.config.protocol == .tls {   // ended before its ClientHello
                stats.inc(.tls_not_found)
                down.close()
                return
            }
            // The client said all it has to say: what it said goes as bytes, then the FIN.
            let s = toTCP()
            s?.connectionEOF(c)
        }
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) { down.close() }

    func connectionTimeout(_ c: TCPConnection) {
        stats.inc(.downstream_pre_cx_timeout)
        withExtendedLifetime(self) {
            if listener.config.protocol == .tls { down.close(); return }
            toTCP()   // a client that waits for the server, or a slow one: bytes
        }
    }

    func connectionClosed(_ c: TCPConnection) {
        stats.dec(.downstream_cx_active)
        buffer.release()
        worker.remove(self)
    }

    override func drain() { down.close() }   // nothing is in flight yet
    override func abort() { down.close() }

    // MARK: deciding

    /// Looks at what was read: hands the connection over once it knows where it goes.
    func decide() {
        let max = listener.config.maxSniffBytes
        if buffer.bytes.first == 22 && (buffer.count < 2 || buffer.bytes[1] == 3) && buffer.count < max {
            recordsEnd = ClientHello.recordBoundary(buffer.bytes, from: recordsEnd)
            if recordsEnd > buffer.count { return }   // the record in progress is not complete yet
        }
        if listener.config.protocol == .tls {
            switch ClientHello.parse(buffer.bytes) {
            case .hello(let h):
                stats.inc(.tls_found)
                routeTLS(h.serverName)
            case .notTLS:
                stats.inc(.tls_not_found)
                down.close()
            case .needMore:
                guard buffer.count >= max else { return }
                stats.inc(.client_hello_too_large)
                routeTLS(nil)   // no name to route by: the default, if any
            }
            return
        }
        guard let sniffed = ProtocolSniffer.classify(buffer.bytes, maxBytes: max) else { return }
        switch sniffed {
        case .http1: stats.inc(.http11_found)
        case .http2: stats.inc(.http2_found)
        case .tls(let h):
            stats.inc(.tls_found)
            stats.inc(h.serverName == nil ? .sni_not_found : .sni_found)
            stats.inc(.http_not_found)
        case .opaque: stats.inc(.http_not_found)
        }
        let isHTTP = sniffed == .http1 || sniffed == .http2
        switch listener.sidecar?.afterSniff(service: serviceIndex, isHTTP: isHTTP) ?? .tcp(nil) {
        case .http: toHTTP()
        case .tcp: toTCP()
        }
    }

    /// `protocol: tls`: the cluster for `name`, or close.
    func routeTLS(_ name: String?) {
        if name != nil { stats.inc(.sni_found) } else { stats.inc(.sni_not_found) }
        // `authorization:` once the ClientHello is read: SNI, source address, destination port.
        if let a = listener.authorization, !listener.admitPassthrough(a, down, serverName: name) {
            down.close()
            return
        }
        let i: Int
        if let m = listener.sni.match(name) {
            stats.inc(.sni_route_matched)
            i = m
        } else if let d = listener.sni.defaultValue {
            stats.inc(.sni_route_default)
            i = d
        } else {
            stats.inc(.no_filter_chain_match)
            down.close()
            return
        }
        handOver(TCPProxySession(worker: worker, listener: listener, cluster: listener.clusters[i], down: down,
                                 initial: buffer.bytes))
    }

    /// Bytes: to the service's cluster, or to the original destination. Returns the new session.
    @discardableResult
    func toTCP() -> TCPProxySession? {
        if serviceIndex != nil { stats.inc(.sidecar_service_matched) } else { stats.inc(.sidecar_passthrough) }
        guard let dst = original else { down.close(); return nil }
        let s = TCPProxySession(worker: worker, listener: listener, cluster: serviceCluster,
                                target: serviceCluster == nil ? dst : nil, down: down, initial: buffer.bytes)
        handOver(s)
        return s
    }

    /// HTTP: the service's internal listener takes the connection and parses what was read.
    func toHTTP() {
        guard let i = serviceIndex, let slot = worker.slots[listener.serviceHTTPListeners[i]] else { toTCP(); return }
        stats.inc(.sidecar_service_matched)
        down.clearDeadline()
        stats.dec(.downstream_cx_active)   // the connection now counts on the service's listener
        let rt = slot.current
        rt.stats.inc(.downstream_cx_total)
        rt.stats.inc(.downstream_cx_active)
        let s = HTTPSession(worker: worker, slot: slot, conn: down)
        worker.replace(self, with: s)
        if buffer.count > 0 { s.connectionRead(down, buffer.bytes) }
        buffer.release()
    }

    func handOver(_ s: Session) {
        s.slot = slot
        worker.replace(self, with: s)
        buffer.release()
    }
}
