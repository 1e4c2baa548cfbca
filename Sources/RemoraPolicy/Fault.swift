/// A route's fault injection (config `fault:`), compiled: delay a share of the requests before the
/// upstream is contacted, answer a share from the proxy instead (Envoy's fault filter, Istio's
/// `fault`). Decided once per request, on the worker's random source.
public struct FaultPolicy: Sendable, Equatable {
    /// How long a delayed request waits, ms (> 0); 0 = no delay configured.
    public var delay: UInt64
    /// Share of the requests delayed, in millionths (0 ... 1_000_000: `percent` × 10_000).
    public var delayShare: UInt32
    /// The status an aborted plain HTTP request gets (200 ... 599); default 503.
    public var abortStatus: Int
    /// The grpc-status an aborted gRPC request gets (1 ... 16); -1 = mapped from `abortStatus` as
    /// gRPC maps HTTP statuses (`FaultPolicy.grpcStatus(forHTTP:)`).
    public var abortGRPCStatus: Int
    /// Share of the requests aborted, in millionths; 0 = no abort configured.
    public var abortShare: UInt32
    /// Only requests carrying this header (lowercase name) get faults; nil = every request.
    public var onlyWithHeader: String?

    public static let million: UInt32 = 1_000_000

    public init(delay: UInt64 = 0, delayShare: UInt32 = 0, abortStatus: Int = 503, abortGRPCStatus: Int = -1,
                abortShare: UInt32 = 0, onlyWithHeader: String? = nil) {
        self.delay = delay; self.delayShare = min(delayShare, FaultPolicy.million)
        self.abortStatus = abortStatus; self.abortGRPCStatus = abortGRPCStatus
        self.abortShare = min(abortShare, FaultPolicy.million); self.onlyWithHeader = onlyWithHeader
    }

    /// `percent` (0 ... 100, up to four decimals) as millionths.
    public static func share(percent: Double) -> UInt32 {
        UInt32((min(max(percent, 0), 100) * 10_000).rounded())
    }

    /// The faults of one request: two independent draws (a request may be delayed, then aborted,
    /// as Envoy does). No randomness is drawn for a fault that is not configured.
    public func decide<R: RandomSource>(random: inout R) -> FaultDecision {
        var d = FaultDecision()
        if delayShare != 0 && delay != 0 && random.below(UInt64(FaultPolicy.million)) < UInt64(delayShare) { d.delay = delay }
        if abortShare != 0 && random.below(UInt64(FaultPolicy.million)) < UInt64(abortShare) { d.abort = true }
        return d
    }

    /// The grpc-status of an aborted gRPC request.
    public var grpcAbortStatus: Int { abortGRPCStatus >= 0 ? abortGRPCStatus : FaultPolicy.grpcStatus(forHTTP: abortStatus) }

    /// gRPC's mapping of an HTTP status to a grpc-status (grpc/doc/http-grpc-status-mapping.md).
    public static func grpcStatus(forHTTP s: Int) -> Int {
        switch s {
        case 400: return 13          // INTERNAL
        case 401: return 16          // UNAUTHENTICATED
        case 403: return 7           // PERMISSION_DENIED
        case 404: return 12          // UNIMPLEMENTED
        case 429, 502, 503, 504: return 14   // UNAVAILABLE
        default: return 2            // UNKNOWN
        }
    }
}

/// What fault injection does to one request.
public struct FaultDecision: Sendable, Equatable {
    /// Wait this many ms before the upstream is contacted (or before the abort); 0 = none.
    public var delay: UInt64 = 0
    /// Answer from the proxy (after the delay, if any) instead of going upstream.
    public var abort = false
    public init(delay: UInt64 = 0, abort: Bool = false) { self.delay = delay; self.abort = abort }
    public var isNone: Bool { delay == 0 && !abort }
}
