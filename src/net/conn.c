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
 * CONN_SECURING is the slot of the encryption and authentication state
 * machine (net/secure_fsm.h, net/tls.c), which starts on entering it: a
 * plain connection goes to SEC_PLAIN and passes through at once; a TLS
 * connection runs its handshake there (SEC_HANDSHAKING, SEC_VERIFYING),
 * driven by readiness events without the engine's mutex, and says HELLO
 * only in SEC_ESTABLISHED, when the peer is authenticated. The reads and
 * writes below end it: the end of the stream or a close_notify leads to
 * SEC_CLOSING, a record error to SEC_FAILED.
 *
 * Receiving (the socket I/O state machine, net/conn_fsm.c): RXS_HEADER ->
 * RXS_CHUNK | RXS_CTL | RXS_DISCARD -> RXS_HEADER. Payloads of large chunks are read straight into
 * the message with recv() (SSL_read() on TLS, which decrypts into it from OpenSSL's read-ahead
 * buffer); everything else goes through a 16 KiB buffer.
 *
 * Sending on TLS: SSL_write() of the payload of a large chunk in place,
 * and of everything else (headers, control frames, file bodies read with
 * pread()) through a per-connection bounce buffer. After SSL_write() asks
 * to be retried, the retry passes the same bytes, as OpenSSL requires: the
 * write position does not move until a write succeeds. The records gather
 * in a write buffer under OpenSSL (net/tls.c) that leaves for the socket
 * when full, and is flushed whenever the connection stops writing: it has
 * nothing more to send, or lets others have their turn.
 *
 * Liveness: a joined connection that has written nothing for keepalive_ms
 * writes a KEEPALIVE, and one that has received nothing for
 * idle_timeout_ms is closed with ETIMEDOUT (haul__conn_sweep), so that a
 * peer that falls silent without a reset is found out while the pipe is
 * idle too.
 *
 * Threads: only the loop thread that owns the connection reads, writes or
 * frees it. Other threads may close it (mark it dead) under the engine's
 * mutex; the owner then tears it down.
 */
#include <assert.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/engine.h"
#include "net/payload.h"

_Static_assert(HAUL__CONN_NULL == 0 && HAUL__RXS_HEADER == 0 && HAUL__SEC_NULL == 0,
               "a connection made with calloc() stands in the first state of each machine");
_Static_assert(HAUL__CONN_STATE_COUNT_ <=
                   sizeof(((haul_engine_stats *)0)->conn_state_entered) / sizeof(uint64_t),
               "haul_engine_stats.conn_state_entered has room for every state");
_Static_assert(HAUL__RXS_COUNT_ <=
                   sizeof(((haul_engine_stats *)0)->rx_state_entered) / sizeof(uint64_t),
               "haul_engine_stats.rx_state_entered has room for every state");

/* The most bytes one connection reads, or batches it writes, before it
 * lets the other connections of its thread have a turn. */
#define READ_TURNS 16
#define WRITE_TURNS 8

/* Payload left of a chunk at or above which it is read straight into the
 * message rather than through the buffer. */
#define DIRECT_MIN 8192

/* TLS: SSL_read() returns one record (16 KiB) at most, so a TLS connection
 * takes more turns for the same bytes. The bounce buffer of a connection's
 * writes, and the payload left at or above which a chunk in memory is
 * written in place instead. */
#define TLS_READ_TURNS (READ_TURNS * 8)
#define TLS_BOUNCE (64 * 1024)
#define TLS_DIRECT_MIN 16384

/* sendfile() and OpenSSL's writes raise SIGPIPE on a broken connection; the I/O threads block
 * it, and a pending one is taken here so that it never reaches the
 * application. */
static void consume_sigpipe(void)
{
    /* errno stays as the failed write left it: sigtimedwait() ends with
     * EAGAIN, which would read as "try again later". */
    int saved = errno;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&set, NULL, &zero) > 0) {
    }
    errno = saved;
}

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
    c->loop = pipe ? pipe->loop : &e->loops[e->next_loop++ % e->nloops];
    haul__list_add_tail(&e->conns, &c->all_link);
    e->nconns++;
    return c;
}

/* CONN_SECURING begins, and with it the security state machine. A plain
 * connection is secured at once (returns 1); a TLS one waits for its
 * handshake, which readiness events drive (secure_step). */
static int conn_secure(haul__conn *c)
{
    haul__secure_enter(c, c->ssl ? HAUL__SECEV_START : HAUL__SECEV_PLAIN);
    return c->sec_state == HAUL__SEC_PLAIN;
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
    int tls_rc = c->tls_ctx ? haul__tls_conn_init(c) : 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(c->loop->epfd, EPOLL_CTL_ADD, c->fd, &ev) == 0)
        c->registered = 1;
    if (tls_rc) {
        haul__conn_close(c, tls_rc, "no memory for TLS");
        return;
    }
    if (!connecting && conn_secure(c))
        conn_secured(c);
}

/* An accepted connection leaves the count of handshakes in progress. */
static void handshake_over(haul__conn *c)
{
    if (c->handshaking) {
        c->handshaking = 0;
        c->engine->handshaking--;
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
    /* Only between frames: in the middle of one, it would be garbage. On
     * TLS, only between records too: a write OpenSSL holds for a retry
     * must not be followed by other bytes. */
    int between = c->nitems == 0 || (c->item_pos == 0 && c->item_done == 0);
    if (c->ssl) {
        size_t written;
        if (between && c->sec_state == HAUL__SEC_ESTABLISHED && !c->tls_write_pending &&
            c->tx_buf_off == c->tx_buf_len) {
            /* The connection is going anyway: errors are of no interest. */
            if (SSL_write_ex(c->ssl, buf, HAUL__FRAME_HDR + n, &written) == 1)
                haul__tls_flush(c);
            ERR_clear_error();
            consume_sigpipe();
        }
    } else if (between && send(c->fd, buf, HAUL__FRAME_HDR + n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* The connection is going anyway. */
    }
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
    e->nconns--;
    if (c->registered)
        epoll_ctl(c->loop->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->ssl) {
        /* A close_notify, best effort, while the engine runs: the
         * connection's own thread frees it then, and that thread blocks
         * SIGPIPE; haul_engine_free() runs on the application's, which
         * may not. In SEC_CLOSING it answers the peer's. Not in the
         * middle of a record that OpenSSL holds for a retry, which the
         * alert may not follow. */
        int live = c->sec_state == HAUL__SEC_ESTABLISHED || c->sec_state == HAUL__SEC_CLOSING;
        if (live && !c->tls_write_pending && !e->stopping) {
            SSL_shutdown(c->ssl);
            ERR_clear_error();
            consume_sigpipe();
            if (c->sec_state == HAUL__SEC_ESTABLISHED)
                haul__secure_enter(c, HAUL__SECEV_CLOSE_SENT);
        }
        haul__tls_conn_fini(c);
    }
    free(c->tx_buf);
    close(c->fd);
    if (c->rx_msg)
        haul__message_unref(c->rx_msg);
    release_items(c);
    free(c->ctlbuf);
    free(c);
}

/*
 * The deadlines of a connection (mu held, on loop 0, every 20 ms): the
 * handshake's until it joins; then liveness. A joined connection that
 * has received nothing for idle_timeout_ms has a peer that is gone or a
 * path that is cut (a peer that lives writes at least its keepalives):
 * it closes with ETIMEDOUT, and the pipe handles it as any broken
 * connection. One that has written nothing for keepalive_ms and has no
 * batch under way writes a KEEPALIVE; one with a batch under way is
 * waiting for its peer to read, and its bytes will say enough.
 */
void haul__conn_sweep(haul__conn *c, int64_t now)
{
    if (c->dead)
        return;
    if (c->state != HAUL__CONN_JOINED) {
        if (now >= c->deadline)
            haul__conn_close(c, HAUL_ETIMEDOUT, "handshake not finished in time");
        return;
    }
    const haul_engine_config *cfg = &c->engine->config;
    int64_t rx = atomic_load_explicit(&c->last_rx, memory_order_relaxed);
    if (cfg->idle_timeout_ms && now - rx >= (int64_t)cfg->idle_timeout_ms) {
        char why[96];
        snprintf(why, sizeof(why), "nothing received for %lld ms", (long long)(now - rx));
        c->engine->stats.idle_timeouts++;
        haul__conn_close(c, HAUL_ETIMEDOUT, why);
        return;
    }
    int64_t tx = atomic_load_explicit(&c->last_tx, memory_order_relaxed);
    if (cfg->keepalive_ms && now - tx >= (int64_t)cfg->keepalive_ms && !c->keepalive_pending &&
        c->nitems == 0) {
        c->keepalive_pending = 1;
        haul__list_del(&c->idle_link);
        haul__conn_wake(c);
    }
}

/* ---- receiving ------------------------------------------------------------ */

static void chunk_complete(haul__conn *c)
{
    haul_message *m = c->rx_msg;
    c->stats.chunks_received++;
    c->rx_msg = NULL;
    haul__rx_enter(c, HAUL__RXEV_PAYLOAD_DONE);
    haul__session_chunk_done(m->session, m, c->rx_index);
    haul__message_unref(m);
}

static void on_hello(haul__conn *c, const uint8_t *payload)
{
    haul_engine *e = c->engine;
    const haul__frame *f = &c->cur;
    if (haul__hello_decode(payload, f->len) != 0) {
        protocol_error(c, HAUL_EPROTO, "not a haul peer");
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
        if (pipe->loop != c->loop)
            c->move_to = pipe->loop;
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
    /* A connection that joined a pipe of another thread stops here: the
     * rest is parsed on that thread, where the pipe's other connections
     * are. */
    while (!c->dead && !c->move_to) {
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

/* recv(), or SSL_read() on TLS, with recv()'s results: bytes, 0 at the
 * end, or -1 with errno (EAGAIN to wait for the next edge; EPROTO for a
 * TLS error, whose text is then left on OpenSSL's queue). */
static ssize_t conn_recv(haul__conn *c, void *dst, size_t want)
{
    if (c->ssl == NULL)
        return recv(c->fd, dst, want, 0);
    if (c->sec_state != HAUL__SEC_ESTABLISHED) {
        errno = EPROTO;
        return -1;
    }
    size_t n;
    ERR_clear_error();
    errno = 0;
    c->tls_read_wants_write = 0;
    if (SSL_read_ex(c->ssl, dst, want, &n) == 1)
        return (ssize_t)n;
    switch (SSL_get_error(c->ssl, 0)) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        /* TLS may have to answer (a key update) before it reads on. */
        c->tls_read_wants_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        /* The peer's close_notify, or (SSL_OP_IGNORE_UNEXPECTED_EOF) the
         * end of the stream without one. */
        haul__secure_enter(c, HAUL__SECEV_CLOSE_RECEIVED);
        return 0;
    case SSL_ERROR_SYSCALL:
        haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
        if (ERR_peek_error() != 0) {
            errno = EPROTO;
            return -1;
        }
        if (errno == 0)
            return 0;
        consume_sigpipe();
        return -1;
    default:
        haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
        consume_sigpipe();
        errno = EPROTO;
        return -1;
    }
}

static void do_read(haul__conn *c)
{
    haul_engine *e = c->engine;
    int turns = c->ssl ? TLS_READ_TURNS : READ_TURNS;
    for (int turn = 0; turn < turns; turn++) {
        pthread_mutex_lock(&e->mu);
        if (c->dead || !haul__conn_carries_frames(c->state) || c->debug_frozen == 1) {
            pthread_mutex_unlock(&e->mu);
            return;
        }
        uint8_t *dst;
        size_t want;
        int direct = c->rx_state == HAUL__RXS_CHUNK && c->rx_pos == c->rx_have &&
                     c->rx_left >= DIRECT_MIN && c->rx_msg != NULL;
        if (direct) {
            dst = c->rx_msg->data + c->rx_off;
            want = (size_t)c->rx_left;
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

        ssize_t n = conn_recv(c, dst, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        char why[480];
        int code = HAUL_ECONNRESET;
        if (n == 0) {
            snprintf(why, sizeof(why), "closed by the peer");
        } else if (n < 0 && c->ssl && errno == EPROTO) {
            /* An alert from the peer (say, our certificate refused) or a
             * record that does not authenticate. */
            haul__tls_error_text(c, why, sizeof(why));
            code = HAUL_ETLS;
        } else if (n < 0) {
            snprintf(why, sizeof(why), "%s", strerror(errno));
        }
        if (n > 0)
            atomic_store_explicit(&c->last_rx, haul__now_ms(), memory_order_relaxed);
        pthread_mutex_lock(&e->mu);
        if (n <= 0) {
            if (code == HAUL_ETLS)
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
        if (moving || (c->ssl == NULL && (size_t)n < want && !c->rx_hup))
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

/* Counts what the socket took (owning thread): n bytes of plain frames,
 * or on TLS whatever the socket BIO has written by now. */
static void wire_moved(haul__conn *c, uint64_t n)
{
    uint64_t buffered;
    uint64_t v = c->ssl ? haul__tls_wire_written(c, &buffered)
                        : atomic_load_explicit(&c->wire_sent, memory_order_relaxed) + n;
    atomic_store_explicit(&c->wire_sent, v, memory_order_relaxed);
}

/* Where the stream stands once everything written so far reaches the
 * socket (owning thread). */
static uint64_t wire_end(haul__conn *c)
{
    uint64_t buffered = 0;
    if (c->ssl)
        return haul__tls_wire_written(c, &buffered) + buffered;
    return atomic_load_explicit(&c->wire_sent, memory_order_relaxed);
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

/* TLS: copies what follows the write position into the bounce buffer,
 * up to a payload in memory large enough to be written in place: headers,
 * control frames, small payloads, and file bodies (read with pread(), as
 * sendfile() cannot encrypt). Returns 0, or -1 with errno. */
static int tls_gather(haul__conn *c)
{
    if (c->tx_buf == NULL && (c->tx_buf = malloc(TLS_BOUNCE)) == NULL) {
        errno = ENOMEM;
        return -1;
    }
    size_t have = 0;
    int i = c->item_pos;
    uint64_t done = c->item_done;
    while (i < c->nitems && have < TLS_BOUNCE) {
        haul__tx_item *it = &c->items[i];
        size_t room = TLS_BOUNCE - have;
        if (done < HAUL__FRAME_HDR) {
            size_t n = HAUL__FRAME_HDR - done < room ? HAUL__FRAME_HDR - done : room;
            memcpy(c->tx_buf + have, c->headers[i] + done, n);
            have += n;
            done += n;
            continue;
        }
        uint64_t pdone = done - HAUL__FRAME_HDR;
        uint64_t rest = it->len - pdone;
        if (rest == 0) {
            i++;
            done = 0;
            continue;
        }
        size_t n = rest < room ? (size_t)rest : room;
        if (is_file(it) && it->pad) {
            memset(c->tx_buf + have, 0, n);
            have += n;
            done += n;
        } else if (is_file(it)) {
            off_t at = it->msg->file_offset + (off_t)(it->offset + pdone);
            ssize_t r = pread(it->msg->fd, c->tx_buf + have, n, at);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                /* The file shrank under us, or cannot be read: its
                 * message fails, not the connection (file_fell_short). */
                c->tx_short = i + 1;
                errno = EIO;
                return -1;
            }
            have += (size_t)r;
            done += (uint64_t)r;
            if ((size_t)r < n)
                break;
        } else {
            if (rest >= TLS_DIRECT_MIN)
                break;
            memcpy(c->tx_buf + have, item_payload(c, it) + pdone, n);
            have += n;
            done += n;
        }
    }
    c->tx_buf_len = have;
    c->tx_buf_off = 0;
    return 0;
}

/* TLS: writes from the current item on, as write_some(). */
static ssize_t tls_write_some(haul__conn *c)
{
    if (c->sec_state != HAUL__SEC_ESTABLISHED) {
        errno = EPROTO;
        return -1;
    }
    const uint8_t *src;
    size_t len;
    int bounced = 1;
    if (c->tx_buf_off < c->tx_buf_len) {
        src = c->tx_buf + c->tx_buf_off;
        len = c->tx_buf_len - c->tx_buf_off;
    } else {
        haul__tx_item *it = &c->items[c->item_pos];
        uint64_t pdone = c->item_done >= HAUL__FRAME_HDR ? c->item_done - HAUL__FRAME_HDR : 0;
        if (!is_file(it) && c->item_done >= HAUL__FRAME_HDR && it->len - pdone >= TLS_DIRECT_MIN) {
            src = item_payload(c, it) + pdone;
            len = (size_t)(it->len - pdone);
            bounced = 0;
        } else {
            if (tls_gather(c) < 0)
                return -1;
            src = c->tx_buf;
            len = c->tx_buf_len;
        }
    }
    size_t written;
    ERR_clear_error();
    errno = 0;
    if (SSL_write_ex(c->ssl, src, len, &written) == 1) {
        c->tls_write_pending = 0;
        if (bounced)
            c->tx_buf_off += written;
        return (ssize_t)written;
    }
    switch (SSL_get_error(c->ssl, 0)) {
    case SSL_ERROR_WANT_WRITE:
    case SSL_ERROR_WANT_READ:
        /* The position stays: the retry passes the same bytes. */
        c->tls_write_pending = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_SYSCALL:
        haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
        consume_sigpipe();
        if (ERR_peek_error() != 0)
            errno = EPROTO;
        else if (errno == 0)
            errno = ECONNRESET;
        return -1;
    default:
        haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
        consume_sigpipe();
        errno = EPROTO;
        return -1;
    }
}

/* Writes from the current item on. Returns bytes written, or -1 with errno. */
static ssize_t write_some(haul__conn *c)
{
    if (c->ssl)
        return tls_write_some(c);
    haul__tx_item *it = &c->items[c->item_pos];
    if (is_file(it)) {
        if (c->item_done < HAUL__FRAME_HDR)
            return send(c->fd, c->headers[c->item_pos] + c->item_done,
                        HAUL__FRAME_HDR - c->item_done, MSG_NOSIGNAL | MSG_MORE);
        uint64_t done = c->item_done - HAUL__FRAME_HDR;
        if (it->pad) {
            size_t n = it->len - done < sizeof(zeros) ? (size_t)(it->len - done) : sizeof(zeros);
            return send(c->fd, zeros, n, MSG_NOSIGNAL);
        }
        off_t off = it->msg->file_offset + (off_t)(it->offset + done);
        ssize_t n = sendfile(c->fd, it->msg->fd, &off, it->len - done);
        if (n < 0 && errno == EPIPE)
            consume_sigpipe();
        if (n == 0 && it->len > done) {
            /* The file shrank under us (file_fell_short). */
            c->tx_short = c->item_pos + 1;
            errno = EIO;
            return -1;
        }
        return n;
    }
    struct iovec iov[2 * HAUL__TX_BATCH];
    int niov = 0;
    uint64_t skip = c->item_done;
    for (int i = c->item_pos; i < c->nitems && !is_file(&c->items[i]); i++) {
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
        if (x->len > skip) {
            iov[niov].iov_base = (void *)(item_payload(c, x) + skip);
            iov[niov].iov_len = x->len - skip;
            niov++;
        }
        skip = 0;
    }
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
    return sendmsg(c->fd, &mh, MSG_NOSIGNAL);
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
    if (c->ssl && errno == EPROTO) {
        haul__tls_error_text(c, why, sizeof(why));
        code = HAUL_ETLS;
    } else {
        snprintf(why, sizeof(why), "write failed: %s", strerror(errno));
    }
    pthread_mutex_lock(&e->mu);
    haul__conn_close(c, code, why);
    pthread_mutex_unlock(&e->mu);
}

/* TLS: the connection stops writing for now, and what SSL_write() left in
 * the write buffer goes to the socket. Returns 0, or -1 when the
 * connection broke and was closed. A full socket is no failure: its next
 * EPOLLOUT edge brings do_write() back, and with it the next flush. */
static int tls_pause(haul__conn *c)
{
    if (c->ssl == NULL || c->sec_state != HAUL__SEC_ESTABLISHED)
        return 0;
    int rc = haul__tls_flush(c);
    int err = errno;
    wire_moved(c, 0);
    errno = err;
    if (rc == 0 || errno == EAGAIN)
        return 0;
    consume_sigpipe();
    haul__secure_enter(c, HAUL__SECEV_RECORD_FAILED);
    write_failed(c);
    return -1;
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
            tls_pause(c);
            return;
        }
        /* Test hook: the batch is lost with its connection, as if the
         * network broke before any of it was written. */
        int inject = e->debug_fail_writes > 0 && c->state == HAUL__CONN_JOINED;
        if (inject)
            e->debug_fail_writes--;
        pthread_mutex_unlock(&e->mu);
        if (inject) {
            errno = EPIPE;
            write_failed(c);
            return;
        }

        if (c->debug_frozen == 2)
            return; /* test hook: the batch stays, unwritten */
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
    if (tls_pause(c) < 0)
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
    if (conn_secure(c))
        conn_secured(c);
}

/* SECURING on TLS (SEC_HANDSHAKING): one step of the handshake, without
 * the engine's mutex (it computes and verifies signatures); once the peer
 * is accepted (SEC_ESTABLISHED), the connection goes on to CONN_HELLO. */
static void secure_step(haul__conn *c)
{
    haul_engine *e = c->engine;
    char why[480];
    int rc = haul__tls_handshake(c, why, sizeof(why));
    if (rc == 0)
        return;
    if (rc < 0)
        consume_sigpipe();
    pthread_mutex_lock(&e->mu);
    if (!c->dead && c->state == HAUL__CONN_SECURING) {
        if (rc > 0) {
            haul__log(e, HAUL_LOG_DEBUG, "connection %u: TLS established, %s%s%s", c->serial,
                      SSL_get_cipher_name(c->ssl), c->server ? ", principal " : "",
                      c->server ? c->principal : "");
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
     * handshake message. No edge announces bytes that OpenSSL holds, and
     * this event may have been EPOLLOUT alone, so they are read now. */
    int held = 0;
    if (securing) {
        secure_step(c);
        held = c->sec_state == HAUL__SEC_ESTABLISHED && SSL_has_pending(c->ssl);
    }
    /* A TLS read that had to write first goes on when the socket can. */
    int read_for_write = c->tls_read_wants_write && (events & EPOLLOUT);
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
    int tls_live =
        c->sec_state == HAUL__SEC_ESTABLISHED && haul__conn_carries_frames(c->state) && !c->dead;
    pthread_mutex_unlock(&e->mu);
    /* OpenSSL may hold bytes it read already, which no edge announces:
     * those a connection left when it moved here from another thread. */
    if (tls_live && SSL_has_pending(c->ssl))
        more = 1;
    if (more)
        do_read(c);
    do_write(c);
    pthread_mutex_lock(&e->mu);
    settle(c);
    pthread_mutex_unlock(&e->mu);
}
