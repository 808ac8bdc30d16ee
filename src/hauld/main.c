/*
 * hauld - the storage server of haul.
 *
 *   hauld --listen HOST:PORT --store DIR|fs:DIR|rados:POOL
 *         [--ceph-conf FILE] [--ceph-id NAME]
 *         (--tls-cert FILE --tls-key FILE --tls-ca FILE [--tls-crl FILE] | --plaintext)
 *         [--config FILE] [--max-sessions N] [--max-connections N] [--io-threads N]
 *         [--timeout SECONDS] [--handshake-timeout SECONDS] [--max-handshakes N]
 *         [--keepalive MS] [--idle-timeout MS] [--workers N] [--memory BYTES]
 *         [--log-level error|warn|info|debug]
 *         [--metrics ADDRESS [--metrics-timeout MS] [--metrics-connections N]
 *          [--metrics-principals N]]
 *
 * Every connection is mutual TLS 1.3 and a client's namespace is the
 * principal of its certificate; plain TCP only with an explicit
 * --plaintext. SIGHUP reloads the certificate, key, CA and CRL for the
 * connections to come, without dropping the sessions that run.
 *
 * Runs in the foreground and logs to stderr. SIGTERM or SIGINT stops it:
 * new requests are refused, running ones get up to --timeout seconds to
 * end, then it exits with status 0. Status 1: bad arguments, or a store
 * or an address that cannot be used.
 *
 * Memory policy: hauld does not abort when memory is short; the request
 * that needed it fails (or is refused) and the others go on.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "hauld/auth.h"
#include "hauld/server.h"
#include "proto/compress.h"
#include "version/version.h"

/* ---- logging ----------------------------------------------------------------- */

static int log_level = HAUL_LOG_INFO;

int hauld_log_enabled(int level)
{
    return level <= log_level;
}

void hauld_vlog(int level, const char *fmt, va_list ap)
{
    if (level > log_level)
        return;
    int saved = errno;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    const char *tag = level == HAUL_LOG_ERROR  ? "error: "
                      : level == HAUL_LOG_WARN ? "warning: "
                                               : "";
    n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ hauld: %s", ts.tv_nsec / 1000000L,
                          tag);
    if (n < sizeof(line)) {
        int k = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        if (k > 0)
            n += (size_t)k;
    }
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    /* One write per line, so that lines of several threads never mix. */
    if (write(STDERR_FILENO, line, n) < 0) {
        /* Nowhere left to say it. */
    }
    errno = saved;
}

void hauld_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    hauld_vlog(level, fmt, ap);
    va_end(ap);
}

/* ---- options and the configuration file -------------------------------------------- */

/* Option values start above every character, so that getopt_long() never
 * returns one that means something else; options.value[] is indexed by
 * value - OPT_BASE. */
enum {
    OPT_BASE = 256,
    OPT_LISTEN = OPT_BASE,
    OPT_STORE,
    OPT_CONFIG,
    OPT_MAX_SESSIONS,
    OPT_MAX_CONNECTIONS,
    OPT_IO_THREADS,
    OPT_TIMEOUT,
    OPT_LOG_LEVEL,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_CA,
    OPT_TLS_CRL,
    OPT_PLAINTEXT,
    OPT_HANDSHAKE_TIMEOUT,
    OPT_MAX_HANDSHAKES,
    OPT_KEEPALIVE,
    OPT_IDLE_TIMEOUT,
    OPT_QUEUE,
    OPT_CEPH_CONF,
    OPT_CEPH_ID,
    OPT_WORKERS,
    OPT_MEMORY,
    OPT_METRICS,
    OPT_METRICS_TIMEOUT,
    OPT_METRICS_CONNECTIONS,
    OPT_METRICS_PRINCIPALS,
    OPT_COMPRESS_LEVEL_MAX,
    OPT_COUNT_,
    OPT_HELP = 'h',
    OPT_VERSION = 'V',
};

static const struct option long_options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"store", required_argument, NULL, OPT_STORE},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"max-sessions", required_argument, NULL, OPT_MAX_SESSIONS},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
    {"io-threads", required_argument, NULL, OPT_IO_THREADS},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"tls-ca", required_argument, NULL, OPT_TLS_CA},
    {"tls-crl", required_argument, NULL, OPT_TLS_CRL},
    {"plaintext", no_argument, NULL, OPT_PLAINTEXT},
    {"handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT},
    {"max-handshakes", required_argument, NULL, OPT_MAX_HANDSHAKES},
    {"keepalive", required_argument, NULL, OPT_KEEPALIVE},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"queue", required_argument, NULL, OPT_QUEUE},
    {"ceph-conf", required_argument, NULL, OPT_CEPH_CONF},
    {"ceph-id", required_argument, NULL, OPT_CEPH_ID},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"memory", required_argument, NULL, OPT_MEMORY},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"metrics-timeout", required_argument, NULL, OPT_METRICS_TIMEOUT},
    {"metrics-connections", required_argument, NULL, OPT_METRICS_CONNECTIONS},
    {"metrics-principals", required_argument, NULL, OPT_METRICS_PRINCIPALS},
    {"compress-level-max", required_argument, NULL, OPT_COMPRESS_LEVEL_MAX},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: hauld --listen HOST:PORT --store DIR|fs:DIR|rados:POOL\n"
               "             (--tls-cert FILE --tls-key FILE --tls-ca FILE | --plaintext)\n"
               "             [options]\n"
               "       hauld --version     the versions of hauld and its libraries\n"
               "\n"
               "The storage server of haul: keeps the snapshots that `haul push` sends,\n"
               "one namespace per principal under DIR.\n"
               "\n"
               "  --listen ADDRESS        HOST:PORT, [V6]:PORT, :PORT or unix:/PATH\n"
               "  --store SPEC            where snapshots are kept: DIR or fs:DIR, a\n"
               "                          directory (made if missing); rados:POOL, a\n"
               "                          Ceph RADOS pool (when built with librados)\n"
               "  --ceph-conf FILE        rados: the Ceph configuration file (default\n"
               "                          /etc/ceph/ceph.conf)\n"
               "  --ceph-id NAME          rados: the Ceph client id (default admin)\n"
               "  --tls-cert FILE         the server's certificate (haul cert server)\n"
               "  --tls-key FILE          its private key\n"
               "  --tls-ca FILE           the CA that signs the clients' certificates;\n"
               "                          a client's namespace is its certificate's\n"
               "                          principal\n"
               "  --tls-crl FILE          revoked certificates (haul cert revoke)\n"
               "  --plaintext             plain TCP, no authentication: trusted links\n"
               "                          and benchmarks only\n"
               "  --handshake-timeout SECONDS  close connections that have not finished\n"
               "                          their handshake by then (default 10)\n"
               "  --max-handshakes N      connections in their handshake at once; more\n"
               "                          wait in the accept queue (default 1024)\n"
               "  --keepalive MS          an idle connection says it is there this often\n"
               "                          (default 5000; 0: never)\n"
               "  --idle-timeout MS       a connection that hears nothing this long is\n"
               "                          closed as dead (default 15000; 0: never; above\n"
               "                          the clients' --keepalive); a request whose\n"
               "                          client has had no connection for 5 s more is\n"
               "                          ended (a push keeps its staging for the next)\n"
               "  --config FILE           `key = value` lines with the keys of these\n"
               "                          options (listen, store, ...); `#` comments;\n"
               "                          the command line wins; then [principal NAME]\n"
               "                          sections: root, rights, quota, max-sessions,\n"
               "                          max-connections (hauld(8), PRINCIPALS)\n"
               "  --max-sessions N        sessions at once (default 4096)\n"
               "  --max-connections N     connections at once (default 4096)\n"
               "  --io-threads N          transport I/O threads, 1 to 64 (default: the\n"
               "                          number of online cores); a client's\n"
               "                          connections spread over them\n"
               "  --queue BYTES           per session: bytes received and not yet\n"
               "                          stored, and bytes sent and not yet\n"
               "                          acknowledged (default 256M; at least 2M):\n"
               "                          the window a client may fill, enough for\n"
               "                          a long link shared by many connections\n"
               "  --workers N             threads that do the requests' disk work, 1 to\n"
               "                          1024 (default: 4 per online core, at least 8):\n"
               "                          a store call that stalls holds one of them\n"
               "  --memory BYTES          message data the transport holds for all\n"
               "                          sessions together, received and not yet\n"
               "                          stored or sent and not yet acknowledged\n"
               "                          (default 256M; at least 128M)\n"
               "  --timeout SECONDS       message timeout, and how long a shutdown\n"
               "                          waits for running requests (default 60)\n"
               "  --log-level LEVEL       error, warn, info (default) or debug\n"
               "  --metrics ADDRESS       serve Prometheus metrics at GET /metrics on\n"
               "                          HOST:PORT, [V6]:PORT or :PORT (default: off);\n"
               "                          plain HTTP, no authentication\n"
               "  --metrics-timeout MS    a scraper's whole exchange, then it is closed\n"
               "                          (default 10000)\n"
               "  --metrics-connections N scrapers at once (default 16)\n"
               "  --metrics-principals N  principals with series of their own; the\n"
               "                          others count as principal=\"other\" (default\n"
               "                          1000)\n"
               "  --compress-level-max N  the highest zstd level a pull is sent with\n"
               "                          when its client asks for compression; a\n"
               "                          higher level asked is lowered to it; 0: pulls\n"
               "                          are sent uncompressed (default 9; 0 to 19)\n"
               "\n"
               "SIGHUP: reload the TLS files (for new connections; sessions go on).\n"
               "SIGTERM or SIGINT: refuse new requests, let running ones end (up to\n"
               "--timeout), exit 0. Exit status 1: bad arguments, or a store or an\n"
               "address that cannot be used.\n");
}

typedef struct options {
    char *value[OPT_COUNT_ - OPT_BASE];
} options;

#define VALUE(o, opt) ((o)->value[(opt)-OPT_BASE])

static int parse_unsigned(const char *name, const char *text, unsigned min, unsigned max,
                          unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno || end == text || *end != '\0' || text[0] == '-' || v < min || v > max) {
        fprintf(stderr, "hauld: --%s wants a number from %u to %u, not '%s'\n", name, min, max,
                text);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

/* A period in milliseconds: 0 (off), or min..max. */
static int parse_period(const char *name, const char *text, unsigned min, unsigned max,
                        unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno || end == text || *end != '\0' || text[0] == '-' ||
        (v != 0 && (v < min || v > max))) {
        fprintf(stderr, "hauld: --%s wants milliseconds, 0 or %u to %u, not '%s'\n", name, min, max,
                text);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_level(const char *text, int *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(text, names[i]) == 0) {
            *out = i;
            return 0;
        }
    if (strcmp(text, "warning") == 0) {
        *out = HAUL_LOG_WARN;
        return 0;
    }
    fprintf(stderr, "hauld: --log-level wants error, warn, info or debug, not '%s'\n", text);
    return -1;
}

/* Reads `key = value` lines into the options the command line left
 * unset, up to the first section: the [principal NAME] sections are
 * auth.c's. */
static int read_config(const char *path, options *o)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "hauld: cannot read the configuration %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    unsigned lineno = 0;
    int rc = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        char *s = config_trim(line);
        if (*s == '\0')
            continue;
        if (*s == '[')
            break;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            fprintf(stderr, "hauld: %s:%u: expected `key = value`\n", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = config_trim(s), *value = config_trim(eq + 1);
        for (char *c = key; *c; c++)
            if (*c == '_')
                *c = '-';
        int opt = -1;
        for (const struct option *lo = long_options; lo->name; lo++)
            if (strcmp(lo->name, key) == 0 && lo->val >= OPT_BASE && lo->val < OPT_COUNT_ &&
                lo->val != OPT_CONFIG)
                opt = lo->val;
        if (opt < 0) {
            fprintf(stderr, "hauld: %s:%u: unknown key '%s'\n", path, lineno, key);
            rc = -1;
            break;
        }
        if (*value == '\0') {
            fprintf(stderr, "hauld: %s:%u: '%s' has no value\n", path, lineno, key);
            rc = -1;
            break;
        }
        if (VALUE(o, opt) == NULL && (VALUE(o, opt) = strdup(value)) == NULL) {
            rc = -1;
            break;
        }
    }
    free(line);
    fclose(f);
    return rc;
}

/* TLS material, or an explicit --plaintext: never plain TCP by default. */
static int tls_config(options *o, server_config *cfg)
{
    const char *plain = VALUE(o, OPT_PLAINTEXT);
    int plaintext = 0;
    if (plain) {
        if (strcmp(plain, "yes") == 0 || strcmp(plain, "true") == 0 || strcmp(plain, "1") == 0)
            plaintext = 1;
        else if (strcmp(plain, "no") != 0 && strcmp(plain, "false") != 0 &&
                 strcmp(plain, "0") != 0) {
            fprintf(stderr, "hauld: plaintext wants yes or no, not '%s'\n", plain);
            return -1;
        }
    }
    cfg->tls_cert = VALUE(o, OPT_TLS_CERT);
    cfg->tls_key = VALUE(o, OPT_TLS_KEY);
    cfg->tls_ca = VALUE(o, OPT_TLS_CA);
    cfg->tls_crl = VALUE(o, OPT_TLS_CRL);
    int any = cfg->tls_cert || cfg->tls_key || cfg->tls_ca || cfg->tls_crl;
    if (plaintext && any) {
        fprintf(stderr, "hauld: --plaintext and --tls-* exclude each other\n");
        return -1;
    }
    if (plaintext)
        return 0;
    if (!any) {
        fprintf(stderr,
                "hauld: no TLS certificate: create one with `haul cert ca DIR && haul cert "
                "server DIR NAME`, then --tls-cert DIR/NAME.crt --tls-key DIR/NAME.key "
                "--tls-ca DIR/ca.crt (clients: `haul cert client DIR PRINCIPAL`); or run with "
                "--plaintext on a trusted link\n");
        return -1;
    }
    if (!cfg->tls_cert || !cfg->tls_key || !cfg->tls_ca) {
        fprintf(stderr,
                "hauld: TLS needs all of --tls-cert, --tls-key and --tls-ca (missing: "
                "%s%s%s)\n",
                cfg->tls_cert ? "" : "--tls-cert ", cfg->tls_key ? "" : "--tls-key ",
                cfg->tls_ca ? "" : "--tls-ca");
        return -1;
    }
    return 0;
}

static int make_config(int argc, char **argv, options *o, server_config *cfg)
{
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
        if (c == OPT_HELP) {
            usage(stdout);
            exit(0);
        }
        if (c == OPT_VERSION) {
            version_print(stdout, "hauld");
            exit(fflush(stdout) == 0 ? 0 : 1);
        }
        if (c == '?' || c == ':') {
            if (optopt)
                fprintf(stderr, "hauld: option -%c is unknown or lacks its value\n", optopt);
            else
                fprintf(stderr, "hauld: option %s is unknown or lacks its value\n",
                        argv[optind - 1]);
            usage(stderr);
            return -1;
        }
        free(VALUE(o, c));
        if ((VALUE(o, c) = strdup(optarg ? optarg : "yes")) == NULL)
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "hauld: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return -1;
    }
    if (VALUE(o, OPT_CONFIG) && read_config(VALUE(o, OPT_CONFIG), o) < 0)
        return -1;

    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = VALUE(o, OPT_LISTEN);
    cfg->store = VALUE(o, OPT_STORE);
    cfg->ceph_conf = VALUE(o, OPT_CEPH_CONF);
    cfg->ceph_id = VALUE(o, OPT_CEPH_ID);
    cfg->config = VALUE(o, OPT_CONFIG);
    cfg->timeout_s = 60;
    cfg->log_level = HAUL_LOG_INFO;
    haul_engine_config defaults;
    haul_engine_config_init(&defaults);
    cfg->keepalive_ms = defaults.keepalive_ms;
    cfg->queue = SERVER_QUEUE_DEFAULT;
    cfg->memory = SERVER_MEMORY_DEFAULT;
    cfg->idle_timeout_ms = defaults.idle_timeout_ms;
    cfg->metrics = VALUE(o, OPT_METRICS);
    cfg->metrics_timeout_ms = METRICS_TIMEOUT_DEFAULT;
    cfg->metrics_connections = METRICS_CONNECTIONS_DEFAULT;
    cfg->metrics_principals = METRICS_PRINCIPALS_DEFAULT;
    cfg->compress_level_max = SERVER_COMPRESS_LEVEL_MAX_DEFAULT;
    if (cfg->listen == NULL || cfg->store == NULL) {
        fprintf(stderr, "hauld: --listen and --store are required\n");
        usage(stderr);
        return -1;
    }
    if ((cfg->ceph_conf || cfg->ceph_id) && strncmp(cfg->store, "rados:", 6) != 0) {
        fprintf(stderr, "hauld: --ceph-conf and --ceph-id apply to a rados:POOL store only\n");
        return -1;
    }
    if (VALUE(o, OPT_MAX_SESSIONS) && parse_unsigned("max-sessions", VALUE(o, OPT_MAX_SESSIONS), 1,
                                                     1u << 20, &cfg->max_sessions) < 0)
        return -1;
    if (VALUE(o, OPT_MAX_CONNECTIONS) &&
        parse_unsigned("max-connections", VALUE(o, OPT_MAX_CONNECTIONS), 1, 1u << 20,
                       &cfg->max_connections) < 0)
        return -1;
    if (VALUE(o, OPT_IO_THREADS) &&
        parse_unsigned("io-threads", VALUE(o, OPT_IO_THREADS), 1, 64, &cfg->io_threads) < 0)
        return -1;
    if (VALUE(o, OPT_TIMEOUT) &&
        parse_unsigned("timeout", VALUE(o, OPT_TIMEOUT), 1, 86400, &cfg->timeout_s) < 0)
        return -1;
    if (VALUE(o, OPT_LOG_LEVEL) && parse_level(VALUE(o, OPT_LOG_LEVEL), &cfg->log_level) < 0)
        return -1;
    if (VALUE(o, OPT_HANDSHAKE_TIMEOUT)) {
        unsigned s;
        if (parse_unsigned("handshake-timeout", VALUE(o, OPT_HANDSHAKE_TIMEOUT), 1, 3600, &s) < 0)
            return -1;
        cfg->handshake_timeout_ms = s * 1000u;
    }
    if (VALUE(o, OPT_MAX_HANDSHAKES) &&
        parse_unsigned("max-handshakes", VALUE(o, OPT_MAX_HANDSHAKES), 1, 1000000,
                       &cfg->max_handshakes) < 0)
        return -1;
    if (VALUE(o, OPT_KEEPALIVE) &&
        parse_period("keepalive", VALUE(o, OPT_KEEPALIVE), 10, 3600000, &cfg->keepalive_ms) < 0)
        return -1;
    if (VALUE(o, OPT_IDLE_TIMEOUT) && parse_period("idle-timeout", VALUE(o, OPT_IDLE_TIMEOUT), 50,
                                                   86400000, &cfg->idle_timeout_ms) < 0)
        return -1;
    if (VALUE(o, OPT_QUEUE) &&
        (auth_parse_size(VALUE(o, OPT_QUEUE), &cfg->queue) < 0 || cfg->queue < (2u << 20))) {
        fprintf(stderr,
                "hauld: --queue: expected a size of at least 2M (e.g. 256M, 1G), not '%s'\n",
                VALUE(o, OPT_QUEUE));
        return -1;
    }
    if (VALUE(o, OPT_WORKERS) &&
        parse_unsigned("workers", VALUE(o, OPT_WORKERS), 1, SERVER_WORKERS_MAX, &cfg->workers) < 0)
        return -1;
    if (VALUE(o, OPT_MEMORY) && (auth_parse_size(VALUE(o, OPT_MEMORY), &cfg->memory) < 0 ||
                                 cfg->memory < SERVER_MEMORY_MIN)) {
        fprintf(stderr,
                "hauld: --memory: expected a size of at least 128M (e.g. 256M, 1G), not '%s'\n",
                VALUE(o, OPT_MEMORY));
        return -1;
    }
    if (VALUE(o, OPT_METRICS_TIMEOUT) &&
        parse_unsigned("metrics-timeout", VALUE(o, OPT_METRICS_TIMEOUT), METRICS_TIMEOUT_MIN,
                       METRICS_TIMEOUT_MAX, &cfg->metrics_timeout_ms) < 0)
        return -1;
    if (VALUE(o, OPT_METRICS_CONNECTIONS) &&
        parse_unsigned("metrics-connections", VALUE(o, OPT_METRICS_CONNECTIONS), 1,
                       METRICS_CONNECTIONS_MAX, &cfg->metrics_connections) < 0)
        return -1;
    if (VALUE(o, OPT_COMPRESS_LEVEL_MAX) &&
        parse_unsigned("compress-level-max", VALUE(o, OPT_COMPRESS_LEVEL_MAX), 0,
                       HSP_ZSTD_LEVEL_MAX, &cfg->compress_level_max) < 0)
        return -1;
    if (VALUE(o, OPT_METRICS_PRINCIPALS) &&
        parse_unsigned("metrics-principals", VALUE(o, OPT_METRICS_PRINCIPALS), 0,
                       METRICS_PRINCIPALS_MAX, &cfg->metrics_principals) < 0)
        return -1;
    if (cfg->keepalive_ms && cfg->idle_timeout_ms && cfg->keepalive_ms >= cfg->idle_timeout_ms) {
        fprintf(stderr, "hauld: --keepalive (%u ms) must be below --idle-timeout (%u ms)\n",
                cfg->keepalive_ms, cfg->idle_timeout_ms);
        return -1;
    }
    return tls_config(o, cfg);
}

/* ---- capacity ---------------------------------------------------------------------------- */

/* Descriptors a client of `haul push -P 2` takes: its two connections,
 * and the directory and file of the store its request has open. */
#define DESCRIPTORS_PER_CLIENT 4
/* Descriptors hauld keeps for itself: the listener, the engine's epoll,
 * event and timer descriptors, the log, the store's root. */
#define DESCRIPTORS_RESERVED 64
/* Below this, the kernel's accept queue is small for a burst of clients:
 * the connections beyond it wait for their SYN to be sent again (after
 * 1 s, then 3 s, ...). */
#define SOMAXCONN_SMALL 1024

/* A number from a /proc/sys file, or -1. */
static long read_sysctl(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long v = -1;
    if (fscanf(f, "%ld", &v) != 1)
        v = -1;
    fclose(f);
    return v;
}

/*
 * Raises the soft limit of descriptors to the hard one (a deep tree is
 * removed, an old staging area say, with one descriptor per level, and
 * every connection takes one), and says what the limits mean in clients:
 * how many the descriptors, --max-connections and --max-sessions admit,
 * and how large a burst the kernel's accept queue holds. A warning where
 * one of them is smaller than the others expect, with what to change.
 * Without --max-connections, the connections are kept to half the
 * descriptors.
 */
static void report_capacity(server_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        hauld_log(HAUL_LOG_WARN, "cannot read the limit of descriptors: %s", strerror(errno));
        return;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit raised = {rl.rlim_max, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
            rl = raised;
        else
            hauld_log(HAUL_LOG_WARN, "cannot raise the limit of descriptors from %llu to %llu: %s",
                      (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
                      strerror(errno));
    }
    haul_engine_config defaults;
    haul_engine_config_init(&defaults);
    unsigned long long fds = rl.rlim_cur == RLIM_INFINITY ? 1ull << 30 : rl.rlim_cur;
    unsigned long long fd_clients =
        fds > DESCRIPTORS_RESERVED ? (fds - DESCRIPTORS_RESERVED) / DESCRIPTORS_PER_CLIENT : 0;
    /* Connections beyond what the descriptors hold would leave none for
     * the store, and the requests they carry would fail on their first
     * file: unless the operator chose a limit, the connections get half
     * of what is left, and a client beyond is told the server is busy. */
    unsigned long long fd_connections = fd_clients * DESCRIPTORS_PER_CLIENT / 2;
    if (cfg->max_connections == 0 && fd_connections < defaults.max_connections) {
        cfg->max_connections = fd_connections > 8 ? (unsigned)fd_connections : 8;
        hauld_log(HAUL_LOG_WARN,
                  "%llu descriptors: --max-connections lowered from %u to %u, to leave the "
                  "other half to the store; raise the hard limit (ulimit -Hn, systemd "
                  "LimitNOFILE=) to serve more",
                  fds, defaults.max_connections, cfg->max_connections);
    }
    unsigned max_connections =
        cfg->max_connections ? cfg->max_connections : defaults.max_connections;
    unsigned max_sessions = cfg->max_sessions ? cfg->max_sessions : defaults.max_sessions;
    unsigned long long clients = max_connections / 2;
    if (max_sessions < clients)
        clients = max_sessions;
    /* What --max-connections and --max-sessions admit, in descriptors. */
    unsigned long long need =
        (unsigned long long)max_connections + 2ull * max_sessions + DESCRIPTORS_RESERVED;
    if (fd_clients < clients)
        hauld_log(HAUL_LOG_WARN,
                  "%llu descriptors: room for about %llu clients of 2 connections, fewer than "
                  "the %llu that --max-connections %u and --max-sessions %u admit (they need "
                  "about %llu); raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower "
                  "them",
                  fds, fd_clients, clients, max_connections, max_sessions, need);
    else
        hauld_log(HAUL_LOG_INFO,
                  "%llu descriptors: room for about %llu clients of 2 connections; "
                  "--max-connections %u and --max-sessions %u admit %llu at once",
                  fds, fd_clients, max_connections, max_sessions, clients);

    long somaxconn = read_sysctl("/proc/sys/net/core/somaxconn");
    if (somaxconn < 0 || strncmp(cfg->listen, "unix:", 5) == 0)
        return;
    long queue = somaxconn < HAUL_LISTEN_BACKLOG ? somaxconn : HAUL_LISTEN_BACKLOG;
    unsigned handshakes = cfg->max_handshakes ? cfg->max_handshakes : defaults.max_handshakes;
    if (somaxconn < SOMAXCONN_SMALL)
        hauld_log(HAUL_LOG_WARN,
                  "the accept queue holds %ld connections (net.core.somaxconn): a burst of more "
                  "than about %ld clients of 2 connections waits for the kernel to resend their "
                  "SYN, 1 s and more; raise it (sysctl -w net.core.somaxconn=%d)",
                  queue, (queue + handshakes) / 2, HAUL_LISTEN_BACKLOG);
    else
        hauld_log(HAUL_LOG_INFO,
                  "the accept queue holds %ld connections (net.core.somaxconn %ld): a burst of "
                  "about %ld clients of 2 connections waits there while %u handshakes run",
                  queue, somaxconn, (queue + handshakes) / 2, handshakes);
}

/* ---- main ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options o;
    memset(&o, 0, sizeof(o));
    server_config cfg;
    int status = 1;
    if (make_config(argc, argv, &o, &cfg) < 0)
        goto out;
    log_level = cfg.log_level;

    /* SIGTERM, SIGINT and SIGHUP arrive through a descriptor that the loop polls;
     * they are blocked before the engine starts its threads, which
     * inherit the mask, so that none of them takes the signal instead. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) {
        fprintf(stderr, "hauld: cannot block signals: %s\n", strerror(errno));
        goto out;
    }
    int sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0) {
        fprintf(stderr, "hauld: cannot make a signal descriptor: %s\n", strerror(errno));
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);

    report_capacity(&cfg);

    server srv;
    if (server_init(&srv, &cfg, sigfd) < 0) {
        server_fini(&srv);
        close(sigfd);
        goto out;
    }
    status = server_run(&srv) == 0 ? 0 : 1;
    server_fini(&srv);
    close(sigfd);
    hauld_log(HAUL_LOG_INFO, "stopped");
out:
    for (int i = 0; i < OPT_COUNT_ - OPT_BASE; i++)
        free(o.value[i]);
    return status;
}
