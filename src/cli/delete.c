/*
 * delete.c - haul delete haul://HOST:PORT/DATASET@SNAPSHOT removes one
 * snapshot; haul prune haul://HOST:PORT/DATASET --keep N removes all but
 * the N newest (docs/store-protocol.md, DELETE). Both need the delete
 * right on the server (hauld(8), "Principals"); prune also reads the
 * list of snapshots, which needs the read right.
 *
 * A deletion is one small request: it goes over one connection, whatever
 * -P says.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/client.h"

static int no_records(void *arg, const hsp_record *rec)
{
    (void)arg;
    if (rec->type == HSP_RESULT)
        return 0;
    if (rec->type == HSP_PROBLEM) {
        cli_server_problem(rec);
        return 0;
    }
    cli_warn("the server sent an unexpected record (type %d); giving up", rec->type);
    return CLI_EXIT_TRANSFER;
}

/* Runs a request that answers with its RESULT only. */
static int run_request(const cli_options *opt, const cli_url *url, int op, const char *what,
                       cli_client *c)
{
    int status = cli_open(c, opt, url, op);
    if (status == CLI_EXIT_OK) {
        cli_wait_result(c);
        status = c->failed ? c->failed : cli_result_status(c, what);
        if (status == CLI_EXIT_OK)
            cli_close(c);
    }
    return status;
}

/* Deletes one snapshot and says so. */
static int delete_one(const cli_options *opt, const cli_url *url)
{
    cli_client c = {.on_record = no_records};
    int status = run_request(opt, url, HSP_DELETE, "delete", &c);
    if (status == CLI_EXIT_OK && !opt->quiet && !opt->json) {
        /* The server's words: "snapshot ID deleted: N bytes freed". */
        cli_put_path(stdout, c.result_text, strlen(c.result_text));
        putchar('\n');
    }
    cli_free(&c);
    return status;
}

int cli_delete(const cli_options *opt, int argc, char **argv)
{
    (void)argc;
    cli_url url;
    if (cli_url_parse(argv[0], &url) != 0)
        return CLI_EXIT_USAGE;
    if (url.dataset[0] == '\0' || url.snapshot[0] == '\0') {
        cli_warn("%s: delete names one snapshot (haul://HOST:PORT/DATASET@SNAPSHOT)", argv[0]);
        return CLI_EXIT_USAGE;
    }
    cli_options one = *opt;
    one.connections = 1;
    int status = delete_one(&one, &url);
    if (opt->json)
        printf("{\"deleted\":[%s%s%s],\"ok\":%s}\n", status == CLI_EXIT_OK ? "\"" : "",
               status == CLI_EXIT_OK ? url.snapshot : "", status == CLI_EXIT_OK ? "\"" : "",
               status == CLI_EXIT_OK ? "true" : "false");
    return status;
}

/* The ids of a dataset's snapshots, oldest first (as the server lists
 * them). */
typedef struct idlist {
    char (*v)[HSP_SNAPSHOT_MAX + 1];
    size_t n, cap;
} idlist;

static int take_id(void *arg, const hsp_record *rec)
{
    idlist *l = arg;
    if (rec->type != HSP_SNAPINFO)
        return no_records(arg, rec);
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        void *v = realloc(l->v, cap * sizeof(*l->v));
        if (v == NULL) {
            cli_warn("out of memory for the list of snapshots");
            return CLI_EXIT_TRANSFER;
        }
        l->v = v;
        l->cap = cap;
    }
    size_t n = strnlen(rec->name, HSP_SNAPSHOT_MAX);
    memcpy(l->v[l->n], rec->name, n);
    l->v[l->n++][n] = '\0';
    return 0;
}

int cli_prune(const cli_options *opt, int argc, char **argv)
{
    (void)argc;
    cli_url url;
    if (cli_url_parse(argv[0], &url) != 0)
        return CLI_EXIT_USAGE;
    if (url.dataset[0] == '\0' || url.snapshot[0] != '\0') {
        cli_warn("%s: prune names a dataset (haul://HOST:PORT/DATASET)", argv[0]);
        return CLI_EXIT_USAGE;
    }
    if (!opt->keep_set) {
        cli_warn("prune needs --keep N: how many of the newest snapshots to keep");
        return CLI_EXIT_USAGE;
    }
    cli_options one = *opt;
    one.connections = 1;
    idlist ids = {0};
    cli_client c = {.on_record = take_id, .arg = &ids};
    int status = run_request(&one, &url, HSP_LIST, "listing the snapshots", &c);
    cli_free(&c);
    size_t deleted = 0;
    if (status == CLI_EXIT_OK) {
        size_t drop = ids.n > opt->keep ? ids.n - opt->keep : 0;
        for (size_t i = 0; i < drop && status == CLI_EXIT_OK; i++) {
            cli_url u = url;
            snprintf(u.snapshot, sizeof(u.snapshot), "%s", ids.v[i]);
            status = delete_one(&one, &u);
            if (status == CLI_EXIT_OK)
                deleted++;
        }
        if (!opt->quiet && !opt->json && status == CLI_EXIT_OK)
            printf("%zu snapshot%s deleted, %zu kept\n", deleted, deleted == 1 ? "" : "s",
                   ids.n - deleted);
    }
    if (opt->json) {
        printf("{\"deleted\":[");
        for (size_t i = 0; i < deleted; i++)
            printf("%s\"%s\"", i ? "," : "", ids.v[i]);
        printf("],\"kept\":%zu,\"ok\":%s}\n", ids.n - deleted,
               status == CLI_EXIT_OK ? "true" : "false");
    }
    free(ids.v);
    return status;
}
