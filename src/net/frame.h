/*
 * frame.h - the wire frame codec (docs/protocol.md, "Frames").
 *
 * Every frame is a fixed 40-byte header, little endian, followed by `len`
 * payload bytes. The decoder checks every field against explicit limits
 * before anything is allocated, so that a hostile peer can at worst get
 * its own connection closed.
 */
#ifndef HAUL_NET_FRAME_H
#define HAUL_NET_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define HAUL__FRAME_HDR 40

/* The largest payload of any control frame (SYNC carries the principal
 * and the context). */
#define HAUL__CTL_PAYLOAD_MAX 8192
#define HAUL__PRINCIPAL_MAX 255
#define HAUL__CONTEXT_MAX 4096
/* The chunk size limits, on the wire as in the configuration. */
#define HAUL__CHUNK_MIN 4096u
#define HAUL__CHUNK_MAX (16u << 20)

/* Frame types, with their names for logs. */
#define HAUL__FOREACH_FRAME(X)                                                                     \
    X(HELLO, 1)                                                                                    \
    X(HELLO_ACK, 2)                                                                                \
    X(SYNC, 3)                                                                                     \
    X(SYNC_ACK, 4)                                                                                 \
    X(SYNC_NAK, 5)                                                                                 \
    X(CHUNK, 6)                                                                                    \
    X(ACK, 7)                                                                                      \
    X(FIN, 8)                                                                                      \
    X(FIN_ACK, 9)                                                                                  \
    X(ABORT, 10)                                                                                   \
    X(ERROR, 11)                                                                                   \
    X(KEEPALIVE, 12)

enum {
#define X(name, num) HAUL__F_##name = num,
    HAUL__FOREACH_FRAME(X)
#undef X
        HAUL__F_COUNT_
};

typedef struct haul__frame {
    uint8_t version;
    uint8_t type;
    uint16_t flags;
    uint32_t len;     /* payload bytes that follow the header */
    uint32_t session; /* session id, 0 for connection frames */
    uint32_t aux;     /* ACK: WndSize; SYNC_NAK/ABORT/ERROR: code; HELLO: index */
    uint64_t seq;     /* CHUNK/ACK: message sequence; FIN: messages delivered; HELLO: pipe id */
    uint64_t offset;  /* CHUNK: payload offset; SYNC*: max message; HELLO*: chunk */
    uint64_t total;   /* CHUNK: message length; SYNC*: input queue bytes */
} haul__frame;

/* The magic payload of HELLO and HELLO_ACK. */
#define HAUL__HELLO_MAGIC "HAUL"
#define HAUL__HELLO_MAGIC_LEN 4

/* What the decoder accepts from this peer. */
typedef struct haul__frame_limits {
    uint64_t max_message; /* a CHUNK's total may not exceed it */
} haul__frame_limits;

void haul__frame_encode(const haul__frame *f, uint8_t out[HAUL__FRAME_HDR]);

/*
 * Decodes and checks a header. Returns 0, or HAUL_EVERSION / HAUL_EPROTO
 * with *why set to a static sentence naming the fault.
 */
int haul__frame_decode(const uint8_t in[HAUL__FRAME_HDR], const haul__frame_limits *limits,
                       haul__frame *f, const char **why);

const char *haul__frame_name(int type);

#endif
