/*
 * read.c - the requests that read the store: PULL, LIST and VERIFY, and
 * BENCH, which reads nothing but the network (docs/store-protocol.md).
 *
 * Each produces its records as the session's output queue allows: it
 * fills messages until one cannot go out for want of room, and goes on
 * when an acknowledgement makes some. A manifest is read sequentially
 * through a fixed buffer, and a file in pieces of at most HSP_BLOCK, so
 * memory stays within the output queue plus a fixed overhead.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hauld/server.h"
#include "store/fs.h"

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
    int ns, ds, snap, tree;
    char snapshot[HSP_SNAPSHOT_MAX + 1];
    fs_rec_reader mf;
    int mf_open;
    fs_names names; /* LIST of datasets or snapshots */
    size_t next_name;

    /* PULL: the paths asked for (sorted), and whether all arrived. */
    wanted_path *paths;
    size_t npaths, paths_bytes;
    int paths_done;

    /* The file being sent (PULL) or checked (VERIFY). */
    struct {
        int fd;
        uint64_t id, pos, size, data_end;
        hsp_hash hash;  /* the manifest's */
        int computed;   /* PULL of a hard link turned file: hash computed */
        int seek_holes; /* SEEK_DATA works here */
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
    rd->ns = rd->ds = rd->snap = rd->tree = rd->cur.fd = -1;
    r->op = rd;
    r->ops = ops;
    return rd;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void reader_fini(request *r)
{
    reader *rd = r->op;
    if (rd == NULL)
        return;
    if (rd->mode == R_BENCH)
        request_log(r, HAUL_LOG_INFO, "received %llu messages, %llu bytes",
                    (unsigned long long)rd->entries, (unsigned long long)rd->bytes);
    close_fd(&rd->cur.fd);
    if (rd->mf_open)
        fs_rec_reader_fini(&rd->mf);
    fs_names_free(&rd->names);
    for (size_t i = 0; i < rd->npaths; i++)
        free(rd->paths[i].path);
    free(rd->paths);
    if (rd->hash)
        XXH3_freeState(rd->hash);
    free(rd->buf);
    close_fd(&rd->tree);
    close_fd(&rd->snap);
    close_fd(&rd->ds);
    close_fd(&rd->ns);
    free(rd);
    r->op = NULL;
}

static uint32_t refuse(request *r, uint32_t reason)
{
    reader_fini(r);
    r->ops = NULL;
    return reason;
}

/* Opens the principal's namespace and the request's dataset. */
static uint32_t open_dataset(request *r, reader *rd)
{
    if ((rd->ns = server_ns_open(r, 0)) < 0 ||
        (rd->ds = fs_dir_open(rd->ns, r->req.dataset, 0)) < 0) {
        if (errno == ENOENT)
            return HSP_R_NO_DATASET;
        request_log(r, HAUL_LOG_ERROR, "cannot open the dataset: %s", store_strerror(errno));
        return HSP_R_SERVER_ERROR;
    }
    return 0;
}

/* Opens the request's snapshot (the latest when it names none): its tree
 * and its manifest. */
static uint32_t open_snapshot(request *r, reader *rd)
{
    uint32_t reason = open_dataset(r, rd);
    if (reason)
        return reason;
    if (r->req.snapshot[0]) {
        snprintf(rd->snapshot, sizeof(rd->snapshot), "%s", r->req.snapshot);
    } else {
        int found = fs_snapshot_latest(rd->ds, rd->snapshot);
        if (found < 0) {
            request_log(r, HAUL_LOG_ERROR, "cannot read the snapshots: %s", store_strerror(errno));
            return HSP_R_SERVER_ERROR;
        }
        if (!found)
            return HSP_R_NO_SNAPSHOT;
    }
    if ((rd->snap = fs_snapshot_open(rd->ds, rd->snapshot)) < 0) {
        if (errno == ENOENT)
            return HSP_R_NO_SNAPSHOT;
        request_log(r, HAUL_LOG_ERROR, "cannot open snapshot %s: %s", rd->snapshot,
                    store_strerror(errno));
        return HSP_R_SERVER_ERROR;
    }
    int fd = -1;
    if ((rd->tree = fs_open(rd->snap, "tree", O_PATH | O_DIRECTORY, 0)) < 0 ||
        (fd = fs_open(rd->snap, "MANIFEST", O_RDONLY, 0)) < 0) {
        request_log(r, HAUL_LOG_ERROR, "snapshot %s is damaged: %s", rd->snapshot,
                    store_strerror(errno));
        return HSP_R_SERVER_ERROR;
    }
    if (fs_rec_reader_init(&rd->mf, fd) < 0) {
        close(fd);
        return HSP_R_SERVER_ERROR;
    }
    rd->mf_open = 1;
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
    if (mode == R_LIST_DATASETS) {
        /* A principal that never pushed has no namespace yet: an empty
         * list. */
        rd->ns = server_ns_open(r, 0);
        if (rd->ns < 0 && errno != ENOENT) {
            request_log(r, HAUL_LOG_ERROR, "cannot open the namespace: %s", store_strerror(errno));
            reason = HSP_R_SERVER_ERROR;
        } else if (rd->ns >= 0 && fs_names_read(rd->ns, &rd->names, fs_dataset_name_ok, NULL) < 0) {
            request_log(r, HAUL_LOG_ERROR, "cannot read the namespace: %s", store_strerror(errno));
            reason = HSP_R_SERVER_ERROR;
        }
    } else if (mode == R_LIST_SNAPSHOTS) {
        reason = open_dataset(r, rd);
        if (reason == 0) {
            int snaps = fs_open(rd->ds, "snapshots", O_PATH | O_DIRECTORY, 0);
            if (snaps >= 0) {
                if (fs_names_read(snaps, &rd->names, fs_snapshot_id_ok, fs_snapshot_cmp) < 0)
                    reason = HSP_R_SERVER_ERROR;
                close(snaps);
            } else if (errno != ENOENT) {
                reason = HSP_R_SERVER_ERROR;
            }
            if (reason)
                request_log(r, HAUL_LOG_ERROR, "cannot read the snapshots: %s",
                            store_strerror(errno));
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
    close_fd(&rd->cur.fd);
    request_log(r, HAUL_LOG_WARN, "failed: %s", text);
    request_result(r, err ? err : EIO, rd->snapshot, rd->files, rd->bytes, rd->bytes_sent, 0, "%s",
                   text);
}

static void manifest_fail(request *r, reader *rd)
{
    int err = errno;
    read_fail(r, rd, err == EBADMSG ? EIO : err, "the manifest of snapshot %s is %s: %s",
              rd->snapshot, err == EBADMSG ? "damaged" : "unreadable", store_strerror(err));
}

static void entry_text(const hsp_entry *e, char *out, size_t size)
{
    fs_path_text(e->path, e->path_len, out, size);
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
    if (rd->cur.pos == rd->cur.size) {
        hsp_hash h = rd->cur.hash;
        if (rd->cur.computed)
            fs_hash_digest(rd->hash, &h);
        if (out_room(r, 24) < 0)
            goto nomem;
        hsp_put_done(&r->w, rd->cur.id, &h);
        close_fd(&rd->cur.fd);
        return 0;
    }
    if (rd->cur.pos >= rd->cur.data_end) {
        /* Where the next data is: a sparse file's holes go as HOLE
         * records, without reading or sending their zeros. */
        uint64_t data = rd->cur.pos, end = rd->cur.size;
        if (rd->cur.seek_holes) {
            off_t d = lseek(rd->cur.fd, (off_t)rd->cur.pos, SEEK_DATA);
            if (d < 0 && errno == ENXIO) {
                data = rd->cur.size; /* a hole up to the end */
            } else if (d < 0) {
                rd->cur.seek_holes = 0; /* not supported here: all data */
            } else {
                data = (uint64_t)d < rd->cur.size ? (uint64_t)d : rd->cur.size;
                off_t h = lseek(rd->cur.fd, d, SEEK_HOLE);
                if (h >= 0 && (uint64_t)h < end)
                    end = (uint64_t)h;
            }
        }
        if (data > rd->cur.pos) {
            if (out_room(r, 24) < 0)
                goto nomem;
            hsp_put_hole(&r->w, rd->cur.id, rd->cur.pos, data - rd->cur.pos);
            if (rd->cur.computed)
                fs_hash_zeros(rd->hash, data - rd->cur.pos);
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
    ssize_t n = fs_pread_all(rd->cur.fd, p, (size_t)want, (off_t)rd->cur.pos);
    if (n != (ssize_t)want) {
        int err = n < 0 ? errno : EIO;
        r->w.len -= HSP_RECORD_HDR + 16 + (size_t)want; /* take the record back */
        fs_path_text(rd->cur.path, rd->cur.path_len, t, sizeof(t));
        read_fail(r, rd, err, "reading %s from the store: %s", t,
                  n < 0 ? store_strerror(err) : "the file is shorter than its manifest says");
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
    e.id = rd->next_id++;
    int fd = -1;
    memcpy(rd->cur.path, e.path, e.path_len);
    rd->cur.path[e.path_len] = '\0';
    rd->cur.path_len = e.path_len;
    rd->cur.computed = 0;
    if (e.kind == HSP_HARDLINK && !wanted(rd, e.target, e.target_len)) {
        /* The link's target is not restored: send the file itself, whose
         * content the link shares on disk. */
        fd = fs_open(rd->tree, rd->cur.path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            int err = fd < 0 ? errno : EIO;
            close_fd(&fd);
            entry_text(&e, t, sizeof(t));
            read_fail(r, rd, err, "%s is missing from the store: %s", t, store_strerror(err));
            return -1;
        }
        e.kind = HSP_FILE;
        e.target_len = 0;
        e.size = (uint64_t)st.st_size;
        memset(&e.hash, 0, sizeof(e.hash));
        rd->cur.computed = 1;
        XXH3_128bits_reset(rd->hash);
    } else if (e.kind == HSP_FILE) {
        fd = fs_open(rd->tree, rd->cur.path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
            (uint64_t)st.st_size != e.size) {
            int err = fd < 0 ? errno : EIO;
            close_fd(&fd);
            entry_text(&e, t, sizeof(t));
            read_fail(r, rd, err,
                      "%s is missing from the store or damaged (%s); verify the snapshot", t,
                      store_strerror(err));
            return -1;
        }
    }
    if (out_room(r, 64 + (size_t)e.path_len + e.target_len) < 0) {
        close_fd(&fd);
        read_fail(r, rd, ENOMEM, "out of memory");
        return -1;
    }
    hsp_put_entry(&r->w, &e);
    rd->entries++;
    if (e.kind == HSP_FILE) {
        rd->cur.fd = fd;
        rd->cur.id = e.id;
        rd->cur.pos = rd->cur.data_end = 0;
        rd->cur.size = e.size;
        rd->cur.hash = e.hash;
        rd->cur.seek_holes = 1;
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
        if (rd->cur.fd >= 0) {
            if (pull_piece(r, rd, &budget) < 0)
                return 0;
            continue;
        }
        hsp_record rec;
        int rc = fs_rec_next(&rd->mf, &rec);
        if (rc < 0) {
            manifest_fail(r, rd);
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
        if (rec.type != HSP_ENTRY) {
            errno = EBADMSG;
            manifest_fail(r, rd);
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
            int rc = fs_rec_next(&rd->mf, &rec);
            if (rc < 0) {
                manifest_fail(r, rd);
                return 0;
            }
            if (rc == 0)
                break;
            if (rec.type != HSP_ENTRY)
                continue;
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
        int64_t time = 0;
        uint64_t files = 0, bytes = 0;
        if (rd->mode == R_LIST_DATASETS) {
            /* A dataset, described by its latest snapshot. */
            int ds = fs_dir_open(rd->ns, name, 0);
            char id[HSP_SNAPSHOT_MAX + 1];
            if (ds >= 0 && fs_snapshot_latest(ds, id) == 1) {
                int snap = fs_snapshot_open(ds, id);
                if (snap >= 0) {
                    fs_snapshot_info(snap, &time, &files, &bytes);
                    close(snap);
                }
            }
            close_fd(&ds);
        } else {
            int snap = fs_snapshot_open(rd->ds, name);
            if (snap >= 0) {
                fs_snapshot_info(snap, &time, &files, &bytes);
                close(snap);
            }
        }
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
    char t[1024];
    entry_text(e, t, sizeof(t));
    char *path = rd->cur.path;
    memcpy(path, e->path, e->path_len);
    path[e->path_len] = '\0';
    struct stat st;
    if (e->kind == HSP_DIR) {
        int fd = fs_open(rd->tree, path, O_PATH | O_DIRECTORY, 0);
        if (fd < 0)
            problem(r, rd, "%s: the directory is missing from the store (%s)", t,
                    store_strerror(errno));
        close_fd(&fd);
        return;
    }
    fs_at at;
    if (fs_at_open(&at, rd->tree, path) < 0) {
        problem(r, rd, "%s: missing from the store (%s)", t, store_strerror(errno));
        return;
    }
    if (e->kind == HSP_SYMLINK) {
        char target[65536];
        ssize_t n = readlinkat(at.fd, at.name, target, sizeof(target));
        if (n < 0)
            problem(r, rd, "%s: the symlink is missing from the store (%s)", t,
                    store_strerror(errno));
        else if ((size_t)n != e->target_len || memcmp(target, e->target, e->target_len) != 0)
            problem(r, rd, "%s: the symlink's target differs from the manifest", t);
    } else if (e->kind == HSP_HARDLINK) {
        struct stat target;
        char *tpath = malloc((size_t)e->target_len + 1);
        int tfd = -1;
        if (tpath) {
            memcpy(tpath, e->target, e->target_len);
            tpath[e->target_len] = '\0';
            tfd = fs_open(rd->tree, tpath, O_PATH | O_NOFOLLOW, 0);
        }
        if (fstatat(at.fd, at.name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            problem(r, rd, "%s: the hard link is missing from the store (%s)", t,
                    store_strerror(errno));
        else if (tfd < 0 || fstat(tfd, &target) < 0 || target.st_ino != st.st_ino ||
                 target.st_dev != st.st_dev)
            problem(r, rd, "%s: not linked to its target as the manifest says", t);
        close_fd(&tfd);
        free(tpath);
    }
    fs_at_close(&at);
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
        if (rd->cur.fd >= 0) {
            /* Hash the next piece of the file being checked. */
            uint64_t want = rd->cur.size - rd->cur.pos;
            if (want > HSP_BLOCK)
                want = HSP_BLOCK;
            ssize_t n =
                want ? fs_pread_all(rd->cur.fd, rd->buf, (size_t)want, (off_t)rd->cur.pos) : 0;
            fs_path_text(rd->cur.path, rd->cur.path_len, t, sizeof(t));
            if (n != (ssize_t)want) {
                if (n < 0)
                    problem(r, rd, "%s: cannot be read (%s)", t, store_strerror(errno));
                else
                    problem(r, rd, "%s: shorter than the manifest says", t);
                close_fd(&rd->cur.fd);
                continue;
            }
            XXH3_128bits_update(rd->hash, rd->buf, (size_t)want);
            rd->cur.pos += want;
            budget = budget > want ? budget - want : 0;
            if (rd->cur.pos == rd->cur.size) {
                hsp_hash h;
                fs_hash_digest(rd->hash, &h);
                if (!hsp_hash_equal(&h, &rd->cur.hash)) {
                    char a[33], b[33];
                    hsp_hash_hex(&h, a);
                    hsp_hash_hex(&rd->cur.hash, b);
                    problem(r, rd,
                            "%s: its content does not match the manifest (XXH3-128 %s, "
                            "manifest %s)",
                            t, a, b);
                }
                close_fd(&rd->cur.fd);
            }
            continue;
        }
        hsp_record rec;
        int rc = fs_rec_next(&rd->mf, &rec);
        if (rc < 0) {
            manifest_fail(r, rd);
            return 0;
        }
        if (rc == 0)
            break;
        if (rec.type != HSP_ENTRY)
            continue;
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
        int fd = fs_open(rd->tree, rd->cur.path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
        struct stat st;
        if (fd < 0) {
            problem(r, rd, "%s: missing from the store (%s)", t, store_strerror(errno));
            continue;
        }
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            problem(r, rd, "%s: not a regular file in the store", t);
            close(fd);
            continue;
        }
        if ((uint64_t)st.st_size != e->size) {
            problem(r, rd, "%s: %llu bytes in the store, %llu in the manifest", t,
                    (unsigned long long)st.st_size, (unsigned long long)e->size);
            close(fd);
            continue;
        }
        rd->cur.fd = fd;
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
