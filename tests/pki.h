/*
 * pki.h - certificates made by the tests themselves, with OpenSSL's API:
 * a CA, server and client certificates with haul's key usages and
 * principal SAN, the faulty ones a negative test needs, and CRLs. Keys
 * are EC P-256, fast to make.
 *
 * Every call returns 0 on success and -1 on failure; the files are PEM.
 */
#ifndef HAUL_TESTS_PKI_H
#define HAUL_TESTS_PKI_H

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

typedef struct pki_ca {
    EVP_PKEY *key;
    X509 *cert;
} pki_ca;

/* What a certificate says. Zero means the default. */
typedef struct pki_opts {
    const char *cn;
    long serial;
    /* Validity, in seconds from now. Default: -3600 .. +1 day. */
    long not_before, not_after;
    /* Extended key usage: "serverAuth", "clientAuth", or NULL for none. */
    const char *eku;
    /* The principal, written as the SAN URI haul:principal:NAME; NULL for
     * none. Extra SAN entries, OpenSSL's syntax ("DNS:localhost"). */
    const char *principal;
    const char *san_extra;
    /* Signed with its own key instead of the CA's. */
    int self_signed;
} pki_opts;

static inline int pki_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (ext == NULL)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static inline X509 *pki_build(EVP_PKEY *key, const pki_ca *ca, int is_ca, const pki_opts *o)
{
    X509 *x = X509_new();
    if (x == NULL)
        return NULL;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), o->serial ? o->serial : 1);
    X509_gmtime_adj(X509_getm_notBefore(x), o->not_before ? o->not_before : -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), o->not_after ? o->not_after : 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)o->cn, -1, -1, 0);
    int self = ca == NULL || o->self_signed;
    X509_set_issuer_name(x, self ? name : X509_get_subject_name(ca->cert));

    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, self ? x : ca->cert, x, NULL, NULL, 0);
    int rc = 0;
    if (is_ca) {
        rc |= pki_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE");
        rc |= pki_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        rc |= pki_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE");
        rc |= pki_ext(x, &ctx, NID_key_usage, "critical,digitalSignature");
        if (o->eku)
            rc |= pki_ext(x, &ctx, NID_ext_key_usage, o->eku);
        char san[600] = "";
        if (o->principal)
            snprintf(san, sizeof(san), "URI:haul:principal:%s", o->principal);
        if (o->san_extra)
            snprintf(san + strlen(san), sizeof(san) - strlen(san), "%s%s", san[0] ? "," : "",
                     o->san_extra);
        if (san[0])
            rc |= pki_ext(x, &ctx, NID_subject_alt_name, san);
    }
    rc |= pki_ext(x, &ctx, NID_subject_key_identifier, "hash");
    if (!self)
        rc |= pki_ext(x, &ctx, NID_authority_key_identifier, "keyid:always");
    if (rc != 0 || X509_sign(x, self ? key : ca->key, EVP_sha256()) == 0) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static inline int pki_write(const char *path, X509 *cert, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int ok =
        cert ? PEM_write_X509(f, cert) : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Makes a CA and writes its certificate to cert_path. */
static inline int pki_ca_new(pki_ca *ca, const char *cn, const char *cert_path)
{
    ca->key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (ca->key == NULL)
        return -1;
    pki_opts o = {.cn = cn, .serial = 1, .not_after = 10 * 86400};
    ca->cert = pki_build(ca->key, NULL, 1, &o);
    if (ca->cert == NULL)
        return -1;
    return pki_write(cert_path, ca->cert, NULL);
}

static inline void pki_ca_free(pki_ca *ca)
{
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
}

/* Issues a certificate (and its key) from ca and writes them. */
static inline int pki_issue(const pki_ca *ca, const pki_opts *o, const char *cert_path,
                            const char *key_path)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (key == NULL)
        return -1;
    X509 *x = pki_build(key, ca, 0, o);
    int rc = x ? 0 : -1;
    if (rc == 0)
        rc = pki_write(cert_path, x, NULL);
    if (rc == 0)
        rc = pki_write(key_path, NULL, key);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

/* Writes the CA's CRL, revoking the given serials. */
static inline int pki_crl(const pki_ca *ca, const long *serials, int n, const char *path)
{
    X509_CRL *crl = X509_CRL_new();
    if (crl == NULL)
        return -1;
    X509_CRL_set_version(crl, 1);
    X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->cert));
    ASN1_TIME *last = X509_gmtime_adj(NULL, -3600);
    ASN1_TIME *next = X509_gmtime_adj(NULL, 7 * 86400);
    X509_CRL_set1_lastUpdate(crl, last);
    X509_CRL_set1_nextUpdate(crl, next);
    for (int i = 0; i < n; i++) {
        X509_REVOKED *r = X509_REVOKED_new();
        ASN1_INTEGER *sn = ASN1_INTEGER_new();
        ASN1_INTEGER_set(sn, serials[i]);
        X509_REVOKED_set_serialNumber(r, sn);
        X509_REVOKED_set_revocationDate(r, last);
        X509_CRL_add0_revoked(crl, r);
        ASN1_INTEGER_free(sn);
    }
    X509_CRL_sort(crl);
    int ok = X509_CRL_sign(crl, ca->key, EVP_sha256()) > 0;
    FILE *f = ok ? fopen(path, "w") : NULL;
    ok = f != NULL && PEM_write_X509_CRL(f, crl);
    if (f && fclose(f) != 0)
        ok = 0;
    ASN1_TIME_free(last);
    ASN1_TIME_free(next);
    X509_CRL_free(crl);
    return ok ? 0 : -1;
}

#endif
