/*
 * takeover_test.c - a push of a dataset that another push still holds,
 * with real hauld and haul processes (see e2e.h): the client of the
 * running push stopped (SIGSTOP) and ended with `haul push --takeover` of
 * the same principal, refused to another principal that shares the
 * namespace, and a client killed with SIGKILL whose push the next one
 * takes over at once (not after the server's give-up delay) and resumes.
 * Each ends with the snapshot pulled back and compared with the source.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"

/* Seconds a command may take. */
#define CMD_TIMEOUT 30
/* The big file of the tree: large enough that a push is still running
 * when the test has seen part of it staged. */
#define BIG_FILE (128u * E2E_MIB)

/* What `haul push --json` reports. */
typedef struct push_report {
    char snapshot[80];
    uint64_t bytes_sent, bytes_linked, files;
} push_report;

static void parse_report(const e2e_proc *p, push_report *r)
{
    memset(r, 0, sizeof(*r));
    if (e2e_json_str(p->out, "snapshot", r->snapshot, sizeof(r->snapshot)) != 0 ||
        e2e_json_u64(p->out, "bytes_sent", &r->bytes_sent) != 0 ||
        e2e_json_u64(p->out, "bytes_linked", &r->bytes_linked) != 0 ||
        e2e_json_u64(p->out, "files", &r->files) != 0) {
        e2e_proc_show(p);
        CHECK(!"haul push --json did not print the documented JSON object");
    }
}

/* The tree of every push here; returns the bytes of file content. */
static uint64_t make_tree(const char *root)
{
    return e2e_push_tree(root, BIG_FILE, 7, 1000, 300, 0);
}

/* Sets up the store and its server, makes the source tree in src (dst is
 * where it is pulled back) and starts its push by the default principal,
 * returning once `bytes` of it are staged; returns the bytes of file
 * content of the tree. */
static uint64_t start_held_push(e2e_env *env, char src[PATH_MAX], char dst[PATH_MAX],
                                e2e_proc *held, uint64_t bytes)
{
    e2e_setup(env, 0);
    e2e_path(env, src, "src");
    e2e_path(env, dst, "dst");
    const uint64_t total = make_tree(src);
    e2e_push_until_staged(env, held, NULL, "default", src, "data", bytes);
    return total;
}

static void pull_and_compare(e2e_env *env, const char *principal, const char *dataset,
                             const char *src, const char *dst)
{
    char url[512];
    e2e_proc p = {0};
    if (principal)
        e2e_haul(env, &p, CMD_TIMEOUT, "--principal", principal, "pull", e2e_url(env, url, dataset),
                 dst);
    else
        e2e_haul(env, &p, CMD_TIMEOUT, "pull", e2e_url(env, url, dataset), dst);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(takeover_ends_a_stopped_push_of_the_same_principal, 120)
{
    e2e_env env;
    char src[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_proc held;
    const uint64_t total = start_held_push(&env, src, dst, &held, 8 * E2E_MIB);
    CHECK(kill(held.pid, SIGSTOP) == 0);

    /* Its client is stopped but connected: a plain push is refused, and
     * told how to end it. */
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "data"));
    CHECK_EXIT(&p, 4);
    if (!e2e_contains(p.err, "another push to this dataset is running") ||
        !e2e_contains(p.err, "--takeover"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.err, "another push to this dataset is running"));
    CHECK(e2e_contains(p.err, "--takeover"));
    e2e_proc_free(&p);

    /* --takeover of the same principal ends it and resumes from what it
     * staged. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "--takeover", src, e2e_url(&env, url, "data"),
             "--json");
    CHECK_EXIT(&p, 0);
    push_report r;
    parse_report(&p, &r);
    harness_log("push with --takeover: %llu of %llu bytes sent", (unsigned long long)r.bytes_sent,
                (unsigned long long)total);
    CHECK_LT(r.bytes_sent, total - 8 * E2E_MIB);
    e2e_proc_free(&p);
    CHECK(e2e_log_wait(&env, "takes the dataset over from request 1 (--takeover)", 5));
    CHECK_EQ(e2e_snapshot_count(&env, "default", "data"), 1);

    /* The client taken over learns it when it runs again, and ends. */
    CHECK(kill(held.pid, SIGCONT) == 0);
    e2e_proc_wait(&held, CMD_TIMEOUT);
    CHECK(!held.timed_out);
    if (held.code != 3 || !e2e_contains(held.err, "taken over by another push"))
        e2e_proc_show(&held);
    CHECK_EXIT(&held, 3);
    CHECK(e2e_contains(held.err, "taken over by another push"));
    e2e_proc_free(&held);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "data"), 1);

    pull_and_compare(&env, NULL, "data", src, dst);
    e2e_teardown(&env);
}

/* Two principals with one namespace: neither may end the other's push. */
static const char shared_config[] = "[principal alice]\n"
                                    "root = shared\n"
                                    "[principal bob]\n"
                                    "root = shared\n";

TEST_TIMEOUT(takeover_of_another_principals_push_is_refused, 120)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char conf[PATH_MAX], src[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_path(&env, conf, "hauld.conf");
    FILE *f = fopen(conf, "w");
    CHECK(f != NULL);
    fputs(shared_config, f);
    CHECK(fclose(f) == 0);
    env.server_args[0] = "--config";
    env.server_args[1] = conf;
    e2e_start_server(&env);
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    make_tree(src);

    e2e_proc held = {0};
    e2e_push_until_staged(&env, &held, "alice", "shared", src, "data", 8 * E2E_MIB);
    CHECK(kill(held.pid, SIGSTOP) == 0);

    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "--principal", "bob", "push", "--takeover", src,
             e2e_url(&env, url, "data"));
    CHECK_EXIT(&p, 4);
    if (!e2e_contains(p.err, "another principal's push to this dataset is running"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.err, "another principal's push to this dataset is running"));
    CHECK(e2e_contains(p.err, "same principal"));
    e2e_proc_free(&p);
    CHECK(e2e_log_wait(&env, "refused: request 1 of principal alice pushes the dataset", 5));

    /* The push of alice was not touched: it goes on and completes. */
    CHECK(kill(held.pid, SIGCONT) == 0);
    e2e_proc_wait(&held, CMD_TIMEOUT);
    CHECK_EXIT(&held, 0);
    e2e_proc_free(&held);
    CHECK_EQ(e2e_snapshot_count(&env, "shared", "data"), 1);
    pull_and_compare(&env, "bob", "data", src, dst);
    e2e_teardown(&env);
}

TEST_TIMEOUT(push_of_a_killed_client_is_taken_over_at_once, 120)
{
    e2e_env env;
    char src[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_proc held;
    const uint64_t total = start_held_push(&env, src, dst, &held, 16 * E2E_MIB);
    CHECK(kill(held.pid, SIGKILL) == 0);
    e2e_proc_wait(&held, 10);
    CHECK_EQ(held.sig, SIGKILL);
    e2e_proc_free(&held);

    /* The very next push is accepted, without --takeover and without
     * waiting for the server to give the gone client up. */
    const double start = e2e_now();
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "data"), "--json");
    CHECK_EXIT(&p, 0);
    push_report r;
    parse_report(&p, &r);
    harness_log("push after kill -9: %llu of %llu bytes sent in %.2f s",
                (unsigned long long)r.bytes_sent, (unsigned long long)total, e2e_now() - start);
    CHECK_LT(r.bytes_sent, total - 16 * E2E_MIB);
    e2e_proc_free(&p);
    CHECK(e2e_log_wait(&env, "takes the dataset over from request 1 (its client has no connection",
                       5));
    CHECK_EQ(e2e_snapshot_count(&env, "default", "data"), 1);
    pull_and_compare(&env, NULL, "data", src, dst);
    e2e_teardown(&env);
}

/* A push that finds the dataset held by a client that still looks
 * connected waits a moment before it is refused: the server reads each
 * connection on the I/O thread it runs on, and those of a client killed
 * just before may not all have been seen closing yet. Here the client is
 * stopped (connected) when the push comes, and killed while the push
 * waits: the push takes the dataset over as soon as the old client's
 * connections are seen gone. */
TEST_TIMEOUT(push_waiting_for_a_held_dataset_takes_over_when_its_client_dies, 120)
{
    e2e_env env;
    char src[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_proc held;
    const uint64_t total = start_held_push(&env, src, dst, &held, 8 * E2E_MIB);
    CHECK(kill(held.pid, SIGSTOP) == 0);
    e2e_proc p = {0};
    e2e_haul_start(&env, &p, "push", src, e2e_url(&env, url, "data"), "--json");
    CHECK(e2e_log_wait(&env, "waits up to", 10));
    CHECK(kill(held.pid, SIGKILL) == 0);
    e2e_proc_wait(&held, 10);
    CHECK_EQ(held.sig, SIGKILL);
    e2e_proc_free(&held);
    e2e_proc_wait(&p, CMD_TIMEOUT);
    CHECK_EXIT(&p, 0);
    push_report r;
    parse_report(&p, &r);
    CHECK_LT(r.bytes_sent, total - 8 * E2E_MIB);
    e2e_proc_free(&p);
    CHECK(e2e_log_wait(&env, "takes the dataset over from request 1 (its client has no connection",
                       5));
    CHECK_EQ(e2e_snapshot_count(&env, "default", "data"), 1);
    pull_and_compare(&env, NULL, "data", src, dst);
    e2e_teardown(&env);
}

TEST_TIMEOUT(takeover_is_for_push_only, 30)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", "--takeover", "haul://127.0.0.1:1/data",
             e2e_at(env.dir, "dst"));
    CHECK_EXIT(&p, 1);
    CHECK(e2e_contains(p.err, "--takeover applies to push only"));
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "--help");
    CHECK_EXIT(&p, 0);
    CHECK(e2e_contains(p.out, "--takeover"));
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */
/* A partition                                                              */
/* ------------------------------------------------------------------------ */

/* build/tests/fault-proxy between haul and hauld. */
typedef struct proxy {
    pid_t pid;
    int pidfd;
    char address[256];
} proxy;

/* Starts the proxy towards `target`, or SKIPs when it is not built. */
static void proxy_start(e2e_env *env, proxy *px, const char *target)
{
    char program[PATH_MAX], log[PATH_MAX];
    e2e_find_program(program, "tests/fault-proxy");
    e2e_path(env, log, "fault-proxy.log");
    int fds[2];
    CHECK(pipe2(fds, O_CLOEXEC) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        e2e_child_prepare();
        dup2(fds[1], 1);
        int err = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (err >= 0)
            dup2(err, 2);
        execl(program, program, "--listen", "127.0.0.1:0", "--target", target, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    px->pid = pid;
    px->pidfd = e2e_pidfd_open(pid);
    CHECK(px->pidfd >= 0);
    /* Its first line: "listening HOST:PORT". */
    char line[256];
    size_t len = 0;
    while (len < sizeof(line) - 1) {
        struct pollfd pf = {.fd = fds[0], .events = POLLIN};
        CHECK(poll(&pf, 1, 10000) == 1);
        ssize_t n = read(fds[0], line + len, 1);
        CHECK(n == 1);
        if (line[len] == '\n')
            break;
        len++;
    }
    line[len] = '\0';
    close(fds[0]);
    CHECK(strncmp(line, "listening ", 10) == 0);
    snprintf(px->address, sizeof(px->address), "%s", line + 10);
}

static void proxy_signal(proxy *px, int sig)
{
    CHECK(kill(px->pid, sig) == 0);
}

static void proxy_stop(proxy *px)
{
    kill(px->pid, SIGTERM);
    if (!e2e_wait_exit(px->pidfd, 10))
        kill(px->pid, SIGKILL);
    waitpid(px->pid, NULL, 0);
    close(px->pidfd);
}

/*
 * The link between a client and hauld loses everything (a blackhole, not
 * a reset) in the middle of a push. With small keepalive and idle
 * timeouts on both sides, the client gives up (exit 3) and hauld closes
 * the silent connections, so that the push retried at once is accepted
 * and resumes, instead of being refused while hauld waits for half-open
 * connections to die. The retry goes to hauld directly while the old
 * path stays black: healed, the proxy would hand hauld the FINs of the
 * client's closed connections at once, which a real network that lost
 * them for the partition's length does not, and hauld would learn from
 * them rather than from its own idle timeout.
 */
TEST_TIMEOUT(retry_after_a_partition_is_accepted_at_once_and_resumes, 120)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--keepalive";
    env.server_args[1] = "200";
    env.server_args[2] = "--idle-timeout";
    env.server_args[3] = "1000";
    e2e_start_server(&env);
    proxy px;
    proxy_start(&env, &px, env.server.address);
    char src[PATH_MAX], dst[PATH_MAX], url[512], direct[512], staging[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    const uint64_t total = make_tree(src);
    snprintf(url, sizeof(url), "haul://%s/data", px.address);
    e2e_pathf(staging, "%s/default/data/.staging", env.store);

    e2e_proc first = {0};
    e2e_haul_start(&env, &first, "push", "--keepalive", "200", "--idle-timeout", "1000",
                   "--timeout", "3", src, url, "--json");
    int ok = 0;
    E2E_WAIT_UNTIL(ok, e2e_largest_file(staging) > 8 * E2E_MIB || e2e_proc_exited(&first), 30000);
    if (e2e_proc_exited(&first)) {
        e2e_proc_wait(&first, 1);
        e2e_proc_show(&first);
        CHECK(!"the push ended before the partition");
    }
    CHECK(ok);
    proxy_signal(&px, SIGUSR1);
    const double cut = e2e_now();
    e2e_proc_wait(&first, CMD_TIMEOUT);
    harness_log("the push exited %d %.1f s into the partition", first.code, e2e_now() - cut);
    CHECK_EXIT(&first, 3);
    e2e_proc_free(&first);

    /* hauld found its connections silent within its idle timeout. */
    CHECK(e2e_log_wait(&env, "its client has no connection left (silent for the idle timeout)", 5));

    const double retried = e2e_now();
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "--keepalive", "200", "--idle-timeout", "1000", src,
             e2e_url(&env, direct, "data"), "--json");
    const double took = e2e_now() - retried;
    CHECK_EXIT(&p, 0);
    push_report r;
    parse_report(&p, &r);
    harness_log("the retry after the partition: %llu of %llu bytes sent in %.2f s",
                (unsigned long long)r.bytes_sent, (unsigned long long)total, took);
    proxy_signal(&px, SIGUSR2);
    CHECK_LT(r.bytes_sent, total - 8 * E2E_MIB);
    e2e_proc_free(&p);
    /* Taken over, not given up after the grace: hauld knew from its idle
     * timeout that the client was gone. */
    CHECK(e2e_log_wait(&env, "takes the dataset over from request 1 (its client has no connection",
                       5));
    CHECK_EQ(e2e_snapshot_count(&env, "default", "data"), 1);
    proxy_stop(&px);
    pull_and_compare(&env, NULL, "data", src, dst);
    e2e_teardown(&env);
}
