/*
 * haul-perf - memory-to-memory throughput through a pipe of N
 * connections, like iperf3: one process listens and takes every message,
 * the other sends for a while and reports what was acknowledged.
 *
 *   haul-perf -s [-a ADDRESS] [-k PKI_DIR]
 *   haul-perf -c ADDRESS [-P connections] [-t seconds] [-m message-bytes]
 *             [-q output-queue-bytes] [-T io-threads] [-S sessions] [-j]
 *             [-k PKI_DIR]
 *
 * -k runs over mutual TLS with certificates made by `haul cert` in
 * PKI_DIR: ca.crt, localhost.crt/.key for the server, perf.crt/.key for
 * the client (principal "perf").
 *
 * The server serves one client run and exits (like iperf3 -1). -j prints
 * the client's result as one JSON line. Uses the public API only.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "haul.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    switch (*end) {
    case 'k':
    case 'K':
        v *= 1024;
        break;
    case 'm':
    case 'M':
        v *= 1024 * 1024;
        break;
    case 'g':
    case 'G':
        v *= 1024.0 * 1024 * 1024;
        break;
    default:
        break;
    }
    return (uint64_t)v;
}

static const char *pki_dir;

static void tls_files(haul_tls_config *t, const char *who, char *cert, char *key, char *ca)
{
    sprintf(cert, "%s/%s.crt", pki_dir, who);
    sprintf(key, "%s/%s.key", pki_dir, who);
    sprintf(ca, "%s/ca.crt", pki_dir);
    t->cert_file = cert;
    t->key_file = key;
    t->ca_file = ca;
}

static int serve(const char *address, unsigned threads)
{
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.io_threads = threads;
    ec.max_message = 256ull << 20;
    haul_engine *e;
    int rc = haul_engine_new(&ec, &e);
    haul_listen_config lc;
    haul_listen_config_init(&lc);
    haul_tls_config tls = {0};
    char cert[4200], key[4200], ca[4200];
    if (pki_dir) {
        tls_files(&tls, "localhost", cert, key, ca);
        lc.tls = &tls;
    }
    if (rc == 0)
        rc = haul_listen(e, address, &lc);
    if (rc) {
        fprintf(stderr, "haul-perf: %s: %s\n", address, haul_strerror(rc));
        return 1;
    }
    char bound[160];
    haul_listen_address(e, bound, sizeof(bound));
    printf("listening on %s\n", bound);
    fflush(stdout);
    int open = 0, seen = 0;
    uint64_t bytes = 0;
    double start = 0;
    haul_event evs[128];
    haul_session *sessions[256];
    int nsessions = 0;
    while (!seen || open > 0) {
        int n = haul_engine_wait(e, evs, 128, -1);
        for (int i = 0; i < n; i++) {
            haul_event *ev = &evs[i];
            if (ev->type == HAUL_EV_SESSION_REQUEST) {
                if (nsessions < 256 && haul_session_accept(ev->session) == 0) {
                    sessions[nsessions++] = ev->session;
                    open++;
                    seen = 1;
                    if (start == 0)
                        start = now_s();
                } else {
                    haul_session_reject(ev->session, 1);
                }
            } else if (ev->type == HAUL_EV_MESSAGE_RECEIVED) {
                haul_message *m;
                while (haul_recv(ev->session, &m) == 0) {
                    bytes += haul_message_len(m);
                    haul_message_free(m);
                }
            } else if (ev->type == HAUL_EV_SESSION_CLOSED) {
                open--;
            }
        }
    }
    double secs = now_s() - start;
    printf("server: received %.1f MiB in %.2f s: %.2f Gbit/s\n", bytes / 1048576.0, secs,
           bytes * 8 / secs / 1e9);
    for (int i = 0; i < nsessions; i++)
        haul_session_free(sessions[i]);
    haul_engine_free(e);
    return 0;
}

static int client(const char *address, unsigned conns, double seconds, uint64_t msg, uint64_t queue,
                  unsigned threads, unsigned nsessions, int json)
{
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.io_threads = threads;
    ec.max_message = msg > ec.max_message ? msg : ec.max_message;
    haul_engine *e;
    int rc = haul_engine_new(&ec, &e);
    if (rc) {
        fprintf(stderr, "haul-perf: %s\n", haul_strerror(rc));
        return 1;
    }
    uint8_t *buf = malloc(msg ? msg : 1);
    for (uint64_t i = 0; i < msg; i++)
        buf[i] = (uint8_t)(i * 131 + 7);
    haul_session *s[256];
    int open = 0;
    for (unsigned i = 0; i < nsessions; i++) {
        haul_session_config sc;
        haul_session_config_init(&sc);
        sc.destination = address;
        sc.principal = pki_dir ? "perf" : "haul-perf";
        haul_tls_config tls = {0};
        char cert[4200], key[4200], ca[4200];
        if (pki_dir) {
            tls_files(&tls, "perf", cert, key, ca);
            sc.tls = &tls;
        }
        sc.connections = conns;
        sc.max_message = msg;
        sc.output_queue = queue;
        if ((rc = haul_session_new(e, &sc, &s[i]))) {
            fprintf(stderr, "haul-perf: session: %s\n", haul_strerror(rc));
            return 1;
        }
    }
    haul_event evs[128];
    while (open < (int)nsessions) {
        int n = haul_engine_wait(e, evs, 128, 10000);
        if (n == 0) {
            fprintf(stderr, "haul-perf: no answer from %s\n", address);
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].type == HAUL_EV_SESSION_OPEN)
                open++;
            else if (evs[i].type == HAUL_EV_SESSION_REFUSED) {
                fprintf(stderr, "haul-perf: refused: %s\n", haul_strerror(evs[i].error));
                return 1;
            }
        }
    }
    double start = now_s(), end = start + seconds;
    uint64_t acked = 0, inflight = 0;
    int sending = 1;
    while (sending || inflight > 0) {
        if (sending && now_s() >= end)
            sending = 0;
        for (unsigned i = 0; sending && i < nsessions; i++)
            while (haul_send_buffer(s[i], buf, msg, NULL, NULL, 0) == 0)
                inflight++;
        int n = haul_engine_wait(e, evs, 128, 1000);
        for (int i = 0; i < n; i++) {
            if (evs[i].type == HAUL_EV_MESSAGE_SENT) {
                acked += msg;
                inflight--;
            } else if (evs[i].type == HAUL_EV_MESSAGE_FAILED ||
                       evs[i].type == HAUL_EV_SESSION_CLOSED) {
                fprintf(stderr, "haul-perf: failed: %s\n", haul_strerror(evs[i].error));
                return 1;
            }
        }
    }
    double secs = now_s() - start;
    double gbps = acked * 8 / secs / 1e9;
    for (unsigned i = 0; i < nsessions; i++)
        haul_session_close(s[i]);
    int closed = 0;
    while (closed < (int)nsessions && haul_engine_wait(e, evs, 1, 10000) == 1)
        if (evs[0].type == HAUL_EV_SESSION_CLOSED)
            closed++;
    if (json)
        printf("{\"connections\":%u,\"sessions\":%u,\"message\":%llu,\"seconds\":%.3f,"
               "\"bytes\":%llu,\"gbps\":%.3f}\n",
               conns, nsessions, (unsigned long long)msg, secs, (unsigned long long)acked, gbps);
    else
        printf("client: %u session(s), %u connection(s), %llu-byte messages: %.1f MiB "
               "acknowledged in %.2f s: %.2f Gbit/s\n",
               nsessions, conns, (unsigned long long)msg, acked / 1048576.0, secs, gbps);
    for (unsigned i = 0; i < nsessions; i++)
        haul_session_free(s[i]);
    haul_engine_free(e);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    int server = 0, json = 0;
    const char *address = NULL;
    unsigned conns = 1, threads = 1, sessions = 1;
    double seconds = 5;
    uint64_t msg = 1 << 20, queue = 64 << 20;
    int opt;
    while ((opt = getopt(argc, argv, "sa:c:P:t:m:q:T:S:jk:")) != -1) {
        switch (opt) {
        case 's':
            server = 1;
            break;
        case 'a':
            address = optarg;
            break;
        case 'c':
            address = optarg;
            break;
        case 'P':
            conns = (unsigned)atoi(optarg);
            break;
        case 't':
            seconds = atof(optarg);
            break;
        case 'm':
            msg = parse_size(optarg);
            break;
        case 'q':
            queue = parse_size(optarg);
            break;
        case 'T':
            threads = (unsigned)atoi(optarg);
            break;
        case 'S':
            sessions = (unsigned)atoi(optarg);
            break;
        case 'j':
            json = 1;
            break;
        case 'k':
            pki_dir = optarg;
            break;
        default:
            fprintf(stderr, "usage: haul-perf -s [-a ADDRESS] | -c ADDRESS [-P conns] [-t s] "
                            "[-m bytes] [-q bytes] [-T threads] [-S sessions] [-j]\n");
            return 2;
        }
    }
    if (sessions < 1 || sessions > 256)
        sessions = 1;
    if (server)
        return serve(address ? address : "127.0.0.1:5301", threads);
    if (address == NULL) {
        fprintf(stderr, "haul-perf: -c ADDRESS or -s\n");
        return 2;
    }
    return client(address, conns, seconds, msg, queue, threads, sessions, json);
}
