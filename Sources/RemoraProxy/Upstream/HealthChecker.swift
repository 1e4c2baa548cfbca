import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy
import RemoraTLS

/// Active health checking of one cluster (`health_check:`), once per process, on the main loop:
/// one probe per endpoint, each jittered on its own (a TCP connect; `GET path` over HTTP/1.1 on a
/// kept-alive connection, the answer read whole; or grpc.health.v1.Health/Check over HTTP/2, one
/// stream per probe on a kept connection: `HealthChecker+GRPC.swift`). Results go through
/// RemoraPolicy's `HealthState` (thresholds hold for every kind of failure); a flip marks the
/// endpoint in `ClusterShared`, is logged, and every worker is told through its mailbox
/// (`onChange`), as outlier detection's ejections are.
///
/// Every probe's next run and its timeout are wakes on one timing wheel (RemoraPolicy's
/// `TimerWheel`) driven by one loop timer: probes due in the same tick (interval / 50, at most
/// 10 ms) go out in one loop wake-up, and no probe touches libuv's timer heap (a timer per probe
/// and a deadline per connection were a third of a probe's instructions).
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
    /// The cluster's TLS (`tls:`): probes connect as requests do (a `tcp` probe passes once the
    /// handshake and verification succeed).
    let tls: TLSClientContext?
    /// The statuses that pass (`http`).
    let expect: [Int]
    /// The request a probe sends (`grpc`), built once.
    let grpcRequest: GRPCHealthRequest?
    /// Each probe's pending wake (its next run, or its timeout while a probe is out), by index.
    var wheel: TimerWheel
    let timer: LoopTimer
    /// When `timer` fires (0: not armed).
    var armedAt: UInt64 = 0
    var stopped = false
    /// Scratch for the probes a tick hands out.
    var dueNow: [Int] = []

    /// `carried`: where a changed endpoint set's checker starts from (`ClusterShared.carriedHealth`:
    /// each endpoint's state, the previous checker's counters); nil: every endpoint healthy.
    init(shared: ClusterShared, config: HealthCheckConfig, addresses: [SocketAddress], loop: EventLoop,
         seed: UInt64, tls: TLSClientContext? = nil, carried: (states: [HealthState], attempts: UInt64, successes: UInt64, failures: UInt64)? = nil,
         onChange: @escaping () -> Void, log: @escaping (String) -> Void) {
        self.shared = shared; self.config = config; self.loop = loop; self.onChange = onChange; self.log = log
        self.tls = tls
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
        wheel = TimerWheel(tick: min(10, max(1, config.interval / 50)), slots: 256, count: addresses.count, now: loop.now)
        timer = LoopTimer(loop: loop)
        timer.unref()
        probes = addresses.enumerated().map { HealthProbe(checker: self, index: $0.offset, address: $0.element) }
        if let c = carried {
            for p in probes where p.index < c.states.count { p.state = c.states[p.index] }
            attempts = c.attempts; successes = c.successes; failures = c.failures
        }
    }

    /// The first probes go out within one (jittered) interval; an endpoint waiting for its first
    /// probe to come into load balancing (`HealthState.pending`) is probed at once.
    func start() {
        for p in probes { p.schedule(after: p.state.pending ? 1 : random.below(max(config.interval, 1)) + 1) }
        arm()
    }

    func stop() {
        stopped = true
        timer.close()
        for p in probes { p.stop() }
    }

    /// `p` wakes at `time` (its next run, or its probe's timeout).
    @inline(__always)
    func wake(_ p: HealthProbe, at time: UInt64) {
        wheel.schedule(p.index, at: time)
        if armedAt == 0 || time + wheel.tick <= armedAt { arm() }   // due before the tick armed for
    }

    /// The timer for the wheel's next tick with something in it.
    func arm() {
        guard !stopped, let next = wheel.nextWake() else { return }
        if next == armedAt { return }
        armedAt = next
        let now = loop.now
        timer.start(after: next > now ? next - now : 0, onTimer)
    }

    /// The timer's callback, made once (not a closure per start).
    lazy var onTimer: () -> Void = { [unowned self] in self.ticked() }

    func ticked() {
        armedAt = 0
        wheel.expire(now: loop.now, into: &dueNow)
        for i in dueNow { probes[i].wake() }   // a probe cannot be stopped here unless all are
        dueNow.removeAll(keepingCapacity: true)
        arm()
    }

    func nextDelay() -> UInt64 { config.nextDelay(random: random.next()) }

    func report(_ p: HealthProbe, passed: Bool) {
        attempts += 1
        if passed { successes += 1 } else { failures += 1 }
        let first = p.state.pending
        guard let healthy = p.state.record(passed: passed, unhealthyThreshold: config.unhealthyThreshold,
                                           healthyThreshold: config.healthyThreshold) else { return }
        shared.setUnhealthy(p.index, !healthy)
        log("cluster \(shared.name): endpoint \(p.address) \(first ? "healthy" : healthy ? "healthy again" : "unhealthy") "
            + "(health check; \(healthyCount) of \(probes.count) healthy)")
        onChange()
    }
}

/// One endpoint's probe: a wake on its checker's wheel, and at most one connection at a time. HTTP probes keep their
/// connection open between probes (keep-alive, as Envoy's health checker does): a new TCP
/// connection per probe is most of a probe's cost (the kernel's connect and teardown), so a
/// connection is opened again only when the endpoint closed it or a probe failed.
final class HealthProbe: TCPConnectionDelegate, HTTP1ParserDelegate {
    /// The checker owns its probes and stops them before it goes.
    unowned(unsafe) let checker: HealthChecker
    let index: Int
    let address: SocketAddress
    var state = HealthState()
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

    init(checker: HealthChecker, index: Int, address: SocketAddress) {
        self.checker = checker; self.index = index; self.address = address
    }

    func schedule(after ms: UInt64) {
        guard !stopped else { return }
        checker.wake(self, at: checker.loop.now + ms)
    }

    /// The probe's timeout, while it is out.
    func armTimeout() { checker.wake(self, at: checker.loop.now + checker.config.timeout) }

    /// Its wake came: the next probe, or the timeout of the one out.
    func wake() {
        if stopped { return }
        if inFlight { lost(conn); return }
        run()
    }

    func stop() {
        stopped = true
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
            armTimeout()
            return
        }
        let c = TCPConnection(loop: checker.loop)
        c.delegate = self
        c.owner = self
        if let tls = checker.tls {
            guard let layer = TLSSocket(client: tls) else { c.close(); finish(passed: false, nil, keep: false); return }
            c.transportSocket = layer
        }
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
        armTimeout()
        c.startReading()
    }

    /// The probe's result: the connection is kept (`keep`) or closed, the next probe scheduled.
    func finish(passed: Bool, _ c: TCPConnection?, keep: Bool) {
        if let c, c !== conn { return }   // a late event of a connection already let go
        inFlight = false
        if !keep || c == nil { drop() }
        guard !stopped else { return }
        checker.report(self, passed: passed)
        schedule(after: checker.nextDelay())
    }

    /// An idle connection the endpoint closed, or that sent what nobody asked for: let go, no result.
    /// While a probe is out (and on its timeout, `c` nil when it had no connection): a failure.
    func lost(_ c: TCPConnection?) {
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
