/*
 * version.h - what `haul --version` and `hauld --version` print: haul's
 * version (CMake's project(VERSION), through the generated
 * version/build.h), the commit it was built from when the build knew it
 * (`git describe`, version/git.h), the protocol versions, and the
 * versions of the libraries the program runs with.
 *
 * Compiled into each program (not into a library of its own), so that it
 * sees the libraries that program links: hauld's RADOS store, say.
 */
#ifndef HAUL_VERSION_VERSION_H
#define HAUL_VERSION_VERSION_H

#include <stdio.h>

/* Prints the version lines of `program` on f; the first line is
 * "PROGRAM VERSION" (with " (DESCRIBE)" when the commit is known), for
 * scripts. */
void version_print(FILE *f, const char *program);

#endif
