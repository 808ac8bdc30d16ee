/*
 * sweep_test.c - the sweep of deadlines runs when a deadline is due or
 * something happened, not at a fixed period: an engine with nothing to
 * do sleeps, and a deadline set while it sleeps is kept all the same.
 *
 * A thousand clients waiting for a busy server, each waking 50 times a
 * second for nothing, spend more CPU than their work. The tests count the
 * sweeps an engine runs (haul_engine.sweeps, under its mutex) while it
 * waits, over real connections on loopback.
 */
#include <stdlib.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "core/engine.h"
#include "harness.h"
#include "util.h"

/* How long the tests watch a quiet engine, and the most sweeps it may
 * run meanwhile: a sweep period of 20 ms would make 50. */
#define QUIET_MS 1000
#define QUIET_SWEEPS 4

static uint64_t sweeps(haul_engine *e)
{
    pthread_mutex_lock(&e->mu);
    uint64_t n = e->sweeps;
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* Waits QUIET_MS on the engine's completion queue, which must stay
 * empty, and returns how many sweeps ran meanwhile. */
static uint64_t sweeps_while_quiet(haul_engine *e)
{
    uint64_t before = sweeps(e);
    haul_event ev;
    CHECK_EQ(haul_engine_wait(e, &ev, 1, QUIET_MS), 0);
    return sweeps(e) - before;
}

static haul_session *open_session(haul_engine *e, const char *address, uint64_t max_message)
{
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "quiet";
    sc.connections = 2;
    sc.max_message = max_message;
    haul_session *s;
    CHECK_OK(haul_session_new(e, &sc, &s));
    haul_event ev;
    CHECK(wait_for(e, HAUL_EV_SESSION_OPEN, &ev, 5000));
    CHECK(ev.session == s);
    return s;
}

TEST(an_idle_pipe_sleeps_until_its_keepalive)
{
    harness_strerror = haul_strerror;
    haul_engine *server = engine_quiet(1, 0), *client = engine_quiet(2, 0);
    CHECK(server && client);
    char address[128];
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    sink k;
    CHECK_OK(sink_start(&k, server));
    haul_session *s = open_session(client, address, 1u << 20);
    CHECK_OK(haul_send(s, "ping", 4, 1));
    haul_event ev;
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));

    /* Both ends hold a joined pipe with an open session, and the next
     * deadline is a keepalive 5 s away. */
    uint64_t n = sweeps_while_quiet(client);
    harness_log("client: %llu sweeps in %d ms", (unsigned long long)n, QUIET_MS);
    CHECK(n <= QUIET_SWEEPS);
    uint64_t before = sweeps(server);
    CHECK_EQ(haul_engine_wait(client, &ev, 1, QUIET_MS), 0);
    n = sweeps(server) - before;
    harness_log("server: %llu sweeps in %d ms", (unsigned long long)n, QUIET_MS);
    CHECK(n <= QUIET_SWEEPS);

    /* Awake again at once when there is work. */
    CHECK_OK(haul_send(s, "pong", 4, 2));
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));
    CHECK_OK(haul_session_close(s));
    CHECK(wait_for(client, HAUL_EV_SESSION_CLOSED, &ev, 5000));
    CHECK_EQ(ev.error, 0);
    CHECK(sink_wait_closed(&k, 1, 5000));
    CHECK_EQ(k.sessions[0].messages, 2);
    haul_session_free(s);
    sink_stop(&k);
    haul_engine_free(client);
    haul_engine_free(server);
}

/* A server whose application accepts and then takes nothing: the
 * client's window closes with a message waiting, and its timeout is far. */
TEST(a_client_waiting_for_its_window_sleeps)
{
    harness_strerror = haul_strerror;
    haul_engine *server = engine_quiet(1, 0), *client = engine_quiet(2, 0);
    CHECK(server && client);
    char address[128];
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "waiting";
    sc.connections = 2;
    /* The receiver counts its window in messages of this size: its
     * input queue of 32 MiB admits two. */
    sc.max_message = 16u << 20;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(wait_for(server, HAUL_EV_SESSION_REQUEST, &ev, 5000));
    CHECK_OK(haul_session_accept(ev.session));
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &ev, 5000));
    /* Two messages of 12 MiB fill 24 MiB of it, which leaves less than
     * one message of room: the third waits. */
    size_t len = 12u << 20;
    uint8_t *buf = calloc(1, len);
    CHECK(buf != NULL);
    CHECK_OK(haul_send(s, buf, len, 0));
    CHECK_OK(haul_send(s, buf, len, 1));
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));
    CHECK_OK(haul_send(s, buf, len, 2));
    free(buf);
    pthread_mutex_lock(&client->mu);
    int waiting = !haul__list_empty(&s->outq) && s->next_seq > s->right;
    pthread_mutex_unlock(&client->mu);
    CHECK(waiting);

    uint64_t n = sweeps_while_quiet(client);
    harness_log("client: %llu sweeps in %d ms", (unsigned long long)n, QUIET_MS);
    CHECK(n <= QUIET_SWEEPS);
    haul_session_free(s);
    haul_engine_free(client);
    haul_engine_free(server);
}

/* The open deadline of a session made while the engine sleeps: the
 * server never answers (its socket listens and never accepts). */
TEST(a_deadline_set_while_asleep_is_kept)
{
    harness_strerror = haul_strerror;
    haul_engine *server = engine_quiet(1, 0), *client = engine_quiet(1, 0);
    CHECK(server && client);
    char address[128];
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    sink k;
    CHECK_OK(sink_start(&k, server));
    haul_session *s = open_session(client, address, 1u << 20);
    uint64_t n = sweeps_while_quiet(client);
    CHECK(n <= QUIET_SWEEPS);

    int mute = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(mute >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_OK(bind(mute, (struct sockaddr *)&sa, sizeof(sa)));
    CHECK_OK(listen(mute, 8));
    socklen_t len = sizeof(sa);
    CHECK_OK(getsockname(mute, (struct sockaddr *)&sa, &len));
    char mute_address[64];
    snprintf(mute_address, sizeof(mute_address), "127.0.0.1:%u", ntohs(sa.sin_port));

    /* Just after a sweep, which found its next deadline a keepalive
     * period away. */
    uint64_t last = sweeps(client);
    int64_t until = now_ms() + 5000;
    while (sweeps(client) == last && now_ms() < until) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    CHECK(sweeps(client) != last);

    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = mute_address;
    sc.principal = "unanswered";
    sc.message_timeout_ms = 300;
    haul_session *u;
    int64_t t0 = now_ms();
    CHECK_OK(haul_session_new(client, &sc, &u));
    haul_event ev;
    CHECK(wait_for(client, HAUL_EV_SESSION_REFUSED, &ev, 5000));
    int64_t took = now_ms() - t0;
    harness_log("refused after %lld ms: %s", (long long)took, haul_strerror(ev.error));
    CHECK(ev.session == u);
    CHECK_EQ(ev.error, HAUL_ETIMEDOUT);
    CHECK(took >= 300);
    /* One sweep period late at most, and some room for a loaded
     * machine; the longest sleep (1 s) would be far beyond. */
    CHECK(took < 300 + 400);
    haul_session_free(u);
    close(mute);
    haul_session_free(s);
    sink_stop(&k);
    haul_engine_free(client);
    haul_engine_free(server);
}
