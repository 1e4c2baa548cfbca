import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy

/// One client stream of an HTTP/2 connection: the downstream half of one exchange. Recycled.
final class H2ServerStream: DownstreamSide {
    /// Its connection while it serves one (the connection outlives its streams): not retained, and
    /// reached on the hot path as a guaranteed reference (`withConnection`; an `unowned(unsafe)`
    /// reference costs a retain and a release at every use).
    var connectionRef: Unmanaged<H2ServerConnection>?
    var connection: H2ServerConnection? { connectionRef?.takeUnretainedValue() }
    @inline(__always) func withConnection<R>(_ none: R, _ body: (H2ServerConnection) -> R) -> R {
        guard let c = connectionRef else { return none }
        return c._withUnsafeGuaranteedRef(body)
    }
    var transportConnection: TCPConnection? { connection?.conn }
    var peerTag: UInt16 { withConnection(0) { $0.conn.peerTag } }
    var sourceAddress: IPAddress? { connection?.sourceAddress }
    var id: Int32 = -1
    var exchange: Exchange?
    /// Request head (pseudo-headers and fields), then request trailers. Stored apart from the object
    /// (`fieldsStorage`) so that the session appends to it directly (`HTTP2Session.collectHeaders`).
    var fields: HeaderBlock {
        unsafeAddress { UnsafePointer(fieldsStorage) }
        unsafeMutableAddress { fieldsStorage }
    }
    let fieldsStorage = HeaderBlock.allocate()
    deinit { fieldsStorage.deallocate() }   // (its buffers went back to the pool in `recycle`)
    var started = false
    var requestEnded = false
    /// Response head waiting to be submitted (copied: the exchange's view is gone by then).
    var responseHead = HeaderBlock()
    var responseStatus = 0
    var headPending = false
    var headEndsStream = false
    /// The response body, as nghttp2's data source takes it.
    var out = OutgoingBody()
    var resetCode: UInt32? = nil
    var closed = false
    /// Position in the connection's `all` list; in its dirty list.
    var slot = -1
    var isDirty = false
    /// The connection's budget, reached without retain/release (the connection outlives its streams).
    var budgetRef: Unmanaged<ResponseBudget>?

    @inline(__always) func withBudget<R>(_ none: R, _ body: (ResponseBudget) -> R) -> R {
        guard let b = budgetRef else { return none }
        return b._withUnsafeGuaranteedRef(body)
    }

    func prepare(_ c: H2ServerConnection, _ id: Int32) {
        connectionRef = Unmanaged.passUnretained(c)
        budgetRef = Unmanaged.passUnretained(c.budget)
        self.id = id
        started = false
        requestEnded = false
        headPending = false
        headEndsStream = false
        out.reset()
        resetCode = nil
        closed = false
        fields.prepare(c.pool)
    }

    static let bodyWatermark = 256 * 1024

    // MARK: DownstreamSide

    func respondHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                     lengthKnown: Bool, endStream: Bool) {
        withConnection(()) { c in respondHead(c, status: status, headers: headers, endStream: endStream) }
    }

    @inline(__always)
    func respondHead(_ c: H2ServerConnection, status: Int, headers: UnsafeBufferPointer<HeaderRef>, endStream: Bool) {
        if endStream { out.ended = true }
        if !c.inSession {   // the usual case (the head comes from an upstream read): submit now, no copy
            c.h2.submitResponse(stream: id, status: status, headers: headers, hasBody: !endStream,
                                clean: exchange?.responseNamesLowercase ?? false)
            c.schedule()
            return
        }
        responseHead.prepare(c.pool)
        for f in headers { responseHead.append(f.name, f.value) }   // lowercased and filtered when submitted
        responseStatus = status
        headPending = true
        headEndsStream = endStream
        c.markDirty(self)
    }

    func respondBody(_ data: UnsafeRawBufferPointer) {
        withConnection(()) { c in
            out.append(data, pool: c.pool)
            if withBudget(false, { b in b.buffered += data.count; return b.buffered > b.limit && !b.over }) { c.budgetExceeded() }
            c.resume(self)
        }
    }

    func respondEnd(trailers t: UnsafeBufferPointer<HeaderRef>?) {
        withConnection(()) { c in
            out.end(trailers: t, pool: c.pool)
            // From an HTTP/2 upstream (or the proxy itself): already lowercase, no hop-by-hop field.
            out.trailersClean = exchange?.upstreamIsHTTP2 ?? false
            c.resume(self)
        }
    }

    func respondReset(code: UInt32) {
        resetCode = code
        withConnection(()) { $0.markDirty(self) }
    }

    /// Its own buffer is above the watermark, or its connection's streams together hold more than
    /// the connection's budget.
    var responseBlocked: Bool { out.pending > H2ServerStream.bodyWatermark || withBudget(false) { $0.over } }
    var responseBudget: ResponseBudget? { connection?.budget }
    func requestConsumed(_ n: Int) { withConnection(()) { $0.consume(self, n) } }
    func pauseRequest() {}      // HTTP/2: the credit the exchange withholds is the pause
    func resumeRequest() {}
    /// Inside the connection's read: an HTTP/1.1 upstream holds the request head back (corked) until
    /// the read is over, so a stream reset in the same read never sends it.
    var isReading: Bool { withConnection(false) { $0.inReceive } }
    func flushResponse() {}     // the connection flushes at the end of the iteration

    func exchangeDone(_ e: Exchange) {
        exchange = nil
        withConnection(()) { c in
            c.withWorker { $0.recycle(e) }
            c.schedule()   // DATA still arriving for this stream is consumed and dropped
        }
    }

    func recycle(pool: BufferPool) {
        let left = out.pending
        withBudget(()) { $0.buffered -= left }
        budgetRef = nil
        fields.release(to: pool)
        responseHead.release(to: pool)
        out.release(to: pool)
        connectionRef = nil
        id = -1
    }
}

/// A downstream HTTP/2 (h2c) connection: an nghttp2 server session whose streams are exchanges,
/// forwarded concurrently. Frames are read in `connectionRead` and written once per loop iteration
/// (`flush`); whatever the streams ask of nghttp2 while it is calling us waits for that flush.
/// Like `HTTPSession`, a connection without streams for `HTTPSession.parkAfter` ms is parked: it
/// frees its stream lists and write buffers (nghttp2's session, with its HPACK tables, stays).
final class H2ServerConnection: Session, TCPConnectionDelegate, HTTP2SessionDelegate, Flushable {
    unowned(unsafe) let worker: Worker
    /// `worker` without a retain and release per use (`withWorker`; the worker outlives its connections).
    let workerRef: Unmanaged<Worker>
    @inline(__always) func withWorker<R>(_ body: (Worker) -> R) -> R { workerRef._withUnsafeGuaranteedRef(body) }
    /// The worker's buffers (a strong `let`: reached without a retain, unlike `worker`'s).
    let pool: BufferPool
    /// The listener; `listener` is its runtime for the current snapshot (each stream takes it anew).
    let listenerSlot: ListenerSlot
    var listener: ListenerRuntime { listenerSlot.current }
    let conn: TCPConnection
    let h2: HTTP2Session
    let clientIP: String
    /// Parsed from `clientIP` the first time a policy asks (then once per connection).
    lazy var sourceAddress: IPAddress? = IPAddress.parse(clientIP)
    /// Open streams (each also reachable by id through nghttp2's stream user data).
    var all: [H2ServerStream] = []
    /// Streams with a head, a reset or a resumed body to hand to nghttp2 at the next flush.
    var dirty: [H2ServerStream] = []
    var inSession = false
    var flushScheduled = false
    var closing = false
    var draining = false
    var toConsume: [(Int32, Int)] = []
    /// Connection-level credit to return at the next flush (all DATA received so far).
    var connectionCredit = 0
    /// The listener's header list limit when the connection opened (the SETTINGS it sent).
    let maxHeaderListSize: Int
    /// What its streams may hold toward the client together (the listener's limit when it opened).
    let budget: ResponseBudget
    /// Inside `h2.receive`; exchanges that got a head or body bytes during it (their upstream
    /// writes leave together when it returns: `downstreamReadDone`).
    var inReceive = false
    var touched: [Exchange] = []
    /// The connection's deadline is the parking one (`HTTPSession.parkAfter` after the last read),
    /// not yet the idle timeout.
    var parkDue = false

    init(worker: Worker, slot: ListenerSlot, conn: TCPConnection, clientIP: String, initial: UnsafeRawBufferPointer) {
        self.worker = worker
        workerRef = Unmanaged.passUnretained(worker)
        pool = worker.pool
        listenerSlot = slot
        self.conn = conn
        self.clientIP = clientIP
        h2 = HTTP2Session(role: .server, settings: listenerSlot.current.config.http2)
        maxHeaderListSize = listenerSlot.current.config.http2.maxHeaderListSize
        budget = ResponseBudget(limit: listenerSlot.current.config.perConnectionBufferLimit)
        super.init()
        self.slot = slot
        h2.delegate = self
        conn.delegate = self
        conn.owner = self
        armIdle()
        conn.startReading()
        if initial.count > 0 { connectionRead(conn, initial) }
    }

    /// Arms the deadline after a read: parking first when the idle timeout is longer than that.
    @inline(__always) func armIdle() {
        let idle = listener.config.idleTimeout
        parkDue = idle > HTTPSession.parkAfter
        conn.setDeadline(after: parkDue ? HTTPSession.parkAfter : idle)
    }

    /// Frees what a connection without streams does not need (the lists' storage, nghttp2's name
    /// scratch, the write queue's storage); they grow again with the next streams.
    func park() {
        guard all.isEmpty, dirty.isEmpty, toConsume.isEmpty, touched.isEmpty, !flushScheduled, !closing else { return }
        all = []
        dirty = []
        toConsume = []
        touched = []
        h2.releaseIdleMemory()
        conn.releaseIdleBuffers()
    }

    // MARK: deferred work

    func schedule() {
        if flushScheduled || closing { return }
        flushScheduled = true
        withWorker { $0.scheduleFlush(self) }
    }

    func resume(_ s: H2ServerStream) { if s.out.deferred { markDirty(s) } else { schedule() } }

    func markDirty(_ s: H2ServerStream) {
        if !s.isDirty { s.isDirty = true; dirty.append(s) }
        schedule()
    }

    @inline(__always)
    func stream(_ id: Int32) -> H2ServerStream? {
        guard let p = h2.streamData(id) else { return nil }
        return Unmanaged<H2ServerStream>.fromOpaque(p).takeUnretainedValue()
    }

    /// `body` with the stream `id` as a guaranteed reference (no retain), or `none`.
    @inline(__always)
    func withStream<R>(_ id: Int32, else none: R, _ body: (H2ServerStream) -> R) -> R {
        guard let p = h2.streamData(id) else { return none }
        return Unmanaged<H2ServerStream>.fromOpaque(p)._withUnsafeGuaranteedRef(body)
    }

    func addStream(_ s: H2ServerStream) {
        s.slot = all.count
        all.append(s)
        h2.setStreamData(s.id, Unmanaged.passUnretained(s).toOpaque())
    }

    func removeStream(_ s: H2ServerStream) {
        let last = all.removeLast()
        if last !== s { all[s.slot] = last; last.slot = s.slot }
        s.slot = -1
    }

    func consume(_ s: H2ServerStream, _ n: Int) {
        guard s.id > 0 else { return }
        toConsume.append((s.id, n))
        schedule()
    }

    /// Applies what streams asked for, then writes every queued frame.
    func flush() {
        flushScheduled = false
        guard !closing else { return }
        for (id, n) in toConsume { h2.consume(stream: id, n) }
        toConsume.removeAll(keepingCapacity: true)
        h2.consumeConnection(connectionCredit)
        connectionCredit = 0
        for s in dirty where !s.closed && s.slot >= 0 {
            s.isDirty = false
            if s.headPending {
                s.headPending = false
                _ = s.responseHead.withRefs { h2.submitResponse(stream: s.id, status: s.responseStatus, headers: $0,
                                                                hasBody: !s.headEndsStream, clean: false) }
            }
            if let code = s.resetCode {
                s.resetCode = nil
                h2.reset(stream: s.id, code: code)
            }
            if s.out.ready {
                s.out.deferred = false
                h2.resumeData(stream: s.id)
            }
        }
        for s in dirty { s.isDirty = false }
        dirty.removeAll(keepingCapacity: true)
        let ok = send()
        if !ok || h2.abused || (!h2.wantsRead && !h2.wantsWrite) { closeConnection() }
        else if draining && all.isEmpty { closeConnection() }
    }

    /// Every queued frame into one write, the trailers of bodies that end too (the socket is corked
    /// while nghttp2 serializes: a gRPC response's HEADERS, DATA and trailers leave together). While
    /// the client does not read, frames stay inside nghttp2 (whose queue limits then end a flood)
    /// instead of piling up in the socket's buffer; `connectionDrained` resumes.
    func send() -> Bool {
        inSession = true
        conn.cork()
        defer { conn.uncork(); inSession = false }
        return h2.send(until: { conn.isAboveHighWatermark }, { b in
            listener.stats.add(.downstream_cx_tx_bytes_total, UInt64(b.count))
            return conn.write(b)
        }, trailers: { id in
            if let s = stream(id) { s.out.trailers.withRefs { h2.submitTrailers(stream: id, $0, clean: s.out.trailersClean) } }
        })
    }

    /// The streams hold more than the budget: every exchange feeding this connection stops reading
    /// its upstream (HTTP/1.1) or giving it credit (HTTP/2) until the client drains half of it.
    func budgetExceeded() {
        budget.over = true
        listener.stats.inc(.downstream_cx_buffer_limit_reached)
        for s in all { s.exchange?.downstreamBlocked() }
    }

    /// Below half the budget again: the exchanges whose own stream is not full go on.
    func budgetCheck() {
        guard budget.over, budget.buffered <= budget.limit / 2 else { return }
        budget.over = false
        for s in all where s.out.pending <= H2ServerStream.bodyWatermark { s.exchange?.downstreamDrained() }
    }

    func closeConnection() {
        if closing { return }
        closing = true
        conn.finish(linger: 500)
    }

    // MARK: TCPConnectionDelegate

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        listener.stats.add(.downstream_cx_rx_bytes_total, UInt64(data.count))
        armIdle()
        inSession = true
        inReceive = true
        let ok = h2.receive(data)
        inReceive = false
        inSession = false
        if !touched.isEmpty {
            for e in touched { e.downstreamReadDone() }
            touched.removeAll(keepingCapacity: true)
        }
        if !ok { listener.stats.inc(.downstream_cx_protocol_error) }
        flush()
        if !ok { closeConnection() }
    }

    func connectionEOF(_ c: TCPConnection) { abortAll(); c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { abortAll(); c.close() }

    func connectionTimeout(_ c: TCPConnection) {
        if parkDue {   // parked now; the idle timeout counts from the same read
            parkDue = false
            park()
            let idle = listener.config.idleTimeout
            c.setDeadline(after: idle > HTTPSession.parkAfter ? idle - HTTPSession.parkAfter : 1)
            return
        }
        if all.isEmpty {
            listener.stats.inc(.downstream_cx_idle_timeout)
            h2.goAway()
            draining = true
            flush()
        } else {
            c.setDeadline(after: listener.config.idleTimeout)   // streams keep their own deadlines
        }
    }

    func connectionDrained(_ c: TCPConnection) {
        for s in all { s.exchange?.downstreamDrained() }
        schedule()
    }

    func connectionClosed(_ c: TCPConnection) {
        closing = true
        abortAll()
        listener.stats.dec(.downstream_cx_active)
        h2.delegate = nil
        worker.remove(self)
    }

    func abortAll() {
        let streams = all
        all.removeAll()
        for s in streams {
            s.closed = true
            s.exchange?.downstreamAborted()
            s.recycle(pool: worker.pool)
            worker.freeServerStreams.give(s)
        }
    }

    // MARK: HTTP2SessionDelegate

    func h2BeginHeaders(_ s: HTTP2Session, stream id: Int32) {
        if let st = stream(id) {   // trailers of an open stream: the request head was copied already
            st.fields.removeAll()
            s.collectHeaders(stream: id, into: st.fieldsStorage, limit: maxHeaderListSize, underscores: true)
            return
        }
        let st = withWorker { $0.freeServerStreams.take() } ?? H2ServerStream()
        st.prepare(self, id)
        addStream(st)
        // Fields go straight into the stream's block; names with `_` still come to `h2Header` (the policy).
        s.collectHeaders(stream: id, into: st.fieldsStorage, limit: maxHeaderListSize, underscores: true)
    }

    func h2Header(_ s: HTTP2Session, stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        withStream(stream, else: false) { st in
            // Names with `_`: the listener's policy, as for HTTP/1.1 (false resets the stream).
            if name.first != 0x3A && name.contains(byte: 0x5F), listener.config.headersWithUnderscores != .allow {
                if listener.config.headersWithUnderscores == .reject {
                    listener.stats.inc(.requests_rejected_with_underscores_in_headers)
                    if let log = listener.accessLog { log.logRefused(proto: 2, status: 0, flags: .DPE, view: nil) }
                    return false
                }
                listener.stats.inc(.dropped_headers_with_underscores)
                return true
            }
            st.fields.append(name, value)
            return st.fields.listSize <= maxHeaderListSize
        }
    }

    func h2HeadersComplete(_ s: HTTP2Session, stream: Int32, endStream: Bool) {
        withStream(stream, else: ()) { headersComplete($0, endStream: endStream) }
    }

    func headersComplete(_ st: H2ServerStream, endStream: Bool) {
        if st.started {   // request trailers
            st.requestEnded = true
            st.fields.withRefs { st.exchange?.requestEnd(trailers: $0) }
            return
        }
        st.started = true
        if endStream { st.requestEnded = true }
        if overloadLevel >= 1 {   // the client may retry it elsewhere: nothing was processed
            listener.stats.inc(.downstream_rq_overload_refused)
            if let log = listener.accessLog { log.logRefused(proto: 2, status: 0, flags: .OM, view: nil) }
            st.resetCode = 0x7   // REFUSED_STREAM
            markDirty(st)
            return
        }
        let e = withWorker { $0.takeExchange() }
        st.exchange = e
        e.h2Downstream = Unmanaged.passUnretained(st)   // its hot path reaches the stream directly
        st.fields.withRefs { refs in
            var method = UnsafeRawBufferPointer(start: nil, count: 0), path = method, authority = method, proto = method
            var firstRegular = refs.count
            var lengthKnown = false
            var contentLength: UInt64 = 0
            for i in refs.indices {
                let n = refs[i].name
                // Pseudo-fields come first (nghttp2 refuses one after a regular field).
                if n.first != 0x3A { firstRegular = i; break }
                switch n.count {
                case 7: if n.equalsLowercase(":method") { method = refs[i].value }   // (or :scheme)
                case 5: if n.equalsLowercase(":path") { path = refs[i].value }
                case 10: if n.equalsLowercase(":authority") { authority = refs[i].value }
                case 9: if n.equalsLowercase(":protocol") { proto = refs[i].value }   // RFC 8441 (nghttp2 checked it)
                default: break
                }
            }
            let regular = UnsafeBufferPointer(rebasing: refs[firstRegular...])
            if let i = regular.firstIndex(named: "content-length") {
                lengthKnown = true
                for c in regular[i].value { contentLength = contentLength &* 10 &+ UInt64(c &- 0x30) }
            }
            if authority.count == 0, let i = regular.firstIndex(named: "host") { authority = regular[i].value }
            let isHEAD = method.equalsLowercase("head") && method.count == 4
            var start = RequestStart(view: RequestView(method: method, target: path, authority: authority, headers: regular),
                                     isHEAD: isHEAD, lengthKnown: lengthKnown, contentLength: contentLength,
                                     chunked: false, endStream: endStream, fromHTTP2: true, dropExpect: true,
                                     clientCert: conn.forwardedClientCert, plaintext: conn.transportSocket == nil)
            if proto.count > 0 {   // extended CONNECT: a WebSocket (or refused) upgrade, its DATA the tunnel's bytes
                start.upgrade = proto.count == 9 && proto.equalsLowercase("websocket") ? .websocket : .other
                start.lengthKnown = true   // toward HTTP/1.1 the bytes go as they are, unframed
                start.contentLength = 0
            } else if method.count == 7 && method.equalsLowercase("connect") {   // a TCP tunnel to :authority
                start.upgrade = .connect
            }
            e.start(downstream: st, listener: listener, start, clientIP: clientIP)
        }
        // An HTTP/1.1 upstream holds the request corked until this read is over (`isReading`).
        if !e.upstreamIsHTTP2 && e.upstream != nil { touched.append(e) }
    }

    func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer) {
        connectionCredit += data.count
        let taken = withStream(stream, else: false) { st in
            guard let e = st.exchange else { return false }
            e.requestBody(data)
            return true
        }
        if !taken { toConsume.append((stream, data.count)) }
    }

    func h2DataEnd(_ s: HTTP2Session, stream: Int32) {
        withStream(stream, else: ()) { st in
            st.requestEnded = true
            st.exchange?.requestEnd(trailers: nil)
        }
    }

    func h2StreamClosed(_ s: HTTP2Session, stream: Int32, errorCode: UInt32) {
        withStream(stream, else: ()) { st in
            guard st.slot >= 0 else { return }
            // Into the free list first: it holds the stream once `all` lets go of it (so no retain here).
            withWorker { $0.freeServerStreams.give(st) }
            removeStream(st)
            st.closed = true
            if let e = st.exchange {
                // Closed before the exchange finished: the client cancelled (or the stream failed).
                e.downstreamAborted()
            }
            st.recycle(pool: pool)
        }
        if budget.over { budgetCheck() }
        if draining && all.isEmpty { schedule() }
    }

    func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32) {}
    func h2Settings(_ s: HTTP2Session) {}

    func h2ReadBody(_ s: HTTP2Session, stream: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? {
        withStream(stream, else: (0, true, false)) { st in
            let wasBlocked = st.responseBlocked
            let r = st.out.read(into: buf)
            if let r { budget.buffered -= r.count }
            if budget.over {
                budgetCheck()
                // Still over (other streams hold it), but the client takes this stream's bytes: it
                // goes on, one upstream read or credit at a time, so reading one stream while
                // ignoring others never stalls it.
                if budget.over && st.out.pending == 0 { st.exchange?.downstreamDrained() }
            } else if wasBlocked && !st.responseBlocked {
                st.exchange?.downstreamDrained()
            }
            return r
        }
    }

    // MARK: Session

    override var downstreamConnection: TCPConnection? { conn }

    override func drain() {
        draining = true
        h2.goAway()
        schedule()
    }

    override func abort() {
        abortAll()
        conn.close()
    }
}
