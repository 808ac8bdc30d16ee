/*
 * tls_test.c - mutual TLS 1.3 on every connection: a good pipe moves data
 * and names the principal of its certificate; every faulty client is
 * refused before the server application hears of it, with a logged reason.
 * The certificates are made here, in a directory of each test's own
 * (pki.h).
 */
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/engine.h"
#include "harness.h"
#include "pki.h"
#include "util.h"

/* ---- the certificates --------------------------------------------------- */

static char dir[64];

static const char *path(const char *name)
{
    static char bufs[16][384];
    static int next;
    char *p = bufs[next++ % 16];
    snprintf(p, 384, "%s/%s", dir, name);
    return p;
}

static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            unlink(path(de->d_name));
    closedir(d);
    rmdir(dir);
}

#define REVOKED_SERIAL 99

/* Makes the CA, the server's certificate, and one client certificate per
 * case: NAME.pem and NAME.key. */
static void pki_setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/haul-tls-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    atexit(remove_dir);
    pki_ca ca, other;
    CHECK_OK(pki_ca_new(&ca, "haul test CA", path("ca.pem")));
    CHECK_OK(pki_ca_new(&other, "another CA", path("other-ca.pem")));
    struct {
        const char *name;
        const pki_ca *ca;
        pki_opts o;
    } certs[] = {
        {"server",
         &ca,
         {.cn = "server", .serial = 2, .eku = "serverAuth", .san_extra = "DNS:localhost"}},
        {"alice", &ca, {.cn = "alice", .serial = 10, .eku = "clientAuth", .principal = "alice"}},
        {"bob", &ca, {.cn = "bob", .serial = 11, .eku = "clientAuth", .principal = "bob"}},
        {"other-ca",
         &other,
         {.cn = "alice", .serial = 12, .eku = "clientAuth", .principal = "alice"}},
        {"expired",
         &ca,
         {.cn = "alice",
          .serial = 13,
          .eku = "clientAuth",
          .principal = "alice",
          .not_before = -2 * 86400,
          .not_after = -86400}},
        {"not-yet",
         &ca,
         {.cn = "alice",
          .serial = 14,
          .eku = "clientAuth",
          .principal = "alice",
          .not_before = 86400,
          .not_after = 2 * 86400}},
        {"revoked",
         &ca,
         {.cn = "alice", .serial = REVOKED_SERIAL, .eku = "clientAuth", .principal = "alice"}},
        {"wrong-usage",
         &ca,
         {.cn = "alice", .serial = 15, .eku = "serverAuth", .principal = "alice"}},
        {"no-usage", &ca, {.cn = "alice", .serial = 16, .principal = "alice"}},
        {"no-principal",
         &ca,
         {.cn = "alice",
          .serial = 17,
          .eku = "clientAuth",
          .san_extra = "URI:https://example.org/alice"}},
        {"self-signed",
         &ca,
         {.cn = "alice",
          .serial = 18,
          .eku = "clientAuth",
          .principal = "alice",
          .self_signed = 1}},
    };
    for (size_t i = 0; i < sizeof(certs) / sizeof(certs[0]); i++) {
        char cert[32], key[32];
        snprintf(cert, sizeof(cert), "%s.pem", certs[i].name);
        snprintf(key, sizeof(key), "%s.key", certs[i].name);
        CHECK_OK(pki_issue(certs[i].ca, &certs[i].o, path(cert), path(key)));
    }
    long revoked = REVOKED_SERIAL;
    CHECK_OK(pki_crl(&ca, &revoked, 1, path("crl.pem")));
    pki_ca_free(&ca);
    pki_ca_free(&other);
}

/* ---- engines whose log the test reads ------------------------------------ */

typedef struct log_book {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    char text[32768];
    size_t len;
} log_book;

static void log_line(void *arg, int level, const char *line)
{
    log_book *b = arg;
    if (getenv("HAUL_TEST_LOG"))
        fprintf(stderr, "haul[%d]: %s\n", level, line);
    pthread_mutex_lock(&b->mu);
    int n = snprintf(b->text + b->len, sizeof(b->text) - b->len, "%s\n", line);
    if (n > 0 && b->len + (size_t)n < sizeof(b->text))
        b->len += (size_t)n;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

/* Waits up to ms for a line of the log that contains text. */
static int log_wait(log_book *b, const char *text, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&b->mu);
    int rc = 0;
    while (strstr(b->text, text) == NULL && rc == 0)
        rc = pthread_cond_timedwait(&b->cond, &b->mu, &until);
    int found = strstr(b->text, text) != NULL;
    if (!found)
        harness_log("the log has no \"%s\"; it holds:\n%s", text, b->text);
    pthread_mutex_unlock(&b->mu);
    return found;
}

static haul_engine *engine_logged(log_book *b, unsigned threads)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cond, NULL);
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.io_threads = threads;
    /* Long enough for handshakes under a sanitizer on a loaded machine;
     * no test waits for it to pass. */
    c.handshake_timeout_ms = 10000;
    c.log = log_line;
    c.log_arg = b;
    c.log_level = getenv("HAUL_TEST_LOG") ? atoi(getenv("HAUL_TEST_LOG")) : HAUL_LOG_WARN;
    if (c.log_level < HAUL_LOG_WARN)
        c.log_level = HAUL_LOG_WARN;
    haul_engine *e = NULL;
    CHECK_OK(haul_engine_new(&c, &e));
    return e;
}

/* ---- the server ---------------------------------------------------------------- */

typedef struct tls_server {
    log_book log;
    haul_engine *engine;
    sink sink;
    char address[160];
} tls_server;

static void server_up(tls_server *sv, int with_crl)
{
    sv->engine = engine_logged(&sv->log, 2);
    haul_tls_config tls = {.cert_file = path("server.pem"),
                           .key_file = path("server.key"),
                           .ca_file = path("ca.pem"),
                           .crl_file = with_crl ? path("crl.pem") : NULL};
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.tls = &tls;
    CHECK_OK(haul_listen(sv->engine, "127.0.0.1:0", &lc));
    CHECK_OK(haul_listen_address(sv->engine, sv->address, sizeof(sv->address)));
    CHECK_OK(sink_start(&sv->sink, sv->engine));
}

static void server_down(tls_server *sv)
{
    sink_stop(&sv->sink);
    haul_engine_free(sv->engine);
}

static int sink_sessions(sink *k)
{
    pthread_mutex_lock(&k->mu);
    int n = k->nsessions;
    pthread_mutex_unlock(&k->mu);
    return n;
}

/* A client's TLS files: NAME.pem and NAME.key, or no certificate. */
static haul_tls_config client_tls(const char *name)
{
    haul_tls_config t = {.ca_file = path("ca.pem")};
    if (name) {
        char cert[32], key[32];
        snprintf(cert, sizeof(cert), "%s.pem", name);
        snprintf(key, sizeof(key), "%s.key", name);
        t.cert_file = path(cert);
        t.key_file = path(key);
    }
    return t;
}

/*
 * A client with the given certificate (NULL: none) asks for a session of
 * principal "alice". The server must refuse its connection in the
 * security step with the reason `why` in its log, and its application
 * must never hear of a session.
 */
static void refused(const char *cert, const char *why)
{
    harness_strerror = haul_strerror;
    pki_setup();
    tls_server sv;
    server_up(&sv, 1);
    log_book clog;
    haul_engine *client = engine_logged(&clog, 1);
    haul_tls_config tls = client_tls(cert);
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = sv.address;
    sc.principal = "alice";
    sc.tls = &tls;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(next_event(client, &ev, 10000));
    CHECK_STR_EQ(haul_event_name(ev.type), "SESSION_REFUSED");
    /* The alert, or the server's hang-up when it came first. */
    harness_log("client: %s", haul_strerror(ev.error));
    CHECK(ev.error == HAUL_ETLS || ev.error == HAUL_ECONNRESET);
    CHECK(log_wait(&sv.log, why, 5000));
    haul_engine_stats st;
    haul_engine_stats_get(sv.engine, &st);
    CHECK_GE(st.tls_refused, 1);
    CHECK_EQ(st.messages_received, 0);
    CHECK_EQ(sink_sessions(&sv.sink), 0);
    haul_session_free(s);
    haul_engine_free(client);
    server_down(&sv);
}

/* ---- the tests ------------------------------------------------------------------ */

#define MIB (1u << 20)

TEST_TIMEOUT(good_pipe_moves_64_mib, 60)
{
    harness_strerror = haul_strerror;
    pki_setup();
    tls_server sv;
    server_up(&sv, 1);
    log_book clog;
    haul_engine *client = engine_logged(&clog, 1);
    haul_tls_config tls = client_tls("alice");
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = sv.address;
    sc.principal = "alice";
    sc.tls = &tls;
    sc.connections = 4;
    sc.max_message = MIB;
    sc.output_queue = 16 * MIB;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &ev, 10000));
    CHECK(haul_session_peer_principal(s) == NULL);

    /* Half the messages from memory, half from a file: the file's chunks
     * go through the bounce buffer, as sendfile() cannot encrypt. */
    char file[160];
    snprintf(file, sizeof(file), "%s/body", dir);
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    uint8_t *buf = malloc(MIB);
    XXH3_state_t *h = XXH3_createState();
    XXH3_64bits_reset(h);
    const int count = 64;
    for (int i = count / 2; i < count; i++) {
        fill_pattern(buf, MIB, (uint64_t)i);
        CHECK_EQ(pwrite(fd, buf, MIB, (off_t)(i - count / 2) * MIB), (ssize_t)MIB);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int acked = 0, rc;
    for (int i = 0; i < count; i++) {
        fill_pattern(buf, MIB, (uint64_t)i);
        for (;;) {
            rc = i < count / 2
                     ? haul_send(s, buf, MIB, (uint64_t)i)
                     : haul_send_file(s, fd, (off_t)(i - count / 2) * MIB, MIB, (uint64_t)i);
            if (rc != HAUL_EQUEUEFULL)
                break;
            CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 10000));
            acked++;
        }
        CHECK_OK(rc);
        XXH3_64bits_update(h, buf, MIB);
    }
    while (acked < count) {
        CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 10000));
        acked++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    harness_log("64 MiB over 4 TLS connections in %.3f s: %.0f MiB/s (indicative)", secs,
                64.0 / secs);
    close(fd);

    haul_conn_stats cs[4];
    CHECK_EQ(haul_pipe_stats(s, cs, 4), 4);
    for (int i = 0; i < 4; i++)
        CHECK(cs[i].up);
    CHECK_OK(haul_session_close(s));
    CHECK(wait_for(client, HAUL_EV_SESSION_CLOSED, &ev, 10000));
    CHECK_OK(ev.error);
    CHECK(sink_wait_closed(&sv.sink, 1, 10000));
    sink_session *ss = &sv.sink.sessions[0];
    CHECK_EQ(ss->messages, (uint64_t)count);
    CHECK_EQ(ss->bytes, (uint64_t)count * MIB);
    CHECK_EQ(XXH3_64bits_digest(ss->hash), XXH3_64bits_digest(h));
    CHECK(!ss->order_broken);
    haul_engine_stats st;
    haul_engine_stats_get(sv.engine, &st);
    CHECK_EQ(st.tls_refused, 0);
    CHECK_EQ(st.protocol_errors, 0);
    XXH3_freeState(h);
    free(buf);
    haul_session_free(s);
    haul_engine_free(client);
    server_down(&sv);
}

/* A client asks for a session of `principal` with the certificate `cert`
 * over a pipe of `connections`, and waits for the answer. */
static haul_session *tls_session(haul_engine *client, tls_server *sv, const char *principal,
                                 const char *cert, unsigned connections, int expect)
{
    haul_tls_config tls = client_tls(cert);
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = sv->address;
    sc.principal = principal;
    sc.tls = &tls;
    sc.connections = connections;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(next_event(client, &ev, 10000));
    CHECK_EQ(ev.type, expect);
    return s;
}

TEST(session_principal_is_the_certificates)
{
    harness_strerror = haul_strerror;
    pki_setup();
    tls_server sv;
    server_up(&sv, 0);
    log_book clog;
    haul_engine *client = engine_logged(&clog, 1);
    haul_session *s = tls_session(client, &sv, "alice", "alice", 2, HAUL_EV_SESSION_OPEN);
    CHECK_EQ(sink_sessions(&sv.sink), 1);
    haul_session *srv = sv.sink.sessions[0].session;
    CHECK(haul_session_peer_principal(srv) != NULL);
    CHECK_STR_EQ(haul_session_peer_principal(srv), "alice");
    CHECK_STR_EQ(haul_session_principal(srv), "alice");
    haul_session_free(s);
    haul_engine_free(client);
    server_down(&sv);
}

/* The connections of a client session's pipe that are joined. */
static int joined_of(haul_session *s)
{
    haul_conn_stats st[8];
    int n = haul_pipe_stats(s, st, 8), up = 0;
    for (int i = 0; i < n && i < 8; i++)
        up += st[i].up;
    return up;
}

/* A principal's cap holds over all its pipes; others are not held by it. */
TEST_TIMEOUT(principal_connection_limit, 60)
{
    harness_strerror = haul_strerror;
    pki_setup();
    tls_server sv;
    server_up(&sv, 0);
    CHECK_OK(haul_engine_limit_principal(sv.engine, "alice", 3));
    CHECK_EQ(haul_engine_limit_principal(sv.engine, "", 3), HAUL_EINVAL);
    log_book la, lb, lc;
    haul_engine *a1 = engine_logged(&la, 1), *a2 = engine_logged(&lb, 1),
                *b = engine_logged(&lc, 1);

    /* Two pipes of alice's, 2 and 4 connections: 3 join in all. */
    haul_session *s1 = tls_session(a1, &sv, "alice", "alice", 2, HAUL_EV_SESSION_OPEN);
    haul_session *s2 = tls_session(a2, &sv, "alice", "alice", 4, HAUL_EV_SESSION_OPEN);
    CHECK(log_wait(&sv.log, "principal \"alice\" has joined its 3 connections", 10000));
    haul_engine_stats st;
    haul_engine_stats_get(sv.engine, &st);
    CHECK_GE(st.principal_limited, 1);
    int joined = joined_of(s1) + joined_of(s2);
    harness_log("alice: %d connections joined", joined);
    CHECK_LE(joined, 3);
    CHECK_GE(joined, 2);

    /* bob has no cap: all 5 of his join. */
    haul_session *s3 = tls_session(b, &sv, "bob", "bob", 5, HAUL_EV_SESSION_OPEN);
    haul_event ev;
    for (int i = 0; i < 500 && joined_of(s3) < 5; i++)
        haul_engine_wait(b, &ev, 1, 10); /* nothing comes: a pause that the engine may end */
    CHECK_EQ(joined_of(s3), 5);

    /* A default cap holds bob too, from his next connection on. */
    CHECK_OK(haul_engine_limit_principal(sv.engine, NULL, 1));
    haul_engine_stats_get(sv.engine, &st);
    uint64_t before = st.principal_limited;
    haul_engine *b2 = engine_logged(&lc, 1);
    haul_session_config sc;
    haul_session_config_init(&sc);
    haul_tls_config tls = client_tls("bob");
    sc.destination = sv.address;
    sc.principal = "bob";
    sc.tls = &tls;
    haul_session *s4;
    CHECK_OK(haul_session_new(b2, &sc, &s4));
    CHECK(log_wait(&sv.log, "principal \"bob\" has joined its 1 connections", 10000));
    haul_engine_stats_get(sv.engine, &st);
    CHECK_GT(st.principal_limited, before);
    haul_session_free(s4);
    haul_engine_free(b2);

    haul_session_free(s1);
    haul_session_free(s2);
    haul_session_free(s3);
    haul_engine_free(a1);
    haul_engine_free(a2);
    haul_engine_free(b);
    server_down(&sv);
}

/* A plain listener on server with a sink taking its sessions, and an open
 * session of principal "plain" to it from client. */
static haul_session *plain_session(haul_engine *server, haul_engine *client, sink *k)
{
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    CHECK_OK(sink_start(k, server));
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "plain";
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &ev, 10000));
    return s;
}

TEST(plain_session_has_no_peer_principal)
{
    harness_strerror = haul_strerror;
    haul_engine *server = engine_quiet(1, 0), *client = engine_quiet(1, 0);
    CHECK(server && client);
    sink k;
    haul_session *s = plain_session(server, client, &k);
    CHECK_EQ(sink_sessions(&k), 1);
    CHECK(haul_session_peer_principal(k.sessions[0].session) == NULL);
    haul_session_free(s);
    sink_stop(&k);
    haul_engine_free(client);
    haul_engine_free(server);
}

TEST(refused_without_client_certificate)
{
    refused(NULL, "peer did not return a certificate");
}

TEST(refused_certificate_of_another_ca)
{
    refused("other-ca", "unable to get local issuer certificate");
}

TEST(refused_expired)
{
    refused("expired", "certificate has expired");
}

TEST(refused_not_yet_valid)
{
    refused("not-yet", "certificate is not yet valid");
}

TEST(refused_revoked)
{
    refused("revoked", "certificate revoked");
}

TEST(refused_wrong_key_usage)
{
    refused("wrong-usage", "unsuitable certificate purpose");
}

TEST(refused_without_key_usage)
{
    refused("no-usage", "is not for clientAuth");
}

TEST(refused_missing_principal)
{
    refused("no-principal", "no haul:principal:NAME subjectAltName");
}

TEST(refused_self_signed)
{
    refused("self-signed", "self-signed certificate");
}

TEST(refused_session_of_another_principal)
{
    harness_strerror = haul_strerror;
    pki_setup();
    tls_server sv;
    server_up(&sv, 1);
    log_book clog;
    haul_engine *client = engine_logged(&clog, 1);
    haul_tls_config tls = client_tls("bob");
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = sv.address;
    sc.principal = "alice";
    sc.tls = &tls;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(next_event(client, &ev, 10000));
    CHECK_STR_EQ(haul_event_name(ev.type), "SESSION_REFUSED");
    CHECK_EQ(ev.error, HAUL_EREFUSED);
    CHECK_EQ(ev.reason, HAUL_EREFUSED);
    CHECK(log_wait(&sv.log, "asks for principal \"alice\", the certificate is of \"bob\"", 5000));
    CHECK_EQ(sink_sessions(&sv.sink), 0);
    /* The connection itself was good: bob's own session opens on it. */
    sc.principal = "bob";
    haul_session *s2;
    CHECK_OK(haul_session_new(client, &sc, &s2));
    CHECK(next_event(client, &ev, 10000));
    CHECK_STR_EQ(haul_event_name(ev.type), "SESSION_OPEN");
    CHECK_EQ(sink_sessions(&sv.sink), 1);
    CHECK_STR_EQ(haul_session_peer_principal(sv.sink.sessions[0].session), "bob");
    haul_session_free(s);
    haul_session_free(s2);
    haul_engine_free(client);
    server_down(&sv);
}

/* A raw OpenSSL client on a blocking socket to the server's port. */
static SSL *raw_client(tls_server *sv, SSL_CTX *ctx, int *fdp)
{
    int port = atoi(strrchr(sv->address, ':') + 1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_OK(connect(fd, (struct sockaddr *)&sin, sizeof(sin)));
    SSL *ssl = SSL_new(ctx);
    CHECK(ssl != NULL);
    SSL_set_fd(ssl, fd);
    *fdp = fd;
    return ssl;
}

static SSL_CTX *raw_ctx(const char *name, int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    CHECK(ctx != NULL);
    SSL_CTX_set_max_proto_version(ctx, max_version);
    char cert[32], key[32];
    snprintf(cert, sizeof(cert), "%s.pem", name);
    snprintf(key, sizeof(key), "%s.key", name);
    CHECK_EQ(SSL_CTX_use_certificate_chain_file(ctx, path(cert)), 1);
    CHECK_EQ(SSL_CTX_use_PrivateKey_file(ctx, path(key), SSL_FILETYPE_PEM), 1);
    CHECK_EQ(SSL_CTX_load_verify_file(ctx, path("ca.pem")), 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

TEST(refused_tls_1_2_client)
{
    pki_setup();
    tls_server sv;
    server_up(&sv, 0);
    SSL_CTX *ctx = raw_ctx("alice", TLS1_2_VERSION);
    int fd;
    SSL *ssl = raw_client(&sv, ctx, &fd);
    CHECK(SSL_connect(ssl) != 1);
    CHECK(log_wait(&sv.log, "unsupported protocol", 5000));
    haul_engine_stats st;
    haul_engine_stats_get(sv.engine, &st);
    CHECK_EQ(st.tls_refused, 1);
    /* The same client with TLS 1.3 gets through. */
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    ctx = raw_ctx("alice", TLS1_3_VERSION);
    ssl = raw_client(&sv, ctx, &fd);
    CHECK_EQ(SSL_connect(ssl), 1);
    CHECK_EQ(SSL_version(ssl), TLS1_3_VERSION);
    /* OpenSSL's client lists AES-256-GCM first; the server's order wins. */
    CHECK_STR_EQ(SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)), "TLS_AES_128_GCM_SHA256");
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    CHECK_EQ(sink_sessions(&sv.sink), 0);
    server_down(&sv);
}

TEST(plain_client_fails_tls_client_passes)
{
    harness_strerror = haul_strerror;
    pki_setup();
    tls_server sv;
    server_up(&sv, 0);
    log_book clog;
    haul_engine *client = engine_logged(&clog, 1);
    haul_tls_config tls = client_tls("alice");
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = sv.address;
    sc.principal = "alice";
    sc.tls = &tls;
    haul_session *good;
    CHECK_OK(haul_session_new(client, &sc, &good));
    haul_event ev;
    CHECK(next_event(client, &ev, 10000));
    CHECK_STR_EQ(haul_event_name(ev.type), "SESSION_OPEN");

    /* A plain session to the same destination makes a pipe of its own
     * (it must not ride the TLS one), which the server refuses. */
    sc.tls = NULL;
    haul_session *plain;
    CHECK_OK(haul_session_new(client, &sc, &plain));
    CHECK(next_event(client, &ev, 10000));
    CHECK_STR_EQ(haul_event_name(ev.type), "SESSION_REFUSED");
    CHECK(ev.session == plain);
    CHECK(log_wait(&sv.log, "TLS handshake failed", 5000));

    /* The TLS session still works. */
    CHECK_OK(haul_send(good, "still here", 10, 1));
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 10000));
    CHECK_EQ(sink_sessions(&sv.sink), 1);
    haul_session_free(good);
    haul_session_free(plain);
    haul_engine_free(client);
    server_down(&sv);
}

/* A connection of principal bob names the server pipe of alice's
 * connections in its HELLO: the server closes it, and alice's pipe goes
 * on. */
TEST(refused_join_of_another_principals_pipe)
{
    harness_strerror = haul_strerror;
    pki_setup();
    tls_server sv;
    server_up(&sv, 0);
    log_book clog;
    haul_engine *client = engine_logged(&clog, 1);
    haul_tls_config tls = client_tls("alice");
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = sv.address;
    sc.principal = "alice";
    sc.tls = &tls;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &ev, 10000));
    uint64_t pipe_id = s->pipe->id; /* internal: the id every HELLO names */

    SSL_CTX *ctx = raw_ctx("bob", TLS1_3_VERSION);
    int fd;
    SSL *ssl = raw_client(&sv, ctx, &fd);
    CHECK_EQ(SSL_connect(ssl), 1);
    uint8_t hello[HAUL__FRAME_HDR + HAUL__HELLO_MAGIC_LEN];
    haul__frame f = {.version = HAUL_PROTOCOL_VERSION,
                     .type = HAUL__F_HELLO,
                     .len = HAUL__HELLO_MAGIC_LEN,
                     .aux = 1,
                     .seq = pipe_id,
                     .offset = 256u << 10};
    haul__frame_encode(&f, hello);
    memcpy(hello + HAUL__FRAME_HDR, HAUL__HELLO_MAGIC, HAUL__HELLO_MAGIC_LEN);
    CHECK_EQ(SSL_write(ssl, hello, (int)sizeof(hello)), (int)sizeof(hello));
    CHECK(log_wait(&sv.log, "a connection of principal \"bob\" asked to join a pipe of \"alice\"",
                   5000));
    /* The server says why, then hangs up. */
    uint8_t answer[256];
    int n = SSL_read(ssl, answer, sizeof(answer));
    CHECK_GE(n, HAUL__FRAME_HDR);
    CHECK_EQ(answer[1], HAUL__F_ERROR);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);

    CHECK_OK(haul_send(s, "alice goes on", 13, 1));
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 10000));
    haul_session_free(s);
    haul_engine_free(client);
    server_down(&sv);
}

/* ---- the encryption and authentication state machine ------------------------- */

/* The transitions of net/secure_fsm.c, and none other. */
TEST(secure_table_refuses_what_it_does_not_list)
{
    static const struct {
        int from, event, to;
    } legal[] = {
        {HAUL__SEC_NULL, HAUL__SECEV_PLAIN, HAUL__SEC_PLAIN},
        {HAUL__SEC_NULL, HAUL__SECEV_START, HAUL__SEC_HANDSHAKING},
        {HAUL__SEC_HANDSHAKING, HAUL__SECEV_HANDSHAKE_DONE, HAUL__SEC_VERIFYING},
        {HAUL__SEC_HANDSHAKING, HAUL__SECEV_HANDSHAKE_FAILED, HAUL__SEC_FAILED},
        {HAUL__SEC_VERIFYING, HAUL__SECEV_PEER_ACCEPTED, HAUL__SEC_ESTABLISHED},
        {HAUL__SEC_VERIFYING, HAUL__SECEV_PEER_REFUSED, HAUL__SEC_FAILED},
        {HAUL__SEC_ESTABLISHED, HAUL__SECEV_CLOSE_SENT, HAUL__SEC_CLOSING},
        {HAUL__SEC_ESTABLISHED, HAUL__SECEV_CLOSE_RECEIVED, HAUL__SEC_CLOSING},
        {HAUL__SEC_ESTABLISHED, HAUL__SECEV_RECORD_FAILED, HAUL__SEC_FAILED},
    };
    int allowed = 0;
    for (int st = 0; st < HAUL__SEC_STATE_COUNT_; st++) {
        for (int ev = 0; ev < HAUL__SECEV_COUNT_; ev++) {
            int want = -1;
            for (size_t i = 0; i < sizeof(legal) / sizeof(legal[0]); i++)
                if (legal[i].from == st && legal[i].event == ev)
                    want = legal[i].to;
            if (haul__secure_next(st, ev) != want)
                harness_log("%s on %s", haul__secure_state_name(st), haul__secure_event_name(ev));
            CHECK_EQ(haul__secure_next(st, ev), want);
            allowed += want >= 0;
        }
    }
    CHECK_EQ(allowed, (int)(sizeof(legal) / sizeof(legal[0])));
    /* No way around the checks of the peer, and the final states are final. */
    CHECK_EQ(haul__secure_next(HAUL__SEC_HANDSHAKING, HAUL__SECEV_PEER_ACCEPTED), -1);
    for (int ev = 0; ev < HAUL__SECEV_COUNT_; ev++) {
        CHECK_EQ(haul__secure_next(HAUL__SEC_PLAIN, ev), -1);
        CHECK_EQ(haul__secure_next(HAUL__SEC_CLOSING, ev), -1);
        CHECK_EQ(haul__secure_next(HAUL__SEC_FAILED, ev), -1);
    }
    CHECK_EQ(haul__secure_next(-1, HAUL__SECEV_START), -1);
    CHECK_EQ(haul__secure_next(HAUL__SEC_STATE_COUNT_, HAUL__SECEV_START), -1);

    int count;
    const char *const *names = haul_secure_state_names(&count);
    CHECK_EQ(count, HAUL__SEC_STATE_COUNT_);
    CHECK_LE(count,
             (int)(sizeof(((haul_engine_stats *)0)->secure_state_entered) / sizeof(uint64_t)));
    CHECK_STR_EQ(names[HAUL__SEC_ESTABLISHED], "SEC_ESTABLISHED");
    CHECK_STR_EQ(haul__secure_state_name(HAUL__SEC_FAILED), "SEC_FAILED");
    CHECK_STR_EQ(haul__secure_event_name(HAUL__SECEV_PEER_REFUSED), "SECEV_PEER_REFUSED");
}

static void log_nothing(void *arg, int level, const char *line)
{
    (void)arg;
    (void)level;
    (void)line;
}

/* haul__secure_enter() takes no transition the table lacks: it asserts in
 * a debug build (here, in a child), and leaves the state as it was with an
 * error otherwise. */
TEST(secure_enter_refuses_an_illegal_transition)
{
    static haul_engine engine;
    engine.config.log = log_nothing;
    engine.config.log_level = HAUL_LOG_DEBUG;
    haul__conn *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    c->engine = &engine;
    c->serial = 1;
    c->sec_state = HAUL__SEC_HANDSHAKING;
#ifdef NDEBUG
    CHECK_EQ(haul__secure_enter(c, HAUL__SECEV_PEER_ACCEPTED), -1);
    CHECK_EQ(c->sec_state, HAUL__SEC_HANDSHAKING);
    CHECK_EQ(atomic_load(&engine.secure_entered[HAUL__SEC_ESTABLISHED]), 0);
#else
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        haul__secure_enter(c, HAUL__SECEV_PEER_ACCEPTED);
        _exit(0);
    }
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
#endif
    /* The legal path is taken, and counted. */
    CHECK_OK(haul__secure_enter(c, HAUL__SECEV_HANDSHAKE_DONE));
    CHECK_OK(haul__secure_enter(c, HAUL__SECEV_PEER_ACCEPTED));
    CHECK_EQ(c->sec_state, HAUL__SEC_ESTABLISHED);
    CHECK_EQ(atomic_load(&engine.secure_entered[HAUL__SEC_VERIFYING]), 1);
    CHECK_EQ(atomic_load(&engine.secure_entered[HAUL__SEC_ESTABLISHED]), 1);
    free(c);
}

static void secure_counts(haul_engine *e, uint64_t out[HAUL__SEC_STATE_COUNT_])
{
    haul_engine_stats st;
    haul_engine_stats_get(e, &st);
    for (int i = 0; i < HAUL__SEC_STATE_COUNT_; i++)
        out[i] = st.secure_state_entered[i];
}

/* Waits up to ms until the engine has entered `state` at least n times.
 * The security state machine posts no event of its own, so its counter is
 * what there is to watch. */
static int wait_secure(haul_engine *e, int state, uint64_t n, int ms)
{
    for (int waited = 0;; waited++) {
        uint64_t c[HAUL__SEC_STATE_COUNT_];
        secure_counts(e, c);
        if (c[state] >= n)
            return 1;
        if (waited >= ms)
            return 0;
        struct timespec ms1 = {0, 1000000};
        nanosleep(&ms1, NULL);
    }
}

/*
 * Every state of the security state machine is entered over real sockets:
 * a good pipe reaches SEC_ESTABLISHED on both sides and, closed in order,
 * passes SEC_CLOSING on both (the client sends close_notify, the server
 * reads it); a certificate of another CA fails the handshake
 * (SEC_HANDSHAKING -> SEC_FAILED) and one without a principal fails the
 * checks of the peer (SEC_VERIFYING -> SEC_FAILED) on the server; a plain
 * pipe passes SEC_PLAIN.
 */
TEST_TIMEOUT(every_secure_state_is_entered, 60)
{
    harness_strerror = haul_strerror;
    pki_setup();
    tls_server sv;
    server_up(&sv, 0);
    log_book clog;
    haul_engine *client = engine_logged(&clog, 1);
    uint64_t c[HAUL__SEC_STATE_COUNT_], s[HAUL__SEC_STATE_COUNT_];

    /* A good pipe of two connections, which carries a message. */
    haul_session *good = tls_session(client, &sv, "alice", "alice", 2, HAUL_EV_SESSION_OPEN);
    haul_event ev;
    CHECK_OK(haul_send(good, "secured", 7, 1));
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 10000));
    /* Both connections joined on each side. */
    CHECK(wait_secure(client, HAUL__SEC_ESTABLISHED, 2, 10000));
    CHECK(wait_secure(sv.engine, HAUL__SEC_ESTABLISHED, 2, 10000));
    secure_counts(client, c);
    secure_counts(sv.engine, s);
    CHECK_EQ(c[HAUL__SEC_FAILED] + s[HAUL__SEC_FAILED], 0);
    CHECK_EQ(c[HAUL__SEC_CLOSING] + s[HAUL__SEC_CLOSING], 0);
    CHECK_EQ(c[HAUL__SEC_PLAIN] + s[HAUL__SEC_PLAIN], 0);
    CHECK_EQ(c[HAUL__SEC_HANDSHAKING], c[HAUL__SEC_NULL]);
    CHECK_EQ(c[HAUL__SEC_VERIFYING], c[HAUL__SEC_HANDSHAKING]);

    /* Closed in order: the client's pipe, without sessions, closes its
     * connections at the next sweep with a close_notify each, and the
     * server reads them. */
    CHECK_OK(haul_session_close(good));
    CHECK(wait_for(client, HAUL_EV_SESSION_CLOSED, &ev, 10000));
    CHECK_OK(ev.error);
    haul_session_free(good);
    CHECK(wait_secure(client, HAUL__SEC_CLOSING, 2, 10000));
    CHECK(wait_secure(sv.engine, HAUL__SEC_CLOSING, 2, 10000));
    secure_counts(sv.engine, s);
    CHECK_EQ(s[HAUL__SEC_FAILED], 0);

    /* Refused in the handshake: a certificate of another CA. */
    haul_session *bad = tls_session(client, &sv, "alice", "other-ca", 1, HAUL_EV_SESSION_REFUSED);
    haul_session_free(bad);
    CHECK(wait_secure(sv.engine, HAUL__SEC_FAILED, 1, 10000));
    secure_counts(sv.engine, s);
    CHECK_EQ(s[HAUL__SEC_VERIFYING], 2); /* the good pipe's two only */

    /* Refused by haul's checks: a certificate without a principal. */
    bad = tls_session(client, &sv, "alice", "no-principal", 1, HAUL_EV_SESSION_REFUSED);
    haul_session_free(bad);
    CHECK(wait_secure(sv.engine, HAUL__SEC_FAILED, 2, 10000));
    CHECK(log_wait(&sv.log, "no haul:principal:NAME subjectAltName", 5000));
    secure_counts(sv.engine, s);
    CHECK_GE(s[HAUL__SEC_VERIFYING], 3);
    CHECK_EQ(s[HAUL__SEC_ESTABLISHED], 2); /* no refused client got this far */

    /* Plain: no security layer at all. */
    haul_engine *pserver = engine_quiet(1, 0), *pclient = engine_quiet(1, 0);
    CHECK(pserver && pclient);
    sink k;
    haul_session *plain = plain_session(pserver, pclient, &k);
    uint64_t pc[HAUL__SEC_STATE_COUNT_], ps[HAUL__SEC_STATE_COUNT_];
    secure_counts(pclient, pc);
    secure_counts(pserver, ps);
    CHECK_GE(pc[HAUL__SEC_PLAIN], 1);
    CHECK_GE(ps[HAUL__SEC_PLAIN], 1);
    CHECK_EQ(pc[HAUL__SEC_HANDSHAKING] + ps[HAUL__SEC_HANDSHAKING], 0);
    haul_session_free(plain);
    sink_stop(&k);

    /* Every state, across the engines. */
    secure_counts(client, c);
    secure_counts(sv.engine, s);
    int count;
    const char *const *names = haul_secure_state_names(&count);
    for (int i = 0; i < count; i++) {
        uint64_t n = c[i] + s[i] + pc[i] + ps[i];
        harness_log("%-16s tls client %llu server %llu, plain client %llu server %llu", names[i],
                    (unsigned long long)c[i], (unsigned long long)s[i], (unsigned long long)pc[i],
                    (unsigned long long)ps[i]);
        CHECK_GT(n, 0);
    }
    haul_engine_free(pclient);
    haul_engine_free(pserver);
    haul_engine_free(client);
    server_down(&sv);
}

TEST(bad_tls_files_fail_at_the_call)
{
    harness_strerror = haul_strerror;
    pki_setup();
    log_book b;
    haul_engine *e = engine_logged(&b, 1);
    haul_tls_config tls = {.cert_file = path("server.pem"),
                           .key_file = path("alice.key"), /* not the certificate's */
                           .ca_file = path("ca.pem")};
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.tls = &tls;
    CHECK_EQ(haul_listen(e, "127.0.0.1:0", &lc), HAUL_ETLS);
    CHECK(log_wait(&b, "key values mismatch", 1000));
    tls.key_file = path("server.key");
    tls.ca_file = path("missing.pem");
    CHECK_EQ(haul_listen(e, "127.0.0.1:0", &lc), HAUL_ETLS);
    tls.ca_file = path("ca.pem");
    tls.crl_file = path("ca.pem"); /* a certificate, not a CRL */
    CHECK_EQ(haul_listen(e, "127.0.0.1:0", &lc), HAUL_ETLS);
    CHECK(log_wait(&b, "cannot load the CRL", 1000));
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = "127.0.0.1:9";
    sc.principal = "alice";
    haul_tls_config ctls = client_tls("alice");
    ctls.cert_file = path("missing.pem");
    sc.tls = &ctls;
    haul_session *s;
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_ETLS);
    haul_engine_free(e);
}
