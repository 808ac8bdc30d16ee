/*
 * store_api.h - the sequences that every store behind store/store.h must
 * pass, through the ops table only, for any store spec.
 *
 * A test program includes harness.h, then this header, and calls each
 * store_api_*() from a TEST with the spec of the store it tests
 * ("fs:DIR" in store_api_test.c; a "rados:POOL" from a test of the RADOS
 * store) and the options to open it with. Every sequence works in a
 * namespace of its own, named after it and a tag the caller gives (so
 * that runs sharing a pool do not meet), and checks the contract the
 * header states: what a push puts is visible only once committed and
 * then reads back as it was put; an unchanged file is shared with the
 * previous snapshot and counted once by usage; an abandoned push is
 * resumed from what it staged; the lock excludes a second holder; errors
 * are negative errno values with a sentence; and several threads may use
 * one store at once, each on objects of its own, as hauld's workers do.
 */
#ifndef HAUL_TESTS_STORE_API_H
#define HAUL_TESTS_STORE_API_H

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "store/store.h"

/* ---- helpers ----------------------------------------------------------------- */

typedef struct store_api_env {
    store *s;
    char ns[128];
    store_dataset ds;
    store_err err;
} store_api_env;

static void __attribute__((unused))
store_api_open(store_api_env *env, const char *spec, const store_options *opt, const char *seq,
               const char *tag)
{
    memset(env, 0, sizeof(*env));
    int rc = store_open(spec, opt, &env->s, &env->err);
    if (rc < 0)
        harness_log("store_open(%s): %s", spec, env->err.text);
    CHECK_EQ(rc, 0);
    snprintf(env->ns, sizeof(env->ns), "api-%s/%s", tag, seq);
    env->ds.ns = env->ns;
    env->ds.name = "data";
}

static void __attribute__((unused)) store_api_close(store_api_env *env)
{
    store_close(env->s);
    env->s = NULL;
}

static void __attribute__((unused)) store_api_hash(const void *data, size_t len, hsp_hash *out)
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
    memcpy(out->b, c.digest, sizeof(out->b));
}

static hsp_entry __attribute__((unused))
store_api_entry(uint64_t id, int kind, const char *path, uint64_t size, const char *target)
{
    hsp_entry e;
    memset(&e, 0, sizeof(e));
    e.id = id;
    e.kind = kind;
    e.mode = kind == HSP_DIR ? 0755 : 0644;
    e.uid = 1000;
    e.gid = 1000;
    e.mtime_sec = 1700000000 + (int64_t)id;
    e.mtime_nsec = 0;
    e.size = size;
    e.path = path;
    e.path_len = (uint16_t)strlen(path);
    if (target) {
        e.target = target;
        e.target_len = (uint16_t)strlen(target);
        if (kind == HSP_SYMLINK)
            e.size = e.target_len;
    }
    return e;
}

/* Bytes of a file, made from a seed. */
static void __attribute__((unused)) store_api_fill(uint8_t *buf, size_t len, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
}

/* What a store's own records (manifests, snapshot information) may add
 * to usage and to the bytes a delete frees, beside file content. */
#define STORE_API_OVERHEAD (64u << 10)

/* usage is content plus at most STORE_API_OVERHEAD. */
#define STORE_API_CHECK_ABOUT(usage, content)                                                      \
    do {                                                                                           \
        CHECK_GE((usage), (uint64_t)(content));                                                    \
        CHECK_LE((usage), (uint64_t)(content) + STORE_API_OVERHEAD);                               \
    } while (0)

#define STORE_API_OK(env, expr)                                                                    \
    do {                                                                                           \
        int rc_ = (int)(expr);                                                                     \
        if (rc_ < 0)                                                                               \
            harness_log("%s: %s (%d)", #expr, (env)->err.text, rc_);                               \
        CHECK_GE(rc_, 0);                                                                          \
    } while (0)

/* Awaits a file and writes its content: in two ranges, with a hole of
 * `hole` zeros between them when hole > 0. */
static void __attribute__((unused))
store_api_put_file(store_api_env *env, store_push *p, const hsp_entry *e, const uint8_t *data,
                   uint64_t hole_at, uint64_t hole)
{
    STORE_API_OK(env, store_file_await(p, e, &env->err));
    hsp_entry got;
    char path[HSP_PATH_MAX + 1];
    uint64_t held = 99;
    STORE_API_OK(env, store_file_open(p, e->id, &got, path, &held, &env->err));
    CHECK_EQ(held, 0);
    CHECK_EQ(got.size, e->size);
    CHECK_EQ((size_t)got.path_len, strlen(e->path));
    CHECK(memcmp(got.path, e->path, got.path_len) == 0);
    if (hole) {
        STORE_API_OK(env, store_file_write(p, 0, data, hole_at, &env->err));
        STORE_API_OK(env, store_file_hole(p, hole_at, hole, &env->err));
        STORE_API_OK(env, store_file_write(p, hole_at + hole, data + hole_at + hole,
                                           e->size - hole_at - hole, &env->err));
    } else {
        uint64_t half = e->size / 2;
        STORE_API_OK(env, store_file_write(p, 0, data, half, &env->err));
        STORE_API_OK(env, store_file_write(p, half, data + half, e->size - half, &env->err));
    }
    hsp_hash h;
    store_api_hash(data, e->size, &h);
    STORE_API_OK(env, store_file_done(p, &h, &env->err));
}

/* Reads a whole file of a committed snapshot and compares it. */
static void __attribute__((unused))
store_api_check_file(store_api_env *env, store_snapshot *snap, const hsp_entry *e,
                     const uint8_t *want, uint64_t size)
{
    store_file *f;
    uint64_t got_size;
    STORE_API_OK(env, store_file_open_read(snap, e, &f, &got_size, &env->err));
    CHECK_EQ(got_size, size);
    uint8_t *buf = malloc(size + 1);
    CHECK(buf != NULL);
    /* In two reads, the second running past the end. */
    uint64_t half = size / 2;
    ssize_t n = store_file_pread(f, 0, buf, half, &env->err);
    CHECK_EQ(n, (ssize_t)half);
    n = store_file_pread(f, half, buf + half, size - half + 1, &env->err);
    CHECK_EQ(n, (ssize_t)(size - half));
    CHECK(memcmp(buf, want, size) == 0);
    /* What file_data says is a hole reads as zeros. */
    uint64_t data, end;
    for (uint64_t pos = 0; pos < size; pos = end) {
        STORE_API_OK(env, store_file_data(f, pos, &data, &end, &env->err));
        CHECK_GE(data, pos);
        CHECK_LE(data, size);
        for (uint64_t i = pos; i < data; i++)
            CHECK_EQ(want[i], 0);
        if (data == size)
            break;
        CHECK_GT(end, data);
        CHECK_LE(end, size);
    }
    free(buf);
    store_file_close_read(f);
}

static int __attribute__((unused)) store_api_has(const store_names *names, const char *name)
{
    for (size_t i = 0; i < names->n; i++)
        if (strcmp(names->v[i], name) == 0)
            return 1;
    return 0;
}

static void store_api_problem(void *arg, const char *text)
{
    int *n = arg;
    (*n)++;
    harness_log("problem: %s", text);
}

/* ---- the sequences ------------------------------------------------------------- */

/*
 * A push of directories, a symlink, files (one sparse), and a hard link:
 * invisible until committed, then listed, and read back entry by entry as
 * it was put, content and holes included.
 */
static void __attribute__((unused))
store_api_push_and_read(const char *spec, const store_options *opt, const char *tag)
{
    store_api_env env;
    store_api_open(&env, spec, opt, "push-read", tag);
    CHECK_EQ(store_dataset_exists(env.s, &env.ds, &env.err), 0);

    store_lock *lock;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
    CHECK_EQ(store_dataset_exists(env.s, &env.ds, &env.err), 1);
    store_push *p;
    store_push_info info;
    STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
    CHECK_STR_EQ(info.previous, "");
    CHECK_EQ(info.resuming, 0);

    static uint8_t a[100000], sparse[300000];
    store_api_fill(a, sizeof(a), 1);
    store_api_fill(sparse, sizeof(sparse), 2);
    memset(sparse + 50000, 0, 200000);
    hsp_entry d = store_api_entry(0, HSP_DIR, "dir", 0, NULL);
    hsp_entry sub = store_api_entry(1, HSP_DIR, "dir/sub", 0, NULL);
    hsp_entry l = store_api_entry(2, HSP_SYMLINK, "dir/link", 0, "../elsewhere");
    hsp_entry fa = store_api_entry(3, HSP_FILE, "dir/a", sizeof(a), NULL);
    hsp_entry fs = store_api_entry(4, HSP_FILE, "dir/sub/sparse", sizeof(sparse), NULL);
    hsp_entry empty = store_api_entry(5, HSP_FILE, "empty", 0, NULL);
    hsp_entry h = store_api_entry(6, HSP_HARDLINK, "dir/hard", 0, "dir/a");
    STORE_API_OK(&env, store_put_dir(p, &d, &env.err));
    STORE_API_OK(&env, store_put_dir(p, &sub, &env.err));
    STORE_API_OK(&env, store_put_symlink(p, &l, &env.err));
    store_api_put_file(&env, p, &fa, a, 0, 0);
    store_api_put_file(&env, p, &fs, sparse, 50000, 200000);
    STORE_API_OK(&env, store_file_await(p, &empty, &env.err));
    {
        hsp_entry got;
        char path[HSP_PATH_MAX + 1];
        uint64_t held;
        hsp_hash hh;
        STORE_API_OK(&env, store_file_open(p, empty.id, &got, path, &held, &env.err));
        store_api_hash("", 0, &hh);
        STORE_API_OK(&env, store_file_done(p, &hh, &env.err));
    }
    STORE_API_OK(&env, store_put_hardlink(p, &h, &env.err));

    /* Nothing is visible before the commit. */
    store_names names;
    STORE_API_OK(&env, store_list_snapshots(env.s, &env.ds, &names, &env.err));
    CHECK_EQ(names.n, 0);
    store_names_free(&names);
    store_snapshot *snap;
    store_info si;
    CHECK_EQ(store_snapshot_open(env.s, &env.ds, "", &snap, &si, &env.err), -ENOENT);
    CHECK(env.err.text[0] != '\0');

    char id[HSP_SNAPSHOT_MAX + 1];
    int problems = 0;
    STORE_API_OK(&env, store_push_commit(p, 3, sizeof(a) + sizeof(sparse), id, store_api_problem,
                                         &problems, &env.err));
    CHECK_EQ(problems, 0);
    CHECK(id[0] != '\0');
    store_push_end(p);
    store_unlock(lock);

    STORE_API_OK(&env, store_list_datasets(env.s, env.ns, &names, &env.err));
    CHECK(store_api_has(&names, "data"));
    store_names_free(&names);
    STORE_API_OK(&env, store_list_snapshots(env.s, &env.ds, &names, &env.err));
    CHECK_EQ(names.n, 1);
    CHECK_STR_EQ(names.v[0], id);
    store_names_free(&names);
    STORE_API_OK(&env, store_snapshot_info(env.s, &env.ds, "", &si, &env.err));
    CHECK_STR_EQ(si.id, id);
    CHECK_EQ(si.files, 3);
    CHECK_EQ(si.bytes, sizeof(a) + sizeof(sparse));
    CHECK_GT(si.time, 0);

    STORE_API_OK(&env, store_snapshot_open(env.s, &env.ds, id, &snap, &si, &env.err));
    CHECK_STR_EQ(si.id, id);
    const hsp_entry *want[] = {&d, &sub, &l, &fa, &fs, &empty, &h};
    int seen[7] = {0};
    hsp_record rec;
    int rc, n = 0;
    while ((rc = store_manifest_next(snap, &rec, &env.err)) == 1) {
        CHECK_EQ(rec.type, HSP_ENTRY);
        const hsp_entry *e = &rec.entry;
        int k = -1;
        for (int i = 0; i < 7; i++)
            if (want[i]->path_len == e->path_len &&
                memcmp(want[i]->path, e->path, e->path_len) == 0)
                k = i;
        CHECK_GE(k, 0);
        CHECK_EQ(seen[k], 0);
        seen[k] = 1;
        n++;
        CHECK_EQ(e->kind, want[k]->kind);
        CHECK_EQ(e->mode, want[k]->mode);
        CHECK_EQ(e->mtime_sec, want[k]->mtime_sec);
        char why[1024];
        if (e->kind == HSP_FILE) {
            hsp_hash hh;
            const uint8_t *bytes = k == 3 ? a : k == 4 ? sparse : (const uint8_t *)"";
            store_api_hash(bytes, e->size, &hh);
            CHECK_EQ(e->size, want[k]->size);
            CHECK(hsp_hash_equal(&e->hash, &hh));
            store_api_check_file(&env, snap, e, bytes, e->size);
        } else {
            CHECK_EQ(store_check_entry(snap, e, why, sizeof(why)), 0);
        }
        if (e->kind == HSP_SYMLINK || e->kind == HSP_HARDLINK) {
            CHECK_EQ(e->target_len, want[k]->target_len);
            CHECK(memcmp(e->target, want[k]->target, e->target_len) == 0);
        }
        if (e->kind == HSP_HARDLINK)
            store_api_check_file(&env, snap, e, a, sizeof(a)); /* its target's content */
    }
    CHECK_EQ(rc, 0);
    CHECK_EQ(n, 7);
    store_snapshot_close(snap);
    store_api_close(&env);
}

/*
 * A second snapshot takes an unchanged file from the first without
 * copying it: usage counts it once, deleting the first frees only what
 * the second does not share, and the shared file still reads back.
 */
static void __attribute__((unused))
store_api_share_and_delete(const char *spec, const store_options *opt, const char *tag)
{
    store_api_env env;
    store_api_open(&env, spec, opt, "share", tag);
    static uint8_t a[200000], b1[30000], b2[50000];
    store_api_fill(a, sizeof(a), 3);
    store_api_fill(b1, sizeof(b1), 4);
    store_api_fill(b2, sizeof(b2), 5);
    hsp_entry fa = store_api_entry(0, HSP_FILE, "a", sizeof(a), NULL);
    hsp_entry fb1 = store_api_entry(1, HSP_FILE, "b", sizeof(b1), NULL);

    store_lock *lock;
    store_push *p;
    store_push_info info;
    char id1[HSP_SNAPSHOT_MAX + 1], id2[HSP_SNAPSHOT_MAX + 1];
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
    STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
    store_api_put_file(&env, p, &fa, a, 0, 0);
    store_api_put_file(&env, p, &fb1, b1, 0, 0);
    STORE_API_OK(&env, store_push_commit(p, 2, sizeof(a) + sizeof(b1), id1, NULL, NULL, &env.err));
    store_push_end(p);
    store_unlock(lock);

    uint64_t usage;
    STORE_API_OK(&env, store_usage(env.s, env.ns, &usage, &env.err));
    STORE_API_CHECK_ABOUT(usage, sizeof(a) + sizeof(b1));

    /* The second push: a unchanged, b changed (another size and mtime). */
    hsp_entry fb2 = store_api_entry(1, HSP_FILE, "b", sizeof(b2), NULL);
    fb2.mtime_sec += 100;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
    STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
    CHECK_STR_EQ(info.previous, id1);
    hsp_hash h, ha;
    store_api_hash(a, sizeof(a), &ha);
    CHECK_EQ(store_file_link_previous(p, &fa, &h, &env.err), 1);
    CHECK(hsp_hash_equal(&h, &ha));
    CHECK_EQ(store_file_link_previous(p, &fb2, &h, &env.err), 0);
    store_api_put_file(&env, p, &fb2, b2, 0, 0);
    STORE_API_OK(&env, store_push_commit(p, 2, sizeof(a) + sizeof(b2), id2, NULL, NULL, &env.err));
    store_push_end(p);
    store_unlock(lock);
    CHECK(strcmp(id1, id2) != 0);

    /* a is counted once, though both snapshots hold it. */
    STORE_API_OK(&env, store_usage(env.s, env.ns, &usage, &env.err));
    STORE_API_CHECK_ABOUT(usage, sizeof(a) + sizeof(b1) + sizeof(b2));
    store_names names;
    STORE_API_OK(&env, store_list_snapshots(env.s, &env.ds, &names, &env.err));
    CHECK_EQ(names.n, 2);
    CHECK_STR_EQ(names.v[0], id1); /* oldest first */
    CHECK_STR_EQ(names.v[1], id2);
    store_names_free(&names);

    /* Deleting the first frees b1 alone. */
    store_info si;
    uint64_t freed = 0;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, 0, &lock, &env.err));
    CHECK_EQ(store_snapshot_delete(lock, "20000101T000000Z", &si, &freed, &env.err), -ENOENT);
    STORE_API_OK(&env, store_snapshot_delete(lock, id1, &si, &freed, &env.err));
    store_unlock(lock);
    CHECK_STR_EQ(si.id, id1);
    CHECK_EQ(si.files, 2);
    STORE_API_CHECK_ABOUT(freed, sizeof(b1));
    STORE_API_OK(&env, store_usage(env.s, env.ns, &usage, &env.err));
    STORE_API_CHECK_ABOUT(usage, sizeof(a) + sizeof(b2));
    STORE_API_OK(&env, store_list_snapshots(env.s, &env.ds, &names, &env.err));
    CHECK_EQ(names.n, 1);
    CHECK_STR_EQ(names.v[0], id2);
    store_names_free(&names);
    store_snapshot *snap;
    CHECK_EQ(store_snapshot_open(env.s, &env.ds, id1, &snap, &si, &env.err), -ENOENT);
    STORE_API_OK(&env, store_snapshot_open(env.s, &env.ds, "", &snap, &si, &env.err));
    CHECK_STR_EQ(si.id, id2);
    store_api_check_file(&env, snap, &fa, a, sizeof(a));
    store_api_check_file(&env, snap, &fb2, b2, sizeof(b2));
    store_snapshot_close(snap);
    store_api_close(&env);
}

/*
 * A push abandoned half-way (aborted, its lock released) is resumed by
 * the next: a complete file is found complete with its hash, a partial
 * one continues from the bytes it holds, whose hash and content the
 * store gives back.
 */
static void __attribute__((unused))
store_api_abort_and_resume(const char *spec, const store_options *opt, const char *tag)
{
    store_api_env env;
    store_api_open(&env, spec, opt, "resume", tag);
    static uint8_t c[70000], big[500000];
    store_api_fill(c, sizeof(c), 6);
    store_api_fill(big, sizeof(big), 7);
    hsp_entry d = store_api_entry(0, HSP_DIR, "d", 0, NULL);
    hsp_entry fc = store_api_entry(1, HSP_FILE, "d/c", sizeof(c), NULL);
    hsp_entry fbig = store_api_entry(2, HSP_FILE, "d/big", sizeof(big), NULL);
    const uint64_t part = 123456;

    store_lock *lock;
    store_push *p;
    store_push_info info;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
    STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
    STORE_API_OK(&env, store_put_dir(p, &d, &env.err));
    store_api_put_file(&env, p, &fc, c, 0, 0);
    STORE_API_OK(&env, store_file_await(p, &fbig, &env.err));
    hsp_entry got;
    char path[HSP_PATH_MAX + 1];
    uint64_t held;
    STORE_API_OK(&env, store_file_open(p, fbig.id, &got, path, &held, &env.err));
    STORE_API_OK(&env, store_file_write(p, 0, big, part, &env.err));
    /* Abandoned: no commit. */
    store_push_end(p);
    store_unlock(lock);
    store_names names;
    STORE_API_OK(&env, store_list_snapshots(env.s, &env.ds, &names, &env.err));
    CHECK_EQ(names.n, 0);
    store_names_free(&names);

    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
    STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
    CHECK_EQ(info.resuming, 1);
    STORE_API_OK(&env, store_put_dir(p, &d, &env.err));
    hsp_hash h, want;
    store_api_hash(c, sizeof(c), &want);
    CHECK_EQ(store_file_resumed(p, &fc, &h, &held, &env.err), STORE_COMPLETE);
    CHECK(hsp_hash_equal(&h, &want));
    store_api_hash(big, part, &want);
    CHECK_EQ(store_file_resumed(p, &fbig, &h, &held, &env.err), STORE_PARTIAL);
    CHECK_EQ(held, part);
    CHECK(hsp_hash_equal(&h, &want));
    /* Awaited already: its content continues from what is held. */
    STORE_API_OK(&env, store_file_open(p, fbig.id, &got, path, &held, &env.err));
    CHECK_EQ(held, part);
    static uint8_t back[123456];
    CHECK_EQ(store_file_read(p, 0, back, part, &env.err), (ssize_t)part);
    CHECK(memcmp(back, big, part) == 0);
    STORE_API_OK(&env, store_file_write(p, part, big + part, sizeof(big) - part, &env.err));
    store_api_hash(big, sizeof(big), &h);
    STORE_API_OK(&env, store_file_done(p, &h, &env.err));
    char id[HSP_SNAPSHOT_MAX + 1];
    STORE_API_OK(&env, store_push_commit(p, 2, sizeof(c) + sizeof(big), id, NULL, NULL, &env.err));
    store_push_end(p);
    store_unlock(lock);

    store_snapshot *snap;
    store_info si;
    STORE_API_OK(&env, store_snapshot_open(env.s, &env.ds, id, &snap, &si, &env.err));
    store_api_check_file(&env, snap, &fc, c, sizeof(c));
    store_api_check_file(&env, snap, &fbig, big, sizeof(big));
    store_snapshot_close(snap);
    store_api_close(&env);
}

/* The lock excludes a second holder until it is released; without
 * STORE_LOCK_CREATE a missing dataset is -ENOENT. */
static void __attribute__((unused))
store_api_lock(const char *spec, const store_options *opt, const char *tag)
{
    store_api_env env;
    store_api_open(&env, spec, opt, "lock", tag);
    store_lock *a, *b;
    CHECK_EQ(store_lock_dataset(env.s, &env.ds, 0, &a, &env.err), -ENOENT);
    CHECK(env.err.text[0] != '\0');
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &a, &env.err));
    CHECK_EQ(store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &b, &env.err), -EWOULDBLOCK);
    CHECK(env.err.text[0] != '\0');
    store_unlock(a);
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, 0, &b, &env.err));
    store_unlock(b);
    store_api_close(&env);
}

/*
 * What a client gets wrong comes back as the contract says: a parent that
 * was never put, content for an id never awaited, a SKIP; a dropped file
 * is left out and a hard link to it reported; missing snapshots are
 * -ENOENT.
 */
static void __attribute__((unused))
store_api_errors(const char *spec, const store_options *opt, const char *tag)
{
    store_api_env env;
    store_api_open(&env, spec, opt, "errors", tag);
    store_lock *lock;
    store_push *p;
    store_push_info info;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
    STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
    hsp_entry orphan = store_api_entry(0, HSP_DIR, "missing/child", 0, NULL);
    int rc = store_put_dir(p, &orphan, &env.err);
    CHECK(rc == -ENOENT || rc == -ENOTDIR);
    CHECK(env.err.text[0] != '\0');

    static uint8_t x[1000];
    store_api_fill(x, sizeof(x), 8);
    hsp_entry fx = store_api_entry(1, HSP_FILE, "x", sizeof(x), NULL);
    hsp_entry fy = store_api_entry(2, HSP_FILE, "y", 10, NULL);
    hsp_entry hy = store_api_entry(3, HSP_HARDLINK, "y-link", 0, "y");
    store_api_put_file(&env, p, &fx, x, 0, 0);
    hsp_entry got;
    char path[HSP_PATH_MAX + 1];
    uint64_t held;
    /* Complete, or never awaited: not awaited. */
    CHECK_EQ(store_file_open(p, fx.id, &got, path, &held, &env.err), STORE_NOT_AWAITED);
    CHECK_EQ(store_file_open(p, 77, &got, path, &held, &env.err), STORE_NOT_AWAITED);
    CHECK_EQ(store_file_drop(p, 77, path, &env.err), STORE_NOT_AWAITED);
    STORE_API_OK(&env, store_file_await(p, &fy, &env.err));
    STORE_API_OK(&env, store_file_open(p, fy.id, &got, path, &held, &env.err));
    STORE_API_OK(&env, store_file_write(p, 0, "01234", 5, &env.err));
    STORE_API_OK(&env, store_file_drop(p, fy.id, path, &env.err));
    CHECK_STR_EQ(path, "y");
    CHECK_EQ(store_file_open(p, fy.id, &got, path, &held, &env.err), STORE_NOT_AWAITED);
    STORE_API_OK(&env, store_put_hardlink(p, &hy, &env.err));
    char id[HSP_SNAPSHOT_MAX + 1];
    int problems = 0;
    STORE_API_OK(&env,
                 store_push_commit(p, 1, sizeof(x), id, store_api_problem, &problems, &env.err));
    CHECK_EQ(problems, 1);
    store_push_end(p);
    store_unlock(lock);

    store_snapshot *snap;
    store_info si;
    CHECK_EQ(store_snapshot_open(env.s, &env.ds, "20000101T000000Z", &snap, &si, &env.err),
             -ENOENT);
    STORE_API_OK(&env, store_snapshot_open(env.s, &env.ds, id, &snap, &si, &env.err));
    hsp_record rec;
    int n = 0;
    while ((rc = store_manifest_next(snap, &rec, &env.err)) == 1) {
        CHECK(rec.entry.path_len == 1 && rec.entry.path[0] == 'x');
        n++;
    }
    CHECK_EQ(rc, 0);
    CHECK_EQ(n, 1);
    store_snapshot_close(snap);
    store_dataset none = {env.ns, "nothing"};
    CHECK_EQ(store_dataset_exists(env.s, &none, &env.err), 0);
    CHECK_EQ(store_snapshot_info(env.s, &none, "", &si, &env.err), -ENOENT);
    store_api_close(&env);
}

/* ---- several threads on one store ------------------------------------------------ */

#define STORE_API_THREADS 4
#define STORE_API_ROUNDS 3
#define STORE_API_FILES 4

typedef struct store_api_thread {
    store *s;
    char ns[128];
    int index;
    pthread_t thread;
} store_api_thread;

/* The content of file k of a round (k = STORE_API_FILES: "same", which
 * no round changes). */
static uint64_t store_api_thread_size(int k)
{
    return 40000 + (uint64_t)k * 7777;
}

static unsigned store_api_thread_seed(const store_api_thread *t, int round, int k)
{
    return k == STORE_API_FILES ? (unsigned)t->index * 100u + 99u
                                : (unsigned)(t->index * 100 + round * 10 + k);
}

/* One thread's work: a dataset of its own in the shared namespace, pushed
 * STORE_API_ROUNDS times (one file shared with the previous snapshot
 * each time), read back, listed and measured while the other threads
 * push theirs, and its first snapshot deleted. */
static void *store_api_thread_main(void *arg)
{
    store_api_thread *t = arg;
    store_api_env env;
    memset(&env, 0, sizeof(env));
    env.s = t->s;
    snprintf(env.ns, sizeof(env.ns), "%s", t->ns);
    char name[32], first[HSP_SNAPSHOT_MAX + 1] = "";
    snprintf(name, sizeof(name), "data-%d", t->index);
    env.ds.ns = env.ns;
    env.ds.name = name;
    uint8_t *buf = malloc(store_api_thread_size(STORE_API_FILES));
    CHECK(buf != NULL);
    for (int round = 0; round < STORE_API_ROUNDS; round++) {
        store_lock *lock;
        STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, STORE_LOCK_CREATE, &lock, &env.err));
        store_push *p;
        store_push_info info;
        STORE_API_OK(&env, store_push_begin(lock, &p, &info, &env.err));
        CHECK_EQ(info.previous[0] != '\0', round > 0);
        hsp_entry d = store_api_entry(0, HSP_DIR, "d", 0, NULL);
        STORE_API_OK(&env, store_put_dir(p, &d, &env.err));
        char paths[STORE_API_FILES + 1][16];
        uint64_t bytes = 0;
        for (int k = 0; k <= STORE_API_FILES; k++) {
            if (k == STORE_API_FILES)
                snprintf(paths[k], sizeof(paths[k]), "d/same");
            else
                snprintf(paths[k], sizeof(paths[k]), "d/f%d", k);
            uint64_t size = store_api_thread_size(k);
            hsp_entry e = store_api_entry((uint64_t)k + 1, HSP_FILE, paths[k], size, NULL);
            if (k < STORE_API_FILES)
                e.mtime_sec += round * 1000; /* changed every round */
            bytes += size;
            hsp_hash h;
            if (k == STORE_API_FILES && round > 0) {
                CHECK_EQ(store_file_link_previous(p, &e, &h, &env.err), 1);
                continue;
            }
            store_api_fill(buf, size, store_api_thread_seed(t, round, k));
            store_api_put_file(&env, p, &e, buf, 0, 0);
        }
        char id[HSP_SNAPSHOT_MAX + 1];
        int problems = 0;
        STORE_API_OK(&env, store_push_commit(p, STORE_API_FILES + 1, bytes, id, store_api_problem,
                                             &problems, &env.err));
        CHECK_EQ(problems, 0);
        store_push_end(p);
        store_unlock(lock);
        if (round == 0)
            snprintf(first, sizeof(first), "%s", id);

        store_snapshot *snap;
        store_info si;
        STORE_API_OK(&env, store_snapshot_open(env.s, &env.ds, id, &snap, &si, &env.err));
        hsp_record rec;
        int rc, n = 0;
        while ((rc = store_manifest_next(snap, &rec, &env.err)) == 1) {
            const hsp_entry *e = &rec.entry;
            n++;
            if (e->kind != HSP_FILE)
                continue;
            int k =
                e->path[e->path_len - 1] == 'e' ? STORE_API_FILES : e->path[e->path_len - 1] - '0';
            CHECK(k >= 0 && k <= STORE_API_FILES);
            store_api_fill(buf, store_api_thread_size(k), store_api_thread_seed(t, round, k));
            store_api_check_file(&env, snap, e, buf, store_api_thread_size(k));
        }
        CHECK_EQ(rc, 0);
        CHECK_EQ(n, STORE_API_FILES + 2);
        store_snapshot_close(snap);

        store_names names;
        STORE_API_OK(&env, store_list_datasets(env.s, env.ns, &names, &env.err));
        CHECK(store_api_has(&names, name));
        store_names_free(&names);
        uint64_t usage = 0;
        STORE_API_OK(&env, store_usage(env.s, env.ns, &usage, &env.err));
        CHECK_GE(usage, bytes);
    }
    store_lock *lock;
    STORE_API_OK(&env, store_lock_dataset(env.s, &env.ds, 0, &lock, &env.err));
    store_info info;
    uint64_t freed = 0;
    STORE_API_OK(&env, store_snapshot_delete(lock, first, &info, &freed, &env.err));
    store_unlock(lock);
    store_names names;
    STORE_API_OK(&env, store_list_snapshots(env.s, &env.ds, &names, &env.err));
    CHECK_EQ(names.n, STORE_API_ROUNDS - 1);
    store_names_free(&names);
    free(buf);
    return NULL;
}

/*
 * STORE_API_THREADS threads on one open store, at once, each pushing,
 * reading back, listing, measuring and deleting in a dataset of its own
 * of one namespace (which they make together): every result is as if
 * each ran alone. Run under ThreadSanitizer, it also shows that the store
 * shares nothing unguarded between them.
 */
static void __attribute__((unused))
store_api_threads(const char *spec, const store_options *opt, const char *tag)
{
    store_api_env env;
    store_api_open(&env, spec, opt, "threads", tag);
    store_api_thread t[STORE_API_THREADS];
    for (int i = 0; i < STORE_API_THREADS; i++) {
        t[i].s = env.s;
        snprintf(t[i].ns, sizeof(t[i].ns), "%s", env.ns);
        t[i].index = i;
        CHECK_EQ(pthread_create(&t[i].thread, NULL, store_api_thread_main, &t[i]), 0);
    }
    for (int i = 0; i < STORE_API_THREADS; i++)
        CHECK_EQ(pthread_join(t[i].thread, NULL), 0);
    store_names names;
    STORE_API_OK(&env, store_list_datasets(env.s, env.ns, &names, &env.err));
    CHECK_EQ(names.n, STORE_API_THREADS);
    store_names_free(&names);
    store_api_close(&env);
}

#endif
