// A small C interface to OpenSSL 3 (Debian libssl-dev) for RemoraTLS, its only importer. OpenSSL's
// own headers stay behind it (their function-like macros do not import into Swift); every OpenSSL
// callback Remora installs lives in tls.c, and none calls back into Swift.
//
// A connection's TLS state (`remora_tls_conn`) talks to the network through a BIO of our own:
// reads take the bytes libuv just read (`in`, set for the duration of one call), writes append the
// records to `out`, which the caller hands to its socket after each call. Nothing blocks, nothing is
// allocated per record beyond OpenSSL's own buffers (`out` grows to the largest flight and stays).
#ifndef REMORA_COPENSSL_H
#define REMORA_COPENSSL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct remora_tls_conn {
    void *ssl;              // SSL *
    const uint8_t *in;      // wire bytes not yet taken by OpenSSL (valid during one call)
    size_t in_len;
    uint8_t *out;           // wire bytes OpenSSL produced, to be written to the socket
    size_t out_len;
    size_t out_cap;
    unsigned long last_error; // why a read failed, when the error queue was emptied to check it (remora_tls_read)
} remora_tls_conn;

// MARK: server side (one per TLS listener)

typedef struct remora_tls_server remora_tls_server;

/// `alpn`: the protocols the listener offers, in preference order, in wire format (length-prefixed);
/// `ticket_rotate_secs`: session ticket keys are replaced this often (the previous key still decrypts).
remora_tls_server *remora_tls_server_new(const uint8_t *alpn, size_t alpn_len, int ticket_rotate_secs);
void remora_tls_server_free(remora_tls_server *s);

/// A server SSL_CTX for one certificate chain + key (PEM files), `client_ca` (NULL: no client
/// certificate asked for; else required and verified against it), minimum version 0x0303 (TLS 1.2)
/// or 0x0304 (TLS 1.3). NULL on failure, with the reason in `err`.
void *remora_tls_server_ctx_new(remora_tls_server *s, const char *cert, const char *key, const char *client_ca,
                                int min_version, char *err, size_t errlen);

/// Installs the listener's certificates: `ctxs[0]` is the default; `names[i]` (a DNS name or
/// `*.suffix`) selects `ctxs[name_ctx[i]]` by SNI. Takes over the references in `ctxs`; drops the
/// previous set (connections that use them keep theirs). Safe while other threads make connections.
void remora_tls_server_install(remora_tls_server *s, void **ctxs, int n, const char *const *names,
                               const int *name_ctx, int nnames);

/// A connection in the server role, with the listener's current default certificate.
remora_tls_conn *remora_tls_conn_server(remora_tls_server *s);

// MARK: client side (one per TLS cluster)

typedef struct remora_tls_client remora_tls_client;

remora_tls_client *remora_tls_client_new(void);
void remora_tls_client_free(remora_tls_client *c);

/// A client SSL_CTX: servers verified against `ca` (PEM bundle), an optional client certificate and
/// key, ALPN offer in wire format, minimum version as above. NULL on failure, reason in `err`.
void *remora_tls_client_ctx_new(remora_tls_client *c, const char *ca, const char *cert, const char *key,
                                const uint8_t *alpn, size_t alpn_len, int min_version, char *err, size_t errlen);

/// Installs `ctx` (takes over the reference) and forgets the cached session.
void remora_tls_client_install(remora_tls_client *c, void *ctx);

/// A connection in the client role; `sni` may be NULL. Resumes the last session of the cluster.
remora_tls_conn *remora_tls_conn_client(remora_tls_client *c, const char *sni);

// MARK: a connection

void remora_tls_conn_free(remora_tls_conn *c);

/// 1: handshake done; 0: needs more bytes from the peer; -1: failed; -2: failed, the client sent no
/// certificate (mTLS); -3: failed, the peer's certificate did not verify.
int remora_tls_handshake(remora_tls_conn *c);

/// Plaintext into `buf`: > 0 bytes; 0: needs more bytes; -1: failed; -2: the peer sent close_notify.
int remora_tls_read(remora_tls_conn *c, uint8_t *buf, int len);
/// After a read that returned bytes: whether another read can return more (wire bytes not yet taken,
/// or a record OpenSSL already holds); 0 = the next read would only say "wants more bytes".
int remora_tls_more(remora_tls_conn *c);

/// Encrypts `len` bytes into `out`. `len` on success, -1 on failure.
int remora_tls_write(remora_tls_conn *c, const uint8_t *p, int len);

/// Writes close_notify into `out`.
void remora_tls_shutdown(remora_tls_conn *c);

/// An idle connection gives back OpenSSL's record buffers (~34 KiB) and `out`; the next record
/// allocates them again.
void remora_tls_release_buffers(remora_tls_conn *c);

/// Why the last call failed (verification result first, then OpenSSL's error queue), NUL-terminated.
void remora_tls_error(remora_tls_conn *c, char *buf, size_t len);

/// A 16 KiB buffer per thread for decrypted bytes (used synchronously only).
uint8_t *remora_tls_plain_buffer(void);
#define REMORA_TLS_PLAIN_SIZE 16384

// After the handshake.
/// The SNI the client sent, or NULL.
const char *remora_tls_server_name(remora_tls_conn *c);
/// The negotiated ALPN protocol (length 0: none).
void remora_tls_alpn(remora_tls_conn *c, const uint8_t **p, unsigned *len);
/// 1 when the handshake resumed a session.
int remora_tls_session_reused(remora_tls_conn *c);
/// "TLSv1.3", …
const char *remora_tls_version(remora_tls_conn *c);
/// The earliest expiry (Unix seconds) of this side's certificate and the peer's; 0 when neither has one.
int64_t remora_tls_expiry(remora_tls_conn *c);
/// 1 when the peer presented a certificate.
int remora_tls_peer_has_cert(remora_tls_conn *c);
/// The peer's certificate's URI and DNS SANs as lines "U <uri>\n" / "D <name>\n", NUL-terminated,
/// and its SHA-256 (of the DER) as 64 hex digits in `hash` (65 bytes). Returns 0 when no certificate.
int remora_tls_peer_info(remora_tls_conn *c, char *sans, size_t sans_len, char *hash);

// MARK: certificates (for SNI names, /certs, expiry gauges)

/// About the certificate an SSL_CTX serves: not-after (Unix seconds), SANs as above, subject (one
/// line), serial (hex). Returns 0 when the context has no certificate.
int remora_tls_ctx_cert_info(void *ctx, int64_t *not_after, char *sans, size_t sans_len, char *subject,
                             size_t subject_len, char *serial, size_t serial_len);
/// The same about the first certificate of a PEM file (a CA bundle). 0 when it cannot be read.
int remora_tls_file_cert_info(const char *path, int64_t *not_after, char *sans, size_t sans_len, char *subject,
                              size_t subject_len, char *serial, size_t serial_len);

void remora_tls_ctx_free(void *ctx);

// MARK: mesh CA (ca.c): keys, requests, certificates as PEM text

/// Each returns a malloc'd NUL-terminated PEM string (free with remora_ca_free), or NULL with the
/// reason in `err`.
/// A new ECDSA P-256 private key (PKCS#8 PEM).
char *remora_ca_keygen(char *err, size_t errlen);
/// A self-signed root: subject O=`organization`, CN=`common_name`, CA:TRUE, keyCertSign, a URI SAN
/// (the trust domain, `spiffe://mesh.local`; "" for none), validity in Unix seconds.
char *remora_ca_root_new(const char *key_pem, const char *organization, const char *common_name, const char *uri_san,
                         int64_t not_before, int64_t not_after, char *err, size_t errlen);
/// A certificate signing request for `key_pem`; `common_name` and `uri_san` may be "" (none).
char *remora_ca_csr_new(const char *key_pem, const char *common_name, const char *uri_san, char *err, size_t errlen);
/// A workload certificate for the request's key: the request's signature must verify and its key
/// be ECDSA P-256; its subject and SANs are ignored: the certificate carries `uri_san` (and CN
/// `common_name`, may be ""), CA:FALSE, digitalSignature, serverAuth + clientAuth, signed by the CA.
char *remora_ca_sign(const char *csr_pem, const char *ca_cert_pem, const char *ca_key_pem, const char *uri_san,
                     const char *common_name, int64_t not_before, int64_t not_after, char *err, size_t errlen);
void remora_ca_free(char *p);
/// The first certificate's validity, Unix seconds. 0 when it cannot be read.
int remora_ca_cert_times(const char *cert_pem, int64_t *not_before, int64_t *not_after);
/// 1 when the key belongs to the certificate.
int remora_ca_key_matches(const char *cert_pem, const char *key_pem);
/// SHA-256 of the bytes as 64 hex digits (65 bytes with the NUL). 0 on failure.
int remora_ca_sha256_hex(const uint8_t *p, size_t len, char *hex65);
/// Random bytes from OpenSSL's CSPRNG. 0 on failure.
int remora_ca_random(uint8_t *p, size_t len);

#ifdef __cplusplus
}
#endif

#endif
