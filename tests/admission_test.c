/*
 * admission_test.c - a burst of clients at once, with real processes (see
 * e2e.h): every `haul push` of the burst either succeeds or is refused
 * with the server's reason ("server busy: ..."), none fails with
 * "connection lost".
 *
 * The clients of a burst are forked first and wait on a pipe; closing its
 * write end starts them all at the same instant, so that their
 * connections reach hauld together, as those of a thousand backup jobs
 * started by one timer do.
 *
 *   - at hauld's --max-connections (every connection held by joined
 *     connections of another client), each is told the server is busy,
 *     over plain TCP and over mutual TLS;
 *   - with a small --max-handshakes, the connections beyond it wait in
 *     the kernel's accept queue rather than evict honest clients that are
 *     in their handshake, and every push succeeds;
 *   - at --max-sessions, each push succeeds or is told the server is
 *     busy, with its limit.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"
#include "raw_peer.h"

/* Clients in each burst. */
#define BURST 200
/* How long one client of a burst may take, in seconds: far more than the
 * few seconds a burst takes, so that a slow machine is not a failure. */
#define CLIENT_TIMEOUT 60

/* A burst of `haul push` processes, forked and waiting for the gate. */
typedef struct burst {
    e2e_proc procs[BURST];
    int n;    /* clients in it, at most BURST */
    int gate; /* write end: closing it starts every client */
} burst;

/* Forks n clients, each pushing `src` to its own dataset of the env's
 * server with 2 connections (plain TCP, or mutual TLS as principal
 * "alice" when env->tls); they block until burst_go(). */
static void burst_prepare(e2e_env *env, burst *b, int n, const char *src)
{
    int fds[2];
    CHECK(pipe2(fds, O_CLOEXEC) == 0);
    b->n = n;
    for (int i = 0; i < n; i++) {
        e2e_proc *p = &b->procs[i];
        memset(p, 0, sizeof(*p));
        char url[512], dataset[32];
        snprintf(dataset, sizeof(dataset), "burst%d", i);
        e2e_url(env, url, dataset);
        const char *security = env->tls ? "--principal=alice" : "--plaintext";
        int len = snprintf(p->line, sizeof(p->line), "haul push %s -P 2 %s %s", security, src, url);
        CHECK(len > 0 && (size_t)len < sizeof(p->line));
        e2e_pathf(p->out_path, "%s/burst-%d.out", env->dir, i);
        e2e_pathf(p->err_path, "%s/burst-%d.err", env->dir, i);
        int out = open(p->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int err = open(p->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        CHECK(out >= 0 && err >= 0);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            e2e_child_prepare();
            dup2(out, 1);
            dup2(err, 2);
            /* The gate: EOF once the test closes the write end. */
            char c;
            close(fds[1]);
            while (read(fds[0], &c, 1) > 0)
                ;
            if (env->tls)
                setenv("HAUL_TLS_DIR", env->tls_dir, 1);
            const char *argv[] = {env->haul, "push", security, "-P", "2", "-q", src, url, NULL};
            execv(argv[0], (char *const *)argv);
            _exit(127);
        }
        close(out);
        close(err);
        p->pid = pid;
        p->pidfd = e2e_pidfd_open(pid);
        CHECK(p->pidfd >= 0);
    }
    close(fds[0]);
    b->gate = fds[1];
}

static void burst_go(burst *b)
{
    close(b->gate);
    b->gate = -1;
}

/* What the clients of a burst came to. */
typedef struct burst_outcome {
    int ok;    /* exit 0 */
    int busy;  /* refused (exit 4), saying the server is busy */
    int lost;  /* said "connection lost" */
    int other; /* anything else */
    int shown; /* outputs printed so far, for a failed check */
} burst_outcome;

static void burst_wait(burst *b, burst_outcome *o)
{
    memset(o, 0, sizeof(*o));
    for (int i = 0; i < b->n; i++) {
        e2e_proc *p = &b->procs[i];
        e2e_proc_wait(p, CLIENT_TIMEOUT);
        int lost = e2e_contains(p->err, "connection lost");
        if (p->code == 0 && !lost) {
            o->ok++;
        } else if (p->code == 4 && e2e_contains(p->err, "server busy") && !lost) {
            o->busy++;
        } else {
            if (lost)
                o->lost++;
            else
                o->other++;
            if (o->shown++ < 3)
                e2e_proc_show(p);
        }
        e2e_proc_free(p);
    }
    harness_log("%d clients: %d pushed, %d refused as busy, %d lost their connection, %d other",
                b->n, o->ok, o->busy, o->lost, o->other);
}

/* A small tree to push: a few files of a few KiB. */
static void small_tree(e2e_env *env, char *src)
{
    e2e_path(env, src, "src");
    CHECK(mkdir(src, 0755) == 0);
    for (int i = 0; i < 4; i++) {
        char name[32], path[PATH_MAX];
        snprintf(name, sizeof(name), "f%d", i);
        e2e_file(e2e_join(path, src, name), 3000 + 1000u * (unsigned)i, (uint64_t)i, 0644);
    }
}

/* How many times `needle` is in the server's log. */
static int log_count(e2e_env *env, const char *needle)
{
    char *log = e2e_slurp(env->server.log_path);
    int n = 0;
    for (const char *p = log; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    free(log);
    return n;
}

/* Room for a burst's descriptors in this process and its children. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/*
 * Every connection hauld may hold is taken by joined connections of
 * another client: each client of the burst is refused with the reason,
 * at once, rather than reset until it gives up with "connection lost".
 */
TEST_TIMEOUT(burst_at_the_connection_limit_is_told_the_server_is_busy, 120)
{
    raise_nofile();
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--max-connections";
    env.server_args[1] = "16";
    e2e_start_server(&env);
    char src[PATH_MAX];
    small_tree(&env, src);

    /* 16 connections of one pipe join and stay: the server is full. */
    int held[16];
    for (int i = 0; i < 16; i++) {
        held[i] = raw_connect(env.server.address);
        raw_send_hello(held[i], 0x5eed, (uint32_t)i, 256u << 10);
        raw_header h;
        CHECK(raw_read_frame(held[i], &h, NULL, 0, 1024, 10000));
        CHECK_EQ(h.type, T_HELLO_ACK);
    }

    burst b;
    burst_prepare(&env, &b, BURST, src);
    burst_go(&b);
    burst_outcome o;
    burst_wait(&b, &o);
    CHECK_EQ(o.lost, 0);
    CHECK_EQ(o.other, 0);
    CHECK_EQ(o.busy, BURST);
    CHECK(log_count(&env, "server busy: 16 connections is its limit") > 0);

    for (int i = 0; i < 16; i++)
        close(held[i]);
    e2e_teardown(&env);
}

/*
 * The same over mutual TLS: the refusal comes after the TLS handshake,
 * when the client can read it, and says the server is busy. The
 * connections are held by a `haul bench` of 4 connections.
 */
TEST_TIMEOUT(burst_at_the_connection_limit_over_tls_is_told_the_server_is_busy, 120)
{
    raise_nofile();
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.tls = 1;
    e2e_join(env.tls_dir, env.dir, "pki");
    e2e_cert(&env, "ca", env.tls_dir);
    e2e_cert(&env, "server", env.tls_dir, "server");
    e2e_cert(&env, "client", env.tls_dir, "alice");
    env.server_args[0] = "--max-connections";
    env.server_args[1] = "4";
    e2e_start_server(&env);
    char src[PATH_MAX];
    small_tree(&env, src);

    e2e_proc holder = {0};
    e2e_haul_start(&env, &holder, "bench", "--principal=alice", "-P", "4", "-t", "60", env.url);
    CHECK(e2e_log_wait(&env, "bench -): accepted", 20));

    burst b;
    burst_prepare(&env, &b, 50, src);
    burst_go(&b);
    burst_outcome o;
    burst_wait(&b, &o);
    CHECK_EQ(o.lost, 0);
    CHECK_EQ(o.other, 0);
    CHECK_EQ(o.busy, 50);

    kill(holder.pid, SIGKILL);
    e2e_proc_wait(&holder, 10);
    e2e_proc_free(&holder);
    e2e_teardown(&env);
}

/*
 * 200 clients of 2 connections each against a hauld that takes 8
 * handshakes at once: the connections beyond wait in the accept queue,
 * no honest client's handshake is evicted to make room, and every push
 * succeeds.
 */
TEST_TIMEOUT(burst_beyond_max_handshakes_waits_and_is_served, 120)
{
    raise_nofile();
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--max-handshakes";
    env.server_args[1] = "8";
    env.server_args[2] = "--log-level";
    env.server_args[3] = "info";
    e2e_start_server(&env);
    char src[PATH_MAX];
    small_tree(&env, src);

    burst b;
    burst_prepare(&env, &b, BURST, src);
    burst_go(&b);
    burst_outcome o;
    burst_wait(&b, &o);
    CHECK_EQ(o.lost, 0);
    CHECK_EQ(o.other, 0);
    CHECK_EQ(o.ok, BURST);
    CHECK_EQ(log_count(&env, "connections are in their handshake"), 0);
    e2e_teardown(&env);
}

/*
 * 200 clients against a hauld that holds 8 sessions at once: each push
 * succeeds or is refused as busy, with the limit in its words.
 */
TEST_TIMEOUT(burst_beyond_max_sessions_is_served_or_told_busy, 120)
{
    raise_nofile();
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--max-sessions";
    env.server_args[1] = "8";
    e2e_start_server(&env);
    char src[PATH_MAX];
    small_tree(&env, src);

    burst b;
    burst_prepare(&env, &b, BURST, src);
    burst_go(&b);
    burst_outcome o;
    burst_wait(&b, &o);
    CHECK_EQ(o.lost, 0);
    CHECK_EQ(o.other, 0);
    CHECK_EQ(o.ok + o.busy, BURST);
    CHECK(o.ok >= 8);
    e2e_teardown(&env);
}
