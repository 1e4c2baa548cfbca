import RemoraCore

/// One admin endpoint: a path, whether it changes state, and its answer. Adding an endpoint is one
/// entry in `AdminEndpoint.all` below (its answer beside it); the router (AdminRouter.swift) does
/// the rest: who may call it, the method, HEAD, and the 404 list.
public struct AdminEndpoint: Sendable {
    public typealias Request = LocalHTTPServer.Request
    public typealias Response = LocalHTTPServer.Response

    /// The path, matched exactly (the query is ignored).
    public let path: String
    /// true: POST only, and the cross-origin and token checks apply (it drains, stops, changes
    /// something); false: GET and HEAD only (it reads). Nothing changes state on GET.
    public let changesState: Bool
    /// The answer, on the main loop, once the router has admitted the request (HEAD gets its head).
    public let answer: @Sendable (Request, any AdminTarget) -> Response

    public init(_ path: String, changesState: Bool = false,
                answer: @escaping @Sendable (Request, any AdminTarget) -> Response) {
        self.path = path; self.changesState = changesState; self.answer = answer
    }
}

extension AdminEndpoint {
    /// The admin server's endpoints, in the order the 404 answer lists them.
    public static let all: [AdminEndpoint] = [dashboard, ready, stats, prometheusStats, clusters, routes, configDump,
                                              certs, drain, quitquitquit]

    /// The live dashboard: one self-contained HTML page (no external assets) that polls
    /// `/stats?format=json` and `/clusters?format=json` (Dashboard.swift).
    public static let dashboard = AdminEndpoint("/") { _, _ in
        .init(status: 200, contentType: "text/html; charset=utf-8", body: Dashboard.html)
    }

    /// Every cluster's endpoints: health, ejection, weight and the numbers the proxy keeps per
    /// endpoint; Envoy-like `cluster::host::stat::value` lines, `?format=json`.
    public static let clusters = AdminEndpoint("/clusters") { r, target in
        let cs = target.clusterStatuses()
        if format(r.query) == "json" { return .init(status: 200, contentType: "application/json", body: StatusPages.clustersJSON(cs)) }
        return .init(status: 200, body: StatusPages.clustersText(cs))
    }

    /// The compiled route tables in match order, with the requests each backend got; `?format=json`.
    public static let routes = AdminEndpoint("/routes") { r, target in
        let rs = target.routeStatuses()
        if format(r.query) == "json" { return .init(status: 200, contentType: "application/json", body: StatusPages.routesJSON(rs)) }
        return .init(status: 200, body: StatusPages.routesText(rs))
    }

    /// 200 while serving (also while the control server is away: the last good configuration
    /// still serves), 503 while starting, waiting for a first configuration, or draining.
    public static let ready = AdminEndpoint("/ready") { _, target in
        switch target.readiness {
        case .draining: return .init(status: 503, body: "draining\n")
        case .starting: return .init(status: 503, body: "starting\n")
        case .waitingForControl: return .init(status: 503, body: "waiting for the control server\n")
        case .readyControlUnreachable(let stale):
            return .init(status: 200, body: "ready (control server unreachable, \(stale)s stale)\n")
        case .ready: return .init(status: 200, body: "ready\n")
        }
    }

    /// Every counter, gauge and histogram, summed over workers: `scope.name.stat value` lines;
    /// `?format=json`: JSON (what the dashboard polls); `?format=prometheus`: as /stats/prometheus.
    public static let stats = AdminEndpoint("/stats") { r, target in
        let s = target.statsSnapshot()
        switch format(r.query) {
        case "json": return .init(status: 200, contentType: "application/json", body: StatsRenderers.json(s))
        case "prometheus": return prometheusAnswer(s, target)
        default: return .init(status: 200, body: StatsRenderers.text(s))
        }
    }

    /// Prometheus text format 0.0.4: Envoy's names, then Istio's request metrics.
    public static let prometheusStats = AdminEndpoint("/stats/prometheus") { _, target in
        prometheusAnswer(target.statsSnapshot(), target)
    }

    static func prometheusAnswer(_ s: StatsSnapshot, _ target: any AdminTarget) -> Response {
        .init(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
              body: StatsRenderers.prometheus(s, node: target.nodeName))
    }

    /// The value of `format=` in a query ("" when absent).
    static func format(_ query: Substring) -> Substring {
        for part in query.split(separator: "&") where part.hasPrefix("format=") { return part.dropFirst(7) }
        return ""
    }

    /// The YAML serving now, after a `# version N` line.
    public static let configDump = AdminEndpoint("/config_dump") { _, target in
        let dump = target.configDump
        return .init(status: 200, contentType: "application/yaml", body: "# version \(dump.version)\n" + dump.yaml)
    }

    /// Every loaded certificate as JSON: `{"certificates": [{name, path, subject, serial, not_after,
    /// seconds_left, uri_sans, dns_sans}]}` (Envoy's /certs, simplified).
    public static let certs = AdminEndpoint("/certs") { _, target in
        var out = "{\"certificates\":["
        for (i, c) in target.certificates().enumerated() {
            if i > 0 { out += "," }
            out += "{\"name\":"; JSONText.appendQuoted(c.name, into: &out)
            out += ",\"path\":"; JSONText.appendQuoted(c.path, into: &out)
            out += ",\"subject\":"; JSONText.appendQuoted(c.subject, into: &out)
            out += ",\"serial\":"; JSONText.appendQuoted(c.serial, into: &out)
            out += ",\"not_after\":\(c.notAfter),\"seconds_left\":\(c.secondsLeft),\"uri_sans\":["
            for (j, u) in c.uriSANs.enumerated() { if j > 0 { out += "," }; JSONText.appendQuoted(u, into: &out) }
            out += "],\"dns_sans\":["
            for (j, d) in c.dnsSANs.enumerated() { if j > 0 { out += "," }; JSONText.appendQuoted(d, into: &out) }
            out += "]}"
        }
        out += "]}\n"
        return .init(status: 200, contentType: "application/json", body: out)
    }

    /// Graceful drain (up to `drain_timeout`), then exit 0.
    public static let drain = AdminEndpoint("/drain", changesState: true) { _, target in
        target.drain(quick: false)
        return .init(status: 200, body: "draining; the process exits when in-flight requests are done\n")
    }

    /// Drain for at most 1 s, then exit 0.
    public static let quitquitquit = AdminEndpoint("/quitquitquit", changesState: true) { _, target in
        target.drain(quick: true)
        return .init(status: 200, body: "exiting\n")
    }
}
