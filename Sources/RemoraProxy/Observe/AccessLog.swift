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

/// Names as bytes end to end, with an (offset, length) per index: what a record copies, without
/// an array (and its retain) per look-up.
struct NameTable {
    private var bytes = ByteBuffer()
    private var spans = ByteBuffer()
    private(set) var count = 0

    mutating func reset(_ names: [String]) {
        bytes.clear(); spans.clear()
        count = names.count
        for n in names {
            var v = SIMD2<Int32>(Int32(bytes.count), Int32(n.utf8.count))
            withUnsafeBytes(of: &v) { spans.append($0) }
            bytes.append(string: n)
        }
    }

    /// Appends name `i` (< count) to `buf`; returns its length.
    @inline(__always) func append(_ i: Int, to buf: inout ByteBuffer) -> Int {
        let v = spans.base!.loadUnaligned(fromByteOffset: i &* 8, as: SIMD2<Int32>.self)
        let n = Int(v[1])
        if n > 0 { buf.append(bytes.base! + Int(v[0]), n) }
        return n
    }

    mutating func release() { bytes.release(); spans.release(); count = 0 }
}

extension SIMD16 where Scalar == Int32 {
    /// Sets the (offset, length) pair at `i`, `i + 1` with two stores (a SIMD element assignment
    /// moves the whole vector through the stack).
    @inline(__always) mutating func set(_ i: Int, _ offset: Int, _ length: Int) {
        withUnsafeMutableBytes(of: &self) {
            $0.storeBytes(of: Int32(truncatingIfNeeded: offset), toByteOffset: i &* 4, as: Int32.self)
            $0.storeBytes(of: Int32(truncatingIfNeeded: length), toByteOffset: i &* 4 &+ 4, as: Int32.self)
        }
    }
}

/// A listener's access log, called by the exchange like a filter's phases (`captureForLog`, then
/// `finish`): at `requestHeaders` it copies the request fields its line needs into a pooled buffer
/// of the exchange; when the exchange is over (`log`) it appends one record (numbers and those
/// bytes) to the worker's ring of the log's file. The writer thread formats and writes it
/// (`AccessLogWriter`). Nothing here formats, waits or allocates per request once warm.
final class AccessLogFilter {
    let sink: UnsafeMutablePointer<remora_log_ring>
    let writer: AccessLogWriter
    /// The listener's format in its sink.
    let format: UInt16
    /// The listener's stats (`access_log_dropped`).
    let stats: StatBlock<ListenerStat>
    /// Route names by index of the listener's table, as bytes.
    var routeNames = NameTable()
    /// The record being built for a refused request or a TCP connection (reused); an exchange's
    /// record is built in its own pooled buffer (`observe.logHead`).
    var record = ByteBuffer(capacity: 1024)
    /// Names of the last cluster seen (its identity: compared, never dereferenced): its own, then
    /// its endpoints' (SocketAddress.description formats with printf: done once per cluster
    /// runtime, not per request).
    var namesOf: UnsafeMutableRawPointer?
    var clusterNames = NameTable()
    /// The wall clock minus the monotonic clock (µs), and when (monotonic) it was taken: a start
    /// time is the exchange's monotonic start plus this, with no clock read per request. Taken
    /// again after a second, so a step of the wall clock shows within one.
    var wallOffset: UInt64 = 0
    var wallOffsetAt: UInt64 = 0

    init(ring: UnsafeMutablePointer<remora_log_ring>, writer: AccessLogWriter, format: UInt16,
         stats: StatBlock<ListenerStat>, routes: RouteTable) {
        sink = ring; self.writer = writer; self.format = format; self.stats = stats
        routeNames.reset(routes.info.map(\.name))
    }

    deinit {
        record.release()
        routeNames.release()
        clusterNames.release()
    }

    func requestHeaders(_ e: Exchange, _ start: RequestStart) {
        // The record is built in a pooled buffer of the exchange: room for its head, then the
        // strings; `log` fills the head in and hands the whole buffer to the ring.
        let base = AccessLogRecord.size
        var head = e.pool.take()
        head.reserve(base + 512)
        head.count = base
        var spans = AccessLogFilter.capture(start.view, into: &head, base: base)
        if e.observe.hasTrace && e.observe.generatedID {   // the id the tracing filter generated
            spans.set(10, head.count - base, 36)
            head.reserve(head.count + 36)
            writeUUID(e.observe.requestID.0, e.observe.requestID.1,
                      into: UnsafeMutableRawBufferPointer(start: head.base! + head.count, count: 36))
            head.count += 36
        }
        e.observe.downstreamProtocol = start.fromHTTP2 ? 2 : (start.http10 ? 1 : 0)
        e.observe.logPeer = SIMD2(repeating: -1)
        // The client's TLS identity (mutual TLS): only connections with a TLS layer have one.
        if !start.plaintext, let p = e.withDownstream(nil, { $0.transportConnection?.peerPrincipal }) {
            e.observe.logPeer = SIMD2(Int32(head.count - base), Int32(p.utf8.count))
            head.append(string: p)
        }
        e.observe.logHead = head
        e.observe.logSpans = spans
    }

    func log(_ e: Exchange) {
        var r = AccessLogRecord()
        r.format = format
        r.proto = e.observe.downstreamProtocol
        r.durationMicros = e.observe.durationMicros
        let now = e.observe.startMicros &+ r.durationMicros   // monotonic, when observeFinish ran
        if now &- wallOffsetAt > 1_000_000 {   // (true at first: wallOffsetAt is 0)
            wallOffset = realtimeMicros() &- monotonicMicros()
            wallOffsetAt = now
        }
        r.startMicros = e.observe.startMicros &+ wallOffset
        r.bytesReceived = e.requestBodyBytes
        r.bytesSent = e.observe.bytesSent
        r.status = Int32(truncatingIfNeeded: e.observe.status)
        r.grpcStatus = Int32(truncatingIfNeeded: e.responseGRPCStatus)
        r.flags = e.observe.flags.rawValue
        r.retries = Int32(truncatingIfNeeded: max(0, e.observe.attempts - 1))
        if e.observe.attempts > 0 && e.observe.status != 0 && e.clusterStats != nil {
            // the attempt's time is on the loop's millisecond clock: never more than the whole
            r.upstreamMillis = Int64(truncatingIfNeeded: min(e.observe.upstreamMillis, r.durationMicros / 1000))
        }
        r.spans = e.observe.logSpans
        r.peerSpan = e.observe.logPeer
        if e.observe.logHead.count < AccessLogRecord.size {   // no request head was captured
            e.observe.logHead.reserve(AccessLogRecord.size + 256)
            e.observe.logHead.count = AccessLogRecord.size
            r.spans = SIMD16(repeating: -1)
            r.peerSpan = SIMD2(repeating: -1)
        }
        if let c = e.clusterRef {
            c._withUnsafeGuaranteedRef { appendCluster(&r, $0, endpoint: e.observe.endpoint, to: &e.observe.logHead) }
        } else if let c = e.observe.refusedBy {
            appendCluster(&r, c, endpoint: e.observe.endpoint, to: &e.observe.logHead)
        }
        let route = e.observe.route
        if route >= 0 && route < routeNames.count {
            let at = e.observe.logHead.count - AccessLogRecord.size
            r.routeSpan = SIMD2(Int32(at), Int32(routeNames.append(route, to: &e.observe.logHead)))
        }
        push(&r, &e.observe.logHead)
        e.pool.give(&e.observe.logHead)
    }

    /// Appends the request fields a line keeps (method, target, authority, the first
    /// x-forwarded-for, user-agent and x-request-id) to `head`: their (offset, length) from `base`
    /// in `Observation.logSpans` order, -1 = absent.
    @inline(__always)
    static func capture(_ r: RequestView, into head: inout ByteBuffer, base: Int) -> SIMD16<Int32> {
        var spans = SIMD16<Int32>(repeating: -1)
        spans.set(0, head.count - base, r.method.count); head.append(r.method)
        spans.set(2, head.count - base, r.target.count); head.append(r.target)
        spans.set(4, head.count - base, r.authority.count); head.append(r.authority)
        for h in r.headers {
            let slot: Int
            switch h.name.count {
            case 15 where h.name.equalsLowercase("x-forwarded-for"): slot = 6
            case 10 where h.name.equalsLowercase("user-agent"): slot = 8
            case 12 where h.name.equalsLowercase("x-request-id"): slot = 10
            default: continue
            }
            if spans[slot] >= 0 { continue }   // the first one
            spans.set(slot, head.count - base, h.value.count); head.append(h.value)
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
        push(&r, &record)
    }

    /// The cluster's name and the endpoint's `host:port` (cached per cluster runtime), appended to
    /// the record being built in `buf`.
    @inline(__always) func appendCluster(_ r: inout AccessLogRecord, _ c: Cluster, endpoint: Int, to buf: inout ByteBuffer) {
        let id = Unmanaged.passUnretained(c).toOpaque()
        if namesOf != id {
            namesOf = id
            clusterNames.reset([c.config.name] + c.endpoints.map(\.address.description))
        }
        let base = AccessLogRecord.size
        let at = buf.count - base
        r.spans.set(14, at, clusterNames.append(0, to: &buf))
        if endpoint >= 0 && endpoint &+ 1 < clusterNames.count {
            let at = buf.count - base
            r.spans.set(12, at, clusterNames.append(endpoint &+ 1, to: &buf))
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
        if let c = s.cluster { appendCluster(&r, c, endpoint: s.endpointIndex, to: &record) }
        push(&r, &record)
    }

    /// Appends the record (head `r`, strings already in `buf` after room for the head) to the
    /// ring; dropped and counted when the ring is full (the writer is behind). Wakes the writer
    /// once the ring holds `flushAt` bytes.
    @inline(__always) func push(_ r: inout AccessLogRecord, _ buf: inout ByteBuffer) {
        r.length = UInt32(buf.count)
        withUnsafeBytes(of: &r) { buf.base!.copyMemory(from: $0.baseAddress!, byteCount: AccessLogRecord.size) }
        let ring = sink
        if remora_log_ring_push(ring, buf.base!.assumingMemoryBound(to: UInt8.self), UInt64(buf.count)) == 0 {
            stats.inc(.access_log_dropped)
        }
        if remora_log_ring_used(ring) >= AccessLogWriter.flushAt && remora_flag_exchange(&ring.pointee.signalled, 1) == 0 {
            writer.wake()
        }
    }
}

/// Formats records into lines, on the writer thread: one per sink. A line is written through a
/// raw cursor into space reserved once for its longest possible form, 8 bytes at a time: literals
/// and strings are copied in words (a word may run past the end, into the reserved slack, and is
/// overwritten by what follows), and a JSON string is checked for bytes that need escaping in the
/// same words.
struct AccessLogFormatter {
    /// One step of a line: the literal bytes at `literal ..< literal + literalCount` of the
    /// compiled format's literals, then a field (nil: none).
    struct Op {
        var literal: Int32
        var literalCount: Int32
        var field: AccessLogField?
    }

    final class Compiled {
        let ops: [Op]
        let json: Bool
        /// Every literal of the format, end to end, then 16 bytes of padding (word copies read past).
        let literals: UnsafeMutableRawPointer
        /// The most a line takes besides its strings: the literals, the widest number, time, flags
        /// and quotes of each field, and the slack word copies write into.
        let bound: Int

        init(_ pieces: [(String, AccessLogField?)], json: Bool) {
            let total = pieces.reduce(0) { $0 + $1.0.utf8.count }
            let lits = UnsafeMutableRawPointer.allocate(byteCount: total + 16, alignment: 8)
            lits.initializeMemory(as: UInt8.self, repeating: 0, count: total + 16)
            literals = lits
            var ops: [Op] = [], at = 0
            for (text, field) in pieces {
                let bytes = Array(text.utf8)
                bytes.withUnsafeBytes { (lits + at).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                ops.append(Op(literal: Int32(at), literalCount: Int32(bytes.count), field: field))
                at += bytes.count
            }
            self.ops = ops
            self.json = json
            // per field: quotes (2) and the widest fixed value (a number: 20 digits, the time: 24,
            // every flag's letters), or `null`; strings add 6 bytes each of theirs (`\u00XX`);
            // 16 bytes of slack for the last word copies.
            let flags = ResponseFlags(rawValue: .max).letters.utf8.count
            bound = total + 16 + ops.reduce(0) { $0 + 2 + ($1.field == .responseFlags ? flags : 24) }
        }

        deinit { literals.deallocate() }
    }

    static func compile(_ format: AccessLogFormat) -> Compiled {
        switch format {
        case .json:
            var pieces = AccessLogField.allCases.enumerated().map { i, f in
                ((i == 0 ? "{\"" : ",\"") + f.jsonKey + "\":", Optional(f))
            }
            pieces.append(("}\n", nil))
            return Compiled(pieces, json: true)
        case .text(let parts):
            var pieces: [(String, AccessLogField?)] = [], lit = ""
            for p in parts {
                switch p {
                case .literal(let t): lit += t
                case .field(let f): pieces.append((lit, f)); lit = ""
                }
            }
            pieces.append((lit + "\n", nil))
            return Compiled(pieces, json: false)
        }
    }

    var formats: [Compiled] = []
    /// `2026-12-07T04:45:00.` of the last second formatted (8 bytes of room after it for word
    /// copies), and that second.
    var timeSecond: UInt64 = .max
    var timePrefix = ByteBuffer(capacity: 64)
    /// Letters of the last flags formatted (flags repeat), with room after them for word copies.
    var flagsValue: UInt32 = .max
    var flagsText = ByteBuffer(capacity: 64)

    /// Appends the line of record `r` (its strings in `strings`, readable for 8 bytes past their
    /// end) to `out`.
    mutating func format(_ r: AccessLogRecord, strings: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        guard Int(r.format) < formats.count else { return }
        let c = formats[Int(r.format)]
        out.reserve(out.count + c.bound + strings.count * 6)
        let start = out.base! + out.count
        if c.json {
            out.count += formatJSON(c, r, strings, at: start) - start
            return
        }
        var p = start
        for op in c.ops {
            p = Self.literal(op, c, at: p)
            guard let f = op.field else { continue }
            if let q = value(f, r, strings, at: p) {
                p = q
            } else {
                p.storeBytes(of: 0x2D, as: UInt8.self)   // `-`
                p += 1
            }
        }
        out.count += p - start
    }

    /// The JSON line of `r` at `p` (`c` is `compile(.json)`: its ops are `AccessLogField.allCases`
    /// in order, then the closing brace); returns the end. The same bytes as the ops interpreted one
    /// by one (`value`), in straight-line code: no dispatch per field.
    @inline(__always)
    mutating func formatJSON(_ c: Compiled, _ r: AccessLogRecord, _ s: UnsafeRawBufferPointer,
                             at start: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        var p = start
        c.ops.withUnsafeBufferPointer { ops in
            /// Literal `i` (the key of field `i`, with its separator).
            @inline(__always) func key(_ i: Int) { p = Self.literal(ops[i], c, at: p) }
            /// A string field: quoted and escaped, or `null`.
            @inline(__always) func string(_ i: Int, _ span: (Int32, Int32)) {
                key(i)
                if let q = self.string(span.0, span.1, s, true, p + 1) {
                    p.storeBytes(of: 0x22, as: UInt8.self)
                    q.storeBytes(of: 0x22, as: UInt8.self)
                    p = q + 1
                } else {
                    p.storeBytes(of: 0x6C6C_756E, as: UInt32.self)
                    p += 4
                }
            }
            /// A number field, or `null` when absent.
            @inline(__always) func number(_ i: Int, _ v: UInt64, _ present: Bool = true) {
                key(i)
                if present {
                    p = Self.decimal(v, at: p)
                } else {
                    p.storeBytes(of: 0x6C6C_756E, as: UInt32.self)
                    p += 4
                }
            }
            // AccessLogField.allCases order
            key(0)
            p.storeBytes(of: 0x22, as: UInt8.self)
            p = time(r.startMicros, at: p + 1)
            p.storeBytes(of: 0x22, as: UInt8.self)
            p += 1
            string(1, (r.spans[0], r.spans[1]))
            string(2, (r.spans[2], r.spans[3]))
            key(3)
            p.storeBytes(of: 0x22, as: UInt8.self)
            p = value(.protocol, r, s, at: p + 1)!
            p.storeBytes(of: 0x22, as: UInt8.self)
            p += 1
            number(4, UInt64(truncatingIfNeeded: r.status), r.status >= 0)
            number(5, UInt64(truncatingIfNeeded: r.grpcStatus), r.grpcStatus >= 0)
            key(6)
            p.storeBytes(of: 0x22, as: UInt8.self)
            p = value(.responseFlags, r, s, at: p + 1)!
            p.storeBytes(of: 0x22, as: UInt8.self)
            p += 1
            number(7, r.bytesReceived)
            number(8, r.bytesSent)
            number(9, r.durationMicros / 1000)
            number(10, UInt64(truncatingIfNeeded: r.upstreamMillis), r.upstreamMillis >= 0)
            string(11, (r.spans[12], r.spans[13]))
            string(12, (r.routeSpan[0], r.routeSpan[1]))
            string(13, (r.spans[14], r.spans[15]))
            string(14, (r.spans[10], r.spans[11]))
            string(15, (r.spans[6], r.spans[7]))
            string(16, (r.spans[8], r.spans[9]))
            string(17, (r.spans[4], r.spans[5]))
            number(18, UInt64(truncatingIfNeeded: r.retries), r.retries >= 0)
            string(19, (r.peerSpan[0], r.peerSpan[1]))
            key(20)   // }\n
        }
        return p
    }

    /// Copies `op`'s literal to `p`: two words unconditionally (most literals are shorter), then the
    /// rest; returns its end.
    @inline(__always)
    static func literal(_ op: Op, _ c: Compiled, at p: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        let lit = c.literals + Int(op.literal), n = Int(op.literalCount)
        p.storeBytes(of: lit.loadUnaligned(as: UInt64.self), as: UInt64.self)
        p.storeBytes(of: lit.loadUnaligned(fromByteOffset: 8, as: UInt64.self), toByteOffset: 8, as: UInt64.self)
        if n > 16 { copy(to: p + 16, from: lit + 16, n &- 16) }
        return p + n
    }

    /// Writes field `f` of `r` at `p` as a text format does (strings as they are); the end, or nil
    /// when the record has none.
    @inline(__always)
    mutating func value(_ f: AccessLogField, _ r: AccessLogRecord, _ s: UnsafeRawBufferPointer,
                        at p: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer? {
        switch f {
        case .startTime: return time(r.startMicros, at: p)
        case .method: return string(r.spans[0], r.spans[1], s, false, p)
        case .path: return string(r.spans[2], r.spans[3], s, false, p)
        case .authority: return string(r.spans[4], r.spans[5], s, false, p)
        case .xForwardedFor: return string(r.spans[6], r.spans[7], s, false, p)
        case .userAgent: return string(r.spans[8], r.spans[9], s, false, p)
        case .requestID: return string(r.spans[10], r.spans[11], s, false, p)
        case .upstreamHost: return string(r.spans[12], r.spans[13], s, false, p)
        case .upstreamCluster: return string(r.spans[14], r.spans[15], s, false, p)
        case .routeName: return string(r.routeSpan[0], r.routeSpan[1], s, false, p)
        case .peerIdentity: return string(r.peerSpan[0], r.peerSpan[1], s, false, p)
        case .protocol:
            // "HTTP/1.1", "HTTP/1.0", "HTTP/2", "TCP" as one little-endian word each
            switch r.proto {
            case 3: p.storeBytes(of: 0x50_4354, as: UInt64.self); return p + 3
            case 2: p.storeBytes(of: 0x322F_5054_5448, as: UInt64.self); return p + 6
            case 1: p.storeBytes(of: 0x302E_312F_5054_5448, as: UInt64.self); return p + 8
            default: p.storeBytes(of: 0x312E_312F_5054_5448, as: UInt64.self); return p + 8
            }
        case .responseCode: return r.status >= 0 ? Self.decimal(UInt64(r.status), at: p) : nil
        case .grpcStatus: return r.grpcStatus >= 0 ? Self.decimal(UInt64(r.grpcStatus), at: p) : nil
        case .responseFlags:
            if r.flags == 0 { p.storeBytes(of: 0x2D, as: UInt8.self); return p + 1 }
            if r.flags != flagsValue {
                flagsValue = r.flags
                flagsText.clear()
                flagsText.append(string: ResponseFlags(rawValue: r.flags).letters)
                flagsText.reserve(flagsText.count + 8)
            }
            Self.copy(to: p, from: flagsText.base!, flagsText.count)
            return p + flagsText.count
        case .bytesReceived: return Self.decimal(r.bytesReceived, at: p)
        case .bytesSent: return Self.decimal(r.bytesSent, at: p)
        case .duration: return Self.decimal(r.durationMicros / 1000, at: p)
        case .upstreamServiceTime: return r.upstreamMillis >= 0 ? Self.decimal(UInt64(r.upstreamMillis), at: p) : nil
        case .retryCount: return r.retries >= 0 ? Self.decimal(UInt64(r.retries), at: p) : nil
        }
    }

    /// Copies `n` bytes in 8-byte words: reads and writes up to 7 bytes past both ends.
    @inline(__always)
    static func copy(to d: UnsafeMutableRawPointer, from s: UnsafeRawPointer, _ n: Int) {
        var i = 0
        while i < n {
            d.storeBytes(of: s.loadUnaligned(fromByteOffset: i, as: UInt64.self), toByteOffset: i, as: UInt64.self)
            i &+= 8
        }
    }

    /// Writes `v` in decimal at `p`; returns the end.
    @inline(__always)
    static func decimal(_ v: UInt64, at p: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        var n = 1, x = v
        while x >= 10 { x /= 10; n &+= 1 }
        var i = n, y = v
        repeat {
            i &-= 1
            p.storeBytes(of: UInt8(truncatingIfNeeded: 48 &+ y % 10), toByteOffset: i, as: UInt8.self)
            y /= 10
        } while i > 0
        return p + n
    }

    /// Writes the string at (`offset`, `length`) of `s` at `d`: as it is (text), or escaped for a
    /// JSON string; nil when absent. A word at a time while no byte needs escaping (a control
    /// byte, '"', '\\', DEL): the common case.
    @inline(__always)
    func string(_ offset: Int32, _ length: Int32, _ s: UnsafeRawBufferPointer, _ json: Bool,
                _ d: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer? {
        let off = Int(offset), len = Int(length)
        guard off >= 0 && len >= 0 && off + len <= s.count, let base = s.baseAddress else { return nil }
        let src = base + off
        if !json { Self.copy(to: d, from: src, len); return d + len }
        var i = 0, p = d
        while i < len {
            let x = src.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            p.storeBytes(of: x, as: UInt64.self)
            var m = Self.escapes(x)
            let rest = len &- i
            if rest < 8 { m &= (1 &<< UInt64(rest &* 8)) &- 1 }
            if m == 0 {
                let k = Swift.min(8, rest)
                p += k; i &+= k
                continue
            }
            let k = m.trailingZeroBitCount / 8   // the first byte to escape; the ones before are written
            p += k
            let b = src.load(fromByteOffset: i &+ k, as: UInt8.self)
            switch b {
            case 0x22: p.storeBytes(of: 0x225C, as: UInt16.self); p += 2
            case 0x5C: p.storeBytes(of: 0x5C5C, as: UInt16.self); p += 2
            default:
                p.storeBytes(of: 0x3030_755C, as: UInt32.self)   // \u00
                p.storeBytes(of: AccessLogFormatter.hex(b >> 4), toByteOffset: 4, as: UInt8.self)
                p.storeBytes(of: AccessLogFormatter.hex(b & 15), toByteOffset: 5, as: UInt8.self)
                p += 6
            }
            i &+= k &+ 1
        }
        return p
    }

    /// 0x80 in each byte of `x` that JSON must escape (below 0x20, '"', '\\', DEL).
    @inline(__always) static func escapes(_ x: UInt64) -> UInt64 {
        let lo: UInt64 = 0x0101_0101_0101_0101, hi: UInt64 = 0x8080_8080_8080_8080
        @inline(__always) func zero(_ y: UInt64) -> UInt64 { (y &- lo) & ~y & hi }
        // a byte of 0x20...0x7F with its top three bits cleared is zero only below 0x20; bytes
        // >= 0x80 (UTF-8) never match: `& ~y` keeps their high bit out
        return (zero(x & 0xE0E0_E0E0_E0E0_E0E0) | zero(x ^ 0x2222_2222_2222_2222) | zero(x ^ 0x5C5C_5C5C_5C5C_5C5C)
            | zero(x ^ 0x7F7F_7F7F_7F7F_7F7F))
    }

    @inline(__always) static func hex(_ d: UInt8) -> UInt8 { d < 10 ? 48 + d : 87 + d }

    /// `2026-12-07T04:45:00.123Z` (Envoy's START_TIME) at `p`; returns the end.
    mutating func time(_ us: UInt64, at p: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        let sec = us / 1_000_000
        if sec != timeSecond {
            timeSecond = sec
            var t = time_t(sec)
            var tm = Glibc.tm()
            gmtime_r(&t, &tm)
            func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
            timePrefix.clear()
            timePrefix.append(string: "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)).")
            timePrefix.reserve(timePrefix.count + 8)
        }
        Self.copy(to: p, from: timePrefix.base!, timePrefix.count)
        let q = p + timePrefix.count
        let ms = us / 1000 % 1000
        q.storeBytes(of: UInt8(truncatingIfNeeded: 48 + ms / 100), as: UInt8.self)
        q.storeBytes(of: UInt8(truncatingIfNeeded: 48 + ms / 10 % 10), toByteOffset: 1, as: UInt8.self)
        q.storeBytes(of: UInt8(truncatingIfNeeded: 48 + ms % 10), toByteOffset: 2, as: UInt8.self)
        q.storeBytes(of: 0x5A, toByteOffset: 3, as: UInt8.self)
        return q + 4
    }
}
