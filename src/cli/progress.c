/*
 * progress.c - the status line of push, pull and verify (progress.h).
 */
#include "cli/progress.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli/client.h"

/* The longest path a line shows, escaped (4 bytes per byte at worst). */
#define PATH_TEXT_MAX (4 * HSP_PATH_MAX + 1)
/* The longest line: the counts, and a path of PATH_TEXT_MAX. */
#define LINE_MAX_BYTES (PATH_TEXT_MAX + 512)

struct cli_progress {
    int mode;
    int fd;
    const char *label;
    int utf8;
    double start, last_draw;
    int drawn; /* a terminal line is on the screen */
    uint64_t bytes, files, problems;
    /* The totals, from whichever thread knows them. */
    _Atomic uint64_t bytes_total, files_total;
    _Atomic int total;
    cli_rate rate;
    char file[HSP_PATH_MAX];
    size_t file_len;
    char line[LINE_MAX_BYTES];
};

/* The line on the screen, for cli_progress_clear() from the warnings. */
static cli_progress *current;
/* Whether a terminal line may be on the screen, for other threads. */
static atomic_int drawn_any;

int cli_progress_mode(int option, int quiet, int json, int tty)
{
    if (option == CLI_PROGRESS_NEVER)
        return CLI_PROGRESS_OFF;
    if (option == CLI_PROGRESS_FORCE)
        return tty ? CLI_PROGRESS_TTY : CLI_PROGRESS_LINES;
    return tty && !quiet && !json ? CLI_PROGRESS_TTY : CLI_PROGRESS_OFF;
}

/* Whether the locale's characters are UTF-8, as the environment says
 * (haul does not call setlocale). */
static int locale_utf8(void)
{
    const char *names[] = {"LC_ALL", "LC_CTYPE", "LANG"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *v = getenv(names[i]);
        if (v && *v)
            return strcasestr(v, "utf-8") != NULL || strcasestr(v, "utf8") != NULL;
    }
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

cli_progress *cli_progress_new(int mode, int fd, const char *label)
{
    if (mode == CLI_PROGRESS_OFF)
        return NULL;
    cli_progress *pr = calloc(1, sizeof(*pr));
    if (pr == NULL)
        return NULL;
    pr->mode = mode;
    pr->fd = fd;
    pr->label = label;
    pr->utf8 = locale_utf8();
    pr->start = now();
    /* The first line waits a period: a run that ends at once prints none. */
    pr->last_draw = pr->start;
    atomic_init(&pr->bytes_total, 0);
    atomic_init(&pr->files_total, 0);
    atomic_init(&pr->total, CLI_TOTAL_NONE);
    current = pr;
    return pr;
}

cli_progress *cli_progress_open(const cli_options *opt, const char *label)
{
    int mode = cli_progress_mode(opt->progress, opt->quiet, opt->json, isatty(STDERR_FILENO));
    return cli_progress_new(mode, STDERR_FILENO, label);
}

/* Writes all of buf; a terminal that cannot take it loses the line only. */
static void put(cli_progress *pr, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(pr->fd, buf, len);
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

void cli_progress_clear(void)
{
    cli_progress *pr = current;
    if (pr == NULL || !pr->drawn)
        return;
    /* What stdio holds for stderr goes after the erase, not before. */
    fflush(stderr);
    put(pr, "\r\033[K", 4);
    pr->drawn = 0;
    atomic_store_explicit(&drawn_any, 0, memory_order_relaxed);
}

const char *cli_progress_erase(void)
{
    return atomic_load_explicit(&drawn_any, memory_order_relaxed) ? "\r\033[K" : "";
}

void cli_progress_free(cli_progress *pr)
{
    if (pr == NULL)
        return;
    cli_progress_clear();
    if (current == pr)
        current = NULL;
    free(pr);
}

void cli_progress_add(cli_progress *pr, uint64_t bytes, uint64_t files)
{
    if (pr == NULL)
        return;
    pr->bytes += bytes;
    pr->files += files;
}

void cli_progress_problem(cli_progress *pr)
{
    if (pr)
        pr->problems++;
}

void cli_progress_file(cli_progress *pr, const char *path, size_t len)
{
    if (pr == NULL)
        return;
    if (len > sizeof(pr->file))
        len = sizeof(pr->file);
    memcpy(pr->file, path, len);
    pr->file_len = len;
}

void cli_progress_total(cli_progress *pr, uint64_t bytes, uint64_t files, int state)
{
    if (pr == NULL)
        return;
    atomic_store_explicit(&pr->bytes_total, bytes, memory_order_relaxed);
    atomic_store_explicit(&pr->files_total, files, memory_order_relaxed);
    /* Release: whoever sees FINAL sees the counts stored before it. */
    atomic_store_explicit(&pr->total, state, memory_order_release);
}

/* The width of the terminal, less one column: a line that fills the last
 * column makes some terminals wrap. */
static unsigned terminal_width(int fd)
{
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return CLI_PROGRESS_DEFAULT_WIDTH;
}

static void view_of(cli_progress *pr, double t, int finished, int complete, cli_progress_view *v)
{
    memset(v, 0, sizeof(*v));
    v->label = pr->label;
    v->elapsed = t - pr->start;
    v->bytes = pr->bytes;
    v->files = pr->files;
    v->problems = pr->problems;
    v->total = atomic_load_explicit(&pr->total, memory_order_acquire);
    v->bytes_total = atomic_load_explicit(&pr->bytes_total, memory_order_relaxed);
    v->files_total = atomic_load_explicit(&pr->files_total, memory_order_relaxed);
    v->counting = pr->label == NULL;
    v->rate = cli_rate_get(&pr->rate);
    v->finished = finished;
    v->file = pr->file;
    v->file_len = pr->file_len;
    v->utf8 = pr->utf8;
    if (finished) {
        /* The last line: the average over the run, and no file. */
        v->rate = v->elapsed > 0 ? (double)v->bytes / v->elapsed : -1;
        v->file_len = 0;
        if (complete && v->counting) {
            /* Done is all there was: a total counted ahead of the run
             * (files that changed since) gives way to it. */
            v->total = CLI_TOTAL_FINAL;
            v->bytes_total = v->bytes;
            v->files_total = v->files;
        }
    }
}

static void draw(cli_progress *pr, double t, int finished, int complete)
{
    cli_progress_view v;
    view_of(pr, t, finished, complete, &v);
    if (pr->mode == CLI_PROGRESS_TTY) {
        pr->line[0] = '\r';
        size_t n =
            1 + cli_progress_format(&v, terminal_width(pr->fd), pr->line + 1, sizeof(pr->line) - 5);
        memcpy(pr->line + n, "\033[K", 3);
        put(pr, pr->line, n + 3);
        pr->drawn = 1;
        atomic_store_explicit(&drawn_any, 1, memory_order_relaxed);
    } else {
        size_t n = cli_progress_format(&v, 0, pr->line, sizeof(pr->line) - 1);
        pr->line[n++] = '\n';
        put(pr, pr->line, n);
    }
    pr->last_draw = t;
}

void cli_progress_tick(cli_progress *pr)
{
    if (pr == NULL)
        return;
    double t = now();
    cli_rate_add(&pr->rate, t, pr->bytes);
    double period =
        pr->mode == CLI_PROGRESS_TTY ? CLI_PROGRESS_TTY_PERIOD : CLI_PROGRESS_LINE_PERIOD;
    if (t - pr->last_draw >= period)
        draw(pr, t, 0, 0);
}

void cli_progress_finish(cli_progress *pr, int complete)
{
    if (pr == NULL)
        return;
    if (pr->mode == CLI_PROGRESS_TTY)
        cli_progress_clear();
    else if (complete)
        draw(pr, now(), 1, complete);
}

/* ---- formatting ---------------------------------------------------------------------- */

void cli_progress_bytes(uint64_t bytes, char *out, size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 6) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, size, "%llu B", (unsigned long long)bytes);
    else
        snprintf(out, size, "%.1f %s", v, units[u]);
}

void cli_progress_rate(double bytes_per_s, char *out, size_t size)
{
    if (!(bytes_per_s >= 0) || !isfinite(bytes_per_s) || bytes_per_s >= 1.8e19) {
        snprintf(out, size, "--");
        return;
    }
    /* The longest size is "1023.9 KiB": b leaves room for "/s" in any out of 32. */
    char b[16];
    cli_progress_bytes((uint64_t)bytes_per_s, b, sizeof(b));
    snprintf(out, size, "%s/s", b);
}

void cli_progress_time(double seconds, char *out, size_t size)
{
    if (!(seconds >= 0) || !isfinite(seconds) || seconds >= 1000.0 * 3600) {
        snprintf(out, size, "--:--");
        return;
    }
    unsigned long s = (unsigned long)seconds;
    if (s < 3600)
        snprintf(out, size, "%lu:%02lu", s / 60, s % 60);
    else
        snprintf(out, size, "%lu:%02lu:%02lu", s / 3600, s / 60 % 60, s % 60);
}

/* Columns of the escaped character at s: 1 for ASCII, 2 for any other
 * (wide or not: the line is never too long, at worst a little short). */
static unsigned char_columns(const char *s)
{
    return (unsigned char)*s < 0x80 ? 1 : 2;
}

/* Bytes of the character at s (the escaped text is valid UTF-8). */
static size_t char_bytes(const char *s, size_t left)
{
    size_t n = 1;
    while (n < left && ((unsigned char)s[n] & 0xc0) == 0x80)
        n++;
    return n;
}

unsigned cli_progress_shorten(const char *path, size_t len, unsigned columns, char *out,
                              size_t size)
{
    out[0] = '\0';
    if (columns < 8 || size < 16)
        return 0;
    char *text = malloc(4 * len + 1);
    if (text == NULL)
        return 0;
    size_t n = cli_escape_path(path, len, text);
    unsigned total = 0;
    for (size_t i = 0; i < n; i += char_bytes(text + i, n - i))
        total += char_columns(text + i);
    size_t o = 0;
    unsigned used = 0;
    if (total <= columns && n < size) {
        memcpy(out, text, n + 1);
        free(text);
        return total;
    }
    /* The start and the end of the path, the end a column longer when
     * the columns are odd: the file's name says more than its top
     * directories. */
    unsigned room = columns - 3;
    if (room > size - 4)
        room = (unsigned)(size - 4);
    unsigned head = room / 2, tail = room - head;
    size_t i = 0;
    while (i < n) {
        size_t k = char_bytes(text + i, n - i);
        unsigned w = char_columns(text + i);
        if (used + w > head)
            break;
        memcpy(out + o, text + i, k);
        o += k;
        used += w;
        i += k;
    }
    memcpy(out + o, "...", 3);
    o += 3;
    /* The tail: walk back from the end while it fits. */
    size_t from = n;
    unsigned tail_used = 0;
    while (from > i) {
        size_t start = from - 1;
        while (start > i && ((unsigned char)text[start] & 0xc0) == 0x80)
            start--;
        unsigned w = char_columns(text + start);
        if (tail_used + w > tail)
            break;
        tail_used += w;
        from = start;
    }
    memcpy(out + o, text + from, n - from);
    o += n - from;
    out[o] = '\0';
    free(text);
    return used + 3 + tail_used;
}

void cli_rate_add(cli_rate *r, double t, uint64_t bytes)
{
    if (r->count) {
        unsigned last = (r->head + r->count - 1) % CLI_PROGRESS_SAMPLES;
        if (t - r->t[last] < 0.1) {
            /* Too close to be a sample of its own: the newest wins, the
             * span stays the same. */
            if (r->count > 1) {
                r->t[last] = t;
                r->bytes[last] = bytes;
            }
            return;
        }
    }
    if (r->count == CLI_PROGRESS_SAMPLES) {
        r->head = (r->head + 1) % CLI_PROGRESS_SAMPLES;
        r->count--;
    }
    unsigned i = (r->head + r->count) % CLI_PROGRESS_SAMPLES;
    r->t[i] = t;
    r->bytes[i] = bytes;
    r->count++;
}

double cli_rate_get(const cli_rate *r)
{
    if (r->count < 2)
        return -1;
    unsigned last = (r->head + r->count - 1) % CLI_PROGRESS_SAMPLES;
    /* The oldest sample within the window. */
    unsigned k = 0;
    while (k < r->count - 1 &&
           r->t[last] - r->t[(r->head + k) % CLI_PROGRESS_SAMPLES] > CLI_PROGRESS_RATE_WINDOW)
        k++;
    unsigned first = (r->head + k) % CLI_PROGRESS_SAMPLES;
    double span = r->t[last] - r->t[first];
    if (span < CLI_PROGRESS_RATE_MIN_SPAN || r->bytes[last] < r->bytes[first])
        return -1;
    return (double)(r->bytes[last] - r->bytes[first]) / span;
}

/* Appends to a line being built, never past its end. */
typedef struct linebuf {
    char *buf;
    size_t len, size;
} linebuf;

static void add(linebuf *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(linebuf *l, const char *fmt, ...)
{
    if (l->len + 1 >= l->size)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->buf + l->len, l->size - l->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len = (size_t)n < l->size - l->len ? l->len + (size_t)n : l->size - 1;
}

/* Columns of a line of ASCII and ">=" signs (one column each, whatever
 * their bytes). */
static unsigned line_columns(const char *s, size_t len)
{
    unsigned c = 0;
    for (size_t i = 0; i < len; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

/* Cuts a line to `columns`, at a character's start. */
static size_t cut_columns(char *s, size_t len, unsigned columns)
{
    unsigned c = 0;
    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)s[i] & 0xc0) != 0x80 && c++ == columns) {
            s[i] = '\0';
            return i;
        }
    }
    return len;
}

size_t cli_progress_format(const cli_progress_view *v, unsigned width, char *out, size_t size)
{
    linebuf l = {out, 0, size};
    out[0] = '\0';
    if (size == 0)
        return 0;
    const char *ge = v->utf8 ? "\u2265" : ">=";
    char t[32], a[32], b[32];
    cli_progress_time(v->elapsed, t, sizeof(t));
    add(&l, "[%s]", t);
    if (v->label)
        add(&l, " %s", v->label);
    if (v->counting) {
        cli_progress_bytes(v->bytes, a, sizeof(a));
        add(&l, "%s%s", v->label ? ", " : " ", a);
        if (v->total != CLI_TOTAL_NONE) {
            cli_progress_bytes(v->bytes_total, b, sizeof(b));
            add(&l, " of %s%s", v->total == CLI_TOTAL_PARTIAL ? ge : "", b);
        }
        if (v->total == CLI_TOTAL_FINAL) {
            unsigned pct = 100;
            if (v->bytes < v->bytes_total) {
                pct = (unsigned)(100.0 * (double)v->bytes / (double)v->bytes_total);
                if (pct > 99)
                    pct = 99;
            }
            add(&l, " (%u%%)", pct);
        }
        add(&l, ", %llu", (unsigned long long)v->files);
        if (v->total != CLI_TOTAL_NONE)
            add(&l, "/%s%llu", v->total == CLI_TOTAL_PARTIAL ? ge : "",
                (unsigned long long)v->files_total);
        add(&l, " file%s", v->files == 1 && v->total == CLI_TOTAL_NONE ? "" : "s");
        cli_progress_rate(v->rate, a, sizeof(a));
        add(&l, ", %s", a);
    }
    if (!v->counting && v->total == CLI_TOTAL_FINAL) {
        /* What is being checked, when nothing of it can be counted. */
        cli_progress_bytes(v->bytes_total, a, sizeof(a));
        add(&l, ", %llu files, %s", (unsigned long long)v->files_total, a);
    }
    if (v->problems)
        add(&l, ", %llu problem%s", (unsigned long long)v->problems, v->problems == 1 ? "" : "s");
    if (v->finished) {
        add(&l, ", done");
    } else if (v->counting && v->total == CLI_TOTAL_FINAL) {
        double left = v->bytes >= v->bytes_total ? 0 : (double)(v->bytes_total - v->bytes);
        cli_progress_time(v->rate > 0                 ? left / v->rate
                          : v->rate == 0 && left == 0 ? 0
                                                      : -1,
                          a, sizeof(a));
        add(&l, ", ETA %s", a);
    }
    unsigned used = line_columns(out, l.len);
    if (width && used > width - 1)
        return cut_columns(out, l.len, width - 1);
    if (v->file_len) {
        unsigned room = width ? width - 1 - used : UINT32_MAX;
        char name[PATH_TEXT_MAX];
        /* ", " and at least a few characters of the name, or no name. */
        if (room > 2 && cli_progress_shorten(v->file, v->file_len, room - 2, name, sizeof(name)))
            add(&l, ", %s", name);
    }
    return l.len;
}
