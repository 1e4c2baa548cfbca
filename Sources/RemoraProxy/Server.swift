import CRemoraSupport
import Glibc
import RemoraAdmin
import RemoraConfig
import RemoraControl
import RemoraCore
import RemoraIO

/// The process: binds every listener once per worker (SO_REUSEPORT), starts the worker threads,
/// serves admin on the main loop, turns SIGTERM/SIGINT into a graceful drain, and installs new
/// configurations (SIGHUP, `--watch`, later the control plane) without a restart. What the admin
/// endpoints (RemoraAdmin) read and act on is in Server+Admin.swift.
public final class Server {
    /// The configuration serving now, its YAML source and version (1 = the one started with).
    var config: Config
    var source: String
    var version = 1
    let loop: EventLoop
    var snapshot: Snapshot!
    var registry: StatRegistry!
    var workerCount = 0
    /// What each listener's sockets were bound for, by listener name.
    var bound: [String: (spec: HostPort, proto: ListenerProtocol, actual: SocketAddress)] = [:]
    var threads: [pthread_t] = []
    var workerMailboxes: [Mailbox<WorkerMessage>?] = []
    /// Each worker's log lines in flight to this thread (Worker.log).
    var workerLogs: [WorkerLog] = []
    var mainMailbox: Mailbox<MainMessage>!
    var admin: AdminServer?
    /// `admin.token` as started with (fixed until a restart).
    var adminToken: String?
    var signals: [SignalWatcher] = []
    var watcher: FileWatcher?
    /// TLS certificate, key and CA files of the serving snapshot, watched by path (`Server+TLS.swift`).
    var tlsWatchers: [String: FileWatcher] = [:]
    /// Certificate reloads done, and refused (a bad file: the old certificate stays).
    var tlsReloads = 0
    var tlsReloadFailures = 0
    var drainTimer: LoopTimer?
    /// Clusters of the current snapshot with outlier detection (their review timers run here).
    var outlierWatched: [ClusterShared] = []
    /// Clusters of the current snapshot with active health checks (their probes run here).
    var healthWatched: [ClusterShared] = []
    /// Clusters whose endpoint names are resolved again every `dns_refresh` (Server+DNS.swift), by name.
    var dnsWatched: [String: DNSWatch] = [:]
    var overload: OverloadMonitor?
    var started = 0
    var stopped = 0
    var ready = false
    /// Bytes of the executable's text released from the mapping once serving (0: not yet, or skipped).
    var startupTextReleased = 0
    /// Runs that release once, a second after `ready`.
    var textTimer: LoopTimer?
    /// Gives freed heap memory back to the kernel after bursts (support.h, `remora_trim_heap`):
    /// checked every 2 s, trimmed when at least 2 MiB lie free in malloc's lists.
    var heapTimer: LoopTimer?
    static let heapTrimPeriod: Millis = 2_000
    static let heapTrimThreshold = 2 << 20
    var draining = false
    var exitCode: Int32 = 0
    /// The config file (SIGHUP and `--watch` reload it).
    public var configPath: String?
    /// Reload `configPath` whenever it changes.
    public var watch = false
    /// `remora run --sidecar`: a reloaded file without a `sidecar:` section gets its defaults too.
    public var sidecarDefault = false
    /// Subscribe to a control server: `(url, node, group, token)`. Without a local config the
    /// proxy reports ready only once the first configuration from it is installed.
    public var control: (url: String, node: String, group: String, token: String?)?
    var subscriber: Subscriber?
    /// `sidecar.mtls.from_control`: keeps the workload certificate from the control server renewed.
    var identityAgent: IdentityAgent?
    var awaitingControl = false
    /// Called on the main loop once every worker is listening (demo prints its hint here).
    public var onReady: (() -> Void)?
    /// More things the main loop must close at exit (demo backends).
    public var extraClose: [() -> Void] = []

    /// `loop` is the main thread's loop (the caller may already run demo backends on it).
    public init(config: Config, source: String = "", loop: EventLoop = EventLoop()) {
        self.config = config
        self.source = source
        self.loop = loop
    }

    /// Runs until drained. Returns the process exit code.
    public func run() -> Int32 {
        remoraIgnoreSIGPIPE()
        if let e = prepareIdentity(config, attempts: 60) {
            log("\(ConfigLoader.locate(e, in: source, file: configPath ?? ""))")
            return 1
        }
        do { snapshot = try Snapshot(config: config) } catch let e as ConfigErrors {
            log("\(ConfigLoader.locate(e, in: source, file: configPath ?? ""))")
            return 1
        } catch {
            log("\(error)")
            return 1
        }
        workerCount = config.workers > 0 ? config.workers : onlineCPUs()
        // A proxy waiting for its first configuration from the control server binds nothing yet
        // (`run --sidecar --control` starts with the sidecar's listeners in `config`): the first
        // pushed configuration binds its listeners and starts the workers (`startWith`).
        let waitsForControl = control != nil && configPath == nil
        let fds: [[String: Int32]]
        do {
            fds = waitsForControl ? [] : try bindNew(config)
            if let a = config.admin, let addr = try Resolver.resolve(a.address).first {
                let server = try AdminServer(loop: loop, address: addr, token: a.token, target: self)
                admin = server
                adminToken = a.token
                if let warning = server.exposureWarning { log(warning) }
            }
        } catch {
            log("\(error)")
            return 1
        }
        mainMailbox = Mailbox(loop: loop) { [unowned self] in self.handle($0) }
        overload = OverloadMonitor(loop: loop) { [unowned self] in self.config.overload }
        for sig in [SIGTERM, SIGINT] {
            signals.append(SignalWatcher(loop: loop, signal: sig) { [unowned self] s in
                self.beginDrain(timeout: s == SIGINT ? min(self.config.drainTimeout, 1_000) : self.config.drainTimeout)
            })
        }
        signals.append(SignalWatcher(loop: loop, signal: SIGHUP) { [unowned self] _ in self.reloadFile() })
        // logrotate's way: rename the files, then SIGUSR1; the writer opens the paths anew.
        signals.append(SignalWatcher(loop: loop, signal: SIGUSR1) { [unowned self] _ in self.registry?.accessLogWriter.reopenAll() })
        if watch, let path = configPath {
            // Applied once the file has stayed unchanged for 500 ms (FileWatcher), so a file being
            // written is never read half-way, however slowly it is written (up to 500 ms pauses).
            watcher = FileWatcher(loop: loop, path: path, settle: 500) { [unowned self] in self.reloadFile() }
        }
        if let c = control {
            do {
                subscriber = try Subscriber(server: self, loop: loop, url: c.url, node: c.node, group: c.group, token: c.token)
            } catch {
                log("\(error)")
                return 1
            }
            awaitingControl = configPath == nil
        }
        if awaitingControl {
            // Workers start with the first configuration from the control server (its `workers` counts).
            subscriber?.start()
        } else {
            startWorkers(snapshot, fds: fds)
        }
        loop.run()
        threads.forEach(joinThread)
        if !loop.close() { log("main loop closed with \(loop.handleCount) handles left") }
        return exitCode
    }

    func startWorkers(_ snap: Snapshot, fds: [[String: Int32]]) {
        watchOutliers(snap)
        watchHealth(snap)
        watchTLS(snap)
        watchDNS(snap)
        registry = StatRegistry(workers: workerCount)
        let stats = registry.stats(for: snap)
        workerMailboxes = Array(repeating: nil, count: workerCount)
        workerLogs = (0..<workerCount).map { _ in WorkerLog() }
        let main = mainMailbox!
        for w in 0..<workerCount {
            let myFDs = fds[w]
            let st = stats[w]
            let wlog = workerLogs[w]
            threads.append(spawnThread {
                Worker(id: w, snapshot: snap, stats: st, log: wlog).run(fds: myFDs, main: main)
            })
        }
    }

    /// Binds sockets for the listeners of `cfg` that are new or moved (one per worker), returning
    /// them by worker and listener name. A listener keeps its sockets while its address and
    /// protocol stay. A new address binds exclusively (it fails when anything else holds it); an
    /// address this process already serves joins that reuseport group, so the new socket listens
    /// before the old one closes. On failure nothing stays bound.
    func bindNew(_ cfg: Config) throws -> [[String: Int32]] {
        var fds = Array(repeating: [String: Int32](), count: workerCount)
        var got: [String: (spec: HostPort, proto: ListenerProtocol, actual: SocketAddress)] = [:]
        var listener = ""
        do {
            for l in cfg.listeners {
                listener = l.name
                if l.isInternal { continue }   // a sidecar service's HTTP listener: fed by the outbound one
                if let b = bound[l.name], b.spec == l.address, b.proto == l.protocol { continue }
                let served = bound.values.first { $0.spec == l.address && $0.spec.port != 0 }
                guard var addr = try served?.actual ?? Resolver.resolve(l.address).first else { continue }
                for w in 0..<workerCount {
                    let fd = try ListenSocket.bind(addr, first: w == 0 && served == nil)
                    if w == 0, let actual = ListenSocket.localAddress(fd) { addr = actual }
                    fds[w][l.name] = fd
                }
                got[l.name] = (l.address, l.protocol, addr)
            }
        } catch {
            for f in fds { f.values.forEach(ListenSocket.closeFD) }
            throw ListenerBindError(listener: listener, error: error)
        }
        for (name, b) in got { bound[name] = b }
        return fds
    }

    /// Installs a new configuration in every worker, make-before-break. Returns the errors when it
    /// is refused, each with `file` and the line of its field in `src`; the configuration serving
    /// now then stays.
    @discardableResult
    public func apply(_ cfg: Config, source src: String, file: String = "") -> ConfigErrors? {
        install(cfg, source: src).map { ConfigLoader.locate($0, in: src, file: file) }
    }

    func install(_ cfg: Config, source src: String) -> ConfigErrors? {
        if draining { return ConfigErrors([ConfigError(file: "", line: 0, path: "", message: "draining")]) }
        var cfg = cfg
        if let e = addSidecarDefault(&cfg) { return e }
        if awaitingControl { return startWith(cfg, source: src) }
        if !ready {
            return ConfigErrors([ConfigError(file: "", line: 0, path: "", message: "not started yet")])
        }
        if cfg.workers != 0 && cfg.workers != workerCount {
            return ConfigErrors([ConfigError(file: "", line: 0, path: "workers",
                                             message: "fixed at start (\(workerCount) running); a restart changes it")])
        }
        if let a = cfg.admin, a.address != config.admin?.address {
            return ConfigErrors([ConfigError(file: "", line: 0, path: "admin.address",
                                             message: "fixed at start (\(adminAddress ?? "none")); a restart changes it")])
        }
        if let a = cfg.admin, a.token != adminToken {
            return ConfigErrors([ConfigError(file: "", line: 0, path: "admin.token",
                                             message: "fixed at start; a restart changes it")])
        }
        if let e = prepareIdentity(cfg) { return e }
        let snap: Snapshot
        do { snap = try Snapshot(config: cfg, previous: snapshot) } catch let e as ConfigErrors { return e } catch {
            return ConfigErrors([ConfigError(file: "", line: 0, path: "", message: "\(error)")])
        }
        let fds: [[String: Int32]]
        do { fds = try bindNew(cfg) } catch {
            return ConfigErrors([ConfigError(file: "", line: 0, path: bindErrorPath(error), message: "\(error)")])
        }
        let names = Set(cfg.listeners.map(\.name))
        for name in bound.keys where !names.contains(name) { bound[name] = nil }
        let stats = registry.stats(for: snap)
        for (w, box) in workerMailboxes.enumerated() { box?.post(.apply(snap, stats[w], fds: fds[w])) }
        watchOutliers(snap)
        watchHealth(snap)
        watchTLS(snap)
        watchDNS(snap)
        snapshot = snap
        config = cfg
        source = src
        version += 1
        log("configuration version \(version) applied")
        return nil
    }

    /// The first configuration of a proxy that had none: bind, start the workers (`ready` follows
    /// once they listen).
    func startWith(_ cfg: Config, source src: String) -> ConfigErrors? {
        if let e = prepareIdentity(cfg) { return e }
        let snap: Snapshot
        do { snap = try Snapshot(config: cfg) } catch let e as ConfigErrors { return e } catch {
            return ConfigErrors([ConfigError(file: "", line: 0, path: "", message: "\(error)")])
        }
        if let a = cfg.admin, a.address != config.admin?.address {
            return ConfigErrors([ConfigError(file: "", line: 0, path: "admin.address",
                                             message: "fixed at start (\(adminAddress ?? "none")); a restart changes it")])
        }
        if let a = cfg.admin, a.token != adminToken {
            return ConfigErrors([ConfigError(file: "", line: 0, path: "admin.token",
                                             message: "fixed at start; a restart changes it")])
        }
        workerCount = cfg.workers > 0 ? cfg.workers : onlineCPUs()
        let fds: [[String: Int32]]
        do { fds = try bindNew(cfg) } catch {
            return ConfigErrors([ConfigError(file: "", line: 0, path: bindErrorPath(error), message: "\(error)")])
        }
        var cfg = cfg
        cfg.admin = config.admin
        snapshot = snap
        config = cfg
        source = src
        awaitingControl = false
        startWorkers(snap, fds: fds)
        log("configuration version \(version) applied; workers starting")
        return nil
    }

    /// `remora run --sidecar`: a configuration without a `sidecar:` section, from the file, a reload
    /// or the control server, gets the section's defaults (outbound 15001, inbound 15006, passthrough).
    /// Refused when one of those listener names is taken.
    func addSidecarDefault(_ cfg: inout Config) -> ConfigErrors? {
        guard sidecarDefault && cfg.sidecar == nil else { return nil }
        let clash = cfg.addSidecar(SidecarConfig())
        guard !clash.isEmpty else { return nil }
        return ConfigErrors(clash.map {
            ConfigError(file: "", line: 0, path: "listeners.\($0)", message: "name taken: `remora run --sidecar` adds a listener by that name")
        })
    }

    /// `listeners.NAME.address` for a listener that could not be bound.
    func bindErrorPath(_ error: any Error) -> String {
        (error as? ListenerBindError).map { "listeners.\($0.listener).address" } ?? "listeners"
    }

    /// Reloads `configPath` (SIGHUP, `--watch`); a bad file is reported and the serving one stays.
    /// The file is read once: what is validated is what is installed and shown by /config_dump.
    func reloadFile() {
        guard let path = configPath, ready, !draining else { return }
        if subscriber != nil {   // the control server owns the configuration; the file was only the first one
            log("\(path) changed or SIGHUP: ignored, the configuration comes from the control server")
            return
        }
        let read = ConfigLoader.read(path: path)
        switch read.flatMap({ ConfigLoader.parse(bytes: $0, file: path) }) {
        case .failure(let e):
            log("\(path) not applied:\n\(e)")
        case .success(var cfg):
            let text = (try? read.get()).map { String(decoding: $0, as: UTF8.self) } ?? ""
            if let e = addSidecarDefault(&cfg) { log("\(path) not applied:\n\(ConfigLoader.locate(e, in: text, file: path))"); return }
            if cfg == config { return }
            if let e = apply(cfg, source: text, file: path) { log("\(path) not applied:\n\(e)") }
        }
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
            if started == workerMailboxes.count && !draining {
                if !(subscriber?.running ?? true) { subscriber?.start() }
                announce()
            }
        case let .log(w, line):
            reportDroppedLines(worker: w)
            log(line)
            workerLogs[w].written(line)
        case let .outlier(shared, e, kind):
            outlierFailed(shared, endpoint: e, kind: kind)
        case let .stopped(w):
            reportDroppedLines(worker: w)
            stopped += 1
            if stopped == workerMailboxes.count { shutdownMain() }
        }
    }

    func reportDroppedLines(worker w: Int) {
        let n = workerLogs[w].takeDropped()
        if n > 0 { log("worker \(w): \(n) log line(s) dropped (its log buffer was full)") }
    }

    /// Tells the world where everything listens, then `ready` (tests and scripts wait for it).
    /// The admin server's address, for the control server's status table.
    var adminAddress: String? { admin.map { "\($0.address)" } }

    func announce() {
        if !ready {
            // Start-up code has run: its text need not stay mapped (support.h says why). A second
            // later, so that the last start-up steps (this line, the workers' first loop turns) do
            // not map much of it back at once.
            let t = LoopTimer(loop: loop)
            t.unref()
            t.start(after: 1_000) { [unowned self] in
                startupTextReleased = remora_release_startup_text()
                textTimer?.close()
                textTimer = nil
            }
            textTimer = t
            let h = LoopTimer(loop: loop)
            h.unref()
            h.start(after: Server.heapTrimPeriod, repeat: Server.heapTrimPeriod) {
                _ = remora_trim_heap(Server.heapTrimThreshold)
            }
            heapTimer = h
        }
        ready = true
        var out = ""
        if let a = admin { out += "listening admin \(a.address)\n" }
        for l in config.listeners where !l.isInternal { out += "listening listener \(l.name) \(bound[l.name]!.actual)\n" }
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
        subscriber?.stop()
        log("draining (up to \(timeout) ms)")
        if threads.isEmpty { shutdownMain(); return }   // never got a configuration: nothing to drain
        workerMailboxes.forEach { $0?.post(.drain) }
        let t = LoopTimer(loop: loop)
        t.start(after: timeout) { [unowned self] in self.workerMailboxes.forEach { $0?.post(.forceClose) } }
        t.unref()
        drainTimer = t
    }

    func shutdownMain() {
        for s in outlierWatched { s.timer?.close(); s.timer = nil }
        outlierWatched = []
        for s in healthWatched { s.checker?.stop(); s.checker = nil }
        healthWatched = []
        stopDNS()
        registry?.accessLogWriter.finish(timeoutMs: 1_000)   // the last lines, unless the file is stuck
        drainTimer?.close()
        textTimer?.close()
        heapTimer?.close()
        overload?.close()
        watcher?.close()
        tlsWatchers.values.forEach { $0.close() }
        tlsWatchers = [:]
        subscriber?.stop()
        admin?.close()
        signals.forEach { $0.close() }
        mainMailbox.close()
        extraClose.forEach { $0() }
    }
}

/// A listener's address could not be resolved or bound (prints as the underlying error).
struct ListenerBindError: Error, CustomStringConvertible {
    var listener: String
    var error: any Error
    var description: String { "\(error)" }
}

/// The whole file as text, or nil.
public func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        bytes += buf[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
