/* select.h - the device choice of titan-worker and of libtitan's in-process engine: the CUDA backend
 * module when a GPU is there, else the CPU. */
#ifndef TITAN_WORKER_BACKENDS_SELECT_H
#define TITAN_WORKER_BACKENDS_SELECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* What the CUDA backend is opened with. */
typedef struct {
    uint64_t pool_cache_bytes; /* free device memory kept for reuse; 0: a quarter of the device's */
    int executors;             /* executor threads (each gets its own streams and cuBLAS handle) */
} titan_cuda_opts;

/* The CUDA backend module's entry point, "titan_backend_cuda_open" in titan-backend-cuda.so: opens
 * device `index`. Returns 0 and *out; -ENODEV when there is no such device or no usable driver;
 * another -errno for other failures; err says which. */
typedef int (*titan_cuda_open_fn)(int index, const titan_cuda_opts *opts, titan_backend **out, char *err,
                                  size_t errcap);
#define TITAN_CUDA_MODULE "titan-backend-cuda.so"
#define TITAN_CUDA_ENTRY "titan_backend_cuda_open"

/* Opens the backend that `device` names (auto, cpu, cuda, cuda:N). "auto" takes CUDA device 0 when
 * the CUDA module loads and finds a device, else the CPU, and says why in `why` (empty when there
 * was nothing to say); *why_warns is true when that is worth a warning (a GPU driver is there but
 * CUDA failed), false when it is routine (no GPU at all). Returns 0 and *out, or -errno with err
 * set: -EINVAL (a bad name), -ENOTSUP (no CUDA module) or -ENODEV (no such device). `opts` may be NULL
 * (the defaults). The CUDA module is $TITAN_CUDA_MODULE, else titan-backend-cuda.so where module.c
 * finds it (beside the program or libtitan.so, then LIBDIR/titan). */
int titan_backend_select(const char *device, int blas_threads, const titan_cuda_opts *opts,
                         titan_backend **out, char *why, size_t whycap, bool *why_warns, char *err,
                         size_t errcap);

#endif
