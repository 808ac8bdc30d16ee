/*
 * metrics.c - hauld's counters, their exposition in Prometheus's text
 * format 0.0.4, and the HTTP/1.1 responder that serves it (metrics.h).
 *
 * ---- Threads ----------------------------------------------------------------
 *
 * Updates come from the loop thread (sessions asked for) and from the
 * workers (everything else), as relaxed atomic additions: a scrape reads
 * each counter once, and a scrape that runs beside an update sees it or
 * not, which the format allows. Only the making of a principal's counters
 * takes m->lock; a principal's slot is filled before m->nprincipals is
 * raised past it (release), and never changed after but by atomics, so
 * the responder reads the slots below what it loaded (acquire) without
 * the lock.
 *
 * The responder's thread owns the listener, the scrapers' connections and
 * their buffers. It reads what the engine and the pool count through
 * their own calls (haul_engine_stats_get, workers_busy), which take their
 * own short locks, and it takes no lock of the server's: the loop and the
 * workers never wait for it.
 */
#include "hauld/metrics.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hauld/server.h"

/* ---- the counters -------------------------------------------------------------- */

/* The buckets of the durations, in seconds: from a commit of a few files
 * on a fast disk to a verify of a large snapshot. */
static const double duration_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,    2.5, 5,
                                         10,   30,    60,   120, 300,  600, 1800, 3600};
#define DURATION_BUCKETS (sizeof(duration_bounds) / sizeof(duration_bounds[0]))

/* Counts per bucket, not cumulative (the last one is above every bound);
 * the exposition adds them up, so that its buckets, +Inf and _count agree
 * within a scrape even while an observation is being added. */
typedef struct histogram {
    _Atomic uint64_t buckets[DURATION_BUCKETS + 1];
    _Atomic uint64_t sum_us;
} histogram;

/* The kinds of requests, as the label kind says them (the commands of
 * haul), and what else a session may ask for. */
static const struct {
    int op;
    const char *name;
} kinds[] = {
    {HSP_PUSH, "push"},     {HSP_PULL, "pull"},   {HSP_LIST, "ls"}, {HSP_VERIFY, "verify"},
    {HSP_DELETE, "delete"}, {HSP_BENCH, "bench"}, {0, "other"},
};
#define KINDS (sizeof(kinds) / sizeof(kinds[0]))

static const char *const result_names[METRICS_RESULTS_] = {"ok", "error", "refused"};

struct metrics_principal {
    _Atomic uint64_t received, sent;
    char name[HSP_NAME_MAX + 1];
};

struct metrics {
    /* The principals (see "Threads"): slots[0 .. nprincipals), an index
     * of open addressing over them (slot + 1; 0 is empty), and "other". */
    pthread_mutex_t lock;
    metrics_principal **slots;
    unsigned max_principals;
    _Atomic unsigned nprincipals;
    unsigned *index;
    unsigned index_mask;
    metrics_principal other;

    _Atomic int64_t sessions;
    _Atomic uint64_t requests[KINDS][METRICS_RESULTS_];
    histogram commit, verify;
    double start_time; /* seconds since the epoch */

    /* The responder: its thread's, once started. */
    int started;
    metrics_config cfg;
    int listen_fd;
    int stop_fd;
    pthread_t thread;
    struct scraper *scrapers;
    struct pollfd *pfd;
    int64_t accept_paused_until_ms;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

int metrics_new(metrics **out, unsigned max_principals)
{
    *out = NULL;
    if (max_principals > METRICS_PRINCIPALS_MAX)
        max_principals = METRICS_PRINCIPALS_MAX;
    metrics *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return ENOMEM;
    m->listen_fd = m->stop_fd = -1;
    m->max_principals = max_principals;
    /* At most half full, so that a lookup ends soon at an empty entry. */
    unsigned size = 2;
    while (size < 2 * max_principals)
        size *= 2;
    m->index_mask = size - 1;
    m->index = calloc(size, sizeof(*m->index));
    m->slots = calloc(max_principals ? max_principals : 1, sizeof(*m->slots));
    if (m->index == NULL || m->slots == NULL) {
        free(m->index);
        free(m->slots);
        free(m);
        return ENOMEM;
    }
    pthread_mutex_init(&m->lock, NULL);
    snprintf(m->other.name, sizeof(m->other.name), "other");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    *out = m;
    return 0;
}

void metrics_free(metrics *m)
{
    if (m == NULL)
        return;
    unsigned n = atomic_load(&m->nprincipals);
    for (unsigned i = 0; i < n; i++)
        free(m->slots[i]);
    free(m->slots);
    free(m->index);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

metrics_principal *metrics_principal_get(metrics *m, const char *name)
{
    /* "other" is the shared series: a principal of that name counts
     * there too rather than making a second series of the same labels. */
    if (strcmp(name, "other") == 0 || strlen(name) > HSP_NAME_MAX)
        return &m->other;
    pthread_mutex_lock(&m->lock);
    unsigned n = atomic_load_explicit(&m->nprincipals, memory_order_relaxed);
    metrics_principal *found = &m->other;
    for (uint32_t i = name_hash(name) & m->index_mask;; i = (i + 1) & m->index_mask) {
        unsigned slot = m->index[i];
        if (slot != 0 && strcmp(m->slots[slot - 1]->name, name) == 0) {
            found = m->slots[slot - 1];
            break;
        }
        if (slot != 0)
            continue;
        if (n >= m->max_principals)
            break;
        metrics_principal *p = calloc(1, sizeof(*p));
        if (p == NULL)
            break; /* counted as "other" */
        snprintf(p->name, sizeof(p->name), "%s", name);
        m->slots[n] = p;
        m->index[i] = n + 1;
        atomic_store_explicit(&m->nprincipals, n + 1, memory_order_release);
        found = p;
        break;
    }
    pthread_mutex_unlock(&m->lock);
    return found;
}

void metrics_received(metrics_principal *p, uint64_t bytes)
{
    atomic_fetch_add_explicit(&p->received, bytes, memory_order_relaxed);
}

void metrics_sent(metrics_principal *p, uint64_t bytes)
{
    atomic_fetch_add_explicit(&p->sent, bytes, memory_order_relaxed);
}

void metrics_session_opened(metrics *m)
{
    atomic_fetch_add_explicit(&m->sessions, 1, memory_order_relaxed);
}

void metrics_session_closed(metrics *m)
{
    atomic_fetch_sub_explicit(&m->sessions, 1, memory_order_relaxed);
}

void metrics_request_ended(metrics *m, int op, int result)
{
    size_t k = 0;
    while (k < KINDS - 1 && kinds[k].op != op)
        k++;
    if (result < 0 || result >= METRICS_RESULTS_)
        result = METRICS_ERROR;
    atomic_fetch_add_explicit(&m->requests[k][result], 1, memory_order_relaxed);
}

static void histogram_observe(histogram *h, double seconds)
{
    if (!(seconds >= 0)) /* negative, or NaN */
        seconds = 0;
    size_t i = 0;
    while (i < DURATION_BUCKETS && seconds > duration_bounds[i])
        i++;
    double us = seconds * 1e6;
    atomic_fetch_add_explicit(&h->sum_us, us < 1e15 ? (uint64_t)us : (uint64_t)1e15,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
}

void metrics_commit_observed(metrics *m, double seconds)
{
    histogram_observe(&m->commit, seconds);
}

void metrics_verify_observed(metrics *m, double seconds)
{
    histogram_observe(&m->verify, seconds);
}

/* ---- the exposition ------------------------------------------------------------- */

/* A text that grows on the heap; once an allocation failed, it stays
 * failed and takes nothing more. */
typedef struct text {
    char *p;
    size_t len, cap;
    int failed;
} text;

static int text_room(text *t, size_t more)
{
    if (t->failed)
        return -1;
    if (t->len + more + 1 <= t->cap)
        return 0;
    size_t cap = t->cap ? t->cap : 16384;
    while (cap < t->len + more + 1)
        cap *= 2;
    char *p = realloc(t->p, cap);
    if (p == NULL) {
        t->failed = 1;
        return -1;
    }
    t->p = p;
    t->cap = cap;
    return 0;
}

static void __attribute__((format(printf, 2, 3))) text_printf(text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0 || text_room(t, (size_t)n) < 0)
        return;
    if ((size_t)n < sizeof(small)) {
        memcpy(t->p + t->len, small, (size_t)n + 1);
    } else {
        va_start(ap, fmt);
        vsnprintf(t->p + t->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    t->len += (size_t)n;
}

/* A label value, escaped as the format says: backslash, double quote and
 * line feed. */
static void text_label_value(text *t, const char *v)
{
    size_t n = strlen(v);
    if (text_room(t, 2 * n) < 0)
        return;
    for (; *v; v++) {
        if (*v == '\\' || *v == '"') {
            t->p[t->len++] = '\\';
            t->p[t->len++] = *v;
        } else if (*v == '\n') {
            t->p[t->len++] = '\\';
            t->p[t->len++] = 'n';
        } else {
            t->p[t->len++] = *v;
        }
    }
    t->p[t->len] = '\0';
}

static void family(text *t, const char *name, const char *type, const char *help)
{
    text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(text *t, const char *name, const char *help, double value)
{
    family(t, name, "gauge", help);
    text_printf(t, "%s %.17g\n", name, value);
}

static void counter(text *t, const char *name, const char *help, uint64_t value)
{
    family(t, name, "counter", help);
    text_printf(t, "%s %llu\n", name, (unsigned long long)value);
}

static void histogram_render(text *t, const char *name, const char *help, histogram *h)
{
    family(t, name, "histogram", help);
    uint64_t total = 0;
    for (size_t i = 0; i <= DURATION_BUCKETS; i++) {
        total += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i < DURATION_BUCKETS)
            text_printf(t, "%s_bucket{le=\"%g\"} %llu\n", name, duration_bounds[i],
                        (unsigned long long)total);
        else
            text_printf(t, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)total);
    }
    uint64_t us = atomic_load_explicit(&h->sum_us, memory_order_relaxed);
    text_printf(t, "%s_sum %.6f\n%s_count %llu\n", name, (double)us / 1e6, name,
                (unsigned long long)total);
}

/* The series of one principal's bytes. */
static void principal_bytes(text *t, const char *name, const metrics_principal *p, int sent)
{
    text_printf(t, "%s{principal=\"", name);
    text_label_value(t, p->name);
    uint64_t v = sent ? atomic_load_explicit(&p->sent, memory_order_relaxed)
                      : atomic_load_explicit(&p->received, memory_order_relaxed);
    text_printf(t, "\"} %llu\n", (unsigned long long)v);
}

static void principals_render(text *t, metrics *m, int sent)
{
    const char *name = sent ? "haul_sent_bytes_total" : "haul_received_bytes_total";
    family(t, name, "counter",
           sent ? "Bytes of the messages hauld sent to the clients of a principal (records "
                  "and file contents of the storage protocol, before the transport's framing "
                  "and encryption). Principals beyond --metrics-principals count as "
                  "principal=\"other\"."
                : "Bytes of the messages hauld received from the clients of a principal "
                  "(records and file contents of the storage protocol, before the "
                  "transport's framing and encryption). Principals beyond "
                  "--metrics-principals count as principal=\"other\".");
    unsigned n = atomic_load_explicit(&m->nprincipals, memory_order_acquire);
    for (unsigned i = 0; i < n; i++)
        principal_bytes(t, name, m->slots[i], sent);
    /* "other" once it counts anything, or once principals go to it. */
    if (n >= m->max_principals || atomic_load(&m->other.received) || atomic_load(&m->other.sent))
        principal_bytes(t, name, &m->other, sent);
}

/* The index of a state by its name in haul_conn_state_names(), or -1. */
static int conn_state(const char *name)
{
    int count = 0;
    const char *const *names = haul_conn_state_names(&count);
    for (int i = 0; i < count && i < 8; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

int metrics_render(metrics *m, const metrics_config *cfg, char **out, size_t *len)
{
    text t = {0};

    family(&t, "haul_build_info", "gauge",
           "The version of hauld and of the protocol it speaks, as labels; always 1.");
    text_printf(&t, "haul_build_info{version=\"%d.%d.%d\",protocol=\"%d\"} 1\n", HAUL_VERSION_MAJOR,
                HAUL_VERSION_MINOR, HAUL_VERSION_PATCH, HAUL_PROTOCOL_VERSION);
    gauge(&t, "haul_process_start_time_seconds",
          "When hauld started, in seconds since the Unix epoch.", m->start_time);

    int64_t sessions = atomic_load_explicit(&m->sessions, memory_order_relaxed);
    gauge(&t, "haul_sessions",
          "Sessions hauld holds now, one per request: being answered, waiting, or running.",
          (double)(sessions > 0 ? sessions : 0));

    family(&t, "haul_requests_total", "counter",
           "Requests that ended, by kind (push, pull, ls, verify, delete, bench, other) and "
           "result: ok (its RESULT said success), error (its RESULT said failure, or it ended "
           "without one), refused (its session was refused).");
    for (size_t k = 0; k < KINDS; k++)
        for (int r = 0; r < METRICS_RESULTS_; r++)
            text_printf(
                &t, "haul_requests_total{kind=\"%s\",result=\"%s\"} %llu\n", kinds[k].name,
                result_names[r],
                (unsigned long long)atomic_load_explicit(&m->requests[k][r], memory_order_relaxed));
    principals_render(&t, m, 0);
    principals_render(&t, m, 1);

    histogram_render(&t, "haul_commit_duration_seconds",
                     "How long the store took to commit a push's snapshot (made durable and "
                     "put in place), whether it succeeded or not.",
                     &m->commit);
    histogram_render(&t, "haul_verify_duration_seconds",
                     "How long a verify took, from its acceptance to its RESULT.", &m->verify);

    if (cfg && cfg->engine) {
        haul_engine_stats es;
        haul_engine_stats_get(cfg->engine, &es);
        int made = conn_state("CONN_NULL"), closed = conn_state("CONN_CLOSED");
        uint64_t opened = made >= 0 ? es.conn_state_entered[made] : 0;
        uint64_t ended = closed >= 0 ? es.conn_state_entered[closed] : 0;
        gauge(&t, "haul_connections",
              "Transport connections open now, in their handshake or joined to a client's "
              "pipe.",
              (double)(opened > ended ? opened - ended : 0));
        counter(&t, "haul_connections_opened_total", "Transport connections accepted.", opened);
        counter(&t, "haul_connections_closed_total",
                "Transport connections closed, for whatever reason (a client that leaves "
                "closes its own).",
                ended);
        counter(&t, "haul_connections_idle_timeouts_total",
                "Joined connections closed because nothing came from the client for "
                "--idle-timeout.",
                es.idle_timeouts);
        family(&t, "haul_connections_refused_total", "counter",
               "Connections closed before they joined: a failed TLS handshake or a refused "
               "certificate (tls), to make room for new handshakes (handshakes), or past "
               "their principal's max-connections (principal_limit).");
        text_printf(&t,
                    "haul_connections_refused_total{reason=\"tls\"} %llu\n"
                    "haul_connections_refused_total{reason=\"handshakes\"} %llu\n"
                    "haul_connections_refused_total{reason=\"principal_limit\"} %llu\n",
                    (unsigned long long)es.tls_refused, (unsigned long long)es.handshakes_refused,
                    (unsigned long long)es.principal_limited);
        counter(&t, "haul_protocol_errors_total", "Connections closed for bad input.",
                es.protocol_errors);
        counter(&t, "haul_transport_received_bytes_total",
                "Payload bytes of the chunks the transport read, all sessions together.",
                es.bytes_received);
        counter(&t, "haul_transport_sent_bytes_total",
                "Payload bytes of the chunks the transport wrote, all sessions together "
                "(chunks sent again included).",
                es.bytes_sent);
        gauge(&t, "haul_memory_used_bytes",
              "Bytes of message data the transport holds now against its budget (--memory): "
              "received and not yet stored, sent and not yet acknowledged, windows granted.",
              (double)es.memory_used);
        gauge(&t, "haul_memory_peak_bytes", "The most haul_memory_used_bytes has been.",
              (double)es.memory_peak);
    }
    if (cfg) {
        gauge(&t, "haul_memory_budget_bytes", "The transport's memory budget (--memory).",
              (double)cfg->memory_budget);
        gauge(&t, "haul_workers", "Threads that do the requests' work (--workers).",
              (double)cfg->workers);
        if (cfg->pool)
            gauge(&t, "haul_workers_busy", "Worker threads running a request's turn now.",
                  (double)workers_busy(cfg->pool));
    }
    if (t.failed) {
        free(t.p);
        return -1;
    }
    *out = t.p;
    *len = t.len;
    return 0;
}

/* ---- the responder ------------------------------------------------------------------ */

enum {
    SCRAPER_FREE,
    SCRAPER_READING,   /* its request */
    SCRAPER_WRITING,   /* the answer */
    SCRAPER_LINGERING, /* answered: reads what else it sends until it closes */
};

/* How long a scraper that has its answer may keep its connection before
 * hauld closes it: closing at once while the scraper's request had more
 * bytes (a body) would reset the connection, and lose the answer. */
#define LINGER_MS 1000
/* Once accept() fails for want of descriptors or memory, the listener is
 * left alone this long: it would stay readable and spin the thread. */
#define ACCEPT_PAUSE_MS 100
/* Connections accepted per round at most, so that a flood of them does
 * not hold up the answers. */
#define ACCEPT_BATCH 16

typedef struct scraper {
    int state;
    int fd;
    int64_t opened_ms, deadline_ms;
    char *in; /* METRICS_REQUEST_MAX bytes */
    size_t inlen;
    char *out;
    size_t outlen, outoff;
} scraper;

static void scraper_close(scraper *s)
{
    if (s->state == SCRAPER_FREE)
        return;
    close(s->fd);
    free(s->in);
    free(s->out);
    memset(s, 0, sizeof(*s));
    s->fd = -1;
    s->state = SCRAPER_FREE;
}

/* Sends what is left of the answer; once sent, lingers. */
static void scraper_write(scraper *s)
{
    while (s->outoff < s->outlen) {
        ssize_t n =
            send(s->fd, s->out + s->outoff, s->outlen - s->outoff, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            scraper_close(s);
            return;
        }
        s->outoff += (size_t)n;
    }
    free(s->out);
    s->out = NULL;
    s->outlen = s->outoff = 0;
    shutdown(s->fd, SHUT_WR);
    s->state = SCRAPER_LINGERING;
    int64_t linger = now_ms() + LINGER_MS;
    if (linger < s->deadline_ms)
        s->deadline_ms = linger;
}

/* Sets the answer (status line, headers and body) and sends what the
 * socket takes now. */
static void scraper_answer(scraper *s, int status, const char *reason, const char *headers,
                           const char *body, size_t body_len, int head_only)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\n%sContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                     reason, headers, body_len);
    size_t hlen = n > 0 && (size_t)n < sizeof(head) ? (size_t)n : 0;
    size_t blen = head_only ? 0 : body_len;
    s->out = malloc(hlen + blen);
    if (s->out == NULL || hlen == 0) {
        scraper_close(s);
        return;
    }
    memcpy(s->out, head, hlen);
    if (blen)
        memcpy(s->out + hlen, body, blen);
    s->outlen = hlen + blen;
    s->outoff = 0;
    s->state = SCRAPER_WRITING;
    scraper_write(s);
}

static void scraper_error(scraper *s, int status, const char *reason, const char *extra,
                          const char *body)
{
    char headers[256];
    snprintf(headers, sizeof(headers), "Content-Type: text/plain; charset=utf-8\r\n%s", extra);
    scraper_answer(s, status, reason, headers, body, strlen(body), 0);
}

static int token_is(const char *p, size_t len, const char *word)
{
    return strlen(word) == len && memcmp(p, word, len) == 0;
}

/* The request's head is complete: answers it. Only the request line
 * matters; the headers are read and left alone. */
static void scraper_request(metrics *m, scraper *s)
{
    const char *line = s->in;
    const char *eol = memchr(line, '\n', s->inlen);
    size_t len = eol ? (size_t)(eol - line) : s->inlen;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    const char *sp1 = memchr(line, ' ', len);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - line)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1 ||
        (size_t)(line + len - (sp2 + 1)) < 7 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
        memchr(sp2 + 1, ' ', len - (size_t)(sp2 + 1 - line)) != NULL) {
        scraper_error(s, 400, "Bad Request", "", "bad request: expected GET /metrics HTTP/1.1\n");
        return;
    }
    size_t mlen = (size_t)(sp1 - line);
    int head_only = token_is(line, mlen, "HEAD");
    if (!head_only && !token_is(line, mlen, "GET")) {
        scraper_error(s, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n",
                      "method not allowed: the metrics are read with GET /metrics\n");
        return;
    }
    const char *target = sp1 + 1;
    size_t tlen = (size_t)(sp2 - target);
    const char *query = memchr(target, '?', tlen);
    if (query)
        tlen = (size_t)(query - target);
    if (!token_is(target, tlen, "/metrics")) {
        scraper_error(s, 404, "Not Found", "", "not found: the metrics are at /metrics\n");
        return;
    }
    char *body;
    size_t blen;
    if (metrics_render(m, &m->cfg, &body, &blen) < 0) {
        scraper_error(s, 500, "Internal Server Error", "", "out of memory\n");
        return;
    }
    scraper_answer(s, 200, "OK", "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n", body,
                   blen, head_only);
    free(body);
}

/* Whether the head of the request (request line and headers) has ended:
 * an empty line, CRLF or LF alone. */
static int head_ended(const char *p, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n' || (p[i + 1] == '\r' && i + 2 < len && p[i + 2] == '\n'))
            return 1;
    }
    return 0;
}

static void scraper_read(metrics *m, scraper *s)
{
    for (;;) {
        if (s->state == SCRAPER_LINGERING) {
            char drop[4096];
            ssize_t n = recv(s->fd, drop, sizeof(drop), MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n <= 0) {
                scraper_close(s);
                return;
            }
            continue;
        }
        size_t room = METRICS_REQUEST_MAX - s->inlen;
        if (room == 0) {
            scraper_error(s, 431, "Request Header Fields Too Large", "",
                          "request too large: a scrape's request fits in 8 KiB\n");
            return;
        }
        ssize_t n = recv(s->fd, s->in + s->inlen, room, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            /* Gone before its request ended: nobody to answer. */
            scraper_close(s);
            return;
        }
        size_t from = s->inlen > 3 ? s->inlen - 3 : 0;
        s->inlen += (size_t)n;
        if (head_ended(s->in + from, s->inlen - from)) {
            scraper_request(m, s);
            return;
        }
    }
}

/* A slot for a new scraper: a free one, else the one that has waited
 * longest for its request (it is not answering), else none. */
static scraper *scraper_slot(metrics *m)
{
    scraper *oldest = NULL;
    for (unsigned i = 0; i < m->cfg.max_connections; i++) {
        scraper *s = &m->scrapers[i];
        if (s->state == SCRAPER_FREE)
            return s;
        if (s->state != SCRAPER_WRITING && (oldest == NULL || s->opened_ms < oldest->opened_ms))
            oldest = s;
    }
    if (oldest) {
        hauld_log(HAUL_LOG_DEBUG, "metrics: closing the oldest scraper's connection that is "
                                  "not being answered, to make room for a new one");
        scraper_close(oldest);
    }
    return oldest;
}

static void accept_scrapers(metrics *m)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(m->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                hauld_log(HAUL_LOG_DEBUG, "metrics: cannot accept a scraper: %s", strerror(errno));
                m->accept_paused_until_ms = now_ms() + ACCEPT_PAUSE_MS;
            }
            return;
        }
        scraper *s = scraper_slot(m);
        char *in = s ? malloc(METRICS_REQUEST_MAX) : NULL;
        if (in == NULL) {
            close(fd);
            continue;
        }
        s->state = SCRAPER_READING;
        s->fd = fd;
        s->in = in;
        s->inlen = 0;
        s->opened_ms = now_ms();
        s->deadline_ms = s->opened_ms + m->cfg.timeout_ms;
    }
}

static void *responder(void *arg)
{
    metrics *m = arg;
    unsigned max = m->cfg.max_connections;
    scraper **which = calloc(max, sizeof(*which));
    if (which == NULL) {
        hauld_log(HAUL_LOG_ERROR, "metrics: out of memory: no more scrapes are answered");
        return NULL;
    }
    for (;;) {
        int64_t now = now_ms();
        int timeout = -1;
        struct pollfd *pfd = m->pfd;
        nfds_t n = 0;
        pfd[n++] = (struct pollfd){.fd = m->stop_fd, .events = POLLIN};
        int listening = now >= m->accept_paused_until_ms;
        pfd[n++] = (struct pollfd){.fd = listening ? m->listen_fd : -1, .events = POLLIN};
        if (!listening)
            timeout = (int)(m->accept_paused_until_ms - now);
        unsigned k = 0;
        for (unsigned i = 0; i < max; i++) {
            scraper *s = &m->scrapers[i];
            if (s->state == SCRAPER_FREE)
                continue;
            if (now >= s->deadline_ms) {
                hauld_log(HAUL_LOG_DEBUG, "metrics: closing a scraper's connection after %u ms",
                          m->cfg.timeout_ms);
                scraper_close(s);
                continue;
            }
            int left = (int)(s->deadline_ms - now);
            if (timeout < 0 || left < timeout)
                timeout = left;
            short events = s->state == SCRAPER_WRITING ? POLLOUT : POLLIN;
            pfd[n++] = (struct pollfd){.fd = s->fd, .events = events};
            which[k++] = s;
        }
        if (poll(pfd, n, timeout) < 0 && errno != EINTR) {
            hauld_log(HAUL_LOG_ERROR, "metrics: poll failed: %s; no more scrapes are answered",
                      strerror(errno));
            break;
        }
        if (pfd[0].revents)
            break;
        for (unsigned j = 0; j < k; j++) {
            scraper *s = which[j];
            short re = pfd[2 + j].revents;
            if (re == 0 || s->state == SCRAPER_FREE)
                continue;
            if (s->state == SCRAPER_WRITING)
                scraper_write(s);
            else
                scraper_read(m, s);
        }
        if (pfd[1].revents & POLLIN)
            accept_scrapers(m);
    }
    for (unsigned i = 0; i < max; i++)
        scraper_close(&m->scrapers[i]);
    free(which);
    return NULL;
}

/* Splits HOST:PORT, [V6]:PORT or :PORT; host is "" for every address. */
static int split_address(const char *address, char *host, size_t host_len, char *port,
                         size_t port_len)
{
    const char *colon;
    if (address[0] == '[') {
        const char *close = strchr(address, ']');
        if (close == NULL || close[1] != ':' || (size_t)(close - address - 1) >= host_len)
            return -1;
        memcpy(host, address + 1, (size_t)(close - address - 1));
        host[close - address - 1] = '\0';
        colon = close + 1;
    } else {
        colon = strrchr(address, ':');
        if (colon == NULL || (size_t)(colon - address) >= host_len ||
            memchr(address, ':', (size_t)(colon - address)) != NULL)
            return -1;
        memcpy(host, address, (size_t)(colon - address));
        host[colon - address] = '\0';
    }
    const char *p = colon + 1;
    size_t n = strlen(p);
    if (n == 0 || n >= port_len || strspn(p, "0123456789") != n || strtoul(p, NULL, 10) > 65535)
        return -1;
    memcpy(port, p, n + 1);
    return 0;
}

/* A socket listening on address, or -1 with why. Every address (":PORT")
 * is IPv6 and IPv4 together where the system has IPv6, IPv4 alone
 * otherwise. */
static int listen_on(const char *address, char *why, size_t why_len)
{
    char host[256], port[8];
    if (split_address(address, host, sizeof(host), port, sizeof(port)) < 0) {
        snprintf(why, why_len, "not an address (HOST:PORT, [V6]:PORT or :PORT)");
        return -1;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                             .ai_family = AF_UNSPEC};
    struct addrinfo *list = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &list);
    if (rc != 0) {
        snprintf(why, why_len, "%s", gai_strerror(rc));
        return -1;
    }
    int fd = -1, err = 0;
    /* With every address, IPv6 first: it takes IPv4 too. */
    for (int pass = 0; pass < 2 && fd < 0; pass++) {
        for (struct addrinfo *a = list; a && fd < 0; a = a->ai_next) {
            if (!host[0] && (pass == 0) != (a->ai_family == AF_INET6))
                continue;
            if (host[0] && pass == 1)
                break;
            fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                err = errno;
                continue;
            }
            int one = 1, zero = 0;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            if (a->ai_family == AF_INET6 && !host[0])
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
            if (bind(fd, a->ai_addr, a->ai_addrlen) < 0 || listen(fd, 64) < 0) {
                err = errno;
                close(fd);
                fd = -1;
            }
        }
    }
    freeaddrinfo(list);
    if (fd < 0)
        snprintf(why, why_len, "%s",
                 err == EADDRINUSE      ? "address in use"
                 : err == EADDRNOTAVAIL ? "no such address on this machine"
                 : err                  ? strerror(err)
                                        : "no address to listen on");
    return fd;
}

/* The address a socket listens on, as HOST:PORT or [V6]:PORT. */
static void bound_address(int fd, char *out, size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
        getnameinfo((struct sockaddr *)&ss, sl, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, len, "?");
        return;
    }
    snprintf(out, len, ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

int metrics_start(metrics *m, const metrics_config *cfg, char *address, size_t address_len,
                  char *why, size_t why_len)
{
    if (cfg->max_connections == 0 || cfg->max_connections > METRICS_CONNECTIONS_MAX ||
        cfg->timeout_ms == 0) {
        snprintf(why, why_len, "bad limits");
        return -1;
    }
    m->cfg = *cfg;
    int fd = listen_on(cfg->address, why, why_len);
    if (fd < 0)
        return -1;
    m->scrapers = calloc(cfg->max_connections, sizeof(*m->scrapers));
    m->pfd = calloc(cfg->max_connections + 2, sizeof(*m->pfd));
    m->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->scrapers == NULL || m->pfd == NULL || m->stop_fd < 0) {
        snprintf(why, why_len, "%s", strerror(m->stop_fd < 0 ? errno : ENOMEM));
        goto fail;
    }
    for (unsigned i = 0; i < cfg->max_connections; i++)
        m->scrapers[i].fd = -1;
    m->listen_fd = fd;
    bound_address(fd, address, address_len);
    int rc = pthread_create(&m->thread, NULL, responder, m);
    if (rc) {
        snprintf(why, why_len, "cannot start its thread: %s", strerror(rc));
        m->listen_fd = -1;
        goto fail;
    }
    m->started = 1;
    return 0;
fail:
    close(fd);
    if (m->stop_fd >= 0)
        close(m->stop_fd);
    m->stop_fd = -1;
    free(m->scrapers);
    free(m->pfd);
    m->scrapers = NULL;
    m->pfd = NULL;
    return -1;
}

void metrics_stop(metrics *m)
{
    if (m == NULL || !m->started)
        return;
    uint64_t one = 1;
    if (write(m->stop_fd, &one, sizeof(one)) < 0) {
        /* The counter is full: the thread has a wake-up waiting anyway. */
    }
    pthread_join(m->thread, NULL);
    m->started = 0;
    close(m->listen_fd);
    close(m->stop_fd);
    m->listen_fd = m->stop_fd = -1;
    free(m->scrapers);
    free(m->pfd);
    m->scrapers = NULL;
    m->pfd = NULL;
}
