/*
 * fig4_test.c - conformance with the seed's Fig. 4, step by step: session
 * creation and handshake (402-412), a full output queue (414-420),
 * message-level acknowledgements (422-438), a window of zero while the
 * server application holds its messages (436), and the window update that
 * lets the refused message go once the application takes one (442-446).
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "harness.h"
#include "util.h"

#define MIB (1u << 20)

static void check_event(haul_engine *e, int type, haul_event *ev)
{
    int found = next_event(e, ev, 5000);
    if (!found)
        harness_log("no event; expected %s", haul_event_name(type));
    CHECK(found);
    if ((int)ev->type != type)
        harness_log("got %s (error %s), expected %s", haul_event_name(ev->type),
                    haul_errname(ev->error), haul_event_name(type));
    CHECK_EQ(ev->type, type);
}

/* Asserts that nothing arrives on the engine for ms milliseconds. */
static void check_quiet(haul_engine *e, int ms)
{
    haul_event ev;
    int n = haul_engine_wait(e, &ev, 1, ms);
    if (n)
        harness_log("unexpected %s", haul_event_name(ev.type));
    CHECK_EQ(n, 0);
}

static void check_message(haul_message *m, uint64_t seq, uint64_t seed)
{
    CHECK_EQ(haul_message_seq(m), seq);
    CHECK_EQ(haul_message_len(m), MIB);
    uint8_t *want = malloc(MIB);
    fill_pattern(want, MIB, seed);
    CHECK(memcmp(haul_message_data(m), want, MIB) == 0);
    free(want);
}

TEST(fig4_sequence)
{
    harness_strerror = haul_strerror;
    haul_engine *server = engine_quiet(1, 0), *client = engine_quiet(1, 0);
    CHECK(server && client);
    /* The server's input queue holds exactly two messages. */
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.input_queue = 2 * MIB;
    CHECK_OK(haul_listen(server, "127.0.0.1:0", &lc));
    char address[128];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));

    uint8_t *msg[5];
    for (int i = 1; i <= 4; i++) {
        msg[i] = malloc(MIB);
        fill_pattern(msg[i], MIB, (uint64_t)i);
    }

    /* 402: the client creates a session; it completes at once. */
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "DLS_SERVER_1";
    sc.context = "GUID_REPLICA";
    sc.context_len = 12;
    sc.output_queue = 2 * MIB; /* exactly two messages */
    sc.max_message = MIB;
    haul_session *cs;
    CHECK_OK(haul_session_new(client, &sc, &cs));

    /* 404-406: the SYNC reaches the server, which posts a session request
     * with the principal and the context. */
    haul_event ev;
    check_event(server, HAUL_EV_SESSION_REQUEST, &ev);
    haul_session *ss = ev.session;
    CHECK_STR_EQ(haul_session_principal(ss), "DLS_SERVER_1");
    size_t clen;
    const void *ctx = haul_session_context(ss, &clen);
    CHECK_EQ(clen, 12);
    CHECK(memcmp(ctx, "GUID_REPLICA", 12) == 0);
    CHECK_STR_EQ(haul_session_state(ss), "CE_SS_WAITING_FOR_ACCEPT_ACK");
    /* Before the accept, the client waits for the ACK. */
    /* The client's thread may not yet have seen its SYNC's write complete
     * when the server already has it. */
    const char *cstate = haul_session_state(cs);
    CHECK(strcmp(cstate, "CE_SS_WAITING_ACK") == 0 ||
          strcmp(cstate, "CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE") == 0);
    CHECK_EQ(haul_send(cs, msg[1], MIB, 1), HAUL_ESTATE);

    /* 408-412: the application accepts; the client gets "session open". */
    CHECK_OK(haul_session_accept(ss));
    check_event(client, HAUL_EV_SESSION_OPEN, &ev);
    CHECK(ev.session == cs);
    CHECK_EQ(ev.window, 2); /* two messages of 1 MiB fit the input queue */
    CHECK_STR_EQ(haul_session_state(cs), "CE_SS_SESSION_READY");

    /* 414-420: messages 1 and 2 are queued; message 3 does not fit the
     * output queue and is refused at once. The dispatcher is held while
     * they are queued, so that no acknowledgement can free the queue
     * between the calls. */
    haul__debug_hold(client, 1);
    CHECK_OK(haul_send(cs, msg[1], MIB, 1));
    CHECK_OK(haul_send(cs, msg[2], MIB, 2));
    CHECK_EQ(haul_send(cs, msg[3], MIB, 3), HAUL_EQUEUEFULL);
    haul__debug_hold(client, 0);

    /* 422-428: message 1 travels; the server posts "message received"; the
     * acknowledgement comes back and the client gets "message sent". The
     * server application does not take it. */
    check_event(server, HAUL_EV_MESSAGE_RECEIVED, &ev);
    CHECK_EQ(ev.seq, 0);
    check_event(client, HAUL_EV_MESSAGE_SENT, &ev);
    CHECK_EQ(ev.tag, 1);
    CHECK_EQ(ev.window, 1);

    /* 434: message 3 is offered again, and now fits. */
    CHECK_OK(haul_send(cs, msg[3], MIB, 3));

    /* 430-438: message 2 arrives; its acknowledgement carries WndSize 0,
     * since the application holds both messages. */
    check_event(server, HAUL_EV_MESSAGE_RECEIVED, &ev);
    CHECK_EQ(ev.seq, 1);
    check_event(client, HAUL_EV_MESSAGE_SENT, &ev);
    CHECK_EQ(ev.tag, 2);
    CHECK_EQ(ev.window, 0);

    /* 440: message 4 enters the output queue beside message 3. */
    CHECK_OK(haul_send(cs, msg[4], MIB, 4));

    /* With the window at 0, message 3 must wait: nothing arrives. */
    check_quiet(server, 300);
    haul_engine_stats st;
    haul_engine_stats_get(server, &st);
    CHECK_EQ(st.bytes_received, 2 * MIB);

    /* 442: the server application takes message 1 ... */
    haul_message *m;
    CHECK_OK(haul_recv(ss, &m));
    check_message(m, 0, 1);
    haul_message_free(m);

    /* 444: ... which opens the window by one message ... */
    check_event(client, HAUL_EV_WINDOW_OPENED, &ev);
    CHECK_EQ(ev.window, 1);

    /* 446: ... and message 3 goes. */
    check_event(server, HAUL_EV_MESSAGE_RECEIVED, &ev);
    CHECK_EQ(ev.seq, 2);
    check_event(client, HAUL_EV_MESSAGE_SENT, &ev);
    CHECK_EQ(ev.tag, 3);
    CHECK_EQ(ev.window, 0);

    /* 448: the application drains its queue, message 4 follows, and the
     * session closes in order. */
    CHECK_OK(haul_recv(ss, &m));
    check_message(m, 1, 2);
    haul_message_free(m);
    CHECK_OK(haul_recv(ss, &m));
    check_message(m, 2, 3);
    haul_message_free(m);
    /* Message 4 went as soon as message 2 was taken. */
    check_event(server, HAUL_EV_MESSAGE_RECEIVED, &ev);
    CHECK_EQ(ev.seq, 3);
    CHECK_OK(haul_recv(ss, &m));
    check_message(m, 3, 4);
    haul_message_free(m);
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));
    CHECK_EQ(ev.tag, 4);

    CHECK_OK(haul_session_close(cs));
    check_event(server, HAUL_EV_SESSION_CLOSED, &ev);
    CHECK_EQ(ev.error, HAUL_OK);
    CHECK(wait_for(client, HAUL_EV_SESSION_CLOSED, &ev, 5000));
    CHECK_EQ(ev.error, HAUL_OK);
    CHECK_STR_EQ(haul_session_state(cs), "CE_SS_SESSION_CLOSED");
    CHECK_EQ(haul_recv(ss, &m), HAUL_ECLOSED);

    haul_session_free(cs);
    haul_session_free(ss);
    haul_engine_free(client);
    haul_engine_free(server);
    for (int i = 1; i <= 4; i++)
        free(msg[i]);
}

/* The same sequence seen through the pollable descriptor: it is readable
 * exactly while events wait. */
TEST(completion_fd_readable_while_events_wait)
{
    haul_engine *server = engine_quiet(1, 0), *client = engine_quiet(1, 0);
    CHECK(server && client);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[128];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    struct pollfd pfd = {.fd = haul_engine_fd(server), .events = POLLIN};
    CHECK_EQ(poll(&pfd, 1, 0), 0);

    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "p";
    haul_session *cs;
    CHECK_OK(haul_session_new(client, &sc, &cs));
    CHECK_EQ(poll(&pfd, 1, 5000), 1);
    haul_event ev;
    CHECK_EQ(haul_engine_wait(server, &ev, 1, 0), 1);
    CHECK_EQ(ev.type, HAUL_EV_SESSION_REQUEST);
    CHECK_EQ(poll(&pfd, 1, 0), 0);
    /* Releasing a request unanswered aborts it: the client's session
     * ends as refused. */
    haul_session_free(ev.session);
    CHECK(wait_for(client, HAUL_EV_SESSION_REFUSED, &ev, 5000));
    CHECK_EQ(ev.error, HAUL_EABORTED);
    haul_session_free(cs);
    haul_engine_free(client);
    haul_engine_free(server);
}
