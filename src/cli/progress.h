/*
 * progress.h - the status line of push, pull and verify: bytes and files
 * done of the total, the rate, the time left, the file at hand.
 *
 * On a terminal it is one line on stderr, redrawn in place at most
 * CLI_PROGRESS_TTY_PERIOD apart (a carriage return, the line, "erase to
 * the end of the line"), cut to the width of the terminal. Elsewhere
 * (--progress into a file or a pipe) it is a plain line per update at
 * most CLI_PROGRESS_LINE_PERIOD apart, for logs. Either way it ends with
 * cli_progress_finish(), before the summary is printed.
 *
 * The subcommand counts on the main thread (cli_progress_add and the
 * like); the totals may come from another thread (the scanner of a push,
 * scan.h). cli_pump() redraws (cli_progress_tick), so that the line moves
 * even while nothing arrives. Every function takes NULL as "no progress"
 * and does nothing then, so that the callers need no tests of their own.
 *
 * The formatting is a pure function of a view (cli_progress_format), for
 * the unit tests beside this file.
 */
#ifndef HAUL_CLI_PROGRESS_H
#define HAUL_CLI_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

/* Redraws on a terminal at most this often (seconds), lines elsewhere. */
#define CLI_PROGRESS_TTY_PERIOD 0.1
#define CLI_PROGRESS_LINE_PERIOD 1.0
/* The rate is the bytes done over the last this many seconds. */
#define CLI_PROGRESS_RATE_WINDOW 5.0
/* A rate needs samples at least this far apart before it is shown. */
#define CLI_PROGRESS_RATE_MIN_SPAN 0.5
/* Samples of the rate kept (one per tick at most every 0.1 s: enough for
 * the window). */
#define CLI_PROGRESS_SAMPLES 64
/* The width of the line when the terminal does not say. */
#define CLI_PROGRESS_DEFAULT_WIDTH 80

/* How the status line is shown. */
enum cli_progress_mode {
    CLI_PROGRESS_OFF = 0,
    CLI_PROGRESS_TTY = 1,   /* redrawn in place */
    CLI_PROGRESS_LINES = 2, /* a plain line per update */
};

/* What cli_options.progress holds. */
enum cli_progress_option {
    CLI_PROGRESS_AUTO = 0,   /* on when stderr is a terminal, unless -q or --json */
    CLI_PROGRESS_FORCE = 1,  /* --progress */
    CLI_PROGRESS_NEVER = -1, /* --no-progress */
};

/* How much of a total is known. */
enum cli_progress_total {
    CLI_TOTAL_NONE = 0,    /* nothing: no percent, no time left */
    CLI_TOTAL_PARTIAL = 1, /* a lower bound (the scan goes on): "of >=N" */
    CLI_TOTAL_FINAL = 2,   /* the total */
};

/* The mode for an option (enum cli_progress_option), -q, --json, and
 * whether stderr is a terminal. */
int cli_progress_mode(int option, int quiet, int json, int tty);

/* ---- the object ----------------------------------------------------------- */

typedef struct cli_progress cli_progress;
struct cli_options;

/* The status line the options ask for (cli_progress_mode with stderr),
 * or NULL. */
cli_progress *cli_progress_open(const struct cli_options *opt, const char *label);

/*
 * A status line on the descriptor fd (stderr) in `mode`; NULL for
 * CLI_PROGRESS_OFF, and when memory is short (no progress, nothing
 * else lost). `label` (static, may be NULL) starts the line: what is
 * being done when there is nothing to count ("checking on the server").
 * One at a time per process: cli_progress_clear() finds it.
 */
cli_progress *cli_progress_new(int mode, int fd, const char *label);

/* Clears the line (terminal) and frees it; no final line. */
void cli_progress_free(cli_progress *pr);

/* Main thread: bytes and files done since the last call. */
void cli_progress_add(cli_progress *pr, uint64_t bytes, uint64_t files);
/* Main thread: one more problem reported (shown once there is one). */
void cli_progress_problem(cli_progress *pr);
/* Main thread: the file at hand (copied; len 0: none). */
void cli_progress_file(cli_progress *pr, const char *path, size_t len);

/* Any thread: the totals known so far (enum cli_progress_total). */
void cli_progress_total(cli_progress *pr, uint64_t bytes, uint64_t files, int state);

/* Main thread: takes a sample of the rate and redraws when due. */
void cli_progress_tick(cli_progress *pr);

/*
 * Main thread: erases the line from the terminal before something else is
 * written to stderr or stdout (a warning, a problem); the next tick draws
 * it again. Does nothing without a terminal line drawn.
 */
void cli_progress_clear(void);

/*
 * Any thread: what to write before a line of stderr so that it does not
 * run into the status line: "\r\033[K" while a terminal line may be on
 * the screen, else "". For the engine's log, which comes from its
 * threads; the main thread's next redraw puts the line back.
 */
const char *cli_progress_erase(void);

/*
 * Main thread: the run is over. On a terminal the line is erased. In
 * lines mode, when the run is `complete`, a last line says "done" with
 * the totals taken as what was done (100%); a run that failed adds no
 * line (its error says why).
 */
void cli_progress_finish(cli_progress *pr, int complete);

/* ---- formatting (pure, for the tests) ----------------------------------------- */

/* "0 B", "1023 B", "1.0 KiB", "12.3 GiB" (binary multiples, as haul's
 * summaries). */
void cli_progress_bytes(uint64_t bytes, char *out, size_t size);
/* "12.3 MiB/s"; "--" for a rate that is not known (negative). */
void cli_progress_rate(double bytes_per_s, char *out, size_t size);
/* "0:07", "12:34", "1:02:03", "999:59:59"; "--:--" when not known
 * (negative, not finite, or beyond 1000 hours). */
void cli_progress_time(double seconds, char *out, size_t size);

/*
 * Writes path (len bytes, escaped as haul writes paths: non-printable
 * bytes as \xNN) into out, cut in the middle with "..." to at most
 * `columns` columns. Counts every character outside ASCII as two
 * columns, so that a wide one never breaks the line. Returns the columns
 * used; 0 (and "") when fewer than 8 columns are available.
 */
unsigned cli_progress_shorten(const char *path, size_t len, unsigned columns, char *out,
                              size_t size);

/* A rate over a sliding window. */
typedef struct cli_rate {
    double t[CLI_PROGRESS_SAMPLES];
    uint64_t bytes[CLI_PROGRESS_SAMPLES];
    unsigned head, count;
} cli_rate;

/* Adds a sample (seconds, bytes done so far); a sample closer than
 * 0.1 s to the last one replaces it. */
void cli_rate_add(cli_rate *r, double t, uint64_t bytes);
/* Bytes per second over the last CLI_PROGRESS_RATE_WINDOW seconds, or -1
 * when the samples span less than CLI_PROGRESS_RATE_MIN_SPAN. */
double cli_rate_get(const cli_rate *r);

/* What a line shows. */
typedef struct cli_progress_view {
    const char *label; /* NULL: none */
    double elapsed;
    uint64_t bytes, files, problems;
    uint64_t bytes_total, files_total;
    int total;    /* enum cli_progress_total */
    int counting; /* 0: nothing is counted (verify): the label and the time only */
    double rate;  /* bytes per second; negative: not known */
    int finished; /* the last line: "done" instead of the time left */
    const char *file;
    size_t file_len; /* 0: no file */
    int utf8;        /* ">=" may be written as U+2265 */
} cli_progress_view;

/*
 * The line for a view, at most `width` - 1 columns (0: no limit), NUL
 * terminated, into out: for example
 *
 *   [0:12] 1.2 GiB of 40.1 GiB (3%), 120/9312 files, 45.6 MiB/s, ETA 14:51, src/.../x.c
 *   [0:12] 1.2 GiB of >=4.1 GiB, 120/>=912 files, 45.6 MiB/s, src/main.c
 *   [0:03] 40.1 GiB of 40.1 GiB (100%), 9312/9312 files, 13.4 MiB/s, done
 *
 * Returns its length in bytes.
 */
size_t cli_progress_format(const cli_progress_view *v, unsigned width, char *out, size_t size);

#endif
