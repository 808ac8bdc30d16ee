/*
 * autoscale.h - the automatic connection count of a client pipe
 * (haul_session_config.connections = HAUL_CONNECTIONS_AUTO).
 *
 * Two halves. The controller (haul__auto_*) is pure: it is fed, at every
 * sweep of the engine's timer, what the pipe measured (cumulative bytes of
 * goodput, whether the application had more to send than the connections
 * took, the kernel's retransmission counters and round-trip time) and
 * answers with the number of connections to use. It reads no clock and
 * makes no system call, so that its rules can be tested alone
 * (autoscale_test.c). The collector (haul__auto_sweep) gathers those
 * measures from a pipe and applies the answer through haul__pipe_resize().
 *
 * The controller's state machine, one table (autoscale.c):
 *
 *   AUTO_JOINING   --joined-->   AUTO_SETTLING   the count grew: its new
 *                                                connections are dialled
 *   AUTO_JOINING,
 *   AUTO_SETTLING  --grow-->     AUTO_JOINING    a long link: the first
 *                                                step before any measure
 *   AUTO_SETTLING  --settled-->  AUTO_MEASURING  a few round trips for new
 *                                                (or fewer) connections to
 *                                                find their pace
 *   AUTO_MEASURING --limited-->  AUTO_MEASURING  the application set the
 *                                                pace: measure again
 *   AUTO_MEASURING --ramping-->  AUTO_MEASURING  a step is young, or still
 *                                                changes interval over interval
 *   AUTO_MEASURING --grow-->     AUTO_JOINING    the step paid: one more
 *   AUTO_MEASURING --keep-->     AUTO_HOLDING    it did not (or the cap,
 *                                                or the link is full): the
 *                                                best count measured
 *   AUTO_HOLDING   --probe-->    AUTO_JOINING    now and then, one step up
 *   AUTO_HOLDING   --shrink-->   AUTO_SETTLING   losses grew while goodput
 *                                                fell: one step down
 *   AUTO_MEASURING --shrink-->   AUTO_SETTLING   the step down did as well:
 *                                                one more
 *
 * docs/design.md ("The automatic connection count") gives the reasons.
 */
#ifndef HAUL_CORE_AUTOSCALE_H
#define HAUL_CORE_AUTOSCALE_H

#include <stdint.h>

#define HAUL__FOREACH_AUTO_STATE(X)                                                                \
    X(AUTO_JOINING)   /* waiting for the connections of the count to join */                       \
    X(AUTO_SETTLING)  /* the count changed: not measured while they ramp up */                     \
    X(AUTO_MEASURING) /* measuring the goodput of the count tried */                               \
    X(AUTO_HOLDING)   /* at the chosen count; watching losses, probing now and then */

typedef enum haul__auto_state {
#define X(name) name,
    HAUL__FOREACH_AUTO_STATE(X)
#undef X
        AUTO_STATE_COUNT_
} haul__auto_state;

#define HAUL__FOREACH_AUTO_EVENT(X)                                                                \
    X(AEV_JOINED)  /* the connections of the count joined, or the wait ran out */                  \
    X(AEV_SETTLED) /* the ramp-up time passed */                                                   \
    X(AEV_LIMITED) /* an interval the application set the pace of: not counted */                  \
    X(AEV_RAMPING) /* a step is measured again: too few intervals, or its goodput still changes */ \
    X(AEV_GROW)    /* the baseline, or a step that paid: one step up */                            \
    X(AEV_KEEP)    /* a step that did not pay, the cap or a full link: the best count */           \
    X(AEV_PROBE)   /* the time to try one step up again */                                         \
    X(AEV_SHRINK)  /* losses grew while goodput fell: one step down */

typedef enum haul__auto_event {
#define X(name) name,
    HAUL__FOREACH_AUTO_EVENT(X)
#undef X
        AEV_COUNT_
} haul__auto_event;

/* The controller's constants. Each is a rule of docs/design.md. */
#define HAUL__AUTO_START 2             /* connections a TCP pipe starts with */
#define HAUL__AUTO_START_LOCAL 1       /* over a Unix socket */
#define HAUL__AUTO_LOCAL_RTT_US 1000   /* below this path RTT (the least seen) the link is local */
#define HAUL__AUTO_LOCAL_MAX 4         /* the most a local pipe uses */
#define HAUL__AUTO_LONG_RTT_US 10000   /* from this path RTT on, the first step is taken at once */
#define HAUL__AUTO_INTERVAL_RTTS 5     /* a measuring interval, in round trips */
#define HAUL__AUTO_INTERVAL_MIN_MS 500 /* ... and its bounds */
#define HAUL__AUTO_INTERVAL_MAX_MS 3000
#define HAUL__AUTO_SETTLE_RTTS 3 /* ramp-up after a change, in round trips */
#define HAUL__AUTO_SETTLE_MIN_MS 100
#define HAUL__AUTO_JOIN_WAIT_MS 5000  /* longest wait for new connections to join */
#define HAUL__AUTO_GAIN_PCT 10        /* a step pays when goodput grows this much */
#define HAUL__AUTO_LINEAR_PCT 75      /* ... in proportion: this share of the count's growth */
#define HAUL__AUTO_LOSSY_GAIN_PCT 25  /* ... or this much, when it also raised losses */
#define HAUL__AUTO_RAMP_MIN 3         /* intervals a step up is measured over first */
#define HAUL__AUTO_RAMP_MAX 4         /* ... and at most, before its judging one */
#define HAUL__AUTO_KEEP_PCT 90        /* a step down is kept when it does this well */
#define HAUL__AUTO_DROP_PCT 90        /* goodput below this share of the best has fallen */
#define HAUL__AUTO_DEMAND_PCT 80      /* sweeps with more to send, for an interval to count */
#define HAUL__AUTO_LOSS_MIN 0.01      /* retransmitted segments per segment sent ... */
#define HAUL__AUTO_LOSS_FACTOR 2      /* ... and growth of that ratio, that mean losses grew */
#define HAUL__AUTO_LOSING_INTERVALS 2 /* ... for this many intervals in a row, to step down */
#define HAUL__AUTO_REPROBE_MS 10000   /* a held count tries one step up this often */
#define HAUL__AUTO_FULL_LOSS 0.05     /* losses this high, and ... */
#define HAUL__AUTO_FULL_QUEUE_PCT 10  /* ... the RTT this far above the least: a full link */

/* What the pipe measured, at one sweep. Counters are cumulative over the
 * pipe's life and never go back. */
typedef struct haul__auto_input {
    int64_t now;         /* ms, the engine's clock */
    unsigned joined;     /* connections in use that are joined now */
    int demand;          /* the application has more to send than the connections take */
    int opening;         /* a session is being opened: its application means to send */
    uint64_t bytes;      /* goodput: bytes acknowledged by the peer plus bytes received */
    int64_t bytes_at;    /* when they were read (ms; they may lag `now` a little) */
    uint64_t retrans;    /* segments retransmitted by the connections in use */
    uint64_t segs;       /* segments they sent */
    unsigned rtt_us;     /* the smallest smoothed RTT among them; 0 while unknown */
    unsigned min_rtt_us; /* the least RTT they or a connect saw (no queues); 0: unknown */
    int unix_socket;     /* the pipe runs over a Unix socket */
} haul__auto_input;

/* A count and what it measured. */
typedef struct haul__auto_mark {
    unsigned count;
    double goodput; /* bytes per second */
    double loss;    /* retransmitted / sent segments */
    int full;       /* the bottleneck's queue overflowed: more cannot carry more */
} haul__auto_mark;

typedef struct haul__auto {
    int state;             /* haul__auto_state: moves through the table alone */
    unsigned count;        /* connections to use now */
    unsigned cap;          /* the most it may use */
    unsigned local_rtt_us; /* HAUL__AUTO_LOCAL_RTT_US, or a test's */
    unsigned long_rtt_us;  /* HAUL__AUTO_LONG_RTT_US, or a test's */
    int local;             /* found local: the cap is HAUL__AUTO_LOCAL_MAX at most */
    int probe;             /* of the count measured: 0 baseline, 1 a step up, -1 down */
    haul__auto_mark base;  /* before the step being measured */
    haul__auto_mark best;  /* the count chosen and what it measured */
    int64_t since;         /* when the state was entered (ms) */
    int64_t reprobe_at;    /* HOLDING: when to try one step up */
    unsigned rtt_us;       /* the last RTT known */
    unsigned min_rtt_us;   /* the least RTT known */
    /* The interval being measured: where the counters stood at its start,
     * and how many sweeps of it had demand. */
    int64_t start, start_bytes_at;
    uint64_t start_bytes, start_retrans, start_segs;
    int64_t settle_until; /* HOLDING: counts nothing before (the count just changed) */
    int64_t shrink_at;    /* HOLDING: no step down for losses before (one was undone) */
    unsigned losing;      /* HOLDING: intervals in a row that lost more and carried less */
    unsigned ramps;       /* MEASURING a step up: intervals measured so far */
    double ramp_goodput;  /* ... and the goodput of the last */
    unsigned samples, demanded;
    haul__auto_mark last;     /* the last interval that counted */
    unsigned intervals;       /* intervals ended, counted or not */
    int last_limited;         /* the last interval ended was not counted */
    unsigned last_demand_pct; /* its sweeps with demand, in percent */
    unsigned changes;         /* how often the count changed */
    unsigned peak;            /* the most connections it used */
    char why[200];            /* why the count last changed, for the log */
} haul__auto;

/* Starts the controller of a new pipe: `cap` the most connections it may
 * use (at least 1), `unix_socket` whether it runs over a Unix socket.
 * Returns the count to dial first. */
unsigned haul__auto_init(haul__auto *a, unsigned cap, int unix_socket, int64_t now);

/* One sweep: takes what the pipe measured and returns the number of
 * connections to use from now on. When it differs from the last answer,
 * a->why says why. */
unsigned haul__auto_tick(haul__auto *a, const haul__auto_input *in);

/* The same before any connection joined: only the long link's first step
 * may be taken (a connect told the RTT, a session is opening); nothing is
 * measured. */
unsigned haul__auto_early(haul__auto *a, const haul__auto_input *in);

/* The pipe could not reach the count asked for (a dial failed for want
 * of memory or descriptors, the engine's max_connections, or the server
 * refused a connection for its limit): the cap becomes `reached` (at
 * least 1), and the count with it. */
void haul__auto_cap(haul__auto *a, unsigned reached);

const char *haul__auto_state_name(int state);
const char *haul__auto_event_name(int event);

/* The collector (mu held): one sweep of an automatic client pipe. */
struct haul__pipe;
void haul__auto_sweep(struct haul__pipe *pipe, int64_t now);

#endif
