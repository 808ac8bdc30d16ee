/*
 * store.c - choosing a store from its spec, and what every store shares:
 * the sentences of its errors and its lists of names.
 */
#include "store/store.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int store_fail(store_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof(err->text), fmt, ap);
    va_end(ap);
    return code > 0 ? -code : code < 0 ? code : -EIO;
}

const char *store_strerror(int code)
{
    if (code < 0)
        code = -code;
    switch (code) {
    case ENOSPC:
        return "no space left on the store";
    case EDQUOT:
        return "the store's disk quota is exhausted";
    case EROFS:
        return "the store is read-only";
    case EIO:
        return "input/output error on the store";
    case ENOLCK:
        return "the dataset's lock was lost (another server may have taken it)";
    case ETIMEDOUT:
        return "the store did not answer in time";
    default:
        return strerror(code);
    }
}

void store_names_free(store_names *names)
{
    for (size_t i = 0; i < names->n; i++)
        free(names->v[i]);
    free(names->v);
    memset(names, 0, sizeof(*names));
}

/* The stores hauld knows, by the prefix of their spec. */
static const struct {
    const char *prefix;
    const store_ops *ops;
} stores[] = {
    {"fs:", &store_fs_ops},
#ifdef HAUL_HAVE_RADOS
    {"rados:", &store_rados_ops},
#endif
};

int store_open(const char *spec, const store_options *opt, store **out, store_err *err)
{
    static const store_options defaults;
    if (opt == NULL)
        opt = &defaults;
    *out = NULL;
    for (size_t i = 0; i < sizeof(stores) / sizeof(stores[0]); i++) {
        size_t n = strlen(stores[i].prefix);
        if (strncmp(spec, stores[i].prefix, n) == 0) {
            if (spec[n] == '\0')
                return store_fail(err, EINVAL, "the store %s names nothing after %s", spec,
                                  stores[i].prefix);
            return stores[i].ops->open(spec + n, opt, out, err);
        }
    }
    if (strncmp(spec, "rados:", 6) == 0)
        return store_fail(err, ENOTSUP,
                          "this hauld was built without RADOS, so it cannot use the store %s "
                          "(build it where librados-dev is installed)",
                          spec);
    /* Anything else is a directory. */
    return store_fs_ops.open(spec, opt, out, err);
}

void store_close(store *s)
{
    if (s)
        s->ops->close(s);
}
