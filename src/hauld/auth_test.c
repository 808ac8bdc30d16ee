/*
 * auth_test.c - the [principal NAME] sections of hauld's configuration
 * file, read from memory: what is accepted, and which namespaces nest.
 */
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "hauld/auth.h"

/* Reads text as a configuration file; returns auth_read()'s result. */
static int read_text(auth_table *t, const char *text, char *err, size_t errlen)
{
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    CHECK(f != NULL);
    err[0] = '\0';
    int rc = auth_read(t, f, "hauld.conf", err, errlen);
    fclose(f);
    return rc;
}

TEST(sections_are_read_from_a_stream)
{
    auth_table t;
    auth_init(&t);
    char err[256];
    CHECK_OK(read_text(&t,
                       "listen = :7070\n"
                       "[principal web1]\nroot = hosts/web1\nrights = all\n"
                       "[principal restore]\nroot = hosts/web1   # shared\nrights = read\n"
                       "[principal *]\nroot = clients\n",
                       err, sizeof(err)));
    CHECK_EQ(t.n, 2);
    auth_principal a;
    auth_lookup(&t, "restore", &a);
    CHECK_STR_EQ(a.root, "hosts/web1");
    CHECK_EQ(a.rights, AUTH_READ);
    auth_lookup(&t, "web2", &a);
    CHECK_STR_EQ(a.root, "clients/web2");
    auth_free(&t);
}

/* Found by fuzz/config_fuzz: a root inside the namespace that
 * [principal *] gives a principal without a section of its own was
 * accepted, so that principal saw the other's datasets as its own. */
TEST(root_inside_a_namespace_of_the_default_section_is_refused)
{
    auth_table t;
    auth_init(&t);
    char err[256];
    CHECK_EQ(read_text(&t, "[principal *]\nroot = clients\n[principal b]\nroot = clients/web2/x\n",
                       err, sizeof(err)),
             -1);
    CHECK(strstr(err, "clients/web2/x") != NULL);
    CHECK(strstr(err, "principal web2") != NULL);
    /* Without a root in [principal *], a principal's namespace is its
     * name. */
    CHECK_EQ(read_text(&t, "[principal b]\nroot = web2/x\n", err, sizeof(err)), -1);
    CHECK(strstr(err, "principal web2") != NULL);
    CHECK_EQ(t.n, 0);

    /* Sharing the namespace itself stays allowed, and so does a root
     * below the [principal *] directory of a principal that has a
     * section (its namespace is elsewhere). */
    CHECK_OK(read_text(&t, "[principal *]\nroot = clients\n[principal b]\nroot = clients/web2\n",
                       err, sizeof(err)));
    CHECK_OK(read_text(&t,
                       "[principal *]\nroot = clients\n[principal web2]\nroot = hosts/web2\n"
                       "[principal b]\nroot = clients/web2/x\n",
                       err, sizeof(err)));
    auth_free(&t);
}
