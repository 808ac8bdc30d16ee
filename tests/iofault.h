/*
 * iofault.h - starting hauld under tests/iofault_preload.so, the store's
 * fault injector, for the tests that use it (store_faults_test,
 * workers_test, metrics_test).
 *
 * The injector is set up through the environment of the hauld the test
 * starts, and of that hauld only: iofault_env_set() puts LD_PRELOAD, the
 * injector's variables and an ASAN_OPTIONS that lets a preloaded library
 * come before the sanitizer's runtime; iofault_env_clear() takes them
 * back once hauld is started, so that the clients run without it.
 *
 * A stall (HAUL_IOFAULT_STALL="write:NAME" or "read:NAME") holds the
 * store call on a file named NAME: the injector opens the FIFO
 * DIR/stalled when it stalls and waits until DIR/release is opened.
 */
#ifndef HAUL_TESTS_IOFAULT_H
#define HAUL_TESTS_IOFAULT_H

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "e2e.h"
#include "harness.h"

/* How long a test waits for a store call to stall, in seconds. */
#define IOFAULT_STALL_TIMEOUT 30

/* Sets LD_PRELOAD=preload, ASAN_OPTIONS and the variables of `vars`
 * (name, value, name, value, ..., NULL; a NULL value unsets). Returns the
 * ASAN_OPTIONS to put back, for iofault_env_clear(). */
static inline char *iofault_env_set(const char *preload, const char *const *vars)
{
    char asan[1024];
    const char *old = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof(asan), "%s%sverify_asan_link_order=0", old ? old : "",
             old && *old ? ":" : "");
    char *saved = old ? strdup(old) : NULL;
    setenv("LD_PRELOAD", preload, 1);
    setenv("ASAN_OPTIONS", asan, 1);
    for (int i = 0; vars[i] != NULL; i += 2) {
        if (vars[i + 1] != NULL)
            setenv(vars[i], vars[i + 1], 1);
        else
            unsetenv(vars[i]);
    }
    return saved;
}

/* Takes back what iofault_env_set() put, and frees `saved`. */
static inline void iofault_env_clear(const char *const *vars, char *saved)
{
    unsetenv("LD_PRELOAD");
    for (int i = 0; vars[i] != NULL; i += 2)
        unsetenv(vars[i]);
    if (saved) {
        setenv("ASAN_OPTIONS", saved, 1);
        free(saved);
    } else {
        unsetenv("ASAN_OPTIONS");
    }
}

/*
 * Starts hauld (with `args`, NULL-terminated, or NULL) with the stall of
 * `spec` armed; the FIFOs are in the test's directory.
 */
static inline void iofault_start_stalling(e2e_env *env, const char *spec, const char *const *args)
{
    e2e_setup(env, E2E_NO_SERVER);
    char stalled[PATH_MAX], release[PATH_MAX], preload[PATH_MAX];
    CHECK(mkfifo(e2e_path(env, stalled, "stalled"), 0600) == 0);
    CHECK(mkfifo(e2e_path(env, release, "release"), 0600) == 0);
    e2e_find_program(preload, "tests/iofault_preload.so");
    for (int i = 0; args && args[i]; i++)
        env->server_args[i] = args[i];
    const char *vars[] = {"HAUL_IOFAULT_PREFIX",
                          env->store,
                          "HAUL_IOFAULT_STALL",
                          spec,
                          "HAUL_IOFAULT_STALL_DIR",
                          env->dir,
                          NULL};
    char *saved = iofault_env_set(preload, vars);
    e2e_start_server(env);
    iofault_env_clear(vars, saved);
}

/* Waits until a store call of hauld stalls; 1 when it did in time. */
static inline int iofault_stall_wait(e2e_env *env)
{
    char path[PATH_MAX];
    int fd = open(e2e_path(env, path, "stalled"), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    CHECK(fd >= 0);
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    int rc = poll(&pf, 1, IOFAULT_STALL_TIMEOUT * 1000);
    char one = 0;
    int ok = rc == 1 && read(fd, &one, 1) == 1;
    close(fd);
    return ok;
}

/* Lets the stalled call go on. */
static inline void iofault_stall_release(e2e_env *env)
{
    char path[PATH_MAX];
    int fd = open(e2e_path(env, path, "release"), O_WRONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    close(fd);
}

#endif
