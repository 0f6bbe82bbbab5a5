/* cuda_err.h - how CUDA runtime and cuBLAS failures become replies. Plain C without CUDA headers
 * (the codes are the toolkits' stable enum values), so that it is tested on machines without CUDA. */
#ifndef TITAN_WORKER_CUDA_ERR_H
#define TITAN_WORKER_CUDA_ERR_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum {
    TITAN_CUDA_OK = 0,
    TITAN_CUDA_OOM,    /* device (or pinned host) memory ran out; the context is fine */
    TITAN_CUDA_NODEV,  /* no device, no driver, a driver too old for this runtime */
    TITAN_CUDA_NOCODE, /* this build has no kernel image for the device's architecture */
    TITAN_CUDA_STICKY, /* the context is poisoned: every later call fails until the process restarts */
    TITAN_CUDA_FAILED, /* anything else: this call failed, the context is fine */
} titan_cuda_class;

/* Classifies a cudaError_t value. */
titan_cuda_class titan_cuda_classify(int cuda_error);
/* Classifies a cublasStatus_t value. */
titan_cuda_class titan_cublas_classify(int cublas_status);
/* The name of a cublasStatus_t value ("CUBLAS_STATUS_ALLOC_FAILED"), or "CUBLAS_STATUS_<n>". Never NULL. */
const char *titan_cublas_status_name(int cublas_status, char *buf, size_t cap);

/* What a failure involved, for the reply's message. */
typedef struct {
    const char *what;     /* "cudaMalloc", "cublasSgemm"... */
    const char *name;     /* the error's name ("cudaErrorMemoryAllocation") */
    const char *text;     /* the runtime's description, or NULL */
    uint64_t need_bytes;  /* what the request needed on the device (0: not about memory) */
    uint64_t free_bytes;  /* device memory free when it failed */
    int free_known;       /* free_bytes was read (cudaMemGetInfo); else the message says unknown */
    uint64_t total_bytes; /* the device's memory */
} titan_cuda_failure;

/* Fills err for a failure of class `cls` (not OK): out of memory is too_large when the request
 * could never fit the device, else device_error, both with the sizes; a poisoned context and every
 * other failure are device_error. */
void titan_cuda_error_reply(titan_error *err, titan_cuda_class cls, const titan_cuda_failure *f);

#endif
