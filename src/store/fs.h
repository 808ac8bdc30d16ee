/*
 * fs.h - the file-system store of hauld: one directory tree per principal
 * under the store's root, and safe path operations inside it. These are
 * the store's own tools: fs_store.c puts the store behind store/store.h,
 * and hauld's requests never call them.
 *
 * The layout (docs/store-protocol.md, "The store"):
 *
 *   STORE/PRINCIPAL/DATASET/snapshots/ID/tree/...   a committed snapshot
 *   STORE/PRINCIPAL/DATASET/snapshots/ID/MANIFEST   its ENTRY records
 *   STORE/PRINCIPAL/DATASET/snapshots/ID/INFO       its SNAPINFO record
 *   STORE/PRINCIPAL/DATASET/.staging/               a push in progress
 *
 * Safety: every operation below a namespace starts from a directory
 * descriptor. Files and directories are opened with openat2() and
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, so that no
 * name a client sent can lead outside the namespace, and no symlink a
 * client stored is ever followed. Operations on a name (mkdir, symlink,
 * link, rename, unlink) open the parent directory that way and act on the
 * last component only, which the kernel never follows.
 *
 * Functions return -1 with errno set on failure, as system calls do,
 * unless their comment says otherwise.
 */
#ifndef HAUL_STORE_FS_H
#define HAUL_STORE_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <xxhash.h>

#include "proto/store.h"

/* The extended attribute that holds a stored file's XXH3-128 (16 bytes,
 * canonical form), set when its content was checked complete. */
#define FS_HASH_XATTR "user.haul.hash"
/* A push asks the disk to start writing a file's data every this many
 * bytes of it (fs_store.c, "Durability"). */
#define FS_WRITEBACK_BYTES (8u << 20)

/* ---- safe path operations ------------------------------------------------ */

/*
 * Opens path below dirfd with openat2() (RESOLVE_BENEATH, no symlinks, no
 * magic links); O_CLOEXEC is added. mode matters with O_CREAT only. A path
 * too long for the kernel in one piece is opened through its parent.
 */
int fs_open(int dirfd, const char *path, int flags, mode_t mode);

/*
 * The directory that holds a path, opened safely, and the path's last
 * component: the place where mkdirat(), symlinkat(), linkat(), renameat()
 * and unlinkat() act. name points into the path given to fs_at_open(),
 * which must stay as it is while the fs_at is in use.
 */
typedef struct fs_at {
    int fd;
    int owned; /* fd is ours to close (not the base directory) */
    const char *name;
} fs_at;

/* Opens the parent of path (a relative path below dirfd, NUL-terminated;
 * modified during the call and restored). Returns 0 or -1. */
int fs_at_open(fs_at *at, int dirfd, char *path);
void fs_at_close(fs_at *at);

/* Makes directory `name` in dirfd when it does not exist, and opens it
 * (O_PATH). Returns the descriptor or -1. */
int fs_mkdir_open(int dirfd, const char *name, mode_t mode);

/* Removes name in dirfd and everything below it, never following a
 * symlink. A name that does not exist is not an error. Returns 0 or -1. */
int fs_remove_tree(int dirfd, const char *name);
/* The same, adding to *freed the bytes of the files whose last link it
 * removed. */
int fs_remove_tree_freed(int dirfd, const char *name, uint64_t *freed);

/* The bytes of file content stored below dirfd, each file once however
 * many links it has there (links from outside dirfd make it count less).
 * Walks every entry: its cost grows with the number of files. */
int fs_usage(int dirfd, uint64_t *bytes);

/* fsync() of directory `name` in dirfd ("." for dirfd itself). */
int fs_fsync_dir(int dirfd, const char *name);

/* write() and pread() of all of a buffer, through short counts and
 * EINTR. fs_pread_all returns the bytes read, short only at end of file. */
int fs_write_all(int fd, const void *buf, size_t len);
ssize_t fs_pread_all(int fd, void *buf, size_t len, off_t offset);
int fs_pwrite_all(int fd, const void *buf, size_t len, off_t offset);

/* The mode a stored file or directory gets on disk: the client's
 * permission bits, plus the owner's read and write (and search for a
 * directory), so that hauld can always read back, link and remove what
 * it stored; without set-user-ID, set-group-ID and sticky bits, which
 * have no use in a store and would make a stored file a setuid program
 * of the server's user. The manifest keeps the client's mode as it was. */
static inline mode_t fs_disk_mode(int kind, uint32_t mode)
{
    return (mode_t)(mode & 0777) | (kind == HSP_DIR ? 0700 : 0600);
}

/* ---- content hashes ---------------------------------------------------------- */

/* Reads or sets FS_HASH_XATTR of an open file. fs_hash_get fails with
 * ENODATA when the file has none (or one of another size). */
int fs_hash_get(int fd, hsp_hash *hash);
int fs_hash_set(int fd, const hsp_hash *hash);

/* Feeds bytes [offset, offset + len) of fd into st. Fails with EIO when
 * the file ends early. */
int fs_hash_feed(int fd, uint64_t offset, uint64_t len, XXH3_state_t *st);

/* The XXH3-128 of bytes [0, len) of fd (st is scratch). */
int fs_hash_file(int fd, uint64_t len, XXH3_state_t *st, hsp_hash *out);

/* ---- the store's layout ---------------------------------------------------- */

/*
 * Opens the store's root directory (made when missing; its parent must
 * exist) and checks that hauld can use it: writable, and a kernel with
 * openat2(). Returns an O_PATH descriptor, or -1 with a sentence in err.
 */
int fs_store_open(const char *dir, char *err, size_t errlen);

/* A principal's namespace or a dataset: a directory in the store or in a
 * namespace, made when create is set. Returns an O_PATH descriptor. */
int fs_dir_open(int dirfd, const char *name, int create);

/* Names of the subdirectories of dirfd that keep(name) accepts, sorted
 * with cmp. A growable list. */
typedef struct fs_names {
    char **v;
    size_t n, cap;
} fs_names;

int fs_names_read(int dirfd, fs_names *out, int (*keep)(const char *name),
                  int (*cmp)(const char *a, const char *b));
void fs_names_free(fs_names *names);

/* A valid dataset directory name (hsp_name_ok). */
int fs_dataset_name_ok(const char *name);

/* ---- snapshots ---------------------------------------------------------------- */

/* A snapshot id as hauld makes them: YYYYMMDDTHHMMSSZ (UTC), then -2, -3,
 * ... when taken. Nothing else in snapshots/ is a snapshot. */
int fs_snapshot_id_ok(const char *id);

/* Orders ids by time, then by their number (no suffix counts as 1). */
int fs_snapshot_cmp(const char *a, const char *b);

/* The latest snapshot of a dataset: 1 and its id, 0 when there is none,
 * -1 on error. */
int fs_snapshot_latest(int ds, char id[HSP_SNAPSHOT_MAX + 1]);

/* Opens snapshots/ID of a dataset (O_PATH), or -1 (ENOENT when there is
 * no such snapshot). */
int fs_snapshot_open(int ds, const char *id);

/* Reads snapshots/ID/INFO: its commit time, files and bytes. Missing or
 * unreadable information reads as zeros. */
void fs_snapshot_info(int snap, int64_t *time, uint64_t *files, uint64_t *bytes);

/* Writes INFO into a snapshot directory being committed, durably. */
int fs_snapshot_info_write(int snap, const char *id, int64_t time, uint64_t files, uint64_t bytes);

/*
 * An id for a new snapshot of the dataset whose snapshots directory is
 * snaps: the current UTC time, with -2, -3, ... when that is taken or would
 * not sort after `latest` (a clock that went back). Makes snapshots/ID.tmp
 * (the directory the snapshot is assembled in) and returns its O_PATH
 * descriptor, or -1.
 */
int fs_snapshot_begin(int snaps, const char *latest, char id[HSP_SNAPSHOT_MAX + 1]);

/* ---- the staging area and its lock ----------------------------------------------- */

/*
 * Takes the dataset's push lock: flock() on DATASET/.staging/LOCK, made
 * when missing, without waiting. Returns the locked descriptor (close it
 * to release), or -1: EWOULDBLOCK when another push holds it, in this
 * process or another.
 */
int fs_dataset_lock(int ds);

/* ---- files of records (MANIFEST, INFO, staging lists) --------------------------- */

/* Records appended to a file through a buffer. */
typedef struct fs_rec_writer {
    int fd;
    hsp_writer w;
    uint64_t written; /* bytes flushed to the file */
} fs_rec_writer;

/* Takes fd (writes start at its current offset). Returns 0 or -1
 * (ENOMEM). */
int fs_rec_writer_init(fs_rec_writer *wr, int fd, size_t buffer);
int fs_rec_put_entry(fs_rec_writer *wr, const hsp_entry *e);
/* Appends already encoded bytes (whole records). */
int fs_rec_put_raw(fs_rec_writer *wr, const void *data, size_t len);
int fs_rec_flush(fs_rec_writer *wr);
/* Frees the buffer and closes the file (without flushing). */
void fs_rec_writer_fini(fs_rec_writer *wr);

/* Records read back sequentially, in bounded memory. */
typedef struct fs_rec_reader {
    int fd;
    uint8_t *buf;
    size_t cap, start, end;
    uint64_t offset; /* file offset of buf[end] */
    int eof;
} fs_rec_reader;

/* Takes fd, read from offset 0. Returns 0 or -1 (ENOMEM). */
int fs_rec_reader_init(fs_rec_reader *rd, int fd);
/* The next record: 1, 0 at the end, -1 on error (EBADMSG: the file is
 * damaged). What the record points to lives until the next call. */
int fs_rec_next(fs_rec_reader *rd, hsp_record *rec);
void fs_rec_reader_fini(fs_rec_reader *rd);

#endif
