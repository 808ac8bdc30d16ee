/*
 * metrics.h - what hauld counts, and the small HTTP responder that shows
 * it to Prometheus (text exposition format 0.0.4) at GET /metrics.
 *
 * The counters are C11 atomics, updated where requests start and end and
 * where their messages go in and out (server.c, push.c), by whichever
 * thread does that work, without a lock; the engine's numbers
 * (connections, memory) come from haul_engine_stats_get() when a scraper
 * asks. The counters of bytes are kept per principal, for the first
 * max_principals principals whose requests were authorized; the others
 * share the series principal="other", so that clients that name new
 * principals (any name, with --plaintext) cannot make hauld's memory or a
 * scrape grow without bound.
 *
 * The responder runs on a thread of its own with poll(): it takes no lock
 * of the server's, so a scraper, however slow or hostile, never holds up
 * the loop thread or a worker. It is bounded: requests of at most
 * METRICS_REQUEST_MAX bytes, at most max_connections scrapers at once (a
 * new one closes the oldest that has not finished its request), and
 * timeout_ms for a scraper's whole exchange, after which it is closed.
 * Every answer ends with Connection: close. docs/metrics.md lists the
 * metrics.
 */
#ifndef HAUL_HAULD_METRICS_H
#define HAUL_HAULD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "haul.h"
#include "hauld/workers.h"

/* The most bytes of a scraper's request line and headers: a GET of
 * /metrics by Prometheus takes a few hundred; more is answered 431. */
#define METRICS_REQUEST_MAX 8192
/* --metrics-timeout by default, in milliseconds, and its range: a
 * scraper's whole exchange, from its connection to the last byte of the
 * answer. */
#define METRICS_TIMEOUT_DEFAULT 10000
#define METRICS_TIMEOUT_MIN 100
#define METRICS_TIMEOUT_MAX 600000
/* --metrics-connections by default, and at most. */
#define METRICS_CONNECTIONS_DEFAULT 16
#define METRICS_CONNECTIONS_MAX 1024
/* --metrics-principals by default, and at most. */
#define METRICS_PRINCIPALS_DEFAULT 1000
#define METRICS_PRINCIPALS_MAX 100000

typedef struct metrics metrics;
/* The counters of one principal (or of "other"): stable for the life of
 * the metrics, so that a request keeps a pointer to them. */
typedef struct metrics_principal metrics_principal;

/* How a request ended, for haul_requests_total{result}. */
enum metrics_result {
    METRICS_OK,      /* its RESULT said success */
    METRICS_ERROR,   /* its RESULT said failure, or it ended without one */
    METRICS_REFUSED, /* its session was refused (rights, limits, busy, ...) */
    METRICS_RESULTS_,
};

/* Makes the counters, with room for max_principals principals of their
 * own (0 .. METRICS_PRINCIPALS_MAX). Returns 0 or ENOMEM. */
int metrics_new(metrics **out, unsigned max_principals);
/* Frees them, after metrics_stop() and once no thread updates them. NULL
 * is ignored. */
void metrics_free(metrics *m);

/* ---- updates: any thread, never blocking but for metrics_principal_get ---- */

/* The counters of a principal, made on its first call while there is
 * room, else the shared "other" ones; never NULL. Takes a lock of the
 * metrics' own, held for a lookup in a hash table. */
metrics_principal *metrics_principal_get(metrics *m, const char *name);
/* Bytes of messages received from, and sent to, clients of a principal. */
void metrics_received(metrics_principal *p, uint64_t bytes);
void metrics_sent(metrics_principal *p, uint64_t bytes);

/* A session was asked for; it ended (haul_sessions). */
void metrics_session_opened(metrics *m);
void metrics_session_closed(metrics *m);
/* A request of op (an HSP_* value; anything else counts as "other")
 * ended with result (enum metrics_result). */
void metrics_request_ended(metrics *m, int op, int result);
/* A push's commit took this long in the store; a verify, from its
 * acceptance to its RESULT. */
void metrics_commit_observed(metrics *m, double seconds);
void metrics_verify_observed(metrics *m, double seconds);

/* ---- the responder ---------------------------------------------------------- */

typedef struct metrics_config {
    /* Where to listen: HOST:PORT, [V6]:PORT or :PORT (every address);
     * port 0 lets the system choose. */
    const char *address;
    unsigned timeout_ms;      /* METRICS_TIMEOUT_MIN .. METRICS_TIMEOUT_MAX */
    unsigned max_connections; /* 1 .. METRICS_CONNECTIONS_MAX */
    /* What the scrapes read besides the counters; the engine and the
     * pool must outlive metrics_stop(). */
    haul_engine *engine;
    workers *pool;
    unsigned workers;       /* how many threads the pool has */
    uint64_t memory_budget; /* the engine's --memory */
} metrics_config;

/* Listens on cfg->address and starts the responder's thread. On success
 * returns 0 and writes the address listened on (the real port) into
 * address; on failure returns -1 with the reason in why, and starts
 * nothing. Called once, by the thread that will call metrics_stop(). */
int metrics_start(metrics *m, const metrics_config *cfg, char *address, size_t address_len,
                  char *why, size_t why_len);
/* Closes the scrapers' connections and the listener, and joins the
 * thread. Harmless when metrics_start() was not called or failed. */
void metrics_stop(metrics *m);

/* Writes the exposition of every metric into a buffer of the heap (*out,
 * *len; the caller frees it). Returns 0, or -1 when memory is short.
 * Any thread; the responder calls it for each scrape. */
int metrics_render(metrics *m, const metrics_config *cfg, char **out, size_t *len);

#endif
