import RemoraIO

/// Picks the endpoint for a request and decides who may call it, before any endpoint runs (docs/config.md,
/// "Admin endpoints"). Pure: no sockets, so tests drive it with a request value and a fake target.
///
/// In order: a Host that is not an address of this machine gets 421 on every path (DNS rebinding:
/// /config_dump shows the configuration); an unknown path 404 with the list; a wrong method 405;
/// for a state change, a request from a web page of another origin 403, and one without
/// `admin.token` (when one is set) 401.
public struct AdminRouter: Sendable {
    public typealias Request = LocalHTTPServer.Request
    public typealias Response = LocalHTTPServer.Response

    public let endpoints: [AdminEndpoint]
    public let access: LocalRequestGuard
    let byPath: [Substring: Int]

    public init(endpoints: [AdminEndpoint] = AdminEndpoint.all, access: LocalRequestGuard) {
        self.endpoints = endpoints
        self.access = access
        var byPath: [Substring: Int] = [:]
        for (i, e) in endpoints.enumerated() {
            precondition(byPath[Substring(e.path)] == nil, "admin endpoint \(e.path) listed twice")
            byPath[Substring(e.path)] = i
        }
        self.byPath = byPath
    }

    /// The answer to `r`: a refusal, a 404, or the endpoint's own.
    public func respond(to r: Request, target: any AdminTarget) -> Response {
        if let refused = access.hostRefusal(r) { return refused }
        guard let i = byPath[r.path] else { return notFound }
        let e = endpoints[i]
        if e.changesState {
            guard r.method == "POST" else {
                return .init(status: 405, body: "use POST for \(r.path)\n", headers: [("allow", "POST")])
            }
            if let refused = access.crossOriginRefusal(r) ?? access.tokenRefusal(r) { return refused }
        } else {
            guard r.method == "GET" || r.method == "HEAD" else {
                return .init(status: 405, body: "use GET for \(r.path)\n", headers: [("allow", "GET, HEAD")])
            }
        }
        return e.answer(r, target)
    }

    /// 404, listing every endpoint with its method.
    var notFound: Response {
        let list = endpoints.map { "\($0.changesState ? "POST" : "GET") \($0.path)" }.joined(separator: ", ")
        return .init(status: 404, body: "admin endpoints: \(list)\n")
    }
}

/// The admin server: a `LocalHTTPServer` on the main loop answering through an `AdminRouter`.
public final class AdminServer {
    let http: LocalHTTPServer
    public let router: AdminRouter
    unowned let target: any AdminTarget

    /// Where it listens (port 0 resolved).
    public var address: SocketAddress { http.address }

    /// Listens on `address` now. `target` (the Server, which owns this) must outlive it.
    public init(loop: EventLoop, address: SocketAddress, token: String?, target: any AdminTarget,
                endpoints: [AdminEndpoint] = AdminEndpoint.all) throws {
        let router = AdminRouter(endpoints: endpoints, access: LocalRequestGuard(token: token))
        self.router = router
        self.target = target
        weak var me: AdminServer?
        http = try LocalHTTPServer(loop: loop, address: address) { r in
            guard let me else { return .init(status: 503, body: "admin server closed\n") }
            return me.router.respond(to: r, target: me.target)
        }
        me = self
    }

    /// What to warn about at start: listening off loopback with no `admin.token`. nil when neither.
    public var exposureWarning: String? {
        guard router.access.token == nil, !LocalRequestGuard.isLoopback(address) else { return nil }
        return "warning: admin listens on \(address), off loopback, without admin.token: anyone who can reach it "
            + "can read the configuration (GET /config_dump) and drain or stop the proxy (POST /drain, "
            + "/quitquitquit); set admin.token or listen on 127.0.0.1"
    }

    /// Stops listening and closes its connections (at exit).
    public func close() { http.close() }
}
