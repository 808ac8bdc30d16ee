/*
 * membudget_test.c - the engine-wide memory budget
 * (haul_engine_config.memory): it bounds what the engine holds for all
 * sessions together, both ways; it shares window slots fairly between
 * principals and their sessions; it serves the sessions that wait for
 * memory in turn; and a single session with a large budget keeps the
 * window of its input queue.
 *
 * Every test drives a client engine and a server engine on loopback from
 * one thread, polling the two completion queues' descriptors.
 */
#include "harness.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "util.h"

#define KIB 1024u
#define UNIT (64u * KIB)

/* An engine whose largest message is the unit, with the budget given. */
static haul_engine *engine_budget(uint64_t memory, uint64_t max_message)
{
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.max_message = max_message;
    c.memory = memory;
    c.log_level = getenv("HAUL_TEST_LOG") ? atoi(getenv("HAUL_TEST_LOG")) : HAUL_LOG_WARN;
    haul_engine *e = NULL;
    CHECK_OK(haul_engine_new(&c, &e));
    return e;
}

/* Waits until either engine has an event (or ms pass). */
static void wait_either(haul_engine *a, haul_engine *b, int extra_fd, int ms)
{
    struct pollfd p[3] = {{.fd = haul_engine_fd(a), .events = POLLIN},
                          {.fd = haul_engine_fd(b), .events = POLLIN},
                          {.fd = extra_fd, .events = POLLIN}};
    poll(p, extra_fd >= 0 ? 3 : 2, ms);
}

/* A message's first 16 bytes say whose it is and which; the rest is a
 * pattern of both, so that a message delivered twice, out of order or
 * torn shows. */
static void make_message(uint8_t *buf, size_t len, uint64_t who, uint64_t index)
{
    fill_pattern(buf, len, who * 1000003u + index);
    memcpy(buf, &who, 8);
    memcpy(buf + 8, &index, 8);
}

static void check_message(haul_message *m, uint64_t who, uint64_t index, size_t len)
{
    CHECK_EQ(haul_message_len(m), len);
    const uint8_t *d = haul_message_data(m);
    uint64_t w, i;
    memcpy(&w, d, 8);
    memcpy(&i, d + 8, 8);
    CHECK_EQ(w, who);
    CHECK_EQ(i, index);
    uint8_t *want = malloc(len);
    CHECK(want != NULL);
    make_message(want, len, who, index);
    CHECK(memcmp(want, d, len) == 0);
    free(want);
}

/* The client sessions of a test and what each sent and got. */
typedef struct peer {
    haul_session *client;
    haul_session *server;
    uint64_t who;
    uint64_t queued, sent, received;
    uint64_t received_bytes;
    /* With close_after, the client closes the session once that many
     * messages were acknowledged, as a client that is done does: the
     * slots its window still holds go back to the server's budget. */
    uint64_t close_after;
    int closing, closed;
    int opened, failed, refused_sends;
    int window_opened;
} peer;

static peer *peer_of_client(peer *ps, int n, haul_session *s)
{
    for (int i = 0; i < n; i++)
        if (ps[i].client == s)
            return &ps[i];
    return NULL;
}

static peer *peer_of_server(peer *ps, int n, haul_session *s, const char *principal)
{
    for (int i = 0; i < n; i++)
        if (ps[i].server == s)
            return &ps[i];
    /* A new one: the client's context names it. */
    size_t len = 0;
    const void *ctx = haul_session_context(s, &len);
    if (len != 8)
        return NULL;
    uint64_t who;
    memcpy(&who, ctx, 8);
    (void)principal;
    for (int i = 0; i < n; i++)
        if (ps[i].who == who) {
            ps[i].server = s;
            return &ps[i];
        }
    return NULL;
}

static void open_peers(haul_engine *client, const char *address, peer *ps, int n,
                       const char *(*principal_of)(int), uint64_t max_message)
{
    for (int i = 0; i < n; i++) {
        memset(&ps[i], 0, sizeof(ps[i]));
        ps[i].who = (uint64_t)i + 1;
        haul_session_config sc;
        haul_session_config_init(&sc);
        sc.destination = address;
        sc.principal = principal_of(i);
        sc.max_message = max_message;
        sc.output_queue = 128u * max_message;
        sc.connections = 2;
        sc.context = &ps[i].who;
        sc.context_len = 8;
        sc.data = &ps[i];
        CHECK_OK(haul_session_new(client, &sc, &ps[i].client));
    }
}

/* Takes the client engine's events: counts opens, acknowledgements and
 * failures, and notes WINDOW_OPENED. */
static void client_events(haul_engine *client, peer *ps, int n)
{
    haul_event evs[64];
    int k;
    while ((k = haul_engine_wait(client, evs, 64, 0)) > 0) {
        for (int i = 0; i < k; i++) {
            peer *p = peer_of_client(ps, n, evs[i].session);
            if (p == NULL)
                continue;
            switch (evs[i].type) {
            case HAUL_EV_SESSION_OPEN:
                p->opened = 1;
                break;
            case HAUL_EV_MESSAGE_SENT:
                p->sent++;
                if (p->close_after && p->sent == p->close_after && !p->closing) {
                    CHECK_OK(haul_session_close(p->client));
                    p->closing = 1;
                }
                break;
            case HAUL_EV_WINDOW_OPENED:
                p->window_opened++;
                break;
            case HAUL_EV_MESSAGE_FAILED:
            case HAUL_EV_SESSION_REFUSED:
                harness_log("session %llu: %s, %s", (unsigned long long)p->who,
                            haul_event_name(evs[i].type), haul_strerror(evs[i].error));
                p->failed = 1;
                break;
            case HAUL_EV_SESSION_CLOSED:
                if (evs[i].error)
                    p->failed = 1;
                p->closed = 1;
                break;
            default:
                break;
            }
        }
    }
}

/* Sends the peer's messages up to `total`, as far as the engine takes
 * them now. */
static void send_more(peer *p, uint64_t total, uint8_t *buf, size_t len)
{
    while (p->opened && p->queued < total) {
        make_message(buf, len, p->who, p->queued);
        int rc = haul_send(p->client, buf, len, p->queued);
        if (rc == HAUL_EQUEUEFULL) {
            p->refused_sends++;
            return;
        }
        CHECK_OK(rc);
        p->queued++;
    }
}

/* Takes the server engine's events: accepts every session; with take,
 * takes every message that arrives and checks it. Returns how many
 * MESSAGE_RECEIVED events came. */
static int server_events(haul_engine *server, peer *ps, int n, int take, size_t len)
{
    haul_event evs[64];
    int k, got = 0;
    while ((k = haul_engine_wait(server, evs, 64, 0)) > 0) {
        for (int i = 0; i < k; i++) {
            if (evs[i].type == HAUL_EV_SESSION_REQUEST) {
                CHECK(peer_of_server(ps, n, evs[i].session, NULL) != NULL);
                CHECK_OK(haul_session_accept(evs[i].session));
            } else if (evs[i].type == HAUL_EV_MESSAGE_RECEIVED) {
                got++;
            } else if (evs[i].type == HAUL_EV_SESSION_CLOSED && evs[i].error) {
                peer *p = peer_of_server(ps, n, evs[i].session, NULL);
                harness_log("server session %llu closed: %s", p ? (unsigned long long)p->who : 0ull,
                            haul_strerror(evs[i].error));
                CHECK(0);
            }
        }
    }
    if (take) {
        for (int i = 0; i < n; i++) {
            haul_message *m;
            while (ps[i].server && haul_recv(ps[i].server, &m) == 0) {
                check_message(m, ps[i].who, ps[i].received, len);
                ps[i].received++;
                ps[i].received_bytes += haul_message_len(m);
                haul_message_free(m);
            }
        }
    }
    return got;
}

static void close_peers(haul_engine *client, haul_engine *server, peer *ps, int n, size_t len)
{
    for (int i = 0; i < n; i++) {
        if (!ps[i].closing)
            CHECK_OK(haul_session_close(ps[i].client));
        ps[i].closing = 1;
    }
    int closed = 0;
    int64_t until = now_ms() + 30000;
    while (closed < n && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, ps, n);
        server_events(server, ps, n, 1, len);
        closed = 0;
        for (int i = 0; i < n; i++) {
            CHECK(!ps[i].failed);
            closed += ps[i].closed;
        }
    }
    CHECK_EQ(closed, n);
    for (int i = 0; i < n; i++) {
        haul_session_free(ps[i].client);
        if (ps[i].server)
            haul_session_free(ps[i].server);
    }
}

static const char *one_principal(int i)
{
    (void)i;
    return "backup";
}

/* ---- configuration ---------------------------------------------------------- */

/*
 * A budget must keep one largest message for sends and leave one for the
 * receive side: below twice max_message it is refused, at it accepted;
 * 0 is no budget, and its counters stay 0.
 */
TEST(budget_below_two_largest_messages_is_refused)
{
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.max_message = UNIT;
    c.memory = 2 * UNIT - 1;
    haul_engine *e = NULL;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    c.memory = 2 * UNIT;
    CHECK_OK(haul_engine_new(&c, &e));
    haul_engine_free(e);
    c.memory = 0;
    CHECK_OK(haul_engine_new(&c, &e));
    haul_engine_stats st;
    haul_engine_stats_get(e, &st);
    CHECK_EQ(st.memory_used, 0);
    CHECK_EQ(st.memory_peak, 0);
    haul_engine_free(e);
}

/*
 * The application's reservations count in the budget with the messages:
 * up to the receive part (the budget less one largest message), not a
 * byte beyond, and all of it back once given back. Without a budget they
 * count nothing.
 */
TEST(reservations_count_within_the_receive_part)
{
    haul_engine *e = engine_budget(16 * UNIT, UNIT);
    haul_engine_stats st;
    CHECK_OK(haul_engine_reserve(e, 10 * UNIT));
    haul_engine_stats_get(e, &st);
    CHECK_EQ(st.memory_used, 10 * UNIT);
    CHECK_EQ(haul_engine_reserve(e, 5 * UNIT + 1), HAUL_ENOMEM);
    CHECK_OK(haul_engine_reserve(e, 5 * UNIT));
    CHECK_EQ(haul_engine_reserve(e, 1), HAUL_ENOMEM);
    haul_engine_stats_get(e, &st);
    CHECK_EQ(st.memory_used, 15 * UNIT);
    haul_engine_unreserve(e, 10 * UNIT);
    haul_engine_unreserve(e, 5 * UNIT);
    haul_engine_stats_get(e, &st);
    CHECK_EQ(st.memory_used, 0);
    CHECK_EQ(st.memory_peak, 15 * UNIT);
    haul_engine_free(e);
    e = engine_budget(0, UNIT);
    CHECK_OK(haul_engine_reserve(e, 1ull << 40));
    haul_engine_stats_get(e, &st);
    CHECK_EQ(st.memory_used, 0);
    haul_engine_unreserve(e, 1ull << 40);
    haul_engine_free(e);
}

/* ---- the receive side ---------------------------------------------------------- */

/*
 * 200 sessions of one client send four messages each to a server whose
 * application takes none at first. The server's budget has 16 units, one
 * of which is kept for its sends: exactly 15 messages may come in (one
 * slot each for 15 sessions; the others wait with a closed window), and
 * its memory never passes the budget. Once the application takes them,
 * every message of every session arrives, once and in order, and no
 * session fails. Each client closes its session once its messages are
 * acknowledged, as a client that is done does, which gives back the slot
 * its window still held.
 */
TEST_TIMEOUT(budget_holds_with_200_sessions_not_taken, 120)
{
    harness_strerror = haul_strerror;
    enum { N = 200, EACH = 4 };
    const uint64_t memory = 16u * UNIT;
    haul_engine *server = engine_budget(memory, UNIT);
    haul_engine *client = engine_budget(0, UNIT);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    peer *ps = calloc(N, sizeof(*ps));
    uint8_t *buf = malloc(UNIT);
    CHECK(ps != NULL && buf != NULL);
    open_peers(client, address, ps, N, one_principal, UNIT);
    for (int i = 0; i < N; i++)
        ps[i].close_after = EACH;

    /* Phase 1: the application takes nothing. */
    int received = 0;
    int64_t until = now_ms() + 30000;
    while (received < 15 && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, ps, N);
        for (int i = 0; i < N; i++)
            send_more(&ps[i], EACH, buf, UNIT);
        received += server_events(server, ps, N, 0, UNIT);
    }
    CHECK_EQ(received, 15);
    /* Nothing more comes while the application takes nothing. */
    for (int64_t t = now_ms() + 300; now_ms() < t;) {
        wait_either(client, server, -1, 50);
        client_events(client, ps, N);
        received += server_events(server, ps, N, 0, UNIT);
    }
    CHECK_EQ(received, 15);
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    harness_log("held: used %llu, peak %llu of %llu", (unsigned long long)st.memory_used,
                (unsigned long long)st.memory_peak, (unsigned long long)memory);
    CHECK_LE(st.memory_peak, memory);
    CHECK_GE(st.memory_used, 15u * UNIT);

    /* Phase 2: the application takes everything. */
    uint64_t total = 0;
    until = now_ms() + 60000;
    while (total < (uint64_t)N * EACH && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, ps, N);
        for (int i = 0; i < N; i++)
            send_more(&ps[i], EACH, buf, UNIT);
        server_events(server, ps, N, 1, UNIT);
        total = 0;
        for (int i = 0; i < N; i++)
            total += ps[i].received;
    }
    CHECK_EQ(total, (uint64_t)N * EACH);
    for (int i = 0; i < N; i++) {
        CHECK(!ps[i].failed);
        CHECK_EQ(ps[i].received, EACH);
    }
    haul_engine_stats_get(server, &st);
    harness_log("after: used %llu, peak %llu", (unsigned long long)st.memory_used,
                (unsigned long long)st.memory_peak);
    CHECK_LE(st.memory_peak, memory);
    close_peers(client, server, ps, N, UNIT);
    /* Every slot and message went back. */
    haul_engine_stats_get(server, &st);
    CHECK_EQ(st.memory_used, 0);
    haul_engine_free(client);
    haul_engine_free(server);
    free(ps);
    free(buf);
}

/* ---- the send side ------------------------------------------------------------------ */

/*
 * A client with a budget of four units (one kept for sends; its window
 * for the server's answers may reserve the other three) sends to a
 * server whose window admits one message and whose application takes
 * nothing at first: the client's sends fail with HAUL_EQUEUEFULL once
 * its memory is counted in full, well below its output queue. When the server takes the
 * messages, their acknowledgements free the memory, HAUL_EV_WINDOW_OPENED comes, and every message
 * goes, in order.
 */
TEST_TIMEOUT(sends_past_the_budget_fail_until_window_opened, 60)
{
    harness_strerror = haul_strerror;
    enum { TOTAL = 24 };
    const uint64_t memory = 4u * UNIT;
    haul_engine *server = engine_budget(0, UNIT);
    haul_engine *client = engine_budget(memory, UNIT);
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.input_queue = UNIT;
    CHECK_OK(haul_listen(server, "127.0.0.1:0", &lc));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    peer p;
    uint8_t *buf = malloc(UNIT);
    CHECK(buf != NULL);
    open_peers(client, address, &p, 1, one_principal, UNIT);

    /* Sends until the budget refuses one; the output queue (128 units)
     * would take more. */
    int64_t until = now_ms() + 20000;
    while (p.refused_sends == 0 && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, &p, 1);
        send_more(&p, TOTAL, buf, UNIT);
        server_events(server, &p, 1, 0, UNIT);
    }
    CHECK_EQ(p.refused_sends, 1);
    /* Four units, and at most one message acknowledged (the server's
     * window admits one) and so no longer counted. */
    CHECK_LE(p.queued, 5u);
    haul_engine_stats st;
    haul_engine_stats_get(client, &st);
    CHECK_LE(st.memory_peak, memory);
    CHECK_EQ(p.window_opened, 0);

    /* The server takes: memory frees, the window opens, the rest goes. */
    until = now_ms() + 30000;
    while (p.received < TOTAL && now_ms() < until) {
        wait_either(client, server, -1, 100);
        int before = p.window_opened;
        uint64_t sent_before = p.sent;
        client_events(client, &p, 1);
        /* An application that retries only on WINDOW_OPENED or
         * MESSAGE_SENT never hangs. */
        if (p.window_opened != before || p.sent != sent_before)
            send_more(&p, TOTAL, buf, UNIT);
        server_events(server, &p, 1, 1, UNIT);
    }
    CHECK_EQ(p.received, TOTAL);
    CHECK_GE(p.window_opened, 1);
    CHECK(!p.failed);
    haul_engine_stats_get(client, &st);
    CHECK_LE(st.memory_peak, memory);
    close_peers(client, server, &p, 1, UNIT);
    haul_engine_stats_get(client, &st);
    CHECK_EQ(st.memory_used, 0);
    haul_engine_free(client);
    haul_engine_free(server);
    free(buf);
}

/* ---- fairness -------------------------------------------------------------------------- */

static const char *ten_and_one(int i)
{
    return i < 10 ? "many" : "one";
}

/*
 * Principal "many" has 10 sessions, principal "one" a single one; every
 * session sends as fast as its window allows. The server's budget has 8
 * units (7 for receiving) and its application takes one message a
 * millisecond, in the order they arrived. Shared between principals
 * first, the single session gets about half of the bytes; sharing
 * between sessions alone would give it one eleventh. It must get at
 * least a third.
 */
TEST_TIMEOUT(fair_between_two_principals, 60)
{
    harness_strerror = haul_strerror;
    enum { N = 11, TAKE = 330 };
    const uint64_t memory = 8u * UNIT;
    haul_engine *server = engine_budget(memory, UNIT);
    haul_engine *client = engine_budget(0, UNIT);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    peer ps[N];
    uint8_t *buf = malloc(UNIT);
    CHECK(buf != NULL);
    open_peers(client, address, ps, N, ten_and_one, UNIT);

    /* The order messages arrived in: a ring of sessions, one entry per
     * MESSAGE_RECEIVED. */
    enum { RING = 4096 };
    haul_session **ring = calloc(RING, sizeof(*ring));
    CHECK(ring != NULL);
    unsigned head = 0, tail = 0;
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    CHECK(tfd >= 0);
    struct itimerspec its = {.it_interval = {0, 1000000L}, .it_value = {0, 1000000L}};
    CHECK_OK(timerfd_settime(tfd, 0, &its, NULL));

    int taken = 0;
    int64_t until = now_ms() + 40000;
    while (taken < TAKE && now_ms() < until) {
        wait_either(client, server, tfd, 100);
        client_events(client, ps, N);
        for (int i = 0; i < N; i++)
            send_more(&ps[i], UINT64_MAX, buf, UNIT);
        haul_event evs[64];
        int k;
        while ((k = haul_engine_wait(server, evs, 64, 0)) > 0) {
            for (int i = 0; i < k; i++) {
                if (evs[i].type == HAUL_EV_SESSION_REQUEST) {
                    CHECK(peer_of_server(ps, N, evs[i].session, NULL) != NULL);
                    CHECK_OK(haul_session_accept(evs[i].session));
                } else if (evs[i].type == HAUL_EV_MESSAGE_RECEIVED) {
                    CHECK(tail - head < RING);
                    ring[tail++ % RING] = evs[i].session;
                }
            }
        }
        uint64_t ticks = 0;
        if (read(tfd, &ticks, sizeof(ticks)) != sizeof(ticks))
            ticks = 0;
        for (; ticks > 0 && head != tail && taken < TAKE; ticks--) {
            haul_session *s = ring[head++ % RING];
            peer *p = peer_of_server(ps, N, s, NULL);
            haul_message *m;
            CHECK(p != NULL);
            CHECK_OK(haul_recv(s, &m));
            check_message(m, p->who, p->received, UNIT);
            p->received++;
            p->received_bytes += haul_message_len(m);
            haul_message_free(m);
            taken++;
        }
    }
    CHECK_EQ(taken, TAKE);
    uint64_t many = 0, one = ps[10].received_bytes;
    for (int i = 0; i < 10; i++)
        many += ps[i].received_bytes;
    harness_log("principal many: %llu bytes, principal one: %llu bytes", (unsigned long long)many,
                (unsigned long long)one);
    CHECK_GE(3 * one, one + many);
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    CHECK_LE(st.memory_peak, memory);
    close(tfd);
    free(ring);
    /* The sessions go without an orderly close: what is queued fails. */
    for (int i = 0; i < N; i++) {
        haul_session_free(ps[i].client);
        if (ps[i].server)
            haul_session_free(ps[i].server);
    }
    haul_engine_free(client);
    haul_engine_free(server);
    free(buf);
}

/* ---- no starvation ---------------------------------------------------------------------- */

static const char *four_principals(int i)
{
    static const char *names[4] = {"p0", "p1", "p2", "p3"};
    return names[i % 4];
}

/*
 * 40 sessions of four principals, and a server budget of four units (three
 * for receiving): far more sessions than units. The application takes
 * every message at once; every session still gets all of its messages
 * through, in order, and the budget holds.
 */
TEST_TIMEOUT(more_sessions_than_units_all_complete, 60)
{
    harness_strerror = haul_strerror;
    enum { N = 40, EACH = 6 };
    const uint64_t memory = 4u * UNIT;
    haul_engine *server = engine_budget(memory, UNIT);
    haul_engine *client = engine_budget(0, UNIT);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    peer ps[N];
    uint8_t *buf = malloc(UNIT);
    CHECK(buf != NULL);
    open_peers(client, address, ps, N, four_principals, UNIT);
    for (int i = 0; i < N; i++)
        ps[i].close_after = EACH;
    uint64_t total = 0;
    int64_t until = now_ms() + 40000;
    while (total < (uint64_t)N * EACH && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, ps, N);
        for (int i = 0; i < N; i++)
            send_more(&ps[i], EACH, buf, UNIT);
        server_events(server, ps, N, 1, UNIT);
        total = 0;
        for (int i = 0; i < N; i++)
            total += ps[i].received;
    }
    for (int i = 0; i < N; i++) {
        CHECK(!ps[i].failed);
        CHECK_EQ(ps[i].received, EACH);
    }
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    CHECK_GT(st.memory_peak, 0);
    CHECK_LE(st.memory_peak, memory);
    close_peers(client, server, ps, N, UNIT);
    haul_engine_free(client);
    haul_engine_free(server);
    free(buf);
}

/* ---- a single session ------------------------------------------------------------------- */

/*
 * One session, a server budget of 256 MiB, an input queue of 64 MiB and
 * 1 MiB messages, and an application that takes nothing: the window
 * starts small under the budget but grows with use to the 32 messages
 * it has without a budget, and no further (an application that takes
 * nothing gives the session no rate, and the window is then the 32 MiB
 * that haul.h promises at least).
 */
TEST_TIMEOUT(single_session_keeps_its_whole_window, 60)
{
    harness_strerror = haul_strerror;
    const uint64_t mib = 1u << 20;
    const uint64_t memory = 256 * mib;
    haul_engine *server = engine_budget(memory, mib);
    haul_engine *client = engine_budget(0, mib);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    peer p;
    uint8_t *buf = malloc(mib);
    CHECK(buf != NULL);
    open_peers(client, address, &p, 1, one_principal, mib);
    int received = 0;
    int64_t until = now_ms() + 30000;
    while (received < 32 && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, &p, 1);
        send_more(&p, 80, buf, mib);
        received += server_events(server, &p, 1, 0, mib);
    }
    CHECK_EQ(received, 32);
    for (int64_t t = now_ms() + 300; now_ms() < t;) {
        wait_either(client, server, -1, 50);
        client_events(client, &p, 1);
        received += server_events(server, &p, 1, 0, mib);
    }
    CHECK_EQ(received, 32);
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    CHECK_GE(st.memory_used, 32 * mib);
    CHECK_LE(st.memory_peak, memory);
    close_peers(client, server, &p, 1, mib);
    haul_engine_free(client);
    haul_engine_free(server);
    free(buf);
}

/* ---- freeing from elsewhere ------------------------------------------------------------- */

typedef struct freer {
    haul_message *msgs[64];
    int n;
} freer;

static void *free_all(void *arg)
{
    freer *f = arg;
    for (int i = 0; i < f->n; i++)
        haul_message_free(f->msgs[i]);
    return NULL;
}

/*
 * Received messages count until the application frees them, from any
 * thread, whether their session and engine are still there or not. Half
 * of them are freed on another thread while the engine runs: the memory
 * comes back, and the window the budget held closed opens again. The
 * other half outlive their session and their engine.
 */
TEST_TIMEOUT(messages_freed_on_another_thread_and_after_the_engine, 60)
{
    harness_strerror = haul_strerror;
    enum { EACH = 16 };
    const uint64_t memory = 10u * UNIT;
    haul_engine *server = engine_budget(memory, UNIT);
    haul_engine *client = engine_budget(0, UNIT);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    peer p;
    uint8_t *buf = malloc(UNIT);
    CHECK(buf != NULL);
    open_peers(client, address, &p, 1, one_principal, UNIT);

    /* The receive part holds 9 units: 9 messages come, no more, until
     * some are freed. */
    freer first = {.n = 0}, later = {.n = 0};
    int64_t until = now_ms() + 30000;
    while (first.n < 9 && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, &p, 1);
        send_more(&p, EACH, buf, UNIT);
        server_events(server, &p, 1, 0, UNIT);
        haul_message *m;
        while (p.server && first.n < 9 && haul_recv(p.server, &m) == 0) {
            check_message(m, p.who, (uint64_t)first.n, UNIT);
            first.msgs[first.n++] = m;
        }
    }
    CHECK_EQ(first.n, 9);
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    CHECK_GE(st.memory_used, 9u * UNIT);
    CHECK_LE(st.memory_peak, memory);
    pthread_t th;
    CHECK_OK(pthread_create(&th, NULL, free_all, &first));
    while (later.n < EACH - 9 && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, &p, 1);
        server_events(server, &p, 1, 0, UNIT);
        haul_message *m;
        while (haul_recv(p.server, &m) == 0) {
            check_message(m, p.who, (uint64_t)(9 + later.n), UNIT);
            later.msgs[later.n++] = m;
        }
    }
    pthread_join(th, NULL);
    CHECK_EQ(later.n, EACH - 9);
    haul_engine_stats_get(server, &st);
    CHECK_LE(st.memory_peak, memory);
    haul_session_free(p.client);
    haul_session_free(p.server);
    haul_engine_free(client);
    haul_engine_free(server);
    /* The engine is gone; its messages are still the application's. */
    for (int i = 0; i < later.n; i++)
        check_message(later.msgs[i], p.who, (uint64_t)(9 + i), UNIT);
    free_all(&later);
    free(buf);
}

/* ---- the idle return of memory ------------------------------------------------------------ */

static long resident_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, pages = 0;
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &size, &pages) != 2)
            pages = 0;
        fclose(f);
    }
    return pages * (sysconf(_SC_PAGESIZE) / 1024);
}

/*
 * 48 messages of 1 MiB pile up in a server engine with a 64 MiB budget,
 * the client closes, then the application takes and frees them all:
 * their bodies go to the engine's pool, still resident. Once nobody took them for a second, the
 * engine unmaps them: the process's resident memory falls back to within
 * a few MiB of what it was before the burst. (The client sends from one
 * buffer of its own, so that only the server's bodies come and go.)
 */
TEST_TIMEOUT(pooled_bodies_go_back_to_the_system_when_idle, 60)
{
    harness_strerror = haul_strerror;
    enum { COUNT = 30 }; /* within the 32 MiB window of an application that takes nothing */
    const uint64_t mib = 1u << 20;
    haul_engine *server = engine_budget(64 * mib, mib);
    haul_engine *client = engine_budget(0, mib);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    peer p;
    uint8_t *buf = malloc(mib);
    CHECK(buf != NULL);
    memset(buf, 0x5a, mib);
    open_peers(client, address, &p, 1, one_principal, mib);
    int64_t until = now_ms() + 30000;
    while (!p.opened && now_ms() < until) {
        wait_either(client, server, -1, 100);
        client_events(client, &p, 1);
        server_events(server, &p, 1, 0, mib);
    }
    CHECK(p.opened);
    long base = resident_kib();

    /* The client closes once its messages are in: the slots the window
     * still held go back, and the bodies alone count. */
    p.close_after = COUNT;
    int received = 0;
    while ((received < COUNT || !p.closed) && now_ms() < until) {
        while (p.queued < COUNT && haul_send_buffer(p.client, buf, mib, NULL, NULL, 0) == 0)
            p.queued++;
        wait_either(client, server, -1, 100);
        client_events(client, &p, 1);
        received += server_events(server, &p, 1, 0, mib);
    }
    CHECK_EQ(received, COUNT);
    CHECK(p.closed);
    haul_message *m;
    int taken = 0;
    while (haul_recv(p.server, &m) == 0) {
        haul_message_free(m);
        taken++;
    }
    CHECK_EQ(taken, COUNT);
    long full = resident_kib();
    harness_log("resident: %ld KiB before, %ld KiB with the bodies freed", base, full);
    CHECK_GE(full, base + 24 * 1024);

    /* Waits for the engine's sweep, which needs a second without use. */
    long now = full;
    until = now_ms() + 10000;
    while (now > base + 8 * 1024 && now_ms() < until) {
        wait_either(client, server, -1, 50);
        client_events(client, &p, 1);
        server_events(server, &p, 1, 0, mib);
        now = resident_kib();
    }
    harness_log("resident once idle: %ld KiB", now);
    CHECK_LE(now, base + 8 * 1024);
    close_peers(client, server, &p, 1, mib);
    haul_engine_free(client);
    haul_engine_free(server);
    free(buf);
}

/* ---- answers --------------------------------------------------------------------------- */

/*
 * Request and answer: four clients each send a request of one unit and
 * wait for an answer of one unit before the next. The server's budget has
 * four units; after each request, the slot its session is granted next
 * sits idle until the answer is in, so the sessions' slots can hold
 * every unit the receive side may have (and would hold the whole budget,
 * were none kept for sends). The unit kept for sends lets the answers
 * go, one at a time, the server retrying on HAUL_EV_WINDOW_OPENED or
 * HAUL_EV_MESSAGE_SENT: every round of every session completes.
 */
TEST_TIMEOUT(answers_go_out_while_idle_slots_hold_the_receive_part, 60)
{
    harness_strerror = haul_strerror;
    enum { N = 4, ROUNDS = 6 };
    const uint64_t memory = 4u * UNIT;
    haul_engine *server = engine_budget(memory, UNIT);
    haul_engine *client = engine_budget(0, UNIT);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    peer ps[N];
    uint8_t *buf = malloc(UNIT);
    CHECK(buf != NULL);
    open_peers(client, address, ps, N, one_principal, UNIT);
    uint64_t answers_owed[N] = {0}, answers_sent[N] = {0}, answers_got[N] = {0};
    int refused = 0;
    int64_t until = now_ms() + 40000;
    int done = 0;
    while (done < N && now_ms() < until) {
        wait_either(client, server, -1, 100);
        /* Client: a request when open and after each answer. */
        haul_event evs[64];
        int k;
        while ((k = haul_engine_wait(client, evs, 64, 0)) > 0) {
            for (int i = 0; i < k; i++) {
                peer *p = peer_of_client(ps, N, evs[i].session);
                CHECK(p != NULL);
                CHECK(evs[i].type != HAUL_EV_MESSAGE_FAILED);
                CHECK(evs[i].type != HAUL_EV_SESSION_REFUSED);
                if (evs[i].type == HAUL_EV_SESSION_OPEN)
                    p->opened = 1;
                if (evs[i].type == HAUL_EV_SESSION_CLOSED) {
                    CHECK_EQ(evs[i].error, HAUL_OK);
                    p->closed = 1;
                }
                if (evs[i].type == HAUL_EV_MESSAGE_RECEIVED) {
                    haul_message *m;
                    while (haul_recv(p->client, &m) == 0) {
                        check_message(m, 1000 + p->who, answers_got[p - ps]++, UNIT);
                        haul_message_free(m);
                    }
                }
            }
        }
        done = 0;
        for (int i = 0; i < N; i++) {
            peer *p = &ps[i];
            if (p->opened && p->queued < ROUNDS && p->queued == answers_got[i]) {
                make_message(buf, UNIT, p->who, p->queued);
                CHECK_OK(haul_send(p->client, buf, UNIT, p->queued));
                p->queued++;
            }
            /* A client that is done closes, as haul's do: a session left
             * open would keep the slot its window was granted last, and
             * with it, its principal's share. */
            if (answers_got[i] == ROUNDS && !p->closing) {
                CHECK_OK(haul_session_close(p->client));
                p->closing = 1;
            }
            done += answers_got[i] == ROUNDS;
        }
        /* Server: an answer owed for each request, sent as memory
         * allows. */
        int retry = 0;
        while ((k = haul_engine_wait(server, evs, 64, 0)) > 0) {
            for (int i = 0; i < k; i++) {
                if (evs[i].type == HAUL_EV_SESSION_REQUEST) {
                    CHECK(peer_of_server(ps, N, evs[i].session, NULL) != NULL);
                    CHECK_OK(haul_session_accept(evs[i].session));
                } else if (evs[i].type == HAUL_EV_WINDOW_OPENED ||
                           evs[i].type == HAUL_EV_MESSAGE_SENT) {
                    retry = 1;
                }
            }
        }
        for (int i = 0; i < N; i++) {
            haul_message *m;
            while (ps[i].server && haul_recv(ps[i].server, &m) == 0) {
                check_message(m, ps[i].who, ps[i].received++, UNIT);
                haul_message_free(m);
                answers_owed[i]++;
                retry = 1;
            }
        }
        for (int i = 0; retry && i < N; i++) {
            while (answers_sent[i] < answers_owed[i]) {
                make_message(buf, UNIT, 1000 + ps[i].who, answers_sent[i]);
                int rc = haul_send(ps[i].server, buf, UNIT, answers_sent[i]);
                if (rc == HAUL_EQUEUEFULL) {
                    refused++;
                    break;
                }
                CHECK_OK(rc);
                answers_sent[i]++;
            }
        }
    }
    harness_log("answers refused for memory, then sent: %d", refused);
    for (int i = 0; i < N; i++)
        CHECK_EQ(answers_got[i], ROUNDS);
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    CHECK_LE(st.memory_peak, memory);
    close_peers(client, server, ps, N, UNIT);
    haul_engine_free(client);
    haul_engine_free(server);
    free(buf);
}
