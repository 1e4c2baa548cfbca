import RemoraCore
import RemoraHTTP
import RemoraIO

/// HTTP/2 with prior knowledge (h2c) and gRPC over it (unary and streaming calls), on the data
/// plane's `HTTP2Session` (nghttp2) as a client. The header block and the request body (gRPC: the
/// length-prefixed message) are built once per run and shared by every stream of every connection;
/// a call sending several messages sends that one message several times.
public final class HTTP2Protocol: BenchProtocol, @unchecked Sendable {
    public let name: String
    public let streamsPerConnection: Int
    public let isGRPC: Bool
    /// gRPC: the messages each call sends (the request body is `body` this many times); else 1.
    let messagesPerCall: Int
    /// gRPC bidi: each message waits for the reply to the one before (ping-pong); latency is
    /// recorded per message round trip.
    let pingPong: Bool
    let timeoutMs: UInt64
    let timeoutNs: UInt64
    /// One allocation holding method, authority, path, every header name and value, and the body.
    let storage: UnsafeMutableRawBufferPointer
    let method: UnsafeRawBufferPointer
    let authority: UnsafeRawBufferPointer
    let path: UnsafeRawBufferPointer
    let headers: UnsafeMutableBufferPointer<HeaderRef>
    /// nil: no body (no DATA frame, END_STREAM on HEADERS).
    let body: UnsafeRawBufferPointer?

    /// h2c (`grpc` nil): `headers` as given (names lowercased here); a Host header becomes `:authority`.
    /// gRPC: `path` is `/pkg.Service/Method`, `body` the serialized message (prefixed here), sent
    /// `messagesPerCall` times per call.
    public init(grpc mode: BenchOptions.GRPCMode?, messagesPerCall: Int = 1, method: String, url: BenchURL,
                headers hs: [BenchOptions.Header], body rawBody: [UInt8]?, streams: Int, timeoutNs: UInt64) {
        let grpc = mode != nil
        isGRPC = grpc
        self.messagesPerCall = grpc ? max(1, messagesPerCall) : 1
        pingPong = mode == .bidi
        name = grpc ? "gRPC (HTTP/2, h2c)" : "HTTP/2 (h2c)"
        streamsPerConnection = max(1, streams)
        self.timeoutNs = timeoutNs
        timeoutMs = max(1, (timeoutNs + nsPerMilli - 1) / nsPerMilli)

        var authorityText = url.authority
        var fields: [(String, String)] = []
        for h in hs {
            let n = h.name.lowercased()
            if n == "host" { authorityText = h.value; continue }
            fields.append((n, h.value))
        }
        var bodyBytes = rawBody
        if grpc {
            let msg = rawBody ?? []
            let n = UInt32(msg.count)
            bodyBytes = [0, UInt8(n >> 24), UInt8((n >> 16) & 0xFF), UInt8((n >> 8) & 0xFF), UInt8(n & 0xFF)] + msg
            if !fields.contains(where: { $0.0 == "content-type" }) { fields.insert(("content-type", "application/grpc"), at: 0) }
            if !fields.contains(where: { $0.0 == "te" }) { fields.insert(("te", "trailers"), at: 1) }
        } else if let b = bodyBytes {
            fields.append(("content-length", String(b.count)))
        }

        var flat: [UInt8] = []
        var ranges: [Range<Int>] = []
        func put(_ s: String) { let a = flat.count; flat += Array(s.utf8); ranges.append(a..<flat.count) }
        put(method); put(authorityText); put(url.target)
        for (n, v) in fields { put(n); put(v) }
        let bodyStart = flat.count
        if let b = bodyBytes { flat += b }
        storage = .allocate(byteCount: max(1, flat.count), alignment: 16)
        storage.copyBytes(from: flat)
        let base = UnsafeRawBufferPointer(storage)
        func slice(_ r: Range<Int>) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: base[r]) }
        self.method = slice(ranges[0])
        authority = slice(ranges[1])
        path = slice(ranges[2])
        headers = .allocate(capacity: max(1, fields.count))
        for i in 0..<fields.count {
            headers[i] = HeaderRef(name: slice(ranges[3 + 2 * i]), value: slice(ranges[4 + 2 * i]))
        }
        // Hop-by-hop fields (Connection and those it names, TE but trailers, ...) are dropped once
        // here, not by every request's submit: the list is clean (names lowercase, no Host either).
        let all = UnsafeBufferPointer(rebasing: headers[0..<fields.count])
        let hop = HopFilter(all, keepTETrailers: true)
        let kept = all.indices.filter { !hop.isHopByHop(all, $0) }
        for (k, i) in kept.enumerated() { headers[k] = headers[i] }
        headerCount = kept.count
        body = bodyBytes.map { _ in slice(bodyStart..<flat.count) }
        bodyLength = (bodyBytes?.count ?? 0) * self.messagesPerCall
    }

    let headerCount: Int
    /// Bytes of DATA each request sends: the body, `messagesPerCall` times.
    let bodyLength: Int

    deinit {
        storage.deallocate()
        headers.deallocate()
    }

    var headerList: UnsafeBufferPointer<HeaderRef> {
        UnsafeBufferPointer(rebasing: UnsafeBufferPointer(headers)[0..<headerCount])
    }

    public func makeConnection(worker: BenchWorker) -> any BenchConnection {
        HTTP2Connection(worker: worker, proto: self)
    }
}

/// One HTTP/2 connection carrying up to `--streams` concurrent streams (fewer when the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS says so). Per-stream state lives in fixed tables indexed by a
/// slot number (the stream's user data); nothing is allocated per request or per message. Frames
/// queued by the requests and responses of one callback go out in one corked write at its end
/// (sends from the worker's timers are flushed by the worker after its tick).
///
/// gRPC: a call ends at the server's trailers (or its END_STREAM), its reply messages counted as
/// they arrive (`GRPCMessageFramer`). Bidi calls hold their next message back (the body source
/// defers) until the reply to the last one is in. What a callback decides about a stream — resume
/// its body, or end it because the server already ended the call — is done after `receive`
/// returns, never from inside nghttp2.
final class HTTP2Connection: BenchConnection, TCPConnectionDelegate, HTTP2SessionDelegate {
    unowned(unsafe) let worker: BenchWorker
    let proto: HTTP2Protocol
    let tcp: TCPConnection
    let h2: HTTP2Session
    let depth: Int
    // Per-slot tables.
    let origins: UnsafeMutablePointer<UInt64>
    let sents: UnsafeMutablePointer<UInt64>
    let streamIDs: UnsafeMutablePointer<Int32>
    let bodyOffsets: UnsafeMutablePointer<Int>
    let statuses: UnsafeMutablePointer<Int>
    let grpcStatuses: UnsafeMutablePointer<Int>
    let ended: UnsafeMutablePointer<Bool>
    /// gRPC: each call's message state.
    let calls: UnsafeMutablePointer<GRPCCall>
    /// Some call has an action due (`GRPCCall.action`).
    var actionsDue = false
    /// Free slot numbers (a stack).
    let freeList: UnsafeMutablePointer<Int>
    var freeCount: Int
    var active = 0
    var connected = false
    var goingAway = false
    var closeRequested = false
    var aborted = false
    var connectFailed = false
    var closedByServer = false
    var failKind: BenchErrorKind?
    /// Inside one of our I/O callbacks: flush at its end, never close mid-way.
    var inCallback = false
    /// Handed to the worker for a flush after its tick.
    var flushDeferred = false
    var now: UInt64 = 0
    /// DATA bytes received whose connection-level credit goes back at the next flush.
    var connectionCredit = 0
    /// The stream a callback last looked up, and its slot: a stream's frames come one after the other.
    var lastStream: Int32 = -1
    var lastSlot = 0

    init(worker: BenchWorker, proto: HTTP2Protocol) {
        self.worker = worker
        self.proto = proto
        depth = proto.streamsPerConnection
        origins = .allocate(capacity: depth)
        sents = .allocate(capacity: depth)
        streamIDs = .allocate(capacity: depth)
        bodyOffsets = .allocate(capacity: depth)
        statuses = .allocate(capacity: depth)
        grpcStatuses = .allocate(capacity: depth)
        ended = .allocate(capacity: depth)
        calls = .allocate(capacity: depth)
        calls.initialize(repeating: GRPCCall(), count: depth)
        freeList = .allocate(capacity: depth)
        for i in 0..<depth { freeList[i] = depth - 1 - i; streamIDs[i] = -1 }
        freeCount = depth
        tcp = TCPConnection(loop: worker.loop)
        h2 = HTTP2Session(role: .client, settings: HTTP2Settings(initialStreamWindow: 16 << 20, connectionWindow: 64 << 20))
        h2.delegate = self
        tcp.delegate = self
        tcp.owner = self
    }

    deinit {
        origins.deallocate(); sents.deallocate(); streamIDs.deallocate(); bodyOffsets.deallocate()
        statuses.deallocate(); grpcStatuses.deallocate(); ended.deallocate(); calls.deallocate(); freeList.deallocate()
    }

    // MARK: BenchConnection

    func connect(to address: SocketAddress) {
        if tcp.connect(to: address) != 0 {
            connectFailed = true
            tcp.close()
            return
        }
        tcp.setDeadline(after: proto.timeoutMs)
    }

    var freeSlots: Int {
        @inline(__always) get {
            guard connected && !goingAway && !closeRequested && failKind == nil && !tcp.isClosing else { return 0 }
            let limit = min(depth, h2.remoteMaxConcurrentStreams)
            return limit > active ? limit - active : 0
        }
    }

    func send(origin: UInt64, now: UInt64) -> Int {
        guard freeCount > 0 else { fail(.reset); return 0 }
        freeCount -= 1
        let slot = freeList[freeCount]
        origins[slot] = origin
        sents[slot] = now
        bodyOffsets[slot] = 0
        statuses[slot] = 0
        grpcStatuses[slot] = 17   // "missing" until a grpc-status field says otherwise
        ended[slot] = false
        calls[slot] = GRPCCall()
        let id = h2.submitRequest(method: proto.method, scheme: "http", authority: proto.authority, path: proto.path,
                                  headers: proto.headerList, clean: true, hasBody: proto.body != nil,
                                  streamData: UnsafeMutableRawPointer(bitPattern: slot + 1))
        if id < 0 {
            freeList[freeCount] = slot
            freeCount += 1
            worker.failed(.reset, origin: origin)   // counted; the connection takes no more
            goingAway = true
            return 0
        }
        streamIDs[slot] = id
        active += 1
        if active == 1 { tcp.setDeadline(after: proto.timeoutMs) }
        if !inCallback && !flushDeferred {
            flushDeferred = true
            worker.deferFlush(self)
        }
        return 0   // bytes are counted when written (`flush`), frames being shared between requests
    }

    func flush() {
        flushDeferred = false
        guard !tcp.isClosing else { return }
        h2.consumeConnection(connectionCredit)
        connectionCredit = 0
        var written = 0
        // Streams may close while their last frame goes out (our END_STREAM or RST_STREAM after
        // the server's END_STREAM): the socket closes, if it must, after the write, not amid it.
        inCallback = true
        tcp.cork()
        let ok = h2.send(until: { tcp.isAboveHighWatermark }) { written += $0.count; return tcp.write($0) }
        tcp.uncork()
        inCallback = false
        if written > 0 { worker.noteWritten(written, now: monotonicNanos()) }
        if !ok { fail(.reset) }
        afterCallback()
    }

    func closeWhenIdle() {
        closeRequested = true
        if active == 0 && !inCallback { tcp.close() }
    }

    func abort() {
        aborted = true
        tcp.close()
    }

    func fail(_ kind: BenchErrorKind) {
        if failKind == nil { failKind = kind }
        if !inCallback { tcp.close() }
    }

    @inline(__always)
    func slot(_ stream: Int32) -> Int? {
        if stream == lastStream && streamIDs[lastSlot] == stream { return lastSlot }
        guard let p = h2.streamData(stream) else { return nil }
        let s = Int(bitPattern: p) - 1
        guard s >= 0 && s < depth && streamIDs[s] == stream else { return nil }
        lastStream = stream
        lastSlot = s
        return s
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        guard status == 0 else {
            connectFailed = true
            c.close()
            return
        }
        // Up for the worker once the server's SETTINGS arrive (its stream limit known): until
        // then nghttp2 would assume 100 streams and the server refuse those above its limit.
        // The connect deadline runs on until then.
        c.startReading()
        if closeRequested { c.close(); return }
        flush()   // the preface and our SETTINGS
    }

    /// The server's SETTINGS: the connection is up; its first requests go out with the ACK.
    func h2Settings(_ s: HTTP2Session) {
        guard !connected else { return }
        connected = true
        tcp.clearDeadline()
        worker.connectionUp(self, now: monotonicNanos())
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        now = monotonicNanos()
        worker.noteRead(data.count, now: now)
        inCallback = true
        let ok = h2.receive(data)
        inCallback = false
        if actionsDue { runDueActions() }
        flush()
        if !ok { if connected { fail(.parse) } else { connectFailed = true; tcp.close() } }
    }

    func afterCallback() {
        if failKind != nil { tcp.close() }
        else if (closeRequested || goingAway) && active == 0 { tcp.close() }
    }

    func connectionDrained(_ c: TCPConnection) { flush() }

    func connectionEOF(_ c: TCPConnection) {
        if connected { closedByServer = true } else { connectFailed = true }
        if active > 0 { fail(.reset) }
        c.close()
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) {
        if connected { fail(.reset) } else { connectFailed = true }
        c.close()
    }

    /// The deadline set when the first request of a busy spell went out has passed (it is not
    /// moved as requests complete: that would mean a search per response). Fails the connection if
    /// the oldest request in flight is past its timeout; else sets the deadline to when it will be.
    func connectionTimeout(_ c: TCPConnection) {
        if connected {
            guard active > 0 else { return }
            var oldest = UInt64.max
            for i in 0..<depth where streamIDs[i] >= 0 && sents[i] < oldest { oldest = sents[i] }
            let due = oldest &+ proto.timeoutNs
            let t = monotonicNanos()
            if due > t {
                c.setDeadline(after: (due - t + nsPerMilli - 1) / nsPerMilli)
                return
            }
            fail(.timeout)
        } else {
            connectFailed = true
        }
        c.close()
    }

    func connectionClosed(_ c: TCPConnection) {
        var dropped = 0
        for i in 0..<depth where streamIDs[i] >= 0 {
            streamIDs[i] = -1
            active -= 1
            if aborted { dropped += 1 } else { worker.failed(failKind ?? .reset, origin: origins[i]) }
        }
        h2.delegate = nil
        worker.connectionGone(self, wasConnected: connected, connectFailed: connectFailed,
                              closedByServer: closedByServer && !aborted, inFlightDropped: dropped)
    }

    // MARK: HTTP2SessionDelegate

    func h2BeginHeaders(_ s: HTTP2Session, stream: Int32) {}

    func h2Header(_ s: HTTP2Session, stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
        guard let i = slot(stream) else { return true }
        if name.count == 7 && name.equalsLowercase(":status") {
            var v = 0
            for ch in value where ch >= 0x30 && ch <= 0x39 { v = v * 10 + Int(ch &- 0x30) }
            statuses[i] = v
        } else if name.count == 11 && name.equalsLowercase("grpc-status") {
            var v = 0
            for ch in value where ch >= 0x30 && ch <= 0x39 { v = v * 10 + Int(ch &- 0x30) }
            grpcStatuses[i] = v
        }
        return true
    }

    func h2HeadersComplete(_ s: HTTP2Session, stream: Int32, endStream: Bool) {
        guard let i = slot(stream) else { return }
        if statuses[i] >= 100 && statuses[i] < 200 && !endStream { statuses[i] = 0; return }   // interim
        if endStream { serverEnded(i) }
    }

    func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer) {
        connectionCredit += data.count
        h2.consume(stream: stream, data.count)
        guard proto.isGRPC, let i = slot(stream) else { return }
        let n = calls[i].framer.feed(data)
        if n == 0 { return }
        worker.noteMessages(sent: 0, received: n, origin: origins[i])
        guard calls[i].awaitingReply else { return }
        // Bidi: the reply to the message in flight; the next message goes now.
        calls[i].awaitingReply = false
        let start = calls[i].messageStart
        worker.messageRoundTrip(origin: origins[i], start: start == 0 ? origins[i] : start,
                                sent: start == 0 ? sents[i] : start, now: now)
        calls[i].messageStart = now
        if bodyOffsets[i] < proto.bodyLength { due(i, .resume) }
    }

    func h2DataEnd(_ s: HTTP2Session, stream: Int32) {
        if let i = slot(stream) { serverEnded(i) }
    }

    /// The server's END_STREAM. gRPC: the call is over; a body not yet all sent (a bidi call
    /// waiting for a reply that will not come, messages held back by flow control) is cut short
    /// with RST_STREAM(NO_ERROR), so the stream closes and the call counts as answered.
    func serverEnded(_ i: Int) {
        ended[i] = true
        if proto.isGRPC && bodyOffsets[i] < proto.bodyLength { due(i, .finish) }
    }

    func due(_ i: Int, _ a: GRPCCall.Action) {
        calls[i].action = a
        actionsDue = true
    }

    /// Carries out what the callbacks of one `receive` decided (not from inside nghttp2).
    func runDueActions() {
        actionsDue = false
        for i in 0..<depth where calls[i].action != .none {
            let a = calls[i].action
            calls[i].action = .none
            let id = streamIDs[i]
            guard id >= 0 else { continue }
            if a == .resume { h2.resumeData(stream: id) } else { h2.reset(stream: id, code: 0) }
        }
    }

    func h2StreamClosed(_ s: HTTP2Session, stream: Int32, errorCode: UInt32) {
        guard let i = slot(stream) else { return }
        streamIDs[i] = -1
        active -= 1
        freeList[freeCount] = i
        freeCount += 1
        let origin = origins[i]
        let sent = sents[i]
        if active == 0 { tcp.clearDeadline() }
        if ended[i] && errorCode == 0 && calls[i].framer.atBoundary {
            worker.responded(self, origin: origin, sent: sent, now: now, status: statuses[i],
                             grpcStatus: proto.isGRPC ? grpcStatuses[i] : -1, latency: !proto.pingPong)
        } else {
            // Reset, or ended in the middle of a gRPC message; the connection carries on.
            worker.failed(ended[i] && errorCode == 0 ? .parse : .reset, origin: origin, on: self, now: now)
        }
    }

    func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32) {
        goingAway = true
        closedByServer = true
    }


    /// The request body: `body` `messagesPerCall` times (gRPC client-stream: several messages
    /// per DATA frame when they fit); bidi: one message, then nothing until its reply is in.
    func h2ReadBody(_ s: HTTP2Session, stream: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? {
        guard let body = proto.body, let i = slot(stream) else { return (0, true, false) }
        if calls[i].awaitingReply { return nil }   // resumed by the reply (or ended by the server)
        let len = body.count
        let off = bodyOffsets[i]
        let limit = proto.pingPong ? off - off % len + len : proto.bodyLength
        var end = off
        while end < limit && end - off < buf.count {
            let k = end % len
            let n = min(len - k, limit - end, buf.count - (end - off))
            (buf.baseAddress! + (end - off)).copyMemory(from: body.baseAddress! + k, byteCount: n)
            end += n
        }
        bodyOffsets[i] = end
        if proto.isGRPC && end / len > off / len {
            worker.noteMessages(sent: end / len - off / len, received: 0, origin: origins[i])
            if proto.pingPong { calls[i].awaitingReply = true }
        }
        return (end - off, end == proto.bodyLength, false)
    }
}

/// A gRPC call's state beside its stream's (one per slot, reset by each send).
struct GRPCCall {
    var framer = GRPCMessageFramer()
    /// Bidi: the last message written waits for its reply; the next one is held back until then.
    var awaitingReply = false
    /// Bidi: when the message awaiting its reply was written (the previous reply's arrival); 0 for
    /// a call's first message, timed from the call's own origin and send time.
    var messageStart: UInt64 = 0
    /// What to do with the stream once `receive` has returned.
    var action = Action.none

    enum Action {
        case none
        /// Bidi: the body source has its next message.
        case resume
        /// The server ended the call before the request body was all sent: end the stream.
        case finish
    }
}
