/* error.c - titan_fail, for the core's files that are also built on their own (the CUDA module, the fuzz targets):
 * it depends on nothing but libc. */
#include <stdarg.h>
#include <stdio.h>

#include "error.h"

int titan_fail(titan_error *err, const char *code, const char *fmt, ...)
{
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return -1;
}
