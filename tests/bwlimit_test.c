/*
 * bwlimit_test.c - haul push --bwlimit, with a real hauld and haul.
 *
 * The limit is a lower bound on the time a transfer takes, so that is
 * what the tests assert: a push of SIZE at RATE cannot end before
 * (SIZE - the burst - one chunk) / RATE, whatever the machine's speed or
 * load. Nothing here asserts that a transfer is fast.
 */
#include <limits.h>
#include <stdint.h>

#include "harness.h"
#include "e2e.h"

/* Seconds a command may take. */
#define CMD_TIMEOUT 60

/* What may leave ahead of the pace (haul.h, rate_limit): 50 ms of the
 * rate and one chunk (the engine's default, 256 KiB). */
#define CHUNK (256u << 10)

/* Makes env->dir/src with one file of `size` bytes and returns its path. */
static const char *make_source(e2e_env *env, char *src, uint64_t size)
{
    e2e_path(env, src, "src");
    e2e_mkdir(src);
    char path[PATH_MAX];
    e2e_file(e2e_join(path, src, "data"), size, 7, 0644);
    return src;
}

/* Pulls the latest snapshot of the dataset and checks that it is src. */
static void check_arrived(e2e_env *env, const char *src, const char *dataset)
{
    char dest[PATH_MAX], url[512];
    e2e_path(env, dest, "pulled");
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "pull", e2e_url(env, url, dataset), dest);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dest, 0), 0);
}

/* Pushes src with the given --bwlimit (NULL: none) and --timeout;
 * returns how long it took, in seconds. */
static double push(e2e_env *env, const char *src, const char *dataset, const char *rate,
                   const char *timeout)
{
    char url[512];
    const char *argv[E2E_MAX_ARGS];
    int n = 0;
    argv[n++] = "push";
    if (rate) {
        argv[n++] = "--bwlimit";
        argv[n++] = rate;
    }
    argv[n++] = "--timeout";
    argv[n++] = timeout;
    argv[n++] = src;
    argv[n++] = e2e_url(env, url, dataset);
    argv[n] = NULL;
    e2e_proc p = {0};
    double t0 = e2e_now();
    e2e_haul_startv(env, &p, argv);
    e2e_proc_wait(&p, CMD_TIMEOUT);
    double took = e2e_now() - t0;
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    harness_log("push of %s at %s took %.2f s", src, rate ? rate : "no limit", took);
    return took;
}

TEST(push_with_bwlimit_takes_at_least_size_over_rate_and_arrives_whole)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX];
    const uint64_t size = 4 * E2E_MIB, rate = 2 * E2E_MIB;
    make_source(&env, src, size);
    double took = push(&env, src, "ds", "2M", "60");
    double least = (double)(size - rate / 20 - CHUNK) / (double)rate;
    CHECK(took >= least);
    check_arrived(&env, src, "ds");
    e2e_teardown(&env);
}

/* The same push without a limit completes (its speed is not asserted). */
TEST(push_without_bwlimit_completes_and_arrives_whole)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX];
    make_source(&env, src, 4 * E2E_MIB);
    push(&env, src, "ds", NULL, "60");
    check_arrived(&env, src, "ds");
    e2e_teardown(&env);
}

/* A rate far below what the message timeout allows a chunk to take: at
 * 128 KiB/s a chunk of 256 KiB waits 2 s for its tokens, and the push
 * lasts about 3 timeouts of 1 s. The limiter holds the messages,
 * the link is not dead: no message times out. */
TEST(push_with_a_very_low_bwlimit_does_not_time_out_its_messages)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX];
    const uint64_t size = 384u << 10, rate = 128u << 10;
    make_source(&env, src, size);
    double took = push(&env, src, "ds", "128", "1");
    CHECK(took >= (double)(size - rate / 20 - CHUNK) / (double)rate);
    check_arrived(&env, src, "ds");
    e2e_teardown(&env);
}

/* A pull asks hauld for the rate: what the server sends is limited. */
TEST(pull_with_bwlimit_takes_at_least_size_over_rate_and_arrives_whole)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], dest[PATH_MAX], url[512];
    const uint64_t size = 4 * E2E_MIB, rate = 2 * E2E_MIB;
    make_source(&env, src, size);
    push(&env, src, "ds", NULL, "60");
    e2e_path(&env, dest, "pulled-limited");
    e2e_proc p = {0};
    double t0 = e2e_now();
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", "--bwlimit", "2M", e2e_url(&env, url, "ds"), dest);
    double took = e2e_now() - t0;
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    harness_log("pull at 2M took %.2f s", took);
    CHECK(took >= (double)(size - rate / 20 - CHUNK) / (double)rate);
    CHECK_EQ(e2e_tree_diff(src, dest, 0), 0);
    e2e_teardown(&env);
}

/* A bare number is KiB/s, as in rsync; a bad rate, or a rate given to a
 * command that moves no data, is a usage error. */
TEST(bwlimit_bad_rate_or_a_command_without_data_is_a_usage_error)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], url[512];
    make_source(&env, src, 1000);
    static const char *const bad[] = {"", "abc", "-1", "2X", "2MX", "1e30G", "0.0001"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        e2e_proc p = {0};
        e2e_haul(&env, &p, CMD_TIMEOUT, "push", "--bwlimit", bad[i], src, e2e_url(&env, url, "ds"));
        CHECK_EXIT(&p, 1);
        e2e_proc_free(&p);
    }
    /* Only push and pull move data to limit. */
    e2e_proc ls = {0};
    e2e_haul(&env, &ls, CMD_TIMEOUT, "ls", "--bwlimit", "1M", env.url);
    CHECK_EXIT(&ls, 1);
    e2e_proc_free(&ls);
    static const char *const good[] = {"0", "4096", "1.5M", "2MiB", "100kb", "1G"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        e2e_proc p = {0};
        e2e_haul(&env, &p, CMD_TIMEOUT, "push", "--bwlimit", good[i], src,
                 e2e_url(&env, url, "ds"));
        CHECK_EXIT(&p, 0);
        e2e_proc_free(&p);
    }
    e2e_teardown(&env);
}
