/*
 * compress.h - zstd compression of the storage protocol's messages
 * (docs/store-protocol.md, "Compression").
 *
 * A session whose request carries HSP_F_COMPRESS may carry compressed
 * messages: a message made of exactly one ZSTD record, whose body is the
 * length of the records it stands for, flags, and the next piece of the
 * session's zstd stream, flushed at the message's end. The stream spans
 * the session's compressed messages, so that a message is compressed
 * with the ones before it as its history (a window of
 * HSP_ZSTD_WINDOW_LOG): the files of a tree repeat one another far more
 * than a megabyte repeats itself. Messages sent as they are stay out of
 * the stream, on both sides. A piece with HSP_ZSTD_NEW_FRAME begins a
 * new stream (the first one, or after the sender gave one up).
 *
 * The receiver expands a piece before reading its records, which are
 * then what an uncompressed message would hold. Hashes and sizes always
 * speak of the uncompressed content.
 *
 * Expansion is bounded: a piece that yields more than HSP_MESSAGE_MAX
 * bytes, or other than the length its record announces, or asks for a
 * window over HSP_ZSTD_WINDOW_LOG, or does not decode, is refused (the
 * peer is broken or hostile), and the codec then expands nothing until
 * a new frame.
 *
 * A codec is used by one thread at a time, and sees a session's
 * compressed messages in their order.
 */
#ifndef HAUL_PROTO_COMPRESS_H
#define HAUL_PROTO_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

/* Levels of haul push/pull --compress=LEVEL. */
#define HSP_ZSTD_LEVEL_DEFAULT 3
#define HSP_ZSTD_LEVEL_MIN 1
#define HSP_ZSTD_LEVEL_MAX 19
/* The stream's window: 8 MiB of history, at every level. The receiver
 * holds that much per compressed session (hsp_zstd_memory), and refuses
 * a frame that asks for more. */
#define HSP_ZSTD_WINDOW_LOG 23
/* A message is counted as compressed well ("paid") when it shrank by at
 * least len / HSP_ZSTD_MARGIN bytes; senders stop trying data that does
 * not. */
#define HSP_ZSTD_MARGIN 16
/* Messages shorter than this are sent as they are: too small to gain. */
#define HSP_ZSTD_MIN_MESSAGE 512
/* The ZSTD record's fixed fields (raw length u32, flags u32). */
#define HSP_ZSTD_FIXED 8
/* Flags of the ZSTD record: the piece begins a new zstd frame. */
#define HSP_ZSTD_NEW_FRAME 1u

typedef struct hsp_zstd hsp_zstd;

/* A codec that compresses at `level` (1..19), or only expands with level
 * 0. Returns NULL when memory is short. */
hsp_zstd *hsp_zstd_new(int level);
void hsp_zstd_free(hsp_zstd *z);

/* The most memory a codec of `level` may come to hold (0: one that only
 * expands), for those who count it against a budget. */
size_t hsp_zstd_memory(int level);

/*
 * Compresses the message msg[0, len) into out (cap bytes; HSP_MESSAGE_MAX
 * is enough for any message that was not itself near that size) as the
 * next piece of the session's stream. Returns the length of the
 * compressed message, which is what must be sent, even when it is not
 * smaller than len (the message is in the stream now: see
 * hsp_zstd_paid); or 0 when the message is to be sent as it is and stays
 * out of the stream: it is short, the piece would not fit in cap, or
 * zstd failed (the next piece then begins a new frame).
 */
size_t hsp_zstd_pack(hsp_zstd *z, const void *msg, size_t len, uint8_t *out, size_t cap);

/* Did a message of len bytes that packed to n shrink by the margin? */
static inline int hsp_zstd_paid(size_t len, size_t n)
{
    return n > 0 && n <= len - len / HSP_ZSTD_MARGIN;
}

/* Is msg[0, len) a compressed message (its first record a ZSTD one)? */
int hsp_zstd_is_packed(const void *msg, size_t len);

/*
 * Expands a compressed message into the codec's buffer: *data and *len
 * then name the records (valid until the next call on z). A message that
 * is not compressed is handed back as it is. Returns 0, or -1 with *why
 * set when the message is compressed but z is NULL (compression was not
 * agreed) or the message is malformed: the record does not fill the
 * message, its flags are unknown, its length is 0 or over
 * HSP_MESSAGE_MAX, it continues a stream that was never begun, or the
 * piece does not decode, asks for a larger window, or yields another
 * length. Memory that is short is -2 (*why says so): not the peer's
 * fault.
 */
int hsp_zstd_unpack(hsp_zstd *z, const void *msg, size_t len, const void **data, size_t *dlen,
                    const char **why);

#endif
