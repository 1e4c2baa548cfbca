import Glibc
import RemoraCore
import RemoraIO
import RemoraRouting

/// Messages the main thread posts to a worker.
enum WorkerMessage: Sendable {
    /// Stop accepting, finish in-flight requests, close idle connections, then exit the loop.
    case drain
    /// Drain time is up: close everything now.
    case forceClose
}

/// Messages a worker posts to the main thread.
enum MainMessage: Sendable {
    case started(worker: Int, mailbox: Mailbox<WorkerMessage>, error: String?)
    case stopped(worker: Int)
}

/// One event loop on one thread with everything it serves: its own listening sockets, its own
/// upstream pools, its own stats. Nothing mutable is shared with other workers.
final class Worker {
    let id: Int
    let loop: EventLoop
    let snapshot: Snapshot
    let stats: WorkerStats
    var listeners: [Listener] = []
    var listenerRuntimes: [ListenerRuntime] = []
    var clusters: [ClusterRuntime] = []
    var mailbox: Mailbox<WorkerMessage>!
    var rng: FastRandom
    /// Scratch space for assembling heads and frames before a write (used synchronously only).
    var scratch = ByteBuffer(capacity: 16 * 1024)
    /// Head and body buffers lent to exchanges (idle connections own none).
    let pool = BufferPool()
    /// Recycled exchanges and HTTP/2 server streams (nothing allocated per request once warm).
    var freeExchanges: [Exchange] = []
    /// Where mirrored requests' responses go, and what they count in (not listed in /stats).
    lazy var discard = DiscardDownstream(worker: self)
    let shadowStats = StatBlock<ListenerStat>()
    var freeServerStreams: [H2ServerStream] = []
    /// Sessions with frames or stashed requests to process at the end of this loop iteration.
    var toFlush: [any Flushable] = []
    var flushHook: IterationHook?
    /// Downstream sessions, for draining (intrusive list: no allocation per connection).
    var sessionHead: Session?
    var sessionCount = 0
    var draining = false

    init(id: Int, snapshot: Snapshot, stats: WorkerStats) {
        self.id = id
        self.snapshot = snapshot
        self.stats = stats
        loop = EventLoop()
        var seed: UInt64 = 0
        withUnsafeMutableBytes(of: &seed) { _ = getentropy($0.baseAddress, 8) }
        rng = FastRandom(seed: seed ^ UInt64(id))
        for (i, c) in snapshot.config.clusters.enumerated() {
            clusters.append(ClusterRuntime(worker: self, index: i, config: c, endpoints: snapshot.endpoints[i],
                                           stats: stats.clusters[i]))
        }
        for (i, l) in snapshot.config.listeners.enumerated() {
            listenerRuntimes.append(ListenerRuntime(worker: self, index: i, config: l, routes: snapshot.routeTables[i],
                                                    tcpCluster: snapshot.tcpCluster[i], stats: stats.listeners[i],
                                                    backendStats: stats.routeBackends[i]))
        }
    }

    /// Runs the worker on the calling thread until it has drained. `fds[i]` is this worker's bound
    /// socket for listener i.
    func run(fds: [Int32], main: Mailbox<MainMessage>) {
        mailbox = Mailbox(loop: loop) { [unowned self] m in self.handle(m) }
        flushHook = IterationHook(loop: loop) { [unowned self] in self.runFlushes() }
        var error: String?
        for (i, fd) in fds.enumerated() {
            do {
                let l = try Listener(loop: loop, fd: fd)
                l.tag = i
                l.delegate = listenerRuntimes[i]
                l.owner = listenerRuntimes[i]
                listeners.append(l)
            } catch let e {
                error = "listener \(snapshot.config.listeners[i].name): \(e)"
                break
            }
        }
        main.post(.started(worker: id, mailbox: mailbox, error: error))
        if error != nil { beginDrain() }
        loop.run()
        scratch.release()
        if !loop.close() { log("worker \(id): loop closed with \(loop.handleCount) handles left") }
        main.post(.stopped(worker: id))
    }

    func handle(_ m: WorkerMessage) {
        switch m {
        case .drain: beginDrain()
        case .forceClose:
            beginDrain()
            var s = sessionHead
            while let cur = s { s = cur.next; cur.abort() }
        }
    }

    func beginDrain() {
        if draining { return }
        draining = true
        for l in listeners { l.close() }
        listeners.removeAll()
        var s = sessionHead
        while let cur = s { s = cur.next; cur.drain() }
        maybeFinishDrain()
    }

    func maybeFinishDrain() {
        guard draining, sessionCount == 0 else { return }
        for c in clusters { c.closeIdle() }
        mailbox.close()
        flushHook?.close()
        for e in freeExchanges { e.timer.close() }
        freeExchanges.removeAll()
    }

    // MARK: pools and deferred work

    func takeExchange() -> Exchange { freeExchanges.popLast() ?? Exchange(worker: self) }

    func recycle(_ e: Exchange) {
        if draining && sessionCount == 0 { e.timer.close(); return }
        freeExchanges.append(e)
    }

    func scheduleFlush(_ f: any Flushable) { toFlush.append(f) }

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
        add(new)
        if let p = old.prev { p.next = old.next } else { sessionHead = old.next }
        old.next?.prev = old.prev
        old.prev = nil
        old.next = nil
        sessionCount -= 1
    }

    func remove(_ s: Session) {
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
    /// Finish what is in flight, then close; close now when idle.
    func drain() {}
    /// Close now.
    func abort() {}
}

/// One listener's per-worker state: config, route table, stats.
final class ListenerRuntime: ListenerDelegate {
    unowned(unsafe) let worker: Worker
    let index: Int
    let config: ListenerConfig
    let routes: RouteTable
    let tcpCluster: Int
    let stats: StatBlock<ListenerStat>
    /// Per backend slot of `routes`.
    let backendStats: [StatBlock<RouteBackendStat>]

    init(worker: Worker, index: Int, config: ListenerConfig, routes: RouteTable, tcpCluster: Int, stats: StatBlock<ListenerStat>,
         backendStats: [StatBlock<RouteBackendStat>]) {
        self.worker = worker; self.index = index; self.config = config; self.routes = routes
        self.tcpCluster = tcpCluster; self.stats = stats; self.backendStats = backendStats
    }

    func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        stats.inc(.downstream_cx_total)
        stats.inc(.downstream_cx_active)
        let s: Session
        switch config.protocol {
        case .http: s = HTTPSession(worker: worker, listener: self, conn: c)
        case .tcp: s = TCPProxySession(worker: worker, listener: self, cluster: worker.clusters[tcpCluster], down: c)
        }
        worker.add(s)
    }
}

func log(_ s: String) {
    var line = "remora: " + s + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}
