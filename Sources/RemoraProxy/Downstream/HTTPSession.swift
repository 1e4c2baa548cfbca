import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy
import RemoraRouting

/// One downstream HTTP/1.1 connection: parses requests and hands each to an `Exchange`, one at a
/// time. Pipelined requests wait (bytes stashed, bounded) until the previous response is complete,
/// so answers go out in order. A connection that opens with the HTTP/2 preface becomes an
/// `H2ServerConnection` (h2c with prior knowledge on the same port).
///
/// Memory: a keep-alive connection idle for `parkAfter` ms is *parked*: it gives its parser (with
/// llhttp's state) back to the worker (`Worker.freeParsers`) and frees its write queue's storage;
/// the next request's first bytes take a parser again. An idle connection then holds its socket
/// and timer, its `TCPConnection` and this object (about 0.9 KiB, docs/architecture.md "Memory");
/// a busy one keeps its parser, so the request path costs nothing more.
final class HTTPSession: Session, TCPConnectionDelegate, HTTP1ParserDelegate, DownstreamSide, Flushable {
    /// What the connection's one deadline is for: the request head, parking, or the idle timeout.
    enum Deadline { case header, park, idle }
    /// A connection idle this long (ms) is parked (see the type's notes); the idle timeout counts
    /// from the same moment. Short enough that idle connections shed memory soon, long enough that
    /// a connection under load is never parked between two requests.
    static let parkAfter: Millis = 1_000

    unowned(unsafe) let worker: Worker
    /// The listener; `listener` is its runtime for the current snapshot (each request takes it anew).
    let listenerSlot: ListenerSlot
    var listener: ListenerRuntime { listenerSlot.current }
    let conn: TCPConnection
    var transportConnection: TCPConnection? { conn }
    var peerTag: UInt16 { conn.peerTag }
    /// Parsed from `clientIP` the first time a policy asks (then once per connection).
    lazy var sourceAddress: IPAddress? = IPAddress.parse(clientIP)
    /// The request parser (+1), taken from the worker at the first request and given back when
    /// parked; nil before and while parked. Reached through `withParser`, without a retain per use.
    var parserRef: Unmanaged<HTTP1Parser>?
    /// `body` with the parser; only where one exists (after `unpark`).
    @inline(__always) func withParser<R>(_ body: (HTTP1Parser) -> R) -> R { parserRef!._withUnsafeGuaranteedRef(body) }
    /// A request head is being parsed.
    var inHead: Bool { parserRef?._withUnsafeGuaranteedRef { $0.inHead } ?? false }
    /// The client's IP, for X-Forwarded-For (an IPv4 address fits a String's inline storage).
    let clientIP: String
    var deadlineKind = Deadline.header
    var exchange: Exchange?
    /// A request is between its head and the end of its exchange.
    var active = false
    var requestDone = false
    var keepAlive = true
    /// The client said it ends the connection after this request (or half-closed).
    var clientCloses = false
    var isHEAD = false
    var isHTTP10 = false
    /// The request's body is small and of known length: after an early answer (a local response)
    /// the rest is read and dropped and the connection stays usable.
    var smallBody = true
    var respFraming = BodyFraming.none
    /// Bytes seen before the protocol is known (at most the HTTP/2 preface).
    var sniffed = 0
    var sniff = ByteBuffer()

    // Input flow.
    var stash = ByteBuffer()
    var work = ByteBuffer()
    var parserPaused = false
    var inFeed = false
    var resumePending = false
    var pausedForUpstream = false
    var resumeWhenDrained = false
    var draining = false
    var ending = false
    /// The connection became a tunnel (an accepted upgrade): the session is done with it.
    var tunneled = false
    /// An allowed CONNECT: the endpoint (index in the listener's connect cluster) its tunnel goes
    /// to once the parser has returned; -1 = none.
    var connectTo = -1
    var flushScheduled = false
    static let stashLimit = 64 * 1024
    static let preface: StaticString = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    init(worker: Worker, slot: ListenerSlot, conn: TCPConnection) {
        self.worker = worker
        listenerSlot = slot
        self.conn = conn
        clientIP = conn.peerIP()
        super.init()
        self.slot = slot
        conn.delegate = self
        conn.owner = self
        arm(.header, listener.config.requestHeaderTimeout)
        conn.startReading()
    }

    deinit { parserRef?.release() }   // a connection closed mid-request: its parser is dropped

    /// Takes a parser from the worker (a new one when none is free), set up for the current listener.
    @inline(never) func takeParser() {
        // Two fields read in place, not a copy of the whole config (this runs for most requests).
        let maxHead = listenerSlot.current.config.maxRequestHeaderBytes
        let underscores = listenerSlot.current.config.headersWithUnderscores
        // The worker reached without a retain (a mutating access through `unowned(unsafe)` makes one).
        let ref = Unmanaged.passUnretained(worker)._withUnsafeGuaranteedRef { $0.freeParsers.take() } ?? newParser()
        ref._withUnsafeGuaranteedRef { p in
            p.maxHeadBytes = maxHead
            p.underscoreAction = underscores
            p.attach(self)
        }
        parserRef = ref
    }

    @inline(never) func newParser() -> Unmanaged<HTTP1Parser> {
        let p = HTTP1Parser(kind: .request, maxHeadBytes: listener.config.maxRequestHeaderBytes)
        p.pool = worker.pool
        return Unmanaged.passRetained(p)
    }

    /// Whether the parser is between messages with nothing of this connection in it: no request
    /// active, nothing stashed, not paused, not inside its own `feed`.
    @inline(__always) var parserIdle: Bool { !active && !ending && !parserPaused && !inFeed && stash.isEmpty && !inHead }

    /// Gives the parser back to the worker (llhttp is between two keep-alive messages: it parses
    /// the next one for any connection as it would for this one).
    @inline(__always) func giveBackParser() {
        guard let p = parserRef else { return }
        parserRef = nil
        p._withUnsafeGuaranteedRef { $0.detach() }
        Unmanaged.passUnretained(worker)._withUnsafeGuaranteedRef { $0.freeParsers.give(p) }
    }

    /// After a request, once the parser has been resumed with nothing stashed (`resumeInput`, or
    /// `feed` when the exchange ended inside it): the parser goes back to the worker when it is idle
    /// and the worker keeps it (its list is not full), so that a keep-alive connection between requests holds none and the
    /// parsers in use are about the requests in flight, not the connections of the last second
    /// (after a burst of new connections, parsers given back at `park` lay freed between the
    /// connections' objects, ~0.5 KiB each). When the list is full the connection keeps its parser
    /// until it parks: a parser is never freed and made again per request.
    /// The callers know the parser is between messages with nothing stashed and not inside `feed`.
    @inline(__always) func lendParserBack() {
        assert(parserIdle, "a parser lent back must be between messages")
        if !active && !ending && worker.freeParsers.hasRoom { giveBackParser() }
    }

    /// Gives up what an idle connection does not need: the parser, the stash's spare storage and
    /// the write queue's storage. Only between requests, with nothing stashed or half parsed.
    func park() {
        guard parserIdle else { return }
        giveBackParser()
        work.release()
        conn.releaseIdleBuffers()
    }

    @inline(__always) func arm(_ kind: Deadline, _ ms: Millis) {
        deadlineKind = kind
        if ms == 0 { conn.clearDeadline() } else { conn.setDeadline(after: ms) }
    }

    var stats: StatBlock<ListenerStat> { listener.stats }

    // MARK: protocol detection

    /// Looks at the first bytes: the HTTP/2 connection preface hands the connection over to an
    /// HTTP/2 session. Returns true when `data` was consumed here.
    func detect(_ data: UnsafeRawBufferPointer) -> Bool {
        let p = HTTPSession.preface
        let want = p.utf8CodeUnitCount
        var i = 0
        while i < data.count && sniffed + i < want {
            if data[i] != p.utf8Start[sniffed + i] { sniffed = want; break }   // not HTTP/2
            i += 1
        }
        if sniffed >= want {   // HTTP/1: replay what was held back, then this read
            sniff.release()
            return false
        }
        sniffed += i
        sniff.append(UnsafeRawBufferPointer(rebasing: data[0..<i]))
        if sniffed < want { return true }   // a partial preface: wait for more
        // HTTP/2: hand over the connection with the preface and whatever followed it.
        sniff.append(UnsafeRawBufferPointer(rebasing: data[i...]))
        let h2 = H2ServerConnection(worker: worker, slot: listenerSlot, conn: conn, clientIP: clientIP, initial: sniff.bytes)
        sniff.release()
        worker.replace(self, with: h2)
        ending = true
        return true
    }

    // MARK: downstream input

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        stats.add(.downstream_cx_rx_bytes_total, UInt64(data.count))
        if ending { return }
        if sniffed < HTTPSession.preface.utf8CodeUnitCount {
            let held = sniff.count
            if detect(data) { return }
            if held > 0 {   // the bytes held back while deciding come first
                var h = sniff
                sniff = ByteBuffer()
                feedOrStash(h.bytes)
                h.release()
                if ending { return }
            }
        }
        feedOrStash(data)
    }

    func feedOrStash(_ data: UnsafeRawBufferPointer) {
        if parserPaused || inFeed {
            stash.append(data)
            updateReading()
            return
        }
        if parserRef == nil { takeParser() }
        if !active && !withParser({ $0.inHead }) { arm(.header, listener.config.requestHeaderTimeout) }
        feed(data)
    }

    /// Runs the parser over `data`, then over stashed pipelined bytes while exchanges finish
    /// synchronously (never re-entering the parser from one of its callbacks).
    func feed(_ data: UnsafeRawBufferPointer) {
        var input = data
        while true {
            inFeed = true
            let r = withParser { $0.feed(input) }
            inFeed = false
            exchange?.downstreamReadDone()
            if ending { return }
            switch r {
            case .ok: break
            case .paused(let consumed):
                parserPaused = true
                if consumed < input.count { stash.append(UnsafeRawBufferPointer(rebasing: input[consumed...])) }
                if connectTo >= 0 { startConnectTunnel(); return }
            case .error:
                parseError()
                return
            }
            work.clear(keepingAtMost: 0)
            guard resumePending else { updateReading(); return }
            resumePending = false
            parserPaused = false
            withParser { $0.resume() }
            if stash.isEmpty { updateReading(); lendParserBack(); return }
            swap(&stash, &work)
            input = work.bytes
            arm(.header, listener.config.requestHeaderTimeout)
        }
    }

    /// After an exchange: lets the parser go on with the next (pipelined) request — once the client
    /// has read what is queued for it, so a client that pipelines without reading gets no more.
    /// Stashed requests are parsed at the end of the loop iteration (`flush`), never from inside
    /// the call chain that finished the previous exchange.
    func resumeInput() {
        if conn.isAboveHighWatermark { resumeWhenDrained = true; return }
        if inFeed { resumePending = true; return }
        guard parserPaused else { updateReading(); return }
        if stash.isEmpty {
            parserPaused = false
            withParser { $0.resume() }
            updateReading()
            lendParserBack()
            return
        }
        if !flushScheduled { flushScheduled = true; worker.scheduleFlush(self) }
    }

    /// Parses stashed pipelined requests (from the worker's end-of-iteration hook).
    func flush() {
        flushScheduled = false
        guard !ending, parserPaused, !active else { return }
        parserPaused = false
        withParser { $0.resume() }
        swap(&stash, &work)
        arm(.header, listener.config.requestHeaderTimeout)
        feed(work.bytes)
    }

    func updateReading() {
        if ending { return }
        if pausedForUpstream || stash.count > HTTPSession.stashLimit { conn.stopReading() } else { conn.startReading() }
    }

    func connectionEOF(_ c: TCPConnection) {
        if active && !requestDone {
            abort()
        } else if active {
            keepAlive = false     // half-closed after a complete request: answer, then close
            clientCloses = true
        } else {
            stats.inc(.downstream_cx_destroy_remote)
            c.close()
        }
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) { abort() }

    func connectionDrained(_ c: TCPConnection) {
        if resumeWhenDrained {
            resumeWhenDrained = false
            resumeInput()
        }
        exchange?.downstreamDrained()
    }

    func connectionTimeout(_ c: TCPConnection) {
        switch deadlineKind {
        case .header:
            if active { return }   // the exchange keeps its own deadlines
            stats.inc(.downstream_rq_timeout)
            localResponse(408, "request header timeout\n", flags: .DT)
        case .park:
            park()
            let idle = listener.config.idleTimeout
            if idle == 0 { conn.clearDeadline(); return }
            let rest = idle - min(idle, HTTPSession.parkAfter)
            if rest > 0 { arm(.idle, rest); return }
            stats.inc(.downstream_cx_idle_timeout)
            c.close()
        case .idle:
            stats.inc(.downstream_cx_idle_timeout)
            c.close()
        }
    }

    func connectionClosed(_ c: TCPConnection) {
        ending = true
        if let e = exchange { exchange = nil; e.downstreamAborted() }
        stats.dec(.downstream_cx_active)
        parserRef?._withUnsafeGuaranteedRef { $0.delegate = nil }
        stash.release(); work.release(); sniff.release()
        worker.remove(self)
    }

    // MARK: requests

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        active = true
        requestDone = false
        isHEAD = p.isHEAD
        isHTTP10 = p.versionMajor == 1 && p.versionMinor == 0
        keepAlive = p.shouldKeepAlive && !draining && !worker.draining
        clientCloses = !p.shouldKeepAlive
        conn.clearDeadline()   // the exchange keeps the request's deadlines
        if p.droppedUnderscoreHeaders > 0 { stats.add(.dropped_headers_with_underscores, UInt64(p.droppedUnderscoreHeaders)) }
        p.underscoreAction = listener.config.headersWithUnderscores   // for the next request
        if p.isCONNECT { connectRequest(p); return false }
        if overloadLevel >= 1 {
            stats.inc(.downstream_rq_overload_refused)
            localResponse(503, "overloaded\n", flags: .OM, head: p)
            return false
        }
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1. §6.1: a transfer coding other than chunked
        // cannot be forwarded faithfully once the body is re-framed: refuse it.
        if p.hostCount > 1 || (p.hostCount == 0 && !isHTTP10) {
            localResponse(400, "exactly one Host header is required\n", head: p)
            return false
        }
        // RFC 9112 §6.1: HTTP/1.0 has no chunked coding; a sender using it is not to be trusted with framing.
        if p.transferEncodingIndex >= 0 && isHTTP10 {
            localResponse(400, "Transfer-Encoding is not allowed in HTTP/1.0\n", head: p)
            return false
        }
        // RFC 9112 §3.2: origin form, absolute form (http or https, split below) or `*` for OPTIONS.
        // Anything else ("ftp://x/admin", "http://x?q") would reach the upstream as a target the
        // routes never saw as a path.
        if !RequestTarget.isForwardable(p.startLine, isOPTIONS: p.isOPTIONS) {
            localResponse(400, "invalid request target\n", head: p)
            return false
        }
        if p.transferEncodingIndex >= 0 && !p.value(p.transferEncodingIndex).equalsLowercase("chunked") {
            localResponse(501, "only the chunked transfer coding is supported\n", head: p)
            return false
        }
        var expectContinue = false
        if p.expectIndex >= 0 {
            guard p.value(p.expectIndex).equalsLowercase("100-continue") else {
                localResponse(417, "unsupported expectation\n", head: p)
                return false
            }
            expectContinue = !isHTTP10
        }
        smallBody = !p.hasBody || (p.hasContentLength && p.contentLength <= 64 * 1024)
        // `Connection: upgrade` + `Upgrade` (WebSocket; h2c is ignored): the router decides (Exchange+Upgrade).
        let upgrade = p.wantsUpgrade ? p.withHeaderRefs { UpgradeRequest.classify($0) } : .none
        let e = worker.takeExchange()
        exchange = e
        p.withRequestView { view in
            var v = view
            // Absolute form (RFC 9112 §3.2.2): the target's authority replaces Host; forward origin form.
            let absolute = RequestTarget.splitAbsolute(view.target)
            if let (authority, path) = absolute { v.authority = authority; v.target = path }
            e.start(downstream: self, listener: listener,
                    RequestStart(view: v, isHEAD: isHEAD, lengthKnown: p.hasContentLength,
                                 contentLength: p.contentLength, chunked: p.isChunked, endStream: !p.hasBody,
                                 fromHTTP2: false, authorityReplacesHost: absolute != nil, dropExpect: expectContinue,
                                 clientCert: conn.forwardedClientCert, upgrade: upgrade, plaintext: conn.transportSocket == nil,
                                 http10: isHTTP10),
                    clientIP: clientIP)
        }
        // The proxy answers `Expect: 100-continue` itself once the request is on its way.
        if expectContinue && p.hasBody && exchange != nil && !(exchange!.responseStarted) {
            conn.write(rawBytes("HTTP/1.1 100 Continue\r\n\r\n"))
        }
        return false
    }

    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {
        exchange?.requestBody(data)
    }

    func parserMessageComplete(_ p: HTTP1Parser) {
        requestDone = true
        if let e = exchange {
            if e.requestHasBody {
                if p.trailers.count > 0 { p.trailers.withRefs { e.requestEnd(trailers: $0) } } else { e.requestEnd(trailers: nil) }
            }
            p.clearTrailers()
        } else if active && connectTo < 0 {
            finishExchange()   // answered locally before the body ended
        }
    }

    func parseError() {
        stats.inc(.downstream_cx_protocol_error)
        let error = withParser { $0.error }
        let status = error?.status ?? 400
        if status == 431 { stats.inc(.downstream_rq_too_large) }
        if error?.reason == HTTP1Parser.underscoreRefusal { stats.inc(.requests_rejected_with_underscores_in_headers) }
        if let e = exchange {
            if e.responseStarted { abort(); return }
            exchange = nil
            e.downstreamAborted()
        }
        keepAlive = false
        localResponse(status == 431 ? 431 : 400, status == 431 ? "request header fields too large\n" : "bad request\n")
    }

    /// An answer from the session itself (before or instead of an exchange); always closes after.
    /// Logged with `flags` when the listener has an access log (`head`: the parser holding the
    /// request's whole head, for its fields; nil when it was not parsed whole).
    func localResponse(_ status: Int, _ body: StaticString, flags: ResponseFlags = .DPE, head p: HTTP1Parser? = nil) {
        if !active { active = true }
        if let log = listener.accessLog {
            let proto: UInt8 = isHTTP10 ? 1 : 0
            if let p {
                p.withRequestView { log.logRefused(proto: proto, status: status, flags: flags, view: $0) }
            } else {
                log.logRefused(proto: proto, status: status, flags: flags, view: nil)
            }
        }
        keepAlive = false
        stats.inc(.downstream_rq_total)
        stats.incClass(.downstream_rq_1xx, status: status)
        worker.scratch.clear()
        HTTP1Head.writeLocalResponse(status: status, reason: reasonPhrase(status), body: rawBytes(body),
                                     keepAlive: false, headOnly: isHEAD, into: &worker.scratch)
        conn.write(worker.scratch.bytes)
        endConnection()
    }

    // MARK: DownstreamSide

    func respondHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                     lengthKnown: Bool, endStream: Bool) {
        if status == 101 { switchingProtocols(headers); return }
        if isHEAD || status == 204 || status == 304 || endStream {
            respFraming = .none
        } else if lengthKnown {
            respFraming = .contentLength
        } else {
            respFraming = isHTTP10 ? .closeDelimited : .chunked
        }
        if respFraming == .closeDelimited { keepAlive = false }
        if draining || worker.draining { keepAlive = false }
        // Answered before the request's body arrived: keep the connection only when the rest is
        // small enough to read and drop; otherwise say it closes.
        if let e = exchange, !e.requestDone, !smallBody { keepAlive = false }
        // A bodyless end without a length would leave an HTTP/1.1 client waiting: say 0.
        let addZeroLength = endStream && !lengthKnown && !isHEAD && status != 204 && status != 304
        worker.scratch.clear()
        HTTP1Head.writeResponse(status: status, reason: reason, headers: headers, framing: respFraming,
                                keepAlive: keepAlive, extraLine: addZeroLength ? "content-length: 0\r\n" : nil,
                                into: &worker.scratch)
        conn.cork()   // the head goes out with the body bytes of the same read: one syscall
        writeDownstream(worker.scratch.bytes)
    }

    func respondBody(_ data: UnsafeRawBufferPointer) {
        switch respFraming {
        case .chunked:
            worker.scratch.clear()
            HTTP1Head.writeChunkHeader(data.count, into: &worker.scratch)
            stats.add(.downstream_cx_tx_bytes_total, UInt64(data.count))
            if !conn.write(worker.scratch.bytes, data, rawBytes("\r\n")) { abort() }
        case .none:
            break
        default:
            writeDownstream(data)
        }
    }

    func respondEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {
        if respFraming == .chunked {
            worker.scratch.clear()
            HTTP1Head.writeLastChunk(trailers: trailers, into: &worker.scratch)
            writeDownstream(worker.scratch.bytes)
        }
        conn.uncork()
    }

    func respondReset(code: UInt32) { abort() }

    var responseBlocked: Bool { conn.isAboveHighWatermark }
    func requestConsumed(_ n: Int) {}
    func pauseRequest() { pausedForUpstream = true; updateReading() }
    func resumeRequest() { pausedForUpstream = false; updateReading() }
    var isReading: Bool { inFeed }
    func flushResponse() { conn.uncork() }

    func exchangeDone(_ e: Exchange) {
        worker.recycle(e)
        guard exchange === e else { return }   // the session had already let it go
        if tunneled { exchange = nil; return }   // the connection is the tunnel's now
        exchange = nil
        pausedForUpstream = false
        if !e.responseDone { abort(); return }    // the response could not be completed
        if !e.requestDone && !smallBody { keepAlive = false }   // the rest of the body is not read: close after
        updateReading()
        if requestDone { finishExchange() } else if !keepAlive { endConnection() }
        // else: a request without body whose end is about to be parsed finishes the exchange.
    }

    @inline(__always) func writeDownstream(_ b: UnsafeRawBufferPointer) {
        stats.add(.downstream_cx_tx_bytes_total, UInt64(b.count))
        if !conn.write(b) { abort() }
    }

    func finishExchange() {
        guard active else { return }
        active = false
        conn.uncork()
        if !keepAlive || draining || worker.draining { endConnection(); return }
        let idle = listener.config.idleTimeout
        arm(.park, idle == 0 ? HTTPSession.parkAfter : min(idle, HTTPSession.parkAfter))
        resumeInput()
    }

    /// Flushes, sends FIN, discards what the client still sends for a moment, then closes. When the
    /// client itself ends the connection (Connection: close, HTTP/1.0, or its FIN) and everything it
    /// sent was read, there is nothing to discard: close as soon as the response is flushed (saves a
    /// shutdown, a read and the linger timer per connection).
    func endConnection() {
        if ending { return }
        ending = true
        active = false
        if clientCloses && requestDone && stash.isEmpty && !inHead { conn.closeWhenFlushed() } else { conn.finish(linger: 1_000) }
    }

    // MARK: upgrades (Exchange+Upgrade.swift)

    /// The upstream's 101, with `connection: upgrade` and its `upgrade` protocol.
    func switchingProtocols(_ headers: UnsafeBufferPointer<HeaderRef>) {
        respFraming = .none
        worker.scratch.clear()
        HTTP1Head.writeSwitchingProtocols(headers: headers, fallback: "websocket", into: &worker.scratch)
        writeDownstream(worker.scratch.bytes)
    }

    /// Hands the connection and `up` to a tunnel (the TCP proxy's pump) that takes this session's
    /// place in the worker; what the client sent after its upgrade request (stashed while the
    /// parser waited) goes up first, `leftover` down.
    func startTunnel(cluster: Cluster, upstream up: TCPConnection, leftover: UnsafeRawBufferPointer) -> Bool {
        guard !ending else { return false }
        ending = true
        tunneled = true
        conn.uncork()
        let t = TCPProxySession(tunnel: worker, listener: listener, cluster: cluster, down: conn, up: up)
        handOver(to: t)
        if leftover.count > 0 { t.forward(from: up, leftover) }
        return true
    }

    /// The tunnel `t` (made after `ending` and `tunneled` were set) takes this session's place in the
    /// worker and its connection: what the client sent after its request (stashed while the parser
    /// waited) goes up first; the session's buffers and parser (paused after the request: back to a
    /// clean state) are given back.
    func handOver(to t: TCPProxySession) {
        t.slot = slot
        worker.replace(self, with: t)
        if !stash.isEmpty { t.forward(from: conn, stash.bytes) }
        stash.release(); work.release(); sniff.release()
        if let p = parserRef {
            parserRef = nil
            p._withUnsafeGuaranteedRef { $0.detach(); $0.reset() }
            worker.freeParsers.give(p)
        }
    }

    /// `CONNECT host:port` (issue 18): allowed when the listener has `connect:` and the target is
    /// one of its cluster's endpoints; the tunnel starts once the parser has returned
    /// (`startConnectTunnel`). Otherwise 405 (no `connect:`) or 403 (another destination).
    func connectRequest(_ p: HTTP1Parser) {
        let l = listener
        guard l.connectCluster != nil else { localResponse(405, "CONNECT is not supported\n", head: p); return }
        if p.hasBody { localResponse(400, "a CONNECT request cannot have a body\n", head: p); return }
        guard let i = l.connectTargets[String(decoding: p.startLine, as: UTF8.self).lowercased()] else {
            stats.inc(.downstream_rq_upgrade_refused)
            localResponse(403, "CONNECT to this destination is not allowed\n", flags: [], head: p)
            return
        }
        if l.authorization != nil {
            let allowed = p.withRequestView { view in
                var v = view
                v.authority = view.target   // authority form: the target is host:port
                return l.admitConnect(v, conn, source: l.authorization!.needsSource ? sourceAddress : nil)
            }
            if !allowed { localResponse(403, "RBAC: access denied\n", flags: .UAEX, head: p); return }
        }
        stats.inc(.downstream_rq_total)
        connectTo = i
    }

    /// Hands the connection to a tunnel toward the CONNECT's endpoint, which answers 200 once
    /// connected (503 if the connect fails); bytes the client sent after its request go up first.
    func startConnectTunnel() {
        guard let cl = listener.connectCluster else { return }
        let endpoint = connectTo
        connectTo = -1
        ending = true
        tunneled = true
        handOver(to: TCPProxySession(connect: worker, listener: listener, cluster: cl, endpoint: endpoint, down: conn))
    }

    // MARK: Session

    override var downstreamConnection: TCPConnection? { conn }

    override func drain() {
        draining = true
        if !active && !inHead { conn.close() }
    }

    override func abort() {
        ending = true
        if let e = exchange { exchange = nil; e.downstreamAborted() }
        conn.close()
    }
}
