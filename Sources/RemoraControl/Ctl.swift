import Glibc
import RemoraConfig
import RemoraCore

/// One line of `GET /v1/status`.
public struct NodeStatus: Equatable, Sendable {
    public var node: String
    public var group: String
    public var version: UInt64
    public var state: String
    public var reason: String
    public var lastSeen: UInt64
    public var admin: String

    /// `node group version state reason last_seen_seconds admin`; nil for anything else.
    public init?(line: Substring) {
        let f = line.split(separator: " ", omittingEmptySubsequences: true)
        guard f.count == 7, let v = UInt64(f[2]), let seen = UInt64(f[5]) else { return nil }
        node = String(f[0]); group = String(f[1]); version = v; state = String(f[3])
        reason = decodeField(String(f[4])); lastSeen = seen; admin = decodeField(String(f[6]))
    }

    public static func parse(_ text: String) -> [NodeStatus] {
        text.split(separator: "\n").compactMap { NodeStatus(line: $0) }
    }
}

/// Runs `remora ctl` commands against a control server. I/O goes through `transport`, time through
/// `sleep` and `clock`, output through `out`/`err`: tests replace all of them.
public final class Ctl {
    let control: ControlURL
    let token: String?
    let transport: HTTPTransport
    public var out: (String) -> Void = { s in var s = s + "\n"; s.withUTF8 { _ = write(1, $0.baseAddress, $0.count) } }
    public var err: (String) -> Void = { s in var s = s + "\n"; s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }
    /// Blocks for ms.
    public var sleep: (UInt64) -> Void = { ms in
        var ts = timespec(tv_sec: Int(ms / 1000), tv_nsec: Int(ms % 1000) * 1_000_000)
        var left = timespec()
        while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
    }
    /// Monotonic ms.
    public var clock: () -> UInt64 = {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }
    /// How long a canary step waits for the proxies to ACK its version, ms.
    public var ackTimeout: UInt64 = 30_000
    /// Standard output is a terminal (`top` redraws; piped, it prints one table).
    public var interactive: Bool = isatty(1) == 1
    /// Nodes not seen for longer than this are left out of a canary walk, seconds.
    public var liveWithin: UInt64 = 90

    public init(control: ControlURL, token: String?, transport: HTTPTransport = BlockingHTTPClient()) {
        self.control = control; self.token = token; self.transport = transport
    }

    /// The token: the file's first line, else REMORA_CONTROL_TOKEN, else none.
    public static func token(file: String?) throws(CtlUsageError) -> String? {
        if let file {
            guard let bytes = try? StateDirectory.read(file) else { throw CtlUsageError("--token-file: cannot read \(file)") }
            let t = String(decoding: bytes, as: UTF8.self).trimmingWhitespace
            if t.isEmpty { throw CtlUsageError("--token-file: \(file) is empty") }
            return t
        }
        if let e = getenv("REMORA_CONTROL_TOKEN"), e.pointee != 0 { return String(cString: e).trimmingWhitespace }
        return nil
    }

    /// Exit code: 0 done, 1 refused or failed.
    public func run(_ command: CtlCommand) -> Int32 {
        do {
            switch command {
            case .status: return try status()
            case .get(let g): return try get(g)
            case let .apply(g, file, force): return try apply(g, file: file, force: force)
            case let .split(g, route, weights):
                let v = try split(g, route, weights)
                out("\(g): version \(v)")
                return 0
            case .canary(let o): return try canary(o)
            case let .top(admin, interval, count): return try top(admin, interval: interval, count: count)
            case .caStatus:
                out(try expectOK(call("GET", "/v1/ca")).text.trimmingWhitespace)
                return 0
            case .caBundle:
                out(try expectOK(call("GET", "/v1/ca/bundle")).text.trimmingWhitespace)
                return 0
            case let .caRotate(start, signAfter, force):
                var target = "/v1/ca/rotate?step=" + (start ? "start" : "finish")
                if let signAfter { target += "&sign_after=\(signAfter)" }
                if force { target += "&force=1" }
                out(try expectOK(call("POST", target)).text.trimmingWhitespace)
                return 0
            }
        } catch {
            err(error.status == 0 ? "remora ctl: \(error.message)" : "remora ctl: \(error.status): \(error.message.trimmingWhitespace)")
            return 1
        }
    }

    // MARK: requests

    func call(_ method: String, _ target: String, body: [UInt8] = []) throws(ControlError) -> HTTPResult {
        var headers: [(name: String, value: String)] = []
        if let token { headers.append(("authorization", "Bearer \(token)")) }
        return try transport.request(method, host: control.host, port: control.port, target: target, headers: headers, body: body)
    }

    /// The answer when it is 2xx; a `ControlError` carrying the server's text otherwise.
    func expectOK(_ r: HTTPResult) throws(ControlError) -> HTTPResult {
        guard (200..<300).contains(r.status) else { throw ControlError(r.status, r.text) }
        return r
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if ControlRequest.isNameByte(b) || b == 0x2F || b == 0x3A { out.unicodeScalars.append(UnicodeScalar(b)) }
            else { out += "%" + String(b, radix: 16, uppercase: true).leftPad(2) }
        }
        return out
    }

    func status() throws(ControlError) -> Int32 {
        let nodes = NodeStatus.parse(try expectOK(call("GET", "/v1/status")).text)
        if nodes.isEmpty {
            out("no proxy has polled this control server yet")
            return 0
        }
        var rows = [["NODE", "GROUP", "VERSION", "STATE", "REASON", "LAST SEEN", "ADMIN"]]
        for n in nodes {
            var reason = n.reason.split(separator: "\n").first.map(String.init) ?? ""
            let more = n.reason.split(separator: "\n").count - 1
            if reason.count > 100 { reason = String(reason.prefix(99)) + "…" }
            if more > 0 { reason += " (+\(more) more)" }
            rows.append([n.node, n.group, "\(n.version)", n.state, reason.isEmpty ? "-" : reason, "\(n.lastSeen)s ago",
                         n.admin.isEmpty ? "-" : n.admin])
        }
        out(Self.table(rows))
        return 0
    }

    /// Columns padded to their widest cell, two spaces apart.
    static func table(_ rows: [[String]]) -> String {
        var widths = [Int](repeating: 0, count: rows.map(\.count).max() ?? 0)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count) }
                .joined(separator: "  ")
        }.joined(separator: "\n")
    }

    func get(_ group: String) throws(ControlError) -> Int32 {
        let r = try expectOK(call("GET", "/v1/groups/\(Self.escape(group))"))
        var text = r.text
        text.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
        return 0
    }

    func apply(_ group: String, file: String, force: Bool) throws(ControlError) -> Int32 {
        let bytes: [UInt8]
        if file == "-" {
            bytes = Self.readStdin()
        } else {
            do { bytes = try StateDirectory.read(file) } catch { throw ControlError(0, "cannot read \(file): \(error.message)") }
        }
        let r = try call("PUT", "/v1/groups/\(Self.escape(group))" + (force ? "?force=1" : ""), body: bytes)
        if r.status == 400 {
            err(r.text.trimmingWhitespace)
            return 1
        }
        let ok = try expectOK(r)
        out("\(group): \(ok.text.trimmingWhitespace)")
        return 0
    }

    static func readStdin() -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return out }
            out += buf[..<n]
        }
    }

    /// Returns the version stored.
    func split(_ group: String, _ route: String, _ weights: [ClusterWeight]) throws(ControlError) -> UInt64 {
        let body = weights.map { "\($0.cluster)=\($0.weight)" }.joined(separator: " ")
        let r = try expectOK(call("POST", "/v1/groups/\(Self.escape(group))/split?route=\(Self.escape(route))", body: Array(body.utf8)))
        guard let v = r.header("x-remora-version").flatMap({ UInt64($0) })
                ?? UInt64(r.text.trimmingWhitespace.split(separator: " ").last ?? "") else {
            throw ControlError(0, "unexpected answer to split: \(r.text)")
        }
        return v
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
