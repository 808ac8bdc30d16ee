/*
 * liveness_test.c - keepalives, the idle deadline of joined connections,
 * and the events that tell the application that a pipe went down and
 * came back (haul_engine_config.keepalive_ms, idle_timeout_ms,
 * HAUL_EV_PIPE_DOWN, HAUL_EV_PIPE_UP).
 *
 * A client engine reaches a server engine through a small proxy of the
 * test's own (a thread) that forwards bytes between the two, and that on
 * demand stops forwarding in both directions without closing anything (a
 * partition: a silent peer, not a reset), or forwards the client's bytes
 * slowly (a slow path). The periods are short (keepalive 100 ms, idle
 * timeout 300 ms), so that each test takes a second or two.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "harness.h"
#include "haul.h"
#include "pki.h"

#define KEEPALIVE_MS 100
#define IDLE_MS 300
#define MIB (1u << 20)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the proxy ------------------------------------------------------------ */

#define PROXY_PAIRS 32
#define PROXY_BUF 65536

/* One direction of a forwarded connection: bytes read from `from` that
 * wait to be written to `to`. */
typedef struct flow {
    int from, to;
    uint8_t buf[PROXY_BUF];
    size_t have, off;
} flow;

typedef struct pair {
    int used;
    flow up;   /* client to server */
    flow down; /* server to client */
} pair;

typedef struct proxy {
    pthread_t thread;
    pthread_mutex_t mu;
    int listen_fd;
    int wake_fd;
    struct sockaddr_in target;
    char address[64];
    pair pairs[PROXY_PAIRS];
    /* Under mu. */
    int stop;
    int partitioned;   /* forward nothing, accept nothing */
    size_t up_quantum; /* client to server: at most this per 25 ms; 0: no limit */
    unsigned accepted;
} proxy;

static int set_nonblock(int fd)
{
    return fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void pair_close(pair *p)
{
    close(p->up.from);
    close(p->up.to);
    p->used = 0;
}

/* Moves what it can of one direction: returns -1 when either end is
 * gone. At most *budget bytes are read, and taken from it. */
static int flow_run(flow *f, size_t *budget)
{
    if (f->off == f->have && *budget > 0) {
        size_t want = *budget < sizeof(f->buf) ? *budget : sizeof(f->buf);
        ssize_t n = recv(f->from, f->buf, want, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            return -1;
        if (n > 0) {
            f->have = (size_t)n;
            f->off = 0;
            *budget -= (size_t)n;
        }
    }
    while (f->off < f->have) {
        ssize_t n = send(f->to, f->buf + f->off, f->have - f->off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0)
            return -1;
        f->off += (size_t)n;
    }
    return 0;
}

static void proxy_accept(proxy *px)
{
    int fd = accept4(px->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    int up = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* A blocking connect to a local listener completes at once. */
    if (up < 0 || connect(up, (struct sockaddr *)&px->target, sizeof(px->target)) != 0 ||
        set_nonblock(up) != 0) {
        close(fd);
        if (up >= 0)
            close(up);
        return;
    }
    for (int i = 0; i < PROXY_PAIRS; i++) {
        pair *p = &px->pairs[i];
        if (!p->used) {
            memset(p, 0, sizeof(*p));
            p->used = 1;
            p->up.from = fd;
            p->up.to = up;
            p->down.from = up;
            p->down.to = fd;
            pthread_mutex_lock(&px->mu);
            px->accepted++;
            pthread_mutex_unlock(&px->mu);
            return;
        }
    }
    close(fd);
    close(up);
}

static void *proxy_main(void *arg)
{
    proxy *px = arg;
    /* The client's bytes, when paced: a quantum every 25 ms. */
    size_t up_budget = 0;
    int64_t next_tick = 0;
    for (;;) {
        pthread_mutex_lock(&px->mu);
        int stop = px->stop, partitioned = px->partitioned;
        size_t quantum = px->up_quantum;
        pthread_mutex_unlock(&px->mu);
        if (stop)
            break;
        if (quantum == 0) {
            up_budget = SIZE_MAX;
        } else if (now_ms() >= next_tick) {
            up_budget = quantum;
            next_tick = now_ms() + 25;
        } else if (up_budget == SIZE_MAX) {
            up_budget = quantum;
        }
        struct pollfd pfd[2 + 2 * PROXY_PAIRS];
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = px->wake_fd, .events = POLLIN};
        if (!partitioned) {
            pfd[n++] = (struct pollfd){.fd = px->listen_fd, .events = POLLIN};
            for (int i = 0; i < PROXY_PAIRS; i++) {
                if (!px->pairs[i].used)
                    continue;
                if (up_budget > 0)
                    pfd[n++] = (struct pollfd){.fd = px->pairs[i].up.from, .events = POLLIN};
                pfd[n++] = (struct pollfd){.fd = px->pairs[i].down.from, .events = POLLIN};
            }
        }
        /* Paced, when the client's bytes are to go slowly; the waiting
         * writes of either direction are retried every time around. */
        poll(pfd, (nfds_t)n, quantum || partitioned ? 25 : 5);
        if (pfd[0].revents & POLLIN) {
            uint64_t v;
            if (read(px->wake_fd, &v, sizeof(v)) < 0) {
                /* Nothing to take. */
            }
        }
        if (partitioned)
            continue;
        if (pfd[1].revents & POLLIN)
            proxy_accept(px);
        for (int i = 0; i < PROXY_PAIRS; i++) {
            pair *p = &px->pairs[i];
            if (!p->used)
                continue;
            size_t unlimited = SIZE_MAX;
            if (flow_run(&p->up, &up_budget) < 0 || flow_run(&p->down, &unlimited) < 0)
                pair_close(p);
        }
    }
    for (int i = 0; i < PROXY_PAIRS; i++)
        if (px->pairs[i].used)
            pair_close(&px->pairs[i]);
    return NULL;
}

static void proxy_start(proxy *px, const char *target)
{
    memset(px, 0, sizeof(*px));
    pthread_mutex_init(&px->mu, NULL);
    char host[64];
    const char *colon = strrchr(target, ':');
    CHECK(colon != NULL);
    snprintf(host, sizeof(host), "%.*s", (int)(colon - target), target);
    px->target.sin_family = AF_INET;
    px->target.sin_port = htons((uint16_t)atoi(colon + 1));
    CHECK_EQ(inet_pton(AF_INET, host, &px->target.sin_addr), 1);

    px->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(px->listen_fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_OK(bind(px->listen_fd, (struct sockaddr *)&sin, sizeof(sin)));
    CHECK_OK(listen(px->listen_fd, 64));
    socklen_t len = sizeof(sin);
    CHECK_OK(getsockname(px->listen_fd, (struct sockaddr *)&sin, &len));
    snprintf(px->address, sizeof(px->address), "127.0.0.1:%u", ntohs(sin.sin_port));
    px->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    CHECK(px->wake_fd >= 0);
    CHECK_OK(pthread_create(&px->thread, NULL, proxy_main, px));
}

static void proxy_set(proxy *px, int partitioned, size_t up_quantum)
{
    pthread_mutex_lock(&px->mu);
    px->partitioned = partitioned;
    px->up_quantum = up_quantum;
    pthread_mutex_unlock(&px->mu);
    uint64_t one = 1;
    CHECK_EQ(write(px->wake_fd, &one, sizeof(one)), (ssize_t)sizeof(one));
}

static void proxy_stop(proxy *px)
{
    pthread_mutex_lock(&px->mu);
    px->stop = 1;
    pthread_mutex_unlock(&px->mu);
    uint64_t one = 1;
    CHECK_EQ(write(px->wake_fd, &one, sizeof(one)), (ssize_t)sizeof(one));
    pthread_join(px->thread, NULL);
    close(px->listen_fd);
    close(px->wake_fd);
}

/* ---- the server application ------------------------------------------------ */

/* Accepts one session, takes every message at once and keeps the count,
 * the bytes, a hash of them in order, and the pipe events with the time
 * they came. */
#define MAX_NOTES 32
typedef struct server_app {
    haul_engine *engine;
    pthread_t thread;
    pthread_mutex_t mu;
    int stop;
    haul_session *session;
    uint64_t messages, bytes, next_seq;
    int order_broken;
    XXH3_state_t *hash;
    int closed;
    int notes[MAX_NOTES]; /* HAUL_EV_PIPE_DOWN and HAUL_EV_PIPE_UP, in order */
    int note_errors[MAX_NOTES];
    int64_t note_ms[MAX_NOTES];
    int nnotes;
} server_app;

static void *server_main(void *arg)
{
    server_app *a = arg;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        int stop = a->stop;
        pthread_mutex_unlock(&a->mu);
        if (stop)
            break;
        haul_event ev;
        if (haul_engine_wait(a->engine, &ev, 1, 20) != 1)
            continue;
        pthread_mutex_lock(&a->mu);
        switch (ev.type) {
        case HAUL_EV_SESSION_REQUEST:
            a->session = ev.session;
            haul_session_accept(ev.session);
            break;
        case HAUL_EV_MESSAGE_RECEIVED: {
            haul_message *m;
            while (haul_recv(ev.session, &m) == 0) {
                if (haul_message_seq(m) != a->next_seq)
                    a->order_broken = 1;
                a->next_seq = haul_message_seq(m) + 1;
                a->messages++;
                a->bytes += haul_message_len(m);
                XXH3_64bits_update(a->hash, haul_message_data(m), haul_message_len(m));
                haul_message_free(m);
            }
            break;
        }
        case HAUL_EV_PIPE_DOWN:
        case HAUL_EV_PIPE_UP:
            if (a->nnotes < MAX_NOTES) {
                a->notes[a->nnotes] = ev.type;
                a->note_errors[a->nnotes] = ev.error;
                a->note_ms[a->nnotes] = now_ms();
                a->nnotes++;
            }
            break;
        case HAUL_EV_SESSION_CLOSED:
            a->closed = 1;
            break;
        default:
            break;
        }
        pthread_mutex_unlock(&a->mu);
    }
    return NULL;
}

static haul_engine *engine_with(unsigned keepalive_ms, unsigned idle_ms)
{
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.keepalive_ms = keepalive_ms;
    c.idle_timeout_ms = idle_ms;
    /* A redial through a partition hangs in its handshake: short, so that
     * a slot dials again soon after the path is back. */
    c.handshake_timeout_ms = 1000;
    c.redial_max_ms = 200;
    c.log_level = getenv("HAUL_TEST_LOG") ? atoi(getenv("HAUL_TEST_LOG")) : HAUL_LOG_ERROR;
    haul_engine *e = NULL;
    CHECK_OK(haul_engine_new(&c, &e));
    return e;
}

/* A server engine with its application, a proxy in front of it, and a
 * client engine with one open session through the proxy; over mutual
 * TLS when pki names a directory of certificates (make_pki). */
typedef struct rig {
    haul_engine *server, *client;
    server_app app;
    proxy px;
    haul_session *session;
} rig;

static char pki_dir[64];

static const char *pki_path(char *buf, const char *name)
{
    snprintf(buf, 128, "%s/%s", pki_dir, name);
    return buf;
}

/* A CA, a server certificate and a client certificate of principal
 * LIVENESS_TEST, in a directory of the test's own. */
static void make_pki(void)
{
    char a[128], b[128];
    snprintf(pki_dir, sizeof(pki_dir), "/tmp/haul-liveness-XXXXXX");
    CHECK(mkdtemp(pki_dir) != NULL);
    pki_ca ca;
    CHECK_OK(pki_ca_new(&ca, "liveness CA", pki_path(a, "ca.pem")));
    pki_opts server = {.cn = "server", .serial = 2, .eku = "serverAuth"};
    CHECK_OK(pki_issue(&ca, &server, pki_path(a, "server.pem"), pki_path(b, "server.key")));
    pki_opts client = {
        .cn = "client", .serial = 3, .eku = "clientAuth", .principal = "LIVENESS_TEST"};
    CHECK_OK(pki_issue(&ca, &client, pki_path(a, "client.pem"), pki_path(b, "client.key")));
    pki_ca_free(&ca);
}

static void remove_pki(void)
{
    const char *names[] = {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"};
    char a[128];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        unlink(pki_path(a, names[i]));
    rmdir(pki_dir);
}

static void rig_start_tls(rig *r, unsigned keepalive_ms, unsigned client_idle_ms,
                          unsigned server_idle_ms, unsigned connections, int tls)
{
    harness_strerror = haul_strerror;
    memset(r, 0, sizeof(*r));
    r->server = engine_with(keepalive_ms, server_idle_ms);
    r->client = engine_with(keepalive_ms, client_idle_ms);
    char ca[128], cert[128], key[128];
    haul_tls_config server_tls = {.cert_file = pki_path(cert, "server.pem"),
                                  .key_file = pki_path(key, "server.key"),
                                  .ca_file = pki_path(ca, "ca.pem")};
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.tls = tls ? &server_tls : NULL;
    CHECK_OK(haul_listen(r->server, "127.0.0.1:0", &lc));
    char address[128];
    CHECK_OK(haul_listen_address(r->server, address, sizeof(address)));
    r->app.engine = r->server;
    pthread_mutex_init(&r->app.mu, NULL);
    r->app.hash = XXH3_createState();
    XXH3_64bits_reset(r->app.hash);
    CHECK_OK(pthread_create(&r->app.thread, NULL, server_main, &r->app));
    proxy_start(&r->px, address);

    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = r->px.address;
    sc.principal = "LIVENESS_TEST";
    sc.connections = connections;
    /* The server's window counts messages of this size: room for
     * sixteen, so that no message waits for the window and the client's
     * events are the ones the tests expect. */
    sc.max_message = 4 * MIB;
    haul_tls_config client_tls = {.cert_file = pki_path(cert, "client.pem"),
                                  .key_file = pki_path(key, "client.key"),
                                  .ca_file = pki_path(ca, "ca.pem")};
    sc.tls = tls ? &client_tls : NULL;
    CHECK_OK(haul_session_new(r->client, &sc, &r->session));
    haul_event ev;
    CHECK_EQ(haul_engine_wait(r->client, &ev, 1, 5000), 1);
    CHECK_EQ(ev.type, HAUL_EV_SESSION_OPEN);
}

static void rig_start(rig *r, unsigned keepalive_ms, unsigned client_idle_ms,
                      unsigned server_idle_ms, unsigned connections)
{
    rig_start_tls(r, keepalive_ms, client_idle_ms, server_idle_ms, connections, 0);
}

static void rig_stop(rig *r)
{
    haul_session_free(r->session);
    haul_engine_free(r->client);
    pthread_mutex_lock(&r->app.mu);
    r->app.stop = 1;
    pthread_mutex_unlock(&r->app.mu);
    pthread_join(r->app.thread, NULL);
    if (r->app.session)
        haul_session_free(r->app.session);
    haul_engine_free(r->server);
    proxy_stop(&r->px);
    XXH3_freeState(r->app.hash);
}

/* The next client event, which must come within ms. */
static haul_event client_event(rig *r, int ms)
{
    haul_event ev;
    memset(&ev, 0, sizeof(ev));
    CHECK_EQ(haul_engine_wait(r->client, &ev, 1, ms), 1);
    CHECK(ev.session == r->session);
    return ev;
}

/* Sends len bytes of a pattern as message `tag`, into the hash. */
static void send_pattern(rig *r, size_t len, uint64_t tag, XXH3_state_t *hash)
{
    uint8_t *buf = malloc(len ? len : 1);
    CHECK(buf != NULL);
    uint64_t x = tag * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
    CHECK_OK(haul_send(r->session, buf, len, tag));
    XXH3_64bits_update(hash, buf, len);
    free(buf);
}

/* Waits up to ms for the server application to have `messages`. */
static void wait_server_messages(rig *r, uint64_t messages, int ms)
{
    int64_t until = now_ms() + ms;
    for (;;) {
        pthread_mutex_lock(&r->app.mu);
        uint64_t have = r->app.messages;
        pthread_mutex_unlock(&r->app.mu);
        if (have >= messages)
            return;
        CHECK_LT(now_ms(), until);
        /* Nothing is expected of the client meanwhile; its wait paces
         * the loop. */
        haul_event ev;
        CHECK_EQ(haul_engine_wait(r->client, &ev, 1, 10), 0);
    }
}

/* ---- the tests ------------------------------------------------------------- */

/*
 * The path between a client and a server goes silent in both directions
 * (no reset, no FIN) while a message is on its way. Both engines notice
 * within about idle_timeout_ms: the client's session gets PIPE_DOWN with
 * ETIMEDOUT, so does the server's. When the path comes back, the client
 * redials, both get PIPE_UP, and the message arrives exactly once, after
 * the one sent before the cut, in order and with its content.
 */
TEST_TIMEOUT(silent_peer_detected_then_redialled_and_delivered_once, 30)
{
    rig r;
    rig_start(&r, KEEPALIVE_MS, IDLE_MS, IDLE_MS, 2);
    XXH3_state_t *sent = XXH3_createState();
    XXH3_64bits_reset(sent);

    send_pattern(&r, MIB, 0, sent);
    haul_event ev = client_event(&r, 5000);
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
    CHECK_EQ(ev.tag, 0);

    proxy_set(&r.px, 1, 0);
    int64_t cut = now_ms();
    send_pattern(&r, 4 * MIB, 1, sent);

    ev = client_event(&r, 5000);
    int64_t noticed = now_ms() - cut;
    harness_log("the client noticed the silent peer after %lld ms", (long long)noticed);
    CHECK_EQ(ev.type, HAUL_EV_PIPE_DOWN);
    CHECK_EQ(ev.error, HAUL_ETIMEDOUT);
    /* The last keepalive came up to one period (and a sweep) before the
     * cut; under load the sweep may run late, hence the wide upper end. */
    CHECK_GE(noticed, IDLE_MS - KEEPALIVE_MS - 40);
    CHECK_LT(noticed, IDLE_MS + 1500);

    /* The server noticed too, on its own. */
    int64_t until = now_ms() + 3000;
    for (;;) {
        pthread_mutex_lock(&r.app.mu);
        int n = r.app.nnotes;
        pthread_mutex_unlock(&r.app.mu);
        if (n >= 1)
            break;
        CHECK_LT(now_ms(), until);
        CHECK_EQ(haul_engine_wait(r.client, &ev, 1, 10), 0);
    }
    pthread_mutex_lock(&r.app.mu);
    CHECK_EQ(r.app.notes[0], HAUL_EV_PIPE_DOWN);
    CHECK_EQ(r.app.note_errors[0], HAUL_ETIMEDOUT);
    CHECK_LT(r.app.note_ms[0] - cut, IDLE_MS + 1500);
    CHECK_EQ(r.app.messages, 1);
    pthread_mutex_unlock(&r.app.mu);

    /* The cut lasts several idle periods; nothing more is said meanwhile
     * (redials hang in their handshake). */
    CHECK_EQ(haul_engine_wait(r.client, &ev, 1, 3 * IDLE_MS), 0);
    proxy_set(&r.px, 0, 0);
    int64_t healed = now_ms();

    ev = client_event(&r, 5000);
    CHECK_EQ(ev.type, HAUL_EV_PIPE_UP);
    CHECK_EQ(ev.error, HAUL_OK);
    harness_log("the pipe was up again %lld ms after the path came back",
                (long long)(now_ms() - healed));
    ev = client_event(&r, 10000);
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
    CHECK_EQ(ev.tag, 1);

    wait_server_messages(&r, 2, 5000);
    /* Nothing more arrives: no duplicate. */
    CHECK_EQ(haul_engine_wait(r.client, &ev, 1, 2 * IDLE_MS), 0);
    pthread_mutex_lock(&r.app.mu);
    CHECK_EQ(r.app.messages, 2);
    CHECK_EQ(r.app.bytes, 5ull * MIB);
    CHECK_EQ(r.app.order_broken, 0);
    CHECK_EQ(XXH3_64bits_digest(r.app.hash), XXH3_64bits_digest(sent));
    CHECK_GE(r.app.nnotes, 2);
    CHECK_EQ(r.app.notes[1], HAUL_EV_PIPE_UP);
    pthread_mutex_unlock(&r.app.mu);

    haul_engine_stats st;
    haul_engine_stats_get(r.client, &st);
    CHECK_GE(st.idle_timeouts, 2); /* both connections of the pipe */
    CHECK_EQ(st.messages_sent, 2);
    haul_engine_stats_get(r.server, &st);
    CHECK_GE(st.idle_timeouts, 1);
    CHECK_EQ(st.messages_received, 2);

    XXH3_freeState(sent);
    rig_stop(&r);
}

/*
 * An idle pipe stays up for many idle periods: keepalives flow both ways
 * and no connection is taken for dead.
 */
static void idle_pipe_stays_up(int tls)
{
    rig r;
    rig_start_tls(&r, KEEPALIVE_MS, IDLE_MS, IDLE_MS, 2, tls);
    haul_event ev;
    /* Six idle periods without a word from the engine. */
    CHECK_EQ(haul_engine_wait(r.client, &ev, 1, 6 * IDLE_MS), 0);

    haul_engine_stats cst, sst;
    haul_engine_stats_get(r.client, &cst);
    haul_engine_stats_get(r.server, &sst);
    harness_log(
        "keepalives: client sent %llu received %llu, server sent %llu received %llu",
        (unsigned long long)cst.keepalives_sent, (unsigned long long)cst.keepalives_received,
        (unsigned long long)sst.keepalives_sent, (unsigned long long)sst.keepalives_received);
    CHECK_EQ(cst.connections_lost, 0);
    CHECK_EQ(sst.connections_lost, 0);
    CHECK_EQ(cst.idle_timeouts, 0);
    CHECK_EQ(sst.idle_timeouts, 0);
    /* 1800 ms at one keepalive per 100 ms and connection: well over
     * a few, whatever the load. */
    CHECK_GE(cst.keepalives_sent, 6);
    CHECK_GE(sst.keepalives_received, 6);
    CHECK_GE(sst.keepalives_sent, 6);
    CHECK_GE(cst.keepalives_received, 6);
    pthread_mutex_lock(&r.app.mu);
    CHECK_EQ(r.app.nnotes, 0);
    pthread_mutex_unlock(&r.app.mu);

    /* And the pipe still carries messages. */
    XXH3_state_t *sent = XXH3_createState();
    XXH3_64bits_reset(sent);
    send_pattern(&r, 1000, 7, sent);
    ev = client_event(&r, 5000);
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
    XXH3_freeState(sent);
    rig_stop(&r);
}

TEST_TIMEOUT(keepalives_keep_an_idle_pipe_up, 30)
{
    idle_pipe_stays_up(0);
}

/* The same over mutual TLS, where a KEEPALIVE is a record of its own. */
TEST_TIMEOUT(keepalives_keep_an_idle_tls_pipe_up, 30)
{
    make_pki();
    atexit(remove_pki);
    idle_pipe_stays_up(1);
}

/*
 * The control of the test above: without keepalives, an idle pipe is
 * taken for dead after idle_timeout_ms, and comes back by a redial. What
 * keeps the pipe up above is the keepalives, not a deadline that never
 * fires.
 */
TEST_TIMEOUT(idle_pipe_without_keepalives_times_out, 30)
{
    rig r;
    /* The server waits longer, so that the client's own deadline, not
     * the server's close, ends the connection. */
    rig_start(&r, 0, IDLE_MS, 4 * IDLE_MS, 1);
    int64_t start = now_ms();
    haul_event ev = client_event(&r, 5000);
    CHECK_EQ(ev.type, HAUL_EV_PIPE_DOWN);
    CHECK_EQ(ev.error, HAUL_ETIMEDOUT);
    CHECK_GE(now_ms() - start, IDLE_MS - 40);
    ev = client_event(&r, 5000);
    CHECK_EQ(ev.type, HAUL_EV_PIPE_UP);
    haul_engine_stats st;
    haul_engine_stats_get(r.client, &st);
    CHECK_EQ(st.keepalives_sent, 0);
    CHECK_GE(st.idle_timeouts, 1);
    rig_stop(&r);
}

/*
 * A large message crosses a slow path: the client's bytes trickle to the
 * server (64 KiB every 25 ms), so that the client's writes stall for
 * longer than its keepalive period and the transfer lasts many idle
 * periods. The server hears the trickle, the client hears the server's
 * keepalives: nothing times out, no connection is lost, and the message
 * arrives whole.
 */
TEST_TIMEOUT(busy_pipe_on_a_slow_path_is_not_timed_out, 60)
{
    rig r;
    rig_start(&r, KEEPALIVE_MS, IDLE_MS, IDLE_MS, 1);
    XXH3_state_t *sent = XXH3_createState();
    XXH3_64bits_reset(sent);
    proxy_set(&r.px, 0, 64 * 1024);
    int64_t start = now_ms();
    send_pattern(&r, 4 * MIB, 0, sent);
    haul_event ev = client_event(&r, 20000);
    int64_t took = now_ms() - start;
    harness_log("4 MiB over the slow path took %lld ms", (long long)took);
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
    CHECK_GT(took, 3 * IDLE_MS);
    wait_server_messages(&r, 1, 5000);

    haul_engine_stats cst, sst;
    haul_engine_stats_get(r.client, &cst);
    haul_engine_stats_get(r.server, &sst);
    CHECK_EQ(cst.connections_lost, 0);
    CHECK_EQ(sst.connections_lost, 0);
    CHECK_EQ(cst.idle_timeouts, 0);
    CHECK_EQ(sst.idle_timeouts, 0);
    /* The client heard the server's keepalives. */
    CHECK_GE(cst.keepalives_received, 3);
    pthread_mutex_lock(&r.app.mu);
    CHECK_EQ(r.app.nnotes, 0);
    CHECK_EQ(XXH3_64bits_digest(r.app.hash), XXH3_64bits_digest(sent));
    pthread_mutex_unlock(&r.app.mu);
    XXH3_freeState(sent);
    rig_stop(&r);
}

/* The documented bounds of the two periods. */
TEST(liveness_bounds_are_checked)
{
    harness_strerror = haul_strerror;
    haul_engine_config c;
    haul_engine_config_init(&c);
    CHECK_EQ(c.keepalive_ms, 5000);
    CHECK_EQ(c.idle_timeout_ms, 15000);
    haul_engine *e = NULL;
    c.keepalive_ms = 5;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    c.keepalive_ms = 3600001;
    c.idle_timeout_ms = 0;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    c.keepalive_ms = 100;
    c.idle_timeout_ms = 49;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    c.idle_timeout_ms = 100; /* not above the keepalive period */
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    c.idle_timeout_ms = 86400001;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    c.keepalive_ms = 0;
    c.idle_timeout_ms = 0;
    CHECK_OK(haul_engine_new(&c, &e));
    haul_engine_free(e);
    CHECK_STR_EQ(haul_event_name(HAUL_EV_PIPE_DOWN), "PIPE_DOWN");
    CHECK_STR_EQ(haul_event_name(HAUL_EV_PIPE_UP), "PIPE_UP");
}
