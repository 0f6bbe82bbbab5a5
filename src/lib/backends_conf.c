/* backends_conf.c - compute_backends.yaml reader (see backends_conf.h). Being written. */
#include <errno.h>
#include <stdio.h>

#include "backends_conf.h"

int titan_conf_load_file(const char *path, titan_conf *out, char *err, size_t errcap)
{
    snprintf(err, errcap, "%s: not implemented yet", path);
    return -ENOTSUP;
}

int titan_conf_load_string(const char *text, size_t len, const char *name, const char *dir, titan_conf *out,
                           char *err, size_t errcap)
{
    snprintf(err, errcap, "%s: not implemented yet", name);
    return -ENOTSUP;
}
