/// `health_check:` — active probes of a cluster's endpoints, run once per process (the main loop).
/// Durations in milliseconds.
public struct HealthCheckConfig: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A TCP connect that succeeds passes.
        case tcp
        /// `GET path` (HTTP/1.1, kept alive between probes); a status in `expect` passes.
        case http(path: String, expect: [Int])
        /// `grpc.health.v1.Health/Check` for `service` ("" = the server as a whole) over HTTP/2
        /// (h2c, prior knowledge, one connection kept between probes); SERVING passes, any other
        /// status, a gRPC error, a reset or a timeout fails.
        case grpc(service: String)
    }

    public var kind: Kind
    /// Between the end of one probe and the start of the next, ± `jitterPercent`. Default 5 s.
    public var interval: UInt64
    /// A probe not answered within this fails. Default 1 s.
    public var timeout: UInt64
    /// Each interval is drawn uniformly in interval × (1 ± jitter/100), so endpoints are not probed in
    /// lockstep. Default 10, range 0 ... 100.
    public var jitterPercent: Int
    /// Failed probes in a row that take a healthy endpoint out. Default 3, range 1 ... 100.
    public var unhealthyThreshold: Int
    /// Passed probes in a row that bring an unhealthy endpoint back. Default 2, range 1 ... 100.
    public var healthyThreshold: Int

    public init(kind: Kind, interval: UInt64 = 5_000, timeout: UInt64 = 1_000, jitterPercent: Int = 10,
                unhealthyThreshold: Int = 3, healthyThreshold: Int = 2) {
        self.kind = kind; self.interval = interval; self.timeout = timeout; self.jitterPercent = jitterPercent
        self.unhealthyThreshold = unhealthyThreshold; self.healthyThreshold = healthyThreshold
    }

    /// The wait before the next probe, `random` uniform in UInt64.
    public func nextDelay(random: UInt64) -> UInt64 {
        let spread = interval * UInt64(jitterPercent) / 100
        if spread == 0 { return interval }
        let offset = random.multipliedFullWidth(by: 2 * spread + 1).high
        return interval - spread + offset
    }
}

/// One endpoint's health as its probes say: it flips only after `threshold` results in a row the
/// other way, whatever kind of failure (a refused connect, a timeout, a bad status), so a single
/// failed probe never takes a healthy endpoint out. Endpoints start healthy (traffic flows from the
/// start; the first probes can take one out).
///
/// An endpoint that joins a running cluster's set (a DNS refresh, a reload that adds it) starts
/// `pendingFirstCheck` instead, as Envoy's hosts added under active health checking do: out of load
/// balancing until its first probe, which then decides alone (a pass brings it in at once; a
/// failure leaves it out, to come back by `healthyThreshold` passes like any unhealthy endpoint).
public struct HealthState: Sendable, Equatable {
    public private(set) var healthy = true
    /// Results in a row against the current state.
    public private(set) var streak = 0
    /// Not probed yet since it joined the set (then also not `healthy`).
    public private(set) var pending = false

    public init() {}

    /// A new endpoint of a running cluster: out until its first probe passes.
    public static var pendingFirstCheck: HealthState {
        var s = HealthState()
        s.healthy = false
        s.pending = true
        return s
    }

    /// One probe's result; returns the new state when it flipped.
    public mutating func record(passed: Bool, unhealthyThreshold: Int, healthyThreshold: Int) -> Bool? {
        if pending {
            pending = false
            if passed { healthy = true; streak = 0; return true }
            return nil
        }
        if passed == healthy { streak = 0; return nil }
        streak += 1
        if streak >= (healthy ? unhealthyThreshold : healthyThreshold) {
            healthy = passed
            streak = 0
            return healthy
        }
        return nil
    }
}
