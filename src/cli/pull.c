/*
 * pull.c - haul pull haul://HOST:PORT/DATASET[@SNAPSHOT] DEST_DIR [PATH...]:
 * restore a snapshot, or part of it (docs/store-protocol.md, PULL).
 *
 * The client names the paths it wants (PATHS records, then an empty
 * message); the server sends the entries in manifest order, each file's
 * ENTRY followed by its DATA and HOLE records and a DONE with the
 * manifest's hash, then RESULT.
 *
 * Nothing is written outside DEST_DIR, whatever names arrive: the codec
 * refuses absolute paths and "..", every parent directory is opened with
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) from DEST_DIR's
 * descriptor, and the last component is created with *at() calls that do
 * not follow symbolic links. Existing entries are replaced (unlinked first,
 * so a hard link elsewhere keeps its content). Holes stay holes. Every
 * file's XXH3-128 is checked against the DONE. Directories get their mode
 * and times at the end, deepest first, so that writing into them does not
 * disturb what was set.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xxhash.h>

#include "cli/client.h"
#include "cli/progress.h"

/* A directory restored, waiting for its metadata. */
typedef struct dirmeta {
    struct dirmeta *next;
    uint32_t mode, uid, gid;
    int64_t sec;
    uint32_t nsec;
    uint16_t len;
    char path[]; /* len bytes and a NUL */
} dirmeta;

typedef struct pull {
    cli_client c;
    const cli_options *opt;
    int root;
    int as_root; /* restore owners too */

    /* The directory of the last entry, kept open: entries come grouped by
     * directory. */
    int parent_fd;
    char parent_path[HSP_PATH_MAX + 1];
    size_t parent_len;

    /* The file being received. */
    int active;
    int fd; /* -1 when its content is being dropped (it could not be written) */
    hsp_entry meta;
    char path[HSP_PATH_MAX + 1];
    uint64_t off;
    XXH3_state_t *hash;

    dirmeta *dirs; /* newest first: the deepest come before their parents */
    cli_progress *progress;
    uint64_t files, directories, symlinks, hardlinks, bytes, skipped, mismatches, problems;
} pull;

static void report(const char *path, size_t len, const char *what, int err)
{
    cli_progress_clear();
    fputs("haul: ", stderr);
    cli_put_path(stderr, path, len);
    if (err)
        fprintf(stderr, ": %s: %s\n", what, strerror(err));
    else
        fprintf(stderr, ": %s\n", what);
}

/* Errors after which writing anything more is pointless. */
static int fatal_errno(int err)
{
    return err == ENOSPC || err == EDQUOT || err == EROFS || err == EIO;
}

/* A file or entry that could not be written: reported, the rest goes on
 * (or, for a full disk and the like, the run stops). */
static int write_failed(pull *p, const char *path, size_t len, const char *what, int err)
{
    report(path, len, what, err);
    p->skipped++;
    if (fatal_errno(err)) {
        cli_warn("giving up: %s", strerror(err));
        return CLI_EXIT_TRANSFER;
    }
    return 0;
}

/* Creates a directory below dir, replacing what is not a directory. */
static int make_dir(int dir, const char *name, mode_t mode)
{
    if (mkdirat(dir, name, mode) == 0)
        return 0;
    if (errno != EEXIST)
        return -1;
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return -1;
    if (S_ISDIR(st.st_mode))
        return 0;
    if (unlinkat(dir, name, 0) != 0)
        return -1;
    return mkdirat(dir, name, mode);
}

/* Opens the directory `path` (len bytes) below DEST_DIR, creating what is
 * missing of it. Returns a descriptor owned by the cache, or -1. */
static int parent_dir(pull *p, const char *path, size_t len)
{
    if (len == 0)
        return p->root;
    if (p->parent_fd >= 0 && len == p->parent_len && memcmp(path, p->parent_path, len) == 0)
        return p->parent_fd;
    if (p->parent_fd >= 0)
        close(p->parent_fd);
    p->parent_fd = -1;
    memcpy(p->parent_path, path, len);
    p->parent_path[len] = '\0';
    int fd = cli_open_beneath(p->root, p->parent_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        /* A partial pull, or a server that sends no entry for a parent:
         * make it, one component at a time, each below the last. */
        fd = fcntl(p->root, F_DUPFD_CLOEXEC, 3);
        char *comp = p->parent_path;
        while (fd >= 0 && comp) {
            char *slash = strchr(comp, '/');
            if (slash)
                *slash = '\0';
            int next = -1;
            if (make_dir(fd, comp, 0755) == 0)
                next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            int err = errno;
            close(fd);
            errno = err;
            fd = next;
            if (slash)
                *slash = '/';
            comp = slash ? slash + 1 : NULL;
        }
    }
    if (fd < 0)
        return -1;
    p->parent_fd = fd;
    p->parent_len = len;
    return fd;
}

/* Splits an entry's path into its directory's descriptor and its name
 * (copied into p->path, which the name points into). */
static int locate(pull *p, const char *path, size_t len, const char **name)
{
    memcpy(p->path, path, len);
    p->path[len] = '\0';
    char *slash = memrchr(p->path, '/', len);
    *name = slash ? slash + 1 : p->path;
    return parent_dir(p, p->path, slash ? (size_t)(slash - p->path) : 0);
}

/* Removes what is at name so that something new can take its place. */
static int clear_name(pull *p, int dir, const char *name)
{
    if (unlinkat(dir, name, 0) == 0 || errno == ENOENT)
        return 0;
    if (errno == EISDIR || errno == EPERM) {
        if (unlinkat(dir, name, AT_REMOVEDIR) != 0)
            return -1;
        /* A directory went: the cached one may have been it or below it. */
        if (p->parent_fd >= 0)
            close(p->parent_fd);
        p->parent_fd = -1;
        return 0;
    }
    return -1;
}

static void set_times(struct timespec ts[2], const hsp_entry *e)
{
    ts[0].tv_sec = 0;
    ts[0].tv_nsec = UTIME_OMIT;
    ts[1].tv_sec = e->mtime_sec;
    ts[1].tv_nsec = e->mtime_nsec;
}

/* ---- entries ---------------------------------------------------------------- */

static int entry_dir(pull *p, const hsp_entry *e)
{
    const char *name;
    int dir = locate(p, e->path, e->path_len, &name);
    /* Created private, so that it can be written into whatever its mode;
     * the mode comes at the end. */
    if (dir < 0 || make_dir(dir, name, 0700) != 0)
        return write_failed(p, e->path, e->path_len, "cannot create the directory", errno);
    dirmeta *d = malloc(sizeof(*d) + e->path_len + 1);
    if (d == NULL)
        return CLI_EXIT_TRANSFER;
    d->mode = e->mode;
    d->uid = e->uid;
    d->gid = e->gid;
    d->sec = e->mtime_sec;
    d->nsec = e->mtime_nsec;
    d->len = e->path_len;
    memcpy(d->path, e->path, e->path_len);
    d->path[e->path_len] = '\0';
    d->next = p->dirs;
    p->dirs = d;
    p->directories++;
    return 0;
}

static int entry_symlink(pull *p, const hsp_entry *e)
{
    char target[HSP_PATH_MAX + 1];
    if (e->target_len > HSP_PATH_MAX)
        return write_failed(p, e->path, e->path_len, "symbolic link target too long", 0);
    memcpy(target, e->target, e->target_len);
    target[e->target_len] = '\0';
    const char *name;
    int dir = locate(p, e->path, e->path_len, &name);
    if (dir < 0 || clear_name(p, dir, name) != 0 || symlinkat(target, dir, name) != 0)
        return write_failed(p, e->path, e->path_len, "cannot create the symbolic link", errno);
    /* The name's directory may have been closed by clear_name(). */
    dir = locate(p, e->path, e->path_len, &name);
    if (dir >= 0) {
        if (p->as_root)
            fchownat(dir, name, e->uid, e->gid, AT_SYMLINK_NOFOLLOW);
        struct timespec ts[2];
        set_times(ts, e);
        utimensat(dir, name, ts, AT_SYMLINK_NOFOLLOW);
    }
    p->symlinks++;
    return 0;
}

static int entry_hardlink(pull *p, const hsp_entry *e)
{
    /* The target's directory, opened as carefully as any other. */
    const char *slash = memrchr(e->target, '/', e->target_len);
    char tdir_path[HSP_PATH_MAX + 1], tname[256];
    size_t dlen = slash ? (size_t)(slash - e->target) : 0;
    size_t nlen = e->target_len - (slash ? dlen + 1 : 0);
    memcpy(tdir_path, e->target, dlen);
    tdir_path[dlen] = '\0';
    memcpy(tname, e->target + e->target_len - nlen, nlen);
    tname[nlen] = '\0';
    int tdir =
        dlen ? cli_open_beneath(p->root, tdir_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : p->root;
    if (tdir < 0)
        return write_failed(p, e->path, e->path_len, "cannot find the hard link's target", errno);
    const char *name;
    int dir = locate(p, e->path, e->path_len, &name);
    int rc = 0;
    if (dir < 0 || clear_name(p, dir, name) != 0 ||
        (dir = locate(p, e->path, e->path_len, &name)) < 0 ||
        linkat(tdir, tname, dir, name, 0) != 0)
        rc = write_failed(p, e->path, e->path_len, "cannot create the hard link", errno);
    else
        p->hardlinks++;
    if (tdir != p->root)
        close(tdir);
    return rc;
}

static int entry_file(pull *p, const hsp_entry *e)
{
    p->active = 1;
    p->meta = *e;
    p->off = 0;
    p->fd = -1;
    XXH3_128bits_reset(p->hash);
    cli_progress_file(p->progress, e->path, e->path_len);
    const char *name;
    int dir = locate(p, e->path, e->path_len, &name);
    /* The entry's path stays in p->path for the reports; meta.path with it. */
    p->meta.path = p->path;
    p->meta.target = NULL;
    if (dir < 0)
        return write_failed(p, e->path, e->path_len, "cannot create the file", errno);
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int fd = openat(dir, name, flags, 0600);
    if (fd < 0 && errno == EEXIST) {
        if (clear_name(p, dir, name) == 0 && (dir = locate(p, e->path, e->path_len, &name)) >= 0)
            fd = openat(dir, name, flags, 0600);
    }
    if (fd < 0)
        return write_failed(p, e->path, e->path_len, "cannot create the file", errno);
    p->fd = fd;
    return 0;
}

static int file_data(pull *p, const hsp_record *rec)
{
    if (!p->active || rec->id != p->meta.id)
        goto bad;
    if (rec->offset == 0 && p->off > 0 && rec->type == HSP_DATA) {
        /* The file starts over. */
        p->off = 0;
        XXH3_128bits_reset(p->hash);
        if (p->fd >= 0 && ftruncate(p->fd, 0) != 0)
            goto failed;
    }
    uint64_t len = rec->type == HSP_DATA ? rec->data_len : rec->length;
    if (rec->offset != p->off || len > p->meta.size || p->off > p->meta.size - len)
        goto bad;
    if (rec->type == HSP_DATA) {
        XXH3_128bits_update(p->hash, rec->data, rec->data_len);
        size_t done = 0;
        while (p->fd >= 0 && done < rec->data_len) {
            ssize_t n =
                pwrite(p->fd, rec->data + done, rec->data_len - done, (off_t)(rec->offset + done));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                goto failed;
            done += (size_t)n;
        }
    } else {
        /* A hole: nothing written; ftruncate at the end gives the size. */
        static const uint8_t zeros[65536];
        for (uint64_t left = len; left;) {
            size_t k = left < sizeof(zeros) ? (size_t)left : sizeof(zeros);
            XXH3_128bits_update(p->hash, zeros, k);
            left -= k;
        }
    }
    p->off += len;
    cli_progress_add(p->progress, len, 0);
    return 0;
failed : {
    int err = errno ? errno : EIO;
    close(p->fd);
    p->fd = -1;
    return write_failed(p, p->meta.path, p->meta.path_len, "cannot write", err);
}
bad:
    cli_warn("the server sent content out of order (entry %llu); giving up",
             (unsigned long long)rec->id);
    return CLI_EXIT_TRANSFER;
}

static int file_done(pull *p, const hsp_record *rec)
{
    if (!p->active || rec->id != p->meta.id) {
        cli_warn("the server sent an unexpected DONE (entry %llu); giving up",
                 (unsigned long long)rec->id);
        return CLI_EXIT_TRANSFER;
    }
    p->active = 0;
    cli_progress_add(p->progress, 0, 1);
    const hsp_entry *e = &p->meta;
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(p->hash));
    hsp_hash got;
    memcpy(got.b, canon.digest, 16);
    if (p->off != e->size) {
        report(e->path, e->path_len, "incomplete: fewer bytes than the manifest says", 0);
        p->mismatches++;
    } else if (!hsp_hash_equal(&got, &rec->hash)) {
        char want[33], have[33];
        hsp_hash_hex(&rec->hash, want);
        hsp_hash_hex(&got, have);
        cli_progress_clear();
        fputs("haul: ", stderr);
        cli_put_path(stderr, e->path, e->path_len);
        fprintf(stderr, ": content does not match the manifest (XXH3-128 %s, expected %s)\n", have,
                want);
        p->mismatches++;
    }
    if (p->fd < 0)
        return 0;
    int rc = 0;
    struct timespec ts[2];
    set_times(ts, e);
    /* The owner before the mode: chown clears set-user-ID bits. */
    if (ftruncate(p->fd, (off_t)p->off) != 0 ||
        (p->as_root && fchown(p->fd, e->uid, e->gid) != 0) || fchmod(p->fd, e->mode) != 0 ||
        futimens(p->fd, ts) != 0)
        rc = write_failed(p, e->path, e->path_len, "cannot finish the file", errno);
    else {
        p->files++;
        p->bytes += e->size;
    }
    if (close(p->fd) != 0 && rc == 0)
        rc = write_failed(p, e->path, e->path_len, "cannot write", errno);
    p->fd = -1;
    return rc;
}

static int on_record(void *arg, const hsp_record *rec)
{
    pull *p = arg;
    switch (rec->type) {
    case HSP_ENTRY:
        if (p->active) {
            cli_warn("the server sent an entry before the previous file was complete; giving up");
            return CLI_EXIT_TRANSFER;
        }
        switch (rec->entry.kind) {
        case HSP_FILE:
            return entry_file(p, &rec->entry);
        case HSP_DIR:
            return entry_dir(p, &rec->entry);
        case HSP_SYMLINK:
            return entry_symlink(p, &rec->entry);
        case HSP_HARDLINK:
            return entry_hardlink(p, &rec->entry);
        }
        return CLI_EXIT_TRANSFER;
    case HSP_DATA:
    case HSP_HOLE:
        return file_data(p, rec);
    case HSP_DONE:
        return file_done(p, rec);
    case HSP_PROBLEM:
        cli_server_problem(rec);
        cli_progress_problem(p->progress);
        p->problems++;
        return 0;
    case HSP_RESULT:
        if (p->active) {
            report(p->meta.path, p->meta.path_len, "incomplete: no DONE before the result", 0);
            p->mismatches++;
            p->active = 0;
            if (p->fd >= 0)
                close(p->fd);
            p->fd = -1;
        }
        return 0;
    default:
        cli_warn("the server sent an unexpected record (type %d); giving up", rec->type);
        return CLI_EXIT_TRANSFER;
    }
}

/* Directories get their mode, owner and time last, deepest first. */
static void finish_dirs(pull *p)
{
    while (p->dirs) {
        dirmeta *d = p->dirs;
        p->dirs = d->next;
        int fd = cli_open_beneath(p->root, d->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        struct timespec ts[2] = {{0, UTIME_OMIT}, {d->sec, d->nsec}};
        if (fd < 0 || (p->as_root && fchown(fd, d->uid, d->gid) != 0) || fchmod(fd, d->mode) != 0 ||
            futimens(fd, ts) != 0) {
            report(d->path, d->len, "cannot set the directory's metadata", errno);
            p->skipped++;
        }
        if (fd >= 0)
            close(fd);
        free(d);
    }
}

/* mkdir -p for DEST_DIR itself, which the user named. */
static int make_dest(const char *dest)
{
    char *copy = strdup(dest);
    if (copy == NULL)
        return -1;
    for (char *s = copy + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(copy, 0777) != 0 && errno != EEXIST) {
            free(copy);
            return -1;
        }
        *s = '/';
    }
    int rc = mkdir(copy, 0777) != 0 && errno != EEXIST ? -1 : 0;
    free(copy);
    return rc;
}

/* Sends a message, waiting while the output queue is full. */
static int send_wait(cli_client *c, const void *buf, size_t len)
{
    for (;;) {
        int rc = cli_send(c, buf, len, 0);
        if (rc != HAUL_EQUEUEFULL)
            return rc;
        if (cli_pump(c, 1000) < 0)
            return -1;
    }
}

/* PATHS records, then an empty message: "no more". */
static int send_paths(cli_client *c, int npaths, char **paths)
{
    uint8_t *buf = malloc(HSP_MESSAGE_MAX);
    if (buf == NULL)
        return -1;
    hsp_writer w;
    hsp_writer_init(&w, buf, HSP_MESSAGE_MAX);
    int rc = 0;
    for (int i = 0; i < npaths && rc == 0; i++) {
        if (!hsp_writer_fits(&w, strlen(paths[i]))) {
            rc = send_wait(c, buf, w.len);
            hsp_writer_init(&w, buf, HSP_MESSAGE_MAX);
        }
        if (rc == 0)
            hsp_put_text(&w, HSP_PATHS, paths[i], strlen(paths[i]));
    }
    if (rc == 0 && w.len)
        rc = send_wait(c, buf, w.len);
    if (rc == 0)
        rc = send_wait(c, NULL, 0);
    free(buf);
    return rc;
}

int cli_pull(const cli_options *opt, int argc, char **argv)
{
    cli_url url;
    if (cli_url_parse(argv[0], &url) != 0)
        return CLI_EXIT_USAGE;
    if (url.dataset[0] == '\0') {
        cli_warn("%s: pull needs a dataset (haul://HOST:PORT/DATASET[@SNAPSHOT])", argv[0]);
        return CLI_EXIT_USAGE;
    }
    const char *dest = argv[1];
    char **paths = argv + 2;
    int npaths = argc - 2;
    for (int i = 0; i < npaths; i++) {
        /* "dir/" means "dir". */
        size_t n = strlen(paths[i]);
        while (n > 1 && paths[i][n - 1] == '/')
            paths[i][--n] = '\0';
        if (!hsp_path_ok(paths[i], n)) {
            cli_warn("'%s': not a path inside a snapshot (relative, no '.' or '..')", paths[i]);
            return CLI_EXIT_USAGE;
        }
    }

    pull *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return CLI_EXIT_TRANSFER;
    p->opt = opt;
    p->root = -1;
    p->parent_fd = -1;
    p->fd = -1;
    p->as_root = geteuid() == 0;
    p->hash = XXH3_createState();
    double start = cli_now();
    int status = CLI_EXIT_OK;
    if (p->hash == NULL) {
        cli_warn("out of memory");
        status = CLI_EXIT_TRANSFER;
    } else if (make_dest(dest) != 0 ||
               (p->root = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        cli_warn("%s: %s", dest, strerror(errno));
        status = CLI_EXIT_TRANSFER;
    }

    cli_client *c = &p->c;
    c->on_record = on_record;
    c->arg = p;
    if (status == CLI_EXIT_OK) {
        p->progress = cli_progress_open(opt, NULL);
        c->progress = p->progress;
        /* A whole snapshot's size is in the dataset's list; a part of one
         * is known only at the end: the line then shows what arrived. */
        c->want_totals = npaths == 0;
    }
    if (status == CLI_EXIT_OK)
        status = cli_open(c, opt, &url, HSP_PULL);
    if (status == CLI_EXIT_OK && send_paths(c, npaths, paths) != 0 && !c->have_result)
        status = c->failed ? c->failed : CLI_EXIT_TRANSFER;
    if (status == CLI_EXIT_OK)
        cli_wait_result(c);
    if (status == CLI_EXIT_OK)
        status = c->failed;
    if (status == CLI_EXIT_OK)
        cli_close(c);
    cli_free(c);
    cli_progress_finish(p->progress, status == CLI_EXIT_OK && c->result.status == 0);
    cli_progress_free(p->progress);
    p->progress = NULL;
    if (p->fd >= 0)
        close(p->fd);
    if (p->root >= 0)
        finish_dirs(p);
    double secs = cli_now() - start;

    if (status == CLI_EXIT_OK) {
        status = cli_result_status(c, "pull");
        if (status == CLI_EXIT_OK && (p->mismatches || p->problems))
            status = CLI_EXIT_VERIFY;
        else if (status == CLI_EXIT_OK && p->skipped)
            status = CLI_EXIT_SKIPPED;
        double mibs = secs > 0 ? (double)p->bytes / (1 << 20) / secs : 0;
        unsigned peak, conns = cli_connections(c, &peak);
        if (opt->verbose && !opt->json && opt->connections == HAUL_CONNECTIONS_AUTO)
            cli_warn("%u connections at the end, %u at most (chosen automatically)", conns, peak);
        if (opt->json) {
            printf("{\"snapshot\":\"%s\",\"files\":%llu,\"directories\":%llu,\"symlinks\":%llu,"
                   "\"hardlinks\":%llu,\"bytes\":%llu,\"skipped\":%llu,\"mismatches\":%llu,"
                   "\"seconds\":%.3f,\"mib_per_s\":%.1f,\"connections\":%u,"
                   "\"connections_peak\":%u,\"compress\":%d,\"message_bytes\":%llu,"
                   "\"wire_bytes\":%llu}\n",
                   c->result.snapshot, (unsigned long long)p->files,
                   (unsigned long long)p->directories, (unsigned long long)p->symlinks,
                   (unsigned long long)p->hardlinks, (unsigned long long)p->bytes,
                   (unsigned long long)p->skipped, (unsigned long long)p->mismatches, secs, mibs,
                   conns, peak, c->compress, (unsigned long long)c->message_in,
                   (unsigned long long)c->wire_in);
        } else if (!opt->quiet) {
            char total[32];
            cli_human_bytes(p->bytes, total, sizeof(total));
            if (c->result.snapshot[0])
                printf("snapshot %s\n", c->result.snapshot);
            printf("%llu files, %s, %llu directories, %llu symlinks, %llu hard links, "
                   "%.2f s, %.1f MiB/s\n",
                   (unsigned long long)p->files, total, (unsigned long long)p->directories,
                   (unsigned long long)p->symlinks, (unsigned long long)p->hardlinks, secs, mibs);
            if (c->compress) {
                char msg[32], wire[32];
                cli_human_bytes(c->message_in, msg, sizeof(msg));
                cli_human_bytes(c->wire_in, wire, sizeof(wire));
                printf("compressed: %s on the wire for %s of messages (ratio %.2f)\n", wire, msg,
                       c->wire_in ? (double)c->message_in / (double)c->wire_in : 1.0);
            }
        }
    }
    while (p->dirs) {
        dirmeta *d = p->dirs;
        p->dirs = d->next;
        free(d);
    }
    if (p->parent_fd >= 0)
        close(p->parent_fd);
    if (p->root >= 0)
        close(p->root);
    if (p->hash)
        XXH3_freeState(p->hash);
    free(p);
    return status;
}
