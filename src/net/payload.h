/*
 * payload.h - the decoders (and the encoder of SYNC) of what control
 * frames carry beyond their header: the SYNC request, the limits SYNC and
 * SYNC_ACK announce, the HELLO magic and the ERROR text
 * (docs/protocol.md, section 4).
 *
 * They are pure functions of their input: no engine, no allocation, no
 * state, so that they can be tested and fuzzed on their own
 * (src/net/payload_test.c, fuzz/payload_fuzz.c). The header itself has
 * already passed haul__frame_decode(): the payload is exactly f->len
 * bytes, within HAUL__CTL_PAYLOAD_MAX.
 */
#ifndef HAUL_NET_PAYLOAD_H
#define HAUL_NET_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "net/frame.h"

/* What a SYNC asks for: the principal, as a C string of 1 to
 * HAUL__PRINCIPAL_MAX bytes without a NUL, and the context, which points
 * into the payload it was decoded from. */
typedef struct haul__sync_request {
    char principal[HAUL__PRINCIPAL_MAX + 1];
    const uint8_t *context;
    size_t context_len;
} haul__sync_request;

/*
 * Decodes the payload of a SYNC: u16 LE principal length P (1..255), P
 * bytes of principal (none of them NUL, since the engine keeps it as a C
 * string), then the context (0..HAUL__CONTEXT_MAX bytes, the rest).
 * Returns 0, or HAUL_EPROTO when the payload is malformed (then *out is
 * cleared). What it accepts, haul__sync_encode() writes back byte for
 * byte.
 */
int haul__sync_decode(const uint8_t *payload, size_t len, haul__sync_request *out);

/* The payload length of a SYNC (2 + principal + context). */
size_t haul__sync_size(const char *principal, size_t context_len);

/* Writes a SYNC payload of haul__sync_size() bytes into out. principal
 * is a C string of 1 to HAUL__PRINCIPAL_MAX bytes; context may be NULL
 * when context_len is 0. */
void haul__sync_encode(const char *principal, const uint8_t *context, size_t context_len,
                       uint8_t *out);

/* The limits a SYNC or a SYNC_ACK announces, as this side applies them. */
typedef struct haul__sync_limits {
    uint64_t peer_max_message; /* min(offset, our max_message) */
    uint64_t peer_input_queue; /* total */
} haul__sync_limits;

void haul__sync_limits_decode(const haul__frame *f, uint64_t max_message, haul__sync_limits *out);

/* The payload of a HELLO or HELLO_ACK: 0 when it is the magic "HAUL",
 * HAUL_EPROTO otherwise. */
int haul__hello_decode(const uint8_t *payload, size_t len);

/*
 * Decodes an ERROR: writes its text into text (size > 0 bytes), at most
 * size - 1 bytes of it, NUL-terminated, every byte outside printable
 * ASCII replaced by '?', and returns the error the connection closes
 * with: HAUL_EVERSION or HAUL_ELIMIT when aux says so, HAUL_EPROTO
 * otherwise. payload
 * may be NULL when len is 0.
 */
int haul__error_decode(const haul__frame *f, const uint8_t *payload, size_t len, char *text,
                       size_t size);

#endif
