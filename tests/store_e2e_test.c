/*
 * store_e2e_test.c - hauld and haul as a user runs them: real processes,
 * a real store on disk, trees of every kind of entry pushed and pulled
 * back, compared entry by entry; incremental pushes, verify, hostile
 * destinations, unreadable sources, concurrent pushes, a full disk, and
 * kill -9 of either side in the middle of a push.
 *
 * The programs are BUILD/hauld and BUILD/haul beside BUILD/tests/; every
 * test SKIPs when they are not built. See e2e.h for the helpers and the
 * environment variables that help a post mortem (HAUL_E2E_KEEP=1,
 * HAUL_E2E_VERBOSE=1, HAUL_E2E_LOG=debug).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"

/* Seconds a command may take; a test fails at the first that takes longer,
 * well before the harness's TEST_TIMEOUT of the test. */
#define CMD_TIMEOUT 30

/* Paths below a root, in rotating buffers so that a call can take two. */

/* What `haul push --json` reports. */
typedef struct push_report {
    char snapshot[80];
    uint64_t files, bytes, bytes_sent, bytes_linked, skipped;
} push_report;

static void parse_report(const e2e_proc *p, push_report *r)
{
    memset(r, 0, sizeof(*r));
    if (e2e_json_str(p->out, "snapshot", r->snapshot, sizeof(r->snapshot)) != 0 ||
        e2e_json_u64(p->out, "bytes_sent", &r->bytes_sent) != 0 ||
        e2e_json_u64(p->out, "bytes_linked", &r->bytes_linked) != 0 ||
        e2e_json_u64(p->out, "files", &r->files) != 0 ||
        e2e_json_u64(p->out, "bytes", &r->bytes) != 0 ||
        e2e_json_u64(p->out, "skipped", &r->skipped) != 0 ||
        e2e_json_u64(p->out, "seconds", &(uint64_t){0}) != 0 ||
        e2e_json_u64(p->out, "mib_per_s", &(uint64_t){0}) != 0) {
        e2e_proc_show(p);
        CHECK(!"haul push --json did not print the documented JSON object");
    }
}

/* Runs `haul push SRC URL/DATASET --json`, expecting an exit status. */
static void push_json(e2e_env *env, const char *src, const char *dataset, int expected_exit,
                      push_report *r)
{
    char url[512];
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "push", src, e2e_url(env, url, dataset), "--json");
    CHECK_EXIT(&p, expected_exit);
    parse_report(&p, r);
    harness_log("push %s: snapshot %s, %llu files, %llu bytes, %llu sent, %llu linked", dataset,
                r->snapshot, (unsigned long long)r->files, (unsigned long long)r->bytes,
                (unsigned long long)r->bytes_sent, (unsigned long long)r->bytes_linked);
    e2e_proc_free(&p);
}

static void pull(e2e_env *env, const char *what, const char *dest, int expected_exit)
{
    char url[512];
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "pull", e2e_url(env, url, what), dest);
    CHECK_EXIT(&p, expected_exit);
    e2e_proc_free(&p);
}

/* What a push left staged: entries of .staging but its LOCK, which stays
 * (hauld flock()s it). */
static int staged_entries(e2e_env *env, const char *dataset)
{
    char dir[PATH_MAX];
    e2e_pathf(dir, "%s/default/%s/.staging", env->store, dataset);
    int n = e2e_count_entries(dir);
    if (n > 0 && access(e2e_at(dir, "LOCK"), F_OK) == 0)
        n--;
    return n < 0 ? 0 : n;
}

/* ------------------------------------------------------------------------ */

/*
 * A tree with every kind of entry haul keeps: files of awkward sizes,
 * empty and nested directories, relative, absolute and dangling symlinks,
 * hard links, a sparse file with a leading and a trailing hole, names that
 * are bytes rather than text, several modes, and mtimes with nanoseconds.
 */
static void make_everything(const char *root)
{
    e2e_mkdir(root);
    e2e_file(e2e_at(root, "f0"), 0, 1, 0644);
    e2e_file(e2e_at(root, "f1"), 1, 2, 0600);
    e2e_file(e2e_at(root, "f4095"), 4095, 3, 0444);
    e2e_mkdir(e2e_at(root, "a"));
    e2e_mkdir(e2e_at(root, "a/b"));
    e2e_mkdir(e2e_at(root, "a/b/c"));
    e2e_mkdir(e2e_at(root, "a/b/c/d"));
    e2e_file(e2e_at(root, "a/big1"), E2E_MIB + 1, 4, 0755);
    e2e_file(e2e_at(root, "a/b/big5"), 5 * E2E_MIB, 5, 0644);
    e2e_file(e2e_at(root, "a/b/c/d/deep.txt"), 1000, 6, 0644);
    e2e_mkdir(e2e_at(root, "empty"));
    e2e_mkdir(e2e_at(root, "a/b/empty2"));
    const uint64_t extents[] = {4 * E2E_MIB, 128 << 10, 48 * E2E_MIB, 128 << 10};
    e2e_sparse_file(e2e_at(root, "sparse"), 64 * E2E_MIB, extents, 2, 7);

    CHECK(symlink("a/b/c/d/deep.txt", e2e_at(root, "rel-link")) == 0);
    CHECK(symlink("../f1", e2e_at(root, "a/up-link")) == 0);
    CHECK(symlink("/tmp", e2e_at(root, "abs-link")) == 0);
    CHECK(symlink("no/such/file", e2e_at(root, "dangling")) == 0);

    CHECK(link(e2e_at(root, "f4095"), e2e_at(root, "a/b/f4095.hl")) == 0);
    CHECK(link(e2e_at(root, "f4095"), e2e_at(root, "hl3")) == 0);
    CHECK(link(e2e_at(root, "a/big1"), e2e_at(root, "a/b/c/big1.hl")) == 0);

    e2e_file(e2e_at(root, "\xff\xfe name"), 100, 8, 0644);
    e2e_mkdir(e2e_at(root, "caf\xc3\xa9"));
    e2e_file(e2e_at(root, "caf\xc3\xa9/\x01"
                          "ctrl\x7f"),
             10, 9, 0644);
    e2e_file(e2e_at(root, "with space"), 7, 10, 0644);
    e2e_file(e2e_at(root, "new\nline"), 12, 11, 0644);
    e2e_file(e2e_at(root, "back\\slash"), 13, 12, 0644);
    e2e_file(e2e_at(root, "\xe5\x90\x8d\xe5\x89\x8d"), 14, 13, 0644);
    char longname[256];
    memset(longname, 'L', 255);
    longname[255] = '\0';
    e2e_file(e2e_at(root, longname), 15, 14, 0644);

    e2e_mkdir(e2e_at(root, "private"));
    e2e_file(e2e_at(root, "private/key"), 32, 15, 0600);
    CHECK(chmod(e2e_at(root, "private"), 0700) == 0);
    e2e_mkdir(e2e_at(root, "ro-dir"));
    e2e_file(e2e_at(root, "ro-dir/inside"), 10, 16, 0644);
    CHECK(chmod(e2e_at(root, "ro-dir"), 0555) == 0);
    e2e_mkdir(e2e_at(root, "group"));
    CHECK(chmod(e2e_at(root, "group"), 0750) == 0);
    e2e_stamp_tree(root);
}

TEST_TIMEOUT(round_trip_every_kind_of_entry, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], dst[PATH_MAX], part[PATH_MAX], dir[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_path(&env, part, "part");
    make_everything(src);
    struct stat st;
    CHECK(stat(e2e_at(src, "sparse"), &st) == 0);
    if ((uint64_t)st.st_blocks * 512 > 2 * E2E_MIB)
        harness_log("this file system wrote the holes: sparseness is not checked");

    push_report r;
    push_json(&env, src, "everything", 0, &r);
    CHECK(r.snapshot[0] != '\0');
    CHECK_EQ(r.skipped, 0);
    /* The snapshot is where the store layout says, complete, and nothing
     * is left in staging. */
    e2e_pathf(dir, "%s/default/everything/snapshots/%s/MANIFEST", env.store, r.snapshot);
    CHECK(access(dir, F_OK) == 0);
    e2e_pathf(dir, "%s/default/everything/snapshots/%s/tree", env.store, r.snapshot);
    CHECK(access(dir, F_OK) == 0);
    CHECK_EQ(staged_entries(&env, "everything"), 0);

    pull(&env, "everything", dst, 0);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);

    /* Part of a snapshot: a directory with all below it (one of whose
     * files is a hard link to a file not asked for) and one file. */
    char url[512];
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", e2e_url(&env, url, "everything"), part, "a/b/c", "f1");
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(e2e_at(src, "a/b/c"), e2e_at(part, "a/b/c"), 0), 0);
    CHECK(e2e_same_content(e2e_at(src, "f1"), e2e_at(part, "f1")));
    CHECK(access(e2e_at(part, "f0"), F_OK) != 0);
    CHECK(access(e2e_at(part, "a/b/big5"), F_OK) != 0);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

#define SMALL_FILES 200

/* 200 files of 1 B .. 64 KiB in 10 directories, about 6 MiB. */
static uint64_t make_small_files(const char *root, uint64_t sizes[SMALL_FILES])
{
    e2e_mkdir(root);
    uint64_t x = 12345, total = 0;
    for (int d = 0; d < 10; d++) {
        char name[32];
        snprintf(name, sizeof(name), "d%d", d);
        e2e_mkdir(e2e_at(root, name));
    }
    for (int i = 0; i < SMALL_FILES; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        sizes[i] = 1 + (x >> 33) % (64 << 10);
        char name[64];
        snprintf(name, sizeof(name), "d%d/file-%03d", i % 10, i);
        e2e_file(e2e_at(root, name), sizes[i], (uint64_t)i, 0644);
        total += sizes[i];
    }
    e2e_stamp_tree(root);
    return total;
}

/*
 * Files small enough to be packed many to a message keep their holes,
 * and blocks of written zeros (no holes) keep their bytes: a hole in the
 * middle, a file that is only a hole, a hole at the end, zeros written
 * out, a zero block at an odd offset.
 */
TEST_TIMEOUT(small_files_keep_their_holes, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], dst[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(src);
    const uint64_t mid[] = {0, 8192, 40960, 8192};
    e2e_sparse_file(e2e_at(src, "hole-mid"), 49152, mid, 2, 1);
    e2e_sparse_file(e2e_at(src, "only-hole"), 20000, NULL, 0, 2);
    const uint64_t head[] = {0, 4096};
    e2e_sparse_file(e2e_at(src, "hole-end"), 32768, head, 1, 3);
    static uint8_t zeros[16384];
    int fd = open(e2e_at(src, "zeros"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, zeros, sizeof(zeros)), (ssize_t)sizeof(zeros));
    CHECK_OK(close(fd));
    e2e_file(e2e_at(src, "odd-zeros"), 6000, 4, 0644);
    fd = open(e2e_at(src, "odd-zeros"), O_WRONLY);
    CHECK(fd >= 0);
    CHECK_EQ(pwrite(fd, zeros, 1024, 1536), 1024);
    CHECK_OK(close(fd));
    e2e_stamp_tree(src);
    struct stat st;
    CHECK_OK(stat(e2e_at(src, "hole-mid"), &st));
    int holes = (uint64_t)st.st_blocks * 512 < 49152;
    if (!holes)
        harness_log("this file system wrote the holes: sparseness is not checked");

    push_report r;
    push_json(&env, src, "small-holes", 0, &r);
    CHECK(r.snapshot[0] != '\0');
    pull(&env, "small-holes", dst, 0);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    if (holes) {
        static const char *const sparse[] = {"hole-mid", "only-hole", "hole-end"};
        for (int i = 0; i < 3; i++) {
            struct stat a, b;
            CHECK_OK(stat(e2e_at(src, sparse[i]), &a));
            CHECK_OK(stat(e2e_at(dst, sparse[i]), &b));
            harness_log("%s: %lld blocks, restored %lld", sparse[i], (long long)a.st_blocks,
                        (long long)b.st_blocks);
            CHECK(b.st_blocks <= a.st_blocks);
        }
    }
    e2e_teardown(&env);
}

TEST_TIMEOUT(incremental_push_sends_only_changes, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], orig[PATH_MAX], dst1[PATH_MAX], dst2[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, orig, "orig");
    e2e_path(&env, dst1, "dst1");
    e2e_path(&env, dst2, "dst2");
    uint64_t sizes[SMALL_FILES];
    const uint64_t total = make_small_files(src, sizes);
    make_small_files(orig, sizes);

    push_report first, second;
    push_json(&env, src, "inc", 0, &first);
    CHECK_GE(first.bytes_sent, total);
    CHECK_EQ(first.bytes, total);

    /* Change 1% of the files: two of 32 KiB or more, new content of the
     * same size (so that only the mtime and the content tell), new mtime. */
    int changed[2], nchanged = 0;
    uint64_t changed_bytes = 0;
    for (int i = 0; i < SMALL_FILES && nchanged < 2; i++) {
        if (sizes[i] < (32 << 10))
            continue;
        changed[nchanged++] = i;
        char name[64];
        snprintf(name, sizeof(name), "d%d/file-%03d", i % 10, i);
        int fd = open(e2e_at(src, name), O_WRONLY | O_CLOEXEC);
        CHECK(fd >= 0);
        e2e_write_at(fd, 0, sizes[i], 5000u + (uint64_t)i);
        close(fd);
        e2e_set_mtime(e2e_at(src, name), 1700000000 + i, 987654321);
        changed_bytes += sizes[i];
    }
    CHECK_EQ(nchanged, 2);
    harness_log("changed files %d and %d: %llu bytes", changed[0], changed[1],
                (unsigned long long)changed_bytes);

    push_json(&env, src, "inc", 0, &second);
    CHECK(strcmp(first.snapshot, second.snapshot) != 0);
    CHECK_GE(second.bytes_sent, changed_bytes);
    CHECK_LT(second.bytes_sent, 2 * changed_bytes);
    CHECK_GE(second.bytes_linked, total - changed_bytes);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "inc"), 2);

    /* An unchanged file of the second snapshot is a hard link to the
     * first's; a changed one is not. */
    char a[PATH_MAX], b[PATH_MAX];
    struct stat sa, sb;
    const int same = changed[0] == 0 ? 1 : 0;
    e2e_pathf(a, "%s/default/inc/snapshots/%s/tree/d%d/file-%03d", env.store, first.snapshot,
              same % 10, same);
    e2e_pathf(b, "%s/default/inc/snapshots/%s/tree/d%d/file-%03d", env.store, second.snapshot,
              same % 10, same);
    CHECK(stat(a, &sa) == 0 && stat(b, &sb) == 0);
    CHECK_EQ(sa.st_ino, sb.st_ino);
    e2e_pathf(a, "%s/default/inc/snapshots/%s/tree/d%d/file-%03d", env.store, first.snapshot,
              changed[0] % 10, changed[0]);
    e2e_pathf(b, "%s/default/inc/snapshots/%s/tree/d%d/file-%03d", env.store, second.snapshot,
              changed[0] % 10, changed[0]);
    CHECK(stat(a, &sa) == 0 && stat(b, &sb) == 0);
    CHECK_NE(sa.st_ino, sb.st_ino);

    /* The latest snapshot is the changed tree; the first is still the
     * original. */
    pull(&env, "inc", dst2, 0);
    CHECK_EQ(e2e_tree_diff(src, dst2, 0), 0);
    char what[128];
    snprintf(what, sizeof(what), "inc@%s", first.snapshot);
    pull(&env, what, dst1, 0);
    CHECK_EQ(e2e_tree_diff(orig, dst1, 0), 0);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(verify_detects_a_flipped_bit, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], dst[PATH_MAX], url[512], stored[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(src);
    e2e_mkdir(e2e_at(src, "dir"));
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof(name), "dir/intact-%d", i);
        e2e_file(e2e_at(src, name), 100 << 10, (uint64_t)i, 0644);
    }
    e2e_file(e2e_at(src, "dir/victim"), 100 << 10, 99, 0444);
    e2e_stamp_tree(src);

    push_report r, r2;
    push_json(&env, src, "ds", 0, &r);
    push_json(&env, src, "ds2", 0, &r2);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", e2e_url(&env, url, "ds"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);

    /* One bit of the stored copy, in the middle of the file. */
    e2e_pathf(stored, "%s/default/ds/snapshots/%s/tree/dir/victim", env.store, r.snapshot);
    CHECK(chmod(stored, 0644) == 0);
    int fd = open(stored, O_RDWR | O_CLOEXEC);
    CHECK(fd >= 0);
    unsigned char byte;
    CHECK(pread(fd, &byte, 1, 54321) == 1);
    byte ^= 0x10;
    CHECK(pwrite(fd, &byte, 1, 54321) == 1);
    close(fd);

    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", e2e_url(&env, url, "ds"));
    CHECK_EXIT(&p, 5);
    if (!e2e_contains(p.out, "victim") && !e2e_contains(p.err, "victim"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.out, "victim") || e2e_contains(p.err, "victim"));
    e2e_proc_free(&p);

    char what[128];
    snprintf(what, sizeof(what), "ds@%s", r.snapshot);
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", e2e_url(&env, url, what));
    CHECK_EXIT(&p, 5);
    e2e_proc_free(&p);

    /* Another dataset with the same content is intact. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", e2e_url(&env, url, "ds2"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);

    /* A pull of the damaged snapshot checks every file's hash too. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", e2e_url(&env, url, "ds"), dst);
    CHECK_EXIT(&p, 5);
    CHECK(e2e_contains(p.out, "victim") || e2e_contains(p.err, "victim"));
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(pull_never_writes_outside_dest, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], d1[PATH_MAX], d2[PATH_MAX], d3[PATH_MAX], out1[PATH_MAX], out2[PATH_MAX],
        url[512];
    e2e_path(&env, src, "src");
    e2e_path(&env, d1, "dest1");
    e2e_path(&env, d2, "dest2");
    e2e_path(&env, d3, "dest3");
    e2e_path(&env, out1, "outside1");
    e2e_path(&env, out2, "outside2");
    e2e_mkdir(src);
    e2e_mkdir(e2e_at(src, "sub"));
    e2e_file(e2e_at(src, "sub/file"), 1000, 1, 0644);
    e2e_file(e2e_at(src, "top"), 500, 2, 0644);
    e2e_stamp_tree(src);
    push_report r;
    push_json(&env, src, "hostile", 0, &r);

    /* DEST/sub is a symlink to a directory outside DEST, and the snapshot
     * has sub/file: nothing may land in the outside directory. */
    e2e_mkdir(d1);
    e2e_mkdir(out1);
    CHECK(symlink(out1, e2e_at(d1, "sub")) == 0);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", e2e_url(&env, url, "hostile"), d1);
    harness_log("pull over a symlinked directory: exit %d", p.code);
    CHECK_EQ(e2e_count_entries(out1), 0);
    if (p.code == 0) {
        struct stat st;
        CHECK(lstat(e2e_at(d1, "sub"), &st) == 0);
        CHECK(S_ISDIR(st.st_mode));
        CHECK(e2e_same_content(e2e_at(src, "sub/file"), e2e_at(d1, "sub/file")));
    }
    e2e_proc_free(&p);

    /* DEST/top is a symlink to a file outside DEST, and the snapshot has a
     * file "top": the outside file keeps its content. */
    e2e_mkdir(d2);
    e2e_mkdir(out2);
    int fd = open(e2e_at(out2, "victim"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, "precious", 8) == 8);
    close(fd);
    CHECK(symlink(e2e_at(out2, "victim"), e2e_at(d2, "top")) == 0);
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", e2e_url(&env, url, "hostile"), d2);
    harness_log("pull over a symlinked file: exit %d", p.code);
    char *victim = e2e_slurp(e2e_at(out2, "victim"));
    CHECK_STR_EQ(victim, "precious");
    free(victim);
    if (p.code == 0) {
        struct stat st;
        CHECK(lstat(e2e_at(d2, "top"), &st) == 0);
        CHECK(S_ISREG(st.st_mode));
        CHECK(e2e_same_content(e2e_at(src, "top"), e2e_at(d2, "top")));
    }
    e2e_proc_free(&p);

    /* A PATH that climbs out of the snapshot is a usage error. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", e2e_url(&env, url, "hostile"), d3, "../x");
    CHECK_EXIT(&p, 1);
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", e2e_url(&env, url, "hostile"), d3, "sub/../../x");
    CHECK_EXIT(&p, 1);
    e2e_proc_free(&p);
    CHECK(access(e2e_at(env.dir, "x"), F_OK) != 0);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(missing_source_fails_clearly, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], url[512];
    e2e_path(&env, src, "no-such-dir");
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "missing"));
    harness_log("push of a missing directory: exit %d", p.code);
    if (!e2e_contains(p.err, "no-such-dir"))
        e2e_proc_show(&p);
    /* Nothing was pushed: a source that is no directory is a usage
     * error (haul --help). */
    CHECK_EXIT(&p, 1);
    CHECK(e2e_contains(p.err, "no-such-dir"));
    CHECK_EQ(e2e_snapshot_count(&env, "default", "missing"), 0);
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

TEST_TIMEOUT(unreadable_files_are_skipped_and_reported, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], dst[PATH_MAX], url[512];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "ok1"), 3000, 1, 0644);
    e2e_file(e2e_at(src, "ok2"), 4000, 2, 0644);
    e2e_mkdir(e2e_at(src, "dir"));
    e2e_file(e2e_at(src, "dir/ok3"), 5000, 3, 0644);
    e2e_file(e2e_at(src, "secret"), 6000, 4, 0000);
    e2e_mkdir(e2e_at(src, "locked"));
    e2e_file(e2e_at(src, "locked/x"), 10, 5, 0644);
    CHECK(chmod(e2e_at(src, "locked"), 0000) == 0);
    e2e_stamp_tree(src);

    /* Root reads anything; the client runs as "nobody" then, so that
     * permissions apply to it. */
    e2e_proc p = {.as_nobody = 1};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "partial"), "--json");
    if (p.code == 126)
        SKIP("cannot run the client as nobody");
    CHECK_EXIT(&p, 2);
    push_report r;
    parse_report(&p, &r);
    harness_log("skipped %llu; stderr: %s", (unsigned long long)r.skipped, p.err);
    CHECK_GE(r.skipped, 1);
    CHECK(e2e_contains(p.err, "secret"));
    CHECK(e2e_contains(p.err, "locked"));
    CHECK(r.snapshot[0] != '\0');
    e2e_proc_free(&p);

    /* The rest went on and is in the snapshot. */
    pull(&env, "partial", dst, 0);
    CHECK(e2e_same_content(e2e_at(src, "ok1"), e2e_at(dst, "ok1")));
    CHECK(e2e_same_content(e2e_at(src, "ok2"), e2e_at(dst, "ok2")));
    CHECK(e2e_same_content(e2e_at(src, "dir/ok3"), e2e_at(dst, "dir/ok3")));
    CHECK(access(e2e_at(dst, "secret"), F_OK) != 0);
    CHECK(access(e2e_at(dst, "locked/x"), F_OK) != 0);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(two_pushes_to_one_dataset, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], url[512], staging[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof(name), "part-%d", i);
        e2e_file(e2e_at(src, name), 32 * E2E_MIB, (uint64_t)i, 0644);
    }
    e2e_stamp_tree(src);
    e2e_pathf(staging, "%s/default/busy/.staging", env.store);

    e2e_proc first = {0}, second = {0};
    e2e_haul_start(&env, &first, "push", src, e2e_url(&env, url, "busy"), "--json");
    int ok = 0;
    E2E_WAIT_UNTIL(ok, access(staging, F_OK) == 0 || e2e_proc_exited(&first), 20000);
    if (e2e_proc_exited(&first)) {
        e2e_proc_wait(&first, 1);
        e2e_proc_show(&first);
        CHECK(!"the first push ended before the second could start");
    }
    CHECK(ok);

    e2e_haul(&env, &second, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "busy"));
    const int first_running = !e2e_proc_exited(&first);
    harness_log("second push: exit %d while the first was %s", second.code,
                first_running ? "still running" : "done");
    e2e_proc_wait(&first, CMD_TIMEOUT);
    CHECK_EXIT(&first, 0);
    if (second.code == 4) {
        /* Refused: it must say why. */
        if (!e2e_contains(second.err, "busy") && !e2e_contains(second.err, "running"))
            e2e_proc_show(&second);
        CHECK(e2e_contains(second.err, "busy") || e2e_contains(second.err, "running"));
        CHECK_EQ(e2e_snapshot_count(&env, "default", "busy"), 1);
    } else {
        /* Or it waited for the first, and made a second snapshot. */
        CHECK_EXIT(&second, 0);
        CHECK_EQ(e2e_snapshot_count(&env, "default", "busy"), 2);
    }
    e2e_proc_free(&first);
    e2e_proc_free(&second);

    e2e_haul(&env, &first, CMD_TIMEOUT, "verify", e2e_url(&env, url, "busy"));
    CHECK_EXIT(&first, 0);
    e2e_proc_free(&first);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(full_disk_fails_cleanly, 120)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    e2e_mount_store(&env, 16);
    e2e_start_server(&env);
    char big[PATH_MAX], small[PATH_MAX], dst[PATH_MAX], url[512], dir[PATH_MAX];
    e2e_path(&env, big, "big");
    e2e_path(&env, small, "small");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(big);
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof(name), "chunk-%d", i);
        e2e_file(e2e_at(big, name), 4 * E2E_MIB, (uint64_t)i, 0644);
    }
    e2e_stamp_tree(big);
    e2e_mkdir(small);
    e2e_file(e2e_at(small, "one"), E2E_MIB, 42, 0644);
    e2e_stamp_tree(small);

    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", big, e2e_url(&env, url, "big"));
    CHECK_EXIT(&p, 3);
    if (!e2e_contains(p.err, "space"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.err, "space"));
    e2e_proc_free(&p);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "big"), 0);
    /* The server goes on serving: a request that needs no room works. */
    CHECK(e2e_server_alive(&env.server));
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", env.url);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);

    /* What the failed push staged is what fills the disk; without it, the
     * server serves the next push. */
    e2e_pathf(dir, "%s/default/big/.staging", env.store);
    e2e_rm_rf(dir);
    push_report r;
    push_json(&env, small, "small", 0, &r);
    pull(&env, "small", dst, 0);
    CHECK_EQ(e2e_tree_diff(small, dst, 0), 0);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

/* One 256 MiB file and 100 small ones. */
static uint64_t make_resume_tree(const char *root)
{
    e2e_mkdir(root);
    e2e_file(e2e_at(root, "big"), 256 * E2E_MIB, 77, 0644);
    uint64_t total = 256 * E2E_MIB;
    e2e_mkdir(e2e_at(root, "small"));
    for (int i = 0; i < 100; i++) {
        char name[32];
        snprintf(name, sizeof(name), "small/s%03d", i);
        e2e_file(e2e_at(root, name), 100 + (uint64_t)i * 80, (uint64_t)i, 0644);
        total += 100 + (uint64_t)i * 80;
    }
    e2e_stamp_tree(root);
    return total;
}

/*
 * Starts a push and returns once the server has staged more than `bytes`
 * of the big file, with the push still running. A push refused as busy
 * (the server has not yet noticed that an interrupted one is gone) is
 * retried for up to 10 s, as in push_after_interruption(). The push's
 * --timeout is short: a server that restarted does not know the push's
 * session and drops its frames (docs/protocol.md, section 3), so the
 * client learns of the restart only from its timeout.
 */
static void start_push_and_wait_for_staging(e2e_env *env, e2e_proc *p, const char *src,
                                            const char *dataset, uint64_t bytes)
{
    char url[512], staging[PATH_MAX];
    e2e_pathf(staging, "%s/default/%s/.staging", env->store, dataset);
    const double start = e2e_now();
    for (;;) {
        memset(p, 0, sizeof(*p));
        e2e_haul_start(env, p, "push", src, e2e_url(env, url, dataset), "--json", "--timeout", "5");
        int ok = 0;
        E2E_WAIT_UNTIL(ok, e2e_largest_file(staging) > bytes || e2e_proc_exited(p), 30000);
        if (!e2e_proc_exited(p)) {
            CHECK(ok);
            break;
        }
        e2e_proc_wait(p, 1);
        if (p->code == 4 && e2e_now() - start < 10) {
            e2e_proc_free(p);
            poll(NULL, 0, 100);
            continue;
        }
        e2e_proc_show(p);
        if (p->code == 4)
            CHECK(!"the dataset is still busy 10 s after the interrupted push's client died");
        CHECK(!"the push ended before it could be interrupted");
    }
    harness_log("interrupting with %llu bytes of the big file staged",
                (unsigned long long)e2e_largest_file(staging));
}

/*
 * Pushes again after an interruption. The server may refuse ("busy") for
 * as long as it has not noticed that the interrupted push is gone; the
 * push is retried for up to 10 s then: a server that holds a dataset for
 * a client that is gone much longer leaves a user who simply runs the push
 * again with a refusal.
 */
static void push_after_interruption(e2e_env *env, const char *src, const char *dataset,
                                    push_report *r)
{
    char url[512];
    e2e_proc p = {0};
    const double start = e2e_now();
    for (;;) {
        e2e_haul(env, &p, CMD_TIMEOUT, "push", src, e2e_url(env, url, dataset), "--json");
        if (p.code != 4 || e2e_now() - start > 10)
            break;
        e2e_proc_free(&p);
        poll(NULL, 0, 100);
    }
    if (e2e_now() - start > 1)
        harness_log("the push after the interruption took %.1f s", e2e_now() - start);
    CHECK_EXIT(&p, 0);
    parse_report(&p, r);
    harness_log("resumed push: %llu bytes sent, %llu linked", (unsigned long long)r->bytes_sent,
                (unsigned long long)r->bytes_linked);
    e2e_proc_free(&p);
}

TEST_TIMEOUT(kill_client_mid_push_then_resume, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], dst[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    const uint64_t total = make_resume_tree(src);

    /* Killed twice: once early in the big file, then again while the
     * resumed push is well past where the first one stopped. */
    e2e_proc p = {0};
    const uint64_t stops[2] = {32 * E2E_MIB, 160 * E2E_MIB};
    for (int i = 0; i < 2; i++) {
        start_push_and_wait_for_staging(&env, &p, src, "resume", stops[i]);
        CHECK(kill(p.pid, SIGKILL) == 0);
        e2e_proc_wait(&p, 10);
        CHECK_EQ(p.sig, SIGKILL);
        e2e_proc_free(&p);
        /* Nothing looks complete. */
        CHECK_EQ(e2e_snapshot_count(&env, "default", "resume"), 0);
    }

    push_report r;
    push_after_interruption(&env, src, "resume", &r);
    /* It resumed: what was staged was not sent again. */
    CHECK_LT(r.bytes_sent, total - 128 * E2E_MIB);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "resume"), 1);
    pull(&env, "resume", dst, 0);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_teardown(&env);
}

/*
 * A client that falls silent without closing anything (stopped here with
 * SIGSTOP: its kernel still acknowledges, as a host behind a partition
 * seems to until its connections time out) holds its dataset only until
 * hauld's idle timeout and the grace of a gone push have passed: hauld
 * ends the push on its own, keeping what it staged, and the push run
 * again is accepted at once and resumes, instead of being refused "busy"
 * for the whole message timeout.
 */
TEST_TIMEOUT(silent_client_push_ended_then_next_push_accepted, 120)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--keepalive";
    env.server_args[1] = "150";
    env.server_args[2] = "--idle-timeout";
    env.server_args[3] = "600";
    env.server_args[4] = NULL;
    e2e_start_server(&env);
    char src[PATH_MAX], dst[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    const uint64_t total = make_resume_tree(src);

    e2e_proc p = {0};
    start_push_and_wait_for_staging(&env, &p, src, "resume", 32 * E2E_MIB);
    CHECK(kill(p.pid, SIGSTOP) == 0);
    const double stopped = e2e_now();

    /* 0.6 s of silence, then 5 s of grace; the margin is for the load. */
    CHECK(e2e_log_wait(&env, "its client has had no connection for 5 s", 30));
    const double ended = e2e_now() - stopped;
    harness_log("hauld ended the silent client's push %.1f s after it stopped", ended);
    CHECK_GE(ended, 5.0);
    CHECK_LT(ended, 20.0);

    push_report r;
    push_after_interruption(&env, src, "resume", &r);
    CHECK_LT(r.bytes_sent, total - 16 * E2E_MIB);

    CHECK(kill(p.pid, SIGKILL) == 0);
    e2e_proc_wait(&p, 10);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "resume"), 1);
    pull(&env, "resume", dst, 0);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_teardown(&env);
}

TEST_TIMEOUT(kill_server_mid_push_then_resume, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], dst[PATH_MAX], listen[64];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    const uint64_t total = make_resume_tree(src);

    e2e_proc p = {0};
    start_push_and_wait_for_staging(&env, &p, src, "resume", 32 * E2E_MIB);
    e2e_server_kill(&env.server);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "resume"), 0);

    /* A new server on the same store and port. */
    const int port = env.server.port;
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    CHECK(e2e_server_start_at(&env, &env.server, listen) == 0);
    CHECK_EQ(env.server.port, port);

    /* The interrupted client fails clearly within its timeout, or
     * reconnects and finishes. */
    const double restarted = e2e_now();
    e2e_proc_wait(&p, 30);
    harness_log("the interrupted push ended with exit %d, %.1f s after the restart", p.code,
                e2e_now() - restarted);
    CHECK_LT(e2e_now() - restarted, 15.0);
    if (p.code != 0 && p.code != 3)
        e2e_proc_show(&p);
    CHECK(p.code == 0 || p.code == 3);
    e2e_proc_free(&p);

    push_report r;
    push_after_interruption(&env, src, "resume", &r);
    CHECK_LT(r.bytes_sent, total - 16 * E2E_MIB);
    CHECK_GE(e2e_snapshot_count(&env, "default", "resume"), 1);
    pull(&env, "resume", dst, 0);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(ls_lists_datasets_snapshots_and_files, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], url[512], what[160], dir[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "alpha.txt"), 100, 1, 0644);
    e2e_mkdir(e2e_at(src, "dir"));
    e2e_file(e2e_at(src, "dir/beta.txt"), 200, 2, 0644);
    e2e_stamp_tree(src);

    push_report a, b, o;
    push_json(&env, src, "lsds", 0, &a);
    e2e_file(e2e_at(src, "alpha.txt"), 150, 3, 0644);
    e2e_set_mtime(e2e_at(src, "alpha.txt"), 1700000001, 1);
    push_json(&env, src, "lsds", 0, &b);
    push_json(&env, src, "other", 0, &o);

    /* Another principal's dataset lives in its own namespace. */
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "-q", src, e2e_url(&env, url, "hidden"), "--principal",
             "alice");
    CHECK_EXIT(&p, 0);
    /* It prints the snapshot id ("snapshot ID", or the id alone). */
    p.out[strcspn(p.out, "\n")] = '\0';
    const char *id = strrchr(p.out, ' ') ? strrchr(p.out, ' ') + 1 : p.out;
    CHECK(id[0] != '\0');
    e2e_pathf(dir, "%s/alice/hidden/snapshots/%s/MANIFEST", env.store, id);
    CHECK(access(dir, F_OK) == 0);
    e2e_proc_free(&p);

    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", env.url);
    CHECK_EXIT(&p, 0);
    CHECK(e2e_contains(p.out, "lsds"));
    CHECK(e2e_contains(p.out, "other"));
    CHECK(!e2e_contains(p.out, "hidden"));
    e2e_proc_free(&p);

    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", e2e_url(&env, url, "lsds"));
    CHECK_EXIT(&p, 0);
    if (!strstr(p.out, a.snapshot) || !strstr(p.out, b.snapshot))
        e2e_proc_show(&p);
    CHECK(strstr(p.out, a.snapshot) != NULL);
    CHECK(strstr(p.out, b.snapshot) != NULL);
    /* Oldest first. */
    CHECK(strstr(p.out, a.snapshot) < strstr(p.out, b.snapshot));
    e2e_proc_free(&p);

    snprintf(what, sizeof(what), "lsds@%s", a.snapshot);
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", e2e_url(&env, url, what));
    CHECK_EXIT(&p, 0);
    if (!e2e_contains(p.out, "alpha.txt") || !e2e_contains(p.out, "beta.txt"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.out, "alpha.txt"));
    CHECK(e2e_contains(p.out, "beta.txt"));
    e2e_proc_free(&p);

    /* What does not exist is refused by the server. */
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", e2e_url(&env, url, "nosuch"));
    CHECK_EXIT(&p, 4);
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", e2e_url(&env, url, "lsds@nosuchsnapshot"));
    CHECK_EXIT(&p, 4);
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(bench_prints_a_throughput, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    e2e_proc p = {0};
    const double start = e2e_now();
    e2e_haul(&env, &p, CMD_TIMEOUT, "bench", env.url, "-t", "1");
    const double took = e2e_now() - start;
    CHECK_EXIT(&p, 0);
    harness_log("bench took %.2f s: %s", took, p.out);
    CHECK_GE(took, 0.9);
    CHECK_LT(took, 15.0);
    /* A rate: digits and a unit per second. */
    CHECK(strpbrk(p.out, "0123456789") != NULL);
    CHECK(e2e_contains(p.out, "/s") || e2e_contains(p.out, "bps"));
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

/* ------------------------------------------------------------------------ */

TEST_TIMEOUT(unix_socket_round_trip, 120)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char sock[PATH_MAX], listen[PATH_MAX + 8], url[PATH_MAX + 64], src[PATH_MAX], dst[PATH_MAX];
    e2e_path(&env, sock, "hauld.sock");
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    snprintf(listen, sizeof(listen), "unix:%s", sock);
    CHECK(e2e_server_start_at(&env, &env.server, listen) == 0);
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "one"), 300000, 1, 0640);
    e2e_mkdir(e2e_at(src, "d"));
    e2e_file(e2e_at(src, "d/two"), 2, 2, 0644);
    e2e_stamp_tree(src);

    /* The dataset is the last component of a Unix socket's URL. */
    e2e_proc p = {0};
    snprintf(url, sizeof(url), "haul://unix:%s/viaunix", sock);
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, url);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", url, dst);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    e2e_teardown(&env);
}

/* --store fs:DIR is the same store as --store DIR, laid out as before:
 * what one hauld stored, a hauld on the other spelling serves. */
TEST_TIMEOUT(store_spec_fs_prefix_is_the_same_store, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], dst[PATH_MAX], url[512], dir[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_path(&env, dst, "dst");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "one"), 100000, 1, 0640);
    e2e_mkdir(e2e_at(src, "d"));
    e2e_file(e2e_at(src, "d/two"), 2, 2, 0644);
    e2e_stamp_tree(src);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "spec"));
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "spec"), 1);
    e2e_server_stop(&env.server);

    snprintf(dir, sizeof(dir), "%s", env.store);
    e2e_pathf(env.store, "fs:%s", dir);
    e2e_start_server(&env);
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", e2e_url(&env, url, "spec"), dst);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_tree_diff(src, dst, 0), 0);
    snprintf(env.store, sizeof(env.store), "%s", dir);
    e2e_teardown(&env);
}

/* A store spec hauld cannot use stops it at the start with a sentence
 * that says why: RADOS in a hauld built without it, or the RADOS options
 * with a file-system store. */
TEST_TIMEOUT(store_spec_refused_at_start, 30)
{
    static const struct {
        const char *args, *says;
    } bad[] = {
#ifndef HAUL_HAVE_RADOS
        {"--store rados:haul", "this hauld was built without RADOS"},
#endif
        {"--store fs:", "names nothing after fs:"},
        {"--store STORE --ceph-conf /etc/ceph/ceph.conf", "apply to a rados:POOL store only"},
        {"--store STORE --ceph-id admin", "apply to a rados:POOL store only"},
    };
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char out[PATH_MAX];
    e2e_path(&env, out, "out");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char args[PATH_MAX + 200];
        const char *at = strstr(bad[i].args, "STORE");
        if (at)
            snprintf(args, sizeof(args), "%.*s'%s'%s", (int)(at - bad[i].args), bad[i].args,
                     env.store, at + 5);
        else
            snprintf(args, sizeof(args), "%s", bad[i].args);
        char cmd[4 * PATH_MAX + 400];
        snprintf(cmd, sizeof(cmd), "'%s' --listen 127.0.0.1:0 --plaintext %s >'%s' 2>&1", env.hauld,
                 args, out);
        int status = system(cmd);
        CHECK(WIFEXITED(status));
        CHECK_EQ(WEXITSTATUS(status), 1);
        char *text = e2e_slurp(out);
        if (!e2e_contains(text, bad[i].says))
            harness_log("hauld %s said: %s", args, text ? text : "(nothing)");
        CHECK(e2e_contains(text, bad[i].says));
        free(text);
    }
    e2e_teardown(&env);
}
