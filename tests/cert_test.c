/*
 * cert_test.c - haul cert, run as a real process, its output checked with
 * OpenSSL's API: a CA, server and client certificates with the key usages
 * and names the transport relies on, refusals (existing files, bad
 * principal names), what show prints, and a CRL after revoke.
 *
 * haul is found beside the test program: this runs as BUILD/tests/cert_test
 * and haul is BUILD/haul. Each test works in a temporary directory of its
 * own, removed when the test ends (HAUL_CERT_KEEP=1 keeps it).
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "harness.h"

#define MAX_ARGS 16

static char haul_path[PATH_MAX];
static char dir[PATH_MAX]; /* the test's temporary directory */
static char out[16384];    /* what the last command printed, stdout and stderr */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

static void remove_dir(void)
{
    const char *keep = getenv("HAUL_CERT_KEEP");
    if (dir[0] == '\0')
        return;
    if (keep && strcmp(keep, "1") == 0)
        fprintf(stderr, "  (kept %s)\n", dir);
    else
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Finds BUILD/haul beside BUILD/tests/cert_test and makes the directory. */
static void setup(void)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    CHECK(n > 0);
    self[n] = '\0';
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(self, '/');
        CHECK(slash != NULL);
        *slash = '\0';
    }
    CHECK(snprintf(haul_path, sizeof(haul_path), "%s/haul", self) < (int)sizeof(haul_path));
    if (access(haul_path, X_OK) != 0)
        SKIP("%s is not built", haul_path);
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(dir, sizeof(dir), "%s/haul-cert-XXXXXX", tmp);
    CHECK(mkdtemp(dir) != NULL);
    atexit(remove_dir);
    /* The modes haul asks for are the modes the files get. */
    umask(022);
}

/* dir/name, in a static buffer of four that rotate. */
static const char *in_dir(const char *name)
{
    static char paths[4][PATH_MAX];
    static int next;
    char *p = paths[next++ % 4];
    CHECK(snprintf(p, PATH_MAX, "%s/%s", dir, name) < PATH_MAX);
    return p;
}

/*
 * Runs haul with the arguments (up to a NULL) and checks that it exits
 * with status `expect`; what it printed is in out. On a mismatch the
 * output is shown.
 */
static void haul_expect(int expect, const char *arg, ...)
{
    const char *argv[MAX_ARGS + 2] = {haul_path};
    int argc = 1;
    va_list ap;
    va_start(ap, arg);
    for (const char *a = arg; a != NULL; a = va_arg(ap, const char *)) {
        CHECK(argc < MAX_ARGS);
        argv[argc++] = a;
    }
    va_end(ap);
    argv[argc] = NULL;

    int fds[2];
    CHECK(pipe(fds) == 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv(haul_path, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t n;
    char sink[4096];
    while ((n = read(fds[0], len + 1 < sizeof(out) ? out + len : sink,
                     len + 1 < sizeof(out) ? sizeof(out) - 1 - len : sizeof(sink))) > 0)
        if (len + 1 < sizeof(out))
            len += (size_t)n;
    out[len] = '\0';
    close(fds[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != expect) {
        fprintf(stderr, "haul");
        for (int i = 1; i < argc; i++)
            fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, "\n%s", out);
    }
    CHECK_EQ(code, expect);
}

static X509 *load_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    CHECK(x != NULL);
    return x;
}

static X509_CRL *load_crl(const char *path)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    X509_CRL *crl = PEM_read_X509_CRL(f, NULL, NULL, NULL);
    fclose(f);
    CHECK(crl != NULL);
    return crl;
}

static unsigned file_mode(const char *path)
{
    struct stat st;
    CHECK(lstat(path, &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    return st.st_mode & 07777;
}

/* Reads a small file into a static buffer of two that alternate. */
static const char *slurp(const char *path)
{
    static char bufs[2][8192];
    static int next;
    char *buf = bufs[next++ % 2];
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    size_t n = fread(buf, 1, sizeof(bufs[0]) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* Verifies x against the CA certificate (and CRL, if not NULL) for a TLS
 * purpose; returns 1 or the verification error as a negative number. */
static int verify(X509 *ca, X509_CRL *crl, X509 *x, int purpose)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    CHECK(store != NULL && ctx != NULL);
    CHECK(X509_STORE_add_cert(store, ca) == 1);
    if (crl != NULL) {
        CHECK(X509_STORE_add_crl(store, crl) == 1);
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    CHECK(X509_STORE_CTX_init(ctx, store, x, NULL) == 1);
    CHECK(X509_STORE_CTX_set_purpose(ctx, purpose) == 1);
    int ok = X509_verify_cert(ctx);
    int result = ok == 1 ? 1 : -X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    ERR_clear_error();
    return result;
}

/* The URI names of x's subject alternative names; returns how many there
 * are of any kind, the first URI into uri. */
static int san_uris(X509 *x, char *uri, size_t size, int *nuri)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int total = sk_GENERAL_NAME_num(names);
    *nuri = 0;
    uri[0] = '\0';
    for (int i = 0; i < total; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        if ((*nuri)++ == 0)
            snprintf(uri, size, "%.*s", ASN1_STRING_length(gn->d.uniformResourceIdentifier),
                     (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier));
    }
    GENERAL_NAMES_free(names);
    return total < 0 ? 0 : total;
}

static int ext_critical(X509 *x, int nid)
{
    int at = X509_get_ext_by_NID(x, nid, -1);
    CHECK(at >= 0);
    return X509_EXTENSION_get_critical(X509_get_ext(x, at));
}

/* A CA, a server "srv" and a client "alice", all in dir. */
static void make_pki(void)
{
    haul_expect(0, "cert", "ca", dir, NULL);
    haul_expect(0, "cert", "server", dir, "srv", NULL);
    haul_expect(0, "cert", "client", dir, "alice", NULL);
}

TEST_TIMEOUT(ca_server_client, 20)
{
    setup();
    make_pki();
    CHECK_EQ(file_mode(in_dir("ca.key")), 0600);
    CHECK_EQ(file_mode(in_dir("ca.crt")), 0644);
    CHECK_EQ(file_mode(in_dir("srv.key")), 0600);
    CHECK_EQ(file_mode(in_dir("srv.crt")), 0644);
    CHECK_EQ(file_mode(in_dir("alice.key")), 0600);
    CHECK_EQ(file_mode(in_dir("alice.crt")), 0644);

    X509 *ca = load_cert(in_dir("ca.crt"));
    X509 *srv = load_cert(in_dir("srv.crt"));
    X509 *alice = load_cert(in_dir("alice.crt"));

    /* The CA: critical CA:TRUE, signs certificates and CRLs, self-signed. */
    CHECK_EQ(X509_check_ca(ca), 1);
    CHECK_EQ(ext_critical(ca, NID_basic_constraints), 1);
    CHECK_EQ(X509_get_key_usage(ca), KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    CHECK(X509_get0_subject_key_id(ca) != NULL);
    CHECK_EQ(X509_verify(ca, X509_get0_pubkey(ca)), 1);
    CHECK_EQ(EVP_PKEY_get_base_id(X509_get0_pubkey(ca)), EVP_PKEY_EC);

    /* The client: verifies against the CA as a TLS client, not as a
     * server, and names its principal in exactly one SAN, a URI. */
    CHECK_EQ(verify(ca, NULL, alice, X509_PURPOSE_SSL_CLIENT), 1);
    CHECK_EQ(X509_check_purpose(alice, X509_PURPOSE_SSL_CLIENT, 0), 1);
    CHECK_EQ(X509_check_purpose(alice, X509_PURPOSE_SSL_SERVER, 0), 0);
    CHECK_EQ(X509_get_extended_key_usage(alice), XKU_SSL_CLIENT);
    CHECK_EQ(X509_get_key_usage(alice), KU_DIGITAL_SIGNATURE);
    CHECK_EQ(X509_check_ca(alice), 0);
    char uri[512];
    int nuri;
    CHECK_EQ(san_uris(alice, uri, sizeof(uri), &nuri), 1);
    CHECK_EQ(nuri, 1);
    CHECK_STR_EQ(uri, "haul:principal:alice");
    CHECK(X509_get0_authority_key_id(alice) != NULL);
    CHECK_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(alice), X509_get0_subject_key_id(ca)),
             0);
    /* A random serial of 128 bits: fewer than 65 would happen by chance
     * once in 2^64. */
    BIGNUM *serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(alice), NULL);
    CHECK(serial != NULL);
    CHECK_GT(BN_num_bits(serial), 64);
    CHECK_LE(BN_num_bits(serial), 128);
    BN_free(serial);

    /* The server: a TLS server for its name and the loopback addresses. */
    CHECK_EQ(verify(ca, NULL, srv, X509_PURPOSE_SSL_SERVER), 1);
    CHECK_EQ(X509_check_purpose(srv, X509_PURPOSE_SSL_CLIENT, 0), 0);
    CHECK_EQ(X509_get_extended_key_usage(srv), XKU_SSL_SERVER);
    CHECK_EQ(X509_check_host(srv, "srv", 0, 0, NULL), 1);
    CHECK_EQ(X509_check_host(srv, "other", 0, 0, NULL), 0);
    CHECK_EQ(X509_check_ip_asc(srv, "127.0.0.1", 0), 1);
    CHECK_EQ(X509_check_ip_asc(srv, "::1", 0), 1);
    CHECK_EQ(san_uris(srv, uri, sizeof(uri), &nuri), 3);
    CHECK_EQ(nuri, 0);

    /* Another CA's certificates do not verify against this one. */
    char other[PATH_MAX];
    snprintf(other, sizeof(other), "%s", in_dir("other"));
    haul_expect(0, "cert", "ca", other, NULL);
    haul_expect(0, "cert", "client", other, "alice", NULL);
    X509 *stranger = load_cert(in_dir("other/alice.crt"));
    CHECK_EQ(verify(ca, NULL, stranger, X509_PURPOSE_SSL_CLIENT),
             -X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);

    /* --dns and --ip replace the default names. */
    haul_expect(0, "cert", "server", dir, "web", "--dns", "web.example", "--ip", "10.0.0.1",
                "--days", "10", NULL);
    X509 *web = load_cert(in_dir("web.crt"));
    CHECK_EQ(X509_check_host(web, "web.example", 0, 0, NULL), 1);
    CHECK_EQ(X509_check_host(web, "web", 0, 0, NULL), 0);
    CHECK_EQ(X509_check_ip_asc(web, "10.0.0.1", 0), 1);
    CHECK_EQ(X509_check_ip_asc(web, "127.0.0.1", 0), 0);
    int days, seconds;
    CHECK_EQ(ASN1_TIME_diff(&days, &seconds, X509_get0_notBefore(web), X509_get0_notAfter(web)), 1);
    CHECK_EQ(days, 10);

    X509_free(web);
    X509_free(stranger);
    X509_free(ca);
    X509_free(srv);
    X509_free(alice);
}

TEST_TIMEOUT(refuses_to_overwrite, 20)
{
    setup();
    make_pki();
    char ca_key[8192], alice_crt[8192];
    snprintf(ca_key, sizeof(ca_key), "%s", slurp(in_dir("ca.key")));
    snprintf(alice_crt, sizeof(alice_crt), "%s", slurp(in_dir("alice.crt")));

    haul_expect(1, "cert", "ca", dir, NULL);
    CHECK(strstr(out, "exists") != NULL);
    CHECK_STR_EQ(slurp(in_dir("ca.key")), ca_key);
    haul_expect(1, "cert", "client", dir, "alice", NULL);
    CHECK_STR_EQ(slurp(in_dir("alice.crt")), alice_crt);
    haul_expect(1, "cert", "server", dir, "srv", NULL);
    /* "ca" in the CA's directory would be the CA's own files. */
    haul_expect(1, "cert", "client", dir, "ca", "--force", NULL);
    CHECK_STR_EQ(slurp(in_dir("ca.key")), ca_key);

    /* --force replaces, and the new key is as private as the old one. */
    haul_expect(0, "cert", "client", dir, "alice", "--force", NULL);
    CHECK(strcmp(slurp(in_dir("alice.crt")), alice_crt) != 0);
    CHECK_EQ(file_mode(in_dir("alice.key")), 0600);
    haul_expect(0, "cert", "ca", dir, "--force", NULL);
    CHECK(strcmp(slurp(in_dir("ca.key")), ca_key) != 0);
    CHECK_EQ(file_mode(in_dir("ca.key")), 0600);
}

/* Counts the entries of dir, to see that a refusal wrote nothing. */
static int count_entries(void)
{
    int n = 0;
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

TEST_TIMEOUT(bad_principal_refused, 20)
{
    setup();
    haul_expect(0, "cert", "ca", dir, NULL);
    char long_name[300];
    memset(long_name, 'a', 256);
    long_name[256] = '\0';
    const char *bad[] = {".hidden", "a/b", "", "al ice", "x:y", "caf\xc3\xa9", "..", long_name};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        haul_expect(1, "cert", "client", dir, bad[i], NULL);
        CHECK_EQ(count_entries(), 2);
    }
    CHECK(strstr(out, "bad principal") != NULL);
    /* Options that do not apply, and a bad --days. */
    haul_expect(1, "cert", "client", dir, "bob", "--dns", "x", NULL);
    haul_expect(1, "cert", "client", dir, "bob", "--days", "0", NULL);
    haul_expect(1, "cert", "server", dir, "web", "--ip", "300.0.0.1", NULL);
    CHECK_EQ(count_entries(), 2);

    /* The longest principal that can name its files: the CN is cut to
     * X.520's 64 characters, the SAN holds the whole name. */
    memset(long_name, 'p', 251);
    long_name[251] = '\0';
    haul_expect(0, "cert", "client", dir, long_name, NULL);
    char crt[320];
    snprintf(crt, sizeof(crt), "%s.crt", long_name);
    X509 *x = load_cert(in_dir(crt));
    char uri[512], want[512];
    int nuri;
    CHECK_EQ(san_uris(x, uri, sizeof(uri), &nuri), 1);
    snprintf(want, sizeof(want), "haul:principal:%s", long_name);
    CHECK_STR_EQ(uri, want);
    X509_free(x);
}

TEST_TIMEOUT(show_prints_grants, 20)
{
    setup();
    make_pki();
    haul_expect(0, "cert", "show", in_dir("alice.crt"), NULL);
    CHECK(strstr(out, "principal:   alice\n") != NULL);
    CHECK(strstr(out, "TLS client:  yes\n") != NULL);
    CHECK(strstr(out, "TLS server:  no\n") != NULL);
    CHECK(strstr(out, "validity:    valid now\n") != NULL);
    CHECK(strstr(out, "ext. usage:  clientAuth\n") != NULL);
    CHECK(strstr(out, "CA:          no\n") != NULL);

    haul_expect(0, "cert", "show", in_dir("srv.crt"), NULL);
    CHECK(strstr(out, "principal:   none\n") != NULL);
    CHECK(strstr(out, "TLS server:  yes\n") != NULL);
    CHECK(strstr(out, "DNS:         srv\n") != NULL);
    CHECK(strstr(out, "IP:          127.0.0.1, ::1\n") != NULL);

    haul_expect(0, "cert", "show", in_dir("ca.crt"), NULL);
    CHECK(strstr(out, "CA:          yes") != NULL);
    CHECK(strstr(out, "key usage:   keyCertSign, cRLSign\n") != NULL);

    haul_expect(1, "cert", "show", in_dir("missing.crt"), NULL);
    haul_expect(1, "cert", "show", in_dir("ca.key"), NULL);
}

TEST_TIMEOUT(revoke_writes_crl, 20)
{
    setup();
    make_pki();
    haul_expect(0, "cert", "client", dir, "bob", NULL);
    X509 *ca = load_cert(in_dir("ca.crt"));
    X509 *alice = load_cert(in_dir("alice.crt"));
    X509 *bob = load_cert(in_dir("bob.crt"));
    X509_REVOKED *entry;

    haul_expect(0, "cert", "revoke", dir, in_dir("alice.crt"), NULL);
    X509_CRL *crl = load_crl(in_dir("ca.crl"));
    CHECK_EQ(file_mode(in_dir("ca.crl")), 0644);
    CHECK_EQ(X509_CRL_verify(crl, X509_get0_pubkey(ca)), 1);
    CHECK_EQ(X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)), 0);
    CHECK_EQ(X509_CRL_get0_by_serial(crl, &entry, X509_get_serialNumber(alice)), 1);
    CHECK_EQ(X509_CRL_get0_by_serial(crl, &entry, X509_get_serialNumber(bob)), 0);
    int days, seconds;
    CHECK_EQ(ASN1_TIME_diff(&days, &seconds, X509_CRL_get0_lastUpdate(crl),
                            X509_CRL_get0_nextUpdate(crl)),
             1);
    CHECK_EQ(days, 30);
    /* With the CRL, alice no longer verifies and bob still does. */
    CHECK_EQ(verify(ca, crl, alice, X509_PURPOSE_SSL_CLIENT), -X509_V_ERR_CERT_REVOKED);
    CHECK_EQ(verify(ca, crl, bob, X509_PURPOSE_SSL_CLIENT), 1);
    X509_CRL_free(crl);

    /* A second revocation keeps the first. */
    haul_expect(0, "cert", "revoke", dir, in_dir("bob.crt"), NULL);
    crl = load_crl(in_dir("ca.crl"));
    CHECK_EQ(X509_CRL_verify(crl, X509_get0_pubkey(ca)), 1);
    CHECK_EQ(X509_CRL_get0_by_serial(crl, &entry, X509_get_serialNumber(alice)), 1);
    CHECK_EQ(X509_CRL_get0_by_serial(crl, &entry, X509_get_serialNumber(bob)), 1);
    CHECK_EQ(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 2);
    CHECK_EQ(verify(ca, crl, bob, X509_PURPOSE_SSL_CLIENT), -X509_V_ERR_CERT_REVOKED);
    X509_CRL_free(crl);

    /* Revoking again changes nothing but the dates; a certificate of
     * another CA is refused. */
    haul_expect(0, "cert", "revoke", dir, in_dir("alice.crt"), NULL);
    crl = load_crl(in_dir("ca.crl"));
    CHECK_EQ(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 2);
    X509_CRL_free(crl);
    char other[PATH_MAX];
    snprintf(other, sizeof(other), "%s", in_dir("other"));
    haul_expect(0, "cert", "ca", other, NULL);
    haul_expect(0, "cert", "client", other, "carol", NULL);
    haul_expect(1, "cert", "revoke", dir, in_dir("other/carol.crt"), NULL);
    crl = load_crl(in_dir("ca.crl"));
    CHECK_EQ(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 2);
    X509_CRL_free(crl);

    X509_free(bob);
    X509_free(alice);
    X509_free(ca);
}
