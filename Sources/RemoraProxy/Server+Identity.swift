import Glibc
import RemoraConfig
import RemoraControl
import RemoraCore

/// `sidecar.mtls: { from_control: true, ... }` (docs/sidecar.md "Identity from the control server"):
/// before a configuration that asks for it is compiled, the proxy has a certificate from `remora
/// control` in the identity directory (the one on disk when it is still valid, else a new one, asked
/// for now); `IdentityAgent` then renews it on its own thread. The TLS contexts read the files like
/// an operator's, so renewals and bundle changes go through the same file watch and reload
/// (`Server+TLS.swift`): new handshakes use them at once, open connections keep theirs.
extension Server {
    /// `attempts`: issuance tries, one second apart, before the configuration is refused (at start
    /// from a file: 60; a reload or a pushed version: 1).
    func prepareIdentity(_ cfg: Config, attempts: Int = 1) -> ConfigErrors? {
        guard let source = cfg.sidecar?.mtls?.fromControl else {
            identityAgent?.stop()
            identityAgent = nil
            return nil
        }
        func refuse(_ path: String, _ message: String) -> ConfigErrors {
            ConfigErrors([ConfigError(file: "", line: 0, path: path, message: message)])
        }
        guard let url = source.control ?? control?.url else {
            return refuse("sidecar.mtls.control", "from_control needs the control server: control: http://HOST:PORT, or remora run --control URL")
        }
        let apiToken = control?.token ?? getenv("REMORA_CONTROL_TOKEN").map { String(cString: $0) }
        let settings = IdentityAgent.Settings(control: url, apiToken: apiToken, tokenFile: source.tokenFile,
                                              directory: source.directory, bundleRefresh: Int64(source.bundleRefresh))
        if let a = identityAgent, a.settings == settings { return nil }
        let agent: IdentityAgent
        do { agent = try IdentityAgent(settings: settings) } catch {
            return refuse("sidecar.mtls.control", error.message)
        }
        agent.log = { s in
            var line = "remora: " + s + "\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        }
        var validity = agent.current(now: Int64(time(nil)))
        var tries = 0
        while validity == nil {
            do { validity = try agent.obtain() } catch {
                tries += 1
                if tries >= attempts {
                    return refuse("sidecar.mtls", "no certificate from the control server \(url): \(error.message)")
                }
                if tries == 1 || tries % 10 == 0 { log("waiting for a certificate from \(url): \(error.message)") }
                sleep(1)
            }
        }
        identityAgent?.stop()
        identityAgent = agent
        agent.start(notBefore: validity!.notBefore, notAfter: validity!.notAfter)
        log("identity: certificate from \(url) in \(source.directory), valid until \(validity!.notAfter)")
        return nil
    }

    /// `identity.*`: issuance, renewal failures (the old certificate kept serving), bundle updates,
    /// and seconds until the certificate expires.
    func addIdentityStats(into out: inout StatsSnapshot) {
        guard let a = identityAgent else { return }
        let s = a.stats
        out.add(scope: "identity", stat: "cert_issued", value: UInt64(s.issued), help: "Certificates issued by the control server")
        out.add(scope: "identity", stat: "renew_failed", value: UInt64(s.renewFailed),
                help: "Renewals that failed (the current certificate kept serving; retried with backoff)")
        out.add(scope: "identity", stat: "bundle_updated", value: UInt64(s.bundleUpdated), help: "Trust bundle changes written")
        out.add(scope: "identity", stat: "cert_expiry_seconds", value: UInt64(max(0, s.notAfter - Int64(time(nil)))),
                kind: .gauge, help: "Seconds until the workload certificate expires")
    }
}
