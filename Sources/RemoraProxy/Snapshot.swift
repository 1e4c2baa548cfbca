import CRemoraSupport
import RemoraCore
import RemoraIO
import RemoraPolicy
import RemoraRouting

/// One validated, compiled, immutable configuration, shared read-only by every worker.
/// Endpoint names are resolved here, once, off the workers.
public final class Snapshot: Sendable {
    public let config: Config
    /// Per listener (same order as config.listeners): compiled route table (empty for TCP).
    public let routeTables: [RouteTable]
    /// Per cluster (same order as config.clusters): resolved endpoint addresses.
    public let endpoints: [[SocketAddress]]
    /// Per cluster, per resolved address: its weight (an address inherits its name's).
    public let weights: [[Int]]
    /// Per cluster, per configured endpoint: the addresses it resolved to (`endpoints` flattens
    /// these; a DNS refresh compares and replaces them).
    public let resolved: [[[SocketAddress]]]
    /// Endpoint names of `dns_refresh` clusters that did not resolve here ("cluster: host:port") and
    /// had no addresses in `previous`: they count none until a refresh resolves them (a name with
    /// addresses in `previous` keeps those; other clusters' names must resolve).
    public let unresolved: [String]
    /// Per TCP listener: cluster index; -1 for HTTP listeners.
    public let tcpCluster: [Int]
    /// Per listener, per route: the route's local rate limit bucket, shared by every worker (nil: none).
    let rateLimitBuckets: [[SharedTokenBucket?]]
    /// Per cluster: what its workers share (breaker counts, outlier detection), the previous
    /// snapshot's when the cluster's config and endpoints did not change.
    let shared: [ClusterShared]

    /// `previous`: the snapshot this one replaces (its clusters' shared state carries over).
    /// `resolved`: per cluster index, the addresses of each configured endpoint already resolved
    /// (a DNS refresh); the other clusters' names are resolved here, synchronously.
    public init(config: Config, previous: Snapshot? = nil, resolved given: [Int: [[SocketAddress]]] = [:]) throws {
        self.config = config
        var index: [String: Int] = [:]
        for (i, c) in config.clusters.enumerated() { index[c.name] = i }
        var tables: [RouteTable] = []
        for l in config.listeners { tables.append(try RouteTable(l, clusters: index)) }
        routeTables = tables
        rateLimitBuckets = tables.map { $0.rateLimits.map { $0.map(SharedTokenBucket.init) } }
        tcpCluster = config.listeners.map { l in l.cluster.flatMap { index[$0] } ?? -1 }
        var eps: [[SocketAddress]] = []
        var ws: [[Int]] = []
        var all: [[[SocketAddress]]] = []
        var missing: [String] = []
        for (ci, c) in config.clusters.enumerated() {
            var list: [SocketAddress] = []
            var w: [Int] = []
            var per: [[SocketAddress]] = []
            for (i, e) in c.endpoints.enumerated() {
                do {
                    let resolved = try given[ci].map { $0[i] } ?? Snapshot.lookup(e, c.dnsLookupFamily)
                    list += resolved
                    per.append(resolved)
                    w += Array(repeating: c.weight(ofEndpoint: i), count: resolved.count)
                } catch where c.dnsRefresh != nil && SocketAddress(ip: e.host, port: e.port) == nil {
                    // Its last addresses (a reload while the lookup fails), or none yet; the refresh keeps trying.
                    if let p = previous, let j = p.config.clusters.firstIndex(where: { $0.name == c.name }),
                       let k = p.config.clusters[j].endpoints.firstIndex(of: e), !p.resolved[j][k].isEmpty {
                        let last = p.resolved[j][k]
                        list += last
                        per.append(last)
                        w += Array(repeating: c.weight(ofEndpoint: i), count: last.count)
                    } else {
                        per.append([])
                        missing.append("\(c.name): \(e)")
                    }
                } catch {
                    throw ConfigErrors([ConfigError(file: "", line: 0, path: "clusters.\(c.name).endpoints",
                                                    message: "cannot resolve \(e): \(error)")])
                }
            }
            eps.append(list)
            ws.append(w)
            all.append(per)
        }
        endpoints = eps
        weights = ws
        resolved = all
        unresolved = missing
        shared = config.clusters.enumerated().map { i, c in
            if let p = previous, let j = p.config.clusters.firstIndex(where: { $0.name == c.name }),
               p.config.clusters[j] == c, p.endpoints[j].map(\.description) == eps[i].map(\.description), p.weights[j] == ws[i] {
                return p.shared[j]
            }
            let s = ClusterShared(config: c, endpoints: eps[i].count, addresses: eps[i].map(\.description), weights: ws[i],
                                  workers: config.workers > 0 ? config.workers : onlineCPUs())
            // Only the endpoint set changed: what stays keeps its health, ejection and counters.
            if let p = previous, let j = p.config.clusters.firstIndex(where: { $0.name == c.name }),
               p.config.clusters[j].sameApartFromEndpoints(c) {
                s.inherit(from: p.shared[j], oldIndex: EndpointSetDiff(old: p.endpoints[j].map(\.description),
                                                                       new: eps[i].map(\.description)).oldIndex)
            }
            return s
        }
    }
}

extension Snapshot {
    /// The endpoints of name or literal `e` (synchronously, at load): a name's addresses of
    /// `family`; throws when it has none.
    static func lookup(_ e: HostPort, _ family: DNSLookupFamily) throws -> [SocketAddress] {
        let all = try Resolver.resolve(e)
        if SocketAddress(ip: e.host, port: e.port) != nil { return all }
        let kept = family.keep(all.map(\.isIPv6)).map { all[$0] }
        if kept.isEmpty { throw NoAddressOfFamily(family: family) }
        return kept
    }

    struct NoAddressOfFamily: Error, CustomStringConvertible {
        let family: DNSLookupFamily
        var description: String { "no address of dns_lookup_family \(family.rawValue)" }
    }
}

/// Stats blocks of one worker for one snapshot: written only by that worker, read by the admin
/// server. Blocks come from `StatRegistry`, so a counter keeps its value across snapshots.
public final class WorkerStats: @unchecked Sendable {   // the rings: each written by its worker only
    public let listeners: [StatBlock<ListenerStat>]
    public let clusters: [StatBlock<ClusterStat>]
    /// Per listener, per backend slot of its route table.
    public let routeBackends: [[StatBlock<RouteBackendStat>]]
    /// Per listener: this worker's ring of the listener's access log file and the listener's
    /// format there (nil: no access log).
    let accessLogs: [(ring: UnsafeMutablePointer<remora_log_ring>, format: UInt16)?]
    let accessLogWriter: AccessLogWriter

    init(listeners: [StatBlock<ListenerStat>], clusters: [StatBlock<ClusterStat>],
         routeBackends: [[StatBlock<RouteBackendStat>]], accessLogs: [(ring: UnsafeMutablePointer<remora_log_ring>, format: UInt16)?],
         accessLogWriter: AccessLogWriter) {
        self.listeners = listeners; self.clusters = clusters; self.routeBackends = routeBackends
        self.accessLogs = accessLogs; self.accessLogWriter = accessLogWriter
    }
}

/// Every stat block ever created, by full name and worker (main thread only). Blocks are never
/// freed: a worker may still write one after a snapshot dropped its name.
final class StatRegistry {
    let workers: Int
    var listeners: [String: [StatBlock<ListenerStat>]] = [:]
    var clusters: [String: [StatBlock<ClusterStat>]] = [:]
    var routes: [String: [StatBlock<RouteBackendStat>]] = [:]

    /// The access logs' writer thread (started with the first access log).
    let accessLogWriter = AccessLogWriter()

    init(workers: Int) { self.workers = workers }

    func blocks<G: StatGroup>(_ table: inout [String: [StatBlock<G>]], _ name: String) -> [StatBlock<G>] {
        if let b = table[name] { return b }
        let b = (0..<workers).map { _ in StatBlock<G>() }
        table[name] = b
        return b
    }

    /// `route.<listener>.<route>.<cluster>` names of a snapshot, per listener, by backend slot.
    static func routeNames(_ s: Snapshot) -> [[String]] {
        routeParts(s).map { $0.map { $0.joined(separator: ".") } }
    }

    /// The same names as their parts (listener, route, cluster): Prometheus labels.
    static func routeParts(_ s: Snapshot) -> [[[String]]] {
        s.routeTables.enumerated().map { l, table in
            var names = Array(repeating: [String](), count: table.backendCount)
            for r in table.info { for b in r.backends { names[b.slot] = [s.config.listeners[l].name, r.name, b.clusterName] } }
            return names
        }
    }

    /// One `WorkerStats` per worker for `snapshot`.
    func stats(for snapshot: Snapshot) -> [WorkerStats] {
        let l = snapshot.config.listeners.map { blocks(&listeners, $0.name) }
        let c = snapshot.config.clusters.map { blocks(&clusters, $0.name) }
        let r = StatRegistry.routeNames(snapshot).map { names in names.map { blocks(&routes, $0) } }
        let logs = snapshot.config.listeners.map { l in
            l.accessLog.map { log in
                let sink = accessLogWriter.sink(path: log.path, workers: workers)
                return (sink, accessLogWriter.register(log.format, in: sink))
            }
        }
        return (0..<workers).map { w in
            WorkerStats(listeners: l.map { $0[w] }, clusters: c.map { $0[w] }, routeBackends: r.map { $0.map { $0[w] } },
                        accessLogs: logs.map { $0.map { ($0.0.rings[w], $0.1) } }, accessLogWriter: accessLogWriter)
        }
    }

    /// The stats of the names `snapshot` uses, summed over workers (listeners, clusters, routes).
    func collect(_ snapshot: Snapshot, into out: inout StatsSnapshot) {
        // Labelled request series: a listener's are its requests answered without a cluster.
        for l in snapshot.config.listeners { out.add(ListenerStat.self, name: l.name, blocks: blocks(&listeners, l.name), destination: "") }
        for (i, c) in snapshot.config.clusters.enumerated() {
            out.add(ClusterStat.self, name: c.name, blocks: blocks(&clusters, c.name), destination: c.name)
            snapshot.shared[i].collect(into: &out)
        }
        for names in StatRegistry.routeParts(snapshot) {
            for parts in names {
                let n = parts.joined(separator: ".")
                out.add(RouteBackendStat.self, name: n, nameParts: parts, blocks: blocks(&routes, n))
            }
        }
    }
}
