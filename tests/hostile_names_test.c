/*
 * hostile_names_test.c - names that would climb out of a tree, through the
 * real programs. hauld is sent entries named "..", "../x", "/etc/x", with
 * an embedded NUL, or over-long, by a client built on libhaul that does
 * not check what it encodes: each push is aborted, nothing lands outside
 * the namespace, and hauld goes on serving. The haul client is sent the
 * same names, and a symlink followed by a file "through" it, by a server
 * of the test's own: it refuses them and writes nothing outside DEST.
 */
#include "harness.h"
#include "e2e.h"
#include "proto/store.h"
#include "util.h"

static const struct {
    const char *path;
    size_t len;
} hostile[] = {
    {"..", 2}, {"../x", 4}, {"/etc/x", 6}, {"a/../../x", 9}, {"a\0b", 3}, {"a//b", 4},
};

/* Opens a push session to ADDRESS with an unchecked first message. */
static int push_raw(haul_engine *e, const char *address, const uint8_t *msg, size_t len)
{
    hsp_request req = {.op = HSP_PUSH};
    strcpy(req.dataset, "evil");
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
    haul_event ev;
    CHECK(wait_for(e, HAUL_EV_SESSION_OPEN, &ev, 10000));
    CHECK_OK(haul_send(s, msg, len, 1));
    /* The server ends the session: the push is aborted. */
    CHECK(wait_for(e, HAUL_EV_SESSION_CLOSED, &ev, 10000));
    int error = ev.error;
    haul_session_free(s);
    return error;
}

static size_t entry_message(uint8_t *buf, size_t cap, const char *path, size_t len)
{
    hsp_writer w;
    hsp_writer_init(&w, buf, cap);
    hsp_entry e = {
        .id = 0, .kind = HSP_FILE, .mode = 0644, .path = path, .path_len = (uint16_t)len};
    CHECK_OK(hsp_put_entry(&w, &e));
    return w.len;
}

TEST_TIMEOUT(server_refuses_hostile_names, 120)
{
    harness_strerror = haul_strerror;
    e2e_env env;
    e2e_setup(&env, 0);
    haul_engine *e = engine_quiet(1, 0);
    CHECK(e != NULL);
    static uint8_t buf[HSP_MESSAGE_MAX];
    char *longpath = malloc(5000);
    memset(longpath, 'a', 5000);
    for (size_t i = 0; i <= sizeof(hostile) / sizeof(hostile[0]); i++) {
        const char *path = i < sizeof(hostile) / sizeof(hostile[0]) ? hostile[i].path : longpath;
        size_t len = i < sizeof(hostile) / sizeof(hostile[0]) ? hostile[i].len : 5000;
        size_t n = entry_message(buf, sizeof(buf), path, len);
        int error = push_raw(e, env.server.address, buf, n);
        harness_log("entry %zu: session closed with %s", i, haul_errname(error));
        CHECK_NE(error, HAUL_OK);
        CHECK(e2e_server_alive(&env.server));
    }
    free(longpath);
    /* Nothing escaped: no "x" beside the store or in /etc, no snapshot. */
    char p[PATH_MAX];
    CHECK(access(e2e_path(&env, p, "x"), F_OK) != 0);
    CHECK(access("/etc/x", F_OK) != 0);
    e2e_pathf(p, "%s/default/evil/snapshots", env.store);
    CHECK(access(p, F_OK) != 0 || e2e_count_entries(p) == 0);

    /* And hauld still serves an honest push. */
    char src[PATH_MAX], url[512];
    e2e_path(&env, src, "src");
    e2e_mkdir(src);
    e2e_file(e2e_join(p, src, "ok"), 1000, 1, 0644);
    e2e_proc pr = {0};
    e2e_haul(&env, &pr, 60, "push", src, e2e_url(&env, url, "honest"));
    CHECK_EQ(pr.code, 0);
    e2e_proc_free(&pr);
    haul_engine_free(e);
    e2e_teardown(&env);
}

/* ---- a server that lies to the client --------------------------------------- */

typedef struct liar {
    haul_engine *engine;
    const uint8_t *msg;
    size_t len;
    int served;
    pthread_t thread;
} liar;

static void *liar_main(void *arg)
{
    liar *l = arg;
    haul_session *s = NULL;
    haul_event ev;
    for (int rounds = 0; rounds < 200 && !l->served; rounds++) {
        if (haul_engine_wait(l->engine, &ev, 1, 100) != 1)
            continue;
        if (ev.type == HAUL_EV_SESSION_REQUEST) {
            s = ev.session;
            haul_session_accept(s);
        } else if (ev.type == HAUL_EV_MESSAGE_RECEIVED && s) {
            haul_message *m;
            int last = 0;
            while (haul_recv(s, &m) == 0) {
                last = haul_message_len(m) == 0; /* the end of PATHS */
                haul_message_free(m);
            }
            if (last) {
                haul_send(s, l->msg, l->len, 1);
                l->served = 1;
            }
        }
    }
    /* Wait for the client to go, then release the handle. */
    while (s && haul_engine_wait(l->engine, &ev, 1, 5000) == 1 && ev.type != HAUL_EV_SESSION_CLOSED)
        ;
    haul_session_free(s);
    return NULL;
}

static void pull_from_liar(e2e_env *env, const uint8_t *msg, size_t len, const char *dest)
{
    liar l = {.msg = msg, .len = len};
    l.engine = engine_quiet(1, 0);
    CHECK(l.engine != NULL);
    CHECK_OK(haul_listen(l.engine, "127.0.0.1:0", NULL));
    char address[128], url[512];
    CHECK_OK(haul_listen_address(l.engine, address, sizeof(address)));
    snprintf(url, sizeof(url), "haul://%s/ds", address);
    CHECK(pthread_create(&l.thread, NULL, liar_main, &l) == 0);
    e2e_proc p = {0};
    e2e_haul(env, &p, 60, "pull", "--timeout", "5", url, dest);
    harness_log("haul pull exited %d: %s", p.code, p.err ? p.err : "");
    CHECK_NE(p.code, 0);
    CHECK_EQ(p.timed_out, 0);
    e2e_proc_free(&p);
    pthread_join(l.thread, NULL);
    CHECK(l.served);
    haul_engine_free(l.engine);
}

TEST_TIMEOUT(client_refuses_hostile_names, 120)
{
    e2e_env env;
    e2e_setup(&env, E2E_NO_SERVER);
    static uint8_t buf[HSP_MESSAGE_MAX];
    char dest[PATH_MAX], outside[PATH_MAX], p[PATH_MAX];
    e2e_path(&env, dest, "deep/dest");
    e2e_mkdir(e2e_path(&env, p, "deep"));
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        size_t n = entry_message(buf, sizeof(buf), hostile[i].path, hostile[i].len);
        pull_from_liar(&env, buf, n, dest);
        CHECK(access(e2e_path(&env, p, "x"), F_OK) != 0);
        CHECK(access(e2e_path(&env, p, "deep/x"), F_OK) != 0);
        CHECK(access("/etc/x", F_OK) != 0);
    }

    /* A symlink to a directory outside, then a file below it. */
    e2e_path(&env, outside, "outside");
    e2e_mkdir(outside);
    hsp_writer w;
    hsp_writer_init(&w, buf, sizeof(buf));
    hsp_entry link = {.id = 0,
                      .kind = HSP_SYMLINK,
                      .mode = 0777,
                      .path = "link",
                      .path_len = 4,
                      .target = outside,
                      .target_len = (uint16_t)strlen(outside)};
    CHECK_OK(hsp_put_entry(&w, &link));
    hsp_entry file = {
        .id = 1, .kind = HSP_FILE, .mode = 0644, .size = 5, .path = "link/planted", .path_len = 12};
    CHECK_OK(hsp_put_entry(&w, &file));
    uint8_t *d = hsp_put_data(&w, 1, 0, 5);
    memcpy(d, "owned", 5);
    pull_from_liar(&env, buf, w.len, dest);
    CHECK_EQ(e2e_count_entries(outside), 0);
    e2e_teardown(&env);
}
