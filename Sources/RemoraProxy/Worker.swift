import Glibc
import RemoraCore
import RemoraHTTP
import RemoraIO
import RemoraPolicy
import RemoraRouting
import RemoraTLS

/// Messages the main thread posts to a worker.
enum WorkerMessage: Sendable {
    /// Stop accepting, finish in-flight requests, close idle connections, then exit the loop.
    case drain
    /// Drain time is up: close everything now.
    case forceClose
    /// A new snapshot, with this worker's new listening sockets by listener name (a listener whose
    /// socket is kept has none).
    case apply(Snapshot, WorkerStats, fds: [String: Int32])
    /// Outlier detection ejected or returned endpoints: clusters take the new set (`applyEjections`).
    case ejectionsChanged
}

/// Messages a worker posts to the main thread.
enum MainMessage: Sendable {
    case started(worker: Int, mailbox: Mailbox<WorkerMessage>, error: String?)
    case stopped(worker: Int)
    /// A line to log (Worker.log: the main thread writes it, a worker never does).
    case log(worker: Int, line: String)
    /// Outlier detection: an endpoint of a cluster reached a threshold of failures in a row (the
    /// main loop decides whether it is ejected).
    case outlier(ClusterShared, endpoint: Int, kind: OutlierKind)
}

/// One event loop on one thread with everything it serves: its own listening sockets, its own
/// upstream pools, its own stats. Nothing mutable is shared with other workers. A new snapshot is
/// installed make-before-break: in-flight requests finish on the snapshot they started with,
/// sockets of unchanged listeners and pools of unchanged clusters are kept.
final class Worker {
    let id: Int
    let loop: EventLoop
    var snapshot: Snapshot
    var stats: WorkerStats
    /// Listeners by name: stable across snapshots (sessions hold them).
    var slots: [String: ListenerSlot] = [:]
    /// Clusters of the current snapshot by name (kept across snapshots while their config holds).
    var clusterByName: [String: Cluster] = [:]
    /// Clusters a snapshot dropped or changed: idle connections closed, in-flight requests finish.
    var retired: [Cluster] = []
    var mailbox: Mailbox<WorkerMessage>!
    var rng: FastRandom
    /// Latency histograms are recorded (the listener's and clusters' request times, Istio's series).
    /// Always true but with `REMORA_PERF_NO_HISTOGRAMS` in the environment: a measuring switch for
    /// `perf/cg_features.py` (what the histograms cost per request), not a setting.
    let recordsHistograms: Bool
    /// Scratch space for assembling heads and frames before a write (used synchronously only).
    var scratch = ByteBuffer(capacity: 16 * 1024)
    /// Head and body buffers lent to exchanges (idle connections own none).
    let pool = BufferPool()
    /// Recycled exchanges and HTTP/2 server streams (nothing allocated per request once warm).
    var freeExchanges = Recycler<Exchange>()
    /// Where mirrored requests' responses go, and what they count in (not listed in /stats).
    lazy var discard = DiscardDownstream(worker: self)
    let shadowStats = StatBlock<ListenerStat>()
    var freeServerStreams = Recycler<H2ServerStream>()
    /// HTTP/1.1 request parsers given back by parked sessions (`HTTPSession.park`), for the next
    /// session that needs one (at most 256 kept).
    var freeParsers = ParserFreeList(maxKept: 256)
    deinit { freeParsers.removeAll() }
    /// Sessions with frames or stashed requests to process at the end of this loop iteration.
    var toFlush: [any Flushable] = []
    var flushHook: IterationHook?
    /// Downstream sessions, for draining (intrusive list: no allocation per connection).
    var sessionHead: Session?
    var sessionCount = 0
    var draining = false
    /// Plaintext HTTP connections over a connection limit waiting for their first bytes
    /// (`OverflowRefusal`), at most `OverflowRefusal.maxWaiting`.
    var refusalsWaiting = 0
    /// `close_expired`: the timer for the earliest certificate expiry among this worker's TLS
    /// connections (`Worker+TLS.swift`), and when it is due (Unix seconds; 0: not armed).
    var expiryTimer: LoopTimer?
    var expiryDue: Int64 = 0
    /// Every `trimPeriod` ms, what the pools kept but nothing took during the whole period is let
    /// go (`trimPools`).
    var trimTimer: LoopTimer?
    static let trimPeriod: UInt64 = 5_000
    /// Log lines on their way to the main thread, which writes them (`log`).
    let logBuffer: WorkerLog
    var main: Mailbox<MainMessage>!

    init(id: Int, snapshot: Snapshot, stats: WorkerStats, log: WorkerLog) {
        self.id = id
        self.snapshot = snapshot
        self.stats = stats
        logBuffer = log
        loop = EventLoop()
        var seed: UInt64 = 0
        withUnsafeMutableBytes(of: &seed) { _ = getentropy($0.baseAddress, 8) }
        rng = FastRandom(seed: seed ^ UInt64(id))
        recordsHistograms = getenv("REMORA_PERF_NO_HISTOGRAMS") == nil
    }

    /// Runs the worker on the calling thread until it has drained. `fds` are its bound sockets by
    /// listener name.
    func run(fds: [String: Int32], main: Mailbox<MainMessage>) {
        self.main = main
        mailbox = Mailbox(loop: loop) { [unowned self] m in self.handle(m) }
        flushHook = IterationHook(loop: loop) { [unowned self] in self.runFlushes() }
        let trim = LoopTimer(loop: loop)
        trim.unref()
        trim.start(after: Worker.trimPeriod, repeat: Worker.trimPeriod) { [unowned self] in self.trimPools() }
        trimTimer = trim
        let error = install(snapshot, stats, fds: fds)
        main.post(.started(worker: id, mailbox: mailbox, error: error))
        if error != nil { beginDrain(); closeListeners() }
        loop.run()
        scratch.release()
        if !loop.close() { log("loop closed with \(loop.handleCount) handles left") }
        main.post(.stopped(worker: id))
    }

    /// Makes `snap` current. Returns an error when a new socket could not listen (the listener
    /// keeps its old socket, if it had one).
    @discardableResult
    func install(_ snap: Snapshot, _ st: WorkerStats, fds: [String: Int32]) -> String? {
        var error: String?
        var clusters: [Cluster] = []
        var byName: [String: Cluster] = [:]
        for (i, c) in snap.config.clusters.enumerated() {
            let eps = snap.endpoints[i]
            if let old = clusterByName[c.name], old.config == c,
               old.endpoints.map(\.address.description) == eps.map(\.description),
               old.endpoints.map(\.weight) == snap.weights[i], old.shared === snap.shared[i] {
                clusters.append(old)
            } else {
                clusters.append(Cluster(worker: self, index: i, config: c, endpoints: eps, weights: snap.weights[i],
                                        shared: snap.shared[i], stats: st.clusters[i], tls: snap.clusterTLS[i],
                                        previous: clusterByName[c.name]))
            }
            byName[c.name] = clusters[i]
        }
        for (name, old) in clusterByName where byName[name] !== old {
            old.retired = true   // busy connections close when their exchange ends
            old.closeIdle()
            retired.append(old)
        }
        retired.removeAll { $0.isUnused }
        clusterByName = byName
        var live: Set<String> = []
        for (i, l) in snap.config.listeners.enumerated() {
            live.insert(l.name)
            let tcp = snap.tcpCluster[i] >= 0 ? clusters[snap.tcpCluster[i]] : nil
            let runtime = ListenerRuntime(worker: self, config: l, tls: snap.listenerTLS[i], routes: snap.routeTables[i], clusters: clusters,
                                          tcpCluster: tcp, stats: st.listeners[i], backendStats: st.routeBackends[i],
                                          filters: ListenerRuntime.filters(l, st, i, routes: snap.routeTables[i], worker: self,
                                                                           rateLimitBuckets: snap.rateLimitBuckets[i],
                                                                           authorization: snap.authorization[i]),
                                          tracing: ListenerRuntime.tracing(l, st, i, routes: snap.routeTables[i], worker: self),
                                          accessLog: ListenerRuntime.accessLog(l, st, i, routes: snap.routeTables[i]))
            runtime.secure(authorization: snap.authorization[i], rules: i < st.authzRules.count ? st.authzRules[i] : [],
                           connections: snap.connections[i], processMaxConnections: snap.config.maxConnections)
            if snap.connectCluster[i] >= 0 {   // CONNECT tunnels (issue 18)
                runtime.connectCluster = clusters[snap.connectCluster[i]]
                runtime.connectTargets = snap.connectTargets[snap.connectCluster[i]]
            }
            let slot = slots[l.name] ?? ListenerSlot(worker: self, name: l.name, current: runtime)
            slots[l.name] = slot
            slot.current = runtime
            if let fd = fds[l.name] {
                do {
                    let sock = try Listener(loop: loop, fd: fd)   // listening before the old socket closes
                    sock.delegate = slot
                    sock.owner = slot
                    slot.socket?.close()
                    slot.socket = sock
                } catch let e {
                    error = "listener \(l.name): \(e)"
                }
            }
        }
        for (name, slot) in slots where !live.contains(name) {
            slot.socket?.close()
            slot.socket = nil
            slots[name] = nil
            // Its connections finish what is in flight on the runtime they hold, then close.
            var s = sessionHead
            while let cur = s { s = cur.next; if cur.slot === slot { cur.drain() } }
        }
        snapshot = snap
        stats = st
        return error
    }

    func handle(_ m: WorkerMessage) {
        switch m {
        case let .apply(snap, st, fds):
            if draining { fds.values.forEach(ListenSocket.closeFD); return }
            if let e = install(snap, st, fds: fds) { log(e) }
        case .ejectionsChanged:
            for c in clusterByName.values { c.applyEjections() }
        case .drain: beginDrain()
        case .forceClose:
            beginDrain()
            closeListeners()
            var s = sessionHead
            while let cur = s { s = cur.next; cur.abort() }
        }
    }

    /// Logs "worker N: `s`" without blocking the loop: the main thread writes it; when the main
    /// thread is behind by more than `logBuffer.capacity`, the line is dropped and counted.
    func log(_ s: String) {
        let line = "worker \(id): " + s
        guard logBuffer.admit(line) else { return }
        if !main.post(.log(worker: id, line: line)) { logBuffer.written(line) }
    }

    func beginDrain() {
        if draining { return }
        draining = true
        // A sidecar's outbound listener keeps accepting until the drain time is up (`.forceClose`):
        // the application in the same pod is being stopped too and may still call out while it
        // shuts down (Istio drains inbound only). Its new HTTP/1.1 connections get one response
        // with `Connection: close` (`HTTPSession` reads `worker.draining`).
        for slot in slots.values where !slot.acceptsWhileDraining { slot.socket?.close(); slot.socket = nil }
        var s = sessionHead
        while let cur = s { s = cur.next; cur.drain() }
        maybeFinishDrain()
    }

    /// Closes every listening socket, the sidecar's outbound one too.
    func closeListeners() {
        for slot in slots.values { slot.socket?.close(); slot.socket = nil }
        maybeFinishDrain()
    }

    func maybeFinishDrain() {
        guard draining, sessionCount == 0, !slots.values.contains(where: { $0.socket != nil }) else { return }
        expiryTimer?.close()
        expiryTimer = nil
        for c in clusterByName.values { c.closeIdle() }
        for c in retired { c.closeIdle() }
        mailbox.close()
        flushHook?.close()
        trimTimer?.close()
        trimTimer = nil
        freeExchanges.removeAll { $0.timer.close() }
        freeParsers.removeAll()
    }

    // MARK: pools and deferred work

    func takeExchange() -> Exchange { freeExchanges.take() ?? Exchange(worker: self) }

    func recycle(_ e: Exchange) {
        if draining && sessionCount == 0 { e.timer.close(); return }
        freeExchanges.give(e)
    }

    /// Lets go of the buffers, exchanges and stream objects the pools kept through a whole period
    /// without use: what a burst (say 512 HTTP/2 streams in flight) took goes back to malloc, and the
    /// main thread's heap trim (`Server.heapTrimThreshold`) returns the pages to the kernel. A steady
    /// load keeps what it uses, and nothing here runs per request.
    func trimPools() {
        pool.trim()
        freeExchanges.trim { $0.timer.close() }
        freeServerStreams.trim()
        for c in clusterByName.values { c.freeStreams.trim() }
        for c in retired { c.freeStreams.trim() }
    }

    func scheduleFlush(_ f: any Flushable) {
        toFlush.append(f)
        flushHook?.arm()
    }

    func runFlushes() {
        var i = 0
        while i < toFlush.count {   // a flush may schedule more
            toFlush[i].flush()
            i += 1
        }
        toFlush.removeAll(keepingCapacity: true)
    }

    // MARK: session list

    func add(_ s: Session) {
        s.next = sessionHead
        sessionHead?.prev = s
        sessionHead = s
        sessionCount += 1
    }

    /// A connection changed protocol (HTTP/1.1 → HTTP/2): the new session takes the old one's place.
    func replace(_ old: Session, with new: Session) {
        new.connections = old.connections   // the same connection: still counted once
        old.connections = nil
        add(new)
        if let p = old.prev { p.next = old.next } else { sessionHead = old.next }
        old.next?.prev = old.prev
        old.prev = nil
        old.next = nil
        sessionCount -= 1
    }

    func remove(_ s: Session) {
        if let c = s.connections { s.connections = nil; c.release() }
        if let p = s.prev { p.next = s.next } else { sessionHead = s.next }
        s.next?.prev = s.prev
        s.prev = nil
        s.next = nil
        sessionCount -= 1
        if draining { maybeFinishDrain() }
    }
}

/// A downstream connection of any protocol, as the worker sees it for draining.
class Session {
    unowned(unsafe) var prev: Session?
    var next: Session?
    /// The listener the connection came in on (a removed listener drains its sessions).
    unowned(unsafe) var slot: ListenerSlot?
    /// Where the connection is counted (`max_connections`); released when the session ends.
    var connections: ConnectionCounter?
    /// Finish what is in flight, then close; close now when idle.
    func drain() {}
    /// Close now.
    func abort() {}
    /// The client's connection (for `close_expired`).
    var downstreamConnection: TCPConnection? { nil }
    /// A certificate this connection was made with expired: finish what is in flight, then close.
    func closeExpired() { drain() }
}

/// One listener in one worker, stable across snapshots: its socket, and the runtime of the
/// current snapshot. Sessions hold the slot and take `current` when a request starts.
final class ListenerSlot: ListenerDelegate {
    unowned(unsafe) let worker: Worker
    let name: String
    var current: ListenerRuntime
    var socket: Listener?

    init(worker: Worker, name: String, current: ListenerRuntime) {
        self.worker = worker; self.name = name; self.current = current
    }

    /// The sidecar's outbound listener stays open while the worker drains (`Worker.beginDrain`).
    var acceptsWhileDraining: Bool { current.config.protocol == .sidecarOutbound }

    func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        let rt = current
        if overloadLevel >= 2 {
            rt.stats.inc(.downstream_cx_overload_reject)
            c.close()
            return
        }
        // A TCP listener's policy is decided per connection, before it is counted.
        if let authz = rt.authorization, rt.config.protocol == .tcp, !rt.admitConnection(authz, c) {
            c.close()
            return
        }
        // Connection limits (`max_connections`): over one, accepted and closed at once.
        let counter: ConnectionCounter = rt.connections
        switch counter.acquire(limit: rt.maxConnections, processLimit: rt.processMaxConnections) {
        case .admitted: break
        case .overListener:
            rt.stats.inc(.downstream_cx_overflow)
            OverflowRefusal.refuse(c, worker: worker, http: rt.config.protocol == .http, plaintext: rt.tls == nil)
            return
        case .overProcess:
            rt.stats.inc(.downstream_global_cx_overflow)
            OverflowRefusal.refuse(c, worker: worker, http: rt.config.protocol == .http, plaintext: rt.tls == nil)
            return
        }
        rt.stats.inc(.downstream_cx_total)
        rt.stats.inc(.downstream_cx_active)
        if let tls = rt.tls {   // TLS under the session: it sees plaintext (RemoraTLS.TLSSocket)
            guard let layer = TLSSocket(server: tls) else { rt.stats.dec(.downstream_cx_active); counter.release(); c.close(); return }
            layer.listenerStats = rt.stats
            if tls.config.closeExpired { layer.observer = worker }
            c.transportSocket = layer
        }
        let s: Session
        switch rt.config.protocol {
        case .http: s = HTTPSession(worker: worker, slot: self, conn: c)
        case .tcp:
            guard let cl = rt.tcpCluster else { rt.stats.dec(.downstream_cx_active); counter.release(); c.close(); return }
            s = TCPProxySession(worker: worker, listener: rt, cluster: cl, down: c)
        case .tls, .sidecarOutbound:
            let sniff = SniffSession(worker: worker, listener: rt, down: c)
            sniff.slot = self
            sniff.connections = counter
            worker.add(sniff)
            if rt.config.protocol == .tls { sniff.start() } else { sniff.startOutbound() }
            return
        case .sidecarInbound where rt.sidecar != nil:   // inbound ports read as HTTP
            let sniff = SniffSession(worker: worker, listener: rt, down: c)
            sniff.slot = self
            worker.add(sniff)
            sniff.startOutbound()
            return
        case .sidecarInbound:
            guard let dst = c.originalDestination() else {
                rt.stats.inc(.sidecar_no_original_dst)
                rt.stats.dec(.downstream_cx_active)
                counter.release()
                c.close()
                return
            }
            s = TCPProxySession(worker: worker, listener: rt, cluster: nil,
                                target: .loopback(ipv6: dst.isIPv6, port: dst.port), down: c)
        }
        s.slot = self
        s.connections = counter
        worker.add(s)
    }
}

/// One listener's state for one snapshot in one worker: config, route table, the clusters its
/// routes name (by the snapshot's cluster index), stats. Requests hold it while they run.
final class ListenerRuntime {
    unowned(unsafe) let worker: Worker
    let config: ListenerConfig
    /// TLS termination (`tls:`), shared by every worker; nil: plaintext.
    let tls: TLSServerContext?
    let routes: RouteTable
    let clusters: [Cluster]
    let tcpCluster: Cluster?
    let stats: StatBlock<ListenerStat>
    /// Per backend slot of `routes`.
    let backendStats: [StatBlock<RouteBackendStat>]
    /// The scheme requests arrive with (X-Forwarded-Proto, redirects): "https" on a TLS listener.
    let scheme: StaticString
    /// The listener's HTTP filters, in order (`Filters/HTTPFilter.swift`); the router runs after them.
    let filters: [any HTTPFilter]
    /// `filters` is not empty (one load per request, no array access when there are none).
    let hasFilters: Bool
    /// Some filter has a `responseHeaders` phase (none of today's do: the phase is skipped).
    let hasResponseFilters: Bool
    /// The listener's request ids and trace propagation (`tracing:`): called directly by the exchange
    /// before the filters (it never answers), not one of `filters`; the router asks it for the
    /// forwarded fields.
    let tracing: TracingFilter?
    /// `tracing` without a retain and release per use (the runtime keeps it alive).
    let tracingRef: Unmanaged<TracingFilter>?
    /// The access log (`access_log:`): called directly by the exchange, like `tracing`, not one of
    /// `filters`: it copies the request before the filters run (so a request a filter answers is
    /// logged too) and writes its line after their log phases. TCP connections and requests refused
    /// before an exchange log through it too.
    let accessLog: AccessLogFilter?
    /// `accessLog` without a retain and release per use (the runtime keeps it alive).
    let accessLogRef: Unmanaged<AccessLogFilter>?
    /// Path normalization (`path_normalization:`): off entirely when no step is on.
    let normalizesPaths: Bool
    let normalization: PathNormalizer.Options
    /// Authorization (`authorization:`): the listener's compiled policies and their rule stats.
    private(set) var authorization: ListenerAuthorization?
    private(set) var authzRules: [StatBlock<AuthzRuleStat>] = []
    /// A request needs its peer's identity (routes match on it, or a policy asks).
    private(set) var needsPrincipal = false
    /// Where this listener's connections are counted, and the limits (Int.max: none).
    private(set) var connections: ConnectionCounter!
    private(set) var maxConnections = Int.max
    private(set) var processMaxConnections = Int.max
    /// `protocol: tls`: indexes into `clusters` by server name, the default cluster's as the default.
    let sni: ServerNameTable<Int>
    /// The sidecar's outbound listener: its decisions (`SidecarRoutes`), and per service of
    /// `config.sidecar`, its cluster.
    let sidecar: SidecarRoutes?
    let serviceClusters: [Cluster?]
    /// CONNECT tunnels (`connect:`, issue 18): their cluster and the targets it allows (endpoint
    /// index by `host:port`); nil = CONNECT is refused.
    var connectCluster: Cluster?
    var connectTargets: [String: Int] = [:]
    /// Per service, the name of its internal HTTP listener (`outbound_<service>`).
    let serviceHTTPListeners: [String]

    init(worker: Worker, config: ListenerConfig, tls: TLSServerContext? = nil, routes: RouteTable, clusters: [Cluster],
         tcpCluster: Cluster?, stats: StatBlock<ListenerStat>, backendStats: [StatBlock<RouteBackendStat>],
         filters: [any HTTPFilter], tracing: TracingFilter? = nil, accessLog: AccessLogFilter? = nil) {
        self.worker = worker; self.config = config; self.tls = tls; self.routes = routes; self.clusters = clusters
        scheme = tls == nil ? "http" : "https"
        self.tcpCluster = tcpCluster; self.stats = stats; self.backendStats = backendStats; self.filters = filters
        hasFilters = !filters.isEmpty
        hasResponseFilters = filters.contains { $0.hasResponsePhase }
        self.tracing = tracing
        tracingRef = tracing.map { Unmanaged.passUnretained($0) }
        self.accessLog = accessLog
        accessLogRef = accessLog.map { Unmanaged.passUnretained($0) }
        normalization = PathNormalizer.Options(config)
        normalizesPaths = config.protocol == .http && config.normalizesPaths
        var sni = ServerNameTable<Int>()
        var serviceClusters: [Cluster?] = []
        if config.protocol == .tls || config.sidecar != nil {
            var index: [String: Int] = [:]
            for (i, c) in clusters.enumerated() { index[c.config.name] = i }
            if config.protocol == .tls {
                sni.defaultValue = config.cluster.flatMap { index[$0] }
                for r in config.sni { if let i = index[r.cluster] { for n in r.serverNames { sni.add(n, i) } } }
            }
            for svc in config.sidecar?.services ?? [] { serviceClusters.append(index[svc.cluster].map { clusters[$0] }) }
        }
        self.sni = sni
        self.serviceClusters = serviceClusters
        serviceHTTPListeners = (config.sidecar?.services ?? []).map(\.httpListener)
        sidecar = config.sidecar.map(SidecarRoutes.init)
    }

    /// Authorization and connection limits of this snapshot.
    func secure(authorization a: ListenerAuthorization?, rules: [StatBlock<AuthzRuleStat>], connections c: ConnectionCounter,
                processMaxConnections process: Int?) {
        authorization = a
        authzRules = rules
        needsPrincipal = routes.matchesPrincipal || (a?.needsPrincipal ?? false)
        connections = c
        maxConnections = config.maxConnections ?? Int.max
        processMaxConnections = process ?? Int.max
    }

    /// A CONNECT request (HTTP/1.1 or HTTP/2) against the listener's policy (counted): CONNECT is not
    /// routed, so only the listener's rules apply; its path is empty (a rule on paths does not match
    /// it) and its target is the authority. False: answer 403.
    func admitConnect(_ view: RequestView, _ c: TCPConnection?, source: IPAddress?) -> Bool {
        guard let a = authorization else { return true }
        return withPeer(a, c) { p, s in
            var v = view
            if let p { v.principal = p }
            return AuthorizationFilter.admit(a, HTTPAuthorizationInput(view: v, path: UnsafeRawBufferPointer(start: nil, count: 0),
                                                                        source: source, serverName: s),
                                             stats: stats, rules: authzRules)
        }
    }

    /// A TCP listener's connection against its policy (counted); false: close it.
    func admitConnection(_ a: ListenerAuthorization, _ c: TCPConnection) -> Bool {
        let source = a.needsSource ? IPAddress.parse(c.peerIP()) : nil
        let port = a.needsPort ? c.destinationPort() : -1
        return withPeer(a, c) { p, s in
            AuthorizationFilter.admit(a, ConnectionAuthorizationInput(principal: p, source: source, serverName: s, destinationPort: port),
                                      stats: stats, rules: authzRules)
        }
    }

    /// A tls (passthrough) listener's connection against its policy, once its ClientHello was read
    /// (`serverName`: its SNI, nil when none or unreadable); counted; false: close it. No principal:
    /// TLS is not terminated here (config refuses principal rules on such listeners).
    func admitPassthrough(_ a: ListenerAuthorization, _ c: TCPConnection, serverName: String?) -> Bool {
        let source = a.needsSource ? IPAddress.parse(c.peerIP()) : nil
        let port = a.needsPort ? c.destinationPort() : -1
        var sni = a.needsServerName ? serverName : nil
        return withOptionalUTF8(&sni) { s in
            AuthorizationFilter.admit(a, ConnectionAuthorizationInput(principal: nil, source: source, serverName: s, destinationPort: port),
                                      stats: stats, rules: authzRules)
        }
    }

    /// `body` with the connection's peer identity and SNI as bytes, each read only when `a` asks.
    private func withPeer<T>(_ a: ListenerAuthorization, _ c: TCPConnection?,
                             _ body: (UnsafeRawBufferPointer?, UnsafeRawBufferPointer?) -> T) -> T {
        var principal = a.needsPrincipal ? c?.peerPrincipal : nil
        var sni = a.needsServerName ? c?.serverName : nil
        return withOptionalUTF8(&principal) { p in withOptionalUTF8(&sni) { s in body(p, s) } }
    }

    /// The tracing of listener `l` (index `i` of the snapshot), with its span recorder when it exports.
    static func tracing(_ l: ListenerConfig, _ st: WorkerStats, _ i: Int, routes: RouteTable, worker: Worker) -> TracingFilter? {
        guard let t = l.tracing else { return nil }
        let spans = i < st.spanExports.count ? st.spanExports[i].map {
            SpanRecorder(ring: $0.ring, exporter: $0.exporter, stats: st.listeners[i], listener: l.name, routes: routes)
        } : nil
        return TracingFilter(worker: worker, config: t, spans: spans)
    }

    /// Listener `l`'s access log (index `i` of the snapshot), nil when it has none.
    static func accessLog(_ l: ListenerConfig, _ st: WorkerStats, _ i: Int, routes: RouteTable) -> AccessLogFilter? {
        guard l.accessLog != nil, let log = st.accessLogs[i] else { return nil }
        return AccessLogFilter(ring: log.ring, writer: st.accessLogWriter, format: log.format, stats: st.listeners[i], routes: routes)
    }

    /// The filters listener `l` (index `i` of the snapshot) configures, in their order (after tracing
    /// and the access log's copy of the request, which the exchange makes first): authorization, fault
    /// injection and rate limits; every log phase runs once the exchange is over, when all have decided,
    /// then the access log's.
    static func filters(_ l: ListenerConfig, _ st: WorkerStats, _ i: Int, routes: RouteTable, worker: Worker,
                        rateLimitBuckets: [SharedTokenBucket?], authorization: ListenerAuthorization? = nil) -> [any HTTPFilter] {
        var out: [any HTTPFilter] = []
        // Authorization before the resilience filters: a denied request spends no token.
        if l.protocol == .http, let a = authorization {
            out.append(AuthorizationFilter(a, stats: st.listeners[i], rules: i < st.authzRules.count ? st.authzRules[i] : []))
        }
        out += resilienceFilters(routes: routes, buckets: rateLimitBuckets)   // fault injection, rate limit
        return out
    }
}

/// Writes "remora: `s`" to stderr: a blocking write(2), for the main thread only (a worker's
/// `Worker.log` hands its lines to the main thread instead).
func log(_ s: String) {
    var line = "remora: " + s + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// `body` with the UTF-8 bytes of `s`, or nil when `s` is nil.
@inline(__always)
func withOptionalUTF8<R>(_ s: inout String?, _ body: (UnsafeRawBufferPointer?) -> R) -> R {
    guard var v = s else { return body(nil) }
    return v.withUTF8 { body(UnsafeRawBufferPointer($0)) }
}
