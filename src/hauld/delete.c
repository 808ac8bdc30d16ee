/*
 * delete.c - the DELETE request: removes one committed snapshot of a
 * dataset (docs/store-protocol.md). Only a principal with the delete
 * right may make it (auth.h); `haul prune` is a series of them.
 *
 * The snapshot is first renamed to snapshots/ID.deleting, which no
 * listing, pull or push takes for a snapshot, and that rename is made
 * durable: from then on the snapshot is gone for every reader, even if
 * hauld stops before the files are removed. What a stop leaves behind is
 * removed by the next push or delete of the dataset (delete_leftovers).
 * The dataset's push lock is held throughout, so that a push never links
 * its files from a snapshot being removed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hauld/server.h"
#include "store/fs.h"

#define DELETING ".deleting"

typedef struct deleter {
    int ns, ds, snaps, lock;
    int busy; /* server_busy_add() succeeded */
    int done;
    int lock_err; /* the dataset could not be locked: the RESULT says why */
} deleter;

static int delete_step(request *r);
static void delete_fini(request *r);

static const request_ops delete_ops = {"delete", delete_step, delete_fini};

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static int is_deleting(const char *name)
{
    size_t n = strlen(name), k = strlen(DELETING);
    return n > k && strcmp(name + n - k, DELETING) == 0;
}

int delete_leftovers(int snaps, uint64_t *freed)
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

/* Lets pushes of the dataset go on again. */
static void release(request *r, deleter *d)
{
    if (d->busy)
        server_busy_remove(r);
    d->busy = 0;
    close_fd(&d->lock);
}

static uint32_t refuse(request *r, uint32_t reason)
{
    delete_fini(r);
    r->op = NULL;
    r->ops = NULL;
    return reason;
}

uint32_t delete_open(request *r)
{
    deleter *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return HSP_R_SERVER_ERROR;
    d->ns = d->ds = d->snaps = d->lock = -1;
    r->op = d;
    r->ops = &delete_ops;
    if (!fs_snapshot_id_ok(r->req.snapshot))
        return refuse(r, HSP_R_NO_SNAPSHOT);
    if ((d->ns = server_ns_open(r, 0)) < 0 || (d->ds = fs_dir_open(d->ns, r->req.dataset, 0)) < 0) {
        if (errno == ENOENT)
            return refuse(r, HSP_R_NO_DATASET);
        request_log(r, HAUL_LOG_ERROR, "cannot open the dataset: %s", store_strerror(errno));
        return refuse(r, HSP_R_SERVER_ERROR);
    }
    if ((d->snaps = fs_open(d->ds, "snapshots", O_PATH | O_DIRECTORY, 0)) < 0) {
        if (errno == ENOENT)
            return refuse(r, HSP_R_NO_SNAPSHOT);
        request_log(r, HAUL_LOG_ERROR, "cannot open the snapshots: %s", store_strerror(errno));
        return refuse(r, HSP_R_SERVER_ERROR);
    }
    struct stat st;
    if (fstatat(d->snaps, r->req.snapshot, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
        return refuse(r, HSP_R_NO_SNAPSHOT);
    /* A push of the dataset, here or in another process, excludes it. */
    if (server_busy_add(r) < 0)
        return refuse(r, HSP_R_BUSY);
    d->busy = 1;
    if ((d->lock = fs_dataset_lock(d->ds)) < 0) {
        if (errno == EWOULDBLOCK)
            return refuse(r, HSP_R_BUSY);
        /* An error of the store: accepted, and failed with a RESULT
         * that names it, which a refusal cannot. */
        d->lock_err = errno;
    }
    return 0;
}

static int delete_step(request *r)
{
    deleter *d = r->op;
    if (d->done)
        return 0;
    d->done = 1;
    const char *id = r->req.snapshot;
    if (d->lock_err) {
        request_log(r, HAUL_LOG_ERROR, "cannot lock the dataset: %s", store_strerror(d->lock_err));
        request_result(r, d->lock_err, id, 0, 0, 0, 0,
                       "cannot delete the snapshot: locking the dataset: %s",
                       store_strerror(d->lock_err));
        return 0;
    }
    char gone[HSP_SNAPSHOT_MAX + sizeof(DELETING)];
    snprintf(gone, sizeof(gone), "%s%s", id, DELETING);
    int64_t time;
    uint64_t files, bytes, freed = 0;
    int snap = fs_snapshot_open(d->ds, id);
    if (snap < 0) {
        request_result(r, errno, id, 0, 0, 0, 0, "cannot open the snapshot: %s",
                       store_strerror(errno));
        return 0;
    }
    fs_snapshot_info(snap, &time, &files, &bytes);
    close(snap);
    int renamed = renameat(d->snaps, id, d->snaps, gone) == 0;
    if (!renamed || fs_fsync_dir(d->snaps, ".") < 0) {
        int err = errno;
        /* Not durably gone: it stays a snapshot, as the client is told,
         * rather than vanish now and perhaps come back after a crash. */
        if (renamed)
            renameat(d->snaps, gone, d->snaps, id);
        request_log(r, HAUL_LOG_ERROR, "cannot take the snapshot away: %s", store_strerror(err));
        request_result(r, err, id, 0, 0, 0, 0, "cannot delete the snapshot: %s",
                       store_strerror(err));
        return 0;
    }
    if (delete_leftovers(d->snaps, &freed) < 0) {
        /* The snapshot is gone for every reader already; the files left
         * go with the next push or delete. */
        request_log(r, HAUL_LOG_WARN,
                    "removing the snapshot's files: %s (the next push or "
                    "delete of the dataset tries again)",
                    store_strerror(errno));
    }
    release(r, d);
    request_log(r, HAUL_LOG_INFO, "deleted: %llu files, %llu bytes freed",
                (unsigned long long)files, (unsigned long long)freed);
    request_result(r, 0, id, files, bytes, 0, 0, "snapshot %s deleted: %llu bytes freed", id,
                   (unsigned long long)freed);
    return 0;
}

static void delete_fini(request *r)
{
    deleter *d = r->op;
    if (d == NULL)
        return;
    release(r, d);
    close_fd(&d->snaps);
    close_fd(&d->ds);
    close_fd(&d->ns);
    free(d);
    r->op = NULL;
}
