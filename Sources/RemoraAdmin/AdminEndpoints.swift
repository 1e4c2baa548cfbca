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
    public static let all: [AdminEndpoint] = [ready, stats, configDump, drain, quitquitquit]

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

    /// Every counter and gauge, summed over workers: `scope.name.stat value` lines.
    public static let stats = AdminEndpoint("/stats") { _, target in
        .init(status: 200, body: StatsRenderers.text(target.statsSnapshot()))
    }

    /// The YAML serving now, after a `# version N` line.
    public static let configDump = AdminEndpoint("/config_dump") { _, target in
        let dump = target.configDump
        return .init(status: 200, contentType: "application/yaml", body: "# version \(dump.version)\n" + dump.yaml)
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
