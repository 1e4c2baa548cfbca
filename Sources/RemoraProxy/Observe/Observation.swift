import CRemoraSupport
import Glibc
import RemoraCore

/// What the proxy observes about one exchange for its metrics, access log and trace: set by the
/// exchange's observation hooks (`Exchange+Observe.swift`), read when it ends. A plain value in the
/// exchange (nothing allocated), reset when a request starts.
struct Observation {
    /// Monotonic start of the request (its head arrived), microseconds; 0 = not a client request
    /// (a mirrored copy), nothing is recorded for it.
    var startMicros: UInt64 = 0
    /// From the request head to the end of the exchange, microseconds (set when it ends).
    var durationMicros: UInt64 = 0
    /// Why it ended as it did (Envoy's letters).
    var flags = ResponseFlags()
    /// The status the client got (0 = none: the exchange ended without a response head).
    var status = 0
    /// The grpc-status of an answer from the proxy; -1 = none (then the upstream's, if any).
    var localGRPCStatus = -1
    /// Upstream attempts reported to the outcome hook.
    var attempts = 0
    /// The last attempt's endpoint (index in the cluster), -1 = none.
    var endpoint = -1
    /// The last attempt's time to its response head or failure, ms (Envoy's upstream service time).
    var upstreamMillis: UInt64 = 0
    /// The cluster whose circuit breaker refused the request before it was taken (`UO`), for the
    /// access log; nil otherwise.
    unowned(unsafe) var refusedBy: Cluster?
    /// The matched route (index in the listener's table), -1 = none.
    var route = -1
    /// Response body bytes sent to the client.
    var bytesSent: UInt64 = 0
    /// Request fields an access log keeps for its line (a pooled buffer; only with an access log,
    /// given back when the line is written) and where each is in it (`LogField`: offset, length;
    /// -1 = absent).
    var logHead = ByteBuffer()
    var logSpans = SIMD16<Int32>(repeating: -1)
    /// (offset, length) in `logHead` of the client's TLS identity (`downstream_peer_identity`); -1: none.
    var logPeer = SIMD2<Int32>(repeating: -1)
    /// The upstream connection's `peerTag` (its server's identity, on a TLS cluster), taken when the
    /// response head arrives; 0 = none.
    var upstreamPeer: UInt16 = 0
    /// The client's protocol: 0 HTTP/1.1, 1 HTTP/1.0, 2 HTTP/2.
    var downstreamProtocol: UInt8 = 0
    /// Tracing (`tracing:`): the x-request-id the proxy generated (a UUIDv4's 128 bits), when the
    /// request had none.
    var generatedID = false
    var requestID: (UInt64, UInt64) = (0, 0)
    /// The trace this request is part of and the proxy's span in it (`TraceContext`); forwarded as
    /// `traceparent` when `hasTrace`.
    var hasTrace = false
    var trace = TraceContext()
    /// The client sent trace fields of a format the listener propagates (they are replaced, so the
    /// forwarded fields are a filtered copy; else the client's fields go as they are).
    var traceFieldsSeen = false
    /// Where the client's traceparent is among its fields when it is the only trace field the
    /// proxy replaces (-1 otherwise): `TracingFilter.forwarded` copies around it when the route
    /// changes no fields.
    var onlyTraceField = -1
    /// With span export (`tracing.otlp`), for a sampled request: method, target and authority
    /// (a pooled buffer, given back when the span is recorded) and where the first two end.
    var spanHead = ByteBuffer()
    var spanCuts: (Int32, Int32) = (0, 0)
}

/// A UUIDv4 (RFC 9562) from 128 random bits: `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`, 36 bytes.
func writeUUID(_ hi: UInt64, _ lo: UInt64, into p: UnsafeMutableRawBufferPointer) {
    let hi = hi & ~0xF000 | 0x4000                              // version 4
    let lo = lo & ~(0xC000 << 48) | (0x8000 << 48)               // variant 10
    remora_uuid36(p.baseAddress!.assumingMemoryBound(to: UInt8.self), hi, lo)
}

/// The monotonic clock in microseconds (a vDSO call, no syscall).
@inline(__always) func monotonicMicros() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000 &+ UInt64(ts.tv_nsec) / 1000
}

/// The wall clock in microseconds since the epoch (access log start times).
func realtimeMicros() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000 &+ UInt64(ts.tv_nsec) / 1000
}

extension UpstreamFailure {
    /// The response flag of a request that ended on this failure.
    var responseFlag: ResponseFlags {
        switch self {
        case .connectFailed: return .UF
        case .refused: return .UR
        case .reset(let code): return code == 0 ? .UC : .UR
        case .protocolError: return .UPE
        }
    }
}
