/*
 * progress_format_test.c - the status line of haul (progress.h): sizes,
 * rates, times, the rate over its window, paths cut in the middle, and
 * whole lines cut to the terminal's width.
 */
#include <stdio.h>
#include <string.h>

#include "cli/progress.h"
#include "harness.h"

static const char *bytes(uint64_t n)
{
    static char out[32];
    cli_progress_bytes(n, out, sizeof(out));
    return out;
}

TEST(sizes_in_binary_units)
{
    CHECK_STR_EQ(bytes(0), "0 B");
    CHECK_STR_EQ(bytes(1023), "1023 B");
    CHECK_STR_EQ(bytes(1024), "1.0 KiB");
    CHECK_STR_EQ(bytes(1536), "1.5 KiB");
    CHECK_STR_EQ(bytes(12ull * 1024 * 1024 * 1024 + 300ull * 1024 * 1024), "12.3 GiB");
    CHECK_STR_EQ(bytes(UINT64_MAX), "16.0 EiB");
}

TEST(rates_and_unknown_rates)
{
    char out[32];
    cli_progress_rate(45.6 * 1024 * 1024, out, sizeof(out));
    CHECK_STR_EQ(out, "45.6 MiB/s");
    cli_progress_rate(0, out, sizeof(out));
    CHECK_STR_EQ(out, "0 B/s");
    cli_progress_rate(-1, out, sizeof(out));
    CHECK_STR_EQ(out, "--");
    cli_progress_rate(1.0 / 0.0, out, sizeof(out));
    CHECK_STR_EQ(out, "--");
}

TEST(times_as_clock_readings)
{
    char out[32];
    cli_progress_time(7.9, out, sizeof(out));
    CHECK_STR_EQ(out, "0:07");
    cli_progress_time(754, out, sizeof(out));
    CHECK_STR_EQ(out, "12:34");
    cli_progress_time(3723, out, sizeof(out));
    CHECK_STR_EQ(out, "1:02:03");
    cli_progress_time(999 * 3600.0 + 3599, out, sizeof(out));
    CHECK_STR_EQ(out, "999:59:59");
    cli_progress_time(1000 * 3600.0, out, sizeof(out));
    CHECK_STR_EQ(out, "--:--");
    cli_progress_time(-1, out, sizeof(out));
    CHECK_STR_EQ(out, "--:--");
    cli_progress_time(0.0 / 0.0, out, sizeof(out));
    CHECK_STR_EQ(out, "--:--");
}

TEST(rate_is_smoothed_over_its_window)
{
    cli_rate r = {0};
    CHECK(cli_rate_get(&r) < 0);
    cli_rate_add(&r, 100.0, 0);
    cli_rate_add(&r, 100.2, 1000);
    /* Less than the minimum span: not known yet. */
    CHECK(cli_rate_get(&r) < 0);
    /* 1 MB/s for 10 s, sampled every 0.1 s. */
    for (int i = 1; i <= 100; i++)
        cli_rate_add(&r, 100.0 + i * 0.1, (uint64_t)i * 100000);
    double rate = cli_rate_get(&r);
    CHECK(rate > 0.99e6 && rate < 1.01e6);
    /* The link stops: after the window, the rate is 0, not the average. */
    for (int i = 1; i <= 60; i++)
        cli_rate_add(&r, 110.0 + i * 0.1, 10000000);
    CHECK(cli_rate_get(&r) == 0);
    /* Samples closer than 0.1 s replace the last one and add none. */
    unsigned count = r.count;
    cli_rate_add(&r, 116.01, 10000000);
    cli_rate_add(&r, 116.02, 10000000);
    CHECK_EQ(r.count, count);
}

TEST(paths_are_shortened_in_the_middle)
{
    char out[256];
    const char *p = "home/alice/projects/haul/src/cli/progress.c";
    CHECK_EQ(cli_progress_shorten(p, strlen(p), 100, out, sizeof(out)), strlen(p));
    CHECK_STR_EQ(out, p);
    unsigned used = cli_progress_shorten(p, strlen(p), 20, out, sizeof(out));
    CHECK_EQ(used, 20);
    CHECK_EQ(strlen(out), 20);
    CHECK_STR_EQ(out, "home/ali...rogress.c");
    /* Too little room: no name at all rather than a useless one. */
    CHECK_EQ(cli_progress_shorten(p, strlen(p), 7, out, sizeof(out)), 0);
    CHECK_STR_EQ(out, "");
    /* Bytes that are no text are escaped, and count as what is shown. */
    const char raw[] = "a\x01\xff/b";
    CHECK_EQ(cli_progress_shorten(raw, 5, 80, out, sizeof(out)), 11);
    CHECK_STR_EQ(out, "a\\x01\\xff/b");
}

TEST(wide_characters_never_overflow_the_width)
{
    char out[256];
    /* Twenty characters of three bytes each (U+4E2D), two columns each. */
    char p[128] = "";
    for (int i = 0; i < 20; i++)
        strcat(p, "\xe4\xb8\xad");
    unsigned used = cli_progress_shorten(p, strlen(p), 21, out, sizeof(out));
    CHECK_LE(used, 21);
    CHECK(strstr(out, "...") != NULL);
    /* Cut at characters, never inside one. */
    const char *dots = strstr(out, "...");
    CHECK_EQ((size_t)(dots - out) % 3, 0);
    CHECK_EQ(strlen(dots + 3) % 3, 0);
}

static cli_progress_view base_view(void)
{
    cli_progress_view v = {0};
    v.elapsed = 12.4;
    v.counting = 1;
    v.bytes = 1288490189;         /* 1.2 GiB */
    v.bytes_total = 43057152819u; /* 40.1 GiB */
    v.files = 120;
    v.files_total = 9312;
    v.total = CLI_TOTAL_FINAL;
    v.rate = 45.6 * 1024 * 1024;
    v.file = "src/cli/progress.c";
    v.file_len = strlen(v.file);
    return v;
}

TEST(line_with_a_total)
{
    cli_progress_view v = base_view();
    char out[512];
    size_t n = cli_progress_format(&v, 0, out, sizeof(out));
    CHECK_EQ(n, strlen(out));
    CHECK_STR_EQ(out, "[0:12] 1.2 GiB of 40.1 GiB (2%), 120/9312 files, 45.6 MiB/s, ETA 14:33, "
                      "src/cli/progress.c");
}

TEST(line_while_the_total_is_counted)
{
    cli_progress_view v = base_view();
    v.total = CLI_TOTAL_PARTIAL;
    char out[512];
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK_STR_EQ(out, "[0:12] 1.2 GiB of >=40.1 GiB, 120/>=9312 files, 45.6 MiB/s, "
                      "src/cli/progress.c");
    v.utf8 = 1;
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK_STR_EQ(out, "[0:12] 1.2 GiB of \u226540.1 GiB, 120/\u22659312 files, 45.6 MiB/s, "
                      "src/cli/progress.c");
}

TEST(line_without_a_total)
{
    cli_progress_view v = base_view();
    v.total = CLI_TOTAL_NONE;
    v.rate = -1;
    v.problems = 1;
    char out[512];
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK_STR_EQ(out, "[0:12] 1.2 GiB, 120 files, --, 1 problem, src/cli/progress.c");
}

TEST(line_of_a_label_only)
{
    cli_progress_view v = {0};
    v.label = "checking on the server";
    v.elapsed = 75;
    v.problems = 2;
    char out[512];
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK_STR_EQ(out, "[1:15] checking on the server, 2 problems");
    /* What is checked, once the server said. */
    v.total = CLI_TOTAL_FINAL;
    v.files_total = 31;
    v.bytes_total = 29045555;
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK_STR_EQ(out, "[1:15] checking on the server, 31 files, 27.7 MiB, 2 problems");
}

TEST(last_line_says_done)
{
    cli_progress_view v = base_view();
    v.bytes = v.bytes_total;
    v.files = v.files_total;
    v.finished = 1;
    v.file_len = 0;
    char out[512];
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK_STR_EQ(out, "[0:12] 40.1 GiB of 40.1 GiB (100%), 9312/9312 files, 45.6 MiB/s, done");
}

TEST(percent_reaches_100_only_when_done)
{
    cli_progress_view v = base_view();
    v.file_len = 0;
    v.bytes = v.bytes_total - 1;
    char out[512];
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK(strstr(out, "(99%)") != NULL);
    /* More done than counted ahead (a file grew): 100, not 101. */
    v.bytes = v.bytes_total + 5;
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK(strstr(out, "(100%)") != NULL);
    CHECK(strstr(out, "ETA 0:00") != NULL);
    /* A total of zero bytes (empty files only). */
    v.bytes = v.bytes_total = 0;
    cli_progress_format(&v, 0, out, sizeof(out));
    CHECK(strstr(out, "0 B of 0 B (100%)") != NULL);
}

TEST(line_fits_the_terminal)
{
    cli_progress_view v = base_view();
    char out[512];
    const char *full = "[0:12] 1.2 GiB of 40.1 GiB (2%), 120/9312 files, 45.6 MiB/s, ETA 14:33, ";
    /* The name is cut in the middle to what is left of the width. */
    size_t n = cli_progress_format(&v, 85, out, sizeof(out));
    CHECK_EQ(n, 84);
    CHECK(strncmp(out, full, strlen(full)) == 0);
    CHECK_STR_EQ(out + strlen(full), "src/...ess.c");
    /* Hardly room for a name: none. */
    n = cli_progress_format(&v, (unsigned)strlen(full) + 4, out, sizeof(out));
    CHECK_EQ(n, strlen(full) - 2);
    /* Narrower than the counts: they are cut, one column short of the
     * width, so that the terminal does not wrap. */
    n = cli_progress_format(&v, 30, out, sizeof(out));
    CHECK_EQ(n, 29);
    CHECK(strncmp(out, full, 29) == 0);
    /* ">=" as one character, cut at characters. */
    v.total = CLI_TOTAL_PARTIAL;
    v.utf8 = 1;
    for (unsigned w = 2; w < 100; w++) {
        n = cli_progress_format(&v, w, out, sizeof(out));
        unsigned cols = 0;
        for (size_t i = 0; i < n; i++)
            cols += ((unsigned char)out[i] & 0xc0) != 0x80;
        CHECK_LE(cols, w - 1);
        /* Never half of U+2265 at the end. */
        CHECK(n == 0 || ((unsigned char)out[n - 1] < 0x80 || (unsigned char)out[n - 1] == 0xa5));
    }
}

TEST(mode_follows_the_options_and_the_terminal)
{
    CHECK_EQ(cli_progress_mode(CLI_PROGRESS_AUTO, 0, 0, 1), CLI_PROGRESS_TTY);
    CHECK_EQ(cli_progress_mode(CLI_PROGRESS_AUTO, 0, 0, 0), CLI_PROGRESS_OFF);
    CHECK_EQ(cli_progress_mode(CLI_PROGRESS_AUTO, 1, 0, 1), CLI_PROGRESS_OFF);
    CHECK_EQ(cli_progress_mode(CLI_PROGRESS_AUTO, 0, 1, 1), CLI_PROGRESS_OFF);
    CHECK_EQ(cli_progress_mode(CLI_PROGRESS_FORCE, 0, 0, 0), CLI_PROGRESS_LINES);
    CHECK_EQ(cli_progress_mode(CLI_PROGRESS_FORCE, 1, 1, 1), CLI_PROGRESS_TTY);
    CHECK_EQ(cli_progress_mode(CLI_PROGRESS_NEVER, 0, 0, 1), CLI_PROGRESS_OFF);
}
