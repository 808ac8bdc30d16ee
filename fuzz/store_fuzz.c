/*
 * store_fuzz.c - libFuzzer target for the storage protocol's decoders
 * (src/proto/store.c): hsp_request_decode(), the request a session's
 * context carries, and hsp_next(), the records of every message.
 *
 * Input: one message, as a peer sends it. It is decoded both as a
 * request and as a sequence of records. Besides the sanitizers' own
 * findings, the target aborts when a decoder breaks its contract:
 *
 *   - a request it accepts has a known operation, names that are store
 *     names (no '/', no leading '.', so no ".."), a dataset unless it
 *     lists datasets or benchmarks, a snapshot for a deletion, and
 *     re-encodes to the input;
 *   - every record hsp_next() accepts lies inside the message, advances
 *     the reader by exactly its size, has safe paths (fuzz/records.h) and
 *     re-encodes to the bytes it was read from; it returns 0 only at the
 *     end of the message.
 *
 * See fuzz/README.md for how to build and run it.
 */
#define FUZZ_NAME "store_fuzz"
#include "records.h"

#include "core/le.h"

static void check_request(const uint8_t *data, size_t size)
{
    hsp_request r;
    if (hsp_request_decode(data, size, &r) != 0)
        return;
    REQUIRE(r.op >= HSP_PUSH && r.op <= HSP_DELETE);
    REQUIRE(r.dataset[0] == '\0' || name_safe(r.dataset, HSP_NAME_MAX));
    REQUIRE(r.snapshot[0] == '\0' || name_safe(r.snapshot, HSP_SNAPSHOT_MAX));
    REQUIRE(r.dataset[0] != '\0' || r.op == HSP_LIST || r.op == HSP_BENCH);
    REQUIRE(r.snapshot[0] != '\0' || r.op != HSP_DELETE);
    uint8_t again[16 + HSP_NAME_MAX + HSP_SNAPSHOT_MAX];
    size_t n = hsp_request_encode(&r, again, sizeof(again));
    REQUIRE(n == size && memcmp(again, data, size) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy of exactly the input's size, so that ASan sees any read
     * past it. */
    uint8_t *msg = malloc(size ? size : 1);
    if (msg == NULL)
        return 0;
    memcpy(msg, data, size);
    check_request(msg, size);

    hsp_reader r;
    hsp_reader_init(&r, msg, size);
    for (;;) {
        size_t at = r.pos;
        hsp_record rec;
        int rc = hsp_next(&r, &rec);
        REQUIRE(rc == 1 || rc == 0 || rc == -1);
        if (rc == 0)
            REQUIRE(at == size);
        if (rc != 1)
            break;
        REQUIRE(r.pos > at && r.pos <= size);
        REQUIRE(r.pos - at == HSP_RECORD_HDR + (size_t)haul__get32(msg + at + 4));
        check_record(&rec, msg + at, r.pos - at);
    }
    free(msg);
    return 0;
}
