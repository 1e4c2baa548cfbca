@testable import RemoraHTTP
import RemoraCore
import Testing

/// `HTTP2Session.collectHeaders`: a header block's fields go straight into the block its owner handed
/// over in `h2BeginHeaders` (no `h2Header` call per field), names with `_` still go to `h2Header` when
/// asked, and a block over the limit refuses its stream as a false from `h2Header` does. A client
/// session's requests are read by a server session.
@Suite struct HTTP2CollectHeadersTests {
    final class Collector: HTTP2SessionDelegate {
        let block = UnsafeMutablePointer<HeaderBlock>.allocate(capacity: 1)
        let pool = BufferPool()
        var limit = 1 << 20
        var underscores = false
        /// Fields that came through `h2Header` instead.
        var viaDelegate: [String] = []
        var completed: [Int32] = []
        var closed: [(Int32, UInt32)] = []
        init() { block.initialize(to: HeaderBlock()) }
        deinit { block.pointee.release(to: pool); block.deallocate() }

        var collected: [String] {
            (0..<block.pointee.count).map {
                String(decoding: block.pointee.name($0), as: UTF8.self) + ":" + String(decoding: block.pointee.value($0), as: UTF8.self)
            }
        }

        func h2BeginHeaders(_ s: HTTP2Session, stream: Int32) {
            block.pointee.prepare(pool)
            s.collectHeaders(stream: stream, into: block, limit: limit, underscores: underscores)
        }
        func h2Header(_ s: HTTP2Session, stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
            viaDelegate.append(String(decoding: name, as: UTF8.self))
            return true
        }
        func h2HeadersComplete(_ s: HTTP2Session, stream: Int32, endStream: Bool) { completed.append(stream) }
        func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer) {}
        func h2DataEnd(_ s: HTTP2Session, stream: Int32) {}
        func h2StreamClosed(_ s: HTTP2Session, stream: Int32, errorCode: UInt32) { closed.append((stream, errorCode)) }
        func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32) {}
        func h2Settings(_ s: HTTP2Session) {}
        func h2ReadBody(_ s: HTTP2Session, stream: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? { nil }
    }

    /// One request with `fields` from a client session to `server` (whose delegate is `c`); then the
    /// server's answer (SETTINGS acks, resets) read back by the client. The client's own delegate.
    @discardableResult
    func request(_ fields: [(String, String)], client: HTTP2Session, server: HTTP2Session, bytes: TestBytes) -> Collector {
        let back = Collector()
        client.delegate = back
        let refs = fields.map { HeaderRef(name: bytes.of($0.0), value: bytes.of($0.1)) }
        let id = refs.withUnsafeBufferPointer { h in
            client.submitRequest(method: bytes.of("POST"), scheme: "http", authority: bytes.of("a.test"), path: bytes.of("/svc/Call"),
                                 headers: h, clean: true, hasBody: false, streamData: nil)
        }
        #expect(id > 0)
        var wire: [UInt8] = []
        _ = client.send { wire += $0; return true }
        #expect(wire.withUnsafeBytes { server.receive($0) })
        var answer: [UInt8] = []
        _ = server.send { answer += $0; return true }
        _ = answer.withUnsafeBytes { client.receive($0) }
        return back
    }

    @Test func fieldsGoIntoTheBlockInOrderWithoutTheDelegate() {
        let client = HTTP2Session(role: .client, settings: HTTP2Settings())
        let server = HTTP2Session(role: .server, settings: HTTP2Settings())
        let c = Collector()
        server.delegate = c
        let bytes = TestBytes()
        for round in 0..<3 {   // the target moves on with every block (a new stream each time)
            request([("content-type", "application/grpc"), ("te", "trailers"), ("x-long-name-for-a-field", "v\(round)")],
                    client: client, server: server, bytes: bytes)
            #expect(c.collected == [":method:POST", ":scheme:http", ":authority:a.test", ":path:/svc/Call",
                                    "content-type:application/grpc", "te:trailers", "x-long-name-for-a-field:v\(round)"])
            #expect(c.viaDelegate.isEmpty)
            #expect(c.completed.count == round + 1)
            #expect(c.block.pointee.listSize == c.collected.reduce(0) { $0 + $1.utf8.count - 1 + 32 })
        }
    }

    @Test func namesWithUnderscoresStillReachTheDelegateWhenAsked() {
        let client = HTTP2Session(role: .client, settings: HTTP2Settings())
        let server = HTTP2Session(role: .server, settings: HTTP2Settings())
        let c = Collector()
        c.underscores = true
        server.delegate = c
        let bytes = TestBytes()
        request([("x_forwarded", "1"), ("accept", "*/*")], client: client, server: server, bytes: bytes)
        #expect(c.viaDelegate == ["x_forwarded"])   // the owner's policy decides about it
        #expect(c.collected.last == "accept:*/*")
        #expect(!c.collected.contains { $0.hasPrefix("x_forwarded") })
    }

    @Test func aBlockOverTheLimitRefusesItsStreamOnly() {
        let client = HTTP2Session(role: .client, settings: HTTP2Settings())
        let server = HTTP2Session(role: .server, settings: HTTP2Settings())
        let c = Collector()
        c.limit = 300
        server.delegate = c
        let bytes = TestBytes()
        let back = request([("x-big", String(repeating: "a", count: 400))], client: client, server: server, bytes: bytes)
        #expect(c.completed.isEmpty)   // never handed on
        #expect(back.closed.count == 1 && back.closed[0].1 != 0)   // the client sees its stream reset
        c.limit = 1 << 20
        request([("x-small", "b")], client: client, server: server, bytes: bytes)   // the session goes on
        #expect(c.completed.count == 1)
        #expect(c.collected.last == "x-small:b")
    }

    @Test func copySmallCopiesEveryLength() {
        let src = (0..<64).map { UInt8($0 + 1) }
        for n in 0...40 {
            var dst = [UInt8](repeating: 0, count: 48)
            src.withUnsafeBytes { s in dst.withUnsafeMutableBytes { d in copySmall(d.baseAddress! + 3, s.baseAddress!, n) } }
            #expect(Array(dst[3..<(3 + n)]) == Array(src[0..<n]), "length \(n)")
            #expect(dst[0..<3].allSatisfy { $0 == 0 } && dst[(3 + n)...].allSatisfy { $0 == 0 }, "length \(n): wrote outside")
        }
    }
}
