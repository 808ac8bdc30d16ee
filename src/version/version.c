/*
 * version.c - the version lines of haul and hauld (version.h).
 */
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <xxhash.h>
#ifdef HAUL_HAVE_ZSTD
#include <zstd.h>
#endif
#ifdef HAUL_HAVE_RADOS
#include <rados/librados.h>
#endif

#include "haul.h"
#include "proto/store.h"
#include "version/build.h"
#include "version/git.h"
#include "version/version.h"

void version_print(FILE *f, const char *program)
{
    const char *git = HAUL_BUILD_GIT;
    if (*git)
        fprintf(f, "%s %s (%s)\n", program, HAUL_BUILD_VERSION, git);
    else
        fprintf(f, "%s %s\n", program, HAUL_BUILD_VERSION);
    fprintf(f, "protocol %d, storage protocol %s\n", HAUL_PROTOCOL_VERSION, HSP_MAGIC);

    /* The libraries as they run, which a shared library's upgrade may
     * have changed since the build; OpenSSL's build version beside it
     * when it differs, since that is what a security notice names. */
    const char *ssl = OpenSSL_version(OPENSSL_VERSION);
    if (OpenSSL_version_num() != OPENSSL_VERSION_NUMBER)
        fprintf(f, "%s (built with %s)\n", ssl, OPENSSL_VERSION_TEXT);
    else
        fprintf(f, "%s\n", ssl);
    unsigned xxh = XXH_versionNumber();
    fprintf(f, "xxHash %u.%u.%u\n", xxh / 10000, xxh / 100 % 100, xxh % 100);
#ifdef HAUL_HAVE_ZSTD
    fprintf(f, "zstd %s\n", ZSTD_versionString());
#endif
#ifdef HAUL_HAVE_RADOS
    int major, minor, extra;
    rados_version(&major, &minor, &extra);
    fprintf(f, "librados %d.%d.%d\n", major, minor, extra);
#endif
}
