/*
 * config_fuzz.c - libFuzzer target for hauld's configuration file, the
 * [principal NAME] sections of src/hauld/auth.c (auth_read(), which
 * auth_load() calls on the file it opens).
 *
 * Input: the file's content, read through fmemopen(). Besides the
 * sanitizers' own findings, the target aborts when the parser breaks its
 * contract (auth.h, hauld(8)):
 *
 *   - on failure, the table is left as it was and the message names the
 *     file; on success every section has a valid, unique principal name,
 *     rights among create, read and delete, limits within 2^20;
 *   - every root is a relative path of plain names (no '/' at the start,
 *     no "." or "..", no empty component), and so is every namespace
 *     auth_lookup() makes, for the principals of the file and for others;
 *   - namespaces never nest: no root lies strictly inside another
 *     principal's namespace, whether that one has a section or gets its
 *     namespace from [principal *].
 *
 * See fuzz/README.md for how to build and run it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hauld/auth.h"
#include "proto/store.h"

static void fail(const char *what)
{
    fprintf(stderr, "config_fuzz: %s\n", what);
    abort();
}

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail("contract broken: " #cond);                                                       \
    } while (0)

/* A name of the store, restated: 1..255 of [A-Za-z0-9._-], not starting
 * with '.'. */
static int name_safe(const char *s, size_t n)
{
    if (n == 0 || n > HSP_NAME_MAX || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\0' ||
            strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", s[i]) ==
                NULL)
            return 0;
    return 1;
}

/* A relative path of such names. */
static int root_safe(const char *root)
{
    size_t len = strlen(root);
    if (len == 0 || len > HSP_PATH_MAX)
        return 0;
    for (const char *c = root;;) {
        const char *slash = strchr(c, '/');
        size_t n = slash ? (size_t)(slash - c) : strlen(c);
        if (!name_safe(c, n))
            return 0;
        if (slash == NULL)
            return 1;
        c = slash + 1;
    }
}

/* b lies strictly inside a. */
static int inside(const char *a, const char *b)
{
    size_t n = strlen(a);
    return strncmp(a, b, n) == 0 && b[n] == '/';
}

static const auth_principal *named(const auth_table *t, const char *name, size_t n)
{
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->v[i].name) == n && strncmp(t->v[i].name, name, n) == 0)
            return &t->v[i];
    return NULL;
}

static void check_lookup(const auth_table *t, const char *principal)
{
    auth_principal a;
    auth_lookup(t, principal, &a);
    REQUIRE(strnlen(a.root, sizeof(a.root)) < sizeof(a.root));
    REQUIRE(root_safe(a.root));
}

static void check_table(const auth_table *t)
{
    REQUIRE(strcmp(t->any.name, "*") == 0);
    REQUIRE(t->any.root[0] == '\0' || root_safe(t->any.root));
    REQUIRE(strlen(t->any.root) + 1 + HSP_NAME_MAX <= HSP_PATH_MAX);
    for (size_t i = 0; i < t->n + 1; i++) {
        const auth_principal *a = i < t->n ? &t->v[i] : &t->any;
        REQUIRE((a->rights & ~(unsigned)(AUTH_CREATE | AUTH_READ | AUTH_DELETE)) == 0);
        REQUIRE(a->max_sessions <= (1u << 20) && a->max_connections <= (1u << 20));
        REQUIRE(strnlen(a->root, sizeof(a->root)) < sizeof(a->root));
        if (i == t->n)
            break;
        REQUIRE(name_safe(a->name, strlen(a->name)));
        REQUIRE(a->root[0] == '\0' || root_safe(a->root));
        REQUIRE(named(t, a->name, strlen(a->name)) == a); /* unique */
        check_lookup(t, a->name);
    }
    check_lookup(t, "x");
    check_lookup(t, "a-principal-with-no-section");

    /* No namespace inside another. */
    for (size_t i = 0; i < t->n; i++) {
        const char *ri = t->v[i].root[0] ? t->v[i].root : t->v[i].name;
        for (size_t j = 0; j < t->n; j++) {
            const char *rj = t->v[j].root[0] ? t->v[j].root : t->v[j].name;
            REQUIRE(!inside(ri, rj));
        }
        /* The namespaces of [principal *] are ANY/P (or P without a root),
         * for every P without a section: ri may not hold them, nor lie
         * inside one of them. */
        const char *any = t->any.root;
        REQUIRE(!any[0] || (strcmp(ri, any) != 0 && !inside(ri, any)));
        const char *below = ri;
        if (any[0]) {
            if (!inside(any, ri))
                continue;
            below = ri + strlen(any) + 1;
        }
        const char *slash = strchr(below, '/');
        if (slash != NULL)
            REQUIRE(named(t, below, (size_t)(slash - below)) != NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    FILE *f = fmemopen((void *)data, size, "r");
    if (f == NULL)
        return 0;
    auth_table t;
    auth_init(&t);
    /* A table that must survive a failed read as it was. */
    t.any.quota = 42;
    char err[512];
    err[0] = '\0';
    int rc = auth_read(&t, f, "fuzz.conf", err, sizeof(err));
    fclose(f);
    REQUIRE(rc == 0 || rc == -1);
    if (rc < 0) {
        REQUIRE(t.n == 0 && t.v == NULL && t.any.quota == 42);
        REQUIRE(strnlen(err, sizeof(err)) < sizeof(err));
        REQUIRE(strncmp(err, "fuzz.conf", 9) == 0);
    } else {
        check_table(&t);
    }
    auth_free(&t);
    return 0;
}
