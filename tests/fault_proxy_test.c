/*
 * fault_proxy_test.c - the fault-injecting proxy of the tests does what
 * fault_proxy.h says, on plain sockets: it forwards every byte both ways
 * in order, cuts keep the bytes, a partition passes nothing until it
 * ends and loses nothing, a reset of every connection reaches the client
 * as ECONNRESET, a FIN reaches its receiver as the end of the stream,
 * the schedule is a function of the seed, and the program fault-proxy
 * obeys its signals.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault_proxy.h"
#include "harness.h"
#include "raw_peer.h"
#include "util.h"

/* Whether fd becomes readable within ms. */
static int readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, ms) == 1;
}

/* Reads exactly len bytes, failing the test after 10 s of silence. */
static void read_all(int fd, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        CHECK(readable(fd, 10000));
        ssize_t n = read(fd, buf + got, len - got);
        CHECK_GT(n, 0);
        got += (size_t)n;
    }
}

/* Sends len bytes from a and reads them at b, while b's sends are read
 * at a: both directions at once, through the proxy. */
static void exchange(int a, int b, size_t len, uint64_t pattern)
{
    uint8_t *out = malloc(len), *back = malloc(len), *in = malloc(len);
    CHECK(out != NULL && back != NULL && in != NULL);
    fill_pattern(out, len, pattern);
    fill_pattern(back, len, pattern + 1);
    size_t sent_a = 0, sent_b = 0, got_a = 0, got_b = 0;
    uint8_t *in_a = malloc(len);
    CHECK(in_a != NULL);
    while (got_a < len || got_b < len) {
        struct pollfd p[2] = {{.fd = a, .events = POLLIN | (sent_a < len ? POLLOUT : 0)},
                              {.fd = b, .events = POLLIN | (sent_b < len ? POLLOUT : 0)}};
        CHECK_EQ(poll(p, 2, 10000) > 0, 1);
        if (p[0].revents & POLLOUT) {
            ssize_t n = send(a, out + sent_a, len - sent_a, MSG_DONTWAIT);
            CHECK_GT(n, 0);
            sent_a += (size_t)n;
        }
        if (p[1].revents & POLLOUT) {
            ssize_t n = send(b, back + sent_b, len - sent_b, MSG_DONTWAIT);
            CHECK_GT(n, 0);
            sent_b += (size_t)n;
        }
        if (p[1].revents & POLLIN) {
            ssize_t n = read(b, in + got_b, len - got_b);
            CHECK_GT(n, 0);
            got_b += (size_t)n;
        }
        if (p[0].revents & POLLIN) {
            ssize_t n = read(a, in_a + got_a, len - got_a);
            CHECK_GT(n, 0);
            got_a += (size_t)n;
        }
    }
    CHECK(memcmp(out, in, len) == 0);
    CHECK(memcmp(back, in_a, len) == 0);
    free(out);
    free(back);
    free(in);
    free(in_a);
}

typedef struct pair {
    int listener, client, server;
    char target[64];
    fault_proxy *proxy;
} pair;

/* A target, a proxy in front of it and one connection through it. */
static void pair_open(pair *p, fault_proxy_config *c)
{
    p->listener = raw_listen(p->target, sizeof(p->target));
    c->target = p->target;
    CHECK_OK(fault_proxy_start(c, &p->proxy));
    p->client = raw_connect(fault_proxy_address(p->proxy));
    CHECK(readable(p->listener, 10000));
    p->server = accept(p->listener, NULL, NULL);
    CHECK(p->server >= 0);
}

static void pair_close(pair *p)
{
    close(p->client);
    close(p->server);
    close(p->listener);
    fault_proxy_stop(p->proxy);
}

TEST(forwards_both_ways)
{
    fault_proxy_config c;
    fault_proxy_config_init(&c);
    pair p;
    pair_open(&p, &c);
    exchange(p.client, p.server, 3u << 20, 7);
    fault_proxy_stats st;
    fault_proxy_stats_get(p.proxy, &st);
    CHECK_EQ(st.accepted, 1);
    CHECK_EQ(st.bytes[0], 3u << 20);
    CHECK_EQ(st.bytes[1], 3u << 20);
    pair_close(&p);
}

/* Cuts and delays change when bytes arrive, never which. */
TEST(cuts_and_delays_keep_every_byte)
{
    fault_proxy_config c;
    fault_proxy_config_init(&c);
    c.faults = 1;
    c.kinds = (1u << FAULT_CUT) | (1u << FAULT_DELAY);
    c.faults_per_conn = 8;
    c.span_bytes = 256 * 1024;
    c.delay_max_ms = 20;
    for (uint64_t seed = 1; seed <= 6; seed++) {
        c.seed = seed;
        pair p;
        pair_open(&p, &c);
        exchange(p.client, p.server, 512 * 1024, seed);
        fault_proxy_stats st;
        fault_proxy_stats_get(p.proxy, &st);
        CHECK_EQ(st.applied[FAULT_RESET] + st.applied[FAULT_FIN] + st.applied[FAULT_BLACKHOLE], 0);
        pair_close(&p);
    }
}

TEST(partition_passes_nothing_until_it_ends)
{
    fault_proxy_config c;
    fault_proxy_config_init(&c);
    pair p;
    pair_open(&p, &c);
    fault_proxy_partition(p.proxy, 1);
    CHECK_EQ(send(p.client, "up", 2, 0), 2);
    CHECK_EQ(send(p.server, "down", 4, 0), 4);
    /* Silence is what is being checked, so it takes a wait. */
    CHECK(!readable(p.server, 300));
    CHECK(!readable(p.client, 1));
    /* A new connection is not accepted, so not dialed either. */
    int late = raw_connect(fault_proxy_address(p.proxy));
    CHECK(!readable(p.listener, 100));
    fault_proxy_partition(p.proxy, 0);
    uint8_t buf[4];
    read_all(p.server, buf, 2);
    CHECK(memcmp(buf, "up", 2) == 0);
    read_all(p.client, buf, 4);
    CHECK(memcmp(buf, "down", 4) == 0);
    CHECK(readable(p.listener, 10000));
    int late_server = accept(p.listener, NULL, NULL);
    CHECK(late_server >= 0);
    exchange(late, late_server, 1000, 3);
    close(late);
    close(late_server);
    pair_close(&p);
}

TEST(reset_all_reaches_both_ends_as_rst)
{
    fault_proxy_config c;
    fault_proxy_config_init(&c);
    pair p;
    pair_open(&p, &c);
    exchange(p.client, p.server, 1000, 1);
    fault_proxy_reset_all(p.proxy);
    CHECK(readable(p.client, 10000));
    char b;
    CHECK_EQ(read(p.client, &b, 1), -1);
    CHECK_EQ(errno, ECONNRESET);
    CHECK(readable(p.server, 10000));
    CHECK_EQ(read(p.server, &b, 1), -1);
    CHECK_EQ(errno, ECONNRESET);
    pair_close(&p);
}

/* A planned FIN at a byte offset: the receiver gets exactly that many
 * bytes, then the end of the stream. */
TEST(fin_at_a_byte_offset)
{
    fault_proxy_config c;
    fault_proxy_config_init(&c);
    c.faults = 1;
    c.kinds = 1u << FAULT_FIN;
    c.faults_per_conn = 1;
    c.span_bytes = 4096;
    /* The first seed whose plan for connection 0 has a FIN in the upward
     * direction at a byte offset. */
    for (c.seed = 1;; c.seed++) {
        CHECK_LT(c.seed, 1000);
        pair p;
        pair_open(&p, &c);
        char report[4096];
        FILE *f = fmemopen(report, sizeof(report), "w");
        fault_proxy_report(p.proxy, f, "");
        fclose(f);
        const char *at = strstr(report, "fin up at byte ");
        if (at == NULL) {
            pair_close(&p);
            continue;
        }
        size_t offset = strtoull(at + strlen("fin up at byte "), NULL, 10);
        uint8_t buf[8192];
        fill_pattern(buf, sizeof(buf), 5);
        CHECK_EQ(send(p.client, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
        uint8_t in[8192];
        read_all(p.server, in, offset);
        CHECK(memcmp(buf, in, offset) == 0);
        CHECK(readable(p.server, 10000));
        CHECK_EQ(read(p.server, in, sizeof(in)), 0);
        pair_close(&p);
        break;
    }
}

/* A partition of the schedule holds the bytes back until it ends, and
 * loses none. */
TEST(scheduled_partition_holds_bytes_until_it_ends)
{
    fault_proxy_config c;
    fault_proxy_config_init(&c);
    c.faults = 1;
    c.kinds = 1u << FAULT_PARTITION;
    c.max_partitions = 1;
    c.partition_max_ms = 300;
    c.span_ms = 1; /* at once */
    c.seed = 3;
    int64_t started = now_ms();
    pair p;
    pair_open(&p, &c);
    char report[2048];
    FILE *f = fmemopen(report, sizeof(report), "w");
    fault_proxy_report(p.proxy, f, "");
    fclose(f);
    const char *at = strstr(report, "partition ");
    CHECK(at != NULL);
    long ms = strtol(at + strlen("partition "), NULL, 10);
    CHECK_GE(ms, 50); /* long enough to tell */
    CHECK_EQ(send(p.client, "late", 4, 0), 4);
    uint8_t buf[4];
    read_all(p.server, buf, 4);
    CHECK(memcmp(buf, "late", 4) == 0);
    CHECK_GE(now_ms() - started, ms);
    fault_proxy_stats st;
    fault_proxy_stats_get(p.proxy, &st);
    CHECK_EQ(st.applied[FAULT_PARTITION], 1);
    pair_close(&p);
}

/* The report of two proxies of one seed shows one schedule. */
TEST(schedule_is_a_function_of_the_seed)
{
    char reports[2][8192];
    for (int k = 0; k < 2; k++) {
        fault_proxy_config c;
        fault_proxy_config_init(&c);
        c.faults = 1;
        c.seed = 12345;
        c.span_ms = 60000; /* no time trigger fires during the test */
        c.span_bytes = 1u << 30;
        c.max_blips = 0;
        pair p;
        pair_open(&p, &c);
        int more[3];
        for (int i = 0; i < 3; i++)
            more[i] = raw_connect(fault_proxy_address(p.proxy));
        for (int waited = 0; waited < 10000; waited += 10) {
            fault_proxy_stats st;
            fault_proxy_stats_get(p.proxy, &st);
            if (st.accepted == 4)
                break;
            CHECK(!readable(p.server, 10));
        }
        FILE *f = fmemopen(reports[k], sizeof(reports[k]), "w");
        fault_proxy_report(p.proxy, f, "");
        fclose(f);
        for (int i = 0; i < 3; i++)
            close(more[i]);
        pair_close(&p);
    }
    CHECK(strstr(reports[0], "conn 3:") != NULL);
    CHECK_STR_EQ(reports[0], reports[1]);
}

/* ---- the program fault-proxy ------------------------------------------------ */

/* Starts build/tests/fault-proxy (beside this test program) in front of
 * target; returns its pid, its address in address. */
static pid_t program_start(const char *target, char *address, size_t size)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 32);
    CHECK_GT(n, 0);
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    CHECK(slash != NULL);
    strcpy(slash + 1, "fault-proxy");
    int out[2];
    CHECK_OK(pipe(out));
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        execl(self, "fault-proxy", "--listen", "127.0.0.1:0", "--target", target, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    char line[256];
    size_t have = 0;
    while (have < sizeof(line) - 1 && (have == 0 || line[have - 1] != '\n')) {
        CHECK(readable(out[0], 10000));
        ssize_t got = read(out[0], line + have, sizeof(line) - 1 - have);
        CHECK_GT(got, 0);
        have += (size_t)got;
    }
    line[have] = '\0';
    close(out[0]);
    CHECK(strncmp(line, "listening ", 10) == 0);
    snprintf(address, size, "%.*s", (int)(strcspn(line + 10, "\n")), line + 10);
    return pid;
}

/* The interface end-to-end tests rely on: the first line, forwarding,
 * SIGUSR1 / SIGUSR2 for a partition, SIGHUP for resets, SIGTERM to end. */
TEST(program_obeys_its_signals)
{
    char target[64], address[128];
    int listener = raw_listen(target, sizeof(target));
    pid_t pid = program_start(target, address, sizeof(address));
    int client = raw_connect(address);
    CHECK(readable(listener, 10000));
    int server = accept(listener, NULL, NULL);
    CHECK(server >= 0);
    exchange(client, server, 100000, 9);

    CHECK_OK(kill(pid, SIGUSR1));
    /* A partition stops the bytes; whether the signal has been taken yet
     * is not known, so the bytes are sent until one stays behind. */
    int held = 0;
    for (int i = 0; i < 100 && !held; i++) {
        CHECK_EQ(send(client, "p", 1, 0), 1);
        held = !readable(server, 100);
        if (!held) {
            char b;
            CHECK_EQ(read(server, &b, 1), 1);
        }
    }
    CHECK(held);
    CHECK_OK(kill(pid, SIGUSR2));
    char b;
    read_all(server, (uint8_t *)&b, 1);
    CHECK_EQ(b, 'p');

    CHECK_OK(kill(pid, SIGHUP));
    CHECK(readable(client, 10000));
    CHECK_EQ(read(client, &b, 1), -1);
    CHECK_EQ(errno, ECONNRESET);

    CHECK_OK(kill(pid, SIGTERM));
    int status;
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ(WEXITSTATUS(status), 0);
    close(client);
    close(server);
    close(listener);
}
