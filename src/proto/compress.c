/*
 * compress.c - zstd compression of whole messages of the storage
 * protocol. The frame is checked before it is expanded: its announced
 * content size must be the record's raw length, which is at most
 * HSP_MESSAGE_MAX, and the expansion must yield exactly that.
 */
#include "proto/compress.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "core/le.h"
#include "proto/store.h"

struct hsp_zstd {
    int level;
    ZSTD_CCtx *cctx; /* NULL for a codec that only expands */
    ZSTD_DCtx *dctx; /* made at the first expansion */
    uint8_t *buf;    /* HSP_MESSAGE_MAX bytes, made at the first expansion */
};

hsp_zstd *hsp_zstd_new(int level)
{
    hsp_zstd *z = calloc(1, sizeof(*z));
    if (z == NULL)
        return NULL;
    z->level = level;
    if (level > 0) {
        z->cctx = ZSTD_createCCtx();
        if (z->cctx == NULL ||
            ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, level)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_contentSizeFlag, 1)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 0))) {
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

size_t hsp_zstd_pack(hsp_zstd *z, const void *msg, size_t len, uint8_t *out, size_t cap)
{
    if (z == NULL || z->cctx == NULL || len < HSP_ZSTD_MIN_MESSAGE || len > HSP_MESSAGE_MAX)
        return 0;
    /* Worth sending only when smaller by the margin, headers included:
     * zstd stops with an error as soon as its output would not fit. */
    size_t limit = len - len / HSP_ZSTD_MARGIN;
    if (limit > cap)
        limit = cap;
    size_t head = HSP_RECORD_HDR + HSP_ZSTD_FIXED;
    if (limit <= head)
        return 0;
    size_t n = ZSTD_compress2(z->cctx, out + head, limit - head, msg, len);
    if (ZSTD_isError(n)) {
        /* The context may be mid-frame after an error; the next frame
         * starts from a clean one. */
        ZSTD_CCtx_reset(z->cctx, ZSTD_reset_session_only);
        return 0;
    }
    out[0] = HSP_ZSTD;
    out[1] = 0;
    haul__put16(out + 2, 0);
    haul__put32(out + 4, (uint32_t)(HSP_ZSTD_FIXED + n));
    haul__put32(out + HSP_RECORD_HDR, (uint32_t)len);
    haul__put32(out + HSP_RECORD_HDR + 4, 0);
    return head + n;
}

int hsp_zstd_is_packed(const void *msg, size_t len)
{
    return len >= HSP_RECORD_HDR && ((const uint8_t *)msg)[0] == HSP_ZSTD;
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
        (size_t)body != len - HSP_RECORD_HDR || haul__get32(p + HSP_RECORD_HDR + 4) != 0) {
        *why = "a compressed message whose record does not fill it";
        return -1;
    }
    uint32_t raw = haul__get32(p + HSP_RECORD_HDR);
    if (raw == 0 || raw > HSP_MESSAGE_MAX) {
        *why = raw == 0 ? "a compressed message that claims to hold nothing"
                        : "a compressed message that claims more than a message may hold";
        return -1;
    }
    const uint8_t *frame = p + HSP_RECORD_HDR + HSP_ZSTD_FIXED;
    size_t flen = body - HSP_ZSTD_FIXED;
    unsigned long long claimed = ZSTD_getFrameContentSize(frame, flen);
    if (claimed != raw) {
        *why = claimed == ZSTD_CONTENTSIZE_ERROR
                   ? "a compressed message whose frame does not decode"
                   : "a compressed message whose frame claims another length than its record";
        return -1;
    }
    if (z->dctx == NULL && (z->dctx = ZSTD_createDCtx()) == NULL) {
        *why = "out of memory for a decompression context";
        return -2;
    }
    if (z->buf == NULL && (z->buf = malloc(HSP_MESSAGE_MAX)) == NULL) {
        *why = "out of memory for a decompression buffer";
        return -2;
    }
    /* The output is bounded by raw: zstd never writes beyond it, and a
     * frame that would is an error. A window beyond what a message needs
     * is refused as well, so a frame cannot ask for more memory. */
    ZSTD_DCtx_reset(z->dctx, ZSTD_reset_session_only);
    ZSTD_DCtx_setParameter(z->dctx, ZSTD_d_windowLogMax, 21);
    size_t n = ZSTD_decompressDCtx(z->dctx, z->buf, raw, frame, flen);
    if (ZSTD_isError(n) || n != raw) {
        *why = "a compressed message that does not decode to the length it claims";
        return -1;
    }
    *data = z->buf;
    *dlen = n;
    return 0;
}
