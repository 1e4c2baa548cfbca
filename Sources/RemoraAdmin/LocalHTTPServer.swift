import RemoraCore
import RemoraHTTP
import RemoraIO

/// A small HTTP/1.1 server answering from a handler on the calling loop: the admin endpoints, the
/// demo backends and the control server. Not a data-plane path: it may allocate per request.
///
/// A handler answers at once, or (the deferring form) returns nil and answers later through the
/// `Pending` it was given: a long poll. While an answer is pending, bytes the client pipelines are
/// kept (up to `maxStashBytes`) and parsed after the answer; a client that leaves (EOF, reset) before
/// the answer cancels it (`Pending.onCancel`) and its connection is closed.
public final class LocalHTTPServer: ListenerDelegate {
    public struct Request {
        public let method: String
        /// As received: path and query.
        public let target: String
        /// Header names lowercased, values as received, in order.
        public let headers: [(name: String, value: String)]
        /// The body, de-chunked (at most `maxBodyBytes`).
        public let body: [UInt8]

        public init(method: String, target: String, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
            self.method = method; self.target = target; self.headers = headers; self.body = body
        }

        public var path: Substring { target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0] }
        /// What follows `?` ("" when nothing does).
        public var query: Substring {
            guard let q = target.firstIndex(of: "?") else { return "" }
            return target[target.index(after: q)...]
        }
        /// The first value of header `name` (give it lowercase).
        public func header(_ name: String) -> String? { headers.first { $0.name == name }?.value }
        public var bodyText: String { String(decoding: body, as: UTF8.self) }
    }

    public struct Response {
        public var status: Int
        public var contentType: StaticString
        public var body: String
        /// More header lines, written as given.
        public var headers: [(name: String, value: String)]
        public init(status: Int, contentType: StaticString = "text/plain", body: String,
                    headers: [(name: String, value: String)] = []) {
            self.status = status; self.contentType = contentType; self.body = body; self.headers = headers
        }
    }

    /// A request whose answer comes later (long poll). Answer it once; later calls do nothing.
    public final class Pending {
        weak var session: LocalHTTPSession?
        let keepAlive: Bool
        let headOnly: Bool
        /// True once answered or cancelled.
        public private(set) var isDone = false
        /// Called once if the client goes away (or the server closes) before the answer.
        public var onCancel: (() -> Void)?

        init(session: LocalHTTPSession, keepAlive: Bool, headOnly: Bool) {
            self.session = session; self.keepAlive = keepAlive; self.headOnly = headOnly
        }

        public func answer(_ r: Response) {
            guard !isDone else { return }
            isDone = true
            onCancel = nil
            session?.answered(self, r)
        }

        func cancel() {
            guard !isDone else { return }
            isDone = true
            let c = onCancel
            onCancel = nil
            c?()
        }
    }

    let loop: EventLoop
    let handler: (Request, Pending) -> Response?
    var listener: Listener?
    var sessions: [ObjectIdentifier: LocalHTTPSession] = [:]
    /// Where it listens (port 0 resolved).
    public let address: SocketAddress
    /// Larger request bodies get 413 and the connection is closed. Bytes, default 1 MiB.
    public var maxBodyBytes = 1 << 20
    /// Bytes a client may send ahead while its previous request waits for a deferred answer. Default 64 KiB.
    public var maxStashBytes = 64 * 1024
    /// Idle connections (and slow request heads) are closed after this long. Milliseconds, default 30 s.
    public var idleTimeout: UInt64 = 30_000
    /// Set by `closeGracefully`: answers carry `connection: close`.
    var draining = false

    /// A server whose handler always answers at once.
    public convenience init(loop: EventLoop, address: SocketAddress, handler: @escaping (Request) -> Response) throws {
        try self.init(loop: loop, address: address, deferring: { req, _ in handler(req) })
    }

    /// A server whose handler may return nil and answer later through the `Pending` it was given.
    public init(loop: EventLoop, address: SocketAddress, deferring handler: @escaping (Request, Pending) -> Response?) throws {
        self.loop = loop
        self.handler = handler
        let fd = try ListenSocket.bind(address)
        self.address = ListenSocket.localAddress(fd) ?? address
        let l = try Listener(loop: loop, fd: fd, backlog: 128)
        l.delegate = self
        listener = l
    }

    public func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        let s = LocalHTTPSession(server: self, conn: c)
        sessions[ObjectIdentifier(s)] = s
    }

    /// Connections open now (tests).
    public var connectionCount: Int { sessions.count }

    /// Stops listening and closes every connection now; pending answers are cancelled.
    public func close() {
        listener?.close()
        listener = nil
        for s in sessions.values { s.conn.close() }
    }

    /// Stops listening and closes idle connections; a connection with a request in progress (or a
    /// pending answer) closes after its answer, which carries `connection: close`.
    public func closeGracefully() {
        draining = true
        listener?.close()
        listener = nil
        for s in sessions.values where s.isIdle { s.conn.close() }
    }
}

final class LocalHTTPSession: TCPConnectionDelegate, HTTP1ParserDelegate {
    unowned let server: LocalHTTPServer
    let conn: TCPConnection
    let parser = HTTP1Parser(kind: .request, maxHeadBytes: 16 * 1024, maxHeaders: 64, pauseAfterMessage: true)
    /// The request being read.
    var method = ""
    var target = ""
    var headers: [(name: String, value: String)] = []
    var body: [UInt8] = []
    /// Waiting for a deferred answer.
    var pending: LocalHTTPServer.Pending?
    /// Bytes that arrived while a request waited for its answer.
    var stash: [UInt8] = []
    var feeding = false
    /// An answer without keep-alive was sent (or the connection failed): nothing more is read.
    var finishing = false

    init(server: LocalHTTPServer, conn: TCPConnection) {
        self.server = server
        self.conn = conn
        parser.delegate = self
        conn.delegate = self
        conn.owner = self
        conn.setDeadline(after: server.idleTimeout)
        conn.startReading()
    }

    var isIdle: Bool { pending == nil && !feeding && !finishing && !parser.inHead && !parser.inBody && stash.isEmpty }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        if finishing { return }
        if pending != nil {
            stash.append(contentsOf: data)
            if stash.count > server.maxStashBytes { c.close() }
            return
        }
        c.setDeadline(after: server.idleTimeout)
        process(data)
    }

    /// Parses `input`, one message at a time; stops (keeping the rest) while an answer is pending.
    func process(_ input: UnsafeRawBufferPointer) {
        feeding = true
        defer { feeding = false }
        var rest = input
        while !finishing {
            switch parser.feed(rest) {
            case .ok:
                return
            case .error:
                fail(parser.error?.status ?? 400, parser.error?.reason ?? "bad request")
                return
            case .paused(let consumed):
                parser.resume()
                rest = UnsafeRawBufferPointer(rebasing: rest[consumed...])
                if pending != nil {
                    stash.append(contentsOf: rest)
                    return
                }
                if rest.isEmpty { return }
            }
        }
    }

    /// Answers with an error and closes once it is written.
    func fail(_ status: Int, _ reason: String) {
        guard !finishing else { return }
        send(.init(status: status, body: reason + "\n"), keepAlive: false, headOnly: false)
    }

    func connectionEOF(_ c: TCPConnection) { leave() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { leave() }
    func connectionTimeout(_ c: TCPConnection) { leave() }

    /// The client went away (or idled out): a pending answer is cancelled.
    func leave() {
        let p = pending
        pending = nil
        p?.cancel()
        conn.close()
    }

    func connectionClosed(_ c: TCPConnection) {
        let p = pending
        pending = nil
        p?.cancel()
        server.sessions[ObjectIdentifier(self)] = nil
    }

    // MARK: HTTP1ParserDelegate

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        method = p.methodName.string
        target = p.startLine.string
        headers.removeAll(keepingCapacity: true)
        body.removeAll(keepingCapacity: true)
        var expectContinue = false
        for i in 0..<p.headerCount {
            let name = p.name(i).string.lowercased()
            let value = p.value(i).string
            if name == "expect" && value.lowercased() == "100-continue" { expectContinue = true }
            headers.append((name, value))
        }
        if p.hasContentLength && p.contentLength > UInt64(server.maxBodyBytes) {
            fail(413, "request body larger than \(server.maxBodyBytes) bytes")
            return false
        }
        if expectContinue && p.hasBody && !finishing {
            let interim: StaticString = "HTTP/1.1 100 Continue\r\n\r\n"
            conn.write(UnsafeRawBufferPointer(start: interim.utf8Start, count: interim.utf8CodeUnitCount))
        }
        return false
    }

    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {
        if finishing { return }
        if body.count + data.count > server.maxBodyBytes {
            fail(413, "request body larger than \(server.maxBodyBytes) bytes")
            return
        }
        body.append(contentsOf: data)
    }

    func parserMessageComplete(_ p: HTTP1Parser) {
        if finishing { return }
        let req = LocalHTTPServer.Request(method: method, target: target, headers: headers, body: body)
        body = []
        let keepAlive = p.shouldKeepAlive
        let pend = LocalHTTPServer.Pending(session: self, keepAlive: keepAlive, headOnly: p.isHEAD)
        if let r = server.handler(req, pend) {
            pend.answer(r)
        } else if !pend.isDone {
            pending = pend
            conn.clearDeadline()
        }
    }

    // MARK: answers

    /// A pending (or immediate) answer is ready.
    func answered(_ p: LocalHTTPServer.Pending, _ r: LocalHTTPServer.Response) {
        if pending === p { pending = nil }
        guard !finishing, !conn.isClosing else { return }
        send(r, keepAlive: p.keepAlive, headOnly: p.headOnly)
        guard !finishing else { return }
        conn.setDeadline(after: server.idleTimeout)
        if !feeding && !stash.isEmpty {
            let more = stash
            stash = []
            more.withUnsafeBytes { process($0) }
        }
    }

    func send(_ r: LocalHTTPServer.Response, keepAlive ka: Bool, headOnly: Bool) {
        let keepAlive = ka && !server.draining
        let bodyless = r.status == 204 || r.status == 304 || r.status < 200
        var head = "HTTP/1.1 \(r.status) \(statusText(r.status))\r\n"
        if !bodyless {
            head += "content-type: \(r.contentType)\r\ncontent-length: \(r.body.utf8.count)\r\n"
        }
        for h in r.headers { head += "\(h.name): \(h.value)\r\n" }
        if !keepAlive { head += "connection: close\r\n" }
        head += "\r\n"
        if !bodyless && !headOnly { head += r.body }
        head.withUTF8 { _ = conn.write(UnsafeRawBufferPointer($0)) }
        if !keepAlive {
            finishing = true
            stash = []
            conn.finish()
        }
    }
}

/// Reason phrases for what the local servers answer.
func statusText(_ status: Int) -> String {
    switch status {
    case 204: return "No Content"
    case 304: return "Not Modified"
    case 401: return "Unauthorized"
    case 409: return "Conflict"
    case 413: return "Content Too Large"
    case 421: return "Misdirected Request"
    case 429: return "Too Many Requests"
    default: return "\(reasonPhrase(status))"
    }
}
