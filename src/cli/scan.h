/*
 * scan.h - the totals of a push: a thread of its own walks SRC_DIR ahead
 * of the push, as the push walks it (the same selection, select.h; the
 * same symbolic links not followed; a file with several links counted
 * once), and counts its regular files and their bytes into the status
 * line (progress.h). The push never waits for it.
 *
 * What it counts is what the tree holds while it walks; the push may see
 * files that changed since. The status line shows the count as a lower
 * bound until the walk is over, and the last line takes what the push
 * did as the total.
 */
#ifndef HAUL_CLI_SCAN_H
#define HAUL_CLI_SCAN_H

#include "cli/client.h"
#include "cli/progress.h"

typedef struct cli_scan cli_scan;

/*
 * Starts counting the tree whose root directory is open as root (the
 * directory is opened again; the descriptor stays the caller's), src being its name as
 * given, with a selection of its own made from opt. Returns 0 with *out
 * set, or -1 when the thread cannot be had (the push goes on without
 * totals; nothing was printed). pr must outlive the scan.
 */
int cli_scan_start(const cli_options *opt, const char *src, int root, cli_progress *pr,
                   cli_scan **out);

/* Stops the walk where it is, waits for the thread and frees the scan
 * (NULL is fine). Main thread. */
void cli_scan_stop(cli_scan *s);

#endif
