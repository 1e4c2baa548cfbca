import RemoraCore

/// What `remora bench` was asked to do: the parsed command line, validated, before anything is
/// resolved or opened. Pure values; `BenchCommandLine.parse` builds it.
public struct BenchOptions: Sendable, Equatable {
    /// The target kind. One case per protocol driver (`BenchProtocol`).
    public enum Target: Sendable, Equatable {
        /// `http://host:port/path`: HTTP/1.1 with keep-alive.
        case http1(BenchURL)
        /// `--h2c http://host:port/path`: HTTP/2 with prior knowledge, `--streams` per connection.
        case h2c(BenchURL)
        /// `--grpc host:port --method /pkg.Svc/Method`: gRPC unary over h2c; the URL's target is
        /// the method path.
        case grpc(BenchURL)

        public var isHTTP1: Bool { if case .http1 = self { return true } else { return false } }
    }

    public var target: Target
    /// Connections in total, split across threads (closed loop: all busy; open loop: the pool). ≥ 1.
    public var connections = 16
    /// Requests in flight per connection: the HTTP/1.1 pipelining depth. ≥ 1.
    public var streams = 1
    /// Threads, each with its own event loop and its own connections. nil = one per core (at most
    /// one per connection).
    public var threads: Int?
    /// Open loop: requests per second in total, across all threads. nil = closed loop.
    public var rate: Double?
    /// Open loop: connections may grow up to this many (total) when every one is busy at a send
    /// time. nil = `connections` (no growth).
    public var maxConnections: Int?
    /// Measured period, ns (ignored when `requests` is set). Default 10 s.
    public var duration: UInt64 = 10 * nsPerSecond
    /// Stop after this many measured requests (in total) instead of after `duration`.
    public var requests: UInt64?
    /// Run this long before measuring, ns; excluded from every result. Default 0.
    public var warmup: UInt64 = 0
    /// Per-request timeout (and connect timeout), ns. Default 5 s.
    public var timeout: UInt64 = 5 * nsPerSecond
    /// Extra request headers, in order (`-H 'name: value'`).
    public var headers: [Header] = []
    /// Request method; nil = GET, or POST when a body is given.
    public var method: String?
    /// File whose contents are sent as the request body (with Content-Length).
    public var bodyFile: String?
    /// gRPC: file holding the serialized request message, sent as-is (length-prefixed).
    public var dataFile: String?
    /// gRPC: the call type (`--grpc-mode`).
    public var grpcMode: GRPCMode = .unary
    /// gRPC client-stream and bidi: messages each call sends (`--messages`); nil = 10.
    public var messages: Int?
    /// Output files.
    public var jsonPath: String?
    public var hgrmPath: String?
    public var plotPath: String?
    /// Another run's `--json` output, drawn on the same chart.
    public var plotComparePath: String?
    /// This run's name in the chart and the JSON; nil = the target.
    public var label: String?
    /// Progress line each second on stderr: nil = only when stderr is a terminal.
    public var progress: Bool?

    public struct Header: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(name: String, value: String) { self.name = name; self.value = value }
    }

    /// The four kinds of gRPC method, by what each call sends and receives.
    public enum GRPCMode: String, CaseIterable, Sendable {
        /// One request message, one reply.
        case unary
        /// One request message, then every reply message the server streams until its trailers.
        case serverStream = "server-stream"
        /// `messagesPerCall` request messages, then one reply.
        case clientStream = "client-stream"
        /// Ping-pong: a request message, then its reply, `messagesPerCall` times; latency per round trip.
        case bidi
    }

    public init(target: Target) { self.target = target }

    /// Threads to run with `cores` online CPUs: the explicit count, else one per core but never
    /// more than connections.
    public func effectiveThreads(cores: Int) -> Int {
        threads ?? max(1, min(cores, connections))
    }

    /// The request method actually sent.
    public var effectiveMethod: String {
        if case .grpc = target { return "POST" }
        return method ?? (bodyFile != nil ? "POST" : "GET")
    }

    public var isOpenLoop: Bool { rate != nil }

    public var isGRPC: Bool { if case .grpc = target { return true } else { return false } }

    /// gRPC: messages each call sends (`--messages`, default 10, for client-stream and bidi; 1 otherwise).
    public var messagesPerCall: Int {
        switch grpcMode {
        case .clientStream, .bidi: return messages ?? 10
        case .unary, .serverStream: return 1
        }
    }
}

public let nsPerSecond: UInt64 = 1_000_000_000
public let nsPerMilli: UInt64 = 1_000_000

/// An `http://` URL taken apart (no DNS, no percent-decoding: the target is sent as written).
public struct BenchURL: Sendable, Equatable {
    /// Host as written, without brackets for IPv6 ("127.0.0.1", "::1", "example.com").
    public var host: String
    public var port: UInt16
    /// Request target: path and query ("/", "/a?b=c").
    public var target: String
    /// Value of the Host header: host, plus ":port" when not 80; IPv6 in brackets.
    public var authority: String

    public init(host: String, port: UInt16, target: String, authority: String) {
        self.host = host; self.port = port; self.target = target; self.authority = authority
    }

    /// Parses `http://host[:port][/path][?query]`. Fragments are dropped.
    public static func parse(_ s: String) throws(BenchUsageError) -> BenchURL {
        var rest = Substring(s)
        guard let sep = rest.firstRange(of: "://") else {
            throw BenchUsageError("target \(s): expected a URL like http://127.0.0.1:8080/path")
        }
        let scheme = rest[..<sep.lowerBound].lowercased()
        rest = rest[sep.upperBound...]
        switch scheme {
        case "http": break
        case "https": throw BenchUsageError("target \(s): https is not supported (no TLS); use http://")
        default: throw BenchUsageError("target \(s): unsupported scheme \(scheme)://; use http://")
        }
        if let hash = rest.firstIndex(of: "#") { rest = rest[..<hash] }
        let authEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let auth = rest[..<authEnd]
        var target = String(rest[authEnd...])
        if target.isEmpty { target = "/" } else if target.first == "?" { target = "/" + target }
        if auth.contains("@") { throw BenchUsageError("target \(s): user info in URLs is not supported") }
        var host: Substring
        var portText: Substring?
        if auth.first == "[" {
            guard let close = auth.firstIndex(of: "]") else { throw BenchUsageError("target \(s): unclosed [ in host") }
            host = auth[auth.index(after: auth.startIndex)..<close]
            let after = auth[auth.index(after: close)...]
            if !after.isEmpty {
                guard after.first == ":" else { throw BenchUsageError("target \(s): bad host") }
                portText = after.dropFirst()
            }
        } else if let colon = auth.lastIndex(of: ":") {
            host = auth[..<colon]
            portText = auth[auth.index(after: colon)...]
        } else {
            host = auth
        }
        if host.isEmpty { throw BenchUsageError("target \(s): no host") }
        var port: UInt16 = 80
        if let portText {
            guard let p = UInt16(portText), p > 0 else { throw BenchUsageError("target \(s): bad port \(portText)") }
            port = p
        }
        for ch in target.utf8 where ch <= 0x20 || ch == 0x7F {
            throw BenchUsageError("target \(s): spaces and control characters must be percent-encoded")
        }
        let bracketed = host.contains(":") ? "[\(host)]" : String(host)
        return BenchURL(host: String(host), port: port, target: target,
                        authority: port == 80 ? bracketed : "\(bracketed):\(port)")
    }
}

/// A command-line mistake; the message says which option and why.
public struct BenchUsageError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

/// `remora bench` argument parsing. Hand-written (the binary stays Foundation-free).
public enum BenchCommandLine {
    public enum Parsed: Equatable {
        case run(BenchOptions)
        case help
    }

    public static let help = """
    usage: remora bench [options] URL
           remora bench --h2c [options] URL
           remora bench --grpc HOST:PORT --method /pkg.Svc/Method [--data F]
                        [--grpc-mode MODE] [--messages N] [options]

    Load generator: HTTP/1.1 keep-alive against URL (http://host:port/path); with
    --h2c, HTTP/2 with prior knowledge (streams multiplexed per connection); with
    --grpc, gRPC calls over h2c (for gRPC, each "request" below is a call).

    Load shape:                                                            [default]
      -c, --connections N      connections in total, split across threads       [16]
      -m, --streams M          requests in flight per connection (HTTP/1.1
                               pipelining depth; HTTP/2 concurrent streams,
                               capped by the server's limit)                     [1]
      -t, --threads T          threads, each its own loop and connections [cores, ≤ N]
      -R, --rate R             open loop: R requests/s (gRPC: calls/s, whatever
                               the messages per call) in total, each sent at its
                               intended time, latency measured from that time
                               (coordinated omission corrected, as wrk2). Without
                               --rate: closed loop, as fast as responses come back.
          --max-connections N  open loop: when every connection is busy at a send
                               time, open more, up to N in total; the request
                               waits meanwhile, its latency clock running       [-c]
      -d, --duration D         measure for D (500ms, 10s, 2m)                  [10s]
      -n, --requests N         measure N requests instead of a duration
      -w, --warmup D           run D first, excluded from every result          [0s]
          --timeout D          per-request and connect timeout (gRPC: per       [5s]
                               call, however many messages it carries)

    Request:
      -H, --header 'N: V'      add a header (repeatable; a Host header replaces
                               the default one)
          --method M           request method             [GET, or POST with a body]
          --body-file F        send F's bytes as the body, with Content-Length
          --h2c                HTTP/2 with prior knowledge (cleartext) to URL
          --grpc               gRPC: the target is HOST:PORT, --method the path
                               (/pkg.Service/Method)
          --data F             gRPC: F holds the serialized request message (a
                               protobuf, sent as-is)                       [empty]
          --grpc-mode M        gRPC call type, as the method is declared:    [unary]
                               unary          one message each way
                               server-stream  one message sent, then every
                                              reply message counted until the
                                              trailers
                               client-stream  --messages sent, one reply
                               bidi           ping-pong: a message, then its
                                              reply, --messages times; latency
                                              is per message round trip
          --messages N         client-stream and bidi: messages per call        [10]

    Output (a summary on stdout in any case):
          --json F             results as JSON, with the encoded HdrHistogram
          --hgrm F             HdrHistogram percentile distribution, in ms
          --plot F             SVG chart: latency by percentile (log 1/(1-p) axis)
          --plot-compare F     also draw another run's --json on that chart
          --label S            this run's name in the chart and the JSON       [URL]
          --progress, --no-progress
                               a line per second on stderr   [if stderr is a tty]
      -h, --help               this text

    gRPC reports calls/s and messages/s sent and received; grpc-status codes are
    counted (a non-zero status is not an error). Errors are counted by kind
    (connect, reset of the connection or the stream, timeout, parse), never fatal;
    every request has a timeout. Ctrl-C stops and prints the results so far (exit
    130). Exit status: 0 when at least one response came back, 1 when none did, 2
    for bad usage.

    """

    /// Parses the arguments after `bench`.
    public static func parse<S: Sequence>(_ argv: S) throws(BenchUsageError) -> Parsed where S.Element == String {
        var args = Array(argv)[...]
        var urlText: String?
        var o = BenchOptions(target: .http1(BenchURL(host: "", port: 0, target: "/", authority: "")))
        var threadsSet = false
        var h2c = false
        var grpc = false
        var grpcModeSet = false

        func value(_ name: String, _ inline: String?) throws(BenchUsageError) -> String {
            if let inline { return inline }
            guard let v = args.popFirst() else { throw BenchUsageError("option \(name) needs a value") }
            return v
        }

        while let a = args.popFirst() {
            if a == "--" {
                while let p = args.popFirst() {
                    if urlText != nil { throw BenchUsageError("unexpected argument \(p) (one URL only)") }
                    urlText = p
                }
                break
            }
            guard a.hasPrefix("-"), a.count > 1 else {
                if urlText != nil { throw BenchUsageError("unexpected argument \(a) (one URL only)") }
                urlText = a
                continue
            }
            var name = a
            var inline: String?
            if a.hasPrefix("--"), let eq = a.firstIndex(of: "=") {
                name = String(a[..<eq])
                inline = String(a[a.index(after: eq)...])
            } else if !a.hasPrefix("--"), a.count > 2, "cmtRdnwH".contains(a[a.index(after: a.startIndex)]) {
                // Short option with its value attached: -c16, -t1, -d5s (as wrk and h2load take them).
                name = String(a.prefix(2))
                inline = String(a.dropFirst(2))
            }
            switch name {
            case "-h", "--help": return .help
            case "-c", "--connections": o.connections = try count(name, value(name, inline))
            case "-m", "--streams": o.streams = try count(name, value(name, inline))
            case "-t", "--threads": o.threads = try count(name, value(name, inline)); threadsSet = true
            case "-R", "--rate":
                let t = try value(name, inline)
                guard let r = Double(t), r.isFinite, r > 0 else {
                    throw BenchUsageError("\(name) \(t): expected requests per second > 0")
                }
                o.rate = r
            case "--max-connections": o.maxConnections = try count(name, value(name, inline))
            case "-d", "--duration":
                o.duration = try parseDuration(value(name, inline), option: name)
                if o.duration == 0 { throw BenchUsageError("\(name) must be more than 0") }
            case "-n", "--requests":
                let t = try value(name, inline)
                guard let n = UInt64(t), n > 0 else { throw BenchUsageError("\(name) \(t): expected a count > 0") }
                o.requests = n
            case "-w", "--warmup": o.warmup = try parseDuration(value(name, inline), option: name)
            case "--timeout":
                o.timeout = try parseDuration(value(name, inline), option: name)
                if o.timeout < nsPerMilli { throw BenchUsageError("--timeout must be at least 1ms") }
            case "-H", "--header": o.headers.append(try parseHeader(value(name, inline)))
            case "--method": o.method = try value(name, inline)   // checked below (gRPC: a path)
            case "--body-file": o.bodyFile = try value(name, inline)
            case "--json": o.jsonPath = try value(name, inline)
            case "--hgrm": o.hgrmPath = try value(name, inline)
            case "--plot": o.plotPath = try value(name, inline)
            case "--plot-compare": o.plotComparePath = try value(name, inline)
            case "--label": o.label = try value(name, inline)
            case "--progress": o.progress = true
            case "--no-progress": o.progress = false
            case "--h2c": h2c = true
            case "--grpc": grpc = true
            case "--data": o.dataFile = try value(name, inline)
            case "--grpc-mode":
                let t = try value(name, inline)
                guard let m = BenchOptions.GRPCMode(rawValue: t) else {
                    throw BenchUsageError("--grpc-mode \(t): expected unary, server-stream, client-stream or bidi")
                }
                o.grpcMode = m; grpcModeSet = true
            case "--messages": o.messages = try count(name, value(name, inline))
            default:
                throw BenchUsageError("unknown option \(a)")
            }
        }
        if h2c && grpc { throw BenchUsageError("--h2c and --grpc: choose one") }
        if grpc {
            guard let urlText else { throw BenchUsageError("--grpc: no target HOST:PORT given") }
            guard let m = o.method else { throw BenchUsageError("--grpc needs --method /pkg.Service/Method") }
            guard m.hasPrefix("/"), m.dropFirst().contains("/"),
                  !m.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else {
                throw BenchUsageError("--method \(m): a gRPC method is a path like /pkg.Service/Method")
            }
            if o.bodyFile != nil { throw BenchUsageError("--body-file does not apply to --grpc (use --data)") }
            if o.messages != nil && o.grpcMode != .clientStream && o.grpcMode != .bidi {
                throw BenchUsageError("--messages applies to --grpc-mode client-stream and bidi (\(o.grpcMode.rawValue) sends one message)")
            }
            var u = try BenchURL.parse(urlText.contains("://") ? urlText : "http://" + urlText)
            u.target = m
            o.target = .grpc(u)
        } else {
            guard let urlText else { throw BenchUsageError("no target URL given") }
            if o.dataFile != nil { throw BenchUsageError("--data only applies to --grpc (use --body-file)") }
            if grpcModeSet || o.messages != nil {
                throw BenchUsageError("\(grpcModeSet ? "--grpc-mode" : "--messages") only applies to --grpc")
            }
            if let m = o.method, m.isEmpty || !m.utf8.allSatisfy(isTokenByte) {
                throw BenchUsageError("--method \(m): not a valid method token")
            }
            let u = try BenchURL.parse(urlText)
            o.target = h2c ? .h2c(u) : .http1(u)
        }

        if threadsSet, let t = o.threads, t > o.connections {
            throw BenchUsageError("--threads \(t) is more than --connections \(o.connections): each thread needs a connection")
        }
        if let m = o.maxConnections {
            guard o.rate != nil else { throw BenchUsageError("--max-connections only applies to open loop (--rate)") }
            if m < o.connections { throw BenchUsageError("--max-connections \(m) is less than --connections \(o.connections)") }
        }
        if o.plotComparePath != nil && o.plotPath == nil {
            throw BenchUsageError("--plot-compare needs --plot FILE (where the chart goes)")
        }
        for h in o.headers {
            let n = h.name.lowercased()
            if n == "content-length" || n == "transfer-encoding" {
                throw BenchUsageError("-H \(h.name): set by remora bench (use --body-file for a body)")
            }
        }
        return .run(o)
    }

    static func count(_ name: String, _ t: String) throws(BenchUsageError) -> Int {
        guard let n = Int(t), n > 0 else { throw BenchUsageError("\(name) \(t): expected a whole number > 0") }
        guard n <= 1_000_000 else { throw BenchUsageError("\(name) \(t): too large") }
        return n
    }

    /// "10s", "500ms", "2m", "1h", "250us", "1.5s"; a bare number is seconds. Returns ns.
    public static func parseDuration(_ t: String, option: String = "duration") throws(BenchUsageError) -> UInt64 {
        let units: [(String, Double)] = [("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        var number = Substring(t)
        var scale = 1e9
        for (suffix, s) in units where t.hasSuffix(suffix) {
            number = t.dropLast(suffix.count)
            scale = s
            break
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
              let v = Double(number), v.isFinite, v >= 0, v * scale < 1e18 else {
            throw BenchUsageError("\(option) \(t): expected a duration like 500ms, 10s, 2m")
        }
        return UInt64((v * scale).rounded())
    }

    /// "Name: value" (the value's surrounding spaces trimmed).
    public static func parseHeader(_ t: String) throws(BenchUsageError) -> BenchOptions.Header {
        guard let colon = t.firstIndex(of: ":") else { throw BenchUsageError("-H \(t): expected 'Name: value'") }
        let name = String(t[..<colon])
        let value = String(t[t.index(after: colon)...]).trimmingSpaces()
        guard !name.isEmpty, name.utf8.allSatisfy(isTokenByte) else {
            throw BenchUsageError("-H \(t): '\(name)' is not a valid header name")
        }
        guard !value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) else {
            throw BenchUsageError("-H \(name): CR, LF and NUL are not allowed in a value")
        }
        return .init(name: name, value: value)
    }

    /// RFC 9110 token characters.
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
