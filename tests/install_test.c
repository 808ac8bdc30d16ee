/*
 * install_test.c - what `cmake --install` puts where, and that it can be
 * used: the files are there, pkg-config finds libhaul with the installed
 * libhaul.pc, a program that includes <haul.h> builds against the
 * installed shared and static libraries and runs, the installed haul and
 * hauld print their versions, and the installed systemd units pass
 * `systemd-analyze verify` (scripts/verify-units; skipped without
 * systemd-analyze).
 *
 * Each test installs the build tree this program belongs to into a fresh
 * temporary prefix, with the compiler and sanitizer flags of that build
 * (CMakeLists.txt passes them).
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#include "haul.h"

/* Output kept of a command: enough for pkg-config's flags and the
 * version lines, and readelf's dynamic section. */
#define OUTPUT_MAX 16384

static char prefix[PATH_MAX];

static void remove_prefix(void)
{
    if (prefix[0] == '\0')
        return;
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", prefix);
    if (system(cmd) != 0)
        fprintf(stderr, "install_test: could not remove %s\n", prefix);
}

/* Runs `sh -c cmd` with stderr joined to stdout; returns its exit status
 * (-1 when it did not exit) and keeps its output, NUL-terminated, in out
 * (which may be NULL). */
static int run(char *out, size_t out_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int run(char *out, size_t out_len, const char *fmt, ...)
{
    char cmd[4 * PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof(cmd) - 8, fmt, ap);
    va_end(ap);
    CHECK(n > 0 && (size_t)n < sizeof(cmd) - 8);
    strcat(cmd, " 2>&1");
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL);
    char scratch[OUTPUT_MAX];
    if (out == NULL) {
        out = scratch;
        out_len = sizeof(scratch);
    }
    /* Output beyond out_len is read and dropped, so that the command
     * never blocks on a full pipe. */
    size_t len = 0, got;
    char sink[4096];
    while ((got = fread(sink, 1, sizeof(sink), p)) > 0) {
        size_t room = out_len - 1 - len;
        size_t keep = got < room ? got : room;
        memcpy(out + len, sink, keep);
        len += keep;
    }
    out[len] = '\0';
    int status = pclose(p);
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        harness_log("`%s` ended with status %d:\n%s", cmd,
                    WIFEXITED(status) ? WEXITSTATUS(status) : -1, out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Formats a path into out (PATH_MAX bytes); fails the test when it does
 * not fit. */
static void pathf(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pathf(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, PATH_MAX, fmt, ap);
    va_end(ap);
    CHECK(n > 0 && n < PATH_MAX);
}

/* Installs the build tree into a fresh prefix; the prefix is removed when
 * the test's process exits. */
static void install(void)
{
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    pathf(prefix, "%s/haul-install-XXXXXX", tmp);
    CHECK(mkdtemp(prefix) != NULL);
    CHECK(atexit(remove_prefix) == 0);
    CHECK_EQ(
        run(NULL, 0, "'%s' --install '%s' --prefix '%s'", HAUL_TEST_CMAKE, HAUL_BINARY_DIR, prefix),
        0);
}

/* prefix/dir/name, where dir may be absolute (then it is not below the
 * prefix). */
static const char *installed(char *out, const char *dir, const char *name)
{
    if (dir[0] == '/')
        pathf(out, "%s/%s", dir, name);
    else
        pathf(out, "%s/%s/%s", prefix, dir, name);
    return out;
}

static void check_file(const char *dir, const char *name, int executable)
{
    char path[PATH_MAX];
    struct stat st;
    installed(path, dir, name);
    if (stat(path, &st) != 0)
        harness_log("%s was not installed", path);
    CHECK(stat(path, &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK(st.st_size > 0);
    if (executable)
        CHECK(access(path, X_OK) == 0);
}

TEST(install_puts_every_file_in_place)
{
    install();
    check_file(HAUL_INSTALL_LIBDIR, "libhaul.so." HAUL_TEST_VERSION, 0);
    check_file(HAUL_INSTALL_LIBDIR, "libhaul.a", 0);
    check_file(HAUL_INSTALL_LIBDIR, "pkgconfig/libhaul.pc", 0);
    check_file(HAUL_INSTALL_INCLUDEDIR, "haul.h", 0);
    check_file(HAUL_INSTALL_BINDIR, "haul", 1);
    check_file(HAUL_INSTALL_SBINDIR, "hauld", 1);
    check_file(HAUL_INSTALL_MANDIR, "man1/haul.1", 0);
    check_file(HAUL_INSTALL_MANDIR, "man8/hauld.8", 0);
    check_file(HAUL_SYSTEMD_UNIT_DIR, "hauld.service", 0);
    check_file(HAUL_SYSTEMD_UNIT_DIR, "haul-push@.service", 0);
    check_file(HAUL_SYSTEMD_UNIT_DIR, "haul-push@.timer", 0);
    check_file(HAUL_SYSUSERS_DIR, "haul.conf", 0);
    check_file(HAUL_INSTALL_DOCDIR, "examples/hauld.conf", 0);
    check_file(HAUL_INSTALL_DOCDIR, "examples/push.d/example.conf", 0);

    /* The links of a shared library, and the SONAME programs record:
     * libhaul.so.MAJOR, so that a new minor version replaces the file
     * without relinking them. */
    char path[PATH_MAX], target[PATH_MAX], out[OUTPUT_MAX];
    ssize_t n =
        readlink(installed(path, HAUL_INSTALL_LIBDIR, "libhaul.so"), target, sizeof(target) - 1);
    CHECK(n > 0);
    target[n] = '\0';
    CHECK_STR_EQ(target, "libhaul.so." HAUL_TEST_SOVERSION);
    n = readlink(installed(path, HAUL_INSTALL_LIBDIR, "libhaul.so." HAUL_TEST_SOVERSION), target,
                 sizeof(target) - 1);
    CHECK(n > 0);
    target[n] = '\0';
    CHECK_STR_EQ(target, "libhaul.so." HAUL_TEST_VERSION);
    CHECK_EQ(run(out, sizeof(out), "readelf -d '%s'",
                 installed(path, HAUL_INSTALL_LIBDIR, "libhaul.so")),
             0);
    CHECK(strstr(out, "Library soname: [libhaul.so." HAUL_TEST_SOVERSION "]") != NULL);

    /* The units start the programs where this install put them. */
    char unit[PATH_MAX];
    CHECK_EQ(run(out, sizeof(out), "grep '^ExecStart=' '%s'",
                 installed(unit, HAUL_SYSTEMD_UNIT_DIR, "hauld.service")),
             0);
    CHECK(strstr(out, installed(path, HAUL_INSTALL_SBINDIR, "hauld")) != NULL);
}

TEST(pkg_config_finds_the_installed_libhaul)
{
    install();
    char pc_dir[PATH_MAX], include_dir[PATH_MAX], lib_dir[PATH_MAX], out[OUTPUT_MAX];
    installed(pc_dir, HAUL_INSTALL_LIBDIR, "pkgconfig");
    installed(include_dir, HAUL_INSTALL_INCLUDEDIR, "");
    installed(lib_dir, HAUL_INSTALL_LIBDIR, "");
    include_dir[strlen(include_dir) - 1] = '\0';
    lib_dir[strlen(lib_dir) - 1] = '\0';

    CHECK_EQ(run(out, sizeof(out), "PKG_CONFIG_PATH='%s' pkg-config --modversion libhaul", pc_dir),
             0);
    CHECK_STR_EQ(out, HAUL_TEST_VERSION "\n");
    CHECK_EQ(
        run(out, sizeof(out), "PKG_CONFIG_PATH='%s' pkg-config --cflags --libs libhaul", pc_dir),
        0);
    char want[PATH_MAX + 8];
    snprintf(want, sizeof(want), "-I%s ", include_dir);
    CHECK(strstr(out, want) != NULL);
    snprintf(want, sizeof(want), "-L%s -lhaul", lib_dir);
    CHECK(strstr(out, want) != NULL);
    /* A static link needs OpenSSL, which libhaul.a does not hold. */
    CHECK_EQ(
        run(out, sizeof(out), "PKG_CONFIG_PATH='%s' pkg-config --static --libs libhaul", pc_dir),
        0);
    CHECK(strstr(out, "-lssl") != NULL);
    CHECK(strstr(out, "-lcrypto") != NULL);
}

/* Writes the program a user of libhaul would write first, into the
 * prefix. */
static void write_program(char *source)
{
    pathf(source, "%s/hello.c", prefix);
    FILE *f = fopen(source, "w");
    CHECK(f != NULL);
    fputs("#include <haul.h>\n"
          "#include <stdio.h>\n"
          "int main(void)\n"
          "{\n"
          "    haul_engine_config config;\n"
          "    haul_engine_config_init(&config);\n"
          "    printf(\"%s %d\\n\", haul_strerror(HAUL_ETIMEDOUT), HAUL_VERSION_MAJOR);\n"
          "    return 0;\n"
          "}\n",
          f);
    CHECK(fclose(f) == 0);
}

/* Builds the program with `link` (how libhaul is linked, then the
 * libraries pkg-config names), runs it, and returns the NEEDED entries
 * of its dynamic section. */
static void build_and_run(const char *link, char *needed, size_t needed_len)
{
    char source[PATH_MAX], program[PATH_MAX], pc_dir[PATH_MAX], out[OUTPUT_MAX];
    write_program(source);
    pathf(program, "%s/hello", prefix);
    installed(pc_dir, HAUL_INSTALL_LIBDIR, "pkgconfig");
    CHECK_EQ(run(out, sizeof(out),
                 "export PKG_CONFIG_PATH='%s' && %s %s -o '%s' '%s' "
                 "$(pkg-config --cflags libhaul) %s",
                 pc_dir, HAUL_TEST_CC, HAUL_TEST_CFLAGS, program, source, link),
             0);
    CHECK_EQ(run(out, sizeof(out), "'%s'", program), 0);
    char want[128];
    snprintf(want, sizeof(want), "%s %d\n", haul_strerror(HAUL_ETIMEDOUT), HAUL_VERSION_MAJOR);
    CHECK_STR_EQ(out, want);
    CHECK_EQ(run(needed, needed_len, "readelf -d '%s' | grep NEEDED", program), 0);
}

TEST(program_builds_and_runs_on_the_installed_shared_library)
{
    install();
    char lib_dir[PATH_MAX], link[2 * PATH_MAX], needed[OUTPUT_MAX];
    installed(lib_dir, HAUL_INSTALL_LIBDIR, "");
    /* The prefix is no directory of the dynamic linker's: the program
     * says where to look (a real install into /usr needs nothing). */
    snprintf(link, sizeof(link), "$(pkg-config --libs libhaul) -Wl,-rpath,'%s'", lib_dir);
    build_and_run(link, needed, sizeof(needed));
    CHECK(strstr(needed, "[libhaul.so." HAUL_TEST_SOVERSION "]") != NULL);
}

TEST(program_builds_and_runs_on_the_installed_static_library)
{
    install();
    char needed[OUTPUT_MAX];
    /* -l:libhaul.a picks the archive where -lhaul would take the shared
     * library; the rest of --static --libs is what the archive needs. */
    build_and_run("$(pkg-config --static --libs libhaul | sed 's/-lhaul /-l:libhaul.a /')", needed,
                  sizeof(needed));
    CHECK(strstr(needed, "libhaul") == NULL);
    CHECK(strstr(needed, "libssl") != NULL);
}

/* The first line of `program --version`, and that OpenSSL is named. */
static void check_version(const char *dir, const char *program)
{
    char path[PATH_MAX], out[OUTPUT_MAX], want[128];
    CHECK_EQ(run(out, sizeof(out), "'%s' --version", installed(path, dir, program)), 0);
    snprintf(want, sizeof(want), "%s " HAUL_TEST_VERSION, program);
    CHECK(strncmp(out, want, strlen(want)) == 0);
    CHECK(out[strlen(want)] == '\n' || out[strlen(want)] == ' ');
    CHECK(strstr(out, "\nOpenSSL ") != NULL);
    CHECK(strstr(out, "\nxxHash ") != NULL);
}

TEST(installed_programs_print_their_versions)
{
    install();
    check_version(HAUL_INSTALL_BINDIR, "haul");
    check_version(HAUL_INSTALL_SBINDIR, "hauld");
}

TEST(installed_units_pass_systemd_analyze)
{
    char out[OUTPUT_MAX];
    if (run(out, sizeof(out), "command -v systemd-analyze") != 0)
        SKIP("no systemd-analyze (the Debian package systemd)");
    CHECK_EQ(run(out, sizeof(out), "BUILD_DIR='%s' '%s/scripts/verify-units'", HAUL_BINARY_DIR,
                 HAUL_SOURCE_DIR),
             0);
}
