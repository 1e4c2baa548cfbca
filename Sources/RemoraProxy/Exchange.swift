import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraRouting

/// Where a response goes: an HTTP/1.1 connection or an HTTP/2 stream. Calls come from the exchange.
protocol DownstreamSide: AnyObject {
    /// The response head. `endStream`: nothing follows. `lengthKnown`: headers carry Content-Length.
    func respondHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                     lengthKnown: Bool, endStream: Bool)
    func respondBody(_ data: UnsafeRawBufferPointer)
    /// The response is complete, with trailer fields when given.
    func respondEnd(trailers: UnsafeBufferPointer<HeaderRef>?)
    /// The response cannot be completed: the client must see an error, never a clean end.
    func respondReset(code: UInt32)
    /// More response bytes are queued toward the client than its high watermark.
    var responseBlocked: Bool { get }
    /// `n` request body bytes were passed on: give the client credit (HTTP/2 WINDOW_UPDATE).
    func requestConsumed(_ n: Int)
    /// Stop / resume taking request body bytes from the client.
    func pauseRequest()
    func resumeRequest()
    /// The exchange is over; the downstream forgets it (and may reuse its connection).
    func exchangeDone(_ e: Exchange)
    /// The downstream is inside its read (writes toward the upstream may be collected).
    var isReading: Bool { get }
    /// Sends what was collected toward the client.
    func flushResponse()
    /// The memory budget the response shares with other streams of its connection (HTTP/2), or nil.
    var responseBudget: ResponseBudget? { get }
}

extension DownstreamSide {
    var responseBudget: ResponseBudget? { nil }
}

/// Where a request goes: an HTTP/1.1 upstream connection or an HTTP/2 upstream stream.
protocol UpstreamStream: AnyObject {
    func sendBody(_ data: UnsafeRawBufferPointer)
    func sendEnd(trailers: UnsafeBufferPointer<HeaderRef>?)
    /// Too many request bytes are queued toward the upstream.
    var requestBlocked: Bool { get }
    /// Stop / resume taking response bytes from the upstream.
    func pauseResponse()
    func resumeResponse()
    /// `n` response body bytes were passed on (HTTP/2 credit).
    func responseConsumed(_ n: Int)
    /// It had carried an exchange before (a failure may be the keep-alive close race).
    var wasReused: Bool { get }
    /// Some response byte arrived.
    var gotResponseBytes: Bool { get }
    /// The exchange is over: `clean` when request and response completed (a connection may be
    /// pooled); otherwise the upstream is told the request is cancelled.
    func detach(clean: Bool)
    /// Sends what was collected toward the upstream.
    func flushRequest()
}

/// Why an upstream request failed.
enum UpstreamFailure {
    case connectFailed
    /// The upstream never processed the request (HTTP/2 REFUSED_STREAM or above GOAWAY's last id).
    case refused
    /// Connection closed or stream reset; `code` is the HTTP/2 error code (0 for HTTP/1.1).
    case reset(code: UInt32)
    case protocolError
}

/// One request/response exchange, whatever the protocols on either side (Envoy's router filter):
/// routes the request, picks a cluster and an upstream, forwards body bytes both ways with flow
/// control, retries what is safe to retry, enforces the route timeout and gRPC deadlines, and
/// answers by itself (in gRPC form for gRPC requests) when the upstream cannot.
/// Pooled per worker: nothing here is allocated per request once the pool is warm.
final class Exchange: DeadlineTimerDelegate {
    enum Deadline { case upstreamHead, stream }

    unowned(unsafe) let worker: Worker
    /// The worker's buffers (a strong `let`: reached without a retain).
    let pool: BufferPool
    let timer: DeadlineTimer
    unowned(unsafe) var downstream: (any DownstreamSide)?
    /// The listener's runtime of the snapshot this request started on (held while it runs).
    var listener: ListenerRuntime!
    unowned(unsafe) var cluster: ClusterRuntime? { didSet { clusterStats = cluster?.stats } }
    /// The cluster's counters (a plain value: counting costs no retain of the cluster).
    var clusterStats: StatBlock<ClusterStat>?
    /// The listener's stream idle timeout, ms (copied at start).
    var streamIdleTimeout: Millis = 0
    var upstream: (any UpstreamStream)?
    var deadlineKind = Deadline.stream

    var active = false
    var isHEAD = false
    var isGRPC = false
    var requestHasBody = false
    var requestDone = false
    var responseStarted = false
    var responseDone = false
    var clusterActive = false
    /// Time allowed for the upstream's response head, ms; 0 = none.
    var routeTimeout: Millis = 0
    /// Absolute loop time by which a gRPC call must be over (from grpc-timeout); 0 = none.
    var grpcDeadline: UInt64 = 0
    /// Absolute loop time by which the request body must be complete (the request timeout); 0 = none.
    var requestDeadline: UInt64 = 0
    /// Largest request body accepted, bytes; 0 = no limit (gRPC requests have none).
    var maxRequestBody: UInt64 = 0
    /// Request body bytes received so far.
    var requestBodyBytes: UInt64 = 0
    /// Framing of the body toward an HTTP/1.1 upstream.
    var reqFraming = BodyFraming.none
    /// The request head as sent to an HTTP/1.1 upstream (kept for a retry).
    var upHead = ByteBuffer()
    /// The request head for an HTTP/2 upstream: :method, :authority, :path, then regular fields.
    var reqHead = HeaderBlock()
    /// Request body bytes sent so far, while they fit (for a retry).
    var replay = ByteBuffer()
    var replayable = true
    var reuseRetries = 0
    var connectRetries = 0
    var refusedRetries = 0
    /// Header changes the matched route makes to the response (empty when none).
    var responseMutations = HeaderMutations()
    /// The response head being delivered has lowercase names and no hop-by-hop field (from HTTP/2,
    /// whose codec refuses both, or from the proxy, with no route changes): an HTTP/2 client side
    /// can pass it on as it is.
    var responseNamesLowercase = false
    /// The chosen cluster speaks HTTP/2 (copied at start).
    var upstreamIsHTTP2 = false
    /// Counters of the chosen backend of the route (the real split).
    var backendStats: StatBlock<RouteBackendStat>?
    /// Request bytes passed on while the upstream was blocked: credit owed to the client.
    var owedCredit = 0
    var requestPaused = false
    var responsePaused = false
    /// Response bytes passed on while the client was blocked: credit owed to the upstream.
    var owedUpstreamCredit = 0
    static let replayLimit = 64 * 1024

    init(worker: Worker) {
        self.worker = worker
        pool = worker.pool
        timer = DeadlineTimer(loop: worker.loop)
        timer.delegate = self
    }

    /// The listener's stats (a shadow request counts in the worker's unlisted shadow block).
    var stats: StatBlock<ListenerStat>!
    /// A mirrored copy of this request (fire and forget), while it runs.
    var shadow: Exchange?
    /// For a shadow: the request it copies, while that one runs.
    unowned(unsafe) var primary: Exchange?
    var inDownstreamRead: Bool { downstream?.isReading ?? false }

    /// The downstream finished one read: what it wrote toward the upstream may leave now.
    func downstreamReadDone() { upstream?.flushRequest() }

    /// The upstream finished one read: what it wrote toward the client may leave now.
    func upstreamReadDone() { downstream?.flushResponse() }

    // MARK: request side (from the downstream)

    /// A request head arrived. `view` is valid only during this call. `lengthKnown`: Content-Length
    /// is among the headers; `chunked`: an HTTP/1.1 chunked body; `endStream`: no body follows.
    func start(downstream d: any DownstreamSide, listener l: ListenerRuntime, view: RequestView, clientIP: String,
               isHEAD: Bool, lengthKnown: Bool, contentLength: UInt64, chunked: Bool, endStream: Bool,
               fromHTTP2: Bool, authorityReplacesHost: Bool = false, dropExpect: Bool) {
        downstream = d
        listener = l
        stats = l.stats
        streamIdleTimeout = l.config.idleTimeout
        active = true
        self.isHEAD = isHEAD
        requestDone = endStream
        requestHasBody = !endStream
        responseStarted = false
        responseDone = false
        replayable = true
        owedCredit = 0
        owedUpstreamCredit = 0
        requestPaused = false
        responsePaused = false
        grpcDeadline = 0
        requestDeadline = 0
        requestBodyBytes = 0
        stats.inc(.downstream_rq_total)
        stats.inc(.downstream_rq_active)
        let h = view.headers
        isGRPC = h.firstIndex(named: "content-type").map { GRPC.isGRPC(contentType: h[$0].value) } ?? false

        guard let ri = l.routes.match(view) else {
            stats.inc(.downstream_rq_no_route)
            if isGRPC { grpcLocal(.unimplemented, "no route for \(view.target.string)") } else { local(404, "no route\n") }
            return
        }
        let table = l.routes
        let route = table[ri]
        responseMutations = table.responseHeaders(route: ri)
        switch route.action {
        case .respond:
            local(route.status, body: table.body(route: ri), location: nil)
            return
        case .redirect:
            var location = pool.take()
            table.writeLocation(route: ri, request: view, scheme: rawBytes("http"), into: &location)
            local(route.status, body: UnsafeRawBufferPointer(start: nil, count: 0), location: location.bytes)
            pool.give(&location)
            return
        case .forward:
            break
        }
        // Slow or oversized bodies (gRPC is bounded by its deadline and its server's message limits).
        maxRequestBody = isGRPC ? 0 : l.config.maxRequestBodyBytes
        if maxRequestBody != 0 && lengthKnown && contentLength > maxRequestBody {
            stats.inc(.downstream_rq_body_too_large)
            local(413, "request body larger than \(maxRequestBody) bytes\n")
            return
        }
        let requestTimeout = route.requestTimeout == .max ? l.config.requestTimeout : route.requestTimeout
        if !isGRPC && !endStream && requestTimeout > 0 { requestDeadline = timer.now &+ requestTimeout }
        let backend = table.pick(route: ri, request: view, random: worker.rng.next())
        let mirrorCluster = table.mirror(route: ri, random: worker.rng.next())
        let cl = l.clusters[backend.cluster]
        cluster = cl
        upstreamIsHTTP2 = cl.config.protocol != .http1
        backendStats = l.backendStats[backend.slot]
        backendStats?.inc(.upstream_rq_total)
        routeTimeout = route.timeout
        if isGRPC, let i = h.firstIndex(named: "grpc-timeout"), let ms = GRPC.timeout(h[i].value) {
            grpcDeadline = timer.now &+ ms
        }
        reqFraming = chunked ? .chunked : (lengthKnown ? .contentLength : (endStream ? .none : .chunked))
        // The request as the upstream gets it: rewritten target, the route's header changes.
        var rewritten = ByteBuffer()
        var target = view.target
        if table.rewriteTarget(route: ri, target: view.target, into: &rewritten) { target = rewritten.bytes }
        var ipText = clientIP
        ipText.withUTF8 { ip in
            let ipb = UnsafeRawBufferPointer(ip)
            let mutations = table.requestHeaders(route: ri)
            withMutated(view.headers, mutations) { headers in
                var v = RequestView(method: view.method, target: target, authority: view.authority, headers: headers)
                let addHost = fromHTTP2 || authorityReplacesHost
                // A route that sets Host sets the authority, whatever protocol either side speaks.
                if !mutations.isEmpty && addHost, let i = headers.firstIndex(named: "host") { v.authority = headers[i].value }
                if cl.config.protocol == .http1 {
                    if upHead.base == nil { upHead = pool.take() }
                    upHead.clear()
                    HTTP1Head.writeRequest(v, framing: reqFraming, addHost: addHost, clientIP: ipb, proto: "http",
                                           dropExpect: dropExpect, into: &upHead)
                } else {
                    storeHTTP2Head(v, clientIP: ipb, dropExpect: dropExpect, fromHTTP2: fromHTTP2)
                }
                // The shadow gets the request as routed (rewritten, with the route's header changes).
                if let mc = mirrorCluster {
                    startShadow(cluster: l.clusters[mc], view: v, clientIP: clientIP, isHEAD: isHEAD, lengthKnown: lengthKnown,
                                contentLength: contentLength, chunked: chunked, endStream: endStream, addHost: addHost,
                                fromHTTP2: fromHTTP2)
                }
            }
        }
        rewritten.release()
        reuseRetries = 1
        connectRetries = cl.endpoints.count > 1 ? 1 : 0
        refusedRetries = 4   // the peer never processed a refused stream: always safe to send again
        cl.stats.inc(.upstream_rq_total)
        cl.stats.inc(.upstream_rq_active)
        clusterActive = true
        // A body that may outgrow the replay buffer goes on a fresh HTTP/1.1 connection: a pooled
        // one could be closed under it (the keep-alive race) with nothing left to retry from.
        dispatch(fresh: chunked || (lengthKnown && contentLength > UInt64(Exchange.replayLimit)))
        if active && !responseStarted { armAfterRequestProgress() }
    }

    /// Sends a copy of this request to `cluster` (route mirroring). Its response is discarded; it
    /// gets body bytes only while its upstream keeps up, and is dropped the moment it would have
    /// to wait, so it never slows this request.
    func startShadow(cluster cl: ClusterRuntime, view: RequestView, clientIP: String, isHEAD: Bool, lengthKnown: Bool,
                     contentLength: UInt64, chunked: Bool, endStream: Bool, addHost: Bool, fromHTTP2: Bool) {
        let sh = worker.takeExchange()
        sh.primary = self
        shadow = sh
        sh.downstream = worker.discard
        worker.discard.running.append(sh)
        sh.listener = listener
        sh.streamIdleTimeout = streamIdleTimeout
        sh.stats = worker.shadowStats
        sh.active = true
        sh.isHEAD = isHEAD
        sh.requestDone = endStream
        sh.requestHasBody = !endStream
        sh.responseStarted = false
        sh.responseDone = false
        sh.replayable = false
        sh.isGRPC = false
        sh.grpcDeadline = 0
        sh.owedCredit = 0
        sh.owedUpstreamCredit = 0
        sh.requestPaused = false
        sh.responsePaused = false
        sh.cluster = cl
        sh.routeTimeout = listener.config.idleTimeout   // a shadow that never answers is let go
        sh.reqFraming = chunked ? .chunked : (lengthKnown ? .contentLength : (endStream ? .none : .chunked))
        var clientIP = clientIP
        clientIP.withUTF8 { ip in
            if cl.config.protocol == .http1 {
                if sh.upHead.base == nil { sh.upHead = pool.take() }
                sh.upHead.clear()
                HTTP1Head.writeRequest(view, framing: sh.reqFraming, addHost: addHost, clientIP: UnsafeRawBufferPointer(ip),
                                       proto: "http", dropExpect: true, into: &sh.upHead)
            } else {
                sh.storeHTTP2Head(view, clientIP: UnsafeRawBufferPointer(ip), dropExpect: true, fromHTTP2: fromHTTP2)
            }
        }
        sh.reuseRetries = 0
        sh.connectRetries = 0
        sh.refusedRetries = 0
        cl.stats.inc(.upstream_rq_total)
        cl.stats.inc(.upstream_rq_active)
        sh.clusterActive = true
        sh.dispatch(fresh: chunked || (lengthKnown && contentLength > UInt64(Exchange.replayLimit)))
        sh.arm(.stream)
    }

    /// The shadow copy gets these body bytes only if its upstream can take them now.
    func feedShadow(_ data: UnsafeRawBufferPointer) {
        guard let sh = shadow else { return }
        if let u = sh.upstream, !u.requestBlocked, sh.active, !sh.responseDone {
            u.sendBody(data)
        } else {
            shadow = nil
            sh.primary = nil
            sh.finish(clean: false)
        }
    }

    /// Copies what an HTTP/2 upstream needs (a retry may submit it again).
    func storeHTTP2Head(_ v: RequestView, clientIP: UnsafeRawBufferPointer, dropExpect: Bool, fromHTTP2: Bool) {
        reqHead.prepare(pool)
        reqHead.append(rawBytes(":method"), v.method)
        reqHead.append(rawBytes(":authority"), v.authority)
        reqHead.append(rawBytes(":path"), v.target)
        let h = v.headers
        let hop = HopFilter(h, keepTETrailers: true)
        for i in h.indices {
            let n = h[i].name
            if hop.isHopByHop(h, i) { continue }
            if n.count == 4 && n.equalsLowercase("host") { continue }
            if n.count == 6 && dropExpect && n.equalsLowercase("expect") { continue }
            if n.count == 17 && n.equalsLowercase("x-forwarded-proto") { continue }
            if n.count == 15 && n.equalsLowercase("x-forwarded-for") { continue }
            if fromHTTP2 { reqHead.append(n, h[i].value) } else { reqHead.append(lowercasingName: n, h[i].value) }
        }
        let xff = reqHead.beginField(rawBytes("x-forwarded-for"))
        for f in h where f.name.count == 15 && f.name.equalsLowercase("x-forwarded-for") {
            reqHead.appendToValue(f.value)
            reqHead.appendToValue(rawBytes(", "))
        }
        reqHead.appendToValue(clientIP)
        reqHead.endField(nameOffset: xff, nameLength: 15)
        reqHead.append(rawBytes("x-forwarded-proto"), rawBytes("http"))
    }

    /// Sends the request on an upstream: an idle pooled HTTP/1.1 connection unless `fresh`, an
    /// HTTP/2 connection with a free stream, or a new connection.
    func dispatch(fresh: Bool) {
        guard let cl = cluster else { return }
        let u: (any UpstreamStream)? = cl.config.protocol == .http1
            ? cl.openHTTP1(for: self, head: upHead.bytes, isHEAD: isHEAD, fresh: fresh)
            : cl.openHTTP2(for: self, head: reqHead, hasBody: requestHasBody, retry: fresh)
        guard let u else { noUpstream(.connectFailed); return }
        upstream = u
        cl.stats.add(.upstream_cx_tx_bytes_total, UInt64(upHead.count))
        if !replay.isEmpty { u.sendBody(replay.bytes) }
        if requestDone && requestHasBody { u.sendEnd(trailers: nil) }
    }

    func requestBody(_ data: UnsafeRawBufferPointer) {
        requestBodyBytes &+= UInt64(data.count)
        if maxRequestBody != 0 && requestBodyBytes > maxRequestBody && active && !responseDone {
            stats.inc(.downstream_rq_body_too_large)
            downstream?.requestConsumed(data.count)
            if responseStarted { downstream?.respondReset(code: 0x8); finish(clean: false) } else {
                local(413, "request body larger than \(maxRequestBody) bytes\n")
            }
            return
        }
        guard active, !responseDone, let u = upstream else {
            downstream?.requestConsumed(data.count)
            return
        }
        if replayable {
            if replay.count + data.count <= Exchange.replayLimit {
                if replay.base == nil { replay = pool.take() }
                replay.append(data)
            } else {
                replayable = false
                pool.give(&replay)
            }
        }
        clusterStats?.add(.upstream_cx_tx_bytes_total, UInt64(data.count))
        if shadow != nil { feedShadow(data) }
        u.sendBody(data)
        if u.requestBlocked {
            owedCredit += data.count
            if !requestPaused { requestPaused = true; downstream?.pauseRequest() }
        } else {
            downstream?.requestConsumed(data.count)
        }
        armAfterRequestProgress()
    }

    func requestEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {
        requestDone = true
        requestDeadline = 0
        if let sh = shadow { sh.requestEnd(trailers: trailers) }
        guard active else { return }
        if let u = upstream, !responseDone, requestHasBody { u.sendEnd(trailers: trailers) }
        if responseDone { finish(clean: true) } else { armAfterRequestProgress() }
    }

    /// The client went away or reset the stream: cancel upstream, drop everything.
    func downstreamAborted() {
        if let sh = shadow, !sh.requestDone { shadow = nil; sh.primary = nil; sh.finish(clean: false) }
        guard active else { return }
        stats.inc(.downstream_rq_rx_reset)
        finish(clean: false)
    }

    /// The client's connection holds too much already: stop taking response bytes from the upstream
    /// (before the head arrives the upstream is left alone: the head is small and starts the clock).
    func downstreamBlocked() {
        guard active, responseStarted, !responsePaused, let u = upstream else { return }
        responsePaused = true
        u.pauseResponse()
    }

    /// The client can take more response bytes.
    func downstreamDrained() {
        guard active, responsePaused, let u = upstream else { return }
        responsePaused = false
        u.resumeResponse()
        if owedUpstreamCredit > 0 { u.responseConsumed(owedUpstreamCredit); owedUpstreamCredit = 0 }
    }

    // MARK: response side (from the upstream)

    func upstreamHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                      lengthKnown: Bool, endStream: Bool) {
        guard active, let d = downstream else { return }
        responseStarted = true
        stats.incClass(.downstream_rq_1xx, status: status)
        clusterStats?.incClass(.upstream_rq_1xx, status: status)
        backendStats?.incClass(.upstream_rq_1xx, status: status)
        responseNamesLowercase = responseMutations.isEmpty && upstreamIsHTTP2
        withMutated(headers, responseMutations) { h in
            d.respondHead(status: status, reason: reason, headers: h, lengthKnown: lengthKnown, endStream: endStream)
        }
        if endStream {   // trailers-only (a gRPC error): the response is complete
            responseDone = true
            finish(clean: requestDone)
            return
        }
        arm(.stream)
    }

    func upstreamBody(_ data: UnsafeRawBufferPointer) {
        guard active, let d = downstream, let u = upstream else { return }
        clusterStats?.add(.upstream_cx_rx_bytes_total, UInt64(data.count))
        d.respondBody(data)
        if d.responseBlocked {
            owedUpstreamCredit += data.count
            if !responsePaused { responsePaused = true; u.pauseResponse() }
        } else {
            u.responseConsumed(data.count)
        }
        arm(.stream)
    }

    func upstreamEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {
        guard active, let d = downstream else { return }
        responseDone = true
        d.respondEnd(trailers: trailers)
        finish(clean: requestDone)
    }

    func upstreamFailed(_ why: UpstreamFailure) {
        guard active, let cl = cluster, let u = upstream else { return }
        upstream = nil
        u.detach(clean: false)
        if responseStarted {
            // Never let a truncated response look complete.
            cl.stats.inc(.upstream_rq_reset_after_head)
            if case .reset(let code) = why, code != 0 { downstream?.respondReset(code: code) } else { downstream?.respondReset(code: 2) }
            finish(clean: false)
            return
        }
        if replayable {
            switch why {
            case .connectFailed where connectRetries > 0:
                connectRetries -= 1
            case .refused where refusedRetries > 0:
                refusedRetries -= 1
            case .reset, .protocolError:
                // The keep-alive close race: sent again only when the method is idempotent, since
                // the backend may have received and acted on the request before the connection died.
                guard u.wasReused && !u.gotResponseBytes && reuseRetries > 0 && methodIsIdempotent else { return noUpstream(why) }
                reuseRetries -= 1
            default:
                return noUpstream(why)
            }
            cl.stats.inc(.upstream_rq_retry)
            dispatch(fresh: true)
            return
        }
        noUpstream(why)
    }

    func upstreamDrained() {
        guard active, requestPaused else { return }
        requestPaused = false
        if owedCredit > 0 { downstream?.requestConsumed(owedCredit); owedCredit = 0 }
        downstream?.resumeRequest()
    }

    // MARK: answers from the proxy

    func noUpstream(_ why: UpstreamFailure) {
        let name = cluster?.config.name ?? "?"
        clusterStats?.inc(.upstream_rq_5xx)
        switch why {
        case .connectFailed, .refused:
            if isGRPC { grpcLocal(.unavailable, "no healthy upstream in cluster \(name)") } else {
                local(503, "no healthy upstream: connection to cluster \(name) failed\n")
            }
        case .reset(let code):
            if isGRPC { grpcLocal(GRPC.status(forResetCode: code), "upstream in cluster \(name) reset the request") } else {
                local(502, "upstream in cluster \(name) closed the connection before responding\n")
            }
        case .protocolError:
            if isGRPC { grpcLocal(.unavailable, "upstream in cluster \(name) sent an invalid response") } else {
                local(502, "upstream in cluster \(name) sent an invalid response\n")
            }
        }
    }

    /// A plain-text answer from the proxy.
    func local(_ status: Int, _ body: String) {
        var body = body
        body.withUTF8 { local(status, body: UnsafeRawBufferPointer($0), location: nil) }
    }

    /// An answer from the proxy: an error, a route's direct response, or a redirect (`location`).
    func local(_ status: Int, body: UnsafeRawBufferPointer, location: UnsafeRawBufferPointer?) {
        guard active, let d = downstream else { return }
        detachUpstream()
        responseStarted = true
        responseDone = true
        stats.incClass(.downstream_rq_1xx, status: status)
        backendStats?.incClass(.upstream_rq_1xx, status: status)   // a canary that cannot answer must not look healthy
        // 204 and 304 have no content (RFC 9110 §15.3.5, §15.4.5): no length, no body.
        let noContent = status == 204 || status == 304
        let body = noContent ? UnsafeRawBufferPointer(start: nil, count: 0) : body
        var len = ByteBuffer()
        len.appendDecimal(UInt64(body.count))
        var fields = noContent ? [] : [HeaderRef(name: rawBytes("content-type"), value: rawBytes("text/plain")),
                                       HeaderRef(name: rawBytes("content-length"), value: len.bytes)]
        if let location { fields.append(HeaderRef(name: rawBytes("location"), value: location)) }
        responseNamesLowercase = responseMutations.isEmpty
        fields.withUnsafeBufferPointer { f in
            withMutated(f, responseMutations) { h in
                d.respondHead(status: status, reason: UnsafeRawBufferPointer(start: nil, count: 0), headers: h,
                              lengthKnown: true, endStream: isHEAD || body.count == 0)
            }
        }
        len.release()
        if !isHEAD && body.count > 0 {
            d.respondBody(body)
            d.respondEnd(trailers: nil)
        }
        finish(clean: requestDone)
    }

    /// A gRPC answer from the proxy: HTTP 200, trailers-only, grpc-status and grpc-message.
    func grpcLocal(_ status: GRPC.Status, _ message: String) {
        guard active, let d = downstream else { return }
        detachUpstream()
        responseStarted = true
        responseDone = true
        stats.incClass(.downstream_rq_1xx, status: 200)
        if status != .ok { backendStats?.inc(.upstream_rq_5xx) }
        var code = ByteBuffer()
        code.appendDecimal(UInt64(status.rawValue))
        var msg = ByteBuffer()
        GRPC.appendEncodedMessage(message, into: &msg)
        let fields = [HeaderRef(name: rawBytes("content-type"), value: rawBytes("application/grpc")),
                      HeaderRef(name: rawBytes("grpc-status"), value: code.bytes),
                      HeaderRef(name: rawBytes("grpc-message"), value: msg.bytes)]
        responseNamesLowercase = true
        fields.withUnsafeBufferPointer { f in
            d.respondHead(status: 200, reason: UnsafeRawBufferPointer(start: nil, count: 0), headers: f,
                          lengthKnown: false, endStream: true)
        }
        code.release()
        msg.release()
        finish(clean: requestDone)
    }

    // MARK: deadlines

    /// Arms the deadline of `kind` (upstream head: the route timeout; stream: the listener's idle
    /// timeout, renewed on progress), capped by the gRPC deadline. Nothing once the exchange is over
    /// (a call into either side may have finished it).
    @inline(__always) func arm(_ kind: Deadline) {
        guard active else { return }
        deadlineKind = kind
        let ms = kind == .stream ? streamIdleTimeout : routeTimeout
        let now = timer.now
        var at = ms == 0 ? 0 : now &+ ms
        if grpcDeadline != 0 && (at == 0 || grpcDeadline < at) { at = grpcDeadline }
        if requestDeadline != 0 && (at == 0 || requestDeadline < at) { at = requestDeadline }
        if at == 0 { timer.clear(); return }
        timer.set(after: at > now ? at - now : 0)
    }

    /// While the request streams in: stream idle; once it is complete: the upstream head timeout.
    func armAfterRequestProgress() {
        if responseStarted { return }
        arm(requestDone ? .upstreamHead : .stream)
    }

    func deadlineReached(_ t: DeadlineTimer) {
        guard active else { return }
        if requestDeadline != 0 && !requestDone && timer.now >= requestDeadline {
            stats.inc(.downstream_rq_timeout)
            if responseStarted {
                downstream?.respondReset(code: 0x8)
                finish(clean: false)
            } else {
                local(408, "request timeout: the body did not arrive in time\n")
            }
            return
        }
        if grpcDeadline != 0 && timer.now >= grpcDeadline {
            stats.inc(.downstream_rq_timeout)
            clusterStats?.inc(.upstream_rq_timeout)
            if responseStarted {
                downstream?.respondReset(code: 0x8)   // CANCEL: the client's deadline passed
                finish(clean: false)
            } else {
                grpcLocal(.deadlineExceeded, "deadline exceeded")
            }
            return
        }
        switch deadlineKind {
        case .upstreamHead:
            clusterStats?.inc(.upstream_rq_timeout)
            stats.inc(.downstream_rq_timeout)
            if isGRPC { grpcLocal(.deadlineExceeded, "upstream request timeout") } else { local(504, "upstream request timeout\n") }
        case .stream:
            stats.inc(.downstream_rq_timeout)
            if !responseStarted && !requestDone {
                if isGRPC { grpcLocal(.deadlineExceeded, "request body timeout") } else { local(408, "request body timeout\n") }
            } else {
                downstream?.respondReset(code: 0x8)
                finish(clean: false)
            }
        }
    }

    // MARK: the end

    func detachUpstream() {
        if let u = upstream {
            upstream = nil
            u.detach(clean: false)
        }
    }

    /// Ends the exchange. `clean`: request and response both completed (an HTTP/1.1 upstream
    /// connection may go back to its pool). The downstream decides from `requestDone` and
    /// `responseDone` what becomes of its connection or stream.
    func finish(clean: Bool) {
        guard active else { return }
        active = false
        timer.clear()
        if let u = upstream {
            upstream = nil
            u.detach(clean: clean)
        }
        stats.dec(.downstream_rq_active)
        if clusterActive { clusterStats?.dec(.upstream_rq_active); clusterActive = false }
        pool.give(&upHead)
        pool.give(&replay)
        reqHead.release(to: pool)
        if let sh = shadow { shadow = nil; sh.primary = nil }   // a complete copy runs on by itself
        if let p = primary { primary = nil; p.shadow = nil }
        let d = downstream
        downstream = nil
        cluster = nil
        listener = nil
        backendStats = nil
        responseMutations = HeaderMutations()
        d?.exchangeDone(self)
    }
}

extension Exchange {
    /// The request's method is idempotent: a request lost in the keep-alive close race may be sent
    /// again; others not, since the backend may have acted on them. Read from the stored head (the
    /// request line toward HTTP/1.1, `:method` toward HTTP/2), only when a retry is considered.
    var methodIsIdempotent: Bool {
        if upstreamIsHTTP2 { return reqHead.count > 0 && Exchange.isIdempotent(reqHead.value(0)) }
        let line = upHead.bytes
        guard let sp = line.firstIndex(of: 0x20) else { return false }
        return Exchange.isIdempotent(UnsafeRawBufferPointer(rebasing: line[..<sp]))
    }

    /// GET, HEAD, OPTIONS, TRACE, PUT, DELETE (RFC 9110 §9.2.2).
    static func isIdempotent(_ m: UnsafeRawBufferPointer) -> Bool {
        switch m.count {
        case 3: return m.equals("GET") || m.equals("PUT")
        case 4: return m.equals("HEAD")
        case 5: return m.equals("TRACE")
        case 6: return m.equals("DELETE")
        case 7: return m.equals("OPTIONS")
        default: return false
        }
    }
}

/// `headers` with a route's changes applied (the same list when there are none), valid inside `body`.
@inline(__always)
func withMutated<R>(_ headers: UnsafeBufferPointer<HeaderRef>, _ m: HeaderMutations,
                    _ body: (UnsafeBufferPointer<HeaderRef>) -> R) -> R {
    if m.isEmpty { return body(headers) }
    return withUnsafeTemporaryAllocation(of: HeaderRef.self, capacity: headers.count + m.items.count) { buf in
        var n = 0
        m.apply(to: headers) { name, value in
            buf.initializeElement(at: n, to: HeaderRef(name: name, value: value))
            n += 1
        }
        return body(UnsafeBufferPointer(rebasing: buf[0..<n]))
    }
}

/// The bytes of a literal, for writes.
@inline(__always)
func rawBytes(_ s: StaticString) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)
}

/// The downstream of shadow (mirrored) requests: keeps them alive while they run and discards
/// their responses.
final class DiscardDownstream: DownstreamSide {
    unowned(unsafe) let worker: Worker
    var running: [Exchange] = []
    init(worker: Worker) { self.worker = worker }
    func respondHead(status: Int, reason: UnsafeRawBufferPointer, headers: UnsafeBufferPointer<HeaderRef>,
                     lengthKnown: Bool, endStream: Bool) {}
    func respondBody(_ data: UnsafeRawBufferPointer) {}
    func respondEnd(trailers: UnsafeBufferPointer<HeaderRef>?) {}
    func respondReset(code: UInt32) {}
    var responseBlocked: Bool { false }
    func requestConsumed(_ n: Int) {}
    func pauseRequest() {}
    func resumeRequest() {}
    func exchangeDone(_ e: Exchange) {
        if let i = running.firstIndex(where: { $0 === e }) { running.swapAt(i, running.count - 1); running.removeLast() }
        worker.recycle(e)
    }
    var isReading: Bool { false }
    func flushResponse() {}
}
