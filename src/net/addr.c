/*
 * addr.c - addresses and the sockets behind them: TCP over IPv4 and IPv6,
 * and Unix domain sockets. errno is read here and mapped to haul's codes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
/* struct tcp_info with tcpi_min_rtt: the kernel's header, not glibc's
 * older copy. */
#include <linux/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/engine.h"

/*
 * Accepts "host:port", "[v6]:port", ":port" (every address, IPv6 socket
 * that also takes IPv4) and "unix:/path". Names are resolved once, here;
 * the first address returned wins.
 */
int haul__addr_parse(const char *address, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (address == NULL || *address == '\0')
        return HAUL_EADDR;
    if (strncmp(address, "unix:", 5) == 0) {
        struct sockaddr_un *sun = (struct sockaddr_un *)ss;
        const char *path = address + 5;
        size_t n = strlen(path);
        if (n == 0 || n >= sizeof(sun->sun_path))
            return HAUL_EADDR;
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, path, n + 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        return 0;
    }

    char host[256];
    const char *port;
    if (address[0] == '[') {
        const char *end = strchr(address, ']');
        if (end == NULL || end[1] != ':' || (size_t)(end - address - 1) >= sizeof(host))
            return HAUL_EADDR;
        memcpy(host, address + 1, (size_t)(end - address - 1));
        host[end - address - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(address, ':');
        if (colon == NULL || (size_t)(colon - address) >= sizeof(host))
            return HAUL_EADDR;
        memcpy(host, address, (size_t)(colon - address));
        host[colon - address] = '\0';
        port = colon + 1;
    }
    char *endp;
    long p = strtol(port, &endp, 10);
    if (*port == '\0' || *endp != '\0' || p < 0 || p > 65535)
        return HAUL_EADDR;

    if (host[0] == '\0') {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_any;
        sin6->sin6_port = htons((uint16_t)p);
        *len = sizeof(*sin6);
        return 0;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
        return HAUL_EADDR;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)p);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)p);
    else
        return HAUL_EADDR;
    return 0;
}

int haul__addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN];
    int n;
    if (sa->sa_family == AF_UNIX) {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;
        n = snprintf(buf, size, "unix:%s", sun->sun_path);
    } else if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        n = snprintf(buf, size, "%s:%u", host, ntohs(sin->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        n = snprintf(buf, size, "[%s]:%u", host, ntohs(sin6->sin6_port));
    } else {
        return HAUL_EADDR;
    }
    (void)len;
    return (n < 0 || (size_t)n >= size) ? HAUL_EINVAL : 0;
}

/* Socket options for bulk transfer: no Nagle delay (frames are written
 * whole, and acknowledgements must not wait), and room in the kernel
 * buffers is left to the kernel's autotuning. */
static void tune(int fd, int family)
{
    if (family == AF_INET || family == AF_INET6) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
}

/* How long unacknowledged data may stay so before the kernel gives up on
 * the connection: the engine's idle timeout, so that a peer that stopped
 * acknowledging is found out as soon as one that stopped sending. */
void haul__sock_user_timeout(int fd, unsigned ms)
{
    int domain = 0;
    socklen_t len = sizeof(domain);
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 ||
        (domain != AF_INET && domain != AF_INET6))
        return;
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
}

int haul__sock_backlog(int fd, uint32_t bytes, uint32_t min_rtt_us, uint32_t *rtt_us)
{
    *rtt_us = 0;
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
        return 0; /* not TCP: a unix socket has no such queue */
    *rtt_us = ti.tcpi_rtt;
    if (bytes == 0 || ti.tcpi_rtt < min_rtt_us)
        return 0;
    int v = (int)bytes;
    return setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, sizeof(v)) == 0;
}

int haul__sock_unacked(int fd)
{
    int queued = 0;
    return ioctl(fd, SIOCOUTQ, &queued) == 0 ? queued : -1;
}

int haul__sock_room(int fd, uint32_t bytes)
{
    int unacked = haul__sock_unacked(fd);
    if (unacked <= 0)
        return 1;
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
        return 1;
    uint64_t cwnd = (uint64_t)ti.tcpi_snd_cwnd * ti.tcpi_snd_mss;
    return (uint64_t)unacked + bytes <= 2 * cwnd;
}

uint32_t haul__sock_pace(int fd, uint32_t floor, uint32_t *lowat, uint32_t *min_rtt)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    *min_rtt = 0;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
        return 0;
    *min_rtt = ti.tcpi_min_rtt;
    uint64_t half = (uint64_t)ti.tcpi_snd_cwnd * ti.tcpi_snd_mss / 2;
    uint32_t want = half > floor ? (half < (64u << 20) ? (uint32_t)half : 64u << 20) : floor;
    /* Rewritten only when it moved by a quarter: it is read at every
     * write the kernel wakes us for. */
    if (want > *lowat + *lowat / 4 || want < *lowat - *lowat / 4) {
        int v = (int)want;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, sizeof(v)) == 0)
            *lowat = want;
    }
    return ti.tcpi_rtt;
}

uint32_t haul__sock_min_rtt(int fd)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0)
        return 0;
    /* Without a sample the kernel reports its initial ~0; a SYN sent
     * twice may have none, or the timer's second instead of the path's
     * round trip. */
    if (ti.tcpi_min_rtt == UINT32_MAX || ti.tcpi_total_retrans != 0)
        return 0;
    return ti.tcpi_min_rtt;
}

int haul__sock_listen(const struct sockaddr_storage *ss, socklen_t len, int *fdp)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return HAUL_ESYS;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss->ss_family == AF_INET6) {
        int zero = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    }
    if (bind(fd, (const struct sockaddr *)ss, len) != 0 || listen(fd, HAUL_LISTEN_BACKLOG) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return e == EADDRINUSE || e == EADDRNOTAVAIL || e == EACCES ? HAUL_EADDR : HAUL_ESYS;
    }
    *fdp = fd;
    return 0;
}

int haul__sock_dial(const struct sockaddr_storage *ss, socklen_t len, int *fdp)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno == EMFILE || errno == ENFILE ? HAUL_ELIMIT : HAUL_ESYS;
    tune(fd, ss->ss_family);
    if (connect(fd, (const struct sockaddr *)ss, len) != 0 && errno != EINPROGRESS &&
        errno != EAGAIN) {
        int e = errno;
        close(fd);
        return e == ECONNREFUSED || e == ENOENT ? HAUL_ECONNREFUSED : HAUL_ESYS;
    }
    *fdp = fd;
    return 0;
}
