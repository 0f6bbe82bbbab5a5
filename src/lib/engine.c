/* engine.c - the worker's compute code in-process (see engine.h). Being written. */
#include <errno.h>
#include <stdio.h>

#include "engine.h"

int titan_engine_new(const char *device, int blas_threads, titan_engine **out, char *err, size_t errcap)
{
    snprintf(err, errcap, "not implemented yet");
    return -ENOTSUP;
}

void titan_engine_destroy(titan_engine **e)
{
    if (e) *e = NULL;
}

int titan_engine_call(titan_engine *e, const char *header_json, const titan_frame *frames, size_t nframes,
                      titan_reply **reply)
{
    return -ENOTSUP;
}

const char *titan_engine_device_name(const titan_engine *e)
{
    return "";
}

const char *titan_engine_backend(const titan_engine *e)
{
    return "";
}
