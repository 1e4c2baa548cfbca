import Testing
@testable import RemoraBench

@Suite struct OptionsTests {
    func parse(_ s: String) throws -> BenchOptions {
        guard case let .run(o) = try BenchCommandLine.parse(s.split(separator: " ").map(String.init)) else {
            Issue.record("expected options, got help")
            throw BenchUsageError("help")
        }
        return o
    }

    func error(_ s: String) -> String? {
        do {
            _ = try BenchCommandLine.parse(s.split(separator: " ").map(String.init))
            return nil
        } catch {
            return error.message
        }
    }

    @Test func defaults() throws {
        let o = try parse("http://127.0.0.1:8080/path")
        #expect(o.target == .http1(BenchURL(host: "127.0.0.1", port: 8080, target: "/path", authority: "127.0.0.1:8080")))
        #expect(o.connections == 16)
        #expect(o.streams == 1)
        #expect(o.threads == nil)
        #expect(o.rate == nil)
        #expect(o.duration == 10 * nsPerSecond)
        #expect(o.warmup == 0)
        #expect(o.timeout == 5 * nsPerSecond)
        #expect(o.effectiveMethod == "GET")
        #expect(o.effectiveThreads(cores: 8) == 8)
        #expect(o.effectiveThreads(cores: 64) == 16)   // never more threads than connections
    }

    @Test func everyOption() throws {
        let o = try parse("-c 64 -m 4 -t 2 --rate=1500.5 --max-connections 128 -d 2m -w 500ms --timeout 250ms "
                          + "-H X-A:1 --header=X-B:two --method PUT --body-file /tmp/b --json j --hgrm h --plot p "
                          + "--plot-compare q --label run --no-progress http://[::1]/x?y=1#frag")
        #expect(o.connections == 64)
        #expect(o.streams == 4)
        #expect(o.threads == 2)
        #expect(o.rate == 1500.5)
        #expect(o.maxConnections == 128)
        #expect(o.duration == 120 * nsPerSecond)
        #expect(o.warmup == 500 * nsPerMilli)
        #expect(o.timeout == 250 * nsPerMilli)
        #expect(o.headers == [.init(name: "X-A", value: "1"), .init(name: "X-B", value: "two")])
        #expect(o.effectiveMethod == "PUT")
        #expect(o.bodyFile == "/tmp/b")
        #expect(o.jsonPath == "j" && o.hgrmPath == "h" && o.plotPath == "p" && o.plotComparePath == "q")
        #expect(o.label == "run")
        #expect(o.progress == false)
        #expect(o.target == .http1(BenchURL(host: "::1", port: 80, target: "/x?y=1", authority: "[::1]")))
    }

    @Test func bodyMeansPOSTAndRequestsReplaceDuration() throws {
        let o = try parse("--body-file f -n 1000 http://h:1")
        #expect(o.effectiveMethod == "POST")
        #expect(o.requests == 1000)
        #expect(try BenchCommandLine.parse(["-h"]) == .help)
        #expect(try BenchCommandLine.parse(["http://h/", "--help"]) == .help)
    }

    @Test func urls() throws {
        #expect(try BenchURL.parse("http://example.com") == BenchURL(host: "example.com", port: 80, target: "/", authority: "example.com"))
        #expect(try BenchURL.parse("HTTP://a:81?q") == BenchURL(host: "a", port: 81, target: "/?q", authority: "a:81"))
        #expect(try BenchURL.parse("http://[::1]:9/p").authority == "[::1]:9")
        for bad in ["127.0.0.1:80", "https://a/", "ftp://a/", "http://", "http://a:0/", "http://a:99999/",
                    "http://[::1/", "http://u@a/", "http://a/ b"] {
            #expect(throws: BenchUsageError.self, "\(bad)") { try BenchURL.parse(bad) }
        }
    }

    @Test func durations() throws {
        #expect(try BenchCommandLine.parseDuration("10") == 10 * nsPerSecond)
        #expect(try BenchCommandLine.parseDuration("1.5s") == 1_500 * nsPerMilli)
        #expect(try BenchCommandLine.parseDuration("250us") == 250_000)
        #expect(try BenchCommandLine.parseDuration("2h") == 7200 * nsPerSecond)
        for bad in ["", "s", "-1s", "1x", "1e3s", "fast"] {
            #expect(throws: BenchUsageError.self, "\(bad)") { try BenchCommandLine.parseDuration(bad) }
        }
    }

    @Test func usageErrorsSayWhatIsWrong() {
        #expect(error("") == "no target URL given")
        #expect(error("http://a/ http://b/")?.contains("one URL only") == true)
        #expect(error("--bogus http://a/") == "unknown option --bogus")
        #expect(error("http://a/ -c") == "option -c needs a value")
        #expect(error("-c 0 http://a/")?.contains("expected a whole number > 0") == true)
        #expect(error("-c x http://a/")?.contains("expected a whole number > 0") == true)
        #expect(error("--rate 0 http://a/")?.contains("requests per second > 0") == true)
        #expect(error("--rate nan http://a/")?.contains("requests per second > 0") == true)
        #expect(error("-d 0s http://a/")?.contains("more than 0") == true)
        #expect(error("-d soon http://a/")?.contains("expected a duration") == true)
        #expect(error("--timeout 0 http://a/")?.contains("at least 1ms") == true)
        #expect(error("-t 8 -c 4 http://a/")?.contains("each thread needs a connection") == true)
        #expect(error("--max-connections 32 http://a/")?.contains("only applies to open loop") == true)
        #expect(error("-R 10 -c 8 --max-connections 4 http://a/")?.contains("less than --connections") == true)
        #expect(error("--plot-compare x.json http://a/")?.contains("needs --plot") == true)
        #expect(error("-H NoColon http://a/")?.contains("expected 'Name: value'") == true)
        #expect(error("-H Bad\tName:1 http://a/")?.contains("not a valid header name") == true)
        #expect(error("-H Content-Length:5 http://a/")?.contains("--body-file") == true)
        #expect(error("--method G\u{1}T http://a/")?.contains("not a valid method") == true)
        #expect(error("--h2c --grpc http://a/")?.contains("choose one") == true)
        #expect(error("--grpc 127.0.0.1:50051")?.contains("needs --method") == true)
        #expect(error("--grpc 127.0.0.1:50051 --method Unary")?.contains("/pkg.Service/Method") == true)
        #expect(error("--grpc a:1 --method /p.S/M --body-file b")?.contains("use --data") == true)
        #expect(error("--grpc --method /p.S/M")?.contains("no target") == true)
        #expect(error("--data d.bin http://a/")?.contains("only applies to --grpc") == true)
        #expect(error("--h2c --method /p.S/M http://a/")?.contains("not a valid method") == true)
        #expect(error("https://a/")?.contains("https is not supported") == true)
    }

    @Test func h2cAndGRPCTargets() throws {
        let h = try parse("--h2c http://127.0.0.1:8080/path -c 16 -m 32 -d 5s")
        #expect(h.target == .h2c(BenchURL(host: "127.0.0.1", port: 8080, target: "/path", authority: "127.0.0.1:8080")))
        #expect(h.connections == 16 && h.streams == 32 && h.duration == 5 * nsPerSecond)
        #expect(h.effectiveMethod == "GET")
        let h2 = try parse("-t1 -c16 -m32 -d5s --h2c http://a/")   // attached short-option values
        #expect(h2.target == .h2c(BenchURL(host: "a", port: 80, target: "/", authority: "a")))
        #expect(h2.threads == 1 && h2.connections == 16 && h2.streams == 32 && h2.duration == 5 * nsPerSecond)
        #expect(try parse("--h2c --body-file b http://a/").effectiveMethod == "POST")

        let g = try parse("--grpc 127.0.0.1:50051 --method /pkg.Svc/Method --data req.bin -c 4 -m 8 -d 5s -R 100 --json j")
        #expect(g.target == .grpc(BenchURL(host: "127.0.0.1", port: 50051, target: "/pkg.Svc/Method",
                                           authority: "127.0.0.1:50051")))
        #expect(g.dataFile == "req.bin")
        #expect(g.effectiveMethod == "POST")
        #expect(g.connections == 4 && g.streams == 8 && g.rate == 100 && g.jsonPath == "j")
        let g2 = try parse("--grpc http://[::1]:9000 --method=/a.B/C")   // a URL works too; no --data: empty message
        #expect(g2.target == .grpc(BenchURL(host: "::1", port: 9000, target: "/a.B/C", authority: "[::1]:9000")))
        #expect(g2.dataFile == nil)
    }

    @Test func grpcModes() throws {
        let base = "--grpc 127.0.0.1:50051 --method /p.S/M "
        let u = try parse(base)
        #expect(u.grpcMode == .unary && u.messages == nil && u.messagesPerCall == 1)
        #expect(try parse(base + "--grpc-mode server-stream").grpcMode == .serverStream)
        #expect(try parse(base + "--grpc-mode=server-stream").messagesPerCall == 1)
        let c = try parse(base + "--grpc-mode client-stream")
        #expect(c.grpcMode == .clientStream && c.messages == nil && c.messagesPerCall == 10)   // the default
        let b = try parse(base + "--grpc-mode bidi --messages 3 -R 50")
        #expect(b.grpcMode == .bidi && b.messages == 3 && b.messagesPerCall == 3)
        #expect(b.rate == 50)   // calls per second
        #expect(try parse("--messages=100 --grpc-mode client-stream " + base).messagesPerCall == 100)
        #expect(BenchOptions.GRPCMode.allCases.map(\.rawValue) == ["unary", "server-stream", "client-stream", "bidi"])
    }

    @Test func grpcModeUsageErrors() {
        let base = "--grpc 127.0.0.1:50051 --method /p.S/M "
        #expect(error(base + "--grpc-mode stream")
                == "--grpc-mode stream: expected unary, server-stream, client-stream or bidi")
        #expect(error(base + "--grpc-mode")?.contains("needs a value") == true)
        #expect(error(base + "--messages 5")?.contains("applies to --grpc-mode client-stream and bidi (unary") == true)
        #expect(error(base + "--grpc-mode server-stream --messages 5")?.contains("(server-stream sends one message)") == true)
        #expect(error(base + "--grpc-mode bidi --messages 0")?.contains("expected a whole number > 0") == true)
        #expect(error("--grpc-mode bidi http://a/") == "--grpc-mode only applies to --grpc")
        #expect(error("--h2c --messages 2 http://a/") == "--messages only applies to --grpc")
    }

    @Test func headerValuesAreTrimmedAndChecked() throws {
        #expect(try BenchCommandLine.parseHeader("X-Y:   a b  ") == .init(name: "X-Y", value: "a b"))
        #expect(try BenchCommandLine.parseHeader("X-Y:") == .init(name: "X-Y", value: ""))
        #expect(throws: BenchUsageError.self) { try BenchCommandLine.parseHeader("X: a\r\nInjected: 1") }
    }

    @Test func requestSerialization() {
        let url = BenchURL(host: "h", port: 8080, target: "/p?q", authority: "h:8080")
        let get = HTTP1Protocol.serialize(method: "GET", url: url, headers: [.init(name: "Accept", value: "*/*")], body: nil)
        #expect(String(decoding: get, as: UTF8.self) == "GET /p?q HTTP/1.1\r\nHost: h:8080\r\nAccept: */*\r\n\r\n")
        let post = HTTP1Protocol.serialize(method: "POST", url: url, headers: [.init(name: "host", value: "other")],
                                           body: Array("hello".utf8))
        #expect(String(decoding: post, as: UTF8.self) == "POST /p?q HTTP/1.1\r\nhost: other\r\nContent-Length: 5\r\n\r\nhello")
    }

    @Test func planSplitsAcrossThreads() {
        #expect(BenchPlan.split(16, 3) == [6, 5, 5])
        #expect(BenchPlan.split(UInt64(10), 4) == [3, 3, 2, 2])
        #expect(BenchPlan.split(2, 2) == [1, 1])
        var o = BenchOptions(target: .http1(BenchURL(host: "a", port: 1, target: "/", authority: "a:1")))
        o.connections = 5
        o.rate = 100
        o.maxConnections = 9
        o.requests = 7
        o.warmup = 2 * nsPerSecond
        let p = BenchPlan(options: o, addresses: [], threads: 2, now: 1_000)
        #expect(p.connections == [3, 2])
        #expect(p.maxConnections == [5, 4])
        #expect(p.requests == [4, 3])
        #expect(p.measureStart == p.start + 2 * nsPerSecond)
        #expect(p.end == nil)
    }
}
