import RemoraCore
import RemoraHTTP
import RemoraRouting

/// gRPC-Web (issue 18, `grpc_web:` on a route), as Envoy's grpc_web filter: a request whose
/// content-type is `application/grpc-web(+proto)` or `application/grpc-web-text(+proto)` goes to the
/// (HTTP/2) cluster as gRPC — content-type `application/grpc(+proto)`, `te: trailers`, the text
/// mode's base64 decoded on the way — and is a gRPC request from then on (deadline, gRPC-shaped local
/// answers, no body limit). Its response comes back with the grpc-web content-type, its body frames
/// as they are (text: base64-encoded), and its trailers as the body's last frame (flag 0x80), so that
/// HTTP/1.1 browsers, which never see trailers, read them. A preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) from an allowed origin is answered 204 here (CORS).
extension Exchange {
    /// Classifies a request on a `grpc_web` route; true when it was answered here (a preflight).
    func startGRPCWeb(_ r: RequestStart, route ri: Int, _ table: RouteTable) -> Bool {
        let h = r.view.headers
        let config = table.grpcWeb[ri]
        grpcWebOrigin = nil
        if let config, !config.allowOrigins.isEmpty, let i = h.firstIndex(named: "origin") {
            let origin = String(decoding: h[i].value, as: UTF8.self)
            if config.allows(origin) { grpcWebOrigin = origin }
            if r.view.method.count == 7 && r.view.method.equals("OPTIONS"), h.firstIndex(named: "access-control-request-method") != nil {
                answerPreflight(h)
                return true
            }
        }
        guard let i = h.firstIndex(named: "content-type") else { return false }
        grpcWeb = GRPCWeb.mode(contentType: h[i].value)
        if grpcWeb != .off {
            isGRPC = true
            if grpcWeb == .text { grpcWebIn = GRPCWeb.Decoder(); grpcWebOut = GRPCWeb.Encoder() }
        }
        return false
    }

    /// The CORS preflight's answer: 204 with the allowed origin, methods and headers, or 403 for an
    /// origin the route does not allow.
    func answerPreflight(_ h: UnsafeBufferPointer<HeaderRef>) {
        guard let origin = grpcWebOrigin else { local(403, "origin not allowed\n"); return }
        guard active, let d = downstream else { return }
        responseStarted = true
        responseDone = true
        stats.incClass(.downstream_rq_1xx, status: 204)
        observe.status = 204
        var o = origin
        o.withUTF8 { originBytes in
            var fields = [HeaderRef(name: rawBytes("access-control-allow-origin"), value: UnsafeRawBufferPointer(originBytes)),
                          HeaderRef(name: rawBytes("access-control-allow-methods"), value: rawBytes("POST, OPTIONS")),
                          HeaderRef(name: rawBytes("access-control-max-age"), value: rawBytes("86400")),
                          HeaderRef(name: rawBytes("vary"), value: rawBytes("origin"))]
            if let i = h.firstIndex(named: "access-control-request-headers") {
                fields.append(HeaderRef(name: rawBytes("access-control-allow-headers"), value: h[i].value))
            } else {
                fields.append(HeaderRef(name: rawBytes("access-control-allow-headers"),
                                        value: rawBytes("content-type, x-grpc-web, x-user-agent, grpc-timeout")))
            }
            fields.withUnsafeBufferPointer { f in
                d.respondHead(status: 204, reason: UnsafeRawBufferPointer(start: nil, count: 0), headers: f,
                              lengthKnown: true, endStream: true)
            }
        }
        finish(clean: requestDone)
    }

    /// `view` as a gRPC request (inside `body` only): content-type translated, `te: trailers`, and
    /// for the text mode no content-length (the decoded body is shorter).
    func withGRPCWebHead(_ view: RequestView, _ body: (RequestView) -> Void) {
        let h = view.headers
        var ct = pool.take()
        if let i = h.firstIndex(named: "content-type") { GRPCWeb.upstreamContentType(h[i].value, into: &ct) }
        withUnsafeTemporaryAllocation(of: HeaderRef.self, capacity: h.count + 2) { buf in
            var n = 0
            for f in h {
                let name = f.name
                if name.count == 12 && name.equalsLowercase("content-type") { continue }
                if name.count == 10 && name.equalsLowercase("x-grpc-web") { continue }
                if name.count == 2 && name.equalsLowercase("te") { continue }
                if grpcWeb == .text && name.count == 14 && name.equalsLowercase("content-length") { continue }
                buf.initializeElement(at: n, to: f)
                n += 1
            }
            buf.initializeElement(at: n, to: HeaderRef(name: rawBytes("content-type"), value: ct.bytes))
            buf.initializeElement(at: n + 1, to: HeaderRef(name: rawBytes("te"), value: rawBytes("trailers")))
            var v = view
            v.headers = UnsafeBufferPointer(rebasing: buf[0..<(n + 2)])
            body(v)
        }
        pool.give(&ct)
    }

    /// Text mode: the body's base64 decoded before it goes on (credit for the difference is
    /// returned at once: the client counted encoded bytes).
    func requestBodyGRPCWebText(_ data: UnsafeRawBufferPointer) {
        var decoded = pool.take()
        let ok = grpcWebIn.decode(data, into: &decoded)
        guard ok else {
            pool.give(&decoded)
            downstream?.requestConsumed(data.count)
            if responseStarted { downstream?.respondReset(code: 0x1); finish(clean: false) } else {
                grpcLocal(code: 13, "grpc-web-text request body is not base64")
            }
            return
        }
        grpcWeb = .binary   // (the plain path, once)
        if decoded.count > 0 { requestBody(decoded.bytes) }
        if grpcWeb == .binary { grpcWeb = .text }
        if data.count > decoded.count { downstream?.requestConsumed(data.count - decoded.count) }
        pool.give(&decoded)
    }

    /// The response head as a grpc-web client gets it.
    func respondGRPCWebHead(_ d: any DownstreamSide, status: Int, reason: UnsafeRawBufferPointer,
                            headers: UnsafeBufferPointer<HeaderRef>, endStream: Bool) {
        let text = grpcWeb == .text
        withUnsafeTemporaryAllocation(of: HeaderRef.self, capacity: headers.count + 3) { buf in
            var n = 0
            for f in headers {
                if f.name.count == 12 && f.name.equalsLowercase("content-type") { continue }
                if f.name.count == 14 && f.name.equalsLowercase("content-length") { continue }
                buf.initializeElement(at: n, to: f)
                n += 1
            }
            let ct = text ? rawBytes("application/grpc-web-text+proto") : rawBytes("application/grpc-web+proto")
            buf.initializeElement(at: n, to: HeaderRef(name: rawBytes("content-type"), value: ct))
            n += 1
            var origin = grpcWebOrigin ?? ""
            origin.withUTF8 { o in
                var m = n
                if grpcWebOrigin != nil {
                    buf.initializeElement(at: m, to: HeaderRef(name: rawBytes("access-control-allow-origin"), value: UnsafeRawBufferPointer(o)))
                    buf.initializeElement(at: m + 1, to: HeaderRef(name: rawBytes("access-control-expose-headers"),
                                                                   value: rawBytes("grpc-status, grpc-message")))
                    m += 2
                }
                let h = UnsafeBufferPointer(rebasing: buf[0..<m])
                withMutated(h, responseMutations) { h in
                    if runsFilters && listener.hasResponseFilters { runResponseFilters(status: status, headers: h) }
                    d.respondHead(status: status, reason: reason, headers: h, lengthKnown: false, endStream: endStream)
                }
            }
        }
    }

    /// A response body piece: as it is, or base64-encoded (text mode).
    func respondGRPCWebBody(_ d: any DownstreamSide, _ data: UnsafeRawBufferPointer) {
        if grpcWeb != .text { d.respondBody(data); return }
        var out = pool.take()
        grpcWebOut.encode(data, into: &out)
        if out.count > 0 { d.respondBody(out.bytes) }
        pool.give(&out)
    }

    /// The end: the trailers as the last frame of the body (text: the body's base64 padded first,
    /// then the frame encoded on its own), then a plain end.
    func respondGRPCWebEnd(_ d: any DownstreamSide, trailers: UnsafeBufferPointer<HeaderRef>?) {
        var frame = pool.take()
        GRPCWeb.writeTrailerFrame(trailers, into: &frame)
        if grpcWeb == .text {
            var out = pool.take()
            grpcWebOut.finish(into: &out)
            Base64.encode(frame.bytes, into: &out)
            d.respondBody(out.bytes)
            pool.give(&out)
        } else {
            d.respondBody(frame.bytes)
        }
        pool.give(&frame)
        d.respondEnd(trailers: nil)
    }
}
