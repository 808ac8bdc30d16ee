/*
 * select.h - what haul push leaves out of a snapshot: --exclude PATTERN
 * (repeatable), --exclude-from FILE, --exclude-caches and
 * --one-file-system. The rules are documented in docs/usage.md
 * ("Leaving paths out") and haul(1).
 *
 * The walker asks about every entry, a directory before what it holds;
 * a directory left out is not entered, so nothing below it is asked
 * about. Everything runs on the thread that walks; a cli_select is not
 * shared between threads.
 */
#ifndef HAUL_CLI_SELECT_H
#define HAUL_CLI_SELECT_H

#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "cli/client.h"

/* The signature a CACHEDIR.TAG file starts with (https://bford.info/cachedir/). */
#define CLI_CACHEDIR_TAG "CACHEDIR.TAG"
#define CLI_CACHEDIR_SIGNATURE "Signature: 8a477f597d28d172789f06886806bc55"

/* The longest pattern accepted, in bytes (after its trailing '/' and
 * leading '/' are taken off). */
#define CLI_SELECT_PATTERN_MAX 8192

/* What cli_select_skip() answers. */
enum {
    CLI_SELECT_KEEP = 0, /* the entry goes into the snapshot (a directory is entered) */
    CLI_SELECT_OUT = 1,  /* the entry is left out, with everything below it */
    /* A directory on another file system under --one-file-system: its
     * entry goes into the snapshot, empty, and it is not entered (as rsync
     * -x keeps mount points). A walker that only tests for nonzero and
     * leaves it out altogether is off by that one entry. */
    CLI_SELECT_EMPTY = 2,
};

typedef struct cli_select cli_select;

/*
 * From the options: --exclude (repeatable), --exclude-from FILE,
 * --exclude-caches, --one-file-system. root is the source directory as
 * given (for messages), root_dev the st_dev of its lstat. NULL *out when
 * nothing selects. Returns 0 or an errno, with a message in why: ENOENT
 * (or another errno of open/read) for an --exclude-from file that cannot
 * be read, EINVAL for a pattern that can never match (empty, "/", or
 * longer than CLI_SELECT_PATTERN_MAX), ENOMEM. The caller owns *out and
 * frees it with cli_select_free().
 */
int cli_select_new(const cli_options *opt, const char *root, dev_t root_dev, cli_select **out,
                   char *why, size_t why_len);

/*
 * Whether the entry at `rel` (relative to the source root, '/'
 * separated, no leading '/', rel_len bytes, not necessarily
 * NUL-terminated), of lstat `st`, is left out: CLI_SELECT_KEEP,
 * CLI_SELECT_OUT or CLI_SELECT_EMPTY. For a directory, `dirfd` is the
 * open directory (for CACHEDIR.TAG) or -1 (then no tag is looked for);
 * it stays the caller's. s may be NULL (nothing is left out).
 */
int cli_select_skip(cli_select *s, const char *rel, size_t rel_len, const struct stat *st,
                    int dirfd);

/* Frees s (NULL is fine). */
void cli_select_free(cli_select *s);

#endif
