/*
 * transports_test.c - the same session over each transport: TCP over
 * IPv4 and IPv6, and Unix domain sockets, with a pipe of several
 * connections on each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "util.h"

static void round_trip(const char *listen_on)
{
    harness_strerror = haul_strerror;
    haul_engine *server = engine_quiet(1, 0), *client = engine_quiet(1, 0);
    CHECK(server && client);
    int rc = haul_listen(server, listen_on, NULL);
    if (rc == HAUL_EADDR && strchr(listen_on, '['))
        SKIP("no IPv6 loopback here");
    CHECK_OK(rc);
    char address[160];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    harness_log("listening on %s", address);
    sink k;
    CHECK_OK(sink_start(&k, server));

    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "transports";
    sc.connections = 3;
    sc.max_message = 1 << 20;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &ev, 5000));

    uint8_t *buf = malloc(1 << 20);
    XXH3_state_t *h = XXH3_createState();
    XXH3_64bits_reset(h);
    int acked = 0;
    for (int i = 0; i < 16; i++) {
        fill_pattern(buf, 1 << 20, (uint64_t)i);
        while ((rc = haul_send(s, buf, 1 << 20, (uint64_t)i)) == HAUL_EQUEUEFULL) {
            CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));
            acked++;
        }
        CHECK_OK(rc);
        XXH3_64bits_update(h, buf, 1 << 20);
    }
    while (acked < 16) {
        CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));
        acked++;
    }
    CHECK_OK(haul_session_close(s));
    CHECK(wait_for(client, HAUL_EV_SESSION_CLOSED, &ev, 5000));
    CHECK(sink_wait_closed(&k, 1, 5000));
    CHECK_EQ(k.sessions[0].messages, 16);
    CHECK_EQ(k.sessions[0].bytes, 16u << 20);
    CHECK_EQ(XXH3_64bits_digest(k.sessions[0].hash), XXH3_64bits_digest(h));
    CHECK(!k.sessions[0].order_broken);
    XXH3_freeState(h);
    free(buf);
    haul_session_free(s);
    sink_stop(&k);
    haul_engine_free(client);
    haul_engine_free(server);
}

TEST(tcp_ipv4)
{
    round_trip("127.0.0.1:0");
}

TEST(tcp_ipv6)
{
    round_trip("[::1]:0");
}

TEST(unix_socket)
{
    char path[64];
    snprintf(path, sizeof(path), "unix:/tmp/haul-test-%d.sock", (int)getpid());
    round_trip(path);
    /* The listener's socket file goes with the engine. */
    CHECK(access(path + 5, F_OK) != 0);
}
