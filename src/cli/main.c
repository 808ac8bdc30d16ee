/*
 * main.c - the haul command: back up a directory tree to a hauld storage
 * server, restore it, list, verify, and measure a link.
 *
 *   haul push [--takeover] SRC_DIR haul://HOST:PORT/DATASET
 *   haul pull haul://HOST:PORT/DATASET[@SNAPSHOT] DEST_DIR [PATH...]
 *   haul ls haul://HOST:PORT[/DATASET[@SNAPSHOT]]
 *   haul verify haul://HOST:PORT/DATASET[@SNAPSHOT]
 *   haul bench haul://HOST:PORT
 *   haul delete haul://HOST:PORT/DATASET@SNAPSHOT
 *   haul prune haul://HOST:PORT/DATASET --keep N
 *   haul cert ca|server|client|revoke|show ...   (certificates: cert.c)
 *
 * Unix sockets: haul://unix:/path/to/sock/DATASET[@SNAPSHOT] (the dataset
 * is the last component); IPv6: haul://[::1]:PORT/DATASET.
 *
 * Exit status:
 *   0  everything asked for was done
 *   1  usage error (bad option, URL or name; a source that is no directory)
 *   2  done, but some files were skipped (unreadable, vanished, changed while
 *      read; on pull: could not be written); each is reported on stderr
 *   3  transfer or connection failure (or a local I/O failure that stops the run)
 *   4  the server refused the request; its reason is printed
 *   5  verification found problems (verify; a hash mismatch on pull)
 *
 * This file parses the options every subcommand shares and dispatches; each
 * subcommand lives in a file of its own.
 */
#include <getopt.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli/progress.h"
#include "cli/cert.h"
#include "cli/client.h"
#include "proto/compress.h"
#include "version/version.h"

/* -P auto: the pipe chooses its count (HAUL_CONNECTIONS_AUTO). */
#define DEFAULT_CONNECTIONS HAUL_CONNECTIONS_AUTO
/* 256 MiB: four times what 1 Gbit/s carries in a 200 ms round trip
 * (docs/design.md, "Long links"). Buffers are taken only as messages
 * wait for their acknowledgement. */
#define DEFAULT_QUEUE (256ull << 20)
#define DEFAULT_TIMEOUT_S 60
#define DEFAULT_BENCH_S 5

static const char options_help[] =
    "Options (every subcommand):\n"
    "  -P, --connections N|auto  connections in the pipe to the server (default\n"
    "                        auto: the pipe grows while more connections carry\n"
    "                        more, up to --max-connections; -v shows each change)\n"
    "      --max-connections N  the most -P auto uses (default 128)\n"
    "      --message-size BYTES  file data per message (push, bench; 4K..1M,\n"
    "                        default 1M): the server's window counts messages\n"
    "                        of this size, so smaller ones suit small queues\n"
    "      --queue BYTES     output queue: bytes sent and not yet acknowledged\n"
    "                        (default 256M; K, M, G suffixes; at least 2M)\n"
    "      --timeout SECONDS a message not acknowledged this long fails the run,\n"
    "                        and so does a server unreachable this long (default 60)\n"
    "      --keepalive MS    an idle connection says it is there this often\n"
    "                        (default 5000; 0: never)\n"
    "      --idle-timeout MS a connection that hears nothing this long is taken\n"
    "                        for dead and dialled again (default 15000; 0: never;\n"
    "                        above the server's --keepalive)\n"
    "      --principal NAME  the namespace on the server (default: $HAUL_PRINCIPAL,\n"
    "                        else the principal of --tls-cert, else \"default\")\n"
    "      --tls-cert FILE   our client certificate (haul cert client DIR PRINCIPAL)\n"
    "      --tls-key FILE    its private key\n"
    "      --tls-ca FILE     the CA that signed the server's certificate\n"
    "                        (or $HAUL_TLS_DIR=DIR: DIR/ca.crt, DIR/PRINCIPAL.crt\n"
    "                        and DIR/PRINCIPAL.key)\n"
    "      --plaintext       plain TCP without TLS: trusted links and benchmarks\n"
    "                        only (the server must be --plaintext too)\n"
    "      --json            print one JSON object on stdout at the end\n"
    "  -q, --quiet           print only what scripts need (push: the snapshot id)\n"
    "  -v, --verbose         log the transport's doings (twice: debug)\n"
    "  -t, --time SECONDS    bench: how long to send (default 5)\n"
    "      --keep N          prune: how many of the newest snapshots to keep\n"
    "      --takeover        push: end the dataset's running push of the same\n"
    "                        principal, even if its client still looks connected\n"
    "                        (one whose client is gone ends by itself), and\n"
    "                        resume from what it sent\n"
    "      --exclude PATTERN push: leave out what PATTERN matches (repeatable):\n"
    "                        * ? [...] within a name, ** across directories; no '/'\n"
    "                        or an inner '/': at any depth; a leading '/': from\n"
    "                        SRC_DIR only; a trailing '/': directories only\n"
    "      --exclude-from FILE  push: patterns from FILE ('-': standard input), one\n"
    "                        a line ('#': comment)\n"
    "      --exclude-caches  push: leave out directories tagged with CACHEDIR.TAG\n"
    "  -x, --one-file-system  push: do not descend into other file systems (their\n"
    "                        mount points are kept, empty)\n"
    "      --progress        push, pull, verify: a status line on stderr (bytes and\n"
    "                        files done of the total, rate, time left, the file at\n"
    "                        hand), also when stderr is no terminal (then a line a\n"
    "                        second); the default on a terminal, unless -q or --json\n"
    "      --no-progress     no status line\n"
    "      --compress[=LEVEL]  push, pull: compress the messages with zstd at\n"
    "                        LEVEL 1..19 (default 3) where that pays; off by default\n"
    "      --bwlimit RATE    push, pull: at most RATE of file data a second over\n"
    "                        all connections; KiB/s as in rsync, or with a suffix\n"
    "                        K, M, G (powers of 1024: 2M = 2 MiB/s); 0: no limit\n"
    "  -h, --help            this help (haul CMD --help: the subcommand's)\n";

static const char exit_help[] = "Exit status:\n"
                                "  0  everything asked for was done\n"
                                "  1  usage error\n"
                                "  2  done, but some files were skipped (each reported on "
                                "stderr)\n"
                                "  3  transfer or connection failure\n"
                                "  4  the server refused the request\n"
                                "  5  verification found problems (verify; hash mismatch on "
                                "pull)\n";

struct command {
    const char *name;
    int (*run)(const cli_options *opt, int argc, char **argv);
    int min_args, max_args; /* positional arguments after the name; -1: any */
    const char *synopsis;
    const char *help;
};

static const struct command commands[] = {
    {"push", cli_push, 2, 2, "push SRC_DIR haul://HOST:PORT/DATASET",
     "Backs up the tree under SRC_DIR as a new snapshot of DATASET and prints its id.\n"
     "Files unchanged since the dataset's last snapshot are not sent again; an\n"
     "interrupted push is resumed by the next one. Regular files, directories,\n"
     "symbolic links (never followed) and hard links within the tree are kept;\n"
     "sockets, FIFOs and devices are skipped with a warning. --exclude, --exclude-from,\n"
     "--exclude-caches and -x leave paths out (haul(1), LEAVING PATHS OUT); the summary\n"
     "counts them as excluded.\n"
     "A push of the dataset that is still running makes the server refuse this one,\n"
     "unless its client has lost every connection (the server then ends it and this\n"
     "push resumes from it), or --takeover asks to end it anyway: granted for a push\n"
     "of the same principal only; the push taken over fails with \"taken over by\n"
     "another push\".\n"},
    {"pull", cli_pull, 2, -1, "pull haul://HOST:PORT/DATASET[@SNAPSHOT] DEST_DIR [PATH...]",
     "Restores a snapshot (the latest without @SNAPSHOT), or only the PATHs given\n"
     "(files, or directories with everything below them), into DEST_DIR, which is\n"
     "created if missing. Nothing is written outside DEST_DIR and no symbolic link\n"
     "is followed while writing; existing files are replaced. Every file's XXH3-128\n"
     "is checked against the snapshot's manifest.\n"},
    {"ls", cli_ls, 1, 1, "ls haul://HOST:PORT[/DATASET[@SNAPSHOT]]",
     "Lists the datasets (with the time of their latest snapshot), the snapshots\n"
     "of a dataset (id, time, files, bytes), or the entries of a snapshot (type,\n"
     "mode, size, modification time, path). Bytes of a path that are not printable\n"
     "are shown as \\xNN, a backslash as \\\\.\n"},
    {"verify", cli_verify, 1, 1, "verify haul://HOST:PORT/DATASET[@SNAPSHOT]",
     "Asks the server to re-read every file of the snapshot (the latest without\n"
     "@SNAPSHOT) and check it against the manifest; prints each problem.\n"},
    {"bench", cli_bench, 1, 1, "bench haul://HOST:PORT",
     "Measures memory-to-memory throughput to the server, like iperf3: sends 1 MiB\n"
     "messages over a pipe of -P connections for -t seconds and prints the\n"
     "acknowledged throughput.\n"},
    {"delete", cli_delete, 1, 1, "delete haul://HOST:PORT/DATASET@SNAPSHOT",
     "Removes one snapshot of DATASET from the server. Needs the delete right, which\n"
     "the server grants only where its configuration says so (hauld(8)); files\n"
     "that other snapshots share stay for them.\n"},
    {"prune", cli_prune, 1, 1, "prune haul://HOST:PORT/DATASET --keep N",
     "Removes every snapshot of DATASET but the N newest. Needs the read and\n"
     "delete rights.\n"},
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: haul COMMAND [OPTIONS] ARGS\n\nCommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  haul %s\n", commands[i].synopsis);
    fprintf(f, "  haul cert ca|server|client|revoke|show ...  (see haul cert --help)\n");
    fprintf(f, "  haul --version  (the versions of haul and its libraries)\n");
    fprintf(f,
            "\nURLs: haul://HOST:PORT/DATASET, haul://[IPV6]:PORT/DATASET,\n"
            "      haul://unix:/path/to/socket/DATASET (the dataset is the last component)\n\n"
            "%s\n%s",
            options_help, exit_help);
}

static void command_usage(FILE *f, const struct command *cmd)
{
    fprintf(f, "usage: haul %s [OPTIONS]\n\n%s\n%s\n%s", cmd->synopsis, cmd->help, options_help,
            exit_help);
}

static int parse_seconds(const char *text, double *out)
{
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || !(v > 0) || v > 1e7)
        return -1;
    *out = v;
    return 0;
}

/* A period in milliseconds: 0 (off), or min..max. */
static int parse_period(const char *text, unsigned min, unsigned max, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno || end == text || *end != '\0' || text[0] == '-' || (v != 0 && (v < min || v > max)))
        return -1;
    *out = (unsigned)v;
    return 0;
}

/* Many connections and deep trees need more descriptors than the usual
 * soft limit of 1024: take what the hard limit allows. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/*
 * TLS unless --plaintext: the files come from --tls-cert/--tls-key/--tls-ca
 * or from $HAUL_TLS_DIR, and the principal, when not given, from the
 * certificate. The server checks that they agree; checking here first
 * gives a clearer message. Returns 0, or -1 after saying why.
 */
static int tls_options(cli_options *opt, char *principal, char *ca, char *crt, char *key)
{
    if (opt->plaintext) {
        if (opt->tls_cert || opt->tls_key || opt->tls_ca) {
            cli_warn("--plaintext and --tls-* exclude each other");
            return -1;
        }
        if (opt->principal == NULL)
            opt->principal = "default";
        return 0;
    }
    const char *dir = getenv("HAUL_TLS_DIR");
    if (opt->tls_cert == NULL && opt->tls_key == NULL && opt->tls_ca == NULL && dir && *dir) {
        const char *name = opt->principal ? opt->principal : "default";
        if (!hsp_name_ok(name, strlen(name), HSP_NAME_MAX)) {
            cli_warn("bad principal '%s'", name);
            return -1;
        }
        snprintf(ca, PATH_MAX, "%s/ca.crt", dir);
        snprintf(crt, PATH_MAX, "%s/%s.crt", dir, name);
        snprintf(key, PATH_MAX, "%s/%s.key", dir, name);
        if (access(crt, R_OK) != 0) {
            cli_warn("HAUL_TLS_DIR: no certificate %s for principal %s: make one with `haul cert "
                     "client %s %s`, or give --principal NAME",
                     crt, name, dir, name);
            return -1;
        }
        opt->tls_ca = ca;
        opt->tls_cert = crt;
        opt->tls_key = key;
    }
    if (opt->tls_ca == NULL) {
        cli_warn("no TLS certificate: create one with `haul cert client DIR PRINCIPAL` (DIR "
                 "holding the CA of `haul cert ca DIR`), then give --tls-cert DIR/PRINCIPAL.crt "
                 "--tls-key DIR/PRINCIPAL.key --tls-ca DIR/ca.crt, or set HAUL_TLS_DIR=DIR; "
                 "or use --plaintext on a trusted link");
        return -1;
    }
    if ((opt->tls_cert == NULL) != (opt->tls_key == NULL)) {
        cli_warn("--tls-cert and --tls-key go together");
        return -1;
    }
    if (opt->tls_cert == NULL) {
        /* Allowed, so that a server's refusal can be seen; it cannot
         * authenticate. */
        cli_warn("warning: no client certificate (--tls-cert): the server will refuse us");
        if (opt->principal == NULL)
            opt->principal = "default";
        return 0;
    }
    char why[PATH_MAX + 200];
    if (cli_cert_principal(opt->tls_cert, why, sizeof(why)) != 0) {
        cli_warn("%s", why);
        return -1;
    }
    /* cli_cert_principal() checked that the name fits. */
    size_t n = strnlen(why, HSP_NAME_MAX);
    memcpy(principal, why, n);
    principal[n] = '\0';
    if (opt->principal == NULL)
        opt->principal = principal;
    else if (strcmp(opt->principal, principal) != 0)
        cli_warn("warning: principal %s is not the one of %s (%s): the server will refuse it",
                 opt->principal, opt->tls_cert, principal);
    return 0;
}

/* Long options without a short form, beyond any character. */
enum { OPT_EXCLUDE = 0x200, OPT_EXCLUDE_FROM, OPT_EXCLUDE_CACHES };

/* --progress and --no-progress (progress.h). */
enum { OPT_PROGRESS = 0x280, OPT_NO_PROGRESS };

/* --compress[=LEVEL] (proto/compress.h). */
enum { OPT_COMPRESS = 0x2c0 };
/* --bwlimit. */
enum { OPT_BWLIMIT = 0x2d0 };

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"connections", required_argument, NULL, 'P'},
        {"max-connections", required_argument, NULL, 'm'},
        {"queue", required_argument, NULL, 'Q'},
        {"message-size", required_argument, NULL, 'M'},
        {"timeout", required_argument, NULL, 'T'},
        {"keepalive", required_argument, NULL, 'L'},
        {"idle-timeout", required_argument, NULL, 'I'},
        {"principal", required_argument, NULL, 'p'},
        {"tls-cert", required_argument, NULL, 'C'},
        {"tls-key", required_argument, NULL, 'K'},
        {"tls-ca", required_argument, NULL, 'A'},
        {"plaintext", no_argument, NULL, 'X'},
        {"json", no_argument, NULL, 'j'},
        {"quiet", no_argument, NULL, 'q'},
        {"verbose", no_argument, NULL, 'v'},
        {"time", required_argument, NULL, 't'},
        {"keep", required_argument, NULL, 'k'},
        {"takeover", no_argument, NULL, 'O'},
        {"exclude", required_argument, NULL, OPT_EXCLUDE},
        {"exclude-from", required_argument, NULL, OPT_EXCLUDE_FROM},
        {"exclude-caches", no_argument, NULL, OPT_EXCLUDE_CACHES},
        {"one-file-system", no_argument, NULL, 'x'},
        {"progress", no_argument, NULL, OPT_PROGRESS},
        {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
        {"compress", optional_argument, NULL, OPT_COMPRESS},
        {"bwlimit", required_argument, NULL, OPT_BWLIMIT},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    cli_options opt = {
        .connections = DEFAULT_CONNECTIONS,
        .queue = DEFAULT_QUEUE,
        .message = HSP_BLOCK,
        .timeout_ms = DEFAULT_TIMEOUT_S * 1000,
        .seconds = DEFAULT_BENCH_S,
    };
    haul_engine_config defaults;
    haul_engine_config_init(&defaults);
    opt.keepalive_ms = defaults.keepalive_ms;
    opt.idle_timeout_ms = defaults.idle_timeout_ms;
    const char *env = getenv("HAUL_PRINCIPAL");
    opt.principal = env && *env ? env : NULL;
    int help = 0;
    /* At most one pattern or file per argument; static, so that they stay
     * reachable until the process ends. */
    static const char **excludes, **exclude_files;
    excludes = calloc((size_t)argc, sizeof(*excludes));
    exclude_files = calloc((size_t)argc, sizeof(*exclude_files));
    if (excludes == NULL || exclude_files == NULL) {
        cli_warn("out of memory");
        return CLI_EXIT_TRANSFER;
    }
    opt.excludes = excludes;
    opt.exclude_files = exclude_files;

    /* haul cert has options of its own and opens no session. */
    if (argc >= 2 && strcmp(argv[1], "cert") == 0)
        return cli_cert(argc - 1, argv + 1);

    int ch;
    while ((ch = getopt_long(argc, argv, "P:qvt:xh", longopts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case 'P': {
            if (strcmp(optarg, "auto") == 0) {
                opt.connections = HAUL_CONNECTIONS_AUTO;
                break;
            }
            unsigned long n = strtoul(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || n < 1 || n > 65535) {
                cli_warn("-P: expected auto or a number of connections, 1..65535");
                return CLI_EXIT_USAGE;
            }
            opt.connections = (unsigned)n;
            break;
        }
        case 'm': {
            unsigned long n = strtoul(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || n < 1 || n > 65535) {
                cli_warn("--max-connections: expected a number of connections, 1..65535");
                return CLI_EXIT_USAGE;
            }
            opt.max_connections = (unsigned)n;
            break;
        }
        case 'M': {
            uint64_t m;
            if (cli_parse_size(optarg, &m) != 0 || m < 4096 || m > HSP_BLOCK) {
                cli_warn("--message-size: expected a size from 4K to 1M");
                return CLI_EXIT_USAGE;
            }
            opt.message = (uint32_t)m;
            break;
        }
        case 'Q':
            if (cli_parse_size(optarg, &opt.queue) != 0 || opt.queue < (2u << 20)) {
                cli_warn("--queue: expected a size of at least 2M (e.g. 64M, 1G)");
                return CLI_EXIT_USAGE;
            }
            break;
        case 'T': {
            double s;
            if (parse_seconds(optarg, &s) != 0 || s * 1000 > UINT_MAX / 2 || s < 0.001) {
                cli_warn("--timeout: expected seconds");
                return CLI_EXIT_USAGE;
            }
            opt.timeout_ms = (unsigned)(s * 1000);
            break;
        }
        case 'L':
            if (parse_period(optarg, 10, 3600000, &opt.keepalive_ms) != 0) {
                cli_warn("--keepalive: expected milliseconds, 0 or 10..3600000");
                return CLI_EXIT_USAGE;
            }
            break;
        case 'I':
            if (parse_period(optarg, 50, 86400000, &opt.idle_timeout_ms) != 0) {
                cli_warn("--idle-timeout: expected milliseconds, 0 or 50..86400000");
                return CLI_EXIT_USAGE;
            }
            break;
        case 'p':
            opt.principal = optarg;
            break;
        case 'C':
            opt.tls_cert = optarg;
            break;
        case 'K':
            opt.tls_key = optarg;
            break;
        case 'A':
            opt.tls_ca = optarg;
            break;
        case 'X':
            opt.plaintext = 1;
            break;
        case 'j':
            opt.json = 1;
            break;
        case 'q':
            opt.quiet = 1;
            break;
        case 'v':
            opt.verbose++;
            break;
        case 't':
            if (parse_seconds(optarg, &opt.seconds) != 0) {
                cli_warn("-t: expected seconds");
                return CLI_EXIT_USAGE;
            }
            opt.seconds_set = 1;
            break;
        case 'k': {
            unsigned long n = strtoul(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || n > 1000000) {
                cli_warn("--keep: expected a number of snapshots");
                return CLI_EXIT_USAGE;
            }
            opt.keep = (unsigned)n;
            opt.keep_set = 1;
            break;
        }
        case 'O':
            opt.takeover = 1;
            break;
        case OPT_EXCLUDE:
            excludes[opt.n_excludes++] = optarg;
            break;
        case OPT_EXCLUDE_FROM:
            exclude_files[opt.n_exclude_files++] = optarg;
            break;
        case OPT_EXCLUDE_CACHES:
            opt.exclude_caches = 1;
            break;
        case 'x':
            opt.one_file_system = 1;
            break;
        case OPT_PROGRESS:
            opt.progress = CLI_PROGRESS_FORCE;
            break;
        case OPT_NO_PROGRESS:
            opt.progress = CLI_PROGRESS_NEVER;
            break;
        case OPT_COMPRESS: {
            unsigned long n = HSP_ZSTD_LEVEL_DEFAULT;
            if (optarg) {
                n = strtoul(optarg, &end, 10);
                if (*optarg < '0' || *optarg > '9' || *end != '\0' || n < HSP_ZSTD_LEVEL_MIN ||
                    n > HSP_ZSTD_LEVEL_MAX) {
                    cli_warn("--compress: expected a level, %d..%d", HSP_ZSTD_LEVEL_MIN,
                             HSP_ZSTD_LEVEL_MAX);
                    return CLI_EXIT_USAGE;
                }
            }
            opt.compress = (int)n;
            break;
        }
        case OPT_BWLIMIT:
            if (cli_parse_rate(optarg, &opt.bwlimit) != 0) {
                cli_warn("--bwlimit: expected a rate: KiB/s, or bytes/s with a K, M or G "
                         "suffix (0: no limit)");
                return CLI_EXIT_USAGE;
            }
            break;
        case 'h':
            help = 1;
            break;
        case 'V':
            version_print(stdout, "haul");
            return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_TRANSFER;
        default:
            fprintf(stderr, "Try 'haul --help'.\n");
            return CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        if (help) {
            usage(stdout);
            return CLI_EXIT_OK;
        }
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    const struct command *cmd = NULL;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(argv[optind], commands[i].name) == 0)
            cmd = &commands[i];
    if (cmd == NULL) {
        cli_warn("unknown command '%s'", argv[optind]);
        fprintf(stderr, "Try 'haul --help'.\n");
        return CLI_EXIT_USAGE;
    }
    if (help) {
        command_usage(stdout, cmd);
        return CLI_EXIT_OK;
    }
    int nargs = argc - optind - 1;
    if (nargs < cmd->min_args || (cmd->max_args >= 0 && nargs > cmd->max_args)) {
        fprintf(stderr, "usage: haul %s [OPTIONS]\nTry 'haul %s --help'.\n", cmd->synopsis,
                cmd->name);
        return CLI_EXIT_USAGE;
    }
    if (opt.seconds_set && cmd->run != cli_bench) {
        cli_warn("-t/--time applies to bench only");
        return CLI_EXIT_USAGE;
    }
    if (opt.keep_set && cmd->run != cli_prune) {
        cli_warn("--keep applies to prune only");
        return CLI_EXIT_USAGE;
    }
    if (opt.takeover && cmd->run != cli_push) {
        cli_warn("--takeover applies to push only");
        return CLI_EXIT_USAGE;
    }
    if (opt.compress && cmd->run != cli_push && cmd->run != cli_pull) {
        cli_warn("--compress applies to push and pull only");
        return CLI_EXIT_USAGE;
    }
    if (opt.bwlimit && cmd->run != cli_push && cmd->run != cli_pull) {
        cli_warn("--bwlimit applies to push and pull only");
        return CLI_EXIT_USAGE;
    }
    if ((opt.n_excludes || opt.n_exclude_files || opt.exclude_caches || opt.one_file_system) &&
        cmd->run != cli_push) {
        cli_warn("--exclude, --exclude-from, --exclude-caches and --one-file-system apply to "
                 "push only");
        return CLI_EXIT_USAGE;
    }
    if (opt.keepalive_ms && opt.idle_timeout_ms && opt.keepalive_ms >= opt.idle_timeout_ms) {
        cli_warn("--keepalive (%u ms) must be below --idle-timeout (%u ms)", opt.keepalive_ms,
                 opt.idle_timeout_ms);
        return CLI_EXIT_USAGE;
    }
    static char principal[HSP_NAME_MAX + 1], ca[PATH_MAX], crt[PATH_MAX], key[PATH_MAX];
    if (tls_options(&opt, principal, ca, crt, key) != 0)
        return CLI_EXIT_USAGE;
    if (!hsp_name_ok(opt.principal, strlen(opt.principal), HSP_NAME_MAX)) {
        cli_warn("bad principal '%s' (1-255 of A-Z a-z 0-9 . _ -, not starting with '.')",
                 opt.principal);
        return CLI_EXIT_USAGE;
    }
    raise_fd_limit();
    int status = cmd->run(&opt, nargs, argv + optind + 1);
    if (fflush(stdout) != 0 && status == CLI_EXIT_OK)
        status = CLI_EXIT_TRANSFER;
    return status;
}
