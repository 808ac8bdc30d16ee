/*
 * server.c - hauld's event loop and its workers: sessions asked for,
 * accepted or refused, events handed to the requests they concern, every
 * request's work done a bounded share at a time on a worker, and an
 * orderly shutdown on SIGTERM or SIGINT.
 *
 * ---- Threads ----------------------------------------------------------------
 *
 * The loop thread (server_run) polls the engine's completion queue, the
 * signal descriptor and the workers' wake-up descriptor. It takes events
 * and signals and turns them into notes posted to requests (below); it
 * never calls the store and never runs a request's code.
 *
 * The worker threads (workers.h, --workers) run requests' turns
 * (request_turn): a request's first turn answers its session (decodes the
 * request, authorizes it, opens it in the store, accepts or refuses); the
 * later ones send what waited for room and run its step(). The pool runs
 * one turn of a request at a time, so its order is kept, and a request's
 * own state (its operation, its output, its store objects: the fields
 * server.h marks "the request's own") belongs to whichever worker runs its
 * turn, and to no other thread.
 *
 * Everything else the loop and the workers share is under srv->lock:
 *   - the list of requests and their count, and each request's life: a
 *     request is freed only by its own turn (request_end), which unlinks
 *     it and frees its session under the lock;
 *   - the busy-dataset table (server_busy_*), the auth table (swapped
 *     whole on SIGHUP), `stopping`, the waiting requests and every field
 *     server.h marks "under srv->lock" (a pipe's state, a take-over);
 *   - posting a note: whoever posts holds the lock, so that the request it
 *     posts to cannot be freed meanwhile.
 * The loop holds the lock from haul_engine_wait() until it has handled
 * the events it took: an event names its session, and a worker that frees
 * that session meanwhile would leave the event pointing at freed memory.
 * haul_session_free() withdraws the events not yet taken.
 *
 * The metrics responder (metrics.c, --metrics) runs on a thread of its
 * own and takes no lock of the server's: the loop and the workers count
 * with atomics (metrics_*), which it reads.
 *
 * Lock order: srv->lock, then the pool's lock (workers_post), then the
 * engine's (any haul_ call). Neither the pool nor the engine calls hauld
 * back under their locks, but for release_buffer (free() only) and the
 * log. The store is never called under srv->lock.
 *
 * Notes (NOTE_*) are bits: several posts before a turn make one turn. A
 * SESSION_CLOSED event, a kill (the shutdown timeout, a client gone for
 * the grace) and a take-over carry a value, kept in the request under the
 * lock (closed_error, kill_why, takeover_why), each posted once.
 *
 * Shutdown: SIGTERM makes new requests refused and lets the running ones
 * end (the loop waits for the list to empty); at the timeout every
 * request gets a kill note, and the loop waits for their turns, which may
 * be inside a store call that does not return soon: a store call cannot
 * be interrupted, and hauld does not exit from under it. Then the pool
 * stops (server_fini).
 */
#include "hauld/server.h"
#include "proto/compress.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

/* The notes of a request (see "Threads" above). */
enum {
    NOTE_ANSWER = 1u << 0,     /* answer the session request (again) */
    NOTE_WORK = 1u << 1,       /* a message came, or room for output */
    NOTE_CLOSED = 1u << 2,     /* the session ended: closed_error */
    NOTE_KILL = 1u << 3,       /* end the request now: kill_why */
    NOTE_GONE = 1u << 4,       /* its client has been gone for the grace */
    NOTE_TAKEN_OVER = 1u << 5, /* another push takes the dataset: takeover_why */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *op_name(int op)
{
    switch (op) {
    case HSP_PUSH:
        return "push";
    case HSP_PULL:
        return "pull";
    case HSP_LIST:
        return "list";
    case HSP_VERIFY:
        return "verify";
    case HSP_BENCH:
        return "bench";
    case HSP_DELETE:
        return "delete";
    }
    return "request";
}

void server_lock(server *srv)
{
    pthread_mutex_lock(&srv->lock);
}

void server_unlock(server *srv)
{
    pthread_mutex_unlock(&srv->lock);
}

/* Tells the loop that it has something to look at (a worker's news). */
static void wake_loop(server *srv)
{
    uint64_t one = 1;
    if (write(srv->wakefd, &one, sizeof(one)) < 0) {
        /* The counter is full: the loop has a wake-up waiting anyway. */
    }
}

/* Under srv->lock. */
static void post(request *r, unsigned notes)
{
    workers_post(r->srv->pool, &r->job, notes);
}

/* ---- requests ---------------------------------------------------------------- */

void request_log(request *r, int level, const char *fmt, ...)
{
    if (!hauld_log_enabled(level))
        return;
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    const char *ds = r->req.dataset[0] ? r->req.dataset : "-";
    if (r->req.snapshot[0])
        hauld_log(level, "request %u (%s, %s %s@%s): %s", r->serial, r->principal,
                  op_name(r->req.op), ds, r->req.snapshot, text);
    else
        hauld_log(level, "request %u (%s, %s %s): %s", r->serial, r->principal, op_name(r->req.op),
                  ds, text);
}

/*
 * Ends a request, on its own turn: its operation lets go of what it holds
 * in the store (without the lock: that may block), then, under the lock,
 * it leaves the list and its session is freed (a refused session after
 * its refusal; one not closed is aborted, and the peer sees its end
 * either way), so that no event of it is taken after. The loop hears of
 * it when the server stops, and when the last request ends.
 */
static void request_end(request *r)
{
    server *srv = r->srv;
    if (r->ops && r->ops->fini)
        r->ops->fini(r);
    while (r->pending) {
        outmsg *m = r->pending;
        r->pending = m->next;
        free(m->buf);
        free(m);
    }
    free(r->w.buf);
    hsp_zstd_free(r->zstd);
    free(r->zbuf);
    haul_engine_unreserve(r->srv->engine, r->zstd_reserved);

    server_lock(srv);
    if (r->prev)
        r->prev->next = r->next;
    else
        srv->requests = r->next;
    if (r->next)
        r->next->prev = r->prev;
    srv->nrequests--;
    if (r->waiting)
        srv->nwaiting--;
    haul_session_free(r->session);
    metrics_session_closed(srv->metrics);
    metrics_request_ended(srv->metrics, r->req.op,
                          r->refused                                   ? METRICS_REFUSED
                          : r->result_written && r->result_status == 0 ? METRICS_OK
                                                                       : METRICS_ERROR);
    int last = srv->nrequests == 0;
    if (last)
        pthread_cond_broadcast(&srv->idle);
    server_unlock(srv);
    /* The loop ends hauld when this was the last request of a shutdown,
     * and gives memory back once it has been idle a while. */
    if (last)
        wake_loop(srv);
    free(r);
}

void request_abort(request *r, const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->why, sizeof(r->why), fmt, ap);
        va_end(ap);
    }
    request_log(r, HAUL_LOG_WARN, "ending the session: %s", r->why[0] ? r->why : "aborted");
    r->ended = 1;
}

int request_recv(request *r, haul_message **m)
{
    int rc = haul_recv(r->session, m);
    if (rc == 0) {
        if (r->traffic)
            metrics_received(r->traffic, haul_message_len(*m));
        return 1;
    }
    return rc == HAUL_EAGAIN ? 0 : -1;
}

/* ---- output ---------------------------------------------------------------------- */

/* Runs on an engine thread with its lock held: free() and nothing else. */
static void release_buffer(void *buf, void *arg)
{
    (void)arg;
    free(buf);
}

static void maybe_close(request *r)
{
    if (!r->finishing || r->closing || r->npending > 0 || r->dead)
        return;
    r->closing = 1;
    int rc = haul_session_close(r->session);
    if (rc)
        request_log(r, HAUL_LOG_DEBUG, "close: %s", haul_strerror(rc));
}

/* Gives up the output: the session cannot carry it. */
static void out_drop(request *r, int rc)
{
    if (!r->dead)
        request_log(r, HAUL_LOG_DEBUG, "output dropped: %s", haul_strerror(rc));
    r->dead = 1;
    while (r->pending) {
        outmsg *m = r->pending;
        r->pending = m->next;
        free(m->buf);
        free(m);
    }
    r->pending_tail = NULL;
    r->npending = 0;
}

static int out_send(request *r, uint8_t *buf, size_t len)
{
    int rc = haul_send_buffer(r->session, buf, len, release_buffer, NULL, r->tag++);
    if (rc == 0) {
        r->messages_out++;
        if (r->traffic)
            metrics_sent(r->traffic, len);
    }
    return rc;
}

/* Sends what waited for room, oldest first. */
static void out_retry(request *r)
{
    while (r->pending && !r->dead) {
        outmsg *m = r->pending;
        int rc = out_send(r, m->buf, m->len);
        if (rc == HAUL_EQUEUEFULL)
            break;
        if (rc) {
            out_drop(r, rc);
            break;
        }
        r->pending = m->next;
        if (r->pending == NULL)
            r->pending_tail = NULL;
        r->npending--;
        free(m);
    }
    maybe_close(r);
}

/*
 * Compression of a request's output (r->zstd: a pull that asked for it).
 * After OUT_ZSTD_MISSES messages in a row that did not compress by the
 * margin (the content is compressed already, or random), one message in
 * OUT_ZSTD_SAMPLE is tried, until one pays again.
 */
#define OUT_ZSTD_MISSES 4
#define OUT_ZSTD_SAMPLE 16

/* Compresses buf[0, len) in place when that pays; returns its length. */
static size_t out_squeeze(request *r, uint8_t *buf, size_t len)
{
    if (r->zstd == NULL)
        return len;
    if (r->zstd_misses >= OUT_ZSTD_MISSES && ++r->zstd_untried < OUT_ZSTD_SAMPLE)
        return len;
    r->zstd_untried = 0;
    size_t n = hsp_zstd_pack(r->zstd, buf, len, r->zbuf, HSP_MESSAGE_MAX);
    if (n == 0) {
        r->zstd_misses++;
        return len;
    }
    /* In the stream now: it goes compressed, paid or not. */
    if (hsp_zstd_paid(len, n))
        r->zstd_misses = 0;
    else
        r->zstd_misses++;
    memcpy(buf, r->zbuf, n);
    return n;
}

void out_flush(request *r)
{
    if (r->w.buf == NULL || r->w.len == 0)
        return;
    uint8_t *buf = r->w.buf;
    size_t len = out_squeeze(r, buf, r->w.len);
    r->w.buf = NULL;
    r->w.len = r->w.cap = 0;
    if (r->dead) {
        free(buf);
        return;
    }
    if (r->pending == NULL) {
        int rc = out_send(r, buf, len);
        if (rc == 0)
            return;
        if (rc != HAUL_EQUEUEFULL) {
            free(buf);
            out_drop(r, rc);
            return;
        }
        /* Until MESSAGE_SENT or WINDOW_OPENED says there is room. */
        request_log(r, HAUL_LOG_DEBUG,
                    "output waits for room in the session's queue or the engine's memory");
    }
    outmsg *m = malloc(sizeof(*m));
    if (m == NULL) {
        free(buf);
        out_drop(r, HAUL_ENOMEM);
        return;
    }
    m->next = NULL;
    m->buf = buf;
    m->len = len;
    if (r->pending_tail)
        r->pending_tail->next = m;
    else
        r->pending = m;
    r->pending_tail = m;
    r->npending++;
}

int out_room(request *r, size_t body)
{
    if (r->w.buf && hsp_writer_fits(&r->w, body))
        return 0;
    out_flush(r);
    if (r->w.buf == NULL) {
        uint8_t *buf = malloc(r->wcap);
        if (buf == NULL)
            return -1;
        hsp_writer_init(&r->w, buf, r->wcap);
    }
    return hsp_writer_fits(&r->w, body) ? 0 : -1;
}

int out_blocked(const request *r)
{
    return r->npending > 0;
}

void out_finish(request *r)
{
    r->finishing = 1;
    out_flush(r);
    maybe_close(r);
}

void request_result(request *r, int status, const char *snapshot, uint64_t files, uint64_t bytes,
                    uint64_t bytes_sent, uint64_t bytes_linked, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    /* hsp_put_result() copies the snapshot even when it is empty: never
     * hand it NULL. */
    if (snapshot == NULL)
        snapshot = "";
    r->result_written = 1;
    r->result_status = status;
    if (r->req.op == HSP_VERIFY)
        metrics_verify_observed(r->srv->metrics, (double)(now_ms() - r->accepted_ms) / 1000.0);
    size_t body = 40 + strlen(snapshot) + strlen(text);
    if (out_room(r, body) == 0)
        hsp_put_result(&r->w, status, snapshot, files, bytes, bytes_sent, bytes_linked, text);
    out_finish(r);
}

/* ---- the set of datasets being pushed ---------------------------------------------- */

struct busy {
    struct busy *next;
    request *holder; /* the push or delete that holds the dataset */
    char key[HSP_PATH_MAX + HSP_NAME_MAX + 2];
};

static void busy_key(char *key, const request *r)
{
    size_t n = strlen(r->who.root), d = strlen(r->req.dataset);
    memcpy(key, r->who.root, n);
    key[n] = '/';
    memcpy(key + n + 1, r->req.dataset, d + 1);
}

int server_busy_add(request *r)
{
    server *srv = r->srv;
    char key[HSP_PATH_MAX + HSP_NAME_MAX + 2];
    busy_key(key, r);
    server_lock(srv);
    for (struct busy *b = srv->busy; b; b = b->next)
        if (strcmp(b->key, key) == 0) {
            server_unlock(srv);
            return -1;
        }
    struct busy *b = malloc(sizeof(*b));
    if (b) {
        memcpy(b->key, key, sizeof(key));
        b->holder = r;
        b->next = srv->busy;
        srv->busy = b;
    }
    server_unlock(srv);
    return b ? 0 : -1;
}

request *server_find_push_locked(request *r)
{
    char key[HSP_PATH_MAX + HSP_NAME_MAX + 2];
    busy_key(key, r);
    for (struct busy *b = r->srv->busy; b; b = b->next)
        if (strcmp(b->key, key) == 0)
            return b->holder;
    return NULL;
}

void server_busy_remove(request *r)
{
    server *srv = r->srv;
    char key[HSP_PATH_MAX + HSP_NAME_MAX + 2];
    busy_key(key, r);
    server_lock(srv);
    for (struct busy **p = &srv->busy; *p; p = &(*p)->next) {
        if (strcmp((*p)->key, key) == 0) {
            struct busy *b = *p;
            *p = b->next;
            free(b);
            break;
        }
    }
    /* A request may wait for this dataset (a take-over), or be about to:
     * the flag stays until the loop has decided the waiting ones again,
     * so that one that begins to wait after this is decided at once. */
    srv->recheck_waiting = 1;
    int wake = srv->nwaiting > 0;
    server_unlock(srv);
    if (wake)
        wake_loop(srv);
}

void request_take_over_locked(request *old, const char *why)
{
    if (old->taken_over)
        return;
    old->taken_over = 1;
    snprintf(old->takeover_why, sizeof(old->takeover_why), "%s", why);
    post(old, NOTE_TAKEN_OVER);
}

/* ---- answering a session request ----------------------------------------------------- */

/* The request's principal may make it: it has the right, and a session
 * more than it has. Under srv->lock, so that two requests answered at once
 * on two workers count each other. */
static uint32_t authorize_locked(server *srv, request *r)
{
    auth_lookup(&srv->auth, r->principal, &r->who);
    unsigned need = auth_right_of(r->req.op);
    if (r->who.rights == 0 || (need & ~r->who.rights) != 0) {
        char has[64];
        auth_rights_text(r->who.rights, has, sizeof(has));
        request_log(r, HAUL_LOG_WARN, "refused: the principal's rights are %s", has);
        return HSP_R_DENIED;
    }
    if (r->who.max_sessions) {
        /* A push that takes over its own dataset's (take_over in push.c)
         * ends that one: it does not count. */
        unsigned n = 0;
        for (request *o = srv->requests; o; o = o->next)
            if (o->counted && strcmp(o->principal, r->principal) == 0 &&
                !(r->req.op == HSP_PUSH && o->req.op == HSP_PUSH &&
                  strcmp(o->req.dataset, r->req.dataset) == 0))
                n++;
        if (n >= r->who.max_sessions) {
            request_log(r, HAUL_LOG_WARN, "refused: the principal has its %u sessions",
                        r->who.max_sessions);
            return HSP_R_LIMIT;
        }
    }
    r->counted = 1;
    return 0;
}

/* ---- requests that wait ---------------------------------------------------------------
 *
 * A push whose dataset another push of the same principal holds, and whose
 * client still looks connected, is not refused at once: a client that was
 * killed and run again at once may be told so before hauld has seen its
 * old connections close, since the engine reads each of them on the
 * I/O thread it runs on, and the old ones may still be reading what they
 * had in flight. The request waits, unanswered, until a pipe goes down or
 * WAIT_MS have passed, and is then decided again: taken over when the old
 * client is gone, refused when it still looks connected.
 *
 * A push that takes another over waits the same way, up to TAKEOVER_WAIT_MS,
 * for the push taken over to let the dataset go: that happens on the
 * other push's own turn, which may be inside a store call.
 *
 * At most SERVER_WAITING_MAX wait; more are decided at once. A waiting
 * request stays in the list, unanswered and not counted; the loop posts it
 * NOTE_ANSWER when it is due.
 */
#define WAIT_MS 1000
#define TAKEOVER_WAIT_MS 10000

/* Under srv->lock: makes the request wait until `until` (capped by its
 * limit); 0 when it may not wait. */
static int wait_locked(server *srv, request *r, int64_t until)
{
    if (srv->stopping || now_ms() >= r->wait_limit_ms || srv->nwaiting >= SERVER_WAITING_MAX)
        return 0;
    r->waiting = 1;
    r->wait_until_ms = until < r->wait_limit_ms ? until : r->wait_limit_ms;
    srv->nwaiting++;
    return 1;
}

/* The loop: posts NOTE_ANSWER to the waiting requests when a pipe went
 * down, a dataset was let go, their time is up, or hauld stops. Under
 * srv->lock. */
static void retry_waiting_locked(server *srv)
{
    if (srv->nwaiting == 0)
        return;
    int64_t now = now_ms();
    int all = srv->recheck_waiting || srv->stopping;
    srv->recheck_waiting = 0;
    for (request *r = srv->requests; r; r = r->next) {
        if (!r->waiting || (!all && now < r->wait_until_ms))
            continue;
        r->waiting = 0;
        srv->nwaiting--;
        post(r, NOTE_ANSWER);
    }
}

/* Milliseconds until the first waiting request's time is up, or -1.
 * Under srv->lock. */
static int next_waiting_ms_locked(const server *srv)
{
    if (srv->nwaiting == 0)
        return -1;
    int64_t now = now_ms(), best = -1;
    for (const request *r = srv->requests; r; r = r->next)
        if (r->waiting && (best < 0 || r->wait_until_ms - now < best))
            best = r->wait_until_ms - now;
    return best < 0 ? 0 : (int)best;
}

/* The *_open function of the request's operation. */
static uint32_t open_request(request *r)
{
    switch (r->req.op) {
    case HSP_PUSH:
        return push_open(r);
    case HSP_PULL:
        return pull_open(r);
    case HSP_LIST:
        return list_open(r);
    case HSP_VERIFY:
        return verify_open(r);
    case HSP_BENCH:
        return bench_open(r);
    case HSP_DELETE:
        return delete_open(r);
    }
    return HSP_R_BAD_REQUEST;
}

/*
 * The first turn of a request (and the first after it waited): accepts
 * or refuses its session. The store is reached here (opening a snapshot,
 * locking a dataset, listing), which is why this runs on a worker.
 */
static void answer(request *r)
{
    server *srv = r->srv;
    haul_session *s = r->session;
    size_t clen = 0;
    const void *ctx = haul_session_context(s, &clen);
    uint32_t reason = 0;
    r->busy_connected = 0;
    r->wcap = HSP_MESSAGE_MAX;

    if (!hsp_name_ok(r->principal, strlen(r->principal), HSP_NAME_MAX))
        reason = HSP_R_DENIED;
    else if (hsp_request_decode(ctx, clen, &r->req) < 0)
        reason = HSP_R_BAD_REQUEST;
    if (reason == 0) {
        server_lock(srv);
        reason = srv->stopping ? HSP_R_SHUTTING_DOWN : authorize_locked(srv, r);
        server_unlock(srv);
    }
    /* Only principals allowed in get series of their own: a client that
     * names a new principal in each request takes none. */
    if (reason == 0 && r->traffic == NULL)
        r->traffic = metrics_principal_get(srv->metrics, r->principal);
    if (reason == 0)
        reason = open_request(r);
    if ((reason == HSP_R_BUSY && r->busy_connected) || reason == REQUEST_WAIT_TAKEOVER) {
        int64_t now = now_ms();
        if (reason == REQUEST_WAIT_TAKEOVER && !r->takeover_waits) {
            /* Its own bound: the push taken over may be inside a store call. */
            r->takeover_waits = 1;
            r->wait_limit_ms = now + TAKEOVER_WAIT_MS;
        }
        server_lock(srv);
        r->counted = 0;
        int waits = wait_locked(srv, r, reason == HSP_R_BUSY ? now + WAIT_MS : r->wait_limit_ms);
        server_unlock(srv);
        if (waits) {
            /* The loop sets its timer by the waiting requests. */
            wake_loop(srv);
            if (reason == HSP_R_BUSY)
                request_log(r, HAUL_LOG_INFO,
                            "waits up to %d ms for the client of the running push to be seen gone",
                            WAIT_MS);
            else
                request_log(r, HAUL_LOG_INFO,
                            "waits up to %d ms for the push it takes over to let the dataset go",
                            TAKEOVER_WAIT_MS);
            return;
        }
        reason = HSP_R_BUSY;
    }
    if (reason) {
        char who[HSP_NAME_MAX * 4 + 1];
        hsp_path_text(r->principal, strlen(r->principal), who, sizeof(who));
        hauld_log(HAUL_LOG_INFO, "request %u from %s (%s %s): refused: %s", r->serial, who,
                  op_name(r->req.op), r->req.dataset[0] ? r->req.dataset : "-",
                  hsp_refusal_text(reason));
        /* The engine still sends the refusal once the session is freed,
         * and no event about it comes to us. */
        haul_session_reject(s, reason);
        server_lock(srv);
        r->counted = 0;
        server_unlock(srv);
        r->refused = 1;
        r->ended = 1;
        return;
    }
    /* A pull's client asked for a rate (haul pull --bwlimit): the session
     * sends no faster from its first chunk on. It can only slow its own
     * request, so hauld takes it as asked. */
    int rc = 0;
    if (r->req.flags & HSP_F_RATE)
        rc = haul_session_set_rate_limit(s, r->req.rate);
    if (rc == 0)
        rc = haul_session_accept(s);
    if (rc) {
        request_log(r, HAUL_LOG_INFO, "the client went away before it was accepted (%s)",
                    haul_strerror(rc));
        r->ended = 1;
        return;
    }
    request_log(r, HAUL_LOG_INFO, "accepted");
    r->accepted = 1;
    r->accepted_ms = now_ms();
    r->wants = 1;
    if (r->req.op == HSP_PUSH)
        push_start(r);
}

/* The loop: a client asks for a session. The request is made and
 * listed here, and answered on a worker. Under srv->lock. */
static void on_request_locked(server *srv, haul_session *s)
{
    request *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        hauld_log(HAUL_LOG_ERROR, "out of memory for a new request; refusing it");
        haul_session_reject(s, HSP_R_SERVER_ERROR);
        haul_session_free(s);
        return;
    }
    r->srv = srv;
    r->session = s;
    r->serial = ++srv->next_serial;
    /* With TLS the namespace is the principal of the client's verified
     * certificate, never what the request says (the library refuses a
     * request whose principal is not the certificate's anyway). */
    const char *principal = haul_session_principal(s);
    if (srv->cfg.tls_cert) {
        const char *cert_principal = haul_session_peer_principal(s);
        principal = cert_principal ? cert_principal : "";
    }
    snprintf(r->principal, sizeof(r->principal), "%s", principal);
    r->wait_limit_ms = now_ms() + WAIT_MS;
    r->next = srv->requests;
    if (srv->requests)
        srv->requests->prev = r;
    srv->requests = r;
    srv->nrequests++;
    metrics_session_opened(srv->metrics);
    haul_session_set_data(s, r);
    post(r, NOTE_ANSWER);
}

/* ---- clients that are gone ------------------------------------------------------------ */

int request_connected_locked(const request *r)
{
    return r->pipe_down_since_ms == 0;
}

/*
 * A push holds its dataset: another push to it is refused until it ends.
 * When its client dies or its network goes, the engine ends the session
 * only once the pipe has had no connection for the whole message timeout
 * (a minute by default), and until then the user who simply runs the push
 * again is refused. The engine tells sooner that the client is gone: a
 * pipe goes down (HAUL_EV_PIPE_DOWN) when its last connection breaks, or
 * when the client has been silent for the idle timeout (--idle-timeout),
 * and comes back up (HAUL_EV_PIPE_UP) when the client dials again. A push
 * whose pipe has been down for PUSH_GRACE_MS is ended, and what it staged
 * waits for the next push. The grace is well above the client's longest
 * redial backoff (2 s by default), so that a short network cut, after
 * which the client dials again, does not end a push. A new push of the
 * dataset of the same principal does not wait for the grace: a push
 * whose pipe is down is taken over at once (take_over() in push.c).
 */
#define PUSH_GRACE_MS 5000

/* The loop, under srv->lock. Logs name the request by its serial only:
 * the rest of it may be its worker's still. */
static void on_pipe_event_locked(server *srv, request *r, const haul_event *ev)
{
    if (ev->type == HAUL_EV_PIPE_UP) {
        if (r->pipe_down_since_ms)
            hauld_log(HAUL_LOG_INFO, "request %u (%s): its client is connected again", r->serial,
                      r->principal);
        r->pipe_down_since_ms = 0;
        return;
    }
    if (r->pipe_down_since_ms == 0)
        r->pipe_down_since_ms = now_ms();
    srv->recheck_waiting = 1;
    hauld_log(HAUL_LOG_INFO, "request %u (%s): its client has no connection left (%s)", r->serial,
              r->principal,
              ev->error == HAUL_ETIMEDOUT ? "silent for the idle timeout"
                                          : haul_strerror(ev->error));
}

/* A request whose pipe is down, and not told to end yet. A push holds its
 * dataset, but any request whose client is gone for good (a bench stopped
 * with data still on its way, a killed pull, a client that left before it
 * read the result it was sent) would be kept, and a shutdown would wait
 * for it, for the whole message timeout. */
static int gone_watched(const request *r)
{
    return r->pipe_down_since_ms != 0 && !r->gone_posted;
}

/* Has the requests whose client has been gone for the grace ended. Under
 * srv->lock. */
static void end_gone_locked(server *srv)
{
    int64_t now = now_ms();
    for (request *r = srv->requests; r; r = r->next) {
        if (!gone_watched(r) || now - r->pipe_down_since_ms < PUSH_GRACE_MS)
            continue;
        r->gone_posted = 1;
        post(r, NOTE_GONE);
    }
}

/* Milliseconds until the next request's grace ends, or -1 when none
 * waits. Under srv->lock. */
static int next_gone_ms_locked(const server *srv)
{
    int64_t now = now_ms(), best = -1;
    for (const request *r = srv->requests; r; r = r->next) {
        if (!gone_watched(r))
            continue;
        int64_t left = r->pipe_down_since_ms + PUSH_GRACE_MS - now;
        if (left < 0)
            left = 0;
        if (best < 0 || left < best)
            best = left;
    }
    return (int)best;
}

/* ---- a request's turn ---------------------------------------------------------------- */

/* Logs how the session of a request ended (NOTE_CLOSED). */
static void log_closed(request *r, int error)
{
    if (error == HAUL_OK && (r->finishing || r->req.op == HSP_BENCH))
        request_log(r, HAUL_LOG_DEBUG, "the session ended (%llu messages sent)",
                    (unsigned long long)r->messages_out);
    else if (error == HAUL_OK)
        request_log(r, HAUL_LOG_INFO, "the client closed the session before the request ended");
    else
        request_log(r, HAUL_LOG_INFO, "the session ended: %s", haul_strerror(error));
}

/* Ends a request whose client has been gone for the grace (NOTE_GONE). */
static void end_gone(request *r, int abandoned)
{
    int s = PUSH_GRACE_MS / 1000;
    if (abandoned)
        request_abort(r, "the client of the push taken over has had no connection for %d s", s);
    else if (r->req.op != HSP_PUSH || r->finishing || !r->accepted)
        request_abort(r, "its client has had no connection for %d s: it is gone", s);
    else
        request_abort(r,
                      "its client has had no connection for %d s: it is gone (what it "
                      "staged is kept for the next push)",
                      s);
}

/*
 * One turn of a request, on a worker (worker_fn): what its notes say
 * first, then a share of its work. Returns WORKER_GONE once it ended it.
 */
static int request_turn(worker_job *job, unsigned notes, void *arg)
{
    server *srv = arg;
    request *r = (request *)((char *)job - offsetof(request, job));
    int closed_error = 0, abandoned = 0;
    char kill_why[sizeof(r->kill_why)], takeover_why[sizeof(r->takeover_why)];
    if (notes & (NOTE_CLOSED | NOTE_KILL | NOTE_GONE | NOTE_TAKEN_OVER)) {
        server_lock(srv);
        closed_error = r->closed_error;
        abandoned = r->abandoned;
        memcpy(kill_why, r->kill_why, sizeof(kill_why));
        memcpy(takeover_why, r->takeover_why, sizeof(takeover_why));
        server_unlock(srv);
    }
    if (notes & NOTE_ANSWER)
        answer(r);
    if (r->ended)
        goto end;
    if (notes & NOTE_CLOSED) {
        log_closed(r, closed_error);
        goto end;
    }
    if (notes & NOTE_KILL) {
        request_abort(r, "%s", kill_why);
        goto end;
    }
    if (notes & NOTE_GONE) {
        end_gone(r, abandoned);
        goto end;
    }
    if (!r->accepted)
        return WORKER_IDLE; /* it waits to be answered again */
    if ((notes & NOTE_TAKEN_OVER) && push_taken_over(r, takeover_why)) {
        server_lock(srv);
        r->abandoned = 1;
        server_unlock(srv);
    }
    if (notes & NOTE_WORK) {
        out_retry(r);
        r->wants = 1;
    }
    if (!r->wants)
        return WORKER_IDLE;
    r->wants = 0;
    int rc = r->ops->step(r);
    if (r->ended)
        goto end;
    if (rc > 0) {
        r->wants = 1;
        return WORKER_AGAIN;
    }
    return WORKER_IDLE;
end:
    request_end(r);
    return WORKER_GONE;
}

/* ---- events (the loop) ------------------------------------------------------------------ */

/* Under srv->lock: has the request ended now, with why, once. */
static void kill_locked(request *r, const char *why)
{
    if (r->kill_posted)
        return;
    r->kill_posted = 1;
    snprintf(r->kill_why, sizeof(r->kill_why), "%s", why);
    post(r, NOTE_KILL);
}

static void handle_event_locked(server *srv, const haul_event *ev)
{
    if (ev->type == HAUL_EV_SESSION_REQUEST) {
        on_request_locked(srv, ev->session);
        return;
    }
    request *r = haul_session_data(ev->session);
    if (r == NULL) {
        /* Not ours to handle (cannot happen: every session gets its
         * request when it is asked for); release the handle if it ended. */
        if (ev->type == HAUL_EV_SESSION_CLOSED)
            haul_session_free(ev->session);
        return;
    }
    switch (ev->type) {
    case HAUL_EV_MESSAGE_RECEIVED:
    case HAUL_EV_MESSAGE_SENT:
    case HAUL_EV_WINDOW_OPENED:
        /* A message to take, or room for output: in the session's queue,
         * or in the engine's memory, which a send may have found full
         * (HAUL_EQUEUEFULL either way). */
        post(r, NOTE_WORK);
        break;
    case HAUL_EV_MESSAGE_FAILED:
        if (hauld_log_enabled(HAUL_LOG_DEBUG))
            hauld_log(HAUL_LOG_DEBUG, "request %u (%s): a message failed: %s", r->serial,
                      r->principal, haul_strerror(ev->error));
        break;
    case HAUL_EV_SESSION_CLOSED:
        r->closed_error = ev->error;
        post(r, NOTE_CLOSED);
        break;
    case HAUL_EV_PIPE_DOWN:
    case HAUL_EV_PIPE_UP:
        on_pipe_event_locked(srv, r, ev);
        break;
    default:
        break;
    }
}

/* Gives the engine the limits of connections of the principals. Those
 * that lost their section (old: the table before a reload) fall back to
 * the "*" section's. The loop only (it alone changes srv->auth). */
static void apply_limits(server *srv, const auth_table *old)
{
    haul_engine *e = srv->engine;
    const auth_table *t = &srv->auth;
    haul_engine_limit_principal(e, NULL, t->any.max_connections);
    for (size_t i = 0; old && i < old->n; i++)
        haul_engine_limit_principal(e, old->v[i].name, t->any.max_connections);
    for (size_t i = 0; i < t->n; i++)
        haul_engine_limit_principal(e, t->v[i].name, t->v[i].max_connections);
}

/* SIGHUP: the principals' sections again, for the requests to come. The
 * file is read without the lock; the tables are swapped under it. */
static void reload_auth(server *srv)
{
    if (srv->cfg.config == NULL)
        return;
    char err[512];
    auth_table fresh;
    auth_init(&fresh);
    if (auth_load(&fresh, srv->cfg.config, err, sizeof(err)) < 0) {
        hauld_log(HAUL_LOG_ERROR, "SIGHUP received: %s; keeping the principals as they were", err);
        return;
    }
    server_lock(srv);
    auth_table old = srv->auth;
    srv->auth = fresh;
    server_unlock(srv);
    apply_limits(srv, &old);
    auth_free(&old);
    hauld_log(HAUL_LOG_INFO, "SIGHUP received: %zu principal section%s reloaded", srv->auth.n,
              srv->auth.n == 1 ? "" : "s");
}

static void on_signal(server *srv)
{
    struct signalfd_siginfo si;
    ssize_t n = read(srv->sigfd, &si, sizeof(si));
    if (n != (ssize_t)sizeof(si))
        return;
    if (si.ssi_signo == SIGHUP) {
        /* New principals' sections, certificates and CRLs for the
         * requests and connections to come; the sessions that run keep
         * what they were accepted with. */
        reload_auth(srv);
        if (!srv->cfg.tls_cert) {
            hauld_log(HAUL_LOG_INFO, "SIGHUP received: nothing to reload (plaintext)");
            return;
        }
        int rc = haul_listen_reload_tls(srv->engine);
        if (rc)
            hauld_log(HAUL_LOG_ERROR,
                      "SIGHUP received: cannot reload the TLS files (%s); keeping the old ones",
                      haul_strerror(rc));
        else
            hauld_log(HAUL_LOG_INFO, "SIGHUP received: TLS certificates%s reloaded",
                      srv->cfg.tls_crl ? " and CRL" : "");
        return;
    }
    const char *name = si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM";
    server_lock(srv);
    int first = !srv->stopping;
    unsigned running = srv->nrequests;
    if (first) {
        srv->stopping = 1;
        /* Pushes taken over have ended; only their clients may not know
         * yet, and a shutdown does not wait for them. */
        for (request *r = srv->requests; r; r = r->next)
            if (r->abandoned)
                kill_locked(r, "the server is shutting down");
    }
    server_unlock(srv);
    if (first) {
        srv->stop_deadline_ms = now_ms() + (int64_t)srv->cfg.timeout_s * 1000;
        hauld_log(HAUL_LOG_INFO,
                  "%s received: refusing new requests and waiting up to %u s for %u running "
                  "ones to end",
                  name, srv->cfg.timeout_s, running);
    } else {
        srv->stop_deadline_ms = now_ms();
        hauld_log(HAUL_LOG_INFO, "%s received again: ending the running requests now", name);
    }
}

/*
 * Ends every request and waits until their turns have: a turn inside a
 * store call ends when the call returns. The loop does not take events
 * meanwhile; the turns need none.
 */
static void end_all(server *srv, const char *why)
{
    server_lock(srv);
    for (request *r = srv->requests; r; r = r->next)
        kill_locked(r, why);
    int64_t since = now_ms();
    while (srv->nrequests > 0) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        if (pthread_cond_timedwait(&srv->idle, &srv->lock, &until) == ETIMEDOUT)
            hauld_log(HAUL_LOG_WARN,
                      "%u request%s still ending after %lld s: a store call has not returned",
                      srv->nrequests, srv->nrequests == 1 ? "" : "s",
                      (long long)((now_ms() - since) / 1000));
    }
    server_unlock(srv);
}

/* ---- the server ---------------------------------------------------------------------- */

/* --workers by default (server.h). */
static unsigned default_workers(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = cores < 1 ? 1 : (unsigned)cores;
    n = n > SERVER_WORKERS_MAX / SERVER_WORKERS_PER_CORE ? SERVER_WORKERS_MAX
                                                         : n * SERVER_WORKERS_PER_CORE;
    return n < SERVER_WORKERS_MIN ? SERVER_WORKERS_MIN : n;
}

static void engine_log(void *arg, int level, const char *line)
{
    (void)arg;
    hauld_log(level, "%s", line);
}

/* What the store logs goes to hauld's log. */
static void store_log(void *arg, int level, const char *text)
{
    hauld_log(level, "store: %s", text);
}

int server_init(server *srv, const server_config *cfg, int sigfd)
{
    memset(srv, 0, sizeof(*srv));
    srv->cfg = *cfg;
    srv->sigfd = sigfd;
    srv->store = NULL;
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->idle, NULL);
    srv->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (srv->wakefd < 0) {
        fprintf(stderr, "hauld: cannot make an event descriptor: %s\n", strerror(errno));
        return -1;
    }
    /* Counted whether or not they are served: the counting costs an
     * atomic addition per message and request. */
    if (metrics_new(&srv->metrics, cfg->metrics_principals) != 0) {
        fprintf(stderr, "hauld: out of memory for the metrics\n");
        return -1;
    }

    char err[512];
    auth_init(&srv->auth);
    if (cfg->config && auth_load(&srv->auth, cfg->config, err, sizeof(err)) < 0) {
        fprintf(stderr, "hauld: %s\n", err);
        return -1;
    }
    store_options so = {
        .ceph_conf = cfg->ceph_conf,
        .ceph_id = cfg->ceph_id,
        .log = store_log,
    };
    store_err store_why;
    if (store_open(cfg->store, &so, &srv->store, &store_why) < 0) {
        fprintf(stderr, "hauld: %s\n", store_why.text);
        auth_free(&srv->auth);
        return -1;
    }

    haul_engine_config ec;
    haul_engine_config_init(&ec);
    /* One I/O thread per online core unless told otherwise: a client's
     * connections spread over them, and TLS seals and opens records on
     * as many cores as it has connections. The engine takes 64 at most. */
    if (cfg->io_threads) {
        ec.io_threads = cfg->io_threads;
    } else {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        ec.io_threads = cores < 1 ? 1 : cores > 64 ? 64 : (unsigned)cores;
    }
    if (cfg->max_sessions)
        ec.max_sessions = cfg->max_sessions;
    if (cfg->max_connections)
        ec.max_connections = cfg->max_connections;
    if (cfg->timeout_s)
        ec.message_timeout_ms = cfg->timeout_s * 1000u;
    if (cfg->handshake_timeout_ms)
        ec.handshake_timeout_ms = cfg->handshake_timeout_ms;
    if (cfg->max_handshakes)
        ec.max_handshakes = cfg->max_handshakes;
    ec.keepalive_ms = cfg->keepalive_ms;
    ec.idle_timeout_ms = cfg->idle_timeout_ms;
    /* Clients send messages of up to HSP_MESSAGE_MAX; a benchmark may
     * choose larger ones, up to the engine's default. */
    if (ec.max_message < HSP_MESSAGE_MAX)
        ec.max_message = HSP_MESSAGE_MAX;
    /* One budget for the message data of every session (--memory): the
     * windows granted to clients come out of it, so memory stays bounded
     * however many connect. */
    ec.memory = cfg->memory;
    ec.log = engine_log;
    ec.log_level = cfg->log_level;
    unsigned nworkers = cfg->workers ? cfg->workers : default_workers();
    int rc = workers_start(&srv->pool, nworkers, request_turn, srv);
    if (rc) {
        fprintf(stderr, "hauld: cannot start %u worker threads: %s\n", nworkers, strerror(rc));
        store_close(srv->store);
        srv->store = NULL;
        return -1;
    }
    rc = haul_engine_new(&ec, &srv->engine);
    if (rc) {
        fprintf(stderr, "hauld: cannot start the transport engine: %s\n", haul_strerror(rc));
        store_close(srv->store);
        srv->store = NULL;
        return -1;
    }

    haul_listen_config lc;
    haul_listen_config_init(&lc);
    lc.output_queue = cfg->queue ? cfg->queue : SERVER_QUEUE_DEFAULT;
    lc.input_queue = lc.output_queue;
    /* A session's messages count against the memory until its request
     * has stored what it received, and until its client acknowledged
     * what hauld sent: a request held inside a store call (a disk or an
     * OSD that hangs) keeps what it received while its client goes on
     * sending, and a client that reads slowly keeps what hauld sent. The
     * engine keeps each session's queues at what its link needs (eight
     * round trips at its rate, 32 MiB at least), so such a request or
     * client holds that much and leaves the rest to the others; a long
     * fat link may have up to --queue, and never more than the memory
     * the engine keeps for received messages (all of it but one largest
     * message, kept for sends). */
    uint64_t part = ec.memory - ec.max_message;
    if (lc.output_queue > part) {
        hauld_log(HAUL_LOG_INFO,
                  "a session may hold %llu MiB received and not yet stored, or sent and not yet "
                  "acknowledged (--queue %llu MiB; what --memory keeps for received data)",
                  (unsigned long long)(part >> 20), (unsigned long long)(lc.output_queue >> 20));
        lc.output_queue = lc.input_queue = part;
    }
    lc.max_message = HSP_MESSAGE_MAX;
    haul_tls_config tls = {cfg->tls_cert, cfg->tls_key, cfg->tls_ca, cfg->tls_crl};
    if (cfg->tls_cert)
        lc.tls = &tls;
    errno = 0;
    rc = haul_listen(srv->engine, cfg->listen, &lc);
    if (rc == HAUL_ETLS) {
        /* The engine's log line above says which file and why. */
        fprintf(stderr,
                "hauld: cannot use the TLS files (--tls-cert %s --tls-key %s --tls-ca %s%s%s); "
                "see the error above\n",
                cfg->tls_cert, cfg->tls_key, cfg->tls_ca, cfg->tls_crl ? " --tls-crl " : "",
                cfg->tls_crl ? cfg->tls_crl : "");
        haul_engine_free(srv->engine);
        srv->engine = NULL;
        store_close(srv->store);
        srv->store = NULL;
        return -1;
    }
    if (rc) {
        /* The library says HAUL_EADDR both for an address it cannot parse
         * and for one it cannot bind; errno tells them apart. */
        int err_no = errno;
        const char *why = haul_strerror(rc);
        if (err_no == EADDRINUSE)
            why = "address in use";
        else if (err_no == EADDRNOTAVAIL)
            why = "no such address on this machine";
        else if (err_no == EACCES)
            why = "permission denied";
        else if (rc == HAUL_ESYS && err_no)
            why = strerror(err_no);
        else if (rc == HAUL_EADDR)
            why = "not an address (HOST:PORT, [V6]:PORT, :PORT or unix:/PATH)";
        fprintf(stderr, "hauld: cannot listen on %s: %s\n", cfg->listen, why);
        haul_engine_free(srv->engine);
        srv->engine = NULL;
        store_close(srv->store);
        srv->store = NULL;
        return -1;
    }
    char address[512];
    if (haul_listen_address(srv->engine, address, sizeof(address)) != 0)
        snprintf(address, sizeof(address), "%s", cfg->listen);
    hauld_log(HAUL_LOG_INFO,
              "storing into %s (%s store), %u I/O thread%s, %u worker%s, memory %llu MiB, "
              "message timeout %u s, keepalive %u ms, idle timeout %u ms (0: off)",
              cfg->store, srv->store->ops->name, ec.io_threads, ec.io_threads == 1 ? "" : "s",
              nworkers, nworkers == 1 ? "" : "s", (unsigned long long)(ec.memory >> 20),
              ec.message_timeout_ms / 1000, ec.keepalive_ms, ec.idle_timeout_ms);
    if (cfg->tls_cert)
        hauld_log(HAUL_LOG_INFO, "listening on %s with mutual TLS 1.3 (CA %s%s%s)", address,
                  cfg->tls_ca, cfg->tls_crl ? ", CRL " : "", cfg->tls_crl ? cfg->tls_crl : "");
    else
        hauld_log(HAUL_LOG_WARN,
                  "listening on %s in PLAINTEXT: no authentication, no encryption "
                  "(--plaintext); every client names its own principal",
                  address);
    if (cfg->metrics) {
        metrics_config mc = {
            .address = cfg->metrics,
            .timeout_ms = cfg->metrics_timeout_ms,
            .max_connections = cfg->metrics_connections,
            .engine = srv->engine,
            .pool = srv->pool,
            .workers = nworkers,
            .memory_budget = ec.memory,
        };
        char why[256], at[300];
        if (metrics_start(srv->metrics, &mc, at, sizeof(at), why, sizeof(why)) < 0) {
            fprintf(stderr, "hauld: cannot serve the metrics on %s: %s\n", cfg->metrics, why);
            return -1;
        }
        hauld_log(HAUL_LOG_INFO,
                  "serving metrics on http://%s/metrics (at most %u scrapers at once, %u ms "
                  "each; bytes counted for %u principals)",
                  at, cfg->metrics_connections, cfg->metrics_timeout_ms, cfg->metrics_principals);
    }
    /* Before the line that tells the world hauld listens. */
    apply_limits(srv, NULL);
    if (cfg->config)
        hauld_log(HAUL_LOG_INFO, "%zu principal section%s from %s", srv->auth.n,
                  srv->auth.n == 1 ? "" : "s", cfg->config);
    printf("hauld: listening on %s\n", address);
    fflush(stdout);
    return 0;
}

/*
 * The return of memory once idle. The engine gives back its message
 * bodies by itself (docs/design.md, "The memory budget"), but a burst of
 * a thousand clients also leaves thousands of small blocks freed in
 * glibc's heaps (connections, sessions, requests), which it keeps: after
 * 1000 pushes, hauld stayed at 95 MiB with nothing to do, and 28 MiB once
 * trimmed. While no request runs, malloc_trim() hands the free pages of
 * every heap back after 1 s, then 2, 4 ... up to 64 s of idleness: the
 * engine frees a departed client's connections and pipe only as they
 * close, after its last request ended, and a server left alone should
 * not wake up for it for ever. Idleness counts from the last event, not
 * from the last request: the connections of a burst's clients close a
 * while after their requests end, and free most of the memory then.
 * Returns the milliseconds until the next trim, or -1.
 */
#define SERVER_TRIM_FIRST_MS 1000
#define SERVER_TRIM_LAST_MS 64000

static int idle_trim(server *srv, unsigned running, int events)
{
    if (srv->trim_after_ms == 0) /* hauld has just started */
        srv->trim_after_ms = SERVER_TRIM_FIRST_MS;
    if (running > 0) {
        srv->idle_since_ms = 0;
        srv->trim_after_ms = SERVER_TRIM_FIRST_MS;
        return -1;
    }
    int64_t now = now_ms();
    if (events) {
        srv->idle_since_ms = now;
        srv->trim_after_ms = SERVER_TRIM_FIRST_MS;
    }
    if (srv->trim_after_ms > SERVER_TRIM_LAST_MS)
        return -1;
    if (srv->idle_since_ms == 0)
        srv->idle_since_ms = now;
    int64_t left = srv->idle_since_ms + srv->trim_after_ms - now;
    if (left > 0)
        return (int)left;
    malloc_trim(0);
    srv->trim_after_ms *= 2;
    return srv->trim_after_ms > SERVER_TRIM_LAST_MS
               ? -1
               : (int)(srv->idle_since_ms + srv->trim_after_ms - now);
}

int server_run(server *srv)
{
    haul_event events[64];
    struct pollfd pfd[3] = {
        {.fd = haul_engine_fd(srv->engine), .events = POLLIN},
        {.fd = srv->wakefd, .events = POLLIN},
        {.fd = srv->sigfd, .events = POLLIN},
    };
    for (;;) {
        /* Events, a bounded number of rounds at a time so that signals
         * and timers are not starved by a flood of acknowledgements; then
         * the timers. The lock is held throughout ("Threads"). */
        server_lock(srv);
        int more = 0, handled = 0;
        for (int round = 0; round < 16; round++) {
            int n = haul_engine_wait(srv->engine, events, 64, 0);
            if (n <= 0)
                break;
            handled += n;
            for (int i = 0; i < n; i++)
                handle_event_locked(srv, &events[i]);
            more = round == 15;
        }
        end_gone_locked(srv);
        retry_waiting_locked(srv);
        int timeout = more ? 0 : -1;
        /* Wake up when the grace of a push whose client went ends. */
        int gone = next_gone_ms_locked(srv);
        if (gone >= 0 && (timeout < 0 || gone < timeout))
            timeout = gone;
        int wait = next_waiting_ms_locked(srv);
        if (wait >= 0 && (timeout < 0 || wait < timeout))
            timeout = wait;
        int stopping = srv->stopping;
        unsigned running = srv->nrequests;
        server_unlock(srv);

        int trim = idle_trim(srv, running, handled > 0);
        if (trim >= 0 && (timeout < 0 || trim < timeout))
            timeout = trim;

        if (stopping) {
            if (running == 0)
                break;
            int64_t left = srv->stop_deadline_ms - now_ms();
            if (left <= 0) {
                hauld_log(HAUL_LOG_WARN,
                          "%u request%s still running at the end of the shutdown timeout; "
                          "ending them (a push keeps its staging for a later resume)",
                          running, running == 1 ? "" : "s");
                end_all(srv, "the server is shutting down");
                break;
            }
            if (timeout < 0 || timeout > left)
                timeout = left > 60000 ? 60000 : (int)left;
        }
        if (poll(pfd, srv->sigfd >= 0 ? 3 : 2, timeout) < 0 && errno != EINTR) {
            hauld_log(HAUL_LOG_ERROR, "poll failed: %s", strerror(errno));
            end_all(srv, "the server failed");
            break;
        }
        if (pfd[1].revents & POLLIN) {
            uint64_t count;
            if (read(srv->wakefd, &count, sizeof(count)) < 0) {
                /* Nothing to read: another wake-up took it. */
            }
        }
        if (srv->sigfd >= 0 && (pfd[2].revents & POLLIN))
            on_signal(srv);
    }
    return 0;
}

void server_fini(server *srv)
{
    /* The responder reads the engine and the pool: it stops first. */
    metrics_stop(srv->metrics);
    if (srv->pool) {
        end_all(srv, "the server is stopping");
        workers_stop(srv->pool);
        srv->pool = NULL;
    }
    if (srv->engine)
        haul_engine_free(srv->engine);
    srv->engine = NULL;
    while (srv->busy) {
        struct busy *b = srv->busy;
        srv->busy = b->next;
        free(b);
    }
    store_close(srv->store);
    srv->store = NULL;
    auth_free(&srv->auth);
    if (srv->wakefd >= 0)
        close(srv->wakefd);
    srv->wakefd = -1;
    metrics_free(srv->metrics);
    srv->metrics = NULL;
    pthread_cond_destroy(&srv->idle);
    pthread_mutex_destroy(&srv->lock);
}
