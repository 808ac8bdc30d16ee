/*
 * slow_link_test.c - the message timeout on a link that is slow but
 * moving, and on one that has stopped.
 *
 * A throttling proxy, a thread of the test, sits between a client engine
 * and a server engine: it forwards what the client writes at a fixed rate
 * (and what the server writes as fast as it comes), so that one large
 * message takes several message timeouts to cross while its bytes keep
 * flowing. Such a message must arrive: the timeout counts time without
 * progress, not the age of the message. When the proxy stops forwarding
 * altogether, the message must still fail with HAUL_ETIMEDOUT, about one
 * timeout after its bytes stopped moving.
 */
#include <arpa/inet.h>
#include <errno.h>
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

#include "harness.h"
#include "util.h"

#define MIB (1u << 20)
#define TIMEOUT_MS 400

/* ---- the throttling proxy ---------------------------------------------------- */

typedef struct proxy {
    int listen_fd;
    struct sockaddr_in target;
    pthread_t thread;
    pthread_mutex_t mu;
    uint64_t rate;        /* client-to-server bytes per second; 0: none forwarded */
    uint64_t forwarded;   /* client-to-server bytes so far */
    int64_t last_forward; /* when the last of them went */
    int stop;
    char address[64];
} proxy;

/* Forwards one connection pair until either side ends or the proxy
 * stops. The client's bytes are read only as the rate allows, so that
 * the client's socket fills and its writes wait, as on a slow link. */
static void relay(proxy *p, int client, int server)
{
    uint8_t buf[65536];
    int64_t start = now_ms();
    uint64_t sent = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int stop = p->stop;
        uint64_t rate = p->rate;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            return;
        /* The bytes the rate allows by now, from when the rate was set. */
        uint64_t allowed = rate ? (uint64_t)(now_ms() - start) * rate / 1000 : 0;
        if (rate == 0) {
            start = now_ms();
            sent = 0;
        }
        size_t room = allowed > sent ? (size_t)(allowed - sent) : 0;
        if (room > sizeof(buf))
            room = sizeof(buf);
        struct pollfd pfd[2] = {{.fd = client, .events = room ? POLLIN : 0},
                                {.fd = server, .events = POLLIN}};
        /* The timeout paces the rate: 5 ms of it at a time. */
        int r = poll(pfd, 2, 5);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return;
        if (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(server, buf, sizeof(buf), 0);
            if (n <= 0)
                return;
            for (ssize_t off = 0; off < n;) {
                ssize_t w = send(client, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
                if (w <= 0)
                    return;
                off += w;
            }
        }
        if (room && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = recv(client, buf, room, 0);
            if (n <= 0)
                return;
            for (ssize_t off = 0; off < n;) {
                ssize_t w = send(server, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
                if (w <= 0)
                    return;
                off += w;
            }
            sent += (uint64_t)n;
            pthread_mutex_lock(&p->mu);
            p->forwarded += (uint64_t)n;
            p->last_forward = now_ms();
            pthread_mutex_unlock(&p->mu);
        }
    }
}

/* Takes one connection (the client's pipe has one) and relays it. */
static void *proxy_main(void *arg)
{
    proxy *p = arg;
    struct pollfd pfd = {.fd = p->listen_fd, .events = POLLIN};
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int stop = p->stop;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            return NULL;
        if (poll(&pfd, 1, 20) <= 0)
            continue;
        int client = accept(p->listen_fd, NULL, NULL);
        if (client < 0)
            continue;
        int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (server >= 0 && connect(server, (struct sockaddr *)&p->target, sizeof(p->target)) == 0)
            relay(p, client, server);
        if (server >= 0)
            close(server);
        close(client);
    }
}

static void proxy_start(proxy *p, const char *target, uint64_t rate)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    p->rate = rate;
    const char *colon = strrchr(target, ':');
    CHECK(colon != NULL);
    p->target.sin_family = AF_INET;
    p->target.sin_port = htons((uint16_t)atoi(colon + 1));
    CHECK_EQ(inet_pton(AF_INET, "127.0.0.1", &p->target.sin_addr), 1);
    p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(p->listen_fd >= 0);
    /* A small receive buffer, inherited by the accepted socket, so that
     * little of the client's output hides in the proxy's kernel. */
    int small = 64 * 1024;
    CHECK_OK(setsockopt(p->listen_fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)));
    struct sockaddr_in sin = {.sin_family = AF_INET};
    CHECK_EQ(inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr), 1);
    CHECK_OK(bind(p->listen_fd, (struct sockaddr *)&sin, sizeof(sin)));
    CHECK_OK(listen(p->listen_fd, 4));
    socklen_t len = sizeof(sin);
    CHECK_OK(getsockname(p->listen_fd, (struct sockaddr *)&sin, &len));
    snprintf(p->address, sizeof(p->address), "127.0.0.1:%u", ntohs(sin.sin_port));
    CHECK_OK(pthread_create(&p->thread, NULL, proxy_main, p));
}

static void proxy_set_rate(proxy *p, uint64_t rate)
{
    pthread_mutex_lock(&p->mu);
    p->rate = rate;
    pthread_mutex_unlock(&p->mu);
}

static uint64_t proxy_forwarded(proxy *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t n = p->forwarded;
    pthread_mutex_unlock(&p->mu);
    return n;
}

static void proxy_stop(proxy *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    close(p->listen_fd);
}

/* ---- the tests ----------------------------------------------------------------- */

typedef struct rig {
    haul_engine *server, *client;
    sink k;
    proxy px;
    haul_session *s;
} rig;

static void rig_open(rig *r, uint64_t rate, uint64_t max_message)
{
    harness_strerror = haul_strerror;
    r->server = engine_quiet(1, 0);
    r->client = engine_quiet(1, 0);
    CHECK(r->server != NULL);
    CHECK(r->client != NULL);
    CHECK_OK(haul_listen(r->server, "127.0.0.1:0", NULL));
    char address[128];
    CHECK_OK(haul_listen_address(r->server, address, sizeof(address)));
    CHECK_OK(sink_start(&r->k, r->server));
    proxy_start(&r->px, address, rate);
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = r->px.address;
    sc.principal = "SLOW_LINK_TEST";
    sc.max_message = max_message;
    sc.message_timeout_ms = TIMEOUT_MS;
    CHECK_OK(haul_session_new(r->client, &sc, &r->s));
    haul_event ev;
    CHECK(next_event(r->client, &ev, 5000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_OPEN);
}

static void rig_close(rig *r)
{
    haul_session_free(r->s);
    haul_engine_free(r->client);
    proxy_stop(&r->px);
    sink_stop(&r->k);
    haul_engine_free(r->server);
}

/*
 * A message of 8 MiB over a link of 2 MiB/s takes seconds, several
 * message timeouts of 400 ms, and keeps moving all along: it arrives,
 * whole and once.
 */
TEST_TIMEOUT(slow_message_that_keeps_moving_arrives, 60)
{
    rig r;
    rig_open(&r, 2 * MIB, 8 * MIB);
    uint8_t *buf = malloc(8 * MIB);
    CHECK(buf != NULL);
    fill_pattern(buf, 8 * MIB, 9);
    int64_t queued = now_ms();
    CHECK_OK(haul_send(r.s, buf, 8 * MIB, 1));
    haul_event ev;
    CHECK(next_event(r.client, &ev, 30000));
    int64_t took = now_ms() - queued;
    harness_log("8 MiB took %lld ms at 2 MiB/s, with a message timeout of %d ms", (long long)took,
                TIMEOUT_MS);
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
    CHECK_EQ(ev.tag, 1);
    /* Otherwise the test would prove nothing. */
    CHECK_GT(took, 2 * TIMEOUT_MS);
    CHECK_OK(haul_session_close(r.s));
    CHECK(next_event(r.client, &ev, 10000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_CLOSED);
    CHECK_EQ(ev.error, HAUL_OK);
    CHECK(sink_wait_closed(&r.k, 1, 10000));
    pthread_mutex_lock(&r.k.mu);
    CHECK_EQ(r.k.sessions[0].messages, 1);
    CHECK_EQ(XXH3_64bits_digest(r.k.sessions[0].hash), XXH3_64bits(buf, 8 * MIB));
    pthread_mutex_unlock(&r.k.mu);
    free(buf);
    rig_close(&r);
}

/*
 * The same link stops forwarding after 1 MiB: nothing moves any more,
 * and the message fails with HAUL_ETIMEDOUT about one timeout after its
 * last bytes left.
 */
TEST_TIMEOUT(stalled_message_times_out, 60)
{
    rig r;
    rig_open(&r, 2 * MIB, 8 * MIB);
    uint8_t *buf = malloc(8 * MIB);
    CHECK(buf != NULL);
    fill_pattern(buf, 8 * MIB, 10);
    CHECK_OK(haul_send(r.s, buf, 8 * MIB, 1));
    free(buf);
    haul_event ev;
    while (proxy_forwarded(&r.px) < MIB)
        CHECK(!next_event(r.client, &ev, 5));
    proxy_set_rate(&r.px, 0);
    CHECK(next_event(r.client, &ev, 30000));
    int64_t failed = now_ms();
    pthread_mutex_lock(&r.px.mu);
    int64_t took = failed - r.px.last_forward;
    pthread_mutex_unlock(&r.px.mu);
    harness_log("the stalled message failed %lld ms after the link's last forward (timeout %d ms)",
                (long long)took, TIMEOUT_MS);
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_FAILED);
    CHECK_EQ(ev.error, HAUL_ETIMEDOUT);
    /* The client's bytes stop moving when the proxy stops reading; its
     * last reads may take what its receive buffer already held (64 KiB,
     * some 30 ms at this rate), and the engine notices moves at each
     * sweep of 20 ms, so it may not fail much sooner than a timeout after
     * the last forward. The upper bound is generous, for a loaded
     * machine. */
    CHECK_GE(took, TIMEOUT_MS - 100);
    CHECK_LT(took, TIMEOUT_MS + 3000);
    CHECK(next_event(r.client, &ev, 5000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_CLOSED);
    CHECK_EQ(ev.error, HAUL_ETIMEDOUT);
    rig_close(&r);
}
