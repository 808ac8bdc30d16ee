/*
 * compress_test.c - haul push and pull --compress between real haul and
 * hauld processes: a compressible tree arrives identical with fewer bytes
 * on the wire than of content, and the store holds it plain; random data
 * goes raw; without --compress nothing changes; bad levels are usage
 * errors; a server that does not know compression is asked again without
 * it; and hauld aborts a push that sends a compressed message it may not
 * expand (a bomb, garbage, or one in a session without compression), and
 * goes on serving.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include "harness.h"
#include "e2e.h"
#include "core/le.h"
#include "proto/compress.h"
#include "proto/store.h"
#include "util.h"

#define CMD_TIMEOUT 60

/* A text file of `size` bytes: lines that repeat with small changes,
 * which zstd shrinks several times over. */
static void text_file(const char *path, size_t size, unsigned seed)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    size_t n = 0;
    for (unsigned line = 0; n < size; line++) {
        char buf[160];
        int len = snprintf(buf, sizeof(buf),
                           "%06u: the storage server keeps snapshot %u of dataset %u; ok\n", line,
                           (line * 7 + seed) % 1000, seed);
        size_t take = size - n < (size_t)len ? size - n : (size_t)len;
        CHECK_EQ(fwrite(buf, 1, take, f), take);
        n += take;
    }
    CHECK_EQ(fclose(f), 0);
}

/* A tree of text: many small files (packed into messages) and two large
 * ones (sent a block per message). */
static void text_tree(e2e_env *env, char *src)
{
    char p[PATH_MAX];
    e2e_path(env, src, "src");
    e2e_mkdir(src);
    e2e_mkdir(e2e_join(p, src, "docs"));
    for (unsigned i = 0; i < 200; i++) {
        char name[64];
        snprintf(name, sizeof(name), "docs/note-%03u.txt", i);
        text_file(e2e_join(p, src, name), 1000 + i * 97, i);
    }
    text_file(e2e_join(p, src, "big.log"), 5 * E2E_MIB + 12345, 1);
    text_file(e2e_join(p, src, "docs/medium.txt"), 300000, 2);
}

typedef struct report {
    uint64_t bytes, bytes_sent, message_bytes, wire_bytes, compress;
    char snapshot[80];
} report;

/* Runs haul with the arguments and --json; parses what it printed. */
#define haul_json(env, r, expected, ...)                                                           \
    do {                                                                                           \
        e2e_proc p_ = {0};                                                                         \
        e2e_haul(env, &p_, CMD_TIMEOUT, __VA_ARGS__, "--json");                                    \
        CHECK_EXIT(&p_, expected);                                                                 \
        parse(&p_, r);                                                                             \
        e2e_proc_free(&p_);                                                                        \
    } while (0)

static void parse(const e2e_proc *p, report *r)
{
    memset(r, 0, sizeof(*r));
    if (e2e_json_u64(p->out, "bytes", &r->bytes) != 0 ||
        e2e_json_u64(p->out, "message_bytes", &r->message_bytes) != 0 ||
        e2e_json_u64(p->out, "wire_bytes", &r->wire_bytes) != 0 ||
        e2e_json_u64(p->out, "compress", &r->compress) != 0 ||
        e2e_json_str(p->out, "snapshot", r->snapshot, sizeof(r->snapshot)) != 0) {
        e2e_proc_show(p);
        CHECK(!"haul --json did not report message_bytes, wire_bytes and compress");
    }
    e2e_json_u64(p->out, "bytes_sent", &r->bytes_sent);
    harness_log("compress %llu: %llu bytes, %llu sent, %llu of messages, %llu on the wire",
                (unsigned long long)r->compress, (unsigned long long)r->bytes,
                (unsigned long long)r->bytes_sent, (unsigned long long)r->message_bytes,
                (unsigned long long)r->wire_bytes);
}

TEST_TIMEOUT(compressed_push_and_pull_arrive_identical_with_fewer_wire_bytes, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], url[512], dest[PATH_MAX], p[PATH_MAX];
    text_tree(&env, src);
    report r;
    haul_json(&env, &r, 0, "push", "--compress", src, e2e_url(&env, url, "text"));
    CHECK_EQ(r.compress, 3);
    CHECK_GT(r.bytes_sent, 6 * E2E_MIB);
    /* Lines of text shrink several times over. */
    CHECK_LT(r.wire_bytes * 3, r.bytes_sent);
    CHECK_GE(r.message_bytes, r.bytes_sent);

    /* The store holds the files plain, as without compression. */
    e2e_pathf(p, "%s/default/text/snapshots/%s/tree/big.log", env.store, r.snapshot);
    CHECK(e2e_same_content(p, e2e_at(src, "big.log")));
    e2e_pathf(p, "%s/default/text/snapshots/%s/tree/docs/note-007.txt", env.store, r.snapshot);
    CHECK(e2e_same_content(p, e2e_at(src, "docs/note-007.txt")));

    /* Pulled back, without and with compression: the same tree. */
    e2e_path(&env, dest, "plain");
    e2e_proc pr = {0};
    e2e_haul(&env, &pr, CMD_TIMEOUT, "pull", e2e_url(&env, url, "text"), dest);
    CHECK_EXIT(&pr, 0);
    e2e_proc_free(&pr);
    CHECK_EQ(e2e_tree_diff(src, dest, 0), 0);

    e2e_path(&env, dest, "squeezed");
    haul_json(&env, &r, 0, "pull", "--compress=5", e2e_url(&env, url, "text"), dest);
    CHECK_EQ(e2e_tree_diff(src, dest, 0), 0);
    CHECK_EQ(r.compress, 5);
    CHECK_LT(r.wire_bytes * 3, r.message_bytes);
    CHECK_GE(r.message_bytes, r.bytes);

    /* The text summary gives the ratio. */
    e2e_path(&env, dest, "text-summary");
    e2e_haul(&env, &pr, CMD_TIMEOUT, "pull", "--compress", e2e_url(&env, url, "text"), dest);
    CHECK_EXIT(&pr, 0);
    CHECK(e2e_contains(pr.out, "compressed:"));
    CHECK(e2e_contains(pr.out, "ratio"));
    e2e_proc_free(&pr);
    e2e_teardown(&env);
}

TEST_TIMEOUT(incompressible_data_goes_raw, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], url[512], dest[PATH_MAX], p[PATH_MAX];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    /* e2e_file's content is pseudo-random: zstd cannot shrink it. */
    e2e_file(e2e_join(p, src, "random.bin"), 12 * E2E_MIB + 777, 5, 0644);
    for (unsigned i = 0; i < 50; i++) {
        char name[32];
        snprintf(name, sizeof(name), "r%02u", i);
        e2e_file(e2e_join(p, src, name), 20000 + i, 100 + i, 0644);
    }
    report r;
    haul_json(&env, &r, 0, "push", "--compress", src, e2e_url(&env, url, "random"));
    CHECK_EQ(r.compress, 3);
    /* The content is sent as it is: the wire carries all of it, and
     * only the entries (names, metadata) may have shrunk. */
    CHECK_GE(r.wire_bytes, r.bytes_sent);
    CHECK_LE(r.wire_bytes, r.message_bytes);
    CHECK_GT(r.wire_bytes + 16384, r.message_bytes);

    e2e_path(&env, dest, "back");
    haul_json(&env, &r, 0, "pull", "--compress", e2e_url(&env, url, "random"), dest);
    CHECK_EQ(e2e_tree_diff(src, dest, 0), 0);
    CHECK_GE(r.wire_bytes, r.bytes);
    CHECK_LT(r.wire_bytes, r.message_bytes + r.message_bytes / 100);
    e2e_teardown(&env);
}

TEST_TIMEOUT(push_without_compress_is_unchanged, 120)
{
    e2e_env env;
    e2e_setup(&env, 0);
    char src[PATH_MAX], url[512], dest[PATH_MAX];
    text_tree(&env, src);
    report r;
    haul_json(&env, &r, 0, "push", src, e2e_url(&env, url, "plain"));
    CHECK_EQ(r.compress, 0);
    CHECK_EQ(r.wire_bytes, r.message_bytes);
    CHECK_GE(r.wire_bytes, r.bytes_sent);
    e2e_path(&env, dest, "back");
    haul_json(&env, &r, 0, "pull", e2e_url(&env, url, "plain"), dest);
    CHECK_EQ(r.compress, 0);
    CHECK_EQ(r.wire_bytes, r.message_bytes);
    CHECK_EQ(e2e_tree_diff(src, dest, 0), 0);
    /* No summary line about compression. */
    e2e_proc pr = {0};
    e2e_haul(&env, &pr, CMD_TIMEOUT, "push", src, e2e_url(&env, url, "plain"));
    CHECK_EXIT(&pr, 0);
    CHECK(!e2e_contains(pr.out, "compressed"));
    e2e_proc_free(&pr);
    e2e_teardown(&env);
}

TEST_TIMEOUT(bad_compress_levels_are_usage_errors, 60)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    char src[PATH_MAX], url[128];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    /* No server is needed: these fail before any connection. */
    snprintf(url, sizeof(url), "haul://127.0.0.1:9/ds");
    const char *bad[] = {"--compress=0",  "--compress=20", "--compress=abc", "--compress=-1",
                         "--compress=3x", "--compress=",   "--compress= 3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        e2e_proc p = {0};
        e2e_haul(&env, &p, CMD_TIMEOUT, "push", bad[i], src, url);
        harness_log("%s: exit %d", bad[i], p.code);
        CHECK_EXIT(&p, 1);
        CHECK(e2e_contains(p.err, "--compress"));
        e2e_proc_free(&p);
    }
    /* Only push and pull compress. */
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "verify", "--compress", url);
    CHECK_EXIT(&p, 1);
    e2e_proc_free(&p);
    e2e_teardown(&env);
}

TEST_TIMEOUT(compress_level_max_zero_sends_pulls_plain, 120)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--compress-level-max";
    env.server_args[1] = "0";
    e2e_start_server(&env);
    char src[PATH_MAX], url[512], dest[PATH_MAX];
    text_tree(&env, src);
    report r;
    /* The push is the client's to compress. */
    haul_json(&env, &r, 0, "push", "--compress", src, e2e_url(&env, url, "text"));
    CHECK_LT(r.wire_bytes * 3, r.bytes_sent);
    /* The pull is the server's: with a bound of 0, uncompressed. */
    e2e_path(&env, dest, "back");
    haul_json(&env, &r, 0, "pull", "--compress=19", e2e_url(&env, url, "text"), dest);
    CHECK_EQ(r.wire_bytes, r.message_bytes);
    CHECK_EQ(e2e_tree_diff(src, dest, 0), 0);
    e2e_teardown(&env);
}

/* ---- a server that does not know compression ------------------------------------ */

typedef struct old_server {
    haul_engine *engine;
    int asked_compressed, asked_plain;
    pthread_t thread;
} old_server;

/* Refuses a request with a flag it does not know as a server older than
 * COMPRESS does (BAD_REQUEST), and the request without it with
 * NO_DATASET, so that the client's second request is seen. */
static void *old_server_main(void *arg)
{
    old_server *o = arg;
    haul_event ev;
    for (int rounds = 0; rounds < 300 && !o->asked_plain; rounds++) {
        if (haul_engine_wait(o->engine, &ev, 1, 100) != 1 || ev.type != HAUL_EV_SESSION_REQUEST)
            continue;
        hsp_request req;
        size_t clen;
        const uint8_t *ctx = haul_session_context(ev.session, &clen);
        /* What a server without COMPRESS decodes: flags beyond TAKEOVER
         * fail. */
        if (clen > 5 && (ctx[5] & ~HSP_F_TAKEOVER)) {
            o->asked_compressed++;
            haul_session_reject(ev.session, HSP_R_BAD_REQUEST);
        } else {
            CHECK_OK(hsp_request_decode(ctx, clen, &req));
            o->asked_plain++;
            haul_session_reject(ev.session, HSP_R_NO_DATASET);
        }
    }
    return NULL;
}

TEST_TIMEOUT(server_without_compression_is_asked_again_without_it, 60)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    old_server o = {0};
    o.engine = engine_quiet(1, 0);
    CHECK(o.engine != NULL);
    CHECK_OK(haul_listen(o.engine, "127.0.0.1:0", NULL));
    char address[128], url[512], dest[PATH_MAX];
    CHECK_OK(haul_listen_address(o.engine, address, sizeof(address)));
    snprintf(url, sizeof(url), "haul://%s/ds", address);
    CHECK(pthread_create(&o.thread, NULL, old_server_main, &o) == 0);
    e2e_path(&env, dest, "dest");
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "pull", "--plaintext", "--compress", url, dest);
    pthread_join(o.thread, NULL);
    CHECK_EXIT(&p, 4);
    CHECK(e2e_contains(p.err, "does not support --compress"));
    CHECK(e2e_contains(p.err, "no such dataset"));
    e2e_proc_free(&p);
    CHECK_EQ(o.asked_compressed, 1);
    CHECK_EQ(o.asked_plain, 1);
    haul_engine_free(o.engine);
    e2e_teardown(&env);
}

/* ---- hostile compressed messages ------------------------------------------------- */

/* Asks hauld for a push of `dataset` as "default", with or without
 * COMPRESS (level 3); the session's answer is the caller's to wait for. */
static haul_session *open_push(haul_engine *e, const char *address, const char *dataset,
                               int compress)
{
    hsp_request req = {.op = HSP_PUSH, .flags = compress ? HSP_F_COMPRESS : 0, .level = 3};
    snprintf(req.dataset, sizeof(req.dataset), "%s", dataset);
    uint8_t ctx[64];
    size_t clen = hsp_request_encode(&req, ctx, sizeof(ctx));
    haul_session_config sc;
    haul_session_config_init(&sc);
    sc.destination = address;
    sc.principal = "default";
    sc.context = ctx;
    sc.context_len = clen;
    sc.max_message = HSP_MESSAGE_MAX;
    haul_session *s;
    CHECK_OK(haul_session_new(e, &sc, &s));
    return s;
}

/* Opens a push of `dataset`, with or without COMPRESS, sends one ENTRY of
 * a file of `size` bytes, then `msg`; returns the error the session
 * closed with. */
static int push_raw(haul_engine *e, const char *address, const char *dataset, int compress,
                    uint64_t size, const uint8_t *msg, size_t len)
{
    haul_session *s = open_push(e, address, dataset, compress);
    haul_event ev;
    CHECK(wait_for(e, HAUL_EV_SESSION_OPEN, &ev, 10000));
    uint8_t entry[256];
    hsp_writer w;
    hsp_writer_init(&w, entry, sizeof(entry));
    hsp_entry en = {
        .id = 0, .kind = HSP_FILE, .mode = 0644, .size = size, .path = "f", .path_len = 1};
    CHECK_OK(hsp_put_entry(&w, &en));
    CHECK_OK(haul_send(s, entry, w.len, 1));
    CHECK_OK(haul_send(s, msg, len, 2));
    /* The server ends the session: the push is aborted. */
    CHECK(wait_for(e, HAUL_EV_SESSION_CLOSED, &ev, 20000));
    int error = ev.error;
    haul_session_free(s);
    return error;
}

/* A ZSTD record around frame[0, flen) that claims `raw` bytes, as the
 * first piece of a stream. */
static size_t wrap(uint8_t *out, const void *frame, size_t flen, uint32_t raw)
{
    out[0] = HSP_ZSTD;
    out[1] = 0;
    haul__put16(out + 2, 0);
    haul__put32(out + 4, (uint32_t)(HSP_ZSTD_FIXED + flen));
    haul__put32(out + 8, raw);
    haul__put32(out + 12, HSP_ZSTD_NEW_FRAME);
    memcpy(out + 16, frame, flen);
    return 16 + flen;
}

TEST_TIMEOUT(hauld_aborts_a_push_with_a_bad_compressed_message, 120)
{
    harness_strerror = haul_strerror;
    e2e_env env;
    e2e_setup(&env, 0);
    haul_engine *e = engine_quiet(1, 0);
    CHECK(e != NULL);
    static uint8_t big[8u << 20], frame[HSP_MESSAGE_MAX], msg[HSP_MESSAGE_MAX];

    /* A bomb: 8 MiB of zeros in a few hundred bytes, claiming a block. */
    size_t f = ZSTD_compress(frame, sizeof(frame), big, sizeof(big), 3);
    CHECK(!ZSTD_isError(f));
    size_t n = wrap(msg, frame, f, HSP_BLOCK);
    int error = push_raw(e, env.server.address, "bomb", 1, HSP_BLOCK, msg, n);
    harness_log("bomb: session closed with %s", haul_errname(error));
    CHECK_NE(error, HAUL_OK);
    CHECK(e2e_server_alive(&env.server));
    CHECK(e2e_log_wait(&env, "compressed message", 10));

    /* Garbage that claims to be a frame. */
    e2e_fill(frame, 5000, 9);
    n = wrap(msg, frame, 5000, 100000);
    error = push_raw(e, env.server.address, "garbage", 1, 100000, msg, n);
    CHECK_NE(error, HAUL_OK);
    CHECK(e2e_server_alive(&env.server));

    /* A good frame, in a session that did not ask for compression. */
    hsp_writer w;
    hsp_writer_init(&w, big, HSP_MESSAGE_MAX);
    uint8_t *d = hsp_put_data(&w, 0, 0, 100000);
    memset(d, 'a', 100000);
    hsp_zstd *z = hsp_zstd_new(3);
    n = hsp_zstd_pack(z, big, w.len, msg, sizeof(msg));
    CHECK_GT(n, 0);
    error = push_raw(e, env.server.address, "unasked", 0, 100000, msg, n);
    CHECK_NE(error, HAUL_OK);
    CHECK(e2e_server_alive(&env.server));
    CHECK(e2e_log_wait(&env, "compression was not agreed", 10));
    hsp_zstd_free(z);

    /* And hauld still serves an honest compressed push. */
    char src[PATH_MAX], url[512];
    text_tree(&env, src);
    report r;
    haul_json(&env, &r, 0, "push", "--compress", src, e2e_url(&env, url, "honest"));
    CHECK_LT(r.wire_bytes, r.bytes_sent);
    haul_engine_free(e);
    e2e_teardown(&env);
}

/* ---- the memory of compression in hauld's budget ---------------------------------- */

/* Opens a compressed push of `dataset` that sends nothing; returns the
 * session when hauld accepts it, or NULL with *reason when it refuses. */
static haul_session *hold_push(haul_engine *e, const char *address, const char *dataset,
                               uint32_t *reason)
{
    haul_session *s = open_push(e, address, dataset, 1);
    for (;;) {
        haul_event ev;
        CHECK(next_event(e, &ev, 10000));
        if (ev.session != s)
            continue;
        if (ev.type == HAUL_EV_SESSION_OPEN)
            return s;
        CHECK_EQ(ev.type, HAUL_EV_SESSION_REFUSED);
        *reason = ev.reason;
        haul_session_free(s);
        return NULL;
    }
}

/*
 * A compressed push holds a window of history in hauld, which --memory
 * counts: with the budget taken by compressed pushes that hold theirs,
 * the next is refused with NO_COMPRESS, haul pushes that tree
 * uncompressed with a warning, and once the others end a compressed
 * push gets its memory again.
 */
TEST_TIMEOUT(hauld_counts_compression_in_its_memory_and_haul_falls_back_to_plain, 120)
{
    harness_strerror = haul_strerror;
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    env.server_args[0] = "--memory";
    env.server_args[1] = "128M";
    e2e_start_server(&env);
    haul_engine *e = engine_quiet(1, 0);
    CHECK(e != NULL);
    haul_session *held[64];
    int nheld = 0;
    uint32_t reason = 0;
    while (nheld < 64) {
        char name[32];
        snprintf(name, sizeof(name), "held%d", nheld);
        haul_session *s = hold_push(e, env.server.address, name, &reason);
        if (s == NULL)
            break;
        held[nheld++] = s;
    }
    harness_log("%d compressed pushes held; the next refused with %u", nheld, reason);
    CHECK_LT(nheld, 64);
    CHECK_GT(nheld, 2);
    CHECK_EQ(reason, HSP_R_NO_COMPRESS);

    char src[PATH_MAX], url[512];
    text_tree(&env, src);
    e2e_proc p = {0};
    e2e_haul(&env, &p, CMD_TIMEOUT, "push", "--compress", src, e2e_url(&env, url, "plain"),
             "--json");
    CHECK_EXIT(&p, 0);
    CHECK(e2e_contains(p.err, "no memory for --compress"));
    report r;
    parse(&p, &r);
    e2e_proc_free(&p);
    CHECK_EQ(r.compress, 0);
    CHECK_EQ(r.wire_bytes, r.message_bytes);

    for (int i = 0; i < nheld; i++)
        haul_session_free(held[i]);
    for (int i = 0; i < nheld; i++) {
        char text[64];
        snprintf(text, sizeof(text), "push held%d): the session ended", i);
        CHECK(e2e_log_wait(&env, text, 10));
    }
    /* Each push gives its memory back as it ends, just after it says
     * so: a compressed push is served compressed within a few tries. */
    for (int tries = 0;; tries++) {
        CHECK_LT(tries, 1000);
        haul_session *s = hold_push(e, env.server.address, "again", &reason);
        if (s != NULL) {
            haul_session_free(s);
            break;
        }
        CHECK_EQ(reason, HSP_R_NO_COMPRESS);
    }
    haul_json(&env, &r, 0, "push", "--compress", src, e2e_url(&env, url, "compressed"));
    CHECK_EQ(r.compress, 3);
    CHECK_LT(r.wire_bytes, r.message_bytes / 4);
    haul_engine_free(e);
    e2e_teardown(&env);
}
