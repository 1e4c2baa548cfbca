import CRemoraSupport
import Glibc
import RemoraCore
import RemoraHTTP
import RemoraRouting

/// A listener's access log, as an HTTP filter (`log` phase): at `requestHeaders` it copies the
/// request fields its line needs into a pooled buffer of the exchange; when the exchange is over
/// it formats one line (JSON, Envoy's default text, or a format string) and appends it to the
/// worker's ring of the log's file. The writer thread writes it (`AccessLogWriter`). Nothing here
/// waits or allocates per request once warm.
final class AccessLogFilter: HTTPFilter {
    let sink: UnsafeMutablePointer<remora_log_ring>
    let writer: AccessLogWriter
    /// The format compiled once: literal bytes (JSON keys and punctuation included), then a field.
    let ops: [Op]
    let json: Bool
    /// The listener's stats (`access_log_dropped`).
    let stats: StatBlock<ListenerStat>
    /// Route names by index of the listener's table, as bytes.
    let routeNames: [[UInt8]]
    /// The line being formatted (reused).
    var line = ByteBuffer(capacity: 1024)
    /// Endpoint names of the last cluster seen (SocketAddress.description formats with printf).
    unowned(unsafe) var hostsOf: ClusterRuntime?
    var hostNames: [[UInt8]] = []
    /// `2026-12-07T04:45:00` of the last second formatted, and that second.
    var timeSecond: UInt64 = .max
    var timePrefix = ByteBuffer(capacity: 32)

    /// One step of a line: literal bytes, then a field (nil: none). `quoted`: a JSON string value
    /// (quotes around it, `null` when absent); JSON numbers are written bare or `null`.
    struct Op {
        var literal: UnsafeRawBufferPointer
        var field: AccessLogField?
        var quoted: Bool
    }

    init(ring: UnsafeMutablePointer<remora_log_ring>, writer: AccessLogWriter, format: AccessLogFormat,
         stats: StatBlock<ListenerStat>, routes: RouteTable) {
        sink = ring; self.writer = writer; self.stats = stats
        routeNames = routes.info.map { Array($0.name.utf8) }
        func bytes(_ s: String) -> UnsafeRawBufferPointer {
            let u = Array(s.utf8)
            let p = UnsafeMutableRawBufferPointer.allocate(byteCount: max(u.count, 1), alignment: 1)
            p.copyBytes(from: u)
            return UnsafeRawBufferPointer(rebasing: p[0..<u.count])
        }
        var ops: [Op] = []
        switch format {
        case .json:
            json = true
            for (i, f) in AccessLogField.allCases.enumerated() {
                ops.append(Op(literal: bytes((i == 0 ? "{\"" : ",\"") + f.jsonKey + "\":"), field: f, quoted: !f.isNumber))
            }
            ops.append(Op(literal: bytes("}\n"), field: nil, quoted: false))
        case .text(let pieces):
            json = false
            var lit = ""
            for p in pieces {
                switch p {
                case .literal(let t): lit += t
                case .field(let f): ops.append(Op(literal: bytes(lit), field: f, quoted: false)); lit = ""
                }
            }
            ops.append(Op(literal: bytes(lit + "\n"), field: nil, quoted: false))
        }
        self.ops = ops
    }

    deinit {
        for op in ops { UnsafeMutableRawPointer(mutating: op.literal.baseAddress)?.deallocate() }
        line.release()
        timePrefix.release()
    }

    func requestHeaders(_ e: Exchange, _ r: RequestView) -> FilterVerdict {
        var head = e.pool.take()
        var spans = SIMD16<Int32>(repeating: -1)
        spans[0] = 0; spans[1] = Int32(r.method.count); head.append(r.method)
        spans[2] = Int32(head.count); spans[3] = Int32(r.target.count); head.append(r.target)
        spans[4] = Int32(head.count); spans[5] = Int32(r.authority.count); head.append(r.authority)
        for h in r.headers {
            let slot: Int
            switch h.name.count {
            case 15 where h.name.equalsLowercase("x-forwarded-for"): slot = 6
            case 10 where h.name.equalsLowercase("user-agent"): slot = 8
            case 12 where h.name.equalsLowercase("x-request-id"): slot = 10
            default: continue
            }
            if spans[slot] >= 0 { continue }   // the first one
            spans[slot] = Int32(head.count); spans[slot + 1] = Int32(h.value.count); head.append(h.value)
        }
        e.observe.logHead = head
        e.observe.logSpans = spans
        e.observe.downstreamProtocol = e.downstream is H2ServerStream ? 2 : ((e.downstream as? HTTPSession)?.isHTTP10 == true ? 1 : 0)
        return .next
    }

    func log(_ e: Exchange) {
        line.clear()
        for op in ops {
            line.append(op.literal)
            guard let f = op.field else { continue }
            if json {
                if op.quoted {
                    let mark = line.count
                    line.append(byte: 0x22)
                    if writeValue(f, e) { line.append(byte: 0x22) } else { line.count = mark; line.append("null") }
                } else if !writeValue(f, e) {
                    line.append("null")
                }
            } else if !writeValue(f, e) {
                line.append(byte: 0x2D)   // Envoy writes "-" for what is absent
            }
        }
        e.pool.give(&e.observe.logHead)
        push()
    }

    /// A TCP listener's line, one per connection: start time, duration, bytes both ways, the
    /// upstream host and cluster, flags (`UF` connect failure, `UC`/`DC` a side failed, `SI` idle
    /// timeout); the HTTP fields are absent ("-", null).
    func logConnection(_ s: TCPProxySession) {
        line.clear()
        let duration = monotonicMicros() &- s.startMicros
        for op in ops {
            line.append(op.literal)
            guard let f = op.field else { continue }
            let mark = line.count
            if op.quoted { line.append(byte: 0x22) }
            if writeConnectionValue(f, s, duration) {
                if op.quoted { line.append(byte: 0x22) }
            } else {
                line.count = mark
                if json { line.append("null") } else { line.append(byte: 0x2D) }
            }
        }
        push()
    }

    func writeConnectionValue(_ f: AccessLogField, _ s: TCPProxySession, _ duration: UInt64) -> Bool {
        switch f {
        case .startTime: writeTime(realtimeMicros() &- duration)
        case .protocol: line.append("TCP")
        case .responseFlags: writeFlags(s.flags)
        case .bytesReceived: line.appendDecimal(s.bytesIn)
        case .bytesSent: line.appendDecimal(s.bytesOut)
        case .duration: line.appendDecimal(duration / 1000)
        case .upstreamHost:
            guard s.endpoint >= 0 else { return false }
            return writeHost(s.cluster, s.endpoint)
        case .upstreamCluster: line.append(string: s.cluster.config.name)
        default: return false
        }
        return true
    }

    /// Appends the line to the ring; dropped and counted when the ring is full (the writer is behind).
    @inline(__always) func push() {
        let ring = sink
        let ok = remora_log_ring_push(ring, line.base!.assumingMemoryBound(to: UInt8.self), UInt64(line.count)) == 1
        if !ok { stats.inc(.access_log_dropped) }
        if remora_log_ring_used(ring) >= AccessLogWriter.flushAt && remora_atomic_exchange(&ring.pointee.signalled, 1) == 0 {
            writer.wake()
        }
    }

    // MARK: fields

    /// Writes `f`'s value (JSON-escaped when the format is JSON); false when it has none.
    func writeValue(_ f: AccessLogField, _ e: Exchange) -> Bool {
        switch f {
        case .startTime: writeTime(realtimeMicros() &- e.observe.durationMicros)
        case .method: return writeCaptured(e, 0)
        case .path: return writeCaptured(e, 2)
        case .authority: return writeCaptured(e, 4)
        case .xForwardedFor: return writeCaptured(e, 6)
        case .userAgent: return writeCaptured(e, 8)
        case .requestID: return writeCaptured(e, 10)
        case .protocol:
            switch e.observe.downstreamProtocol {
            case 2: line.append("HTTP/2")
            case 1: line.append("HTTP/1.0")
            default: line.append("HTTP/1.1")
            }
        case .responseCode: line.appendDecimal(UInt64(e.observe.status))
        case .grpcStatus:
            let g = e.responseGRPCStatus
            guard g >= 0 else { return false }
            line.appendDecimal(UInt64(g))
        case .responseFlags: writeFlags(e.observe.flags)
        case .bytesReceived: line.appendDecimal(e.requestBodyBytes)
        case .bytesSent: line.appendDecimal(e.observe.bytesSent)
        case .duration: line.appendDecimal(e.observe.durationMicros / 1000)
        case .upstreamServiceTime:
            guard e.observe.attempts > 0, e.observe.status != 0, e.clusterStats != nil else { return false }
            line.appendDecimal(e.observe.upstreamMillis)
        case .upstreamHost:
            guard e.observe.endpoint >= 0, let c = e.cluster else { return false }
            return writeHost(c, e.observe.endpoint)
        case .upstreamCluster:
            guard let c = e.cluster else { return false }
            line.append(string: c.config.name)
        case .routeName:
            let r = e.observe.route
            guard r >= 0 && r < routeNames.count else { return false }
            routeNames[r].withUnsafeBytes { line.append($0) }
        case .retryCount:
            line.appendDecimal(UInt64(max(0, e.observe.attempts - 1)))
        case .peerIdentity:
            return false   // no TLS yet
        }
        return true
    }

    func writeFlags(_ flags: ResponseFlags) {
        if flags.isEmpty { line.append(byte: 0x2D); return }
        var first = true
        for (flag, letters) in ResponseFlags.all where flags.contains(flag) {
            if !first { line.append(byte: 0x2C) }
            first = false
            line.append(string: letters)
        }
    }

    /// The endpoint's `host:port`, formatted once per cluster runtime.
    func writeHost(_ c: ClusterRuntime, _ endpoint: Int) -> Bool {
        if hostsOf !== c {
            hostsOf = c
            hostNames = c.endpoints.map { Array($0.description.utf8) }
        }
        guard endpoint < hostNames.count else { return false }
        hostNames[endpoint].withUnsafeBytes { line.append($0) }
        return true
    }

    /// A captured request field (slot 2 × `LogField`), escaped for JSON when the format is JSON.
    @inline(__always) func writeCaptured(_ e: Exchange, _ slot: Int) -> Bool {
        let off = e.observe.logSpans[slot]
        guard off >= 0, let base = e.observe.logHead.base else { return false }
        let v = UnsafeRawBufferPointer(start: base + Int(off), count: Int(e.observe.logSpans[slot + 1]))
        if !json || !v.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C || $0 == 0x7F }) {
            line.append(v)
            return true
        }
        for b in v {
            switch b {
            case 0x22: line.append("\\\"")
            case 0x5C: line.append("\\\\")
            case 0..<0x20, 0x7F:
                line.append("\\u00")
                line.append(byte: AccessLogFilter.hex[Int(b >> 4)])
                line.append(byte: AccessLogFilter.hex[Int(b & 15)])
            default: line.append(byte: b)
            }
        }
        return true
    }

    static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// `2026-12-07T04:45:00.123Z` (Envoy's START_TIME); the part down to the second is formatted
    /// once per second.
    func writeTime(_ us: UInt64) {
        let sec = us / 1_000_000
        if sec != timeSecond {
            timeSecond = sec
            timePrefix.clear()
            var t = time_t(sec)
            var tm = Glibc.tm()
            gmtime_r(&t, &tm)
            func two(_ v: Int32) { timePrefix.append(byte: UInt8(48 + v / 10)); timePrefix.append(byte: UInt8(48 + v % 10)) }
            timePrefix.appendDecimal(UInt64(tm.tm_year + 1900))
            timePrefix.append(byte: 0x2D); two(tm.tm_mon + 1)
            timePrefix.append(byte: 0x2D); two(tm.tm_mday)
            timePrefix.append(byte: 0x54); two(tm.tm_hour)
            timePrefix.append(byte: 0x3A); two(tm.tm_min)
            timePrefix.append(byte: 0x3A); two(tm.tm_sec)
            timePrefix.append(byte: 0x2E)
        }
        line.append(timePrefix.bytes)
        let ms = us / 1000 % 1000
        line.append(byte: UInt8(truncatingIfNeeded: 48 + ms / 100))
        line.append(byte: UInt8(truncatingIfNeeded: 48 + ms / 10 % 10))
        line.append(byte: UInt8(truncatingIfNeeded: 48 + ms % 10))
        line.append(byte: 0x5A)
    }
}
