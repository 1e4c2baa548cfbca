import COpenSSL
import Glibc

/// The mesh CA's X.509 work as PEM text in and out (docs/control-plane.md "Mesh CA"), done by
/// OpenSSL 3 through the C shim (`CShims/COpenSSL/ca.c`): ECDSA P-256 keys, certificate signing
/// requests, a self-signed root, workload certificates with a SPIFFE URI SAN. Used by `remora
/// control` (root, signing) and by the proxy's identity agent (key, request); off the data path.
public enum MeshPKI {
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public var message: String
        public init(_ message: String) { self.message = message }
        public var description: String { message }
    }

    static func take(_ p: UnsafeMutablePointer<CChar>?, _ err: [CChar]) throws(Failure) -> String {
        guard let p else {
            let msg = err.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            throw Failure(msg.isEmpty ? "OpenSSL failed" : msg)
        }
        defer { remora_ca_free(p) }
        return String(cString: p)
    }

    /// A new ECDSA P-256 private key, PKCS#8 PEM.
    public static func newKey() throws(Failure) -> String {
        var err = [CChar](repeating: 0, count: 512)
        let p = err.withUnsafeMutableBufferPointer { remora_ca_keygen($0.baseAddress, $0.count) }
        return try take(p, err)
    }

    /// A self-signed root certificate for `key` (CA:TRUE, keyCertSign), valid `notBefore ... notAfter`
    /// (Unix seconds), with URI SAN `uri` (the trust domain's SPIFFE id; "" for none).
    public static func selfSignedRoot(key: String, organization: String, commonName: String, uri: String,
                                      notBefore: Int64, notAfter: Int64) throws(Failure) -> String {
        var err = [CChar](repeating: 0, count: 512)
        let p = err.withUnsafeMutableBufferPointer {
            remora_ca_root_new(key, organization, commonName, uri, notBefore, notAfter, $0.baseAddress, $0.count)
        }
        return try take(p, err)
    }

    /// A certificate signing request for `key`. `commonName` and `uri` are what the request claims
    /// ("" for none); the mesh CA ignores both (the identity comes from the token).
    public static func signingRequest(key: String, commonName: String = "", uri: String = "") throws(Failure) -> String {
        var err = [CChar](repeating: 0, count: 512)
        let p = err.withUnsafeMutableBufferPointer { remora_ca_csr_new(key, commonName, uri, $0.baseAddress, $0.count) }
        return try take(p, err)
    }

    /// Signs `request` (its signature must verify, its key be ECDSA P-256) as a workload
    /// certificate with URI SAN `uri` and subject CN `commonName`, whatever the request says.
    public static func sign(request: String, caCert: String, caKey: String, uri: String, commonName: String,
                            notBefore: Int64, notAfter: Int64) throws(Failure) -> String {
        var err = [CChar](repeating: 0, count: 512)
        let p = err.withUnsafeMutableBufferPointer {
            remora_ca_sign(request, caCert, caKey, uri, commonName, notBefore, notAfter, $0.baseAddress, $0.count)
        }
        return try take(p, err)
    }

    /// The first certificate's validity (Unix seconds), nil when none can be read.
    public static func validity(_ certPEM: String) -> (notBefore: Int64, notAfter: Int64)? {
        var nb: Int64 = 0, na: Int64 = 0
        guard remora_ca_cert_times(certPEM, &nb, &na) == 1 else { return nil }
        return (notBefore: nb, notAfter: na)
    }

    /// Whether `key` is the private key of `certPEM`'s first certificate.
    public static func keyMatches(cert: String, key: String) -> Bool { remora_ca_key_matches(cert, key) == 1 }

    /// SHA-256 of `bytes` as 64 lowercase hex digits.
    public static func sha256Hex(_ bytes: [UInt8]) -> String {
        var hex = [CChar](repeating: 0, count: 65)
        _ = bytes.withUnsafeBufferPointer { b in hex.withUnsafeMutableBufferPointer { remora_ca_sha256_hex(b.baseAddress, b.count, $0.baseAddress) } }
        return hex.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// `count` bytes from OpenSSL's CSPRNG.
    public static func randomBytes(_ count: Int) throws(Failure) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let ok = out.withUnsafeMutableBufferPointer { remora_ca_random($0.baseAddress, $0.count) }
        if ok != 1 { throw Failure("no random bytes from OpenSSL") }
        return out
    }
}
