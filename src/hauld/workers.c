/*
 * workers.c - the pool of worker threads of workers.h: one run queue
 * under one lock, and threads that take the job at its head.
 *
 * A job is in one of three states, changed under the pool's lock only:
 *
 *   IDLE     in no queue and on no thread; a post queues it
 *   QUEUED   in the run queue, once
 *   RUNNING  on one thread; posts gather in its notes, and the thread
 *            queues it again after its turn when any came
 *
 * so that a job is never on two threads at once, and a note posted while
 * it runs is never lost: it either reaches the turn that runs (taken when
 * the turn began) or queues the next one.
 */
#include "hauld/workers.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

enum { JOB_IDLE = 0, JOB_QUEUED, JOB_RUNNING };

struct workers {
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job was queued, or the pool stops */
    worker_job *head, *tail;
    int stop;
    unsigned busy; /* turns running */
    unsigned n;
    pthread_t *threads;
    worker_fn *fn;
    void *arg;
};

/* Under the lock. */
static void enqueue(workers *w, worker_job *job)
{
    job->state = JOB_QUEUED;
    job->next = NULL;
    if (w->tail)
        w->tail->next = job;
    else
        w->head = job;
    w->tail = job;
}

static void *worker_main(void *arg)
{
    workers *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->head == NULL && !w->stop)
            pthread_cond_wait(&w->work, &w->mu);
        if (w->stop)
            break;
        worker_job *job = w->head;
        w->head = job->next;
        if (w->head == NULL)
            w->tail = NULL;
        job->state = JOB_RUNNING;
        unsigned notes = job->notes;
        job->notes = 0;
        w->busy++;
        pthread_mutex_unlock(&w->mu);

        int rc = w->fn(job, notes, w->arg);

        pthread_mutex_lock(&w->mu);
        w->busy--;
        if (rc == WORKER_GONE)
            continue;
        if (rc == WORKER_AGAIN || job->notes) {
            enqueue(w, job);
            /* This thread takes the head next; another may take it sooner. */
            pthread_cond_signal(&w->work);
        } else {
            job->state = JOB_IDLE;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

int workers_start(workers **out, unsigned n, worker_fn *fn, void *arg)
{
    *out = NULL;
    if (n == 0)
        return EINVAL;
    workers *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return ENOMEM;
    w->threads = calloc(n, sizeof(*w->threads));
    if (w->threads == NULL) {
        free(w);
        return ENOMEM;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work, NULL);
    w->fn = fn;
    w->arg = arg;
    for (unsigned i = 0; i < n; i++) {
        int rc = pthread_create(&w->threads[i], NULL, worker_main, w);
        if (rc != 0) {
            w->n = i;
            workers_stop(w);
            return rc;
        }
    }
    w->n = n;
    *out = w;
    return 0;
}

void workers_post(workers *w, worker_job *job, unsigned notes)
{
    pthread_mutex_lock(&w->mu);
    job->notes |= notes;
    if (job->state == JOB_IDLE) {
        enqueue(w, job);
        pthread_cond_signal(&w->work);
    }
    pthread_mutex_unlock(&w->mu);
}

unsigned workers_busy(workers *w)
{
    pthread_mutex_lock(&w->mu);
    unsigned n = w->busy;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void workers_stop(workers *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->work);
    pthread_mutex_unlock(&w->mu);
    for (unsigned i = 0; i < w->n; i++)
        pthread_join(w->threads[i], NULL);
    pthread_cond_destroy(&w->work);
    pthread_mutex_destroy(&w->mu);
    free(w->threads);
    free(w);
}
