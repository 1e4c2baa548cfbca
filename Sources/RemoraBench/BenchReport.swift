import Histogram

/// A finished run, ready to be written out: the human summary, JSON, the .hgrm percentile file
/// and the SVG chart (`BenchReport+SVG.swift`). Pure: strings in, strings out.
public struct BenchReport {
    public var options: BenchOptions
    public var protocolName: String
    public var threads: Int
    public var result: BenchResult

    public init(options: BenchOptions, protocolName: String, threads: Int, result: BenchResult) {
        self.options = options
        self.protocolName = protocolName
        self.threads = threads
        self.result = result
    }

    /// The percentiles listed in the summary and the JSON.
    public static let spectrum: [Double] = [50, 75, 90, 99, 99.9, 99.99, 99.999, 100]

    public var url: String {
        switch options.target {
        case let .http1(u), let .h2c(u): return "http://\(u.authority)\(u.target)"
        case let .grpc(u): return "grpc://\(u.authority)\(u.target)"
        }
    }

    public var label: String { options.label ?? url }
    public var mode: String { options.isOpenLoop ? "open" : "closed" }
    var elapsedSeconds: Double { Double(result.elapsedNs) / 1e9 }
    public var requestsPerSecond: Double { perSecond(result.counters.responses) }
    func perSecond(_ n: UInt64) -> Double { elapsedSeconds > 0 ? Double(n) / elapsedSeconds : 0 }

    /// gRPC: the call type, and the messages each call sends when there are several.
    var grpcShape: String {
        let o = options
        return o.grpcMode.rawValue + (o.messagesPerCall > 1 ? ", \(o.messagesPerCall) messages per call" : "")
    }

    /// `result.latency` times message round trips (gRPC bidi), not whole requests or calls.
    var perMessage: Bool { options.isGRPC && options.grpcMode == .bidi }

    // MARK: human summary

    public func summary() -> String {
        let c = result.counters
        let o = options
        let request = o.isGRPC ? "call" : "request"
        var s = "remora bench \(url) (\(protocolName), \(o.isGRPC ? grpcShape : o.effectiveMethod))\n"
        let tw = threads == 1 ? "1 thread" : "\(threads) threads"
        let streams = o.streams == 1 ? "1 \(request) in flight each" : "up to \(o.streams) \(request)s in flight each (\(o.target.isHTTP1 ? "pipelined" : "concurrent streams"))"
        if let r = o.rate {
            let grow = o.maxConnections.map { $0 > o.connections ? " (up to \($0))" : "" } ?? ""
            s += "  open loop: \(Fmt.rate(r)) \(request)s/s over \(o.connections) connections\(grow), \(streams), \(tw);\n"
            let what = perMessage ? "each call's first round trip measured from the call's" : "latency measured from each \(request)'s"
            s += "  \(what) intended send time (coordinated omission corrected)\n"
        } else {
            s += "  closed loop: \(o.connections) connections, \(streams), \(tw)\n"
        }
        var period = "  measured \(Fmt.seconds(result.elapsedNs)) s"
        if let n = o.requests { period += " (--requests \(Fmt.grouped(n)))" }
        if o.warmup > 0 { period += " after \(Fmt.seconds(o.warmup)) s of warm-up" }
        s += period + "\n"
        if result.interrupted { s += "  INTERRUPTED (Ctrl-C): the results so far\n" }
        s += "\n"

        if o.isGRPC {
            s += "Calls         \(Fmt.grouped(c.responses)) completed, \(Fmt.rate(requestsPerSecond)) calls/s"
            s += "  (\(Fmt.grouped(c.sent)) started)\n"
            s += "Messages      sent \(Fmt.grouped(c.messagesSent)) (\(Fmt.rate(perSecond(c.messagesSent)))/s),"
            s += " received \(Fmt.grouped(c.messagesReceived)) (\(Fmt.rate(perSecond(c.messagesReceived)))/s)\n"
        } else {
            s += "Requests      \(Fmt.grouped(c.responses)) responses, \(Fmt.rate(requestsPerSecond)) req/s"
            s += "  (\(Fmt.grouped(c.sent)) sent)\n"
        }
        let secs = elapsedSeconds
        s += "Transfer      read \(Fmt.bytes(Double(c.bytesRead)))"
        if secs > 0 { s += " (\(Fmt.bytes(Double(c.bytesRead) / secs))/s)" }
        s += ", wrote \(Fmt.bytes(Double(c.bytesWritten)))\n"

        let h = result.latency
        if h.totalCount > 0 {
            s += "Latency (ms)  min \(Fmt.ms(h.min))  mean \(Fmt.fixed(h.mean / 1000, 3))"
            s += "  stdev \(Fmt.fixed(h.stdDeviation / 1000, 3))  max \(Fmt.ms(h.maxRecorded))"
            s += o.isGRPC ? "  (per \(perMessage ? "message round trip" : "call"))\n" : "\n"
            let open = o.isOpenLoop && result.uncorrected.totalCount > 0
            s += open ? "  percentile   corrected  uncorrected (from the actual send)\n" : ""
            for p in BenchReport.spectrum {
                var line = "  " + Fmt.padRight("p" + Fmt.percent(p), 9) + Fmt.pad(Fmt.ms(h.valueAtPercentile(p)), 12)
                if open { line += Fmt.pad(Fmt.ms(result.uncorrected.valueAtPercentile(p)), 13) }
                s += line + "\n"
            }
        } else {
            s += "Latency       no \(perMessage ? "replies" : "responses")\n"
        }
        if o.isOpenLoop {
            let pct = c.sent > 0 ? Double(c.lateSends) * 100 / Double(c.sent) : 0
            let mean = c.sent > 0 ? Double(c.totalLatenessNs) / Double(c.sent) / 1e6 : 0
            s += "Send times    \(Fmt.grouped(c.lateSends)) late by more than 1 ms (\(Fmt.fixed(pct, 2))%),"
            s += " max \(Fmt.msFromNs(c.maxLatenessNs)) ms late, mean \(Fmt.fixed(mean, 3)) ms\n"
            s += "              \(Fmt.grouped(c.waitedForConnection)) waited for a free connection"
            if c.expiredUnsent > 0 { s += ", \(Fmt.grouped(c.expiredUnsent)) timed out waiting (never sent)" }
            s += "\n"
        }
        if c.unsentAtEnd > 0 { s += "              \(Fmt.grouped(c.unsentAtEnd)) due but not sent when the run ended\n" }

        let codes = c.statusCounts
        s += "Status        " + (codes.isEmpty ? "none" : codes.map { "\($0.code == 0 ? "other" : String($0.code)): \(Fmt.grouped($0.count))" }.joined(separator: ", ")) + "\n"
        if case .grpc = o.target {
            let g = c.grpcStatusCounts
            s += "gRPC status   " + (g.isEmpty ? "none" : g.map { "\($0.code == 17 ? "missing" : String($0.code)): \(Fmt.grouped($0.count))" }.joined(separator: ", ")) + "\n"
        }
        if c.errorsTotal == 0 {
            s += "Errors        none\n"
        } else {
            s += "Errors        " + BenchErrorKind.allCases.map { "\($0.name) \(Fmt.grouped(c[$0]))" }.joined(separator: ", ")
            s += "  (\(Fmt.grouped(c.errorsTotal)) in total)\n"
        }
        s += "Connections   \(Fmt.grouped(c.connectionsOpened)) opened, \(Fmt.grouped(c.connectionsClosedByServer)) closed by the server,"
        s += " at most \(Fmt.grouped(c.connectionsPeak)) at once\n"
        return s
    }

    /// The line printed each second on a terminal. gRPC (`messagesPerSecond` given): calls/s and
    /// messages/s each way.
    public static func progressLine(second: Int, warmingUp: Bool, ratePerSecond: UInt64, latency: Histogram<UInt64>,
                                    errors: UInt64, messagesPerSecond: (sent: UInt64, received: UInt64)? = nil) -> String {
        var s = "[" + Fmt.pad(String(second), 4) + "s] "
        if warmingUp { return s + "warming up" }
        if let m = messagesPerSecond {
            s += Fmt.pad(Fmt.grouped(ratePerSecond), 11) + " calls/s" + Fmt.pad(Fmt.grouped(m.sent), 12) + " msg/s out"
            s += Fmt.pad(Fmt.grouped(m.received), 12) + " msg/s in"
        } else {
            s += Fmt.pad(Fmt.grouped(ratePerSecond), 11) + " req/s"
        }
        if latency.totalCount > 0 {
            s += "  p50 " + Fmt.ms(latency.valueAtPercentile(50)) + " ms  p99 " + Fmt.ms(latency.valueAtPercentile(99)) + " ms"
        }
        s += "  errors " + Fmt.grouped(errors)
        return s
    }

    // MARK: JSON

    public func json() -> JSON {
        let c = result.counters
        let o = options
        var config: [(String, JSON)] = [
            ("target", .string(url)), ("protocol", .string(protocolName)), ("method", .string(o.effectiveMethod)),
            ("mode", .string(mode)), ("threads", .int(threads)), ("connections", .int(o.connections)),
            ("streams", .int(o.streams)),
        ]
        if o.isGRPC {
            config.append(("grpc_mode", .string(o.grpcMode.rawValue)))
            config.append(("messages_per_call", .int(o.messagesPerCall)))
        }
        if let r = o.rate {
            config.append(("rate", .double(r, 3)))
            config.append(("max_connections", .int(o.maxConnections ?? o.connections)))
        }
        config.append(("duration_s", o.requests == nil ? .double(Double(o.duration) / 1e9, 3) : .null))
        config.append(("requests", o.requests.map { .int($0) } ?? .null))
        config.append(("warmup_s", .double(Double(o.warmup) / 1e9, 3)))
        config.append(("timeout_s", .double(Double(o.timeout) / 1e9, 3)))

        var fields: [(String, JSON)] = [
            ("tool", .string("remora bench")),
            ("format", .int(1)),
            ("label", .string(label)),
            ("config", .object(config)),
            ("interrupted", .bool(result.interrupted)),
            ("elapsed_s", .double(elapsedSeconds, 6)),
            ("responses", .int(c.responses)),
            ("sent", .int(c.sent)),
            ("requests_per_s", .double(requestsPerSecond, 3)),
        ]
        if o.isGRPC {
            fields.append(("calls_per_s", .double(requestsPerSecond, 3)))
            fields.append(("messages", .object([
                ("sent", .int(c.messagesSent)),
                ("received", .int(c.messagesReceived)),
                ("sent_per_s", .double(perSecond(c.messagesSent), 3)),
                ("received_per_s", .double(perSecond(c.messagesReceived), 3)),
            ])))
        }
        fields += [
            ("bytes_read", .int(c.bytesRead)),
            ("bytes_written", .int(c.bytesWritten)),
            ("bytes_read_per_s", .double(perSecond(c.bytesRead), 1)),
            ("status", .object(c.statusCounts.map { ($0.code == 0 ? "other" : String($0.code), .int($0.count)) })),
            ("grpc_status", .object(c.grpcStatusCounts.map { ($0.code == 17 ? "missing" : String($0.code), .int($0.count)) })),
            ("errors", .object(BenchErrorKind.allCases.map { ($0.name, .int(c[$0])) })),
            ("errors_total", .int(c.errorsTotal)),
            ("connections", .object([
                ("opened", .int(c.connectionsOpened)),
                ("closed_by_server", .int(c.connectionsClosedByServer)),
                ("peak", .int(c.connectionsPeak)),
            ])),
        ]
        if o.isOpenLoop {
            fields.append(("sends", .object([
                ("late", .int(c.lateSends)),
                ("late_threshold_ms", .double(Double(BenchCounters.lateThreshold) / 1e6, 3)),
                ("max_lateness_ms", .double(Double(c.maxLatenessNs) / 1e6, 3)),
                ("mean_lateness_ms", .double(c.sent > 0 ? Double(c.totalLatenessNs) / Double(c.sent) / 1e6 : 0, 3)),
                ("waited_for_connection", .int(c.waitedForConnection)),
                ("expired_unsent", .int(c.expiredUnsent)),
            ])))
        }
        fields.append(("unsent_at_end", .int(c.unsentAtEnd)))
        if o.isGRPC { fields.append(("latency_of", .string(perMessage ? "message" : "call"))) }
        fields.append(("latency_ms", BenchReport.latencyJSON(result.latency)))
        if o.isOpenLoop { fields.append(("uncorrected_latency_ms", BenchReport.latencyJSON(result.uncorrected))) }
        return .object(fields)
    }

    static func latencyJSON(_ h: Histogram<UInt64>) -> JSON {
        let count = h.totalCount
        return .object([
            ("count", .int(count)),
            ("min", .double(count > 0 ? Double(h.min) / 1000 : 0, 3)),
            ("mean", .double(count > 0 ? h.mean / 1000 : 0, 3)),
            ("stdev", .double(count > 0 ? h.stdDeviation / 1000 : 0, 3)),
            ("max", .double(count > 0 ? Double(h.maxRecorded) / 1000 : 0, 3)),
            ("percentiles", .object(spectrum.map { p in
                ("p" + Fmt.percent(p), .double(count > 0 ? Double(h.valueAtPercentile(p)) / 1000 : 0, 3))
            })),
            ("histogram", .object([
                ("encoding", .string("HdrHistogram compressed V2, base64 (values in microseconds)")),
                ("unit", .string("us")),
                ("lowest_discernible", .int(h.lowestDiscernibleValue)),
                ("highest_trackable", .int(h.highestTrackableValue)),
                ("significant_digits", .int(Int(h.numberOfSignificantValueDigits.rawValue))),
                ("encoded", .string(HistogramCodec.encodeCompressedBase64(h))),
            ])),
        ])
    }

    // MARK: .hgrm

    /// HdrHistogram's percentile distribution text (values in ms), as `outputPercentileDistribution`
    /// writes it: what the HdrHistogram plotter and HistogramLogAnalyzer read.
    public static func hgrm(_ h: Histogram<UInt64>) -> String {
        var out = ""
        h.outputPercentileDistribution(to: &out, outputValueUnitScalingRatio: 1000, percentileTicksPerHalfDistance: 5)
        return out
    }
}

/// Another run, read back from its `--json` (for `--plot-compare`).
public struct SavedRun {
    public var label: String
    public var latency: Histogram<UInt64>

    public init(label: String, latency: Histogram<UInt64>) { self.label = label; self.latency = latency }

    public static func load(json text: String) throws -> SavedRun {
        let j = try JSON.parse(text)
        guard let enc = j["latency_ms"]?["histogram"]?["encoded"]?.stringValue else {
            throw BenchUsageError("not a remora bench --json file (no latency_ms.histogram.encoded)")
        }
        return SavedRun(label: j["label"]?.stringValue ?? "other run", latency: try HistogramCodec.decodeCompressedBase64(enc))
    }
}
