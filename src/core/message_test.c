/*
 * message_test.c - the references of a message.
 *
 * A received message is referenced by its session's queues and by every
 * connection reading a copy of one of its chunks. A connection that
 * closes while it reads keeps its reference until its thread frees it;
 * when the connection was closed from another thread (an idle deadline),
 * another copy of the chunk can complete the message in between, and the
 * application can take it with haul_recv() and free it. Its bytes must
 * then live until the connection lets go of them.
 */
#include <stdint.h>

#include "core/engine.h"
#include "harness.h"

static int released;

static void count_release(void *buf, void *arg)
{
    released++;
}

TEST(message_freed_by_the_application_outlives_a_connection_reference)
{
    static uint8_t body[64];
    haul_message *m = haul__message_new(sizeof(body), 0);
    CHECK(m != NULL);
    m->kind = HAUL__BODY_BORROWED;
    m->data = body;
    m->release = count_release;
    /* The reference of a connection still reading a copy of a chunk (as
     * haul__session_chunk_begin takes it); the message's own is the
     * application's after haul_recv(). */
    m->refs++;
    haul_message_free(m);
    CHECK_EQ(released, 0);
    /* The connection is freed: its reference goes, and the message with
     * it. */
    haul__message_unref(m);
    CHECK_EQ(released, 1);
}
