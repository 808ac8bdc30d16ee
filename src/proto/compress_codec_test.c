/*
 * compress_codec_test.c - the compressed messages of the storage protocol: a
 * message survives a round trip, one that does not compress is left as
 * it is, and a compressed message that lies about its length, does not
 * decode, or would expand beyond a message is refused.
 */
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "core/le.h"
#include "harness.h"
#include "proto/compress.h"
#include "proto/store.h"

/* A message of DATA records with text-like content. */
static size_t text_message(uint8_t *buf, size_t cap, size_t bytes)
{
    hsp_writer w;
    hsp_writer_init(&w, buf, cap);
    uint8_t *p = hsp_put_data(&w, 7, 0, (uint32_t)bytes);
    CHECK(p != NULL);
    for (size_t i = 0; i < bytes; i++)
        p[i] = (uint8_t)("the quick brown fox jumps over the lazy dog\n"[i % 44]);
    hsp_hash h = {{1, 2, 3}};
    CHECK_OK(hsp_put_done(&w, 7, &h));
    return w.len;
}

static void random_bytes(uint8_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (uint8_t)(seed >> 56);
    }
}

TEST(message_round_trip)
{
    static uint8_t msg[HSP_MESSAGE_MAX], out[HSP_MESSAGE_MAX];
    size_t len = text_message(msg, sizeof(msg), HSP_BLOCK);
    hsp_zstd *c = hsp_zstd_new(HSP_ZSTD_LEVEL_DEFAULT), *d = hsp_zstd_new(0);
    CHECK(c != NULL && d != NULL);
    size_t n = hsp_zstd_pack(c, msg, len, out, sizeof(out));
    CHECK_GT(n, 0);
    CHECK_LT(n, len / 10);
    CHECK(hsp_zstd_is_packed(out, n));
    const void *data;
    size_t dlen;
    const char *why = NULL;
    CHECK_OK(hsp_zstd_unpack(d, out, n, &data, &dlen, &why));
    CHECK_EQ(dlen, len);
    CHECK(memcmp(data, msg, len) == 0);
    /* The records read as they were. */
    hsp_reader rd;
    hsp_record rec;
    hsp_reader_init(&rd, data, dlen);
    CHECK_EQ(hsp_next(&rd, &rec), 1);
    CHECK_EQ(rec.type, HSP_DATA);
    CHECK_EQ(rec.data_len, HSP_BLOCK);
    /* A message that is not compressed passes through. */
    CHECK_OK(hsp_zstd_unpack(d, msg, len, &data, &dlen, &why));
    CHECK(data == msg && dlen == len);
    /* Every level works. */
    for (int level = HSP_ZSTD_LEVEL_MIN; level <= HSP_ZSTD_LEVEL_MAX; level += 6) {
        hsp_zstd *l = hsp_zstd_new(level);
        CHECK(l != NULL);
        size_t m = hsp_zstd_pack(l, msg, 64 << 10, out, sizeof(out));
        CHECK_GT(m, 0);
        CHECK_OK(hsp_zstd_unpack(d, out, m, &data, &dlen, &why));
        CHECK_EQ(dlen, 64u << 10);
        hsp_zstd_free(l);
    }
    hsp_zstd_free(c);
    hsp_zstd_free(d);
}

TEST(incompressible_and_short_messages_stay_raw)
{
    static uint8_t msg[HSP_MESSAGE_MAX], out[HSP_MESSAGE_MAX];
    random_bytes(msg, HSP_BLOCK, 42);
    hsp_zstd *c = hsp_zstd_new(HSP_ZSTD_LEVEL_DEFAULT);
    CHECK(c != NULL);
    CHECK_EQ(hsp_zstd_pack(c, msg, HSP_BLOCK, out, sizeof(out)), 0);
    /* Short messages are not worth it, compressible or not. */
    size_t len = text_message(msg, sizeof(msg), 100);
    CHECK_EQ(hsp_zstd_pack(c, msg, len, out, sizeof(out)), 0);
    /* Compressible by less than the margin: raw. A block with its first
     * 1/32 zeros shrinks by about 1/32, less than the margin; with its
     * first quarter zeros, by about a quarter, which pays. */
    random_bytes(msg, HSP_BLOCK, 7);
    memset(msg, 0, HSP_BLOCK / 32);
    CHECK_EQ(hsp_zstd_pack(c, msg, HSP_BLOCK, out, sizeof(out)), 0);
    memset(msg, 0, HSP_BLOCK / 4);
    CHECK_GT(hsp_zstd_pack(c, msg, HSP_BLOCK, out, sizeof(out)), 0);
    /* A compressor used after a failure still makes good frames. */
    len = text_message(msg, sizeof(msg), 10000);
    size_t n = hsp_zstd_pack(c, msg, len, out, sizeof(out));
    CHECK_GT(n, 0);
    hsp_zstd *d = hsp_zstd_new(0);
    const void *data;
    size_t dlen;
    const char *why = NULL;
    CHECK_OK(hsp_zstd_unpack(d, out, n, &data, &dlen, &why));
    CHECK_EQ(dlen, len);
    hsp_zstd_free(d);
    hsp_zstd_free(c);
}

/* Builds a ZSTD record around frame[0, flen) that claims raw bytes. */
static size_t wrap(uint8_t *out, const void *frame, size_t flen, uint32_t raw)
{
    out[0] = HSP_ZSTD;
    out[1] = 0;
    haul__put16(out + 2, 0);
    haul__put32(out + 4, (uint32_t)(HSP_ZSTD_FIXED + flen));
    haul__put32(out + 8, raw);
    haul__put32(out + 12, 0);
    memcpy(out + 16, frame, flen);
    return 16 + flen;
}

static void refused(hsp_zstd *d, const void *msg, size_t len, const char *what)
{
    const void *data;
    size_t dlen;
    const char *why = NULL;
    int rc = hsp_zstd_unpack(d, msg, len, &data, &dlen, &why);
    harness_log("%s: %d, %s", what, rc, why ? why : "(no reason)");
    CHECK_EQ(rc, -1);
    CHECK(why != NULL);
}

TEST(corrupt_and_oversized_messages_are_refused)
{
    static uint8_t msg[HSP_MESSAGE_MAX], out[HSP_MESSAGE_MAX], big[4u << 20];
    static uint8_t frame[HSP_MESSAGE_MAX], bad[HSP_MESSAGE_MAX];
    size_t len = text_message(msg, sizeof(msg), 200000);
    hsp_zstd *c = hsp_zstd_new(HSP_ZSTD_LEVEL_DEFAULT), *d = hsp_zstd_new(0);
    size_t n = hsp_zstd_pack(c, msg, len, out, sizeof(out));
    CHECK_GT(n, 0);

    /* Not negotiated: no codec. */
    refused(NULL, out, n, "no codec");
    /* Truncated frame; trailing garbage; record length not the message. */
    memcpy(bad, out, n);
    haul__put32(bad + 4, (uint32_t)(n - 8 - 10));
    refused(d, bad, n - 10, "truncated frame");
    refused(d, out, n - 10, "record longer than the message");
    memcpy(bad, out, n);
    bad[n] = 0;
    refused(d, bad, n + 1, "trailing byte");
    /* A nonzero reserved field, record flags. */
    memcpy(bad, out, n);
    bad[12] = 1;
    refused(d, bad, n, "reserved field");
    memcpy(bad, out, n);
    bad[1] = 1;
    refused(d, bad, n, "record flags");
    /* The record claims another length than the frame. */
    memcpy(bad, out, n);
    haul__put32(bad + 8, (uint32_t)len - 1);
    refused(d, bad, n, "claims one byte less");
    haul__put32(bad + 8, HSP_MESSAGE_MAX + 1);
    refused(d, bad, n, "claims more than a message");
    haul__put32(bad + 8, 0);
    refused(d, bad, n, "claims nothing");
    /* Garbage where the frame should be. */
    memcpy(bad, out, n);
    random_bytes(bad + 16, n - 16, 3);
    refused(d, bad, n, "garbage frame");
    /* A corrupted byte inside the compressed data. */
    memcpy(bad, out, n);
    bad[n / 2] ^= 0x5a;
    bad[n / 2 + 1] ^= 0xa5;
    const void *data;
    size_t dlen;
    const char *why = NULL;
    int rc = hsp_zstd_unpack(d, bad, n, &data, &dlen, &why);
    /* zstd frames carry no checksum here: a flipped literal may decode
     * to other bytes of the right length, which the content hash of the
     * file then catches. What may not happen is more or less output. */
    CHECK(rc == -1 || (rc == 0 && dlen == len));

    /* A frame of 4 MiB whose record claims 1 MiB: a bomb. */
    memset(big, 'a', sizeof(big));
    size_t f = ZSTD_compress(frame, sizeof(frame), big, sizeof(big), 3);
    CHECK(!ZSTD_isError(f));
    size_t m = wrap(bad, frame, f, HSP_BLOCK);
    refused(d, bad, m, "bomb claiming a block");
    m = wrap(bad, frame, f, sizeof(big));
    refused(d, bad, m, "bomb claiming its size");
    /* A frame without a content size, claiming what it yields. */
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    ZSTD_inBuffer in = {big, 1000, 0};
    ZSTD_outBuffer o = {frame, sizeof(frame), 0};
    CHECK(!ZSTD_isError(ZSTD_compressStream2(cc, &o, &in, ZSTD_e_end)));
    ZSTD_freeCCtx(cc);
    m = wrap(bad, frame, o.pos, 1000);
    refused(d, bad, m, "frame without a content size");

    /* The codec still works after all that. */
    CHECK_OK(hsp_zstd_unpack(d, out, n, &data, &dlen, &why));
    CHECK_EQ(dlen, len);
    CHECK(memcmp(data, msg, len) == 0);
    hsp_zstd_free(c);
    hsp_zstd_free(d);
}

TEST(compress_flag_is_push_and_pull_only)
{
    hsp_request r = {.op = HSP_PUSH, .flags = HSP_F_COMPRESS, .level = 7}, d;
    strcpy(r.dataset, "home");
    uint8_t buf[512];
    size_t n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_EQ(n, 15); /* the level follows the names */
    CHECK_OK(hsp_request_decode(buf, n, &d));
    CHECK_EQ(d.flags, (unsigned)HSP_F_COMPRESS);
    CHECK_EQ(d.level, 7);
    /* Without its level, or with one out of 1..19: refused. */
    CHECK_EQ(hsp_request_decode(buf, n - 1, &d), -1);
    buf[n - 1] = 0;
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
    buf[n - 1] = 20;
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
    r.op = HSP_PULL;
    n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_OK(hsp_request_decode(buf, n, &d));
    r.op = HSP_VERIFY;
    n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
    r.op = HSP_PULL;
    r.flags = HSP_F_TAKEOVER;
    n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
}
