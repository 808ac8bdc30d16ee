/*
 * store_auth_test.c - what each principal may do in hauld's store, as its
 * configuration file says (hauld(8), "Principals"): rights (create, read,
 * delete), namespaces shared through a root, the quota, and the limits of
 * sessions and connections; over mutual TLS, with certificates made by
 * `haul cert`, and real processes (see e2e.h).
 *
 * Requests that haul never makes (a push that names a snapshot, to write
 * into it) are made with libhaul and the storage protocol's codec
 * directly, as a hostile client would.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"
#include "haul.h"
#include "proto/store.h"

#define CMD_TIMEOUT 30

/*
 * The test's directory, a PKI in DIR/pki (the server's certificate and
 * the principals' given), the configuration file DIR/hauld.conf with
 * `config` in it, and hauld over TLS with it.
 */
static void auth_setup(e2e_env *env, const char *config, const char *const *principals)
{
    e2e_setup(env, E2E_NO_SERVER);
    e2e_join(env->tls_dir, env->dir, "pki");
    e2e_cert(env, "ca", env->tls_dir);
    e2e_cert(env, "server", env->tls_dir, "server");
    for (int i = 0; principals[i]; i++)
        e2e_cert(env, "client", env->tls_dir, principals[i]);
    static char conf[PATH_MAX];
    e2e_join(conf, env->dir, "hauld.conf");
    FILE *f = fopen(conf, "w");
    CHECK(f != NULL);
    fputs(config, f);
    CHECK(fclose(f) == 0);
    env->server_args[0] = "--config";
    env->server_args[1] = conf;
    env->server_args[2] = NULL;
    env->tls = 1;
    e2e_start_server(env);
}

/* Rewrites the configuration file and has hauld reload it. */
static void auth_reload(e2e_env *env, const char *config)
{
    FILE *f = fopen(e2e_at(env->dir, "hauld.conf"), "w");
    CHECK(f != NULL);
    fputs(config, f);
    CHECK(fclose(f) == 0);
    CHECK(kill(env->server.pid, SIGHUP) == 0);
}

static void small_tree(const char *src, uint64_t size, uint64_t seed)
{
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "one"), size, seed, 0640);
    e2e_mkdir(e2e_at(src, "d"));
    e2e_file(e2e_at(src, "d/two"), 5, seed + 1, 0644);
    e2e_stamp_tree(src);
}

/* Runs haul as principal `who`; the exit status must be `code`. The
 * output stays in *p for the test to look at (free it). */
#define haul_as(env, p, who, code, ...)                                                            \
    do {                                                                                           \
        e2e_haul((env), (p), CMD_TIMEOUT, "--principal", (who), __VA_ARGS__);                      \
        CHECK_EXIT((p), (code));                                                                   \
    } while (0)

/* Pushes src as `who`, expecting `code`; returns the snapshot id (static
 * storage) when it succeeded. */
static const char *push_as(e2e_env *env, const char *who, const char *src, const char *dataset,
                           int code)
{
    static char id[4][HSP_SNAPSHOT_MAX + 1];
    static int next;
    char url[512];
    e2e_proc p = {0};
    haul_as(env, &p, who, code, "push", "-q", src, e2e_url(env, url, dataset));
    char *out = id[next++ % 4];
    out[0] = '\0';
    if (code == 0)
        CHECK_EQ(sscanf(p.out, "snapshot %64s", out), 1);
    e2e_proc_free(&p);
    return out;
}

/* The number of snapshots `who` sees in a dataset. */
static int count_snapshots(e2e_env *env, const char *who, const char *dataset)
{
    char url[512];
    e2e_proc p = {0};
    haul_as(env, &p, who, 0, "ls", "--json", e2e_url(env, url, dataset));
    uint64_t n = 0;
    CHECK(e2e_json_u64(p.out, "count", &n) == 0);
    e2e_proc_free(&p);
    return (int)n;
}

/* ---- a client of our own, on libhaul --------------------------------------------- */

typedef struct raw {
    haul_engine *engine;
    haul_session *session;
} raw;

/* Opens a session of `who` carrying a request; returns the event that
 * answered it (SESSION_OPEN or SESSION_REFUSED), with its reason. */
static int raw_open(e2e_env *env, raw *c, const char *who, int op, const char *dataset,
                    const char *snapshot, uint32_t *reason)
{
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.io_threads = 1;
    CHECK_OK(haul_engine_new(&ec, &c->engine));
    char crt[PATH_MAX], key[PATH_MAX], name[HSP_NAME_MAX + 8];
    snprintf(name, sizeof(name), "%s.crt", who);
    e2e_join(crt, env->tls_dir, name);
    snprintf(name, sizeof(name), "%s.key", who);
    e2e_join(key, env->tls_dir, name);
    haul_tls_config tls = {crt, key, e2e_at(env->tls_dir, "ca.crt"), NULL};
    hsp_request req = {.op = op};
    snprintf(req.dataset, sizeof(req.dataset), "%s", dataset);
    snprintf(req.snapshot, sizeof(req.snapshot), "%s", snapshot);
    uint8_t ctx[512];
    size_t clen = hsp_request_encode(&req, ctx, sizeof(ctx));
    CHECK(clen > 0);
    char address[64];
    snprintf(address, sizeof(address), "127.0.0.1:%d", env->server.port);
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = who;
    sc.tls = &tls;
    sc.context = ctx;
    sc.context_len = clen;
    sc.max_message = HSP_MESSAGE_MAX;
    CHECK_OK(haul_session_new(c->engine, &sc, &c->session));
    for (;;) {
        haul_event ev;
        int n = haul_engine_wait(c->engine, &ev, 1, 10000);
        CHECK_GE(n, 1);
        if (ev.type == HAUL_EV_SESSION_OPEN || ev.type == HAUL_EV_SESSION_REFUSED) {
            *reason = ev.type == HAUL_EV_SESSION_REFUSED ? (uint32_t)ev.reason : 0;
            return ev.type;
        }
    }
}

static void raw_close(raw *c)
{
    haul_session_free(c->session);
    haul_engine_free(c->engine);
}

/* ---- the tests ------------------------------------------------------------------ */

static const char *const people[] = {"alice", "restore", "janitor", "mallory", NULL};

/* alice backs up with the default rights; restore reads and janitor
 * deletes in alice's namespace; anybody else is refused. */
static const char rights_config[] = "log-level = info\n"
                                    "[principal alice]\n"
                                    "[principal restore]\n"
                                    "root = alice\n"
                                    "rights = read\n"
                                    "[principal janitor]\n"
                                    "root = alice   # the same namespace\n"
                                    "rights = read, delete\n"
                                    "[principal *]\n"
                                    "rights = none\n";

TEST_TIMEOUT(auth_rights, 90)
{
    e2e_env env;
    auth_setup(&env, rights_config, people);
    char src[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    small_tree(src, 200000, 1);
    e2e_proc p = {0};

    /* alice may create, twice, and read. */
    char first[HSP_SNAPSHOT_MAX + 1];
    snprintf(first, sizeof(first), "%s", push_as(&env, "alice", src, "ds", 0));
    CHECK(first[0] != '\0');
    e2e_file(e2e_at(src, "d/two"), 7, 9, 0644);
    e2e_stamp_tree(src);
    CHECK(push_as(&env, "alice", src, "ds", 0)[0] != '\0');
    CHECK_EQ(count_snapshots(&env, "alice", "ds"), 2);

    /* A principal without the delete right: refused, both snapshots
     * stay, and the first still restores. */
    char snap_url[600];
    snprintf(snap_url, sizeof(snap_url), "%s@%s", e2e_url(&env, url, "ds"), first);
    haul_as(&env, &p, "alice", 4, "delete", snap_url);
    CHECK(e2e_contains(p.err, "not allowed for this principal"));
    e2e_proc_free(&p);
    haul_as(&env, &p, "alice", 4, "prune", "--keep", "0", e2e_url(&env, url, "ds"));
    e2e_proc_free(&p);
    CHECK(e2e_log_wait(&env, "(alice, delete ds@", 5));
    CHECK(e2e_log_wait(&env, "refused: the principal's rights are create, read", 5));
    CHECK_EQ(count_snapshots(&env, "alice", "ds"), 2);
    CHECK_EQ(count_snapshots(&env, "restore", "ds"), 2);
    CHECK_EQ(count_snapshots(&env, "janitor", "ds"), 2);

    /* Nobody may write into a committed snapshot, not even its owner:
     * a push that names one (haul never sends it) is refused. */
    raw c;
    uint32_t reason = 0;
    CHECK_EQ(raw_open(&env, &c, "alice", HSP_PUSH, "ds", first, &reason), HAUL_EV_SESSION_REFUSED);
    CHECK_EQ(reason, HSP_R_DENIED);
    raw_close(&c);
    CHECK(e2e_log_wait(&env, "refused: snapshots are never overwritten", 5));

    /* restore reads alice's namespace and may neither add nor delete. */
    haul_as(&env, &p, "restore", 0, "pull", snap_url, dst);
    e2e_proc_free(&p);
    haul_as(&env, &p, "restore", 0, "verify", snap_url);
    e2e_proc_free(&p);
    haul_as(&env, &p, "restore", 4, "push", src, e2e_url(&env, url, "ds"));
    e2e_proc_free(&p);
    haul_as(&env, &p, "restore", 4, "delete", snap_url);
    e2e_proc_free(&p);

    /* Someone without a section of their own gets the "*" one: none. */
    haul_as(&env, &p, "mallory", 4, "ls", env.url);
    CHECK(e2e_contains(p.err, "not allowed for this principal"));
    e2e_proc_free(&p);
    haul_as(&env, &p, "mallory", 4, "push", src, e2e_url(&env, url, "ds"));
    e2e_proc_free(&p);
    CHECK_EQ(count_snapshots(&env, "alice", "ds"), 2);

    /* janitor holds the delete right: the first snapshot goes, and the
     * second, which shares its unchanged file, restores whole. */
    haul_as(&env, &p, "janitor", 0, "delete", snap_url);
    CHECK(e2e_contains(p.out, "deleted"));
    e2e_proc_free(&p);
    CHECK_EQ(count_snapshots(&env, "alice", "ds"), 1);
    haul_as(&env, &p, "janitor", 4, "push", src, e2e_url(&env, url, "ds"));
    e2e_proc_free(&p);
    e2e_rm_rf(dst);
    haul_as(&env, &p, "restore", 0, "pull", e2e_url(&env, url, "ds"), dst);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    haul_as(&env, &p, "janitor", 4, "delete", snap_url); /* gone: no such snapshot */
    CHECK(e2e_contains(p.err, "no such snapshot"));
    e2e_proc_free(&p);

    /* prune keeps the newest N. */
    CHECK(push_as(&env, "alice", src, "ds", 0)[0] != '\0');
    CHECK(push_as(&env, "alice", src, "ds", 0)[0] != '\0');
    CHECK_EQ(count_snapshots(&env, "alice", "ds"), 3);
    haul_as(&env, &p, "janitor", 0, "prune", "--keep", "1", e2e_url(&env, url, "ds"));
    CHECK(e2e_contains(p.out, "2 snapshots deleted, 1 kept"));
    e2e_proc_free(&p);
    CHECK_EQ(count_snapshots(&env, "alice", "ds"), 1);

    /* SIGHUP: alice gains the delete right for the requests to come. */
    char reload[sizeof(rights_config) + 64];
    snprintf(reload, sizeof(reload), "%s", rights_config);
    char *sec = strstr(reload, "[principal alice]\n");
    CHECK(sec != NULL);
    memmove(sec + 18 + 15, sec + 18, strlen(sec + 18) + 1);
    memcpy(sec + 18, "rights = all  \n", 15);
    auth_reload(&env, reload);
    CHECK(e2e_log_wait(&env, "principal sections reloaded", 10));
    haul_as(&env, &p, "alice", 0, "prune", "--keep", "0", e2e_url(&env, url, "ds"));
    e2e_proc_free(&p);
    CHECK_EQ(count_snapshots(&env, "alice", "ds"), 0);

    /* A reload of a broken file keeps what was. */
    auth_reload(&env, "[principal alice]\nrights = fly\n");
    CHECK(e2e_log_wait(&env, "keeping the principals as they were", 10));
    CHECK(push_as(&env, "alice", src, "ds", 0)[0] != '\0');
    e2e_teardown(&env);
}

/* A quota counts the bytes stored in the namespace, a file that several
 * snapshots share once; a push that would go beyond it fails before its
 * data is sent, and commits nothing. */
TEST_TIMEOUT(auth_quota, 60)
{
    static const char *const who[] = {"alice", NULL};
    e2e_env env;
    auth_setup(&env, "[principal alice]\nquota = 3M\n", who);
    char a[PATH_MAX], b[PATH_MAX];
    e2e_path(&env, a, "a");
    e2e_path(&env, b, "b");
    small_tree(a, 2u << 20, 1);
    small_tree(b, 2u << 20, 2);
    e2e_proc p = {0};
    char url[512];

    CHECK(push_as(&env, "alice", a, "one", 0)[0] != '\0');
    /* The same tree again: nothing new to store. */
    CHECK(push_as(&env, "alice", a, "one", 0)[0] != '\0');
    /* 2 MiB more would make 4 MiB. */
    haul_as(&env, &p, "alice", 3, "push", b, e2e_url(&env, url, "two"));
    CHECK(e2e_contains(p.err, "quota of principal alice would be exceeded"));
    e2e_proc_free(&p);
    CHECK_EQ(count_snapshots(&env, "alice", "two"), 0);
    CHECK_EQ(count_snapshots(&env, "alice", "one"), 2);
    /* The refused push sent no file data. */
    char *log = e2e_slurp(env.server.log_path);
    CHECK(e2e_contains(log, "this push needs 2097157 more")); /* 2 MiB + 5 bytes */
    free(log);
    e2e_teardown(&env);
}

/* max-sessions: a principal's requests at once; max-connections: its
 * joined connections at once, over all its pipes. */
TEST_TIMEOUT(auth_session_and_connection_limits, 60)
{
    static const char *const who[] = {"alice", "bob", NULL};
    e2e_env env;
    auth_setup(&env,
               "[principal alice]\nmax-sessions = 1\nmax-connections = 2\n"
               "[principal bob]\n",
               who);
    char src[PATH_MAX], url[512];
    e2e_path(&env, src, "src");
    small_tree(src, 8u << 20, 3);
    e2e_proc p = {0};

    /* A push of alice's held open (no entries sent yet) takes her one
     * session; bob is not limited by it. */
    raw held;
    uint32_t reason = 0;
    CHECK_EQ(raw_open(&env, &held, "alice", HSP_PUSH, "held", "", &reason), HAUL_EV_SESSION_OPEN);
    haul_as(&env, &p, "alice", 4, "ls", env.url);
    if (!e2e_contains(p.err, "as many sessions as it may have at once"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.err, "as many sessions as it may have at once"));
    e2e_proc_free(&p);
    haul_as(&env, &p, "bob", 0, "ls", env.url);
    e2e_proc_free(&p);
    raw_close(&held);
    CHECK(e2e_log_wait(&env, "(alice, push held): the session ended", 10) ||
          e2e_log_wait(&env, "(alice, push held): the client closed", 1));

    /* Six connections asked, two joined: the push goes through them. */
    haul_as(&env, &p, "alice", 0, "push", "-P", "6", src, e2e_url(&env, url, "ds"));
    e2e_proc_free(&p);
    CHECK(e2e_log_wait(&env, "principal \"alice\" has joined its 2 connections", 5));
    char *log = e2e_slurp(env.server.log_path);
    CHECK(!e2e_contains(log, "principal \"bob\" has joined"));
    free(log);
    haul_as(&env, &p, "bob", 0, "push", "-P", "6", src, e2e_url(&env, url, "ds"));
    e2e_proc_free(&p);
    log = e2e_slurp(env.server.log_path);
    CHECK(!e2e_contains(log, "principal \"bob\" has joined"));
    free(log);
    e2e_teardown(&env);
}

/* A configuration file that says something hauld does not understand
 * stops it at the start, naming the line. */
TEST_TIMEOUT(auth_config_errors, 30)
{
    static const struct {
        const char *text, *says;
    } bad[] = {
        {"[principal alice]\nrights = fly\n", "hauld.conf:2: rights are a list"},
        {"[principal alice]\nroot = ../etc\n", "hauld.conf:2: root '../etc' is not"},
        {"[principal alice]\nroot = /etc\n", "hauld.conf:2: root '/etc' is not"},
        {"[principal alice]\nquota = lots\n", "hauld.conf:2: quota wants a size"},
        {"[principal alice]\ncolour = red\n", "hauld.conf:2: unknown key 'colour'"},
        {"[principal ../x]\n", "hauld.conf:1: '../x' is not a principal's name"},
        {"[principal a]\n[principal a]\n", "hauld.conf:2: a second section"},
        {"[group a]\n", "hauld.conf:1: unknown section"},
        {"[principal a]\n[principal b]\nroot = a/inner\n",
         "the namespace of principal b (a/inner) lies inside that of principal a (a)"},
        {"[principal a]\nroot = clients\n[principal *]\nroot = clients/all\n",
         "the root clients of principal a holds the namespaces of [principal *]"},
    };
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char conf[PATH_MAX], out[PATH_MAX];
    e2e_path(&env, conf, "hauld.conf");
    e2e_path(&env, out, "out");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        FILE *f = fopen(conf, "w");
        CHECK(f != NULL);
        fputs(bad[i].text, f);
        CHECK(fclose(f) == 0);
        char cmd[4 * PATH_MAX + 200];
        snprintf(cmd, sizeof(cmd),
                 "'%s' --listen 127.0.0.1:0 --store '%s' --plaintext --config '%s' >'%s' 2>&1",
                 env.hauld, env.store, conf, out);
        int status = system(cmd);
        CHECK(WIFEXITED(status));
        CHECK_EQ(WEXITSTATUS(status), 1);
        char *text = e2e_slurp(out);
        if (!e2e_contains(text, bad[i].says))
            harness_log("hauld said: %s", text ? text : "(nothing)");
        CHECK(e2e_contains(text, bad[i].says));
        free(text);
    }
    e2e_teardown(&env);
}
