/*
 * server.h - hauld's event loop, its worker threads, and the requests
 * they serve.
 *
 * hauld's loop thread takes the engine's events and the signals, and
 * nothing else: every request's work (its step, and with it every call of
 * the store: writes, hashing, commits, verifies, quota walks, listings,
 * deletions) runs on a pool of worker threads (workers.h), one turn at a
 * time per request, so that a request's work keeps its order, a store
 * call that takes long holds one worker and not the server, and the disk
 * work of many clients uses every core. server.c, "Threads", says who
 * owns what.
 *
 * One session carries one request (docs/store-protocol.md). A request's
 * output is built into messages of at most HSP_MESSAGE_MAX bytes that go
 * out with haul_send_buffer(); when the session's output queue (or the
 * engine's memory) is full, the message waits in a short list of the
 * request's own, and the request produces nothing more until an
 * acknowledgement, or memory freed, makes room. Memory therefore stays
 * within the queue sizes plus a fixed overhead per request, whatever the
 * number of files.
 */
#ifndef HAUL_HAULD_SERVER_H
#define HAUL_HAULD_SERVER_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <pthread.h>

#include "haul.h"
#include "hauld/auth.h"
#include "hauld/metrics.h"
#include "hauld/workers.h"
#include "proto/store.h"
#include "store/store.h"

/* ---- logging (main.c) ------------------------------------------------------ */

/* Writes "TIME hauld: MESSAGE" to stderr when level is within the
 * configured one. Safe from any thread. */
void hauld_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hauld_vlog(int level, const char *fmt, va_list ap);
int hauld_log_enabled(int level);

/* ---- the server -------------------------------------------------------------- */

/* A session's queues at most, by default: 256 MiB, about eight times
 * what 1 Gbit/s carries in a 200 ms round trip, since on a long link
 * shared by many connections a message waits for its slowest chunk. The
 * engine keeps each session's queues at what its link needs below that
 * (haul.h, haul_session_config.output_queue), and memory is taken only
 * as data waits (docs/design.md, "Long links"). */
#define SERVER_QUEUE_DEFAULT (256ull << 20)

/* The engine's memory budget by default (--memory), and the least it may
 * be: twice the engine's max_message (64 MiB, the largest message a
 * client may send), since the engine keeps one largest message of it for
 * sends and the rest must hold one such message received. */
#define SERVER_MEMORY_DEFAULT (256ull << 20)
#define SERVER_MEMORY_MIN (128ull << 20)

/* Worker threads by default: this many per online core, and at least
 * SERVER_WORKERS_MIN, so that a store call that stalls (a disk that hangs,
 * an OSD that does not answer) holds one worker while the others serve
 * the other requests; at most SERVER_WORKERS_MAX (--workers too). */
#define SERVER_WORKERS_PER_CORE 4
#define SERVER_WORKERS_MIN 8
#define SERVER_WORKERS_MAX 1024

typedef struct server_config {
    const char *listen;
    /* The store's spec (store_open): DIR, fs:DIR or rados:POOL, and the
     * options of a RADOS store. */
    const char *store;
    const char *ceph_conf, *ceph_id;
    const char *config; /* the file of the [principal] sections, or NULL */
    unsigned max_sessions;
    unsigned max_connections;
    unsigned io_threads;
    unsigned timeout_s; /* message timeout, and how long a shutdown waits */
    int log_level;
    unsigned handshake_timeout_ms; /* 0: the engine's default */
    unsigned max_handshakes;       /* 0: the engine's default */
    /* The engine's liveness periods, as given (0: off). */
    unsigned keepalive_ms;
    unsigned idle_timeout_ms;
    /* Each session's input and output queue (--queue). */
    uint64_t queue;
    /* Worker threads (--workers; 0: SERVER_WORKERS_PER_CORE per core, at
     * least SERVER_WORKERS_MIN). */
    unsigned workers;
    /* The engine's memory for message bodies, all sessions together
     * (--memory; haul_engine_config.memory). */
    uint64_t memory;
    /* Mutual TLS (all NULL with --plaintext). */
    const char *tls_cert, *tls_key, *tls_ca, *tls_crl;
    /* Where the metrics are served (--metrics; NULL: not served), and the
     * responder's bounds (metrics.h). */
    const char *metrics;
    unsigned metrics_timeout_ms;
    unsigned metrics_connections;
    unsigned metrics_principals;
    /* The highest zstd level of what a pull with HSP_F_COMPRESS is sent
     * with (--compress-level-max; 0: uncompressed). */
    unsigned compress_level_max;
} server_config;

#define SERVER_COMPRESS_LEVEL_MAX_DEFAULT 9

typedef struct server server;
typedef struct request request;

/* A message built and waiting for room in the output queue. */
typedef struct outmsg {
    struct outmsg *next;
    uint8_t *buf;
    size_t len;
} outmsg;

/* What a kind of request does. */
typedef struct request_ops {
    const char *name;
    /* Does a bounded share of the request's work: takes input, produces
     * output while the output is not blocked. Returns 1 when it has more
     * to do right away, 0 when it waits for an event (a message, an
     * acknowledgement). May end the request (request_abort), after which
     * it must not touch it. */
    int (*step)(request *r);
    /* Frees the operation's state; the session is the caller's. */
    void (*fini)(request *r);
} request_ops;

struct request {
    /* Set when the session is asked for, on the loop, and never changed
     * after: any thread may read them. */
    server *srv;
    haul_session *session;
    unsigned serial; /* for the log */
    char principal[HSP_NAME_MAX + 1];
    request *prev, *next; /* the server's list: under srv->lock */

    /* The request's place in the worker pool (workers.h). */
    worker_job job;

    /* Decoded by the request's first turn, and read by other threads
     * (under srv->lock) only once `counted` is set, which happens after. */
    hsp_request req;
    /* What the principal may do, as configured when the request came:
     * its namespace root, rights, quota. */
    auth_principal who;

    /* ---- the request's own: its worker's while a turn runs ---- */
    const request_ops *ops;
    void *op;      /* the operation's state */
    int wants;     /* step() asked to run again, or an event came */
    int accepted;  /* the session was accepted */
    int ended;     /* request_abort() or a refusal: its turn ends it */
    int finishing; /* the last record is written: close once sent */
    int closing;   /* haul_session_close() was called */
    int dead;      /* the session cannot carry more (closed by the peer) */
    /* Refused only because another push of the dataset, of the same
     * principal, looks connected (take_over in push.c): the request may
     * wait for that push's client to be seen gone (server.c, "requests
     * that wait"). */
    int busy_connected;
    /* The message under construction, and messages refused for want of
     * room (oldest first). */
    hsp_writer w;
    size_t wcap;
    /* Compresses what out_flush() sends (a pull that asked for it; NULL
     * otherwise), with zbuf to compress into, and the sampling of
     * messages that do not compress (server.c, out_flush). */
    struct hsp_zstd *zstd;
    uint8_t *zbuf;
    uint64_t zstd_reserved; /* counted in the engine's budget for them */
    unsigned zstd_misses, zstd_untried;
    outmsg *pending, *pending_tail;
    unsigned npending;
    uint64_t tag;
    uint64_t messages_out;
    char why[512]; /* the reason of an abort, for the log */
    /* What the metrics count of it: its principal's counters of bytes
     * (once authorized; NULL before), whether its session was refused,
     * the status of the RESULT it wrote, and when it was accepted. */
    metrics_principal *traffic;
    int refused;
    int result_written;
    int result_status;
    int64_t accepted_ms;
    /* It may wait to be answered until then (server.c, "requests that
     * wait"); takeover_waits: the bound is a take-over's. */
    int64_t wait_limit_ms;
    int takeover_waits;

    /* ---- shared: under srv->lock ---- */
    /* Counted among the principal's sessions (authorize in server.c). */
    int counted;
    /* Since when the session's pipe has been down (HAUL_EV_PIPE_DOWN
     * without HAUL_EV_PIPE_UP since; 0: it is up): see server.c,
     * "clients that are gone". Written by the loop. */
    int64_t pipe_down_since_ms;
    /* A push taken over by another (push.c): its RESULT says so, and the
     * request ends once its client has read it, once the client has been
     * gone for the grace of server.c, or when hauld stops. */
    int abandoned;
    /* Waits, unanswered, to be answered again (server.c, "requests that
     * wait"), until wait_until_ms. */
    int waiting;
    int64_t wait_until_ms;
    /* Notes posted that must not be posted twice. */
    int taken_over, gone_posted, kill_posted;
    /* What the notes carry (server.c, "notes"). */
    int closed_error;
    char kill_why[256];
    char takeover_why[512];
};

/* An answer of an *_open function that is no refusal: the dataset is
 * being let go by the push this one takes over; the request waits for it
 * (server.c, "requests that wait"). */
#define REQUEST_WAIT_TAKEOVER 0xffffffffu

/* Requests that wait to be answered again, at most. */
#define SERVER_WAITING_MAX 16

struct server {
    server_config cfg;
    haul_engine *engine;
    /* What hauld counts (metrics.h): updated by the loop and the workers
     * with atomics, read by the metrics responder's thread. */
    metrics *metrics;
    store *store; /* where the snapshots are kept (store/store.h) */
    workers *pool;
    int sigfd;
    /* Readable when a worker has news for the loop: a request ended, a
     * dataset was let go (eventfd). */
    int wakefd;
    int64_t stop_deadline_ms; /* the loop's */
    /* The loop's too: since when no request has run, and after how long
     * idle the heaps are trimmed next (server.c, "the return of memory"). */
    int64_t idle_since_ms;
    int64_t trim_after_ms;

    /* What the loop and the workers share (server.c, "Threads"). */
    pthread_mutex_t lock;
    pthread_cond_t idle; /* the last request ended */
    int stopping;        /* a signal came: refuse new requests */
    auth_table auth;     /* the principals (reloaded on SIGHUP) */
    request *requests;   /* a list, of every request not yet ended */
    unsigned nrequests;
    unsigned next_serial;
    /* Datasets with a push or a delete running in this process
     * ("root/dataset"), besides the store's lock that excludes other
     * processes too. */
    struct busy *busy;
    unsigned nwaiting;
    /* A pipe went down, or a dataset was let go, since the waiting
     * requests were last decided. */
    int recheck_waiting;
};

/* Creates the engine, opens the store and listens. Prints why and returns
 * -1 when one of them cannot be used. */
int server_init(server *srv, const server_config *cfg, int sigfd);
/* Runs until a signal has stopped it and every request has ended (or the
 * shutdown timeout has passed). Returns 0. */
int server_run(server *srv);
void server_fini(server *srv);

/* ---- what the request handlers share (server.c) --------------------------------- */

/* Makes room for a record of `body` bytes in the message under
 * construction, sending the full one first. Returns 0, or -1 when memory
 * is short. */
int out_room(request *r, size_t body);
/* Sends the message under construction (or keeps it until there is
 * room). */
void out_flush(request *r);
/* Nonzero while messages wait for room: produce nothing more. */
int out_blocked(const request *r);
/* The request has written its last record: flush, and close the session
 * in order once everything is queued. */
void out_finish(request *r);

/* Writes a RESULT record (status 0 or an errno value) and finishes. */
void request_result(request *r, int status, const char *snapshot, uint64_t files, uint64_t bytes,
                    uint64_t bytes_sent, uint64_t bytes_linked, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

/* Ends a request whose peer broke the protocol: logs r->why (set it
 * first, or pass a format); once step() returns, its turn aborts the
 * session and frees the request. The caller returns from step() at once
 * and touches the request no more. */
void request_abort(request *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Logs about a request: "request N (principal op dataset): ...". */
void request_log(request *r, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Takes the next message of the request's input: 1 with *m set, 0 when
 * none waits now, -1 when none will come. */
int request_recv(request *r, haul_message **m);

/* Marks the request's dataset (in its namespace) busy in this process; 0,
 * or -1 when it already is. Takes srv->lock. */
int server_busy_add(request *r);
/* Lets the dataset go, and has the requests that wait for it decided
 * again. Takes srv->lock. */
void server_busy_remove(request *r);

/* srv->lock, for what the requests' own code shares (take_over in
 * push.c). */
void server_lock(server *srv);
void server_unlock(server *srv);
/* Under srv->lock: the push or delete that holds the request's dataset
 * in this process (of any principal that shares the namespace), or NULL.
 * Only the fields that the lock guards, and those set when the session
 * was asked for, may be read of it. */
request *server_find_push_locked(request *r);
/* Under srv->lock: whether the request's client still has a connection
 * that is up: 0 once every connection of its pipe has gone (the client
 * was killed, or its network went away and the connections timed out). */
int request_connected_locked(const request *r);
/* Under srv->lock: has another request's turn end it as a push taken
 * over (push_taken_over), with why for its RESULT; once only. */
void request_take_over_locked(request *old, const char *why);

/* ---- the requests (push.c, read.c) ---------------------------------------------- */

/* Each checks the request before the session is accepted: 0 to accept
 * (r->op and r->ops are set), or an hsp_refusal reason. */
uint32_t push_open(request *r);
uint32_t pull_open(request *r);
uint32_t list_open(request *r);
uint32_t verify_open(request *r);
uint32_t bench_open(request *r);
uint32_t delete_open(request *r);
/* Called once the session is accepted. */
void push_start(request *r);
/* Ends a push that another one takes over (request_take_over_locked), on
 * the taken push's own turn: its RESULT says why, and it lets the dataset
 * go. Returns 1, or 0 when it had ended already. */
int push_taken_over(request *r, const char *why);

#endif
