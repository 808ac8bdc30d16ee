/*
 * budget.h - the engine's memory budget (haul_engine_config.memory): the
 * counters of the bytes of message bodies it holds, the pool of receive
 * bodies, and the sharing of window slots between principals and
 * sessions (docs/design.md, "The memory budget").
 *
 * The budget object outlives its engine: a message taken with haul_recv()
 * holds a reference to it and gives its bytes back when the application
 * frees it, from any thread, with or without the engine. The counters are
 * atomics; what they are compared with to grant memory is read under the
 * engine's mutex, so that grants never pass the limit (memory is only
 * ever given back without it).
 */
#ifndef HAUL_CORE_BUDGET_H
#define HAUL_CORE_BUDGET_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/list.h"

/* A pooled receive body has at least this many bytes; smaller ones come
 * from malloc, whose small blocks are cheap and go back to its free
 * lists. Larger ones are mapped on their own, so that unmapping them
 * gives their pages back to the system at once. */
#define HAUL__BODY_MAP_MIN (64u << 10)
/* Pooled bodies unused for this long are unmapped. */
#define HAUL__POOL_IDLE_MS 1000

typedef struct haul__pooled_body haul__pooled_body;

typedef struct haul__budget {
    uint64_t limit;    /* haul_engine_config.memory */
    uint64_t rx_limit; /* what received messages and slots may use of it */
    atomic_uint_least64_t used;
    atomic_uint_least64_t rx_used; /* the part of used that is received */
    atomic_uint_least64_t peak;
    atomic_int refs;
    /* Set while sessions wait for memory: whoever gives some back then
     * kicks the engine (kicked, and a write to kick_fd) so that its
     * first I/O thread serves them. */
    atomic_int waiting;
    atomic_int kicked;
    pthread_mutex_t mu; /* kick_fd and the pool */
    int kick_fd;        /* -1 once the engine is gone */
    haul__pooled_body *pool;
    uint64_t pooled;    /* bytes of the pool */
    int64_t trimmed_at; /* when the sweep last looked for idle bodies */
} haul__budget;

/* The budget of an engine, with one reference (the engine's), or NULL
 * when memory is short. */
haul__budget *haul__budget_new(uint64_t limit, uint64_t reserve, int kick_fd);
void haul__budget_unref(haul__budget *b);
/* The engine stops: no more kicks. */
void haul__budget_detach(haul__budget *b);
/* Counts bytes (mu held): returns 0, or -1 when they would pass the
 * limit (or, with rx, the receive limit). */
int haul__budget_take(haul__budget *b, uint64_t bytes, int rx);
/* Gives bytes back, from any thread. */
void haul__budget_give(haul__budget *b, uint64_t bytes, int rx);
/* What could be taken now (mu held). */
uint64_t haul__budget_free(const haul__budget *b, int rx);
/* Asks the engine's first thread to serve the sessions waiting for
 * memory. */
void haul__budget_kick(haul__budget *b);
/* A receive body of len bytes (len > 0): from the pool, mapped, or from
 * malloc; *cap is what to give back to haul__budget_body_free (0: it
 * came from malloc). NULL when memory is short. */
uint8_t *haul__budget_body(haul__budget *b, uint64_t len, size_t *cap);
void haul__budget_body_free(haul__budget *b, uint8_t *body, size_t cap);
/* Unmaps the pooled bodies that have not been used for
 * HAUL__POOL_IDLE_MS, or every one with force. Returns when to trim
 * again (the sweep's deadline; INT64_MAX with nothing pooled). */
int64_t haul__budget_trim(haul__budget *b, int64_t now, int force);

#endif
