import RemoraCore
import RemoraHTTP
import RemoraIO

/// A small HTTP/1.1 server answering from a handler on the calling loop: the admin endpoints and
/// the demo backends. Not a data-plane path: it may allocate per request.
public final class LocalHTTPServer: ListenerDelegate {
    public struct Request {
        public let method: String
        public let target: String
        public var path: Substring { target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0] }
    }
    public struct Response {
        public var status: Int
        public var contentType: StaticString
        public var body: String
        public init(status: Int, contentType: StaticString = "text/plain", body: String) {
            self.status = status; self.contentType = contentType; self.body = body
        }
    }

    let loop: EventLoop
    let handler: (Request) -> Response
    var listener: Listener?
    var sessions: [ObjectIdentifier: LocalHTTPSession] = [:]
    /// Where it listens (port 0 resolved).
    public let address: SocketAddress

    public init(loop: EventLoop, address: SocketAddress, handler: @escaping (Request) -> Response) throws {
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

    public func close() {
        listener?.close()
        listener = nil
        for s in sessions.values { s.conn.close() }
    }
}

final class LocalHTTPSession: TCPConnectionDelegate, HTTP1ParserDelegate {
    unowned let server: LocalHTTPServer
    let conn: TCPConnection
    let parser = HTTP1Parser(kind: .request, maxHeadBytes: 16 * 1024, maxHeaders: 64, pauseAfterMessage: false)
    var out = ByteBuffer()

    init(server: LocalHTTPServer, conn: TCPConnection) {
        self.server = server
        self.conn = conn
        parser.delegate = self
        conn.delegate = self
        conn.owner = self
        conn.setDeadline(after: 30_000)
        conn.startReading()
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        c.setDeadline(after: 30_000)
        if parser.feed(data) == .error {
            out.clear()
            HTTP1Head.writeLocalResponse(status: 400, reason: "Bad Request", body: rawBytes("bad request\n"),
                                         keepAlive: false, into: &out)
            c.write(out.bytes)
            c.finish()
        }
    }

    func connectionEOF(_ c: TCPConnection) { c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
    func connectionTimeout(_ c: TCPConnection) { c.close() }
    func connectionClosed(_ c: TCPConnection) {
        out.release()
        server.sessions[ObjectIdentifier(self)] = nil
    }

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool { false }
    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {}
    func parserMessageComplete(_ p: HTTP1Parser) {
        let req = LocalHTTPServer.Request(method: p.methodName.string, target: p.startLine.string)
        let r = server.handler(req)
        let keepAlive = p.shouldKeepAlive
        out.clear()
        var body = r.body
        body.withUTF8 { b in
            HTTP1Head.writeLocalResponse(status: r.status, reason: reasonPhrase(r.status), contentType: r.contentType,
                                         body: UnsafeRawBufferPointer(b), keepAlive: keepAlive, headOnly: p.isHEAD, into: &out)
        }
        conn.write(out.bytes)
        if !keepAlive { conn.finish() }
    }
}
