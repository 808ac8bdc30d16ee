/*
 * tls.c - the TLS transport of a connection (net/transport.h): mutual TLS
 * 1.3 with OpenSSL, its handshake run in CONN_SECURING, the principal
 * taken from the client's certificate, and every byte after sealed into
 * records.
 *
 * The encryption and authentication state machine (secure_fsm.h) moves
 * here, through haul__secure_enter(). Its authentication half is the
 * handshake of this file:
 *
 *   SEC_HANDSHAKING  SSL_do_handshake() on each readiness event until it
 *                    completes (or fails: an alert, a chain that does not
 *                    verify, a protocol older than TLS 1.3, no
 *                    certificate: SEC_FAILED).
 *   SEC_VERIFYING    the handshake completed and OpenSSL verified the
 *                    chain; haul's own checks follow: the key usage of the
 *                    peer's certificate, and on the server its principal
 *                    (refused: SEC_FAILED).
 *   SEC_ESTABLISHED  the peer is accepted: the connection goes on to
 *                    CONN_HELLO, and every byte after is a TLS record.
 *
 * Its encryption half is the reads and writes below, which report the end
 * of the stream (SEC_CLOSING) and fatal record errors (SEC_FAILED).
 *
 * A failure at any step closes the connection with HAUL_ETLS and a logged
 * reason. The handshake deadline of CONN_SECURING closes connections that
 * never finish.
 *
 * Reading: SSL_read() decrypts from OpenSSL's read-ahead buffer into the
 * core's buffer, or straight into a message for the payload of a large
 * chunk. Writing: SSL_write() of the payload of a large chunk in place,
 * and of everything else (headers, control frames, small payloads, file
 * bodies read with pread()) through the connection's bounce buffer. After
 * SSL_write() asks to be retried, the retry passes the same bytes, as
 * OpenSSL requires. The records gather in a write buffer under OpenSSL
 * that leaves for the socket when full, and when the core flushes the
 * connection because it stops writing for now.
 *
 * Contexts (SSL_CTX) are made once per listener and once per client pipe,
 * when the application calls; an SSL object holds a reference to its
 * context, so a connection may outlive the listener or pipe that made it.
 */
#include <assert.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/engine.h"
#include "net/transport.h"

/* The one subjectAltName URI form that names a principal. */
#define PRINCIPAL_URI "haul:principal:"

/*
 * The buffers of a connection's records.
 *
 * Reading: OpenSSL reads ahead as much as its buffer holds in one read(),
 * where it would otherwise make two per record (header, then body). Two
 * full TLS 1.3 records (16 KiB of plaintext each, the most the protocol
 * allows): larger buffers measured no faster on loopback, and every TLS
 * connection keeps its buffer for life.
 *
 * Writing: OpenSSL encrypts one record at a time into a buffer of its own
 * and writes each to its BIO. Written straight to the socket, that is one
 * write() per 16 KiB, and with TCP_NODELAY one TCP push per record. A
 * buffering BIO between the two gathers four records and hands them to
 * the socket in one write() when full, or when conn.c flushes it
 * (flush) because the connection stops writing for now. That
 * costs a copy of each record, which is cheaper than the system call and
 * the TCP push it saves: memory-to-memory throughput on loopback rose by
 * about a quarter.
 */
#define TLS_READ_BUFFER (32 * 1024)
#define TLS_WRITE_BUFFER (64 * 1024)

/* SSL_read() returns one record (16 KiB) at most, so a TLS connection
 * takes more reads per turn than a plain one for the same bytes. The
 * bounce buffer of a connection's writes, and the size of a piece of a
 * gather list at or above which it is sealed in place instead. */
#define TLS_READ_TURNS (16 * 8)
#define TLS_BOUNCE (64 * 1024)
#define TLS_DIRECT_MIN 16384

/* Appends OpenSSL's queued errors, oldest first, to buf. */
static void queued_errors(char *buf, size_t size)
{
    size_t used = strlen(buf);
    unsigned long code;
    while ((code = ERR_get_error()) != 0) {
        if (used + 3 >= size)
            continue; /* keep draining the queue */
        if (used > 0) {
            buf[used++] = ';';
            buf[used++] = ' ';
            buf[used] = '\0';
        }
        ERR_error_string_n(code, buf + used, size - used);
        used = strlen(buf);
    }
}

static int load_failed(haul_engine *e, SSL_CTX *ctx, const char *what, const char *path)
{
    char text[400] = "";
    queued_errors(text, sizeof(text));
    haul__log(e, HAUL_LOG_ERROR, "TLS: cannot load %s %s: %s", what, path ? path : "(none)",
              text[0] ? text : "no reason given");
    SSL_CTX_free(ctx);
    return HAUL_ETLS;
}

/* Loads every CRL of a PEM file into the context's store and turns
 * revocation checking on for the whole chain. A file without a CRL is an
 * error: checking would refuse every peer. */
static int load_crls(SSL_CTX *ctx, const char *path)
{
    BIO *bio = BIO_new_file(path, "r");
    if (bio == NULL)
        return 0;
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    int count = 0;
    X509_CRL *crl;
    while ((crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL)) != NULL) {
        int ok = X509_STORE_add_crl(store, crl);
        X509_CRL_free(crl);
        if (!ok) {
            BIO_free(bio);
            return 0;
        }
        count++;
    }
    BIO_free(bio);
    /* The loop ends on "no start line" at the end of the file. */
    ERR_clear_error();
    if (count == 0) {
        ERR_raise_data(ERR_LIB_PEM, PEM_R_NO_START_LINE, "no CRL in the file");
        return 0;
    }
    X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx),
                                X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    return 1;
}

/* OpenSSL fills a certificate's cache of decoded extensions on first use.
 * The context's certificates (the CAs, our own) are shared by handshakes
 * on every I/O thread, so the cache is filled here, on one thread, before
 * any of them runs. */
static void warm_caches(SSL_CTX *ctx)
{
    X509 *own = SSL_CTX_get0_certificate(ctx);
    if (own)
        X509_check_purpose(own, -1, 0);
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    STACK_OF(X509) *cas = X509_STORE_get1_all_certs(store);
    for (int i = 0; cas && i < sk_X509_num(cas); i++)
        X509_check_purpose(sk_X509_value(cas, i), -1, 0);
    sk_X509_pop_free(cas, X509_free);
    ERR_clear_error();
}

int haul__tls_ctx_new(haul_engine *e, const haul_tls_config *c, int server, SSL_CTX **ctxp)
{
    /* The server must show a certificate; a client without one is allowed
     * here only to be refused by the server (it cannot be authenticated). */
    if (c->ca_file == NULL || (c->cert_file == NULL) != (c->key_file == NULL) ||
        (server && c->cert_file == NULL))
        return HAUL_EINVAL;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL)
        return load_failed(e, NULL, "a TLS context", NULL);
    /* TLS 1.3 and nothing else; no resumption (no tickets, no session
     * cache), hence no 0-RTT either: every connection authenticates in
     * full. An EOF without close_notify is an ordinary end of stream:
     * haul's own frames (FIN, FIN_ACK) say whether a session ended in
     * order, so a truncation cannot pass unnoticed. */
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    /* AES-128-GCM first: as strong as the link needs, and the fastest
     * with AES-NI; the others stay for peers without it. */
    SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:"
                                  "TLS_AES_256_GCM_SHA384");
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx,
                        SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_max_early_data(ctx, 0);
    SSL_CTX_set_recv_max_early_data(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* The server's order decides: AES-128-GCM for a client that lists
     * AES-256-GCM first, as OpenSSL's defaults do. */
    if (server)
        SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Writes go out record by record from buffers that stay in place
     * until written (conn.c retries with the same bytes). */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, TLS_READ_BUFFER);

    if (c->cert_file) {
        if (SSL_CTX_use_certificate_chain_file(ctx, c->cert_file) != 1)
            return load_failed(e, ctx, "the certificate", c->cert_file);
        if (SSL_CTX_use_PrivateKey_file(ctx, c->key_file, SSL_FILETYPE_PEM) != 1)
            return load_failed(e, ctx, "the private key", c->key_file);
        if (SSL_CTX_check_private_key(ctx) != 1)
            return load_failed(e, ctx, "a key that matches the certificate", c->key_file);
    }
    /* The application's CA alone: the system's store is never loaded. */
    if (SSL_CTX_load_verify_file(ctx, c->ca_file) != 1)
        return load_failed(e, ctx, "the CA certificates", c->ca_file);
    if (c->crl_file && !load_crls(ctx, c->crl_file))
        return load_failed(e, ctx, "the CRL", c->crl_file);
    /* The chain is verified for the peer's role: a client certificate
     * must be one for client authentication, a server's for servers. */
    SSL_CTX_set_purpose(ctx, server ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER);
    SSL_CTX_set_verify(
        ctx, server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, NULL);
    warm_caches(ctx);
    *ctxp = ctx;
    return 0;
}

void haul__tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}

int haul__tls_ctx_reload(haul_engine *e, const char *key, int server, SSL_CTX **ctxp)
{
    /* The key is four lines: cert, key, CA, CRL, "-" for a file not
     * given (haul__tls_key). */
    char *copy = strdup(key);
    if (copy == NULL)
        return HAUL_ENOMEM;
    const char *parts[4] = {NULL, NULL, NULL, NULL};
    char *line = copy;
    for (int i = 0; i < 4 && line && *line; i++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        parts[i] = strcmp(line, "-") == 0 ? NULL : line;
        line = nl ? nl + 1 : NULL;
    }
    haul_tls_config c = {parts[0], parts[1], parts[2], parts[3]};
    int rc = haul__tls_ctx_new(e, &c, server, ctxp);
    free(copy);
    return rc;
}

char *haul__tls_key(const haul_tls_config *c, int *err)
{
    if (c == NULL)
        return NULL;
    const char *parts[4] = {c->cert_file, c->key_file, c->ca_file, c->crl_file};
    size_t len = 1;
    for (int i = 0; i < 4; i++)
        len += (parts[i] ? strlen(parts[i]) : 1) + 1;
    char *key = malloc(len);
    if (key == NULL) {
        *err = HAUL_ENOMEM;
        return NULL;
    }
    key[0] = '\0';
    /* A newline cannot end a file name that matters here, and "-" stands
     * for a file not given. */
    for (int i = 0; i < 4; i++) {
        strcat(key, parts[i] ? parts[i] : "-");
        strcat(key, "\n");
    }
    return key;
}

/* Takes the principal from the client's certificate: exactly one URI SAN
 * "haul:principal:NAME", NAME 1..255 bytes without NUL. */
static int take_principal(haul__conn *c, X509 *cert, char *why, size_t size)
{
    int crit = -1;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
    if (names == NULL) {
        snprintf(why, size, "the client's certificate has %s",
                 crit == -2 ? "two subjectAltName extensions" : "no subjectAltName");
        return -1;
    }
    size_t plen = strlen(PRINCIPAL_URI);
    int found = 0, bad = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const unsigned char *d = ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        size_t len = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        if (len < plen || memcmp(d, PRINCIPAL_URI, plen) != 0)
            continue;
        found++;
        size_t nlen = len - plen;
        if (nlen < 1 || nlen > HAUL__PRINCIPAL_MAX || memchr(d + plen, '\0', nlen) != NULL) {
            bad = 1;
            continue;
        }
        memcpy(c->principal, d + plen, nlen);
        c->principal[nlen] = '\0';
    }
    GENERAL_NAMES_free(names);
    if (found != 1 || bad) {
        c->principal[0] = '\0';
        snprintf(why, size, "the client's certificate has %s",
                 found == 0 ? "no " PRINCIPAL_URI "NAME subjectAltName"
                 : bad      ? "a malformed principal"
                            : "more than one principal");
        return -1;
    }
    return 0;
}

/* SEC_VERIFYING: haul's checks once OpenSSL has verified the chain. */
static int check_peer(haul__conn *c, SSL *ssl, char *why, size_t size)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cert == NULL) {
        snprintf(why, size, "the peer showed no certificate");
        return -1;
    }
    long verified = SSL_get_verify_result(ssl);
    if (verified != X509_V_OK) {
        snprintf(why, size, "certificate verification: %s",
                 X509_verify_cert_error_string(verified));
        return -1;
    }
    /* The key usage must be stated, not merely unrestricted: a certificate
     * without extendedKeyUsage would pass OpenSSL's purpose check. */
    uint32_t need = c->server ? XKU_SSL_CLIENT : XKU_SSL_SERVER;
    int purpose = c->server ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER;
    if ((X509_get_extension_flags(cert) & EXFLAG_XKUSAGE) == 0 ||
        (X509_get_extended_key_usage(cert) & need) == 0 ||
        X509_check_purpose(cert, purpose, 0) != 1) {
        snprintf(why, size, "the peer's certificate is not for %s (extendedKeyUsage)",
                 c->server ? "clientAuth" : "serverAuth");
        return -1;
    }
    if (c->server)
        return take_principal(c, cert, why, size);
    return 0;
}

/* Says why the handshake or an SSL call failed. */
static void describe_failure(SSL *ssl, int err, char *buf, size_t size)
{
    buf[0] = '\0';
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        snprintf(buf, size, "%s", errno ? strerror(errno) : "the peer hung up");
        return;
    }
    queued_errors(buf, size);
    long verified = SSL_get_verify_result(ssl);
    if (verified != X509_V_OK) {
        size_t used = strlen(buf);
        snprintf(buf + used, size - used, "%scertificate verification: %s", used ? "; " : "",
                 X509_verify_cert_error_string(verified));
    }
    if (buf[0] == '\0')
        snprintf(buf, size, "no reason given");
}

/* ---- the TLS transport (net/transport.h) ------------------------------------ */

/* What a TLS connection keeps besides the SSL object. */
typedef struct tls_conn {
    SSL *ssl;
    /* The bounce buffer: bytes taken from the core's writes that are not
     * sealed yet, [off, held). Headers, control frames, small payloads
     * and file bodies (read with pread(), as sendfile() cannot encrypt)
     * gather here, so that they go out in full records rather than one
     * small record each. */
    uint8_t *bounce;
    size_t held, off;
    /* SSL_write() asked to be retried: the retry passes the same bytes,
     * as OpenSSL requires (the bounce buffer does not change until it is
     * sealed, and the core passes a payload written in place again). Not
     * a security state: a retry condition of the socket I/O. */
    int write_retry;
    /* SSL_read() waits for the socket to be writable (it has to answer a
     * key update first). */
    int read_wants_write;
} tls_conn;

static int tls_init(haul__conn *c)
{
    /* Reads straight from the socket; writes through the buffer of
     * TLS_WRITE_BUFFER to a socket BIO of their own. The SSL object owns
     * the BIOs; none closes the descriptor, which is the connection's. */
    tls_conn *t = calloc(1, sizeof(*t));
    SSL *ssl = SSL_new(c->tls_ctx);
    BIO *rbio = BIO_new_socket(c->fd, BIO_NOCLOSE);
    BIO *sock = BIO_new_socket(c->fd, BIO_NOCLOSE);
    BIO *wbio = BIO_new(BIO_f_buffer());
    if (t == NULL || ssl == NULL || rbio == NULL || sock == NULL || wbio == NULL ||
        BIO_set_write_buffer_size(wbio, TLS_WRITE_BUFFER) != 1) {
        free(t);
        SSL_free(ssl);
        BIO_free(rbio);
        BIO_free(sock);
        BIO_free(wbio);
        ERR_clear_error();
        return HAUL_ENOMEM;
    }
    SSL_set_bio(ssl, rbio, BIO_push(wbio, sock));
    if (c->server)
        SSL_set_accept_state(ssl);
    else
        SSL_set_connect_state(ssl);
    t->ssl = ssl;
    c->transport = t;
    return 0;
}

static int tls_start(haul__conn *c)
{
    haul__secure_enter(c, HAUL__SECEV_START);
    return 0;
}

/* SEC_HANDSHAKING: one step, then haul's checks of the peer. */
static int tls_handshake(haul__conn *c, char *why, size_t size)
{
    tls_conn *t = c->transport;
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(t->ssl);
    if (rc != 1) {
        int err = SSL_get_error(t->ssl, rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            return 0;
        char text[400];
        describe_failure(t->ssl, err, text, sizeof(text));
        snprintf(why, size, "TLS handshake failed: %s", text);
        haul__secure_enter(c, HAUL__SECEV_HANDSHAKE_FAILED);
        haul__consume_sigpipe();
        return -1;
    }
    haul__secure_enter(c, HAUL__SECEV_HANDSHAKE_DONE);
    char text[300];
    if (check_peer(c, t->ssl, text, sizeof(text)) != 0) {
        snprintf(why, size, "TLS peer refused: %s", text);
        haul__secure_enter(c, HAUL__SECEV_PEER_REFUSED);
        haul__consume_sigpipe();
        return -1;
    }
    haul__secure_enter(c, HAUL__SECEV_PEER_ACCEPTED);
    return 1;
}

static void tls_describe(haul__conn *c, char *buf, size_t size)
{
    tls_conn *t = c->transport;
    snprintf(buf, size, "TLS established, %s", SSL_get_cipher_name(t->ssl));
}

/* SSL_read(), with recv()'s results: bytes, 0 at the end, or -1 with
 * errno (EAGAIN to wait for the next edge; EPROTO for a TLS error, whose
 * text is then left on OpenSSL's queue). */
static ssize_t tls_read(haul__conn *c, void *dst, size_t want)
{
    tls_conn *t = c->transport;
    if (c->sec_state != HAUL__SEC_ESTABLISHED) {
        errno = EPROTO;
        return -1;
    }
    size_t n;
    ERR_clear_error();
    errno = 0;
    t->read_wants_write = 0;
    if (SSL_read_ex(t->ssl, dst, want, &n) == 1)
        return (ssize_t)n;
    switch (SSL_get_error(t->ssl, 0)) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        /* TLS may have to answer (a key update) before it reads on. */
        t->read_wants_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        /* The peer's close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) the
         * end of the stream without one. */
        haul__secure_enter(c, HAUL__SECEV_CLOSE_RECEIVED);
        return 0;
    case SSL_ERROR_SYSCALL:
        haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
        if (ERR_peek_error() != 0) {
            errno = EPROTO;
            return -1;
        }
        if (errno == 0)
            return 0;
        haul__consume_sigpipe();
        return -1;
    default:
        haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
        haul__consume_sigpipe();
        errno = EPROTO;
        return -1;
    }
}

static int tls_pending(haul__conn *c)
{
    tls_conn *t = c->transport;
    return t != NULL && c->sec_state == HAUL__SEC_ESTABLISHED && SSL_has_pending(t->ssl);
}

static int tls_read_waits_write(haul__conn *c)
{
    tls_conn *t = c->transport;
    return t != NULL && t->read_wants_write;
}

/* Seals bytes with SSL_write(). Returns the bytes taken, or -1 with errno:
 * EAGAIN when the socket is full (write_retry is set: the next call must
 * pass the same bytes), EPROTO or the socket's error when the connection
 * broke (SEC_FAILED). */
static ssize_t seal(haul__conn *c, tls_conn *t, const void *src, size_t len)
{
    size_t written;
    ERR_clear_error();
    errno = 0;
    if (SSL_write_ex(t->ssl, src, len, &written) == 1) {
        t->write_retry = 0;
        return (ssize_t)written;
    }
    switch (SSL_get_error(t->ssl, 0)) {
    case SSL_ERROR_WANT_WRITE:
    case SSL_ERROR_WANT_READ:
        t->write_retry = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_SYSCALL:
        haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
        haul__consume_sigpipe();
        if (ERR_peek_error() != 0)
            errno = EPROTO;
        else if (errno == 0)
            errno = ECONNRESET;
        return -1;
    default:
        haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
        haul__consume_sigpipe();
        errno = EPROTO;
        return -1;
    }
}

/* Seals what the bounce buffer holds. Returns 0 when it is empty, -1 with
 * errno as seal() when it is not. */
static int drain(haul__conn *c, tls_conn *t)
{
    while (t->off < t->held) {
        ssize_t n = seal(c, t, t->bounce + t->off, t->held - t->off);
        if (n < 0)
            return -1;
        t->off += (size_t)n;
    }
    t->off = t->held = 0;
    return 0;
}

/* A write that took `taken` bytes before it stopped: those bytes count
 * when the socket was merely full; a broken connection fails the call. */
static ssize_t stopped(size_t taken)
{
    return taken > 0 && errno == EAGAIN ? (ssize_t)taken : -1;
}

static int established(haul__conn *c, tls_conn *t)
{
    if (t == NULL || c->sec_state != HAUL__SEC_ESTABLISHED) {
        errno = EPROTO;
        return 0;
    }
    return 1;
}

static int bounce_ready(tls_conn *t)
{
    if (t->bounce == NULL && (t->bounce = malloc(TLS_BOUNCE)) == NULL) {
        errno = ENOMEM;
        return 0;
    }
    return 1;
}

/*
 * Writes a gather list: small pieces are copied into the bounce buffer,
 * which is sealed when full; a piece of TLS_DIRECT_MIN bytes or more (the
 * payload of a large chunk in memory) is sealed in place, once what the
 * bounce buffer holds has gone before it.
 */
static ssize_t tls_writev(haul__conn *c, const struct iovec *iov, int n, int more)
{
    tls_conn *t = c->transport;
    if (!established(c, t))
        return -1;
    /* A write to be retried goes first, with its bytes unchanged. */
    if (t->write_retry && t->off < t->held && drain(c, t) < 0)
        return -1;
    size_t taken = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        if (len >= TLS_DIRECT_MIN) {
            if (drain(c, t) < 0)
                return stopped(taken);
            ssize_t w = seal(c, t, p, len);
            if (w < 0)
                return stopped(taken);
            return (ssize_t)(taken + (size_t)w);
        }
        while (len > 0) {
            if (t->held == TLS_BOUNCE && drain(c, t) < 0)
                return stopped(taken);
            if (!bounce_ready(t))
                return -1;
            size_t k = len < TLS_BOUNCE - t->held ? len : TLS_BOUNCE - t->held;
            memcpy(t->bounce + t->held, p, k);
            t->held += k;
            p += k;
            len -= k;
            taken += k;
        }
    }
    return (ssize_t)taken;
}

/* Writes part of a file: read with pread() into the bounce buffer, and
 * sealed with what gathers there. */
static ssize_t tls_write_file(haul__conn *c, int fd, off_t off, size_t len)
{
    tls_conn *t = c->transport;
    if (!established(c, t))
        return -1;
    if (t->write_retry && t->off < t->held && drain(c, t) < 0)
        return -1;
    if (t->held == TLS_BOUNCE && drain(c, t) < 0)
        return -1;
    if (!bounce_ready(t))
        return -1;
    size_t room = TLS_BOUNCE - t->held;
    size_t want = len < room ? len : room;
    ssize_t r;
    do
        r = pread(fd, t->bounce + t->held, want, off);
    while (r < 0 && errno == EINTR);
    if (r <= 0)
        return 0; /* the file shrank under us, or cannot be read */
    t->held += (size_t)r;
    return r;
}

/* The bounce buffer is sealed, and the records in the write buffer under
 * OpenSSL leave for the socket. */
static int tls_flush(haul__conn *c)
{
    tls_conn *t = c->transport;
    if (t == NULL || c->sec_state != HAUL__SEC_ESTABLISHED)
        return 0;
    if (drain(c, t) < 0)
        return -1;
    BIO *wbio = SSL_get_wbio(t->ssl);
    if (BIO_wpending(wbio) == 0)
        return 0;
    ERR_clear_error();
    errno = 0;
    if (BIO_flush(wbio) == 1)
        return 0;
    if (BIO_should_retry(wbio)) {
        errno = EAGAIN;
        return -1;
    }
    ERR_clear_error();
    if (errno == 0)
        errno = ECONNRESET;
    haul__consume_sigpipe();
    haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
    return -1;
}

/* The record layer of TLS 1.3 adds a 5-byte header, a content type byte
 * and a 16-byte tag to each record of up to 16 KiB. */
#define TLS_RECORD_MAX 16384
#define TLS_RECORD_OVERHEAD 22

static uint64_t tls_wire(haul__conn *c, uint64_t taken, uint64_t *held)
{
    tls_conn *t = c->transport;
    *held = 0;
    if (t == NULL)
        return 0;
    BIO *wbio = SSL_get_wbio(t->ssl);
    BIO *sock = wbio ? BIO_next(wbio) : NULL;
    size_t plain = t->held - t->off;
    *held = (wbio ? BIO_wpending(wbio) : 0) + plain +
            (plain + TLS_RECORD_MAX - 1) / TLS_RECORD_MAX * TLS_RECORD_OVERHEAD;
    return sock ? BIO_number_written(sock) : 0;
}

static int tls_error(haul__conn *c, int err, char *why, size_t size)
{
    tls_conn *t = c->transport;
    if (err != EPROTO || t == NULL)
        return 0;
    /* An alert from the peer (say, our certificate refused) or a record
     * that does not authenticate. */
    char text[300];
    describe_failure(t->ssl, SSL_ERROR_SSL, text, sizeof(text));
    snprintf(why, size, "TLS: %s", text);
    return HAUL_ETLS;
}

/* A close_notify, best effort, while the engine runs: the connection's own
 * thread frees it then, and that thread blocks SIGPIPE; haul_engine_free()
 * runs on the application's, which may not. In SEC_CLOSING it answers the
 * peer's. What the bounce buffer holds goes first; nothing goes in the
 * middle of a record that OpenSSL holds for a retry, which the alert may
 * not follow. */
static void tls_shutdown(haul__conn *c)
{
    tls_conn *t = c->transport;
    if (t == NULL || c->engine->stopping)
        return;
    if (c->sec_state == HAUL__SEC_ESTABLISHED && drain(c, t) < 0) {
        ERR_clear_error();
        return;
    }
    int live = c->sec_state == HAUL__SEC_ESTABLISHED || c->sec_state == HAUL__SEC_CLOSING;
    if (!live || t->write_retry)
        return;
    SSL_shutdown(t->ssl);
    ERR_clear_error();
    haul__consume_sigpipe();
    if (c->sec_state == HAUL__SEC_ESTABLISHED)
        haul__secure_enter(c, HAUL__SECEV_CLOSE_SENT);
}

static void tls_free(haul__conn *c)
{
    tls_conn *t = c->transport;
    if (t == NULL)
        return;
    SSL_free(t->ssl);
    free(t->bounce);
    free(t);
    c->transport = NULL;
}

const haul__transport_ops haul__tls_ops = {
    .name = "tls",
    .read_turns = TLS_READ_TURNS,
    .short_read_drains = 0,
    .init = tls_init,
    .start = tls_start,
    .handshake = tls_handshake,
    .describe = tls_describe,
    .read = tls_read,
    .pending = tls_pending,
    .read_waits_write = tls_read_waits_write,
    .writev = tls_writev,
    .write_file = tls_write_file,
    .flush = tls_flush,
    .wire = tls_wire,
    .error = tls_error,
    .shutdown = tls_shutdown,
    .free = tls_free,
};

const haul__transport_ops *haul__transport_for(SSL_CTX *tls_ctx)
{
    return tls_ctx ? &haul__tls_ops : &haul__tcp_ops;
}
