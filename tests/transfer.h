/*
 * transfer.h - what the transfer tests (mux, pipes, sizes, threads) share
 * on top of util.h: engines built from a whole configuration, a server (an
 * engine, a loopback listener and the sink), and streams: client sessions
 * whose sent messages are hashed in order, so that the sink's hash of what
 * arrived can be held against them.
 *
 * Include it after harness.h and util.h. The stream calls are for tests
 * whose client events are all taken by one thread; a test that spreads a
 * client engine over several threads keeps its own books and uses only
 * the engine, server and verification calls.
 */
#ifndef HAUL_TESTS_TRANSFER_H
#define HAUL_TESTS_TRANSFER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "haul.h"
#include "util.h"

/* How long a transfer test waits for any one thing before it fails. */
#define TRANSFER_WAIT_MS 30000

static inline int64_t transfer_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Creates an engine from a full configuration, with the log level that
 * HAUL_TEST_LOG asks for (as engine_quiet does). */
static inline haul_engine *engine_with(haul_engine_config *c)
{
    c->log_level = getenv("HAUL_TEST_LOG") ? atoi(getenv("HAUL_TEST_LOG")) : HAUL_LOG_WARN;
    haul_engine *e = NULL;
    CHECK_OK(haul_engine_new(c, &e));
    return e;
}

/* ---- the server ------------------------------------------------------------ */

typedef struct server {
    haul_engine *engine;
    sink sink;
    char address[160];
} server;

/* Listens on a loopback port of the system's choice and starts the sink on
 * the engine, which the server then owns. lc may be NULL for defaults. */
static inline void server_start(server *sv, haul_engine *e, const haul_listen_config *lc)
{
    CHECK(e != NULL);
    sv->engine = e;
    CHECK_OK(haul_listen(e, "127.0.0.1:0", lc));
    CHECK_OK(haul_listen_address(e, sv->address, sizeof(sv->address)));
    CHECK_OK(sink_start(&sv->sink, e));
}

/* Stops the sink, frees the server's sessions and then its engine. */
static inline void server_stop(server *sv)
{
    sink_stop(&sv->sink);
    haul_engine_free(sv->engine);
}

/* The sink's books on the session of a principal (sink mutex held). */
static inline sink_session *sink_by_principal(sink *k, const char *principal)
{
    for (int i = 0; i < k->nsessions; i++)
        if (strcmp(haul_session_principal(k->sessions[i].session), principal) == 0)
            return &k->sessions[i];
    return NULL;
}

/* Waits until the sink has taken `messages` messages of the principal's
 * session. Returns 1 when it has. */
static inline int sink_wait_messages(sink *k, const char *principal, uint64_t messages, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&k->mu);
    int rc = 0;
    sink_session *ss;
    while (((ss = sink_by_principal(k, principal)) == NULL || ss->messages < messages) && rc == 0)
        rc = pthread_cond_timedwait(&k->cond, &k->mu, &until);
    int ok = ss != NULL && ss->messages >= messages;
    pthread_mutex_unlock(&k->mu);
    return ok;
}

/*
 * Checks that the sink took, on the principal's session, exactly
 * `messages` messages of `bytes` bytes in all, in order, and that their
 * concatenation hashes to `digest`: every message arrived whole, once and
 * in its place.
 */
static inline void sink_verify(sink *k, const char *principal, uint64_t messages, uint64_t bytes,
                               XXH64_hash_t digest)
{
    pthread_mutex_lock(&k->mu);
    sink_session *ss = sink_by_principal(k, principal);
    int found = ss != NULL;
    uint64_t got_messages = found ? ss->messages : 0, got_bytes = found ? ss->bytes : 0;
    int order_broken = found ? ss->order_broken : 0;
    XXH64_hash_t got_digest = found ? XXH3_64bits_digest(ss->hash) : 0;
    pthread_mutex_unlock(&k->mu);
    if (!found)
        harness_log("the server has no session of principal %s", principal);
    else if (got_messages != messages || got_bytes != bytes || order_broken || got_digest != digest)
        harness_log("session %s: sent %llu messages, %llu bytes; the server took %llu, %llu%s",
                    principal, (unsigned long long)messages, (unsigned long long)bytes,
                    (unsigned long long)got_messages, (unsigned long long)got_bytes,
                    order_broken ? ", out of order" : "");
    CHECK(found);
    CHECK_EQ(got_messages, messages);
    CHECK_EQ(got_bytes, bytes);
    CHECK(!order_broken);
    CHECK_EQ(got_digest, digest);
}

/* ---- streams: client sessions whose events one thread takes ---------------- */

typedef struct stream {
    haul_session *session;
    char principal[32];
    XXH3_state_t *hash; /* of every message accepted, in order */
    uint64_t sent;      /* messages haul_send* accepted; also the next tag */
    uint64_t bytes;     /* their bytes */
    uint64_t acked;     /* HAUL_EV_MESSAGE_SENT taken */
    uint32_t window;    /* the WndSize of the last MESSAGE_SENT */
    int open;
    int closed;
    int close_error;
} stream;

/* Asks for a session with the given configuration (destination and the
 * rest filled in by the caller) under its own principal. */
static inline void stream_open(stream *st, haul_engine *e, haul_session_config *sc,
                               const char *principal)
{
    memset(st, 0, sizeof(*st));
    snprintf(st->principal, sizeof(st->principal), "%s", principal);
    st->hash = XXH3_createState();
    CHECK(st->hash != NULL);
    XXH3_64bits_reset(st->hash);
    sc->principal = st->principal;
    sc->data = st;
    CHECK_OK(haul_session_new(e, sc, &st->session));
}

/*
 * Takes the client engine's events for up to timeout_ms and books them on
 * their streams. A message that fails or a session that is refused ends
 * the test: none is expected here. Returns the number of events taken.
 */
static inline int stream_pump(haul_engine *e, int timeout_ms)
{
    haul_event evs[64];
    int n = haul_engine_wait(e, evs, 64, timeout_ms);
    CHECK_GE(n, 0);
    for (int i = 0; i < n; i++) {
        const haul_event *ev = &evs[i];
        stream *st = haul_session_data(ev->session);
        CHECK(st != NULL);
        switch (ev->type) {
        case HAUL_EV_SESSION_OPEN:
            st->open = 1;
            break;
        case HAUL_EV_MESSAGE_SENT:
            /* Acknowledgements are cumulative and reported in order; the
             * tag is the message's index in its stream. */
            CHECK_EQ(ev->tag, st->acked);
            st->acked++;
            st->window = ev->window;
            break;
        case HAUL_EV_SESSION_CLOSED:
            st->closed = 1;
            st->close_error = ev->error;
            break;
        case HAUL_EV_WINDOW_OPENED:
            break;
        default:
            harness_log("session %s: unexpected %s (%s)", st->principal, haul_event_name(ev->type),
                        haul_strerror(ev->error));
            CHECK(ev->type != HAUL_EV_MESSAGE_FAILED && ev->type != HAUL_EV_SESSION_REFUSED);
            break;
        }
    }
    return n;
}

static inline void streams_wait_open(haul_engine *e, stream *sts, int n)
{
    int64_t deadline = transfer_now_ms() + TRANSFER_WAIT_MS;
    for (int i = 0; i < n; i++) {
        while (!sts[i].open && transfer_now_ms() < deadline)
            stream_pump(e, 100);
        CHECK(sts[i].open);
    }
}

/* Books a message that a haul_send* call with tag st->sent accepted. */
static inline void stream_book(stream *st, const void *buf, size_t len)
{
    XXH3_64bits_update(st->hash, buf, len);
    st->sent++;
    st->bytes += len;
}

/* One haul_send; on success the message is booked on the stream. */
static inline int stream_send(stream *st, const void *buf, size_t len)
{
    int rc = haul_send(st->session, buf, len, st->sent);
    if (rc == 0)
        stream_book(st, buf, len);
    return rc;
}

/* Sends one message, taking events while the output queue is full. */
static inline void stream_send_wait(haul_engine *e, stream *st, const void *buf, size_t len)
{
    int64_t deadline = transfer_now_ms() + TRANSFER_WAIT_MS;
    for (;;) {
        int rc = stream_send(st, buf, len);
        if (rc != HAUL_EQUEUEFULL) {
            CHECK_OK(rc);
            return;
        }
        CHECK_LT(transfer_now_ms(), deadline);
        stream_pump(e, 100);
    }
}

/* Waits until every message of the streams has been acknowledged. */
static inline void streams_wait_acked(haul_engine *e, stream *sts, int n)
{
    int64_t deadline = transfer_now_ms() + TRANSFER_WAIT_MS;
    for (int i = 0; i < n; i++) {
        while (sts[i].acked < sts[i].sent && transfer_now_ms() < deadline)
            stream_pump(e, 100);
        CHECK_EQ(sts[i].acked, sts[i].sent);
    }
}

/* Closes the streams in order and waits for both sides to see them
 * closed without error. */
static inline void streams_close(haul_engine *e, stream *sts, int n, server *sv)
{
    for (int i = 0; i < n; i++)
        CHECK_OK(haul_session_close(sts[i].session));
    int64_t deadline = transfer_now_ms() + TRANSFER_WAIT_MS;
    for (int i = 0; i < n; i++) {
        while (!sts[i].closed && transfer_now_ms() < deadline)
            stream_pump(e, 100);
        CHECK(sts[i].closed);
        CHECK_OK(sts[i].close_error);
    }
    if (sv != NULL)
        CHECK(sink_wait_closed(&sv->sink, n, TRANSFER_WAIT_MS));
}

/* Checks that the server took exactly what the stream sent. */
static inline void stream_verify(server *sv, stream *st)
{
    sink_verify(&sv->sink, st->principal, st->sent, st->bytes, XXH3_64bits_digest(st->hash));
}

static inline void stream_free(stream *st)
{
    haul_session_free(st->session);
    XXH3_freeState(st->hash);
    st->session = NULL;
    st->hash = NULL;
}

#endif
