import Glibc
import RemoraCore
import RemoraHTTP

// `remora ctl`'s HTTP: plain blocking HTTP/1.1 over Glibc sockets, one request per connection.
// A CLI, not the data plane: it may block and allocate. Responses are framed by llhttp.

/// `http://HOST:PORT` (a literal, `[IPv6]` or a name), as given to `--control`.
public struct ControlURL: Equatable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: UInt16
    public init(host: String, port: UInt16) { self.host = host; self.port = port }

    public static let `default` = ControlURL(host: "127.0.0.1", port: 9911)

    /// Accepts `http://HOST:PORT`, `http://HOST` (port 80) and a trailing `/`.
    public static func parse(_ s: String) -> ControlURL? {
        guard s.hasPrefix("http://") else { return nil }
        var rest = s.dropFirst(7)
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        if rest.contains("/") || rest.isEmpty { return nil }
        if let hp = HostPort.parse(String(rest)), hp.port != 0 { return ControlURL(host: hp.host, port: hp.port) }
        if !rest.contains(":") { return ControlURL(host: String(rest), port: 80) }
        return nil
    }

    /// The `host` header.
    public var authority: String { HostPort(host: host, port: port).description }
    public var description: String { "http://\(authority)" }
}

public struct HTTPResult {
    public var status: Int
    /// Names lowercased.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status; self.headers = headers; self.body = body
    }
    public init(status: Int, headers: [(name: String, value: String)] = [], text: String) {
        self.init(status: status, headers: headers, body: Array(text.utf8))
    }
    public var text: String { String(decoding: body, as: UTF8.self) }
    public func header(_ name: String) -> String? { headers.first { $0.name == name }?.value }
}

/// How ctl reaches servers; tests substitute a fake.
public protocol HTTPTransport {
    /// One exchange; throws `ControlError` with status 0 when there is no answer (connect refused,
    /// timeout, malformed response).
    func request(_ method: String, host: String, port: UInt16, target: String,
                 headers: [(name: String, value: String)], body: [UInt8]) throws(ControlError) -> HTTPResult
}

public struct BlockingHTTPClient: HTTPTransport {
    /// For the connect, and for each send and receive. Milliseconds.
    public var timeout: UInt64
    public init(timeout: UInt64 = 10_000) { self.timeout = timeout }

    public func request(_ method: String, host: String, port: UInt16, target: String,
                        headers: [(name: String, value: String)], body: [UInt8]) throws(ControlError) -> HTTPResult {
        let authority = HostPort(host: host, port: port).description
        let fd = try connect(host: host, port: port)
        defer { Glibc.close(fd) }
        var head = "\(method) \(target) HTTP/1.1\r\nhost: \(authority)\r\nconnection: close\r\n"
        if !body.isEmpty || method == "PUT" || method == "POST" { head += "content-length: \(body.count)\r\n" }
        for h in headers { head += "\(h.name): \(h.value)\r\n" }
        head += "\r\n"
        try sendAll(fd, Array(head.utf8) + body, to: authority)

        let collector = ResponseCollector(headOnly: method == "HEAD")
        let parser = HTTP1Parser(kind: .response, maxHeadBytes: 64 * 1024, maxHeaders: 100, pauseAfterMessage: false)
        parser.delegate = collector
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        while !collector.complete {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ControlError(0, "\(authority): \(errno == EAGAIN ? "no answer within \(timeout) ms" : String(cString: strerror(errno)))")
            }
            if n == 0 {
                if parser.finish() == .error || !collector.complete {
                    throw ControlError(0, "\(authority) closed the connection before a complete answer")
                }
                break
            }
            let r = buf.withUnsafeBytes { parser.feed(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            if r == .error { throw ControlError(0, "\(authority) sent a malformed answer (\(parser.error?.reason ?? "?"))") }
        }
        return HTTPResult(status: collector.status, headers: collector.headers, body: collector.body)
    }

    func connect(host: String, port: UInt16) throws(ControlError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_family = AF_UNSPEC
        hints.ai_flags = AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw ControlError(0, "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(first) }
        var lastError: Int32 = ECONNREFUSED
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            ai = a.pointee.ai_next
            let fd = socket(a.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { lastError = errno; continue }
            var tv = timeval(tv_sec: Int(timeout / 1000), tv_usec: Int(timeout % 1000) * 1000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
            lastError = errno
            Glibc.close(fd)
        }
        throw ControlError(0, "cannot connect to \(HostPort(host: host, port: port)): \(String(cString: strerror(lastError)))")
    }

    func sendAll(_ fd: Int32, _ bytes: [UInt8], to authority: String) throws(ControlError) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ControlError(0, "\(authority): send: \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }
}

final class ResponseCollector: HTTP1ParserDelegate {
    let headOnly: Bool
    var status = 0
    var headers: [(name: String, value: String)] = []
    var body: [UInt8] = []
    var complete = false
    init(headOnly: Bool) { self.headOnly = headOnly }

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        status = p.statusCode
        for i in 0..<p.headerCount { headers.append((p.name(i).string.lowercased(), p.value(i).string)) }
        return headOnly
    }
    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) { body.append(contentsOf: data) }
    func parserMessageComplete(_ p: HTTP1Parser) {
        // 1xx interim answers are skipped: the final one follows.
        if status >= 100 && status < 200 { headers = []; body = []; return }
        complete = true
    }
}
