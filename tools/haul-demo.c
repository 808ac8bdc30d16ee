/*
 * haul-demo - the transport at work on one machine: a listener and a
 * client in one process, a session over a pipe of several connections,
 * some hundreds of megabytes of messages, checked end to end.
 *
 *   haul-demo [MiB] [connections]
 *
 * Uses the public API only.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "haul.h"

#define MESSAGE (1u << 20)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct server {
    haul_engine *engine;
    uint64_t bytes, messages, hash;
    int done, error;
};

/* The storage server's side: accept, take every message, hash it. */
static void *serve(void *arg)
{
    struct server *sv = arg;
    XXH3_state_t *h = XXH3_createState();
    XXH3_64bits_reset(h);
    haul_session *session = NULL;
    haul_event evs[64];
    while (!sv->done) {
        int n = haul_engine_wait(sv->engine, evs, 64, 1000);
        for (int i = 0; i < n; i++) {
            haul_event *ev = &evs[i];
            switch (ev->type) {
            case HAUL_EV_SESSION_REQUEST:
                printf("server: session request from principal %s\n",
                       haul_session_principal(ev->session));
                session = ev->session;
                haul_session_accept(session);
                break;
            case HAUL_EV_MESSAGE_RECEIVED: {
                haul_message *m;
                while (haul_recv(ev->session, &m) == 0) {
                    XXH3_64bits_update(h, haul_message_data(m), haul_message_len(m));
                    sv->bytes += haul_message_len(m);
                    sv->messages++;
                    haul_message_free(m);
                }
                break;
            }
            case HAUL_EV_SESSION_CLOSED:
                sv->error = ev->error;
                sv->done = 1;
                break;
            default:
                break;
            }
        }
    }
    sv->hash = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    haul_session_free(session);
    return NULL;
}

int main(int argc, char **argv)
{
    uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    unsigned conns = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 4;
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    haul_engine *server_engine, *client_engine;
    int rc;
    if ((rc = haul_engine_new(&ec, &server_engine)) ||
        (rc = haul_engine_new(&ec, &client_engine))) {
        fprintf(stderr, "haul-demo: %s\n", haul_strerror(rc));
        return 1;
    }
    if ((rc = haul_listen(server_engine, "127.0.0.1:0", NULL))) {
        fprintf(stderr, "haul-demo: listen: %s\n", haul_strerror(rc));
        return 1;
    }
    char address[128];
    haul_listen_address(server_engine, address, sizeof(address));
    printf("server: listening on %s\n", address);

    struct server sv = {.engine = server_engine};
    pthread_t thread;
    pthread_create(&thread, NULL, serve, &sv);

    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "DLS_SERVER_1";
    sc.context = "GUID_REPLICA";
    sc.context_len = 12;
    sc.connections = conns;
    sc.max_message = MESSAGE;
    sc.output_queue = 32ull * MESSAGE;
    haul_session *session;
    if ((rc = haul_session_new(client_engine, &sc, &session))) {
        fprintf(stderr, "haul-demo: session: %s\n", haul_strerror(rc));
        return 1;
    }
    haul_event ev;
    do {
        haul_engine_wait(client_engine, &ev, 1, -1);
    } while (ev.type != HAUL_EV_SESSION_OPEN && ev.type != HAUL_EV_SESSION_REFUSED);
    if (ev.type != HAUL_EV_SESSION_OPEN) {
        fprintf(stderr, "haul-demo: session refused: %s\n", haul_strerror(ev.error));
        return 1;
    }
    printf("client: session open over a pipe of %u connections\n", conns);

    /* 64 MiB of data, sent over and over as 1 MiB messages. */
    size_t pool = 64u * MESSAGE;
    uint8_t *data = malloc(pool);
    for (size_t i = 0; i < pool / 8; i++) {
        uint64_t x = i * 0x9E3779B97F4A7C15ull;
        memcpy(data + 8 * i, &x, 8);
    }
    XXH3_state_t *h = XXH3_createState();
    XXH3_64bits_reset(h);
    uint64_t total = mib * MESSAGE, queued = 0, acked = 0;
    double start = now_s();
    haul_event evs[64];
    while (acked < total) {
        while (queued < total) {
            const uint8_t *p = data + (queued % pool);
            rc = haul_send_buffer(session, p, MESSAGE, NULL, NULL, queued);
            if (rc == HAUL_EQUEUEFULL)
                break;
            if (rc) {
                fprintf(stderr, "haul-demo: send: %s\n", haul_strerror(rc));
                return 1;
            }
            XXH3_64bits_update(h, p, MESSAGE);
            queued += MESSAGE;
        }
        int n = haul_engine_wait(client_engine, evs, 64, 5000);
        for (int i = 0; i < n; i++) {
            if (evs[i].type == HAUL_EV_MESSAGE_SENT)
                acked += MESSAGE;
            else if (evs[i].type == HAUL_EV_MESSAGE_FAILED ||
                     evs[i].type == HAUL_EV_SESSION_CLOSED) {
                fprintf(stderr, "haul-demo: transfer failed: %s\n", haul_strerror(evs[i].error));
                return 1;
            }
        }
    }
    double secs = now_s() - start;
    haul_session_close(session);
    do {
        haul_engine_wait(client_engine, &ev, 1, -1);
    } while (ev.type != HAUL_EV_SESSION_CLOSED);
    pthread_join(thread, NULL);

    uint64_t sent_hash = XXH3_64bits_digest(h);
    printf("client: %llu messages, %llu MiB acknowledged in %.2f s: %.1f MiB/s (%.2f Gbit/s)\n",
           (unsigned long long)(total / MESSAGE), (unsigned long long)mib, secs, mib / secs,
           (double)total * 8 / secs / 1e9);
    printf("server: %llu messages, %llu bytes, xxh3 %016llx (client %016llx): %s\n",
           (unsigned long long)sv.messages, (unsigned long long)sv.bytes,
           (unsigned long long)sv.hash, (unsigned long long)sent_hash,
           sv.hash == sent_hash && sv.bytes == total ? "identical" : "MISMATCH");
    XXH3_freeState(h);
    free(data);
    haul_session_free(session);
    haul_engine_free(client_engine);
    haul_engine_free(server_engine);
    return sv.hash == sent_hash && sv.bytes == total ? 0 : 1;
}
