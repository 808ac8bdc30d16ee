/*
 * conn_states_test.c - the connection state machine and the socket I/O
 * state machine of the receiving side (net/conn_fsm.h): their tables are
 * the ones docs/protocol.md documents (sections 5.1, 5.2, 5.6), an
 * illegal transition is refused, and real connections enter every state.
 */
#include <arpa/inet.h>
#include <libgen.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/engine.h"
#include "core/le.h"
#include "harness.h"
#include "raw_peer.h"
#include "util.h"

/* ---- the documented tables --------------------------------------------------- */

#define MAX_ROWS 64

typedef struct doc_table {
    int n;
    char from[MAX_ROWS][256], event[MAX_ROWS][256], to[MAX_ROWS][256];
} doc_table;

typedef struct doc_states {
    int n;
    int index[MAX_ROWS];
    char name[MAX_ROWS][256];
} doc_states;

/* docs/protocol.md, found from this file's own path. */
static char *read_protocol_md(void)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s", __FILE__);
    char *dir = dirname(path);
    char file[4200];
    snprintf(file, sizeof(file), "%s/../docs/protocol.md", dir);
    FILE *f = fopen(file, "r");
    if (f == NULL)
        return NULL;
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    return text;
}

/* Splits a table row "| a | b | c |" into trimmed cells; returns how many. */
static int cells_of(const char *line, char cells[8][256])
{
    if (line[0] != '|')
        return 0;
    int n = 0;
    const char *p = line + 1;
    while (*p && *p != '\n' && n < 8) {
        const char *bar = strchr(p, '|');
        const char *nl = strchr(p, '\n');
        if (bar == NULL || (nl && nl < bar))
            break;
        while (*p == ' ')
            p++;
        size_t len = (size_t)(bar - p);
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (len >= 256)
            len = 255;
        memcpy(cells[n], p, len);
        cells[n][len] = '\0';
        n++;
        p = bar + 1;
    }
    return n;
}

static int prefixed(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Every three-cell row "| STATE | EVENT | STATE |" whose cells carry the
 * machine's prefixes, and every row "| N | STATE | ..." of its states. */
static void parse_doc(const char *text, const char *state_prefix, const char *event_prefix,
                      doc_table *t, doc_states *st)
{
    memset(t, 0, sizeof(*t));
    memset(st, 0, sizeof(*st));
    for (const char *line = text; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        char c[8][256];
        int n = cells_of(line, c);
        if (n == 3 && prefixed(c[0], state_prefix) && prefixed(c[1], event_prefix) &&
            prefixed(c[2], state_prefix)) {
            CHECK_LT(t->n, MAX_ROWS);
            snprintf(t->from[t->n], 256, "%s", c[0]);
            snprintf(t->event[t->n], 256, "%s", c[1]);
            snprintf(t->to[t->n], 256, "%s", c[2]);
            t->n++;
        } else if (n >= 3 && c[0][0] >= '0' && c[0][0] <= '9' && prefixed(c[1], state_prefix)) {
            CHECK_LT(st->n, MAX_ROWS);
            st->index[st->n] = atoi(c[0]);
            snprintf(st->name[st->n], 256, "%s", c[1]);
            st->n++;
        }
    }
}

typedef struct machine {
    const char *state_prefix, *event_prefix;
    int nstates, nevents;
    int (*next)(int state, int event);
    const char *(*state_name)(int state);
    const char *(*event_name)(int event);
    const char *const *(*public_names)(int *count);
} machine;

/* The code's table and the document's hold exactly the same transitions,
 * and the document lists the states in the code's order. */
static void check_against_doc(const machine *m)
{
    const char *text = read_protocol_md();
    if (text == NULL)
        SKIP("docs/protocol.md is not beside the sources");
    doc_table t;
    doc_states st;
    parse_doc(text, m->state_prefix, m->event_prefix, &t, &st);
    harness_log("%s: %d documented transitions, %d documented states", m->state_prefix, t.n, st.n);

    int count;
    const char *const *names = m->public_names(&count);
    CHECK_EQ(count, m->nstates);
    CHECK_EQ(st.n, m->nstates);
    for (int i = 0; i < st.n; i++) {
        CHECK_EQ(st.index[i], i);
        CHECK_STR_EQ(st.name[i], names[i]);
        CHECK_STR_EQ(m->state_name(i), names[i]);
    }

    int in_code = 0;
    for (int s = 0; s < m->nstates; s++) {
        for (int e = 0; e < m->nevents; e++) {
            int to = m->next(s, e);
            int documented = -1;
            for (int i = 0; i < t.n; i++)
                if (strcmp(t.from[i], m->state_name(s)) == 0 &&
                    strcmp(t.event[i], m->event_name(e)) == 0)
                    documented = i;
            if (to >= 0) {
                in_code++;
                if (documented < 0)
                    harness_log("undocumented: %s on %s", m->state_name(s), m->event_name(e));
                CHECK_GE(documented, 0);
                CHECK_STR_EQ(t.to[documented], m->state_name(to));
            } else if (documented >= 0) {
                harness_log("documented, not in the table: %s on %s", m->state_name(s),
                            m->event_name(e));
                CHECK_LT(documented, 0);
            }
        }
    }
    /* Every documented row is one of them, once. */
    CHECK_EQ(t.n, in_code);
    /* Out of range is refused. */
    CHECK_EQ(m->next(-1, 0), -1);
    CHECK_EQ(m->next(m->nstates, 0), -1);
    CHECK_EQ(m->next(0, m->nevents), -1);
}

TEST(conn_table_is_the_documented_one)
{
    machine m = {"CONN_",
                 "CONNEV_",
                 HAUL__CONN_STATE_COUNT_,
                 HAUL__CONNEV_COUNT_,
                 haul__conn_next,
                 haul__conn_state_name,
                 haul__conn_event_name,
                 haul_conn_state_names};
    check_against_doc(&m);
    /* CONN_CLOSED is final, and nothing but a start leaves CONN_NULL. */
    for (int e = 0; e < HAUL__CONNEV_COUNT_; e++)
        CHECK_EQ(haul__conn_next(HAUL__CONN_CLOSED, e), -1);
    CHECK_EQ(haul__conn_next(HAUL__CONN_NULL, HAUL__CONNEV_JOIN), -1);
    CHECK_EQ(haul__conn_next(HAUL__CONN_NULL, HAUL__CONNEV_CLOSE), -1);
    /* No way around the security step or the HELLO. */
    CHECK_EQ(haul__conn_next(HAUL__CONN_DIALING, HAUL__CONNEV_SECURED), -1);
    CHECK_EQ(haul__conn_next(HAUL__CONN_SECURING, HAUL__CONNEV_JOIN), -1);
    /* Only CONN_HELLO and CONN_JOINED carry frames. */
    for (int s = 0; s < HAUL__CONN_STATE_COUNT_; s++)
        CHECK_EQ(haul__conn_carries_frames(s), s == HAUL__CONN_HELLO || s == HAUL__CONN_JOINED);
    CHECK_STR_EQ(haul__conn_event_name(HAUL__CONNEV_JOIN), "CONNEV_JOIN");
}

TEST(rx_table_is_the_documented_one)
{
    machine m = {"RXS_",
                 "RXEV_",
                 HAUL__RXS_COUNT_,
                 HAUL__RXEV_COUNT_,
                 haul__rx_next,
                 haul__rx_state_name,
                 haul__rx_event_name,
                 haul_rx_state_names};
    check_against_doc(&m);
    /* A header always comes between two payloads. */
    CHECK_EQ(haul__rx_next(HAUL__RXS_CHUNK, HAUL__RXEV_CTL_HEADER), -1);
    CHECK_EQ(haul__rx_next(HAUL__RXS_HEADER, HAUL__RXEV_PAYLOAD_DONE), -1);
}

/* ---- illegal transitions ------------------------------------------------------ */

static void log_nothing(void *arg, int level, const char *line)
{
    (void)arg;
    (void)level;
    (void)line;
}

/* haul__conn_enter() and haul__rx_enter() take no transition their table
 * lacks: they assert in a debug build (here, in a child), and leave the
 * state as it was with an error otherwise. */
TEST(enter_refuses_an_illegal_transition)
{
    static haul_engine engine;
    engine.config.log = log_nothing;
    engine.config.log_level = HAUL_LOG_DEBUG;
    haul__conn *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    c->engine = &engine;
    c->serial = 1;
    CHECK_EQ(c->state, HAUL__CONN_NULL);
    CHECK_EQ(c->rx_state, HAUL__RXS_HEADER);
#ifdef NDEBUG
    CHECK_EQ(haul__conn_enter(c, HAUL__CONNEV_JOIN), -1);
    CHECK_EQ(c->state, HAUL__CONN_NULL);
    CHECK_EQ(engine.stats.conn_state_entered[HAUL__CONN_JOINED], 0);
    CHECK_EQ(haul__rx_enter(c, HAUL__RXEV_PAYLOAD_DONE), -1);
    CHECK_EQ(c->rx_state, HAUL__RXS_HEADER);
#else
    for (int which = 0; which < 2; which++) {
        fflush(NULL);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            if (which == 0)
                haul__conn_enter(c, HAUL__CONNEV_JOIN);
            else
                haul__rx_enter(c, HAUL__RXEV_PAYLOAD_DONE);
            _exit(0);
        }
        int status;
        CHECK_EQ(waitpid(pid, &status, 0), pid);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    }
#endif
    /* The legal path is taken, and counted. */
    CHECK_OK(haul__conn_enter(c, HAUL__CONNEV_ACCEPT));
    CHECK_OK(haul__conn_enter(c, HAUL__CONNEV_SECURED));
    CHECK_OK(haul__conn_enter(c, HAUL__CONNEV_JOIN));
    CHECK_EQ(c->state, HAUL__CONN_JOINED);
    CHECK_EQ(engine.stats.conn_state_entered[HAUL__CONN_JOINED], 1);
    CHECK_OK(haul__rx_enter(c, HAUL__RXEV_CHUNK_HEADER));
    CHECK_OK(haul__rx_enter(c, HAUL__RXEV_CHUNK_TAKEN));
    CHECK_EQ(c->rx_state, HAUL__RXS_DISCARD);
    CHECK_EQ(engine.stats.rx_state_entered[HAUL__RXS_DISCARD], 1);
    free(c);
}

/* ---- real runs ------------------------------------------------------------------ */

static void stats_of(haul_engine *e, haul_engine_stats *st)
{
    haul_engine_stats_get(e, st);
}

/* A raw peer: a plain TCP connection to the server that says HELLO with
 * a pipe id of its own, then sends a CHUNK of a session the server does
 * not know (its payload is read and dropped: RXS_DISCARD). */
static void raw_hello_and_unknown_chunk(const char *address)
{
    int fd = raw_connect(address);
    uint8_t buf[2 * HAUL__FRAME_HDR + HAUL__HELLO_MAGIC_LEN + 100];
    haul__frame hello = {.version = HAUL_PROTOCOL_VERSION,
                         .type = HAUL__F_HELLO,
                         .len = HAUL__HELLO_MAGIC_LEN,
                         .seq = 0x5eed,
                         .offset = 4096};
    haul__frame_encode(&hello, buf);
    memcpy(buf + HAUL__FRAME_HDR, HAUL__HELLO_MAGIC, HAUL__HELLO_MAGIC_LEN);
    haul__frame chunk = {.version = HAUL_PROTOCOL_VERSION,
                         .type = HAUL__F_CHUNK,
                         .len = 100,
                         .session = 4242,
                         .total = 100};
    uint8_t *at = buf + HAUL__FRAME_HDR + HAUL__HELLO_MAGIC_LEN;
    haul__frame_encode(&chunk, at);
    memset(at + HAUL__FRAME_HDR, 'x', 100);
    CHECK_EQ(send(fd, buf, sizeof(buf), MSG_NOSIGNAL), (ssize_t)sizeof(buf));
    /* The server answers HELLO_ACK; waiting for it orders the check of
     * the counters after the CHUNK was handled (it came before). */
    uint8_t ack[HAUL__FRAME_HDR];
    CHECK(raw_read_exact(fd, ack, sizeof(ack), 10000));
    CHECK_EQ(ack[1], HAUL__F_HELLO_ACK);
    close(fd);
}

/*
 * A session that opens (a SYNC with a payload: RXS_CTL), carries messages
 * (RXS_CHUNK), loses a connection (CONN_CLOSED) and has it dialled again,
 * and a raw peer's chunk of an unknown session (RXS_DISCARD): every state
 * of both machines is entered, as the statistics count them.
 */
TEST_TIMEOUT(real_runs_enter_every_state, 60)
{
    harness_strerror = haul_strerror;
    haul_engine *server = engine_quiet(1, 0);
    haul_engine *client = engine_quiet(1, 0);
    CHECK(server && client);
    CHECK_OK(haul_listen(server, "127.0.0.1:0", NULL));
    char address[128];
    CHECK_OK(haul_listen_address(server, address, sizeof(address)));
    sink k;
    CHECK_OK(sink_start(&k, server));

    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "CONN_STATES_TEST";
    sc.connections = 2;
    haul_session *s;
    CHECK_OK(haul_session_new(client, &sc, &s));
    haul_event ev;
    CHECK(wait_for(client, HAUL_EV_SESSION_OPEN, &ev, 5000));
    static uint8_t body[1 << 20];
    fill_pattern(body, sizeof(body), 3);
    CHECK_OK(haul_send(s, body, sizeof(body), 1));
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));

    /* A connection breaks; the pipe dials it again. */
    haul_engine_stats before;
    stats_of(client, &before);
    CHECK_OK(haul__debug_break_conn(s, 0));
    CHECK_OK(haul_send(s, body, sizeof(body), 2));
    CHECK(wait_for(client, HAUL_EV_MESSAGE_SENT, &ev, 5000));
    haul_engine_stats cst;
    for (int waited = 0;; waited += 20) {
        stats_of(client, &cst);
        if (cst.conn_state_entered[HAUL__CONN_JOINED] >
            before.conn_state_entered[HAUL__CONN_JOINED])
            break;
        CHECK_LT(waited, 5000);
        haul_engine_wait(client, &ev, 1, 20);
    }

    raw_hello_and_unknown_chunk(address);

    haul_engine_stats sst;
    stats_of(server, &sst);
    int nconn, nrx;
    const char *const *conn_names = haul_conn_state_names(&nconn);
    const char *const *rx_names = haul_rx_state_names(&nrx);
    for (int i = 0; i < nconn; i++)
        harness_log("%-14s client %llu server %llu", conn_names[i],
                    (unsigned long long)cst.conn_state_entered[i],
                    (unsigned long long)sst.conn_state_entered[i]);
    for (int i = 0; i < nrx; i++)
        harness_log("%-14s client %llu server %llu", rx_names[i],
                    (unsigned long long)cst.rx_state_entered[i],
                    (unsigned long long)sst.rx_state_entered[i]);

    /* The client dialled three connections (two, and one again), and
     * every one went through each state up to CONN_JOINED. */
    CHECK_GE(cst.conn_state_entered[HAUL__CONN_NULL], 3);
    CHECK_GE(cst.conn_state_entered[HAUL__CONN_DIALING], 3);
    CHECK_GE(cst.conn_state_entered[HAUL__CONN_SECURING], 3);
    CHECK_GE(cst.conn_state_entered[HAUL__CONN_HELLO], 3);
    CHECK_GE(cst.conn_state_entered[HAUL__CONN_JOINED], 3);
    CHECK_GE(cst.conn_state_entered[HAUL__CONN_CLOSED], 1);
    /* The server never dials; it closed the broken one. */
    CHECK_EQ(sst.conn_state_entered[HAUL__CONN_DIALING], 0);
    CHECK_GE(sst.conn_state_entered[HAUL__CONN_SECURING], 4);
    CHECK_GE(sst.conn_state_entered[HAUL__CONN_JOINED], 4);
    CHECK_GE(sst.conn_state_entered[HAUL__CONN_CLOSED], 1);
    for (int i = 0; i < HAUL__CONN_STATE_COUNT_; i++)
        CHECK_GT(cst.conn_state_entered[i] + sst.conn_state_entered[i], 0);
    /* Receiving: HELLO and SYNC payloads (RXS_CTL) on the server, chunks
     * of the two messages, and the raw peer's chunk dropped. */
    CHECK_GE(sst.rx_state_entered[HAUL__RXS_CTL], 4);
    CHECK_GE(sst.rx_state_entered[HAUL__RXS_CHUNK], 8);
    CHECK_GE(sst.rx_state_entered[HAUL__RXS_DISCARD], 1);
    CHECK_GE(cst.rx_state_entered[HAUL__RXS_CTL], 3);
    for (int i = 0; i < HAUL__RXS_COUNT_; i++)
        CHECK_GT(sst.rx_state_entered[i], 0);

    haul_session_free(s);
    sink_stop(&k);
    haul_engine_free(client);
    haul_engine_free(server);
}
