/*
 * engine.h - libhaul's internal objects and how they refer to each other.
 *
 * Locking: one mutex per engine, `mu`, guards every session, message
 * queue, pipe and the completion queue. It is held for bookkeeping only:
 * system calls that move bytes (readv, writev, sendfile) run without it,
 * on buffers that the connection owns or holds a reference to. A
 * connection's socket is touched only by the I/O thread that owns it.
 *
 * Ownership:
 *   engine -> pipes -> connections, sessions (by id)
 *   session -> output queue of messages (until acknowledged)
 *           -> messages under reassembly and the input queue (until taken)
 *   message <- references from queues and from connections writing or
 *              reading it; it is freed when the last goes.
 */
#ifndef HAUL_CORE_ENGINE_H
#define HAUL_CORE_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "core/autoscale.h"
#include "core/budget.h"
#include "core/list.h"
#include "core/ratelimit.h"
#include "core/session_fsm.h"
#include "haul.h"
#include "net/conn_fsm.h"
#include "net/frame.h"
#include "net/secure_fsm.h"

/* OpenSSL's context, by its struct name, so that this header does not
 * pull in OpenSSL's. */
struct ssl_ctx_st;
struct haul__transport_ops;

typedef struct haul__pipe haul__pipe;
typedef struct haul__conn haul__conn;
typedef struct haul__loop haul__loop;
typedef struct haul__listener haul__listener;

/* What an epoll registration points at: every such object starts with it. */
enum { HAUL__POLL_CONN = 1, HAUL__POLL_LISTENER, HAUL__POLL_WAKE, HAUL__POLL_TIMER };

/* ---- messages ---------------------------------------------------------- */

enum { HAUL__BODY_OWNED, HAUL__BODY_BORROWED, HAUL__BODY_FILE };

/* Per-chunk receive state, one byte a chunk. A chunk is claimed while one
 * connection reads a copy of it, shared while several do (the sender sent
 * it again after a connection loss, and the receiver still reads the
 * first copy): whichever copy completes first makes it done, and a copy
 * that ends early takes only its own claim away. */
enum { HAUL__RX_NONE = 0, HAUL__RX_CLAIMED = 1, HAUL__RX_DONE = 2, HAUL__RX_SHARED = 3 };

/* Where a chunk stands on the connection that carries it, for the
 * hedging of slow chunks (haul__pipe_hedge). */
typedef struct haul__chunk_tx {
    /* Where the chunk ends in its carrier's byte stream (bytes handed to
     * the socket, or to a TLS write buffer in front of it, once the chunk
     * was written whole), 0 until then: the peer's TCP has the chunk
     * once the bytes the socket took, less those still unacknowledged,
     * reach it. */
    uint64_t pos;
    /* The serial of a connection that was too slow with this chunk: the
     * copy sent again goes on another. */
    uint32_t avoid;
} haul__chunk_tx;

struct haul_message {
    haul__list link;       /* in the session's output, reassembly or input queue */
    haul_session *session; /* NULL once the session is gone */
    uint64_t seq;
    uint64_t tag;
    uint64_t len;
    /* Atomic, since the application drops its reference (haul_message_free)
     * without the engine's mutex, while a connection may still hold one. */
    atomic_int refs;

    /* The body. */
    int kind;
    uint8_t *data;
    void (*release)(void *buf, void *arg);
    void *release_arg;
    int fd;
    off_t file_offset;

    /* Sending: chunk i is [i * chunk, min((i + 1) * chunk, len)). carrier[i]
     * is the serial of the connection that carried chunk i, or 0 while it
     * still has to be sent. */
    uint32_t chunk;
    uint32_t nchunks;
    uint32_t *carrier;
    haul__chunk_tx *tx;  /* per chunk, beside carrier */
    uint32_t next_chunk; /* no chunk before it needs sending */
    uint32_t taken_end;  /* no chunk from it on was ever taken for sending */
    uint32_t unsent;     /* chunks with carrier 0 */
    /* Rounds of retransmission so far (docs/protocol.md, section 9.2):
     * resending is set when a round begins, and cleared when a chunk of
     * the message taken since goes out (written whole, or in part on a
     * connection that then broke), so that connections breaking before
     * then add no round. */
    unsigned attempts;
    int resending;
    int64_t round_at; /* when the current round began (engine clock) */
    /* Copies of chunks sent again because their connection was slow to
     * deliver them (haul__pipe_hedge): how many times, and when last, or
     * when the message's last chunk went out whole. */
    unsigned hedges;
    int64_t hedge_at;
    int64_t deadline; /* ms on the engine clock */
    int in_flight;    /* counted in the session's sendable set */
    int cq_slot;      /* a slot of the completion queue is reserved for its final event */

    /* Receiving. */
    uint8_t *rx_state; /* per chunk: HAUL__RX_* */
    uint32_t rx_done;  /* chunks received */
    /* Per chunk: 1 while a connection reads its payload straight into
     * the body without the engine's mutex (a direct read). The
     * connections of a pipe run on several threads, and two copies of a
     * chunk may arrive on two of them at once: while one reads straight
     * into the chunk's bytes, no other writes them, nor completes the
     * chunk. A direct read begins only on a chunk that one connection
     * reads alone (HAUL__RX_CLAIMED) and that no read is writing; a copy
     * parsed through the buffer of its connection waits for the direct
     * read to end (rx_waiters) before it copies its bytes in. */
    uint8_t *rx_writing;
    haul__list rx_waiters; /* connections waiting for a direct read to end */

    /* The engine's memory budget, when it has one (core/budget.c): the
     * message counts `charge` bytes in it until it is destroyed, and
     * holds a reference to it meanwhile, since the application may free
     * a received message after its engine. body_cap: the bytes of a
     * body from the budget's pool (0: from malloc). charge_rx: a
     * received message, counted in its session (mem_held) until it
     * leaves the session's queues (mem_left). */
    haul__budget *budget;
    uint64_t charge;
    size_t body_cap;
    int charge_rx;
    int mem_left;
};

/* ---- sessions ---------------------------------------------------------- */

/* Control frames a session has to send, as bits of `pending`. */
enum {
    HAUL__PEND_SYNC = 1 << 0,
    HAUL__PEND_SYNC_ACK = 1 << 1,
    HAUL__PEND_SYNC_NAK = 1 << 2,
    HAUL__PEND_ACK = 1 << 3,
    HAUL__PEND_FIN = 1 << 4,
    HAUL__PEND_FIN_ACK = 1 << 5,
    HAUL__PEND_ABORT = 1 << 6,
};

struct haul_session {
    haul_engine *engine;
    haul__pipe *pipe;
    uint32_t id;
    int state;
    int server;
    int refs;       /* the handle, the pipe's table, batches carrying frames */
    int app_freed;  /* the application released its handle */
    int final_sent; /* SESSION_CLOSED, OPEN-failure or abort: no more events */
    int pipe_down;  /* got HAUL_EV_PIPE_DOWN, and is owed HAUL_EV_PIPE_UP */
    int in_table;
    int has_cert_principal; /* server over TLS: cert_principal is set */
    char cert_principal[HAUL__PRINCIPAL_MAX + 1];

    char principal[HAUL__PRINCIPAL_MAX + 1];
    uint8_t *context;
    size_t context_len;
    void *data;

    uint64_t output_queue;
    uint64_t input_queue;
    uint64_t max_message;      /* ours: what we send at most */
    uint64_t peer_max_message; /* theirs: the unit of our window */
    uint64_t peer_input_queue;
    unsigned timeout_ms;
    int64_t open_deadline;
    /* Client: when the SYNC was last written, and how long to wait for
     * its answer before sending it again (HAUL__SYNC_REPEAT_MS, doubling). */
    int64_t sync_written_at;
    unsigned sync_repeat_ms;
    /* The same for a FIN without its FIN_ACK (SENDING_FIN). */
    int64_t fin_written_at;
    unsigned fin_repeat_ms;
    int64_t close_deadline;

    /* Control frames to send and the list of sessions that have some. */
    unsigned pending;
    uint32_t nak_reason;
    int refused; /* answered with SYNC_NAK, whatever the reason's value */
    uint32_t abort_code;
    int abort_inflight; /* ABORT frames in send batches, not yet written */
    unsigned cq_slots;  /* completion queue slots reserved for its session events */
    haul__list ctl_link;
    haul__list pipe_link;     /* the pipe's list of all its sessions */
    haul__list bucket_link;   /* the pipe's id table */
    haul__list dispatch_link; /* the pipe's list of sessions with chunks to send */

    /* Sending. */
    haul__list outq;    /* messages queued, unacknowledged, by seq */
    uint64_t out_bytes; /* their bytes, bounded by output_queue */
    uint64_t next_seq;  /* the seq of the next haul_send */
    uint64_t acked;     /* the peer has every message below it */
    uint64_t right;     /* we may send messages below it (acked + WndSize) */
    uint32_t peer_wnd;
    int64_t progress; /* when the last acknowledgement came or chunk was written */
    /* The rate limit (core/ratelimit.h). rate_held: the dispatcher found
     * the bucket empty with chunks to send and took the session out of
     * the pipe's dispatch list; the pipe's sweep puts it back once tokens
     * are there again (haul__pipe_sweep). */
    haul__bucket rate;
    int rate_held;

    /* Receiving. */
    haul__list partial; /* under reassembly */
    haul__list inq;     /* whole, in order, not yet taken */
    uint64_t held;      /* bytes of partial and inq */
    uint64_t rcv_next;  /* the next seq to deliver in order */
    uint64_t rcv_right; /* the highest right edge we advertised */
    uint64_t ack_sent;  /* messages below it were acknowledged */
    uint32_t wnd_sent;  /* the WndSize of our last ACK */
    int peer_done;      /* the peer closed: nothing more will arrive */
    int fin_taken;      /* our FIN went out once: fin_seq is fixed */
    uint64_t fin_seq;   /* what our FIN says we delivered: messages below it */
    int fin_early;      /* client: the server's FIN came before its SYNC_ACK */
    uint64_t fin_early_seq;
    int close_error;

    /* What the link carries (session.c, "Queues from the bandwidth-delay
     * product"): bytes delivered to us and acknowledged by the peer since
     * rate_at, and the rates in bytes per second. */
    uint64_t rx_count, tx_count;
    int64_t rate_at;
    uint64_t rx_rate, tx_rate;

    /* The engine's memory budget (core/budget.c). mem_slots: window
     * slots granted and not yet begun, each counted at the unit (the
     * peer's max_message); mem_held: the bytes counted of the messages
     * in partial and inq; mem_send: bytes set aside for a send refused
     * earlier, of mem_send_want bytes. mem_wait (HAUL__MEM_WAIT_*): it
     * waits for memory, in the engine's mem_waiters by mem_link.
     * mem_principal: its principal's entry while it holds or wants
     * receive memory. */
    uint64_t mem_slots;
    uint64_t mem_held;
    uint64_t mem_send;
    uint64_t mem_send_want;
    uint64_t mem_cwnd; /* most slots it may have outstanding: grows with use */
    unsigned mem_wait;
    haul__list mem_link;
    struct haul__mem_principal *mem_principal;
};

enum { HAUL__MEM_WAIT_RX = 1, HAUL__MEM_WAIT_TX = 2 };

/* ---- connections ------------------------------------------------------- */

/* The connection state machine and the socket I/O state machine of the
 * receiving side are in net/conn_fsm.h; the encryption and
 * authentication state machine (net/secure_fsm.h) runs in CONN_SECURING. */

/* One frame in a connection's send batch. */
typedef struct haul__tx_item {
    int type;
    uint8_t *buf;          /* a control payload the item owns, or NULL */
    haul_session *session; /* holds a session reference when set */
    haul_message *msg;     /* CHUNK: holds a message reference */
    unsigned round;        /* CHUNK: the message's attempts when it was taken */
    int pad;               /* CHUNK: its file fell short; the rest goes as zeros */
    uint32_t chunk_index;
    uint64_t offset;
    uint32_t len;
} haul__tx_item;

#define HAUL__TX_BATCH 32
/* Connection losses of a message within this many ms of the beginning of
 * its round of retransmission belong to that round (docs/protocol.md,
 * section 9.2): the resets of one fault reach the engine a little apart,
 * and resent chunks may go out in between. */
#define HAUL__ROUND_COALESCE_MS 100
#define HAUL__RXBUF 16384
/* A client that has no answer to its SYNC this long after writing it
 * sends it again, waiting twice as long each time, up to the maximum:
 * the answer may have been lost on a connection the network broke
 * (docs/protocol.md, section 4.2). */
#define HAUL__SYNC_REPEAT_MS 500
#define HAUL__SYNC_REPEAT_MAX_MS 4000

struct haul__conn {
    int kind; /* HAUL__POLL_CONN */
    haul_engine *engine;
    haul__loop *loop;
    haul__pipe *pipe;    /* client: from birth; server: once joined */
    haul__loop *move_to; /* server: the loop chosen for it when it joined its pipe */
    haul__list pipe_link;
    haul__list wake_link; /* in its loop's wake list */
    haul__list idle_link; /* in its pipe's idle list */
    haul__list all_link;  /* in the engine's list of connections */
    int fd;
    int state; /* HAUL__CONN_*: moves through haul__conn_enter() alone */
    int server;
    uint32_t serial; /* unique in the engine, never 0 */
    unsigned index;  /* position in the pipe */
    int64_t deadline;
    int dead; /* closed; its thread frees it */
    int registered;
    char why[160]; /* why it closed, for the log */

    /* Receiving (owned by the loop thread). */
    uint8_t rxbuf[HAUL__RXBUF];
    size_t rx_have, rx_pos;
    int rx_state; /* HAUL__RXS_*: moves through haul__rx_enter() alone */
    haul__frame cur;
    haul_message *rx_msg;
    uint32_t rx_index; /* the chunk of rx_msg being read */
    uint64_t rx_off;   /* where the next payload byte goes */
    uint64_t rx_left;  /* payload bytes still to come */
    uint8_t *ctlbuf;
    haul__frame_limits limits;

    /* Sending. */
    haul__tx_item items[HAUL__TX_BATCH];
    uint8_t headers[HAUL__TX_BATCH][HAUL__FRAME_HDR];
    uint8_t hello[HAUL__HELLO_MAGIC_LEN];
    int nitems;
    int item_pos;       /* the item being written */
    uint64_t item_done; /* bytes of it written, header included */
    int more_to_read;   /* stopped reading to give others a turn */
    /* A direct read into chunk rx_index of rx_msg runs without mu (the
     * message's rx_writing is set for it). */
    int rx_writing;
    /* Waiting, in rx_msg's rx_waiters, for another connection's direct
     * read into the chunk to end before it copies its bytes in; it
     * neither parses nor reads meanwhile. */
    int rx_waiting;
    haul__list wait_link;
    int handshaking; /* accepted, counted in engine->handshaking */
    /* Accepted beyond max_connections: it is refused at its HELLO with
     * the reason, once its peer can read an ERROR frame. */
    int over_limit;
    int rx_hup;        /* the peer closed or reset: read until EOF */
    int hello_pending; /* a HELLO or HELLO_ACK to send */
    int debug_frozen;  /* test hook: 1 neither reads nor writes; 2 takes frames, writes none */
    int tx_short;      /* 1 + the item whose file fell short, or 0 */
    /* The message timeout's watch on the socket's send queue (mu held):
     * its length and when it was last read, and when it was last seen to
     * change between two reads close together. */
    int outq_seen;
    int64_t outq_at;
    int64_t outq_moved;
    /* An automatic pipe's reading of the socket's TCP_INFO (mu held):
     * its counters when last read (core/autoscale.c). */
    uint32_t auto_retrans;
    uint32_t auto_segs;
    uint64_t auto_bytes; /* tcpi_bytes_acked + tcpi_bytes_received */
    /* Bytes handed to the socket so far (plain TCP; a TLS connection
     * counts what its BIO wrote), for where a chunk ends in the stream. */
    atomic_uint_least64_t wire_sent;
    uint32_t rtt_us;   /* the kernel's round-trip estimate when it joined */
    int backlog_set;   /* TCP_NOTSENT_LOWAT was set (conn_backlog) */
    uint32_t lowat;    /* ... to this value */
    int declined;      /* the dispatcher gave it nothing: too much on its way */
    int64_t last_take; /* when it last took a chunk (engine clock) */
    int active;        /* in its pipe's active set */
    int draining;      /* in it beyond its bound: takes nothing more */

    /* Liveness (haul_engine_config.keepalive_ms, idle_timeout_ms): when
     * a byte was last received and last written, on the engine clock.
     * The owning thread stores them without mu as bytes move; the sweep
     * reads them under mu on loop 0, hence atomics. */
    atomic_int_least64_t last_rx;
    atomic_int_least64_t last_tx;
    int keepalive_pending; /* a KEEPALIVE goes first in the next batch (mu) */

    haul_conn_stats stats;
    uint32_t seen_sessions[8];       /* for stats.sessions_sent */
    const haul_listen_config *lconf; /* server: of the listener that took it */

    /* The transport that carries the connection's bytes (net/transport.h)
     * and its state, touched by the owning thread only: plain TCP, or TLS
     * when tls_ctx is set at haul__conn_start(). */
    const struct haul__transport_ops *ops;
    void *transport;
    /* Security (net/secure_fsm.h): sec_state moves through
     * haul__secure_enter() alone, called by the transport. */
    struct ssl_ctx_st *tls_ctx; /* set before haul__conn_start: the listener's or pipe's */
    int sec_state;              /* HAUL__SEC_* */
    char principal[HAUL__PRINCIPAL_MAX + 1]; /* server: of the client's certificate */
};

/* ---- pipes --------------------------------------------------------------- */

#define HAUL__BUCKETS 256

/* How a session that left its pipe's table ended, for the answers to
 * frames that arrive for it later (docs/protocol.md, section 9.3). */
enum {
    HAUL__ENDED_CLOSED = 1, /* in order: FIN and FIN_ACK */
    HAUL__ENDED_REFUSED,    /* SYNC_NAK; code is the reason */
    HAUL__ENDED_ABORTED,    /* failed; code is what the ABORT carries */
};

/* Sessions a pipe remembers after they left its table, most recent
 * first out of the ring, and control frames it owes for sessions it does
 * not hold. Both are bounded: an id forgotten is answered as unknown, and
 * an answer that finds the queue full is dropped (the peer's next frame
 * for that session asks again). */
#define HAUL__ENDED_MAX 64
#define HAUL__ANSWERS_MAX 32

typedef struct haul__ended {
    uint32_t id;
    uint32_t code;
    int how; /* HAUL__ENDED_* */
} haul__ended;

typedef struct haul__answer {
    uint32_t session;
    uint32_t aux;
    int type; /* HAUL__F_ABORT, HAUL__F_SYNC_NAK or HAUL__F_FIN_ACK */
} haul__answer;

struct haul__pipe {
    haul_engine *engine;
    haul__list link; /* in the engine's list of pipes */
    int server;
    char *destination;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint64_t id;      /* chosen by the client, names the pipe in every HELLO */
    haul__loop *loop; /* the first thread of its connections, which spread from it */

    /* Client: one slot per connection, NULL while down. Slots [0, nconns)
     * have been dialled; [0, active) are given chunks, the others are
     * parked (joined, given control frames only). A fixed pipe has
     * active = nconns = cap from the start; an automatic one grows and
     * shrinks within cap (core/autoscale.c). Every array of slots has cap
     * entries. */
    haul__conn **conns;
    unsigned nconns;
    unsigned active;
    unsigned cap;
    unsigned joined;
    uint32_t rtt_us; /* the longest round trip a connection joined with */
    /* Bytes of the chunks this side cuts its messages into on this pipe,
     * announced in every HELLO and HELLO_ACK (haul__pipe_chunk). */
    uint32_t chunk;
    /* The active set of a long link (haul__pipe_fill): connections that
     * carry chunks now, at most active_max of them. active_wanted counts
     * connections turned away by that bound while chunks waited, and
     * blocked/sampled the sweeps that found a session's window full,
     * since active_at, when active_max last changed; rtt_low and rtt_high
     * are the lowest and highest mean round trip of the active set in a
     * sweep since then, and rtt_base_us the least round trip any of its
     * connections ever saw (the path's own, without queues). */
    unsigned nactive;
    uint32_t rtt_low, rtt_high, rtt_base_us;
    int64_t active_hold;  /* no growth before this time: a queue stood */
    unsigned active_cuts; /* cuts for a standing queue, in a row */
    int active_watch;     /* the set grew (or began): the next period watches */
    unsigned active_max;
    unsigned active_wanted;
    unsigned blocked, sampled;
    int64_t active_at;
    unsigned declines; /* chunks declined since the last sweep */
    int ever_joined;
    unsigned dials_failed;    /* slots whose dial or handshake failed before any joined */
    uint8_t *slot_failed;     /* per slot: it failed before any joined */
    int64_t first_failure_at; /* the first of those failures, or 0 */
    int64_t *redial_at;
    unsigned *backoff;
    int64_t empty_since; /* when the last connection went, or 0 */
    int down;            /* HAUL_EV_PIPE_DOWN posted, no connection joined since */
    int down_error;      /* why the last joined connection went */
    int events_owed;     /* a pipe event was dropped for want of memory: the sweep retries */
    int failed;          /* could not be opened: new sessions make a new pipe */
    int fail_error;      /* why */
    int doomed;          /* has no sessions: the sweep closes and frees it */

    uint32_t peer_chunk; /* the peer's chunk size, from HELLO */

    /* Client, connections HAUL_CONNECTIONS_AUTO: the controller of the
     * count and what it is fed (mu held). goodput_bytes counts the bytes
     * of messages the peer acknowledged and of chunks received, on every
     * pipe: it is cheap, and tells the controller what got through. */
    int automatic;
    haul__auto autoscale;
    uint64_t goodput_bytes;
    uint64_t auto_retrans, auto_segs; /* summed over the joined connections */
    uint64_t auto_tcp_bytes;          /* bytes their TCP delivered, both ways */
    int auto_tcp_info;                /* TCP_INFO gave tcpi_bytes_acked */
    unsigned auto_rtt_us, auto_min_rtt_us;
    int64_t auto_info_at;
    int auto_pinned; /* test hook: haul__debug_auto_resize() set the count */

    /* Client: the TLS context of every connection, and the key that
     * tells pipes to one destination apart (NULL: plain TCP). */
    struct ssl_ctx_st *tls_ctx;
    char *tls_key;
    /* Server: what every member connection carries, set by the first to
     * join: TLS or not, and its certificate principal. */
    int has_members;
    int secured;
    char cert_principal[HAUL__PRINCIPAL_MAX + 1];
    uint32_t next_session_id;

    haul__list sessions;
    haul__list buckets[HAUL__BUCKETS];
    haul__list ctl;      /* sessions with control frames to send */
    haul__list dispatch; /* sessions with chunks to send */
    haul__list idle;     /* joined connections with nothing to write */
    haul__list members;  /* server: the connections joined to it */

    haul__ended ended[HAUL__ENDED_MAX]; /* a ring: ended_next is the oldest slot */
    unsigned ended_next, nended;
    haul__answer answers[HAUL__ANSWERS_MAX];
    unsigned nanswers;

    haul_listen_config lconf; /* server: session defaults */
};

/* ---- the engine ---------------------------------------------------------- */

struct haul__loop {
    int kind; /* HAUL__POLL_WAKE */
    haul_engine *engine;
    pthread_t thread;
    int epfd;
    int wakefd;      /* eventfd: wake list or stop */
    haul__list wake; /* connections that have work to write */
    int index;
};

struct haul__listener {
    int kind; /* HAUL__POLL_LISTENER */
    haul__list link;
    int fd;
    char address[160];
    haul_listen_config config;
    struct ssl_ctx_st *tls_ctx; /* NULL: plain TCP; swapped under mu by a reload */
    char *tls_files;            /* its files, as haul__tls_key() makes them, for reloads */
    /* 1 while new connections wait in the kernel's accept queue: every
     * handshake slot is taken, or accept() ran out of descriptors
     * (engine.c, "Admission"). */
    int paused;
};

struct haul_engine {
    haul_engine_config config;
    pthread_mutex_t mu;
    pthread_cond_t cq_cond;

    haul__loop *loops;
    unsigned nloops;
    int timerfd;    /* on loop 0: the sweep of deadlines (engine.c, "The sweep") */
    int timer_kind; /* HAUL__POLL_TIMER: what timerfd's registration points at */
    /* Under mu: the timer is armed further than one sweep period away
     * (or only for the longest sleep), and something happened since the
     * last sweep that it must look at soon (haul__sweep_soon). */
    int sweep_far, sweep_soon;
    uint64_t sweeps; /* under mu: how many ran (sweep_test) */
    int stopping;

    /* The completion queue: a growable ring. cq_reserved slots of it are
     * promised to the final events of accepted operations (haul.h, rule
     * 2), so that posting those never needs memory: cq_len + cq_reserved
     * <= cq_cap always holds. */
    haul_event *cq;
    size_t cq_cap, cq_head, cq_len, cq_reserved;
    int debug_cq_nomem;    /* test hook: the ring cannot grow while set */
    int debug_fail_writes; /* test hook: so many batches of joined connections fail */
    int cq_fd;             /* eventfd, readable while cq_len > 0 */
    int cq_signalled;

    haul__list listeners;
    haul__list pipes;
    haul__list conns;
    unsigned nconns;
    unsigned nsessions;
    unsigned handshaking; /* accepted connections not yet joined */
    /* Listeners paused (mu held): when the sweep takes them up again
     * even if no handshake slot frees, and when accept() last warned of
     * running out of descriptors. */
    unsigned listeners_paused;
    int64_t listeners_resume_at;
    int64_t accept_warned_at;
    uint32_t next_serial;
    unsigned next_loop;

    /* Limits of joined connections per principal (haul_engine_limit_principal):
     * a short list, looked up at each TLS connection's HELLO. */
    struct haul__principal_limit *plimits;
    unsigned nplimits;
    unsigned plimit_default; /* 0: none */

    /* The memory budget (haul_engine_config.memory), NULL without one;
     * the sessions waiting for memory, in the order they began to wait;
     * the principals whose sessions hold or want receive memory; the
     * session haul__mem_serve() serves now; and the unit of the first
     * receive slot that waits for memory, which sends leave free. */
    haul__budget *budget;
    haul__list mem_waiters;
    haul__list mem_principals;
    unsigned mem_nprincipals;
    unsigned mem_rx_waiting;
    unsigned mem_tx_waiting;
    haul_session *mem_serving;
    uint64_t mem_rx_need;

    haul_engine_stats stats;
    /* stats.secure_state_entered[], counted without mu: the security
     * state machine moves on I/O threads outside it (the handshake).
     * haul_engine_stats_get() copies them in. */
    atomic_uint_least64_t secure_entered[HAUL__SEC_STATE_COUNT_];
    int debug_hold; /* test hook: dispatchers send no chunks while set */
    /* Test hook: the RTT under which automatic pipes made from now on take
     * their link for local (0: HAUL__AUTO_LOCAL_RTT_US). */
    unsigned debug_auto_local_us;
    /* Test hook: the RTT from which they take their link for long (0:
     * HAUL__AUTO_LONG_RTT_US). */
    unsigned debug_auto_long_us;
    /* Test hook: the round trip the queues are sized for (0: the pipe's;
     * session.c, "Queues from the bandwidth-delay product"). */
    unsigned debug_rtt_us;
};

/* ---- shared internal calls (mu held unless said otherwise) ------------- */

int64_t haul__now_ms(void);
/* Something changed that the sweep of deadlines must look at within one
 * sweep period (mu held): it runs then rather than at the next deadline
 * it knew of. Cheap when the timer is near already. */
void haul__sweep_soon(haul_engine *engine);
/* The sweeps of sessions, pipes and connections (mu held, on loop 0) act
 * on the deadlines that passed and return the earliest time
 * (haul__now_ms) at which one of theirs would pass if nothing else
 * happened meanwhile: INT64_MAX for none, now + a sweep period or less
 * for state that is watched at every sweep. */
#define HAUL__NEVER INT64_MAX
void haul__log(haul_engine *engine, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Completion queue. haul__post() posts an informational event when there
 * is room (growing the ring if it must), and drops it with a log line
 * when there is none (returns 0, or HAUL_ENOMEM when dropped). A final
 * event goes through a slot reserved with haul__cq_reserve() when its
 * operation was accepted, and haul__post_reserved() cannot fail. */
int haul__post(haul_engine *engine, const haul_event *event);
int haul__cq_reserve(haul_engine *engine, size_t n); /* 0 or HAUL_ENOMEM */
void haul__cq_release(haul_engine *engine, size_t n);
void haul__post_reserved(haul_engine *engine, const haul_event *event);

/* Sessions. */
void haul__session_enter(haul_session *s, int event);
void haul__session_want(haul_session *s, unsigned pending);
void haul__session_fail(haul_session *s, int error, int tell_peer);
void haul__session_unref(haul_session *s);
int64_t haul__session_sweep(haul_session *s, int64_t now);
void haul__session_on_frame(haul__pipe *pipe, haul__conn *conn, const haul__frame *f,
                            const uint8_t *payload);
haul_session *haul__session_find(haul__pipe *pipe, uint32_t id);
uint32_t haul__session_window(haul_session *s);
/* The bytes the session's output queue may hold now: its bound, or less
 * on a link that needs less (session.c). */
uint64_t haul__session_out_bound(const haul_session *s);
void haul__session_maybe_fin(haul_session *s);
void haul__session_chunk_done(haul_session *s, haul_message *m, uint32_t index);

int haul__session_chunk_begin(haul__pipe *pipe, haul__conn *conn, const haul__frame *f,
                              haul_message **mp, uint32_t *indexp);
void haul__session_chunk_abandon(haul__pipe *pipe, haul_message *m, uint32_t index);
int haul__session_take_ctl(haul_session *s, haul__frame *f, const uint8_t **payload,
                           uint32_t *plen);
void haul__session_sync_payload(const haul_session *s, uint8_t *out);
void haul__session_ctl_posted(haul_session *s, int type);
void haul__session_ctl_written(haul_session *s, int type);
void haul__session_ctl_lost(haul_session *s, int type);
/* Takes the next control frame the pipe owes for a session it does not
 * hold (section 9.3). Returns 0 when there was one, -1 when none. */
int haul__pipe_take_answer(haul__pipe *pipe, haul__frame *f);
int haul__session_conn_lost(haul_session *s, uint32_t serial);
void haul__session_give_up_ctl(haul_session *s);
void haul__cq_forget(haul_engine *engine, haul_session *s);

/* The memory budget (core/budget.c, mu held). */
uint64_t haul__mem_grant(haul_session *s, uint64_t right);
void haul__mem_rx_begin(haul_session *s, haul_message *m, uint64_t cost);
void haul__mem_rx_leave(haul_session *s, haul_message *m);
void haul__mem_session_end(haul_session *s, int destroy);
int haul__mem_send(haul_session *s, uint64_t cost, int take);
void haul__mem_serve(haul_engine *e);
void haul__mem_fini(haul_engine *e);
/* Memory was granted to a waiting session: its new window goes to the
 * peer; or set aside for its refused send: it hears
 * HAUL_EV_WINDOW_OPENED. */
void haul__session_mem_granted(haul_session *s);
void haul__session_mem_opened(haul_session *s);

/* Messages. */
haul_message *haul__message_new(uint64_t len, int allocate);
void haul__message_unref(haul_message *m);
void haul__message_plan(haul_message *m, uint32_t chunk);

struct haul__principal_limit {
    char name[HAUL__PRINCIPAL_MAX + 1];
    unsigned max;
};

/* Pipes and the dispatcher. */
haul__pipe *haul__pipe_client(haul_engine *engine, const haul_session_config *config,
                              const struct sockaddr_storage *ss, socklen_t len,
                              struct ssl_ctx_st *tls_ctx, const char *tls_key, int *err);
haul__pipe *haul__pipe_find(haul_engine *engine, const char *destination, const char *tls_key);
haul__pipe *haul__pipe_server(haul_engine *engine, uint64_t id, const haul_listen_config *lconf);
void haul__pipe_kick(haul__pipe *pipe, unsigned n);
/* Whether a client connection is parked: its automatic pipe uses fewer
 * connections now, and gives it no chunks. */
static inline int haul__conn_parked(const haul__conn *c)
{
    return c->pipe != NULL && !c->pipe->server && c->index >= c->pipe->active;
}
/* Whether the pipe's sessions have more to send than its connections take
 * now (for the automatic count): a chunk waits within a window, or a
 * sender is held back (its output queue full, or the receiver's window
 * closed) while messages of the window are still in flight. */
int haul__pipe_demand(haul__pipe *pipe);
/* Whether a session of the pipe is being opened (created, its SYNC not
 * yet acknowledged): its application means to send. */
int haul__pipe_opening(haul__pipe *pipe);
/* Makes an automatic pipe use n connections (at most its cap): dials the
 * slots it never had, parks or unparks the others. Returns the count it
 * could reach: lower when a dial failed for want of memory or
 * descriptors, or the engine's max_connections was reached. */
unsigned haul__pipe_resize(haul__pipe *pipe, unsigned n);
int haul__pipe_fill(haul__pipe *pipe, haul__conn *conn);
/* A client connection's connect completed (mu held): an automatic pipe
 * learns the path's round trip from it, before any handshake. */
void haul__pipe_conn_connected(haul__pipe *pipe, haul__conn *conn);
void haul__pipe_conn_joined(haul__pipe *pipe, haul__conn *conn);
void haul__pipe_conn_lost(haul__pipe *pipe, haul__conn *conn, int error);
int64_t haul__pipe_sweep(haul__pipe *pipe, int64_t now);
/* The limit of joined connections of a principal (0: none), and how many
 * it has joined now over all its pipes. */
unsigned haul__principal_limit(haul_engine *engine, const char *principal, unsigned *joined);
void haul__pipe_maybe_free(haul__pipe *pipe);
/* When bytes last left the send queues of the pipe's connections that
 * carry chunks of the session's unacknowledged messages, as far as
 * watching them from now on tells (0: never seen). */
int64_t haul__pipe_queue_moved(haul__pipe *pipe, haul_session *s, int64_t now);
/* Sends again, on other connections, the chunks of the session's oldest
 * unacknowledged message that its connections are slow to deliver while
 * it holds up the window (mu held; from the sweep). */
int64_t haul__pipe_hedge(haul__pipe *pipe, haul_session *s, int64_t now);
void haul__pipe_add_session(haul__pipe *pipe, haul_session *s);
void haul__pipe_remove_session(haul__pipe *pipe, haul_session *s);
void haul__pipe_destroy(haul__pipe *pipe);
/* The joined connections reading a copy of chunk `index` of m: counts
 * them, and with drop, tells each to discard the rest of its copy. */
unsigned haul__pipe_readers(haul__pipe *pipe, haul_message *m, uint32_t index, int drop);
/* The memory of ended sessions and the answers owed for them. */
void haul__pipe_remember(haul__pipe *pipe, uint32_t id, int how, uint32_t code);
const haul__ended *haul__pipe_ended(const haul__pipe *pipe, uint32_t id);
void haul__pipe_answer(haul__pipe *pipe, uint32_t id, int type, uint32_t aux);

/* Connections. */
haul__conn *haul__conn_new(haul_engine *engine, int fd, int server, haul__pipe *pipe,
                           unsigned index);
void haul__conn_start(haul__conn *conn, int connecting);
void haul__conn_wake(haul__conn *conn);
/* Takes paused listeners up again: a handshake slot or a descriptor was
 * freed (mu held; engine.c, "Admission"). */
void haul__listeners_resume(haul_engine *engine);
void haul__conn_close(haul__conn *conn, int error, const char *why);
void haul__conn_io(haul__conn *conn, uint32_t events); /* mu NOT held */
void haul__conn_handle_wake(haul__conn *conn);         /* mu NOT held */
void haul__conn_free(haul__conn *conn);
/* A connection waiting for another's direct read into its chunk
 * (haul__conn.rx_waiting) no longer waits: it goes on with its buffer. */
void haul__conn_stop_waiting(haul__conn *conn);
int64_t haul__conn_sweep(haul__conn *conn, int64_t now);
/* The one way each of a connection's two machines moves (net/conn_fsm.h),
 * mu held: takes the transition of the table for `event`, counts the
 * state entered and logs it. A transition the table does not have is a
 * bug in the engine: it asserts in a debug build, and is refused (the
 * state stays, an error is logged) otherwise. Returns 0, or -1 when
 * refused. */
int haul__conn_enter(haul__conn *conn, int event);
int haul__rx_enter(haul__conn *conn, int event);

/* TLS (net/tls.c). mu is not needed by any of these. */
int haul__tls_ctx_new(haul_engine *engine, const haul_tls_config *config, int server,
                      struct ssl_ctx_st **ctxp);
void haul__tls_ctx_free(struct ssl_ctx_st *ctx);
/* Makes a new context from the files named by a haul__tls_key() string. */
int haul__tls_ctx_reload(haul_engine *engine, const char *tls_key, int server,
                         struct ssl_ctx_st **ctxp);
/* The key of a client pipe's TLS identity (malloc'd), or NULL for plain;
 * *err is HAUL_ENOMEM when it could not be made. */
char *haul__tls_key(const haul_tls_config *config, int *err);
/* The one way the security state machine moves, on the connection's own
 * thread, with or without mu: takes the transition of the table for
 * `event`, counts the state entered and logs it, and keeps errno. A transition the table
 * does not have is a bug in the engine: it asserts in a debug build, and
 * is refused (the state stays, an error is logged) otherwise. Returns 0,
 * or -1 when refused. */
int haul__secure_enter(haul__conn *conn, int event);
/* Addresses. */
int haul__addr_parse(const char *address, struct sockaddr_storage *ss, socklen_t *len);
int haul__addr_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t size);
int haul__sock_listen(const struct sockaddr_storage *ss, socklen_t len, int *fdp);
int haul__sock_dial(const struct sockaddr_storage *ss, socklen_t len, int *fdp);
/* TCP_USER_TIMEOUT on a TCP socket (0: the kernel's default); nothing on
 * others. */
void haul__sock_user_timeout(int fd, unsigned ms);
/* Sets TCP_NOTSENT_LOWAT to `bytes` on a TCP socket whose round trip is at
 * least min_rtt_us. *rtt_us gets the kernel's estimate (0 when unknown or
 * not TCP). Returns 1 when set. */
int haul__sock_backlog(int fd, uint32_t bytes, uint32_t min_rtt_us, uint32_t *rtt_us);
/* Bytes of the socket's send queue not yet acknowledged by the peer
 * (SIOCOUTQ), or -1. */
int haul__sock_unacked(int fd);
/* Whether `bytes` more fit beside what the TCP socket holds
 * unacknowledged within twice its congestion window; always when it
 * holds nothing, or when the kernel cannot tell. */
int haul__sock_room(int fd, uint32_t bytes);
/* Sets TCP_NOTSENT_LOWAT of a TCP socket to half its congestion window,
 * or to floor if more (*lowat: the value set last, updated). Returns the
 * kernel's smoothed round-trip estimate in microseconds, 0 if unknown,
 * and sets *min_rtt to the least it saw (the path without queues). */
uint32_t haul__sock_pace(int fd, uint32_t floor, uint32_t *lowat, uint32_t *min_rtt);
/* The least round trip a TCP socket saw, in microseconds (the SYN's once
 * connected); 0 when unknown, when the SYN had to be sent again, or not
 * TCP. */
uint32_t haul__sock_min_rtt(int fd);

/* Test hook: breaks connection `index` of the session's (client) pipe. */
int haul__debug_break_conn(haul_session *s, unsigned index);

/* Test hook: freezes connection `index` of the session's pipe (client or
 * server; -1: every one), as a peer that stops reading and writing would:
 * it neither reads nor writes until thawed, so that its socket buffers
 * fill. Thawing makes it read and write again. Returns 0, or HAUL_EINVAL
 * when there is no such connection. */
int haul__debug_freeze(haul_session *s, int index, int frozen);
/* Test hook: frozen 2 makes the connection write none of the first batch
 * it takes that carries a chunk (control frames before it go), as a
 * connection whose path stopped delivering would hold its chunks; 0
 * lets it write again. */

/* Test hook: automatic pipes made from now on take a link for local
 * below `us` of RTT (0: the default, HAUL__AUTO_LOCAL_RTT_US), so that a
 * test on loopback can see them grow. */
void haul__debug_auto_local(haul_engine *engine, unsigned us);
/* Test hook: automatic pipes made from now on take a link for long from
 * `us` of RTT on (0: the default, HAUL__AUTO_LONG_RTT_US). */
void haul__debug_auto_long(haul_engine *engine, unsigned us);

/* Test hook: makes the session's automatic pipe use n connections now,
 * and its controller leave the count alone from then on (for tests of
 * shrinking and growing).
 * Returns 0, or HAUL_EINVAL when the pipe is not automatic. */
int haul__debug_auto_resize(haul_session *s, unsigned n);

/* Test hook: while held, no dispatcher of the engine sends chunks, so that
 * a test can fill queues before anything moves. */
void haul__debug_hold(haul_engine *engine, int hold);

/* Test hook: the next n batches that joined connections of the engine
 * are about to write fail instead (EPIPE), before a byte is written, and
 * their connections close as broken ones do. */
void haul__debug_fail_writes(haul_engine *engine, int n);

/* Test hook: while set, the completion queue's ring cannot grow, as if
 * memory had run out. */
void haul__debug_cq_nomem(haul_engine *engine, int on);

/* Reports how often each state was entered. */
void haul__count_state(haul_engine *engine, int state);

#endif
