/*
 * auth.h - who may do what in hauld's store: the [principal NAME]
 * sections of the configuration file (hauld(8), "Principals").
 *
 * A principal is the name in a client's certificate (or, with
 * --plaintext, the name a client gives, which nobody checks). Each one
 * gets a namespace root in the store, a set of rights, a quota and its own
 * limits of sessions and connections:
 *
 *   [principal web1]
 *   root = hosts/web1          # below --store; default: the principal's name
 *   rights = create, read      # the default; "delete" must be given
 *   quota = 500G               # bytes stored in the namespace; default: none
 *   max-sessions = 8           # requests at once; default: none of its own
 *   max-connections = 64       # joined connections at once; default: none
 *
 *   [principal *]              # every principal without a section
 *   root = clients             # namespaces are clients/NAME
 *
 * Rights: create adds snapshots (push); read restores and inspects them
 * (pull, ls, verify); delete removes snapshots (delete, prune). No right
 * lets a client change a committed snapshot: snapshots are immutable, and
 * a request that would overwrite one is refused whoever sends it. The
 * default is "create, read": a client that is broken into can add
 * snapshots and read its own, but cannot destroy what it backed up.
 * "none" refuses every request of the principal.
 */
#ifndef HAUL_HAULD_AUTH_H
#define HAUL_HAULD_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto/store.h"

enum auth_right {
    AUTH_CREATE = 1u << 0,
    AUTH_READ = 1u << 1,
    AUTH_DELETE = 1u << 2,
};
#define AUTH_RIGHTS_DEFAULT (AUTH_CREATE | AUTH_READ)

/* What applies to one principal. */
typedef struct auth_principal {
    char name[HSP_NAME_MAX + 1]; /* "*" for the section of the others */
    /* The namespace, relative to the store. In the "*" section, the
     * directory below which each principal has its own name. */
    char root[HSP_PATH_MAX + 1];
    unsigned rights;          /* enum auth_right bits */
    uint64_t quota;           /* bytes; 0: none */
    unsigned max_sessions;    /* 0: no limit of its own */
    unsigned max_connections; /* 0: no limit of its own */
} auth_principal;

typedef struct auth_table {
    auth_principal *v; /* the named sections */
    size_t n;
    auth_principal any; /* "*": the defaults unless the file has one */
} auth_table;

/* A table with only the defaults: every principal may create and read in
 * a namespace of its own name. */
void auth_init(auth_table *t);

/*
 * Reads the [principal NAME] sections of a configuration file (the lines
 * before the first section are hauld's options and are skipped). On an
 * error returns -1 with a sentence naming the file and line in err, and
 * leaves t as it was; on success replaces t's contents.
 */
int auth_load(auth_table *t, const char *path, char *err, size_t errlen);

/* The same, from an open stream (left open), with path only naming it in
 * messages. */
int auth_read(auth_table *t, FILE *f, const char *path, char *err, size_t errlen);

void auth_free(auth_table *t);

/* What applies to a principal: its own section, or the "*" section with
 * the namespace root made from the principal's name. */
void auth_lookup(const auth_table *t, const char *principal, auth_principal *out);

/* The right a request needs (enum hsp_op), 0 for one that needs none of
 * them (bench, which stores nothing) but still some right. */
unsigned auth_right_of(int op);

/* "create, read", "none", ... */
void auth_rights_text(unsigned rights, char *buf, size_t size);

/* Trims blanks and a trailing "# comment" (one after a blank, or a whole
 * line) off a line of the configuration file, in place. */
char *config_trim(char *s);

/* Parses "123", "64K", "500M", "2G", "1T" (powers of 1024) into bytes.
 * Returns 0 or -1. */
int auth_parse_size(const char *text, uint64_t *out);

#endif
