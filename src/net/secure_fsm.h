/*
 * secure_fsm.h - the encryption and authentication state machine of a
 * connection (Fig. 3: each connection state machine works with one; 0024:
 * a connection is authenticated with X.509 certificates before it may
 * join a pipe, and what it carries is encrypted).
 *
 * Every connection has one. It starts when the connection enters
 * CONN_SECURING, and the connection leaves CONN_SECURING for CONN_HELLO
 * once it stands in SEC_PLAIN or SEC_ESTABLISHED:
 *
 *   SEC_NULL --SECEV_PLAIN--> SEC_PLAIN                        (no TLS)
 *   SEC_NULL --SECEV_START--> SEC_HANDSHAKING
 *   SEC_HANDSHAKING --SECEV_HANDSHAKE_DONE--> SEC_VERIFYING
 *   SEC_VERIFYING --SECEV_PEER_ACCEPTED--> SEC_ESTABLISHED     (-> CONN_HELLO)
 *   SEC_ESTABLISHED --SECEV_CLOSE_SENT | SECEV_CLOSE_RECEIVED--> SEC_CLOSING
 *   SEC_HANDSHAKING --SECEV_HANDSHAKE_FAILED--> SEC_FAILED
 *   SEC_VERIFYING --SECEV_PEER_REFUSED--> SEC_FAILED
 *   SEC_ESTABLISHED --SECEV_RECORD_FAILED--> SEC_FAILED
 *
 * SEC_PLAIN, SEC_CLOSING and SEC_FAILED are final: the connection ends
 * (CONN_CLOSED) in one of them, or in any other state when it is closed
 * from outside (deadline, shutdown, a protocol error above TLS).
 *
 * Who may touch it: the state lives in the connection (haul__conn.sec_state)
 * and only the I/O thread that owns the connection moves it, with or
 * without the engine's mutex (the handshake runs without). The counters of
 * states entered are the engine's, kept with atomic increments for that
 * reason. The retry conditions of SSL_read() and SSL_write() (WANT_READ,
 * WANT_WRITE) are not states of this machine: they belong to the socket
 * I/O state machine and stay flags of the connection.
 */
#ifndef HAUL_NET_SECURE_FSM_H
#define HAUL_NET_SECURE_FSM_H

#define HAUL__FOREACH_SECURE_STATE(X)                                                              \
    X(SEC_NULL)        /* the connection has not reached CONN_SECURING yet */                      \
    X(SEC_PLAIN)       /* no TLS configured: bytes go as they are; final */                        \
    X(SEC_HANDSHAKING) /* the TLS 1.3 handshake runs, driven by readiness events */                \
    X(SEC_VERIFYING)   /* handshake done, chain verified: haul's checks of the peer run */         \
    X(SEC_ESTABLISHED) /* peer authenticated: every byte is a TLS record */                        \
    X(SEC_CLOSING)     /* close_notify sent or received (or the peer hung up); final */            \
    X(SEC_FAILED)      /* a fatal TLS error: no more TLS calls but the free; final */

typedef enum haul__secure_state {
#define X(name) HAUL__##name,
    HAUL__FOREACH_SECURE_STATE(X)
#undef X
        HAUL__SEC_STATE_COUNT_
} haul__secure_state;

/* What happens to the security of a connection. Each transition of the
 * table names one. */
#define HAUL__FOREACH_SECURE_EVENT(X)                                                              \
    X(SECEV_PLAIN)            /* CONN_SECURING entered without TLS */                              \
    X(SECEV_START)            /* CONN_SECURING entered with TLS: the handshake may begin */        \
    X(SECEV_HANDSHAKE_DONE)   /* SSL_do_handshake() completed, OpenSSL verified the chain */       \
    X(SECEV_HANDSHAKE_FAILED) /* alert, chain refused, old protocol, no certificate, I/O error */  \
    X(SECEV_PEER_ACCEPTED)    /* key usage and (server) principal of the peer accepted */          \
    X(SECEV_PEER_REFUSED)     /* key usage wrong, principal missing or malformed */                \
    X(SECEV_CLOSE_SENT)       /* our close_notify went out (SSL_shutdown) */                       \
    X(SECEV_CLOSE_RECEIVED)   /* SSL_read() reached the end: close_notify, or end of stream */     \
    X(SECEV_RECORD_FAILED)    /* a record did not authenticate, an alert came, the socket broke */

typedef enum haul__secure_event {
#define X(name) HAUL__##name,
    HAUL__FOREACH_SECURE_EVENT(X)
#undef X
        HAUL__SECEV_COUNT_
} haul__secure_event;

/* Returns the state that `event` leads to from `state`, or -1 when the
 * table has no such transition: the caller has a bug. */
int haul__secure_next(int state, int event);

const char *haul__secure_state_name(int state);
const char *haul__secure_event_name(int event);

#endif
