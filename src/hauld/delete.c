/*
 * delete.c - the DELETE request: removes one committed snapshot of a
 * dataset (docs/store-protocol.md). Only a principal with the delete
 * right may make it (auth.h); `haul prune` is a series of them.
 *
 * The dataset's lock is held throughout, so that a push never links its
 * files from a snapshot being removed. The store makes the snapshot gone
 * for every reader at once and durably, then frees what no other snapshot
 * shares (store/store.h, snapshot_delete).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hauld/server.h"
#include "store/store.h"

typedef struct deleter {
    store_lock *lock;
    int busy; /* server_busy_add() succeeded */
    int done;
    int lock_err; /* the dataset could not be locked: the RESULT says why */
    store_err lock_why;
} deleter;

static int delete_step(request *r);
static void delete_fini(request *r);

static const request_ops delete_ops = {"delete", delete_step, delete_fini};

/* Lets pushes of the dataset go on again. */
static void release(request *r, deleter *d)
{
    if (d->busy)
        server_busy_remove(r);
    d->busy = 0;
    if (d->lock)
        store_unlock(d->lock);
    d->lock = NULL;
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
    r->op = d;
    r->ops = &delete_ops;
    if (!r->req.snapshot[0])
        return refuse(r, HSP_R_NO_SNAPSHOT); /* "" would name the latest */
    store_dataset ds = {r->who.root, r->req.dataset};
    store_err why;
    int rc = store_dataset_exists(r->srv->store, &ds, &why);
    if (rc == 0)
        return refuse(r, HSP_R_NO_DATASET);
    if (rc < 0) {
        request_log(r, HAUL_LOG_ERROR, "cannot open the dataset: %s", why.text);
        return refuse(r, HSP_R_SERVER_ERROR);
    }
    store_info info;
    rc = store_snapshot_info(r->srv->store, &ds, r->req.snapshot, &info, &why);
    if (rc == -ENOENT)
        return refuse(r, HSP_R_NO_SNAPSHOT);
    if (rc < 0) {
        request_log(r, HAUL_LOG_ERROR, "cannot open the snapshot: %s", why.text);
        return refuse(r, HSP_R_SERVER_ERROR);
    }
    /* A push of the dataset, here or in another process, excludes it. */
    if (server_busy_add(r) < 0)
        return refuse(r, HSP_R_BUSY);
    d->busy = 1;
    rc = store_lock_dataset(r->srv->store, &ds, 0, &d->lock, &d->lock_why);
    if (rc == -EWOULDBLOCK)
        return refuse(r, HSP_R_BUSY);
    if (rc < 0) {
        /* An error of the store: accepted, and failed with a RESULT
         * that names it, which a refusal cannot. */
        d->lock_err = -rc;
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
        request_log(r, HAUL_LOG_ERROR, "cannot lock the dataset: %s", d->lock_why.text);
        request_result(r, d->lock_err, id, 0, 0, 0, 0, "cannot delete the snapshot: %s",
                       d->lock_why.text);
        return 0;
    }
    store_info info;
    store_err why;
    uint64_t freed = 0;
    int rc = store_snapshot_delete(d->lock, id, &info, &freed, &why);
    if (rc < 0) {
        request_log(r, HAUL_LOG_ERROR, "cannot delete the snapshot: %s", why.text);
        request_result(r, -rc, id, 0, 0, 0, 0, "cannot delete the snapshot: %s", why.text);
        return 0;
    }
    release(r, d);
    request_log(r, HAUL_LOG_INFO, "deleted: %llu files, %llu bytes freed",
                (unsigned long long)info.files, (unsigned long long)freed);
    request_result(r, 0, id, info.files, info.bytes, 0, 0, "snapshot %s deleted: %llu bytes freed",
                   id, (unsigned long long)freed);
    return 0;
}

static void delete_fini(request *r)
{
    deleter *d = r->op;
    if (d == NULL)
        return;
    release(r, d);
    free(d);
    r->op = NULL;
}
