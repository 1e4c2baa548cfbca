import RemoraXDSProto
import SwiftProtobuf

public typealias TransportSocket = Envoy_Config_Core_V3_TransportSocket
public typealias UpstreamTLS = Envoy_Extensions_TransportSockets_Tls_V3_UpstreamTlsContext
public typealias DownstreamTLS = Envoy_Extensions_TransportSockets_Tls_V3_DownstreamTlsContext
typealias CommonTLS = Envoy_Extensions_TransportSockets_Tls_V3_CommonTlsContext
typealias TLSCertificate = Envoy_Extensions_TransportSockets_Tls_V3_TlsCertificate
typealias ValidationContext = Envoy_Extensions_TransportSockets_Tls_V3_CertificateValidationContext
typealias TLSParams = Envoy_Extensions_TransportSockets_Tls_V3_TlsParameters

/// `transport_socket` envoy.transport_sockets.tls → Remora's `tls:` (docs/config.md "TLS"). File-based
/// only: certificates, keys and CAs by `filename` (what static setups and control planes without SDS
/// send); inline PEM, SDS secrets, certificate providers and every other field are NACKed by name.
extension Translator {
    /// A cluster's `transport_socket` (UpstreamTlsContext) → `clusters[].tls`.
    func upstreamTLS(_ ts: TransportSocket, at: String) throws(XDSError) -> YAMLNode {
        let any = try tlsContextAny(ts, at: at)
        let tat = at + ".typed_config"
        guard any.typeURL.hasSuffix("/" + UpstreamTLS.protoMessageName) else {
            throw XDSError("\(tat): \(any.typeURL) is not supported (envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext is)")
        }
        let u: UpstreamTLS
        do { u = try UpstreamTLS(unpackingAny: any) } catch { throw XDSError("\(tat): does not decode: \(error)") }
        var rest = u
        rest.clearCommonTlsContext(); rest.sni = ""
        try refuseLeftovers(rest, at: tat)
        let c = u.commonTlsContext
        let cat = tat + ".common_tls_context"
        try refuseCommonLeftovers(c, at: cat)
        var node: [(String, YAMLNode)] = []
        // Envoy without a validation context accepts any server certificate; Remora always verifies one
        // (against the system's CAs when `ca` is absent): refused rather than made stricter unseen.
        guard case .validationContext(let v)? = c.validationContextType else {
            throw XDSError("\(cat).validation_context (trusted_ca) is required: Envoy without one accepts any server certificate, Remora always verifies it")
        }
        let vat = cat + ".validation_context"
        var vr = v
        vr.clearTrustedCa(); vr.matchTypedSubjectAltNames = []; vr.matchSubjectAltNames = []
        try refuseLeftovers(vr, at: vat)
        guard v.hasTrustedCa else { throw XDSError("\(vat).trusted_ca is required (Remora verifies every server certificate)") }
        node.append(("ca", .string(try file(v.trustedCa, at: vat + ".trusted_ca"))))
        if !u.sni.isEmpty { node.append(("server_name", .string(u.sni))) }
        let sans = try subjectAltNames(v, at: vat)
        if !sans.isEmpty { node.append(("verify_san", .list(sans.map { .string($0) }))) }
        guard c.tlsCertificates.count <= 1 else {
            throw XDSError("\(cat).tls_certificates: \(c.tlsCertificates.count) certificates; at most one (the client certificate) is supported")
        }
        if let cert = c.tlsCertificates.first {
            let (chain, key) = try certificate(cert, at: cat + ".tls_certificates[0]")
            node.append(("cert", .string(chain)))
            node.append(("key", .string(key)))
        }
        if !c.alpnProtocols.isEmpty { node.append(("alpn", .list(c.alpnProtocols.map { .string($0) }))) }
        if let min = try minVersion(c, at: cat) { node.append(("min_version", .string(min))) }
        return .map(node)
    }

    /// A filter chain's `transport_socket` (DownstreamTlsContext) → `listeners[].tls`. `http`: the chain's
    /// filter is an HTTP connection manager (ALPN and x-forwarded-client-cert apply); `forwardClientCert`:
    /// its `forward_client_cert_details` is SANITIZE_SET (with uri and dns: hcm() checked), else SANITIZE.
    func downstreamTLS(_ ts: TransportSocket, at: String, http: Bool, forwardClientCert: Bool) throws(XDSError) -> YAMLNode {
        let any = try tlsContextAny(ts, at: at)
        let tat = at + ".typed_config"
        guard any.typeURL.hasSuffix("/" + DownstreamTLS.protoMessageName) else {
            throw XDSError("\(tat): \(any.typeURL) is not supported (envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext is)")
        }
        let d: DownstreamTLS
        do { d = try DownstreamTLS(unpackingAny: any) } catch { throw XDSError("\(tat): does not decode: \(error)") }
        var rest = d
        rest.clearCommonTlsContext(); rest.clearRequireClientCertificate()
        try refuseLeftovers(rest, at: tat)
        let c = d.commonTlsContext
        let cat = tat + ".common_tls_context"
        try refuseCommonLeftovers(c, at: cat)
        guard !c.tlsCertificates.isEmpty else { throw XDSError("\(cat).tls_certificates: at least one certificate is required") }
        var certs: [YAMLNode] = []
        for (i, cert) in c.tlsCertificates.enumerated() {
            let (chain, key) = try certificate(cert, at: "\(cat).tls_certificates[\(i)]")
            certs.append(.map([("cert", .string(chain)), ("key", .string(key))]))
        }
        var node: [(String, YAMLNode)] = [("certificates", .list(certs))]
        let requireClient = d.hasRequireClientCertificate && d.requireClientCertificate.value
        switch c.validationContextType {
        case nil:
            if requireClient {
                throw XDSError("\(tat).require_client_certificate without common_tls_context.validation_context (trusted_ca) is not supported")
            }
        case .validationContext(let v)?:
            let vat = cat + ".validation_context"
            var vr = v
            vr.clearTrustedCa()
            try refuseLeftovers(vr, at: vat, note: "Remora checks a client certificate against client_ca only")
            guard v.hasTrustedCa else { throw XDSError("\(vat).trusted_ca is required") }
            // Envoy verifies a certificate the client may leave out; Remora's client_ca requires one.
            guard requireClient else {
                throw XDSError("\(vat) without require_client_certificate (an optional client certificate) is not supported: Remora's client_ca requires one")
            }
            node.append(("client_ca", .string(try file(v.trustedCa, at: vat + ".trusted_ca"))))
            // SANITIZE (the connection manager's default): the client's header is removed, none is added.
            if http { node.append(("forward_client_cert", .bool(forwardClientCert))) }
        case .some:
            throw XDSError("\(cat): \(Self.validationFieldName(c)) is not supported (validation_context with trusted_ca is)")
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

    // MARK: parts

    func tlsContextAny(_ ts: TransportSocket, at: String) throws(XDSError) -> Google_Protobuf_Any {
        var rest = ts
        rest.name = ""; rest.configType = nil
        try refuseLeftovers(rest, at: at)
        guard case .typedConfig(let any)? = ts.configType else {
            throw XDSError("\(at) (\(ts.name)): typed_config is required (the TLS transport socket, envoy.transport_sockets.tls)")
        }
        return any
    }

    /// Everything of a CommonTlsContext but the fields the callers read (certificates, the validation
    /// context, ALPN, the TLS parameters) is refused by name: SDS secret configurations, certificate
    /// providers, a custom handshaker, key logs.
    func refuseCommonLeftovers(_ c: CommonTLS, at: String) throws(XDSError) {
        var rest = c
        rest.tlsCertificates = []; rest.alpnProtocols = []; rest.clearTlsParams()
        if case .validationContext? = c.validationContextType { rest.validationContextType = nil }
        try refuseLeftovers(rest, at: at, note: "certificates and CAs are read from files (filename); SDS is not supported")
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
