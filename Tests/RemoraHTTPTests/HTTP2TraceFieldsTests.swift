@testable import RemoraHTTP
import RemoraCore
import Testing

/// The proxy's per-request fields toward an HTTP/2 upstream (request id, trace context): their names
/// go to nghttp2 as literals (not copied, not lowercased), their values out of the HPACK dynamic
/// table. A client session's request is read back by a server session: every field arrives as sent.
@Suite struct HTTP2TraceFieldsTests {
    final class Recorder: HTTP2SessionDelegate {
        var fields: [(String, String)] = []
        func h2BeginHeaders(_ s: HTTP2Session, stream: Int32) {}
        func h2Header(_ s: HTTP2Session, stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Bool {
            fields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
            return true
        }
        func h2HeadersComplete(_ s: HTTP2Session, stream: Int32, endStream: Bool) {}
        func h2Data(_ s: HTTP2Session, stream: Int32, data: UnsafeRawBufferPointer) {}
        func h2DataEnd(_ s: HTTP2Session, stream: Int32) {}
        func h2StreamClosed(_ s: HTTP2Session, stream: Int32, errorCode: UInt32) {}
        func h2GoAway(_ s: HTTP2Session, lastStreamID: Int32, errorCode: UInt32) {}
        func h2Settings(_ s: HTTP2Session) {}
        func h2ReadBody(_ s: HTTP2Session, stream: Int32, into buf: UnsafeMutableRawBufferPointer) -> (count: Int, eof: Bool, trailers: Bool)? { nil }
    }

    /// Sends `fields` (after the pseudo-headers) `times` times on one client session, each request
    /// read by one server session; the fields the server got for each request.
    func roundTrip(_ fields: [(String, String)], clean: Bool, added: Bool, times: Int = 3) -> [[(String, String)]] {
        let client = HTTP2Session(role: .client, settings: HTTP2Settings())
        let server = HTTP2Session(role: .server, settings: HTTP2Settings())
        let rec = Recorder()
        server.delegate = rec
        let bytes = TestBytes()
        let refs = fields.map { HeaderRef(name: bytes.of($0.0), value: bytes.of($0.1)) }
        var out: [[(String, String)]] = []
        for _ in 0..<times {
            rec.fields = []
            let id = refs.withUnsafeBufferPointer { h in
                client.submitRequest(method: bytes.of("GET"), scheme: "http", authority: bytes.of("a.test"), path: bytes.of("/p"),
                                     headers: h, clean: clean, hasBody: false, streamData: nil, addedFields: added)
            }
            #expect(id > 0)
            var wire: [UInt8] = []
            _ = client.send { wire += $0; return true }
            #expect(wire.withUnsafeBytes { server.receive($0) })
            var back: [UInt8] = []
            _ = server.send { back += $0; return true }
            _ = back.withUnsafeBytes { client.receive($0) }
            out.append(rec.fields.filter { !$0.0.hasPrefix(":") })
        }
        return out
    }

    static let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    static let requestID = "d5b2f1c4-3a1e-4c6b-9f0a-2b7c8d9e0f11"

    @Test func proxyFieldsArriveAsSentOnEveryRequest() {
        let fields = [("user-agent", "t"), ("x-request-id", Self.requestID), ("traceparent", Self.traceparent),
                      ("x-b3-traceid", "0af7651916cd43dd8448eb211c80319c"), ("x-b3-spanid", "b7ad6b7169203331"),
                      ("x-b3-parentspanid", "00f067aa0ba902b7"), ("x-b3-sampled", "1"), ("b3", "0af7651916cd43dd-b7ad6b7169203331-1")]
        for got in roundTrip(fields, clean: true, added: true) {
            #expect(got.map { $0.0 } == fields.map { $0.0 })
            #expect(got.map { $0.1 } == fields.map { $0.1 })
        }
    }

    @Test func clientNamesInAnyCaseGoLowercase() {
        // Not clean (from HTTP/1.1): names are lowercased, the trace fields by their literals.
        let fields = [("X-Request-Id", Self.requestID), ("TraceParent", Self.traceparent), ("Accept", "*/*")]
        for got in roundTrip(fields, clean: false, added: false) {
            #expect(got.map { $0.0 } == ["x-request-id", "traceparent", "accept"])
            #expect(got.map { $0.1 } == fields.map { $0.1 })
        }
    }

    @Test func perRequestNames() {
        let bytes = TestBytes()
        func name(_ n: String, _ v: String) -> String? {
            HTTP2Session.perRequestName(HeaderRef(name: bytes.of(n), value: bytes.of(v))).map { "\($0)" }
        }
        #expect(name("traceparent", Self.traceparent) == "traceparent")
        #expect(name("TRACEPARENT", Self.traceparent) == "traceparent")
        #expect(name("traceparent", Self.traceparent + "-x") == nil)   // another version's: indexed as any field
        #expect(name("x-request-id", Self.requestID) == "x-request-id")
        #expect(name("x-request-id", "short") == nil)
        #expect(name("b3", "0af7651916cd43dd-b7ad6b7169203331") == "b3")
        #expect(name("b3", "1") == nil)
        #expect(name("x-b3-sampled", "1") == nil)
        #expect(name("x-b3-spanid", "b7ad6b7169203331") == "x-b3-spanid")
        #expect(name("user-agent", "a long user agent value") == nil)
        func flag(_ n: String, _ v: String) -> UInt32 { HTTP2Session.indexFlag(HeaderRef(name: bytes.of(n), value: bytes.of(v))) }
        #expect(flag("x-b3-other-id", "0af7651916cd43dd") != 0)   // a client's other B3 id: out of the table
        #expect(flag("user-agent", "a long user agent value") == 0)
    }
}
