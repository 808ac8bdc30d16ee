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

/* Expands msg with d and checks it gives back want[0, wlen). */
static void expands_to(hsp_zstd *d, const void *msg, size_t len, const void *want, size_t wlen)
{
    const void *data;
    size_t dlen;
    const char *why = NULL;
    CHECK_OK(hsp_zstd_unpack(d, msg, len, &data, &dlen, &why));
    CHECK_EQ(dlen, wlen);
    CHECK(memcmp(data, want, wlen) == 0);
}

TEST(a_message_is_compressed_with_the_ones_before_it)
{
    static uint8_t a[HSP_MESSAGE_MAX], b[HSP_MESSAGE_MAX], out[HSP_MESSAGE_MAX];
    /* Random content does not compress by itself; sent a second time
     * within the window, it is a reference to the first. */
    random_bytes(a, 300000, 11);
    memcpy(b, a, 300000);
    hsp_zstd *c = hsp_zstd_new(HSP_ZSTD_LEVEL_DEFAULT), *d = hsp_zstd_new(0);
    CHECK(c != NULL && d != NULL);
    size_t n = hsp_zstd_pack(c, a, 300000, out, sizeof(out));
    CHECK_GT(n, 300000);
    CHECK(!hsp_zstd_paid(300000, n));
    CHECK_EQ(haul__get32(out + 12), HSP_ZSTD_NEW_FRAME);
    expands_to(d, out, n, a, 300000);
    /* A message sent as it is stays out of the stream on both sides. */
    static uint8_t plain[2000];
    size_t plen = text_message(plain, sizeof(plain), 1000);
    expands_to(d, plain, plen, plain, plen);
    n = hsp_zstd_pack(c, b, 300000, out, sizeof(out));
    harness_log("the same 300000 random bytes again: %zu bytes", n);
    CHECK_GT(n, 0);
    CHECK_LT(n, 2000);
    CHECK_EQ(haul__get32(out + 12), 0);
    expands_to(d, out, n, b, 300000);
    /* A continuation alone, to an expander that never saw the stream
     * begin, is refused. */
    hsp_zstd *fresh = hsp_zstd_new(0);
    refused(fresh, out, n, "continuation without a beginning");
    hsp_zstd_free(fresh);
    hsp_zstd_free(c);
    hsp_zstd_free(d);
}

TEST(incompressible_and_short_messages)
{
    static uint8_t msg[HSP_MESSAGE_MAX], out[HSP_MESSAGE_MAX];
    random_bytes(msg, HSP_BLOCK, 42);
    hsp_zstd *c = hsp_zstd_new(HSP_ZSTD_LEVEL_DEFAULT), *d = hsp_zstd_new(0);
    CHECK(c != NULL && d != NULL);
    /* A block that does not compress goes into the stream as zstd's
     * stored blocks: a few bytes more, and not counted as paid. */
    size_t n = hsp_zstd_pack(c, msg, HSP_BLOCK, out, sizeof(out));
    harness_log("a random block: %zu bytes", n);
    CHECK_GT(n, HSP_BLOCK);
    CHECK_LT(n, HSP_BLOCK + 256);
    CHECK(!hsp_zstd_paid(HSP_BLOCK, n));
    expands_to(d, out, n, msg, HSP_BLOCK);
    /* Short messages are not worth it, compressible or not. */
    static uint8_t small[HSP_MESSAGE_MAX];
    size_t len = text_message(small, sizeof(small), 100);
    CHECK_EQ(hsp_zstd_pack(c, small, len, out, sizeof(out)), 0);
    /* Shrinking by less than the margin does not pay; by a quarter it
     * does. */
    random_bytes(msg, HSP_BLOCK, 7);
    memset(msg, 0, HSP_BLOCK / 32);
    n = hsp_zstd_pack(c, msg, HSP_BLOCK, out, sizeof(out));
    CHECK(!hsp_zstd_paid(HSP_BLOCK, n));
    expands_to(d, out, n, msg, HSP_BLOCK);
    random_bytes(msg, HSP_BLOCK, 8);
    memset(msg, 0, HSP_BLOCK / 4);
    n = hsp_zstd_pack(c, msg, HSP_BLOCK, out, sizeof(out));
    CHECK(hsp_zstd_paid(HSP_BLOCK, n));
    expands_to(d, out, n, msg, HSP_BLOCK);
    /* A piece that cannot fit (random bytes of the largest message)
     * goes as it is, and the next piece begins a new stream, which the
     * same expander reads. */
    random_bytes(msg, HSP_MESSAGE_MAX, 9);
    CHECK_EQ(hsp_zstd_pack(c, msg, HSP_MESSAGE_MAX, out, sizeof(out)), 0);
    len = text_message(msg, sizeof(msg), 10000);
    n = hsp_zstd_pack(c, msg, len, out, sizeof(out));
    CHECK_GT(n, 0);
    CHECK_EQ(haul__get32(out + 12), HSP_ZSTD_NEW_FRAME);
    expands_to(d, out, n, msg, len);
    hsp_zstd_free(c);
    hsp_zstd_free(d);
}

/* Builds a ZSTD record with flags around frame[0, flen) that claims raw
 * bytes. */
static size_t wrap(uint8_t *out, const void *frame, size_t flen, uint32_t raw, uint32_t flags)
{
    out[0] = HSP_ZSTD;
    out[1] = 0;
    haul__put16(out + 2, 0);
    haul__put32(out + 4, (uint32_t)(HSP_ZSTD_FIXED + flen));
    haul__put32(out + 8, raw);
    haul__put32(out + 12, flags);
    memcpy(out + 16, frame, flen);
    return 16 + flen;
}

/* A zstd frame of src[0, len) with the given window, flushed but not
 * ended, as a stream's first piece is. */
static size_t piece(uint8_t *out, size_t cap, const void *src, size_t len, int window_log)
{
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, window_log);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    ZSTD_inBuffer in = {src, len, 0};
    ZSTD_outBuffer o = {out, cap, 0};
    CHECK_EQ(ZSTD_compressStream2(cc, &o, &in, ZSTD_e_flush), 0);
    ZSTD_freeCCtx(cc);
    return o.pos;
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
    /* Truncated piece; trailing garbage; record length not the message. */
    memcpy(bad, out, n);
    haul__put32(bad + 4, (uint32_t)(n - 16 - 10 + 8));
    refused(d, bad, n - 10, "truncated piece");
    refused(d, out, n - 10, "record longer than the message");
    memcpy(bad, out, n);
    bad[n] = 0;
    refused(d, bad, n + 1, "trailing byte");
    /* Unknown flags, record flags. */
    memcpy(bad, out, n);
    bad[12] = 2;
    refused(d, bad, n, "unknown flags");
    memcpy(bad, out, n);
    bad[1] = 1;
    refused(d, bad, n, "record flags");
    /* The record claims another length than the piece yields. */
    memcpy(bad, out, n);
    haul__put32(bad + 8, (uint32_t)len - 1);
    refused(d, bad, n, "claims one byte less");
    haul__put32(bad + 8, (uint32_t)len + 1);
    refused(d, bad, n, "claims one byte more");
    haul__put32(bad + 8, HSP_MESSAGE_MAX + 1);
    refused(d, bad, n, "claims more than a message");
    haul__put32(bad + 8, 0);
    refused(d, bad, n, "claims nothing");
    /* Garbage where the piece should be. */
    memcpy(bad, out, n);
    random_bytes(bad + 16, n - 16, 3);
    refused(d, bad, n, "garbage piece");
    /* A corrupted byte inside the compressed data. */
    memcpy(bad, out, n);
    bad[n / 2] ^= 0x5a;
    bad[n / 2 + 1] ^= 0xa5;
    const void *data;
    size_t dlen;
    const char *why = NULL;
    int rc = hsp_zstd_unpack(d, bad, n, &data, &dlen, &why);
    /* The stream carries no checksum: a flipped literal may decode to
     * other bytes of the right length, which the content hash of the
     * file then catches. What may not happen is more or less output. */
    CHECK(rc == -1 || (rc == 0 && dlen == len));

    /* 4 MiB that compress to a few bytes, in a piece whose record claims
     * 1 MiB: a bomb. */
    memset(big, 'a', sizeof(big));
    size_t f = piece(frame, sizeof(frame), big, sizeof(big), HSP_ZSTD_WINDOW_LOG);
    size_t m = wrap(bad, frame, f, HSP_BLOCK, HSP_ZSTD_NEW_FRAME);
    refused(d, bad, m, "bomb claiming a block");
    m = wrap(bad, frame, f, sizeof(big), HSP_ZSTD_NEW_FRAME);
    refused(d, bad, m, "bomb claiming its size");
    /* A window larger than the stream's: refused before any memory. */
    f = piece(frame, sizeof(frame), msg, 5000, HSP_ZSTD_WINDOW_LOG + 4);
    m = wrap(bad, frame, f, 5000, HSP_ZSTD_NEW_FRAME);
    refused(d, bad, m, "a window of 128 MiB");
    f = piece(frame, sizeof(frame), msg, 5000, HSP_ZSTD_WINDOW_LOG);
    m = wrap(bad, frame, f, 5000, HSP_ZSTD_NEW_FRAME);
    expands_to(d, bad, m, msg, 5000);

    /* After a refusal, the stream cannot go on; a new one can. */
    size_t n2 = hsp_zstd_pack(c, msg, len, frame, sizeof(frame));
    CHECK_GT(n2, 0);
    CHECK_EQ(haul__get32(frame + 12), 0);
    refused(d, out, n - 1, "a broken piece");
    refused(d, frame, n2, "a continuation after it");
    expands_to(d, out, n, msg, len);
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
