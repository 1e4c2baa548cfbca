import RemoraCore
import RemoraIO
import RemoraRouting

/// One validated, compiled, immutable configuration, shared read-only by every worker.
/// Endpoint names are resolved here, once, off the workers.
public final class Snapshot: Sendable {
    public let config: Config
    /// Per listener (same order as config.listeners): compiled route table (empty for TCP).
    public let routeTables: [RouteTable]
    /// Per cluster (same order as config.clusters): resolved endpoint addresses.
    public let endpoints: [[SocketAddress]]
    /// Per TCP listener: cluster index; -1 for HTTP listeners.
    public let tcpCluster: [Int]

    public init(config: Config) throws {
        self.config = config
        var index: [String: Int] = [:]
        for (i, c) in config.clusters.enumerated() { index[c.name] = i }
        var tables: [RouteTable] = []
        for l in config.listeners { tables.append(try RouteTable(l, clusters: index)) }
        routeTables = tables
        tcpCluster = config.listeners.map { l in l.cluster.flatMap { index[$0] } ?? -1 }
        var eps: [[SocketAddress]] = []
        for c in config.clusters {
            var list: [SocketAddress] = []
            for e in c.endpoints {
                do { list += try Resolver.resolve(e) } catch {
                    throw ConfigErrors([ConfigError(file: "", line: 0, path: "clusters.\(c.name).endpoints",
                                                    message: "cannot resolve \(e): \(error)")])
                }
            }
            eps.append(list)
        }
        endpoints = eps
    }
}

/// Stats blocks of one worker: created by the main thread before the worker starts, written only by
/// that worker, read by the admin server.
public final class WorkerStats: Sendable {
    public let listeners: [StatBlock<ListenerStat>]
    public let clusters: [StatBlock<ClusterStat>]
    /// Per listener, per backend slot of its route table.
    public let routeBackends: [[StatBlock<RouteBackendStat>]]
    init(snapshot: Snapshot) {
        listeners = snapshot.config.listeners.map { _ in StatBlock() }
        clusters = snapshot.config.clusters.map { _ in StatBlock() }
        routeBackends = snapshot.routeTables.map { t in (0..<t.backendCount).map { _ in StatBlock() } }
    }
}
