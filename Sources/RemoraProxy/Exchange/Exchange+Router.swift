import RemoraCore
import RemoraHTTP
import RemoraPolicy
import RemoraRouting

/// A request head as a downstream codec hands it to an exchange.
struct RequestStart {
    /// Method, target (origin form), authority, headers: valid only during `Exchange.start`.
    var view: RequestView
    var isHEAD: Bool
    /// Content-Length is among the headers (its value in `contentLength`).
    var lengthKnown: Bool
    var contentLength: UInt64
    /// An HTTP/1.1 chunked body.
    var chunked: Bool
    /// No body follows.
    var endStream: Bool
    /// From an HTTP/2 client (the authority is `:authority`, names are lowercase).
    var fromHTTP2: Bool
    /// An absolute-form target's authority replaces Host.
    var authorityReplacesHost = false
    /// `Expect: 100-continue`, which the proxy answers itself, is not forwarded.
    var dropExpect: Bool
    /// The `x-forwarded-client-cert` value of a mutual-TLS connection (empty: none).
    var clientCert = UnsafeRawBufferPointer(start: nil, count: 0)
    /// The protocol the request asks to upgrade to (`Exchange+Upgrade.swift`); `.none` for almost all.
    var upgrade = UpgradeRequest.none
    /// The connection has no TLS layer: scheme `http`, even on a TLS listener (`allow_plaintext`).
    var plaintext = false
    /// An HTTP/1.0 request (the access log's protocol).
    var http10 = false

    /// The scheme the request arrived with (X-Forwarded-Proto, redirects): the listener's, but
    /// `http` on a TLS listener's plaintext connection.
    @inline(__always) func scheme(_ l: ListenerRuntime) -> StaticString { plaintext ? "http" : l.scheme }

    /// How the body goes to an HTTP/1.1 upstream.
    var framing: BodyFraming { chunked ? .chunked : (lengthKnown ? .contentLength : (endStream ? .none : .chunked)) }
    /// A body that may outgrow the replay buffer goes on a fresh HTTP/1.1 connection: a pooled one
    /// could be closed under it (the keep-alive race) with nothing left to retry from.
    var wantsFreshConnection: Bool { chunked || (lengthKnown && contentLength > UInt64(Exchange.replayLimit)) }
}

extension Exchange {
    // MARK: the request head: filters, then the router (the last request filter)

    /// A request head arrived: the listener's filters see it in order (any may answer it), then the
    /// router matches a route and answers locally, or picks a backend and sends the request there.
    /// `clientIP` (for X-Forwarded-For) is the downstream connection's.
    func start(downstream d: any DownstreamSide, listener l: ListenerRuntime, _ r: RequestStart, clientIP: String) {
        begin(downstream: d, listener: l, stats: l.stats, isHEAD: r.isHEAD, endStream: r.endStream)
        upgrade = r.upgrade
        observeStart()
        stats.inc(.downstream_rq_total)
        stats.inc(.downstream_rq_active)
        if upgrade == .connect { connectTunnel(r, l); return }   // HTTP/2 CONNECT (Exchange+Upgrade.swift)
        let h = r.view.headers
        isGRPC = h.firstIndex(named: "content-type").map { GRPC.isGRPC(contentType: h[$0].value) } ?? false
        // The path as routing, authorization and the upstream see it (`path_normalization:`).
        // One scan finds the common case, a path with no "%", "/." or "//": nothing to do.
        guard l.normalizesPaths, PathNormalizer.mayChange(r.view.target) else { return proceed(d, l, r, clientIP: clientIP) }
        var normalized = pool.take()
        normalized.reserve(r.view.target.count)
        let outcome = PathNormalizer.normalize(r.view.target, l.normalization,
                                               into: UnsafeMutableRawBufferPointer(start: normalized.base, count: r.view.target.count))
        switch outcome {
        case .unchanged:
            proceed(d, l, r, clientIP: clientIP)
        case .changed(let n):
            var nr = r
            nr.view.target = UnsafeRawBufferPointer(start: normalized.base, count: n)
            proceed(d, l, nr, clientIP: clientIP)
        case .rejected(let why):
            stats.inc(.downstream_rq_failed_path_normalization)
            observe.flags.insert(.DPE)
            if l.hasFilters { runsFilters = true }
            captureForLog(l, r)
            local(400, body: rawBytes(why.message), location: nil)
        }
        pool.give(&normalized)
    }

    /// The access log's copy of the request (a direct call, without a retain); its line is written
    /// when the exchange is over (`finish`).
    @inline(__always) func captureForLog(_ l: ListenerRuntime, _ r: RequestStart) {
        guard let a = l.accessLogRef else { return }
        logsAccess = true
        a._withUnsafeGuaranteedRef { $0.requestHeaders(self, r) }
    }

    /// The route and the filters, with the peer's identity in the view first when the listener's
    /// routes match on it or its authorization asks.
    @inline(__always)
    func proceed(_ d: any DownstreamSide, _ l: ListenerRuntime, _ r: RequestStart, clientIP: String) {
        if l.needsPrincipal { startWithPrincipal(d, l, r, clientIP: clientIP) } else { startRouting(l, r, clientIP: clientIP) }
    }

    /// The peer's identity in the view (`RequestView.principal`), then the route and the filters.
    func startWithPrincipal(_ d: any DownstreamSide, _ l: ListenerRuntime, _ r: RequestStart, clientIP: String) {
        guard var p = d.transportConnection?.peerPrincipal, !p.isEmpty else {
            return startRouting(l, r, clientIP: clientIP)
        }
        p.withUTF8 { u in
            var pr = r
            pr.view.principal = UnsafeRawBufferPointer(u)
            startRouting(l, pr, clientIP: clientIP)
        }
    }

    /// The route, the filters, then the router.
    @inline(__always)
    func startRouting(_ l: ListenerRuntime, _ r: RequestStart, clientIP: String) {
        routeIndex = l.routes.match(r.view) ?? -1
        observe.route = routeIndex   // a filter's answer is logged with its route too
        // Request id and trace context first (a direct call: tracing never answers, and a listener
        // with only tracing runs no filter machinery).
        if let u = l.tracingRef { u._withUnsafeGuaranteedRef { $0.begin(self, r.view) } }
        captureForLog(l, r)   // before a filter may answer (a fault's abort, a rate limit)
        if l.hasFilters {
            runsFilters = true
            switch runRequestFilters(l.filters, r.view) {
            case .next, .delay(_, then: nil):
                break
            case .respond(let status, let body):
                var body = body
                body.withUTF8 { local(status, body: UnsafeRawBufferPointer($0), location: nil) }
                return
            case .reply(let reply):
                answer(reply)
                return
            case .delay(let ms, then: let reply?):
                delayThenAnswer(ms, reply)
                return
            }
        }
        route(r, l, clientIP: clientIP)
    }

    /// Each filter's request-headers phase, in order, until one answers. A `.delay` without an answer
    /// is kept (the longest) and the next filter runs.
    func runRequestFilters(_ filters: [any HTTPFilter], _ view: RequestView) -> FilterVerdict {
        for f in filters {
            let v = f.requestHeaders(self, view)
            switch v {
            case .next: continue
            case .delay(let ms, then: nil):
                if ms > dispatchDelay { dispatchDelay = ms; delayedReply = nil }
            default:
                return v
            }
        }
        return .next
    }

    /// The router: the matched route's local answer (no route, direct response, redirect, a body too
    /// large) or the forward path (split, mirror, deadlines, the upstream request, dispatch).
    func route(_ r: RequestStart, _ l: ListenerRuntime, clientIP: String) {
        let view = r.view
        guard routeIndex >= 0 else {
            stats.inc(.downstream_rq_no_route)
            observe.flags.insert(.NR)
            if isGRPC { grpcLocal(.unimplemented, "no route for \(view.target.string)") } else { local(404, "no route\n") }
            return
        }
        let ri = routeIndex
        let table = l.routes
        let route = table[ri]
        responseMutations = table.responseHeaders(route: ri)
        switch route.action {
        case .respond:
            local(route.status, body: table.body(route: ri), location: nil)
            return
        case .redirect:
            var location = pool.take()
            table.writeLocation(route: ri, request: view, scheme: rawBytes(r.scheme(l)), into: &location)
            local(route.status, body: UnsafeRawBufferPointer(start: nil, count: 0), location: location.bytes)
            pool.give(&location)
            return
        case .forward:
            break
        }
        if route.grpcWeb && startGRPCWeb(r, route: ri, table) { return }   // gRPC-Web (a preflight answered)
        // Slow or oversized bodies (gRPC is bounded by its deadline and its server's message limits).
        maxRequestBody = isGRPC ? 0 : l.config.maxRequestBodyBytes
        if maxRequestBody != 0 && r.lengthKnown && r.contentLength > maxRequestBody {
            stats.inc(.downstream_rq_body_too_large)
            local(413, "request body larger than \(maxRequestBody) bytes\n")
            return
        }
        let requestTimeout = route.requestTimeout == .max ? l.config.requestTimeout : route.requestTimeout
        if !isGRPC && !r.endStream && requestTimeout > 0 { requestDeadline = timer.now &+ requestTimeout }
        let backend = table.pick(route: ri, request: view, random: withWorker { $0.rng.next() })
        let mirrorCluster = table.mirror(route: ri, random: withWorker { $0.rng.next() })
        let cl = l.clusters[backend.cluster]
        if upgrade != .none && refusesUpgrade(route, cl, r) { return }   // one flag test for other requests
        backendStats = l.backendStats[backend.slot]
        backendStats?.inc(.upstream_rq_total)
        guard cl.admitRequest() else { overloaded(cl); return }   // max_requests (released in finish)
        routeTimeout = route.timeout
        if let policy = table.retryPolicy(route: ri) { retry = RetryState(policy: policy) }
        let h = view.headers
        if isGRPC, let i = h.firstIndex(named: "grpc-timeout"), let ms = GRPC.timeout(h[i].value) {
            grpcDeadline = timer.now &+ ms
        }
        // The request as the upstream gets it: rewritten target, the route's header changes.
        var rewritten = ByteBuffer()
        var target = view.target
        if table.rewriteTarget(route: ri, target: view.target, into: &rewritten) { target = rewritten.bytes }
        let mutations = table.requestHeaders(route: ri)
        withUTF8(of: clientIP) { ipBytes in
            let clientIP = UnsafeRawBufferPointer(ipBytes)
            withMutated(view.headers, mutations) { mutated in
                // With `tracing:`, the request id and trace context (Observe/Tracing.swift): added after
                // the client's fields, whose own trace fields are left out when it sent any.
                var headers = mutated
                var extra = AddedFields.none
                if observe.hasTrace, let u = l.tracingRef {
                    u._withUnsafeGuaranteedRef { t in
                        if observe.traceFieldsSeen { headers = t.forwarded(mutated, at: mutations.isEmpty ? observe.onlyTraceField : -1) }
                        extra = t.added(self)
                    }
                }
                var routed = RequestView(method: view.method, target: target, authority: view.authority, headers: headers)
                // A route that sets Host sets the authority, whatever protocol either side speaks.
                if !mutations.isEmpty && (r.fromHTTP2 || r.authorityReplacesHost), let i = headers.firstIndex(named: "host") {
                    routed.authority = headers[i].value
                }
                if grpcWeb != .off {
                    withGRPCWebHead(routed) { prepareUpstream(cl, r, $0, clientIP: clientIP, scheme: r.scheme(l), dropExpect: r.dropExpect, extra: extra) }
                } else {
                    prepareUpstream(cl, r, routed, clientIP: clientIP, scheme: r.scheme(l), dropExpect: r.dropExpect, extra: extra)
                }
                // The shadow gets the request as routed (rewritten, with the route's header changes).
                if let mc = mirrorCluster, upgrade == .none { startShadow(cluster: l.clusters[mc], l, r, routed, clientIP: clientIP, extra: extra) }
            }
        }
        rewritten.release()
        reuseRetries = 1
        connectRetries = cl.endpoints.count > 1 ? 1 : 0
        refusedRetries = 4   // the peer never processed a refused stream: always safe to send again
        if dispatchDelay == 0 { dispatch(fresh: r.wantsFreshConnection) } else { delayDispatch(fresh: r.wantsFreshConnection) }
        if active && !responseStarted { armAfterRequestProgress() }
    }

    /// Sends a copy of this request to `cluster` (route mirroring). Its response is discarded; it
    /// gets body bytes only while its upstream keeps up, and is dropped the moment it would have
    /// to wait, so it never slows this request.
    func startShadow(cluster cl: Cluster, _ l: ListenerRuntime, _ r: RequestStart, _ view: RequestView,
                     clientIP: UnsafeRawBufferPointer, extra: AddedFields) {
        guard cl.admitRequest() else {   // no copy over the shadow cluster's max_requests
            cl.stats.inc(.upstream_rq_mirror_dropped)
            return
        }
        let sh = worker.takeExchange()
        sh.primary = self
        shadow = sh
        worker.discard.running.append(sh)
        sh.begin(downstream: worker.discard, listener: l, stats: worker.shadowStats, isHEAD: r.isHEAD, endStream: r.endStream)
        sh.replayable = false
        sh.routeTimeout = l.config.idleTimeout   // a shadow that never answers is let go
        sh.prepareUpstream(cl, r, view, clientIP: clientIP, scheme: r.scheme(l), dropExpect: true, extra: extra)
        sh.reuseRetries = 0
        sh.connectRetries = 0
        sh.refusedRetries = 0
        sh.dispatch(fresh: r.wantsFreshConnection)
        sh.arm(.stream)
    }

    /// The shadow copy gets these body bytes only if its upstream can take them now; otherwise it is
    /// dropped, and counted (`upstream_rq_mirror_dropped`) unless it had already ended by itself.
    func feedShadow(_ data: UnsafeRawBufferPointer) {
        guard let sh = shadow else { return }
        if let u = sh.upstream, !u.requestBlocked, sh.active, !sh.responseDone {
            u.sendBody(data)
        } else {
            dropShadow(sh)
        }
    }

    /// Lets the shadow copy go before its request is complete: counted when it was still running.
    func dropShadow(_ sh: Exchange) {
        shadow = nil
        sh.primary = nil
        if sh.active, !sh.responseDone { sh.cluster?.stats.inc(.upstream_rq_mirror_dropped) }
        sh.finish(clean: false)
    }
}

/// `body` with the UTF-8 bytes of `s`, without the copy (a retain and a release) that `String.withUTF8`,
/// a mutating method, needs when the string is native and contiguous, as a connection's address is.
@inline(__always)
func withUTF8<R>(of s: String, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
    if let r = s.utf8.withContiguousStorageIfAvailable(body) { return r }
    var copy = s
    return copy.withUTF8(body)
}
