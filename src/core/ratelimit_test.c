/*
 * ratelimit_test.c - the token bucket of a session's rate limit, on a
 * clock of the test's own.
 */
#include <stdint.h>

#include "core/ratelimit.h"
#include "harness.h"

#define MS 1000
#define S 1000000

TEST(bucket_without_a_rate_is_always_ready)
{
    haul__bucket b;
    haul__bucket_set(&b, 0, 0);
    haul__bucket_take(&b, 1 << 30);
    CHECK(haul__bucket_ready(&b, 0));
    CHECK_EQ(haul__bucket_wait_us(&b), 0);
}

TEST(bucket_starts_full_with_fifty_ms_of_the_rate)
{
    haul__bucket b;
    haul__bucket_set(&b, 1000000, 0);
    CHECK(haul__bucket_ready(&b, 0));
    CHECK_EQ(b.tokens, 50000);
}

TEST(bucket_lets_a_chunk_larger_than_the_burst_go_and_pays_its_debt)
{
    haul__bucket b;
    haul__bucket_set(&b, 1000000, 0); /* 1 MB/s, burst 50 kB */
    haul__bucket_take(&b, 250000);    /* a chunk of 250 kB */
    CHECK(!haul__bucket_ready(&b, 0));
    /* 200 kB of debt and one token: 200.001 ms. */
    CHECK_EQ(haul__bucket_wait_us(&b), 200001);
    CHECK(!haul__bucket_ready(&b, 200 * MS));
    CHECK(haul__bucket_ready(&b, 200 * MS + 1));
}

TEST(bucket_refills_no_higher_than_its_burst)
{
    haul__bucket b;
    haul__bucket_set(&b, 1000000, 0);
    haul__bucket_take(&b, 50000);
    CHECK(haul__bucket_ready(&b, 3600LL * S));
    CHECK_EQ(b.tokens, 50000);
}

/* The long-run rate: chunks taken whenever the bucket allows, over 10 s
 * of the test's clock, in steps of 1 ms, carry the rate x 10 s, give or
 * take the burst and one chunk. */
TEST(bucket_holds_the_rate_over_many_chunks)
{
    haul__bucket b;
    const uint64_t rate = 2 << 20, chunk = 256 << 10;
    haul__bucket_set(&b, rate, 0);
    uint64_t sent = 0;
    for (int64_t t = 0; t <= 10 * S; t += MS)
        while (haul__bucket_ready(&b, t)) {
            haul__bucket_take(&b, chunk);
            sent += chunk;
        }
    CHECK(sent <= 10 * rate + (uint64_t)b.burst + chunk);
    CHECK(sent >= 10 * rate - chunk);
}

/* Refills far more often than a token comes (1 byte per second, every
 * millisecond) still add up: the fractions are carried. */
TEST(bucket_refilled_often_at_a_low_rate_loses_nothing)
{
    haul__bucket b;
    haul__bucket_set(&b, 1, 0);
    haul__bucket_take(&b, 11); /* 10 tokens of debt */
    int64_t t = 0;
    while (!haul__bucket_ready(&b, t))
        t += MS;
    CHECK_EQ(t, 11 * S);
}

TEST(bucket_rate_beyond_the_maximum_is_the_maximum)
{
    haul__bucket b;
    haul__bucket_set(&b, UINT64_MAX, 0);
    CHECK_EQ(b.rate, HAUL__BUCKET_RATE_MAX);
    haul__bucket_take(&b, UINT32_MAX);
    CHECK(haul__bucket_ready(&b, 100LL * 86400 * S));
    CHECK_EQ(b.tokens, b.burst);
}
