/*
 * records.h - what the fuzz targets of the storage protocol's records
 * (store_fuzz, manifest_fuzz) check of every record hsp_next() accepts:
 * it lies inside the input, every path in it is safe to use below a
 * directory, and it re-encodes to the bytes it was read from.
 */
#ifndef HAUL_FUZZ_RECORDS_H
#define HAUL_FUZZ_RECORDS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/store.h"

#ifndef FUZZ_NAME
#error "define FUZZ_NAME to the target's name before including records.h"
#endif

static void fail(const char *what)
{
    fprintf(stderr, FUZZ_NAME ": %s\n", what);
    abort();
}

#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail("contract broken: " #cond);                                                       \
    } while (0)

/* A path that cannot lead out of the directory it is used below,
 * restated independently of hsp_path_ok(): relative, 1..HSP_PATH_MAX
 * bytes, no NUL, no empty, "." or ".." component, none over
 * HSP_NAME_MAX. */
static int path_safe(const char *p, size_t len)
{
    if (len == 0 || len > HSP_PATH_MAX || p[0] == '/' || memchr(p, '\0', len))
        return 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && p[i] != '/')
            continue;
        size_t n = i - start;
        if (n == 0 || n > HSP_NAME_MAX || (n == 1 && p[start] == '.') ||
            (n == 2 && p[start] == '.' && p[start + 1] == '.'))
            return 0;
        start = i + 1;
    }
    return 1;
}

/* A name of the store ([A-Za-z0-9._-], not starting with '.'). */
static int name_safe(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", s[i]) ==
            NULL)
            return 0;
    return 1;
}

static int inside(const void *p, size_t n, const uint8_t *raw, size_t rawlen)
{
    const uint8_t *q = p;
    return n == 0 || (q >= raw && q <= raw + rawlen && n <= (size_t)(raw + rawlen - q));
}

/* Checks a record hsp_next() accepted from the rawlen bytes at raw (its
 * header included). */
static void check_record(const hsp_record *rec, const uint8_t *raw, size_t rawlen)
{
    REQUIRE(rawlen >= HSP_RECORD_HDR);
    uint8_t *buf = malloc(rawlen);
    if (buf == NULL)
        return;
    hsp_writer w;
    hsp_writer_init(&w, buf, rawlen);
    int put = 0;
    switch (rec->type) {
    case HSP_ENTRY: {
        const hsp_entry *e = &rec->entry;
        REQUIRE(e->kind >= HSP_FILE && e->kind <= HSP_HARDLINK);
        REQUIRE((e->mode & ~07777u) == 0 && e->mtime_nsec < 1000000000u);
        REQUIRE(inside(e->path, e->path_len, raw, rawlen));
        REQUIRE(inside(e->target, e->target_len, raw, rawlen));
        REQUIRE(path_safe(e->path, e->path_len));
        if (e->kind == HSP_HARDLINK)
            REQUIRE(path_safe(e->target, e->target_len));
        else if (e->kind == HSP_SYMLINK)
            REQUIRE(e->target_len > 0 && memchr(e->target, '\0', e->target_len) == NULL);
        else
            REQUIRE(e->target_len == 0);
        put = hsp_put_entry(&w, e);
        break;
    }
    case HSP_HAVE:
        put = hsp_put_id(&w, HSP_HAVE, rec->id);
        break;
    case HSP_COMMIT:
        put = hsp_put_commit(&w, rec->length);
        break;
    case HSP_NEED:
        put = hsp_put_need(&w, rec->id, rec->offset, &rec->hash);
        break;
    case HSP_DATA: {
        REQUIRE(inside(rec->data, rec->data_len, raw, rawlen));
        REQUIRE(rec->offset <= UINT64_MAX - rec->data_len);
        uint8_t *p = hsp_put_data(&w, rec->id, rec->offset, rec->data_len);
        put = p ? 0 : -1;
        if (p && rec->data_len)
            memcpy(p, rec->data, rec->data_len);
        break;
    }
    case HSP_HOLE:
        REQUIRE(rec->offset <= UINT64_MAX - rec->length);
        put = hsp_put_hole(&w, rec->id, rec->offset, rec->length);
        break;
    case HSP_DONE:
        put = hsp_put_done(&w, rec->id, &rec->hash);
        break;
    case HSP_SKIP:
    case HSP_RESULT:
    case HSP_PROBLEM: {
        REQUIRE(inside(rec->data, rec->data_len, raw, rawlen));
        /* The encoders take the text as a C string: texts with a NUL
         * are re-encoded by hand below. */
        char *text = malloc((size_t)rec->data_len + 1);
        if (text == NULL)
            break;
        if (rec->data_len)
            memcpy(text, rec->data, rec->data_len);
        text[rec->data_len] = '\0';
        int plain = strlen(text) == rec->data_len;
        if (rec->type == HSP_SKIP && plain) {
            put = hsp_put_skip(&w, rec->id, rec->status, text);
        } else if (rec->type == HSP_RESULT) {
            REQUIRE(rec->snapshot[0] == '\0' || name_safe(rec->snapshot, HSP_SNAPSHOT_MAX));
            if (plain)
                put = hsp_put_result(&w, rec->status, rec->snapshot, rec->files, rec->bytes,
                                     rec->bytes_sent, rec->bytes_linked, text);
            else
                put = 1;
        } else if (rec->type == HSP_PROBLEM) {
            put = hsp_put_text(&w, HSP_PROBLEM, text, rec->data_len);
        } else {
            put = 1;
        }
        free(text);
        break;
    }
    case HSP_PATHS:
        REQUIRE(inside(rec->data, rec->data_len, raw, rawlen));
        REQUIRE(path_safe((const char *)rec->data, rec->data_len));
        put = hsp_put_text(&w, HSP_PATHS, (const char *)rec->data, rec->data_len);
        break;
    case HSP_SNAPINFO:
        REQUIRE(name_safe(rec->name, HSP_NAME_MAX));
        put = hsp_put_snapinfo(&w, rec->name, rec->time, rec->files, rec->bytes);
        break;
    default:
        fail("contract broken: a record of an unknown type was accepted");
    }
    /* 1: a text with a NUL, which no encoder writes; the rest must come
     * back byte for byte. */
    if (put != 1) {
        REQUIRE(put == 0);
        REQUIRE(w.len == rawlen);
        REQUIRE(memcmp(buf, raw, rawlen) == 0);
    }
    free(buf);
}

#endif
