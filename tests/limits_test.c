/*
 * limits_test.c - a cap on connections that have not finished their
 * handshake: peers that connect and say nothing hold at most
 * max_handshakes slots; a new connection beyond them waits in the accept
 * queue until the one that has waited longest has been at it for a
 * quarter of the handshake deadline, and then closes it, so an honest
 * client still gets through.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "util.h"

#define CAP 10
#define SILENT 25

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    CHECK(connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
    return fd;
}

/* 1 when the server closed the socket within ms. */
static int closed_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, ms) != 1)
        return 0;
    char c;
    return recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

TEST(silent_peers_cannot_take_every_slot)
{
    harness_strerror = haul_strerror;
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.max_handshakes = CAP;
    /* The cap acts here, not the deadline: a silent peer gives way after
     * a quarter of it (1 s), and is closed by it only after 4 s. */
    ec.handshake_timeout_ms = 4000;
    ec.log_level = HAUL_LOG_ERROR;
    haul_engine *server, *client = engine_quiet(1, 0);
    CHECK_OK(haul_engine_new(&ec, &server));
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[128];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    int port = atoi(strrchr(address, ':') + 1);

    int fds[SILENT];
    for (int i = 0; i < SILENT; i++)
        fds[i] = dial(port);
    /* The oldest are closed to make room, CAP at a time, each round once
     * they have been silent for 1 s: the last CAP are kept. */
    int closed = 0;
    for (int i = 0; i < SILENT; i++)
        closed += closed_within(fds[i], i < SILENT - CAP ? 3000 : 0);
    CHECK_EQ(closed, SILENT - CAP);
    for (int i = SILENT - CAP; i < SILENT; i++)
        CHECK(!closed_within(fds[i], 0));
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    CHECK_EQ(st.handshakes_refused, SILENT - CAP);

    /* With every slot held by silent peers, an honest client still gets
     * through: its connection makes room. */
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "honest";
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(wait_for(server, HAUL_EV_SESSION_REQUEST, &ev, 5000));
    CHECK_OK(haul_session_accept(ev.session));
    haul_event open;
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &open, 5000));
    /* One more silent peer was evicted for it. */
    int evicted = 0;
    for (int i = SILENT - CAP; i < SILENT; i++)
        evicted += closed_within(fds[i], 0);
    CHECK_EQ(evicted, 1);
    for (int i = 0; i < SILENT; i++)
        close(fds[i]);
    haul_session_free(ev.session);
    haul_session_free(s);
    haul_engine_free(client);
    haul_engine_free(server);
}
