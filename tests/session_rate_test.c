/*
 * session_rate_test.c - the rate limit of a session
 * (haul_session_config.rate_limit) on a pipe shared with other sessions,
 * over real sockets.
 *
 * Each session has its own bucket: one held back by its limit must not
 * hold back a session without one on the same pipe, and what it sends
 * must still arrive whole and in order. The limit is asserted as a lower
 * bound on the time the limited session takes, never as a speed.
 */
#include "harness.h"

#include <stdlib.h>

#include "util.h"
#include "transfer.h"

#define KIB 1024u
#define CHUNK (64 * KIB)

static haul_engine *engine_chunked(void)
{
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.chunk_size = CHUNK;
    return engine_with(&ec);
}

TEST_TIMEOUT(rate_limit_holds_its_session_and_not_its_neighbour_on_the_pipe, 60)
{
    harness_strerror = haul_strerror;
    server sv;
    server_start(&sv, engine_chunked(), NULL);
    haul_engine *client = engine_chunked();

    /* A, limited, makes the pipe of 2 connections; B, unlimited, joins it. */
    const uint64_t rate = 128 * KIB, limited = 384 * KIB, unlimited = 4096 * KIB;
    stream sts[2];
    for (int i = 0; i < 2; i++) {
        haul_session_config sc;
        haul_session_config_init(&sc);
        sc.destination = sv.address;
        sc.max_message = 64 * KIB;
        sc.connections = 2;
        sc.rate_limit = i == 0 ? rate : 0;
        stream_open(&sts[i], client, &sc, i == 0 ? "A" : "B");
    }
    streams_wait_open(client, sts, 2);

    uint8_t *buf = malloc(64 * KIB);
    CHECK(buf != NULL);
    int64_t t0 = transfer_now_ms();
    for (uint64_t k = 0; k < limited / (64 * KIB); k++) {
        fill_pattern(buf, 64 * KIB, k);
        stream_send_wait(client, &sts[0], buf, 64 * KIB);
    }
    for (uint64_t k = 0; k < unlimited / (64 * KIB); k++) {
        fill_pattern(buf, 64 * KIB, 1000 + k);
        stream_send_wait(client, &sts[1], buf, 64 * KIB);
    }
    /* B's 4 MiB go while A's 384 KiB wait for their tokens: B is done
     * before A could be, whatever the machine's speed. */
    streams_wait_acked(client, &sts[1], 1);
    int64_t b_done = transfer_now_ms() - t0;
    uint64_t a_acked = sts[0].acked;
    streams_wait_acked(client, &sts[0], 1);
    int64_t a_done = transfer_now_ms() - t0;
    harness_log("B acknowledged after %lld ms, A then had %llu of %llu; A after %lld ms",
                (long long)b_done, (unsigned long long)a_acked, (unsigned long long)sts[0].sent,
                (long long)a_done);
    /* A cannot be faster than its rate allows: what may leave ahead of
     * the pace is 50 ms of the rate and one chunk. */
    CHECK_GE(a_done, (int64_t)((limited - rate / 20 - CHUNK) * 1000 / rate));
    CHECK_LT(a_acked, sts[0].sent);

    streams_close(client, sts, 2, &sv);
    for (int i = 0; i < 2; i++) {
        stream_verify(&sv, &sts[i]);
        stream_free(&sts[i]);
    }
    free(buf);
    haul_engine_free(client);
    server_stop(&sv);
}
