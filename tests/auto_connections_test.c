/*
 * auto_connections_test.c - pipes that choose their number of connections
 * (haul_session_config.connections = HAUL_CONNECTIONS_AUTO), over real
 * sockets.
 *
 * Where more connections pay, the pipe must grow: a proxy forwards each
 * connection at a fixed rate (tests/fault_proxy.h, rate_up), so that n
 * connections carry n times what one does. Where they do not, it must
 * stay small: plain loopback, and the same proxy with a sender that has
 * too little to send to fill even the connections it has. On loopback the
 * engine takes the link for local (RTT under 1 ms) and uses at most 4;
 * the tests of growth lower that threshold with a test hook, so that the
 * proxy on loopback reads as a long link. A pipe whose count is changed
 * under a transfer, down to one connection and up again, must deliver
 * every message once, in order (XXH3 of the stream on both sides).
 */
#include "harness.h"

#include "core/autoscale.h"
#include "core/engine.h"
#include "fault_proxy.h"
#include "transfer.h"
#include "util.h"

#define KIB 1024u
#define MIB (1024u * 1024u)
/* What each connection through the proxy forwards: 1 MiB/s, so that the
 * steps of the count read clearly in 0.5 s intervals. */
#define RATE_PER_CONN (1u * MIB)

/* Connections of the session's pipe in use (joined, not parked), and all
 * it dialled. */
static unsigned in_use(haul_session *s, unsigned *dialled)
{
    haul_conn_stats cs[256];
    int n = haul_pipe_stats(s, cs, 256);
    CHECK_GE(n, 0);
    CHECK_LE(n, 256);
    unsigned used = 0;
    for (int i = 0; i < n; i++)
        used += cs[i].up && !cs[i].parked;
    if (dialled)
        *dialled = (unsigned)n;
    return used;
}

/* A copy of the controller of the session's pipe, taken under the
 * engine's lock. */
static haul__auto controller_of(haul_engine *e, haul_session *s)
{
    pthread_mutex_lock(&e->mu);
    haul__auto a = s->pipe->autoscale;
    int automatic = s->pipe->automatic;
    pthread_mutex_unlock(&e->mu);
    CHECK(automatic);
    return a;
}

typedef struct run {
    server sv;
    haul_engine *client;
    fault_proxy *px;
    stream st;
    uint8_t *buf;
    size_t message;
} run;

/* A server, a client engine and an automatic session to the server,
 * through a proxy of `rate` bytes per second per connection (0: no
 * proxy). local_us is the RTT under which the client's engine takes the
 * link for local (0: its default). */
static void run_start(run *r, uint64_t rate, unsigned local_us, size_t message,
                      uint64_t output_queue)
{
    harness_strerror = haul_strerror;
    memset(r, 0, sizeof(*r));
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    server_start(&r->sv, engine_with(&ec), NULL);
    r->client = engine_with(&ec);
    if (local_us)
        haul__debug_auto_local(r->client, local_us);
    const char *destination = r->sv.address;
    if (rate) {
        fault_proxy_config pc;
        fault_proxy_config_init(&pc);
        pc.target = r->sv.address;
        pc.rate_up = rate;
        CHECK_OK(fault_proxy_start(&pc, &r->px));
        destination = fault_proxy_address(r->px);
    }
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = destination;
    sc.connections = HAUL_CONNECTIONS_AUTO;
    sc.max_message = message;
    sc.output_queue = output_queue;
    stream_open(&r->st, r->client, &sc, "AUTO");
    streams_wait_open(r->client, &r->st, 1);
    r->message = message;
    r->buf = malloc(message);
    CHECK(r->buf != NULL);
    fill_pattern(r->buf, message, 1);
}

/* Queues messages while the output queue takes them: the same bytes
 * each time, so that the sender is never slower than the link. */
static void run_fill(run *r)
{
    for (;;) {
        int rc = stream_send(&r->st, r->buf, r->message);
        if (rc == HAUL_EQUEUEFULL)
            return;
        CHECK_OK(rc);
    }
}

static void run_stop(run *r)
{
    streams_wait_acked(r->client, &r->st, 1);
    streams_close(r->client, &r->st, 1, &r->sv);
    stream_verify(&r->sv, &r->st);
    stream_free(&r->st);
    haul_engine_free(r->client);
    server_stop(&r->sv);
    if (r->px)
        fault_proxy_stop(r->px);
    free(r->buf);
}

/*
 * Sends as fast as the pipe takes until it uses `want` connections or
 * `ms` pass. Returns the most connections in use seen, and the most
 * dialled in *dialled_max.
 */
static unsigned saturate_until(run *r, unsigned want, int ms, unsigned *dialled_max)
{
    int64_t deadline = transfer_now_ms() + ms;
    unsigned most = 0;
    *dialled_max = 0;
    while (transfer_now_ms() < deadline) {
        run_fill(r);
        stream_pump(r->client, 20);
        unsigned dialled;
        unsigned used = in_use(r->st.session, &dialled);
        if (used > most)
            most = used;
        if (dialled > *dialled_max)
            *dialled_max = dialled;
        if (want && used >= want)
            break;
    }
    return most;
}

TEST_TIMEOUT(auto_pipe_grows_where_each_connection_is_slow, 60)
{
    run r;
    run_start(&r, RATE_PER_CONN, 1, 64 * KIB, 2 * MIB);
    unsigned dialled;
    unsigned most = saturate_until(&r, 8, 15000, &dialled);
    harness_log("in use: at most %u of %u dialled", most, dialled);
    /* It starts with 2; 8 is its first step up, taken only when 2 were
     * measured to carry what they can and 8 measured more. */
    CHECK_GE(most, 8);
    CHECK(!controller_of(r.client, r.st.session).local);
    run_stop(&r);
}

TEST_TIMEOUT(auto_pipe_stays_at_four_on_loopback, 60)
{
    /* Loopback without a proxy: more connections add nothing but work.
     * The pipe finds the link local and never uses more than 4. */
    run r;
    run_start(&r, 0, 0, 256 * KIB, 4 * MIB);
    unsigned dialled;
    unsigned most = saturate_until(&r, 0, 2500, &dialled);
    haul__auto a = controller_of(r.client, r.st.session);
    harness_log("in use: at most %u of %u dialled; least RTT %u us", most, dialled,
                r.st.session->pipe->auto_min_rtt_us);
    CHECK_LE(most, HAUL__AUTO_LOCAL_MAX);
    CHECK_LE(dialled, HAUL__AUTO_LOCAL_MAX);
    CHECK_GE(most, 1);
    /* It knows the link for local: whatever it measures, its cap is 4. */
    CHECK(a.local);
    CHECK_LE(a.cap, HAUL__AUTO_LOCAL_MAX);
    run_stop(&r);
}

TEST_TIMEOUT(auto_pipe_on_a_local_link_stops_at_four_even_when_more_pay, 60)
{
    /* The rate-limited proxy on loopback, where more connections would
     * pay, but whose RTT is that of one machine: the pipe grows to the
     * local cap and no further. */
    run r;
    run_start(&r, RATE_PER_CONN, 0, 64 * KIB, 2 * MIB);
    unsigned dialled;
    unsigned most = saturate_until(&r, 0, 2500, &dialled);
    harness_log("in use: at most %u of %u dialled", most, dialled);
    CHECK_EQ(most, HAUL__AUTO_LOCAL_MAX);
    CHECK_LE(dialled, HAUL__AUTO_LOCAL_MAX);
    CHECK(controller_of(r.client, r.st.session).local);
    run_stop(&r);
}

TEST_TIMEOUT(auto_pipe_on_a_long_link_dials_its_first_step_while_the_session_opens, 60)
{
    /* Every RTT reads as a long link (test hook), and the proxy holds
     * the pipe partitioned: the kernel completes the connects, but no
     * HELLO crosses and the session cannot open. The first connect
     * tells the RTT, and the pipe dials the long link's first step
     * then, while the session opens, before any connection joined or
     * any message was queued. */
    harness_strerror = haul_strerror;
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    server sv;
    server_start(&sv, engine_with(&ec), NULL);
    haul_engine *client = engine_with(&ec);
    haul__debug_auto_local(client, 1);
    haul__debug_auto_long(client, 1);
    fault_proxy_config pc;
    fault_proxy_config_init(&pc);
    pc.target = sv.address;
    fault_proxy *px;
    CHECK_OK(fault_proxy_start(&pc, &px));
    fault_proxy_partition(px, 1);
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = fault_proxy_address(px);
    sc.connections = HAUL_CONNECTIONS_AUTO;
    sc.max_message = 64 * KIB;
    sc.output_queue = 2 * MIB;
    stream st;
    stream_open(&st, client, &sc, "LONG");
    unsigned dialled = 0, used = 0;
    int64_t deadline = transfer_now_ms() + 5000;
    while (transfer_now_ms() < deadline && dialled < 4 * HAUL__AUTO_START) {
        stream_pump(client, 20);
        used = in_use(st.session, &dialled);
    }
    harness_log("partitioned: %u dialled, %u in use", dialled, used);
    CHECK_EQ(dialled, 4 * HAUL__AUTO_START);
    CHECK_EQ(used, 0);
    /* The partition lifted, the session opens over the 8 and carries
     * its messages. */
    fault_proxy_partition(px, 0);
    streams_wait_open(client, &st, 1);
    uint8_t *buf = malloc(64 * KIB);
    CHECK(buf != NULL);
    for (int i = 0; i < 16; i++) {
        fill_pattern(buf, 64 * KIB, st.sent);
        stream_send_wait(client, &st, buf, 64 * KIB);
    }
    streams_wait_acked(client, &st, 1);
    /* The 8 join, whatever the order of their HELLOs and the acks. */
    deadline = transfer_now_ms() + 10000;
    while (transfer_now_ms() < deadline && in_use(st.session, &dialled) < 4 * HAUL__AUTO_START)
        stream_pump(client, 20);
    CHECK_EQ(in_use(st.session, &dialled), 4 * HAUL__AUTO_START);
    streams_close(client, &st, 1, &sv);
    stream_verify(&sv, &st);
    stream_free(&st);
    free(buf);
    haul_engine_free(client);
    server_stop(&sv);
    fault_proxy_stop(px);
}

TEST_TIMEOUT(auto_pipe_does_not_grow_while_the_application_sets_the_pace, 60)
{
    /* The same slow connections, where more would pay, but a sender that
     * queues one 16 KiB message every 20 ms (800 KiB/s, under what even
     * one connection carries): the pipe keeps the 2 it started with. */
    run r;
    run_start(&r, RATE_PER_CONN, 1, 16 * KIB, 2 * MIB);
    int64_t deadline = transfer_now_ms() + 3000;
    unsigned most = 0, dialled_max = 0;
    while (transfer_now_ms() < deadline) {
        fill_pattern(r.buf, r.message, r.st.sent);
        stream_send_wait(r.client, &r.st, r.buf, r.message);
        /* The application's pace: it has nothing more to send for 20 ms. */
        int64_t next = transfer_now_ms() + 20;
        while (transfer_now_ms() < next)
            stream_pump(r.client, (int)(next - transfer_now_ms()));
        unsigned dialled;
        unsigned used = in_use(r.st.session, &dialled);
        most = used > most ? used : most;
        dialled_max = dialled > dialled_max ? dialled : dialled_max;
    }
    harness_log("in use: at most %u of %u dialled; %llu messages", most, dialled_max,
                (unsigned long long)r.st.sent);
    CHECK_EQ(dialled_max, HAUL__AUTO_START);
    CHECK_LE(most, HAUL__AUTO_START);
    /* Not for want of trying: it measured, and found the pace the
     * application's. */
    haul__auto a = controller_of(r.client, r.st.session);
    CHECK_GE(a.intervals, 3);
    CHECK(a.last_limited);
    CHECK(!a.local);
    run_stop(&r);
}

TEST_TIMEOUT(auto_pipe_does_not_grow_while_its_rate_limit_sets_the_pace, 60)
{
    /* Slow connections where more would pay, and a sender that always has
     * more to send, but a rate limit of 512 KiB/s, under what even one
     * connection carries: the limit, not the link, sets the pace, and
     * the pipe keeps the 2 it started with. */
    run r;
    run_start(&r, RATE_PER_CONN, 1, 64 * KIB, 2 * MIB);
    CHECK_OK(haul_session_set_rate_limit(r.st.session, 512 * KIB));
    unsigned dialled;
    unsigned most = saturate_until(&r, 0, 3000, &dialled);
    harness_log("in use: at most %u of %u dialled; %llu messages", most, dialled,
                (unsigned long long)r.st.sent);
    CHECK_EQ(dialled, HAUL__AUTO_START);
    CHECK_LE(most, HAUL__AUTO_START);
    /* It measured, and found the pace not the network's. */
    haul__auto a = controller_of(r.client, r.st.session);
    CHECK_GE(a.intervals, 3);
    CHECK(a.last_limited);
    /* Lifted, the limit lets what is queued go at once. */
    CHECK_OK(haul_session_set_rate_limit(r.st.session, 0));
    run_stop(&r);
}

TEST_TIMEOUT(auto_pipe_that_shrinks_and_grows_loses_nothing, 60)
{
    /* Messages of every size up to 1 MiB (chunks of 256 KiB) go while the
     * count changes under them: grown to 8, parked down to 1, back to 5,
     * down to 2, up to 8. Parked connections finish what they carry and
     * take nothing new: every message arrives once, in order, and nothing
     * is sent twice. */
    run r;
    run_start(&r, 0, 0, MIB, 8 * MIB);
    static const unsigned counts[] = {8, 1, 5, 2, 8};
    uint64_t seed = 0x5eed;
    unsigned step = 0;
    int parked_seen = 0;
    for (uint64_t k = 0; k < 600; k++) {
        if (k % 100 == 50 && step < sizeof(counts) / sizeof(counts[0])) {
            CHECK_OK(haul__debug_auto_resize(r.st.session, counts[step]));
            step++;
        }
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        size_t len = (size_t)(seed >> 33) % (MIB + 1);
        fill_pattern(r.buf, len, k);
        stream_send_wait(r.client, &r.st, r.buf, len);
        stream_pump(r.client, 0);
        haul_conn_stats cs[16];
        int n = haul_pipe_stats(r.st.session, cs, 16);
        for (int i = 0; i < n && i < 16; i++)
            parked_seen |= cs[i].parked;
    }
    CHECK_EQ(step, sizeof(counts) / sizeof(counts[0]));
    CHECK(parked_seen);
    streams_wait_acked(r.client, &r.st, 1);
    /* The pipe holds the 8 it was last given, all in use. */
    unsigned dialled;
    int64_t deadline = transfer_now_ms() + TRANSFER_WAIT_MS;
    while (in_use(r.st.session, &dialled) < 8 && transfer_now_ms() < deadline)
        stream_pump(r.client, 10);
    CHECK_EQ(in_use(r.st.session, &dialled), 8);
    CHECK_EQ(dialled, 8);
    haul_engine_stats es;
    haul_engine_stats_get(r.client, &es);
    CHECK_EQ(es.chunks_resent, 0);
    CHECK_EQ(es.connections_lost, 0);
    haul_engine_stats_get(r.sv.engine, &es);
    CHECK_EQ(es.duplicates, 0);
    run_stop(&r);
}

TEST_TIMEOUT(auto_pipe_parked_connections_carry_no_chunks, 60)
{
    run r;
    run_start(&r, 0, 0, 256 * KIB, 4 * MIB);
    CHECK_OK(haul__debug_auto_resize(r.st.session, 6));
    int64_t deadline = transfer_now_ms() + TRANSFER_WAIT_MS;
    unsigned dialled;
    while (in_use(r.st.session, &dialled) < 6 && transfer_now_ms() < deadline)
        stream_pump(r.client, 10);
    CHECK_EQ(in_use(r.st.session, &dialled), 6);
    /* Down to 2, with nothing in flight: 4 parked, all idle. */
    CHECK_OK(haul__debug_auto_resize(r.st.session, 2));
    haul_conn_stats before[6], after[6];
    CHECK_EQ(haul_pipe_stats(r.st.session, before, 6), 6);
    for (int i = 0; i < 6; i++)
        CHECK_EQ(before[i].parked, i >= 2);
    for (int k = 0; k < 40; k++)
        stream_send_wait(r.client, &r.st, r.buf, r.message);
    streams_wait_acked(r.client, &r.st, 1);
    CHECK_EQ(haul_pipe_stats(r.st.session, after, 6), 6);
    uint64_t carried = 0;
    for (int i = 0; i < 6; i++) {
        uint64_t n = after[i].chunks_sent - before[i].chunks_sent;
        if (i >= 2)
            CHECK_EQ(n, 0);
        carried += n;
    }
    /* Every chunk of the 40 messages went on the 2 in use (a pipe cuts
     * its chunks for the most connections it may have). */
    CHECK_GE(carried, 40);
    run_stop(&r);
}

TEST(auto_session_config_bounds)
{
    harness_strerror = haul_strerror;
    haul_engine *e = engine_quiet(1, 0);
    CHECK(e != NULL);
    haul_session_config sc;
    haul_session_config_init(&sc);
    /* The library's default stays a fixed pipe of 1. */
    CHECK_EQ(sc.connections, 1);
    CHECK_EQ(sc.max_connections, 0);
    sc.destination = "127.0.0.1:1";
    sc.principal = "AUTO";
    sc.connections = HAUL_CONNECTIONS_AUTO;
    sc.max_connections = 65536;
    haul_session *s = NULL;
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EINVAL);
    sc.connections = 65536;
    sc.max_connections = 0;
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EINVAL);
    haul_engine_free(e);
}
