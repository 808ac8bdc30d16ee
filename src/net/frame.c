/*
 * frame.c - encoding and checking of frame headers.
 */
#include "net/frame.h"

#include "core/le.h"

#include <string.h>

#include "haul.h"

void haul__frame_encode(const haul__frame *f, uint8_t out[HAUL__FRAME_HDR])
{
    out[0] = f->version;
    out[1] = f->type;
    haul__put16(out + 2, f->flags);
    haul__put32(out + 4, f->len);
    haul__put32(out + 8, f->session);
    haul__put32(out + 12, f->aux);
    haul__put64(out + 16, f->seq);
    haul__put64(out + 24, f->offset);
    haul__put64(out + 32, f->total);
}

const char *haul__frame_name(int type)
{
    switch (type) {
#define X(name, num)                                                                               \
    case num:                                                                                      \
        return #name;
        HAUL__FOREACH_FRAME(X)
#undef X
    }
    return "UNKNOWN";
}

int haul__frame_decode(const uint8_t in[HAUL__FRAME_HDR], const haul__frame_limits *limits,
                       haul__frame *f, const char **why)
{
    f->version = in[0];
    f->type = in[1];
    f->flags = haul__get16(in + 2);
    f->len = haul__get32(in + 4);
    f->session = haul__get32(in + 8);
    f->aux = haul__get32(in + 12);
    f->seq = haul__get64(in + 16);
    f->offset = haul__get64(in + 24);
    f->total = haul__get64(in + 32);

    if (f->version != HAUL_PROTOCOL_VERSION) {
        *why = "unsupported protocol version";
        return HAUL_EVERSION;
    }
    if (f->type == 0 || f->type >= HAUL__F_COUNT_) {
        *why = "unknown frame type";
        return HAUL_EPROTO;
    }
    /* No flags are defined (version 2): a set bit means a peer we do not
     * understand, and guessing would be worse than refusing. */
    if (f->flags != 0) {
        *why = "unknown frame flags";
        return HAUL_EPROTO;
    }
    switch (f->type) {
    case HAUL__F_CHUNK:
        if (f->session == 0) {
            *why = "chunk without a session";
            return HAUL_EPROTO;
        }
        if (f->total > limits->max_message) {
            *why = "message length over the maximum";
            return HAUL_EPROTO;
        }
        if (f->len > HAUL__CHUNK_MAX) {
            *why = "chunk length over the maximum";
            return HAUL_EPROTO;
        }
        if (f->offset > f->total || f->len > f->total - f->offset) {
            *why = "chunk outside its message";
            return HAUL_EPROTO;
        }
        return 0;
    case HAUL__F_HELLO:
    case HAUL__F_HELLO_ACK:
        if (f->len != HAUL__HELLO_MAGIC_LEN) {
            *why = "hello of the wrong length";
            return HAUL_EPROTO;
        }
        if (f->offset < HAUL__CHUNK_MIN || f->offset > HAUL__CHUNK_MAX) {
            *why = "chunk size out of range";
            return HAUL_EPROTO;
        }
        return 0;
    case HAUL__F_SYNC:
        if (f->session == 0 || f->len < 2 || f->len > HAUL__CTL_PAYLOAD_MAX) {
            *why = "malformed sync";
            return HAUL_EPROTO;
        }
        return 0;
    case HAUL__F_ERROR:
        if (f->len > HAUL__CTL_PAYLOAD_MAX) {
            *why = "error text too long";
            return HAUL_EPROTO;
        }
        return 0;
    case HAUL__F_KEEPALIVE:
        /* A connection frame: it says only that the peer is there. */
        if (f->len != 0 || f->session != 0) {
            *why = "malformed keepalive";
            return HAUL_EPROTO;
        }
        return 0;
    default:
        /* The remaining session frames carry no payload. */
        if (f->len != 0 || f->session == 0) {
            *why = "malformed session frame";
            return HAUL_EPROTO;
        }
        return 0;
    }
}
