/* reply_internal.h - builds a titan_reply outside client.c (for the job client); internal to libtitan. */
#ifndef TITAN_REPLY_INTERNAL_H
#define TITAN_REPLY_INTERNAL_H

#include <stddef.h>

#include "titan/client.h"

/* Makes a reply from the malloc'd NUL-terminated *header and the n (<= 64) malloc'd frames data[i] of
 * sizes[i] bytes, taking ownership of all of them without copying: *header and every data[i] are set to
 * NULL, and freed on failure too. Returns 0 and *out (free with titan_reply_destroy), -EINVAL or -ENOMEM. */
int titan_reply_adopt(char **header, void **data, const size_t *sizes, size_t n, titan_reply **out);

#endif
