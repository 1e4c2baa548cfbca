import Glibc
import RemoraCore
import RemoraIO

/// The process: binds every listener once per worker (SO_REUSEPORT), starts the worker threads,
/// serves admin on the main loop, and turns SIGTERM/SIGINT into a graceful drain.
public final class Server {
    let config: Config
    let loop: EventLoop
    var snapshot: Snapshot!
    var stats: [WorkerStats] = []
    var threads: [pthread_t] = []
    var workerMailboxes: [Mailbox<WorkerMessage>?] = []
    var mainMailbox: Mailbox<MainMessage>!
    var admin: LocalHTTPServer?
    var signals: [SignalWatcher] = []
    var drainTimer: LoopTimer?
    var started = 0
    var stopped = 0
    var ready = false
    var draining = false
    var exitCode: Int32 = 0
    var boundAddresses: [SocketAddress] = []
    /// Called on the main loop once every worker is listening (demo prints its hint here).
    public var onReady: (() -> Void)?

    /// `loop` is the main thread's loop (the caller may already run demo backends on it).
    public init(config: Config, loop: EventLoop = EventLoop()) {
        self.config = config
        self.loop = loop
    }

    /// Runs until drained. Returns the process exit code.
    public func run() -> Int32 {
        remoraIgnoreSIGPIPE()
        do { snapshot = try Snapshot(config: config) } catch {
            log("\(error)")
            return 1
        }
        let n = config.workers > 0 ? config.workers : onlineCPUs()
        var fds = Array(repeating: [Int32](), count: n)
        do {
            for l in config.listeners {
                guard var addr = try Resolver.resolve(l.address).first else { continue }
                for w in 0..<n {
                    let fd = try ListenSocket.bind(addr, first: w == 0)
                    if w == 0, let actual = ListenSocket.localAddress(fd) { addr = actual; boundAddresses.append(actual) }
                    fds[w].append(fd)
                }
            }
            if let a = config.admin, let addr = try Resolver.resolve(a.address).first {
                admin = try LocalHTTPServer(loop: loop, address: addr) { [unowned self] in self.adminRequest($0) }
            }
        } catch {
            log("\(error)")
            fds.joined().forEach(ListenSocket.closeFD)
            return 1
        }

        mainMailbox = Mailbox(loop: loop) { [unowned self] in self.handle($0) }
        for sig in [SIGTERM, SIGINT] {
            signals.append(SignalWatcher(loop: loop, signal: sig) { [unowned self] s in
                self.beginDrain(timeout: s == SIGINT ? min(self.config.drainTimeout, 1_000) : self.config.drainTimeout)
            })
        }
        stats = (0..<n).map { _ in WorkerStats(snapshot: snapshot) }
        workerMailboxes = Array(repeating: nil, count: n)
        let snap = snapshot!
        let main = mainMailbox!
        for w in 0..<n {
            let myFDs = fds[w]
            let st = stats[w]
            threads.append(spawnThread {
                Worker(id: w, snapshot: snap, stats: st).run(fds: myFDs, main: main)
            })
        }
        loop.run()
        threads.forEach(joinThread)
        if !loop.close() { log("main loop closed with \(loop.handleCount) handles left") }
        return exitCode
    }

    func handle(_ m: MainMessage) {
        switch m {
        case let .started(w, mailbox, error):
            workerMailboxes[w] = mailbox
            started += 1
            if let error {
                log(error)
                exitCode = 1
                beginDrain(timeout: 0)
            }
            if draining { mailbox.post(.drain) }
            if started == workerMailboxes.count && !draining { announce() }
        case .stopped:
            stopped += 1
            if stopped == workerMailboxes.count { shutdownMain() }
        }
    }

    /// Tells the world where everything listens, then `ready` (tests and scripts wait for it).
    func announce() {
        ready = true
        var out = ""
        if let a = admin { out += "listening admin \(a.address)\n" }
        for (i, l) in config.listeners.enumerated() { out += "listening listener \(l.name) \(boundAddresses[i])\n" }
        out += "ready\n"
        out.withUTF8 { _ = Glibc.write(1, $0.baseAddress, $0.count) }
        onReady?()
    }

    func beginDrain(timeout: Millis) {
        if draining {
            // A second signal: stop waiting.
            workerMailboxes.forEach { $0?.post(.forceClose) }
            return
        }
        draining = true
        log("draining (up to \(timeout) ms)")
        workerMailboxes.forEach { $0?.post(.drain) }
        let t = LoopTimer(loop: loop)
        t.start(after: timeout) { [unowned self] in self.workerMailboxes.forEach { $0?.post(.forceClose) } }
        t.unref()
        drainTimer = t
    }

    func shutdownMain() {
        drainTimer?.close()
        admin?.close()
        signals.forEach { $0.close() }
        mainMailbox.close()
        extraClose.forEach { $0() }
    }

    /// More things the main loop must close at exit (demo backends).
    public var extraClose: [() -> Void] = []

    func adminRequest(_ r: LocalHTTPServer.Request) -> LocalHTTPServer.Response {
        switch (r.method, r.path) {
        case ("GET", "/ready"), ("HEAD", "/ready"):
            if draining { return .init(status: 503, body: "draining\n") }
            return ready ? .init(status: 200, body: "ready\n") : .init(status: 503, body: "starting\n")
        case ("GET", "/stats"):
            return .init(status: 200, body: renderAllStats())
        default:
            return .init(status: 404, body: "admin endpoints: GET /ready, GET /stats\n")
        }
    }

    func renderAllStats() -> String {
        var out = ""
        for (i, l) in config.listeners.enumerated() {
            renderStats(ListenerStat.self, name: l.name, blocks: stats.map { $0.listeners[i] }, into: &out)
        }
        for (i, c) in config.clusters.enumerated() {
            renderStats(ClusterStat.self, name: c.name, blocks: stats.map { $0.clusters[i] }, into: &out)
        }
        for (l, table) in snapshot.routeTables.enumerated() {
            for r in table.info {
                for b in r.backends {
                    renderStats(RouteBackendStat.self, name: "\(config.listeners[l].name).\(r.name).\(b.clusterName)",
                                blocks: stats.map { $0.routeBackends[l][b.slot] }, into: &out)
                }
            }
        }
        out += "server.workers \(stats.count)\n"
        out += "server.draining \(draining ? 1 : 0)\n"
        return out
    }
}
