import RemoraTLS

// Bootstrap tokens of the mesh CA (docs/control-plane.md "Mesh CA"): one per workload identity,
// kept in `<state>/ca/tokens` as the SHA-256 of the token, never the token itself. Pure apart from
// the hash: parsing, the check and the names are unit-tested.

/// A workload's identity: its namespace and service account, as in Kubernetes.
public struct WorkloadIdentity: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var namespace: String
    public var serviceAccount: String
    public init(namespace: String, serviceAccount: String) { self.namespace = namespace; self.serviceAccount = serviceAccount }

    /// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    public func spiffeID(trustDomain: String) -> String { "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)" }
    public var description: String { "\(namespace)/\(serviceAccount)" }

    /// Kubernetes' rule for both (a DNS subdomain, RFC 1123): lowercase letters, digits, `-` and
    /// `.`, starting and ending with a letter or digit; namespaces at most 63 bytes, service
    /// accounts 253.
    public static func validName(_ s: String, max: Int) -> Bool {
        let u = Array(s.utf8)
        guard !u.isEmpty, u.count <= max else { return false }
        func alnum(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
        guard alnum(u.first!), alnum(u.last!) else { return false }
        return u.allSatisfy { alnum($0) || $0 == 0x2D || $0 == 0x2E }
    }

    /// `NS/SA` (or `NS SA` split by the caller) checked; nil with the reason otherwise.
    public static func parse(namespace ns: String, serviceAccount sa: String) throws(ControlError) -> WorkloadIdentity {
        guard validName(ns, max: 63) else {
            throw ControlError(400, "namespace \"\(ns)\": lowercase letters, digits, \"-\" and \".\", at most 63, starting and ending with a letter or digit")
        }
        guard validName(sa, max: 253) else {
            throw ControlError(400, "service account \"\(sa)\": lowercase letters, digits, \"-\" and \".\", at most 253, starting and ending with a letter or digit")
        }
        return WorkloadIdentity(namespace: ns, serviceAccount: sa)
    }
}

/// The tokens file: one line per token, `SHA256HEX NAMESPACE SERVICE_ACCOUNT`; `#` comments and
/// blank lines are ignored. Several tokens may name the same identity.
public struct TokenTable: Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public var hash: String
        public var identity: WorkloadIdentity
    }
    public private(set) var entries: [Entry] = []

    public init() {}

    /// Parses the file's text; a malformed line is an error naming its number.
    public init(text: String, file: String = "tokens") throws(ControlError) {
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingPrefix(while: { $0 == " " || $0 == "\t" })
            if line.isEmpty || line.hasPrefix("#") { continue }
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            guard f.count == 3, f[0].utf8.count == 64, f[0].utf8.allSatisfy({ hexValue($0) != nil }) else {
                throw ControlError(500, "\(file):\(i + 1): expected SHA256HEX NAMESPACE SERVICE_ACCOUNT")
            }
            let id: WorkloadIdentity
            do { id = try WorkloadIdentity.parse(namespace: String(f[1]), serviceAccount: String(f[2])) } catch {
                throw ControlError(500, "\(file):\(i + 1): \(error.message)")
            }
            entries.append(Entry(hash: f[0].lowercased(), identity: id))
        }
    }

    /// The file's text.
    public var text: String {
        "# remora control: bootstrap tokens (SHA-256 of each token, namespace, service account)\n"
            + entries.map { "\($0.hash) \($0.identity.namespace) \($0.identity.serviceAccount)\n" }.joined()
    }

    public mutating func add(hash: String, _ id: WorkloadIdentity) { entries.append(Entry(hash: hash, identity: id)) }

    /// Removes every token of `id`; how many there were.
    public mutating func revoke(_ id: WorkloadIdentity) -> Int {
        let before = entries.count
        entries.removeAll { $0.identity == id }
        return before - entries.count
    }

    public enum Check: Equatable, Sendable {
        /// No token was sent (401).
        case missing
        /// Not a token of this CA (403).
        case unknown
        case valid(WorkloadIdentity)
    }

    /// The identity `token` was made for. `hash` is SHA-256 hex (MeshPKI.sha256Hex; injected for
    /// tests). Every entry is compared, each in constant time.
    public func check(_ token: String?, hash: (String) -> String = { MeshPKI.sha256Hex(Array($0.utf8)) }) -> Check {
        guard let token, !token.isEmpty else { return .missing }
        guard token.utf8.count <= 256 else { return .unknown }
        let h = Array(hash(token).utf8)
        var found: WorkloadIdentity?
        for e in entries {
            let w = Array(e.hash.utf8)
            guard w.count == h.count else { continue }
            var diff: UInt8 = 0
            for i in 0..<w.count { diff |= w[i] ^ h[i] }
            if diff == 0 && found == nil { found = e.identity }
        }
        return found.map { .valid($0) } ?? .unknown
    }

    /// A new token: 32 random bytes as 64 hex digits.
    public static func newToken() throws(ControlError) -> String {
        let bytes: [UInt8]
        do { bytes = try MeshPKI.randomBytes(32) } catch { throw ControlError(500, error.message) }
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        return String(decoding: bytes.flatMap { [hex[Int($0 >> 4)], hex[Int($0 & 15)]] }, as: UTF8.self)
    }
}
