/*
 * session_fsm.c - the session transition table.
 *
 * Read it against the seed: the client walks NULL -> SEND_SYNC ->
 * SENDING_SYNC -> SESSION_WAITING_FOR_SYNC_COMPLETE -> WAITING_ACK ->
 * SESSION_READY (Fig. 4, 402-412); the server walks NULL ->
 * WAITING_FOR_ACCEPT_ACK -> APP_CONFIRM_ACCEPT_ACK -> SENDING_APP_SESSION_ACK
 * -> SESSION_READY (406-410); either side closes through APP_CLOSE_SESSION
 * -> SENDING_FIN -> SESSION_CLOSED.
 */
#include "core/session_fsm.h"

#include <stddef.h>

#include "core/fsm.h"
#include "haul.h"

static const haul__transition table[] = {
    /* Client: opening (402-412). */
    {CE_SS_NULL, SEV_CREATE, CE_SS_SEND_SYNC},
    {CE_SS_SEND_SYNC, SEV_SYNC_TAKEN, CE_SS_SENDING_SYNC},
    {CE_SS_SENDING_SYNC, SEV_SYNC_POSTED, CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE},
    {CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE, SEV_SYNC_WRITTEN, CE_SS_WAITING_ACK},
    /* The SYNC-ACK may overtake the write completion: it can arrive on
     * another connection of the pipe before this one reports. */
    {CE_SS_SENDING_SYNC, SEV_SYNC_ACK, CE_SS_SESSION_READY},
    /* After a lost connection the SYNC waits to go again, but the answer
     * to the first one may still arrive. */
    {CE_SS_SEND_SYNC, SEV_SYNC_ACK, CE_SS_SESSION_READY},
    {CE_SS_SEND_SYNC, SEV_SYNC_NAK, CE_SS_SESSION_CLOSED},
    {CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE, SEV_SYNC_ACK, CE_SS_SESSION_READY},
    {CE_SS_WAITING_ACK, SEV_SYNC_ACK, CE_SS_SESSION_READY},
    {CE_SS_SENDING_SYNC, SEV_SYNC_NAK, CE_SS_SESSION_CLOSED},
    {CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE, SEV_SYNC_NAK, CE_SS_SESSION_CLOSED},
    {CE_SS_WAITING_ACK, SEV_SYNC_NAK, CE_SS_SESSION_CLOSED},
    /* A broken connection sends the SYNC again; the server answers a
     * repeated SYNC with its earlier answer. */
    {CE_SS_SENDING_SYNC, SEV_SYNC_LOST, CE_SS_SEND_SYNC},
    {CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE, SEV_SYNC_LOST, CE_SS_SEND_SYNC},
    {CE_SS_WAITING_ACK, SEV_SYNC_LOST, CE_SS_SEND_SYNC},
    /* The answer may have gone on a connection that the network broke
     * after the client's own had closed, with nothing left to tell the
     * client: it asks again after a while. */
    {CE_SS_WAITING_ACK, SEV_SYNC_UNANSWERED, CE_SS_SEND_SYNC},

    /* Server: accepting (406-410). */
    {CE_SS_NULL, SEV_SYNC_RECEIVED, CE_SS_WAITING_FOR_ACCEPT_ACK},
    {CE_SS_WAITING_FOR_ACCEPT_ACK, SEV_APP_ACCEPT, CE_SS_APP_CONFIRM_ACCEPT_ACK},
    {CE_SS_WAITING_FOR_ACCEPT_ACK, SEV_APP_REJECT, CE_SS_SESSION_CLOSED},
    {CE_SS_APP_CONFIRM_ACCEPT_ACK, SEV_ACCEPT_TAKEN, CE_SS_SENDING_APP_SESSION_ACK},
    {CE_SS_SENDING_APP_SESSION_ACK, SEV_ACCEPT_WRITTEN, CE_SS_SESSION_READY},
    {CE_SS_SENDING_APP_SESSION_ACK, SEV_ACCEPT_LOST, CE_SS_APP_CONFIRM_ACCEPT_ACK},

    /* Closing. */
    {CE_SS_SESSION_READY, SEV_APP_CLOSE, CE_SS_APP_CLOSE_SESSION},
    {CE_SS_APP_CONFIRM_ACCEPT_ACK, SEV_APP_CLOSE, CE_SS_APP_CLOSE_SESSION},
    {CE_SS_SENDING_APP_SESSION_ACK, SEV_APP_CLOSE, CE_SS_APP_CLOSE_SESSION},
    {CE_SS_APP_CLOSE_SESSION, SEV_FIN_TAKEN, CE_SS_SENDING_FIN},
    {CE_SS_SENDING_FIN, SEV_FIN_LOST, CE_SS_APP_CLOSE_SESSION},
    {CE_SS_SENDING_FIN, SEV_FIN_ACK, CE_SS_SESSION_CLOSED},
    {CE_SS_SESSION_READY, SEV_FIN_RECEIVED, CE_SS_SESSION_CLOSED},
    {CE_SS_APP_CONFIRM_ACCEPT_ACK, SEV_FIN_RECEIVED, CE_SS_SESSION_CLOSED},
    {CE_SS_SENDING_APP_SESSION_ACK, SEV_FIN_RECEIVED, CE_SS_SESSION_CLOSED},
    {CE_SS_APP_CLOSE_SESSION, SEV_FIN_RECEIVED, CE_SS_SESSION_CLOSED},
    {CE_SS_SENDING_FIN, SEV_FIN_RECEIVED, CE_SS_SESSION_CLOSED},

    /* Server: a SYNC repeated after a connection loss (its answer was
     * lost) is answered again and changes nothing: SYNC_ACK from the
     * states after the acceptance, the closing ones included (with the
     * FIN again from SENDING_FIN), and from SESSION_CLOSED the answer
     * its end implies (SYNC_NAK after a refusal, ABORT after a failure).
     * In WAITING_FOR_ACCEPT_ACK the application has not decided yet:
     * the SYNC is ignored. */
    {CE_SS_APP_CONFIRM_ACCEPT_ACK, SEV_SYNC_REPEATED, CE_SS_APP_CONFIRM_ACCEPT_ACK},
    {CE_SS_SENDING_APP_SESSION_ACK, SEV_SYNC_REPEATED, CE_SS_SENDING_APP_SESSION_ACK},
    {CE_SS_SESSION_READY, SEV_SYNC_REPEATED, CE_SS_SESSION_READY},
    {CE_SS_APP_CLOSE_SESSION, SEV_SYNC_REPEATED, CE_SS_APP_CLOSE_SESSION},
    {CE_SS_SENDING_FIN, SEV_SYNC_REPEATED, CE_SS_SENDING_FIN},
    {CE_SS_SESSION_CLOSED, SEV_SYNC_REPEATED, CE_SS_SESSION_CLOSED},
};

/* Failure (timeout, abort, lost pipe, freed handle) is allowed from every
 * state but CLOSED and is not listed per state. */
int haul__session_next(int state, int event)
{
    if (state < 0 || state >= CE_SS_COUNT_ || state == CE_SS_ACTION_REQUIRING_STATE)
        return -1;
    if (event == SEV_FAIL)
        return state == CE_SS_SESSION_CLOSED ? -1 : CE_SS_SESSION_CLOSED;
    return haul__fsm_next(table, sizeof(table) / sizeof(table[0]), state, event);
}

static const char *const state_names[] = {
#define X(name) #name,
    HAUL__FOREACH_SESSION_STATE(X)
#undef X
};

static const char *const event_names[] = {
#define X(name) #name,
    HAUL__FOREACH_SESSION_EVENT(X)
#undef X
};

const char *haul__session_state_name(int state)
{
    return haul__fsm_name(state_names, CE_SS_COUNT_, state, "CE_SS_?");
}

const char *haul__session_event_name(int event)
{
    return haul__fsm_name(event_names, SEV_COUNT_, event, "SEV_?");
}

const char *const *haul_session_state_names(int *count)
{
    if (count)
        *count = CE_SS_COUNT_;
    return state_names;
}
