/*
 * ratelimit.c - the token bucket of a session's rate limit (ratelimit.h).
 */
#include <time.h>

#include "core/ratelimit.h"

int64_t haul__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void haul__bucket_set(haul__bucket *b, uint64_t rate, int64_t now_us)
{
    if (rate > HAUL__BUCKET_RATE_MAX)
        rate = HAUL__BUCKET_RATE_MAX;
    b->rate = rate;
    b->burst = (int64_t)(rate * HAUL__BUCKET_BURST_MS / 1000);
    if (b->burst < 1)
        b->burst = 1;
    b->tokens = b->burst;
    b->at_us = now_us;
    b->frac = 0;
}

int haul__bucket_ready(haul__bucket *b, int64_t now_us)
{
    if (b->rate == 0)
        return 1;
    int64_t elapsed = now_us - b->at_us;
    if (elapsed <= 0)
        return b->tokens > 0;
    b->at_us = now_us;
    /* Past the time an empty bucket takes to fill, and a chunk's debt to
     * be paid, the bucket is full whatever the exact count: this keeps
     * rate x elapsed within 64 bits. */
    int64_t span = (b->burst - b->tokens) / (int64_t)b->rate + 1; /* seconds */
    if (elapsed / 1000000 > span) {
        b->tokens = b->burst;
        b->frac = 0;
        return 1;
    }
    /* Millionths of a token are carried over, so that frequent refills
     * at a low rate do not round every one of them down to nothing. */
    uint64_t due = b->rate * (uint64_t)elapsed + b->frac;
    b->frac = due % 1000000;
    b->tokens += (int64_t)(due / 1000000);
    if (b->tokens >= b->burst) {
        b->tokens = b->burst;
        b->frac = 0;
    }
    return b->tokens > 0;
}

void haul__bucket_take(haul__bucket *b, uint64_t n)
{
    if (b->rate == 0)
        return;
    b->tokens -= (int64_t)n;
}

int64_t haul__bucket_wait_us(const haul__bucket *b)
{
    if (b->rate == 0 || b->tokens > 0)
        return 0;
    /* Tokens to 1, less the millionths already carried, rounded up. */
    uint64_t need = (uint64_t)(1 - b->tokens) * 1000000 - b->frac;
    return (int64_t)((need + b->rate - 1) / b->rate);
}
