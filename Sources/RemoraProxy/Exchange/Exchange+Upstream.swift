import RemoraCore
import RemoraHTTP
import RemoraPolicy

extension Exchange {
    // MARK: the upstream request

    /// Takes `cl` as the request's cluster and stores the request as its upstream gets it (kept
    /// for retries), by the request-head policy written once in RemoraHTTP (`RequestHead`).
    /// `view` is the request as routed (target rewritten, the route's header changes applied).
    func prepareUpstream(_ cl: Cluster, _ r: RequestStart, _ view: RequestView, clientIP: UnsafeRawBufferPointer,
                         scheme: StaticString, dropExpect: Bool,
                         extra: AddedFields = .none) {
        clusterRef = Unmanaged.passUnretained(cl)   // (not `cluster = cl`: its setter takes an owned reference)
        clusterStats = cl.stats
        upstreamAuto = cl.auto
        upstreamIsHTTP2 = cl.auto ? cl.prefersH2 : cl.config.protocol != .http1
        reqFraming = r.framing
        if view.authority.isEmpty {
            // HTTP/1.0 without Host: HTTP/1.1 and HTTP/2 upstreams need one; the cluster's name
            // stands in for it, as nginx's proxy_pass sends its upstream's name (rare, not hot).
            var v = view, name = cl.config.name
            name.withUTF8 { v.authority = UnsafeRawBufferPointer($0); storeUpstreamHead(r, v, clientIP, scheme, dropExpect, extra, addHost: true) }
        } else {
            storeUpstreamHead(r, view, clientIP, scheme, dropExpect, extra, addHost: r.fromHTTP2 || r.authorityReplacesHost)
        }
        if cl.requestKey != nil { lbHash = cl.requestHash(view.headers, clientIP: clientIP) }
        cl.stats.inc(.upstream_rq_total)
        cl.stats.inc(.upstream_rq_active)
        clusterActive = true
    }

    @inline(__always)
    func storeUpstreamHead(_ r: RequestStart, _ view: RequestView, _ clientIP: UnsafeRawBufferPointer,
                           _ scheme: StaticString, _ dropExpect: Bool, _ extra: AddedFields, addHost: Bool) {
        if upstreamIsHTTP2 || upstreamAuto {   // auto: both, the attempt picks (`dispatch`)
            reqHead.prepare(pool)
            HTTP2Head.storeRequest(view, clientIP: clientIP, proto: scheme, dropExpect: dropExpect,
                                   namesLowercase: r.fromHTTP2, extendedConnect: upgrade == .websocket,
                                   clientCert: r.clientCert, extra: extra.fields, into: &reqHead)
        }
        if !upstreamIsHTTP2 || upstreamAuto {
            if upHead.base == nil { upHead = pool.take() }
            upHead.clear()
            if upgrade != .none {   // a WebSocket handshake (Exchange+Upgrade.swift)
                writeUpgradeRequest(view, r, clientIP: clientIP, scheme: scheme, addHost: addHost, extra: extra)
            } else {
                HTTP1Head.writeRequest(view, framing: reqFraming, addHost: addHost, clientIP: clientIP, proto: scheme,
                                       dropExpect: dropExpect, clientCert: r.clientCert, extraLines: extra.lines, into: &upHead)
            }
        }
    }

    /// Sends the request on an upstream: an idle pooled HTTP/1.1 connection unless `fresh`, an
    /// HTTP/2 connection with a free stream, or a new connection. Starts an attempt.
    /// `endpoint`: this one rather than the balancer's pick (`upstreamSwitched`).
    func dispatch(fresh: Bool, endpoint: Endpoint.Ref? = nil) {
        withCluster(()) { dispatch($0, fresh: fresh, endpoint: endpoint) }
    }

    func dispatch(_ cl: Cluster, fresh: Bool, endpoint: Endpoint.Ref?) {
        var pinned = endpoint
        if upstreamAuto && pinned == nil && !cl.live.isEmpty {
            // `protocol: auto`: the endpoint first, then the protocol its server chose (or the preferred one).
            let ref = cl.pickEndpoint(hash: lbHash)
            pinned = ref
            upstreamIsHTTP2 = ref._withUnsafeGuaranteedRef { $0.speaksH2 } ?? cl.prefersH2
        }
        if upstreamIsHTTP2 {
            guard let s = cl.openHTTP2(for: self, head: reqHead, hasBody: requestHasBody, retry: fresh, hash: lbHash,
                                       extendedConnect: upgrade == .websocket, endpoint: pinned)
            else { return noStream(cl) }
            let ref = Unmanaged.passUnretained(s)
            upstream = s
            h2Upstream = ref   // (after `upstream`, whose change clears it)
        } else {
            guard let s = cl.openHTTP1(for: self, head: upHead.bytes, isHEAD: isHEAD, fresh: fresh, hash: lbHash, endpoint: pinned)
            else { return noStream(cl) }
            upstream = s
        }
        withUpstream(()) { startAttempt(cl, $0) }
    }

    /// No upstream could be opened for the attempt.
    func noStream(_ cl: Cluster) {
        if cl.overflowed { cl.overflowed = false; overloaded(cl) } else { noUpstream(.connectFailed) }
    }

    /// An attempt starts on `u` (just opened): its clock and deadlines, then what of the request is here.
    @inline(__always)
    func startAttempt(_ cl: Cluster, _ u: any UpstreamStream) {
        attemptEndpoint = u.endpoint
        attemptStart = timer.now
        attemptHeadAt = 0
        attemptStatus = 0
        attemptGRPCStatus = -1
        if let r = retry, r.policy.perTryTimeout != 0 || r.policy.hedgeAfter != 0 {
            tryDeadline = r.policy.perTryTimeout != 0 ? attemptStart &+ r.policy.perTryTimeout : 0
            hedgeAt = r.policy.hedgeAfter != 0 && r.tries == 1 ? attemptStart &+ r.policy.hedgeAfter : 0
            if hedgeAt != 0 && (tryDeadline == 0 || hedgeAt < tryDeadline) { tryDeadline = hedgeAt }
            arm(deadlineKind)
        }
        cl.stats.add(.upstream_cx_tx_bytes_total, UInt64(upHead.count))
        if !replay.isEmpty { u.sendBody(replay.bytes) }
        if requestDone && requestHasBody { u.sendEnd(trailers: nil) }
    }

    /// `protocol: auto`: the connection this attempt waited for was opened for the other protocol
    /// than its server chose, and nothing of the request was sent on it. The attempt starts again on
    /// the same endpoint in the server's protocol (both heads are stored), unless part of the body
    /// went to it and is not kept for a replay: then it fails as a failed connect.
    func upstreamSwitched(toHTTP2: Bool) {
        guard active, upstream != nil, let ep = attemptEndpoint else { return }
        upstream = nil   // the connection's old codec has let go of this exchange
        if !upstreamAuto || (requestHasBody && !replayable && hedgeOf == nil) {
            endAttempt(.connectFailure)
            noUpstream(.connectFailed)
            return
        }
        ep._withUnsafeGuaranteedRef { $0.activeRequests -= 1 }
        attemptEndpoint = nil
        upstreamIsHTTP2 = toHTTP2
        dispatch(fresh: false, endpoint: ep)
    }

    // MARK: failed attempts

    func upstreamFailed(_ why: UpstreamFailure) {
        guard active, let cl = cluster, let u = upstream else { return }
        upstream = nil
        endAttempt(why.outcomeKind)
        u.detach(clean: false)
        if let p = hedgeOf { p.hedgeFailed(self, why); return }
        if responseStarted {
            // Never let a truncated response look complete.
            cl.stats.inc(.upstream_rq_reset_after_head)
            observe.flags.insert(why.responseFlag)
            if case .reset(let code) = why, code != 0 { downstream?.respondReset(code: code) } else { downstream?.respondReset(code: 2) }
            finish(clean: false)
            return
        }
        // The proxy's own retries, always safe: another endpoint after a failed connect, a stream the
        // peer never processed, the keep-alive close race of an idempotent request.
        if replayable {
            var again = false
            switch why {
            case .connectFailed where connectRetries > 0:
                connectRetries -= 1
                again = true
            case .refused where refusedRetries > 0:
                refusedRetries -= 1
                again = true
            case .reset, .protocolError:
                // The keep-alive close race: sent again only when the method is idempotent, since
                // the backend may have received and acted on the request before the connection died.
                if u.wasReused && !u.gotResponseBytes && reuseRetries > 0 && methodIsIdempotent {
                    reuseRetries -= 1
                    again = true
                }
            default:
                break
            }
            if again {
                cl.stats.inc(.upstream_rq_retry)
                dispatch(fresh: true)
                return
            }
        }
        // The route's retry policy (a hedge under way is the next try: wait for it).
        if hedge != nil { return }
        if let wait = retryDecision(AttemptOutcome(kind: why.outcomeKind)) {
            scheduleRetry(after: wait)
            return
        }
        noUpstream(why)
    }

    // MARK: the outcome hook

    /// Reports how the attempt under way ended to its endpoint and cluster, once (later calls for
    /// the same attempt do nothing). Every attempt ends here: failures, timeouts, cancellations and
    /// complete responses alike.
    @inline(__always)
    func endAttempt(_ kind: AttemptOutcome.Kind) {
        guard let endpoint = attemptEndpoint, let cl = clusterRef else { return }
        attemptEndpoint = nil
        lastTryEndpoint = endpoint
        tryDeadline = 0
        let outcome = AttemptOutcome(kind: kind, status: attemptStatus, grpcStatus: attemptGRPCStatus,
                                     latency: (attemptHeadAt != 0 ? attemptHeadAt : timer.now) &- attemptStart)
        observeAttempt(endpoint: endpoint._withUnsafeGuaranteedRef { $0.index }, outcome)
        cl._withUnsafeGuaranteedRef { $0.attemptEnded(endpoint: endpoint, outcome) }
    }

    /// The request's method is idempotent: a request lost in the keep-alive close race may be sent
    /// again; others not, since the backend may have acted on them. Read from the stored head (the
    /// request line toward HTTP/1.1, `:method` toward HTTP/2), only when a retry is considered.
    var methodIsIdempotent: Bool { Exchange.isIdempotent(requestMethod) }

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

extension UpstreamFailure {
    var outcomeKind: AttemptOutcome.Kind {
        switch self {
        case .connectFailed: return .connectFailure
        case .refused: return .refused
        case .reset: return .reset
        case .protocolError: return .protocolError
        }
    }
}
