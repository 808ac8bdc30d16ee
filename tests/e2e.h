/*
 * e2e.h - helpers for tests that run the real programs: a hauld server on
 * loopback with a store of its own, haul commands with their output and
 * exit status, trees of files to push, and an entry-by-entry comparison of
 * two trees.
 *
 * Include it after harness.h from exactly one .c file: it uses CHECK, SKIP
 * and harness_log, and all of its state is file-local.
 *
 * The programs are found beside the test program: the test runs as
 * BUILD/tests/NAME, and hauld and haul are BUILD/hauld and BUILD/haul.
 * A test that needs them SKIPs when they have not been built.
 *
 * Every test works in a temporary directory of its own (e2e_setup), which
 * e2e_teardown removes. A test that fails ends with exit() (harness.h); an
 * atexit handler then kills the servers it left running, unmounts what it
 * mounted, prints the tail of the server's log, and removes the directory,
 * unless HAUL_E2E_KEEP=1 asks to keep it for a post mortem.
 *
 * Transport: hauld runs with --plaintext and every haul command with
 * --plaintext, unless the test sets env->tls (after e2e_setup with
 * E2E_NO_SERVER, before e2e_start_server): hauld then gets
 * --tls-cert/--tls-key/--tls-ca from env->tls_dir (TLS_DIR/server.crt,
 * server.key, ca.crt) and haul runs with HAUL_TLS_DIR=TLS_DIR, which
 * means TLS_DIR/ca.crt and TLS_DIR/PRINCIPAL.crt/.key. env->server_args
 * adds arguments of the test's own to hauld's command line.
 *
 * Environment:
 *   HAUL_E2E_KEEP=1        keep the temporary directories.
 *   HAUL_E2E_LOG=LEVEL     passed to hauld as --log-level.
 *   HAUL_E2E_VERBOSE=1     print every command and its output.
 */
#ifndef HAUL_TESTS_E2E_H
#define HAUL_TESTS_E2E_H

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define E2E_FN_ static __attribute__((unused))
#define E2E_MAX_ARGS 32
#define E2E_MIB (1024u * 1024u)

/* ------------------------------------------------------------------------ */
/* Small things                                                             */
/* ------------------------------------------------------------------------ */

E2E_FN_ double e2e_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

E2E_FN_ int e2e_env_flag(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

/* Formats a path into out (PATH_MAX bytes); a path too long fails the
 * test rather than being cut. */
E2E_FN_ __attribute__((format(printf, 2, 3))) char *e2e_pathf(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PATH_MAX, fmt, ap);
    va_end(ap);
    CHECK(n >= 0 && n < PATH_MAX);
    return out;
}

/* Joins a directory and a relative path into out (PATH_MAX bytes). */
E2E_FN_ char *e2e_join(char *out, const char *dir, const char *rel)
{
    return e2e_pathf(out, "%s/%s", dir, rel);
}

/* dir/rel in one of 8 buffers used in turn: for the arguments of one
 * call, not to keep. */
E2E_FN_ const char *e2e_at(const char *dir, const char *rel)
{
    static char bufs[8][PATH_MAX];
    static int next;
    return e2e_join(bufs[next++ % 8], dir, rel);
}

/* Renders bytes for a log line: printable ASCII as is, the rest as \xNN. */
E2E_FN_ const char *e2e_printable(const char *s, char *out, size_t size)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 5 < size; p++) {
        if (*p >= 0x20 && *p < 0x7f && *p != '\\')
            out[o++] = (char)*p;
        else
            o += (size_t)snprintf(out + o, size - o, "\\x%02x", *p);
    }
    out[o] = '\0';
    return out;
}

/*
 * Waits until cond holds, checking it every 2 ms for up to ms
 * milliseconds; sets ok to 1 when it held. It waits on a condition that
 * the test cannot be told about otherwise (a file in the server's store
 * growing), never for time itself to pass.
 */
#define E2E_WAIT_UNTIL(ok, cond, ms)                                                               \
    do {                                                                                           \
        const double e2e_deadline_ = e2e_now() + (ms) / 1000.0;                                    \
        for (;;) {                                                                                 \
            if (cond) {                                                                            \
                (ok) = 1;                                                                          \
                break;                                                                             \
            }                                                                                      \
            if (e2e_now() > e2e_deadline_) {                                                       \
                (ok) = 0;                                                                          \
                break;                                                                             \
            }                                                                                      \
            poll(NULL, 0, 2);                                                                      \
        }                                                                                          \
    } while (0)

/* Reads a whole file into a NUL-terminated heap string ("" when absent). */
E2E_FN_ char *e2e_slurp(const char *path)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    CHECK(buf != NULL);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        for (;;) {
            if (len + 1 >= cap) {
                cap *= 2;
                buf = realloc(buf, cap);
                CHECK(buf != NULL);
            }
            ssize_t n = read(fd, buf + len, cap - len - 1);
            if (n <= 0)
                break;
            len += (size_t)n;
        }
        close(fd);
    }
    buf[len] = '\0';
    return buf;
}

/* Case-insensitive substring test. */
E2E_FN_ int e2e_contains(const char *haystack, const char *needle)
{
    return haystack != NULL && strcasestr(haystack, needle) != NULL;
}

/*
 * Finds "key": in a JSON object and reads the number after it. Enough for
 * the one flat object that `haul push --json` prints.
 */
E2E_FN_ int e2e_json_u64(const char *json, const char *key, uint64_t *out)
{
    char pattern[80];
    snprintf(pattern, sizeof(pattern), "\"%s\"", key);
    const char *p = json ? strstr(json, pattern) : NULL;
    if (p == NULL)
        return -1;
    p += strlen(pattern);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == ':')
        p++;
    char *end = NULL;
    double v = strtod(p, &end);
    if (end == p || v < 0)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

E2E_FN_ int e2e_json_str(const char *json, const char *key, char *out, size_t size)
{
    char pattern[80];
    snprintf(pattern, sizeof(pattern), "\"%s\"", key);
    const char *p = json ? strstr(json, pattern) : NULL;
    if (p == NULL)
        return -1;
    p += strlen(pattern);
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == ':')
        p++;
    if (*p != '"')
        return -1;
    p++;
    size_t n = 0;
    while (p[n] && p[n] != '"')
        n++;
    if (p[n] != '"' || n == 0 || n >= size)
        return -1;
    memcpy(out, p, n);
    out[n] = '\0';
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Processes                                                                */
/* ------------------------------------------------------------------------ */

E2E_FN_ int e2e_pidfd_open(pid_t pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

/* Waits up to timeout seconds for pid to exit, without reaping it. */
E2E_FN_ int e2e_wait_exit(int pidfd, double timeout)
{
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    const double deadline = e2e_now() + timeout;
    for (;;) {
        double left = deadline - e2e_now();
        if (left < 0)
            left = 0;
        int n = poll(&p, 1, (int)(left * 1000.0) + 1);
        if (n > 0)
            return 1;
        if (n == 0 && e2e_now() >= deadline)
            return 0;
    }
}

/* What the child does between fork and exec: a clean signal state. */
E2E_FN_ void e2e_child_prepare(void)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < 32; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
}

/* A haul command, running or done. */
typedef struct e2e_proc {
    /* Set before starting it: run as the unprivileged user "nobody" (when
     * the test runs as root), so that file permissions apply to it. */
    int as_nobody;

    pid_t pid;
    int pidfd;
    int done;
    int code;      /* exit status, or 128 + signal */
    int sig;       /* the signal that ended it, or 0 */
    int timed_out; /* it was killed at the end of its time */
    char out_path[PATH_MAX], err_path[PATH_MAX];
    char *out, *err; /* what it printed, once done */
    char line[1024]; /* the command line, for logs */
} e2e_proc;

/* ------------------------------------------------------------------------ */
/* The server                                                               */
/* ------------------------------------------------------------------------ */

typedef struct e2e_server {
    pid_t pid;
    int pidfd;
    int err_fd; /* read end of its stderr and stdout */
    int log_fd; /* where the drain thread copies them */
    pthread_t drain;
    int drain_started;
    char log_path[PATH_MAX];
    char address[160]; /* as it printed it, e.g. 127.0.0.1:40123 */
    int port;
    int running;
} e2e_server;

typedef struct e2e_env {
    char dir[PATH_MAX];   /* the test's temporary directory */
    char store[PATH_MAX]; /* dir/store, hauld's --store */
    char hauld[PATH_MAX], haul[PATH_MAX];
    char url[200]; /* haul://127.0.0.1:PORT */
    e2e_server server;
    int mounted; /* store is a tmpfs of the test's own */
    int runs;    /* commands run, to name their output files */
    int servers; /* servers started, to name their logs */
    int torn_down;
    /* Mutual TLS instead of --plaintext (see the top of the file). */
    int tls;
    char tls_dir[PATH_MAX];
    const char *server_args[16]; /* more hauld arguments, NULL-terminated */
} e2e_env;

/* The test's environment, for the atexit handler. */
static e2e_env *e2e_current_;

/* Copies the server's output to its log until the server closes it. */
static void *e2e_drain_(void *arg)
{
    e2e_server *s = arg;
    char buf[8192];
    const int echo = e2e_env_flag("HAUL_E2E_VERBOSE");
    for (;;) {
        ssize_t n = read(s->err_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (write(s->log_fd, buf, (size_t)n) < 0)
            break;
        if (echo && write(2, buf, (size_t)n) < 0)
            break;
    }
    return NULL;
}

/* Prints the last lines of the server's log, for a failed test. */
E2E_FN_ void e2e_server_log_tail(const e2e_server *s, int lines)
{
    if (s->log_path[0] == '\0')
        return;
    char *log = e2e_slurp(s->log_path);
    size_t len = strlen(log);
    const char *p = log + len;
    int seen = 0;
    while (p > log && seen <= lines) {
        p--;
        if (*p == '\n')
            seen++;
    }
    if (*p == '\n')
        p++;
    if (*p)
        fprintf(stderr, "  ---- hauld log (%s), last lines ----\n%s  ----\n", s->log_path, p);
    free(log);
}

/*
 * Starts hauld listening on `listen` (e.g. "127.0.0.1:0") with the env's
 * store, and waits up to 10 s for its "hauld: listening on ADDRESS" line.
 * Returns 0, or -1 when it exited or said nothing in time (its output is
 * in the log then).
 */
E2E_FN_ int e2e_server_start_at(e2e_env *env, e2e_server *s, const char *listen)
{
    memset(s, 0, sizeof(*s));
    int fds[2];
    CHECK(pipe2(fds, O_CLOEXEC) == 0);
    e2e_pathf(s->log_path, "%s/hauld-%d.log", env->dir, ++env->servers);
    s->log_fd = open(s->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(s->log_fd >= 0);

    const char *argv[40];
    char tls_cert[PATH_MAX], tls_key[PATH_MAX], tls_ca[PATH_MAX];
    int argc = 0;
    argv[argc++] = env->hauld;
    argv[argc++] = "--listen";
    argv[argc++] = listen;
    argv[argc++] = "--store";
    argv[argc++] = env->store;
    if (env->tls) {
        argv[argc++] = "--tls-cert";
        argv[argc++] = e2e_join(tls_cert, env->tls_dir, "server.crt");
        argv[argc++] = "--tls-key";
        argv[argc++] = e2e_join(tls_key, env->tls_dir, "server.key");
        argv[argc++] = "--tls-ca";
        argv[argc++] = e2e_join(tls_ca, env->tls_dir, "ca.crt");
    } else {
        argv[argc++] = "--plaintext";
    }
    for (int i = 0; i < 16 && env->server_args[i] != NULL; i++)
        argv[argc++] = env->server_args[i];
    if (getenv("HAUL_E2E_LOG") != NULL) {
        argv[argc++] = "--log-level";
        argv[argc++] = getenv("HAUL_E2E_LOG");
    }
    argv[argc] = NULL;

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        e2e_child_prepare();
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    s->pid = pid;
    s->err_fd = fds[0];
    s->pidfd = e2e_pidfd_open(pid);
    CHECK(s->pidfd >= 0);
    s->running = 1;

    /* Read what it prints until the line that says it is ready. */
    static const char ready[] = "hauld: listening on ";
    char text[16384];
    size_t len = 0;
    const double deadline = e2e_now() + 10.0;
    int found = 0;
    while (!found) {
        double left = deadline - e2e_now();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = s->err_fd, .events = POLLIN};
        int n = poll(&p, 1, (int)(left * 1000.0) + 1);
        if (n <= 0)
            continue;
        ssize_t got = read(s->err_fd, text + len, sizeof(text) - 1 - len);
        if (got <= 0)
            break; /* it exited */
        if (write(s->log_fd, text + len, (size_t)got) < 0) {
            /* The log is a convenience; a failed copy changes nothing. */
        }
        len += (size_t)got;
        text[len] = '\0';
        char *at = strstr(text, ready);
        char *eol = at ? strchr(at, '\n') : NULL;
        if (eol != NULL) {
            size_t alen = (size_t)(eol - (at + strlen(ready)));
            CHECK(alen < sizeof(s->address));
            memcpy(s->address, at + strlen(ready), alen);
            s->address[alen] = '\0';
            found = 1;
        } else if (len >= sizeof(text) - 1) {
            /* Keep the tail only: the ready line comes after the noise. */
            memmove(text, text + len / 2, len - len / 2 + 1);
            len -= len / 2;
        }
    }
    /* Whatever it prints from now on goes to the log. */
    CHECK(pthread_create(&s->drain, NULL, e2e_drain_, s) == 0);
    s->drain_started = 1;
    if (!found) {
        harness_log("hauld (%s) did not say it was listening within 10 s", listen);
        return -1;
    }
    if (strncmp(s->address, "unix:", 5) != 0) {
        const char *colon = strrchr(s->address, ':');
        CHECK(colon != NULL);
        s->port = atoi(colon + 1);
        CHECK(s->port > 0 && s->port < 65536);
    }
    if (e2e_env_flag("HAUL_E2E_VERBOSE"))
        harness_log("hauld %d listening on %s", (int)s->pid, s->address);
    return 0;
}

/* Reaps the server after it ended; returns its wait status. */
E2E_FN_ int e2e_server_reap_(e2e_server *s)
{
    int status = 0;
    CHECK(waitpid(s->pid, &status, 0) == s->pid);
    close(s->pidfd);
    s->running = 0;
    if (s->drain_started) {
        pthread_join(s->drain, NULL);
        s->drain_started = 0;
    }
    close(s->err_fd);
    close(s->log_fd);
    return status;
}

/* SIGTERM: the server drains and must exit 0 within 10 s. */
E2E_FN_ void e2e_server_stop(e2e_server *s)
{
    if (!s->running)
        return;
    CHECK(kill(s->pid, SIGTERM) == 0);
    int exited = e2e_wait_exit(s->pidfd, 10.0);
    if (!exited) {
        kill(s->pid, SIGKILL);
        e2e_server_reap_(s);
        e2e_server_log_tail(s, 30);
        CHECK(!"hauld did not exit within 10 s of SIGTERM");
    }
    int status = e2e_server_reap_(s);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        e2e_server_log_tail(s, 30);
        harness_log("hauld ended with %s %d after SIGTERM",
                    WIFEXITED(status) ? "exit status" : "signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    }
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
}

/* Is the server still running? */
E2E_FN_ int e2e_server_alive(const e2e_server *s)
{
    struct pollfd pf = {.fd = s->pidfd, .events = POLLIN};
    return s->running && poll(&pf, 1, 0) == 0;
}

/* kill -9: the server dies at once, with whatever it was doing. */
E2E_FN_ void e2e_server_kill(e2e_server *s)
{
    if (!s->running)
        return;
    CHECK(kill(s->pid, SIGKILL) == 0);
    int status = e2e_server_reap_(s);
    CHECK(WIFSIGNALED(status));
}

/* ------------------------------------------------------------------------ */
/* Removing a tree                                                          */
/* ------------------------------------------------------------------------ */

static int e2e_unlock_dir_(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    /* A directory that the test made read-only must be writable to be
     * emptied (root does not care; other users do). */
    if (flag == FTW_D && (st->st_mode & 0700) != 0700)
        chmod(path, st->st_mode | 0700);
    return 0;
}

static int e2e_remove_(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    if (flag == FTW_DP || flag == FTW_D)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

/* rm -rf path. */
E2E_FN_ void e2e_rm_rf(const char *path)
{
    nftw(path, e2e_unlock_dir_, 64, FTW_PHYS);
    nftw(path, e2e_remove_, 64, FTW_DEPTH | FTW_PHYS);
}

/* ------------------------------------------------------------------------ */
/* The environment of a test                                                */
/* ------------------------------------------------------------------------ */

/* After a failed CHECK: nothing the test started may outlive it. */
static void e2e_atexit_(void)
{
    e2e_env *env = e2e_current_;
    if (env == NULL || env->torn_down)
        return;
    env->torn_down = 1;
    if (env->server.running) {
        kill(env->server.pid, SIGKILL);
        waitpid(env->server.pid, NULL, 0);
        env->server.running = 0;
        if (env->server.drain_started)
            pthread_join(env->server.drain, NULL);
    }
    e2e_server_log_tail(&env->server, 40);
    if (env->mounted)
        umount2(env->store, MNT_DETACH);
    if (e2e_env_flag("HAUL_E2E_KEEP")) {
        fprintf(stderr, "  (kept %s)\n", env->dir);
        return;
    }
    e2e_rm_rf(env->dir);
}

/* Finds BUILD/NAME beside BUILD/tests/this-program. */
E2E_FN_ void e2e_find_program(char *out, const char *name)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    CHECK(n > 0);
    self[n] = '\0';
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(self, '/');
        CHECK(slash != NULL);
        *slash = '\0';
    }
    e2e_pathf(out, "%s/%s", self, name);
    if (access(out, X_OK) != 0)
        SKIP("%s is not built", out);
}

enum {
    E2E_NO_SERVER = 1, /* e2e_setup starts no server */
};

/*
 * Makes the test's temporary directory with an empty store in it, and
 * (unless E2E_NO_SERVER) starts hauld on 127.0.0.1:0.
 */
E2E_FN_ void e2e_setup(e2e_env *env, int flags)
{
    memset(env, 0, sizeof(*env));
    e2e_find_program(env->hauld, "hauld");
    e2e_find_program(env->haul, "haul");
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(env->dir, sizeof(env->dir), "%s/haul-e2e-XXXXXX", tmp);
    CHECK(mkdtemp(env->dir) != NULL);
    /* Searchable by all: a client may run as "nobody" (e2e_proc). */
    CHECK(chmod(env->dir, 0755) == 0);
    e2e_join(env->store, env->dir, "store");
    CHECK(mkdir(env->store, 0700) == 0);
    e2e_current_ = env;
    static int registered;
    if (!registered) {
        atexit(e2e_atexit_);
        registered = 1;
    }
    if (!(flags & E2E_NO_SERVER)) {
        CHECK(e2e_server_start_at(env, &env->server, "127.0.0.1:0") == 0);
        snprintf(env->url, sizeof(env->url), "haul://127.0.0.1:%d", env->server.port);
    }
}

/* Starts the env's server after E2E_NO_SERVER. */
E2E_FN_ void e2e_start_server(e2e_env *env)
{
    CHECK(e2e_server_start_at(env, &env->server, "127.0.0.1:0") == 0);
    snprintf(env->url, sizeof(env->url), "haul://127.0.0.1:%d", env->server.port);
}

/*
 * Mounts a tmpfs of `mib` MiB on the store; SKIPs when that is not
 * allowed here (not root, no CAP_SYS_ADMIN). The mount is made in a mount
 * namespace of the test's own, which the servers it starts share: if the
 * harness kills the test (a timeout), the mount goes with its processes
 * instead of staying behind.
 */
E2E_FN_ void e2e_mount_store(e2e_env *env, unsigned mib)
{
    char opts[64];
    snprintf(opts, sizeof(opts), "size=%um,mode=0700", mib);
    if (unshare(CLONE_NEWNS) != 0)
        SKIP("cannot make a mount namespace: %s", strerror(errno));
    CHECK(mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0);
    if (mount("tmpfs", env->store, "tmpfs", 0, opts) != 0)
        SKIP("cannot mount a tmpfs on the store: %s", strerror(errno));
    env->mounted = 1;
}

/* Stops the server (it must exit 0) and removes the directory. */
E2E_FN_ void e2e_teardown(e2e_env *env)
{
    e2e_server_stop(&env->server);
    if (env->mounted) {
        CHECK(umount2(env->store, MNT_DETACH) == 0);
        env->mounted = 0;
    }
    env->torn_down = 1;
    if (e2e_env_flag("HAUL_E2E_KEEP"))
        harness_log("kept %s", env->dir);
    else
        e2e_rm_rf(env->dir);
    e2e_current_ = NULL;
}

/* Waits up to timeout seconds for `text` in the server's log. */
E2E_FN_ int e2e_log_wait(e2e_env *env, const char *text, double timeout)
{
    const double deadline = e2e_now() + timeout;
    for (;;) {
        char *log = e2e_slurp(env->server.log_path);
        int found = e2e_contains(log, text);
        free(log);
        if (found)
            return 1;
        if (e2e_now() > deadline)
            return 0;
        /* The log is a file another thread appends to: nothing to wait
         * on but time. */
        usleep(2000);
    }
}

/* A URL on the env's server: haul://127.0.0.1:PORT/rest. */
E2E_FN_ const char *e2e_url(e2e_env *env, char *out, const char *rest)
{
    snprintf(out, 512, "%s/%s", env->url, rest);
    return out;
}

/* A path in the test's directory. */
E2E_FN_ const char *e2e_path(e2e_env *env, char *out, const char *rel)
{
    return e2e_join(out, env->dir, rel);
}

/* ------------------------------------------------------------------------ */
/* Running haul                                                             */
/* ------------------------------------------------------------------------ */

/*
 * Starts `haul ARGS...` (argv NULL-terminated, without the program) with
 * stdout and stderr going to files of the test's directory: a command that
 * prints a lot can never block on a pipe that nobody reads.
 */
E2E_FN_ void e2e_haul_startv(e2e_env *env, e2e_proc *p, const char *const *args)
{
    const char *argv[E2E_MAX_ARGS + 3];
    int argc = 0;
    argv[argc++] = env->haul;
    size_t o = (size_t)snprintf(p->line, sizeof(p->line), "haul");
    /* Plain TCP unless the test asked for TLS; `haul cert` opens no
     * connection and takes no transport options. */
    if (!env->tls && !(args[0] != NULL && strcmp(args[0], "cert") == 0)) {
        argv[argc++] = "--plaintext";
        o += (size_t)snprintf(p->line + o, sizeof(p->line) - o, " --plaintext");
    }
    for (int i = 0; args[i] != NULL; i++) {
        CHECK(argc < E2E_MAX_ARGS);
        argv[argc++] = args[i];
        char shown[256];
        if (o < sizeof(p->line))
            o += (size_t)snprintf(p->line + o, sizeof(p->line) - o, " %s",
                                  e2e_printable(args[i], shown, sizeof(shown)));
    }
    argv[argc] = NULL;
    const int run = ++env->runs;
    e2e_pathf(p->out_path, "%s/run-%d.out", env->dir, run);
    e2e_pathf(p->err_path, "%s/run-%d.err", env->dir, run);
    int out = open(p->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err = open(p->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0 || err < 0)
        harness_log("cannot open %s: %s", out < 0 ? p->out_path : p->err_path, strerror(errno));
    CHECK(out >= 0 && err >= 0);
    const int drop = p->as_nobody && geteuid() == 0;
    char home[PATH_MAX];
    e2e_join(home, env->dir, "home");
    mkdir(home, 0777);
    chmod(home, 0777);

    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        e2e_child_prepare();
        dup2(out, 1);
        dup2(err, 2);
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        /* Whatever the client keeps in its home stays in the test's dir. */
        setenv("HOME", home, 1);
        if (env->tls)
            setenv("HAUL_TLS_DIR", env->tls_dir, 1);
        if (drop && (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0))
            _exit(126);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(out);
    close(err);
    p->pid = pid;
    p->pidfd = e2e_pidfd_open(pid);
    CHECK(p->pidfd >= 0);
    p->done = 0;
    if (e2e_env_flag("HAUL_E2E_VERBOSE"))
        harness_log("$ %s", p->line);
}

/* Has the command exited (without reaping it)? */
E2E_FN_ int e2e_proc_exited(e2e_proc *p)
{
    struct pollfd pf = {.fd = p->pidfd, .events = POLLIN};
    return p->done || poll(&pf, 1, 0) > 0;
}

/*
 * Waits up to timeout seconds for the command; kills it then. A server
 * that dies meanwhile fails the test at once, with its log, rather than
 * leaving the command to wait out its own timeout.
 */
E2E_FN_ void e2e_proc_wait(e2e_proc *p, double timeout)
{
    if (p->done)
        return;
    const e2e_server *srv =
        e2e_current_ != NULL && e2e_current_->server.running ? &e2e_current_->server : NULL;
    struct pollfd pf[2] = {{.fd = p->pidfd, .events = POLLIN},
                           {.fd = srv ? srv->pidfd : -1, .events = POLLIN}};
    const double deadline = e2e_now() + timeout;
    int server_died = 0;
    for (;;) {
        double left = deadline - e2e_now();
        if (left <= 0) {
            kill(p->pid, SIGKILL);
            p->timed_out = 1;
            break;
        }
        if (poll(pf, 2, (int)(left * 1000.0) + 1) <= 0)
            continue;
        if (pf[0].revents & POLLIN)
            break;
        if (pf[1].revents & POLLIN) {
            server_died = 1;
            kill(p->pid, SIGKILL);
            break;
        }
    }
    if (server_died) {
        waitpid(p->pid, NULL, 0);
        close(p->pidfd);
        p->done = 1;
        p->err = e2e_slurp(p->err_path);
        harness_log("hauld died while `%s` ran; its stderr:\n%s", p->line, p->err);
        CHECK(!"hauld died");
    }
    int status = 0;
    CHECK(waitpid(p->pid, &status, 0) == p->pid);
    close(p->pidfd);
    p->done = 1;
    p->sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    p->code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + p->sig;
    p->out = e2e_slurp(p->out_path);
    p->err = e2e_slurp(p->err_path);
    if (p->timed_out)
        harness_log("`%s` did not finish within %.0f s: killed", p->line, timeout);
    if (e2e_env_flag("HAUL_E2E_VERBOSE"))
        harness_log("exit %d\n--- stdout\n%s--- stderr\n%s---", p->code, p->out, p->err);
}

/* Prints what a command did, for a failed check. */
E2E_FN_ void e2e_proc_show(const e2e_proc *p)
{
    harness_log("`%s` exited %d%s\n--- stdout\n%s--- stderr\n%s---", p->line, p->code,
                p->timed_out ? " (timed out)" : "", p->out ? p->out : "", p->err ? p->err : "");
}

E2E_FN_ void e2e_proc_free(e2e_proc *p)
{
    free(p->out);
    free(p->err);
    p->out = p->err = NULL;
}

/* Runs `haul ARGS... NULL` to the end (at most timeout seconds). */
#define e2e_haul(env, p, timeout, ...)                                                             \
    do {                                                                                           \
        const char *const e2e_args_[] = {__VA_ARGS__, NULL};                                       \
        e2e_haul_startv((env), (p), e2e_args_);                                                    \
        e2e_proc_wait((p), (timeout));                                                             \
    } while (0)

#define e2e_haul_start(env, p, ...)                                                                \
    do {                                                                                           \
        const char *const e2e_args_[] = {__VA_ARGS__, NULL};                                       \
        e2e_haul_startv((env), (p), e2e_args_);                                                    \
    } while (0)

/* Fails the test, showing the command's output, unless it exited `code`. */
#define CHECK_EXIT(p, expected)                                                                    \
    do {                                                                                           \
        if ((p)->code != (expected))                                                               \
            e2e_proc_show(p);                                                                      \
        CHECK_EQ((p)->code, (expected));                                                           \
    } while (0)

/* Runs `haul cert ARGS...`, which must succeed. */
#define e2e_cert(env, ...)                                                                         \
    do {                                                                                           \
        e2e_proc cp_ = {0};                                                                        \
        e2e_haul((env), &cp_, 30, "cert", __VA_ARGS__);                                            \
        CHECK_EXIT(&cp_, 0);                                                                       \
        e2e_proc_free(&cp_);                                                                       \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Making trees                                                             */
/* ------------------------------------------------------------------------ */

/* The content of generated files: a function of (seed, offset). */
E2E_FN_ void e2e_fill(void *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    uint8_t *p = buf;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)(x >> (8 * (i & 7)));
}

/* Writes `size` bytes of content `seed` at `offset` of an open file. */
E2E_FN_ void e2e_write_at(int fd, uint64_t offset, uint64_t size, uint64_t seed)
{
    static uint8_t *buf;
    if (buf == NULL) {
        buf = malloc(E2E_MIB);
        CHECK(buf != NULL);
    }
    for (uint64_t done = 0; done < size;) {
        size_t n = size - done > E2E_MIB ? E2E_MIB : (size_t)(size - done);
        e2e_fill(buf, n, seed * 1000003u + (offset + done) / E2E_MIB);
        CHECK(pwrite(fd, buf, n, (off_t)(offset + done)) == (ssize_t)n);
        done += n;
    }
}

/* A regular file of `size` bytes of content `seed`. */
E2E_FN_ void e2e_file(const char *path, uint64_t size, uint64_t seed, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        harness_log("open %s: %s", path, strerror(errno));
    CHECK(fd >= 0);
    e2e_write_at(fd, 0, size, seed);
    CHECK(fchmod(fd, mode) == 0);
    CHECK(close(fd) == 0);
}

/* A file of apparent size `size` with data only at the given extents
 * (offset, length pairs): the rest are holes. */
E2E_FN_ void e2e_sparse_file(const char *path, uint64_t size, const uint64_t *extents, int n,
                             uint64_t seed)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    CHECK(ftruncate(fd, (off_t)size) == 0);
    for (int i = 0; i < n; i++)
        e2e_write_at(fd, extents[2 * i], extents[2 * i + 1], seed + (uint64_t)i);
    CHECK(close(fd) == 0);
}

E2E_FN_ void e2e_mkdir(const char *path)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        harness_log("mkdir %s: %s", path, strerror(errno));
        CHECK(!"mkdir failed");
    }
}

/* Sets an entry's mtime (of the link itself for a symlink). */
E2E_FN_ void e2e_set_mtime(const char *path, int64_t sec, long nsec)
{
    struct timespec ts[2] = {{.tv_sec = 1400000000, .tv_nsec = 0},
                             {.tv_sec = (time_t)sec, .tv_nsec = nsec}};
    CHECK(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) == 0);
}

/* A hash of a path, to give every entry a distinct, reproducible mtime. */
E2E_FN_ uint64_t e2e_path_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static size_t e2e_stamp_root_len_;

static int e2e_stamp_(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    /* Post-order: a directory's mtime is set after everything in it was
     * made, so nothing the generator does later moves it. */
    const char *rel = path + e2e_stamp_root_len_;
    uint64_t h = e2e_path_hash(rel);
    e2e_set_mtime(path, 1500000000 + (int64_t)(h % 200000000u), (long)((h >> 32) % 1000000000u));
    return 0;
}

/*
 * Gives every entry below root (root too) an mtime of its own with
 * nanoseconds, derived from its path: two trees generated alike get the
 * same times. Call it last, after every entry was made.
 */
E2E_FN_ void e2e_stamp_tree(const char *root)
{
    e2e_stamp_root_len_ = strlen(root);
    CHECK(nftw(root, e2e_stamp_, 64, FTW_DEPTH | FTW_PHYS) == 0);
}

/* ------------------------------------------------------------------------ */
/* Comparing trees                                                          */
/* ------------------------------------------------------------------------ */

typedef struct e2e_entry {
    char *path; /* relative to the root */
    struct stat st;
    char *target; /* symlinks */
} e2e_entry;

typedef struct e2e_tree {
    e2e_entry *v;
    size_t n, cap;
} e2e_tree;

E2E_FN_ void e2e_tree_walk_(e2e_tree *t, const char *root, const char *rel)
{
    char dirpath[PATH_MAX];
    if (rel[0])
        e2e_join(dirpath, root, rel);
    else
        e2e_pathf(dirpath, "%s", root);
    DIR *d = opendir(dirpath);
    if (d == NULL)
        harness_log("opendir %s: %s", dirpath, strerror(errno));
    CHECK(d != NULL);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char relpath[PATH_MAX];
        if (rel[0])
            e2e_join(relpath, rel, de->d_name);
        else
            e2e_pathf(relpath, "%s", de->d_name);
        if (t->n == t->cap) {
            t->cap = t->cap ? 2 * t->cap : 64;
            t->v = realloc(t->v, t->cap * sizeof(*t->v));
            CHECK(t->v != NULL);
        }
        e2e_entry *e = &t->v[t->n++];
        memset(e, 0, sizeof(*e));
        e->path = strdup(relpath);
        CHECK(fstatat(dirfd(d), de->d_name, &e->st, AT_SYMLINK_NOFOLLOW) == 0);
        if (S_ISLNK(e->st.st_mode)) {
            char target[PATH_MAX];
            ssize_t n = readlinkat(dirfd(d), de->d_name, target, sizeof(target) - 1);
            CHECK(n >= 0);
            target[n] = '\0';
            e->target = strdup(target);
        }
        if (S_ISDIR(e->st.st_mode))
            e2e_tree_walk_(t, root, relpath);
    }
    closedir(d);
}

static int e2e_entry_cmp_(const void *a, const void *b)
{
    return strcmp(((const e2e_entry *)a)->path, ((const e2e_entry *)b)->path);
}

/* Every entry below root, sorted by path (as bytes). */
E2E_FN_ void e2e_tree_load(e2e_tree *t, const char *root)
{
    memset(t, 0, sizeof(*t));
    e2e_tree_walk_(t, root, "");
    qsort(t->v, t->n, sizeof(*t->v), e2e_entry_cmp_);
}

E2E_FN_ void e2e_tree_free(e2e_tree *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->v[i].path);
        free(t->v[i].target);
    }
    free(t->v);
    memset(t, 0, sizeof(*t));
}

/* The first path of the tree with the same inode as entry i: the
 * "leader" of its hard-link group, or its own path. */
E2E_FN_ const char *e2e_link_leader_(const e2e_tree *t, size_t i)
{
    if (!S_ISREG(t->v[i].st.st_mode) || t->v[i].st.st_nlink < 2)
        return t->v[i].path;
    for (size_t k = 0; k < t->n; k++)
        if (t->v[k].st.st_ino == t->v[i].st.st_ino && t->v[k].st.st_dev == t->v[i].st.st_dev)
            return t->v[k].path;
    return t->v[i].path;
}

/* Do two files hold the same bytes? */
E2E_FN_ int e2e_same_content(const char *a, const char *b)
{
    int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
    int same = fa >= 0 && fb >= 0;
    static uint8_t *ba, *bb;
    if (ba == NULL) {
        ba = malloc(E2E_MIB);
        bb = malloc(E2E_MIB);
        CHECK(ba && bb);
    }
    while (same) {
        ssize_t na = read(fa, ba, E2E_MIB);
        ssize_t nb = na > 0 ? read(fb, bb, (size_t)na) : read(fb, bb, 1);
        if (na < 0 || nb < 0 || na != nb) {
            same = 0;
            break;
        }
        if (na == 0)
            break;
        /* A short read of b (possible for a pipe, not for a file) is not
         * expected here; it counts as a difference. */
        if (memcmp(ba, bb, (size_t)na) != 0)
            same = 0;
    }
    if (fa >= 0)
        close(fa);
    if (fb >= 0)
        close(fb);
    return same;
}

enum {
    E2E_CMP_NO_DIR_MTIME = 1, /* directories' mtimes may differ */
};

/*
 * Compares the tree under `actual` with the one under `expected`, entry by
 * entry: the same paths, and for each the type, permission bits (not of
 * symlinks), mtime to the nanosecond, content of files, targets of
 * symlinks, which paths are hard links of one another, and sparseness: a
 * file sparse in `expected` must not take much more room in `actual`.
 * The roots themselves are not compared. Logs each difference (up to 30)
 * and returns their number.
 */
E2E_FN_ int e2e_tree_diff(const char *expected, const char *actual, int flags)
{
    e2e_tree a, b;
    e2e_tree_load(&a, expected);
    e2e_tree_load(&b, actual);
    int diffs = 0;
    char shown[PATH_MAX * 2];
#define E2E_DIFF_(...)                                                                             \
    do {                                                                                           \
        if (diffs++ < 30)                                                                          \
            harness_log(__VA_ARGS__);                                                              \
    } while (0)
    size_t i = 0, k = 0;
    while (i < a.n || k < b.n) {
        int c = i == a.n ? 1 : k == b.n ? -1 : strcmp(a.v[i].path, b.v[k].path);
        if (c < 0) {
            E2E_DIFF_("missing: %s", e2e_printable(a.v[i].path, shown, sizeof(shown)));
            i++;
            continue;
        }
        if (c > 0) {
            E2E_DIFF_("unexpected: %s", e2e_printable(b.v[k].path, shown, sizeof(shown)));
            k++;
            continue;
        }
        const e2e_entry *x = &a.v[i], *y = &b.v[k];
        const char *name = e2e_printable(x->path, shown, sizeof(shown));
        if ((x->st.st_mode & S_IFMT) != (y->st.st_mode & S_IFMT)) {
            E2E_DIFF_("%s: type %o, expected %o", name, y->st.st_mode & S_IFMT,
                      x->st.st_mode & S_IFMT);
            i++, k++;
            continue;
        }
        if (!S_ISLNK(x->st.st_mode) && (x->st.st_mode & 07777) != (y->st.st_mode & 07777))
            E2E_DIFF_("%s: mode %04o, expected %04o", name, y->st.st_mode & 07777,
                      x->st.st_mode & 07777);
        if ((!S_ISDIR(x->st.st_mode) || !(flags & E2E_CMP_NO_DIR_MTIME)) &&
            (x->st.st_mtim.tv_sec != y->st.st_mtim.tv_sec ||
             x->st.st_mtim.tv_nsec != y->st.st_mtim.tv_nsec))
            E2E_DIFF_("%s: mtime %lld.%09ld, expected %lld.%09ld", name,
                      (long long)y->st.st_mtim.tv_sec, y->st.st_mtim.tv_nsec,
                      (long long)x->st.st_mtim.tv_sec, x->st.st_mtim.tv_nsec);
        if (S_ISLNK(x->st.st_mode) && strcmp(x->target, y->target) != 0) {
            char t1[PATH_MAX * 2], t2[PATH_MAX * 2];
            E2E_DIFF_("%s: symlink to \"%s\", expected \"%s\"", name,
                      e2e_printable(y->target, t1, sizeof(t1)),
                      e2e_printable(x->target, t2, sizeof(t2)));
        }
        if (S_ISREG(x->st.st_mode)) {
            char pa[PATH_MAX], pb[PATH_MAX];
            if (x->st.st_size != y->st.st_size)
                E2E_DIFF_("%s: size %lld, expected %lld", name, (long long)y->st.st_size,
                          (long long)x->st.st_size);
            else if (!e2e_same_content(e2e_join(pa, expected, x->path),
                                       e2e_join(pb, actual, y->path)))
                E2E_DIFF_("%s: content differs", name);
            const char *la = e2e_link_leader_(&a, i), *lb = e2e_link_leader_(&b, k);
            if (strcmp(la, lb) != 0) {
                char t1[PATH_MAX * 2], t2[PATH_MAX * 2];
                E2E_DIFF_("%s: hard link of \"%s\", expected of \"%s\"", name,
                          e2e_printable(lb, t1, sizeof(t1)), e2e_printable(la, t2, sizeof(t2)));
            }
            const long long used_a = (long long)x->st.st_blocks * 512;
            const long long used_b = (long long)y->st.st_blocks * 512;
            if (used_a + (long long)E2E_MIB < (long long)x->st.st_size &&
                used_b > 2 * used_a + (long long)E2E_MIB)
                E2E_DIFF_("%s: not sparse: %lld bytes allocated, expected about %lld", name, used_b,
                          used_a);
        }
        i++, k++;
    }
#undef E2E_DIFF_
    if (diffs > 30)
        harness_log("... and %d more differences", diffs - 30);
    e2e_tree_free(&a);
    e2e_tree_free(&b);
    return diffs;
}

/* ------------------------------------------------------------------------ */
/* Looking into the store                                                   */
/* ------------------------------------------------------------------------ */

/* Entries in a directory (without . and ..), or -1 when it is missing. */
E2E_FN_ int e2e_count_entries(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static uint64_t e2e_largest_;

static int e2e_largest_cb_(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    if (flag == FTW_F && S_ISREG(st->st_mode)) {
        /* What was written, not what was reserved: a file truncated or
         * allocated to its final size up front has not grown yet. */
        uint64_t used = (uint64_t)st->st_blocks * 512;
        uint64_t size = (uint64_t)st->st_size;
        uint64_t held = used < size ? used : size;
        if (held > e2e_largest_)
            e2e_largest_ = held;
    }
    return 0;
}

/* The most data any one regular file below dir holds (0 if none). */
E2E_FN_ uint64_t e2e_largest_file(const char *dir)
{
    e2e_largest_ = 0;
    nftw(dir, e2e_largest_cb_, 64, FTW_PHYS);
    return e2e_largest_;
}

/* Paths of the snapshots of a dataset of the default principal. */
E2E_FN_ const char *e2e_snapshots_dir(e2e_env *env, char *out, const char *dataset)
{
    e2e_pathf(out, "%s/default/%s/snapshots", env->store, dataset);
    return out;
}

/*
 * The number of snapshots of a dataset whose namespace is ns that look
 * complete (0 when none): entries of snapshots/ but those named *.tmp,
 * the name of a snapshot whose commit did not finish.
 */
E2E_FN_ int e2e_snapshot_count(e2e_env *env, const char *ns, const char *dataset)
{
    char dir[PATH_MAX];
    e2e_pathf(dir, "%s/%s/%s/snapshots", env->store, ns, dataset);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] != '.' && !(len > 4 && strcmp(de->d_name + len - 4, ".tmp") == 0))
            n++;
    }
    closedir(d);
    return n;
}

/*
 * The tree of a push long enough to be stopped in its middle: a file
 * "big" of big_size bytes (content from seed), twenty small files
 * d/e/s00..s19 of small + i * step bytes, and a hard link d/sNN.hl of
 * d/e/sNN for NN = linked. Returns the bytes of file content.
 */
E2E_FN_ uint64_t e2e_push_tree(const char *root, uint64_t big_size, uint64_t seed, uint64_t small,
                               uint64_t step, int linked)
{
    e2e_mkdir(root);
    e2e_file(e2e_at(root, "big"), big_size, seed, 0644);
    uint64_t total = big_size;
    e2e_mkdir(e2e_at(root, "d"));
    e2e_mkdir(e2e_at(root, "d/e"));
    for (int i = 0; i < 20; i++) {
        char name[32];
        snprintf(name, sizeof(name), "d/e/s%02d", i);
        e2e_file(e2e_at(root, name), small + (uint64_t)i * step, (uint64_t)i, 0644);
        total += small + (uint64_t)i * step;
    }
    char target[32], link_name[32];
    snprintf(target, sizeof(target), "d/e/s%02d", linked);
    snprintf(link_name, sizeof(link_name), "d/s%02d.hl", linked);
    CHECK(link(e2e_at(root, target), e2e_at(root, link_name)) == 0);
    e2e_stamp_tree(root);
    return total;
}

/*
 * Starts `haul [--principal P] push SRC URL/DATASET --json` (principal
 * NULL: the default one, whose namespace is ns) and returns once the
 * server has staged more than `bytes` of one file, the push still
 * running, so that the test can stop, kill or take it over.
 */
E2E_FN_ void e2e_push_until_staged(e2e_env *env, e2e_proc *p, const char *principal, const char *ns,
                                   const char *src, const char *dataset, uint64_t bytes)
{
    char url[512], staging[PATH_MAX];
    e2e_pathf(staging, "%s/%s/%s/.staging", env->store, ns, dataset);
    memset(p, 0, sizeof(*p));
    if (principal)
        e2e_haul_start(env, p, "--principal", principal, "push", src, e2e_url(env, url, dataset),
                       "--json");
    else
        e2e_haul_start(env, p, "push", src, e2e_url(env, url, dataset), "--json");
    int ok = 0;
    E2E_WAIT_UNTIL(ok, e2e_largest_file(staging) > bytes || e2e_proc_exited(p), 30000);
    if (e2e_proc_exited(p)) {
        e2e_proc_wait(p, 1);
        e2e_proc_show(p);
        CHECK(!"the push ended before the test could stop it");
    }
    CHECK(ok);
}

#endif /* HAUL_TESTS_E2E_H */
