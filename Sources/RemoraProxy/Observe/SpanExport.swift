import CRemoraSupport
import Glibc
import RemoraCore
import RemoraIO
import RemoraRouting

/// The fixed part of one exported span, as a worker hands it to the exporter thread: numbers, then
/// where each string is in the bytes that follow (as `AccessLogRecord`). The worker copies; the
/// exporter thread encodes OTLP JSON and sends it, so the request path never formats or waits.
struct SpanRecord {
    /// The whole record (this head, then the strings), bytes.
    var length: UInt32 = 0
    /// The status the client got (0: none).
    var status: Int32 = 0
    var grpcStatus: Int32 = -1
    var flags: UInt32 = 0
    var traceHi: UInt64 = 0
    var traceLo: UInt64 = 0
    var span: UInt64 = 0
    var parent: UInt64 = 0
    /// When the request head arrived, wall clock µs; and how long the exchange lasted.
    var startMicros: UInt64 = 0
    var durationMicros: UInt64 = 0
    /// (offset, length) of each string after the head, by `Slot`; offset -1 = absent.
    var spans = SIMD16<Int32>(repeating: -1)

    enum Slot: Int { case method, path, authority, route, cluster, upstreamHost, listener }

    static let size = MemoryLayout<SpanRecord>.stride
}

/// One worker's side of an exporter for one listener (made with the listener's filters): appends a
/// record per sampled span to the worker's ring of the exporter; a full ring drops the span and
/// counts it (`listener.<name>.tracing_spans_dropped`): the worker never waits.
final class SpanRecorder {
    let ring: UnsafeMutablePointer<remora_log_ring>
    let exporter: SpanExporter
    let stats: StatBlock<ListenerStat>
    let listenerName: [UInt8]
    let routeNames: [[UInt8]]
    var record = ByteBuffer(capacity: 512)
    unowned(unsafe) var namesOf: Cluster?
    var clusterName: [UInt8] = []
    var hostNames: [[UInt8]] = []

    init(ring: UnsafeMutablePointer<remora_log_ring>, exporter: SpanExporter, stats: StatBlock<ListenerStat>,
         listener: String, routes: RouteTable) {
        self.ring = ring; self.exporter = exporter; self.stats = stats
        listenerName = Array(listener.utf8)
        routeNames = routes.info.map { Array($0.name.utf8) }
    }

    deinit { record.release() }

    /// The request fields a span keeps, at `requestHeaders` of a sampled request: into a pooled
    /// buffer of the exchange (`Observation.spanHead`), given back by `record`.
    func capture(_ e: Exchange, _ r: RequestView) {
        var head = e.pool.take()
        head.append(r.method)
        head.append(r.target.count > 512 ? UnsafeRawBufferPointer(rebasing: r.target[0..<512]) : r.target)
        let targetEnd = head.count
        head.append(r.authority.count > 256 ? UnsafeRawBufferPointer(rebasing: r.authority[0..<256]) : r.authority)
        e.observe.spanHead = head
        e.observe.spanCuts = (Int32(r.method.count), Int32(targetEnd))
    }

    /// The exchange is over: its span to the ring.
    func record(_ e: Exchange) {
        let o = e.observe
        var r = SpanRecord()
        r.status = Int32(truncatingIfNeeded: o.status)
        r.grpcStatus = Int32(truncatingIfNeeded: e.responseGRPCStatus)
        r.flags = o.flags.rawValue
        r.traceHi = o.trace.traceHi; r.traceLo = o.trace.traceLo; r.span = o.trace.span; r.parent = o.trace.parent
        r.durationMicros = o.durationMicros
        r.startMicros = realtimeMicros() &- o.durationMicros
        record.clear()
        record.reserve(SpanRecord.size + 1024)
        record.count = SpanRecord.size
        @inline(__always) func put(_ slot: SpanRecord.Slot, _ b: UnsafeRawBufferPointer) {
            r.spans[slot.rawValue * 2] = Int32(record.count - SpanRecord.size)
            r.spans[slot.rawValue * 2 + 1] = Int32(b.count)
            record.append(b)
        }
        if let h = o.spanHead.base {
            let (m, t) = (Int(o.spanCuts.0), Int(o.spanCuts.1))
            put(.method, UnsafeRawBufferPointer(start: h, count: m))
            put(.path, UnsafeRawBufferPointer(start: h + m, count: t - m))
            put(.authority, UnsafeRawBufferPointer(start: h + t, count: o.spanHead.count - t))
            e.pool.give(&e.observe.spanHead)
        }
        listenerName.withUnsafeBytes { put(.listener, $0) }
        if o.route >= 0 && o.route < routeNames.count { routeNames[o.route].withUnsafeBytes { put(.route, $0) } }
        if let c = e.cluster {
            if namesOf !== c {
                namesOf = c
                clusterName = Array(c.config.name.utf8)
                hostNames = c.endpoints.map { Array($0.address.description.utf8) }
            }
            clusterName.withUnsafeBytes { put(.cluster, $0) }
            if o.endpoint >= 0 && o.endpoint < hostNames.count { hostNames[o.endpoint].withUnsafeBytes { put(.upstreamHost, $0) } }
        }
        r.length = UInt32(record.count)
        withUnsafeBytes(of: &r) { record.base!.copyMemory(from: $0.baseAddress!, byteCount: SpanRecord.size) }
        if remora_log_ring_push(ring, record.base!.assumingMemoryBound(to: UInt8.self), UInt64(record.count)) == 0 {
            stats.inc(.tracing_spans_dropped)
        }
        if remora_log_ring_used(ring) >= SpanExporter.wakeAt && remora_flag_exchange(&ring.pointee.signalled, 1) == 0 {
            exporter.wake()
        }
    }
}

/// The spans of the listeners that export to one collector (`tracing.otlp.endpoint`): one ring per
/// worker and a helper thread that encodes OTLP/HTTP JSON and POSTs it to `/v1/traces` in batches of
/// at most `batchSpans` spans, at least every `batchMillis`. A collector that is down, slow (more
/// than `sendTimeoutMs` per request) or answers an error loses the batch, counted
/// (`tracing.otlp.spans_dropped`); meanwhile the rings fill and workers drop and count further
/// spans. Memory: the rings (`ringCapacity` per worker) and one batch.
final class SpanExporter: @unchecked Sendable {
    static let ringCapacity = 256 * 1024
    /// A worker wakes the exporter when its ring holds this much (about 512 spans).
    static let wakeAt: UInt64 = 96 * 1024
    static let batchSpans = 512
    static let batchMillis = 5_000
    static let connectTimeoutMs = 1_000
    static let sendTimeoutMs = 2_000

    let target: OTLPConfig
    let serviceName: String
    let rings: [UnsafeMutablePointer<remora_log_ring>]
    private let wakeup = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    /// Counters written by the exporter thread, read by the admin (atomic loads).
    let exported = UnsafeMutablePointer<Int64>.allocate(capacity: 1)
    let dropped = UnsafeMutablePointer<Int64>.allocate(capacity: 1)
    let batches = UnsafeMutablePointer<Int64>.allocate(capacity: 1)
    let failures = UnsafeMutablePointer<Int64>.allocate(capacity: 1)
    private let stopping = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)

    // Exporter thread only.
    private var body = ByteBuffer(capacity: 256 * 1024)
    private var pending = 0
    private var scratch = ByteBuffer(capacity: SpanExporter.ringCapacity)
    private var request = ByteBuffer(capacity: 1024)

    init(target: OTLPConfig, serviceName: String, workers: Int) {
        self.target = target
        self.serviceName = serviceName
        rings = (0..<workers).map { _ in
            let r = UnsafeMutablePointer<remora_log_ring>.allocate(capacity: 1)
            r.initialize(to: remora_log_ring())
            r.pointee.capacity = UInt64(SpanExporter.ringCapacity)
            r.pointee.bytes = .allocate(capacity: SpanExporter.ringCapacity + 8)   // + what takeRingRecords promises
            return r
        }
        sem_init(wakeup, 0, 0)
        for p in [exported, dropped, batches, failures] { p.initialize(to: 0) }
        stopping.initialize(to: 0)
        // Detached: a send stuck on a slow collector must not hold up the exit.
        let t = spawnThread { [self] in self.run() }
        pthread_detach(t)
    }

    @inline(__always) func wake() { sem_post(wakeup) }

    func stop() { remora_flag_store(stopping, 1); wake() }

    /// Adds this exporter's counters (`tracing.otlp.spans_exported` …) to an admin snapshot.
    func collect(into out: inout StatsSnapshot) {
        let name = "\(target.host):\(target.port)"
        out.add(scope: "tracing", name: name, stat: "otlp.spans_exported", value: UInt64(remora_atomic_load(exported)),
                help: "Spans the OTLP collector accepted")
        out.add(scope: "tracing", name: name, stat: "otlp.spans_dropped", value: UInt64(remora_atomic_load(dropped)),
                help: "Spans lost because the OTLP collector was down, slow or refused them")
        out.add(scope: "tracing", name: name, stat: "otlp.export_requests", value: UInt64(remora_atomic_load(batches)),
                help: "POST /v1/traces requests sent")
        out.add(scope: "tracing", name: name, stat: "otlp.export_failures", value: UInt64(remora_atomic_load(failures)),
                help: "POST /v1/traces requests that failed")
    }

    private func run() {
        remora_nice_this_thread(10)
        var last = monotonicMicros()
        while true {
            var ts = AccessLogWriter.deadline(afterMs: 1_000)
            _ = sem_timedwait(wakeup, &ts)
            while sem_trywait(wakeup) == 0 {}
            let stop = remora_flag_load(stopping) == 1
            for r in rings { take(r) }
            if pending > 0 && (stop || monotonicMicros() &- last >= UInt64(SpanExporter.batchMillis) * 1000) {
                send()
            }
            if pending == 0 { last = monotonicMicros() }
            if stop { return }
        }
    }

    /// Encodes every record published in ring `r`, sending whenever a batch is full.
    private func take(_ r: UnsafeMutablePointer<remora_log_ring>) {
        takeRingRecords(r, &scratch, as: SpanRecord.self) { rec, strings in
            encode(rec, strings: strings)
            if pending >= SpanExporter.batchSpans { send() }
        }
    }

    /// One span as OTLP JSON (`opentelemetry.proto.trace.v1.Span`; ids as hex, as OTLP/JSON says).
    private func encode(_ r: SpanRecord, strings s: UnsafeRawBufferPointer) {
        func str(_ slot: SpanRecord.Slot) -> UnsafeRawBufferPointer? {
            let off = Int(r.spans[slot.rawValue * 2]), len = Int(r.spans[slot.rawValue * 2 + 1])
            guard off >= 0, len >= 0, off + len <= s.count, let base = s.baseAddress else { return nil }
            return UnsafeRawBufferPointer(start: base + off, count: len)
        }
        if pending > 0 { body.append(byte: 0x2C) }
        pending += 1
        body.append("{\"traceId\":\"")
        hex(r.traceHi); hex(r.traceLo)
        body.append("\",\"spanId\":\"")
        hex(r.span)
        body.append(byte: 0x22)
        if r.parent != 0 { body.append(",\"parentSpanId\":\""); hex(r.parent); body.append(byte: 0x22) }
        body.append(",\"name\":\"")
        if let route = str(.route) { escaped(route) } else { body.append("ingress") }
        body.append("\",\"kind\":2,\"startTimeUnixNano\":\"")
        body.appendDecimal(r.startMicros &* 1000)
        body.append("\",\"endTimeUnixNano\":\"")
        body.appendDecimal((r.startMicros &+ r.durationMicros) &* 1000)
        body.append("\",\"attributes\":[")
        var first = true
        func attribute(_ key: StaticString, _ v: UnsafeRawBufferPointer?) {
            guard let v else { return }
            body.append(first ? "{\"key\":\"" : ",{\"key\":\"")
            first = false
            body.append(key)
            body.append("\",\"value\":{\"stringValue\":\"")
            escaped(v)
            body.append("\"}}")
        }
        func attribute(_ key: StaticString, int v: UInt64) {
            body.append(first ? "{\"key\":\"" : ",{\"key\":\"")
            first = false
            body.append(key)
            body.append("\",\"value\":{\"intValue\":\"")
            body.appendDecimal(v)
            body.append("\"}}")
        }
        attribute("http.request.method", str(.method))
        attribute("url.path", str(.path))
        attribute("server.address", str(.authority))
        if r.status > 0 { attribute("http.response.status_code", int: UInt64(r.status)) }
        if r.grpcStatus >= 0 { attribute("rpc.grpc.status_code", int: UInt64(r.grpcStatus)) }
        attribute("remora.listener", str(.listener))
        attribute("upstream_cluster", str(.cluster))
        attribute("upstream_address", str(.upstreamHost))
        if r.flags != 0 {
            var letters = ResponseFlags(rawValue: r.flags).letters
            letters.withUTF8 { attribute("response_flags", UnsafeRawBufferPointer($0)) }
        }
        body.append("]")
        // Errors: a 5xx, no response, or a flag that says something failed (Envoy's tracer likewise).
        if r.status >= 500 || r.status == 0 || r.flags != 0 { body.append(",\"status\":{\"code\":2}") }
        body.append("}")
    }

    private func hex(_ v: UInt64) {
        body.reserve(body.count + 16)
        remora_hex16(body.base!.assumingMemoryBound(to: UInt8.self) + body.count, v)
        body.count += 16
    }

    private func escaped(_ v: UnsafeRawBufferPointer) {
        for c in v {
            switch c {
            case 0x22: body.append("\\\"")
            case 0x5C: body.append("\\\\")
            case 0..<0x20, 0x7F:
                body.append("\\u00")
                body.append(byte: AccessLogFormatter.hex(c >> 4))
                body.append(byte: AccessLogFormatter.hex(c & 15))
            default: body.append(byte: c)
            }
        }
    }

    /// POSTs the batch; the spans are counted as exported (2xx) or dropped (anything else).
    private func send() {
        let n = pending
        pending = 0
        var payload = ByteBuffer(capacity: body.count + 256)
        payload.append("{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":\"")
        var name = serviceName
        name.withUTF8 { escapedInto(&payload, UnsafeRawBufferPointer($0)) }
        payload.append("\"}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"remora\"},\"spans\":[")
        payload.append(body.bytes)
        payload.append("]}]}]}")
        body.clear(keepingAtMost: 256 * 1024)
        _ = remora_atomic_add(batches, 1)
        if post(payload.bytes) {
            _ = remora_atomic_add(exported, Int64(n))
        } else {
            _ = remora_atomic_add(failures, 1)
            _ = remora_atomic_add(dropped, Int64(n))
        }
        payload.release()
    }

    private func escapedInto(_ out: inout ByteBuffer, _ v: UnsafeRawBufferPointer) {
        for c in v where c >= 0x20 && c != 0x22 && c != 0x5C { out.append(byte: c) }
    }

    /// One HTTP/1.1 POST on a new connection, every step bounded in time; true on a 2xx answer.
    private func post(_ payload: UnsafeRawBufferPointer) -> Bool {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(target.host, String(target.port), &hints, &res) == 0, let ai = res else { return false }
        defer { freeaddrinfo(res) }
        let fd = socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) != 0 {
            guard errno == EINPROGRESS, wait(fd, Int16(POLLOUT), SpanExporter.connectTimeoutMs) else { return false }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0, err == 0 else { return false }
        }
        request.clear()
        request.append("POST /v1/traces HTTP/1.1\r\nHost: ")
        request.append(string: target.host.contains(":") ? "[\(target.host)]:\(target.port)" : "\(target.host):\(target.port)")
        request.append("\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ")
        request.appendDecimal(UInt64(payload.count))
        request.append("\r\n\r\n")
        let deadline = monotonicMicros() &+ UInt64(SpanExporter.sendTimeoutMs) * 1000
        guard sendAll(fd, request.bytes, deadline), sendAll(fd, payload, deadline) else { return false }
        // The status line: "HTTP/1.1 2xx".
        var head = [UInt8](repeating: 0, count: 64)
        var got = 0
        while got < 12 {
            let left = Int(Int64(bitPattern: deadline &- monotonicMicros()) / 1000)
            guard left > 0, wait(fd, Int16(POLLIN), left) else { return false }
            let r = head.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, 64 - got, 0) }
            if r > 0 { got += r; continue }
            if r < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            return false
        }
        return head[9] == 0x32   // '2'
    }

    private func sendAll(_ fd: Int32, _ b: UnsafeRawBufferPointer, _ deadline: UInt64) -> Bool {
        var done = 0
        while done < b.count {
            let w = Glibc.send(fd, b.baseAddress! + done, b.count - done, Int32(MSG_NOSIGNAL))
            if w > 0 { done += w; continue }
            if w < 0 && errno == EINTR { continue }
            guard w < 0 && errno == EAGAIN else { return false }
            let left = Int(Int64(bitPattern: deadline &- monotonicMicros()) / 1000)
            guard left > 0, wait(fd, Int16(POLLOUT), left) else { return false }
        }
        return true
    }

    private func wait(_ fd: Int32, _ events: Int16, _ ms: Int) -> Bool {
        var p = pollfd(fd: fd, events: events, revents: 0)
        while true {
            let r = poll(&p, 1, Int32(ms))
            if r < 0 && errno == EINTR { continue }
            return r > 0
        }
    }
}
