import RemoraCore
import RemoraHTTP
import RemoraIO

/// Something with HTTP/2 frames to write at the end of the loop iteration.
protocol Flushable: AnyObject {
    var flushScheduled: Bool { get set }
    func flush()
}

/// One stream of an upstream HTTP/2 connection: the upstream half of one exchange. Recycled.
final class H2UpstreamStream: UpstreamStream {
    /// Its connection while it serves one (the connection outlives its streams): not retained, and
    /// reached on the hot path as a guaranteed reference (`withConnection`; an `unowned(unsafe)`
    /// reference costs a retain and a release at every use).
    var connectionRef: Unmanaged<H2UpstreamConnection>?
    var connection: H2UpstreamConnection? { connectionRef?.takeUnretainedValue() }
    @inline(__always) func withConnection<R>(_ none: R, _ body: (H2UpstreamConnection) -> R) -> R {
        guard let c = connectionRef else { return none }
        return c._withUnsafeGuaranteedRef(body)
    }
    /// The exchange it serves: not retained (stored unmanaged, so that a read that cannot end the
    /// exchange — `submit`'s trace flag, a response head — needs no retain: `exchangeRef`).
    var exchangeRef: Unmanaged<Exchange>?
    var exchange: Exchange? {
        get { exchangeRef?.takeUnretainedValue() }
        set { exchangeRef = newValue.map { Unmanaged.passUnretained($0) } }
    }
    var id: Int32 = -1
    /// Response head, then trailers, as they arrive. Stored apart from the object (`fieldsStorage`)
    /// so that the session appends to it directly (`HTTP2Session.collectHeaders`).
    var fields: HeaderBlock {
        unsafeAddress { UnsafePointer(fieldsStorage) }
        unsafeMutableAddress { fieldsStorage }
    }
    let fieldsStorage = HeaderBlock.allocate()
    deinit { fieldsStorage.deallocate() }   // (its buffers went back to the pool in `recycle`)
    var headDelivered = false
    var responseEnded = false
    var gotBytes = false
    /// The connection existed before this stream (a failure may be the peer closing an idle connection).
    var onReusedConnection = false
    /// The request body, as nghttp2's data source takes it.
    var out = OutgoingBody()
    /// Position in the connection's `all` list.
    var slot = -1
    /// Response bytes passed on so far (a stream past half its first window may get a larger one).
    var received = 0
    /// Its receive window was raised above the initial 64 KiB; `pledge` holds that credit against
    /// the downstream connection's budget until the stream is done.
    var raised = false
    var pledge: ResponseBudget?

    func reset(for e: Exchange, on c: H2UpstreamConnection) {
        exchange = e
        connectionRef = Unmanaged.passUnretained(c)
        headDelivered = false
        responseEnded = false
        gotBytes = false
        received = 0
        raised = false
        out.reset()
    }

    /// Gives back the credit pledged against the downstream's budget.
    @inline(__always) func releasePledge() {
        if let b = pledge { withConnection(()) { c in b.pledged -= c.raisedWindow - c.baseWindow } }
        pledge = nil
    }

    // MARK: UpstreamStream

    func sendBody(_ data: UnsafeRawBufferPointer) {
        withConnection(()) { c in
            out.append(data, pool: c.pool)
            c.resume(self)
        }
    }

    func sendEnd(trailers t: UnsafeBufferPointer<HeaderRef>?) {
        withConnection(()) { c in
            out.end(trailers: t, pool: c.pool)
            c.resume(self)
        }
    }

    var requestBlocked: Bool { out.pending > 256 * 1024 || withConnection(false) { $0.conn.isAboveHighWatermark } }
    func pauseResponse() {}          // credit is withheld by the exchange instead
    func resumeResponse() {}
    func responseConsumed(_ n: Int) { withConnection(()) { $0.consume(self, n) } }
    var wasReused: Bool { onReusedConnection }
    var gotResponseBytes: Bool { gotBytes }
    /// Valid while the stream serves an exchange (read right after `open`).
    var endpoint: Endpoint.Ref { connectionRef!._withUnsafeGuaranteedRef { $0.endpoint } }
    func flushRequest() {}           // the connection flushes at the end of the iteration

    func detach(clean: Bool) {
        if pledge != nil { releasePledge() }
        exchange = nil
        if !(clean && responseEnded) { withConnection(()) { $0.cancel(self) } }
    }

    /// Back to the cluster's free list (the stream is closed).
    func recycle(pool: BufferPool, into free: inout Recycler<H2UpstreamStream>) {
        if pledge != nil { releasePledge() }
        fields.release(to: pool)
        out.release(to: pool)
        connectionRef = nil
        exchange = nil
        id = -1
        free.give(self)
    }
}

/// An HTTP/2 (h2c, prior knowledge) client connection to one endpoint carrying many streams.
/// Streams open while the peer's SETTINGS_MAX_CONCURRENT_STREAMS allows; after a GOAWAY the
/// connection takes no new stream, finishes the ones the peer accepted, and the ones it never
/// processed are retried elsewhere by their exchanges.
final class H2UpstreamConnection: TCPConnectionDelegate, HTTP2SessionDelegate, Flushable {
    /// Its cluster and endpoint (the cluster owns the endpoint and outlives its connections); moved
    /// only while no stream is open (`Cluster.adopt`).
    var cluster: Cluster {
        get { clusterRef.takeUnretainedValue() }
        set { clusterRef = Unmanaged.passUnretained(newValue) }
    }
    /// (Stored unmanaged: reached as a guaranteed reference where it is hot.)
    var clusterRef: Unmanaged<Cluster>
    var endpoint: Endpoint.Ref
    let conn: TCPConnection
    let h2: HTTP2Session
    /// Open streams (each also reachable by id through nghttp2's stream user data).
    var all: [H2UpstreamStream] = []
    var connected = false
    var goingAway = false
    var closing = false
    var inSession = false
    var flushScheduled = false
    /// Streams ever opened here (a stream on a connection that carried others is "reused").
    var opened = 0
    /// Streams to reset or resume once we are out of nghttp2's callbacks.
    var toCancel: [Int32] = []
    var toResume: [Int32] = []
    var toConsume: [(Int32, Int)] = []
    var toRaise: [Int32] = []
    /// Connection-level credit to return at the next flush (all DATA received so far).
    var connectionCredit = 0
    /// Exchanges that received something during the current read (told `upstreamReadDone` after).
    var touched: [Exchange] = []

    /// The worker's buffer pool; the cluster's header list limit (as sent in SETTINGS).
    let pool: BufferPool
    /// The worker (the same for every cluster the connection may move to), without a retain per use.
    let workerRef: Unmanaged<Worker>
    let maxHeaderListSize: Int
    /// Each stream's receive window starts at `baseWindow` (the protocol's 64 KiB, or the cluster's
    /// `initial_stream_window` when smaller) and is raised to `raisedWindow` (the cluster's) once it
    /// has passed on half of that and its downstream connection's budget can hold the difference:
    /// what an upstream may push toward a client that does not read stays bounded by that budget.
    let baseWindow: Int
    let raisedWindow: Int

    init(cluster: Cluster, endpoint: Endpoint.Ref, conn: TCPConnection) {
        clusterRef = Unmanaged.passUnretained(cluster)
        pool = cluster.worker.pool
        workerRef = Unmanaged.passUnretained(cluster.worker)
        maxHeaderListSize = cluster.config.http2.maxHeaderListSize
        self.endpoint = endpoint
        self.conn = conn
        raisedWindow = cluster.config.http2.initialStreamWindow
        baseWindow = min(raisedWindow, 65_535)
        var settings = cluster.config.http2
        settings.initialStreamWindow = baseWindow
        h2 = HTTP2Session(role: .client, settings: settings)
        all.reserveCapacity(128)
        h2.delegate = self
        conn.delegate = self
        conn.owner = self
        conn.startReading()
    }

    /// The peer's SETTINGS arrived (its stream limit is known).
    var settingsKnown = false

    /// The first connection of `e` with room for a stream (and whose peer's SETTINGS arrived, when
    /// `settingsKnown`), unretained: the endpoint's list holds its connections, and reading it
    /// element by element costs no retain (`first(where:)` retained the list and each candidate).
    @inline(__always)
    static func withRoom(in e: Endpoint, settingsKnown: Bool) -> Unmanaged<H2UpstreamConnection>? {
        e.h2.withUnsafeBufferPointer { list in
            for i in list.indices {
                let c = Unmanaged.passUnretained(list[i])
                if c._withUnsafeGuaranteedRef({ $0.hasRoom && (!settingsKnown || $0.settingsKnown) }) { return c }
            }
            return nil
        }
    }

    var hasRoom: Bool {
        !goingAway && !closing && h2.canOpenStream && all.count < h2.remoteMaxConcurrentStreams
    }

    /// Extended CONNECT streams (RFC 8441 §3: `:protocol` only once the peer announced
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL) opened before the peer's SETTINGS arrived, or on a peer
    /// that did not announce it: in `all` with no id, submitted or failed (502) at the next flush
    /// after the SETTINGS (never from inside nghttp2's callback). Never sent to a peer without it.
    var awaitingSettings: [H2UpstreamStream] = []

    func open(_ s: H2UpstreamStream, for e: Exchange, head: HeaderBlock, hasBody: Bool, extendedConnect: Bool = false) -> Bool {
        s.reset(for: e, on: self)
        s.onReusedConnection = opened > 0
        if extendedConnect && !(settingsKnown && h2.remoteEnablesConnectProtocol) {
            s.id = -1
            s.slot = all.count
            all.append(s)
            awaitingSettings.append(s)
            opened += 1
            if connected { conn.clearDeadline() }
            if settingsKnown { schedule() }
            return true
        }
        return submit(s, head: head, hasBody: hasBody)
    }

    /// Starts the request of `s` on the session (its id is known from here on).
    func submit(_ s: H2UpstreamStream, head: HeaderBlock, hasBody: Bool) -> Bool {
        let id: Int32 = head.withRefs { refs in
            guard refs.count >= 3 else { return -1 }
            return h2.submitRequest(method: refs[0].value, scheme: "http", authority: refs[1].value, path: refs[2].value,
                                    headers: UnsafeBufferPointer(rebasing: refs[3...]), clean: true, hasBody: hasBody,
                                    streamData: Unmanaged.passUnretained(s).toOpaque(), addedFields: s.exchangeRef?._withUnsafeGuaranteedRef { $0.observe.hasTrace } ?? false)
        }
        if id < 0 { return false }
        s.id = id
        if s.slot < 0 {
            if all.isEmpty && connected { conn.clearDeadline() }   // the idle timeout
            s.slot = all.count
            all.append(s)
            opened += 1
        }
        schedule()
        return true
    }

    /// After the peer's SETTINGS: each waiting extended CONNECT is submitted if the peer takes it,
    /// else its attempt fails (an invalid answer: 502) and the connection stays for other requests;
    /// one the session cannot take any more (a GOAWAY came too) fails as refused, retried elsewhere.
    func startAwaitingSettings() {
        let waiting = awaitingSettings
        awaitingSettings.removeAll()
        let accepted = h2.remoteEnablesConnectProtocol
        for s in waiting where s.slot >= 0 && s.connection === self {
            if let e = s.exchange, accepted, submit(s, head: e.reqHead, hasBody: e.requestHasBody) {
                continue
            }
            removeStream(s)
            let e = s.exchange
            s.exchange = nil
            e?.upstreamFailed(accepted ? .refused : .protocolError)   // accepted: no room left (GOAWAY), try elsewhere
            s.recycle(pool: pool, into: &cluster.freeStreams)
        }
        if all.isEmpty && connected && !closing { conn.setDeadline(after: cluster.config.idleTimeout) }
    }

    // MARK: from streams (deferred while inside nghttp2)

    func resume(_ s: H2UpstreamStream) {
        guard s.out.deferred, s.id >= 0 else { schedule(); return }
        s.out.deferred = false
        if inSession { toResume.append(s.id) } else { h2.resumeData(stream: s.id) }
        schedule()
    }

    func consume(_ s: H2UpstreamStream, _ n: Int) {
        guard s.id >= 0 else { return }
        if inSession { toConsume.append((s.id, n)) } else { h2.consume(stream: s.id, n) }
        s.received &+= n
        if !s.raised && s.received >= baseWindow / 2 && raisedWindow > baseWindow { raise(s) }
        schedule()
    }

    /// A stream carrying a large response gets the cluster's full window, if its downstream can
    /// hold that much more (HTTP/1.1 clients and mirrors have no shared budget: one stream each).
    func raise(_ s: H2UpstreamStream) {
        let extra = raisedWindow - baseWindow
        let budget = s.exchange?.downstream?.responseBudget
        if let b = budget {
            guard b.canPledge(extra) else { return }
            b.pledged += extra
            s.pledge = b
        }
        s.raised = true
        if inSession { toRaise.append(s.id) } else { h2.setStreamWindow(stream: s.id, raisedWindow) }
    }

    @inline(__always)
    func stream(_ id: Int32) -> H2UpstreamStream? {
        guard let p = h2.streamData(id) else { return nil }
        let s = Unmanaged<H2UpstreamStream>.fromOpaque(p).takeUnretainedValue()
        return s.slot >= 0 ? s : nil
    }

    /// `body` with the open stream `id` as a guaranteed reference (no retain), or `none`.
    @inline(__always)
    func withStream<R>(_ id: Int32, else none: R, _ body: (H2UpstreamStream) -> R) -> R {
        guard let p = h2.streamData(id) else { return none }
        return Unmanaged<H2UpstreamStream>.fromOpaque(p)._withUnsafeGuaranteedRef { $0.slot >= 0 ? body($0) : none }
    }

    func removeStream(_ s: H2UpstreamStream) {
        let last = all.removeLast()
        if last !== s { all[s.slot] = last; last.slot = s.slot }
        s.slot = -1
    }

    func cancel(_ s: H2UpstreamStream) {
        if s.id < 0 && s.slot >= 0, let i = awaitingSettings.firstIndex(where: { $0 === s }) {   // never sent
            awaitingSettings.remove(at: i)
            removeStream(s)
            s.recycle(pool: pool, into: &cluster.freeStreams)
            if all.isEmpty && connected && !closing { conn.setDeadline(after: cluster.config.idleTimeout) }
            return
        }
        guard s.id >= 0, s.slot >= 0 else { return }
        if inSession { toCancel.append(s.id) } else { h2.reset(stream: s.id, code: 0x8) }   // CANCEL
        schedule()
    }

    func schedule() {
        if flushScheduled || closing { return }
        flushScheduled = true
        workerRef._withUnsafeGuaranteedRef { $0.scheduleFlush(self) }
    }

    /// Writes what nghttp2 has queued (after applying what waited for the end of its callbacks).
    func flush() {
        flushScheduled = false
        guard !closing else { return }
        for id in toCancel { h2.reset(stream: id, code: 0x8) }
        for id in toResume { h2.resumeData(stream: id) }
        for (id, n) in toConsume { h2.consume(stream: id, n) }
        if !toRaise.isEmpty {
            for id in toRaise where stream(id) != nil { h2.setStreamWindow(stream: id, raisedWindow) }
            toRaise.removeAll(keepingCapacity: true)
        }
        if settingsKnown && !awaitingSettings.isEmpty { startAwaitingSettings() }
        h2.consumeConnection(connectionCredit)
        connectionCredit = 0
        toCancel.removeAll(keepingCapacity: true)
        toResume.removeAll(keepingCapacity: true)
        toConsume.removeAll(keepingCapacity: true)
        if !send() { failAll(.protocolError) }
        else if goingAway && all.isEmpty { closeNow() }
    }

    /// Every queued frame into one write, the trailers of bodies that end too (the socket is corked
    /// while nghttp2 serializes).
    func send() -> Bool {
        inSession = true
        conn.cork()
        defer { conn.uncork(); inSession = false }
        return h2.send(until: { conn.isAboveHighWatermark }, { conn.write($0) }, trailers: { id in
            if let s = stream(id) { s.out.trailers.withRefs { h2.submitTrailers(stream: id, $0) } }
        })
    }

    func drain() {
        goingAway = true
        if all.isEmpty { closeNow() } else { h2.goAway(); schedule() }
    }

    func closeNow() {
        if closing { return }
        closing = true
        cluster.removeHTTP2(self)
        conn.finish(linger: 0)
    }

    func failAll(_ why: UpstreamFailure) {
        closing = true
        cluster.removeHTTP2(self)
        let streams = all
        all.removeAll()
        awaitingSettings.removeAll()
        for s in streams {
            let e = s.exchange
            s.exchange = nil
            s.id = -1
            s.slot = -1
            if !s.responseEnded { e?.upstreamFailed(why) }
            s.recycle(pool: cluster.worker.pool, into: &cluster.freeStreams)
        }
        conn.close()
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        cluster.connectSettled(c, connected: status == 0)
        if status != 0 {
            cluster.stats.inc(.upstream_cx_connect_fail)
            cluster.connectFailed(c, status)
            failAll(.connectFailed)
            return
        }
        if cluster.auto && cluster.learned(c, endpoint: endpoint) { switchToHTTP1(c); return }
        ready(c)
    }

    /// Connected (and through TLS): what was queued goes out.
    func ready(_ c: TCPConnection) {
        connected = true
        if all.isEmpty { c.setDeadline(after: cluster.config.idleTimeout) } else { c.clearDeadline() }
        schedule()
    }

    /// `protocol: auto`: the server chose HTTP/1.1 (or no ALPN) for this connection, opened for h2
    /// (nothing was sent: `TLSSocket.alpnSwitched`). The connection goes idle into the endpoint's
    /// HTTP/1.1 pool; each exchange that had a stream here starts again in HTTP/1.1, the first on it
    /// (`Exchange.upstreamSwitched`). This object lets go of the connection and of its session.
    func switchToHTTP1(_ c: TCPConnection) {
        withExtendedLifetime(self) {
            closing = true
            cluster.removeHTTP2(self)
            h2.delegate = nil
            let streams = all
            all.removeAll()
            awaitingSettings.removeAll()
            let u = H1Upstream(cluster: cluster, endpoint: endpoint, conn: c)   // takes the delegate
            cluster.release(u)
            for s in streams {
                let e = s.exchange
                s.exchange = nil
                s.id = -1
                s.slot = -1
                e?.upstreamSwitched(toHTTP2: false)
                s.recycle(pool: pool, into: &cluster.freeStreams)
            }
        }
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        cluster.stats.add(.upstream_cx_rx_bytes_total, UInt64(data.count))
        inSession = true
        let ok = h2.receive(data)
        inSession = false
        for e in touched { e.upstreamReadDone() }
        touched.removeAll(keepingCapacity: true)
        flush()
        if !ok { failAll(.protocolError) }
    }

    func connectionEOF(_ c: TCPConnection) {
        cluster.stats.inc(.upstream_cx_destroy_remote)
        failAll(.reset(code: 0))
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) {
        cluster.stats.inc(.upstream_cx_destroy_remote)
        failAll(.reset(code: 0))
    }

    func connectionTimeout(_ c: TCPConnection) {
        if connected {   // idle for the cluster's idle timeout: no new stream may start here now
            cluster.stats.inc(.upstream_cx_idle_timeout)
            drain()
            return
        }
        cluster.stats.inc(.upstream_cx_connect_timeout)
        cluster.stats.inc(.upstream_cx_connect_fail)
        failAll(.connectFailed)
    }

    func connectionDrained(_ c: TCPConnection) {
        for s in all { s.exchange?.upstreamDrained() }
        schedule()
    }

    func connectionClosed(_ c: TCPConnection) {
        cluster.stats.dec(.upstream_cx_active)
        cluster.connectionClosed(c)
        if !all.isEmpty { failAll(.reset(code: 0)) }
        h2.delegate = nil
    }

    // MARK: HTTP2SessionDelegate

    func h2BeginHeaders(_ s: HTTP2Session, stream: Int32) {
        withStream(stream, else: ()) { st in
            st.fields.prepare(pool)
            st.gotBytes = true
            s.collectHeaders(stream: stream, into: st.fieldsStorage, limit: maxHeaderListSize, underscores: false)
        }
    }

    func h2Header(_ s: HTTP2Session, stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        withStream(stream, else: true) { st in
            st.fields.append(name, value)
            return st.fields.listSize <= maxHeaderListSize
        }
    }

    func h2HeadersComplete(_ s: HTTP2Session, stream: Int32, endStream: Bool) {
        withStream(stream, else: ()) { headersComplete($0, endStream: endStream) }
    }

    func headersComplete(_ st: H2UpstreamStream, endStream: Bool) {
        guard let ref = st.exchangeRef else { return }
        if !st.headDelivered {
            // `touched` holds the exchange (from before it sees the head) until this read is over.
            ref._withUnsafeGuaranteedRef { responseHead(st, $0, endStream: endStream) }
        } else {
            let e = ref.takeUnretainedValue()   // (retained: the trailers may end it)
            st.responseEnded = true
            st.fields.withRefs { e.upstreamEnd(trailers: $0) }
        }
    }

    @inline(__always)
    func responseHead(_ st: H2UpstreamStream, _ e: Exchange, endStream: Bool) {
        do {
            var status = 0
            var lengthKnown = false
            for i in 0..<st.fields.count {
                let n = st.fields.name(i)
                if n.count == 7 && n.equalsLowercase(":status") {
                    for c in st.fields.value(i) { status = status * 10 + Int(c &- 0x30) }
                } else if n.count == 14 && n.equalsLowercase("content-length") {
                    lengthKnown = true
                }
            }
            if status >= 100 && status < 200 { st.fields.removeAll(); return }   // interim: not forwarded
            st.headDelivered = true
            e.observe.upstreamPeer = conn.peerTag   // the server's identity, for the metrics
            touched.append(e)
            if endStream { st.responseEnded = true }
            st.fields.withRefs { refs in
                let first = refs.firstIndex { $0.name.first != 0x3A } ?? refs.count
                let regular = UnsafeBufferPointer(rebasing: refs[first...])
                e.upstreamHead(status: status, reason: UnsafeRawBufferPointer(start: nil, count: 0), headers: regular,
                               lengthKnown: lengthKnown, endStream: endStream)
            }
        }
    }

    func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer) {
        connectionCredit += data.count
        schedule()
        let taken = withStream(stream, else: false) { st in
            guard let e = st.exchange else { return false }
            if touched.last !== e { touched.append(e) }
            e.upstreamBody(data)
            return true
        }
        if !taken { toConsume.append((stream, data.count)) }
    }

    func h2DataEnd(_ s: HTTP2Session, stream: Int32) {
        withStream(stream, else: ()) { st in
            guard !st.responseEnded else { return }
            st.responseEnded = true
            st.exchange?.upstreamEnd(trailers: nil)
        }
    }

    func h2StreamClosed(_ s: HTTP2Session, stream: Int32, errorCode: UInt32) {
        // A retained reference: removing the stream drops the connection's.
        guard let st = self.stream(stream) else { return }
        removeStream(st)
        let e = st.exchange
        st.exchange = nil
        st.id = -1
        if !st.responseEnded, let e {
            e.upstreamFailed(errorCode == 0x7 ? .refused : .reset(code: errorCode == 0 ? 0x2 : errorCode))
        }
        clusterRef._withUnsafeGuaranteedRef { st.recycle(pool: pool, into: &$0.freeStreams) }
        if all.isEmpty {
            if cluster.retired && !cluster.handOver(self) { closeNow() }
            if goingAway { schedule() } else if connected && !closing { conn.setDeadline(after: cluster.config.idleTimeout) }
        }
    }

    func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32) {
        goingAway = true   // no new streams; those above lastStreamID are closed by nghttp2 (REFUSED_STREAM)
    }

    func h2Settings(_ s: HTTP2Session) {
        settingsKnown = true
        if !awaitingSettings.isEmpty { schedule() }
    }

    func h2ReadBody(_ s: HTTP2Session, stream: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? {
        withStream(stream, else: (0, true, false)) { st in
            let wasBlocked = st.requestBlocked
            let r = st.out.read(into: buf)
            if wasBlocked && !st.requestBlocked { st.exchange?.upstreamDrained() }
            return r
        }
    }
}

