/*
 * store_tls_test.c - hauld and haul over mutual TLS 1.3, as a user runs
 * them: a PKI made with `haul cert`, a principal's round trip, namespaces
 * that follow the certificate, clients that cannot authenticate, what
 * `openssl s_client` negotiates, the handshake deadline against 1000
 * silent connections, and a SIGHUP that brings in a CRL without dropping
 * the sessions that run.
 *
 * Real processes throughout (see e2e.h); every test SKIPs when the
 * programs are not built, and the s_client checks when `openssl` is not
 * installed.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"

#define CMD_TIMEOUT 30

/*
 * The test's directory, a PKI in DIR/pki (a CA; the server's certificate
 * as server.crt/.key, as e2e.h expects; principals alice, bob and carol;
 * with `crl`, a CRL that revokes carol), and hauld over TLS with `args`.
 */
static void tls_setup(e2e_env *env, int crl, const char *const *args)
{
    e2e_setup(env, E2E_NO_SERVER);
    e2e_join(env->tls_dir, env->dir, "pki");
    e2e_cert(env, "ca", env->tls_dir);
    e2e_cert(env, "server", env->tls_dir, "server");
    e2e_cert(env, "client", env->tls_dir, "alice");
    e2e_cert(env, "client", env->tls_dir, "bob");
    e2e_cert(env, "client", env->tls_dir, "carol");
    int n = 0;
    static char crl_path[PATH_MAX];
    if (crl) {
        e2e_cert(env, "revoke", env->tls_dir, e2e_at(env->tls_dir, "carol.crt"));
        env->server_args[n++] = "--tls-crl";
        env->server_args[n++] = e2e_join(crl_path, env->tls_dir, "ca.crl");
    }
    for (int i = 0; args && args[i]; i++)
        env->server_args[n++] = args[i];
    env->server_args[n] = NULL;
    env->tls = 1;
    e2e_start_server(env);
    char *log = e2e_slurp(env->server.log_path);
    CHECK(e2e_contains(log, "with mutual TLS 1.3"));
    free(log);
}

/* A small tree of a few kinds of entry. */
static void small_tree(const char *src)
{
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "one"), 300000, 1, 0640);
    e2e_mkdir(e2e_at(src, "d"));
    e2e_file(e2e_at(src, "d/two"), 5, 2, 0644);
    e2e_file(e2e_at(src, "d/empty"), 0, 3, 0600);
    CHECK(symlink("one", e2e_at(src, "link")) == 0);
    e2e_stamp_tree(src);
}

/* Pushes src to DATASET as principal `who`, expecting `code`. */
static void push_as(e2e_env *env, const char *who, const char *src, const char *dataset, int code)
{
    char url[512];
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "push", "-q", "--principal", who, src,
             e2e_url(env, url, dataset));
    CHECK_EXIT(&p, code);
    e2e_proc_free(&p);
}

TEST_TIMEOUT(tls_round_trip_and_namespaces, 60)
{
    e2e_env env;
    tls_setup(&env, 0, NULL);
    char src[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    small_tree(src);

    /* alice: the principal comes from HAUL_TLS_DIR/alice.crt. */
    push_as(&env, "alice", src, "ds", 0);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", "--principal", "alice", e2e_url(&env, url, "ds"), dst);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);

    /* The principal defaults to the certificate's with explicit files. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", "--tls-cert", e2e_at(env.tls_dir, "alice.crt"),
             "--tls-key", e2e_at(env.tls_dir, "alice.key"), "--tls-ca",
             e2e_at(env.tls_dir, "ca.crt"), env.url);
    CHECK_EXIT(&p, 0);
    CHECK(e2e_contains(p.out, "ds"));
    e2e_proc_free(&p);

    /* bob's namespace is his own: nothing of alice's shows or comes. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", "--principal", "bob", env.url);
    CHECK_EXIT(&p, 0);
    CHECK(!e2e_contains(p.out, "ds"));
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", "--principal", "bob", e2e_url(&env, url, "ds"),
             e2e_at(env.dir, "bobdst"));
    CHECK_EXIT(&p, 4);
    e2e_proc_free(&p);
    CHECK(access(e2e_at(env.dir, "bobdst/one"), F_OK) != 0);

    /* alice's certificate asking for bob's namespace: refused by the
     * server, which names the mismatch. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", "--principal", "bob", "--tls-cert",
             e2e_at(env.tls_dir, "alice.crt"), "--tls-key", e2e_at(env.tls_dir, "alice.key"),
             "--tls-ca", e2e_at(env.tls_dir, "ca.crt"), env.url);
    CHECK_EXIT(&p, 4);
    CHECK(e2e_contains(p.err, "the server refused: principal bob does not match the certificate"));
    e2e_proc_free(&p);

    /* No client certificate: the handshake fails. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", "--timeout", "5", "--principal", "alice", "--tls-ca",
             e2e_at(env.tls_dir, "ca.crt"), env.url);
    CHECK_EXIT(&p, 3);
    e2e_proc_free(&p);

    /* Plain TCP against a TLS server: no session. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", "--timeout", "5", "--plaintext", "--principal", "alice",
             env.url);
    CHECK_EXIT(&p, 3);
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

/* Without TLS material and without --plaintext, neither program runs,
 * and both say how to make the material. */
TEST_TIMEOUT(tls_required_by_default, 30)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char out[PATH_MAX];
    e2e_path(&env, out, "out");
    char cmd[4 * PATH_MAX + 200];
    snprintf(cmd, sizeof(cmd), "'%s' --listen 127.0.0.1:0 --store '%s' >'%s' 2>&1", env.hauld,
             env.store, out);
    int status = system(cmd);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 1);
    char *text = e2e_slurp(out);
    CHECK(e2e_contains(text, "no TLS certificate"));
    CHECK(e2e_contains(text, "haul cert ca DIR"));
    CHECK(e2e_contains(text, "--plaintext"));
    free(text);
    snprintf(cmd, sizeof(cmd), "env -u HAUL_TLS_DIR '%s' ls haul://127.0.0.1:1 >'%s' 2>&1",
             env.haul, out);
    status = system(cmd);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 1);
    text = e2e_slurp(out);
    CHECK(e2e_contains(text, "haul cert client"));
    CHECK(e2e_contains(text, "--plaintext"));
    free(text);
    e2e_teardown(&env);
}

/* Runs a program (argv[0] a path) with stdin from /dev/null and stdout
 * and stderr into `out`; returns its exit status (-1: killed after
 * timeout seconds). */
static int run_program(const char *const *argv, const char *out, double timeout)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        e2e_child_prepare();
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (fd < 0 || null < 0)
            _exit(126);
        dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    int pidfd = e2e_pidfd_open(pid);
    CHECK(pidfd >= 0);
    int exited = e2e_wait_exit(pidfd, timeout);
    if (!exited)
        kill(pid, SIGKILL);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    close(pidfd);
    return exited && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int have_openssl(void)
{
    const char *const argv[] = {"openssl", "version", NULL};
    return run_program(argv, "/dev/null", 10) == 0;
}

TEST_TIMEOUT(tls_openssl_s_client, 60)
{
    if (!have_openssl())
        SKIP("the openssl program is not installed");
    e2e_env env;
    tls_setup(&env, 0, NULL);
    char connect[64], out[PATH_MAX];
    snprintf(connect, sizeof(connect), "127.0.0.1:%d", env.server.port);
    e2e_path(&env, out, "s_client.out");

    const char *const v13[] = {"openssl",
                               "s_client",
                               "-connect",
                               connect,
                               "-tls1_3",
                               "-cert",
                               e2e_at(env.tls_dir, "alice.crt"),
                               "-key",
                               e2e_at(env.tls_dir, "alice.key"),
                               "-CAfile",
                               e2e_at(env.tls_dir, "ca.crt"),
                               "-verify_return_error",
                               NULL};
    int code = run_program(v13, out, 20);
    char *text = e2e_slurp(out);
    if (!e2e_contains(text, "TLSv1.3"))
        harness_log("openssl s_client -tls1_3 exited %d:\n%s", code, text ? text : "");
    CHECK(e2e_contains(text, "TLSv1.3"));
    CHECK(e2e_contains(text, "Verify return code: 0 (ok)"));
    free(text);

    const char *const v12[] = {"openssl",
                               "s_client",
                               "-connect",
                               connect,
                               "-tls1_2",
                               "-cert",
                               e2e_at(env.tls_dir, "alice.crt"),
                               "-key",
                               e2e_at(env.tls_dir, "alice.key"),
                               "-CAfile",
                               e2e_at(env.tls_dir, "ca.crt"),
                               NULL};
    code = run_program(v12, out, 20);
    text = e2e_slurp(out);
    if (code == 0 || e2e_contains(text, "TLSv1.3") || !e2e_contains(text, "alert"))
        harness_log("openssl s_client -tls1_2 exited %d:\n%s", code, text ? text : "");
    CHECK(code != 0);
    CHECK(!e2e_contains(text, "New, TLSv1.2"));
    CHECK(!e2e_contains(text, "TLSv1.3"));
    free(text);
    e2e_teardown(&env);
}

#define SILENT 1000

TEST_TIMEOUT(tls_handshake_deadline, 60)
{
    /* Two descriptors per silent socket at most (ours, the server's),
     * whoever holds them. */
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_max < SILENT + 200)
        SKIP("RLIMIT_NOFILE's hard limit is %llu", (unsigned long long)rl.rlim_max);
    rl.rlim_cur = rl.rlim_max;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);

    /* The deadline, not the cap on handshakes, is what this test is
     * about: the cap is raised above the thousand. */
    const char *const args[] = {"--handshake-timeout", "1", "--max-handshakes", "2000", NULL};
    e2e_env env;
    tls_setup(&env, 0, args);
    char src[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    small_tree(src);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)env.server.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    static int fds[SILENT];
    static double opened[SILENT];
    for (int i = 0; i < SILENT; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(fds[i] >= 0);
        CHECK(connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)) == 0);
        opened[i] = e2e_now();
    }

    /* A legitimate client gets through while they wait. */
    e2e_proc p = {0};
    double t0 = e2e_now();
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "-q", "--principal", "alice", src,
             e2e_url(&env, url, "ds"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    harness_log("push beside %d silent connections: %.2f s", SILENT, e2e_now() - t0);

    /* Every silent one is closed by the server, at its deadline: not
     * before 1 s (less a margin for the clock of the sweep), and within a
     * bound. */
    static struct pollfd pf[SILENT];
    int open_count = SILENT, early = 0;
    double latest = 0;
    const double deadline = e2e_now() + 15;
    for (int i = 0; i < SILENT; i++)
        pf[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    while (open_count > 0 && e2e_now() < deadline) {
        int n = poll(pf, SILENT, 500);
        CHECK(n >= 0);
        double now = e2e_now();
        for (int i = 0; i < SILENT && n > 0; i++) {
            if (pf[i].fd < 0 || pf[i].revents == 0)
                continue;
            char b;
            ssize_t got = read(pf[i].fd, &b, 1);
            if (got < 0 && errno != ECONNRESET) {
                harness_log("socket %d: %s", i, strerror(errno));
                CHECK(!"a silent connection read an error other than ECONNRESET");
            }
            CHECK(got <= 0); /* the server never says anything to them */
            if (now - opened[i] < 0.9)
                early++;
            if (now - opened[i] > latest)
                latest = now - opened[i];
            close(pf[i].fd);
            pf[i].fd = -1;
            open_count--;
        }
    }
    harness_log("%d silent connections closed; the last after %.2f s; %d early",
                SILENT - open_count, latest, early);
    CHECK_EQ(open_count, 0);
    CHECK_EQ(early, 0);
    CHECK(latest < 10);
    for (int i = 0; i < SILENT; i++)
        if (pf[i].fd >= 0)
            close(pf[i].fd);

    /* The server is well and still serves. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", "--principal", "alice", e2e_url(&env, url, "ds"), dst);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_teardown(&env);
}

TEST_TIMEOUT(tls_sighup_reload, 90)
{
    e2e_env env;
    /* Queues of 16 MiB, so that the pull stopped below cannot have all
     * of the big file on its way (hauld's default queue is 256 MiB). */
    const char *const args[] = {"--queue", "16M", NULL};
    tls_setup(&env, 1, args);
    char src[PATH_MAX], big[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_path(&env, src, "src");
    e2e_path(&env, big, "big");
    e2e_path(&env, dst, "dst");
    small_tree(src);
    /* More than the queues of both sides hold, so that the pull is still
     * running when it is stopped below. */
    e2e_mkdir(big);
    e2e_file(e2e_at(big, "data"), 256ull << 20, 7, 0644);
    e2e_stamp_tree(big);

    /* Before: bob may push, carol (revoked at the start) may not. */
    push_as(&env, "bob", src, "ds", 0);
    push_as(&env, "carol", src, "ds", 3);
    push_as(&env, "alice", big, "big", 0);

    /* A pull of alice's, held in the middle (SIGSTOP) while the server
     * reloads. */
    e2e_proc pull = {0};
    e2e_haul_start(&env, &pull, "pull", "--principal", "alice", e2e_url(&env, url, "big"), dst);
    CHECK(e2e_log_wait(&env, "(alice, pull big): accepted", 20));
    CHECK(kill(pull.pid, SIGSTOP) == 0);
    CHECK(!e2e_proc_exited(&pull));

    e2e_cert(&env, "revoke", env.tls_dir, e2e_at(env.tls_dir, "bob.crt"));
    CHECK(kill(env.server.pid, SIGHUP) == 0);
    CHECK(e2e_log_wait(&env, "TLS certificates and CRL reloaded", 10));

    /* After: bob's certificate is refused, alice's is not. */
    push_as(&env, "bob", src, "ds", 3);
    push_as(&env, "alice", src, "ds", 0);

    /* The pull that ran across the reload was not dropped. */
    char *log = e2e_slurp(env.server.log_path);
    CHECK(!e2e_contains(log, "(alice, pull big): sent snapshot"));
    CHECK(!e2e_contains(log, "(alice, pull big): the session ended"));
    free(log);
    CHECK(kill(pull.pid, SIGCONT) == 0);
    e2e_proc_wait(&pull, CMD_TIMEOUT);
    CHECK_EXIT(&pull, 0);
    e2e_proc_free(&pull);
    CHECK_EQ(e2e_tree_diff(big, dst, 0), 0);

    /* A reload that cannot read its files keeps the old ones. */
    CHECK(truncate(e2e_at(env.tls_dir, "ca.crl"), 10) == 0);
    CHECK(kill(env.server.pid, SIGHUP) == 0);
    CHECK(e2e_log_wait(&env, "cannot reload the TLS files", 10));
    push_as(&env, "alice", src, "ds", 0);
    push_as(&env, "bob", src, "ds", 3);
    e2e_teardown(&env);
}
