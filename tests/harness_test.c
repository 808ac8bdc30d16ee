/*
 * harness_test.c - tests of the test harness itself.
 *
 * A harness that reports PASS for everything would let every other test
 * pass, so the tests here run this very program again (/proc/self/exe) as
 * a nested harness, with HARNESS_TEST_HIDDEN=1 in its environment. Only
 * then are the hidden tests below registered: tests that fail, crash, hang,
 * skip or misbehave on purpose. The outer tests read the nested run's
 * output and exit status and check that each outcome was reported as such.
 */
#include "harness.h"

#include <stdint.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>

#define HIDDEN_ENV "HARNESS_TEST_HIDDEN"

/*
 * Defines a test that is registered only in a nested run. It uses the
 * harness's internal registration, which is fair in the harness's own test.
 */
#define HIDDEN_TEST(name, seconds)                                                                 \
    static void hidden_##name(void);                                                               \
    __attribute__((constructor)) static void hidden_register_##name(void)                          \
    {                                                                                              \
        if (getenv(HIDDEN_ENV) != NULL)                                                            \
            harness_register_(#name, hidden_##name, seconds, __FILE__, __LINE__);                  \
    }                                                                                              \
    static void hidden_##name(void)

/* ------------------------------------------------------------------------ */
/* Hidden tests: the nested run's material                                  */
/* ------------------------------------------------------------------------ */

HIDDEN_TEST(nested_pass, -1)
{
    CHECK(1);
    CHECK_EQ(2 + 2, 4);
    CHECK_LT(-1, sizeof(int));
    CHECK_STR_EQ("abc", "abc");
    CHECK_OK(0);
}

/* The line of the CHECK below, which the nested run must report. */
static const int failing_check_line = __LINE__ + 4;
HIDDEN_TEST(nested_check_fails, -1)
{
    int three = 3, four = 4;
    CHECK_EQ(three, four);
    harness_log("not reached after a failed CHECK");
}

/* Compared as long long, UINT64_MAX would be -1 and less than 1. */
HIDDEN_TEST(nested_unsigned_fails, -1)
{
    uint64_t big = UINT64_MAX;
    CHECK_LT(big, 1);
}

static const char *fake_strerror(int code)
{
    return code == 7 ? "seven is not zero" : "unknown";
}

static int returns_seven(void)
{
    return 7;
}

HIDDEN_TEST(nested_check_ok_fails, -1)
{
    harness_strerror = fake_strerror;
    CHECK_OK(returns_seven());
}

HIDDEN_TEST(nested_str_fails, -1)
{
    CHECK_STR_EQ("abc", "abd");
}

HIDDEN_TEST(nested_timeout, 1)
{
    for (;;)
        pause();
}

HIDDEN_TEST(nested_skip, -1)
{
    SKIP("reason %d", 42);
}

HIDDEN_TEST(nested_signal, -1)
{
    raise(SIGUSR1);
}

HIDDEN_TEST(nested_exit_early, -1)
{
    exit(0);
}

/* Starts a process and forgets it; the harness must kill it. */
HIDDEN_TEST(nested_leaves_child, -1)
{
    const pid_t pid = fork();
    CHECK_GE(pid, 0);
    if (pid == 0) {
        for (;;)
            pause();
    }
    harness_log("grandchild %d", (int)pid);
}

/* Hangs without a timeout of its own: only run with HAUL_TEST_TIMEOUT. */
HIDDEN_TEST(hidden_hang, -1)
{
    for (;;)
        pause();
}

/* ------------------------------------------------------------------------ */
/* Running the nested harness                                               */
/* ------------------------------------------------------------------------ */

struct nested {
    int status;      /* the nested harness's wait status */
    char out[65536]; /* its stdout and stderr, together */
    size_t len;
};

/*
 * Runs this program as a nested harness with the given arguments (NULL
 * terminated) and environment settings ("NAME=value" sets, "NAME" unsets),
 * and collects its output and exit status.
 */
static void run_nested(struct nested *n, const char *const *env, const char *const *args)
{
    if (getenv(HIDDEN_ENV) != NULL)
        SKIP("already nested");
    int fds[2];
    CHECK_OK(pipe(fds));
    const pid_t pid = fork();
    CHECK_GE(pid, 0);
    if (pid == 0) {
        const char *argv[32] = {"harness_test"};
        int argc = 1;
        for (; args[argc - 1] != NULL && argc < 31; argc++)
            argv[argc] = args[argc - 1];
        argv[argc] = NULL;
        unsetenv("HAUL_TEST_TIMEOUT");
        unsetenv("HAUL_TEST_NOFORK");
        unsetenv("HAUL_TEST_NO_PIDFD");
        setenv(HIDDEN_ENV, "1", 1);
        for (; *env != NULL; env++) {
            const char *eq = strchr(*env, '=');
            if (eq != NULL) {
                char name[64];
                snprintf(name, sizeof(name), "%.*s", (int)(eq - *env), *env);
                setenv(name, eq + 1, 1);
            } else {
                unsetenv(*env);
            }
        }
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    n->len = 0;
    for (;;) {
        char buf[4096];
        const ssize_t got = read(fds[0], buf, sizeof(buf));
        if (got < 0 && errno == EINTR)
            continue;
        CHECK_GE(got, 0);
        if (got == 0)
            break;
        const size_t room = sizeof(n->out) - 1 - n->len;
        const size_t keep = (size_t)got < room ? (size_t)got : room;
        memcpy(n->out + n->len, buf, keep);
        n->len += keep;
    }
    n->out[n->len] = '\0';
    close(fds[0]);
    CHECK_EQ(waitpid(pid, &n->status, 0), pid);
}

/* The nested run's last line, without its newline. */
static const char *last_line(struct nested *n)
{
    size_t end = n->len;
    if (end > 0 && n->out[end - 1] == '\n')
        n->out[--end] = '\0';
    while (end > 0 && n->out[end - 1] != '\n')
        end--;
    return n->out + end;
}

static int exit_status(const struct nested *n)
{
    return WIFEXITED(n->status) ? WEXITSTATUS(n->status) : -1;
}

/* Checks that the nested output contains text, and shows it if not. */
#define CHECK_OUTPUT_HAS(n, text)                                                                  \
    do {                                                                                           \
        if (strstr((n)->out, (text)) == NULL)                                                      \
            harness_log("nested output:\n%s", (n)->out);                                           \
        CHECK(strstr((n)->out, (text)) != NULL);                                                   \
    } while (0)

/* ------------------------------------------------------------------------ */
/* The tests                                                                */
/* ------------------------------------------------------------------------ */

/* Comparisons that the naive (long long) cast or C's own conversions would
 * get wrong must hold. */
TEST(comparisons_use_mathematical_values)
{
    const size_t one = 1;
    const uint64_t big = UINT64_MAX;
    const int minus_one = -1;
    CHECK_LT(minus_one, one);
    CHECK_GT(one, minus_one);
    CHECK_GT(big, 0);
    CHECK_GT(big, minus_one);
    CHECK_NE(big, minus_one);
    CHECK_LE(INT64_MIN, minus_one);
    CHECK_GE(big, (uint64_t)INT64_MAX + 1);
    CHECK_EQ('a', 97);
    CHECK_EQ(-5, -5L);
    const char text[] = "x";
    CHECK_EQ(text, &text[0]);
    CHECK_NE(text, NULL);
    CHECK_STR_EQ(NULL, NULL);
}

TEST_TIMEOUT(reports_every_outcome, 20)
{
    static struct nested n;
    /* Orphans of the nested run become this process's children, so the
     * grandchild that nested_leaves_child forgets can be waited for. */
    CHECK_OK(prctl(PR_SET_CHILD_SUBREAPER, 1));
    run_nested(&n, (const char *const[]){NULL}, (const char *const[]){"nested_", NULL});

    CHECK_STR_EQ(last_line(&n), "2 passed, 7 failed, 1 skipped");
    CHECK_EQ(exit_status(&n), 1);
    CHECK_OUTPUT_HAS(&n, "PASS nested_pass (");
    char expected[128];
    snprintf(expected, sizeof(expected),
             "harness_test.c:%d: CHECK failed: three == four (3 vs 4)\n", failing_check_line);
    CHECK_OUTPUT_HAS(&n, expected);
    CHECK(strstr(n.out, "not reached") == NULL);
    CHECK_OUTPUT_HAS(&n, "FAIL nested_check_fails (");
    CHECK_OUTPUT_HAS(&n, "CHECK failed: big < 1 (18446744073709551615 vs 1)\n");
    CHECK_OUTPUT_HAS(&n, "CHECK failed: returns_seven() == 0 (returned 7: seven is not zero)\n");
    CHECK_OUTPUT_HAS(&n, "CHECK failed: \"abc\" == \"abd\" (\"abc\" vs \"abd\")\n");
    CHECK_OUTPUT_HAS(&n, "FAIL nested_str_fails (");
    CHECK_OUTPUT_HAS(&n, "): timed out after 1 s\n");
    CHECK_OUTPUT_HAS(&n, "SKIP nested_skip: reason 42\n");
    CHECK_OUTPUT_HAS(&n, "FAIL nested_signal (");
    CHECK_OUTPUT_HAS(&n, "): killed by signal 10 (User defined signal 1)\n");
    CHECK_OUTPUT_HAS(&n, "): exited with status 0 before the test returned\n");
    CHECK_OUTPUT_HAS(&n, "PASS nested_leaves_child (");

    /* The forgotten grandchild must have been killed. If it had not been,
     * this wait would hang until this test's own timeout. */
    const char *at = strstr(n.out, "[nested_leaves_child] grandchild ");
    CHECK(at != NULL);
    const pid_t grandchild = (pid_t)atoi(at + strlen("[nested_leaves_child] grandchild "));
    CHECK_GT(grandchild, 0);
    int status = 0;
    CHECK_EQ(waitpid(grandchild, &status, 0), grandchild);
    CHECK(WIFSIGNALED(status));
    CHECK_EQ(WTERMSIG(status), SIGKILL);
}

TEST(selects_and_lists_by_name)
{
    static struct nested n;
    run_nested(&n, (const char *const[]){NULL}, (const char *const[]){"nested_pass", NULL});
    CHECK_STR_EQ(last_line(&n), "1 passed, 0 failed, 0 skipped");
    CHECK_EQ(exit_status(&n), 0);

    /* A substring selects every test that contains it, in file order. */
    run_nested(&n, (const char *const[]){NULL},
               (const char *const[]){"--list", "_fails", "nested_skip", NULL});
    CHECK_STR_EQ(n.out, "nested_check_fails\n"
                        "nested_unsigned_fails\n"
                        "nested_check_ok_fails\n"
                        "nested_str_fails\n"
                        "nested_skip\n");
    CHECK_EQ(exit_status(&n), 0);

    run_nested(&n, (const char *const[]){NULL}, (const char *const[]){"no_such_test", NULL});
    CHECK_OUTPUT_HAS(&n, "no test matches \"no_such_test\"");
    CHECK_EQ(exit_status(&n), 2);
}

/* HAUL_TEST_TIMEOUT applies to tests without a timeout of their own, and
 * the wait without a pidfd times out as the one with it does. */
TEST(env_timeout_and_signal_wait)
{
    static struct nested n;
    run_nested(&n, (const char *const[]){"HAUL_TEST_TIMEOUT=1", "HAUL_TEST_NO_PIDFD=1", NULL},
               (const char *const[]){"nested_pass", "hidden_hang", "nested_skip", NULL});
    CHECK_OUTPUT_HAS(&n, "PASS nested_pass (");
    CHECK_OUTPUT_HAS(&n, "FAIL hidden_hang (");
    CHECK_OUTPUT_HAS(&n, "): timed out after 1 s\n");
    CHECK_STR_EQ(last_line(&n), "1 passed, 1 failed, 1 skipped");
    CHECK_EQ(exit_status(&n), 1);

    run_nested(&n, (const char *const[]){"HAUL_TEST_TIMEOUT=soon", NULL},
               (const char *const[]){"nested_pass", NULL});
    CHECK_OUTPUT_HAS(&n, "HAUL_TEST_TIMEOUT=\"soon\" is not a number");
    CHECK_EQ(exit_status(&n), 2);
}

TEST(nofork_stops_at_first_failure)
{
    static struct nested n;
    run_nested(&n, (const char *const[]){"HAUL_TEST_NOFORK=1", NULL},
               (const char *const[]){"nested_pass", "nested_check_fails", "nested_str_fails",
                                     "nested_skip", NULL});
    CHECK_OUTPUT_HAS(&n, "PASS nested_pass (");
    CHECK_OUTPUT_HAS(&n, "CHECK failed: three == four (3 vs 4)\n");
    CHECK_OUTPUT_HAS(&n, "FAIL nested_check_fails (");
    CHECK(strstr(n.out, "nested_str_fails") == NULL);
    CHECK(strstr(n.out, "nested_skip") == NULL);
    CHECK_STR_EQ(last_line(&n), "1 passed, 1 failed, 0 skipped");
    CHECK_EQ(exit_status(&n), 1);

    /* A skip ends only its test. */
    run_nested(&n, (const char *const[]){"HAUL_TEST_NOFORK=1", NULL},
               (const char *const[]){"nested_skip", "nested_pass", NULL});
    CHECK_STR_EQ(last_line(&n), "1 passed, 0 failed, 1 skipped");
    CHECK_EQ(exit_status(&n), 0);
}
