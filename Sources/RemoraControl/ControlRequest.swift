import RemoraCore

// The control protocol's requests (docs/control-plane.md), parsed from method, target and body
// without any I/O, so that every rule about names, numbers and query strings is tested alone.

/// A refusal: the HTTP status and the text of the answer. Says who failed: 4xx the caller, 5xx
/// the control server (a 5xx request may be retried).
public struct ControlError: Error, Equatable, CustomStringConvertible {
    public var status: Int
    public var message: String
    public init(_ status: Int, _ message: String) { self.status = status; self.message = message }
    public var description: String { "\(status) \(message)" }
}

/// One cluster's new weight in a split.
public struct ClusterWeight: Equatable, Sendable {
    public var cluster: String
    /// 0 ... 1_000_000, as in the config schema.
    public var weight: UInt32
    public init(_ cluster: String, _ weight: UInt32) { self.cluster = cluster; self.weight = weight }
}

public enum ControlRequest: Equatable {
    /// `GET /v1/snapshot`: `version` 0 when absent, `wait` in seconds.
    case snapshot(group: String, node: String, version: UInt64, admin: String?, wait: UInt64)
    case ack(group: String, node: String, version: UInt64)
    case nack(group: String, node: String, version: UInt64, reason: String)
    case put(group: String, document: String, force: Bool)
    case getGroup(String)
    case listGroups
    /// `route` is a route name, or `listener/route` for one listener's route.
    case split(group: String, route: String, weights: [ClusterWeight])
    case status
    /// `POST /v1/ca/certificate` (body: a PEM CSR; the identity token is a header, read by the server).
    case caIssue(csr: String)
    /// `GET /v1/ca/bundle`: the trust bundle (PEM roots).
    case caBundle
    /// `GET /v1/ca`: the CA's state as `name value` lines.
    case caStatus
    /// `POST /v1/ca/rotate?step=start[&sign_after=SECONDS]` or `?step=finish[&force=1]`.
    case caRotate(start: Bool, signAfter: UInt64, force: Bool)

    /// Longest long poll a client may ask for, seconds.
    public static let maxWait: UInt64 = 3_600
    /// Largest version accepted from a client.
    public static let maxVersion: UInt64 = 1 << 53
    /// Long poll length when the client names none, seconds.
    public static let defaultWait: UInt64 = 30
    /// Seconds between the start of a root rotation and the new root's first signature (every proxy
    /// fetches the new bundle meanwhile; they look every `bundle_refresh`, 30 s by default).
    public static let defaultSignAfter: UInt64 = 90

    /// Parses one request. Errors are 400 (malformed), 404 (no such endpoint) or 405 (wrong method).
    public static func parse(method: String, target: String, body: [UInt8]) -> Result<ControlRequest, ControlError> {
        do { return .success(try parseThrowing(method: method, target: target, body: body)) } catch {
            return .failure(error)
        }
    }

    static func parseThrowing(method: String, target: String, body: [UInt8]) throws(ControlError) -> ControlRequest {
        let (rawPath, rawQuery) = splitTarget(target)
        let segments = try rawPath.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map { s throws(ControlError) in
            try percentDecode(s, plusIsSpace: false)
        }
        let q = try Query(rawQuery)
        func want(_ m: String) throws(ControlError) {
            if method != m && !(m == "GET" && method == "HEAD") { throw ControlError(405, "use \(m) for \(rawPath)") }
        }
        guard segments.first == "v1" else { throw ControlError(404, "no such endpoint: \(rawPath) (see docs/control-plane.md)") }
        switch Array(segments.dropFirst()) {
        case ["snapshot"]:
            try want("GET")
            let admin = try q.optional("admin")
            if let admin, HostPort.parse(admin) == nil || admin.isEmpty {
                throw ControlError(400, "admin: expected HOST:PORT, got \(admin)")
            }
            let wait = try q.number("wait") ?? defaultWait
            if wait > maxWait { throw ControlError(400, "wait: at most \(maxWait) seconds, got \(wait)") }
            return .snapshot(group: try q.group(), node: try q.node(), version: try q.version(required: false),
                             admin: admin, wait: wait)
        case ["ack"]:
            try want("POST")
            return .ack(group: try q.group(), node: try q.node(), version: try q.version(required: true))
        case ["nack"]:
            try want("POST")
            return .nack(group: try q.group(), node: try q.node(), version: try q.version(required: true),
                         reason: String(decoding: body, as: UTF8.self))
        case ["groups"]:
            try want("GET")
            return .listGroups
        case let s where s.count == 2 && s[0] == "groups":
            let group = try checkGroup(s[1])
            switch method {
            case "PUT":
                let force = try q.optional("force")
                guard force == nil || force == "1" || force == "true" || force == "0" || force == "false" else {
                    throw ControlError(400, "force: expected 1 or 0, got \(force!)")
                }
                return .put(group: group, document: String(decoding: body, as: UTF8.self), force: force == "1" || force == "true")
            case "GET", "HEAD":
                return .getGroup(group)
            default:
                throw ControlError(405, "use GET or PUT for \(rawPath)")
            }
        case let s where s.count == 3 && s[0] == "groups" && s[2] == "split":
            try want("POST")
            let group = try checkGroup(s[1])
            guard let route = try q.optional("route"), !route.isEmpty else { throw ControlError(400, "route: required") }
            try checkRouteSpec(route)
            return .split(group: group, route: route, weights: try parseWeights(String(decoding: body, as: UTF8.self)))
        case ["status"]:
            try want("GET")
            return .status
        case ["ca"]:
            try want("GET")
            return .caStatus
        case ["ca", "bundle"]:
            try want("GET")
            return .caBundle
        case ["ca", "certificate"]:
            try want("POST")
            guard !body.isEmpty else { throw ControlError(400, "body: a PEM certificate signing request is required") }
            return .caIssue(csr: String(decoding: body, as: UTF8.self))
        case ["ca", "rotate"]:
            try want("POST")
            let step = try q.required("step")
            guard step == "start" || step == "finish" else { throw ControlError(400, "step: expected start or finish, got \(step)") }
            let after = try q.number("sign_after") ?? defaultSignAfter
            if after > maxWait * 24 { throw ControlError(400, "sign_after: at most \(maxWait * 24) seconds, got \(after)") }
            let force = try q.optional("force")
            return .caRotate(start: step == "start", signAfter: after, force: force == "1" || force == "true")
        default:
            throw ControlError(404, "no such endpoint: \(rawPath) (see docs/control-plane.md)")
        }
    }

    static func splitTarget(_ target: String) -> (Substring, Substring) {
        var t = Substring(target)
        if let hash = t.firstIndex(of: "#") { t = t[..<hash] }
        guard let q = t.firstIndex(of: "?") else { return (t, "") }
        return (t[..<q], t[t.index(after: q)...])
    }

    /// `cluster=weight` pairs separated by spaces, tabs, newlines or commas: `v1=95 v2=5`.
    public static func parseWeights(_ text: String) throws(ControlError) -> [ClusterWeight] {
        var out: [ClusterWeight] = []
        let items = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" || $0 == "," || $0 == "&" })
        for item in items {
            guard let eq = item.firstIndex(of: "=") else {
                throw ControlError(400, "expected CLUSTER=WEIGHT, got \(item)")
            }
            let name = String(item[..<eq])
            let w = item[item.index(after: eq)...]
            guard isName(name) else { throw ControlError(400, "not a cluster name: \(name)") }
            guard !w.isEmpty, w.allSatisfy({ $0.isASCII && $0.isNumber }), let v = UInt32(w), v <= 1_000_000 else {
                throw ControlError(400, "\(name): expected a weight from 0 to 1000000, got \(w)")
            }
            if out.contains(where: { $0.cluster == name }) { throw ControlError(400, "\(name): given twice") }
            out.append(ClusterWeight(name, v))
        }
        if out.isEmpty { throw ControlError(400, "no weights given (expected CLUSTER=WEIGHT ..., e.g. v1=95 v2=5)") }
        return out
    }

    /// `[A-Za-z0-9_.-]+`, as config names.
    static func isName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { isNameByte($0) }
    }

    static func isNameByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2E || b == 0x2D
    }

    /// Group names become file names: a config name, at most 128 bytes, not starting with ".".
    public static func checkGroup(_ s: String) throws(ControlError) -> String {
        guard isName(s), s.utf8.count <= 128, !s.hasPrefix(".") else {
            throw ControlError(400, "group: expected a name of letters, digits, \"_\", \".\" and \"-\" (not starting with \".\", at most 128), got \"\(s)\"")
        }
        return s
    }

    /// Node ids: letters, digits, `_ . - : @`, 1 to 253 bytes.
    public static func checkNode(_ s: String) throws(ControlError) -> String {
        guard !s.isEmpty, s.utf8.count <= 253, s.utf8.allSatisfy({ isNameByte($0) || $0 == 0x3A || $0 == 0x40 }) else {
            throw ControlError(400, "node: expected an id of letters, digits, \"_\", \".\", \"-\", \":\" and \"@\" (at most 253), got \"\(s)\"")
        }
        return s
    }

    static func checkRouteSpec(_ s: String) throws(ControlError) {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, parts.allSatisfy({ isName(String($0)) }) else {
            throw ControlError(400, "route: expected ROUTE or LISTENER/ROUTE, got \"\(s)\"")
        }
    }
}

/// The `name=value` pairs of a query string, percent-decoded (`+` is a space).
struct Query {
    var pairs: [(String, String)] = []

    init(_ raw: Substring) throws(ControlError) {
        for item in raw.split(separator: "&") {
            let eq = item.firstIndex(of: "=")
            let name = try percentDecode(eq.map { item[..<$0] } ?? item, plusIsSpace: true)
            let value = try eq.map { i throws(ControlError) in try percentDecode(item[item.index(after: i)...], plusIsSpace: true) } ?? ""
            pairs.append((name, value))
        }
    }

    /// The first value of `name`; nil when absent.
    func optional(_ name: String) throws(ControlError) -> String? { pairs.first { $0.0 == name }?.1 }

    func required(_ name: String) throws(ControlError) -> String {
        guard let v = try optional(name), !v.isEmpty else { throw ControlError(400, "\(name): required") }
        return v
    }

    /// A decimal number (no sign); nil when absent.
    func number(_ name: String) throws(ControlError) -> UInt64? {
        guard let v = try optional(name) else { return nil }
        guard !v.isEmpty, v.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt64(v) else {
            throw ControlError(400, "\(name): expected a whole number, got \"\(v)\"")
        }
        return n
    }

    func requiredNumber(_ name: String) throws(ControlError) -> UInt64 {
        guard let n = try number(name) else { throw ControlError(400, "\(name): required") }
        return n
    }

    /// A version: at most 2^53 (exact in every JSON reader; far from overflow when bumped).
    func version(required: Bool) throws(ControlError) -> UInt64 {
        let v = required ? try requiredNumber("version") : try number("version") ?? 0
        if v > ControlRequest.maxVersion { throw ControlError(400, "version: at most \(ControlRequest.maxVersion), got \(v)") }
        return v
    }

    func group() throws(ControlError) -> String { try ControlRequest.checkGroup(try required("group")) }
    func node() throws(ControlError) -> String { try ControlRequest.checkNode(try required("node")) }
}

/// `%XX` decoding; invalid escapes or bytes that are not UTF-8 are errors.
func percentDecode(_ s: Substring, plusIsSpace: Bool) throws(ControlError) -> String {
    if !s.utf8.contains(0x25) && !(plusIsSpace && s.utf8.contains(0x2B)) { return String(s) }
    var out: [UInt8] = []
    var it = Array(s.utf8)[...]
    while let b = it.popFirst() {
        if b == 0x25 {
            guard it.count >= 2, let hi = hexValue(it[it.startIndex]), let lo = hexValue(it[it.startIndex + 1]) else {
                throw ControlError(400, "bad percent-encoding in \"\(s)\"")
            }
            out.append(hi << 4 | lo)
            it = it.dropFirst(2)
        } else if b == 0x2B && plusIsSpace {
            out.append(0x20)
        } else {
            out.append(b)
        }
    }
    guard let text = String(validating: out, as: UTF8.self) else { throw ControlError(400, "\"\(s)\" is not UTF-8 once decoded") }
    return text
}

func hexValue(_ b: UInt8) -> UInt8? {
    switch b {
    case 0x30...0x39: return b - 0x30
    case 0x41...0x46: return b - 0x41 + 10
    case 0x61...0x66: return b - 0x61 + 10
    default: return nil
    }
}

/// Percent-encodes what would break a space-separated line: whitespace, control bytes, `%`; "-"
/// for the empty string (and "%2D" for a lone "-").
public func encodeField(_ s: String) -> String {
    if s.isEmpty { return "-" }
    if s == "-" { return "%2D" }
    var out: [UInt8] = []
    for b in s.utf8 {
        if b <= 0x20 || b == 0x7F || b == 0x25 {
            let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
            out += [0x25, hex[Int(b >> 4)], hex[Int(b & 15)]]
        } else {
            out.append(b)
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// The inverse of `encodeField` ("-" is the empty string).
public func decodeField(_ s: String) -> String {
    if s == "-" { return "" }
    return (try? percentDecode(Substring(s), plusIsSpace: false)) ?? s
}
