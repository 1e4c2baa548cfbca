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
    /// The fields `forwarded` returns (reused by every request).
    var fields: UnsafeMutableBufferPointer<HeaderRef>
    /// The fields `added` returns, as `HeaderRef`s into `text` (x-request-id first, then traceparent,
    /// then B3), and their text: HTTP/1.1 lines `name: value\r\n`, contiguous, so an HTTP/1.1 upstream
    /// copies them in one piece. The request id's and traceparent's lines sit at fixed places and their
    /// names and punctuation are written once (`init`): a request writes only its ids. Used
    /// synchronously (the upstream head is written from them before the router returns).
    let extra = UnsafeMutableBufferPointer<HeaderRef>.allocate(capacity: 8)
    let text = UnsafeMutableRawBufferPointer.allocate(byteCount: 320, alignment: 8)
    /// Where the B3 lines start in `text` (after traceparent's line when W3C is propagated).
    let b3At: Int

    /// `x-request-id: <36>\r\n` at 0, `traceparent: <55>\r\n` after it (literals: constants folded).
    static let idName = 14, idLine = 52, tpName = 13, tpLine = 70

    init(worker: Worker, config: TracingConfig, spans: SpanRecorder? = nil) {
        self.worker = worker
        sampleBelow = UInt64(config.samplePercent * 10_000)
        w3c = config.propagate.contains(.w3c)
        b3 = config.propagate.contains(.b3)
        self.spans = spans
        fields = .allocate(capacity: 64)
        precondition(Self.tpLine == Self.tpName + TraceContext.traceparentLength + 2 && Self.idLine == Self.idName + 36 + 2)
        b3At = Self.idLine + (w3c ? Self.tpLine : 0)
        let base = text.baseAddress!.assumingMemoryBound(to: UInt8.self)
        func put(_ s: StaticString, _ at: Int) { (base + at).update(from: s.utf8Start, count: s.utf8CodeUnitCount) }
        put("x-request-id: ", 0); put("\r\n", Self.idLine - 2)
        extra[0] = HeaderRef(name: UnsafeRawBufferPointer(start: base, count: 12),
                             value: UnsafeRawBufferPointer(start: base + Self.idName, count: 36))
        if w3c {
            put("traceparent: ", Self.idLine); put("\r\n", Self.idLine + Self.tpLine - 2)
            extra[1] = HeaderRef(name: UnsafeRawBufferPointer(start: base + Self.idLine, count: 11),
                                 value: UnsafeRawBufferPointer(start: base + Self.idLine + Self.tpName,
                                                               count: TraceContext.traceparentLength))
        }
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

    /// The client's fields as the upstream gets them when it sent trace fields the proxy replaces
    /// (`observe.traceFieldsSeen`; otherwise they go as they are): a copy without them, valid until
    /// the next call.
    /// `at`: where the client's only trace field, a traceparent, is in `headers` (-1: not known):
    /// the fields around it are copied in two pieces, unexamined.
    func forwarded(_ headers: UnsafeBufferPointer<HeaderRef>, at: Int) -> UnsafeBufferPointer<HeaderRef> {
        if headers.count > fields.count {
            fields.deallocate()
            fields = .allocate(capacity: headers.count)
        }
        if at >= 0 && at < headers.count {
            let d = fields.baseAddress!, s = headers.baseAddress!
            d.update(from: s, count: at)
            (d + at).update(from: s + at + 1, count: headers.count - at - 1)
            return UnsafeBufferPointer(start: d, count: headers.count - 1)
        }
        var n = 0
        for h in headers where !replaces(h.name) {
            fields[n] = h
            n += 1
        }
        return UnsafeBufferPointer(rebasing: fields[0..<n])
    }

    /// The proxy's own fields for `e`'s upstream: x-request-id when the proxy generated it, and the
    /// trace context in each format the listener propagates. Valid until the next call.
    func added(_ e: Exchange) -> AddedFields {
        let base = text.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let t = e.observe.trace
        let first = e.observe.generatedID ? 0 : 1
        if first == 0 {
            let r = e.observe.requestID
            writeUUID(r.0, r.1, into: UnsafeMutableRawBufferPointer(start: base + Self.idName, count: 36))
        }
        if w3c { t.writeTraceparent(base + Self.idLine + Self.tpName) }
        var n = w3c ? 2 : 1
        var at = b3At
        if b3 {
            /// `name: ` at `at`; the value goes at the returned place.
            @inline(__always) func begin(_ name: StaticString) -> UnsafeMutablePointer<UInt8> {
                let p = base + at
                p.update(from: name.utf8Start, count: name.utf8CodeUnitCount)
                p[name.utf8CodeUnitCount] = 0x3A; p[name.utf8CodeUnitCount + 1] = 0x20
                return p + name.utf8CodeUnitCount + 2
            }
            /// Ends the line begun at `at` with a value of `len` bytes: its `HeaderRef`, then CRLF.
            @inline(__always) func end(_ name: StaticString, _ len: Int) {
                let p = base + at, nl = name.utf8CodeUnitCount
                extra[n] = HeaderRef(name: UnsafeRawBufferPointer(start: p, count: nl),
                                     value: UnsafeRawBufferPointer(start: p + nl + 2, count: len))
                n += 1
                p[nl + 2 + len] = 0x0D; p[nl + 3 + len] = 0x0A
                at += nl + 4 + len
            }
            if t.b3Single {
                end("b3", t.writeB3Single(begin("b3")))
            } else {
                end("x-b3-traceid", t.writeB3TraceID(begin("x-b3-traceid")))
                remora_hex16(begin("x-b3-spanid"), t.span); end("x-b3-spanid", 16)
                if t.parent != 0 { remora_hex16(begin("x-b3-parentspanid"), t.parent); end("x-b3-parentspanid", 16) }
                begin("x-b3-sampled").pointee = t.sampled ? 0x31 : 0x30; end("x-b3-sampled", 1)
            }
        }
        let from = first == 0 ? 0 : Self.idLine
        return AddedFields(fields: UnsafeBufferPointer(rebasing: extra[first..<n]),
                           lines: UnsafeRawBufferPointer(start: base + from, count: at - from))
    }

    /// The request head arrived: its request id and trace context.
    func begin(_ e: Exchange, _ r: RequestView) {
        var hasID = false
        var seen = 0           // trace fields the proxy replaces
        var traceparentAt = -1
        var parsed: TraceContext?
        var single: TraceContext?
        var decision: Bool?
        var tid: UnsafeRawBufferPointer?, sid: UnsafeRawBufferPointer?
        var smp: UnsafeRawBufferPointer?, dbg: UnsafeRawBufferPointer?
        for (i, h) in r.headers.enumerated() {
            let name = h.name
            switch name.count {
            case 12:
                if name.equalsLowercase("x-request-id") { hasID = true }
                else if b3 && name.equalsLowercase("x-b3-traceid") { tid = h.value; seen &+= 1 }
                else if b3 && name.equalsLowercase("x-b3-sampled") { smp = h.value; seen &+= 1 }
            case 11:
                if w3c && name.equalsLowercase("traceparent") {
                    seen &+= 1
                    traceparentAt = i
                    if parsed == nil { parsed = TraceContext.parseTraceparent(h.value) }
                } else if b3 && name.equalsLowercase("x-b3-spanid") { sid = h.value; seen &+= 1 }
            case 2 where b3 && name.equalsLowercase("b3"):
                seen &+= 1
                if single == nil { single = TraceContext.parseB3(h.value, decision: &decision) }
            case 10 where b3 && name.equalsLowercase("x-b3-flags"):
                dbg = h.value; seen &+= 1
            case 17 where b3 && name.equalsLowercase("x-b3-parentspanid"):
                seen &+= 1
            default: continue
            }
        }
        e.observe.generatedID = !hasID
        e.observe.traceFieldsSeen = seen > 0
        e.observe.onlyTraceField = seen == 1 ? traceparentAt : -1
        if !hasID { e.observe.requestID = (worker.rng.next(), worker.rng.next()) }
        // W3C first, then B3's single header, then its multiple headers.
        if b3 && parsed == nil && seen > 0 {
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
