/*
 * push.c - PUSH: a tree arrives and becomes a new snapshot of a dataset
 * (docs/store-protocol.md, "PUSH").
 *
 * This file speaks the protocol: entry ids in sequence, the HAVE and NEED
 * answers, content checked against its hash, files asked for again, the
 * quota, the problems reported with the RESULT, a take-over. Everything
 * stored goes through the store interface (store/store.h): the dataset's
 * lock, the staging of the snapshot being written (kept by the store, by
 * entry id, so that memory does not grow with the number of files), the
 * reuse of what an interrupted push staged, links to the previous
 * snapshot's unchanged files, and the atomic commit.
 *
 * Any error of the store ends the push with a RESULT naming it; what was
 * staged stays for the next push, which resumes it: a file that was
 * complete is not sent again, and a partial one continues from where it
 * stopped.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hauld/server.h"
#include "proto/compress.h"
#include "store/store.h"

/* A push's answer to DONE with the wrong hash is NEED from 0, this many
 * times at most; then the push fails. */
#define MAX_ATTEMPTS 3
/* Files asked for again at once (their content arrived damaged); beyond
 * these the push fails, since so much damage means a broken client or
 * link. */
#define RETRIES_MAX 4096
/* Problems (skipped files, hard links left out) reported with the
 * RESULT; beyond these, only a count. */
#define PROBLEMS_MAX 256
#define PROBLEMS_BYTES (64u << 10)
/* Reply messages of a push are small: HAVE and NEED records. */
#define REPLY_MESSAGE (64u << 10)
/* Messages taken from the input per step. */
#define STEP_MESSAGES 32
/* The staged prefix of a resumed file is hashed through a buffer of this
 * size. */
#define PREFIX_BUFFER (256u << 10)

enum { P_RUNNING, P_FAILED, P_DONE };

/* A file whose content arrived damaged, and how often. */
typedef struct retry {
    uint64_t id;
    unsigned attempts;
} retry;

typedef struct push {
    int state;
    int busy; /* in the server's busy set */
    store_lock *lock;
    store_push *sp;
    store_push_info info;
    XXH3_state_t *hash; /* of the file being received */
    /* The quota (r->who.quota): what the namespace held when the push
     * began, and the bytes of content this push has asked for since. */
    uint64_t usage, added;
    struct timespec started;

    uint64_t nentries, outstanding;
    uint64_t files, bytes, bytes_sent, bytes_linked, skipped, resumed;
    int commit_asked;
    /* What push_open() could not do in the store, for push_start() to
     * report (0: nothing). */
    int open_err;
    store_err open_why;

    /* The file whose content is arriving. */
    struct {
        int open;
        uint64_t id, next;
        hsp_entry e;
        char path[HSP_PATH_MAX + 1];
    } cur;

    retry *retries;
    size_t nretries;

    char *problems; /* NUL-separated texts */
    size_t problems_len;
    unsigned nproblems, problems_dropped;

    /* The request asked for compression (HSP_F_COMPRESS): what expands
     * the compressed messages; NULL otherwise, and such a message is then
     * a protocol error. Its memory is counted in the engine's budget
     * (zstd_reserved bytes) while the push lives. */
    hsp_zstd *zstd;
    uint64_t zstd_reserved;
} push;

static void push_fini(request *r);
static int push_step(request *r);

static const request_ops push_ops = {"push", push_step, push_fini};

/* ---- helpers ------------------------------------------------------------------- */

static void path_text(const char *path, size_t len, char *out, size_t size)
{
    hsp_path_text(path, len, out, size);
}

/* Ends what the push writes in the store (the lock aside:
 * release_dataset() drops it). Once the dataset is released, the next
 * push owns the staging area, so this comes first. Idempotent. */
static void close_staging(push *p)
{
    if (p->sp)
        store_push_end(p->sp);
    p->sp = NULL;
    p->cur.open = 0;
}

static void add_problem(push *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add_problem(push *p, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = strlen(text) + 1;
    if (p->nproblems >= PROBLEMS_MAX || p->problems_len + len > PROBLEMS_BYTES) {
        p->problems_dropped++;
        return;
    }
    if (p->problems == NULL && (p->problems = malloc(PROBLEMS_BYTES)) == NULL) {
        p->problems_dropped++;
        return;
    }
    memcpy(p->problems + p->problems_len, text, len);
    p->problems_len += len;
    p->nproblems++;
}

static void send_problems(request *r, push *p)
{
    for (size_t off = 0; off < p->problems_len;) {
        const char *text = p->problems + off;
        size_t len = strlen(text);
        if (out_room(r, len) == 0)
            hsp_put_text(&r->w, HSP_PROBLEM, text, len);
        off += len + 1;
    }
    if (p->problems_dropped) {
        char text[128];
        snprintf(text, sizeof(text), "and %u more problems", p->problems_dropped);
        if (out_room(r, strlen(text)) == 0)
            hsp_put_text(&r->w, HSP_PROBLEM, text, strlen(text));
    }
}

/* Lets go of the dataset: another push may start. */
static void release_dataset(request *r, push *p)
{
    if (p->lock)
        store_unlock(p->lock);
    p->lock = NULL;
    if (p->busy) {
        server_busy_remove(r);
        p->busy = 0;
    }
}

/*
 * Ends the push with a RESULT carrying err and a sentence. What is
 * staged stays for the next push of the dataset. Further input is
 * dropped until the session closes.
 */
static void push_fail(request *r, push *p, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void push_fail(request *r, push *p, int err, const char *fmt, ...)
{
    if (p->state != P_RUNNING)
        return;
    char text[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    p->state = P_FAILED;
    /* Nothing of the staging area stays open: once the dataset is
     * released, the next push (perhaps already there, taking over) owns
     * it. */
    close_staging(p);
    release_dataset(r, p);
    request_log(r, HAUL_LOG_WARN, "push failed: %s (what is staged is kept for a later push)",
                text);
    send_problems(r, p);
    request_result(r, err ? err : EIO, NULL, p->files, p->bytes, p->bytes_sent, p->bytes_linked,
                   "%s; what arrived is kept on the server, and the next push resumes it", text);
}

/* Fails the push for an error of the store (rc < 0, why), in the store's
 * words. */
static void store_failed(request *r, push *p, int rc, const store_err *why)
{
    push_fail(r, p, -rc, "%s", why->text);
}

/* Fails the push for an error of the store on an entry's path, in words
 * that say what probably went wrong. */
static void path_fail(request *r, push *p, int rc, const char *path, const store_err *why)
{
    char t[1024];
    path_text(path, strlen(path), t, sizeof(t));
    switch (-rc) {
    case ENOENT:
    case ENOTDIR:
        push_fail(r, p, -rc,
                  "%s: its directory is missing (every directory must be sent before "
                  "what it holds)",
                  t);
        break;
    case ELOOP:
        push_fail(r, p, -rc, "%s: a symlink of the tree is in its way", t);
        break;
    case EEXIST:
    case EISDIR:
        push_fail(r, p, EEXIST, "%s: sent twice", t);
        break;
    default:
        store_failed(r, p, rc, why);
    }
}

/* Three-way outcome of a handler: go on, the peer broke the protocol
 * (r->why says how: end the session), or the push failed (RESULT sent). */
enum { GO = 0, BAD = -1, FAILED = 1 };

static int bad(request *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(request *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
    return BAD;
}

/* ---- entries ------------------------------------------------------------------------ */

/* Counts bytes this push is about to ask for against the principal's
 * quota: the push fails before they are sent when they would not fit. */
static int quota_take(request *r, push *p, uint64_t bytes)
{
    uint64_t quota = r->who.quota;
    if (quota == 0)
        return GO;
    if (p->usage + p->added + bytes > quota) {
        push_fail(r, p, EDQUOT,
                  "the quota of principal %s would be exceeded: it may store %llu bytes, its "
                  "namespace holds %llu, and this push needs %llu more",
                  r->principal, (unsigned long long)quota, (unsigned long long)p->usage,
                  (unsigned long long)(p->added + bytes));
        return FAILED;
    }
    p->added += bytes;
    return GO;
}

static int entry_file(request *r, push *p, const hsp_entry *e, const char *path)
{
    store_err why;
    hsp_hash hash;
    uint64_t from = 0;
    int found = store_file_resumed(p->sp, e, &hash, &from, &why);
    if (found == STORE_NOTHING) {
        int linked = store_file_link_previous(p->sp, e, &hash, &why);
        found = linked > 0 ? STORE_COMPLETE : linked;
    }
    if (found < 0) {
        path_fail(r, p, found, path, &why);
        return FAILED;
    }
    if (out_room(r, 32) < 0) {
        push_fail(r, p, ENOMEM, "out of memory");
        return FAILED;
    }
    if (found == STORE_COMPLETE) {
        hsp_put_id(&r->w, HSP_HAVE, e->id);
        p->files++;
        p->bytes += e->size;
        p->bytes_linked += e->size;
        return GO;
    }
    if (quota_take(r, p, e->size - from) != GO)
        return FAILED;
    if (found == STORE_PARTIAL) {
        /* The store awaits the rest already. */
        hsp_put_need(&r->w, e->id, from, &hash);
        p->resumed++;
    } else {
        int rc = store_file_await(p->sp, e, &why);
        if (rc < 0) {
            store_failed(r, p, rc, &why);
            return FAILED;
        }
        hsp_put_need(&r->w, e->id, 0, NULL);
    }
    p->outstanding++;
    return GO;
}

static int on_entry(request *r, push *p, const hsp_entry *e)
{
    if (p->commit_asked)
        return bad(r, "an ENTRY after COMMIT");
    if (e->id != p->nentries)
        return bad(r, "entry id %llu out of order (expected %llu)", (unsigned long long)e->id,
                   (unsigned long long)p->nentries);
    p->nentries++;
    char path[HSP_PATH_MAX + 1];
    memcpy(path, e->path, e->path_len);
    path[e->path_len] = '\0';
    store_err why;
    int rc;
    switch (e->kind) {
    case HSP_DIR:
        rc = store_put_dir(p->sp, e, &why);
        break;
    case HSP_SYMLINK:
        rc = store_put_symlink(p->sp, e, &why);
        break;
    case HSP_HARDLINK:
        /* Made at COMMIT, when their targets are all there. */
        rc = store_put_hardlink(p->sp, e, &why);
        if (rc < 0) {
            store_failed(r, p, rc, &why);
            return FAILED;
        }
        return GO;
    case HSP_FILE:
        return entry_file(r, p, e, path);
    default:
        return bad(r, "an entry of unknown kind %d", e->kind);
    }
    if (rc < 0) {
        path_fail(r, p, rc, path, &why);
        return FAILED;
    }
    return GO;
}

/* ---- file content --------------------------------------------------------------------- */

/* Feeds the staged bytes [0, len) of the open file into the hash. */
static int hash_staged(request *r, push *p, uint64_t len)
{
    uint8_t *buf = malloc(PREFIX_BUFFER);
    if (buf == NULL) {
        push_fail(r, p, ENOMEM, "out of memory");
        return FAILED;
    }
    store_err why;
    for (uint64_t pos = 0; pos < len;) {
        size_t want = len - pos < PREFIX_BUFFER ? (size_t)(len - pos) : PREFIX_BUFFER;
        ssize_t n = store_file_read(p->sp, pos, buf, want, &why);
        if (n <= 0) {
            free(buf);
            if (n == 0)
                push_fail(r, p, EIO, "reading what is staged of %s: it ended early", p->cur.path);
            else
                store_failed(r, p, (int)n, &why);
            return FAILED;
        }
        XXH3_128bits_update(p->hash, buf, (size_t)n);
        pos += (uint64_t)n;
    }
    free(buf);
    return GO;
}

/*
 * Opens the awaited file of an entry id when its first record arrives.
 * offset is where that record starts: 0 (anything staged is dropped) or
 * the size of what is staged (a resumed file: the hash starts over the
 * staged prefix). A DONE with nothing before it (done set) takes the
 * staged content as it is.
 */
static int cur_open(request *r, push *p, uint64_t id, uint64_t offset, int done)
{
    store_err why;
    uint64_t held = 0;
    int rc = store_file_open(p->sp, id, &p->cur.e, p->cur.path, &held, &why);
    if (rc == STORE_NOT_AWAITED)
        return bad(r, "content or SKIP for entry %llu, which the server did not ask for",
                   (unsigned long long)id);
    if (rc < 0) {
        path_fail(r, p, rc, p->cur.path, &why);
        return FAILED;
    }
    p->cur.open = 1;
    p->cur.id = id;
    if (done)
        offset = held;
    XXH3_128bits_reset(p->hash);
    if (offset == 0) {
        if (held > 0 && (rc = store_file_truncate(p->sp, 0, &why)) < 0) {
            store_failed(r, p, rc, &why);
            return FAILED;
        }
    } else if (offset == held) {
        if (hash_staged(r, p, held) != GO)
            return FAILED;
    } else {
        char t[1024];
        path_text(p->cur.path, strlen(p->cur.path), t, sizeof(t));
        return bad(r, "the content of %s starts at %llu, but the server holds %llu bytes", t,
                   (unsigned long long)offset, (unsigned long long)held);
    }
    p->cur.next = offset;
    return GO;
}

/* Checks a DATA or HOLE record against the file in progress, opening it
 * if it is the first. */
static int cur_take(request *r, push *p, uint64_t id, uint64_t offset, uint64_t len)
{
    if (p->cur.open && p->cur.id != id)
        return bad(r, "content of entry %llu arrived while entry %llu was incomplete",
                   (unsigned long long)id, (unsigned long long)p->cur.id);
    if (!p->cur.open) {
        int rc = cur_open(r, p, id, offset, 0);
        if (rc != GO)
            return rc;
    }
    if (offset == 0 && p->cur.next > 0) {
        /* The client starts the file over (its prefix did not match). */
        store_err why;
        int rc = store_file_truncate(p->sp, 0, &why);
        if (rc < 0) {
            store_failed(r, p, rc, &why);
            return FAILED;
        }
        XXH3_128bits_reset(p->hash);
        p->cur.next = 0;
    }
    char t[1024];
    if (offset != p->cur.next) {
        path_text(p->cur.path, strlen(p->cur.path), t, sizeof(t));
        return bad(r, "content of %s at offset %llu, expected %llu", t, (unsigned long long)offset,
                   (unsigned long long)p->cur.next);
    }
    if (len > p->cur.e.size - offset) {
        path_text(p->cur.path, strlen(p->cur.path), t, sizeof(t));
        return bad(r, "more content for %s than its size of %llu bytes", t,
                   (unsigned long long)p->cur.e.size);
    }
    return GO;
}

static int on_data(request *r, push *p, const hsp_record *rec)
{
    int rc = cur_take(r, p, rec->id, rec->offset, rec->data_len);
    if (rc != GO)
        return rc;
    store_err why;
    if ((rc = store_file_write(p->sp, rec->offset, rec->data, rec->data_len, &why)) < 0) {
        store_failed(r, p, rc, &why);
        return FAILED;
    }
    XXH3_128bits_update(p->hash, rec->data, rec->data_len);
    p->cur.next += rec->data_len;
    p->bytes_sent += rec->data_len;
    return GO;
}

static int on_hole(request *r, push *p, const hsp_record *rec)
{
    int rc = cur_take(r, p, rec->id, rec->offset, rec->length);
    if (rc != GO)
        return rc;
    store_err why;
    if ((rc = store_file_hole(p->sp, rec->offset, rec->length, &why)) < 0) {
        store_failed(r, p, rc, &why);
        return FAILED;
    }
    hsp_hash_zeros(p->hash, rec->length);
    p->cur.next += rec->length;
    return GO;
}

/* Counts one more damaged arrival of a file: its number of attempts so
 * far, or 0 when no more files can be tracked. */
static unsigned retry_count(push *p, uint64_t id)
{
    for (size_t i = 0; i < p->nretries; i++)
        if (p->retries[i].id == id)
            return ++p->retries[i].attempts;
    if (p->nretries >= RETRIES_MAX)
        return 0;
    if (p->nretries % 64 == 0) {
        retry *v = realloc(p->retries, (p->nretries + 64) * sizeof(*v));
        if (v == NULL)
            return 0;
        p->retries = v;
    }
    p->retries[p->nretries++] = (retry){id, 1};
    return 1;
}

static int on_done(request *r, push *p, const hsp_record *rec)
{
    if (p->cur.open && p->cur.id != rec->id)
        return bad(r, "DONE of entry %llu while entry %llu was incomplete",
                   (unsigned long long)rec->id, (unsigned long long)p->cur.id);
    if (!p->cur.open) {
        int rc = cur_open(r, p, rec->id, 0, 1);
        if (rc != GO)
            return rc;
    }
    hsp_hash got;
    hsp_hash_digest(p->hash, &got);
    hsp_entry *e = &p->cur.e;
    if (p->cur.next != e->size || !hsp_hash_equal(&got, &rec->hash)) {
        char t[1024];
        path_text(p->cur.path, strlen(p->cur.path), t, sizeof(t));
        store_file_close(p->sp);
        p->cur.open = 0;
        unsigned attempts = retry_count(p, rec->id);
        if (attempts == 0) {
            push_fail(r, p, EIO, "%s: too many files arrived damaged (checksum mismatch)", t);
            return FAILED;
        }
        if (attempts >= MAX_ATTEMPTS) {
            push_fail(r, p, EIO, "%s: its content arrived damaged %d times (checksum mismatch)", t,
                      MAX_ATTEMPTS);
            return FAILED;
        }
        request_log(r, HAUL_LOG_WARN,
                    "%s: %llu of %llu bytes arrived and their checksum does not match the "
                    "client's; asking for the file again",
                    t, (unsigned long long)p->cur.next, (unsigned long long)e->size);
        if (out_room(r, 32) < 0) {
            push_fail(r, p, ENOMEM, "out of memory");
            return FAILED;
        }
        hsp_put_need(&r->w, rec->id, 0, NULL);
        return GO;
    }
    /* Complete and checked. */
    store_err why;
    int rc = store_file_done(p->sp, &got, &why);
    p->cur.open = 0;
    if (rc < 0) {
        store_failed(r, p, rc, &why);
        return FAILED;
    }
    p->outstanding--;
    p->files++;
    p->bytes += e->size;
    return GO;
}

static int on_skip(request *r, push *p, const hsp_record *rec)
{
    char path[HSP_PATH_MAX + 1] = "";
    store_err why;
    int rc = store_file_drop(p->sp, rec->id, path, &why);
    if (rc == STORE_NOT_AWAITED)
        return bad(r, "content or SKIP for entry %llu, which the server did not ask for",
                   (unsigned long long)rec->id);
    if (rc < 0) {
        store_failed(r, p, rc, &why);
        return FAILED;
    }
    if (p->cur.open && p->cur.id == rec->id)
        p->cur.open = 0;
    p->outstanding--;
    p->skipped++;
    char t[1024], text[512];
    path_text(path, strlen(path), t, sizeof(t));
    hsp_path_text((const char *)rec->data, rec->data_len, text, sizeof(text));
    add_problem(p, "%s: left out: %s%s(%s)", t, text, text[0] ? " " : "", strerror(rec->status));
    return GO;
}

/* ---- COMMIT ---------------------------------------------------------------------------- */

static void commit_problem(void *arg, const char *text)
{
    add_problem(arg, "%s", text);
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/*
 * Every entry arrived and every file needed is complete or skipped: the
 * store makes the snapshot, atomically.
 */
static void push_commit(request *r, push *p)
{
    store_err why;
    char id[HSP_SNAPSHOT_MAX + 1] = "";
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = store_push_commit(p->sp, p->files, p->bytes, id, commit_problem, p, &why);
    metrics_commit_observed(r->srv->metrics, seconds_since(&t0));
    if (rc < 0) {
        store_failed(r, p, rc, &why);
        return;
    }
    /* Committed. */
    p->state = P_DONE;
    close_staging(p);
    release_dataset(r, p);

    request_log(r, HAUL_LOG_INFO,
                "committed snapshot %s: %llu files, %llu bytes (%llu received, %llu linked, %llu "
                "resumed files, %llu left out) in %.2f s",
                id, (unsigned long long)p->files, (unsigned long long)p->bytes,
                (unsigned long long)p->bytes_sent, (unsigned long long)p->bytes_linked,
                (unsigned long long)p->resumed, (unsigned long long)p->skipped,
                seconds_since(&p->started));
    send_problems(r, p);
    if (p->skipped)
        request_result(r, 0, id, p->files, p->bytes, p->bytes_sent, p->bytes_linked,
                       "snapshot %s of %s: %llu files, %llu bytes (%llu files left out)", id,
                       r->req.dataset, (unsigned long long)p->files, (unsigned long long)p->bytes,
                       (unsigned long long)p->skipped);
    else
        request_result(r, 0, id, p->files, p->bytes, p->bytes_sent, p->bytes_linked,
                       "snapshot %s of %s: %llu files, %llu bytes", id, r->req.dataset,
                       (unsigned long long)p->files, (unsigned long long)p->bytes);
}

static int on_commit(request *r, push *p, const hsp_record *rec)
{
    if (p->commit_asked)
        return bad(r, "COMMIT twice");
    if (rec->length != p->nentries)
        return bad(r, "COMMIT of %llu entries, but %llu arrived", (unsigned long long)rec->length,
                   (unsigned long long)p->nentries);
    p->commit_asked = 1;
    return GO;
}

/* ---- the request ------------------------------------------------------------------------ */

static int push_message(request *r, push *p, const uint8_t *data, size_t len)
{
    hsp_reader rd;
    hsp_record rec;
    hsp_reader_init(&rd, data, len);
    int rc;
    while ((rc = hsp_next(&rd, &rec)) == 1) {
        int res;
        switch (rec.type) {
        case HSP_ENTRY:
            res = on_entry(r, p, &rec.entry);
            break;
        case HSP_DATA:
            res = on_data(r, p, &rec);
            break;
        case HSP_HOLE:
            res = on_hole(r, p, &rec);
            break;
        case HSP_DONE:
            res = on_done(r, p, &rec);
            break;
        case HSP_SKIP:
            res = on_skip(r, p, &rec);
            break;
        case HSP_COMMIT:
            res = on_commit(r, p, &rec);
            break;
        default:
            return bad(r, "a record of type %d, which a push does not carry", rec.type);
        }
        if (res == BAD)
            return BAD;
        if (p->state != P_RUNNING)
            return GO;
    }
    if (rc < 0)
        return bad(r, "a message that does not decode");
    return GO;
}

static int push_step(request *r)
{
    push *p = r->op;
    int more = 0;
    for (int n = 0; n < STEP_MESSAGES; n++) {
        /* Replies that cannot go out yet hold the input back: the
         * client's window closes instead of our memory growing. */
        if (p->state == P_RUNNING && out_blocked(r))
            break;
        haul_message *m;
        int rc = request_recv(r, &m);
        if (rc <= 0)
            break;
        if (n == STEP_MESSAGES - 1)
            more = 1;
        if (p->state != P_RUNNING) {
            haul_message_free(m); /* after a failure or the result: dropped */
            continue;
        }
        const void *data;
        size_t len;
        const char *why = NULL;
        rc = hsp_zstd_unpack(p->zstd, haul_message_data(m), haul_message_len(m), &data, &len, &why);
        if (rc == -2) {
            haul_message_free(m);
            push_fail(r, p, ENOMEM, "%s", why);
            break;
        }
        rc = rc < 0 ? bad(r, "%s", why) : push_message(r, p, data, len);
        haul_message_free(m);
        if (rc == BAD) {
            request_abort(r, NULL);
            return -1;
        }
        if (p->state == P_RUNNING && p->commit_asked && p->outstanding == 0)
            push_commit(r, p);
    }
    if (p->state == P_RUNNING)
        out_flush(r);
    return more;
}

/*
 * Another push holds the dataset. It is ended, and this one proceeds and
 * resumes from what it staged, when it is of the same principal and
 * either its client is gone (every connection of its pipe closed: the
 * client was killed, or lost its network, and waiting for the engine to
 * give up on the pipe would refuse the user who simply runs the push
 * again for a whole message timeout) or this push asks for it
 * (HSP_F_TAKEOVER: a client that hangs, or one behind a link that fails
 * silently, still looks connected). One that shares the namespace may
 * never end another principal's push. The push taken over gets a RESULT
 * that says so (push_taken_over, on its own turn, since its state is its
 * worker's), and its session closes in order, so that its client, should
 * it still be there, fails with that reason rather than a bare abort.
 * Returns REQUEST_WAIT_TAKEOVER (this request waits for the dataset to be
 * let go), 0 when the dataset is free already, or a refusal reason.
 */
static uint32_t take_over(request *r)
{
    server *srv = r->srv;
    const int asked = (r->req.flags & HSP_F_TAKEOVER) != 0;
    uint32_t reason = REQUEST_WAIT_TAKEOVER;
    server_lock(srv);
    request *old = server_find_push_locked(r);
    if (old == NULL) {
        reason = 0; /* let go meanwhile */
    } else if (old->req.op != HSP_PUSH) {
        reason = HSP_R_BUSY; /* a deletion, which ends soon by itself */
    } else if (strcmp(old->principal, r->principal) != 0) {
        request_log(r, HAUL_LOG_WARN, "refused: request %u of principal %s pushes the dataset%s",
                    old->serial, old->principal,
                    asked ? ", and a take-over may end only a push of the same principal" : "");
        reason = asked ? HSP_R_TAKEOVER_DENIED : HSP_R_BUSY;
    } else {
        const int gone = !request_connected_locked(old);
        if (!gone && !asked) {
            r->busy_connected = 1;
            request_log(r, HAUL_LOG_INFO,
                        "refused: request %u pushes the dataset and its client is connected",
                        old->serial);
            reason = HSP_R_BUSY;
        } else {
            const char *why = gone ? "its client has no connection left" : "--takeover";
            request_log(r, HAUL_LOG_INFO, "takes the dataset over from request %u (%s)",
                        old->serial, why);
            char text[512];
            snprintf(text, sizeof(text),
                     "taken over by another push (request %u of principal %s: %s)", r->serial,
                     r->principal, why);
            request_take_over_locked(old, text);
        }
    }
    server_unlock(srv);
    return reason;
}

int push_taken_over(request *r, const char *why)
{
    push *p = r->op;
    if (p == NULL || p->state != P_RUNNING)
        return 0; /* it let the dataset go already */
    push_fail(r, p, ECANCELED, "%s", why);
    return 1;
}

uint32_t push_open(request *r)
{
    push *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return HSP_R_SERVER_ERROR;
    clock_gettime(CLOCK_MONOTONIC, &p->started);
    r->op = p;
    r->ops = &push_ops;
    r->wcap = REPLY_MESSAGE;

    uint32_t reason = 0;
    if (r->req.snapshot[0]) {
        /* A push makes a new snapshot with an id of the server's. One that
         * names a snapshot asks to write into it: committed snapshots are
         * immutable, whoever asks. */
        request_log(r, HAUL_LOG_WARN, "refused: snapshots are never overwritten");
        reason = HSP_R_DENIED;
        goto refuse;
    }
    if (server_busy_add(r) < 0) {
        reason = take_over(r);
        if (reason == 0 && server_busy_add(r) < 0)
            reason = REQUEST_WAIT_TAKEOVER; /* taken again meanwhile, or no memory */
        if (reason)
            goto refuse;
    }
    p->busy = 1;
    if (r->req.flags & HSP_F_COMPRESS) {
        /* A compressed push holds a window of history to expand it; the
         * budget that bounds the messages bounds those windows too. With
         * no room, the client is told so and pushes uncompressed. */
        uint64_t need = hsp_zstd_memory(0);
        if (haul_engine_reserve(r->srv->engine, need) != 0) {
            request_log(r, HAUL_LOG_INFO,
                        "refused compression: no room in --memory for %llu KiB more",
                        (unsigned long long)(need >> 10));
            reason = HSP_R_NO_COMPRESS;
            goto refuse;
        }
        p->zstd_reserved = need;
        if ((p->zstd = hsp_zstd_new(0)) == NULL) {
            reason = HSP_R_SERVER_ERROR;
            goto refuse;
        }
    }
    /* A store that cannot be written (an I/O error, a full disk) fails
     * the push once accepted, with a RESULT that says so (push_start):
     * a refusal could only say "the server failed". */
    store_dataset ds = {r->who.root, r->req.dataset};
    unsigned flags = STORE_LOCK_CREATE;
    if (r->req.flags & HSP_F_TAKEOVER)
        flags |= STORE_LOCK_BREAK;
    int rc = store_lock_dataset(r->srv->store, &ds, flags, &p->lock, &p->open_why);
    if (rc == -EWOULDBLOCK) {
        reason = HSP_R_BUSY;
        goto refuse;
    }
    if (rc < 0)
        p->open_err = -rc;
    return 0;

refuse:
    push_fini(r);
    r->op = NULL;
    r->ops = NULL;
    return reason;
}

void push_start(request *r)
{
    push *p = r->op;
    store_err why;
    if (p->open_err) {
        push_fail(r, p, p->open_err, "%s", p->open_why.text);
        return;
    }
    int rc = store_push_begin(p->lock, &p->sp, &p->info, &why);
    if (rc < 0) {
        store_failed(r, p, rc, &why);
        return;
    }
    /* The namespace is measured once, at the start: a walk of its files
     * (the cost of a quota), on which this push's own additions are
     * counted as they are asked for. */
    if (r->who.quota && (rc = store_usage(r->srv->store, r->who.root, &p->usage, &why)) < 0) {
        push_fail(r, p, -rc, "measuring the namespace for its quota: %s", why.text);
        return;
    }
    if ((p->hash = XXH3_createState()) == NULL) {
        push_fail(r, p, ENOMEM, "out of memory");
        return;
    }
    request_log(r, HAUL_LOG_DEBUG, "staging ready%s%s%s", p->info.resuming ? ", resuming" : "",
                p->info.previous[0] ? ", incremental from " : "", p->info.previous);
}

static void push_fini(request *r)
{
    push *p = r->op;
    if (p == NULL)
        return;
    close_staging(p);
    release_dataset(r, p);
    if (p->hash)
        XXH3_freeState(p->hash);
    free(p->retries);
    free(p->problems);
    hsp_zstd_free(p->zstd);
    haul_engine_unreserve(r->srv->engine, p->zstd_reserved);
    free(p);
    r->op = NULL;
}
