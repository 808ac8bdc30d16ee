/*
 * autoscale_test.c - the rules of the automatic connection count, on a
 * simulated link.
 *
 * The controller is pure: it is fed what a pipe measured at each sweep and
 * answers with a count. Here a model of a link stands in for the pipe: a
 * function gives the goodput and the share of retransmitted segments of n
 * connections at a time, and the test feeds the controller 20 ms sweeps
 * of it, as the engine's timer would, for simulated minutes in
 * milliseconds of real time. The end-to-end tests (tests/autoscale_e2e_test.c)
 * check the same rules over real sockets.
 */
#include <stdint.h>
#include <string.h>

#include "core/autoscale.h"
#include "harness.h"

#define SWEEP_MS 20
#define MB 1000000.0

/* A link: the goodput (bytes/s) and losses of n connections at time t. */
typedef struct model {
    double (*goodput)(const struct model *l, unsigned n, int64_t t);
    double (*loss)(const struct model *l, unsigned n, int64_t t);
    unsigned rtt_us;
    int unix_socket;
    int demand;             /* the application has more to send */
    int opening;            /* a session is being opened */
    double per_conn, limit; /* what the simple models use */
    int64_t change_at;      /* when the link changes, for the models that do */
    double per_conn_after, limit_after;
    unsigned full_rtt_us; /* the RTT while the bottleneck's queue is full (0: rtt_us) */
    /* When set, what goodput() gives is multiplied by this, of the ms
     * since the count last changed: connections that overshoot in slow
     * start and then settle. */
    double (*burst)(const struct model *l, unsigned n, int64_t age);
} model;

typedef struct sim {
    haul__auto a;
    haul__auto_input in;
    double bytes, retrans, segs;
    unsigned count;
    unsigned lowest, highest; /* the counts used (tests may reset them) */
    int64_t ms_at[129];       /* time spent at each count */
    int64_t changed_at;       /* when the count last changed */
} sim;

/* Each connection adds per_conn, up to the link's limit. */
static double linear_capped(const model *l, unsigned n, int64_t t)
{
    double per = t >= l->change_at ? l->per_conn_after : l->per_conn;
    double limit = t >= l->change_at ? l->limit_after : l->limit;
    double g = per * n;
    return g < limit ? g : limit;
}

static double no_loss(const model *l, unsigned n, int64_t t)
{
    return 0;
}

static void sim_start(sim *s, const model *l, unsigned cap)
{
    memset(s, 0, sizeof(*s));
    s->count = haul__auto_init(&s->a, cap, l->unix_socket, 0);
    s->highest = s->count;
    s->lowest = s->count;
}

/* Runs the simulated link until `until` ms. */
static void sim_run(sim *s, const model *l, int64_t until)
{
    while (s->in.now < until) {
        s->in.now += SWEEP_MS;
        double g = l->goodput(l, s->count, s->in.now);
        if (l->burst)
            g *= l->burst(l, s->count, s->in.now - s->changed_at);
        double segs = g / 9000 * SWEEP_MS / 1000;
        s->bytes += g * SWEEP_MS / 1000;
        s->segs += segs;
        s->retrans += segs * l->loss(l, s->count, s->in.now);
        s->in.bytes = (uint64_t)s->bytes;
        s->in.bytes_at = s->in.now;
        s->in.segs = (uint64_t)s->segs;
        s->in.retrans = (uint64_t)s->retrans;
        /* A link whose queue overflows has it full: its RTT is the
         * longer one then. */
        s->in.rtt_us = l->full_rtt_us && l->loss(l, s->count, s->in.now) >= HAUL__AUTO_FULL_LOSS
                           ? l->full_rtt_us
                           : l->rtt_us;
        s->in.min_rtt_us = l->rtt_us;
        s->in.unix_socket = l->unix_socket;
        s->in.demand = l->demand;
        s->in.opening = l->opening;
        s->in.joined = s->count; /* connections join at once */
        s->ms_at[s->count < 128 ? s->count : 128] += SWEEP_MS;
        unsigned before = s->count;
        s->count = haul__auto_tick(&s->a, &s->in);
        if (s->count != before)
            s->changed_at = s->in.now;
        if (s->count > s->highest)
            s->highest = s->count;
        if (s->count < s->lowest)
            s->lowest = s->count;
    }
}

TEST(auto_grows_while_goodput_grows_and_keeps_what_pays)
{
    /* 10 MB/s a connection up to 160 MB/s: 16 connections fill it. */
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .rtt_us = 50000,
               .demand = 1,
               .per_conn = 10 * MB,
               .limit = 160 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    CHECK_EQ(s.count, HAUL__AUTO_START);
    sim_run(&s, &l, 8000);
    /* 2 -> 8 (the long link's first step) -> 16 (paid in proportion)
     * -> 64 (x4: did not pay): back to 16, the best measured. */
    CHECK_GE(s.count, 16);
    CHECK_LE(s.count, 32);
    CHECK_LE(s.highest, 64);
    CHECK_EQ(s.a.state, AUTO_HOLDING);
    CHECK_GE(linear_capped(&l, s.count, 0), 160 * MB);
}

static double random_loss(const model *l, unsigned n, int64_t t)
{
    return 0.005;
}

TEST(auto_grows_faster_while_each_connection_adds_as_much)
{
    /* 0.5% random loss under a congestion control that backs off for
     * it: each connection carries 3 MB/s of a 125 MB/s link, and the RTT
     * stays the least (no queue). 8 -> 16 pays in proportion, so the next
     * step is x4: 64 within 5 s, where doubling would still be at 32
     * (each step settles for 3 round trips and is measured over
     * HAUL__AUTO_RAMP_MIN + 1 intervals of 0.5 s). */
    model l = {.goodput = linear_capped,
               .loss = random_loss,
               .rtt_us = 50000,
               .demand = 1,
               .per_conn = 3 * MB,
               .limit = 125 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 5000);
    CHECK_GE(s.highest, 64);
    /* 64 -> 128 does not pay: 64 is kept. */
    sim_run(&s, &l, 10000);
    CHECK_EQ(s.count, 64);
    CHECK_EQ(s.a.state, AUTO_HOLDING);
}

/* The first 8 of a congestion control that backs off for random loss
 * leave slow start with windows far above what the losses let them keep,
 * and carry 3 times their share for 1.4 s (under CUBIC at 50 ms with 0.5%
 * loss, 8 connections read 480-680 Mbit/s for a second, then 170-200). */
static double overshoot_plateau(const model *l, unsigned n, int64_t age)
{
    return n == 4 * HAUL__AUTO_START && age < 1400 ? 3 : 1;
}

/* The same, falling from 5 times their share to their share over 2.5 s. */
static double overshoot_decline(const model *l, unsigned n, int64_t age)
{
    if (n != 4 * HAUL__AUTO_START || age >= 2500)
        return 1;
    return 5 - 4.0 * (double)age / 2500;
}

/* 50 ms, 0.5% random loss, 3 MB/s a connection: 8 carry 24 MB/s once
 * settled, 16 carry 48. */
static void check_grows_past_an_overshoot(double (*burst)(const model *, unsigned, int64_t))
{
    model l = {.goodput = linear_capped,
               .loss = random_loss,
               .rtt_us = 50000,
               .demand = 1,
               .per_conn = 3 * MB,
               .limit = 125 * MB,
               .change_at = INT64_MAX,
               .burst = burst};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 12000);
    CHECK_GE(s.count, 32);
    CHECK_EQ(s.a.state, AUTO_HOLDING);
}

TEST(auto_measures_a_count_past_its_first_intervals)
{
    /* Judged on an interval of the plateau, 8 would read 72 MB/s, more
     * than 16 carry, and the pipe would keep 8. A step is measured over
     * HAUL__AUTO_RAMP_MIN intervals before the one it is judged on. */
    check_grows_past_an_overshoot(overshoot_plateau);
}

TEST(auto_measures_a_count_again_while_its_goodput_falls)
{
    /* After HAUL__AUTO_RAMP_MIN intervals, 8 still read 47 MB/s, as much
     * as 16 carry: a count whose goodput still falls from one interval
     * to the next is measured again, as one whose goodput still grows. */
    check_grows_past_an_overshoot(overshoot_decline);
}

TEST(auto_stays_small_where_more_connections_do_not_pay)
{
    /* One connection fills the link (5 ms, 10 Mbit/s): a step up is
     * tried once, and given back. */
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .rtt_us = 5000,
               .demand = 1,
               .per_conn = 1.25 * MB,
               .limit = 1.25 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 9000);
    CHECK_EQ(s.count, HAUL__AUTO_START);
    CHECK_EQ(s.highest, 4 * HAUL__AUTO_START);
    CHECK_EQ(s.a.state, AUTO_HOLDING);
    /* It tries again after HAUL__AUTO_REPROBE_MS, and gives it back
     * again. */
    sim_run(&s, &l, 30000);
    CHECK_EQ(s.count, HAUL__AUTO_START);
    CHECK_GE(s.a.changes, 4);
}

TEST(auto_takes_its_first_step_at_once_on_a_long_link)
{
    /* 100 ms, 10 Mbit/s: one connection would fill it, but the start
     * count would spend its first intervals in slow start. The pipe goes
     * to 8 once it knows the RTT, tries 16, finds it pays nothing, and
     * keeps 8. */
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .rtt_us = 100000,
               .demand = 1,
               .per_conn = 1.25 * MB,
               .limit = 1.25 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 40);
    CHECK_EQ(s.count, 4 * HAUL__AUTO_START);
    sim_run(&s, &l, 20000);
    CHECK_EQ(s.count, 4 * HAUL__AUTO_START);
    CHECK_EQ(s.highest, 8 * HAUL__AUTO_START);
}

TEST(auto_takes_its_first_step_while_a_session_opens_on_a_long_link)
{
    /* 200 ms: the first connect told the RTT, and a session is being
     * opened, so no message could be queued yet. The first step is
     * taken now; without a session, or on a short link, it is not. */
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .rtt_us = 200000,
               .opening = 1,
               .per_conn = 15 * MB,
               .limit = 125 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 40);
    CHECK_EQ(s.count, 4 * HAUL__AUTO_START);
    /* Opened, with nothing to send: the count stays. */
    l.opening = 0;
    sim_run(&s, &l, 10000);
    CHECK_EQ(s.count, 4 * HAUL__AUTO_START);

    model idle = l;
    sim_start(&s, &idle, 128);
    sim_run(&s, &idle, 10000);
    CHECK_EQ(s.highest, HAUL__AUTO_START);

    model lan = l;
    lan.opening = 1;
    lan.rtt_us = HAUL__AUTO_LONG_RTT_US - 1;
    sim_start(&s, &lan, 128);
    sim_run(&s, &lan, 1000);
    CHECK_EQ(s.highest, HAUL__AUTO_START);
}

TEST(auto_never_grows_while_the_application_sets_the_pace)
{
    /* More connections would pay, but the application never has more to
     * send than the connections take (a slow disk, a slow receiver). */
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .rtt_us = 50000,
               .demand = 0,
               .per_conn = 10 * MB,
               .limit = 1000 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 60000);
    CHECK_EQ(s.highest, HAUL__AUTO_START);
    CHECK_EQ(s.a.state, AUTO_MEASURING);
    CHECK_EQ(s.a.changes, 0);
}

TEST(auto_uses_at_most_four_on_a_local_link)
{
    /* Loopback: 30 us of RTT. Even a link where every connection added
     * goodput gets no more than HAUL__AUTO_LOCAL_MAX. */
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .rtt_us = 30,
               .demand = 1,
               .per_conn = 100 * MB,
               .limit = 100000 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 60000);
    CHECK_LE(s.highest, HAUL__AUTO_LOCAL_MAX);
    CHECK_EQ(s.count, HAUL__AUTO_LOCAL_MAX);
    CHECK(s.a.local);
}

TEST(auto_starts_with_one_over_a_unix_socket)
{
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .unix_socket = 1,
               .demand = 1,
               .per_conn = 100 * MB,
               .limit = 150 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    CHECK_EQ(s.count, HAUL__AUTO_START_LOCAL);
    sim_run(&s, &l, 60000);
    CHECK_LE(s.highest, HAUL__AUTO_LOCAL_MAX);
    /* 1 -> 4 paid 50%, the local cap: kept. */
    CHECK_EQ(s.count, HAUL__AUTO_LOCAL_MAX);
}

TEST(auto_respects_its_cap)
{
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .rtt_us = 50000,
               .demand = 1,
               .per_conn = 10 * MB,
               .limit = 10000 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 6);
    sim_run(&s, &l, 30000);
    CHECK_EQ(s.highest, 6);
    CHECK_EQ(s.count, 6);
    /* A dial that failed for want of descriptors lowers the cap. */
    haul__auto_cap(&s.a, 3);
    CHECK_EQ(s.a.count, 3);
    s.count = 3;
    sim_run(&s, &l, 60000);
    CHECK_EQ(s.count, 3);
}

/* Losses: above 8 connections, a queue overflows: more retransmissions
 * and less goodput, from the time the link changes on. */
static double overflow_goodput(const model *l, unsigned n, int64_t t)
{
    double g = linear_capped(l, n, t);
    return t >= l->change_at && n > 8 ? g / 2 : g;
}

static double overflow_loss(const model *l, unsigned n, int64_t t)
{
    return t >= l->change_at && n > 8 ? 0.05 : 0.001;
}

TEST(auto_shrinks_when_losses_grow_and_goodput_falls)
{
    model l = {.goodput = overflow_goodput,
               .loss = overflow_loss,
               .rtt_us = 50000,
               .demand = 1,
               .per_conn = 10 * MB,
               .limit = 160 * MB,
               .change_at = 12000,
               .per_conn_after = 10 * MB,
               .limit_after = 160 * MB};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 12000);
    unsigned grown = s.count;
    CHECK_GT(grown, 8);
    /* Halved within a few intervals, and kept: it does as well. (The
     * first try may be measured against an interval that straddled the
     * change, and undone: the next comes HAUL__AUTO_REPROBE_MS later.) */
    sim_run(&s, &l, 12000 + 2 * HAUL__AUTO_REPROBE_MS);
    CHECK_LT(s.count, grown);
    CHECK_LE(s.count, 8);
    sim_run(&s, &l, 60000);
    CHECK_LE(s.count, 8);
}

TEST(auto_shrink_that_does_worse_is_undone)
{
    /* Losses grow at every count (a lossier path), and goodput falls at
     * every count: fewer connections do worse still, so the count goes
     * back up. */
    model l = {.goodput = linear_capped,
               .loss = overflow_loss,
               .rtt_us = 50000,
               .demand = 1,
               .per_conn = 10 * MB,
               .limit = 160 * MB,
               .change_at = 8000,
               .per_conn_after = 2 * MB,
               .limit_after = 80 * MB};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 8000);
    unsigned grown = s.count;
    CHECK_GT(grown, 8);
    /* Once the link changed, no step goes beyond one up from there. */
    s.highest = grown;
    sim_run(&s, &l, 12000);
    CHECK_EQ(s.count, grown);
    CHECK_LT(s.highest, 2 * grown + 1);
}

TEST(auto_keeps_a_step_down_once_losses_are_gone)
{
    /* Above 8 connections the queue overflows: a step down to 8 carries
     * as much without losses, and fewer could only carry less. */
    model l = {.goodput = overflow_goodput,
               .loss = overflow_loss,
               .rtt_us = 50000,
               .demand = 1,
               .per_conn = 10 * MB,
               .limit = 160 * MB,
               .change_at = 8000,
               .per_conn_after = 10 * MB,
               .limit_after = 160 * MB};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 8000);
    CHECK_GT(s.count, 8);
    s.lowest = s.count;
    sim_run(&s, &l, 8000 + 3 * HAUL__AUTO_REPROBE_MS);
    CHECK_EQ(s.count, 8);
    CHECK_EQ(s.lowest, 8);
}

/* A link that BBR fills: each connection adds per_conn up to the limit;
 * beyond it the bottleneck's queue overflows, losses reach a tenth of
 * the segments, the RTT grows by the queue, and goodput falls a little
 * (messages wait for their retransmitted chunks). */
static double full_goodput(const model *l, unsigned n, int64_t t)
{
    return l->per_conn * n > l->limit ? l->limit * 0.8 : l->per_conn * n;
}

static double full_loss(const model *l, unsigned n, int64_t t)
{
    return l->per_conn * n > l->limit ? 0.10 : 0;
}

/* Connections from 16 on lose a seventh of their segments, while the RTT
 * stays the least: losses a queue does not explain by filling. */
static double loss_from_16(const model *l, unsigned n, int64_t t)
{
    return n >= 16 ? 0.15 : 0;
}

TEST(auto_doubles_after_a_step_that_raised_losses)
{
    /* 200 ms: 8 connections measured at 60 MB/s while they still ramp,
     * 16 at 120 MB/s with 15% of segments retransmitted. The step paid
     * in proportion, but its losses say the link is near its limit: the
     * next is 32, not 64, and 32 pays nothing. */
    model l = {.goodput = linear_capped,
               .loss = loss_from_16,
               .rtt_us = 200000,
               .demand = 1,
               .per_conn = 7.5 * MB,
               .limit = 125 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 30000);
    CHECK_EQ(s.highest, 32);
    /* The best measured, whether or not a periodic try is under way. */
    CHECK_EQ(s.a.best.count, 16);
}

TEST(auto_holds_a_count_that_fills_the_link)
{
    /* 50 ms, 1 Gbit/s, 60 MB/s a connection: the 8 of the long link's
     * first step overflow the queue. More could not carry more: the
     * count stays, and no step up is tried while the link stays full. */
    model l = {.goodput = full_goodput,
               .loss = full_loss,
               .rtt_us = 50000,
               .full_rtt_us = 80000,
               .demand = 1,
               .per_conn = 60 * MB,
               .limit = 125 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 3 * HAUL__AUTO_REPROBE_MS);
    CHECK_EQ(s.highest, 4 * HAUL__AUTO_START);
    CHECK_EQ(s.count, 4 * HAUL__AUTO_START);
    CHECK_EQ(s.a.state, AUTO_HOLDING);
}

TEST(auto_judges_at_once_a_step_up_that_fills_the_link)
{
    /* 200 ms, 1 Gbit/s, 15 MB/s a connection: 8 carry 120 MB/s without
     * losses, 16 overflow the queue and carry less. The step to 16 is
     * given up after its first interval, not measured while it ramps. */
    model l = {.goodput = full_goodput,
               .loss = full_loss,
               .rtt_us = 200000,
               .full_rtt_us = 260000,
               .demand = 1,
               .per_conn = 15 * MB,
               .limit = 125 * MB,
               .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 8000);
    CHECK_EQ(s.highest, 16);
    CHECK_EQ(s.count, 8);
    /* Settling (3 round trips, of the full queue's RTT) and one
     * interval (5), and the sweeps that see them end. */
    CHECK_GT(s.ms_at[16], 0);
    CHECK_LE(s.ms_at[16], (HAUL__AUTO_SETTLE_RTTS + HAUL__AUTO_INTERVAL_RTTS) * 260 + 2 * SWEEP_MS);
}

TEST(auto_tries_again_when_the_link_gets_better)
{
    /* 4 connections fill the link at first; after 20 s it carries 8
     * times more, and the count follows at the next probe. */
    model l = {.goodput = linear_capped,
               .loss = no_loss,
               .rtt_us = 50000,
               .demand = 1,
               .per_conn = 10 * MB,
               .limit = 40 * MB,
               .change_at = 20000,
               .per_conn_after = 10 * MB,
               .limit_after = 320 * MB};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 20000);
    CHECK_LE(s.count, 8);
    sim_run(&s, &l, 20000 + HAUL__AUTO_REPROBE_MS + 5000);
    CHECK_GE(s.count, 32);
}

static double nothing(const model *l, unsigned n, int64_t t)
{
    return 0;
}

TEST(auto_never_grows_while_nothing_is_carried)
{
    /* A pipe that lost its connections, with messages waiting: its
     * intervals carry nothing, which says nothing of any count. Judged,
     * every step up would "pay" against nothing, up to the cap. */
    model l = {
        .goodput = nothing, .loss = no_loss, .rtt_us = 50000, .demand = 1, .change_at = INT64_MAX};
    sim s;
    sim_start(&s, &l, 128);
    sim_run(&s, &l, 4 * HAUL__AUTO_REPROBE_MS);
    CHECK_EQ(s.highest, 4 * HAUL__AUTO_START);
    CHECK(s.a.last_limited);
}

TEST(auto_state_names)
{
    CHECK_STR_EQ(haul__auto_state_name(AUTO_HOLDING), "AUTO_HOLDING");
    CHECK_STR_EQ(haul__auto_event_name(AEV_SHRINK), "AEV_SHRINK");
    CHECK_STR_EQ(haul__auto_state_name(99), "AUTO_?");
}
