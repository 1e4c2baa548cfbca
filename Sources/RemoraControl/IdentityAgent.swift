import Glibc
import RemoraCore
import RemoraIO
import RemoraTLS
import Synchronization

/// The proxy's side of the mesh CA (docs/sidecar.md "Identity from the control server"): makes an
/// ECDSA P-256 key (it never leaves the proxy), sends a CSR with the workload's bootstrap token to
/// `remora control`, and keeps the issued certificate and the trust bundle in files that the TLS
/// contexts read: `<dir>/identity.pem` (certificate and key, 0600) and `<dir>/bundle.pem`. Each
/// file is replaced atomically, so the proxy's file watch reloads the contexts (`Server+TLS.swift`):
/// new handshakes use the new certificate at once, open connections keep theirs.
///
/// Renewals run on a thread of their own with blocking requests (the data path never waits for
/// them): at half the lifetime with jitter (`RenewalSchedule`), retried with backoff while the
/// control server cannot be reached (the old certificate keeps serving); the bundle is fetched
/// again every `bundleRefresh` (a root rotation adds a root to it).
public final class IdentityAgent: @unchecked Sendable {
    public struct Settings: Sendable, Equatable {
        /// `http://HOST:PORT` of `remora control`.
        public var control: String
        /// The control server's bearer token (`--token-file` of `remora run`), if it has one.
        public var apiToken: String?
        /// File holding the workload's bootstrap token (first line).
        public var tokenFile: String
        /// Where the certificate, key and bundle are kept.
        public var directory: String
        /// How often the bundle is fetched again, ms.
        public var bundleRefresh: Int64
        public init(control: String, apiToken: String?, tokenFile: String, directory: String, bundleRefresh: Int64) {
            self.control = control; self.apiToken = apiToken; self.tokenFile = tokenFile
            self.directory = directory; self.bundleRefresh = bundleRefresh
        }
    }

    /// What /stats shows.
    public struct Counters: Sendable, Equatable {
        public var issued = 0
        public var renewFailed = 0
        public var bundleUpdated = 0
        /// Unix seconds; 0 before the first certificate.
        public var notAfter: Int64 = 0
        public var lastError = ""
    }

    public let settings: Settings
    public var schedule = RenewalSchedule()
    let host: String
    let port: UInt16
    let client = BlockingHTTPClient(timeout: 5_000)
    let counters = Mutex(Counters())
    let stopped = Atomic<Bool>(false)
    /// Where log lines go (the proxy's log). Called on the agent's thread.
    public var log: @Sendable (String) -> Void = { _ in }

    public var identityFile: String { settings.directory + "/identity.pem" }
    public var bundleFile: String { settings.directory + "/bundle.pem" }
    public var stats: Counters { counters.withLock { $0 } }

    public init(settings: Settings) throws(ControlError) {
        self.settings = settings
        guard let url = ControlURL.parse(settings.control) else {
            throw ControlError(400, "expected http://HOST:PORT for the control server, got \(settings.control)")
        }
        host = url.host
        port = url.port
    }

    /// The certificate on disk, when it is whole (certificate and its key) and not expired.
    public func current(now: Int64) -> (notBefore: Int64, notAfter: Int64)? {
        guard case .present(let b) = StateDirectory.readIfPresent(identityFile) else { return nil }
        let text = String(decoding: b, as: UTF8.self)
        guard let v = MeshPKI.validity(text), v.notAfter > now, MeshPKI.keyMatches(cert: text, key: text),
              case .present = StateDirectory.readIfPresent(bundleFile) else { return nil }
        return v
    }

    func headers() throws(ControlError) -> [(name: String, value: String)] {
        var h: [(name: String, value: String)] = []
        if let t = settings.apiToken, !t.isEmpty { h.append(("authorization", "Bearer \(t)")) }
        return h
    }

    func identityToken() throws(ControlError) -> String {
        guard case .present(let b) = StateDirectory.readIfPresent(settings.tokenFile) else {
            throw ControlError(0, "cannot read the identity token file \(settings.tokenFile)")
        }
        let first = String(decoding: b, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        let t = first.trimmingWhitespace
        if t.isEmpty { throw ControlError(0, "the identity token file \(settings.tokenFile) is empty") }
        return t
    }

    /// One issuance: a new key, a CSR, the certificate, the bundle; both files written. Blocking.
    @discardableResult
    public func obtain() throws(ControlError) -> (notBefore: Int64, notAfter: Int64) {
        let token = try identityToken()
        let key: String, csr: String
        do {
            key = try MeshPKI.newKey()
            csr = try MeshPKI.signingRequest(key: key)
        } catch { throw ControlError(0, error.message) }
        var h = try headers()
        h.append((name: "x-remora-identity-token", value: token))
        let r = try client.request("POST", host: host, port: port, target: "/v1/ca/certificate", headers: h, body: Array(csr.utf8))
        guard r.status == 200 else {
            throw ControlError(r.status, "the control server refused the certificate: \(r.status) \(String(decoding: r.body, as: UTF8.self).trimmingWhitespace)")
        }
        let cert = String(decoding: r.body, as: UTF8.self)
        guard let v = MeshPKI.validity(cert), MeshPKI.keyMatches(cert: cert, key: key) else {
            throw ControlError(0, "the control server's answer is not a certificate for the key sent")
        }
        try StateDirectory.makeDirectories(settings.directory)
        _ = try refreshBundle()   // first: a certificate of a new root is trusted by the time it is used
        try StateDirectory.writeAtomically(directory: settings.directory, name: "identity.pem",
                                           Array((cert + (cert.hasSuffix("\n") ? "" : "\n") + key).utf8), mode: 0o600)
        counters.withLock { $0.issued += 1; $0.notAfter = v.notAfter; $0.lastError = "" }
        return v
    }

    /// Fetches the bundle; writes it when it changed. Returns whether it did.
    public func refreshBundle() throws(ControlError) -> Bool {
        let r = try client.request("GET", host: host, port: port, target: "/v1/ca/bundle", headers: try headers(), body: [])
        guard r.status == 200, MeshPKI.validity(String(decoding: r.body, as: UTF8.self)) != nil else {
            throw ControlError(r.status, "the control server did not send a trust bundle: \(r.status)")
        }
        if case .present(let old) = StateDirectory.readIfPresent(bundleFile), old == r.body { return false }
        try StateDirectory.makeDirectories(settings.directory)
        try StateDirectory.writeAtomically(directory: settings.directory, name: "bundle.pem", r.body)
        counters.withLock { $0.bundleUpdated += 1 }
        return true
    }

    /// Starts the renewal thread for the certificate valid `notBefore ... notAfter` (Unix seconds).
    public func start(notBefore: Int64, notAfter: Int64) {
        counters.withLock { $0.notAfter = notAfter }
        let t = spawnThread { [self] in self.loop(notBefore: notBefore, notAfter: notAfter) }
        pthread_detach(t)
    }

    /// The thread ends within ~100 ms (after a request in flight: its timeout, 5 s).
    public func stop() { stopped.store(true, ordering: .relaxed) }

    static func nowMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000 + Int64(ts.tv_nsec) / 1_000_000
    }

    func loop(notBefore: Int64, notAfter: Int64) {
        var na = notAfter * 1_000
        var renewAt = schedule.renewAt(notBefore: notBefore * 1_000, notAfter: na, random: Double.random(in: 0..<1))
        var nextBundle = Self.nowMillis() + settings.bundleRefresh
        var failures = 0
        while !stopped.load(ordering: .relaxed) {
            var ts = timespec(tv_sec: 0, tv_nsec: 100_000_000)
            nanosleep(&ts, nil)
            if stopped.load(ordering: .relaxed) { break }
            let now = Self.nowMillis()
            if now >= nextBundle {
                do {
                    if try refreshBundle() { log("identity: trust bundle updated") }
                } catch {
                    log("identity: bundle refresh failed: \(error.message)")
                }
                nextBundle = now + settings.bundleRefresh
            }
            guard now >= renewAt else { continue }
            do {
                let v = try obtain()
                na = v.notAfter * 1_000
                failures = 0
                renewAt = schedule.renewAt(notBefore: v.notBefore * 1_000, notAfter: na, random: Double.random(in: 0..<1))
                log("identity: certificate renewed, valid until \(v.notAfter)")
            } catch {
                failures += 1
                counters.withLock { $0.renewFailed += 1; $0.lastError = error.message }
                let wait = schedule.retryDelay(failures: failures, now: Self.nowMillis(), notAfter: na, random: Double.random(in: 0..<1))
                renewAt = Self.nowMillis() + wait
                log("identity: renewal failed (\(failures) in a row; the current certificate keeps serving), retry in \(wait) ms: \(error.message)")
            }
        }
    }
}
