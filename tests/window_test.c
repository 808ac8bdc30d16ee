/*
 * window_test.c - a receiver that never takes its messages closes the
 * window, and the message that the window keeps out fails on its timeout.
 *
 * The server admits 2 MiB of input and its application never calls
 * haul_recv(); the client announces 1 MiB messages, so the window starts
 * at two messages. Of three 1 MiB messages, the first two are
 * acknowledged, the second with a window of 0. The third is never sent:
 * nothing opens the window again, so it fails after the session's message
 * timeout (counted from when it was queued or from the last
 * acknowledgement, whichever came later) with HAUL_ETIMEDOUT, the client's
 * session closes with HAUL_ETIMEDOUT, and the server's is aborted.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "harness.h"
#include "util.h"

#define MIB (1u << 20)
#define TIMEOUT_MS 400

/*
 * The receiving application: it accepts the session and notes what
 * arrives, but never takes a message out of the input queue.
 */
typedef struct hoarder {
    haul_engine *engine;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    haul_session *session;
    int requests;
    int received;
    int closed;
    int close_error;
    int other_events;
    int stop;
} hoarder;

static void *hoarder_main(void *arg)
{
    hoarder *h = arg;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        int stop = h->stop;
        pthread_mutex_unlock(&h->mu);
        if (stop)
            break;
        haul_event ev;
        if (haul_engine_wait(h->engine, &ev, 1, 50) != 1)
            continue;
        pthread_mutex_lock(&h->mu);
        switch (ev.type) {
        case HAUL_EV_SESSION_REQUEST:
            h->requests++;
            if (h->session == NULL) {
                h->session = ev.session;
                CHECK_OK(haul_session_accept(ev.session));
            } else {
                /* Only one session is expected; refuse, and free it. */
                haul_session_reject(ev.session, 1);
                haul_session_free(ev.session);
            }
            break;
        case HAUL_EV_MESSAGE_RECEIVED:
            h->received++;
            break;
        case HAUL_EV_SESSION_CLOSED:
            if (ev.session == h->session) {
                h->closed++;
                h->close_error = ev.error;
            }
            break;
        default:
            h->other_events++;
            break;
        }
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->mu);
    }
    return NULL;
}

/* Waits up to ms for the server's session to close; returns 1 if it did. */
static int hoarder_wait_closed(hoarder *h, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&h->mu);
    int rc = 0;
    while (h->closed == 0 && rc == 0)
        rc = pthread_cond_timedwait(&h->cond, &h->mu, &until);
    int closed = h->closed;
    pthread_mutex_unlock(&h->mu);
    return closed > 0;
}

TEST_TIMEOUT(closed_window_times_out, 30)
{
    harness_strerror = haul_strerror;
    haul_engine *server = engine_quiet(1, 0);
    haul_engine *client = engine_quiet(1, 0);
    CHECK(server != NULL);
    CHECK(client != NULL);

    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.input_queue = 2 * MIB;
    CHECK_OK(haul_listen(server, "127.0.0.1:0", &lc));
    char address[128];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));

    hoarder h;
    memset(&h, 0, sizeof(h));
    h.engine = server;
    pthread_mutex_init(&h.mu, NULL);
    pthread_cond_init(&h.cond, NULL);
    CHECK_OK(pthread_create(&h.thread, NULL, hoarder_main, &h));

    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "WINDOW_TEST";
    sc.max_message = MIB;
    sc.message_timeout_ms = TIMEOUT_MS;
    haul_session *s = NULL;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(next_event(client, &ev, 5000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_OPEN);
    /* 2 MiB of input queue in messages of 1 MiB. */
    CHECK_EQ(ev.window, 2);

    uint8_t *buf = malloc(MIB);
    CHECK(buf != NULL);
    fill_pattern(buf, MIB, 1);
    CHECK_OK(haul_send(s, buf, MIB, 100));
    CHECK_OK(haul_send(s, buf, MIB, 101));
    int64_t third_queued = now_ms();
    CHECK_OK(haul_send(s, buf, MIB, 102));
    free(buf);

    /* The client sees exactly: two acknowledgements, then the failure of
     * the third message, then the end of the session. No WINDOW_OPENED
     * may come between them, since the receiver takes nothing. */
    int sent = 0;
    int64_t failed_at = 0, last_ack_seen = 0;
    for (;;) {
        CHECK(next_event(client, &ev, 5000));
        CHECK(ev.session == s);
        if (ev.type == HAUL_EV_MESSAGE_SENT) {
            last_ack_seen = now_ms();
            CHECK_EQ(ev.tag, 100 + (uint64_t)sent);
            CHECK_EQ(ev.error, HAUL_OK);
            if (sent == 1)
                CHECK_EQ(ev.window, 0);
            sent++;
            CHECK_LE(sent, 2);
            continue;
        }
        CHECK_EQ(ev.type, HAUL_EV_MESSAGE_FAILED);
        failed_at = now_ms();
        CHECK_EQ(ev.tag, 102);
        CHECK_EQ(ev.error, HAUL_ETIMEDOUT);
        break;
    }
    CHECK_EQ(sent, 2);
    CHECK(next_event(client, &ev, 5000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_CLOSED);
    CHECK_EQ(ev.error, HAUL_ETIMEDOUT);
    CHECK(ev.session == s);
    /* The session's last event: nothing follows it. */
    CHECK(!next_event(client, &ev, 200));

    /* The engine's clock is read in the same whole milliseconds, and no
     * earlier than ours before the send, so the lower bound is exact. The
     * last acknowledgement restarts the count too, but the engine noted it
     * some unknown time before its event reached us, so from there only
     * the upper bound is checked. */
    int64_t waited = failed_at - third_queued;
    harness_log("the third message failed %lld ms after it was queued and %lld ms after the "
                "last acknowledgement was seen (timeout %d ms)",
                (long long)waited, (long long)(failed_at - last_ack_seen), TIMEOUT_MS);
    CHECK_GE(waited, TIMEOUT_MS);
    /* The sweep runs every 20 ms; a generous bound for a loaded machine. */
    CHECK_LT(failed_at - last_ack_seen, TIMEOUT_MS + 2000);

    /* The client's abort reaches the server. */
    CHECK(hoarder_wait_closed(&h, 5000));
    pthread_mutex_lock(&h.mu);
    CHECK_EQ(h.requests, 1);
    CHECK_EQ(h.received, 2);
    CHECK_EQ(h.close_error, HAUL_EABORTED);
    CHECK_EQ(h.other_events, 0);
    h.stop = 1;
    pthread_mutex_unlock(&h.mu);
    CHECK_OK(pthread_join(h.thread, NULL));

    /* The client's engine counted two acknowledged messages; the server
     * holds the two it never handed out, which its free releases. */
    haul_engine_stats st;
    haul_engine_stats_get(client, &st);
    CHECK_EQ(st.messages_sent, 2);
    haul_engine_stats_get(server, &st);
    CHECK_EQ(st.messages_received, 2);

    haul_session_free(s);
    haul_session_free(h.session);
    haul_engine_free(client);
    haul_engine_free(server);
    pthread_mutex_destroy(&h.mu);
    pthread_cond_destroy(&h.cond);
}
