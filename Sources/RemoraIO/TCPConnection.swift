import CLibUV
import RemoraCore

/// What a TCP connection reports to its owner. Every call comes from a libuv callback on the
/// connection's loop, never from inside one of the connection's own methods, so an owner may call
/// any method (including `close()`) from any of these.
public protocol TCPConnectionDelegate: AnyObject {
    /// Bytes read. `data` points into the loop's shared read buffer: consume or copy it now.
    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer)
    /// The peer shut down its write side (FIN).
    func connectionEOF(_ c: TCPConnection)
    /// A read or write failed (reset, broken pipe). The connection is unusable; close it.
    func connectionError(_ c: TCPConnection, _ code: Int32)
    /// An outgoing connect finished: status 0, or a negative libuv error.
    func connectionConnected(_ c: TCPConnection, _ status: Int32)
    /// The write queue, which had gone above the high watermark, is empty again.
    func connectionDrained(_ c: TCPConnection)
    /// The deadline set with `setDeadline` passed.
    func connectionTimeout(_ c: TCPConnection)
    /// Both handles are closed; the connection is gone. Last call.
    func connectionClosed(_ c: TCPConnection)
}

extension TCPConnectionDelegate {
    public func connectionConnected(_ c: TCPConnection, _ status: Int32) {}
    public func connectionDrained(_ c: TCPConnection) {}
    public func connectionTimeout(_ c: TCPConnection) {}
    public func connectionClosed(_ c: TCPConnection) {}
}

/// A TCP socket with its timer, its write queue and its embedded libuv requests; nothing is
/// allocated per read or write. The socket and timer are one allocation made with the connection;
/// the requests (write, connect, shutdown) a second one made on first need and kept until the
/// connection is freed, so an accepted connection whose writes all leave through `uv_try_write`
/// never makes it. The queue's storage is borrowed from the loop while bytes wait in it (a corked
/// head and body) and given back once they have left (`EventLoop.spareQueue`). What an idle
/// connection holds: "Memory" in docs/architecture.md.
///
/// Writes go out with `uv_try_write` first; whatever the kernel does not take is copied into the
/// queue and written with one `uv_write` at a time (two buffers: the one libuv is writing and the
/// one collecting). Owners watch `isAboveHighWatermark` to pause their source and get
/// `connectionDrained` when the queue is empty again.
///
/// Lifetime: the libuv handles hold a +1 reference on the connection until their close callbacks
/// ran; `owner` keeps the delegate alive until then as well, and is cleared after
/// `connectionClosed`, which breaks the owner <-> connection cycle.
/// The byte layer of a connection, between its TCP socket and its delegate (Envoy's transport
/// socket): the seam where TLS (RemoraTLS) goes. A connection without one (`transportSocket` nil,
/// every connection today) is raw TCP: bytes pass unchanged, at the cost of one nil check per read
/// and per write. A layer turns wire bytes into application bytes (handing them on with
/// `TCPConnection.deliver`) and application bytes into wire bytes (`TCPConnection.writeWire`), may
/// hold `connectionConnected` back until its handshake is done (`deliverConnected`), and writes
/// what must precede FIN (TLS close_notify) in `shutdown`. Sessions and upstreams hold the same
/// `TCPConnection` and call the same methods either way: they never see the layer.
public protocol TransportSocket: AnyObject {
    /// The TCP connect completed with `status` (0: connected; the layer may start a handshake).
    func connected(_ c: TCPConnection, status: Int32)
    /// Wire bytes arrived.
    func received(_ c: TCPConnection, _ wire: UnsafeRawBufferPointer)
    /// Application bytes to send, after everything sent before. False when nothing can be sent.
    func send(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) -> Bool
    /// `a`, then `b`, then `d` (any may be empty), as `TCPConnection.write` gets them: a layer may
    /// seal them together (one TLS record for a small head and body). Default: `send` for each.
    func send(_ c: TCPConnection, _ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ d: UnsafeRawBufferPointer) -> Bool
    /// The peer's FIN (`code` UV_EOF) or a read error: by default reported to the delegate as it
    /// is; a layer in the middle of its handshake may report a failed connect instead.
    func receivedEnd(_ c: TCPConnection, _ code: Int32)
    /// `TCPConnection.discardQueued` asks whether application bytes not yet sent may be dropped
    /// (the layer drops what it holds and says yes, or says no: they are already sealed).
    func discardUnsent(_ c: TCPConnection) -> Bool
    /// The connection is idle (`TCPConnection.releaseIdleBuffers`): give back what the next bytes
    /// can allocate again.
    func releaseIdleBuffers(_ c: TCPConnection)
    /// The application will write nothing more: the last wire bytes before FIN.
    func shutdown(_ c: TCPConnection)
    /// `TCPConnection.uncork`: what the layer collected while the connection was corked goes out now
    /// (TLS seals the writes of one cork into one record).
    func uncorked(_ c: TCPConnection)
    /// The peer's verified identity once the handshake is done (a SPIFFE URI SAN, else the first
    /// DNS SAN of its certificate), or nil: no certificate, or not a TLS layer.
    var peerPrincipal: String? { get }
    /// The server name the client asked for (TLS SNI), or nil.
    var serverName: String? { get }
}

extension TransportSocket {
    public var peerPrincipal: String? { nil }
    public var serverName: String? { nil }
    public func send(_ c: TCPConnection, _ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ d: UnsafeRawBufferPointer) -> Bool {
        send(c, a) && (b.count == 0 || send(c, b)) && (d.count == 0 || send(c, d))
    }
    public func receivedEnd(_ c: TCPConnection, _ code: Int32) { c.deliverEnd(code) }
    public func discardUnsent(_ c: TCPConnection) -> Bool { false }
    public func releaseIdleBuffers(_ c: TCPConnection) {}
    public func uncorked(_ c: TCPConnection) {}
}

public final class TCPConnection {
    let h: UnsafeMutablePointer<remora_conn_handles>
    /// The embedded requests, nil until the first `uv_write`, connect or shutdown (`requests`).
    var reqs: UnsafeMutablePointer<remora_conn_requests>?
    // The handles inside `h`, computed rather than stored (24 bytes less per connection).
    @inline(__always) var tcp: UnsafeMutablePointer<uv_tcp_t> { UnsafeMutableRawPointer(h).assumingMemoryBound(to: uv_tcp_t.self) }
    @inline(__always) var stream: UnsafeMutablePointer<uv_stream_t> { UnsafeMutableRawPointer(h).assumingMemoryBound(to: uv_stream_t.self) }
    @inline(__always) var timer: UnsafeMutablePointer<uv_timer_t> {
        (UnsafeMutableRawPointer(h) + MemoryLayout<remora_conn_handles>.offset(of: \.timer)!).assumingMemoryBound(to: uv_timer_t.self)
    }
    public unowned(unsafe) let loop: EventLoop
    /// The loop's read buffer (fixed for its life; reached without a retain of `loop`).
    let readBuffer: UnsafeMutableRawPointer
    /// The most one read hands over (at most `EventLoop.readBufferSize`, the default).
    public var readLimit = UInt32(EventLoop.readBufferSize)
    /// Receives the events. Not retained: `owner` does that.
    public unowned(unsafe) var delegate: (any TCPConnectionDelegate)?
    /// The byte layer (TLS), or nil for raw TCP (see `TransportSocket`). Set before the first byte.
    public var transportSocket: (any TransportSocket)?
    /// The peer's verified identity (see `TransportSocket.peerPrincipal`); nil on raw TCP.
    @inline(__always) public var peerPrincipal: String? { transportSocket?.peerPrincipal }
    /// The TLS server name the client sent; nil on raw TCP.
    @inline(__always) public var serverName: String? { transportSocket?.serverName }
    /// Kept alive until the connection is closed.
    public var owner: AnyObject?
    /// Free for the owner (an index, a state).
    public var tag: Int = 0
    /// The peer as the metrics label it (`RemoraCore.PeerTag`), set by the TLS layer once its
    /// handshake is done; 0 on plaintext.
    public var peerTag: UInt16 = 0

    /// Bytes queued beyond this pause the writer's source (the owner checks). Default 256 KiB.
    public var highWatermark = 256 * 1024
    var pending = ByteBuffer()
    var inflight = ByteBuffer()
    var writing = false
    var aboveHigh = false
    public private(set) var connecting = false
    public private(set) var reading = false
    public private(set) var isClosing = false
    /// A write failed; further writes are refused.
    public private(set) var failed = false
    /// Writes are collected, not sent, until `uncork()` (one syscall for a head and its body).
    public private(set) var corked = false
    var shutdownAfterFlush = false
    var closeAfterFlush = false
    var shutdownDone = false
    /// The layer was told the application writes nothing more.
    var layerShutDown = false
    /// After a graceful finish: reads are discarded until EOF or the linger timer.
    var lingering = false
    var openHandles = 0
    /// Absolute loop time (ms) of the current deadline; 0 = none.
    var deadline: UInt64 = 0
    /// Absolute loop time the timer is armed for; 0 = not armed.
    var timerDue: UInt64 = 0

    /// Creates an unconnected socket on `loop` (for `connect` or `accept`).
    public init(loop: EventLoop) {
        self.loop = loop
        readBuffer = loop.readBuffer
        h = .allocate(capacity: 1)
        uv_tcp_init(loop.uv, tcp)
        uv_timer_init(loop.uv, timer)
        openHandles = 2
        let me = Unmanaged.passRetained(self).toOpaque()   // released when both handles closed
        tcp.pointee.data = me
        timer.pointee.data = me
    }

    deinit {
        pending.release()
        inflight.release()
        reqs?.deallocate()   // libuv ran every request's callback before the handles' close callbacks
        h.deallocate()
    }

    /// The embedded requests, made on first need (a connect, a `uv_write`, a shutdown).
    @inline(__always) var requests: UnsafeMutablePointer<remora_conn_requests> { reqs ?? makeRequests() }

    @inline(never) func makeRequests() -> UnsafeMutablePointer<remora_conn_requests> {
        let r = UnsafeMutablePointer<remora_conn_requests>.allocate(capacity: 1)
        let me = Unmanaged.passUnretained(self).toOpaque()
        remora_cr_write(r).pointee.data = me
        remora_cr_connect(r).pointee.data = me
        remora_cr_shutdown(r).pointee.data = me
        reqs = r
        return r
    }

    /// Frees the write queue's storage while nothing is queued or being written (an idle
    /// connection's owner calls it; the next queued write allocates again).
    public func releaseIdleBuffers() {
        guard !writing else { return }
        transportSocket?.releaseIdleBuffers(self)
        if pending.isEmpty { pending.release() }
        if inflight.isEmpty { inflight.release() }
    }

    /// Bytes of heap this connection holds beyond its object: the handles, the requests once made,
    /// the write queue's storage (for tests and the memory notes; malloc's rounding not included).
    public var heapBytes: Int {
        MemoryLayout<remora_conn_handles>.size + (reqs == nil ? 0 : MemoryLayout<remora_conn_requests>.size)
            + pending.capacity + inflight.capacity
    }

    // MARK: reading

    public func startReading() {
        guard !reading, !isClosing else { return }
        reading = true
        if !connecting { uv_read_start(stream, ioAllocCallback, ioReadCallback) }   // else once connected
    }

    public func stopReading() {
        guard reading, !isClosing else { return }
        reading = false
        if !connecting { uv_read_stop(stream) }
    }

    // MARK: writing

    public var queuedBytes: Int { pending.count + inflight.count }
    public var isAboveHighWatermark: Bool { aboveHigh }
    /// Writes handed to the kernel or to libuv so far (each `uv_try_write` that took bytes and each
    /// `uv_write`): unchanged between two looks means nothing queued in between has left.
    public private(set) var writesStarted: UInt64 = 0

    /// Drops what is queued and not yet handed to the kernel (a request that was cancelled before
    /// any of it left). False, and nothing dropped, while a `uv_write` is in progress.
    public func discardQueued() -> Bool {
        guard !writing, inflight.isEmpty else { return false }
        if let ts = transportSocket, !(pending.isEmpty && ts.discardUnsent(self)) { return false }
        pending.clear(keepingAtMost: 64 * 1024)
        aboveHigh = false
        return true
    }

    /// Writes `a`, then `b`, then `c` (any may be empty), in order after everything written before,
    /// through the transport socket when there is one. Returns false when the connection has failed
    /// or is closing (nothing was written).
    @discardableResult
    public func write(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                      _ c: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) -> Bool {
        if let ts = transportSocket {
            if failed || isClosing || shutdownAfterFlush || shutdownDone { return false }
            return ts.send(self, a, b, c)
        }
        return writeWire(a, b, c)
    }

    /// Writes bytes to the socket as they are (the transport socket's output; raw TCP's `write`).
    @inline(__always) @discardableResult
    public func writeWire(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
                          _ c: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)) -> Bool {
        if failed || isClosing || shutdownAfterFlush || shutdownDone { return false }
        let total = a.count + b.count + c.count
        if total == 0 { return true }
        if writing || connecting || corked || !pending.isEmpty {
            if pending.capacity == 0 { borrowQueue() }
            pending.append(a); pending.append(b); pending.append(c)
            noteQueued()
            return true
        }
        var bufs = (uvBuf(a), uvBuf(b), uvBuf(c))
        let r = withUnsafeMutablePointer(to: &bufs) { p in
            p.withMemoryRebound(to: uv_buf_t.self, capacity: 3) { uv_try_write(stream, $0, 3) }
        }
        if r > 0 { writesStarted &+= 1 }
        if r == total { return true }
        if r < 0 && r != Int32(UV_EAGAIN.rawValue) { failed = true; return false }
        var skip = max(0, Int(r))
        if pending.capacity == 0 { borrowQueue() }
        for part in [a, b, c] where part.count > 0 {   // small fixed array: stack-promoted
            if skip >= part.count { skip -= part.count; continue }
            pending.append(part.baseAddress! + skip, part.count - skip)
            skip = 0
        }
        noteQueued()
        startWrite()
        return true
    }

    /// Holds writes back until `uncork()`.
    @inline(__always)
    public func cork() { corked = true }

    /// Sends what was written while corked, `uv_try_write` first.
    public func uncork() {
        guard corked else { return }
        corked = false
        if let ts = transportSocket, !failed, !isClosing { ts.uncorked(self) }
        guard !writing, !connecting, !isClosing, !failed, !pending.isEmpty else { return }
        var buf = uvBuf(pending.bytes)
        let r = uv_try_write(stream, &buf, 1)
        if r > 0 { writesStarted &+= 1 }
        if r == pending.count {
            pending.clear(keepingAtMost: 64 * 1024)
            returnQueue(&pending)
            flushFinished()
            if aboveHigh && !isClosing {   // the queue went above the watermark and is empty again
                aboveHigh = false
                delegate?.connectionDrained(self)
            }
            return
        }
        if r < 0 && r != Int32(UV_EAGAIN.rawValue) { failed = true; return }
        if r > 0 { pending.consume(Int(r)) }
        startWrite()
    }

    @inline(__always) func uvBuf(_ b: UnsafeRawBufferPointer) -> uv_buf_t {
        uv_buf_init(UnsafeMutableRawPointer(mutating: b.baseAddress)?.assumingMemoryBound(to: CChar.self), UInt32(b.count))
    }

    /// Storage for the queue from the loop's spare, when it has one (see `EventLoop.spareQueue`):
    /// no allocation, and the storage goes back once the bytes have left.
    @inline(__always) func borrowQueue() {
        if loop.spareQueue.capacity != 0 {
            Unmanaged.passUnretained(loop)._withUnsafeGuaranteedRef { swap(&pending, &$0.spareQueue) }   // no retain of the loop
        }
    }

    /// `b` is empty: its storage becomes the loop's spare when the loop has none (else it stays).
    @inline(__always) func returnQueue(_ b: inout ByteBuffer) {
        if b.capacity != 0 && loop.spareQueue.capacity == 0 {
            Unmanaged.passUnretained(loop)._withUnsafeGuaranteedRef { swap(&b, &$0.spareQueue) }
        }
    }

    @inline(__always) func noteQueued() {
        if queuedBytes > highWatermark { aboveHigh = true }
    }

    func startWrite() {
        guard !writing, !connecting, !corked, !isClosing, !pending.isEmpty else { return }
        swap(&pending, &inflight)
        writing = true
        writesStarted &+= 1
        var buf = uvBuf(inflight.bytes)
        let rc = uv_write(remora_cr_write(requests), stream, &buf, 1, ioWriteCallback)
        if rc != 0 { writing = false; failed = true; inflight.clear() }
    }

    func writeCompleted(_ status: Int32) {
        writing = false
        inflight.clear(keepingAtMost: 64 * 1024)
        if isClosing { return }
        if status < 0 {
            failed = true
            delegate?.connectionError(self, status)
            return
        }
        if !pending.isEmpty { startWrite(); return }
        pending.clear(keepingAtMost: 64 * 1024)
        returnQueue(&inflight)
        returnQueue(&pending)
        flushFinished()
        if aboveHigh && !isClosing {
            aboveHigh = false
            delegate?.connectionDrained(self)
        }
    }

    /// Runs what was waiting for an empty queue: a shutdown or a graceful close.
    func flushFinished() {
        if closeAfterFlush { if lingerMs == 0 { close() } else { beginLinger() }; return }
        if shutdownAfterFlush && !shutdownDone { doShutdown() }
    }

    /// Lets the transport socket write what precedes FIN, once.
    @inline(__always)
    func shutDownLayer() {
        if let ts = transportSocket, !layerShutDown, !failed {
            layerShutDown = true
            ts.shutdown(self)
        }
    }

    /// Sends FIN once everything queued is written (TCP half-close). Reading continues.
    public func shutdownWrite() {
        guard !isClosing, !shutdownAfterFlush, !shutdownDone else { return }
        shutDownLayer()
        uncork()
        shutdownAfterFlush = true
        if !writing && pending.isEmpty && !connecting { doShutdown() }
    }

    func doShutdown() {
        shutdownDone = true
        if uv_shutdown(remora_cr_shutdown(requests), stream, ioShutdownCallback) != 0 && closeAfterFlush { close() }
    }

    func shutdownCompleted(_ status: Int32) {
        if lingering && status < 0 { close() }
    }

    /// Closes gracefully: writes everything queued, sends FIN, then discards what the peer still
    /// sends until it closes too or `linger` ms pass (so that the peer reads our last response
    /// instead of a reset), then closes.
    public func finish(linger: UInt64 = 2_000) {
        guard !isClosing, !closeAfterFlush else { return }
        shutDownLayer()
        uncork()
        closeAfterFlush = true
        lingerMs = linger
        if !writing && pending.isEmpty && !connecting { beginLinger() }
    }
    var lingerMs: UInt64 = 2_000

    /// Closes once everything written has reached the kernel, without FIN-and-linger: for a peer
    /// that said it sends nothing more (and whose bytes were all read), the kernel delivers what is
    /// queued and then the FIN; there is nothing unread to turn the close into a reset.
    public func closeWhenFlushed() {
        guard !isClosing, !closeAfterFlush else { return }
        shutDownLayer()
        uncork()
        if failed || (!writing && pending.isEmpty && !connecting) { close(); return }
        closeAfterFlush = true
        lingerMs = 0
    }

    func beginLinger() {
        if failed { close(); return }
        lingering = true
        if !shutdownDone { doShutdown() }
        setDeadline(after: lingerMs)
        if !reading { startReading() }
    }

    // MARK: connecting

    /// Starts a connect; `connectionConnected` reports the result. Writes made meanwhile are queued.
    public func connect(to addr: SocketAddress) -> Int32 {
        let rc = addr.withSockaddr { uv_tcp_connect(remora_cr_connect(requests), tcp, $0, ioConnectCallback) }
        if rc == 0 { connecting = true }
        return rc
    }

    func connectCompleted(_ status: Int32) {
        connecting = false
        if isClosing { return }
        if status == 0 {
            uv_tcp_nodelay(tcp, 1)
            if reading { uv_read_start(stream, ioAllocCallback, ioReadCallback) }
            startWrite()
            if pending.isEmpty && !writing { flushFinished() }
        }
        if let ts = transportSocket { ts.connected(self, status: status) } else { delegate?.connectionConnected(self, status) }
    }

    /// Reports the connect's result to the delegate (for the transport socket, once its handshake is done).
    public func deliverConnected(_ status: Int32) {
        if !isClosing { delegate?.connectionConnected(self, status) }
    }

    // MARK: timer

    /// Sets the deadline to `ms` from now (replacing any other). Re-arms the timer only when the new
    /// deadline is earlier than the armed one, so moving a deadline later costs nothing.
    @inline(__always)
    public func setDeadline(after ms: UInt64) {
        let d = uv_now(tcp.pointee.loop) &+ ms
        deadline = d
        if timerDue == 0 || timerDue > d {
            timerDue = d
            uv_timer_start(timer, ioTimerCallback, ms, 0)
        }
    }

    /// Clears the deadline (the armed timer, if any, fires later and finds nothing to do).
    @inline(__always)
    public func clearDeadline() { deadline = 0 }

    func timerFired() {
        timerDue = 0
        guard deadline != 0, !isClosing else { return }
        let now = uv_now(tcp.pointee.loop)
        if now >= deadline {
            deadline = 0
            if lingering { close(); return }
            delegate?.connectionTimeout(self)
        } else {
            timerDue = deadline
            uv_timer_start(timer, ioTimerCallback, deadline - now, 0)
        }
    }

    // MARK: reads (from the callbacks)

    func readCompleted(_ n: Int) {
        if isClosing { return }
        if n > 0 {
            if lingering { return }
            let bytes = UnsafeRawBufferPointer(start: readBuffer, count: n)
            if let ts = transportSocket { ts.received(self, bytes) } else { delegate?.connectionRead(self, bytes) }
        } else if n < 0 {
            if lingering { close(); return }
            if let ts = transportSocket { ts.receivedEnd(self, Int32(n)) } else { deliverEnd(Int32(n)) }
        }
    }

    /// Reports the peer's FIN (`code` UV_EOF) or a read error to the delegate (for the transport socket).
    public func deliverEnd(_ code: Int32) {
        if isClosing { return }
        if code == Int32(UV_EOF.rawValue) { delegate?.connectionEOF(self) } else { delegate?.connectionError(self, code) }
    }

    /// Hands application bytes to the delegate (for the transport socket, from what it received).
    public func deliver(_ data: UnsafeRawBufferPointer) {
        if !isClosing && !lingering { delegate?.connectionRead(self, data) }
    }

    // MARK: closing

    /// Closes now; queued writes are dropped. `connectionClosed` follows from the loop.
    public func close() {
        guard !isClosing else { return }
        isClosing = true
        reading = false
        uv_timer_stop(timer)
        uv_close(remora_handle_tcp(tcp), ioCloseCallback)
        uv_close(remora_handle_timer(timer), ioCloseCallback)
    }

    func handleClosed() {
        openHandles -= 1
        guard openHandles == 0 else { return }
        delegate?.connectionClosed(self)
        delegate = nil
        owner = nil
        Unmanaged.passUnretained(self).release()
    }

    // MARK: addresses

    /// Where the client was going before iptables REDIRECT brought the connection here
    /// (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`), and the address it was accepted on; nil when
    /// the connection was not redirected, or when the original destination is that local address
    /// (a direct connection to the listener's port, or a loop).
    public func originalDestination() -> SocketAddress? {
        var a = SocketAddress(), local = SocketAddress()
        guard remora_original_dst(tcp, &a.storage, &local.storage) == 0 else { return nil }
        if a.port == local.port && a.ipKey == local.ipKey { return nil }
        return a
    }

    /// The port the client was going to: its original destination's when iptables redirected it,
    /// else the one it was accepted on; -1 when unknown.
    public func destinationPort() -> Int {
        if let o = originalDestination() { return Int(o.port) }
        var ss = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_tcp_getsockname(tcp, $0, &len) }
        }
        guard rc == 0 else { return -1 }
        return withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Int(SocketAddress(copying: $0).port) } }
    }

    /// TCP_NODELAY is on for the socket (one getsockopt; tests).
    var isNoDelay: Bool { remora_tcp_nodelay_is_on(tcp) != 0 }

    /// The peer's numeric IP ("127.0.0.1", "::1"), or "" when unknown.
    public func peerIP() -> String {
        var ss = sockaddr_storage()
        var len = Int32(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { uv_tcp_getpeername(tcp, $0, &len) }
        }
        guard rc == 0 else { return "" }
        return withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress(copying: $0) } }.ipString
    }
}
