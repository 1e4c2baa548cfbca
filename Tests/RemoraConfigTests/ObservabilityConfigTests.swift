import RemoraConfig
import RemoraCore
import Testing

/// `access_log:` on listeners and `node:` (docs/observability.md).
@Suite struct ObservabilityConfigTests {
    func parse(_ yaml: String) -> Result<Config, ConfigErrors> { ConfigLoader.parse(yaml: yaml, file: "t.yaml") }

    func listener(_ accessLog: String, tracing: String? = nil) -> String {
        """
        node: edge-1
        listeners:
          - name: web
            address: 127.0.0.1:1
            access_log: \(accessLog)
        """ + (tracing.map { "\n    tracing: \($0)" } ?? "") + """

            routes: [ { name: all, direct_response: { status: 200 } } ]
        """
    }

    @Test func formats() throws {
        let json = try parse(listener("{ path: /tmp/a.log, format: json }")).get()
        #expect(json.node == "edge-1")
        #expect(json.listeners[0].accessLog == AccessLogConfig(path: "/tmp/a.log", format: .json))
        let text = try parse(listener("{ path: stdout }")).get()
        #expect(text.listeners[0].accessLog == AccessLogConfig(path: "stdout", format: .text(AccessLogFormat.envoyDefault)))
        let custom = try parse(listener("{ path: stdout, format: \"%REQ(:METHOD)% 100%% %RESPONSE_FLAGS%\" }")).get()
        #expect(custom.listeners[0].accessLog?.format == .text([.field(.method), .literal(" 100% "), .field(.responseFlags)]))
        #expect(try parse(listener("{ path: /tmp/a.log }").replacingNode()).get().listeners[0].accessLog != nil)
    }

    @Test func tracing() throws {
        let yaml = listener("{ path: stdout }", tracing: "{ propagate: [ w3c ], sample_percent: 2.5 }")
        let c = try parse(yaml).get()
        #expect(c.listeners[0].tracing == TracingConfig(propagate: [.w3c], samplePercent: 2.5))
        let b3 = try parse(listener("{ path: stdout }", tracing: "{ propagate: [ w3c, b3 ], otlp: { endpoint: \"http://127.0.0.1:4318\" } }")).get()
        #expect(b3.listeners[0].tracing == TracingConfig(propagate: [.w3c, .b3], samplePercent: 1,
                                                         otlp: OTLPConfig(host: "127.0.0.1", port: 4318)))
        for (t, message) in [("{ sample_percent: 101 }", "0 to 100"), ("{ propagate: [ zipkin ] }", "zipkin"),
                             ("{ otlp: { endpoint: \"https://c:4318\" } }", "expected http://HOST:PORT"),
                             ("{ otlp: {} }", "endpoint")] {
            let bad = listener("{ path: stdout }", tracing: t)
            guard case .failure(let e) = parse(bad) else { Issue.record("accepted \(t)"); continue }
            #expect(e.errors.contains { $0.message.contains(message) || $0.path.contains(message) }, "\(t): \(e)")
        }
    }

    @Test func refused() {
        for (yaml, message) in [("{ path: relative.log }", "absolute file path"),
                                ("{ path: stdout, format: \"%NOPE%\" }", "unknown access log command %NOPE%"),
                                ("{ path: stdout, format: \"%DURATION\" }", "unclosed %"),
                                ("{ format: json }", "path")] {
            guard case .failure(let e) = parse(listener(yaml)) else { Issue.record("accepted \(yaml)"); continue }
            #expect(e.errors.contains { $0.message.contains(message) || $0.path.contains(message) }, "\(yaml): \(e)")
        }
    }
}

private extension String {
    func replacingNode() -> String { split(separator: "\n").filter { !$0.hasPrefix("node:") }.joined(separator: "\n") }
}
