/*
 * push.c - haul push SRC_DIR haul://HOST:PORT/DATASET: back up a tree as a
 * new snapshot (docs/store-protocol.md, PUSH).
 *
 * The tree is walked depth first, a directory before what it holds, names
 * in byte order, never following a symbolic link. Entries are numbered
 * from 0 in the order sent and go in batches of ENTRY records. The server
 * answers HAVE or NEED for every file, in entry order; for a NEED the
 * file's content follows as DATA and HOLE records and a DONE with the
 * XXH3-128 of the whole file. Files smaller than SMALL_FILE are packed many
 * to a message; a larger one is cut into messages of one block each. After
 * the last entry and the last content, COMMIT; the server's RESULT names
 * the snapshot.
 *
 * Memory stays bounded whatever the size of the tree: at most MAX_BATCHES
 * batches wait for answers, at most MAX_PENDING files are listed and not
 * yet finished, and message buffers come from a pool as large as the
 * output queue. What grows with the tree is only the map of files with
 * more than one link (for hard links) and, per directory being walked, the
 * names of that directory.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xxhash.h>

#include "cli/client.h"
#include "cli/progress.h"
#include "cli/scan.h"
#include "cli/select.h"
#include "proto/compress.h"

/* Files below this size are read whole and packed many to a message. */
#define SMALL_FILE (64u << 10)
/* ENTRY batches sent and not yet fully answered. The walk stops at
 * MAX_BATCHES; the batch it was filling may still go, and one more when
 * an entry was waiting for room: the ring holds that many. */
#define MAX_BATCHES 8
#define RING_SIZE (MAX_BATCHES + 2)
/* Files listed and not yet finished, and the bytes of their paths. */
#define MAX_PENDING 32768
#define MAX_PENDING_BYTES (16u << 20)
/* Finished files remembered in case the server asks for one again (after
 * a hash mismatch on arrival, docs/store-protocol.md). */
#define HISTORY_MAX 65536
#define HISTORY_BYTES (8u << 20)
/* Bytes of a resumed file's prefix hashed per step of the loop. */
#define PREFIX_STEP (64u << 20)
/* Room for a SKIP record: its text is clipped to this. */
#define SKIP_TEXT_MAX 200
/*
 * The tag of a message says what its acknowledgement means for the
 * status line: the bytes of file content it carries (holes included) in
 * the low TAG_BYTES_BITS bits, the files it completes (DONE records)
 * above. A message completes at most a few ten thousand files, and
 * carries at most a block of data or one hole: a hole beyond 16 TiB is
 * counted short, which the last line makes good.
 */
#define TAG_BYTES_BITS 44
#define TAG_BYTES_MAX ((1ull << TAG_BYTES_BITS) - 1)

/*
 * Compression (--compress) puts every message tried into the session's
 * zstd stream (hsp_zstd_pack), but data that does not compress is not
 * tried for ever: a file sent in blocks goes as it is after
 * ZSTD_FILE_MISSES blocks in a row that did not shrink by the margin,
 * and after ZSTD_PACK_MISSES packs of small files in a row that did
 * not, one pack in ZSTD_PACK_SAMPLE is tried until one pays again.
 */
#define ZSTD_FILE_MISSES 4
#define ZSTD_PACK_MISSES 4
#define ZSTD_PACK_SAMPLE 16

/* ---- a pool of message buffers ------------------------------------------------ */

/*
 * Buffers of HSP_MESSAGE_MAX bytes, lent to the engine with
 * haul_send_buffer(). The engine gives one back from its own thread (the
 * release callback), hence the mutex.
 */
typedef struct pool {
    pthread_mutex_t mu;
    uint8_t **free;
    size_t nfree;
    uint8_t **all;
    size_t nall, max;
} pool;

static int pool_init(pool *pl, size_t max)
{
    pthread_mutex_init(&pl->mu, NULL);
    pl->max = max;
    pl->nfree = pl->nall = 0;
    pl->free = calloc(max, sizeof(*pl->free));
    pl->all = calloc(max, sizeof(*pl->all));
    return pl->free && pl->all ? 0 : -1;
}

static uint8_t *pool_get(pool *pl)
{
    uint8_t *b = NULL;
    pthread_mutex_lock(&pl->mu);
    if (pl->nfree)
        b = pl->free[--pl->nfree];
    else if (pl->nall < pl->max) {
        b = malloc(HSP_MESSAGE_MAX);
        if (b)
            pl->all[pl->nall++] = b;
    }
    pthread_mutex_unlock(&pl->mu);
    return b;
}

/* Gives a buffer back; the engine's release callback. */
static void pool_put(void *buf, void *arg)
{
    pool *pl = arg;
    pthread_mutex_lock(&pl->mu);
    pl->free[pl->nfree++] = buf;
    pthread_mutex_unlock(&pl->mu);
}

/* Only after the engine is gone: it may hold buffers until then. */
static void pool_fini(pool *pl)
{
    for (size_t i = 0; i < pl->nall; i++)
        free(pl->all[i]);
    free(pl->all);
    free(pl->free);
    pthread_mutex_destroy(&pl->mu);
}

/* ---- hard links ---------------------------------------------------------------- */

/* (device, inode) -> path of the first entry, for files with several links. */
typedef struct link_slot {
    dev_t dev;
    ino_t ino;
    char *path; /* NULL: empty slot */
    uint16_t len;
} link_slot;

typedef struct link_map {
    link_slot *slots;
    size_t cap, used;
} link_map;

static size_t link_hash(dev_t dev, ino_t ino, size_t cap)
{
    uint64_t x = (uint64_t)ino * 0x9E3779B97F4A7C15ull ^ (uint64_t)dev * 0xC2B2AE3D27D4EB4Full;
    return (size_t)(x ^ (x >> 29)) & (cap - 1);
}

static link_slot *link_find(link_map *m, dev_t dev, ino_t ino)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = link_hash(dev, ino, m->cap);; i = (i + 1) & (m->cap - 1)) {
        link_slot *s = &m->slots[i];
        if (s->path == NULL)
            return NULL;
        if (s->dev == dev && s->ino == ino)
            return s;
    }
}

static int link_add(link_map *m, dev_t dev, ino_t ino, const char *path, uint16_t len)
{
    if (2 * (m->used + 1) > m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 1024;
        link_slot *slots = calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return -1;
        for (size_t j = 0; j < m->cap; j++) {
            link_slot *s = &m->slots[j];
            if (s->path == NULL)
                continue;
            size_t i = link_hash(s->dev, s->ino, cap);
            while (slots[i].path)
                i = (i + 1) & (cap - 1);
            slots[i] = *s;
        }
        free(m->slots);
        m->slots = slots;
        m->cap = cap;
    }
    char *copy = malloc(len);
    if (copy == NULL)
        return -1;
    memcpy(copy, path, len);
    size_t i = link_hash(dev, ino, m->cap);
    while (m->slots[i].path)
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = (link_slot){.dev = dev, .ino = ino, .path = copy, .len = len};
    m->used++;
    return 0;
}

static void link_free(link_map *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].path);
    free(m->slots);
}

/* ---- the state of a push ---------------------------------------------------------- */

/* A FILE entry sent, from its ENTRY to its DONE or SKIP. */
typedef struct pfile {
    struct pfile *next;
    uint64_t id, size;
    int answer;    /* 0 (none yet), HSP_HAVE or HSP_NEED */
    int forgotten; /* asked for again after we let it go: SKIP it */
    uint64_t from; /* NEED: where the server wants the content from */
    hsp_hash prefix;
    uint16_t path_len;
    char path[]; /* path_len bytes and a NUL */
} pfile;

/* A directory being walked: its descriptor and its names, sorted. */
typedef struct frame {
    int fd;
    char *names;
    size_t *offs;
    size_t n, i;
    size_t prefix_len; /* bytes of path before this directory's names */
} frame;

enum { SEND_PREFIX, SEND_DATA, SEND_FINISH, SEND_SKIP };

/* The file whose content is being sent in messages of one block. */
typedef struct sender {
    int active;
    pfile *f;
    int fd;
    struct stat before;
    uint64_t off;
    uint64_t data_end; /* end of the data region off is in */
    int phase;
    int attempts;         /* reads started over because the file changed */
    int zero_data;        /* the next record must be a DATA at offset 0 (restart) */
    unsigned zstd_misses; /* blocks in a row that did not compress */
    int skip_err;
    char skip_text[SKIP_TEXT_MAX];
} sender;

typedef struct push {
    cli_client c;
    const cli_options *opt;
    const char *src;
    int root;
    pool pool;
    XXH3_state_t *hash;
    uint8_t *readbuf; /* for hashing a resumed file's prefix */

    /* The walk. */
    frame *stack;
    size_t depth, stack_cap;
    char path[HSP_PATH_MAX + 2 + 256];
    int walk_done;
    int staged; /* an entry waits in se for room in a batch */
    hsp_entry se;
    int se_links; /* a FILE with st_nlink > 1 */
    dev_t se_dev;
    ino_t se_ino;
    char se_path[HSP_PATH_MAX + 1];
    char se_target[HSP_PATH_MAX + 1];
    link_map links;
    /* What is left out (NULL: nothing); the staged directory opened while
     * asking it (-1: not yet), and whether that directory is entered. */
    cli_select *sel;
    int se_dirfd;
    int se_enter;

    /* Entries. */
    uint64_t next_id;
    uint8_t *batch_buf;
    hsp_writer batch;
    unsigned batch_files;
    uint64_t batch_last;
    uint64_t ring[RING_SIZE]; /* the last file id of each batch awaiting answers */
    unsigned ring_head, ring_count;

    /* Files listed and not finished, in entry order; the first without an
     * answer. */
    pfile *head, *tail, *unanswered;
    size_t pending_files, pending_bytes;
    /* Files the server asked for again, and finished files it might. */
    pfile *retry_head, *retry_tail;
    pfile **history;
    size_t hist_head, hist_count, hist_bytes;

    /* Content. */
    uint8_t *pack_buf;
    hsp_writer pack;
    sender cur;
    uint8_t *out_buf; /* a message the full output queue did not take yet */
    size_t out_len;
    uint64_t out_tag;
    /* What the pack being filled completes, for its tag. */
    uint64_t pack_bytes, pack_files;
    int committed;
    int starved; /* waiting for a pool buffer */

    /* What this side saw, beside the server's RESULT. */
    uint64_t entries, files_sent, skipped, specials, problems;
    /* Entries left out by the selection (a directory counts once), and
     * the bytes of the regular files among them. */
    uint64_t excluded, excluded_bytes;
    double start;

    /* The status line, and the count of the tree ahead of the push. */
    cli_progress *progress;
    cli_scan *scan;

    /* --compress: the codec (NULL: off) and where a message is
     * compressed before it is copied back into its buffer. Packs in a
     * row that did not compress, and packs since the last one tried. */
    hsp_zstd *zstd;
    uint8_t *zbuf;
    unsigned pack_misses, pack_untried;
    /* Bytes of the messages sent, before and after compression. */
    uint64_t message_bytes, wire_bytes;
} push;

/* ---- small helpers ------------------------------------------------------------------- */

static void warn_path(const char *path, size_t len, const char *fmt, const char *detail)
{
    cli_progress_clear();
    fputs("haul: ", stderr);
    cli_put_path(stderr, path, len);
    fprintf(stderr, fmt, detail);
    fputc('\n', stderr);
}

static int stat_changed(const struct stat *a, const struct stat *b)
{
    return a->st_size != b->st_size || a->st_mtim.tv_sec != b->st_mtim.tv_sec ||
           a->st_mtim.tv_nsec != b->st_mtim.tv_nsec || a->st_ino != b->st_ino ||
           a->st_dev != b->st_dev;
}

static void hash_zeros(XXH3_state_t *h, uint64_t n)
{
    static const uint8_t zeros[65536];
    while (n) {
        size_t k = n < sizeof(zeros) ? (size_t)n : sizeof(zeros);
        XXH3_128bits_update(h, zeros, k);
        n -= k;
    }
}

static void hash_final(XXH3_state_t *h, hsp_hash *out)
{
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(h));
    memcpy(out->b, canon.digest, 16);
}

/* Reads exactly len bytes at off; returns len, fewer at the end of the
 * file, or -1 with errno. */
static ssize_t read_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

/* ---- sending messages ---------------------------------------------------------------- */

static uint64_t make_tag(uint64_t bytes, uint64_t files)
{
    return (bytes > TAG_BYTES_MAX ? TAG_BYTES_MAX : bytes) | files << TAG_BYTES_BITS;
}

/* Compresses a message in its buffer when asked; returns its length
 * then, and whether that paid. A message that went into the stream is
 * sent compressed even when it did not shrink (by a few bytes a block:
 * zstd stores such blocks as they are). */
static size_t squeeze(push *p, uint8_t *buf, size_t len, int try, int *paid)
{
    *paid = 0;
    if (p->zstd == NULL || !try)
        return len;
    size_t n = hsp_zstd_pack(p->zstd, buf, len, p->zbuf, HSP_MESSAGE_MAX);
    if (n == 0)
        return len;
    memcpy(buf, p->zbuf, n);
    *paid = hsp_zstd_paid(len, n);
    return n;
}

/* Sends a pool buffer as a message, compressed first when `try` and that
 * pays (returns 1 then); a full queue keeps it in the outbox. */
static int send_buffer(push *p, uint8_t *buf, size_t len, uint64_t tag, int try)
{
    int paid;
    p->message_bytes += len;
    len = squeeze(p, buf, len, try, &paid);
    p->wire_bytes += len;
    int rc = cli_send_buffer(&p->c, buf, len, pool_put, &p->pool, tag);
    if (rc == HAUL_EQUEUEFULL) {
        p->out_buf = buf;
        p->out_len = len;
        p->out_tag = tag;
    } else if (rc != 0) {
        pool_put(buf, &p->pool);
    }
    return paid;
}

/* Tries the outbox again; 1 when it went. */
static int outbox_retry(push *p)
{
    int rc = cli_send_buffer(&p->c, p->out_buf, p->out_len, pool_put, &p->pool, p->out_tag);
    if (rc == HAUL_EQUEUEFULL)
        return 0;
    if (rc != 0)
        pool_put(p->out_buf, &p->pool);
    p->out_buf = NULL;
    return 1;
}

static void flush_pack(push *p)
{
    if (p->pack_buf && p->pack.len) {
        /* Sampled once packs stop compressing: see ZSTD_PACK_MISSES. */
        int try = p->pack_misses < ZSTD_PACK_MISSES || ++p->pack_untried >= ZSTD_PACK_SAMPLE;
        if (try)
            p->pack_untried = 0;
        if (send_buffer(p, p->pack_buf, p->pack.len, make_tag(p->pack_bytes, p->pack_files), try))
            p->pack_misses = 0;
        else if (try)
            p->pack_misses++;
        p->pack_buf = NULL;
        p->pack_bytes = p->pack_files = 0;
    }
}

/* Makes room for a record body of `room` bytes in the pack. Returns 1
 * when there is room, 0 when not now (a message went out, or no buffer). */
static int pack_room(push *p, size_t room)
{
    if (p->pack_buf && hsp_writer_fits(&p->pack, room))
        return 1;
    if (p->pack_buf && p->pack.len) {
        flush_pack(p);
        return 0;
    }
    if (p->pack_buf == NULL) {
        p->pack_buf = pool_get(&p->pool);
        if (p->pack_buf == NULL) {
            p->starved = 1;
            return 0;
        }
        hsp_writer_init(&p->pack, p->pack_buf, p->opt->message + (HSP_MESSAGE_MAX - HSP_BLOCK));
    }
    return hsp_writer_fits(&p->pack, room);
}

/* Sends the batch of entries; its files now wait for answers. */
static void flush_batch(push *p)
{
    if (p->batch_buf == NULL || p->batch.len == 0)
        return;
    send_buffer(p, p->batch_buf, p->batch.len, 0, 1);
    p->batch_buf = NULL;
    if (p->batch_files) {
        p->ring[(p->ring_head + p->ring_count) % RING_SIZE] = p->batch_last;
        p->ring_count++;
        p->batch_files = 0;
    }
}

/* ---- files: queues and history ----------------------------------------------------- */

static pfile *pfile_new(const hsp_entry *e)
{
    pfile *f = calloc(1, sizeof(*f) + e->path_len + 1);
    if (f == NULL)
        return NULL;
    f->id = e->id;
    f->size = e->size;
    f->path_len = e->path_len;
    memcpy(f->path, e->path, e->path_len);
    return f;
}

static void history_add(push *p, pfile *f)
{
    while (p->hist_count && (p->hist_count == HISTORY_MAX || p->hist_bytes > HISTORY_BYTES)) {
        pfile *old = p->history[p->hist_head];
        if (old) {
            p->hist_bytes -= old->path_len;
            free(old);
        }
        p->hist_head = (p->hist_head + 1) % HISTORY_MAX;
        p->hist_count--;
    }
    f->next = NULL;
    p->history[(p->hist_head + p->hist_count) % HISTORY_MAX] = f;
    p->hist_count++;
    p->hist_bytes += f->path_len;
}

/* Takes a finished file from the history; NULL when it is not there. */
static pfile *history_take(push *p, uint64_t id)
{
    for (size_t k = 0; k < p->hist_count; k++) {
        size_t i = (p->hist_head + k) % HISTORY_MAX;
        pfile *f = p->history[i];
        if (f && f->id == id) {
            p->history[i] = NULL;
            /* The slot stays taken until it ages out, as a hole. */
            p->hist_bytes -= f->path_len;
            return f;
        }
    }
    return NULL;
}

/* The next file whose turn it is: one asked for again, else the oldest
 * listed file once answered. */
static pfile *next_work(push *p)
{
    if (p->retry_head)
        return p->retry_head;
    if (p->head && p->head->answer)
        return p->head;
    return NULL;
}

/* Removes the file at work from its queue; keeps it in the history when its
 * content went. */
static void finish_work(push *p, pfile *f, int keep)
{
    if (f == p->retry_head) {
        p->retry_head = f->next;
        if (p->retry_head == NULL)
            p->retry_tail = NULL;
    } else {
        p->head = f->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->pending_files--;
        p->pending_bytes -= f->path_len;
    }
    if (keep)
        history_add(p, f);
    else
        free(f);
}

/* A SKIP for the file: reported here, left out of the snapshot there. err
 * is the errno of the call that failed, or 0 when the file changed. The
 * caller made room in the pack. */
static void skip_file(push *p, pfile *f, int err, const char *text)
{
    char full[SKIP_TEXT_MAX];
    if (err)
        snprintf(full, sizeof(full), "%s: %s", text, strerror(err));
    else
        snprintf(full, sizeof(full), "%s", text);
    /* A file that changed (no system call failed) goes as EAGAIN: the
     * next push will find it settled, one hopes. */
    hsp_put_skip(&p->pack, f->id, err ? err : EAGAIN, full);
    warn_path(f->path, f->path_len, ": skipped: %s", full);
    p->skipped++;
    finish_work(p, f, 0);
}

/* ---- content -------------------------------------------------------------------------- */

/* The offset of the next data at or after off, or size when only a hole
 * is left. File systems without holes report all of it as data. */
static uint64_t next_data(int fd, uint64_t off, uint64_t size)
{
    off_t r = lseek(fd, (off_t)off, SEEK_DATA);
    if (r < 0)
        return errno == ENXIO ? size : off;
    return (uint64_t)r > size ? size : (uint64_t)r;
}

static uint64_t next_hole(int fd, uint64_t off, uint64_t size)
{
    off_t r = lseek(fd, (off_t)off, SEEK_HOLE);
    if (r < 0 || (uint64_t)r <= off || (uint64_t)r > size)
        return size;
    return (uint64_t)r;
}

/*
 * Appends the records of the content from *off: a HOLE when a hole starts
 * there, and a DATA of at most max bytes. *data_end is the end of the data
 * region *off is in (0 at first): asking the file system at every block
 * would cost a scan to the end of the region each time (tmpfs). Returns 0,
 * -1 on a read error (errno), -2 when the file ended early (it changed),
 * or -3 when the records do not fit in w.
 */
static int put_region(push *p, hsp_writer *w, int fd, const pfile *f, uint64_t *off,
                      uint64_t *data_end, size_t max)
{
    uint64_t size = f->size;
    if (*off >= *data_end) {
        uint64_t data = next_data(fd, *off, size);
        if (data > *off) {
            if (hsp_put_hole(w, f->id, *off, data - *off) != 0)
                return -3;
            hash_zeros(p->hash, data - *off);
            *off = data;
        }
        if (*off >= size)
            return 0;
        *data_end = next_hole(fd, *off, size);
    }
    uint64_t end = *data_end;
    if (end - *off > max)
        end = *off + max;
    uint32_t len = (uint32_t)(end - *off);
    uint8_t *dst = hsp_put_data(w, f->id, *off, len);
    if (dst == NULL)
        return -3;
    ssize_t got = read_full(fd, dst, len, *off);
    if (got < 0)
        return -1;
    if ((size_t)got < len)
        return -2;
    XXH3_128bits_update(p->hash, dst, len);
    *off = end;
    return 0;
}

static int start_large(push *p, pfile *f);

/* Holes are whole blocks of the file system, whose sizes are multiples of
 * this, and read as zeros. */
#define HOLE_GRAIN 512

static int all_zero(const uint8_t *b, size_t n)
{
    return n == 0 || (b[0] == 0 && memcmp(b, b + 1, n - 1) == 0);
}

/*
 * Reads a small file whole as one DATA record, without asking the file
 * system where its holes are (two lseek() per file): a hole reads as
 * zeros over at least a HOLE_GRAIN-aligned grain of the file (or the
 * grain it ends in), so content with no such grain of zeros has none.
 * Returns 0 (read and hashed), 1 when a grain is all zeros (the record
 * is taken back: the caller looks for holes), or put_region's -1, -2 or
 * -3.
 */
static int put_dense(push *p, int fd, const pfile *f)
{
    size_t size = (size_t)f->size;
    size_t mark = p->pack.len;
    uint8_t *dst = hsp_put_data(&p->pack, f->id, 0, (uint32_t)size);
    if (dst == NULL)
        return -3;
    ssize_t got = read_full(fd, dst, size, 0);
    if (got < 0 || (size_t)got < size) {
        p->pack.len = mark;
        return got < 0 ? -1 : -2;
    }
    for (size_t at = 0; at < size; at += HOLE_GRAIN) {
        if (all_zero(dst + at, size - at < HOLE_GRAIN ? size - at : HOLE_GRAIN)) {
            p->pack.len = mark;
            return 1;
        }
    }
    XXH3_128bits_update(p->hash, dst, size);
    return 0;
}

/* Room a small file's records take in the pack, holes and all. */
static size_t small_room(uint64_t size)
{
    return (size_t)size + ((size_t)size / 2048 + 2) * (HSP_RECORD_HDR + 24) + 64;
}

/* Opens a file to send and checks that it is still what was listed. */
static int open_file(push *p, pfile *f, struct stat *st, int *err, const char **why)
{
    int fd = cli_open_beneath(p->root, f->path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *err = errno;
        *why = errno == ENOENT ? "vanished" : "cannot open";
        return -1;
    }
    if (fstat(fd, st) != 0) {
        *err = errno;
        *why = "cannot stat";
        close(fd);
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        *err = 0;
        *why = "no longer a regular file";
        close(fd);
        return -1;
    }
    if ((uint64_t)st->st_size != f->size) {
        *err = 0;
        *why = "changed while being read (size differs from its entry)";
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * A small file, read whole into the pack: DATA (and HOLE) records, DONE.
 * A file that changes while read is read once more; the records of the
 * first read are taken back, so the server never sees them.
 */
static int send_small(push *p, pfile *f)
{
    if (!pack_room(p, small_room(f->size)))
        return p->starved ? 0 : 1;
    struct stat before, after;
    int err = 0;
    const char *why = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open_file(p, f, &before, &err, &why);
        if (fd < 0)
            break;
        size_t mark = p->pack.len;
        XXH3_128bits_reset(p->hash);
        uint64_t off = 0, data_end = 0;
        int rc = f->size > 0 ? put_dense(p, fd, f) : 0;
        if (rc == 1) {
            /* Perhaps holes: region by region, as the file system says. */
            XXH3_128bits_reset(p->hash);
            rc = 0;
            while (rc == 0 && off < f->size)
                rc = put_region(p, &p->pack, fd, f, &off, &data_end, SMALL_FILE);
        }
        if (rc == -1) {
            err = errno;
            why = "read error";
        } else if (rc == 0 && fstat(fd, &after) != 0) {
            err = errno;
            why = "cannot stat";
            rc = -1;
        }
        close(fd);
        if (rc == -3) {
            /* More holes than the pack has room for: as a large file. */
            p->pack.len = mark;
            return start_large(p, f);
        }
        if (rc == 0 && !stat_changed(&before, &after)) {
            hsp_hash h;
            hash_final(p->hash, &h);
            hsp_put_done(&p->pack, f->id, &h);
            p->files_sent++;
            p->pack_bytes += f->size;
            p->pack_files++;
            finish_work(p, f, 1);
            return 1;
        }
        p->pack.len = mark;
        if (rc == -1)
            break;
        err = 0;
        why = "changed while being read";
    }
    skip_file(p, f, err, why);
    return 1;
}

/* Starts a large, sparse or resumed file: sent in messages of one block. */
static int start_large(push *p, pfile *f)
{
    if (!pack_room(p, HSP_RECORD_HDR + 12 + SKIP_TEXT_MAX))
        return p->starved ? 0 : 1;
    /* The records of one file go together: what the pack holds goes first. */
    if (p->pack.len) {
        flush_pack(p);
        return 1;
    }
    int err = 0;
    const char *why = NULL;
    sender *s = &p->cur;
    memset(s, 0, sizeof(*s));
    s->fd = open_file(p, f, &s->before, &err, &why);
    if (s->fd < 0) {
        skip_file(p, f, err, why);
        return 1;
    }
    posix_fadvise(s->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    s->active = 1;
    s->f = f;
    XXH3_128bits_reset(p->hash);
    if (f->from > 0 && f->from <= f->size) {
        s->phase = SEND_PREFIX;
    } else {
        s->phase = SEND_DATA;
        /* The server holds a prefix we cannot use: tell it to start over. */
        s->zero_data = f->from > 0;
    }
    return 1;
}

static void sender_skip(push *p, int err, const char *why)
{
    sender *s = &p->cur;
    s->phase = SEND_SKIP;
    s->skip_err = err;
    snprintf(s->skip_text, sizeof(s->skip_text), "%s", why);
}

/* One step of the file being sent; returns 1 on progress, 0 when blocked. */
static int send_large_step(push *p)
{
    sender *s = &p->cur;
    pfile *f = s->f;
    switch (s->phase) {
    case SEND_PREFIX: {
        /* Resuming: the server holds [0, from); it is used only if ours
         * hashes the same. */
        uint64_t done = s->off, end = f->from;
        uint64_t stop = end - done > PREFIX_STEP ? done + PREFIX_STEP : end;
        while (done < stop) {
            size_t n = stop - done > HSP_BLOCK ? HSP_BLOCK : (size_t)(stop - done);
            ssize_t got = read_full(s->fd, p->readbuf, n, done);
            if (got != (ssize_t)n) {
                sender_skip(p, got < 0 ? errno : 0,
                            got < 0 ? "read error" : "changed while being read");
                return 1;
            }
            XXH3_128bits_update(p->hash, p->readbuf, n);
            done += n;
        }
        s->off = done;
        if (done == end) {
            hsp_hash h;
            hash_final(p->hash, &h);
            if (!hsp_hash_equal(&h, &f->prefix)) {
                XXH3_128bits_reset(p->hash);
                s->off = 0;
                s->zero_data = 1;
            } else {
                /* What the server holds counts as done. */
                cli_progress_add(p->progress, end, 0);
            }
            s->data_end = 0;
            s->phase = SEND_DATA;
        }
        return 1;
    }
    case SEND_DATA: {
        uint8_t *buf = pool_get(&p->pool);
        if (buf == NULL) {
            p->starved = 1;
            return 0;
        }
        hsp_writer w;
        hsp_writer_init(&w, buf, p->opt->message + (HSP_MESSAGE_MAX - HSP_BLOCK));
        if (s->zero_data) {
            /* A DATA at offset 0 tells the server to restart the file,
             * also when the file starts with a hole. */
            if (s->off == 0 && next_data(s->fd, 0, f->size) != 0)
                hsp_put_data(&w, f->id, 0, 0);
            s->zero_data = 0;
        }
        uint64_t from = s->off;
        int rc = s->off < f->size
                     ? put_region(p, &w, s->fd, f, &s->off, &s->data_end, p->opt->message)
                     : 0;
        if (rc != 0) {
            pool_put(buf, &p->pool);
            if (rc == -1)
                sender_skip(p, errno, "read error");
            else
                s->phase = SEND_FINISH; /* shorter than listed: a change */
            return 1;
        }
        if (w.len) {
            int try = s->zstd_misses < ZSTD_FILE_MISSES;
            if (send_buffer(p, buf, w.len, make_tag(s->off > from ? s->off - from : 0, 0), try))
                s->zstd_misses = 0;
            else if (try)
                s->zstd_misses++;
        } else
            pool_put(buf, &p->pool);
        if (s->off >= f->size)
            s->phase = SEND_FINISH;
        return 1;
    }
    case SEND_FINISH: {
        if (!pack_room(p, HSP_RECORD_HDR + 12 + SKIP_TEXT_MAX))
            return p->starved ? 0 : 1;
        struct stat now;
        if (fstat(s->fd, &now) != 0) {
            sender_skip(p, errno, "cannot stat");
            return 1;
        }
        if (s->off < f->size || stat_changed(&s->before, &now)) {
            if (s->attempts == 0 && (uint64_t)now.st_size == f->size) {
                /* Changed while read: once more from the start. */
                s->attempts = 1;
                s->before = now;
                s->off = 0;
                s->data_end = 0;
                s->zero_data = 1;
                s->phase = SEND_DATA;
                XXH3_128bits_reset(p->hash);
                return 1;
            }
            sender_skip(p, 0, "changed while being read");
            return 1;
        }
        hsp_hash h;
        hash_final(p->hash, &h);
        hsp_put_done(&p->pack, f->id, &h);
        p->files_sent++;
        p->pack_files++;
        close(s->fd);
        s->active = 0;
        finish_work(p, f, 1);
        return 1;
    }
    case SEND_SKIP:
        if (!pack_room(p, HSP_RECORD_HDR + 12 + SKIP_TEXT_MAX))
            return p->starved ? 0 : 1;
        close(s->fd);
        s->active = 0;
        skip_file(p, f, s->skip_err, s->skip_text);
        return 1;
    }
    return 0;
}

/* Starts on the next file's content; 1 on progress, 0 when blocked. */
static int start_file(push *p, pfile *f)
{
    if (f->answer == HSP_HAVE) {
        finish_work(p, f, 0);
        return 1;
    }
    if (f->forgotten) {
        /* Asked for again long after it went: its path is no longer at
         * hand. It is left out; the next push sends it. */
        if (!pack_room(p, HSP_RECORD_HDR + 12 + SKIP_TEXT_MAX))
            return p->starved ? 0 : 1;
        cli_warn("the server asked again for entry %llu, no longer at hand: skipped",
                 (unsigned long long)f->id);
        hsp_put_skip(&p->pack, f->id, ESTALE, "asked for again too late");
        p->skipped++;
        finish_work(p, f, 0);
        return 1;
    }
    cli_progress_file(p->progress, f->path, f->path_len);
    if (f->from == 0 && f->size < SMALL_FILE)
        return send_small(p, f);
    return start_large(p, f);
}

/* ---- the walk ------------------------------------------------------------------------ */

static const char *sort_base;
static int name_cmp(const void *a, const void *b)
{
    return strcmp(sort_base + *(const size_t *)a, sort_base + *(const size_t *)b);
}

/* Reads the names of a directory (not its descriptor's owner) and sorts
 * them in byte order. */
static int read_names(int fd, frame *fr)
{
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (dup_fd < 0)
        return -1;
    DIR *d = fdopendir(dup_fd);
    if (d == NULL) {
        close(dup_fd);
        return -1;
    }
    size_t cap = 4096, len = 0, ncap = 64;
    fr->names = malloc(cap);
    fr->offs = malloc(ncap * sizeof(*fr->offs));
    fr->n = fr->i = 0;
    int err = fr->names && fr->offs ? 0 : ENOMEM;
    struct dirent *de;
    errno = 0;
    while (!err && (de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
            continue;
        size_t n = strlen(nm) + 1;
        if (len + n > cap) {
            while (len + n > cap)
                cap *= 2;
            char *names = realloc(fr->names, cap);
            if (names == NULL) {
                err = ENOMEM;
                break;
            }
            fr->names = names;
        }
        if (fr->n == ncap) {
            size_t *offs = realloc(fr->offs, 2 * ncap * sizeof(*offs));
            if (offs == NULL) {
                err = ENOMEM;
                break;
            }
            fr->offs = offs;
            ncap *= 2;
        }
        memcpy(fr->names + len, nm, n);
        fr->offs[fr->n++] = len;
        len += n;
        errno = 0;
    }
    if (!err && errno)
        err = errno;
    closedir(d);
    if (err) {
        free(fr->names);
        free(fr->offs);
        fr->names = NULL;
        fr->offs = NULL;
        errno = err;
        return -1;
    }
    sort_base = fr->names;
    qsort(fr->offs, fr->n, sizeof(*fr->offs), name_cmp);
    return 0;
}

static int push_frame(push *p, int fd, size_t prefix_len)
{
    if (p->depth == p->stack_cap) {
        size_t cap = p->stack_cap ? 2 * p->stack_cap : 32;
        frame *stack = realloc(p->stack, cap * sizeof(*stack));
        if (stack == NULL)
            return -1;
        p->stack = stack;
        p->stack_cap = cap;
    }
    frame *fr = &p->stack[p->depth];
    memset(fr, 0, sizeof(*fr));
    if (read_names(fd, fr) != 0)
        return -1;
    fr->fd = fd;
    fr->prefix_len = prefix_len;
    p->depth++;
    return 0;
}

static void pop_frame(push *p)
{
    frame *fr = &p->stack[--p->depth];
    if (fr->fd != p->root)
        close(fr->fd);
    free(fr->names);
    free(fr->offs);
}

/* Counts an entry the selection left out (or kept empty), and with -v
 * names it, so that patterns can be checked against a tree. */
static void count_excluded(push *p, size_t path_len, const struct stat *st, int verdict)
{
    p->excluded++;
    if (S_ISREG(st->st_mode))
        p->excluded_bytes += (uint64_t)st->st_size;
    if (p->opt->verbose)
        warn_path(p->path, path_len, ": %s",
                  verdict == CLI_SELECT_EMPTY ? "kept empty (another file system)" : "excluded");
}

/* Asks the selection about an entry; 1 when it is left out (counted).
 * A directory is opened for it (for CACHEDIR.TAG) and, when kept, stays
 * open in se_dirfd for enter_dir(). */
static int select_out(push *p, frame *fr, const char *name, size_t path_len, const struct stat *st)
{
    p->se_dirfd = -1;
    p->se_enter = 1;
    if (p->sel == NULL)
        return 0;
    int fd = -1;
    if (S_ISDIR(st->st_mode))
        fd = openat(fr->fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int verdict = cli_select_skip(p->sel, p->path, path_len, st, fd);
    if (verdict == CLI_SELECT_KEEP) {
        p->se_dirfd = fd;
        return 0;
    }
    if (fd >= 0)
        close(fd);
    count_excluded(p, path_len, st, verdict);
    if (verdict == CLI_SELECT_EMPTY) {
        p->se_enter = 0;
        return 0;
    }
    return 1;
}

/* Fills p->se with the entry of a directory entry; returns 1, or 0 when
 * it is skipped (reported) or left out by the selection. */
static int stage_entry(push *p, frame *fr, const char *name, size_t path_len)
{
    struct stat st;
    const char *path = p->path;
    if (fstatat(fr->fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        warn_path(path, path_len, ": skipped: %s",
                  errno == ENOENT ? "vanished while listed" : strerror(errno));
        p->skipped++;
        return 0;
    }
    if (select_out(p, fr, name, path_len, &st))
        return 0;
    hsp_entry *e = &p->se;
    memset(e, 0, sizeof(*e));
    memcpy(p->se_path, path, path_len);
    e->path = p->se_path;
    e->path_len = (uint16_t)path_len;
    e->mode = st.st_mode & 07777;
    e->uid = st.st_uid;
    e->gid = st.st_gid;
    e->mtime_sec = st.st_mtim.tv_sec;
    e->mtime_nsec = (uint32_t)st.st_mtim.tv_nsec;
    p->se_links = 0;
    if (S_ISREG(st.st_mode)) {
        e->kind = HSP_FILE;
        e->size = (uint64_t)st.st_size;
        if (st.st_nlink > 1) {
            link_slot *first = link_find(&p->links, st.st_dev, st.st_ino);
            if (first) {
                e->kind = HSP_HARDLINK;
                memcpy(p->se_target, first->path, first->len);
                e->target = p->se_target;
                e->target_len = first->len;
            } else {
                p->se_links = 1;
                p->se_dev = st.st_dev;
                p->se_ino = st.st_ino;
            }
        }
        return 1;
    }
    if (S_ISDIR(st.st_mode)) {
        e->kind = HSP_DIR;
        return 1;
    }
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlinkat(fr->fd, name, p->se_target, sizeof(p->se_target));
        if (n <= 0 || (size_t)n >= sizeof(p->se_target) || n > UINT16_MAX) {
            warn_path(path, path_len, ": skipped: cannot read the symbolic link: %s",
                      n < 0 ? strerror(errno) : "target too long");
            p->skipped++;
            return 0;
        }
        e->kind = HSP_SYMLINK;
        e->target = p->se_target;
        e->target_len = (uint16_t)n;
        e->size = (uint64_t)n;
        return 1;
    }
    /* Sockets, FIFOs and devices are no content to back up. */
    warn_path(path, path_len, ": %s", "skipped: not a regular file, directory or symbolic link");
    p->specials++;
    return 0;
}

/* Descends into the directory just staged. Its entry goes first; a
 * directory that cannot be read stays empty in the snapshot (reported). */
static void enter_dir(push *p, frame *fr, const char *name, size_t path_len)
{
    /* O_NOFOLLOW: a directory swapped for a symbolic link since it was
     * listed is not entered. The selection may have opened it already. */
    int fd = p->se_dirfd;
    p->se_dirfd = -1;
    if (fd < 0)
        fd = openat(fr->fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 || push_frame(p, fd, path_len + 1) != 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        warn_path(p->path, path_len, ": cannot read the directory: %s", strerror(err));
        p->skipped++;
    }
}

/* Whether an entry whose path cannot be in a snapshot is left out by the
 * selection anyway (counted): then it is not worth a warning. p->path
 * has room for the prefix and any name. */
static int invalid_but_excluded(push *p, frame *fr, const char *name, size_t nlen)
{
    if (p->sel == NULL)
        return 0;
    struct stat st;
    size_t path_len = fr->prefix_len + nlen;
    memcpy(p->path + fr->prefix_len, name, nlen);
    p->path[path_len] = '\0';
    if (fstatat(fr->fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        cli_select_skip(p->sel, p->path, path_len, &st, -1) != CLI_SELECT_OUT)
        return 0;
    count_excluded(p, path_len, &st, CLI_SELECT_OUT);
    return 1;
}

/* Stages the next entry of the walk; 0 when the walk is over. */
static int walk_next(push *p)
{
    while (p->depth) {
        frame *fr = &p->stack[p->depth - 1];
        if (fr->i == fr->n) {
            pop_frame(p);
            continue;
        }
        const char *name = fr->names + fr->offs[fr->i++];
        size_t nlen = strlen(name), path_len = fr->prefix_len + nlen;
        if (path_len > HSP_PATH_MAX) {
            if (invalid_but_excluded(p, fr, name, nlen))
                continue;
            warn_path(p->path, fr->prefix_len, ": skipped: %s",
                      "a name in this directory makes a path longer than 4096 bytes");
            p->skipped++;
            continue;
        }
        memcpy(p->path + fr->prefix_len, name, nlen);
        p->path[path_len] = '\0';
        if (!hsp_path_ok(p->path, path_len)) {
            warn_path(p->path, path_len, ": skipped: %s", "not a valid path");
            p->skipped++;
            continue;
        }
        if (!stage_entry(p, fr, name, path_len))
            continue;
        if (p->se.kind == HSP_DIR && p->se_enter) {
            p->path[path_len] = '/';
            enter_dir(p, fr, name, path_len);
        }
        p->staged = 1;
        return 1;
    }
    p->walk_done = 1;
    return 0;
}

/* Puts the staged entry into the batch; 1 on progress, 0 when blocked. */
static int place_entry(push *p)
{
    if (p->batch_buf && !hsp_writer_fits(&p->batch, 64 + p->se.path_len + p->se.target_len)) {
        flush_batch(p);
        return 1;
    }
    if (p->batch_buf == NULL) {
        p->batch_buf = pool_get(&p->pool);
        if (p->batch_buf == NULL) {
            p->starved = 1;
            return 0;
        }
        hsp_writer_init(&p->batch, p->batch_buf, HSP_BATCH);
    }
    hsp_entry *e = &p->se;
    e->id = p->next_id;
    pfile *f = NULL;
    if (e->kind == HSP_FILE) {
        f = pfile_new(e);
        if (f == NULL ||
            (p->se_links && link_add(&p->links, p->se_dev, p->se_ino, e->path, e->path_len) != 0)) {
            free(f);
            cli_fail(&p->c, CLI_EXIT_TRANSFER, "out of memory");
            return 0;
        }
    }
    hsp_put_entry(&p->batch, e);
    p->next_id++;
    p->entries++;
    p->staged = 0;
    if (f) {
        if (p->tail)
            p->tail->next = f;
        else
            p->head = f;
        p->tail = f;
        if (p->unanswered == NULL)
            p->unanswered = f;
        p->pending_files++;
        p->pending_bytes += f->path_len;
        p->batch_files++;
        p->batch_last = f->id;
    }
    return 1;
}

/* ---- the server's answers ------------------------------------------------------------- */

static int answer(push *p, const hsp_record *rec)
{
    pfile *f = p->unanswered;
    if (f && f->id == rec->id) {
        f->answer = rec->type;
        if (rec->type == HSP_HAVE)
            cli_progress_add(p->progress, f->size, 1);
        f->from = rec->type == HSP_NEED ? rec->offset : 0;
        f->prefix = rec->hash;
        /* The first file without an answer is the next listed one. */
        p->unanswered = f->next;
        while (p->ring_count && p->ring[p->ring_head] <= rec->id) {
            p->ring_head = (p->ring_head + 1) % RING_SIZE;
            p->ring_count--;
        }
        return 0;
    }
    /* Only a finished file may be asked for again: anything from the
     * oldest listed file on is still waiting its turn. */
    if (rec->type == HSP_NEED && rec->id < p->next_id &&
        (p->head == NULL || rec->id < p->head->id)) {
        /* Asked for again: the server found the content damaged. */
        pfile *old = history_take(p, rec->id);
        if (old == NULL) {
            old = calloc(1, sizeof(*old) + 1);
            if (old == NULL)
                return CLI_EXIT_TRANSFER;
            old->id = rec->id;
            old->forgotten = 1;
        }
        old->answer = HSP_NEED;
        old->from = rec->offset;
        old->prefix = rec->hash;
        old->next = NULL;
        if (p->retry_tail)
            p->retry_tail->next = old;
        else
            p->retry_head = old;
        p->retry_tail = old;
        return 0;
    }
    cli_warn("the server answered for entry %llu out of order; giving up",
             (unsigned long long)rec->id);
    return CLI_EXIT_TRANSFER;
}

/* An acknowledged message: what its tag says is done. */
static void on_sent(void *arg, const haul_event *ev)
{
    push *p = arg;
    cli_progress_add(p->progress, ev->tag & TAG_BYTES_MAX, ev->tag >> TAG_BYTES_BITS);
}

static int on_record(void *arg, const hsp_record *rec)
{
    push *p = arg;
    switch (rec->type) {
    case HSP_HAVE:
    case HSP_NEED:
        return answer(p, rec);
    case HSP_PROBLEM:
        cli_server_problem(rec);
        cli_progress_problem(p->progress);
        p->problems++;
        return 0;
    case HSP_RESULT:
        return 0;
    default:
        cli_warn("the server sent an unexpected record (type %d); giving up", rec->type);
        return CLI_EXIT_TRANSFER;
    }
}

/* ---- the loop ---------------------------------------------------------------------------- */

/* One piece of work; 1 when something was done, 0 when nothing can be now. */
static int step(push *p)
{
    if (p->out_buf)
        return outbox_retry(p);
    if (p->cur.active)
        return send_large_step(p);
    pfile *f = next_work(p);
    if (f)
        return start_file(p, f);
    /* Entries are listed at file boundaries only, and only while few
     * batches wait for answers. */
    if (p->staged)
        return place_entry(p);
    if (!p->walk_done && p->ring_count < MAX_BATCHES && p->pending_files < MAX_PENDING &&
        p->pending_bytes < MAX_PENDING_BYTES)
        return walk_next(p) ? place_entry(p) : 1;
    if (p->walk_done && p->head == NULL && !p->committed) {
        /* Entries go between files, never inside one file's records. */
        if (p->batch_buf && p->batch.len && !p->cur.active) {
            flush_batch(p);
            return 1;
        }
        if (!pack_room(p, 8))
            return p->starved ? 0 : 1;
        hsp_put_commit(&p->pack, p->next_id);
        flush_pack(p);
        p->committed = 1;
        return 1;
    }
    return 0;
}

/* Does what can be done without waiting; before waiting, sends what was
 * gathered, since the server may need it to answer. */
static int produce(push *p)
{
    int progress = 0;
    p->starved = 0;
    for (int budget = 0; budget < 256 && !p->c.failed; budget++) {
        if (step(p) <= 0)
            break;
        progress = 1;
    }
    if (!progress && !p->c.failed && p->out_buf == NULL) {
        if (p->batch_buf && p->batch.len) {
            flush_batch(p);
            progress = 1;
        } else if (p->pack_buf && p->pack.len && !p->cur.active) {
            flush_pack(p);
            progress = 1;
        }
    }
    return progress;
}

static void print_summary(push *p, double secs)
{
    const hsp_record *r = &p->c.result;
    double mibs = secs > 0 ? (double)r->bytes_sent / (1 << 20) / secs : 0;
    unsigned peak, conns = cli_connections(&p->c, &peak);
    if (p->opt->json) {
        printf("{\"snapshot\":\"%s\",\"files\":%llu,\"bytes\":%llu,\"bytes_sent\":%llu,"
               "\"bytes_linked\":%llu,\"skipped\":%llu,\"seconds\":%.3f,\"mib_per_s\":%.1f,"
               "\"entries\":%llu,\"files_sent\":%llu,\"specials\":%llu,\"problems\":%llu,"
               "\"connections\":%u,\"connections_peak\":%u,"
               "\"excluded\":{\"entries\":%llu,\"bytes\":%llu},"
               "\"compress\":%d,\"message_bytes\":%llu,\"wire_bytes\":%llu}\n",
               r->snapshot, (unsigned long long)r->files, (unsigned long long)r->bytes,
               (unsigned long long)r->bytes_sent, (unsigned long long)r->bytes_linked,
               (unsigned long long)p->skipped, secs, mibs, (unsigned long long)p->entries,
               (unsigned long long)p->files_sent, (unsigned long long)p->specials,
               (unsigned long long)p->problems, conns, peak, (unsigned long long)p->excluded,
               (unsigned long long)p->excluded_bytes, p->c.compress,
               (unsigned long long)p->message_bytes, (unsigned long long)p->wire_bytes);
        return;
    }
    if (p->opt->verbose && p->opt->connections == HAUL_CONNECTIONS_AUTO)
        cli_warn("%u connections at the end, %u at most (chosen automatically)", conns, peak);
    printf("snapshot %s\n", r->snapshot);
    if (p->opt->quiet)
        return;
    char total[32], sent[32], linked[32];
    cli_human_bytes(r->bytes, total, sizeof(total));
    cli_human_bytes(r->bytes_sent, sent, sizeof(sent));
    cli_human_bytes(r->bytes_linked, linked, sizeof(linked));
    printf("%llu files, %s total, %s sent, %s linked (unchanged), %llu skipped, %.2f s, "
           "%.1f MiB/s\n",
           (unsigned long long)r->files, total, sent, linked, (unsigned long long)p->skipped, secs,
           mibs);
    if (p->c.compress) {
        char msg[32], wire[32];
        cli_human_bytes(p->message_bytes, msg, sizeof(msg));
        cli_human_bytes(p->wire_bytes, wire, sizeof(wire));
        printf("compressed: %s on the wire for %s of messages (ratio %.2f)\n", wire, msg,
               p->wire_bytes ? (double)p->message_bytes / (double)p->wire_bytes : 1.0);
    }
    if (p->sel) {
        char left[32];
        cli_human_bytes(p->excluded_bytes, left, sizeof(left));
        printf("%llu excluded (%s of files; a directory left out counts once)\n",
               (unsigned long long)p->excluded, left);
    }
}

/* Opens SRC_DIR and reads its names before anything goes to the server. */
static int open_source(push *p)
{
    p->root = open(p->src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (p->root < 0) {
        int err = errno;
        cli_warn("%s: %s", p->src, strerror(err));
        return err == ENOENT || err == ENOTDIR ? CLI_EXIT_USAGE : CLI_EXIT_TRANSFER;
    }
    struct stat st;
    char why[512];
    if (fstat(p->root, &st) != 0) {
        cli_warn("%s: %s", p->src, strerror(errno));
        return CLI_EXIT_TRANSFER;
    }
    int rc = cli_select_new(p->opt, p->src, st.st_dev, &p->sel, why, sizeof(why));
    if (rc != 0) {
        cli_warn("%s", why);
        return rc == ENOMEM ? CLI_EXIT_TRANSFER : CLI_EXIT_USAGE;
    }
    p->path[0] = '\0';
    if (push_frame(p, p->root, 0) != 0) {
        cli_warn("%s: cannot read the directory: %s", p->src, strerror(errno));
        return CLI_EXIT_TRANSFER;
    }
    return 0;
}

int cli_push(const cli_options *opt, int argc, char **argv)
{
    (void)argc;
    cli_url url;
    if (cli_url_parse(argv[1], &url) != 0)
        return CLI_EXIT_USAGE;
    if (url.dataset[0] == '\0') {
        cli_warn("%s: push needs a dataset (haul://HOST:PORT/DATASET)", argv[1]);
        return CLI_EXIT_USAGE;
    }
    if (url.snapshot[0]) {
        cli_warn("%s: push makes a new snapshot; leave out @%s", argv[1], url.snapshot);
        return CLI_EXIT_USAGE;
    }

    push *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return CLI_EXIT_TRANSFER;
    p->opt = opt;
    p->src = argv[0];
    p->root = -1;
    p->se_dirfd = -1;
    p->start = cli_now();
    size_t nbuf = (size_t)(opt->queue / HSP_MESSAGE_MAX) + 4;
    p->history = calloc(HISTORY_MAX, sizeof(*p->history));
    p->hash = XXH3_createState();
    p->readbuf = malloc(HSP_BLOCK);
    int status = CLI_EXIT_OK;
    if (pool_init(&p->pool, nbuf) != 0 || p->history == NULL || p->hash == NULL ||
        p->readbuf == NULL) {
        cli_warn("out of memory");
        status = CLI_EXIT_TRANSFER;
    }
    if (status == CLI_EXIT_OK)
        status = open_source(p);

    cli_client *c = &p->c;
    c->on_record = on_record;
    c->on_sent = on_sent;
    c->arg = p;
    if (status == CLI_EXIT_OK) {
        /* The count runs beside the push from the start; without it (no
         * thread to be had) the line shows what is done only. */
        p->progress = cli_progress_open(opt, NULL);
        c->progress = p->progress;
        cli_scan_start(opt, p->src, p->root, p->progress, &p->scan);
    }
    if (status == CLI_EXIT_OK)
        status = cli_open(c, opt, &url, HSP_PUSH);
    /* After cli_open(): a server that does not know compression turns it
     * off. */
    if (status == CLI_EXIT_OK && c->compress) {
        p->zstd = hsp_zstd_new(c->compress);
        p->zbuf = malloc(HSP_MESSAGE_MAX);
        if (p->zstd == NULL || p->zbuf == NULL) {
            cli_warn("out of memory for compression");
            status = CLI_EXIT_TRANSFER;
        }
    }
    while (status == CLI_EXIT_OK && !c->have_result && !c->failed) {
        int progress = produce(p);
        if (c->closed && !c->have_result) {
            cli_fail(c, CLI_EXIT_TRANSFER, "the server ended the session without a result");
            break;
        }
        cli_pump(c, progress ? 0 : p->starved ? 5 : 1000);
    }
    if (status == CLI_EXIT_OK)
        status = c->failed;
    double secs = cli_now() - p->start;
    cli_scan_stop(p->scan);
    p->scan = NULL;
    cli_progress_finish(p->progress,
                        status == CLI_EXIT_OK && c->result.status == 0 && p->committed);
    if (status == CLI_EXIT_OK && c->result.status == 0 && !p->committed) {
        cli_warn("the server reported success before the push was complete");
        status = CLI_EXIT_TRANSFER;
    }
    if (status == CLI_EXIT_OK) {
        status = cli_result_status(c, "push");
        if (status == CLI_EXIT_OK) {
            print_summary(p, secs);
            /* Skipped files, and entries the server had to leave out
             * (a hard link whose first name was skipped), mean that not
             * everything asked for was done. */
            if (p->skipped || p->problems)
                status = CLI_EXIT_SKIPPED;
        }
        cli_close(c);
    }
    cli_free(c);
    cli_progress_free(p->progress);

    if (p->cur.active)
        close(p->cur.fd);
    while (p->depth)
        pop_frame(p);
    if (p->root >= 0)
        close(p->root);
    for (pfile *f = p->head, *next; f; f = next) {
        next = f->next;
        free(f);
    }
    for (pfile *f = p->retry_head, *next; f; f = next) {
        next = f->next;
        free(f);
    }
    for (size_t k = 0; p->history && k < p->hist_count; k++)
        free(p->history[(p->hist_head + k) % HISTORY_MAX]);
    free(p->history);
    free(p->stack);
    link_free(&p->links);
    cli_select_free(p->sel);
    if (p->hash)
        XXH3_freeState(p->hash);
    free(p->readbuf);
    hsp_zstd_free(p->zstd);
    free(p->zbuf);
    /* The engine is gone: every buffer is back or was never lent. */
    pool_fini(&p->pool);
    free(p);
    return status;
}
