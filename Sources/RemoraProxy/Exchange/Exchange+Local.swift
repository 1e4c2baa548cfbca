import RemoraCore
import RemoraHTTP

extension Exchange {
    // MARK: answers from the proxy

    func noUpstream(_ why: UpstreamFailure) {
        if let p = hedgeOf { p.hedgeFailed(self, why); return }   // a hedge answers nobody
        let name = cluster?.config.name ?? "?"
        clusterStats?.inc(.upstream_rq_5xx)
        observe.flags.insert(observe.attempts > 1 ? [why.responseFlag, .URX] : why.responseFlag)
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

    /// A circuit breaker of `cl` refused the request (`circuit_breaker:`): 503 with
    /// `x-remora-overloaded: true` at once (gRPC UNAVAILABLE), without waiting for anything.
    func overloaded(_ cl: Cluster) {
        clusterStats?.inc(.upstream_rq_5xx)
        observe.flags.insert(.UO)
        observe.refusedBy = cl
        if isGRPC {
            grpcLocal(code: GRPC.Status.unavailable.rawValue, "cluster \(cl.config.name) is overloaded (circuit breaker)", overloaded: true)
            return
        }
        var body = "upstream overloaded: cluster \(cl.config.name) is at its circuit breaker limit\n"
        body.withUTF8 { local(503, body: UnsafeRawBufferPointer($0), location: nil, overloaded: true) }
    }

    /// A plain-text answer from the proxy.
    func local(_ status: Int, _ body: String) {
        var body = body
        body.withUTF8 { local(status, body: UnsafeRawBufferPointer($0), location: nil) }
    }

    /// An answer from the proxy: an error, a route's direct response, or a redirect (`location`);
    /// `extra`: a filter's header fields with decimal values; `overloaded`: a circuit breaker's
    /// answer (`x-remora-overloaded: true`).
    func local(_ status: Int, body: UnsafeRawBufferPointer, location: UnsafeRawBufferPointer?,
               extra: [LocalReply.NumericField] = [], overloaded: Bool = false) {
        guard active, let d = downstream else { return }
        detachUpstream()
        responseStarted = true
        responseDone = true
        stats.incClass(.downstream_rq_1xx, status: status)
        backendStats?.incClass(.upstream_rq_1xx, status: status)   // a canary that cannot answer must not look healthy
        // 204 and 304 have no content (RFC 9110 §15.3.5, §15.4.5): no length, no body.
        let noContent = status == 204 || status == 304
        let body = noContent ? UnsafeRawBufferPointer(start: nil, count: 0) : body
        observe.status = status
        observe.bytesSent = isHEAD ? 0 : UInt64(body.count)
        var len = ByteBuffer()
        len.appendDecimal(UInt64(body.count))
        var fields = noContent ? [] : [HeaderRef(name: rawBytes("content-type"), value: rawBytes("text/plain")),
                                       HeaderRef(name: rawBytes("content-length"), value: len.bytes)]
        if let location { fields.append(HeaderRef(name: rawBytes("location"), value: location)) }
        var values = ByteBuffer()
        if !extra.isEmpty { Exchange.appendNumeric(extra, to: &fields, storage: &values) }
        if overloaded { fields.append(HeaderRef(name: rawBytes("x-remora-overloaded"), value: rawBytes("true"))) }
        responseNamesLowercase = responseMutations.isEmpty
        fields.withUnsafeBufferPointer { f in
            withMutated(f, responseMutations) { h in
                if runsFilters && listener.hasResponseFilters { runResponseFilters(status: status, headers: h) }
                d.respondHead(status: status, reason: UnsafeRawBufferPointer(start: nil, count: 0), headers: h,
                              lengthKnown: true, endStream: isHEAD || body.count == 0)
            }
        }
        len.release()
        values.release()
        if !isHEAD && body.count > 0 {
            d.respondBody(body)
            d.respondEnd(trailers: nil)
        }
        finish(clean: requestDone)
    }

    /// A gRPC answer from the proxy: HTTP 200, trailers-only, grpc-status and grpc-message.
    func grpcLocal(_ status: GRPC.Status, _ message: String) { grpcLocal(code: status.rawValue, message) }

    /// A gRPC answer with any grpc-status `code` (0 ... 16); `extra`: a filter's header fields;
    /// `overloaded`: a circuit breaker's answer (`x-remora-overloaded: true`, as for HTTP).
    func grpcLocal(code status: Int, _ message: String, extra: [LocalReply.NumericField] = [], overloaded: Bool = false) {
        guard active, let d = downstream else { return }
        detachUpstream()
        responseStarted = true
        responseDone = true
        stats.incClass(.downstream_rq_1xx, status: 200)
        observe.status = 200
        observe.localGRPCStatus = status
        if status != 0 { backendStats?.inc(.upstream_rq_5xx) }
        var code = ByteBuffer()
        code.appendDecimal(UInt64(status))
        var msg = ByteBuffer()
        GRPC.appendEncodedMessage(message, into: &msg)
        var fields = [HeaderRef(name: rawBytes("content-type"), value: rawBytes("application/grpc")),
                      HeaderRef(name: rawBytes("grpc-status"), value: code.bytes),
                      HeaderRef(name: rawBytes("grpc-message"), value: msg.bytes)]
        if overloaded { fields.append(HeaderRef(name: rawBytes("x-remora-overloaded"), value: rawBytes("true"))) }
        var values = ByteBuffer()
        if !extra.isEmpty { Exchange.appendNumeric(extra, to: &fields, storage: &values) }
        responseNamesLowercase = true
        fields.withUnsafeBufferPointer { f in
            if runsFilters && listener.hasResponseFilters { runResponseFilters(status: 200, headers: f) }
            d.respondHead(status: 200, reason: UnsafeRawBufferPointer(start: nil, count: 0), headers: f,
                          lengthKnown: false, endStream: true)
        }
        code.release()
        msg.release()
        values.release()
        finish(clean: requestDone)
    }

    /// Appends `extra` to `fields`, their decimal values written into `storage` (reserved first, so
    /// the fields' pointers stay valid while `storage` lives).
    static func appendNumeric(_ extra: [LocalReply.NumericField], to fields: inout [HeaderRef], storage: inout ByteBuffer) {
        storage.reserve(extra.count * 20)
        var offsets: [(Int, Int)] = []
        for f in extra {
            let start = storage.count
            storage.appendDecimal(f.value)
            offsets.append((start, storage.count - start))
        }
        let base = storage.bytes.baseAddress!
        for (f, (at, n)) in zip(extra, offsets) {
            fields.append(HeaderRef(name: rawBytes(f.name), value: UnsafeRawBufferPointer(start: base + at, count: n)))
        }
    }
}
