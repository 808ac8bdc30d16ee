/*
 * conn_fsm.c - the transition tables of the connection state machine and
 * of the socket I/O state machine of the receiving side (conn_fsm.h has
 * the pictures).
 *
 * Read them against conn.c: haul__conn_start() starts a connection
 * (CONNEV_DIAL or CONNEV_ACCEPT), dialled() sees its connect complete,
 * conn_secured() moves it on once the security machine is done,
 * on_hello() joins it to its pipe, haul__conn_close() ends it; on_header(),
 * parse() and chunk_complete() walk the receiving side frame by frame.
 */
#include "net/conn_fsm.h"

#include <stddef.h>

#include "core/fsm.h"
#include "haul.h"

static const haul__transition conn_table[] = {
    /* The start: a dial, or an accept. */
    {HAUL__CONN_NULL, HAUL__CONNEV_DIAL, HAUL__CONN_DIALING},
    {HAUL__CONN_NULL, HAUL__CONNEV_ACCEPT, HAUL__CONN_SECURING},
    /* The handshakes, in order: TCP, security, HELLO. */
    {HAUL__CONN_DIALING, HAUL__CONNEV_CONNECTED, HAUL__CONN_SECURING},
    {HAUL__CONN_SECURING, HAUL__CONNEV_SECURED, HAUL__CONN_HELLO},
    {HAUL__CONN_HELLO, HAUL__CONNEV_JOIN, HAUL__CONN_JOINED},
    /* A connection may end in every state it can be in once started. */
    {HAUL__CONN_DIALING, HAUL__CONNEV_CLOSE, HAUL__CONN_CLOSED},
    {HAUL__CONN_SECURING, HAUL__CONNEV_CLOSE, HAUL__CONN_CLOSED},
    {HAUL__CONN_HELLO, HAUL__CONNEV_CLOSE, HAUL__CONN_CLOSED},
    {HAUL__CONN_JOINED, HAUL__CONNEV_CLOSE, HAUL__CONN_CLOSED},
};

static const haul__transition rx_table[] = {
    /* A header decides where its payload goes. */
    {HAUL__RXS_HEADER, HAUL__RXEV_CHUNK_HEADER, HAUL__RXS_CHUNK},
    {HAUL__RXS_HEADER, HAUL__RXEV_CTL_HEADER, HAUL__RXS_CTL},
    {HAUL__RXS_HEADER, HAUL__RXEV_DISCARD_HEADER, HAUL__RXS_DISCARD},
    /* And its last byte brings the next header. */
    {HAUL__RXS_CHUNK, HAUL__RXEV_PAYLOAD_DONE, HAUL__RXS_HEADER},
    {HAUL__RXS_CTL, HAUL__RXEV_PAYLOAD_DONE, HAUL__RXS_HEADER},
    {HAUL__RXS_DISCARD, HAUL__RXEV_PAYLOAD_DONE, HAUL__RXS_HEADER},
    /* The chunk came again on another connection, which reads it now:
     * the rest of this copy is dropped (session.c, chunk_begin). */
    {HAUL__RXS_CHUNK, HAUL__RXEV_CHUNK_TAKEN, HAUL__RXS_DISCARD},
};

int haul__conn_next(int state, int event)
{
    return haul__fsm_next(conn_table, sizeof(conn_table) / sizeof(conn_table[0]), state, event);
}

int haul__rx_next(int state, int event)
{
    return haul__fsm_next(rx_table, sizeof(rx_table) / sizeof(rx_table[0]), state, event);
}

static const char *const conn_state_names[] = {
#define X(name, frames) #name,
    HAUL__FOREACH_CONN_STATE(X)
#undef X
};

static const int conn_state_frames[] = {
#define X(name, frames) frames,
    HAUL__FOREACH_CONN_STATE(X)
#undef X
};

static const char *const conn_event_names[] = {
#define X(name) #name,
    HAUL__FOREACH_CONN_EVENT(X)
#undef X
};

static const char *const rx_state_names[] = {
#define X(name) #name,
    HAUL__FOREACH_RX_STATE(X)
#undef X
};

static const char *const rx_event_names[] = {
#define X(name) #name,
    HAUL__FOREACH_RX_EVENT(X)
#undef X
};

int haul__conn_carries_frames(int state)
{
    return state >= 0 && state < HAUL__CONN_STATE_COUNT_ && conn_state_frames[state];
}

const char *haul__conn_state_name(int state)
{
    return haul__fsm_name(conn_state_names, HAUL__CONN_STATE_COUNT_, state, "CONN_?");
}

const char *haul__conn_event_name(int event)
{
    return haul__fsm_name(conn_event_names, HAUL__CONNEV_COUNT_, event, "CONNEV_?");
}

const char *haul__rx_state_name(int state)
{
    return haul__fsm_name(rx_state_names, HAUL__RXS_COUNT_, state, "RXS_?");
}

const char *haul__rx_event_name(int event)
{
    return haul__fsm_name(rx_event_names, HAUL__RXEV_COUNT_, event, "RXEV_?");
}

const char *const *haul_conn_state_names(int *count)
{
    if (count)
        *count = HAUL__CONN_STATE_COUNT_;
    return conn_state_names;
}

const char *const *haul_rx_state_names(int *count)
{
    if (count)
        *count = HAUL__RXS_COUNT_;
    return rx_state_names;
}
