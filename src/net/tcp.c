/*
 * tcp.c - the plain transport (net/transport.h): a connection's bytes go
 * to and from its socket as they are. There is nothing to secure (the
 * security state machine passes through SEC_PLAIN at once) and nothing
 * kept in user space, so flush() has nothing to do.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>

#include "core/engine.h"
#include "net/transport.h"

/* The most reads one connection makes before the others of its thread
 * have a turn. */
#define TCP_READ_TURNS 16

void haul__consume_sigpipe(void)
{
    /* errno stays as the failed write left it: sigtimedwait() ends with
     * EAGAIN, which would read as "try again later". */
    int saved = errno;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&set, NULL, &zero) > 0) {
    }
    errno = saved;
}

static int tcp_init(haul__conn *c)
{
    return 0;
}

static int tcp_start(haul__conn *c)
{
    haul__secure_enter(c, HAUL__SECEV_PLAIN);
    return 1;
}

static int tcp_handshake(haul__conn *c, char *why, size_t size)
{
    return 1;
}

static void tcp_describe(haul__conn *c, char *buf, size_t size)
{
    snprintf(buf, size, "plain TCP");
}

static ssize_t tcp_read(haul__conn *c, void *dst, size_t len)
{
    return recv(c->fd, dst, len, 0);
}

static int tcp_pending(haul__conn *c)
{
    return 0;
}

static int tcp_read_waits_write(haul__conn *c)
{
    return 0;
}

static ssize_t tcp_writev(haul__conn *c, const struct iovec *iov, int n, int more)
{
    struct msghdr mh = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    return sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT | (more ? MSG_MORE : 0));
}

static ssize_t tcp_write_file(haul__conn *c, int fd, off_t off, size_t len)
{
    ssize_t n = sendfile(c->fd, fd, &off, len);
    if (n < 0 && errno == EPIPE)
        haul__consume_sigpipe();
    return n;
}

static int tcp_flush(haul__conn *c)
{
    return 0;
}

/* The socket took what the writes took: the connection's count goes on. */
static uint64_t tcp_wire(haul__conn *c, uint64_t taken, uint64_t *held)
{
    *held = 0;
    return atomic_load_explicit(&c->wire_sent, memory_order_relaxed) + taken;
}

static int tcp_error(haul__conn *c, int err, char *why, size_t size)
{
    return 0;
}

static void tcp_shutdown(haul__conn *c) {}

static void tcp_free(haul__conn *c) {}

const haul__transport_ops haul__tcp_ops = {
    .name = "tcp",
    .read_turns = TCP_READ_TURNS,
    .short_read_drains = 1,
    .init = tcp_init,
    .start = tcp_start,
    .handshake = tcp_handshake,
    .describe = tcp_describe,
    .read = tcp_read,
    .pending = tcp_pending,
    .read_waits_write = tcp_read_waits_write,
    .writev = tcp_writev,
    .write_file = tcp_write_file,
    .flush = tcp_flush,
    .wire = tcp_wire,
    .error = tcp_error,
    .shutdown = tcp_shutdown,
    .free = tcp_free,
};
