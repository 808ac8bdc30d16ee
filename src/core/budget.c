/*
 * budget.c - the engine's memory budget: its counters, the pool of receive
 * bodies, and how window slots and sends share it (docs/design.md, "The
 * memory budget").
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/budget.h"
#include "core/engine.h"

/* A pooled body keeps the pool's link in its own first bytes. The pool
 * is a stack: the body freed last is taken first, so the bodies in use go
 * round near its top, and its bottom holds those that have been idle
 * longest (freed_at falls from top to bottom). */
struct haul__pooled_body {
    haul__pooled_body *next;
    size_t cap;
    int64_t freed_at;
};

/* How often the sweep looks for idle bodies. */
#define POOL_TRIM_EVERY_MS 250

/* ---- the counters -------------------------------------------------------- */

haul__budget *haul__budget_new(uint64_t limit, uint64_t reserve, int kick_fd)
{
    haul__budget *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->limit = limit;
    b->rx_limit = limit > reserve ? limit - reserve : 0;
    atomic_init(&b->refs, 1);
    pthread_mutex_init(&b->mu, NULL);
    b->kick_fd = kick_fd;
    return b;
}

void haul__budget_unref(haul__budget *b)
{
    if (b == NULL || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    haul__budget_trim(b, 0, 1);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

void haul__budget_detach(haul__budget *b)
{
    pthread_mutex_lock(&b->mu);
    b->kick_fd = -1;
    pthread_mutex_unlock(&b->mu);
}

uint64_t haul__budget_free(const haul__budget *b, int rx)
{
    uint64_t used = atomic_load(&b->used);
    uint64_t free_bytes = used < b->limit ? b->limit - used : 0;
    if (rx) {
        uint64_t rx_used = atomic_load(&b->rx_used);
        uint64_t rx_free = rx_used < b->rx_limit ? b->rx_limit - rx_used : 0;
        if (rx_free < free_bytes)
            free_bytes = rx_free;
    }
    return free_bytes;
}

/* Only callers holding the engine's mutex take, and bytes are only ever
 * given back meanwhile: what was free when looked at stays free. */
int haul__budget_take(haul__budget *b, uint64_t bytes, int rx)
{
    if (bytes > haul__budget_free(b, rx))
        return -1;
    uint64_t now = atomic_fetch_add(&b->used, bytes) + bytes;
    if (rx)
        atomic_fetch_add(&b->rx_used, bytes);
    if (now > atomic_load(&b->peak))
        atomic_store(&b->peak, now);
    return 0;
}

void haul__budget_kick(haul__budget *b)
{
    if (atomic_exchange(&b->kicked, 1) != 0)
        return;
    pthread_mutex_lock(&b->mu);
    if (b->kick_fd >= 0) {
        uint64_t one = 1;
        if (write(b->kick_fd, &one, sizeof(one)) < 0) {
            /* The eventfd is far from overflow. */
        }
    }
    pthread_mutex_unlock(&b->mu);
}

void haul__budget_give(haul__budget *b, uint64_t bytes, int rx)
{
    if (bytes == 0)
        return;
    atomic_fetch_sub(&b->used, bytes);
    if (rx)
        atomic_fetch_sub(&b->rx_used, bytes);
    if (atomic_load(&b->waiting))
        haul__budget_kick(b);
}

/* ---- the pool of receive bodies ------------------------------------------- */

static size_t page_round(uint64_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (size_t)((len + page - 1) / page * page);
}

uint8_t *haul__budget_body(haul__budget *b, uint64_t len, size_t *cap)
{
    if (len < HAUL__BODY_MAP_MIN) {
        *cap = 0;
        return malloc((size_t)len);
    }
    size_t want = page_round(len);
    /* A pooled body fits if it is no more than an eighth larger: the
     * budget counts the message's length, and a much larger body would
     * hold memory it does not count. */
    pthread_mutex_lock(&b->mu);
    haul__pooled_body **pp = &b->pool;
    for (; *pp != NULL; pp = &(*pp)->next) {
        size_t have = (*pp)->cap;
        if (have >= want && have - want <= want / 8)
            break;
    }
    haul__pooled_body *body = *pp;
    if (body != NULL) {
        *pp = body->next;
        b->pooled -= body->cap;
    }
    pthread_mutex_unlock(&b->mu);
    if (body != NULL) {
        *cap = body->cap;
        return (uint8_t *)body;
    }
    void *p = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    *cap = want;
    return p;
}

/* A body goes back to the pool while the pool and the bytes counted stay
 * within the limit together, so that the memory of bodies, pooled or in
 * use, stays within the budget. */
void haul__budget_body_free(haul__budget *b, uint8_t *p, size_t cap)
{
    if (p == NULL)
        return;
    if (cap == 0) {
        free(p);
        return;
    }
    pthread_mutex_lock(&b->mu);
    if (b->pooled + cap + atomic_load(&b->used) <= b->limit) {
        haul__pooled_body *body = (haul__pooled_body *)p;
        body->cap = cap;
        body->freed_at = haul__now_ms();
        body->next = b->pool;
        b->pool = body;
        b->pooled += cap;
        p = NULL;
    }
    pthread_mutex_unlock(&b->mu);
    if (p != NULL)
        munmap(p, cap);
}

/* Unmaps the bodies that nobody took for HAUL__POOL_IDLE_MS: the pool
 * shrinks to what the traffic of the last second reuses, and to nothing
 * when the engine is idle. */
int64_t haul__budget_trim(haul__budget *b, int64_t now, int force)
{
    pthread_mutex_lock(&b->mu);
    haul__pooled_body *list = NULL;
    if (force) {
        list = b->pool;
        b->pool = NULL;
        b->pooled = 0;
    } else if (b->pool != NULL && now - b->trimmed_at >= POOL_TRIM_EVERY_MS) {
        b->trimmed_at = now;
        haul__pooled_body **pp = &b->pool;
        while (*pp != NULL && now - (*pp)->freed_at < HAUL__POOL_IDLE_MS)
            pp = &(*pp)->next;
        list = *pp;
        *pp = NULL;
        for (haul__pooled_body *x = list; x != NULL; x = x->next)
            b->pooled -= x->cap;
    }
    int64_t again = b->pool != NULL ? b->trimmed_at + POOL_TRIM_EVERY_MS : INT64_MAX;
    pthread_mutex_unlock(&b->mu);
    while (list != NULL) {
        haul__pooled_body *next = list->next;
        munmap(list, list->cap);
        list = next;
    }
    return again;
}

/* ---- principals ------------------------------------------------------------ */

/* A principal with sessions that hold or wait for receive memory: the
 * first level of the sharing. */
struct haul__mem_principal {
    haul__list link;
    unsigned sessions; /* its sessions that count */
    uint64_t used;     /* what they hold: slots and messages */
    char name[HAUL__PRINCIPAL_MAX + 1];
};

static uint64_t unit_of(const haul_session *s)
{
    return s->peer_max_message ? s->peer_max_message : 1;
}

/* The session counts in its principal's share from its first want of
 * memory on. Without memory for the principal's entry, it counts as a
 * principal of its own that is not entered: it still gets its floor. */
static void mem_activate(haul_session *s)
{
    if (s->mem_principal != NULL)
        return;
    haul_engine *e = s->engine;
    haul__list *p;
    haul__list_each(p, &e->mem_principals)
    {
        struct haul__mem_principal *x = HAUL__CONTAINER(p, struct haul__mem_principal, link);
        if (strcmp(x->name, s->principal) == 0) {
            x->sessions++;
            s->mem_principal = x;
            return;
        }
    }
    struct haul__mem_principal *x = calloc(1, sizeof(*x));
    if (x == NULL)
        return;
    memcpy(x->name, s->principal, sizeof(x->name));
    x->sessions = 1;
    haul__list_add_tail(&e->mem_principals, &x->link);
    e->mem_nprincipals++;
    s->mem_principal = x;
}

/* A session that holds nothing and waits for nothing no longer counts. */
static void mem_settle(haul_session *s)
{
    struct haul__mem_principal *x = s->mem_principal;
    if (x == NULL || s->mem_slots != 0 || s->mem_held != 0 || (s->mem_wait & HAUL__MEM_WAIT_RX))
        return;
    s->mem_principal = NULL;
    if (--x->sessions == 0) {
        haul__list_del(&x->link);
        s->engine->mem_nprincipals--;
        free(x);
    }
}

/* A session that could not have its principal's entry (memory ran out)
 * may join it later with bytes the entry never counted: the entry's
 * count stops at 0 rather than wrap. */
static void mem_account(haul_session *s, uint64_t plus, uint64_t minus)
{
    struct haul__mem_principal *x = s->mem_principal;
    if (x == NULL)
        return;
    x->used += plus;
    x->used = x->used > minus ? x->used - minus : 0;
}

/* ---- waiting ---------------------------------------------------------------- */

static void wait_join(haul_session *s, unsigned how)
{
    haul_engine *e = s->engine;
    if (how & HAUL__MEM_WAIT_RX)
        mem_activate(s);
    how &= ~s->mem_wait;
    e->mem_rx_waiting += (how & HAUL__MEM_WAIT_RX) != 0;
    e->mem_tx_waiting += (how & HAUL__MEM_WAIT_TX) != 0;
    s->mem_wait |= how;
    if (!haul__list_linked(&s->mem_link))
        haul__list_add_tail(&e->mem_waiters, &s->mem_link);
    atomic_store(&e->budget->waiting, 1);
}

static void wait_leave(haul_session *s, unsigned how)
{
    haul_engine *e = s->engine;
    how &= s->mem_wait;
    e->mem_rx_waiting -= (how & HAUL__MEM_WAIT_RX) != 0;
    e->mem_tx_waiting -= (how & HAUL__MEM_WAIT_TX) != 0;
    s->mem_wait &= ~how;
    if (s->mem_wait == 0 && haul__list_linked(&s->mem_link)) {
        haul__list_del(&s->mem_link);
        if (haul__list_empty(&e->mem_waiters))
            atomic_store(&e->budget->waiting, 0);
    }
    mem_settle(s);
}

/* ---- window slots -------------------------------------------------------------- */

enum { GRANT_OK, GRANT_SHARE, GRANT_MEMORY };

/* A session's first grant under a budget is at most this many slots; the
 * most it may ever have outstanding is the most a window may hold. */
#define HAUL__MEM_FIRST_SLOTS 2
#define HAUL__MEM_MAX_SLOTS 65536

/*
 * How many of `want` new slots the session may have now, within its share
 * and what is free (mu held). Its share: the receive budget divided
 * between the principals that hold or want receive memory, and a
 * principal's part between its sessions that do; never less than one
 * unit, and the principal's part never less than one unit either.
 * *why tells what held it back.
 */
static uint64_t slots_allowed(haul_session *s, uint64_t want, int *why)
{
    haul_engine *e = s->engine;
    haul__budget *b = e->budget;
    uint64_t u = unit_of(s);
    struct haul__mem_principal *x = s->mem_principal;
    uint64_t principals = e->mem_nprincipals + (x == NULL);
    uint64_t part = b->rx_limit / (principals ? principals : 1);
    if (part < u)
        part = u;
    uint64_t share = part / (x ? x->sessions : 1);
    if (share < u)
        share = u;
    uint64_t mine = s->mem_slots * u + s->mem_held;
    uint64_t theirs = x ? x->used : mine;
    uint64_t room = share > mine ? (share - mine) / u : 0;
    uint64_t proom = part > theirs ? (part - theirs) / u : 0;
    if (proom < room)
        room = proom;
    /* Slots outstanding grow with use, as a congestion window does: a
     * slot granted stays reserved until its message comes (a right edge
     * never moves back), so a session whose peer has little to send
     * must not sit on a large share of the budget. */
    uint64_t croom = s->mem_cwnd > s->mem_slots ? s->mem_cwnd - s->mem_slots : 0;
    if (croom < room)
        room = croom;
    if (room == 0) {
        *why = GRANT_SHARE;
        return 0;
    }
    uint64_t n = haul__budget_free(b, 1) / u;
    if (n > room)
        n = room;
    if (n > want)
        n = want;
    *why = n == 0 ? GRANT_MEMORY : GRANT_OK;
    return n;
}

/* Whether the session's window may grow now: it receives, and a client
 * knows the server's unit (from its SYNC_ACK). */
static int may_grant(const haul_session *s)
{
    if (s->peer_done)
        return 0;
    switch (s->state) {
    case CE_SS_SESSION_READY:
    case CE_SS_APP_CONFIRM_ACCEPT_ACK:
    case CE_SS_SENDING_APP_SESSION_ACK:
    case CE_SS_APP_CLOSE_SESSION:
    case CE_SS_SENDING_FIN:
        return 1;
    default:
        return 0;
    }
}

/*
 * The right edge the session may advertise, given the one its input queue
 * allows (mu held): new slots are reserved at the unit, within the
 * session's share and what is free; sessions that wait for memory are
 * served first, in the order they began to wait (haul__mem_serve), so a
 * session that finds others waiting waits behind them. A session that
 * gets nothing waits when it holds nothing, or when memory, not its
 * share, held it back.
 */
uint64_t haul__mem_grant(haul_session *s, uint64_t right)
{
    haul_engine *e = s->engine;
    if (right <= s->rcv_right || !may_grant(s)) {
        /* Its own input queue holds it back, or it receives no more: it
         * needs no memory now. */
        if (s->mem_wait & HAUL__MEM_WAIT_RX)
            wait_leave(s, HAUL__MEM_WAIT_RX);
        return s->rcv_right;
    }
    if (e->mem_serving != s && !(s->mem_wait & HAUL__MEM_WAIT_RX) && e->mem_rx_waiting) {
        wait_join(s, HAUL__MEM_WAIT_RX);
        haul__budget_kick(e->budget);
        return s->rcv_right;
    }
    if (e->mem_serving != s && (s->mem_wait & HAUL__MEM_WAIT_RX))
        return s->rcv_right; /* its turn comes in haul__mem_serve */
    mem_activate(s);
    if (s->mem_cwnd == 0)
        s->mem_cwnd = HAUL__MEM_FIRST_SLOTS;
    int why;
    uint64_t n = slots_allowed(s, right - s->rcv_right, &why);
    if (n == 0) {
        if (why == GRANT_MEMORY || (s->mem_slots == 0 && s->mem_held == 0))
            wait_join(s, HAUL__MEM_WAIT_RX);
        else
            wait_leave(s, HAUL__MEM_WAIT_RX);
        return s->rcv_right;
    }
    uint64_t u = unit_of(s);
    if (haul__budget_take(e->budget, n * u, 1) != 0)
        return s->rcv_right; /* cannot happen: slots_allowed looked */
    s->mem_slots += n;
    mem_account(s, n * u, 0);
    wait_leave(s, HAUL__MEM_WAIT_RX);
    return s->rcv_right + n;
}

/* A message's first chunk arrived (mu held): its slot becomes the
 * message, which counts its cost from now on. */
void haul__mem_rx_begin(haul_session *s, haul_message *m, uint64_t cost)
{
    haul__budget *b = s->engine->budget;
    uint64_t u = unit_of(s);
    /* Each slot used earns one more: the slots outstanding double with
     * every round trip while the peer fills them. */
    if (s->mem_cwnd < HAUL__MEM_MAX_SLOTS)
        s->mem_cwnd++;
    if (s->mem_slots > 0) {
        s->mem_slots--;
        /* The cost is within the unit: the frame was checked against
         * the peer's max_message. */
        haul__budget_give(b, u - cost, 1);
        mem_account(s, cost, u);
    } else {
        /* A slot granted before the budget counted it (none should be):
         * the message counts anyway, even past the limit. */
        atomic_fetch_add(&b->used, cost);
        atomic_fetch_add(&b->rx_used, cost);
        mem_activate(s);
        mem_account(s, cost, 0);
    }
    s->mem_held += cost;
    atomic_fetch_add(&b->refs, 1);
    m->budget = b;
    m->charge = cost;
    m->charge_rx = 1;
}

/* A received message leaves the session's queues (mu held): taken by the
 * application or dropped. It still counts in the engine until freed. */
void haul__mem_rx_leave(haul_session *s, haul_message *m)
{
    if (s == NULL || !m->charge_rx || m->mem_left)
        return;
    m->mem_left = 1;
    s->mem_held -= m->charge;
    mem_account(s, 0, m->charge);
    mem_settle(s);
}

/* Nothing more will be received or sent on the session (mu held): its
 * unused slots and its send reservation go back, and it waits no more.
 * With destroy, the session goes: messages it still counts leave it. */
void haul__mem_session_end(haul_session *s, int destroy)
{
    haul_engine *e = s->engine;
    if (e->budget == NULL)
        return;
    uint64_t u = unit_of(s);
    if (s->mem_slots) {
        mem_account(s, 0, s->mem_slots * u);
        haul__budget_give(e->budget, s->mem_slots * u, 1);
        s->mem_slots = 0;
    }
    if (s->mem_send) {
        haul__budget_give(e->budget, s->mem_send, 0);
        s->mem_send = 0;
    }
    if (destroy && s->mem_held) {
        mem_account(s, 0, s->mem_held);
        s->mem_held = 0;
    }
    wait_leave(s, HAUL__MEM_WAIT_RX | HAUL__MEM_WAIT_TX);
}

/* The engine stops (mu held, every session gone). */
void haul__mem_fini(haul_engine *e)
{
    while (!haul__list_empty(&e->mem_principals)) {
        haul__list *p = haul__list_first(&e->mem_principals);
        haul__list_del(p);
        free(HAUL__CONTAINER(p, struct haul__mem_principal, link));
    }
    e->mem_nprincipals = 0;
    if (e->budget != NULL) {
        haul__budget_detach(e->budget);
        haul__budget_unref(e->budget);
        e->budget = NULL;
    }
}

/* ---- sends ------------------------------------------------------------------------- */

/*
 * Whether a send of `cost` bytes may be counted now (mu held); with take,
 * counts it. A session that was served after a refused send has memory
 * set aside for it. Sends wait behind sends that were refused before
 * them, and leave room for the receive slot that waits first for memory,
 * so that neither side starves the other. A refused send makes the
 * session wait: it gets HAUL_EV_WINDOW_OPENED when memory is set aside
 * for it.
 */
int haul__mem_send(haul_session *s, uint64_t cost, int take)
{
    haul_engine *e = s->engine;
    haul__budget *b = e->budget;
    if (s->mem_send >= cost) {
        if (take) {
            /* The rest of what was set aside goes back. */
            haul__budget_give(b, s->mem_send - cost, 0);
            s->mem_send = 0;
        }
        return 0;
    }
    /* A session that waits already is served in its turn. */
    if (e->mem_tx_waiting == 0 && cost + e->mem_rx_need <= haul__budget_free(b, 0)) {
        if (take) {
            haul__budget_take(b, cost, 0);
            wait_leave(s, HAUL__MEM_WAIT_TX);
        }
        return 0;
    }
    if (!(s->mem_wait & HAUL__MEM_WAIT_TX) || cost > s->mem_send_want)
        s->mem_send_want = cost;
    wait_join(s, HAUL__MEM_WAIT_TX);
    /* What holds it back may have gone without a pass over the waiters
     * since (a receive slot that waited first, say, whose session ended). */
    haul__budget_kick(b);
    return HAUL_EQUEUEFULL;
}

/* ---- serving the sessions that wait ------------------------------------------------ */

/*
 * Memory came back, or a session began to wait (mu held): the waiting
 * sessions are served in the order they began to wait. A receive slot
 * that memory cannot cover stops the receive side there, and a send that
 * cannot be covered stops the send side; a session held back by its
 * share alone lets those behind it pass, since memory held by its own
 * principal's sessions is what it waits for.
 */
void haul__mem_serve(haul_engine *e)
{
    haul__budget *b = e->budget;
    if (b == NULL)
        return;
    int rx_blocked = 0, tx_blocked = 0;
    e->mem_rx_need = 0;
    haul__list *p, *tmp;
    haul__list_each_safe(p, tmp, &e->mem_waiters)
    {
        haul_session *s = HAUL__CONTAINER(p, haul_session, mem_link);
        if ((s->mem_wait & HAUL__MEM_WAIT_TX) && !tx_blocked) {
            uint64_t want = s->mem_send_want;
            if (want + e->mem_rx_need <= haul__budget_free(b, 0) &&
                haul__budget_take(b, want, 0) == 0) {
                s->mem_send += want;
                wait_leave(s, HAUL__MEM_WAIT_TX);
                haul__session_mem_opened(s);
            } else {
                tx_blocked = 1;
            }
        }
        if ((s->mem_wait & HAUL__MEM_WAIT_RX) && !rx_blocked) {
            if (!may_grant(s)) {
                wait_leave(s, HAUL__MEM_WAIT_RX);
            } else {
                e->mem_serving = s;
                uint64_t before = s->rcv_right;
                haul__session_mem_granted(s);
                e->mem_serving = NULL;
                if (s->rcv_right == before && (s->mem_wait & HAUL__MEM_WAIT_RX)) {
                    int why;
                    (void)slots_allowed(s, 1, &why);
                    if (why == GRANT_MEMORY && haul__budget_free(b, 0) < unit_of(s)) {
                        /* Memory as a whole, not the receive part of
                         * it: sends leave it its unit. */
                        rx_blocked = 1;
                        e->mem_rx_need = unit_of(s);
                    } else if (why == GRANT_MEMORY) {
                        rx_blocked = 1;
                    }
                }
            }
        }
        if (rx_blocked && tx_blocked)
            break;
    }
    if (haul__list_empty(&e->mem_waiters))
        atomic_store(&b->waiting, 0);
}
