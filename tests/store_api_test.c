/*
 * store_api_test.c - the file-system store through the store interface
 * (store/store.h) only: the sequences of store_api.h, which every store
 * must pass, against an fs: store in a temporary directory; and how a
 * store spec is chosen.
 */
#include "harness.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "store_api.h"

static char spec[PATH_MAX + 16];

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A store in a directory of the test's own, removed when the test ends
 * (each test is a process of its own). */
static char dir[PATH_MAX];

static void cleanup(void)
{
    if (dir[0])
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *fs_spec(void)
{
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(dir, sizeof(dir), "%s/haul-store-api-XXXXXX", tmp);
    CHECK(mkdtemp(dir) != NULL);
    atexit(cleanup);
    snprintf(spec, sizeof(spec), "fs:%s/store", dir);
    return spec;
}

TEST(fs_push_and_read)
{
    store_api_push_and_read(fs_spec(), NULL, "t");
}

/*
 * Many files awaited before any content comes, their content then in
 * another order, some of them dropped: the store finds each one's entry
 * again by id, however far back it was awaited. Paths of every length
 * up to the longest name fill the store's own records of the awaited files
 * (the fs store keeps the latest in memory and the others in its staging
 * area).
 */
#define MANY 1000

static void many_path(char *out, unsigned i)
{
    /* Every 97th name is near the longest a name may be. */
    unsigned pad = i % 97 == 0 ? HSP_NAME_MAX - 16 : i % 50;
    int n = snprintf(out, HSP_PATH_MAX + 1, "f%u-", i);
    memset(out + n, 'x', pad);
    out[n + pad] = '\0';
}

TEST(fs_many_awaited_files_found_again)
{
    store_api_env env;
    store_api_open(&env, fs_spec(), NULL, "many", "t");
    store_lock *lock;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
    store_push *p;
    store_push_info info;
    STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
    static char paths[MANY][HSP_PATH_MAX + 1];
    for (unsigned i = 0; i < MANY; i++) {
        many_path(paths[i], i);
        hsp_entry e = store_api_entry(i, HSP_FILE, paths[i], 8 + i % 5, NULL);
        STORE_API_OK(&env, store_file_await(p, &e, &env.err));
    }
    /* Content from the last to the first; every seventh dropped. */
    unsigned files = 0;
    for (unsigned k = 0; k < MANY; k++) {
        unsigned i = MANY - 1 - k;
        char path[HSP_PATH_MAX + 1];
        if (i % 7 == 3) {
            STORE_API_OK(&env, store_file_drop(p, i, path, &env.err));
            CHECK_STR_EQ(path, paths[i]);
            continue;
        }
        hsp_entry got;
        uint64_t held = 99;
        STORE_API_OK(&env, store_file_open(p, i, &got, path, &held, &env.err));
        CHECK_EQ(held, 0);
        CHECK_EQ(got.id, i);
        CHECK_EQ(got.size, 8 + i % 5);
        CHECK_STR_EQ(path, paths[i]);
        uint8_t data[16];
        store_api_fill(data, got.size, i);
        STORE_API_OK(&env, store_file_write(p, 0, data, got.size, &env.err));
        hsp_hash h;
        store_api_hash(data, got.size, &h);
        STORE_API_OK(&env, store_file_done(p, &h, &env.err));
        files++;
    }
    /* What was dropped or is complete is not awaited any more. */
    hsp_entry got;
    char path[HSP_PATH_MAX + 1];
    uint64_t held;
    CHECK_EQ(store_file_open(p, 3, &got, path, &held, &env.err), STORE_NOT_AWAITED);
    CHECK_EQ(store_file_open(p, 0, &got, path, &held, &env.err), STORE_NOT_AWAITED);
    CHECK_EQ(store_file_open(p, MANY - 1, &got, path, &held, &env.err), STORE_NOT_AWAITED);

    char id[HSP_SNAPSHOT_MAX + 1];
    int problems = 0;
    STORE_API_OK(&env, store_push_commit(p, files, 0, id, store_api_problem, &problems, &env.err));
    store_push_end(p);
    store_unlock(lock);
    store_snapshot *snap;
    store_info si;
    STORE_API_OK(&env, store_snapshot_open(env.s, &env.ds, id, &snap, &si, &env.err));
    hsp_record rec;
    int rc;
    unsigned n = 0;
    while ((rc = store_manifest_next(snap, &rec, &env.err)) == 1) {
        const hsp_entry *e = &rec.entry;
        unsigned i = (unsigned)strtoul((const char *)e->path + 1, NULL, 10);
        CHECK(i < MANY && i % 7 != 3);
        CHECK_EQ((size_t)e->path_len, strlen(paths[i]));
        CHECK(memcmp(e->path, paths[i], e->path_len) == 0);
        uint8_t data[16];
        store_api_fill(data, e->size, i);
        store_api_check_file(&env, snap, e, data, e->size);
        n++;
    }
    CHECK_EQ(rc, 0);
    CHECK_EQ(n, files);
    store_snapshot_close(snap);
    store_api_close(&env);
}

/* A small push keeps its records of the awaited files in memory: the
 * staging area's NEEDS and NEEDIDX stay empty, and cost no system call
 * per file. */
TEST(fs_small_push_spills_nothing)
{
    store_api_env env;
    store_api_open(&env, fs_spec(), NULL, "small", "t");
    store_lock *lock;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
    store_push *p;
    store_push_info info;
    STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
    static char paths[50][HSP_PATH_MAX + 1];
    for (unsigned i = 0; i < 50; i++) {
        many_path(paths[i], i);
        hsp_entry e = store_api_entry(i, HSP_FILE, paths[i], 8, NULL);
        STORE_API_OK(&env, store_file_await(p, &e, &env.err));
    }
    for (unsigned i = 0; i < 50; i++) {
        hsp_entry got;
        char path[HSP_PATH_MAX + 1];
        uint64_t held;
        STORE_API_OK(&env, store_file_open(p, i, &got, path, &held, &env.err));
        CHECK_STR_EQ(path, paths[i]);
        uint8_t data[8];
        store_api_fill(data, sizeof(data), i);
        STORE_API_OK(&env, store_file_write(p, 0, data, sizeof(data), &env.err));
        hsp_hash h;
        store_api_hash(data, sizeof(data), &h);
        STORE_API_OK(&env, store_file_done(p, &h, &env.err));
    }
    static const char *const lists[] = {"NEEDS", "NEEDIDX"};
    for (int k = 0; k < 2; k++) {
        char file[PATH_MAX + 256];
        snprintf(file, sizeof(file), "%s/store/%s/data/.staging/%s", dir, env.ns, lists[k]);
        struct stat st;
        CHECK_OK(stat(file, &st));
        CHECK_EQ(st.st_size, 0);
    }
    char id[HSP_SNAPSHOT_MAX + 1];
    int problems = 0;
    STORE_API_OK(&env, store_push_commit(p, 50, 400, id, store_api_problem, &problems, &env.err));
    store_push_end(p);
    store_unlock(lock);
    store_api_close(&env);
}

TEST(fs_share_and_delete)
{
    store_api_share_and_delete(fs_spec(), NULL, "t");
}

TEST(fs_abort_and_resume)
{
    store_api_abort_and_resume(fs_spec(), NULL, "t");
}

TEST(fs_lock)
{
    store_api_lock(fs_spec(), NULL, "t");
}

TEST(fs_errors)
{
    store_api_errors(fs_spec(), NULL, "t");
}

/* Several threads on one store at once, as hauld's workers use it. */
TEST(fs_threads)
{
    store_api_threads(fs_spec(), NULL, "t");
}

/* A spec without a prefix is a directory, the same store as with fs:. */
TEST(spec_plain_directory_is_fs)
{
    const char *s = fs_spec();
    store_api_push_and_read(s + 3, NULL, "t");
}

/* rados: without RADOS built in is refused with a sentence saying so;
 * fs: with nothing after it names nothing. */
TEST(spec_refused)
{
    store *s = NULL;
    store_err err;
#ifndef HAUL_HAVE_RADOS
    CHECK_EQ(store_open("rados:pool", NULL, &s, &err), -ENOTSUP);
    CHECK(strstr(err.text, "built without RADOS") != NULL);
#endif
    CHECK_EQ(store_open("fs:", NULL, &s, &err), -EINVAL);
    CHECK(err.text[0] != '\0');
    CHECK(s == NULL);
}
