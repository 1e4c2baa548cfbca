import Testing
import RemoraCore
@testable import RemoraIO

/// Answers each read with a corked echo (as an HTTP/1.1 session writes a head and its body) and
/// records what the accepted connection held once the answer had left.
final class CorkedEcho: ListenerDelegate, TCPConnectionDelegate {
    var requestsMadeAfterAnswer: Bool?
    var queueCapacityAfterAnswer = -1
    var queueCapacityAfterRelease = -1
    /// The loop's spare queue storage after each answer (`EventLoop.spareQueue`).
    var spareAfterAnswer: [Int] = []
    /// Queue storage the connection held while its bytes were corked.
    var queueCapacityWhileCorked = -1
    func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        c.delegate = self
        c.owner = self
        c.startReading()
    }
    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) {
        c.cork()
        c.write(data)
        queueCapacityWhileCorked = c.pending.capacity
        c.uncork()   // leaves with uv_try_write: no uv_write_t needed
        requestsMadeAfterAnswer = c.reqs != nil
        queueCapacityAfterAnswer = c.pending.capacity + c.inflight.capacity
        spareAfterAnswer.append(c.loop.spareQueue.capacity)
        c.releaseIdleBuffers()
        queueCapacityAfterRelease = c.pending.capacity + c.inflight.capacity
    }
    func connectionEOF(_ c: TCPConnection) { c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
}

/// Records TCP_NODELAY of each accepted socket, then echoes like `CorkedEcho`.
final class NoDelayProbe: ListenerDelegate, TCPConnectionDelegate {
    var noDelay: [Bool] = []
    func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        noDelay.append(c.isNoDelay)
        c.delegate = self
        c.owner = self
        c.startReading()
    }
    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) { c.write(data) }
    func connectionEOF(_ c: TCPConnection) { c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
}

@Suite struct ConnectionMemoryTests {
    /// Every accepted socket has TCP_NODELAY on, from the listening socket (Linux copies it at
    /// accept): the listener finds that out on its first socket and then makes no setsockopt per
    /// connection (issue 17: system calls per connection).
    @Test func acceptedSocketsInheritNoDelay() throws {
        let loop = EventLoop()
        let fd = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: 0)!)
        let addr = ListenSocket.localAddress(fd)!
        let server = NoDelayProbe()
        let listener = try Listener(loop: loop, fd: fd)
        listener.delegate = server
        let clients = (0..<3).map { _ in Client(payload: Array("x".utf8)) }
        for client in clients {
            let c = TCPConnection(loop: loop)
            c.delegate = client
            c.owner = client
            #expect(c.connect(to: addr) == 0)
        }
        runLoop(loop, every: 5, until: { clients.allSatisfy(\.eof) }, then: { listener.close() })
        #expect(server.noDelay == [true, true, true])
        #expect(listener.noDelayChecked && listener.noDelayInherited)
        #expect(loop.handleCount == 0)
        #expect(loop.close())
    }

    /// An accepted connection whose writes all go out at once never allocates its uv requests, and
    /// holds no write queue storage once its corked answer has left: the storage is the loop's
    /// spare (issue 17: memory per idle connection).
    @Test func acceptedConnectionHoldsNoRequestsAndReleasesItsQueue() throws {
        let loop = EventLoop()
        let fd = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: 0)!)
        let addr = ListenSocket.localAddress(fd)!
        let server = CorkedEcho()
        let listener = try Listener(loop: loop, fd: fd)
        listener.delegate = server
        let client = Client(payload: Array("GET / HTTP/1.1\r\n\r\n".utf8))
        let c = TCPConnection(loop: loop)
        c.delegate = client
        c.owner = client
        #expect(c.reqs == nil)
        #expect(c.connect(to: addr) == 0)
        #expect(c.reqs != nil)   // an outgoing connect needs its uv_connect_t
        runLoop(loop, every: 5, until: { client.eof }, then: { listener.close() })
        #expect(client.received == Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(server.requestsMadeAfterAnswer == false)
        #expect(server.queueCapacityWhileCorked > 0)   // the corked bytes had a buffer
        // ... which went to the loop once they had left: the connection holds none between answers
        // (before: it kept it until it was parked).
        #expect(server.queueCapacityAfterAnswer == 0)
        #expect(server.spareAfterAnswer.last ?? 0 > 0)
        #expect(server.queueCapacityAfterRelease == 0)
        #expect(loop.handleCount == 0)
        #expect(loop.close())
    }
}
