/*
 * cert.c - haul cert: a small certificate authority for haul's mutual TLS.
 *
 *   haul cert ca DIR [--days N] [--name CN] [--force]
 *   haul cert server DIR NAME [--ca DIR] [--days N] [--dns NAME]... [--ip ADDR]...
 *   haul cert client DIR PRINCIPAL [--ca DIR] [--days N]
 *   haul cert revoke DIR CERTFILE [--ca DIR]
 *   haul cert show CERTFILE
 *
 * Everything is done with OpenSSL's C API. Keys are EC P-256, written as
 * unencrypted PKCS#8 PEM with mode 0600 by a process that created the file
 * itself (O_EXCL), so that a key is never readable by others, not even for
 * a moment; certificates and the CRL are PEM with mode 0644.
 *
 * The transport takes a client's principal from one place only: a URI
 * subject alternative name "haul:principal:NAME". The subject's CN is a
 * label for people (a name longer than the 64 characters X.520 allows for
 * a CN is cut there and ends in "...").
 *
 * Every failure prints why (with OpenSSL's own error text when OpenSSL
 * failed) and exits with status 1; nothing is left half written.
 */
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "cli/cert.h"
#include "cli/client.h"

#define CA_DAYS 3650
#define LEAF_DAYS 825
#define CRL_DAYS 30
#define MAX_DAYS 36500
#define CN_MAX 64
#define MAX_SANS 64
#define PRINCIPAL_URI "haul:principal:"
/* A new certificate is valid from a few minutes in the past, so that a
 * peer whose clock lags a little does not find it "not yet valid". */
#define BACKDATE_SECONDS 300

static const char cert_help[] =
    "usage: haul cert SUBCOMMAND ...\n"
    "\n"
    "  haul cert ca DIR [--days N] [--name CN] [--force]\n"
    "      Creates a certificate authority: DIR/ca.key (EC P-256, mode 0600) and\n"
    "      DIR/ca.crt, self-signed (default: 3650 days, CN \"haul CA\"). Give ca.crt\n"
    "      to every server and client; keep ca.key secret.\n"
    "  haul cert server DIR NAME [--ca CADIR] [--days N] [--dns NAME]... [--ip ADDR]...\n"
    "      Issues DIR/NAME.key and DIR/NAME.crt, a TLS server certificate signed by\n"
    "      the CA in CADIR (default DIR), valid for the names given (default:\n"
    "      DNS:NAME, IP:127.0.0.1 and IP:::1) for N days (default 825).\n"
    "  haul cert client DIR PRINCIPAL [--ca CADIR] [--days N]\n"
    "      Issues DIR/PRINCIPAL.key and DIR/PRINCIPAL.crt, a TLS client certificate\n"
    "      that authenticates PRINCIPAL (its subject alternative name\n"
    "      URI:haul:principal:PRINCIPAL), for N days (default 825). PRINCIPAL is\n"
    "      1-255 of A-Z a-z 0-9 . _ -, not starting with '.'.\n"
    "  haul cert revoke DIR CERTFILE [--ca CADIR]\n"
    "      Adds CERTFILE's serial number to DIR/ca.crl, a CRL signed by the CA,\n"
    "      valid for 30 days (revoking again renews it).\n"
    "  haul cert show CERTFILE\n"
    "      Prints what a certificate grants: subject, issuer, serial, validity,\n"
    "      key usages, the principal, DNS and IP names, whether it is a CA.\n"
    "\n"
    "Options:\n"
    "      --ca DIR      the directory of ca.key and ca.crt (default: DIR)\n"
    "      --days N      validity in days, 1..36500\n"
    "      --name CN     the CA's common name (ca)\n"
    "      --dns NAME    a DNS name the server answers to (server; repeatable)\n"
    "      --ip ADDR     an IPv4 or IPv6 address of the server (server; repeatable)\n"
    "  -f, --force       replace existing key and certificate files\n"
    "  -h, --help        this help\n"
    "\n"
    "Exit status: 0 done, 1 bad command line or failure (the reason is printed).\n";

/* The options, as bits, so that each subcommand can say which apply. */
enum {
    OPT_CA = 1 << 0,
    OPT_DAYS = 1 << 1,
    OPT_NAME = 1 << 2,
    OPT_DNS = 1 << 3,
    OPT_IP = 1 << 4,
    OPT_FORCE = 1 << 5,
};

typedef struct cert_args {
    const char *ca_dir; /* --ca, or NULL for DIR */
    const char *name;   /* --name */
    int days;           /* --days, or 0 for the subcommand's default */
    int force;
    const char *dns[MAX_SANS];
    int ndns;
    const char *ip[MAX_SANS];
    int nip;
    unsigned given; /* OPT_ bits seen on the command line */
} cert_args;

/* ---- errors ---------------------------------------------------------------- */

/*
 * Prints "haul: cert: MESSAGE", followed by the text of every error that
 * OpenSSL queued (which empties its queue), and returns CLI_EXIT_USAGE.
 */
static __attribute__((format(printf, 1, 2))) int fail(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    char why[1024] = "";
    size_t len = 0;
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof(one));
        if (len < sizeof(why)) {
            int n = snprintf(why + len, sizeof(why) - len, "%s%s", len ? "; " : "", one);
            len += n > 0 ? (size_t)n : 0;
        }
    }
    if (why[0] != '\0')
        cli_warn("cert: %s (%s)", msg, why);
    else
        cli_warn("cert: %s", msg);
    return CLI_EXIT_USAGE;
}

/* ---- files ----------------------------------------------------------------- */

/* Formats DIR/NAME into out (PATH_MAX bytes); -1 when it does not fit. */
static int join_path(char *out, const char *dir, const char *name)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX) {
        fail("path too long: %s/%s", dir, name);
        return -1;
    }
    return 0;
}

/* Makes DIR (mode 0755) unless it is there. */
static int ensure_dir(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            fail("%s is not a directory", dir);
            return -1;
        }
        return 0;
    }
    if (errno != ENOENT || mkdir(dir, 0755) != 0) {
        fail("cannot create directory %s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* Fails unless path is absent, or force allows replacing it. Both files
 * of a pair are checked before either is written, so that a refusal
 * leaves everything as it was. */
static int check_absent(const char *path, int force)
{
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            fail("%s is a directory", path);
            return -1;
        }
        if (!force) {
            fail("%s exists; not overwriting it (--force replaces it)", path);
            return -1;
        }
        return 0;
    }
    if (errno != ENOENT) {
        fail("%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int pem_key(BIO *bio, void *obj)
{
    return PEM_write_bio_PrivateKey(bio, obj, NULL, NULL, 0, NULL, NULL);
}

static int pem_cert(BIO *bio, void *obj)
{
    return PEM_write_bio_X509(bio, obj);
}

static int pem_crl(BIO *bio, void *obj)
{
    return PEM_write_bio_X509_CRL(bio, obj);
}

/*
 * Writes obj as PEM into a new file at path with the given mode. The file
 * is created here (O_EXCL, never through a symbolic link) so that its mode
 * holds from the start; with replace an existing file is unlinked first.
 * The data reach the disk before this returns. On failure the file is
 * removed.
 */
static int write_pem(const char *path, mode_t mode, int replace, int (*write)(BIO *, void *),
                     void *obj)
{
    if (replace && unlink(path) != 0 && errno != ENOENT) {
        fail("cannot replace %s: %s", path, strerror(errno));
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) {
        fail("cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        int err = errno;
        close(fd);
        unlink(path);
        fail("cannot write %s: %s", path, strerror(err));
        return -1;
    }
    BIO *bio = BIO_new_fp(f, BIO_NOCLOSE);
    int ok = bio != NULL && write(bio, obj) == 1 && BIO_flush(bio) == 1;
    BIO_free(bio);
    int err = 0;
    if (ok && (fflush(f) != 0 || fsync(fd) != 0)) {
        err = errno;
        ok = 0;
    }
    if (fclose(f) != 0 && ok) {
        err = errno;
        ok = 0;
    }
    if (!ok) {
        unlink(path);
        fail("cannot write %s%s%s", path, err ? ": " : "", err ? strerror(err) : "");
        return -1;
    }
    return 0;
}

/* Opens path as a BIO, with the system's reason when it cannot be read. */
static BIO *open_bio(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fail("cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    BIO *bio = BIO_new_fp(f, BIO_CLOSE);
    if (bio == NULL) {
        fclose(f);
        fail("cannot read %s", path);
    }
    return bio;
}

/* Reads a certificate, PEM or else DER. */
static X509 *read_cert(const char *path)
{
    BIO *bio = open_bio(path);
    if (bio == NULL)
        return NULL;
    X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (x == NULL && BIO_reset(bio) == 0) {
        ERR_clear_error();
        x = d2i_X509_bio(bio, NULL);
    }
    BIO_free(bio);
    if (x == NULL)
        fail("%s holds no certificate (PEM or DER)", path);
    return x;
}

/* Refuses the passphrase prompt: haul's keys are not encrypted, and a
 * command that waits for a terminal would hang scripts. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    return -1;
}

static EVP_PKEY *read_key(const char *path)
{
    BIO *bio = open_bio(path);
    if (bio == NULL)
        return NULL;
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (key == NULL)
        fail("%s holds no unencrypted private key in PEM", path);
    return key;
}

/* ---- the CA ---------------------------------------------------------------- */

typedef struct ca {
    X509 *cert;
    EVP_PKEY *key;
    char dir[PATH_MAX];
} ca;

static void ca_free(ca *c)
{
    X509_free(c->cert);
    EVP_PKEY_free(c->key);
    c->cert = NULL;
    c->key = NULL;
}

/* Loads DIR/ca.crt and DIR/ca.key and checks that they make a usable CA. */
static int ca_load(ca *c, const char *dir)
{
    char crt_path[PATH_MAX], key_path[PATH_MAX];
    memset(c, 0, sizeof(*c));
    snprintf(c->dir, sizeof(c->dir), "%s", dir);
    if (join_path(crt_path, dir, "ca.crt") != 0 || join_path(key_path, dir, "ca.key") != 0)
        return -1;
    c->cert = read_cert(crt_path);
    if (c->cert == NULL)
        return -1;
    c->key = read_key(key_path);
    if (c->key == NULL)
        goto fail;
    if (X509_check_private_key(c->cert, c->key) != 1) {
        fail("%s is not the key of %s", key_path, crt_path);
        goto fail;
    }
    if (X509_check_ca(c->cert) == 0) {
        fail("%s is not a CA certificate", crt_path);
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(c->cert)) < 0) {
        fail("the CA certificate %s has expired", crt_path);
        goto fail;
    }
    struct stat st;
    if (stat(key_path, &st) == 0 && (st.st_mode & 077) != 0)
        cli_warn("cert: warning: %s can be read by others (mode %03o); chmod 600 it", key_path,
                 (unsigned)(st.st_mode & 0777));
    return 0;
fail:
    ca_free(c);
    return -1;
}

/* ---- building certificates ---------------------------------------------- */

/* A random positive 128-bit serial number: unique without any state, as
 * the CA/Browser Forum asks of serials (at least 64 random bits). */
static int set_random_serial(X509 *x)
{
    unsigned char bytes[16];
    BIGNUM *bn = NULL;
    ASN1_INTEGER *serial = NULL;
    int ok = 0;
    do {
        if (RAND_bytes(bytes, sizeof(bytes)) != 1)
            goto out;
        BN_free(bn);
        bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
        if (bn == NULL)
            goto out;
    } while (BN_is_zero(bn));
    serial = BN_to_ASN1_INTEGER(bn, NULL);
    ok = serial != NULL && X509_set_serialNumber(x, serial) == 1;
out:
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    return ok ? 0 : -1;
}

/* "2025-01-31 12:00:00 UTC" */
static void print_time(FILE *f, const ASN1_TIME *t)
{
    struct tm tm;
    char text[64];
    if (ASN1_TIME_to_tm(t, &tm) == 1 && strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S UTC", &tm))
        fputs(text, f);
    else
        fputs("?", f);
}

/* The CN for a name: the name itself, or its first 61 characters and
 * "..." when it is longer than X.520's 64. */
static void common_name(const char *name, char out[CN_MAX + 1])
{
    size_t len = strlen(name);
    if (len <= CN_MAX)
        memcpy(out, name, len + 1);
    else
        snprintf(out, CN_MAX + 1, "%.*s...", CN_MAX - 3, name);
}

/*
 * A new version 3 certificate for key with subject CN=cn, valid from now
 * (less BACKDATE_SECONDS) for days, with a random serial and issued by
 * issuer (NULL: by itself). It has no extensions yet and no signature.
 */
static X509 *new_cert(EVP_PKEY *key, const char *cn, int days, X509 *issuer)
{
    X509 *x = X509_new();
    X509_NAME *subject = X509_NAME_new();
    int ok = x != NULL && subject != NULL && X509_set_version(x, X509_VERSION_3) == 1 &&
             set_random_serial(x) == 0 &&
             X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                                        -1, 0) == 1 &&
             X509_set_subject_name(x, subject) == 1 &&
             X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : subject) == 1 &&
             X509_time_adj_ex(X509_getm_notBefore(x), 0, -BACKDATE_SECONDS, NULL) != NULL &&
             X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) != NULL &&
             X509_set_pubkey(x, key) == 1;
    X509_NAME_free(subject);
    if (!ok) {
        X509_free(x);
        fail("cannot build the certificate");
        return NULL;
    }
    /* A certificate cannot outlive the CA that vouches for it: a verifier
     * would reject the chain from the CA's end on anyway. */
    if (issuer && ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(issuer)) > 0) {
        fputs("haul: cert: note: the certificate is valid only until the CA's end, ", stderr);
        print_time(stderr, X509_get0_notAfter(issuer));
        fputc('\n', stderr);
        if (X509_set1_notAfter(x, X509_get0_notAfter(issuer)) != 1) {
            X509_free(x);
            fail("cannot build the certificate");
            return NULL;
        }
    }
    return x;
}

/* Adds an extension from its OpenSSL configuration text. */
static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    if (!ok)
        fail("cannot add the extension %s = %s", OBJ_nid2sn(nid), value);
    return ok ? 0 : -1;
}

/* Appends a DNS or URI name (both IA5 strings) to names. */
static int push_ia5(GENERAL_NAMES *names, int type, const char *value)
{
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *s = ASN1_IA5STRING_new();
    if (gn == NULL || s == NULL || ASN1_STRING_set(s, value, -1) != 1) {
        GENERAL_NAME_free(gn);
        ASN1_IA5STRING_free(s);
        return -1;
    }
    GENERAL_NAME_set0_value(gn, type, s);
    if (sk_GENERAL_NAME_push(names, gn) <= 0) {
        GENERAL_NAME_free(gn);
        return -1;
    }
    return 0;
}

static int push_ip(GENERAL_NAMES *names, const char *text)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(text);
    if (ip == NULL) {
        ERR_clear_error();
        fail("--ip %s: not an IPv4 or IPv6 address", text);
        return -1;
    }
    GENERAL_NAME *gn = GENERAL_NAME_new();
    if (gn == NULL) {
        ASN1_OCTET_STRING_free(ip);
        fail("out of memory");
        return -1;
    }
    GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
    if (sk_GENERAL_NAME_push(names, gn) <= 0) {
        GENERAL_NAME_free(gn);
        fail("out of memory");
        return -1;
    }
    return 0;
}

/* Adds the subject alternative names: the URI (if any), the DNS names,
 * then the IP addresses. They are built as structures rather than as
 * configuration text, so that no character of a name can be taken for
 * the syntax of that text. */
static int add_san(X509 *x, const char *uri, const char *const *dns, int ndns,
                   const char *const *ip, int nip)
{
    GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
    int ok = names != NULL;
    if (ok && uri != NULL && push_ia5(names, GEN_URI, uri) != 0)
        ok = 0;
    for (int i = 0; ok && i < ndns; i++)
        if (push_ia5(names, GEN_DNS, dns[i]) != 0)
            ok = 0;
    for (int i = 0; ok && i < nip; i++)
        if (push_ip(names, ip[i]) != 0) {
            GENERAL_NAMES_free(names);
            return -1;
        }
    if (ok && X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT) != 1)
        ok = 0;
    GENERAL_NAMES_free(names);
    if (!ok)
        fail("cannot add the subject alternative names");
    return ok ? 0 : -1;
}

static int sign(X509 *x, EVP_PKEY *key)
{
    if (X509_sign(x, key, EVP_sha256()) <= 0) {
        fail("cannot sign the certificate");
        return -1;
    }
    return 0;
}

static EVP_PKEY *new_key(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    if (key == NULL)
        fail("cannot generate an EC P-256 key");
    return key;
}

/*
 * Writes DIR/BASE.key and DIR/BASE.crt. Both names were checked before
 * (check_absent); if the certificate cannot be written, the key goes too.
 */
static int write_pair(const char *key_path, EVP_PKEY *key, const char *crt_path, X509 *x, int force)
{
    if (write_pem(key_path, 0600, force, pem_key, key) != 0)
        return -1;
    if (write_pem(crt_path, 0644, force, pem_cert, x) != 0) {
        unlink(key_path);
        return -1;
    }
    return 0;
}

/* Whether text is a DNS name a certificate may carry: labels of letters,
 * digits, '-' and '_' separated by dots, the first one possibly "*". */
static int dns_name_ok(const char *text)
{
    size_t len = strlen(text), label = 0;
    if (len == 0 || len > 253)
        return 0;
    const char *p = text;
    if (p[0] == '*' && p[1] == '.')
        p += 2;
    for (; *p; p++) {
        if (*p == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                   (*p >= '0' && *p <= '9') || *p == '-' || *p == '_') {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label > 0;
}

/* ---- the subcommands ---------------------------------------------------- */

static int cert_ca(const cert_args *a, char **argv)
{
    const char *dir = argv[0];
    const char *name = a->name ? a->name : "haul CA";
    int days = a->days ? a->days : CA_DAYS;
    size_t name_len = strlen(name);
    if (name_len == 0 || name_len > CN_MAX)
        return fail("--name: expected 1 to %d characters", CN_MAX);

    char key_path[PATH_MAX], crt_path[PATH_MAX];
    if (ensure_dir(dir) != 0 || join_path(key_path, dir, "ca.key") != 0 ||
        join_path(crt_path, dir, "ca.crt") != 0 || check_absent(key_path, a->force) != 0 ||
        check_absent(crt_path, a->force) != 0)
        return CLI_EXIT_USAGE;

    int status = CLI_EXIT_USAGE;
    X509 *x = NULL;
    EVP_PKEY *key = new_key();
    if (key == NULL)
        goto out;
    x = new_cert(key, name, days, NULL);
    if (x == NULL)
        goto out;
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE") != 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") != 0 || sign(x, key) != 0 ||
        write_pair(key_path, key, crt_path, x, a->force) != 0)
        goto out;
    printf("%s: the CA's private key: keep it secret, keep it safe\n"
           "%s: the CA's certificate (CN=%s, %d days): give it to servers and clients\n",
           key_path, crt_path, name, days);
    status = CLI_EXIT_OK;
out:
    X509_free(x);
    EVP_PKEY_free(key);
    return status;
}

/*
 * server and client: a leaf certificate for NAME in DIR, signed by the CA.
 * The two differ in their extended key usage and their names.
 */
static int issue_leaf(const cert_args *a, const char *dir, const char *name, int server)
{
    if (!hsp_name_ok(name, strlen(name), HSP_NAME_MAX))
        return fail("bad %s name '%s' (1-255 of A-Z a-z 0-9 . _ -, not starting with '.')",
                    server ? "server" : "principal", name);
    /* The files are NAME.key and NAME.crt, so the longest names that a
     * principal may have do not fit in a file name. */
    if (strlen(name) + strlen(".key") > NAME_MAX)
        return fail("'%.20s...' is too long to name the files NAME.key and NAME.crt (at most "
                    "%zu characters)",
                    name, (size_t)NAME_MAX - strlen(".key"));
    const char *ca_dir = a->ca_dir ? a->ca_dir : dir;
    int days = a->days ? a->days : LEAF_DAYS;

    const char *dns[MAX_SANS + 1], *ip[MAX_SANS];
    int ndns = 0, nip = 0;
    if (server) {
        for (int i = 0; i < a->ndns; i++) {
            if (!dns_name_ok(a->dns[i]))
                return fail("--dns %s: not a DNS name", a->dns[i]);
            dns[ndns++] = a->dns[i];
        }
        for (int i = 0; i < a->nip; i++)
            ip[nip++] = a->ip[i];
        if (ndns == 0 && nip == 0) {
            /* What a server on this machine is reached by, unless told. */
            if (dns_name_ok(name))
                dns[ndns++] = name;
            ip[nip++] = "127.0.0.1";
            ip[nip++] = "::1";
        }
    }

    ca c;
    if (ca_load(&c, ca_dir) != 0)
        return CLI_EXIT_USAGE;

    char key_path[PATH_MAX], crt_path[PATH_MAX], base[PATH_MAX];
    int status = CLI_EXIT_USAGE;
    X509 *x = NULL;
    EVP_PKEY *key = NULL;
    snprintf(base, sizeof(base), "%s.key", name);
    if (join_path(key_path, dir, base) != 0)
        goto out;
    snprintf(base, sizeof(base), "%s.crt", name);
    if (join_path(crt_path, dir, base) != 0 || ensure_dir(dir) != 0)
        goto out;
    /* "ca" in the CA's own directory would name the CA's files, and
     * --force would then destroy the CA. */
    struct stat d1, d2;
    if (strcmp(name, "ca") == 0 && stat(dir, &d1) == 0 && stat(ca_dir, &d2) == 0 &&
        d1.st_dev == d2.st_dev && d1.st_ino == d2.st_ino) {
        fail("'ca' would replace the CA's own files in %s", dir);
        goto out;
    }
    if (check_absent(key_path, a->force) != 0 || check_absent(crt_path, a->force) != 0)
        goto out;

    char cn[CN_MAX + 1], uri[sizeof(PRINCIPAL_URI) + HSP_NAME_MAX];
    common_name(name, cn);
    snprintf(uri, sizeof(uri), "%s%s", PRINCIPAL_URI, name);
    key = new_key();
    if (key == NULL)
        goto out;
    x = new_cert(key, cn, days, c.cert);
    if (x == NULL)
        goto out;
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, c.cert, x, NULL, NULL, 0);
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(x, &ctx, NID_ext_key_usage, server ? "serverAuth" : "clientAuth") != 0 ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") != 0 ||
        add_san(x, server ? NULL : uri, dns, ndns, ip, nip) != 0 || sign(x, c.key) != 0 ||
        write_pair(key_path, key, crt_path, x, a->force) != 0)
        goto out;
    printf("%s: the private key (mode 0600)\n", key_path);
    if (server) {
        printf("%s: a server certificate for", crt_path);
        for (int i = 0; i < ndns; i++)
            printf(" DNS:%s", dns[i]);
        for (int i = 0; i < nip; i++)
            printf(" IP:%s", ip[i]);
        printf(" (%d days)\n", days);
    } else {
        printf("%s: a client certificate of principal %s (%d days)\n", crt_path, name, days);
    }
    status = CLI_EXIT_OK;
out:
    X509_free(x);
    EVP_PKEY_free(key);
    ca_free(&c);
    return status;
}

static int cert_server(const cert_args *a, char **argv)
{
    return issue_leaf(a, argv[0], argv[1], 1);
}

static int cert_client(const cert_args *a, char **argv)
{
    return issue_leaf(a, argv[0], argv[1], 0);
}

/* Prints a certificate's serial number in hex, as openssl does. */
static void print_serial(FILE *f, const ASN1_INTEGER *serial)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(serial, NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    fputs(hex ? hex : "?", f);
    OPENSSL_free(hex);
    BN_free(bn);
}

/* The CRL's number plus one, or 1 for a first CRL. */
static ASN1_INTEGER *next_crl_number(const X509_CRL *old)
{
    ASN1_INTEGER *prev = old ? X509_CRL_get_ext_d2i(old, NID_crl_number, NULL, NULL) : NULL;
    BIGNUM *bn = prev ? ASN1_INTEGER_to_BN(prev, NULL) : BN_new();
    ASN1_INTEGER *next = NULL;
    if (bn != NULL && BN_add_word(bn, 1) == 1)
        next = BN_to_ASN1_INTEGER(bn, NULL);
    BN_free(bn);
    ASN1_INTEGER_free(prev);
    return next;
}

/*
 * revoke: a new CRL with every entry of the old one (if any) and the
 * certificate's serial, signed by the CA and valid for CRL_DAYS. It
 * replaces DIR/ca.crl by a rename, so a reader sees the old list or the
 * new one, never a part.
 */
static int cert_revoke(const cert_args *a, char **argv)
{
    const char *dir = argv[0], *cert_path = argv[1];
    const char *ca_dir = a->ca_dir ? a->ca_dir : dir;
    char crl_path[PATH_MAX], tmp_path[PATH_MAX];
    if (join_path(crl_path, dir, "ca.crl") != 0 || join_path(tmp_path, dir, ".ca.crl.new") != 0)
        return CLI_EXIT_USAGE;

    ca c;
    if (ca_load(&c, ca_dir) != 0)
        return CLI_EXIT_USAGE;
    int status = CLI_EXIT_USAGE;
    X509_CRL *old = NULL, *crl = NULL;
    X509_REVOKED *entry = NULL;
    ASN1_TIME *now = NULL, *next = NULL;
    ASN1_INTEGER *number = NULL;
    X509 *x = read_cert(cert_path);
    if (x == NULL)
        goto out;
    EVP_PKEY *ca_pub = X509_get0_pubkey(c.cert);
    if (X509_check_issued(c.cert, x) != X509_V_OK || X509_verify(x, ca_pub) != 1) {
        ERR_clear_error();
        fail("%s was not issued by the CA in %s", cert_path, ca_dir);
        goto out;
    }
    /* Not const: X509_REVOKED_set_serialNumber takes it so, though it copies. */
    ASN1_INTEGER *serial = X509_get_serialNumber(x);

    struct stat st;
    if (stat(crl_path, &st) == 0) {
        BIO *bio = open_bio(crl_path);
        if (bio == NULL)
            goto out;
        old = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
        BIO_free(bio);
        if (old == NULL) {
            fail("%s holds no CRL in PEM", crl_path);
            goto out;
        }
        if (X509_CRL_verify(old, ca_pub) != 1) {
            fail("%s is not signed by the CA in %s", crl_path, ca_dir);
            goto out;
        }
    } else if (errno != ENOENT) {
        fail("%s: %s", crl_path, strerror(errno));
        goto out;
    }

    X509_REVOKED *found = NULL;
    if (old != NULL && X509_CRL_get0_by_serial(old, &found, serial) == 1) {
        /* Nothing to add; the list is signed again all the same, so that
         * revoking is also the way to renew a CRL near its next update. */
        printf("%s: serial ", cert_path);
        print_serial(stdout, serial);
        printf(" was revoked already\n");
    }

    now = X509_time_adj_ex(NULL, 0, 0, NULL);
    next = X509_time_adj_ex(NULL, CRL_DAYS, 0, NULL);
    number = next_crl_number(old);
    crl = X509_CRL_new();
    if (now == NULL || next == NULL || number == NULL || crl == NULL ||
        X509_CRL_set_version(crl, X509_CRL_VERSION_2) != 1 ||
        X509_CRL_set_issuer_name(crl, X509_get_subject_name(c.cert)) != 1 ||
        X509_CRL_set1_lastUpdate(crl, now) != 1 || X509_CRL_set1_nextUpdate(crl, next) != 1) {
        fail("cannot build the CRL");
        goto out;
    }
    STACK_OF(X509_REVOKED) *entries = old ? X509_CRL_get_REVOKED(old) : NULL;
    for (int i = 0; i < sk_X509_REVOKED_num(entries); i++) {
        X509_REVOKED *copy = X509_REVOKED_dup(sk_X509_REVOKED_value(entries, i));
        if (copy == NULL || X509_CRL_add0_revoked(crl, copy) != 1) {
            X509_REVOKED_free(copy);
            fail("cannot build the CRL");
            goto out;
        }
    }
    if (found == NULL) {
        entry = X509_REVOKED_new();
        if (entry == NULL || X509_REVOKED_set_serialNumber(entry, serial) != 1 ||
            X509_REVOKED_set_revocationDate(entry, now) != 1 ||
            X509_CRL_add0_revoked(crl, entry) != 1) {
            fail("cannot build the CRL");
            goto out;
        }
        entry = NULL; /* the CRL owns it */
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, c.cert, NULL, NULL, crl, 0);
    X509_EXTENSION *aki = X509V3_EXT_conf_nid(NULL, &ctx, NID_authority_key_identifier, "keyid");
    int ok = aki != NULL && X509_CRL_add_ext(crl, aki, -1) == 1;
    X509_EXTENSION_free(aki);
    if (!ok || X509_CRL_add1_ext_i2d(crl, NID_crl_number, number, 0, 0) != 1 ||
        X509_CRL_sort(crl) != 1 || X509_CRL_sign(crl, c.key, EVP_sha256()) <= 0) {
        fail("cannot build the CRL");
        goto out;
    }
    if (write_pem(tmp_path, 0644, 1, pem_crl, crl) != 0)
        goto out;
    if (rename(tmp_path, crl_path) != 0) {
        int err = errno;
        unlink(tmp_path);
        fail("cannot replace %s: %s", crl_path, strerror(err));
        goto out;
    }
    if (found == NULL) {
        printf("%s: revoked serial ", cert_path);
        print_serial(stdout, serial);
        printf("\n");
    }
    printf("%s: %d revoked certificate%s, next update in %d days\n", crl_path,
           sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)),
           sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)) == 1 ? "" : "s", CRL_DAYS);
    status = CLI_EXIT_OK;
out:
    X509_REVOKED_free(entry);
    X509_CRL_free(crl);
    X509_CRL_free(old);
    ASN1_INTEGER_free(number);
    ASN1_TIME_free(now);
    ASN1_TIME_free(next);
    X509_free(x);
    ca_free(&c);
    return status;
}

static void print_name(FILE *f, const X509_NAME *name)
{
    BIO *bio = BIO_new_fp(f, BIO_NOCLOSE);
    if (bio == NULL || X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) < 0)
        fputs("?", f);
    BIO_free(bio);
}

/* Prints the names of the bits of mask that are set in bits. */
static void print_bits(FILE *f, uint32_t bits, const uint32_t *mask, const char *const *names,
                       size_t n)
{
    int any = 0;
    for (size_t i = 0; i < n; i++)
        if (bits & mask[i]) {
            fprintf(f, "%s%s", any ? ", " : "", names[i]);
            any = 1;
        }
    if (!any)
        fputs("(none)", f);
}

static int cert_show(const cert_args *a, char **argv)
{
    X509 *x = read_cert(argv[0]);
    if (x == NULL)
        return CLI_EXIT_USAGE;

    printf("subject:     ");
    print_name(stdout, X509_get_subject_name(x));
    printf("\nissuer:      ");
    print_name(stdout, X509_get_issuer_name(x));
    printf("%s\nserial:      ", X509_check_issued(x, x) == X509_V_OK ? " (self-issued)" : "");
    print_serial(stdout, X509_get0_serialNumber(x));
    printf("\nnot before:  ");
    print_time(stdout, X509_get0_notBefore(x));
    printf("\nnot after:   ");
    print_time(stdout, X509_get0_notAfter(x));
    const char *validity = "valid now";
    if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
        validity = "NOT YET VALID";
    else if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        validity = "EXPIRED";
    printf("\nvalidity:    %s\n", validity);

    /* X509_check_ca caches the extensions first, which the key usage
     * getters below rely on. */
    int is_ca = X509_check_ca(x);
    printf("CA:          %s\n", is_ca ? "yes: it can issue certificates" : "no");

    static const uint32_t ku_bits[] = {
        KU_DIGITAL_SIGNATURE, KU_NON_REPUDIATION, KU_KEY_ENCIPHERMENT,
        KU_DATA_ENCIPHERMENT, KU_KEY_AGREEMENT,   KU_KEY_CERT_SIGN,
        KU_CRL_SIGN,          KU_ENCIPHER_ONLY,   KU_DECIPHER_ONLY};
    static const char *const ku_names[] = {"digitalSignature", "nonRepudiation", "keyEncipherment",
                                           "dataEncipherment", "keyAgreement",   "keyCertSign",
                                           "cRLSign",          "encipherOnly",   "decipherOnly"};
    static const uint32_t eku_bits[] = {XKU_SSL_SERVER, XKU_SSL_CLIENT, XKU_SMIME, XKU_CODE_SIGN,
                                        XKU_OCSP_SIGN,  XKU_TIMESTAMP,  XKU_DVCS,  XKU_ANYEKU};
    static const char *const eku_names[] = {"serverAuth",  "clientAuth",         "emailProtection",
                                            "codeSigning", "OCSPSigning",        "timeStamping",
                                            "DVCS",        "anyExtendedKeyUsage"};
    uint32_t ku = X509_get_key_usage(x);
    printf("key usage:   ");
    if (ku == UINT32_MAX)
        printf("(no extension: any)");
    else
        print_bits(stdout, ku, ku_bits, ku_names, sizeof(ku_bits) / sizeof(ku_bits[0]));
    printf("\next. usage:  ");
    if (!(X509_get_extension_flags(x) & EXFLAG_XKUSAGE))
        printf("(no extension: any)");
    else
        print_bits(stdout, X509_get_extended_key_usage(x), eku_bits, eku_names,
                   sizeof(eku_bits) / sizeof(eku_bits[0]));
    printf("\nTLS server:  %s\n",
           X509_check_purpose(x, X509_PURPOSE_SSL_SERVER, 0) == 1 ? "yes" : "no");
    printf("TLS client:  %s\n",
           X509_check_purpose(x, X509_PURPOSE_SSL_CLIENT, 0) == 1 ? "yes" : "no");

    /* The names. The principal counts only in the one form the transport
     * reads; a certificate with two would be ambiguous, and is shown so. */
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int nprincipal = 0;
    const size_t prefix = strlen(PRINCIPAL_URI);
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const char *uri = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        size_t len = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        if (len > prefix && strncmp(uri, PRINCIPAL_URI, prefix) == 0)
            nprincipal++;
    }
    printf("principal:   ");
    if (nprincipal == 0)
        printf("none");
    else if (nprincipal > 1)
        printf("AMBIGUOUS (%d haul:principal names):", nprincipal);
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const char *uri = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        size_t len = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        if (len <= prefix || strncmp(uri, PRINCIPAL_URI, prefix) != 0)
            continue;
        if (nprincipal > 1)
            putchar(' ');
        cli_put_path(stdout, uri + prefix, len - prefix);
        if (!hsp_name_ok(uri + prefix, len - prefix, HSP_NAME_MAX))
            printf(" (NOT A VALID PRINCIPAL NAME)");
    }
    putchar('\n');
    static const struct {
        int type;
        const char *label;
    } kinds[] = {{GEN_DNS, "DNS:         "}, {GEN_IPADD, "IP:          "}};
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        int any = 0;
        for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
            const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
            if (gn->type != kinds[k].type)
                continue;
            fputs(any ? ", " : kinds[k].label, stdout);
            any = 1;
            if (gn->type == GEN_DNS) {
                cli_put_path(stdout, (const char *)ASN1_STRING_get0_data(gn->d.dNSName),
                             (size_t)ASN1_STRING_length(gn->d.dNSName));
            } else {
                char text[INET6_ADDRSTRLEN];
                int len = ASN1_STRING_length(gn->d.iPAddress);
                int family = len == 4 ? AF_INET : len == 16 ? AF_INET6 : AF_UNSPEC;
                if (family == AF_UNSPEC || inet_ntop(family, ASN1_STRING_get0_data(gn->d.iPAddress),
                                                     text, sizeof(text)) == NULL)
                    snprintf(text, sizeof(text), "(%d bytes?)", len);
                fputs(text, stdout);
            }
        }
        if (any)
            putchar('\n');
    }
    GENERAL_NAMES_free(names);
    X509_free(x);
    return CLI_EXIT_OK;
}

/* ---- the command line ----------------------------------------------------- */

static const struct subcommand {
    const char *name;
    int (*run)(const cert_args *a, char **argv);
    int nargs;
    unsigned options;
    const char *synopsis;
} subcommands[] = {
    {"ca", cert_ca, 1, OPT_DAYS | OPT_NAME | OPT_FORCE, "ca DIR [--days N] [--name CN] [--force]"},
    {"server", cert_server, 2, OPT_CA | OPT_DAYS | OPT_DNS | OPT_IP | OPT_FORCE,
     "server DIR NAME [--ca DIR] [--days N] [--dns NAME]... [--ip ADDR]... [--force]"},
    {"client", cert_client, 2, OPT_CA | OPT_DAYS | OPT_FORCE,
     "client DIR PRINCIPAL [--ca DIR] [--days N] [--force]"},
    {"revoke", cert_revoke, 2, OPT_CA, "revoke DIR CERTFILE [--ca DIR]"},
    {"show", cert_show, 1, 0, "show CERTFILE"},
};
#define NSUBCOMMANDS (sizeof(subcommands) / sizeof(subcommands[0]))

static const char *option_name(unsigned bit)
{
    switch (bit) {
    case OPT_CA:
        return "--ca";
    case OPT_DAYS:
        return "--days";
    case OPT_NAME:
        return "--name";
    case OPT_DNS:
        return "--dns";
    case OPT_IP:
        return "--ip";
    default:
        return "--force";
    }
}

int cli_cert(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        fputs(cert_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    const struct subcommand *sub = NULL;
    for (size_t i = 0; i < NSUBCOMMANDS; i++)
        if (strcmp(argv[1], subcommands[i].name) == 0)
            sub = &subcommands[i];
    if (sub == NULL) {
        cli_warn("cert: unknown subcommand '%s'", argv[1]);
        fprintf(stderr, "Try 'haul cert --help'.\n");
        return CLI_EXIT_USAGE;
    }

    static const struct option longopts[] = {
        {"ca", required_argument, NULL, 'c'},   {"days", required_argument, NULL, 'd'},
        {"name", required_argument, NULL, 'n'}, {"dns", required_argument, NULL, 'D'},
        {"ip", required_argument, NULL, 'I'},   {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    cert_args a = {0};
    int sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    optind = 0; /* a fresh scan, whatever parsed before */
    opterr = 0; /* the messages below name the subcommand */
    int ch;
    while ((ch = getopt_long(sub_argc, sub_argv, ":fh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            a.ca_dir = optarg;
            a.given |= OPT_CA;
            break;
        case 'd': {
            char *end;
            errno = 0;
            long n = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || errno != 0 || n < 1 || n > MAX_DAYS) {
                cli_warn("cert: --days: expected a number of days, 1..%d", MAX_DAYS);
                return CLI_EXIT_USAGE;
            }
            a.days = (int)n;
            a.given |= OPT_DAYS;
            break;
        }
        case 'n':
            a.name = optarg;
            a.given |= OPT_NAME;
            break;
        case 'D':
        case 'I':
            if ((ch == 'D' ? a.ndns : a.nip) >= MAX_SANS) {
                cli_warn("cert: at most %d --dns and %d --ip", MAX_SANS, MAX_SANS);
                return CLI_EXIT_USAGE;
            }
            if (ch == 'D')
                a.dns[a.ndns++] = optarg;
            else
                a.ip[a.nip++] = optarg;
            a.given |= ch == 'D' ? OPT_DNS : OPT_IP;
            break;
        case 'f':
            a.force = 1;
            a.given |= OPT_FORCE;
            break;
        case 'h':
            fputs(cert_help, stdout);
            return CLI_EXIT_OK;
        case ':':
            cli_warn("cert %s: %s needs a value", sub->name, sub_argv[optind - 1]);
            return CLI_EXIT_USAGE;
        default:
            cli_warn("cert %s: unknown option '%s'", sub->name, sub_argv[optind - 1]);
            fprintf(stderr, "Try 'haul cert --help'.\n");
            return CLI_EXIT_USAGE;
        }
    }
    unsigned stray = a.given & ~sub->options;
    if (stray != 0) {
        cli_warn("cert %s: %s does not apply here", sub->name, option_name(stray & -stray));
        return CLI_EXIT_USAGE;
    }
    if (sub_argc - optind != sub->nargs) {
        fprintf(stderr, "usage: haul cert %s\nTry 'haul cert --help'.\n", sub->synopsis);
        return CLI_EXIT_USAGE;
    }
    int status = sub->run(&a, sub_argv + optind);
    if (fflush(stdout) != 0 && status == CLI_EXIT_OK) {
        cli_warn("cert: cannot write the output: %s", strerror(errno));
        status = CLI_EXIT_USAGE;
    }
    return status;
}

int cli_cert_principal(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(out, size, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    X509 *cert = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ERR_clear_error();
    if (cert == NULL) {
        snprintf(out, size, "%s is not a PEM certificate", path);
        return -1;
    }
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    const size_t prefix = strlen(PRINCIPAL_URI);
    int found = 0;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const char *uri = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        size_t len = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        if (len <= prefix || strncmp(uri, PRINCIPAL_URI, prefix) != 0)
            continue;
        if (len - prefix >= size || memchr(uri, '\0', len) != NULL) {
            found = -1;
            break;
        }
        found++;
        memcpy(out, uri + prefix, len - prefix);
        out[len - prefix] = '\0';
    }
    GENERAL_NAMES_free(names);
    X509_free(cert);
    if (found != 1) {
        snprintf(out, size, "%s names %s", path,
                 found == 0 ? "no principal (URI:haul:principal:NAME); is it a client certificate "
                              "of `haul cert client`?"
                            : "more than one principal, or a malformed one");
        return -1;
    }
    return 0;
}
