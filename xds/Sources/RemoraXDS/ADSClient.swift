import Glibc
import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy
import RemoraTLS
import SwiftProtobuf

/// gRPC framing of one message: a flag byte (0: not compressed), the length (4 bytes, big endian), the bytes.
public struct GRPCFramer {
    var buffer: [UInt8] = []
    /// A message may not exceed this (64 MiB, beyond any snapshot we expect).
    public var maxMessage = 64 << 20
    public init() {}

    public static func frame(_ bytes: [UInt8]) -> [UInt8] {
        let n = UInt32(bytes.count)
        return [0, UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + bytes
    }

    public enum Next: Equatable { case message([UInt8]), none, error(String) }

    public mutating func append(_ data: UnsafeRawBufferPointer) { buffer.append(contentsOf: data) }

    /// The next whole message, if one has arrived.
    public mutating func next() -> Next {
        guard buffer.count >= 5 else { return .none }
        guard buffer[0] == 0 else { return .error("compressed gRPC messages are not supported") }
        let n = Int(buffer[1]) << 24 | Int(buffer[2]) << 16 | Int(buffer[3]) << 8 | Int(buffer[4])
        guard n <= maxMessage else { return .error("a message of \(n) bytes (at most \(maxMessage))") }
        guard buffer.count >= 5 + n else { return .none }
        let m = Array(buffer[5..<(5 + n)])
        buffer.removeFirst(5 + n)
        return .message(m)
    }
}

/// The ADS stream: `envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`
/// over HTTP/2 (gRPC, one bidirectional stream), cleartext or TLS (RemoraTLS, the proxy's own client side:
/// the server's certificate verified against a CA and, if given, its SANs; an optional client certificate
/// for mutual TLS, as istiod's port 15012 wants), on Remora's own libuv loop and nghttp2 session
/// (RemoraIO, RemoraHTTP). Carries out `ADSState`'s actions; when the stream or the connection ends it
/// reconnects after a capped exponential backoff with full jitter (RemoraPolicy's `Backoff`: 100 ms
/// doubling to 10 s, reset by a response), and the state keeps the accepted resources meanwhile.
public final class ADSClient: TCPConnectionDelegate, HTTP2SessionDelegate {
    let loop: EventLoop
    let address: SocketAddress
    let authority: String
    /// TLS toward the server (nil: h2c). Its files are read again at every connect, so a rotated client
    /// certificate is used from the next connection on.
    let tls: ClusterTLSConfig?
    public var state: ADSState
    /// Called with each new configuration.
    public var onPublish: (String, String) -> Void = { _, _ in }
    public var log: (String) -> Void = { _ in }
    /// Where SDS secrets are written (nil: not written; tests).
    public var secretFiles: SecretFiles?

    var conn: TCPConnection?
    var h2: HTTP2Session?
    var stream: Int32 = -1
    var outgoing: [UInt8] = []
    var outgoingOffset = 0
    var framer = GRPCFramer()
    var grpcStatus: String?
    var grpcMessage = ""
    var inRead = false
    /// Messages and stream events gathered inside nghttp2's callbacks, handled after `receive` returns.
    var received: [[UInt8]] = []
    var streamEnded = false
    var frameError: String?
    var backoff = Backoff(base: 100, cap: 10_000)
    var rng = FastRandom(seed: UInt64(UInt32(bitPattern: getpid())) &* 0x9E37_79B9_7F4A_7C15 | 1)
    let timer: LoopTimer
    var stopped = false
    public private(set) var connects = 0
    public private(set) var connected = false

    public init(loop: EventLoop, address: SocketAddress, authority: String, tls: ClusterTLSConfig? = nil, state: ADSState) {
        self.loop = loop
        self.address = address
        self.authority = authority
        self.tls = tls
        self.state = state
        timer = LoopTimer(loop: loop)
    }

    public func start() { connect() }

    public func stop() {
        stopped = true
        timer.close()
        teardown()
    }

    // MARK: connection

    func connect() {
        guard !stopped else { return }
        connects += 1
        let c = TCPConnection(loop: loop)
        c.delegate = self
        c.owner = self
        conn = c
        if let tls {
            let layer: TLSSocket
            do {
                let ctx = try TLSClientContext(cluster: "xds", config: tls, http2: true)
                guard let l = TLSSocket(client: ctx) else { return lost("TLS: cannot make a connection (OpenSSL)") }
                layer = l
            } catch {
                return lost("TLS: --xds-\(error.field == "ca" ? "ca" : error.field == "cert" ? "cert" : "key"): \(error.message)")
            }
            c.transportSocket = layer
            c.startReading()   // the handshake reads before the stream exists; bytes after it wait for h2
        }
        if c.connect(to: address) != 0 { lost("connect to \(address) failed at once") }
    }

    func teardown() {
        if let c = conn { conn = nil; c.delegate = nil; c.close() }
        h2 = nil
        stream = -1
        connected = false
        outgoing = []; outgoingOffset = 0
        framer = GRPCFramer()
        received = []
        streamEnded = false
        grpcStatus = nil; grpcMessage = ""
    }

    /// The stream or the connection is gone: keep the accepted state, try again after the backoff.
    func lost(_ why: String) {
        let was = connected
        teardown()
        guard !stopped else { return }
        let delay = backoff.next(random: &rng)
        log("ADS stream to \(address) \(was ? "lost" : "not established"): \(why); the last good configuration keeps serving; retrying in \(delay) ms")
        timer.start(after: delay) { [unowned self] in self.connect() }
    }

    public func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        guard c === conn else { return }
        if status != 0 {
            if status == TLSSocket.handshakeFailed, let ts = c.transportSocket as? TLSSocket {
                return lost("TLS handshake: \(ts.failure ?? "failed")")
            }
            return lost("connect: \(String(cString: strerror(-status)))")
        }
        let s = HTTP2Session(role: .client, settings: HTTP2Settings())
        s.delegate = self
        h2 = s
        connected = true
        let headers: [(String, String)] = [("content-type", "application/grpc"), ("te", "trailers"),
                                           ("user-agent", "remora-xds")]
        let id = withHeaderRefs(headers) { refs in
            "POST".withRawBytes { m in authority.withRawBytes { a in
                (state.mode == .delta ? "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
                                      : "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources").withRawBytes { p in
                    s.submitRequest(method: m, scheme: tls == nil ? "http" : "https", authority: a, path: p, headers: refs, clean: true,
                                    hasBody: true, streamData: nil)
                } } }
        }
        guard id > 0 else { return lost("cannot open the stream") }
        stream = id
        c.startReading()
        perform(state.streamStarted())
        flush()
    }

    public func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        guard c === conn, let s = h2 else { return }
        inRead = true
        let ok = s.receive(data)
        inRead = false
        // Credit back for what was read: the messages are decoded below, nothing stays buffered but a
        // partial message.
        s.consumeConnection(receivedBytes)
        if stream > 0 { s.consume(stream: stream, receivedBytes) }
        receivedBytes = 0
        let msgs = received
        received = []
        for m in msgs {
            let actions: [ADSState.Action]
            do {
                if state.mode == .delta {
                    actions = state.receive(delta: try DeltaDiscoveryResponse(serializedBytes: m))
                } else {
                    actions = state.receive(try DiscoveryResponse(serializedBytes: m))
                }
            } catch {
                return lost("a response that does not decode: \(error)")
            }
            backoff.reset()
            perform(actions)
            guard conn != nil else { return }
        }
        if let e = frameError { frameError = nil; return lost(e) }
        if streamEnded {
            return lost("the server ended the stream (grpc-status \(grpcStatus ?? "none")\(grpcMessage.isEmpty ? "" : ": " + grpcMessage))")
        }
        if !ok { flush(); return lost("HTTP/2 protocol error") }
        flush()
    }

    var receivedBytes = 0

    public func connectionEOF(_ c: TCPConnection) { if c === conn { lost("the server closed the connection") } }
    public func connectionError(_ c: TCPConnection, _ code: Int32) { if c === conn { lost("connection error \(code)") } }
    public func connectionClosed(_ c: TCPConnection) {}

    func perform(_ actions: [ADSState.Action]) {
        for a in actions {
            switch a {
            case .send(let req):
                guard let bytes: [UInt8] = try? req.serializedBytes() else { continue }
                outgoing += GRPCFramer.frame(bytes)
                if !inRead, stream > 0 { h2?.resumeData(stream: stream) }
            case .sendDelta(let req):
                guard let bytes: [UInt8] = try? req.serializedBytes() else { continue }
                outgoing += GRPCFramer.frame(bytes)
                if !inRead, stream > 0 { h2?.resumeData(stream: stream) }
            case let .publish(yaml, versions):
                onPublish(yaml, versions)
            case .writeSecrets(let files):
                guard let sf = secretFiles else { continue }
                for e in sf.write(files) { log("SDS: \(e) (the proxy keeps the previous file)") }
                log("SDS: wrote \(files.map { String($0.path.split(separator: "/").last ?? "") }.joined(separator: ", "))")
            case .log(let s):
                log(s)
            }
        }
    }

    func flush() {
        guard let s = h2, let c = conn else { return }
        if stream > 0 && outgoingOffset < outgoing.count { s.resumeData(stream: stream) }
        _ = s.send { bytes in c.write(bytes) }
    }

    // MARK: HTTP2SessionDelegate (record; act after `receive` returns)

    public func h2BeginHeaders(_ s: HTTP2Session, stream: Int32) {}

    public func h2Header(_ s: HTTP2Session, stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        let n = String(decoding: name, as: UTF8.self)
        if n == "grpc-status" { grpcStatus = String(decoding: value, as: UTF8.self) }
        if n == "grpc-message" { grpcMessage = String(decoding: value, as: UTF8.self) }
        if n == ":status" && String(decoding: value, as: UTF8.self) != "200" { frameError = "HTTP status \(String(decoding: value, as: UTF8.self))" }
        return true
    }

    public func h2HeadersComplete(_ s: HTTP2Session, stream: Int32, endStream: Bool) {
        if endStream { streamEnded = true }
    }

    public func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer) {
        receivedBytes += data.count
        framer.append(data)
        while true {
            switch framer.next() {
            case .message(let m): received.append(m)
            case .none: return
            case .error(let e): frameError = e; return
            }
        }
    }

    public func h2DataEnd(_ s: HTTP2Session, stream: Int32) { streamEnded = true }
    public func h2StreamClosed(_ s: HTTP2Session, stream: Int32, errorCode: UInt32) {
        if !streamEnded { streamEnded = true; if grpcStatus == nil { grpcStatus = "reset \(errorCode)" } }
    }
    public func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32) {}
    public func h2Settings(_ s: HTTP2Session) {}

    public func h2ReadBody(_ s: HTTP2Session, stream: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? {
        let left = outgoing.count - outgoingOffset
        guard left > 0 else { return nil }
        let n = min(left, buf.count)
        outgoing.withUnsafeBytes { src in
            buf.baseAddress!.copyMemory(from: src.baseAddress! + outgoingOffset, byteCount: n)
        }
        outgoingOffset += n
        if outgoingOffset == outgoing.count { outgoing.removeAll(keepingCapacity: true); outgoingOffset = 0 }
        return (n, false, false)
    }
}

extension String {
    func withRawBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        var s = self
        return s.withUTF8 { body(UnsafeRawBufferPointer($0)) }
    }
}

/// `body` with `fields` as HeaderRefs (names and values kept alive meanwhile).
func withHeaderRefs<R>(_ fields: [(String, String)], _ body: (UnsafeBufferPointer<HeaderRef>) -> R) -> R {
    var storage: [UInt8] = []
    var spans: [(Int, Int, Int, Int)] = []
    for (n, v) in fields {
        let ns = storage.count; storage += Array(n.utf8)
        let vs = storage.count; storage += Array(v.utf8)
        spans.append((ns, n.utf8.count, vs, v.utf8.count))
    }
    return storage.withUnsafeBytes { raw in
        let refs = spans.map { s in
            HeaderRef(name: UnsafeRawBufferPointer(rebasing: raw[s.0..<(s.0 + s.1)]),
                      value: UnsafeRawBufferPointer(rebasing: raw[s.2..<(s.2 + s.3)]))
        }
        return refs.withUnsafeBufferPointer { body($0) }
    }
}
