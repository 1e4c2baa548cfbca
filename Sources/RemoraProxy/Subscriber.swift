import Glibc
import RemoraConfig
import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy

/// The proxy side of the control plane (docs/control-plane.md): long-polls the control server for
/// its group's configuration, installs each new version through `Server.apply` (validate, compile,
/// swap, make-before-break) or refuses it, and reports back (ACK / NACK with the errors). When the
/// control server cannot be reached the proxy keeps serving its last good configuration and retries
/// with capped exponential backoff and jitter. Runs on the main loop; one request per connection.
final class Subscriber: TCPConnectionDelegate, HTTP1ParserDelegate {
    unowned let server: Server
    let loop: EventLoop
    let address: SocketAddress
    let hostHeader: String
    let node: String
    let group: String
    let token: String?
    /// Long-poll length asked of the server, seconds.
    let wait = 30
    /// The version installed (0 = none yet).
    var version = 0
    /// The newest version seen (installed or refused): what the next poll asks beyond.
    var seen = 0
    /// Loop time of the last answer from the control server (ms), for staleness.
    var lastContact: UInt64 = 0
    var connected = false
    var updates = 0, rejected = 0, failures = 0
    /// Reconnect delays after failures: 100 ms doubling to 10 s, full jitter (RemoraPolicy).
    var backoff = Backoff(base: 100, cap: 10_000)
    var rng = FastRandom(seed: UInt64(UInt32(bitPattern: getpid())) &* 0x9E37_79B9_7F4A_7C15)
    let timer: LoopTimer
    var conn: TCPConnection?
    var parser: HTTP1Parser?
    var body = ByteBuffer()
    var status = 0
    var answerVersion = 0
    var done = false
    var stopped = false
    /// Acks and nacks waiting to be sent before the next poll.
    var reports: [(path: String, body: String)] = []

    /// `url`: `http://HOST:PORT` (a literal or a name, resolved once).
    init(server: Server, loop: EventLoop, url: String, node: String, group: String, token: String?) throws {
        var rest = Substring(url)
        guard rest.hasPrefix("http://") else { throw ConfigErrors([ConfigError(file: "", line: 0, path: "--control",
                                                                                message: "expected http://HOST:PORT, got \(url)")]) }
        rest = rest.dropFirst(7)
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        guard let hp = HostPort.parse(String(rest)), let a = try Resolver.resolve(hp).first else {
            throw ConfigErrors([ConfigError(file: "", line: 0, path: "--control", message: "expected http://HOST:PORT, got \(url)")])
        }
        self.server = server
        self.loop = loop
        address = a
        hostHeader = String(rest)
        self.node = node
        self.group = group
        self.token = token
        timer = LoopTimer(loop: loop)
    }

    var running = false

    func start() {
        running = true
        startedAt = loop.now
        next()
    }

    func stop() {
        stopped = true
        timer.close()
        conn?.close()
    }

    /// Seconds since the control server was last reachable (0 while a poll is held open by it;
    /// since the start when it was never reached).
    var staleSeconds: UInt64 {
        if connected { return 0 }
        return (loop.now - (lastContact == 0 ? startedAt : lastContact)) / 1000
    }
    var startedAt: UInt64 = 0

    // MARK: requests

    func next() {
        guard !stopped else { return }
        if let r = reports.first {
            send("POST \(r.path) HTTP/1.1", body: r.body, timeout: 5_000)
        } else {
            let admin = server.adminAddress.map { "&admin=\($0)" } ?? ""
            send("GET /v1/snapshot?group=\(group)&node=\(node)&version=\(seen)&wait=\(wait)\(admin) HTTP/1.1",
                 body: "", timeout: UInt64(wait + 10) * 1000)
        }
    }

    func send(_ requestLine: String, body requestBody: String, timeout: UInt64) {
        let c = TCPConnection(loop: loop)
        let p = HTTP1Parser(kind: .response, maxHeadBytes: 64 * 1024, maxHeaders: 64, pauseAfterMessage: false)
        p.delegate = self
        c.delegate = self
        c.owner = self
        conn = c
        parser = p
        body.clear()
        status = 0
        answerVersion = 0
        done = false
        if c.connect(to: address) != 0 {   // fails at once (no route to the address): try again later
            c.close()
            conn = nil
            done = true
            retryLater()
            return
        }
        var head = requestLine + "\r\nhost: \(hostHeader)\r\nconnection: close\r\ncontent-length: \(requestBody.utf8.count)\r\n"
        if let token { head += "authorization: Bearer \(token)\r\n" }
        head += "\r\n" + requestBody
        head.withUTF8 { _ = c.write(UnsafeRawBufferPointer($0)) }
        c.setDeadline(after: timeout)
        c.startReading()
    }

    /// The answer is complete (or the exchange failed: status 0).
    func finished() {
        guard !done else { return }
        done = true
        conn?.close()
        conn = nil
        guard status != 0 else { return retryLater() }
        lastContact = loop.now
        if !reports.isEmpty {   // an ack or nack
            guard status < 300 else {
                log("control: \(status) from the control server for a report on group \(group)")
                return retryLater()
            }
            reports.removeFirst()
        } else {
            switch status {
            case 200: install()
            case 304: break
            default:   // no such group yet, refused, broken: keep serving, back off
                log("control: \(status) from the control server for group \(group)")
                return retryLater()
            }
        }
        connected = true
        backoff.reset()
        // Continue from the loop, not from inside this connection's parser callbacks.
        timer.start(after: 0) { [unowned self] in self.next() }
    }

    func install() {
        let yaml = String(decoding: body.bytes, as: UTF8.self)
        let v = answerVersion
        switch ConfigLoader.parse(yaml: yaml, file: "\(group)@\(v)") {
        case .success(let cfg):
            if let e = server.apply(cfg, source: yaml, file: "\(group)@\(v)") {
                rejected += 1
                reports.append(("/v1/nack?group=\(group)&node=\(node)&version=\(v)", e.description))
                log("control: version \(v) refused:\n\(e)")
            } else {
                version = v
                updates += 1
                reports.append(("/v1/ack?group=\(group)&node=\(node)&version=\(v)", ""))
            }
        case .failure(let e):
            rejected += 1
            reports.append(("/v1/nack?group=\(group)&node=\(node)&version=\(v)", e.description))
            log("control: version \(v) refused:\n\(e)")
        }
        if seen < v { seen = v }   // a refused version is not fetched again; the next one is
    }

    /// Tries again after the backoff's next delay (capped exponential, full jitter: 0 ... 100 ms,
    /// 0 ... 200 ms, … up to 0 ... 10 s).
    func retryLater() {
        guard !stopped else { return }
        failures += 1
        connected = false
        let delay = backoff.next(random: &rng)
        timer.start(after: delay) { [unowned self] in self.next() }
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        if status != 0 { finished(); return }
        if reports.isEmpty && !backoff.isBackingOff { connected = true; lastContact = loop.now }
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        if parser?.feed(data) == .error { status = 0; finished() }
    }

    func connectionEOF(_ c: TCPConnection) {
        if !done { _ = parser?.finish(); if !done { status = 0; finished() } }
    }

    func connectionError(_ c: TCPConnection, _ code: Int32) { status = 0; finished() }
    func connectionTimeout(_ c: TCPConnection) { status = 0; finished() }
    func connectionClosed(_ c: TCPConnection) { if conn === c { conn = nil } }

    // MARK: HTTP1ParserDelegate

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        status = p.statusCode
        for i in 0..<p.headerCount where p.name(i).count == 16 && p.name(i).equalsLowercase("x-remora-version") {
            answerVersion = Int(p.value(i).string) ?? 0
        }
        return false
    }

    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) { body.append(data) }

    func parserMessageComplete(_ p: HTTP1Parser) { finished() }
}
