/*
 * client.h - what the subcommands of the haul command share: options,
 * haul:// URLs, the engine and the one session a run opens, the event loop
 * that delivers the server's records, and small output helpers.
 *
 * A run of haul opens one engine and one session (one request of the
 * storage protocol, docs/store-protocol.md), drives it from the main
 * thread and ends with one of the exit statuses below.
 */
#ifndef HAUL_CLI_CLIENT_H
#define HAUL_CLI_CLIENT_H

#include <stdint.h>
#include <stdio.h>

#include "haul.h"
#include "proto/store.h"

/*
 * Exit statuses of haul. Scripts and tests rely on them; haul --help
 * lists them too.
 */
enum {
    CLI_EXIT_OK = 0,       /* everything asked for was done */
    CLI_EXIT_USAGE = 1,    /* bad command line (or a source that is no directory) */
    CLI_EXIT_SKIPPED = 2,  /* done, but some files were skipped (unreadable, vanished,
                              changed while read, could not be written) */
    CLI_EXIT_TRANSFER = 3, /* transfer or connection failure, local I/O failure */
    CLI_EXIT_REFUSED = 4,  /* the server refused the request */
    CLI_EXIT_VERIFY = 5,   /* verification found problems (verify; hash mismatch on pull) */
};

/* Options shared by every subcommand (main.c parses them). */
typedef struct cli_options {
    unsigned connections;     /* -P: connections in the pipe; 0 (HAUL_CONNECTIONS_AUTO): auto */
    unsigned max_connections; /* --max-connections: the cap of -P auto (0: the library's) */
    uint64_t queue;           /* --queue: output queue bytes */
    uint32_t message;         /* --message-size: file data per message */
    unsigned timeout_ms;      /* --timeout: message timeout */
    /* --keepalive, --idle-timeout: the engine's liveness periods (0: off). */
    unsigned keepalive_ms;
    unsigned idle_timeout_ms;
    const char *principal;
    /* Mutual TLS: our certificate and key, and the CA of the server's
     * (all NULL with --plaintext). */
    const char *tls_cert, *tls_key, *tls_ca;
    int plaintext;
    int json;       /* --json: one JSON object on stdout at the end */
    int quiet;      /* -q: no summary, no progress */
    int verbose;    /* -v: engine log level */
    double seconds; /* -t: bench duration */
    int seconds_set;
    unsigned keep; /* --keep: prune keeps this many of the newest snapshots */
    int keep_set;
    int takeover; /* --takeover: push ends the dataset's running push of ours */
    /* What push leaves out (select.h): --exclude patterns and
     * --exclude-from files in the order given, --exclude-caches,
     * --one-file-system. */
    const char **excludes;
    size_t n_excludes;
    const char **exclude_files;
    size_t n_exclude_files;
    int exclude_caches;
    int one_file_system;
    /* --progress (1), --no-progress (-1), else 0: the status line of push,
     * pull and verify on a terminal (progress.h, enum cli_progress_option). */
    int progress;
    /* --compress[=LEVEL]: the zstd level of push and pull, 0: off
     * (proto/compress.h). */
    int compress;
    /* --bwlimit: bytes per second of file data a push sends, or a pull
     * asks the server to send at most (0: no limit). */
    uint64_t bwlimit;
} cli_options;

/* A parsed haul://HOST:PORT[/DATASET[@SNAPSHOT]] or
 * haul://unix:/path/to/sock[/DATASET[@SNAPSHOT]]. */
typedef struct cli_url {
    char destination[4200]; /* as haul_session_new() takes it */
    char dataset[HSP_NAME_MAX + 1];
    char snapshot[HSP_SNAPSHOT_MAX + 1];
} cli_url;

/* Parses a URL; on error prints why and returns -1. A unix: URL whose
 * whole path is a socket names no dataset; otherwise the dataset is the
 * last component (empty after a trailing '/'). */
int cli_url_parse(const char *text, cli_url *url);

/*
 * The engine, the session and what the server said. The subcommand sets
 * the callbacks before cli_open(); they run on the main thread, from
 * cli_pump().
 */
typedef struct cli_client {
    haul_engine *engine;
    haul_session *session; /* NULL once aborted */
    const cli_options *opt;
    const cli_url *url;
    int open;        /* SESSION_OPEN seen */
    int closed;      /* SESSION_CLOSED seen */
    int close_error; /* its error */
    int failed;      /* an exit status once the run failed, else 0 */
    /* The zstd level of the session: opt->compress, or 0 once a server
     * that does not know compression refused it and cli_open() asked
     * again without it. */
    int compress;
    /* Expands the server's compressed messages (with compress only), and
     * the bytes of the server's messages as received and as expanded. */
    struct hsp_zstd *unzstd;
    uint64_t wire_in, message_in;
    int have_result;   /* a RESULT record arrived */
    hsp_record result; /* it (data points to result_text) */
    char result_text[1024];
    uint64_t messages_sent, messages_acked;
    /* Connections of the pipe in use (joined, not parked), as last seen
     * and at most, sampled by cli_pump(). */
    unsigned conns_now, conns_peak;
    double conns_at;

    /* Called for every record of every message the server sends, in
     * order. RESULT is stored above first. Returns 0, or an exit status
     * that ends the run (the session is aborted). */
    int (*on_record)(void *arg, const hsp_record *rec);
    /* The status line (progress.h) that cli_pump() redraws, or NULL. */
    struct cli_progress *progress;
    /*
     * Set before cli_open() by a pull of a whole snapshot or a verify:
     * with a status line, cli_open() also sends a LIST of the dataset, on
     * a session of its own over the same pipe, and cli_pump() hands the
     * files and bytes of the URL's snapshot (the latest without one) to
     * the status line as its total when they come. A LIST refused or
     * failed leaves the line without a total and the run as it was.
     */
    int want_totals;
    /* That LIST while it runs, and what it found. */
    haul_session *lister;
    int lister_found;
    uint64_t lister_files, lister_bytes;

    /* Called for every acknowledged message (may be NULL). */
    void (*on_sent)(void *arg, const haul_event *ev);
    void *arg;
} cli_client;

/*
 * Creates the engine and a session carrying the request (op, the URL's
 * dataset and snapshot) and waits until the server accepts it. Returns 0,
 * or an exit status after printing why (refused: CLI_EXIT_REFUSED; no
 * connection: CLI_EXIT_TRANSFER). cli_free() is needed in both cases.
 */
int cli_open(cli_client *c, const cli_options *opt, const cli_url *url, int op);

/*
 * Waits up to timeout_ms for events (0: only what is there; with a status
 * line, at most the period of its redraws), handles them
 * and takes every message that waits, passing its records to on_record.
 * Returns how many events were handled, or -1 once the run failed
 * (c->failed says how; the reason was printed).
 */
int cli_pump(cli_client *c, int timeout_ms);

/*
 * The connections the run reports: -P N itself, or for -P auto the count
 * the pipe uses now (joined, not parked), which is the one it chose once
 * the transfer ran; *peak (may be NULL) gets the most in use at once.
 */
unsigned cli_connections(cli_client *c, unsigned *peak);

/*
 * Queues a copy of a message (haul_send). Returns 0, HAUL_EQUEUEFULL (try
 * again after an acknowledgement), or -1 when no more can be sent: the run
 * failed, or the server ended the session with a RESULT (have_result).
 */
int cli_send(cli_client *c, const void *buf, size_t len, uint64_t tag);

/* As cli_send(), lending buf to the engine until release runs (on an
 * engine thread; release may be NULL: buf then outlives the engine). */
int cli_send_buffer(cli_client *c, const void *buf, size_t len, void (*release)(void *, void *),
                    void *arg, uint64_t tag);

/* Pumps events until the RESULT has arrived or the run has failed (a
 * session that ends without a RESULT fails it); no timeout of its own. */
void cli_wait_result(cli_client *c);

/* Fails the run with an exit status and a message (printed unless NULL);
 * the first failure wins. Returns -1. */
int cli_fail(cli_client *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Closes the session in order and waits for its end (at most the message
 * timeout), and for the end of the LIST of want_totals (at most 2 s). */
void cli_close(cli_client *c);

/* Waits for the LIST of want_totals to end (at most 2 s). */
void cli_list_wait(cli_client *c);

/* Frees the session and the engine. */
void cli_free(cli_client *c);

/* The status a server failure maps to, after printing the RESULT text. */
int cli_result_status(cli_client *c, const char *what);

/* ---- output helpers ------------------------------------------------------- */

/* "haul: ..." on stderr. */
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Seconds on a monotonic clock. */
double cli_now(void);
/* Escapes a path as cli_put_path writes it into out (at least 4 * len + 1
 * bytes): printable ASCII and valid UTF-8 stay, a backslash becomes "\\",
 * any other byte \xNN. Returns the length (out is NUL terminated). */
size_t cli_escape_path(const char *path, size_t len, char *out);
/* Writes a path with backslash as "\\" and every byte that is not
 * printable ASCII or part of valid UTF-8 as \xNN. */
void cli_put_path(FILE *f, const char *path, size_t len);
/* Writes a JSON string: the escaped form of cli_put_path, in quotes. */
void cli_put_json_path(FILE *f, const char *path, size_t len);
/* Writes a JSON string of text bytes (escapes as cli_put_path does). */
void cli_put_json_text(FILE *f, const char *text, size_t len);
/* "12.3 MiB" */
void cli_human_bytes(uint64_t bytes, char *out, size_t size);
/* Parses "64M", "1G", "4096": K, M, G, T are binary multiples. */
int cli_parse_size(const char *text, uint64_t *out);
/* Parses --bwlimit's RATE into bytes per second (0: no limit), as rsync
 * does: KiB/s without a suffix. Returns 0, or -1 for a bad value. */
int cli_parse_rate(const char *text, uint64_t *out);

/* ---- the subcommands ------------------------------------------------------- */

int cli_push(const cli_options *opt, int argc, char **argv);
int cli_pull(const cli_options *opt, int argc, char **argv);
int cli_ls(const cli_options *opt, int argc, char **argv);
int cli_verify(const cli_options *opt, int argc, char **argv);
int cli_bench(const cli_options *opt, int argc, char **argv);
int cli_delete(const cli_options *opt, int argc, char **argv);
int cli_prune(const cli_options *opt, int argc, char **argv);

/* Opens a path below the directory root: never through a symbolic link,
 * never outside root (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, or a
 * component-by-component walk with O_NOFOLLOW on kernels without it). */
int cli_open_beneath(int root, const char *path, int flags);

/* Prints a PROBLEM the server reported, on stderr, with its bytes escaped
 * as paths are: a server's text never reaches the terminal raw. */
void cli_server_problem(const hsp_record *rec);

#endif
