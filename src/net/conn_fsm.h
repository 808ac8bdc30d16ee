/*
 * conn_fsm.h - the connection state machine (Fig. 3, "Connection n state
 * machine") and the socket I/O state machine of a connection's receiving
 * side, each one list of states and one transition table (conn_fsm.c),
 * walked by one enter function each in conn.c (haul__conn_enter,
 * haul__rx_enter).
 *
 * The connection machine:
 *
 *   CONN_NULL --CONNEV_DIAL--> CONN_DIALING                     (client)
 *   CONN_NULL --CONNEV_ACCEPT--> CONN_SECURING                  (server)
 *   CONN_DIALING --CONNEV_CONNECTED--> CONN_SECURING
 *   CONN_SECURING --CONNEV_SECURED--> CONN_HELLO
 *   CONN_HELLO --CONNEV_JOIN--> CONN_JOINED
 *   CONN_DIALING, CONN_SECURING, CONN_HELLO, CONN_JOINED
 *                 --CONNEV_CLOSE--> CONN_CLOSED
 *
 * CONN_SECURING is the slot of the encryption and authentication state
 * machine (net/secure_fsm.h), which starts on entering it. CONN_CLOSED is
 * final. CONNEV_CLOSE stands for every way a connection ends: a failed
 * connect or handshake, a protocol error, the end of the stream, a read
 * or write error, the handshake or idle deadline, the engine stopping;
 * the close says which (haul__conn_close's error and reason).
 *
 * The socket I/O machine of the receiving side turns bytes into frames:
 *
 *   RXS_HEADER --RXEV_CHUNK_HEADER--> RXS_CHUNK
 *   RXS_HEADER --RXEV_CTL_HEADER--> RXS_CTL
 *   RXS_HEADER --RXEV_DISCARD_HEADER--> RXS_DISCARD
 *   RXS_CHUNK, RXS_CTL, RXS_DISCARD --RXEV_PAYLOAD_DONE--> RXS_HEADER
 *   RXS_CHUNK --RXEV_CHUNK_TAKEN--> RXS_DISCARD
 *
 * A frame without a payload (other than an empty CHUNK) is handled in
 * RXS_HEADER and leaves it where it is. The sending side has no states of
 * its own: a batch of frames and a write position (and, on TLS, the retry
 * conditions OpenSSL reports per call).
 *
 * Who may touch them: a connection's states move under the engine's mutex
 * only, on the connection's own thread or on one that closes it; the
 * counters of states entered are the engine's statistics.
 */
#ifndef HAUL_NET_CONN_FSM_H
#define HAUL_NET_CONN_FSM_H

/* The states, and whether a connection in it reads and writes frames. */
#define HAUL__FOREACH_CONN_STATE(X)                                                                \
    X(CONN_NULL, 0)     /* made, not yet started */                                                \
    X(CONN_DIALING, 0)  /* client: non-blocking connect in progress */                             \
    X(CONN_SECURING, 0) /* encryption and authentication handshake */                              \
    X(CONN_HELLO, 1)    /* exchanging HELLO / HELLO_ACK */                                         \
    X(CONN_JOINED, 1)   /* part of its pipe: carries frames of any session */                      \
    X(CONN_CLOSED, 0)   /* closed; waiting to be freed by its thread */

typedef enum haul__conn_state {
#define X(name, frames) HAUL__##name,
    HAUL__FOREACH_CONN_STATE(X)
#undef X
        HAUL__CONN_STATE_COUNT_
} haul__conn_state;

/* What happens to a connection. Each transition of the table names one. */
#define HAUL__FOREACH_CONN_EVENT(X)                                                                \
    X(CONNEV_DIAL)      /* client: a dial started, its connect in progress */                      \
    X(CONNEV_ACCEPT)    /* server: a connection was accepted */                                    \
    X(CONNEV_CONNECTED) /* client: the connect completed */                                        \
    X(CONNEV_SECURED)   /* the security machine stands in SEC_PLAIN or SEC_ESTABLISHED */          \
    X(CONNEV_JOIN)      /* HELLO (server) or HELLO_ACK (client) received and accepted */           \
    X(CONNEV_CLOSE)     /* an error, the end of the stream, a deadline, shutdown */

typedef enum haul__conn_event {
#define X(name) HAUL__##name,
    HAUL__FOREACH_CONN_EVENT(X)
#undef X
        HAUL__CONNEV_COUNT_
} haul__conn_event;

/* The socket I/O machine of the receiving side. */
#define HAUL__FOREACH_RX_STATE(X)                                                                  \
    X(RXS_HEADER)  /* gathering a 40-byte header */                                                \
    X(RXS_CHUNK)   /* payload goes into a message */                                               \
    X(RXS_CTL)     /* payload goes into the control buffer */                                      \
    X(RXS_DISCARD) /* payload of a duplicate or a dead session: read and dropped */

typedef enum haul__rx_state {
#define X(name) HAUL__##name,
    HAUL__FOREACH_RX_STATE(X)
#undef X
        HAUL__RXS_COUNT_
} haul__rx_state;

#define HAUL__FOREACH_RX_EVENT(X)                                                                  \
    X(RXEV_CHUNK_HEADER)   /* a CHUNK header whose payload its message takes */                    \
    X(RXEV_CTL_HEADER)     /* a control frame's header, with a payload */                          \
    X(RXEV_DISCARD_HEADER) /* a CHUNK header whose payload is dropped */                           \
    X(RXEV_PAYLOAD_DONE)   /* the frame's last payload byte arrived */                             \
    X(RXEV_CHUNK_TAKEN)    /* another connection of the pipe took the chunk over */

typedef enum haul__rx_event {
#define X(name) HAUL__##name,
    HAUL__FOREACH_RX_EVENT(X)
#undef X
        HAUL__RXEV_COUNT_
} haul__rx_event;

/* The state `event` leads to from `state`, or -1 when the table has no
 * such transition: the caller has a bug. */
int haul__conn_next(int state, int event);
int haul__rx_next(int state, int event);

/* Whether a connection in `state` reads and writes frames (CONN_HELLO,
 * CONN_JOINED). */
int haul__conn_carries_frames(int state);

const char *haul__conn_state_name(int state);
const char *haul__conn_event_name(int event);
const char *haul__rx_state_name(int state);
const char *haul__rx_event_name(int event);

#endif
