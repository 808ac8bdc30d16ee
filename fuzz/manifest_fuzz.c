/*
 * manifest_fuzz.c - libFuzzer target for the reading back of hauld's
 * files of records (src/store/fs.c, fs_rec_next()): a snapshot's
 * MANIFEST and INFO, and the staging lists of a push, which a damaged
 * disk, another program or an older hauld may have left in any state.
 *
 * Input: the content of such a file. It is put in a memory file
 * (memfd_create) and read with fs_rec_reader as hauld reads it, twice:
 * with the reader's own buffer, and with a buffer of SMALL_CAP bytes, so
 * that records cross the refills of the buffer. Besides the sanitizers'
 * own findings, the target aborts when the reader breaks its contract:
 *
 *   - every record it returns is what hsp_next() accepts (fuzz/records.h:
 *     inside the buffer, safe paths, re-encodes to its bytes), and its
 *     bytes are the file's, in order, without gap;
 *   - it returns 0 only when it consumed the whole file, and fails only
 *     with EBADMSG (a memory file cannot fail to read);
 *   - the small buffer returns the same records as the large one, up to
 *     the first record that does not fit in it.
 *
 * See fuzz/README.md for how to build and run it.
 */
#define FUZZ_NAME "manifest_fuzz"
#include "records.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/le.h"
#include "store/fs.h"

/* Small enough for an ENTRY with a long path not to fit, large enough
 * for every fixed-size record. */
#define SMALL_CAP 160

static int file = -1;

/* Reads the file through a reader of `cap` bytes (0: its own); returns
 * how many records it accepted, and in *end_rc what its last call gave. */
static size_t read_all(const uint8_t *data, size_t size, size_t cap, size_t *offsets, size_t max,
                       int *end_rc)
{
    int fd = dup(file);
    if (fd < 0 || lseek(fd, 0, SEEK_SET) != 0)
        abort();
    /* As fs_rec_reader_init() sets it up, but with a buffer of our
     * choosing: the reader's own size is allocated once, since a fresh
     * 256 KiB per run would cost more than the reading. Each buffer is a
     * heap block of exactly its size, so ASan still sees any access past
     * it. */
    static uint8_t *own;
    static size_t own_cap;
    if (own == NULL) {
        fs_rec_reader first;
        if (fs_rec_reader_init(&first, -1) < 0)
            abort();
        own = first.buf;
        own_cap = first.cap;
    }
    fs_rec_reader rd;
    memset(&rd, 0, sizeof(rd));
    if (cap == 0) {
        rd.buf = own;
        rd.cap = own_cap;
    } else {
        if ((rd.buf = malloc(cap)) == NULL)
            abort();
        rd.cap = cap;
    }
    rd.fd = fd;
    size_t count = 0, consumed = 0;
    for (;;) {
        hsp_record rec;
        errno = 0;
        int rc = fs_rec_next(&rd, &rec);
        REQUIRE(rc == 1 || rc == 0 || rc == -1);
        if (rc != 1) {
            if (rc == 0)
                REQUIRE(consumed == size);
            else
                REQUIRE(errno == EBADMSG);
            *end_rc = rc;
            break;
        }
        /* What the reader consumed of the file: the record is its last
         * bytes, at the start of what the buffer still holds. */
        size_t now = (size_t)rd.offset - (rd.end - rd.start);
        REQUIRE(now > consumed && now <= size);
        size_t len = now - consumed;
        REQUIRE(len == HSP_RECORD_HDR + (size_t)haul__get32(data + consumed + 4));
        REQUIRE(rd.start >= len);
        const uint8_t *raw = rd.buf + rd.start - len;
        REQUIRE(memcmp(raw, data + consumed, len) == 0);
        check_record(&rec, raw, len);
        if (count < max)
            offsets[count] = now;
        count++;
        consumed = now;
    }
    if (rd.buf == own)
        rd.buf = NULL; /* kept for the next run */
    fs_rec_reader_fini(&rd);
    return count;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (file < 0 && (file = memfd_create("manifest_fuzz", MFD_CLOEXEC)) < 0)
        abort();
    if (ftruncate(file, 0) != 0 || (size && pwrite(file, data, size, 0) != (ssize_t)size))
        abort();

    size_t max = size / HSP_RECORD_HDR + 1;
    size_t *big = malloc(max * sizeof(*big)), *small = malloc(max * sizeof(*small));
    if (big == NULL || small == NULL)
        abort();
    int big_rc, small_rc;
    size_t nbig = read_all(data, size, 0, big, max, &big_rc);
    size_t nsmall = read_all(data, size, SMALL_CAP, small, max, &small_rc);
    /* The small buffer sees the same records, and stops early only at
     * one too large for it. */
    REQUIRE(nsmall <= nbig);
    for (size_t i = 0; i < nsmall; i++)
        REQUIRE(small[i] == big[i]);
    if (nsmall < nbig || small_rc != big_rc) {
        size_t at = nsmall ? small[nsmall - 1] : 0;
        REQUIRE(small_rc == -1);
        REQUIRE(size - at >= HSP_RECORD_HDR);
        REQUIRE(haul__get32(data + at + 4) > SMALL_CAP - HSP_RECORD_HDR);
    }
    free(big);
    free(small);
    return 0;
}
