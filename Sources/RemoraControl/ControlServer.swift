import Glibc
import RemoraAdmin
import RemoraConfig
import RemoraCore
import RemoraIO

/// `remora control`: serves docs/control-plane.md on one libuv loop. Requests are parsed by
/// `ControlRequest`, decided by `ControlState`, stored by `StateDirectory`; this class carries out
/// the I/O: the HTTP server, long polls waiting for a change of their group (each with its timer),
/// who may call it (`LocalRequestGuard`: Host, Origin, token), and SIGTERM/SIGINT (waiting polls
/// get 304, then the process exits 0).
public final class ControlServer {
    public struct Options {
        /// The state directory (created if missing).
        public var stateDirectory: String
        /// Where to listen. Default 127.0.0.1:9911.
        public var listen: HostPort
        /// Bearer token every request must carry; required when `listen` is not a loopback address.
        public var token: String?
        /// The mesh CA's trust domain, certificate lifetime and root (docs/control-plane.md "Mesh CA").
        public var ca = MeshCA.Options()
        public init(stateDirectory: String, listen: HostPort = HostPort(host: "127.0.0.1", port: 9911), token: String? = nil) {
            self.stateDirectory = stateDirectory; self.listen = listen; self.token = token
        }
    }

    /// A long poll waiting for its group to change.
    final class Waiter {
        let group: String
        let node: String
        let pending: LocalHTTPServer.Pending
        let timer: LoopTimer
        init(group: String, node: String, pending: LocalHTTPServer.Pending, timer: LoopTimer) {
            self.group = group; self.node = node; self.pending = pending; self.timer = timer
        }
    }

    public let loop: EventLoop
    public let state: ControlState
    /// The mesh CA: workload certificates for CSRs with a bootstrap token, the trust bundle.
    public let ca: MeshCA
    let directory: StateDirectory
    /// Refuses rebinding Hosts, cross-origin requests (every method: even a poll records its node)
    /// and requests without the token.
    let access: LocalRequestGuard
    var http: LocalHTTPServer!
    /// Waiting polls by group.
    var waiting: [String: [ObjectIdentifier: Waiter]] = [:]
    var signals: [SignalWatcher] = []
    var stopTimer: LoopTimer?
    var stopping = false
    /// `stop()` was called.
    public var isStopping: Bool { stopping }
    /// After `run`: the loop closed with no handle left.
    public private(set) var closedClean = false
    /// Where it listens (port 0 resolved).
    public var address: SocketAddress { http.address }
    /// Called once listening (the command prints `listening control …` and `ready`).
    public var onReady: (() -> Void)?
    /// Called when `stop()` begins (an embedding program closes its own handles so that the loop ends).
    public var onStop: (() -> Void)?
    /// Called with every ACK (`reason` nil) or NACK a node reports (remora-xds logs the proxy's verdict).
    public var onReport: ((_ node: String, _ group: String, _ version: UInt64, _ reason: String?) -> Void)?
    /// Where log lines go (stderr by default).
    public var log: (String) -> Void = { s in
        var line = "remora control: " + s + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }

    /// Loads the state directory and binds. Refuses a non-loopback address without a token.
    public init(options: Options, loop: EventLoop = EventLoop()) throws(ControlError) {
        let addr: SocketAddress
        do {
            guard let a = try Resolver.resolve(options.listen).first else { throw ControlError(400, "cannot resolve \(options.listen)") }
            addr = a
        } catch let e as ControlError { throw e } catch {
            throw ControlError(400, "--listen \(options.listen): \(error)")
        }
        if !Self.isLoopback(addr) && (options.token ?? "").isEmpty {
            throw ControlError(400, "--listen \(options.listen) is not a loopback address: a bearer token is required "
                               + "(--token-file FILE or REMORA_CONTROL_TOKEN)")
        }
        self.loop = loop
        access = LocalRequestGuard(token: options.token)
        directory = try StateDirectory(path: options.stateDirectory)
        try directory.lock()
        let groups = try directory.load()
        let dir = directory
        state = ControlState(groups: groups) { g throws(ControlError) in try dir.save(g) }
        ca = try MeshCA(stateDirectory: directory.path, options: options.ca, now: Int64(time(nil)))
        do {
            http = try LocalHTTPServer(loop: loop, address: addr) { [unowned self] req, pending in self.handle(req, pending) }
        } catch {
            throw ControlError(500, "listen on \(options.listen): \(error)")
        }
        http.maxBodyBytes = 8 << 20
        ca.log = { [unowned self] in self.log($0) }
        for g in groups {
            if case .failure(let e) = ConfigLoader.parse(yaml: g.document, file: g.name) {
                log("group \(g.name) version \(g.version) is not a valid configuration (stored with force):\n\(e)")
            }
        }
    }

    /// 127.0.0.0/8, ::1 and IPv4-mapped 127.x.
    public static func isLoopback(_ a: SocketAddress) -> Bool { LocalRequestGuard.isLoopback(a) }

    /// Serves until SIGTERM or SIGINT. Returns the exit code.
    public func run() -> Int32 {
        remoraIgnoreSIGPIPE()
        for sig in [SIGTERM, SIGINT] {
            signals.append(SignalWatcher(loop: loop, signal: sig) { [unowned self] _ in self.stop() })
        }
        log("serving \(state.groups.count) group(s) from \(directory.path) on \(address)")
        onReady?()
        loop.run()
        // The stop timer is unref'd: the loop ended without it. Close it and let its callback run.
        stopTimer?.close()
        stopTimer = nil
        loop.run()
        closedClean = loop.close()
        if !closedClean { log("loop closed with \(loop.handleCount) handles left") }
        return 0
    }

    /// Waiting polls get 304, the listener closes, connections close after their answer.
    public func stop() {
        guard !stopping else { return }
        stopping = true
        log("stopping")
        onStop?()
        http.closeGracefully()
        for (_, ws) in waiting { for w in ws.values { finish(w, answer: notModified) } }
        waiting = [:]
        signals.forEach { $0.close() }
        signals = []
        // Connections that do not go away by themselves (a client sending a slow request) are closed.
        let t = LoopTimer(loop: loop)
        t.start(after: 3_000) { [unowned self] in self.http.close(); self.stopTimer?.close() }
        t.unref()
        stopTimer = t
    }

    // MARK: requests

    func handle(_ req: LocalHTTPServer.Request, _ pending: LocalHTTPServer.Pending) -> LocalHTTPServer.Response? {
        if let refused = access.hostRefusal(req) ?? access.crossOriginRefusal(req) ?? access.tokenRefusal(req) {
            return refused
        }
        switch ControlRequest.parse(method: req.method, target: req.target, body: req.body) {
        case .failure(let e):
            return errorResponse(e)
        case .success(let r):
            switch r {
            case .caIssue, .caBundle, .caStatus, .caRotate:
                do { return try executeCA(r, identityToken: req.header("x-remora-identity-token")) } catch { return errorResponse(error) }
            default:
                do { return try execute(r, pending) } catch { return errorResponse(error) }
            }
        }
    }

    func errorResponse(_ e: ControlError) -> LocalHTTPServer.Response {
        .init(status: e.status, body: e.message.hasSuffix("\n") ? e.message : e.message + "\n")
    }

    let notModified = LocalHTTPServer.Response(status: 304, body: "")

    func execute(_ r: ControlRequest, _ pending: LocalHTTPServer.Pending) throws(ControlError) -> LocalHTTPServer.Response? {
        let now = loop.now
        switch r {
        case let .snapshot(group, node, version, admin, wait):
            state.saw(node: node, group: group, admin: admin, now: now)
            state.polled(node: node, version: version)
            switch try state.poll(group: group, version: version) {
            case .send(let g):
                state.delivered(node: node, version: g.version)
                return document(g)
            case .wait:
                if wait == 0 || stopping { return notModified }
                park(group: group, node: node, pending: pending, seconds: wait)
                return nil
            }
        case let .ack(group, node, version):
            state.report(node: node, group: group, version: version, nack: nil, now: now)
            onReport?(node, group, version, nil)
            guard state.groups[group] != nil else { throw ControlError(404, "no group \(group)") }
            return .init(status: 204, body: "")
        case let .nack(group, node, version, reason):
            state.report(node: node, group: group, version: version, nack: reason, now: now)
            onReport?(node, group, version, reason)
            log("node \(node) refused \(group) version \(version): \(reason.split(separator: "\n").first ?? "")")
            guard state.groups[group] != nil else { throw ControlError(404, "no group \(group)") }
            return .init(status: 204, body: "")
        case let .put(group, doc, force):
            let w = try state.put(group: group, document: doc, force: force)
            if w.changed {
                log("group \(group): version \(w.version) (\(doc.utf8.count) bytes\(force ? ", forced" : ""))")
                changed(group)
            }
            return written(w)
        case .getGroup(let group):
            guard let g = state.groups[group] else { throw ControlError(404, "no group \(group)") }
            return document(g)
        case .listGroups:
            return .init(status: 200, body: state.groupLines())
        case let .split(group, route, weights):
            let w = try state.split(group: group, route: route, weights: weights)
            if w.changed {
                log("group \(group): version \(w.version) (route \(route): \(weights.map { "\($0.cluster)=\($0.weight)" }.joined(separator: " ")))")
                changed(group)
            }
            return written(w)
        case .status:
            return .init(status: 200, body: state.statusLines(now: now))
        case .caIssue, .caBundle, .caStatus, .caRotate:
            throw ControlError(500, "internal error: CA request outside executeCA")
        }
    }

    /// The mesh CA's requests (docs/control-plane.md "Mesh CA").
    func executeCA(_ r: ControlRequest, identityToken: String?) throws(ControlError) -> LocalHTTPServer.Response {
        let now = Int64(time(nil))
        switch r {
        case .caIssue(let csr):
            do {
                let (cert, id) = try ca.issue(csr: csr, token: identityToken, now: now)
                log("issued a certificate for \(id.spiffeID(trustDomain: ca.options.trustDomain)) (\(ca.options.certificateTTL) s)")
                return .init(status: 200, contentType: "application/x-pem-file", body: cert)
            } catch {
                if error.status == 401 || error.status == 403 { log("certificate refused: \(error.message)") }
                throw error
            }
        case .caBundle:
            return .init(status: 200, contentType: "application/x-pem-file", body: ca.bundle)
        case .caStatus:
            return .init(status: 200, body: ca.status(now: now))
        case let .caRotate(start, signAfter, force):
            if start { try ca.rotateStart(now: now, signAfter: Int64(signAfter)) } else { try ca.rotateFinish(now: now, force: force) }
            return .init(status: 200, body: ca.status(now: now))
        default:
            throw ControlError(404, "not a CA request")
        }
    }

    func document(_ g: StoredGroup) -> LocalHTTPServer.Response {
        .init(status: 200, contentType: "application/yaml", body: g.document, headers: [("x-remora-version", "\(g.version)")])
    }

    func written(_ w: ControlState.Written) -> LocalHTTPServer.Response {
        .init(status: 200, body: "version \(w.version)\n", headers: [("x-remora-version", "\(w.version)")])
    }

    /// Stores `document` as the group's next version (validated as a PUT is) and answers the polls
    /// waiting on the group at once: how a program embedding the server (remora-xds) publishes.
    /// `validated`: the caller has run the document through `ConfigLoader` already (it is stored as is).
    public func publish(group: String, document: String, validated: Bool = false) throws(ControlError) -> ControlState.Written {
        let w = try state.put(group: group, document: document, force: validated)
        if w.changed { changed(group) }
        return w
    }

    // MARK: long polls

    func park(group: String, node: String, pending: LocalHTTPServer.Pending, seconds: UInt64) {
        let w = Waiter(group: group, node: node, pending: pending, timer: LoopTimer(loop: loop))
        waiting[group, default: [:]][ObjectIdentifier(w)] = w
        pending.onCancel = { [unowned self] in self.remove(w) }
        w.timer.start(after: seconds * 1000) { [unowned self] in
            self.remove(w)
            self.finish(w, answer: self.notModified)
        }
    }

    func remove(_ w: Waiter) {
        waiting[w.group]?[ObjectIdentifier(w)] = nil
        if waiting[w.group]?.isEmpty == true { waiting[w.group] = nil }
        w.timer.close()
    }

    func finish(_ w: Waiter, answer: LocalHTTPServer.Response) {
        w.timer.close()
        w.pending.answer(answer)
    }

    /// The group has a new version: every poll waiting on it gets it now.
    func changed(_ group: String) {
        guard let ws = waiting.removeValue(forKey: group), let g = state.groups[group] else { return }
        let answer = document(g)
        for w in ws.values {
            state.delivered(node: w.node, version: g.version)
            finish(w, answer: answer)
        }
    }

    /// Polls waiting now (tests, logs).
    public var waitingCount: Int { waiting.values.reduce(0) { $0 + $1.count } }
}
