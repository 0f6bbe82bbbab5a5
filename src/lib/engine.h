/* engine.h - the worker's compute code (request decoding, ops, backends) run in-process, with no
 * socket in between: the router's `type: local` backends. Internal to libtitan. */
#ifndef TITAN_ENGINE_H
#define TITAN_ENGINE_H

#include <stddef.h>

#include "titan/client.h"

typedef struct titan_engine titan_engine;

/* Opens the device `device` ("auto", "cpu", "cuda", "cuda:N") with `blas_threads` CPU threads (0: all
 * cores). Returns 0 and *out, or -ENODEV (no such device), -ENOTSUP (this build lacks the backend),
 * -ENOMEM, with a sentence in err. */
int titan_engine_new(const char *device, int blas_threads, titan_engine **out, char *err, size_t errcap);

/* Frees; takes NULL, sets *e to NULL. */
void titan_engine_destroy(titan_engine **e);

/* Runs one request exactly as a worker would (same ops, same limits, same replies, error replies
 * included) on the calling thread. The frames are read in place, never copied or kept. Returns 0 and
 * *reply (free with titan_reply_destroy), or -ENOMEM / -EINVAL. Safe to call from several threads. */
int titan_engine_call(titan_engine *e, const char *header_json, const titan_frame *frames, size_t nframes,
                      titan_reply **reply);

/* The device's name ("Intel(R) Xeon(R) ..." or the GPU's) and backend ("cpu", "cuda"). Borrowed. */
const char *titan_engine_device_name(const titan_engine *e);
const char *titan_engine_backend(const titan_engine *e);

#endif
