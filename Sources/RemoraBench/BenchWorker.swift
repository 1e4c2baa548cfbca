import Glibc
import Histogram
import RemoraCore
import RemoraIO
import RemoraPolicy

/// One thread of a run: its own loop, its own connections, its own histograms. Drives the load
/// shape — closed loop (each connection sends again as soon as a response frees a slot) or open
/// loop (requests leave at their intended times from `RateSchedule`, waiting for a free
/// connection when none is) — and records what the connections report. Protocol-neutral: the
/// wire is behind `BenchConnection`.
public final class BenchWorker {
    public let thread: Int
    public let loop: EventLoop
    let plan: BenchPlan
    let proto: any BenchProtocol
    let main: Mailbox<BenchMainMessage>
    var mailbox: Mailbox<BenchWorkerCommand>?
    var result = BenchResult()

    /// Open and opening connections.
    var conns: [any BenchConnection] = []
    /// Connections still connecting.
    var connecting = 0
    /// Connections this thread keeps (base) and may grow to (open loop).
    let target: Int
    let maxConns: Int
    /// Next connection index (address choice) and the open-loop round-robin cursor.
    var opened = 0
    var cursor = 0
    /// Requests written and not yet answered or failed.
    var inFlight = 0

    let openLoop: Bool
    var schedule: RateSchedule?
    /// Open loop: intended times of due requests waiting for a free connection, oldest first.
    var waiting = UInt64Ring()
    /// Measured requests this thread may still start (UInt64.max = duration mode).
    var budget: UInt64
    let measureStart: UInt64
    let timeout: UInt64

    var stopping = false
    var aborted = false
    var finished = false
    /// Delays before reconnects after failed connects: 1 ms doubling to 1 s, full jitter.
    var backoff = Backoff(base: 1, cap: 1000)
    var rng = FastRandom(seed: monotonicNanos())
    var reconnectPending = false
    var progressTicks = 0
    /// Open loop: the next send is too close for a timer; the loop polls instead (`iteration`).
    var spinning = false
    var hook: IterationHook?
    /// Connections with requests queued by a send from a timer (open loop), written after it.
    var toFlush: [any BenchConnection] = []
    /// When connects began failing with none succeeding since, ns (0 = not failing).
    var failingSince: UInt64 = 0

    var tickTimer: LoopTimer?
    var endTimer: LoopTimer?
    var progressTimer: LoopTimer?
    var reconnectTimer: LoopTimer?
    /// Made once: re-arming a timer with a stored closure allocates nothing.
    var tickHandler: (() -> Void)?
    var reconnectHandler: (() -> Void)?

    init(thread: Int, plan: BenchPlan, proto: any BenchProtocol, main: Mailbox<BenchMainMessage>) {
        self.thread = thread
        self.plan = plan
        self.proto = proto
        self.main = main
        loop = EventLoop()
        target = plan.connections[thread]
        maxConns = max(plan.maxConnections[thread], target)
        openLoop = plan.rate != nil
        budget = plan.requests?[thread] ?? .max
        measureStart = plan.measureStart
        timeout = plan.timeout
        result.measureStart = plan.measureStart
    }

    deinit { waiting.release() }

    /// Runs the thread's loop until the run is over (the results are posted on the way). Returns
    /// whether the loop closed with no handle left.
    func run() -> Bool {
        let mb = Mailbox<BenchWorkerCommand>(loop: loop) { [unowned self] in self.command($0) }
        mailbox = mb
        main.post(.started(thread: thread, mailbox: mb))
        start()
        loop.run()
        tickHandler = nil
        reconnectHandler = nil
        let left = loop.handleCount
        if left > 0 {
            var msg = "remora bench: thread \(thread): loop ended with \(left) handles left\n"
            msg.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
        return loop.close()
    }

    func command(_ c: BenchWorkerCommand) {
        switch c {
        case .abort: abortRun()
        }
    }

    func start() {
        let now = monotonicNanos()
        tickHandler = { [unowned self] in self.tick() }
        reconnectHandler = { [unowned self] in self.reconnectPending = false; self.replenish() }
        tickTimer = LoopTimer(loop: loop)
        reconnectTimer = LoopTimer(loop: loop)
        if budget == 0 { beginStop(now: now); return }   // more threads than requests
        for _ in 0..<target { openConnection() }
        if let rate = plan.rate {
            schedule = RateSchedule(start: plan.start, rate: rate, thread: thread, threads: plan.threads)
            hook = IterationHook(loop: loop) { [unowned self] in self.iteration() }
            tickTimer?.start(after: delayMs(now: now), tickHandler!)   // not from a timer callback: 0 is fine
        }
        if let end = plan.end {
            let t = LoopTimer(loop: loop)
            t.start(after: end > now ? (end - now) / nsPerMilli : 0) { [unowned self] in
                self.beginStop(now: monotonicNanos())
            }
            endTimer = t
        }
        if plan.progress {
            let t = LoopTimer(loop: loop)
            t.start(after: 1000, repeat: 1000) { [unowned self] in self.postProgress() }
            progressTimer = t
        }
    }

    // MARK: connections

    func openConnection() {
        let c = proto.makeConnection(worker: self)
        conns.append(c)
        connecting += 1
        result.counters.connectionsPeak = max(result.counters.connectionsPeak, UInt64(conns.count))
        let addr = plan.addresses[opened % plan.addresses.count]
        opened += 1
        c.connect(to: addr)
    }

    /// A connection is up: fill its slots.
    public func connectionUp(_ c: any BenchConnection, now: UInt64) {
        connecting -= 1
        backoff.reset()
        failingSince = 0
        result.counters.connectionsOpened += 1
        if stopping { c.closeWhenIdle(); return }
        if openLoop { serveWaiting(c, now: now) } else { fillClosedLoop(c, now: now) }
    }

    /// The connection's socket is closed (the last call it makes).
    public func connectionGone(_ c: any BenchConnection, wasConnected: Bool, connectFailed: Bool,
                               closedByServer: Bool, inFlightDropped: Int) {
        if let i = conns.firstIndex(where: { $0 === c }) { conns.remove(at: i) }
        if !wasConnected { connecting -= 1 }
        inFlight -= inFlightDropped
        if connectFailed {
            result.counters[.connect] += 1
            // --requests against a target that never answers: give up after one timeout.
            let now = monotonicNanos()
            if failingSince == 0 { failingSince = now }
            if plan.end == nil && now - failingSince > timeout && !stopping {
                beginStop(now: now)
            }
        }
        if closedByServer { result.counters.connectionsClosedByServer += 1 }
        if stopping || aborted { maybeFinish(); return }
        if connectFailed {
            let delay = backoff.next(random: &rng)
            if !reconnectPending {
                reconnectPending = true
                reconnectTimer?.start(after: delay, reconnectHandler!)
            }
        } else if !reconnectPending {
            replenish()
        }
    }

    /// Back to the base number of connections (or more, open loop, while requests wait).
    func replenish() {
        if stopping { return }
        while conns.count < target { openConnection() }
        if openLoop { growIfWaiting() }
    }

    /// Open loop: more connections while requests wait and `--max-connections` allows.
    func growIfWaiting() {
        while !waiting.isEmpty && conns.count < maxConns && connecting * proto.streamsPerConnection < waiting.count
                && !reconnectPending {
            openConnection()
        }
    }

    // MARK: sending

    @inline(__always)
    func startRequest(_ c: any BenchConnection, origin: UInt64, now: UInt64) {
        inFlight += 1
        let n = c.send(origin: origin, now: now)
        if origin >= measureStart {
            result.counters.sent &+= 1
            result.counters.bytesWritten &+= UInt64(n)
        }
    }

    /// Closed loop: may another request start now? Counts it against `--requests`.
    @inline(__always)
    func mayStartClosedLoop(now: UInt64) -> Bool {
        if stopping { return false }
        if now < measureStart || budget == .max { return true }
        if budget == 0 { return false }
        budget -= 1
        return true
    }

    @inline(__always)
    func fillClosedLoop(_ c: any BenchConnection, now: UInt64) {
        while c.freeSlots > 0 && mayStartClosedLoop(now: now) { startRequest(c, origin: now, now: now) }
    }

    /// Open loop: sends waiting requests on `c` while it has room.
    @inline(__always)
    func serveWaiting(_ c: any BenchConnection, now: UInt64) {
        while !waiting.isEmpty && c.freeSlots > 0 {
            sendScheduled(c, origin: waiting.pop()!, now: now)
        }
    }

    @inline(__always)
    func sendScheduled(_ c: any BenchConnection, origin: UInt64, now: UInt64) {
        if origin >= measureStart {
            let late = now > origin ? now - origin : 0
            result.counters.totalLatenessNs &+= late
            if late > BenchCounters.lateThreshold { result.counters.lateSends &+= 1 }
            if late > result.counters.maxLatenessNs { result.counters.maxLatenessNs = late }
        }
        startRequest(c, origin: origin, now: now)
    }

    /// A connection with a free slot, round-robin, or nil.
    @inline(__always)
    func freeConnection() -> (any BenchConnection)? {
        let n = conns.count
        var k = 0
        while k < n {
            if cursor >= n { cursor = 0 }
            let c = conns[cursor]
            cursor += 1
            if c.freeSlots > 0 { return c }
            k += 1
        }
        return nil
    }

    /// The tick timer: sends what is due, then sleeps until the next intended time — or, when
    /// that is too close for a 1 ms timer, polls: the iteration hook keeps the loop from blocking
    /// and sends between I/O callbacks. (A 0 ms timer re-armed from its own callback would make
    /// libuv < 1.48 spin in its timer phase without polling I/O.)
    func tick() {
        defer { flushDeferred() }
        guard let ms = sendDue() else { return }
        if ms > 0 {
            tickTimer?.start(after: ms, tickHandler!)
        } else {
            spinning = true
            hook?.arm()
        }
    }

    /// Once per loop iteration, after I/O (uv_check): while polling, send what is due.
    func iteration() {
        guard spinning else { return }
        defer { flushDeferred() }
        guard let ms = sendDue() else { spinning = false; return }
        if ms > 0 {
            spinning = false
            tickTimer?.start(after: ms, tickHandler!)
        } else {
            hook?.arm()
        }
    }

    /// Open loop: sends what is due, queues what finds no connection, drops what waited too long.
    /// Returns the timer delay (ms) until the next intended time — 0 to poll — or nil when the
    /// run is over.
    func sendDue() -> UInt64? {
        guard !stopping else { return nil }
        let now = monotonicNanos()
        if let end = plan.end, now >= end { beginStop(now: now); return nil }
        while let f = waiting.first, now &- f > timeout {
            _ = waiting.pop()
            if f >= measureStart {
                result.counters[.timeout] += 1
                result.counters.expiredUnsent += 1
            }
        }
        while let t = schedule?.take(now: now) {
            if t >= measureStart && budget != .max {
                budget -= 1
                if budget == 0 { schedule?.stop() }
            }
            if waiting.isEmpty, let c = freeConnection() {
                sendScheduled(c, origin: t, now: now)
            } else {
                if t >= measureStart { result.counters.waitedForConnection += 1 }
                waiting.push(t)
            }
        }
        growIfWaiting()
        if schedule?.next == nil && waiting.isEmpty && inFlight == 0 { beginStop(now: now); return nil }
        return delayMs(now: now)
    }

    /// Timer delay until the next intended time (10 ms when only waiting requests remain).
    func delayMs(now: UInt64) -> UInt64 {
        guard let next = schedule?.next else { return 10 }
        return RateSchedule.timerDelayMs(deltaNs: Int64(bitPattern: next &- now))
    }

    // MARK: from the connections

    /// `c` queued a request outside its own callbacks: it is flushed once the current tick is
    /// done (one write per connection per loop iteration).
    public func deferFlush(_ c: any BenchConnection) {
        toFlush.append(c)
    }

    func flushDeferred() {
        if toFlush.isEmpty { return }
        for c in toFlush { c.flush() }
        toFlush.removeAll(keepingCapacity: true)
    }

    /// Bytes read (counted from the measured period on).
    @inline(__always)
    public func noteRead(_ n: Int, now: UInt64) {
        if now >= measureStart { result.counters.bytesRead &+= UInt64(n) }
    }

    /// Bytes written by a connection whose requests share writes (HTTP/2), counted from the
    /// measured period on; its `send` returns 0.
    @inline(__always)
    public func noteWritten(_ n: Int, now: UInt64) {
        if now >= measureStart { result.counters.bytesWritten &+= UInt64(n) }
    }

    /// A response is complete. `c` may be sent on again from here. `latency`: record the request's
    /// latency (false when its messages are timed instead, gRPC bidi).
    @inline(__always)
    public func responded(_ c: any BenchConnection, origin: UInt64, sent: UInt64, now: UInt64, status: Int,
                          grpcStatus: Int = -1, latency: Bool = true) {
        inFlight -= 1
        if origin >= measureStart {
            result.counters.responses &+= 1
            result.counters.status[status >= 100 && status < 600 ? status : 0] &+= 1
            if grpcStatus != -1 {
                result.counters.grpcStatus[grpcStatus >= 0 && grpcStatus < 17 ? grpcStatus : 17] &+= 1
            }
            if latency { recordLatency(from: origin, sent: sent, now: now) }
        }
        slotFreed(c, now: now)
    }

    /// `c` has room for another request: send it (or close `c` when the run is stopping).
    @inline(__always)
    func slotFreed(_ c: any BenchConnection, now: UInt64) {
        if stopping {
            c.closeWhenIdle()
            return
        }
        if openLoop {
            serveWaiting(c, now: now)
            if schedule?.next == nil && waiting.isEmpty && inFlight == 0 { beginStop(now: now) }
        } else {
            fillClosedLoop(c, now: now)
            if budget == 0 && inFlight == 0 { beginStop(now: now) }
        }
    }

    /// gRPC: `sent` messages of the call started at `origin` were written, `received` read.
    @inline(__always)
    public func noteMessages(sent: Int, received: Int, origin: UInt64) {
        if origin >= measureStart {
            result.counters.messagesSent &+= UInt64(sent)
            result.counters.messagesReceived &+= UInt64(received)
        }
    }

    /// gRPC bidi: a message's reply arrived; its round trip ran from `start` (`sent`: when it was
    /// actually written, for the uncorrected histogram). `origin`: the call's, for the measured period.
    @inline(__always)
    public func messageRoundTrip(origin: UInt64, start: UInt64, sent: UInt64, now: UInt64) {
        if origin >= measureStart { recordLatency(from: start, sent: sent, now: now) }
    }

    @inline(__always)
    func recordLatency(from start: UInt64, sent: UInt64, now: UInt64) {
        let us = (now &- start) / 1000
        result.latency.record(us < LatencyHistogram.highestTrackable ? us : LatencyHistogram.highestTrackable)
        if openLoop {
            let u = (now &- sent) / 1000
            result.uncorrected.record(u < LatencyHistogram.highestTrackable ? u : LatencyHistogram.highestTrackable)
        }
    }

    /// An error that belongs to no request in flight (a response nobody asked for).
    public func protocolError(_ kind: BenchErrorKind, now: UInt64) {
        if now >= measureStart { result.counters[kind] += 1 }
    }

    /// A request was lost (`kind`) on a connection that stays up (an HTTP/2 stream reset): `c`
    /// may be sent on again from here.
    public func failed(_ kind: BenchErrorKind, origin: UInt64, on c: any BenchConnection, now: UInt64) {
        inFlight -= 1
        if origin >= measureStart { result.counters[kind] += 1 }
        slotFreed(c, now: now)
    }

    /// A request was lost (`kind`); its connection is closing.
    public func failed(_ kind: BenchErrorKind, origin: UInt64) {
        inFlight -= 1
        if origin >= measureStart { result.counters[kind] += 1 }
        if !stopping && budget == 0 && inFlight == 0 && (!openLoop || (schedule?.next == nil && waiting.isEmpty)) {
            beginStop(now: monotonicNanos())
        }
    }

    // MARK: ending

    /// No new requests; connections close as their last response arrives.
    func beginStop(now: UInt64) {
        if stopping { return }
        stopping = true
        // Open loop: the measured period holds the requests intended before the end, even when
        // the loop notices the end a little late.
        let cutoff = min(now, plan.end ?? now)
        result.measureEnd = max(openLoop ? cutoff : now, measureStart)
        var unsent: UInt64 = 0
        // Open loop: requests due before the end that the loop never got to (it was busy).
        while let t = schedule?.take(now: cutoff) {
            if t >= measureStart { unsent += 1 }
        }
        schedule?.stop()
        tickTimer?.stop()
        reconnectTimer?.stop()
        reconnectPending = false
        while let t = waiting.pop() {
            if t >= measureStart { unsent += 1 }
        }
        result.counters.unsentAtEnd += unsent
        for c in conns { c.closeWhenIdle() }
        maybeFinish()
    }

    /// Ctrl-C: everything closes now; in-flight requests are dropped.
    func abortRun() {
        if finished { return }
        let now = monotonicNanos()
        if !stopping { beginStop(now: now) }
        aborted = true
        result.interrupted = true
        for c in conns { c.abort() }
        maybeFinish()
    }

    func maybeFinish() {
        guard stopping, !finished, conns.isEmpty else { return }
        finished = true
        tickTimer?.close()
        hook?.close()
        endTimer?.close()
        progressTimer?.close()
        reconnectTimer?.close()
        mailbox?.close()
        main.post(.finished(thread: thread, result))
    }

    func postProgress() {
        progressTicks += 1
        main.post(.progress(thread: thread, BenchProgress(
            tick: progressTicks, responses: result.counters.responses, errors: result.counters.errorsTotal,
            messagesSent: result.counters.messagesSent, messagesReceived: result.counters.messagesReceived,
            latency: result.latency, warmingUp: monotonicNanos() < measureStart)))
    }
}
