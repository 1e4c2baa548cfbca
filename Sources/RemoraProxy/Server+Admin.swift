import RemoraAdmin
import RemoraCore

/// The process as the admin endpoints see it (RemoraAdmin's `AdminTarget`), on the main loop.
extension Server: AdminTarget {
    public var readiness: Readiness {
        if draining { return .draining }
        if !ready { return awaitingControl ? .waitingForControl : .starting }
        // Serving the last good configuration while the control server is away: still ready.
        if let sub = subscriber, !sub.connected { return .readyControlUnreachable(staleSeconds: sub.staleSeconds) }
        return .ready
    }

    /// Listeners, clusters and routes of the serving snapshot, then `server.*` and `control.*`.
    public func statsSnapshot() -> StatsSnapshot {
        var out = StatsSnapshot()
        registry?.collect(snapshot, into: &out)
        addTLSStats(into: &out)
        out.add(scope: "server", stat: "workers", value: UInt64(clamping: workerCount), kind: .gauge, help: "Worker threads")
        out.add(scope: "server", stat: "config_version", value: UInt64(clamping: version), kind: .gauge,
                help: "Configurations installed (local) or the control server's version")
        out.add(scope: "server", stat: "draining", value: draining ? 1 : 0, kind: .gauge, help: "1 while draining")
        out.add(scope: "server", stat: "overload_level", value: overloadLevel, kind: .gauge,
                help: "Overload level: 0 normal, 1 refusing requests, 2 refusing connections")
        out.add(scope: "server", stat: "overload_rss_bytes", value: overloadRSS, kind: .gauge,
                help: "Resident set size at the last overload sample, bytes")
        if let sub = subscriber {
            out.add(scope: "control", stat: "connected", value: sub.connected ? 1 : 0, kind: .gauge,
                    help: "1 while the control server answers")
            out.add(scope: "control", stat: "version", value: UInt64(clamping: sub.version), kind: .gauge,
                    help: "The control server's configuration version serving now")
            out.add(scope: "control", stat: "stale_seconds", value: sub.staleSeconds, kind: .gauge,
                    help: "Seconds since the control server last answered")
            out.add(scope: "control", stat: "update_success", value: UInt64(clamping: sub.updates), help: "Configurations applied")
            out.add(scope: "control", stat: "update_rejected", value: UInt64(clamping: sub.rejected), help: "Configurations rejected")
            out.add(scope: "control", stat: "update_failure", value: UInt64(clamping: sub.failures), help: "Failed polls")
        }
        return out
    }

    /// The version the control server gave it, when it has one; else the local install count.
    public var nodeName: String { config.node ?? control?.node ?? "remora" }

    public var configDump: ConfigDump { ConfigDump(version: subscriber?.version ?? version, yaml: source) }

    public func drain(quick: Bool) {
        beginDrain(timeout: quick ? min(config.drainTimeout, 1_000) : config.drainTimeout)
    }
}
