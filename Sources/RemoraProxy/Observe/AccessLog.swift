import CRemoraSupport
import Glibc
import RemoraCore
import RemoraHTTP
import RemoraRouting

/// The fixed part of one access log record, as a worker hands it to the writer thread: numbers,
/// then where each string is in the bytes that follow. The worker copies values; the writer thread
/// formats them (JSON, text), so the request path never formats a line.
struct AccessLogRecord {
    /// The whole record (this head, then the strings), bytes.
    var length: UInt32 = 0
    /// The listener's format (index in its sink's formats).
    var format: UInt16 = 0
    /// 0 HTTP/1.1, 1 HTTP/1.0, 2 HTTP/2, 3 TCP.
    var proto: UInt8 = 0
    var pad: UInt8 = 0
    /// When the request head arrived (TCP: the accept), wall clock µs.
    var startMicros: UInt64 = 0
    var durationMicros: UInt64 = 0
    var bytesReceived: UInt64 = 0
    var bytesSent: UInt64 = 0
    /// ms from the last attempt's start to its response head; -1 = none.
    var upstreamMillis: Int64 = -1
    /// The status the client got (0: none); -1 = not HTTP.
    var status: Int32 = -1
    var grpcStatus: Int32 = -1
    var flags: UInt32 = 0
    /// Attempts after the first; -1 = not HTTP.
    var retries: Int32 = -1
    /// (offset, length) of each string in the bytes after the head, by `Slot`; offset -1 = absent.
    var spans = SIMD16<Int32>(repeating: -1)
    var routeSpan = SIMD2<Int32>(repeating: -1)
    /// The client certificate's identity (mutual TLS), in the strings like `spans`; -1 = none.
    var peerSpan = SIMD2<Int32>(repeating: -1)

    /// String slots (×2 in `spans`): the first six are the request fields the filter captures, in
    /// `Observation.logSpans` order.
    enum Slot: Int { case method, path, authority, xForwardedFor, userAgent, requestID, upstreamHost, upstreamCluster }

    static let size = MemoryLayout<AccessLogRecord>.stride
}

/// A listener's access log, as an HTTP filter (`log` phase): at `requestHeaders` it copies the
/// request fields its line needs into a pooled buffer of the exchange; when the exchange is over
/// it appends one record (numbers and those bytes) to the worker's ring of the log's file. The
/// writer thread formats and writes it (`AccessLogWriter`). Nothing here formats, waits or
/// allocates per request once warm.
final class AccessLogFilter: HTTPFilter {
    let sink: UnsafeMutablePointer<remora_log_ring>
    let writer: AccessLogWriter
    /// The listener's format in its sink.
    let format: UInt16
    /// The listener's stats (`access_log_dropped`).
    let stats: StatBlock<ListenerStat>
    /// Route names by index of the listener's table, as bytes.
    let routeNames: [[UInt8]]
    /// The record being built (reused).
    var record = ByteBuffer(capacity: 1024)
    /// Names of the last cluster seen: its own and its endpoints' (SocketAddress.description formats
    /// with printf: done once per cluster runtime, not per request).
    unowned(unsafe) var namesOf: Cluster?
    var clusterName: [UInt8] = []
    var hostNames: [[UInt8]] = []

    init(ring: UnsafeMutablePointer<remora_log_ring>, writer: AccessLogWriter, format: UInt16,
         stats: StatBlock<ListenerStat>, routes: RouteTable) {
        sink = ring; self.writer = writer; self.format = format; self.stats = stats
        routeNames = routes.info.map { Array($0.name.utf8) }
    }

    deinit { record.release() }

    func requestHeaders(_ e: Exchange, _ r: RequestView) -> FilterVerdict {
        var head = e.pool.take()
        var spans = AccessLogFilter.capture(r, into: &head, base: 0)
        if e.observe.hasTrace && e.observe.generatedID {   // the id the tracing filter generated
            spans[10] = Int32(head.count); spans[11] = 36
            head.reserve(head.count + 36)
            writeUUID(e.observe.requestID.0, e.observe.requestID.1,
                      into: UnsafeMutableRawBufferPointer(start: head.base! + head.count, count: 36))
            head.count += 36
        }
        // By type identity (a load), not a dynamic cast (a runtime call) per request.
        e.observe.logPeer = SIMD2(repeating: -1)
        if let d = e.downstream {
            let t = ObjectIdentifier(type(of: d))
            let h2 = t == ObjectIdentifier(H2ServerStream.self)
            e.observe.downstreamProtocol = h2 ? 2
                : (t == ObjectIdentifier(HTTPSession.self) && unsafeDowncast(d, to: HTTPSession.self).isHTTP10 ? 1 : 0)
            // The client's TLS identity (mutual TLS): only connections with a transport socket have one.
            let conn = h2 ? unsafeDowncast(d, to: H2ServerStream.self).connection?.conn
                : (t == ObjectIdentifier(HTTPSession.self) ? unsafeDowncast(d, to: HTTPSession.self).conn : nil)
            if let c = conn, c.transportSocket != nil, let p = c.peerPrincipal {
                e.observe.logPeer = SIMD2(Int32(head.count), Int32(p.utf8.count))
                head.append(string: p)
            }
        }
        e.observe.logHead = head
        e.observe.logSpans = spans
        return .next
    }

    func log(_ e: Exchange) {
        var r = AccessLogRecord()
        r.format = format
        r.proto = e.observe.downstreamProtocol
        r.durationMicros = e.observe.durationMicros
        r.startMicros = realtimeMicros() &- r.durationMicros
        r.bytesReceived = e.requestBodyBytes
        r.bytesSent = e.observe.bytesSent
        r.status = Int32(truncatingIfNeeded: e.observe.status)
        r.grpcStatus = Int32(truncatingIfNeeded: e.responseGRPCStatus)
        r.flags = e.observe.flags.rawValue
        r.retries = Int32(truncatingIfNeeded: max(0, e.observe.attempts - 1))
        if e.observe.attempts > 0 && e.observe.status != 0 && e.clusterStats != nil {
            r.upstreamMillis = Int64(truncatingIfNeeded: e.observe.upstreamMillis)
        }
        r.spans = e.observe.logSpans
        r.peerSpan = e.observe.logPeer
        record.clear()
        record.reserve(AccessLogRecord.size)
        record.count = AccessLogRecord.size
        record.append(e.observe.logHead.bytes)
        e.pool.give(&e.observe.logHead)
        if let c = e.cluster ?? e.observe.refusedBy { appendCluster(&r, c, endpoint: e.observe.endpoint) }
        let route = e.observe.route
        if route >= 0 && route < routeNames.count {
            r.routeSpan = SIMD2(Int32(record.count - AccessLogRecord.size), Int32(routeNames[route].count))
            routeNames[route].withUnsafeBytes { record.append($0) }
        }
        push(&r)
    }

    /// Appends the request fields a line keeps (method, target, authority, the first
    /// x-forwarded-for, user-agent and x-request-id) to `head`: their (offset, length) from `base`
    /// in `Observation.logSpans` order, -1 = absent.
    @inline(__always)
    static func capture(_ r: RequestView, into head: inout ByteBuffer, base: Int) -> SIMD16<Int32> {
        var spans = SIMD16<Int32>(repeating: -1)
        spans[0] = Int32(head.count - base); spans[1] = Int32(r.method.count); head.append(r.method)
        spans[2] = Int32(head.count - base); spans[3] = Int32(r.target.count); head.append(r.target)
        spans[4] = Int32(head.count - base); spans[5] = Int32(r.authority.count); head.append(r.authority)
        for h in r.headers {
            let slot: Int
            switch h.name.count {
            case 15 where h.name.equalsLowercase("x-forwarded-for"): slot = 6
            case 10 where h.name.equalsLowercase("user-agent"): slot = 8
            case 12 where h.name.equalsLowercase("x-request-id"): slot = 10
            default: continue
            }
            if spans[slot] >= 0 { continue }   // the first one
            spans[slot] = Int32(head.count - base); spans[slot + 1] = Int32(h.value.count); head.append(h.value)
        }
        return spans
    }

    /// A request the downstream connection refused before an exchange existed (a malformed head:
    /// 400 / 431 with `DPE`, the header timeout: 408 `DT`, an overload refusal: 503 or HTTP/2
    /// REFUSED_STREAM with `OM`): one line with what is known of it (`view`: the head, when it was
    /// parsed whole). `proto`: as `AccessLogRecord.proto`; `status` 0 = no response (a reset).
    func logRefused(proto: UInt8, status: Int, flags: ResponseFlags, view: RequestView?) {
        var r = AccessLogRecord()
        r.format = format
        r.proto = proto
        r.startMicros = realtimeMicros()
        r.status = Int32(truncatingIfNeeded: status)
        r.flags = flags.rawValue
        r.retries = 0
        record.clear()
        record.reserve(AccessLogRecord.size)
        record.count = AccessLogRecord.size
        if let v = view { r.spans = AccessLogFilter.capture(v, into: &record, base: AccessLogRecord.size) }
        push(&r)
    }

    /// The cluster's name and the endpoint's `host:port` (cached per cluster runtime).
    @inline(__always) func appendCluster(_ r: inout AccessLogRecord, _ c: Cluster, endpoint: Int) {
        if namesOf !== c {
            namesOf = c
            clusterName = Array(c.config.name.utf8)
            hostNames = c.endpoints.map { Array($0.address.description.utf8) }
        }
        let base = AccessLogRecord.size
        r.spans[14] = Int32(record.count - base); r.spans[15] = Int32(clusterName.count)
        clusterName.withUnsafeBytes { record.append($0) }
        if endpoint >= 0 && endpoint < hostNames.count {
            r.spans[12] = Int32(record.count - base); r.spans[13] = Int32(hostNames[endpoint].count)
            hostNames[endpoint].withUnsafeBytes { record.append($0) }
        }
    }

    /// A TCP listener's record, one per connection: start, duration, bytes both ways, the upstream
    /// host and cluster, flags (`UF` connect failure, `UC`/`DC` a side failed, `SI` idle timeout).
    func logConnection(_ s: TCPProxySession) {
        var r = AccessLogRecord()
        r.format = format
        r.proto = 3
        r.durationMicros = monotonicMicros() &- s.startMicros
        r.startMicros = realtimeMicros() &- r.durationMicros
        r.bytesReceived = s.bytesIn
        r.bytesSent = s.bytesOut
        r.flags = s.flags.rawValue
        record.clear()
        record.reserve(AccessLogRecord.size)
        record.count = AccessLogRecord.size
        if let c = s.cluster { appendCluster(&r, c, endpoint: s.endpointIndex) }
        push(&r)
    }

    /// Appends the record to the ring; dropped and counted when the ring is full (the writer is
    /// behind). Wakes the writer once the ring holds `flushAt` bytes.
    @inline(__always) func push(_ r: inout AccessLogRecord) {
        r.length = UInt32(record.count)
        withUnsafeBytes(of: &r) { record.base!.copyMemory(from: $0.baseAddress!, byteCount: AccessLogRecord.size) }
        let ring = sink
        if remora_log_ring_push(ring, record.base!.assumingMemoryBound(to: UInt8.self), UInt64(record.count)) == 0 {
            stats.inc(.access_log_dropped)
        }
        if remora_log_ring_used(ring) >= AccessLogWriter.flushAt && remora_flag_exchange(&ring.pointee.signalled, 1) == 0 {
            writer.wake()
        }
    }
}

/// Formats records into lines, on the writer thread: one per sink.
struct AccessLogFormatter {
    /// One step of a line: literal bytes, then a field (nil: none). `quoted`: a JSON string value
    /// (quotes around it, `null` when absent); JSON numbers are bare or `null`.
    struct Op {
        var literal: ByteBuffer
        var field: AccessLogField?
        var quoted: Bool
    }

    struct Compiled {
        var ops: [Op]
        var json: Bool
    }

    static func compile(_ format: AccessLogFormat) -> Compiled {
        func bytes(_ s: String) -> ByteBuffer { var b = ByteBuffer(); b.append(string: s); return b }
        var ops: [Op] = []
        switch format {
        case .json:
            for (i, f) in AccessLogField.allCases.enumerated() {
                ops.append(Op(literal: bytes((i == 0 ? "{\"" : ",\"") + f.jsonKey + "\":"), field: f, quoted: !f.isNumber))
            }
            ops.append(Op(literal: bytes("}\n"), field: nil, quoted: false))
            return Compiled(ops: ops, json: true)
        case .text(let pieces):
            var lit = ""
            for p in pieces {
                switch p {
                case .literal(let t): lit += t
                case .field(let f): ops.append(Op(literal: bytes(lit), field: f, quoted: false)); lit = ""
                }
            }
            ops.append(Op(literal: bytes(lit + "\n"), field: nil, quoted: false))
            return Compiled(ops: ops, json: false)
        }
    }

    var formats: [Compiled] = []
    /// `2026-12-07T04:45:00.` of the last second formatted, and that second.
    var timeSecond: UInt64 = .max
    var timePrefix = ByteBuffer()
    /// Letters of the last flags formatted (flags repeat).
    var flagsValue: UInt32 = .max
    var flagsText = ByteBuffer()

    /// Appends the line of record `r` (its strings in `strings`) to `out`.
    mutating func format(_ r: AccessLogRecord, strings: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        guard Int(r.format) < formats.count else { return }
        let json = formats[Int(r.format)].json
        let ops = formats[Int(r.format)].ops
        for op in ops {
            out.append(op.literal.bytes)
            guard let f = op.field else { continue }
            let mark = out.count
            if json && op.quoted { out.append(byte: 0x22) }
            if value(f, r, strings, json: json, into: &out) {
                if json && op.quoted { out.append(byte: 0x22) }
            } else {
                out.count = mark
                if json { out.append("null") } else { out.append(byte: 0x2D) }
            }
        }
    }

    mutating func value(_ f: AccessLogField, _ r: AccessLogRecord, _ s: UnsafeRawBufferPointer, json: Bool,
                        into out: inout ByteBuffer) -> Bool {
        switch f {
        case .startTime: time(r.startMicros, into: &out)
        case .method: return string(r.spans[0], r.spans[1], s, json, &out)
        case .path: return string(r.spans[2], r.spans[3], s, json, &out)
        case .authority: return string(r.spans[4], r.spans[5], s, json, &out)
        case .xForwardedFor: return string(r.spans[6], r.spans[7], s, json, &out)
        case .userAgent: return string(r.spans[8], r.spans[9], s, json, &out)
        case .requestID: return string(r.spans[10], r.spans[11], s, json, &out)
        case .upstreamHost: return string(r.spans[12], r.spans[13], s, json, &out)
        case .upstreamCluster: return string(r.spans[14], r.spans[15], s, json, &out)
        case .routeName: return string(r.routeSpan[0], r.routeSpan[1], s, json, &out)
        case .protocol:
            switch r.proto {
            case 3: out.append("TCP")
            case 2: out.append("HTTP/2")
            case 1: out.append("HTTP/1.0")
            default: out.append("HTTP/1.1")
            }
        case .responseCode:
            guard r.status >= 0 else { return false }
            out.appendDecimal(UInt64(r.status))
        case .grpcStatus:
            guard r.grpcStatus >= 0 else { return false }
            out.appendDecimal(UInt64(r.grpcStatus))
        case .responseFlags:
            if r.flags == 0 { out.append(byte: 0x2D); return true }
            if r.flags != flagsValue {
                flagsValue = r.flags
                flagsText.clear()
                flagsText.append(string: ResponseFlags(rawValue: r.flags).letters)
            }
            out.append(flagsText.bytes)
        case .bytesReceived: out.appendDecimal(r.bytesReceived)
        case .bytesSent: out.appendDecimal(r.bytesSent)
        case .duration: out.appendDecimal(r.durationMicros / 1000)
        case .upstreamServiceTime:
            guard r.upstreamMillis >= 0 else { return false }
            out.appendDecimal(UInt64(r.upstreamMillis))
        case .retryCount:
            guard r.retries >= 0 else { return false }
            out.appendDecimal(UInt64(r.retries))
        case .peerIdentity: return string(r.peerSpan[0], r.peerSpan[1], s, json, &out)
        }
        return true
    }

    /// The string at (`offset`, `length`) of `s`: as it is (text), or escaped for a JSON string.
    @inline(__always)
    func string(_ offset: Int32, _ length: Int32, _ s: UnsafeRawBufferPointer, _ json: Bool, _ out: inout ByteBuffer) -> Bool {
        let off = Int(offset), len = Int(length)
        guard off >= 0 && len >= 0 && off + len <= s.count, let base = s.baseAddress else { return false }
        let v = UnsafeRawBufferPointer(start: base + off, count: len)
        if !json { out.append(v); return true }
        // Eight bytes at a time while none needs escaping (control, '"', '\\', DEL): the common case.
        var i = 0
        while i + 8 <= len {
            let x = v.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let lo: UInt64 = 0x0101_0101_0101_0101, hi: UInt64 = 0x8080_8080_8080_8080
            func zero(_ y: UInt64) -> UInt64 { (y &- lo) & ~y & hi }
            if (zero(x & 0xE0E0_E0E0_E0E0_E0E0) | zero(x ^ 0x2222_2222_2222_2222) | zero(x ^ 0x5C5C_5C5C_5C5C_5C5C)
                | zero(x ^ 0x7F7F_7F7F_7F7F_7F7F)) != 0 { break }
            i += 8
        }
        var run = 0
        for i in i..<len {
            let b = v[i]
            if b >= 0x20 && b != 0x22 && b != 0x5C && b != 0x7F { continue }
            out.append(UnsafeRawBufferPointer(rebasing: v[run..<i]))
            run = i + 1
            switch b {
            case 0x22: out.append("\\\"")
            case 0x5C: out.append("\\\\")
            default:
                out.append("\\u00")
                out.append(byte: AccessLogFormatter.hex(b >> 4))
                out.append(byte: AccessLogFormatter.hex(b & 15))
            }
        }
        out.append(UnsafeRawBufferPointer(rebasing: v[run..<len]))
        return true
    }

    @inline(__always) static func hex(_ d: UInt8) -> UInt8 { d < 10 ? 48 + d : 87 + d }

    /// `2026-12-07T04:45:00.123Z` (Envoy's START_TIME).
    mutating func time(_ us: UInt64, into out: inout ByteBuffer) {
        let sec = us / 1_000_000
        if sec != timeSecond {
            timeSecond = sec
            var t = time_t(sec)
            var tm = Glibc.tm()
            gmtime_r(&t, &tm)
            func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
            timePrefix.clear()
            timePrefix.append(string: "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)).")
        }
        out.append(timePrefix.bytes)
        let ms = us / 1000 % 1000
        out.append(byte: UInt8(truncatingIfNeeded: 48 + ms / 100))
        out.append(byte: UInt8(truncatingIfNeeded: 48 + ms / 10 % 10))
        out.append(byte: UInt8(truncatingIfNeeded: 48 + ms % 10))
        out.append(byte: 0x5A)
    }
}
