/*
 * transport.h - what carries a connection's bytes: one interface, and an
 * implementation per kind of stream.
 *
 * The connection core (net/conn.c) turns frames into bytes and bytes into
 * frames, keeps the batch and its write position, and runs the connection
 * and socket I/O state machines. It moves bytes through the operations
 * below only, and never asks which transport a connection has:
 *
 *   net/tcp.c  plain TCP: recv(), sendmsg(), sendfile(); nothing to
 *              secure, nothing held in user space.
 *   net/tls.c  mutual TLS 1.3 with OpenSSL: a handshake in CONN_SECURING,
 *              records sealed into a bounce buffer of the connection and
 *              a write buffer under OpenSSL, opened from OpenSSL's
 *              read-ahead buffer.
 *
 * A third implementation can come later without touching the core: kernel
 * TLS (the handshake of tls.c, then the keys handed to the socket, and
 * the plain operations of tcp.c with sendfile() again), or io_uring
 * (reads and writes submitted rather than made, completions turned into
 * the same results). The table is what it has to provide.
 *
 * Contracts common to every operation:
 * - They run on the I/O thread that owns the connection, with or without
 *   the engine's mutex as the core calls them (the reads and writes of
 *   data without it), and touch no state but the connection's own.
 * - Results are those of the system calls they stand for: bytes, 0 at the
 *   end of the stream, or -1 with errno. EAGAIN (or EWOULDBLOCK) means
 *   "wait for the next readiness edge"; EINTR means "call again"; EPROTO
 *   means a failure of the transport's own, which error() describes.
 * - The security state machine (net/secure_fsm.h) stays the one record of
 *   where a connection's security stands: a transport moves it through
 *   haul__secure_enter() (start, handshake, end of stream, fatal error)
 *   and nothing else does.
 * - Bytes a write reports taken are the transport's to deliver: the core
 *   moves its write position past them and may free what held them. A
 *   transport may keep copies of them (TLS seals small frames into a
 *   bounce buffer); flush() hands what it keeps to the socket, and the
 *   core calls it whenever the connection stops writing for a while.
 * - After a write returned EAGAIN, the core's next write passes the same
 *   bytes again from the same position (its position did not move), which
 *   is what a TLS library asks of a write to be retried.
 */
#ifndef HAUL_NET_TRANSPORT_H
#define HAUL_NET_TRANSPORT_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct haul__conn haul__conn;

typedef struct haul__transport_ops {
    const char *name; /* "tcp", "tls": for the log */

    /* Reads a connection makes before it lets the other connections of its
     * thread have a turn. A TLS read returns one record at most, so TLS
     * takes more reads for the same bytes. */
    unsigned read_turns;
    /* A read shorter than asked means the socket is drained (true of a
     * socket: the next arrival raises an edge); false when a read returns
     * a unit at a time (a TLS record) and says nothing of what is left. */
    int short_read_drains;

    /* Makes the connection's transport state, before the connection is
     * registered with its loop (mu held). Returns 0 or HAUL_ENOMEM. */
    int (*init)(haul__conn *conn);
    /* CONN_SECURING begins (mu held): starts the security state machine.
     * Returns 1 when the connection is secured at once (SEC_PLAIN), 0 when
     * a handshake has to run (handshake() on readiness events). */
    int (*start)(haul__conn *conn);
    /* One step of the handshake, without mu: 1 when done and the peer is
     * accepted (SEC_ESTABLISHED), 0 when it waits for the socket, -1 when
     * it failed (why says so, in a sentence for the log). */
    int (*handshake)(haul__conn *conn, char *why, size_t size);
    /* One line for the log once the handshake is done, say the cipher. */
    void (*describe)(haul__conn *conn, char *buf, size_t size);

    /* Reads into dst, at most len bytes. */
    ssize_t (*read)(haul__conn *conn, void *dst, size_t len);
    /* Bytes the transport holds already read from the socket, which no
     * readiness edge will announce (TLS: what OpenSSL read ahead): the
     * core reads them without waiting. */
    int (*pending)(haul__conn *conn);
    /* The last read could not go on until the socket is writable (TLS
     * answering a key update): the core reads again on EPOLLOUT. */
    int (*read_waits_write)(haul__conn *conn);

    /* Writes a gather list. `more` says that more bytes follow at once
     * (the body of a file), which a socket may wait for before it sends a
     * segment. Returns the bytes taken from the front of the list. */
    ssize_t (*writev)(haul__conn *conn, const struct iovec *iov, int n, int more);
    /* Writes len bytes of the file fd from offset off. Returns the bytes
     * taken, or 0 when the file gave none (it shrank or cannot be read:
     * the core fails the file's message, not the connection). */
    ssize_t (*write_file)(haul__conn *conn, int fd, off_t off, size_t len);
    /* Hands what the transport keeps of the bytes taken to the socket:
     * 0 when nothing is left, -1 with errno EAGAIN when the socket is full
     * (the next EPOLLOUT edge brings the core back), another errno when
     * the connection broke. */
    int (*flush)(haul__conn *conn);
    /* Bytes of the connection's stream the socket has taken so far, as
     * they go on the wire (TLS: records), given that the core's writes
     * took `taken` bytes since the last call; *held gets those the
     * transport keeps in front of the socket, at their size on the wire
     * (TLS: records in the write buffer, and the bounce buffer at the size
     * it will have once sealed). For where a chunk ends in the stream
     * (haul__chunk_tx.pos). */
    uint64_t (*wire)(haul__conn *conn, uint64_t taken, uint64_t *held);

    /* Describes a failure of the transport's own after a read or write
     * failed with errno err: returns the haul error code to close the
     * connection with (HAUL_ETLS) and fills why, or 0 when err is a plain
     * socket error that the caller describes itself. */
    int (*error)(haul__conn *conn, int err, char *why, size_t size);
    /* The connection is freed (mu held): says goodbye to the peer if the
     * transport has a way to (TLS: close_notify), best effort, while the
     * engine runs. */
    void (*shutdown)(haul__conn *conn);
    /* Frees the transport state; the core closes the descriptor. */
    void (*free)(haul__conn *conn);
} haul__transport_ops;

extern const haul__transport_ops haul__tcp_ops;
extern const haul__transport_ops haul__tls_ops;

/* The transport of a connection made with the TLS context tls_ctx (the
 * listener's or the pipe's; NULL: plain TCP). The one place a transport
 * is chosen. */
struct ssl_ctx_st;
const haul__transport_ops *haul__transport_for(struct ssl_ctx_st *tls_ctx);

/* A write to a broken connection may raise SIGPIPE (sendfile(), OpenSSL's
 * writes); the I/O threads block it, and a pending one is taken here so
 * that it never reaches the application. Keeps errno. */
void haul__consume_sigpipe(void);

#endif
