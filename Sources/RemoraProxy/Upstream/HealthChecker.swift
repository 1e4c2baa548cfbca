import RemoraCore
import RemoraIO
import RemoraPolicy

/// Active health checking of one cluster (`health_check:`), once per process, on the main loop:
/// one probe per endpoint, each on its own jittered timer (a TCP connect, or `GET path` over
/// HTTP/1.1 with `Connection: close` and the status line read). Results go through RemoraPolicy's
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
    /// The request a probe writes (`http`), built once.
    let request: [UInt8]

    init(shared: ClusterShared, config: HealthCheckConfig, addresses: [SocketAddress], loop: EventLoop,
         seed: UInt64, onChange: @escaping () -> Void, log: @escaping (String) -> Void) {
        self.shared = shared; self.config = config; self.loop = loop; self.onChange = onChange; self.log = log
        random = FastRandom(seed: seed)
        if case .http(let path, _) = config.kind {
            request = Array("GET \(path) HTTP/1.1\r\nhost: \(shared.name)\r\nuser-agent: remora-health-check\r\nconnection: close\r\n\r\n".utf8)
        } else {
            request = []
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

/// One endpoint's probe: a timer, and at most one connection at a time.
final class HealthProbe: TCPConnectionDelegate {
    unowned let checker: HealthChecker
    let index: Int
    let address: SocketAddress
    var state = HealthState()
    let timer: LoopTimer
    var conn: TCPConnection?
    /// The start of the answer, until its status line is complete (at most 64 bytes kept).
    var head: [UInt8] = []
    var stopped = false

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
        conn?.close()
        conn = nil
    }

    func run() {
        guard !stopped else { return }
        let c = TCPConnection(loop: checker.loop)
        c.delegate = self
        c.owner = self
        head.removeAll(keepingCapacity: true)
        if c.connect(to: address) != 0 {
            c.close()
            finish(passed: false, nil)
            return
        }
        conn = c
        if !checker.request.isEmpty { checker.request.withUnsafeBytes { _ = c.write($0) } }
        c.setDeadline(after: checker.config.timeout)
        c.startReading()
    }

    /// The probe's result; the connection (if any) is closed, the next probe scheduled.
    func finish(passed: Bool, _ c: TCPConnection?) {
        if let c, c !== conn { return }   // a late event of a probe already decided
        conn = nil
        c?.close()
        guard !stopped else { return }
        checker.report(self, passed: passed)
        schedule(after: checker.nextDelay())
    }

    /// "HTTP/1.x NNN …": the status, once the status line is complete.
    func status() -> Int? {
        guard let end = head.firstIndex(of: 0x0A) else { return nil }
        let line = head[..<end]
        guard line.count >= 12, line.starts(with: Array("HTTP/1.".utf8)) else { return 0 }
        var code = 0
        for b in line[line.startIndex + 9 ..< line.startIndex + 12] {
            guard b >= 0x30 && b <= 0x39 else { return 0 }
            code = code * 10 + Int(b - 0x30)
        }
        return code
    }

    // MARK: TCPConnectionDelegate

    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        if status != 0 { finish(passed: false, c); return }
        if case .tcp = checker.config.kind { finish(passed: true, c) }
    }

    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        guard c === conn else { return }
        head.append(contentsOf: data.prefix(max(0, 64 - head.count)))
        if let code = status() {
            guard case .http(_, let expect) = checker.config.kind else { return }
            finish(passed: expect.contains(code), c)
        } else if head.count >= 64 {
            finish(passed: false, c)
        }
    }

    func connectionEOF(_ c: TCPConnection) { finish(passed: false, c) }
    func connectionError(_ c: TCPConnection, _ code: Int32) { finish(passed: false, c) }
    func connectionTimeout(_ c: TCPConnection) { finish(passed: false, c) }
}
