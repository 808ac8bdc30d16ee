/*
 * auth.c - the [principal NAME] sections of hauld's configuration file.
 */
#include "hauld/auth.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void auth_init(auth_table *t)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->any.name, sizeof(t->any.name), "*");
    t->any.rights = AUTH_RIGHTS_DEFAULT;
}

void auth_free(auth_table *t)
{
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

char *config_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    /* A comment may follow a value after a space. */
    for (char *c = s; *c; c++)
        if (*c == '#' && (c == s || c[-1] == ' ' || c[-1] == '\t')) {
            *c = '\0';
            return c == s ? s : config_trim(s);
        }
    return s;
}

int auth_parse_size(const char *text, uint64_t *out)
{
    if (!isdigit((unsigned char)text[0]))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno)
        return -1;
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0':
        break;
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case 'T':
        shift = 40;
        break;
    case 'P':
        shift = 50;
        break;
    default:
        return -1;
    }
    if (*end) {
        end++;
        if (*end == 'i' || *end == 'I')
            end++;
        if (*end == 'B' || *end == 'b')
            end++;
        if (*end)
            return -1;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

static int parse_rights(char *text, unsigned *out)
{
    unsigned rights = 0;
    int none = 0;
    for (char *save = NULL, *w = strtok_r(text, ", \t", &save); w;
         w = strtok_r(NULL, ", \t", &save)) {
        if (strcmp(w, "create") == 0)
            rights |= AUTH_CREATE;
        else if (strcmp(w, "read") == 0)
            rights |= AUTH_READ;
        else if (strcmp(w, "delete") == 0)
            rights |= AUTH_DELETE;
        else if (strcmp(w, "all") == 0)
            rights |= AUTH_CREATE | AUTH_READ | AUTH_DELETE;
        else if (strcmp(w, "none") == 0)
            none = 1;
        else
            return -1;
    }
    if (none && rights)
        return -1;
    if (!none && !rights)
        return -1;
    *out = rights;
    return 0;
}

static int parse_count(const char *text, unsigned *out)
{
    if (!isdigit((unsigned char)text[0]))
        return -1;
    errno = 0;
    char *end;
    unsigned long v = strtoul(text, &end, 10);
    if (errno || *end || v > (1ul << 20))
        return -1;
    *out = (unsigned)v;
    return 0;
}

/* A namespace root: a relative path of valid names, no "." or "..". */
static int root_ok(const char *root)
{
    size_t len = strlen(root);
    if (!hsp_path_ok(root, len))
        return 0;
    for (const char *c = root; *c;) {
        const char *slash = strchr(c, '/');
        size_t n = slash ? (size_t)(slash - c) : strlen(c);
        if (!hsp_name_ok(c, n, HSP_NAME_MAX) || c[0] == '.')
            return 0;
        c += n + (slash != NULL);
    }
    return 1;
}

typedef struct parser {
    const char *path;
    unsigned line;
    char *err;
    size_t errlen;
} parser;

static int fail(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(parser *p, const char *fmt, ...)
{
    int n = snprintf(p->err, p->errlen, "%s:%u: ", p->path, p->line);
    if (n >= 0 && (size_t)n < p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Starts a section from its header line "[principal NAME]". */
static int section_start(parser *p, auth_table *t, char *s, auth_principal **cur, int *any_seen)
{
    size_t n = strlen(s);
    if (s[n - 1] != ']')
        return fail(p, "a section header ends with ']'");
    s[n - 1] = '\0';
    char *body = config_trim(s + 1);
    if (strncmp(body, "principal", 9) != 0 || (body[9] != ' ' && body[9] != '\t'))
        return fail(p, "unknown section '[%s]' (hauld knows [principal NAME])", body);
    char *name = config_trim(body + 9);
    if (strcmp(name, "*") == 0) {
        if (*any_seen)
            return fail(p, "a second [principal *] section");
        *any_seen = 1;
        *cur = &t->any;
        return 0;
    }
    if (!hsp_name_ok(name, strlen(name), HSP_NAME_MAX))
        return fail(p, "'%s' is not a principal's name", name);
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].name, name) == 0)
            return fail(p, "a second section for principal '%s'", name);
    auth_principal *v = realloc(t->v, (t->n + 1) * sizeof(*v));
    if (v == NULL)
        return fail(p, "out of memory");
    t->v = v;
    auth_principal *a = &v[t->n++];
    memset(a, 0, sizeof(*a));
    snprintf(a->name, sizeof(a->name), "%s", name);
    a->rights = AUTH_RIGHTS_DEFAULT;
    *cur = a;
    return 0;
}

static int section_key(parser *p, auth_principal *a, char *key, char *value)
{
    for (char *c = key; *c; c++)
        if (*c == '_')
            *c = '-';
    if (*value == '\0')
        return fail(p, "'%s' has no value", key);
    if (strcmp(key, "root") == 0) {
        if (!root_ok(value))
            return fail(p, "root '%s' is not a relative path of plain names below the store",
                        value);
        if (a->name[0] == '*' && strlen(value) > HSP_PATH_MAX - HSP_NAME_MAX - 1)
            return fail(p, "the root of [principal *] is too long");
        snprintf(a->root, sizeof(a->root), "%s", value);
    } else if (strcmp(key, "rights") == 0) {
        if (parse_rights(value, &a->rights) < 0)
            return fail(p, "rights are a list of create, read, delete (or all, or none)");
    } else if (strcmp(key, "quota") == 0) {
        if (strcmp(value, "none") == 0)
            a->quota = 0;
        else if (auth_parse_size(value, &a->quota) < 0 || a->quota == 0)
            return fail(p, "quota wants a size such as 500G, or none, not '%s'", value);
    } else if (strcmp(key, "max-sessions") == 0) {
        if (parse_count(value, &a->max_sessions) < 0)
            return fail(p, "max-sessions wants a number, not '%s'", value);
    } else if (strcmp(key, "max-connections") == 0) {
        if (parse_count(value, &a->max_connections) < 0)
            return fail(p, "max-connections wants a number, not '%s'", value);
    } else {
        return fail(p,
                    "unknown key '%s' in a principal's section (root, rights, quota, "
                    "max-sessions, max-connections)",
                    key);
    }
    return 0;
}

/* 1 when directory b lies strictly below directory a (paths of plain
 * names, as root_ok() checked). */
static int below(const char *a, const char *b)
{
    size_t n = strlen(a);
    return strncmp(a, b, n) == 0 && b[n] == '/';
}

static int has_section(const auth_table *t, const char *name, size_t len)
{
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->v[i].name) == len && memcmp(t->v[i].name, name, len) == 0)
            return 1;
    return 0;
}

/*
 * Namespaces must not nest: a principal whose root held another's
 * namespace would see that one's datasets as its own, and could push
 * into them. Roots that are equal are shared on purpose (a restore
 * principal in a host's namespace) and allowed.
 */
static int roots_apart(const auth_table *t, const char *path, char *err, size_t errlen)
{
    for (size_t i = 0; i < t->n; i++) {
        const char *ri = t->v[i].root[0] ? t->v[i].root : t->v[i].name;
        const char *any = t->any.root;
        if (any[0] && (strcmp(ri, any) == 0 || below(ri, any))) {
            snprintf(err, errlen,
                     "%s: the root %s of principal %s holds the namespaces of [principal *] "
                     "(root %s)",
                     path, ri, t->v[i].name, any);
            return -1;
        }
        /* Nor may it lie inside ANY/P (or P, when [principal *] has no
         * root): the namespace of every principal P without a section,
         * whichever names the certificates carry. */
        const char *rest = any[0] ? (below(any, ri) ? ri + strlen(any) + 1 : NULL) : ri;
        const char *slash = rest ? strchr(rest, '/') : NULL;
        if (slash != NULL && !has_section(t, rest, (size_t)(slash - rest))) {
            snprintf(err, errlen,
                     "%s: the root %s of principal %s lies inside the namespace of principal "
                     "%.*s (%.*s, from [principal *]); give [principal *] a root of its own "
                     "(e.g. root = clients) or %.*s a section",
                     path, ri, t->v[i].name, (int)(slash - rest), rest, (int)(slash - ri), ri,
                     (int)(slash - rest), rest);
            return -1;
        }
        for (size_t j = 0; j < t->n; j++) {
            const char *rj = t->v[j].root[0] ? t->v[j].root : t->v[j].name;
            if (i != j && below(ri, rj)) {
                snprintf(err, errlen,
                         "%s: the namespace of principal %s (%s) lies inside that of principal "
                         "%s (%s)",
                         path, t->v[j].name, rj, t->v[i].name, ri);
                return -1;
            }
        }
    }
    return 0;
}

int auth_load(auth_table *t, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = auth_read(t, f, path, err, errlen);
    fclose(f);
    return rc;
}

int auth_read(auth_table *t, FILE *f, const char *path, char *err, size_t errlen)
{
    parser p = {path, 0, err, errlen};
    auth_table nt;
    auth_init(&nt);
    auth_principal *cur = NULL;
    int any_seen = 0;
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    while (rc == 0 && getline(&line, &cap, f) >= 0) {
        p.line++;
        char *s = config_trim(line);
        if (*s == '\0')
            continue;
        if (*s == '[') {
            rc = section_start(&p, &nt, s, &cur, &any_seen);
            continue;
        }
        if (cur == NULL)
            continue; /* hauld's own options */
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            rc = fail(&p, "expected `key = value`");
            continue;
        }
        *eq = '\0';
        rc = section_key(&p, cur, config_trim(s), config_trim(eq + 1));
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        rc = -1;
    }
    free(line);
    if (rc == 0)
        rc = roots_apart(&nt, path, err, errlen);
    if (rc < 0) {
        auth_free(&nt);
        return -1;
    }
    auth_free(t);
    *t = nt;
    return 0;
}

void auth_lookup(const auth_table *t, const char *principal, auth_principal *out)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].name, principal) == 0) {
            *out = t->v[i];
            if (out->root[0] == '\0')
                snprintf(out->root, sizeof(out->root), "%s", principal);
            return;
        }
    *out = t->any;
    /* auth_load() keeps the "*" root short enough for any name. */
    size_t r = strlen(t->any.root), n = strlen(principal);
    if (r && r + 1 + n < sizeof(out->root)) {
        out->root[r] = '/';
        memcpy(out->root + r + 1, principal, n + 1);
    } else
        snprintf(out->root, sizeof(out->root), "%s", principal);
}

unsigned auth_right_of(int op)
{
    switch (op) {
    case HSP_PUSH:
        return AUTH_CREATE;
    case HSP_PULL:
    case HSP_LIST:
    case HSP_VERIFY:
        return AUTH_READ;
    case HSP_DELETE:
        return AUTH_DELETE;
    default:
        return 0;
    }
}

void auth_rights_text(unsigned rights, char *buf, size_t size)
{
    if (rights == 0) {
        snprintf(buf, size, "none");
        return;
    }
    snprintf(buf, size, "%s%s%s%s%s", rights & AUTH_CREATE ? "create" : "",
             (rights & AUTH_CREATE) && (rights & (AUTH_READ | AUTH_DELETE)) ? ", " : "",
             rights & AUTH_READ ? "read" : "",
             (rights & AUTH_READ) && (rights & AUTH_DELETE) ? ", " : "",
             rights & AUTH_DELETE ? "delete" : "");
}
