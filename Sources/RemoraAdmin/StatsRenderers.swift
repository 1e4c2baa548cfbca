import RemoraCore

/// How a `StatsSnapshot` is printed: one renderer per format (text today; JSON and Prometheus are
/// further functions here, each with its endpoint in AdminEndpoints.swift).
public enum StatsRenderers {
    /// GET /stats: `scope.name.stat value`, one line each, in the snapshot's order (Envoy's format).
    public static func text(_ s: StatsSnapshot) -> String {
        var out = ""
        for sample in s.samples { out += "\(sample.fullName) \(sample.value)\n" }
        return out
    }
}
