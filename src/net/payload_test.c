/*
 * payload_test.c - the decoders of control-frame payloads: what they
 * accept re-encodes to the same bytes, and every malformed SYNC, HELLO
 * and ERROR is refused or made harmless.
 */
#include <string.h>

#include "harness.h"
#include "haul.h"
#include "net/payload.h"

TEST(sync_request_round_trips)
{
    static const uint8_t context[] = {0, 1, 2, 0xff};
    uint8_t buf[64];
    size_t n = haul__sync_size("web1", sizeof(context));
    CHECK_EQ(n, 2 + 4 + sizeof(context));
    haul__sync_encode("web1", context, sizeof(context), buf);
    haul__sync_request r;
    CHECK_OK(haul__sync_decode(buf, n, &r));
    CHECK_STR_EQ(r.principal, "web1");
    CHECK_EQ(r.context_len, sizeof(context));
    CHECK(r.context == buf + 6);
    CHECK(memcmp(r.context, context, sizeof(context)) == 0);

    /* No context at all. */
    haul__sync_encode("a", NULL, 0, buf);
    CHECK_OK(haul__sync_decode(buf, 3, &r));
    CHECK_STR_EQ(r.principal, "a");
    CHECK_EQ(r.context_len, 0);
    CHECK(r.context == NULL);
}

TEST(sync_limits_are_kept_at_their_edges)
{
    static uint8_t buf[2 + HAUL__PRINCIPAL_MAX + HAUL__CONTEXT_MAX + 1];
    memset(buf, 'p', sizeof(buf));
    haul__sync_request r;
    buf[0] = HAUL__PRINCIPAL_MAX & 0xff;
    buf[1] = HAUL__PRINCIPAL_MAX >> 8;
    CHECK_OK(haul__sync_decode(buf, 2 + HAUL__PRINCIPAL_MAX + HAUL__CONTEXT_MAX, &r));
    CHECK_EQ(strlen(r.principal), HAUL__PRINCIPAL_MAX);
    CHECK_EQ(r.context_len, HAUL__CONTEXT_MAX);
    /* One byte of context too many. */
    CHECK_EQ(haul__sync_decode(buf, sizeof(buf), &r), HAUL_EPROTO);
    /* A principal one byte too long. */
    buf[0] = (HAUL__PRINCIPAL_MAX + 1) & 0xff;
    buf[1] = (HAUL__PRINCIPAL_MAX + 1) >> 8;
    CHECK_EQ(haul__sync_decode(buf, 2 + HAUL__PRINCIPAL_MAX + 1, &r), HAUL_EPROTO);
}

TEST(malformed_sync_is_refused)
{
    haul__sync_request r;
    static const uint8_t empty_principal[] = {0, 0, 'x'};
    CHECK_EQ(haul__sync_decode(empty_principal, sizeof(empty_principal), &r), HAUL_EPROTO);
    /* A length that runs past the payload. */
    static const uint8_t past_end[] = {200, 0, 'a', 'b', 'c', 'd'};
    CHECK_EQ(haul__sync_decode(past_end, sizeof(past_end), &r), HAUL_EPROTO);
    static const uint8_t one_past[] = {3, 0, 'a', 'b'};
    CHECK_EQ(haul__sync_decode(one_past, sizeof(one_past), &r), HAUL_EPROTO);
    static const uint8_t too_short[] = {1};
    CHECK_EQ(haul__sync_decode(too_short, sizeof(too_short), &r), HAUL_EPROTO);
    CHECK_EQ(haul__sync_decode(too_short, 0, &r), HAUL_EPROTO);
    CHECK_EQ(r.principal[0], '\0');
}

/* Found by fuzz/payload_fuzz: "alice\0bob" decoded as "alice", which
 * encodes to other bytes than it was read from. */
TEST(sync_principal_with_nul_is_refused)
{
    static const uint8_t payload[] = {9, 0, 'a', 'l', 'i', 'c', 'e', 0, 'b', 'o', 'b'};
    haul__sync_request r;
    CHECK_EQ(haul__sync_decode(payload, sizeof(payload), &r), HAUL_EPROTO);
    static const uint8_t leading[] = {1, 0, 0};
    CHECK_EQ(haul__sync_decode(leading, sizeof(leading), &r), HAUL_EPROTO);
    /* A NUL in the context is data like any other byte. */
    static const uint8_t in_context[] = {1, 0, 'a', 0, 0};
    CHECK_OK(haul__sync_decode(in_context, sizeof(in_context), &r));
    CHECK_EQ(r.context_len, 2);
}

TEST(sync_limits_take_the_smaller_max_message)
{
    haul__frame f = {.type = HAUL__F_SYNC_ACK, .offset = 1 << 20, .total = 123};
    haul__sync_limits lim;
    haul__sync_limits_decode(&f, 64u << 20, &lim);
    CHECK_EQ(lim.peer_max_message, 1u << 20);
    CHECK_EQ(lim.peer_input_queue, 123);
    f.offset = UINT64_MAX;
    haul__sync_limits_decode(&f, 64u << 20, &lim);
    CHECK_EQ(lim.peer_max_message, 64u << 20);
}

TEST(hello_needs_the_magic)
{
    CHECK_OK(haul__hello_decode((const uint8_t *)"HAUL", 4));
    CHECK_EQ(haul__hello_decode((const uint8_t *)"HAUX", 4), HAUL_EPROTO);
    CHECK_EQ(haul__hello_decode((const uint8_t *)"HAUL!", 5), HAUL_EPROTO);
    CHECK_EQ(haul__hello_decode((const uint8_t *)"HAU", 3), HAUL_EPROTO);
}

TEST(error_text_is_printable_and_bounded)
{
    haul__frame f = {.type = HAUL__F_ERROR, .aux = HAUL_EVERSION};
    static const uint8_t payload[] = {'b', 'a', 'd', '\n', 0, 0x7f, 0xc3, 0xa9, '!'};
    char text[8];
    CHECK_EQ(haul__error_decode(&f, payload, sizeof(payload), text, sizeof(text)), HAUL_EVERSION);
    CHECK_STR_EQ(text, "bad????");
    f.aux = 4242;
    char big[32];
    CHECK_EQ(haul__error_decode(&f, payload, sizeof(payload), big, sizeof(big)), HAUL_EPROTO);
    CHECK_STR_EQ(big, "bad?????"
                      "!"); /* not a trigraph */
    CHECK_EQ(haul__error_decode(&f, NULL, 0, big, sizeof(big)), HAUL_EPROTO);
    /* A refusal for a limit ("server busy") stays one. */
    f.aux = HAUL_ELIMIT;
    CHECK_EQ(haul__error_decode(&f, NULL, 0, big, sizeof(big)), HAUL_ELIMIT);
    CHECK_STR_EQ(big, "");
}
