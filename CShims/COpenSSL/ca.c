// The mesh CA's X.509 work (include/copenssl.h, "mesh CA"): ECDSA P-256 keys, certificate signing
// requests, a self-signed root, workload certificates with a SPIFFE URI SAN. OpenSSL 3's own
// builders (EVP_PKEY_Q_keygen, X509_REQ, X509, X509V3 extensions) do the encoding: no ASN.1 is
// written here. No callbacks. Every function returns a malloc'd NUL-terminated PEM (free it with
// remora_ca_free) or NULL with the reason in `err`.
#include "copenssl.h"

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void ca_err(char *err, size_t errlen, const char *what) {
    if (!err || !errlen) return;
    unsigned long e = ERR_peek_last_error();
    char reason[256] = "";
    if (e) ERR_error_string_n(e, reason, sizeof reason);
    snprintf(err, errlen, "%s%s%s", what, reason[0] ? ": " : "", reason);
    ERR_clear_error();
}

static char *bio_string(BIO *b) {
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    if (n < 0) return NULL;
    char *out = malloc((size_t)n + 1);
    if (!out) return NULL;
    memcpy(out, data, (size_t)n);
    out[n] = 0;
    return out;
}

void remora_ca_free(char *p) { free(p); }

static EVP_PKEY *key_from_pem(const char *pem) {
    BIO *b = BIO_new_mem_buf(pem, -1);
    if (!b) return NULL;
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    return k;
}

static X509 *cert_from_pem(const char *pem) {
    BIO *b = BIO_new_mem_buf(pem, -1);
    if (!b) return NULL;
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    return x;
}

static char *cert_to_pem(X509 *x) {
    BIO *b = BIO_new(BIO_s_mem());
    if (!b) return NULL;
    char *out = PEM_write_bio_X509(b, x) == 1 ? bio_string(b) : NULL;
    BIO_free(b);
    return out;
}

/// 1 when `k` is an EC key on P-256.
static int is_p256(EVP_PKEY *k) {
    if (EVP_PKEY_get_base_id(k) != EVP_PKEY_EC) return 0;
    char group[64] = "";
    size_t n = 0;
    if (EVP_PKEY_get_utf8_string_param(k, "group", group, sizeof group, &n) != 1) return 0;
    return strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0;
}

char *remora_ca_keygen(char *err, size_t errlen) {
    ERR_clear_error();
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!k) { ca_err(err, errlen, "cannot generate an ECDSA P-256 key"); return NULL; }
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL;
    if (b && PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1) out = bio_string(b);
    if (!out) ca_err(err, errlen, "cannot encode the key");
    BIO_free(b);
    EVP_PKEY_free(k);
    return out;
}

/// A random positive 128-bit serial.
static int set_serial(X509 *x) {
    unsigned char r[16];
    if (RAND_bytes(r, sizeof r) != 1) return 0;
    r[0] &= 0x7f;
    r[0] |= 0x01;
    BIGNUM *bn = BN_bin2bn(r, sizeof r, NULL);
    if (!bn) return 0;
    int ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    return ok;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!e) return 0;
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok;
}

static int set_times(X509 *x, int64_t not_before, int64_t not_after) {
    return ASN1_TIME_set(X509_getm_notBefore(x), (time_t)not_before) != NULL
        && ASN1_TIME_set(X509_getm_notAfter(x), (time_t)not_after) != NULL;
}

char *remora_ca_root_new(const char *key_pem, const char *organization, const char *common_name, const char *uri_san,
                         int64_t not_before, int64_t not_after, char *err, size_t errlen) {
    ERR_clear_error();
    EVP_PKEY *k = key_from_pem(key_pem);
    if (!k) { ca_err(err, errlen, "cannot read the root's key"); return NULL; }
    X509 *x = X509_new();
    char *out = NULL;
    X509_NAME *name = x ? X509_get_subject_name(x) : NULL;
    char san[600];
    snprintf(san, sizeof san, "URI:%s", uri_san);
    if (!x || X509_set_version(x, 2) != 1 || !set_serial(x) || !set_times(x, not_before, not_after)
        || X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)organization, -1, -1, 0) != 1
        || X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)common_name, -1, -1, 0) != 1
        || X509_set_issuer_name(x, name) != 1 || X509_set_pubkey(x, k) != 1
        || !add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE")
        || !add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign")
        || !add_ext(x, x, NID_subject_key_identifier, "hash")
        || (uri_san && uri_san[0] && !add_ext(x, x, NID_subject_alt_name, san))
        || X509_sign(x, k, EVP_sha256()) == 0) {
        ca_err(err, errlen, "cannot make the root certificate");
    } else {
        out = cert_to_pem(x);
    }
    X509_free(x);
    EVP_PKEY_free(k);
    return out;
}

char *remora_ca_csr_new(const char *key_pem, const char *common_name, const char *uri_san, char *err, size_t errlen) {
    ERR_clear_error();
    EVP_PKEY *k = key_from_pem(key_pem);
    if (!k) { ca_err(err, errlen, "cannot read the key"); return NULL; }
    X509_REQ *r = X509_REQ_new();
    char *out = NULL;
    int ok = r && X509_REQ_set_version(r, 0) == 1 && X509_REQ_set_pubkey(r, k) == 1;
    if (ok && common_name && common_name[0]) {
        ok = X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(r), "CN", MBSTRING_UTF8,
                                        (const unsigned char *)common_name, -1, -1, 0) == 1;
    }
    if (ok && uri_san && uri_san[0]) {
        char san[600];
        snprintf(san, sizeof san, "URI:%s", uri_san);
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
        int pushed = exts && e && sk_X509_EXTENSION_push(exts, e) > 0;
        if (!pushed) X509_EXTENSION_free(e);   // else exts owns it
        ok = pushed && X509_REQ_add_extensions(r, exts) == 1;
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    }
    ok = ok && X509_REQ_sign(r, k, EVP_sha256()) > 0;
    if (ok) {
        BIO *b = BIO_new(BIO_s_mem());
        if (b && PEM_write_bio_X509_REQ(b, r) == 1) out = bio_string(b);
        BIO_free(b);
    }
    if (!out) ca_err(err, errlen, "cannot make the certificate signing request");
    X509_REQ_free(r);
    EVP_PKEY_free(k);
    return out;
}

char *remora_ca_sign(const char *csr_pem, const char *ca_cert_pem, const char *ca_key_pem, const char *uri_san,
                     const char *common_name, int64_t not_before, int64_t not_after, char *err, size_t errlen) {
    ERR_clear_error();
    BIO *b = BIO_new_mem_buf(csr_pem, -1);
    X509_REQ *req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (!req) { ca_err(err, errlen, "not a PEM certificate signing request"); return NULL; }
    char *out = NULL;
    X509 *issuer = NULL, *x = NULL;
    EVP_PKEY *ca_key = NULL;
    EVP_PKEY *pub = X509_REQ_get0_pubkey(req);   // owned by req
    if (!pub) { ca_err(err, errlen, "the request has no public key"); goto done; }
    // Proof of possession: the request is signed by the key it carries.
    if (X509_REQ_verify(req, pub) != 1) { ca_err(err, errlen, "the request's signature does not verify"); goto done; }
    if (!is_p256(pub)) { ca_err(err, errlen, "the request's key must be ECDSA P-256"); goto done; }
    issuer = cert_from_pem(ca_cert_pem);
    ca_key = key_from_pem(ca_key_pem);
    if (!issuer || !ca_key) { ca_err(err, errlen, "cannot read the CA's certificate or key"); goto done; }
    x = X509_new();
    // The identity comes from the caller (the token), never from the request's subject or SANs.
    char san[600];
    snprintf(san, sizeof san, "critical,URI:%s", uri_san);
    X509_NAME *name = x ? X509_get_subject_name(x) : NULL;
    if (!x || X509_set_version(x, 2) != 1 || !set_serial(x) || !set_times(x, not_before, not_after)
        || (common_name && common_name[0]
            && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)common_name, -1, -1, 0) != 1)
        || X509_set_issuer_name(x, X509_get_subject_name(issuer)) != 1 || X509_set_pubkey(x, pub) != 1
        || !add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE")
        || !add_ext(x, issuer, NID_key_usage, "critical,digitalSignature")
        || !add_ext(x, issuer, NID_ext_key_usage, "serverAuth,clientAuth")
        || !add_ext(x, issuer, NID_subject_key_identifier, "hash")
        || !add_ext(x, issuer, NID_authority_key_identifier, "keyid:always")
        || !add_ext(x, issuer, NID_subject_alt_name, common_name && common_name[0] ? san + 9 : san)
        || X509_sign(x, ca_key, EVP_sha256()) == 0) {
        ca_err(err, errlen, "cannot sign the certificate");
        goto done;
    }
    out = cert_to_pem(x);
done:
    X509_free(x);
    X509_free(issuer);
    EVP_PKEY_free(ca_key);
    X509_REQ_free(req);
    return out;
}

int remora_ca_cert_times(const char *cert_pem, int64_t *not_before, int64_t *not_after) {
    X509 *x = cert_from_pem(cert_pem);
    ERR_clear_error();
    if (!x) return 0;
    struct tm tm;
    int ok = 1;
    if (ASN1_TIME_to_tm(X509_get0_notBefore(x), &tm) == 1) *not_before = (int64_t)timegm(&tm); else ok = 0;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1) *not_after = (int64_t)timegm(&tm); else ok = 0;
    X509_free(x);
    return ok;
}

int remora_ca_key_matches(const char *cert_pem, const char *key_pem) {
    X509 *x = cert_from_pem(cert_pem);
    EVP_PKEY *k = key_from_pem(key_pem);
    int ok = x && k && X509_check_private_key(x, k) == 1;
    X509_free(x);
    EVP_PKEY_free(k);
    ERR_clear_error();
    return ok;
}

int remora_ca_sha256_hex(const uint8_t *p, size_t len, char *hex65) {
    unsigned char md[32];
    unsigned int n = 0;
    hex65[0] = 0;
    if (EVP_Digest(p, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32) return 0;
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) { hex65[2 * i] = hex[md[i] >> 4]; hex65[2 * i + 1] = hex[md[i] & 15]; }
    hex65[64] = 0;
    return 1;
}

int remora_ca_random(uint8_t *p, size_t len) { return RAND_bytes(p, (int)len) == 1; }
