/*
 * cert.h - haul cert: the certificates that haul's TLS needs, made with
 * OpenSSL's API (a CA, server certificates, principals' client
 * certificates, a CRL) and shown in terms of what they grant.
 */
#ifndef HAUL_CLI_CERT_H
#define HAUL_CLI_CERT_H

#include <stddef.h>

/*
 * Runs "haul cert SUBCOMMAND ...". argv[0] is "cert"; the subcommand parses
 * its own options, which differ from those of the transfer subcommands, so
 * main() dispatches here before it parses any. Returns an exit status:
 * CLI_EXIT_OK, or CLI_EXIT_USAGE for a bad command line or any failure
 * (after printing why).
 */
int cli_cert(int argc, char **argv);

/*
 * Reads the principal a client certificate (PEM) authenticates: its one
 * subjectAltName URI "haul:principal:NAME". Returns 0 with NAME in out,
 * or -1 with why in out.
 */
int cli_cert_principal(const char *path, char *out, size_t size);

#endif
