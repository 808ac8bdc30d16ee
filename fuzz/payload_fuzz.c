/*
 * payload_fuzz.c - libFuzzer target for the decoders of control-frame
 * payloads (src/net/payload.c): SYNC, SYNC_ACK, HELLO, HELLO_ACK and
 * ERROR.
 *
 * Input: a 40-byte frame header as on the wire, then the payload (the
 * rest of the input). The header's len is set to the payload's length,
 * as the connection guarantees before it hands a payload on; a header
 * that haul__frame_decode() refuses ends the run, as it would close the
 * connection. Besides the sanitizers' own findings, the target aborts
 * when a decoder breaks its contract:
 *
 *   - SYNC: the decoder accepts exactly the payloads docs/protocol.md
 *     allows (principal of 1..255 bytes without NUL, context of at most
 *     4096 bytes, 2 + P + context = len); what it accepts re-encodes to
 *     the same bytes, and its context lies inside the payload;
 *   - SYNC and SYNC_ACK: the peer's max_message never exceeds ours;
 *   - HELLO, HELLO_ACK: accepted exactly when the payload is "HAUL";
 *   - ERROR: the text is printable ASCII, NUL-terminated within the
 *     buffer, no longer than the payload, and says what the payload says;
 *     the code is EVERSION or ELIMIT when aux says so, EPROTO otherwise.
 *
 * See fuzz/README.md for how to build and run it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/le.h"
#include "haul.h"
#include "net/frame.h"
#include "net/payload.h"

#define MAX_MESSAGE (64ull << 20)

static void fail(const char *what)
{
    fprintf(stderr, "payload_fuzz: %s\n", what);
    abort();
}

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail("contract broken: " #cond);                                                       \
    } while (0)

static void check_sync(const uint8_t *p, size_t len)
{
    haul__sync_request r;
    int rc = haul__sync_decode(p, len, &r);
    REQUIRE(rc == 0 || rc == HAUL_EPROTO);
    /* The protocol's rule, restated independently of the decoder. */
    size_t plen = len >= 2 ? haul__get16(p) : 0;
    int valid = len >= 2 && plen >= 1 && plen <= HAUL__PRINCIPAL_MAX && 2 + plen <= len &&
                len - 2 - plen <= HAUL__CONTEXT_MAX && memchr(p + 2, '\0', plen) == NULL;
    REQUIRE((rc == 0) == valid);
    if (rc != 0) {
        REQUIRE(r.principal[0] == '\0' && r.context == NULL && r.context_len == 0);
        return;
    }
    REQUIRE(strlen(r.principal) == plen);
    REQUIRE(r.context_len == len - 2 - plen);
    REQUIRE(r.context_len == 0 ? r.context == NULL
                               : r.context == p + 2 + plen && r.context + r.context_len == p + len);
    REQUIRE(haul__sync_size(r.principal, r.context_len) == len);
    uint8_t *again = malloc(len);
    if (again == NULL)
        return;
    haul__sync_encode(r.principal, r.context, r.context_len, again);
    REQUIRE(memcmp(again, p, len) == 0);
    free(again);
}

static void check_limits(const haul__frame *f)
{
    haul__sync_limits lim;
    haul__sync_limits_decode(f, MAX_MESSAGE, &lim);
    REQUIRE(lim.peer_max_message <= MAX_MESSAGE);
    REQUIRE(lim.peer_max_message <= f->offset);
    REQUIRE(lim.peer_max_message == f->offset || lim.peer_max_message == MAX_MESSAGE);
    REQUIRE(lim.peer_input_queue == f->total);
}

/* Text buffers of several sizes, so that both the cut and the whole text
 * are seen; globals, which ASan surrounds with redzones, to spare an
 * allocation each per run. */
static char text1[1], text2[2], text16[16], text160[160], text_all[HAUL__CTL_PAYLOAD_MAX + 1];

static void check_error(const haul__frame *f, const uint8_t *p, size_t len)
{
    struct {
        char *text;
        size_t size;
    } bufs[] = {{text1, sizeof(text1)},
                {text2, sizeof(text2)},
                {text16, sizeof(text16)},
                {text160, sizeof(text160)},
                {text_all, sizeof(text_all)}};
    for (size_t k = 0; k < sizeof(bufs) / sizeof(bufs[0]); k++) {
        char *text = bufs[k].text;
        size_t size = bufs[k].size;
        memset(text, 0x5a, size);
        int code = haul__error_decode(f, p, len, text, size);
        REQUIRE(code == HAUL_EPROTO || code == HAUL_EVERSION || code == HAUL_ELIMIT);
        REQUIRE((code == HAUL_EVERSION) == (f->aux == HAUL_EVERSION));
        REQUIRE((code == HAUL_ELIMIT) == (f->aux == HAUL_ELIMIT));
        size_t n = strnlen(text, size);
        REQUIRE(n < size);
        REQUIRE(n == (len < size - 1 ? len : size - 1));
        for (size_t i = 0; i < n; i++) {
            REQUIRE(text[i] >= 32 && text[i] < 127);
            REQUIRE(text[i] == (char)p[i] || text[i] == '?');
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HAUL__FRAME_HDR || size - HAUL__FRAME_HDR > HAUL__CTL_PAYLOAD_MAX)
        return 0;
    size_t len = size - HAUL__FRAME_HDR;
    uint8_t hdr[HAUL__FRAME_HDR];
    memcpy(hdr, data, sizeof(hdr));
    haul__put32(hdr + 4, (uint32_t)len);
    haul__frame_limits limits = {.max_message = MAX_MESSAGE};
    haul__frame f;
    const char *why = NULL;
    if (haul__frame_decode(hdr, &limits, &f, &why) != 0)
        return 0;
    /* The payload alone in a buffer of its size, so that ASan sees any
     * read past it. */
    uint8_t *p = malloc(len ? len : 1);
    if (p == NULL)
        return 0;
    memcpy(p, data + HAUL__FRAME_HDR, len);
    switch (f.type) {
    case HAUL__F_SYNC:
        check_sync(p, len);
        check_limits(&f);
        break;
    case HAUL__F_SYNC_ACK:
        check_limits(&f);
        break;
    case HAUL__F_HELLO:
    case HAUL__F_HELLO_ACK: {
        int rc = haul__hello_decode(p, len);
        REQUIRE(rc == 0 || rc == HAUL_EPROTO);
        REQUIRE((rc == 0) == (len == 4 && memcmp(p, "HAUL", 4) == 0));
        break;
    }
    case HAUL__F_ERROR:
        check_error(&f, len ? p : NULL, len);
        break;
    default:
        break;
    }
    free(p);
    return 0;
}
