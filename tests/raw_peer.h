/*
 * raw_peer.h - one side of the protocol played from plain sockets.
 *
 * The tests that act as a peer which restarted, lost a frame, cut a chunk
 * short or sends bad input need the wire itself, not an engine: these
 * helpers listen on and dial loopback, and send and read whole frames.
 * Headers are built here byte by byte, as docs/protocol.md lays them out
 * (40 bytes, little endian), so that a test of the codec does not share
 * the codec it tests. Every helper fails the test (CHECK) on what must
 * not happen, and returns 0 on what a test may expect (EOF, a timeout).
 */
#ifndef HAUL_TESTS_RAW_PEER_H
#define HAUL_TESTS_RAW_PEER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "harness.h"
#include "haul.h"
#include "util.h"

/* The size of a frame header on the wire. */
#define RAW_HDR 40

/* Frame types of the wire format, written out here rather than taken
 * from the codec. */
enum {
    T_HELLO = 1,
    T_HELLO_ACK = 2,
    T_SYNC = 3,
    T_SYNC_ACK = 4,
    T_SYNC_NAK = 5,
    T_CHUNK = 6,
    T_ACK = 7,
    T_FIN = 8,
    T_FIN_ACK = 9,
    T_ABORT = 10,
    T_ERROR = 11,
    T_KEEPALIVE = 12,
};

/* A frame header, field by field, as docs/protocol.md names them. */
typedef struct raw_header {
    uint8_t version, type;
    uint16_t flags;
    uint32_t len, session, aux;
    uint64_t seq, offset, total;
} raw_header;

/* ---- sockets ------------------------------------------------------------- */

/* A listening socket on a port of its own on loopback; its address
 * ("127.0.0.1:PORT") goes to address. */
static inline int raw_listen(char *address, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_OK(bind(fd, (struct sockaddr *)&sin, sizeof(sin)));
    CHECK_OK(listen(fd, 16));
    socklen_t len = sizeof(sin);
    CHECK_OK(getsockname(fd, (struct sockaddr *)&sin, &len));
    snprintf(address, size, "127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
    return fd;
}

/* A connection to the port of address ("HOST:PORT") on loopback. */
static inline int raw_connect(const char *address)
{
    const char *colon = strrchr(address, ':');
    CHECK(colon != NULL);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                              .sin_port = htons((uint16_t)atoi(colon + 1))};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    CHECK_OK(connect(fd, (struct sockaddr *)&sin, sizeof(sin)));
    return fd;
}

static inline void raw_send_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        CHECK_GT(n, 0);
        p += n;
        len -= (size_t)n;
    }
}

/* Reads exactly len bytes, waiting at most ms for each part; returns 1,
 * or 0 on EOF, error or timeout. */
static inline int raw_read_exact(int fd, void *buf, size_t len, int ms)
{
    uint8_t *p = buf;
    while (len > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

/* ---- frames by hand ------------------------------------------------------ */

static inline void raw_put_le(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint64_t raw_get_le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline void raw_encode(const raw_header *h, uint8_t out[RAW_HDR])
{
    out[0] = h->version;
    out[1] = h->type;
    raw_put_le(out + 2, h->flags, 2);
    raw_put_le(out + 4, h->len, 4);
    raw_put_le(out + 8, h->session, 4);
    raw_put_le(out + 12, h->aux, 4);
    raw_put_le(out + 16, h->seq, 8);
    raw_put_le(out + 24, h->offset, 8);
    raw_put_le(out + 32, h->total, 8);
}

static inline raw_header raw_decode(const uint8_t in[RAW_HDR])
{
    raw_header h = {.version = in[0],
                    .type = in[1],
                    .flags = (uint16_t)raw_get_le(in + 2, 2),
                    .len = (uint32_t)raw_get_le(in + 4, 4),
                    .session = (uint32_t)raw_get_le(in + 8, 4),
                    .aux = (uint32_t)raw_get_le(in + 12, 4),
                    .seq = raw_get_le(in + 16, 8),
                    .offset = raw_get_le(in + 24, 8),
                    .total = raw_get_le(in + 32, 8)};
    return h;
}

/* Sends the header alone, with the version it carries (a test may lie). */
static inline void raw_send_header(int fd, const raw_header *h)
{
    uint8_t b[RAW_HDR];
    raw_encode(h, b);
    raw_send_all(fd, b, RAW_HDR);
}

/* Sends one frame of the current protocol version: the header and its
 * h.len bytes of payload. */
static inline void raw_send_frame(int fd, raw_header h, const void *payload)
{
    h.version = HAUL_PROTOCOL_VERSION;
    raw_send_header(fd, &h);
    if (h.len)
        raw_send_all(fd, payload, h.len);
}

/* Reads one frame, its payload into payload[] (up to max bytes, the rest
 * dropped); a payload longer than len_max fails the test. Returns 1 when
 * a whole frame came, each part within ms. */
static inline int raw_read_frame(int fd, raw_header *h, uint8_t *payload, size_t max,
                                 uint32_t len_max, int ms)
{
    uint8_t b[RAW_HDR];
    if (!raw_read_exact(fd, b, RAW_HDR, ms))
        return 0;
    *h = raw_decode(b);
    CHECK_LE(h->len, len_max);
    uint8_t *body = malloc(h->len ? h->len : 1);
    CHECK(body != NULL);
    int ok = raw_read_exact(fd, body, h->len, ms);
    if (ok && payload)
        memcpy(payload, body, h->len < max ? h->len : max);
    free(body);
    return ok;
}

/* The HELLO of connection `index` of the pipe `pipe_id`, announcing
 * chunks of chunk_size bytes; its payload is the 4-byte magic "HAUL". */
static inline raw_header raw_hello(uint64_t pipe_id, uint32_t index, uint64_t chunk_size)
{
    raw_header h = {.version = HAUL_PROTOCOL_VERSION,
                    .type = T_HELLO,
                    .len = 4,
                    .aux = index,
                    .seq = pipe_id,
                    .offset = chunk_size};
    return h;
}

/* Sends that HELLO with its magic. */
static inline void raw_send_hello(int fd, uint64_t pipe_id, uint32_t index, uint64_t chunk_size)
{
    raw_header h = raw_hello(pipe_id, index, chunk_size);
    raw_send_header(fd, &h);
    raw_send_all(fd, "HAUL", 4);
}

#endif
