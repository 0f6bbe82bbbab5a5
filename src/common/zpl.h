/* zpl.h - loads a CZMQ certificate (ZPL text) file safely, for the worker and the CLI. */
#ifndef TITAN_COMMON_ZPL_H
#define TITAN_COMMON_ZPL_H

#include <czmq.h>

/* The largest certificate file read. */
#define TITAN_ZPL_MAX_BYTES 65536

/* Parses the regular file `path` (at most TITAN_ZPL_MAX_BYTES, no NUL bytes) as ZPL.
 * Returns the tree (the caller's: zconfig_destroy) or NULL. It reads the file itself
 * because zconfig_load, which zcert_load uses, leaks on a syntax error (CZMQ 4.2). */
zconfig_t *titan_zpl_load(const char *path);

#endif
