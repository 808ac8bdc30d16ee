/*
 * compress_fuzz.c - libFuzzer target for the expansion of compressed
 * messages of the storage protocol (hsp_zstd_unpack, src/proto/
 * compress.c).
 *
 * Input: one message, as a peer sends it. It is expanded as a receiver
 * with compression agreed would. Besides the sanitizers' findings, the
 * target aborts when the expansion breaks its contract:
 *
 *   - it returns 0 or -1 (-2, out of memory, only if malloc failed);
 *   - a message that is not compressed comes back as it is;
 *   - a compressed one expands to 1..HSP_MESSAGE_MAX bytes, exactly the
 *     raw length its record announces;
 *   - whatever expands re-compresses and expands again to the same bytes
 *     (through a pair of codecs of their own, whose stream only they
 *     share).
 *
 * Each input meets a new expander, as the first message of a session
 * would, so that a finding replays from its input alone.
 *
 * See fuzz/README.md for how to build and run it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/le.h"
#include "proto/compress.h"
#include "proto/store.h"

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "compress_fuzz: contract broken: %s\n", #cond);                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static hsp_zstd *compressor, *partner;
static uint8_t packed[HSP_MESSAGE_MAX];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (compressor == NULL && (compressor = hsp_zstd_new(1)) == NULL)
        return 0;
    if (partner == NULL && (partner = hsp_zstd_new(0)) == NULL)
        return 0;
    hsp_zstd *expander = hsp_zstd_new(0);
    /* A copy of exactly the input's size, so that ASan sees any read
     * past it. */
    uint8_t *msg = malloc(size ? size : 1);
    if (expander == NULL || msg == NULL) {
        hsp_zstd_free(expander);
        free(msg);
        return 0;
    }
    memcpy(msg, data, size);
    const void *out;
    size_t len;
    const char *why = NULL;
    int rc = hsp_zstd_unpack(expander, msg, size, &out, &len, &why);
    REQUIRE(rc == 0 || rc == -1 || rc == -2);
    REQUIRE(rc == 0 || why != NULL);
    if (rc == 0 && !hsp_zstd_is_packed(msg, size))
        REQUIRE(out == msg && len == size);
    if (rc == 0 && hsp_zstd_is_packed(msg, size)) {
        REQUIRE(len >= 1 && len <= HSP_MESSAGE_MAX);
        REQUIRE(len == haul__get32(msg + HSP_RECORD_HDR));
        /* The expansion survives a round trip of its own. */
        uint8_t *copy = malloc(len);
        if (copy) {
            memcpy(copy, out, len);
            size_t n = hsp_zstd_pack(compressor, copy, len, packed, sizeof(packed));
            if (n) {
                REQUIRE(hsp_zstd_unpack(partner, packed, n, &out, &len, &why) == 0);
                REQUIRE(memcmp(out, copy, len) == 0);
            }
            free(copy);
        }
    }
    hsp_zstd_free(expander);
    free(msg);
    return 0;
}
