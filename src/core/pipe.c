/*
 * pipe.c - pipes (122) and their dispatcher (118).
 *
 * A pipe is the bundle of connections between this engine and one
 * destination, shared by every session to it. The dispatcher is a pull:
 * whenever a connection of the pipe can write, it takes the next frames
 * from the pipe - control frames first, then chunks of the sessions'
 * messages in turn - so that no connection that could carry data sits
 * idle while a session has something to send (Fig. 2).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/engine.h"

static haul__pipe *pipe_alloc(haul_engine *e)
{
    haul__pipe *pipe = calloc(1, sizeof(*pipe));
    if (pipe == NULL)
        return NULL;
    pipe->engine = e;
    pipe->next_session_id = 1;
    haul__list_init(&pipe->sessions);
    for (int i = 0; i < HAUL__BUCKETS; i++)
        haul__list_init(&pipe->buckets[i]);
    haul__list_init(&pipe->ctl);
    haul__list_init(&pipe->dispatch);
    haul__list_init(&pipe->idle);
    haul__list_init(&pipe->members);
    pipe->loop = &e->loops[e->next_loop++ % e->nloops];
    pipe->chunk = e->config.chunk_size;
    haul__list_add_tail(&e->pipes, &pipe->link);
    return pipe;
}

/* Smallest chunk a pipe of many connections is cut into: below it the
 * cost of a frame per chunk would show. */
#define PIPE_CHUNK_MIN (16u << 10)

/*
 * The chunk size of a client pipe. Every connection of the pipe may hold
 * a chunk on its way while the others deliver theirs, and each moves at
 * about 1/connections of the pipe's rate; a message is acknowledged once
 * its last chunk arrives, and its session's window moves no sooner. So
 * that the chunks in transit on every connection at once stay a fraction
 * of the output queue (a quarter), a pipe of many connections cuts
 * smaller chunks: 256 KiB up to 64 connections with the default queue of
 * 64 MiB, 16 KiB at 1000.
 */
static uint32_t pipe_chunk(const haul_engine_config *cfg, uint64_t queue, unsigned conns)
{
    uint64_t fit = queue / 4 / (conns ? conns : 1);
    uint32_t chunk = cfg->chunk_size;
    while (chunk > PIPE_CHUNK_MIN && chunk > fit)
        chunk /= 2;
    return chunk < cfg->chunk_size ? chunk : cfg->chunk_size;
}

static int pipe_dial(haul__pipe *pipe, unsigned index);

/*
 * Slot `index` of a client pipe that has never had a joined connection
 * failed to dial or to finish its handshake, with `error`. Returns 1 when
 * the pipe should give up and refuse its sessions at once, so that a
 * server that is not there, or that refuses this client, is reported in
 * milliseconds rather than at the open deadline: every slot has failed at
 * least once (a slot that fails again counts once), and the failures are
 * conclusive. A refusal, another protocol version or a TLS failure is. A
 * reset or a handshake deadline is conclusive only when it goes on for
 * redial_max_ms: it may be the load of the moment, a server that evicts
 * handshakes beyond its max_handshakes while a burst of connections
 * arrives (the first dials of a pipe of 1000 connections make one), and
 * the slots redial meanwhile. A server that resets every handshake, one
 * that refuses a certificate without a TLS alert say, is still reported
 * within that time.
 */
static int first_dials_failed(haul__pipe *pipe, unsigned index, int error)
{
    if (pipe->ever_joined)
        return 0;
    int64_t now = haul__now_ms();
    if (pipe->first_failure_at == 0)
        pipe->first_failure_at = now;
    if (!pipe->slot_failed[index]) {
        pipe->slot_failed[index] = 1;
        pipe->dials_failed++;
    }
    if (pipe->dials_failed < pipe->nconns)
        return 0;
    if (error != HAUL_ECONNRESET && error != HAUL_ETIMEDOUT)
        return 1;
    return now - pipe->first_failure_at >= (int64_t)pipe->engine->config.redial_max_ms;
}

/* Finds the client pipe to a destination with the same TLS identity
 * (tls_key, NULL for plain TCP): a TLS session never shares a plain pipe,
 * nor one that authenticates with other files. */
haul__pipe *haul__pipe_find(haul_engine *e, const char *destination, const char *tls_key)
{
    haul__list *p;
    haul__list_each(p, &e->pipes)
    {
        haul__pipe *pipe = HAUL__CONTAINER(p, haul__pipe, link);
        if (!pipe->server && !pipe->failed && strcmp(pipe->destination, destination) == 0 &&
            (pipe->tls_key == NULL) == (tls_key == NULL) &&
            (tls_key == NULL || strcmp(pipe->tls_key, tls_key) == 0)) {
            pipe->doomed = 0;
            return pipe;
        }
    }
    return NULL;
}

/* Makes a client pipe and starts dialling all its connections at once
 * (an automatic pipe: those it starts with). It takes tls_ctx (NULL:
 * plain TCP) in every case, and copies tls_key. */
haul__pipe *haul__pipe_client(haul_engine *e, const haul_session_config *c,
                              const struct sockaddr_storage *ss, socklen_t len,
                              struct ssl_ctx_st *tls_ctx, const char *tls_key, int *err)
{
    int automatic = c->connections == HAUL_CONNECTIONS_AUTO;
    unsigned cap = c->connections;
    if (automatic) {
        /* The slots are sized by the cap, which the engine's own limit
         * bounds: an automatic pipe never asks for more than it allows. */
        cap = c->max_connections ? c->max_connections : HAUL_AUTO_MAX_CONNECTIONS;
        if (cap > e->config.max_connections)
            cap = e->config.max_connections;
    }
    haul__auto controller;
    unsigned first = cap;
    if (automatic)
        first = haul__auto_init(&controller, cap, ss->ss_family == AF_UNIX, haul__now_ms());
    if (e->nconns + first > e->config.max_connections) {
        haul__tls_ctx_free(tls_ctx);
        *err = HAUL_ELIMIT;
        return NULL;
    }
    haul__pipe *pipe = pipe_alloc(e);
    if (pipe == NULL) {
        haul__tls_ctx_free(tls_ctx);
        *err = HAUL_ENOMEM;
        return NULL;
    }
    pipe->tls_ctx = tls_ctx;
    if (tls_key && (pipe->tls_key = strdup(tls_key)) == NULL) {
        haul__pipe_destroy(pipe);
        *err = HAUL_ENOMEM;
        return NULL;
    }
    pipe->destination = strdup(c->destination);
    pipe->conns = calloc(cap, sizeof(*pipe->conns));
    pipe->redial_at = calloc(cap, sizeof(*pipe->redial_at));
    pipe->backoff = calloc(cap, sizeof(*pipe->backoff));
    pipe->slot_failed = calloc(cap, sizeof(*pipe->slot_failed));
    if (pipe->destination == NULL || pipe->conns == NULL || pipe->redial_at == NULL ||
        pipe->backoff == NULL || pipe->slot_failed == NULL) {
        haul__pipe_destroy(pipe);
        *err = HAUL_ENOMEM;
        return NULL;
    }
    pipe->addr = *ss;
    pipe->addrlen = len;
    pipe->cap = cap;
    pipe->nconns = first;
    pipe->active = first;
    /* Chunks are cut for the most connections the pipe may have: its
     * size is fixed when it is made. */
    pipe->chunk = pipe_chunk(&e->config, c->output_queue, cap);
    if (automatic) {
        pipe->automatic = 1;
        pipe->autoscale = controller;
        if (e->debug_auto_local_us)
            pipe->autoscale.local_rtt_us = e->debug_auto_local_us;
        if (e->debug_auto_long_us)
            pipe->autoscale.long_rtt_us = e->debug_auto_long_us;
        haul__log(e, HAUL_LOG_INFO, "pipe %s: %u connections: %s (at most %u)", pipe->destination,
                  first, controller.why, cap);
    }
    if (getrandom(&pipe->id, sizeof(pipe->id), 0) != sizeof(pipe->id))
        pipe->id = (uint64_t)haul__now_ms() ^ ((uint64_t)getpid() << 32);
    for (unsigned i = 0; i < pipe->nconns; i++) {
        pipe->backoff[i] = e->config.redial_min_ms;
        pipe_dial(pipe, i);
    }
    return pipe;
}

haul__pipe *haul__pipe_server(haul_engine *e, uint64_t id, const haul_listen_config *lconf)
{
    haul__list *p;
    haul__list_each(p, &e->pipes)
    {
        haul__pipe *pipe = HAUL__CONTAINER(p, haul__pipe, link);
        if (pipe->server && pipe->id == id)
            return pipe;
    }
    haul__pipe *pipe = pipe_alloc(e);
    if (pipe == NULL)
        return NULL;
    pipe->server = 1;
    pipe->id = id;
    pipe->lconf = *lconf;
    return pipe;
}

/* ---- connections come and go ------------------------------------------------ */

/* The pipe could not be opened, or has had no connection for the message
 * timeout: its sessions fail, and the control frames that closed ones
 * still owe the peer are given up, since no connection may carry them. */
static void fail_sessions(haul__pipe *pipe, int error)
{
    pipe->fail_error = error;
    haul__list *p, *tmp;
    haul__list_each_safe(p, tmp, &pipe->sessions)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, pipe_link);
        if (s->state == CE_SS_SESSION_CLOSED)
            haul__session_give_up_ctl(s);
        else
            haul__session_fail(s, error, 0);
    }
}

/* Dials slot `index`. Returns 0, or the error of a dial that failed at
 * once (the slot is then due to be dialled again after its backoff). */
static int pipe_dial(haul__pipe *pipe, unsigned index)
{
    haul_engine *e = pipe->engine;
    int fd;
    int rc = haul__sock_dial(&pipe->addr, pipe->addrlen, &fd);
    haul__conn *c = rc == 0 ? haul__conn_new(e, fd, 0, pipe, index) : NULL;
    if (c == NULL) {
        if (rc == 0)
            close(fd);
        haul__log(e, HAUL_LOG_INFO, "dial %s failed: %s", pipe->destination,
                  haul_strerror(rc ? rc : HAUL_ENOMEM));
        pipe->redial_at[index] = haul__now_ms() + pipe->backoff[index];
        unsigned next = pipe->backoff[index] * 2;
        pipe->backoff[index] = next > e->config.redial_max_ms ? e->config.redial_max_ms : next;
        int error = rc ? rc : HAUL_ENOMEM;
        if (first_dials_failed(pipe, index, error)) {
            pipe->failed = 1;
            fail_sessions(pipe, error);
        }
        return error;
    }
    pipe->conns[index] = c;
    pipe->redial_at[index] = 0;
    c->tls_ctx = pipe->tls_ctx;
    haul__conn_start(c, 1);
    return 0;
}

/*
 * Tells every session of the pipe that has not had its final event that
 * the pipe went down or came back (HAUL_EV_PIPE_DOWN, HAUL_EV_PIPE_UP):
 * informational events, which let an application (hauld) learn that its
 * peer is gone without polling statistics. They come in pairs: a session
 * made while the pipe was down hears of it only when it opens. An event
 * the completion queue had no room for leaves the session where it was,
 * and the sweep tries again (pipe_events_owed), so that the pairs hold
 * and the application learns of the pipe's state late rather than never.
 */
static void post_pipe_event(haul__pipe *pipe, haul_event_type type, int error)
{
    if (pipe->engine->stopping)
        return;
    int down = type == HAUL_EV_PIPE_DOWN;
    haul__list *p;
    haul__list_each(p, &pipe->sessions)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, pipe_link);
        if (s->app_freed || s->state == CE_SS_SESSION_CLOSED || s->pipe_down == down)
            continue;
        haul_event ev = {.type = type, .error = error, .session = s};
        if (haul__post(pipe->engine, &ev) == 0)
            s->pipe_down = down;
        else
            pipe->events_owed = 1;
    }
}

/* The sweep: the pipe events that were dropped go now, as the pipe
 * stands. */
static void pipe_events_owed(haul__pipe *pipe)
{
    if (!pipe->events_owed)
        return;
    pipe->events_owed = 0;
    if (pipe->down)
        post_pipe_event(pipe, HAUL_EV_PIPE_DOWN, pipe->down_error);
    else
        post_pipe_event(pipe, HAUL_EV_PIPE_UP, 0);
}

void haul__pipe_conn_connected(haul__pipe *pipe, haul__conn *c)
{
    if (!pipe->automatic)
        return;
    /* The SYN crossed the path: its round trip is the least there is.
     * The automatic count reads it at once (haul__pipe_sweep) rather
     * than once a connection has joined, two round trips later. */
    uint32_t rtt = haul__sock_min_rtt(c->fd);
    if (rtt && (pipe->auto_min_rtt_us == 0 || rtt < pipe->auto_min_rtt_us)) {
        pipe->auto_min_rtt_us = rtt;
        haul__sweep_soon(pipe->engine);
    }
}

void haul__pipe_conn_joined(haul__pipe *pipe, haul__conn *c)
{
    if (pipe->down) {
        pipe->down = 0;
        post_pipe_event(pipe, HAUL_EV_PIPE_UP, 0);
    }
    pipe->joined++;
    pipe->ever_joined = 1;
    pipe->empty_since = 0;
    if (pipe->server)
        haul__list_add_tail(&pipe->members, &c->pipe_link);
    else
        pipe->backoff[c->index] = pipe->engine->config.redial_min_ms;
    /* Its round trip is known by now (the handshakes crossed it): long
     * links get a short kernel queue of unsent bytes (conn_backlog). */
    const haul_engine_config *cfg = &pipe->engine->config;
    c->backlog_set =
        haul__sock_backlog(c->fd, cfg->conn_backlog, cfg->backlog_min_rtt_us, &c->rtt_us);
    c->lowat = c->backlog_set ? cfg->conn_backlog : 0;
    if (c->rtt_us > pipe->rtt_us)
        pipe->rtt_us = c->rtt_us;
    haul__conn_wake(c);
}

/* A connection of the pipe is gone (mu held). What it carried and was not
 * acknowledged goes again on the others; a client dials it again. */
void haul__pipe_conn_lost(haul__pipe *pipe, haul__conn *c, int error)
{
    haul_engine *e = pipe->engine;
    int was_joined = c->state == HAUL__CONN_JOINED;
    /* A client connection lost in CONN_HELLO may have been joined by the
     * server (its HELLO_ACK was on the way), which may then have put
     * answers on it, a SYNC_ACK say, that are lost with it. The sessions
     * that wait for one ask again, as after the loss of a joined
     * connection; it carried none of their chunks. */
    int half_joined = !pipe->server && c->state == HAUL__CONN_HELLO;
    haul__list_del(&c->idle_link);
    haul__list_del(&c->pipe_link);
    if (was_joined) {
        pipe->joined--;
        e->stats.connections_lost++;
        if (pipe->joined == 0) {
            pipe->empty_since = haul__now_ms();
            pipe->down = 1;
            pipe->down_error = error;
            post_pipe_event(pipe, HAUL_EV_PIPE_DOWN, error);
        }
    }
    if (!pipe->server && pipe->conns[c->index] == c) {
        pipe->conns[c->index] = NULL;
        if (first_dials_failed(pipe, c->index, error)) {
            pipe->failed = 1;
            /* The reason of the last failure: refused, reset, timed out, or
             * a peer that speaks another version. */
            fail_sessions(pipe, error);
            return;
        }
        if (pipe->automatic && error == HAUL_ELIMIT && !pipe->auto_pinned) {
            /* The server refused a connection for its limit: the pipe
             * uses what it has, and gives up the slots beyond it. */
            unsigned have = pipe->joined - (was_joined ? 1 : 0);
            haul__auto_cap(&pipe->autoscale, have);
            haul__log(e, HAUL_LOG_INFO, "pipe %s: %u connections: %s", pipe->destination,
                      pipe->autoscale.count, "the server refused more");
            haul__pipe_resize(pipe, pipe->autoscale.count);
        }
        /* Slots an automatic pipe gave up (beyond its cap) stay empty. */
        int given_up = pipe->automatic && c->index >= pipe->autoscale.cap;
        if (!e->stopping && !pipe->failed && !pipe->doomed && !given_up) {
            pipe->redial_at[c->index] = haul__now_ms() + pipe->backoff[c->index];
            unsigned next = pipe->backoff[c->index] * 2;
            pipe->backoff[c->index] =
                next > e->config.redial_max_ms ? e->config.redial_max_ms : next;
        }
    }
    if (!was_joined && !half_joined)
        return;
    haul__list *p, *tmp;
    haul__list_each_safe(p, tmp, &pipe->sessions)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, pipe_link);
        if (haul__session_conn_lost(s, c->serial) && !haul__list_linked(&s->dispatch_link))
            haul__list_add_tail(&pipe->dispatch, &s->dispatch_link);
    }
    haul__pipe_kick(pipe, pipe->joined);
}

static int reads_chunk(const haul__conn *c, const haul_message *m, uint32_t index)
{
    return c && !c->dead && c->rx_state == HAUL__RXS_CHUNK && c->rx_msg == m &&
           c->rx_index == index;
}

/* The readers of a copy are dropped when another copy completed the chunk.
 * None of them is in the middle of a direct read into the chunk, though
 * the connections of a pipe run on several threads: no copy completes a
 * chunk while a direct read writes it (haul_message.rx_writing), and a
 * chunk read by more than one copy is never read directly. A dropped
 * reader finds its state changed when it next reads or parses, and
 * discards the rest of its copy; one that waited to copy its bytes in
 * goes on with that. */
static unsigned reader_found(haul__conn *c, int drop)
{
    if (drop) {
        haul_message *m = c->rx_msg;
        assert(!c->rx_writing);
        haul__conn_stop_waiting(c);
        haul__rx_enter(c, HAUL__RXEV_CHUNK_TAKEN);
        c->rx_msg = NULL;
        haul__message_unref(m);
    }
    return 1;
}

unsigned haul__pipe_readers(haul__pipe *pipe, haul_message *m, uint32_t index, int drop)
{
    unsigned n = 0;
    if (pipe->server) {
        haul__list *p;
        haul__list_each(p, &pipe->members)
        {
            haul__conn *c = HAUL__CONTAINER(p, haul__conn, pipe_link);
            if (reads_chunk(c, m, index))
                n += reader_found(c, drop);
        }
        return n;
    }
    for (unsigned i = 0; i < pipe->nconns; i++)
        if (reads_chunk(pipe->conns[i], m, index))
            n += reader_found(pipe->conns[i], drop);
    return n;
}

/* ---- sessions the pipe no longer holds -------------------------------------- */

/* Records how a session that leaves the table ended; the oldest record
 * makes room when the ring is full. */
void haul__pipe_remember(haul__pipe *pipe, uint32_t id, int how, uint32_t code)
{
    haul__ended *x = &pipe->ended[pipe->ended_next];
    x->id = id;
    x->how = how;
    x->code = code;
    pipe->ended_next = (pipe->ended_next + 1) % HAUL__ENDED_MAX;
    if (pipe->nended < HAUL__ENDED_MAX)
        pipe->nended++;
}

const haul__ended *haul__pipe_ended(const haul__pipe *pipe, uint32_t id)
{
    for (unsigned i = 0; i < pipe->nended; i++)
        if (pipe->ended[i].id == id)
            return &pipe->ended[i];
    return NULL;
}

/* Queues a control frame for a session the pipe does not hold. One per
 * session and type is enough: a repeat says nothing new. */
void haul__pipe_answer(haul__pipe *pipe, uint32_t id, int type, uint32_t aux)
{
    for (unsigned i = 0; i < pipe->nanswers; i++)
        if (pipe->answers[i].session == id && pipe->answers[i].type == type)
            return;
    if (pipe->nanswers == HAUL__ANSWERS_MAX) {
        haul__log(pipe->engine, HAUL_LOG_DEBUG, "session %u: no room to answer a late frame", id);
        return;
    }
    pipe->answers[pipe->nanswers++] = (haul__answer){.session = id, .type = type, .aux = aux};
    haul__pipe_kick(pipe, 1);
}

int haul__pipe_take_answer(haul__pipe *pipe, haul__frame *f)
{
    if (pipe->nanswers == 0)
        return -1;
    haul__answer a = pipe->answers[0];
    pipe->nanswers--;
    memmove(&pipe->answers[0], &pipe->answers[1], pipe->nanswers * sizeof(pipe->answers[0]));
    memset(f, 0, sizeof(*f));
    f->version = HAUL_PROTOCOL_VERSION;
    f->type = (uint8_t)a.type;
    f->session = a.session;
    f->aux = a.aux;
    return 0;
}

/* ---- the message timeout's watch on the send queues --------------------------- */

/* Reads of a send queue further apart than this do not tell when its
 * bytes moved, only that they did at some time: a change between them is
 * not counted. A few sweeps of the deadlines. */
#define QUEUE_WATCH_GAP_MS 100

/* When the connection's send queue was last seen to change, reading it
 * at most once per sweep. The queue shrinks as the peer acknowledges
 * bytes, and grows as the connection writes more: either is bytes on the
 * move, even while no chunk completes. */
static int64_t queue_moved(haul__conn *c, int64_t now)
{
    if (c->outq_at != now) {
        int queued = 0;
        if (ioctl(c->fd, SIOCOUTQ, &queued) == 0) {
            if (c->outq_at != 0 && now - c->outq_at <= QUEUE_WATCH_GAP_MS && queued != c->outq_seen)
                c->outq_moved = now;
            c->outq_seen = queued;
            c->outq_at = now;
        }
    }
    return c->outq_moved;
}

static int carries(const haul_session *s, const haul__conn *c)
{
    const haul__list *p;
    haul__list_each(p, &s->outq)
    {
        const haul_message *m = HAUL__CONTAINER(p, haul_message, link);
        if (m->seq >= s->right)
            break;
        for (uint32_t i = 0; i < m->nchunks; i++)
            if (m->carrier[i] == c->serial)
                return 1;
    }
    return 0;
}

static void watch(haul_session *s, haul__conn *c, int64_t now, int64_t *moved)
{
    if (c == NULL || c->dead || c->state != HAUL__CONN_JOINED || !carries(s, c))
        return;
    int64_t t = queue_moved(c, now);
    if (t > *moved)
        *moved = t;
}

int64_t haul__pipe_queue_moved(haul__pipe *pipe, haul_session *s, int64_t now)
{
    int64_t moved = 0;
    if (pipe->server) {
        haul__list *p;
        haul__list_each(p, &pipe->members)
        {
            watch(s, HAUL__CONTAINER(p, haul__conn, pipe_link), now, &moved);
        }
    } else {
        for (unsigned i = 0; i < pipe->nconns; i++)
            watch(s, pipe->conns[i], now, &moved);
    }
    return moved;
}

/* ---- sessions in the pipe --------------------------------------------------- */

void haul__pipe_add_session(haul__pipe *pipe, haul_session *s)
{
    s->pipe = pipe;
    s->refs++;
    s->in_table = 1;
    haul__list_add_tail(&pipe->sessions, &s->pipe_link);
    haul__list_add_tail(&pipe->buckets[s->id % HAUL__BUCKETS], &s->bucket_link);
    pipe->doomed = 0;
    haul__sweep_soon(pipe->engine);
}

void haul__pipe_remove_session(haul__pipe *pipe, haul_session *s)
{
    haul__list_del(&s->pipe_link);
    haul__list_del(&s->bucket_link);
    haul__list_del(&s->ctl_link);
    haul__list_del(&s->dispatch_link);
    s->in_table = 0;
    /* The pipe may have no session left, which the sweep ends. */
    haul__sweep_soon(pipe->engine);
}

/* A pipe without sessions is closed by the next sweep: a client's, at
 * once; a server's, when its client has gone too. */
void haul__pipe_maybe_free(haul__pipe *pipe)
{
    if (haul__list_empty(&pipe->sessions)) {
        pipe->doomed = 1;
        haul__sweep_soon(pipe->engine);
    }
}

/* ---- the dispatcher ------------------------------------------------------------ */

/* Wakes up to n idle connections of the pipe: there is work for them.
 * Parked ones are passed over, since they take no chunks: waking one
 * instead of a connection in use would leave the work waiting. */
void haul__pipe_kick(haul__pipe *pipe, unsigned n)
{
    if (n == 0)
        n = 1;
    haul__list *p, *tmp;
    haul__list_each_safe(p, tmp, &pipe->idle)
    {
        if (n == 0)
            break;
        haul__conn *c = HAUL__CONTAINER(p, haul__conn, idle_link);
        if (haul__conn_parked(c))
            continue;
        haul__list_del(&c->idle_link);
        haul__conn_wake(c);
        n--;
    }
}

/* The first chunk of m that connection c may take: one still to send,
 * other than a copy of a chunk that c itself was slow to deliver (c NULL:
 * any). Returns its index, or -1. */
static int64_t chunk_for(const haul_message *m, const haul__conn *c)
{
    for (uint32_t i = m->next_chunk; i < m->nchunks; i++)
        if (m->carrier[i] == 0 && (c == NULL || m->hedges == 0 || m->tx[i].avoid != c->serial))
            return i;
    return -1;
}

/* The oldest message of the window with a chunk that c may take, and
 * that chunk's index in *idx; NULL when there is none. *avoided is set
 * when chunks wait that only other connections may take. */
static haul_message *sendable(haul_session *s, const haul__conn *c, uint32_t *idx, int *avoided)
{
    haul__list *p;
    haul__list_each(p, &s->outq)
    {
        haul_message *m = HAUL__CONTAINER(p, haul_message, link);
        if (m->seq >= s->right)
            return NULL;
        if (m->unsent == 0)
            continue;
        int64_t i = chunk_for(m, c);
        if (i >= 0) {
            *idx = (uint32_t)i;
            return m;
        }
        *avoided = 1;
    }
    return NULL;
}

/*
 * The active set. Every connection of a long link that carries chunks
 * gets about 1/n of the bottleneck, so with n connections busy a chunk
 * takes n times as long to arrive as on one; a message is acknowledged
 * once its slowest chunk arrives, and the window must hold all of them
 * meanwhile. Past the number of connections that fills the link, each
 * one more only slows every message down (and, as they overflow the
 * bottleneck's queue together, adds losses). So a pipe of a long link
 * sends on at most active_max of its connections at once, the ones most
 * recently busy; the others wait, idle. Once per period (ACTIVE_PERIOD_MS,
 * or a connection's span if longer) active_max follows what the round
 * trips of the active connections say, against the least round trip any
 * of them saw (the path without queues):
 *
 *   - A standing queue (all period long, ACTIVE_STANDING_PCT of the path
 *     and ACTIVE_STANDING_MIN_US more): more connections send than the
 *     link needs, and on a slow link with a deep buffer what waits there
 *     is seconds of data that every message waits behind. The set is cut
 *     at once in the proportion of the path to the round trip (the part
 *     of what is in flight that moves), by half at most; its extra
 *     connections drain, and it does not grow for ACTIVE_HOLD_PERIODS
 *     periods, twice as long after each cut in a row (up to
 *     ACTIVE_HOLD_DOUBLINGS times), since on a link that one connection
 *     fills every probe for more builds the queue again.
 *   - A session's whole window on its way in most sweeps: the chunks in
 *     transit, spread over too many connections, arrive too slowly for
 *     the window; the set shrinks by an eighth.
 *   - Chunks waited while connections were turned away, and no queue at
 *     all (ACTIVE_QUEUEING_PCT at the period's worst): the active ones
 *     are full and the link is not; the set doubles, and the period
 *     after a step only watches, since the queue that more connections
 *     build shows a round trip or more later.
 *
 * It starts small (ACTIVE_START): connections that all leave slow start
 * at once overflow a slow link's buffer before any of this can see it.
 * Connections of short links (below backlog_min_rtt_us) are not bounded:
 * their queues drain in microseconds.
 */
#define ACTIVE_START 2u
#define ACTIVE_MIN 1u
#define ACTIVE_PERIOD_MS 200
#define ACTIVE_QUEUEING_PCT 125
#define ACTIVE_STANDING_PCT 200
#define ACTIVE_STANDING_MIN_US 100000
#define ACTIVE_HOLD_PERIODS 8
#define ACTIVE_HOLD_DOUBLINGS 4
#define ACTIVE_CALM_PERIODS 64

/* How long a connection stays in the active set after its last chunk. */
static int64_t active_span(const haul__pipe *pipe)
{
    return 2 * (int64_t)pipe->rtt_us / 1000 + 20;
}

/* Counts the active set anew (mu held): a connection stays in it while
 * it took a chunk lately or still holds bytes unacknowledged. */
static void active_count(haul__pipe *pipe, haul__conn *c, int64_t now, unsigned *n, uint64_t *rtt,
                         uint32_t *base)
{
    if (c == NULL || c->dead || !c->active)
        return;
    if (now - c->last_take > active_span(pipe) && haul__sock_unacked(c->fd) <= 0) {
        c->active = 0;
        c->draining = 0;
        return;
    }
    (*n)++;
    /* A set cut below its size keeps its first connections; the others
     * finish what they hold and leave it. */
    c->draining = *n > pipe->active_max;
    uint32_t least;
    *rtt += haul__sock_pace(c->fd, pipe->engine->config.conn_backlog, &c->lowat, &least);
    if (least > 0 && (*base == 0 || least < *base))
        *base = least;
}

static void active_sweep(haul__pipe *pipe, int64_t now)
{
    if (pipe->active_max == 0) {
        pipe->active_max = ACTIVE_START;
        pipe->active_at = now;
        pipe->active_watch = 1;
    }
    int64_t period = active_span(pipe) > ACTIVE_PERIOD_MS ? active_span(pipe) : ACTIVE_PERIOD_MS;
    int last = now - pipe->active_at >= period;
    unsigned n = 0, total = 0;
    uint64_t rtt = 0;
    uint32_t least = 0;
    if (pipe->server) {
        haul__list *p;
        haul__list_each(p, &pipe->members)
        {
            active_count(pipe, HAUL__CONTAINER(p, haul__conn, pipe_link), now, &n, &rtt, &least);
            total++;
        }
    } else {
        for (unsigned i = 0; i < pipe->nconns; i++)
            active_count(pipe, pipe->conns[i], now, &n, &rtt, &least);
        total = pipe->nconns;
    }
    pipe->nactive = n;
    int blocked = 0;
    haul__list *p;
    haul__list_each(p, &pipe->sessions)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, pipe_link);
        uint32_t idx;
        int avoided = 0;
        if (!haul__list_empty(&s->outq) && sendable(s, NULL, &idx, &avoided) == NULL)
            blocked = 1;
    }
    pipe->blocked += blocked;
    pipe->sampled++;
    if (n > 0 && (pipe->rtt_low == 0 || rtt / n < pipe->rtt_low))
        pipe->rtt_low = (uint32_t)(rtt / n);
    if (n > 0 && rtt / n > pipe->rtt_high)
        pipe->rtt_high = (uint32_t)(rtt / n);
    if (least > 0 && (pipe->rtt_base_us == 0 || least < pipe->rtt_base_us))
        pipe->rtt_base_us = least;
    if (!last)
        return;
    /* The period's lowest round trip says whether a queue stood (a
     * congestion control probing for bandwidth lengthens it for a
     * moment); its highest whether there was any. */
    uint64_t low = pipe->rtt_low, high = pipe->rtt_high, base = pipe->rtt_base_us;
    int queueing = n > 0 && high > base * ACTIVE_QUEUEING_PCT / 100;
    int standing =
        n > 0 && low > base * ACTIVE_STANDING_PCT / 100 && low > base + ACTIVE_STANDING_MIN_US;
    unsigned max = pipe->active_max;
    if (standing) {
        /* Of what the active connections hold in flight, only the part
         * that a round trip without the queue would carry moves the
         * messages on. */
        uint64_t keep = n * base / low;
        /* But by half at most: the connections that stay have a
         * congestion window of their share, and the bandwidth the others
         * leave takes their congestion control a few round trips to
         * claim. */
        if (keep < n / 2)
            keep = n / 2;
        if (keep < max)
            max = (unsigned)keep;
        /* Each cut in a row holds twice as long: a link that one
         * connection fills would otherwise see every probe for more
         * build a queue of seconds again. */
        unsigned cuts =
            pipe->active_cuts < ACTIVE_HOLD_DOUBLINGS ? pipe->active_cuts : ACTIVE_HOLD_DOUBLINGS;
        pipe->active_hold = now + ((int64_t)ACTIVE_HOLD_PERIODS << cuts) * period;
        pipe->active_cuts++;
    } else if (pipe->blocked * 2 > pipe->sampled && max > ACTIVE_MIN) {
        max -= max / 8 > 0 ? max / 8 : 1;
    } else if (pipe->active_watch) {
        pipe->active_watch = 0;
    } else if (pipe->active_wanted > 0 && pipe->blocked * 4 < pipe->sampled && !queueing &&
               now >= pipe->active_hold && max < total) {
        max = 2 * max < total ? 2 * max : total;
        pipe->active_watch = 1;
    } else if (!queueing && pipe->active_hold &&
               now >= pipe->active_hold + ACTIVE_CALM_PERIODS * period) {
        /* Calm for long after the last hold: the next cut starts over. */
        pipe->active_cuts = 0;
        pipe->active_hold = 0;
    }
    pipe->active_max = max < ACTIVE_MIN ? ACTIVE_MIN : max;
    pipe->active_wanted = 0;
    pipe->rtt_low = pipe->rtt_high = pipe->rtt_base_us = 0;
    pipe->blocked = pipe->sampled = 0;
    pipe->active_at = now;
}

/*
 * Whether connection c should take another chunk now. Connections of a
 * long link keep what they hold short (conn_backlog), so each asks for
 * more as soon as its unsent bytes run low; but on a link shared by many
 * connections, one that got little of the bottleneck, or whose window
 * collapsed after a loss, would still take chunk after chunk and deliver
 * them late, holding up the messages they belong to. So it takes one only
 * while what it holds unacknowledged, with the new chunk, fits in twice
 * its congestion window (about two round trips of its own rate), or when
 * it holds nothing at all. Declined, it waits in the idle list behind the
 * others until the next kick or sweep.
 */
static int may_take(haul__pipe *pipe, haul__conn *c, uint32_t chunk)
{
    if (!c->backlog_set)
        return 1;
    if (!c->active && pipe->nactive >= pipe->active_max) {
        pipe->active_wanted++;
        return 0;
    }
    /* A set larger than its bound (it was just cut) shrinks as its
     * extra connections drain (active_count). */
    if (c->active && c->draining)
        return 0;
    return haul__sock_room(c->fd, chunk);
}

static void count_session(haul__conn *c, uint32_t id)
{
    size_t n = sizeof(c->seen_sessions) / sizeof(c->seen_sessions[0]);
    for (size_t i = 0; i < n; i++) {
        if (c->seen_sessions[i] == id)
            return;
        if (c->seen_sessions[i] == 0) {
            c->seen_sessions[i] = id;
            c->stats.sessions_sent++;
            return;
        }
    }
}

/* Whether the file of a message still holds its first `end` bytes: a
 * file that shrank since haul_send_file() fails the message (haul.h). */
static int file_holds(const haul_message *m, uint64_t end)
{
    struct stat st;
    if (fstat(m->fd, &st) != 0)
        return 0;
    return !S_ISREG(st.st_mode) || (uint64_t)st.st_size >= (uint64_t)m->file_offset + end;
}

/*
 * Whether the session's rate limit lets it hand out a chunk now (mu
 * held). When its bucket is empty it leaves the dispatch list, so that
 * the other sessions' chunks go meanwhile and no connection spins on
 * it; the pipe's sweep puts it back when tokens have come
 * (release_rate_held).
 */
static int rate_allows(haul_session *s, int64_t now_us)
{
    if (s->rate.rate == 0 || haul__bucket_ready(&s->rate, now_us))
        return 1;
    s->rate_held = 1;
    haul__list_del(&s->dispatch_link);
    return 0;
}

/* Takes out of the dispatch list the sessions whose rate limit holds
 * them (mu held): a connection that finds only those has no chunk to
 * take, and must not be counted as one turned away (may_take). */
static void drop_rate_held(haul__pipe *pipe, int64_t now_us)
{
    haul__list *p, *tmp;
    haul__list_each_safe(p, tmp, &pipe->dispatch)
    {
        rate_allows(HAUL__CONTAINER(p, haul_session, dispatch_link), now_us);
    }
}

/*
 * Fills the connection's batch (mu held): control frames first, then
 * chunks, one session after the other. A batch carries at most one large
 * chunk, so that the chunks of a message spread over the connections that
 * are free. Returns the number of frames taken.
 */
int haul__pipe_fill(haul__pipe *pipe, haul__conn *c)
{
    int n = c->nitems;
    while (n < HAUL__TX_BATCH && !haul__list_empty(&pipe->ctl)) {
        haul_session *s = HAUL__CONTAINER(haul__list_first(&pipe->ctl), haul_session, ctl_link);
        haul__frame f;
        const uint8_t *payload;
        uint32_t plen;
        int rc = haul__session_take_ctl(s, &f, &payload, &plen);
        if (s->pending == 0)
            haul__list_del(&s->ctl_link);
        if (rc < 0)
            continue;
        haul__tx_item *it = &c->items[n];
        memset(it, 0, sizeof(*it));
        it->type = f.type;
        it->session = s;
        s->refs++;
        it->len = f.len;
        if (f.type == HAUL__F_SYNC) {
            it->buf = malloc(f.len);
            if (it->buf == NULL) {
                /* Try again with the next batch. */
                s->refs--;
                haul__session_enter(s, SEV_SYNC_LOST);
                haul__session_want(s, HAUL__PEND_SYNC);
                break;
            }
            haul__session_sync_payload(s, it->buf);
            /* The write is issued as soon as the batch is filled. */
            haul__session_ctl_posted(s, f.type);
        }
        haul__frame_encode(&f, c->headers[n]);
        n++;
    }
    /* Answers to frames for sessions the pipe does not hold: no session
     * object goes with them, and a lost one is owed again only when the
     * peer asks again. */
    haul__frame af;
    while (n < HAUL__TX_BATCH && haul__pipe_take_answer(pipe, &af) == 0) {
        haul__tx_item *it = &c->items[n];
        memset(it, 0, sizeof(*it));
        it->type = af.type;
        haul__frame_encode(&af, c->headers[n]);
        n++;
    }

    /* A parked connection takes control frames, but no chunks. */
    uint64_t budget = pipe->engine->debug_hold || haul__conn_parked(c) ? 0 : pipe->chunk;
    c->declined = 0;
    int64_t now_us = haul__now_us();
    if (budget > 0)
        drop_rate_held(pipe, now_us);
    if (budget > 0 && !haul__list_empty(&pipe->dispatch) && !may_take(pipe, c, pipe->chunk)) {
        c->declined = 1;
        pipe->declines++;
        budget = 0;
    }
    while (n < HAUL__TX_BATCH && budget > 0 && !haul__list_empty(&pipe->dispatch)) {
        haul_session *s =
            HAUL__CONTAINER(haul__list_first(&pipe->dispatch), haul_session, dispatch_link);
        if (!rate_allows(s, now_us))
            continue;
        uint32_t idx = 0;
        int avoided = 0;
        /* A pipe down to one connection sends on it whatever it has. */
        haul_message *m = sendable(s, pipe->joined > 1 ? c : NULL, &idx, &avoided);
        if (m == NULL && avoided)
            break; /* what is left goes on other connections */
        if (m == NULL) {
            haul__list_del(&s->dispatch_link);
            continue;
        }
        uint64_t offset = (uint64_t)idx * m->chunk;
        uint32_t len = (uint32_t)(m->len - offset < m->chunk ? m->len - offset : m->chunk);
        if (m->kind == HAUL__BODY_FILE && !file_holds(m, offset + len)) {
            /* Caught before its header goes: nothing of the chunk is sent,
             * and the receiver never completes the message. */
            haul__log(pipe->engine, HAUL_LOG_WARN,
                      "session %u: the file of message %llu shrank before it was sent; "
                      "failing the session with EIO",
                      s->id, (unsigned long long)m->seq);
            haul__session_fail(s, HAUL_EIO, 1);
            continue;
        }
        if (!c->active) {
            c->active = 1;
            c->draining = 0;
            pipe->nactive++;
        }
        c->last_take = haul__now_ms();
        m->carrier[idx] = c->serial;
        if (idx >= m->taken_end)
            m->taken_end = idx + 1;
        m->unsent--;
        while (m->next_chunk < m->nchunks && m->carrier[m->next_chunk] != 0)
            m->next_chunk++;
        m->tx[idx].pos = 0;
        if (m->unsent == 0)
            m->hedge_at = haul__now_ms();

        haul__tx_item *it = &c->items[n];
        memset(it, 0, sizeof(*it));
        it->type = HAUL__F_CHUNK;
        it->session = s;
        s->refs++;
        it->msg = m;
        m->refs++;
        it->round = m->attempts;
        it->chunk_index = idx;
        it->offset = offset;
        it->len = len;
        haul__frame f = {.version = HAUL_PROTOCOL_VERSION,
                         .type = HAUL__F_CHUNK,
                         .len = it->len,
                         .session = s->id,
                         .seq = m->seq,
                         .offset = it->offset,
                         .total = m->len};
        haul__frame_encode(&f, c->headers[n]);
        count_session(c, s->id);
        haul__bucket_take(&s->rate, len);
        n++;
        budget = it->len + HAUL__FRAME_HDR >= budget ? 0 : budget - it->len - HAUL__FRAME_HDR;
        /* Round robin: the next chunk comes from the next session. */
        haul__list_del(&s->dispatch_link);
        haul__list_add_tail(&pipe->dispatch, &s->dispatch_link);
    }
    c->nitems = n;
    return n;
}

/* ---- the automatic count ------------------------------------------------------- */

int haul__pipe_demand(haul__pipe *pipe)
{
    /* A session that its rate limit holds back is paced by the user, not
     * by the network: more connections would not move it faster. */
    haul__list *p;
    haul__list_each(p, &pipe->dispatch)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, dispatch_link);
        uint32_t idx;
        int avoided = 0;
        if (s->rate_held)
            continue;
        if (sendable(s, NULL, &idx, &avoided) != NULL || avoided)
            return 1;
    }
    /* Every chunk within the window taken, but the sender is held back
     * (the application could queue no more, or the receiver's window is
     * closed) while messages of the window are still unacknowledged: the
     * network holds them, and the pace is its own. A window closed with
     * nothing in flight is the receiver's application's pace (it does
     * not take what it was given), and more connections would not
     * change it. */
    haul__list_each(p, &pipe->sessions)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, pipe_link);
        if (s->state != CE_SS_SESSION_READY || haul__list_empty(&s->outq) || s->rate_held)
            continue;
        haul_message *oldest = HAUL__CONTAINER(s->outq.next, haul_message, link);
        haul_message *last = HAUL__CONTAINER(s->outq.prev, haul_message, link);
        int in_flight = oldest->seq < s->right;
        int held =
            last->seq >= s->right || s->out_bytes + s->max_message > haul__session_out_bound(s);
        if (in_flight && held)
            return 1;
    }
    return 0;
}

int haul__pipe_opening(haul__pipe *pipe)
{
    haul__list *p;
    haul__list_each(p, &pipe->sessions)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, pipe_link);
        switch (s->state) {
        case CE_SS_NULL:
        case CE_SS_SEND_SYNC:
        case CE_SS_SENDING_SYNC:
        case CE_SS_SESSION_WAITING_FOR_SYNC_COMPLETE:
        case CE_SS_WAITING_ACK:
            return 1;
        default:
            break;
        }
    }
    return 0;
}

unsigned haul__pipe_resize(haul__pipe *pipe, unsigned n)
{
    haul_engine *e = pipe->engine;
    if (n > pipe->cap)
        n = pipe->cap;
    if (n < 1)
        n = 1;
    if (n > pipe->nconns) {
        unsigned room =
            e->config.max_connections > e->nconns ? e->config.max_connections - e->nconns : 0;
        if (n - pipe->nconns > room)
            n = pipe->nconns + room;
        while (pipe->nconns < n) {
            unsigned i = pipe->nconns;
            pipe->backoff[i] = e->config.redial_min_ms;
            pipe->slot_failed[i] = 0;
            int rc = pipe_dial(pipe, i);
            if (rc == HAUL_ENOMEM || rc == HAUL_ELIMIT) {
                /* No memory or no descriptor: this slot is as far as the
                 * pipe can grow now. */
                pipe->redial_at[i] = 0;
                n = i;
                break;
            }
            pipe->nconns++;
        }
        if (n < 1)
            n = 1;
    }
    unsigned before = pipe->active;
    pipe->active = n;
    /* Unparked connections that sit idle get work at once. */
    if (n > before)
        haul__pipe_kick(pipe, n - before);
    return n;
}

/* ---- hedging: chunks stuck on slow connections ------------------------------- */

/* A message whose last chunk was taken this long ago (beyond twice the
 * pipe's round trip) while it holds up the window has its undelivered
 * chunks sent again; at most HEDGE_MAX times, so that a receiver that is
 * slow itself does not get the message over and over. */
#define HEDGE_SLACK_MS 20
#define HEDGE_MAX 4

static haul__conn *conn_by_serial(haul__pipe *pipe, uint32_t serial)
{
    if (pipe->server) {
        haul__list *p;
        haul__list_each(p, &pipe->members)
        {
            haul__conn *c = HAUL__CONTAINER(p, haul__conn, pipe_link);
            if (c->serial == serial)
                return c;
        }
        return NULL;
    }
    for (unsigned i = 0; i < pipe->nconns; i++)
        if (pipe->conns[i] && pipe->conns[i]->serial == serial)
            return pipe->conns[i];
    return NULL;
}

/* Whether the peer's TCP acknowledged every byte of the chunk: the socket
 * took wire_sent bytes of the stream and still holds `unacked` of them.
 * When the kernel cannot tell, the chunk is taken as delivered. */
static int delivered(haul__conn *c, const haul__chunk_tx *tx)
{
    if (tx->pos == 0)
        return 0; /* not even written whole */
    int unacked = haul__sock_unacked(c->fd);
    uint64_t took = atomic_load_explicit(&c->wire_sent, memory_order_relaxed);
    return unacked < 0 || took - (uint64_t)unacked >= tx->pos;
}

int64_t haul__pipe_hedge(haul__pipe *pipe, haul_session *s, int64_t now)
{
    haul__list *first = haul__list_first(&s->outq);
    if (first == NULL || pipe->joined < 2)
        return HAUL__NEVER;
    haul_message *m = HAUL__CONTAINER(first, haul_message, link);
    if (m->seq >= s->right || m->unsent > 0 || m->hedges >= HEDGE_MAX || m->hedge_at == 0)
        return HAUL__NEVER;
    /* Copies go only from connections of a long link (below): on a short
     * one there is never anything to wait for. */
    int possible = 0;
    for (uint32_t i = 0; i < m->nchunks && !possible; i++) {
        haul__conn *c = conn_by_serial(pipe, m->carrier[i]);
        possible = c != NULL && !c->dead && c->state == HAUL__CONN_JOINED && c->backlog_set;
    }
    if (!possible)
        return HAUL__NEVER;
    int64_t due = m->hedge_at + (int64_t)(2 * pipe->rtt_us / 1000) + HEDGE_SLACK_MS;
    /* Only a window held up by the message: while other chunks may go,
     * the link has better use for its bytes. */
    uint32_t idx;
    int avoided = 0;
    if (sendable(s, NULL, &idx, &avoided) != NULL)
        return due;
    if (now < due)
        return due;
    m->hedge_at = now;
    unsigned n = 0;
    for (uint32_t i = 0; i < m->nchunks; i++) {
        haul__conn *c = conn_by_serial(pipe, m->carrier[i]);
        /* A chunk whose connection is gone is sent again anyway; one on
         * a short link arrives or is resent by TCP sooner than a copy
         * would be worth its bytes. */
        if (c == NULL || c->dead || c->state != HAUL__CONN_JOINED || !c->backlog_set ||
            delivered(c, &m->tx[i]))
            continue;
        m->carrier[i] = 0;
        m->unsent++;
        if (i < m->next_chunk)
            m->next_chunk = i;
        m->tx[i].avoid = c->serial;
        n++;
    }
    if (n == 0)
        return m->hedges < HEDGE_MAX ? now + (int64_t)(2 * pipe->rtt_us / 1000) + HEDGE_SLACK_MS
                                     : HAUL__NEVER;
    m->hedges++;
    pipe->engine->stats.chunks_hedged += n;
    if (!haul__list_linked(&s->dispatch_link))
        haul__list_add_tail(&pipe->dispatch, &s->dispatch_link);
    haul__pipe_kick(pipe, n);
    return m->hedges < HEDGE_MAX ? now + (int64_t)(2 * pipe->rtt_us / 1000) + HEDGE_SLACK_MS
                                 : HAUL__NEVER;
}

/* ---- deadlines, redials and the end of a pipe --------------------------------- */

void haul__pipe_destroy(haul__pipe *pipe)
{
    haul_engine *e = pipe->engine;
    /* Connections first: closing them must not find sessions to requeue. */
    if (!pipe->server && pipe->conns) {
        for (unsigned i = 0; i < pipe->nconns; i++) {
            haul__conn *c = pipe->conns[i];
            if (c) {
                pipe->conns[i] = NULL;
                c->pipe = NULL;
                haul__conn_close(c, HAUL_ESHUTDOWN, "pipe closed");
            }
        }
    }
    while (!haul__list_empty(&pipe->members)) {
        haul__conn *c = HAUL__CONTAINER(haul__list_first(&pipe->members), haul__conn, pipe_link);
        haul__list_del(&c->pipe_link);
        c->pipe = NULL;
        haul__conn_close(c, HAUL_ESHUTDOWN, "pipe closed");
    }
    /* Sessions are left only when the engine itself stops. */
    while (!haul__list_empty(&pipe->sessions)) {
        haul_session *s =
            HAUL__CONTAINER(haul__list_first(&pipe->sessions), haul_session, pipe_link);
        s->app_freed = 1;
        haul__session_fail(s, HAUL_ESHUTDOWN, 0);
        s->pending = 0;
        haul__pipe_remove_session(pipe, s);
        e->nsessions--;
        haul__list *q = &s->inq;
        while (!haul__list_empty(q)) {
            haul_message *m = HAUL__CONTAINER(haul__list_first(q), haul_message, link);
            haul__list_del(&m->link);
            haul__message_unref(m);
        }
        /* The table's reference and the application's handle both end. */
        s->refs = 1;
        haul__session_unref(s);
    }
    haul__list_del(&pipe->link);
    /* Connections that outlive the pipe hold references of their own. */
    haul__tls_ctx_free(pipe->tls_ctx);
    free(pipe->tls_key);
    free(pipe->destination);
    free(pipe->conns);
    free(pipe->redial_at);
    free(pipe->slot_failed);
    free(pipe->backoff);
    free(pipe);
}

/*
 * Puts back in the dispatch list the sessions whose rate limit held them
 * and whose bucket has tokens again, and wakes connections for them (mu
 * held). The engine's sweep is the limiter's clock: a held session waits
 * at most one sweep period (20 ms) past the moment its tokens came, which
 * the burst of 50 ms of the rate covers, so the rate is kept without a
 * timer of its own. It runs after the automatic count's sweep, which so
 * sees the sessions that were held during the period as held.
 */
static void release_rate_held(haul__pipe *pipe)
{
    int64_t now_us = haul__now_us();
    unsigned woken = 0;
    haul__list *p;
    haul__list_each(p, &pipe->sessions)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, pipe_link);
        if (!s->rate_held || !haul__bucket_ready(&s->rate, now_us))
            continue;
        s->rate_held = 0;
        if (!haul__list_linked(&s->dispatch_link))
            haul__list_add_tail(&pipe->dispatch, &s->dispatch_link);
        woken++;
    }
    if (woken > 0)
        haul__pipe_kick(pipe, woken < pipe->joined ? woken : pipe->joined);
}

/* Whether a joined connection of the pipe is on a long link: its active
 * set and its copies of stuck chunks are watched at every sweep. */
static int long_link(haul__pipe *pipe)
{
    if (pipe->server) {
        haul__list *p;
        haul__list_each(p, &pipe->members)
        {
            haul__conn *c = HAUL__CONTAINER(p, haul__conn, pipe_link);
            if (!c->dead && c->backlog_set)
                return 1;
        }
        return 0;
    }
    for (unsigned i = 0; i < pipe->nconns; i++)
        if (pipe->conns[i] != NULL && !pipe->conns[i]->dead && pipe->conns[i]->backlog_set)
            return 1;
    return 0;
}

static int64_t earlier(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

int64_t haul__pipe_sweep(haul__pipe *pipe, int64_t now)
{
    haul_engine *e = pipe->engine;
    haul__list *p, *tmp;
    int64_t next = HAUL__NEVER;
    pipe_events_owed(pipe);
    if (pipe->events_owed)
        next = now; /* tried again at the next sweep */
    haul__list_each_safe(p, tmp, &pipe->sessions)
    {
        next = earlier(next, haul__session_sweep(HAUL__CONTAINER(p, haul_session, pipe_link), now));
    }
    int expired = 0;
    if (pipe->ever_joined && pipe->joined == 0 && pipe->empty_since &&
        now - pipe->empty_since > (int64_t)e->config.message_timeout_ms) {
        /* A server pipe whose sessions all ended in order only waited
         * for late frames of them: nothing failed, nothing to say. */
        if (!haul__list_empty(&pipe->sessions))
            haul__log(e, HAUL_LOG_WARN, "pipe %s: no connection for %u ms; failing its sessions",
                      pipe->destination ? pipe->destination : "(server)",
                      e->config.message_timeout_ms);
        fail_sessions(pipe, HAUL_ECONNRESET);
        /* The timer goes on: a session made on the pipe meanwhile may owe
         * the peer a frame by the time it expires again (the ABORT of its
         * open deadline), and is failed and given up in its turn, rather
         * than keeping a pipe that redials for ever. */
        pipe->empty_since = now;
        expired = 1;
    }
    if (haul__list_empty(&pipe->sessions)) {
        pipe->doomed = 1;
        /* A server pipe lasts while its client keeps connections open,
         * and, when it remembers sessions that ended (section 6.4 of
         * docs/protocol.md), until it has had none for the message
         * timeout: a client whose connections broke dials again and
         * repeats its SYNCs and FINs, which must get the answers they
         * are owed, not a new request or an ABORT ENOSESSION. */
        if (!pipe->server ||
            (pipe->joined == 0 && (pipe->nended == 0 || pipe->empty_since == 0 || expired))) {
            haul__pipe_destroy(pipe);
            return HAUL__NEVER;
        }
    }
    if (pipe->ever_joined && pipe->joined == 0 && pipe->empty_since)
        next = earlier(next, pipe->empty_since + (int64_t)e->config.message_timeout_ms + 1);
    if (!pipe->server && !pipe->failed) {
        for (unsigned i = 0; i < pipe->nconns; i++)
            if (pipe->conns[i] == NULL && pipe->redial_at[i] && pipe->redial_at[i] <= now)
                pipe_dial(pipe, i);
        for (unsigned i = 0; i < pipe->nconns; i++)
            if (pipe->conns[i] == NULL && pipe->redial_at[i])
                next = earlier(next, pipe->redial_at[i]);
        /* The automatic count samples the pipe at every sweep. */
        if (pipe->automatic && !pipe->auto_pinned && pipe->ever_joined) {
            haul__auto_sweep(pipe, now);
            next = now;
        } else if (pipe->automatic && !pipe->auto_pinned && pipe->auto_min_rtt_us) {
            /* A connect told the RTT (haul__pipe_conn_connected asked
             * for this sweep): the long link's first step may be taken
             * while the session opens. Nothing is sampled until a
             * connection joins, so this sweep asks for no next one. */
            haul__auto_sweep(pipe, now);
        }
    }
    active_sweep(pipe, now);
    if (long_link(pipe))
        next = now;
    release_rate_held(pipe);
    haul__list_each(p, &pipe->sessions)
    {
        if (HAUL__CONTAINER(p, haul_session, pipe_link)->rate_held)
            next = now; /* its tokens come with time */
    }
    /* Connections that declined chunks (may_take) ask again: what they
     * held may have arrived meanwhile without an event of ours. */
    if (pipe->declines && !haul__list_empty(&pipe->dispatch)) {
        pipe->declines = 0;
        haul__pipe_kick(pipe, pipe->active_max < pipe->joined ? pipe->active_max : pipe->joined);
    }
    return next;
}

/* ---- statistics ------------------------------------------------------------------ */

int haul_pipe_stats(haul_session *s, haul_conn_stats *out, int max)
{
    if (s == NULL || (max > 0 && out == NULL))
        return -HAUL_EINVAL;
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    haul__pipe *pipe = s->in_table ? s->pipe : NULL;
    int n = 0;
    if (pipe && !pipe->server) {
        for (unsigned i = 0; i < pipe->nconns; i++, n++) {
            if (n < max) {
                haul__conn *c = pipe->conns[i];
                if (c) {
                    out[n] = c->stats;
                    out[n].up = c->state == HAUL__CONN_JOINED;
                    out[n].parked = haul__conn_parked(c);
                    out[n].rtt_us = c->rtt_us;
                    out[n].unsent_limit = c->backlog_set ? c->lowat : 0;
                    out[n].active = c->active;
                } else {
                    memset(&out[n], 0, sizeof(out[n]));
                }
            }
        }
    } else if (pipe) {
        haul__list *p;
        haul__list_each(p, &pipe->members)
        {
            haul__conn *c = HAUL__CONTAINER(p, haul__conn, pipe_link);
            if (n < max) {
                out[n] = c->stats;
                out[n].up = c->state == HAUL__CONN_JOINED;
            }
            n++;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* ---- test hooks ------------------------------------------------------------------ */

/*
 * Breaks connection `index` of the pipe that carries the session, as a
 * network fault would: both directions are shut down and the connection's
 * thread finds out by itself. For tests; returns 0, or HAUL_EINVAL when
 * there is no such connection.
 */
int haul__debug_break_conn(haul_session *s, unsigned index)
{
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    int rc = HAUL_EINVAL;
    haul__pipe *pipe = s->in_table ? s->pipe : NULL;
    if (pipe && !pipe->server && index < pipe->nconns && pipe->conns[index] &&
        !pipe->conns[index]->dead) {
        shutdown(pipe->conns[index]->fd, SHUT_RDWR);
        rc = 0;
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static int freeze(haul__conn *c, int index, int frozen)
{
    if (c == NULL || c->dead || (index >= 0 && c->index != (unsigned)index))
        return 0;
    c->debug_frozen = frozen;
    if (!frozen) {
        /* Edges that came while it was frozen were ignored. */
        c->more_to_read = 1;
        haul__conn_wake(c);
    }
    return 1;
}

int haul__debug_freeze(haul_session *s, int index, int frozen)
{
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    int found = 0;
    haul__pipe *pipe = s->in_table ? s->pipe : NULL;
    if (pipe && pipe->server) {
        haul__list *p;
        haul__list_each(p, &pipe->members)
        {
            found += freeze(HAUL__CONTAINER(p, haul__conn, pipe_link), index, frozen);
        }
    } else if (pipe) {
        for (unsigned i = 0; i < pipe->nconns; i++)
            found += freeze(pipe->conns[i], index, frozen);
    }
    pthread_mutex_unlock(&e->mu);
    return found ? 0 : HAUL_EINVAL;
}

void haul__debug_auto_local(haul_engine *e, unsigned us)
{
    pthread_mutex_lock(&e->mu);
    e->debug_auto_local_us = us;
    pthread_mutex_unlock(&e->mu);
}

void haul__debug_auto_long(haul_engine *e, unsigned us)
{
    pthread_mutex_lock(&e->mu);
    e->debug_auto_long_us = us;
    pthread_mutex_unlock(&e->mu);
}

int haul__debug_auto_resize(haul_session *s, unsigned n)
{
    haul_engine *e = s->engine;
    pthread_mutex_lock(&e->mu);
    int rc = HAUL_EINVAL;
    haul__pipe *pipe = s->in_table ? s->pipe : NULL;
    if (pipe && !pipe->server && pipe->automatic) {
        pipe->auto_pinned = 1;
        haul__pipe_resize(pipe, n);
        rc = 0;
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

void haul__debug_fail_writes(haul_engine *e, int n)
{
    pthread_mutex_lock(&e->mu);
    e->debug_fail_writes = n;
    pthread_mutex_unlock(&e->mu);
}

void haul__debug_hold(haul_engine *e, int hold)
{
    pthread_mutex_lock(&e->mu);
    e->debug_hold = hold;
    if (!hold) {
        haul__list *p;
        haul__list_each(p, &e->pipes)
        {
            haul__pipe *pipe = HAUL__CONTAINER(p, haul__pipe, link);
            haul__pipe_kick(pipe, pipe->joined);
        }
    }
    pthread_mutex_unlock(&e->mu);
}

/* ---- limits per principal --------------------------------------------------- */

unsigned haul__principal_limit(haul_engine *e, const char *principal, unsigned *joined)
{
    unsigned max = e->plimit_default;
    for (unsigned i = 0; i < e->nplimits; i++)
        if (strcmp(e->plimits[i].name, principal) == 0)
            max = e->plimits[i].max;
    *joined = 0;
    if (max == 0)
        return 0;
    /* Few pipes live at once on a server, and a HELLO is rare beside
     * the frames of data: a walk costs less than counters to keep. */
    haul__list *pos;
    haul__list_each(pos, &e->pipes)
    {
        haul__pipe *p = HAUL__CONTAINER(pos, haul__pipe, link);
        if (p->server && p->secured && strcmp(p->cert_principal, principal) == 0)
            *joined += p->joined;
    }
    return max;
}

int haul_engine_limit_principal(haul_engine *e, const char *principal, unsigned max)
{
    if (e == NULL ||
        (principal != NULL && (principal[0] == '\0' || strlen(principal) > HAUL__PRINCIPAL_MAX)))
        return HAUL_EINVAL;
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (principal == NULL) {
        e->plimit_default = max;
        goto out;
    }
    unsigned i = 0;
    while (i < e->nplimits && strcmp(e->plimits[i].name, principal) != 0)
        i++;
    if (i == e->nplimits) {
        struct haul__principal_limit *v = realloc(e->plimits, (e->nplimits + 1) * sizeof(*v));
        if (v == NULL) {
            rc = HAUL_ENOMEM;
            goto out;
        }
        e->plimits = v;
        memset(&v[i], 0, sizeof(v[i]));
        memcpy(v[i].name, principal, strlen(principal) + 1);
        e->nplimits++;
    }
    e->plimits[i].max = max; /* 0: none for this one, whatever the default */
out:
    pthread_mutex_unlock(&e->mu);
    return rc;
}
