/*
 * hello_faults_test.c - a connection that breaks between the server's
 * join and the client's.
 *
 * The server joins a connection when it reads the HELLO and answers
 * HELLO_ACK; the client only when the HELLO_ACK arrives. A connection
 * that breaks in between is joined on one side only, and the server may
 * already have put answers on it (a SYNC_ACK) that are lost with it. The
 * client must then ask again, as after the loss of a joined connection,
 * not wait for its open deadline. The server here is played from plain
 * sockets, with frames from the engine's own codec.
 */
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/engine.h"
#include "harness.h"
#include "util.h"

static int listen_loopback(char *buf, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)));
    CHECK_OK(listen(fd, 16));
    socklen_t len = sizeof(sa);
    CHECK_OK(getsockname(fd, (struct sockaddr *)&sa, &len));
    snprintf(buf, size, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    return fd;
}

static int read_exact(int fd, void *buf, size_t len, int ms)
{
    uint8_t *p = buf;
    while (len > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, ms) != 1)
            return 0;
        ssize_t n = recv(fd, p, len, 0);
        if (n <= 0)
            return 0;
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

/* Reads one frame within ms; its payload (up to 8 KiB) is dropped. */
static int read_frame(int fd, haul__frame *f, int ms)
{
    uint8_t hdr[HAUL__FRAME_HDR], payload[HAUL__CTL_PAYLOAD_MAX];
    haul__frame_limits limits = {.max_message = 1u << 20};
    const char *why = NULL;
    if (!read_exact(fd, hdr, sizeof(hdr), ms))
        return 0;
    CHECK_OK(haul__frame_decode(hdr, &limits, f, &why));
    CHECK_LE(f->len, sizeof(payload));
    return read_exact(fd, payload, f->len, ms);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads frames until one of `type` comes within ms (keepalives and the
 * like are skipped). */
static int await_frame(int fd, int type, haul__frame *f, int ms)
{
    int64_t deadline = now_ms() + ms;
    for (int64_t left = ms; left > 0; left = deadline - now_ms()) {
        if (!read_frame(fd, f, (int)left))
            return 0;
        if (f->type == type)
            return 1;
    }
    return 0;
}

static void send_hello_ack(int fd, uint32_t chunk)
{
    haul__frame f = {.version = HAUL_PROTOCOL_VERSION,
                     .type = HAUL__F_HELLO_ACK,
                     .len = HAUL__HELLO_MAGIC_LEN,
                     .offset = chunk};
    uint8_t out[HAUL__FRAME_HDR + HAUL__HELLO_MAGIC_LEN];
    haul__frame_encode(&f, out);
    memcpy(out + HAUL__FRAME_HDR, HAUL__HELLO_MAGIC, HAUL__HELLO_MAGIC_LEN);
    CHECK_EQ(send(fd, out, sizeof(out), MSG_NOSIGNAL), (ssize_t)sizeof(out));
}

/* The SYNC_ACK went on the connection that the client never joined and
 * was lost with it: the client sends its SYNC again at once. */
TEST(sync_repeated_when_a_half_joined_connection_breaks)
{
    harness_strerror = haul_strerror;
    char address[64];
    int listener = listen_loopback(address, sizeof(address));
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.message_timeout_ms = 60000; /* the open deadline: far away */
    ec.redial_min_ms = 60000;      /* the broken connection stays away */
    ec.redial_max_ms = 60000;
    ec.log_level = -1;
    haul_engine *client = NULL;
    CHECK_OK(haul_engine_new(&ec, &client));
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "HELLO_FAULTS";
    sc.connections = 2;
    haul_session *s = NULL;
    CHECK_OK(haul_session_new(client, &sc, &s));

    /* Both connections say HELLO; the first in index order is answered. */
    int fds[2];
    uint32_t index[2];
    for (int i = 0; i < 2; i++) {
        struct pollfd p = {.fd = listener, .events = POLLIN};
        CHECK_EQ(poll(&p, 1, 10000), 1);
        fds[i] = accept(listener, NULL, NULL);
        CHECK(fds[i] >= 0);
        haul__frame f;
        CHECK(await_frame(fds[i], HAUL__F_HELLO, &f, 10000));
        index[i] = f.aux;
    }
    int joined = index[0] == 0 ? fds[0] : fds[1];
    int half = index[0] == 0 ? fds[1] : fds[0];
    send_hello_ack(joined, ec.chunk_size);
    haul__frame sync;
    CHECK(await_frame(joined, HAUL__F_SYNC, &sync, 10000));

    /* The server joined the other one too and answered the SYNC there;
     * then that connection broke before its HELLO_ACK was all read. */
    shutdown(half, SHUT_RDWR);
    close(half);
    haul__frame again;
    CHECK(await_frame(joined, HAUL__F_SYNC, &again, 5000));
    CHECK_EQ(again.session, sync.session);

    haul_session_free(s);
    haul_engine_free(client);
    close(joined);
    close(listener);
}
