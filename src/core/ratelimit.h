/*
 * ratelimit.h - the token bucket of a session's rate limit.
 *
 * A session with a rate limit (haul_session_config.rate_limit) may hand
 * a chunk to a connection only while its bucket holds tokens. Tokens are
 * bytes of message payload; they come back at the rate, measured on the
 * monotonic clock, up to a small burst (HAUL__BUCKET_BURST_MS of the
 * rate). A chunk is taken whole as soon as the bucket holds any token,
 * and the bucket goes into debt for the rest of it: so chunks larger
 * than the burst still go, the long-run rate is exact, and what leaves
 * ahead of the pace is at most the burst plus one chunk.
 *
 * Pure arithmetic on the caller's clock, so that it can be tested
 * without one; the caller holds whatever lock guards the bucket.
 */
#ifndef HAUL_CORE_RATELIMIT_H
#define HAUL_CORE_RATELIMIT_H

#include <stdint.h>

/* The burst, in milliseconds of the rate. */
#define HAUL__BUCKET_BURST_MS 50
/* Rates above this (1 TiB/s) are this: no link is faster, and it keeps
 * the arithmetic within 64 bits. */
#define HAUL__BUCKET_RATE_MAX (1ull << 40)

typedef struct haul__bucket {
    uint64_t rate;  /* bytes per second; 0: no limit */
    int64_t burst;  /* the most tokens it holds */
    int64_t tokens; /* below zero: the debt of the last chunk */
    int64_t at_us;  /* when tokens were last added */
    uint64_t frac;  /* millionths of a token carried between refills */
} haul__bucket;

/* Sets the rate (0: none) and fills the bucket. */
void haul__bucket_set(haul__bucket *b, uint64_t rate, int64_t now_us);
/* Adds the tokens due since the last call; whether a chunk may go now
 * (always, without a limit). */
int haul__bucket_ready(haul__bucket *b, int64_t now_us);
/* Takes n bytes' worth of tokens: what a chunk just taken costs. */
void haul__bucket_take(haul__bucket *b, uint64_t n);
/* Microseconds until a chunk may go (0: now), as of the last refill. */
int64_t haul__bucket_wait_us(const haul__bucket *b);

/* The monotonic clock, in microseconds. */
int64_t haul__now_us(void);

#endif
