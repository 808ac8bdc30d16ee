/*
 * fault_proxy_main.c - the program fault-proxy: the fault-injecting proxy
 * of fault_proxy.h between real processes, for end-to-end tests.
 *
 *   fault-proxy --listen 127.0.0.1:0 --target HOST:PORT [--seed N]
 *               [--max-faults N]
 *
 * It prints "listening HOST:PORT" as the first line of its standard
 * output once it accepts connections, and forwards each one to the
 * target. Without --seed it injects nothing by itself; with it, it
 * applies the seeded schedule (fault_proxy.h), at most --max-faults
 * disruptive faults (default 4). Applied faults are written to standard
 * error. Signals:
 *
 *   SIGUSR1   a partition begins: nothing is forwarded either way on any
 *             connection and nothing new is accepted; nothing is sent
 *             either (a blackhole, not a reset).
 *   SIGUSR2   the partition ends; the connections carry on.
 *   SIGHUP    every connection is reset (RST both ways).
 *   SIGTERM, SIGINT  exit, status 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_proxy.h"

static void usage(void)
{
    fprintf(stderr, "usage: fault-proxy --listen HOST:PORT --target HOST:PORT [--seed N] "
                    "[--max-faults N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    fault_proxy_config config;
    fault_proxy_config_init(&config);
    config.trace = stderr;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *value = argv[++i];
        char *end = NULL;
        if (strcmp(arg, "--listen") == 0) {
            config.listen = value;
        } else if (strcmp(arg, "--target") == 0) {
            config.target = value;
        } else if (strcmp(arg, "--seed") == 0) {
            errno = 0;
            config.seed = strtoull(value, &end, 0);
            if (errno != 0 || *end != '\0')
                usage();
            config.faults = 1;
        } else if (strcmp(arg, "--max-faults") == 0) {
            errno = 0;
            unsigned long n = strtoul(value, &end, 0);
            if (errno != 0 || *end != '\0' || n > 1000000)
                usage();
            config.max_faults = (unsigned)n;
        } else {
            usage();
        }
    }
    if (config.target == NULL)
        usage();

    /* The signals are taken by sigwaitinfo() below; blocked before the
     * proxy's thread starts, so that it inherits the mask and never takes
     * one. */
    sigset_t set;
    sigemptyset(&set);
    int signals[] = {SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT};
    for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
        sigaddset(&set, signals[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    fault_proxy *proxy;
    if (fault_proxy_start(&config, &proxy) < 0)
        return 1;
    printf("listening %s\n", fault_proxy_address(proxy));
    fflush(stdout);

    for (;;) {
        int sig = sigwaitinfo(&set, NULL);
        if (sig == SIGUSR1) {
            fault_proxy_partition(proxy, 1);
        } else if (sig == SIGUSR2) {
            fault_proxy_partition(proxy, 0);
        } else if (sig == SIGHUP) {
            fault_proxy_reset_all(proxy);
        } else if (sig == SIGTERM || sig == SIGINT) {
            break;
        }
    }
    fault_proxy_stop(proxy);
    return 0;
}
