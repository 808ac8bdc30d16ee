/*
 * long_link_test.c - the dispatcher of long links (docs/design.md, "Long
 * links"): short kernel queues of unsent bytes, the active set of a wide
 * pipe, and chunks sent again when the connection that carries them stops
 * delivering.
 *
 * Loopback is a short wan; these tests make the engine treat it as a
 * long one by setting backlog_min_rtt_us to 0, and check the same pipes
 * against the default, which leaves loopback alone.
 */
#include "harness.h"

#include <stdlib.h>

#include "util.h"
#include "transfer.h"

#define MIB (1u << 20)

int haul__debug_freeze(haul_session *s, int index, int frozen);

typedef struct wan {
    server sv;
    haul_engine *client;
    stream st;
} wan;

static void link_open(wan *l, unsigned conns, int long_link, uint64_t queue)
{
    harness_strerror = haul_strerror;
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    if (long_link)
        ec.backlog_min_rtt_us = 0;
    server_start(&l->sv, engine_with(&ec), NULL);
    l->client = engine_with(&ec);
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = l->sv.address;
    sc.connections = conns;
    sc.max_message = 16 * MIB;
    sc.output_queue = queue;
    stream_open(&l->st, l->client, &sc, "LONG");
    streams_wait_open(l->client, &l->st, 1);
}

static void link_close(wan *l)
{
    streams_close(l->client, &l->st, 1, &l->sv);
    stream_verify(&l->sv, &l->st);
    stream_free(&l->st);
    haul_engine_free(l->client);
    server_stop(&l->sv);
}

/* Waits until every connection of the pipe joined; returns how many. */
static int pipe_up(wan *l, haul_conn_stats *cs, int max)
{
    int64_t deadline = now_ms() + TRANSFER_WAIT_MS;
    for (;;) {
        int n = haul_pipe_stats(l->st.session, cs, max);
        int up = 0;
        for (int i = 0; i < n && i < max; i++)
            up += cs[i].up;
        if (up == n)
            return n;
        CHECK_LT(now_ms(), deadline);
        stream_pump(l->client, 10);
    }
}

TEST(unsent_bytes_are_limited_on_long_links_only)
{
    haul_conn_stats cs[2];
    wan l;
    link_open(&l, 2, 1, 16 * MIB);
    CHECK_EQ(pipe_up(&l, cs, 2), 2);
    for (int i = 0; i < 2; i++)
        CHECK_EQ(cs[i].unsent_limit, 128u << 10);
    link_close(&l);

    link_open(&l, 2, 0, 16 * MIB);
    CHECK_EQ(pipe_up(&l, cs, 2), 2);
    for (int i = 0; i < 2; i++) {
        /* Loopback answers in microseconds: no limit. */
        CHECK_LT(cs[i].rtt_us, 1000);
        CHECK_EQ(cs[i].unsent_limit, 0);
    }
    link_close(&l);
}

/*
 * One connection of two takes a chunk of a 16 MiB message and writes
 * none of it. The other connection delivers its own chunks; then, the
 * message holding up the window, the stuck chunks go again on it, and
 * the message is acknowledged while the first connection still holds
 * them. Released, that connection writes its copies, which the receiver
 * drops: the message arrives once.
 */
TEST(chunks_stuck_on_a_connection_go_again_on_another)
{
    haul_conn_stats cs[2];
    wan l;
    link_open(&l, 2, 1, 64 * MIB);
    CHECK_EQ(pipe_up(&l, cs, 2), 2);
    /* Connection 1 waits, frozen, until connection 0 has taken a chunk
     * (it joins the active set as it takes one). */
    CHECK_OK(haul__debug_freeze(l.st.session, 0, 2));
    CHECK_OK(haul__debug_freeze(l.st.session, 1, 1));

    uint8_t *buf = malloc(16 * MIB);
    CHECK(buf != NULL);
    fill_pattern(buf, 16 * MIB, 1);
    CHECK_OK(stream_send(&l.st, buf, 16 * MIB));
    int64_t deadline = now_ms() + TRANSFER_WAIT_MS;
    for (;;) {
        CHECK_EQ(haul_pipe_stats(l.st.session, cs, 2), 2);
        if (cs[0].active)
            break;
        CHECK_LT(now_ms(), deadline);
        stream_pump(l.client, 5);
    }
    CHECK_OK(haul__debug_freeze(l.st.session, 1, 0));
    while (l.st.acked < 1) {
        CHECK_LT(now_ms(), deadline);
        stream_pump(l.client, 50);
    }
    haul_engine_stats es;
    haul_engine_stats_get(l.client, &es);
    harness_log("%llu chunk(s) sent again on the other connection",
                (unsigned long long)es.chunks_hedged);
    CHECK_GT(es.chunks_hedged, 0);
    CHECK_EQ(es.chunks_resent, 0);
    CHECK_EQ(es.connections_lost, 0);

    CHECK_OK(haul__debug_freeze(l.st.session, 0, 0));
    /* More after it, on both connections again. */
    for (uint64_t k = 2; k < 6; k++) {
        fill_pattern(buf, 16 * MIB, k);
        stream_send_wait(l.client, &l.st, buf, 16 * MIB);
    }
    streams_wait_acked(l.client, &l.st, 1);
    /* The copy held back arrives after all, and is dropped. */
    deadline = now_ms() + TRANSFER_WAIT_MS;
    for (;;) {
        haul_engine_stats_get(l.sv.engine, &es);
        if (es.duplicates > 0)
            break;
        CHECK_LT(now_ms(), deadline);
        stream_pump(l.client, 20);
    }
    link_close(&l);
    free(buf);
}

/*
 * A pipe of 64 connections on a long link sends on an active set that
 * starts at 16 and grows by a quarter at most every 200 ms: however many
 * connections are free, no more than that carry chunks at once. (Which
 * ones may change: a connection leaves the set once it has nothing on
 * its way.)
 */
static unsigned active_now(wan *l, haul_conn_stats *cs, int n)
{
    CHECK_EQ(haul_pipe_stats(l->st.session, cs, n), n);
    unsigned active = 0;
    for (int i = 0; i < n; i++)
        active += cs[i].active != 0;
    return active;
}

TEST(a_wide_pipe_sends_on_an_active_set)
{
    enum { CONNS = 64 };
    haul_conn_stats cs[CONNS];
    wan l;
    link_open(&l, CONNS, 1, 16 * MIB);
    CHECK_EQ(pipe_up(&l, cs, CONNS), CONNS);
    uint8_t *buf = malloc(MIB);
    CHECK(buf != NULL);
    int64_t start = now_ms();
    unsigned most = 0;
    for (uint64_t k = 0; k < 64; k++) {
        fill_pattern(buf, MIB, k);
        stream_send_wait(l.client, &l.st, buf, MIB);
        unsigned a = active_now(&l, cs, CONNS);
        most = a > most ? a : most;
    }
    streams_wait_acked(l.client, &l.st, 1);
    int64_t took = now_ms() - start;
    harness_log("64 MiB in %lld ms, at most %u of %d connections active at once", (long long)took,
                most, CONNS);
    /* 16, growing by a quarter per 200 ms: 20, 25, 31, 38, ... */
    unsigned bound = 16;
    for (int64_t t = 200; t <= took + 200; t += 200)
        bound += bound / 4;
    CHECK_GT(most, 0);
    CHECK_LE(most, bound < CONNS ? bound : CONNS);
    link_close(&l);
    free(buf);
}

TEST(backlog_out_of_range_is_refused)
{
    harness_strerror = haul_strerror;
    haul_engine_config c;
    haul_engine *e = NULL;
    haul_engine_config_init(&c);
    c.conn_backlog = (16u << 10) - 1;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    c.conn_backlog = (64u << 20) + 1;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    c.conn_backlog = 0; /* the kernel's own queue */
    CHECK_OK(haul_engine_new(&c, &e));
    haul_engine_free(e);
}
