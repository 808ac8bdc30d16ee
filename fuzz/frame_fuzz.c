/*
 * frame_fuzz.c - libFuzzer target for the frame header decoder,
 * haul__frame_decode() (src/net/frame.c).
 *
 * Input: 40 bytes of header, optionally followed by 8 bytes (little
 * endian) of the receiver's max_message limit; shorter inputs are padded
 * with zeros, and without the limit the engine's default of 64 MiB
 * applies. Besides the sanitizers' own findings, the target aborts when
 * the decoder breaks its contract:
 *
 *   - it returns 0, HAUL_EVERSION or HAUL_EPROTO, and a reason with
 *     every error;
 *   - every field it fills in re-encodes to the bytes it read, accepted or
 *     not;
 *   - what it accepts keeps every limit the connection relies on before
 *     it allocates or reads a payload (frame.h, conn.c): the version, a
 *     known type, no flags, chunk sizes and offsets inside their message
 *     without overflow, control payloads within HAUL__CTL_PAYLOAD_MAX.
 *
 * See fuzz/README.md for how to build and run it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "haul.h"
#include "net/frame.h"

#define DEFAULT_MAX_MESSAGE (64ull << 20)

static void fail(const char *what)
{
    fprintf(stderr, "frame_fuzz: %s\n", what);
    abort();
}

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail("contract broken: " #cond);                                                       \
    } while (0)

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* What the decoder promises about a header it accepted. */
static void check_accepted(const haul__frame *f, const haul__frame_limits *limits)
{
    REQUIRE(f->version == HAUL_PROTOCOL_VERSION);
    REQUIRE(f->type >= HAUL__F_HELLO && f->type < HAUL__F_COUNT_);
    REQUIRE(f->flags == 0);
    REQUIRE(strcmp(haul__frame_name(f->type), "UNKNOWN") != 0);
    switch (f->type) {
    case HAUL__F_CHUNK:
        REQUIRE(f->session != 0);
        REQUIRE(f->total <= limits->max_message);
        REQUIRE(f->len <= HAUL__CHUNK_MAX);
        REQUIRE(f->offset <= f->total);
        /* In 128 bits, so that the check itself cannot wrap. */
        REQUIRE((unsigned __int128)f->offset + f->len <= f->total);
        break;
    case HAUL__F_HELLO:
    case HAUL__F_HELLO_ACK:
        REQUIRE(f->len == HAUL__HELLO_MAGIC_LEN);
        REQUIRE(f->offset >= HAUL__CHUNK_MIN && f->offset <= HAUL__CHUNK_MAX);
        break;
    case HAUL__F_SYNC:
        REQUIRE(f->session != 0);
        REQUIRE(f->len >= 2 && f->len <= HAUL__CTL_PAYLOAD_MAX);
        break;
    case HAUL__F_ERROR:
        REQUIRE(f->len <= HAUL__CTL_PAYLOAD_MAX);
        break;
    case HAUL__F_KEEPALIVE:
        REQUIRE(f->len == 0);
        REQUIRE(f->session == 0);
        break;
    default:
        REQUIRE(f->len == 0);
        REQUIRE(f->session != 0);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t in[HAUL__FRAME_HDR + 8];
    memset(in, 0, sizeof(in));
    memcpy(in, data, size < sizeof(in) ? size : sizeof(in));
    haul__frame_limits limits = {.max_message = size >= sizeof(in) ? get64(in + HAUL__FRAME_HDR)
                                                                   : DEFAULT_MAX_MESSAGE};

    /* The decoder reads exactly one header: give it a buffer of exactly
     * that size, so that ASan sees any read past it. */
    uint8_t *hdr = malloc(HAUL__FRAME_HDR);
    if (hdr == NULL)
        return 0;
    memcpy(hdr, in, HAUL__FRAME_HDR);

    haul__frame f;
    memset(&f, 0xa5, sizeof(f));
    const char *why = NULL;
    int rc = haul__frame_decode(hdr, &limits, &f, &why);
    REQUIRE(rc == 0 || rc == HAUL_EVERSION || rc == HAUL_EPROTO);
    if (rc != 0)
        REQUIRE(why != NULL && why[0] != '\0');
    REQUIRE(rc != HAUL_EVERSION || hdr[0] != HAUL_PROTOCOL_VERSION);

    /* The fields are filled in whatever the verdict, and say what was
     * read. */
    uint8_t again[HAUL__FRAME_HDR];
    haul__frame_encode(&f, again);
    REQUIRE(memcmp(again, hdr, HAUL__FRAME_HDR) == 0);

    if (rc == 0)
        check_accepted(&f, &limits);
    free(hdr);
    return 0;
}
