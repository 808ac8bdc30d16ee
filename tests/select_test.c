/*
 * select_test.c - what haul push leaves out of a snapshot, as a user runs
 * it: real haul push processes against a real hauld, with --exclude,
 * --exclude-from, --exclude-caches and --one-file-system, and then a
 * pull of the snapshot to see exactly which paths landed in it, and the
 * "excluded" counts of --json.
 *
 * See e2e.h for the helpers and the environment variables that help a
 * post mortem (HAUL_E2E_KEEP=1, HAUL_E2E_VERBOSE=1).
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"

/* Seconds a command may take. */
#define CMD_TIMEOUT 30

#define CACHE_SIGNATURE "Signature: 8a477f597d28d172789f06886806bc55"

/*
 * The source tree of most tests, with the size of every file (each file's
 * content is its own): names that patterns pick at several depths.
 */
static const struct {
    const char *path; /* a trailing '/' makes a directory */
    uint64_t size;
} tree_spec[] = {
    {"a.o", 100},
    {"keep.c", 200},
    {"build/", 0},
    {"build/out.bin", 300},
    {"docs/", 0},
    {"docs/cache", 40},
    {"lib/", 0},
    {"lib/x.o", 50},
    {"lib/build/", 0},
    {"lib/build/x", 10},
    {"lib/build.c", 20},
    {"lib/deep/", 0},
    {"lib/deep/er/", 0},
    {"lib/deep/er/note.tmp", 30},
    {"lib/deep/er/note.txt", 31},
    {"lib/deep/note.tmp", 32},
    {"node_modules/", 0},
    {"node_modules/pkg/", 0},
    {"node_modules/pkg/index.js", 60},
    {"var/", 0},
    {"var/cache/", 0},
    {"var/cache/item", 70},
    {"web/", 0},
    {"web/node_modules/", 0},
    {"web/node_modules/pkg/", 0},
    {"web/node_modules/pkg/index.js", 61},
    {"web/page.html", 80},
};
#define TREE_N (sizeof(tree_spec) / sizeof(tree_spec[0]))

/* Makes the tree under env->dir/src and returns that path. */
static const char *make_tree(e2e_env *env, char *src)
{
    e2e_path(env, src, "src");
    e2e_mkdir(src);
    for (size_t i = 0; i < TREE_N; i++) {
        const char *p = tree_spec[i].path;
        size_t len = strlen(p);
        char path[PATH_MAX];
        e2e_join(path, src, p);
        if (p[len - 1] == '/')
            e2e_mkdir(path);
        else
            e2e_file(path, tree_spec[i].size, 1000 + i, 0644);
    }
    return src;
}

static int path_cmp(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

/* Every path of the tree but those listed (NULL-terminated; each takes
 * what is below it along), sorted as e2e_tree_load sorts, one a line. */
static char *tree_without(const char *const *out)
{
    static char paths[TREE_N][128];
    size_t n = 0;
    for (size_t i = 0; i < TREE_N; i++) {
        char *p = paths[n];
        snprintf(p, sizeof(paths[n]), "%s", tree_spec[i].path);
        size_t len = strlen(p);
        if (p[len - 1] == '/')
            p[len - 1] = '\0';
        int left_out = 0;
        for (size_t j = 0; out[j]; j++) {
            size_t k = strlen(out[j]);
            if (strncmp(p, out[j], k) == 0 && (p[k] == '\0' || p[k] == '/'))
                left_out = 1;
        }
        if (!left_out)
            n++;
    }
    qsort(paths, n, sizeof(paths[0]), path_cmp);
    char *text = calloc(n + 1, sizeof(paths[0]) + 1);
    CHECK(text != NULL);
    for (size_t i = 0; i < n; i++) {
        strcat(text, paths[i]);
        strcat(text, "\n");
    }
    return text;
}

/*
 * Runs `haul push [ARGS...] SRC URL/DATASET --json` and expects an exit
 * status; on success, copies the snapshot id. p keeps the output.
 */
static void push_args(e2e_env *env, e2e_proc *p, const char *src, const char *dataset,
                      const char *const *args, int expected_exit, char *snapshot)
{
    const char *argv[E2E_MAX_ARGS];
    char url[512];
    int n = 0;
    argv[n++] = "push";
    for (size_t i = 0; args && args[i]; i++)
        argv[n++] = args[i];
    argv[n++] = src;
    argv[n++] = e2e_url(env, url, dataset);
    argv[n++] = "--json";
    argv[n] = NULL;
    e2e_haul_startv(env, p, argv);
    e2e_proc_wait(p, CMD_TIMEOUT);
    CHECK_EXIT(p, expected_exit);
    if (expected_exit == 0 && snapshot) {
        if (e2e_json_str(p->out, "snapshot", snapshot, 80) != 0) {
            e2e_proc_show(p);
            CHECK(!"no snapshot in the JSON of haul push");
        }
    }
}

/* The "entries" and "bytes" of the "excluded" object of push --json. */
static void excluded_counts(const e2e_proc *p, uint64_t *entries, uint64_t *bytes)
{
    const char *obj = p->out ? strstr(p->out, "\"excluded\":{") : NULL;
    if (obj == NULL || e2e_json_u64(obj, "entries", entries) != 0 ||
        e2e_json_u64(obj, "bytes", bytes) != 0) {
        e2e_proc_show(p);
        CHECK(!"haul push --json has no \"excluded\":{\"entries\":N,\"bytes\":N}");
    }
}

/* Pulls DATASET@SNAPSHOT into a fresh directory and returns its paths,
 * one a line, sorted as bytes. */
static char *snapshot_paths(e2e_env *env, const char *dataset, const char *snapshot)
{
    static int pulls;
    char dest[PATH_MAX], name[64], url[512], rest[256];
    snprintf(name, sizeof(name), "pulled-%d", ++pulls);
    e2e_path(env, dest, name);
    snprintf(rest, sizeof(rest), "%s@%s", dataset, snapshot);
    e2e_proc p = {0};
    e2e_haul(env, &p, CMD_TIMEOUT, "pull", e2e_url(env, url, rest), dest);
    CHECK_EXIT(&p, 0);
    e2e_proc_free(&p);
    e2e_tree t;
    e2e_tree_load(&t, dest);
    size_t cap = 64;
    for (size_t i = 0; i < t.n; i++)
        cap += strlen(t.v[i].path) + 1;
    char *text = calloc(1, cap);
    CHECK(text != NULL);
    for (size_t i = 0; i < t.n; i++) {
        strcat(text, t.v[i].path);
        strcat(text, "\n");
    }
    e2e_tree_free(&t);
    return text;
}

/* Checks that the snapshot holds exactly the expected paths. */
static void check_snapshot(e2e_env *env, const char *dataset, const char *snapshot, char *expected)
{
    char *got = snapshot_paths(env, dataset, snapshot);
    if (strcmp(got, expected) != 0)
        harness_log("snapshot %s holds:\n%s--- expected:\n%s---", snapshot, got, expected);
    CHECK_STR_EQ(got, expected);
    free(got);
    free(expected);
}

/* Pushes the tree with the given arguments and checks which paths of it
 * landed: all but `out` (NULL-terminated; each with what is below it). */
static void push_and_check(const char *const *args, const char *const *out)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], snap[80];
    make_tree(&env, src);
    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", args, 0, snap);
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap, tree_without(out));
    e2e_teardown(&env);
}

TEST(name_pattern_leaves_out_its_matches_at_any_depth)
{
    push_and_check((const char *[]){"--exclude", "*.o", "--exclude", "node_modules", NULL},
                   (const char *[]){"a.o", "lib/x.o", "node_modules", "web/node_modules", NULL});
}

TEST(leading_slash_anchors_a_pattern_at_the_source_root)
{
    push_and_check((const char *[]){"--exclude", "/build", "--exclude", "/lib/*.c", NULL},
                   (const char *[]){"build", "lib/build.c", NULL});
}

TEST(inner_slash_pattern_matches_at_any_depth)
{
    push_and_check((const char *[]){"--exclude", "er/*.tmp", NULL},
                   (const char *[]){"lib/deep/er/note.tmp", NULL});
}

TEST(double_star_pattern_spans_directories)
{
    /* note.tmp below lib at any depth; and what is in web, not web
     * itself (a trailing double star). */
    push_and_check((const char *[]){"--exclude", "/lib/**/note.tmp", "--exclude", "/web/**", NULL},
                   (const char *[]){"lib/deep/er/note.tmp", "lib/deep/note.tmp", "web/node_modules",
                                    "web/page.html", NULL});
}

TEST(trailing_slash_pattern_leaves_out_directories_only)
{
    /* var/cache is a directory, docs/cache a file; lib/build a directory
     * and lib/build.c a file. */
    push_and_check((const char *[]){"--exclude", "cache/", "--exclude", "build/", NULL},
                   (const char *[]){"var/cache", "build", "lib/build", NULL});
}

TEST(exclude_from_reads_patterns_and_ignores_comments_and_blank_lines)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], snap[80], list[PATH_MAX];
    make_tree(&env, src);
    e2e_path(&env, list, "excludes");
    FILE *f = fopen(list, "w");
    CHECK(f != NULL);
    fputs("# objects and dependencies\n"
          "*.o\n"
          "\n"
          "   \n"
          "  node_modules/  \n"
          "# keep.c would go if this were not a comment\n"
          "#keep.c\n"
          "/docs\r\n",
          f);
    CHECK_EQ(fclose(f), 0);
    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude-from", list, NULL}, 0, snap);
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap,
                   tree_without((const char *[]){"a.o", "lib/x.o", "node_modules",
                                                 "web/node_modules", "docs", NULL}));
    e2e_teardown(&env);
}

TEST(missing_exclude_from_file_fails_with_usage_before_any_snapshot)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], list[PATH_MAX];
    make_tree(&env, src);
    e2e_path(&env, list, "no-such-excludes");
    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude-from", list, NULL}, 1, NULL);
    if (!e2e_contains(p.err, "no-such-excludes") || !e2e_contains(p.err, "No such file"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.err, "no-such-excludes"));
    CHECK(e2e_contains(p.err, "No such file"));
    e2e_proc_free(&p);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "ds"), 0);
    e2e_teardown(&env);
}

TEST(pattern_that_names_nothing_is_a_usage_error)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX];
    make_tree(&env, src);
    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude", "/", NULL}, 1, NULL);
    e2e_proc_free(&p);
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude", "", NULL}, 1, NULL);
    e2e_proc_free(&p);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "ds"), 0);
    e2e_teardown(&env);
}

TEST(selection_options_apply_to_push_only)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char url[512];
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "ls", "--exclude", "*.o", e2e_url(&env, url, "ds"));
    CHECK_EXIT(&p, 1);
    CHECK(e2e_contains(p.err, "push only"));
    e2e_proc_free(&p);
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", "--one-file-system", e2e_url(&env, url, "ds"),
             e2e_path(&env, (char[PATH_MAX]){0}, "dest"));
    CHECK_EXIT(&p, 1);
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

/* Writes dir/CACHEDIR.TAG with the given text. */
static void cache_tag(const char *dir, const char *text)
{
    char path[PATH_MAX];
    e2e_join(path, dir, "CACHEDIR.TAG");
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(text, f);
    CHECK_EQ(fclose(f), 0);
}

TEST(exclude_caches_leaves_out_directories_with_a_valid_tag_only)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], snap[80];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    e2e_mkdir(e2e_at(src, "tagged"));
    e2e_mkdir(e2e_at(src, "tagged/sub"));
    e2e_file(e2e_at(src, "tagged/sub/blob"), 5000, 1, 0644);
    cache_tag(e2e_at(src, "tagged"), CACHE_SIGNATURE "\n# This is a cache directory.\n");
    e2e_mkdir(e2e_at(src, "badtag"));
    e2e_file(e2e_at(src, "badtag/blob"), 10, 2, 0644);
    /* One character off: not the standard's signature. */
    cache_tag(e2e_at(src, "badtag"), "Signature: 8a477f597d28d172789f06886806bc5X\n");
    e2e_file(e2e_at(src, "CACHEDIR.TAG.txt"), 3, 3, 0644);

    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude-caches", NULL}, 0, snap);
    uint64_t entries, bytes;
    excluded_counts(&p, &entries, &bytes);
    CHECK_EQ(entries, 1); /* the tagged directory, with all that it holds */
    CHECK_EQ(bytes, 0);   /* what is in a directory left out is not looked at */
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap,
                   strdup("CACHEDIR.TAG.txt\nbadtag\nbadtag/CACHEDIR.TAG\nbadtag/blob\n"));

    /* Without the option, the cache is pushed like anything else. */
    push_args(&env, &p, src, "ds", NULL, 0, snap);
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap,
                   strdup("CACHEDIR.TAG.txt\nbadtag\nbadtag/CACHEDIR.TAG\nbadtag/blob\n"
                          "tagged\ntagged/CACHEDIR.TAG\ntagged/sub\ntagged/sub/blob\n"));
    e2e_teardown(&env);
}

TEST(json_counts_what_was_excluded_in_entries_and_bytes)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], snap[80];
    make_tree(&env, src);
    e2e_proc p = {0};
    /* a.o (100) and lib/x.o (50) are files; build and lib/build are
     * directories, each counted once, without what they hold. */
    push_args(&env, &p, src, "ds",
              (const char *[]){"--exclude", "*.o", "--exclude", "build/", NULL}, 0, snap);
    uint64_t entries, bytes, files;
    excluded_counts(&p, &entries, &bytes);
    CHECK_EQ(entries, 4);
    CHECK_EQ(bytes, 150);
    CHECK_OK(e2e_json_u64(p.out, "files", &files));
    CHECK_EQ(files, 10);
    e2e_proc_free(&p);

    /* Nothing asked to be left out: zero, and the object is still there. */
    push_args(&env, &p, src, "ds2", NULL, 0, snap);
    excluded_counts(&p, &entries, &bytes);
    CHECK_EQ(entries, 0);
    CHECK_EQ(bytes, 0);
    e2e_proc_free(&p);

    /* The text summary says it too, and -v names each path. */
    char url[512];
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "-v", "--exclude", "*.o", src,
             e2e_url(&env, url, "ds3"));
    CHECK_EXIT(&p, 0);
    if (!e2e_contains(p.out, "2 excluded (150 B") ||
        !e2e_contains(p.err, "haul: a.o: excluded\n") ||
        !e2e_contains(p.err, "haul: lib/x.o: excluded\n"))
        e2e_proc_show(&p);
    CHECK(e2e_contains(p.out, "2 excluded (150 B"));
    CHECK(e2e_contains(p.err, "haul: a.o: excluded\n"));
    CHECK(e2e_contains(p.err, "haul: lib/x.o: excluded\n"));
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

TEST(later_push_with_other_excludes_holds_what_it_selects)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], first[80], second[80], third[80];
    make_tree(&env, src);
    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude", "/web", NULL}, 0, first);
    e2e_proc_free(&p);
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude", "/lib", "--exclude", "*.o", NULL},
              0, second);
    /* web was not in the dataset's last snapshot: its files travel;
     * everything else that is kept was there and is not sent again. */
    uint64_t sent;
    CHECK_OK(e2e_json_u64(p.out, "bytes_sent", &sent));
    CHECK_EQ(sent, 61 + 80);
    e2e_proc_free(&p);
    push_args(&env, &p, src, "ds", NULL, 0, third);
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", first, tree_without((const char *[]){"web", NULL}));
    check_snapshot(&env, "ds", second, tree_without((const char *[]){"lib", "a.o", NULL}));
    check_snapshot(&env, "ds", third, tree_without((const char *[]){NULL}));
    e2e_teardown(&env);
}

TEST(one_file_system_keeps_a_mount_point_empty)
{
    if (geteuid() != 0)
        SKIP("mounting a tmpfs inside the source needs root");
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], snap[80];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "here"), 10, 1, 0644);
    e2e_mkdir(e2e_at(src, "mnt"));
    /* A mount namespace of the test's own: the mount goes with the test's
     * processes however it ends. */
    if (unshare(CLONE_NEWNS) != 0)
        SKIP("cannot make a mount namespace: %s", strerror(errno));
    CHECK(mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0);
    if (mount("tmpfs", e2e_at(src, "mnt"), "tmpfs", 0, "size=1m") != 0)
        SKIP("cannot mount a tmpfs: %s", strerror(errno));
    e2e_mkdir(e2e_at(src, "mnt/sub"));
    e2e_file(e2e_at(src, "mnt/sub/there"), 20, 2, 0644);

    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", (const char *[]){"--one-file-system", NULL}, 0, snap);
    uint64_t entries, bytes;
    excluded_counts(&p, &entries, &bytes);
    CHECK_EQ(entries, 1);
    CHECK_EQ(bytes, 0);
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap, strdup("here\nmnt\n"));

    /* -x is the short form; without either, the mount is crossed. */
    push_args(&env, &p, src, "ds", (const char *[]){"-x", NULL}, 0, snap);
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap, strdup("here\nmnt\n"));
    push_args(&env, &p, src, "ds", NULL, 0, snap);
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap, strdup("here\nmnt\nmnt/sub\nmnt/sub/there\n"));

    CHECK_EQ(umount2(e2e_at(src, "mnt"), MNT_DETACH), 0);
    e2e_teardown(&env);
}

/*
 * On overlayfs, as at a container's root, a regular file reports the
 * st_dev of the layer it lives in, and a directory the overlay's: with
 * --one-file-system every file is still sent.
 */
TEST(one_file_system_sends_every_file_of_an_overlay)
{
    if (geteuid() != 0)
        SKIP("mounting an overlay needs root");
    e2e_env env;
    e2e_setup(&env, 0);
    char lower[PATH_MAX], layers[PATH_MAX], src[PATH_MAX], snap[80];
    e2e_path(&env, lower, "lower");
    e2e_path(&env, layers, "layers");
    e2e_path(&env, src, "src");
    e2e_mkdir(lower);
    e2e_mkdir(layers);
    e2e_mkdir(src);
    e2e_mkdir(e2e_at(lower, "etc"));
    e2e_file(e2e_at(lower, "etc/os"), 30, 1, 0644);
    if (unshare(CLONE_NEWNS) != 0)
        SKIP("cannot make a mount namespace: %s", strerror(errno));
    CHECK(mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0);
    /* The upper layer on another file system than the lower, as when a
     * container writes to a tmpfs. */
    if (mount("tmpfs", layers, "tmpfs", 0, "size=1m") != 0)
        SKIP("cannot mount a tmpfs: %s", strerror(errno));
    e2e_mkdir(e2e_at(layers, "up"));
    e2e_mkdir(e2e_at(layers, "work"));
    char opts[3 * PATH_MAX + 64];
    snprintf(opts, sizeof(opts), "lowerdir=%s,upperdir=%s/up,workdir=%s/work", lower, layers,
             layers);
    if (mount("overlay", src, "overlay", 0, opts) != 0)
        SKIP("cannot mount an overlay: %s", strerror(errno));
    e2e_file(e2e_at(src, "written"), 40, 2, 0644);
    struct stat dir_st, lower_st, upper_st;
    CHECK_EQ(stat(src, &dir_st), 0);
    CHECK_EQ(stat(e2e_at(src, "etc/os"), &lower_st), 0);
    CHECK_EQ(stat(e2e_at(src, "written"), &upper_st), 0);
    harness_log("st_dev: the overlay's directory %lu, a lower file %lu, an upper file %lu",
                (unsigned long)dir_st.st_dev, (unsigned long)lower_st.st_dev,
                (unsigned long)upper_st.st_dev);

    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", (const char *[]){"--one-file-system", NULL}, 0, snap);
    uint64_t entries, bytes;
    excluded_counts(&p, &entries, &bytes);
    CHECK_EQ(entries, 0);
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap, strdup("etc\netc/os\nwritten\n"));
    CHECK_EQ(umount2(src, MNT_DETACH), 0);
    CHECK_EQ(umount2(layers, MNT_DETACH), 0);
    e2e_teardown(&env);
}

/* Removes the tree of entry_too_long_...: its paths are beyond PATH_MAX,
 * which the nftw() of e2e_teardown cannot walk. */
static void remove_deep(const char *src, const char *dir_name, const char *file_name, int depth)
{
    int fds[32];
    fds[0] = open(src, O_RDONLY | O_DIRECTORY);
    CHECK(fds[0] >= 0);
    for (int i = 1; i <= depth; i++) {
        fds[i] = openat(fds[i - 1], dir_name, O_RDONLY | O_DIRECTORY);
        CHECK(fds[i] >= 0);
    }
    CHECK_EQ(unlinkat(fds[depth], file_name, 0), 0);
    for (int i = depth; i >= 1; i--) {
        close(fds[i]);
        CHECK_EQ(unlinkat(fds[i - 1], dir_name, AT_REMOVEDIR), 0);
    }
    close(fds[0]);
}

TEST(entry_too_long_for_a_snapshot_is_no_problem_when_excluded)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], snap[80], name[256], dir_name[256];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    /* Sixteen directories of 250-byte names make a path of 4015 bytes;
     * a file of 100 bytes of name in the last one makes 4116, beyond
     * the 4096 a snapshot's path may have. */
    int fd = open(src, O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0);
    memset(dir_name, 'd', 250);
    dir_name[250] = '\0';
    for (int i = 0; i < 16; i++) {
        CHECK_EQ(mkdirat(fd, dir_name, 0755), 0);
        int sub = openat(fd, dir_name, O_RDONLY | O_DIRECTORY);
        CHECK(sub >= 0);
        close(fd);
        fd = sub;
    }
    memset(name, 'f', 96);
    memcpy(name + 96, ".tmp", 5);
    int file = openat(fd, name, O_WRONLY | O_CREAT, 0644);
    CHECK(file >= 0);
    close(file);
    close(fd);

    e2e_proc p = {0};
    /* Left out by a pattern, it is not reported as skipped. */
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude", "*.tmp", NULL}, 0, snap);
    uint64_t entries, bytes, skipped;
    excluded_counts(&p, &entries, &bytes);
    CHECK_EQ(entries, 1);
    CHECK_OK(e2e_json_u64(p.out, "skipped", &skipped));
    CHECK_EQ(skipped, 0);
    e2e_proc_free(&p);
    /* Otherwise it is skipped, with a warning. */
    push_args(&env, &p, src, "ds", NULL, 2, NULL);
    CHECK(e2e_contains(p.err, "longer than 4096"));
    e2e_proc_free(&p);
    remove_deep(src, dir_name, name, 16);
    e2e_teardown(&env);
}

TEST(special_file_left_out_by_a_pattern_is_not_warned_about)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], snap[80];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    e2e_file(e2e_at(src, "f"), 10, 1, 0644);
    CHECK_EQ(mkfifo(e2e_at(src, "pipe"), 0644), 0);
    e2e_proc p = {0};
    push_args(&env, &p, src, "ds", (const char *[]){"--exclude", "pipe", NULL}, 0, snap);
    uint64_t entries, bytes, specials;
    excluded_counts(&p, &entries, &bytes);
    CHECK_EQ(entries, 1);
    CHECK_OK(e2e_json_u64(p.out, "specials", &specials));
    CHECK_EQ(specials, 0);
    CHECK(!e2e_contains(p.err, "pipe"));
    e2e_proc_free(&p);
    check_snapshot(&env, "ds", snap, strdup("f\n"));
    e2e_teardown(&env);
}
