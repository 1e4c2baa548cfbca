import RemoraCore
import RemoraIO
import RemoraHTTP

/// HTTP/1.1 keep-alive, optionally pipelined: the request is serialized once per run, every send
/// writes the same bytes; responses are framed by `HTTP1ResponseFramer` (llhttp, nothing stored).
public final class HTTP1Protocol: BenchProtocol, @unchecked Sendable {
    public let name = "HTTP/1.1"
    public let streamsPerConnection: Int
    /// The complete request (head and body), written as is for every request. Immutable.
    let request: UnsafeRawBufferPointer
    let isHEAD: Bool
    /// Per-request timeout, ms (TCPConnection deadlines are in loop milliseconds).
    let timeoutMs: UInt64
    let timeoutNs: UInt64

    /// `bytes`: the request as `serialize` makes it.
    public init(request bytes: [UInt8], method: String, streams: Int, timeoutNs: UInt64) {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, bytes.count), alignment: 16)
        buf.copyBytes(from: bytes)
        request = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(buf)[0..<bytes.count])
        isHEAD = method == "HEAD"
        streamsPerConnection = max(1, streams)
        self.timeoutNs = timeoutNs
        timeoutMs = max(1, (timeoutNs + nsPerMilli - 1) / nsPerMilli)
    }

    deinit { UnsafeMutableRawPointer(mutating: request.baseAddress!).deallocate() }

    public func makeConnection(worker: BenchWorker) -> any BenchConnection {
        HTTP1Connection(worker: worker, proto: self)
    }

    /// The request bytes: `METHOD target HTTP/1.1`, `Host` (unless given), the user's headers in
    /// order, `Content-Length` when there is a body, then the body.
    public static func serialize(method: String, url: BenchURL, headers: [BenchOptions.Header], body: [UInt8]?) -> [UInt8] {
        var s = "\(method) \(url.target) HTTP/1.1\r\n"
        if !headers.contains(where: { $0.name.lowercased() == "host" }) { s += "Host: \(url.authority)\r\n" }
        for h in headers { s += "\(h.name): \(h.value)\r\n" }
        if let body { s += "Content-Length: \(body.count)\r\n" }
        s += "\r\n"
        var out = Array(s.utf8)
        if let body { out += body }
        return out
    }
}

/// One HTTP/1.1 connection: a FIFO of in-flight requests (pipelining), one deadline for the
/// oldest. Nothing is allocated per request: the FIFO is two fixed arrays sized to the depth, the
/// request bytes are shared, the parser keeps no header.
final class HTTP1Connection: BenchConnection, TCPConnectionDelegate {
    unowned(unsafe) let worker: BenchWorker
    let proto: HTTP1Protocol
    let tcp: TCPConnection
    let parser: HTTP1ResponseFramer
    /// Pipelining depth, ≥ 1.
    let depth: Int
    /// In-flight requests, oldest at `head`: latency origin and actual send time, ns.
    let origins: UnsafeMutablePointer<UInt64>
    let sents: UnsafeMutablePointer<UInt64>
    var head = 0
    var inFlight = 0
    var connected = false
    /// False once a response said the connection ends (Connection: close, HTTP/1.0, 101).
    var keepAlive = true
    var closeRequested = false
    var aborted = false
    var connectFailed = false
    var closedByServer = false
    /// What the requests still in flight when the socket closes are counted as.
    var failKind: BenchErrorKind?
    /// Inside `connectionRead` (closing is deferred until the parser has returned).
    var inRead = false
    /// Time of the current read, ns.
    var now: UInt64 = 0

    init(worker: BenchWorker, proto: HTTP1Protocol) {
        self.worker = worker
        self.proto = proto
        depth = proto.streamsPerConnection
        origins = .allocate(capacity: depth)
        sents = .allocate(capacity: depth)
        tcp = TCPConnection(loop: worker.loop)
        parser = HTTP1ResponseFramer(isHEAD: proto.isHEAD)
        tcp.delegate = self
        tcp.owner = self   // kept alive until the socket's close callback
    }

    deinit {
        origins.deallocate()
        sents.deallocate()
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
        @inline(__always) get { connected && keepAlive && !closeRequested && failKind == nil && !tcp.isClosing ? depth - inFlight : 0 }
    }

    @inline(__always)
    func send(origin: UInt64, now: UInt64) -> Int {
        var i = head + inFlight
        if i >= depth { i -= depth }
        origins[i] = origin
        sents[i] = now
        inFlight += 1
        if inFlight == 1 { tcp.setDeadline(after: proto.timeoutMs) }
        if !tcp.write(proto.request) { fail(.reset) }
        return proto.request.count
    }

    func closeWhenIdle() {
        closeRequested = true
        if inFlight == 0 && !inRead { tcp.close() }
    }

    func abort() {
        aborted = true
        tcp.close()
    }

    /// Counts what is in flight as `kind` (when the socket has closed) and closes.
    func fail(_ kind: BenchErrorKind) {
        if failKind == nil { failKind = kind }
        if !inRead { tcp.close() }
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        guard status == 0 else {
            connectFailed = true
            c.close()
            return
        }
        connected = true
        c.clearDeadline()
        c.startReading()
        if closeRequested { c.close(); return }
        c.cork()
        worker.connectionUp(self, now: monotonicNanos())
        c.uncork()
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        now = monotonicNanos()
        worker.noteRead(data.count, now: now)
        inRead = true
        c.cork()
        var offset = 0
        var parseError = false
        parsing: while failKind == nil {
            switch parser.next(data, &offset) {
            case .needMore: break parsing
            case .error: parseError = true; break parsing
            case let .response(status, keepAlive): responded(status: status, keepAlive: keepAlive)
            }
        }
        c.uncork()
        inRead = false
        if parseError {
            fail(.parse)
        } else if failKind != nil {
            c.close()
        } else if !keepAlive {
            closedByServer = true
            if inFlight > 0 { fail(.reset) } else { c.close() }   // pipelined requests past the last response are lost
        } else if closeRequested && inFlight == 0 {
            c.close()
        }
    }

    func connectionEOF(_ c: TCPConnection) {
        closedByServer = true
        keepAlive = false   // nothing more is sent on it, even from a response completed below
        if inFlight > 0 {
            now = monotonicNanos()
            inRead = true
            if case let .response(status, _) = parser.finish() {   // a response delimited by the connection's end
                responded(status: status, keepAlive: false)
            }
            inRead = false
            if inFlight > 0 { fail(.reset) }   // cut short: mid-response or before it began
        }
        c.close()
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) {
        if connected { fail(.reset) } else { connectFailed = true }
        c.close()
    }

    func connectionTimeout(_ c: TCPConnection) {
        if connected { fail(.timeout) } else { connectFailed = true }
        c.close()
    }

    func connectionClosed(_ c: TCPConnection) {
        if !aborted, let kind = failKind {
            while inFlight > 0 {
                let origin = origins[head]
                head += 1
                if head == depth { head = 0 }
                inFlight -= 1
                worker.failed(kind, origin: origin)
            }
        }
        worker.connectionGone(self, wasConnected: connected, connectFailed: connectFailed,
                              closedByServer: closedByServer && !aborted, inFlightDropped: inFlight)
    }

    /// A response is complete: its request leaves the FIFO.
    func responded(status: Int, keepAlive: Bool) {
        guard inFlight > 0, failKind == nil else {
            if failKind == nil {   // a response nobody asked for: the connection is out of step
                failKind = .parse
                worker.protocolError(.parse, now: now)
            }
            return
        }
        let origin = origins[head]
        let sent = sents[head]
        head += 1
        if head == depth { head = 0 }
        inFlight -= 1
        if !keepAlive { self.keepAlive = false }
        if inFlight > 0 {
            // The next oldest request's deadline: its send time + timeout.
            let due = sents[head] &+ proto.timeoutNs
            tcp.setDeadline(after: due > now ? (due - now + nsPerMilli - 1) / nsPerMilli : 0)
        } else {
            tcp.clearDeadline()
        }
        worker.responded(self, origin: origin, sent: sent, now: now, status: status)
    }
}
