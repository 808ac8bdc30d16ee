/*
 * url_fuzz.c - libFuzzer target for the haul command's URLs,
 * cli_url_parse() (src/cli/client.c): haul://HOST:PORT[/DATASET[@SNAPSHOT]]
 * and haul://unix:/path/to/sock[/DATASET[@SNAPSHOT]].
 *
 * Input: the URL as typed (a C string: the input up to its first NUL).
 * Besides the sanitizers' own findings, the target aborts when the parser
 * breaks its contract:
 *
 *   - what it fills in is NUL-terminated within its field;
 *   - the dataset and the snapshot are empty or store names (no '/', not
 *     starting with '.', so never ".."), and a snapshot comes with a
 *     dataset;
 *   - the destination is "unix:" and an absolute path, or HOST:PORT with
 *     a port of 1..65535 in decimal digits only;
 *   - the URL put back together from its parts parses to the same parts.
 *
 * Addresses are not resolved here (haul__addr_parse() would ask the
 * resolver for whatever host the input names).
 *
 * See fuzz/README.md for how to build and run it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/client.h"

static FILE *report;

static void fail(const char *what)
{
    fprintf(report ? report : stderr, "url_fuzz: %s\n", what);
    abort();
}

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail("contract broken: " #cond);                                                       \
    } while (0)

static int name_safe(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", s[i]) ==
            NULL)
            return 0;
    return 1;
}

static void check_url(const cli_url *u)
{
    REQUIRE(strnlen(u->destination, sizeof(u->destination)) < sizeof(u->destination));
    REQUIRE(strnlen(u->dataset, sizeof(u->dataset)) < sizeof(u->dataset));
    REQUIRE(strnlen(u->snapshot, sizeof(u->snapshot)) < sizeof(u->snapshot));
    REQUIRE(u->dataset[0] == '\0' || name_safe(u->dataset, HSP_NAME_MAX));
    REQUIRE(u->snapshot[0] == '\0' || name_safe(u->snapshot, HSP_SNAPSHOT_MAX));
    REQUIRE(u->snapshot[0] == '\0' || u->dataset[0] != '\0');
    const char *d = u->destination;
    if (strncmp(d, "unix:", 5) == 0) {
        REQUIRE(d[5] == '/');
        return;
    }
    const char *colon = strrchr(d, ':');
    REQUIRE(colon != NULL && colon != d);
    size_t digits = strlen(colon + 1);
    REQUIRE(digits >= 1 && strspn(colon + 1, "0123456789") == digits);
    long port = strtol(colon + 1, NULL, 10);
    REQUIRE(port >= 1 && port <= 65535);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* The parser says why it refuses a URL on stderr: keep libFuzzer's
     * output readable by sending that to /dev/null, and this target's own
     * reports to a copy of the original stderr (the sanitizers write to
     * file descriptor 2 directly and are not affected). */
    int fd = dup(2);
    report = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (report != NULL)
        setvbuf(report, NULL, _IONBF, 0);
    FILE *null = fopen("/dev/null", "w");
    if (null != NULL)
        stderr = null;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    static cli_url u, again;
    if (cli_url_parse(text, &u) == 0) {
        check_url(&u);
        /* Put back together, it says the same. */
        static char url[sizeof(u.destination) + sizeof(u.dataset) + sizeof(u.snapshot) + 16];
        /* A unix: URL keeps its '/' before an empty dataset: without it,
         * the last component of the path would be read as the dataset
         * (unless the path is a socket). */
        int unix_path = strncmp(u.destination, "unix:", 5) == 0;
        snprintf(url, sizeof(url), "haul://%s%s%s%s%s", u.destination,
                 u.dataset[0] || unix_path ? "/" : "", u.dataset, u.snapshot[0] ? "@" : "",
                 u.snapshot);
        REQUIRE(cli_url_parse(url, &again) == 0);
        REQUIRE(strcmp(again.destination, u.destination) == 0);
        REQUIRE(strcmp(again.dataset, u.dataset) == 0);
        REQUIRE(strcmp(again.snapshot, u.snapshot) == 0);
    }
    free(text);
    return 0;
}
