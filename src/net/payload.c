/*
 * payload.c - decoding the payloads of SYNC, HELLO and ERROR, and the
 * limits of SYNC and SYNC_ACK (docs/protocol.md, section 4).
 */
#include "net/payload.h"

#include <string.h>

#include "core/le.h"
#include "haul.h"

int haul__sync_decode(const uint8_t *payload, size_t len, haul__sync_request *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 2)
        return HAUL_EPROTO;
    size_t plen = haul__get16(payload);
    if (plen < 1 || plen > HAUL__PRINCIPAL_MAX || plen > len - 2 ||
        len - 2 - plen > HAUL__CONTEXT_MAX)
        return HAUL_EPROTO;
    /* A NUL would cut the principal short: the session would answer to
     * a shorter name than the one the request spelled out. */
    if (memchr(payload + 2, '\0', plen) != NULL)
        return HAUL_EPROTO;
    memcpy(out->principal, payload + 2, plen);
    out->principal[plen] = '\0';
    out->context_len = len - 2 - plen;
    out->context = out->context_len ? payload + 2 + plen : NULL;
    return 0;
}

size_t haul__sync_size(const char *principal, size_t context_len)
{
    return 2 + strlen(principal) + context_len;
}

void haul__sync_encode(const char *principal, const uint8_t *context, size_t context_len,
                       uint8_t *out)
{
    size_t plen = strlen(principal);
    haul__put16(out, (uint16_t)plen);
    memcpy(out + 2, principal, plen);
    if (context_len)
        memcpy(out + 2 + plen, context, context_len);
}

void haul__sync_limits_decode(const haul__frame *f, uint64_t max_message, haul__sync_limits *out)
{
    out->peer_max_message = f->offset < max_message ? f->offset : max_message;
    out->peer_input_queue = f->total;
}

int haul__hello_decode(const uint8_t *payload, size_t len)
{
    if (len != HAUL__HELLO_MAGIC_LEN || memcmp(payload, HAUL__HELLO_MAGIC, len) != 0)
        return HAUL_EPROTO;
    return 0;
}

int haul__error_decode(const haul__frame *f, const uint8_t *payload, size_t len, char *text,
                       size_t size)
{
    size_t n = len < size - 1 ? len : size - 1;
    for (size_t i = 0; i < n; i++)
        text[i] = payload[i] >= 32 && payload[i] < 127 ? (char)payload[i] : '?';
    text[n] = '\0';
    /* A refusal for a limit (the server's connections, a principal's)
     * stays one, so that the client can say so and an automatic pipe
     * keeps to the connections it has. */
    if ((int)f->aux == HAUL_EVERSION || (int)f->aux == HAUL_ELIMIT)
        return (int)f->aux;
    return HAUL_EPROTO;
}
