/*
 * fig3_test.c - the seed's Fig. 3: several sessions to several
 * destinations from one engine. Sessions 1 and 2 go to destination 1 and
 * share its pipe; session 3 goes to destination 3 over a pipe of its own.
 * Each destination sees only its own sessions, and every message arrives
 * whole and in order.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "util.h"

#define MSG (256u << 10)
#define COUNT 32

static haul_session *open_session(haul_engine *e, const char *address, const char *principal)
{
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = principal;
    sc.connections = 2;
    sc.max_message = MSG;
    sc.output_queue = 8 * MSG;
    haul_session *s;
    CHECK_OK(haul_session_new(e, &sc, &s));
    return s;
}

TEST(three_sessions_two_destinations)
{
    harness_strerror = haul_strerror;
    haul_engine *dest1 = engine_quiet(1, 0), *dest3 = engine_quiet(1, 0);
    haul_engine *client = engine_quiet(2, 0);
    CHECK(dest1 && dest3 && client);
    char a1[128], a3[128];
    CHECK_OK(haul_listen(dest1, "127.0.0.1:0", NULL));
    CHECK_OK(haul_listen(dest3, "127.0.0.1:0", NULL));
    CHECK_OK(haul_listen_address(dest1, a1, sizeof(a1)));
    CHECK_OK(haul_listen_address(dest3, a3, sizeof(a3)));
    sink k1, k3;
    CHECK_OK(sink_start(&k1, dest1));
    CHECK_OK(sink_start(&k3, dest3));

    haul_session *s[3] = {open_session(client, a1, "session1"),
                          open_session(client, a1, "session2"),
                          open_session(client, a3, "session3")};
    int open = 0;
    haul_event ev;
    while (open < 3) {
        CHECK(next_event(client, &ev, 5000));
        CHECK_NE(ev.type, HAUL_EV_SESSION_REFUSED);
        if (ev.type == HAUL_EV_SESSION_OPEN)
            open++;
    }

    /* Sessions 1 and 2 share destination 1's pipe of two connections;
     * session 3 has its own. */
    haul_conn_stats st[4];
    CHECK_EQ(haul_pipe_stats(s[0], st, 4), 2);
    CHECK_EQ(haul_pipe_stats(s[2], st, 4), 2);

    uint8_t *buf = malloc(MSG);
    XXH3_state_t *h[3];
    for (int i = 0; i < 3; i++) {
        h[i] = XXH3_createState();
        XXH3_64bits_reset(h[i]);
    }
    int sent[3] = {0}, acked = 0;
    while (acked < 3 * COUNT) {
        for (int i = 0; i < 3; i++) {
            while (sent[i] < COUNT) {
                fill_pattern(buf, MSG, (uint64_t)(i * 1000 + sent[i]));
                int rc = haul_send(s[i], buf, MSG, (uint64_t)i);
                if (rc == HAUL_EQUEUEFULL)
                    break;
                CHECK_OK(rc);
                XXH3_64bits_update(h[i], buf, MSG);
                sent[i]++;
            }
        }
        CHECK(next_event(client, &ev, 5000));
        CHECK_NE(ev.type, HAUL_EV_MESSAGE_FAILED);
        if (ev.type == HAUL_EV_MESSAGE_SENT)
            acked++;
    }
    /* Sessions 1 and 2 went over the same connections. */
    CHECK_EQ(haul_pipe_stats(s[1], st, 4), 2);
    CHECK(st[0].sessions_sent >= 2 || st[1].sessions_sent >= 2);
    CHECK_EQ(haul_pipe_stats(s[2], st, 4), 2);
    CHECK(st[0].sessions_sent <= 1 && st[1].sessions_sent <= 1);
    for (int i = 0; i < 3; i++)
        CHECK_OK(haul_session_close(s[i]));
    CHECK(sink_wait_closed(&k1, 2, 5000));
    CHECK(sink_wait_closed(&k3, 1, 5000));

    /* Destination 1 got sessions 1 and 2, destination 3 session 3. */
    CHECK_EQ(k1.nsessions, 2);
    CHECK_EQ(k3.nsessions, 1);
    sink_session *got[3] = {NULL, NULL, NULL};
    for (int i = 0; i < k1.nsessions; i++) {
        const char *p = haul_session_principal(k1.sessions[i].session);
        got[strcmp(p, "session1") == 0 ? 0 : 1] = &k1.sessions[i];
    }
    got[2] = &k3.sessions[0];
    CHECK_STR_EQ(haul_session_principal(got[2]->session), "session3");
    for (int i = 0; i < 3; i++) {
        CHECK(got[i] != NULL);
        CHECK_EQ(got[i]->messages, COUNT);
        CHECK(!got[i]->order_broken);
        CHECK_EQ(XXH3_64bits_digest(got[i]->hash), XXH3_64bits_digest(h[i]));
        XXH3_freeState(h[i]);
    }
    free(buf);
    for (int i = 0; i < 3; i++)
        haul_session_free(s[i]);
    sink_stop(&k1);
    sink_stop(&k3);
    haul_engine_free(client);
    haul_engine_free(dest1);
    haul_engine_free(dest3);
}
