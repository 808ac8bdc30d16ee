/*
 * conn.c - connections (120): the connection state machine, the security
 * step, and the socket I/O state machine that turns bytes into frames and
 * frames into bytes.
 *
 * Connection states (Fig. 3, "Connection n"; the table is net/conn_fsm.c):
 *
 *   CONN_NULL --dial--> CONN_DIALING --connect done--> CONN_SECURING
 *   CONN_NULL --accept--> CONN_SECURING --secured--> CONN_HELLO
 *   CONN_HELLO --HELLO / HELLO_ACK exchanged--> CONN_JOINED
 *   any but CONN_NULL --error, EOF, deadline, shutdown--> CONN_CLOSED
 *
 * Bytes move through the connection's transport (net/transport.h): plain
 * TCP (net/tcp.c) or TLS (net/tls.c), one table of operations that this
 * file calls without asking which it is. CONN_SECURING is the slot of the
 * encryption and authentication state machine (net/secure_fsm.h), which
 * the transport starts on entering it: plain TCP goes to SEC_PLAIN and
 * passes through at once; TLS runs its handshake there (SEC_HANDSHAKING,
 * SEC_VERIFYING), driven by readiness events without the engine's mutex,
 * and says HELLO only in SEC_ESTABLISHED, when the peer is authenticated.
 * The transport's reads and writes end it: the end of the stream or a
 * close_notify leads to SEC_CLOSING, a record error to SEC_FAILED.
 *
 * Receiving (the socket I/O state machine, net/conn_fsm.c): RXS_HEADER ->
 * RXS_CHUNK | RXS_CTL | RXS_DISCARD -> RXS_HEADER. Payloads of large
 * chunks are read straight into the message; everything else goes
 * through a 16 KiB buffer.
 *
 * Sending: the batch is written from its write position on, as a gather
 * list of headers and payloads in memory, and the bodies of files as file
 * ranges. The position moves by what the transport reports taken; after
 * a write that must wait for the socket, the next passes the same bytes
 * again (which TLS requires of a retry). What the transport keeps of the
 * bytes taken (TLS: records not yet on the socket) is flushed whenever
 * the connection stops writing: it has nothing more to send, or lets
 * others have their turn.
 *
 * Liveness: a joined connection that has written nothing for keepalive_ms
 * writes a KEEPALIVE, and one that has received nothing for
 * idle_timeout_ms is closed with ETIMEDOUT (haul__conn_sweep), so that a
 * peer that falls silent without a reset is found out while the pipe is
 * idle too.
 *
 * Threads: only the loop thread that owns the connection reads, writes or
 * frees it. Other threads may close it (mark it dead) under the engine's
 * mutex; the owner then tears it down. The connections of one pipe spread
 * over the engine's threads (connection i of a client pipe on the pipe's
 * first thread + i; a server connection, when it joins, on the thread
 * with the fewest of its pipe's), so that one pipe reads, writes and
 * encrypts on several cores. What they share (sessions, messages, the
 * pipe) is under the mutex; the one thing written without it is the body
 * of a received message, by a direct read, and haul_message.rx_writing
 * keeps the copies of a chunk on two threads from writing it at once.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/engine.h"
#include "net/payload.h"
#include "net/transport.h"

_Static_assert(HAUL__CONN_NULL == 0 && HAUL__RXS_HEADER == 0 && HAUL__SEC_NULL == 0,
               "a connection made with calloc() stands in the first state of each machine");
_Static_assert(HAUL__CONN_STATE_COUNT_ <=
                   sizeof(((haul_engine_stats *)0)->conn_state_entered) / sizeof(uint64_t),
               "haul_engine_stats.conn_state_entered has room for every state");
_Static_assert(HAUL__RXS_COUNT_ <=
                   sizeof(((haul_engine_stats *)0)->rx_state_entered) / sizeof(uint64_t),
               "haul_engine_stats.rx_state_entered has room for every state");

/* The batches one connection writes before it lets the other connections
 * of its thread have a turn (its reads per turn are its transport's). */
#define WRITE_TURNS 8

/* Payload left of a chunk at or above which it is read straight into the
 * message rather than through the buffer. */
#define DIRECT_MIN 8192

int haul__conn_enter(haul__conn *c, int event)
{
    int next = haul__conn_next(c->state, event);
    if (next < 0) {
        haul__log(c->engine, HAUL_LOG_ERROR, "connection %u: no transition from %s on %s",
                  c->serial, haul__conn_state_name(c->state), haul__conn_event_name(event));
        assert(!"a transition the connection table does not have");
        return -1;
    }
    haul__log(c->engine, HAUL_LOG_DEBUG, "connection %u: %s -> %s on %s", c->serial,
              haul__conn_state_name(c->state), haul__conn_state_name(next),
              haul__conn_event_name(event));
    c->state = next;
    c->engine->stats.conn_state_entered[next]++;
    if (next == HAUL__CONN_JOINED) {
        /* The idle deadline and the keepalive period start at the join:
         * before it, the handshake deadline stands. */
        int64_t now = haul__now_ms();
        atomic_store_explicit(&c->last_rx, now, memory_order_relaxed);
        atomic_store_explicit(&c->last_tx, now, memory_order_relaxed);
    }
    return 0;
}

/* The receiving side moves once or twice per frame: no log line. */
int haul__rx_enter(haul__conn *c, int event)
{
    int next = haul__rx_next(c->rx_state, event);
    if (next < 0) {
        haul__log(c->engine, HAUL_LOG_ERROR, "connection %u: no transition from %s on %s",
                  c->serial, haul__rx_state_name(c->rx_state), haul__rx_event_name(event));
        assert(!"a transition the socket I/O table does not have");
        return -1;
    }
    c->rx_state = next;
    c->engine->stats.rx_state_entered[next]++;
    return 0;
}

haul__conn *haul__conn_new(haul_engine *e, int fd, int server, haul__pipe *pipe, unsigned index)
{
    haul__conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->kind = HAUL__POLL_CONN;
    c->engine = e;
    c->fd = fd;
    c->server = server;
    c->pipe = pipe;
    c->index = index;
    if (e->next_serial == 0)
        e->next_serial = 1;
    c->serial = e->next_serial++;
    /* Each machine starts in its first state, which calloc() left:
     * CONN_NULL, RXS_HEADER, SEC_NULL, counted as entered, as a session's
     * CE_SS_NULL is. */
    e->stats.conn_state_entered[HAUL__CONN_NULL]++;
    e->stats.rx_state_entered[HAUL__RXS_HEADER]++;
    atomic_fetch_add_explicit(&e->secure_entered[HAUL__SEC_NULL], 1, memory_order_relaxed);
    /* Only the protocol's bound here: a message over what this engine
     * accepts is refused per session in haul__session_chunk_begin(), which
     * aborts that session alone instead of closing a connection that
     * every session of the pipe shares. */
    c->limits.max_message = 0xffffffffull;
    c->ops = &haul__tcp_ops;
    /* Connection i of a client pipe on the pipe's first thread + i; an
     * accepted one on the threads in turn, until it joins its pipe. */
    c->loop = pipe ? &e->loops[((unsigned)pipe->loop->index + index) % e->nloops]
                   : &e->loops[e->next_loop++ % e->nloops];
    haul__list_add_tail(&e->conns, &c->all_link);
    e->nconns++;
    return c;
}

/* CONN_SECURING begins, and with it the security state machine. A plain
 * connection is secured at once (returns 1); a TLS one waits for its
 * handshake, which readiness events drive (secure_step). */
static int conn_secure(haul__conn *c)
{
    return c->ops->start(c);
}

static void conn_secured(haul__conn *c)
{
    haul__conn_enter(c, HAUL__CONNEV_SECURED);
    if (!c->server)
        c->hello_pending = HAUL__F_HELLO;
}

void haul__conn_start(haul__conn *c, int connecting)
{
    c->deadline = haul__now_ms() + c->engine->config.handshake_timeout_ms;
    haul__conn_enter(c, connecting ? HAUL__CONNEV_DIAL : HAUL__CONNEV_ACCEPT);
    if (c->engine->config.idle_timeout_ms)
        haul__sock_user_timeout(c->fd, c->engine->config.idle_timeout_ms);
    c->ops = haul__transport_for(c->tls_ctx);
    int init_rc = c->ops->init(c);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(c->loop->epfd, EPOLL_CTL_ADD, c->fd, &ev) == 0)
        c->registered = 1;
    if (init_rc) {
        haul__conn_close(c, init_rc, "no memory for the transport");
        return;
    }
    if (!connecting && conn_secure(c))
        conn_secured(c);
}

/* An accepted connection leaves the count of handshakes in progress: a
 * listener that waited for a slot may accept again. */
static void handshake_over(haul__conn *c)
{
    haul_engine *e = c->engine;
    if (c->handshaking) {
        c->handshaking = 0;
        e->handshaking--;
        if (e->listeners_paused && e->handshaking < e->config.max_handshakes)
            haul__listeners_resume(e);
    }
}

/* A chunk went out (mu held): if it was taken in its message's current
 * round of retransmission, that round is under way, and a later loss
 * begins another. */
static void chunk_went_out(const haul__tx_item *it)
{
    if (it->type == HAUL__F_CHUNK && it->msg->attempts == it->round)
        it->msg->resending = 0;
}

void haul__conn_close(haul__conn *c, int error, const char *why)
{
    if (c->dead)
        return;
    /* What of the batch was written went out, if only in part. The write
     * position is the owning thread's: read it only there. */
    if (pthread_equal(pthread_self(), c->loop->thread)) {
        for (int i = 0; i < c->nitems && i <= c->item_pos; i++)
            if (i < c->item_pos || c->item_done > 0)
                chunk_went_out(&c->items[i]);
    }
    snprintf(c->why, sizeof(c->why), "%s", why);
    haul__log(c->engine, error == HAUL_ESHUTDOWN ? HAUL_LOG_DEBUG : HAUL_LOG_INFO,
              "connection %u closed in %s: %s", c->serial, haul__conn_state_name(c->state), why);
    if (c->pipe)
        haul__pipe_conn_lost(c->pipe, c, error);
    /* Control frames of the batch never reached the peer, as far as we
     * know: the sessions that must repeat them queue them again. */
    for (int i = 0; i < c->nitems; i++)
        if (c->items[i].session && c->items[i].type != HAUL__F_CHUNK)
            haul__session_ctl_lost(c->items[i].session, c->items[i].type);
    c->dead = 1;
    if (c->rx_msg && c->rx_state == HAUL__RXS_CHUNK)
        haul__session_chunk_abandon(c->pipe, c->rx_msg, c->rx_index);
    handshake_over(c);
    haul__conn_enter(c, HAUL__CONNEV_CLOSE);
    haul__list_del(&c->idle_link);
    if (!c->engine->stopping)
        haul__conn_wake(c);
}

/* Tells the peer why in an ERROR frame, in one best-effort write, and
 * closes the connection. */
static void refuse(haul__conn *c, int code, const char *why)
{
    haul__log(c->engine, HAUL_LOG_WARN, "connection %u: %s; closing it", c->serial, why);
    uint8_t buf[HAUL__FRAME_HDR + 128];
    size_t n = strlen(why) < 128 ? strlen(why) : 128;
    haul__frame f = {.version = HAUL_PROTOCOL_VERSION,
                     .type = HAUL__F_ERROR,
                     .aux = (uint32_t)code,
                     .len = (uint32_t)n};
    haul__frame_encode(&f, buf);
    memcpy(buf + HAUL__FRAME_HDR, why, n);
    /* Only between frames: in the middle of one, it would be garbage.
     * Between frames no write of the batch waits to be retried, so the
     * transport may take other bytes (TLS: a record OpenSSL holds for a
     * retry must not be followed by others). The connection is going
     * anyway: errors are of no interest. */
    int between = c->nitems == 0 || (c->item_pos == 0 && c->item_done == 0);
    struct iovec iov = {.iov_base = buf, .iov_len = HAUL__FRAME_HDR + n};
    if (between && c->ops->writev(c, &iov, 1, 0) > 0)
        c->ops->flush(c);
    haul__conn_close(c, code, why);
}

static void protocol_error(haul__conn *c, int code, const char *why)
{
    c->engine->stats.protocol_errors++;
    refuse(c, code, why);
}

static void release_items(haul__conn *c)
{
    for (int i = 0; i < c->nitems; i++) {
        haul__tx_item *it = &c->items[i];
        if (it->msg)
            haul__message_unref(it->msg);
        if (it->session)
            haul__session_unref(it->session);
        free(it->buf);
    }
    c->nitems = 0;
}

/* Frees a dead connection: by its own thread, or by the engine when the
 * threads have stopped (mu held). */
void haul__conn_free(haul__conn *c)
{
    haul_engine *e = c->engine;
    handshake_over(c);
    haul__list_del(&c->all_link);
    haul__list_del(&c->wake_link);
    haul__list_del(&c->wait_link);
    e->nconns--;
    if (c->registered)
        epoll_ctl(c->loop->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    c->ops->shutdown(c);
    c->ops->free(c);
    close(c->fd);
    /* A listener paused for want of descriptors may have one now. */
    if (e->listeners_paused && e->handshaking < e->config.max_handshakes)
        haul__listeners_resume(e);
    if (c->rx_msg)
        haul__message_unref(c->rx_msg);
    release_items(c);
    free(c->ctlbuf);
    free(c);
}

/*
 * The deadlines of a connection (mu held, on loop 0, at the sweep): the
 * handshake's until it joins; then liveness. A joined connection that
 * has received nothing for idle_timeout_ms has a peer that is gone or a
 * path that is cut (a peer that lives writes at least its keepalives):
 * it closes with ETIMEDOUT, and the pipe handles it as any broken
 * connection. One that has written nothing for keepalive_ms and has no
 * batch under way writes a KEEPALIVE; one with a batch under way is
 * waiting for its peer to read, and its bytes will say enough (the end
 * of the batch is an event, after which the sweep looks again). Returns
 * the next of these deadlines.
 */
int64_t haul__conn_sweep(haul__conn *c, int64_t now)
{
    if (c->dead)
        return HAUL__NEVER;
    if (c->state != HAUL__CONN_JOINED) {
        if (now >= c->deadline) {
            haul__conn_close(c, HAUL_ETIMEDOUT, "handshake not finished in time");
            return HAUL__NEVER;
        }
        return c->deadline;
    }
    const haul_engine_config *cfg = &c->engine->config;
    int64_t next = HAUL__NEVER;
    int64_t rx = atomic_load_explicit(&c->last_rx, memory_order_relaxed);
    if (cfg->idle_timeout_ms && now - rx >= (int64_t)cfg->idle_timeout_ms) {
        char why[96];
        snprintf(why, sizeof(why), "nothing received for %lld ms", (long long)(now - rx));
        c->engine->stats.idle_timeouts++;
        haul__conn_close(c, HAUL_ETIMEDOUT, why);
        return HAUL__NEVER;
    }
    if (cfg->idle_timeout_ms)
        next = rx + (int64_t)cfg->idle_timeout_ms;
    int64_t tx = atomic_load_explicit(&c->last_tx, memory_order_relaxed);
    if (cfg->keepalive_ms && !c->keepalive_pending && c->nitems == 0) {
        if (now - tx >= (int64_t)cfg->keepalive_ms) {
            c->keepalive_pending = 1;
            haul__list_del(&c->idle_link);
            haul__conn_wake(c);
        } else if (tx + (int64_t)cfg->keepalive_ms < next) {
            next = tx + (int64_t)cfg->keepalive_ms;
        }
    }
    return next;
}

/* ---- receiving ------------------------------------------------------------ */

void haul__conn_stop_waiting(haul__conn *c)
{
    if (!c->rx_waiting)
        return;
    haul__list_del(&c->wait_link);
    c->rx_waiting = 0;
    /* It read nothing while it waited, and the edges that came meanwhile
     * are gone. */
    c->more_to_read = 1;
    haul__conn_wake(c);
}

/* A direct read into chunk rx_index of rx_msg ended (mu held): the
 * connections that waited to copy their bytes into the chunk go on. */
static void direct_read_ended(haul__conn *c)
{
    haul_message *m = c->rx_msg;
    m->rx_writing[c->rx_index] = 0;
    c->rx_writing = 0;
    while (!haul__list_empty(&m->rx_waiters))
        haul__conn_stop_waiting(
            HAUL__CONTAINER(haul__list_first(&m->rx_waiters), haul__conn, wait_link));
}

static void chunk_complete(haul__conn *c)
{
    haul_message *m = c->rx_msg;
    c->stats.chunks_received++;
    c->rx_msg = NULL;
    haul__rx_enter(c, HAUL__RXEV_PAYLOAD_DONE);
    haul__session_chunk_done(m->session, m, c->rx_index);
    haul__message_unref(m);
}

/* The thread of a server connection that joined its pipe (mu held): the
 * one with the fewest of the pipe's connections, so that they spread over
 * the threads as a client's do; the one it runs on when that is one of
 * them, so that it need not move. */
static haul__loop *join_loop(haul__pipe *pipe, haul__conn *c)
{
    haul_engine *e = c->engine;
    unsigned count[64] = {0}; /* io_threads is at most 64 */
    haul__list *p;
    haul__list_each(p, &pipe->members)
    {
        haul__conn *m = HAUL__CONTAINER(p, haul__conn, pipe_link);
        if (m != c && !m->dead)
            count[(m->move_to ? m->move_to : m->loop)->index]++;
    }
    haul__loop *best = c->loop;
    for (unsigned k = 0; k < e->nloops; k++) {
        haul__loop *l = &e->loops[((unsigned)pipe->loop->index + k) % e->nloops];
        if (count[l->index] < count[best->index])
            best = l;
    }
    return best;
}

static void on_hello(haul__conn *c, const uint8_t *payload)
{
    haul_engine *e = c->engine;
    const haul__frame *f = &c->cur;
    if (haul__hello_decode(payload, f->len) != 0) {
        protocol_error(c, HAUL_EPROTO, "not a haul peer");
        return;
    }
    if (c->server && c->over_limit) {
        /* Accepted beyond max_connections only to be told so (engine.c,
         * "Admission"): its client reports the server busy. */
        char why[96];
        snprintf(why, sizeof(why), "server busy: %u connections is its limit",
                 e->config.max_connections);
        refuse(c, HAUL_ELIMIT, why);
        return;
    }
    if (c->server) {
        haul__pipe *pipe = haul__pipe_server(e, f->seq, c->lconf);
        if (pipe == NULL) {
            haul__conn_close(c, HAUL_ENOMEM, "no memory for a pipe");
            return;
        }
        /* Every connection of a pipe speaks for one principal, the one
         * its sessions must have: a connection that names the pipe of
         * another (or a plain one a TLS pipe, or the reverse) is refused. */
        int secured = c->sec_state == HAUL__SEC_ESTABLISHED;
        if (pipe->has_members &&
            (pipe->secured != secured || strcmp(pipe->cert_principal, c->principal) != 0)) {
            char why[HAUL__PRINCIPAL_MAX * 2 + 100];
            snprintf(why, sizeof(why),
                     "a connection of principal \"%s\"%s asked to join a pipe of \"%s\"%s",
                     c->principal, secured ? "" : " (plain)", pipe->cert_principal,
                     pipe->secured ? "" : " (plain)");
            protocol_error(c, HAUL_ETLS, why);
            return;
        }
        if (pipe->peer_chunk && pipe->peer_chunk != f->offset) {
            protocol_error(c, HAUL_EPROTO, "chunk size differs within one pipe");
            return;
        }
        unsigned joined, max = secured ? haul__principal_limit(e, c->principal, &joined) : 0;
        if (max && joined >= max) {
            char why[HAUL__PRINCIPAL_MAX + 100];
            snprintf(why, sizeof(why), "principal \"%s\" has joined its %u connections",
                     c->principal, max);
            e->stats.principal_limited++;
            refuse(c, HAUL_ELIMIT, why);
            return;
        }
        if (!pipe->has_members) {
            pipe->has_members = 1;
            pipe->secured = secured;
            memcpy(pipe->cert_principal, c->principal, sizeof(pipe->cert_principal));
        }
        pipe->peer_chunk = (uint32_t)f->offset;
        c->pipe = pipe;
        c->index = f->aux;
        c->hello_pending = HAUL__F_HELLO_ACK;
        handshake_over(c);
        haul__conn_enter(c, HAUL__CONNEV_JOIN);
        haul__pipe_conn_joined(pipe, c);
        haul__loop *to = join_loop(pipe, c);
        if (to != c->loop)
            c->move_to = to;
    } else {
        /* Every connection of a pipe must cut messages alike: the
         * reassembly state of a message is laid out by chunk. */
        if (c->pipe->peer_chunk && c->pipe->peer_chunk != f->offset) {
            protocol_error(c, HAUL_EPROTO, "chunk size differs within one pipe");
            return;
        }
        c->pipe->peer_chunk = (uint32_t)f->offset;
        haul__conn_enter(c, HAUL__CONNEV_JOIN);
        haul__pipe_conn_joined(c->pipe, c);
    }
}

static void on_ctl(haul__conn *c, const uint8_t *payload)
{
    const haul__frame *f = &c->cur;
    switch (f->type) {
    case HAUL__F_HELLO:
    case HAUL__F_HELLO_ACK:
        on_hello(c, payload);
        return;
    case HAUL__F_KEEPALIVE:
        /* Its bytes have done their work: they reset the idle deadline. */
        c->engine->stats.keepalives_received++;
        return;
    case HAUL__F_ERROR: {
        char text[160];
        int code = haul__error_decode(f, payload, f->len, text, sizeof(text));
        char why[200];
        snprintf(why, sizeof(why), "the peer reported: %s", text);
        haul__log(c->engine, HAUL_LOG_WARN, "connection %u: %s", c->serial, why);
        haul__conn_close(c, code, why);
        return;
    }
    default:
        haul__session_on_frame(c->pipe, c, f, payload);
        return;
    }
}

/* A header arrived: decide where its payload goes. */
static void on_header(haul__conn *c, const uint8_t *hdr)
{
    const char *why = NULL;
    int rc = haul__frame_decode(hdr, &c->limits, &c->cur, &why);
    if (rc) {
        protocol_error(c, rc, why);
        return;
    }
    const haul__frame *f = &c->cur;
    if (c->state == HAUL__CONN_HELLO) {
        int expect = c->server ? HAUL__F_HELLO : HAUL__F_HELLO_ACK;
        if (f->type != expect && f->type != HAUL__F_ERROR) {
            protocol_error(c, HAUL_EPROTO, "frame before the hello");
            return;
        }
    } else if (c->state != HAUL__CONN_JOINED) {
        protocol_error(c, HAUL_EPROTO, "frame before the handshake");
        return;
    } else if (f->type == HAUL__F_HELLO || f->type == HAUL__F_HELLO_ACK) {
        protocol_error(c, HAUL_EPROTO, "hello repeated");
        return;
    }

    if (f->type == HAUL__F_CHUNK) {
        haul_message *m;
        uint32_t index;
        rc = haul__session_chunk_begin(c->pipe, c, f, &m, &index);
        if (rc < 0) {
            protocol_error(c, HAUL_EPROTO, "chunk does not fit its message");
            return;
        }
        c->rx_left = f->len;
        if (rc == 1) {
            if (f->len)
                haul__rx_enter(c, HAUL__RXEV_DISCARD_HEADER);
            return;
        }
        c->rx_msg = m;
        c->rx_index = index;
        c->rx_off = f->offset;
        haul__rx_enter(c, HAUL__RXEV_CHUNK_HEADER);
        c->engine->stats.bytes_received += f->len;
        c->stats.bytes_received += f->len;
        if (f->len == 0)
            chunk_complete(c);
        return;
    }
    if (f->len > 0) {
        if (c->ctlbuf == NULL && (c->ctlbuf = malloc(HAUL__CTL_PAYLOAD_MAX)) == NULL) {
            haul__conn_close(c, HAUL_ENOMEM, "no memory for a control frame");
            return;
        }
        c->rx_left = f->len;
        c->rx_off = 0;
        haul__rx_enter(c, HAUL__RXEV_CTL_HEADER);
        return;
    }
    on_ctl(c, NULL);
}

/* Consumes what the buffer holds (mu held). */
static void parse(haul__conn *c)
{
    /* A connection that joined its pipe on another thread stops here: the
     * rest is parsed on that thread, which owns it from then on. One
     * waiting for another's direct read into its chunk stops too. */
    while (!c->dead && !c->move_to && !c->rx_waiting) {
        size_t avail = c->rx_have - c->rx_pos;
        const uint8_t *at = c->rxbuf + c->rx_pos;
        if (c->rx_state == HAUL__RXS_HEADER) {
            if (avail < HAUL__FRAME_HDR)
                break;
            c->rx_pos += HAUL__FRAME_HDR;
            on_header(c, at);
            continue;
        }
        size_t take = avail < c->rx_left ? avail : (size_t)c->rx_left;
        if (take == 0)
            break;
        if (c->rx_state == HAUL__RXS_CHUNK && c->rx_msg->rx_writing[c->rx_index]) {
            /* Another connection reads a copy of the chunk straight into
             * these bytes now, on its own thread: the bytes wait in the
             * buffer until it has done (direct_read_ended). */
            c->rx_waiting = 1;
            haul__list_add_tail(&c->rx_msg->rx_waiters, &c->wait_link);
            break;
        }
        if (c->rx_state == HAUL__RXS_CHUNK)
            memcpy(c->rx_msg->data + c->rx_off, at, take);
        else if (c->rx_state == HAUL__RXS_CTL)
            memcpy(c->ctlbuf + c->rx_off, at, take);
        c->rx_pos += take;
        c->rx_off += take;
        c->rx_left -= take;
        if (c->rx_left > 0)
            continue;
        if (c->rx_state == HAUL__RXS_CHUNK) {
            chunk_complete(c);
        } else if (c->rx_state == HAUL__RXS_CTL) {
            haul__rx_enter(c, HAUL__RXEV_PAYLOAD_DONE);
            on_ctl(c, c->ctlbuf);
        } else {
            haul__rx_enter(c, HAUL__RXEV_PAYLOAD_DONE);
        }
    }
    if (c->rx_pos == c->rx_have)
        c->rx_pos = c->rx_have = 0;
}

static void do_read(haul__conn *c)
{
    haul_engine *e = c->engine;
    for (unsigned turn = 0; turn < c->ops->read_turns; turn++) {
        pthread_mutex_lock(&e->mu);
        if (c->dead || !haul__conn_carries_frames(c->state) || c->debug_frozen == 1 ||
            c->rx_waiting) {
            pthread_mutex_unlock(&e->mu);
            return;
        }
        /* Bytes that wait in the buffer go first: those of a connection
         * that waited for another's direct read (and may since have been
         * told to discard its copy), or that a readiness event reached
         * before the wake that would have parsed them. A full buffer
         * would read as the end of the stream. */
        if (c->rx_have > c->rx_pos) {
            parse(c);
            if (c->dead || c->rx_waiting || c->move_to) {
                pthread_mutex_unlock(&e->mu);
                return;
            }
        }
        uint8_t *dst;
        size_t want;
        /* Straight into the message only while this connection reads the
         * chunk alone and no direct read of another is still writing it
         * (a connection closed from outside in the middle of one). */
        int direct = c->rx_state == HAUL__RXS_CHUNK && c->rx_pos == c->rx_have &&
                     c->rx_left >= DIRECT_MIN && c->rx_msg != NULL &&
                     c->rx_msg->rx_state[c->rx_index] == HAUL__RX_CLAIMED &&
                     !c->rx_msg->rx_writing[c->rx_index];
        if (direct) {
            dst = c->rx_msg->data + c->rx_off;
            want = (size_t)c->rx_left;
            c->rx_msg->rx_writing[c->rx_index] = 1;
            c->rx_writing = 1;
        } else {
            if (c->rx_pos > 0) {
                memmove(c->rxbuf, c->rxbuf + c->rx_pos, c->rx_have - c->rx_pos);
                c->rx_have -= c->rx_pos;
                c->rx_pos = 0;
            }
            dst = c->rxbuf + c->rx_have;
            want = sizeof(c->rxbuf) - c->rx_have;
        }
        pthread_mutex_unlock(&e->mu);

        ssize_t n = c->ops->read(c, dst, want);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            int again = errno == EINTR;
            if (direct) {
                pthread_mutex_lock(&e->mu);
                direct_read_ended(c);
                pthread_mutex_unlock(&e->mu);
            }
            if (again)
                continue;
            return;
        }
        char why[480];
        int code = HAUL_ECONNRESET;
        int own = 0;
        if (n == 0) {
            snprintf(why, sizeof(why), "closed by the peer");
        } else if (n < 0 && (own = c->ops->error(c, errno, why, sizeof(why))) != 0) {
            code = own;
        } else if (n < 0) {
            snprintf(why, sizeof(why), "%s", strerror(errno));
        }
        if (n > 0)
            atomic_store_explicit(&c->last_rx, haul__now_ms(), memory_order_relaxed);
        pthread_mutex_lock(&e->mu);
        if (direct)
            direct_read_ended(c);
        if (n <= 0) {
            if (own)
                haul__log(e, HAUL_LOG_WARN, "connection %u: %s", c->serial, why);
            haul__conn_close(c, code, why);
            pthread_mutex_unlock(&e->mu);
            return;
        }
        if (!c->dead) {
            if (direct) {
                c->rx_off += (uint64_t)n;
                c->rx_left -= (uint64_t)n;
                if (c->rx_left == 0 && c->rx_state == HAUL__RXS_CHUNK)
                    chunk_complete(c);
            } else {
                c->rx_have += (size_t)n;
            }
            parse(c);
        }
        int moving = c->move_to != NULL;
        pthread_mutex_unlock(&e->mu);
        /* Edge-triggered: a short read drained the socket, and the next
         * arrival raises a new edge. Not so the peer's FIN: it came with
         * an edge already taken (EPOLLRDHUP), and no other follows, so
         * once it was seen the socket is read until recv() says EOF. On
         * TLS a short read says nothing (a read returns one record, and
         * OpenSSL may hold more): it is read until SSL_read() wants the
         * socket to be readable, which is the next edge. */
        if (moving || (c->ops->short_read_drains && (size_t)n < want && !c->rx_hup))
            return;
    }
    pthread_mutex_lock(&e->mu);
    c->more_to_read = 1;
    haul__conn_wake(c);
    pthread_mutex_unlock(&e->mu);
}

/* ---- sending -------------------------------------------------------------- */

static uint64_t item_size(const haul__tx_item *it)
{
    return HAUL__FRAME_HDR + (uint64_t)it->len;
}

static const uint8_t *item_payload(haul__conn *c, const haul__tx_item *it)
{
    if (it->type == HAUL__F_CHUNK)
        return it->msg->data + it->offset;
    if (it->type == HAUL__F_HELLO || it->type == HAUL__F_HELLO_ACK)
        return (const uint8_t *)HAUL__HELLO_MAGIC;
    return it->buf;
}

static int is_file(const haul__tx_item *it)
{
    return it->type == HAUL__F_CHUNK && it->msg->kind == HAUL__BODY_FILE;
}

/* What completes the frame of a file that fell short. */
static const uint8_t zeros[16384];

/* Takes the next frames to write (mu held). Returns how many. */
static int take_batch(haul__conn *c)
{
    c->nitems = 0;
    c->item_pos = 0;
    c->item_done = 0;
    if (c->hello_pending) {
        haul__tx_item *it = &c->items[0];
        memset(it, 0, sizeof(*it));
        it->type = c->hello_pending;
        it->len = HAUL__HELLO_MAGIC_LEN;
        haul__frame f = {.version = HAUL_PROTOCOL_VERSION,
                         .type = (uint8_t)c->hello_pending,
                         .len = HAUL__HELLO_MAGIC_LEN,
                         .aux = c->index,
                         .seq = c->pipe ? c->pipe->id : 0,
                         .offset = c->pipe ? c->pipe->chunk : c->engine->config.chunk_size};
        haul__frame_encode(&f, c->headers[0]);
        c->nitems = 1;
        c->hello_pending = 0;
    }
    if (c->keepalive_pending && c->state == HAUL__CONN_JOINED) {
        /* First in the batch, ahead of any chunk. */
        haul__tx_item *it = &c->items[c->nitems];
        memset(it, 0, sizeof(*it));
        it->type = HAUL__F_KEEPALIVE;
        haul__frame f = {.version = HAUL_PROTOCOL_VERSION, .type = HAUL__F_KEEPALIVE};
        haul__frame_encode(&f, c->headers[c->nitems]);
        c->nitems++;
    }
    c->keepalive_pending = 0;
    if (c->state == HAUL__CONN_JOINED && c->pipe)
        haul__pipe_fill(c->pipe, c);
    return c->nitems;
}

/* Counts what the socket took (owning thread), a write of the
 * transport having taken n bytes since. */
static void wire_moved(haul__conn *c, uint64_t n)
{
    uint64_t held;
    atomic_store_explicit(&c->wire_sent, c->ops->wire(c, n, &held), memory_order_relaxed);
}

/* Where the stream stands once everything written so far reaches the
 * socket (owning thread). */
static uint64_t wire_end(haul__conn *c)
{
    uint64_t held = 0;
    return c->ops->wire(c, 0, &held) + held;
}

/* The batch is all written (mu held): the frames reach their next state. */
static void batch_written(haul__conn *c)
{
    haul_engine *e = c->engine;
    int64_t now = 0;
    uint64_t end = wire_end(c);
    for (int i = 0; i < c->nitems; i++) {
        haul__tx_item *it = &c->items[i];
        c->stats.bytes_sent += item_size(it);
        if (it->type == HAUL__F_CHUNK) {
            c->stats.chunks_sent++;
            e->stats.bytes_sent += it->len;
            chunk_went_out(it);
            /* Progress for the message timeout: with bounded socket
             * buffers, a chunk is written whole only as the peer takes
             * the bytes before it. */
            if (now == 0)
                now = haul__now_ms();
            it->session->progress = now;
            /* Where the chunk ends in the stream, for hedging, unless
             * another copy of it has been taken since. */
            if (it->msg->carrier[it->chunk_index] == c->serial)
                it->msg->tx[it->chunk_index].pos = end;
            haul__message_unref(it->msg);
            it->msg = NULL;
        } else if (it->type == HAUL__F_KEEPALIVE) {
            e->stats.keepalives_sent++;
        } else if (it->session) {
            haul__session_ctl_written(it->session, it->type);
        }
        if (it->session)
            haul__session_unref(it->session);
        it->session = NULL;
        free(it->buf);
        it->buf = NULL;
    }
    c->nitems = 0;
}

/* Writes from the current item on: a gather list of what lies in memory
 * from the write position up to the body of a file, or that body. Returns
 * bytes taken, or -1 with errno; tx_short is set when a file fell short. */
static ssize_t write_some(haul__conn *c)
{
    haul__tx_item *it = &c->items[c->item_pos];
    if (is_file(it) && c->item_done >= HAUL__FRAME_HDR) {
        uint64_t done = c->item_done - HAUL__FRAME_HDR;
        if (it->pad) {
            size_t n = it->len - done < sizeof(zeros) ? (size_t)(it->len - done) : sizeof(zeros);
            struct iovec z = {.iov_base = (void *)zeros, .iov_len = n};
            return c->ops->writev(c, &z, 1, 0);
        }
        off_t off = it->msg->file_offset + (off_t)(it->offset + done);
        ssize_t n = c->ops->write_file(c, it->msg->fd, off, it->len - done);
        if (n == 0) {
            /* The file shrank under us, or cannot be read
             * (file_fell_short). */
            c->tx_short = c->item_pos + 1;
            errno = EIO;
            return -1;
        }
        return n;
    }
    struct iovec iov[2 * HAUL__TX_BATCH];
    int niov = 0;
    int more = 0;
    uint64_t skip = c->item_done;
    for (int i = c->item_pos; i < c->nitems; i++) {
        haul__tx_item *x = &c->items[i];
        const uint8_t *hdr = c->headers[i];
        if (skip < HAUL__FRAME_HDR) {
            iov[niov].iov_base = (void *)(hdr + skip);
            iov[niov].iov_len = HAUL__FRAME_HDR - skip;
            niov++;
            skip = 0;
        } else {
            skip -= HAUL__FRAME_HDR;
        }
        if (is_file(x)) {
            /* Its body follows at once, from the file. */
            more = 1;
            break;
        }
        if (x->len > skip) {
            iov[niov].iov_base = (void *)(item_payload(c, x) + skip);
            iov[niov].iov_len = x->len - skip;
            niov++;
        }
        skip = 0;
    }
    return c->ops->writev(c, iov, niov, more);
}

/*
 * The file of a chunk being written gave fewer bytes than its header
 * promised: it shrank, or could not be read. Its message fails with
 * HAUL_EIO, and so does its session, since delivery is in order; the peer
 * gets an ABORT. The frame is completed with zeros when some chunk of the
 * message was never taken for sending: the receiver can then never
 * complete the message, and drops what it has of it with the aborted
 * session, while the connection stays in step for the pipe's other
 * sessions. A frame that might complete the message is cut instead, with
 * the connection. Returns 0 when the batch goes on, -1 when the
 * connection closed.
 */
static int file_fell_short(haul__conn *c)
{
    haul_engine *e = c->engine;
    pthread_mutex_lock(&e->mu);
    haul__tx_item *it = &c->items[c->tx_short - 1];
    haul_message *m = it->msg;
    c->tx_short = 0;
    if (m->session != NULL && m->session == it->session) {
        haul__log(e, HAUL_LOG_WARN,
                  "session %u: the file of message %llu shrank while it was sent; failing the "
                  "session with EIO",
                  it->session->id, (unsigned long long)m->seq);
        haul__session_fail(it->session, HAUL_EIO, 1);
    }
    int pad = m->taken_end < m->nchunks;
    if (pad)
        it->pad = 1;
    else
        haul__conn_close(c, HAUL_EIO, "the file of a message shrank under its last chunk");
    pthread_mutex_unlock(&e->mu);
    return pad ? 0 : -1;
}

static void write_failed(haul__conn *c)
{
    haul_engine *e = c->engine;
    char why[480];
    int code = errno == EIO ? HAUL_EIO : HAUL_ECONNRESET;
    int own = c->ops->error(c, errno, why, sizeof(why));
    if (own)
        code = own;
    else
        snprintf(why, sizeof(why), "write failed: %s", strerror(errno));
    pthread_mutex_lock(&e->mu);
    haul__conn_close(c, code, why);
    pthread_mutex_unlock(&e->mu);
}

/* The connection stops writing for now, and what its transport keeps of
 * the bytes taken goes to the socket. Returns 0, or -1 when the
 * connection broke and was closed. A full socket is no failure: its next
 * EPOLLOUT edge brings do_write() back, and with it the next flush. */
static int pause_writing(haul__conn *c)
{
    int rc = c->ops->flush(c);
    int err = errno;
    wire_moved(c, 0);
    errno = err;
    if (rc == 0 || errno == EAGAIN)
        return 0;
    write_failed(c);
    return -1;
}

/* Whether the batch carries a chunk (test hook of haul__debug_freeze). */
static int batch_has_chunk(const haul__conn *c)
{
    for (int i = 0; i < c->nitems; i++)
        if (c->items[i].type == HAUL__F_CHUNK)
            return 1;
    return 0;
}

static void do_write(haul__conn *c)
{
    haul_engine *e = c->engine;
    for (int turn = 0; turn < WRITE_TURNS; turn++) {
        pthread_mutex_lock(&e->mu);
        if (c->dead || !haul__conn_carries_frames(c->state) || c->debug_frozen == 1) {
            pthread_mutex_unlock(&e->mu);
            return;
        }
        if (c->nitems == 0 && take_batch(c) == 0) {
            /* Most recently idle first: its congestion window is the
             * freshest. One that declined chunks goes last. */
            if (c->state == HAUL__CONN_JOINED && c->pipe && !haul__list_linked(&c->idle_link)) {
                if (c->declined)
                    haul__list_add_tail(&c->pipe->idle, &c->idle_link);
                else
                    haul__list_add_head(&c->pipe->idle, &c->idle_link);
            }
            pthread_mutex_unlock(&e->mu);
            pause_writing(c);
            return;
        }
        /* Test hook: the batch is lost with its connection, as if the
         * network broke before any of it was written. */
        int inject = e->debug_fail_writes > 0 && c->state == HAUL__CONN_JOINED;
        if (inject)
            e->debug_fail_writes--;
        /* Test hook: a batch with a chunk stays, unwritten. */
        int stall = c->debug_frozen == 2 && batch_has_chunk(c);
        pthread_mutex_unlock(&e->mu);
        if (inject) {
            errno = EPIPE;
            write_failed(c);
            return;
        }
        if (stall)
            return;
        while (c->item_pos < c->nitems) {
            ssize_t n = write_some(c);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return; /* the next EPOLLOUT edge brings us back */
            if (n < 0 && c->tx_short) {
                if (file_fell_short(c) == 0)
                    continue;
                return;
            }
            if (n < 0) {
                write_failed(c);
                return;
            }
            if (n > 0) {
                atomic_store_explicit(&c->last_tx, haul__now_ms(), memory_order_relaxed);
                wire_moved(c, (uint64_t)n);
            }
            uint64_t left = (uint64_t)n;
            while (left > 0) {
                uint64_t rem = item_size(&c->items[c->item_pos]) - c->item_done;
                if (left >= rem) {
                    left -= rem;
                    c->item_pos++;
                    c->item_done = 0;
                } else {
                    c->item_done += left;
                    left = 0;
                }
            }
        }
        pthread_mutex_lock(&e->mu);
        if (!c->dead)
            batch_written(c);
        pthread_mutex_unlock(&e->mu);
    }
    /* Others on this thread get their turn; we come back through the wake
     * list. */
    if (pause_writing(c) < 0)
        return;
    pthread_mutex_lock(&e->mu);
    haul__conn_wake(c);
    pthread_mutex_unlock(&e->mu);
}

/* ---- events from the loop ---------------------------------------------------- */

/* After any I/O: free a dead connection, or move a server connection to
 * the thread of the pipe it joined (mu held). Returns 1 if c is gone. */
static int settle(haul__conn *c)
{
    if (c->dead) {
        haul__conn_free(c);
        return 1;
    }
    if (c->move_to) {
        haul__loop *from = c->loop;
        c->loop = c->move_to;
        c->move_to = NULL;
        haul__list_del(&c->wake_link);
        epoll_ctl(from->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.ptr = c};
        epoll_ctl(c->loop->epfd, EPOLL_CTL_ADD, c->fd, &ev);
        haul__conn_wake(c);
        return 1;
    }
    return 0;
}

static void dialled(haul__conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err == EINPROGRESS || err == EALREADY)
        return;
    if (err) {
        char why[128];
        snprintf(why, sizeof(why), "connect failed: %s", strerror(err));
        haul__conn_close(
            c, err == ECONNREFUSED || err == ENOENT ? HAUL_ECONNREFUSED : HAUL_ECONNRESET, why);
        return;
    }
    haul__conn_enter(c, HAUL__CONNEV_CONNECTED);
    haul__pipe_conn_connected(c->pipe, c);
    if (conn_secure(c))
        conn_secured(c);
}

/* SECURING with a handshake (SEC_HANDSHAKING): one step of it, without
 * the engine's mutex (it computes and verifies signatures); once the peer
 * is accepted (SEC_ESTABLISHED), the connection goes on to CONN_HELLO. */
static void secure_step(haul__conn *c)
{
    haul_engine *e = c->engine;
    char why[480];
    int rc = c->ops->handshake(c, why, sizeof(why));
    if (rc == 0)
        return;
    pthread_mutex_lock(&e->mu);
    if (!c->dead && c->state == HAUL__CONN_SECURING) {
        if (rc > 0) {
            char what[160];
            c->ops->describe(c, what, sizeof(what));
            haul__log(e, HAUL_LOG_DEBUG, "connection %u: %s%s%s", c->serial, what,
                      c->server ? ", principal " : "", c->server ? c->principal : "");
            conn_secured(c);
        } else {
            e->stats.tls_refused++;
            haul__log(e, HAUL_LOG_WARN, "connection %u (%s): %s", c->serial,
                      c->server ? "accepted" : "dialled", why);
            haul__conn_close(c, HAUL_ETLS, why);
        }
    }
    pthread_mutex_unlock(&e->mu);
}

void haul__conn_io(haul__conn *c, uint32_t events)
{
    haul_engine *e = c->engine;
    pthread_mutex_lock(&e->mu);
    if (c->state == HAUL__CONN_DIALING && !c->dead && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
        dialled(c);
    int dead = c->dead;
    int securing =
        !dead && c->state == HAUL__CONN_SECURING && c->sec_state == HAUL__SEC_HANDSHAKING;
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->rx_hup = 1;
    pthread_mutex_unlock(&e->mu);
    /* The handshake reads ahead: the step that completes it may take the
     * peer's first records (its HELLO) off the socket with the last
     * handshake message. No edge announces bytes that the transport
     * holds, and this event may have been EPOLLOUT alone, so they are
     * read now. */
    int held = 0;
    if (securing) {
        secure_step(c);
        held = c->ops->pending(c);
    }
    /* A read that had to write first goes on when the socket can. */
    int read_for_write = (events & EPOLLOUT) && c->ops->read_waits_write(c);
    if (!dead &&
        (held || read_for_write || (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))))
        do_read(c);
    if (!dead)
        do_write(c);
    pthread_mutex_lock(&e->mu);
    settle(c);
    pthread_mutex_unlock(&e->mu);
}

void haul__conn_handle_wake(haul__conn *c)
{
    haul_engine *e = c->engine;
    pthread_mutex_lock(&e->mu);
    if (settle(c)) {
        pthread_mutex_unlock(&e->mu);
        return;
    }
    /* Frames left in the buffer by the thread this connection came from. */
    if (c->rx_have > c->rx_pos)
        parse(c);
    int more = c->more_to_read;
    c->more_to_read = 0;
    int live = haul__conn_carries_frames(c->state) && !c->dead;
    pthread_mutex_unlock(&e->mu);
    /* The transport may hold bytes it read already, which no edge
     * announces: those a connection left when it moved here from another
     * thread. */
    if (live && c->ops->pending(c))
        more = 1;
    if (more)
        do_read(c);
    do_write(c);
    pthread_mutex_lock(&e->mu);
    settle(c);
    pthread_mutex_unlock(&e->mu);
}
