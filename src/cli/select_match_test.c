/*
 * select_match_test.c - the exclusion rules of haul push (select.c) on
 * their own: which paths each kind of pattern leaves out, --exclude-from
 * files, CACHEDIR.TAG and --one-file-system, without a server.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "cli/select.h"

static const struct stat file_st = {.st_mode = S_IFREG | 0644, .st_size = 10, .st_dev = 1};
static const struct stat dir_st = {.st_mode = S_IFDIR | 0755, .st_dev = 1};

/* A selection of the given patterns (NULL-terminated). */
static cli_select *with_patterns(const char *const *pats)
{
    static const char *list[64];
    size_t n = 0;
    while (pats[n]) {
        list[n] = pats[n];
        n++;
    }
    cli_options opt = {.excludes = list, .n_excludes = n};
    cli_select *s = NULL;
    char why[512] = "";
    int rc = cli_select_new(&opt, "src", 1, &s, why, sizeof(why));
    if (rc != 0)
        harness_log("cli_select_new: %s", why);
    CHECK_EQ(rc, 0);
    CHECK(s != NULL);
    return s;
}

static int out(cli_select *s, const char *rel, const struct stat *st)
{
    return cli_select_skip(s, rel, strlen(rel), st, -1) == CLI_SELECT_OUT;
}

/* Checks one path against one pattern. */
#define MATCHES(pat, rel, st, expected)                                                            \
    do {                                                                                           \
        cli_select *s_ = with_patterns((const char *[]){pat, NULL});                               \
        int got_ = out(s_, rel, st);                                                               \
        if (got_ != (expected))                                                                    \
            harness_log("pattern '%s', path '%s': %s", pat, rel, got_ ? "out" : "kept");           \
        CHECK_EQ(got_, (expected));                                                                \
        cli_select_free(s_);                                                                       \
    } while (0)

TEST(no_options_select_nothing)
{
    cli_options opt = {0};
    cli_select *s = (cli_select *)1;
    char why[64];
    CHECK_EQ(cli_select_new(&opt, "src", 1, &s, why, sizeof(why)), 0);
    CHECK(s == NULL);
    CHECK_EQ(cli_select_skip(NULL, "a", 1, &file_st, -1), CLI_SELECT_KEEP);
    cli_select_free(NULL);
}

TEST(name_pattern_matches_at_any_depth)
{
    MATCHES("*.o", "a.o", &file_st, 1);
    MATCHES("*.o", "x/y/z/a.o", &file_st, 1);
    MATCHES("*.o", "x/a.o/b", &file_st, 0); /* b is asked about, not a.o */
    MATCHES("*.o", "a.oo", &file_st, 0);
    MATCHES("?.c", "dir/a.c", &file_st, 1);
    MATCHES("?.c", "dir/ab.c", &file_st, 0);
    MATCHES("[ab].c", "b.c", &file_st, 1);
    MATCHES("[!ab].c", "b.c", &file_st, 0);
    MATCHES("node_modules", "web/node_modules", &dir_st, 1);
    MATCHES("node_modules", "web/node_modules", &file_st, 1);
}

TEST(star_stays_within_a_component_and_matches_dot_names)
{
    MATCHES("a*b", "a/b", &file_st, 0);
    MATCHES("*", "x/.hidden", &file_st, 1);
    MATCHES(".*", "x/.hidden", &file_st, 1);
    MATCHES(".*", "x/visible", &file_st, 0);
}

TEST(inner_slash_matches_the_tail_at_any_depth)
{
    MATCHES("a/b", "a/b", &file_st, 1);
    MATCHES("a/b", "x/a/b", &file_st, 1);
    MATCHES("a/b", "x/a/b/c", &file_st, 0);
    MATCHES("a/*/c", "r/a/q/c", &file_st, 1);
    MATCHES("a/*/c", "a/q/r/c", &file_st, 0);
}

TEST(leading_slash_anchors_at_the_root)
{
    MATCHES("/build", "build", &dir_st, 1);
    MATCHES("/build", "src/build", &dir_st, 0);
    MATCHES("/src/*.tmp", "src/x.tmp", &file_st, 1);
    MATCHES("/src/*.tmp", "a/src/x.tmp", &file_st, 0);
    MATCHES("//build", "build", &dir_st, 1);
}

TEST(trailing_slash_matches_directories_only)
{
    MATCHES("cache/", "x/cache", &dir_st, 1);
    MATCHES("cache/", "x/cache", &file_st, 0);
    MATCHES("/cache/", "cache", &dir_st, 1);
    MATCHES("/cache//", "cache", &dir_st, 1);
    struct stat link_st = {.st_mode = S_IFLNK | 0777};
    MATCHES("cache/", "cache", &link_st, 0);
}

TEST(double_star_spans_components)
{
    MATCHES("/a/**/z", "a/z", &file_st, 1);
    MATCHES("/a/**/z", "a/b/z", &file_st, 1);
    MATCHES("/a/**/z", "a/b/c/d/z", &file_st, 1);
    MATCHES("/a/**/z", "a/b/c/d/y", &file_st, 0);
    MATCHES("/a/**/z", "b/a/z", &file_st, 0);
    MATCHES("**/z", "z", &file_st, 1);
    MATCHES("**/z", "q/r/z", &file_st, 1);
    MATCHES("a/**/b/**/c", "x/a/1/b/2/3/c", &file_st, 1);
    MATCHES("a/**/b/**/c", "x/a/1/2/3/c", &file_st, 0);
    /* Backtracking: the first b is not the one that leads to c. */
    MATCHES("/**/b/c", "b/x/b/c", &file_st, 1);
    MATCHES("**", "anything/at/all", &file_st, 1);
}

TEST(trailing_double_star_keeps_the_directory_itself)
{
    MATCHES("/a/**", "a", &dir_st, 0);
    MATCHES("/a/**", "a/b", &file_st, 1);
    MATCHES("/a/**", "a/b/c", &file_st, 1);
    MATCHES("a/**", "x/a/b", &file_st, 1);
    MATCHES("a/**", "x/a", &dir_st, 0);
}

TEST(backslash_quotes_a_character)
{
    MATCHES("\\*", "*", &file_st, 1);
    MATCHES("\\*", "x", &file_st, 0);
}

TEST(any_of_several_patterns_leaves_out)
{
    cli_select *s = with_patterns((const char *[]){"*.o", "/tmp/", "CVS", NULL});
    CHECK(out(s, "a/b.o", &file_st));
    CHECK(out(s, "tmp", &dir_st));
    CHECK(!out(s, "a/tmp", &dir_st));
    CHECK(out(s, "a/CVS", &dir_st));
    CHECK(!out(s, "a/b.c", &file_st));
    cli_select_free(s);
}

TEST(patterns_that_name_nothing_are_refused)
{
    const char *bad[] = {"", "/", "///"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *list[] = {bad[i]};
        cli_options opt = {.excludes = list, .n_excludes = 1};
        cli_select *s = (cli_select *)1;
        char why[512] = "";
        CHECK_EQ(cli_select_new(&opt, "src", 1, &s, why, sizeof(why)), EINVAL);
        CHECK(s == NULL);
        CHECK(strstr(why, "--exclude") != NULL);
    }
    static char huge[CLI_SELECT_PATTERN_MAX + 2];
    memset(huge, 'a', sizeof(huge) - 1);
    const char *list[] = {huge};
    cli_options opt = {.excludes = list, .n_excludes = 1};
    cli_select *s = NULL;
    char why[512];
    CHECK_EQ(cli_select_new(&opt, "src", 1, &s, why, sizeof(why)), EINVAL);
}

/* A temporary directory for the tests that need files. */
static const char *tmpdir(void)
{
    static char dir[] = "/tmp/select_match_test.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    return dir;
}

static void write_file(const char *path, const char *text, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, text, len), (ssize_t)len);
    close(fd);
}

TEST(exclude_from_skips_comments_blanks_and_surrounding_blanks)
{
    const char *dir = tmpdir();
    char file[256];
    snprintf(file, sizeof(file), "%s/excludes", dir);
    static const char text[] = "# build output\n"
                               "\n"
                               "   \t\n"
                               "*.o\r\n"
                               "  /build/  \n"
                               "  # an indented comment\n"
                               "[ ]padded";
    write_file(file, text, sizeof(text) - 1);
    const char *files[] = {file};
    cli_options opt = {.exclude_files = files, .n_exclude_files = 1};
    cli_select *s = NULL;
    char why[512] = "";
    CHECK_EQ(cli_select_new(&opt, "src", 1, &s, why, sizeof(why)), 0);
    CHECK(out(s, "x/y.o", &file_st));
    CHECK(out(s, "build", &dir_st));
    CHECK(!out(s, "build", &file_st));
    CHECK(!out(s, "# build output", &file_st));
    CHECK(!out(s, "# an indented comment", &file_st));
    CHECK(out(s, "a/ padded", &file_st));
    CHECK(!out(s, "a/padded", &file_st));
    cli_select_free(s);
    unlink(file);
    rmdir(dir);
}

TEST(missing_exclude_from_file_is_enoent_with_its_name)
{
    const char *files[] = {"/nonexistent/haul-excludes"};
    cli_options opt = {.exclude_files = files, .n_exclude_files = 1};
    cli_select *s = (cli_select *)1;
    char why[512] = "";
    CHECK_EQ(cli_select_new(&opt, "src", 1, &s, why, sizeof(why)), ENOENT);
    CHECK(s == NULL);
    CHECK(strstr(why, "/nonexistent/haul-excludes") != NULL);
}

TEST(bad_pattern_in_a_file_names_file_and_line)
{
    const char *dir = tmpdir();
    char file[256];
    snprintf(file, sizeof(file), "%s/excludes", dir);
    write_file(file, "*.o\n# fine\n/\n", 13);
    const char *files[] = {file};
    cli_options opt = {.exclude_files = files, .n_exclude_files = 1};
    cli_select *s = NULL;
    char why[512] = "";
    CHECK_EQ(cli_select_new(&opt, "src", 1, &s, why, sizeof(why)), EINVAL);
    CHECK(strstr(why, ":3:") != NULL);
    unlink(file);
    rmdir(dir);
}

/* Makes dir/name with a CACHEDIR.TAG of the given content; returns it open. */
static int tagged_dir(const char *dir, const char *name, const char *tag, size_t len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    CHECK_EQ(mkdir(path, 0755), 0);
    if (tag) {
        char file[600];
        snprintf(file, sizeof(file), "%s/" CLI_CACHEDIR_TAG, path);
        write_file(file, tag, len);
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0);
    return fd;
}

TEST(cache_tag_needs_the_exact_signature)
{
    const char *dir = tmpdir();
    cli_options opt = {.exclude_caches = 1};
    cli_select *s = NULL;
    char why[512];
    CHECK_EQ(cli_select_new(&opt, dir, 1, &s, why, sizeof(why)), 0);
    static const char good[] = CLI_CACHEDIR_SIGNATURE "\n# made by a test\n";
    static const char exact[] = CLI_CACHEDIR_SIGNATURE;
    static const char wrong[] = "Signature: 8a477f597d28d172789f06886806bc56\n";
    static const char shorter[] = "Signature: 8a477f597d28d172789f06886806bc5";
    int fd_good = tagged_dir(dir, "good", good, sizeof(good) - 1);
    int fd_exact = tagged_dir(dir, "exact", exact, sizeof(exact) - 1);
    int fd_wrong = tagged_dir(dir, "wrong", wrong, sizeof(wrong) - 1);
    int fd_short = tagged_dir(dir, "short", shorter, sizeof(shorter) - 1);
    int fd_none = tagged_dir(dir, "none", NULL, 0);
    CHECK_EQ(cli_select_skip(s, "good", 4, &dir_st, fd_good), CLI_SELECT_OUT);
    CHECK_EQ(cli_select_skip(s, "exact", 5, &dir_st, fd_exact), CLI_SELECT_OUT);
    CHECK_EQ(cli_select_skip(s, "wrong", 5, &dir_st, fd_wrong), CLI_SELECT_KEEP);
    CHECK_EQ(cli_select_skip(s, "short", 5, &dir_st, fd_short), CLI_SELECT_KEEP);
    CHECK_EQ(cli_select_skip(s, "none", 4, &dir_st, fd_none), CLI_SELECT_KEEP);
    /* Without the open directory there is nothing to look at. */
    CHECK_EQ(cli_select_skip(s, "good", 4, &dir_st, -1), CLI_SELECT_KEEP);
    cli_select_free(s);
    close(fd_good);
    close(fd_exact);
    close(fd_wrong);
    close(fd_short);
    close(fd_none);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_EQ(system(cmd), 0);
}

TEST(cache_tag_that_is_a_symlink_or_fifo_does_not_count)
{
    const char *dir = tmpdir();
    char path[512], target[512];
    int fd_link = tagged_dir(dir, "link", NULL, 0);
    snprintf(target, sizeof(target), "%s/real-tag", dir);
    write_file(target, CLI_CACHEDIR_SIGNATURE, sizeof(CLI_CACHEDIR_SIGNATURE) - 1);
    snprintf(path, sizeof(path), "%s/link/" CLI_CACHEDIR_TAG, dir);
    CHECK_EQ(symlink(target, path), 0);
    int fd_fifo = tagged_dir(dir, "fifo", NULL, 0);
    snprintf(path, sizeof(path), "%s/fifo/" CLI_CACHEDIR_TAG, dir);
    CHECK_EQ(mkfifo(path, 0644), 0);
    cli_options opt = {.exclude_caches = 1};
    cli_select *s = NULL;
    char why[512];
    CHECK_EQ(cli_select_new(&opt, dir, 1, &s, why, sizeof(why)), 0);
    CHECK_EQ(cli_select_skip(s, "link", 4, &dir_st, fd_link), CLI_SELECT_KEEP);
    /* A FIFO would block a read: it must not be opened for one. */
    CHECK_EQ(cli_select_skip(s, "fifo", 4, &dir_st, fd_fifo), CLI_SELECT_KEEP);
    cli_select_free(s);
    close(fd_link);
    close(fd_fifo);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_EQ(system(cmd), 0);
}

/* A directory on another file system is kept empty; a file whose st_dev
 * differs is kept, as on overlayfs, where files report their layer's. */
TEST(other_file_system_keeps_directories_empty_and_files_as_they_are)
{
    cli_options opt = {.one_file_system = 1};
    cli_select *s = NULL;
    char why[512];
    CHECK_EQ(cli_select_new(&opt, "src", 1, &s, why, sizeof(why)), 0);
    struct stat other_dir = dir_st, other_file = file_st;
    other_dir.st_dev = other_file.st_dev = 2;
    CHECK_EQ(cli_select_skip(s, "mnt", 3, &other_dir, -1), CLI_SELECT_EMPTY);
    CHECK_EQ(cli_select_skip(s, "layer", 5, &other_file, -1), CLI_SELECT_KEEP);
    CHECK_EQ(cli_select_skip(s, "home", 4, &dir_st, -1), CLI_SELECT_KEEP);
    CHECK_EQ(cli_select_skip(s, "f", 1, &file_st, -1), CLI_SELECT_KEEP);
    cli_select_free(s);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TEST(many_double_stars_against_a_deep_path_stay_fast)
{
    /* Greedy matching with one backtracking point: n * k steps, not
     * exponential, even when nothing matches. */
    static char deep[4096];
    size_t len = 0;
    for (int i = 0; i < 1000; i++)
        len += (size_t)snprintf(deep + len, sizeof(deep) - len, "%sa", i ? "/" : "");
    cli_select *s =
        with_patterns((const char *[]){"**/a/**/a/**/a/**/a/**/a/**/a/**/a/**/b", NULL});
    double t0 = now();
    CHECK(!out(s, deep, &file_st));
    CHECK_LT(now() - t0, 2.0);
    cli_select_free(s);
}

TEST(exclude_from_dash_reads_standard_input)
{
    const char *dir = tmpdir();
    char file[256];
    snprintf(file, sizeof(file), "%s/excludes", dir);
    static const char text[] = "# from stdin\n*.log\n";
    write_file(file, text, sizeof(text) - 1);
    CHECK(freopen(file, "r", stdin) != NULL);
    const char *files[] = {"-"};
    cli_options opt = {.exclude_files = files, .n_exclude_files = 1};
    cli_select *s = NULL;
    char why[512] = "";
    CHECK_EQ(cli_select_new(&opt, "src", 1, &s, why, sizeof(why)), 0);
    CHECK(out(s, "var/x.log", &file_st));
    CHECK(!out(s, "var/x.txt", &file_st));
    cli_select_free(s);
    unlink(file);
    rmdir(dir);
}
