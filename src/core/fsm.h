/*
 * fsm.h - what every state machine of haul's shares: a transition table
 * looked up by (state, event), and names for states and events.
 *
 * Each machine keeps its own states, events and table (session_fsm.c for
 * CE_SESSION_STATE, net/secure_fsm.c for the encryption and
 * authentication machine); these are the two steps they would otherwise
 * each write again.
 */
#ifndef HAUL_CORE_FSM_H
#define HAUL_CORE_FSM_H

#include <stddef.h>

/* One legal move: from `from`, `event` leads to `to`. */
typedef struct haul__transition {
    int from, event, to;
} haul__transition;

/* The state `event` leads to from `state` in the table of n transitions,
 * or -1 when the table has none. */
static inline int haul__fsm_next(const haul__transition *table, size_t n, int state, int event)
{
    for (size_t i = 0; i < n; i++)
        if (table[i].from == state && table[i].event == event)
            return table[i].to;
    return -1;
}

/* names[i] for 0 <= i < count, else `unknown`. */
static inline const char *haul__fsm_name(const char *const *names, int count, int i,
                                         const char *unknown)
{
    return i >= 0 && i < count ? names[i] : unknown;
}

#endif
