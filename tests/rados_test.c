/*
 * rados_test.c - hauld on a real Ceph cluster (the RADOS store): several
 * servers on one pool, a server killed in the middle of a push and the
 * push resumed through another, two pushes of one dataset through two
 * servers at once, a corrupted object found by verify, and an OSD that
 * stops answering in the middle of a push.
 *
 * The cluster: one monitor and one OSD on 127.0.0.1, started by
 * tests/ceph/cluster.sh. Under ctest a fixture starts it once for the run
 * and names its state file in HAUL_CEPH_STATE; run by hand, this program
 * starts one of its own and stops it at the end. Every test SKIPs, with
 * the reason, when hauld was built without librados or when Ceph could
 * not be installed or started here.
 *
 * hauld runs with --store rados:POOL,stripe=1M,lease=3,timeout=5: small
 * objects, so that a push has many, and short bounds, so that a dead
 * server's lock and a dead OSD's operations end within seconds. Each test
 * uses datasets of its own; the OSD test comes last, since it stops the
 * cluster's only OSD for a while.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HARNESS_NO_MAIN
#include "harness.h"
#include "e2e.h"
#include "fault_proxy.h"
#include "store_api.h"

#ifdef HAUL_HAVE_RADOS
#include <rados/librados.h>
#endif

#define CMD_TIMEOUT 60
/* The store's bounds in these tests (see the top). */
#define LEASE_S 3
#define OP_TIMEOUT_S 5

/* The cluster, from its state file. */
static struct {
    char state[PATH_MAX];
    char conf[PATH_MAX];
    char pool[64];
    char skip[512];
    char script[PATH_MAX];
    int osd_pid;
} ceph;

/* Reads VAR=value lines (values as printf %q writes them: plain words). */
static int read_state(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    char line[1024];
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *eq = strchr(line, '=');
        if (eq == NULL)
            continue;
        *eq = '\0';
        const char *v = eq + 1;
        if (strcmp(line, "HAUL_CEPH_CONF") == 0)
            snprintf(ceph.conf, sizeof(ceph.conf), "%s", v);
        else if (strcmp(line, "HAUL_CEPH_POOL") == 0)
            snprintf(ceph.pool, sizeof(ceph.pool), "%s", v);
        else if (strcmp(line, "HAUL_CEPH_OSD_PID") == 0)
            ceph.osd_pid = atoi(v);
        else if (strcmp(line, "HAUL_CEPH_SKIP") == 0) {
            /* %q quotes spaces with backslashes: take them out. */
            size_t o = 0;
            for (const char *p = v; *p && o + 1 < sizeof(ceph.skip); p++)
                if (*p != '\\' && *p != '\'' && *p != '$')
                    ceph.skip[o++] = *p;
            ceph.skip[o] = '\0';
        }
    }
    fclose(f);
    return 0;
}

/* Runs the cluster script (start, stop, osd-stop, osd-cont); its exit status. */
static int run_script(const char *action)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execl("/bin/bash", "bash", ceph.script, action, ceph.state, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Every test's start: the cluster, or a skip saying why there is none. */
static void need_cluster(void)
{
#ifndef HAUL_HAVE_RADOS
    SKIP("hauld was built without librados (apt-get install librados-dev, then build again)");
#endif
    if (ceph.skip[0] != '\0')
        SKIP("no Ceph cluster: %s", ceph.skip);
    if (ceph.conf[0] == '\0')
        SKIP("no Ceph cluster: no state in %s", ceph.state);
}

/* The environment of a test: hauld on the cluster's pool. */
static char store_spec[256];

static void setup(e2e_env *env)
{
    need_cluster();
    e2e_setup(env, E2E_NO_SERVER);
    snprintf(store_spec, sizeof(store_spec), "rados:%s,stripe=1M,lease=%d,timeout=%d", ceph.pool,
             LEASE_S, OP_TIMEOUT_S);
    snprintf(env->store, sizeof(env->store), "%s", store_spec);
    env->server_args[0] = "--ceph-conf";
    env->server_args[1] = ceph.conf;
    env->server_args[2] = NULL;
    e2e_start_server(env);
}

/* A second hauld on the same pool; its URL in url. */
static void start_second(e2e_env *env, e2e_server *s, char url[200])
{
    CHECK(e2e_server_start_at(env, s, "127.0.0.1:0") == 0);
    snprintf(url, 200, "haul://127.0.0.1:%d", s->port);
}

/* BASE/DATASET, the dataset's name made this run's own (-PID), so that
 * runs on one cluster do not meet; DATASET@ID keeps its snapshot. */
static const char *url_of(const char *base, const char *rest)
{
    static char bufs[4][512];
    static int next;
    char *out = bufs[next++ % 4];
    const char *at = strchr(rest, '@');
    int n = at ? (int)(at - rest) : (int)strlen(rest);
    snprintf(out, 512, "%s/%.*s-%d%s", base, n, rest, (int)getppid(), at ? at : "");
    return out;
}

typedef struct push_report {
    char snapshot[80];
    uint64_t files, bytes, bytes_sent, bytes_linked;
} push_report;

static void parse_report(const e2e_proc *p, push_report *r)
{
    memset(r, 0, sizeof(*r));
    if (e2e_json_str(p->out, "snapshot", r->snapshot, sizeof(r->snapshot)) != 0 ||
        e2e_json_u64(p->out, "bytes_sent", &r->bytes_sent) != 0 ||
        e2e_json_u64(p->out, "bytes_linked", &r->bytes_linked) != 0 ||
        e2e_json_u64(p->out, "files", &r->files) != 0 ||
        e2e_json_u64(p->out, "bytes", &r->bytes) != 0) {
        e2e_proc_show(p);
        CHECK(!"haul push --json did not print its JSON object");
    }
}

/* haul push SRC BASE/DATASET --json, expecting exit status 0. */
static void push(e2e_env *env, const char *base, const char *src, const char *dataset,
                 push_report *r)
{
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "push", src, url_of(base, dataset), "--json");
    CHECK_EXIT(&p, 0);
    parse_report(&p, r);
    harness_log("push %s: snapshot %s, %llu files, %llu bytes, %llu sent, %llu linked", dataset,
                r->snapshot, (unsigned long long)r->files, (unsigned long long)r->bytes,
                (unsigned long long)r->bytes_sent, (unsigned long long)r->bytes_linked);
    e2e_proc_free(&p);
}

/* The same, retried while the dataset is busy, for up to `patience`
 * seconds: the lock of a server that died is free once its lease is out. */
static double push_when_free(e2e_env *env, const char *base, const char *src, const char *dataset,
                             double patience, push_report *r)
{
    const double start = e2e_now();
    e2e_proc p = {0};
    for (;;) {
        e2e_haul(env, &p, CMD_TIMEOUT, "push", src, url_of(base, dataset), "--json");
        if (p.code != 4 || e2e_now() - start > patience)
            break;
        e2e_proc_free(&p);
        /* The lock expires on the cluster's clock: nothing to wait on. */
        poll(NULL, 0, 200);
    }
    CHECK_EXIT(&p, 0);
    parse_report(&p, r);
    e2e_proc_free(&p);
    return e2e_now() - start;
}

static void pull(e2e_env *env, const char *base, const char *what, const char *dest)
{
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "pull", url_of(base, what), dest);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
}

/* A tree of every kind of entry, small enough for the in-memory OSD. */
static void make_tree(const char *root, uint64_t seed)
{
    e2e_mkdir(root);
    e2e_mkdir(e2e_at(root, "a"));
    e2e_mkdir(e2e_at(root, "a/b"));
    e2e_mkdir(e2e_at(root, "empty"));
    e2e_file(e2e_at(root, "zero"), 0, seed, 0644);
    e2e_file(e2e_at(root, "one"), 1, seed + 1, 0600);
    e2e_file(e2e_at(root, "a/big"), 5 * E2E_MIB + 12345, seed + 2, 0755);
    e2e_file(e2e_at(root, "a/b/stripe"), E2E_MIB, seed + 3, 0644);
    for (int i = 0; i < 30; i++) {
        char name[32];
        snprintf(name, sizeof(name), "a/b/s%02d", i);
        /* Sizes differ from one seed to another, so that no file of one
         * tree passes for the other's unchanged file. */
        e2e_file(e2e_at(root, name), 1000 + (uint64_t)i * 997 + seed, seed + 10 + (uint64_t)i,
                 0644);
    }
    const uint64_t extents[] = {E2E_MIB, 64 << 10, 3 * E2E_MIB, 64 << 10};
    e2e_sparse_file(e2e_at(root, "sparse"), 6 * E2E_MIB, extents, 2, seed + 4);
    CHECK(symlink("a/big", e2e_at(root, "link")) == 0);
    CHECK(symlink("../nowhere", e2e_at(root, "a/dangling")) == 0);
    CHECK(link(e2e_at(root, "a/b/s03"), e2e_at(root, "a/s03.hl")) == 0);
    e2e_stamp_tree(root);
}

#ifdef HAUL_HAVE_RADOS
/* The test's own client of the cluster, to look at objects. */
static rados_t cluster;
static rados_ioctx_t io;

/* Ends the client before the process exits: librados's threads must not
 * run while its static objects are destroyed. */
static void disconnect_cluster(void)
{
    if (io != NULL)
        rados_ioctx_destroy(io);
    if (cluster != NULL)
        rados_shutdown(cluster);
    io = NULL;
    cluster = NULL;
}

static void connect_cluster(void)
{
    if (io != NULL)
        return;
    atexit(disconnect_cluster);
    CHECK_OK(rados_create2(&cluster, "ceph", "client.admin", 0));
    CHECK_OK(rados_conf_read_file(cluster, ceph.conf));
    CHECK_OK(rados_conf_set(cluster, "rados_osd_op_timeout", "10"));
    CHECK_OK(rados_conf_set(cluster, "client_mount_timeout", "10"));
    CHECK_OK(rados_connect(cluster));
    CHECK_OK(rados_ioctx_create(cluster, ceph.pool, &io));
}

/* The bytes of the objects whose names start with prefix; the name of
 * the largest into largest (when not NULL). */
static uint64_t object_bytes(const char *prefix, char *largest, size_t size)
{
    connect_cluster();
    rados_list_ctx_t ctx;
    CHECK_OK(rados_nobjects_list_open(io, &ctx));
    const char *oid;
    uint64_t total = 0, best = 0;
    while (rados_nobjects_list_next(ctx, &oid, NULL, NULL) == 0) {
        if (strncmp(oid, prefix, strlen(prefix)) != 0)
            continue;
        uint64_t osize = 0;
        time_t mtime;
        if (rados_stat(io, oid, &osize, &mtime) != 0)
            continue;
        total += osize;
        if (largest != NULL && osize > best) {
            best = osize;
            snprintf(largest, size, "%s", oid);
        }
    }
    rados_nobjects_list_close(ctx);
    return total;
}
#else
static uint64_t object_bytes(const char *prefix, char *largest, size_t size)
{
    return 0;
}
#endif

/* The content objects of a dataset of the default namespace. */
static const char *data_prefix(const char *dataset)
{
    static char out[256];
    snprintf(out, sizeof(out), "haul/default/%s-%d/d.", dataset, (int)getppid());
    return out;
}

/* A proxy in front of a server, each connection at most `rate` bytes/s
 * towards it: a push that takes long enough to be interrupted. */
static fault_proxy *slow_proxy(const e2e_server *s, uint64_t rate, char url[200])
{
    fault_proxy_config pc;
    fault_proxy_config_init(&pc);
    char target[64];
    snprintf(target, sizeof(target), "127.0.0.1:%d", s->port);
    pc.target = target;
    pc.rate_up = rate;
    fault_proxy *px = NULL;
    CHECK_OK(fault_proxy_start(&pc, &px));
    snprintf(url, 200, "haul://%s", fault_proxy_address(px));
    return px;
}

/* ------------------------------------------------------------------------ */
/* The sequences every store passes (store_api.h), on the cluster's pool.  */
/* ------------------------------------------------------------------------ */

/* The store of these sequences: small stripes, so that a file of a few
 * hundred KiB spans several objects; a namespace per run. */
static const char *api_spec(store_options *opt, char tag[32])
{
    need_cluster();
    static char spec[256];
    snprintf(spec, sizeof(spec), "rados:%s,stripe=64K,lease=%d,timeout=%d", ceph.pool, LEASE_S,
             OP_TIMEOUT_S);
    memset(opt, 0, sizeof(*opt));
    opt->ceph_conf = ceph.conf;
    snprintf(tag, 32, "rados-%d", (int)getppid());
    return spec;
}

TEST_TIMEOUT(store_api_push_and_read, 60)
{
    store_options opt;
    char tag[32];
    const char *spec = api_spec(&opt, tag);
    store_api_push_and_read(spec, &opt, tag);
}

TEST_TIMEOUT(store_api_share_and_delete, 60)
{
    store_options opt;
    char tag[32];
    const char *spec = api_spec(&opt, tag);
    store_api_share_and_delete(spec, &opt, tag);
}

TEST_TIMEOUT(store_api_abort_and_resume, 60)
{
    store_options opt;
    char tag[32];
    const char *spec = api_spec(&opt, tag);
    store_api_abort_and_resume(spec, &opt, tag);
}

TEST_TIMEOUT(store_api_lock, 60)
{
    store_options opt;
    char tag[32];
    const char *spec = api_spec(&opt, tag);
    store_api_lock(spec, &opt, tag);
}

TEST_TIMEOUT(store_api_errors, 60)
{
    store_options opt;
    char tag[32];
    const char *spec = api_spec(&opt, tag);
    store_api_errors(spec, &opt, tag);
}

/* Several threads on one store at once, as hauld's workers use it. */
TEST_TIMEOUT(store_api_threads, 120)
{
    store_options opt;
    char tag[32];
    const char *spec = api_spec(&opt, tag);
    store_api_threads(spec, &opt, tag);
}

/* The content objects whose names start with prefix. */
static int object_count(const char *prefix)
{
#ifdef HAUL_HAVE_RADOS
    connect_cluster();
    rados_list_ctx_t ctx;
    CHECK_OK(rados_nobjects_list_open(io, &ctx));
    const char *oid;
    int n = 0;
    while (rados_nobjects_list_next(ctx, &oid, NULL, NULL) == 0)
        if (strncmp(oid, prefix, strlen(prefix)) == 0)
            n++;
    rados_nobjects_list_close(ctx);
    return n;
#else
    return 0;
#endif
}

/* One push of small files (each packed with the others), through the
 * interface: files[i] of sizes[i] bytes from seeds[i]; a file whose
 * seed is 0 is linked from the previous snapshot. */
static void push_small(store_api_env *env, const char **files, const size_t *sizes,
                       const unsigned *seeds, int n, char id[HSP_SNAPSHOT_MAX + 1])
{
    store_lock *lock;
    store_push *p;
    store_push_info info;
    STORE_API_OK(env, store_lock_dataset(env->s, &env->ds, STORE_LOCK_CREATE, &lock, &env->err));
    STORE_API_OK(env, store_push_begin(lock, &p, &info, &env->err));
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        hsp_entry e = store_api_entry((uint64_t)i, HSP_FILE, files[i], sizes[i], NULL);
        e.mtime_sec += (int64_t)sizes[i];
        if (seeds[i] == 0) {
            hsp_hash h;
            CHECK_EQ(store_file_link_previous(p, &e, &h, &env->err), 1);
        } else {
            static uint8_t data[60000];
            CHECK_LE(sizes[i], sizeof(data));
            store_api_fill(data, sizes[i], seeds[i]);
            store_api_put_file(env, p, &e, data, 0, 0);
        }
        total += sizes[i];
    }
    STORE_API_OK(env, store_push_commit(p, (uint64_t)n, total, id, NULL, NULL, &env->err));
    store_push_end(p);
    store_unlock(lock);
}

static void check_small(store_api_env *env, const char *id, const char *file, size_t size,
                        unsigned seed)
{
    static uint8_t data[60000];
    store_api_fill(data, size, seed);
    store_snapshot *snap;
    store_info si;
    STORE_API_OK(env, store_snapshot_open(env->s, &env->ds, id, &snap, &si, &env->err));
    hsp_entry e = store_api_entry(0, HSP_FILE, file, size, NULL);
    store_api_check_file(env, snap, &e, data, size);
    store_snapshot_close(snap);
}

/*
 * Small files share pack objects: a pack stays while a snapshot holds any
 * of its files, and goes with the delete of the last snapshot that does.
 */
TEST_TIMEOUT(packs_are_freed_with_their_last_file, 60)
{
    store_options opt;
    char tag[32];
    need_cluster();
    char spec[256];
    snprintf(spec, sizeof(spec), "rados:%s,stripe=1M,lease=%d,timeout=%d", ceph.pool, LEASE_S,
             OP_TIMEOUT_S);
    memset(&opt, 0, sizeof(opt));
    opt.ceph_conf = ceph.conf;
    snprintf(tag, sizeof(tag), "rados-%d", (int)getppid());
    store_api_env env;
    store_api_open(&env, spec, &opt, "packs", tag);
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "haul/%s/%s/d.", env.ns, env.ds.name);

    char id1[HSP_SNAPSHOT_MAX + 1], id2[HSP_SNAPSHOT_MAX + 1], id3[HSP_SNAPSHOT_MAX + 1];
    const char *files[] = {"x", "y"};
    const size_t s1[] = {1000, 2000}, s2[] = {1000, 3000}, s3[] = {4000, 3000};
    const unsigned k1[] = {1, 2}, k2[] = {0, 3}, k3[] = {4, 0};
    push_small(&env, files, s1, k1, 2, id1);
    CHECK_EQ(object_count(prefix), 1); /* x and y in one pack */
    push_small(&env, files, s2, k2, 2, id2);
    CHECK_EQ(object_count(prefix), 2); /* x shared, y' in a new pack */

    /* The first snapshot's pack holds x, which the second holds too. */
    store_lock *lock;
    store_info si;
    uint64_t freed = 0;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, 0, &lock, &env.err));
    STORE_API_OK(&env, store_snapshot_delete(lock, id1, &si, &freed, &env.err));
    store_unlock(lock);
    CHECK_EQ(object_count(prefix), 2);
    CHECK_LT(freed, STORE_API_OVERHEAD);
    check_small(&env, id2, "x", 1000, 1);
    check_small(&env, id2, "y", 3000, 3);

    /* x changes: its old pack is the second snapshot's alone, and goes
     * with it; y' stays, shared with the third. */
    push_small(&env, files, s3, k3, 2, id3);
    CHECK_EQ(object_count(prefix), 3);
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, 0, &lock, &env.err));
    STORE_API_OK(&env, store_snapshot_delete(lock, id2, &si, &freed, &env.err));
    store_unlock(lock);
    CHECK_EQ(object_count(prefix), 2);
    CHECK_GE(freed, 3000); /* the pack of x and the first y */
    check_small(&env, id3, "x", 4000, 4);
    check_small(&env, id3, "y", 3000, 3);
    uint64_t usage;
    STORE_API_OK(&env, store_usage(env.s, env.ns, &usage, &env.err));
    STORE_API_CHECK_ABOUT(usage, 4000 + 3000);
    store_api_close(&env);
}

/* ------------------------------------------------------------------------ */
/* hauld on the cluster                                                     */
/* ------------------------------------------------------------------------ */

/* A pool that does not exist, or a Ceph configuration that cannot be
 * read: hauld does not start, and says why. */
TEST_TIMEOUT(bad_pool_or_conf_stops_hauld_at_start, 60)
{
    e2e_env env;
    need_cluster();
    e2e_setup(&env, E2E_NO_SERVER);
    snprintf(env.store, sizeof(env.store), "rados:no-such-pool-%d,timeout=%d", (int)getppid(),
             OP_TIMEOUT_S);
    env.server_args[0] = "--ceph-conf";
    env.server_args[1] = ceph.conf;
    CHECK(e2e_server_start_at(&env, &env.server, "127.0.0.1:0") != 0);
    int status = e2e_server_reap_(&env.server);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    char *log = e2e_slurp(env.server.log_path);
    if (!e2e_contains(log, "no pool no-such-pool"))
        harness_log("hauld said:\n%s", log ? log : "");
    CHECK(e2e_contains(log, "no pool no-such-pool"));
    free(log);

    snprintf(env.store, sizeof(env.store), "rados:%s", ceph.pool);
    char conf[PATH_MAX];
    env.server_args[1] = e2e_path(&env, conf, "missing.conf");
    CHECK(e2e_server_start_at(&env, &env.server, "127.0.0.1:0") != 0);
    status = e2e_server_reap_(&env.server);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    log = e2e_slurp(env.server.log_path);
    if (!e2e_contains(log, "missing.conf"))
        harness_log("hauld said:\n%s", log ? log : "");
    CHECK(e2e_contains(log, "missing.conf"));
    free(log);
    e2e_teardown(&env);
}

/*
 * Two servers, one pool: what one stored, the other lists, pulls and
 * verifies, and a push through the second shares the unchanged files of
 * the first's snapshot.
 */
TEST_TIMEOUT(two_servers_share_one_pool, 120)
{
    e2e_env env;
    setup(&env);
    e2e_server second;
    char url2[200];
    start_second(&env, &second, url2);
    char src[PATH_MAX], dst[PATH_MAX], dst2[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_path(&env, dst2, "dst2");
    make_tree(src, 1);

    push_report r1, r2;
    push(&env, env.url, src, "shared", &r1);
    CHECK(r1.snapshot[0] != '\0');

    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", url_of(url2, "shared"));
    CHECK_EXIT(&p, 0);
    if (!e2e_contains(p.out, r1.snapshot))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.out, r1.snapshot));
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", url2);
    CHECK_EXIT(&p, 0);
    CHECK(e2e_contains(p.out, "shared"));
    e2e_proc_free(&p);

    pull(&env, url2, "shared", dst);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);

    /* One file changes; the push through the other server sends it alone
     * and references the rest. */
    e2e_file(e2e_at(src, "a/b/s07"), 4321, 77, 0644);
    e2e_set_mtime(e2e_at(src, "a/b/s07"), 1700000000, 5);
    push(&env, url2, src, "shared", &r2);
    CHECK(strcmp(r1.snapshot, r2.snapshot) != 0);
    CHECK_EQ(r2.bytes_sent, 4321);
    CHECK_GT(r2.bytes_linked, 6 * E2E_MIB);
    pull(&env, env.url, "shared", dst2);
    CHECK_EQ(e2e_tree_diff(src, dst2, 0), 0);

    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", url_of(env.url, "shared"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    char what[128];
    snprintf(what, sizeof(what), "shared@%s", r1.snapshot);
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", url_of(url2, what));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);

    e2e_server_stop(&second);
    e2e_teardown(&env);
}

/*
 * kill -9 of the server in the middle of a push: the push resumes through
 * another server once the dead one's lease runs out, sends only what the
 * dead one had not staged, and the snapshot is whole.
 */
TEST_TIMEOUT(server_killed_mid_push_resumes_through_another, 120)
{
    e2e_env env;
    setup(&env);
    e2e_server second;
    char url2[200], slow[200];
    start_second(&env, &second, url2);
    char src[PATH_MAX], dst[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "first"), 8 * E2E_MIB, 3, 0644);
    e2e_file(e2e_at(src, "second"), 24 * E2E_MIB, 4, 0644);
    e2e_stamp_tree(src);
    const uint64_t total = 32 * E2E_MIB;

    /* 2 MiB/s on each of 2 connections: the push takes 8 s, and the
     * 12 MiB staged come after 3 s, which leaves a listing of the pool
     * on a loaded machine seconds to see them before the commit. */
    fault_proxy *px = slow_proxy(&env.server, 2 * E2E_MIB, slow);
    e2e_proc p = {0};
    e2e_haul_start(&env, &p, "push", "-P", "2", src, url_of(slow, "resume"), "--json");
    int ok = 0;
    E2E_WAIT_UNTIL(
        ok, object_bytes(data_prefix("resume"), NULL, 0) > 12 * E2E_MIB || e2e_proc_exited(&p),
        60000);
    CHECK(ok);
    CHECK(!e2e_proc_exited(&p));
    e2e_server_kill(&env.server);
    const uint64_t staged = object_bytes(data_prefix("resume"), NULL, 0);
    harness_log("killed the server with %llu bytes staged", (unsigned long long)staged);
    kill(p.pid, SIGKILL);
    e2e_proc_wait(&p, 10);
    e2e_proc_free(&p);
    fault_proxy_stop(px);

    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", url_of(url2, "resume"));
    CHECK_EXIT(&p, 0);
    CHECK(!e2e_contains(p.out, "Z"));
    e2e_proc_free(&p);

    push_report r;
    double took = push_when_free(&env, url2, src, "resume", 3 * LEASE_S + 10, &r);
    harness_log("resumed through the other server after %.1f s: %llu sent, %llu linked", took,
                (unsigned long long)r.bytes_sent, (unsigned long long)r.bytes_linked);
    CHECK_LT(r.bytes_sent, total - 8 * E2E_MIB);
    CHECK_EQ(r.bytes, total);
    pull(&env, url2, "resume", dst);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", url_of(url2, "resume"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);

    e2e_server_stop(&second);
    e2e_teardown(&env);
}

/*
 * The lock of a server killed in a push, with a lease far longer than the
 * test: another server refuses the dataset (busy), and takes it over at
 * once when the client asks (haul push --takeover), resuming the push.
 */
TEST_TIMEOUT(takeover_breaks_a_dead_servers_lock, 120)
{
    e2e_env env;
    need_cluster();
    e2e_setup(&env, E2E_NO_SERVER);
    snprintf(env.store, sizeof(env.store), "rados:%s,stripe=1M,lease=600,timeout=%d", ceph.pool,
             OP_TIMEOUT_S);
    env.server_args[0] = "--ceph-conf";
    env.server_args[1] = ceph.conf;
    e2e_start_server(&env);
    e2e_server second;
    char url2[200], slow[200];
    start_second(&env, &second, url2);
    char src[PATH_MAX], dst[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "big"), 24 * E2E_MIB, 8, 0644);
    e2e_stamp_tree(src);

    fault_proxy *px = slow_proxy(&env.server, 4 * E2E_MIB, slow);
    e2e_proc p = {0};
    e2e_haul_start(&env, &p, "push", src, url_of(slow, "takeover"), "--json");
    int ok = 0;
    E2E_WAIT_UNTIL(
        ok, object_bytes(data_prefix("takeover"), NULL, 0) > 4 * E2E_MIB || e2e_proc_exited(&p),
        60000);
    CHECK(ok);
    CHECK(!e2e_proc_exited(&p));
    e2e_server_kill(&env.server);
    kill(p.pid, SIGKILL);
    e2e_proc_wait(&p, 10);
    e2e_proc_free(&p);
    fault_proxy_stop(px);

    e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, url_of(url2, "takeover"), "--json");
    CHECK_EXIT(&p, 4);
    e2e_proc_free(&p);
    const double start = e2e_now();
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "--takeover", src, url_of(url2, "takeover"), "--json");
    CHECK_EXIT(&p, 0);
    push_report r;
    parse_report(&p, &r);
    e2e_proc_free(&p);
    harness_log("taken over in %.1f s: %llu sent", e2e_now() - start,
                (unsigned long long)r.bytes_sent);
    CHECK_LT(e2e_now() - start, 30.0);
    CHECK_LT(r.bytes_sent, 24 * E2E_MIB - 2 * E2E_MIB);
    pull(&env, url2, "takeover", dst);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_server_stop(&second);
    e2e_teardown(&env);
}

/*
 * A server paused in a push (SIGSTOP) past its lease: another server
 * takes the dataset and commits; the paused one, once it runs again,
 * finds its lock lost and fails its push without committing anything.
 */
TEST_TIMEOUT(paused_server_loses_its_lock_and_never_commits, 120)
{
    e2e_env env;
    setup(&env);
    e2e_server second;
    char url2[200], slow[200];
    start_second(&env, &second, url2);
    char src1[PATH_MAX], src2[PATH_MAX], dst[PATH_MAX];
    e2e_path(&env, src1, "src1");
    e2e_path(&env, src2, "src2");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(src1);
    e2e_file(e2e_at(src1, "big"), 24 * E2E_MIB, 9, 0644);
    e2e_stamp_tree(src1);
    make_tree(src2, 300);

    fault_proxy *px = slow_proxy(&env.server, 4 * E2E_MIB, slow);
    e2e_proc p = {0};
    e2e_haul_start(&env, &p, "push", src1, url_of(slow, "paused"), "--json");
    int ok = 0;
    E2E_WAIT_UNTIL(
        ok, object_bytes(data_prefix("paused"), NULL, 0) > 4 * E2E_MIB || e2e_proc_exited(&p),
        60000);
    CHECK(ok);
    CHECK(!e2e_proc_exited(&p));
    CHECK(kill(env.server.pid, SIGSTOP) == 0);

    push_report r;
    double took = push_when_free(&env, url2, src2, "paused", 3 * LEASE_S + 10, &r);
    harness_log("the other server took the dataset after %.1f s", took);
    CHECK(kill(env.server.pid, SIGCONT) == 0);
    e2e_proc_wait(&p, CMD_TIMEOUT);
    if (p.code != 3 || !e2e_contains(p.err, "lock"))
        e2e_proc_show(&p);
    CHECK_EXIT(&p, 3);
    CHECK(e2e_contains(p.err, "lock"));
    e2e_proc_free(&p);
    fault_proxy_stop(px);

    /* One snapshot, the other server's, whole. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", url_of(env.url, "paused"));
    CHECK_EXIT(&p, 0);
    CHECK(e2e_contains(p.out, r.snapshot));
    int lines = 0;
    for (const char *c = p.out; *c; c++)
        lines += *c == '\n';
    if (lines != 2)
        e2e_proc_show(&p);
    CHECK_EQ(lines, 2); /* the header and one snapshot */
    e2e_proc_free(&p);
    pull(&env, url2, "paused", dst);
    CHECK_EQ(e2e_tree_diff(src2, dst, 0), 0);
    e2e_server_stop(&second);
    e2e_teardown(&env);
}

/*
 * Two pushes of one dataset at once, through two servers: one is refused
 * (busy) while the other holds the dataset, or they follow each other;
 * the snapshot each made is its own tree, whole, read through the other
 * server.
 */
TEST_TIMEOUT(concurrent_pushes_through_two_servers, 120)
{
    e2e_env env;
    setup(&env);
    e2e_server second;
    char url2[200], slow1[200], slow2[200];
    start_second(&env, &second, url2);
    char src1[PATH_MAX], src2[PATH_MAX], dst[PATH_MAX];
    e2e_path(&env, src1, "src1");
    e2e_path(&env, src2, "src2");
    make_tree(src1, 100);
    make_tree(src2, 200);
    fault_proxy *px1 = slow_proxy(&env.server, 4 * E2E_MIB, slow1);
    fault_proxy *px2 = slow_proxy(&second, 4 * E2E_MIB, slow2);

    e2e_proc a = {0}, b = {0};
    e2e_haul_start(&env, &a, "push", src1, url_of(slow1, "race"), "--json");
    e2e_haul_start(&env, &b, "push", src2, url_of(slow2, "race"), "--json");
    e2e_proc_wait(&a, CMD_TIMEOUT);
    e2e_proc_wait(&b, CMD_TIMEOUT);
    harness_log("the pushes exited %d and %d", a.code, b.code);
    if ((a.code != 0 && a.code != 4) || (b.code != 0 && b.code != 4)) {
        e2e_proc_show(&a);
        e2e_proc_show(&b);
    }
    CHECK(a.code == 0 || a.code == 4);
    CHECK(b.code == 0 || b.code == 4);
    CHECK(a.code == 0 || b.code == 0);
    /* Each push that succeeded made a snapshot of its own tree, whole,
     * whether the other was refused (busy) or came after it. */
    e2e_proc *runs[2] = {&a, &b};
    const char *srcs[2] = {src1, src2};
    for (int i = 0; i < 2; i++) {
        if (runs[i]->code != 0)
            continue;
        push_report r;
        parse_report(runs[i], &r);
        char what[128];
        snprintf(what, sizeof(what), "race@%s", r.snapshot);
        e2e_pathf(dst, "%s/dst%d", env.dir, i);
        pull(&env, i == 0 ? url2 : env.url, what, dst);
        CHECK_EQ(e2e_tree_diff(srcs[i], dst, 0), 0);
    }
    e2e_proc_free(&a);
    e2e_proc_free(&b);
    fault_proxy_stop(px1);
    fault_proxy_stop(px2);

    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", url_of(env.url, "race"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);

    e2e_server_stop(&second);
    e2e_teardown(&env);
}

/* An object overwritten behind hauld's back (with the rados CLI): verify
 * names the file, and the other snapshots stay intact. */
TEST_TIMEOUT(verify_detects_a_corrupted_object, 120)
{
    e2e_env env;
    setup(&env);
    char src[PATH_MAX], junk[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, junk, "junk");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "victim"), 3 * E2E_MIB, 5, 0644);
    e2e_stamp_tree(src);
    push_report r;
    push(&env, env.url, src, "damaged", &r);
    push(&env, env.url, src, "intact", &r);

    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", url_of(env.url, "damaged"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);

    char oid[512] = "";
    object_bytes(data_prefix("damaged"), oid, sizeof(oid));
    CHECK(oid[0] != '\0');
    e2e_file(junk, E2E_MIB, 999, 0644);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        execlp("rados", "rados", "-c", ceph.conf, "-p", ceph.pool, "put", oid, junk, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", url_of(env.url, "damaged"));
    CHECK_EXIT(&p, 5);
    if (!e2e_contains(p.out, "victim") && !e2e_contains(p.err, "victim"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.out, "victim") || e2e_contains(p.err, "victim"));
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", url_of(env.url, "intact"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);

    /* Small files share a pack object: a damaged pack names its files. */
    char small[PATH_MAX];
    e2e_path(&env, small, "small");
    e2e_mkdir(small);
    for (int i = 0; i < 10; i++) {
        char name[32];
        snprintf(name, sizeof(name), "packed-%d", i);
        e2e_file(e2e_at(small, name), 1000 + (uint64_t)i * 500, 50 + (uint64_t)i, 0644);
    }
    e2e_stamp_tree(small);
    push(&env, env.url, small, "damaged-pack", &r);
    oid[0] = '\0';
    object_bytes(data_prefix("damaged-pack"), oid, sizeof(oid));
    CHECK(oid[0] != '\0');
    CHECK_EQ(object_count(data_prefix("damaged-pack")), 1);
    e2e_file(junk, 4096, 1234, 0644);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        execlp("rados", "rados", "-c", ceph.conf, "-p", ceph.pool, "put", oid, junk, (char *)NULL);
        _exit(127);
    }
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", url_of(env.url, "damaged-pack"));
    CHECK_EXIT(&p, 5);
    if (!e2e_contains(p.out, "packed-") && !e2e_contains(p.err, "packed-"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.out, "packed-") || e2e_contains(p.err, "packed-"));
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

/*
 * The OSD stops answering (SIGSTOP) in the middle of a push: the push
 * fails within the operation timeout with an error that says so, and no
 * snapshot appears. Once the OSD is back, the push goes through. Last:
 * it stops the cluster's only OSD.
 */
TEST_TIMEOUT(osd_stopped_mid_push_fails_clearly, 120)
{
    e2e_env env;
    setup(&env);
    CHECK_GT(ceph.osd_pid, 0);
    char src[PATH_MAX], dst[PATH_MAX], slow[200];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "big"), 24 * E2E_MIB, 6, 0644);
    e2e_stamp_tree(src);

    fault_proxy *px = slow_proxy(&env.server, 4 * E2E_MIB, slow);
    e2e_proc p = {0};
    e2e_haul_start(&env, &p, "push", src, url_of(slow, "osd"), "--json");
    int ok = 0;
    E2E_WAIT_UNTIL(
        ok, object_bytes(data_prefix("osd"), NULL, 0) > 2 * E2E_MIB || e2e_proc_exited(&p), 60000);
    CHECK(ok);
    CHECK(!e2e_proc_exited(&p));
    CHECK_EQ(run_script("osd-stop"), 0);
    const double stopped = e2e_now();
    e2e_proc_wait(&p, 4 * OP_TIMEOUT_S + 20);
    const double failed_after = e2e_now() - stopped;
    CHECK_EQ(run_script("osd-cont"), 0);
    harness_log("the push ended %.1f s after the OSD stopped, exit %d", failed_after, p.code);
    /* Which comes first, the operation's timeout or the lease's end,
     * depends on the machine's speed (ThreadSanitizer): either is a
     * clear error. */
    int clear = e2e_contains(p.err, "did not answer") || e2e_contains(p.err, "was lost");
    if (p.code != 3 || !clear)
        e2e_proc_show(&p);
    CHECK_EXIT(&p, 3);
    CHECK(clear);
    CHECK(!p.timed_out);
    e2e_proc_free(&p);
    fault_proxy_stop(px);

    /* No snapshot; the next push, once the OSD is back, completes. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", url_of(env.url, "osd"));
    CHECK(!e2e_contains(p.out, "Z"));
    e2e_proc_free(&p);
    push_report r;
    push_when_free(&env, env.url, src, "osd", 3 * LEASE_S + 10, &r);
    pull(&env, env.url, "osd", dst);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    const char *script = getenv("HAUL_CEPH_SCRIPT");
    snprintf(ceph.script, sizeof(ceph.script), "%s", script ? script : HAUL_CEPH_SCRIPT_DEFAULT);
    const char *state = getenv("HAUL_CEPH_STATE");
    int own = 0;
    /* Listing the tests, or a build without RADOS (where every test
     * skips), needs no cluster. */
    int no_cluster = argc > 1 && strcmp(argv[1], "--list") == 0;
#ifndef HAUL_HAVE_RADOS
    no_cluster = 1;
#endif
    if (state != NULL) {
        snprintf(ceph.state, sizeof(ceph.state), "%s", state);
    } else if (!no_cluster) {
        /* Run by hand: a cluster of this run's own. */
        snprintf(ceph.state, sizeof(ceph.state), "%s/haul-rados-test-%d.env",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
        own = 1;
        if (run_script("start") != 0)
            snprintf(ceph.skip, sizeof(ceph.skip), "tests/ceph/cluster.sh start failed");
    }
    if (!no_cluster && read_state(ceph.state) != 0 && ceph.skip[0] == '\0')
        snprintf(ceph.skip, sizeof(ceph.skip), "no cluster state in %.400s", ceph.state);
    int rc = harness_main(argc, argv);
    if (own)
        run_script("stop");
    return rc;
}
