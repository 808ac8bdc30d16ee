/*
 * rados.c - hauld's store on Ceph RADOS (librados, the C API): several
 * hauld, one cluster. The interface is store.h's; docs/rados.md says how
 * to run it and what it promises.
 *
 * The layout. Every object of a dataset is named below one prefix,
 * "haul/NS/DATASET/" (NS the principal's namespace root, which may hold
 * '/'; a dataset name holds none, so no two datasets' names collide):
 *
 *   haul/NS/.datasets          omap: one key per dataset of the namespace
 *   haul/NS/DATASET/h          the dataset's head: its lock ("haul.push"),
 *                              and in its omap the snapshot index
 *                              ("s.ID" -> the snapshot's record), the
 *                              staging in progress ("stage" -> TOKEN, and
 *                              "stage.prev" -> the token it resumed), the
 *                              bytes of content the snapshots hold
 *                              ("usage"), and deletes to finish ("gc.TOKEN")
 *   haul/NS/DATASET/m.TOKEN.N  the log of push TOKEN, in parts of at most
 *                              4 MiB: its entries as they became part of
 *                              the snapshot, and the files it began. Once
 *                              committed it is the snapshot's manifest.
 *   haul/NS/DATASET/d.REF.K    stripe K of the file content named REF
 *                              (TOKEN.SEQ of the push that wrote it):
 *                              bytes [K * stripe, (K + 1) * stripe); or,
 *                              for a pack, small files one after the
 *                              other in d.REF.0 (a file names its offset)
 *
 * A snapshot is visible once one write operation on the head sets its
 * index key; that operation also asserts the push's lock (cls_lock's
 * assert_locked), so a server whose lease ran out never commits. Before
 * it, every data object and the whole log were written and acknowledged.
 *
 * Sharing. An unchanged file's entry in the new manifest names the REF
 * of the previous snapshot's: no data is copied. Files are referenced,
 * not content-addressed: a push learns a file's hash only at its end, and
 * RADOS cannot rename an object, so a content address would cost a copy
 * of every new file. Since a push shares only with the latest snapshot,
 * the snapshots that hold one REF always follow each other: deleting a
 * snapshot frees exactly the REFs that neither its older nor its newer
 * neighbour (nor the staging) holds, which three manifests tell, without
 * reference counts to keep right across crashes.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <rados/librados.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <xxhash.h>

#include "core/le.h"
#include "haul.h"
#include "store/store.h"

/* ---- bounds and defaults ------------------------------------------------------------ */

/* File content goes into objects of this size (rados:POOL,stripe=BYTES). */
#define STRIPE_DEFAULT (4u << 20)
#define STRIPE_MIN (64u << 10)
#define STRIPE_MAX (64u << 20)
/* Writes in flight per push (rados:POOL,inflight=N): many, for small
 * files; the bytes they hold are bounded apart (rados:POOL,inflight_mib=M,
 * default 16 stripes), for large ones. */
#define INFLIGHT_DEFAULT 64
#define INFLIGHT_MAX 256
/* A dataset lock's lease, and how long one RADOS operation may take. */
#define LEASE_DEFAULT 30
#define OP_TIMEOUT_DEFAULT 30
/* A log part is at most this big; records never span two parts. */
#define LOG_PART_MAX (4u << 20)
/* The log is written when this much of it is buffered. */
#define LOG_FLUSH (256u << 10)
/* Object names: the prefix, a REF and a stripe number fit easily. */
#define OID_MAX 1400
/* A REF: 16 hex digits of token, '.', up to 16 of sequence. */
#define REF_MAX 40
#define TOKEN_LEN 16
#define LOCK_NAME "haul.push"

/* ---- the store -------------------------------------------------------------------------- */

typedef struct rstore {
    store base;
    rados_t cluster;
    rados_ioctx_t io;
    char pool[256];
    uint64_t stripe;
    unsigned inflight;
    uint64_t inflight_bytes; /* 0: 16 stripes */
    unsigned lease_s, op_timeout_s;
    void (*log)(void *arg, int level, const char *text);
    void *log_arg;
    /* Lock renewal threads still running (they may outlive their lock by
     * one renewal); close waits for them. */
    pthread_mutex_t mu;
    pthread_cond_t idle;
    unsigned renewers;
} rstore;

static void slog(rstore *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void slog(rstore *s, int level, const char *fmt, ...)
{
    if (s->log == NULL)
        return;
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    s->log(s->log_arg, level, text);
}

/*
 * A failed librados call as a sentence. A timeout names the bound that
 * ended it, since that is what an administrator looks for: an OSD or a
 * monitor that does not answer.
 */
static int rfail(rstore *s, store_err *err, int rc, const char *what)
{
    int code = rc < 0 ? -rc : EIO;
    if (code == ETIMEDOUT)
        return store_fail(err, ETIMEDOUT,
                          "%s: the Ceph cluster did not answer within %u s "
                          "(rados_osd_op_timeout; is an OSD down, or the cluster full?)",
                          what, s->op_timeout_s);
    if (code == ENOSPC || code == EDQUOT)
        return store_fail(err, code, "%s: the pool %s is full", what, s->pool);
    return store_fail(err, code, "%s: %s (RADOS pool %s)", what, store_strerror(code), s->pool);
}

/* ---- names ------------------------------------------------------------------------------- */

/* Formats an object name; fails (-ENAMETOOLONG) when it does not fit. */
static int oidf(char out[OID_MAX], const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int oidf(char out[OID_MAX], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, OID_MAX, fmt, ap);
    va_end(ap);
    return n < 0 || n >= OID_MAX ? -ENAMETOOLONG : 0;
}

/* A dataset's names: its prefix and head object. */
typedef struct rnames {
    char prefix[OID_MAX];
    char head[OID_MAX];
    char list[OID_MAX]; /* the namespace's list of datasets */
    char name[HSP_NAME_MAX + 1];
} rnames;

static int names_of(const store_dataset *ds, rnames *n, store_err *err)
{
    if (oidf(n->prefix, "haul/%s/%s/", ds->ns, ds->name) != 0 ||
        oidf(n->head, "%sh", n->prefix) != 0 || oidf(n->list, "haul/%s/.datasets", ds->ns) != 0 ||
        strlen(ds->name) > HSP_NAME_MAX)
        return store_fail(err, ENAMETOOLONG, "the namespace %s is too long for RADOS", ds->ns);
    snprintf(n->name, sizeof(n->name), "%s", ds->name);
    return 0;
}

static int data_oid(char out[OID_MAX], const char *prefix, const char *ref, uint64_t stripe_no)
{
    return oidf(out, "%sd.%s.%" PRIu64, prefix, ref, stripe_no);
}

static int log_oid(char out[OID_MAX], const char *prefix, const char *token, uint32_t part)
{
    return oidf(out, "%sm.%s.%" PRIu32, prefix, token, part);
}

static void random_token(char out[TOKEN_LEN + 1])
{
    uint8_t b[TOKEN_LEN / 2];
    size_t got = 0;
    while (got < sizeof(b)) {
        ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
        if (n <= 0) {
            /* getrandom() does not fail on Linux ≥ 3.17 once the pool is
             * ready; the time and the address mix in as a last resort. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t v = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uintptr_t)out;
            memcpy(b, &v, sizeof(b));
            break;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof(b); i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* ---- snapshot ids --------------------------------------------------------------------- */

/* An id as hauld makes them: YYYYMMDDTHHMMSSZ, then -N (N ≥ 2). */
static int id_ok(const char *id)
{
    size_t len = strlen(id);
    if (len < 16)
        return 0;
    for (int i = 0; i < 16; i++) {
        char c = id[i];
        if (i == 8 ? c != 'T' : i == 15 ? c != 'Z' : (c < '0' || c > '9'))
            return 0;
    }
    if (len == 16)
        return 1;
    if (id[16] != '-' || len > 16 + 10 || len == 17)
        return 0;
    for (size_t i = 17; i < len; i++)
        if (id[i] < '0' || id[i] > '9')
            return 0;
    return id[17] != '0';
}

static unsigned long id_number(const char *id)
{
    return id[16] == '-' ? strtoul(id + 17, NULL, 10) : 1;
}

/* By time, then by number. */
static int id_cmp(const char *a, const char *b)
{
    int c = strncmp(a, b, 16);
    if (c != 0)
        return c;
    unsigned long na = id_number(a), nb = id_number(b);
    return na < nb ? -1 : na > nb;
}

static int id_cmp_p(const void *a, const void *b)
{
    return id_cmp(*(char *const *)a, *(char *const *)b);
}

static int name_cmp_p(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int names_add(store_names *n, const char *name, size_t len)
{
    if (n->n == n->cap) {
        size_t cap = n->cap ? 2 * n->cap : 16;
        char **v = realloc(n->v, cap * sizeof(*v));
        if (v == NULL)
            return -ENOMEM;
        n->v = v;
        n->cap = cap;
    }
    char *copy = strndup(name, len);
    if (copy == NULL)
        return -ENOMEM;
    n->v[n->n++] = copy;
    return 0;
}

/* ---- the snapshot record (the value of "s.ID") ------------------------------------------- */

/* time i64, files u64, bytes u64, log length u64, parts u32, token. */
#define SNAPREC_LEN (8 + 8 + 8 + 8 + 4 + TOKEN_LEN)

typedef struct snaprec {
    char id[HSP_SNAPSHOT_MAX + 1];
    int64_t time;
    uint64_t files, bytes, log_len;
    uint32_t parts;
    char token[TOKEN_LEN + 1];
} snaprec;

static void snaprec_encode(const snaprec *r, uint8_t out[SNAPREC_LEN])
{
    haul__put64(out, (uint64_t)r->time);
    haul__put64(out + 8, r->files);
    haul__put64(out + 16, r->bytes);
    haul__put64(out + 24, r->log_len);
    haul__put32(out + 32, r->parts);
    memcpy(out + 36, r->token, TOKEN_LEN);
}

static int snaprec_decode(const char *id, const char *val, size_t len, snaprec *r)
{
    if (len != SNAPREC_LEN || strlen(id) > HSP_SNAPSHOT_MAX)
        return -1;
    const uint8_t *p = (const uint8_t *)val;
    snprintf(r->id, sizeof(r->id), "%.*s", HSP_SNAPSHOT_MAX, id);
    r->time = (int64_t)haul__get64(p);
    r->files = haul__get64(p + 8);
    r->bytes = haul__get64(p + 16);
    r->log_len = haul__get64(p + 24);
    r->parts = haul__get32(p + 32);
    memcpy(r->token, p + 36, TOKEN_LEN);
    r->token[TOKEN_LEN] = '\0';
    return 0;
}

/* ---- the head's omap, read whole -------------------------------------------------------- */

/* What a dataset's head holds: its snapshots (sorted, oldest first), its
 * staging tokens, its usage and the deletes left to finish. */
typedef struct head {
    snaprec *snaps;
    size_t n, cap;
    char stage[TOKEN_LEN + 1];      /* "" when no push is staged */
    char stage_prev[TOKEN_LEN + 1]; /* the staging that one resumed */
    uint64_t usage;
    store_names gc; /* "gc.TOKEN" keys: "TOKEN ID" */
} rhead;

static void head_free(rhead *h)
{
    free(h->snaps);
    store_names_free(&h->gc);
    memset(h, 0, sizeof(*h));
}

static int snaprec_cmp_p(const void *a, const void *b)
{
    return id_cmp(((const snaprec *)a)->id, ((const snaprec *)b)->id);
}

/* Reads the head of a dataset: -ENOENT when it does not exist. */
static int head_read(rstore *s, const char *oid, rhead *h, store_err *err)
{
    memset(h, 0, sizeof(*h));
    char after[512] = "";
    for (;;) {
        rados_read_op_t op = rados_create_read_op();
        if (op == NULL)
            return store_fail(err, ENOMEM, "reading the snapshot index: out of memory");
        rados_omap_iter_t it = NULL;
        unsigned char more = 0;
        int prval = 0;
        rados_read_op_omap_get_vals2(op, after, "", 1000, &it, &more, &prval);
        int rc = rados_read_op_operate(op, s->io, oid, 0);
        if (rc == 0 && prval < 0)
            rc = prval;
        if (rc < 0) {
            if (it != NULL)
                rados_omap_get_end(it);
            rados_release_read_op(op);
            head_free(h);
            if (rc == -ENOENT)
                return -ENOENT;
            return rfail(s, err, rc, "reading the snapshot index");
        }
        char *key, *val;
        size_t klen, vlen;
        int bad = 0;
        while (rados_omap_get_next2(it, &key, &val, &klen, &vlen) == 0 && key != NULL) {
            char k[512];
            if (klen >= sizeof(k))
                continue;
            memcpy(k, key, klen);
            k[klen] = '\0';
            snprintf(after, sizeof(after), "%s", k);
            if (strncmp(k, "s.", 2) == 0) {
                if (h->n == h->cap) {
                    size_t cap = h->cap ? 2 * h->cap : 16;
                    snaprec *v = realloc(h->snaps, cap * sizeof(*v));
                    if (v == NULL) {
                        bad = -ENOMEM;
                        break;
                    }
                    h->snaps = v;
                    h->cap = cap;
                }
                if (id_ok(k + 2) && snaprec_decode(k + 2, val, vlen, &h->snaps[h->n]) == 0)
                    h->n++;
            } else if (strcmp(k, "stage") == 0 && vlen == TOKEN_LEN) {
                memcpy(h->stage, val, TOKEN_LEN);
            } else if (strcmp(k, "stage.prev") == 0 && vlen == TOKEN_LEN) {
                memcpy(h->stage_prev, val, TOKEN_LEN);
            } else if (strcmp(k, "usage") == 0 && vlen == 8) {
                h->usage = haul__get64((const uint8_t *)val);
            } else if (strncmp(k, "gc.", 3) == 0 && vlen > 0 && vlen < 128) {
                if (names_add(&h->gc, val, vlen) != 0) {
                    bad = -ENOMEM;
                    break;
                }
            }
        }
        rados_omap_get_end(it);
        rados_release_read_op(op);
        if (bad) {
            head_free(h);
            return store_fail(err, ENOMEM, "reading the snapshot index: out of memory");
        }
        if (!more)
            break;
    }
    if (h->n > 1)
        qsort(h->snaps, h->n, sizeof(*h->snaps), snaprec_cmp_p);
    return 0;
}

/* The snapshot named id ("" for the latest), or NULL. */
static const snaprec *head_find(const rhead *h, const char *id)
{
    if (id[0] == '\0')
        return h->n ? &h->snaps[h->n - 1] : NULL;
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->snaps[i].id, id) == 0)
            return &h->snaps[i];
    return NULL;
}

/* Reads the head of dataset ds and finds snapshot id in it: 0 with *h
 * read (the caller frees it) and *r pointing into it, or -errno with
 * nothing to free. */
static int snapshot_find(rstore *s, const store_dataset *ds, const char *id, rnames *n, rhead *h,
                         const snaprec **r, store_err *err)
{
    *r = NULL;
    int rc = names_of(ds, n, err);
    if (rc != 0)
        return rc;
    rc = head_read(s, n->head, h, err);
    if (rc == -ENOENT)
        return store_fail(err, ENOENT, "no dataset %s", ds->name);
    if (rc != 0)
        return rc;
    *r = head_find(h, id);
    if (*r == NULL) {
        head_free(h);
        /* The literal return tells the optimiser that *r is set on success. */
        store_fail(err, ENOENT, "no snapshot %s", id[0] ? id : "(none yet)");
        return -ENOENT;
    }
    return 0;
}

/* What store_info says of a snapshot of the index. */
static void snapshot_info_of(const snaprec *r, store_info *info)
{
    memset(info, 0, sizeof(*info));
    _Static_assert(sizeof(info->id) == sizeof(r->id), "snapshot ids have one size");
    size_t n = strnlen(r->id, sizeof(r->id) - 1);
    memcpy(info->id, r->id, n);
    info->id[n] = '\0';
    info->time = r->time;
    info->files = r->files;
    info->bytes = r->bytes;
}

/* ---- the lock's fence ---------------------------------------------------------------------- */

/* The input of cls_lock's assert_locked: ENCODE_START(1, 1) (version,
 * compat, length u32), then name, type (1: exclusive), cookie and tag, each
 * string as a u32 length and its bytes. */
static size_t lock_assert_encode(uint8_t *out, const char *name, const char *cookie)
{
    size_t nl = strlen(name), cl = strlen(cookie);
    size_t body = 4 + nl + 1 + 4 + cl + 4;
    uint8_t *p = out;
    *p++ = 1;
    *p++ = 1;
    haul__put32(p, (uint32_t)body);
    p += 4;
    haul__put32(p, (uint32_t)nl);
    memcpy(p + 4, name, nl);
    p += 4 + nl;
    *p++ = 1;
    haul__put32(p, (uint32_t)cl);
    memcpy(p + 4, cookie, cl);
    p += 4 + cl;
    haul__put32(p, 0);
    p += 4;
    return (size_t)(p - out);
}

/* ---- the lock ------------------------------------------------------------------------------ */

typedef struct rlock {
    store_lock base;
    rstore *s;
    rnames names;
    char ns[OID_MAX];
    char cookie[TOKEN_LEN + 1];
    uint8_t fence[128];
    size_t fence_len;

    pthread_t renewer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int lost;                /* under mu */
    int troubled;            /* under mu: an operation timed out */
    int refs;                /* under mu: the holder and the renewal thread */
    struct timespec renewed; /* CLOCK_MONOTONIC of the last renewal */
} rlock;

/* Drops a reference to a lock; the last one frees it. */
static void lock_put(rlock *l)
{
    pthread_mutex_lock(&l->mu);
    int last = --l->refs == 0;
    pthread_mutex_unlock(&l->mu);
    if (last) {
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        free(l);
    }
}

static double mono_since(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) / 1e9;
}

/*
 * Renews the lease every third of it. A renewal the cluster refuses
 * (another server broke the lock, or took it after it expired) loses the
 * lock at once; one that fails otherwise (a timeout) loses it once a whole
 * lease has gone by since the last success, as the cluster sees it then.
 */
static void *lock_renew(void *arg)
{
    rlock *l = arg;
    rstore *s = l->s;
    pthread_mutex_lock(&l->mu);
    while (!l->stop && !l->lost) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t ns = (uint64_t)s->lease_s * 1000000000ull / 3;
        until.tv_sec += (time_t)(ns / 1000000000ull);
        until.tv_nsec += (long)(ns % 1000000000ull);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!l->stop && pthread_cond_timedwait(&l->cv, &l->mu, &until) != ETIMEDOUT) {
        }
        if (l->stop)
            break;
        pthread_mutex_unlock(&l->mu);
        struct timeval lease = {.tv_sec = (time_t)s->lease_s};
        int rc = rados_lock_exclusive(s->io, l->names.head, LOCK_NAME, l->cookie, "hauld push",
                                      &lease, LIBRADOS_LOCK_FLAG_MUST_RENEW);
        pthread_mutex_lock(&l->mu);
        if (rc == -ETIMEDOUT)
            l->troubled = 1;
        if (rc == 0) {
            clock_gettime(CLOCK_MONOTONIC, &l->renewed);
        } else if (rc == -ENOENT || rc == -EBUSY) {
            l->lost = 1;
            slog(s, HAUL_LOG_WARN, "rados: the lock of dataset %s was taken by another server",
                 l->names.name);
        } else if (mono_since(&l->renewed) >= (double)s->lease_s) {
            l->lost = 1;
            slog(s, HAUL_LOG_WARN,
                 "rados: the lock of dataset %s could not be renewed for %u s (%s): lost",
                 l->names.name, s->lease_s, strerror(-rc));
        } else {
            slog(s, HAUL_LOG_WARN, "rados: renewing the lock of dataset %s: %s", l->names.name,
                 strerror(-rc));
        }
    }
    pthread_mutex_unlock(&l->mu);
    lock_put(l);
    pthread_mutex_lock(&s->mu);
    if (--s->renewers == 0)
        pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int lock_lost(rlock *l)
{
    pthread_mutex_lock(&l->mu);
    int lost = l->lost;
    pthread_mutex_unlock(&l->mu);
    return lost;
}

static int lost_fail(rlock *l, store_err *err)
{
    return store_fail(err, ENOLCK,
                      "the lock of dataset %s was lost (its lease ran out, or another "
                      "server took the dataset over)",
                      l->names.name);
}

/* Breaks every holder's lock of a head (a take-over). */
static int lock_break_all(rstore *s, const char *head)
{
    char tag[256], clients[4096], cookies[4096], addrs[4096];
    size_t tl = sizeof(tag), cl = sizeof(clients), kl = sizeof(cookies), al = sizeof(addrs);
    int exclusive = 0;
    ssize_t n = rados_list_lockers(s->io, head, LOCK_NAME, &exclusive, tag, &tl, clients, &cl,
                                   cookies, &kl, addrs, &al);
    if (n < 0)
        return (int)n;
    const char *c = clients, *k = cookies;
    for (ssize_t i = 0; i < n; i++) {
        int rc = rados_break_lock(s->io, head, LOCK_NAME, c, k);
        if (rc < 0 && rc != -ENOENT)
            return rc;
        slog(s, HAUL_LOG_WARN, "rados: broke the lock of %s held by %s", head, c);
        c += strlen(c) + 1;
        k += strlen(k) + 1;
    }
    return 0;
}

static int r_dataset_exists(store *st, const store_dataset *ds, store_err *err)
{
    rstore *s = (rstore *)st;
    rnames n;
    int rc = names_of(ds, &n, err);
    if (rc != 0)
        return rc;
    uint64_t size;
    time_t mtime;
    rc = rados_stat(s->io, n.head, &size, &mtime);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return rfail(s, err, rc, "looking up the dataset");
    return 1;
}

static int r_lock(store *st, const store_dataset *ds, unsigned flags, store_lock **out,
                  store_err *err)
{
    rstore *s = (rstore *)st;
    rlock *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return store_fail(err, ENOMEM, "locking the dataset: out of memory");
    int rc = names_of(ds, &l->names, err);
    if (rc != 0) {
        free(l);
        return rc;
    }
    l->base.ops = st->ops;
    l->s = s;
    random_token(l->cookie);
    l->fence_len = lock_assert_encode(l->fence, LOCK_NAME, l->cookie);

    if (flags & STORE_LOCK_CREATE) {
        /* The dataset's head and its name in the namespace's list. Both
         * are idempotent, so two servers creating one dataset agree. */
        rados_write_op_t op = rados_create_write_op();
        rados_write_op_create(op, LIBRADOS_CREATE_IDEMPOTENT, NULL);
        rc = rados_write_op_operate(op, s->io, l->names.head, NULL, 0);
        rados_release_write_op(op);
        if (rc == 0) {
            const char *key = ds->name;
            const char *val = "";
            size_t vlen = 0;
            op = rados_create_write_op();
            rados_write_op_create(op, LIBRADOS_CREATE_IDEMPOTENT, NULL);
            rados_write_op_omap_set(op, &key, &val, &vlen, 1);
            rc = rados_write_op_operate(op, s->io, l->names.list, NULL, 0);
            rados_release_write_op(op);
        }
        if (rc < 0) {
            free(l);
            return rfail(s, err, rc, "making the dataset");
        }
    } else {
        uint64_t size;
        time_t mtime;
        rc = rados_stat(s->io, l->names.head, &size, &mtime);
        if (rc < 0) {
            free(l);
            if (rc == -ENOENT)
                return store_fail(err, ENOENT, "no dataset %s", ds->name);
            return rfail(s, err, rc, "looking up the dataset");
        }
    }

    struct timeval lease = {.tv_sec = (time_t)s->lease_s};
    rc = rados_lock_exclusive(s->io, l->names.head, LOCK_NAME, l->cookie, "hauld push", &lease, 0);
    if (rc == -EBUSY && (flags & STORE_LOCK_BREAK)) {
        rc = lock_break_all(s, l->names.head);
        if (rc == 0)
            rc = rados_lock_exclusive(s->io, l->names.head, LOCK_NAME, l->cookie, "hauld push",
                                      &lease, 0);
    }
    if (rc < 0) {
        free(l);
        if (rc == -EBUSY || rc == -EEXIST)
            return store_fail(err, EWOULDBLOCK,
                              "dataset %s is locked by another push (on this server or "
                              "another of the cluster)",
                              ds->name);
        return rfail(s, err, rc, "locking the dataset");
    }
    clock_gettime(CLOCK_MONOTONIC, &l->renewed);
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
    /* The renewal thread holds a reference of its own: a renewal that
     * waits on a cluster that does not answer ends on its own time, after
     * the lock was released, and nobody waits for it but store_close(). */
    l->refs = 2;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&s->mu);
    s->renewers++;
    pthread_mutex_unlock(&s->mu);
    rc = pthread_create(&l->renewer, &attr, lock_renew, l);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_lock(&s->mu);
        s->renewers--;
        pthread_mutex_unlock(&s->mu);
        rados_unlock(s->io, l->names.head, LOCK_NAME, l->cookie);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        free(l);
        return store_fail(err, rc, "locking the dataset: no thread to renew the lock: %s",
                          strerror(rc));
    }
    *out = &l->base;
    return 0;
}

/*
 * Releases the lock: at once, so that the next push of the dataset finds
 * it free. A lock that was lost is not ours to release; one whose
 * operations timed out (an OSD or the network gone) is released in the
 * background, since waiting for another timeout would only delay the
 * request's answer, and the lease frees it if the release never lands.
 */
static void r_unlock(store_lock *base)
{
    rlock *l = (rlock *)base;
    rstore *s = l->s;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_signal(&l->cv);
    int lost = l->lost, troubled = l->troubled;
    pthread_mutex_unlock(&l->mu);
    if (troubled && !lost) {
        rados_completion_t c;
        if (rados_aio_create_completion2(NULL, NULL, &c) == 0) {
            if (rados_aio_unlock(s->io, l->names.head, LOCK_NAME, l->cookie, c) < 0)
                slog(s, HAUL_LOG_WARN, "rados: unlocking dataset %s failed (the lease frees it)",
                     l->names.name);
            rados_aio_release(c);
        }
    } else if (!lost) {
        int rc = rados_unlock(s->io, l->names.head, LOCK_NAME, l->cookie);
        if (rc < 0 && rc != -ENOENT)
            slog(s, HAUL_LOG_WARN, "rados: unlocking dataset %s: %s (the lease frees it)",
                 l->names.name, strerror(-rc));
    }
    lock_put(l);
}

/* Notes that an operation under the lock timed out (see r_unlock). */
static void lock_troubled(rlock *l, int rc)
{
    if (rc != -ETIMEDOUT)
        return;
    pthread_mutex_lock(&l->mu);
    l->troubled = 1;
    pthread_mutex_unlock(&l->mu);
}

/* ---- the log: records of a push ------------------------------------------------------------ */

/*
 * A log record: type u8, flags u8 (bit 0: the content is packed), ref
 * length u16, entry length u32, stripe u64, content size u64 (a hard
 * link's is its target's), offset in the pack u64, the ENTRY record
 * (proto/store.h's encoding, header included), the REF. ENTRY records are
 * the manifest; an AWAIT says that content of a file began under that REF
 * (so that a resumed push finds its prefix); a PACK that a pack of small
 * files was written, and its length (its entry is a placeholder).
 */
enum { LOG_ENTRY = 1, LOG_AWAIT = 2, LOG_PACK = 3 };
#define LOG_HDR 32
#define LOG_PACKED 1

/* A file's content: where it is. Content of its own is in stripes
 * (d.REF.K); packed content is [offset, offset + size) of d.REF.0, a pack
 * of small files of one push. */
typedef struct rref {
    char ref[REF_MAX];
    uint64_t stripe;
    uint64_t size; /* the content's size */
    uint64_t offset;
    int packed;
} rref;

/* Appends a record to buf (cap bytes); returns its length or 0 when it
 * does not fit. */
static size_t log_record(uint8_t *buf, size_t cap, int type, const hsp_entry *e, const rref *r)
{
    size_t rl = r ? strlen(r->ref) : 0;
    hsp_writer w;
    if (cap < LOG_HDR + rl)
        return 0;
    hsp_writer_init(&w, buf + LOG_HDR, cap - LOG_HDR - rl);
    if (hsp_put_entry(&w, e) != 0)
        return 0;
    buf[0] = (uint8_t)type;
    buf[1] = r && r->packed ? LOG_PACKED : 0;
    haul__put16(buf + 2, (uint16_t)rl);
    haul__put32(buf + 4, (uint32_t)w.len);
    haul__put64(buf + 8, r ? r->stripe : 0);
    haul__put64(buf + 16, r ? r->size : 0);
    haul__put64(buf + 24, r ? r->offset : 0);
    if (rl)
        memcpy(buf + LOG_HDR + w.len, r->ref, rl);
    return LOG_HDR + w.len + rl;
}

/* A decoded log record; pointers into the buffer it came from. */
typedef struct logrec {
    int type;
    hsp_record rec; /* rec.entry */
    rref ref;
} logrec;

/* Decodes the record at buf[*pos]: 1, 0 at the end (or a record cut short
 * by a crash), -1 when it is damaged. */
static int log_next(const uint8_t *buf, size_t len, size_t *pos, logrec *out)
{
    if (len - *pos < LOG_HDR)
        return 0;
    const uint8_t *p = buf + *pos;
    size_t rl = haul__get16(p + 2), el = haul__get32(p + 4);
    if (len - *pos - LOG_HDR < el + rl)
        return 0;
    if (p[0] < LOG_ENTRY || p[0] > LOG_PACK || (p[1] & ~LOG_PACKED) != 0 || rl >= REF_MAX)
        return -1;
    out->type = p[0];
    out->ref.packed = p[1] & LOG_PACKED;
    out->ref.stripe = haul__get64(p + 8);
    out->ref.size = haul__get64(p + 16);
    out->ref.offset = haul__get64(p + 24);
    memcpy(out->ref.ref, p + LOG_HDR + el, rl);
    out->ref.ref[rl] = '\0';
    hsp_reader r;
    hsp_reader_init(&r, p + LOG_HDR, el);
    if (hsp_next(&r, &out->rec) != 1 || out->rec.type != HSP_ENTRY || r.pos != el)
        return -1;
    if ((out->rec.entry.kind == HSP_FILE || out->rec.entry.kind == HSP_HARDLINK) &&
        (rl == 0 || out->ref.stripe < STRIPE_MIN || out->ref.stripe > STRIPE_MAX))
        return -1;
    *pos += LOG_HDR + el + rl;
    return 1;
}

/* Reads a log sequentially, part by part (one part in memory). parts = 0:
 * an unfinished log, read until a part is missing. */
typedef struct logreader {
    rstore *s;
    char prefix[OID_MAX];
    char token[TOKEN_LEN + 1];
    uint32_t parts, part; /* part: the next to load */
    uint8_t *buf;
    size_t len, pos;
    int done;
} logreader;

static int logreader_init(logreader *lr, rstore *s, const char *prefix, const char *token,
                          uint32_t parts)
{
    memset(lr, 0, sizeof(*lr));
    lr->s = s;
    snprintf(lr->prefix, sizeof(lr->prefix), "%s", prefix);
    snprintf(lr->token, sizeof(lr->token), "%s", token);
    lr->parts = parts;
    lr->buf = malloc(LOG_PART_MAX);
    return lr->buf ? 0 : -ENOMEM;
}

static void logreader_fini(logreader *lr)
{
    free(lr->buf);
    lr->buf = NULL;
}

/* Reads up to cap bytes of an object from offset; returns how many there
 * were. */
static ssize_t read_at(rstore *s, const char *oid, uint8_t *buf, size_t cap, uint64_t offset)
{
    size_t got = 0;
    while (got < cap) {
        int n = rados_read(s->io, oid, (char *)buf + got, cap - got, offset + got);
        if (n < 0)
            return n;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

/* The next record: 1, 0 at the end, or -errno (err filled). */
static int logreader_next(logreader *lr, logrec *out, store_err *err)
{
    for (;;) {
        if (lr->done)
            return 0;
        if (lr->buf != NULL && lr->pos < lr->len) {
            int rc = log_next(lr->buf, lr->len, &lr->pos, out);
            if (rc == 1)
                return 1;
            if (rc < 0)
                return store_fail(err, EIO, "the manifest (log %s, part %" PRIu32 ") is damaged",
                                  lr->token, lr->part - 1);
            /* A part ends with whole records; a cut record ends a log that
             * a crash interrupted. */
            if (lr->pos != lr->len && lr->parts != 0)
                return store_fail(err, EIO, "the manifest (log %s, part %" PRIu32 ") is cut short",
                                  lr->token, lr->part - 1);
        }
        if (lr->parts != 0 && lr->part >= lr->parts) {
            lr->done = 1;
            return 0;
        }
        char oid[OID_MAX];
        if (log_oid(oid, lr->prefix, lr->token, lr->part) != 0)
            return store_fail(err, ENAMETOOLONG, "the manifest's name is too long");
        ssize_t n = read_at(lr->s, oid, lr->buf, LOG_PART_MAX, 0);
        if (n == -ENOENT && lr->parts == 0) {
            lr->done = 1;
            return 0;
        }
        if (n < 0)
            return rfail(lr->s, err, (int)n, "reading the manifest");
        lr->len = (size_t)n;
        lr->pos = 0;
        lr->part++;
    }
}

/* ---- tables of files ------------------------------------------------------------------------ */

/* What a push knows of a path (or, in the id table, of an awaited file). */
typedef struct rnode {
    struct rnode *next;  /* in its table's chain */
    struct rnode *order; /* hard links: in put order */
    uint64_t hash_key;
    int kind;
    int state;   /* NODE_* */
    int reused;  /* old staging: taken by this push */
    hsp_entry e; /* e.path and e.target point into text */
    rref ref;
    uint64_t held; /* awaited: bytes of content staged */
    uint16_t key_len;
    char *text; /* path, then target */
} rnode;

enum { NODE_PUT = 0, NODE_COMPLETE = 1, NODE_PARTIAL = 2, NODE_AWAITED = 3 };

typedef struct rtable {
    rnode **v;
    size_t cap, n;
} rtable;

static uint64_t key_hash(const void *key, size_t len)
{
    return XXH3_64bits(key, len);
}

static void node_free(rnode *n)
{
    if (n != NULL) {
        free(n->text);
        free(n);
    }
}

static void table_free(rtable *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        rnode *n = t->v[i];
        while (n != NULL) {
            rnode *next = n->next;
            node_free(n);
            n = next;
        }
    }
    free(t->v);
    memset(t, 0, sizeof(*t));
}

/* The node whose key (its path, or for the id table the id's 8 bytes,
 * kept in text) is key. */
static rnode *table_get(const rtable *t, const void *key, size_t len)
{
    if (t->cap == 0)
        return NULL;
    uint64_t h = key_hash(key, len);
    for (rnode *n = t->v[h & (t->cap - 1)]; n != NULL; n = n->next)
        if (n->hash_key == h && n->key_len == len && memcmp(n->text, key, len) == 0)
            return n;
    return NULL;
}

static int table_put(rtable *t, rnode *n)
{
    if (t->n + 1 > t->cap / 2) {
        size_t cap = t->cap ? 2 * t->cap : 1024;
        rnode **v = calloc(cap, sizeof(*v));
        if (v == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < t->cap; i++) {
            rnode *m = t->v[i];
            while (m != NULL) {
                rnode *next = m->next;
                m->next = v[m->hash_key & (cap - 1)];
                v[m->hash_key & (cap - 1)] = m;
                m = next;
            }
        }
        free(t->v);
        t->v = v;
        t->cap = cap;
    }
    n->hash_key = key_hash(n->text, n->key_len);
    n->next = t->v[n->hash_key & (t->cap - 1)];
    t->v[n->hash_key & (t->cap - 1)] = n;
    t->n++;
    return 0;
}

static rnode *table_remove(rtable *t, const void *key, size_t len)
{
    if (t->cap == 0)
        return NULL;
    uint64_t h = key_hash(key, len);
    for (rnode **at = &t->v[h & (t->cap - 1)]; *at != NULL; at = &(*at)->next) {
        rnode *n = *at;
        if (n->hash_key == h && n->key_len == len && memcmp(n->text, key, len) == 0) {
            *at = n->next;
            t->n--;
            return n;
        }
    }
    return NULL;
}

/* A node for entry e, keyed by its path (id_key: by its id), its text
 * copied. */
static rnode *node_new(const hsp_entry *e, int id_key)
{
    rnode *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    size_t klen = id_key ? 8 : e->path_len;
    n->text = malloc(klen + e->path_len + e->target_len + 1);
    if (n->text == NULL) {
        free(n);
        return NULL;
    }
    char *p = n->text;
    if (id_key) {
        haul__put64((uint8_t *)p, e->id);
        p += 8;
    }
    if (e->path_len)
        memcpy(p, e->path, e->path_len);
    if (e->target_len)
        memcpy(p + e->path_len, e->target, e->target_len);
    p[e->path_len + e->target_len] = '\0';
    n->key_len = (uint16_t)klen;
    n->e = *e;
    n->e.path = p;
    n->e.target = p + e->path_len;
    n->kind = e->kind;
    return n;
}

/* ---- asynchronous writes ------------------------------------------------------------------- */

typedef struct aio_slot {
    rados_completion_t c;
    void *buf;
    size_t len;
    char what[96];
} aio_slot;

typedef struct rpush {
    store_push base;
    rstore *s;
    rlock *l;
    char token[TOKEN_LEN + 1];
    uint64_t seq;
    rhead head;

    /* Writes in flight, oldest first, in a ring. */
    aio_slot *q;
    size_t qhead, qn;
    uint64_t qbytes; /* bytes the writes in flight hold */
    int failed;      /* a write failed: err_async says how */
    store_err err_async;

    /* The log. */
    uint8_t *logbuf;
    size_t loglen;
    uint32_t part;
    uint64_t part_off, log_total;

    /* The tree being written, by path; the awaited files, by id; hard
     * links in put order. */
    rtable cur, awaited;
    rnode *links, **links_tail;
    /* The previous snapshot's files, and what the interrupted push staged,
     * by path. */
    rtable prev, old;
    char old_token[TOKEN_LEN + 1];

    /* The open file, and its content not yet written: [buf_start,
     * buf_start + buf_len) of it. */
    rnode *open;
    uint8_t *buf;
    uint64_t buf_start;
    size_t buf_len;

    /* The pack of small files being filled: [0, pack_len) of packbuf. */
    rref pack;
    uint8_t *packbuf;
    size_t pack_len;

    uint64_t new_bytes; /* content this snapshot adds (not shared) */
    int committed;
} rpush;

/* Waits for the oldest write in flight; records its failure. */
static void aio_reap_one(rpush *p)
{
    aio_slot *a = &p->q[p->qhead];
    rados_aio_wait_for_complete(a->c);
    int rc = rados_aio_get_return_value(a->c);
    rados_aio_release(a->c);
    free(a->buf);
    p->qbytes -= a->len;
    if (rc < 0 && !p->failed) {
        p->failed = rc;
        lock_troubled(p->l, rc);
        rfail(p->s, &p->err_async, rc, a->what);
    }
    memset(a, 0, sizeof(*a));
    p->qhead = (p->qhead + 1) % p->s->inflight;
    p->qn--;
}

/* Waits for every write in flight: 0, or the first failure. */
static int aio_drain(rpush *p, store_err *err)
{
    while (p->qn > 0)
        aio_reap_one(p);
    if (p->failed) {
        *err = p->err_async;
        return p->failed;
    }
    return 0;
}

/* A slot for one more write of len bytes, waiting for the oldest while
 * all slots are taken or the bytes in flight would pass their bound. */
static aio_slot *aio_slot_get(rpush *p, size_t len)
{
    while (p->qn >= p->s->inflight || (p->qn > 0 && p->qbytes + len > p->s->inflight_bytes))
        aio_reap_one(p);
    aio_slot *a = &p->q[(p->qhead + p->qn) % p->s->inflight];
    memset(a, 0, sizeof(*a));
    return a;
}

/* Writes buf (taken: freed when done) to oid at offset, in the
 * background. */
static int aio_write(rpush *p, const char *oid, void *buf, size_t len, uint64_t off,
                     const char *what, store_err *err)
{
    if (p->failed) {
        free(buf);
        *err = p->err_async;
        return p->failed;
    }
    aio_slot *a = aio_slot_get(p, len);
    if (rados_aio_create_completion2(NULL, NULL, &a->c) != 0) {
        free(buf);
        return store_fail(err, ENOMEM, "%s: out of memory", what);
    }
    int rc = rados_aio_write(p->s->io, oid, a->c, buf, len, off);
    if (rc < 0) {
        rados_aio_release(a->c);
        free(buf);
        return rfail(p->s, err, rc, what);
    }
    a->buf = buf;
    a->len = len;
    p->qbytes += len;
    snprintf(a->what, sizeof(a->what), "%s", what);
    p->qn++;
    return 0;
}

/* ---- writing the log --------------------------------------------------------------------------
 */

static int log_flush(rpush *p, store_err *err)
{
    if (p->loglen == 0)
        return 0;
    if (p->part_off + p->loglen > LOG_PART_MAX) {
        p->part++;
        p->part_off = 0;
    }
    char oid[OID_MAX];
    if (log_oid(oid, p->l->names.prefix, p->token, p->part) != 0)
        return store_fail(err, ENAMETOOLONG, "the manifest's name is too long");
    void *buf = p->logbuf;
    p->logbuf = malloc(LOG_FLUSH + 2 * (LOG_HDR + HSP_RECORD_HDR + 2 * HSP_PATH_MAX + 128));
    if (p->logbuf == NULL) {
        p->logbuf = buf;
        return store_fail(err, ENOMEM, "writing the manifest: out of memory");
    }
    int rc = aio_write(p, oid, buf, p->loglen, p->part_off, "writing the manifest", err);
    p->part_off += p->loglen;
    p->log_total += p->loglen;
    p->loglen = 0;
    return rc;
}

static int log_put(rpush *p, int type, const hsp_entry *e, const rref *r, store_err *err)
{
    size_t room = LOG_FLUSH + 2 * (LOG_HDR + HSP_RECORD_HDR + 2 * HSP_PATH_MAX + 128);
    size_t n = log_record(p->logbuf + p->loglen, room - p->loglen, type, e, r);
    if (n == 0)
        return store_fail(err, EINVAL, "an entry too large for the manifest");
    /* A part never holds more than LOG_PART_MAX: a record that would pass
     * it starts the next part (log_flush does the switch). */
    if (p->part_off + p->loglen + n > LOG_PART_MAX && p->loglen > 0) {
        uint8_t tmp[LOG_HDR + HSP_RECORD_HDR + 2 * HSP_PATH_MAX + 128];
        memcpy(tmp, p->logbuf + p->loglen, n);
        int rc = log_flush(p, err);
        if (rc != 0)
            return rc;
        memcpy(p->logbuf, tmp, n);
    }
    p->loglen += n;
    if (p->loglen >= LOG_FLUSH)
        return log_flush(p, err);
    return 0;
}

/* ---- reading content ------------------------------------------------------------------------ */

/* Reads [offset, offset + len) of a file of `size` bytes at ref: missing
 * objects and bytes past an object's end are holes (zeros). Returns the
 * bytes read, short only at the end of the file. */
static ssize_t content_read(rstore *s, const char *prefix, const rref *r, uint64_t size,
                            uint64_t offset, void *buf, size_t len, store_err *err)
{
    if (offset >= size)
        return 0;
    if (len > size - offset)
        len = (size_t)(size - offset);
    if (r->packed) {
        char oid[OID_MAX];
        if (data_oid(oid, prefix, r->ref, 0) != 0)
            return store_fail(err, ENAMETOOLONG, "a content object's name is too long");
        ssize_t got = read_at(s, oid, buf, len, r->offset + offset);
        if (got == -ENOENT)
            got = 0;
        if (got < 0) {
            char what[OID_MAX + 32];
            snprintf(what, sizeof(what), "reading %s", oid);
            return rfail(s, err, (int)got, what);
        }
        memset((char *)buf + got, 0, len - (size_t)got);
        return (ssize_t)len;
    }
    size_t done = 0;
    while (done < len) {
        uint64_t at = offset + done;
        uint64_t k = at / r->stripe, in = at % r->stripe;
        size_t n = len - done;
        if (n > r->stripe - in)
            n = (size_t)(r->stripe - in);
        char oid[OID_MAX];
        if (data_oid(oid, prefix, r->ref, k) != 0)
            return store_fail(err, ENAMETOOLONG, "a content object's name is too long");
        size_t got = 0;
        while (got < n) {
            int rc = rados_read(s->io, oid, (char *)buf + done + got, n - got, in + got);
            if (rc == -ENOENT || rc == 0)
                break;
            if (rc < 0) {
                char what[OID_MAX + 32];
                snprintf(what, sizeof(what), "reading %s", oid);
                return rfail(s, err, rc, what);
            }
            got += (size_t)rc;
        }
        memset((char *)buf + done + got, 0, n - got);
        done += n;
    }
    return (ssize_t)done;
}

/* The XXH3-128 of [0, len) of a file. */
static int content_hash(rstore *s, const char *prefix, const rref *r, uint64_t size, uint64_t len,
                        hsp_hash *out, store_err *err)
{
    XXH3_state_t *st = XXH3_createState();
    uint8_t *buf = malloc(HSP_BLOCK);
    if (st == NULL || buf == NULL) {
        XXH3_freeState(st);
        free(buf);
        return store_fail(err, ENOMEM, "hashing staged content: out of memory");
    }
    XXH3_128bits_reset(st);
    int rc = 0;
    for (uint64_t at = 0; at < len;) {
        size_t n = len - at < HSP_BLOCK ? (size_t)(len - at) : HSP_BLOCK;
        ssize_t got = content_read(s, prefix, r, size, at, buf, n, err);
        if (got < 0) {
            rc = (int)got;
            break;
        }
        if ((size_t)got != n) {
            rc = store_fail(err, EIO, "staged content ends early");
            break;
        }
        XXH3_128bits_update(st, buf, n);
        at += n;
    }
    if (rc == 0) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
        memcpy(out->b, c.digest, sizeof(out->b));
    }
    XXH3_freeState(st);
    free(buf);
    return rc;
}

/* How much of a staged file is there: its stripes, in order, up to the
 * first that is not full. */
static int content_held(rstore *s, const char *prefix, const rref *r, uint64_t max, uint64_t *held,
                        store_err *err)
{
    *held = 0;
    if (r->packed)
        return 0; /* a small file is sent again whole */
    for (uint64_t k = 0; *held < max; k++) {
        char oid[OID_MAX];
        if (data_oid(oid, prefix, r->ref, k) != 0)
            return store_fail(err, ENAMETOOLONG, "a content object's name is too long");
        uint64_t size;
        time_t mtime;
        int rc = rados_stat(s->io, oid, &size, &mtime);
        if (rc == -ENOENT)
            break;
        if (rc < 0)
            return rfail(s, err, rc, "looking at staged content");
        *held += size < r->stripe ? size : r->stripe;
        if (size < r->stripe)
            break;
    }
    if (*held > max)
        *held = max;
    return 0;
}

/* ---- loading manifests ------------------------------------------------------------------------
 */

/*
 * Loads the FILE entries of a log into t by path (complete files; with
 * awaits: files begun and not completed, as NODE_PARTIAL). refs, when not
 * NULL, gets every REF the log names (a set keyed by REF).
 */
static int load_log(rstore *s, const char *prefix, const char *token, uint32_t parts, rtable *t,
                    int awaits, store_err *err)
{
    logreader lr;
    if (logreader_init(&lr, s, prefix, token, parts) != 0)
        return store_fail(err, ENOMEM, "reading a manifest: out of memory");
    logrec r;
    int rc;
    while ((rc = logreader_next(&lr, &r, err)) == 1) {
        const hsp_entry *e = &r.rec.entry;
        if (e->kind != HSP_FILE || r.type == LOG_PACK)
            continue;
        if (r.type == LOG_AWAIT && !awaits)
            continue;
        rnode *n = table_remove(t, e->path, e->path_len);
        node_free(n);
        n = node_new(e, 0);
        if (n == NULL || table_put(t, n) != 0) {
            node_free(n);
            rc = store_fail(err, ENOMEM, "reading a manifest: out of memory");
            break;
        }
        n->ref = r.ref;
        n->state = r.type == LOG_ENTRY ? NODE_COMPLETE : NODE_PARTIAL;
    }
    logreader_fini(&lr);
    return rc < 0 ? rc : 0;
}

/* The set of REFs a log names (FILE and HARDLINK entries, and awaits),
 * keyed by REF, each with the size of its file. */
static int load_refs(rstore *s, const char *prefix, const char *token, uint32_t parts, rtable *t,
                     store_err *err)
{
    logreader lr;
    if (logreader_init(&lr, s, prefix, token, parts) != 0)
        return store_fail(err, ENOMEM, "reading a manifest: out of memory");
    logrec r;
    int rc;
    while ((rc = logreader_next(&lr, &r, err)) == 1) {
        if (r.ref.ref[0] == '\0')
            continue;
        rnode *had = table_get(t, r.ref.ref, strlen(r.ref.ref));
        if (had != NULL) {
            /* A file begun (AWAIT) and then completed; a pack written,
             * which holds its length. */
            if (r.type != LOG_AWAIT)
                had->state = LOG_ENTRY;
            if (r.type == LOG_PACK)
                had->e.size = r.ref.size;
            continue;
        }
        hsp_entry k = {.path = r.ref.ref, .path_len = (uint16_t)strlen(r.ref.ref)};
        rnode *n = node_new(&k, 0);
        if (n == NULL || table_put(t, n) != 0) {
            node_free(n);
            rc = store_fail(err, ENOMEM, "reading a manifest: out of memory");
            break;
        }
        n->ref = r.ref;
        /* A pack counts with its length, once it is written. */
        n->e.size = r.ref.packed && r.type != LOG_PACK ? 0 : r.ref.size;
        n->state = r.type == LOG_AWAIT ? LOG_AWAIT : LOG_ENTRY;
    }
    logreader_fini(&lr);
    return rc < 0 ? rc : 0;
}

/* Removes the objects of a REF of `size` bytes; missing ones (holes) are
 * no failure. Returns the bytes the objects held. */
static uint64_t remove_content(rstore *s, const char *prefix, const rref *r, uint64_t size)
{
    uint64_t stripes = size == 0 || r->packed ? 1 : (size + r->stripe - 1) / r->stripe;
    uint64_t bytes = 0;
    for (uint64_t k = 0; k < stripes; k++) {
        char oid[OID_MAX];
        if (data_oid(oid, prefix, r->ref, k) != 0)
            break;
        uint64_t osize = 0;
        time_t mtime;
        if (rados_stat(s->io, oid, &osize, &mtime) == 0)
            bytes += osize;
        int rc = rados_remove(s->io, oid);
        if (rc < 0 && rc != -ENOENT)
            slog(s, HAUL_LOG_WARN, "rados: removing %s: %s", oid, strerror(-rc));
    }
    return bytes;
}

/* Removes a log's parts (parts = 0: until one is missing); returns the
 * bytes they held. */
static uint64_t remove_log(rstore *s, const char *prefix, const char *token, uint32_t parts)
{
    uint64_t bytes = 0;
    for (uint32_t k = 0; parts == 0 || k < parts; k++) {
        char oid[OID_MAX];
        if (log_oid(oid, prefix, token, k) != 0)
            break;
        uint64_t size = 0;
        time_t mtime;
        if (rados_stat(s->io, oid, &size, &mtime) == 0)
            bytes += size;
        int rc = rados_remove(s->io, oid);
        if (rc == -ENOENT && parts == 0)
            break;
    }
    return bytes;
}

/* ---- the head: writes guarded by the lock ---------------------------------------------------- */

/* One write on the head that happens only while l holds the lock: sets
 * n keys, removes m. */
static int head_write(rlock *l, const char *const *keys, const char *const *vals,
                      const size_t *lens, size_t n, const char *const *rm, size_t m,
                      const char *what, store_err *err)
{
    if (lock_lost(l))
        return lost_fail(l, err);
    rados_write_op_t op = rados_create_write_op();
    if (op == NULL)
        return store_fail(err, ENOMEM, "%s: out of memory", what);
    int fence = 0;
    rados_write_op_exec(op, "lock", "assert_locked", (const char *)l->fence, l->fence_len, &fence);
    if (n > 0)
        rados_write_op_omap_set(op, keys, vals, lens, n);
    if (m > 0)
        rados_write_op_omap_rm_keys(op, rm, m);
    int rc = rados_write_op_operate(op, l->s->io, l->names.head, NULL, 0);
    rados_release_write_op(op);
    if (rc == -EBUSY || rc == -ENOENT || fence == -EBUSY || fence == -ENOENT) {
        pthread_mutex_lock(&l->mu);
        l->lost = 1;
        pthread_mutex_unlock(&l->mu);
        return lost_fail(l, err);
    }
    if (rc < 0) {
        lock_troubled(l, rc);
        return rfail(l->s, err, rc, what);
    }
    return 0;
}

/* ---- deleting a snapshot's content ---------------------------------------------------------- */

/*
 * Frees what the snapshot whose log is `token` holds alone: the REFs that
 * neither of its neighbours (the snapshots just older and newer than
 * `id` in h, which no longer lists it) nor the staging names, and its
 * log. Returns the bytes freed.
 */
static int free_snapshot(rstore *s, const char *prefix, const rhead *h, const char *token,
                         uint32_t parts, const char *id, uint64_t *freed, store_err *err)
{
    rtable mine = {0}, keep = {0};
    *freed = 0;
    int rc = load_refs(s, prefix, token, parts, &mine, err);
    const snaprec *older = NULL, *newer = NULL;
    for (size_t i = 0; i < h->n; i++) {
        if (id_cmp(h->snaps[i].id, id) < 0)
            older = &h->snaps[i];
        else if (newer == NULL && id_cmp(h->snaps[i].id, id) > 0)
            newer = &h->snaps[i];
    }
    if (rc == 0 && older != NULL)
        rc = load_refs(s, prefix, older->token, older->parts, &keep, err);
    if (rc == 0 && newer != NULL)
        rc = load_refs(s, prefix, newer->token, newer->parts, &keep, err);
    if (rc == 0 && h->stage[0] != '\0')
        rc = load_refs(s, prefix, h->stage, 0, &keep, err);
    if (rc == 0 && h->stage_prev[0] != '\0')
        rc = load_refs(s, prefix, h->stage_prev, 0, &keep, err);
    if (rc == 0) {
        for (size_t i = 0; i < mine.cap; i++)
            for (rnode *n = mine.v[i]; n != NULL; n = n->next) {
                if (table_get(&keep, n->text, n->key_len) != NULL)
                    continue;
                uint64_t held = remove_content(s, prefix, &n->ref, n->e.size);
                /* A REF only begun (a file dropped or started over) held
                 * no content of the snapshot's; a file's counts with its
                 * size (holes included, as usage counted it), a pack with
                 * what it holds. */
                if (n->state == LOG_ENTRY)
                    *freed += n->ref.packed ? held : n->e.size;
            }
        /* The manifest counts in usage as content does. */
        *freed += remove_log(s, prefix, token, parts);
    }
    table_free(&mine);
    table_free(&keep);
    return rc;
}

/* Finishes the deletes a crash interrupted ("gc.TOKEN" -> "TOKEN PARTS ID"). */
static void finish_deletes(rlock *l, rhead *h)
{
    for (size_t i = 0; i < h->gc.n; i++) {
        char token[TOKEN_LEN + 1], id[HSP_SNAPSHOT_MAX + 1];
        unsigned parts;
        if (sscanf(h->gc.v[i], "%16s %u %64s", token, &parts, id) != 3)
            continue;
        store_err err;
        uint64_t freed = 0;
        if (free_snapshot(l->s, l->names.prefix, h, token, parts, id, &freed, &err) != 0) {
            slog(l->s, HAUL_LOG_WARN, "rados: finishing the delete of %s: %s", id, err.text);
            continue;
        }
        char key[8 + TOKEN_LEN], usage[8];
        snprintf(key, sizeof(key), "gc.%s", token);
        h->usage = h->usage > freed ? h->usage - freed : 0;
        haul__put64((uint8_t *)usage, h->usage);
        const char *k = "usage", *v = usage, *rm = key;
        size_t len = 8;
        head_write(l, &k, &v, &len, 1, &rm, 1, "finishing a delete", &err);
    }
}

/* ---- pushes ---------------------------------------------------------------------------------- */

static int parent_ok(rpush *p, const hsp_entry *e, store_err *err)
{
    const char *slash = memrchr(e->path, '/', e->path_len);
    if (slash == NULL)
        return 0;
    size_t plen = (size_t)(slash - e->path);
    rnode *parent = table_get(&p->cur, e->path, plen);
    if (parent == NULL)
        return store_fail(err, ENOENT, "%.*s: its directory was not sent before it",
                          (int)e->path_len, e->path);
    if (parent->kind != HSP_DIR)
        return store_fail(err, ENOTDIR, "%.*s: its parent is not a directory", (int)e->path_len,
                          e->path);
    return 0;
}

/* Adds an entry to the tree being written (n is taken). */
static int cur_add(rpush *p, rnode *n, store_err *err)
{
    int rc = parent_ok(p, &n->e, err);
    if (rc == 0 && table_get(&p->cur, n->e.path, n->e.path_len) != NULL)
        rc = store_fail(err, EEXIST, "%.*s: sent twice", (int)n->e.path_len, n->e.path);
    if (rc == 0 && table_put(&p->cur, n) != 0)
        rc = store_fail(err, ENOMEM, "out of memory");
    if (rc != 0)
        node_free(n);
    return rc;
}

static int check_push(rpush *p, store_err *err)
{
    if (lock_lost(p->l))
        return lost_fail(p->l, err);
    if (p->failed) {
        *err = p->err_async;
        return p->failed;
    }
    return 0;
}

static void new_ref(rpush *p, rref *r, uint64_t size)
{
    r->size = size;
    snprintf(r->ref, sizeof(r->ref), "%s.%" PRIx64, p->token, p->seq++);
    r->stripe = p->s->stripe;
}

static int r_push_begin(store_lock *base, store_push **out, store_push_info *info, store_err *err)
{
    rlock *l = (rlock *)base;
    rstore *s = l->s;
    rpush *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return store_fail(err, ENOMEM, "beginning the push: out of memory");
    p->base.ops = base->ops;
    p->s = s;
    p->l = l;
    p->links_tail = &p->links;
    p->q = calloc(s->inflight, sizeof(*p->q));
    p->logbuf = malloc(LOG_FLUSH + 2 * (LOG_HDR + HSP_RECORD_HDR + 2 * HSP_PATH_MAX + 128));
    if (p->q == NULL || p->logbuf == NULL) {
        free(p->q);
        free(p->logbuf);
        free(p);
        return store_fail(err, ENOMEM, "beginning the push: out of memory");
    }
    memset(info, 0, sizeof(*info));
    int rc = head_read(s, l->names.head, &p->head, err);
    if (rc == -ENOENT)
        rc = store_fail(err, ENOENT, "no dataset %s", l->names.name);
    if (rc == 0)
        finish_deletes(l, &p->head);
    const snaprec *latest = p->head.n ? &p->head.snaps[p->head.n - 1] : NULL;
    if (rc == 0 && latest != NULL) {
        snprintf(info->previous, sizeof(info->previous), "%s", latest->id);
        rc = load_log(s, l->names.prefix, latest->token, latest->parts, &p->prev, 0, err);
    }
    /* A staging older than the one being resumed: what the resumed push
     * had not taken from it is garbage now. */
    if (rc == 0 && p->head.stage_prev[0] != '\0' && p->head.stage[0] != '\0') {
        rtable keep = {0}, gone = {0};
        rc = load_refs(s, l->names.prefix, p->head.stage, 0, &keep, err);
        if (rc == 0)
            rc = load_refs(s, l->names.prefix, p->head.stage_prev, 0, &gone, err);
        if (rc == 0 && latest != NULL)
            rc = load_refs(s, l->names.prefix, latest->token, latest->parts, &keep, err);
        for (size_t i = 0; rc == 0 && i < gone.cap; i++)
            for (rnode *n = gone.v[i]; n != NULL; n = n->next)
                if (table_get(&keep, n->text, n->key_len) == NULL)
                    remove_content(s, l->names.prefix, &n->ref, n->e.size);
        if (rc == 0)
            remove_log(s, l->names.prefix, p->head.stage_prev, 0);
        table_free(&keep);
        table_free(&gone);
    }
    if (rc == 0 && p->head.stage[0] != '\0') {
        snprintf(p->old_token, sizeof(p->old_token), "%s", p->head.stage);
        rc = load_log(s, l->names.prefix, p->old_token, 0, &p->old, 1, err);
        info->resuming = p->old.n > 0;
    }
    random_token(p->token);
    if (rc == 0) {
        const char *keys[2] = {"stage", "stage.prev"};
        const char *vals[2] = {p->token, p->old_token};
        size_t lens[2] = {TOKEN_LEN, TOKEN_LEN};
        const char *rm = "stage.prev";
        rc = head_write(l, keys, vals, lens, p->old_token[0] ? 2 : 1, &rm, p->old_token[0] ? 0 : 1,
                        "beginning the push", err);
    }
    if (rc != 0) {
        table_free(&p->prev);
        table_free(&p->old);
        head_free(&p->head);
        free(p->q);
        free(p->logbuf);
        free(p);
        return rc;
    }
    *out = &p->base;
    return 0;
}

static int put_logged(rpush *p, const hsp_entry *e, store_err *err)
{
    int rc = check_push(p, err);
    if (rc != 0)
        return rc;
    rnode *n = node_new(e, 0);
    if (n == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    if (e->kind == HSP_DIR) {
        rnode *had = table_get(&p->cur, e->path, e->path_len);
        if (had != NULL && had->kind == HSP_DIR) {
            node_free(n);
            return 0;
        }
    }
    rc = cur_add(p, n, err);
    if (rc == 0)
        rc = log_put(p, LOG_ENTRY, e, NULL, err);
    return rc;
}

static int r_put_dir(store_push *base, const hsp_entry *e, store_err *err)
{
    return put_logged((rpush *)base, e, err);
}

static int r_put_symlink(store_push *base, const hsp_entry *e, store_err *err)
{
    return put_logged((rpush *)base, e, err);
}

static int r_put_hardlink(store_push *base, const hsp_entry *e, store_err *err)
{
    rpush *p = (rpush *)base;
    int rc = check_push(p, err);
    if (rc != 0)
        return rc;
    rnode *n = node_new(e, 0);
    if (n == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    rc = cur_add(p, n, err);
    if (rc != 0)
        return rc;
    *p->links_tail = n;
    p->links_tail = &n->order;
    return 0;
}

/* A complete file joins the tree and the manifest, with its hash and REF. */
static int file_complete(rpush *p, const hsp_entry *e, const hsp_hash *hash, const rref *r,
                         store_err *err)
{
    rnode *n = node_new(e, 0);
    if (n == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    n->e.hash = *hash;
    n->ref = *r;
    n->ref.size = e->size;
    n->state = NODE_COMPLETE;
    hsp_entry logged = n->e;
    rref where = n->ref;
    int rc = cur_add(p, n, err);
    if (rc == 0)
        rc = log_put(p, LOG_ENTRY, &logged, &where, err);
    return rc;
}

/* Was REF held by the previous snapshot? (Then it adds no bytes.) */
static int ref_in_prev(rpush *p, const hsp_entry *e, const rref *r)
{
    rnode *n = table_get(&p->prev, e->path, e->path_len);
    return n != NULL && strcmp(n->ref.ref, r->ref) == 0;
}

static int r_file_resumed(store_push *base, const hsp_entry *e, hsp_hash *hash, uint64_t *held,
                          store_err *err)
{
    rpush *p = (rpush *)base;
    int rc = check_push(p, err);
    if (rc != 0)
        return rc;
    rnode *o = table_get(&p->old, e->path, e->path_len);
    if (o == NULL || o->reused)
        return STORE_NOTHING;
    const char *prefix = p->l->names.prefix;
    if (o->state == NODE_COMPLETE) {
        if (o->e.size != e->size || o->e.mtime_sec != e->mtime_sec ||
            o->e.mtime_nsec != e->mtime_nsec || o->e.mode != e->mode)
            return STORE_NOTHING;
        /* The content is read back and hashed: what was staged is used
         * only when it is what was stored. */
        hsp_hash h;
        rc = content_hash(p->s, prefix, &o->ref, o->e.size, o->e.size, &h, err);
        if (rc != 0)
            return rc; /* the cluster failed: missing objects read as zeros */
        if (!hsp_hash_equal(&h, &o->e.hash))
            return STORE_NOTHING;
        rc = file_complete(p, e, &h, &o->ref, err);
        if (rc != 0)
            return rc;
        o->reused = 1;
        if (!ref_in_prev(p, e, &o->ref))
            p->new_bytes += e->size;
        *hash = h;
        *held = e->size;
        return STORE_COMPLETE;
    }
    uint64_t have = 0;
    rc = content_held(p->s, prefix, &o->ref, e->size, &have, err);
    if (rc != 0)
        return rc;
    if (have == 0)
        return STORE_NOTHING;
    hsp_hash h;
    rc = content_hash(p->s, prefix, &o->ref, have, have, &h, err);
    if (rc != 0)
        return rc;
    rnode *n = node_new(e, 1);
    if (n == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    if (table_get(&p->awaited, n->text, 8) != NULL) {
        node_free(n);
        return store_fail(err, EEXIST, "%.*s: sent twice", (int)e->path_len, e->path);
    }
    rc = parent_ok(p, e, err);
    if (rc != 0) {
        node_free(n);
        return rc;
    }
    n->ref = o->ref;
    n->ref.size = e->size;
    n->held = have;
    n->state = NODE_AWAITED;
    if (table_put(&p->awaited, n) != 0) {
        node_free(n);
        return store_fail(err, ENOMEM, "out of memory");
    }
    rc = log_put(p, LOG_AWAIT, e, &n->ref, err);
    if (rc != 0)
        return rc;
    o->reused = 1;
    *hash = h;
    *held = have;
    return STORE_PARTIAL;
}

static int r_file_link_previous(store_push *base, const hsp_entry *e, hsp_hash *hash,
                                store_err *err)
{
    rpush *p = (rpush *)base;
    int rc = check_push(p, err);
    if (rc != 0)
        return rc;
    rnode *o = table_get(&p->prev, e->path, e->path_len);
    /* The on-disk mode of the file-system store decides there; here the
     * same bits do, so that both stores resend the same files. */
    if (o == NULL || o->e.size != e->size || o->e.mtime_sec != e->mtime_sec ||
        o->e.mtime_nsec != e->mtime_nsec ||
        ((o->e.mode & 0777) | 0600) != ((e->mode & 0777) | 0600))
        return 0;
    rc = file_complete(p, e, &o->e.hash, &o->ref, err);
    if (rc != 0)
        return rc;
    *hash = o->e.hash;
    return 1;
}

static int r_file_await(store_push *base, const hsp_entry *e, store_err *err)
{
    rpush *p = (rpush *)base;
    int rc = check_push(p, err);
    if (rc != 0)
        return rc;
    rc = parent_ok(p, e, err);
    if (rc != 0)
        return rc;
    if (table_get(&p->cur, e->path, e->path_len) != NULL)
        return store_fail(err, EEXIST, "%.*s: sent twice", (int)e->path_len, e->path);
    rnode *n = node_new(e, 1);
    if (n == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    if (table_get(&p->awaited, n->text, 8) != NULL) {
        node_free(n);
        return store_fail(err, EEXIST, "%.*s: sent twice", (int)e->path_len, e->path);
    }
    n->state = NODE_AWAITED;
    if (table_put(&p->awaited, n) != 0) {
        node_free(n);
        return store_fail(err, ENOMEM, "out of memory");
    }
    return 0;
}

static rnode *awaited_get(rpush *p, uint64_t id)
{
    uint8_t key[8];
    haul__put64(key, id);
    return table_get(&p->awaited, key, 8);
}

/*
 * Small files share objects: a file of at most a sixteenth of a stripe is
 * written into the push's current pack, one object of up to a stripe,
 * written when full. One object per small file would cost the OSD one
 * operation per file; a pack costs one per stripe of them. A pack is
 * kept while any snapshot holds one of its files.
 */
static int packable(const rpush *p, const rnode *n)
{
    return n->e.size > 0 && n->e.size <= p->s->stripe / 16;
}

/* Writes the current pack and logs its length. */
static int pack_flush(rpush *p, store_err *err)
{
    if (p->packbuf == NULL)
        return 0;
    uint8_t *buf = p->packbuf;
    size_t len = p->pack_len;
    rref r = p->pack;
    p->packbuf = NULL;
    p->pack_len = 0;
    p->pack.ref[0] = '\0';
    if (len == 0) {
        free(buf);
        return 0;
    }
    char oid[OID_MAX];
    if (data_oid(oid, p->l->names.prefix, r.ref, 0) != 0) {
        free(buf);
        return store_fail(err, ENAMETOOLONG, "a content object's name is too long");
    }
    int rc = aio_write(p, oid, buf, len, 0, "writing a pack of small files", err);
    if (rc != 0)
        return rc;
    r.size = len;
    r.offset = 0;
    hsp_entry e = {.kind = HSP_FILE, .mode = 0600, .size = len, .path = "pack", .path_len = 4};
    /* The pack's record goes with it, and so do those of the files in
     * it: a crash leaves no pack that no log names. */
    rc = log_put(p, LOG_PACK, &e, &r, err);
    if (rc == 0)
        rc = log_flush(p, err);
    return rc;
}

/* Gives the open file n its place at the end of the current pack. */
static int pack_place(rpush *p, rnode *n, store_err *err)
{
    if (p->packbuf != NULL && p->pack_len + n->e.size > p->s->stripe) {
        int rc = pack_flush(p, err);
        if (rc != 0)
            return rc;
    }
    if (p->packbuf == NULL) {
        p->packbuf = malloc((size_t)p->s->stripe);
        if (p->packbuf == NULL)
            return store_fail(err, ENOMEM, "out of memory");
        new_ref(p, &p->pack, 0);
        p->pack.packed = 1;
    }
    n->ref = p->pack;
    n->ref.offset = p->pack_len;
    n->ref.size = n->e.size;
    n->held = 0;
    p->pack_len += (size_t)n->e.size;
    return 0;
}

/* The open packed file n leaves the pack unfinished: its place is given
 * back (it is the pack's last), and its content will come again whole. */
static void pack_unplace(rpush *p, rnode *n)
{
    if (p->packbuf != NULL && n->ref.offset + n->e.size == p->pack_len &&
        strcmp(n->ref.ref, p->pack.ref) == 0)
        p->pack_len = (size_t)n->ref.offset;
    memset(&n->ref, 0, sizeof(n->ref));
    n->held = 0;
}

/* Writes what the open file buffers (up to the end of a stripe). */
static int buf_flush(rpush *p, store_err *err)
{
    if (p->buf_len == 0 || p->open == NULL || p->open->ref.packed)
        return 0;
    rnode *n = p->open;
    uint64_t k = p->buf_start / n->ref.stripe, in = p->buf_start % n->ref.stripe;
    char oid[OID_MAX];
    if (data_oid(oid, p->l->names.prefix, n->ref.ref, k) != 0)
        return store_fail(err, ENAMETOOLONG, "a content object's name is too long");
    void *buf = p->buf;
    size_t len = p->buf_len;
    p->buf = NULL;
    p->buf_start += len;
    p->buf_len = 0;
    char what[HSP_PATH_MAX / 8 + 64];
    snprintf(what, sizeof(what), "writing %.*s", (int)(sizeof(what) - 16), n->e.path);
    return aio_write(p, oid, buf, len, in, what, err);
}

static int r_file_open(store_push *base, uint64_t id, hsp_entry *e, char path[HSP_PATH_MAX + 1],
                       uint64_t *held, store_err *err)
{
    rpush *p = (rpush *)base;
    int rc = check_push(p, err);
    if (rc != 0)
        return rc;
    rnode *n = awaited_get(p, id);
    if (n == NULL)
        return STORE_NOT_AWAITED;
    if (n->ref.ref[0] == '\0' && packable(p, n)) {
        rc = pack_place(p, n, err);
        if (rc != 0)
            return rc;
    } else if (n->ref.ref[0] == '\0') {
        new_ref(p, &n->ref, n->e.size);
        rc = log_put(p, LOG_AWAIT, &n->e, &n->ref, err);
        /* The REF of a file of its own goes to the cluster with its
         * first content, so that a push resumed after a crash finds what
         * it staged, and nothing it wrote is left unnamed. */
        if (rc == 0)
            rc = log_flush(p, err);
        if (rc != 0)
            return rc;
    }
    *e = n->e;
    memcpy(path, n->e.path, n->e.path_len);
    path[n->e.path_len] = '\0';
    e->path = path;
    e->target = path + n->e.path_len;
    e->target_len = 0;
    *held = n->held;
    p->open = n;
    p->buf_start = n->held;
    p->buf_len = 0;
    return 0;
}

static ssize_t r_file_read(store_push *base, uint64_t offset, void *buf, size_t len, store_err *err)
{
    rpush *p = (rpush *)base;
    if (p->open == NULL)
        return store_fail(err, EBADF, "no file is open");
    rnode *n = p->open;
    if (n->ref.packed) {
        if (offset >= n->held)
            return 0;
        if (len > n->held - offset)
            len = (size_t)(n->held - offset);
        memcpy(buf, p->packbuf + n->ref.offset + offset, len);
        return (ssize_t)len;
    }
    /* What is still buffered or in flight is written first, so that the
     * read sees it. */
    int rc = buf_flush(p, err);
    if (rc == 0)
        rc = aio_drain(p, err);
    if (rc != 0)
        return rc;
    return content_read(p->s, p->l->names.prefix, &p->open->ref, p->open->held, offset, buf, len,
                        err);
}

static int r_file_write(store_push *base, uint64_t offset, const void *data, size_t len,
                        store_err *err)
{
    rpush *p = (rpush *)base;
    rnode *n = p->open;
    if (n == NULL)
        return store_fail(err, EBADF, "no file is open");
    int rc = check_push(p, err);
    if (rc != 0)
        return rc;
    if (offset != n->held || len > n->e.size - n->held)
        return store_fail(err, EINVAL, "%s: content out of order", n->e.path);
    if (n->ref.packed) {
        memcpy(p->packbuf + n->ref.offset + n->held, data, len);
        n->held += len;
        return 0;
    }
    const uint8_t *src = data;
    while (len > 0) {
        uint64_t stripe = n->ref.stripe;
        uint64_t end = (p->buf_start / stripe + 1) * stripe; /* the stripe's end */
        size_t room = (size_t)(end - (p->buf_start + p->buf_len));
        size_t take = len < room ? len : room;
        if (p->buf == NULL) {
            /* A buffer as large as the rest of the file's stripe, no more:
             * small files take little memory. */
            uint64_t want = end - p->buf_start;
            uint64_t left = n->e.size - p->buf_start;
            p->buf = malloc((size_t)(want < left ? want : left));
            if (p->buf == NULL)
                return store_fail(err, ENOMEM, "%s: out of memory", n->e.path);
        }
        memcpy(p->buf + p->buf_len, src, take);
        p->buf_len += take;
        n->held += take;
        src += take;
        len -= take;
        if (p->buf_start + p->buf_len == end) {
            rc = buf_flush(p, err);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

static int r_file_hole(store_push *base, uint64_t offset, uint64_t len, store_err *err)
{
    rpush *p = (rpush *)base;
    rnode *n = p->open;
    if (n == NULL)
        return store_fail(err, EBADF, "no file is open");
    if (offset != n->held || len > n->e.size - n->held)
        return store_fail(err, EINVAL, "%s: content out of order", n->e.path);
    if (n->ref.packed) {
        memset(p->packbuf + n->ref.offset + n->held, 0, (size_t)len);
        n->held += len;
        return 0;
    }
    int rc = buf_flush(p, err);
    if (rc != 0)
        return rc;
    /* A hole is nothing written: objects that do not reach it read as
     * zeros. */
    n->held += len;
    p->buf_start = n->held;
    return 0;
}

static int r_file_truncate(store_push *base, uint64_t size, store_err *err)
{
    rpush *p = (rpush *)base;
    rnode *n = p->open;
    if (n == NULL)
        return store_fail(err, EBADF, "no file is open");
    if (size == n->held)
        return 0;
    if (size != 0)
        return store_fail(err, EINVAL, "%s: only a truncation to 0 is supported", n->e.path);
    if (n->ref.packed) {
        /* Its place in the pack is written over. */
        n->held = 0;
        return 0;
    }
    /* Starting over: the content goes under a new REF, so that nothing of
     * the old one can be taken for it; the old objects go. */
    free(p->buf);
    p->buf = NULL;
    p->buf_len = 0;
    int rc = aio_drain(p, err);
    if (rc != 0)
        return rc;
    remove_content(p->s, p->l->names.prefix, &n->ref, n->e.size);
    new_ref(p, &n->ref, n->e.size);
    n->held = 0;
    p->buf_start = 0;
    return log_put(p, LOG_AWAIT, &n->e, &n->ref, err);
}

static int r_file_done(store_push *base, const hsp_hash *hash, store_err *err)
{
    rpush *p = (rpush *)base;
    rnode *n = p->open;
    if (n == NULL)
        return store_fail(err, EBADF, "no file is open");
    int rc = buf_flush(p, err);
    if (rc == 0 && n->held != n->e.size)
        rc = store_fail(err, EIO, "%s: %" PRIu64 " bytes of %" PRIu64, n->e.path, n->held,
                        n->e.size);
    if (rc != 0)
        return rc;
    p->open = NULL;
    rnode *a = table_remove(&p->awaited, n->text, 8);
    hsp_entry e = a->e;
    rref r = a->ref;
    /* A file without content has no object: a hole of 0 bytes. */
    rc = file_complete(p, &e, hash, &r, err);
    if (rc == 0 && !ref_in_prev(p, &e, &r))
        p->new_bytes += e.size;
    /* A large file's completion goes to the cluster now, so that a push
     * resumed after a crash does not ask for it again. */
    if (rc == 0 && e.size >= HSP_BLOCK)
        rc = log_flush(p, err);
    node_free(a);
    return rc;
}

static void r_file_close(store_push *base)
{
    rpush *p = (rpush *)base;
    store_err ignored;
    if (p->open != NULL && p->open->ref.packed)
        pack_unplace(p, p->open);
    else if (p->open != NULL)
        buf_flush(p, &ignored);
    free(p->buf);
    p->buf = NULL;
    p->buf_len = 0;
    p->open = NULL;
}

static int r_file_drop(store_push *base, uint64_t id, char path[HSP_PATH_MAX + 1], store_err *err)
{
    rpush *p = (rpush *)base;
    rnode *n = awaited_get(p, id);
    if (n == NULL)
        return STORE_NOT_AWAITED;
    memcpy(path, n->e.path, n->e.path_len);
    path[n->e.path_len] = '\0';
    if (p->open == n) {
        if (n->ref.packed)
            pack_unplace(p, n);
        free(p->buf);
        p->buf = NULL;
        p->buf_len = 0;
        p->open = NULL;
    }
    n = table_remove(&p->awaited, n->text, 8);
    if (n->ref.ref[0] != '\0' && !n->ref.packed) {
        store_err ignored;
        aio_drain(p, &ignored);
        remove_content(p->s, p->l->names.prefix, &n->ref, n->e.size);
    }
    node_free(n);
    return 0;
}

/* A snapshot id for now, after every id of the dataset. */
static void make_id(const rhead *h, char id[HSP_SNAPSHOT_MAX + 1])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char base[HSP_SNAPSHOT_MAX + 1];
    strftime(base, sizeof(base), "%Y%m%dT%H%M%SZ", &tm);
    snprintf(id, HSP_SNAPSHOT_MAX + 1, "%s", base);
    const char *latest = h->n ? h->snaps[h->n - 1].id : NULL;
    for (unsigned long k = 2; latest != NULL && id_cmp(id, latest) <= 0; k++) {
        /* A clock that went back: the latest's time, numbered after it. */
        if (strncmp(base, latest, 16) < 0)
            memcpy(base, latest, 16);
        unsigned long next = id_number(latest) + 1;
        snprintf(id, HSP_SNAPSHOT_MAX + 1, "%.16s-%lu", base,
                 strncmp(base, latest, 16) == 0 ? next : k);
    }
}

static int r_push_commit(store_push *base, uint64_t files, uint64_t bytes,
                         char id[HSP_SNAPSHOT_MAX + 1], store_problem_fn *problem, void *arg,
                         store_err *err)
{
    rpush *p = (rpush *)base;
    p->committed = 1;
    int rc = check_push(p, err);
    if (rc != 0)
        return rc;
    if (p->awaited.n > 0)
        return store_fail(err, EINVAL, "%zu files are not complete", p->awaited.n);
    /* Hard links, last: each names its target's content. */
    for (rnode *n = p->links; n != NULL && rc == 0; n = n->order) {
        rnode *t = table_get(&p->cur, n->e.target, n->e.target_len);
        if (t == NULL || t->kind != HSP_FILE || t->state != NODE_COMPLETE) {
            char text[2 * HSP_PATH_MAX / 8 + 128];
            snprintf(text, sizeof(text), "%.*s: hard link to %.*s left out: %s",
                     (int)(n->e.path_len < 400 ? n->e.path_len : 400), n->e.path,
                     (int)(n->e.target_len < 400 ? n->e.target_len : 400), n->e.target,
                     t == NULL ? "no such file in the snapshot" : "not a file");
            if (problem != NULL)
                problem(arg, text);
            continue;
        }
        hsp_entry e = n->e;
        e.hash = t->e.hash;
        rc = log_put(p, LOG_ENTRY, &e, &t->ref, err);
    }
    if (rc == 0)
        rc = pack_flush(p, err);
    if (rc == 0)
        rc = log_flush(p, err);
    /* Every object written and acknowledged before the snapshot appears. */
    if (rc == 0)
        rc = aio_drain(p, err);
    if (rc != 0)
        return rc;

    snaprec r = {.time = (int64_t)time(NULL), .files = files, .bytes = bytes};
    make_id(&p->head, r.id);
    r.log_len = p->log_total;
    r.parts = p->log_total ? p->part + 1 : 0;
    memcpy(r.token, p->token, TOKEN_LEN + 1);
    uint8_t rec[SNAPREC_LEN], usage[8];
    snaprec_encode(&r, rec);
    /* usage: the content this snapshot added, and its manifest. */
    haul__put64(usage, p->head.usage + p->new_bytes + p->log_total);
    char key[2 + HSP_SNAPSHOT_MAX + 1];
    snprintf(key, sizeof(key), "s.%s", r.id);
    const char *keys[2] = {key, "usage"};
    const char *vals[2] = {(const char *)rec, (const char *)usage};
    size_t lens[2] = {SNAPREC_LEN, 8};
    const char *rm[2] = {"stage", "stage.prev"};
    rc = head_write(p->l, keys, vals, lens, 2, rm, 2, "committing the snapshot", err);
    if (rc != 0)
        return rc;
    snprintf(id, HSP_SNAPSHOT_MAX + 1, "%s", r.id);

    /* Committed. What the interrupted push staged and this one did not
     * take is nobody's now. */
    if (p->old_token[0] != '\0') {
        const char *prefix = p->l->names.prefix;
        store_err ignored;
        rtable keep = {0}, gone = {0};
        /* A REF stays while the new snapshot or the previous one names it
         * (a pack, while they name any of its files). */
        int ok = load_refs(p->s, prefix, p->token, r.parts, &keep, &ignored) == 0;
        if (ok && p->head.n > 0) {
            const snaprec *prev = &p->head.snaps[p->head.n - 1];
            ok = load_refs(p->s, prefix, prev->token, prev->parts, &keep, &ignored) == 0;
        }
        if (ok)
            ok = load_refs(p->s, prefix, p->old_token, 0, &gone, &ignored) == 0;
        for (size_t i = 0; ok && i < gone.cap; i++)
            for (rnode *n = gone.v[i]; n != NULL; n = n->next)
                if (table_get(&keep, n->text, n->key_len) == NULL)
                    remove_content(p->s, prefix, &n->ref, n->ref.size);
        if (ok)
            remove_log(p->s, prefix, p->old_token, 0);
        table_free(&keep);
        table_free(&gone);
    }
    return 0;
}

static void r_push_end(store_push *base)
{
    rpush *p = (rpush *)base;
    store_err ignored;
    if (!p->committed && !p->failed && !lock_lost(p->l)) {
        /* An abort: everything written is waited for and the log made
         * complete, so that the next push (here or elsewhere) finds it.
         * After a failed write the cluster is not answering: what was
         * written stays, without another wait for a timeout. */
        if (p->open != NULL && p->open->ref.packed)
            pack_unplace(p, p->open);
        else if (p->open != NULL)
            buf_flush(p, &ignored);
        pack_flush(p, &ignored);
        log_flush(p, &ignored);
    }
    /* After a failure the writes still in flight wait on a cluster that
     * did not answer: they are cancelled rather than waited out. */
    if (p->failed)
        for (size_t i = 0; i < p->qn; i++)
            rados_aio_cancel(p->s->io, p->q[(p->qhead + i) % p->s->inflight].c);
    while (p->qn > 0)
        aio_reap_one(p);
    free(p->buf);
    free(p->packbuf);
    table_free(&p->cur);
    table_free(&p->awaited);
    table_free(&p->prev);
    table_free(&p->old);
    /* Hard links are in cur: freed there. */
    head_free(&p->head);
    free(p->q);
    free(p->logbuf);
    free(p);
}

/* ---- reading snapshots ------------------------------------------------------------------------
 */

typedef struct rsnap {
    store_snapshot base;
    rstore *s;
    char prefix[OID_MAX];
    snaprec rec;
    logreader lr;
    /* The entry manifest_next returned last, and where its content is. */
    char last_path[HSP_PATH_MAX + 1];
    rref last_ref;
    /* The pack read last: files are read in the order they were packed,
     * so one read serves the files of a pack. */
    char pack_ref[REF_MAX];
    uint8_t *pack;
    size_t pack_len, pack_cap;
} rsnap;

typedef struct rfile {
    store_file base;
    rsnap *snap;
    rref ref;
    uint64_t size;
    /* A file of one object is read whole when opened: one operation for
     * a small file instead of one per question. whole_len < size: the
     * rest is a hole. */
    uint8_t *whole;
    size_t whole_len;
} rfile;

static int r_snapshot_info(store *st, const store_dataset *ds, const char *id, store_info *info,
                           store_err *err);

static int r_snapshot_open(store *st, const store_dataset *ds, const char *id, store_snapshot **out,
                           store_info *info, store_err *err)
{
    rstore *s = (rstore *)st;
    rnames n;
    rhead h;
    const snaprec *r;
    int rc = snapshot_find(s, ds, id, &n, &h, &r, err);
    if (rc != 0)
        return rc;
    rsnap *snap = calloc(1, sizeof(*snap));
    if (snap == NULL || logreader_init(&snap->lr, s, n.prefix, r->token, r->parts) != 0) {
        free(snap);
        head_free(&h);
        return store_fail(err, ENOMEM, "opening the snapshot: out of memory");
    }
    snap->base.ops = st->ops;
    snap->s = s;
    snprintf(snap->prefix, sizeof(snap->prefix), "%s", n.prefix);
    snap->rec = *r;
    head_free(&h);
    snapshot_info_of(&snap->rec, info);
    *out = &snap->base;
    return 0;
}

static void r_snapshot_close(store_snapshot *base)
{
    rsnap *snap = (rsnap *)base;
    logreader_fini(&snap->lr);
    free(snap->pack);
    free(snap);
}

static int r_manifest_next(store_snapshot *base, hsp_record *rec, store_err *err)
{
    rsnap *snap = (rsnap *)base;
    logrec r;
    for (;;) {
        int rc = logreader_next(&snap->lr, &r, err);
        if (rc <= 0)
            return rc;
        if (r.type != LOG_ENTRY)
            continue;
        *rec = r.rec;
        const hsp_entry *e = &rec->entry;
        memcpy(snap->last_path, e->path, e->path_len);
        snap->last_path[e->path_len] = '\0';
        snap->last_ref = r.ref;
        return 1;
    }
}

/* Where the content of entry e is: the last entry read, or else found by
 * reading the manifest from its start. */
static int find_ref(rsnap *snap, const hsp_entry *e, rref *out, uint64_t *size, store_err *err)
{
    if (strlen(snap->last_path) == e->path_len &&
        memcmp(snap->last_path, e->path, e->path_len) == 0 && snap->last_ref.ref[0] != '\0') {
        *out = snap->last_ref;
        *size = snap->last_ref.size;
        return 0;
    }
    logreader lr;
    if (logreader_init(&lr, snap->s, snap->prefix, snap->rec.token, snap->rec.parts) != 0)
        return store_fail(err, ENOMEM, "out of memory");
    logrec r;
    int rc;
    while ((rc = logreader_next(&lr, &r, err)) == 1) {
        const hsp_entry *m = &r.rec.entry;
        if (r.type == LOG_ENTRY && m->path_len == e->path_len &&
            memcmp(m->path, e->path, e->path_len) == 0 && r.ref.ref[0] != '\0') {
            *out = r.ref;
            *size = r.ref.size;
            break;
        }
    }
    logreader_fini(&lr);
    if (rc == 0)
        return store_fail(err, ENOENT, "%.*s is not in the snapshot", (int)e->path_len, e->path);
    return rc < 0 ? rc : 0;
}

/* Reads the one object of a small file of its own into f->whole. */
static int whole_read(rsnap *snap, rfile *f, store_err *err)
{
    char oid[OID_MAX];
    if (data_oid(oid, snap->prefix, f->ref.ref, 0) != 0)
        return store_fail(err, ENAMETOOLONG, "a content object's name is too long");
    ssize_t n = read_at(snap->s, oid, f->whole, (size_t)f->size, 0);
    if (n == -ENOENT)
        n = 0;
    if (n < 0) {
        char what[OID_MAX + 32];
        snprintf(what, sizeof(what), "reading %s", oid);
        return rfail(snap->s, err, (int)n, what);
    }
    f->whole_len = (size_t)n;
    return 0;
}

/* Copies a packed file out of its pack, which is read whole unless it is
 * the one read last. */
static int pack_read(rsnap *snap, rfile *f, store_err *err)
{
    if (snap->pack == NULL || strcmp(snap->pack_ref, f->ref.ref) != 0) {
        char oid[OID_MAX];
        if (data_oid(oid, snap->prefix, f->ref.ref, 0) != 0)
            return store_fail(err, ENAMETOOLONG, "a content object's name is too long");
        if (snap->pack_cap < f->ref.stripe) {
            uint8_t *bigger = realloc(snap->pack, (size_t)f->ref.stripe);
            if (bigger == NULL)
                return store_fail(err, ENOMEM, "out of memory");
            snap->pack = bigger;
            snap->pack_cap = (size_t)f->ref.stripe;
        }
        snap->pack_ref[0] = '\0';
        ssize_t n = read_at(snap->s, oid, snap->pack, (size_t)f->ref.stripe, 0);
        if (n == -ENOENT)
            n = 0;
        if (n < 0) {
            char what[OID_MAX + 32];
            snprintf(what, sizeof(what), "reading %s", oid);
            return rfail(snap->s, err, (int)n, what);
        }
        snap->pack_len = (size_t)n;
        snprintf(snap->pack_ref, sizeof(snap->pack_ref), "%s", f->ref.ref);
    }
    /* What the pack lacks (a damaged pack) reads as zeros: the hash says so. */
    size_t have = f->ref.offset < snap->pack_len ? snap->pack_len - (size_t)f->ref.offset : 0;
    if (have > f->size)
        have = (size_t)f->size;
    memcpy(f->whole, snap->pack + f->ref.offset, have);
    memset(f->whole + have, 0, (size_t)f->size - have);
    f->whole_len = (size_t)f->size;
    return 0;
}

static int r_file_open_read(store_snapshot *base, const hsp_entry *e, store_file **out,
                            uint64_t *size, store_err *err)
{
    rsnap *snap = (rsnap *)base;
    rfile *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    uint64_t manifest_size = 0;
    int rc = find_ref(snap, e, &f->ref, &manifest_size, err);
    if (rc != 0) {
        free(f);
        return rc;
    }
    /* The size is the manifest's: content objects end where the data
     * does, and a file's trailing hole has none. A missing or damaged
     * object shows in the content's hash. */
    f->base.ops = base->ops;
    f->snap = snap;
    f->size = manifest_size;
    if (f->size > 0 && (f->ref.packed || f->size <= f->ref.stripe)) {
        f->whole = malloc((size_t)f->size);
        if (f->whole == NULL) {
            free(f);
            return store_fail(err, ENOMEM, "out of memory");
        }
        rc = f->ref.packed ? pack_read(snap, f, err) : whole_read(snap, f, err);
        if (rc != 0) {
            free(f->whole);
            free(f);
            return rc;
        }
    }
    *size = f->size;
    *out = &f->base;
    return 0;
}

static ssize_t r_file_pread(store_file *base, uint64_t offset, void *buf, size_t len,
                            store_err *err)
{
    rfile *f = (rfile *)base;
    if (f->whole != NULL) {
        if (offset >= f->size)
            return 0;
        if (len > f->size - offset)
            len = (size_t)(f->size - offset);
        size_t have = offset < f->whole_len ? f->whole_len - (size_t)offset : 0;
        if (have > len)
            have = len;
        memcpy(buf, f->whole + offset, have);
        memset((uint8_t *)buf + have, 0, len - have);
        return (ssize_t)len;
    }
    return content_read(f->snap->s, f->snap->prefix, &f->ref, f->size, offset, buf, len, err);
}

/*
 * Holes are where no object is, and after an object's end within its
 * stripe: a sparse file pushed with holes comes back sparse. Holes inside
 * an object's data read as data (zeros). One stat per object looked at.
 */
static int r_file_data(store_file *base, uint64_t offset, uint64_t *data, uint64_t *end,
                       store_err *err)
{
    rfile *f = (rfile *)base;
    if (f->whole != NULL || f->size == 0) {
        *data = offset < f->whole_len ? offset : f->size;
        *end = offset < f->whole_len ? f->whole_len : f->size;
        return 0;
    }
    const uint64_t stripe = f->ref.stripe;
    for (uint64_t at = offset; at < f->size;) {
        uint64_t k = at / stripe, start = k * stripe;
        char oid[OID_MAX];
        if (data_oid(oid, f->snap->prefix, f->ref.ref, k) != 0)
            return store_fail(err, ENAMETOOLONG, "a content object's name is too long");
        uint64_t osize = 0;
        time_t mtime;
        int rc = rados_stat(f->snap->s->io, oid, &osize, &mtime);
        if (rc < 0 && rc != -ENOENT) {
            char what[OID_MAX + 32];
            snprintf(what, sizeof(what), "looking at %s", oid);
            return rfail(f->snap->s, err, rc, what);
        }
        if (rc == 0 && at < start + osize) {
            *data = at;
            *end = start + osize < f->size ? start + osize : f->size;
            return 0;
        }
        at = start + stripe;
    }
    *data = f->size;
    *end = f->size;
    return 0;
}

static void r_file_close_read(store_file *base)
{
    rfile *f = (rfile *)base;
    free(f->whole);
    free(f);
}

static int r_check_entry(store_snapshot *base, const hsp_entry *e, char *why, size_t size)
{
    /* Directories, symlinks and hard links are records of the manifest,
     * which was read to get here: nothing else in the cluster to check. */
    return 0;
}

/* ---- listing, deleting, usage ------------------------------------------------------------ */

static int omap_keys(rstore *s, const char *oid, store_names *out, store_err *err)
{
    char after[512] = "";
    for (;;) {
        rados_read_op_t op = rados_create_read_op();
        rados_omap_iter_t it = NULL;
        unsigned char more = 0;
        int prval = 0;
        rados_read_op_omap_get_keys2(op, after, 1000, &it, &more, &prval);
        int rc = rados_read_op_operate(op, s->io, oid, 0);
        if (rc == 0 && prval < 0)
            rc = prval;
        if (rc < 0) {
            if (it != NULL)
                rados_omap_get_end(it);
            rados_release_read_op(op);
            if (rc == -ENOENT)
                return 0;
            return rfail(s, err, rc, "listing datasets");
        }
        char *key, *val;
        size_t klen, vlen;
        while (rados_omap_get_next2(it, &key, &val, &klen, &vlen) == 0 && key != NULL) {
            if (klen >= sizeof(after))
                continue;
            memcpy(after, key, klen);
            after[klen] = '\0';
            if (names_add(out, key, klen) != 0) {
                rados_omap_get_end(it);
                rados_release_read_op(op);
                return store_fail(err, ENOMEM, "listing datasets: out of memory");
            }
        }
        rados_omap_get_end(it);
        rados_release_read_op(op);
        if (!more)
            return 0;
    }
}

static int r_list_datasets(store *st, const char *ns, store_names *out, store_err *err)
{
    rstore *s = (rstore *)st;
    char oid[OID_MAX];
    memset(out, 0, sizeof(*out));
    if (oidf(oid, "haul/%s/.datasets", ns) != 0)
        return store_fail(err, ENAMETOOLONG, "the namespace %s is too long for RADOS", ns);
    int rc = omap_keys(s, oid, out, err);
    if (rc != 0) {
        store_names_free(out);
        return rc;
    }
    if (out->n > 1)
        qsort(out->v, out->n, sizeof(*out->v), name_cmp_p);
    return 0;
}

static int r_list_snapshots(store *st, const store_dataset *ds, store_names *out, store_err *err)
{
    rstore *s = (rstore *)st;
    memset(out, 0, sizeof(*out));
    rnames n;
    int rc = names_of(ds, &n, err);
    if (rc != 0)
        return rc;
    rhead h;
    rc = head_read(s, n.head, &h, err);
    if (rc == -ENOENT)
        return 0;
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < h.n && rc == 0; i++)
        if (names_add(out, h.snaps[i].id, strlen(h.snaps[i].id)) != 0)
            rc = store_fail(err, ENOMEM, "listing snapshots: out of memory");
    head_free(&h);
    if (rc != 0)
        store_names_free(out);
    else if (out->n > 1)
        qsort(out->v, out->n, sizeof(*out->v), id_cmp_p);
    return rc;
}

static int r_snapshot_info(store *st, const store_dataset *ds, const char *id, store_info *info,
                           store_err *err)
{
    rstore *s = (rstore *)st;
    rnames n;
    rhead h;
    const snaprec *r;
    int rc = snapshot_find(s, ds, id, &n, &h, &r, err);
    if (rc != 0)
        return rc;
    snapshot_info_of(r, info);
    head_free(&h);
    return 0;
}

static int r_snapshot_delete(store_lock *base, const char *id, store_info *info, uint64_t *freed,
                             store_err *err)
{
    rlock *l = (rlock *)base;
    rstore *s = l->s;
    *freed = 0;
    rhead h;
    int rc = head_read(s, l->names.head, &h, err);
    if (rc == -ENOENT)
        return store_fail(err, ENOENT, "no dataset %s", l->names.name);
    if (rc != 0)
        return rc;
    const snaprec *found = head_find(&h, id);
    if (found == NULL || id[0] == '\0') {
        head_free(&h);
        return store_fail(err, ENOENT, "no snapshot %s", id);
    }
    snaprec r = *found;
    memset(info, 0, sizeof(*info));
    snprintf(info->id, sizeof(info->id), "%s", r.id);
    info->time = r.time;
    info->files = r.files;
    info->bytes = r.bytes;

    /* One write takes the snapshot out of the index and notes what is
     * left to free, so that a crash between the two frees it later. */
    char key[2 + HSP_SNAPSHOT_MAX + 1], gckey[3 + TOKEN_LEN + 1], gcval[128];
    snprintf(key, sizeof(key), "s.%s", r.id);
    snprintf(gckey, sizeof(gckey), "gc.%s", r.token);
    snprintf(gcval, sizeof(gcval), "%s %" PRIu32 " %s", r.token, r.parts, r.id);
    const char *k = gckey, *v = gcval, *rm = key;
    size_t len = strlen(gcval);
    rc = head_write(l, &k, &v, &len, 1, &rm, 1, "deleting the snapshot", err);
    if (rc != 0) {
        head_free(&h);
        return rc;
    }
    /* The index without it: its neighbours are the snapshots around it. */
    size_t w = 0;
    for (size_t i = 0; i < h.n; i++)
        if (strcmp(h.snaps[i].id, r.id) != 0)
            h.snaps[w++] = h.snaps[i];
    h.n = w;
    store_err soft;
    rc = free_snapshot(s, l->names.prefix, &h, r.token, r.parts, r.id, freed, &soft);
    if (rc != 0) {
        slog(s, HAUL_LOG_WARN, "rados: freeing snapshot %s: %s (a later push or delete frees it)",
             r.id, soft.text);
        *freed = 0;
    } else {
        uint8_t usage[8];
        haul__put64(usage, h.usage > *freed ? h.usage - *freed : 0);
        const char *uk = "usage", *uv = (const char *)usage, *urm = gckey;
        size_t ul = 8;
        if (head_write(l, &uk, &uv, &ul, 1, &urm, 1, "deleting the snapshot", &soft) != 0)
            slog(s, HAUL_LOG_WARN, "rados: recording the delete of %s: %s", r.id, soft.text);
    }
    head_free(&h);
    return 0;
}

static int r_usage(store *st, const char *ns, uint64_t *bytes, store_err *err)
{
    rstore *s = (rstore *)st;
    *bytes = 0;
    store_names names;
    int rc = r_list_datasets(st, ns, &names, err);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < names.n && rc == 0; i++) {
        store_dataset ds = {.ns = ns, .name = names.v[i]};
        rnames n;
        rc = names_of(&ds, &n, err);
        if (rc != 0)
            break;
        rhead h;
        rc = head_read(s, n.head, &h, err);
        if (rc == -ENOENT) {
            rc = 0;
            continue;
        }
        if (rc == 0)
            *bytes += h.usage;
        head_free(&h);
    }
    store_names_free(&names);
    return rc;
}

/* ---- opening ----------------------------------------------------------------------------------
 */

/* Reads "POOL[,stripe=BYTES][,inflight=N][,inflight_mib=M][,lease=S][,timeout=S]"; lease
 * and timeout override store_options. */
static int parse_spec(rstore *s, const char *spec, store_err *err)
{
    const char *comma = strchr(spec, ',');
    size_t plen = comma ? (size_t)(comma - spec) : strlen(spec);
    if (plen == 0 || plen >= sizeof(s->pool))
        return store_fail(err, EINVAL, "rados:%s: a pool name is needed", spec);
    memcpy(s->pool, spec, plen);
    s->pool[plen] = '\0';
    while (comma != NULL) {
        const char *opt = comma + 1;
        comma = strchr(opt, ',');
        size_t olen = comma ? (size_t)(comma - opt) : strlen(opt);
        char text[64];
        if (olen >= sizeof(text))
            return store_fail(err, EINVAL, "rados:%s: option too long", spec);
        memcpy(text, opt, olen);
        text[olen] = '\0';
        char *end = NULL;
        unsigned long long v;
        if (strncmp(text, "stripe=", 7) == 0) {
            v = strtoull(text + 7, &end, 10);
            if (end != NULL && (*end == 'k' || *end == 'K'))
                v <<= 10, end++;
            else if (end != NULL && (*end == 'm' || *end == 'M'))
                v <<= 20, end++;
            if (end == text + 7 || *end != '\0' || v < STRIPE_MIN || v > STRIPE_MAX)
                return store_fail(err, EINVAL, "rados: stripe=%s: from 64K to 64M", text + 7);
            s->stripe = v;
        } else if (strncmp(text, "inflight=", 9) == 0) {
            v = strtoull(text + 9, &end, 10);
            if (end == text + 9 || *end != '\0' || v < 1 || v > INFLIGHT_MAX)
                return store_fail(err, EINVAL, "rados: inflight=%s: from 1 to %d", text + 9,
                                  INFLIGHT_MAX);
            s->inflight = (unsigned)v;
        } else if (strncmp(text, "inflight_mib=", 13) == 0) {
            v = strtoull(text + 13, &end, 10);
            if (end == text + 13 || *end != '\0' || v < 1 || v > 4096)
                return store_fail(err, EINVAL, "rados: inflight_mib=%s: from 1 to 4096", text + 13);
            s->inflight_bytes = v << 20;
        } else if (strncmp(text, "lease=", 6) == 0 || strncmp(text, "timeout=", 8) == 0) {
            const char *num = strchr(text, '=') + 1;
            v = strtoull(num, &end, 10);
            if (end == num || *end != '\0' || v < 1 || v > 3600)
                return store_fail(err, EINVAL, "rados: %s: seconds, from 1 to 3600", text);
            if (text[0] == 'l')
                s->lease_s = (unsigned)v;
            else
                s->op_timeout_s = (unsigned)v;
        } else {
            return store_fail(err, EINVAL,
                              "rados: unknown option %s (stripe=, inflight=, inflight_mib=, "
                              "lease=, timeout=)",
                              text);
        }
    }
    return 0;
}

static int r_open(const char *spec, const store_options *opt, store **out, store_err *err)
{
    rstore *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return store_fail(err, ENOMEM, "opening the RADOS store: out of memory");
    s->base.ops = &store_rados_ops;
    s->stripe = STRIPE_DEFAULT;
    s->inflight = INFLIGHT_DEFAULT;
    s->lease_s = opt && opt->lease_s ? opt->lease_s : LEASE_DEFAULT;
    s->op_timeout_s = opt && opt->op_timeout_s ? opt->op_timeout_s : OP_TIMEOUT_DEFAULT;
    s->log = opt ? opt->log : NULL;
    s->log_arg = opt ? opt->log_arg : NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->idle, NULL);
    int rc = parse_spec(s, spec, err);
    if (rc != 0) {
        free(s);
        return rc;
    }
    if (s->inflight_bytes == 0)
        s->inflight_bytes = 16 * s->stripe;
    const char *conf = opt && opt->ceph_conf ? opt->ceph_conf : "/etc/ceph/ceph.conf";
    const char *id = opt && opt->ceph_id ? opt->ceph_id : "admin";
    char user[256];
    snprintf(user, sizeof(user), "client.%s", id);
    rc = rados_create2(&s->cluster, "ceph", user, 0);
    if (rc < 0) {
        free(s);
        return store_fail(err, -rc, "rados: cannot make a client %s: %s", user, strerror(-rc));
    }
    rc = rados_conf_read_file(s->cluster, conf);
    if (rc < 0) {
        rados_shutdown(s->cluster);
        free(s);
        return store_fail(err, -rc, "rados: reading %s: %s", conf, strerror(-rc));
    }
    /* Every operation is bounded: without these, one on a dead OSD or
     * monitor waits for ever. */
    char t[32];
    snprintf(t, sizeof(t), "%u", s->op_timeout_s);
    const char *bounds[] = {"rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"};
    for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); i++) {
        rc = rados_conf_set(s->cluster, bounds[i], t);
        if (rc < 0) {
            rados_shutdown(s->cluster);
            free(s);
            return store_fail(err, -rc, "rados: setting %s: %s", bounds[i], strerror(-rc));
        }
    }
    rc = rados_connect(s->cluster);
    if (rc < 0) {
        rados_shutdown(s->cluster);
        free(s);
        return store_fail(err, -rc, "rados: connecting to the cluster of %s as %s: %s", conf, user,
                          strerror(-rc));
    }
    rc = rados_ioctx_create(s->cluster, s->pool, &s->io);
    if (rc < 0) {
        rados_shutdown(s->cluster);
        int code = -rc;
        free(s);
        if (code == ENOENT)
            return store_fail(err, ENOENT, "rados: the cluster has no pool %s", spec);
        return store_fail(err, code, "rados: opening pool %s: %s", spec, strerror(code));
    }
    *out = &s->base;
    return 0;
}

static void r_close(store *st)
{
    rstore *s = (rstore *)st;
    pthread_mutex_lock(&s->mu);
    while (s->renewers > 0)
        pthread_cond_wait(&s->idle, &s->mu);
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->mu);
    rados_ioctx_destroy(s->io);
    rados_shutdown(s->cluster);
    free(s);
}

/*
 * ThreadSanitizer: librados and libceph-common are not built with it, and
 * their threads share objects through synchronisation it cannot see, which
 * it reports as races inside them. Reports whose stacks pass through
 * those libraries are suppressed; haul's own threads are checked as ever.
 */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HAUL_RADOS_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) || defined(HAUL_RADOS_TSAN)
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:libceph-common.so\n"
           "race:librados.so\n"
           "mutex:libceph-common.so\n"
           "deadlock:libceph-common.so\n"
           "thread:libceph-common.so\n"
           "signal:libceph-common.so\n";
}
#endif

const store_ops store_rados_ops = {
    .name = "rados",
    .open = r_open,
    .close = r_close,
    .dataset_exists = r_dataset_exists,
    .lock = r_lock,
    .unlock = r_unlock,
    .push_begin = r_push_begin,
    .put_dir = r_put_dir,
    .put_symlink = r_put_symlink,
    .put_hardlink = r_put_hardlink,
    .file_resumed = r_file_resumed,
    .file_link_previous = r_file_link_previous,
    .file_await = r_file_await,
    .file_open = r_file_open,
    .file_read = r_file_read,
    .file_write = r_file_write,
    .file_hole = r_file_hole,
    .file_truncate = r_file_truncate,
    .file_done = r_file_done,
    .file_close = r_file_close,
    .file_drop = r_file_drop,
    .push_commit = r_push_commit,
    .push_end = r_push_end,
    .snapshot_open = r_snapshot_open,
    .snapshot_close = r_snapshot_close,
    .manifest_next = r_manifest_next,
    .file_open_read = r_file_open_read,
    .file_pread = r_file_pread,
    .file_data = r_file_data,
    .file_close_read = r_file_close_read,
    .check_entry = r_check_entry,
    .list_datasets = r_list_datasets,
    .list_snapshots = r_list_snapshots,
    .snapshot_info = r_snapshot_info,
    .snapshot_delete = r_snapshot_delete,
    .usage = r_usage,
};
