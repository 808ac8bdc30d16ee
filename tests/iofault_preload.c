/*
 * iofault_preload.c - a shared library for LD_PRELOAD that makes the
 * store calls of a program fail on demand, for the tests of hauld under
 * I/O errors (tests/store_faults_test.c). The product has no hook of its
 * own: the library interposes the libc functions hauld calls.
 *
 * Calls are counted by kind, and only those on the store: a call counts
 * when the descriptor it writes, syncs or resolves names against (or the
 * path it names) lies below HAUL_IOFAULT_PREFIX. Sockets, pipes, the log
 * and everything else go through untouched. The kinds:
 *
 *   write   write, pwrite, pwrite64, writev, pwritev
 *   sync    fsync, fdatasync, syncfs
 *   rename  rename, renameat, renameat2
 *   link    link, linkat
 *   meta    ftruncate, fsetxattr, fchmod, futimens, utimensat, mkdirat,
 *           symlinkat: what makes entries and sets their metadata
 *
 * Environment:
 *   HAUL_IOFAULT_PREFIX=DIR   the store (required; nothing counts without)
 *   HAUL_IOFAULT=KIND:K:ERR   the K-th call of KIND (from 1) fails with
 *                             errno ERR (EIO, ENOSPC, EDQUOT or a number)
 *                             without doing anything; the others pass
 *   HAUL_IOFAULT_COUNT=FILE   after every counted call, FILE holds
 *                             "write N sync N rename N link N meta N
 *                             fired F"
 *
 * A run without HAUL_IOFAULT measures how many calls of each kind a
 * workload makes; runs with K = 1 .. N then fail each one in turn.
 *
 * Stalling instead of failing, for the tests of a store call that hangs
 * (tests/workers_test.c):
 *   HAUL_IOFAULT_STALL=KIND:TEXT  the first call of KIND (write as above,
 *                             or read: pread, pread64) on a file of the
 *                             store whose path contains TEXT blocks
 *   HAUL_IOFAULT_STALL_DIR=DIR    until the test releases it: the call
 *                             opens the FIFO DIR/stalled and writes a byte
 *                             to it (the test learns that it stalls), then
 *                             opens the FIFO DIR/release and reads it to
 *                             its end (the test opens it and closes it),
 *                             and then goes on as if nothing happened.
 * Only one call ever stalls, on whichever thread makes it.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

enum { K_WRITE, K_SYNC, K_RENAME, K_LINK, K_META, K_COUNT };
static const char *const kind_names[K_COUNT] = {"write", "sync", "rename", "link", "meta"};

static atomic_ulong counts[K_COUNT];
static atomic_int fired;
static int fault_kind = -1;
static unsigned long fault_at;
static int fault_errno;
static char prefix[PATH_MAX];
static size_t prefix_len;
static int count_fd = -1;
static char stall_kind[16], stall_text[256], stall_dir[PATH_MAX];
static atomic_int stalled;
/* Before main(): hauld reads no environment of ours, and nothing counts
 * before the library knows the prefix. */
__attribute__((constructor)) static void setup(void)
{
    const char *p = getenv("HAUL_IOFAULT_PREFIX");
    if (p && *p && strlen(p) < sizeof(prefix)) {
        /* The descriptors' paths are resolved ones: resolve the prefix too. */
        if (realpath(p, prefix) == NULL)
            snprintf(prefix, sizeof(prefix), "%s", p);
        prefix_len = strlen(prefix);
    }
    const char *spec = getenv("HAUL_IOFAULT");
    if (spec && *spec) {
        char kind[16] = "", err[32] = "";
        unsigned long k = 0;
        if (sscanf(spec, "%15[a-z]:%lu:%31s", kind, &k, err) == 3) {
            for (int i = 0; i < K_COUNT; i++)
                if (strcmp(kind, kind_names[i]) == 0)
                    fault_kind = i;
            fault_at = k;
            if (strcmp(err, "EIO") == 0)
                fault_errno = EIO;
            else if (strcmp(err, "ENOSPC") == 0)
                fault_errno = ENOSPC;
            else if (strcmp(err, "EDQUOT") == 0)
                fault_errno = EDQUOT;
            else
                fault_errno = atoi(err);
        }
        if (fault_kind < 0 || fault_at == 0 || fault_errno <= 0) {
            fprintf(stderr, "iofault_preload: HAUL_IOFAULT=%s is not KIND:K:ERRNO\n", spec);
            fault_kind = -1;
        }
    }
    const char *st = getenv("HAUL_IOFAULT_STALL"), *sd = getenv("HAUL_IOFAULT_STALL_DIR");
    if (st && *st && sd && *sd && strlen(sd) < sizeof(stall_dir) &&
        sscanf(st, "%15[a-z]:%255s", stall_kind, stall_text) == 2)
        snprintf(stall_dir, sizeof(stall_dir), "%s", sd);
    else if (st && *st)
        fprintf(stderr,
                "iofault_preload: HAUL_IOFAULT_STALL=%s is not KIND:TEXT, or no "
                "HAUL_IOFAULT_STALL_DIR\n",
                st);
    const char *c = getenv("HAUL_IOFAULT_COUNT");
    if (c && *c)
        count_fd = (int)syscall(SYS_openat, AT_FDCWD, c, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
}

/* Is a path below the store? */
static int in_store(const char *path)
{
    return prefix_len > 0 && strncmp(path, prefix, prefix_len) == 0 &&
           (path[prefix_len] == '/' || path[prefix_len] == '\0');
}

static int fd_in_store(int fd)
{
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    return in_store(path);
}

/* A name relative to a directory descriptor (or the working directory). */
static int at_in_store(int dirfd, const char *name)
{
    if (name && name[0] == '/')
        return in_store(name);
    if (dirfd == AT_FDCWD) {
        char cwd[PATH_MAX];
        return getcwd(cwd, sizeof(cwd)) != NULL && in_store(cwd);
    }
    return fd_in_store(dirfd);
}

static void publish(void)
{
    if (count_fd < 0)
        return;
    char text[200];
    int n = snprintf(text, sizeof(text),
                     "write %-10lu sync %-10lu rename %-10lu link %-10lu meta %-10lu fired %d\n",
                     atomic_load(&counts[K_WRITE]), atomic_load(&counts[K_SYNC]),
                     atomic_load(&counts[K_RENAME]), atomic_load(&counts[K_LINK]),
                     atomic_load(&counts[K_META]), atomic_load(&fired));
    if (n > 0)
        syscall(SYS_pwrite64, count_fd, text, (size_t)n, (off_t)0);
}

/* Opens a FIFO of the stall directory, blocking until its other end is
 * opened; raw system calls, which this library does not interpose. */
static int stall_fifo(const char *name, int flags)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/%s", stall_dir, name);
    int fd;
    do
        fd = (int)syscall(SYS_openat, AT_FDCWD, path, flags | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    return fd;
}

/* The stall of HAUL_IOFAULT_STALL: blocks the first call of `kind` on a
 * file of the store whose path holds the text, until the test releases
 * it. errno is kept. */
static void stall(const char *kind, int fd)
{
    if (stall_dir[0] == '\0' || strcmp(kind, stall_kind) != 0 || atomic_load(&stalled))
        return;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n <= 0)
        return;
    path[n] = '\0';
    if (!in_store(path) || strstr(path, stall_text) == NULL || atomic_exchange(&stalled, 1))
        return;
    int saved = errno;
    int out = stall_fifo("stalled", O_WRONLY);
    if (out >= 0) {
        char one = '1';
        syscall(SYS_write, out, &one, (size_t)1);
        syscall(SYS_close, out);
    }
    int in = stall_fifo("release", O_RDONLY);
    if (in >= 0) {
        char buf[64];
        while (syscall(SYS_read, in, buf, sizeof(buf)) != 0 && errno == EINTR) {
        }
        syscall(SYS_close, in);
    }
    errno = saved;
}

/*
 * Counts a call of a kind on the store; returns nonzero (errno set) when
 * this is the one to fail.
 */
static int fault(int kind, int on_store)
{
    if (!on_store)
        return 0;
    unsigned long k = atomic_fetch_add(&counts[kind], 1) + 1;
    int fail = kind == fault_kind && k == fault_at;
    if (fail)
        atomic_fetch_add(&fired, 1);
    publish();
    if (fail)
        errno = fault_errno;
    return fail;
}

#define REAL(ret, name, ...)                                                                       \
    static ret (*real_##name)(__VA_ARGS__);                                                        \
    if (real_##name == NULL)                                                                       \
        real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);

ssize_t write(int fd, const void *buf, size_t len)
{
    REAL(ssize_t, write, int, const void *, size_t);
    if (fd > 2)
        stall("write", fd);
    if (fault(K_WRITE, fd > 2 && fd_in_store(fd)))
        return -1;
    return real_write(fd, buf, len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t offset)
{
    REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
    if (fd > 2)
        stall("write", fd);
    if (fault(K_WRITE, fd_in_store(fd)))
        return -1;
    return real_pwrite(fd, buf, len, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t offset)
{
    REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
    if (fd > 2)
        stall("write", fd);
    if (fault(K_WRITE, fd_in_store(fd)))
        return -1;
    return real_pwrite64(fd, buf, len, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
    REAL(ssize_t, writev, int, const struct iovec *, int);
    if (fd > 2)
        stall("write", fd);
    if (fault(K_WRITE, fd > 2 && fd_in_store(fd)))
        return -1;
    return real_writev(fd, iov, n);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t offset)
{
    REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t);
    if (fd > 2)
        stall("write", fd);
    if (fault(K_WRITE, fd_in_store(fd)))
        return -1;
    return real_pwritev(fd, iov, n, offset);
}

int fsync(int fd)
{
    REAL(int, fsync, int);
    if (fault(K_SYNC, fd_in_store(fd)))
        return -1;
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    REAL(int, fdatasync, int);
    if (fault(K_SYNC, fd_in_store(fd)))
        return -1;
    return real_fdatasync(fd);
}

int syncfs(int fd)
{
    REAL(int, syncfs, int);
    if (fault(K_SYNC, fd_in_store(fd)))
        return -1;
    return real_syncfs(fd);
}

int rename(const char *from, const char *to)
{
    REAL(int, rename, const char *, const char *);
    if (fault(K_RENAME, at_in_store(AT_FDCWD, from)))
        return -1;
    return real_rename(from, to);
}

int renameat(int fromfd, const char *from, int tofd, const char *to)
{
    REAL(int, renameat, int, const char *, int, const char *);
    if (fault(K_RENAME, at_in_store(fromfd, from) || at_in_store(tofd, to)))
        return -1;
    return real_renameat(fromfd, from, tofd, to);
}

int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned flags)
{
    REAL(int, renameat2, int, const char *, int, const char *, unsigned);
    if (fault(K_RENAME, at_in_store(fromfd, from) || at_in_store(tofd, to)))
        return -1;
    return real_renameat2(fromfd, from, tofd, to, flags);
}

int link(const char *from, const char *to)
{
    REAL(int, link, const char *, const char *);
    if (fault(K_LINK, at_in_store(AT_FDCWD, to)))
        return -1;
    return real_link(from, to);
}

int linkat(int fromfd, const char *from, int tofd, const char *to, int flags)
{
    REAL(int, linkat, int, const char *, int, const char *, int);
    if (fault(K_LINK, at_in_store(fromfd, from) || at_in_store(tofd, to)))
        return -1;
    return real_linkat(fromfd, from, tofd, to, flags);
}

int ftruncate(int fd, off_t len)
{
    REAL(int, ftruncate, int, off_t);
    if (fault(K_META, fd_in_store(fd)))
        return -1;
    return real_ftruncate(fd, len);
}

int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)
{
    REAL(int, fsetxattr, int, const char *, const void *, size_t, int);
    if (fault(K_META, fd_in_store(fd)))
        return -1;
    return real_fsetxattr(fd, name, value, size, flags);
}

int fchmod(int fd, mode_t mode)
{
    REAL(int, fchmod, int, mode_t);
    if (fault(K_META, fd_in_store(fd)))
        return -1;
    return real_fchmod(fd, mode);
}

int futimens(int fd, const struct timespec times[2])
{
    REAL(int, futimens, int, const struct timespec *);
    if (fault(K_META, fd_in_store(fd)))
        return -1;
    return real_futimens(fd, times);
}

int utimensat(int dirfd, const char *name, const struct timespec times[2], int flags)
{
    REAL(int, utimensat, int, const char *, const struct timespec *, int);
    if (fault(K_META, at_in_store(dirfd, name)))
        return -1;
    return real_utimensat(dirfd, name, times, flags);
}

int mkdirat(int dirfd, const char *name, mode_t mode)
{
    REAL(int, mkdirat, int, const char *, mode_t);
    if (fault(K_META, at_in_store(dirfd, name)))
        return -1;
    return real_mkdirat(dirfd, name, mode);
}

int symlinkat(const char *target, int dirfd, const char *name)
{
    REAL(int, symlinkat, const char *, int, const char *);
    if (fault(K_META, at_in_store(dirfd, name)))
        return -1;
    return real_symlinkat(target, dirfd, name);
}

ssize_t pread(int fd, void *buf, size_t len, off_t offset)
{
    REAL(ssize_t, pread, int, void *, size_t, off_t);
    stall("read", fd);
    return real_pread(fd, buf, len, offset);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t offset)
{
    REAL(ssize_t, pread64, int, void *, size_t, off_t);
    stall("read", fd);
    return real_pread64(fd, buf, len, offset);
}
