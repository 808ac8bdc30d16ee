/*
 * budget_test.c - the memory budget's counters and its pool of receive
 * bodies, without an engine.
 */
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/budget.h"
#include "core/engine.h"
#include "harness.h"

/*
 * Takes stop at the limit, receive takes at the limit less the reserve;
 * gives bring both back; the peak keeps the most ever counted.
 */
TEST(takes_stop_at_the_limit_and_the_receive_part)
{
    haul__budget *b = haul__budget_new(1000, 300, -1);
    CHECK(b != NULL);
    CHECK_EQ(haul__budget_free(b, 0), 1000);
    CHECK_EQ(haul__budget_free(b, 1), 700);
    CHECK_OK(haul__budget_take(b, 600, 1));
    CHECK_EQ(haul__budget_take(b, 101, 1), -1);
    CHECK_OK(haul__budget_take(b, 100, 1));
    CHECK_EQ(haul__budget_free(b, 1), 0);
    /* Sends may have what receiving may not. */
    CHECK_OK(haul__budget_take(b, 300, 0));
    CHECK_EQ(haul__budget_take(b, 1, 0), -1);
    CHECK_EQ(atomic_load(&b->peak), 1000);
    haul__budget_give(b, 700, 1);
    haul__budget_give(b, 300, 0);
    CHECK_EQ(atomic_load(&b->used), 0);
    CHECK_EQ(atomic_load(&b->rx_used), 0);
    CHECK_EQ(atomic_load(&b->peak), 1000);
    haul__budget_unref(b);
}

/*
 * A give while sessions wait kicks the engine once (one eventfd write,
 * however many gives before the engine looks), and none once the engine
 * has gone.
 */
TEST(gives_kick_the_engine_while_sessions_wait)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    CHECK(fd >= 0);
    haul__budget *b = haul__budget_new(1000, 0, fd);
    CHECK_OK(haul__budget_take(b, 500, 0));
    haul__budget_give(b, 100, 0);
    uint64_t v = 0;
    CHECK_EQ(read(fd, &v, sizeof(v)), -1); /* nobody waits: no kick */
    atomic_store(&b->waiting, 1);
    haul__budget_give(b, 100, 0);
    haul__budget_give(b, 100, 0);
    CHECK_EQ(read(fd, &v, sizeof(v)), (ssize_t)sizeof(v));
    CHECK_EQ(v, 1);
    CHECK_EQ(atomic_load(&b->kicked), 1);
    atomic_store(&b->kicked, 0);
    haul__budget_detach(b);
    haul__budget_give(b, 100, 0);
    CHECK_EQ(read(fd, &v, sizeof(v)), -1);
    haul__budget_unref(b);
    close(fd);
}

/*
 * Large bodies are mapped, go back to the pool while the pool and what
 * is counted fit in the limit, are taken again by a message of about
 * their size, and leave the pool when idle; small ones come from malloc.
 */
TEST(bodies_are_pooled_within_the_limit_and_trimmed_when_idle)
{
    const size_t mib = 1u << 20;
    haul__budget *b = haul__budget_new(3 * mib, 0, -1);
    size_t cap;
    uint8_t *small = haul__budget_body(b, 1000, &cap);
    CHECK(small != NULL);
    CHECK_EQ(cap, 0);
    haul__budget_body_free(b, small, cap);

    size_t c1, c2, c3;
    uint8_t *a = haul__budget_body(b, mib, &c1);
    uint8_t *x = haul__budget_body(b, mib, &c2);
    CHECK(a != NULL && x != NULL);
    CHECK_EQ(c1, mib);
    memset(a, 1, mib);
    /* Two bodies fit beside 1 MiB counted; the third does not. */
    CHECK_OK(haul__budget_take(b, mib, 1));
    haul__budget_body_free(b, a, c1);
    haul__budget_body_free(b, x, c2);
    CHECK_EQ(b->pooled, 2 * mib);
    uint8_t *y = haul__budget_body(b, mib, &c3);
    haul__budget_body_free(b, y, c3);
    CHECK_EQ(b->pooled, 2 * mib);
    haul__budget_body_free(b, haul__budget_body(b, 2 * mib, &c3), c3);
    CHECK_EQ(b->pooled, 2 * mib);

    /* A message of nearly the size takes a pooled body; one much smaller
     * does not. */
    uint8_t *again = haul__budget_body(b, mib - 4096, &c3);
    CHECK(again == a || again == x);
    CHECK_EQ(c3, mib);
    CHECK_EQ(b->pooled, mib);
    uint8_t *half = haul__budget_body(b, mib / 2, &c2);
    CHECK(half != a && half != x);
    CHECK_EQ(b->pooled, mib);
    haul__budget_body_free(b, half, c2);
    haul__budget_body_free(b, again, c3);

    /* Idle bodies go: none before a second, all after. */
    int64_t now = haul__now_ms();
    haul__budget_trim(b, now, 0);
    CHECK(b->pooled > 0);
    haul__budget_trim(b, now + HAUL__POOL_IDLE_MS + 1000, 0);
    CHECK_EQ(b->pooled, 0);
    CHECK(b->pool == NULL);
    haul__budget_give(b, mib, 1);
    haul__budget_unref(b);
}
