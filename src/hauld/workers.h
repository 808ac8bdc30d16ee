/*
 * workers.h - hauld's pool of worker threads: jobs that run one turn at a
 * time, never two turns of one job at once, in the order they were
 * posted.
 *
 * A job is embedded in what it works for (a request, server.c). Any
 * thread posts notes to a job (workers_post): bits that say what
 * happened since its last turn. A job that is idle is queued; one that is
 * queued or running only gathers the notes, and runs again once its
 * current turn ends. A turn gets every note posted before it began and
 * returns whether the job wants another turn at once (it goes to the back
 * of the queue, so that every job gets its share), waits for a note, or
 * is gone (the turn freed it; the pool never touches it again).
 *
 * Freeing a job is its owner's affair: the pool only promises that a job
 * whose turn returned WORKER_GONE is forgotten. The owner must make sure
 * that no thread posts to a job once it has been freed (hauld posts under
 * its server lock, and frees a request only after unlinking it under the
 * same lock).
 */
#ifndef HAUL_HAULD_WORKERS_H
#define HAUL_HAULD_WORKERS_H

typedef struct workers workers;

/* A job's place in the pool. Every field is the pool's, under its lock. */
typedef struct worker_job {
    struct worker_job *next; /* in the run queue */
    int state;               /* idle, queued or running (workers.c) */
    unsigned notes;          /* posted since the last turn began */
} worker_job;

/* What a turn returns. */
enum {
    WORKER_IDLE = 0,  /* wait for the next note */
    WORKER_AGAIN = 1, /* run again once the jobs queued meanwhile have run */
    WORKER_GONE = 2,  /* the job was freed */
};

/* One turn of a job, on a worker thread: notes are those posted since
 * its last turn began (0 for a job that asked for another turn). */
typedef int worker_fn(worker_job *job, unsigned notes, void *arg);

/* Starts n worker threads (n >= 1) that run jobs with fn. Returns 0, or
 * an errno value (and starts none). */
int workers_start(workers **out, unsigned n, worker_fn *fn, void *arg);

/* Adds notes (nonzero) to a job and queues it unless it is queued or
 * running already. Any thread; never blocks but on the pool's lock. */
void workers_post(workers *w, worker_job *job, unsigned notes);

/* How many turns are running now (for the log). */
unsigned workers_busy(workers *w);

/* Stops the pool: waits for the turns that run to end, then joins the
 * threads. Jobs still queued get no more turns. NULL is ignored. */
void workers_stop(workers *w);

#endif
