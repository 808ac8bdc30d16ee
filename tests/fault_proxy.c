/*
 * fault_proxy.c - the fault-injecting TCP proxy of the tests (see
 * fault_proxy.h for what it does).
 *
 * One thread runs a poll() loop over the listener, a wake-up pipe and the
 * two sockets of every connection. A connection has two directions: UP
 * (read from the accepted socket, written to the dialed one) and DOWN
 * (the other way), each with a buffer of its own. A direction reads only
 * when its buffer has room and writes only what it holds, so a stalled
 * receiver stalls its sender, as TCP would.
 *
 * Faults that trigger at a byte offset are exact: a write never crosses
 * the offset of the next planned fault of its direction, and the fault is
 * applied when the count of forwarded bytes reaches it.
 */
#include "fault_proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DIR_UP 0   /* client -> target */
#define DIR_DOWN 1 /* target -> client */
#define SIDE_CLIENT 0
#define SIDE_TARGET 1
#define BUF_SIZE 65536
#define MAX_PLAN 8
/* Blips and partitions: the faults of the whole proxy. */
#define MAX_GLOBAL 16
/* The record of applied faults keeps this many lines; later ones are
 * counted, not kept. */
#define MAX_RECORD 256
#define RECORD_LINE 160

/* ---- the generator: splitmix64, one stream per connection ---------------- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A number in [0, n); n > 0. The bias of the modulo is irrelevant here. */
static uint64_t below(uint64_t *state, uint64_t n)
{
    return splitmix64(state) % n;
}

static const char *const kind_names[FAULT_KIND_COUNT_] = {"reset", "fin",  "blackhole", "delay",
                                                          "cut",   "blip", "partition"};

const char *fault_kind_name(int kind)
{
    return kind >= 0 && kind < FAULT_KIND_COUNT_ ? kind_names[kind] : "?";
}

static int disruptive(int kind)
{
    return kind == FAULT_RESET || kind == FAULT_FIN || kind == FAULT_BLACKHOLE ||
           kind == FAULT_BLIP;
}

/* ---- the objects ------------------------------------------------------------ */

/* One planned fault of a connection. */
typedef struct planned {
    int kind;
    int dir;           /* the direction a byte trigger counts, or a fin/delay/cut acts on */
    int by_time;       /* triggered at at_ms after acceptance, else at at_bytes */
    uint64_t at_bytes; /* bytes forwarded in dir */
    unsigned at_ms;
    unsigned ms;     /* blackhole and delay */
    unsigned pieces; /* cut */
    int done;        /* applied, skipped, or its connection ended first */
} planned;

typedef struct direction {
    uint8_t buf[BUF_SIZE];
    size_t off, len;    /* buf[off, off + len) waits to be written */
    uint64_t forwarded; /* bytes written */
    int eof;            /* the source ended (FIN) */
    int shut;           /* the FIN went to the destination */
    int dropping;       /* after a fin fault: read the source and drop */
    int64_t paused_until;
    /* rate_up, rate_down: the token bucket of the direction, in bytes,
     * and when it was last filled. */
    double tokens;
    int64_t tokens_at;
    unsigned cut_pieces; /* writes left in pieces */
} direction;

typedef struct conn {
    unsigned index;
    int fd[2]; /* SIDE_CLIENT, SIDE_TARGET */
    int dialing;
    int64_t accepted_at;
    int64_t blackhole_until;
    uint64_t rng;
    direction d[2];
    unsigned nplan;
    planned plan[MAX_PLAN];
} conn;

typedef struct plan_record {
    unsigned index;
    unsigned nplan;
    planned plan[MAX_PLAN];
} plan_record;

struct fault_proxy {
    fault_proxy_config config;
    char listen_spec[256];
    char target_spec[256];
    char address[128];
    struct sockaddr_storage target;
    socklen_t target_len;
    int listen_fd;
    int wake[2];
    pthread_t thread;
    int64_t started_at;

    pthread_mutex_t mu; /* guards what control calls and reports touch */
    int stop;
    int partition;
    int reset_all;
    fault_proxy_stats stats;
    unsigned applied_budget; /* disruptive faults applied */
    plan_record *plans;      /* of every connection accepted, by index */
    size_t nplans, plans_cap;
    unsigned nblips; /* blips, then partitions */
    planned blips[MAX_GLOBAL];
    int64_t partition_until; /* of the partition of the schedule under way */
    char (*record)[RECORD_LINE];
    unsigned nrecord, record_lost;

    /* The thread's own. */
    conn **conns;
    size_t nconns, conns_cap;
    unsigned next_index;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- addresses ------------------------------------------------------------- */

/* Splits "HOST:PORT" or "[V6]:PORT" and resolves it. */
static int resolve(const char *spec, int passive, struct sockaddr_storage *out, socklen_t *len)
{
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (end == NULL || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof(host))
            return -1;
        memcpy(host, spec + 1, (size_t)(end - spec - 1));
        host[end - spec - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (colon == NULL || (size_t)(colon - spec) >= sizeof(host))
            return -1;
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
        port = colon + 1;
    }
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host[0] ? host : NULL, port, &hints, &res) != 0 || res == NULL)
        return -1;
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void format_address(const struct sockaddr_storage *sa, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN];
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        getnameinfo((const struct sockaddr *)sa, sizeof(*s6), host, sizeof(host), NULL, 0,
                    NI_NUMERICHOST);
        snprintf(buf, size, "[%s]:%u", host, (unsigned)ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        getnameinfo((const struct sockaddr *)sa, sizeof(*s4), host, sizeof(host), NULL, 0,
                    NI_NUMERICHOST);
        snprintf(buf, size, "%s:%u", host, (unsigned)ntohs(s4->sin_port));
    }
}

/* ---- the schedule ---------------------------------------------------------- */

/* The plan of connection `index`: a function of the seed and the index. */
static unsigned make_plan(const fault_proxy_config *c, unsigned index, planned *plan)
{
    uint64_t rng = c->seed ^ (0xD1B54A32D192ED03ull * ((uint64_t)index + 1));
    splitmix64(&rng);
    if (!c->faults || c->faults_per_conn == 0)
        return 0;
    unsigned n = (unsigned)below(&rng, (uint64_t)c->faults_per_conn + 1);
    for (unsigned i = 0; i < n; i++) {
        planned *p = &plan[i];
        memset(p, 0, sizeof(*p));
        /* Weights: resets and cuts are the most telling, so the most
         * frequent; blackholes, being slow, the least. */
        unsigned kinds = c->kinds & ((1u << FAULT_BLIP) - 1);
        if (kinds == 0)
            return i;
        do {
            uint64_t r = below(&rng, 100);
            p->kind = r < 25   ? FAULT_RESET
                      : r < 40 ? FAULT_FIN
                      : r < 52 ? FAULT_BLACKHOLE
                      : r < 70 ? FAULT_DELAY
                               : FAULT_CUT;
        } while (!(kinds & (1u << p->kind)));
        p->dir = (int)below(&rng, 2);
        /* Most faults trigger at a byte offset, which lands them in the
         * middle of frames; some at a time, which reaches idle
         * connections too. */
        p->by_time = below(&rng, 4) == 0;
        /* Offsets: half of them in the first 64 KiB, where every
         * connection has traffic, the others over the whole span. */
        uint64_t whole = p->dir == DIR_UP ? c->span_bytes : c->span_bytes_down;
        uint64_t span = below(&rng, 2) || whole < 65536 ? whole : 65536;
        p->at_bytes = span ? below(&rng, span) + 1 : 1;
        p->at_ms = c->span_ms ? (unsigned)below(&rng, c->span_ms) : 0;
        if (p->kind == FAULT_BLACKHOLE)
            p->ms = 1 + (unsigned)below(&rng, c->blackhole_max_ms ? c->blackhole_max_ms : 1);
        else if (p->kind == FAULT_DELAY)
            p->ms = 1 + (unsigned)below(&rng, c->delay_max_ms ? c->delay_max_ms : 1);
        else if (p->kind == FAULT_CUT)
            p->pieces = 1 + (unsigned)below(&rng, 32);
    }
    return n;
}

static void make_blips(fault_proxy *px)
{
    const fault_proxy_config *c = &px->config;
    uint64_t rng = c->seed ^ 0x8BB84B93962EACC9ull;
    splitmix64(&rng);
    px->nblips = 0;
    if (!c->faults || c->max_blips == 0 || !(c->kinds & (1u << FAULT_BLIP)))
        return;
    unsigned max = c->max_blips < MAX_GLOBAL / 2 ? c->max_blips : MAX_GLOBAL / 2;
    /* Half of the schedules have none. */
    unsigned n = below(&rng, 2) ? (unsigned)below(&rng, (uint64_t)max + 1) : 0;
    for (unsigned i = 0; i < n; i++) {
        planned *p = &px->blips[i];
        memset(p, 0, sizeof(*p));
        p->kind = FAULT_BLIP;
        p->by_time = 1;
        p->at_ms = c->span_ms ? (unsigned)below(&rng, c->span_ms) : 0;
    }
    px->nblips = n;
}

/* Partitions come from a stream of their own, so that adding them to a
 * schedule changes nothing else in it. */
static void make_partitions(fault_proxy *px)
{
    const fault_proxy_config *c = &px->config;
    uint64_t rng = c->seed ^ 0x2545F4914F6CDD1Dull;
    splitmix64(&rng);
    if (!c->faults || c->max_partitions == 0 || !(c->kinds & (1u << FAULT_PARTITION)))
        return;
    unsigned max = c->max_partitions < MAX_GLOBAL / 2 ? c->max_partitions : MAX_GLOBAL / 2;
    unsigned n = 1 + (unsigned)below(&rng, max);
    for (unsigned i = 0; i < n; i++) {
        planned *p = &px->blips[px->nblips++];
        memset(p, 0, sizeof(*p));
        p->kind = FAULT_PARTITION;
        p->by_time = 1;
        p->at_ms = c->span_ms ? (unsigned)below(&rng, c->span_ms) : 0;
        p->ms = 1 + (unsigned)below(&rng, c->partition_max_ms ? c->partition_max_ms : 1);
    }
}

static void describe(const planned *p, char *buf, size_t size)
{
    char what[64] = "";
    if (p->kind == FAULT_BLACKHOLE || p->kind == FAULT_DELAY || p->kind == FAULT_PARTITION)
        snprintf(what, sizeof(what), " %u ms", p->ms);
    else if (p->kind == FAULT_CUT)
        snprintf(what, sizeof(what), " %u pieces", p->pieces);
    /* A fin, a delay and a cut act on one direction; the others on the
     * whole connection, and their direction only counts the bytes. */
    int one_way = p->kind == FAULT_FIN || p->kind == FAULT_DELAY || p->kind == FAULT_CUT;
    const char *dir = p->dir == DIR_UP ? "up" : "down";
    if (p->by_time)
        snprintf(buf, size, "%s%s%s%s at %u ms", kind_names[p->kind], one_way ? " " : "",
                 one_way ? dir : "", what, p->at_ms);
    else if (one_way)
        snprintf(buf, size, "%s %s%s at byte %llu", kind_names[p->kind], dir, what,
                 (unsigned long long)p->at_bytes);
    else
        snprintf(buf, size, "%s%s at byte %llu %s", kind_names[p->kind], what,
                 (unsigned long long)p->at_bytes, dir);
}

/* Keeps a line of the record of applied faults (mutex held). */
static void record(fault_proxy *px, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void record(fault_proxy *px, const char *fmt, ...)
{
    char line[RECORD_LINE];
    int at = snprintf(line, sizeof(line), "%6lld ms  ", (long long)(now_ms() - px->started_at));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + at, sizeof(line) - (size_t)at, fmt, ap);
    va_end(ap);
    if (px->config.trace) {
        fprintf(px->config.trace, "fault-proxy: %s\n", line);
        fflush(px->config.trace);
    }
    if (px->nrecord < MAX_RECORD)
        memcpy(px->record[px->nrecord++], line, RECORD_LINE);
    else
        px->record_lost++;
}

/* ---- connections ------------------------------------------------------------ */

static void close_with_rst(int fd)
{
    if (fd < 0)
        return;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

/* Ends a connection: with RSTs on both sockets when `rst`, else with a
 * plain close. Its plan is kept in px->plans for the report. */
static void conn_end(fault_proxy *px, size_t slot, int rst)
{
    conn *c = px->conns[slot];
    for (int side = 0; side < 2; side++) {
        if (rst)
            close_with_rst(c->fd[side]);
        else if (c->fd[side] >= 0)
            close(c->fd[side]);
    }
    px->conns[slot] = px->conns[--px->nconns];
    free(c);
}

static void conn_accept(fault_proxy *px)
{
    int fd = accept4(px->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    conn *c = calloc(1, sizeof(*c));
    int target = socket(px->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (px->nconns == px->conns_cap) {
        size_t cap = px->conns_cap ? 2 * px->conns_cap : 16;
        conn **grown = realloc(px->conns, cap * sizeof(*grown));
        if (grown != NULL) {
            px->conns = grown;
            px->conns_cap = cap;
        }
    }
    pthread_mutex_lock(&px->mu);
    if (px->nplans == px->plans_cap) {
        size_t cap = px->plans_cap ? 2 * px->plans_cap : 16;
        plan_record *grown = realloc(px->plans, cap * sizeof(*grown));
        if (grown != NULL) {
            px->plans = grown;
            px->plans_cap = cap;
        }
    }
    int room = c != NULL && target >= 0 && px->nconns < px->conns_cap && px->nplans < px->plans_cap;
    pthread_mutex_unlock(&px->mu);
    if (!room) {
        free(c);
        close_with_rst(fd);
        if (target >= 0)
            close(target);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(target, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd[SIDE_CLIENT] = fd;
    c->fd[SIDE_TARGET] = target;
    c->index = px->next_index++;
    c->accepted_at = now_ms();
    c->rng = px->config.seed ^ (0x9FB21C651E98DF25ull * ((uint64_t)c->index + 1));
    c->nplan = make_plan(&px->config, c->index, c->plan);
    int rc = connect(target, (const struct sockaddr *)&px->target, px->target_len);
    c->dialing = rc < 0 && errno == EINPROGRESS;
    px->conns[px->nconns++] = c;

    pthread_mutex_lock(&px->mu);
    px->stats.accepted++;
    plan_record *pr = &px->plans[px->nplans++];
    pr->index = c->index;
    pr->nplan = c->nplan;
    memcpy(pr->plan, c->plan, sizeof(c->plan));
    pthread_mutex_unlock(&px->mu);

    if (rc < 0 && !c->dialing) {
        /* The target refuses: so does the proxy, with an RST. */
        pthread_mutex_lock(&px->mu);
        record(px, "conn %u: the target refused (%s)", c->index, strerror(errno));
        pthread_mutex_unlock(&px->mu);
        conn_end(px, px->nconns - 1, 1);
    }
}

/* Marks planned fault i of c as done in c and in the report's copy. */
static void plan_done(fault_proxy *px, conn *c, unsigned i)
{
    c->plan[i].done = 1;
    pthread_mutex_lock(&px->mu);
    for (size_t k = px->nplans; k-- > 0;) {
        if (px->plans[k].index == c->index) {
            px->plans[k].plan[i].done = 1;
            break;
        }
    }
    pthread_mutex_unlock(&px->mu);
}

/*
 * Applies planned fault i of the connection in `slot`. Returns 1 when the
 * connection ended.
 */
static int apply(fault_proxy *px, size_t slot, unsigned i, int64_t now)
{
    conn *c = px->conns[slot];
    planned *p = &c->plan[i];
    plan_done(px, c, i);
    char what[96];
    describe(p, what, sizeof(what));
    pthread_mutex_lock(&px->mu);
    if (disruptive(p->kind) && px->applied_budget >= px->config.max_faults) {
        px->stats.skipped++;
        record(px, "conn %u: %s: skipped, over the budget", c->index, what);
        pthread_mutex_unlock(&px->mu);
        return 0;
    }
    if (disruptive(p->kind))
        px->applied_budget++;
    px->stats.applied[p->kind]++;
    if (p->kind == FAULT_BLACKHOLE || p->kind == FAULT_DELAY)
        px->stats.stalled_ms += p->ms;
    record(px, "conn %u: %s (up %llu, down %llu bytes forwarded)", c->index, what,
           (unsigned long long)c->d[DIR_UP].forwarded,
           (unsigned long long)c->d[DIR_DOWN].forwarded);
    pthread_mutex_unlock(&px->mu);

    direction *d = &c->d[p->dir];
    switch (p->kind) {
    case FAULT_RESET:
        conn_end(px, slot, 1);
        return 1;
    case FAULT_FIN:
        /* The receiver of the direction gets a FIN now; what was still
         * buffered for it, and what its sender sends from now on, is
         * dropped. */
        shutdown(c->fd[p->dir == DIR_UP ? SIDE_TARGET : SIDE_CLIENT], SHUT_WR);
        d->shut = 1;
        d->dropping = 1;
        d->len = 0;
        return 0;
    case FAULT_BLACKHOLE:
        c->blackhole_until = now + p->ms;
        return 0;
    case FAULT_DELAY:
        d->paused_until = now + p->ms;
        return 0;
    case FAULT_CUT:
        d->cut_pieces = p->pieces;
        return 0;
    default:
        return 0;
    }
}

/* The byte offset of the next byte-triggered fault of a direction, or
 * UINT64_MAX. */
static uint64_t next_byte_fault(const conn *c, int dir)
{
    uint64_t at = UINT64_MAX;
    for (unsigned i = 0; i < c->nplan; i++) {
        const planned *p = &c->plan[i];
        if (!p->done && !p->by_time && p->dir == dir && p->at_bytes < at)
            at = p->at_bytes;
    }
    return at;
}

/* Applies the faults of c that are due. Returns 1 when c ended. */
static int apply_due(fault_proxy *px, size_t slot, int64_t now)
{
    conn *c = px->conns[slot];
    for (unsigned i = 0; i < c->nplan; i++) {
        planned *p = &c->plan[i];
        if (p->done)
            continue;
        int due = p->by_time ? now - c->accepted_at >= (int64_t)p->at_ms
                             : c->d[p->dir].forwarded >= p->at_bytes;
        if (due && apply(px, slot, i, now))
            return 1;
    }
    return 0;
}

/* Whether direction `dir` of c is stopped now. */
static int stopped(const fault_proxy *px, const conn *c, int dir, int partition, int64_t now)
{
    return c->dialing || partition || c->blackhole_until > now || c->d[dir].paused_until > now;
}

/* Reads into direction dir's buffer. Returns -1 when the connection must
 * end with an RST, 0 otherwise. */
static int pump_read(conn *c, int dir)
{
    direction *d = &c->d[dir];
    int src = c->fd[dir == DIR_UP ? SIDE_CLIENT : SIDE_TARGET];
    size_t room = BUF_SIZE - d->off - d->len;
    uint8_t scratch[4096];
    ssize_t n = d->dropping ? read(src, scratch, sizeof(scratch))
                            : read(src, d->buf + d->off + d->len, room);
    if (n > 0) {
        if (!d->dropping)
            d->len += (size_t)n;
        return 0;
    }
    if (n == 0) {
        d->eof = 1;
        return 0;
    }
    return errno == EAGAIN || errno == EINTR ? 0 : -1;
}

/* Writes from direction dir's buffer, never past the next byte-triggered
 * fault, and in pieces while a cut is active. Returns -1 when the
 * connection must end with an RST. */
static int pump_write(fault_proxy *px, conn *c, int dir, int64_t now)
{
    direction *d = &c->d[dir];
    int dst = c->fd[dir == DIR_UP ? SIDE_TARGET : SIDE_CLIENT];
    size_t n = d->len;
    uint64_t limit = next_byte_fault(c, dir);
    if (limit != UINT64_MAX && limit > d->forwarded && limit - d->forwarded < n)
        n = (size_t)(limit - d->forwarded);
    if (d->cut_pieces > 0) {
        /* Pieces of 1 byte, of a few bytes, or of up to 4 KiB. */
        uint64_t r = below(&c->rng, 3);
        size_t piece = r == 0 ? 1 : r == 1 ? 1 + below(&c->rng, 16) : 1 + below(&c->rng, 4096);
        if (piece < n)
            n = piece;
    }
    uint64_t rate = dir == DIR_UP ? px->config.rate_up : px->config.rate_down;
    if (rate) {
        /* A bucket of 20 ms of the rate (16 KiB at least): the rate is
         * kept over any stretch longer than that. */
        double burst = (double)rate / 50 < 16384 ? 16384 : (double)rate / 50;
        if (d->tokens_at == 0)
            d->tokens = burst;
        else
            d->tokens += (double)(now - d->tokens_at) * (double)rate / 1000;
        if (d->tokens > burst)
            d->tokens = burst;
        d->tokens_at = now;
        if (d->tokens < 1) {
            /* Back when a few KiB are allowed. */
            d->paused_until = now + 1 + (int64_t)(4096 * 1000 / rate);
            return 0;
        }
        if ((double)n > d->tokens)
            n = (size_t)d->tokens;
    }
    ssize_t w = send(dst, d->buf + d->off, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (rate)
        d->tokens -= (double)w;
    d->off += (size_t)w;
    d->len -= (size_t)w;
    if (d->len == 0)
        d->off = 0;
    d->forwarded += (uint64_t)w;
    pthread_mutex_lock(&px->mu);
    px->stats.bytes[dir] += (uint64_t)w;
    pthread_mutex_unlock(&px->mu);
    if (d->cut_pieces > 0) {
        d->cut_pieces--;
        /* A pause lets the receiver read the piece alone. */
        if (below(&c->rng, 2))
            d->paused_until = now + 1;
    }
    return 0;
}

/* Passes on a FIN that a source sent once its buffer is drained. Returns
 * 1 when both directions are over and the connection ended. */
static int pass_fins(fault_proxy *px, size_t slot)
{
    conn *c = px->conns[slot];
    for (int dir = 0; dir < 2; dir++) {
        direction *d = &c->d[dir];
        if (d->eof && d->len == 0 && !d->shut) {
            shutdown(c->fd[dir == DIR_UP ? SIDE_TARGET : SIDE_CLIENT], SHUT_WR);
            d->shut = 1;
        }
    }
    /* A direction cut by a fin fault is over when its source ended too. */
    if (c->d[0].shut && c->d[1].shut && c->d[0].eof && c->d[1].eof) {
        conn_end(px, slot, 0);
        return 1;
    }
    return 0;
}

/* ---- the loop --------------------------------------------------------------- */

typedef struct watch {
    int fd;
    conn *c;
    int side;
} watch;

static void *proxy_main(void *arg)
{
    fault_proxy *px = arg;
    struct pollfd *pfd = NULL;
    watch *w = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&px->mu);
        int stop = px->stop, partition = px->partition, reset_all = px->reset_all;
        px->reset_all = 0;
        pthread_mutex_unlock(&px->mu);
        if (stop)
            break;
        int64_t now = now_ms();

        /* Blips and partitions, then resets asked for. */
        for (unsigned i = 0; i < px->nblips; i++) {
            planned *b = &px->blips[i];
            if (b->done || now - px->started_at < (int64_t)b->at_ms)
                continue;
            char what[96];
            describe(b, what, sizeof(what));
            pthread_mutex_lock(&px->mu);
            b->done = 1;
            int over = disruptive(b->kind) && px->applied_budget >= px->config.max_faults;
            if (over) {
                px->stats.skipped++;
                record(px, "%s: skipped, over the budget", what);
            } else {
                px->applied_budget += disruptive(b->kind);
                px->stats.applied[b->kind]++;
                if (b->kind == FAULT_PARTITION)
                    px->stats.stalled_ms += b->ms;
                record(px, "%s: %zu connections", what, px->nconns);
            }
            pthread_mutex_unlock(&px->mu);
            if (!over && b->kind == FAULT_BLIP)
                reset_all = 1;
            if (!over && b->kind == FAULT_PARTITION && now + b->ms > px->partition_until)
                px->partition_until = now + b->ms;
        }
        /* A partition of the schedule works as one asked for. */
        if (px->partition_until > now)
            partition = 1;
        if (reset_all) {
            /* Every socket is made to reset first, then all are closed in
             * a tight loop: the RSTs leave as close together as they can,
             * as one fault's would. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            for (size_t i = 0; i < px->nconns; i++)
                for (int side = 0; side < 2; side++)
                    setsockopt(px->conns[i]->fd[side], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            while (px->nconns > 0)
                conn_end(px, px->nconns - 1, 0);
        }

        /* Faults that are due, FINs to pass on, and what to wait for. */
        int64_t wake_at = px->partition_until > now ? px->partition_until : INT64_MAX;
        for (size_t i = 0; i < px->nblips; i++)
            if (!px->blips[i].done && px->started_at + px->blips[i].at_ms < wake_at)
                wake_at = px->started_at + px->blips[i].at_ms;
        size_t need = 2 + 2 * px->nconns;
        if (need > cap) {
            size_t ncap = need * 2;
            struct pollfd *np = realloc(pfd, ncap * sizeof(*np));
            if (np != NULL)
                pfd = np;
            watch *nw = realloc(w, ncap * sizeof(*nw));
            if (nw != NULL)
                w = nw;
            if (np != NULL && nw != NULL)
                cap = ncap;
        }
        size_t n = 0;
        pfd[n] = (struct pollfd){.fd = px->wake[0], .events = POLLIN};
        w[n++] = (watch){.fd = px->wake[0]};
        if (!partition) {
            pfd[n] = (struct pollfd){.fd = px->listen_fd, .events = POLLIN};
            w[n++] = (watch){.fd = px->listen_fd};
        }
        for (size_t slot = 0; slot < px->nconns && n + 2 <= cap;) {
            if (apply_due(px, slot, now) || pass_fins(px, slot))
                continue; /* the slot now holds another connection */
            conn *c = px->conns[slot];
            short ev[2] = {0, 0};
            if (c->dialing) {
                ev[SIDE_TARGET] |= POLLOUT;
            } else {
                for (int dir = 0; dir < 2; dir++) {
                    direction *d = &c->d[dir];
                    int src = dir == DIR_UP ? SIDE_CLIENT : SIDE_TARGET;
                    if (stopped(px, c, dir, partition, now)) {
                        int64_t until = c->blackhole_until > d->paused_until ? c->blackhole_until
                                                                             : d->paused_until;
                        if (until > now && until < wake_at)
                            wake_at = until;
                        continue;
                    }
                    if (!d->eof && (d->dropping || d->off + d->len < BUF_SIZE))
                        ev[src] |= POLLIN;
                    if (d->len > 0)
                        ev[1 - src] |= POLLOUT;
                }
            }
            for (unsigned i = 0; i < c->nplan; i++)
                if (!c->plan[i].done && c->plan[i].by_time &&
                    c->accepted_at + c->plan[i].at_ms < wake_at)
                    wake_at = c->accepted_at + c->plan[i].at_ms;
            /* A socket with nothing to do is left out: polled without
             * events, a hung-up socket would wake the loop at once, and a
             * blackhole must not even notice an RST until it ends. */
            for (int side = 0; side < 2; side++) {
                pfd[n] = (struct pollfd){.fd = ev[side] ? c->fd[side] : -1, .events = ev[side]};
                w[n++] = (watch){.fd = c->fd[side], .c = c, .side = side};
            }
            slot++;
        }
        int timeout = -1;
        if (wake_at != INT64_MAX)
            timeout = wake_at <= now ? 0 : (int)(wake_at - now);
        int ready = poll(pfd, n, timeout);
        if (ready < 0)
            continue;
        now = now_ms();
        if (pfd[0].revents & POLLIN) {
            char drain[64];
            while (read(px->wake[0], drain, sizeof(drain)) > 0) {
            }
        }
        for (size_t i = 1; i < n; i++) {
            if (pfd[i].revents == 0)
                continue;
            if (w[i].c == NULL) {
                conn_accept(px);
                continue;
            }
            /* Find the connection: an earlier entry may have ended it. */
            size_t slot = 0;
            while (slot < px->nconns && px->conns[slot] != w[i].c)
                slot++;
            if (slot == px->nconns)
                continue;
            conn *c = w[i].c;
            int side = w[i].side;
            if (c->dialing && side == SIDE_TARGET) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(c->fd[SIDE_TARGET], SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    pthread_mutex_lock(&px->mu);
                    record(px, "conn %u: the target refused (%s)", c->index, strerror(err));
                    pthread_mutex_unlock(&px->mu);
                    conn_end(px, slot, 1);
                    continue;
                }
                c->dialing = 0;
                continue;
            }
            /* The direction this socket is the source of, and the one it
             * is the destination of. */
            int out_dir = side == SIDE_CLIENT ? DIR_UP : DIR_DOWN;
            int in_dir = 1 - out_dir;
            int broken = 0;
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                broken = (pfd[i].events & POLLIN) && pump_read(c, out_dir) < 0;
            if (!broken && (pfd[i].revents & POLLOUT))
                broken = pump_write(px, c, in_dir, now) < 0;
            if (!broken && (pfd[i].revents & POLLERR) && !(pfd[i].events & POLLIN))
                broken = 1;
            if (broken)
                conn_end(px, slot, 1);
        }
    }
    free(pfd);
    free(w);
    return NULL;
}

/* ---- the interface ---------------------------------------------------------- */

void fault_proxy_config_init(fault_proxy_config *config)
{
    memset(config, 0, sizeof(*config));
    config->listen = "127.0.0.1:0";
    config->kinds = (1u << FAULT_KIND_COUNT_) - 1;
    config->max_faults = 4;
    config->faults_per_conn = 3;
    config->max_blips = 1;
    config->partition_max_ms = 1000;
    config->span_bytes = 1u << 20;
    config->span_bytes_down = 1u << 20;
    config->span_ms = 1500;
    config->blackhole_max_ms = 1000;
    config->delay_max_ms = 200;
}

int fault_proxy_start(const fault_proxy_config *config, fault_proxy **proxyp)
{
    fault_proxy *px = calloc(1, sizeof(*px));
    if (px == NULL)
        return -1;
    px->config = *config;
    if (px->config.faults_per_conn > MAX_PLAN)
        px->config.faults_per_conn = MAX_PLAN;
    snprintf(px->listen_spec, sizeof(px->listen_spec), "%s",
             config->listen ? config->listen : "127.0.0.1:0");
    snprintf(px->target_spec, sizeof(px->target_spec), "%s", config->target ? config->target : "");
    px->config.listen = px->listen_spec;
    px->config.target = px->target_spec;
    px->listen_fd = -1;
    px->wake[0] = px->wake[1] = -1;
    pthread_mutex_init(&px->mu, NULL);
    px->record = calloc(MAX_RECORD, RECORD_LINE);

    struct sockaddr_storage la;
    socklen_t llen;
    if (px->record == NULL || resolve(px->target_spec, 0, &px->target, &px->target_len) < 0) {
        fprintf(stderr, "fault-proxy: cannot resolve the target %s\n", px->target_spec);
        goto fail;
    }
    if (resolve(px->listen_spec, 1, &la, &llen) < 0) {
        fprintf(stderr, "fault-proxy: cannot resolve %s\n", px->listen_spec);
        goto fail;
    }
    px->listen_fd = socket(la.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (px->listen_fd < 0 ||
        setsockopt(px->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(px->listen_fd, (struct sockaddr *)&la, llen) < 0 || listen(px->listen_fd, 128) < 0) {
        fprintf(stderr, "fault-proxy: cannot listen on %s: %s\n", px->listen_spec, strerror(errno));
        goto fail;
    }
    if (config->rate_up) {
        /* Inherited by the accepted sockets: a slow connection's bytes
         * wait in the client's send queue, not in the proxy's kernel. */
        int small = 64 * 1024;
        setsockopt(px->listen_fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    }
    llen = sizeof(la);
    getsockname(px->listen_fd, (struct sockaddr *)&la, &llen);
    format_address(&la, px->address, sizeof(px->address));
    if (pipe2(px->wake, O_NONBLOCK | O_CLOEXEC) < 0)
        goto fail;
    px->started_at = now_ms();
    make_blips(px);
    make_partitions(px);
    if (pthread_create(&px->thread, NULL, proxy_main, px) != 0)
        goto fail;
    *proxyp = px;
    return 0;
fail:;
    int saved = errno;
    if (px->listen_fd >= 0)
        close(px->listen_fd);
    for (int i = 0; i < 2; i++)
        if (px->wake[i] >= 0)
            close(px->wake[i]);
    pthread_mutex_destroy(&px->mu);
    free(px->record);
    free(px);
    errno = saved ? saved : EINVAL;
    return -1;
}

static void wake(fault_proxy *px)
{
    char b = 1;
    ssize_t rc = write(px->wake[1], &b, 1);
    (void)rc; /* a full pipe already wakes the thread */
}

void fault_proxy_stop(fault_proxy *px)
{
    if (px == NULL)
        return;
    pthread_mutex_lock(&px->mu);
    px->stop = 1;
    pthread_mutex_unlock(&px->mu);
    wake(px);
    pthread_join(px->thread, NULL);
    while (px->nconns > 0)
        conn_end(px, px->nconns - 1, 0);
    close(px->listen_fd);
    close(px->wake[0]);
    close(px->wake[1]);
    pthread_mutex_destroy(&px->mu);
    free(px->conns);
    free(px->plans);
    free(px->record);
    free(px);
}

const char *fault_proxy_address(const fault_proxy *px)
{
    return px->address;
}

void fault_proxy_partition(fault_proxy *px, int on)
{
    pthread_mutex_lock(&px->mu);
    if (px->partition != on)
        record(px, "partition %s", on ? "begins" : "ends");
    px->partition = on;
    pthread_mutex_unlock(&px->mu);
    wake(px);
}

void fault_proxy_reset_all(fault_proxy *px)
{
    pthread_mutex_lock(&px->mu);
    px->reset_all = 1;
    record(px, "reset of every connection asked for");
    pthread_mutex_unlock(&px->mu);
    wake(px);
}

void fault_proxy_stats_get(fault_proxy *px, fault_proxy_stats *out)
{
    pthread_mutex_lock(&px->mu);
    *out = px->stats;
    pthread_mutex_unlock(&px->mu);
}

void fault_proxy_report(fault_proxy *px, FILE *out, const char *prefix)
{
    pthread_mutex_lock(&px->mu);
    const fault_proxy_config *c = &px->config;
    fprintf(out,
            "%sschedule: seed=%llu, budget %u disruptive faults, up to %u per connection, "
            "span %llu bytes up, %llu down, %u ms\n",
            prefix, (unsigned long long)c->seed, c->max_faults, c->faults_per_conn,
            (unsigned long long)c->span_bytes, (unsigned long long)c->span_bytes_down, c->span_ms);
    char what[96];
    for (unsigned i = 0; i < px->nblips; i++) {
        describe(&px->blips[i], what, sizeof(what));
        fprintf(out, "%s  %s%s\n", prefix, what, px->blips[i].done ? "" : " (not reached)");
    }
    for (size_t k = 0; k < px->nplans; k++) {
        const plan_record *pr = &px->plans[k];
        fprintf(out, "%s  conn %u:%s\n", prefix, pr->index, pr->nplan ? "" : " no faults");
        for (unsigned i = 0; i < pr->nplan; i++) {
            describe(&pr->plan[i], what, sizeof(what));
            fprintf(out, "%s    %s%s\n", prefix, what, pr->plan[i].done ? "" : " (not reached)");
        }
    }
    fprintf(out, "%sapplied (%u disruptive of %u):\n", prefix, px->applied_budget, c->max_faults);
    for (unsigned i = 0; i < px->nrecord; i++)
        fprintf(out, "%s  %s\n", prefix, px->record[i]);
    if (px->record_lost)
        fprintf(out, "%s  ... and %u more\n", prefix, px->record_lost);
    pthread_mutex_unlock(&px->mu);
}
