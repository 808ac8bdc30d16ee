/*
 * session_states_test.c - the session state machine: every state of the
 * seed's CE_SESSION_STATE is entered by a real session, and transitions
 * the table does not allow are refused, both by the table itself and
 * through the public calls.
 */
#include <stdlib.h>
#include <string.h>

#include "core/session_fsm.h"
#include "harness.h"
#include "util.h"

typedef struct pair {
    haul_engine *server, *client;
    char address[128];
} pair;

static void pair_open(pair *p)
{
    p->server = engine_quiet(1, 0);
    p->client = engine_quiet(1, 0);
    CHECK(p->server && p->client);
    CHECK_OK(haul_listen(p->server, "127.0.0.1:0", NULL));
    CHECK_OK(haul_listen_address(p->server, p->address, sizeof(p->address)));
}

static haul_session *client_session(pair *p)
{
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = p->address;
    sc.principal = "DLS_SERVER_1";
    haul_session *s;
    CHECK_OK(haul_session_new(p->client, &sc, &s));
    return s;
}

TEST(table_refuses_what_it_does_not_list)
{
    /* Some transitions the seed's sequence never makes. */
    CHECK_EQ(haul__session_next(CE_SS_NULL, SEV_FIN_ACK), -1);
    CHECK_EQ(haul__session_next(CE_SS_NULL, SEV_APP_ACCEPT), -1);
    CHECK_EQ(haul__session_next(CE_SS_SEND_SYNC, SEV_FIN_RECEIVED), -1);
    CHECK_EQ(haul__session_next(CE_SS_WAITING_ACK, SEV_APP_CLOSE), -1);
    CHECK_EQ(haul__session_next(CE_SS_SESSION_READY, SEV_APP_ACCEPT), -1);
    CHECK_EQ(haul__session_next(CE_SS_SESSION_READY, SEV_SYNC_RECEIVED), -1);
    CHECK_EQ(haul__session_next(CE_SS_SESSION_CLOSED, SEV_APP_CLOSE), -1);
    CHECK_EQ(haul__session_next(CE_SS_SESSION_CLOSED, SEV_FAIL), -1);
    /* The separator is not a state. */
    for (int ev = 0; ev < SEV_COUNT_; ev++)
        CHECK_EQ(haul__session_next(CE_SS_ACTION_REQUIRING_STATE, ev), -1);
    /* And the path of Fig. 4 is there. */
    CHECK_EQ(haul__session_next(CE_SS_NULL, SEV_CREATE), CE_SS_SEND_SYNC);
    CHECK_EQ(haul__session_next(CE_SS_WAITING_ACK, SEV_SYNC_ACK), CE_SS_SESSION_READY);
    CHECK_EQ(haul__session_next(CE_SS_WAITING_FOR_ACCEPT_ACK, SEV_APP_ACCEPT),
             CE_SS_APP_CONFIRM_ACCEPT_ACK);
    CHECK_EQ(haul__session_next(CE_SS_SENDING_FIN, SEV_FIN_ACK), CE_SS_SESSION_CLOSED);
    CHECK_STR_EQ(haul__session_state_name(CE_SS_SESSION_READY), "CE_SS_SESSION_READY");
}

TEST(every_state_is_entered)
{
    harness_strerror = haul_strerror;
    pair p;
    pair_open(&p);
    haul_event ev;

    /* An accepted session that sends, then closes in order. */
    haul_session *cs = client_session(&p);
    CHECK(wait_for(p.server, HAUL_EV_SESSION_REQUEST, &ev, 5000));
    haul_session *ss = ev.session;
    CHECK_OK(haul_session_accept(ss));
    CHECK(wait_for(p.client, HAUL_EV_SESSION_OPEN, &ev, 5000));
    CHECK_OK(haul_send(cs, "hello", 5, 7));
    CHECK(wait_for(p.client, HAUL_EV_MESSAGE_SENT, &ev, 5000));
    CHECK_EQ(ev.tag, 7);
    CHECK_OK(haul_session_close(cs));
    CHECK(wait_for(p.client, HAUL_EV_SESSION_CLOSED, &ev, 5000));
    CHECK_EQ(ev.error, HAUL_OK);
    CHECK(wait_for(p.server, HAUL_EV_SESSION_CLOSED, &ev, 5000));
    CHECK_EQ(ev.error, HAUL_OK);
    haul_session_free(cs);
    haul_session_free(ss);

    /* A refused one. */
    cs = client_session(&p);
    CHECK(wait_for(p.server, HAUL_EV_SESSION_REQUEST, &ev, 5000));
    ss = ev.session;
    CHECK_OK(haul_session_reject(ss, 42));
    CHECK(wait_for(p.client, HAUL_EV_SESSION_REFUSED, &ev, 5000));
    CHECK_EQ(ev.error, HAUL_EREFUSED);
    CHECK_EQ(ev.reason, 42);
    CHECK(wait_for(p.server, HAUL_EV_SESSION_CLOSED, &ev, 5000));
    CHECK_EQ(ev.error, HAUL_EREFUSED);
    haul_session_free(cs);
    haul_session_free(ss);

    haul_engine_stats a, b;
    haul_engine_stats_get(p.client, &a);
    haul_engine_stats_get(p.server, &b);
    int count;
    const char *const *names = haul_session_state_names(&count);
    CHECK_EQ(count, CE_SS_COUNT_);
    for (int i = 0; i < count; i++) {
        uint64_t n = a.state_entered[i] + b.state_entered[i];
        harness_log("%-42s client %llu server %llu", names[i],
                    (unsigned long long)a.state_entered[i], (unsigned long long)b.state_entered[i]);
        if (i == CE_SS_ACTION_REQUIRING_STATE)
            CHECK_EQ(n, 0);
        else
            CHECK_GT(n, 0);
    }
    haul_engine_free(p.client);
    haul_engine_free(p.server);
}

TEST(public_calls_refuse_illegal_transitions)
{
    pair p;
    pair_open(&p);
    haul_event ev;
    haul_session *cs = client_session(&p);

    /* Nothing may be sent before the session is open. */
    CHECK_EQ(haul_send(cs, "x", 1, 1), HAUL_ESTATE);
    /* A client session is not a request to answer. */
    CHECK_EQ(haul_session_accept(cs), HAUL_ESTATE);
    CHECK_EQ(haul_session_reject(cs, 1), HAUL_ESTATE);
    /* Nor can it be closed in order before it is open. */
    CHECK_EQ(haul_session_close(cs), HAUL_ESTATE);

    CHECK(wait_for(p.server, HAUL_EV_SESSION_REQUEST, &ev, 5000));
    haul_session *ss = ev.session;
    CHECK_OK(haul_session_accept(ss));
    CHECK_EQ(haul_session_accept(ss), HAUL_ESTATE);
    CHECK_EQ(haul_session_reject(ss, 1), HAUL_ESTATE);
    CHECK(wait_for(p.client, HAUL_EV_SESSION_OPEN, &ev, 5000));

    CHECK_OK(haul_session_close(cs));
    /* Closing again is refused: while the close runs, or after it. */
    int again = haul_session_close(cs);
    CHECK(again == HAUL_ESTATE || again == HAUL_ECLOSED);
    CHECK_EQ(haul_send(cs, "x", 1, 1), HAUL_ESTATE);
    CHECK(wait_for(p.client, HAUL_EV_SESSION_CLOSED, &ev, 5000));
    CHECK_EQ(haul_session_close(cs), HAUL_ECLOSED);
    CHECK_EQ(haul_send(cs, "x", 1, 1), HAUL_ESTATE);
    CHECK(wait_for(p.server, HAUL_EV_SESSION_CLOSED, &ev, 5000));
    CHECK_EQ(haul_send(ss, "x", 1, 1), HAUL_ESTATE);

    /* Failed calls posted nothing. */
    CHECK_EQ(haul_engine_wait(p.client, &ev, 1, 100), 0);
    haul_session_free(cs);
    haul_session_free(ss);
    haul_engine_free(p.client);
    haul_engine_free(p.server);
}

TEST(bad_configuration_is_refused)
{
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.chunk_size = 100;
    haul_engine *e = NULL;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);
    haul_engine_config_init(&c);
    c.io_threads = 0;
    CHECK_EQ(haul_engine_new(&c, &e), HAUL_EINVAL);

    e = engine_quiet(1, 0);
    CHECK(e != NULL);
    haul_session_config sc;
    haul_session_config_init(&sc);
    haul_session *s;
    sc.principal = "p";
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EINVAL); /* no destination */
    sc.destination = "nowhere";
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EADDR);
    sc.destination = "127.0.0.1:99999";
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EADDR);
    sc.destination = "127.0.0.1:1";
    sc.principal = "";
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EINVAL);
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    sc.principal = longname;
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EINVAL);
    sc.principal = "p";
    sc.context_len = 5000;
    sc.context = longname;
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EINVAL);
    sc.context_len = 0;
    /* 0 is HAUL_CONNECTIONS_AUTO; the bounds are 65535 for either. */
    sc.connections = 65536;
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EINVAL);
    sc.connections = HAUL_CONNECTIONS_AUTO;
    sc.max_connections = 65536;
    CHECK_EQ(haul_session_new(e, &sc, &s), HAUL_EINVAL);
    haul_engine_free(e);
}

TEST(nobody_listening_is_refused)
{
    haul_engine *e = engine_quiet(1, 0);
    CHECK(e != NULL);
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.principal = "p";
    sc.connections = 3;
    /* A Unix socket path that does not exist, and a TCP port with no
     * listener: both end the session as refused, quickly. */
    sc.destination = "unix:/nonexistent/haul.sock";
    haul_session *s;
    CHECK_OK(haul_session_new(e, &sc, &s));
    haul_event ev;
    CHECK(wait_for(e, HAUL_EV_SESSION_REFUSED, &ev, 5000));
    CHECK_EQ(ev.error, HAUL_ECONNREFUSED);
    haul_session_free(s);

    sc.destination = "127.0.0.1:1";
    CHECK_OK(haul_session_new(e, &sc, &s));
    CHECK(wait_for(e, HAUL_EV_SESSION_REFUSED, &ev, 5000));
    CHECK_EQ(ev.error, HAUL_ECONNREFUSED);
    haul_session_free(s);
    haul_engine_free(e);
}

TEST(strerror_covers_every_code)
{
    for (int i = 0; i < HAUL_ERROR_COUNT_; i++) {
        CHECK(strcmp(haul_strerror(i), "unknown error") != 0);
        CHECK(strcmp(haul_errname(i), "E?") != 0);
    }
    CHECK_STR_EQ(haul_strerror(HAUL_ERROR_COUNT_), "unknown error");
    CHECK_STR_EQ(haul_errname(HAUL_EQUEUEFULL), "EQUEUEFULL");
}
