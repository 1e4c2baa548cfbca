// OpenSSL behind a small C interface for RemoraTLS (include/copenssl.h). Every OpenSSL callback
// Remora installs is in this file: the connection BIO (read/write/ctrl), SNI, ALPN, session ticket
// keys (server) and new sessions (client). None of them calls into Swift or back into OpenSSL's
// record layer: they look things up under a short lock and return.
#include "copenssl.h"

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

// MARK: the connection BIO

static BIO_METHOD *conn_bio_method;
static pthread_once_t conn_bio_once = PTHREAD_ONCE_INIT;

static int bio_write_cb(BIO *b, const char *data, int len) {
    remora_tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    size_t need = c->out_len + (size_t)len;
    if (need > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < need) cap *= 2;
        uint8_t *p = realloc(c->out, cap);
        if (!p) return -1;
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, (size_t)len);
    c->out_len = need;
    return len;
}

static int bio_read_cb(BIO *b, char *buf, int len) {
    remora_tls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (c->in_len == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = c->in_len < (size_t)len ? c->in_len : (size_t)len;
    memcpy(buf, c->in, n);
    c->in += n;
    c->in_len -= n;
    return (int)n;
}

static long bio_ctrl_cb(BIO *b, int cmd, long num, void *ptr) {
    (void)b; (void)num; (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: {
        remora_tls_conn *c = BIO_get_data(b);
        return c ? (long)c->in_len : 0;
    }
    case BIO_CTRL_WPENDING: return 0;
    default: return 0;
    }
}

static int bio_create_cb(BIO *b) { BIO_set_init(b, 1); return 1; }
static int bio_destroy_cb(BIO *b) { (void)b; return 1; }

static void conn_bio_setup(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "remora");
    BIO_meth_set_write(m, bio_write_cb);
    BIO_meth_set_read(m, bio_read_cb);
    BIO_meth_set_ctrl(m, bio_ctrl_cb);
    BIO_meth_set_create(m, bio_create_cb);
    BIO_meth_set_destroy(m, bio_destroy_cb);
    conn_bio_method = m;
}

static remora_tls_conn *conn_new(SSL *ssl) {
    pthread_once(&conn_bio_once, conn_bio_setup);
    remora_tls_conn *c = calloc(1, sizeof *c);
    if (!c) { SSL_free(ssl); return NULL; }
    BIO *b = BIO_new(conn_bio_method);
    if (!b) { free(c); SSL_free(ssl); return NULL; }
    BIO_set_data(b, c);
    SSL_set_bio(ssl, b, b);   // one BIO both ways: SSL_free frees it once
    c->ssl = ssl;
    return c;
}

void remora_tls_conn_free(remora_tls_conn *c) {
    if (!c) return;
    SSL_free(c->ssl);
    free(c->out);
    free(c);
}

static __thread uint8_t plain_buffer[REMORA_TLS_PLAIN_SIZE];
uint8_t *remora_tls_plain_buffer(void) { return plain_buffer; }

// MARK: server: certificates by SNI, ALPN, ticket keys

typedef struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    time_t created;
} ticket_key;

struct remora_tls_server {
    pthread_mutex_t lock;
    SSL_CTX **ctxs;
    int nctx;
    char **names;
    int *name_ctx;
    int nnames;
    uint8_t alpn[256];
    size_t alpn_len;
    int rotate;
    ticket_key keys[2];   // [0] current, [1] previous
};

static void ticket_key_new(ticket_key *k) {
    RAND_bytes(k->name, sizeof k->name);
    RAND_bytes(k->aes, sizeof k->aes);
    RAND_bytes(k->hmac, sizeof k->hmac);
    k->created = time(NULL);
}

remora_tls_server *remora_tls_server_new(const uint8_t *alpn, size_t alpn_len, int ticket_rotate_secs) {
    remora_tls_server *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->lock, NULL);
    if (alpn_len > sizeof s->alpn) alpn_len = 0;
    memcpy(s->alpn, alpn, alpn_len);
    s->alpn_len = alpn_len;
    s->rotate = ticket_rotate_secs > 0 ? ticket_rotate_secs : 3600;
    ticket_key_new(&s->keys[0]);
    s->keys[1] = s->keys[0];
    s->keys[1].created = 0;   // too old to decrypt anything
    return s;
}

static void server_drop_set(remora_tls_server *s, SSL_CTX ***ctxs, int *nctx, char ***names, int **name_ctx, int *nnames) {
    *ctxs = s->ctxs; *nctx = s->nctx; *names = s->names; *name_ctx = s->name_ctx; *nnames = s->nnames;
}

static void free_set(SSL_CTX **ctxs, int nctx, char **names, int *name_ctx, int nnames) {
    for (int i = 0; i < nctx; i++) SSL_CTX_free(ctxs[i]);
    for (int i = 0; i < nnames; i++) free(names[i]);
    free(ctxs); free(names); free(name_ctx);
}

void remora_tls_server_free(remora_tls_server *s) {
    if (!s) return;
    free_set(s->ctxs, s->nctx, s->names, s->name_ctx, s->nnames);
    pthread_mutex_destroy(&s->lock);
    OPENSSL_cleanse(s->keys, sizeof s->keys);
    free(s);
}

void remora_tls_server_install(remora_tls_server *s, void **ctxs, int n, const char *const *names,
                               const int *name_ctx, int nnames) {
    SSL_CTX **nc = calloc((size_t)(n > 0 ? n : 1), sizeof *nc);
    char **nn = calloc((size_t)(nnames > 0 ? nnames : 1), sizeof *nn);
    int *ni = calloc((size_t)(nnames > 0 ? nnames : 1), sizeof *ni);
    for (int i = 0; i < n; i++) nc[i] = ctxs[i];
    for (int i = 0; i < nnames; i++) { nn[i] = strdup(names[i]); ni[i] = name_ctx[i]; }
    SSL_CTX **oc; int on; char **onames; int *oi; int onn;
    pthread_mutex_lock(&s->lock);
    server_drop_set(s, &oc, &on, &onames, &oi, &onn);
    s->ctxs = nc; s->nctx = n; s->names = nn; s->name_ctx = ni; s->nnames = nnames;
    pthread_mutex_unlock(&s->lock);
    free_set(oc, on, onames, oi, onn);
}

remora_tls_conn *remora_tls_conn_server(remora_tls_server *s) {
    pthread_mutex_lock(&s->lock);
    SSL *ssl = s->nctx > 0 ? SSL_new(s->ctxs[0]) : NULL;
    pthread_mutex_unlock(&s->lock);
    ERR_clear_error();
    if (!ssl) return NULL;
    SSL_set_accept_state(ssl);
    return conn_new(ssl);
}

/// `pattern` (a DNS name or "*.suffix") matches `name`, ignoring case; a wildcard covers one label.
static int name_matches(const char *pattern, const char *name) {
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(name, '.');
        return dot && dot != name && strcasecmp(dot + 1, pattern + 2) == 0;
    }
    return strcasecmp(pattern, name) == 0;
}

static int sni_cb(SSL *ssl, int *alert, void *arg) {
    (void)alert;
    remora_tls_server *s = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name) return SSL_TLSEXT_ERR_OK;
    pthread_mutex_lock(&s->lock);
    int found = -1;
    for (int i = 0; i < s->nnames && found < 0; i++) if (s->names[i][0] != '*' && name_matches(s->names[i], name)) found = s->name_ctx[i];
    for (int i = 0; i < s->nnames && found < 0; i++) if (s->names[i][0] == '*' && name_matches(s->names[i], name)) found = s->name_ctx[i];
    if (found >= 0 && found < s->nctx && s->ctxs[found] != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, s->ctxs[found]);
    pthread_mutex_unlock(&s->lock);
    return SSL_TLSEXT_ERR_OK;
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg) {
    (void)ssl;
    remora_tls_server *s = arg;
    if (s->alpn_len == 0) return SSL_TLSEXT_ERR_NOACK;
    unsigned char *o = NULL;
    if (SSL_select_next_proto(&o, outlen, s->alpn, (unsigned)s->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;   // RFC 7301: no protocol in common
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

// AES-256-CBC fetched once: EVP_aes_256_cbc() makes OpenSSL 3 look the cipher up in its provider
// tables on every init (an implicit fetch), once per ticket.
static EVP_CIPHER *ticket_cipher;
static pthread_once_t ticket_cipher_once = PTHREAD_ONCE_INIT;
static void ticket_cipher_fetch(void) { ticket_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL); }

static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc) {
    remora_tls_server *s = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0);
    if (!s) return 0;
    ticket_key k;
    int renew = 0;
    time_t now = time(NULL);
    pthread_mutex_lock(&s->lock);
    if (now - s->keys[0].created >= s->rotate) {   // rotate: the current key becomes the previous
        s->keys[1] = s->keys[0];
        ticket_key_new(&s->keys[0]);
    }
    if (enc) {
        k = s->keys[0];
    } else if (memcmp(key_name, s->keys[0].name, 16) == 0) {
        k = s->keys[0];
    } else if (memcmp(key_name, s->keys[1].name, 16) == 0 && now - s->keys[1].created < 2 * (time_t)s->rotate) {
        k = s->keys[1];
        renew = 1;
    } else {
        pthread_mutex_unlock(&s->lock);
        return 0;   // unknown or expired key: a full handshake
    }
    pthread_mutex_unlock(&s->lock);
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof k.hmac);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    int ok;
    pthread_once(&ticket_cipher_once, ticket_cipher_fetch);
    const EVP_CIPHER *cipher = ticket_cipher ? ticket_cipher : EVP_aes_256_cbc();
    if (enc) {
        memcpy(key_name, k.name, 16);
        if (RAND_bytes(iv, 16) <= 0) { OPENSSL_cleanse(&k, sizeof k); return -1; }
        ok = EVP_EncryptInit_ex(cctx, cipher, NULL, k.aes, iv) && EVP_MAC_CTX_set_params(hctx, params);
    } else {
        ok = EVP_DecryptInit_ex(cctx, cipher, NULL, k.aes, iv) && EVP_MAC_CTX_set_params(hctx, params);
    }
    OPENSSL_cleanse(&k, sizeof k);
    if (!ok) return -1;
    return renew ? 2 : 1;
}

static void set_err(char *err, size_t errlen, const char *what, const char *path) {
    unsigned long e = ERR_peek_last_error();
    char reason[256] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    snprintf(err, errlen, "%s %s%s%s", what, path ? path : "", reason[0] ? ": " : "", reason);
    ERR_clear_error();
}

// Cipher suites, in the server's order of preference (Mozilla's "intermediate" profile): AEADs with
// forward secrecy only; AES-128-GCM first (OpenSSL's own default order starts with AES-256-GCM-SHA384,
// whose SHA-384 transcript and HKDF cost ~0.3 M more instructions per TLS 1.3 handshake and whose
// 14 AES rounds cost more per record, for no practical gain in strength).
static const char tls13_suites[] = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
static const char tls12_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

// The certificate chain and its key into `ctx`; 0 with `err` saying which file is wrong, or that the
// key does not match the certificate.
static int use_cert_and_key(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) { set_err(err, errlen, "no certificate in", cert); return 0; }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1 && SSL_CTX_check_private_key(ctx) == 1) return 1;
    int reason = ERR_GET_REASON(ERR_peek_last_error());
    if (reason != X509_R_KEY_VALUES_MISMATCH && reason != SSL_R_PRIVATE_KEY_MISMATCH) {
        set_err(err, errlen, "no private key in", key);
        return 0;
    }
    snprintf(err, errlen, "the key in %s does not match the certificate in %s", key, cert);
    ERR_clear_error();
    return 0;
}

static int file_readable(const char *path, char *err, size_t errlen, const char *what) {
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(err, errlen, "cannot read %s %s", what, path); return 0; }
    fclose(f);
    return 1;
}

void *remora_tls_server_ctx_new(remora_tls_server *s, const char *cert, const char *key, const char *client_ca,
                                int min_version, char *err, size_t errlen) {
    ERR_clear_error();
    if (!file_readable(cert, err, errlen, "the certificate file") || !file_readable(key, err, errlen, "the key file")) return NULL;
    if (client_ca && !file_readable(client_ca, err, errlen, "the client CA file")) return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) { set_err(err, errlen, "cannot make a TLS context", NULL); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, min_version);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_ciphersuites(ctx, tls13_suites);
    SSL_CTX_set_cipher_list(ctx, tls12_ciphers);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (!use_cert_and_key(ctx, cert, key, err, errlen)) goto fail;
    if (client_ca) {
        if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) { set_err(err, errlen, "no CA certificate in", client_ca); goto fail; }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);
        if (names) SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        SSL_CTX_set_verify_depth(ctx, 8);
    }
    // Stateless resumption only: tickets sealed with the listener's rotating keys.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    static const unsigned char sid[] = "remora";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    SSL_CTX_set_ex_data(ctx, 0, s);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, s);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, s);
    ERR_clear_error();
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

// MARK: client: verification, the last session per cluster

struct remora_tls_client {
    pthread_mutex_t lock;
    SSL_CTX *ctx;
    SSL_SESSION *session;
};

remora_tls_client *remora_tls_client_new(void) {
    remora_tls_client *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void remora_tls_client_free(remora_tls_client *c) {
    if (!c) return;
    SSL_CTX_free(c->ctx);
    SSL_SESSION_free(c->session);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess) {
    remora_tls_client *c = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), 0);
    if (!c) return 0;
    pthread_mutex_lock(&c->lock);
    int keep = SSL_get_SSL_CTX(ssl) == c->ctx;   // a session of a replaced context is dropped
    SSL_SESSION *old = keep ? c->session : NULL;
    if (keep) c->session = sess;
    pthread_mutex_unlock(&c->lock);
    SSL_SESSION_free(old);
    return keep;   // 1: we keep the reference
}

void *remora_tls_client_ctx_new(remora_tls_client *c, const char *ca, const char *cert, const char *key,
                                const uint8_t *alpn, size_t alpn_len, int min_version, char *err, size_t errlen) {
    ERR_clear_error();
    if (ca && !file_readable(ca, err, errlen, "the CA file")) return NULL;
    if (cert && !file_readable(cert, err, errlen, "the certificate file")) return NULL;
    if (key && !file_readable(key, err, errlen, "the key file")) return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { set_err(err, errlen, "cannot make a TLS context", NULL); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, min_version);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_ciphersuites(ctx, tls13_suites);
    SSL_CTX_set_cipher_list(ctx, tls12_ciphers);
    SSL_CTX_set_read_ahead(ctx, 1);
    if (ca) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) { set_err(err, errlen, "no CA certificate in", ca); goto fail; }
    } else {
        SSL_CTX_set_default_verify_paths(ctx);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (cert) {
        if (!use_cert_and_key(ctx, cert, key, err, errlen)) goto fail;
    }
    if (alpn_len > 0 && SSL_CTX_set_alpn_protos(ctx, alpn, (unsigned)alpn_len) != 0) { set_err(err, errlen, "bad ALPN list", NULL); goto fail; }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    SSL_CTX_set_ex_data(ctx, 0, c);
    ERR_clear_error();
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void remora_tls_client_install(remora_tls_client *c, void *ctx) {
    pthread_mutex_lock(&c->lock);
    SSL_CTX *old = c->ctx;
    SSL_SESSION *sess = c->session;
    c->ctx = ctx;
    c->session = NULL;
    pthread_mutex_unlock(&c->lock);
    SSL_CTX_free(old);
    SSL_SESSION_free(sess);
}

remora_tls_conn *remora_tls_conn_client(remora_tls_client *c, const char *sni) {
    pthread_mutex_lock(&c->lock);
    SSL *ssl = c->ctx ? SSL_new(c->ctx) : NULL;
    if (ssl && c->session) SSL_set_session(ssl, c->session);
    pthread_mutex_unlock(&c->lock);
    if (!ssl) { ERR_clear_error(); return NULL; }
    if (sni && sni[0]) SSL_set_tlsext_host_name(ssl, sni);
    SSL_set_connect_state(ssl);
    ERR_clear_error();
    return conn_new(ssl);
}

// MARK: a connection

int remora_tls_handshake(remora_tls_conn *c) {
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) { ERR_clear_error(); return 1; }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    unsigned long q = ERR_peek_error();
    if (ERR_GET_LIB(q) == ERR_LIB_SSL && ERR_GET_REASON(q) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) return -2;
    if (SSL_get_verify_result(c->ssl) != X509_V_OK ||
        (ERR_GET_LIB(q) == ERR_LIB_SSL && ERR_GET_REASON(q) == SSL_R_CERTIFICATE_VERIFY_FAILED)) return -3;
    return -1;
}

// Reads and writes skip ERR_clear_error before the call (a thread-local lookup and OPENSSL_init_crypto
// each time: ~500 instructions, twice per request and side): the queue is normally empty, since every
// failure here is followed by remora_tls_error, which empties it, and every setup function empties it
// before returning. SSL_write's result does not depend on the queue. SSL_read's does, through
// SSL_get_error: a stale entry left by some other call on this thread would turn "wants more bytes"
// into a fatal error and close a healthy connection. So a read that looks fatal with a non-empty queue
// is checked once more with the queue emptied (a connection already failed stays failed; its reason is
// kept for remora_tls_error) — a cost paid on the failure path only.
int remora_tls_read(remora_tls_conn *c, uint8_t *buf, int len) {
    int r = SSL_read(c->ssl, buf, len);
    if (r > 0) return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_ZERO_RETURN) return -2;
    unsigned long q = ERR_peek_last_error();
    if (q != 0) {
        ERR_clear_error();
        r = SSL_read(c->ssl, buf, len);
        if (r > 0) return r;
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
        if (e == SSL_ERROR_ZERO_RETURN) return -2;
        if (ERR_peek_error() == 0) c->last_error = q;
    }
    return -1;
}

int remora_tls_more(remora_tls_conn *c) { return c->in_len > 0 || SSL_has_pending(c->ssl); }

int remora_tls_write(remora_tls_conn *c, const uint8_t *p, int len) {
    int r = SSL_write(c->ssl, p, len);
    return r == len ? r : -1;
}

void remora_tls_shutdown(remora_tls_conn *c) {
    ERR_clear_error();
    (void)SSL_shutdown(c->ssl);
    ERR_clear_error();
}

void remora_tls_release_buffers(remora_tls_conn *c) {
    (void)SSL_free_buffers(c->ssl);   // refused (0) while a record is half read or written
    if (c->out_len == 0 && c->out) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
}

void remora_tls_error(remora_tls_conn *c, char *buf, size_t len) {
    if (len == 0) return;
    buf[0] = 0;
    long v = c ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    if (v != X509_V_OK) {
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        ERR_clear_error();
        return;
    }
    unsigned long e = ERR_get_error();
    if (!e && c) e = c->last_error;
    if (c) c->last_error = 0;
    if (e) ERR_error_string_n(e, buf, len); else snprintf(buf, len, "TLS error");
    ERR_clear_error();
}

const char *remora_tls_server_name(remora_tls_conn *c) { return SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name); }

void remora_tls_alpn(remora_tls_conn *c, const uint8_t **p, unsigned *len) { SSL_get0_alpn_selected(c->ssl, p, len); }

int remora_tls_session_reused(remora_tls_conn *c) { return SSL_session_reused(c->ssl); }

const char *remora_tls_version(remora_tls_conn *c) { return SSL_get_version(c->ssl); }

static int64_t not_after(X509 *x) {
    struct tm tm;
    if (!x || ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) return 0;
    return (int64_t)timegm(&tm);
}

int64_t remora_tls_expiry(remora_tls_conn *c) {
    int64_t own = not_after(SSL_get_certificate(c->ssl)), peer = not_after(SSL_get0_peer_certificate(c->ssl));
    if (own == 0) return peer;
    if (peer == 0) return own;
    return own < peer ? own : peer;
}

int remora_tls_peer_has_cert(remora_tls_conn *c) { return SSL_get0_peer_certificate(c->ssl) != NULL; }

// MARK: certificate details

static void append_line(char *buf, size_t len, size_t *at, char kind, const unsigned char *s, int n) {
    if (*at + (size_t)n + 4 > len) return;
    buf[(*at)++] = kind;
    buf[(*at)++] = ' ';
    for (int i = 0; i < n; i++) { unsigned char ch = s[i]; buf[(*at)++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch; }
    buf[(*at)++] = '\n';
    buf[*at] = 0;
}

static void sans_of(X509 *x, char *buf, size_t len) {
    size_t at = 0;
    if (len) buf[0] = 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    if (!names) return;
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type == GEN_URI) append_line(buf, len, &at, 'U', ASN1_STRING_get0_data(g->d.uniformResourceIdentifier),
                                            ASN1_STRING_length(g->d.uniformResourceIdentifier));
        else if (g->type == GEN_DNS) append_line(buf, len, &at, 'D', ASN1_STRING_get0_data(g->d.dNSName),
                                                 ASN1_STRING_length(g->d.dNSName));
    }
    GENERAL_NAMES_free(names);
}

int remora_tls_peer_info(remora_tls_conn *c, char *sans, size_t sans_len, char *hash) {
    X509 *x = SSL_get0_peer_certificate(c->ssl);
    if (!x) return 0;
    sans_of(x, sans, sans_len);
    unsigned char md[32];
    unsigned int n = 0;
    hash[0] = 0;
    if (X509_digest(x, EVP_sha256(), md, &n) == 1) {
        static const char hex[] = "0123456789abcdef";
        for (unsigned i = 0; i < n && i < 32; i++) { hash[2 * i] = hex[md[i] >> 4]; hash[2 * i + 1] = hex[md[i] & 15]; }
        hash[2 * (n < 32 ? n : 32)] = 0;
    }
    return 1;
}

static int cert_info(X509 *x, int64_t *not_after, char *sans, size_t sans_len, char *subject, size_t subject_len,
                     char *serial, size_t serial_len) {
    struct tm tm;
    *not_after = 0;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1) *not_after = (int64_t)timegm(&tm);
    sans_of(x, sans, sans_len);
    if (subject_len) {
        subject[0] = 0;
        BIO *b = BIO_new(BIO_s_mem());
        if (b) {
            X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
            int n = BIO_read(b, subject, (int)subject_len - 1);
            subject[n > 0 ? n : 0] = 0;
            BIO_free(b);
        }
    }
    if (serial_len) {
        serial[0] = 0;
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        if (bn) {
            char *h = BN_bn2hex(bn);
            if (h) { snprintf(serial, serial_len, "%s", h); OPENSSL_free(h); }
            BN_free(bn);
        }
    }
    return 1;
}

int remora_tls_ctx_cert_info(void *ctx, int64_t *not_after, char *sans, size_t sans_len, char *subject,
                             size_t subject_len, char *serial, size_t serial_len) {
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (!x) return 0;
    return cert_info(x, not_after, sans, sans_len, subject, subject_len, serial, serial_len);
}

int remora_tls_file_cert_info(const char *path, int64_t *not_after, char *sans, size_t sans_len, char *subject,
                              size_t subject_len, char *serial, size_t serial_len) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ERR_clear_error();
    if (!x) return 0;
    int r = cert_info(x, not_after, sans, sans_len, subject, subject_len, serial, serial_len);
    X509_free(x);
    return r;
}

void remora_tls_ctx_free(void *ctx) { SSL_CTX_free(ctx); }
