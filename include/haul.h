/*
 * haul.h - the public interface of libhaul, a message-based scalable data
 * transport.
 *
 * This header is the library's contract. Everything a program may rely on
 * is written here; anything not written here is an implementation detail.
 *
 * Vocabulary (the seed's names):
 *
 *   engine      the communication engine of a process: it owns the I/O
 *               threads, every connection and the completion queue.
 *   session     one logical, reliable, ordered stream of whole messages
 *               between two applications, in both directions.
 *   message     the unit of transfer and of flow control: 0 bytes to a
 *               configured maximum (64 MiB by default).
 *   pipe        the bundle of connections between this engine and one
 *               destination. Every session to that destination shares it.
 *   dispatcher  the part of a pipe that puts the messages of its sessions
 *               onto whichever connection is free.
 *   window      WndSize: how many more messages the receiver will admit.
 *
 * Rules that hold for every call:
 *
 *   1. A call that returns an error posts no event and changes nothing.
 *   2. An operation that was accepted posts exactly one final event:
 *      haul_session_new        -> HAUL_EV_SESSION_OPEN or
 *                                 HAUL_EV_SESSION_REFUSED
 *      haul_send*              -> HAUL_EV_MESSAGE_SENT or
 *                                 HAUL_EV_MESSAGE_FAILED
 *      haul_session_close      -> HAUL_EV_SESSION_CLOSED
 *      An open session always ends with one HAUL_EV_SESSION_CLOSED.
 *      The room for these events is reserved when the operation is
 *      accepted, so posting them cannot fail later; a call for which it
 *      cannot be reserved fails with HAUL_ENOMEM. A server session whose
 *      events cannot be reserved is refused by the engine (the client
 *      sees HAUL_EREFUSED with reason HAUL_ENOMEM).
 *      HAUL_EV_PIPE_DOWN and HAUL_EV_PIPE_UP are informational: they
 *      come in pairs (DOWN, then UP when the pipe is back) at any time
 *      before a session's final event, and are never final themselves.
 *      One for which the completion queue has no room (memory ran out)
 *      comes late, once there is room, or not at all when the pipe
 *      changed back meanwhile: the pairs hold. An application may
 *      ignore them.
 *   3. Each event names its level. HAUL_EV_MESSAGE_SENT means that the
 *      receiving engine has the whole message in the session's input
 *      queue and acknowledged it; it does not mean "left the socket".
 *   4. No call blocks on the network. haul_engine_wait() is the only call
 *      that waits, and only as long as it is told.
 *   5. Every function may be called from any thread unless its comment
 *      says otherwise. Events are taken by whichever thread calls
 *      haul_engine_wait().
 *   6. Errors are the positive HAUL_E* codes below; 0 is success.
 */
#ifndef HAUL_H
#define HAUL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(HAUL_BUILDING) && defined(__GNUC__)
#define HAUL_API __attribute__((visibility("default")))
#else
#define HAUL_API
#endif

#define HAUL_VERSION_MAJOR 0
#define HAUL_VERSION_MINOR 1
#define HAUL_VERSION_PATCH 0

/* The wire protocol version this library speaks (docs/protocol.md). A
 * peer of another version is refused with HAUL_EVERSION. */
#define HAUL_PROTOCOL_VERSION 2

/*
 * Error codes. The table below generates the enum, the names and the
 * messages of haul_strerror(). Codes are appended, never renumbered.
 */
#define HAUL_FOREACH_ERROR(X)                                                                      \
    X(OK, 0, "success")                                                                            \
    X(EINVAL, 1, "invalid argument")                                                               \
    X(ENOMEM, 2, "out of memory")                                                                  \
    X(EQUEUEFULL, 3, "output queue full")                                                          \
    X(EMSGSIZE, 4, "message larger than allowed")                                                  \
    X(EAGAIN, 5, "nothing to take now")                                                            \
    X(ESTATE, 6, "operation not allowed in the session's state")                                   \
    X(ECLOSED, 7, "session closed")                                                                \
    X(ETIMEDOUT, 8, "timed out")                                                                   \
    X(EREFUSED, 9, "session refused by the peer")                                                  \
    X(ECONNREFUSED, 10, "connection refused")                                                      \
    X(ECONNRESET, 11, "connection lost")                                                           \
    X(EPROTO, 12, "protocol violation by the peer")                                                \
    X(EVERSION, 13, "unsupported protocol version")                                                \
    X(EADDR, 14, "bad address")                                                                    \
    X(ESYS, 15, "system call failed")                                                              \
    X(ELIMIT, 16, "configured limit reached")                                                      \
    X(ESHUTDOWN, 17, "engine is shutting down")                                                    \
    X(EATTEMPTS, 18, "too many transmission attempts")                                             \
    X(EABORTED, 19, "session aborted by the peer")                                                 \
    X(EIO, 20, "input/output error")                                                               \
    X(ETLS, 21, "TLS setup or handshake failed")                                                   \
    X(ENOSESSION, 22, "the peer does not know the session (it restarted or already ended it)")

typedef enum haul_error {
#define HAUL_ERROR_ENUM_(name, code, text) HAUL_##name = code,
    HAUL_FOREACH_ERROR(HAUL_ERROR_ENUM_)
#undef HAUL_ERROR_ENUM_
        HAUL_ERROR_COUNT_
} haul_error;

/* Returns a static, human readable text for any code, known or not. */
HAUL_API const char *haul_strerror(int code);

/* Returns the symbolic name of a code ("EQUEUEFULL"), or "E?" if unknown. */
HAUL_API const char *haul_errname(int code);

/* ------------------------------------------------------------------------ */
/* Engine                                                                   */
/* ------------------------------------------------------------------------ */

/* The backlog haul_listen() asks of the kernel: connections that wait to
 * be accepted (the kernel caps it at net.core.somaxconn). A burst of
 * clients beyond max_handshakes waits there (haul_engine_config). */
#define HAUL_LISTEN_BACKLOG 4096

typedef struct haul_engine haul_engine;
typedef struct haul_session haul_session;
typedef struct haul_message haul_message;

/* Levels for the log callback. */
enum { HAUL_LOG_ERROR = 0, HAUL_LOG_WARN = 1, HAUL_LOG_INFO = 2, HAUL_LOG_DEBUG = 3 };

/*
 * Engine configuration. Initialise with haul_engine_config_init(), which
 * fills in the documented defaults, then change what you need. Every bound
 * the engine enforces is here.
 */
typedef struct haul_engine_config {
    /* I/O threads, each owning a share of the connections; the
     * connections of one pipe spread over them. Default 1, range 1..64. */
    unsigned io_threads;
    /* Largest message any session may send or accept. Default 64 MiB,
     * range 0 .. 4 GiB - 1. */
    uint64_t max_message;
    /* Bytes of one chunk on the wire; larger messages are cut into chunks
     * that may travel on different connections. Default 256 KiB, range
     * 4 KiB .. 16 MiB. Both ends may use different values. */
    uint32_t chunk_size;
    /* Most sessions this engine holds at once. Default 4096. */
    unsigned max_sessions;
    /* Most connections this engine holds at once, all pipes and accepted
     * connections together. Default 4096. A server accepts a connection
     * beyond it only to refuse it at its HELLO with an ERROR frame
     * (HAUL_ELIMIT, "server busy: N connections is its limit"), which a
     * client whose every first connection was so refused reports as
     * HAUL_EV_SESSION_REFUSED with HAUL_ELIMIT. */
    unsigned max_connections;
    /* Connections that have not yet finished their handshake may live this
     * long. Default 10000 ms. */
    unsigned handshake_timeout_ms;
    /* Most accepted connections that have not yet finished their handshake
     * (TLS and HELLO) at once. A new one beyond it waits in the kernel's
     * accept queue (HAUL_LISTEN_BACKLOG) until a handshake ends, or until
     * the one that has been handshaking longest has been at it for a
     * quarter of handshake_timeout_ms, which it then closes: silent or
     * slow peers can neither take every connection nor keep an honest
     * client out for longer than that, and the honest clients of a burst,
     * young handshakes all, are never closed to make room for each
     * other. Default 1024: a burst of a thousand clients whose HELLOs
     * arrive slowly (clients short of CPU) is still handshaking at once,
     * at about 20 KiB of the engine's memory each. */
    unsigned max_handshakes;
    /* A message fails, and so does its session, with HAUL_ETIMEDOUT, when
     * it is still not acknowledged and the session has made no progress
     * for this long (and it was queued at least this long ago). Progress
     * is an acknowledgement from the receiver, a chunk of the session's
     * messages written whole to a connection, or bytes leaving the send
     * queue of a connection that carries chunks of them (the engine
     * watches it every 20 ms): a large message on a slow link that keeps
     * moving does not time out, however long it takes, while one whose
     * bytes stopped (a dead link, or a receiver whose window stays
     * closed) fails this long after they stopped. Default 60000 ms.
     * Sessions may override it. */
    unsigned message_timeout_ms;
    /* Rounds of retransmission a message may need before it fails, with
     * its session, with HAUL_EATTEMPTS. A round begins when a connection
     * that carried chunks of the message breaks before the message is
     * acknowledged, so that those chunks must be sent again. Connections
     * that break before any chunk of the message has been written again
     * (whole, or in part) add nothing to that round: one fault that breaks every connection
     * of the pipe costs one round, however many connections carried the
     * message. The message fails when a round would be the
     * max_attempts-th (1: at the first). Default 8. */
    unsigned max_attempts;
    /* Redial backoff of a lost pipe connection: starts at the minimum,
     * doubles up to the maximum. Defaults 20 ms and 2000 ms. */
    unsigned redial_min_ms;
    unsigned redial_max_ms;
    /* Liveness of joined connections. A connection that has written
     * nothing for keepalive_ms writes a KEEPALIVE frame, ahead of any
     * other frame, so that its peer hears from it while the pipe is idle.
     * A connection that has received nothing (no byte of any frame) for
     * idle_timeout_ms is taken for dead: it closes with HAUL_ETIMEDOUT
     * and is handled as any broken connection (a client redials it, what
     * it carried goes again on the others). idle_timeout_ms is also set
     * as TCP_USER_TIMEOUT on TCP sockets, so that the kernel gives up on
     * unacknowledged data in the same time. Defaults 5000 and 15000 ms;
     * 0 disables either. Ranges: keepalive_ms 0 or 10 .. 3600000,
     * idle_timeout_ms 0 or 50 .. 86400000, and when both are set,
     * keepalive_ms below idle_timeout_ms. The peer's keepalive_ms is what
     * keeps our idle timer from expiring: set idle_timeout_ms to about
     * three times the peer's keepalive_ms, so that one late keepalive is
     * not taken for a dead peer. */
    unsigned keepalive_ms;
    unsigned idle_timeout_ms;
    /* Bytes a TCP connection may hold in its kernel send queue that have
     * not yet been sent (TCP_NOTSENT_LOWAT). A connection takes a new
     * chunk only once what it holds unsent falls below this, so that
     * chunks go to the connections that are really moving bytes, and no
     * chunk waits behind megabytes queued on a slow one while the
     * message it belongs to holds up the window. Applied to connections
     * whose round trip, measured when they join, is at least
     * backlog_min_rtt_us: on shorter ones a full kernel queue drains in
     * less time than the wakeups a small one costs. Default 131072
     * (128 KiB); 0 leaves the kernel's queue as it is; range 0 or
     * 16 KiB .. 64 MiB. backlog_min_rtt_us: default 1000, 0 applies the
     * backlog to every TCP connection. */
    uint32_t conn_backlog;
    uint32_t backlog_min_rtt_us;
    /* Engine-wide memory budget: the most bytes of message bodies that the
     * engine holds for all its sessions together, both ways. 0, the
     * default, sets none: each session is bounded by its own queues
     * alone. Otherwise it must be at least twice max_message
     * (HAUL_EINVAL from haul_engine_new() if not): one largest message
     * of it is kept for sends, and the rest must hold at least one
     * receive slot of the largest unit, so that no session can wait for
     * memory that can never be had.
     *
     * What counts:
     *   - received: each window slot granted to a peer is reserved at the
     *     peer's max_message (the unit of the window; a unit of 0 counts
     *     1) until its message's first chunk arrives; the message then
     *     counts its length (an empty one 1) until the application's
     *     haul_message_free(), from whatever thread, even after the
     *     engine is freed, so that data taken with haul_recv() but not
     *     yet written still counts. Messages the engine drops
     *     (duplicates, a session that fails) count no more, and slots
     *     granted but never used are given back when their session ends.
     *     Slots and received messages together use at most the budget
     *     less max_message: the rest is for sends, so that the slots of
     *     idle peers can never hold back the answers those peers wait
     *     for.
     *   - sent: a message counts its length (an empty one 1) from
     *     haul_send(), haul_send_buffer() or haul_send_file() until it is
     *     acknowledged or fails and its body is released (a file message
     *     counts too: it bounds what the engine takes on).
     *
     * When it is full: a send that would pass the budget fails with
     * HAUL_EQUEUEFULL, as a full output queue does, and the session then
     * gets one HAUL_EV_WINDOW_OPENED (window: the peer's WndSize) when
     * memory for that send has been set aside for it, so that an
     * application that retries on HAUL_EV_WINDOW_OPENED or
     * HAUL_EV_MESSAGE_SENT never hangs. A receiving session whose window
     * would open gets no new slots until memory frees (its peer's
     * messages wait in the peer's output queue, as for any closed
     * window, and time out after message_timeout_ms without progress
     * there). No grant ever moves a right edge back: what was granted
     * stays reserved until used or the session ends, so a session whose
     * peer stops sending without closing keeps its slots.
     *
     * Fairness: new slots are shared between principals first, then
     * between the sessions of each principal: a principal may hold about
     * (budget - max_message) / (principals that hold or want receive
     * memory), a session about its principal's part / (its principal's
     * sessions that do), and never less than one unit. A session's slots
     * outstanding start at 2 and grow by one for each one its peer uses,
     * so that a session whose peer sends little holds little. Sessions
     * that wait for memory (a closed window with nothing held, or a
     * refused send) are served in the order they began to wait: receive
     * slots in that order among themselves, sends among themselves, and
     * a send leaves free the unit of the first slot that waits for
     * memory, so that neither side starves the other. A session's own
     * input_queue and output_queue still bound it: a single session may
     * have the whole receive part up to its input queue.
     *
     * Receive bodies of 64 KiB and more are mapped on their own and,
     * once freed, kept in a pool for reuse within the budget; a pooled
     * body that nobody took for a second is unmapped, so that an idle
     * engine gives its memory back to the system. haul_engine_stats reports
     * memory_used and memory_peak. */
    uint64_t memory;
    /* Optional log sink; called from engine threads with a full sentence.
     * Without it, errors and warnings go to stderr when log_level allows. */
    void (*log)(void *arg, int level, const char *line);
    void *log_arg;
    /* Most verbose level passed on. Default HAUL_LOG_WARN. */
    int log_level;
} haul_engine_config;

/* Fills *config with the defaults above. */
HAUL_API void haul_engine_config_init(haul_engine_config *config);

/*
 * Creates an engine and starts its I/O threads. On success *enginep owns
 * the engine until haul_engine_free(). Errors: HAUL_EINVAL (a bound out of
 * range), HAUL_ENOMEM, HAUL_ESYS.
 */
HAUL_API int haul_engine_new(const haul_engine_config *config, haul_engine **enginep);

/*
 * Stops the engine: closes every connection and listener, stops the
 * threads and frees every session, message and event that it still owns.
 * Messages taken with haul_recv() stay valid until haul_message_free().
 * Must not be called from a callback or concurrently with other calls on
 * the same engine.
 */
HAUL_API void haul_engine_free(haul_engine *engine);

/*
 * A file descriptor that is readable while events wait in the completion
 * queue, for use in the application's own poll or epoll loop. Owned by the
 * engine; do not read or close it.
 */
HAUL_API int haul_engine_fd(haul_engine *engine);

/* Event types. */
typedef enum haul_event_type {
    HAUL_EV_NONE = 0,
    /* Server: a client asks for a session. Answer with haul_session_accept
     * or haul_session_reject. The session handle is new. */
    HAUL_EV_SESSION_REQUEST,
    /* Client: the server accepted the session; messages may flow. */
    HAUL_EV_SESSION_OPEN,
    /* Client: the session could not be opened (error says why: HAUL_EREFUSED
     * with the server's reason code in `reason`, or a connection error). */
    HAUL_EV_SESSION_REFUSED,
    /* A whole message waits in the session's input queue: haul_recv(). */
    HAUL_EV_MESSAGE_RECEIVED,
    /* The receiver acknowledged the message with this tag. `window` is the
     * WndSize its acknowledgement carried. */
    HAUL_EV_MESSAGE_SENT,
    /* The message with this tag will not be delivered; `error` says why. */
    HAUL_EV_MESSAGE_FAILED,
    /* The receiver's window grew without new acknowledgements (it took a
     * message out of its input queue) while messages waited for it;
     * `window` is the new WndSize. Also, with an engine memory budget
     * (haul_engine_config.memory): memory was set aside for a send that
     * the budget refused with HAUL_EQUEUEFULL; send it again. */
    HAUL_EV_WINDOW_OPENED,
    /* The session ended: error is HAUL_OK after an orderly close by either
     * side, else the reason. The last event of every session. */
    HAUL_EV_SESSION_CLOSED,
    /* Informational: the last joined connection of the session's pipe
     * went; `error` says why the last one went (HAUL_ETIMEDOUT when the
     * peer fell silent for idle_timeout_ms, HAUL_ECONNRESET when it was
     * reset or closed, ...). Messages wait meanwhile: a client redials,
     * and what the connections carried is sent again once one joins.
     * Posted to every session of the pipe that has not had its final
     * event, on both sides. */
    HAUL_EV_PIPE_DOWN,
    /* Informational: a connection of the session's pipe joined again
     * after a HAUL_EV_PIPE_DOWN. */
    HAUL_EV_PIPE_UP,
} haul_event_type;

/* Returns the name of an event type ("MESSAGE_SENT"). */
HAUL_API const char *haul_event_name(int type);

/*
 * A completion. The session pointer stays valid until the application
 * calls haul_session_free(), even after HAUL_EV_SESSION_CLOSED.
 */
typedef struct haul_event {
    haul_event_type type;
    int error;             /* HAUL_OK or a HAUL_E* code */
    haul_session *session; /* the session the event is about */
    uint64_t tag;          /* the message's tag, for message events */
    uint64_t seq;          /* the message's sequence number in the session */
    uint32_t window;       /* WndSize, for MESSAGE_SENT and WINDOW_OPENED */
    uint32_t reason;       /* the peer's reason code, for REFUSED/CLOSED */
} haul_event;

/*
 * Takes up to max events from the completion queue into events[], waiting
 * up to timeout_ms for the first one (0: do not wait, -1: wait forever).
 * Returns the number taken (0 on timeout), or -HAUL_EINVAL.
 */
HAUL_API int haul_engine_wait(haul_engine *engine, haul_event *events, int max, int timeout_ms);

/* ------------------------------------------------------------------------ */
/* Transport security                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Mutual TLS for the connections of a listener or of a client pipe. Every
 * connection then runs a full TLS 1.3 handshake of its own (no session
 * tickets, no 0-RTT, nothing older than TLS 1.3) before it may join its
 * pipe, and both sides present a certificate:
 *
 *   - the server verifies the client's certificate chain against ca_file
 *     (never the system's store), requires extendedKeyUsage clientAuth,
 *     and takes the client's principal from it: exactly one
 *     subjectAltName URI of the form "haul:principal:NAME", NAME being
 *     1..255 bytes, compared exactly. A certificate without one is
 *     refused.
 *   - the client verifies the server's chain against ca_file and requires
 *     extendedKeyUsage serverAuth. The server's host name is not checked:
 *     the CA is the application's own, and it alone decides who is a
 *     server.
 *
 * Every connection of a server pipe must carry the same certificate
 * principal, and a session is refused (SYNC_NAK, reason HAUL_EREFUSED,
 * which the client sees as HAUL_EV_SESSION_REFUSED) when the principal of
 * its request is not its connection's certificate principal.
 *
 * Plain TCP is used only when asked for, by leaving the `tls` pointer of
 * the listen or session configuration NULL; the programs hauld and haul
 * ask for it only with an explicit --plaintext. The two sides must agree:
 * a plain peer of a TLS one fails its handshake.
 *
 * Every path is a PEM file, read during the call that takes the
 * configuration (haul_listen(), or the haul_session_new() that creates
 * the pipe); the strings need not outlive it.
 */
typedef struct haul_tls_config {
    /* Our certificate chain (leaf first) and its private key. */
    const char *cert_file;
    const char *key_file;
    /* The CA certificate(s) that sign the peer's certificate. Required. */
    const char *ca_file;
    /* Optional certificate revocation lists, one per CA of the peer's
     * chain: with it, every certificate of the chain is checked, and a
     * chain whose CA has no CRL in the file is refused. NULL: none. */
    const char *crl_file;
} haul_tls_config;

/* ------------------------------------------------------------------------ */
/* Listening (the storage server side)                                      */
/* ------------------------------------------------------------------------ */

/* Defaults that apply to every session a listener accepts. */
typedef struct haul_listen_config {
    /* Bytes of messages this side may have unacknowledged. Default 64 MiB.
     * A bound, which the engine follows as for haul_session_config's. */
    uint64_t output_queue;
    /* Bytes of received messages the application has not yet taken, beyond
     * which the window closes; an empty message counts as one byte.
     * Default 64 MiB. A bound, as for haul_session_config's. */
    uint64_t input_queue;
    /* Largest message this side sends on these sessions. Default: the
     * engine's max_message. */
    uint64_t max_message;
    /* Mutual TLS on every connection the listener accepts (see
     * haul_tls_config), or NULL for plain TCP. Default NULL. The
     * configuration is read during haul_listen() only. */
    const haul_tls_config *tls;
} haul_listen_config;

HAUL_API void haul_listen_config_init(haul_listen_config *config);

/*
 * Listens on an address: "host:port" (a name or an IPv4 address), "[v6]:port",
 * ":port" (all IPv4 and IPv6 addresses), or "unix:/path". Port 0 asks the
 * system for one; haul_listen_address() tells which. Sessions asked for on
 * it arrive as HAUL_EV_SESSION_REQUEST. config may be NULL for defaults.
 * Errors: HAUL_EADDR (an address that does not parse or resolve, or that
 * cannot be bound: errno then says why, e.g. EADDRINUSE), HAUL_ESYS,
 * HAUL_EINVAL, HAUL_ETLS (config->tls given and its certificate, key, CA or
 * CRL could not be loaded, or the key does not match the certificate: the
 * reason goes to the engine's log).
 */
HAUL_API int haul_listen(haul_engine *engine, const char *address,
                         const haul_listen_config *config);

/*
 * Writes the address of the engine's first listener, as a string that
 * haul_session_new() accepts, into buf. Errors: HAUL_ESTATE (no listener),
 * HAUL_EINVAL (buffer too small).
 */
HAUL_API int haul_listen_address(haul_engine *engine, char *buf, size_t size);

/*
 * Reloads the TLS files of every TLS listener of the engine (a renewed
 * certificate, a new CRL): each listener's context is rebuilt from the
 * paths its haul_listen() was given. Connections accepted from then on use
 * the new files; connections and sessions already there keep theirs and
 * go on undisturbed. All or nothing per listener: when a listener's files
 * cannot be loaded, it keeps its previous context and the call returns
 * HAUL_ETLS (the reason goes to the engine's log) after trying the
 * others. Returns 0 (also when no listener uses TLS), HAUL_EINVAL,
 * HAUL_ETLS.
 */
HAUL_API int haul_listen_reload_tls(haul_engine *engine);

/*
 * Server: the most connections that clients of one principal (the
 * principal of their TLS certificates) may have joined at once, over all
 * their pipes. A connection beyond it is refused at its HELLO with an
 * ERROR frame and closed (the engine logs why); the client's pipe carries
 * on over the connections it has and dials the refused one again later,
 * with its usual backoff. principal NULL sets the default, the limit of
 * every principal not named in a call (0: none); max_connections 0 for a
 * named principal means no limit for it, whatever the default. A
 * lowered limit closes nothing that already joined. Plain connections
 * carry no principal and are not counted.
 * Any thread. Errors: HAUL_EINVAL, HAUL_ENOMEM.
 */
HAUL_API int haul_engine_limit_principal(haul_engine *engine, const char *principal,
                                         unsigned max_connections);

/* ------------------------------------------------------------------------ */
/* Sessions                                                                 */
/* ------------------------------------------------------------------------ */

/* haul_session_config.connections: the pipe chooses its count. */
#define HAUL_CONNECTIONS_AUTO 0
/* haul_session_config.max_connections when left 0. */
#define HAUL_AUTO_MAX_CONNECTIONS 128

typedef struct haul_session_config {
    /* Destination, as for haul_listen(): "host:port", "[v6]:port",
     * "unix:/path". Required. */
    const char *destination;
    /* The principal's name, e.g. "DLS_SERVER_1", 1..255 bytes. Required. */
    const char *principal;
    /* Output queue length in bytes: messages queued and not yet
     * acknowledged. A send that would exceed it fails with
     * HAUL_EQUEUEFULL. Default 64 MiB.
     *
     * Both queues are bounds, and the engine keeps them below their
     * bound at what the link needs: eight round trips of the pipe at the
     * rate the session carried lately (bytes the peer acknowledged, for
     * the output queue; bytes delivered to this side, for the input
     * queue), but never less than 32 MiB or two of the largest messages,
     * whichever is more (nor more than the bound). So a session on a
     * short or slow link holds tens of MiB whatever its bound, and one on
     * a long fat link uses what its bandwidth-delay product asks, up to
     * the bound. A send may therefore fail with HAUL_EQUEUEFULL before
     * output_queue bytes are queued; it succeeds again once messages are
     * acknowledged (HAUL_EV_MESSAGE_SENT). The window of an application
     * that does not take its messages closes at that size too. */
    uint64_t output_queue;
    /* Input queue length in bytes: received messages not yet taken by
     * haul_recv(), an empty message counting as one byte (as in the
     * sender's output queue). Default 64 MiB. A bound: see output_queue. */
    uint64_t input_queue;
    /* Largest message this session sends, at most the engine's
     * max_message. The receiver counts its window in messages of this
     * size, so set it to the size you really send. Default: the engine's
     * max_message. */
    uint64_t max_message;
    /* Opaque bytes the server application receives with the request
     * (e.g. a replica GUID), at most 4096. Copied. */
    const void *context;
    size_t context_len;
    /* Connections in the pipe to this destination: 1 .. 65535, or
     * HAUL_CONNECTIONS_AUTO (0) to let the pipe choose and change the
     * count as it runs (below). Used when this session creates the pipe;
     * later sessions to the same destination share the pipe as it is.
     * Default 1.
     *
     * An automatic pipe starts with 2 connections (1 over a Unix socket;
     * 8 as soon as it finds a round trip of 10 ms or more, where the
     * first intervals would be spent in slow start) and, while its
     * sessions have more to send than its connections take, measures
     * its goodput (the bytes its connections' TCP delivered both ways,
     * per second) over intervals of several round trips (5 x the
     * smoothed RTT, 0.5 to 3 s, once new connections had 3 round trips
     * to find their pace). It grows (x4 from 2, then x2) while each step
     * raises goodput by 10% or more (judged once it stops growing from
     * one interval to the next, as new connections leave slow start),
     * keeps the count that measured best once a step does not, and every
     * 10 s tries one step up again (or down, while losses stay high). It
     * never grows while the application sets the pace (nothing waits to
     * be sent, or the receiver's window is closed with nothing in
     * flight). It shrinks (halves) when retransmissions rose to more than
     * twice what they were at the chosen count (and over 1% of the
     * segments sent) while goodput fell by 10%, keeping the smaller count
     * (and trying fewer still) while it does 90% as well. Below 1 ms of
     * RTT (loopback, a LAN) and over Unix sockets it uses at most 4. A
     * connection the pipe stops using is parked: it stays joined
     * (keepalives), finishes what it carries and is given no new chunks
     * until the pipe grows again, so that no message is sent twice or
     * lost by shrinking. A connection the server refuses for its limit
     * (HAUL_ELIMIT), or one that cannot be made for want of memory,
     * descriptors or the engine's max_connections, lowers the pipe's cap
     * to what it has. Counts change on the engine timer's thread; each
     * change is logged at HAUL_LOG_INFO, and haul_pipe_stats() shows the
     * connections in use (up and not parked). docs/design.md ("The
     * automatic connection count") gives the reasons. */
    unsigned connections;
    /* The most connections an automatic pipe (connections 0) may use,
     * 1 .. 65535, and never more than the engine's max_connections
     * allows. 0 takes the default, 128: what a 1 Gbit/s link with 200 ms
     * of RTT and some loss needs, with room to spare. Ignored for a
     * fixed count. */
    unsigned max_connections;
    /* Per-session message timeout (see haul_engine_config: it counts time
     * without progress, not a message's age); 0 takes the engine's. */
    unsigned message_timeout_ms;
    /* Bytes per second of message payload this session sends, over all
     * the connections of its pipe together; 0 (the default) for no
     * limit. Frame headers and control frames (ACKs, SYNC, FIN, ...) are
     * not counted and never held back. The limit is a token bucket per
     * session: a chunk goes when the bucket holds any token, and what
     * leaves ahead of the pace is at most 50 ms of the rate plus one
     * chunk. Each session has its own bucket, so sessions that share a
     * pipe each keep their own limit, and a session without one is not
     * slowed by the others'. Time a message waits for the limit counts
     * as progress for message_timeout_ms, and a pipe held back by it
     * does not take that for a slow link: the automatic connection count
     * does not grow for it. Rates above 1 TiB/s are taken as 1 TiB/s.
     * Changed later with haul_session_set_rate_limit(). */
    uint64_t rate_limit;
    /* Mutual TLS on the connections of the pipe (see haul_tls_config), or
     * NULL for plain TCP. Default NULL. Sessions share a pipe only when
     * they name the same destination and the same TLS files (or both
     * none), so a TLS session never travels on a plain pipe. Read during
     * haul_session_new() only. The certificate's principal must be
     * `principal`, or the server refuses the session. */
    const haul_tls_config *tls;
    /* The application's pointer, returned by haul_session_data(). */
    void *data;
} haul_session_config;

HAUL_API void haul_session_config_init(haul_session_config *config);

/*
 * Creates a session to a destination (Fig. 4, step 402) and returns at
 * once (a host name is resolved by this call, on the caller's thread); the outcome arrives as
 * HAUL_EV_SESSION_OPEN or HAUL_EV_SESSION_REFUSED. Creates the pipe to the destination if there is
 * none. *sessionp is the caller's until haul_session_free().
 * Errors: HAUL_EINVAL, HAUL_EADDR, HAUL_ELIMIT (max_sessions), HAUL_ENOMEM,
 * HAUL_ESHUTDOWN, HAUL_ETLS (a new pipe's TLS files could not be loaded;
 * the reason goes to the engine's log). A TLS handshake that fails later
 * refuses the session (HAUL_EV_SESSION_REFUSED) with HAUL_ETLS, or with
 * HAUL_ECONNRESET when the server hung up before its alert was read.
 */
HAUL_API int haul_session_new(haul_engine *engine, const haul_session_config *config,
                              haul_session **sessionp);

/*
 * Sets the session's rate limit: bytes per second of message payload it
 * sends, 0 for none (see haul_session_config.rate_limit). Takes effect
 * for the next chunk, with a full bucket. The way a server limits what
 * it sends on a session a client asked for (a server session has no
 * haul_session_config). Any thread. Errors: HAUL_EINVAL (session NULL),
 * HAUL_ECLOSED (the session has closed).
 */
HAUL_API int haul_session_set_rate_limit(haul_session *session, uint64_t rate);

/*
 * Server: accepts a session announced by HAUL_EV_SESSION_REQUEST (step
 * 408); the client then gets HAUL_EV_SESSION_OPEN. Accepting posts no
 * event of its own on this side: the session is open for sending at once.
 * Errors: HAUL_ESTATE (not a pending request), HAUL_ECLOSED.
 */
HAUL_API int haul_session_accept(haul_session *session);

/*
 * Server: refuses a pending request with an application reason code,
 * which the client sees in the event's `reason`. The session then closes
 * (HAUL_EV_SESSION_CLOSED with HAUL_EREFUSED). Errors: HAUL_ESTATE.
 */
HAUL_API int haul_session_reject(haul_session *session, uint32_t reason);

/*
 * Closes a session in order (FIN): messages already queued are still
 * delivered, then both sides get HAUL_EV_SESSION_CLOSED. Further sends
 * fail with HAUL_ESTATE. The FIN tells the peer which of its messages
 * this side delivered: those get HAUL_EV_MESSAGE_SENT on its side even if
 * their acknowledgement had not come yet, and only the others, which
 * this side will not deliver, fail with HAUL_ECLOSED. Errors:
 * HAUL_ESTATE (not open, or already closing), HAUL_ECLOSED (already
 * closed).
 */
HAUL_API int haul_session_close(haul_session *session);

/*
 * Releases the caller's handle. A session that is not yet closed is
 * aborted: the peer sees HAUL_EV_SESSION_CLOSED with HAUL_EABORTED and
 * this side gets no more events for it; queued events about it are
 * withdrawn. Messages taken with haul_recv() stay valid.
 */
HAUL_API void haul_session_free(haul_session *session);

/* Accessors. The strings live as long as the session. */
HAUL_API void *haul_session_data(const haul_session *session);
HAUL_API void haul_session_set_data(haul_session *session, void *data);
HAUL_API const char *haul_session_principal(const haul_session *session);
HAUL_API const void *haul_session_context(const haul_session *session, size_t *len);
/*
 * Server: the principal of the verified client certificate of the
 * session's connections, which the session's own principal
 * (haul_session_principal) always equals. NULL for a session that came
 * over plain TCP, and on the client side.
 */
HAUL_API const char *haul_session_peer_principal(const haul_session *session);
/* The name of the session's current CE_SESSION_STATE ("CE_SS_SESSION_READY"). */
HAUL_API const char *haul_session_state(const haul_session *session);

/* ------------------------------------------------------------------------ */
/* Messages                                                                 */
/* ------------------------------------------------------------------------ */

/*
 * Queues a copy of len bytes as one message (steps 414-418). A message
 * takes len bytes of the output queue, an empty one takes 1. Returns at
 * once: HAUL_EQUEUEFULL when the output queue has no room for it now
 * (step 420; try again after a HAUL_EV_MESSAGE_SENT), or the engine's
 * memory budget none (try again after HAUL_EV_WINDOW_OPENED or
 * HAUL_EV_MESSAGE_SENT; see haul_engine_config.memory), HAUL_EMSGSIZE when it
 * is larger than the session's max_message or output queue and so can
 * never fit, HAUL_ESTATE when the session is not open, HAUL_ENOMEM when
 * memory for the message or for its final event ran out. The tag comes
 * back in the message's final event.
 */
HAUL_API int haul_send(haul_session *session, const void *buf, size_t len, uint64_t tag);

/*
 * As haul_send(), without the copy: the engine reads buf until the
 * message's final event, then calls release(buf, arg). A failed call
 * leaves buf with the caller and never calls release. release may be NULL;
 * it runs with the engine's lock held, on an engine thread or inside
 * haul_session_free() or haul_engine_free(), so it must not call into the
 * same engine.
 */
HAUL_API int haul_send_buffer(haul_session *session, const void *buf, size_t len,
                              void (*release)(void *buf, void *arg), void *arg, uint64_t tag);

/*
 * Queues a range of an open file as one message, sent without copying
 * through user space where the connection allows (sendfile). The engine
 * duplicates fd, so the caller may close its own at once. The file must
 * not shrink until the message's final event; if it does (or a read of
 * it fails), the message fails with HAUL_EIO, and so does its session,
 * since no later message could be delivered in order: every message
 * still queued gets HAUL_EV_MESSAGE_FAILED with HAUL_EIO, the session
 * HAUL_EV_SESSION_CLOSED with HAUL_EIO, and the peer an ABORT carrying
 * HAUL_EIO. The pipe's other sessions are not disturbed. The receiver
 * drops what it received of the message (docs/protocol.md, section 9.5);
 * bytes of a file that changes without shrinking are sent as they are
 * read.
 */
HAUL_API int haul_send_file(haul_session *session, int fd, off_t offset, size_t len, uint64_t tag);

/*
 * Takes the oldest whole message from the session's input queue (step
 * 442). Taking it opens the window for the sender. *msgp is the caller's
 * until haul_message_free(). Errors: HAUL_EAGAIN (none waiting),
 * HAUL_ECLOSED (none waiting and none will come).
 */
HAUL_API int haul_recv(haul_session *session, haul_message **msgp);

HAUL_API const void *haul_message_data(const haul_message *msg);
HAUL_API size_t haul_message_len(const haul_message *msg);
HAUL_API uint64_t haul_message_seq(const haul_message *msg);
HAUL_API void haul_message_free(haul_message *msg);

/* ------------------------------------------------------------------------ */
/* Statistics                                                               */
/* ------------------------------------------------------------------------ */

/* Counters of one connection of a pipe, for haul_pipe_stats(). */
typedef struct haul_conn_stats {
    uint64_t bytes_sent;
    uint64_t bytes_received;
    uint64_t chunks_sent;
    uint64_t chunks_received;
    /* How many distinct sessions sent chunks on this connection. */
    uint32_t sessions_sent;
    int up; /* 1 while the connection is joined to its pipe */
    /* 1 while an automatic pipe keeps the connection joined but gives it
     * no chunks to send (its count is lower now); 0 otherwise, and
     * always on the server side. Connections in use: up && !parked. */
    int parked;
    /* The kernel's round trip when it joined, in microseconds (0 for a
     * Unix socket), and the limit on its unsent bytes in force
     * (conn_backlog, grown to half the congestion window as it opens; 0
     * when the connection's round trip is too short for one). */
    uint32_t rtt_us;
    uint32_t unsent_limit;
    /* 1 while it is in its pipe's active set: it carries chunks now. */
    int active;
} haul_conn_stats;

/*
 * Fills up to max entries of out[] with the counters of the connections of
 * the pipe that carries the session, in connection order, and returns how
 * many the pipe has (which may exceed max), or -HAUL_EINVAL. A client
 * pipe has the connections it dialled so far: a fixed count from the
 * start, an automatic pipe as many as it has grown to (parked ones
 * included; entries of connections being dialled again are zero). A
 * server pipe has the connections joined now.
 */
HAUL_API int haul_pipe_stats(haul_session *session, haul_conn_stats *out, int max);

/* Engine-wide counters. */
typedef struct haul_engine_stats {
    uint64_t bytes_sent;     /* payload bytes of chunks written */
    uint64_t bytes_received; /* payload bytes of chunks read */
    uint64_t messages_sent;  /* acknowledged */
    uint64_t messages_received;
    uint64_t chunks_resent;    /* chunks queued again after a connection broke */
    uint64_t duplicates;       /* chunks or messages received twice and dropped */
    uint64_t connections_lost; /* joined connections that broke */
    uint64_t protocol_errors;  /* connections closed for bad input */
    /* How often each CE_SESSION_STATE was entered, indexed by
     * haul_session_state_names() order. */
    uint64_t state_entered[16];
    /* Connections closed by the security step: a failed TLS handshake, or
     * a peer certificate refused (key usage, principal). */
    uint64_t tls_refused;
    /* Connections closed in their handshake to make room for a new one
     * (max_handshakes). */
    uint64_t handshakes_refused;
    /* Connections refused at their HELLO because their principal had
     * joined as many as haul_engine_limit_principal() allows. */
    uint64_t principal_limited;
    /* How often each state of the connections' encryption and
     * authentication state machine was entered, indexed by
     * haul_secure_state_names() order: how many connections went plain,
     * began a TLS handshake, reached the checks of the peer, were
     * established, ended in order or failed. */
    uint64_t secure_state_entered[8];
    /* KEEPALIVE frames written and received (keepalive_ms). */
    uint64_t keepalives_sent;
    uint64_t keepalives_received;
    /* Joined connections closed because nothing came for
     * idle_timeout_ms (also counted in connections_lost). */
    uint64_t idle_timeouts;
    /* How often each state of the connection state machine was entered,
     * indexed by haul_conn_state_names() order (CONN_NULL once per
     * connection made; CONN_JOINED once per connection that joined a
     * pipe; CONN_CLOSED once per connection closed). */
    uint64_t conn_state_entered[8];
    /* How often each state of the socket I/O state machine of the
     * receiving side was entered, indexed by haul_rx_state_names() order:
     * RXS_HEADER once per connection and once per frame with a payload,
     * RXS_CHUNK once per chunk read into a message, RXS_CTL once per
     * control payload, RXS_DISCARD once per chunk payload dropped. */
    uint64_t rx_state_entered[8];
    /* Chunks sent again on another connection because the one that
     * carried them was slow to deliver them while their message held up
     * the window (hedging, docs/protocol.md section 9.6). */
    uint64_t chunks_hedged;
    /* Bytes counted against the engine's memory budget now (reserved
     * window slots, received and sent messages: haul_engine_config
     * .memory), and the most ever counted at once. Both stay 0 when the
     * budget is 0. */
    uint64_t memory_used;
    uint64_t memory_peak;
} haul_engine_stats;

HAUL_API void haul_engine_stats_get(haul_engine *engine, haul_engine_stats *out);

/*
 * Counts `bytes` of the application's own memory against the engine's
 * memory budget (haul_engine_config.memory), so that one bound covers
 * it and the messages: a server that keeps a decompression window per
 * session, say. The bytes come out of the part of the budget that
 * received messages may use, and are counted in memory_used until
 * haul_engine_unreserve() gives them back (the same number; any thread,
 * the engine alive). Any thread. Returns 0, or HAUL_ENOMEM when they
 * would pass the budget (nothing is counted then). With no budget
 * (memory 0) nothing is counted and it returns 0.
 */
HAUL_API int haul_engine_reserve(haul_engine *engine, uint64_t bytes);
HAUL_API void haul_engine_unreserve(haul_engine *engine, uint64_t bytes);

/* The names of the CE_SESSION_STATE values, in order; *count gets how many. */
HAUL_API const char *const *haul_session_state_names(int *count);

/* The names of the states of a connection's encryption and authentication
 * state machine (SEC_NULL, SEC_PLAIN, SEC_HANDSHAKING, ...), in order;
 * *count gets how many. The strings are static. */
HAUL_API const char *const *haul_secure_state_names(int *count);

/* The names of the states of the connection state machine (CONN_NULL,
 * CONN_DIALING, ..., CONN_CLOSED), in order; *count gets how many. The
 * strings are static. */
HAUL_API const char *const *haul_conn_state_names(int *count);

/* The names of the states of a connection's socket I/O state machine of
 * the receiving side (RXS_HEADER, RXS_CHUNK, RXS_CTL, RXS_DISCARD), in
 * order; *count gets how many. The strings are static. */
HAUL_API const char *const *haul_rx_state_names(int *count);

#ifdef __cplusplus
}
#endif

#endif /* HAUL_H */
