import RemoraConfig
import RemoraCore

/// The weights of a canary walk: the canary gets `p` percent, the other backends share the rest in
/// proportion to the weights they had when the walk started (equally if those were all 0).
public struct CanaryPlan: Equatable, Sendable {
    public var canary: String
    /// The other backends with their weights at the start, in route order.
    public var others: [WeightedBackend]
    /// The canary's share at the start, in whole percent (rounded down).
    public var start: Int
    /// Percentage points per step.
    public var step: Int

    public init(backends: [WeightedBackend], canary: String, step: Int) throws(ControlError) {
        var seen: Set<String> = []
        let unique = backends.filter { seen.insert($0.cluster).inserted }
        guard let c = unique.first(where: { $0.cluster == canary }) else {
            throw ControlError(400, "cluster \(canary) is not a backend of the route (its backends: \(unique.map(\.cluster).joined(separator: ", ")))")
        }
        guard unique.count > 1 else { throw ControlError(400, "the route has no backend besides \(canary) to take the rest") }
        let total = unique.reduce(UInt64(0)) { $0 + UInt64($1.weight) }
        self.canary = canary
        others = unique.filter { $0.cluster != canary }
        start = total == 0 ? 0 : Int(UInt64(c.weight) * 100 / total)
        self.step = step
    }

    /// The canary's share at each step: start+step, start+2·step, …, ending at exactly 100.
    public var targets: [Int] {
        var out: [Int] = []
        var p = start
        while p < 100 {
            p = min(100, p + step)
            out.append(p)
        }
        return out
    }

    /// Weights summing to 100: the canary `p`, the rest split by largest remainder.
    public func weights(percent p: Int) -> [ClusterWeight] {
        let rest = UInt64(100 - p)
        let base = others.reduce(UInt64(0)) { $0 + UInt64($1.weight) }
        let shares = others.map { base == 0 ? 1 : UInt64($0.weight) }
        let sum = shares.reduce(0, +)
        var given = shares.map { rest * $0 / sum }
        var left = rest - given.reduce(0, +)
        // Largest remainders first, route order on ties.
        let order = shares.indices.sorted { (rest * shares[$0] % sum, -$0) > (rest * shares[$1] % sum, -$1) }
        for i in order where left > 0 { given[i] += 1; left -= 1 }
        return [ClusterWeight(canary, UInt32(p))] + others.indices.map { ClusterWeight(others[$0].cluster, UInt32(given[$0])) }
    }
}

/// A canary's requests and 5xx answers, from `/stats`.
public struct CanaryCounts: Equatable, Sendable {
    public var total: UInt64 = 0
    public var errors: UInt64 = 0
    public init(total: UInt64 = 0, errors: UInt64 = 0) { self.total = total; self.errors = errors }

    /// Sums `route.<listener>.<route>.<cluster>.upstream_rq_total` and `…upstream_rq_5xx` over every
    /// listener (or only LISTENER when `route` is `LISTENER/ROUTE`).
    public init(stats: String, route spec: String, cluster: String) {
        let (listener, route) = WeightEdit.split(spec)
        let tail = ".\(route).\(cluster)."
        for line in stats.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count == 2, f[0].hasPrefix("route."), let v = UInt64(f[1]) else { continue }
            let name = f[0]
            let isTotal = name.hasSuffix(tail + "upstream_rq_total"), isError = name.hasSuffix(tail + "upstream_rq_5xx")
            guard isTotal || isError else { continue }
            if let listener, name != "route.\(listener)\(tail)upstream_rq_\(isTotal ? "total" : "5xx")" { continue }
            if isTotal { total += v } else { errors += v }
        }
    }

    /// What happened between `before` and `self` (a counter that went down restarted from 0).
    public func since(_ before: CanaryCounts) -> CanaryCounts {
        if total < before.total || errors < before.errors { return self }
        return CanaryCounts(total: total - before.total, errors: errors - before.errors)
    }

    public var rate: Double { total == 0 ? 0 : Double(errors) / Double(total) }
}

/// "1.25%" (two decimals, no Foundation).
func percentText(_ x: Double) -> String {
    let v = Int((x * 10_000).rounded())
    return "\(v / 100).\(String(v % 100).leftPad(2))%"
}

extension Ctl {
    enum AckResult {
        case acked([NodeStatus], missing: [NodeStatus])
        case refused(NodeStatus)
    }

    func canary(_ o: CanaryOptions) throws(ControlError) -> Int32 {
        let doc = try expectOK(call("GET", "/v1/groups/\(Self.escape(o.group))")).text
        let config: Config
        switch ConfigLoader.parse(yaml: doc, file: o.group) {
        case .success(let c): config = c
        case .failure(let e): throw ControlError(400, "the group's current document is not valid:\n\(e)")
        }
        guard let backends = config.backends(ofRoute: o.route) else {
            throw ControlError(404, "no route \(o.route) with backends in group \(o.group)")
        }
        let plan = try CanaryPlan(backends: backends, canary: o.canary, step: o.step)
        let targets = plan.targets
        if targets.isEmpty {
            out("\(o.canary) already takes 100% of \(o.group)/\(o.route)")
            return 0
        }
        out("canary \(o.canary) on \(o.group)/\(o.route): \(plan.start)% to 100% in \(targets.count) step(s) of \(o.step) points every "
            + "\(o.every) ms; stops above \(percentText(o.max5xxRate)) 5xx")
        var started = false
        do {
            for (i, p) in targets.enumerated() {
                let v = try split(o.group, o.route, plan.weights(percent: p))
                started = true
                out("step \(i + 1)/\(targets.count): \(o.canary) at \(p)% (version \(v))")
                let acked: [NodeStatus]
                switch try waitForACKs(o.group, version: v) {
                case .refused(let n):
                    return try rollback(o, plan, because: "proxy \(n.node) refused version \(v): \(n.reason.split(separator: "\n").first ?? "")")
                case let .acked(list, missing):
                    acked = list
                    if !missing.isEmpty {
                        err("warning: \(missing.count) proxy(ies) did not ACK version \(v) within \(ackTimeout) ms "
                            + "(\(missing.map(\.node).joined(separator: ", "))); measuring the \(list.count) that did")
                    }
                }
                let before = sample(acked, o)
                sleep(o.every)
                let after = sample(acked, o)
                var d = CanaryCounts()
                for (node, a) in after {
                    guard let b = before[node] else { continue }
                    let s = a.since(b)
                    d.total += s.total
                    d.errors += s.errors
                }
                out("  \(o.canary): \(d.total) requests, \(d.errors) 5xx (\(percentText(d.rate))) on \(after.count) proxy(ies)")
                if d.total == 0 { err("warning: no request reached \(o.canary) during this step") }
                if d.total > 0 && d.rate > o.max5xxRate {
                    return try rollback(o, plan, because: "\(o.canary)'s 5xx rate over the last step was \(percentText(d.rate)) "
                                        + "(\(d.errors) of \(d.total)), above \(percentText(o.max5xxRate))")
                }
            }
        } catch {
            if started {
                err("remora ctl: \(error.status == 0 ? "" : "\(error.status): ")\(error.message.trimmingWhitespace)")
                return try rollback(o, plan, because: "the walk failed")
            }
            throw error
        }
        out("\(o.canary) now takes 100% of \(o.group)/\(o.route)")
        return 0
    }

    /// Sets the canary back to 0 % and says why. Exit code 1.
    func rollback(_ o: CanaryOptions, _ plan: CanaryPlan, because why: String) throws(ControlError) -> Int32 {
        do {
            let v = try split(o.group, o.route, plan.weights(percent: 0))
            err("canary stopped: \(why); \(o.canary) set back to 0% (version \(v))")
        } catch {
            err("canary stopped: \(why); setting \(o.canary) back to 0% FAILED: \(error.message.trimmingWhitespace)")
        }
        return 1
    }

    /// Waits until every live proxy of the group reports on `version` (or `ackTimeout` passes).
    func waitForACKs(_ group: String, version: UInt64) throws(ControlError) -> AckResult {
        let deadline = clock() + ackTimeout
        while true {
            let nodes = NodeStatus.parse(try expectOK(call("GET", "/v1/status")).text)
                .filter { $0.group == group && $0.lastSeen <= liveWithin }
            if let n = nodes.first(where: { $0.version >= version && $0.state == "NACK" }) { return .refused(n) }
            let acked = nodes.filter { $0.version >= version && $0.state == "ACK" }
            if acked.count == nodes.count || clock() >= deadline {
                return .acked(acked, missing: nodes.filter { n in !acked.contains { $0.node == n.node } })
            }
            sleep(100)
        }
    }

    /// The canary's counters on each proxy that answers, by node.
    func sample(_ nodes: [NodeStatus], _ o: CanaryOptions) -> [String: CanaryCounts] {
        var out: [String: CanaryCounts] = [:]
        for n in nodes {
            guard let hp = HostPort.parse(n.admin) else { continue }
            do throws(ControlError) {
                let r = try transport.request("GET", host: hp.host, port: hp.port, target: "/stats", headers: [], body: [])
                guard r.status == 200 else { throw ControlError(r.status, "GET /stats answered \(r.status)") }
                out[n.node] = CanaryCounts(stats: r.text, route: o.route, cluster: o.canary)
            } catch {
                err("warning: \(n.node) (\(n.admin)): \(error.message.trimmingWhitespace)")
            }
        }
        return out
    }
}
