/*
 * tls.c - the security step of a connection: mutual TLS 1.3 with OpenSSL,
 * run in CONN_SECURING (conn.c), and the principal taken from the client's
 * certificate.
 *
 * The encryption and authentication state machine (secure_fsm.h) moves
 * here and only here, through haul__secure_enter(). Its authentication
 * half is the handshake of this file:
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
 * Its encryption half is conn.c's reads and writes, which report the end
 * of the stream (SEC_CLOSING) and fatal record errors (SEC_FAILED).
 *
 * A failure at any step closes the connection with HAUL_ETLS and a logged
 * reason. The handshake deadline of CONN_SECURING closes connections that
 * never finish.
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

#include "core/engine.h"

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
 * (haul__tls_flush) because the connection stops writing for now. That
 * costs a copy of each record, which is cheaper than the system call and
 * the TCP push it saves: memory-to-memory throughput on loopback rose by
 * about a quarter.
 */
#define TLS_READ_BUFFER (32 * 1024)
#define TLS_WRITE_BUFFER (64 * 1024)

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

_Static_assert(HAUL__SEC_STATE_COUNT_ <=
                   sizeof(((haul_engine_stats *)0)->secure_state_entered) / sizeof(uint64_t),
               "haul_engine_stats.secure_state_entered has a slot for every security state");

int haul__secure_enter(haul__conn *c, int event)
{
    haul_engine *e = c->engine;
    /* Callers read errno after a failed read or write has moved the
     * machine; the log may change it. */
    int saved = errno;
    int next = haul__secure_next(c->sec_state, event);
    if (next < 0) {
        haul__log(e, HAUL_LOG_ERROR, "connection %u: security: no transition from %s on %s",
                  c->serial, haul__secure_state_name(c->sec_state), haul__secure_event_name(event));
        assert(!"a transition the security table does not have");
        errno = saved;
        return -1;
    }
    haul__log(e, HAUL_LOG_DEBUG, "connection %u: %s -> %s on %s", c->serial,
              haul__secure_state_name(c->sec_state), haul__secure_state_name(next),
              haul__secure_event_name(event));
    c->sec_state = next;
    atomic_fetch_add_explicit(&e->secure_entered[next], 1, memory_order_relaxed);
    errno = saved;
    return 0;
}

int haul__tls_conn_init(haul__conn *c)
{
    /* Reads straight from the socket; writes through the buffer of
     * TLS_WRITE_BUFFER to a socket BIO of their own. The SSL object owns
     * the BIOs; none closes the descriptor, which is the connection's. */
    c->ssl = SSL_new(c->tls_ctx);
    BIO *rbio = BIO_new_socket(c->fd, BIO_NOCLOSE);
    BIO *sock = BIO_new_socket(c->fd, BIO_NOCLOSE);
    BIO *wbio = BIO_new(BIO_f_buffer());
    if (c->ssl == NULL || rbio == NULL || sock == NULL || wbio == NULL ||
        BIO_set_write_buffer_size(wbio, TLS_WRITE_BUFFER) != 1) {
        BIO_free(rbio);
        BIO_free(sock);
        BIO_free(wbio);
        ERR_clear_error();
        return HAUL_ENOMEM;
    }
    SSL_set_bio(c->ssl, rbio, BIO_push(wbio, sock));
    if (c->server)
        SSL_set_accept_state(c->ssl);
    else
        SSL_set_connect_state(c->ssl);
    return 0;
}

int haul__tls_flush(haul__conn *c)
{
    BIO *wbio = SSL_get_wbio(c->ssl);
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
    return -1;
}

uint64_t haul__tls_wire_written(haul__conn *c, uint64_t *buffered)
{
    BIO *wbio = SSL_get_wbio(c->ssl);
    BIO *sock = wbio ? BIO_next(wbio) : NULL;
    size_t pending = wbio ? BIO_wpending(wbio) : 0;
    *buffered = pending;
    return sock ? BIO_number_written(sock) : 0;
}

void haul__tls_conn_fini(haul__conn *c)
{
    SSL_free(c->ssl);
    c->ssl = NULL;
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
static int check_peer(haul__conn *c, char *why, size_t size)
{
    X509 *cert = SSL_get0_peer_certificate(c->ssl);
    if (cert == NULL) {
        snprintf(why, size, "the peer showed no certificate");
        return -1;
    }
    long verified = SSL_get_verify_result(c->ssl);
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
static void describe(haul__conn *c, int err, char *buf, size_t size)
{
    buf[0] = '\0';
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        snprintf(buf, size, "%s", errno ? strerror(errno) : "the peer hung up");
        return;
    }
    queued_errors(buf, size);
    long verified = SSL_get_verify_result(c->ssl);
    if (verified != X509_V_OK) {
        size_t used = strlen(buf);
        snprintf(buf + used, size - used, "%scertificate verification: %s", used ? "; " : "",
                 X509_verify_cert_error_string(verified));
    }
    if (buf[0] == '\0')
        snprintf(buf, size, "no reason given");
}

int haul__tls_handshake(haul__conn *c, char *why, size_t size)
{
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(c->ssl);
    if (rc != 1) {
        int err = SSL_get_error(c->ssl, rc);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            return 0;
        char text[400];
        describe(c, err, text, sizeof(text));
        snprintf(why, size, "TLS handshake failed: %s", text);
        haul__secure_enter(c, HAUL__SECEV_HANDSHAKE_FAILED);
        return -1;
    }
    haul__secure_enter(c, HAUL__SECEV_HANDSHAKE_DONE);
    char text[300];
    if (check_peer(c, text, sizeof(text)) != 0) {
        snprintf(why, size, "TLS peer refused: %s", text);
        haul__secure_enter(c, HAUL__SECEV_PEER_REFUSED);
        return -1;
    }
    haul__secure_enter(c, HAUL__SECEV_PEER_ACCEPTED);
    return 1;
}

void haul__tls_error_text(haul__conn *c, char *buf, size_t size)
{
    char text[300];
    describe(c, SSL_ERROR_SSL, text, sizeof(text));
    snprintf(buf, size, "TLS: %s", text);
}
