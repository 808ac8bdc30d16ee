/*
 * install_test.c - what `cmake --install` puts where, and that it can be
 * used: the files are there, a DESTDIR install names the final prefix,
 * pkg-config finds libhaul with the installed libhaul.pc, a program that
 * includes <haul.h> builds against the installed shared and static
 * libraries and runs, the installed haul and hauld print their versions,
 * hauld starts with the example hauld.conf, the installed systemd units pass
 * `systemd-analyze verify` (scripts/verify-units; skipped without
 * systemd-analyze), and the command lines of haul-push@.service, run as
 * systemd would run them against a real hauld, push and prune as
 * docs/service.md says.
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
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "e2e.h"

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

TEST(destdir_install_names_the_final_prefix)
{
    /* A package is built with DESTDIR: the files land below it, and what
     * they say about where things are names the prefix alone. */
    install();
    char root[PATH_MAX], path[PATH_MAX], out[OUTPUT_MAX];
    pathf(root, "%s/root", prefix);
    CHECK_EQ(run(NULL, 0, "DESTDIR='%s' '%s' --install '%s' --prefix /opt/haul", root,
                 HAUL_TEST_CMAKE, HAUL_BINARY_DIR),
             0);
    const char *pc = HAUL_INSTALL_LIBDIR "/pkgconfig/libhaul.pc";
    pathf(path, "%s/opt/haul/%s", root, pc);
    CHECK_EQ(run(out, sizeof(out), "grep '^prefix=' '%s'", path), 0);
    CHECK_STR_EQ(out, "prefix=/opt/haul\n");
    if (HAUL_SYSTEMD_UNIT_DIR[0] == '/')
        pathf(path, "%s%s/hauld.service", root, HAUL_SYSTEMD_UNIT_DIR);
    else
        pathf(path, "%s/opt/haul/%s/hauld.service", root, HAUL_SYSTEMD_UNIT_DIR);
    CHECK_EQ(run(out, sizeof(out), "grep '^ExecStart=' '%s'", path), 0);
    pathf(path, "ExecStart=/opt/haul/%s/hauld --config ", HAUL_INSTALL_SBINDIR);
    CHECK(strncmp(out, path, strlen(path)) == 0);
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
    char want[PATH_MAX + 32];
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

TEST(example_hauld_conf_starts_hauld)
{
    /* The example hauld.service's configuration is made from, with its
     * paths moved into the prefix: hauld accepts every key and starts. */
    install();
    char haul[PATH_MAX], hauld[PATH_MAX], example[PATH_MAX], conf[PATH_MAX], out[OUTPUT_MAX];
    installed(haul, HAUL_INSTALL_BINDIR, "haul");
    installed(hauld, HAUL_INSTALL_SBINDIR, "hauld");
    installed(example, HAUL_INSTALL_DOCDIR, "examples/hauld.conf");
    pathf(conf, "%s/hauld.conf", prefix);
    CHECK_EQ(run(out, sizeof(out),
                 "cd '%s' && '%s' cert ca ca && '%s' cert server etc backup.example --ca ca && "
                 "cp ca/ca.crt etc/ && mkdir store",
                 prefix, haul, haul),
             0);
    CHECK_EQ(run(out, sizeof(out),
                 "sed -e 's|%s/|%s/etc/|' -e 's|^store = .*|store = %s/store|' "
                 "-e 's|^listen = .*|listen = 127.0.0.1:0|' '%s' > '%s'",
                 HAUL_TEST_CONFIG_DIR, prefix, prefix, example, conf),
             0);

    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(hauld, hauld, "--config", conf, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    /* hauld says on stdout that it listens once it is ready, or ends. */
    out[0] = '\0';
    size_t len = 0;
    ssize_t got;
    while (len < sizeof(out) - 1 && !strstr(out, "hauld: listening on ") &&
           (got = read(fds[0], out + len, sizeof(out) - 1 - len)) > 0) {
        len += (size_t)got;
        out[len] = '\0';
    }
    close(fds[0]);
    int listening = strstr(out, "hauld: listening on ") != NULL;
    kill(pid, SIGTERM);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(listening);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- haul-push@.service's command lines -------------------------------------------- */

/* What a unit's command lines may hold: words, variables, values. */
#define UNIT_WORDS 64
#define UNIT_VARS 16
#define UNIT_LINE 2048

typedef struct unit_env {
    char *name[UNIT_VARS], *value[UNIT_VARS];
    int n;
} unit_env;

static const char *unit_getenv(const unit_env *env, const char *name, size_t len)
{
    for (int i = 0; i < env->n; i++)
        if (strlen(env->name[i]) == len && memcmp(env->name[i], name, len) == 0)
            return env->value[i];
    return "";
}

/* Appends a copy of text[0..len) to the words. */
static void unit_word(char **words, int *n, const char *text, size_t len)
{
    CHECK(*n < UNIT_WORDS - 1);
    CHECK((words[*n] = strndup(text, len)) != NULL);
    (*n)++;
}

/*
 * Splits a command line of a unit into the arguments systemd would give
 * the program (systemd.service(5), "COMMAND LINES"): words split at
 * blanks, quotes grouping; then in each word "$$" is a "$" and "${NAME}"
 * the variable's value, and a word that is "$NAME" alone becomes the
 * value split at blanks, zero or more words. The units use no other
 * syntax.
 */
static int unit_split(const char *line, const unit_env *env, char **argv)
{
    char raw[UNIT_WORDS][UNIT_LINE];
    int nraw = 0;
    const char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || *p == '\n')
            break;
        CHECK(nraw < UNIT_WORDS);
        size_t len = 0;
        char quote = 0;
        while (*p != '\0' && *p != '\n' && (quote || (*p != ' ' && *p != '\t'))) {
            if (quote && *p == quote)
                quote = 0;
            else if (!quote && (*p == '\'' || *p == '"'))
                quote = *p;
            else {
                CHECK(len < UNIT_LINE - 1);
                raw[nraw][len++] = *p;
            }
            p++;
        }
        CHECK(quote == 0);
        raw[nraw++][len] = '\0';
    }
    int argc = 0;
    for (int i = 0; i < nraw; i++) {
        const char *w = raw[i];
        if (w[0] == '$' && w[1] != '$' && w[1] != '{') {
            const char *v = unit_getenv(env, w + 1, strlen(w + 1));
            for (;;) {
                while (*v == ' ' || *v == '\t')
                    v++;
                if (*v == '\0')
                    break;
                size_t len = strcspn(v, " \t");
                unit_word(argv, &argc, v, len);
                v += len;
            }
            continue;
        }
        char out[UNIT_LINE];
        size_t len = 0;
        for (const char *c = w; *c;) {
            const char *piece = c;
            size_t piece_len = 1;
            if (c[0] == '$' && c[1] == '$') {
                c += 2;
            } else if (c[0] == '$' && c[1] == '{') {
                const char *end = strchr(c, '}');
                CHECK(end != NULL);
                piece = unit_getenv(env, c + 2, (size_t)(end - c - 2));
                piece_len = strlen(piece);
                c = end + 1;
            } else {
                c++;
            }
            CHECK(len + piece_len < sizeof(out));
            memcpy(out + len, piece, piece_len);
            len += piece_len;
        }
        unit_word(argv, &argc, out, len);
    }
    argv[argc] = NULL;
    return argc;
}

/* Reads a KEY=VALUE file as EnvironmentFile= does (the subset the test
 * writes: no quotes, no continuation lines). */
static void unit_read_env(const char *path, unit_env *env)
{
    memset(env, 0, sizeof(*env));
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    char line[UNIT_LINE];
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *eq = strchr(line, '=');
        if (line[0] == '#' || eq == NULL)
            continue;
        *eq = '\0';
        CHECK(env->n < UNIT_VARS);
        CHECK((env->name[env->n] = strdup(line)) != NULL);
        CHECK((env->value[env->n] = strdup(eq + 1)) != NULL);
        env->n++;
    }
    fclose(f);
}

/* Runs argv with the unit's variables added to the environment; returns
 * its exit status and keeps what it printed in out. */
static int unit_exec(char **argv, const unit_env *env, char *out, size_t out_len)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        for (int i = 0; i < env->n; i++)
            setenv(env->name[i], env->value[i], 1);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t got;
    char sink[4096];
    while ((got = read(fds[0], sink, sizeof(sink))) > 0) {
        size_t keep = (size_t)got < out_len - 1 - len ? (size_t)got : out_len - 1 - len;
        memcpy(out + len, sink, keep);
        len += keep;
    }
    out[len] = '\0';
    close(fds[0]);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    harness_log("%s ... exited %d:\n%s", argv[0], WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The value of the first `key=` line of a unit file, with the unit's
 * specifiers %i (the instance) replaced. */
static void unit_line(const char *unit, const char *key, const char *instance, char *out)
{
    FILE *f = fopen(unit, "r");
    CHECK(f != NULL);
    char line[UNIT_LINE];
    size_t key_len = strlen(key);
    int found = 0;
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strncmp(line, key, key_len) == 0 && line[key_len] == '=';
    fclose(f);
    CHECK(found);
    size_t len = 0;
    for (const char *c = line + key_len + 1; *c && *c != '\n'; c++) {
        const char *piece = c;
        size_t piece_len = 1;
        if (c[0] == '%' && c[1] == 'i') {
            piece = instance;
            piece_len = strlen(instance);
            c++;
        }
        CHECK(len + piece_len < UNIT_LINE);
        memcpy(out + len, piece, piece_len);
        len += piece_len;
    }
    out[len] = '\0';
}

/*
 * Starts haul-push@NAME.service as systemd would: the variables of its
 * EnvironmentFile= (here read from conf, since the installed unit names
 * /etc/haul), ExecStart=, and, when that ended with 0 or a status of
 * SuccessExitStatus= (2), ExecStartPost=. Returns the status of the last
 * command run.
 */
static int run_push_unit(const char *conf, const char *name)
{
    char unit[PATH_MAX], line[UNIT_LINE], out[OUTPUT_MAX];
    char *argv[UNIT_WORDS];
    unit_env env;
    installed(unit, HAUL_SYSTEMD_UNIT_DIR, "haul-push@.service");
    unit_line(unit, "SuccessExitStatus", name, line);
    CHECK_STR_EQ(line, "2");
    unit_read_env(conf, &env);
    unit_line(unit, "ExecStart", name, line);
    unit_split(line, &env, argv);
    int status = unit_exec(argv, &env, out, sizeof(out));
    for (int i = 0; argv[i]; i++)
        free(argv[i]);
    if (status == 0 || status == 2) {
        unit_line(unit, "ExecStartPost", name, line);
        unit_split(line, &env, argv);
        status = unit_exec(argv, &env, out, sizeof(out));
        for (int i = 0; argv[i]; i++)
            free(argv[i]);
    }
    for (int i = 0; i < env.n; i++) {
        free(env.name[i]);
        free(env.value[i]);
    }
    return status;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    CHECK(fputs(text, f) >= 0);
    CHECK(fclose(f) == 0);
}

TEST(push_unit_pushes_then_prunes_to_keep)
{
    install();
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    /* The principal of a --plaintext client may prune. */
    char server_conf[PATH_MAX], conf[PATH_MAX], source[PATH_MAX], text[2 * PATH_MAX];
    e2e_join(server_conf, env.dir, "hauld.conf");
    write_text(server_conf, "[principal default]\nrights = all\n");
    env.server_args[0] = "--config";
    env.server_args[1] = server_conf;
    e2e_start_server(&env);

    /* A blank in SOURCE stays in one argument; CONNECT_ARGS and HAUL_ARGS
     * are split, and HAUL_ARGS goes to the push alone (prune refuses
     * --takeover). */
    e2e_join(source, env.dir, "the tree");
    e2e_mkdir(source);
    e2e_file(e2e_at(source, "file"), 1000, 1, 0644);
    e2e_join(conf, env.dir, "job.conf");
    const char *base = "SOURCE=%s\nURL=%s/job\n# options\nCONNECT_ARGS=--plaintext "
                       "--timeout 30\nHAUL_ARGS=--takeover -q\n";
    snprintf(text, sizeof(text), base, source, env.url);
    write_text(conf, text);

    /* Without KEEP, nothing is pruned. */
    CHECK_EQ(run_push_unit(conf, "job"), 0);
    CHECK_EQ(run_push_unit(conf, "job"), 0);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "job"), 2);

    /* A KEEP of 0 would delete every snapshot: refused after the push. */
    snprintf(text, sizeof(text), "%sKEEP=0\n", base);
    char with_keep[2 * PATH_MAX];
    snprintf(with_keep, sizeof(with_keep), text, source, env.url);
    write_text(conf, with_keep);
    CHECK_EQ(run_push_unit(conf, "job"), 1);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "job"), 3);

    /* KEEP=2: a push, then the dataset keeps its two newest. */
    snprintf(text, sizeof(text), "%sKEEP=2\n", base);
    snprintf(with_keep, sizeof(with_keep), text, source, env.url);
    write_text(conf, with_keep);
    CHECK_EQ(run_push_unit(conf, "job"), 0);
    CHECK_EQ(e2e_snapshot_count(&env, "default", "job"), 2);
    e2e_teardown(&env);
}
