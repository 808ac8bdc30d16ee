/*
 * fs_store.c - the file-system store behind store.h: a directory tree per
 * snapshot, built on the safe path operations and the layout of fs.h.
 *
 *   ROOT/NS/DATASET/snapshots/ID/tree/...   a committed snapshot
 *   ROOT/NS/DATASET/snapshots/ID/MANIFEST   its ENTRY records
 *   ROOT/NS/DATASET/snapshots/ID/INFO       its SNAPINFO record
 *   ROOT/NS/DATASET/.staging/               a push in progress:
 *
 *   LOCK           flock()ed by the holder of the dataset's lock (never
 *                  removed)
 *   tree/          the snapshot being assembled
 *   old/           what an interrupted push left in tree/, reused
 *   MANIFEST.part  ENTRY records of what tree/ holds, with hashes
 *   NEEDS          the ENTRY records of the files awaited
 *   NEEDIDX        16 bytes per entry id: where its record is in NEEDS,
 *                  and how far its file got
 *   LINKS          hard link ENTRY records, made at commit
 *
 * A file's content arrives by entry id only, perhaps long after its
 * ENTRY; the store finds its path and metadata again in NEEDS through
 * NEEDIDX instead of keeping them in memory, so that memory does not grow
 * with the number of files. The same holds for the hard links and the
 * directories' metadata, which are read back from LINKS and MANIFEST.part
 * at commit.
 *
 * Sharing: an unchanged file of the previous snapshot is hard-linked into
 * the new tree, so snapshots share content by sharing inodes; usage
 * counts each link for its share of the bytes. A complete file carries
 * its XXH3-128 in the user.haul.hash attribute, which marks it complete
 * for a resumed push and spares an incremental push re-reading it.
 *
 * Durability: file data is written with pwrite() and left to the page
 * cache, but the disk is asked to start writing each FS_WRITEBACK_BYTES
 * of a file as they arrive (sync_file_range, which does not wait), so
 * that a large push writes to disk while it crosses the network instead
 * of after: otherwise the commit would wait for gigabytes that the
 * kernel kept dirty, several seconds a gigabyte on a disk not much
 * faster than the link. At commit one syncfs() makes all of it durable,
 * then the
 * manifest, and only then is the tree renamed into snapshots/ID.tmp,
 * which is renamed to snapshots/ID and its directory fsynced. A snapshot
 * is therefore either absent or complete and durable. A crash before the
 * last rename leaves ID.tmp, which the next push of the dataset takes back
 * into its staging area.
 *
 * Deleting: the snapshot is first renamed to snapshots/ID.deleting, which
 * no listing, pull or push takes for a snapshot, and that rename is made
 * durable: from then on the snapshot is gone for every reader, even if
 * hauld stops before the files are removed. What a stop leaves behind is
 * removed by the next push or delete of the dataset.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "haul.h"
#include "store/fs.h"
#include "store/store.h"

#define DELETING ".deleting"

/* The largest record of a file entry (no link target). */
#define FILE_RECORD (HSP_RECORD_HDR + 64 + HSP_PATH_MAX)

typedef struct fs_store {
    store base;
    int root;
    store_options opt;
} fs_store;

typedef struct fs_lock {
    store_lock base;
    fs_store *s;
    int ns, ds, fd;
} fs_lock;

/* One slot of NEEDIDX per entry id. */
typedef struct need_slot {
    uint64_t offset; /* of the entry's record in NEEDS */
    uint32_t len;
    uint8_t state; /* SLOT_* */
    uint8_t zero[3];
} need_slot;

enum { SLOT_NONE = 0, SLOT_NEEDED = 1, SLOT_DONE = 2, SLOT_SKIPPED = 3 };

/*
 * The tail of NEEDS and the latest slots of NEEDIDX stay in memory, and
 * go to the files only when newer ones take their place: a file's
 * content mostly follows its ENTRY closely, and a small push then makes
 * no system call for them at all. Nothing else reads these files (the
 * next push truncates them, a commit removes them), so what never left
 * memory is never missed. NEEDS_BUFFER holds at least one record.
 */
#define NEEDS_BUFFER (2 * FILE_RECORD)
#define NEEDS_RING 128

typedef struct fs_push {
    store_push base;
    fs_lock *lock;
    int staging, tree, old, prev;
    fs_rec_writer manifest, links;
    int needs, needidx;
    uint64_t needs_end, nslots;
    /* NEEDS bytes [needs_end - needs_buffered, needs_end), not yet
     * written; the slots of NEEDIDX held here, by id % NEEDS_RING, with
     * id + 1 in ring_tag (0: none). */
    size_t needs_buffered;
    uint8_t needs_buf[NEEDS_BUFFER];
    need_slot ring[NEEDS_RING];
    uint64_t ring_tag[NEEDS_RING];
    XXH3_state_t *scratch; /* for files found in the staging area or a snapshot */
    int xattr_missing;     /* the store keeps no extended attributes (logged once) */
    int committed;

    /* The file whose content is arriving. */
    struct {
        int fd;
        uint64_t id;
        uint64_t written_back; /* where the last writeback asked for ends */
        need_slot slot;
        hsp_entry e;
        char path[HSP_PATH_MAX + 1];
    } cur;

    char path[HSP_PATH_MAX + 1]; /* an entry's path, NUL-terminated */
    char target[65536];          /* a link's target, NUL-terminated */
} fs_push;

typedef struct fs_snapshot {
    store_snapshot base;
    int tree;
    fs_rec_reader mf;
    int mf_open;
    char path[HSP_PATH_MAX + 1];
    char target[HSP_PATH_MAX + 1];
} fs_snapshot;

typedef struct fs_file {
    store_file base;
    int fd;
    uint64_t size;
    int seek_holes; /* SEEK_DATA works here */
} fs_file;

extern const store_ops store_fs_ops;

/* ---- helpers ------------------------------------------------------------------- */

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void store_log(fs_store *s, int level, const char *text)
{
    if (s->opt.log)
        s->opt.log(s->opt.log_arg, level, text);
}

/* Fails with errno and a sentence naming what was done to which path. */
static int path_err(store_err *err, int code, const char *doing, const char *path)
{
    char t[1024];
    hsp_path_text(path, strlen(path), t, sizeof(t));
    return store_fail(err, code, "%s %s: %s", doing, t, store_strerror(code));
}

static int errno_err(store_err *err, const char *doing)
{
    int code = errno ? errno : EIO;
    return store_fail(err, code, "%s: %s", doing, store_strerror(code));
}

/* Same content and metadata as the entry says, as far as stat tells. */
static int same_file(const struct stat *st, const hsp_entry *e)
{
    return S_ISREG(st->st_mode) && (uint64_t)st->st_size == e->size &&
           (int64_t)st->st_mtim.tv_sec == e->mtime_sec &&
           (uint32_t)st->st_mtim.tv_nsec == e->mtime_nsec &&
           (st->st_mode & 07777) == fs_disk_mode(HSP_FILE, e->mode);
}

static void entry_path(char *out, const char *path, size_t len)
{
    memcpy(out, path, len);
    out[len] = '\0';
}

/* ---- the store ------------------------------------------------------------------ */

static int fs_store_open_spec(const char *spec, const store_options *opt, store **out,
                              store_err *err)
{
    fs_store *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    s->base.ops = &store_fs_ops;
    s->opt = *opt;
    s->root = fs_store_open(spec, err->text, sizeof(err->text));
    if (s->root < 0) {
        int code = errno ? errno : EIO;
        free(s);
        return -code;
    }
    *out = &s->base;
    return 0;
}

static void fs_store_close(store *base)
{
    fs_store *s = (fs_store *)base;
    close_fd(&s->root);
    free(s);
}

/* Opens a namespace (O_PATH), made with its parents when create is set;
 * -1 with errno (ENOENT: it does not exist). */
static int ns_open(fs_store *s, const char *ns, int create)
{
    /* One component at a time, each below the last: fs_dir_open() takes
     * a single name, and a root was checked to hold plain names only. */
    char root[HSP_PATH_MAX + 1];
    snprintf(root, sizeof(root), "%s", ns);
    int dir = -1;
    for (char *save = NULL, *c = strtok_r(root, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        int next = fs_dir_open(dir < 0 ? s->root : dir, c, create);
        int e = errno;
        if (dir >= 0)
            close(dir);
        if (next < 0) {
            errno = e;
            return -1;
        }
        dir = next;
    }
    if (dir < 0)
        errno = EINVAL;
    return dir;
}

/* Opens a dataset (O_PATH); -1 with errno (ENOENT: it does not exist). */
static int ds_open(fs_store *s, const store_dataset *ds)
{
    int ns = ns_open(s, ds->ns, 0);
    if (ns < 0)
        return -1;
    int fd = fs_dir_open(ns, ds->name, 0);
    int e = errno;
    close(ns);
    errno = e;
    return fd;
}

static int fs_dataset_exists(store *base, const store_dataset *ds, store_err *err)
{
    int fd = ds_open((fs_store *)base, ds);
    if (fd >= 0) {
        close(fd);
        return 1;
    }
    if (errno == ENOENT)
        return 0;
    return errno_err(err, "opening the dataset");
}

/* ---- the lock ---------------------------------------------------------------------- */

static void fs_unlock(store_lock *base)
{
    fs_lock *l = (fs_lock *)base;
    close_fd(&l->fd);
    close_fd(&l->ds);
    close_fd(&l->ns);
    free(l);
}

static int fs_lock_dataset(store *base, const store_dataset *ds, unsigned flags, store_lock **out,
                           store_err *err)
{
    fs_store *s = (fs_store *)base;
    int create = (flags & STORE_LOCK_CREATE) != 0;
    fs_lock *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    l->base.ops = &store_fs_ops;
    l->s = s;
    l->ns = l->ds = l->fd = -1;
    int rc;
    if ((l->ns = ns_open(s, ds->ns, create)) < 0 ||
        (l->ds = fs_dir_open(l->ns, ds->name, create)) < 0) {
        rc = errno == ENOENT && !create ? store_fail(err, ENOENT, "no such dataset")
                                        : errno_err(err, "making the dataset's directory");
        goto fail;
    }
    /* flock() belongs to the open file description: another holder, in
     * this process or another, makes it EWOULDBLOCK. It cannot be broken
     * (STORE_LOCK_BREAK): it dies with its holder. */
    if ((l->fd = fs_dataset_lock(l->ds)) < 0) {
        rc = errno == EWOULDBLOCK
                 ? store_fail(err, EWOULDBLOCK, "another push to this dataset is running")
                 : errno_err(err, "locking the dataset");
        goto fail;
    }
    *out = &l->base;
    return 0;
fail:
    fs_unlock(&l->base);
    return rc;
}

/* ---- NEEDS and NEEDIDX -------------------------------------------------------------- */

static int slot_get(fs_push *p, uint64_t id, need_slot *slot)
{
    memset(slot, 0, sizeof(*slot));
    if (id >= p->nslots)
        return 0;
    if (p->ring_tag[id % NEEDS_RING] == id + 1) {
        *slot = p->ring[id % NEEDS_RING];
        return 0;
    }
    ssize_t n = fs_pread_all(p->needidx, slot, sizeof(*slot), (off_t)(id * sizeof(*slot)));
    if (n < 0)
        return -1;
    if (n < (ssize_t)sizeof(*slot))
        memset(slot, 0, sizeof(*slot));
    return 0;
}

static int slot_put(fs_push *p, uint64_t id, const need_slot *slot)
{
    size_t i = id % NEEDS_RING;
    if (p->ring_tag[i] != 0 && p->ring_tag[i] != id + 1) {
        uint64_t old = p->ring_tag[i] - 1;
        if (fs_pwrite_all(p->needidx, &p->ring[i], sizeof(p->ring[i]),
                          (off_t)(old * sizeof(p->ring[i]))) < 0)
            return -1;
    }
    p->ring_tag[i] = id + 1;
    p->ring[i] = *slot;
    return 0;
}

/* Appends a record of at most FILE_RECORD bytes to NEEDS. */
static int needs_append(fs_push *p, const uint8_t *rec, size_t len)
{
    if (p->needs_buffered + len > sizeof(p->needs_buf)) {
        if (fs_pwrite_all(p->needs, p->needs_buf, p->needs_buffered,
                          (off_t)(p->needs_end - p->needs_buffered)) < 0)
            return -1;
        p->needs_buffered = 0;
    }
    memcpy(p->needs_buf + p->needs_buffered, rec, len);
    p->needs_buffered += len;
    p->needs_end += len;
    return 0;
}

/* Reads a record of NEEDS back, from memory if it is still there (a
 * record is never split between the file and the buffer). */
static ssize_t needs_read(fs_push *p, uint8_t *buf, size_t len, uint64_t offset)
{
    uint64_t buffered_from = p->needs_end - p->needs_buffered;
    if (offset >= buffered_from) {
        if (offset + len > p->needs_end)
            return 0;
        memcpy(buf, p->needs_buf + (offset - buffered_from), len);
        return (ssize_t)len;
    }
    return fs_pread_all(p->needs, buf, len, (off_t)offset);
}

/* Reads an awaited entry back: its metadata into *e, its path into path
 * (e->path points there). STORE_NOT_AWAITED when it is not awaited. */
static int need_load(fs_push *p, uint64_t id, need_slot *slot, hsp_entry *e, char *path,
                     store_err *err)
{
    if (slot_get(p, id, slot) < 0)
        return errno_err(err, "reading the staging area");
    if (slot->state != SLOT_NEEDED)
        return STORE_NOT_AWAITED;
    uint8_t buf[FILE_RECORD];
    if (slot->len > sizeof(buf))
        return store_fail(err, EIO, "the staging area is damaged");
    ssize_t n = needs_read(p, buf, slot->len, slot->offset);
    hsp_reader rd;
    hsp_record rec;
    hsp_reader_init(&rd, buf, n < 0 ? 0 : (size_t)n);
    if (n != (ssize_t)slot->len || hsp_next(&rd, &rec) != 1 || rec.type != HSP_ENTRY) {
        int code = n < 0 ? errno : EIO;
        return store_fail(err, code, "reading the staging area: %s", store_strerror(code));
    }
    *e = rec.entry;
    entry_path(path, rec.entry.path, rec.entry.path_len);
    e->path = path;
    e->target = NULL;
    e->target_len = 0;
    return 0;
}

/* ---- a push ------------------------------------------------------------------------- */

static int manifest_put(fs_push *p, const hsp_entry *e, store_err *err)
{
    if (fs_rec_put_entry(&p->manifest, e) == 0)
        return 0;
    return errno_err(err, "writing the manifest");
}

/* Closes the descriptors the push writes its staging area through. */
static void close_staging(fs_push *p)
{
    close_fd(&p->cur.fd);
    fs_rec_writer_fini(&p->manifest);
    fs_rec_writer_fini(&p->links);
    close_fd(&p->needs);
    close_fd(&p->needidx);
    close_fd(&p->tree);
    close_fd(&p->old);
}

static void fs_push_end(store_push *base)
{
    fs_push *p = (fs_push *)base;
    close_staging(p);
    close_fd(&p->prev);
    close_fd(&p->staging);
    if (p->scratch)
        XXH3_freeState(p->scratch);
    free(p);
}

static int is_deleting(const char *name)
{
    size_t n = strlen(name), k = strlen(DELETING);
    return n > k && strcmp(name + n - k, DELETING) == 0;
}

static int is_tmp(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".tmp") == 0;
}

/* Removes what deletions left in a snapshots directory when hauld stopped
 * in their middle, adding the bytes freed to *freed (when not NULL). */
static int delete_leftovers(int snaps, uint64_t *freed)
{
    fs_names names;
    if (fs_names_read(snaps, &names, is_deleting, NULL) < 0)
        return errno == ENOENT ? 0 : -1;
    int rc = 0;
    for (size_t i = 0; i < names.n && rc == 0; i++)
        rc = fs_remove_tree_freed(snaps, names.v[i], freed);
    fs_names_free(&names);
    return rc;
}

/*
 * A commit that crashed after moving the tree into snapshots/ID.tmp and
 * before renaming that to ID left a complete tree there: it goes back to
 * the staging area, to be reused like any interrupted push.
 */
static int recover_tmp(fs_push *p)
{
    int snaps = fs_open(p->lock->ds, "snapshots", O_PATH | O_DIRECTORY, 0);
    if (snaps < 0)
        return errno == ENOENT ? 0 : -1;
    if (delete_leftovers(snaps, NULL) < 0) {
        int e = errno;
        close(snaps);
        errno = e;
        return -1;
    }
    fs_names names;
    if (fs_names_read(snaps, &names, is_tmp, NULL) < 0) {
        int e = errno;
        close(snaps);
        errno = e;
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
    int e = errno;
    fs_names_free(&names);
    close(snaps);
    errno = e;
    return rc;
}

static int open_list(fs_push *p, const char *name)
{
    return fs_open(p->staging, name, O_RDWR | O_CREAT | O_TRUNC, 0600);
}

static int fs_push_begin(store_lock *lb, store_push **out, store_push_info *info, store_err *err)
{
    fs_lock *l = (fs_lock *)lb;
    memset(info, 0, sizeof(*info));
    fs_push *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return store_fail(err, ENOMEM, "out of memory");
    p->base.ops = &store_fs_ops;
    p->lock = l;
    p->staging = p->tree = p->old = p->prev = -1;
    p->needs = p->needidx = p->cur.fd = -1;
    p->manifest.fd = p->links.fd = -1;

    const char *doing = "opening the staging area";
    struct stat st;
    if ((p->staging = fs_open(l->ds, ".staging", O_PATH | O_DIRECTORY, 0)) < 0)
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
    doing = "opening the latest snapshot";
    int found = fs_snapshot_latest(l->ds, info->previous);
    if (found < 0)
        goto fail;
    if (found) {
        int snap = fs_snapshot_open(l->ds, info->previous);
        if (snap < 0)
            goto fail;
        p->prev = fs_open(snap, "tree", O_PATH | O_DIRECTORY, 0);
        int e = errno;
        close(snap);
        if (p->prev < 0) {
            errno = e;
            goto fail;
        }
    } else {
        info->previous[0] = '\0';
    }
    if ((p->scratch = XXH3_createState()) == NULL) {
        errno = ENOMEM;
        goto fail;
    }
    info->resuming = p->old >= 0;
    *out = &p->base;
    return 0;

fail:;
    int rc = errno_err(err, doing);
    fs_push_end(&p->base);
    return rc;
}

static int fs_put_dir(store_push *base, const hsp_entry *e, store_err *err)
{
    fs_push *p = (fs_push *)base;
    entry_path(p->path, e->path, e->path_len);
    fs_at at;
    if (fs_at_open(&at, p->tree, p->path) < 0)
        return path_err(err, errno, "making directory", p->path);
    if (mkdirat(at.fd, at.name, 0700) < 0) {
        int code = errno;
        struct stat st;
        if (code != EEXIST || fstatat(at.fd, at.name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISDIR(st.st_mode)) {
            fs_at_close(&at);
            return path_err(err, code, "making directory", p->path);
        }
    }
    fs_at_close(&at);
    /* Its mode and mtime are set at commit, once nothing more is made in
     * it. */
    return manifest_put(p, e, err);
}

static int fs_put_symlink(store_push *base, const hsp_entry *e, store_err *err)
{
    fs_push *p = (fs_push *)base;
    entry_path(p->path, e->path, e->path_len);
    entry_path(p->target, e->target, e->target_len);
    fs_at at;
    if (fs_at_open(&at, p->tree, p->path) < 0)
        return path_err(err, errno, "making symlink", p->path);
    /* Stored as it is; the store never follows it (every lookup refuses
     * symlinks). */
    struct timespec ts[2] = {{.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec},
                             {.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec}};
    if (symlinkat(p->target, at.fd, at.name) < 0 ||
        utimensat(at.fd, at.name, ts, AT_SYMLINK_NOFOLLOW) < 0) {
        int code = errno;
        fs_at_close(&at);
        return path_err(err, code, "making symlink", p->path);
    }
    fs_at_close(&at);
    return manifest_put(p, e, err);
}

static int fs_put_hardlink(store_push *base, const hsp_entry *e, store_err *err)
{
    fs_push *p = (fs_push *)base;
    /* Made at commit, when their targets are all there. */
    if (fs_rec_put_entry(&p->links, e) < 0)
        return errno_err(err, "writing the staging area");
    return 0;
}

/* Moves old/PATH to tree/PATH. */
static int take_from_old(fs_push *p, store_err *err)
{
    fs_at from, to;
    if (fs_at_open(&from, p->old, p->path) < 0)
        return path_err(err, errno, "reusing", p->path);
    if (fs_at_open(&to, p->tree, p->path) < 0) {
        int code = errno;
        fs_at_close(&from);
        return path_err(err, code, "reusing", p->path);
    }
    int rc = renameat2(from.fd, from.name, to.fd, to.name, RENAME_NOREPLACE);
    int code = errno;
    fs_at_close(&from);
    fs_at_close(&to);
    if (rc < 0)
        return path_err(err, code, "reusing", p->path);
    return 0;
}

/*
 * What an interrupted push left in old/PATH. A file with its hash
 * attribute was complete: if it is still what the entry describes, and
 * its content still has that hash (a crash may lose data the attribute
 * outlived), it is taken as it is. A file without was being received:
 * its content so far is taken, and the rest awaited.
 */
static int fs_file_resumed(store_push *base, const hsp_entry *e, hsp_hash *hash, uint64_t *held,
                           store_err *err)
{
    fs_push *p = (fs_push *)base;
    *held = 0;
    if (p->old < 0)
        return STORE_NOTHING;
    entry_path(p->path, e->path, e->path_len);
    int fd = fs_open(p->old, p->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0)
        return STORE_NOTHING;
    struct stat st;
    int found = STORE_NOTHING;
    hsp_hash stored, h;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        if (fs_hash_get(fd, &stored) == 0) {
            if (same_file(&st, e) && fs_hash_file(fd, e->size, p->scratch, &h) == 0 &&
                hsp_hash_equal(&h, &stored)) {
                *hash = stored;
                found = STORE_COMPLETE;
            }
        } else if (st.st_nlink == 1 && st.st_size > 0 && (uint64_t)st.st_size <= e->size) {
            /* Only a file of its own (one link) may be written to: a file
             * linked from a snapshot never is. */
            if (fs_hash_file(fd, (uint64_t)st.st_size, p->scratch, hash) == 0) {
                *held = (uint64_t)st.st_size;
                found = STORE_PARTIAL;
            }
        }
    }
    close(fd);
    if (found == STORE_NOTHING)
        return STORE_NOTHING;
    int rc = take_from_old(p, err);
    if (rc < 0)
        return rc;
    if (found == STORE_COMPLETE) {
        hsp_entry m = *e;
        m.hash = *hash;
        if ((rc = manifest_put(p, &m, err)) < 0)
            return rc;
    } else {
        hsp_entry m = *e;
        if ((rc = base->ops->file_await(base, &m, err)) < 0)
            return rc;
    }
    return found;
}

/*
 * The latest snapshot holds the same file (size, mtime and mode as the
 * entry says): link it into the tree instead of receiving it again.
 */
static int fs_file_link_previous(store_push *base, const hsp_entry *e, hsp_hash *hash,
                                 store_err *err)
{
    fs_push *p = (fs_push *)base;
    if (p->prev < 0)
        return 0;
    entry_path(p->path, e->path, e->path_len);
    int fd = fs_open(p->prev, p->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0)
        return 0;
    struct stat st;
    if (fstat(fd, &st) < 0 || !same_file(&st, e)) {
        close(fd);
        return 0;
    }
    if (fs_hash_get(fd, hash) < 0) {
        /* A store on a file system without user extended attributes:
         * read the hash from the content instead. */
        if (fs_hash_file(fd, e->size, p->scratch, hash) < 0) {
            close(fd);
            return 0;
        }
    }
    close(fd);
    fs_at from, to;
    if (fs_at_open(&from, p->prev, p->path) < 0)
        return 0;
    if (fs_at_open(&to, p->tree, p->path) < 0) {
        int code = errno;
        fs_at_close(&from);
        return path_err(err, code, "linking", p->path);
    }
    int rc = linkat(from.fd, from.name, to.fd, to.name, 0);
    int code = errno;
    fs_at_close(&from);
    fs_at_close(&to);
    if (rc < 0) {
        if (code == EMLINK)
            return 0; /* the inode has all the links it may have: store a copy */
        return path_err(err, code, "linking", p->path);
    }
    hsp_entry m = *e;
    m.hash = *hash;
    rc = manifest_put(p, &m, err);
    return rc < 0 ? rc : 1;
}

static int fs_file_await(store_push *base, const hsp_entry *e, store_err *err)
{
    fs_push *p = (fs_push *)base;
    uint8_t buf[FILE_RECORD];
    hsp_writer w;
    hsp_writer_init(&w, buf, sizeof(buf));
    hsp_entry m = *e;
    m.target = NULL;
    m.target_len = 0;
    if (hsp_put_entry(&w, &m) < 0)
        return store_fail(err, EINVAL, "an entry too large for the staging area");
    need_slot slot = {.offset = p->needs_end, .len = (uint32_t)w.len, .state = SLOT_NEEDED};
    if (e->id >= p->nslots)
        p->nslots = e->id + 1;
    if (needs_append(p, buf, w.len) < 0 || slot_put(p, e->id, &slot) < 0)
        return errno_err(err, "writing the staging area");
    return 0;
}

static int fs_file_open(store_push *base, uint64_t id, hsp_entry *e, char path[HSP_PATH_MAX + 1],
                        uint64_t *held, store_err *err)
{
    fs_push *p = (fs_push *)base;
    close_fd(&p->cur.fd);
    p->cur.written_back = 0;
    int rc = need_load(p, id, &p->cur.slot, &p->cur.e, p->cur.path, err);
    if (rc != 0)
        return rc;
    int fd = fs_open(p->tree, p->cur.path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);
    if (fd < 0)
        return path_err(err, errno, "creating", p->cur.path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int code = errno;
        close(fd);
        return path_err(err, code, "creating", p->cur.path);
    }
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1) {
        close(fd);
        return path_err(err, EEXIST, "creating", p->cur.path);
    }
    p->cur.fd = fd;
    p->cur.id = id;
    *e = p->cur.e;
    memcpy(path, p->cur.path, strlen(p->cur.path) + 1);
    e->path = path;
    *held = (uint64_t)st.st_size;
    return 0;
}

static ssize_t fs_file_read(store_push *base, uint64_t offset, void *buf, size_t len,
                            store_err *err)
{
    fs_push *p = (fs_push *)base;
    ssize_t n = fs_pread_all(p->cur.fd, buf, len, (off_t)offset);
    if (n < 0)
        return path_err(err, errno, "reading", p->cur.path);
    return n;
}

static int fs_file_write(store_push *base, uint64_t offset, const void *data, size_t len,
                         store_err *err)
{
    fs_push *p = (fs_push *)base;
    if (fs_pwrite_all(p->cur.fd, data, len, (off_t)offset) < 0)
        return path_err(err, errno, "writing", p->cur.path);
    /* Blocks arrive in order: once FS_WRITEBACK_BYTES are written past
     * the last writeback, the disk starts on them. A file system that
     * cannot (ESPIPE, EINVAL) leaves it all to syncfs, as before. */
    uint64_t end = offset + len;
    if (offset < p->cur.written_back)
        p->cur.written_back = offset;
    if (end - p->cur.written_back >= FS_WRITEBACK_BYTES) {
        (void)sync_file_range(p->cur.fd, (off_t)p->cur.written_back,
                              (off_t)(end - p->cur.written_back), SYNC_FILE_RANGE_WRITE);
        p->cur.written_back = end;
    }
    return 0;
}

static int fs_file_hole(store_push *base, uint64_t offset, uint64_t len, store_err *err)
{
    fs_push *p = (fs_push *)base;
    /* The file ends at offset: extending it makes the hole without
     * writing zeros, so a sparse file stays sparse. */
    if (ftruncate(p->cur.fd, (off_t)(offset + len)) < 0)
        return path_err(err, errno, "extending", p->cur.path);
    return 0;
}

static int fs_file_truncate(store_push *base, uint64_t size, store_err *err)
{
    fs_push *p = (fs_push *)base;
    if (ftruncate(p->cur.fd, (off_t)size) < 0)
        return path_err(err, errno, "truncating", p->cur.path);
    return 0;
}

static int fs_file_done(store_push *base, const hsp_hash *hash, store_err *err)
{
    fs_push *p = (fs_push *)base;
    hsp_entry *e = &p->cur.e;
    /* The hash goes into the attribute first (it marks the file complete
     * for a later resume), then mode and mtime, last because the others
     * change the inode's times. */
    int fd = p->cur.fd;
    struct timespec ts[2] = {{.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec},
                             {.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec}};
    if (fs_hash_set(fd, hash) < 0) {
        if (errno != ENOTSUP && errno != EOPNOTSUPP)
            return path_err(err, errno, "finishing", p->cur.path);
        if (!p->xattr_missing)
            store_log(p->lock->s, HAUL_LOG_WARN,
                      "the store's file system keeps no user extended attributes: an "
                      "interrupted push will resend files, and incremental pushes re-read "
                      "unchanged ones");
        p->xattr_missing = 1;
    }
    if (fchmod(fd, fs_disk_mode(HSP_FILE, e->mode)) < 0 || futimens(fd, ts) < 0)
        return path_err(err, errno, "finishing", p->cur.path);
    close_fd(&p->cur.fd);
    hsp_entry m = *e;
    m.hash = *hash;
    int rc = manifest_put(p, &m, err);
    if (rc < 0)
        return rc;
    p->cur.slot.state = SLOT_DONE;
    if (slot_put(p, p->cur.id, &p->cur.slot) < 0)
        return errno_err(err, "writing the staging area");
    return 0;
}

static void fs_file_close(store_push *base)
{
    fs_push *p = (fs_push *)base;
    close_fd(&p->cur.fd);
}

static int fs_file_drop(store_push *base, uint64_t id, char path[HSP_PATH_MAX + 1], store_err *err)
{
    fs_push *p = (fs_push *)base;
    need_slot slot;
    hsp_entry e;
    if (p->cur.fd >= 0 && p->cur.id == id) {
        close_fd(&p->cur.fd);
        slot = p->cur.slot;
        memcpy(p->path, p->cur.path, strlen(p->cur.path) + 1);
    } else {
        int rc = need_load(p, id, &slot, &e, p->path, err);
        if (rc != 0)
            return rc;
    }
    fs_at at;
    if (fs_at_open(&at, p->tree, p->path) == 0) {
        if (unlinkat(at.fd, at.name, 0) < 0 && errno != ENOENT) {
            int code = errno;
            fs_at_close(&at);
            return path_err(err, code, "removing", p->path);
        }
        fs_at_close(&at);
    }
    slot.state = SLOT_SKIPPED;
    if (slot_put(p, id, &slot) < 0)
        return errno_err(err, "writing the staging area");
    memcpy(path, p->path, strlen(p->path) + 1);
    return 0;
}

/* ---- commit -------------------------------------------------------------------------- */

/* Makes the hard links recorded in LINKS; a link whose target is not in
 * the tree (skipped, or not a file) is left out and reported. */
static int make_links(fs_push *p, store_problem_fn *problem, void *arg, store_err *err)
{
    if (fs_rec_flush(&p->links) < 0)
        return errno_err(err, "writing the staging area");
    if (p->links.written == 0)
        return 0;
    int fd = fs_open(p->staging, "LINKS", O_RDONLY, 0);
    fs_rec_reader rd;
    if (fd < 0 || fs_rec_reader_init(&rd, fd) < 0) {
        int code = errno;
        if (fd >= 0)
            close(fd);
        return store_fail(err, code, "reading the staging area: %s", store_strerror(code));
    }
    hsp_record rec;
    int rc, result = 0;
    while ((rc = fs_rec_next(&rd, &rec)) == 1) {
        const hsp_entry *e = &rec.entry;
        if (rec.type != HSP_ENTRY)
            continue;
        entry_path(p->path, e->path, e->path_len);
        entry_path(p->target, e->target, e->target_len);
        fs_at from, to;
        int code = 0;
        if (fs_at_open(&from, p->tree, p->target) < 0)
            code = errno;
        else if (fs_at_open(&to, p->tree, p->path) < 0) {
            code = errno;
            fs_at_close(&from);
        } else {
            if (linkat(from.fd, from.name, to.fd, to.name, 0) < 0)
                code = errno;
            fs_at_close(&from);
            fs_at_close(&to);
        }
        char t[1024], l[1024];
        hsp_path_text(p->path, strlen(p->path), t, sizeof(t));
        hsp_path_text(p->target, strlen(p->target), l, sizeof(l));
        if (code == 0) {
            if ((result = manifest_put(p, e, err)) < 0)
                break;
        } else if (code == ENOENT || code == ENOTDIR || code == EPERM || code == ELOOP ||
                   code == EEXIST || code == EMLINK) {
            char text[2200];
            snprintf(text, sizeof(text), "%s: hard link to %s left out: %s", t, l, strerror(code));
            if (problem)
                problem(arg, text);
        } else {
            result = store_fail(err, code, "linking %s to %s: %s", t, l, store_strerror(code));
            break;
        }
    }
    if (rc < 0 && result == 0)
        result = errno_err(err, "reading the staging area");
    fs_rec_reader_fini(&rd);
    return result;
}

/* Gives the directories their mode and mtime, now that nothing more is
 * made in them. On disk a directory keeps the owner's rwx, so the order
 * does not matter. */
static int finish_dirs(fs_push *p, store_err *err)
{
    if (fs_rec_flush(&p->manifest) < 0)
        return errno_err(err, "writing the manifest");
    int fd = fs_open(p->staging, "MANIFEST.part", O_RDONLY, 0);
    fs_rec_reader rd;
    if (fd < 0 || fs_rec_reader_init(&rd, fd) < 0) {
        int code = errno;
        if (fd >= 0)
            close(fd);
        return store_fail(err, code, "reading the manifest: %s", store_strerror(code));
    }
    hsp_record rec;
    int rc, result = 0;
    while ((rc = fs_rec_next(&rd, &rec)) == 1) {
        const hsp_entry *e = &rec.entry;
        if (rec.type != HSP_ENTRY || e->kind != HSP_DIR)
            continue;
        entry_path(p->path, e->path, e->path_len);
        struct timespec ts[2] = {{.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec},
                                 {.tv_sec = e->mtime_sec, .tv_nsec = e->mtime_nsec}};
        int dfd = fs_open(p->tree, p->path, O_RDONLY | O_DIRECTORY, 0);
        if (dfd < 0 || fchmod(dfd, fs_disk_mode(HSP_DIR, e->mode)) < 0 || futimens(dfd, ts) < 0) {
            int code = errno;
            if (dfd >= 0)
                close(dfd);
            result = path_err(err, code, "setting the metadata of", p->path);
            break;
        }
        close(dfd);
    }
    if (rc < 0 && result == 0)
        result = errno_err(err, "reading the manifest");
    fs_rec_reader_fini(&rd);
    return result;
}

/*
 * Links and directory metadata first, then the manifest, then one
 * syncfs() for all of it; then the tree and the manifest move into
 * snapshots/ID.tmp, which becomes snapshots/ID by an atomic rename.
 */
static int fs_push_commit(store_push *base, uint64_t files, uint64_t bytes,
                          char id[HSP_SNAPSHOT_MAX + 1], store_problem_fn *problem, void *arg,
                          store_err *err)
{
    fs_push *p = (fs_push *)base;
    fs_lock *l = p->lock;
    close_fd(&p->cur.fd);
    int rc = make_links(p, problem, arg, err);
    if (rc == 0)
        rc = finish_dirs(p, err);
    if (rc < 0)
        return rc;
    if (fs_rec_flush(&p->manifest) < 0 || fsync(p->manifest.fd) < 0)
        return errno_err(err, "writing the manifest");
    if (syncfs(p->manifest.fd) < 0)
        return errno_err(err, "making the snapshot durable");
    int snaps = fs_mkdir_open(l->ds, "snapshots", 0700);
    if (snaps < 0)
        return errno_err(err, "making the snapshots directory");
    char latest[HSP_SNAPSHOT_MAX + 1] = "";
    if (fs_snapshot_latest(l->ds, latest) < 0) {
        rc = errno_err(err, "reading the snapshots");
        close(snaps);
        return rc;
    }
    char tmpname[HSP_SNAPSHOT_MAX + 8];
    int tmp = fs_snapshot_begin(snaps, latest, id);
    if (tmp < 0) {
        rc = errno_err(err, "making the snapshot");
        close(snaps);
        return rc;
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
        ok = fs_snapshot_info_write(tmp, id, (int64_t)time(NULL), files, bytes) == 0;
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
            ok = fs_fsync_dir(snaps, ".") == 0 && fs_fsync_dir(l->ds, ".") == 0 &&
                 fs_fsync_dir(l->ns, ".") == 0 && fs_fsync_dir(l->s->root, ".") == 0;
            if (!ok) {
                /* Not durably there: it must not be a snapshot that the
                 * client is told failed and that a crash may take away.
                 * As ID.tmp it goes back to the staging area of the next
                 * push. */
                int e = errno;
                if (renameat(snaps, id, snaps, tmpname) < 0) {
                    char text[512];
                    snprintf(text, sizeof(text),
                             "cannot take back snapshot %s, which may not be durable: %s", id,
                             store_strerror(errno));
                    store_log(l->s, HAUL_LOG_ERROR, text);
                }
                errno = e;
            }
        }
    }
    int code = errno;
    close(tmp);
    close(snaps);
    if (!ok) {
        id[0] = '\0';
        return store_fail(err, code, "%s: %s", doing, store_strerror(code));
    }

    /* Committed. What is left of the staging area goes; an error here
     * only costs space, which the next push reclaims. */
    p->committed = 1;
    close_staging(p);
    static const char *const leftovers[] = {"old", "NEEDS", "NEEDIDX", "LINKS"};
    for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++)
        if (fs_remove_tree(p->staging, leftovers[i]) < 0) {
            char text[512];
            snprintf(text, sizeof(text), "cannot remove .staging/%s: %s", leftovers[i],
                     strerror(errno));
            store_log(l->s, HAUL_LOG_WARN, text);
        }
    return 0;
}

/* ---- reading a snapshot ------------------------------------------------------------- */

static void fs_snapshot_close(store_snapshot *base)
{
    fs_snapshot *snap = (fs_snapshot *)base;
    if (snap->mf_open)
        fs_rec_reader_fini(&snap->mf);
    close_fd(&snap->tree);
    free(snap);
}

/* The snapshot directory of a dataset (id "" for the latest, filled in),
 * or -1 with errno (ENOENT: there is none). */
static int snap_dir(int ds, char id[HSP_SNAPSHOT_MAX + 1])
{
    if (id[0] == '\0') {
        int found = fs_snapshot_latest(ds, id);
        if (found <= 0) {
            if (found == 0)
                errno = ENOENT;
            return -1;
        }
    }
    return fs_snapshot_open(ds, id);
}

static int info_of(fs_store *s, const store_dataset *ds, const char *id, store_info *info,
                   int *snap_out, store_err *err)
{
    memset(info, 0, sizeof(*info));
    int dsfd = ds_open(s, ds);
    if (dsfd < 0) {
        if (errno == ENOENT)
            return store_fail(err, ENOENT, "no such dataset");
        return errno_err(err, "opening the dataset");
    }
    snprintf(info->id, sizeof(info->id), "%s", id);
    int snap = snap_dir(dsfd, info->id);
    int code = errno;
    close(dsfd);
    if (snap < 0) {
        if (code == ENOENT)
            return store_fail(err, ENOENT, "no such snapshot");
        return store_fail(err, code, "opening snapshot %s: %s", info->id, store_strerror(code));
    }
    fs_snapshot_info(snap, &info->time, &info->files, &info->bytes);
    if (snap_out)
        *snap_out = snap;
    else
        close(snap);
    return 0;
}

static int fs_snapshot_open_read(store *base, const store_dataset *ds, const char *id,
                                 store_snapshot **out, store_info *info, store_err *err)
{
    fs_store *s = (fs_store *)base;
    int dir = -1;
    int rc = info_of(s, ds, id, info, &dir, err);
    if (rc < 0)
        return rc;
    fs_snapshot *snap = calloc(1, sizeof(*snap));
    if (snap == NULL) {
        close(dir);
        return store_fail(err, ENOMEM, "out of memory");
    }
    snap->base.ops = &store_fs_ops;
    snap->tree = -1;
    int fd = -1;
    if ((snap->tree = fs_open(dir, "tree", O_PATH | O_DIRECTORY, 0)) < 0 ||
        (fd = fs_open(dir, "MANIFEST", O_RDONLY, 0)) < 0) {
        int code = errno;
        close(dir);
        fs_snapshot_close(&snap->base);
        return store_fail(err, code, "snapshot %s is damaged: %s", info->id, store_strerror(code));
    }
    close(dir);
    if (fs_rec_reader_init(&snap->mf, fd) < 0) {
        close(fd);
        fs_snapshot_close(&snap->base);
        return store_fail(err, ENOMEM, "out of memory");
    }
    snap->mf_open = 1;
    *out = &snap->base;
    return 0;
}

static int fs_manifest_next(store_snapshot *base, hsp_record *rec, store_err *err)
{
    fs_snapshot *snap = (fs_snapshot *)base;
    for (;;) {
        int rc = fs_rec_next(&snap->mf, rec);
        if (rc < 0) {
            int code = errno;
            if (code == EBADMSG)
                return store_fail(err, EIO, "the manifest is damaged");
            return store_fail(err, code, "the manifest is unreadable: %s", store_strerror(code));
        }
        if (rc == 0 || rec->type == HSP_ENTRY)
            return rc;
    }
}

static int fs_file_open_read(store_snapshot *base, const hsp_entry *e, store_file **out,
                             uint64_t *size, store_err *err)
{
    fs_snapshot *snap = (fs_snapshot *)base;
    /* A hard link is the same inode as its target: its own path opens
     * the content. */
    entry_path(snap->path, e->path, e->path_len);
    int fd = fs_open(snap->tree, snap->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
    if (fd < 0)
        return store_fail(err, errno, "missing from the store (%s)", store_strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return store_fail(err, EIO, "not a regular file in the store");
    }
    fs_file *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        close(fd);
        return store_fail(err, ENOMEM, "out of memory");
    }
    f->base.ops = &store_fs_ops;
    f->fd = fd;
    f->size = (uint64_t)st.st_size;
    f->seek_holes = 1;
    *size = f->size;
    *out = &f->base;
    return 0;
}

static ssize_t fs_file_pread(store_file *base, uint64_t offset, void *buf, size_t len,
                             store_err *err)
{
    fs_file *f = (fs_file *)base;
    ssize_t n = fs_pread_all(f->fd, buf, len, (off_t)offset);
    if (n < 0)
        return store_fail(err, errno, "cannot be read (%s)", store_strerror(errno));
    return n;
}

static int fs_file_data(store_file *base, uint64_t offset, uint64_t *data, uint64_t *end,
                        store_err *err)
{
    fs_file *f = (fs_file *)base;
    *data = offset;
    *end = f->size;
    if (!f->seek_holes || offset >= f->size)
        return 0;
    off_t d = lseek(f->fd, (off_t)offset, SEEK_DATA);
    if (d < 0 && errno == ENXIO) {
        *data = f->size; /* a hole up to the end */
        return 0;
    }
    if (d < 0) {
        f->seek_holes = 0; /* not supported here: all data */
        return 0;
    }
    *data = (uint64_t)d < f->size ? (uint64_t)d : f->size;
    off_t h = lseek(f->fd, d, SEEK_HOLE);
    if (h >= 0 && (uint64_t)h < f->size)
        *end = (uint64_t)h;
    if (*end < *data)
        *end = *data;
    return 0;
}

static void fs_file_close_read(store_file *base)
{
    fs_file *f = (fs_file *)base;
    close_fd(&f->fd);
    free(f);
}

static int fs_check_entry(store_snapshot *base, const hsp_entry *e, char *why, size_t size)
{
    fs_snapshot *snap = (fs_snapshot *)base;
    char *path = snap->path;
    entry_path(path, e->path, e->path_len);
    struct stat st;
    if (e->kind == HSP_DIR) {
        int fd = fs_open(snap->tree, path, O_PATH | O_DIRECTORY, 0);
        if (fd < 0) {
            snprintf(why, size, "the directory is missing from the store (%s)",
                     store_strerror(errno));
            return 1;
        }
        close(fd);
        return 0;
    }
    fs_at at;
    if (fs_at_open(&at, snap->tree, path) < 0) {
        snprintf(why, size, "missing from the store (%s)", store_strerror(errno));
        return 1;
    }
    int bad = 0;
    if (e->kind == HSP_SYMLINK) {
        char target[65536];
        ssize_t n = readlinkat(at.fd, at.name, target, sizeof(target));
        if (n < 0) {
            snprintf(why, size, "the symlink is missing from the store (%s)",
                     store_strerror(errno));
            bad = 1;
        } else if ((size_t)n != e->target_len || memcmp(target, e->target, e->target_len) != 0) {
            snprintf(why, size, "the symlink's target differs from the manifest");
            bad = 1;
        }
    } else if (e->kind == HSP_HARDLINK) {
        struct stat target;
        entry_path(snap->target, e->target, e->target_len);
        int tfd = fs_open(snap->tree, snap->target, O_PATH | O_NOFOLLOW, 0);
        if (fstatat(at.fd, at.name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            snprintf(why, size, "the hard link is missing from the store (%s)",
                     store_strerror(errno));
            bad = 1;
        } else if (tfd < 0 || fstat(tfd, &target) < 0 || target.st_ino != st.st_ino ||
                   target.st_dev != st.st_dev) {
            snprintf(why, size, "not linked to its target as the manifest says");
            bad = 1;
        }
        close_fd(&tfd);
    }
    fs_at_close(&at);
    return bad;
}

/* ---- listing, deleting, usage ------------------------------------------------------------ */

static void names_take(store_names *out, fs_names *names)
{
    out->v = names->v;
    out->n = names->n;
    out->cap = names->cap;
    memset(names, 0, sizeof(*names));
}

static int fs_list_datasets(store *base, const char *ns, store_names *out, store_err *err)
{
    fs_store *s = (fs_store *)base;
    memset(out, 0, sizeof(*out));
    /* A principal that never pushed has no namespace yet: an empty list. */
    int fd = ns_open(s, ns, 0);
    if (fd < 0)
        return errno == ENOENT ? 0 : errno_err(err, "opening the namespace");
    fs_names names;
    int rc = fs_names_read(fd, &names, fs_dataset_name_ok, NULL);
    int code = errno;
    close(fd);
    if (rc < 0)
        return store_fail(err, code, "reading the namespace: %s", store_strerror(code));
    names_take(out, &names);
    return 0;
}

static int fs_list_snapshots(store *base, const store_dataset *ds, store_names *out, store_err *err)
{
    fs_store *s = (fs_store *)base;
    memset(out, 0, sizeof(*out));
    int dsfd = ds_open(s, ds);
    if (dsfd < 0)
        return errno == ENOENT ? store_fail(err, ENOENT, "no such dataset")
                               : errno_err(err, "opening the dataset");
    int snaps = fs_open(dsfd, "snapshots", O_PATH | O_DIRECTORY, 0);
    int code = errno;
    close(dsfd);
    if (snaps < 0)
        return code == ENOENT
                   ? 0
                   : store_fail(err, code, "reading the snapshots: %s", store_strerror(code));
    fs_names names;
    int rc = fs_names_read(snaps, &names, fs_snapshot_id_ok, fs_snapshot_cmp);
    code = errno;
    close(snaps);
    if (rc < 0)
        return store_fail(err, code, "reading the snapshots: %s", store_strerror(code));
    names_take(out, &names);
    return 0;
}

static int fs_snapshot_info_of(store *base, const store_dataset *ds, const char *id,
                               store_info *info, store_err *err)
{
    return info_of((fs_store *)base, ds, id, info, NULL, err);
}

static int fs_snapshot_delete(store_lock *lb, const char *id, store_info *info, uint64_t *freed,
                              store_err *err)
{
    fs_lock *l = (fs_lock *)lb;
    memset(info, 0, sizeof(*info));
    *freed = 0;
    if (!fs_snapshot_id_ok(id))
        return store_fail(err, ENOENT, "no such snapshot");
    int snap = fs_snapshot_open(l->ds, id);
    if (snap < 0) {
        if (errno == ENOENT)
            return store_fail(err, ENOENT, "no such snapshot");
        return errno_err(err, "opening the snapshot");
    }
    snprintf(info->id, sizeof(info->id), "%s", id);
    fs_snapshot_info(snap, &info->time, &info->files, &info->bytes);
    close(snap);
    int snaps = fs_open(l->ds, "snapshots", O_PATH | O_DIRECTORY, 0);
    if (snaps < 0)
        return errno_err(err, "opening the snapshots");
    char gone[HSP_SNAPSHOT_MAX + sizeof(DELETING)];
    snprintf(gone, sizeof(gone), "%s%s", id, DELETING);
    int renamed = renameat(snaps, id, snaps, gone) == 0;
    if (!renamed || fs_fsync_dir(snaps, ".") < 0) {
        int code = errno;
        /* Not durably gone: it stays a snapshot, as the client is told,
         * rather than vanish now and perhaps come back after a crash. */
        if (renamed)
            renameat(snaps, gone, snaps, id);
        close(snaps);
        return store_fail(err, code, "taking the snapshot away: %s", store_strerror(code));
    }
    if (delete_leftovers(snaps, freed) < 0) {
        /* The snapshot is gone for every reader already; the files left
         * go with the next push or delete. */
        char text[512];
        snprintf(text, sizeof(text),
                 "removing the files of snapshot %s: %s (the next push or delete of the "
                 "dataset tries again)",
                 id, store_strerror(errno));
        store_log(l->s, HAUL_LOG_WARN, text);
    }
    close(snaps);
    return 0;
}

static int fs_usage_of(store *base, const char *ns, uint64_t *bytes, store_err *err)
{
    fs_store *s = (fs_store *)base;
    *bytes = 0;
    int fd = ns_open(s, ns, 0);
    if (fd < 0)
        return errno == ENOENT ? 0 : errno_err(err, "opening the namespace");
    int rc = fs_usage(fd, bytes);
    int code = errno;
    close(fd);
    if (rc < 0)
        return store_fail(err, code, "measuring the namespace: %s", store_strerror(code));
    return 0;
}

const store_ops store_fs_ops = {
    .name = "fs",
    .open = fs_store_open_spec,
    .close = fs_store_close,
    .dataset_exists = fs_dataset_exists,
    .lock = fs_lock_dataset,
    .unlock = fs_unlock,
    .push_begin = fs_push_begin,
    .put_dir = fs_put_dir,
    .put_symlink = fs_put_symlink,
    .put_hardlink = fs_put_hardlink,
    .file_resumed = fs_file_resumed,
    .file_link_previous = fs_file_link_previous,
    .file_await = fs_file_await,
    .file_open = fs_file_open,
    .file_read = fs_file_read,
    .file_write = fs_file_write,
    .file_hole = fs_file_hole,
    .file_truncate = fs_file_truncate,
    .file_done = fs_file_done,
    .file_close = fs_file_close,
    .file_drop = fs_file_drop,
    .push_commit = fs_push_commit,
    .push_end = fs_push_end,
    .snapshot_open = fs_snapshot_open_read,
    .snapshot_close = fs_snapshot_close,
    .manifest_next = fs_manifest_next,
    .file_open_read = fs_file_open_read,
    .file_pread = fs_file_pread,
    .file_data = fs_file_data,
    .file_close_read = fs_file_close_read,
    .check_entry = fs_check_entry,
    .list_datasets = fs_list_datasets,
    .list_snapshots = fs_list_snapshots,
    .snapshot_info = fs_snapshot_info_of,
    .snapshot_delete = fs_snapshot_delete,
    .usage = fs_usage_of,
};
