import RemoraCore
import RemoraIO
import RemoraPolicy

/// One cluster's DNS refresh (`dns_refresh:`), on the main loop: its timer and the lookup under way.
final class DNSWatch {
    let timer: LoopTimer
    let interval: Millis
    /// A refresh is under way (its lookups have not all answered): the next tick waits for it.
    var busy = false
    /// Envoy's `cluster.<name>.update_attempt`, `update_success`, `update_failure` (a name did not
    /// resolve: its last addresses are kept), `update_no_rebuild` (the addresses were unchanged),
    /// `membership_change` (the endpoint set changed and went to the workers).
    var attempts: UInt64 = 0, successes: UInt64 = 0, failures: UInt64 = 0, noRebuild: UInt64 = 0, changes: UInt64 = 0
    /// The endpoint names (by position) whose last lookup failed: logged once when they fail, once
    /// when they resolve again, not at every refresh.
    var failing: Set<Int> = []

    init(loop: EventLoop, interval: Millis) {
        self.interval = interval
        timer = LoopTimer(loop: loop)
        timer.unref()
    }
}

/// DNS refresh of endpoint names (`dns_refresh:`, Envoy's STRICT_DNS): every interval the main loop
/// resolves each endpoint name of the cluster again with `uv_getaddrinfo` (on libuv's thread pool,
/// never blocking a loop); each resolved address is an endpoint, with its name's weight. When the
/// addresses differ from the serving snapshot's, a snapshot with the new endpoint set (and
/// everything else unchanged) goes to every worker through its mailbox, as a configuration change
/// does. Workers keep what stays (`Cluster(previous:)`: idle connections, latency estimates and
/// ramps move to the new cluster); requests under way finish where they are. A name that fails to
/// resolve keeps its last addresses.
extension Server {
    /// Starts the refresh timers of `snap`'s clusters with `dns_refresh` and an endpoint given by
    /// name; stops the others.
    func watchDNS(_ snap: Snapshot) {
        var keep: Set<String> = []
        for (i, c) in snap.config.clusters.enumerated() {
            guard let every = c.dnsRefresh, c.endpoints.contains(where: { SocketAddress(ip: $0.host, port: $0.port) == nil })
            else { continue }
            keep.insert(c.name)
            if let w = dnsWatched[c.name], w.interval == every { snap.shared[i].dns = w; continue }
            dnsWatched[c.name]?.timer.close()
            let w = DNSWatch(loop: loop, interval: every)
            let name = c.name
            w.timer.start(after: every, repeat: every) { [unowned self] in self.refreshDNS(name) }
            dnsWatched[c.name] = w
            snap.shared[i].dns = w
            for (k, e) in c.endpoints.enumerated() where snap.unresolved.contains("\(c.name): \(e)") {
                w.failing.insert(k)
                log("cluster \(c.name): \(e) does not resolve yet; trying again every \(every) ms"
                    + (snap.endpoints[i].isEmpty ? " (until an endpoint resolves, requests are answered 503)" : ""))
            }
        }
        for (name, w) in dnsWatched where !keep.contains(name) {
            w.timer.close()
            dnsWatched[name] = nil
        }
    }

    func stopDNS() {
        for w in dnsWatched.values { w.timer.close() }
        dnsWatched = [:]
    }

    /// Resolves every endpoint of cluster `name` again; applies the result once all have answered.
    func refreshDNS(_ name: String) {
        guard !draining, let w = dnsWatched[name], !w.busy,
              let c = snapshot.config.clusters.first(where: { $0.name == name }) else { return }
        w.busy = true
        w.attempts += 1
        final class Answers { var list: [[SocketAddress]?]; var left: Int; init(_ n: Int) { list = Array(repeating: nil, count: n); left = n } }
        let answers = Answers(c.endpoints.count)
        for (k, hp) in c.endpoints.enumerated() {
            Resolver.resolve(hp, on: loop) { [unowned self] addrs in
                let kept = addrs.map { a in c.dnsLookupFamily.keep(a.map(\.isIPv6)).map { a[$0] } }
                answers.list[k] = kept?.isEmpty == true ? nil : kept   // none of the family: as not resolved
                answers.left -= 1
                if answers.left == 0 {
                    w.busy = false
                    self.resolved(name, config: c, answers.list)
                }
            }
        }
    }

    /// All lookups of a refresh answered: a new snapshot when the endpoint set changed.
    func resolved(_ name: String, config c: ClusterConfig, _ answers: [[SocketAddress]?]) {
        guard !draining, let i = snapshot.config.clusters.firstIndex(where: { $0.name == name }),
              snapshot.config.clusters[i] == c else { return }   // the configuration changed meanwhile
        let w = dnsWatched[name]
        let before = snapshot.resolved[i]
        var now = before
        var failed = false
        for (k, a) in answers.enumerated() {
            if let a {
                now[k] = a
                if w?.failing.remove(k) != nil { log("cluster \(name): \(c.endpoints[k]) resolves again") }
            } else if k < c.endpoints.count {
                failed = true
                if w?.failing.insert(k).inserted ?? true {
                    log("cluster \(name): cannot resolve \(c.endpoints[k]); keeping \(before[k].count) address(es)")
                }
            }
        }
        if failed { w?.failures += 1 } else { w?.successes += 1 }
        if now.map({ $0.map(\.description) }) == before.map({ $0.map(\.description) }) { w?.noRebuild += 1; return }
        let snap: Snapshot
        // Every other cluster keeps the addresses it has (no lookup here: they refresh on their own).
        var given: [Int: [[SocketAddress]]] = [:]
        for (k, r) in snapshot.resolved.enumerated() { given[k] = r }
        given[i] = now
        do { snap = try Snapshot(config: snapshot.config, previous: snapshot, resolved: given) } catch {
            log("cluster \(name): DNS refresh not applied: \(error)")
            return
        }
        let diff = EndpointSetDiff(old: snapshot.endpoints[i].map(\.description), new: snap.endpoints[i].map(\.description))
        let stats = registry.stats(for: snap)
        for (wk, box) in workerMailboxes.enumerated() { box?.post(.apply(snap, stats[wk], fds: [:])) }
        watchOutliers(snap)
        watchHealth(snap)
        snapshot = snap
        watchDNS(snap)   // the same watches, now also counted by the new snapshot's clusters
        w?.changes += 1
        log("cluster \(name): DNS refresh: \(snap.endpoints[i].count) endpoint(s) (\(diff.added) new, \(diff.removed.count) gone): "
            + snap.endpoints[i].map(\.description).joined(separator: ", "))
    }
}
