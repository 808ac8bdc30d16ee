/*
 * badinput_test.c - bad input on raw sockets to a listening engine.
 *
 * Each test writes one kind of bad input to the server's listener from a
 * plain TCP socket: garbage, a truncated header, a frame of an unknown
 * version, a frame before the HELLO, a CHUNK whose sizes break the limits
 * after a valid HELLO, a SYNC whose principal length lies. Headers are
 * built byte by byte by raw_peer.h, as src/net/frame.h lays them out (40
 * bytes, little endian), so that the test does not share the codec it
 * tests.
 *
 * What must hold each time: the server closes that connection within a
 * bounded time, telling why with an ERROR frame where it can; it counts a
 * protocol error; it frees the connection; and it goes on serving the
 * legitimate sessions: one opened before the bad input and one opened
 * after it, from another engine, both complete an echo round trip.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/engine.h"
#include "harness.h"
#include "raw_peer.h"
#include "util.h"

#define MIB (1u << 20)

/* How long the server may take to close a connection it refused. */
#define CLOSE_MS 5000
/* The longest payload the server's frames may carry here. */
#define PAYLOAD_MAX 65536

/* ---- frames by hand ------------------------------------------------------ */

/* A HELLO of connection 0 of the pipe `pipe_id`, with 256 KiB chunks. */
static raw_header hello(uint64_t pipe_id)
{
    return raw_hello(pipe_id, 0, 262144);
}

/* ---- a raw socket ---------------------------------------------------------- */

/*
 * Waits until the server has closed the connection: recv() gives EOF or
 * ECONNRESET. What came before is kept in got[] (up to max bytes) and its
 * length in *gotlen. Returns 1 when closed within ms.
 */
static int wait_closed(int fd, uint8_t *got, size_t max, size_t *gotlen, int ms)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    size_t have = 0;
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left =
            ms - ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
        if (left <= 0)
            break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        uint8_t buf[4096];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            if (gotlen)
                *gotlen = have;
            return 1;
        }
        CHECK_GT(n, 0);
        if (got && have < max) {
            size_t take = (size_t)n < max - have ? (size_t)n : max - have;
            memcpy(got + have, buf, take);
        }
        have += (size_t)n;
    }
    if (gotlen)
        *gotlen = have;
    return 0;
}

/* Checks that got[] starts with an ERROR frame carrying `code`. */
static void check_error_frame(const uint8_t *got, size_t len, int code)
{
    CHECK_GE(len, RAW_HDR);
    raw_header h = raw_decode(got);
    CHECK_EQ(h.version, HAUL_PROTOCOL_VERSION);
    CHECK_EQ(h.type, T_ERROR);
    CHECK_EQ(h.aux, code);
    CHECK_GE(len, RAW_HDR + (size_t)h.len);
    char text[160];
    size_t n = h.len < sizeof(text) - 1 ? h.len : sizeof(text) - 1;
    memcpy(text, got + RAW_HDR, n);
    text[n] = '\0';
    harness_log("the server said: %s (%s)", text, haul_errname((int)h.aux));
}

/* ---- the legitimate side ------------------------------------------------------ */

/*
 * The server's application: it accepts every session and sends every
 * message it receives back on the same session.
 */
#define ECHO_MAX 16
typedef struct echo {
    haul_engine *engine;
    pthread_t thread;
    pthread_mutex_t mu;
    haul_session *sessions[ECHO_MAX];
    int nsessions;
    int requests;
    int stop;
} echo;

static void *echo_main(void *arg)
{
    echo *x = arg;
    for (;;) {
        pthread_mutex_lock(&x->mu);
        int stop = x->stop;
        pthread_mutex_unlock(&x->mu);
        if (stop)
            break;
        haul_event ev;
        if (haul_engine_wait(x->engine, &ev, 1, 50) != 1)
            continue;
        if (ev.type == HAUL_EV_SESSION_REQUEST) {
            pthread_mutex_lock(&x->mu);
            x->requests++;
            CHECK_LT(x->nsessions, ECHO_MAX);
            x->sessions[x->nsessions++] = ev.session;
            pthread_mutex_unlock(&x->mu);
            CHECK_OK(haul_session_accept(ev.session));
        } else if (ev.type == HAUL_EV_MESSAGE_RECEIVED) {
            haul_message *m;
            while (haul_recv(ev.session, &m) == 0) {
                CHECK_OK(haul_send(ev.session, haul_message_data(m), haul_message_len(m),
                                   haul_message_seq(m)));
                haul_message_free(m);
            }
        }
    }
    return NULL;
}

/* Everything a test needs: the server with its echo application, and a
 * client engine with a session opened before any bad input. */
typedef struct fixture {
    haul_engine *server;
    echo echo;
    char address[128];
    haul_engine *client;
    haul_session *before;
} fixture;

static haul_session *open_session(haul_engine *client, const char *address)
{
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "BADINPUT_TEST";
    sc.max_message = MIB;
    haul_session *s = NULL;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(next_event(client, &ev, 5000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_OPEN);
    CHECK(ev.session == s);
    return s;
}

/* Sends a message and waits for it to come back, whole and unchanged. */
static void round_trip(haul_engine *client, haul_session *s, uint64_t seed)
{
    size_t len = 100000 + (size_t)(seed % 1000);
    uint8_t *buf = malloc(len);
    CHECK(buf != NULL);
    fill_pattern(buf, len, seed);
    CHECK_OK(haul_send(s, buf, len, seed));
    int sent = 0, received = 0;
    while (!sent || !received) {
        haul_event ev;
        CHECK(next_event(client, &ev, 5000));
        CHECK(ev.session == s);
        if (ev.type == HAUL_EV_MESSAGE_SENT) {
            CHECK_EQ(ev.tag, seed);
            sent = 1;
        } else if (ev.type == HAUL_EV_MESSAGE_RECEIVED) {
            haul_message *m;
            CHECK_OK(haul_recv(s, &m));
            CHECK_EQ(haul_message_len(m), len);
            CHECK(memcmp(haul_message_data(m), buf, len) == 0);
            haul_message_free(m);
            received = 1;
        } else {
            CHECK_EQ(ev.type, HAUL_EV_WINDOW_OPENED);
        }
    }
    free(buf);
}

static void fixture_start_with(fixture *f, unsigned handshake_ms)
{
    harness_strerror = haul_strerror;
    memset(f, 0, sizeof(*f));
    haul_engine_config c;
    haul_engine_config_init(&c);
    c.log_level = getenv("HAUL_TEST_LOG") ? atoi(getenv("HAUL_TEST_LOG")) : HAUL_LOG_ERROR;
    /* A peer that stalls in the handshake is dropped after this long. */
    c.handshake_timeout_ms = handshake_ms;
    CHECK_OK(haul_engine_new(&c, &f->server));
    CHECK_OK(haul_listen(f->server, "127.0.0.1:0", NULL));
    CHECK_OK(haul_listen_address(f->server, f->address, sizeof(f->address)));
    f->echo.engine = f->server;
    pthread_mutex_init(&f->echo.mu, NULL);
    CHECK_OK(pthread_create(&f->echo.thread, NULL, echo_main, &f->echo));
    f->client = engine_quiet(1, 0);
    CHECK(f->client != NULL);
    f->before = open_session(f->client, f->address);
    round_trip(f->client, f->before, 1);
}

static void fixture_start(fixture *f)
{
    fixture_start_with(f, 1000);
}

/* The server still serves: the session from before the bad input, and a
 * new one from an engine of its own (a new pipe, new connections). */
static void fixture_check_serving(fixture *f)
{
    round_trip(f->client, f->before, 2);
    haul_engine *other = engine_quiet(1, 0);
    CHECK(other != NULL);
    haul_session *after = open_session(other, f->address);
    round_trip(other, after, 3);
    haul_session_free(after);
    haul_engine_free(other);
}

static void fixture_stop(fixture *f)
{
    haul_session_free(f->before);
    haul_engine_free(f->client);
    pthread_mutex_lock(&f->echo.mu);
    f->echo.stop = 1;
    pthread_mutex_unlock(&f->echo.mu);
    CHECK_OK(pthread_join(f->echo.thread, NULL));
    for (int i = 0; i < f->echo.nsessions; i++)
        haul_session_free(f->echo.sessions[i]);
    haul_engine_free(f->server);
    pthread_mutex_destroy(&f->echo.mu);
}

static uint64_t protocol_errors(haul_engine *e)
{
    haul_engine_stats st;
    haul_engine_stats_get(e, &st);
    return st.protocol_errors;
}

/* Connections the engine holds, of every pipe and of none. */
static unsigned connections(haul_engine *e)
{
    pthread_mutex_lock(&e->mu);
    unsigned n = e->nconns;
    pthread_mutex_unlock(&e->mu);
    return n;
}

/* Sends HELLO for a pipe of its own and checks the HELLO_ACK. */
static void handshake(int fd, uint64_t pipe_id)
{
    raw_header h = hello(pipe_id);
    raw_send_header(fd, &h);
    raw_send_all(fd, "HAUL", 4);
    raw_header ack;
    uint8_t magic[4];
    CHECK(raw_read_frame(fd, &ack, magic, sizeof(magic), PAYLOAD_MAX, CLOSE_MS));
    CHECK_EQ(ack.version, HAUL_PROTOCOL_VERSION);
    CHECK_EQ(ack.type, T_HELLO_ACK);
    CHECK_EQ(ack.len, 4);
    CHECK_EQ(ack.seq, pipe_id);
    CHECK(memcmp(magic, "HAUL", 4) == 0);
}

/*
 * The common end of a test that expects the server to refuse the
 * connection: it closes it, after an ERROR frame with `code` when
 * error_expected, counts one protocol error more than `errors_before`, and
 * frees it.
 */
static void expect_refused(fixture *f, int fd, uint64_t errors_before, unsigned conns_before,
                           int error_expected, int code)
{
    uint8_t got[512];
    size_t len = 0;
    CHECK(wait_closed(fd, got, sizeof(got), &len, CLOSE_MS));
    close(fd);
    if (error_expected)
        check_error_frame(got, len, code);
    CHECK_EQ(protocol_errors(f->server), errors_before + 1);
    /* The engine frees the connection before its socket is closed, so it
     * is gone by the time the EOF arrived. */
    CHECK_EQ(connections(f->server), conns_before);
}

/* ---- the tests ---------------------------------------------------------------- */

TEST_TIMEOUT(random_garbage, 60)
{
    fixture f;
    fixture_start(&f);
    uint64_t errors = protocol_errors(f.server);
    unsigned conns = connections(f.server);

    uint8_t garbage[4096];
    fill_pattern(garbage, sizeof(garbage), 0xBAD);
    /* With this seed, byte 0 is not the version: the header is refused at
     * its first field. */
    CHECK_NE(garbage[0], HAUL_PROTOCOL_VERSION);
    int fd = raw_connect(f.address);
    raw_send_all(fd, garbage, sizeof(garbage));
    /* The server closes with most of the garbage unread, so its kernel may
     * answer with a reset that overtakes the ERROR frame: not checked. */
    expect_refused(&f, fd, errors, conns, 0, 0);

    fixture_check_serving(&f);
    fixture_stop(&f);
}

/* The handshake deadline is far (10 s), so that only the server's reading
 * of the EOF can close the connection in time. */
TEST_TIMEOUT(truncated_header_then_eof, 60)
{
    fixture f;
    fixture_start_with(&f, 10000);
    unsigned conns = connections(f.server);

    uint8_t b[RAW_HDR];
    raw_header h = hello(0xBAD0002);
    raw_encode(&h, b);
    int fd = raw_connect(f.address);
    raw_send_all(fd, b, 20);
    /* Half of a header, then the end of the stream: the server must not
     * wait for the rest. */
    CHECK_OK(shutdown(fd, SHUT_WR));
    size_t len = 0;
    CHECK(wait_closed(fd, NULL, 0, &len, CLOSE_MS));
    CHECK_EQ(len, 0);
    close(fd);
    CHECK_EQ(connections(f.server), conns);
    /* An EOF inside a frame is not counted as a protocol error today (the
     * engine counts only frames it refused); see the report. */
    harness_log("protocol errors after a truncated header: %llu",
                (unsigned long long)protocol_errors(f.server));

    fixture_check_serving(&f);
    fixture_stop(&f);
}

/*
 * As above, but the half header and the FIN are both waiting when the
 * server first looks at the connection: its mutex is held (from here)
 * until the kernel acknowledged the FIN, so that the first readiness event
 * already reports the end of the stream. The server must still see it,
 * long before its handshake deadline (10 s here) would close the
 * connection. A reader that stops at a short read, taking it for a
 * drained socket, never looks at the FIN again: no new edge comes.
 */
TEST_TIMEOUT(truncated_header_with_eof_pending, 60)
{
    fixture f;
    fixture_start_with(&f, 10000);
    unsigned conns = connections(f.server);

    uint8_t b[RAW_HDR];
    raw_header h = hello(0xBAD0005);
    raw_encode(&h, b);
    pthread_mutex_lock(&f.server->mu);
    int fd = raw_connect(f.address);
    raw_send_all(fd, b, 20);
    CHECK_OK(shutdown(fd, SHUT_WR));
    /* FIN_WAIT2: the server's kernel has the FIN. */
    int fin_acked = 0;
    for (int i = 0; i < 5000 && !fin_acked; i++) {
        struct tcp_info ti;
        socklen_t tlen = sizeof(ti);
        CHECK_OK(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen));
        fin_acked = ti.tcpi_state == TCP_FIN_WAIT2;
        if (!fin_acked) {
            struct pollfd none = {.fd = -1};
            poll(&none, 1, 1);
        }
    }
    pthread_mutex_unlock(&f.server->mu);
    CHECK(fin_acked);
    size_t len = 0;
    CHECK(wait_closed(fd, NULL, 0, &len, CLOSE_MS));
    CHECK_EQ(len, 0);
    close(fd);
    CHECK_EQ(connections(f.server), conns);

    fixture_check_serving(&f);
    fixture_stop(&f);
}

TEST_TIMEOUT(truncated_header_then_stall, 60)
{
    fixture f;
    fixture_start(&f);
    unsigned conns = connections(f.server);

    uint8_t b[RAW_HDR];
    raw_header h = hello(0xBAD0003);
    raw_encode(&h, b);
    int fd = raw_connect(f.address);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    raw_send_all(fd, b, 20);
    /* Half of a header, and then nothing: the handshake deadline (1 s
     * here) ends the connection. */
    CHECK(wait_closed(fd, NULL, 0, NULL, CLOSE_MS));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(fd);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    harness_log("closed after %ld ms", ms);
    CHECK_GE(ms, 900);
    CHECK_EQ(connections(f.server), conns);

    fixture_check_serving(&f);
    fixture_stop(&f);
}

TEST_TIMEOUT(unknown_version, 60)
{
    fixture f;
    fixture_start(&f);
    uint64_t errors = protocol_errors(f.server);
    unsigned conns = connections(f.server);

    raw_header h = hello(0xBAD0004);
    h.version = 99;
    int fd = raw_connect(f.address);
    raw_send_header(fd, &h);
    raw_send_all(fd, "HAUL", 4);
    expect_refused(&f, fd, errors, conns, 1, HAUL_EVERSION);

    fixture_check_serving(&f);
    fixture_stop(&f);
}

TEST_TIMEOUT(frame_before_hello, 60)
{
    fixture f;
    fixture_start(&f);
    uint64_t errors = protocol_errors(f.server);
    unsigned conns = connections(f.server);

    /* A well formed ACK of session 1, as the first frame. */
    raw_header h = {
        .version = HAUL_PROTOCOL_VERSION, .type = T_ACK, .session = 1, .seq = 0, .aux = 4};
    int fd = raw_connect(f.address);
    raw_send_header(fd, &h);
    expect_refused(&f, fd, errors, conns, 1, HAUL_EPROTO);

    fixture_check_serving(&f);
    fixture_stop(&f);
}

/* After a valid HELLO, a CHUNK whose length exceeds the largest chunk
 * (16 MiB) inside a message the limits allow. */
TEST_TIMEOUT(chunk_longer_than_allowed, 60)
{
    fixture f;
    fixture_start(&f);
    uint64_t errors = protocol_errors(f.server);
    unsigned conns = connections(f.server);

    int fd = raw_connect(f.address);
    handshake(fd, 0xBAD0006);
    raw_header h = {.version = HAUL_PROTOCOL_VERSION,
                    .type = T_CHUNK,
                    .session = 1,
                    .seq = 0,
                    .len = (16u << 20) + 1,
                    .offset = 0,
                    .total = 32u << 20};
    raw_send_header(fd, &h);
    /* Some of the claimed payload follows; the server must not wait for
     * (or allocate) the rest. */
    uint8_t payload[4096];
    fill_pattern(payload, sizeof(payload), 6);
    raw_send_all(fd, payload, sizeof(payload));
    expect_refused(&f, fd, errors, conns, 0, 0);

    fixture_check_serving(&f);
    fixture_stop(&f);
}

/* After a valid HELLO, a CHUNK of a message larger than the wire format
 * allows (4 GiB - 1). Nothing follows the header, so the ERROR frame is not
 * overtaken by a reset. */
TEST_TIMEOUT(chunk_of_message_over_wire_limit, 60)
{
    fixture f;
    fixture_start(&f);
    uint64_t errors = protocol_errors(f.server);
    unsigned conns = connections(f.server);

    int fd = raw_connect(f.address);
    handshake(fd, 0xBAD0007);
    raw_header h = {.version = HAUL_PROTOCOL_VERSION,
                    .type = T_CHUNK,
                    .session = 1,
                    .seq = 0,
                    .len = 262144,
                    .offset = 0,
                    .total = 1ull << 32};
    raw_send_header(fd, &h);
    expect_refused(&f, fd, errors, conns, 1, HAUL_EPROTO);

    fixture_check_serving(&f);
    fixture_stop(&f);
}

/*
 * After a valid HELLO and a SYNC that announces messages of at most 1 MiB
 * (accepted by the application), a CHUNK of a 2 MiB message. Within the
 * wire format's bounds, it breaks only what that session agreed: the
 * server aborts the session (an ABORT frame with HAUL_EPROTO, and
 * SESSION_CLOSED for its application) and keeps the connection, which
 * other sessions of the pipe share; the chunk's payload is skipped, and a
 * bad frame after it is still read, refused and counted.
 */
TEST_TIMEOUT(chunk_over_announced_max_aborts_session, 60)
{
    fixture f;
    fixture_start(&f);
    uint64_t errors = protocol_errors(f.server);
    unsigned conns = connections(f.server);

    int fd = raw_connect(f.address);
    handshake(fd, 0xBAD0009);
    const char principal[] = "RAW";
    uint8_t sync[2 + sizeof(principal) - 1];
    sync[0] = sizeof(principal) - 1;
    sync[1] = 0;
    memcpy(sync + 2, principal, sizeof(principal) - 1);
    raw_header h = {.version = HAUL_PROTOCOL_VERSION,
                    .type = T_SYNC,
                    .session = 9,
                    .len = sizeof(sync),
                    .offset = MIB,
                    .total = 64u * MIB};
    raw_send_header(fd, &h);
    raw_send_all(fd, sync, sizeof(sync));
    raw_header ack;
    CHECK(raw_read_frame(fd, &ack, NULL, 0, PAYLOAD_MAX, CLOSE_MS));
    CHECK_EQ(ack.type, T_SYNC_ACK);
    CHECK_EQ(ack.session, 9);
    CHECK_GT(ack.aux, 0);

    raw_header chunk = {.version = HAUL_PROTOCOL_VERSION,
                        .type = T_CHUNK,
                        .session = 9,
                        .seq = 0,
                        .len = 262144,
                        .offset = 0,
                        .total = 2 * MIB};
    raw_send_header(fd, &chunk);
    uint8_t *payload = calloc(1, chunk.len);
    CHECK(payload != NULL);
    raw_send_all(fd, payload, chunk.len);
    free(payload);
    raw_header abort_frame;
    CHECK(raw_read_frame(fd, &abort_frame, NULL, 0, PAYLOAD_MAX, CLOSE_MS));
    CHECK_EQ(abort_frame.type, T_ABORT);
    CHECK_EQ(abort_frame.session, 9);
    CHECK_EQ(abort_frame.aux, HAUL_EPROTO);
    CHECK_EQ(protocol_errors(f.server), errors);

    raw_header bad = hello(0);
    bad.version = 99;
    raw_send_header(fd, &bad);
    expect_refused(&f, fd, errors, conns, 1, HAUL_EVERSION);

    fixture_check_serving(&f);
    fixture_stop(&f);
}

/*
 * After a valid HELLO, SYNCs whose principal length lies: longer than a
 * principal may be, and longer than the payload that carries it. The
 * engine refuses such a session itself, with a SYNC_NAK whose reason is
 * HAUL_EPROTO, and the application never hears of it. The connection
 * stays up (other sessions of the pipe may use it): a bad frame sent
 * afterwards on it is still read, refused and counted.
 */
TEST_TIMEOUT(sync_with_bad_principal_length, 60)
{
    fixture f;
    fixture_start(&f);
    uint64_t errors = protocol_errors(f.server);
    unsigned conns = connections(f.server);
    pthread_mutex_lock(&f.echo.mu);
    int requests = f.echo.requests;
    pthread_mutex_unlock(&f.echo.mu);

    int fd = raw_connect(f.address);
    handshake(fd, 0xBAD0008);
    /* Principal length 300 (over 255), with 300 bytes to back it. */
    uint8_t payload[2 + 300];
    payload[0] = 300 & 0xff;
    payload[1] = 300 >> 8;
    memset(payload + 2, 'P', 300);
    raw_header h = {.version = HAUL_PROTOCOL_VERSION,
                    .type = T_SYNC,
                    .session = 7,
                    .len = sizeof(payload),
                    .offset = MIB,
                    .total = 64u * MIB};
    raw_send_header(fd, &h);
    raw_send_all(fd, payload, sizeof(payload));
    /* Principal length 200 in a payload of 6 bytes: reading it would run
     * past the payload. */
    h.session = 8;
    h.len = 6;
    payload[0] = 200;
    payload[1] = 0;
    raw_send_header(fd, &h);
    raw_send_all(fd, payload, 6);

    for (uint32_t session = 7; session <= 8; session++) {
        raw_header nak;
        CHECK(raw_read_frame(fd, &nak, NULL, 0, PAYLOAD_MAX, CLOSE_MS));
        CHECK_EQ(nak.type, T_SYNC_NAK);
        CHECK_EQ(nak.session, session);
        CHECK_EQ(nak.aux, HAUL_EPROTO);
    }
    CHECK_EQ(protocol_errors(f.server), errors);

    /* Still read: a frame of an unknown version is refused. */
    raw_header bad = hello(0);
    bad.version = 99;
    raw_send_header(fd, &bad);
    expect_refused(&f, fd, errors, conns, 1, HAUL_EVERSION);

    fixture_check_serving(&f);
    pthread_mutex_lock(&f.echo.mu);
    /* The application saw only the request of the session opened after. */
    CHECK_EQ(f.echo.requests, requests + 1);
    pthread_mutex_unlock(&f.echo.mu);
    fixture_stop(&f);
}

/* A principal with a NUL inside would be read as the shorter name before
 * it: the request is malformed, and the engine refuses it itself. */
TEST_TIMEOUT(sync_with_nul_in_principal_is_refused, 60)
{
    fixture f;
    fixture_start(&f);
    pthread_mutex_lock(&f.echo.mu);
    int requests = f.echo.requests;
    pthread_mutex_unlock(&f.echo.mu);

    int fd = raw_connect(f.address);
    handshake(fd, 0xBAD0009);
    static const uint8_t payload[] = {9, 0, 'a', 'l', 'i', 'c', 'e', 0, 'b', 'o', 'b'};
    raw_header h = {.version = HAUL_PROTOCOL_VERSION,
                    .type = T_SYNC,
                    .session = 9,
                    .len = sizeof(payload),
                    .offset = MIB,
                    .total = 64u * MIB};
    raw_send_header(fd, &h);
    raw_send_all(fd, payload, sizeof(payload));
    raw_header nak;
    CHECK(raw_read_frame(fd, &nak, NULL, 0, PAYLOAD_MAX, CLOSE_MS));
    CHECK_EQ(nak.type, T_SYNC_NAK);
    CHECK_EQ(nak.session, 9);
    CHECK_EQ(nak.aux, HAUL_EPROTO);
    close(fd);

    fixture_check_serving(&f);
    pthread_mutex_lock(&f.echo.mu);
    /* The application saw only the request of the session opened after. */
    CHECK_EQ(f.echo.requests, requests + 1);
    pthread_mutex_unlock(&f.echo.mu);
    fixture_stop(&f);
}
