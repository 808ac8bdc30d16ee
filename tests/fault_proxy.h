/*
 * fault_proxy.h - a TCP proxy that injects network faults, for the tests.
 *
 * The proxy listens on an address, dials a target for every connection it
 * accepts and forwards bytes both ways, on a thread of its own (poll,
 * non-blocking sockets). On the way it can break the connections it
 * carries, in the ways a real network does:
 *
 *   reset      both sockets are closed with an RST (SO_LINGER 0): the
 *              client and the server see ECONNRESET.
 *   fin        one direction ends with a FIN (shutdown(SHUT_WR) towards
 *              its receiver) in the middle of the stream; what the sender
 *              sends after it is read and dropped.
 *   blackhole  nothing is read or written in either direction for a
 *              while, and nothing is sent: the peers see silence, then
 *              the bytes flow again, none lost.
 *   delay      one direction stops for a while.
 *   cut        the next writes of one direction go out in pieces of
 *              random sizes, from 1 byte up, with pauses of up to 1 ms
 *              between them, so that the receiver reads frames in pieces.
 *   blip       every connection of the proxy is reset at once.
 *   partition  a blackhole of every connection at once, and nothing new
 *              is accepted, for a while (see fault_proxy_partition()).
 *
 * Apart from faults, it can make each connection slow: rate_up bounds
 * the bytes per second each one forwards towards the target, rate_down
 * those back.
 *
 * The faults come from a schedule made from a seed: connection number i
 * (in the order of acceptance, from 0) gets a plan drawn from the seed and
 * i alone, of faults triggered at a byte offset of one direction (the
 * fault happens when exactly that many bytes of the direction were
 * forwarded, so a reset can fall in the middle of a frame) or at a time
 * after the connection was accepted. Blips and partitions are at times
 * after the proxy started. The schedule is deterministic; which bytes travel on which
 * connection is not (it depends on thread timing), so a replay of a seed
 * applies the same plan to traffic that may differ.
 *
 * A budget bounds the disruptive faults (reset, fin, blackhole, blip)
 * applied over the proxy's life, so that a transfer under faults can
 * still finish; once it is spent, the proxy only forwards.
 *
 * Tests may also drive faults themselves: fault_proxy_partition() stops
 * every connection in both directions and accepts nothing new (pending
 * connections wait in the listen backlog) until it is lifted, and
 * fault_proxy_reset_all() resets every connection.
 *
 * Every function may be called from any thread.
 */
#ifndef HAUL_TESTS_FAULT_PROXY_H
#define HAUL_TESTS_FAULT_PROXY_H

#include <stdint.h>
#include <stdio.h>

typedef struct fault_proxy fault_proxy;

/* The kinds of faults, in the order of fault_kind_name(). */
typedef enum fault_kind {
    FAULT_RESET,
    FAULT_FIN,
    FAULT_BLACKHOLE,
    FAULT_DELAY,
    FAULT_CUT,
    FAULT_BLIP,
    FAULT_PARTITION,
    FAULT_KIND_COUNT_
} fault_kind;

typedef struct fault_proxy_config {
    /* Where to listen, "HOST:PORT" or "[V6]:PORT"; port 0 lets the system
     * choose (fault_proxy_address() tells which). Default
     * "127.0.0.1:0". */
    const char *listen;
    /* Where to forward, "HOST:PORT" or "[V6]:PORT", resolved once by
     * fault_proxy_start(). Required. */
    const char *target;
    /* The seed of the schedule. */
    uint64_t seed;
    /* Whether to apply the seeded schedule at all; 0 only forwards (and
     * obeys partition and reset_all). Default 0. */
    int faults;
    /* Most disruptive faults (reset, fin, blackhole, blip) applied over
     * the proxy's life. Default 4. Partitions are not counted: a
     * partition alone breaks no connection, and the schedule has few. */
    unsigned max_faults;
    /* The kinds of faults planned for connections, a mask of bits
     * 1 << FAULT_*; blips are planned when FAULT_BLIP's bit is set.
     * Default: every kind. */
    unsigned kinds;
    /* Most faults planned for one connection. Default 3. */
    unsigned faults_per_conn;
    /* Most blips planned. Default 1. */
    unsigned max_blips;
    /* Most partitions planned, and the longest. Defaults 0 and 1000 ms. */
    unsigned max_partitions;
    unsigned partition_max_ms;
    /* Byte-offset triggers fall in [1, span_bytes] of the upward
     * direction (client to target) and in [1, span_bytes_down] of the
     * other, where a request-response protocol carries far fewer bytes;
     * time triggers (and blips) in [0, span_ms). Defaults 1 MiB, 1 MiB and
     * 1500 ms. */
    uint64_t span_bytes;
    uint64_t span_bytes_down;
    unsigned span_ms;
    /* Longest blackhole and delay. Defaults 1000 ms and 200 ms. */
    unsigned blackhole_max_ms;
    unsigned delay_max_ms;
    /* Bytes per second that each connection forwards from the client to
     * the target, at most (0: no limit): a link whose connections are
     * each slow, so that n connections carry n times as much as one.
     * The proxy then also keeps a small receive buffer on the client's
     * side, so that little of what the client sent waits in its kernel.
     * Default 0. */
    uint64_t rate_up;
    /* The same from the target back to the client (0: no limit), for
     * downloads. Default 0. */
    uint64_t rate_down;
    /* Where to write a line for every fault applied, as it happens
     * (e.g. stderr); NULL: nowhere. The record kept for
     * fault_proxy_report() does not depend on it. */
    FILE *trace;
} fault_proxy_config;

/* Counters, for fault_proxy_stats(). */
typedef struct fault_proxy_stats {
    uint64_t accepted;                   /* connections accepted */
    uint64_t applied[FAULT_KIND_COUNT_]; /* faults applied, by kind */
    uint64_t skipped;                    /* planned, but over the budget */
    uint64_t stalled_ms;                 /* sum of the blackholes, delays and partitions applied */
    uint64_t bytes[2];                   /* forwarded: to the target, back */
} fault_proxy_stats;

/* Fills *config with the defaults above. */
void fault_proxy_config_init(fault_proxy_config *config);

/*
 * Resolves the target, listens and starts the proxy's thread. The
 * configuration is copied. Returns 0 and sets *proxyp, or -1 with errno
 * set (and a sentence on stderr).
 */
int fault_proxy_start(const fault_proxy_config *config, fault_proxy **proxyp);

/* Stops the thread, closes every socket and frees the proxy. */
void fault_proxy_stop(fault_proxy *proxy);

/* The address the proxy listens on, "127.0.0.1:PORT" or "[::1]:PORT";
 * valid until fault_proxy_stop(). */
const char *fault_proxy_address(const fault_proxy *proxy);

/* Starts (on = 1) or lifts (on = 0) a partition: see above. */
void fault_proxy_partition(fault_proxy *proxy, int on);

/* Resets every connection the proxy carries now (RST both ways). Returns
 * at once; the thread does it before it forwards another byte. */
void fault_proxy_reset_all(fault_proxy *proxy);

void fault_proxy_stats_get(fault_proxy *proxy, fault_proxy_stats *out);

/*
 * Writes the schedule (the plan of every connection accepted so far and
 * the planned blips) and the record of what was applied, when, at which
 * offset, to out. Lines start with `prefix`.
 */
void fault_proxy_report(fault_proxy *proxy, FILE *out, const char *prefix);

/* "reset", "fin", ... */
const char *fault_kind_name(int kind);

#endif
