/*
 * workers_test.c - hauld's disk work on its worker threads, with real
 * hauld and haul processes (see e2e.h): a store call that stalls holds
 * its own request and no other.
 *
 * The stall is made by build/tests/iofault_preload.so (LD_PRELOAD;
 * tests/iofault_preload.c, HAUL_IOFAULT_STALL): the first write (or read)
 * of a file of the store whose path holds "stall-here" blocks until the
 * test releases it, and tells the test through a FIFO that it blocks.
 * While it is held:
 *
 *   - pushes to other datasets, listings, pulls and verifies complete,
 *     and the stalled push completes, intact, once released;
 *   - a verify held inside its re-read of a snapshot delays no push;
 *   - a take-over of a push held inside a call waits for the call, then
 *     ends that push and proceeds;
 *   - a push held inside a call cannot take all of hauld's --memory with
 *     what it received, nor a pull whose client stopped reading with what
 *     it sent: another push completes meanwhile;
 *   - a listing whose output the engine refused because stopped clients
 *     hold all of hauld's --memory goes on when that memory frees
 *     (HAUL_EV_WINDOW_OPENED), though none of its messages is in flight;
 *   - SIGTERM waits for the stalled request, which then completes, and
 *     hauld exits 0; a second SIGTERM ends the requests as soon as the
 *     stalled call returns, and hauld exits 0; what the request had done
 *     is kept.
 *
 * On a hauld whose requests run on its event loop (or with --workers 1),
 * the requests made while the stall holds time out: the tests fail.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"
#include "iofault.h"

/* Seconds a command may take: the requests made while the stall holds
 * must end well within it. */
#define CMD_TIMEOUT 30

/* A tree of a few files, one of them named to stall when `stall` is set. */
static void make_tree(const char *root, uint64_t seed, int stall, uint64_t big)
{
    e2e_mkdir(root);
    e2e_file(e2e_at(root, "a"), big, seed, 0644);
    e2e_mkdir(e2e_at(root, "d"));
    e2e_file(e2e_at(root, "d/b"), 70000, seed + 1, 0644);
    if (stall)
        e2e_file(e2e_at(root, "d/stall-here"), big, seed + 2, 0644);
    e2e_file(e2e_at(root, "z"), big, seed + 3, 0600);
    e2e_stamp_tree(root);
}

static void push_ok(e2e_env *env, const char *src, const char *dataset)
{
    char url[512];
    e2e_proc p = {0};
    double t0 = e2e_now();
    e2e_haul(env, &p, CMD_TIMEOUT, "push", src, e2e_url(env, url, dataset));
    CHECK_EXIT(&p, 0);
    harness_log("push to %s took %.2f s", dataset, e2e_now() - t0);
    e2e_proc_free(&p);
}

static void pull_and_compare(e2e_env *env, const char *dataset, const char *src, const char *dst)
{
    char url[512];
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "pull", e2e_url(env, url, dataset), dst);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(stalled_write_holds_only_its_own_push, 180)
{
    e2e_env env;
    iofault_start_stalling(&env, "write:stall-here", NULL);
    char slow[PATH_MAX], fast[PATH_MAX], first[PATH_MAX], dst[PATH_MAX], url[512];
    make_tree(e2e_path(&env, slow, "slow"), 10, 1, 2 * E2E_MIB);
    make_tree(e2e_path(&env, fast, "fast"), 20, 0, 300000);
    make_tree(e2e_path(&env, first, "first"), 30, 0, 300000);
    push_ok(&env, first, "first");

    e2e_proc held = {0};
    e2e_haul_start(&env, &held, "push", slow, e2e_url(&env, url, "slow"));
    CHECK(iofault_stall_wait(&env));

    /* The stall holds one worker: the others serve everything else. */
    push_ok(&env, fast, "fast");
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", env.url);
    CHECK_EXIT(&p, 0);
    CHECK(e2e_contains(p.out, "first"));
    CHECK(e2e_contains(p.out, "fast"));
    e2e_proc_free(&p);
    pull_and_compare(&env, "first", first, e2e_path(&env, dst, "dst-first"));
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", e2e_url(&env, url, "fast"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK(!e2e_proc_exited(&held));

    /* Released, the stalled push goes on and ends intact. */
    iofault_stall_release(&env);
    e2e_proc_wait(&held, CMD_TIMEOUT);
    CHECK_EXIT(&held, 0);
    e2e_proc_free(&held);
    pull_and_compare(&env, "slow", slow, e2e_path(&env, dst, "dst-slow"));
    e2e_teardown(&env);
}

TEST_TIMEOUT(verify_inside_a_stalled_read_delays_no_push, 180)
{
    e2e_env env;
    iofault_start_stalling(&env, "read:stall-here", NULL);
    char big[PATH_MAX], small[PATH_MAX], url[512];
    make_tree(e2e_path(&env, big, "big"), 40, 1, 8 * E2E_MIB);
    make_tree(e2e_path(&env, small, "small"), 50, 0, 100000);
    push_ok(&env, big, "big");

    /* The verify re-reads the snapshot and stalls inside it. */
    e2e_proc verify = {0};
    e2e_haul_start(&env, &verify, "verify", e2e_url(&env, url, "big"));
    CHECK(iofault_stall_wait(&env));
    for (int i = 0; i < 4; i++) {
        char dataset[32];
        snprintf(dataset, sizeof(dataset), "small%d", i);
        push_ok(&env, small, dataset);
    }
    CHECK(!e2e_proc_exited(&verify));

    iofault_stall_release(&env);
    e2e_proc_wait(&verify, CMD_TIMEOUT);
    CHECK_EXIT(&verify, 0);
    CHECK(e2e_contains(verify.out, "match") || e2e_contains(verify.err, "match"));
    e2e_proc_free(&verify);
    e2e_teardown(&env);
}

TEST_TIMEOUT(takeover_of_a_push_inside_a_stalled_call_waits_for_it, 180)
{
    e2e_env env;
    iofault_start_stalling(&env, "write:stall-here", NULL);
    char slow[PATH_MAX], dst[PATH_MAX], url[512];
    /* The stalled file comes first; more than one turn's worth of content
     * follows it, so that the push cannot commit in the turn the stall
     * holds. */
    e2e_mkdir(e2e_path(&env, slow, "slow"));
    e2e_file(e2e_at(slow, "a-stall-here"), 2 * E2E_MIB, 90, 0644);
    e2e_file(e2e_at(slow, "z"), 64 * E2E_MIB, 91, 0644);
    e2e_stamp_tree(slow);
    e2e_proc held = {0};
    e2e_haul_start(&env, &held, "push", slow, e2e_url(&env, url, "slow"));
    CHECK(iofault_stall_wait(&env));

    /* The take-over cannot end the push inside its call: it waits. */
    e2e_proc p = {0};
    e2e_haul_start(&env, &p, "push", "--takeover", slow, e2e_url(&env, url, "slow"));
    CHECK(e2e_log_wait(&env, "waits up to 10000 ms for the push it takes over", 30));
    CHECK(!e2e_proc_exited(&p));

    iofault_stall_release(&env);
    e2e_proc_wait(&p, CMD_TIMEOUT);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    e2e_proc_wait(&held, CMD_TIMEOUT);
    if (held.code != 3 || !e2e_contains(held.err, "taken over by another push"))
        e2e_proc_show(&held);
    CHECK_EXIT(&held, 3);
    CHECK(e2e_contains(held.err, "taken over by another push"));
    e2e_proc_free(&held);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "slow"), 1);
    pull_and_compare(&env, "slow", slow, e2e_path(&env, dst, "dst"));
    e2e_teardown(&env);
}

/* Bytes a process has read through system calls (its files, for haul
 * push): /proc/PID/io's rchar. */
static uint64_t bytes_read(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/io", (int)pid);
    char *text = e2e_slurp(path);
    const char *p = strstr(text, "rchar: ");
    uint64_t n = p ? strtoull(p + 7, NULL, 10) : 0;
    free(text);
    return n;
}

/*
 * A push held inside a store call keeps what it received, and its client
 * sends as long as hauld grants it room: it must not be able to take all
 * of hauld's --memory. With --memory 128M (64 MiB of it for received
 * messages), a session may hold half of that, 32 MiB: once the held
 * push's client has read 28 MiB (it queues 2 MiB at most ahead of what
 * hauld took), another push must still complete.
 */
TEST_TIMEOUT(push_held_in_a_stalled_call_leaves_memory_to_others, 180)
{
    e2e_env env;
    static const char *const args[] = {"--memory", "128M", NULL};
    iofault_start_stalling(&env, "write:stall-here", args);
    char slow[PATH_MAX], fast[PATH_MAX], url[512];
    e2e_mkdir(e2e_path(&env, slow, "slow"));
    e2e_file(e2e_at(slow, "a-stall-here"), 2 * E2E_MIB, 92, 0644);
    e2e_file(e2e_at(slow, "z"), 200 * E2E_MIB, 93, 0644);
    e2e_stamp_tree(slow);
    make_tree(e2e_path(&env, fast, "fast"), 94, 0, 4 * E2E_MIB);

    e2e_proc held = {0};
    e2e_haul_start(&env, &held, "push", "--queue", "2M", slow, e2e_url(&env, url, "slow"));
    CHECK(iofault_stall_wait(&env));
    int ok = 0;
    E2E_WAIT_UNTIL(ok, bytes_read(held.pid) >= 28 * E2E_MIB || e2e_proc_exited(&held), 30000);
    CHECK(ok);
    CHECK(!e2e_proc_exited(&held));
    push_ok(&env, fast, "fast");
    CHECK(!e2e_proc_exited(&held));

    iofault_stall_release(&env);
    e2e_proc_wait(&held, CMD_TIMEOUT);
    CHECK_EXIT(&held, 0);
    e2e_proc_free(&held);
    e2e_teardown(&env);
}

/*
 * A client that stops reading keeps what hauld sent it unacknowledged:
 * with --memory 128M a session may hold 32 MiB of it, so that a pull of a
 * 160 MiB snapshot whose client is stopped leaves memory to a push.
 */
TEST_TIMEOUT(stopped_pull_client_leaves_memory_to_a_push, 180)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--memory";
    env.server_args[1] = "128M";
    env.server_args[2] = "--log-level";
    env.server_args[3] = "debug";
    e2e_start_server(&env);
    char other[PATH_MAX], small[PATH_MAX], dst[PATH_MAX], url[512];
    make_tree(e2e_path(&env, other, "other"), 95, 0, 80 * E2E_MIB);
    make_tree(e2e_path(&env, small, "small"), 96, 0, 4 * E2E_MIB);
    push_ok(&env, other, "other");

    e2e_proc stopped = {0};
    e2e_haul_start(&env, &stopped, "pull", e2e_url(&env, url, "other"), e2e_path(&env, dst, "dst"));
    CHECK(e2e_log_wait(&env, "request 2 (default, pull other): 0 paths asked for", 30));
    CHECK(kill(stopped.pid, SIGSTOP) == 0);
    CHECK(e2e_log_wait(&env, "request 2 (default, pull other): output waits", 30));
    push_ok(&env, small, "small");

    CHECK(kill(stopped.pid, SIGCONT) == 0);
    e2e_proc_wait(&stopped, CMD_TIMEOUT);
    CHECK_EXIT(&stopped, 0);
    e2e_proc_free(&stopped);
    CHECK_EQ(e2e_tree_diff(other, dst, 0), 0);
    e2e_teardown(&env);
}

/*
 * hauld's --memory full: pulls of a 97 MiB snapshot whose clients are
 * stopped once they have asked for it hold it with output their clients
 * do not acknowledge. With --memory 128M a session may hold 32 MiB: the
 * first three hold 96 MiB, the fourth what is left, and its output waits.
 * A listing's one message is then refused for want of memory, with none
 * of its own in flight, so no MESSAGE_SENT will come for it: only
 * HAUL_EV_WINDOW_OPENED, once the first client goes on and memory frees,
 * tells it to try again.
 */
TEST_TIMEOUT(output_refused_memory_goes_on_when_memory_frees, 180)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--memory";
    env.server_args[1] = "128M";
    env.server_args[2] = "--log-level";
    env.server_args[3] = "debug";
    e2e_start_server(&env);
    char other[PATH_MAX], dst[4][PATH_MAX], url[512];
    make_tree(e2e_path(&env, other, "other"), 80, 0, 48 * E2E_MIB);
    push_ok(&env, other, "other");

    /* Requests 2 to 5, stopped once they asked for their paths: hauld
     * then sends. */
    e2e_proc stopped[4];
    for (int i = 0; i < 4; i++) {
        char name[16], asked[80];
        snprintf(name, sizeof(name), "dst%d", i);
        memset(&stopped[i], 0, sizeof(stopped[i]));
        e2e_haul_start(&env, &stopped[i], "pull", e2e_url(&env, url, "other"),
                       e2e_path(&env, dst[i], name));
        snprintf(asked, sizeof(asked), "request %d (default, pull other): 0 paths asked for",
                 i + 2);
        CHECK(e2e_log_wait(&env, asked, 30));
        CHECK(kill(stopped[i].pid, SIGSTOP) == 0);
    }
    CHECK(e2e_log_wait(&env, "request 5 (default, pull other): output waits", 30));

    /* Request 6, a listing, sends one message, which finds no memory. */
    e2e_proc ls = {0};
    e2e_haul_start(&env, &ls, "ls", e2e_url(&env, url, "other"));
    CHECK(e2e_log_wait(&env, "request 6 (default, list other): output waits", 30));
    CHECK(kill(stopped[0].pid, SIGCONT) == 0);
    e2e_proc_wait(&ls, CMD_TIMEOUT);
    CHECK_EXIT(&ls, 0);
    e2e_proc_free(&ls);
    for (int i = 0; i < 4; i++) {
        CHECK(kill(stopped[i].pid, SIGCONT) == 0);
        e2e_proc_wait(&stopped[i], CMD_TIMEOUT);
        CHECK_EXIT(&stopped[i], 0);
        e2e_proc_free(&stopped[i]);
        CHECK_EQ(e2e_tree_diff(other, dst[i], 0), 0);
    }
    e2e_teardown(&env);
}

/* Waits for hauld to exit on its own; returns its exit status, or -1. */
static int server_exit_status(e2e_env *env)
{
    if (!e2e_wait_exit(env->server.pidfd, CMD_TIMEOUT))
        return -1;
    int status = e2e_server_reap_(&env->server);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST_TIMEOUT(sigterm_waits_for_a_request_inside_a_stalled_call, 180)
{
    e2e_env env;
    iofault_start_stalling(&env, "write:stall-here", NULL);
    char slow[PATH_MAX], url[512];
    make_tree(e2e_path(&env, slow, "slow"), 60, 1, 2 * E2E_MIB);
    e2e_proc held = {0};
    e2e_haul_start(&env, &held, "push", slow, e2e_url(&env, url, "slow"));
    CHECK(iofault_stall_wait(&env));

    CHECK(kill(env.server.pid, SIGTERM) == 0);
    CHECK(e2e_log_wait(&env, "SIGTERM received", 10));
    /* New requests are refused meanwhile, at once. */
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", env.url);
    CHECK(p.code != 0 && !p.timed_out);
    e2e_proc_free(&p);
    CHECK(e2e_server_alive(&env.server));
    CHECK(!e2e_proc_exited(&held));

    /* The request ends as it would have, then hauld (waited for first:
     * it may exit as its client does). */
    iofault_stall_release(&env);
    CHECK_EQ(server_exit_status(&env), 0);
    e2e_proc_wait(&held, CMD_TIMEOUT);
    CHECK_EXIT(&held, 0);
    e2e_proc_free(&held);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "slow"), 1);
    e2e_teardown(&env);
}

TEST_TIMEOUT(second_sigterm_ends_a_stalled_request_once_its_call_returns, 180)
{
    e2e_env env;
    iofault_start_stalling(&env, "write:stall-here", NULL);
    char slow[PATH_MAX], url[512];
    make_tree(e2e_path(&env, slow, "slow"), 70, 1, 2 * E2E_MIB);
    e2e_proc held = {0};
    e2e_haul_start(&env, &held, "push", slow, e2e_url(&env, url, "slow"));
    CHECK(iofault_stall_wait(&env));

    CHECK(kill(env.server.pid, SIGTERM) == 0);
    CHECK(e2e_log_wait(&env, "SIGTERM received", 10));
    CHECK(kill(env.server.pid, SIGTERM) == 0);
    CHECK(e2e_log_wait(&env, "received again", 10));
    /* The call cannot be interrupted: hauld waits for it. */
    CHECK(e2e_server_alive(&env.server));

    iofault_stall_release(&env);
    CHECK_EQ(server_exit_status(&env), 0);
    e2e_proc_wait(&held, CMD_TIMEOUT);
    CHECK(!held.timed_out);
    /* The turn that was held may have committed before it saw the end (all
     * the content had arrived); the client then has its snapshot, or
     * learns that its session ended. Either way nothing is lost: the next
     * push completes it and restores it intact. */
    if (held.code == 0)
        CHECK_EQ(e2e_snapshot_count(&env, "default", "slow"), 1);
    e2e_proc_free(&held);
    e2e_start_server(&env);
    push_ok(&env, slow, "slow");
    char dst[PATH_MAX];
    pull_and_compare(&env, "slow", slow, e2e_path(&env, dst, "dst"));
    e2e_teardown(&env);
}
