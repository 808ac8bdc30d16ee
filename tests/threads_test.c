/*
 * threads_test.c - one client engine used by several application threads
 * at once.
 *
 * Four sender threads each open two sessions of one client engine (two I/O
 * threads) to one server engine (two I/O threads), and send on both at
 * once. One more thread takes every client event and hands the
 * acknowledgements to the senders through a condition variable; a sender
 * whose output queue is full waits there and tries again. The queues are
 * small, so that this happens all the time. Every session's messages must
 * arrive whole and in order.
 */
#include "harness.h"

#include <pthread.h>
#include <stdlib.h>

#include "util.h"
#include "transfer.h"

#define KIB (1u << 10)
#define SENDERS 4
#define PER_SENDER 2
#define SESSIONS (SENDERS * PER_SENDER)
#define MESSAGES 64
#define MESSAGE (256u * KIB)

typedef struct app app;

/* One session. The sender thread alone touches `sent`, `bytes` and
 * `hash`; the rest is the event thread's and is read under app.mu. */
typedef struct tsession {
    app *app;
    haul_session *session;
    int index;
    char principal[16];
    XXH3_state_t *hash;
    uint64_t sent, bytes;
    uint64_t acked;
    int open, closed, close_error;
} tsession;

struct app {
    haul_engine *client;
    const char *address;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    tsession sessions[SESSIONS];
    int stop;
    int unexpected;      /* events no session should get, such as failures */
    uint64_t queue_full; /* how often a sender found its queue full */
    pthread_t events, senders[SENDERS];
    int sender_index[SENDERS];
};

static app the_app;

static void deadline_in(struct timespec *until, int ms)
{
    clock_gettime(CLOCK_REALTIME, until);
    until->tv_sec += ms / 1000;
    until->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until->tv_nsec >= 1000000000L) {
        until->tv_sec++;
        until->tv_nsec -= 1000000000L;
    }
}

/* The one thread that takes the client's events. */
static void *events_main(void *arg)
{
    app *a = arg;
    haul_event evs[64];
    for (;;) {
        pthread_mutex_lock(&a->mu);
        int stop = a->stop;
        pthread_mutex_unlock(&a->mu);
        if (stop)
            break;
        int n = haul_engine_wait(a->client, evs, 64, 50);
        pthread_mutex_lock(&a->mu);
        for (int i = 0; i < n; i++) {
            const haul_event *ev = &evs[i];
            tsession *ts = haul_session_data(ev->session);
            switch (ev->type) {
            case HAUL_EV_SESSION_OPEN:
                ts->open = 1;
                break;
            case HAUL_EV_MESSAGE_SENT:
                /* Tags are message indexes, acknowledged in order. */
                if (ev->tag != ts->acked)
                    a->unexpected++;
                ts->acked++;
                break;
            case HAUL_EV_WINDOW_OPENED:
                break;
            case HAUL_EV_SESSION_CLOSED:
                ts->closed = 1;
                ts->close_error = ev->error;
                break;
            default:
                harness_log("session %s: unexpected %s (%s)", ts->principal,
                            haul_event_name(ev->type), haul_strerror(ev->error));
                a->unexpected++;
                break;
            }
        }
        if (n > 0)
            pthread_cond_broadcast(&a->cond);
        pthread_mutex_unlock(&a->mu);
    }
    return NULL;
}

/* Waits (app.mu held) until done_ holds, an unexpected event came or
 * the deadline passed. */
#define WAIT_UNTIL(app_, done_, until_)                                                            \
    do {                                                                                           \
        int wait_rc_ = 0;                                                                          \
        while (!(done_) && (app_)->unexpected == 0 && wait_rc_ == 0)                               \
            wait_rc_ = pthread_cond_timedwait(&(app_)->cond, &(app_)->mu, (until_));               \
    } while (0)

/*
 * A sender: opens its two sessions, sends MESSAGES on each, alternating,
 * waits for every acknowledgement and closes them.
 */
static void *sender_main(void *arg)
{
    int t = *(int *)arg;
    app *a = &the_app;
    tsession *mine[PER_SENDER];
    struct timespec until;
    deadline_in(&until, 60000);

    for (int j = 0; j < PER_SENDER; j++) {
        tsession *ts = &a->sessions[t * PER_SENDER + j];
        mine[j] = ts;
        haul_session_config sc;
        haul_session_config_init(&sc);
        sc.destination = a->address;
        sc.principal = ts->principal;
        sc.max_message = MESSAGE;
        /* Four messages: the senders run into a full queue all the time. */
        sc.output_queue = 4 * MESSAGE;
        /* Whichever session comes first makes the pipe with these. */
        sc.connections = 4;
        sc.data = ts;
        CHECK_OK(haul_session_new(a->client, &sc, &ts->session));
    }
    pthread_mutex_lock(&a->mu);
    for (int j = 0; j < PER_SENDER; j++)
        WAIT_UNTIL(a, mine[j]->open, &until);
    int opened = mine[0]->open && mine[1]->open;
    pthread_mutex_unlock(&a->mu);
    CHECK(opened);

    uint8_t *buf = malloc(MESSAGE);
    CHECK(buf != NULL);
    uint64_t full = 0;
    for (int k = 0; k < MESSAGES; k++) {
        for (int j = 0; j < PER_SENDER; j++) {
            tsession *ts = mine[j];
            fill_pattern(buf, MESSAGE, ((uint64_t)ts->index << 32) | (uint64_t)k);
            for (;;) {
                /* The count before the attempt: an acknowledgement that
                 * comes between it and a refusal is not waited for. */
                pthread_mutex_lock(&a->mu);
                uint64_t acked = ts->acked;
                pthread_mutex_unlock(&a->mu);
                int rc = haul_send(ts->session, buf, MESSAGE, ts->sent);
                if (rc == 0)
                    break;
                CHECK_EQ(rc, HAUL_EQUEUEFULL);
                full++;
                pthread_mutex_lock(&a->mu);
                WAIT_UNTIL(a, ts->acked != acked, &until);
                int moved = ts->acked != acked;
                pthread_mutex_unlock(&a->mu);
                CHECK(moved);
            }
            XXH3_64bits_update(ts->hash, buf, MESSAGE);
            ts->sent++;
            ts->bytes += MESSAGE;
        }
    }
    free(buf);

    pthread_mutex_lock(&a->mu);
    a->queue_full += full;
    for (int j = 0; j < PER_SENDER; j++)
        WAIT_UNTIL(a, mine[j]->acked == MESSAGES, &until);
    int all_acked = mine[0]->acked == MESSAGES && mine[1]->acked == MESSAGES;
    pthread_mutex_unlock(&a->mu);
    CHECK(all_acked);

    for (int j = 0; j < PER_SENDER; j++)
        CHECK_OK(haul_session_close(mine[j]->session));
    pthread_mutex_lock(&a->mu);
    for (int j = 0; j < PER_SENDER; j++)
        WAIT_UNTIL(a, mine[j]->closed, &until);
    int closed = mine[0]->closed && mine[1]->closed;
    int errors = mine[0]->close_error || mine[1]->close_error;
    pthread_mutex_unlock(&a->mu);
    CHECK(closed);
    CHECK(!errors);
    return NULL;
}

TEST_TIMEOUT(four_threads_send_on_eight_sessions, 120)
{
    harness_strerror = haul_strerror;
    app *a = &the_app;
    server sv;
    server_start(&sv, engine_quiet(2, 0), NULL);
    a->client = engine_quiet(2, 0);
    CHECK(a->client != NULL);
    a->address = sv.address;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cond, NULL);
    for (int i = 0; i < SESSIONS; i++) {
        tsession *ts = &a->sessions[i];
        ts->app = a;
        ts->index = i;
        snprintf(ts->principal, sizeof(ts->principal), "SENDER_%d_%d", i / PER_SENDER,
                 i % PER_SENDER);
        ts->hash = XXH3_createState();
        CHECK(ts->hash != NULL);
        XXH3_64bits_reset(ts->hash);
    }

    CHECK_OK(pthread_create(&a->events, NULL, events_main, a));
    for (int t = 0; t < SENDERS; t++) {
        a->sender_index[t] = t;
        CHECK_OK(pthread_create(&a->senders[t], NULL, sender_main, &a->sender_index[t]));
    }
    for (int t = 0; t < SENDERS; t++)
        CHECK_OK(pthread_join(a->senders[t], NULL));
    pthread_mutex_lock(&a->mu);
    a->stop = 1;
    int unexpected = a->unexpected;
    uint64_t queue_full = a->queue_full;
    pthread_mutex_unlock(&a->mu);
    CHECK_OK(pthread_join(a->events, NULL));
    CHECK_EQ(unexpected, 0);
    harness_log("the senders found their queues full %llu times", (unsigned long long)queue_full);

    CHECK(sink_wait_closed(&sv.sink, SESSIONS, TRANSFER_WAIT_MS));
    for (int i = 0; i < SESSIONS; i++) {
        tsession *ts = &a->sessions[i];
        CHECK_EQ(ts->sent, (uint64_t)MESSAGES);
        sink_verify(&sv.sink, ts->principal, ts->sent, ts->bytes, XXH3_64bits_digest(ts->hash));
    }

    /* All eight sessions went over one pipe. */
    haul_conn_stats cs[8];
    CHECK_EQ(haul_pipe_stats(a->sessions[0].session, cs, 8), 4);

    for (int i = 0; i < SESSIONS; i++) {
        haul_session_free(a->sessions[i].session);
        XXH3_freeState(a->sessions[i].hash);
    }
    haul_engine_free(a->client);
    server_stop(&sv);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cond);
}
