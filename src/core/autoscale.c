/*
 * autoscale.c - the automatic connection count of a client pipe: the
 * controller's table and rules, and the collector that feeds it from the
 * pipe's connections (autoscale.h).
 *
 * The rules, in short (docs/design.md has the reasons):
 *
 *   - Start with 2 connections (1 over a Unix socket); on a long link
 *     (least RTT HAUL__AUTO_LONG_RTT_US or more), go to 8 as soon as the
 *     first connect tells the RTT and a session is opening (or there is
 *     more to send), since the first intervals would be spent in slow
 *     start.
 *   - Measure goodput, the bytes the peer acknowledged plus the bytes
 *     received, over intervals of HAUL__AUTO_INTERVAL_RTTS round trips
 *     (0.5 to 3 s), after new connections had HAUL__AUTO_SETTLE_RTTS
 *     round trips to find their pace. An interval counts only when the
 *     application had more to send than the connections took for most
 *     of it: otherwise a slow disk or a slow receiver would read as "more
 *     connections do not help".
 *   - Grow while a step raises goodput by HAUL__AUTO_GAIN_PCT or more
 *     (HAUL__AUTO_LOSSY_GAIN_PCT when it doubled the share of
 *     retransmitted segments): x4 from the start count and after a step
 *     that paid in proportion (HAUL__AUTO_LINEAR_PCT) without raising
 *     losses, x2 else. A step up is measured over HAUL__AUTO_RAMP_MIN
 *     intervals, and judged once its goodput stopped changing from one
 *     interval to the next (new connections leave slow start and
 *     settle), after at most HAUL__AUTO_RAMP_MAX; at once when it
 *     filled the link (below) and carried less than the count before.
 *     When a step does not pay, go back to the best count measured and
 *     hold it.
 *   - Stop growing when the link is full: HAUL__AUTO_FULL_LOSS of the
 *     segments retransmitted while the RTT stands HAUL__AUTO_FULL_QUEUE_PCT
 *     above the least, since only an overflowing queue at the bottleneck
 *     does both.
 *   - Held, try one step up every HAUL__AUTO_REPROBE_MS, since links
 *     change (not while the link is full); and when retransmissions grew
 *     beyond HAUL__AUTO_LOSS_FACTOR times those of the chosen count (and
 *     HAUL__AUTO_LOSS_MIN) while goodput fell under HAUL__AUTO_DROP_PCT
 *     of the best, for HAUL__AUTO_LOSING_INTERVALS intervals in a row,
 *     try one step down, kept when it does HAUL__AUTO_KEEP_PCT as well;
 *     and one more while the losses stay.
 *   - Below HAUL__AUTO_LOCAL_RTT_US of RTT (the least any connection saw,
 *     which queues do not inflate), and over Unix sockets, use at
 *     most HAUL__AUTO_LOCAL_MAX: on one machine or a LAN a few
 *     connections fill what the cores can move, and more only add work.
 */
#include "core/autoscale.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
/* struct tcp_info with tcpi_segs_out: the kernel's header, not glibc's
 * older copy (which this file must then not include). */
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core/engine.h"
#include "core/fsm.h"

/* clang-format off */
static const haul__transition table[] = {
    {AUTO_JOINING, AEV_JOINED, AUTO_SETTLING},
    /* A long link takes its first step before the start count is
     * measured. */
    {AUTO_JOINING, AEV_GROW, AUTO_JOINING},
    {AUTO_SETTLING, AEV_GROW, AUTO_JOINING},
    {AUTO_SETTLING, AEV_SETTLED, AUTO_MEASURING},
    {AUTO_MEASURING, AEV_LIMITED, AUTO_MEASURING},
    {AUTO_MEASURING, AEV_RAMPING, AUTO_MEASURING},
    {AUTO_MEASURING, AEV_GROW, AUTO_JOINING},
    {AUTO_MEASURING, AEV_KEEP, AUTO_HOLDING},
    {AUTO_MEASURING, AEV_SHRINK, AUTO_SETTLING},
    {AUTO_HOLDING, AEV_LIMITED, AUTO_HOLDING},
    {AUTO_HOLDING, AEV_PROBE, AUTO_JOINING},
    {AUTO_HOLDING, AEV_SHRINK, AUTO_SETTLING},
};
/* clang-format on */

static const char *const state_names[] = {
#define X(name) #name,
    HAUL__FOREACH_AUTO_STATE(X)
#undef X
};

static const char *const event_names[] = {
#define X(name) #name,
    HAUL__FOREACH_AUTO_EVENT(X)
#undef X
};

const char *haul__auto_state_name(int state)
{
    return haul__fsm_name(state_names, AUTO_STATE_COUNT_, state, "AUTO_?");
}

const char *haul__auto_event_name(int event)
{
    return haul__fsm_name(event_names, AEV_COUNT_, event, "AEV_?");
}

/* The one way the controller moves. A move the table does not have is a
 * bug of this file; the state then stays. */
static void enter(haul__auto *a, int event, int64_t now)
{
    int next = haul__fsm_next(table, sizeof(table) / sizeof(table[0]), a->state, event);
    if (next < 0)
        return;
    a->state = next;
    a->since = now;
}

/* A new interval begins at the counters' present values. */
static void interval_begin(haul__auto *a, const haul__auto_input *in)
{
    a->start = in->now;
    a->start_bytes_at = in->bytes_at;
    a->start_bytes = in->bytes;
    a->start_retrans = in->retrans;
    a->start_segs = in->segs;
    a->samples = 0;
    a->demanded = 0;
}

static int64_t rtt_ms(const haul__auto *a)
{
    return (a->rtt_us + 999) / 1000;
}

static int64_t interval_ms(const haul__auto *a)
{
    int64_t ms = HAUL__AUTO_INTERVAL_RTTS * rtt_ms(a);
    if (ms < HAUL__AUTO_INTERVAL_MIN_MS)
        ms = HAUL__AUTO_INTERVAL_MIN_MS;
    if (ms > HAUL__AUTO_INTERVAL_MAX_MS)
        ms = HAUL__AUTO_INTERVAL_MAX_MS;
    return ms;
}

static int64_t settle_ms(const haul__auto *a)
{
    int64_t ms = HAUL__AUTO_SETTLE_RTTS * rtt_ms(a);
    return ms < HAUL__AUTO_SETTLE_MIN_MS ? HAUL__AUTO_SETTLE_MIN_MS : ms;
}

static double mbit(double bytes_per_s)
{
    return bytes_per_s * 8 / 1e6;
}

static void set_count(haul__auto *a, unsigned n)
{
    if (n > a->cap)
        n = a->cap;
    if (n < 1)
        n = 1;
    if (n != a->count)
        a->changes++;
    a->count = n;
    if (n > a->peak)
        a->peak = n;
}

unsigned haul__auto_init(haul__auto *a, unsigned cap, int unix_socket, int64_t now)
{
    memset(a, 0, sizeof(*a));
    a->cap = cap < 1 ? 1 : cap;
    a->local_rtt_us = HAUL__AUTO_LOCAL_RTT_US;
    a->long_rtt_us = HAUL__AUTO_LONG_RTT_US;
    a->state = AUTO_JOINING;
    a->since = now;
    a->count = unix_socket ? HAUL__AUTO_START_LOCAL : HAUL__AUTO_START;
    if (a->count > a->cap)
        a->count = a->cap;
    a->peak = a->count;
    snprintf(a->why, sizeof(a->why), "starting with %u", a->count);
    return a->count;
}

void haul__auto_cap(haul__auto *a, unsigned reached)
{
    if (reached < 1)
        reached = 1;
    if (reached >= a->cap)
        return;
    a->cap = reached;
    if (a->count > reached) {
        set_count(a, reached);
        snprintf(a->why, sizeof(a->why), "no more connections can be had: capped at %u", reached);
    }
    if (a->best.count > reached)
        a->best.count = reached;
}

/* The share of segments sent twice at least doubled from one count to the
 * next, beyond what random loss explains. */
static int raised_losses(const haul__auto_mark *now, const haul__auto_mark *before)
{
    return now->loss > HAUL__AUTO_LOSS_MIN && now->loss > before->loss * HAUL__AUTO_LOSS_FACTOR;
}

/* A step paid in proportion: each connection added carried about as much
 * as each one before, so that the link is still far from full. Not when
 * it also raised losses: then the link is near its limit, and the count
 * before may only have been measured short, its connections still
 * ramping. */
static int in_proportion(const haul__auto_mark *now, const haul__auto_mark *before)
{
    if (before->count == 0 || now->count <= before->count || before->goodput <= 0 ||
        raised_losses(now, before))
        return 0;
    double grew = (double)now->count / before->count - 1;
    return now->goodput - before->goodput >= before->goodput * grew * HAUL__AUTO_LINEAR_PCT / 100;
}

/* The next count up from n: x4 while far from enough, x2 near it. */
static unsigned step_up(const haul__auto *a, unsigned n, int fast)
{
    unsigned next = n * (fast ? 4 : 2);
    return next > a->cap ? a->cap : next;
}

/* A step paid when goodput grew by the margin; by a wider one when the
 * share of segments sent twice grew too, since more connections that
 * only fight over a queue raise losses more than goodput. New
 * connections that overshoot in slow start raise losses for a while
 * even where they pay well: a large gain is taken whatever the losses. */
static int paid(const haul__auto_mark *now, const haul__auto_mark *before)
{
    int pct = raised_losses(now, before) ? HAUL__AUTO_LOSSY_GAIN_PCT : HAUL__AUTO_GAIN_PCT;
    return now->goodput >= before->goodput * (100 + pct) / 100;
}

/* Goodput still grows or falls by the margin from one interval to the
 * next. It grows while new connections are in slow start; under a
 * congestion control that backs off for losses it then falls, for a
 * second or two, from the windows slow start left far above what the
 * losses let them keep: 8 connections under CUBIC with 0.5% random loss
 * at 50 ms read 615 Mbit/s in their first interval and carry 200. */
static int changing(const haul__auto_mark *m, double before)
{
    return m->goodput >= before * (100 + HAUL__AUTO_GAIN_PCT) / 100 ||
           m->goodput <= before * (100 - HAUL__AUTO_GAIN_PCT) / 100;
}

/* The link is full: segments are lost at a rate that only an overflowing
 * queue at the bottleneck explains, and the round trip stands well above
 * the least one, because that queue is full. Random loss alone does not
 * fill the queue: its connections keep the RTT near the least. More
 * connections cannot carry more over a full link; under BBR, which does
 * not slow down for losses, each one more only deepens them. */
static int full(const haul__auto *a, double loss)
{
    return loss >= HAUL__AUTO_FULL_LOSS && a->min_rtt_us &&
           (uint64_t)a->rtt_us * 100 >= (uint64_t)a->min_rtt_us * (100 + HAUL__AUTO_FULL_QUEUE_PCT);
}

/* The share of segments sent twice grew well beyond that of the count
 * when it was chosen. */
static int lossier(const haul__auto *a, const haul__auto_mark *m)
{
    double floor = a->best.loss * HAUL__AUTO_LOSS_FACTOR;
    if (floor < HAUL__AUTO_LOSS_MIN)
        floor = HAUL__AUTO_LOSS_MIN;
    return m->count > 1 && m->loss > floor;
}

/* Losses grew while goodput fell: the count in use stopped paying. */
static int losing(const haul__auto *a, const haul__auto_mark *m)
{
    return lossier(a, m) && m->goodput < a->best.goodput * HAUL__AUTO_DROP_PCT / 100;
}

static void hold(haul__auto *a, int64_t now)
{
    a->losing = 0;
    enter(a, AEV_KEEP, now);
    a->reprobe_at = now + HAUL__AUTO_REPROBE_MS;
    /* Connections just parked finish what they carry, and ones unparked
     * find their pace: the first interval held begins after that. */
    a->settle_until = now + settle_ms(a);
}

static void grow(haul__auto *a, unsigned to, const haul__auto_mark *m, int64_t now)
{
    a->base = *m;
    a->probe = 1;
    set_count(a, to);
    enter(a, a->state == AUTO_HOLDING ? AEV_PROBE : AEV_GROW, now);
}

/* One step down from m, measured against m. */
static void shrink(haul__auto *a, const haul__auto_mark *m, int64_t now)
{
    a->base = *m;
    a->probe = -1;
    set_count(a, m->count / 2);
    enter(a, AEV_SHRINK, now);
}

/* MEASURING: the interval of m is over and counted. */
static void judge(haul__auto *a, const haul__auto_mark *m, int64_t now)
{
    if (a->probe == 0 && m->full) {
        a->best = *m;
        snprintf(a->why, sizeof(a->why),
                 "%u connections fill the link (%.1f Mbit/s, %.2f%% retransmitted, RTT %u us over "
                 "%u): keeping %u",
                 m->count, mbit(m->goodput), m->loss * 100, a->rtt_us, a->min_rtt_us, m->count);
        hold(a, now);
        return;
    } else if (a->probe == 0) {
        a->best = *m;
        snprintf(a->why, sizeof(a->why), "%u connections carry %.1f Mbit/s: trying more", m->count,
                 mbit(m->goodput));
    } else if (a->probe > 0 && paid(m, &a->base)) {
        /* Under a congestion control that backs off for random loss, each
         * connection carries a small share and the link needs many: a
         * step that paid in proportion is followed by a larger one. */
        int fast = in_proportion(m, &a->base);
        snprintf(a->why, sizeof(a->why), "%u -> %u connections paid (%.1f -> %.1f Mbit/s)%s",
                 a->base.count, m->count, mbit(a->base.goodput), mbit(m->goodput),
                 m->full              ? ", and fill the link"
                 : m->count >= a->cap ? ", the cap"
                 : fast               ? " in proportion: trying four times more"
                                      : ": trying more");
        a->best = *m;
        if (m->count < a->cap && !m->full) {
            grow(a, step_up(a, m->count, fast), m, now);
            return;
        }
        hold(a, now);
        return;
    } else if (a->probe > 0) {
        snprintf(a->why, sizeof(a->why),
                 "%u -> %u connections did not pay (%.1f -> %.1f Mbit/s, %.2f%% -> %.2f%% "
                 "retransmitted): keeping %u",
                 a->base.count, m->count, mbit(a->base.goodput), mbit(m->goodput),
                 a->base.loss * 100, m->loss * 100, a->best.count);
        set_count(a, a->best.count);
        hold(a, now);
        return;
    } else if (m->goodput >= a->base.goodput * HAUL__AUTO_KEEP_PCT / 100) {
        /* Fewer do as well: the ones given up only added losses. Fewer
         * still may too. */
        a->best = *m;
        if (m->count > 1 && m->loss >= HAUL__AUTO_LOSS_MIN) {
            snprintf(a->why, sizeof(a->why),
                     "%u connections do as well as %u (%.1f, %.1f Mbit/s): trying %u", m->count,
                     a->base.count, mbit(m->goodput), mbit(a->base.goodput), m->count / 2);
            shrink(a, m, now);
            return;
        }
        /* The step down was taken for losses: once they are gone, fewer
         * still could only carry less. */
        if (m->count > 1)
            snprintf(a->why, sizeof(a->why),
                     "%u connections do as well as %u (%.1f, %.1f Mbit/s) without losses: "
                     "keeping them",
                     m->count, a->base.count, mbit(m->goodput), mbit(a->base.goodput));
        else
            snprintf(a->why, sizeof(a->why), "1 connection does as well as %u: keeping it",
                     a->base.count);
        hold(a, now);
        return;
    } else {
        snprintf(a->why, sizeof(a->why), "%u connections do worse than %u (%.1f, %.1f Mbit/s)",
                 m->count, a->base.count, mbit(m->goodput), mbit(a->base.goodput));
        set_count(a, a->base.count);
        /* The losses are the link's, not the count's: the reference
         * stays the one from before, and the next step down waits as
         * long as a step up would. */
        double loss = a->best.loss;
        a->best = a->base;
        a->best.loss = loss;
        hold(a, now);
        a->shrink_at = a->reprobe_at;
        return;
    }
    if (m->count < a->cap)
        grow(a, step_up(a, m->count, a->changes == 0), m, now);
    else
        hold(a, now);
}

/* HOLDING: an interval of m is over and counted. */
static void watch(haul__auto *a, const haul__auto_mark *m, int64_t now)
{
    /* One interval that lost more and carried less is often a dip that
     * passes (a connection recovering from a burst of losses, BBR
     * draining its queue to measure the RTT anew); a step down costs
     * intervals at a count that may carry less. */
    a->losing = losing(a, m) ? a->losing + 1 : 0;
    if (a->losing >= HAUL__AUTO_LOSING_INTERVALS && now >= a->shrink_at) {
        snprintf(a->why, sizeof(a->why),
                 "losses grew (%.2f%% -> %.2f%% retransmitted, %.1f -> %.1f Mbit/s): trying %u",
                 a->best.loss * 100, m->loss * 100, mbit(a->best.goodput), mbit(m->goodput),
                 m->count / 2);
        shrink(a, m, now);
        return;
    }
    /* What the count carries, smoothed over the intervals held: one
     * interval's goodput varies by a tenth or more. */
    a->best.goodput = (a->best.goodput * 3 + m->goodput) / 4;
    if (now < a->reprobe_at)
        return;
    /* Now and then, a step: down while losses stay high (fewer may do as
     * well with fewer losses), else up (the link may carry more now). */
    if (lossier(a, m)) {
        snprintf(a->why, sizeof(a->why),
                 "losses stay high (%.2f%% retransmitted at %u): trying %u connections",
                 m->loss * 100, m->count, m->count / 2);
        shrink(a, m, now);
    } else if (m->full) {
        /* The link is still full: a step up would only add losses. */
        a->reprobe_at = now + HAUL__AUTO_REPROBE_MS;
    } else if (m->count < a->cap) {
        snprintf(a->why, sizeof(a->why), "trying %u connections again (%.1f Mbit/s at %u)",
                 step_up(a, m->count, 0), mbit(m->goodput), m->count);
        grow(a, step_up(a, m->count, 0), m, now);
    }
}

/* What every sweep reads: the round trips, and whether the link is
 * local. */
static void observe(haul__auto *a, const haul__auto_input *in)
{
    if (in->rtt_us)
        a->rtt_us = in->rtt_us;
    if (in->min_rtt_us)
        a->min_rtt_us = in->min_rtt_us;
    /* The path's own RTT, without the queues: a loopback whose socket
     * buffers are deep has a smoothed RTT of milliseconds. */
    if (!a->local && (in->unix_socket || (in->min_rtt_us && in->min_rtt_us < a->local_rtt_us))) {
        a->local = 1;
        if (a->cap > HAUL__AUTO_LOCAL_MAX) {
            haul__auto_cap(a, HAUL__AUTO_LOCAL_MAX);
            snprintf(a->why, sizeof(a->why),
                     "a local link (RTT under %u us): at most %u connections", a->local_rtt_us,
                     a->cap);
        }
    }
}

/* The long link's first step, taken before anything is measured; 1 when
 * taken now. */
static int first_step(haul__auto *a, const haul__auto_input *in)
{
    if (a->changes == 0 && a->probe == 0 && !a->local && (in->demand || in->opening) &&
        in->min_rtt_us >= a->long_rtt_us && a->count < a->cap) {
        /* A long link, and more to send than the connections take, or
         * a session being opened to send: the start count would spend
         * the first intervals in slow start and say little. The first
         * step is taken at once, and measured (once it stops ramping)
         * as the start count would have been. Its connections are
         * dialled as soon as the first connect told the RTT, while the
         * session opens: waiting for its first message would start
         * them two round trips behind a fixed count. */
        snprintf(a->why, sizeof(a->why), "a long link (RTT %u us): starting with %u",
                 in->min_rtt_us, step_up(a, a->count, 1));
        set_count(a, step_up(a, a->count, 1));
        enter(a, AEV_GROW, in->now);
        return 1;
    }
    return 0;
}

unsigned haul__auto_early(haul__auto *a, const haul__auto_input *in)
{
    observe(a, in);
    first_step(a, in);
    return a->count;
}

unsigned haul__auto_tick(haul__auto *a, const haul__auto_input *in)
{
    observe(a, in);
    if (first_step(a, in))
        return a->count;
    int64_t now = in->now;
    switch (a->state) {
    case AUTO_JOINING:
        if (in->joined >= a->count || now - a->since >= HAUL__AUTO_JOIN_WAIT_MS)
            enter(a, AEV_JOINED, now);
        return a->count;
    case AUTO_SETTLING:
        if (now - a->since >= settle_ms(a)) {
            enter(a, AEV_SETTLED, now);
            interval_begin(a, in);
        }
        return a->count;
    case AUTO_HOLDING:
        if (a->settle_until) {
            if (now < a->settle_until)
                return a->count;
            a->settle_until = 0;
            interval_begin(a, in);
            return a->count;
        }
        break;
    default:
        break;
    }
    /* MEASURING or HOLDING: an interval under way. */
    a->samples++;
    a->demanded += in->demand != 0;
    if (now - a->start < interval_ms(a))
        return a->count;
    /* The bytes over the time between their readings, which may lag the
     * sweeps a little. */
    int64_t span = in->bytes_at - a->start_bytes_at;
    double secs = (double)(span > 0 ? span : now - a->start) / 1000;
    haul__auto_mark m = {.count = a->count, .goodput = (double)(in->bytes - a->start_bytes) / secs};
    uint64_t segs = in->segs - a->start_segs;
    m.loss = segs ? (double)(in->retrans - a->start_retrans) / (double)segs : 0;
    m.full = full(a, m.loss);
    /* Nothing carried at all, with more to send, is a pipe that lost
     * its connections, not a count that carries nothing: no step can be
     * judged against it. */
    int limited = (uint64_t)a->demanded * 100 < (uint64_t)a->samples * HAUL__AUTO_DEMAND_PCT ||
                  m.goodput <= 0;
    a->intervals++;
    a->last_limited = limited;
    a->last_demand_pct = a->samples ? a->demanded * 100 / a->samples : 0;
    interval_begin(a, in);
    if (limited) {
        /* Nothing is learnt: the application, not the network, set the
         * pace. A probe waits for an interval that counts. */
        enter(a, AEV_LIMITED, now);
        return a->count;
    }
    a->last = m;
    /* A step up that filled the link and carried less than the count
     * before it has failed, whatever its new connections might still
     * gain: judged at once, so that they add no more losses. */
    int failed = a->probe > 0 && m.full && m.goodput < a->base.goodput;
    /* A step down starts no connection: its first interval after the
     * settling is enough. */
    unsigned ramp_min = a->probe < 0 ? 1 : HAUL__AUTO_RAMP_MIN;
    if (a->state == AUTO_MEASURING && (a->probe > 0 || a->changes > 0) && !failed &&
        (a->ramps < ramp_min ||
         (a->ramps < HAUL__AUTO_RAMP_MAX && changing(&m, a->ramp_goodput)))) {
        /* New connections may still be in slow start, the more so the
         * longer the round trip, or settling from it: a step up (or the
         * first count of a long link) is measured over
         * HAUL__AUTO_RAMP_MIN intervals, and judged once its goodput
         * stopped changing from one interval to the next (or after
         * HAUL__AUTO_RAMP_MAX). Under CUBIC with random loss, new
         * connections carry three times their share for a second or
         * more (at 50 ms: 10 to 30 intervals of their round trip)
         * before their losses bring them down: a count judged then
         * reads high against the next. */
        a->ramps++;
        a->ramp_goodput = m.goodput;
        enter(a, AEV_RAMPING, now);
        return a->count;
    }
    a->ramps = 0;
    if (a->state == AUTO_MEASURING)
        judge(a, &m, now);
    else
        watch(a, &m, now);
    return a->count;
}

/* ---- the collector ---------------------------------------------------------- */

/* TCP_INFO is read at most this often: the controller needs it per
 * interval, not per sweep. */
#define INFO_EVERY_MS 100

/* Adds what the joined connections (parked ones too: they finish what
 * they carry) delivered, retransmitted and sent since they were last
 * read, and finds the smallest RTT of those in use. */
static void read_tcp_info(haul__pipe *pipe, int64_t now)
{
    if (pipe->auto_info_at && now - pipe->auto_info_at < INFO_EVERY_MS)
        return;
    pipe->auto_info_at = now;
    unsigned rtt = 0, min_rtt = 0;
    for (unsigned i = 0; i < pipe->nconns; i++) {
        haul__conn *c = pipe->conns[i];
        if (c == NULL || c->dead || c->state != HAUL__CONN_JOINED)
            continue;
        struct tcp_info ti;
        socklen_t len = sizeof(ti);
        memset(&ti, 0, sizeof(ti));
        if (getsockopt(c->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
            continue;
        /* A kernel older than tcpi_segs_out leaves it 0: losses are then
         * not seen, and only goodput decides. */
        if (ti.tcpi_total_retrans >= c->auto_retrans)
            pipe->auto_retrans += ti.tcpi_total_retrans - c->auto_retrans;
        if (ti.tcpi_segs_out >= c->auto_segs)
            pipe->auto_segs += ti.tcpi_segs_out - c->auto_segs;
        c->auto_retrans = ti.tcpi_total_retrans;
        c->auto_segs = ti.tcpi_segs_out;
        uint64_t bytes = ti.tcpi_bytes_acked + ti.tcpi_bytes_received;
        if (len >=
            offsetof(struct tcp_info, tcpi_bytes_received) + sizeof(ti.tcpi_bytes_received)) {
            pipe->auto_tcp_info = 1;
            if (bytes >= c->auto_bytes)
                pipe->auto_tcp_bytes += bytes - c->auto_bytes;
            c->auto_bytes = bytes;
        }
        if (i >= pipe->active)
            continue;
        if (ti.tcpi_rtt && (rtt == 0 || ti.tcpi_rtt < rtt))
            rtt = ti.tcpi_rtt;
        if (ti.tcpi_min_rtt && (min_rtt == 0 || ti.tcpi_min_rtt < min_rtt))
            min_rtt = ti.tcpi_min_rtt;
    }
    if (rtt)
        pipe->auto_rtt_us = rtt;
    if (min_rtt && (pipe->auto_min_rtt_us == 0 || min_rtt < pipe->auto_min_rtt_us))
        pipe->auto_min_rtt_us = min_rtt;
}

void haul__auto_sweep(haul__pipe *pipe, int64_t now)
{
    haul_engine *e = pipe->engine;
    haul__auto *a = &pipe->autoscale;
    if (pipe->addr.ss_family != AF_UNIX)
        read_tcp_info(pipe, now);
    /* Goodput: what the connections' TCP delivered, both ways, read from
     * the kernel. It is the pipe's own goodput but for the few bytes of
     * headers and control frames, and it is smooth: acknowledgements of
     * messages come in bursts, each when a message's last chunk arrives,
     * so that their bytes over half a second vary more than the rate.
     * Over a Unix socket (no TCP_INFO), the bytes of messages the peer
     * acknowledged and of chunks received. */
    haul__auto_input in = {.now = now,
                           .demand = haul__pipe_demand(pipe),
                           /* Read only while the first step may come. */
                           .opening = a->changes == 0 && haul__pipe_opening(pipe),
                           .bytes =
                               pipe->auto_tcp_info ? pipe->auto_tcp_bytes : pipe->goodput_bytes,
                           .bytes_at = pipe->auto_tcp_info ? pipe->auto_info_at : now,
                           .retrans = pipe->auto_retrans,
                           .segs = pipe->auto_segs,
                           .rtt_us = pipe->auto_rtt_us,
                           .min_rtt_us = pipe->auto_min_rtt_us,
                           .unix_socket = pipe->addr.ss_family == AF_UNIX};
    for (unsigned i = 0; i < pipe->active && i < pipe->nconns; i++)
        if (pipe->conns[i] && !pipe->conns[i]->dead && pipe->conns[i]->state == HAUL__CONN_JOINED)
            in.joined++;
    unsigned before = a->count, intervals = a->intervals;
    int state = a->state;
    /* Before a connection joined, only the long link's first step: no
     * interval means anything yet. */
    unsigned want = pipe->ever_joined ? haul__auto_tick(a, &in) : haul__auto_early(a, &in);
    if (a->intervals != intervals)
        haul__log(e, HAUL_LOG_DEBUG,
                  "pipe %s: %u connections, %s: %.1f Mbit/s, %.2f%% retransmitted, RTT %u us, "
                  "more to send %u%% of the time%s",
                  pipe->destination, before, haul__auto_state_name(state),
                  a->last_limited ? 0 : a->last.goodput * 8 / 1e6,
                  a->last_limited ? 0 : a->last.loss * 100, a->rtt_us, a->last_demand_pct,
                  a->last_limited ? " (not counted: the application's pace, or nothing carried)"
                                  : "");
    if (want != pipe->active) {
        unsigned got = haul__pipe_resize(pipe, want);
        if (got < want)
            haul__auto_cap(a, got);
    }
    /* A count chosen is said even when it is the one in use. */
    if (a->count != before || (a->state == AUTO_HOLDING && state != AUTO_HOLDING))
        haul__log(e, HAUL_LOG_INFO, "pipe %s: %u connections: %s", pipe->destination, a->count,
                  a->why);
}
