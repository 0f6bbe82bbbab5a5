/* cuda_internal.h - the CUDA backend's state (cuda.c), shared with the encoder's forward pass (cuda_bert.c), which
 * is compiled into the same module: the backend and its executors, and cuda.c's helpers that cuda_bert.c calls
 * (binding the device, errors to replies, the pool, copies through the staging buffers). */
#ifndef TITAN_CORE_CUDA_INTERNAL_H
#define TITAN_CORE_CUDA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "backend.h"
#include "devpool.h"
#include "nvml.h"

typedef struct titan_cuda_bert_dev titan_cuda_bert_dev; /* cuda_bert.c: one model's weights on the device */

typedef struct s_exec {
    cudaStream_t stream[2];
    /* One cuBLAS handle per stream, bound once: a handle's workspace is not safe to share between
     * two streams whose work overlaps. */
    cublasHandle_t blas[2];
    void *ws[2];                      /* each handle's workspace, from the pool (NULL: cuBLAS's own) */
    size_t ws_counted;                /* workspace bytes this executor adds to c->ws_bytes */
    void *stage_in[2], *stage_out[2]; /* pinned */
    size_t stage_bytes;
    struct s_exec *next;
} s_exec;

/* Locks: `lock` and `stats_lock` are leaves. Nothing else is taken, and no CUDA call made, while either
 * is held (the pool's own lock is also a leaf: devpool.c calls cudaMalloc and cudaFree without it). */
typedef struct {
    titan_backend be; /* first: the backend's pointer is this object's */
    int dev;
    uint64_t total_bytes;
    titan_devpool *pool;
    pthread_key_t exec_key;
    size_t stage_bytes;
    size_t ws_bytes_per_handle;
    atomic_uint_least64_t ws_bytes; /* the executors' cuBLAS workspaces, set or cuBLAS's own */
    pthread_mutex_t lock;           /* execs, poison */
    s_exec *execs;
    atomic_bool poisoned;
    char poison[256];
    titan_nvml *nvml;
    pthread_mutex_t stats_lock; /* t_stats, last */
    double t_stats;
    titan_device_stats last;
    titan_cuda_bert_dev *berts; /* under `lock`: the encoders' device weights (cuda_bert.c) */
} s_cuda;

/* cuda.c's helpers, for cuda_bert.c (see each one's comment there). */
cudaError_t titan_cuda_i_bind(s_cuda *c);
s_exec *titan_cuda_i_exec(s_cuda *c, titan_error *err);
bool titan_cuda_i_poisoned(s_cuda *c, titan_error *err);
int titan_cuda_i_fail_rt(s_cuda *c, titan_error *err, cudaError_t e, const char *what, uint64_t need);
int titan_cuda_i_fail_blas(s_cuda *c, titan_error *err, cublasStatus_t st, const char *what, uint64_t need);
int titan_cuda_i_dev_get(s_cuda *c, size_t bytes, uint64_t need, void **p, titan_error *err);
int titan_cuda_i_copy(s_cuda *c, s_exec *x, void *dst, const void *src, size_t bytes, bool to_device,
                      titan_error *err);

/* cuda_bert.c: backend.h's bert_forward and bert_release; bert_free_all frees what no model released (destroy). */
int titan_cuda_bert_forward(titan_backend *be, const titan_bert *m, const titan_bert_input *in, size_t n,
                            bool normalize, float *out, titan_error *err);
void titan_cuda_bert_release(titan_backend *be, const titan_bert *m);
void titan_cuda_bert_free_all(s_cuda *c);

#endif
