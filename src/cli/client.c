/*
 * client.c - the parts of haul that every subcommand uses: haul:// URLs,
 * the engine and its one session, the event loop that hands the server's
 * records to the subcommand, and output helpers.
 */
#include "cli/client.h"
#include "cli/progress.h"
#include "proto/compress.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Received messages wait here until taken: enough for the server's window
 * to hold about 64 of its largest messages. */
#define CLI_INPUT_QUEUE (64ull << 20)
/* Descriptors beside the connections: the engine's own, the files a push
 * or pull has open at once, the standard streams. */
#define CLI_DESCRIPTORS_SPARE 256

/* ---- output helpers ------------------------------------------------------- */

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_progress_clear();
    fputs("haul: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Length of the valid, printable UTF-8 sequence at p (2..4 bytes), or 0.
 * C1 control characters (U+0080..U+009F) count as not printable.
 */
static size_t utf8_len(const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (n > left || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    if (c == 0xc2 && p[1] < 0xa0)
        return 0;
    return n;
}

size_t cli_escape_path(const char *path, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)path;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        if (c == '\\') {
            out[o++] = '\\';
            out[o++] = '\\';
            i++;
        } else if (c >= 0x20 && c < 0x7f) {
            out[o++] = (char)c;
            i++;
        } else {
            size_t n = c >= 0x80 ? utf8_len(p + i, len - i) : 0;
            if (n) {
                memcpy(out + o, p + i, n);
                o += n;
                i += n;
            } else {
                out[o++] = '\\';
                out[o++] = 'x';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
                i++;
            }
        }
    }
    out[o] = '\0';
    return o;
}

void cli_put_path(FILE *f, const char *path, size_t len)
{
    char stack[1024];
    char *out = 4 * len + 1 <= sizeof(stack) ? stack : malloc(4 * len + 1);
    if (out == NULL)
        return;
    size_t n = cli_escape_path(path, len, out);
    fwrite(out, 1, n, f);
    if (out != stack)
        free(out);
}

void cli_put_json_path(FILE *f, const char *path, size_t len)
{
    char stack[1024];
    char *out = 4 * len + 1 <= sizeof(stack) ? stack : malloc(4 * len + 1);
    if (out == NULL)
        return;
    size_t n = cli_escape_path(path, len, out);
    /* The escaped form holds printable ASCII and valid UTF-8 only: JSON
     * needs just its quotes and backslashes escaped. */
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        if (out[i] == '"' || out[i] == '\\')
            fputc('\\', f);
        fputc(out[i], f);
    }
    fputc('"', f);
    if (out != stack)
        free(out);
}

void cli_put_json_text(FILE *f, const char *text, size_t len)
{
    cli_put_json_path(f, text, len);
}

void cli_human_bytes(uint64_t bytes, char *out, size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, size, "%llu B", (unsigned long long)bytes);
    else
        snprintf(out, size, "%.1f %s", v, units[u]);
}

int cli_parse_size(const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    if (text[0] < '0' || text[0] > '9')
        return -1;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text)
        return -1;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    case '\0':
        break;
    default:
        return -1;
    }
    if (shift) {
        end++;
        /* "64M", "64MB", "64MiB" all mean 64 * 2^20. */
        if (strcmp(end, "") != 0 && strcmp(end, "B") != 0 && strcmp(end, "iB") != 0)
            return -1;
    } else if (*end != '\0')
        return -1;
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

/*
 * --bwlimit RATE, as rsync reads it: a number alone is KiB per second;
 * K, M, G or T (optionally followed by B or iB, in either case) make it
 * bytes per second in powers of 1024; a fraction is allowed ("1.5M").
 * 0 is no limit. A rate that rounds to no byte at all, or beyond 2^50
 * bytes per second, is refused rather than read as something else.
 */
int cli_parse_rate(const char *text, uint64_t *out)
{
    if (text[0] < '0' || text[0] > '9')
        return -1;
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || !(v >= 0))
        return -1;
    static const char units[] = "kmgt";
    const char *u = *end ? strchr(units, tolower((unsigned char)*end)) : NULL;
    double unit = 1024; /* no suffix: KiB/s */
    if (u != NULL) {
        unit = 1;
        for (const char *p = units; p <= u; p++)
            unit *= 1024;
        end++;
        /* "2M", "2MB", "2MiB" all mean 2 * 2^20 bytes per second. */
        if (strcmp(end, "") != 0 && strcasecmp(end, "B") != 0 && strcasecmp(end, "iB") != 0)
            return -1;
    } else if (*end != '\0')
        return -1;
    double bytes = v * unit;
    if (bytes > (double)(1ull << 50))
        return -1;
    if (v > 0 && bytes < 1)
        return -1;
    *out = (uint64_t)(bytes + 0.5);
    return 0;
}

/* ---- URLs ------------------------------------------------------------------ */

/* DATASET[@SNAPSHOT], or nothing. */
static int parse_tail(const char *text, const char *tail, cli_url *u)
{
    if (*tail == '\0')
        return 0;
    if (strchr(tail, '/')) {
        cli_warn("%s: a dataset name cannot contain '/'", text);
        return -1;
    }
    const char *at = strchr(tail, '@');
    size_t d = at ? (size_t)(at - tail) : strlen(tail);
    if (!hsp_name_ok(tail, d, HSP_NAME_MAX)) {
        cli_warn("%s: bad dataset name '%.*s' (1-255 of A-Z a-z 0-9 . _ -, not starting with "
                 "'.')",
                 text, (int)d, tail);
        return -1;
    }
    memcpy(u->dataset, tail, d);
    u->dataset[d] = '\0';
    if (at) {
        const char *snap = at + 1;
        if (!hsp_name_ok(snap, strlen(snap), HSP_SNAPSHOT_MAX)) {
            cli_warn("%s: bad snapshot id '%s'", text, snap);
            return -1;
        }
        strcpy(u->snapshot, snap);
    }
    return 0;
}

int cli_url_parse(const char *text, cli_url *u)
{
    memset(u, 0, sizeof(*u));
    if (strncmp(text, "haul://", 7) != 0) {
        cli_warn("%s: not a haul:// URL (haul://HOST:PORT/DATASET or "
                 "haul://unix:/path/to/socket/DATASET)",
                 text);
        return -1;
    }
    const char *rest = text + 7;
    if (strncmp(rest, "unix:", 5) == 0) {
        const char *path = rest + 5;
        if (path[0] != '/') {
            cli_warn("%s: the socket path must be absolute", text);
            return -1;
        }
        size_t n = strlen(path);
        if (n + 6 > sizeof(u->destination)) {
            cli_warn("%s: socket path too long", text);
            return -1;
        }
        /* The dataset is the last component, since names cannot hold '/';
         * but a URL that names the socket itself (ls, bench) needs no
         * trailing '/'. */
        struct stat st;
        if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            snprintf(u->destination, sizeof(u->destination), "unix:%s", path);
            return 0;
        }
        const char *slash = strrchr(path, '/');
        if (slash == path) {
            cli_warn("%s: no socket path before the dataset", text);
            return -1;
        }
        snprintf(u->destination, sizeof(u->destination), "unix:%.*s", (int)(slash - path), path);
        return parse_tail(text, slash + 1, u);
    }
    const char *end;
    if (rest[0] == '[') {
        const char *close = strchr(rest, ']');
        if (close == NULL) {
            cli_warn("%s: unterminated IPv6 address", text);
            return -1;
        }
        end = close + strcspn(close, "/");
        if (close[1] != ':') {
            cli_warn("%s: a port is needed after the IPv6 address ([ADDR]:PORT)", text);
            return -1;
        }
    } else {
        end = rest + strcspn(rest, "/");
    }
    size_t alen = (size_t)(end - rest);
    const char *colon = memrchr(rest, ':', alen);
    if (colon == NULL || colon + 1 == end || colon == rest) {
        cli_warn("%s: expected HOST:PORT after haul://", text);
        return -1;
    }
    for (const char *p = colon + 1; p < end; p++)
        if (*p < '0' || *p > '9') {
            cli_warn("%s: bad port", text);
            return -1;
        }
    long port = strtol(colon + 1, NULL, 10);
    if (port < 1 || port > 65535 || alen >= sizeof(u->destination)) {
        cli_warn("%s: bad port", text);
        return -1;
    }
    memcpy(u->destination, rest, alen);
    u->destination[alen] = '\0';
    return *end == '/' ? parse_tail(text, end + 1, u) : 0;
}

/* ---- the session ---------------------------------------------------------------- */

int cli_fail(cli_client *c, int status, const char *fmt, ...)
{
    if (fmt && !c->failed) {
        va_list ap;
        va_start(ap, fmt);
        fputs("haul: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    if (!c->failed)
        c->failed = status;
    return -1;
}

/* Ends the session at once (the peer sees an abort). */
static void abort_session(cli_client *c)
{
    if (c->session) {
        haul_session_free(c->session);
        c->session = NULL;
    }
}

/* The engine's log lines up to this level are shown (-v, -vv). */
static int engine_log_shown = HAUL_LOG_ERROR;

/* What the server last said when it refused a connection (its ERROR
 * frame, "server busy: 4096 connections is its limit" say), which the
 * engine logs as "connection N: the peer reported: TEXT": the reason to
 * give when the session cannot open for HAUL_ELIMIT. The engine's threads
 * log; the main thread reads it after the event that follows. */
static pthread_mutex_t peer_said_mu = PTHREAD_MUTEX_INITIALIZER;
static char peer_said[200];

static void engine_log(void *arg, int level, const char *line)
{
    (void)arg;
    static const char marker[] = "the peer reported: ";
    const char *said = strstr(line, marker);
    if (said) {
        pthread_mutex_lock(&peer_said_mu);
        snprintf(peer_said, sizeof(peer_said), "%s", said + strlen(marker));
        pthread_mutex_unlock(&peer_said_mu);
    }
    if (level <= engine_log_shown)
        fprintf(stderr, "%shaul: engine: %s\n", cli_progress_erase(), line);
}

/* The server's words for its last refusal of a connection, or "". */
static void peer_refusal(char *out, size_t size)
{
    pthread_mutex_lock(&peer_said_mu);
    snprintf(out, size, "%s", peer_said);
    pthread_mutex_unlock(&peer_said_mu);
}

/* Why a session that was open ended, in words. */
static const char *close_reason(int error)
{
    switch (error) {
    case HAUL_ETIMEDOUT:
        return "the server did not acknowledge in time (see --timeout)";
    case HAUL_ECONNRESET:
        return "the connection to the server was lost";
    case HAUL_EABORTED:
        return "the server aborted the session (see its log)";
    case HAUL_ENOSESSION:
        return "the server no longer knows the session: it restarted, or ended the session "
               "(see its log); run the command again (a push resumes)";
    case HAUL_EPROTO:
        return "protocol violation";
    case HAUL_ESHUTDOWN:
        return "the engine is shutting down";
    default:
        return haul_strerror(error);
    }
}

static void lister_event(cli_client *c, const haul_event *ev);

/* Starts a session of the request op on the URL's dataset and the given
 * snapshot; haul_session_new()'s result. */
static int new_session(cli_client *c, int op, const char *snapshot, haul_session **out)
{
    const cli_options *opt = c->opt;
    const cli_url *url = c->url;
    hsp_request req;
    memset(&req, 0, sizeof(req));
    req.op = op;
    if (op == HSP_PUSH && opt->takeover)
        req.flags = HSP_F_TAKEOVER;
    if ((op == HSP_PUSH || op == HSP_PULL) && c->compress) {
        req.flags |= HSP_F_COMPRESS;
        req.level = c->compress;
    }
    /* A pull's data comes from the server: the limit is asked of it. */
    if (op == HSP_PULL && opt->bwlimit) {
        req.flags |= HSP_F_RATE;
        req.rate = opt->bwlimit;
    }
    strcpy(req.dataset, url->dataset);
    strcpy(req.snapshot, snapshot);
    /* The magic, op, flags and lengths, then the names, COMPRESS's level
     * and RATE's rate. */
    uint8_t context[32 + HSP_NAME_MAX + HSP_SNAPSHOT_MAX];
    size_t context_len = hsp_request_encode(&req, context, sizeof(context));

    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = url->destination;
    sc.principal = opt->principal;
    sc.output_queue = opt->queue;
    sc.input_queue = CLI_INPUT_QUEUE;
    /* The receiver counts its window in messages of this size. */
    sc.max_message = (uint64_t)opt->message + (HSP_MESSAGE_MAX - HSP_BLOCK);
    sc.context = context;
    sc.context_len = context_len;
    sc.connections = opt->connections;
    sc.max_connections = opt->max_connections;
    sc.message_timeout_ms = opt->timeout_ms;
    /* --bwlimit limits what this side sends: the file data of a push. */
    if (op == HSP_PUSH)
        sc.rate_limit = opt->bwlimit;
    haul_tls_config tls = {opt->tls_cert, opt->tls_key, opt->tls_ca, NULL};
    if (!opt->plaintext)
        sc.tls = &tls;
    return haul_session_new(c->engine, &sc, out);
}

int cli_open(cli_client *c, const cli_options *opt, const cli_url *url, int op)
{
    c->opt = opt;
    c->url = url;
    c->compress = opt->compress;
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    /* A pipe's connections spread over the I/O threads: more threads
     * than connections, or than cores, would idle. -P auto may grow to
     * more connections than cores: one thread per core. */
    unsigned threads = opt->connections ? opt->connections : (unsigned)(cpus > 0 ? cpus : 1);
    if (cpus > 0 && threads > (unsigned)cpus)
        threads = (unsigned)cpus;
    ec.io_threads = threads < 1 ? 1 : threads > 8 ? 8 : threads;
    /* The storage protocol never sends more than HSP_MESSAGE_MAX in a
     * message; announcing that much (not the default 64 MiB) lets each
     * side's window admit many messages at once. */
    ec.max_message = HSP_MESSAGE_MAX;
    ec.message_timeout_ms = opt->timeout_ms;
    ec.keepalive_ms = opt->keepalive_ms;
    ec.idle_timeout_ms = opt->idle_timeout_ms;
    unsigned most = opt->connections;
    if (most == HAUL_CONNECTIONS_AUTO)
        most = opt->max_connections ? opt->max_connections : HAUL_AUTO_MAX_CONNECTIONS;
    if (most + 64 > ec.max_connections)
        ec.max_connections = most + 64;
    /* Each connection takes a descriptor, and a push or pull opens files
     * beside them: a pipe of many connections needs more than the usual
     * soft limit of 1024, which the hard limit may allow. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max &&
        (rlim_t)most + CLI_DESCRIPTORS_SPARE > rl.rlim_cur) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && opt->verbose)
            cli_warn("cannot raise the limit of descriptors: %s", strerror(errno));
    }
    ec.log = engine_log;
    /* The engine's warnings repeat what haul reports in its own words
     * (a timeout, a lost server): shown with -v. They are asked for
     * always, since one of them carries the server's reason for refusing
     * a connection (engine_log). */
    engine_log_shown = opt->verbose >= 2 ? HAUL_LOG_DEBUG
                       : opt->verbose    ? HAUL_LOG_INFO
                                         : HAUL_LOG_ERROR;
    ec.log_level = engine_log_shown > HAUL_LOG_WARN ? engine_log_shown : HAUL_LOG_WARN;
    int rc = haul_engine_new(&ec, &c->engine);
    if (rc) {
        cli_fail(c, CLI_EXIT_TRANSFER, "cannot start the engine: %s", haul_strerror(rc));
        return c->failed;
    }

    rc = new_session(c, op, url->snapshot, &c->session);
    if (rc) {
        c->session = NULL;
        if (rc == HAUL_ETLS)
            cli_fail(c, CLI_EXIT_USAGE,
                     "cannot use the TLS files (--tls-cert %s --tls-key %s --tls-ca %s); "
                     "run with -v to see why",
                     opt->tls_cert ? opt->tls_cert : "-", opt->tls_key ? opt->tls_key : "-",
                     opt->tls_ca);
        else if (rc == HAUL_EADDR)
            cli_fail(c, CLI_EXIT_TRANSFER, "%s: cannot resolve the address", url->destination);
        else
            cli_fail(c, CLI_EXIT_TRANSFER, "%s: %s", url->destination, haul_strerror(rc));
        return c->failed;
    }
    /* The LIST goes with the request, so that its answer comes before the
     * data, which starts a round trip later at the earliest (a pull waits
     * for its PATHS), rather than behind what fills the link. */
    if (c->want_totals && c->progress && new_session(c, HSP_LIST, "", &c->lister) != 0)
        c->lister = NULL;

    /* The library gives up after the message timeout; the deadline here
     * only guards against waiting forever should it not. A message of the
     * server may overtake its acceptance: it waits in the input queue and
     * is taken by the first cli_pump(). */
    double deadline = cli_now() + opt->timeout_ms / 1000.0 + 10;
    while (!c->open) {
        haul_event ev;
        int n = haul_engine_wait(c->engine, &ev, 1, 500);
        if (n == 1 && c->lister && ev.session == c->lister) {
            lister_event(c, &ev);
        } else if (n == 1 && ev.type == HAUL_EV_SESSION_OPEN) {
            c->open = 1;
        } else if (n == 1 && ev.type == HAUL_EV_SESSION_REFUSED && ev.error == HAUL_EREFUSED &&
                   !opt->plaintext && ev.reason == HAUL_EREFUSED) {
            /* Over TLS the engine of the server refuses by itself a
             * request for another principal than the certificate's. */
            cli_fail(c, CLI_EXIT_REFUSED,
                     "the server refused: principal %s does not match the certificate%s%s",
                     opt->principal, opt->tls_cert ? " " : "", opt->tls_cert ? opt->tls_cert : "");
            return c->failed;
        } else if (n == 1 && ev.type == HAUL_EV_SESSION_REFUSED && ev.error == HAUL_EREFUSED &&
                   ev.reason == HAUL_ELIMIT) {
            /* The server's engine holds as many sessions as it may. */
            cli_fail(c, CLI_EXIT_REFUSED,
                     "the server refused the request: server busy: it holds as many sessions "
                     "as its limit allows (hauld --max-sessions); try again later");
            return c->failed;
        } else if (n == 1 && ev.type == HAUL_EV_SESSION_REFUSED && ev.error == HAUL_EREFUSED &&
                   (ev.reason == HSP_R_BAD_REQUEST || ev.reason == HSP_R_NO_COMPRESS) &&
                   c->compress && ev.session == c->session) {
            /* A server older than compression refuses the flag it does
             * not know, and one whose memory is short refuses to expand
             * one more push: the same request again, uncompressed. */
            cli_warn(ev.reason == HSP_R_NO_COMPRESS
                         ? "warning: the server has no memory for --compress now; sending "
                           "uncompressed"
                         : "warning: the server does not support --compress; sending uncompressed");
            c->compress = 0;
            haul_session_free(c->session);
            c->session = NULL;
            if ((rc = new_session(c, op, url->snapshot, &c->session)) != 0) {
                c->session = NULL;
                cli_fail(c, CLI_EXIT_TRANSFER, "%s: %s", url->destination, haul_strerror(rc));
                return c->failed;
            }
        } else if (n == 1 && ev.type == HAUL_EV_SESSION_REFUSED && ev.error == HAUL_EREFUSED) {
            /* hauld's reasons are enum hsp_refusal; the server's engine may
             * refuse by itself with a haul error code. */
            int known = hsp_refusal_known(ev.reason);
            /* A push refused because another runs may be one whose
             * client is stuck or gone unnoticed: say how to end it. */
            const char *hint = ev.reason == HSP_R_BUSY && op == HSP_PUSH && !opt->takeover
                                   ? " (if its client is stuck or gone, `haul push --takeover` "
                                     "ends it and resumes from what it sent)"
                                   : "";
            cli_fail(c, CLI_EXIT_REFUSED, "the server refused the request: %s%s",
                     known ? hsp_refusal_text(ev.reason) : haul_strerror((int)ev.reason), hint);
            return c->failed;
        } else if (n == 1 && ev.type == HAUL_EV_SESSION_REFUSED && ev.error == HAUL_ETLS) {
            cli_fail(c, CLI_EXIT_TRANSFER,
                     "%s: the TLS handshake failed (%s): is the server's CA --tls-ca, is "
                     "our certificate one of its CA and not revoked, does the server use "
                     "TLS? (-v says more)",
                     url->destination, opt->plaintext ? "we are --plaintext" : "mutual TLS 1.3");
            return c->failed;
        } else if (n == 1 && ev.type == HAUL_EV_SESSION_REFUSED && ev.error == HAUL_ELIMIT) {
            /* Every connection was refused for a limit: the server's (it
             * said which) or, without its words, this process's. */
            char said[sizeof(peer_said)];
            peer_refusal(said, sizeof(said));
            if (said[0])
                cli_fail(c, CLI_EXIT_REFUSED,
                         "the server refused the connection: %s; try again later", said);
            else
                cli_fail(c, CLI_EXIT_TRANSFER,
                         "cannot reach %s: %s (the server's, or this process's descriptors)",
                         url->destination, haul_strerror(ev.error));
            return c->failed;
        } else if (n == 1 && ev.type == HAUL_EV_SESSION_REFUSED) {
            cli_fail(c, CLI_EXIT_TRANSFER, "cannot reach %s: %s", url->destination,
                     haul_strerror(ev.error));
            return c->failed;
        } else if (n == 0 && cli_now() > deadline) {
            cli_fail(c, CLI_EXIT_TRANSFER, "cannot reach %s: %s", url->destination,
                     haul_strerror(HAUL_ETIMEDOUT));
            return c->failed;
        }
    }
    return 0;
}

/* Copies a RESULT so that it outlives its message. */
static void keep_result(cli_client *c, const hsp_record *rec)
{
    c->result = *rec;
    size_t n =
        rec->data_len < sizeof(c->result_text) - 1 ? rec->data_len : sizeof(c->result_text) - 1;
    memcpy(c->result_text, rec->data, n);
    c->result_text[n] = '\0';
    c->result.data = (const uint8_t *)c->result_text;
    c->result.data_len = (uint32_t)n;
    c->have_result = 1;
}

/* Takes every message that waits and hands its records on. */
static void drain(cli_client *c)
{
    haul_message *m;
    while (c->session && !c->failed && haul_recv(c->session, &m) == 0) {
        /* With compression agreed, the server may compress any message;
         * without, a compressed one is a broken server's. */
        if (c->compress && c->unzstd == NULL && (c->unzstd = hsp_zstd_new(0)) == NULL) {
            haul_message_free(m);
            cli_fail(c, CLI_EXIT_TRANSFER, "out of memory for decompression");
            abort_session(c);
            break;
        }
        const void *data;
        size_t len;
        const char *why = NULL;
        int rc = hsp_zstd_unpack(c->unzstd, haul_message_data(m), haul_message_len(m), &data, &len,
                                 &why);
        if (rc < 0) {
            haul_message_free(m);
            cli_fail(c, CLI_EXIT_TRANSFER, "the server sent %s; giving up", why);
            abort_session(c);
            break;
        }
        c->wire_in += haul_message_len(m);
        c->message_in += len;
        hsp_reader r;
        hsp_reader_init(&r, data, len);
        hsp_record rec;
        while ((rc = hsp_next(&r, &rec)) == 1) {
            if (rec.type == HSP_RESULT)
                keep_result(c, &rec);
            int status = c->on_record ? c->on_record(c->arg, &rec) : 0;
            if (status) {
                cli_fail(c, status, NULL);
                abort_session(c);
                break;
            }
        }
        haul_message_free(m);
        if (rc < 0) {
            /* The protocol's rule: a message that does not decode ends the
             * session. */
            cli_fail(c, CLI_EXIT_TRANSFER, "the server sent a malformed message; giving up");
            abort_session(c);
        }
    }
}

/* ---- the totals of a pull or verify ------------------------------------------ */

static void lister_end(cli_client *c)
{
    if (c->lister) {
        haul_session_free(c->lister);
        c->lister = NULL;
    }
}

/* A SNAPINFO of the LIST: the snapshot asked for, or (none named) the
 * latest, which comes last. */
static void lister_records(cli_client *c, const haul_message *m)
{
    hsp_reader r;
    hsp_reader_init(&r, haul_message_data(m), haul_message_len(m));
    hsp_record rec;
    int rc;
    while ((rc = hsp_next(&r, &rec)) == 1) {
        if (rec.type == HSP_SNAPINFO &&
            (c->url->snapshot[0] == '\0' || strcmp(rec.name, c->url->snapshot) == 0)) {
            c->lister_files = rec.files;
            c->lister_bytes = rec.bytes;
            c->lister_found = 1;
        } else if (rec.type == HSP_RESULT) {
            if (rec.status == 0 && c->lister_found)
                cli_progress_total(c->progress, c->lister_bytes, c->lister_files, CLI_TOTAL_FINAL);
            c->lister_found = 0;
        }
    }
    /* A malformed answer is no reason to fail the run: no total. */
    if (rc < 0)
        lister_end(c);
}

/* Takes what the LIST sent so far. */
static void lister_drain(cli_client *c)
{
    haul_message *m;
    while (c->lister && haul_recv(c->lister, &m) == 0) {
        lister_records(c, m);
        haul_message_free(m);
    }
}

static void lister_event(cli_client *c, const haul_event *ev)
{
    if (ev->type == HAUL_EV_SESSION_REFUSED || ev->type == HAUL_EV_SESSION_CLOSED) {
        /* Its last messages may wait still. */
        lister_drain(c);
        lister_end(c);
    }
}

/* Counts the connections in use now, and the most so far. */
static void sample_connections(cli_client *c)
{
    if (c->session == NULL)
        return;
    /* A session that left its pipe (closed) shows none: the last count
     * seen stands. */
    int n = haul_pipe_stats(c->session, NULL, 0);
    haul_conn_stats *st = n > 0 ? calloc((size_t)n, sizeof(*st)) : NULL;
    if (st == NULL)
        return;
    n = haul_pipe_stats(c->session, st, n);
    unsigned used = 0;
    for (int i = 0; i < n; i++)
        used += st[i].up && !st[i].parked;
    free(st);
    c->conns_now = used;
    if (used > c->conns_peak)
        c->conns_peak = used;
    c->conns_at = cli_now();
}

unsigned cli_connections(cli_client *c, unsigned *peak)
{
    sample_connections(c);
    if (c->opt->connections != HAUL_CONNECTIONS_AUTO) {
        if (peak)
            *peak = c->opt->connections;
        return c->opt->connections;
    }
    if (peak)
        *peak = c->conns_peak;
    return c->conns_now;
}

int cli_pump(cli_client *c, int timeout_ms)
{
    /* The peak of -P auto, seen often enough to catch a step up. */
    if (c->opt->connections == HAUL_CONNECTIONS_AUTO && cli_now() - c->conns_at >= 0.2)
        sample_connections(c);
    if (c->failed)
        return -1;
    /* The status line moves while nothing arrives, too. */
    int period_ms = (int)(CLI_PROGRESS_TTY_PERIOD * 1000);
    if (c->progress && (timeout_ms < 0 || timeout_ms > period_ms))
        timeout_ms = period_ms;
    haul_event evs[64];
    int n = c->closed ? 0 : haul_engine_wait(c->engine, evs, 64, timeout_ms);
    int closed_now = 0;
    for (int i = 0; i < n; i++) {
        haul_event *ev = &evs[i];
        if (c->lister && ev->session == c->lister) {
            lister_event(c, ev);
            continue;
        }
        switch (ev->type) {
        case HAUL_EV_MESSAGE_SENT:
            c->messages_acked++;
            if (c->on_sent)
                c->on_sent(c->arg, ev);
            break;
        case HAUL_EV_MESSAGE_FAILED:
            /* The session fails with it; SESSION_CLOSED says why. */
            if (ev->error != HAUL_ECLOSED && !c->have_result)
                cli_fail(c, CLI_EXIT_TRANSFER, "transfer failed: %s", close_reason(ev->error));
            break;
        case HAUL_EV_SESSION_CLOSED:
            c->closed = 1;
            c->close_error = ev->error;
            closed_now = 1;
            break;
        case HAUL_EV_PIPE_DOWN:
            /* The engine redials and sends again by itself; the run fails
             * only if the server stays out of reach for --timeout. */
            if (c->opt->verbose)
                cli_warn("lost every connection to the server (%s); reconnecting",
                         ev->error == HAUL_ETIMEDOUT ? "nothing heard within --idle-timeout"
                                                     : haul_strerror(ev->error));
            break;
        case HAUL_EV_PIPE_UP:
            if (c->opt->verbose)
                cli_warn("connected to the server again");
            break;
        default:
            break;
        }
    }
    /* Messages stay in the input queue after the session closed: take
     * them first, since the RESULT may be among them. */
    drain(c);
    lister_drain(c);
    cli_progress_tick(c->progress);
    if (closed_now && !c->failed && !c->have_result && c->close_error)
        cli_fail(c, CLI_EXIT_TRANSFER, "the session ended: %s", close_reason(c->close_error));
    return c->failed ? -1 : n;
}

/* What became of a send: counted, a full queue, or the end of the run. */
static int sent(cli_client *c, int rc)
{
    if (rc == 0) {
        c->messages_sent++;
        return 0;
    }
    if (rc == HAUL_EQUEUEFULL)
        return rc;
    if (rc == HAUL_ESTATE) {
        /* The server ended the session. When it did so in order, its last
         * words (a RESULT saying why) wait in the input queue: they are
         * the reason to report, not this send. */
        drain(c);
        for (int i = 0; i < 10 && !c->have_result && !c->closed && !c->failed; i++)
            cli_pump(c, 100);
        if (!c->have_result)
            cli_fail(c, CLI_EXIT_TRANSFER, "the session ended while sending%s%s",
                     c->closed ? ": " : "", c->closed ? close_reason(c->close_error) : "");
        return -1;
    }
    return cli_fail(c, CLI_EXIT_TRANSFER, "cannot send: %s", haul_strerror(rc));
}

int cli_send(cli_client *c, const void *buf, size_t len, uint64_t tag)
{
    if (c->failed || c->session == NULL)
        return -1;
    return sent(c, haul_send(c->session, buf, len, tag));
}

int cli_send_buffer(cli_client *c, const void *buf, size_t len, void (*release)(void *, void *),
                    void *arg, uint64_t tag)
{
    if (c->failed || c->session == NULL)
        return -1;
    return sent(c, haul_send_buffer(c->session, buf, len, release, arg, tag));
}

/* The LIST of want_totals ends by itself a round trip after it
 * began: waiting for it, this long at most, spares the server an aborted
 * session in its log. */
#define CLI_LISTER_GRACE_S 2.0

void cli_list_wait(cli_client *c)
{
    double deadline = cli_now() + CLI_LISTER_GRACE_S;
    while (c->lister && cli_now() < deadline) {
        haul_event evs[64];
        int n = haul_engine_wait(c->engine, evs, 64, 50);
        for (int i = 0; i < n; i++) {
            if (c->lister && evs[i].session == c->lister) {
                lister_event(c, &evs[i]);
            } else if (evs[i].type == HAUL_EV_SESSION_CLOSED && evs[i].session == c->session) {
                /* Kept for cli_close(), which would wait for it. */
                c->closed = 1;
                c->close_error = evs[i].error;
            }
        }
        lister_drain(c);
    }
}

void cli_close(cli_client *c)
{
    int rc = c->session && !c->closed ? haul_session_close(c->session) : -1;
    if (rc == 0 || rc == HAUL_ESTATE) {
        double deadline = cli_now() + c->opt->timeout_ms / 1000.0 + 1;
        while (!c->closed && cli_now() < deadline) {
            haul_event evs[64];
            int n = haul_engine_wait(c->engine, evs, 64, 200);
            for (int i = 0; i < n; i++) {
                if (c->lister && evs[i].session == c->lister)
                    lister_event(c, &evs[i]);
                else if (evs[i].type == HAUL_EV_SESSION_CLOSED && evs[i].session == c->session) {
                    c->closed = 1;
                    c->close_error = evs[i].error;
                }
            }
        }
    }
    cli_list_wait(c);
}

void cli_free(cli_client *c)
{
    lister_end(c);
    abort_session(c);
    if (c->engine) {
        haul_engine_free(c->engine);
        c->engine = NULL;
    }
    hsp_zstd_free(c->unzstd);
    c->unzstd = NULL;
}

void cli_wait_result(cli_client *c)
{
    while (!c->have_result && !c->failed) {
        if (c->closed) {
            cli_fail(c, CLI_EXIT_TRANSFER, "the server ended the session without a result");
            return;
        }
        cli_pump(c, 1000);
    }
}

int cli_result_status(cli_client *c, const char *what)
{
    if (!c->have_result)
        return CLI_EXIT_TRANSFER;
    if (c->result.status == 0)
        return CLI_EXIT_OK;
    int err = c->result.status;
    cli_warn("%s failed: %s%s(%s)", what, c->result_text, c->result_text[0] ? " " : "",
             err > 0 ? strerror(err) : "error");
    /* The server accepted the request and then failed it (a full disk, an
     * I/O error): a transfer failure. Refusals end in cli_open(). */
    return CLI_EXIT_TRANSFER;
}

/* Opens a path below root without following any symbolic link on the way
 * (RESOLVE_NO_SYMLINKS), nor leaving root. */
int cli_open_beneath(int root, const char *path, int flags)
{
    static int no_openat2;
    if (!no_openat2) {
        struct open_how how = {
            .flags = (uint64_t)flags,
            .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
        };
        long fd = syscall(SYS_openat2, root, path, &how, sizeof(how));
        if (fd >= 0 || errno != ENOSYS)
            return (int)fd;
        no_openat2 = 1;
    }
    /* Kernels before 5.6 cannot promise it in one call: go component by
     * component, refusing symbolic links on the way. */
    int fd = fcntl(root, F_DUPFD_CLOEXEC, 3);
    const char *p = path;
    while (fd >= 0 && *p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        char name[256];
        if (n >= sizeof(name)) {
            close(fd);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(name, p, n);
        name[n] = '\0';
        int next = openat(fd, name, (slash ? O_RDONLY | O_DIRECTORY : flags) | O_NOFOLLOW);
        int err = errno;
        close(fd);
        errno = err;
        fd = next;
        p += n + (slash != NULL);
    }
    return fd;
}

void cli_server_problem(const hsp_record *rec)
{
    cli_progress_clear();
    fputs("haul: server: ", stderr);
    cli_put_path(stderr, (const char *)rec->data, rec->data_len);
    fputc('\n', stderr);
}
