/// `outlier_detection:` — endpoints that fail in a row are ejected for a while, decided once per
/// process (Envoy's outlier detection, its consecutive kinds). A count of 0 turns that kind off.
/// Durations in milliseconds.
public struct OutlierDetectionConfig: Sendable, Equatable {
    /// 5xx responses and local failures in a row. Default 5, range 0 ... 1_000.
    public var consecutive5xx: Int
    /// 502, 503, 504 and local failures in a row. Default 5, range 0 ... 1_000.
    public var consecutiveGatewayErrors: Int
    /// Connect failures, resets, timeouts, invalid responses in a row. Default 5, range 0 ... 1_000.
    public var consecutiveLocalFailures: Int
    /// How often ejections are reviewed (returns, and the ejection count decays). Default 10 s.
    public var interval: UInt64
    /// An ejection lasts this × the times the endpoint was ejected. Default 30 s.
    public var baseEjectionTime: UInt64
    /// … capped by this. Default 300 s.
    public var maxEjectionTime: UInt64
    /// At most this share of a cluster's endpoints ejected at once, rounded down, and never the last
    /// one. Default 50 %, range 0 ... 100.
    public var maxEjectionPercent: Int

    public init(consecutive5xx: Int = 5, consecutiveGatewayErrors: Int = 5, consecutiveLocalFailures: Int = 5,
                interval: UInt64 = 10_000, baseEjectionTime: UInt64 = 30_000, maxEjectionTime: UInt64 = 300_000,
                maxEjectionPercent: Int = 50) {
        self.consecutive5xx = consecutive5xx; self.consecutiveGatewayErrors = consecutiveGatewayErrors
        self.consecutiveLocalFailures = consecutiveLocalFailures; self.interval = interval
        self.baseEjectionTime = baseEjectionTime; self.maxEjectionTime = maxEjectionTime
        self.maxEjectionPercent = maxEjectionPercent
    }

    /// The thresholds by kind (`OutlierKind.rawValue`).
    public var thresholds: [Int] { [consecutive5xx, consecutiveGatewayErrors, consecutiveLocalFailures] }
}

/// The kinds of failures in a row outlier detection counts, each with its own threshold.
public enum OutlierKind: Int, Sendable, CaseIterable {
    case consecutive5xx = 0, consecutiveGateway = 1, consecutiveLocal = 2

    public var name: String {
        switch self {
        case .consecutive5xx: return "consecutive_5xx"
        case .consecutiveGateway: return "consecutive_gateway_failure"
        case .consecutiveLocal: return "consecutive_local_origin_failure"
        }
    }

    /// Whether `o` counts as a failure of this kind (true), resets it (false), or says nothing (nil:
    /// a cancellation or a refused stream).
    @inline(__always)
    public func counts(_ o: AttemptOutcome) -> Bool? {
        switch o.kind {
        case .cancelled, .refused: return nil
        case .connectFailure, .reset, .protocolError, .timeout: return true
        case .response:
            switch self {
            case .consecutive5xx: return o.status >= 500
            case .consecutiveGateway: return o.status == 502 || o.status == 503 || o.status == 504
            case .consecutiveLocal: return false
            }
        }
    }
}

/// Outlier detection's decisions for one cluster, made in one place per process (the main loop), so
/// that `max_ejection_percent` holds whatever worker saw the failures. Workers count failures in a
/// row (shared counters) and report an endpoint reaching a threshold; this decides whether it is
/// ejected, for how long (base × times ejected, capped), and when it returns. Pure: time is passed in.
public struct OutlierDetector: Sendable {
    public enum Decision: Equatable, Sendable {
        /// Ejected until this time (ms).
        case ejected(until: UInt64)
        /// Already ejected: nothing changes.
        case alreadyEjected
        /// Not ejected: `max_ejection_percent` (or the last-endpoint rule) would be exceeded.
        case overflow
    }

    public let config: OutlierDetectionConfig
    public let endpoints: Int
    /// Per endpoint: ejected until (ms), 0 = in service.
    public private(set) var ejectedUntil: [UInt64]
    /// Per endpoint: ejections that still count toward the next one's length (decays by one per
    /// interval spent in service).
    public private(set) var timesEjected: [Int]
    public private(set) var ejectedCount = 0

    public init(config: OutlierDetectionConfig, endpoints: Int) {
        self.config = config
        self.endpoints = endpoints
        ejectedUntil = Array(repeating: 0, count: endpoints)
        timesEjected = Array(repeating: 0, count: endpoints)
    }

    /// The detector of a changed endpoint set (a DNS refresh, a reload that moved endpoints): an
    /// endpoint that stays keeps its ejection (until when) and its ejection count from `old`;
    /// `oldIndex` gives, per new endpoint, its position in `old` (nil: new, in service, never
    /// ejected). When the new set is smaller than the carried ejections allow (`maxEjected` of the
    /// new size, never every endpoint), the ejections that end soonest end now: `max_ejection_percent`
    /// holds for the set as it is.
    public init(config: OutlierDetectionConfig, carrying old: OutlierDetector, oldIndex: [Int?]) {
        self.init(config: config, endpoints: oldIndex.count)
        for (i, j) in oldIndex.enumerated() {
            guard let j, j < old.endpoints else { continue }
            ejectedUntil[i] = old.ejectedUntil[j]
            timesEjected[i] = old.timesEjected[j]
            if ejectedUntil[i] != 0 { ejectedCount += 1 }
        }
        while ejectedCount > maxEjected {
            var soonest = -1
            for i in 0..<endpoints where ejectedUntil[i] != 0 && (soonest < 0 || ejectedUntil[i] < ejectedUntil[soonest]) {
                soonest = i
            }
            ejectedUntil[soonest] = 0
            ejectedCount -= 1
        }
    }

    /// How many may be ejected at once: the share rounded down, and never every endpoint.
    public var maxEjected: Int { min(endpoints - 1, endpoints * config.maxEjectionPercent / 100) }

    public func isEjected(_ i: Int) -> Bool { ejectedUntil[i] != 0 }

    /// Endpoint `i` reached a threshold at `now`.
    public mutating func failed(endpoint i: Int, now: UInt64) -> Decision {
        if ejectedUntil[i] != 0 { return .alreadyEjected }
        if ejectedCount >= maxEjected { return .overflow }
        timesEjected[i] += 1
        let (t, o) = config.baseEjectionTime.multipliedReportingOverflow(by: UInt64(timesEjected[i]))
        let until = now &+ min(o ? config.maxEjectionTime : t, config.maxEjectionTime)
        ejectedUntil[i] = max(until, 1)
        ejectedCount += 1
        return .ejected(until: ejectedUntil[i])
    }

    /// The review every `interval`: endpoints whose ejection is over return (listed); those in
    /// service with earlier ejections have one forgiven.
    public mutating func tick(now: UInt64) -> [Int] {
        var returned: [Int] = []
        for i in 0..<endpoints {
            if ejectedUntil[i] != 0 {
                if now >= ejectedUntil[i] {
                    ejectedUntil[i] = 0
                    ejectedCount -= 1
                    returned.append(i)
                }
            } else if timesEjected[i] > 0 {
                timesEjected[i] -= 1
            }
        }
        return returned
    }
}
