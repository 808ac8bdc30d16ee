/*
 * store.c - encoding and checking of the storage protocol's requests and
 * records. Every length is checked against what is left of the message
 * before it is used.
 */
#include "proto/store.h"

#include "core/le.h"

#include <stdio.h>
#include <string.h>

const char *hsp_refusal_text(uint32_t reason)
{
    switch (reason) {
    case HSP_R_BAD_REQUEST:
        return "the server did not understand the request";
    case HSP_R_NO_DATASET:
        return "no such dataset";
    case HSP_R_NO_SNAPSHOT:
        return "no such snapshot";
    case HSP_R_BUSY:
        return "another push to this dataset is running";
    case HSP_R_DENIED:
        return "not allowed for this principal";
    case HSP_R_SERVER_ERROR:
        return "the server failed (see its log)";
    case HSP_R_SHUTTING_DOWN:
        return "the server is shutting down";
    case HSP_R_LIMIT:
        return "this principal has as many sessions as it may have at once";
    case HSP_R_TAKEOVER_DENIED:
        return "another principal's push to this dataset is running, and --takeover ends "
               "only a push of the same principal";
    case HSP_R_NO_COMPRESS:
        return "the server has no memory to expand one more compressed push now";
    }
    return "refused";
}

int hsp_refusal_known(uint32_t reason)
{
    return (reason >= HSP_R_BAD_REQUEST && reason <= HSP_R_LAST) ||
           reason == HSP_R_TAKEOVER_DENIED || reason == HSP_R_NO_COMPRESS;
}

/* ---- names and paths ------------------------------------------------------ */

int hsp_name_ok(const char *name, size_t len, size_t max)
{
    if (len == 0 || len > max || name[0] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int hsp_path_ok(const char *path, size_t len)
{
    if (len == 0 || len > HSP_PATH_MAX || path[0] == '/')
        return 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && path[i] == '\0')
            return 0;
        if (i == len || path[i] == '/') {
            size_t n = i - start;
            if (n == 0 || n > HSP_NAME_MAX)
                return 0;
            if (n == 1 && path[start] == '.')
                return 0;
            if (n == 2 && path[start] == '.' && path[start + 1] == '.')
                return 0;
            start = i + 1;
        }
    }
    return 1;
}

/* ---- requests ---------------------------------------------------------------- */

size_t hsp_request_encode(const hsp_request *r, uint8_t *buf, size_t size)
{
    size_t d = strlen(r->dataset), s = strlen(r->snapshot);
    /* Values of flags follow the names, in the order of their bits:
     * COMPRESS's level (1 byte), then RATE's rate (8 bytes). */
    size_t n = HSP_MAGIC_LEN + 4 + 2 + d + s;
    size_t level_at = n;
    if (r->flags & HSP_F_COMPRESS)
        n += 1;
    size_t rate_at = n;
    if (r->flags & HSP_F_RATE)
        n += 8;
    if (n > size)
        return 0;
    if (r->flags & HSP_F_COMPRESS)
        buf[level_at] = (uint8_t)r->level;
    if (r->flags & HSP_F_RATE)
        haul__put64(buf + rate_at, r->rate);
    memcpy(buf, HSP_MAGIC, HSP_MAGIC_LEN);
    buf[4] = (uint8_t)r->op;
    buf[5] = (uint8_t)r->flags;
    haul__put16(buf + 6, (uint16_t)d);
    haul__put16(buf + 8, (uint16_t)s);
    memcpy(buf + 10, r->dataset, d);
    memcpy(buf + 10 + d, r->snapshot, s);
    return n;
}

int hsp_request_decode(const void *data, size_t len, hsp_request *r)
{
    const uint8_t *buf = data;
    memset(r, 0, sizeof(*r));
    if (len < 10 || memcmp(buf, HSP_MAGIC, HSP_MAGIC_LEN) != 0)
        return -1;
    r->op = buf[4];
    r->flags = buf[5];
    if (r->op < HSP_PUSH || r->op > HSP_DELETE)
        return -1;
    /* A flag this side does not know, or one the op does not take, is a
     * request it cannot serve as asked. */
    if ((r->flags & ~(unsigned)HSP_F_ALL) != 0)
        return -1;
    if ((r->flags & HSP_F_TAKEOVER) && r->op != HSP_PUSH)
        return -1;
    if ((r->flags & HSP_F_COMPRESS) && r->op != HSP_PUSH && r->op != HSP_PULL)
        return -1;
    if ((r->flags & HSP_F_RATE) && r->op != HSP_PULL)
        return -1;
    size_t d = haul__get16(buf + 6), s = haul__get16(buf + 8);
    /* Values of flags follow the names: COMPRESS's level (1 byte), then
     * RATE's rate (8 bytes). */
    size_t at = 10 + d + s;
    size_t extra = ((r->flags & HSP_F_COMPRESS) ? 1 : 0) + ((r->flags & HSP_F_RATE) ? 8 : 0);
    if (at + extra != len || d > HSP_NAME_MAX || s > HSP_SNAPSHOT_MAX)
        return -1;
    if (r->flags & HSP_F_COMPRESS) {
        r->level = buf[at++];
        if (r->level < 1 || r->level > 19)
            return -1;
    }
    if (r->flags & HSP_F_RATE) {
        r->rate = haul__get64(buf + at);
        /* No limit is said by leaving the flag out. */
        if (r->rate == 0)
            return -1;
    }
    if (d && !hsp_name_ok((const char *)buf + 10, d, HSP_NAME_MAX))
        return -1;
    if (s && !hsp_name_ok((const char *)buf + 10 + d, s, HSP_SNAPSHOT_MAX))
        return -1;
    memcpy(r->dataset, buf + 10, d);
    memcpy(r->snapshot, buf + 10 + d, s);
    /* Every request but a listing of all datasets and a benchmark names
     * its dataset. */
    if (d == 0 && r->op != HSP_LIST && r->op != HSP_BENCH)
        return -1;
    /* A deletion names the one snapshot it removes: never "the latest". */
    if (s == 0 && r->op == HSP_DELETE)
        return -1;
    return 0;
}

/* ---- writing records ------------------------------------------------------------ */

void hsp_writer_init(hsp_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->len = 0;
    w->cap = cap;
}

int hsp_writer_fits(const hsp_writer *w, size_t body)
{
    return w->len + HSP_RECORD_HDR + body <= w->cap;
}

/* Starts a record of `body` bytes; returns where its body goes. */
static uint8_t *start(hsp_writer *w, int type, size_t body)
{
    if (!hsp_writer_fits(w, body) || body > UINT32_MAX)
        return NULL;
    uint8_t *p = w->buf + w->len;
    p[0] = (uint8_t)type;
    p[1] = 0;
    haul__put16(p + 2, 0);
    haul__put32(p + 4, (uint32_t)body);
    w->len += HSP_RECORD_HDR + body;
    return p + HSP_RECORD_HDR;
}

#define ENTRY_FIXED 64

int hsp_put_entry(hsp_writer *w, const hsp_entry *e)
{
    uint8_t *p = start(w, HSP_ENTRY, ENTRY_FIXED + (size_t)e->path_len + e->target_len);
    if (p == NULL)
        return -1;
    haul__put64(p, e->id);
    p[8] = (uint8_t)e->kind;
    p[9] = 0;
    haul__put16(p + 10, e->path_len);
    haul__put32(p + 12, e->mode);
    haul__put32(p + 16, e->uid);
    haul__put32(p + 20, e->gid);
    haul__put64(p + 24, (uint64_t)e->mtime_sec);
    haul__put32(p + 32, e->mtime_nsec);
    haul__put64(p + 36, e->size);
    haul__put16(p + 44, e->target_len);
    haul__put16(p + 46, 0);
    memcpy(p + 48, e->hash.b, 16);
    memcpy(p + ENTRY_FIXED, e->path, e->path_len);
    if (e->target_len)
        memcpy(p + ENTRY_FIXED + e->path_len, e->target, e->target_len);
    return 0;
}

int hsp_put_id(hsp_writer *w, int type, uint64_t id)
{
    uint8_t *p = start(w, type, 8);
    if (p == NULL)
        return -1;
    haul__put64(p, id);
    return 0;
}

int hsp_put_need(hsp_writer *w, uint64_t id, uint64_t from, const hsp_hash *prefix)
{
    uint8_t *p = start(w, HSP_NEED, 32);
    if (p == NULL)
        return -1;
    haul__put64(p, id);
    haul__put64(p + 8, from);
    if (prefix)
        memcpy(p + 16, prefix->b, 16);
    else
        memset(p + 16, 0, 16);
    return 0;
}

uint8_t *hsp_put_data(hsp_writer *w, uint64_t id, uint64_t offset, uint32_t len)
{
    uint8_t *p = start(w, HSP_DATA, 16 + (size_t)len);
    if (p == NULL)
        return NULL;
    haul__put64(p, id);
    haul__put64(p + 8, offset);
    return p + 16;
}

int hsp_put_hole(hsp_writer *w, uint64_t id, uint64_t offset, uint64_t len)
{
    uint8_t *p = start(w, HSP_HOLE, 24);
    if (p == NULL)
        return -1;
    haul__put64(p, id);
    haul__put64(p + 8, offset);
    haul__put64(p + 16, len);
    return 0;
}

int hsp_put_done(hsp_writer *w, uint64_t id, const hsp_hash *hash)
{
    uint8_t *p = start(w, HSP_DONE, 24);
    if (p == NULL)
        return -1;
    haul__put64(p, id);
    memcpy(p + 8, hash->b, 16);
    return 0;
}

int hsp_put_skip(hsp_writer *w, uint64_t id, int32_t err, const char *text)
{
    size_t n = strlen(text);
    uint8_t *p = start(w, HSP_SKIP, 12 + n);
    if (p == NULL)
        return -1;
    haul__put64(p, id);
    haul__put32(p + 8, (uint32_t)err);
    memcpy(p + 12, text, n);
    return 0;
}

int hsp_put_commit(hsp_writer *w, uint64_t entries)
{
    uint8_t *p = start(w, HSP_COMMIT, 8);
    if (p == NULL)
        return -1;
    haul__put64(p, entries);
    return 0;
}

int hsp_put_result(hsp_writer *w, int32_t status, const char *snapshot, uint64_t files,
                   uint64_t bytes, uint64_t bytes_sent, uint64_t bytes_linked, const char *text)
{
    size_t s = snapshot ? strlen(snapshot) : 0, t = text ? strlen(text) : 0;
    if (s > HSP_SNAPSHOT_MAX)
        return -1;
    uint8_t *p = start(w, HSP_RESULT, 40 + s + t);
    if (p == NULL)
        return -1;
    haul__put32(p, (uint32_t)status);
    p[4] = (uint8_t)s;
    p[5] = p[6] = p[7] = 0;
    haul__put64(p + 8, files);
    haul__put64(p + 16, bytes);
    haul__put64(p + 24, bytes_sent);
    haul__put64(p + 32, bytes_linked);
    /* memcpy() from NULL is undefined even for 0 bytes, and a RESULT of a
     * failure has no snapshot. */
    if (s)
        memcpy(p + 40, snapshot, s);
    if (t)
        memcpy(p + 40 + s, text, t);
    return 0;
}

int hsp_put_text(hsp_writer *w, int type, const char *text, size_t len)
{
    uint8_t *p = start(w, type, len);
    if (p == NULL)
        return -1;
    if (len)
        memcpy(p, text, len);
    return 0;
}

int hsp_put_snapinfo(hsp_writer *w, const char *name, int64_t time, uint64_t files, uint64_t bytes)
{
    size_t n = strlen(name);
    uint8_t *p = start(w, HSP_SNAPINFO, 24 + n);
    if (p == NULL)
        return -1;
    haul__put64(p, (uint64_t)time);
    haul__put64(p + 8, files);
    haul__put64(p + 16, bytes);
    memcpy(p + 24, name, n);
    return 0;
}

/* ---- reading records ---------------------------------------------------------------- */

void hsp_reader_init(hsp_reader *r, const void *buf, size_t len)
{
    r->buf = buf;
    r->len = len;
    r->pos = 0;
}

int hsp_next(hsp_reader *r, hsp_record *rec)
{
    if (r->pos == r->len)
        return 0;
    if (r->len - r->pos < HSP_RECORD_HDR)
        return -1;
    const uint8_t *h = r->buf + r->pos;
    uint32_t n = haul__get32(h + 4);
    if (h[1] != 0 || haul__get16(h + 2) != 0 || n > r->len - r->pos - HSP_RECORD_HDR)
        return -1;
    const uint8_t *p = h + HSP_RECORD_HDR;
    r->pos += HSP_RECORD_HDR + n;
    memset(rec, 0, sizeof(*rec));
    rec->type = h[0];
    switch (rec->type) {
    case HSP_ENTRY: {
        if (n < ENTRY_FIXED)
            return -1;
        hsp_entry *e = &rec->entry;
        e->id = haul__get64(p);
        e->kind = p[8];
        e->path_len = haul__get16(p + 10);
        e->mode = haul__get32(p + 12);
        e->uid = haul__get32(p + 16);
        e->gid = haul__get32(p + 20);
        e->mtime_sec = (int64_t)haul__get64(p + 24);
        e->mtime_nsec = haul__get32(p + 32);
        e->size = haul__get64(p + 36);
        e->target_len = haul__get16(p + 44);
        memcpy(e->hash.b, p + 48, 16);
        if (p[9] != 0 || haul__get16(p + 46) != 0)
            return -1;
        if ((size_t)ENTRY_FIXED + e->path_len + e->target_len != n)
            return -1;
        if (e->kind < HSP_FILE || e->kind > HSP_HARDLINK || (e->mode & ~07777u) ||
            e->mtime_nsec >= 1000000000u)
            return -1;
        e->path = (const char *)p + ENTRY_FIXED;
        e->target = (const char *)p + ENTRY_FIXED + e->path_len;
        if (!hsp_path_ok(e->path, e->path_len))
            return -1;
        /* A symlink's target is stored as it is, never followed by the
         * server; a hard link names an earlier entry of the same tree. */
        if (e->kind == HSP_SYMLINK &&
            (e->target_len == 0 || memchr(e->target, '\0', e->target_len)))
            return -1;
        if (e->kind == HSP_HARDLINK && !hsp_path_ok(e->target, e->target_len))
            return -1;
        if ((e->kind == HSP_FILE || e->kind == HSP_DIR) && e->target_len != 0)
            return -1;
        return 1;
    }
    case HSP_HAVE:
    case HSP_COMMIT:
        if (n != 8)
            return -1;
        rec->id = haul__get64(p);
        rec->length = haul__get64(p);
        return 1;
    case HSP_NEED:
        if (n != 32)
            return -1;
        rec->id = haul__get64(p);
        rec->offset = haul__get64(p + 8);
        memcpy(rec->hash.b, p + 16, 16);
        return 1;
    case HSP_DATA:
        if (n < 16)
            return -1;
        rec->id = haul__get64(p);
        rec->offset = haul__get64(p + 8);
        rec->data = p + 16;
        rec->data_len = n - 16;
        if (rec->offset > UINT64_MAX - rec->data_len)
            return -1;
        return 1;
    case HSP_HOLE:
        if (n != 24)
            return -1;
        rec->id = haul__get64(p);
        rec->offset = haul__get64(p + 8);
        rec->length = haul__get64(p + 16);
        if (rec->offset > UINT64_MAX - rec->length)
            return -1;
        return 1;
    case HSP_DONE:
        if (n != 24)
            return -1;
        rec->id = haul__get64(p);
        memcpy(rec->hash.b, p + 8, 16);
        return 1;
    case HSP_SKIP:
        if (n < 12)
            return -1;
        rec->id = haul__get64(p);
        rec->status = (int32_t)haul__get32(p + 8);
        rec->data = p + 12;
        rec->data_len = n - 12;
        return 1;
    case HSP_RESULT: {
        if (n < 40 || p[4] > HSP_SNAPSHOT_MAX || 40u + p[4] > n || p[5] || p[6] || p[7])
            return -1;
        rec->status = (int32_t)haul__get32(p);
        rec->files = haul__get64(p + 8);
        rec->bytes = haul__get64(p + 16);
        rec->bytes_sent = haul__get64(p + 24);
        rec->bytes_linked = haul__get64(p + 32);
        memcpy(rec->snapshot, p + 40, p[4]);
        rec->snapshot[p[4]] = '\0';
        if (p[4] && !hsp_name_ok(rec->snapshot, p[4], HSP_SNAPSHOT_MAX))
            return -1;
        rec->data = p + 40 + p[4];
        rec->data_len = n - 40 - p[4];
        return 1;
    }
    case HSP_PATHS:
        rec->data = p;
        rec->data_len = n;
        return hsp_path_ok((const char *)p, n) ? 1 : -1;
    case HSP_PROBLEM:
        rec->data = p;
        rec->data_len = n;
        return 1;
    case HSP_SNAPINFO:
        if (n < 25 || n - 24 > HSP_NAME_MAX)
            return -1;
        rec->time = (int64_t)haul__get64(p);
        rec->files = haul__get64(p + 8);
        rec->bytes = haul__get64(p + 16);
        memcpy(rec->name, p + 24, n - 24);
        rec->name[n - 24] = '\0';
        if (!hsp_name_ok((const char *)p + 24, n - 24, HSP_NAME_MAX))
            return -1;
        return 1;
    default:
        return -1;
    }
}

/* ---- hashes ---------------------------------------------------------------- */

void hsp_hash_hex(const hsp_hash *h, char out[33])
{
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", h->b[i]);
}

int hsp_hash_equal(const hsp_hash *a, const hsp_hash *b)
{
    return memcmp(a->b, b->b, 16) == 0;
}

void hsp_hash_zeros(XXH3_state_t *st, uint64_t len)
{
    static const uint8_t zeros[64 << 10];
    while (len > 0) {
        size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
        XXH3_128bits_update(st, zeros, n);
        len -= n;
    }
}

void hsp_hash_digest(XXH3_state_t *st, hsp_hash *out)
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
    memcpy(out->b, c.digest, sizeof(out->b));
}

void hsp_path_text(const char *path, size_t len, char *out, size_t size)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (size == 0)
        return;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)path[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            if (o + 1 >= size)
                break;
            out[o++] = (char)c;
        } else {
            if (o + 4 >= size)
                break;
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
}
