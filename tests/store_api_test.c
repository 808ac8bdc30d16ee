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
