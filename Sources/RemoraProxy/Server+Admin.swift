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

// MARK: GET /clusters and GET /routes

extension Server {
    /// The serving snapshot's clusters: cluster-wide numbers (active requests, breaker limits and
    /// what remains of them), then each endpoint's address, weight, health, ejection and the
    /// numbers the workers keep for it (active and total attempts, errors, peak-EWMA latency).
    public func clusterStatuses() -> [ClusterStatus] {
        guard let snapshot, let registry else { return [] }
        return snapshot.config.clusters.enumerated().map { i, c in
            let shared = snapshot.shared[i]
            let blocks = registry.blocks(&registry.clusters, c.name)
            var fields = [StatusField("rq_active", Int64(bitPattern: blocks.reduce(0) { $0 &+ $1.load(.upstream_rq_active) })),
                          StatusField("rq_total", Int64(clamping: blocks.reduce(0) { $0 &+ $1.load(.upstream_rq_total) }))]
            if let b = c.circuitBreaker {
                for (count, name, limit) in [(ClusterShared.Count.connections, "max_connections", b.maxConnections),
                                             (.pending, "max_pending_requests", b.maxPending),
                                             (.requests, "max_requests", b.maxRequests), (.retries, "max_retries", b.maxRetries)] {
                    fields.append(StatusField("default_priority::\(name)", Int64(limit)))
                    fields.append(StatusField("default_priority::\(name)::in_use", max(0, shared.load(count))))
                }
            }
            // One row per endpoint address (a name resolves to several; `dns_refresh` follows it),
            // with the numbers each worker keeps for it, summed (ClusterShared.endpointStatus).
            let endpoints = shared.endpointStatus(now: loop.now).map { e in
                var fields = [StatusField("rq_active", Int64(clamping: e.activeRequests)),
                              StatusField("rq_total", Int64(clamping: e.requestsTotal)),
                              StatusField("rq_error", Int64(clamping: e.requestErrors)),
                              StatusField("rq_5xx", Int64(clamping: e.responses5xx)),
                              StatusField("rq_local_failure", Int64(clamping: e.localFailures))]
                if let ms = e.latencyMs { fields.append(StatusField("ewma_latency_us", Int64(ms * 1000))) }
                return HostStatus(address: e.address, weight: e.weight, failedHealthCheck: e.failedHealthCheck,
                                  ejected: e.ejected, fields: fields)
            }
            return ClusterStatus(name: c.name, lb: c.lb.rawValue, fields: fields, endpoints: endpoints)
        }
    }

    /// Every HTTP listener's routes in match order, with the requests each backend got.
    public func routeStatuses() -> [RouteStatus] {
        guard let snapshot, let registry else { return [] }
        var out: [RouteStatus] = []
        for (l, listener) in snapshot.config.listeners.enumerated() where listener.protocol == .http {
            let table = snapshot.routeTables[l]
            var configs: [String: RouteConfig] = [:]
            for vh in listener.virtualHosts { for r in vh.routes { configs[r.name] = r } }
            for info in table.info {
                let rc = configs[info.name]
                let backends = info.backends.map { b in
                    let name = "\(listener.name).\(info.name).\(b.clusterName)"
                    let hits = registry.blocks(&registry.routes, name).reduce(0) { $0 &+ $1.load(.upstream_rq_total) }
                    return RouteBackendStatus(cluster: b.clusterName, weight: Int(b.weight), requests: hits)
                }
                out.append(RouteStatus(listener: listener.name, virtualHost: info.virtualHost, name: info.name,
                                       match: rc.map { Server.describe($0.match) } ?? "?", action: rc.map { Server.describe($0.action) } ?? "?",
                                       backends: backends))
            }
        }
        return out
    }

    static func describe(_ m: RouteMatch) -> String {
        var parts: [String] = []
        if let g = m.grpc { parts.append("grpc \(g.service)/\(g.method ?? "*")") } else {
            let kind: String
            switch m.path.kind {
            case .prefix: kind = "prefix"
            case .exact: kind = "exact"
            case .regex: kind = "regex"
            }
            parts.append("\(kind) \(m.path.value)" + (m.path.ignoreCase ? " (ignoring case)" : ""))
        }
        if !m.methods.isEmpty { parts.append("methods " + m.methods.joined(separator: ",")) }
        if !m.headers.isEmpty { parts.append("\(m.headers.count) header condition(s)") }
        if !m.queryParameters.isEmpty { parts.append("\(m.queryParameters.count) query condition(s)") }
        return parts.joined(separator: ", ")
    }

    static func describe(_ a: RouteAction) -> String {
        switch a {
        case .forward: return "forward"
        case .redirect: return "redirect"
        case .respond: return "direct_response"
        }
    }
}
