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
#include "raw_peer.h"
#include "util.h"

/* Reads one frame within ms; its payload (up to 8 KiB) is dropped. */
static int read_frame(int fd, haul__frame *f, int ms)
{
    uint8_t hdr[HAUL__FRAME_HDR], payload[HAUL__CTL_PAYLOAD_MAX];
    haul__frame_limits limits = {.max_message = 1u << 20};
    const char *why = NULL;
    if (!raw_read_exact(fd, hdr, sizeof(hdr), ms))
        return 0;
    CHECK_OK(haul__frame_decode(hdr, &limits, f, &why));
    CHECK_LE(f->len, sizeof(payload));
    return raw_read_exact(fd, payload, f->len, ms);
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

/* The client's session of `connections` connections to address. */
static haul_session *client_session(haul_engine *client, const char *address, unsigned connections)
{
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "HELLO_FAULTS";
    sc.connections = connections;
    haul_session *s = NULL;
    CHECK_OK(haul_session_new(client, &sc, &s));
    return s;
}

/* Accepts the client's next connection and reads its HELLO into *hello. */
static int accept_hello(int listener, haul__frame *hello)
{
    struct pollfd p = {.fd = listener, .events = POLLIN};
    CHECK_EQ(poll(&p, 1, 10000), 1);
    int fd = accept(listener, NULL, NULL);
    CHECK(fd >= 0);
    CHECK(await_frame(fd, HAUL__F_HELLO, hello, 10000));
    return fd;
}

/* The SYNC_ACK went on the connection that the client never joined and
 * was lost with it: the client sends its SYNC again at once. */
TEST(sync_repeated_when_a_half_joined_connection_breaks)
{
    harness_strerror = haul_strerror;
    char address[64];
    int listener = raw_listen(address, sizeof(address));
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.message_timeout_ms = 60000; /* the open deadline: far away */
    ec.redial_min_ms = 60000;      /* the broken connection stays away */
    ec.redial_max_ms = 60000;
    ec.log_level = -1;
    haul_engine *client = NULL;
    CHECK_OK(haul_engine_new(&ec, &client));
    haul_session *s = client_session(client, address, 2);

    /* Both connections say HELLO; the first in index order is answered. */
    int fds[2];
    uint32_t index[2];
    for (int i = 0; i < 2; i++) {
        haul__frame f;
        fds[i] = accept_hello(listener, &f);
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

/*
 * Every first dial of a pipe reset by the server (one that evicts
 * handshakes beyond its max_handshakes under a burst does so) is the load
 * of the moment, not a server that cannot be reached: the slots redial,
 * and the session opens once a server answers. It used to be refused at
 * once with ECONNRESET, which a pipe of 1000 connections met under load.
 */
TEST(first_handshakes_reset_are_redialled)
{
    harness_strerror = haul_strerror;
    char address[64];
    int listener = raw_listen(address, sizeof(address));
    haul_engine_config ec;
    haul_engine_config_init(&ec);
    ec.message_timeout_ms = 20000; /* the open deadline */
    /* The redials come well after the real server below listens. */
    ec.redial_min_ms = 300;
    ec.redial_max_ms = 300;
    ec.log_level = -1;
    haul_engine *client = NULL;
    CHECK_OK(haul_engine_new(&ec, &client));
    haul_session *s = client_session(client, address, 4);

    /* Every slot's HELLO is answered with a reset. */
    for (int i = 0; i < 4; i++) {
        haul__frame f;
        int fd = accept_hello(listener, &f);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        CHECK_OK(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)));
        close(fd);
    }
    close(listener);

    /* A real server takes the address; the redials find it. */
    haul_engine_config sec;
    haul_engine_config_init(&sec);
    sec.log_level = -1;
    haul_engine *server = NULL;
    CHECK_OK(haul_engine_new(&sec, &server));
    CHECK_OK(haul_listen(server, address, NULL));
    haul_event ev;
    CHECK(wait_for(server, HAUL_EV_SESSION_REQUEST, &ev, 10000));
    CHECK_OK(haul_session_accept(ev.session));
    CHECK(next_event(client, &ev, 10000));
    CHECK_EQ(ev.type, HAUL_EV_SESSION_OPEN);
    CHECK_OK(haul_send(s, "after the resets", 16, 7));
    CHECK(next_event(client, &ev, 10000));
    CHECK_EQ(ev.type, HAUL_EV_MESSAGE_SENT);
    CHECK_EQ(ev.tag, 7);

    haul_session_free(s);
    haul_engine_free(client);
    haul_engine_free(server);
}
