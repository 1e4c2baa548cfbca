import Glibc
import RemoraCore

/// `remora ctl top ADMIN_URL`: the golden metrics of one proxy per route and backend — requests per
/// second, success rate, the live split, p50/p99 of the backend cluster's upstream time — from two
/// scrapes of its `/stats/prometheus` (labels, so names with dots stay apart). Pure: parsing and the
/// table are tested without sockets; `Ctl.top` does the I/O.
public struct TopSample: Sendable {
    /// Per (listener, route, cluster): requests and 5xx answers.
    public var routes: [TopKey: (total: Double, errors: Double)] = [:]
    /// Per cluster: cumulative counts by bucket bound (ms), `+Inf` last.
    public var latency: [String: [(le: Double, count: Double)]] = [:]
    /// The proxy's requests, all listeners.
    public var requests: Double = 0

    public init() {}

    /// Reads Prometheus text (what GET /stats/prometheus answers).
    public static func parse(_ text: String) -> TopSample {
        var s = TopSample()
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let (name, labels, value) = parseLine(line) else { continue }
            switch name {
            case "envoy_route_upstream_rq_total", "envoy_route_upstream_rq_xx":
                guard let l = labels["envoy_http_conn_manager_prefix"], let r = labels["envoy_route_name"],
                      let c = labels["envoy_cluster_name"] else { continue }
                let k = TopKey(listener: l, route: r, cluster: c)
                var v = s.routes[k] ?? (0, 0)
                if name == "envoy_route_upstream_rq_total" { v.total = value } else if labels["envoy_response_code_class"] == "5" { v.errors = value }
                s.routes[k] = v
            case "envoy_cluster_upstream_rq_time_bucket":
                guard let c = labels["envoy_cluster_name"], let le = labels["le"] else { continue }
                s.latency[c, default: []].append((le == "+Inf" ? .infinity : Double(le) ?? .infinity, value))
            case "envoy_http_downstream_rq_total":
                s.requests += value
            default: continue
            }
        }
        for k in s.latency.keys { s.latency[k]!.sort { $0.le < $1.le } }
        return s
    }

    /// `name{a="x",b="y"} value` (escapes in values: `\"`, `\\`, `\n`).
    static func parseLine(_ line: Substring) -> (String, [String: String], Double)? {
        guard let sp = line.lastIndex(of: " "), let value = Double(line[line.index(after: sp)...]) else { return nil }
        let head = line[..<sp]
        guard let brace = head.firstIndex(of: "{") else { return (String(head), [:], value) }
        var labels: [String: String] = [:]
        var i = head.index(after: brace)
        while i < head.endIndex, head[i] != "}" {
            guard let eq = head[i...].firstIndex(of: "="), head.index(after: eq) < head.endIndex,
                  head[head.index(after: eq)] == "\"" else { return nil }
            let key = String(head[i..<eq])
            var j = head.index(eq, offsetBy: 2)
            var v = ""
            while j < head.endIndex, head[j] != "\"" {
                if head[j] == "\\", head.index(after: j) < head.endIndex {
                    j = head.index(after: j)
                    v.append(head[j] == "n" ? "\n" : head[j])
                } else {
                    v.append(head[j])
                }
                j = head.index(after: j)
            }
            guard j < head.endIndex else { return nil }
            labels[key] = v
            i = head.index(after: j)
            if i < head.endIndex, head[i] == "," { i = head.index(after: i) }
        }
        return (String(head[..<brace]), labels, value)
    }
}

public struct TopKey: Hashable, Sendable, Comparable {
    public var listener: String
    public var route: String
    public var cluster: String
    public init(listener: String, route: String, cluster: String) { self.listener = listener; self.route = route; self.cluster = cluster }
    public static func < (a: TopKey, b: TopKey) -> Bool { (a.listener, a.route, a.cluster) < (b.listener, b.route, b.cluster) }
}

/// One row of the table: a route's backend over one interval.
public struct TopRow: Equatable, Sendable {
    public var key: TopKey
    public var rps: Double
    /// Percent of the interval's requests answered without a 5xx; nil without requests.
    public var success: Double?
    /// Percent of the route's requests of the interval that went to this backend.
    public var share: Double
    /// ms; nil without requests in the interval.
    public var p50: Double?
    public var p99: Double?
}

public enum Top {
    /// The rows between two samples `seconds` apart, by listener, route and cluster.
    public static func rows(_ a: TopSample, _ b: TopSample, seconds: Double) -> [TopRow] {
        var deltas: [TopKey: (Double, Double)] = [:]
        for (k, v) in b.routes {
            let p = a.routes[k] ?? (0, 0)
            deltas[k] = (max(0, v.total - p.total), max(0, v.errors - p.errors))
        }
        var perRoute: [String: Double] = [:]
        for (k, d) in deltas { perRoute[k.listener + "/" + k.route, default: 0] += d.0 }
        return deltas.keys.sorted().map { k in
            let (n, errors) = deltas[k]!
            let routeTotal = perRoute[k.listener + "/" + k.route] ?? 0
            let lat = latencyDelta(a.latency[k.cluster] ?? [], b.latency[k.cluster] ?? [])
            return TopRow(key: k, rps: seconds > 0 ? n / seconds : 0, success: n > 0 ? 100 * (1 - errors / n) : nil,
                          share: routeTotal > 0 ? 100 * n / routeTotal : 0,
                          p50: quantile(lat, 0.5), p99: quantile(lat, 0.99))
        }
    }

    /// The interval's cumulative bucket counts (b − a, bucket by bucket).
    static func latencyDelta(_ a: [(le: Double, count: Double)], _ b: [(le: Double, count: Double)]) -> [(le: Double, count: Double)] {
        b.map { bucket in (bucket.le, max(0, bucket.count - (a.first { $0.le == bucket.le }?.count ?? 0))) }
    }

    /// The `q` quantile of cumulative buckets, interpolated inside its bucket (as Prometheus'
    /// histogram_quantile does); nil when empty. Above the last finite bound: that bound.
    public static func quantile(_ buckets: [(le: Double, count: Double)], _ q: Double) -> Double? {
        guard let total = buckets.last?.count, total > 0 else { return nil }
        let rank = q * total
        var lowerBound = 0.0, lowerCount = 0.0
        for b in buckets {
            if b.count >= rank {
                if b.le.isInfinite { return lowerBound }
                let inBucket = b.count - lowerCount
                return inBucket > 0 ? lowerBound + (b.le - lowerBound) * (rank - lowerCount) / inBucket : b.le
            }
            lowerBound = b.le.isInfinite ? lowerBound : b.le
            lowerCount = b.count
        }
        return lowerBound
    }

    /// The table, aligned, one row per backend.
    public static func table(_ rows: [TopRow], title: String) -> String {
        func f(_ v: Double?, _ d: Int, suffix: String = "") -> String {
            guard let v, v.isFinite else { return "-" }
            var p = 1.0
            for _ in 0..<d { p *= 10 }
            let r = (v * p).rounded() / p
            var s = d == 0 ? String(Int(r)) : String(r)
            if d > 0, let dot = s.firstIndex(of: ".") {
                let decimals = s.distance(from: dot, to: s.endIndex) - 1
                s += String(repeating: "0", count: max(0, d - decimals))
            }
            return s + suffix
        }
        var cells = [["ROUTE", "BACKEND", "SHARE", "RPS", "SUCCESS", "P50 MS", "P99 MS"]]
        for r in rows {
            cells.append(["\(r.key.listener)/\(r.key.route)", r.key.cluster, f(r.share, 1, suffix: "%"), f(r.rps, 1),
                          f(r.success, 2, suffix: "%"), f(r.p50, 1), f(r.p99, 1)])
        }
        let widths = (0..<cells[0].count).map { c in cells.map { $0[c].count }.max() ?? 0 }
        var out = title + "\n"
        for row in cells {
            var line = ""
            for (c, cell) in row.enumerated() {
                let pad = String(repeating: " ", count: widths[c] - cell.count)
                line += c < 2 ? cell + pad : pad + cell
                if c < row.count - 1 { line += "  " }
            }
            out += line + "\n"
        }
        if rows.isEmpty { out += "(no route with backends)\n" }
        return out
    }
}

extension Ctl {
    /// `remora ctl top`: scrapes the proxy's `/stats/prometheus` every `interval` ms and prints the
    /// rows of the interval; on a terminal the screen is redrawn, piped (`interactive` false) one
    /// table is printed after one interval and it exits.
    func top(_ admin: ControlURL, interval: UInt64, count: Int) throws(ControlError) -> Int32 {
        func scrape() throws(ControlError) -> (TopSample, UInt64) {
            let r = try transport.request("GET", host: admin.host, port: admin.port, target: "/stats/prometheus",
                                          headers: [], body: [])
            guard r.status == 200 else { throw ControlError(r.status, "GET /stats/prometheus answered \(r.status)") }
            return (TopSample.parse(r.text), clock())
        }
        let tables = interactive ? count : 1
        var (last, at) = try scrape()
        var shown = 0
        while tables == 0 || shown < tables {
            sleep(interval)
            let (cur, now) = try scrape()
            let seconds = Double(now &- at) / 1000
            let rows = Top.rows(last, cur, seconds: seconds)
            let title = "remora \(admin.host):\(admin.port)  \(Int(cur.requests)) requests since start  (interval \(Fmt1.seconds(seconds)) s)"
            out((interactive ? "\u{1B}[H\u{1B}[2J" : "") + String(Top.table(rows, title: title).dropLast()))
            (last, at) = (cur, now)
            shown += 1
        }
        return 0
    }
}

enum Fmt1 {
    static func seconds(_ s: Double) -> String {
        let r = (s * 10).rounded() / 10
        return String(r)
    }
}
