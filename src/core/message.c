/*
 * message.c - message objects: their bodies, their chunk plans and their
 * references.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/engine.h"

/* Creates a message of len bytes; with allocate, its body too (len may be
 * 0, which allocates nothing). Returns NULL when memory is short. */
haul_message *haul__message_new(uint64_t len, int allocate)
{
    haul_message *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->len = len;
    m->fd = -1;
    m->refs = 1;
    m->kind = HAUL__BODY_OWNED;
    haul__list_init(&m->rx_waiters);
    if (allocate && len > 0) {
        m->data = malloc(len);
        if (m->data == NULL) {
            free(m);
            return NULL;
        }
    }
    return m;
}

/* Cuts the message into chunks of the given size for sending. A message of
 * 0 bytes is one empty chunk, so that it travels like any other. */
void haul__message_plan(haul_message *m, uint32_t chunk)
{
    m->chunk = chunk;
    m->nchunks = m->len == 0 ? 1 : (uint32_t)((m->len + chunk - 1) / chunk);
    m->unsent = m->nchunks;
    m->next_chunk = 0;
}

static void message_destroy(haul_message *m)
{
    haul__budget *b = m->budget;
    uint64_t charge = m->charge;
    int rx = m->charge_rx;
    switch (m->kind) {
    case HAUL__BODY_OWNED:
        /* A mapped body goes back to the budget's pool when the message
         * counts in it (a received one whose first chunk was taken in). */
        if (m->body_cap != 0 && b != NULL)
            haul__budget_body_free(b, m->data, m->body_cap);
        else if (m->body_cap != 0)
            munmap(m->data, m->body_cap);
        else
            free(m->data);
        break;
    case HAUL__BODY_BORROWED:
        if (m->release)
            m->release(m->data, m->release_arg);
        break;
    case HAUL__BODY_FILE:
        if (m->fd >= 0)
            close(m->fd);
        break;
    }
    free(m->carrier);
    free(m->tx);
    free(m->rx_state);
    free(m->rx_writing);
    free(m);
    /* Its bytes leave the engine's budget (from whichever thread drops the
     * last reference: the application's haul_message_free(), or an engine
     * thread), and waiting sessions may be served. */
    if (b != NULL) {
        haul__budget_give(b, charge, rx);
        haul__budget_unref(b);
    }
}

void haul__message_unref(haul_message *m)
{
    if (m != NULL && --m->refs == 0)
        message_destroy(m);
}

const void *haul_message_data(const haul_message *m)
{
    return m->data;
}

size_t haul_message_len(const haul_message *m)
{
    return (size_t)m->len;
}

uint64_t haul_message_seq(const haul_message *m)
{
    return m->seq;
}

/* A message the application took is no longer the engine's: its session
 * may be gone, so freeing touches nothing but the message. It drops the
 * application's reference only: a connection that was reading a copy of
 * one of its chunks when it closed (from another thread, say at its idle
 * deadline) holds one until its own thread frees it, and the bytes must
 * live until then. */
void haul_message_free(haul_message *m)
{
    haul__message_unref(m);
}
