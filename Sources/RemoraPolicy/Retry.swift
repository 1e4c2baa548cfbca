#if canImport(Glibc)
import Glibc
#endif

/// A route's retry policy (config `retry:`), compiled: which attempts may be tried again, how often,
/// how long each may take and how long to wait in between.
public struct RetryPolicy: Sendable, Equatable {
    public static func == (a: RetryPolicy, b: RetryPolicy) -> Bool {
        a.attempts == b.attempts && a.on == b.on && a.statusCodes == b.statusCodes && a.perTryTimeout == b.perTryTimeout
            && a.backoffBase == b.backoffBase && a.backoffMax == b.backoffMax && a.methodBits == b.methodBits
            && a.hedgeAfter == b.hedgeAfter
    }

    /// Conditions under which an attempt is retried.
    public struct Conditions: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// The connect failed or timed out.
        public static let connectFailure = Conditions(rawValue: 1 << 0)
        /// HTTP/2 REFUSED_STREAM (or above GOAWAY's last stream id): never processed.
        public static let refusedStream = Conditions(rawValue: 1 << 1)
        /// The connection closed or the stream was reset before a response head.
        public static let reset = Conditions(rawValue: 1 << 2)
        /// 502, 503 or 504 (and a connect failure or reset, as Envoy's gateway-error).
        public static let gatewayError = Conditions(rawValue: 1 << 3)
        /// Any 5xx (and a connect failure or reset, as Envoy's 5xx).
        public static let fiveXX = Conditions(rawValue: 1 << 4)
        /// A status in `statusCodes`.
        public static let retriableStatusCodes = Conditions(rawValue: 1 << 5)
        /// The per-try timeout passed before a response head.
        public static let perTryTimeout = Conditions(rawValue: 1 << 6)
        /// gRPC statuses (from a trailers-only response).
        public static let grpcUnavailable = Conditions(rawValue: 1 << 7)
        public static let grpcCancelled = Conditions(rawValue: 1 << 8)
        public static let grpcDeadlineExceeded = Conditions(rawValue: 1 << 9)
        public static let grpcResourceExhausted = Conditions(rawValue: 1 << 10)
        public static let grpcInternal = Conditions(rawValue: 1 << 11)

        /// The config names (`on: [...]`) and what they mean.
        public static let names: [(String, Conditions)] = [
            ("connect-failure", .connectFailure), ("refused-stream", .refusedStream), ("reset", .reset),
            ("gateway-error", .gatewayError), ("5xx", .fiveXX), ("retriable-status-codes", .retriableStatusCodes),
            ("per-try-timeout", .perTryTimeout), ("unavailable", .grpcUnavailable), ("cancelled", .grpcCancelled),
            ("deadline-exceeded", .grpcDeadlineExceeded), ("resource-exhausted", .grpcResourceExhausted),
            ("internal", .grpcInternal),
        ]
    }

    /// Tries in all, the first included (1 = no retry). 1 ... 10.
    public var attempts: Int
    public var on: Conditions
    /// For `.retriableStatusCodes` (100 ... 611), as a bit set: the policy is a plain value, copied
    /// into each request that has one without reference counting.
    var statusBits: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    public var statusCodes: [Int] {
        get { (100...611).filter(hasStatus) }
        set {
            statusBits = (0, 0, 0, 0, 0, 0, 0, 0)
            withUnsafeMutableBytes(of: &statusBits) { w in
                let words = w.bindMemory(to: UInt64.self)
                for s in newValue where (100...611).contains(s) { words[(s - 100) >> 6] |= 1 << UInt64((s - 100) & 63) }
            }
        }
    }
    @inline(__always)
    func hasStatus(_ s: Int) -> Bool {
        guard s >= 100 && s <= 611 else { return false }
        return withUnsafeBytes(of: statusBits) { $0.bindMemory(to: UInt64.self)[(s - 100) >> 6] >> UInt64((s - 100) & 63) & 1 == 1 }
    }
    /// Each try's time to its response head, ms; 0 = none (the route timeout still bounds them all).
    public var perTryTimeout: UInt64
    /// Full-jitter backoff between tries: try n waits uniform in 0 ... min(max, base × 2ⁿ⁻¹), ms.
    public var backoffBase: UInt64
    public var backoffMax: UInt64
    /// Methods that may be retried (exact, "GET"); nil = the idempotent ones (GET, HEAD, OPTIONS,
    /// TRACE, PUT, DELETE). Kept as a bit set of the standard methods (`methodBits`; others are not
    /// retried).
    public var methods: [String]? {
        get { methodBits.map { b in RetryPolicy.methodNames.indices.filter { b & (1 << $0) != 0 }.map { RetryPolicy.methodNames[$0].description } } }
        set {
            methodBits = newValue.map { list in
                list.reduce(UInt16(0)) { acc, m in
                    acc | (RetryPolicy.methodNames.firstIndex { $0.description == m }.map { UInt16(1) << UInt16($0) } ?? 0)
                }
            }
        }
    }
    var methodBits: UInt16?
    static let methodNames: [StaticString] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT"]

    /// Whether a request with this method (exact bytes) may be retried by `methods`; nil when the
    /// policy lists none (the idempotent default applies).
    public func allowsMethod(_ m: UnsafeRawBufferPointer) -> Bool? {
        guard let bits = methodBits else { return nil }
        for (i, name) in RetryPolicy.methodNames.enumerated() where bits & (1 << UInt16(i)) != 0 {
            if m.count == name.utf8CodeUnitCount && (m.count == 0 || memcmp(m.baseAddress!, name.utf8Start, m.count) == 0) { return true }
        }
        return false
    }
    /// Hedging: when the first try has no response head after this many ms, a second try starts on
    /// another endpoint and the first head to arrive wins (the other try is cancelled); 0 = off.
    /// The hedge is one of `attempts` and counts against the retry budget.
    public var hedgeAfter: UInt64 = 0

    public init(attempts: Int = 2, on: Conditions = [.connectFailure, .refusedStream, .reset, .gatewayError],
                statusCodes: [Int] = [], perTryTimeout: UInt64 = 0, backoffBase: UInt64 = 25, backoffMax: UInt64 = 250,
                methods: [String]? = nil) {
        self.attempts = attempts; self.on = on; self.perTryTimeout = perTryTimeout
        self.backoffBase = backoffBase; self.backoffMax = max(backoffMax, backoffBase)
        self.statusCodes = statusCodes
        self.methods = methods
    }

    /// Whether an attempt that ended like `o` meets a retry condition. `o.status` is the response
    /// head's (0 without one); `o.grpcStatus` a trailers-only response's (-1 without).
    public func matches(_ o: AttemptOutcome) -> Bool {
        switch o.kind {
        case .connectFailure: return !on.isDisjoint(with: [.connectFailure, .gatewayError, .fiveXX])
        case .refused: return !on.isDisjoint(with: [.refusedStream, .reset, .gatewayError, .fiveXX])
        case .reset, .protocolError: return !on.isDisjoint(with: [.reset, .gatewayError, .fiveXX])
        case .timeout: return !on.isDisjoint(with: [.perTryTimeout, .gatewayError, .fiveXX])   // as a 504
        case .cancelled: return false
        case .response:
            let s = o.status
            if s >= 500 && on.contains(.fiveXX) { return true }
            if (s == 502 || s == 503 || s == 504) && on.contains(.gatewayError) { return true }
            if on.contains(.retriableStatusCodes) && hasStatus(s) { return true }
            switch o.grpcStatus {
            case 14: return on.contains(.grpcUnavailable)
            case 1: return on.contains(.grpcCancelled)
            case 4: return on.contains(.grpcDeadlineExceeded)
            case 8: return on.contains(.grpcResourceExhausted)
            case 13: return on.contains(.grpcInternal)
            default: return false
            }
        }
    }
}

/// Retries in flight for one cluster in one worker, bounded by a share of its active requests
/// (Envoy's retry budget, Linkerd's default behaviour): retries may not exceed `percent` of the
/// requests active on the cluster, with `minConcurrency` always allowed. Retries waiting in backoff
/// count too. Without it, every failing request multiplies into `attempts` requests exactly when the
/// backend can least take them.
public struct RetryBudget: Sendable, Equatable {
    /// Share of active requests that may be retries, 0 ... 100.
    public let percent: Double
    /// Retries always allowed, whatever the load (a quiet cluster can still retry).
    public let minConcurrency: Int
    /// Retries admitted and not yet released.
    public private(set) var outstanding = 0

    public init(percent: Double = 20, minConcurrency: Int = 3) {
        self.percent = percent; self.minConcurrency = minConcurrency
    }

    /// How many retries may be outstanding with `activeRequests` requests active on the cluster.
    public func limit(activeRequests: Int) -> Int {
        max(minConcurrency, Int(Double(activeRequests) * percent / 100))
    }

    /// Admits one more retry (it must be `release`d when it ends); false when over the budget.
    public mutating func admit(activeRequests: Int) -> Bool {
        guard outstanding < limit(activeRequests: activeRequests) else { return false }
        outstanding += 1
        return true
    }

    public mutating func release() { if outstanding > 0 { outstanding -= 1 } }
}

/// What to do after an attempt ended without anything having reached the client.
public enum RetryDecision: Equatable, Sendable {
    /// Try again after this many ms.
    case retry(after: UInt64)
    /// Do not: give the client this attempt's answer (or the proxy's error for it).
    case stop(RetryRefusal)
}

/// Why an attempt is not retried (each has its counter).
public enum RetryRefusal: Equatable, Sendable {
    /// The outcome meets no retry condition (or there is no policy).
    case notRetriable
    /// `attempts` tries were made (`upstream_rq_retry_limit_exceeded`).
    case limitExceeded
    /// The method may not be retried (non-idempotent without being listed).
    case method
    /// The request body outgrew the replay buffer.
    case bodyTooLarge
    /// The cluster's retry budget is spent (`upstream_rq_retry_overflow`).
    case budget
    /// The server said not to (`Retry-After` or `grpc-retry-pushback-ms` unparsable or negative),
    /// or the wait would pass the route's deadline.
    case pushback
}

/// One request's retries: how many tries so far and the backoff between them. A value in the
/// exchange; the decision is pure, on injected randomness.
public struct RetryState: Sendable {
    public let policy: RetryPolicy
    /// Tries started so far (the first included).
    public private(set) var tries = 1
    var backoff: Backoff

    public init(policy: RetryPolicy) {
        self.policy = policy
        backoff = Backoff(base: max(policy.backoffBase, 1), cap: max(policy.backoffMax, policy.backoffBase, 1))
    }

    /// Decides about an attempt that ended as `outcome`, before anything of it reached the client.
    /// `methodAllowed` and `replayable` are the request's; `pushback` is the server's requested
    /// wait in ms (nil: none said, `.max`: "don't retry"); `remaining` the ms left before the route's
    /// deadline (nil: none). On `.retry` the try is counted; the caller then asks the budget.
    public mutating func decide<R: RandomSource>(_ outcome: AttemptOutcome, methodAllowed: Bool, replayable: Bool,
                                                 pushback: UInt64?, remaining: UInt64?, random: inout R) -> RetryDecision {
        guard policy.matches(outcome) else { return .stop(.notRetriable) }
        guard tries < policy.attempts else { return .stop(.limitExceeded) }
        guard methodAllowed else { return .stop(.method) }
        guard replayable else { return .stop(.bodyTooLarge) }
        let wait: UInt64
        if let p = pushback {
            if p == .max { return .stop(.pushback) }
            wait = p
        } else {
            wait = backoff.next(random: &random)
        }
        if let r = remaining, wait >= r { return .stop(.pushback) }
        tries += 1
        return .retry(after: wait)
    }

    /// Whether the first try, still without a head after `policy.hedgeAfter`, gets a hedge: only the
    /// first try is hedged, and only while `attempts` allows another try (which the hedge then is).
    public mutating func hedge() -> Bool {
        guard policy.hedgeAfter != 0, tries == 1, tries < policy.attempts else { return false }
        tries += 1
        return true
    }
}

/// A server's request to wait before retrying: `Retry-After` in seconds (on a 503 or 429), or gRPC's
/// `grpc-retry-pushback-ms` (gRFC A6). nil: the header is absent; `.max`: present but negative or
/// unparsable, which means "do not retry" (A6); else the wait in ms.
public enum RetryPushback {
    /// `Retry-After: N` (delta-seconds; an HTTP date is treated as unparsable).
    public static func retryAfter(_ v: UnsafeRawBufferPointer) -> UInt64 {
        guard let s = decimal(v), s <= 86_400 else { return .max }
        return s * 1000
    }

    /// `grpc-retry-pushback-ms: N`.
    public static func grpcPushback(_ v: UnsafeRawBufferPointer) -> UInt64 {
        guard let ms = decimal(v), ms <= 86_400_000 else { return .max }
        return ms
    }

    static func decimal(_ v: UnsafeRawBufferPointer) -> UInt64? {
        var n: UInt64 = 0
        var digits = 0
        for c in v {
            if c == 0x20 || c == 0x09 { if digits == 0 { continue } else { break } }
            guard c >= 0x30 && c <= 0x39, digits < 12 else { return nil }
            n = n * 10 + UInt64(c - 0x30)
            digits += 1
        }
        return digits > 0 ? n : nil
    }
}
