/*
 * select.c - the exclusion rules of haul push (select.h).
 *
 * A pattern is cut at '/' into components; each component is matched
 * against one component of the path with fnmatch(3) (no flags: `*`, `?`
 * and `[...]` stay within the component, match a leading '.', and a
 * backslash quotes the next character). A component that is exactly `**`
 * matches any number of path components. A pattern not anchored with a
 * leading '/' may match at any depth, as if it began with `**`. The rules
 * as users read them are in docs/usage.md, "Leaving paths out".
 *
 * Matching is the greedy walk with one backtracking point that classic
 * wildcard matchers use for `*`, here over components, so a path of n
 * components against a pattern of k costs at most n * k fnmatch calls
 * whatever the number of `**`.
 */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/select.h"

typedef struct pattern {
    char *buf;          /* the components, each NUL-terminated */
    const char **comps; /* into buf */
    size_t n;
    int anchored; /* a leading '/': matched from the source root only */
    int dir_only; /* a trailing '/': matches directories only */
    int globstar; /* has a `**` component */
} pattern;

struct cli_select {
    pattern *pats;
    size_t npats, cap;
    int caches;
    int one_fs;
    dev_t root_dev;
    /* The path being asked about, cut into components. */
    char *path;
    const char **comps;
    size_t path_cap;
};

static int is_globstar(const char *comp)
{
    return comp[0] == '*' && comp[1] == '*' && comp[2] == '\0';
}

/*
 * Adds one pattern of len bytes; origin says where it came from in a
 * message ("--exclude" or "FILE:LINE"). Returns 0 or an errno.
 */
static int add_pattern(cli_select *s, const char *text, size_t len, const char *origin, char *why,
                       size_t why_len)
{
    pattern pt = {0};
    if (memchr(text, '\0', len)) {
        snprintf(why, why_len, "%s: a pattern cannot hold a NUL byte", origin);
        return EINVAL;
    }
    while (len && text[len - 1] == '/') {
        pt.dir_only = 1;
        len--;
    }
    while (len && text[0] == '/') {
        pt.anchored = 1;
        text++;
        len--;
    }
    if (len == 0) {
        snprintf(why, why_len, "%s: an empty pattern (or '/') leaves out nothing that can be named",
                 origin);
        return EINVAL;
    }
    if (len > CLI_SELECT_PATTERN_MAX) {
        snprintf(why, why_len, "%s: a pattern is at most %u bytes", origin,
                 (unsigned)CLI_SELECT_PATTERN_MAX);
        return EINVAL;
    }
    if (s->npats == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        pattern *pats = realloc(s->pats, cap * sizeof(*pats));
        if (pats == NULL)
            goto nomem;
        s->pats = pats;
        s->cap = cap;
    }
    /* Room for a `*` component more (a trailing `**`, below). */
    pt.buf = malloc(len + 3);
    pt.comps = malloc((len / 2 + 3) * sizeof(*pt.comps));
    if (pt.buf == NULL || pt.comps == NULL)
        goto nomem;
    memcpy(pt.buf, text, len);
    pt.buf[len] = '\0';
    for (char *c = pt.buf; c < pt.buf + len;) {
        char *slash = memchr(c, '/', (size_t)(pt.buf + len - c));
        if (slash)
            *slash = '\0';
        /* Empty components (a//b) are nothing: paths have none. */
        if (*c)
            pt.comps[pt.n++] = c;
        c = slash ? slash + 1 : pt.buf + len;
    }
    /* A trailing `**` matches what is below a directory, not the
     * directory itself (as in rsync and .gitignore), which stays, empty.
     * So it reads as one component of any name followed by `**`. */
    if (is_globstar(pt.comps[pt.n - 1])) {
        char *star = pt.buf + len + 1;
        star[0] = '*';
        star[1] = '\0';
        pt.comps[pt.n - 1] = star;
        pt.comps[pt.n++] = "**";
    }
    for (size_t i = 0; i < pt.n; i++)
        if (is_globstar(pt.comps[i]))
            pt.globstar = 1;
    s->pats[s->npats++] = pt;
    return 0;
nomem:
    free(pt.buf);
    free(pt.comps);
    snprintf(why, why_len, "out of memory");
    return ENOMEM;
}

/* Reads an --exclude-from file ("-": standard input): one pattern a
 * line; blank lines and lines whose first non-blank character is '#' are
 * comments. Blanks around a pattern are dropped (a name with one at
 * either end is written with `[ ]`). */
static int read_patterns(cli_select *s, const char *file, char *why, size_t why_len)
{
    int is_stdin = strcmp(file, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(file, "re");
    if (f == NULL) {
        int err = errno;
        snprintf(why, why_len, "--exclude-from %s: %s", file, strerror(err));
        return err;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    unsigned long lineno = 0;
    int rc = 0;
    errno = 0;
    while (rc == 0 && (got = getline(&line, &cap, f)) >= 0) {
        lineno++;
        size_t len = (size_t)got;
        const char *t = line;
        while (len && (t[len - 1] == '\n' || t[len - 1] == '\r' || t[len - 1] == ' ' ||
                       t[len - 1] == '\t'))
            len--;
        while (len && (t[0] == ' ' || t[0] == '\t')) {
            t++;
            len--;
        }
        if (len == 0 || t[0] == '#')
            continue;
        char origin[300];
        snprintf(origin, sizeof(origin), "--exclude-from %.256s:%lu", file, lineno);
        rc = add_pattern(s, t, len, origin, why, why_len);
        errno = 0;
    }
    if (rc == 0 && ferror(f)) {
        rc = errno ? errno : EIO;
        snprintf(why, why_len, "--exclude-from %s: %s", file, strerror(rc));
    }
    free(line);
    if (!is_stdin)
        fclose(f);
    return rc;
}

int cli_select_new(const cli_options *opt, const char *root, dev_t root_dev, cli_select **out,
                   char *why, size_t why_len)
{
    (void)root;
    *out = NULL;
    if (opt->n_excludes == 0 && opt->n_exclude_files == 0 && !opt->exclude_caches &&
        !opt->one_file_system)
        return 0;
    cli_select *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(why, why_len, "out of memory");
        return ENOMEM;
    }
    s->caches = opt->exclude_caches;
    s->one_fs = opt->one_file_system;
    s->root_dev = root_dev;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < opt->n_excludes; i++)
        rc = add_pattern(s, opt->excludes[i], strlen(opt->excludes[i]), "--exclude", why, why_len);
    for (size_t i = 0; rc == 0 && i < opt->n_exclude_files; i++)
        rc = read_patterns(s, opt->exclude_files[i], why, why_len);
    if (rc != 0) {
        cli_select_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

static int comp_match(const char *pat, const char *name)
{
    return fnmatch(pat, name, 0) == 0;
}

/* Whether the pattern matches the whole path of n components. */
static int pattern_match(const pattern *pt, const char *const *path, size_t n)
{
    const char *const *pc = pt->comps;
    size_t k = pt->n;
    if (!pt->globstar) {
        /* The common case: the pattern covers the last k components. */
        if (n < k || (pt->anchored && n != k))
            return 0;
        for (size_t i = 0; i < k; i++)
            if (!comp_match(pc[i], path[n - k + i]))
                return 0;
        return 1;
    }
    /* pi, ti: where pattern and path are; back_p, back_t: the pattern
     * position after the last `**` and the path position it was tried
     * from. An unanchored pattern starts as if after a `**`. */
    const size_t none = (size_t)-1;
    size_t pi = 0, ti = 0;
    size_t back_p = pt->anchored ? none : 0, back_t = 0;
    while (ti < n) {
        if (pi < k && is_globstar(pc[pi])) {
            back_p = ++pi;
            back_t = ti;
            continue;
        }
        if (pi < k && comp_match(pc[pi], path[ti])) {
            pi++;
            ti++;
            continue;
        }
        if (back_p == none)
            return 0;
        /* Let the last `**` take one component more. */
        pi = back_p;
        ti = ++back_t;
    }
    while (pi < k && is_globstar(pc[pi]))
        pi++;
    return pi == k;
}

/* Whether the open directory holds a CACHEDIR.TAG that starts with the
 * signature. Only a regular file counts (never followed, never a FIFO
 * or a device, which reading could block on or disturb). */
static int has_cache_tag(int dirfd)
{
    struct stat st;
    if (fstatat(dirfd, CLI_CACHEDIR_TAG, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
        return 0;
    int fd = openat(dirfd, CLI_CACHEDIR_TAG, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char sig[sizeof(CLI_CACHEDIR_SIGNATURE) - 1];
    size_t got = 0;
    while (got < sizeof(sig)) {
        ssize_t r = read(fd, sig + got, sizeof(sig) - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    return got == sizeof(sig) && memcmp(sig, CLI_CACHEDIR_SIGNATURE, sizeof(sig)) == 0;
}

/* Cuts rel into components in s->comps; the count, or 0 without memory
 * (the path is then kept: leaving out more than asked would lose data). */
static size_t split_path(cli_select *s, const char *rel, size_t rel_len)
{
    if (rel_len + 1 > s->path_cap) {
        size_t cap = rel_len + 1 < 4096 ? 4096 : rel_len + 1;
        char *path = malloc(cap);
        const char **comps = malloc((cap / 2 + 1) * sizeof(*comps));
        if (path == NULL || comps == NULL) {
            free(path);
            free(comps);
            return 0;
        }
        free(s->path);
        free(s->comps);
        s->path = path;
        s->comps = comps;
        s->path_cap = cap;
    }
    memcpy(s->path, rel, rel_len);
    s->path[rel_len] = '\0';
    size_t n = 0;
    for (char *c = s->path; c < s->path + rel_len;) {
        char *slash = memchr(c, '/', (size_t)(s->path + rel_len - c));
        if (slash)
            *slash = '\0';
        if (*c)
            s->comps[n++] = c;
        c = slash ? slash + 1 : s->path + rel_len;
    }
    return n;
}

int cli_select_skip(cli_select *s, const char *rel, size_t rel_len, const struct stat *st,
                    int dirfd)
{
    if (s == NULL)
        return CLI_SELECT_KEEP;
    int dir = S_ISDIR(st->st_mode);
    if (s->npats) {
        size_t n = split_path(s, rel, rel_len);
        for (size_t i = 0; n && i < s->npats; i++) {
            const pattern *pt = &s->pats[i];
            if ((!pt->dir_only || dir) && pattern_match(pt, s->comps, n))
                return CLI_SELECT_OUT;
        }
    }
    if (s->caches && dir && dirfd >= 0 && has_cache_tag(dirfd))
        return CLI_SELECT_OUT;
    /* Only a directory can tell a file system boundary: on overlayfs (a
     * container's root) a regular file reports the st_dev of the layer
     * it lives in, not the overlay's, and would be left out with every
     * other file. rsync -x and tar --one-file-system look at directories
     * only too. */
    if (s->one_fs && dir && st->st_dev != s->root_dev)
        return CLI_SELECT_EMPTY;
    return CLI_SELECT_KEEP;
}

void cli_select_free(cli_select *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->npats; i++) {
        free(s->pats[i].buf);
        free(s->pats[i].comps);
    }
    free(s->pats);
    free(s->path);
    free(s->comps);
    free(s);
}
