/*
 * secure_fsm.c - the transition table of the encryption and authentication
 * state machine (secure_fsm.h has the picture), and the one call that
 * moves it.
 *
 * Read it against the transports (net/transport.h): conn.c has the
 * connection's transport start the machine when the connection enters
 * CONN_SECURING; tcp.c passes through SEC_PLAIN at once; tls.c walks the
 * handshake and the checks of the peer, reports the end of the stream and
 * fatal record errors from its reads and writes, and ends the machine
 * with a close_notify when a connection that stands in SEC_ESTABLISHED is
 * freed.
 */
#include "net/secure_fsm.h"

#include <assert.h>
#include <errno.h>
#include <stddef.h>

#include "core/engine.h"
#include "core/fsm.h"
#include "haul.h"

static const haul__transition table[] = {
    /* The start, in CONN_SECURING. */
    {HAUL__SEC_NULL, HAUL__SECEV_PLAIN, HAUL__SEC_PLAIN},
    {HAUL__SEC_NULL, HAUL__SECEV_START, HAUL__SEC_HANDSHAKING},

    /* Authentication: OpenSSL's handshake and chain verification, then
     * haul's own checks of the peer's certificate. */
    {HAUL__SEC_HANDSHAKING, HAUL__SECEV_HANDSHAKE_DONE, HAUL__SEC_VERIFYING},
    {HAUL__SEC_HANDSHAKING, HAUL__SECEV_HANDSHAKE_FAILED, HAUL__SEC_FAILED},
    {HAUL__SEC_VERIFYING, HAUL__SECEV_PEER_ACCEPTED, HAUL__SEC_ESTABLISHED},
    {HAUL__SEC_VERIFYING, HAUL__SECEV_PEER_REFUSED, HAUL__SEC_FAILED},

    /* Encryption: records flow until either side ends the stream, or one
     * fails. In TLS 1.3 the client's handshake completes before the
     * server has checked the client's certificate, so a client learns of
     * its refusal here, as an alert in place of the first record. */
    {HAUL__SEC_ESTABLISHED, HAUL__SECEV_CLOSE_SENT, HAUL__SEC_CLOSING},
    {HAUL__SEC_ESTABLISHED, HAUL__SECEV_CLOSE_RECEIVED, HAUL__SEC_CLOSING},
    {HAUL__SEC_ESTABLISHED, HAUL__SECEV_RECORD_FAILED, HAUL__SEC_FAILED},
};

int haul__secure_next(int state, int event)
{
    return haul__fsm_next(table, sizeof(table) / sizeof(table[0]), state, event);
}

static const char *const state_names[] = {
#define X(name) #name,
    HAUL__FOREACH_SECURE_STATE(X)
#undef X
};

static const char *const event_names[] = {
#define X(name) #name,
    HAUL__FOREACH_SECURE_EVENT(X)
#undef X
};

const char *haul__secure_state_name(int state)
{
    return haul__fsm_name(state_names, HAUL__SEC_STATE_COUNT_, state, "SEC_?");
}

const char *haul__secure_event_name(int event)
{
    return haul__fsm_name(event_names, HAUL__SECEV_COUNT_, event, "SECEV_?");
}

const char *const *haul_secure_state_names(int *count)
{
    if (count)
        *count = HAUL__SEC_STATE_COUNT_;
    return state_names;
}

_Static_assert(HAUL__SEC_STATE_COUNT_ <=
                   sizeof(((haul_engine_stats *)0)->secure_state_entered) / sizeof(uint64_t),
               "haul_engine_stats.secure_state_entered has a slot for every security state");

int haul__secure_enter(haul__conn *c, int event)
{
    haul_engine *e = c->engine;
    /* Callers read errno after a failed read or write has moved the
     * machine; the log may change it. */
    int saved = errno;
    int next = haul__secure_next(c->sec_state, event);
    if (next < 0) {
        haul__log(e, HAUL_LOG_ERROR, "connection %u: security: no transition from %s on %s",
                  c->serial, haul__secure_state_name(c->sec_state), haul__secure_event_name(event));
        assert(!"a transition the security table does not have");
        errno = saved;
        return -1;
    }
    haul__log(e, HAUL_LOG_DEBUG, "connection %u: %s -> %s on %s", c->serial,
              haul__secure_state_name(c->sec_state), haul__secure_state_name(next),
              haul__secure_event_name(event));
    c->sec_state = next;
    atomic_fetch_add_explicit(&e->secure_entered[next], 1, memory_order_relaxed);
    errno = saved;
    return 0;
}
