/*
 * compress.h - zstd compression of the storage protocol's messages
 * (docs/store-protocol.md, "Compression").
 *
 * A session whose request carries HSP_F_COMPRESS may carry compressed
 * messages: a message made of exactly one ZSTD record, whose body is the
 * length of the records it stands for and one zstd frame of them. The
 * sender compresses a message only when that makes it smaller by at
 * least 1/16 (HSP_ZSTD_MARGIN); the receiver expands it before reading
 * its records, which are then what an uncompressed message would hold.
 * Hashes and sizes always speak of the uncompressed content.
 *
 * Expansion is bounded: a frame that claims or yields more than
 * HSP_MESSAGE_MAX bytes, or other than the length its record announces,
 * or that does not decode, is refused (the peer is broken or hostile).
 *
 * A codec is used by one thread at a time.
 */
#ifndef HAUL_PROTO_COMPRESS_H
#define HAUL_PROTO_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

/* Levels of haul push/pull --compress=LEVEL. */
#define HSP_ZSTD_LEVEL_DEFAULT 3
#define HSP_ZSTD_LEVEL_MIN 1
#define HSP_ZSTD_LEVEL_MAX 19
/* A compressed message is sent only when it is smaller than the message
 * by at least len / HSP_ZSTD_MARGIN bytes. */
#define HSP_ZSTD_MARGIN 16
/* Messages shorter than this are sent as they are: too small to gain. */
#define HSP_ZSTD_MIN_MESSAGE 512
/* The ZSTD record's fixed fields (raw length u32, zero u32). */
#define HSP_ZSTD_FIXED 8

typedef struct hsp_zstd hsp_zstd;

/* A codec that compresses at `level` (1..19), or only expands with level
 * 0. Returns NULL when memory is short. */
hsp_zstd *hsp_zstd_new(int level);
void hsp_zstd_free(hsp_zstd *z);

/*
 * Compresses the message msg[0, len) into out (cap bytes; len bytes are
 * always enough, since a compressed message that is not smaller is not
 * made). Returns the length of the compressed message, or 0 when the
 * message is to be sent as it is: it is short, it does not compress by
 * the margin, or zstd failed.
 */
size_t hsp_zstd_pack(hsp_zstd *z, const void *msg, size_t len, uint8_t *out, size_t cap);

/* Is msg[0, len) a compressed message (its first record a ZSTD one)? */
int hsp_zstd_is_packed(const void *msg, size_t len);

/*
 * Expands a compressed message into the codec's buffer: *data and *len
 * then name the records (valid until the next call on z). A message that
 * is not compressed is handed back as it is. Returns 0, or -1 with *why
 * set when the message is compressed but z is NULL (compression was not
 * negotiated) or the message is malformed: the record does not fill the
 * message, its length is over HSP_MESSAGE_MAX, the frame claims another
 * length, yields another, or does not decode. Memory that is short is
 * -2 (*why says so): not the peer's fault.
 */
int hsp_zstd_unpack(hsp_zstd *z, const void *msg, size_t len, const void **data, size_t *dlen,
                    const char **why);

#endif
