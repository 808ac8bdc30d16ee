/*
 * session.c - sessions: the handshake, the output and input queues, the
 * window, acknowledgements and the close (Fig. 4).
 *
 * Everything here runs with the engine's mutex held; the public calls take
 * it themselves.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "net/payload.h"

/* The most messages one window may grant, whatever the byte budget: it
 * bounds the per-message bookkeeping of tiny messages. */
#define WINDOW_MAX 65536u

/* ---- state ------------------------------------------------------------- */

void haul__session_enter(haul_session *s, int event)
{
    int next = haul__session_next(s->state, event);
    if (next < 0) {
        /* Callers check before they act; reaching here is a bug in the
         * engine, and the session is left as it was. */
        haul__log(s->engine, HAUL_LOG_ERROR, "session %u: no transition from %s on %s", s->id,
                  haul__session_state_name(s->state), haul__session_event_name(event));
        return;
    }
    haul__log(s->engine, HAUL_LOG_DEBUG, "session %u: %s -> %s on %s", s->id,
              haul__session_state_name(s->state), haul__session_state_name(next),
              haul__session_event_name(event));
    s->state = next;
    haul__count_state(s->engine, next);
    /* A new state may have a deadline of its own. */
    haul__sweep_soon(s->engine);
}

static int can(const haul_session *s, int event)
{
    return haul__session_next(s->state, event) >= 0;
}

static haul_event event_of(haul_session *s, haul_event_type type, int error, uint64_t tag,
                           uint64_t seq, uint32_t window, uint32_t reason)
{
    return (haul_event){.type = type,
                        .error = error,
                        .session = s,
                        .tag = tag,
                        .seq = seq,
                        .window = window,
                        .reason = reason};
}

static void post(haul_session *s, haul_event_type type, int error, uint64_t tag, uint64_t seq,
                 uint32_t window, uint32_t reason)
{
    if (s->app_freed)
        return;
    haul_event ev = event_of(s, type, error, tag, seq, window, reason);
    haul__post(s->engine, &ev);
}

/*
 * Posts a final event through a completion queue slot reserved when its
 * operation was accepted (*slots counts those the caller holds): it
 * cannot fail. After the application freed the handle the event is not
 * posted, and the slot is given back.
 */
static void post_final(haul_session *s, unsigned *slots, haul_event_type type, int error,
                       uint64_t tag, uint64_t seq, uint32_t window, uint32_t reason)
{
    if (*slots == 0) {
        /* Nothing was reserved (a bug if ever reached): best effort. */
        post(s, type, error, tag, seq, window, reason);
        return;
    }
    (*slots)--;
    if (s->app_freed) {
        haul__cq_release(s->engine, 1);
        return;
    }
    haul_event ev = event_of(s, type, error, tag, seq, window, reason);
    haul__post_reserved(s->engine, &ev);
}

/* The final event of a message that leaves the output queue. */
static void post_message(haul_session *s, haul_message *m, haul_event_type type, int error,
                         uint32_t window)
{
    unsigned slot = (unsigned)m->cq_slot;
    m->cq_slot = 0;
    post_final(s, &slot, type, error, m->tag, m->seq, window, 0);
}

/* The session's last event (SESSION_CLOSED or SESSION_REFUSED): the
 * slots it still held for others are given back. */
static void post_last(haul_session *s, haul_event_type type, int error, uint32_t reason)
{
    post_final(s, &s->cq_slots, type, error, 0, 0, 0, reason);
    haul__cq_release(s->engine, s->cq_slots);
    s->cq_slots = 0;
}

void haul__session_want(haul_session *s, unsigned pending)
{
    s->pending |= pending;
    if (s->pipe && !haul__list_linked(&s->ctl_link)) {
        haul__list_add_tail(&s->pipe->ctl, &s->ctl_link);
        haul__pipe_kick(s->pipe, 1);
    }
}

static void session_destroy(haul_session *s)
{
    haul__mem_session_end(s, 1);
    haul__cq_release(s->engine, s->cq_slots);
    free(s->context);
    free(s);
}

void haul__session_unref(haul_session *s)
{
    if (--s->refs == 0)
        session_destroy(s);
}

/* Takes the session out of its pipe's table once nobody can need it: the
 * application released it and no control frame waits to go. */
static void session_retire(haul_session *s)
{
    if (!s->app_freed || s->pending != 0 || s->abort_inflight != 0 || !s->in_table)
        return;
    if (s->state != CE_SS_SESSION_CLOSED)
        return;
    haul__pipe *pipe = s->pipe;
    /* The peer may still send frames for it (section 9.3): how it ended
     * decides their answers. */
    if (s->refused)
        haul__pipe_remember(pipe, s->id, HAUL__ENDED_REFUSED, s->nak_reason);
    else if (s->close_error == 0)
        haul__pipe_remember(pipe, s->id, HAUL__ENDED_CLOSED, 0);
    else
        haul__pipe_remember(pipe, s->id, HAUL__ENDED_ABORTED,
                            s->abort_code ? s->abort_code : (uint32_t)s->close_error);
    haul__pipe_remove_session(pipe, s);
    s->engine->nsessions--;
    haul__session_unref(s);
    haul__pipe_maybe_free(pipe);
}

/* ---- the window ---------------------------------------------------------- */

static int may_send(const haul_session *s);

/*
 * What a message takes of a queue: its bytes, and at least one. Both
 * sides count alike, the sender in its output queue and the receiver in
 * its input queue (`held`), so that empty messages close the receiver's
 * window like any others instead of piling up without bound.
 */
static uint64_t queue_cost(uint64_t len)
{
    return len ? len : 1;
}

/* What the input queue holds now: the whole messages not yet taken. */
static uint64_t inq_cost(const haul_session *s)
{
    uint64_t held = 0;
    for (haul__list *p = s->inq.next; p != &s->inq; p = p->next)
        held += queue_cost(HAUL__CONTAINER(p, haul_message, link)->len);
    return held;
}

/* ---- queues from the bandwidth-delay product ---------------------------------- */

/*
 * A session's output and input queues are bounds (haul.h), and most links
 * need far less: what they carry in a round trip, a few times over, so
 * that a loss holding up one chunk of a message does not stop the others
 * while it is sent again. So the bytes a sender queues and the window a
 * receiver gives follow what the session measured: the most bytes per
 * second it carried lately, times the pipe's round trip, times
 * HAUL__BDP_GAIN, never less than HAUL__QUEUE_FLOOR (nor two of the
 * largest messages), never more than the bound. A session on a short or
 * slow link holds tens of MiB, whatever its bound; one on a long fat link
 * may use all of it. Eight round trips, since on a pipe of many
 * connections a message waits for its slowest chunk: a loss on one
 * connection holds up every message behind it for a round trip or more
 * while the others keep arriving. The gain also lets the rate grow: a
 * window of eight round trips of what the link carried lets it carry
 * more in the next.
 * The rate is the most of the recent periods' and decays by an eighth a
 * period, so a pause does not shrink the queues at once.
 */
#define HAUL__BDP_GAIN 8
#define HAUL__QUEUE_FLOOR (32ull << 20)
#define HAUL__RATE_PERIOD_MS 100
/* Below this, the round trip of the pipe is its engines' own time: the
 * application's turn to take a message or to send the next. */
#define HAUL__BDP_MIN_RTT_US 1000

static uint64_t bdp_bound(const haul_session *s, uint64_t rate, uint64_t unit, uint64_t bound)
{
    uint64_t rtt =
        s->pipe && s->pipe->rtt_us > HAUL__BDP_MIN_RTT_US ? s->pipe->rtt_us : HAUL__BDP_MIN_RTT_US;
    if (s->engine->debug_rtt_us)
        rtt = s->engine->debug_rtt_us;
    uint64_t want = rate * rtt / 1000000 * HAUL__BDP_GAIN;
    uint64_t floor = HAUL__QUEUE_FLOOR > 2 * unit ? HAUL__QUEUE_FLOOR : 2 * unit;
    if (want < floor)
        want = floor;
    return want < bound ? want : bound;
}

uint64_t haul__session_out_bound(const haul_session *s)
{
    return bdp_bound(s, s->tx_rate, s->max_message, s->output_queue);
}

static int64_t earlier(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* A rate decayed by an eighth for each of the periods that passed. */
static uint64_t rate_decay(uint64_t rate, int64_t periods)
{
    for (int64_t i = 0; i < periods && rate > 0; i++)
        rate -= rate / 8 > 0 ? rate / 8 : rate;
    return rate;
}

/* Whether a rate makes a queue larger than the floor: below that, how it
 * decays changes nothing, and the sweep need not sample it on time. */
static int rate_counts(const haul_session *s, uint64_t rate, uint64_t unit)
{
    return bdp_bound(s, rate, unit, UINT64_MAX) > bdp_bound(s, 0, unit, UINT64_MAX);
}

/* The rates of the periods that ended (at the sweep), and when the next
 * one ends if it matters. A sweep that comes late, the session having had
 * nothing to do, decays the rates by every period that passed, as
 * samples on time would have. */
static int64_t rate_sample(haul_session *s, int64_t now)
{
    if (s->rate_at == 0) {
        s->rate_at = now;
        return now + HAUL__RATE_PERIOD_MS;
    }
    int64_t dt = now - s->rate_at;
    if (dt >= HAUL__RATE_PERIOD_MS) {
        int64_t periods = dt / HAUL__RATE_PERIOD_MS;
        uint64_t rx = s->rx_count * 1000 / (uint64_t)dt, tx = s->tx_count * 1000 / (uint64_t)dt;
        uint64_t rx_kept = rate_decay(s->rx_rate, periods);
        uint64_t tx_kept = rate_decay(s->tx_rate, periods);
        s->rx_rate = rx > rx_kept ? rx : rx_kept;
        s->tx_rate = tx > tx_kept ? tx : tx_kept;
        s->rx_count = s->tx_count = 0;
        s->rate_at = now;
    }
    uint64_t rx_unit = s->peer_max_message ? s->peer_max_message : 1;
    if (s->rx_count || s->tx_count || rate_counts(s, s->rx_rate, rx_unit) ||
        rate_counts(s, s->tx_rate, s->max_message))
        return s->rate_at + HAUL__RATE_PERIOD_MS;
    return HAUL__NEVER;
}

/*
 * WndSize: how many more messages, beyond those delivered in order, this
 * side admits, and the right edge it makes (rcv_right). The input queue's
 * free bytes are counted in messages of the peer's largest size; an empty
 * queue admits one message whatever its size. With an engine-wide memory
 * budget, the new slots must also be had from it (core/budget.c), which
 * may grant fewer, or none. The right edge never moves back: what was
 * granted stays granted.
 */
uint32_t haul__session_window(haul_session *s)
{
    uint64_t unit = s->peer_max_message ? s->peer_max_message : 1;
    uint64_t bound = bdp_bound(s, s->rx_rate, unit, s->input_queue);
    uint64_t free_bytes = bound > s->held ? bound - s->held : 0;
    uint64_t w = free_bytes / unit;
    if (w == 0 && s->held == 0)
        w = 1;
    if (w > WINDOW_MAX)
        w = WINDOW_MAX;
    uint64_t right = s->rcv_next + w;
    if (s->engine->budget != NULL)
        right = haul__mem_grant(s, right);
    if (right > s->rcv_right)
        s->rcv_right = right;
    return (uint32_t)(s->rcv_right - s->rcv_next);
}

void haul__session_mem_granted(haul_session *s)
{
    uint64_t before = s->rcv_right;
    haul__session_window(s);
    if (s->rcv_right > before)
        haul__session_want(s, HAUL__PEND_ACK);
}

/* Memory was set aside for the send the budget refused: the application
 * may send again (haul.h, haul_engine_config.memory). */
void haul__session_mem_opened(haul_session *s)
{
    if (may_send(s))
        post(s, HAUL_EV_WINDOW_OPENED, 0, 0, 0, s->peer_wnd, 0);
}

/* ---- failure and close ----------------------------------------------------- */

static void drop_messages(haul_session *s, haul__list *q, int error, int report)
{
    while (!haul__list_empty(q)) {
        haul_message *m = HAUL__CONTAINER(haul__list_first(q), haul_message, link);
        haul__list_del(&m->link);
        haul__mem_rx_leave(s, m);
        if (report)
            post_message(s, m, HAUL_EV_MESSAGE_FAILED, error, 0);
        m->session = NULL;
        haul__message_unref(m);
    }
}

static void leave_dispatch(haul_session *s)
{
    haul__list_del(&s->dispatch_link);
}

/*
 * Ends a session that did not close in order: every message still queued
 * fails with `error`, and the application gets the session's final event
 * (REFUSED while it was opening, CLOSED after). With tell_peer, an ABORT
 * goes to the other side.
 */
void haul__session_fail(haul_session *s, int error, int tell_peer)
{
    if (s->state == CE_SS_SESSION_CLOSED)
        return;
    int opening = !s->server && s->state != CE_SS_SESSION_READY &&
                  s->state != CE_SS_APP_CLOSE_SESSION && s->state != CE_SS_SENDING_FIN;
    haul__session_enter(s, SEV_FAIL);
    s->out_bytes = 0;
    drop_messages(s, &s->outq, error, 1);
    drop_messages(s, &s->partial, error, 0);
    s->held = inq_cost(s);
    s->peer_done = 1;
    s->close_error = error;
    haul__mem_session_end(s, 0);
    leave_dispatch(s);
    s->pending &=
        ~(unsigned)(HAUL__PEND_SYNC | HAUL__PEND_FIN | HAUL__PEND_ACK | HAUL__PEND_SYNC_ACK);
    if (tell_peer) {
        s->abort_code = (uint32_t)error;
        haul__session_want(s, HAUL__PEND_ABORT);
    }
    post_last(s, opening ? HAUL_EV_SESSION_REFUSED : HAUL_EV_SESSION_CLOSED, error, 0);
    session_retire(s);
}

/* Sends the FIN once everything queued has been acknowledged. */
void haul__session_maybe_fin(haul_session *s)
{
    if (s->state == CE_SS_APP_CLOSE_SESSION && haul__list_empty(&s->outq))
        haul__session_want(s, HAUL__PEND_FIN);
}

static void closed_in_order(haul_session *s, int error)
{
    s->peer_done = 1;
    /* Nothing more will be received: a message still under reassembly
     * (the peer's chunks crossed our FIN) can never complete. */
    drop_messages(s, &s->partial, 0, 0);
    s->held = inq_cost(s);
    haul__mem_session_end(s, 0);
    post_last(s, HAUL_EV_SESSION_CLOSED, error, 0);
    session_retire(s);
}

/* ---- public: creating and answering sessions -------------------------------- */

void haul_session_config_init(haul_session_config *c)
{
    memset(c, 0, sizeof(*c));
    c->output_queue = 64ull << 20;
    c->input_queue = 64ull << 20;
    c->connections = 1;
}

static haul_session *session_alloc(haul_engine *e)
{
    haul_session *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->engine = e;
    s->state = CE_SS_NULL;
    haul__list_init(&s->outq);
    haul__list_init(&s->partial);
    haul__list_init(&s->inq);
    return s;
}

int haul_session_new(haul_engine *e, const haul_session_config *c, haul_session **sp)
{
    if (e == NULL || c == NULL || sp == NULL || c->destination == NULL || c->principal == NULL)
        return HAUL_EINVAL;
    size_t plen = strlen(c->principal);
    if (plen == 0 || plen > HAUL__PRINCIPAL_MAX)
        return HAUL_EINVAL;
    if (c->context_len > HAUL__CONTEXT_MAX || (c->context_len && c->context == NULL))
        return HAUL_EINVAL;
    if (c->output_queue == 0 || c->input_queue == 0)
        return HAUL_EINVAL;
    if (c->connections > 65535 || c->max_connections > 65535)
        return HAUL_EINVAL;
    if (c->max_message > e->config.max_message)
        return HAUL_EINVAL;

    int rc = 0;
    char *tls_key = haul__tls_key(c->tls, &rc);
    if (rc)
        return rc;

    /* A destination with a pipe already is not looked up again; a new
     * one is resolved here, on the caller's thread, never under the
     * engine's lock, and so are its TLS files read. */
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    struct ssl_ctx_st *tls_ctx = NULL;
    pthread_mutex_lock(&e->mu);
    int known = haul__pipe_find(e, c->destination, tls_key) != NULL;
    pthread_mutex_unlock(&e->mu);
    if (!known) {
        rc = haul__addr_parse(c->destination, &ss, &sslen);
        if (rc == 0 && c->tls)
            rc = haul__tls_ctx_new(e, c->tls, 0, &tls_ctx);
        if (rc) {
            free(tls_key);
            return rc;
        }
    }
    haul_session *s = session_alloc(e);
    if (s == NULL) {
        haul__tls_ctx_free(tls_ctx);
        free(tls_key);
        return HAUL_ENOMEM;
    }
    memcpy(s->principal, c->principal, plen + 1);
    if (c->context_len) {
        s->context = malloc(c->context_len);
        if (s->context == NULL) {
            free(s);
            haul__tls_ctx_free(tls_ctx);
            free(tls_key);
            return HAUL_ENOMEM;
        }
        memcpy(s->context, c->context, c->context_len);
        s->context_len = c->context_len;
    }
    s->data = c->data;
    s->output_queue = c->output_queue;
    s->input_queue = c->input_queue;
    s->max_message = c->max_message ? c->max_message : e->config.max_message;
    s->timeout_ms = c->message_timeout_ms ? c->message_timeout_ms : e->config.message_timeout_ms;
    haul__bucket_set(&s->rate, c->rate_limit, haul__now_us());

    pthread_mutex_lock(&e->mu);
    int err = 0;
    if (e->stopping)
        err = HAUL_ESHUTDOWN;
    else if (e->nsessions >= e->config.max_sessions)
        err = HAUL_ELIMIT;
    /* Its two events, SESSION_OPEN or SESSION_REFUSED and then
     * SESSION_CLOSED, have their slots from now on. */
    else if (haul__cq_reserve(e, 2) == 0)
        s->cq_slots = 2;
    else
        err = HAUL_ENOMEM;
    haul__pipe *pipe = NULL;
    if (!err && (pipe = haul__pipe_find(e, c->destination, tls_key)) == NULL) {
        if (sslen == 0) {
            /* The pipe went away between the look and now: resolve and
             * load after all, without the lock. */
            pthread_mutex_unlock(&e->mu);
            rc = haul__addr_parse(c->destination, &ss, &sslen);
            if (rc == 0 && c->tls)
                rc = haul__tls_ctx_new(e, c->tls, 0, &tls_ctx);
            pthread_mutex_lock(&e->mu);
            err = rc;
        }
        if (!err) {
            pipe = haul__pipe_client(e, c, &ss, sslen, tls_ctx, tls_key, &err);
            tls_ctx = NULL; /* the pipe's now, or freed */
        }
    }
    /* Loaded for a pipe that another call made meanwhile. */
    haul__tls_ctx_free(tls_ctx);
    free(tls_key);
    if (pipe == NULL) {
        session_destroy(s);
        pthread_mutex_unlock(&e->mu);
        return err;
    }
    s->refs = 1; /* the handle */
    e->nsessions++;
    /* Counted under the mutex, and only for a session this call made. */
    haul__count_state(e, CE_SS_NULL);
    s->id = pipe->next_session_id++;
    haul__pipe_add_session(pipe, s);
    s->open_deadline = haul__now_ms() + s->timeout_ms;
    haul__session_enter(s, SEV_CREATE);
    haul__session_want(s, HAUL__PEND_SYNC);
    /* Every dial of a new pipe may have failed at once (a Unix socket
     * that does not exist): the session is refused like any other. */
    if (pipe->failed)
        haul__session_fail(s, pipe->fail_error, 0);
    *sp = s;
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int haul_session_accept(haul_session *s)
{
    if (s == NULL)
        return HAUL_EINVAL;
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (s->state == CE_SS_SESSION_CLOSED)
        rc = HAUL_ECLOSED;
    else if (!s->server || !can(s, SEV_APP_ACCEPT))
        rc = HAUL_ESTATE;
    else {
        haul__session_enter(s, SEV_APP_ACCEPT);
        haul__session_want(s, HAUL__PEND_SYNC_ACK);
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int haul_session_reject(haul_session *s, uint32_t reason)
{
    if (s == NULL)
        return HAUL_EINVAL;
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (!s->server || !can(s, SEV_APP_REJECT))
        rc = HAUL_ESTATE;
    else {
        haul__session_enter(s, SEV_APP_REJECT);
        s->nak_reason = reason;
        s->refused = 1;
        s->peer_done = 1;
        haul__mem_session_end(s, 0);
        haul__session_want(s, HAUL__PEND_SYNC_NAK);
        post_last(s, HAUL_EV_SESSION_CLOSED, HAUL_EREFUSED, reason);
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int haul_session_set_rate_limit(haul_session *s, uint64_t rate)
{
    if (s == NULL)
        return HAUL_EINVAL;
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (s->state == CE_SS_SESSION_CLOSED)
        rc = HAUL_ECLOSED;
    else {
        haul__bucket_set(&s->rate, rate, haul__now_us());
        /* A session the old limit held goes back to the dispatcher now,
         * rather than at the next sweep. */
        if (s->rate_held && s->pipe) {
            s->rate_held = 0;
            if (!haul__list_linked(&s->dispatch_link))
                haul__list_add_tail(&s->pipe->dispatch, &s->dispatch_link);
            haul__pipe_kick(s->pipe, 1);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int haul_session_close(haul_session *s)
{
    if (s == NULL)
        return HAUL_EINVAL;
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (!can(s, SEV_APP_CLOSE))
        rc = s->state == CE_SS_SESSION_CLOSED ? HAUL_ECLOSED : HAUL_ESTATE;
    else {
        haul__session_enter(s, SEV_APP_CLOSE);
        s->close_deadline = haul__now_ms() + s->timeout_ms;
        haul__session_maybe_fin(s);
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

void haul_session_free(haul_session *s)
{
    if (s == NULL)
        return;
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    haul__cq_forget(e, s);
    s->app_freed = 1; /* no events from here on, and no slots kept for them */
    haul__cq_release(e, s->cq_slots);
    s->cq_slots = 0;
    if (s->state != CE_SS_SESSION_CLOSED)
        haul__session_fail(s, HAUL_EABORTED, 1);
    drop_messages(s, &s->inq, 0, 0);
    s->held = 0;
    if (e->budget != NULL)
        haul__mem_session_end(s, 0);
    session_retire(s);
    haul__session_unref(s);
    pthread_mutex_unlock(&e->mu);
}

void *haul_session_data(const haul_session *s)
{
    return s->data;
}

void haul_session_set_data(haul_session *s, void *data)
{
    s->data = data;
}

const char *haul_session_principal(const haul_session *s)
{
    return s->principal;
}

const char *haul_session_peer_principal(const haul_session *s)
{
    /* Set before the application gets the session, and never after. */
    return s->has_cert_principal ? s->cert_principal : NULL;
}

const void *haul_session_context(const haul_session *s, size_t *len)
{
    if (len)
        *len = s->context_len;
    return s->context;
}

const char *haul_session_state(const haul_session *s)
{
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    const char *name = haul__session_state_name(s->state);
    pthread_mutex_unlock(&e->mu);
    return name;
}

/* ---- public: sending and receiving ------------------------------------------- */

static int may_send(const haul_session *s)
{
    switch (s->state) {
    case CE_SS_SESSION_READY:
    case CE_SS_APP_CONFIRM_ACCEPT_ACK:
    case CE_SS_SENDING_APP_SESSION_ACK:
        return !s->peer_done;
    default:
        return 0;
    }
}

/* Queues a message (414-420): refused at once when it cannot fit. */
static int enqueue(haul_session *s, haul_message *m, uint64_t tag)
{
    haul_engine *e = s->engine;
    if (!may_send(s))
        return HAUL_ESTATE;
    if (m->len > s->max_message || m->len > s->output_queue)
        return HAUL_EMSGSIZE;
    if (s->out_bytes + queue_cost(m->len) > haul__session_out_bound(s))
        return HAUL_EQUEUEFULL;
    haul__message_plan(m, s->pipe ? s->pipe->chunk : e->config.chunk_size);
    m->carrier = calloc(m->nchunks, sizeof(*m->carrier));
    m->tx = calloc(m->nchunks, sizeof(*m->tx));
    if (m->carrier == NULL || m->tx == NULL)
        return HAUL_ENOMEM;
    /* The slot of its MESSAGE_SENT or MESSAGE_FAILED, taken last: nothing
     * after it can fail. */
    if (haul__cq_reserve(e, 1))
        return HAUL_ENOMEM;
    /* The engine's memory budget: the message counts from now until it
     * is destroyed (haul.h). */
    if (e->budget != NULL) {
        int rc = haul__mem_send(s, queue_cost(m->len), 1);
        if (rc) {
            haul__cq_release(e, 1);
            return rc;
        }
        haul__budget *b = e->budget;
        atomic_fetch_add(&b->refs, 1);
        m->budget = b;
        m->charge = queue_cost(m->len);
    }
    m->cq_slot = 1;
    m->session = s;
    m->tag = tag;
    m->seq = s->next_seq++;
    m->deadline = haul__now_ms() + s->timeout_ms;
    haul__list_add_tail(&s->outq, &m->link);
    haul__sweep_soon(e);
    s->out_bytes += queue_cost(m->len);
    if (m->seq < s->right && s->pipe) {
        if (!haul__list_linked(&s->dispatch_link))
            haul__list_add_tail(&s->pipe->dispatch, &s->dispatch_link);
        haul__pipe_kick(s->pipe, m->nchunks);
    }
    return 0;
}

static int send_message(haul_session *s, haul_message *m, uint64_t tag)
{
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    int rc = enqueue(s, m, tag);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int haul_send(haul_session *s, const void *buf, size_t len, uint64_t tag)
{
    if (s == NULL || (buf == NULL && len > 0))
        return HAUL_EINVAL;
    /* Refuse before copying what can never fit. */
    if (len > s->max_message || len > s->output_queue)
        return HAUL_EMSGSIZE;
    /* A glance at the queue first, so that a caller retrying a full
     * queue does not pay for a copy each time; enqueue() decides. */
    pthread_mutex_lock(&s->engine->mu);
    int rc = may_send(s) ? 0 : HAUL_ESTATE;
    if (rc == 0 && s->out_bytes + queue_cost(len) > haul__session_out_bound(s))
        rc = HAUL_EQUEUEFULL;
    if (rc == 0 && s->engine->budget != NULL)
        rc = haul__mem_send(s, queue_cost(len), 0);
    pthread_mutex_unlock(&s->engine->mu);
    if (rc)
        return rc;
    haul_message *m = haul__message_new(len, 1);
    if (m == NULL)
        return HAUL_ENOMEM;
    if (len)
        memcpy(m->data, buf, len);
    rc = send_message(s, m, tag);
    if (rc)
        haul__message_unref(m);
    return rc;
}

int haul_send_buffer(haul_session *s, const void *buf, size_t len,
                     void (*release)(void *buf, void *arg), void *arg, uint64_t tag)
{
    if (s == NULL || (buf == NULL && len > 0))
        return HAUL_EINVAL;
    haul_message *m = haul__message_new(len, 0);
    if (m == NULL)
        return HAUL_ENOMEM;
    m->kind = HAUL__BODY_BORROWED;
    m->data = (uint8_t *)buf;
    m->release = release;
    m->release_arg = arg;
    int rc = send_message(s, m, tag);
    if (rc) {
        /* A failed call leaves the buffer with the caller: the message
         * was never shared, so disarming it here is safe. */
        m->kind = HAUL__BODY_OWNED;
        m->data = NULL;
        haul__message_unref(m);
    }
    return rc;
}

int haul_send_file(haul_session *s, int fd, off_t offset, size_t len, uint64_t tag)
{
    if (s == NULL || fd < 0 || offset < 0)
        return HAUL_EINVAL;
    if (len > s->max_message || len > s->output_queue)
        return HAUL_EMSGSIZE;
    haul_message *m = haul__message_new(len, 0);
    if (m == NULL)
        return HAUL_ENOMEM;
    m->kind = HAUL__BODY_FILE;
    m->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    m->file_offset = offset;
    if (m->fd < 0) {
        haul__message_unref(m);
        return HAUL_ESYS;
    }
    int rc = send_message(s, m, tag);
    if (rc)
        haul__message_unref(m);
    return rc;
}

int haul_recv(haul_session *s, haul_message **mp)
{
    if (s == NULL || mp == NULL)
        return HAUL_EINVAL;
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    haul__list *first = haul__list_first(&s->inq);
    if (first == NULL) {
        int rc = s->peer_done || s->state == CE_SS_SESSION_CLOSED ? HAUL_ECLOSED : HAUL_EAGAIN;
        pthread_mutex_unlock(&e->mu);
        return rc;
    }
    haul_message *m = HAUL__CONTAINER(first, haul_message, link);
    haul__list_del(&m->link);
    haul__mem_rx_leave(s, m);
    m->session = NULL;
    s->held -= queue_cost(m->len);
    /* Taking a message out of the input queue is what opens the window
     * (442-444): tell the sender if the right edge moved. */
    if (!s->peer_done && s->state != CE_SS_SESSION_CLOSED)
        haul__session_mem_granted(s);
    pthread_mutex_unlock(&e->mu);
    *mp = m;
    return 0;
}

/* ---- frames from the peer ------------------------------------------------------ */

haul_session *haul__session_find(haul__pipe *pipe, uint32_t id)
{
    haul__list *head = &pipe->buckets[id % HAUL__BUCKETS], *p;
    haul__list_each(p, head)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, bucket_link);
        if (s->id == id)
            return s;
    }
    return NULL;
}

/*
 * A frame for a session that is not in the pipe's table (section 9.3). An
 * ABORT is never answered. A session that ended recently gets the answer
 * its end implies: after an orderly close a repeated FIN gets FIN_ACK and
 * anything else is a harmless straggler; after a refusal a repeated SYNC
 * gets the same SYNC_NAK; after a failure the ABORT is said again, since
 * the peer evidently missed it. A session never known, or forgotten, is
 * answered with ABORT HAUL_ENOSESSION: the peer restarted us, or we it.
 */
static void answer_ended(haul__pipe *pipe, const haul__frame *f)
{
    if (f->type == HAUL__F_ABORT)
        return;
    const haul__ended *x = haul__pipe_ended(pipe, f->session);
    if (x == NULL) {
        haul__log(pipe->engine, HAUL_LOG_INFO, "session %u: %s for a session not known here",
                  f->session, haul__frame_name(f->type));
        haul__pipe_answer(pipe, f->session, HAUL__F_ABORT, HAUL_ENOSESSION);
        return;
    }
    switch (x->how) {
    case HAUL__ENDED_CLOSED:
        if (f->type == HAUL__F_FIN)
            haul__pipe_answer(pipe, f->session, HAUL__F_FIN_ACK, 0);
        return;
    case HAUL__ENDED_REFUSED:
        if (f->type == HAUL__F_SYNC)
            haul__pipe_answer(pipe, f->session, HAUL__F_SYNC_NAK, x->code);
        return;
    default:
        haul__pipe_answer(pipe, f->session, HAUL__F_ABORT, x->code);
        return;
    }
}

/* Server: a SYNC (404-406). A repeated SYNC gets the earlier answer again. */
static void on_sync(haul__pipe *pipe, const haul__frame *f, const uint8_t *payload)
{
    haul_engine *e = pipe->engine;
    haul_session *s = haul__session_find(pipe, f->session);
    if (s) {
        /* A repeat: the table says which states answer it. The state
         * stays, so it is looked up, not entered. */
        if (!s->server || !can(s, SEV_SYNC_REPEATED))
            return;
        if (s->state != CE_SS_SESSION_CLOSED) {
            haul__session_want(s, HAUL__PEND_SYNC_ACK);
            /* The FIN may have reached the client before it could know
             * the session: it follows the SYNC_ACK again. */
            if (s->state == CE_SS_SENDING_FIN)
                haul__session_want(s, HAUL__PEND_FIN);
        } else if (s->refused) {
            haul__session_want(s, HAUL__PEND_SYNC_NAK);
        } else if (s->abort_code != 0) {
            haul__session_want(s, HAUL__PEND_ABORT);
        }
        return;
    }
    if (haul__pipe_ended(pipe, f->session)) {
        /* A session that ended: the SYNC is a late repeat, never a new
         * request. */
        answer_ended(pipe, f);
        return;
    }
    haul__sync_request req;
    size_t plen = haul__sync_decode(payload, f->len, &req) == 0 ? strlen(req.principal) : 0;
    s = session_alloc(e);
    if (s == NULL)
        return;
    haul__count_state(e, CE_SS_NULL);
    s->server = 1;
    s->id = f->session;
    s->refs = 1; /* the handle the application gets with the request */
    if (plen) {  /* else malformed: refused below */
        memcpy(s->principal, req.principal, plen + 1);
        s->context_len = req.context_len;
        if (s->context_len) {
            s->context = malloc(s->context_len);
            if (s->context == NULL) {
                free(s);
                return;
            }
            memcpy(s->context, req.context, s->context_len);
        }
    }
    s->output_queue = pipe->lconf.output_queue;
    s->input_queue = pipe->lconf.input_queue;
    s->max_message = pipe->lconf.max_message;
    haul__sync_limits lim;
    haul__sync_limits_decode(f, e->config.max_message, &lim);
    s->peer_max_message = lim.peer_max_message;
    s->peer_input_queue = lim.peer_input_queue;
    s->timeout_ms = e->config.message_timeout_ms;
    /* Over TLS, the session's principal is the one the client's
     * certificate names (every connection of the pipe carries the same),
     * whatever the request says: a request for another is refused. */
    if (pipe->secured) {
        s->has_cert_principal = 1;
        memcpy(s->cert_principal, pipe->cert_principal, sizeof(s->cert_principal));
    }
    int foreign = plen != 0 && pipe->secured && strcmp(s->principal, s->cert_principal) != 0;
    e->nsessions++;
    haul__pipe_add_session(pipe, s);
    haul__session_enter(s, SEV_SYNC_RECEIVED);
    /* An accepted request posts SESSION_REQUEST and, in the end,
     * SESSION_CLOSED: without room for both it is refused. */
    int nomem = 0;
    if (plen != 0 && !foreign && e->nsessions <= e->config.max_sessions && !e->stopping) {
        if (haul__cq_reserve(e, 2) == 0)
            s->cq_slots = 2;
        else
            nomem = 1;
    }
    if (plen == 0 || foreign || nomem || e->nsessions > e->config.max_sessions || e->stopping) {
        /* Refused by the engine itself: the application never hears of it. */
        s->app_freed = 1;
        haul__session_enter(s, SEV_APP_REJECT);
        s->nak_reason = plen == 0 ? HAUL_EPROTO
                        : foreign ? HAUL_EREFUSED
                        : nomem   ? HAUL_ENOMEM
                                  : HAUL_ELIMIT;
        s->refused = 1;
        s->peer_done = 1;
        haul__session_want(s, HAUL__PEND_SYNC_NAK);
        s->refs--; /* the handle nobody got; the table keeps it until the NAK is out */
        if (foreign)
            haul__log(e, HAUL_LOG_WARN,
                      "session %u refused: it asks for principal \"%s\", the certificate is "
                      "of \"%s\"",
                      s->id, s->principal, s->cert_principal);
        else
            haul__log(e, HAUL_LOG_WARN, "session %u refused: %s", s->id,
                      plen == 0 ? "malformed request"
                      : nomem   ? "no memory for its events"
                                : "session limit reached");
        return;
    }
    post_final(s, &s->cq_slots, HAUL_EV_SESSION_REQUEST, 0, 0, 0, 0, 0);
}

/* A FIN said the peer delivered every message below `upto`: they are
 * sent (their MESSAGE_SENT carries window 0, the peer admits no more). */
static void fin_delivered(haul_session *s, uint64_t upto)
{
    while (!haul__list_empty(&s->outq)) {
        haul_message *m = HAUL__CONTAINER(haul__list_first(&s->outq), haul_message, link);
        if (m->seq >= upto)
            break;
        haul__list_del(&m->link);
        s->out_bytes -= queue_cost(m->len);
        s->engine->stats.messages_sent++;
        if (s->pipe)
            s->pipe->goodput_bytes += m->len;
        post_message(s, m, HAUL_EV_MESSAGE_SENT, 0, 0);
        m->session = NULL;
        haul__message_unref(m);
    }
    if (upto > s->acked && upto <= s->next_seq)
        s->acked = upto;
}

/* Sender side: an acknowledgement (426-428, 436-438, 444). */
static void on_ack(haul_session *s, const haul__frame *f)
{
    if (f->seq > s->next_seq || f->seq < s->acked)
        return; /* stale or impossible: ignore */
    int acked_any = 0;
    while (!haul__list_empty(&s->outq)) {
        haul_message *m = HAUL__CONTAINER(haul__list_first(&s->outq), haul_message, link);
        if (m->seq >= f->seq)
            break;
        haul__list_del(&m->link);
        s->out_bytes -= queue_cost(m->len);
        s->engine->stats.messages_sent++;
        s->tx_count += m->len;
        if (s->pipe)
            s->pipe->goodput_bytes += m->len;
        post_message(s, m, HAUL_EV_MESSAGE_SENT, 0, f->aux);
        m->session = NULL;
        haul__message_unref(m);
        acked_any = 1;
    }
    s->acked = f->seq;
    s->peer_wnd = f->aux;
    s->progress = haul__now_ms();
    uint64_t right = f->seq + f->aux;
    if (right > s->right) {
        /* "Window opened" tells the application that messages the window
         * held back may go now: only when some were waiting. */
        haul__list *last = s->outq.prev;
        if (!acked_any && last != &s->outq &&
            HAUL__CONTAINER(last, haul_message, link)->seq >= s->right)
            post(s, HAUL_EV_WINDOW_OPENED, 0, 0, 0, f->aux, 0);
        s->right = right;
        if (!haul__list_linked(&s->dispatch_link) && !haul__list_empty(&s->outq)) {
            haul__list_add_tail(&s->pipe->dispatch, &s->dispatch_link);
            haul__pipe_kick(s->pipe, (unsigned)(right - f->seq));
        }
    }
    haul__session_maybe_fin(s);
}

/* A FIN (section 4.7): the peer closed in order, having delivered every
 * message of ours below `seq`, whatever acknowledgements are still on
 * their way: those are sent, and only the others failed. */
static void on_fin(haul_session *s, uint64_t seq)
{
    if (!can(s, SEV_FIN_RECEIVED))
        return;
    haul__session_enter(s, SEV_FIN_RECEIVED);
    fin_delivered(s, seq);
    s->out_bytes = 0;
    drop_messages(s, &s->outq, HAUL_ECLOSED, 1);
    leave_dispatch(s);
    s->pending &= ~(unsigned)(HAUL__PEND_FIN | HAUL__PEND_ACK);
    haul__session_want(s, HAUL__PEND_FIN_ACK);
    closed_in_order(s, 0);
}

void haul__session_on_frame(haul__pipe *pipe, haul__conn *conn, const haul__frame *f,
                            const uint8_t *payload)
{
    (void)conn;
    if (f->type == HAUL__F_SYNC) {
        if (pipe->server)
            on_sync(pipe, f, payload);
        return;
    }
    haul_session *s = haul__session_find(pipe, f->session);
    if (s == NULL) {
        answer_ended(pipe, f);
        return;
    }
    if (s->state == CE_SS_SESSION_CLOSED && s->abort_code != 0 && f->type != HAUL__F_ABORT) {
        /* We aborted it and the peer goes on: our ABORT was lost. */
        haul__session_want(s, HAUL__PEND_ABORT);
        return;
    }
    switch (f->type) {
    case HAUL__F_SYNC_ACK:
        if (s->server || !can(s, SEV_SYNC_ACK))
            return;
        haul__session_enter(s, SEV_SYNC_ACK);
        s->pending &= ~(unsigned)HAUL__PEND_SYNC;
        haul__sync_limits lim;
        haul__sync_limits_decode(f, s->engine->config.max_message, &lim);
        s->peer_max_message = lim.peer_max_message;
        s->peer_input_queue = lim.peer_input_queue;
        /* The right edge never moves back. A window update that the
         * server made after this answer may have overtaken it on another
         * connection of the pipe (a server under its memory budget
         * answers with a window of 0 and opens it later): the answer's
         * edge must not undo it, or the session waits for a window the
         * server believes it gave. */
        if (s->acked + f->aux > s->right)
            s->right = s->acked + f->aux;
        s->peer_wnd = (uint32_t)(s->right - s->acked);
        post_final(s, &s->cq_slots, HAUL_EV_SESSION_OPEN, 0, 0, 0, s->peer_wnd, 0);
        /* Our own window for the server's messages, now that we know
         * their size. */
        haul__session_want(s, HAUL__PEND_ACK);
        if (s->fin_early)
            on_fin(s, s->fin_early_seq);
        return;
    case HAUL__F_SYNC_NAK:
        if (s->server || !can(s, SEV_SYNC_NAK))
            return;
        haul__session_enter(s, SEV_SYNC_NAK);
        s->pending = 0;
        s->peer_done = 1;
        post_last(s, HAUL_EV_SESSION_REFUSED, HAUL_EREFUSED, f->aux);
        session_retire(s);
        return;
    case HAUL__F_ACK:
        on_ack(s, f);
        return;
    case HAUL__F_FIN:
        if (s->state == CE_SS_SESSION_CLOSED) {
            /* Our FIN-ACK was lost with a connection: say it again. */
            haul__session_want(s, HAUL__PEND_FIN_ACK);
            return;
        }
        if (!s->server && !can(s, SEV_FIN_RECEIVED) && can(s, SEV_SYNC_ACK)) {
            /* The server accepted and closed, and its FIN overtook its
             * SYNC_ACK on another connection of the pipe: it is taken
             * when the SYNC_ACK comes. */
            s->fin_early = 1;
            s->fin_early_seq = f->seq;
            return;
        }
        on_fin(s, f->seq);
        return;
    case HAUL__F_FIN_ACK:
        /* Only a FIN we sent can be confirmed. In APP_CLOSE_SESSION that is
         * one sent before a connection loss, and the output queue is then
         * empty; with messages still queued, no FIN has gone. */
        if (s->state == CE_SS_SENDING_FIN ||
            (s->state == CE_SS_APP_CLOSE_SESSION && haul__list_empty(&s->outq))) {
            if (s->state == CE_SS_APP_CLOSE_SESSION)
                haul__session_enter(s, SEV_FIN_TAKEN);
            haul__session_enter(s, SEV_FIN_ACK);
            s->pending &= ~(unsigned)HAUL__PEND_FIN;
            closed_in_order(s, 0);
        }
        return;
    case HAUL__F_ABORT:
        /* The peer's reason stays its own, but for one: a peer that does
         * not know the session restarted or ended it already, and the
         * application should know that it was not an ordinary abort. */
        haul__session_fail(s, f->aux == HAUL_ENOSESSION ? HAUL_ENOSESSION : HAUL_EABORTED, 0);
        return;
    default:
        return;
    }
}

/* ---- chunks from the peer ------------------------------------------------------- */

static int may_receive(const haul_session *s)
{
    if (s->peer_done)
        return 0;
    switch (s->state) {
    case CE_SS_SESSION_READY:
    case CE_SS_APP_CONFIRM_ACCEPT_ACK:
    case CE_SS_SENDING_APP_SESSION_ACK:
    case CE_SS_APP_CLOSE_SESSION:
    case CE_SS_SENDING_FIN:
    /* The server's messages may overtake its SYNC-ACK on another
     * connection of the pipe. */
    case CE_SS_SENDING_SYNC:
    case CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE:
    case CE_SS_WAITING_ACK:
        return 1;
    default:
        return 0;
    }
}

/*
 * A CHUNK header arrived. Returns 0 with *mp set (a reference for the
 * connection) when its payload is to be read into *mp at f->offset, 1 when
 * the payload is to be discarded, or HAUL_EPROTO when the frame is
 * malformed for this pipe.
 */
int haul__session_chunk_begin(haul__pipe *pipe, haul__conn *conn, const haul__frame *f,
                              haul_message **mp, uint32_t *indexp)
{
    uint32_t chunk = pipe->peer_chunk;
    if (f->offset % chunk != 0)
        return HAUL_EPROTO;
    uint64_t expect = f->total - f->offset < chunk ? f->total - f->offset : chunk;
    if (f->len != expect || (f->total > 0 && f->offset == f->total))
        return HAUL_EPROTO;
    haul_session *s = haul__session_find(pipe, f->session);
    if (s == NULL) {
        answer_ended(pipe, f);
        return 1;
    }
    if (s->state == CE_SS_SESSION_CLOSED && s->abort_code != 0) {
        /* We aborted it and the peer goes on: our ABORT was lost. */
        haul__session_want(s, HAUL__PEND_ABORT);
        return 1;
    }
    if (!may_receive(s))
        return 1;
    if (s->fin_taken && f->seq >= s->fin_seq) {
        /* Our FIN said we would not deliver it: the peer fails it. */
        return 1;
    }
    if (f->seq < s->rcv_next) {
        /* Delivered already; our acknowledgement was lost with a
         * connection. Say it again. */
        pipe->engine->stats.duplicates++;
        haul__session_want(s, HAUL__PEND_ACK);
        return 1;
    }
    if (f->seq >= s->rcv_right) {
        haul__log(pipe->engine, HAUL_LOG_WARN,
                  "session %u: message %llu beyond the window; aborting the session", s->id,
                  (unsigned long long)f->seq);
        haul__session_fail(s, HAUL_EPROTO, 1);
        return 1;
    }
    if (f->total > s->peer_max_message) {
        /* The window was granted in messages of the size the peer
         * announced; a larger one would break the input queue's bound. */
        haul__log(pipe->engine, HAUL_LOG_WARN,
                  "session %u: message of %llu bytes over the announced %llu; aborting", s->id,
                  (unsigned long long)f->total, (unsigned long long)s->peer_max_message);
        haul__session_fail(s, HAUL_EPROTO, 1);
        return 1;
    }
    haul_message *m = NULL;
    haul__list *p;
    haul__list_each(p, &s->partial)
    {
        haul_message *x = HAUL__CONTAINER(p, haul_message, link);
        if (x->seq == f->seq) {
            m = x;
            break;
        }
    }
    if (m == NULL) {
        haul__budget *b = pipe->engine->budget;
        m = haul__message_new(f->total, b == NULL);
        if (m != NULL && b != NULL && f->total > 0) {
            /* A body from the budget's pool (core/budget.c). */
            m->data = haul__budget_body(b, f->total, &m->body_cap);
            if (m->data == NULL) {
                haul__message_unref(m);
                m = NULL;
            }
        }
        if (m == NULL) {
            haul__log(pipe->engine, HAUL_LOG_ERROR, "session %u: no memory for a message", s->id);
            haul__session_fail(s, HAUL_ENOMEM, 1);
            return 1;
        }
        m->seq = f->seq;
        m->session = s;
        haul__message_plan(m, chunk);
        m->rx_state = calloc(m->nchunks, 1);
        m->rx_writing = calloc(m->nchunks, 1);
        if (m->rx_state == NULL || m->rx_writing == NULL) {
            haul__message_unref(m);
            haul__session_fail(s, HAUL_ENOMEM, 1);
            return 1;
        }
        haul__list_add_tail(&s->partial, &m->link);
        s->held += queue_cost(m->len);
        if (b != NULL)
            haul__mem_rx_begin(s, m, queue_cost(m->len));
    } else if (m->len != f->total || m->chunk != chunk) {
        return HAUL_EPROTO;
    }
    uint32_t index = (uint32_t)(f->offset / chunk);
    if (m->rx_state[index] == HAUL__RX_DONE) {
        pipe->engine->stats.duplicates++;
        return 1;
    }
    /* Another connection may be reading a copy of the chunk: the first
     * one sent, on a connection that the sender saw break, while this is
     * the copy it sent again; or the other way round, when the first copy
     * was still in transit. Which of them will complete cannot be known
     * here, so both are read, into the same bytes, and the first to
     * complete wins. The connections may run on different threads: the
     * copies take turns at the bytes under the engine's mutex, and wait
     * for a direct read that began before the chunk was shared
     * (haul_message.rx_writing). */
    m->rx_state[index] = m->rx_state[index] == HAUL__RX_NONE ? HAUL__RX_CLAIMED : HAUL__RX_SHARED;
    m->refs++;
    *mp = m;
    *indexp = index;
    return 0;
}

/* Delivers, in order, every whole message that waits for its turn. */
static void deliver(haul_session *s)
{
    int delivered = 0;
    for (;;) {
        haul_message *next = NULL;
        haul__list *p;
        haul__list_each(p, &s->partial)
        {
            haul_message *x = HAUL__CONTAINER(p, haul_message, link);
            if (x->seq == s->rcv_next && x->rx_done == x->nchunks) {
                next = x;
                break;
            }
        }
        if (next == NULL || (s->fin_taken && next->seq >= s->fin_seq))
            break;
        haul__list_del(&next->link);
        haul__list_add_tail(&s->inq, &next->link);
        s->rcv_next++;
        s->rx_count += next->len;
        s->engine->stats.messages_received++;
        post(s, HAUL_EV_MESSAGE_RECEIVED, 0, 0, next->seq, 0, 0);
        delivered = 1;
    }
    if (delivered)
        haul__session_want(s, HAUL__PEND_ACK);
}

/* The payload of chunk `index` of m is all there (424, 432). The
 * connection that read it no longer counts as its reader. */
void haul__session_chunk_done(haul_session *s, haul_message *m, uint32_t index)
{
    if (m->rx_state[index] == HAUL__RX_DONE)
        return;
    /* Other copies still being read are dropped: once the message is
     * delivered the application owns its bytes. */
    if (m->rx_state[index] == HAUL__RX_SHARED && s != NULL && s->pipe != NULL)
        haul__pipe_readers(s->pipe, m, index, 1);
    m->rx_state[index] = HAUL__RX_DONE;
    m->rx_done++;
    if (s != NULL && s->pipe != NULL) {
        uint64_t at = (uint64_t)index * m->chunk;
        s->pipe->goodput_bytes += m->len - at < m->chunk ? m->len - at : m->chunk;
    }
    if (s != NULL && m->rx_done == m->nchunks)
        deliver(s);
}

/* A connection ended before it read all of its copy of a chunk (the caller
 * no longer counts as its reader). Only its own claim goes: a copy that
 * another connection is still reading may complete the chunk, and a chunk
 * that nobody reads any more is free for the copy the sender sends again
 * when it sees the connections that carried it break. */
void haul__session_chunk_abandon(haul__pipe *pipe, haul_message *m, uint32_t index)
{
    if (m->rx_state[index] == HAUL__RX_CLAIMED) {
        m->rx_state[index] = HAUL__RX_NONE;
    } else if (m->rx_state[index] == HAUL__RX_SHARED) {
        unsigned left = pipe ? haul__pipe_readers(pipe, m, index, 0) : 0;
        m->rx_state[index] = left == 0   ? HAUL__RX_NONE
                             : left == 1 ? HAUL__RX_CLAIMED
                                         : HAUL__RX_SHARED;
    }
}

/* ---- control frames to send ------------------------------------------------------ */

/*
 * Fills f (and *payload) with the next control frame the session has to
 * send, making the transitions that taking it implies. Returns 0 when
 * there was one, -1 when none is pending.
 */
int haul__session_take_ctl(haul_session *s, haul__frame *f, const uint8_t **payload, uint32_t *plen)
{
    memset(f, 0, sizeof(*f));
    f->version = HAUL_PROTOCOL_VERSION;
    f->session = s->id;
    *payload = NULL;
    *plen = 0;
    haul_engine *e = s->engine;

    if (s->pending & HAUL__PEND_ABORT) {
        /* Counted until written: the session stays in the table, so
         * that a lost connection can queue the ABORT again. */
        s->pending &= ~(unsigned)HAUL__PEND_ABORT;
        s->abort_inflight++;
        f->type = HAUL__F_ABORT;
        f->aux = s->abort_code;
        return 0;
    }
    if (s->pending & HAUL__PEND_SYNC_NAK) {
        s->pending &= ~(unsigned)HAUL__PEND_SYNC_NAK;
        f->type = HAUL__F_SYNC_NAK;
        f->aux = s->nak_reason;
        return 0;
    }
    if (s->pending & HAUL__PEND_SYNC) {
        s->pending &= ~(unsigned)HAUL__PEND_SYNC;
        if (s->state != CE_SS_SEND_SYNC)
            return haul__session_take_ctl(s, f, payload, plen);
        /* SYNC: the principal and the context (docs/protocol.md). The
         * encoded form lives in the connection's item until written. */
        haul__session_enter(s, SEV_SYNC_TAKEN);
        f->type = HAUL__F_SYNC;
        f->offset = s->max_message;
        f->total = s->input_queue;
        f->len = (uint32_t)haul__sync_size(s->principal, s->context_len);
        return 0;
    }
    if (s->pending & HAUL__PEND_SYNC_ACK) {
        s->pending &= ~(unsigned)HAUL__PEND_SYNC_ACK;
        if (s->state == CE_SS_APP_CONFIRM_ACCEPT_ACK)
            haul__session_enter(s, SEV_ACCEPT_TAKEN);
        f->type = HAUL__F_SYNC_ACK;
        f->offset = s->max_message;
        f->total = s->input_queue;
        f->aux = haul__session_window(s);
        if (s->rcv_next + f->aux > s->rcv_right)
            s->rcv_right = s->rcv_next + f->aux;
        return 0;
    }
    if (s->pending & HAUL__PEND_ACK) {
        /* One acknowledgement per delivered message, as in Fig. 4 (426,
         * 436): each carries the WndSize counted from the message it
         * acknowledges. With nothing new to acknowledge, the frame is a
         * window update for the last one. */
        if (s->ack_sent < s->rcv_next)
            s->ack_sent++;
        if (s->ack_sent >= s->rcv_next)
            s->pending &= ~(unsigned)HAUL__PEND_ACK;
        uint64_t right = s->rcv_next + haul__session_window(s);
        if (right > s->rcv_right)
            s->rcv_right = right;
        f->type = HAUL__F_ACK;
        f->seq = s->ack_sent;
        f->aux = (uint32_t)(right - s->ack_sent);
        s->wnd_sent = f->aux;
        return 0;
    }
    if (s->pending & HAUL__PEND_FIN) {
        s->pending &= ~(unsigned)HAUL__PEND_FIN;
        /* In SENDING_FIN, a FIN said again (section 9.3); otherwise only
         * APP_CLOSE_SESSION sends one. */
        if (s->state != CE_SS_APP_CLOSE_SESSION && s->state != CE_SS_SENDING_FIN)
            return haul__session_take_ctl(s, f, payload, plen);
        if (s->state == CE_SS_APP_CLOSE_SESSION)
            haul__session_enter(s, SEV_FIN_TAKEN);
        f->type = HAUL__F_FIN;
        /* The FIN says which of the peer's messages we delivered, so
         * that the peer fails only the others; from now on we deliver
         * none beyond them, and a FIN sent again says the same. */
        if (!s->fin_taken) {
            s->fin_taken = 1;
            s->fin_seq = s->rcv_next;
        }
        f->seq = s->fin_seq;
        return 0;
    }
    if (s->pending & HAUL__PEND_FIN_ACK) {
        s->pending &= ~(unsigned)HAUL__PEND_FIN_ACK;
        f->type = HAUL__F_FIN_ACK;
        return 0;
    }
    (void)e;
    return -1;
}

/* Writes the SYNC payload for the frame take_ctl prepared. */
void haul__session_sync_payload(const haul_session *s, uint8_t *out)
{
    haul__sync_encode(s->principal, s->context, s->context_len, out);
}

/* The write carrying a control frame was issued, or completed. */
void haul__session_ctl_posted(haul_session *s, int type)
{
    if (type == HAUL__F_SYNC && s->state == CE_SS_SENDING_SYNC)
        haul__session_enter(s, SEV_SYNC_POSTED);
}

void haul__session_ctl_written(haul_session *s, int type)
{
    if (type == HAUL__F_SYNC && s->state == CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE) {
        haul__session_enter(s, SEV_SYNC_WRITTEN);
        s->sync_written_at = haul__now_ms();
        if (s->sync_repeat_ms == 0)
            s->sync_repeat_ms = HAUL__SYNC_REPEAT_MS;
    } else if (type == HAUL__F_FIN && s->state == CE_SS_SENDING_FIN) {
        s->fin_written_at = haul__now_ms();
        if (s->fin_repeat_ms == 0)
            s->fin_repeat_ms = HAUL__SYNC_REPEAT_MS;
    } else if (type == HAUL__F_SYNC_ACK && s->state == CE_SS_SENDING_APP_SESSION_ACK)
        haul__session_enter(s, SEV_ACCEPT_WRITTEN);
    else if (type == HAUL__F_ABORT)
        s->abort_inflight--;
    session_retire(s);
}

/* The connection that had taken a control frame into its batch closed
 * before writing it. An ABORT goes again on another connection; the
 * other frames are asked for again by the peer's repeats or by
 * haul__session_conn_lost(). */
void haul__session_ctl_lost(haul_session *s, int type)
{
    if (type != HAUL__F_ABORT)
        return;
    s->abort_inflight--;
    if (s->in_table && s->state == CE_SS_SESSION_CLOSED)
        haul__session_want(s, HAUL__PEND_ABORT);
    session_retire(s);
}

/* The pipe has had no connection for the message timeout (pipe.c): the
 * control frames a closed session still owes (an ABORT, a SYNC_NAK, a
 * FIN_ACK) can no longer reach a peer that is gone. The session stops
 * waiting for them and leaves the table, so that such a peer holds
 * neither a session, counted against max_sessions, nor its pipe. */
void haul__session_give_up_ctl(haul_session *s)
{
    if (s->state != CE_SS_SESSION_CLOSED || s->abort_inflight != 0)
        return;
    s->pending = 0;
    haul__list_del(&s->ctl_link);
    session_retire(s);
}

/* A connection of the pipe broke: what it may have swallowed is sent
 * again; the peer answers repeats idempotently. Returns nonzero if the
 * session has chunks to send again. */
int haul__session_conn_lost(haul_session *s, uint32_t serial)
{
    switch (s->state) {
    case CE_SS_SENDING_SYNC:
    case CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE:
    case CE_SS_WAITING_ACK:
        haul__session_enter(s, SEV_SYNC_LOST);
        haul__session_want(s, HAUL__PEND_SYNC);
        break;
    case CE_SS_SENDING_APP_SESSION_ACK:
        haul__session_enter(s, SEV_ACCEPT_LOST);
        haul__session_want(s, HAUL__PEND_SYNC_ACK);
        break;
    case CE_SS_SENDING_FIN:
        haul__session_enter(s, SEV_FIN_LOST);
        haul__session_maybe_fin(s);
        break;
    case CE_SS_SESSION_CLOSED:
        return 0;
    default:
        break;
    }
    /* The last ACK may have been lost. A server that has not yet written
     * its SYNC_ACK whole (back in APP_CONFIRM_ACCEPT_ACK) may have
     * delivered messages already: the client sends as soon as it reads
     * the SYNC_ACK, which may be while the rest of its batch is still
     * being written. */
    if (s->state == CE_SS_SESSION_READY || s->state == CE_SS_APP_CLOSE_SESSION ||
        (s->state == CE_SS_APP_CONFIRM_ACCEPT_ACK && s->rcv_next > 0))
        haul__session_want(s, HAUL__PEND_ACK);

    int again = 0;
    int64_t now = haul__now_ms();
    haul__list *p;
    haul__list_each(p, &s->outq)
    {
        haul_message *m = HAUL__CONTAINER(p, haul_message, link);
        int lost = 0;
        for (uint32_t i = 0; i < m->nchunks; i++) {
            if (m->carrier[i] == serial) {
                m->carrier[i] = 0;
                m->unsent++;
                if (i < m->next_chunk)
                    m->next_chunk = i;
                s->engine->stats.chunks_resent++;
                lost = 1;
            }
        }
        /* A round of retransmission begins with the first loss that sends
         * chunks of the message back; connections that break before any
         * chunk of it was written again belong to the same round, as one
         * fault often breaks several at once, and so do the losses that
         * come within HAUL__ROUND_COALESCE_MS of the round's beginning
         * (section 9.2). */
        if (lost && (m->resending || now - m->round_at < HAUL__ROUND_COALESCE_MS))
            again = 1;
        else if (lost) {
            again = 1;
            m->resending = 1;
            m->round_at = now;
            if (++m->attempts >= s->engine->config.max_attempts) {
                haul__log(s->engine, HAUL_LOG_WARN,
                          "session %u: message %llu failed after %u attempts", s->id,
                          (unsigned long long)m->seq, m->attempts);
                haul__session_fail(s, HAUL_EATTEMPTS, 1);
                return 0;
            }
        }
    }
    return again;
}

/* Deadlines: the message at the head of the output queue, the opening
 * handshake, the FIN. */
int64_t haul__session_sweep(haul_session *s, int64_t now)
{
    if (s->state == CE_SS_SESSION_CLOSED)
        return HAUL__NEVER;
    int64_t next = rate_sample(s, now);
    /* The oldest message has timeout_ms from when it was queued or from
     * the session's last progress, whichever is later: a slow link whose
     * bytes keep moving is not a dead one, however long a large message
     * takes to cross it. Progress is an acknowledgement, a chunk written
     * whole, or bytes leaving the send queues of the connections that
     * carry the session's chunks, watched at every sweep that finds no
     * other progress in the same millisecond (a chunk of a large message
     * may take long to leave a full socket buffer). */
    haul__list *first = haul__list_first(&s->outq);
    /* A session its rate limit holds back is paced by the user: its
     * messages wait for tokens, not for a peer that may be gone. */
    if (first && s->rate_held)
        s->progress = now;
    if (first) {
        int64_t queued = HAUL__CONTAINER(first, haul_message, link)->deadline - s->timeout_ms;
        int64_t since = s->progress > queued ? s->progress : queued;
        /* The send queues are read only once the session has been
         * without other progress for a quarter of its timeout: on a busy
         * pipe, never. From then on they are watched at every sweep. */
        int64_t watch_at = since + (int64_t)s->timeout_ms / 4;
        if (now >= watch_at && s->pipe) {
            int64_t moved = haul__pipe_queue_moved(s->pipe, s, now);
            if (moved > since)
                since = moved;
            watch_at = now;
        }
        if (now - since >= (int64_t)s->timeout_ms) {
            haul__log(s->engine, HAUL_LOG_WARN, "session %u: a message made no progress for %u ms",
                      s->id, s->timeout_ms);
            haul__session_fail(s, HAUL_ETIMEDOUT, 1);
            return HAUL__NEVER;
        }
        next = earlier(next, earlier(watch_at, since + (int64_t)s->timeout_ms));
        if (s->pipe)
            next = earlier(next, haul__pipe_hedge(s->pipe, s, now));
    }
    if (!s->server && s->open_deadline && s->state != CE_SS_SESSION_READY &&
        s->state != CE_SS_APP_CLOSE_SESSION && s->state != CE_SS_SENDING_FIN) {
        if (s->open_deadline <= now) {
            haul__session_fail(s, HAUL_ETIMEDOUT, 1);
            return HAUL__NEVER;
        }
        next = earlier(next, s->open_deadline);
    }
    /* The SYNC went, and no answer came: the answer may be lost (the
     * server wrote it on a connection whose way back the network cut
     * after our end of it had closed). The server answers a repeated
     * SYNC as it did the first, and ignores it while its application
     * decides. */
    if (!s->server && s->state == CE_SS_WAITING_ACK &&
        now - s->sync_written_at >= (int64_t)s->sync_repeat_ms) {
        haul__log(s->engine, HAUL_LOG_DEBUG, "session %u: no answer to its SYNC in %u ms; again",
                  s->id, s->sync_repeat_ms);
        s->sync_repeat_ms = s->sync_repeat_ms * 2 > HAUL__SYNC_REPEAT_MAX_MS
                                ? HAUL__SYNC_REPEAT_MAX_MS
                                : s->sync_repeat_ms * 2;
        haul__session_enter(s, SEV_SYNC_UNANSWERED);
        haul__session_want(s, HAUL__PEND_SYNC);
    }
    if (!s->server && s->state == CE_SS_WAITING_ACK)
        next = earlier(next, s->sync_written_at + (int64_t)s->sync_repeat_ms);
    /* Likewise a FIN whose FIN_ACK does not come: the peer answers a
     * repeated FIN, also once the session has left its table (section
     * 9.3). */
    if (s->state == CE_SS_SENDING_FIN && s->fin_written_at &&
        now - s->fin_written_at >= (int64_t)s->fin_repeat_ms) {
        haul__log(s->engine, HAUL_LOG_DEBUG, "session %u: no answer to its FIN in %u ms; again",
                  s->id, s->fin_repeat_ms);
        s->fin_repeat_ms = s->fin_repeat_ms * 2 > HAUL__SYNC_REPEAT_MAX_MS
                               ? HAUL__SYNC_REPEAT_MAX_MS
                               : s->fin_repeat_ms * 2;
        s->fin_written_at = 0;
        haul__session_want(s, HAUL__PEND_FIN);
    }
    if (s->state == CE_SS_SENDING_FIN && s->fin_written_at)
        next = earlier(next, s->fin_written_at + (int64_t)s->fin_repeat_ms);
    if ((s->state == CE_SS_APP_CLOSE_SESSION || s->state == CE_SS_SENDING_FIN) &&
        haul__list_empty(&s->outq)) {
        if (s->close_deadline <= now) {
            haul__session_fail(s, HAUL_ETIMEDOUT, 1);
            return HAUL__NEVER;
        }
        next = earlier(next, s->close_deadline);
    }
    return next;
}
