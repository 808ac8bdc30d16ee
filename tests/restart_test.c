/*
 * restart_test.c - a push whose server, client, or both are killed with
 * SIGKILL in its middle, with real hauld and haul processes (see e2e.h).
 * A server restarted on the same port and store does not know the
 * client's session: the client must learn it from the first frame it
 * sends to the new server (ABORT with HAUL_ENOSESSION), exit 3 with a
 * clear text well before its message timeout, and the next push must
 * resume from what was staged and make a snapshot identical to the
 * source.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"

#define CMD_TIMEOUT 30
#define BIG_FILE (128u * E2E_MIB)
/* How much of the big file is staged when a test interrupts its push. */
#define STAGED (16u * E2E_MIB)

/* The tree of every push here; returns the bytes of file content. */
static uint64_t make_tree(const char *root)
{
    return e2e_push_tree(root, BIG_FILE, 11, 2000, 100, 1);
}

static int snapshot_count(e2e_env *env, const char *dataset)
{
    char dir[PATH_MAX];
    DIR *d = opendir(e2e_snapshots_dir(env, dir, dataset));
    if (d == NULL)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.' && strchr(de->d_name, '.') == NULL)
            n++;
    closedir(d);
    return n;
}

/* Sets up the store and its server, makes the source tree in src and
 * starts its push, returning once STAGED bytes of it are staged; returns
 * the bytes of file content of the tree. */
static uint64_t start_push(e2e_env *env, char src[PATH_MAX], e2e_proc *p)
{
    e2e_setup(env, 0);
    e2e_path(env, src, "src");
    const uint64_t total = make_tree(src);
    e2e_push_until_staged(env, p, NULL, "default", src, "data", STAGED);
    return total;
}

/* The next push is accepted at once, resumes (sends less than all) and
 * makes a snapshot identical to the source. */
static void push_resumes(e2e_env *env, const char *src, uint64_t total, uint64_t staged)
{
    char url[512], dst[PATH_MAX];
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "push", src, e2e_url(env, url, "data"), "--json");
    CHECK_EXIT(&p, 0);
    uint64_t sent = 0;
    CHECK(e2e_json_u64(p.out, "bytes_sent", &sent) == 0);
    harness_log("the next push sent %llu of %llu bytes", (unsigned long long)sent,
                (unsigned long long)total);
    CHECK_LT(sent, total - staged);
    e2e_proc_free(&p);
    CHECK_EQ(snapshot_count(env, "data"), 1);
    e2e_path(env, dst, "dst");
    e2e_haul(env, &p, CMD_TIMEOUT, "pull", e2e_url(env, url, "data"), dst);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_haul(env, &p, CMD_TIMEOUT, "verify", e2e_url(env, url, "data"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
}

/* A new hauld on the store and port of the one killed. */
static void restart_server(e2e_env *env)
{
    char listen[64];
    const int port = env->server.port;
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    CHECK(e2e_server_start_at(env, &env->server, listen) == 0);
    CHECK_EQ(env->server.port, port);
}

TEST_TIMEOUT(server_killed_and_restarted_the_client_learns_at_its_first_frame, 120)
{
    e2e_env env;
    char src[PATH_MAX];
    e2e_proc p;
    const uint64_t total = start_push(&env, src, &p);
    e2e_server_kill(&env.server);
    CHECK_EQ(snapshot_count(&env, "data"), 0);
    restart_server(&env);

    /* The client's message timeout is a minute; it redials within its
     * backoff (2 s at most) and is told at its first frame. */
    const double restarted = e2e_now();
    e2e_proc_wait(&p, CMD_TIMEOUT);
    const double took = e2e_now() - restarted;
    harness_log("the interrupted push exited %d, %.2f s after the restart", p.code, took);
    if (p.code != 3 || !e2e_contains(p.err, "no longer knows the session"))
        e2e_proc_show(&p);
    CHECK_EXIT(&p, 3);
    CHECK(e2e_contains(p.err, "no longer knows the session"));
    CHECK_LT(took, 10.0);
    e2e_proc_free(&p);

    push_resumes(&env, src, total, STAGED);
    e2e_teardown(&env);
}

TEST_TIMEOUT(client_killed_the_next_push_resumes_at_once, 120)
{
    e2e_env env;
    char src[PATH_MAX];
    e2e_proc p;
    const uint64_t total = start_push(&env, src, &p);
    CHECK(kill(p.pid, SIGKILL) == 0);
    e2e_proc_wait(&p, 10);
    CHECK_EQ(p.sig, SIGKILL);
    e2e_proc_free(&p);
    CHECK_EQ(snapshot_count(&env, "data"), 0);

    push_resumes(&env, src, total, STAGED);
    e2e_teardown(&env);
}

TEST_TIMEOUT(server_and_client_killed_the_next_push_resumes, 120)
{
    e2e_env env;
    char src[PATH_MAX];
    e2e_proc p;
    const uint64_t total = start_push(&env, src, &p);
    CHECK(kill(p.pid, SIGKILL) == 0);
    e2e_server_kill(&env.server);
    e2e_proc_wait(&p, 10);
    CHECK_EQ(p.sig, SIGKILL);
    e2e_proc_free(&p);
    CHECK_EQ(snapshot_count(&env, "data"), 0);
    restart_server(&env);

    push_resumes(&env, src, total, STAGED);
    e2e_teardown(&env);
}
