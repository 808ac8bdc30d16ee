/*
 * store_test.c - the storage protocol codec: every record survives a round
 * trip, and hostile names, paths and lengths are refused.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "proto/store.h"

TEST(hostile_paths_are_refused)
{
    CHECK(hsp_path_ok("a", 1));
    CHECK(hsp_path_ok("a/b/c.txt", 9));
    CHECK(hsp_path_ok("..a/b..", 7));
    CHECK(hsp_path_ok("\xff\xfe/caf\xc3\xa9", 8)); /* bytes, not text */
    CHECK(!hsp_path_ok("", 0));
    CHECK(!hsp_path_ok("/etc/passwd", 11));
    CHECK(!hsp_path_ok("..", 2));
    CHECK(!hsp_path_ok("a/../../b", 9));
    CHECK(!hsp_path_ok("a/..", 4));
    CHECK(!hsp_path_ok("./a", 3));
    CHECK(!hsp_path_ok("a//b", 4));
    CHECK(!hsp_path_ok("a/", 2));
    CHECK(!hsp_path_ok("a\0b", 3)); /* an embedded NUL */
    char longname[300];
    memset(longname, 'x', sizeof(longname));
    CHECK(hsp_path_ok(longname, 255));
    CHECK(!hsp_path_ok(longname, 256)); /* one component too long */
    char *deep = malloc(HSP_PATH_MAX + 2);
    for (int i = 0; i < HSP_PATH_MAX + 1; i++)
        deep[i] = i % 2 ? '/' : 'd';
    CHECK(hsp_path_ok(deep, HSP_PATH_MAX - 1));
    CHECK(!hsp_path_ok(deep, HSP_PATH_MAX + 1)); /* over-long */
    free(deep);
}

TEST(names_are_checked)
{
    CHECK(hsp_name_ok("home-server_1.daily", 19, HSP_NAME_MAX));
    CHECK(!hsp_name_ok(".staging", 8, HSP_NAME_MAX));
    CHECK(!hsp_name_ok("a/b", 3, HSP_NAME_MAX));
    CHECK(!hsp_name_ok("", 0, HSP_NAME_MAX));
    CHECK(!hsp_name_ok("with space", 10, HSP_NAME_MAX));
    CHECK(!hsp_name_ok("aaaaa", 5, 4));
}

TEST(requests_round_trip_and_bad_ones_fail)
{
    hsp_request r = {.op = HSP_PULL}, d;
    strcpy(r.dataset, "home");
    strcpy(r.snapshot, "20261127T080000Z");
    uint8_t buf[512];
    size_t n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_GT(n, 0);
    CHECK_OK(hsp_request_decode(buf, n, &d));
    CHECK_EQ(d.op, HSP_PULL);
    CHECK_STR_EQ(d.dataset, "home");
    CHECK_STR_EQ(d.snapshot, "20261127T080000Z");
    CHECK_EQ(hsp_request_decode(buf, n - 1, &d), -1); /* truncated */
    buf[0] = 'X';
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1); /* bad magic */
    buf[0] = 'H';
    buf[4] = 99;
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1); /* unknown op */
    buf[4] = HSP_PULL;
    buf[10] = '.';
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1); /* hidden dataset */
    hsp_request noname = {.op = HSP_PUSH};
    n = hsp_request_encode(&noname, buf, sizeof(buf));
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1); /* push needs a dataset */
}

TEST(request_flags_round_trip_and_unknown_ones_fail)
{
    hsp_request r = {.op = HSP_PUSH, .flags = HSP_F_TAKEOVER}, d;
    strcpy(r.dataset, "home");
    uint8_t buf[512];
    size_t n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_EQ(n, 14);
    CHECK_EQ(buf[5], HSP_F_TAKEOVER);
    CHECK_OK(hsp_request_decode(buf, n, &d));
    CHECK_EQ(d.op, HSP_PUSH);
    CHECK_EQ(d.flags, HSP_F_TAKEOVER);
    CHECK_STR_EQ(d.dataset, "home");
    /* Without the flag, as every request was before flags existed. */
    r.flags = 0;
    n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_OK(hsp_request_decode(buf, n, &d));
    CHECK_EQ(d.flags, 0);
    /* A flag nobody defined yet: refused, never ignored. */
    buf[5] = 0x80;
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
    buf[5] = HSP_F_TAKEOVER | 0x08;
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
    /* Only a push can take over. */
    buf[5] = HSP_F_TAKEOVER;
    buf[4] = HSP_PULL;
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
    buf[4] = HSP_DELETE;
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
}

TEST(request_rate_of_a_pull_round_trips_and_is_refused_elsewhere_or_zero)
{
    hsp_request r = {.op = HSP_PULL, .flags = HSP_F_RATE, .rate = 2u << 20}, d;
    strcpy(r.dataset, "home");
    strcpy(r.snapshot, "s1");
    uint8_t buf[512];
    size_t n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_EQ(n, 16 + 8);
    CHECK_OK(hsp_request_decode(buf, n, &d));
    CHECK_EQ(d.flags, HSP_F_RATE);
    CHECK_EQ(d.rate, 2u << 20);
    CHECK_STR_EQ(d.snapshot, "s1");
    /* The rate's bytes are counted: one short or one over fails. */
    CHECK_EQ(hsp_request_decode(buf, n - 1, &d), -1);
    CHECK_EQ(hsp_request_decode(buf, n - 8, &d), -1);
    /* Only a pull takes a rate. */
    buf[4] = HSP_PUSH;
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
    buf[4] = HSP_PULL;
    /* A rate of 0 is not how no limit is asked for. */
    r.rate = 0;
    n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_EQ(hsp_request_decode(buf, n, &d), -1);
}

/* A compressed pull with a rate: the level's byte, then the rate's 8,
 * both read back. */
TEST(request_with_a_level_and_a_rate_keeps_both_in_order)
{
    hsp_request r = {.op = HSP_PULL,
                     .flags = HSP_F_COMPRESS | HSP_F_RATE,
                     .level = 7,
                     .rate = 3u << 20},
                d;
    strcpy(r.dataset, "home");
    uint8_t buf[512];
    size_t n = hsp_request_encode(&r, buf, sizeof(buf));
    CHECK_EQ(n, 14 + 1 + 8);
    CHECK_EQ(buf[14], 7);
    CHECK_OK(hsp_request_decode(buf, n, &d));
    CHECK_EQ(d.flags, HSP_F_COMPRESS | HSP_F_RATE);
    CHECK_EQ(d.level, 7);
    CHECK_EQ(d.rate, 3u << 20);
    CHECK_EQ(hsp_request_decode(buf, n - 1, &d), -1);
}

TEST(refusal_reasons_have_texts_and_stay_clear_of_the_engines)
{
    for (uint32_t reason = HSP_R_BAD_REQUEST; reason <= HSP_R_LAST; reason++) {
        CHECK(hsp_refusal_known(reason));
        CHECK(strcmp(hsp_refusal_text(reason), "refused") != 0);
    }
    CHECK(hsp_refusal_known(HSP_R_TAKEOVER_DENIED));
    CHECK(strstr(hsp_refusal_text(HSP_R_TAKEOVER_DENIED), "--takeover") != NULL);
    CHECK(hsp_refusal_known(HSP_R_NO_COMPRESS));
    CHECK(strstr(hsp_refusal_text(HSP_R_NO_COMPRESS), "compressed") != NULL);
    /* The engine refuses with haul_error codes: never taken for hauld's. */
    CHECK(!hsp_refusal_known(0));
    CHECK(!hsp_refusal_known(9));
    CHECK(!hsp_refusal_known(12));
    CHECK(!hsp_refusal_known(16));
    CHECK(!hsp_refusal_known(99));
    CHECK_GT((int)HSP_R_TAKEOVER_DENIED, 64);
}

TEST(records_round_trip)
{
    uint8_t *buf = malloc(HSP_MESSAGE_MAX);
    hsp_writer w;
    hsp_writer_init(&w, buf, HSP_MESSAGE_MAX);
    hsp_entry e = {.id = 7,
                   .kind = HSP_SYMLINK,
                   .mode = 0755,
                   .uid = 1000,
                   .gid = 100,
                   .mtime_sec = 1700000000,
                   .mtime_nsec = 123456789,
                   .size = 11,
                   .path = "dir/link",
                   .path_len = 8,
                   .target = "../elsewhere",
                   .target_len = 12};
    memset(e.hash.b, 0xab, 16);
    CHECK_OK(hsp_put_entry(&w, &e));
    hsp_hash h;
    memset(h.b, 0x5a, 16);
    CHECK_OK(hsp_put_id(&w, HSP_HAVE, 8));
    CHECK_OK(hsp_put_need(&w, 9, 4096, &h));
    uint8_t *d = hsp_put_data(&w, 9, 4096, 5);
    CHECK(d != NULL);
    memcpy(d, "hello", 5);
    CHECK_OK(hsp_put_hole(&w, 9, 4101, 1 << 20));
    CHECK_OK(hsp_put_done(&w, 9, &h));
    CHECK_OK(hsp_put_skip(&w, 10, 13, "permission denied"));
    CHECK_OK(hsp_put_commit(&w, 11));
    CHECK_OK(hsp_put_text(&w, HSP_PATHS, "a/b", 3));
    CHECK_OK(hsp_put_snapinfo(&w, "home", 1700000000, 3, 4));
    CHECK_OK(hsp_put_result(&w, 0, "20261127T080000Z", 1, 2, 3, 4, "ok"));

    hsp_reader r;
    hsp_reader_init(&r, buf, w.len);
    hsp_record rec;
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_ENTRY);
    CHECK_EQ(rec.entry.id, 7);
    CHECK_EQ(rec.entry.kind, HSP_SYMLINK);
    CHECK_EQ(rec.entry.mode, 0755);
    CHECK_EQ(rec.entry.mtime_nsec, 123456789);
    CHECK(memcmp(rec.entry.path, "dir/link", 8) == 0);
    CHECK(memcmp(rec.entry.target, "../elsewhere", 12) == 0);
    CHECK(hsp_hash_equal(&rec.entry.hash, &e.hash));
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_HAVE);
    CHECK_EQ(rec.id, 8);
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_NEED);
    CHECK_EQ(rec.offset, 4096);
    CHECK(hsp_hash_equal(&rec.hash, &h));
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_DATA);
    CHECK_EQ(rec.data_len, 5);
    CHECK(memcmp(rec.data, "hello", 5) == 0);
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_HOLE);
    CHECK_EQ(rec.length, 1 << 20);
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_DONE);
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_SKIP);
    CHECK_EQ(rec.status, 13);
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_COMMIT);
    CHECK_EQ(rec.length, 11);
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_PATHS);
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_SNAPINFO);
    CHECK_STR_EQ(rec.name, "home");
    CHECK_EQ(hsp_next(&r, &rec), 1);
    CHECK_EQ(rec.type, HSP_RESULT);
    CHECK_STR_EQ(rec.snapshot, "20261127T080000Z");
    CHECK_EQ(rec.bytes_linked, 4);
    CHECK_EQ(rec.data_len, 2);
    CHECK_EQ(hsp_next(&r, &rec), 0);
    free(buf);
}

/* Every way a record can lie about itself. */
TEST(malformed_records_are_refused)
{
    uint8_t buf[256];
    hsp_writer w;
    hsp_record rec;
    hsp_reader r;

    /* A body length past the end of the message. */
    hsp_writer_init(&w, buf, sizeof(buf));
    CHECK_OK(hsp_put_id(&w, HSP_HAVE, 1));
    buf[4] = 200;
    hsp_reader_init(&r, buf, w.len);
    CHECK_EQ(hsp_next(&r, &rec), -1);

    /* A truncated header. */
    hsp_reader_init(&r, buf, 5);
    CHECK_EQ(hsp_next(&r, &rec), -1);

    /* An unknown type, and flags set. */
    hsp_writer_init(&w, buf, sizeof(buf));
    CHECK_OK(hsp_put_id(&w, HSP_HAVE, 1));
    buf[0] = 99;
    hsp_reader_init(&r, buf, w.len);
    CHECK_EQ(hsp_next(&r, &rec), -1);
    buf[0] = HSP_HAVE;
    buf[1] = 1;
    hsp_reader_init(&r, buf, w.len);
    CHECK_EQ(hsp_next(&r, &rec), -1);

    /* An entry whose path climbs out, or is absolute. */
    hsp_entry e = {.kind = HSP_FILE, .path = "../../etc/passwd", .path_len = 16};
    hsp_writer_init(&w, buf, sizeof(buf));
    CHECK_OK(hsp_put_entry(&w, &e));
    hsp_reader_init(&r, buf, w.len);
    CHECK_EQ(hsp_next(&r, &rec), -1);
    e.path = "/etc/passwd";
    e.path_len = 11;
    hsp_writer_init(&w, buf, sizeof(buf));
    CHECK_OK(hsp_put_entry(&w, &e));
    hsp_reader_init(&r, buf, w.len);
    CHECK_EQ(hsp_next(&r, &rec), -1);

    /* A hard link to a path outside the tree; a mode with type bits. */
    hsp_entry l = {
        .kind = HSP_HARDLINK, .path = "a", .path_len = 1, .target = "../x", .target_len = 4};
    hsp_writer_init(&w, buf, sizeof(buf));
    CHECK_OK(hsp_put_entry(&w, &l));
    hsp_reader_init(&r, buf, w.len);
    CHECK_EQ(hsp_next(&r, &rec), -1);
    hsp_entry m = {.kind = HSP_FILE, .mode = 0100644, .path = "a", .path_len = 1};
    hsp_writer_init(&w, buf, sizeof(buf));
    CHECK_OK(hsp_put_entry(&w, &m));
    hsp_reader_init(&r, buf, w.len);
    CHECK_EQ(hsp_next(&r, &rec), -1);

    /* A record that does not fit is refused by the writer, not cut. */
    hsp_writer_init(&w, buf, 20);
    CHECK_EQ(hsp_put_need(&w, 1, 0, NULL), -1);
    CHECK_EQ(w.len, 0);
}

/* Found by fuzz/store_fuzz: a RESULT whose three zero bytes after the
 * snapshot's length were not zero was accepted, against the format. */
TEST(result_with_reserved_bytes_set_is_refused)
{
    uint8_t buf[256];
    hsp_writer w;
    hsp_record rec;
    hsp_reader r;
    hsp_writer_init(&w, buf, sizeof(buf));
    CHECK_OK(hsp_put_result(&w, 0, "20261127T080000Z", 4, 5, 5, 0, "done"));
    hsp_reader_init(&r, buf, w.len);
    CHECK_EQ(hsp_next(&r, &rec), 1);
    for (int i = 5; i < 8; i++) {
        buf[HSP_RECORD_HDR + i] = 4;
        hsp_reader_init(&r, buf, w.len);
        CHECK_EQ(hsp_next(&r, &rec), -1);
        buf[HSP_RECORD_HDR + i] = 0;
    }
}

/* Random bytes never crash the decoder. */
TEST(random_messages_decode_or_fail_cleanly)
{
    uint8_t buf[512];
    uint64_t x = 88172645463325252ull;
    for (int round = 0; round < 20000; round++) {
        size_t n = (size_t)(x % sizeof(buf));
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = (uint8_t)x;
        }
        if (n >= 8)
            buf[0] = (uint8_t)(1 + x % 12);
        hsp_reader r;
        hsp_reader_init(&r, buf, n);
        hsp_record rec;
        int rc;
        while ((rc = hsp_next(&r, &rec)) == 1)
            ;
        CHECK(rc == 0 || rc == -1);
    }
}
