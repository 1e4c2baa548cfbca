import RemoraCore
import RemoraIO
import RemoraPolicy

/// Outlier detection's decisions, once per process, on the main loop: workers count failures in a
/// row on the outcome hook (shared counters) and report an endpoint reaching a threshold
/// (`MainMessage.outlier`); here `OutlierDetector` (RemoraPolicy) decides, so `max_ejection_percent`
/// holds across workers, the decision is logged and counted, and the workers are told through
/// their mailboxes (`WorkerMessage.ejectionsChanged`). A timer per cluster reviews ejections every
/// `interval` and returns endpoints whose time is over.
extension Server {
    /// Starts the review timers of `snap`'s clusters with outlier detection; stops those of
    /// clusters it no longer has.
    func watchOutliers(_ snap: Snapshot) {
        let now = snap.shared.filter { $0.detector != nil }
        for s in outlierWatched where !now.contains(where: { $0 === s }) { s.timer?.close(); s.timer = nil }
        for s in now where s.timer == nil {
            let t = LoopTimer(loop: loop)
            let interval = s.outlier!.interval
            t.start(after: interval, repeat: interval) { [unowned self, unowned s] in self.reviewOutliers(s) }
            t.unref()
            s.timer = t
        }
        outlierWatched = now
    }

    func outlierFailed(_ s: ClusterShared, endpoint e: Int, kind: OutlierKind) {
        guard var d = s.detector, s.timer != nil, e < d.endpoints else { return }   // a cluster no snapshot holds
        let now = loop.now
        let decision = d.failed(endpoint: e, now: now)
        s.detector = d
        let address = e < s.addresses.count ? s.addresses[e] : "#\(e)"
        switch decision {
        case .ejected(let until):
            s.ejectionsTotal += 1
            s.ejectionsByKind[kind.rawValue] += 1
            s.setEjected(e, true)
            log("cluster \(s.name): endpoint \(address) ejected for \(until - now) ms (\(kind.name)); "
                + "\(d.ejectedCount) of \(d.endpoints) ejected")
            tellWorkers()
        case .alreadyEjected:
            break
        case .overflow:
            s.ejectionsOverflow += 1
            s.resetFailures(e)   // it reports again after as many more
            if s.overflowLogged { return }
            s.overflowLogged = true   // once per interval
            log("cluster \(s.name): endpoint \(address) not ejected (\(kind.name)): max_ejection_percent "
                + "allows \(d.maxEjected) of \(d.endpoints) and \(d.ejectedCount) are")
        }
    }

    func reviewOutliers(_ s: ClusterShared) {
        guard var d = s.detector else { return }
        let returned = d.tick(now: loop.now)
        s.detector = d
        s.overflowLogged = false
        for e in returned {
            s.setEjected(e, false)
            log("cluster \(s.name): endpoint \(e < s.addresses.count ? s.addresses[e] : "#\(e)") back in service")
        }
        if !returned.isEmpty { tellWorkers() }
    }

    func tellWorkers() { workerMailboxes.forEach { $0?.post(.ejectionsChanged) } }

    /// Starts the health checkers of `snap`'s clusters with `health_check:` (once per process, here on
    /// the main loop); stops those of clusters it no longer has.
    func watchHealth(_ snap: Snapshot) {
        let now = snap.shared.enumerated().filter { snap.config.clusters[$0.offset].healthCheck != nil }
        for s in healthWatched where !now.contains(where: { $0.element === s }) { s.checker?.stop(); s.checker = nil }
        for (i, s) in now where s.checker == nil {
            let h = HealthChecker(shared: s, config: snap.config.clusters[i].healthCheck!, addresses: snap.endpoints[i],
                                  loop: loop, seed: UInt64(truncatingIfNeeded: ObjectIdentifier(s).hashValue) ^ loop.now,
                                  tls: snap.clusterTLS[i], carried: s.carriedHealth,
                                  onChange: { [unowned self] in self.tellWorkers() }, log: { log($0) })
            s.checker = h
            s.carriedHealth = nil
            h.start()
        }
        healthWatched = now.map(\.element)
    }
}
