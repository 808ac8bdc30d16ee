/*
 * store_faults_test.c - hauld under I/O errors of its store, with real
 * processes (see e2e.h): for every k, the k-th write, sync (fsync,
 * fdatasync, syncfs), rename, link or metadata call (ftruncate,
 * fsetxattr, fchmod, futimens, utimensat, mkdirat, symlinkat) that hauld
 * makes in its store during
 * a small push fails with EIO or ENOSPC, injected by
 * build/tests/iofault_preload.so (LD_PRELOAD; tests/iofault_preload.c).
 * After each:
 *
 *   - the client exits 3 and says what failed on the store, or exits 0
 *     with a snapshot that is complete;
 *   - no snapshot of the dataset holds anything but the source: every
 *     committed one is pulled back and compared;
 *   - no file of the store is marked complete (the hash attribute hauld
 *     sets once a file is whole) with content that does not match;
 *   - hauld still serves (ls), and the next push, without faults,
 *     succeeds, resumes, and restores identically.
 *
 * The same push is first run without a fault to count the calls of each
 * kind it makes; the runs then fail each in turn, on a fresh store and a
 * fresh hauld each time. The resumed_push_* tests do the same with a push
 * that resumes from what a failed one staged, whose calls differ (files
 * are taken out of the staging area by renames).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <xxhash.h>

#include "harness.h"
#include "e2e.h"
#include "iofault.h"

#define CMD_TIMEOUT 30

/* A small push: a few files (one of two blocks), an empty one, a nested
 * directory, an empty directory, a symlink and a hard link. */
static void make_small_tree(const char *root)
{
    e2e_mkdir(root);
    e2e_file(e2e_at(root, "a"), 100000, 1, 0644);
    e2e_file(e2e_at(root, "b"), E2E_MIB + 4321, 2, 0600);
    e2e_file(e2e_at(root, "z"), 0, 3, 0644);
    e2e_mkdir(e2e_at(root, "d"));
    e2e_mkdir(e2e_at(root, "d/e"));
    e2e_mkdir(e2e_at(root, "d/e/g"));
    e2e_file(e2e_at(root, "d/e/f"), 3000, 4, 0640);
    CHECK(link(e2e_at(root, "a"), e2e_at(root, "d/e/a.hl")) == 0);
    CHECK(symlink("../a", e2e_at(root, "d/link")) == 0);
    e2e_stamp_tree(root);
}

/* The injector, beside this program. */
static void find_preload(char *out)
{
    e2e_find_program(out, "tests/iofault_preload.so");
}

/* The counts the injector published: "write N sync N rename N link N
 * fired F". Returns the count of `kind` ("fired" too). */
static unsigned long read_count(const char *file, const char *kind)
{
    char *text = e2e_slurp(file);
    char key[32];
    snprintf(key, sizeof(key), "%s ", kind);
    const char *p = strstr(text, key);
    unsigned long n = p ? strtoul(p + strlen(key), NULL, 10) : 0;
    free(text);
    return n;
}

/*
 * Starts hauld on a fresh store with the injector: `fault` is "KIND:K:ERR"
 * or NULL (count only). The clients run without it.
 */
static void start_faulty_server(e2e_env *env, const char *preload, const char *fault,
                                const char *counts)
{
    unlink(counts);
    const char *vars[] = {"HAUL_IOFAULT_PREFIX",
                          env->store,
                          "HAUL_IOFAULT_COUNT",
                          counts,
                          "HAUL_IOFAULT",
                          fault,
                          NULL};
    char *saved = iofault_env_set(preload, vars);
    int rc = e2e_server_start_at(env, &env->server, "127.0.0.1:0");
    iofault_env_clear(vars, saved);
    CHECK(rc == 0);
    snprintf(env->url, sizeof(env->url), "haul://127.0.0.1:%d", env->server.port);
}

/* Pulls every committed snapshot of the dataset and compares it with the
 * source; returns how many there are. */
static int check_snapshots(e2e_env *env, const char *src, const char *dataset)
{
    char dir[PATH_MAX];
    e2e_pathf(dir, "%s/default/%s/snapshots", env->store, dataset);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || (len > 4 && strcmp(de->d_name + len - 4, ".tmp") == 0) ||
            strchr(de->d_name, '.') != NULL)
            continue;
        n++;
        char what[300], url[512], dst[PATH_MAX];
        snprintf(what, sizeof(what), "%s@%s", dataset, de->d_name);
        e2e_pathf(dst, "%s/check-%d", env->dir, env->runs);
        e2e_proc p = {0};
        e2e_haul(env, &p, CMD_TIMEOUT, "pull", e2e_url(env, url, what), dst);
        CHECK_EXIT(&p, 0);
        e2e_proc_free(&p);
        int diffs = e2e_tree_diff(src, dst, 0);
        if (diffs)
            harness_log("snapshot %s differs from the source", de->d_name);
        CHECK_EQ(diffs, 0);
        e2e_rm_rf(dst);
    }
    closedir(d);
    return n;
}

/*
 * A fresh store; with `resume`, one that holds what a push left staged:
 * a push whose first hard link failed at its commit, every file complete
 * in .staging/tree, so that the push to come takes them from there
 * (renames out of old/ instead of writes).
 */
static void prepare_store(e2e_env *env, const char *preload, const char *counts, const char *src,
                          int resume)
{
    e2e_rm_rf(env->store);
    CHECK(mkdir(env->store, 0700) == 0);
    if (!resume)
        return;
    char url[512];
    start_faulty_server(env, preload, "link:1:EIO", counts);
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "push", src, e2e_url(env, url, "data"));
    CHECK_EXIT(&p, 3);
    e2e_proc_free(&p);
    e2e_server_stop(&env->server);
}

static int marked_bad_, marked_;

/* A file that carries the hash attribute hauld sets on a file it has
 * received whole must hold exactly that content. */
static int check_marked_(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    if (flag != FTW_F || !S_ISREG(st->st_mode))
        return 0;
    unsigned char want[16];
    if (getxattr(path, "user.haul.hash", want, sizeof(want)) != (ssize_t)sizeof(want))
        return 0;
    marked_++;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    XXH3_state_t *h = XXH3_createState();
    CHECK(h != NULL);
    XXH3_128bits_reset(h);
    static char buf[1 << 16];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        XXH3_128bits_update(h, buf, (size_t)n);
    close(fd);
    XXH128_canonical_t got;
    XXH128_canonicalFromHash(&got, XXH3_128bits_digest(h));
    XXH3_freeState(h);
    if (memcmp(got.digest, want, sizeof(want)) != 0) {
        harness_log("%s is marked complete, but its content does not match its hash", path);
        marked_bad_++;
    }
    return 0;
}

/* Every file of the store marked complete is (none half-written under a
 * name that says it is whole). Returns how many are marked. */
static int check_marked_files(e2e_env *env)
{
    marked_bad_ = marked_ = 0;
    nftw(env->store, check_marked_, 64, FTW_PHYS);
    CHECK_EQ(marked_bad_, 0);
    return marked_;
}

/* Fails each call of `kind` in turn, in a push of the small tree that
 * starts from nothing, or (resume) from what a failed push staged. */
static void fail_each(const char *kind, int resume)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char preload[PATH_MAX], counts[PATH_MAX], src[PATH_MAX], dst[PATH_MAX], url[512];
    find_preload(preload);
    e2e_path(&env, counts, "iofault.counts");
    e2e_path(&env, src, "src");
    make_small_tree(src);

    /* How many calls of the kind the push makes. */
    prepare_store(&env, preload, counts, src, resume);
    start_faulty_server(&env, preload, NULL, counts);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "data"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    const unsigned long n = read_count(counts, kind);
    e2e_server_stop(&env.server);
    /* The store keeps the attribute: the check below sees something. */
    CHECK_GT(check_marked_files(&env), 0);
    harness_log("a push of the small tree makes %lu %s calls on the store", n, kind);
    CHECK_GT(n, 0);

    for (unsigned long k = 1; k <= n; k++) {
        const char *err = k % 2 ? "EIO" : "ENOSPC";
        char fault[64];
        snprintf(fault, sizeof(fault), "%s:%lu:%s", kind, k, err);
        prepare_store(&env, preload, counts, src, resume);
        start_faulty_server(&env, preload, fault, counts);
        e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "data"));
        CHECK_EQ(read_count(counts, "fired"), 1);
        harness_log("%s: push exited %d", fault, p.code);
        if (p.code != 0) {
            const char *says = k % 2 ? "input/output error" : "no space left";
            if (p.code != 3 || !e2e_contains(p.err, says) || !e2e_contains(p.err, "store"))
                e2e_proc_show(&p);
            CHECK_EXIT(&p, 3);
            CHECK(e2e_contains(p.err, says));
            CHECK(e2e_contains(p.err, "store"));
        }
        const int failed = p.code != 0;
        e2e_proc_free(&p);

        check_marked_files(&env);
        /* Nothing committed but the whole source; a failed push commits
         * nothing at all. */
        int snaps = check_snapshots(&env, src, "data");
        if (failed && snaps != 0)
            harness_log("%s: the push failed, yet left a snapshot", fault);
        CHECK_EQ(snaps, failed ? 0 : 1);

        /* hauld still serves, and the next push succeeds. */
        CHECK(e2e_server_alive(&env.server));
        e2e_haul(&env, &p, CMD_TIMEOUT, "ls", env.url);
        CHECK_EXIT(&p, 0);
        e2e_proc_free(&p);
        e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "data"));
        CHECK_EXIT(&p, 0);
        e2e_proc_free(&p);
        e2e_pathf(dst, "%s/dst-%lu", env.dir, k);
        e2e_haul(&env, &p, CMD_TIMEOUT, "pull", e2e_url(&env, url, "data"), dst);
        CHECK_EXIT(&p, 0);
        e2e_proc_free(&p);
        CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
        e2e_rm_rf(dst);
        e2e_haul(&env, &p, CMD_TIMEOUT, "verify", e2e_url(&env, url, "data"));
        CHECK_EXIT(&p, 0);
        e2e_proc_free(&p);
        CHECK_EQ(check_snapshots(&env, src, "data"), failed ? 1 : 2);
        e2e_server_stop(&env.server);
    }
    e2e_teardown(&env);
}

TEST_TIMEOUT(store_write_fails_at_every_k, 300)
{
    fail_each("write", 0);
}

TEST_TIMEOUT(store_sync_fails_at_every_k, 300)
{
    fail_each("sync", 0);
}

TEST_TIMEOUT(store_rename_fails_at_every_k, 300)
{
    fail_each("rename", 0);
}

TEST_TIMEOUT(store_link_fails_at_every_k, 300)
{
    fail_each("link", 0);
}

TEST_TIMEOUT(store_metadata_call_fails_at_every_k, 300)
{
    fail_each("meta", 0);
}

TEST_TIMEOUT(resumed_push_write_fails_at_every_k, 300)
{
    fail_each("write", 1);
}

TEST_TIMEOUT(resumed_push_sync_fails_at_every_k, 300)
{
    fail_each("sync", 1);
}

TEST_TIMEOUT(resumed_push_rename_fails_at_every_k, 300)
{
    fail_each("rename", 1);
}

TEST_TIMEOUT(resumed_push_link_fails_at_every_k, 300)
{
    fail_each("link", 1);
}

TEST_TIMEOUT(resumed_push_metadata_call_fails_at_every_k, 300)
{
    fail_each("meta", 1);
}

/* The id a `haul push -q` printed ("snapshot ID"). */
static void snapshot_id(const e2e_proc *p, char *id, size_t size)
{
    CHECK(strncmp(p->out, "snapshot ", 9) == 0);
    size_t n = strcspn(p->out + 9, "\n");
    CHECK(n > 0 && n < size);
    memcpy(id, p->out + 9, n);
    id[n] = '\0';
}

/*
 * `haul delete` of a snapshot while each rename, sync or metadata call
 * of the deletion fails in turn: the client exits 3 naming the store's
 * error and the snapshot stays whole, or it exits 0 and the snapshot is
 * gone; hauld serves on, and a deletion without faults then succeeds.
 */
TEST_TIMEOUT(delete_fails_at_every_k, 300)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char preload[PATH_MAX], counts[PATH_MAX], src[PATH_MAX], conf[PATH_MAX], url[512];
    char what[300], id[128];
    find_preload(preload);
    e2e_path(&env, counts, "iofault.counts");
    e2e_path(&env, src, "src");
    e2e_path(&env, conf, "hauld.conf");
    FILE *f = fopen(conf, "w");
    CHECK(f != NULL);
    fputs("[principal default]\nrights = create, read, delete\n", f);
    CHECK(fclose(f) == 0);
    env.server_args[0] = "--config";
    env.server_args[1] = conf;
    make_small_tree(src);

    static const char *const kinds[] = {"rename", "sync", "meta"};
    unsigned long before[3], after[3];
    prepare_store(&env, preload, counts, src, 0);
    start_faulty_server(&env, preload, NULL, counts);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "-q", src, e2e_url(&env, url, "data"));
    CHECK_EXIT(&p, 0);
    snapshot_id(&p, id, sizeof(id));
    e2e_proc_free(&p);
    for (int i = 0; i < 3; i++)
        before[i] = read_count(counts, kinds[i]);
    snprintf(what, sizeof(what), "data@%s", id);
    e2e_haul(&env, &p, CMD_TIMEOUT, "delete", e2e_url(&env, url, what));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    for (int i = 0; i < 3; i++)
        after[i] = read_count(counts, kinds[i]);
    e2e_server_stop(&env.server);

    for (int i = 0; i < 3; i++) {
        harness_log("a deletion makes %lu %s calls on the store", after[i] - before[i], kinds[i]);
        for (unsigned long k = before[i] + 1; k <= after[i]; k++) {
            const char *err = k % 2 ? "EIO" : "ENOSPC";
            char fault[64];
            snprintf(fault, sizeof(fault), "%s:%lu:%s", kinds[i], k, err);
            prepare_store(&env, preload, counts, src, 0);
            start_faulty_server(&env, preload, fault, counts);
            e2e_haul(&env, &p, CMD_TIMEOUT, "push", "-q", src, e2e_url(&env, url, "data"));
            CHECK_EXIT(&p, 0);
            snapshot_id(&p, id, sizeof(id));
            e2e_proc_free(&p);
            snprintf(what, sizeof(what), "data@%s", id);
            e2e_haul(&env, &p, CMD_TIMEOUT, "delete", e2e_url(&env, url, what));
            CHECK_EQ(read_count(counts, "fired"), 1);
            harness_log("%s: delete exited %d", fault, p.code);
            if (p.code != 0) {
                const char *says = k % 2 ? "input/output error" : "no space left";
                if (p.code != 3 || !e2e_contains(p.err, says))
                    e2e_proc_show(&p);
                CHECK_EXIT(&p, 3);
                CHECK(e2e_contains(p.err, says));
            }
            const int failed = p.code != 0;
            e2e_proc_free(&p);
            /* As the client was told: still whole, or gone. */
            CHECK_EQ(check_snapshots(&env, src, "data"), failed ? 1 : 0);
            CHECK(e2e_server_alive(&env.server));
            if (failed) {
                e2e_haul(&env, &p, CMD_TIMEOUT, "delete", e2e_url(&env, url, what));
                CHECK_EXIT(&p, 0);
                e2e_proc_free(&p);
                CHECK_EQ(check_snapshots(&env, src, "data"), 0);
            }
            e2e_server_stop(&env.server);
        }
    }
    e2e_teardown(&env);
}
