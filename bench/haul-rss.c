/*
 * haul-rss.c - what a server engine holds in memory during and after a
 * burst of clients, with and without a memory budget: the resident set
 * at its highest, and after the clients left and the engine sat idle.
 *
 *     haul-rss [--memory BYTES] [--sessions N] [--messages M] [--size BYTES]
 *              [--idle MS] [--trim]
 *
 * A child process makes N sessions to the server and sends M messages of
 * --size bytes on each; the server takes every message on its event
 * thread and hands it to a worker thread that reads it and frees it, as
 * hauld's workers write received data. --trim calls malloc_trim(0) once
 * the server is idle, to compare with the engine's own return of memory.
 * It prints one line: peak and idle resident set in MiB, and the
 * engine's memory_peak.
 */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "haul.h"

static long status_kib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, field, n) == 0)
            v = atol(line + n + 1);
    if (f)
        fclose(f);
    return v;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The worker: a queue of messages to read and free. */
typedef struct work {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    haul_message **q;
    size_t head, tail, cap;
    int stop;
    uint64_t sum;
} work;

static void *worker(void *arg)
{
    work *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (w->head == w->tail && !w->stop)
            pthread_cond_wait(&w->cond, &w->mu);
        if (w->head == w->tail) {
            pthread_mutex_unlock(&w->mu);
            return NULL;
        }
        haul_message *m = w->q[w->head++ % w->cap];
        pthread_mutex_unlock(&w->mu);
        const uint8_t *d = haul_message_data(m);
        for (size_t i = 0; i < haul_message_len(m); i += 4096)
            w->sum += d[i];
        haul_message_free(m);
    }
}

static void client(const char *address, int sessions, int messages, size_t size)
{
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.max_message = size;
    haul_engine *e;
    if (haul_engine_new(&c, &e))
        exit(1);
    haul_session **ss = calloc((size_t)sessions, sizeof(*ss));
    int *queued = calloc((size_t)sessions, sizeof(int));
    int *acked = calloc((size_t)sessions, sizeof(int));
    uint8_t *buf = calloc(1, size);
    for (int i = 0; i < sessions; i++) {
        haul_session_config sc;
        haul_session_config_init(&sc);
        sc.destination = address;
        char principal[32];
        snprintf(principal, sizeof(principal), "client%d", i % 16);
        sc.principal = principal;
        sc.max_message = size;
        sc.output_queue = 4 * size;
        sc.connections = 2;
        sc.data = (void *)(intptr_t)i;
        if (haul_session_new(e, &sc, &ss[i]))
            exit(1);
    }
    int done = 0, closed = 0;
    while (closed < sessions) {
        haul_event ev[64];
        int n = haul_engine_wait(e, ev, 64, 1000);
        for (int k = 0; k < n; k++) {
            int i = (int)(intptr_t)haul_session_data(ev[k].session);
            if (ev[k].type == HAUL_EV_MESSAGE_SENT && ++acked[i] == messages) {
                haul_session_close(ss[i]);
                done++;
            } else if (ev[k].type == HAUL_EV_SESSION_CLOSED) {
                closed++;
            } else if (ev[k].type == HAUL_EV_MESSAGE_FAILED ||
                       ev[k].type == HAUL_EV_SESSION_REFUSED) {
                fprintf(stderr, "client: %s %s\n", haul_event_name(ev[k].type),
                        haul_strerror(ev[k].error));
                exit(1);
            }
        }
        for (int i = 0; i < sessions; i++)
            while (queued[i] < messages && haul_send(ss[i], buf, size, 0) == 0)
                queued[i]++;
    }
    haul_engine_free(e);
    exit(done == sessions ? 0 : 1);
}

int main(int argc, char **argv)
{
    uint64_t memory = 0;
    int sessions = 100, messages = 8, idle_ms = 1500, trim = 0;
    size_t size = 1u << 20;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--memory") == 0 && i + 1 < argc)
            memory = strtoull(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--sessions") == 0 && i + 1 < argc)
            sessions = atoi(argv[++i]);
        else if (strcmp(argv[i], "--messages") == 0 && i + 1 < argc)
            messages = atoi(argv[++i]);
        else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
            size = strtoull(argv[++i], NULL, 0);
        else if (strcmp(argv[i], "--idle") == 0 && i + 1 < argc)
            idle_ms = atoi(argv[++i]);
        else if (strcmp(argv[i], "--trim") == 0)
            trim = 1;
        else {
            fprintf(stderr, "usage: haul-rss [--memory BYTES] [--sessions N] [--messages M] "
                            "[--size BYTES] [--idle MS] [--trim]\n");
            return 2;
        }
    }
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.max_message = size;
    c.memory = memory;
    c.io_threads = 2;
    haul_engine *e;
    int rc = haul_engine_new(&c, &e);
    if (rc) {
        fprintf(stderr, "haul-rss: %s\n", haul_strerror(rc));
        return 1;
    }
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    if (haul_listen(e, "127.0.0.1:0", &lc))
        return 1;
    char address[160];
    haul_listen_address(e, address, sizeof(address));
    long base = status_kib("VmRSS:");

    pid_t pid = fork();
    if (pid == 0)
        client(address, sessions, messages, size);

    work w = {.cap = 1u << 16};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cond, NULL);
    w.q = calloc(w.cap, sizeof(*w.q));
    pthread_t th;
    pthread_create(&th, NULL, worker, &w);
    int closed = 0;
    int64_t t0 = now_ms();
    while (closed < sessions) {
        haul_event ev[64];
        int n = haul_engine_wait(e, ev, 64, 1000);
        for (int k = 0; k < n; k++) {
            if (ev[k].type == HAUL_EV_SESSION_REQUEST) {
                haul_session_accept(ev[k].session);
            } else if (ev[k].type == HAUL_EV_MESSAGE_RECEIVED) {
                haul_message *m;
                while (haul_recv(ev[k].session, &m) == 0) {
                    pthread_mutex_lock(&w.mu);
                    w.q[w.tail++ % w.cap] = m;
                    pthread_cond_signal(&w.cond);
                    pthread_mutex_unlock(&w.mu);
                }
            } else if (ev[k].type == HAUL_EV_SESSION_CLOSED) {
                closed++;
                haul_session_free(ev[k].session);
            }
        }
    }
    int64_t t1 = now_ms();
    int status = 0;
    waitpid(pid, &status, 0);
    pthread_mutex_lock(&w.mu);
    w.stop = 1;
    pthread_cond_signal(&w.cond);
    pthread_mutex_unlock(&w.mu);
    pthread_join(th, NULL);
    /* Idle: the engine's timer runs meanwhile. */
    struct timespec idle = {.tv_sec = idle_ms / 1000, .tv_nsec = (long)(idle_ms % 1000) * 1000000L};
    nanosleep(&idle, NULL);
    if (trim)
        malloc_trim(0);
    haul_engine_stats st;
    haul_engine_stats_get(e, &st);
    printf("memory %llu sessions %d x %d x %zu: %.2f s, rss base %.1f MiB, peak %.1f MiB, "
           "idle %.1f MiB; memory_peak %.1f MiB, client %s\n",
           (unsigned long long)memory, sessions, messages, size, (t1 - t0) / 1000.0, base / 1024.0,
           status_kib("VmHWM:") / 1024.0, status_kib("VmRSS:") / 1024.0, st.memory_peak / 1048576.0,
           WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "ok" : "failed");
    haul_engine_free(e);
    free(w.q);
    return 0;
}
