/*
 * compress.c - zstd compression of the storage protocol's messages, as
 * one stream per session flushed at each message's end. The receiver
 * bounds each piece's output by the length its record announces (one
 * byte more is room enough to see a piece that yields too much) and the
 * window by HSP_ZSTD_WINDOW_LOG.
 */
#define ZSTD_STATIC_LINKING_ONLY /* the memory estimates */
#include "proto/compress.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "core/le.h"
#include "proto/store.h"

struct hsp_zstd {
    int level;
    ZSTD_CCtx *cctx; /* NULL for a codec that only expands */
    int cstarted;    /* the compressor is inside a frame */
    ZSTD_DCtx *dctx; /* made at the first expansion */
    int dstarted;    /* the expander is inside a frame that decoded well */
    uint8_t *buf;    /* HSP_MESSAGE_MAX + 1 bytes, made at the first expansion */
};

static ZSTD_CCtx_params *params_new(int level)
{
    ZSTD_CCtx_params *p = ZSTD_createCCtxParams();
    if (p == NULL)
        return NULL;
    /* Long-distance matching finds the copyright texts and changelogs
     * that a tree repeats megabytes apart; it costs little speed. The
     * stream carries no content size and no checksum: each message's
     * length is in its record, and the content has its own hashes. */
    if (ZSTD_isError(ZSTD_CCtxParams_init(p, level)) ||
        ZSTD_isError(ZSTD_CCtxParams_setParameter(p, ZSTD_c_windowLog, HSP_ZSTD_WINDOW_LOG)) ||
        ZSTD_isError(ZSTD_CCtxParams_setParameter(p, ZSTD_c_enableLongDistanceMatching, 1)) ||
        /* zstd's own choices for this window, named: the memory estimate
         * of libzstd 1.5.4 divides by them when they are left unset. */
        ZSTD_isError(ZSTD_CCtxParams_setParameter(p, ZSTD_c_ldmHashLog, HSP_ZSTD_WINDOW_LOG - 7)) ||
        ZSTD_isError(ZSTD_CCtxParams_setParameter(p, ZSTD_c_ldmHashRateLog, 7)) ||
        ZSTD_isError(ZSTD_CCtxParams_setParameter(p, ZSTD_c_ldmMinMatch, 64)) ||
        ZSTD_isError(ZSTD_CCtxParams_setParameter(p, ZSTD_c_ldmBucketSizeLog, 3)) ||
        ZSTD_isError(ZSTD_CCtxParams_setParameter(p, ZSTD_c_contentSizeFlag, 0)) ||
        ZSTD_isError(ZSTD_CCtxParams_setParameter(p, ZSTD_c_checksumFlag, 0))) {
        ZSTD_freeCCtxParams(p);
        return NULL;
    }
    return p;
}

hsp_zstd *hsp_zstd_new(int level)
{
    hsp_zstd *z = calloc(1, sizeof(*z));
    if (z == NULL)
        return NULL;
    z->level = level;
    if (level > 0) {
        ZSTD_CCtx_params *p = params_new(level);
        z->cctx = ZSTD_createCCtx();
        int bad = p == NULL || z->cctx == NULL ||
                  ZSTD_isError(ZSTD_CCtx_setParametersUsingCCtxParams(z->cctx, p));
        ZSTD_freeCCtxParams(p);
        if (bad) {
            hsp_zstd_free(z);
            return NULL;
        }
    }
    return z;
}

void hsp_zstd_free(hsp_zstd *z)
{
    if (z == NULL)
        return;
    ZSTD_freeCCtx(z->cctx);
    ZSTD_freeDCtx(z->dctx);
    free(z->buf);
    free(z);
}

size_t hsp_zstd_memory(int level)
{
    if (level <= 0)
        return ZSTD_estimateDStreamSize((size_t)1 << HSP_ZSTD_WINDOW_LOG) + HSP_MESSAGE_MAX + 1;
    ZSTD_CCtx_params *p = params_new(level);
    size_t n = p ? ZSTD_estimateCStreamSize_usingCCtxParams(p) : 0;
    ZSTD_freeCCtxParams(p);
    /* With no estimate, a generous one: the window and its tables. */
    return n && !ZSTD_isError(n) ? n : (size_t)8 << HSP_ZSTD_WINDOW_LOG;
}

size_t hsp_zstd_pack(hsp_zstd *z, const void *msg, size_t len, uint8_t *out, size_t cap)
{
    if (z == NULL || z->cctx == NULL || len < HSP_ZSTD_MIN_MESSAGE || len > HSP_MESSAGE_MAX)
        return 0;
    size_t head = HSP_RECORD_HDR + HSP_ZSTD_FIXED;
    if (cap <= head)
        return 0;
    uint32_t flags = z->cstarted ? 0 : HSP_ZSTD_NEW_FRAME;
    ZSTD_inBuffer in = {msg, len, 0};
    ZSTD_outBuffer o = {out + head, cap - head, 0};
    size_t left = ZSTD_compressStream2(z->cctx, &o, &in, ZSTD_e_flush);
    if (ZSTD_isError(left) || left != 0) {
        /* An error, or a piece that does not fit (data that does not
         * compress, in a message near the largest): the message goes as
         * it is, and since the stream took part of it, a new stream
         * begins with the next piece. */
        ZSTD_CCtx_reset(z->cctx, ZSTD_reset_session_only);
        z->cstarted = 0;
        return 0;
    }
    z->cstarted = 1;
    out[0] = HSP_ZSTD;
    out[1] = 0;
    haul__put16(out + 2, 0);
    haul__put32(out + 4, (uint32_t)(HSP_ZSTD_FIXED + o.pos));
    haul__put32(out + HSP_RECORD_HDR, (uint32_t)len);
    haul__put32(out + HSP_RECORD_HDR + 4, flags);
    return head + o.pos;
}

int hsp_zstd_is_packed(const void *msg, size_t len)
{
    return len >= HSP_RECORD_HDR && ((const uint8_t *)msg)[0] == HSP_ZSTD;
}

/* Refuses a piece; the stream cannot go on past it. */
static int spoiled(hsp_zstd *z, const char **why, const char *what)
{
    z->dstarted = 0;
    *why = what;
    return -1;
}

int hsp_zstd_unpack(hsp_zstd *z, const void *msg, size_t len, const void **data, size_t *dlen,
                    const char **why)
{
    const uint8_t *p = msg;
    *data = msg;
    *dlen = len;
    if (!hsp_zstd_is_packed(msg, len))
        return 0;
    if (z == NULL) {
        *why = "a compressed message, but compression was not agreed for this session";
        return -1;
    }
    uint32_t body = haul__get32(p + 4);
    if (p[1] != 0 || haul__get16(p + 2) != 0 || body < HSP_ZSTD_FIXED ||
        (size_t)body != len - HSP_RECORD_HDR)
        return spoiled(z, why, "a compressed message whose record does not fill it");
    uint32_t flags = haul__get32(p + HSP_RECORD_HDR + 4);
    if (flags & ~HSP_ZSTD_NEW_FRAME)
        return spoiled(z, why, "a compressed message with unknown flags");
    uint32_t raw = haul__get32(p + HSP_RECORD_HDR);
    if (raw == 0 || raw > HSP_MESSAGE_MAX)
        return spoiled(z, why,
                       raw == 0 ? "a compressed message that claims to hold nothing"
                                : "a compressed message that claims more than a message may hold");
    if (!(flags & HSP_ZSTD_NEW_FRAME) && !z->dstarted)
        return spoiled(z, why, "a compressed message that continues a stream never begun");
    if (z->dctx == NULL) {
        if ((z->dctx = ZSTD_createDCtx()) == NULL) {
            *why = "out of memory for a decompression context";
            return -2;
        }
        /* A frame that asks for a window beyond the stream's is refused,
         * so that no peer can make us hold more. */
        ZSTD_DCtx_setParameter(z->dctx, ZSTD_d_windowLogMax, HSP_ZSTD_WINDOW_LOG);
    }
    if (z->buf == NULL && (z->buf = malloc(HSP_MESSAGE_MAX + 1)) == NULL) {
        *why = "out of memory for a decompression buffer";
        return -2;
    }
    if (flags & HSP_ZSTD_NEW_FRAME)
        ZSTD_DCtx_reset(z->dctx, ZSTD_reset_session_only);
    /* The output may take one byte more than announced: a piece that
     * fills it yields too much, and zstd never writes beyond it. */
    ZSTD_inBuffer in = {p + HSP_RECORD_HDR + HSP_ZSTD_FIXED, body - HSP_ZSTD_FIXED, 0};
    ZSTD_outBuffer o = {z->buf, (size_t)raw + 1, 0};
    for (int idle = 0; o.pos <= raw && idle < 2;) {
        size_t before_in = in.pos, before_out = o.pos;
        size_t rc = ZSTD_decompressStream(z->dctx, &o, &in);
        if (ZSTD_isError(rc))
            return spoiled(z, why,
                           ZSTD_getErrorCode(rc) == ZSTD_error_frameParameter_windowTooLarge
                               ? "a compressed message that asks for too large a window"
                               : "a compressed message that does not decode");
        if (in.pos == in.size && o.pos == raw)
            break;
        /* Input left, or output the decoder still holds: go on while
         * either moves. */
        idle = in.pos == before_in && o.pos == before_out ? idle + 1 : 0;
    }
    if (in.pos != in.size || o.pos != raw)
        return spoiled(z, why, "a compressed message that does not decode to the length it claims");
    z->dstarted = 1;
    *data = z->buf;
    *dlen = o.pos;
    return 0;
}
