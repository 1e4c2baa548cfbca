import RemoraCore

/// Per-endpoint state for the admin (`GET /clusters`, rendered by RemoraAdmin): what each endpoint
/// of a cluster of the serving snapshot looks like to the process, read on the main loop.
extension Server {
    /// The endpoints of cluster `name` in the serving snapshot, in the snapshot's order: each one's
    /// counters summed over workers (`rq_active`, `rq_total`, 5xx, local failures; `rq_error` is
    /// their sum), its health flags (failed active health check, ejected by outlier detection), its
    /// weight and its peak-EWMA latency. nil when the snapshot has no such cluster. Main loop only.
    /// The counters count from when the cluster's endpoint set or config last changed.
    public func endpointStatus(cluster name: String) -> [EndpointStatus]? {
        guard let i = snapshot.config.clusters.firstIndex(where: { $0.name == name }) else { return nil }
        return snapshot.shared[i].endpointStatus(now: loop.now)
    }

    /// `endpointStatus` of every cluster of the serving snapshot, in config order.
    public func endpointStatus() -> [(cluster: String, endpoints: [EndpointStatus])] {
        snapshot.config.clusters.enumerated().map { ($0.element.name, snapshot.shared[$0.offset].endpointStatus(now: loop.now)) }
    }
}
