/*
 * push.c - PUSH: a tree arrives and becomes a new snapshot of a dataset
 * (docs/store-protocol.md, "PUSH").
 *
 * The staging area of a dataset, DATASET/.staging/:
 *
 *   LOCK           flock()ed by the push that runs (never removed)
 *   tree/          the snapshot being assembled
 *   old/           what an interrupted push left in tree/, reused
 *   MANIFEST.part  ENTRY records of what tree/ holds, with hashes
 *   NEEDS          the ENTRY records of the files asked for (NEED)
 *   NEEDIDX        16 bytes per entry id: where its record is in NEEDS,
 *                  and how far its file got
 *   LINKS          hard link ENTRY records, made at COMMIT
 *
 * A file's content arrives by entry id only, perhaps long after its
 * ENTRY; the server finds its path and metadata again in NEEDS through
 * NEEDIDX instead of keeping them in memory, so that memory does not grow
 * with the number of files. The same holds for the hard links and the
 * directories' metadata, which are read back from LINKS and MANIFEST.part
 * at COMMIT.
 *
 * Durability: file data is written with pwrite() and left to the page
 * cache; at COMMIT one syncfs() makes all of it durable, then the
 * manifest, and only then is the tree renamed into snapshots/ID.tmp, which
 * is renamed to snapshots/ID and its directory fsynced. A snapshot is
 * therefore either absent or complete and durable. A crash before the
 * last rename leaves ID.tmp, which the next push of the dataset takes
 * back into its staging area.
 *
 * Any I/O error ends the push with a RESULT naming it; the staging area
 * stays for the next push, which reuses what is in it: a file that was
 * complete (its hash is in the user.haul.hash attribute) is not sent
 * again, and a partial one continues from where it stopped.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hauld/server.h"
#include "store/fs.h"

/* A push's answer to DONE with the wrong hash is NEED from 0, this many
 * times at most; then the push fails. */
#define MAX_ATTEMPTS 3
/* Problems (skipped files, hard links left out) reported with the
 * RESULT; beyond these, only a count. */
#define PROBLEMS_MAX 256
#define PROBLEMS_BYTES (64u << 10)
/* Reply messages of a push are small: HAVE and NEED records. */
#define REPLY_MESSAGE (64u << 10)
/* Messages taken from the input per step. */
#define STEP_MESSAGES 32

/* One slot of NEEDIDX per entry id. */
typedef struct need_slot {
    uint64_t offset; /* of the entry's record in NEEDS */
    uint32_t len;
    uint8_t state; /* SLOT_* */
    uint8_t attempts;
    uint16_t zero;
} need_slot;

enum { SLOT_NONE = 0, SLOT_NEEDED = 1, SLOT_DONE = 2, SLOT_SKIPPED = 3 };

enum { P_RUNNING, P_FAILED, P_DONE };

/* The largest record of a file entry (no link target). */
#define FILE_RECORD (HSP_RECORD_HDR + 64 + HSP_PATH_MAX)

typedef struct push {
    int state;
    int busy; /* in the server's busy set */
    int ns, ds, staging, lock;
    int tree, old, prev; /* staging tree, old staging tree, latest snapshot's tree */
    char prev_id[HSP_SNAPSHOT_MAX + 1];
    fs_rec_writer manifest, links;
    int needs, needidx;
    uint64_t needs_end;
    XXH3_state_t *hash;    /* of the file being received */
    XXH3_state_t *scratch; /* for files found in the staging area or a snapshot */
    int xattr_missing;     /* the store keeps no extended attributes (logged once) */
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
    const char *open_doing;

    /* The file whose content is arriving. */
    struct {
        int fd;
        uint64_t id, next;
        need_slot slot;
        hsp_entry e;
        char path[HSP_PATH_MAX + 1];
    } cur;

    char path[HSP_PATH_MAX + 1]; /* a record's path, NUL-terminated */
    char target[65536];          /* a link's target, NUL-terminated */

    char *problems; /* NUL-separated texts */
    size_t problems_len;
    unsigned nproblems, problems_dropped;
} push;

static void push_fini(request *r);
static int push_step(request *r);

static const request_ops push_ops = {"push", push_step, push_fini};

/* ---- helpers ------------------------------------------------------------------- */

static void path_text(const char *path, size_t len, char *out, size_t size)
{
    fs_path_text(path, len, out, size);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* Closes the descriptors the push writes its staging area through (the
 * lock aside: release_dataset() drops it). Once the dataset is released,
 * the next push owns the staging area, so this comes first. Idempotent. */
static void close_staging(push *p)
{
    close_fd(&p->cur.fd);
    fs_rec_writer_fini(&p->manifest);
    fs_rec_writer_fini(&p->links);
    close_fd(&p->needs);
    close_fd(&p->needidx);
    close_fd(&p->tree);
    close_fd(&p->old);
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
    close_fd(&p->lock);
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
    char text[1024];
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

/* Fails the push for an error on an entry's path, in words that say what
 * probably went wrong. */
static void path_fail(request *r, push *p, int err, const char *path, const char *doing)
{
    char t[1024];
    path_text(path, strlen(path), t, sizeof(t));
    switch (err) {
    case ENOENT:
    case ENOTDIR:
        push_fail(r, p, err,
                  "%s: its directory is missing (every directory must be sent before "
                  "what it holds)",
                  t);
        break;
    case ELOOP:
        push_fail(r, p, err, "%s: a symlink of the tree is in its way", t);
        break;
    case EEXIST:
    case EISDIR:
        push_fail(r, p, EEXIST, "%s: sent twice", t);
        break;
    default:
        push_fail(r, p, err, "%s %s: %s", doing, t, store_strerror(err));
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

/* Same content and metadata as the entry says, as far as stat tells. */
static int same_file(const struct stat *st, const hsp_entry *e)
{
    return S_ISREG(st->st_mode) && (uint64_t)st->st_size == e->size &&
           (int64_t)st->st_mtim.tv_sec == e->mtime_sec &&
           (uint32_t)st->st_mtim.tv_nsec == e->mtime_nsec &&
           (st->st_mode & 07777) == fs_disk_mode(HSP_FILE, e->mode);
}

static int manifest_put(request *r, push *p, const hsp_entry *e)
{
    if (fs_rec_put_entry(&p->manifest, e) == 0)
        return GO;
    push_fail(r, p, errno, "writing the manifest: %s", store_strerror(errno));
    return FAILED;
}

/* ---- NEEDS and NEEDIDX -------------------------------------------------------------- */

static int slot_get(push *p, uint64_t id, need_slot *slot)
{
    memset(slot, 0, sizeof(*slot));
    if (id >= p->nentries)
        return 0;
    ssize_t n = fs_pread_all(p->needidx, slot, sizeof(*slot), (off_t)(id * sizeof(*slot)));
    if (n < 0)
        return -1;
    if (n < (ssize_t)sizeof(*slot))
        memset(slot, 0, sizeof(*slot));
    return 0;
}

static int slot_put(push *p, uint64_t id, const need_slot *slot)
{
    return fs_pwrite_all(p->needidx, slot, sizeof(*slot), (off_t)(id * sizeof(*slot)));
}

static int need_record(request *r, push *p, const hsp_entry *e)
{
    uint8_t buf[FILE_RECORD];
    hsp_writer w;
    hsp_writer_init(&w, buf, sizeof(buf));
    hsp_put_entry(&w, e);
    need_slot slot = {.offset = p->needs_end, .len = (uint32_t)w.len, .state = SLOT_NEEDED};
    if (fs_pwrite_all(p->needs, buf, w.len, (off_t)p->needs_end) < 0 ||
        slot_put(p, e->id, &slot) < 0) {
        push_fail(r, p, errno, "writing the staging area: %s", store_strerror(errno));
        return FAILED;
    }
    p->needs_end += w.len;
    return GO;
}

/* Reads a NEEDed entry back: its metadata into *e, its path into path
 * (e->path points there). */
static int need_load(request *r, push *p, uint64_t id, need_slot *slot, hsp_entry *e, char *path)
{
    if (slot_get(p, id, slot) < 0) {
        push_fail(r, p, errno, "reading the staging area: %s", store_strerror(errno));
        return FAILED;
    }
    if (slot->state != SLOT_NEEDED)
        return bad(r, "content or SKIP for entry %llu, which the server did not ask for",
                   (unsigned long long)id);
    uint8_t buf[FILE_RECORD];
    if (slot->len > sizeof(buf)) {
        push_fail(r, p, EIO, "the staging area is damaged");
        return FAILED;
    }
    ssize_t n = fs_pread_all(p->needs, buf, slot->len, (off_t)slot->offset);
    hsp_reader rd;
    hsp_record rec;
    hsp_reader_init(&rd, buf, n < 0 ? 0 : (size_t)n);
    if (n != (ssize_t)slot->len || hsp_next(&rd, &rec) != 1 || rec.type != HSP_ENTRY) {
        push_fail(r, p, n < 0 ? errno : EIO, "reading the staging area: %s",
                  store_strerror(n < 0 ? errno : EIO));
        return FAILED;
    }
    *e = rec.entry;
    memcpy(path, rec.entry.path, rec.entry.path_len);
    path[rec.entry.path_len] = '\0';
    e->path = path;
    return GO;
}

/* ---- entries ------------------------------------------------------------------------ */

static int entry_dir(request *r, push *p, const hsp_entry *e)
{
    fs_at at;
    if (fs_at_open(&at, p->tree, p->path) < 0) {
        path_fail(r, p, errno, p->path, "making directory");
        return FAILED;
    }
    if (mkdirat(at.fd, at.name, 0700) < 0) {
        int err = errno;
        struct stat st;
        if (err != EEXIST || fstatat(at.fd, at.name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISDIR(st.st_mode)) {
            fs_at_close(&at);
            path_fail(r, p, err, p->path, "making directory");
            return FAILED;
        }
    }
    fs_at_close(&at);
    /* Its mode and mtime are set at COMMIT, once nothing more is made in
     * it. */
    return manifest_put(r, p, e);
}

static int entry_symlink(request *r, push *p, const hsp_entry *e)
{
    memcpy(p->target, e->target, e->target_len);
    p->target[e->target_len] = '\0';
    fs_at at;
    if (fs_at_open(&at, p->tree, p->path) < 0) {
        path_fail(r, p, errno, p->path, "making symlink");
        return FAILED;
    }
    /* Stored as it is; hauld never follows it (every lookup refuses
     * symlinks). */
    struct timespec ts[2] = {{.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec},
                             {.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec}};
    if (symlinkat(p->target, at.fd, at.name) < 0 ||
        utimensat(at.fd, at.name, ts, AT_SYMLINK_NOFOLLOW) < 0) {
        int err = errno;
        fs_at_close(&at);
        path_fail(r, p, err, p->path, "making symlink");
        return FAILED;
    }
    fs_at_close(&at);
    return manifest_put(r, p, e);
}

/* Moves old/PATH to tree/PATH. */
static int take_from_old(request *r, push *p)
{
    fs_at from, to;
    if (fs_at_open(&from, p->old, p->path) < 0) {
        path_fail(r, p, errno, p->path, "reusing");
        return FAILED;
    }
    if (fs_at_open(&to, p->tree, p->path) < 0) {
        int err = errno;
        fs_at_close(&from);
        path_fail(r, p, err, p->path, "reusing");
        return FAILED;
    }
    int rc = renameat2(from.fd, from.name, to.fd, to.name, RENAME_NOREPLACE);
    int err = errno;
    fs_at_close(&from);
    fs_at_close(&to);
    if (rc < 0) {
        path_fail(r, p, err, p->path, "reusing");
        return FAILED;
    }
    return GO;
}

enum { NOTHING = 0, REUSED_COMPLETE = 2, REUSED_PARTIAL = 3 };

/*
 * What an interrupted push left in old/PATH. A file with its hash
 * attribute was complete: if it is still what the entry describes, and
 * its content still has that hash (a crash may lose data the attribute
 * outlived), it is taken as it is. A file without was being received:
 * its content so far is taken, and the client asked to send the rest.
 */
static int reuse_staged(request *r, push *p, const hsp_entry *e, hsp_hash *hash, uint64_t *from)
{
    int fd = fs_open(p->old, p->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0)
        return NOTHING;
    struct stat st;
    int found = NOTHING;
    hsp_hash stored, h;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        if (fs_hash_get(fd, &stored) == 0) {
            if (same_file(&st, e) && fs_hash_file(fd, e->size, p->scratch, &h) == 0 &&
                hsp_hash_equal(&h, &stored)) {
                *hash = stored;
                found = REUSED_COMPLETE;
            }
        } else if (st.st_nlink == 1 && st.st_size > 0 && (uint64_t)st.st_size <= e->size) {
            /* Only a file of its own (one link) may be written to: a file
             * linked from a snapshot never is. */
            if (fs_hash_file(fd, (uint64_t)st.st_size, p->scratch, hash) == 0) {
                *from = (uint64_t)st.st_size;
                found = REUSED_PARTIAL;
            }
        }
    }
    close(fd);
    if (found != NOTHING && take_from_old(r, p) != GO)
        return FAILED;
    return found;
}

/*
 * The latest snapshot holds the same file (size, mtime and mode as the
 * entry says): link it into the tree instead of receiving it again.
 */
static int link_previous(request *r, push *p, const hsp_entry *e, hsp_hash *hash)
{
    int fd = fs_open(p->prev, p->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0)
        return NOTHING;
    struct stat st;
    if (fstat(fd, &st) < 0 || !same_file(&st, e)) {
        close(fd);
        return NOTHING;
    }
    if (fs_hash_get(fd, hash) < 0) {
        /* A store on a file system without user extended attributes:
         * read the hash from the content instead. */
        if (fs_hash_file(fd, e->size, p->scratch, hash) < 0) {
            close(fd);
            return NOTHING;
        }
    }
    close(fd);
    fs_at from, to;
    if (fs_at_open(&from, p->prev, p->path) < 0)
        return NOTHING;
    if (fs_at_open(&to, p->tree, p->path) < 0) {
        int err = errno;
        fs_at_close(&from);
        path_fail(r, p, err, p->path, "linking");
        return FAILED;
    }
    int rc = linkat(from.fd, from.name, to.fd, to.name, 0);
    int err = errno;
    fs_at_close(&from);
    fs_at_close(&to);
    if (rc == 0)
        return REUSED_COMPLETE;
    if (err == EMLINK)
        return NOTHING; /* the inode has all the links it may have: store a copy */
    path_fail(r, p, err, p->path, "linking");
    return FAILED;
}

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

static int entry_file(request *r, push *p, const hsp_entry *e)
{
    hsp_hash hash;
    uint64_t from = 0;
    int found = NOTHING;
    if (p->old >= 0)
        found = reuse_staged(r, p, e, &hash, &from);
    if (found == NOTHING && p->prev >= 0)
        found = link_previous(r, p, e, &hash);
    if (found == FAILED)
        return FAILED;
    if (out_room(r, 32) < 0) {
        push_fail(r, p, ENOMEM, "out of memory");
        return FAILED;
    }
    if (found == REUSED_COMPLETE) {
        hsp_put_id(&r->w, HSP_HAVE, e->id);
        hsp_entry m = *e;
        m.hash = hash;
        p->files++;
        p->bytes += e->size;
        p->bytes_linked += e->size;
        return manifest_put(r, p, &m);
    }
    if (quota_take(r, p, e->size - from) != GO)
        return FAILED;
    if (need_record(r, p, e) != GO)
        return FAILED;
    if (found == REUSED_PARTIAL) {
        hsp_put_need(&r->w, e->id, from, &hash);
        p->resumed++;
    } else {
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
    memcpy(p->path, e->path, e->path_len);
    p->path[e->path_len] = '\0';
    switch (e->kind) {
    case HSP_DIR:
        return entry_dir(r, p, e);
    case HSP_SYMLINK:
        return entry_symlink(r, p, e);
    case HSP_HARDLINK:
        /* Made at COMMIT, when their targets are all there. */
        if (fs_rec_put_entry(&p->links, e) < 0) {
            push_fail(r, p, errno, "writing the staging area: %s", store_strerror(errno));
            return FAILED;
        }
        return GO;
    case HSP_FILE:
        return entry_file(r, p, e);
    }
    return bad(r, "an entry of unknown kind %d", e->kind);
}

/* ---- file content --------------------------------------------------------------------- */

/*
 * Opens the staged file of a NEEDed entry when its first record arrives.
 * offset is where that record starts: 0 (anything staged is dropped) or
 * the size of what is staged (a resumed file: the hash starts over the
 * staged prefix). A DONE with nothing before it (done set) takes the
 * staged content as it is.
 */
static int cur_open(request *r, push *p, uint64_t id, uint64_t offset, int done)
{
    int rc = need_load(r, p, id, &p->cur.slot, &p->cur.e, p->cur.path);
    if (rc != GO)
        return rc;
    int fd = fs_open(p->tree, p->cur.path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);
    if (fd < 0) {
        path_fail(r, p, errno, p->cur.path, "creating");
        return FAILED;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        path_fail(r, p, err, p->cur.path, "creating");
        return FAILED;
    }
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1) {
        close(fd);
        path_fail(r, p, EEXIST, p->cur.path, "creating");
        return FAILED;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (done)
        offset = size;
    XXH3_128bits_reset(p->hash);
    if (offset == 0) {
        if (size > 0 && ftruncate(fd, 0) < 0) {
            int err = errno;
            close(fd);
            path_fail(r, p, err, p->cur.path, "truncating");
            return FAILED;
        }
    } else if (offset == size) {
        if (fs_hash_feed(fd, 0, size, p->hash) < 0) {
            int err = errno;
            close(fd);
            path_fail(r, p, err, p->cur.path, "reading");
            return FAILED;
        }
    } else {
        close(fd);
        char t[1024];
        path_text(p->cur.path, strlen(p->cur.path), t, sizeof(t));
        return bad(r, "the content of %s starts at %llu, but the server holds %llu bytes", t,
                   (unsigned long long)offset, (unsigned long long)size);
    }
    p->cur.fd = fd;
    p->cur.id = id;
    p->cur.next = offset;
    return GO;
}

/* Checks a DATA or HOLE record against the file in progress, opening it
 * if it is the first. */
static int cur_take(request *r, push *p, uint64_t id, uint64_t offset, uint64_t len)
{
    if (p->cur.fd >= 0 && p->cur.id != id)
        return bad(r, "content of entry %llu arrived while entry %llu was incomplete",
                   (unsigned long long)id, (unsigned long long)p->cur.id);
    if (p->cur.fd < 0) {
        int rc = cur_open(r, p, id, offset, 0);
        if (rc != GO)
            return rc;
    }
    if (offset == 0 && p->cur.next > 0) {
        /* The client starts the file over (its prefix did not match). */
        if (ftruncate(p->cur.fd, 0) < 0) {
            path_fail(r, p, errno, p->cur.path, "truncating");
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
    if (fs_pwrite_all(p->cur.fd, rec->data, rec->data_len, (off_t)rec->offset) < 0) {
        path_fail(r, p, errno, p->cur.path, "writing");
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
    /* The file ends at cur.next: extending it makes the hole without
     * writing zeros, so a sparse file stays sparse. */
    if (ftruncate(p->cur.fd, (off_t)(rec->offset + rec->length)) < 0) {
        path_fail(r, p, errno, p->cur.path, "extending");
        return FAILED;
    }
    fs_hash_zeros(p->hash, rec->length);
    p->cur.next += rec->length;
    return GO;
}

static int on_done(request *r, push *p, const hsp_record *rec)
{
    if (p->cur.fd >= 0 && p->cur.id != rec->id)
        return bad(r, "DONE of entry %llu while entry %llu was incomplete",
                   (unsigned long long)rec->id, (unsigned long long)p->cur.id);
    if (p->cur.fd < 0) {
        int rc = cur_open(r, p, rec->id, 0, 1);
        if (rc != GO)
            return rc;
    }
    hsp_hash got;
    fs_hash_digest(p->hash, &got);
    hsp_entry *e = &p->cur.e;
    if (p->cur.next != e->size || !hsp_hash_equal(&got, &rec->hash)) {
        char t[1024];
        path_text(p->cur.path, strlen(p->cur.path), t, sizeof(t));
        close_fd(&p->cur.fd);
        if (++p->cur.slot.attempts >= MAX_ATTEMPTS) {
            push_fail(r, p, EIO, "%s: its content arrived damaged %d times (checksum mismatch)", t,
                      MAX_ATTEMPTS);
            return FAILED;
        }
        request_log(r, HAUL_LOG_WARN,
                    "%s: %llu of %llu bytes arrived and their checksum does not match the "
                    "client's; asking for the file again",
                    t, (unsigned long long)p->cur.next, (unsigned long long)e->size);
        if (slot_put(p, rec->id, &p->cur.slot) < 0) {
            push_fail(r, p, errno, "writing the staging area: %s", store_strerror(errno));
            return FAILED;
        }
        if (out_room(r, 32) < 0) {
            push_fail(r, p, ENOMEM, "out of memory");
            return FAILED;
        }
        hsp_put_need(&r->w, rec->id, 0, NULL);
        return GO;
    }
    /* Complete and checked: the hash goes into the attribute first (it
     * marks the file complete for a later resume), then mode and mtime,
     * last because the others change the inode's times. */
    int fd = p->cur.fd;
    struct timespec ts[2] = {{.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec},
                             {.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec}};
    if (fs_hash_set(fd, &got) < 0) {
        if (errno != ENOTSUP && errno != EOPNOTSUPP) {
            path_fail(r, p, errno, p->cur.path, "finishing");
            return FAILED;
        }
        if (!p->xattr_missing)
            request_log(r, HAUL_LOG_WARN,
                        "the store's file system keeps no user extended attributes: an "
                        "interrupted push will resend files, and incremental pushes re-read "
                        "unchanged ones");
        p->xattr_missing = 1;
    }
    if (fchmod(fd, fs_disk_mode(HSP_FILE, e->mode)) < 0 || futimens(fd, ts) < 0) {
        path_fail(r, p, errno, p->cur.path, "finishing");
        return FAILED;
    }
    close_fd(&p->cur.fd);
    hsp_entry m = *e;
    m.hash = got;
    if (manifest_put(r, p, &m) != GO)
        return FAILED;
    p->cur.slot.state = SLOT_DONE;
    if (slot_put(p, rec->id, &p->cur.slot) < 0) {
        push_fail(r, p, errno, "writing the staging area: %s", store_strerror(errno));
        return FAILED;
    }
    p->outstanding--;
    p->files++;
    p->bytes += e->size;
    return GO;
}

static int on_skip(request *r, push *p, const hsp_record *rec)
{
    need_slot slot;
    hsp_entry e;
    if (p->cur.fd >= 0 && p->cur.id == rec->id) {
        close_fd(&p->cur.fd);
        slot = p->cur.slot;
        memcpy(p->path, p->cur.path, strlen(p->cur.path) + 1);
    } else {
        int rc = need_load(r, p, rec->id, &slot, &e, p->path);
        if (rc != GO)
            return rc;
    }
    fs_at at;
    if (fs_at_open(&at, p->tree, p->path) == 0) {
        if (unlinkat(at.fd, at.name, 0) < 0 && errno != ENOENT) {
            int err = errno;
            fs_at_close(&at);
            path_fail(r, p, err, p->path, "removing");
            return FAILED;
        }
        fs_at_close(&at);
    }
    slot.state = SLOT_SKIPPED;
    if (slot_put(p, rec->id, &slot) < 0) {
        push_fail(r, p, errno, "writing the staging area: %s", store_strerror(errno));
        return FAILED;
    }
    p->outstanding--;
    p->skipped++;
    char t[1024], why[512];
    path_text(p->path, strlen(p->path), t, sizeof(t));
    fs_path_text((const char *)rec->data, rec->data_len, why, sizeof(why));
    add_problem(p, "%s: left out: %s%s(%s)", t, why, why[0] ? " " : "", strerror(rec->status));
    return GO;
}

/* ---- COMMIT ---------------------------------------------------------------------------- */

/* Makes the hard links recorded in LINKS; a link whose target is not in
 * the tree (skipped, or not a file) is left out and reported. */
static int make_links(request *r, push *p)
{
    if (fs_rec_flush(&p->links) < 0) {
        push_fail(r, p, errno, "writing the staging area: %s", store_strerror(errno));
        return FAILED;
    }
    if (p->links.written == 0)
        return GO;
    int fd = fs_open(p->staging, "LINKS", O_RDONLY, 0);
    fs_rec_reader rd;
    if (fd < 0 || fs_rec_reader_init(&rd, fd) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        push_fail(r, p, err, "reading the staging area: %s", store_strerror(err));
        return FAILED;
    }
    hsp_record rec;
    int rc, result = GO;
    while ((rc = fs_rec_next(&rd, &rec)) == 1) {
        const hsp_entry *e = &rec.entry;
        if (rec.type != HSP_ENTRY)
            continue;
        memcpy(p->path, e->path, e->path_len);
        p->path[e->path_len] = '\0';
        memcpy(p->target, e->target, e->target_len);
        p->target[e->target_len] = '\0';
        fs_at from, to;
        int err = 0;
        if (fs_at_open(&from, p->tree, p->target) < 0)
            err = errno;
        else if (fs_at_open(&to, p->tree, p->path) < 0) {
            err = errno;
            fs_at_close(&from);
        } else {
            if (linkat(from.fd, from.name, to.fd, to.name, 0) < 0)
                err = errno;
            fs_at_close(&from);
            fs_at_close(&to);
        }
        char t[1024], l[1024];
        path_text(p->path, strlen(p->path), t, sizeof(t));
        path_text(p->target, strlen(p->target), l, sizeof(l));
        if (err == 0) {
            if (manifest_put(r, p, e) != GO) {
                result = FAILED;
                break;
            }
        } else if (err == ENOENT || err == ENOTDIR || err == EPERM || err == ELOOP ||
                   err == EEXIST || err == EMLINK) {
            add_problem(p, "%s: hard link to %s left out: %s", t, l, strerror(err));
        } else {
            push_fail(r, p, err, "linking %s to %s: %s", t, l, store_strerror(err));
            result = FAILED;
            break;
        }
    }
    if (rc < 0 && result == GO) {
        push_fail(r, p, errno, "reading the staging area: %s", store_strerror(errno));
        result = FAILED;
    }
    fs_rec_reader_fini(&rd);
    return result;
}

/* Gives the directories their mode and mtime, now that nothing more is
 * made in them. On disk a directory keeps the owner's rwx, so the order
 * does not matter. */
static int finish_dirs(request *r, push *p)
{
    if (fs_rec_flush(&p->manifest) < 0) {
        push_fail(r, p, errno, "writing the manifest: %s", store_strerror(errno));
        return FAILED;
    }
    int fd = fs_open(p->staging, "MANIFEST.part", O_RDONLY, 0);
    fs_rec_reader rd;
    if (fd < 0 || fs_rec_reader_init(&rd, fd) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        push_fail(r, p, err, "reading the manifest: %s", store_strerror(err));
        return FAILED;
    }
    hsp_record rec;
    int rc, result = GO;
    while ((rc = fs_rec_next(&rd, &rec)) == 1) {
        const hsp_entry *e = &rec.entry;
        if (rec.type != HSP_ENTRY || e->kind != HSP_DIR)
            continue;
        memcpy(p->path, e->path, e->path_len);
        p->path[e->path_len] = '\0';
        struct timespec ts[2] = {{.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec},
                                 {.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec}};
        int dfd = fs_open(p->tree, p->path, O_RDONLY | O_DIRECTORY, 0);
        if (dfd < 0 || fchmod(dfd, fs_disk_mode(HSP_DIR, e->mode)) < 0 || futimens(dfd, ts) < 0) {
            int err = errno;
            if (dfd >= 0)
                close(dfd);
            path_fail(r, p, err, p->path, "setting the metadata of");
            result = FAILED;
            break;
        }
        close(dfd);
    }
    if (rc < 0 && result == GO) {
        push_fail(r, p, errno, "reading the manifest: %s", store_strerror(errno));
        result = FAILED;
    }
    fs_rec_reader_fini(&rd);
    return result;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

/*
 * Every entry arrived and every file needed is complete or skipped: make
 * the snapshot. Links and directory metadata first, then the manifest,
 * then one syncfs() for all of it; then the tree and the manifest move
 * into snapshots/ID.tmp, which becomes snapshots/ID by an atomic rename.
 */
static void push_commit(request *r, push *p)
{
    if (make_links(r, p) != GO || finish_dirs(r, p) != GO)
        return;
    if (fs_rec_flush(&p->manifest) < 0 || fsync(p->manifest.fd) < 0) {
        push_fail(r, p, errno, "writing the manifest: %s", store_strerror(errno));
        return;
    }
    if (syncfs(p->manifest.fd) < 0) {
        push_fail(r, p, errno, "making the snapshot durable: %s", store_strerror(errno));
        return;
    }
    int snaps = fs_mkdir_open(p->ds, "snapshots", 0700);
    if (snaps < 0) {
        push_fail(r, p, errno, "making the snapshots directory: %s", store_strerror(errno));
        return;
    }
    char latest[HSP_SNAPSHOT_MAX + 1] = "";
    if (fs_snapshot_latest(p->ds, latest) < 0) {
        push_fail(r, p, errno, "reading the snapshots: %s", store_strerror(errno));
        close(snaps);
        return;
    }
    char id[HSP_SNAPSHOT_MAX + 1], tmpname[HSP_SNAPSHOT_MAX + 8];
    int tmp = fs_snapshot_begin(snaps, latest, id);
    if (tmp < 0) {
        push_fail(r, p, errno, "making the snapshot: %s", store_strerror(errno));
        close(snaps);
        return;
    }
    snprintf(tmpname, sizeof(tmpname), "%s.tmp", id);
    const char *doing = "moving the tree into the snapshot";
    int ok = renameat(p->staging, "tree", tmp, "tree") == 0;
    if (ok) {
        doing = "moving the manifest into the snapshot";
        ok = renameat(p->staging, "MANIFEST.part", tmp, "MANIFEST") == 0;
    }
    if (ok) {
        doing = "writing the snapshot's information";
        ok = fs_snapshot_info_write(tmp, id, (int64_t)time(NULL), p->files, p->bytes) == 0;
    }
    if (ok) {
        doing = "making the snapshot durable";
        ok = fs_fsync_dir(tmp, ".") == 0 && fs_fsync_dir(p->staging, ".") == 0;
    }
    if (ok) {
        doing = "committing the snapshot";
        ok = renameat2(snaps, tmpname, snaps, id, RENAME_NOREPLACE) == 0;
        if (ok) {
            /* The namespace and the dataset may be new since the last
             * syncfs(): their names must last too. */
            doing = "making the snapshot durable";
            ok = fs_fsync_dir(snaps, ".") == 0 && fs_fsync_dir(p->ds, ".") == 0 &&
                 fs_fsync_dir(p->ns, ".") == 0 && fs_fsync_dir(r->srv->store, ".") == 0;
            if (!ok) {
                /* Not durably there: it must not be a snapshot that the
                 * client is told failed and that a crash may take away.
                 * As ID.tmp it goes back to the staging area of the next
                 * push. */
                int err = errno;
                if (renameat(snaps, id, snaps, tmpname) < 0)
                    request_log(r, HAUL_LOG_ERROR,
                                "cannot take back snapshot %s, which may not be durable: %s", id,
                                store_strerror(errno));
                errno = err;
            }
        }
    }
    int err = errno;
    close(tmp);
    close(snaps);
    if (!ok) {
        push_fail(r, p, err, "%s: %s", doing, store_strerror(err));
        return;
    }

    /* Committed. What is left of the staging area goes; an error here
     * only costs space, which the next push reclaims. */
    p->state = P_DONE;
    close_staging(p);
    static const char *const leftovers[] = {"old", "NEEDS", "NEEDIDX", "LINKS"};
    for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++)
        if (fs_remove_tree(p->staging, leftovers[i]) < 0)
            request_log(r, HAUL_LOG_WARN, "cannot remove .staging/%s: %s", leftovers[i],
                        strerror(errno));
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
        rc = push_message(r, p, haul_message_data(m), haul_message_len(m));
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
 * that says so, and its session closes in order, so that its client,
 * should it still be there, fails with that reason rather than a bare
 * abort. Returns 0 when the dataset is free, else a refusal reason.
 */
static uint32_t take_over(request *r)
{
    request *old = server_find_push(r);
    if (old == NULL || old->req.op != HSP_PUSH || old->op == NULL)
        return HSP_R_BUSY; /* a deletion, which ends soon by itself */
    const int asked = (r->req.flags & HSP_F_TAKEOVER) != 0;
    if (strcmp(old->principal, r->principal) != 0) {
        request_log(r, HAUL_LOG_WARN, "refused: request %u of principal %s pushes the dataset%s",
                    old->serial, old->principal,
                    asked ? ", and a take-over may end only a push of the same principal" : "");
        return asked ? HSP_R_TAKEOVER_DENIED : HSP_R_BUSY;
    }
    const int gone = !request_connected(old);
    if (!gone && !asked) {
        r->busy_connected = 1;
        request_log(r, HAUL_LOG_INFO,
                    "refused: request %u pushes the dataset and its client is connected",
                    old->serial);
        return HSP_R_BUSY;
    }
    const char *why = gone ? "its client has no connection left" : "--takeover";
    request_log(r, HAUL_LOG_INFO, "takes the dataset over from request %u (%s)", old->serial, why);
    push_fail(old, old->op, ECANCELED,
              "taken over by another push (request %u of principal %s: %s)", r->serial,
              r->principal, why);
    old->abandoned = 1;
    return server_find_push(r) == NULL ? 0 : HSP_R_BUSY;
}

uint32_t push_open(request *r)
{
    push *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return HSP_R_SERVER_ERROR;
    p->ns = p->ds = p->staging = p->lock = p->tree = p->old = p->prev = -1;
    p->needs = p->needidx = p->cur.fd = -1;
    p->manifest.fd = p->links.fd = -1;
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
            reason = HSP_R_SERVER_ERROR; /* no memory for the entry */
        if (reason)
            goto refuse;
    }
    p->busy = 1;
    /* A store that cannot be written (an I/O error, a full disk) fails
     * the push once accepted, with a RESULT that says so (push_start):
     * a refusal could only say "the server failed". */
    if ((p->ns = server_ns_open(r, 1)) < 0 || (p->ds = fs_dir_open(p->ns, r->req.dataset, 1)) < 0) {
        p->open_err = errno;
        p->open_doing = "making the dataset's directory";
        return 0;
    }
    if ((p->lock = fs_dataset_lock(p->ds)) < 0) {
        if (errno == EWOULDBLOCK) {
            reason = HSP_R_BUSY;
            goto refuse;
        }
        p->open_err = errno;
        p->open_doing = "locking the dataset";
    }
    return 0;

refuse:
    push_fini(r);
    r->op = NULL;
    r->ops = NULL;
    return reason;
}

static int keep_tmp(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".tmp") == 0;
}

/*
 * A commit that crashed after moving the tree into snapshots/ID.tmp and
 * before renaming that to ID left a complete tree there: it goes back to
 * the staging area, to be reused like any interrupted push.
 */
static int recover_tmp(push *p)
{
    int snaps = fs_open(p->ds, "snapshots", O_PATH | O_DIRECTORY, 0);
    if (snaps < 0)
        return errno == ENOENT ? 0 : -1;
    if (delete_leftovers(snaps, NULL) < 0) {
        int err = errno;
        close(snaps);
        errno = err;
        return -1;
    }
    fs_names names;
    if (fs_names_read(snaps, &names, keep_tmp, NULL) < 0) {
        int err = errno;
        close(snaps);
        errno = err;
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < names.n && rc == 0; i++) {
        int tmp = fs_open(snaps, names.v[i], O_PATH | O_DIRECTORY, 0);
        if (tmp >= 0) {
            struct stat st;
            if (fstatat(p->staging, "tree", &st, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT)
                renameat(tmp, "tree", p->staging, "tree");
            close(tmp);
        }
        rc = fs_remove_tree(snaps, names.v[i]);
    }
    int err = errno;
    fs_names_free(&names);
    close(snaps);
    errno = err;
    return rc;
}

static int open_list(push *p, const char *name)
{
    return fs_open(p->staging, name, O_RDWR | O_CREAT | O_TRUNC, 0600);
}

void push_start(request *r)
{
    push *p = r->op;
    const char *doing = "opening the staging area";
    struct stat st;
    if (p->open_err) {
        doing = p->open_doing;
        errno = p->open_err;
        goto fail;
    }
    if ((p->staging = fs_open(p->ds, ".staging", O_PATH | O_DIRECTORY, 0)) < 0)
        goto fail;
    doing = "recovering an interrupted commit";
    if (recover_tmp(p) < 0)
        goto fail;
    /* What an interrupted push staged becomes old/, from which this push
     * takes what it can; an older old/ is dropped. */
    doing = "preparing the staging area";
    if (fstatat(p->staging, "tree", &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (fs_remove_tree(p->staging, "old") < 0 ||
            renameat(p->staging, "tree", p->staging, "old") < 0)
            goto fail;
    }
    if ((p->tree = fs_mkdir_open(p->staging, "tree", 0700)) < 0)
        goto fail;
    p->old = fs_open(p->staging, "old", O_PATH | O_DIRECTORY, 0);
    if (p->old < 0 && errno != ENOENT)
        goto fail;
    int mfd = open_list(p, "MANIFEST.part");
    if (mfd < 0)
        goto fail;
    if (fs_rec_writer_init(&p->manifest, mfd, 256u << 10) < 0) {
        close(mfd);
        goto fail;
    }
    int lfd = open_list(p, "LINKS");
    if (lfd < 0)
        goto fail;
    if (fs_rec_writer_init(&p->links, lfd, 0) < 0) {
        close(lfd);
        goto fail;
    }
    if ((p->needs = open_list(p, "NEEDS")) < 0 || (p->needidx = open_list(p, "NEEDIDX")) < 0)
        goto fail;
    /* The namespace is measured once, at the start: a walk of its files
     * (the cost of a quota), on which this push's own additions are
     * counted as they are asked for. */
    doing = "measuring the namespace for its quota";
    if (r->who.quota && fs_usage(p->ns, &p->usage) < 0)
        goto fail;
    doing = "opening the latest snapshot";
    int found = fs_snapshot_latest(p->ds, p->prev_id);
    if (found < 0)
        goto fail;
    if (found) {
        int snap = fs_snapshot_open(p->ds, p->prev_id);
        if (snap < 0)
            goto fail;
        p->prev = fs_open(snap, "tree", O_PATH | O_DIRECTORY, 0);
        int err = errno;
        close(snap);
        if (p->prev < 0) {
            errno = err;
            goto fail;
        }
    }
    p->hash = XXH3_createState();
    p->scratch = XXH3_createState();
    if (p->hash == NULL || p->scratch == NULL) {
        errno = ENOMEM;
        goto fail;
    }
    request_log(r, HAUL_LOG_DEBUG, "staging ready%s%s%s", p->old >= 0 ? ", resuming" : "",
                found ? ", incremental from " : "", found ? p->prev_id : "");
    return;

fail:
    push_fail(r, p, errno, "%s: %s", doing, store_strerror(errno));
}

static void push_fini(request *r)
{
    push *p = r->op;
    if (p == NULL)
        return;
    close_staging(p);
    release_dataset(r, p);
    close_fd(&p->prev);
    close_fd(&p->staging);
    close_fd(&p->ds);
    close_fd(&p->ns);
    if (p->hash)
        XXH3_freeState(p->hash);
    if (p->scratch)
        XXH3_freeState(p->scratch);
    free(p->problems);
    free(p);
    r->op = NULL;
}
