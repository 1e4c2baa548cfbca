import Glibc
import RemoraCore

public enum ConfigLoader {
    /// Reads and validates a YAML file. Errors carry `file` = path as given.
    public static func load(path: String) -> Result<Config, ConfigErrors> {
        let (bytes, error) = readFile(path)
        guard error == 0 else {
            let reason = String(cString: strerror(error))
            return .failure(ConfigErrors([ConfigError(file: path, line: 0, path: "", message: "cannot read the file: \(reason)")]))
        }
        return bytes.withUnsafeBufferPointer { decode($0, file: path) }
    }

    /// Validates YAML text; `file` is used in error messages (e.g. "<embedded>").
    public static func parse(yaml: String, file: String) -> Result<Config, ConfigErrors> {
        var yaml = yaml
        return yaml.withUTF8 { decode($0, file: file) }
    }

    private static func decode(_ bytes: UnsafeBufferPointer<UInt8>, file: String) -> Result<Config, ConfigErrors> {
        switch YAML.parse(bytes) {
        case .failure(let e):
            return .failure(ConfigErrors([ConfigError(file: file, line: e.line, path: "", message: e.message)]))
        case .success(let root):
            let d = Decoder(file: file)
            let config = Schema(d).config(root)
            if let config, d.errors.isEmpty { return .success(config) }
            return .failure(ConfigErrors(d.sortedErrors))
        }
    }

    /// The whole file, or the `errno` of what failed.
    private static func readFile(_ path: String) -> (bytes: [UInt8], errno: Int32) {
        guard let f = fopen(path, "rb") else { return ([], errno) }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            bytes += chunk[..<n]
            if n < chunk.count { return ferror(f) == 0 ? (bytes, 0) : ([], errno) }
        }
    }
}

/// The config schema: one decode function per model type, plus the cross-checks (unique names and
/// addresses, cluster references). A model value comes back even when some of its optional fields
/// were wrong; the loader only returns a `Config` when no error was reported at all.
private final class Schema {
    let d: Decoder
    var listenerNames: [String: Int] = [:]
    var clusterNames: [String: Int] = [:]
    var addresses: [HostPort: Int] = [:]

    init(_ d: Decoder) { self.d = d }

    func config(_ root: Node?) -> Config? {
        guard let root, !root.isNull else {
            d.fail(1, "listeners", "no listeners")
            return nil
        }
        guard let m = d.mapping(root, "", keys: ["admin", "workers", "drain_timeout", "listeners", "clusters"]) else { return nil }
        let admin = m.optional("admin", admin)
        let workers = m.optional("workers") { d.int($0, $1, in: 0...256) }
        let drainTimeout = m.optional("drain_timeout") { d.duration($0, $1) }
        // Clusters first, so that listeners can check their references.
        let clusters = m.optional("clusters") { d.list($0, $1, cluster) }
        if !m.has("listeners") { d.fail(m.line, "listeners", "no listeners") }
        let listeners = m.optional("listeners") { d.list($0, $1, ifEmpty: "no listeners", listener) }
        guard let listeners else { return nil }
        return Config(admin: admin, workers: workers ?? 0, drainTimeout: drainTimeout ?? 5_000,
                      listeners: listeners, clusters: clusters ?? [])
    }

    func admin(_ n: Node, _ p: String) -> AdminConfig? {
        d.mapping(n, p, keys: ["address"])?.required("address", listenAddress).map(AdminConfig.init)
    }

    func listener(_ n: Node, _ p: String) -> ListenerConfig? {
        guard var m = d.mapping(n, p, keys: ["name", "address", "protocol", "request_header_timeout",
                                             "max_request_header_bytes", "idle_timeout", "routes", "cluster"])
        else { return nil }
        let name = m.required("name") { self.name($0, $1, "listener", &listenerNames) }
        let address = m.required("address", listenAddress)
        let proto: ListenerProtocol? = m.has("protocol") ? m.optional("protocol", d.oneOf) : .http
        switch proto {
        case .tcp: m.forbid(["routes", "request_header_timeout", "max_request_header_bytes"], "only allowed on an http listener")
        case .http: m.forbid(["cluster"], "only allowed on a tcp listener (an http listener uses routes)")
        case nil: break // bad protocol, already reported: check what is there, demand nothing
        }
        let headerTimeout = m.optional("request_header_timeout") { d.duration($0, $1, positive: true) }
        let maxHeaderBytes = m.optional("max_request_header_bytes") { d.size($0, $1, in: 1024...1024 * 1024) }
        let idleTimeout = m.optional("idle_timeout") { d.duration($0, $1, positive: true) }
        var routeNames: [String: Int] = [:]
        let routes = m.optional("routes") { d.list($0, $1) { route($0, $1, &routeNames) } }
        let cluster = proto == .tcp ? m.required("cluster", clusterRef) : m.optional("cluster", clusterRef)
        guard let name, let address else { return nil }
        return ListenerConfig(name: name, address: address, protocol: proto ?? .http,
                              requestHeaderTimeout: headerTimeout ?? 10_000, maxRequestHeaderBytes: maxHeaderBytes ?? 60 * 1024,
                              idleTimeout: idleTimeout ?? 60_000, routes: routes ?? [], cluster: cluster)
    }

    func route(_ n: Node, _ p: String, _ names: inout [String: Int]) -> RouteConfig? {
        guard let m = d.mapping(n, p, keys: ["name", "match", "backends", "timeout"]) else { return nil }
        let name = m.required("name") { self.name($0, $1, "route", &names) }
        let match = m.optional("match", routeMatch)
        let backends = m.required("backends", backends)
        let timeout = m.optional("timeout") { d.duration($0, $1) }
        guard let name, let backends else { return nil }
        return RouteConfig(name: name, match: match ?? RouteMatch(), backends: backends, timeout: timeout ?? 15_000)
    }

    func routeMatch(_ n: Node, _ p: String) -> RouteMatch? {
        d.mapping(n, p, keys: ["path"]).map { RouteMatch(path: $0.optional("path", pathMatch) ?? .prefix("/")) }
    }

    func pathMatch(_ n: Node, _ p: String) -> PathMatch? {
        guard let m = d.mapping(n, p, keys: ["prefix", "exact"]) else { return nil }
        guard m.has("prefix") != m.has("exact") else {
            d.fail(n.line, p, "expected exactly one of prefix or exact")
            return nil
        }
        let absolute = { (n: Node, p: String) in self.d.value(n, p, #"a path starting with "/""#) { $0.hasPrefix("/") ? $0 : nil } }
        if let prefix = m.optional("prefix", absolute) { return .prefix(prefix) }
        return m.optional("exact", absolute).map(PathMatch.exact)
    }

    func backends(_ n: Node, _ p: String) -> [WeightedBackend]? {
        guard let list = d.list(n, p, ifEmpty: "at least one backend is required", backend) else { return nil }
        guard list.contains(where: { $0.weight > 0 }) else {
            d.fail(n.line, p, "at least one backend must have a weight above 0")
            return nil
        }
        return list
    }

    func backend(_ n: Node, _ p: String) -> WeightedBackend? {
        guard let m = d.mapping(n, p, keys: ["cluster", "weight"]) else { return nil }
        let cluster = m.required("cluster", clusterRef)
        let weight = m.optional("weight") { d.int($0, $1, in: 0...1_000_000) }
        return cluster.map { WeightedBackend(cluster: $0, weight: UInt32(weight ?? 1)) }
    }

    func cluster(_ n: Node, _ p: String) -> ClusterConfig? {
        guard let m = d.mapping(n, p, keys: ["name", "protocol", "endpoints", "connect_timeout", "max_idle_per_endpoint"])
        else { return nil }
        let name = m.required("name") { self.name($0, $1, "cluster", &clusterNames) }
        let proto: ClusterProtocol? = m.optional("protocol", d.oneOf)
        let endpoints = m.required("endpoints") {
            d.list($0, $1, ifEmpty: "at least one endpoint is required") { d.hostPort($0, $1, portZero: false) }
        }
        let connectTimeout = m.optional("connect_timeout") { d.duration($0, $1, positive: true) }
        let maxIdle = m.optional("max_idle_per_endpoint") { d.int($0, $1, in: 0...100_000) }
        guard let name, let endpoints else { return nil }
        return ClusterConfig(name: name, protocol: proto ?? .http1, endpoints: endpoints,
                             connectTimeout: connectTimeout ?? 5_000, maxIdlePerEndpoint: maxIdle ?? 128)
    }

    // MARK: Cross-checks

    /// A valid name not used before among `names`.
    func name(_ n: Node, _ p: String, _ what: String, _ names: inout [String: Int]) -> String? {
        guard let s = d.name(n, p) else { return nil }
        d.unique(s, "\(what) name \"\(s)\"", n, p, in: &names)
        return s
    }

    /// A listener or admin address; two of them may not share a host:port (unless the port is 0).
    func listenAddress(_ n: Node, _ p: String) -> HostPort? {
        guard let a = d.hostPort(n, p, portZero: true) else { return nil }
        if a.port != 0 { d.unique(a, "address \(a)", n, p, in: &addresses) }
        return a
    }

    /// The name of a cluster defined under `clusters`.
    func clusterRef(_ n: Node, _ p: String) -> String? {
        guard let s = d.string(n, p) else { return nil }
        guard clusterNames[s] != nil else {
            let defined = clusterNames.sorted { ($0.value, $0.key) < ($1.value, $1.key) }.map(\.key)
            d.fail(n.line, p, "cluster \"\(s)\" is not defined "
                + (defined.isEmpty ? "(no clusters are defined)" : "(defined: \(defined.joined(separator: ", ")))"))
            return nil
        }
        return s
    }
}
