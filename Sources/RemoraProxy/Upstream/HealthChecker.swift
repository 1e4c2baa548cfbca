import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy

/// Active health checking of one cluster (`health_check:`), once per process, on the main loop:
/// one probe per endpoint, each on its own jittered timer (a TCP connect; `GET path` over
/// HTTP/1.1 on a kept-alive connection, the answer read whole; or grpc.health.v1.Health/Check over
/// HTTP/2, one stream per probe on a kept connection: `HealthChecker+GRPC.swift`). Results go through RemoraPolicy's
/// `HealthState` (thresholds hold for every kind of failure); a flip marks the endpoint in
/// `ClusterShared`, is logged, and every worker is told through its mailbox (`onChange`), as
/// outlier detection's ejections are.
final class HealthChecker {
    let shared: ClusterShared
    let config: HealthCheckConfig
    let loop: EventLoop
    let onChange: () -> Void
    let log: (String) -> Void
    var probes: [HealthProbe] = []
    var random: FastRandom
    var attempts: UInt64 = 0, successes: UInt64 = 0, failures: UInt64 = 0
    var healthyCount: Int { probes.filter { $0.state.healthy }.count }
    enum ProbeKind { case tcp, http, grpc }
    let proto: ProbeKind
    /// The request a probe writes (`http`), built once.
    let request: [UInt8]
    /// The statuses that pass (`http`).
    let expect: [Int]
    /// The request a probe sends (`grpc`), built once.
    let grpcRequest: GRPCHealthRequest?

    init(shared: ClusterShared, config: HealthCheckConfig, addresses: [SocketAddress], loop: EventLoop,
         seed: UInt64, onChange: @escaping () -> Void, log: @escaping (String) -> Void) {
        self.shared = shared; self.config = config; self.loop = loop; self.onChange = onChange; self.log = log
        random = FastRandom(seed: seed)
        switch config.kind {
        case .tcp:
            proto = .tcp; request = []; expect = []; grpcRequest = nil
        case .http(let path, let statuses):
            proto = .http
            request = Array("GET \(path) HTTP/1.1\r\nhost: \(shared.name)\r\nuser-agent: remora-health-check\r\n\r\n".utf8)
            expect = statuses
            grpcRequest = nil
        case .grpc(let service):
            proto = .grpc; request = []; expect = []
            grpcRequest = GRPCHealthRequest(authority: shared.name, service: service)
        }
        probes = addresses.enumerated().map { HealthProbe(checker: self, index: $0.offset, address: $0.element) }
    }

    /// The first probes go out within one (jittered) interval.
    func start() { for p in probes { p.schedule(after: random.below(max(config.interval, 1)) + 1) } }

    func stop() { for p in probes { p.stop() } }

    func nextDelay() -> UInt64 { config.nextDelay(random: random.next()) }

    func report(_ p: HealthProbe, passed: Bool) {
        attempts += 1
        if passed { successes += 1 } else { failures += 1 }
        guard let healthy = p.state.record(passed: passed, unhealthyThreshold: config.unhealthyThreshold,
                                           healthyThreshold: config.healthyThreshold) else { return }
        shared.setUnhealthy(p.index, !healthy)
        log("cluster \(shared.name): endpoint \(p.address) \(healthy ? "healthy again" : "unhealthy") "
            + "(health check; \(healthyCount) of \(probes.count) healthy)")
        onChange()
    }
}

/// One endpoint's probe: a timer, and at most one connection at a time. HTTP probes keep their
/// connection open between probes (keep-alive, as Envoy's health checker does): a new TCP
/// connection per probe is most of a probe's cost (the kernel's connect and teardown), so a
/// connection is opened again only when the endpoint closed it or a probe failed.
final class HealthProbe: TCPConnectionDelegate, HTTP1ParserDelegate {
    unowned let checker: HealthChecker
    let index: Int
    let address: SocketAddress
    var state = HealthState()
    let timer: LoopTimer
    var conn: TCPConnection?
    /// The HTTP response parser of `conn` (`http` probes).
    var parser: HTTP1Parser?
    /// A probe is waiting for its answer on `conn` (otherwise `conn` is idle, kept for the next one).
    var inFlight = false
    /// The answer's status, and whether it is complete (set in the parser's callbacks, acted on after).
    var status = 0
    var complete = false
    /// The answer did not say `Connection: close`: the connection stays for the next probe.
    var keepAlive = false
    var stopped = false
    /// `grpc`: the HTTP/2 session on `conn`, and the current probe's stream and what it received
    /// (`HealthChecker+GRPC.swift`).
    var h2: HTTP2Session?
    var streamID: Int32 = -1
    var grpcStatus = -1
    var servingStatus: Int?
    var message: [UInt8] = []
    var streamClosed = false
    var streamError: UInt32 = 0
    var goingAway = false
    /// DATA bytes received and not yet credited back to the connection's window.
    var credit = 0
    /// The probe's timer callback, made once (a closure per schedule would be an allocation per probe).
    lazy var fire: () -> Void = { [unowned self] in self.run() }

    init(checker: HealthChecker, index: Int, address: SocketAddress) {
        self.checker = checker; self.index = index; self.address = address
        timer = LoopTimer(loop: checker.loop)
        timer.unref()
    }

    func schedule(after ms: UInt64) {
        guard !stopped else { return }
        timer.start(after: ms) { [unowned self] in self.run() }
    }

    func stop() {
        stopped = true
        timer.close()
        drop()
    }

    func drop() {
        let c = conn
        conn = nil
        parser = nil
        h2 = nil
        goingAway = false
        inFlight = false
        c?.close()
    }

    func run() {
        guard !stopped else { return }
        inFlight = true
        status = 0
        complete = false
        if let c = conn {   // an idle keep-alive connection
            if checker.proto == .grpc {
                if !submitGRPC() { finish(passed: false, c, keep: false); return }
            } else {
                checker.request.withUnsafeBytes { _ = c.write($0) }
            }
            c.setDeadline(after: checker.config.timeout)
            return
        }
        let c = TCPConnection(loop: checker.loop)
        c.delegate = self
        c.owner = self
        if c.connect(to: address) != 0 {
            c.close()
            finish(passed: false, nil, keep: false)
            return
        }
        conn = c
        switch checker.proto {
        case .tcp: break
        case .http:
            let p = HTTP1Parser(kind: .response, maxHeadBytes: 16 * 1024, maxHeaders: 64, pauseAfterMessage: false)
            p.delegate = self
            parser = p
            checker.request.withUnsafeBytes { _ = c.write($0) }
        case .grpc:
            startGRPC()   // the preface and the request wait in the connection for the connect
            if !submitGRPC() { finish(passed: false, c, keep: false); return }
        }
        c.setDeadline(after: checker.config.timeout)
        c.startReading()
    }

    /// The probe's result: the connection is kept (`keep`) or closed, the next probe scheduled.
    func finish(passed: Bool, _ c: TCPConnection?, keep: Bool) {
        if let c, c !== conn { return }   // a late event of a connection already let go
        inFlight = false
        if keep, let c { c.clearDeadline() } else { drop() }
        guard !stopped else { return }
        checker.report(self, passed: passed)
        schedule(after: checker.nextDelay())
    }

    /// An idle connection the endpoint closed, or that sent what nobody asked for: let go, no result.
    func lost(_ c: TCPConnection) {
        guard c === conn else { return }
        if inFlight { finish(passed: false, c, keep: false) } else { drop() }
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        guard c === conn else { return }
        if status != 0 { finish(passed: false, c, keep: false); return }
        if checker.proto == .tcp { finish(passed: true, c, keep: false) }
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        if checker.proto == .grpc { grpcRead(c, data); return }
        guard c === conn, inFlight, let p = parser else { lost(c); return }
        if p.feed(data) == .error { finish(passed: false, c, keep: false); return }
        if complete { finish(passed: checker.expect.contains(status), c, keep: keepAlive) }
    }

    func connectionEOF(_ c: TCPConnection) { lost(c) }
    func connectionError(_ c: TCPConnection, _ code: Int32) { lost(c) }
    func connectionTimeout(_ c: TCPConnection) { lost(c) }
    func connectionClosed(_ c: TCPConnection) { if c === conn { lost(c) } }

    // MARK: HTTP1ParserDelegate (record only; acted on once `feed` returns)

    func parserHeadComplete(_ p: HTTP1Parser) -> Bool {
        status = p.statusCode
        keepAlive = true
        for i in 0..<p.headerCount where p.name(i).equalsLowercase("connection") {
            let v = p.value(i), close: [UInt8] = Array("close".utf8)
            if v.count >= 5 && (0...(v.count - 5)).contains(where: { o in (0..<5).allSatisfy { v[o + $0] | 0x20 == close[$0] } }) {
                keepAlive = false
            }
        }
        return false
    }

    func parserBody(_ p: HTTP1Parser, _ data: UnsafeRawBufferPointer) {}

    func parserMessageComplete(_ p: HTTP1Parser) { complete = true }
}
