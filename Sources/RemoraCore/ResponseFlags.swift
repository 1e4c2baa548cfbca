/// Why a request ended as it did, in Envoy's letters (its `%RESPONSE_FLAGS%`): every answer the
/// proxy made itself and every failure sets one or more; a plain forwarded response sets none
/// ("-"). Used by access logs and by Istio's `response_flags` label. docs/observability.md lists
/// when each is set.
public struct ResponseFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// No healthy upstream host in the cluster.
    public static let UH = ResponseFlags(rawValue: 1 << 0)
    /// The upstream connection failed (refused, unreachable, connect timeout).
    public static let UF = ResponseFlags(rawValue: 1 << 1)
    /// Upstream overflow: a limit (`max_connects_per_second`, later breakers) refused the attempt.
    public static let UO = ResponseFlags(rawValue: 1 << 2)
    /// No route matched.
    public static let NR = ResponseFlags(rawValue: 1 << 3)
    /// The request was retried and the retries were used up.
    public static let URX = ResponseFlags(rawValue: 1 << 4)
    /// The request did not arrive whole within `request_timeout`.
    public static let DT = ResponseFlags(rawValue: 1 << 5)
    /// The client went away (connection closed or stream reset) before the response was complete.
    public static let DC = ResponseFlags(rawValue: 1 << 6)
    /// No response head within the route timeout, or the gRPC deadline passed.
    public static let UT = ResponseFlags(rawValue: 1 << 7)
    /// The proxy reset the request locally.
    public static let LR = ResponseFlags(rawValue: 1 << 8)
    /// The upstream reset the stream (HTTP/2 RST_STREAM, REFUSED_STREAM).
    public static let UR = ResponseFlags(rawValue: 1 << 9)
    /// The upstream closed the connection before the response was complete.
    public static let UC = ResponseFlags(rawValue: 1 << 10)
    /// Delayed by fault injection.
    public static let DI = ResponseFlags(rawValue: 1 << 11)
    /// Aborted by fault injection.
    public static let FI = ResponseFlags(rawValue: 1 << 12)
    /// Refused by a rate limit.
    public static let RL = ResponseFlags(rawValue: 1 << 13)
    /// The stream made no progress for the listener's idle timeout.
    public static let SI = ResponseFlags(rawValue: 1 << 14)
    /// Downstream protocol error (an invalid request).
    public static let DPE = ResponseFlags(rawValue: 1 << 15)
    /// Upstream protocol error (an invalid response).
    public static let UPE = ResponseFlags(rawValue: 1 << 16)
    /// The upstream stream lasted longer than its maximum duration.
    public static let UMSDR = ResponseFlags(rawValue: 1 << 17)
    /// Refused by the overload manager (`overload:`).
    public static let OM = ResponseFlags(rawValue: 1 << 18)
    /// Denied by an authorization policy (`authorization:`). Envoy sets no flag for its RBAC
    /// filter's denials and this letter for ext_authz's; Remora uses it for both kinds of
    /// authorization, so a 403 from the proxy is told apart from an upstream's (envoy#21197).
    public static let UAEX = ResponseFlags(rawValue: 1 << 19)

    /// Every flag with its letters, in Envoy's order.
    public static let all: [(ResponseFlags, String)] = [
        (.UH, "UH"), (.UF, "UF"), (.UO, "UO"), (.NR, "NR"), (.URX, "URX"), (.DT, "DT"), (.DC, "DC"), (.UT, "UT"),
        (.LR, "LR"), (.UR, "UR"), (.UC, "UC"), (.DI, "DI"), (.FI, "FI"), (.RL, "RL"), (.SI, "SI"), (.DPE, "DPE"),
        (.UPE, "UPE"), (.UMSDR, "UMSDR"), (.OM, "OM"), (.UAEX, "UAEX"),
    ]

    /// "UF,URX", or "-" when none is set (Envoy's format).
    public var letters: String {
        if isEmpty { return "-" }
        var out = ""
        for (f, l) in ResponseFlags.all where contains(f) { out += out.isEmpty ? l : "," + l }
        return out
    }

    /// Appends `letters` to `out` without building a String (the access log's writer).
    public func appendLetters(to out: inout [UInt8]) {
        if isEmpty { out.append(0x2D); return }
        var first = true
        for (f, l) in ResponseFlags.all where contains(f) {
            if !first { out.append(0x2C) }
            first = false
            out.append(contentsOf: l.utf8)
        }
    }
}
