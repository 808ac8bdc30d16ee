/*
 * scan.c - the totals of a push, counted on a thread of their own (scan.h).
 *
 * The walk follows the push's rules (push.c, "the walk"): entries are
 * looked at with lstat semantics, directories opened with O_NOFOLLOW,
 * paths longer than HSP_PATH_MAX or not valid in a snapshot skipped, the
 * selection asked about every entry before a directory is entered. The
 * order of names does not matter for a count, so they are not sorted.
 * Errors are the push's to report: the scan passes over what it cannot
 * read.
 */
#include "cli/scan.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/select.h"

/* The totals go to the status line after this many entries, and at the
 * end. */
#define PUBLISH_EVERY 256

/* (device, inode) of the files with several links counted so far. */
typedef struct inode_set {
    struct inode_key {
        dev_t dev;
        ino_t ino;
        int used;
    } * slots;
    size_t cap, used;
} inode_set;

struct cli_scan {
    pthread_t thread;
    atomic_int stop;
    int root;
    cli_select *sel;
    cli_progress *pr;
    inode_set links;
    uint64_t files, bytes, entries;
    int failed; /* out of memory: the count would be wrong, so none is shown */
    char path[HSP_PATH_MAX + 2 + 256];
};

static size_t inode_hash(dev_t dev, ino_t ino, size_t cap)
{
    uint64_t x = (uint64_t)ino * 0x9E3779B97F4A7C15ull ^ (uint64_t)dev * 0xC2B2AE3D27D4EB4Full;
    return (size_t)(x ^ (x >> 29)) & (cap - 1);
}

/* Adds (dev, ino); 1 when it was new, 0 when seen, -1 out of memory. */
static int inode_add(inode_set *s, dev_t dev, ino_t ino)
{
    if (2 * (s->used + 1) > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 1024;
        struct inode_key *slots = calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return -1;
        for (size_t j = 0; j < s->cap; j++) {
            if (!s->slots[j].used)
                continue;
            size_t i = inode_hash(s->slots[j].dev, s->slots[j].ino, cap);
            while (slots[i].used)
                i = (i + 1) & (cap - 1);
            slots[i] = s->slots[j];
        }
        free(s->slots);
        s->slots = slots;
        s->cap = cap;
    }
    size_t i = inode_hash(dev, ino, s->cap);
    for (; s->slots[i].used; i = (i + 1) & (s->cap - 1))
        if (s->slots[i].dev == dev && s->slots[i].ino == ino)
            return 0;
    s->slots[i] = (struct inode_key){dev, ino, 1};
    s->used++;
    return 1;
}

static void publish(cli_scan *s, int state)
{
    cli_progress_total(s->pr, s->bytes, s->files, state);
}

/* Counts one entry of the directory dir; enters it when it is one. */
static void scan_dir(cli_scan *s, int dir, size_t prefix_len);

static void scan_entry(cli_scan *s, int dir, const char *name, size_t path_len)
{
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return;
    int sub = -1;
    int enter = S_ISDIR(st.st_mode);
    if (enter)
        sub = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int verdict = cli_select_skip(s->sel, s->path, path_len, &st, sub);
    if (verdict == CLI_SELECT_OUT) {
        if (sub >= 0)
            close(sub);
        return;
    }
    if (S_ISREG(st.st_mode)) {
        int counted = st.st_nlink > 1 ? inode_add(&s->links, st.st_dev, st.st_ino) : 1;
        if (counted < 0)
            s->failed = 1;
        if (counted > 0) {
            s->files++;
            s->bytes += (uint64_t)st.st_size;
        }
    }
    if (++s->entries % PUBLISH_EVERY == 0)
        publish(s, CLI_TOTAL_PARTIAL);
    if (sub >= 0 && verdict != CLI_SELECT_EMPTY) {
        s->path[path_len] = '/';
        scan_dir(s, sub, path_len + 1);
    } else if (sub >= 0) {
        close(sub);
    }
}

/* Walks the directory open as dir (closed here) whose path in s->path
 * takes prefix_len bytes ("" or ending in '/'). */
static void scan_dir(cli_scan *s, int dir, size_t prefix_len)
{
    DIR *d = fdopendir(dir);
    if (d == NULL) {
        close(dir);
        return;
    }
    struct dirent *de;
    while (!s->failed && !atomic_load_explicit(&s->stop, memory_order_relaxed) &&
           (de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (nm[0] == '.' && (nm[1] == '\0' || (nm[1] == '.' && nm[2] == '\0')))
            continue;
        size_t nlen = strlen(nm), path_len = prefix_len + nlen;
        if (path_len > HSP_PATH_MAX)
            continue;
        memcpy(s->path + prefix_len, nm, nlen);
        s->path[path_len] = '\0';
        if (!hsp_path_ok(s->path, path_len))
            continue;
        scan_entry(s, dir, nm, path_len);
    }
    closedir(d);
}

static void *scan_main(void *arg)
{
    cli_scan *s = arg;
    s->path[0] = '\0';
    scan_dir(s, s->root, 0);
    s->root = -1; /* closed by scan_dir */
    if (s->failed)
        publish(s, CLI_TOTAL_NONE);
    else if (!atomic_load(&s->stop))
        publish(s, CLI_TOTAL_FINAL);
    return NULL;
}

static void scan_free(cli_scan *s)
{
    if (s->root >= 0)
        close(s->root);
    cli_select_free(s->sel);
    free(s->links.slots);
    free(s);
}

int cli_scan_start(const cli_options *opt, const char *src, int root, cli_progress *pr,
                   cli_scan **out)
{
    *out = NULL;
    if (pr == NULL)
        return -1;
    cli_scan *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return -1;
    atomic_init(&s->stop, 0);
    s->pr = pr;
    /* A description of its own: a duplicate would share the position of
     * the push's reading of the directory. */
    s->root = openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;
    char why[512];
    /* The push made the same selection already and said what was wrong
     * with it. */
    if (s->root < 0 || fstat(s->root, &st) != 0 ||
        cli_select_new(opt, src, st.st_dev, &s->sel, why, sizeof(why)) != 0 ||
        pthread_create(&s->thread, NULL, scan_main, s) != 0) {
        scan_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

void cli_scan_stop(cli_scan *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->stop, 1);
    pthread_join(s->thread, NULL);
    scan_free(s);
}
