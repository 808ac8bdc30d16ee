/*
 * store.h - what hauld keeps its snapshots in: one interface, and an
 * implementation per kind of store.
 *
 * hauld's requests (src/hauld/push.c, read.c, delete.c) speak the storage
 * protocol (docs/store-protocol.md) and reach the store through the
 * operations below only; they never ask which store they have:
 *
 *   store/fs_store.c  the file-system store (store/fs.c below it): one
 *                     directory tree per snapshot, files hard-linked
 *                     between snapshots, a staging area per dataset.
 *                     Chosen with `--store DIR` or `--store fs:DIR`.
 *   store/rados.c     Ceph RADOS: file content in striped objects, the
 *                     manifest as an object, unchanged files referencing
 *                     the objects of the previous snapshot. Chosen with
 *                     `--store rados:POOL`.
 *
 * What a store holds. A store has namespaces (one per principal, named by
 * its root: plain names joined by '/', "hosts/web1"); a namespace has
 * datasets (hsp_name_ok names); a dataset has snapshots, named by ids the
 * store makes (YYYYMMDDTHHMMSSZ, then -2, -3, ... when taken; ordered by
 * time). A committed snapshot is a manifest, the ENTRY records of its
 * tree in the order they were put (each FILE with its content hash), and
 * the content of its files. It never changes until it is deleted.
 *
 * Contracts common to every operation:
 * - Results: 0 (or a non-negative value the operation names) on success,
 *   or a negative errno value (-ENOENT, -ENOSPC, -EIO, ...) on failure.
 *   A failing call fills err->text with one sentence for the client and
 *   the log, that names what failed and why ("writing dir/f: no space
 *   left on the store"), without a trailing period; the caller adds
 *   nothing but context. err may not be NULL. A call that succeeds
 *   leaves err as it was.
 * - Every call may block, for as long as the store's own timeouts allow
 *   (a disk, a network round trip to an object store): none assumes it
 *   runs on hauld's event loop, and none calls back into hauld but
 *   through the log function of store_options.
 * - Threads: store_open() and store_close() are called once. The other
 *   calls on one store may come from several threads at once, each on
 *   objects of its own: one object (a lock, a push, a snapshot, a file)
 *   is used by one thread at a time.
 * - Ownership: the caller owns what it passes in, for the duration of the
 *   call only; a store copies what it keeps (an hsp_entry points into a
 *   message that is freed after the call). Objects a call makes (out
 *   parameters) belong to the caller until the call that ends them.
 * - Names given to the store (namespaces, datasets, snapshot ids, paths)
 *   were checked by hauld with hsp_name_ok() and hsp_path_ok(); a store
 *   still never lets one reach outside its dataset.
 */
#ifndef HAUL_STORE_STORE_H
#define HAUL_STORE_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/store.h"

typedef struct store_ops store_ops;

/* The objects of a store. Each implementation embeds the base as its
 * first member; ops is set by the call that makes the object. */
typedef struct store {
    const store_ops *ops;
} store;

typedef struct store_lock {
    const store_ops *ops;
} store_lock;

typedef struct store_push {
    const store_ops *ops;
} store_push;

typedef struct store_snapshot {
    const store_ops *ops;
} store_snapshot;

typedef struct store_file {
    const store_ops *ops;
} store_file;

/* The sentence that goes with a failure. */
#define STORE_ERR_MAX 1024
typedef struct store_err {
    char text[STORE_ERR_MAX];
} store_err;

/* A dataset: the namespace root and the dataset's name. */
typedef struct store_dataset {
    const char *ns;
    const char *name;
} store_dataset;

/* A committed snapshot, as listed. */
typedef struct store_info {
    char id[HSP_SNAPSHOT_MAX + 1];
    int64_t time; /* commit time, seconds since the epoch */
    uint64_t files, bytes;
} store_info;

/* A list of names (datasets or snapshot ids), sorted. */
typedef struct store_names {
    char **v;
    size_t n, cap;
} store_names;

void store_names_free(store_names *names);

/* How a store is opened, beside its spec. */
typedef struct store_options {
    /* RADOS: the Ceph configuration file and the client's id (NULL: the
     * defaults, /etc/ceph/ceph.conf and admin). The file-system store
     * ignores them. */
    const char *ceph_conf;
    const char *ceph_id;
    /* The lease of a dataset lock, in seconds, for stores shared by
     * several servers (0: the store's default); a lock not renewed for
     * this long is free again. The file-system store's locks die with
     * the process and need none. */
    unsigned lease_s;
    /* How long one operation on a remote store may take, in seconds,
     * before it fails with -ETIMEDOUT (0: the store's default). */
    unsigned op_timeout_s;
    /* Where the store logs what the caller does not see in a result (a
     * file system without extended attributes, a lease renewed late).
     * level is a HAUL_LOG_ value. May be called from any thread that
     * calls the store. NULL: not logged. */
    void (*log)(void *arg, int level, const char *text);
    void *log_arg;
} store_options;

/* Flags of store_ops.lock. */
enum store_lock_flag {
    STORE_LOCK_CREATE = 1u << 0,
    STORE_LOCK_BREAK = 1u << 1,
};

/* Outcomes of store_file_resumed(). */
enum {
    STORE_NOTHING = 0,  /* nothing of the file is staged */
    STORE_COMPLETE = 1, /* all of it is: it is in the snapshot being written */
    STORE_PARTIAL = 2,  /* a prefix is: its content continues from there */
};

/* Outcome of store_file_open() for an id whose content is not awaited. */
#define STORE_NOT_AWAITED 1

/* What a push starts from (store_push_begin). */
typedef struct store_push_info {
    /* The latest committed snapshot, whose unchanged files
     * store_file_link_previous() takes ("" when there is none). */
    char previous[HSP_SNAPSHOT_MAX + 1];
    /* An interrupted push of the dataset left content that
     * store_file_resumed() may find. */
    int resuming;
} store_push_info;

/* Reports one thing left out of a snapshot at commit (a hard link whose
 * target is missing), in a sentence. */
typedef void store_problem_fn(void *arg, const char *text);

struct store_ops {
    const char *name; /* "fs", "rados": for the log */

    /* ---- the store ---------------------------------------------------- */

    /* Opens the store at spec, the part after the prefix (a directory; a
     * pool), and checks that hauld can use it. Not through the table:
     * store_open() picks the implementation. */
    int (*open)(const char *spec, const store_options *opt, store **out, store_err *err);
    /* Frees the store; every object made from it was ended before. */
    void (*close)(store *s);

    /* ---- datasets and their lock ------------------------------------------ */

    /* Whether the dataset exists: 1, 0, or -errno. A namespace that does
     * not exist holds no dataset. */
    int (*dataset_exists)(store *s, const store_dataset *ds, store_err *err);

    /*
     * Takes the dataset's lock, exclusive across every server of the
     * store, without waiting: -EWOULDBLOCK when another holder has it (in
     * this process or another). flags (enum store_lock_flag):
     * STORE_LOCK_CREATE makes the namespace and the dataset when missing
     * (else a missing dataset is -ENOENT); STORE_LOCK_BREAK says the
     * client asked to take the dataset over (HSP_F_TAKEOVER), and a store
     * that can break a lock another server holds does so (that server's
     * push then fails with -ENOLCK); the file-system store cannot, and
     * answers as without it. A push and a delete hold the lock throughout, and nothing
     * else of the dataset is written without it. A store shared by
     * several servers gives the lock a lease (store_options.lease_s) and
     * renews it itself while it is held (a thread of its own, or in each
     * call on the lock's push); a holder that dies loses the lock when
     * the lease runs out. A lock whose lease was lost makes every write
     * through it fail with -ENOLCK, and a commit never happens without
     * it. Released by store_unlock().
     */
    int (*lock)(store *s, const store_dataset *ds, unsigned flags, store_lock **out,
                store_err *err);
    void (*unlock)(store_lock *l);

    /* ---- writing a snapshot ------------------------------------------------ */

    /*
     * Begins a snapshot of the locked dataset (the push borrows the lock,
     * which outlives it). Takes back what an interrupted push of the
     * dataset staged, and what a commit or a delete interrupted by a
     * crash left, so that store_file_resumed() finds it; any older
     * leftover is dropped. Fills *info.
     *
     * A push then receives the tree's entries in the order the client
     * sends them (a directory before what it holds), and the content of
     * the files it awaits, one file at a time. Nothing of it is visible
     * to readers until store_push_commit(). It ends with store_push_end(),
     * committed or not.
     */
    int (*push_begin)(store_lock *l, store_push **out, store_push_info *info, store_err *err);

    /* A directory or a symlink of the tree, made (or recorded) now. Its
     * parent must have been put before: -ENOENT (or -ENOTDIR) when it was
     * not. -EEXIST when the path was put already (but a directory put
     * twice is not an error). The entry goes into the manifest. A
     * directory's mode and mtime apply from the commit on. */
    int (*put_dir)(store_push *p, const hsp_entry *e, store_err *err);
    int (*put_symlink)(store_push *p, const hsp_entry *e, store_err *err);
    /* A hard link (e->target names an earlier FILE entry): recorded, and
     * made at commit, when its target's content is there. A link whose
     * target is then missing is left out and reported through the
     * commit's problem function. */
    int (*put_hardlink)(store_push *p, const hsp_entry *e, store_err *err);

    /*
     * A FILE entry: what an interrupted push of the dataset staged of it.
     * STORE_COMPLETE: all of its content, as the entry describes it (size,
     * mtime, mode) and checked against the hash it was stored with; *hash
     * is that hash, and the file is in the snapshot with it (the manifest
     * has its entry). STORE_PARTIAL: a prefix [0, *held), whose hash is
     * *hash; the file awaits the rest (as after store_file_await()).
     * STORE_NOTHING: nothing usable; the caller goes on. Which files an
     * interrupted push left does not depend on which server it ran on.
     */
    int (*file_resumed)(store_push *p, const hsp_entry *e, hsp_hash *hash, uint64_t *held,
                        store_err *err);
    /*
     * A FILE entry that the latest snapshot holds unchanged (same path,
     * size, mtime and mode): 1 when the file is now in the snapshot being
     * written, sharing the previous snapshot's content without copying it
     * (a hard link; a reference to the same objects), its hash in *hash
     * and its entry in the manifest; 0 when the previous snapshot has no
     * such file or it cannot be shared (the caller then awaits its
     * content); -errno when the store failed.
     */
    int (*file_link_previous)(store_push *p, const hsp_entry *e, hsp_hash *hash, store_err *err);
    /* A FILE entry whose content the push awaits, from 0 (what was staged
     * of it is dropped when its content starts). The store keeps the
     * entry by its id, so that the caller needs no memory per file. */
    int (*file_await)(store_push *p, const hsp_entry *e, store_err *err);

    /*
     * Starts receiving the content of an awaited file: *e gets its entry
     * (e->path points into path), *held how many bytes of it are staged
     * (a prefix kept from an interrupted push, or what arrived before an
     * earlier try was cut short). STORE_NOT_AWAITED when the id is not an
     * awaited file's (never put, complete, or dropped): the client broke
     * the protocol. One file is open at a time; store_file_close() or
     * store_file_done() ends it.
     */
    int (*file_open)(store_push *p, uint64_t id, hsp_entry *e, char path[HSP_PATH_MAX + 1],
                     uint64_t *held, store_err *err);
    /* Reads back staged content of the open file, for the caller to hash a
     * prefix it keeps: bytes read, short only at the end. */
    ssize_t (*file_read)(store_push *p, uint64_t offset, void *buf, size_t len, store_err *err);
    /* Content of the open file, in order: each write or hole starts where
     * the file ends (offset = its size), and none goes beyond the entry's
     * size. A hole is zeros the store need not write (a sparse file stays
     * sparse where it can). Truncating to 0 starts the content over. */
    int (*file_write)(store_push *p, uint64_t offset, const void *data, size_t len, store_err *err);
    int (*file_hole)(store_push *p, uint64_t offset, uint64_t len, store_err *err);
    int (*file_truncate)(store_push *p, uint64_t size, store_err *err);
    /* The open file's content is complete and the caller checked that it
     * hashes to *hash: it is in the snapshot, with the entry's metadata,
     * and its entry (with the hash) goes into the manifest. Marks it
     * complete for a later resume (store_file_resumed: STORE_COMPLETE).
     * Closes the file. */
    int (*file_done)(store_push *p, const hsp_hash *hash, store_err *err);
    /* Closes the open file without completing it; it stays awaited, and
     * what was written stays staged (the caller asks for it again). */
    void (*file_close)(store_push *p);
    /* Leaves an awaited file out of the snapshot (the client could not
     * read it): what was staged of it goes; closed first if it is open
     * (another open file stays open). path gets its path, for the report.
     * STORE_NOT_AWAITED as store_file_open(). */
    int (*file_drop)(store_push *p, uint64_t id, char path[HSP_PATH_MAX + 1], store_err *err);

    /*
     * Makes the snapshot, atomically: every file put is complete or
     * dropped. Makes the hard links (problem() reports each left out),
     * gives directories their metadata, makes everything durable, and
     * only then makes the snapshot visible under a new id (into id), with
     * its info (files and bytes as counted by the caller, the time of the
     * commit). A reader sees either no snapshot or all of it, whatever
     * happens; a failure leaves what was staged for the next push, and
     * a crash after the snapshot became visible loses nothing of it.
     * After a commit, whatever it returned, only store_push_end() may be
     * called.
     */
    int (*push_commit)(store_push *p, uint64_t files, uint64_t bytes, char id[HSP_SNAPSHOT_MAX + 1],
                       store_problem_fn *problem, void *arg, store_err *err);
    /* Ends a push: after a commit, frees it; otherwise abandons it (an
     * abort): what was staged stays for the next push of the dataset,
     * through this server or another, to resume. Never fails. */
    void (*push_end)(store_push *p);

    /* ---- reading a snapshot ----------------------------------------------------- */

    /* Opens a committed snapshot (id "" for the latest) and fills *info.
     * -ENOENT: no such snapshot (or none at all); the caller tells that
     * from a missing dataset with dataset_exists(). A snapshot open for
     * reading stays readable until it is closed, even if it is deleted
     * meanwhile (where the store can promise it; the file-system store
     * can). */
    int (*snapshot_open)(store *s, const store_dataset *ds, const char *id, store_snapshot **out,
                         store_info *info, store_err *err);
    void (*snapshot_close)(store_snapshot *snap);
    /* The next entry of the manifest, in the order the entries became
     * part of the snapshot (hard links last, as made at commit): 1 with
     * *rec an ENTRY (pointing into the snapshot's buffer until the next
     * call), 0 at the end, -EIO when the manifest is damaged. Reads in
     * bounded memory, whatever the number of entries. */
    int (*manifest_next)(store_snapshot *snap, hsp_record *rec, store_err *err);
    /* Opens the content of a FILE entry of the manifest, or of a HARDLINK
     * entry (the content of its target): *size is what the store holds
     * (the caller compares it with the entry). -ENOENT when it is missing
     * from the store. */
    int (*file_open_read)(store_snapshot *snap, const hsp_entry *e, store_file **out,
                          uint64_t *size, store_err *err);
    /* Reads bytes of an open file: the bytes read, short only at its end.
     * Always re-reads what the store holds (verify relies on it): no
     * checksum kept beside the content stands in for it. */
    ssize_t (*file_pread)(store_file *f, uint64_t offset, void *buf, size_t len, store_err *err);
    /* Where the data at or after offset lies: [*data, *end) is data, and
     * [offset, *data) a hole (zeros); *data = the size when the rest is a
     * hole. A store that does not know its holes says all is data
     * (*data = offset, *end = the size). */
    int (*file_data)(store_file *f, uint64_t offset, uint64_t *data, uint64_t *end, store_err *err);
    void (*file_close_read)(store_file *f);
    /* Verify: checks that an entry other than a FILE is in the store as
     * the manifest says (a directory, a symlink with its target, a hard
     * link sharing its target's content): 0, or 1 with a sentence in why. */
    int (*check_entry)(store_snapshot *snap, const hsp_entry *e, char *why, size_t size);

    /* ---- listing, deleting, usage --------------------------------------------------- */

    /* The datasets of a namespace, sorted by name (none when the
     * namespace does not exist). */
    int (*list_datasets)(store *s, const char *ns, store_names *out, store_err *err);
    /* The snapshots of a dataset, oldest first. */
    int (*list_snapshots)(store *s, const store_dataset *ds, store_names *out, store_err *err);
    /* A snapshot's info (id "" for the latest): -ENOENT when there is no
     * such snapshot. */
    int (*snapshot_info)(store *s, const store_dataset *ds, const char *id, store_info *info,
                         store_err *err);
    /* Deletes a committed snapshot of the locked dataset: from the moment
     * it returns 0 no reader finds it, even after a crash. Content it
     * shares with other snapshots stays theirs; *freed gets the bytes
     * that no snapshot holds any more, counted as usage counts them (what
     * the store could free now; what a crash left is freed by a later
     * delete or push). *info gets
     * what the snapshot was. -ENOENT: no such snapshot. */
    int (*snapshot_delete)(store_lock *l, const char *id, store_info *info, uint64_t *freed,
                           store_err *err);
    /* The bytes a namespace holds, for the quota: file content, content
     * shared between snapshots (or files) counted once, plus what the
     * store's own records of the snapshots take (manifests, their info).
     * May cost a walk of every file. */
    int (*usage)(store *s, const char *ns, uint64_t *bytes, store_err *err);
};

/* The file-system store, and the RADOS store when hauld is built with it
 * (HAUL_HAVE_RADOS). */
extern const store_ops store_fs_ops;
#ifdef HAUL_HAVE_RADOS
extern const store_ops store_rados_ops;
#endif

/*
 * Opens the store that spec names: "DIR" or "fs:DIR" for the file-system
 * store ("fs:" is needed for a directory whose name starts with another
 * prefix), "rados:POOL" for RADOS (-ENOTSUP, with a sentence saying so,
 * when hauld was built without it). opt may be NULL (the defaults). The
 * one place a store is chosen.
 */
int store_open(const char *spec, const store_options *opt, store **out, store_err *err);
void store_close(store *s);

/* Fills err with a sentence (printf-style) and returns -code: for the
 * stores' own use, `return store_fail(err, ENOSPC, "writing %s: %s", ...)`. */
int store_fail(store_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The text of an errno value in a store's sentences: "no space left on
 * the store" for ENOSPC, strerror() otherwise. */
const char *store_strerror(int code);

/* ---- calls through the table --------------------------------------------------------- */

static inline int store_dataset_exists(store *s, const store_dataset *ds, store_err *err)
{
    return s->ops->dataset_exists(s, ds, err);
}
static inline int store_lock_dataset(store *s, const store_dataset *ds, unsigned flags,
                                     store_lock **out, store_err *err)
{
    return s->ops->lock(s, ds, flags, out, err);
}
static inline void store_unlock(store_lock *l)
{
    l->ops->unlock(l);
}
static inline int store_push_begin(store_lock *l, store_push **out, store_push_info *info,
                                   store_err *err)
{
    return l->ops->push_begin(l, out, info, err);
}
static inline int store_put_dir(store_push *p, const hsp_entry *e, store_err *err)
{
    return p->ops->put_dir(p, e, err);
}
static inline int store_put_symlink(store_push *p, const hsp_entry *e, store_err *err)
{
    return p->ops->put_symlink(p, e, err);
}
static inline int store_put_hardlink(store_push *p, const hsp_entry *e, store_err *err)
{
    return p->ops->put_hardlink(p, e, err);
}
static inline int store_file_resumed(store_push *p, const hsp_entry *e, hsp_hash *hash,
                                     uint64_t *held, store_err *err)
{
    return p->ops->file_resumed(p, e, hash, held, err);
}
static inline int store_file_link_previous(store_push *p, const hsp_entry *e, hsp_hash *hash,
                                           store_err *err)
{
    return p->ops->file_link_previous(p, e, hash, err);
}
static inline int store_file_await(store_push *p, const hsp_entry *e, store_err *err)
{
    return p->ops->file_await(p, e, err);
}
static inline int store_file_open(store_push *p, uint64_t id, hsp_entry *e,
                                  char path[HSP_PATH_MAX + 1], uint64_t *held, store_err *err)
{
    return p->ops->file_open(p, id, e, path, held, err);
}
static inline ssize_t store_file_read(store_push *p, uint64_t offset, void *buf, size_t len,
                                      store_err *err)
{
    return p->ops->file_read(p, offset, buf, len, err);
}
static inline int store_file_write(store_push *p, uint64_t offset, const void *data, size_t len,
                                   store_err *err)
{
    return p->ops->file_write(p, offset, data, len, err);
}
static inline int store_file_hole(store_push *p, uint64_t offset, uint64_t len, store_err *err)
{
    return p->ops->file_hole(p, offset, len, err);
}
static inline int store_file_truncate(store_push *p, uint64_t size, store_err *err)
{
    return p->ops->file_truncate(p, size, err);
}
static inline int store_file_done(store_push *p, const hsp_hash *hash, store_err *err)
{
    return p->ops->file_done(p, hash, err);
}
static inline void store_file_close(store_push *p)
{
    p->ops->file_close(p);
}
static inline int store_file_drop(store_push *p, uint64_t id, char path[HSP_PATH_MAX + 1],
                                  store_err *err)
{
    return p->ops->file_drop(p, id, path, err);
}
static inline int store_push_commit(store_push *p, uint64_t files, uint64_t bytes,
                                    char id[HSP_SNAPSHOT_MAX + 1], store_problem_fn *problem,
                                    void *arg, store_err *err)
{
    return p->ops->push_commit(p, files, bytes, id, problem, arg, err);
}
static inline void store_push_end(store_push *p)
{
    p->ops->push_end(p);
}
static inline int store_snapshot_open(store *s, const store_dataset *ds, const char *id,
                                      store_snapshot **out, store_info *info, store_err *err)
{
    return s->ops->snapshot_open(s, ds, id, out, info, err);
}
static inline void store_snapshot_close(store_snapshot *snap)
{
    snap->ops->snapshot_close(snap);
}
static inline int store_manifest_next(store_snapshot *snap, hsp_record *rec, store_err *err)
{
    return snap->ops->manifest_next(snap, rec, err);
}
static inline int store_file_open_read(store_snapshot *snap, const hsp_entry *e, store_file **out,
                                       uint64_t *size, store_err *err)
{
    return snap->ops->file_open_read(snap, e, out, size, err);
}
static inline ssize_t store_file_pread(store_file *f, uint64_t offset, void *buf, size_t len,
                                       store_err *err)
{
    return f->ops->file_pread(f, offset, buf, len, err);
}
static inline int store_file_data(store_file *f, uint64_t offset, uint64_t *data, uint64_t *end,
                                  store_err *err)
{
    return f->ops->file_data(f, offset, data, end, err);
}
static inline void store_file_close_read(store_file *f)
{
    f->ops->file_close_read(f);
}
static inline int store_check_entry(store_snapshot *snap, const hsp_entry *e, char *why,
                                    size_t size)
{
    return snap->ops->check_entry(snap, e, why, size);
}
static inline int store_list_datasets(store *s, const char *ns, store_names *out, store_err *err)
{
    return s->ops->list_datasets(s, ns, out, err);
}
static inline int store_list_snapshots(store *s, const store_dataset *ds, store_names *out,
                                       store_err *err)
{
    return s->ops->list_snapshots(s, ds, out, err);
}
static inline int store_snapshot_info(store *s, const store_dataset *ds, const char *id,
                                      store_info *info, store_err *err)
{
    return s->ops->snapshot_info(s, ds, id, info, err);
}
static inline int store_snapshot_delete(store_lock *l, const char *id, store_info *info,
                                        uint64_t *freed, store_err *err)
{
    return l->ops->snapshot_delete(l, id, info, freed, err);
}
static inline int store_usage(store *s, const char *ns, uint64_t *bytes, store_err *err)
{
    return s->ops->usage(s, ns, bytes, err);
}

#endif
