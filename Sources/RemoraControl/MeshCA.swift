import Glibc
import RemoraTLS

/// `remora control` as the mesh's certificate authority (docs/control-plane.md "Mesh CA"): a root
/// (ECDSA P-256, self-signed, 10 years) made in `<state>/ca/` on first start or given by flags,
/// short-lived workload certificates (default 24 h) with the SPIFFE URI SAN of the identity the
/// caller's bootstrap token names, whatever the request claims, and root rotation with two roots
/// in the trust bundle. Runs on the control server's loop; the X.509 work is OpenSSL's (MeshPKI).
///
/// Files in `<state>/ca/`: `root.pem`, `root-key.pem` (0600), during a rotation `previous.pem`,
/// `previous-key.pem` and `rotation` (`sign_after T` / `previous_until T`, Unix seconds), and
/// `tokens` (TokenTable; read again at every request, so `remora control token` works while the
/// server runs).
public final class MeshCA {
    public struct Options: Sendable, Equatable {
        /// The SPIFFE trust domain: `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`. Default `mesh.local`.
        public var trustDomain = "mesh.local"
        /// Lifetime of a workload certificate, seconds. Default 24 h; 10 s ... 30 days.
        public var certificateTTL: Int64 = 86_400
        /// A root given by files (`--ca-cert`, `--ca-key`) instead of the one in the state directory.
        public var rootCertFile: String?
        public var rootKeyFile: String?
        public init() {}

        public static func validTrustDomain(_ s: String) -> Bool {
            let u = Array(s.utf8)
            return !u.isEmpty && u.count <= 255 && u.allSatisfy {
                ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x2E || $0 == 0x5F
            }
        }
    }

    struct Root { var cert: String; var key: String }

    public let options: Options
    let dir: String
    var root: Root
    /// During a rotation: the old root, still in the bundle (and signing until `signAfter`).
    var previous: Root?
    /// Unix seconds from which the new root signs (before: the previous one).
    var signAfter: Int64 = 0
    /// Unix seconds until which certificates signed by the previous root may be valid.
    var previousUntil: Int64 = 0
    public private(set) var issued = 0
    /// Requests refused for a missing or unknown token.
    public private(set) var refused = 0
    /// Requests refused for a bad request (not a CSR, a signature that does not verify, not P-256).
    public private(set) var badRequests = 0
    /// Where log lines go.
    public var log: (String) -> Void = { _ in }

    /// Loads the root (or makes one) and any rotation in progress.
    public init(stateDirectory: String, options: Options, now: Int64) throws(ControlError) {
        self.options = options
        dir = stateDirectory + "/ca"
        try StateDirectory.makeDirectories(dir)
        if let cf = options.rootCertFile, let kf = options.rootKeyFile {
            root = Root(cert: try Self.text(cf), key: try Self.text(kf))
            guard MeshPKI.validity(root.cert) != nil else { throw ControlError(400, "--ca-cert \(cf): no PEM certificate") }
            guard MeshPKI.keyMatches(cert: root.cert, key: root.key) else {
                throw ControlError(400, "--ca-key \(kf) is not the key of the certificate in --ca-cert \(cf)")
            }
        } else if case .present(let c) = StateDirectory.readIfPresent(dir + "/root.pem") {
            root = Root(cert: String(decoding: c, as: UTF8.self), key: try Self.text(dir + "/root-key.pem"))
            guard MeshPKI.keyMatches(cert: root.cert, key: root.key) else {
                throw ControlError(500, "\(dir)/root-key.pem is not the key of \(dir)/root.pem (an interrupted rotation? restore both from a backup)")
            }
        } else {
            root = try Self.makeRoot(trustDomain: options.trustDomain, now: now)
            try Self.save(root, dir: dir, name: "root")
        }
        if options.rootCertFile == nil, case .present(let c) = StateDirectory.readIfPresent(dir + "/previous.pem") {
            previous = Root(cert: String(decoding: c, as: UTF8.self), key: try Self.text(dir + "/previous-key.pem"))
            if case .present(let r) = StateDirectory.readIfPresent(dir + "/rotation") {
                for line in String(decoding: r, as: UTF8.self).split(separator: "\n") {
                    let f = line.split(separator: " ")
                    guard f.count == 2, let v = Int64(f[1]) else { continue }
                    if f[0] == "sign_after" { signAfter = v } else if f[0] == "previous_until" { previousUntil = v }
                }
            }
        }
    }

    static func text(_ path: String) throws(ControlError) -> String { String(decoding: try StateDirectory.read(path), as: UTF8.self) }

    static func makeRoot(trustDomain: String, now: Int64) throws(ControlError) -> Root {
        do {
            let key = try MeshPKI.newKey()
            let cert = try MeshPKI.selfSignedRoot(key: key, organization: "remora mesh", commonName: "remora mesh root \(now)",
                                                  uri: "spiffe://\(trustDomain)", notBefore: now - 3_600,
                                                  notAfter: now + 10 * 365 * 86_400)
            return Root(cert: cert, key: key)
        } catch { throw ControlError(500, "cannot make a root: \(error.message)") }
    }

    static func save(_ r: Root, dir: String, name: String) throws(ControlError) {
        // The key first: a crash between the two leaves a key without its certificate, which the
        // next start reports, never a certificate whose key is lost.
        try StateDirectory.writeAtomically(directory: dir, name: name + "-key.pem", Array(r.key.utf8), mode: 0o600)
        try StateDirectory.writeAtomically(directory: dir, name: name + ".pem", Array(r.cert.utf8))
    }

    /// The trust bundle: the root, and during a rotation the previous one after it.
    public var bundle: String { root.cert + (previous?.cert ?? "") }

    /// The root that signs now.
    func signingRoot(now: Int64) -> (root: Root, isPrevious: Bool) {
        if let p = previous, now < signAfter { return (p, true) }
        return (root, false)
    }

    /// The tokens file as it is now.
    public func tokens() throws(ControlError) -> TokenTable {
        switch StateDirectory.readIfPresent(dir + "/tokens") {
        case .absent: return TokenTable()
        case .failed(let e): throw e
        case .present(let b): return try TokenTable(text: String(decoding: b, as: UTF8.self), file: dir + "/tokens")
        }
    }

    /// A workload certificate for `csr` with the identity of `token`. 401 no token, 403 unknown
    /// token (both counted in `refused`), 400 a request that is not a P-256 CSR signed by its key.
    public func issue(csr: String, token: String?, now: Int64) throws(ControlError) -> (cert: String, identity: WorkloadIdentity) {
        let id: WorkloadIdentity
        switch try tokens().check(token) {
        case .missing:
            refused += 1
            throw ControlError(401, "an identity token is required (header x-remora-identity-token)")
        case .unknown:
            refused += 1
            throw ControlError(403, "unknown identity token")
        case .valid(let i): id = i
        }
        let ttl = options.certificateTTL
        let (signer, isPrevious) = signingRoot(now: now)
        let notAfter = now + ttl
        let cert: String
        do {
            cert = try MeshPKI.sign(request: csr, caCert: signer.cert, caKey: signer.key,
                                    uri: id.spiffeID(trustDomain: options.trustDomain),
                                    commonName: "\(id.serviceAccount).\(id.namespace)",
                                    notBefore: now - min(120, ttl / 10), notAfter: notAfter)
        } catch {
            badRequests += 1
            throw ControlError(400, error.message)
        }
        if isPrevious && notAfter > previousUntil {
            previousUntil = notAfter
            try saveRotation()
        }
        issued += 1
        return (cert, id)
    }

    func saveRotation() throws(ControlError) {
        try StateDirectory.writeAtomically(directory: dir, name: "rotation",
                                           Array("sign_after \(signAfter)\nprevious_until \(previousUntil)\n".utf8))
    }

    /// Starts a root rotation: a new root joins the bundle now and signs from `signAfter` seconds on
    /// (time for every proxy to fetch the new bundle); the old root stays in the bundle.
    public func rotateStart(now: Int64, signAfter delay: Int64) throws(ControlError) {
        if options.rootCertFile != nil {
            throw ControlError(409, "the root comes from --ca-cert/--ca-key: rotate it by restarting with new files")
        }
        if previous != nil { throw ControlError(409, "a rotation is under way: finish it first (ctl ca rotate finish)") }
        let new = try Self.makeRoot(trustDomain: options.trustDomain, now: now)
        let old = root
        signAfter = now + delay
        // Certificates the old root signed before now are valid until now + ttl at most.
        previousUntil = now + options.certificateTTL
        try Self.save(old, dir: dir, name: "previous")
        try saveRotation()
        try Self.save(new, dir: dir, name: "root")
        previous = old
        root = new
        log("root rotation started: the new root is in the bundle now and signs from \(signAfter) (in \(delay) s)")
    }

    /// Ends a rotation: the old root leaves the bundle. Refused while the new root does not sign yet,
    /// and (unless `force`) while certificates the old root signed may still be valid.
    public func rotateFinish(now: Int64, force: Bool) throws(ControlError) {
        guard previous != nil else { throw ControlError(409, "no rotation under way (ctl ca rotate start begins one)") }
        if now < signAfter { throw ControlError(409, "the new root signs only in \(signAfter - now) s: finish after that") }
        if now < previousUntil && !force {
            throw ControlError(409, "certificates signed by the old root may be valid for \(previousUntil - now) s more "
                               + "(until every proxy renewed): finish then, or force")
        }
        for f in ["previous.pem", "previous-key.pem", "rotation"] { unlink(dir + "/" + f) }
        try StateDirectory.syncDirectory(dir)
        previous = nil
        signAfter = 0
        previousUntil = 0
        log("root rotation finished: the old root left the bundle")
    }

    /// `GET /v1/ca`: `name value` lines.
    public func status(now: Int64) -> String {
        var out = "trust_domain \(options.trustDomain)\ncertificate_ttl_seconds \(options.certificateTTL)\n"
        out += "roots \(previous == nil ? 1 : 2)\n"
        if let v = MeshPKI.validity(root.cert) { out += "root_not_after \(v.notAfter)\n" }
        if previous != nil {
            out += "rotation started\nnew_root_signs_in_seconds \(max(0, signAfter - now))\n"
            out += "previous_root_needed_for_seconds \(max(0, previousUntil - now))\n"
        } else {
            out += "rotation none\n"
        }
        out += "issued \(issued)\nrefused_token \(refused)\nrefused_request \(badRequests)\n"
        return out
    }

    /// `remora control token`: a new token for `id`, its hash appended to `<state>/ca/tokens`.
    public static func createToken(stateDirectory: String, _ id: WorkloadIdentity) throws(ControlError) -> String {
        let dir = stateDirectory + "/ca"
        try StateDirectory.makeDirectories(dir)
        var table = try current(dir)
        let token = try TokenTable.newToken()
        table.add(hash: MeshPKI.sha256Hex(Array(token.utf8)), id)
        try StateDirectory.writeAtomically(directory: dir, name: "tokens", Array(table.text.utf8), mode: 0o600)
        return token
    }

    /// `remora control token --revoke`: removes every token of `id`; how many.
    public static func revokeTokens(stateDirectory: String, _ id: WorkloadIdentity) throws(ControlError) -> Int {
        let dir = stateDirectory + "/ca"
        var table = try current(dir)
        let n = table.revoke(id)
        if n > 0 { try StateDirectory.writeAtomically(directory: dir, name: "tokens", Array(table.text.utf8), mode: 0o600) }
        return n
    }

    static func current(_ dir: String) throws(ControlError) -> TokenTable {
        switch StateDirectory.readIfPresent(dir + "/tokens") {
        case .absent: return TokenTable()
        case .failed(let e): throw e
        case .present(let b): return try TokenTable(text: String(decoding: b, as: UTF8.self), file: dir + "/tokens")
        }
    }
}
