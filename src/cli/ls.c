/*
 * ls.c - haul ls haul://HOST:PORT[/DATASET[@SNAPSHOT]]: the datasets of the
 * principal, the snapshots of a dataset, or the entries of a snapshot
 * (docs/store-protocol.md, LIST).
 *
 * Lines are printed as the records arrive, so that a listing of a million
 * entries needs no memory for them; --json streams one object the same way.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/client.h"

enum { LIST_DATASETS, LIST_SNAPSHOTS, LIST_ENTRIES };

typedef struct ls {
    const cli_options *opt;
    int what;
    uint64_t count;
} ls;

static void put_time(int64_t t, char *out, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (t <= 0 || localtime_r(&tt, &tm) == NULL ||
        strftime(out, size, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(out, size, "-");
}

static const char *kind_name(int kind)
{
    switch (kind) {
    case HSP_FILE:
        return "file";
    case HSP_DIR:
        return "dir";
    case HSP_SYMLINK:
        return "symlink";
    case HSP_HARDLINK:
        return "hardlink";
    }
    return "?";
}

/* "drwxr-xr-x", with 'h' for a hard link. */
static void mode_string(int kind, uint32_t mode, char out[11])
{
    static const char type[] = "?-dlh";
    out[0] = kind >= HSP_FILE && kind <= HSP_HARDLINK ? type[kind] : '?';
    const char *rwx = "rwxrwxrwx";
    for (int i = 0; i < 9; i++)
        out[1 + i] = mode & (0400u >> i) ? rwx[i] : '-';
    if (mode & 04000)
        out[3] = out[3] == 'x' ? 's' : 'S';
    if (mode & 02000)
        out[6] = out[6] == 'x' ? 's' : 'S';
    if (mode & 01000)
        out[9] = out[9] == 'x' ? 't' : 'T';
    out[10] = '\0';
}

static void print_snapinfo(ls *l, const hsp_record *rec)
{
    char when[32];
    put_time(rec->time, when, sizeof(when));
    if (l->opt->json) {
        printf("%s{\"name\":\"%s\",\"time\":%lld,\"files\":%llu,\"bytes\":%llu}",
               l->count ? "," : "", rec->name, (long long)rec->time, (unsigned long long)rec->files,
               (unsigned long long)rec->bytes);
    } else if (l->what == LIST_DATASETS) {
        printf("%-32s %s\n", rec->name, when);
    } else {
        char size[32];
        cli_human_bytes(rec->bytes, size, sizeof(size));
        printf("%-32s %s %10llu files %12s\n", rec->name, when, (unsigned long long)rec->files,
               size);
    }
}

static void print_entry(ls *l, const hsp_entry *e)
{
    if (l->opt->json) {
        printf("%s{\"type\":\"%s\",\"mode\":%u,\"uid\":%u,\"gid\":%u,\"size\":%llu,"
               "\"mtime\":%lld,\"mtime_nsec\":%u,\"path\":",
               l->count ? "," : "", kind_name(e->kind), e->mode, e->uid, e->gid,
               (unsigned long long)e->size, (long long)e->mtime_sec, e->mtime_nsec);
        cli_put_json_path(stdout, e->path, e->path_len);
        if (e->target_len) {
            printf(",\"target\":");
            cli_put_json_path(stdout, e->target, e->target_len);
        }
        if (e->kind == HSP_FILE) {
            char hex[33];
            hsp_hash_hex(&e->hash, hex);
            printf(",\"xxh3_128\":\"%s\"", hex);
        }
        putchar('}');
        return;
    }
    char mode[11], when[32];
    mode_string(e->kind, e->mode, mode);
    put_time(e->mtime_sec, when, sizeof(when));
    printf("%s %12llu %s ", mode, (unsigned long long)e->size, when);
    cli_put_path(stdout, e->path, e->path_len);
    if (e->target_len) {
        fputs(e->kind == HSP_SYMLINK ? " -> " : " => ", stdout);
        cli_put_path(stdout, e->target, e->target_len);
    }
    putchar('\n');
}

static int on_record(void *arg, const hsp_record *rec)
{
    ls *l = arg;
    if (rec->type == HSP_SNAPINFO && l->what != LIST_ENTRIES) {
        print_snapinfo(l, rec);
        l->count++;
        return 0;
    }
    if (rec->type == HSP_ENTRY && l->what == LIST_ENTRIES) {
        print_entry(l, &rec->entry);
        l->count++;
        return 0;
    }
    if (rec->type == HSP_RESULT)
        return 0;
    if (rec->type == HSP_PROBLEM) {
        cli_server_problem(rec);
        return 0;
    }
    cli_warn("the server sent an unexpected record (type %d); giving up", rec->type);
    return CLI_EXIT_TRANSFER;
}

int cli_ls(const cli_options *opt, int argc, char **argv)
{
    (void)argc;
    cli_url url;
    if (cli_url_parse(argv[0], &url) != 0)
        return CLI_EXIT_USAGE;
    ls l = {.opt = opt};
    l.what = url.dataset[0] == '\0'    ? LIST_DATASETS
             : url.snapshot[0] == '\0' ? LIST_SNAPSHOTS
                                       : LIST_ENTRIES;
    static const char *const keys[] = {"datasets", "snapshots", "entries"};

    cli_client c = {.on_record = on_record, .arg = &l};
    int status = cli_open(&c, opt, &url, HSP_LIST);
    if (status == CLI_EXIT_OK) {
        if (opt->json)
            printf("{\"%s\":[", keys[l.what]);
        else if (!opt->quiet && l.what == LIST_DATASETS)
            printf("%-32s %s\n", "DATASET", "LATEST SNAPSHOT");
        else if (!opt->quiet && l.what == LIST_SNAPSHOTS)
            printf("%-32s %-19s %16s %12s\n", "SNAPSHOT", "TIME", "FILES", "BYTES");
        cli_wait_result(&c);
        status = c.failed ? c.failed : cli_result_status(&c, "ls");
        if (opt->json)
            printf("],\"count\":%llu,\"complete\":%s}\n", (unsigned long long)l.count,
                   status == CLI_EXIT_OK ? "true" : "false");
        if (status == CLI_EXIT_OK)
            cli_close(&c);
    }
    cli_free(&c);
    return status;
}
