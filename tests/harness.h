/*
 * harness.h - haul's test harness: one header, written for this project,
 * that needs nothing beyond libc and Linux.
 *
 * A test program includes this header from exactly one .c file (all of its
 * state is file-local) and defines its tests with TEST() or TEST_TIMEOUT():
 *
 *     #include "harness.h"
 *
 *     TEST(message_roundtrip)
 *     {
 *         CHECK_OK(haul_send(session, "hello", 5, 1));
 *         CHECK_EQ(haul_message_len(msg), 5);
 *     }
 *
 *     TEST_TIMEOUT(many_connections, 300)
 *     {
 *         if (!have_ipv6())
 *             SKIP("no IPv6 on this machine");
 *         harness_log("pipe of %d connections", n);
 *     }
 *
 * The header defines main() unless HARNESS_NO_MAIN is defined before it is
 * included; a program with a main() of its own calls harness_main(argc,
 * argv) from it and returns what that returns.
 *
 * How tests run. Tests run one after another in the order of their
 * definitions in the file. Each runs in a child process of its own (fork)
 * that leads a process group of its own, so a test may crash, leak or hang
 * without harming the others. The parent waits for the child on a pidfd
 * with poll(), under the test's timeout: its own (TEST_TIMEOUT, seconds,
 * fractions allowed, 0 for none) or else the default of 60 s, which the
 * environment variable HAUL_TEST_TIMEOUT (seconds, 0 for none) replaces.
 * When a test ends, however it ends, the whole process group is killed with
 * SIGKILL, so processes that a test started and forgot do not outlive it.
 *
 * A CHECK that fails prints "file:line: CHECK failed: <expression> (...)"
 * on stderr and ends the test at once (the child exits with status 1).
 * CHECKs may be used from any thread of the test. SKIP ends the test as
 * skipped with a reason (the child exits with status 77). A test passes
 * when its function returns; a child that exits with status 0 before the
 * function returned (say, a stray exit(0) in the code under test) fails.
 *
 * Output, on stdout, one line per test and then a summary as the last line:
 *
 *     PASS name (0.12 s)
 *     FAIL name (0.01 s)                       a CHECK failed, see stderr
 *     FAIL name (1.00 s): timed out after 1 s
 *     FAIL name (0.00 s): killed by signal 11 (Segmentation fault)
 *     SKIP name: reason
 *     3 passed, 2 failed, 1 skipped
 *
 * The exit status is 0 when no test failed, 1 when one did, and 2 for a bad
 * command line or environment.
 *
 * Command line: each argument selects tests, by exact name if a test has
 * that name and otherwise every test whose name contains it; no argument
 * selects all. "--list" prints the names of the selected tests instead of
 * running them.
 *
 * Environment:
 *   HAUL_TEST_TIMEOUT=S   default timeout in seconds (0: none).
 *   HAUL_TEST_NOFORK=1    run the tests inside the harness process, without
 *                         timeouts, and stop at the first failure: for gdb
 *                         ("break harness_failed_" stops at a failed CHECK).
 *                         In this mode CHECK and SKIP must be called from
 *                         the test's own thread.
 *   HAUL_TEST_NO_PIDFD=1  wait with sigtimedwait() as on kernels without
 *                         pidfd_open(); it exists to test that fallback.
 *
 * CHECK_OK(expr) expects expr to be 0. When it is not, the value is printed,
 * and so is its text if the program has set the hook harness_strerror, e.g.
 * "harness_strerror = haul_strerror;" at the start of a test.
 */
#ifndef HAUL_TESTS_HARNESS_H
#define HAUL_TESTS_HARNESS_H

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* The interface                                                            */
/* ------------------------------------------------------------------------ */

/*
 * Defines a test and registers it before main() runs (from a constructor).
 * The name must be an identifier and unique in the program.
 */
#define TEST(name) HARNESS_DEFINE_(name, -1.0)

/* As TEST(), with a timeout of its own in seconds (0: none). */
#define TEST_TIMEOUT(name, seconds) HARNESS_DEFINE_(name, (double)(seconds))

/* Fails the test unless cond is true. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            harness_failed_(__FILE__, __LINE__, "%s", #cond);                                      \
    } while (0)

/*
 * Integer comparisons. Each operand is evaluated once and compared by its
 * mathematical value: an unsigned operand (unsigned int, unsigned long or
 * unsigned long long, e.g. size_t and uint64_t) counts as unsigned long
 * long, anything else as long long, so CHECK_LT(-1, sizeof(x)) holds and
 * CHECK_GT(UINT64_MAX, 0) holds. Pointers compare by address. A failure
 * prints both values.
 */
#define CHECK_EQ(a, b) HARNESS_CMP_(a, ==, b)
#define CHECK_NE(a, b) HARNESS_CMP_(a, !=, b)
#define CHECK_LT(a, b) HARNESS_CMP_(a, <, b)
#define CHECK_LE(a, b) HARNESS_CMP_(a, <=, b)
#define CHECK_GT(a, b) HARNESS_CMP_(a, >, b)
#define CHECK_GE(a, b) HARNESS_CMP_(a, >=, b)

/* Fails unless the two strings are equal; two NULLs are equal. */
#define CHECK_STR_EQ(a, b)                                                                         \
    do {                                                                                           \
        const char *harness_sa_ = (a);                                                             \
        const char *harness_sb_ = (b);                                                             \
        if (!harness_str_eq_(harness_sa_, harness_sb_))                                            \
            harness_failed_(__FILE__, __LINE__, "%s == %s (%s%s%s vs %s%s%s)", #a, #b,             \
                            harness_sa_ ? "\"" : "", harness_sa_ ? harness_sa_ : "NULL",           \
                            harness_sa_ ? "\"" : "", harness_sb_ ? "\"" : "",                      \
                            harness_sb_ ? harness_sb_ : "NULL", harness_sb_ ? "\"" : "");          \
    } while (0)

/* Fails unless expr, an integer (usually an error code), is 0. */
#define CHECK_OK(expr)                                                                             \
    do {                                                                                           \
        const long long harness_r_ = (long long)(expr);                                            \
        if (harness_r_ != 0)                                                                       \
            harness_failed_(__FILE__, __LINE__, "%s == 0 (returned %lld%s%s)", #expr, harness_r_,  \
                            harness_strerror ? ": " : "",                                          \
                            harness_strerror ? harness_strerror((int)harness_r_) : "");            \
    } while (0)

/* Ends the test as skipped; the arguments, printf style, say why. */
#define SKIP(...) harness_skip_(__VA_ARGS__)

/*
 * Optional: turns a CHECK_OK value into text. NULL by default; a test sets
 * it, or another file of the program defines it (the definition here is
 * weak).
 */
__attribute__((weak)) const char *(*harness_strerror)(int code) = NULL;

/* Prints "  [test name] message" on stderr, printf style. */
static void harness_log(const char *fmt, ...) __attribute__((format(printf, 1, 2), unused));

/* Runs the tests that argv selects; see the top of this file. */
static int harness_main(int argc, char **argv) __attribute__((unused));

/* ------------------------------------------------------------------------ */
/* The implementation. Names ending in '_' are not for tests to use.        */
/* ------------------------------------------------------------------------ */

#define HARNESS_FN_ static __attribute__((unused))
#define HARNESS_MAX_TESTS_ 1024
#define HARNESS_DEFAULT_TIMEOUT_ 60.0
#define HARNESS_EXIT_FAIL_ 1
#define HARNESS_EXIT_SKIP_ 77

/* Outcomes; also the values longjmp() carries in HAUL_TEST_NOFORK mode. */
enum { HARNESS_PASS_ = 1, HARNESS_FAIL_ = 2, HARNESS_SKIP_ = 3 };

/*
 * TEST expands to a prototype, a constructor that registers the function,
 * and the head of the function definition, whose body follows the macro.
 */
#define HARNESS_DEFINE_(name, seconds)                                                             \
    static void harness_test_##name(void);                                                         \
    __attribute__((constructor)) static void harness_register_##name(void)                         \
    {                                                                                              \
        harness_register_(#name, harness_test_##name, seconds, __FILE__, __LINE__);                \
    }                                                                                              \
    static void harness_test_##name(void)

/*
 * An operand of a comparison: its bits as unsigned long long, and whether
 * its type was unsigned. The signedness is found with _Generic, which does
 * not evaluate its operand, so the operand is evaluated once, by the cast.
 */
struct harness_int_ {
    int is_unsigned;
    unsigned long long bits;
};

#define HARNESS_IS_UNSIGNED_(x)                                                                    \
    _Generic((x), unsigned int : 1, unsigned long : 1, unsigned long long : 1, default : 0)

#define HARNESS_CMP_(a, op, b)                                                                     \
    do {                                                                                           \
        const struct harness_int_ harness_a_ = {HARNESS_IS_UNSIGNED_(a), (unsigned long long)(a)}; \
        const struct harness_int_ harness_b_ = {HARNESS_IS_UNSIGNED_(b), (unsigned long long)(b)}; \
        if (!(harness_int_cmp_(harness_a_, harness_b_) op 0))                                      \
            harness_cmp_failed_(__FILE__, __LINE__, #a, #op, #b, harness_a_, harness_b_);          \
    } while (0)

struct harness_test_ {
    const char *name;
    void (*fn)(void);
    double timeout; /* seconds; negative: the default; 0: none */
    const char *file;
    int line;
    int group; /* files in order of first registration, for sorting */
};

/* The registry, filled by constructors before main(). */
static struct harness_test_ harness_tests_[HARNESS_MAX_TESTS_] __attribute__((unused));
static int harness_ntests_ __attribute__((unused));
static int harness_ngroups_ __attribute__((unused));

/* The test running in this process, for harness_log(). */
static const struct harness_test_ *harness_current_ __attribute__((unused));

/* HAUL_TEST_NOFORK mode: CHECK and SKIP longjmp() back to the runner. */
static int harness_nofork_ __attribute__((unused));
static jmp_buf harness_jmp_ __attribute__((unused));

/*
 * What a child tells its parent beyond its exit status: whether the test
 * function returned and why it skipped. It lives in a shared anonymous
 * mapping, set up by harness_main(); HAUL_TEST_NOFORK uses the static one.
 */
struct harness_shared_ {
    volatile int returned;
    char reason[1024];
};
static struct harness_shared_ harness_shared_fallback_ __attribute__((unused));
static struct harness_shared_ *harness_shared_ __attribute__((unused)) = &harness_shared_fallback_;

/* The process group of the running child, for the signal handler below. */
static volatile sig_atomic_t harness_child_pgid_ __attribute__((unused));

/* Signals that, sent to the harness, also end the running test. */
static const int harness_fatal_signals_[] __attribute__((unused)) = {SIGINT, SIGTERM, SIGHUP};
static struct sigaction harness_saved_actions_[3] __attribute__((unused));

HARNESS_FN_ void harness_register_(const char *name, void (*fn)(void), double timeout,
                                   const char *file, int line)
{
    if (harness_ntests_ == HARNESS_MAX_TESTS_) {
        fprintf(stderr, "harness: more than %d tests in one program\n", HARNESS_MAX_TESTS_);
        abort();
    }
    int group = harness_ngroups_;
    for (int i = 0; i < harness_ntests_; i++) {
        if (strcmp(harness_tests_[i].file, file) == 0) {
            group = harness_tests_[i].group;
            break;
        }
    }
    if (group == harness_ngroups_)
        harness_ngroups_++;
    harness_tests_[harness_ntests_++] =
        (struct harness_test_){name, fn, timeout, file, line, group};
}

/*
 * Puts the tests in file order. The order in which constructors run is not
 * something either compiler promises, so the harness sorts by position
 * (insertion sort: a few hundred tests at most).
 */
HARNESS_FN_ void harness_sort_(void)
{
    for (int i = 1; i < harness_ntests_; i++) {
        struct harness_test_ t = harness_tests_[i];
        int j = i;
        while (j > 0 &&
               (harness_tests_[j - 1].group > t.group ||
                (harness_tests_[j - 1].group == t.group && harness_tests_[j - 1].line > t.line))) {
            harness_tests_[j] = harness_tests_[j - 1];
            j--;
        }
        harness_tests_[j] = t;
    }
}

/* Ends the running test with an outcome. */
HARNESS_FN_ __attribute__((noreturn)) void harness_end_(int outcome)
{
    if (harness_nofork_)
        longjmp(harness_jmp_, outcome);
    fflush(stdout);
    exit(outcome == HARNESS_SKIP_ ? HARNESS_EXIT_SKIP_ : HARNESS_EXIT_FAIL_);
}

/* Reports a failed CHECK and ends the test. A good place for a breakpoint. */
HARNESS_FN_ __attribute__((noreturn, format(printf, 3, 4))) void
harness_failed_(const char *file, int line, const char *fmt, ...)
{
    char text[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", file, line, text);
    harness_end_(HARNESS_FAIL_);
}

HARNESS_FN_ __attribute__((noreturn, format(printf, 1, 2))) void harness_skip_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(harness_shared_->reason, sizeof(harness_shared_->reason), fmt, ap);
    va_end(ap);
    harness_end_(HARNESS_SKIP_);
}

static void harness_log(const char *fmt, ...)
{
    char text[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    size_t len = strlen(text);
    const char *name = harness_current_ ? harness_current_->name : "harness";
    fprintf(stderr, "  [%s] %s%s", name, text, len > 0 && text[len - 1] == '\n' ? "" : "\n");
}

/* Compares by mathematical value: <0, 0 or >0, like strcmp(). */
HARNESS_FN_ int harness_int_cmp_(struct harness_int_ a, struct harness_int_ b)
{
    const int a_negative = !a.is_unsigned && (long long)a.bits < 0;
    const int b_negative = !b.is_unsigned && (long long)b.bits < 0;
    if (a_negative != b_negative)
        return a_negative ? -1 : 1;
    if (a_negative) {
        const long long sa = (long long)a.bits, sb = (long long)b.bits;
        return (sa > sb) - (sa < sb);
    }
    /* Both are non-negative, so their bits compare as unsigned values. */
    return (a.bits > b.bits) - (a.bits < b.bits);
}

HARNESS_FN_ void harness_int_format_(char *buf, size_t size, struct harness_int_ v)
{
    if (v.is_unsigned)
        snprintf(buf, size, "%llu", v.bits);
    else
        snprintf(buf, size, "%lld", (long long)v.bits);
}

HARNESS_FN_ __attribute__((noreturn)) void
harness_cmp_failed_(const char *file, int line, const char *a, const char *op, const char *b,
                    struct harness_int_ va, struct harness_int_ vb)
{
    char ta[32], tb[32];
    harness_int_format_(ta, sizeof(ta), va);
    harness_int_format_(tb, sizeof(tb), vb);
    harness_failed_(file, line, "%s %s %s (%s vs %s)", a, op, b, ta, tb);
}

HARNESS_FN_ int harness_str_eq_(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

HARNESS_FN_ double harness_now_(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

HARNESS_FN_ int harness_env_flag_(const char *name)
{
    const char *value = getenv(name);
    return value != NULL && value[0] != '\0' && strcmp(value, "0") != 0;
}

/* Kills the running test's process group, then dies of the same signal. */
HARNESS_FN_ void harness_on_fatal_signal_(int sig)
{
    const pid_t pgid = (pid_t)harness_child_pgid_;
    if (pgid > 0)
        kill(-pgid, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

HARNESS_FN_ void harness_catch_fatal_signals_(void)
{
    for (size_t i = 0; i < sizeof(harness_fatal_signals_) / sizeof(harness_fatal_signals_[0]);
         i++) {
        sigaction(harness_fatal_signals_[i], NULL, &harness_saved_actions_[i]);
        /* A signal that the harness was told to ignore (nohup) stays so. */
        if (harness_saved_actions_[i].sa_handler == SIG_IGN)
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = harness_on_fatal_signal_;
        sigemptyset(&sa.sa_mask);
        sigaction(harness_fatal_signals_[i], &sa, NULL);
    }
}

/* In the child: the test runs as if the harness had not been there. */
HARNESS_FN_ __attribute__((noreturn)) void harness_child_(const struct harness_test_ *t,
                                                          const sigset_t *mask, pid_t parent)
{
    setpgid(0, 0);
    /* If the harness dies, so does the test (its descendants die with the
     * process group when the harness kills it, or on their own). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(HARNESS_EXIT_FAIL_);
    for (size_t i = 0; i < sizeof(harness_fatal_signals_) / sizeof(harness_fatal_signals_[0]); i++)
        sigaction(harness_fatal_signals_[i], &harness_saved_actions_[i], NULL);
    sigprocmask(SIG_SETMASK, mask, NULL);
    harness_current_ = t;
    t->fn();
    harness_shared_->returned = 1;
    fflush(stdout);
    exit(0);
}

/*
 * Waits for the child to exit, without reaping it, for up to timeout
 * seconds (0: forever). Returns 1 when it exited, 0 on timeout. The child
 * stays a zombie so that its pid, which is also its process group's id,
 * cannot be reused before the harness has killed the group.
 */
HARNESS_FN_ int harness_wait_exit_(pid_t pid, double timeout, int use_pidfd)
{
    const double deadline = harness_now_() + timeout;
    int pidfd = -1;
#ifdef SYS_pidfd_open
    if (use_pidfd)
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
    if (pidfd >= 0) {
        for (;;) {
            int ms = -1;
            if (timeout > 0) {
                const double left = deadline - harness_now_();
                if (left <= 0) {
                    close(pidfd);
                    return 0;
                }
                /* Round up, so that poll() does not return just early. */
                ms = left * 1000.0 + 1.0 >= (double)INT_MAX ? INT_MAX : (int)(left * 1000.0) + 1;
            }
            struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
            const int n = poll(&pfd, 1, ms);
            if (n > 0) {
                close(pidfd);
                return 1;
            }
            if (n < 0 && errno != EINTR) {
                perror("harness: poll on pidfd");
                close(pidfd);
                break; /* fall back to signals */
            }
        }
    }

    /*
     * Without a pidfd: SIGCHLD is blocked (harness_main() blocked it before
     * the fork), so it stays pending until sigtimedwait() takes it. A
     * SIGCHLD left over from an earlier test only makes the loop look once
     * more.
     */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    for (;;) {
        siginfo_t info;
        memset(&info, 0, sizeof(info));
        if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid)
            return 1;
        struct timespec ts = {.tv_sec = 1 << 30};
        if (timeout > 0) {
            const double left = deadline - harness_now_();
            if (left <= 0)
                return 0;
            ts.tv_sec = (time_t)left;
            ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
        }
        sigtimedwait(&chld, NULL, &ts);
    }
}

/*
 * Runs one test in a child process. Returns the outcome and, for failures
 * and skips, writes the reason into why.
 */
HARNESS_FN_ int harness_run_forked_(const struct harness_test_ *t, double timeout, int use_pidfd,
                                    char *why, size_t whylen)
{
    sigset_t chld, old_mask;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &old_mask);
    harness_shared_->returned = 0;
    harness_shared_->reason[0] = '\0';
    fflush(stdout);
    fflush(stderr);

    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        return HARNESS_FAIL_;
    }
    if (pid == 0)
        harness_child_(t, &old_mask, parent);

    /* Also here, so that the group exists before the harness may kill it. */
    setpgid(pid, pid);
    harness_child_pgid_ = pid;
    const int exited = harness_wait_exit_(pid, timeout, use_pidfd);
    kill(-pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    harness_child_pgid_ = 0;
    sigprocmask(SIG_SETMASK, &old_mask, NULL);

    if (!exited) {
        snprintf(why, whylen, "timed out after %g s", timeout);
        return HARNESS_FAIL_;
    }
    if (WIFSIGNALED(status)) {
        snprintf(why, whylen, "killed by signal %d (%s)%s", WTERMSIG(status),
                 strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
        return HARNESS_FAIL_;
    }
    const int code = WEXITSTATUS(status);
    if (code == 0 && harness_shared_->returned)
        return HARNESS_PASS_;
    if (code == 0) {
        snprintf(why, whylen, "exited with status 0 before the test returned");
        return HARNESS_FAIL_;
    }
    if (code == HARNESS_EXIT_SKIP_) {
        snprintf(why, whylen, "%s",
                 harness_shared_->reason[0] ? harness_shared_->reason : "(no reason given)");
        return HARNESS_SKIP_;
    }
    if (code != HARNESS_EXIT_FAIL_)
        snprintf(why, whylen, "exited with status %d", code);
    return HARNESS_FAIL_;
}

/* Runs one test in this process (HAUL_TEST_NOFORK). */
HARNESS_FN_ int harness_run_inline_(const struct harness_test_ *t, char *why, size_t whylen)
{
    harness_current_ = t;
    harness_shared_->reason[0] = '\0';
    switch (setjmp(harness_jmp_)) {
    case 0:
        break;
    case HARNESS_SKIP_:
        snprintf(why, whylen, "%s", harness_shared_->reason);
        return HARNESS_SKIP_;
    default:
        return HARNESS_FAIL_;
    }
    t->fn();
    return HARNESS_PASS_;
}

HARNESS_FN_ void harness_usage_(FILE *out, const char *argv0)
{
    fprintf(out,
            "usage: %s [--list] [name-or-substring ...]\n"
            "environment: HAUL_TEST_TIMEOUT=seconds, HAUL_TEST_NOFORK=1, HAUL_TEST_NO_PIDFD=1\n",
            argv0);
}

static int harness_main(int argc, char **argv)
{
    static unsigned char selected[HARNESS_MAX_TESTS_];
    int list = 0, any_name = 0;

    harness_sort_();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--list") == 0) {
            list = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            harness_usage_(stdout, argv[0]);
            return 0;
        } else if (argv[i][0] == '-') {
            harness_usage_(stderr, argv[0]);
            return 2;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue;
        any_name = 1;
        int exact = 0, matched = 0;
        for (int k = 0; k < harness_ntests_; k++) {
            if (strcmp(harness_tests_[k].name, argv[i]) == 0) {
                selected[k] = 1;
                exact = matched = 1;
            }
        }
        for (int k = 0; k < harness_ntests_ && !exact; k++) {
            if (strstr(harness_tests_[k].name, argv[i]) != NULL) {
                selected[k] = 1;
                matched = 1;
            }
        }
        if (!matched) {
            fprintf(stderr, "harness: no test matches \"%s\" (--list lists them)\n", argv[i]);
            return 2;
        }
    }
    if (!any_name)
        memset(selected, 1, sizeof(selected));

    if (list) {
        for (int k = 0; k < harness_ntests_; k++) {
            if (selected[k])
                printf("%s\n", harness_tests_[k].name);
        }
        return 0;
    }

    double default_timeout = HARNESS_DEFAULT_TIMEOUT_;
    const char *env = getenv("HAUL_TEST_TIMEOUT");
    if (env != NULL && env[0] != '\0') {
        char *end = NULL;
        default_timeout = strtod(env, &end);
        if (end == env || *end != '\0' || !(default_timeout >= 0)) {
            fprintf(stderr, "harness: HAUL_TEST_TIMEOUT=\"%s\" is not a number of seconds\n", env);
            return 2;
        }
    }
    harness_nofork_ = harness_env_flag_("HAUL_TEST_NOFORK");
    const int use_pidfd = !harness_env_flag_("HAUL_TEST_NO_PIDFD");

    if (!harness_nofork_) {
        void *map = mmap(NULL, sizeof(struct harness_shared_), PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED) {
            perror("harness: mmap");
            return 2;
        }
        harness_shared_ = map;
        harness_catch_fatal_signals_();
    }

    int passed = 0, failed = 0, skipped = 0;
    for (int k = 0; k < harness_ntests_; k++) {
        if (!selected[k])
            continue;
        const struct harness_test_ *t = &harness_tests_[k];
        const double timeout = t->timeout >= 0 ? t->timeout : default_timeout;
        char why[1100] = "";
        const double start = harness_now_();
        const int outcome = harness_nofork_
                                ? harness_run_inline_(t, why, sizeof(why))
                                : harness_run_forked_(t, timeout, use_pidfd, why, sizeof(why));
        const double elapsed = harness_now_() - start;
        if (outcome == HARNESS_PASS_) {
            passed++;
            printf("PASS %s (%.2f s)\n", t->name, elapsed);
        } else if (outcome == HARNESS_SKIP_) {
            skipped++;
            printf("SKIP %s: %s\n", t->name, why);
        } else {
            failed++;
            printf("FAIL %s (%.2f s)%s%s\n", t->name, elapsed, why[0] ? ": " : "", why);
        }
        fflush(stdout);
        if (harness_nofork_ && outcome == HARNESS_FAIL_)
            break;
    }
    harness_current_ = NULL;
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    fflush(stdout);
    return failed ? 1 : 0;
}

#ifndef HARNESS_NO_MAIN
int main(int argc, char **argv)
{
    return harness_main(argc, argv);
}
#endif

#endif /* HAUL_TESTS_HARNESS_H */
