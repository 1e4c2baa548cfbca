import CRemoraSupport
import RemoraCore
import RemoraHTTP
import RemoraRouting

/// A listener's request ids and trace propagation (`tracing:`). The exchange calls `begin` at the
/// request head, before the filters (it never answers): it decides the request's x-request-id
/// (generated when absent: a UUIDv4 from the worker's fast random source) and trace context (the
/// client's trace — W3C `traceparent`, else B3 `b3` / `x-b3-*`, among the formats the listener
/// propagates — continued with a new span of the proxy's as the child of the client's, or a new
/// trace sampled at `sample_percent`). The router forwards the client's fields (`forwarded`: as they
/// are, or without the trace fields the proxy replaces) and the proxy's own (`added`), which the
/// codecs write after the request-head policy. With `otlp:`, `end` hands sampled spans to the
/// exporter (`SpanExport.swift`). Not one of the listener's `HTTPFilter`s: a direct call costs no
/// filter machinery (listeners with only tracing run none).
final class TracingFilter {
    unowned(unsafe) let worker: Worker
    /// New traces are sampled when a random draw in 0 ..< 1,000,000 is below this.
    let sampleBelow: UInt64
    let w3c: Bool
    let b3: Bool
    /// Where sampled spans go (nil: not exported).
    let spans: SpanRecorder?
    /// The fields `forwarded` and `added` return and the text of the added ones: used synchronously
    /// (the upstream head is written from them before the router returns), reused by every request.
    var fields: UnsafeMutableBufferPointer<HeaderRef>
    let extra = UnsafeMutableBufferPointer<HeaderRef>.allocate(capacity: 8)
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
        extra.deallocate()
        text.deallocate()
    }

    /// A trace field the proxy replaces (the formats it propagates), by name.
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

    /// The client's fields as the upstream gets them: as they are, unless the client sent trace
    /// fields the proxy replaces (then a copy without them, valid until the next call).
    func forwarded(_ headers: UnsafeBufferPointer<HeaderRef>, _ e: Exchange) -> UnsafeBufferPointer<HeaderRef> {
        guard e.observe.traceFieldsSeen else { return headers }
        if headers.count > fields.count {
            fields.deallocate()
            fields = .allocate(capacity: headers.count)
        }
        var n = 0
        for h in headers where !replaces(h.name) {
            fields[n] = h
            n += 1
        }
        return UnsafeBufferPointer(rebasing: fields[0..<n])
    }

    /// The proxy's own fields for `e`'s upstream: the trace context in each format the listener
    /// propagates, and x-request-id when the proxy generated it. Valid until the next call.
    func added(_ e: Exchange) -> UnsafeBufferPointer<HeaderRef> {
        let base = text.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let t = e.observe.trace
        var n = 0
        var at = 0
        @inline(__always) func add(_ name: StaticString, _ len: Int) {
            extra[n] = HeaderRef(name: rawBytes(name), value: UnsafeRawBufferPointer(start: base + at, count: len))
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
                remora_hex16(base + at, t.span); add("x-b3-spanid", 16)
                if t.parent != 0 { remora_hex16(base + at, t.parent); add("x-b3-parentspanid", 16) }
                extra[n] = HeaderRef(name: rawBytes("x-b3-sampled"), value: t.sampled ? rawBytes("1") : rawBytes("0"))
                n += 1
            }
        }
        if e.observe.generatedID {
            writeUUID(e.observe.requestID.0, e.observe.requestID.1, into: UnsafeMutableRawBufferPointer(start: base + at, count: 36))
            add("x-request-id", 36)
        }
        return UnsafeBufferPointer(rebasing: extra[0..<n])
    }

    /// The request head arrived: its request id and trace context.
    func begin(_ e: Exchange, _ r: RequestView) {
        var hasID = false
        var seen = false
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
                else if b3 && name.equalsLowercase("x-b3-traceid") { tid = h.value; seen = true }
                else if b3 && name.equalsLowercase("x-b3-sampled") { smp = h.value; seen = true }
            case 11:
                if w3c && name.equalsLowercase("traceparent") {
                    seen = true
                    if parsed == nil { parsed = TraceContext.parseTraceparent(h.value) }
                } else if b3 && name.equalsLowercase("x-b3-spanid") { sid = h.value; seen = true }
            case 2 where b3 && name.equalsLowercase("b3"):
                seen = true
                if single == nil { single = TraceContext.parseB3(h.value, decision: &decision) }
            case 10 where b3 && name.equalsLowercase("x-b3-flags"):
                dbg = h.value; seen = true
            case 17 where b3 && name.equalsLowercase("x-b3-parentspanid"):
                seen = true
            default: continue
            }
        }
        e.observe.generatedID = !hasID
        e.observe.traceFieldsSeen = seen
        if !hasID { e.observe.requestID = (worker.rng.next(), worker.rng.next()) }
        // W3C first, then B3's single header, then its multiple headers.
        if b3 && parsed == nil && seen {
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
    }

    /// The exchange is over: its span to the exporter when the trace is sampled.
    func end(_ e: Exchange) {
        if let s = spans, e.observe.trace.sampled, e.observe.startMicros != 0 { s.record(e) }
    }
}
