/*
 * bench.c - haul bench haul://HOST:PORT: memory-to-memory throughput
 * through a pipe of -P connections for -t seconds, like iperf3, so that an
 * administrator can size the connection count for a link
 * (docs/store-protocol.md, BENCH).
 *
 * One static buffer of 1 MiB is lent to the engine over and over
 * (haul_send_buffer without a release: nothing is copied and nothing
 * written to it). Throughput counts acknowledged bytes only: a message
 * counts once the server's engine has all of it, and only when that is
 * known within the time.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"

/* How long the messages still on their way at the end may take to be
 * acknowledged before the session is aborted. */
#define BENCH_DRAIN_S 2.0

typedef struct bench {
    uint64_t message;
    uint64_t acked_bytes;
} bench;

static void on_sent(void *arg, const haul_event *ev)
{
    (void)ev;
    bench *b = arg;
    b->acked_bytes += b->message;
}

static int on_record(void *arg, const hsp_record *rec)
{
    (void)arg;
    (void)rec;
    return 0; /* the server sends nothing; whatever it says is ignored */
}

static double gbits(uint64_t bytes, double secs)
{
    return secs > 0 ? (double)bytes * 8 / secs / 1e9 : 0;
}

int cli_bench(const cli_options *opt, int argc, char **argv)
{
    (void)argc;
    cli_url url;
    if (cli_url_parse(argv[0], &url) != 0)
        return CLI_EXIT_USAGE;
    if (url.dataset[0]) {
        cli_warn("%s: bench takes no dataset (haul://HOST:PORT)", argv[0]);
        return CLI_EXIT_USAGE;
    }
    uint8_t *buf = malloc(opt->message);
    if (buf == NULL)
        return CLI_EXIT_TRANSFER;
    memset(buf, 0xa5, opt->message);
    bench b = {.message = opt->message};
    cli_client c = {.on_record = on_record, .on_sent = on_sent, .arg = &b};
    int status = cli_open(&c, opt, &url, HSP_BENCH);
    double start = cli_now(), stop = start + opt->seconds;
    uint64_t queued = 0;
    int automatic = opt->connections == HAUL_CONNECTIONS_AUTO;
    if (status == CLI_EXIT_OK && !opt->quiet && !opt->json && automatic)
        printf("bench %s: automatic connections, %.0f s, 1 MiB messages\n", url.destination,
               opt->seconds);
    else if (status == CLI_EXIT_OK && !opt->quiet && !opt->json)
        printf("bench %s: %u connections, %.0f s, 1 MiB messages\n", url.destination,
               opt->connections, opt->seconds);
    double next_report = start + 1;
    uint64_t reported_bytes = 0;
    while (status == CLI_EXIT_OK && !c.failed && !c.closed) {
        double now = cli_now();
        if (now >= stop)
            break;
        int full = 0;
        while (!full && !c.failed) {
            int rc = cli_send_buffer(&c, buf, opt->message, NULL, NULL, queued);
            if (rc == 0)
                queued++;
            else
                full = 1;
        }
        double wait = stop - now < next_report - now ? stop - now : next_report - now;
        cli_pump(&c, wait > 0 ? (int)(wait * 1000) + 1 : 0);
        now = cli_now();
        if (now >= next_report && now < stop) {
            if (!opt->quiet && !opt->json) {
                double t = next_report - start;
                printf("[%5.1f-%5.1f s] %10.1f MiB %8.2f Gbit/s", t - 1, t,
                       (double)(b.acked_bytes - reported_bytes) / (1 << 20),
                       gbits(b.acked_bytes - reported_bytes, 1));
                if (automatic)
                    printf("  %u connections", cli_connections(&c, NULL));
                printf("\n");
                fflush(stdout);
            }
            reported_bytes = b.acked_bytes;
            next_report += 1;
        }
    }
    /* The count -P auto chose: the one it used as the sending ended. */
    unsigned peak, conns = cli_connections(&c, &peak);
    /* As iperf3 counts what arrived within the time, this counts what was
     * acknowledged within it; what is still on its way is dropped with
     * the session (a queue sized for a long link may hold minutes of a
     * slow one). */
    uint64_t acked = b.acked_bytes, messages = c.messages_acked;
    double secs = cli_now() - start;
    if (status == CLI_EXIT_OK)
        status = c.failed;
    if (status == CLI_EXIT_OK && c.closed) {
        cli_warn("the server ended the session: %s", haul_strerror(c.close_error));
        status = CLI_EXIT_TRANSFER;
    }
    if (status == CLI_EXIT_OK) {
        double mibs = secs > 0 ? (double)acked / (1 << 20) / secs : 0;
        haul_engine_stats st;
        haul_engine_stats_get(c.engine, &st);
        if (opt->json)
            printf("{\"connections\":%u,\"connections_peak\":%u,\"connections_auto\":%s,"
                   "\"seconds\":%.3f,\"messages\":%llu,\"bytes\":%llu,"
                   "\"gbit_per_s\":%.3f,\"mib_per_s\":%.1f,\"bytes_written\":%llu,"
                   "\"chunks_hedged\":%llu,\"chunks_resent\":%llu}\n",
                   conns, peak, automatic ? "true" : "false", secs, (unsigned long long)messages,
                   (unsigned long long)acked, gbits(acked, secs), mibs,
                   (unsigned long long)st.bytes_sent, (unsigned long long)st.chunks_hedged,
                   (unsigned long long)st.chunks_resent);
        else
            printf("%s%.2f Gbit/s (%.1f MiB/s): %llu MiB acknowledged in %.2f s over %u "
                   "connections%s\n",
                   opt->quiet ? "" : "total: ", gbits(acked, secs), mibs,
                   (unsigned long long)(acked >> 20), secs, conns,
                   automatic ? " (chosen automatically)" : "");
    }
    /* What is still on its way goes on briefly, so that the server ends
     * the request in order; a slow link's backlog is dropped instead
     * (the server ends the request once the connections are gone). */
    if (status == CLI_EXIT_OK && haul_session_close(c.session) == 0) {
        double deadline = cli_now() + BENCH_DRAIN_S;
        while (!c.closed && !c.failed && cli_now() < deadline)
            cli_pump(&c, 100);
    }
    cli_free(&c);
    free(buf);
    return status;
}
