import RemoraCore
@testable import RemoraProxy
import Testing

/// The writer thread's formatter (word-at-a-time copies and JSON escaping) against a plain
/// byte-by-byte reference, on strings of every length around the word size.
@Suite struct AccessLogFormatterTests {
    /// JSON string escaping, one byte at a time (what the formatter must produce).
    static func reference(_ s: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        for b in s {
            switch b {
            case 0x22: out += Array("\\\"".utf8)
            case 0x5C: out += Array("\\\\".utf8)
            case 0..<0x20, 0x7F:
                let hex = Array("0123456789abcdef".utf8)
                out += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 15)]]
            default: out.append(b)
            }
        }
        return out
    }

    /// The line of a record whose user-agent is `ua` and path is `path` (the other strings absent).
    static func line(_ format: AccessLogFormat, path: [UInt8], ua: [UInt8], flags: ResponseFlags = [],
                     status: Int32 = 200) -> [UInt8] {
        var f = AccessLogFormatter()
        f.formats = [AccessLogFormatter.compile(format)]
        var r = AccessLogRecord()
        r.proto = 2
        r.startMicros = 1_796_620_000_123_456   // 2026-12-07T05:06:40.123Z
        r.durationMicros = 12_345
        r.bytesReceived = 7
        r.bytesSent = 1_234_567_890
        r.status = status
        r.flags = flags.rawValue
        r.retries = 0
        var strings = ByteBuffer()
        r.spans[2] = 0; r.spans[3] = Int32(path.count)
        path.withUnsafeBytes { strings.append($0) }
        r.spans[8] = Int32(strings.count); r.spans[9] = Int32(ua.count)
        ua.withUnsafeBytes { strings.append($0) }
        strings.reserve(strings.count + 8)
        var out = ByteBuffer()
        out.append("prefix|")   // a line goes after what the buffer holds
        f.format(r, strings: strings.bytes, into: &out)
        defer { out.release(); strings.release() }
        return Array(out.bytes)
    }

    @Test func jsonStringsOfEveryLengthAndEscape() {
        let specials: [UInt8] = [0x22, 0x5C, 0x00, 0x1F, 0x7F, 0x0A, 0xC3, 0xA9, 0x41, 0x20]
        for n in 0...19 {
            for (k, special) in specials.enumerated() {
                // `special` at every position of an n-byte string of plain letters
                for at in 0..<max(n, 1) {
                    var s = (0..<n).map { UInt8(0x61 + ($0 + k) % 26) }
                    if n > 0 { s[at] = special }
                    let got = Self.line(.json, path: s, ua: Array("ua\"x".utf8))
                    let want = Array("prefix|".utf8) + Array("{\"start_time\":\"2026-12-07T05:06:40.123Z\",\"method\":null,\"path\":\"".utf8)
                        + Self.reference(s) + Array("\",\"protocol\":\"HTTP/2\",\"response_code\":200,\"grpc_status\":null,".utf8)
                    #expect(Array(got.prefix(want.count)) == want, "n \(n) at \(at) special \(special)")
                    let tail = Array(",\"user_agent\":\"ua\\\"x\",\"authority\":null,\"retry_count\":0,\"downstream_peer_identity\":null}\n".utf8)
                    #expect(Array(got.suffix(tail.count)) == tail, "n \(n) at \(at) special \(special)")
                }
            }
        }
    }

    @Test func jsonNumbersFlagsAndAbsentValues() {
        let got = String(decoding: Self.line(.json, path: Array("/a".utf8), ua: [], flags: [.UH, .NR], status: -1), as: UTF8.self)
        #expect(got.contains("\"response_code\":null,"))
        #expect(got.contains("\"response_flags\":\"\(ResponseFlags([.UH, .NR]).letters)\","))
        #expect(got.contains("\"bytes_received\":7,\"bytes_sent\":1234567890,\"duration\":12,\"upstream_service_time\":null,"))
        #expect(got.contains("\"user_agent\":\"\","), "an empty string is a string, not null")
    }

    /// The JSON line is written by straight-line code (`formatJSON`), not from the field list: every
    /// field must land under its own key, in `AccessLogField.allCases` order, present or absent.
    @Test func jsonHasEveryFieldUnderItsKey() {
        var f = AccessLogFormatter()
        f.formats = [AccessLogFormatter.compile(.json)]
        var r = AccessLogRecord()
        r.proto = 1
        r.startMicros = 1_796_620_000_123_456
        r.durationMicros = 45_678
        r.bytesReceived = 11
        r.bytesSent = 22
        r.upstreamMillis = 33
        r.status = 503
        r.grpcStatus = 14
        r.flags = ResponseFlags([.URX]).rawValue
        r.retries = 2
        var strings = ByteBuffer()
        func put(_ text: String) -> (Int32, Int32) {
            let at = Int32(strings.count)
            strings.append(string: text)
            return (at, Int32(text.utf8.count))
        }
        // each string slot gets its own text: a slot written under another key shows
        let slots: [(Int, String)] = [(0, "GET"), (2, "/p"), (4, "auth.test"), (6, "10.0.0.1"), (8, "ua/1"),
                                      (10, "rid-1"), (12, "10.1.1.1:80"), (14, "cluster-c")]
        for (i, text) in slots { let (o, n) = put(text); r.spans[i] = o; r.spans[i + 1] = n }
        let route = put("route-r"), peer = put("spiffe://t/x")
        r.routeSpan = SIMD2(route.0, route.1)
        r.peerSpan = SIMD2(peer.0, peer.1)
        strings.reserve(strings.count + 8)
        let want: [AccessLogField: String] = [
            .startTime: "\"2026-12-07T05:06:40.123Z\"", .method: "\"GET\"", .path: "\"/p\"", .protocol: "\"HTTP/1.0\"",
            .responseCode: "503", .grpcStatus: "14", .responseFlags: "\"\(ResponseFlags([.URX]).letters)\"",
            .bytesReceived: "11", .bytesSent: "22", .duration: "45", .upstreamServiceTime: "33",
            .upstreamHost: "\"10.1.1.1:80\"", .routeName: "\"route-r\"", .upstreamCluster: "\"cluster-c\"",
            .requestID: "\"rid-1\"", .xForwardedFor: "\"10.0.0.1\"", .userAgent: "\"ua/1\"", .authority: "\"auth.test\"",
            .retryCount: "2", .peerIdentity: "\"spiffe://t/x\"",
        ]
        #expect(want.count == AccessLogField.allCases.count)
        func expected(_ value: (AccessLogField) -> String) -> String {
            "{" + AccessLogField.allCases.map { "\"\($0.jsonKey)\":\(value($0))" }.joined(separator: ",") + "}\n"
        }
        var out = ByteBuffer()
        f.format(r, strings: strings.bytes, into: &out)
        #expect(String(decoding: out.bytes, as: UTF8.self) == expected { want[$0]! })
        // every string and optional number absent: null
        var none = AccessLogRecord()
        none.startMicros = r.startMicros
        out.clear()
        f.format(none, strings: strings.bytes, into: &out)
        let absent = expected {
            switch $0 {
            case .startTime: return want[.startTime]!
            case .protocol: return "\"HTTP/1.1\""
            case .responseFlags: return "\"-\""
            case .bytesReceived, .bytesSent, .duration: return "0"
            default: return "null"
            }
        }
        #expect(String(decoding: out.bytes, as: UTF8.self) == absent)
        out.release(); strings.release()
    }

    @Test func textFormatWritesValuesAsTheyAre() {
        let format = AccessLogFormat.text(try! AccessLogFormat.parse("%PROTOCOL% %REQ(:PATH)% \"%REQ(USER-AGENT)%\" %RESPONSE_FLAGS%/%RESPONSE_FLAGS% %UPSTREAM_HOST% %DURATION%").get())
        for n in 0...17 {
            let path = Array(String(repeating: "p", count: n).utf8) + [0x22]
            let got = String(decoding: Self.line(format, path: path, ua: Array("curl/8".utf8), flags: [.UF, .URX]), as: UTF8.self)
            let flags = ResponseFlags([.UF, .URX]).letters
            #expect(got == "prefix|HTTP/2 \(String(repeating: "p", count: n))\" \"curl/8\" \(flags)/\(flags) - 12\n")
        }
    }
}
