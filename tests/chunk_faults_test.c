/*
 * chunk_faults_test.c - chunks cut short, sent twice, or never whole.
 *
 * The first tests play the sender by hand, on raw sockets, against a
 * real receiving engine (the sink of util.h), so that the receiver sees
 * exactly the order of bytes that a fault produces: a chunk half written
 * on one connection that the peer then half-closes (FIN), the same chunk
 * sent again on another connection, and the two copies interleaved. The
 * receiver must take the chunk from whichever copy completes, whatever
 * the order in which their headers came, and a copy that ends early must
 * never undo another. Headers are built byte by byte by raw_peer.h, as
 * src/net/frame.h lays them out, so that the test does not share the
 * codec it tests.
 *
 * The later tests run two real engines and break, stall or cut their
 * connections with the internal test hooks of core/engine.h: a fault that
 * breaks every connection of a pipe at once, and a file that shrinks
 * while haul_send_file() sends it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/engine.h"
#include "harness.h"
#include "pki.h"
#include "raw_peer.h"
#include "util.h"

#define CHUNK 262144u /* the chunk size the raw sender announces */

/* ---- frames by hand ------------------------------------------------------ */

/* Reads frames from any of the n sockets (-1 entries are skipped) until
 * one of `type` comes, for up to ms; its payload is dropped. Returns 1
 * with *out set when it came. */
static int await_frame(const int *fds, int n, int type, raw_header *out, int ms)
{
    const int64_t deadline = now_ms() + ms;
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd[4];
        int np = 0;
        for (int i = 0; i < n && np < 4; i++)
            if (fds[i] >= 0)
                pfd[np++] = (struct pollfd){.fd = fds[i], .events = POLLIN};
        int r = poll(pfd, (nfds_t)np, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        for (int i = 0; i < np; i++) {
            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            raw_header h;
            if (!raw_read_frame(pfd[i].fd, &h, NULL, 0, 65536, 2000))
                return 0;
            if (h.type == type) {
                *out = h;
                return 1;
            }
        }
    }
}

/* Waits for an ACK that acknowledges every message below `seq`; earlier
 * ones (a connection loss makes the receiver repeat its last) are
 * skipped. */
static int await_ack(const int *fds, int n, uint64_t seq, int ms)
{
    raw_header h;
    while (await_frame(fds, n, T_ACK, &h, ms))
        if (h.seq >= seq) {
            CHECK_EQ(h.seq, seq);
            return 1;
        }
    return 0;
}

/* ---- a raw sender ---------------------------------------------------------- */

#define PIPE_ID 0x6861756c74657374ull
#define SESSION 7u

/* Opens connection `index` of the raw pipe: HELLO, then its HELLO_ACK. */
static int raw_join(const char *address, unsigned index)
{
    int fd = raw_connect(address);
    raw_send_hello(fd, PIPE_ID, index, CHUNK);
    raw_header got;
    CHECK(await_frame(&fd, 1, T_HELLO_ACK, &got, 5000));
    return fd;
}

/* Opens session SESSION on the raw pipe: SYNC on fd, SYNC_ACK on any of
 * fds, and the client's first ACK, which opens the server's window. */
static void raw_open(int fd, const int *fds, int n, uint64_t max_message)
{
    const char *principal = "CHUNK_FAULTS";
    size_t plen = strlen(principal);
    raw_header h = {.version = HAUL_PROTOCOL_VERSION,
                    .type = T_SYNC,
                    .len = (uint32_t)(2 + plen),
                    .session = SESSION,
                    .offset = max_message,
                    .total = 64u << 20};
    uint8_t payload[64];
    raw_put_le(payload, plen, 2);
    memcpy(payload + 2, principal, plen);
    raw_send_header(fd, &h);
    raw_send_all(fd, payload, 2 + plen);
    raw_header got;
    CHECK(await_frame(fds, n, T_SYNC_ACK, &got, 5000));
    CHECK_GE(got.aux, 1);
    raw_header ack = {
        .version = HAUL_PROTOCOL_VERSION, .type = T_ACK, .session = SESSION, .aux = 16};
    raw_send_header(fd, &ack);
}

static raw_header chunk_header(uint64_t seq, uint64_t offset, uint64_t total)
{
    uint64_t len = total - offset < CHUNK ? total - offset : CHUNK;
    raw_header h = {.version = HAUL_PROTOCOL_VERSION,
                    .type = T_CHUNK,
                    .len = (uint32_t)len,
                    .session = SESSION,
                    .seq = seq,
                    .offset = offset,
                    .total = total};
    return h;
}

/* Waits until the receiving engine has taken chunk headers worth `bytes`
 * in all (it counts a chunk's bytes when it accepts its header) and lost
 * `lost` connections. The pause between looks only paces the loop. */
static void await_receiver(haul_engine *server, uint64_t bytes, uint64_t lost)
{
    for (int waited = 0;; waited++) {
        haul_engine_stats st;
        haul_engine_stats_get(server, &st);
        if (st.bytes_received >= bytes && st.connections_lost >= lost) {
            CHECK_EQ(st.bytes_received, bytes);
            return;
        }
        CHECK_LT(waited, 5000);
        poll(NULL, 0, 1);
    }
}

typedef struct raw_rig {
    haul_engine *server;
    sink k;
    char address[128];
    uint8_t *body;
    uint64_t len;
} raw_rig;

/* The I/O threads of the receiving engine. With two, the connections of
 * the raw pipe are spread over both, and the copies of a chunk are read
 * on two threads at once. */
static unsigned rig_threads = 1;

static void rig_start(raw_rig *r, uint64_t len)
{
    harness_strerror = haul_strerror;
    r->server = engine_quiet(rig_threads, 0);
    CHECK(r->server != NULL);
    CHECK_OK(haul_listen(r->server, "127.0.0.1:0", NULL));
    CHECK_OK(haul_listen_address(r->server, r->address, sizeof(r->address)));
    CHECK_OK(sink_start(&r->k, r->server));
    r->len = len;
    r->body = malloc(len);
    CHECK(r->body != NULL);
    fill_pattern(r->body, len, 42);
}

/* Starts the rig for a message of len bytes, joins two connections of
 * the raw pipe (fds[0] of index 0, fds[1] of index 1) and opens the
 * session on fds[0] for messages up to len bytes. */
static void rig_open(raw_rig *r, uint64_t len, int fds[2])
{
    rig_start(r, len);
    fds[0] = raw_join(r->address, 0);
    fds[1] = raw_join(r->address, 1);
    raw_open(fds[0], fds, 2, len);
}

/* The sink has exactly the one message of the rig, whole, once. */
static void rig_check_delivered(raw_rig *r)
{
    /* The ACK may overtake the sink's taking of the message. */
    pthread_mutex_lock(&r->k.mu);
    for (int waited = 0; r->k.nsessions == 0 || r->k.sessions[0].messages == 0; waited += 5) {
        CHECK_LT(waited, 5000);
        pthread_mutex_unlock(&r->k.mu);
        poll(NULL, 0, 5);
        pthread_mutex_lock(&r->k.mu);
    }
    CHECK_EQ(r->k.nsessions, 1);
    sink_session *ss = &r->k.sessions[0];
    CHECK_EQ(ss->messages, 1);
    CHECK_EQ(ss->bytes, r->len);
    CHECK_EQ(XXH3_64bits_digest(ss->hash), XXH3_64bits(r->body, r->len));
    pthread_mutex_unlock(&r->k.mu);
    haul_engine_stats st;
    haul_engine_stats_get(r->server, &st);
    CHECK_EQ(st.messages_received, 1);
}

static void rig_stop(raw_rig *r)
{
    sink_stop(&r->k);
    haul_engine_free(r->server);
    free(r->body);
}

/*
 * The fault of a half-closed connection, as the receiver sees it: the
 * chunk's copy sent again on B arrives first and is half read; then the
 * late copy of A (its connection was half-closed by the sender in the
 * middle of the chunk) arrives, and A ends early. B's copy must still
 * complete the chunk: the message is delivered and acknowledged on B.
 */
static void late_copy_ending_early(void)
{
    raw_rig r;
    int fds[2];
    rig_open(&r, CHUNK, fds);
    int a = fds[0], b = fds[1];

    raw_header h = chunk_header(0, 0, CHUNK);
    raw_send_header(b, &h);
    raw_send_all(b, r.body, CHUNK / 2);
    await_receiver(r.server, CHUNK, 0);

    raw_send_header(a, &h);
    raw_send_all(a, r.body, CHUNK / 4);
    CHECK_OK(shutdown(a, SHUT_WR));
    await_receiver(r.server, 2 * CHUNK, 1);
    close(a);

    raw_send_all(b, r.body + CHUNK / 2, CHUNK / 2);
    int live[1] = {b};
    CHECK(await_ack(live, 1, 1, 5000));
    rig_check_delivered(&r);
    close(b);
    rig_stop(&r);
}

TEST_TIMEOUT(late_copy_ending_early_keeps_the_resent_copy, 30)
{
    late_copy_ending_early();
}

TEST_TIMEOUT(late_copy_ending_early_keeps_the_resent_copy_on_two_threads, 30)
{
    rig_threads = 2;
    late_copy_ending_early();
}

/* The other order: the late copy completes the chunk while the resent
 * copy is half read. The message is delivered once; the rest of the
 * resent copy is read and dropped as a duplicate. */
static void late_copy_completing(void)
{
    raw_rig r;
    int fds[2];
    rig_open(&r, 2 * CHUNK, fds);
    int a = fds[0], b = fds[1];

    raw_header h0 = chunk_header(0, 0, 2 * CHUNK);
    raw_header h1 = chunk_header(0, CHUNK, 2 * CHUNK);
    raw_send_header(b, &h0);
    raw_send_all(b, r.body, CHUNK / 2);
    await_receiver(r.server, CHUNK, 0);
    raw_send_header(a, &h0);
    raw_send_all(a, r.body, CHUNK);
    raw_send_header(a, &h1);
    raw_send_all(a, r.body + CHUNK, CHUNK);
    CHECK(await_ack(fds, 2, 1, 5000));
    /* The rest of B's copy, then a frame after it that must be read as a
     * header: B stays in step. */
    raw_send_all(b, r.body + CHUNK / 2, CHUNK / 2);
    raw_header again = chunk_header(0, CHUNK, 2 * CHUNK);
    raw_send_header(b, &again);
    raw_send_all(b, r.body + CHUNK, CHUNK);
    /* A chunk of a delivered message is answered with the ACK again. */
    CHECK(await_ack(fds, 2, 1, 5000));
    rig_check_delivered(&r);
    haul_engine_stats st;
    haul_engine_stats_get(r.server, &st);
    CHECK_EQ(st.protocol_errors, 0);
    CHECK_EQ(st.connections_lost, 0);
    close(a);
    close(b);
    rig_stop(&r);
}

TEST_TIMEOUT(late_copy_completing_wins_once, 30)
{
    late_copy_completing();
}

TEST_TIMEOUT(late_copy_completing_wins_once_on_two_threads, 30)
{
    rig_threads = 2;
    late_copy_completing();
}

/* Both copies end early: the chunk is free again, and the copy sent on a
 * third connection is taken. */
static void nobody_completed(void)
{
    raw_rig r;
    int fds[2];
    rig_open(&r, CHUNK, fds);
    int a = fds[0], b = fds[1];

    raw_header h = chunk_header(0, 0, CHUNK);
    raw_send_header(a, &h);
    raw_send_all(a, r.body, CHUNK / 3);
    await_receiver(r.server, CHUNK, 0);
    raw_send_header(b, &h);
    raw_send_all(b, r.body, CHUNK / 2);
    await_receiver(r.server, 2 * CHUNK, 0);
    CHECK_OK(shutdown(b, SHUT_WR));
    await_receiver(r.server, 2 * CHUNK, 1);
    CHECK_OK(shutdown(a, SHUT_WR));
    await_receiver(r.server, 2 * CHUNK, 2);
    close(a);
    close(b);

    int c = raw_join(r.address, 2);
    raw_send_header(c, &h);
    raw_send_all(c, r.body, CHUNK);
    CHECK(await_ack(&c, 1, 1, 5000));
    rig_check_delivered(&r);
    close(c);
    rig_stop(&r);
}

TEST_TIMEOUT(chunk_nobody_completed_is_taken_again, 30)
{
    nobody_completed();
}

TEST_TIMEOUT(chunk_nobody_completed_is_taken_again_on_two_threads, 30)
{
    rig_threads = 2;
    nobody_completed();
}

/* The connection of each copy: which thread of the receiving engine reads
 * it, as the engine records it. */
static int reader_loop(haul_engine *e, unsigned index)
{
    pthread_mutex_lock(&e->mu);
    int loop = -1;
    haul__list *p;
    haul__list_each(p, &e->conns)
    {
        haul__conn *c = HAUL__CONTAINER(p, haul__conn, all_link);
        if (c->pipe && c->state == HAUL__CONN_JOINED && c->index == index)
            loop = (c->move_to ? c->move_to : c->loop)->index;
    }
    pthread_mutex_unlock(&e->mu);
    return loop;
}

typedef struct copy_writer {
    int fd;
    raw_header h;
    const uint8_t *body;
    size_t len;
} copy_writer;

static void *copy_write(void *arg)
{
    copy_writer *w = arg;
    raw_send_header(w->fd, &w->h);
    raw_send_all(w->fd, w->body, w->len);
    return NULL;
}

/*
 * Copies of every chunk arrive at the same moment on two connections of
 * one pipe that two threads of the receiver read: each message is one
 * chunk, written whole on both connections at once by two threads of the
 * sender. Whichever copy completes first delivers the message, once, with
 * its bytes intact; the other is dropped wherever its reader stands, and
 * never writes into a message that was delivered (under ThreadSanitizer,
 * such a write is a reported race with the application reading it).
 */
TEST_TIMEOUT(copies_read_on_two_threads_at_once_deliver_once, 60)
{
    enum { MESSAGES = 64 };
    rig_threads = 2;
    raw_rig r;
    int fds[2];
    rig_open(&r, CHUNK, fds);
    CHECK_NE(reader_loop(r.server, 0), -1);
    CHECK_NE(reader_loop(r.server, 0), reader_loop(r.server, 1));
    for (uint64_t seq = 0; seq < MESSAGES; seq++) {
        raw_header h = chunk_header(seq, 0, CHUNK);
        copy_writer w[2] = {{fds[0], h, r.body, CHUNK}, {fds[1], h, r.body, CHUNK}};
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
            CHECK_EQ(pthread_create(&t[i], NULL, copy_write, &w[i]), 0);
        for (int i = 0; i < 2; i++)
            pthread_join(t[i], NULL);
        CHECK(await_ack(fds, 2, seq + 1, 10000));
    }
    pthread_mutex_lock(&r.k.mu);
    for (int waited = 0; r.k.nsessions == 0 || r.k.sessions[0].messages < MESSAGES; waited += 5) {
        CHECK_LT(waited, 10000);
        pthread_mutex_unlock(&r.k.mu);
        poll(NULL, 0, 5);
        pthread_mutex_lock(&r.k.mu);
    }
    sink_session *ss = &r.k.sessions[0];
    CHECK_EQ(ss->messages, MESSAGES);
    CHECK_EQ(ss->bytes, (uint64_t)MESSAGES * CHUNK);
    CHECK(!ss->order_broken);
    XXH3_state_t *want = XXH3_createState();
    XXH3_64bits_reset(want);
    for (int i = 0; i < MESSAGES; i++)
        XXH3_64bits_update(want, r.body, CHUNK);
    CHECK_EQ(XXH3_64bits_digest(ss->hash), XXH3_64bits_digest(want));
    XXH3_freeState(want);
    pthread_mutex_unlock(&r.k.mu);
    haul_engine_stats st;
    haul_engine_stats_get(r.server, &st);
    CHECK_EQ(st.messages_received, MESSAGES);
    CHECK_EQ(st.protocol_errors, 0);
    CHECK_EQ(st.connections_lost, 0);
    close(fds[0]);
    close(fds[1]);
    rig_stop(&r);
}

/* ---- two engines ------------------------------------------------------------ */

#define MIB (1u << 20)

typedef struct pair {
    haul_engine *server, *client;
    sink k;
    haul_session *s;      /* the client's session */
    haul_session *remote; /* the server's side of it */
    unsigned connections;
    const haul_tls_config *tls; /* the client's, or NULL for plain TCP */
} pair;

/* Mutual TLS for a pair: a CA, the server's certificate and the client's,
 * of principal CHUNK_FAULTS, in a directory of their own. */
typedef struct pair_tls {
    char dir[64];
    char files[5][96];
    haul_tls_config server, client;
} pair_tls;

static void pair_tls_make(pair_tls *t)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/haul-chunk-faults-XXXXXX");
    CHECK(mkdtemp(t->dir) != NULL);
    const char *names[5] = {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"};
    for (int i = 0; i < 5; i++)
        snprintf(t->files[i], sizeof(t->files[i]), "%s/%s", t->dir, names[i]);
    pki_ca ca;
    CHECK_OK(pki_ca_new(&ca, "chunk faults CA", t->files[0]));
    pki_opts so = {.cn = "server", .serial = 2, .eku = "serverAuth"};
    CHECK_OK(pki_issue(&ca, &so, t->files[1], t->files[2]));
    pki_opts co = {.cn = "client", .serial = 3, .eku = "clientAuth", .principal = "CHUNK_FAULTS"};
    CHECK_OK(pki_issue(&ca, &co, t->files[3], t->files[4]));
    pki_ca_free(&ca);
    t->server = (haul_tls_config){
        .cert_file = t->files[1], .key_file = t->files[2], .ca_file = t->files[0]};
    t->client = (haul_tls_config){
        .cert_file = t->files[3], .key_file = t->files[4], .ca_file = t->files[0]};
}

static void pair_tls_remove(pair_tls *t)
{
    for (int i = 0; i < 5; i++)
        unlink(t->files[i]);
    rmdir(t->dir);
}

/* The I/O threads of both engines: with more than one, the connections of
 * a pipe spread over them on each side. */
static unsigned engine_threads = 1;

static haul_engine *engine_with(unsigned max_attempts, uint32_t chunk_size)
{
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.io_threads = engine_threads;
    if (max_attempts)
        c.max_attempts = max_attempts;
    if (chunk_size)
        c.chunk_size = chunk_size;
    c.log_level = getenv("HAUL_TEST_LOG") ? atoi(getenv("HAUL_TEST_LOG")) : HAUL_LOG_WARN;
    haul_engine *e = NULL;
    CHECK_OK(haul_engine_new(&c, &e));
    return e;
}

/* Joined connections of the session's pipe, as its statistics say. */
static unsigned conns_up(haul_session *s)
{
    haul_conn_stats st[16];
    int n = haul_pipe_stats(s, st, 16);
    unsigned up = 0;
    for (int i = 0; i < n && i < 16; i++)
        up += st[i].up ? 1 : 0;
    return up;
}

/* Waits until both sides of the pipe have every connection joined. The
 * client's engine wait paces the loop; no event is expected meanwhile. */
static void await_pipe_up(pair *p)
{
    for (int waited = 0;; waited += 10) {
        if (conns_up(p->s) == p->connections &&
            haul_pipe_stats(p->remote, NULL, 0) == (int)p->connections)
            return;
        CHECK_LT(waited, 10000);
        haul_event ev;
        CHECK(!next_event(p->client, &ev, 10));
    }
}

static void pair_open_tls(pair *p, haul_engine *client, unsigned connections, uint64_t max_message,
                          pair_tls *tls)
{
    harness_strerror = haul_strerror;
    memset(p, 0, sizeof(*p));
    p->server = engine_with(0, 0);
    p->client = client;
    p->connections = connections;
    p->tls = tls ? &tls->client : NULL;
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.input_queue = 4 * max_message;
    lc.tls = tls ? &tls->server : NULL;
    CHECK_OK(haul_listen(p->server, "127.0.0.1:0", &lc));
    char address[128];
    CHECK_OK(haul_listen_address(p->server, address, sizeof(address)));
    CHECK_OK(sink_start(&p->k, p->server));
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "CHUNK_FAULTS";
    sc.connections = connections;
    sc.max_message = max_message;
    sc.tls = p->tls;
    CHECK_OK(haul_session_new(client, &sc, &p->s));
    haul_event ev;
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &ev, 5000));
    for (int waited = 0; p->remote == NULL; waited += 10) {
        CHECK_LT(waited, 5000);
        pthread_mutex_lock(&p->k.mu);
        p->remote = p->k.nsessions ? p->k.sessions[0].session : NULL;
        pthread_mutex_unlock(&p->k.mu);
        if (p->remote == NULL)
            poll(NULL, 0, 10);
    }
    await_pipe_up(p);
}

static void pair_open(pair *p, haul_engine *client, unsigned connections, uint64_t max_message)
{
    pair_open_tls(p, client, connections, max_message, NULL);
}

static void pair_close(pair *p)
{
    haul_session_free(p->s);
    sink_stop(&p->k);
    haul_engine_free(p->client);
    haul_engine_free(p->server);
}

/*
 * With the receiver frozen (its socket buffers full, so that the message
 * cannot complete), waits until at least `carriers` live connections
 * carry chunks of the session's first message and a chunk of it was
 * written whole since its last round began; then, under one hold of the
 * engine's mutex, holds the dispatcher and shuts every connection of the
 * pipe down, as one network fault would. Returns the message's attempts
 * before the fault.
 */
static unsigned break_pipe_when_spread(pair *p, unsigned carriers)
{
    haul_engine *e = p->client;
    for (int waited = 0;; waited++) {
        pthread_mutex_lock(&e->mu);
        haul__pipe *pipe = p->s->pipe;
        haul__list *first = haul__list_first(&p->s->outq);
        CHECK(first != NULL);
        haul_message *m = HAUL__CONTAINER(first, haul_message, link);
        unsigned n = 0;
        for (unsigned i = 0; i < pipe->nconns; i++) {
            haul__conn *c = pipe->conns[i];
            int carries = 0;
            for (uint32_t j = 0; c && !c->dead && j < m->nchunks && !carries; j++)
                carries = m->carrier[j] == c->serial;
            n += (unsigned)carries;
        }
        if (n >= carriers && !m->resending) {
            unsigned attempts = m->attempts;
            e->debug_hold = 1;
            for (unsigned i = 0; i < pipe->nconns; i++)
                if (pipe->conns[i] && !pipe->conns[i]->dead)
                    shutdown(pipe->conns[i]->fd, SHUT_RDWR);
            pthread_mutex_unlock(&e->mu);
            harness_log("%u connections carried chunks of the message when they all broke", n);
            return attempts;
        }
        pthread_mutex_unlock(&e->mu);
        CHECK_LT(waited, 10000);
        poll(NULL, 0, 1);
    }
}

/* Waits until the client's engine has seen `lost` connections break. */
static void await_lost(pair *p, uint64_t lost)
{
    for (int waited = 0;; waited += 5) {
        haul_engine_stats st;
        haul_engine_stats_get(p->client, &st);
        if (st.connections_lost >= lost)
            return;
        CHECK_LT(waited, 10000);
        poll(NULL, 0, 5);
    }
}

/*
 * One fault breaks all eight connections that carry one large message.
 * That is one round of retransmission, whatever the number of
 * connections: with max_attempts 2 the message still goes through.
 */
static void one_fault_on_every_connection(void)
{
    pair p;
    pair_open(&p, engine_with(2, 0), 8, 32 * MIB);
    uint8_t *buf = malloc(32 * MIB);
    CHECK(buf != NULL);
    fill_pattern(buf, 32 * MIB, 5);
    CHECK_OK(haul__debug_freeze(p.remote, -1, 1));
    CHECK_OK(haul_send(p.s, buf, 32 * MIB, 1));
    CHECK_EQ(break_pipe_when_spread(&p, 8), 0);
    await_lost(&p, 8);
    /* Let the server see the old connections end, then send again. */
    CHECK_OK(haul__debug_freeze(p.remote, -1, 0));
    haul__debug_hold(p.client, 0);
    haul_event ev;
    CHECK(next_event(p.client, &ev, 20000));
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
    CHECK_EQ(ev.tag, 1);
    haul_engine_stats st;
    haul_engine_stats_get(p.client, &st);
    CHECK_GE(st.connections_lost, 8);
    CHECK_GT(st.chunks_resent, 0);
    pthread_mutex_lock(&p.k.mu);
    for (int waited = 0; p.k.sessions[0].messages == 0; waited += 5) {
        CHECK_LT(waited, 5000);
        pthread_mutex_unlock(&p.k.mu);
        poll(NULL, 0, 5);
        pthread_mutex_lock(&p.k.mu);
    }
    CHECK_EQ(p.k.sessions[0].messages, 1);
    CHECK_EQ(XXH3_64bits_digest(p.k.sessions[0].hash), XXH3_64bits(buf, 32 * MIB));
    pthread_mutex_unlock(&p.k.mu);
    free(buf);
    pair_close(&p);
}

TEST_TIMEOUT(one_fault_on_every_connection_is_one_attempt, 60)
{
    one_fault_on_every_connection();
}

TEST_TIMEOUT(one_fault_on_every_connection_is_one_attempt_on_four_threads, 60)
{
    engine_threads = 4;
    one_fault_on_every_connection();
}

/* Two faults, each after the message's chunks went out again, are two
 * rounds: with max_attempts 2 the second fails the message. */
static void second_round_of_losses(void)
{
    pair p;
    pair_open(&p, engine_with(2, 0), 4, 32 * MIB);
    uint8_t *buf = malloc(32 * MIB);
    CHECK(buf != NULL);
    fill_pattern(buf, 32 * MIB, 6);
    CHECK_OK(haul__debug_freeze(p.remote, -1, 1));
    CHECK_OK(haul_send(p.s, buf, 32 * MIB, 1));
    free(buf);
    CHECK_EQ(break_pipe_when_spread(&p, 4), 0);
    await_lost(&p, 4);
    CHECK_OK(haul__debug_freeze(p.remote, -1, 0));
    /* The pipe comes back; the new connections are frozen on the server
     * before anything is sent on them. */
    await_pipe_up(&p);
    CHECK_OK(haul__debug_freeze(p.remote, -1, 1));
    /* Losses this close to the round's beginning would still belong to
     * it: the second fault comes later, as a separate fault does. The
     * wait is the rule under test, not a synchronisation. */
    usleep((HAUL__ROUND_COALESCE_MS + 20) * 1000);
    haul__debug_hold(p.client, 0);
    CHECK_EQ(break_pipe_when_spread(&p, 1), 1);
    haul_event ev;
    CHECK(next_event(p.client, &ev, 10000));
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_FAILED);
    CHECK_EQ(ev.error, HAUL_EATTEMPTS);
    CHECK(next_event(p.client, &ev, 10000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_CLOSED);
    CHECK_EQ(ev.error, HAUL_EATTEMPTS);
    CHECK_OK(haul__debug_freeze(p.remote, -1, 0));
    pair_close(&p);
}

TEST_TIMEOUT(second_round_of_losses_fails_the_message, 60)
{
    second_round_of_losses();
}

TEST_TIMEOUT(second_round_of_losses_fails_the_message_on_four_threads, 60)
{
    engine_threads = 4;
    second_round_of_losses();
}

/* ---- a file that shrinks while it is sent ------------------------------------ */

#define OTHER_MESSAGES 16
#define OTHER_LEN (64u * 1024)

/* A file of len bytes (sparse: nothing is written), unlinked at once. */
static int shrinking_file(uint64_t len)
{
    char path[] = "/tmp/haul-chunk-faults-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK_OK(unlink(path));
    CHECK_OK(ftruncate(fd, (off_t)len));
    return fd;
}

/* A second session on the pipe of p (the same destination), open. */
static haul_session *second_session(pair *p, uint64_t max_message)
{
    char address[128];
    CHECK_OK(haul_listen_address(p->server, address, sizeof(address)));
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    /* Over TLS, every session of the pipe is of its certificate's
     * principal. */
    sc.principal = p->tls ? "CHUNK_FAULTS" : "CHUNK_FAULTS_OTHER";
    sc.max_message = max_message;
    sc.tls = p->tls;
    haul_session *s2 = NULL;
    CHECK_OK(haul_session_new(p->client, &sc, &s2));
    haul_event ev;
    CHECK(wait_for(p->client, HAUL_EV_SESSION_OPEN, &ev, 5000));
    CHECK(ev.session == s2);
    return s2;
}

/* Queues the other session's messages, and returns the hash of them all. */
static uint64_t send_others(haul_session *s2)
{
    uint8_t *buf = malloc(OTHER_LEN * OTHER_MESSAGES);
    CHECK(buf != NULL);
    fill_pattern(buf, OTHER_LEN * OTHER_MESSAGES, 77);
    for (unsigned i = 0; i < OTHER_MESSAGES; i++)
        CHECK_OK(haul_send(s2, buf + (size_t)i * OTHER_LEN, OTHER_LEN, 1000 + i));
    uint64_t hash = XXH3_64bits(buf, OTHER_LEN * OTHER_MESSAGES);
    free(buf);
    return hash;
}

/*
 * The client's events: the file's message fails with EIO and its session
 * closes with EIO, while every message of the other session is
 * acknowledged, in order. Then the server: the other session got each of
 * its messages exactly once, the file's session was aborted, and no
 * connection broke on either side.
 */
static void check_file_failed_alone(pair *p, haul_session *s2, uint64_t others_hash)
{
    int failed = 0, closed = 0;
    unsigned acked = 0;
    while (!(closed && acked == OTHER_MESSAGES)) {
        haul_event ev;
        CHECK(next_event(p->client, &ev, 10000));
        if (ev.session == p->s) {
            CHECK(!closed);
            if (!failed) {
                CHECK_EQ(ev.type, HAUL_EV_MESSAGE_FAILED);
                CHECK_EQ(ev.tag, 100);
                CHECK_EQ(ev.error, HAUL_EIO);
                failed = 1;
            } else {
                CHECK_EQ(ev.type, HAUL_EV_SESSION_CLOSED);
                CHECK_EQ(ev.error, HAUL_EIO);
                closed = 1;
            }
        } else {
            CHECK(ev.session == s2);
            CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
            CHECK_EQ(ev.tag, 1000 + acked);
            acked++;
        }
    }
    /* The server's side of the file's session ends on the ABORT. */
    for (int waited = 0;; waited += 5) {
        pthread_mutex_lock(&p->k.mu);
        int done = p->k.sessions[0].closed && p->k.sessions[1].messages == OTHER_MESSAGES;
        pthread_mutex_unlock(&p->k.mu);
        if (done)
            break;
        CHECK_LT(waited, 10000);
        poll(NULL, 0, 5);
    }
    pthread_mutex_lock(&p->k.mu);
    CHECK_EQ(p->k.nsessions, 2);
    CHECK_EQ(p->k.sessions[0].close_error, HAUL_EABORTED);
    CHECK_EQ(p->k.sessions[0].messages, 0);
    CHECK_EQ(p->k.sessions[1].messages, OTHER_MESSAGES);
    CHECK_EQ(p->k.sessions[1].order_broken, 0);
    CHECK_EQ(XXH3_64bits_digest(p->k.sessions[1].hash), others_hash);
    CHECK(!p->k.sessions[1].closed);
    pthread_mutex_unlock(&p->k.mu);
    haul_engine_stats st;
    haul_engine_stats_get(p->client, &st);
    CHECK_EQ(st.connections_lost, 0);
    CHECK_EQ(st.chunks_resent, 0);
    haul_engine_stats_get(p->server, &st);
    CHECK_EQ(st.connections_lost, 0);
    CHECK_EQ(st.protocol_errors, 0);
    CHECK_EQ(st.messages_received, OTHER_MESSAGES);
}

/* The file shrinks after haul_send_file() and before its later chunks
 * are taken: those are never sent. */
TEST_TIMEOUT(file_shrunk_before_its_chunks_fails_with_eio, 60)
{
    pair p;
    pair_open(&p, engine_with(0, 0), 1, 4 * MIB);
    haul_session *s2 = second_session(&p, OTHER_LEN);
    int fd = shrinking_file(MIB);
    haul__debug_hold(p.client, 1);
    CHECK_OK(haul_send_file(p.s, fd, 0, MIB, 100));
    uint64_t hash = send_others(s2);
    CHECK_OK(ftruncate(fd, 300 * 1024));
    haul__debug_hold(p.client, 0);
    check_file_failed_alone(&p, s2, hash);
    close(fd);
    haul_session_free(s2);
    pair_close(&p);
}

/*
 * The file shrinks while a chunk of it is being written: the receiver is
 * frozen, so the client's socket fills in the middle of the first of
 * three 16 MiB chunks, and the file is cut short then. The frame is
 * completed with padding, and the other session's messages, queued after
 * it on the same single connection, arrive: the connection stayed in
 * step.
 */
static void shrink_inside_a_chunk(pair_tls *tls)
{
    pair p;
    pair_open_tls(&p, engine_with(0, 16 * MIB), 1, 48 * MIB, tls);
    haul_session *s2 = second_session(&p, OTHER_LEN);
    int fd = shrinking_file(48 * MIB);
    CHECK_OK(haul__debug_freeze(p.remote, -1, 1));
    CHECK_OK(haul_send_file(p.s, fd, 0, 48 * MIB, 100));
    /* The client's only connection stops being writable: the frozen
     * receiver took what its buffers hold, the rest of the chunk waits. */
    pthread_mutex_lock(&p.client->mu);
    int cfd = p.s->pipe->conns[0]->fd;
    pthread_mutex_unlock(&p.client->mu);
    for (int waited = 0;; waited++) {
        struct pollfd pfd = {.fd = cfd, .events = POLLOUT};
        if (poll(&pfd, 1, 0) == 0)
            break;
        CHECK_LT(waited, 10000);
        poll(NULL, 0, 1);
    }
    CHECK_OK(ftruncate(fd, MIB));
    uint64_t hash = send_others(s2);
    CHECK_OK(haul__debug_freeze(p.remote, -1, 0));
    check_file_failed_alone(&p, s2, hash);
    close(fd);
    haul_session_free(s2);
    pair_close(&p);
}

TEST_TIMEOUT(file_shrunk_inside_a_chunk_is_padded, 60)
{
    shrink_inside_a_chunk(NULL);
}

/* The same over TLS, where file bodies are read into a buffer and
 * encrypted from it, and the padding is encrypted the same way. */
TEST_TIMEOUT(file_shrunk_inside_a_chunk_is_padded_over_tls, 60)
{
    pair_tls tls;
    pair_tls_make(&tls);
    shrink_inside_a_chunk(&tls);
    pair_tls_remove(&tls);
}

/* The I/O threads that the joined connections of the engine's one pipe
 * run on, as a bit mask; *n is how many connections there are. */
static uint64_t pipe_threads(haul_engine *e, unsigned *n)
{
    uint64_t mask = 0;
    *n = 0;
    pthread_mutex_lock(&e->mu);
    haul__list *p;
    haul__list_each(p, &e->conns)
    {
        haul__conn *c = HAUL__CONTAINER(p, haul__conn, all_link);
        if (c->pipe && !c->dead && c->state == HAUL__CONN_JOINED) {
            mask |= 1ull << (c->move_to ? c->move_to : c->loop)->index;
            (*n)++;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return mask;
}

/* A TLS pipe of four connections between engines of four I/O threads has
 * one connection on each thread on both sides, so that its records are
 * sealed and opened on four cores; a large message crosses it whole. */
TEST_TIMEOUT(pipe_connections_spread_over_the_threads_of_each_side, 60)
{
    engine_threads = 4;
    pair_tls tls;
    pair_tls_make(&tls);
    pair p;
    pair_open_tls(&p, engine_with(0, 0), 4, 16 * MIB, &tls);
    unsigned n;
    CHECK_EQ(pipe_threads(p.client, &n), 0xfu);
    CHECK_EQ(n, 4);
    CHECK_EQ(pipe_threads(p.server, &n), 0xfu);
    CHECK_EQ(n, 4);
    uint8_t *buf = malloc(16 * MIB);
    CHECK(buf != NULL);
    fill_pattern(buf, 16 * MIB, 9);
    CHECK_OK(haul_send(p.s, buf, 16 * MIB, 1));
    haul_event ev;
    CHECK(next_event(p.client, &ev, 20000));
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
    pthread_mutex_lock(&p.k.mu);
    for (int waited = 0; p.k.sessions[0].messages == 0; waited += 5) {
        CHECK_LT(waited, 5000);
        pthread_mutex_unlock(&p.k.mu);
        poll(NULL, 0, 5);
        pthread_mutex_lock(&p.k.mu);
    }
    CHECK_EQ(p.k.sessions[0].messages, 1);
    CHECK_EQ(XXH3_64bits_digest(p.k.sessions[0].hash), XXH3_64bits(buf, 16 * MIB));
    pthread_mutex_unlock(&p.k.mu);
    free(buf);
    pair_close(&p);
    pair_tls_remove(&tls);
}
