/*
 * server.c - hauld's event loop: sessions asked for, accepted or refused,
 * events handed to the requests they concern, every request's work done a
 * bounded share at a time, and an orderly shutdown on SIGTERM or SIGINT.
 *
 * The loop is single-threaded: every request handler runs on it, and the
 * only code that runs elsewhere is the release callback of sent buffers
 * (free() on an engine thread).
 */
#include "hauld/server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

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

/* Events of this batch about a session that is gone are not handled. */
static void forget_session(server *srv, haul_session *s)
{
    for (int i = 0; i < srv->batch_n; i++)
        if (srv->batch[i].session == s)
            srv->batch[i].type = HAUL_EV_NONE;
}

static void request_free(request *r)
{
    server *srv = r->srv;
    if (r->prev)
        r->prev->next = r->next;
    else
        srv->requests = r->next;
    if (r->next)
        r->next->prev = r->prev;
    srv->nrequests--;
    if (r->ops && r->ops->fini)
        r->ops->fini(r);
    while (r->pending) {
        outmsg *m = r->pending;
        r->pending = m->next;
        free(m->buf);
        free(m);
    }
    free(r->w.buf);
    if (r->session) {
        /* Frees a closed session, aborts one that is not: the peer sees
         * its end either way. */
        haul_session_free(r->session);
        forget_session(srv, r->session);
    }
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
    request_free(r);
}

int request_recv(request *r, haul_message **m)
{
    int rc = haul_recv(r->session, m);
    if (rc == 0)
        return 1;
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
    if (rc == 0)
        r->messages_out++;
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

void out_flush(request *r)
{
    if (r->w.buf == NULL || r->w.len == 0)
        return;
    uint8_t *buf = r->w.buf;
    size_t len = r->w.len;
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
    size_t body = 40 + strlen(snapshot) + strlen(text);
    if (out_room(r, body) == 0)
        hsp_put_result(&r->w, status, snapshot, files, bytes, bytes_sent, bytes_linked, text);
    out_finish(r);
}

/* ---- the set of datasets being pushed ---------------------------------------------- */

struct busy {
    struct busy *next;
    request *holder; /* the push that holds the dataset */
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
    char key[HSP_PATH_MAX + HSP_NAME_MAX + 2];
    busy_key(key, r);
    for (struct busy *b = r->srv->busy; b; b = b->next)
        if (strcmp(b->key, key) == 0)
            return -1;
    struct busy *b = malloc(sizeof(*b));
    if (b == NULL)
        return -1;
    memcpy(b->key, key, sizeof(key));
    b->holder = r;
    b->next = r->srv->busy;
    r->srv->busy = b;
    return 0;
}

request *server_find_push(request *r)
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
    char key[HSP_PATH_MAX + HSP_NAME_MAX + 2];
    busy_key(key, r);
    for (struct busy **p = &r->srv->busy; *p; p = &(*p)->next) {
        if (strcmp((*p)->key, key) == 0) {
            struct busy *b = *p;
            *p = b->next;
            free(b);
            return;
        }
    }
}

/* ---- events ------------------------------------------------------------------------ */

/* The request's principal may make it: it has the right, and a session
 * more than it has. */
static uint32_t authorize(server *srv, request *r)
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
            if (strcmp(o->principal, r->principal) == 0 &&
                !(r->req.op == HSP_PUSH && o->req.op == HSP_PUSH &&
                  strcmp(o->req.dataset, r->req.dataset) == 0))
                n++;
        if (n >= r->who.max_sessions) {
            request_log(r, HAUL_LOG_WARN, "refused: the principal has its %u sessions",
                        r->who.max_sessions);
            return HSP_R_LIMIT;
        }
    }
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
 * client is gone, refused when it still looks connected. At most
 * SERVER_WAITING_MAX wait; more are decided at once.
 */
#define WAIT_MS 1000

static void answer_request(server *srv, haul_session *s, int64_t until);

static void forget_waiting(server *srv, haul_session *s)
{
    for (int i = 0; i < srv->nwaiting; i++)
        if (srv->waiting[i].session == s) {
            memmove(&srv->waiting[i], &srv->waiting[i + 1],
                    (size_t)(srv->nwaiting - i - 1) * sizeof(srv->waiting[0]));
            srv->nwaiting--;
            return;
        }
}

/* Decides the waiting requests again when a pipe went down, their time
 * is up, or hauld stops. */
static void retry_waiting(server *srv)
{
    int64_t now = now_ms();
    int due = srv->pipe_went_down || srv->stopping;
    for (int i = 0; i < srv->nwaiting && !due; i++)
        due = now >= srv->waiting[i].until_ms;
    srv->pipe_went_down = 0;
    if (!due)
        return;
    waiting_request was[SERVER_WAITING_MAX];
    int n = srv->nwaiting;
    memcpy(was, srv->waiting, (size_t)n * sizeof(was[0]));
    srv->nwaiting = 0;
    for (int i = 0; i < n; i++)
        answer_request(srv, was[i].session,
                       now < was[i].until_ms && !srv->stopping ? was[i].until_ms : 0);
}

/* Milliseconds until the first waiting request's time is up, or -1. */
static int next_waiting_ms(const server *srv)
{
    if (srv->nwaiting == 0)
        return -1;
    int64_t left = srv->waiting[0].until_ms - now_ms();
    for (int i = 1; i < srv->nwaiting; i++)
        if (srv->waiting[i].until_ms - now_ms() < left)
            left = srv->waiting[i].until_ms - now_ms();
    return left < 0 ? 0 : (int)left;
}

static void on_request(server *srv, haul_session *s)
{
    answer_request(srv, s, now_ms() + WAIT_MS);
}

/* Accepts or refuses a session request; one refused only because another
 * push looks connected waits until `until` (0: it may not wait). */
static void answer_request(server *srv, haul_session *s, int64_t until)
{
    /* With TLS the namespace is the principal of the client's verified
     * certificate, never what the request says (the library refuses a
     * request whose principal is not the certificate's anyway). */
    const char *principal = haul_session_principal(s);
    if (srv->cfg.tls_cert) {
        const char *cert_principal = haul_session_peer_principal(s);
        principal = cert_principal ? cert_principal : "";
    }
    size_t clen = 0;
    const void *ctx = haul_session_context(s, &clen);
    uint32_t reason = 0;
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
    r->wcap = HSP_MESSAGE_MAX;
    snprintf(r->principal, sizeof(r->principal), "%s", principal);

    if (srv->stopping)
        reason = HSP_R_SHUTTING_DOWN;
    else if (!hsp_name_ok(principal, strlen(principal), HSP_NAME_MAX))
        reason = HSP_R_DENIED;
    else if (hsp_request_decode(ctx, clen, &r->req) < 0)
        reason = HSP_R_BAD_REQUEST;
    else
        reason = authorize(srv, r);
    if (reason == 0) {
        switch (r->req.op) {
        case HSP_PUSH:
            reason = push_open(r);
            break;
        case HSP_PULL:
            reason = pull_open(r);
            break;
        case HSP_LIST:
            reason = list_open(r);
            break;
        case HSP_VERIFY:
            reason = verify_open(r);
            break;
        case HSP_BENCH:
            reason = bench_open(r);
            break;
        case HSP_DELETE:
            reason = delete_open(r);
            break;
        default:
            reason = HSP_R_BAD_REQUEST;
        }
    }
    if (reason == HSP_R_BUSY && r->busy_connected && until != 0 &&
        srv->nwaiting < SERVER_WAITING_MAX) {
        request_log(r, HAUL_LOG_INFO,
                    "waits up to %d ms for the client of the running push to be seen gone",
                    WAIT_MS);
        srv->waiting[srv->nwaiting++] = (waiting_request){.session = s, .until_ms = until};
        free(r);
        return;
    }
    if (reason) {
        char who[HSP_NAME_MAX * 4 + 1];
        hsp_path_text(principal, strlen(principal), who, sizeof(who));
        hauld_log(HAUL_LOG_INFO, "request %u from %s (%s %s): refused: %s", r->serial, who,
                  op_name(r->req.op), r->req.dataset[0] ? r->req.dataset : "-",
                  hsp_refusal_text(reason));
        /* A refused session is freed at once: the engine still sends the
         * refusal, and no event about it comes to us. */
        haul_session_reject(s, reason);
        haul_session_free(s);
        free(r);
        return;
    }
    r->next = srv->requests;
    if (srv->requests)
        srv->requests->prev = r;
    srv->requests = r;
    srv->nrequests++;
    haul_session_set_data(s, r);
    int rc = haul_session_accept(s);
    if (rc) {
        request_log(r, HAUL_LOG_INFO, "the client went away before it was accepted (%s)",
                    haul_strerror(rc));
        request_free(r);
        return;
    }
    request_log(r, HAUL_LOG_INFO, "accepted");
    r->wants = 1;
    if (r->req.op == HSP_PUSH)
        push_start(r);
}

static void on_closed(request *r, const haul_event *ev)
{
    if (ev->error == HAUL_OK && (r->finishing || r->req.op == HSP_BENCH))
        request_log(r, HAUL_LOG_DEBUG, "the session ended (%llu messages sent)",
                    (unsigned long long)r->messages_out);
    else if (ev->error == HAUL_OK)
        request_log(r, HAUL_LOG_INFO, "the client closed the session before the request ended");
    else
        request_log(r, HAUL_LOG_INFO, "the session ended: %s", haul_strerror(ev->error));
    request_free(r);
}

/* See "clients that are gone", below. */
static void on_pipe_event(request *r, const haul_event *ev);

static void handle_event(server *srv, const haul_event *ev)
{
    if (ev->type == HAUL_EV_NONE)
        return;
    if (ev->type == HAUL_EV_SESSION_REQUEST) {
        on_request(srv, ev->session);
        return;
    }
    request *r = haul_session_data(ev->session);
    if (r == NULL) {
        /* Not ours to handle (cannot happen: refused sessions are freed
         * at once); release the handle if it ended. */
        if (ev->type == HAUL_EV_SESSION_CLOSED) {
            forget_waiting(srv, ev->session);
            haul_session_free(ev->session);
            forget_session(srv, ev->session);
        }
        return;
    }
    switch (ev->type) {
    case HAUL_EV_MESSAGE_RECEIVED:
        r->wants = 1;
        break;
    case HAUL_EV_MESSAGE_SENT:
        out_retry(r);
        r->wants = 1;
        break;
    case HAUL_EV_MESSAGE_FAILED:
        request_log(r, HAUL_LOG_DEBUG, "a message failed: %s", haul_strerror(ev->error));
        break;
    case HAUL_EV_SESSION_CLOSED:
        on_closed(r, ev);
        break;
    case HAUL_EV_PIPE_DOWN:
    case HAUL_EV_PIPE_UP:
        on_pipe_event(r, ev);
        break;
    default:
        break;
    }
}

/* Gives the engine the limits of connections of the principals. Those
 * that lost their section (old: the table before a reload) fall back to
 * the "*" section's. */
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

/* SIGHUP: the principals' sections again, for the requests to come. */
static void reload_auth(server *srv)
{
    if (srv->cfg.config == NULL)
        return;
    char err[512];
    auth_table old = srv->auth, fresh;
    auth_init(&fresh);
    if (auth_load(&fresh, srv->cfg.config, err, sizeof(err)) < 0) {
        hauld_log(HAUL_LOG_ERROR, "SIGHUP received: %s; keeping the principals as they were", err);
        return;
    }
    srv->auth = fresh;
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
    if (!srv->stopping) {
        srv->stopping = 1;
        /* Pushes taken over have ended; only their clients may not know
         * yet, and a shutdown does not wait for them. */
        request *next;
        for (request *r = srv->requests; r; r = next) {
            next = r->next;
            if (r->abandoned)
                request_abort(r, "the server is shutting down");
        }
        srv->stop_deadline_ms = now_ms() + (int64_t)srv->cfg.timeout_s * 1000;
        hauld_log(HAUL_LOG_INFO,
                  "%s received: refusing new requests and waiting up to %u s for %u running "
                  "ones to end",
                  name, srv->cfg.timeout_s, srv->nrequests);
    } else {
        srv->stop_deadline_ms = now_ms();
        hauld_log(HAUL_LOG_INFO, "%s received again: ending the running requests now", name);
    }
}

static void abort_all(server *srv, const char *why)
{
    while (srv->requests) {
        request *r = srv->requests;
        snprintf(r->why, sizeof(r->why), "%s", why);
        request_abort(r, NULL);
    }
}

/* ---- clients that are gone ------------------------------------------------------------ */

int request_connected(request *r)
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

static void on_pipe_event(request *r, const haul_event *ev)
{
    if (ev->type == HAUL_EV_PIPE_UP) {
        if (r->pipe_down_since_ms)
            request_log(r, HAUL_LOG_INFO, "its client is connected again");
        r->pipe_down_since_ms = 0;
        return;
    }
    if (r->pipe_down_since_ms == 0)
        r->pipe_down_since_ms = now_ms();
    r->srv->pipe_went_down = 1;
    request_log(r, HAUL_LOG_INFO, "its client has no connection left (%s)",
                ev->error == HAUL_ETIMEDOUT ? "silent for the idle timeout"
                                            : haul_strerror(ev->error));
}

/* A request whose pipe is down. A push holds its dataset, but any
 * request whose client is gone for good (a bench stopped with data still
 * on its way, a killed pull, a client that left before it read the
 * result it was sent) would be kept, and a shutdown would wait for it,
 * for the whole message timeout. */
static int gone_watched(const request *r)
{
    return r->pipe_down_since_ms != 0;
}

/* Ends the requests whose client has been gone for the grace period. */
static void end_gone_pushes(server *srv)
{
    int64_t now = now_ms();
    request *next;
    for (request *r = srv->requests; r; r = next) {
        next = r->next;
        if (!gone_watched(r) || now - r->pipe_down_since_ms < PUSH_GRACE_MS)
            continue;
        if (r->abandoned)
            request_abort(r, "the client of the push taken over has had no connection for %d s",
                          PUSH_GRACE_MS / 1000);
        else if (r->req.op != HSP_PUSH || r->finishing)
            request_abort(r, "its client has had no connection for %d s: it is gone",
                          PUSH_GRACE_MS / 1000);
        else
            request_abort(r,
                          "its client has had no connection for %d s: it is gone (what it "
                          "staged is kept for the next push)",
                          PUSH_GRACE_MS / 1000);
    }
}

/* Milliseconds until the next request's grace ends, or -1 when none waits. */
static int next_gone_ms(const server *srv)
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

/* ---- the server ---------------------------------------------------------------------- */

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
    ec.log = engine_log;
    ec.log_level = cfg->log_level;
    int rc = haul_engine_new(&ec, &srv->engine);
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
              "storing into %s (%s store), %u I/O thread%s, message timeout %u s, keepalive %u "
              "ms, idle timeout %u ms (0: off)",
              cfg->store, srv->store->ops->name, ec.io_threads, ec.io_threads == 1 ? "" : "s",
              ec.message_timeout_ms / 1000, ec.keepalive_ms, ec.idle_timeout_ms);
    if (cfg->tls_cert)
        hauld_log(HAUL_LOG_INFO, "listening on %s with mutual TLS 1.3 (CA %s%s%s)", address,
                  cfg->tls_ca, cfg->tls_crl ? ", CRL " : "", cfg->tls_crl ? cfg->tls_crl : "");
    else
        hauld_log(HAUL_LOG_WARN,
                  "listening on %s in PLAINTEXT: no authentication, no encryption "
                  "(--plaintext); every client names its own principal",
                  address);
    /* Before the line that tells the world hauld listens. */
    apply_limits(srv, NULL);
    if (cfg->config)
        hauld_log(HAUL_LOG_INFO, "%zu principal section%s from %s", srv->auth.n,
                  srv->auth.n == 1 ? "" : "s", cfg->config);
    printf("hauld: listening on %s\n", address);
    fflush(stdout);
    return 0;
}

int server_run(server *srv)
{
    haul_event events[64];
    struct pollfd pfd[2] = {
        {.fd = haul_engine_fd(srv->engine), .events = POLLIN},
        {.fd = srv->sigfd, .events = POLLIN},
    };
    for (;;) {
        int timeout = -1;
        for (request *r = srv->requests; r; r = r->next)
            if (r->wants) {
                timeout = 0;
                break;
            }
        /* Wake up when the grace of a push whose client went ends. */
        int gone = next_gone_ms(srv);
        if (gone >= 0 && (timeout < 0 || gone < timeout))
            timeout = gone;
        int wait = next_waiting_ms(srv);
        if (wait >= 0 && (timeout < 0 || wait < timeout))
            timeout = wait;
        if (srv->stopping) {
            if (srv->nrequests == 0)
                break;
            int64_t left = srv->stop_deadline_ms - now_ms();
            if (left <= 0) {
                hauld_log(HAUL_LOG_WARN,
                          "%u request%s still running at the end of the shutdown timeout; "
                          "ending them (a push keeps its staging for a later resume)",
                          srv->nrequests, srv->nrequests == 1 ? "" : "s");
                abort_all(srv, "the server is shutting down");
                break;
            }
            if (timeout < 0 || timeout > left)
                timeout = left > 60000 ? 60000 : (int)left;
        }
        if (poll(pfd, srv->sigfd >= 0 ? 2 : 1, timeout) < 0 && errno != EINTR) {
            hauld_log(HAUL_LOG_ERROR, "poll failed: %s", strerror(errno));
            abort_all(srv, "the server failed");
            break;
        }
        if (srv->sigfd >= 0 && (pfd[1].revents & POLLIN))
            on_signal(srv);

        /* Events first, a bounded number of rounds so that the requests'
         * work is not starved by a flood of acknowledgements. */
        for (int round = 0; round < 16; round++) {
            int n = haul_engine_wait(srv->engine, events, 64, 0);
            if (n <= 0)
                break;
            srv->batch = events;
            srv->batch_n = n;
            for (int i = 0; i < n; i++)
                handle_event(srv, &events[i]);
            srv->batch_n = 0;
            srv->batch = NULL;
        }

        end_gone_pushes(srv);
        retry_waiting(srv);

        /* Then a share of work for every request that has some. */
        request *next;
        for (request *r = srv->requests; r; r = next) {
            next = r->next;
            if (!r->wants)
                continue;
            r->wants = 0;
            int rc = r->ops->step(r);
            if (rc > 0)
                r->wants = 1;
        }
    }
    return 0;
}

void server_fini(server *srv)
{
    abort_all(srv, "the server is stopping");
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
}
