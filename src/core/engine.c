/*
 * engine.c - the communication engine: configuration, I/O threads, the
 * completion queue (the seed's completion port), listeners and the sweep
 * of deadlines.
 *
 * Each I/O thread runs an epoll loop over the connections it owns. The
 * connections of a pipe spread over the threads from the pipe's first
 * one (net/conn.c), so that one pipe moves and encrypts bytes on several
 * cores; pipes take their first thread in turn.
 */
#include "core/engine.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* The sweep of deadlines runs at most this often, and this soon after
 * anything happened; timeouts are this precise. */
#define SWEEP_MS 20
/* The longest the sweep sleeps, with nothing due before: a bound on how
 * late a deadline can be that something set without telling the sweep. */
#define SWEEP_IDLE_MAX_MS 1000

/* The ranges of the liveness periods (haul.h). */
#define KEEPALIVE_MIN_MS 10u
#define KEEPALIVE_MAX_MS 3600000u
#define IDLE_TIMEOUT_MIN_MS 50u
#define IDLE_TIMEOUT_MAX_MS 86400000u
/* The range of conn_backlog (haul.h). */
#define BACKLOG_MIN (16u << 10)
#define BACKLOG_MAX (64u << 20)

int64_t haul__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void haul__log(haul_engine *engine, int level, const char *fmt, ...)
{
    if (level > engine->config.log_level)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (engine->config.log)
        engine->config.log(engine->config.log_arg, level, line);
    else
        fprintf(stderr, "haul: %s\n", line);
}

void haul__count_state(haul_engine *engine, int state)
{
    if (state >= 0 && state < (int)(sizeof(engine->stats.state_entered) / sizeof(uint64_t)))
        engine->stats.state_entered[state]++;
}

/* ---- configuration ----------------------------------------------------- */

void haul_engine_config_init(haul_engine_config *c)
{
    memset(c, 0, sizeof(*c));
    c->io_threads = 1;
    c->max_message = 64ull << 20;
    c->chunk_size = 256u << 10;
    c->max_sessions = 4096;
    c->max_connections = 4096;
    c->handshake_timeout_ms = 10000;
    c->max_handshakes = 1024;
    c->message_timeout_ms = 60000;
    c->max_attempts = 8;
    c->redial_min_ms = 20;
    c->redial_max_ms = 2000;
    c->keepalive_ms = 5000;
    c->idle_timeout_ms = 15000;
    c->conn_backlog = 128u << 10;
    c->backlog_min_rtt_us = 1000;
    c->log_level = HAUL_LOG_WARN;
}

/* What the memory budget keeps for sends: one largest message (an empty
 * one counts 1), so that receive slots, which stay reserved until their
 * messages come, can never take the memory of the answers their peers
 * may be waiting for. */
static uint64_t send_reserve(const haul_engine_config *c)
{
    return c->max_message ? c->max_message : 1;
}

static int config_check(const haul_engine_config *c)
{
    if (c->io_threads < 1 || c->io_threads > 64)
        return HAUL_EINVAL;
    if (c->max_message > 0xffffffffull)
        return HAUL_EINVAL;
    if (c->chunk_size < HAUL__CHUNK_MIN || c->chunk_size > HAUL__CHUNK_MAX)
        return HAUL_EINVAL;
    if (c->max_sessions < 1 || c->max_connections < 1)
        return HAUL_EINVAL;
    if (c->max_handshakes < 1)
        return HAUL_EINVAL;
    if (c->handshake_timeout_ms < 1 || c->message_timeout_ms < 1 || c->max_attempts < 1)
        return HAUL_EINVAL;
    if (c->redial_min_ms < 1 || c->redial_max_ms < c->redial_min_ms)
        return HAUL_EINVAL;
    /* Below these, the 20 ms sweep could not keep them; above, they would
     * not notice a dead peer in any useful time. */
    if (c->keepalive_ms &&
        (c->keepalive_ms < KEEPALIVE_MIN_MS || c->keepalive_ms > KEEPALIVE_MAX_MS))
        return HAUL_EINVAL;
    if (c->idle_timeout_ms &&
        (c->idle_timeout_ms < IDLE_TIMEOUT_MIN_MS || c->idle_timeout_ms > IDLE_TIMEOUT_MAX_MS))
        return HAUL_EINVAL;
    /* An engine that times out before its own keepalive period would,
     * facing a peer configured alike, close every idle connection. */
    if (c->keepalive_ms && c->idle_timeout_ms && c->keepalive_ms >= c->idle_timeout_ms)
        return HAUL_EINVAL;
    if (c->conn_backlog && (c->conn_backlog < BACKLOG_MIN || c->conn_backlog > BACKLOG_MAX))
        return HAUL_EINVAL;
    /* The budget keeps one largest message for sends, and must leave
     * the receive side at least one slot of the largest unit besides,
     * or a session that needs it would wait for ever. */
    if (c->memory != 0 && c->memory < 2 * send_reserve(c))
        return HAUL_EINVAL;
    return 0;
}

/* ---- the completion queue ---------------------------------------------- */

/* Makes the ring hold at least `need` events. */
static int cq_grow(haul_engine *e, size_t need)
{
    if (need <= e->cq_cap)
        return 0;
    if (e->debug_cq_nomem)
        return HAUL_ENOMEM;
    size_t cap = e->cq_cap ? e->cq_cap : 256;
    while (cap < need)
        cap *= 2;
    haul_event *q = malloc(cap * sizeof(*q));
    if (q == NULL)
        return HAUL_ENOMEM;
    for (size_t i = 0; i < e->cq_len; i++)
        q[i] = e->cq[(e->cq_head + i) % e->cq_cap];
    free(e->cq);
    e->cq = q;
    e->cq_cap = cap;
    e->cq_head = 0;
    return 0;
}

static void cq_push(haul_engine *e, const haul_event *ev)
{
    e->cq[(e->cq_head + e->cq_len) % e->cq_cap] = *ev;
    e->cq_len++;
    if (!e->cq_signalled) {
        uint64_t one = 1;
        if (write(e->cq_fd, &one, sizeof(one)) < 0) {
            /* The counter cannot overflow at one write per empty-to-full
             * change; nothing to do. */
        }
        e->cq_signalled = 1;
    }
    pthread_cond_broadcast(&e->cq_cond);
}

/* Reserves n slots for final events: the operation that needs them is
 * refused with HAUL_ENOMEM when the ring cannot hold them, so that no
 * final event can ever be lost for want of memory. */
int haul__cq_reserve(haul_engine *e, size_t n)
{
    if (cq_grow(e, e->cq_len + e->cq_reserved + n))
        return HAUL_ENOMEM;
    e->cq_reserved += n;
    return 0;
}

void haul__cq_release(haul_engine *e, size_t n)
{
    e->cq_reserved -= n;
}

void haul__post_reserved(haul_engine *e, const haul_event *ev)
{
    e->cq_reserved--;
    cq_push(e, ev);
}

int haul__post(haul_engine *e, const haul_event *ev)
{
    /* Informational events take only what no final event was promised. */
    if (cq_grow(e, e->cq_len + e->cq_reserved + 1)) {
        haul__log(e, HAUL_LOG_ERROR, "out of memory for the completion queue: %s dropped",
                  haul_event_name(ev->type));
        return HAUL_ENOMEM;
    }
    cq_push(e, ev);
    return 0;
}

void haul__debug_cq_nomem(haul_engine *e, int on)
{
    pthread_mutex_lock(&e->mu);
    e->debug_cq_nomem = on;
    pthread_mutex_unlock(&e->mu);
}

int haul_engine_fd(haul_engine *e)
{
    return e->cq_fd;
}

int haul_engine_wait(haul_engine *e, haul_event *events, int max, int timeout_ms)
{
    if (e == NULL || events == NULL || max <= 0)
        return -HAUL_EINVAL;
    pthread_mutex_lock(&e->mu);
    if (e->cq_len == 0 && timeout_ms != 0) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        if (timeout_ms > 0) {
            until.tv_sec += timeout_ms / 1000;
            until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
        }
        while (e->cq_len == 0) {
            int rc = timeout_ms < 0 ? pthread_cond_wait(&e->cq_cond, &e->mu)
                                    : pthread_cond_timedwait(&e->cq_cond, &e->mu, &until);
            if (rc == ETIMEDOUT)
                break;
        }
    }
    int n = 0;
    while (n < max && e->cq_len > 0) {
        events[n++] = e->cq[e->cq_head];
        e->cq_head = (e->cq_head + 1) % e->cq_cap;
        e->cq_len--;
    }
    if (e->cq_len == 0 && e->cq_signalled) {
        uint64_t v;
        if (read(e->cq_fd, &v, sizeof(v)) < 0) {
            /* Already drained by nobody else; harmless. */
        }
        e->cq_signalled = 0;
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* Withdraws the queued events about a session whose handle was freed. */
void haul__cq_forget(haul_engine *e, haul_session *s)
{
    size_t kept = 0;
    for (size_t i = 0; i < e->cq_len; i++) {
        haul_event ev = e->cq[(e->cq_head + i) % e->cq_cap];
        if (ev.session != s)
            e->cq[(e->cq_head + kept++) % e->cq_cap] = ev;
    }
    e->cq_len = kept;
}

const char *haul_event_name(int type)
{
    static const char *const names[] = {
        "NONE",         "SESSION_REQUEST", "SESSION_OPEN",  "SESSION_REFUSED", "MESSAGE_RECEIVED",
        "MESSAGE_SENT", "MESSAGE_FAILED",  "WINDOW_OPENED", "SESSION_CLOSED",  "PIPE_DOWN",
        "PIPE_UP"};
    if (type < 0 || type >= (int)(sizeof(names) / sizeof(names[0])))
        return "?";
    return names[type];
}

/* ---- listeners --------------------------------------------------------- */

void haul_listen_config_init(haul_listen_config *c)
{
    memset(c, 0, sizeof(*c));
    c->output_queue = 64ull << 20;
    c->input_queue = 64ull << 20;
    c->max_message = 0; /* the engine's */
}

int haul_listen(haul_engine *e, const char *address, const haul_listen_config *config)
{
    if (e == NULL || address == NULL)
        return HAUL_EINVAL;
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    if (config)
        lc = *config;
    if (lc.max_message == 0 || lc.max_message > e->config.max_message)
        lc.max_message = e->config.max_message;
    if (lc.output_queue == 0 || lc.input_queue == 0)
        return HAUL_EINVAL;
    /* The TLS files are read now, so that a mistake in them is this
     * call's error rather than every client's failed handshake. */
    struct ssl_ctx_st *tls_ctx = NULL;
    char *tls_files = NULL;
    if (lc.tls) {
        int trc = haul__tls_ctx_new(e, lc.tls, 1, &tls_ctx);
        if (trc)
            return trc;
        /* The paths are kept for haul_listen_reload_tls(). */
        int kerr = HAUL_ENOMEM;
        tls_files = haul__tls_key(lc.tls, &kerr);
        if (tls_files == NULL) {
            haul__tls_ctx_free(tls_ctx);
            return kerr;
        }
        lc.tls = NULL; /* not kept: the caller's, read during this call only */
    }

    struct sockaddr_storage ss;
    socklen_t len;
    int rc = haul__addr_parse(address, &ss, &len);
    if (rc) {
        haul__tls_ctx_free(tls_ctx);
        free(tls_files);
        return rc;
    }
    if (ss.ss_family == AF_UNIX) {
        /* A stale socket file is removed; one a live server listens on is
         * left alone, and the address is in use. */
        const char *path = ((struct sockaddr_un *)&ss)->sun_path;
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int live = probe >= 0 && connect(probe, (struct sockaddr *)&ss, len) == 0;
            if (probe >= 0)
                close(probe);
            if (live) {
                haul__tls_ctx_free(tls_ctx);
                free(tls_files);
                errno = EADDRINUSE;
                return HAUL_EADDR;
            }
            unlink(path);
        }
    }
    int fd;
    rc = haul__sock_listen(&ss, len, &fd);
    if (rc) {
        int err_no = errno;
        haul__log(e, HAUL_LOG_ERROR, "cannot listen on %s: %s", address, strerror(errno));
        haul__tls_ctx_free(tls_ctx);
        free(tls_files);
        errno = err_no;
        return rc;
    }
    haul__listener *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        close(fd);
        haul__tls_ctx_free(tls_ctx);
        free(tls_files);
        return HAUL_ENOMEM;
    }
    l->kind = HAUL__POLL_LISTENER;
    l->fd = fd;
    l->config = lc;
    l->tls_ctx = tls_ctx;
    l->tls_files = tls_files;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    getsockname(fd, (struct sockaddr *)&bound, &blen);
    if (ss.ss_family == AF_UNIX)
        snprintf(l->address, sizeof(l->address), "%s", address);
    else
        haul__addr_format((struct sockaddr *)&bound, blen, l->address, sizeof(l->address));
    /* A wildcard listener is dialled on the loopback address. */
    if (strncmp(l->address, "[::]:", 5) == 0) {
        char port[16];
        snprintf(port, sizeof(port), "%s", l->address + 5);
        snprintf(l->address, sizeof(l->address), "127.0.0.1:%s", port);
    }

    pthread_mutex_lock(&e->mu);
    haul__list_add_tail(&e->listeners, &l->link);
    pthread_mutex_unlock(&e->mu);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
    epoll_ctl(e->loops[0].epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

int haul_listen_reload_tls(haul_engine *e)
{
    if (e == NULL)
        return HAUL_EINVAL;
    int rc = 0;
    /* The files are read without the lock (they may be slow to read); the
     * listeners are only ever added before, and freed with the engine, so
     * the list may be walked by this, the application's, thread. The swap
     * itself happens under mu, which listener_ready() holds while it hands
     * a listener's context to a new connection: the connection's SSL then
     * holds a reference of its own, and the old context lives on until the
     * last such connection is freed. */
    haul__list *pos;
    pthread_mutex_lock(&e->mu);
    haul__list_each(pos, &e->listeners)
    {
        haul__listener *l = HAUL__CONTAINER(pos, haul__listener, link);
        if (l->tls_files == NULL)
            continue;
        char *files = l->tls_files;
        pthread_mutex_unlock(&e->mu);
        struct ssl_ctx_st *ctx = NULL;
        int trc = haul__tls_ctx_reload(e, files, 1, &ctx);
        pthread_mutex_lock(&e->mu);
        if (trc) {
            haul__log(e, HAUL_LOG_ERROR, "TLS reload of %s failed; keeping its old files",
                      l->address);
            rc = HAUL_ETLS;
            continue;
        }
        struct ssl_ctx_st *old = l->tls_ctx;
        l->tls_ctx = ctx;
        haul__tls_ctx_free(old);
        haul__log(e, HAUL_LOG_INFO, "TLS files of %s reloaded", l->address);
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int haul_listen_address(haul_engine *e, char *buf, size_t size)
{
    pthread_mutex_lock(&e->mu);
    haul__list *first = haul__list_first(&e->listeners);
    int rc = HAUL_ESTATE;
    if (first) {
        haul__listener *l = HAUL__CONTAINER(first, haul__listener, link);
        rc = strlen(l->address) < size ? 0 : HAUL_EINVAL;
        if (rc == 0)
            strcpy(buf, l->address);
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

/*
 * Admission. A burst of clients (a thousand backup jobs started by one
 * timer) reaches the listener at once, and each of them must be served
 * or told why not; none may be cut off as if the server had gone away.
 *
 * - At most max_handshakes accepted connections are in their handshake
 *   (TLS and HELLO). A connection beyond waits in the kernel's accept
 *   queue, the listener paused, until a handshake ends. Only a handshake
 *   that has gone on for EVICT_AGE_DIVISOR-th of handshake_timeout_ms
 *   is closed to make room: such a peer is slow or silent, while an
 *   honest client of a burst, whose HELLO merely waits to be read, is
 *   young. A flood of silent peers therefore delays an honest client by
 *   that much at most, and never keeps it out.
 * - A connection beyond max_connections is accepted all the same, as a
 *   handshake (so it is bounded by max_handshakes), and refused at its
 *   HELLO with an ERROR frame that says the server is busy and why: by
 *   then its client can read it, over TLS too, and reports the reason
 *   instead of a reset.
 * - accept() out of descriptors (or kernel memory) pauses the listener
 *   for ACCEPT_RETRY_MS, or until a connection is freed, rather than spin
 *   on a listener that stays readable; the clients wait in the queue.
 */
#define EVICT_AGE_DIVISOR 4
#define ACCEPT_RETRY_MS 100

/* Leaves the listener's new connections in the kernel's queue until
 * haul__listeners_resume(), or the sweep at resume_at (mu held). */
static void listener_pause(haul_engine *e, haul__listener *l, int64_t resume_at)
{
    if (!l->paused) {
        struct epoll_event ev = {.events = 0, .data.ptr = l};
        epoll_ctl(e->loops[0].epfd, EPOLL_CTL_MOD, l->fd, &ev);
        l->paused = 1;
        e->listeners_paused++;
    }
    if (e->listeners_resume_at == 0 || resume_at < e->listeners_resume_at)
        e->listeners_resume_at = resume_at;
}

void haul__listeners_resume(haul_engine *e)
{
    if (e->listeners_paused == 0)
        return;
    haul__list *p;
    haul__list_each(p, &e->listeners)
    {
        haul__listener *l = HAUL__CONTAINER(p, haul__listener, link);
        if (!l->paused)
            continue;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
        epoll_ctl(e->loops[0].epfd, EPOLL_CTL_MOD, l->fd, &ev);
        l->paused = 0;
    }
    e->listeners_paused = 0;
    e->listeners_resume_at = 0;
}

/* The accepted connection that has been in its handshake longest, or
 * NULL (mu held). */
static haul__conn *oldest_handshake(haul_engine *e)
{
    haul__conn *oldest = NULL;
    haul__list *p;
    haul__list_each(p, &e->conns)
    {
        haul__conn *c = HAUL__CONTAINER(p, haul__conn, all_link);
        if (c->handshaking && !c->dead && (oldest == NULL || c->deadline < oldest->deadline))
            oldest = c;
    }
    return oldest;
}

/*
 * Whether the listener may accept one more connection now (mu held):
 * a handshake slot is free, or the oldest handshake is old enough to be
 * a slow or silent peer and may be closed for the new one (once it is
 * accepted: there may be none waiting). Otherwise the listener pauses
 * until it would be, or until a slot frees.
 */
static int admit(haul_engine *e, haul__listener *l)
{
    if (e->handshaking < e->config.max_handshakes)
        return 1;
    haul__conn *oldest = oldest_handshake(e);
    if (oldest == NULL)
        return 1;
    unsigned timeout = e->config.handshake_timeout_ms;
    int64_t evictable_at = oldest->deadline - timeout + timeout / EVICT_AGE_DIVISOR;
    if (haul__now_ms() >= evictable_at)
        return 1;
    listener_pause(e, l, evictable_at);
    return 0;
}

/* Closes the oldest handshake to make room for a connection just
 * accepted (mu held). Handshakes only ended since admit() said it was
 * old enough, none began: while every slot is still taken, the oldest is
 * the same one. */
static void evict_oldest_handshake(haul_engine *e)
{
    haul__conn *oldest = oldest_handshake(e);
    if (oldest == NULL)
        return;
    int64_t age = haul__now_ms() - (oldest->deadline - e->config.handshake_timeout_ms);
    e->stats.handshakes_refused++;
    haul__log(e, HAUL_LOG_INFO,
              "connection %u closed: %u connections are in their handshake, and it has been "
              "in its own for %lld ms",
              oldest->serial, e->config.max_handshakes, (long long)age);
    haul__conn_close(oldest, HAUL_ELIMIT, "evicted: too many connections in their handshake");
}

/* accept() failed for want of descriptors or memory (mu held). */
static void accept_starved(haul_engine *e, haul__listener *l, int err)
{
    int64_t now = haul__now_ms();
    listener_pause(e, l, now + ACCEPT_RETRY_MS);
    if (now - e->accept_warned_at >= 1000) {
        e->accept_warned_at = now;
        haul__log(e, HAUL_LOG_WARN,
                  "accept failed: %s (%u connections open); new connections wait in the accept "
                  "queue until one closes",
                  strerror(err), e->nconns);
    }
}

/* Accepts what waits on a listener, as admission allows. New connections
 * start on the threads in turn and move to their pipe's thread when they
 * join it. */
static void listener_ready(haul_engine *e, haul__listener *l)
{
    for (;;) {
        pthread_mutex_lock(&e->mu);
        int room = !l->paused && admit(e, l);
        pthread_mutex_unlock(&e->mu);
        if (!room)
            return;
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (err == EINTR)
                continue;
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                pthread_mutex_lock(&e->mu);
                accept_starved(e, l, err);
                pthread_mutex_unlock(&e->mu);
            } else if (err != EAGAIN && err != EWOULDBLOCK) {
                haul__log(e, HAUL_LOG_WARN, "accept failed: %s", strerror(err));
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pthread_mutex_lock(&e->mu);
        if (e->stopping) {
            pthread_mutex_unlock(&e->mu);
            close(fd);
            continue;
        }
        if (e->handshaking >= e->config.max_handshakes)
            evict_oldest_handshake(e);
        int over_limit = e->nconns >= e->config.max_connections;
        haul__conn *c = haul__conn_new(e, fd, 1, NULL, 0);
        if (c == NULL) {
            pthread_mutex_unlock(&e->mu);
            close(fd);
            continue;
        }
        c->lconf = &l->config;
        c->handshaking = 1;
        c->over_limit = over_limit;
        e->handshaking++;
        c->tls_ctx = l->tls_ctx;
        haul__conn_start(c, 0);
        pthread_mutex_unlock(&e->mu);
    }
}

/* ---- the sweep of deadlines --------------------------------------------- */

/*
 * The sweep runs on loop 0 when its one-shot timer fires. It acts on the
 * deadlines that passed and arms the timer for the next one it knows of,
 * but never sooner than SWEEP_MS from now, and SWEEP_MS from now when
 * anything happened since it began (haul__sweep_soon). What the engine
 * does changes only on an event (a connection's I/O, a listener, a
 * public call) or with time: every event tells the sweep, which then runs
 * within SWEEP_MS as it would at a fixed period, and between events the
 * deadlines it computed stay right. So a quiet engine (a client waiting
 * for a busy server, a server without clients) sleeps until its next
 * keepalive or timeout instead of waking 50 times a second, which, with a
 * thousand such processes on a machine, took more CPU than their work.
 * State that the sweep samples while it lasts (a rate limit holding a
 * session, the automatic count, the active set of a long link, a message
 * without progress) asks for the next period. SWEEP_IDLE_MAX_MS bounds
 * the sleep all the same.
 */
static void sweep_arm(haul_engine *e, int64_t delay_ms)
{
    struct itimerspec its = {
        .it_value = {(time_t)(delay_ms / 1000), (long)(delay_ms % 1000) * 1000000L}};
    timerfd_settime(e->timerfd, 0, &its, NULL);
    e->sweep_far = delay_ms > SWEEP_MS;
}

void haul__sweep_soon(haul_engine *e)
{
    e->sweep_soon = 1;
    if (e->sweep_far)
        sweep_arm(e, SWEEP_MS);
}

static int64_t earlier(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

static void sweep(haul_engine *e)
{
    int64_t now = haul__now_ms();
    pthread_mutex_lock(&e->mu);
    /* The timer fired: nothing is armed until the end, and what happens
     * meanwhile (a keepalive the sweep starts, a session it fails) asks
     * for the next period. */
    e->sweep_far = 0;
    e->sweep_soon = 0;
    e->sweeps++;
    int64_t next = HAUL__NEVER;
    if (e->budget != NULL) {
        /* Pooled receive bodies go back to the system once idle, and
         * sessions waiting for memory are looked at, should a kick have
         * found nothing to serve. */
        next = earlier(next, haul__budget_trim(e->budget, now, 0));
        if (!haul__list_empty(&e->mem_waiters)) {
            haul__mem_serve(e);
            next = earlier(next, now + SWEEP_MS);
        }
    }
    haul__list *pos, *tmp;
    haul__list_each_safe(pos, tmp, &e->conns)
    {
        next = earlier(next, haul__conn_sweep(HAUL__CONTAINER(pos, haul__conn, all_link), now));
    }
    haul__list_each_safe(pos, tmp, &e->pipes)
    {
        next = earlier(next, haul__pipe_sweep(HAUL__CONTAINER(pos, haul__pipe, link), now));
    }
    /* A paused listener looks again: the oldest handshake may be old
     * enough to give way by now, or descriptors may have been freed. */
    if (e->listeners_paused && now >= e->listeners_resume_at)
        haul__listeners_resume(e);
    if (e->listeners_paused)
        next = earlier(next, e->listeners_resume_at);
    int64_t delay = next == HAUL__NEVER ? SWEEP_IDLE_MAX_MS : next - now;
    if (e->sweep_soon || delay < SWEEP_MS)
        delay = SWEEP_MS;
    if (delay > SWEEP_IDLE_MAX_MS)
        delay = SWEEP_IDLE_MAX_MS;
    if (!e->stopping)
        sweep_arm(e, delay);
    pthread_mutex_unlock(&e->mu);
}

/* ---- the I/O threads ----------------------------------------------------- */

static void *loop_main(void *arg)
{
    haul__loop *loop = arg;
    haul_engine *e = loop->engine;
    struct epoll_event evs[128];
    /* SIGPIPE from sendfile() on a broken connection must not reach the
     * application (see conn.c). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    for (;;) {
        int n = epoll_wait(loop->epfd, evs, 128, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            haul__log(e, HAUL_LOG_ERROR, "epoll_wait failed: %s", strerror(errno));
            break;
        }
        int happened = 0; /* an event besides the sweep's timer */
        for (int i = 0; i < n; i++) {
            int kind = *(int *)evs[i].data.ptr;
            happened |= kind != HAUL__POLL_TIMER;
            if (kind == HAUL__POLL_CONN) {
                haul__conn_io(evs[i].data.ptr, evs[i].events);
            } else if (kind == HAUL__POLL_LISTENER) {
                listener_ready(e, evs[i].data.ptr);
            } else if (kind == HAUL__POLL_TIMER) {
                uint64_t ticks;
                if (read(e->timerfd, &ticks, sizeof(ticks)) > 0)
                    sweep(e);
            } else if (kind == HAUL__POLL_WAKE) {
                uint64_t v;
                if (read(loop->wakefd, &v, sizeof(v)) < 0) {
                    /* Spurious: nothing to read. */
                }
            }
        }
        /* Memory came back to the budget while sessions wait for it: the
         * first thread serves them. */
        if (loop->index == 0 && e->budget != NULL && atomic_load(&e->budget->kicked)) {
            atomic_store(&e->budget->kicked, 0);
            pthread_mutex_lock(&e->mu);
            haul__mem_serve(e);
            pthread_mutex_unlock(&e->mu);
        }
        /* Connections that others handed work to, or asked to close. The
         * list is taken whole, since handling one may add another. */
        pthread_mutex_lock(&e->mu);
        if (happened)
            haul__sweep_soon(e);
        int stop = e->stopping;
        haul__list wake;
        haul__list_init(&wake);
        if (!haul__list_empty(&loop->wake)) {
            wake.next = loop->wake.next;
            wake.prev = loop->wake.prev;
            wake.next->prev = &wake;
            wake.prev->next = &wake;
            haul__list_init(&loop->wake);
        }
        pthread_mutex_unlock(&e->mu);
        while (!haul__list_empty(&wake)) {
            pthread_mutex_lock(&e->mu);
            haul__list *first = haul__list_first(&wake);
            haul__conn *c = first ? HAUL__CONTAINER(first, haul__conn, wake_link) : NULL;
            if (c)
                haul__list_del(&c->wake_link);
            pthread_mutex_unlock(&e->mu);
            if (c)
                haul__conn_handle_wake(c);
        }
        if (stop)
            break;
    }
    return NULL;
}

static void loop_signal(haul__loop *loop)
{
    uint64_t one = 1;
    if (write(loop->wakefd, &one, sizeof(one)) < 0) {
        /* The eventfd counter is far from overflow; nothing to do. */
    }
}

/* Hands a connection to its thread (mu held). */
void haul__conn_wake(haul__conn *c)
{
    haul__loop *loop = c->loop;
    haul__sweep_soon(c->engine);
    if (!haul__list_linked(&c->wake_link)) {
        haul__list_add_tail(&loop->wake, &c->wake_link);
        loop_signal(loop);
    }
}

/* ---- the engine's life ----------------------------------------------------- */

int haul_engine_new(const haul_engine_config *config, haul_engine **enginep)
{
    haul_engine_config c;
    if (config)
        c = *config;
    else
        haul_engine_config_init(&c);
    int rc = config_check(&c);
    if (rc)
        return rc;
    haul_engine *e = calloc(1, sizeof(*e));
    if (e == NULL)
        return HAUL_ENOMEM;
    e->config = c;
    e->cq_fd = -1;
    e->timerfd = -1;
    e->timer_kind = HAUL__POLL_TIMER;
    e->next_serial = 1;
    haul__list_init(&e->listeners);
    haul__list_init(&e->pipes);
    haul__list_init(&e->conns);
    haul__list_init(&e->mem_waiters);
    haul__list_init(&e->mem_principals);
    pthread_mutex_init(&e->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->cq_cond, &ca);
    pthread_condattr_destroy(&ca);

    e->loops = calloc(c.io_threads, sizeof(*e->loops));
    e->cq_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    e->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (e->loops == NULL || e->cq_fd < 0 || e->timerfd < 0)
        goto fail;
    for (unsigned i = 0; i < c.io_threads; i++) {
        haul__loop *loop = &e->loops[i];
        loop->kind = HAUL__POLL_WAKE;
        loop->engine = e;
        loop->index = (int)i;
        haul__list_init(&loop->wake);
        loop->epfd = epoll_create1(EPOLL_CLOEXEC);
        loop->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (loop->epfd < 0 || loop->wakefd < 0)
            goto fail;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = loop};
        epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->wakefd, &ev);
        e->nloops = i + 1;
    }
    if (c.memory != 0) {
        e->budget = haul__budget_new(c.memory, send_reserve(&c), e->loops[0].wakefd);
        if (e->budget == NULL)
            goto fail;
    }
    sweep_arm(e, SWEEP_MS);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = &e->timer_kind};
    epoll_ctl(e->loops[0].epfd, EPOLL_CTL_ADD, e->timerfd, &tev);

    for (unsigned i = 0; i < e->nloops; i++) {
        if (pthread_create(&e->loops[i].thread, NULL, loop_main, &e->loops[i]) != 0) {
            /* Stop the threads already running before failing. */
            pthread_mutex_lock(&e->mu);
            e->stopping = 1;
            pthread_mutex_unlock(&e->mu);
            for (unsigned j = 0; j < i; j++) {
                loop_signal(&e->loops[j]);
                pthread_join(e->loops[j].thread, NULL);
            }
            goto fail;
        }
    }
    *enginep = e;
    return 0;

fail:
    haul__mem_fini(e);
    for (unsigned i = 0; i < e->nloops; i++) {
        if (e->loops[i].epfd >= 0)
            close(e->loops[i].epfd);
        if (e->loops[i].wakefd >= 0)
            close(e->loops[i].wakefd);
    }
    if (e->cq_fd >= 0)
        close(e->cq_fd);
    if (e->timerfd >= 0)
        close(e->timerfd);
    free(e->loops);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cq_cond);
    free(e);
    return HAUL_ESYS;
}

void haul__pipe_destroy(haul__pipe *pipe);

void haul_engine_free(haul_engine *e)
{
    if (e == NULL)
        return;
    pthread_mutex_lock(&e->mu);
    e->stopping = 1;
    pthread_mutex_unlock(&e->mu);
    for (unsigned i = 0; i < e->nloops; i++) {
        loop_signal(&e->loops[i]);
        pthread_join(e->loops[i].thread, NULL);
    }

    /* The threads are gone: what is left is torn down from here alone. */
    pthread_mutex_lock(&e->mu);
    while (!haul__list_empty(&e->conns)) {
        haul__conn *c = HAUL__CONTAINER(haul__list_first(&e->conns), haul__conn, all_link);
        if (!c->dead)
            haul__conn_close(c, HAUL_ESHUTDOWN, "engine stopped");
        haul__list_del(&c->wake_link);
        haul__conn_free(c);
    }
    while (!haul__list_empty(&e->pipes))
        haul__pipe_destroy(HAUL__CONTAINER(haul__list_first(&e->pipes), haul__pipe, link));
    while (!haul__list_empty(&e->listeners)) {
        haul__listener *l = HAUL__CONTAINER(haul__list_first(&e->listeners), haul__listener, link);
        haul__list_del(&l->link);
        close(l->fd);
        if (strncmp(l->address, "unix:", 5) == 0)
            unlink(l->address + 5);
        haul__tls_ctx_free(l->tls_ctx);
        free(l->tls_files);
        free(l);
    }
    haul__mem_fini(e);
    pthread_mutex_unlock(&e->mu);

    for (unsigned i = 0; i < e->nloops; i++) {
        close(e->loops[i].epfd);
        close(e->loops[i].wakefd);
    }
    close(e->cq_fd);
    close(e->timerfd);
    free(e->loops);
    free(e->cq);
    free(e->plimits);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cq_cond);
    free(e);
}

int haul_engine_reserve(haul_engine *e, uint64_t bytes)
{
    if (e->budget == NULL || bytes == 0)
        return 0;
    pthread_mutex_lock(&e->mu);
    int rc = haul__budget_take(e->budget, bytes, 1);
    pthread_mutex_unlock(&e->mu);
    return rc == 0 ? 0 : HAUL_ENOMEM;
}

void haul_engine_unreserve(haul_engine *e, uint64_t bytes)
{
    if (e->budget != NULL)
        haul__budget_give(e->budget, bytes, 1);
}

void haul_engine_stats_get(haul_engine *e, haul_engine_stats *out)
{
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    if (e->budget != NULL) {
        out->memory_used = atomic_load(&e->budget->used);
        out->memory_peak = atomic_load(&e->budget->peak);
    }
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < HAUL__SEC_STATE_COUNT_; i++)
        out->secure_state_entered[i] =
            atomic_load_explicit(&e->secure_entered[i], memory_order_relaxed);
}
