/*
 * metrics_test.c - hauld --metrics, with real hauld and haul processes
 * (see e2e.h), scraped over plain sockets:
 *
 *   - while a push runs (held inside a store call, as in workers_test.c,
 *     by build/tests/iofault_preload.so) the scrape shows its session and
 *     the bytes of its principal, and no request ended; once it ended, the
 *     push counts as ok, its principal's bytes cover what it sent, the
 *     commit histogram counts one, and the sessions are back to 0; a
 *     verify then counts in its own histogram;
 *   - scrapers that send too much, the wrong method, the wrong path,
 *     garbage or nothing get their status or are closed after
 *     --metrics-timeout, and a scraper still gets its answer while silent
 *     ones hold every connection; none of it disturbs the push that runs
 *     meanwhile;
 *   - principals beyond --metrics-principals count as "other", and a
 *     principal whose requests are refused counts no bytes;
 *   - --metrics works from the configuration file, and an address that
 *     cannot be used stops hauld with status 1.
 *
 * Every scrape goes through a checker of the text format (expo_check):
 * sample lines `name{labels} value`, HELP and TYPE before the samples of
 * their family, a family's samples together, no series twice, histogram
 * buckets cumulative with +Inf equal to _count. The checker has a test of
 * its own that feeds it broken expositions.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"
#include "iofault.h"

/* Seconds a command may take. */
#define CMD_TIMEOUT 30
#define SCRAPE_TIMEOUT 10.0

/* ------------------------------------------------------------------------ */
/* The text format's checker                                                */
/* ------------------------------------------------------------------------ */

#define FAMILIES_MAX 128
#define SERIES_MAX 4096

typedef struct family_seen {
    char name[128];
    char type[16];
    int help, samples, closed;
    /* Histograms (without labels but le): the buckets so far. */
    double last_le, last_bucket, inf, count;
    int buckets, have_inf, have_sum, have_count;
} family_seen;

typedef struct expo {
    family_seen f[FAMILIES_MAX];
    int n;
    char *series[SERIES_MAX];
    int nseries;
    char why[256];
} expo;

static int name_ok(const char *p, size_t len, int colon)
{
    if (len == 0 || isdigit((unsigned char)p[0]))
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum((unsigned char)p[i]) || p[i] == '_' || (colon && p[i] == ':')))
            return 0;
    return 1;
}

static family_seen *expo_family(expo *e, const char *name, size_t len)
{
    for (int i = 0; i < e->n; i++)
        if (strlen(e->f[i].name) == len && memcmp(e->f[i].name, name, len) == 0)
            return &e->f[i];
    if (e->n == FAMILIES_MAX || len >= sizeof(e->f[0].name))
        return NULL;
    family_seen *f = &e->f[e->n++];
    memset(f, 0, sizeof(*f));
    memcpy(f->name, name, len);
    f->last_le = -INFINITY;
    return f;
}

#define EXPO_FAIL(e, ...)                                                                          \
    do {                                                                                           \
        snprintf((e)->why, sizeof((e)->why), __VA_ARGS__);                                         \
        return -1;                                                                                 \
    } while (0)

/* A comment line: # HELP name text, # TYPE name type, or another. */
static int expo_comment(expo *e, const char *line, size_t len)
{
    int help = len > 7 && memcmp(line, "# HELP ", 7) == 0;
    int type = len > 7 && memcmp(line, "# TYPE ", 7) == 0;
    if (!help && !type)
        return 0;
    const char *name = line + 7;
    const char *sp = memchr(name, ' ', len - 7);
    if (sp == NULL)
        EXPO_FAIL(e, "%s without its text: %.*s", help ? "HELP" : "TYPE", (int)len, line);
    size_t nlen = (size_t)(sp - name);
    if (!name_ok(name, nlen, 1))
        EXPO_FAIL(e, "bad metric name in: %.*s", (int)len, line);
    family_seen *f = expo_family(e, name, nlen);
    if (f == NULL)
        EXPO_FAIL(e, "too many families");
    if (f->samples)
        EXPO_FAIL(e, "%s after the samples of %s", help ? "HELP" : "TYPE", f->name);
    const char *rest = sp + 1;
    size_t rlen = len - (size_t)(rest - line);
    if (help) {
        if (f->help++)
            EXPO_FAIL(e, "HELP twice for %s", f->name);
        return 0;
    }
    if (f->type[0])
        EXPO_FAIL(e, "TYPE twice for %s", f->name);
    static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
    for (int i = 0; i < 5; i++)
        if (strlen(types[i]) == rlen && memcmp(types[i], rest, rlen) == 0)
            memcpy(f->type, rest, rlen);
    if (f->type[0] == '\0')
        EXPO_FAIL(e, "unknown TYPE: %.*s", (int)len, line);
    return 0;
}

/* Reads {name="value",...}: the label le's value into le (when there),
 * whether other labels are there into other. Returns the length read, or
 * -1. */
static long expo_labels(expo *e, const char *p, size_t len, char *le, size_t le_len, int *other)
{
    size_t i = 1; /* past '{' */
    *other = 0;
    le[0] = '\0';
    while (i < len && p[i] != '}') {
        size_t start = i;
        while (i < len && p[i] != '=')
            i++;
        if (i >= len || !name_ok(p + start, i - start, 0))
            EXPO_FAIL(e, "bad label name");
        int is_le = i - start == 2 && memcmp(p + start, "le", 2) == 0;
        *other |= !is_le;
        if (++i >= len || p[i] != '"')
            EXPO_FAIL(e, "label value without its quotes");
        i++;
        size_t o = 0;
        for (;;) {
            if (i >= len)
                EXPO_FAIL(e, "label value not closed");
            char c = p[i++];
            if (c == '"')
                break;
            if (c == '\\') {
                if (i >= len || (p[i] != '\\' && p[i] != '"' && p[i] != 'n'))
                    EXPO_FAIL(e, "bad escape in a label value");
                c = p[i] == 'n' ? '\n' : p[i];
                i++;
            }
            if (is_le && o + 1 < le_len)
                le[o++] = c;
        }
        if (is_le)
            le[o] = '\0';
        if (i < len && p[i] == ',')
            i++;
        else if (i < len && p[i] != '}')
            EXPO_FAIL(e, "labels not separated by commas");
    }
    if (i >= len)
        EXPO_FAIL(e, "labels not closed");
    return (long)i + 1;
}

static int expo_sample(expo *e, const char *line, size_t len)
{
    size_t n = 0;
    while (n < len && line[n] != '{' && line[n] != ' ')
        n++;
    if (!name_ok(line, n, 1))
        EXPO_FAIL(e, "bad sample name: %.*s", (int)len, line);
    char le[64];
    int other = 0;
    size_t at = n;
    if (at < len && line[at] == '{') {
        long k = expo_labels(e, line + at, len - at, le, sizeof(le), &other);
        if (k < 0)
            return -1;
        at += (size_t)k;
    } else {
        le[0] = '\0';
    }
    if (at >= len || line[at] != ' ')
        EXPO_FAIL(e, "no value: %.*s", (int)len, line);
    char value[64];
    size_t vlen = len - at - 1;
    if (vlen == 0 || vlen >= sizeof(value))
        EXPO_FAIL(e, "bad value: %.*s", (int)len, line);
    memcpy(value, line + at + 1, vlen);
    value[vlen] = '\0';
    char *end;
    double v = strtod(value, &end);
    if (*end != '\0')
        EXPO_FAIL(e, "bad value: %.*s", (int)len, line);

    /* No series twice. */
    char *series = strndup(line, at);
    CHECK(series != NULL);
    for (int i = 0; i < e->nseries; i++)
        if (strcmp(e->series[i], series) == 0) {
            free(series);
            EXPO_FAIL(e, "a series twice: %.*s", (int)at, line);
        }
    if (e->nseries == SERIES_MAX) {
        free(series);
        EXPO_FAIL(e, "too many series");
    }
    e->series[e->nseries++] = series;

    /* Its family: a histogram's _bucket, _sum and _count belong to it. */
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    family_seen *f = NULL;
    int part = -1;
    for (int s = 0; s < 3 && f == NULL; s++) {
        size_t sl = strlen(suffixes[s]);
        if (n > sl && memcmp(line + n - sl, suffixes[s], sl) == 0) {
            for (int i = 0; i < e->n; i++)
                if (strlen(e->f[i].name) == n - sl && memcmp(e->f[i].name, line, n - sl) == 0 &&
                    strcmp(e->f[i].type, "histogram") == 0) {
                    f = &e->f[i];
                    part = s;
                }
        }
    }
    if (f == NULL)
        f = expo_family(e, line, n);
    if (f == NULL)
        EXPO_FAIL(e, "too many families");
    if (!f->help || !f->type[0])
        EXPO_FAIL(e, "a sample of %s before its HELP and TYPE", f->name);
    if (f->closed)
        EXPO_FAIL(e, "the samples of %s are not together", f->name);
    /* Every other family's samples are over. */
    for (int i = 0; i < e->n; i++)
        if (&e->f[i] != f && e->f[i].samples)
            e->f[i].closed = 1;
    f->samples++;
    if (strcmp(f->type, "histogram") != 0)
        return 0;
    if (part < 0)
        EXPO_FAIL(e, "a sample of histogram %s that is no _bucket, _sum or _count", f->name);
    if (other)
        EXPO_FAIL(e, "the checker takes histograms with no label but le (%s)", f->name);
    if (part == 0) {
        if (le[0] == '\0')
            EXPO_FAIL(e, "a bucket of %s without le", f->name);
        if (f->have_inf)
            EXPO_FAIL(e, "a bucket of %s after +Inf", f->name);
        double bound = strcmp(le, "+Inf") == 0 ? INFINITY : strtod(le, &end);
        if (bound != INFINITY && *end != '\0')
            EXPO_FAIL(e, "bad le=\"%s\" in %s", le, f->name);
        if (!(bound > f->last_le))
            EXPO_FAIL(e, "the buckets of %s are not in increasing order of le", f->name);
        if (f->buckets && v < f->last_bucket)
            EXPO_FAIL(e, "the buckets of %s are not cumulative (le=\"%s\")", f->name, le);
        f->last_le = bound;
        f->last_bucket = v;
        f->buckets++;
        if (bound == INFINITY) {
            f->have_inf = 1;
            f->inf = v;
        }
    } else if (part == 1) {
        f->have_sum = 1;
    } else {
        f->have_count = 1;
        f->count = v;
    }
    return 0;
}

/* Checks a whole exposition; 0, or -1 with the reason in e->why. */
static int expo_parse(expo *e, const char *text)
{
    memset(e, 0, sizeof(*e));
    size_t total = strlen(text);
    if (total == 0 || text[total - 1] != '\n')
        EXPO_FAIL(e, "the exposition does not end with a line feed");
    for (const char *line = text; *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = (size_t)(eol - line);
        int rc = 0;
        if (len == 0)
            rc = 0;
        else if (line[0] == '#')
            rc = expo_comment(e, line, len);
        else
            rc = expo_sample(e, line, len);
        if (rc < 0)
            return -1;
        line = eol + 1;
    }
    for (int i = 0; i < e->n; i++) {
        family_seen *f = &e->f[i];
        if (strcmp(f->type, "histogram") != 0 || f->samples == 0)
            continue;
        if (!f->have_inf || !f->have_sum || !f->have_count)
            EXPO_FAIL(e, "histogram %s lacks its +Inf bucket, _sum or _count", f->name);
        if (f->inf != f->count)
            EXPO_FAIL(e, "histogram %s: +Inf is %g, _count %g", f->name, f->inf, f->count);
    }
    return 0;
}

static void expo_free(expo *e)
{
    for (int i = 0; i < e->nseries; i++)
        free(e->series[i]);
    e->nseries = 0;
}

static int expo_valid(const char *text, char *why, size_t why_len)
{
    expo *e = malloc(sizeof(*e));
    CHECK(e != NULL);
    int rc = expo_parse(e, text);
    snprintf(why, why_len, "%s", e->why);
    expo_free(e);
    free(e);
    return rc;
}

/* The value of a series, written as hauld writes it (e.g.
 * `haul_requests_total{kind="push",result="ok"}`), or -1 when absent. */
static double metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line && *line;) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Scraping                                                                 */
/* ------------------------------------------------------------------------ */

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    return fd;
}

static void send_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

/* Reads until the peer closes (or resets) the connection, up to timeout
 * seconds; returns what came (a heap string) and sets *closed when the
 * connection ended in time. */
static char *read_to_end(int fd, double timeout, int *closed)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    CHECK(buf != NULL);
    double deadline = e2e_now() + timeout;
    *closed = 0;
    for (;;) {
        double left = deadline - e2e_now();
        if (left <= 0)
            break;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, (int)(left * 1000) + 1) <= 0)
            continue;
        if (len + 1 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            CHECK(buf != NULL);
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *closed = 1;
            break;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

/* Sends request to the metrics port and returns the whole answer; the
 * connection must end within SCRAPE_TIMEOUT. */
static char *exchange(int port, const char *request, size_t len)
{
    int fd = connect_port(port);
    send_all(fd, request, len);
    int closed;
    char *answer = read_to_end(fd, SCRAPE_TIMEOUT, &closed);
    close(fd);
    if (!closed)
        harness_log("the metrics connection was not closed after its answer: %s", answer);
    CHECK(closed);
    return answer;
}

static int status_of(const char *answer)
{
    int status = 0;
    if (sscanf(answer, "HTTP/1.1 %d ", &status) != 1)
        return -1;
    return status;
}

/* GET /metrics: a 200 in the text format, whose body is returned (heap). */
static char *scrape(int port)
{
    static const char get[] = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: "
                              "text/plain\r\nUser-Agent: metrics_test\r\n\r\n";
    char *answer = exchange(port, get, sizeof(get) - 1);
    if (status_of(answer) != 200)
        harness_log("scrape answered: %s", answer);
    CHECK_EQ(status_of(answer), 200);
    CHECK(e2e_contains(answer, "\r\nContent-Type: text/plain; version=0.0.4"));
    CHECK(e2e_contains(answer, "\r\nConnection: close\r\n"));
    char *body = strstr(answer, "\r\n\r\n");
    CHECK(body != NULL);
    body += 4;
    long clen = -1;
    const char *cl = strcasestr(answer, "\r\nContent-Length: ");
    CHECK(cl != NULL);
    clen = strtol(cl + 18, NULL, 10);
    CHECK_EQ((long)strlen(body), clen);
    char why[256];
    if (expo_valid(body, why, sizeof(why)) < 0)
        harness_log("not the text format: %s\n%s", why, body);
    CHECK(expo_valid(body, why, sizeof(why)) == 0);
    char *copy = strdup(body);
    CHECK(copy != NULL);
    free(answer);
    return copy;
}

/* The value of one series in a fresh scrape. */
static double scrape_one(int port, const char *series)
{
    char *body = scrape(port);
    double v = metric(body, series);
    free(body);
    return v;
}

/* Checks the value of a series against expected (doubles: the harness's
 * CHECK_EQ compares integers). An absent series has the value -1. */
#define CHECK_VALUE(text, series, op, expected)                                                    \
    do {                                                                                           \
        const double value_ = metric((text), (series));                                            \
        const double expected_ = (expected);                                                       \
        if (!(value_ op expected_))                                                                \
            harness_log("%s is %.17g, expected %s %.17g", (series), value_, #op, expected_);       \
        CHECK(value_ op expected_);                                                                \
    } while (0)

#define CHECK_SCRAPED(port, series, op, expected)                                                  \
    do {                                                                                           \
        char *scraped_ = scrape(port);                                                             \
        CHECK_VALUE(scraped_, series, op, expected);                                               \
        free(scraped_);                                                                            \
    } while (0)

/* The metrics port from hauld's log line "serving metrics on
 * http://HOST:PORT/metrics". */
static int metrics_port(e2e_env *env)
{
    char *log = e2e_slurp(env->server.log_path);
    const char *at = strstr(log, "serving metrics on http://");
    if (at == NULL)
        harness_log("no metrics line in hauld's log:\n%s", log);
    CHECK(at != NULL);
    const char *slash = strstr(at + 26, "/metrics");
    CHECK(slash != NULL);
    const char *colon = slash;
    while (colon > at && *colon != ':')
        colon--;
    int port = atoi(colon + 1);
    free(log);
    CHECK(port > 0 && port < 65536);
    return port;
}

/* ------------------------------------------------------------------------ */
/* A push held inside a store call (tests/iofault.h)                         */
/* ------------------------------------------------------------------------ */

/* A tree of a few files, one of them named to stall; returns its bytes. */
static uint64_t make_tree(const char *root, uint64_t seed, int stall, uint64_t big)
{
    e2e_mkdir(root);
    e2e_file(e2e_at(root, "a"), big, seed, 0644);
    e2e_mkdir(e2e_at(root, "d"));
    e2e_file(e2e_at(root, "d/b"), 70000, seed + 1, 0644);
    if (stall)
        e2e_file(e2e_at(root, "d/stall-here"), big, seed + 2, 0644);
    e2e_file(e2e_at(root, "z"), big, seed + 3, 0600);
    e2e_stamp_tree(root);
    return 70000 + (stall ? 3 : 2) * big;
}

/* Waits, scraping, until hauld holds no session: the requests ended. */
static void wait_sessions_zero(int port)
{
    int ok;
    E2E_WAIT_UNTIL(ok, scrape_one(port, "haul_sessions") == 0, 10000);
    CHECK(ok);
}

/* ------------------------------------------------------------------------ */

/* The checker itself must reject what is not the format: else every check
 * of a scrape below could not fail. */
TEST(checker_rejects_broken_expositions)
{
    static const char good[] = "# HELP a_total A.\n# TYPE a_total counter\n"
                               "a_total{x=\"q\\\"\\\\\\n\"} 1\n"
                               "# HELP h H.\n# TYPE h histogram\n"
                               "h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"1\"} 2\n"
                               "h_bucket{le=\"+Inf\"} 3\nh_sum 1.5\nh_count 3\n";
    static const char *const bad[] = {
        /* a sample before its TYPE */
        "# HELP a A.\na 1\n# TYPE a gauge\n",
        /* no HELP */
        "# TYPE a gauge\na 1\n",
        /* buckets that are not cumulative */
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 2\nh_bucket{le=\"1\"} 1\n"
        "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
        /* +Inf that is not _count */
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
        "h_sum 1\nh_count 3\n",
        /* no +Inf */
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        /* a bad escape, an open label, no value, a bad value */
        "# HELP a A.\n# TYPE a gauge\na{x=\"\\t\"} 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1} 1\n",
        "# HELP a A.\n# TYPE a gauge\na\n",
        "# HELP a A.\n# TYPE a gauge\na 1x\n",
        /* a series twice, a family split in two */
        "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",
        "# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\na{x=\"1\"} 1\nb 1\n"
        "a{x=\"2\"} 1\n",
        /* a bad name, no final line feed */
        "# HELP 1a A.\n# TYPE 1a gauge\n1a 1\n",
        "# HELP a A.\n# TYPE a gauge\na 1",
    };
    char why[256];
    CHECK_EQ(expo_valid(good, why, sizeof(why)), 0);
    CHECK_VALUE(good, "h_count", ==, 3);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (expo_valid(bad[i], why, sizeof(why)) == 0)
            harness_log("accepted:\n%s", bad[i]);
        CHECK_EQ(expo_valid(bad[i], why, sizeof(why)), -1);
    }
}

TEST_TIMEOUT(push_counted_while_it_runs_and_once_it_ended, 120)
{
    e2e_env env;
    const char *const args[] = {"--metrics", "127.0.0.1:0", NULL};
    iofault_start_stalling(&env, "write:stall-here", args);
    int port = metrics_port(&env);
    char src[PATH_MAX], url[512];
    uint64_t size = make_tree(e2e_path(&env, src, "src"), 10, 1, 2 * E2E_MIB);

    char *body = scrape(port);
    CHECK_VALUE(body, "haul_sessions", ==, 0);
    CHECK_VALUE(body, "haul_requests_total{kind=\"push\",result=\"ok\"}", ==, 0);
    CHECK_VALUE(body, "haul_commit_duration_seconds_count", ==, 0);
    CHECK_VALUE(body, "haul_memory_budget_bytes", ==, 256.0 * E2E_MIB);
    CHECK_VALUE(body, "haul_build_info{version=\"0.1.0\",protocol=\"2\"}", ==, 1);
    CHECK_VALUE(body, "haul_process_start_time_seconds", >, 1.5e9);
    CHECK_VALUE(body, "haul_workers", >, 0);
    free(body);

    /* The push holds its session inside a store call. */
    e2e_proc push = {0};
    e2e_haul_start(&env, &push, "push", src, e2e_url(&env, url, "ds"));
    CHECK(iofault_stall_wait(&env));
    body = scrape(port);
    CHECK_VALUE(body, "haul_sessions", ==, 1);
    CHECK_VALUE(body, "haul_connections", >=, 1);
    CHECK_VALUE(body, "haul_received_bytes_total{principal=\"default\"}", >, 0);
    CHECK_VALUE(body, "haul_requests_total{kind=\"push\",result=\"ok\"}", ==, 0);
    CHECK_VALUE(body, "haul_commit_duration_seconds_count", ==, 0);
    CHECK_VALUE(body, "haul_memory_used_bytes", >, 0);
    free(body);
    CHECK(!e2e_proc_exited(&push));

    /* Released, it ends, and counts. */
    iofault_stall_release(&env);
    e2e_proc_wait(&push, CMD_TIMEOUT);
    CHECK_EXIT(&push, 0);
    e2e_proc_free(&push);
    wait_sessions_zero(port);
    body = scrape(port);
    CHECK_VALUE(body, "haul_requests_total{kind=\"push\",result=\"ok\"}", ==, 1);
    CHECK_VALUE(body, "haul_requests_total{kind=\"push\",result=\"error\"}", ==, 0);
    CHECK_VALUE(body, "haul_requests_total{kind=\"push\",result=\"refused\"}", ==, 0);
    CHECK_VALUE(body, "haul_received_bytes_total{principal=\"default\"}", >=, (double)size);
    CHECK_VALUE(body, "haul_sent_bytes_total{principal=\"default\"}", >, 0);
    CHECK_VALUE(body, "haul_commit_duration_seconds_count", ==, 1);
    CHECK_VALUE(body, "haul_commit_duration_seconds_bucket{le=\"+Inf\"}", ==, 1);
    CHECK_VALUE(body, "haul_commit_duration_seconds_bucket{le=\"3600\"}", ==, 1);
    CHECK_VALUE(body, "haul_commit_duration_seconds_sum", >, 0);
    CHECK_VALUE(body, "haul_verify_duration_seconds_count", ==, 0);
    CHECK_VALUE(body, "haul_sessions", ==, 0);
    CHECK_VALUE(body, "haul_connections_opened_total", >=, 1);
    CHECK_VALUE(body, "haul_memory_peak_bytes", >=, metric(body, "haul_memory_used_bytes"));
    CHECK_VALUE(body, "haul_requests_total{kind=\"push\",result=\"other\"}", ==, -1);
    free(body);

    /* A verify counts in its own histogram, a listing as ls. */
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", e2e_url(&env, url, "ds"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", env.url);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    wait_sessions_zero(port);
    body = scrape(port);
    CHECK_VALUE(body, "haul_requests_total{kind=\"verify\",result=\"ok\"}", ==, 1);
    CHECK_VALUE(body, "haul_requests_total{kind=\"ls\",result=\"ok\"}", ==, 1);
    CHECK_VALUE(body, "haul_verify_duration_seconds_count", ==, 1);
    CHECK_VALUE(body, "haul_commit_duration_seconds_count", ==, 1);
    free(body);
    e2e_teardown(&env);
}

/* Connects and sends `request`; the answer's status (or -1 when the
 * connection ended without one). */
static int status_for(int port, const char *request, size_t len)
{
    char *answer = exchange(port, request, len);
    int status = status_of(answer);
    free(answer);
    return status;
}

TEST_TIMEOUT(hostile_scrapers_disturb_neither_a_push_nor_other_scrapers, 120)
{
    e2e_env env;
    const char *const args[] = {"--metrics", "127.0.0.1:0",           "--metrics-timeout",
                                "1000",      "--metrics-connections", "4",
                                NULL};
    iofault_start_stalling(&env, "write:stall-here", args);
    int port = metrics_port(&env);
    char src[PATH_MAX], url[512];
    make_tree(e2e_path(&env, src, "src"), 20, 1, 2 * E2E_MIB);
    e2e_proc push = {0};
    e2e_haul_start(&env, &push, "push", src, e2e_url(&env, url, "ds"));
    CHECK(iofault_stall_wait(&env));

    /* A request larger than 8 KiB that never ends its headers. */
    size_t big = 9000;
    char *oversized = malloc(big);
    CHECK(oversized != NULL);
    memcpy(oversized, "GET /metrics HTTP/1.1\r\nX-Pad: ", 30);
    memset(oversized + 30, 'a', big - 30);
    CHECK_EQ(status_for(port, oversized, big), 431);
    free(oversized);
    /* The wrong method (with a body), the wrong path, garbage. */
    static const char post[] = "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    CHECK_EQ(status_for(port, post, sizeof(post) - 1), 405);
    static const char other[] = "GET /other HTTP/1.1\r\n\r\n";
    CHECK_EQ(status_for(port, other, sizeof(other) - 1), 404);
    static const char garbage[] = "\x16\x03\x01\x02\x00 hello\r\n\r\n";
    CHECK_EQ(status_for(port, garbage, sizeof(garbage) - 1), 400);
    static const char head[] = "HEAD /metrics HTTP/1.1\r\n\r\n";
    char *answer = exchange(port, head, sizeof(head) - 1);
    CHECK_EQ(status_of(answer), 200);
    CHECK(strstr(answer, "\r\n\r\n")[4] == '\0');
    free(answer);

    /* A scraper that sends nothing, and one that sends half a request,
     * are closed once --metrics-timeout has passed since they connected,
     * not before. */
    int mute = connect_port(port), slow = connect_port(port);
    send_all(slow, "GET /metr", 9);
    double t0 = e2e_now();
    for (int i = 0; i < 2; i++) {
        int closed;
        char *got = read_to_end(i == 0 ? mute : slow, SCRAPE_TIMEOUT, &closed);
        CHECK(closed);
        CHECK_EQ(got[0], '\0');
        free(got);
    }
    double waited = e2e_now() - t0;
    harness_log("silent scrapers closed after %.2f s (--metrics-timeout 1000)", waited);
    CHECK(waited >= 0.9);
    close(mute);
    close(slow);

    /* Silent scrapers on every connection hauld allows: a scraper that
     * asks still gets its answer, in place of the oldest of them. */
    int silent[4];
    for (int i = 0; i < 4; i++)
        silent[i] = connect_port(port);
    CHECK_SCRAPED(port, "haul_sessions", ==, 1);
    for (int i = 0; i < 4; i++)
        close(silent[i]);

    /* The push was held all along, and completes. */
    CHECK(!e2e_proc_exited(&push));
    iofault_stall_release(&env);
    e2e_proc_wait(&push, CMD_TIMEOUT);
    CHECK_EXIT(&push, 0);
    e2e_proc_free(&push);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", e2e_url(&env, url, "ds"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    wait_sessions_zero(port);
    CHECK_SCRAPED(port, "haul_requests_total{kind=\"push\",result=\"ok\"}", ==, 1);
    e2e_teardown(&env);
}

TEST_TIMEOUT(principals_beyond_the_bound_count_as_other, 120)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char config[PATH_MAX];
    e2e_path(&env, config, "hauld.conf");
    FILE *f = fopen(config, "w");
    CHECK(f != NULL);
    fprintf(f, "metrics = 127.0.0.1:0\nmetrics-principals = 2\n\n"
               "[principal mallory]\nrights = none\n");
    CHECK(fclose(f) == 0);
    const char *const args[] = {"--config", config, NULL};
    for (int i = 0; args[i]; i++)
        env.server_args[i] = args[i];
    e2e_start_server(&env);
    int port = metrics_port(&env);

    char src[PATH_MAX], url[512];
    make_tree(e2e_path(&env, src, "src"), 30, 0, 100000);
    /* Refused: no series of its own, and no slot taken. */
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "-q", src, e2e_url(&env, url, "ds"), "--principal",
             "mallory");
    CHECK_NE(p.code, 0);
    e2e_proc_free(&p);
    static const char *const names[] = {"alice", "bob", "carol", "dave"};
    for (int i = 0; i < 4; i++) {
        e2e_haul(&env, &p, CMD_TIMEOUT, "push", "-q", src, e2e_url(&env, url, "ds"), "--principal",
                 names[i]);
        CHECK_EXIT(&p, 0);
        e2e_proc_free(&p);
    }
    wait_sessions_zero(port);
    char *body = scrape(port);
    CHECK_VALUE(body, "haul_requests_total{kind=\"push\",result=\"refused\"}", ==, 1);
    CHECK_VALUE(body, "haul_requests_total{kind=\"push\",result=\"ok\"}", ==, 4);
    CHECK_VALUE(body, "haul_received_bytes_total{principal=\"alice\"}", >, 100000);
    CHECK_VALUE(body, "haul_received_bytes_total{principal=\"bob\"}", >, 100000);
    CHECK_VALUE(body, "haul_received_bytes_total{principal=\"carol\"}", ==, -1);
    CHECK_VALUE(body, "haul_received_bytes_total{principal=\"mallory\"}", ==, -1);
    CHECK_VALUE(body, "haul_received_bytes_total{principal=\"other\"}", >, 200000);
    CHECK_VALUE(body, "haul_sent_bytes_total{principal=\"other\"}", >, 0);
    CHECK_VALUE(body, "haul_commit_duration_seconds_count", ==, 4);
    free(body);
    e2e_teardown(&env);
}

TEST_TIMEOUT(metrics_off_by_default_and_a_bad_address_stops_hauld, 60)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char *log = e2e_slurp(env.server.log_path);
    CHECK(!e2e_contains(log, "metrics"));
    free(log);
    e2e_teardown(&env);

    static const char *const bad[] = {"nonsense", "127.0.0.1:99999", "[::1:80", "1.2.3.4.5:80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        e2e_setup(&env, E2E_NO_SERVER);
        env.server_args[0] = "--metrics";
        env.server_args[1] = bad[i];
        e2e_server *s = &env.server;
        CHECK_EQ(e2e_server_start_at(&env, s, "127.0.0.1:0"), -1);
        int status = e2e_server_reap_(s);
        CHECK(WIFEXITED(status));
        CHECK_EQ(WEXITSTATUS(status), 1);
        char *text = e2e_slurp(s->log_path);
        int said = strstr(text, "cannot serve the metrics on") != NULL;
        if (!said)
            harness_log("hauld's log:\n%s", text);
        CHECK(said);
        free(text);
        env.torn_down = 1;
        e2e_rm_rf(env.dir);
        e2e_current_ = NULL;
    }
}
