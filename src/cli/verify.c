/*
 * verify.c - haul verify haul://HOST:PORT/DATASET[@SNAPSHOT]: the server
 * re-reads every file of the snapshot and checks it against the manifest
 * (docs/store-protocol.md, VERIFY). Each PROBLEM is printed as it comes;
 * the RESULT says how many files were checked. Exit status 0 when
 * everything matched, 5 when not.
 */
#include <errno.h>
#include <string.h>

#include "cli/client.h"
#include "cli/progress.h"

typedef struct verify {
    const cli_options *opt;
    uint64_t problems;
    cli_progress *progress;
} verify;

static int on_record(void *arg, const hsp_record *rec)
{
    verify *v = arg;
    switch (rec->type) {
    case HSP_PROBLEM:
        /* stdout may be the terminal the line is on. */
        cli_progress_clear();
        cli_progress_problem(v->progress);
        if (v->opt->json) {
            fputs(v->problems ? "," : "", stdout);
            cli_put_json_text(stdout, (const char *)rec->data, rec->data_len);
        } else {
            fputs("problem: ", stdout);
            cli_put_path(stdout, (const char *)rec->data, rec->data_len);
            putchar('\n');
        }
        v->problems++;
        return 0;
    case HSP_RESULT:
        return 0;
    default:
        cli_warn("the server sent an unexpected record (type %d); giving up", rec->type);
        return CLI_EXIT_TRANSFER;
    }
}

int cli_verify(const cli_options *opt, int argc, char **argv)
{
    (void)argc;
    cli_url url;
    if (cli_url_parse(argv[0], &url) != 0)
        return CLI_EXIT_USAGE;
    if (url.dataset[0] == '\0') {
        cli_warn("%s: verify needs a dataset (haul://HOST:PORT/DATASET[@SNAPSHOT])", argv[0]);
        return CLI_EXIT_USAGE;
    }
    /* The server reports nothing until its RESULT but problems: the line
     * shows the time it has been checking, what it checks (from the
     * dataset's list) and the problems so far. */
    verify v = {.opt = opt, .progress = cli_progress_open(opt, "checking on the server")};
    cli_client c = {.on_record = on_record, .arg = &v, .progress = v.progress, .want_totals = 1};
    double start = cli_now();
    int status = cli_open(&c, opt, &url, HSP_VERIFY);
    if (status == CLI_EXIT_OK) {
        if (opt->json)
            fputs("{\"problem_list\":[", stdout);
        /* No timeout of our own: re-reading a large snapshot takes as long
         * as it takes, and a lost server fails the session. */
        cli_wait_result(&c);
        status = c.failed;
        /* The last line says what was checked: a verify quicker than the
         * list waits for it (a round trip at most). */
        if (v.progress)
            cli_list_wait(&c);
        cli_progress_finish(v.progress, status == CLI_EXIT_OK && c.have_result);
        const hsp_record *r = &c.result;
        double secs = cli_now() - start;
        if (status == CLI_EXIT_OK)
            status = r->status == 0 && v.problems == 0 ? CLI_EXIT_OK : CLI_EXIT_VERIFY;
        if (opt->json) {
            printf("],\"problems\":%llu,\"snapshot\":\"%s\",\"files\":%llu,\"bytes\":%llu,"
                   "\"status\":%d,\"ok\":%s,\"seconds\":%.3f,\"text\":",
                   (unsigned long long)v.problems, r->snapshot, (unsigned long long)r->files,
                   (unsigned long long)r->bytes, (int)r->status,
                   status == CLI_EXIT_OK ? "true" : "false", secs);
            cli_put_json_text(stdout, c.result_text, strlen(c.result_text));
            fputs("}\n", stdout);
        } else if (c.have_result) {
            char size[32];
            cli_human_bytes(r->bytes, size, sizeof(size));
            if (r->snapshot[0])
                printf("snapshot %s: ", r->snapshot);
            printf("%llu files, %s checked in %.2f s: ", (unsigned long long)r->files, size, secs);
            if (status == CLI_EXIT_OK) {
                puts("everything matches the manifest");
            } else {
                printf("%llu problem%s", (unsigned long long)v.problems,
                       v.problems == 1 ? "" : "s");
                /* The server's own words, and its status when that is
                 * more than "the content differs". */
                if (c.result_text[0]) {
                    fputs(": ", stdout);
                    cli_put_path(stdout, c.result_text, strlen(c.result_text));
                }
                if (r->status && r->status != EIO && r->status != EBADMSG)
                    printf(" (%s)", strerror(r->status));
                putchar('\n');
            }
        }
        if (status == CLI_EXIT_OK)
            cli_close(&c);
    }
    cli_free(&c);
    cli_progress_free(v.progress);
    return status;
}
