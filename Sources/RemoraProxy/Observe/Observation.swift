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
    /// The matched route (index in the listener's table), -1 = none.
    var route = -1
    /// Response body bytes sent to the client.
    var bytesSent: UInt64 = 0
    /// Request fields an access log keeps for its line (a pooled buffer; only with an access log,
    /// given back when the line is written) and where each is in it (`LogField`: offset, length;
    /// -1 = absent).
    var logHead = ByteBuffer()
    var logSpans = SIMD16<Int32>(repeating: -1)
    /// The client's protocol: 0 HTTP/1.1, 1 HTTP/1.0, 2 HTTP/2.
    var downstreamProtocol: UInt8 = 0
}

/// The request fields an access log keeps (slots in `Observation.logSpans`: 2 per field).
enum LogField: Int {
    case method, path, authority, xForwardedFor, userAgent, requestID
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
