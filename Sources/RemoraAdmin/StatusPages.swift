import RemoraCore

/// One cluster as GET /clusters shows it: plain values the proxy fills on the main loop
/// (`AdminTarget.clusterStatuses`), rendered here. Adding a number is one entry in `fields` (the
/// cluster's) or `HostStatus.fields` (an endpoint's): both renderers show every entry.
public struct ClusterStatus: Sendable, Equatable {
    public var name: String
    /// The load balancer (`round_robin`, `peak_ewma`, …).
    public var lb: String
    /// Cluster-wide numbers by name, in order (`rq_active`, breaker limits and what remains, …).
    public var fields: [StatusField]
    public var endpoints: [HostStatus]

    public init(name: String, lb: String, fields: [StatusField] = [], endpoints: [HostStatus] = []) {
        self.name = name; self.lb = lb; self.fields = fields; self.endpoints = endpoints
    }
}

/// A named number of a cluster or an endpoint.
public struct StatusField: Sendable, Equatable {
    public var name: String
    public var value: Int64
    public init(_ name: String, _ value: Int64) { self.name = name; self.value = value }
}

/// One endpoint of a cluster as GET /clusters shows it (Envoy's `host_statuses`). Not RemoraCore's
/// `EndpointStatus` (the proxy's per-endpoint counters, which fill `fields`): this is the page's row.
public struct HostStatus: Sendable, Equatable {
    /// `host:port`.
    public var address: String
    public var weight: Int
    /// Failing its active health checks.
    public var failedHealthCheck: Bool
    /// Ejected by outlier detection.
    public var ejected: Bool
    /// More per-endpoint numbers by name, in order (active requests, EWMA latency, … where the
    /// proxy keeps them).
    public var fields: [StatusField]

    public init(address: String, weight: Int, failedHealthCheck: Bool = false, ejected: Bool = false, fields: [StatusField] = []) {
        self.address = address; self.weight = weight; self.failedHealthCheck = failedHealthCheck
        self.ejected = ejected; self.fields = fields
    }

    /// Envoy's `health_flags`: `healthy`, or `/failed_active_hc/failed_outlier_check`.
    public var healthFlags: String {
        if !failedHealthCheck && !ejected { return "healthy" }
        return (failedHealthCheck ? "/failed_active_hc" : "") + (ejected ? "/failed_outlier_check" : "")
    }

    public var healthy: Bool { !failedHealthCheck && !ejected }
}

/// One route of a listener as GET /routes shows it: the compiled table in match order, with the
/// requests each backend got (the real canary split).
public struct RouteStatus: Sendable, Equatable {
    public var listener: String
    public var virtualHost: String
    public var name: String
    /// How it matches (`prefix /api`, `exact /x`, `regex …`, `grpc svc/Method`, with methods and
    /// header conditions).
    public var match: String
    /// `forward`, `redirect` or `direct_response`.
    public var action: String
    public var backends: [RouteBackendStatus]

    public init(listener: String, virtualHost: String, name: String, match: String, action: String,
                backends: [RouteBackendStatus] = []) {
        self.listener = listener; self.virtualHost = virtualHost; self.name = name; self.match = match
        self.action = action; self.backends = backends
    }
}

public struct RouteBackendStatus: Sendable, Equatable {
    public var cluster: String
    public var weight: Int
    /// Requests sent to it (`route.<listener>.<route>.<cluster>.upstream_rq_total`).
    public var requests: UInt64
    public init(cluster: String, weight: Int, requests: UInt64) {
        self.cluster = cluster; self.weight = weight; self.requests = requests
    }
}

/// The renderers of GET /clusters and GET /routes: Envoy-like text (`cluster::host::stat::value`)
/// by default, `?format=json`.
public enum StatusPages {
    public static func clustersText(_ cs: [ClusterStatus]) -> String {
        var out = ""
        for c in cs {
            out += "\(c.name)::lb::\(c.lb)\n"
            for f in c.fields { out += "\(c.name)::\(f.name)::\(f.value)\n" }
            for e in c.endpoints {
                let p = "\(c.name)::\(e.address)::"
                out += p + "health_flags::\(e.healthFlags)\n"
                out += p + "weight::\(e.weight)\n"
                for f in e.fields { out += p + "\(f.name)::\(f.value)\n" }
            }
        }
        return out
    }

    public static func clustersJSON(_ cs: [ClusterStatus]) -> String {
        var out = "{\"cluster_statuses\":["
        for (i, c) in cs.enumerated() {
            if i > 0 { out += "," }
            out += "{\"name\":"
            JSONText.appendQuoted(c.name, into: &out)
            out += ",\"lb\":"
            JSONText.appendQuoted(c.lb, into: &out)
            out += ",\"stats\":" + fieldsJSON(c.fields) + ",\"host_statuses\":["
            for (j, e) in c.endpoints.enumerated() {
                if j > 0 { out += "," }
                out += "{\"address\":"
                JSONText.appendQuoted(e.address, into: &out)
                out += ",\"weight\":\(e.weight),\"healthy\":\(e.healthy),\"health_flags\":"
                JSONText.appendQuoted(e.healthFlags, into: &out)
                out += ",\"failed_active_health_check\":\(e.failedHealthCheck),\"failed_outlier_check\":\(e.ejected)"
                out += ",\"stats\":" + fieldsJSON(e.fields) + "}"
            }
            out += "]}"
        }
        return out + "]}\n"
    }

    static func fieldsJSON(_ fs: [StatusField]) -> String {
        var out = "{"
        for (i, f) in fs.enumerated() {
            if i > 0 { out += "," }
            JSONText.appendQuoted(f.name, into: &out)
            out += ":\(f.value)"
        }
        return out + "}"
    }

    public static func routesText(_ rs: [RouteStatus]) -> String {
        var out = ""
        for r in rs {
            let p = "\(r.listener)::\(r.virtualHost)::\(r.name)::"
            out += p + "match::\(r.match)\n"
            out += p + "action::\(r.action)\n"
            let total = r.backends.reduce(0) { $0 + $1.requests }
            for b in r.backends {
                let share = total == 0 ? "-" : String(Double(b.requests * 1000 / total) / 10) + "%"
                out += p + "backend::\(b.cluster)::weight::\(b.weight)::requests::\(b.requests)::share::\(share)\n"
            }
        }
        return out
    }

    public static func routesJSON(_ rs: [RouteStatus]) -> String {
        var out = "{\"routes\":["
        for (i, r) in rs.enumerated() {
            if i > 0 { out += "," }
            out += "{"
            for (k, (key, v)) in [("listener", r.listener), ("virtual_host", r.virtualHost), ("name", r.name),
                                  ("match", r.match), ("action", r.action)].enumerated() {
                if k > 0 { out += "," }
                out += "\"\(key)\":"
                JSONText.appendQuoted(v, into: &out)
            }
            out += ",\"backends\":["
            for (j, b) in r.backends.enumerated() {
                if j > 0 { out += "," }
                out += "{\"cluster\":"
                JSONText.appendQuoted(b.cluster, into: &out)
                out += ",\"weight\":\(b.weight),\"requests\":\(b.requests)}"
            }
            out += "]}"
        }
        return out + "]}\n"
    }
}
