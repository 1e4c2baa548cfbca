import CRemoraSupport
import RemoraCore
import RemoraHTTP
import RemoraRouting

/// A listener's request ids and trace propagation (`tracing:`), as an HTTP filter: at
/// `requestHeaders` it decides the request's x-request-id (generated when absent: a UUIDv4 from the
/// worker's fast random source) and trace context (the client's trace — W3C `traceparent`, else B3
/// `b3` / `x-b3-*`, among the formats the listener propagates — continued with a new span of the
/// proxy's as the child of the client's, or a new trace sampled at `sample_percent`); the router
/// forwards them (`forwarded`). With `otlp:` its `log` phase hands sampled spans to the exporter
/// (`SpanExport.swift`). It runs before the access log, which logs the id.
final class TracingFilter: HTTPFilter {
    unowned(unsafe) let worker: Worker
    /// New traces are sampled when a random draw in 0 ..< 1,000,000 is below this.
    let sampleBelow: UInt64
    let w3c: Bool
    let b3: Bool
    /// Where sampled spans go (nil: not exported).
    let spans: SpanRecorder?
    /// The fields `forwarded` returns and the text of the ones it adds: used synchronously (the
    /// upstream head is written from them before the router returns), reused by every request.
    var fields: UnsafeMutableBufferPointer<HeaderRef>
    let text = UnsafeMutableRawBufferPointer.allocate(byteCount: 256, alignment: 8)

    init(worker: Worker, config: TracingConfig, spans: SpanRecorder? = nil) {
        self.worker = worker
        sampleBelow = UInt64(config.samplePercent * 10_000)
        w3c = config.propagate.contains(.w3c)
        b3 = config.propagate.contains(.b3)
        self.spans = spans
        fields = .allocate(capacity: 64)
    }

    deinit {
        fields.deallocate()
        text.deallocate()
    }

    /// A trace header the proxy replaces (the formats it propagates), by name.
    @inline(__always) func replaces(_ name: UnsafeRawBufferPointer) -> Bool {
        switch name.count {
        case 11: return (w3c && name.equalsLowercase("traceparent")) || (b3 && name.equalsLowercase("x-b3-spanid"))
        case 2: return b3 && name.equalsLowercase("b3")
        case 12: return b3 && (name.equalsLowercase("x-b3-traceid") || name.equalsLowercase("x-b3-sampled"))
        case 10: return b3 && name.equalsLowercase("x-b3-flags")
        case 17: return b3 && name.equalsLowercase("x-b3-parentspanid")
        default: return false
        }
    }

    /// `headers` as the upstream gets them with `e`'s tracing: x-request-id added when the proxy
    /// generated it, the trace headers replaced by the proxy's span. Valid until the next call.
    func forwarded(_ headers: UnsafeBufferPointer<HeaderRef>, _ e: Exchange) -> UnsafeBufferPointer<HeaderRef> {
        if headers.count + 6 > fields.count {
            fields.deallocate()
            fields = .allocate(capacity: headers.count + 6)
        }
        let base = text.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var n = 0
        for h in headers where !replaces(h.name) {
            fields[n] = h
            n += 1
        }
        let t = e.observe.trace
        var at = 0
        @inline(__always) func add(_ name: StaticString, _ len: Int) {
            fields[n] = HeaderRef(name: rawBytes(name), value: UnsafeRawBufferPointer(start: base + at, count: len))
            n += 1
            at += len
        }
        if w3c {
            t.writeTraceparent(base + at)
            add("traceparent", TraceContext.traceparentLength)
        }
        if b3 {
            if t.b3Single {
                add("b3", t.writeB3Single(base + at))
            } else {
                add("x-b3-traceid", t.writeB3TraceID(base + at))
                t.writeHex(t.span, base + at); add("x-b3-spanid", 16)
                if t.parent != 0 { t.writeHex(t.parent, base + at); add("x-b3-parentspanid", 16) }
                fields[n] = HeaderRef(name: rawBytes("x-b3-sampled"), value: t.sampled ? rawBytes("1") : rawBytes("0"))
                n += 1
            }
        }
        if e.observe.generatedID {
            writeUUID(e.observe.requestID.0, e.observe.requestID.1, into: UnsafeMutableRawBufferPointer(start: base + at, count: 36))
            add("x-request-id", 36)
        }
        return UnsafeBufferPointer(rebasing: fields[0..<n])
    }

    func requestHeaders(_ e: Exchange, _ r: RequestView) -> FilterVerdict {
        var hasID = false
        var parsed: TraceContext?
        var single: TraceContext?
        var decision: Bool?
        var tid: UnsafeRawBufferPointer?, sid: UnsafeRawBufferPointer?
        var smp: UnsafeRawBufferPointer?, dbg: UnsafeRawBufferPointer?
        for h in r.headers {
            let name = h.name
            switch name.count {
            case 12:
                if name.equalsLowercase("x-request-id") { hasID = true }
                else if b3 && name.equalsLowercase("x-b3-traceid") { tid = h.value }
                else if b3 && name.equalsLowercase("x-b3-sampled") { smp = h.value }
            case 11:
                if w3c && name.equalsLowercase("traceparent") { if parsed == nil { parsed = TraceContext.parseTraceparent(h.value) } }
                else if b3 && name.equalsLowercase("x-b3-spanid") { sid = h.value }
            case 2 where b3 && name.equalsLowercase("b3"):
                if single == nil { single = TraceContext.parseB3(h.value, decision: &decision) }
            case 10 where b3 && name.equalsLowercase("x-b3-flags"):
                dbg = h.value
            default: continue
            }
        }
        e.observe.generatedID = !hasID
        if !hasID { e.observe.requestID = (worker.rng.next(), worker.rng.next()) }
        // W3C first, then B3's single header, then its multiple headers.
        if b3 && parsed == nil {
            parsed = single ?? TraceContext.fromB3(traceID: tid, spanID: sid, sampled: smp, debug: dbg)
            if parsed == nil, let s = smp { decision = TraceContext.b3SampledState(s) }
        }
        var t = parsed ?? TraceContext()
        if parsed == nil {
            t.traceHi = worker.rng.next()
            t.traceLo = worker.rng.next() | 1   // never all zero
        }
        if parsed == nil || t.undecided {
            t.flags = (decision ?? (worker.rng.next() % 1_000_000 < sampleBelow)) ? 1 : 0
        }
        t.span = worker.rng.next() | 1
        e.observe.trace = t
        e.observe.hasTrace = true
        if let s = spans, t.sampled, e.observe.startMicros != 0 { s.capture(e, r) }
        return .next
    }

    /// The exchange is over: its span to the exporter when the trace is sampled.
    func log(_ e: Exchange) {
        if let s = spans, e.observe.hasTrace, e.observe.trace.sampled, e.observe.startMicros != 0 { s.record(e) }
    }
}

extension TraceContext {
    /// 16 hex digits of `v` at `b`.
    @inline(__always) func writeHex(_ v: UInt64, _ b: UnsafeMutablePointer<UInt8>) { remora_hex16(b, v) }
}
