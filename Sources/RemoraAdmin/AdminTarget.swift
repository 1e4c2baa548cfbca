import RemoraCore

/// What the admin endpoints read and act on: the proxy process. `Server` (RemoraProxy) provides it
/// on the main loop, so this module needs nothing from the data plane and the data plane nothing
/// from it but this seam. Every member is called on the main loop, from an endpoint's `answer`.
public protocol AdminTarget: AnyObject {
    /// Whether the proxy takes traffic (GET /ready).
    var readiness: Readiness { get }
    /// Every stat, summed over workers, with the process-wide values last (GET /stats).
    func statsSnapshot() -> StatsSnapshot
    /// The configuration serving now, as the YAML it came from, and its version (GET /config_dump).
    var configDump: ConfigDump { get }
    /// Stop accepting, finish what is in flight, then exit 0. `quick`: wait at most 1 s
    /// (POST /quitquitquit); else the configured `drain_timeout` (POST /drain).
    func drain(quick: Bool)
    /// This proxy's name in Istio's metrics (`source_workload`): the configuration's `node`, else
    /// `--node`, else "remora".
    var nodeName: String { get }
    /// Every certificate the proxy loaded (served, presented upstream, trusted CAs) (GET /certs).
    func certificates() -> [AdminCertificate]
    /// Every cluster with its endpoints (GET /clusters).
    func clusterStatuses() -> [ClusterStatus]
    /// Every listener's compiled routes with their backends' request counts (GET /routes).
    func routeStatuses() -> [RouteStatus]
}

extension AdminTarget {
    public var nodeName: String { "remora" }
    public func clusterStatuses() -> [ClusterStatus] { [] }
    public func routeStatuses() -> [RouteStatus] { [] }
    public func certificates() -> [AdminCertificate] { [] }
}

/// One loaded certificate as GET /certs shows it.
public struct AdminCertificate: Equatable, Sendable {
    /// Where it is used: "listener.web.certificates[0]", "listener.web.client_ca", "cluster.app.ca", …
    public var name: String
    public var path: String
    public var subject: String
    public var serial: String
    /// Unix seconds.
    public var notAfter: Int64
    /// Negative once expired.
    public var secondsLeft: Int64
    public var uriSANs: [String]
    public var dnsSANs: [String]

    public init(name: String, path: String, subject: String, serial: String, notAfter: Int64, secondsLeft: Int64,
                uriSANs: [String], dnsSANs: [String]) {
        self.name = name; self.path = path; self.subject = subject; self.serial = serial; self.notAfter = notAfter
        self.secondsLeft = secondsLeft; self.uriSANs = uriSANs; self.dnsSANs = dnsSANs
    }
}

/// Where the proxy is in its life, as GET /ready reports it.
public enum Readiness: Equatable, Sendable {
    /// Workers are starting (503).
    case starting
    /// No configuration yet: started with `--control` and no local file (503).
    case waitingForControl
    /// Draining before exit (503).
    case draining
    /// Serving (200).
    case ready
    /// Serving the last good configuration while the control server is unreachable (200): seconds
    /// since it last answered.
    case readyControlUnreachable(staleSeconds: UInt64)
}

/// The configuration as GET /config_dump shows it.
public struct ConfigDump: Equatable, Sendable {
    /// The control server's version when the configuration came from one; else the local install
    /// count (1 = the one started with).
    public var version: Int
    /// The YAML source, as read (or as pushed).
    public var yaml: String

    public init(version: Int, yaml: String) { self.version = version; self.yaml = yaml }
}
