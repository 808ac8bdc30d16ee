/*
 * progress_test.c - haul's status line, end to end: real pushes to a real
 * hauld through a slow link (the fault proxy of fault_proxy.h, on a thread
 * of the test, forwarding each connection's upload at a fixed rate), so
 * that the push lasts long enough for the line to be drawn several times.
 *
 * With --progress and stderr a file, haul prints plain lines, at most one
 * a second, each well formed, ending with one at 100%. Without it nothing
 * of the kind is printed. On a pseudo-terminal (forkpty) the line is on
 * by default, redrawn in place and cut to the terminal's width, and off
 * with -q, --json or --no-progress.
 */
#include <pty.h>
#include <sys/ioctl.h>
#include <termios.h>

#include "harness.h"
#include "e2e.h"
#include "fault_proxy.h"

/* Bytes per second the link carries each way: the tree takes a few
 * seconds at this rate. */
#define LINK_RATE (1024u * 1024u)

typedef struct slow_env {
    e2e_env env;
    fault_proxy *px;
    char url[256]; /* haul://PROXY/progress */
    char src[PATH_MAX];
    unsigned files;
} slow_env;

/* A server, a slow link to it, and a tree of `files` files of `size`
 * bytes each (and a directory, a symlink and a hard link, which are no
 * files to count). */
static void slow_setup(slow_env *s, unsigned files, uint64_t size)
{
    e2e_setup(&s->env, 0);
    fault_proxy_config pc;
    fault_proxy_config_init(&pc);
    pc.target = s->env.server.address;
    pc.rate_up = LINK_RATE;
    pc.rate_down = LINK_RATE;
    CHECK_OK(fault_proxy_start(&pc, &s->px));
    snprintf(s->url, sizeof(s->url), "haul://%s/progress", fault_proxy_address(s->px));
    e2e_path(&s->env, s->src, "src");
    e2e_mkdir(s->src);
    e2e_mkdir(e2e_at(s->src, "sub"));
    for (unsigned i = 0; i < files; i++) {
        char name[64];
        snprintf(name, sizeof(name), "%s/file-%02u", i % 2 ? "sub" : ".", i);
        e2e_file(e2e_at(s->src, name), size, i + 1, 0644);
    }
    CHECK(symlink("file-00", e2e_at(s->src, "link")) == 0);
    CHECK(link(e2e_at(s->src, "file-00"), e2e_at(s->src, "sub/hard")) == 0);
    s->files = files;
}

static void slow_teardown(slow_env *s)
{
    fault_proxy_stop(s->px);
    e2e_teardown(&s->env);
}

/* A line of the status: "[M:SS] DONE of TOTAL (P%), F/N files, RATE,
 * ETA M:SS, PATH" and its variants. Fills what it read; returns 0 when
 * the line has that shape, -1 (with a log) when not. */
typedef struct status_line {
    double bytes, total;
    int no_total; /* "DONE, F files": no total known */
    int partial;  /* the total is a lower bound */
    int percent;  /* -1: none */
    unsigned long files, files_total;
    int done; /* the last line */
} status_line;

static double size_of(const char *num, const char *unit)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = strtod(num, NULL);
    for (int i = 0; i < 5; i++) {
        if (strcmp(unit, units[i]) == 0)
            return v * (double)(1ull << (10 * i));
    }
    return -1;
}

static int parse_status(const char *line, status_line *st)
{
    memset(st, 0, sizeof(*st));
    st->percent = -1;
    unsigned m, sec;
    int n = 0;
    char num[32], unit[8], tnum[32], tunit[8];
    if (sscanf(line, "[%u:%2u] %31[0-9.] %7[A-Za-z]%n", &m, &sec, num, unit, &n) != 4 || n == 0)
        goto bad;
    const char *p = line + n;
    st->bytes = size_of(num, unit);
    if (st->bytes < 0)
        goto bad;
    if (strncmp(p, ", ", 2) == 0) {
        /* No total: "DONE, F file(s), RATE[, PATH]". */
        st->no_total = 1;
        n = 0;
        if (sscanf(p, ", %lu file%n", &st->files, &n) != 1 || n == 0)
            goto bad;
        p += n;
        if (*p == 's')
            p++;
        p += strncmp(p, ", ", 2) == 0 ? 2 : 0;
        goto rate;
    }
    if (strncmp(p, " of ", 4) != 0)
        goto bad;
    p += 4;
    if (strncmp(p, ">=", 2) == 0 || strncmp(p, "\u2265", 3) == 0) {
        st->partial = 1;
        p += p[0] == '>' ? 2 : 3;
    }
    n = 0;
    if (sscanf(p, "%31[0-9.] %7[A-Za-z]%n", tnum, tunit, &n) != 2 || n == 0)
        goto bad;
    p += n;
    st->total = size_of(tnum, tunit);
    if (st->total < 0)
        goto bad;
    if (!st->partial) {
        n = 0;
        if (sscanf(p, " (%d%%)%n", &st->percent, &n) != 1 || n == 0 || st->percent < 0 ||
            st->percent > 100)
            goto bad;
        p += n;
    }
    n = 0;
    if (sscanf(p, ", %lu/%n", &st->files, &n) != 1 || n == 0)
        goto bad;
    p += n;
    if (strncmp(p, ">=", 2) == 0 || strncmp(p, "\u2265", 3) == 0)
        p += p[0] == '>' ? 2 : 3;
    n = 0;
    if (sscanf(p, "%lu files, %n", &st->files_total, &n) != 1 || n == 0)
        goto bad;
    p += n;
rate:
    /* The rate: "--" or "N UNIT/s". */
    if (strncmp(p, "--", 2) == 0) {
        p += 2;
    } else {
        n = 0;
        if (sscanf(p, "%31[0-9.] %7[A-Za-z]/s%n", num, unit, &n) != 2 || n == 0)
            goto bad;
        p += n;
    }
    if (strcmp(p, ", done") == 0) {
        st->done = 1;
        return 0;
    }
    if (strncmp(p, ", ETA ", 6) == 0) {
        p += 6;
        unsigned a, b;
        n = 0;
        if (strncmp(p, "--:--", 5) == 0)
            p += 5;
        else if (sscanf(p, "%u:%2u%n", &a, &b, &n) == 2 && n > 0)
            p += n;
        else
            goto bad;
        if (st->partial || st->no_total)
            goto bad; /* no time left without a total */
    }
    /* The file at hand, or nothing. */
    if (*p == '\0' || (strncmp(p, ", ", 2) == 0 && p[2] != '\0'))
        return 0;
bad:
    harness_log("not a status line: '%s'", line);
    return -1;
}

/* --progress into a file: plain lines, well formed, the numbers never
 * going back, at least two while the push ran and a last one at 100%. */
TEST_TIMEOUT(push_progress_lines_end_at_100_percent, 120)
{
    slow_env s;
    /* 3 MiB: about three seconds on the link. */
    slow_setup(&s, 12, 256 * 1024);
    e2e_proc p = {0};
    e2e_haul(&s.env, &p, 100, "push", "--progress", "-P", "1", s.src, s.url);
    CHECK_EXIT(&p, 0);
    CHECK(strchr(p.err, '\r') == NULL);
    CHECK(strstr(p.err, "\033[") == NULL);
    /* stdout holds the summary only. */
    CHECK(strstr(p.out, "[0:") == NULL);
    CHECK(strstr(p.out, "snapshot ") != NULL);

    const double tree_bytes = 12.0 * 256 * 1024;
    unsigned lines = 0, updates = 0, partway = 0;
    status_line last = {0}, st;
    char *save = NULL;
    for (char *line = strtok_r(p.err, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (parse_status(line, &st) != 0) {
            e2e_proc_show(&p);
            CHECK(!"a line of stderr is not a status line");
        }
        CHECK(!last.done);
        CHECK(!st.no_total);
        CHECK_GE(st.bytes, last.bytes);
        CHECK_GE(st.files, last.files);
        if (last.percent >= 0 && st.percent >= 0)
            CHECK_GE(st.percent, last.percent);
        /* A total once counted is the tree's, and what is done is within
         * it; a count still going is a lower bound of it. */
        CHECK_LE(st.total, tree_bytes);
        CHECK_LE(st.files_total, s.files);
        if (!st.partial) {
            CHECK_EQ(st.total, tree_bytes);
            CHECK_EQ(st.files_total, s.files);
            CHECK_LE(st.bytes, st.total);
            CHECK_LE(st.files, st.files_total);
        }
        if (!st.done && st.percent >= 0 && st.percent < 100)
            partway++;
        lines++;
        updates += !st.done;
        last = st;
    }
    harness_log("%u lines, %u of them while the push ran", lines, updates);
    CHECK_GE(updates, 2);
    CHECK_GE(partway, 1);
    CHECK(last.done);
    CHECK_EQ(last.percent, 100);
    CHECK_EQ(last.files, s.files);
    CHECK_EQ(last.files_total, s.files);
    CHECK_EQ(last.bytes, last.total);
    CHECK_EQ(last.bytes, tree_bytes);
    e2e_proc_free(&p);
    slow_teardown(&s);
}

/* Without --progress and without a terminal: nothing but the warnings. */
TEST_TIMEOUT(push_without_terminal_prints_no_progress, 120)
{
    slow_env s;
    slow_setup(&s, 8, 256 * 1024);
    e2e_proc p = {0};
    e2e_haul(&s.env, &p, 100, "push", "-P", "1", s.src, s.url);
    CHECK_EXIT(&p, 0);
    CHECK_STR_EQ(p.err, "");
    CHECK(strstr(p.out, "[0:") == NULL);
    e2e_proc_free(&p);
    /* --progress --no-progress: the last one wins. Another dataset, so
     * that this push too sends everything. */
    char url[300];
    snprintf(url, sizeof(url), "%s2", s.url);
    e2e_haul(&s.env, &p, 100, "push", "--progress", "--no-progress", "-P", "1", s.src, url);
    CHECK_EXIT(&p, 0);
    CHECK_STR_EQ(p.err, "");
    e2e_proc_free(&p);
    slow_teardown(&s);
}

/* Reads the status lines of stderr: each well formed, the numbers never
 * going back, the total the tree's once it shows (lines before it may
 * have none: the server's answer may come after the first line); counts
 * those before the last, and those with a total and a percent below 100.
 * Returns the last. */
static status_line check_lines(e2e_proc *p, double tree_bytes, unsigned files, unsigned *updates,
                               unsigned *partway)
{
    status_line last = {0}, st;
    *updates = *partway = 0;
    char *copy = strdup(p->err), *save = NULL;
    CHECK(copy != NULL);
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (parse_status(line, &st) != 0) {
            e2e_proc_show(p);
            CHECK(!"a line of stderr is not a status line");
        }
        CHECK(!last.done);
        CHECK_GE(st.bytes, last.bytes);
        CHECK_GE(st.files, last.files);
        CHECK(!st.partial);
        /* Once there, the total stays. */
        CHECK(!st.no_total || *updates == 0 || last.no_total);
        *updates += !st.done;
        if (st.no_total) {
            last = st;
            continue;
        }
        CHECK_EQ(st.total, tree_bytes);
        CHECK_EQ(st.files_total, files);
        CHECK_LE(st.bytes, st.total);
        CHECK_LE(st.files, st.files_total);
        *partway += !st.done && st.percent < 100;
        last = st;
    }
    free(copy);
    return last;
}

/* A pull of a whole snapshot: the total is the snapshot's, from the
 * dataset's list, from the first line on. */
TEST_TIMEOUT(pull_progress_counts_to_the_snapshot_total, 120)
{
    slow_env s;
    slow_setup(&s, 12, 256 * 1024);
    const double tree_bytes = 12.0 * 256 * 1024;
    char direct[512], dest[PATH_MAX];
    e2e_url(&s.env, direct, "progress");
    e2e_proc p = {0};
    e2e_haul(&s.env, &p, 60, "push", s.src, direct);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    e2e_path(&s.env, dest, "dest");
    e2e_haul(&s.env, &p, 100, "pull", "--progress", "-P", "1", s.url, dest);
    CHECK_EXIT(&p, 0);
    unsigned updates, partway;
    status_line last = check_lines(&p, tree_bytes, s.files, &updates, &partway);
    harness_log("%u lines while the pull ran, %u of them part of the way", updates, partway);
    CHECK_GE(updates, 2);
    CHECK_GE(partway, 1);
    CHECK(last.done);
    CHECK_EQ(last.percent, 100);
    CHECK_EQ(last.bytes, tree_bytes);
    e2e_proc_free(&p);
    /* verify says what it checks, from the same list. */
    e2e_haul(&s.env, &p, 60, "verify", "--progress", direct);
    CHECK_EXIT(&p, 0);
    CHECK(e2e_contains(p.err, "] checking on the server, 12 files, 3.0 MiB, done\n"));
    e2e_proc_free(&p);
    slow_teardown(&s);
}

/* The total of a push is counted with the push's own selection: what
 * --exclude leaves out is not in it. */
TEST_TIMEOUT(push_progress_total_leaves_out_what_is_excluded, 120)
{
    slow_env s;
    slow_setup(&s, 12, 256 * 1024);
    e2e_proc p = {0};
    /* file-10 and sub/file-11: ten files are left, the hard link to
     * file-00 among them once. */
    e2e_haul(&s.env, &p, 100, "push", "--progress", "--exclude", "file-1?", "-P", "1", s.src,
             s.url);
    CHECK_EXIT(&p, 0);
    unsigned updates, partway;
    status_line last = check_lines(&p, 10.0 * 256 * 1024, 10, &updates, &partway);
    CHECK_GE(updates, 1);
    CHECK(last.done);
    CHECK_EQ(last.percent, 100);
    e2e_proc_free(&p);
    slow_teardown(&s);
}

/* ---- on a terminal -------------------------------------------------------------- */

#define PTY_COLUMNS 60

/* Runs `haul --plaintext ARGS` with stderr on a pseudo-terminal of
 * PTY_COLUMNS columns and stdout in a file; returns what the terminal
 * received (heap) and sets *code to the exit status. */
static char *haul_on_pty(slow_env *s, const char *const *args, int *code)
{
    struct winsize ws = {.ws_row = 24, .ws_col = PTY_COLUMNS};
    char out_path[PATH_MAX];
    e2e_pathf(out_path, "%s/pty-%d.out", s->env.dir, ++s->env.runs);
    int master = -1;
    pid_t pid = forkpty(&master, NULL, NULL, &ws);
    if (pid < 0)
        SKIP("no pseudo-terminal: %s", strerror(errno));
    if (pid == 0) {
        const char *argv[E2E_MAX_ARGS + 3];
        int argc = 0;
        argv[argc++] = s->env.haul;
        argv[argc++] = "--plaintext";
        for (int i = 0; args[i]; i++)
            argv[argc++] = args[i];
        argv[argc] = NULL;
        int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || dup2(out, 1) < 0)
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    CHECK(buf != NULL);
    for (;;) {
        if (len + 4096 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            CHECK(buf != NULL);
        }
        struct pollfd pf = {.fd = master, .events = POLLIN};
        CHECK(poll(&pf, 1, 100000) == 1);
        ssize_t n = read(master, buf + len, cap - len - 1);
        /* EIO: every descriptor of the terminal's other side is closed. */
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(master);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    *code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    return buf;
}

/* The default on a terminal: the line is drawn in place ("\r", the line,
 * "erase to the end"), never wider than the terminal, and erased at the
 * end; nothing else goes to stderr. */
TEST_TIMEOUT(terminal_gets_a_line_redrawn_in_place, 120)
{
    slow_env s;
    slow_setup(&s, 6, 256 * 1024);
    const char *const args[] = {"push", "-P", "1", s.src, s.url, NULL};
    int code;
    char *tty = haul_on_pty(&s, args, &code);
    if (code != 0)
        harness_log("terminal: %s", tty);
    CHECK_EQ(code, 0);
    unsigned draws = 0;
    for (char *p = tty; (p = strchr(p, '\r')) != NULL; p++) {
        char *end = strstr(p, "\033[K");
        CHECK(end != NULL);
        size_t len = (size_t)(end - p - 1);
        if (len == 0)
            continue; /* the erase at the end */
        unsigned cols = 0;
        for (char *c = p + 1; c < end; c++)
            cols += ((unsigned char)*c & 0xc0) != 0x80;
        CHECK_LE(cols, PTY_COLUMNS - 1);
        CHECK(strncmp(p + 1, "[0:", 3) == 0);
        CHECK(memchr(p + 1, '\n', len) == NULL);
        draws++;
    }
    harness_log("%u draws", draws);
    CHECK_GE(draws, 2);
    /* The last thing on the terminal is the erase. */
    size_t n = strlen(tty);
    CHECK(n >= 4 && strcmp(tty + n - 4, "\r\033[K") == 0);
    free(tty);
    slow_teardown(&s);
}

/* -q, --json and --no-progress keep the terminal quiet. */
TEST_TIMEOUT(terminal_stays_quiet_with_q_json_or_no_progress, 120)
{
    slow_env s;
    slow_setup(&s, 4, 256 * 1024);
    const char *const quiet[] = {"push", "-q", "-P", "1", s.src, s.url, NULL};
    const char *const json[] = {"push", "--json", "-P", "1", s.src, s.url, NULL};
    const char *const off[] = {"push", "--no-progress", "-P", "1", s.src, s.url, NULL};
    const char *const *runs[] = {quiet, json, off};
    for (int i = 0; i < 3; i++) {
        /* A new dataset each time, so that every push sends it all. */
        char url[300];
        snprintf(url, sizeof(url), "%s%d", s.url, i);
        const char *args[8];
        memcpy(args, runs[i], sizeof(args[0]) * 7);
        args[5] = url;
        int code;
        char *tty = haul_on_pty(&s, args, &code);
        CHECK_EQ(code, 0);
        if (tty[0])
            harness_log("%s: the terminal got '%s'", runs[i][1], tty);
        CHECK_STR_EQ(tty, "");
        free(tty);
    }
    slow_teardown(&s);
}
