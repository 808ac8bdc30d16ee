/*
 * session_fsm.h - the session state machine (the seed's CE_SESSION_STATE,
 * Table 1, and the Fig. 4 sequence).
 *
 * The states keep the seed's names and order. The first group are
 * actions: the session needs to send something and waits for a connection
 * of its pipe to take it. CE_SS_ACTION_REQUIRING_STATE separates them from
 * the states proper and is never entered.
 */
#ifndef HAUL_CORE_SESSION_FSM_H
#define HAUL_CORE_SESSION_FSM_H

#define HAUL__FOREACH_SESSION_STATE(X)                                                             \
    X(CE_SS_SEND_SYNC)               /* need to send SYNC */                                       \
    X(CE_SS_APP_CONFIRM_ACCEPT_ACK)  /* need to send the application's accept ACK */               \
    X(CE_SS_APP_CLOSE_SESSION)       /* need to send FIN (once the output queue drained) */        \
    X(CE_SS_ACTION_REQUIRING_STATE)  /* separator, never entered */                                \
    X(CE_SS_NULL)                    /* created, nothing done */                                   \
    X(CE_SS_SENDING_SYNC)            /* a connection took the SYNC */                              \
    X(CE_SS_WAITING_ACK)             /* SYNC written, waiting for SYNC-ACK from the server */      \
    X(CE_SS_WAITING_FOR_ACCEPT_ACK)  /* server: waiting for the application to accept */           \
    X(CE_SS_SENDING_APP_SESSION_ACK) /* server: a connection took the SYNC-ACK */                  \
    X(CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE) /* SYNC write issued, completion pending */         \
    X(CE_SS_SENDING_FIN)                       /* FIN taken or written, waiting for FIN-ACK */     \
    X(CE_SS_SESSION_CLOSED)                    /* closed */                                        \
    X(CE_SS_SESSION_READY)                     /* open: messages flow */

typedef enum haul__session_state {
#define X(name) name,
    HAUL__FOREACH_SESSION_STATE(X)
#undef X
        CE_SS_COUNT_
} haul__session_state;

/* What happens to a session. Each transition of the table names one. */
#define HAUL__FOREACH_SESSION_EVENT(X)                                                             \
    X(SEV_CREATE)          /* client application created the session (402) */                      \
    X(SEV_SYNC_TAKEN)      /* a connection took the SYNC into its batch */                         \
    X(SEV_SYNC_POSTED)     /* the write carrying the SYNC was issued (404) */                      \
    X(SEV_SYNC_WRITTEN)    /* the write completed */                                               \
    X(SEV_SYNC_LOST)       /* the connection broke before the SYNC-ACK came */                     \
    X(SEV_SYNC_ACK)        /* SYNC-ACK received (410, 412) */                                      \
    X(SEV_SYNC_NAK)        /* the server refused */                                                \
    X(SEV_SYNC_RECEIVED)   /* server: a SYNC arrived (406) */                                      \
    X(SEV_APP_ACCEPT)      /* server application accepted (408) */                                 \
    X(SEV_APP_REJECT)      /* server application refused */                                        \
    X(SEV_ACCEPT_TAKEN)    /* a connection took the SYNC-ACK */                                    \
    X(SEV_ACCEPT_WRITTEN)  /* the SYNC-ACK was written */                                          \
    X(SEV_ACCEPT_LOST)     /* the connection broke before the SYNC-ACK was written */              \
    X(SEV_APP_CLOSE)       /* the application closed the session */                                \
    X(SEV_FIN_TAKEN)       /* a connection took the FIN */                                         \
    X(SEV_FIN_LOST)        /* the connection broke before the FIN-ACK came */                      \
    X(SEV_FIN_RECEIVED)    /* the peer closed */                                                   \
    X(SEV_FIN_ACK)         /* the peer confirmed our FIN */                                        \
    X(SEV_FAIL)            /* timeout, abort, pipe lost or handle freed */                         \
    X(SEV_SYNC_REPEATED)   /* server: a SYNC for a session it holds (answered, state kept) */      \
    X(SEV_SYNC_UNANSWERED) /* client: no answer to the SYNC for a while: it may have been lost */

typedef enum haul__session_event {
#define X(name) name,
    HAUL__FOREACH_SESSION_EVENT(X)
#undef X
        SEV_COUNT_
} haul__session_event;

/* Returns the state that `event` leads to from `state`, or -1 when the
 * table has no such transition (the caller refuses the operation). */
int haul__session_next(int state, int event);

const char *haul__session_state_name(int state);
const char *haul__session_event_name(int event);

#endif
