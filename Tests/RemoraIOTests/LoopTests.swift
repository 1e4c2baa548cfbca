import Testing
import RemoraCore
@testable import RemoraIO

/// Echoes what it reads; closes on EOF.
final class EchoServer: ListenerDelegate, TCPConnectionDelegate {
    var closedConnections = 0
    func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        c.delegate = self
        c.owner = self
        c.startReading()
    }
    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) { c.write(data) }
    func connectionEOF(_ c: TCPConnection) { c.shutdownWrite(); c.finish(linger: 0) }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
    func connectionClosed(_ c: TCPConnection) { closedConnections += 1 }
}

/// Connects, sends a payload, half-closes, collects the echo until EOF.
final class Client: TCPConnectionDelegate {
    var received: [UInt8] = []
    var eof = false
    var payload: [UInt8]
    init(payload: [UInt8]) { self.payload = payload }
    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        #expect(status == 0)
        payload.withUnsafeBytes { _ = c.write($0) }
        c.shutdownWrite()
        c.startReading()
    }
    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) { received += data }
    func connectionEOF(_ c: TCPConnection) { eof = true; c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
}

/// Runs `loop` until `done()` (checked every `every` ms), then runs `then` (close the listener and what
/// else is open) and lets the loop end by itself; at most 10 s.
func runLoop(_ loop: EventLoop, every: UInt64 = 10, until done: @escaping () -> Bool, then: @escaping () -> Void) {
    let guardTimer = LoopTimer(loop: loop)
    guardTimer.start(after: 10_000) { loop.stop() }   // bound the test
    guardTimer.unref()
    let stopper = LoopTimer(loop: loop)
    stopper.start(after: every, repeat: every) {
        if done() { stopper.close(); then() }
    }
    loop.run()
    guardTimer.close()
    loop.run()
}

@Suite struct LoopTests {
    @Test func echoLargePayloadWithHalfCloseAndCloseCleanly() throws {
        let loop = EventLoop()
        let fd = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: 0)!)
        let addr = ListenSocket.localAddress(fd)!
        let server = EchoServer()
        let listener = try Listener(loop: loop, fd: fd)
        listener.delegate = server
        var payload = [UInt8](repeating: 0, count: 4 << 20)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: i &* 31) }
        let client = Client(payload: payload)
        let c = TCPConnection(loop: loop)
        c.delegate = client
        c.owner = client
        #expect(c.connect(to: addr) == 0)
        runLoop(loop, until: { client.eof }, then: { listener.close() })
        #expect(client.received == payload)
        #expect(server.closedConnections == 1)
        #expect(loop.handleCount == 0)
        #expect(loop.close())
    }

    @Test func mailboxDeliversAcrossThreadsInOrder() {
        let loop = EventLoop()
        var got: [Int] = []
        let box = Mailbox<Int>(loop: loop) { got.append($0) }
        let t = spawnThread { for i in 0..<1000 { box.post(i) } ; box.post(-1) }
        let closer = LoopTimer(loop: loop)
        closer.start(after: 5, repeat: 5) { if got.last == -1 { closer.close(); box.close() } }
        loop.run()
        joinThread(t)
        #expect(got == Array(0..<1000) + [-1])
        #expect(loop.close())
    }

    @Test func secondExclusiveBindOfAPortFails() throws {
        let fd = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: 0)!)
        let port = ListenSocket.localAddress(fd)!.port
        #expect(throws: IOError.self) { _ = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: port)!) }
        let sibling = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: port)!, first: false)
        ListenSocket.closeFD(sibling)
        ListenSocket.closeFD(fd)
    }
}

/// Sends `payload` to each accepted connection, then closes it.
final class Sender: ListenerDelegate, TCPConnectionDelegate {
    let payload: [UInt8]
    init(payload: [UInt8]) { self.payload = payload }
    func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        c.delegate = self
        c.owner = self
        payload.withUnsafeBytes { _ = c.write($0) }
        c.finish(linger: 0)
    }
    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {}
    func connectionEOF(_ c: TCPConnection) { c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
}

/// Starts reading 50 ms after connecting (so that the kernel holds more than one read's worth), and
/// records the size of every read.
final class SlowReader: TCPConnectionDelegate {
    var received: [UInt8] = []
    var reads: [Int] = []
    var eof = false
    var timer: LoopTimer?
    func connectionConnected(_ c: TCPConnection, _ status: Int32) {
        #expect(status == 0)
        let t = LoopTimer(loop: c.loop)
        t.start(after: 50) { t.close(); c.startReading() }
        timer = t
    }
    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) { received += data; reads.append(data.count) }
    func connectionEOF(_ c: TCPConnection) { eof = true; c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
}

extension LoopTests {
    /// One read hands over up to 256 KiB by default, and at most `readLimit` when a connection sets it
    /// (an HTTP/1.1 upstream toward an HTTP/2 stream reads 64 KiB at a time: H1Upstream.begin).
    @Test(arguments: [nil, 64 * 1024, 1000] as [Int?])
    func readsHandOverAtMostTheReadLimit(limit: Int?) throws {
        let loop = EventLoop()
        let fd = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: 0)!)
        let addr = ListenSocket.localAddress(fd)!
        var payload = [UInt8](repeating: 0, count: 1 << 20)
        for i in payload.indices { payload[i] = UInt8(truncatingIfNeeded: i &* 7) }
        let server = Sender(payload: payload)
        let listener = try Listener(loop: loop, fd: fd)
        listener.delegate = server
        let client = SlowReader()
        let c = TCPConnection(loop: loop)
        if let limit { c.readLimit = UInt32(limit) }
        c.delegate = client
        c.owner = client
        #expect(c.connect(to: addr) == 0)
        runLoop(loop, until: { client.eof }, then: { listener.close() })
        #expect(client.received == payload)
        let largest = client.reads.max() ?? 0
        if let limit {
            #expect(largest <= limit)
        } else {
            #expect(largest > 64 * 1024)   // the kernel held more than 64 KiB when reading began
            #expect(largest <= EventLoop.readBufferSize)
        }
        #expect(loop.handleCount == 0)
        #expect(loop.close())
    }
}
