/*
 * bdp_test.c - a session's queues follow its link (haul.h,
 * haul_session_config.output_queue; docs/design.md, "Queues from the
 * bandwidth-delay product"): on a short link, or with a receiver that
 * takes nothing, they stay at the 32 MiB floor whatever their bound; on a
 * long fat link they grow to their bound.
 *
 * Two real engines over loopback. The long link is the engine's test hook
 * debug_rtt_us: the queues are sized as if the pipe's round trip were
 * 2 s, while the bytes really cross loopback at its own rate.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "harness.h"
#include "util.h"

#define MIB (1ull << 20)
#define BOUND (256 * MIB)
#define FLOOR (32 * MIB)

typedef struct pair {
    haul_engine *server, *client;
    haul_session *cs, *ss;
} pair;

static haul_engine *engine_new(void)
{
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.log_level = HAUL_LOG_ERROR;
    haul_engine *e = NULL;
    CHECK_OK(haul_engine_new(&c, &e));
    return e;
}

/* A client session of BOUND-byte queues and 1 MiB messages to a server
 * whose sessions have BOUND-byte queues, accepted and open. */
static void pair_open(pair *p, unsigned rtt_us)
{
    memset(p, 0, sizeof(*p));
    p->server = engine_new();
    p->client = engine_new();
    p->server->debug_rtt_us = rtt_us;
    p->client->debug_rtt_us = rtt_us;
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.input_queue = BOUND;
    lc.output_queue = BOUND;
    CHECK_OK(haul_listen(p->server, "127.0.0.1:0", &lc));
    char address[128];
    CHECK_OK(haul_listen_address(p->server, address, sizeof(address)));
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "BDP_TEST";
    sc.max_message = MIB;
    sc.output_queue = BOUND;
    sc.input_queue = BOUND;
    sc.connections = 2;
    CHECK_OK(haul_session_new(p->client, &sc, &p->cs));
    haul_event ev;
    CHECK(wait_for(p->server, HAUL_EV_SESSION_REQUEST, &ev, 5000));
    p->ss = ev.session;
    CHECK_OK(haul_session_accept(p->ss));
    CHECK(wait_for(p->client, HAUL_EV_SESSION_OPEN, &ev, 5000));
}

static void pair_close(pair *p)
{
    haul_session_free(p->cs);
    haul_session_free(p->ss);
    haul_engine_free(p->client);
    haul_engine_free(p->server);
}

/* Sends 1 MiB messages until the output queue refuses one; returns how
 * many it took. */
static int fill(pair *p, const uint8_t *buf)
{
    int n = 0;
    while (haul_send_buffer(p->cs, buf, MIB, NULL, NULL, 0) == 0)
        n++;
    return n;
}

/* The server's application takes whatever arrived; returns how many. */
static int take_all(pair *p)
{
    int n = 0;
    haul_message *m;
    while (haul_recv(p->ss, &m) == 0) {
        haul_message_free(m);
        n++;
    }
    return n;
}

static uint64_t window_of(pair *p)
{
    pthread_mutex_lock(&p->server->mu);
    uint64_t w = p->ss->rcv_right - p->ss->rcv_next;
    pthread_mutex_unlock(&p->server->mu);
    return w;
}

/*
 * A receiver that takes nothing gives the session no rate: its window
 * closes at the floor, and the sender, whose bound is 256 MiB, queues no
 * more than the floor either (before, it queued all 256 MiB ahead of a
 * link that carried none of it).
 */
TEST_TIMEOUT(receiver_that_takes_nothing_keeps_both_queues_at_the_floor, 60)
{
    harness_strerror = haul_strerror;
    pair p;
    /* The round trip pinned at 1 ms, loopback's: on a loaded machine
     * the measured one can reach tens of milliseconds, and with the
     * burst that fills the window it would size the queues above the
     * floor, as it should on such a link. */
    pair_open(&p, 1000);
    uint8_t *buf = calloc(1, MIB);
    CHECK(buf != NULL);
    int queued = fill(&p, buf);
    pthread_mutex_lock(&p.client->mu);
    uint64_t waiting = p.cs->out_bytes;
    pthread_mutex_unlock(&p.client->mu);
    harness_log("queued %d messages of 1 MiB against a bound of 256, %llu MiB of them waiting",
                queued, (unsigned long long)(waiting / MIB));
    /* What waits in the sender's queue never passes the floor. Messages
     * that the server acknowledged while fill() ran (a loaded machine
     * runs the engines' threads in between) have left it, so a few more
     * may have been queued in all: never the bound's 256. */
    CHECK_LE(waiting, FLOOR);
    CHECK_LE((uint64_t)queued * MIB, 2 * FLOOR);
    CHECK_GE((uint64_t)queued * MIB, FLOOR - 2 * MIB);

    /* The window closes at the floor: the server holds at most 32. */
    haul_engine_stats st;
    int64_t until = now_ms() + 10000;
    do {
        haul_event ev;
        haul_engine_wait(p.server, &ev, 1, 50);
        haul_engine_stats_get(p.server, &st);
    } while (st.messages_received < (uint64_t)queued && st.messages_received < FLOOR / MIB &&
             now_ms() < until);
    CHECK_LE(st.messages_received * MIB, FLOOR);
    CHECK_LE(window_of(&p), FLOOR / MIB);
    /* The buffer is the messages' until the engines are gone. */
    pair_close(&p);
    free(buf);
}

/*
 * The same queues on a link of 2 s whose rate is loopback's: once the
 * session has carried data for a few periods, eight round trips of its
 * rate pass the bound, and both queues have all of it: the sender queues
 * far more than the floor, and the receiver's window passes it.
 */
TEST_TIMEOUT(long_fat_link_grows_the_queues_to_their_bound, 60)
{
    harness_strerror = haul_strerror;
    pair p;
    /* Two seconds, so that even a sanitizer build's loopback rate, times
     * eight round trips, passes the bound. */
    pair_open(&p, 2000000);
    uint8_t *buf = calloc(1, MIB);
    CHECK(buf != NULL);
    /* Traffic for a while, the server taking as it comes. */
    int64_t until = now_ms() + 600;
    int taken = 0;
    while (now_ms() < until) {
        fill(&p, buf);
        haul_event ev;
        while (haul_engine_wait(p.client, &ev, 1, 0) == 1)
            ;
        taken += take_all(&p);
        haul_engine_wait(p.server, &ev, 1, 5);
    }
    harness_log("taken %d MiB in 600 ms; window %llu messages", taken,
                (unsigned long long)window_of(&p));
    CHECK_GT(window_of(&p), FLOOR / MIB);
    /* The receiver stops taking: the sender may queue past the floor. */
    int more = fill(&p, buf);
    pthread_mutex_lock(&p.client->mu);
    uint64_t queued = p.cs->out_bytes, bound = haul__session_out_bound(p.cs);
    pthread_mutex_unlock(&p.client->mu);
    harness_log("then %d more queued: %llu MiB of a bound of %llu MiB", more,
                (unsigned long long)(queued / MIB), (unsigned long long)(bound / MIB));
    CHECK_EQ(bound, BOUND);
    CHECK_GT(queued, 2 * FLOOR);
    /* The buffer is the messages' until the engines are gone. */
    pair_close(&p);
    free(buf);
}
