/*
 * read.c - the requests that read the store: PULL, LIST and VERIFY, and
 * BENCH, which reads nothing but the network (docs/store-protocol.md).
 *
 * Each produces its records as the session's output queue allows: it
 * fills messages until one cannot go out for want of room, and goes on
 * when an acknowledgement makes some. A manifest is read sequentially
 * (the store reads it in bounded memory), and a file in pieces of at most
 * HSP_BLOCK, so memory stays within the output queue plus a fixed
 * overhead. The store is reached through store/store.h only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hauld/server.h"
#include "proto/compress.h"
#include "store/store.h"

/* Work per step: bytes of files read, and records of a listing. */
#define STEP_BYTES (8u << 20)
#define STEP_RECORDS 4096
/* The paths a pull may ask for. */
#define PATHS_MAX 65536
#define PATHS_BYTES (16u << 20)
/* A DATA record is started in a message with this much room left at
 * least; else the message goes and the record starts the next one. */
#define DATA_MIN (64u << 10)

enum { R_PULL, R_LIST_DATASETS, R_LIST_SNAPSHOTS, R_LIST_ENTRIES, R_VERIFY, R_BENCH };

typedef struct wanted_path {
    char *path;
    size_t len;
} wanted_path;

typedef struct reader {
    int mode;
    store_dataset ds;
    store_snapshot *snap;
    char snapshot[HSP_SNAPSHOT_MAX + 1];
    store_names names; /* LIST of datasets or snapshots */
    size_t next_name;

    /* PULL: the paths asked for (sorted), and whether all arrived. */
    wanted_path *paths;
    size_t npaths, paths_bytes;
    int paths_done;

    /* The file being sent (PULL) or checked (VERIFY). */
    struct {
        store_file *f;
        uint64_t id, pos, size, data_end;
        hsp_hash hash; /* the manifest's */
        int computed;  /* PULL of a hard link turned file: hash computed */
        char path[HSP_PATH_MAX + 1];
        size_t path_len;
    } cur;
    XXH3_state_t *hash;
    uint8_t *buf; /* VERIFY's read buffer */

    uint64_t next_id, entries, files, bytes, bytes_sent, problems;
} reader;

static int pull_step(request *r);
static int list_step(request *r);
static int verify_step(request *r);
static int bench_step(request *r);
static void reader_fini(request *r);

static const request_ops pull_ops = {"pull", pull_step, reader_fini};
static const request_ops list_ops = {"list", list_step, reader_fini};
static const request_ops verify_ops = {"verify", verify_step, reader_fini};
static const request_ops bench_ops = {"bench", bench_step, reader_fini};

/* ---- opening --------------------------------------------------------------------- */

static reader *reader_new(request *r, int mode, const request_ops *ops)
{
    reader *rd = calloc(1, sizeof(*rd));
    if (rd == NULL)
        return NULL;
    rd->mode = mode;
    rd->ds.ns = r->who.root;
    rd->ds.name = r->req.dataset;
    r->op = rd;
    r->ops = ops;
    return rd;
}

static void close_file(reader *rd)
{
    if (rd->cur.f)
        store_file_close_read(rd->cur.f);
    rd->cur.f = NULL;
}

static void reader_fini(request *r)
{
    reader *rd = r->op;
    if (rd == NULL)
        return;
    if (rd->mode == R_BENCH)
        request_log(r, HAUL_LOG_INFO, "received %llu messages, %llu bytes",
                    (unsigned long long)rd->entries, (unsigned long long)rd->bytes);
    close_file(rd);
    if (rd->snap)
        store_snapshot_close(rd->snap);
    store_names_free(&rd->names);
    for (size_t i = 0; i < rd->npaths; i++)
        free(rd->paths[i].path);
    free(rd->paths);
    if (rd->hash)
        XXH3_freeState(rd->hash);
    free(rd->buf);
    free(rd);
    r->op = NULL;
}

static uint32_t refuse(request *r, uint32_t reason)
{
    reader_fini(r);
    r->ops = NULL;
    return reason;
}

/* Checks that the request's dataset exists. */
static uint32_t open_dataset(request *r, reader *rd)
{
    store_err why;
    int rc = store_dataset_exists(r->srv->store, &rd->ds, &why);
    if (rc > 0)
        return 0;
    if (rc == 0)
        return HSP_R_NO_DATASET;
    request_log(r, HAUL_LOG_ERROR, "cannot open the dataset: %s", why.text);
    return HSP_R_SERVER_ERROR;
}

/* Opens the request's snapshot (the latest when it names none). */
static uint32_t open_snapshot(request *r, reader *rd)
{
    uint32_t reason = open_dataset(r, rd);
    if (reason)
        return reason;
    store_err why;
    store_info info;
    int rc = store_snapshot_open(r->srv->store, &rd->ds, r->req.snapshot, &rd->snap, &info, &why);
    if (rc == -ENOENT)
        return HSP_R_NO_SNAPSHOT;
    if (rc < 0) {
        request_log(r, HAUL_LOG_ERROR, "cannot open the snapshot: %s", why.text);
        return HSP_R_SERVER_ERROR;
    }
    snprintf(rd->snapshot, sizeof(rd->snapshot), "%s", info.id);
    return 0;
}

uint32_t pull_open(request *r)
{
    reader *rd = reader_new(r, R_PULL, &pull_ops);
    if (rd == NULL)
        return HSP_R_SERVER_ERROR;
    uint32_t reason = open_snapshot(r, rd);
    if (reason == 0 && (rd->hash = XXH3_createState()) == NULL)
        reason = HSP_R_SERVER_ERROR;
    /* Compression asked for: at the client's level, at most the
     * server's; with --compress-level-max 0 the pull goes uncompressed,
     * which the protocol allows (compressing is the sender's choice). So
     * does a pull when the budget has no room for the compressor, whose
     * memory it counts as it counts the messages'. */
    unsigned max = r->srv->cfg.compress_level_max;
    if (reason == 0 && (r->req.flags & HSP_F_COMPRESS) && max > 0) {
        int level = r->req.level < (int)max ? r->req.level : (int)max;
        uint64_t need = hsp_zstd_memory(level) + HSP_MESSAGE_MAX;
        if (haul_engine_reserve(r->srv->engine, need) != 0) {
            request_log(r, HAUL_LOG_INFO,
                        "sending uncompressed: no room in --memory for %llu KiB to compress",
                        (unsigned long long)(need >> 10));
        } else {
            r->zstd_reserved = need;
            r->zstd = hsp_zstd_new(level);
            r->zbuf = malloc(HSP_MESSAGE_MAX);
            if (r->zstd == NULL || r->zbuf == NULL)
                reason = HSP_R_SERVER_ERROR;
        }
    }
    return reason ? refuse(r, reason) : 0;
}

uint32_t verify_open(request *r)
{
    reader *rd = reader_new(r, R_VERIFY, &verify_ops);
    if (rd == NULL)
        return HSP_R_SERVER_ERROR;
    uint32_t reason = open_snapshot(r, rd);
    if (reason == 0 &&
        ((rd->hash = XXH3_createState()) == NULL || (rd->buf = malloc(HSP_BLOCK)) == NULL))
        reason = HSP_R_SERVER_ERROR;
    return reason ? refuse(r, reason) : 0;
}

uint32_t list_open(request *r)
{
    int mode = !r->req.dataset[0]   ? R_LIST_DATASETS
               : r->req.snapshot[0] ? R_LIST_ENTRIES
                                    : R_LIST_SNAPSHOTS;
    if (!r->req.dataset[0] && r->req.snapshot[0])
        return HSP_R_BAD_REQUEST;
    reader *rd = reader_new(r, mode, &list_ops);
    if (rd == NULL)
        return HSP_R_SERVER_ERROR;
    uint32_t reason = 0;
    store_err why;
    if (mode == R_LIST_DATASETS) {
        /* A principal that never pushed has no namespace yet: an empty
         * list. */
        if (store_list_datasets(r->srv->store, r->who.root, &rd->names, &why) < 0) {
            request_log(r, HAUL_LOG_ERROR, "cannot list the datasets: %s", why.text);
            reason = HSP_R_SERVER_ERROR;
        }
    } else if (mode == R_LIST_SNAPSHOTS) {
        reason = open_dataset(r, rd);
        if (reason == 0 && store_list_snapshots(r->srv->store, &rd->ds, &rd->names, &why) < 0) {
            request_log(r, HAUL_LOG_ERROR, "cannot read the snapshots: %s", why.text);
            reason = HSP_R_SERVER_ERROR;
        }
    } else {
        reason = open_snapshot(r, rd);
    }
    return reason ? refuse(r, reason) : 0;
}

uint32_t bench_open(request *r)
{
    return reader_new(r, R_BENCH, &bench_ops) ? 0 : HSP_R_SERVER_ERROR;
}

/* ---- shared ----------------------------------------------------------------------- */

/* Writes a PROBLEM record. */
static void problem(request *r, reader *rd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void problem(request *r, reader *rd, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    rd->problems++;
    if (out_room(r, strlen(text)) == 0)
        hsp_put_text(&r->w, HSP_PROBLEM, text, strlen(text));
}

/* Ends a request that cannot go on reading the store. */
static void read_fail(request *r, reader *rd, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void read_fail(request *r, reader *rd, int err, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    close_file(rd);
    request_log(r, HAUL_LOG_WARN, "failed: %s", text);
    request_result(r, err ? err : EIO, rd->snapshot, rd->files, rd->bytes, rd->bytes_sent, 0, "%s",
                   text);
}

static void manifest_fail(request *r, reader *rd, int rc, const store_err *why)
{
    read_fail(r, rd, -rc, "snapshot %s: %s", rd->snapshot, why->text);
}

static void entry_text(const hsp_entry *e, char *out, size_t size)
{
    hsp_path_text(e->path, e->path_len, out, size);
}

/* ---- PULL ---------------------------------------------------------------------------- */

static int path_cmp(const void *a, const void *b)
{
    const wanted_path *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->path, y->path, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Is the path, or a directory above it, among those asked for? */
static int wanted(const reader *rd, const char *path, size_t len)
{
    if (rd->npaths == 0)
        return 1;
    for (size_t end = 1; end <= len; end++) {
        if (end < len && path[end] != '/')
            continue;
        wanted_path key = {(char *)path, end};
        if (bsearch(&key, rd->paths, rd->npaths, sizeof(*rd->paths), path_cmp))
            return 1;
    }
    return 0;
}

static int add_path(request *r, reader *rd, const uint8_t *path, size_t len)
{
    if (rd->npaths >= PATHS_MAX || rd->paths_bytes + len > PATHS_BYTES) {
        snprintf(r->why, sizeof(r->why), "more paths than a pull may ask for (%u, %u MiB)",
                 PATHS_MAX, PATHS_BYTES >> 20);
        return -1;
    }
    if (rd->npaths % 64 == 0) {
        wanted_path *v = realloc(rd->paths, (rd->npaths + 64) * sizeof(*v));
        if (v == NULL)
            goto nomem;
        rd->paths = v;
    }
    char *copy = malloc(len);
    if (copy == NULL)
        goto nomem;
    memcpy(copy, path, len);
    rd->paths[rd->npaths].path = copy;
    rd->paths[rd->npaths].len = len;
    rd->npaths++;
    rd->paths_bytes += len;
    return 0;
nomem:
    snprintf(r->why, sizeof(r->why), "out of memory for the paths asked for");
    return -1;
}

/* Takes the client's PATHS records, up to the empty message that ends
 * them. Returns 1 when they are all in, 0 to wait for more, 2 when more
 * wait already, -1 when the request was ended. */
static int pull_paths(request *r, reader *rd)
{
    for (int n = 0; n < 64; n++) {
        haul_message *m;
        int rc = request_recv(r, &m);
        if (rc <= 0)
            return 0;
        size_t len = haul_message_len(m);
        if (len == 0) {
            haul_message_free(m);
            if (rd->npaths > 1)
                qsort(rd->paths, rd->npaths, sizeof(*rd->paths), path_cmp);
            rd->paths_done = 1;
            request_log(r, HAUL_LOG_DEBUG, "%zu paths asked for", rd->npaths);
            return 1;
        }
        hsp_reader in;
        hsp_record rec;
        hsp_reader_init(&in, haul_message_data(m), len);
        while ((rc = hsp_next(&in, &rec)) == 1) {
            if (rec.type != HSP_PATHS) {
                snprintf(r->why, sizeof(r->why), "a record of type %d among the paths of a pull",
                         rec.type);
                rc = -1;
                break;
            }
            if (add_path(r, rd, rec.data, rec.data_len) < 0) {
                rc = -1;
                break;
            }
        }
        haul_message_free(m);
        if (rc < 0) {
            if (!r->why[0])
                snprintf(r->why, sizeof(r->why), "a message that does not decode");
            request_abort(r, NULL);
            return -1;
        }
    }
    return 2;
}

/* The next piece of the file being sent: a HOLE, a DATA record, or the
 * DONE that ends it. Returns 0, or -1 when the request failed. */
static int pull_piece(request *r, reader *rd, uint64_t *budget)
{
    char t[1024];
    store_err why;
    if (rd->cur.pos == rd->cur.size) {
        hsp_hash h = rd->cur.hash;
        if (rd->cur.computed)
            hsp_hash_digest(rd->hash, &h);
        if (out_room(r, 24) < 0)
            goto nomem;
        hsp_put_done(&r->w, rd->cur.id, &h);
        close_file(rd);
        return 0;
    }
    if (rd->cur.pos >= rd->cur.data_end) {
        /* Where the next data is: a sparse file's holes go as HOLE
         * records, without reading or sending their zeros. */
        uint64_t data, end;
        int rc = store_file_data(rd->cur.f, rd->cur.pos, &data, &end, &why);
        if (rc < 0) {
            hsp_path_text(rd->cur.path, rd->cur.path_len, t, sizeof(t));
            read_fail(r, rd, -rc, "reading %s from the store: %s", t, why.text);
            return -1;
        }
        if (data > rd->cur.pos) {
            if (out_room(r, 24) < 0)
                goto nomem;
            hsp_put_hole(&r->w, rd->cur.id, rd->cur.pos, data - rd->cur.pos);
            if (rd->cur.computed)
                hsp_hash_zeros(rd->hash, data - rd->cur.pos);
            rd->cur.pos = data;
            rd->cur.data_end = data;
            return 0;
        }
        rd->cur.data_end = end > rd->cur.pos ? end : rd->cur.size;
    }
    uint64_t want = rd->cur.data_end - rd->cur.pos;
    if (want > HSP_BLOCK)
        want = HSP_BLOCK;
    /* Fill what is left of the message if that is worth a record; else
     * start the next one. */
    size_t room = r->w.buf ? r->w.cap - r->w.len : 0;
    size_t floor = want < DATA_MIN ? (size_t)want : DATA_MIN;
    if (room < HSP_RECORD_HDR + 16 + floor) {
        if (out_room(r, 16 + (size_t)want) < 0)
            goto nomem;
        room = r->w.cap - r->w.len;
    }
    if (want > room - HSP_RECORD_HDR - 16)
        want = room - HSP_RECORD_HDR - 16;
    uint8_t *p = hsp_put_data(&r->w, rd->cur.id, rd->cur.pos, (uint32_t)want);
    ssize_t n = store_file_pread(rd->cur.f, rd->cur.pos, p, (size_t)want, &why);
    if (n != (ssize_t)want) {
        int err = n < 0 ? (int)-n : EIO;
        r->w.len -= HSP_RECORD_HDR + 16 + (size_t)want; /* take the record back */
        hsp_path_text(rd->cur.path, rd->cur.path_len, t, sizeof(t));
        read_fail(r, rd, err, "reading %s from the store: %s", t,
                  n < 0 ? why.text : "the file is shorter than its manifest says");
        return -1;
    }
    if (rd->cur.computed)
        XXH3_128bits_update(rd->hash, p, (size_t)want);
    rd->cur.pos += want;
    rd->bytes_sent += want;
    *budget = *budget > want ? *budget - want : 0;
    return 0;
nomem:
    read_fail(r, rd, ENOMEM, "out of memory");
    return -1;
}

/* Starts sending an entry of the manifest. */
static int pull_entry(request *r, reader *rd, const hsp_entry *src)
{
    hsp_entry e = *src;
    char t[1024];
    store_err why;
    e.id = rd->next_id++;
    store_file *f = NULL;
    uint64_t size = 0;
    memcpy(rd->cur.path, e.path, e.path_len);
    rd->cur.path[e.path_len] = '\0';
    rd->cur.path_len = e.path_len;
    rd->cur.computed = 0;
    if (e.kind == HSP_HARDLINK && !wanted(rd, e.target, e.target_len)) {
        /* The link's target is not restored: send the file itself, whose
         * content the link shares in the store. */
        int rc = store_file_open_read(rd->snap, src, &f, &size, &why);
        if (rc < 0) {
            entry_text(&e, t, sizeof(t));
            read_fail(r, rd, -rc, "%s: %s", t, why.text);
            return -1;
        }
        e.kind = HSP_FILE;
        e.target_len = 0;
        e.size = size;
        memset(&e.hash, 0, sizeof(e.hash));
        rd->cur.computed = 1;
        XXH3_128bits_reset(rd->hash);
    } else if (e.kind == HSP_FILE) {
        int rc = store_file_open_read(rd->snap, src, &f, &size, &why);
        if (rc == 0 && size != e.size) {
            store_file_close_read(f);
            f = NULL;
            rc = store_fail(&why, EIO, "%llu bytes in the store, %llu in the manifest",
                            (unsigned long long)size, (unsigned long long)e.size);
        }
        if (rc < 0) {
            entry_text(&e, t, sizeof(t));
            read_fail(r, rd, -rc,
                      "%s is missing from the store or damaged (%s); verify the snapshot", t,
                      why.text);
            return -1;
        }
    }
    if (out_room(r, 64 + (size_t)e.path_len + e.target_len) < 0) {
        if (f)
            store_file_close_read(f);
        read_fail(r, rd, ENOMEM, "out of memory");
        return -1;
    }
    hsp_put_entry(&r->w, &e);
    rd->entries++;
    if (e.kind == HSP_FILE) {
        rd->cur.f = f;
        rd->cur.id = e.id;
        rd->cur.pos = rd->cur.data_end = 0;
        rd->cur.size = e.size;
        rd->cur.hash = e.hash;
        rd->files++;
        rd->bytes += e.size;
    }
    return 0;
}

static void drop_input(request *r)
{
    haul_message *m;
    while (request_recv(r, &m) > 0)
        haul_message_free(m);
}

static int pull_step(request *r)
{
    reader *rd = r->op;
    if (!rd->paths_done) {
        int rc = pull_paths(r, rd);
        if (rc != 1)
            return rc == 2 ? 1 : rc;
    }
    drop_input(r);
    if (r->finishing)
        return 0;
    uint64_t budget = STEP_BYTES;
    int records = 0;
    while (!out_blocked(r) && !r->dead) {
        if (budget == 0 || records++ >= STEP_RECORDS)
            return 1;
        if (rd->cur.f) {
            if (pull_piece(r, rd, &budget) < 0)
                return 0;
            continue;
        }
        hsp_record rec;
        store_err why;
        int rc = store_manifest_next(rd->snap, &rec, &why);
        if (rc < 0) {
            manifest_fail(r, rd, rc, &why);
            return 0;
        }
        if (rc == 0) {
            request_log(r, HAUL_LOG_INFO,
                        "sent snapshot %s: %llu entries, %llu files, %llu bytes (%llu of data)",
                        rd->snapshot, (unsigned long long)rd->entries,
                        (unsigned long long)rd->files, (unsigned long long)rd->bytes,
                        (unsigned long long)rd->bytes_sent);
            request_result(r, 0, rd->snapshot, rd->files, rd->bytes, rd->bytes_sent, 0,
                           "snapshot %s: %llu entries, %llu files, %llu bytes", rd->snapshot,
                           (unsigned long long)rd->entries, (unsigned long long)rd->files,
                           (unsigned long long)rd->bytes);
            return 0;
        }
        if (!wanted(rd, rec.entry.path, rec.entry.path_len))
            continue;
        if (pull_entry(r, rd, &rec.entry) < 0)
            return 0;
    }
    /* Blocked: the message being built waits, and fills on, until an
     * acknowledgement makes room. */
    return 0;
}

/* ---- LIST ----------------------------------------------------------------------------- */

static int list_step(request *r)
{
    reader *rd = r->op;
    drop_input(r);
    if (r->finishing)
        return 0;
    int records = 0;
    while (!out_blocked(r) && !r->dead) {
        if (records++ >= STEP_RECORDS)
            return 1;
        if (rd->mode == R_LIST_ENTRIES) {
            hsp_record rec;
            store_err why;
            int rc = store_manifest_next(rd->snap, &rec, &why);
            if (rc < 0) {
                manifest_fail(r, rd, rc, &why);
                return 0;
            }
            if (rc == 0)
                break;
            const hsp_entry *e = &rec.entry;
            if (out_room(r, 64 + (size_t)e->path_len + e->target_len) < 0) {
                read_fail(r, rd, ENOMEM, "out of memory");
                return 0;
            }
            hsp_put_entry(&r->w, e);
            rd->entries++;
            if (e->kind == HSP_FILE) {
                rd->files++;
                rd->bytes += e->size;
            }
            continue;
        }
        if (rd->next_name >= rd->names.n)
            break;
        const char *name = rd->names.v[rd->next_name++];
        store_info info;
        store_err why;
        store_dataset ds = rd->ds;
        const char *id = name;
        if (rd->mode == R_LIST_DATASETS) {
            /* A dataset, described by its latest snapshot. */
            ds.name = name;
            id = "";
        }
        /* A snapshot that cannot be read (or a dataset without one) is
         * listed with zeros. */
        if (store_snapshot_info(r->srv->store, &ds, id, &info, &why) < 0)
            memset(&info, 0, sizeof(info));
        int64_t time = info.time;
        uint64_t files = info.files, bytes = info.bytes;
        if (out_room(r, 24 + strlen(name)) < 0) {
            read_fail(r, rd, ENOMEM, "out of memory");
            return 0;
        }
        hsp_put_snapinfo(&r->w, name, time, files, bytes);
        rd->entries++;
        rd->files += files;
        rd->bytes += bytes;
    }
    if (out_blocked(r) || r->dead)
        return 0;
    if (rd->mode == R_LIST_ENTRIES)
        request_result(r, 0, rd->snapshot, rd->files, rd->bytes, 0, 0,
                       "snapshot %s: %llu entries, %llu files, %llu bytes", rd->snapshot,
                       (unsigned long long)rd->entries, (unsigned long long)rd->files,
                       (unsigned long long)rd->bytes);
    else
        request_result(r, 0, NULL, rd->entries, rd->bytes, 0, 0, "%llu %s",
                       (unsigned long long)rd->entries,
                       rd->mode == R_LIST_DATASETS ? "datasets" : "snapshots");
    return 0;
}

/* ---- VERIFY ----------------------------------------------------------------------------- */

/* Checks an entry that is not a file's content: it exists as what the
 * manifest says. */
static void verify_other(request *r, reader *rd, const hsp_entry *e)
{
    char t[1024], why[1024];
    if (store_check_entry(rd->snap, e, why, sizeof(why)) != 0) {
        entry_text(e, t, sizeof(t));
        problem(r, rd, "%s: %s", t, why);
    }
}

static int verify_step(request *r)
{
    reader *rd = r->op;
    drop_input(r);
    if (r->finishing)
        return 0;
    uint64_t budget = STEP_BYTES;
    int records = 0;
    char t[1024];
    while (!out_blocked(r) && !r->dead) {
        if (budget == 0 || records++ >= STEP_RECORDS)
            return 1;
        if (rd->cur.f) {
            /* Hash the next piece of the file being checked. */
            uint64_t want = rd->cur.size - rd->cur.pos;
            if (want > HSP_BLOCK)
                want = HSP_BLOCK;
            store_err why;
            ssize_t n =
                want ? store_file_pread(rd->cur.f, rd->cur.pos, rd->buf, (size_t)want, &why) : 0;
            hsp_path_text(rd->cur.path, rd->cur.path_len, t, sizeof(t));
            if (n != (ssize_t)want) {
                if (n < 0)
                    problem(r, rd, "%s: %s", t, why.text);
                else
                    problem(r, rd, "%s: shorter than the manifest says", t);
                close_file(rd);
                continue;
            }
            XXH3_128bits_update(rd->hash, rd->buf, (size_t)want);
            rd->cur.pos += want;
            budget = budget > want ? budget - want : 0;
            if (rd->cur.pos == rd->cur.size) {
                hsp_hash h;
                hsp_hash_digest(rd->hash, &h);
                if (!hsp_hash_equal(&h, &rd->cur.hash)) {
                    char a[33], b[33];
                    hsp_hash_hex(&h, a);
                    hsp_hash_hex(&rd->cur.hash, b);
                    problem(r, rd,
                            "%s: its content does not match the manifest (XXH3-128 %s, "
                            "manifest %s)",
                            t, a, b);
                }
                close_file(rd);
            }
            continue;
        }
        hsp_record rec;
        store_err why;
        int rc = store_manifest_next(rd->snap, &rec, &why);
        if (rc < 0) {
            manifest_fail(r, rd, rc, &why);
            return 0;
        }
        if (rc == 0)
            break;
        const hsp_entry *e = &rec.entry;
        rd->entries++;
        if (e->kind != HSP_FILE) {
            verify_other(r, rd, e);
            continue;
        }
        memcpy(rd->cur.path, e->path, e->path_len);
        rd->cur.path[e->path_len] = '\0';
        rd->cur.path_len = e->path_len;
        entry_text(e, t, sizeof(t));
        rd->files++;
        rd->bytes += e->size;
        store_file *f;
        uint64_t size;
        if (store_file_open_read(rd->snap, e, &f, &size, &why) < 0) {
            problem(r, rd, "%s: %s", t, why.text);
            continue;
        }
        if (size != e->size) {
            problem(r, rd, "%s: %llu bytes in the store, %llu in the manifest", t,
                    (unsigned long long)size, (unsigned long long)e->size);
            store_file_close_read(f);
            continue;
        }
        rd->cur.f = f;
        rd->cur.pos = 0;
        rd->cur.size = e->size;
        rd->cur.hash = e->hash;
        XXH3_128bits_reset(rd->hash);
    }
    if (out_blocked(r) || r->dead)
        return 0;
    request_log(r, HAUL_LOG_INFO, "verified snapshot %s: %llu entries, %llu bytes, %llu problems",
                rd->snapshot, (unsigned long long)rd->entries, (unsigned long long)rd->bytes,
                (unsigned long long)rd->problems);
    if (rd->problems)
        request_result(r, EIO, rd->snapshot, rd->files, rd->bytes, 0, 0,
                       "snapshot %s: %llu problems in %llu entries (%llu files, %llu bytes)",
                       rd->snapshot, (unsigned long long)rd->problems,
                       (unsigned long long)rd->entries, (unsigned long long)rd->files,
                       (unsigned long long)rd->bytes);
    else
        request_result(r, 0, rd->snapshot, rd->files, rd->bytes, 0, 0,
                       "snapshot %s: all %llu entries (%llu files, %llu bytes) match the manifest",
                       rd->snapshot, (unsigned long long)rd->entries, (unsigned long long)rd->files,
                       (unsigned long long)rd->bytes);
    return 0;
}

/* ---- BENCH ---------------------------------------------------------------------------------- */

static int bench_step(request *r)
{
    reader *rd = r->op;
    for (int n = 0; n < 256; n++) {
        haul_message *m;
        if (request_recv(r, &m) <= 0)
            return 0;
        rd->bytes += haul_message_len(m);
        rd->entries++;
        haul_message_free(m);
    }
    return 1;
}
