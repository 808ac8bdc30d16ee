/*
 * fs.c - the file-system store: safe path operations, the layout of
 * namespaces, datasets and snapshots, the push lock, content hashes kept
 * in extended attributes, and files of records.
 *
 * Every name that comes from a client is resolved below a directory
 * descriptor by openat2() with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 * RESOLVE_NO_MAGICLINKS: ".." cannot climb out, an absolute path cannot
 * start over, and a symlink anywhere on the way (a client may store
 * symlinks) fails the lookup with ELOOP instead of being followed.
 */
#include "store/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* ---- safe path operations ------------------------------------------------ */

static int openat2_beneath(int dirfd, const char *path, uint64_t flags, uint64_t mode)
{
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = flags;
    how.mode = mode;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    for (int tries = 0;; tries++) {
        long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
        if (fd >= 0)
            return (int)fd;
        /* EAGAIN: a rename raced with the lookup; the kernel asks to try
         * again rather than risk a wrong answer. */
        if (errno == EINTR || (errno == EAGAIN && tries < 16))
            continue;
        return -1;
    }
}

int fs_open(int dirfd, const char *path, int flags, mode_t mode)
{
    uint64_t f = (uint64_t)(unsigned)(flags | O_CLOEXEC);
    uint64_t m = (flags & O_CREAT) ? (uint64_t)mode : 0;
    size_t len = strlen(path);
    if (len < PATH_MAX)
        return openat2_beneath(dirfd, path, f, m);
    /* A protocol path may be 4096 bytes, one more than the kernel takes in
     * one piece: open its parent first, then the last component. */
    char *copy = strdup(path);
    if (copy == NULL)
        return -1;
    fs_at at;
    int fd = -1;
    if (fs_at_open(&at, dirfd, copy) == 0) {
        fd = openat2_beneath(at.fd, at.name, f, m);
        int err = errno;
        fs_at_close(&at);
        errno = err;
    }
    int err = errno;
    free(copy);
    errno = err;
    return fd;
}

int fs_at_open(fs_at *at, int dirfd, char *path)
{
    char *slash = strrchr(path, '/');
    if (slash == NULL) {
        at->fd = dirfd;
        at->owned = 0;
        at->name = path;
        return 0;
    }
    *slash = '\0';
    int fd = fs_open(dirfd, path, O_PATH | O_DIRECTORY, 0);
    int err = errno;
    *slash = '/';
    if (fd < 0) {
        at->fd = -1;
        at->owned = 0;
        at->name = NULL;
        errno = err;
        return -1;
    }
    at->fd = fd;
    at->owned = 1;
    at->name = slash + 1;
    return 0;
}

void fs_at_close(fs_at *at)
{
    if (at->owned && at->fd >= 0)
        close(at->fd);
    at->fd = -1;
    at->owned = 0;
}

int fs_mkdir_open(int dirfd, const char *name, mode_t mode)
{
    if (mkdirat(dirfd, name, mode) < 0 && errno != EEXIST)
        return -1;
    return fs_open(dirfd, name, O_PATH | O_DIRECTORY, 0);
}

/*
 * Calls fn for every entry of directory fd but "." and "..", until fn
 * fails; closes fd. Returns 0, or -1 with errno from readdir or fn.
 */
static int each_entry(int fd, int (*fn)(int dir, const struct dirent *de, void *arg), void *arg)
{
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    int rc = 0, err = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno) {
                rc = -1;
                err = errno;
            }
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (fn(dirfd(d), de, arg) < 0) {
            rc = -1;
            err = errno;
            break;
        }
    }
    closedir(d);
    errno = err;
    return rc;
}

static int remove_entry(int dir, const struct dirent *de, void *arg)
{
    return fs_remove_tree_freed(dir, de->d_name, arg);
}

/* Empties directory fd (which this call closes). */
static int empty_dir(int fd, uint64_t *freed)
{
    /* The owner may remove what is in a directory only while it may
     * write it; a stored directory may carry any mode. */
    fchmod(fd, 0700);
    return each_entry(fd, remove_entry, freed);
}

int fs_remove_tree(int dirfd, const char *name)
{
    return fs_remove_tree_freed(dirfd, name, NULL);
}

int fs_remove_tree_freed(int dirfd, const char *name, uint64_t *freed)
{
    /* A file's bytes are freed with its last link only. */
    struct stat st;
    int counted = freed != NULL && fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                  S_ISREG(st.st_mode) && st.st_nlink == 1;
    if (unlinkat(dirfd, name, 0) == 0) {
        if (counted)
            *freed += (uint64_t)st.st_size;
        return 0;
    }
    if (errno == ENOENT)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return -1;
    /* A directory: empty it, then remove it. Entries removed while the
     * directory is read may make readdir() skip others; a second pass
     * catches them. */
    for (int pass = 0; pass < 3; pass++) {
        int fd = fs_open(dirfd, name, O_RDONLY | O_DIRECTORY, 0);
        if (fd < 0)
            return errno == ENOENT ? 0 : -1;
        if (empty_dir(fd, freed) < 0)
            return -1;
        if (unlinkat(dirfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT)
            return 0;
        if (errno != ENOTEMPTY)
            return -1;
    }
    return -1;
}

/* Each link of a file counts for its share of the bytes, so that a file
 * linked from several snapshots counts once in all. */
static int usage_entry(int dir, const struct dirent *de, void *arg)
{
    double *sum = arg;
    struct stat st;
    if (fstatat(dir, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : -1;
    if (S_ISREG(st.st_mode) && st.st_nlink > 0)
        *sum += (double)st.st_size / (double)st.st_nlink;
    if (!S_ISDIR(st.st_mode))
        return 0;
    int fd = fs_open(dir, de->d_name, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    return each_entry(fd, usage_entry, sum);
}

int fs_usage(int dirfd, uint64_t *bytes)
{
    int fd = fs_open(dirfd, ".", O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return -1;
    double sum = 0;
    if (each_entry(fd, usage_entry, &sum) < 0)
        return -1;
    *bytes = (uint64_t)(sum + 0.5);
    return 0;
}

int fs_fsync_dir(int dirfd, const char *name)
{
    int fd = fs_open(dirfd, name, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

int fs_write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int fs_pwrite_all(int fd, const void *buf, size_t len, off_t offset)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
        offset += n;
    }
    return 0;
}

ssize_t fs_pread_all(int fd, void *buf, size_t len, off_t offset)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, p + done, len - done, offset + (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (ssize_t)done;
}

/* ---- content hashes ---------------------------------------------------------- */

int fs_hash_get(int fd, hsp_hash *hash)
{
    ssize_t n = fgetxattr(fd, FS_HASH_XATTR, hash->b, sizeof(hash->b));
    if (n == (ssize_t)sizeof(hash->b))
        return 0;
    if (n >= 0 || errno == ERANGE)
        errno = ENODATA;
    return -1;
}

int fs_hash_set(int fd, const hsp_hash *hash)
{
    return fsetxattr(fd, FS_HASH_XATTR, hash->b, sizeof(hash->b), 0);
}

#define HASH_READ (1u << 20)

int fs_hash_feed(int fd, uint64_t offset, uint64_t len, XXH3_state_t *st)
{
    if (len == 0)
        return 0;
    size_t size = len < HASH_READ ? (size_t)len : HASH_READ;
    uint8_t *buf = malloc(size);
    if (buf == NULL)
        return -1;
    int rc = 0;
    while (len > 0) {
        size_t want = len < size ? (size_t)len : size;
        ssize_t n = fs_pread_all(fd, buf, want, (off_t)offset);
        if (n < 0) {
            rc = -1;
            break;
        }
        if ((size_t)n < want) {
            errno = EIO; /* the file is shorter than it should be */
            rc = -1;
            break;
        }
        XXH3_128bits_update(st, buf, want);
        offset += want;
        len -= want;
    }
    int err = errno;
    free(buf);
    errno = err;
    return rc;
}

int fs_hash_file(int fd, uint64_t len, XXH3_state_t *st, hsp_hash *out)
{
    XXH3_128bits_reset(st);
    if (fs_hash_feed(fd, 0, len, st) < 0)
        return -1;
    hsp_hash_digest(st, out);
    return 0;
}

/* ---- the store's layout ---------------------------------------------------- */

int fs_store_open(const char *dir, char *err, size_t errlen)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot make the store directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open the store directory %s: %s", dir, strerror(errno));
        return -1;
    }
    /* Everything below the root is opened with openat2(), which Linux has
     * since 5.6; without it hauld cannot keep clients in their
     * namespaces, so it does not start. */
    int probe = fs_open(fd, ".", O_PATH | O_DIRECTORY, 0);
    if (probe < 0) {
        snprintf(err, errlen, "cannot use the store %s: %s%s", dir, strerror(errno),
                 errno == ENOSYS ? " (openat2 is missing: hauld needs Linux 5.6 or later)" : "");
        close(fd);
        return -1;
    }
    close(probe);
    char name[64];
    snprintf(name, sizeof(name), ".hauld-probe-%ld", (long)getpid());
    probe = fs_open(fd, name, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (probe < 0) {
        snprintf(err, errlen, "cannot write in the store %s: %s", dir, strerror(errno));
        close(fd);
        return -1;
    }
    close(probe);
    unlinkat(fd, name, 0);
    return fd;
}

int fs_dir_open(int dirfd, const char *name, int create)
{
    if (create)
        return fs_mkdir_open(dirfd, name, 0700);
    return fs_open(dirfd, name, O_PATH | O_DIRECTORY, 0);
}

static int names_cmp(const void *a, const void *b, void *arg)
{
    int (*cmp)(const char *, const char *) = (int (*)(const char *, const char *))arg;
    return cmp(*(char *const *)a, *(char *const *)b);
}

static int plain_cmp(const char *a, const char *b)
{
    return strcmp(a, b);
}

struct names_walk {
    fs_names *out;
    int (*keep)(const char *name);
};

/* Keeps the subdirectories whose names the filter keeps. */
static int add_name(int dir, const struct dirent *de, void *arg)
{
    struct names_walk *w = arg;
    fs_names *out = w->out;
    if (!w->keep(de->d_name))
        return 0;
    struct stat st;
    if (de->d_type != DT_DIR &&
        (de->d_type != DT_UNKNOWN || fstatat(dir, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
         !S_ISDIR(st.st_mode)))
        return 0;
    if (out->n == out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 16;
        char **v = realloc(out->v, cap * sizeof(*v));
        if (v == NULL) {
            errno = ENOMEM;
            return -1;
        }
        out->v = v;
        out->cap = cap;
    }
    if ((out->v[out->n] = strdup(de->d_name)) == NULL) {
        errno = ENOMEM;
        return -1;
    }
    out->n++;
    return 0;
}

int fs_names_read(int dir, fs_names *out, int (*keep)(const char *name),
                  int (*cmp)(const char *a, const char *b))
{
    memset(out, 0, sizeof(*out));
    int fd = fs_open(dir, ".", O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return -1;
    struct names_walk w = {.out = out, .keep = keep};
    if (each_entry(fd, add_name, &w) < 0) {
        int err = errno;
        fs_names_free(out);
        errno = err;
        return -1;
    }
    if (out->n > 1)
        qsort_r(out->v, out->n, sizeof(*out->v), names_cmp, (void *)(cmp ? cmp : plain_cmp));
    return 0;
}

void fs_names_free(fs_names *names)
{
    for (size_t i = 0; i < names->n; i++)
        free(names->v[i]);
    free(names->v);
    memset(names, 0, sizeof(*names));
}

int fs_dataset_name_ok(const char *name)
{
    return hsp_name_ok(name, strlen(name), HSP_NAME_MAX);
}

/* ---- snapshots ---------------------------------------------------------------- */

#define ID_BASE 16 /* YYYYMMDDTHHMMSSZ */

static int digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* The number after "-" (1 without one), or 0 when malformed. */
static unsigned long id_number(const char *id)
{
    const char *s = id + ID_BASE;
    if (*s == '\0')
        return 1;
    if (*s != '-' || s[1] < '1' || s[1] > '9' || strlen(s + 1) > 9 || !digits(s + 1, strlen(s + 1)))
        return 0;
    unsigned long n = strtoul(s + 1, NULL, 10);
    return n >= 2 ? n : 0;
}

int fs_snapshot_id_ok(const char *id)
{
    size_t len = strlen(id);
    if (len < ID_BASE || len > HSP_SNAPSHOT_MAX)
        return 0;
    if (!digits(id, 8) || id[8] != 'T' || !digits(id + 9, 6) || id[15] != 'Z')
        return 0;
    return id_number(id) != 0;
}

int fs_snapshot_cmp(const char *a, const char *b)
{
    int c = memcmp(a, b, ID_BASE);
    if (c)
        return c;
    unsigned long na = id_number(a), nb = id_number(b);
    return na < nb ? -1 : na > nb;
}

int fs_snapshot_latest(int ds, char id[HSP_SNAPSHOT_MAX + 1])
{
    int snaps = fs_open(ds, "snapshots", O_PATH | O_DIRECTORY, 0);
    if (snaps < 0)
        return errno == ENOENT ? 0 : -1;
    fs_names names;
    int rc = fs_names_read(snaps, &names, fs_snapshot_id_ok, fs_snapshot_cmp);
    int err = errno;
    close(snaps);
    if (rc < 0) {
        errno = err;
        return -1;
    }
    int found = names.n > 0;
    if (found)
        snprintf(id, HSP_SNAPSHOT_MAX + 1, "%s", names.v[names.n - 1]);
    fs_names_free(&names);
    return found;
}

int fs_snapshot_open(int ds, const char *id)
{
    if (!fs_snapshot_id_ok(id)) {
        errno = ENOENT;
        return -1;
    }
    int snaps = fs_open(ds, "snapshots", O_PATH | O_DIRECTORY, 0);
    if (snaps < 0)
        return -1;
    int fd = fs_open(snaps, id, O_PATH | O_DIRECTORY, 0);
    int err = errno;
    close(snaps);
    errno = err;
    return fd;
}

void fs_snapshot_info(int snap, int64_t *time, uint64_t *files, uint64_t *bytes)
{
    *time = 0;
    *files = *bytes = 0;
    int fd = fs_open(snap, "INFO", O_RDONLY, 0);
    if (fd < 0)
        return;
    fs_rec_reader rd;
    if (fs_rec_reader_init(&rd, fd) < 0) {
        close(fd);
        return;
    }
    hsp_record rec;
    if (fs_rec_next(&rd, &rec) == 1 && rec.type == HSP_SNAPINFO) {
        *time = rec.time;
        *files = rec.files;
        *bytes = rec.bytes;
    }
    fs_rec_reader_fini(&rd);
}

int fs_snapshot_info_write(int snap, const char *id, int64_t time, uint64_t files, uint64_t bytes)
{
    uint8_t buf[512];
    hsp_writer w;
    hsp_writer_init(&w, buf, sizeof(buf));
    if (hsp_put_snapinfo(&w, id, time, files, bytes) < 0) {
        errno = EINVAL;
        return -1;
    }
    int fd = fs_open(snap, "INFO", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    int rc = fs_write_all(fd, buf, w.len) < 0 || fsync(fd) < 0 ? -1 : 0;
    int err = errno;
    close(fd);
    errno = err;
    return rc;
}

int fs_snapshot_begin(int snaps, const char *latest, char id[HSP_SNAPSHOT_MAX + 1])
{
    char base[ID_BASE + 1];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(base, sizeof(base), "%Y%m%dT%H%M%SZ", &tm);
    unsigned long n = 1;
    if (latest && latest[0] && memcmp(base, latest, ID_BASE) <= 0) {
        /* The clock says no later than the latest snapshot: number after
         * it, so that the newest snapshot always sorts last. */
        memcpy(base, latest, ID_BASE);
        n = id_number(latest) + 1;
    }
    for (;; n++) {
        if (n == 1)
            snprintf(id, HSP_SNAPSHOT_MAX + 1, "%s", base);
        else
            snprintf(id, HSP_SNAPSHOT_MAX + 1, "%s-%lu", base, n);
        struct stat st;
        if (fstatat(snaps, id, &st, AT_SYMLINK_NOFOLLOW) == 0)
            continue;
        char tmp[HSP_SNAPSHOT_MAX + 8];
        snprintf(tmp, sizeof(tmp), "%s.tmp", id);
        if (mkdirat(snaps, tmp, 0700) < 0) {
            if (errno == EEXIST)
                continue;
            return -1;
        }
        return fs_open(snaps, tmp, O_PATH | O_DIRECTORY, 0);
    }
}

/* ---- the push lock ---------------------------------------------------------------- */

int fs_dataset_lock(int ds)
{
    int staging = fs_mkdir_open(ds, ".staging", 0700);
    if (staging < 0)
        return -1;
    int fd = fs_open(staging, "LOCK", O_RDWR | O_CREAT, 0600);
    int err = errno;
    close(staging);
    if (fd < 0) {
        errno = err;
        return -1;
    }
    /* flock() locks belong to the open file description: a second open
     * of LOCK conflicts with the first even in the same process. The LOCK
     * file is never removed, so every locker meets the same inode. */
    while (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EINTR)
            continue;
        err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* ---- files of records ---------------------------------------------------------------- */

/* The largest record: an ENTRY with the longest path and link target. */
#define REC_MAX (HSP_RECORD_HDR + 64 + HSP_PATH_MAX + 65535)
#define REC_BUFFER (256u << 10)

int fs_rec_writer_init(fs_rec_writer *wr, int fd, size_t buffer)
{
    if (buffer < REC_MAX)
        buffer = REC_MAX;
    uint8_t *buf = malloc(buffer);
    if (buf == NULL) {
        errno = ENOMEM;
        return -1;
    }
    wr->fd = fd;
    wr->written = 0;
    hsp_writer_init(&wr->w, buf, buffer);
    return 0;
}

int fs_rec_flush(fs_rec_writer *wr)
{
    if (wr->w.len == 0)
        return 0;
    if (fs_write_all(wr->fd, wr->w.buf, wr->w.len) < 0)
        return -1;
    wr->written += wr->w.len;
    wr->w.len = 0;
    return 0;
}

int fs_rec_put_entry(fs_rec_writer *wr, const hsp_entry *e)
{
    if (hsp_put_entry(&wr->w, e) == 0)
        return 0;
    if (fs_rec_flush(wr) < 0)
        return -1;
    if (hsp_put_entry(&wr->w, e) == 0)
        return 0;
    errno = EINVAL;
    return -1;
}

int fs_rec_put_raw(fs_rec_writer *wr, const void *data, size_t len)
{
    if (wr->w.len + len > wr->w.cap && fs_rec_flush(wr) < 0)
        return -1;
    if (len > wr->w.cap) {
        if (fs_write_all(wr->fd, data, len) < 0)
            return -1;
        wr->written += len;
        return 0;
    }
    memcpy(wr->w.buf + wr->w.len, data, len);
    wr->w.len += len;
    return 0;
}

void fs_rec_writer_fini(fs_rec_writer *wr)
{
    free(wr->w.buf);
    wr->w.buf = NULL;
    wr->w.len = wr->w.cap = 0;
    if (wr->fd >= 0)
        close(wr->fd);
    wr->fd = -1;
}

int fs_rec_reader_init(fs_rec_reader *rd, int fd)
{
    memset(rd, 0, sizeof(*rd));
    rd->fd = fd;
    rd->cap = REC_BUFFER;
    rd->buf = malloc(rd->cap);
    if (rd->buf == NULL) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

int fs_rec_next(fs_rec_reader *rd, hsp_record *rec)
{
    for (;;) {
        size_t have = rd->end - rd->start;
        if (have >= HSP_RECORD_HDR) {
            uint32_t n = le32(rd->buf + rd->start + 4);
            if (n > rd->cap - HSP_RECORD_HDR) {
                errno = EBADMSG;
                return -1;
            }
            if (have >= HSP_RECORD_HDR + (size_t)n) {
                hsp_reader r;
                hsp_reader_init(&r, rd->buf + rd->start, HSP_RECORD_HDR + (size_t)n);
                int rc = hsp_next(&r, rec);
                rd->start += HSP_RECORD_HDR + (size_t)n;
                if (rc != 1) {
                    errno = EBADMSG;
                    return -1;
                }
                return 1;
            }
        }
        if (rd->eof) {
            if (have == 0)
                return 0;
            errno = EBADMSG; /* a record cut short */
            return -1;
        }
        if (rd->start > 0) {
            memmove(rd->buf, rd->buf + rd->start, have);
            rd->start = 0;
            rd->end = have;
        }
        ssize_t n = read(rd->fd, rd->buf + rd->end, rd->cap - rd->end);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            rd->eof = 1;
        rd->end += (size_t)n;
        rd->offset += (uint64_t)n;
    }
}

void fs_rec_reader_fini(fs_rec_reader *rd)
{
    free(rd->buf);
    rd->buf = NULL;
    if (rd->fd >= 0)
        close(rd->fd);
    rd->fd = -1;
}

/* ---- text --------------------------------------------------------------------- */
