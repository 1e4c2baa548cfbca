import Testing
import RemoraCore
@testable import RemoraIO

/// A toy byte layer: XOR with a key both ways, and a trailer byte before FIN. Stands in for TLS.
final class XORSocket: TransportSocket {
    let key: UInt8
    var scratch = [UInt8]()
    var shutdowns = 0
    var connects = 0
    init(key: UInt8) { self.key = key }
    func connected(_ c: TCPConnection, status: Int32) { connects += 1; c.deliverConnected(status) }
    func received(_ c: TCPConnection, _ wire: UnsafeRawBufferPointer) {
        scratch = wire.map { $0 ^ key }
        scratch.withUnsafeBytes { c.deliver($0) }
    }
    func send(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) -> Bool {
        scratch = data.map { $0 ^ key }
        return scratch.withUnsafeBytes { c.writeWire($0) }
    }
    func shutdown(_ c: TCPConnection) {
        shutdowns += 1
        [key].withUnsafeBytes { _ = c.writeWire($0) }   // "close_notify"
    }
}

/// Collects what arrives, raw; closes on EOF.
final class Collector: ListenerDelegate, TCPConnectionDelegate {
    var received: [UInt8] = []
    var eof = false
    var layer: XORSocket?
    func listenerAccepted(_ l: Listener, _ c: TCPConnection) {
        c.delegate = self
        c.owner = self
        c.transportSocket = layer
        c.startReading()
    }
    func connectionRead(_ c: TCPConnection, _ data: UnsafeRawBufferPointer) { received += data }
    func connectionEOF(_ c: TCPConnection) { eof = true; c.close() }
    func connectionError(_ c: TCPConnection, _ code: Int32) { c.close() }
}

@Suite struct TransportSocketTests {
    /// The same client code (`Client` from LoopTests: write, shutdownWrite, read until EOF) runs over
    /// a layer that it never sees: the wire carries the layer's bytes, the peer's layer undoes them.
    func run(clientKey: UInt8, serverKey: UInt8?) throws -> (client: XORSocket, server: Collector, payload: [UInt8]) {
        let loop = EventLoop()
        let fd = try ListenSocket.bind(SocketAddress(ip: "127.0.0.1", port: 0)!)
        let addr = ListenSocket.localAddress(fd)!
        let server = Collector()
        server.layer = serverKey.map { XORSocket(key: $0) }
        let listener = try Listener(loop: loop, fd: fd)
        listener.delegate = server
        let payload = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let client = Client(payload: payload)
        let layer = XORSocket(key: clientKey)
        let c = TCPConnection(loop: loop)
        c.delegate = client
        c.owner = client
        c.transportSocket = layer
        #expect(c.connect(to: addr) == 0)
        runLoop(loop, until: { server.eof }, then: { listener.close(); c.close() })
        #expect(loop.handleCount == 0)
        #expect(loop.close())
        return (layer, server, payload)
    }

    @Test func wireCarriesTheLayersBytes() throws {
        let (layer, server, payload) = try run(clientKey: 0x5A, serverKey: nil)
        #expect(layer.connects == 1)
        #expect(layer.shutdowns == 1)
        #expect(server.received == payload.map { $0 ^ 0x5A } + [0x5A])   // the trailer went out before FIN
    }

    @Test func peerLayerUndoesIt() throws {
        let (_, server, payload) = try run(clientKey: 0x5A, serverKey: 0x5A)
        #expect(server.received == payload + [0])   // the trailer byte, decoded
    }
}
