/// One endpoint of a cluster as the whole process sees it (summed over workers), read on the main
/// loop for the admin's `/clusters` page: Envoy's per-host `rq_total`, `rq_error`, `rq_active`,
/// `health_flags`, `weight`, plus the peak-EWMA latency. Produced by RemoraProxy
/// (`Server.endpointStatus(cluster:)`); a plain value, safe to render anywhere.
public struct EndpointStatus: Sendable, Equatable {
    /// "10.0.0.5:9000" (`[::1]:9000` for IPv6).
    public var address: String
    /// Its relative share, 1 ... 10_000 (`{ address, weight }`).
    public var weight: Int
    /// Attempts under way now (Envoy's `rq_active`).
    public var activeRequests: UInt64
    /// Attempts started since the endpoint set began (Envoy's `rq_total`): the ended ones plus those
    /// under way.
    public var requestsTotal: UInt64
    /// Attempts answered with a 5xx status.
    public var responses5xx: UInt64
    /// Attempts that failed without a response: connect failure, reset, timeout, invalid response.
    public var localFailures: UInt64
    /// Envoy's `rq_error`: 5xx answers and local failures.
    public var requestErrors: UInt64 { responses5xx + localFailures }
    /// Failing its active health checks (Envoy's health flag `/failed_active_hc`).
    public var failedHealthCheck: Bool
    /// Ejected by outlier detection (`/failed_outlier_check`).
    public var ejected: Bool
    /// Peak-EWMA latency estimate, ms, decayed to now (the mean over workers that have measured it);
    /// nil when the cluster does not balance by it (`lb: peak_ewma`) or nothing was measured yet.
    public var latencyMs: Double?

    public init(address: String, weight: Int, activeRequests: UInt64 = 0, requestsTotal: UInt64 = 0,
                responses5xx: UInt64 = 0, localFailures: UInt64 = 0, failedHealthCheck: Bool = false,
                ejected: Bool = false, latencyMs: Double? = nil) {
        self.address = address; self.weight = weight; self.activeRequests = activeRequests
        self.requestsTotal = requestsTotal; self.responses5xx = responses5xx; self.localFailures = localFailures
        self.failedHealthCheck = failedHealthCheck; self.ejected = ejected; self.latencyMs = latencyMs
    }

    /// Envoy's `health_flags` text: `healthy`, or the reasons joined by `|`.
    public var healthFlags: String {
        var f: [String] = []
        if failedHealthCheck { f.append("/failed_active_hc") }
        if ejected { f.append("/failed_outlier_check") }
        return f.isEmpty ? "healthy" : f.joined(separator: "|")
    }
}
