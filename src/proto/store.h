/*
 * store.h - the storage protocol that haul and hauld speak over libhaul
 * sessions (docs/store-protocol.md).
 *
 * A session carries one request, named in the session's context: push a
 * tree as a new snapshot, pull a snapshot, list, verify, or measure. Its
 * messages carry records: an 8-byte header (type, flags, body length)
 * and a body. A message holds whole records only.
 *
 * This module is the codec and the checks of names and paths; both
 * programs use it, and neither trusts what it decodes beyond what is
 * checked here.
 */
#ifndef HAUL_PROTO_STORE_H
#define HAUL_PROTO_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <xxhash.h>

#define HSP_MAGIC "HSP1"
#define HSP_MAGIC_LEN 4

/* Data of a file travels in blocks of this size: one DATA record, one
 * message. */
#define HSP_BLOCK (1u << 20)
/* A message holds at most this much: a block plus record headers. */
#define HSP_MESSAGE_MAX (HSP_BLOCK + 4096u)
/* Entries are batched into messages of about this size. */
#define HSP_BATCH (256u << 10)

#define HSP_PATH_MAX 4096
#define HSP_NAME_MAX 255
#define HSP_SNAPSHOT_MAX 64

/* Requests, named by the session context. */
enum hsp_op {
    HSP_PUSH = 1,
    HSP_PULL = 2,
    HSP_LIST = 3,
    HSP_VERIFY = 4,
    HSP_BENCH = 5,
    HSP_DELETE = 6, /* remove one snapshot (needs the delete right) */
};

/* Request flags. */
enum hsp_flag {
    /* PUSH: end the running push of the dataset even if its client still
     * looks connected (haul push --takeover). hauld grants it only to a
     * push of the same principal as the running one. */
    HSP_F_TAKEOVER = 1u << 0,
    /* PUSH, PULL: the client sends (push) or takes (pull) messages
     * compressed with zstd (proto/compress.h). A server that accepts the
     * session knows the flag and accepts compressed messages; one that
     * does not know it refuses the session with BAD_REQUEST. */
    HSP_F_COMPRESS = 1u << 1,
    /* PULL: send at most `rate` bytes of message payload a second (haul
     * pull --bwlimit); the rate, u64 LE and not 0, follows the names and
     * COMPRESS's level byte. */
    HSP_F_RATE = 1u << 2,
};
#define HSP_F_ALL (HSP_F_TAKEOVER | HSP_F_COMPRESS | HSP_F_RATE)

typedef struct hsp_request {
    int op;
    unsigned flags;                      /* enum hsp_flag */
    uint64_t rate;                       /* HSP_F_RATE: bytes per second */
    char dataset[HSP_NAME_MAX + 1];      /* "" for LIST of all datasets, BENCH */
    char snapshot[HSP_SNAPSHOT_MAX + 1]; /* "" for the latest */
    /* With HSP_F_COMPRESS: the zstd level the client asks for, 1..19
     * (one byte after the names); the level of what a pull's server
     * sends, within the server's own bound. */
    int level;
} hsp_request;

/* Reason codes of a refused session (haul_session_reject). The server's
 * engine refuses some sessions by itself, with the haul_error codes
 * HAUL_EREFUSED (9), HAUL_EPROTO (12) and HAUL_ELIMIT (16): these values
 * stay below 9. */
enum hsp_refusal {
    HSP_R_BAD_REQUEST = 1,
    HSP_R_NO_DATASET = 2,
    HSP_R_NO_SNAPSHOT = 3,
    HSP_R_BUSY = 4, /* a push to the dataset is running */
    HSP_R_DENIED = 5,
    HSP_R_SERVER_ERROR = 6,
    HSP_R_SHUTTING_DOWN = 7,
    HSP_R_LIMIT = 8, /* the principal has as many sessions as it may */
    HSP_R_LAST = HSP_R_LIMIT,
    /* PUSH with HSP_F_TAKEOVER: the running push is another principal's,
     * which only that principal may end. Beyond every haul_error code,
     * which the server's engine may refuse with. */
    HSP_R_TAKEOVER_DENIED = 100,
    /* PUSH with HSP_F_COMPRESS: the server's memory budget has no room
     * for one more expanding stream now; the same push uncompressed may
     * be served. */
    HSP_R_NO_COMPRESS = 101,
};
/* A reason hauld refuses with (not the engine's own)? */
int hsp_refusal_known(uint32_t reason);
const char *hsp_refusal_text(uint32_t reason);

/* Record types. */
enum hsp_type {
    HSP_ENTRY = 1,     /* an entry of the tree (both ways) */
    HSP_HAVE = 2,      /* server: the file's content is there already */
    HSP_NEED = 3,      /* server: send the file's content from an offset */
    HSP_DATA = 4,      /* bytes of a file at an offset */
    HSP_HOLE = 5,      /* zeros of a sparse file at an offset */
    HSP_DONE = 6,      /* a file's content is complete; its XXH3-128 */
    HSP_SKIP = 7,      /* client: a file could not be read; left out */
    HSP_COMMIT = 8,    /* client: every entry was sent */
    HSP_RESULT = 9,    /* the request's outcome; the last record */
    HSP_PATHS = 10,    /* client, pull: the paths wanted */
    HSP_PROBLEM = 11,  /* verify or push: one thing wrong, for the report */
    HSP_SNAPINFO = 12, /* list: one dataset or snapshot */
    HSP_ZSTD = 13,     /* a compressed message (proto/compress.h); never read by hsp_next */
};

enum hsp_kind { HSP_FILE = 1, HSP_DIR = 2, HSP_SYMLINK = 3, HSP_HARDLINK = 4 };

#define HSP_RECORD_HDR 8

typedef struct hsp_hash {
    uint8_t b[16]; /* XXH3-128, canonical (big-endian) form */
} hsp_hash;

/* ENTRY. path and target point into the decoded message. */
typedef struct hsp_entry {
    uint64_t id;
    int kind;
    uint32_t mode; /* permission bits, 07777 */
    uint32_t uid, gid;
    int64_t mtime_sec;
    uint32_t mtime_nsec;
    uint64_t size;    /* FILE: bytes */
    hsp_hash hash;    /* FILE: XXH3-128 of the content (zeros when unknown) */
    const char *path; /* not NUL-terminated: path_len bytes */
    uint16_t path_len;
    const char *target; /* SYMLINK: target; HARDLINK: path of the earlier entry */
    uint16_t target_len;
} hsp_entry;

/* A decoded record; which fields are set depends on the type. */
typedef struct hsp_record {
    int type;
    hsp_entry entry;     /* ENTRY */
    uint64_t id;         /* HAVE NEED DATA HOLE DONE SKIP */
    uint64_t offset;     /* NEED (from), DATA, HOLE */
    uint64_t length;     /* HOLE; COMMIT: entries sent */
    hsp_hash hash;       /* NEED: of the prefix [0, offset); DONE */
    const uint8_t *data; /* DATA bytes; SKIP, PROBLEM, RESULT: text */
    uint32_t data_len;
    int32_t status;                                  /* RESULT: 0 or an error; SKIP: errno */
    char snapshot[HSP_SNAPSHOT_MAX + 1];             /* RESULT, SNAPINFO */
    uint64_t files, bytes, bytes_sent, bytes_linked; /* RESULT, SNAPINFO */
    int64_t time;                                    /* SNAPINFO: commit time, seconds */
    char name[HSP_NAME_MAX + 1];                     /* SNAPINFO: a dataset or a snapshot */
} hsp_record;

/* ---- requests ---------------------------------------------------------- */

/* Encodes a request into buf (at least 4 + 4 + names + 1); returns its
 * length, 0 when it does not fit. */
size_t hsp_request_encode(const hsp_request *r, uint8_t *buf, size_t size);
/* Decodes and checks a request; returns 0 or -1. */
int hsp_request_decode(const void *buf, size_t len, hsp_request *r);

/* ---- names and paths ------------------------------------------------------ */

/* A dataset or principal name: 1..255 of [A-Za-z0-9._-], not starting with
 * '.'. A snapshot id: 1..64 of [A-Za-z0-9._-], not starting with '.'. */
int hsp_name_ok(const char *name, size_t len, size_t max);

/*
 * A path inside a tree: relative, 1..4096 bytes, components separated by
 * single '/', none empty, "." or "..", none over 255 bytes, no NUL byte.
 * Any other byte is allowed: names are bytes, not text.
 */
int hsp_path_ok(const char *path, size_t len);

/* ---- records ---------------------------------------------------------------- */

/* A message under construction. */
typedef struct hsp_writer {
    uint8_t *buf;
    size_t len, cap;
} hsp_writer;

void hsp_writer_init(hsp_writer *w, uint8_t *buf, size_t cap);
/* Room left for a record body of n bytes? */
int hsp_writer_fits(const hsp_writer *w, size_t body);

/* Each returns 0, or -1 when the record does not fit. */
int hsp_put_entry(hsp_writer *w, const hsp_entry *e);
int hsp_put_id(hsp_writer *w, int type, uint64_t id); /* HAVE */
int hsp_put_need(hsp_writer *w, uint64_t id, uint64_t from, const hsp_hash *prefix);
/* DATA: the header only, with room for len bytes that the caller copies to
 * the returned pointer (or NULL when it does not fit). */
uint8_t *hsp_put_data(hsp_writer *w, uint64_t id, uint64_t offset, uint32_t len);
int hsp_put_hole(hsp_writer *w, uint64_t id, uint64_t offset, uint64_t len);
int hsp_put_done(hsp_writer *w, uint64_t id, const hsp_hash *hash);
int hsp_put_skip(hsp_writer *w, uint64_t id, int32_t err, const char *text);
int hsp_put_commit(hsp_writer *w, uint64_t entries);
int hsp_put_result(hsp_writer *w, int32_t status, const char *snapshot, uint64_t files,
                   uint64_t bytes, uint64_t bytes_sent, uint64_t bytes_linked, const char *text);
int hsp_put_text(hsp_writer *w, int type, const char *text, size_t len); /* PATHS, PROBLEM */
int hsp_put_snapinfo(hsp_writer *w, const char *name, int64_t time, uint64_t files, uint64_t bytes);

/* A message being read. */
typedef struct hsp_reader {
    const uint8_t *buf;
    size_t len, pos;
} hsp_reader;

void hsp_reader_init(hsp_reader *r, const void *buf, size_t len);
/* Decodes the next record: 1 when there was one, 0 at the end of the
 * message, -1 when the message is malformed (the peer is broken or
 * hostile: end the session). Paths are checked with hsp_path_ok. */
int hsp_next(hsp_reader *r, hsp_record *rec);

/* ---- hashes ---------------------------------------------------------------- */

void hsp_hash_hex(const hsp_hash *h, char out[33]);
int hsp_hash_equal(const hsp_hash *a, const hsp_hash *b);
/* The canonical form of st's digest. */
void hsp_hash_digest(XXH3_state_t *st, hsp_hash *out);
/* Feeds len zero bytes into st (a hole). */
void hsp_hash_zeros(XXH3_state_t *st, uint64_t len);

/* ---- text ---------------------------------------------------------------------- */

/* Writes a path (bytes) as printable text for logs and messages: bytes
 * outside printable ASCII and the backslash as \xNN. Truncated to fit. */
void hsp_path_text(const char *path, size_t len, char *out, size_t size);

#endif
