import COpenSSL
import Glibc
import RemoraCore
import Synchronization

/// A certificate Remora loaded (served, presented to upstreams, or trusted as a CA): for
/// `GET /certs` and the `tls.cert_expiry_seconds` gauge.
public struct CertificateInfo: Sendable, Equatable {
    /// Where it is used: "listener.web.certificates[0]", "listener.web.client_ca", "cluster.app.cert", "cluster.app.ca".
    public var name: String
    public var path: String
    /// RFC 2253 subject.
    public var subject: String
    /// Serial number, hex.
    public var serial: String
    /// Expiry, Unix seconds.
    public var notAfter: Int64
    public var sans: PeerIdentity
}

/// A certificate file that could not be loaded: which field of the `tls:` block, and why.
public struct TLSLoadError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Relative to the `tls:` block: "certificates[0].cert", "client_ca", "ca", "key".
    public var field: String
    public var message: String
    public var description: String { "\(field): \(message)" }
}

/// Reads what OpenSSL says about a certificate into a `CertificateInfo`.
func certificateInfo(name: String, path: String,
                     _ read: (UnsafeMutablePointer<Int64>, UnsafeMutablePointer<CChar>, Int, UnsafeMutablePointer<CChar>, Int,
                              UnsafeMutablePointer<CChar>, Int) -> Int32) -> CertificateInfo? {
    var notAfter: Int64 = 0
    var sans = [CChar](repeating: 0, count: 4096)
    var subject = [CChar](repeating: 0, count: 512)
    var serial = [CChar](repeating: 0, count: 96)
    let ok = sans.withUnsafeMutableBufferPointer { sp in
        subject.withUnsafeMutableBufferPointer { su in
            serial.withUnsafeMutableBufferPointer { se in
                read(&notAfter, sp.baseAddress!, sp.count, su.baseAddress!, su.count, se.baseAddress!, se.count)
            }
        }
    }
    guard ok != 0 else { return nil }
    return CertificateInfo(name: name, path: path, subject: cString(subject), serial: cString(serial), notAfter: notAfter,
                           sans: PeerIdentity(sanLines: cString(sans)))
}

func cString(_ a: [CChar]) -> String {
    a.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}

func readable(_ path: String) -> String? {
    guard let f = fopen(path, "rb") else { return "cannot read \(path): \(String(cString: strerror(errno)))" }
    fclose(f)
    return nil
}

/// The field of a `tls:` block a C loader message is about.
func field(of message: String, cert: String, key: String, ca: String) -> String {
    if message.hasPrefix("no private key") || message.hasPrefix("the key in") { return key }
    if message.hasPrefix("no CA") || message.contains("client CA") || message.contains("the CA file") { return ca }
    return cert
}

/// A listener's server side: its certificates (chosen by SNI), ALPN, client CA, ticket keys.
/// Built on the main thread; shared by every worker (OpenSSL contexts are thread-safe for making
/// connections, the SNI table sits behind a lock in the C shim). `reload` swaps the certificates
/// in place: new handshakes use the new ones at once, open connections keep theirs.
public final class TLSServerContext: @unchecked Sendable {
    let server: OpaquePointer
    public let config: ListenerTLSConfig
    /// Listener name (for certificate names).
    public let name: String
    /// The certificates served (index = `certificates[i]`), then the client CA; and the own URI SAN
    /// for `x-forwarded-client-cert`'s By.
    let state: Mutex<(infos: [CertificateInfo], ownURI: String?)>

    public init(listener: String, config: ListenerTLSConfig, alpn: [String]) throws(TLSLoadError) {
        self.name = listener
        self.config = config
        let wire = ALPN.wire(alpn)
        guard let s = wire.withUnsafeBufferPointer({ remora_tls_server_new($0.baseAddress, $0.count,
                                                                            Int32(clamping: config.ticketKeyRotation / 1000)) })
        else { throw TLSLoadError(field: "certificates", message: "out of memory") }
        server = s
        state = Mutex(([], nil))
        try reload()   // on failure deinit frees what init made
    }

    deinit { remora_tls_server_free(server) }

    /// Loads every file again; on success the new certificates serve new handshakes at once. On
    /// failure nothing changes and the error says which file and why.
    public func reload() throws(TLSLoadError) {
        var ctxs: [UnsafeMutableRawPointer?] = []
        var infos: [CertificateInfo] = []
        var names: [String] = []
        var nameCtx: [Int32] = []
        func fail(_ e: TLSLoadError) -> TLSLoadError {
            for c in ctxs { remora_tls_ctx_free(c) }
            return e
        }
        if let ca = config.clientCA, let why = readable(ca) { throw TLSLoadError(field: "client_ca", message: why) }
        for (i, files) in config.certificates.enumerated() {
            let base = "certificates[\(i)]"
            if let why = readable(files.cert) { throw fail(TLSLoadError(field: base + ".cert", message: why)) }
            if let why = readable(files.key) { throw fail(TLSLoadError(field: base + ".key", message: why)) }
            var err = [CChar](repeating: 0, count: 512)
            let ctx = err.withUnsafeMutableBufferPointer { e in
                remora_tls_server_ctx_new(server, files.cert, files.key, config.clientCA, config.minVersion.wire, e.baseAddress, e.count)
            }
            guard let ctx else {
                let msg = cString(err)
                throw fail(TLSLoadError(field: field(of: msg, cert: base + ".cert", key: base + ".key", ca: "client_ca"), message: msg))
            }
            ctxs.append(ctx)
            guard let info = certificateInfo(name: "listener.\(name).\(base)", path: files.cert, {
                remora_tls_ctx_cert_info(ctx, $0, $1, $2, $3, $4, $5, $6)
            }) else { throw fail(TLSLoadError(field: base + ".cert", message: "no certificate in \(files.cert)")) }
            infos.append(info)
            for d in info.sans.dns { names.append(d); nameCtx.append(Int32(i)) }
        }
        if let ca = config.clientCA, let info = certificateInfo(name: "listener.\(name).client_ca", path: ca, {
            remora_tls_file_cert_info(ca, $0, $1, $2, $3, $4, $5, $6)
        }) { infos.append(info) }
        withCStrings(names) { cnames in
            remora_tls_server_install(server, &ctxs, Int32(ctxs.count), cnames, nameCtx, Int32(names.count))
        }
        let own = infos.first?.sans.uris.first
        state.withLock { $0 = (infos, own) }
    }

    /// The certificates loaded now (served ones first, then the client CA).
    public var certificates: [CertificateInfo] { state.withLock { $0.infos } }

    /// The own certificate's first URI SAN (`x-forwarded-client-cert` By).
    var ownURI: String? { state.withLock { $0.ownURI } }

    /// Files this context reads (to watch them).
    public var files: [String] {
        config.certificates.flatMap { [$0.cert, $0.key] } + (config.clientCA.map { [$0] } ?? [])
    }

    func makeConnection() -> UnsafeMutablePointer<remora_tls_conn>? { remora_tls_conn_server(server) }
}

/// A cluster's client side: the CA its endpoints' certificates must verify against, the SANs one
/// of which they must carry, SNI, ALPN, an optional client certificate, and the last session
/// (resumed by the next connection). Shared by every worker; `reload` as for servers.
public final class TLSClientContext: @unchecked Sendable {
    let client: OpaquePointer
    public let config: ClusterTLSConfig
    public let name: String
    /// The ALPN protocol the cluster speaks ("h2" or "http/1.1"): a server that picks another fails.
    /// With `auto`, the one it prefers (the first it offers).
    public let expectedALPN: String
    /// `protocol: auto`: the server's ALPN answer picks each connection's protocol (`TLSSocket.speaksH2`).
    public let auto: Bool
    let sni: [CChar]?
    let state: Mutex<[CertificateInfo]>

    public init(cluster: String, config: ClusterTLSConfig, http2: Bool, auto: Bool = false) throws(TLSLoadError) {
        self.name = cluster
        self.config = config
        self.auto = auto
        expectedALPN = auto ? (config.alpn.first ?? "h2") : http2 ? "h2" : "http/1.1"
        sni = config.serverName.map { Array($0.utf8CString) }
        guard let c = remora_tls_client_new() else { throw TLSLoadError(field: "ca", message: "out of memory") }
        client = c
        state = Mutex([])
        try reload()   // on failure deinit frees what init made
    }

    deinit { remora_tls_client_free(client) }

    public func reload() throws(TLSLoadError) {
        if let ca = config.ca, let why = readable(ca) { throw TLSLoadError(field: "ca", message: why) }
        if let cert = config.cert, let why = readable(cert) { throw TLSLoadError(field: "cert", message: why) }
        if let key = config.key, let why = readable(key) { throw TLSLoadError(field: "key", message: why) }
        let wire = ALPN.wire(config.alpn.isEmpty ? [expectedALPN] : config.alpn)
        var err = [CChar](repeating: 0, count: 512)
        let ctx = err.withUnsafeMutableBufferPointer { e in
            wire.withUnsafeBufferPointer { a in
                remora_tls_client_ctx_new(client, config.ca, config.cert, config.key, a.baseAddress, a.count,
                                          config.minVersion.wire, e.baseAddress, e.count)
            }
        }
        guard let ctx else {
            let msg = cString(err)
            throw TLSLoadError(field: field(of: msg, cert: "cert", key: "key", ca: "ca"), message: msg)
        }
        var infos: [CertificateInfo] = []
        if let cert = config.cert, let info = certificateInfo(name: "cluster.\(name).cert", path: cert, {
            remora_tls_ctx_cert_info(ctx, $0, $1, $2, $3, $4, $5, $6)
        }) { infos.append(info) }
        if let ca = config.ca, let info = certificateInfo(name: "cluster.\(name).ca", path: ca, {
            remora_tls_file_cert_info(ca, $0, $1, $2, $3, $4, $5, $6)
        }) { infos.append(info) }
        remora_tls_client_install(client, ctx)
        state.withLock { $0 = infos }
    }

    public var certificates: [CertificateInfo] { state.withLock { $0 } }

    public var files: [String] { [config.ca, config.cert, config.key].compactMap { $0 } }

    func makeConnection() -> UnsafeMutablePointer<remora_tls_conn>? {
        if let sni { return sni.withUnsafeBufferPointer { remora_tls_conn_client(client, $0.baseAddress) } }
        return remora_tls_conn_client(client, nil)
    }
}

/// Calls `body` with `strings` as an array of C strings (valid during the call).
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let copies = strings.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    let ptrs = copies.map { UnsafePointer($0) }
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress ?? UnsafePointer(bitPattern: 8)!) }
}
