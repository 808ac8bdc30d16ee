/*
 * error.c - haul's error codes, their names and their messages, all
 * generated from the one table in haul.h.
 */
#include "haul.h"

static const char *const error_text[] = {
#define X(name, code, text) [code] = text,
    HAUL_FOREACH_ERROR(X)
#undef X
};

static const char *const error_name[] = {
#define X(name, code, text) [code] = #name,
    HAUL_FOREACH_ERROR(X)
#undef X
};

const char *haul_strerror(int code)
{
    if (code < 0)
        code = -code;
    if (code >= HAUL_ERROR_COUNT_ || error_text[code] == NULL)
        return "unknown error";
    return error_text[code];
}

const char *haul_errname(int code)
{
    if (code < 0)
        code = -code;
    if (code >= HAUL_ERROR_COUNT_ || error_name[code] == NULL)
        return "E?";
    return error_name[code];
}
