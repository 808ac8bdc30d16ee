/*
 * util.h - what the transport tests share: a pair of engines on loopback,
 * waiting for a given event, and a server application that accepts every
 * session and checks what arrives.
 */
#ifndef HAUL_TESTS_UTIL_H
#define HAUL_TESTS_UTIL_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "haul.h"

/* Milliseconds on CLOCK_MONOTONIC, truncated as the engine's clock is, so
 * that "no earlier than the timeout" can be checked exactly. */
static inline int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits up to ms for the next event of `type` on the engine; events of
 * other types are counted in skipped[] (if given) and dropped. Returns 1
 * when found. */
static inline int wait_for(haul_engine *e, int type, haul_event *out, int ms)
{
    for (;;) {
        haul_event ev;
        int n = haul_engine_wait(e, &ev, 1, ms);
        if (n <= 0)
            return 0;
        if ((int)ev.type == type) {
            if (out)
                *out = ev;
            return 1;
        }
    }
}

/* Takes the next event that is not a pipe event: PIPE_DOWN and PIPE_UP
 * are informational and come whenever every connection of a pipe breaks,
 * which many tests do on purpose. Tests of the pipe events call
 * haul_engine_wait() themselves. `ms` bounds the whole wait. */
static inline int next_event(haul_engine *e, haul_event *out, int ms)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int left = ms;;) {
        if (haul_engine_wait(e, out, 1, left) != 1)
            return 0;
        if (out->type != HAUL_EV_PIPE_DOWN && out->type != HAUL_EV_PIPE_UP)
            return 1;
        if (ms < 0)
            continue;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        left = ms - (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
        if (left < 0)
            left = 0;
    }
}

static inline haul_engine *engine_quiet(unsigned threads, uint64_t max_message)
{
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.io_threads = threads;
    if (max_message)
        c.max_message = max_message;
    c.log_level = getenv("HAUL_TEST_LOG") ? atoi(getenv("HAUL_TEST_LOG")) : HAUL_LOG_WARN;
    haul_engine *e = NULL;
    if (haul_engine_new(&c, &e) != 0)
        return NULL;
    return e;
}

/* Fills buf with bytes that depend on seed and position. */
static inline void fill_pattern(void *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    uint8_t *p = buf;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)(x >> (8 * (i & 7)));
}

/*
 * The sink: a server application on its own thread. It accepts every
 * session, takes every message at once, and keeps per session the count,
 * the bytes and an XXH3 of the concatenated messages, in order.
 */
#define SINK_MAX 64
typedef struct sink_session {
    haul_session *session;
    uint64_t messages, bytes;
    XXH3_state_t *hash;
    uint64_t last_seq_plus1;
    int order_broken;
    int closed;
    int close_error;
} sink_session;

typedef struct sink {
    haul_engine *engine;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    sink_session sessions[SINK_MAX];
    int nsessions;
    int closed;
    int stop;
    int hold; /* when set, messages are left in the input queue */
} sink;

static inline sink_session *sink_find(sink *k, haul_session *s)
{
    for (int i = 0; i < k->nsessions; i++)
        if (k->sessions[i].session == s)
            return &k->sessions[i];
    return NULL;
}

static inline void *sink_main(void *arg)
{
    sink *k = arg;
    haul_event evs[64];
    for (;;) {
        pthread_mutex_lock(&k->mu);
        int stop = k->stop;
        pthread_mutex_unlock(&k->mu);
        if (stop)
            break;
        int n = haul_engine_wait(k->engine, evs, 64, 50);
        for (int i = 0; i < n; i++) {
            haul_event *ev = &evs[i];
            pthread_mutex_lock(&k->mu);
            if (ev->type == HAUL_EV_SESSION_REQUEST) {
                if (k->nsessions < SINK_MAX) {
                    sink_session *ss = &k->sessions[k->nsessions++];
                    memset(ss, 0, sizeof(*ss));
                    ss->session = ev->session;
                    ss->hash = XXH3_createState();
                    XXH3_64bits_reset(ss->hash);
                    haul_session_accept(ev->session);
                } else {
                    haul_session_reject(ev->session, 1);
                }
            } else if (ev->type == HAUL_EV_MESSAGE_RECEIVED && !k->hold) {
                sink_session *ss = sink_find(k, ev->session);
                haul_message *m;
                while (ss && haul_recv(ev->session, &m) == 0) {
                    ss->messages++;
                    ss->bytes += haul_message_len(m);
                    if (haul_message_seq(m) + 1 != ss->last_seq_plus1 + 1)
                        ss->order_broken = 1;
                    ss->last_seq_plus1 = haul_message_seq(m) + 1;
                    XXH3_64bits_update(ss->hash, haul_message_data(m), haul_message_len(m));
                    haul_message_free(m);
                }
            } else if (ev->type == HAUL_EV_SESSION_CLOSED) {
                sink_session *ss = sink_find(k, ev->session);
                if (ss) {
                    ss->closed = 1;
                    ss->close_error = ev->error;
                }
                k->closed++;
            }
            pthread_cond_broadcast(&k->cond);
            pthread_mutex_unlock(&k->mu);
        }
    }
    return NULL;
}

static inline int sink_start(sink *k, haul_engine *e)
{
    memset(k, 0, sizeof(*k));
    k->engine = e;
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cond, NULL);
    return pthread_create(&k->thread, NULL, sink_main, k);
}

/* Waits until `closed` sessions have closed, up to ms. */
static inline int sink_wait_closed(sink *k, int closed, int ms)
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
    while (k->closed < closed && rc == 0)
        rc = pthread_cond_timedwait(&k->cond, &k->mu, &until);
    int ok = k->closed >= closed;
    pthread_mutex_unlock(&k->mu);
    return ok;
}

static inline void sink_stop(sink *k)
{
    pthread_mutex_lock(&k->mu);
    k->stop = 1;
    pthread_mutex_unlock(&k->mu);
    pthread_join(k->thread, NULL);
    for (int i = 0; i < k->nsessions; i++) {
        XXH3_freeState(k->sessions[i].hash);
        haul_session_free(k->sessions[i].session);
    }
}

#endif
