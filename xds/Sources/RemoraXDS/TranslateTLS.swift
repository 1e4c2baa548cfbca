import Foundation
import RemoraXDSProto
import SwiftProtobuf

public typealias TransportSocket = Envoy_Config_Core_V3_TransportSocket
public typealias UpstreamTLS = Envoy_Extensions_TransportSockets_Tls_V3_UpstreamTlsContext
public typealias DownstreamTLS = Envoy_Extensions_TransportSockets_Tls_V3_DownstreamTlsContext
typealias CommonTLS = Envoy_Extensions_TransportSockets_Tls_V3_CommonTlsContext
typealias TLSCertificate = Envoy_Extensions_TransportSockets_Tls_V3_TlsCertificate
typealias ValidationContext = Envoy_Extensions_TransportSockets_Tls_V3_CertificateValidationContext
typealias TLSParams = Envoy_Extensions_TransportSockets_Tls_V3_TlsParameters

/// A file the agent writes for the proxy: a secret's certificate, key or CA (PEM).
public struct SecretFile: Equatable, Sendable {
    public var path: String
    public var bytes: [UInt8]
    public init(path: String, bytes: [UInt8]) { self.path = path; self.bytes = bytes }
}

/// `transport_socket` envoy.transport_sockets.tls → Remora's `tls:` (docs/config.md "TLS"). Certificates,
/// keys and CAs by `filename` (checked when `checkFile` is set), or from SDS secrets delivered on the ADS
/// stream (`sds_config: { ads: {} }`, Istio's form), whose inline PEM the agent writes to private files
/// (`secretFiles`) that the proxy watches; inline PEM outside a secret, certificate providers and every
/// other field are NACKed by name.
extension Translator {
    /// A cluster's `transport_socket` (UpstreamTlsContext) → `clusters[].tls`.
    func upstreamTLS(_ ts: TransportSocket, at: String, _ r: XDSResources) throws(XDSError) -> YAMLNode {
        let u = try tlsContext(ts, at: at, as: UpstreamTLS.self)
        let tat = at + ".typed_config"
        var rest = u
        rest.clearCommonTlsContext(); rest.sni = ""
        try refuseLeftovers(rest, at: tat)
        let c = u.commonTlsContext
        let cat = tat + ".common_tls_context"
        try refuseCommonLeftovers(c, at: cat)
        var node: [(String, YAMLNode)] = []
        // Envoy without a validation context accepts any server certificate; Remora always verifies one
        // (against the system's CAs when `ca` is absent): refused rather than made stricter unseen.
        guard let v = try validation(c, at: cat, r) else {
            throw XDSError("\(cat).validation_context (trusted_ca) is required: Envoy without one accepts any server certificate, Remora always verifies it")
        }
        var vr = v.context
        vr.matchTypedSubjectAltNames = []; vr.matchSubjectAltNames = []
        try refuseLeftovers(vr, at: v.at)
        guard let ca = v.ca else { throw XDSError("\(v.at).trusted_ca is required (Remora verifies every server certificate)") }
        node.append(("ca", .string(ca)))
        if !u.sni.isEmpty { node.append(("server_name", .string(u.sni))) }
        let sans = try subjectAltNames(v.context, at: v.at)
        if !sans.isEmpty { node.append(("verify_san", .list(sans.map { .string($0) }))) }
        let certs = try certificates(c, at: cat, r)
        guard certs.count <= 1 else {
            throw XDSError("\(cat).tls_certificates: \(certs.count) certificates; at most one (the client certificate) is supported")
        }
        if let pair = certs.first {
            node.append(("cert", .string(pair.0)))
            node.append(("key", .string(pair.1)))
        }
        if !c.alpnProtocols.isEmpty { node.append(("alpn", .list(c.alpnProtocols.map { .string($0) }))) }
        if let min = try minVersion(c, at: cat) { node.append(("min_version", .string(min))) }
        return .map(node)
    }

    /// A filter chain's `transport_socket` (DownstreamTlsContext) → `listeners[].tls`. `http`: the chain's
    /// filter is an HTTP connection manager (ALPN and x-forwarded-client-cert apply); `forwardClientCert`:
    /// its `forward_client_cert_details` is SANITIZE_SET (with uri and dns: hcm() checked), else SANITIZE.
    func downstreamTLS(_ ts: TransportSocket, at: String, http: Bool, forwardClientCert: Bool, _ r: XDSResources) throws(XDSError) -> YAMLNode {
        let d = try tlsContext(ts, at: at, as: DownstreamTLS.self)
        let tat = at + ".typed_config"
        var rest = d
        rest.clearCommonTlsContext(); rest.clearRequireClientCertificate()
        try refuseLeftovers(rest, at: tat)
        let c = d.commonTlsContext
        let cat = tat + ".common_tls_context"
        try refuseCommonLeftovers(c, at: cat)
        let pairs = try certificates(c, at: cat, r)
        guard !pairs.isEmpty else { throw XDSError("\(cat).tls_certificates: at least one certificate is required") }
        let certs: [YAMLNode] = pairs.map { .map([("cert", .string($0.0)), ("key", .string($0.1))]) }
        var node: [(String, YAMLNode)] = [("certificates", .list(certs))]
        let requireClient = d.hasRequireClientCertificate && d.requireClientCertificate.value
        if let v = try validation(c, at: cat, r) {
            try refuseLeftovers(v.context, at: v.at, note: "Remora checks a client certificate against client_ca only")
            guard let ca = v.ca else { throw XDSError("\(v.at).trusted_ca is required") }
            // Envoy verifies a certificate the client may leave out; Remora's client_ca requires one.
            guard requireClient else {
                throw XDSError("\(v.at) without require_client_certificate (an optional client certificate) is not supported: Remora's client_ca requires one")
            }
            node.append(("client_ca", .string(ca)))
            // SANITIZE (the connection manager's default): the client's header is removed, none is added.
            if http { node.append(("forward_client_cert", .bool(forwardClientCert))) }
        } else if requireClient {
            throw XDSError("\(tat).require_client_certificate without common_tls_context.validation_context (trusted_ca) is not supported")
        }
        if http {
            // Envoy offers no ALPN when none is configured: its clients speak HTTP/1.1 (or HTTP/2 with
            // prior knowledge, which Remora's listener detects too).
            node.append(("alpn", .list((c.alpnProtocols.isEmpty ? ["http/1.1"] : c.alpnProtocols).map { .string($0) })))
        } else if !c.alpnProtocols.isEmpty {
            throw XDSError("\(cat).alpn_protocols is not supported on a tcp_proxy listener (Remora offers no ALPN there)")
        }
        if let min = try minVersion(c, at: cat) { node.append(("min_version", .string(min))) }
        return .map(node)
    }

    // MARK: certificates and CAs: files, or SDS secrets

    /// A validation context as read: the fields left to check (`trusted_ca` taken out), the CA's path,
    /// and where it came from (for messages).
    struct Validation {
        var context: ValidationContext
        var ca: String?
        var at: String
    }

    /// `validation_context` (inline), `validation_context_sds_secret_config` (the CA from an SDS secret) or
    /// `combined_validation_context` (Istio's form: SAN matchers in `default_validation_context`, the CA
    /// from SDS). nil: none.
    func validation(_ c: CommonTLS, at cat: String, _ r: XDSResources) throws(XDSError) -> Validation? {
        switch c.validationContextType {
        case nil:
            return nil
        case .validationContext(let v)?:
            let vat = cat + ".validation_context"
            var ctx = v
            ctx.clearTrustedCa()
            return Validation(context: ctx, ca: v.hasTrustedCa ? try file(v.trustedCa, at: vat + ".trusted_ca") : nil, at: vat)
        case .validationContextSdsSecretConfig(let sc)?:
            let sat = cat + ".validation_context_sds_secret_config"
            return Validation(context: ValidationContext(), ca: try sdsCA(sc, at: sat, r), at: sat)
        case .combinedValidationContext(let cv)?:
            let cvat = cat + ".combined_validation_context"
            var rest = cv
            rest.clearDefaultValidationContext(); rest.clearValidationContextSdsSecretConfig()
            try refuseLeftovers(rest, at: cvat)
            guard cv.hasValidationContextSdsSecretConfig else { throw XDSError("\(cvat).validation_context_sds_secret_config is required") }
            let dat = cvat + ".default_validation_context"
            if cv.defaultValidationContext.hasTrustedCa {
                throw XDSError("\(dat).trusted_ca is not supported (the CA comes from validation_context_sds_secret_config)")
            }
            let ca = try sdsCA(cv.validationContextSdsSecretConfig, at: cvat + ".validation_context_sds_secret_config", r)
            return Validation(context: cv.defaultValidationContext, ca: ca, at: dat)
        case .some:
            throw XDSError("\(cat): \(Self.validationFieldName(c)) is not supported (validation_context, validation_context_sds_secret_config and combined_validation_context are)")
        }
    }

    /// `tls_certificates` (files) then `tls_certificate_sds_secret_configs` (SDS), as (chain, key) paths.
    func certificates(_ c: CommonTLS, at cat: String, _ r: XDSResources) throws(XDSError) -> [(String, String)] {
        var out: [(String, String)] = []
        for (i, cert) in c.tlsCertificates.enumerated() {
            out.append(try certificate(cert, at: "\(cat).tls_certificates[\(i)]"))
        }
        for (i, sc) in c.tlsCertificateSdsSecretConfigs.enumerated() {
            out.append(try sdsCertificate(sc, at: "\(cat).tls_certificate_sds_secret_configs[\(i)]", r))
        }
        return out
    }

    /// An SdsSecretConfig: its name, over ADS (the one stream); the secret if it has arrived (nil: the
    /// translation waits for it, as Envoy's warming).
    func secret(_ sc: SdsSecretConfig, at: String, _ r: XDSResources) throws(XDSError) -> Secret? {
        var rest = sc
        rest.name = ""; rest.clearSdsConfig()
        try refuseLeftovers(rest, at: at)
        guard !sc.name.isEmpty else { throw XDSError("\(at).name is required") }
        guard sc.hasSdsConfig else {
            throw XDSError("\(at) (\(sc.name)): sds_config is required (a static secret of Envoy's bootstrap is not supported; ads is)")
        }
        try adsSource(sc.sdsConfig, at: at + ".sds_config")
        return r.secrets[sc.name]
    }

    /// A certificate and key from an SDS secret (`tls_certificate`).
    func sdsCertificate(_ sc: SdsSecretConfig, at: String, _ r: XDSResources) throws(XDSError) -> (String, String) {
        guard let s = try secret(sc, at: at, r) else { return (secretPath(sc.name, .cert), secretPath(sc.name, .key)) }
        let sat = "Secret \(s.name)"
        guard case .tlsCertificate(let t)? = s.type else {
            throw XDSError("\(sat): a tls_certificate is required (\(at) names it as a certificate)")
        }
        var rest = t
        rest.clearCertificateChain(); rest.clearPrivateKey()
        try refuseLeftovers(rest, at: sat + ".tls_certificate")
        guard t.hasCertificateChain, t.hasPrivateKey else { throw XDSError("\(sat).tls_certificate: certificate_chain and private_key are required") }
        return (try secretData(t.certificateChain, secret: s.name, .cert, at: sat + ".tls_certificate.certificate_chain"),
                try secretData(t.privateKey, secret: s.name, .key, at: sat + ".tls_certificate.private_key"))
    }

    /// A CA from an SDS secret (`validation_context` with `trusted_ca` only).
    func sdsCA(_ sc: SdsSecretConfig, at: String, _ r: XDSResources) throws(XDSError) -> String {
        guard let s = try secret(sc, at: at, r) else { return secretPath(sc.name, .ca) }
        let sat = "Secret \(s.name)"
        guard case .validationContext(let v)? = s.type else {
            throw XDSError("\(sat): a validation_context is required (\(at) names it as a CA)")
        }
        var rest = v
        rest.clearTrustedCa()
        try refuseLeftovers(rest, at: sat + ".validation_context", note: "a CA secret carries trusted_ca only; SAN matchers go in combined_validation_context.default_validation_context")
        guard v.hasTrustedCa else { throw XDSError("\(sat).validation_context.trusted_ca is required") }
        return try secretData(v.trustedCa, secret: s.name, .ca, at: sat + ".validation_context.trusted_ca")
    }

    enum SecretPart: String { case cert, key, ca }

    /// A secret's DataSource: a file by name (checked), or inline PEM that the agent writes under
    /// `secretsDirectory` (`secretFiles`) and the configuration names by that path.
    func secretData(_ d: Envoy_Config_Core_V3_DataSource, secret: String, _ part: SecretPart, at: String) throws(XDSError) -> String {
        let bytes: [UInt8]
        switch d.specifier {
        case .filename?: return try file(d, at: at)
        case .inlineBytes(let b)?: bytes = Array(b)
        case .inlineString(let s)?: bytes = Array(s.utf8)
        default:
            if d.specifier == nil { throw XDSError("\(at): filename, inline_bytes or inline_string is required") }
            var only = Envoy_Config_Core_V3_DataSource()
            only.specifier = d.specifier
            throw XDSError("\(at).\(leftoverFields(only).first ?? "specifier") is not supported (filename, inline_bytes and inline_string are)")
        }
        var rest = d
        rest.specifier = nil
        try refuseLeftovers(rest, at: at)
        let marker = part == .key ? "PRIVATE KEY-----" : "-----BEGIN CERTIFICATE-----"
        guard String(decoding: bytes, as: UTF8.self).contains(marker) else {
            throw XDSError("\(at): not PEM (no \(marker))")
        }
        return secretPath(secret, part)
    }

    /// `<secretsDirectory>/<name>.<part>.pem`; a name with characters other than `[A-Za-z0-9_.-]` (or a
    /// leading `.`) has them replaced and a hash of the name appended, so two names never share a file.
    func secretPath(_ name: String, _ part: SecretPart) -> String {
        var stem = String(name.map { c -> Character in
            c.isASCII && (c.isLetter || c.isNumber || c == "_" || c == "-" || c == ".") ? c : "_"
        })
        if stem.hasPrefix(".") { stem = "_" + stem.dropFirst() }
        if stem != name || stem.isEmpty {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            stem += "-" + String(h & 0xffff_ffff, radix: 16)
        }
        return "\(secretsDirectory)/\(stem).\(part.rawValue).pem"
    }

    /// The files the inline secrets of `r` make (keys first: a watcher that sees the key change first
    /// waits for the certificate, docs/tls.md), each with the path the configuration names.
    public func secretFiles(_ r: XDSResources) -> [SecretFile] {
        var keys: [SecretFile] = [], others: [SecretFile] = []
        func inline(_ d: Envoy_Config_Core_V3_DataSource) -> [UInt8]? {
            switch d.specifier {
            case .inlineBytes(let b)?: return Array(b)
            case .inlineString(let s)?: return Array(s.utf8)
            default: return nil
            }
        }
        for name in r.secrets.keys.sorted() {
            switch r.secrets[name]!.type {
            case .tlsCertificate(let t)?:
                if let b = inline(t.privateKey) { keys.append(SecretFile(path: secretPath(name, .key), bytes: b)) }
                if let b = inline(t.certificateChain) { others.append(SecretFile(path: secretPath(name, .cert), bytes: b)) }
            case .validationContext(let v)?:
                if let b = inline(v.trustedCa) { others.append(SecretFile(path: secretPath(name, .ca), bytes: b)) }
            default: break
            }
        }
        return keys + others
    }

    // MARK: parts

    /// The TLS context a `transport_socket` carries in its typed_config, as `M` (the upstream or the
    /// downstream context); any other type, or one that does not decode, is NACKed.
    func tlsContext<M: SwiftProtobuf.Message>(_ ts: TransportSocket, at: String, as: M.Type) throws(XDSError) -> M {
        var rest = ts
        rest.name = ""; rest.configType = nil
        try refuseLeftovers(rest, at: at)
        guard case .typedConfig(let any)? = ts.configType else {
            throw XDSError("\(at) (\(ts.name)): typed_config is required (the TLS transport socket, envoy.transport_sockets.tls)")
        }
        let tat = at + ".typed_config"
        guard any.typeURL.hasSuffix("/" + M.protoMessageName) else {
            throw XDSError("\(tat): \(any.typeURL) is not supported (\(M.protoMessageName) is)")
        }
        do { return try M(unpackingAny: any) } catch { throw XDSError("\(tat): does not decode: \(error)") }
    }

    /// Everything of a CommonTlsContext but the fields the callers read (certificates, the validation
    /// context, ALPN, the TLS parameters) is refused by name: SDS secret configurations, certificate
    /// providers, a custom handshaker, key logs.
    func refuseCommonLeftovers(_ c: CommonTLS, at: String) throws(XDSError) {
        var rest = c
        rest.tlsCertificates = []; rest.tlsCertificateSdsSecretConfigs = []; rest.alpnProtocols = []; rest.clearTlsParams()
        switch c.validationContextType {
        case .validationContext?, .validationContextSdsSecretConfig?, .combinedValidationContext?: rest.validationContextType = nil
        default: break
        }
        try refuseLeftovers(rest, at: at, note: "certificates and CAs come from files (filename) or SDS over ADS")
    }

    static func validationFieldName(_ c: CommonTLS) -> String {
        var only = CommonTLS()
        only.validationContextType = c.validationContextType
        return leftoverFields(only).first ?? "the validation context"
    }

    /// `{certificate_chain, private_key}` by filename.
    func certificate(_ t: TLSCertificate, at: String) throws(XDSError) -> (String, String) {
        var rest = t
        rest.clearCertificateChain(); rest.clearPrivateKey()
        try refuseLeftovers(rest, at: at)
        guard t.hasCertificateChain, t.hasPrivateKey else { throw XDSError("\(at): certificate_chain and private_key are required") }
        return (try file(t.certificateChain, at: at + ".certificate_chain"), try file(t.privateKey, at: at + ".private_key"))
    }

    /// A DataSource that names a file (`filename`); inline data and environment variables are refused.
    func file(_ d: Envoy_Config_Core_V3_DataSource, at: String) throws(XDSError) -> String {
        var rest = d
        if case .filename? = d.specifier { rest.specifier = nil }
        try refuseLeftovers(rest, at: at, note: "only filename is supported")
        guard case .filename(let f)? = d.specifier, !f.isEmpty else { throw XDSError("\(at): filename is required") }
        if let check = checkFile, let why = check(f) { throw XDSError("\(at).filename: \(why)") }
        return f
    }

    /// `match_typed_subject_alt_names` (DNS or URI, exact) and the older `match_subject_alt_names`
    /// (exact, any name type) → `verify_san`. Remora tells a URI (`://`) from a DNS name by its form.
    func subjectAltNames(_ v: ValidationContext, at: String) throws(XDSError) -> [String] {
        var out: [String] = []
        func exact(_ m: Envoy_Type_Matcher_V3_StringMatcher, at: String, dns: Bool) throws(XDSError) -> String {
            var rest = m
            if case .exact? = m.matchPattern { rest.matchPattern = nil }
            // A DNS name is compared ignoring case by Remora; Envoy's DNS matching too.
            if dns { rest.ignoreCase = false }
            try refuseLeftovers(rest, at: at, note: "only an exact name is supported")
            guard case .exact(let s)? = m.matchPattern, !s.isEmpty else { throw XDSError("\(at): an exact name is required") }
            return s
        }
        for (i, t) in v.matchTypedSubjectAltNames.enumerated() {
            let tat = "\(at).match_typed_subject_alt_names[\(i)]"
            var rest = t
            rest.sanType = .unspecified; rest.clearMatcher()
            try refuseLeftovers(rest, at: tat)
            switch t.sanType {
            case .dns:
                let s = try exact(t.matcher, at: tat + ".matcher", dns: true)
                guard !s.contains("://") else { throw XDSError("\(tat).matcher: \(s) is not a DNS name") }
                out.append(s)
            case .uri:
                let s = try exact(t.matcher, at: tat + ".matcher", dns: false)
                guard s.contains("://") else { throw XDSError("\(tat).matcher: \(s): Remora compares URI names of the form scheme://… only") }
                out.append(s)
            default:
                throw XDSError("\(tat).san_type: \(Self.sanTypeName(t.sanType)) is not supported (DNS and URI are)")
            }
        }
        for (i, m) in v.matchSubjectAltNames.enumerated() {
            out.append(try exact(m, at: "\(at).match_subject_alt_names[\(i)]", dns: false))
        }
        return out
    }

    /// `tls_params`: `tls_minimum_protocol_version` TLSv1_2 / TLSv1_3 (TLS_AUTO: Envoy's default 1.2, as
    /// Remora's); `tls_maximum_protocol_version` TLS_AUTO or TLSv1_3 (Remora's maximum).
    func minVersion(_ c: CommonTLS, at: String) throws(XDSError) -> String? {
        guard c.hasTlsParams else { return nil }
        let p = c.tlsParams
        let pat = at + ".tls_params"
        var rest = p
        rest.tlsMinimumProtocolVersion = .tlsAuto; rest.tlsMaximumProtocolVersion = .tlsAuto
        try refuseLeftovers(rest, at: pat)
        switch p.tlsMaximumProtocolVersion {
        case .tlsAuto, .tlsv13: break
        default: throw XDSError("\(pat).tls_maximum_protocol_version: \(Self.tlsName(p.tlsMaximumProtocolVersion)) is not supported (Remora speaks TLS 1.3)")
        }
        switch p.tlsMinimumProtocolVersion {
        case .tlsAuto: return nil
        case .tlsv12: return "1.2"
        case .tlsv13: return "1.3"
        default: throw XDSError("\(pat).tls_minimum_protocol_version: \(Self.tlsName(p.tlsMinimumProtocolVersion)) is not supported (TLSv1_2 and TLSv1_3 are)")
        }
    }

    /// Envoy's names of the enum values, for messages.
    static func tlsName(_ v: TLSParams.TlsProtocol) -> String {
        switch v {
        case .tlsAuto: "TLS_AUTO"
        case .tlsv10: "TLSv1_0"
        case .tlsv11: "TLSv1_1"
        case .tlsv12: "TLSv1_2"
        case .tlsv13: "TLSv1_3"
        case .UNRECOGNIZED(let n): "\(n)"
        }
    }

    static func sanTypeName(_ v: Envoy_Extensions_TransportSockets_Tls_V3_SubjectAltNameMatcher.SanType) -> String {
        switch v {
        case .unspecified: "SAN_TYPE_UNSPECIFIED"
        case .email: "EMAIL"
        case .dns: "DNS"
        case .uri: "URI"
        case .ipAddress: "IP_ADDRESS"
        case .otherName: "OTHER_NAME"
        case .UNRECOGNIZED(let n): "\(n)"
        }
    }
}
