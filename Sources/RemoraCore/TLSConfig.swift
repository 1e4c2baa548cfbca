/// TLS settings (docs/config.md "tls", docs/tls.md). Paths are as written in the config (relative
/// ones from the proxy's working directory); the files are read when a snapshot is built and again
/// whenever they change.

/// The lowest TLS version a side accepts.
public enum TLSVersion: String, Sendable, Equatable, CaseIterable {
    case tls12 = "1.2"
    case tls13 = "1.3"
    /// The protocol version number (0x0303, 0x0304).
    public var wire: Int32 { self == .tls12 ? 0x0303 : 0x0304 }
}

/// One certificate chain with its private key, both PEM files.
public struct TLSCertificateFiles: Sendable, Equatable {
    /// The leaf certificate first, then the intermediates.
    public var cert: String
    public var key: String
    public init(cert: String, key: String) { self.cert = cert; self.key = key }
}

/// TLS termination on a listener (`tls:` on an http or tcp listener).
public struct ListenerTLSConfig: Sendable, Equatable {
    /// At least one. The first is the default; the others are chosen by the SNI the client sends,
    /// matched against each certificate's DNS SANs (exact first, then `*.` wildcards).
    public var certificates: [TLSCertificateFiles]
    /// Offered protocols in preference order (ALPN). Default [h2, http/1.1]; a client that offers
    /// none of them is refused; a client that offers no ALPN at all gets HTTP/1.1 (or h2 with prior
    /// knowledge, detected by its preface as on plaintext).
    public var alpn: [String]
    /// PEM bundle of CAs: when set, every client must present a certificate that verifies against
    /// it (mutual TLS); its identity becomes the connection's principal.
    public var clientCA: String?
    /// Default 1.2.
    public var minVersion: TLSVersion
    /// Session ticket keys are replaced this often; tickets sealed with the previous key are still
    /// accepted (and renewed) for one more period. Default 1 h, range 1 min ... 7 days.
    public var ticketKeyRotation: Millis
    /// Send upstream the client certificate's details in `x-forwarded-client-cert` (Envoy's format:
    /// By, Hash, URI, DNS). Default true when `client_ca` is set. An inbound field of that name is
    /// always removed, on every listener.
    public var forwardClientCert: Bool
    /// Connections are closed gracefully (HTTP/1.1 after the request in flight, HTTP/2 with GOAWAY,
    /// TCP at once) when the certificate they were made with, the listener's or the client's,
    /// expires: a renewed certificate then reaches every client, and no connection outlives the
    /// credential it was authenticated with. Default true.
    public var closeExpired: Bool
    /// The same port also serves clients that do not speak TLS (Istio's "permissive" mode, for a
    /// migration to TLS or mTLS): a connection whose first byte is not a TLS handshake record (0x16)
    /// is served in plaintext, scheme `http`, with no principal. Default false: such a client fails
    /// the handshake.
    public var allowPlaintext: Bool
    /// With `allowPlaintext` (a sidecar's inbound listener in `permissive`): a TLS client whose
    /// ClientHello does not offer ALPN `remora-mesh` is not a peer sidecar but a client of the
    /// application's own TLS: its bytes are passed on untouched, like plaintext. Default false.
    public var meshPeersOnly = false

    public init(certificates: [TLSCertificateFiles], alpn: [String] = ["h2", "http/1.1"], clientCA: String? = nil,
                minVersion: TLSVersion = .tls12, ticketKeyRotation: Millis = 3_600_000, forwardClientCert: Bool? = nil,
                closeExpired: Bool = true, allowPlaintext: Bool = false) {
        self.certificates = certificates; self.alpn = alpn; self.clientCA = clientCA; self.minVersion = minVersion
        self.ticketKeyRotation = ticketKeyRotation; self.forwardClientCert = forwardClientCert ?? (clientCA != nil)
        self.closeExpired = closeExpired; self.allowPlaintext = allowPlaintext
    }
}

/// TLS toward a cluster's endpoints (`tls:` on a cluster).
public struct ClusterTLSConfig: Sendable, Equatable {
    /// PEM bundle of CAs the server's certificate must verify against. nil = the system's.
    public var ca: String?
    /// SNI sent to the server. nil = none.
    public var serverName: String?
    /// The server certificate must carry one of these SANs: a DNS name (`*.` wildcards in the
    /// certificate match one label) or a URI (`spiffe://…`, exact). Empty = any certificate the CA signed.
    public var verifySAN: [String]
    /// Client certificate and key for mutual TLS. Both or neither.
    public var cert: String?
    public var key: String?
    /// Offered ALPN protocols. Default: the cluster's protocol (h2 for http2, http/1.1 for http1).
    /// A server that picks another protocol than the cluster speaks fails the connect.
    public var alpn: [String]
    /// Default 1.2.
    public var minVersion: TLSVersion
    /// A connection whose certificate (the server's, or the client certificate it was made with)
    /// has expired is not given another request: an idle one is closed when next picked or
    /// released, an HTTP/2 one goes away (GOAWAY) once its streams end. Default true.
    public var closeExpired: Bool

    public init(ca: String? = nil, serverName: String? = nil, verifySAN: [String] = [], cert: String? = nil,
                key: String? = nil, alpn: [String] = [], minVersion: TLSVersion = .tls12, closeExpired: Bool = true) {
        self.ca = ca; self.serverName = serverName; self.verifySAN = verifySAN; self.cert = cert; self.key = key
        self.alpn = alpn; self.minVersion = minVersion; self.closeExpired = closeExpired
    }
}

/// ALPN protocol lists in TLS wire format (each name prefixed by its length).
public enum ALPN {
    public static func wire(_ names: [String]) -> [UInt8] {
        var out: [UInt8] = []
        for n in names where !n.isEmpty && n.utf8.count < 256 {
            out.append(UInt8(n.utf8.count))
            out += n.utf8
        }
        return out
    }
}

/// A peer certificate's names and what is derived from them: the principal (routing,
/// authorization, access logs) and the `x-forwarded-client-cert` value. Pure: unit-tested.
public struct PeerIdentity: Sendable, Equatable {
    /// URI SANs, in certificate order.
    public var uris: [String]
    /// DNS SANs, in certificate order.
    public var dns: [String]

    public init(uris: [String] = [], dns: [String] = []) { self.uris = uris; self.dns = dns }

    /// From lines "U <uri>" / "D <name>" (what the C shim writes).
    public init(sanLines: String) {
        uris = []; dns = []
        for line in sanLines.split(separator: "\n") where line.count > 2 {
            let v = String(line.dropFirst(2))
            if line.hasPrefix("U ") { uris.append(v) } else if line.hasPrefix("D ") { dns.append(v) }
        }
    }

    /// The first SPIFFE URI SAN, else the first DNS SAN, else nil.
    public var principal: String? {
        uris.first { $0.lowercased().hasPrefix("spiffe://") } ?? dns.first
    }

    /// Whether the certificate carries `san`: a URI compared exactly, or a DNS name compared
    /// ignoring case, a certificate name `*.example.com` covering one label.
    public func carries(_ san: String) -> Bool {
        if san.contains("://") { return uris.contains(san) }
        let want = san.lowercased()
        for d in dns {
            let have = d.lowercased()
            if have == want { return true }
            if have.hasPrefix("*."), let dot = want.firstIndex(of: "."), dot != want.startIndex,
               want[want.index(after: dot)...] == have.dropFirst(2) { return true }
        }
        return false
    }

    /// Envoy's `x-forwarded-client-cert` element: `By=<own URI SAN>;Hash=<SHA-256 of the peer's
    /// certificate>;URI=<peer URI SAN>;DNS=<peer DNS SAN>…` (By and URI omitted when absent, one
    /// DNS pair per name). Values with `,` `;` `=` or `"` are quoted.
    public func forwardedClientCert(by: String?, hash: String) -> String {
        var parts: [String] = []
        if let by { parts.append("By=" + PeerIdentity.quoted(by)) }
        parts.append("Hash=" + hash)
        if let u = uris.first { parts.append("URI=" + PeerIdentity.quoted(u)) }
        for d in dns { parts.append("DNS=" + PeerIdentity.quoted(d)) }
        return parts.joined(separator: ";")
    }

    static func quoted(_ v: String) -> String {
        guard v.contains(where: { ",;=\"".contains($0) }) else { return v }
        var out = "\""
        for ch in v { if ch == "\"" { out += "\\\"" } else { out.append(ch) } }
        return out + "\""
    }
}
