import RemoraCore
import RemoraHTTP
import RemoraIO

/// What a gRPC health probe sends, built once per checker: `POST /grpc.health.v1.Health/Check`
/// with `content-type: application/grpc` and `te: trailers` (`:authority` the cluster's name, as
/// Envoy's gRPC health checker sends), and a `HealthCheckRequest { service }` body, in one buffer
/// that the `HeaderRef`s point into (nothing is built per probe).
final class GRPCHealthRequest {
    let storage: UnsafeMutableRawBufferPointer
    let headerStorage: UnsafeMutableBufferPointer<HeaderRef>
    let method: UnsafeRawBufferPointer
    let authority: UnsafeRawBufferPointer
    let path: UnsafeRawBufferPointer
    var headers: UnsafeBufferPointer<HeaderRef> { UnsafeBufferPointer(headerStorage) }
    /// The length-prefixed message.
    let body: UnsafeRawBufferPointer

    init(authority: String, service: String) {
        let parts: [[UInt8]] = [Array("POST".utf8), Array(authority.utf8), Array(GRPC.healthCheckPath.utf8),
                                Array("content-type".utf8), Array("application/grpc".utf8), Array("te".utf8),
                                Array("trailers".utf8), Array("user-agent".utf8), Array("remora-health-check".utf8),
                                GRPC.healthCheckRequest(service: service)]
        let all = UnsafeMutableRawBufferPointer.allocate(byteCount: parts.reduce(0) { $0 + $1.count }, alignment: 8)
        storage = all
        var slices: [UnsafeRawBufferPointer] = []
        var at = 0
        for p in parts {
            p.withUnsafeBytes { if $0.count > 0 { (all.baseAddress! + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            slices.append(UnsafeRawBufferPointer(start: all.baseAddress! + at, count: p.count))
            at += p.count
        }
        method = slices[0]; self.authority = slices[1]; path = slices[2]; body = slices[9]
        let h = UnsafeMutableBufferPointer<HeaderRef>.allocate(capacity: 3)
        for i in 0..<3 { h[i] = HeaderRef(name: slices[3 + 2 * i], value: slices[4 + 2 * i]) }
        headerStorage = h
    }

    deinit {
        storage.deallocate()
        headerStorage.deallocate()
    }
}

/// gRPC health probes (`health_check: { grpc: { service } }`): grpc.health.v1.Health/Check over
/// HTTP/2 with prior knowledge, through the same nghttp2 session type as the proxy's upstream
/// connections (`HTTP2Session`), one stream per probe on a connection kept between probes.
/// SERVING passes; any other serving status, a grpc-status other than OK, a non-200 `:status`, a
/// reset stream, a malformed answer or no answer within the timeout fails (Envoy's rules). As with
/// every nghttp2 user here, the session's callbacks only record; the probe acts once `receive`
/// has returned.
extension HealthProbe: HTTP2SessionDelegate {
    /// Small windows: an answer is a few bytes.
    static let grpcSettings = HTTP2Settings(maxConcurrentStreams: 1, initialStreamWindow: 65_535, connectionWindow: 65_535,
                                            maxHeaderListSize: 16 * 1024)
    /// A longer answer than this is not a HealthCheckResponse.
    static let maxMessage = 1024

    /// A session for the new connection `conn` (its preface waits in the connection for the connect).
    func startGRPC() {
        let s = HTTP2Session(role: .client, settings: HealthProbe.grpcSettings)
        s.delegate = self
        h2 = s
        goingAway = false
        credit = 0
    }

    /// Opens the probe's stream and sends it. False: the session cannot take one (closing, or the
    /// peer went away): the probe fails and the connection is let go.
    func submitGRPC() -> Bool {
        guard let s = h2, let r = checker.grpcRequest, !goingAway else { return false }
        grpcStatus = -1
        servingStatus = nil
        message.removeAll(keepingCapacity: true)
        streamClosed = false
        streamError = 0
        let id = s.submitRequest(method: r.method, scheme: "http", authority: r.authority, path: r.path, headers: r.headers,
                                 clean: true, hasBody: true, streamData: nil)
        guard id > 0 else { return false }
        streamID = id
        return sendFrames()
    }

    /// Everything nghttp2 has queued, in one write.
    func sendFrames() -> Bool {
        guard let s = h2, let c = conn else { return false }
        c.cork()
        defer { c.uncork() }
        return s.send { c.write($0) }
    }

    /// Bytes from the endpoint: into the session, then acted on.
    func grpcRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        guard c === conn, let s = h2 else { lost(c); return }
        let ok = s.receive(data)
        if credit > 0 { s.consumeConnection(credit); credit = 0 }
        if !ok || !sendFrames() { lost(c); return }
        if inFlight {
            if streamClosed { finish(passed: grpcPassed, c, keep: !goingAway) }
        } else if goingAway {
            drop()   // an idle connection the peer is closing: the next probe opens another
        }
    }

    /// The answer passes: 200, grpc-status 0 (in the trailers, or a trailers-only answer), one
    /// HealthCheckResponse saying SERVING, the stream ended cleanly.
    var grpcPassed: Bool {
        streamError == 0 && status == 200 && grpcStatus == 0 && servingStatus == GRPC.ServingStatus.serving.rawValue
    }

    // MARK: HTTP2SessionDelegate (record only)

    func h2BeginHeaders(_ s: HTTP2Session, stream: Int32) {}

    func h2Header(_ s: HTTP2Session, stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        guard stream == streamID else { return true }
        if name.count == 7 && name.equalsLowercase(":status") {
            status = value.count == 3 ? value.reduce(0) { $0 * 10 + Int($1 &- 0x30) } : 0
        } else if name.count == 11 && name.equalsLowercase("grpc-status") {
            grpcStatus = GRPC.statusCode(value)
        }
        return true
    }

    func h2HeadersComplete(_ s: HTTP2Session, stream: Int32, endStream: Bool) {}

    func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer) {
        credit += data.count
        guard stream == streamID, message.count + data.count <= HealthProbe.maxMessage else {
            if stream == streamID { streamError = 0xFFFF_FFFF }   // too long: not an answer
            return
        }
        message.append(contentsOf: data)
    }

    func h2DataEnd(_ s: HTTP2Session, stream: Int32) {}

    func h2StreamClosed(_ s: HTTP2Session, stream: Int32, errorCode: UInt32) {
        guard stream == streamID else { return }
        streamID = -1
        streamClosed = true
        if errorCode != 0 { streamError = errorCode }
        servingStatus = message.withUnsafeBytes { GRPC.healthCheckStatus($0) }
    }

    func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32) { goingAway = true }

    func h2Settings(_ s: HTTP2Session) {}

    func h2ReadBody(_ s: HTTP2Session, stream: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? {
        guard let body = checker.grpcRequest?.body, body.count <= buf.count else { return (0, true, false) }
        if body.count > 0 { buf.baseAddress!.copyMemory(from: body.baseAddress!, byteCount: body.count) }
        return (body.count, true, false)
    }
}
