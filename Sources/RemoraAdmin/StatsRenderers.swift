import RemoraCore

/// How a `StatsSnapshot` is printed: one renderer per format, each with its endpoint in
/// AdminEndpoints.swift (text: GET /stats, JSON: GET /stats?format=json, Prometheus: GET
/// /stats/prometheus).
public enum StatsRenderers {
    /// GET /stats: `scope.name.stat value`, one line each, in the snapshot's order (Envoy's format).
    /// Histograms are in the JSON and Prometheus formats (`?format=json`, /stats/prometheus).
    public static func text(_ s: StatsSnapshot) -> String {
        var out = ""
        for sample in s.samples { out += "\(sample.fullName) \(sample.value)\n" }
        return out
    }

    // MARK: Prometheus

    /// GET /stats/prometheus: Prometheus text format 0.0.4. Envoy's names and labels
    /// (`envoy_cluster_upstream_rq_total{envoy_cluster_name="app"}`, the status classes as
    /// `…_rq_xx{envoy_response_code_class="5"}`, listeners as Envoy's HTTP connection managers:
    /// `envoy_http_…{envoy_http_conn_manager_prefix="web"}`), then Istio's standard request metrics
    /// (`istio_requests_total`, `istio_request_duration_milliseconds`) with `source_workload` = `node`.
    /// Every family has HELP and TYPE; its samples are contiguous.
    public static func prometheus(_ s: StatsSnapshot, node: String) -> String {
        var families = Families()
        for sample in s.samples {
            let (name, labels) = promName(scope: sample.scope, nameParts: sample.nameParts, stat: sample.stat)
            families.add(name, type: sample.kind.rawValue, help: sample.help.isEmpty ? sample.stat : sample.help,
                         line: "\(name)\(labelText(labels)) \(sample.value)")
        }
        for h in s.histograms {
            let (name, labels) = promName(scope: h.scope, nameParts: h.nameParts, stat: h.stat)
            families.add(name, type: "histogram", help: h.help, lines: histogramLines(name, labels, h.value))
        }
        let ids = PeerIdentities.shared
        for series in s.series {
            let k = series.key
            let dest = series.destination.isEmpty ? "unknown" : series.destination
            let labels: [(String, String)] = [
                ("reporter", "source"), ("source_workload", node),
                ("destination_service", dest), ("destination_workload", dest),
                ("request_protocol", k.isGRPC ? "grpc" : "http"),
                ("response_code", k.isOverflow ? "other" : "\(k.status)"),
                ("grpc_response_status", k.isOverflow || k.grpcStatus < 0 ? "" : "\(k.grpcStatus)"),
                ("response_flags", k.isOverflow ? "-" : k.flags.letters),
                ("source_principal", k.isOverflow ? "other" : ids.label(k.sourcePrincipal)),
                ("destination_principal", k.isOverflow ? "other" : ids.label(k.destinationPrincipal)),
                ("connection_security_policy", k.isOverflow ? "unknown" : k.mutualTLS ? "mutual_tls" : "none"),
            ]
            families.add("istio_requests_total", type: "counter", help: "Requests, by Istio's standard labels",
                         line: "istio_requests_total\(labelText(labels)) \(series.value.count)")
            families.add("istio_request_duration_milliseconds", type: "histogram",
                         help: "Request durations, milliseconds, by Istio's standard labels",
                         lines: histogramLines("istio_request_duration_milliseconds", labels, series.value))
        }
        return families.text
    }

    /// Families in first-seen order, their lines together.
    struct Families {
        var order: [String] = []
        var byName: [String: (type: String, help: String, lines: [String])] = [:]

        mutating func add(_ name: String, type: String, help: String, line: String) { add(name, type: type, help: help, lines: [line]) }

        mutating func add(_ name: String, type: String, help: String, lines: [String]) {
            if byName[name] == nil { order.append(name); byName[name] = (type, help, []) }
            byName[name]!.lines += lines
        }

        var text: String {
            var out = ""
            for n in order {
                let f = byName[n]!
                out += "# HELP \(n) \(escapeHelp(f.help))\n# TYPE \(n) \(f.type)\n"
                for l in f.lines { out += l + "\n" }
            }
            return out
        }
    }

    /// Envoy's Prometheus name and labels for one stat of a scope.
    static func promName(scope: String, nameParts: [String], stat: String) -> (String, [(String, String)]) {
        var labels: [(String, String)]
        let prefix: String
        switch scope {
        case "listener":
            prefix = "envoy_http_"
            labels = [("envoy_http_conn_manager_prefix", nameParts.first ?? "")]
        case "cluster":
            prefix = "envoy_cluster_"
            labels = [("envoy_cluster_name", nameParts.first ?? "")]
        case "route":
            prefix = "envoy_route_"
            labels = zip(["envoy_http_conn_manager_prefix", "envoy_route_name", "envoy_cluster_name"], nameParts).map { ($0, $1) }
        default:
            prefix = "envoy_\(sanitize(scope))_"
            labels = nameParts.isEmpty ? [] : [("name", nameParts.joined(separator: "."))]
        }
        var stat = sanitize(stat)
        // `upstream_rq_5xx` → `upstream_rq_xx{envoy_response_code_class="5"}` (Envoy's tag extraction).
        if stat.hasSuffix("xx"), let d = stat.dropLast(2).last, ("1"..."5").contains(d), stat.dropLast(3).hasSuffix("_rq_") {
            labels.insert(("envoy_response_code_class", String(d)), at: 0)
            stat = String(stat.dropLast(3)) + "xx"
        }
        return (prefix + stat, labels)
    }

    static func histogramLines(_ name: String, _ labels: [(String, String)], _ v: HistogramValue) -> [String] {
        var lines: [String] = []
        let cum = v.cumulative
        for (i, le) in HistogramBuckets.labels.enumerated() {
            lines.append("\(name)_bucket\(labelText(labels + [("le", le)])) \(cum[i])")
        }
        lines.append("\(name)_bucket\(labelText(labels + [("le", "+Inf")])) \(cum[cum.count - 1])")
        lines.append("\(name)_sum\(labelText(labels)) \(millis(v.sumMicros))")
        lines.append("\(name)_count\(labelText(labels)) \(v.count)")
        return lines
    }

    static func labelText(_ labels: [(String, String)]) -> String {
        if labels.isEmpty { return "" }
        return "{" + labels.map { "\($0.0)=\"\(escapeLabel($0.1))\"" }.joined(separator: ",") + "}"
    }

    /// Label values: backslash, double quote and line feed escaped (text format 0.0.4).
    static func escapeLabel(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// HELP text: backslash and line feed escaped.
    static func escapeHelp(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    /// A metric name part: [a-zA-Z0-9_], anything else becomes `_`.
    static func sanitize(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.map {
            ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_")) ? $0 : "_"
        }))
    }

    /// Microseconds as milliseconds: "12", "0.25".
    static func millis(_ us: UInt64) -> String {
        us % 1000 == 0 ? "\(us / 1000)" : number(Double(us) / 1000)
    }

    static func number(_ d: Double) -> String {
        if d == d.rounded() && abs(d) < 1e15 { return "\(Int64(d))" }
        return "\((d * 1000).rounded() / 1000)"
    }

    // MARK: JSON

    /// GET /stats?format=json: `{"stats":[{"name","value","type"}…], "histograms":[{"name","count",
    /// "sum_ms","p50","p90","p99","buckets":[[le_ms,cumulative]…]}…], "requests":[{"destination",
    /// "response_code","grpc_status","protocol","response_flags","count","p50","p99"}…]}`.
    public static func json(_ s: StatsSnapshot) -> String {
        var out = "{\"stats\":["
        for (i, sample) in s.samples.enumerated() {
            if i > 0 { out += "," }
            out += "\n{\"name\":\(jsonString(sample.fullName)),\"value\":\(sample.value),\"type\":\"\(sample.kind.rawValue)\"}"
        }
        out += "],\n\"histograms\":["
        for (i, h) in s.histograms.enumerated() {
            if i > 0 { out += "," }
            let v = h.value
            out += "\n{\"name\":\(jsonString(h.fullName)),\"count\":\(v.count),\"sum_ms\":\(millis(v.sumMicros))"
            for (q, key) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
                out += ",\"\(key)\":" + (v.quantileMillis(q).map(number) ?? "null")
            }
            let cum = v.cumulative
            out += ",\"buckets\":[" + HistogramBuckets.labels.enumerated().map { "[\($1),\(cum[$0])]" }.joined(separator: ",") + "]}"
        }
        out += "],\n\"requests\":["
        for (i, series) in s.series.enumerated() {
            if i > 0 { out += "," }
            let k = series.key, v = series.value
            out += "\n{\"destination\":\(jsonString(series.destination.isEmpty ? "unknown" : series.destination))"
            out += ",\"response_code\":\(k.isOverflow ? "null" : "\(k.status)")"
            out += ",\"grpc_status\":\(k.isOverflow || k.grpcStatus < 0 ? "null" : "\(k.grpcStatus)")"
            out += ",\"protocol\":\"\(k.isGRPC ? "grpc" : "http")\",\"response_flags\":\(jsonString(k.flags.letters))"
            if !k.isOverflow && (k.mutualTLS || k.sourcePrincipal != 0 || k.destinationPrincipal != 0) {
                out += ",\"source_principal\":\(jsonString(PeerIdentities.shared.label(k.sourcePrincipal)))"
                out += ",\"destination_principal\":\(jsonString(PeerIdentities.shared.label(k.destinationPrincipal)))"
                out += ",\"connection_security_policy\":\"\(k.mutualTLS ? "mutual_tls" : "none")\""
            }
            out += ",\"count\":\(v.count),\"p50\":" + (v.quantileMillis(0.5).map(number) ?? "null")
            out += ",\"p99\":" + (v.quantileMillis(0.99).map(number) ?? "null") + "}"
        }
        out += "]}\n"
        return out
    }

    static func jsonString(_ s: String) -> String {
        var out = ""
        JSONText.appendQuoted(s, into: &out)
        return out
    }
}
