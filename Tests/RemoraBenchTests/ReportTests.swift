import Histogram
import Testing
@testable import RemoraBench

@Suite struct ReportTests {
    func sampleReport(open: Bool) -> BenchReport {
        var o = BenchOptions(target: .http1(BenchURL(host: "127.0.0.1", port: 8080, target: "/p", authority: "127.0.0.1:8080")))
        o.connections = 8
        o.duration = 2 * nsPerSecond
        if open { o.rate = 1000 }
        o.label = "run \"A\" <1>"
        var r = BenchResult()
        r.measureStart = 1_000_000_000
        r.measureEnd = 3_000_000_000
        for i in 0..<2_000 { r.latency.record(UInt64(100 + i % 300)) }
        if open { for i in 0..<2_000 { r.uncorrected.record(UInt64(90 + i % 200)) } }
        r.counters.responses = 2_000
        r.counters.sent = 2_001
        r.counters.status[200] = 1_990
        r.counters.status[503] = 10
        r.counters[.reset] = 1
        r.counters.bytesRead = 300_000
        r.counters.connectionsOpened = 8
        r.counters.lateSends = 3
        r.counters.maxLatenessNs = 2_500_000
        return BenchReport(options: o, protocolName: "HTTP/1.1", threads: 2, result: r)
    }

    @Test func jsonHasTheFieldsAndRoundTrips() throws {
        let rep = sampleReport(open: true)
        let text = rep.json().serialized()
        let j = try JSON.parse(text)
        #expect(j["tool"] == .string("remora bench"))
        #expect(j["label"] == .string("run \"A\" <1>"))
        #expect(j["config"]?["mode"] == .string("open"))
        #expect(j["config"]?["rate"]?.doubleValue == 1000)
        #expect(j["config"]?["target"] == .string("http://127.0.0.1:8080/p"))
        #expect(j["responses"] == .number("2000"))
        #expect(j["requests_per_s"]?.doubleValue == 1000)
        #expect(j["elapsed_s"]?.doubleValue == 2)
        #expect(j["status"] == .object([("200", .number("1990")), ("503", .number("10"))]))
        #expect(j["errors"]?["reset"] == .number("1"))
        #expect(j["errors"]?["connect"] == .number("0"))
        #expect(j["errors_total"] == .number("1"))
        #expect(j["sends"]?["late"] == .number("3"))
        #expect(j["sends"]?["max_lateness_ms"]?.doubleValue == 2.5)
        #expect(j["latency_ms"]?["count"] == .number("2000"))
        #expect(j["latency_ms"]?["percentiles"]?["p99.999"] != nil)
        #expect(j["uncorrected_latency_ms"]?["count"] == .number("2000"))
        let saved = try SavedRun.load(json: text)
        #expect(saved.label == "run \"A\" <1>")
        #expect(saved.latency.totalCount == 2_000)
        #expect(saved.latency.valueAtPercentile(50) == rep.result.latency.valueAtPercentile(50))
        // closed loop: no open-loop sections
        let closed = try JSON.parse(sampleReport(open: false).json().serialized())
        #expect(closed["sends"] == nil && closed["uncorrected_latency_ms"] == nil)
        #expect(closed["config"]?["rate"] == nil)
    }

    @Test func hgrmIsHdrHistogramsPercentileDistribution() {
        var h = LatencyHistogram.make()
        for v in 1...10_000 { h.record(UInt64(v)) }   // 1 µs … 10 ms
        let text = BenchReport.hgrm(h)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[0] == "       Value     Percentile TotalCount 1/(1-Percentile)")
        #expect(lines[1] == "")
        #expect(lines[2] == "       0.001 0.000000000000          1           1.00")
        let body = lines.dropFirst(2).filter { !$0.isEmpty && !$0.hasPrefix("#") }
        #expect(body.count > 50)
        for l in body { #expect(l.split(separator: " ").count >= 3) }
        // values ascend, percentiles ascend to 1.0
        let values = body.map { Double($0.split(separator: " ")[0])! }
        #expect(values == values.sorted())
        #expect(body.last!.split(separator: " ")[1] == "1.000000000000")
        #expect(values.last! >= 9.99 && values.last! <= 10.01)
        #expect(lines.contains { $0.hasPrefix("#[Mean    =") })
        #expect(lines.contains { $0.hasPrefix("#[Max     =") && $0.hasSuffix("Total count    =        10000]") })
        #expect(lines.contains { $0.hasPrefix("#[Buckets =") })
    }

    @Test func summaryReadsLikeAReport() {
        let s = sampleReport(open: true).summary()
        #expect(s.contains("open loop: 1,000.0 requests/s over 8 connections"))
        #expect(s.contains("Requests      2,000 responses, 1,000.0 req/s"))
        #expect(s.contains("p99.999"))
        #expect(s.contains("corrected  uncorrected"))
        #expect(s.contains("3 late by more than 1 ms"))
        #expect(s.contains("Status        200: 1,990, 503: 10"))
        #expect(s.contains("Errors        connect 0, reset 1, timeout 0, parse 0  (1 in total)"))
        let closed = sampleReport(open: false).summary()
        #expect(closed.contains("closed loop: 8 connections, 1 request in flight each, 2 threads"))
        #expect(!closed.contains("late by"))
    }

    @Test func progressLine() {
        var h = LatencyHistogram.make()
        h.record(100)
        h.record(2_000)
        #expect(BenchReport.progressLine(second: 3, warmingUp: false, ratePerSecond: 12_345, latency: h, errors: 2)
                == "[   3s]      12,345 req/s  p50 0.100 ms  p99 2.000 ms  errors 2")
        #expect(BenchReport.progressLine(second: 1, warmingUp: true, ratePerSecond: 0, latency: h, errors: 0)
                == "[   1s] warming up")
    }

    func grpcReport(_ mode: BenchOptions.GRPCMode, open: Bool = false) -> BenchReport {
        var o = BenchOptions(target: .grpc(BenchURL(host: "h", port: 50051, target: "/p.S/M", authority: "h:50051")))
        o.connections = 2
        o.streams = 4
        o.grpcMode = mode
        if mode == .bidi { o.messages = 5 }
        if open { o.rate = 100 }
        var r = BenchResult()
        r.measureStart = 1_000_000_000
        r.measureEnd = 3_000_000_000
        for _ in 0..<1_000 { r.latency.record(250) }
        r.counters.responses = 200
        r.counters.sent = 201
        r.counters.messagesSent = 1_000
        r.counters.messagesReceived = 998
        r.counters.status[200] = 200
        r.counters.grpcStatus[0] = 199
        r.counters.grpcStatus[14] = 1
        return BenchReport(options: o, protocolName: "gRPC (HTTP/2, h2c)", threads: 1, result: r)
    }

    @Test func grpcSummaryCountsCallsAndMessages() {
        let s = grpcReport(.bidi).summary()
        #expect(s.hasPrefix("remora bench grpc://h:50051/p.S/M (gRPC (HTTP/2, h2c), bidi, 5 messages per call)\n"))
        #expect(s.contains("closed loop: 2 connections, up to 4 calls in flight each (concurrent streams), 1 thread"))
        #expect(s.contains("Calls         200 completed, 100.0 calls/s  (201 started)\n"))
        #expect(s.contains("Messages      sent 1,000 (500.0/s), received 998 (499.0/s)\n"))
        #expect(s.contains("max 0.250  (per message round trip)\n"))
        #expect(s.contains("gRPC status   0: 199, 14: 1\n"))
        #expect(!s.contains("Requests"))
        let ss = grpcReport(.serverStream, open: true).summary()
        #expect(ss.contains("(gRPC (HTTP/2, h2c), server-stream)\n"))
        #expect(ss.contains("open loop: 100.0 calls/s over 2 connections"))
        #expect(ss.contains("(per call)\n"))
        #expect(grpcReport(.bidi, open: true).summary().contains("each call's first round trip measured from the call's intended send time"))
    }

    @Test func grpcJSONHasCallsAndMessages() throws {
        let j = try JSON.parse(grpcReport(.bidi).json().serialized())
        #expect(j["config"]?["grpc_mode"] == .string("bidi"))
        #expect(j["config"]?["messages_per_call"] == .number("5"))
        #expect(j["calls_per_s"]?.doubleValue == 100)
        #expect(j["requests_per_s"]?.doubleValue == 100)
        #expect(j["messages"]?["sent"] == .number("1000"))
        #expect(j["messages"]?["received"] == .number("998"))
        #expect(j["messages"]?["sent_per_s"]?.doubleValue == 500)
        #expect(j["messages"]?["received_per_s"]?.doubleValue == 499)
        #expect(j["latency_of"] == .string("message"))
        #expect(j["grpc_status"]?["14"] == .number("1"))
        let c = try JSON.parse(grpcReport(.clientStream).json().serialized())
        #expect(c["config"]?["messages_per_call"] == .number("10"))
        #expect(c["latency_of"] == .string("call"))
        // HTTP runs carry none of it.
        let h = try JSON.parse(sampleReport(open: false).json().serialized())
        #expect(h["messages"] == nil && h["calls_per_s"] == nil && h["latency_of"] == nil && h["config"]?["grpc_mode"] == nil)
    }

    @Test func grpcProgressLine() {
        var h = LatencyHistogram.make()
        h.record(100)
        #expect(BenchReport.progressLine(second: 2, warmingUp: false, ratePerSecond: 1_234, latency: h, errors: 0,
                                         messagesPerSecond: (sent: 12_340, received: 12_339))
                == "[   2s]       1,234 calls/s      12,340 msg/s out      12,339 msg/s in  p50 0.100 ms  p99 0.100 ms  errors 0")
    }

    @Test func svgChartHasBothRunsOnALogPercentileAxis() {
        let rep = sampleReport(open: false)
        var other = LatencyHistogram.make()
        for i in 0..<1_000 { other.record(UInt64(200 + i)) }
        let svg = rep.svg(comparing: [SavedRun(label: "baseline", latency: other)])
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.hasSuffix("</svg>\n"))
        #expect(svg.components("<polyline") == 2)
        #expect(svg.contains("run &quot;A&quot; &lt;1&gt;"))
        #expect(svg.contains("baseline"))
        for label in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] { #expect(svg.contains(">\(label)<")) }
        #expect(abs(LatencyChart.xFraction(percentile: 90, decades: 5) - 0.2) < 1e-9)
        #expect(abs(LatencyChart.xFraction(percentile: 99.9, decades: 5) - 0.6) < 1e-9)
        #expect(LatencyChart.xFraction(percentile: 100, decades: 5) == 1)
        let small = LatencyChart.niceAxis(0.87)
        #expect(abs(small.max - 0.9) < 1e-9 && abs(small.step - 0.1) < 1e-9)
        #expect(LatencyChart.niceAxis(7.3).max == 8)
        #expect(LatencyChart.niceAxis(130).max == 140)
    }

    @Test func formatting() {
        #expect(Fmt.fixed(1.23456, 3) == "1.235")
        #expect(Fmt.fixed(-0.5, 1) == "-0.5")
        #expect(Fmt.fixed(0.0004, 3) == "0.000")
        #expect(Fmt.fixed(2, 0) == "2")
        #expect(Fmt.fixed(.nan, 2) == "0.00")
        #expect(Fmt.grouped(0) == "0")
        #expect(Fmt.grouped(1234567) == "1,234,567")
        #expect(Fmt.grouped(-1000) == "-1,000")
        #expect(Fmt.rate(98_765.43) == "98,765.4")
        #expect(Fmt.bytes(812) == "812 B")
        #expect(Fmt.bytes(1536) == "1.50 KiB")
        #expect(Fmt.percent(99.999) == "99.999")
        #expect(Fmt.percent(50) == "50")
    }

    @Test func jsonParserHandlesEscapesAndRejectsGarbage() throws {
        let v = try JSON.parse(#"{"a": [1, -2.5e3, true, null], "b": "x\"\\\n\u0041\t"}"#)
        #expect(v["a"] == .array([.number("1"), .number("-2.5e3"), .bool(true), .null]))
        #expect(v["b"] == .string("x\"\\\nA\t"))
        #expect(try JSON.parse(JSON.string("ctl\u{1}").serialized()) == .string("ctl\u{1}"))
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "tru", "\"open", "1 2", "{\"a\":01x}"] {
            #expect(throws: JSON.ParseError.self, "\(bad)") { try JSON.parse(bad) }
        }
    }
}

extension String {
    func components(_ needle: String) -> Int {
        var n = 0
        var rest = self[...]
        while let r = rest.firstRange(of: needle) { n += 1; rest = rest[r.upperBound...] }
        return n
    }
}
