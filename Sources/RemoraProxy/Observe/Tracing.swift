import RemoraCore
import RemoraHTTP
import RemoraRouting

/// A listener's request ids and W3C trace propagation (`tracing:`), as an HTTP filter: at
/// `requestHeaders` it decides the request's x-request-id (generated when absent: a UUIDv4 from the
/// worker's fast random source) and trace context (the client's trace continued with a new span of
/// the proxy's as the child of the client's, or a new trace sampled at `sample_percent`); the router
/// forwards them (`Exchange.withTraceHeaders`). It runs before the access log, which logs the id.
final class TracingFilter: HTTPFilter {
    unowned(unsafe) let worker: Worker
    /// New traces are sampled when a random draw in 0 ..< 1,000,000 is below this.
    let sampleBelow: UInt64
    /// The fields `forwarded` returns and the text of the two it adds: used synchronously (the
    /// upstream head is written from them before the router returns), reused by every request.
    var fields: UnsafeMutableBufferPointer<HeaderRef>
    let text = UnsafeMutableRawBufferPointer.allocate(byteCount: 36 + TraceContext.length, alignment: 8)

    init(worker: Worker, config: TracingConfig) {
        self.worker = worker
        sampleBelow = UInt64(config.samplePercent * 10_000)
        fields = .allocate(capacity: 64)
    }

    deinit {
        fields.deallocate()
        text.deallocate()
    }

    /// `headers` as the upstream gets them with `e`'s tracing: x-request-id added when the proxy
    /// generated it, `traceparent` replaced by the proxy's span. Valid until the next call.
    func forwarded(_ headers: UnsafeBufferPointer<HeaderRef>, _ e: Exchange) -> UnsafeBufferPointer<HeaderRef> {
        if headers.count + 2 > fields.count {
            fields.deallocate()
            fields = .allocate(capacity: headers.count + 2)
        }
        let id = UnsafeMutableRawBufferPointer(rebasing: text[0..<36])
        let tp = UnsafeMutableRawBufferPointer(rebasing: text[36...])
        writeUUID(e.observe.requestID.0, e.observe.requestID.1, into: id)
        e.observe.trace.write(into: tp)
        var n = 0
        for h in headers where !(h.name.count == 11 && h.name.equalsLowercase("traceparent")) {
            fields[n] = h
            n += 1
        }
        fields[n] = HeaderRef(name: rawBytes("traceparent"), value: UnsafeRawBufferPointer(tp))
        n += 1
        if e.observe.generatedID {
            fields[n] = HeaderRef(name: rawBytes("x-request-id"), value: UnsafeRawBufferPointer(id))
            n += 1
        }
        return UnsafeBufferPointer(rebasing: fields[0..<n])
    }

    func requestHeaders(_ e: Exchange, _ r: RequestView) -> FilterVerdict {
        var hasID = false
        var parsed: TraceContext?
        for h in r.headers {
            switch h.name.count {
            case 12 where h.name.equalsLowercase("x-request-id"): hasID = true
            case 11 where h.name.equalsLowercase("traceparent"): if parsed == nil { parsed = TraceContext.parse(h.value) }
            default: continue
            }
        }
        e.observe.generatedID = !hasID
        if !hasID { e.observe.requestID = (worker.rng.next(), worker.rng.next()) }
        var t = parsed ?? TraceContext()
        if parsed == nil {
            t.traceHi = worker.rng.next()
            t.traceLo = worker.rng.next() | 1   // never all zero
            t.flags = worker.rng.next() % 1_000_000 < sampleBelow ? 1 : 0
        }
        t.span = worker.rng.next() | 1
        e.observe.trace = t
        e.observe.hasTrace = true
        return .next
    }
}

