/*
 * sizes_test.c - messages of every interesting size, and the sizes that
 * are refused.
 *
 * The engines take messages of up to 80 MiB in 64 KiB chunks, so that the
 * largest message stays affordable while a 64 MiB one still fits below it.
 * Each size goes three ways: copied (haul_send), borrowed
 * (haul_send_buffer) and from a file at an offset (haul_send_file). After
 * each message the server must hold exactly one more message, of exactly
 * that length and content.
 *
 * Refusals are checked at the call: a message larger than the session's
 * max_message or its output queue gets HAUL_EMSGSIZE, one that does not
 * fit what is left of the output queue gets HAUL_EQUEUEFULL at once, and
 * neither posts an event nor calls a release callback.
 */
#include "harness.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "util.h"
#include "transfer.h"

#define KIB (1u << 10)
#define MIB (1u << 20)
#define CHUNK (64u * KIB)
#define MAX_MESSAGE (80ull * MIB)
/* Messages start at varying offsets below this in the pattern buffer (and
 * in the file), so that none is aligned and no two are alike. */
#define SLACK 4096u

static haul_engine *sizes_engine(void)
{
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.max_message = MAX_MESSAGE;
    ec.chunk_size = CHUNK;
    return engine_with(&ec);
}

/* A client and a server of sizes_engine(), and one open stream between them
 * with the given output queue and max_message. */
typedef struct fixture {
    server sv;
    haul_engine *client;
    stream st;
} fixture;

static void fixture_open(fixture *fx, uint64_t output_queue, uint64_t max_message, int hold)
{
    harness_strerror = haul_strerror;
    server_start(&fx->sv, sizes_engine(), NULL);
    pthread_mutex_lock(&fx->sv.sink.mu);
    fx->sv.sink.hold = hold;
    pthread_mutex_unlock(&fx->sv.sink.mu);
    fx->client = sizes_engine();
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = fx->sv.address;
    sc.output_queue = output_queue;
    sc.max_message = max_message;
    stream_open(&fx->st, fx->client, &sc, "SIZES");
    streams_wait_open(fx->client, &fx->st, 1);
}

static void fixture_close(fixture *fx)
{
    streams_close(fx->client, &fx->st, 1, &fx->sv);
    stream_verify(&fx->sv, &fx->st);
    stream_free(&fx->st);
    haul_engine_free(fx->client);
    server_stop(&fx->sv);
}

/* The bytes of every message, and the same bytes in an unlinked file. */
static uint8_t *pattern_new(size_t len, int *fdp)
{
    uint8_t *buf = malloc(len);
    CHECK(buf != NULL);
    fill_pattern(buf, len, 0x5155);
    char path[] = "/tmp/haul-sizes-XXXXXX";
    int fd = mkstemp(path);
    CHECK_GE(fd, 0);
    CHECK_OK(unlink(path));
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, buf + done, len - done);
        CHECK_GT(n, 0);
        done += (size_t)n;
    }
    *fdp = fd;
    return buf;
}

/*
 * What a release callback saw: how often it ran, on which buffer, and how
 * many messages the receiving engine had taken in by then. The release
 * must come after the message's acknowledgement, so the receiver must
 * already have had the message when it ran.
 */
typedef struct release_probe {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int calls;
    const void *expect_buf;
    const void *buf;
    haul_engine *receiver;
    uint64_t received_then;
} release_probe;

static void probe_init(release_probe *p, const void *buf, haul_engine *receiver)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->expect_buf = buf;
    p->receiver = receiver;
}

static void probe_fini(release_probe *p)
{
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cond);
}

/* Runs on a client engine thread; the receiver is another engine, whose
 * statistics may be read from here. */
static void probe_release(void *buf, void *arg)
{
    release_probe *p = arg;
    haul_engine_stats rs;
    if (p->receiver)
        haul_engine_stats_get(p->receiver, &rs);
    pthread_mutex_lock(&p->mu);
    p->calls++;
    p->buf = buf;
    p->received_then = p->receiver ? rs.messages_received : 0;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

static int probe_calls(release_probe *p)
{
    pthread_mutex_lock(&p->mu);
    int calls = p->calls;
    pthread_mutex_unlock(&p->mu);
    return calls;
}

/* Waits up to ms for the first call. */
static int probe_wait(release_probe *p, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&p->mu);
    int rc = 0;
    while (p->calls == 0 && rc == 0)
        rc = pthread_cond_timedwait(&p->cond, &p->mu, &until);
    int calls = p->calls;
    pthread_mutex_unlock(&p->mu);
    return calls;
}

/* Checks that taking events for ms brings none: a refused call posts
 * nothing. */
static void expect_no_event(haul_engine *e, int ms)
{
    haul_event ev;
    int n = haul_engine_wait(e, &ev, 1, ms);
    if (n > 0)
        harness_log("unexpected %s (%s)", haul_event_name(ev.type), haul_strerror(ev.error));
    CHECK_EQ(n, 0);
}

enum { BY_COPY, BY_BUFFER, BY_FILE, HOW_COUNT };
static const char *const how_names[] = {"haul_send", "haul_send_buffer", "haul_send_file"};

/*
 * 0, 1, chunk - 1, chunk, chunk + 1, 64 MiB and the maximum, each sent
 * three ways, one message at a time. After each, the sink must have
 * exactly one message more, and the hash of all it took must match the
 * hash of all that was sent: so each message has its own length and
 * content.
 */
TEST_TIMEOUT(every_size_arrives_whole, 120)
{
    const uint64_t sizes[] = {0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 64ull * MIB, MAX_MESSAGE};
    const int nsizes = (int)(sizeof(sizes) / sizeof(sizes[0]));
    int fd;
    uint8_t *pattern = pattern_new(MAX_MESSAGE + SLACK, &fd);
    fixture fx;
    fixture_open(&fx, MAX_MESSAGE, MAX_MESSAGE, 0);
    stream *st = &fx.st;

    release_probe probes[sizeof(sizes) / sizeof(sizes[0])];
    for (int i = 0; i < nsizes; i++) {
        for (int how = 0; how < HOW_COUNT; how++) {
            const uint64_t len = sizes[i];
            const size_t off = 1 + (size_t)(i * HOW_COUNT + how) * 577 % (SLACK - 1);
            const uint8_t *src = pattern + off;
            uint64_t tag = st->sent;
            int rc = -1;
            if (how == BY_COPY) {
                rc = haul_send(st->session, src, len, tag);
            } else if (how == BY_BUFFER) {
                probe_init(&probes[i], src, fx.sv.engine);
                rc = haul_send_buffer(st->session, src, len, probe_release, &probes[i], tag);
            } else {
                rc = haul_send_file(st->session, fd, (off_t)off, len, tag);
            }
            if (rc)
                harness_log("%s of %llu bytes: %s", how_names[how], (unsigned long long)len,
                            haul_strerror(rc));
            CHECK_OK(rc);
            stream_book(st, src, len);
            streams_wait_acked(fx.client, st, 1);
            CHECK(sink_wait_messages(&fx.sv.sink, st->principal, st->sent, TRANSFER_WAIT_MS));
            stream_verify(&fx.sv, st);
            if (how == BY_BUFFER) {
                /* MESSAGE_SENT was taken: the release comes, once, and it
                 * came after the receiver had the message. */
                CHECK_EQ(probe_wait(&probes[i], TRANSFER_WAIT_MS), 1);
                CHECK(probes[i].buf == src);
                CHECK_GE(probes[i].received_then, st->sent);
            }
        }
    }
    CHECK_EQ(st->sent, (uint64_t)nsizes * HOW_COUNT);

    fixture_close(&fx);
    for (int i = 0; i < nsizes; i++) {
        CHECK_EQ(probe_calls(&probes[i]), 1);
        probe_fini(&probes[i]);
    }
    close(fd);
    free(pattern);
}

/*
 * One byte over the maximum is refused at the call by all three ways of
 * sending, with HAUL_EMSGSIZE, nothing posted and no release called; the
 * session carries on as before.
 */
TEST_TIMEOUT(larger_than_max_message_is_refused, 60)
{
    int fd;
    uint8_t *pattern = pattern_new(MAX_MESSAGE + 1, &fd);
    fixture fx;
    fixture_open(&fx, 2 * MAX_MESSAGE, MAX_MESSAGE, 0);
    stream *st = &fx.st;

    release_probe probe;
    probe_init(&probe, pattern, NULL);
    CHECK_EQ(haul_send(st->session, pattern, MAX_MESSAGE + 1, 1), HAUL_EMSGSIZE);
    CHECK_EQ(haul_send_buffer(st->session, pattern, MAX_MESSAGE + 1, probe_release, &probe, 2),
             HAUL_EMSGSIZE);
    CHECK_EQ(haul_send_file(st->session, fd, 0, MAX_MESSAGE + 1, 3), HAUL_EMSGSIZE);
    expect_no_event(fx.client, 200);
    CHECK_EQ(probe_calls(&probe), 0);

    /* The maximum itself still goes. */
    CHECK_OK(stream_send(st, pattern, MAX_MESSAGE));
    streams_wait_acked(fx.client, st, 1);

    fixture_close(&fx);
    CHECK_EQ(probe_calls(&probe), 0);
    probe_fini(&probe);
    close(fd);
    free(pattern);
}

/*
 * A message larger than the whole output queue can never be sent, even
 * when it is below max_message: HAUL_EMSGSIZE, not HAUL_EQUEUEFULL. A
 * message of exactly the output queue's size goes.
 */
TEST_TIMEOUT(larger_than_output_queue_is_refused, 60)
{
    const uint64_t queue = 1 * MIB;
    int fd;
    uint8_t *pattern = pattern_new(queue + 1, &fd);
    fixture fx;
    fixture_open(&fx, queue, MAX_MESSAGE, 0);
    stream *st = &fx.st;

    release_probe probe;
    probe_init(&probe, pattern, NULL);
    CHECK_EQ(haul_send(st->session, pattern, queue + 1, 1), HAUL_EMSGSIZE);
    CHECK_EQ(haul_send_buffer(st->session, pattern, queue + 1, probe_release, &probe, 2),
             HAUL_EMSGSIZE);
    CHECK_EQ(haul_send_file(st->session, fd, 0, queue + 1, 3), HAUL_EMSGSIZE);
    expect_no_event(fx.client, 200);
    CHECK_EQ(probe_calls(&probe), 0);

    CHECK_OK(stream_send(st, pattern, queue));
    streams_wait_acked(fx.client, st, 1);

    fixture_close(&fx);
    CHECK_EQ(probe_calls(&probe), 0);
    probe_fini(&probe);
    close(fd);
    free(pattern);
}

/*
 * A send that does not fit what is left of the output queue returns
 * HAUL_EQUEUEFULL at once. To keep messages unacknowledged for as long as
 * the test needs, the server's application holds the first message in its
 * input queue: with the sender's max_message (80 MiB) above the free input
 * queue (64 MiB less 1 MiB), the window is then 0, and what follows waits
 * in the 4 MiB output queue. Taking the held message reopens the window,
 * and everything queued must then arrive.
 */
TEST_TIMEOUT(queue_full_is_refused_at_once, 60)
{
    const uint64_t queue = 4 * MIB;
    int fd;
    uint8_t *pattern = pattern_new(queue + SLACK, &fd);
    fixture fx;
    fixture_open(&fx, queue, MAX_MESSAGE, 1);
    stream *st = &fx.st;

    CHECK_OK(stream_send(st, pattern, 1 * MIB));
    streams_wait_acked(fx.client, st, 1);
    CHECK_EQ(st->window, 0);

    /* Queued behind the closed window: 3 of the 4 MiB are taken. */
    CHECK_OK(stream_send(st, pattern + 1, 3 * MIB));

    release_probe probe;
    probe_init(&probe, pattern, NULL);
    int64_t start = transfer_now_ms();
    CHECK_EQ(haul_send(st->session, pattern, 2 * MIB, 100), HAUL_EQUEUEFULL);
    CHECK_EQ(haul_send_buffer(st->session, pattern, 2 * MIB, probe_release, &probe, 101),
             HAUL_EQUEUEFULL);
    CHECK_EQ(haul_send_file(st->session, fd, 0, 2 * MIB, 102), HAUL_EQUEUEFULL);
    CHECK_EQ(haul_send(st->session, pattern, 1 * MIB + 1, 103), HAUL_EQUEUEFULL);
    int64_t took = transfer_now_ms() - start;
    /* The calls do not wait for room: a second is far more than four
     * refusals need, and far less than any wait for an acknowledgement. */
    CHECK_LT(took, 1000);
    expect_no_event(fx.client, 200);
    CHECK_EQ(probe_calls(&probe), 0);

    /* What is exactly left still fits. */
    CHECK_OK(haul_send_file(st->session, fd, 2, 1 * MIB, st->sent));
    stream_book(st, pattern + 2, 1 * MIB);
    CHECK_EQ(haul_send(st->session, pattern, 1, 104), HAUL_EQUEUEFULL);

    /* The server's application takes the held message, booking it as the
     * sink would, and lets the sink take the rest. */
    sink *k = &fx.sv.sink;
    pthread_mutex_lock(&k->mu);
    k->hold = 0;
    sink_session *ss = sink_by_principal(k, st->principal);
    CHECK(ss != NULL);
    haul_message *m;
    CHECK_OK(haul_recv(ss->session, &m));
    CHECK_EQ(haul_message_len(m), 1 * MIB);
    CHECK_EQ(haul_message_seq(m), 0);
    ss->messages++;
    ss->bytes += haul_message_len(m);
    ss->last_seq_plus1 = haul_message_seq(m) + 1;
    XXH3_64bits_update(ss->hash, haul_message_data(m), haul_message_len(m));
    haul_message_free(m);
    pthread_mutex_unlock(&k->mu);

    streams_wait_acked(fx.client, st, 1);
    CHECK_EQ(st->sent, 3);
    fixture_close(&fx);
    CHECK_EQ(probe_calls(&probe), 0);
    probe_fini(&probe);
    close(fd);
    free(pattern);
}
