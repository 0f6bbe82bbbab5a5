/* reply_internal.h - builds a titan_reply outside client.c (for the job client); internal to libtitan. */
#ifndef TITAN_REPLY_INTERNAL_H
#define TITAN_REPLY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "titan/client.h"

/* Makes a reply from the malloc'd NUL-terminated *header and the n (<= 64) malloc'd frames data[i] of
 * sizes[i] bytes, taking ownership of all of them without copying: *header and every data[i] are set to
 * NULL, and freed on failure too. Returns 0 and *out (free with titan_reply_destroy), -EINVAL or -ENOMEM. */
int titan_reply_adopt(char **header, void **data, const size_t *sizes, size_t n, titan_reply **out);
/* The same, where pooled[i] (pooled may be NULL: none) says that data[i] came from the host buffer pool
 * (titan_hostbuf_alloc, src/core/hostpool.h) and goes back to it. */
int titan_reply_adopt_pooled(char **header, void **data, const size_t *sizes, const bool *pooled, size_t n,
                             titan_reply **out);

#endif
