/*
 * limits_test.c - a cap on connections that have not finished their
 * handshake: peers that connect and say nothing can hold at most
 * max_handshakes slots; more are closed as they arrive, and once the
 * silent ones go, honest clients get through again.
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
    ec.handshake_timeout_ms = 60000; /* the cap, not the deadline, acts here */
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
    /* All but CAP are closed at once; the first CAP are kept. */
    int closed = 0;
    for (int i = 0; i < SILENT; i++)
        closed += closed_within(fds[i], i < CAP ? 0 : 2000);
    CHECK_EQ(closed, SILENT - CAP);
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    CHECK_EQ(st.handshakes_refused, SILENT - CAP);
    for (int i = 0; i < CAP; i++)
        CHECK(!closed_within(fds[i], 0));

    /* With every slot held, an honest client is turned away too... */
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "honest";
    sc.message_timeout_ms = 3000;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(next_event(client, &ev, 5000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_REFUSED);
    haul_session_free(s);

    /* ... until the silent ones go; then it gets through. */
    for (int i = 0; i < SILENT; i++)
        close(fds[i]);
    haul_event req;
    for (int tries = 0;; tries++) {
        CHECK_OK(haul_session_new(client, &sc, &s));
        if (wait_for(server, HAUL_EV_SESSION_REQUEST, &req, 1000))
            break;
        /* The server had not yet reaped the closed sockets: this try was
         * refused; try again. */
        CHECK(wait_for(client, HAUL_EV_SESSION_REFUSED, &ev, 5000));
        haul_session_free(s);
        CHECK_LT(tries, 20);
    }
    ev = req;
    CHECK_OK(haul_session_accept(ev.session));
    haul_event open;
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &open, 5000));
    haul_session_free(ev.session);
    haul_session_free(s);
    haul_engine_free(client);
    haul_engine_free(server);
}
