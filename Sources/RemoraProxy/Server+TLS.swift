import Glibc
import RemoraAdmin
import RemoraCore
import RemoraIO
import RemoraTLS

/// Certificates reloaded when their files change, their expiry as gauges, and `GET /certs`.
/// Everything here runs on the main loop. A reload builds new OpenSSL contexts from the files and
/// swaps them into the listener's or cluster's shared context (`TLSServerContext.reload`): every
/// worker's next handshake uses them, connections already open keep theirs. A file that does not
/// load (missing, half-written, a key that does not match) keeps the old certificate, is logged
/// and counted (`tls.cert_reload_failed`); the next change is tried again.
extension Server {
    /// Watches every file the TLS contexts of `snap` read; stops watching files it no longer uses.
    func watchTLS(_ snap: Snapshot) {
        var paths = Set<String>()
        for t in snap.listenerTLS { if let t { paths.formUnion(t.files) } }
        for t in snap.clusterTLS { if let t { paths.formUnion(t.files) } }
        for (p, w) in tlsWatchers where !paths.contains(p) { w.close(); tlsWatchers[p] = nil }
        for p in paths where tlsWatchers[p] == nil {
            tlsWatchers[p] = FileWatcher(loop: loop, path: p, settle: 200) { [unowned self] in self.reloadTLS(changed: p) }
        }
    }

    /// `path` changed: every context that reads it loads its files again.
    func reloadTLS(changed path: String) {
        guard let snap = snapshot else { return }
        for (i, t) in snap.listenerTLS.enumerated() {
            guard let t, t.files.contains(path) else { continue }
            reload(what: "listener \(snap.config.listeners[i].name)", path: path) { () throws(TLSLoadError) in try t.reload() }
        }
        for (i, t) in snap.clusterTLS.enumerated() {
            guard let t, t.files.contains(path) else { continue }
            reload(what: "cluster \(snap.config.clusters[i].name)", path: path) { () throws(TLSLoadError) in try t.reload() }
        }
    }

    func reload(what: String, path: String, _ body: () throws(TLSLoadError) -> Void) {
        do {
            try body()
            tlsReloads += 1
            log("\(what): TLS certificates reloaded (\(path) changed)")
        } catch {
            tlsReloadFailures += 1
            log("\(what): TLS reload refused, the previous certificates stay: tls.\(error.field): \(error.message)")
        }
    }

    /// Every certificate the serving snapshot loaded.
    var loadedCertificates: [CertificateInfo] {
        guard let snap = snapshot else { return [] }
        return snap.listenerTLS.flatMap { $0?.certificates ?? [] } + snap.clusterTLS.flatMap { $0?.certificates ?? [] }
    }

    /// `tls.<name>.cert_expiry_seconds` (Prometheus: `envoy_tls_cert_expiry_seconds{name=…}`): seconds
    /// until each loaded certificate expires (0 once it has); reload counts.
    func addTLSStats(into out: inout StatsSnapshot) {
        let certs = loadedCertificates
        let overflow = PeerIdentities.shared.overflowed
        if certs.isEmpty && tlsReloads == 0 && tlsReloadFailures == 0 && overflow == 0 { return }
        let now = Int64(time(nil))
        for c in certs {
            out.add(scope: "tls", name: c.name, stat: "cert_expiry_seconds", value: UInt64(max(0, c.notAfter - now)),
                    kind: .gauge, help: "Seconds until the certificate expires")
        }
        out.add(scope: "tls", stat: "cert_reload", value: UInt64(tlsReloads), help: "Certificate reloads after a file changed")
        out.add(scope: "tls", stat: "cert_reload_failed", value: UInt64(tlsReloadFailures),
                help: "Certificate reloads refused (the previous certificates stayed)")
        out.add(scope: "tls", stat: "peer_identity_overflow", value: overflow,
                help: "TLS handshakes whose peer identity is labelled other in the metrics (over the 126 they name)")
    }

    /// For `GET /certs`.
    public func certificates() -> [AdminCertificate] {
        let now = Int64(time(nil))
        return loadedCertificates.map {
            AdminCertificate(name: $0.name, path: $0.path, subject: $0.subject, serial: $0.serial, notAfter: $0.notAfter,
                             secondsLeft: $0.notAfter - now, uriSANs: $0.sans.uris, dnsSANs: $0.sans.dns)
        }
    }
}

extension TCPConnection {
    /// The `x-forwarded-client-cert` value of a mutual-TLS connection (empty otherwise). Valid while
    /// the connection lives; one nil check on a plaintext connection.
    @inline(__always) var forwardedClientCert: UnsafeRawBufferPointer {
        guard let ts = transportSocket, let t = ts as? TLSSocket else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return t.forwardedClientCert.bytes
    }
}
