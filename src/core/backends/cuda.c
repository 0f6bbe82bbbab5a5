/* cuda.c - the CUDA backend (titan-backend-cuda.so): cuBLAS sgemm/dgemm on one GPU, a caching pool of
 * device memory, pinned staging buffers, and per-executor streams and cuBLAS handles. Only runtime and
 * cuBLAS calls that CUDA 11.4 already has. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "backend.h"
#include "clock.h"
#include "cuda_err.h"
#include "devpool.h"
#include "nvml.h"
#include "select.h"
#include "cuda_internal.h"

/* cuda_err.c restates these numbers for machines without CUDA: check them against the headers. */
_Static_assert(cudaErrorMemoryAllocation == 2, "cudaErrorMemoryAllocation");
_Static_assert(cudaErrorInsufficientDriver == 35, "cudaErrorInsufficientDriver");
_Static_assert(cudaErrorNoDevice == 100, "cudaErrorNoDevice");
_Static_assert(cudaErrorNoKernelImageForDevice == 209, "cudaErrorNoKernelImageForDevice");
_Static_assert(cudaErrorIllegalAddress == 700, "cudaErrorIllegalAddress");
_Static_assert(cudaErrorLaunchFailure == 719, "cudaErrorLaunchFailure");
_Static_assert(cudaErrorECCUncorrectable == 214, "cudaErrorECCUncorrectable");
_Static_assert(cudaErrorUnknown == 999, "cudaErrorUnknown");
_Static_assert(CUBLAS_STATUS_ALLOC_FAILED == 3, "CUBLAS_STATUS_ALLOC_FAILED");
_Static_assert(CUBLAS_STATUS_EXECUTION_FAILED == 13, "CUBLAS_STATUS_EXECUTION_FAILED");

/* The probe kernel (cuda_kernels.cu): writes i * 3 + 1 into buf[0..n). */
extern cudaError_t titan_cuda_probe_launch(cudaStream_t stream, unsigned *buf, unsigned n);
extern const char titan_cuda_archs[]; /* the -Dcuda-arch list this module was built for */

/* cublasSetWorkspace is weak: where the cuBLAS at hand lacks it, each handle keeps cuBLAS's own
 * workspace, which the figures then count at cuBLAS's documented default size. */
#pragma weak cublasSetWorkspace_v2

/* Staging buffers: each executor has two pairs (in, out) of pinned host memory of this size (or
 * $TITAN_CUDA_STAGE_KB), so the copy of one row block overlaps the product of the previous one. */
#define S_STAGE_BYTES ((size_t)8 << 20)
/* NVML's and cudaMemGetInfo's figures are sampled at most this often; the pool's are read on every call. */
#define S_STATS_INTERVAL_S 0.5
/* cuBLAS's workspace per handle, as its documentation recommends: 32 MiB on Hopper and later, else 4 MiB;
 * but at most 1/64 of the device, so that a small device (or a test's) keeps room for the work itself. */
static size_t s_workspace_bytes(int major, uint64_t total)
{
    size_t ws = (size_t)(major >= 9 ? 32 : 4) << 20;
    return total / 64 < ws ? (size_t)(total / 64) & ~(size_t)255 : ws;
}

/* CUDA's current device is per thread, and executors, the tensor sweeper and the threads that read the
 * figures all call in: every path to the runtime binds the calling thread to this backend's device
 * first, or `--device cuda:1` would allocate, free and measure on device 0. */
static cudaError_t s_bind(s_cuda *c)
{
    return cudaSetDevice(c->dev);
}

/* Turns a failed runtime call into err; a sticky error poisons the backend for good. */
static int s_fail_rt(s_cuda *c, titan_error *err, cudaError_t e, const char *what, uint64_t need)
{
    titan_cuda_class cls = titan_cuda_classify((int)e);
    titan_cuda_failure f = {.what = what,
                            .name = cudaGetErrorName(e),
                            .text = cudaGetErrorString(e),
                            .need_bytes = need,
                            .total_bytes = c->total_bytes};
    if (cls == TITAN_CUDA_OOM) {
        size_t fr = 0, tot = 0;
        if (s_bind(c) == cudaSuccess && cudaMemGetInfo(&fr, &tot) == cudaSuccess) {
            f.free_bytes = fr;
            f.free_known = 1;
        }
        (void)cudaGetLastError(); /* an out-of-memory error is not sticky: clear it */
    }
    if (cls == TITAN_CUDA_STICKY && !atomic_exchange(&c->poisoned, true)) {
        pthread_mutex_lock(&c->lock);
        snprintf(c->poison, sizeof(c->poison), "the CUDA context is lost (%s: %s); restart titan-worker",
                 what, cudaGetErrorName(e));
        pthread_mutex_unlock(&c->lock);
    }
    titan_cuda_error_reply(err, cls, &f);
    return -1;
}

/* A cuBLAS failure: asks the runtime whether the context survived it. */
static int s_fail_blas(s_cuda *c, titan_error *err, cublasStatus_t st, const char *what, uint64_t need)
{
    cudaError_t e = cudaPeekAtLastError();
    if (e != cudaSuccess && titan_cuda_classify((int)e) == TITAN_CUDA_STICKY)
        return s_fail_rt(c, err, e, what, need);
    char buf[40];
    titan_cuda_failure f = {.what = what,
                            .name = titan_cublas_status_name((int)st, buf, sizeof(buf)),
                            .need_bytes = need,
                            .total_bytes = c->total_bytes};
    titan_cuda_error_reply(err, titan_cublas_classify((int)st), &f);
    return -1;
}

static bool s_poisoned(s_cuda *c, titan_error *err)
{
    if (!atomic_load(&c->poisoned)) return false;
    err->code = "device_error";
    pthread_mutex_lock(&c->lock);
    snprintf(err->msg, sizeof(err->msg), "%s", c->poison);
    pthread_mutex_unlock(&c->lock);
    return true;
}

/* Frees an executor's resources (on the backend's device: it may be another thread's leftovers). */
static void s_exec_free(s_cuda *c, s_exec *x)
{
    (void)s_bind(c);
    /* The handles first: each is bound to its stream (cublasSetStream) and to its workspace. */
    for (int i = 0; i < 2; i++)
        if (x->blas[i]) cublasDestroy(x->blas[i]);
    for (int i = 0; i < 2; i++)
        if (x->ws[i]) titan_devpool_put(c->pool, x->ws[i], c->ws_bytes_per_handle);
    atomic_fetch_sub(&c->ws_bytes, x->ws_counted);
    for (int i = 0; i < 2; i++) {
        if (x->stage_in[i]) cudaFreeHost(x->stage_in[i]);
        if (x->stage_out[i]) cudaFreeHost(x->stage_out[i]);
        if (x->stream[i]) cudaStreamDestroy(x->stream[i]);
    }
    free(x);
}

/* Pinned memory that cannot be had is the host's shortage, not the GPU's: say so, and what to do. */
static void s_fail_pinned(s_cuda *c, titan_error *err, cudaError_t e)
{
    if (titan_cuda_classify((int)e) == TITAN_CUDA_STICKY) {
        s_fail_rt(c, err, e, "cudaHostAlloc", 0);
        return;
    }
    (void)cudaGetLastError();
    err->code = "internal";
    snprintf(err->msg, sizeof(err->msg),
             "cannot allocate %zu MiB of pinned host memory for an executor's staging buffers (cudaHostAlloc: "
             "%s): free host memory (or raise the locked-memory limit), or start titan-worker with a smaller "
             "TITAN_CUDA_STAGE_KB (now %zu) or fewer --threads",
             (4 * c->stage_bytes) >> 20, cudaGetErrorName(e), c->stage_bytes >> 10);
}

/* A cuBLAS workspace from the pool for handle i, so that the pool's figures count it. */
static int s_exec_workspace(s_cuda *c, s_exec *x, int i, titan_error *err)
{
    if (!cublasSetWorkspace_v2) {
        x->ws_counted += c->ws_bytes_per_handle; /* cuBLAS's own, of its default size */
        atomic_fetch_add(&c->ws_bytes, c->ws_bytes_per_handle);
        return 0;
    }
    char msg[400] = "";
    int rc = titan_devpool_get(c->pool, c->ws_bytes_per_handle, &x->ws[i], msg, sizeof(msg));
    if (rc == -ENOMEM) return s_fail_rt(c, err, cudaErrorMemoryAllocation, "cudaMalloc (cuBLAS workspace)",
                                        2 * c->ws_bytes_per_handle);
    if (rc) {
        x->ws[i] = NULL;
        err->code = "device_error";
        snprintf(err->msg, sizeof(err->msg), "%s", msg);
        if (atomic_load(&c->poisoned)) s_poisoned(c, err);
        return -1;
    }
    x->ws_counted += c->ws_bytes_per_handle;
    atomic_fetch_add(&c->ws_bytes, c->ws_bytes_per_handle);
    cublasStatus_t st = cublasSetWorkspace_v2(x->blas[i], x->ws[i], c->ws_bytes_per_handle);
    return st == CUBLAS_STATUS_SUCCESS ? 0 : s_fail_blas(c, err, st, "cublasSetWorkspace", 0);
}

/* The calling executor's streams, handles and staging buffers, made on its first request; binds the
 * thread to the device on every call. */
static s_exec *s_exec_get(s_cuda *c, titan_error *err)
{
    cudaError_t e = s_bind(c);
    if (e != cudaSuccess) {
        s_fail_rt(c, err, e, "cudaSetDevice", 0);
        return NULL;
    }
    s_exec *x = pthread_getspecific(c->exec_key);
    if (x) return x;
    x = calloc(1, sizeof(*x));
    if (!x) {
        err->code = "internal";
        snprintf(err->msg, sizeof(err->msg), "out of memory");
        return NULL;
    }
    for (int i = 0; i < 2 && e == cudaSuccess; i++)
        e = cudaStreamCreateWithFlags(&x->stream[i], cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        s_fail_rt(c, err, e, "cudaStreamCreate", 0);
        s_exec_free(c, x);
        return NULL;
    }
    for (int i = 0; i < 2 && e == cudaSuccess; i++) {
        e = cudaHostAlloc(&x->stage_in[i], c->stage_bytes, cudaHostAllocDefault);
        if (e == cudaSuccess) e = cudaHostAlloc(&x->stage_out[i], c->stage_bytes, cudaHostAllocDefault);
    }
    if (e != cudaSuccess) {
        s_fail_pinned(c, err, e);
        s_exec_free(c, x);
        return NULL;
    }
    x->stage_bytes = c->stage_bytes;
    for (int i = 0; i < 2; i++) {
        const char *fn = "cublasCreate";
        cublasStatus_t st = cublasCreate(&x->blas[i]);
        if (st != CUBLAS_STATUS_SUCCESS) {
            x->blas[i] = NULL;
        } else {
            fn = "cublasSetStream";
            st = cublasSetStream(x->blas[i], x->stream[i]);
        }
        if (st != CUBLAS_STATUS_SUCCESS) {
            s_fail_blas(c, err, st, fn, 0);
            s_exec_free(c, x);
            return NULL;
        }
        if (s_exec_workspace(c, x, i, err)) {
            s_exec_free(c, x);
            return NULL;
        }
    }
    pthread_setspecific(c->exec_key, x);
    pthread_mutex_lock(&c->lock);
    x->next = c->execs;
    c->execs = x;
    pthread_mutex_unlock(&c->lock);
    return x;
}

/* Frees the calling thread's executor resources (the start's self-test ran on the main thread, which
 * never computes again: its 4 pinned staging buffers and 2 handles would sit idle for the worker's life). */
static void s_exec_release_current(s_cuda *c)
{
    s_exec *x = pthread_getspecific(c->exec_key);
    if (!x) return;
    pthread_setspecific(c->exec_key, NULL);
    pthread_mutex_lock(&c->lock);
    for (s_exec **pp = &c->execs; *pp; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    s_exec_free(c, x);
}

/* Device memory from the pool; out of memory becomes a reply with the sizes. `need` is what the whole
 * request needs on the device (this block and its others): more than the device has is too_large. */
static int s_dev_get(s_cuda *c, size_t bytes, uint64_t need, void **p, titan_error *err)
{
    char msg[400] = "";
    int rc = titan_devpool_get(c->pool, bytes, p, msg, sizeof(msg));
    if (rc == 0) return 0;
    if (rc == -ENOMEM) return s_fail_rt(c, err, cudaErrorMemoryAllocation, "cudaMalloc", need);
    err->code = "device_error";
    snprintf(err->msg, sizeof(err->msg), "%s", msg);
    if (atomic_load(&c->poisoned)) s_poisoned(c, err);
    return -1;
}

/* The pool's allocator. The pool calls it without its lock, from whichever thread asks (an executor). */
static int s_pool_alloc(void *ctx, size_t bytes, void **p, char *msg, size_t cap)
{
    s_cuda *c = ctx;
    cudaError_t e = s_bind(c);
    if (e == cudaSuccess) e = cudaMalloc(p, bytes);
    if (e == cudaSuccess) return 0;
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        return -ENOMEM;
    }
    titan_error err;
    s_fail_rt(c, &err, e, "cudaMalloc", bytes);
    snprintf(msg, cap, "%s", err.msg);
    return -EIO;
}

/* The pool's free: from executors, and from the tensor sweeper's thread when an idle tensor expires. */
static void s_pool_free(void *ctx, void *p)
{
    s_cuda *c = ctx;
    (void)s_bind(c);
    cudaFree(p);
}

/* Copies `bytes` between host memory (pageable: a request's frame) and the device through the
 * executor's pinned buffers, alternating two streams so that one buffer fills while the other
 * copies. Synchronous: done when it returns. */
static int s_copy(s_cuda *c, s_exec *x, void *dst, const void *src, size_t bytes, bool to_device,
                  titan_error *err)
{
    cudaError_t e = cudaSuccess;
    size_t chunk = x->stage_bytes, nchunks = (bytes + chunk - 1) / chunk;
    for (size_t i = 0; i < nchunks && e == cudaSuccess; i++) {
        int s = (int)(i & 1);
        size_t off = i * chunk, len = bytes - off < chunk ? bytes - off : chunk;
        /* The buffer's previous copy (two chunks ago, same stream) must be done. */
        e = cudaStreamSynchronize(x->stream[s]);
        if (e != cudaSuccess) break;
        if (to_device) {
            memcpy(x->stage_in[s], (const char *)src + off, len);
            e = cudaMemcpyAsync((char *)dst + off, x->stage_in[s], len, cudaMemcpyHostToDevice, x->stream[s]);
        } else {
            e = cudaMemcpyAsync(x->stage_out[s], (const char *)src + off, len, cudaMemcpyDeviceToHost,
                                x->stream[s]);
            if (e == cudaSuccess) e = cudaStreamSynchronize(x->stream[s]);
            if (e == cudaSuccess) memcpy((char *)dst + off, x->stage_out[s], len);
        }
    }
    for (int s = 0; s < 2 && e == cudaSuccess; s++)
        e = cudaStreamSynchronize(x->stream[s]);
    if (e != cudaSuccess)
        return s_fail_rt(c, err, e, to_device ? "cudaMemcpy (to the GPU)" : "cudaMemcpy (from the GPU)", 0);
    return 0;
}

static int s_upload(titan_backend *be, void *dev, const void *host, size_t bytes, titan_error *err)
{
    s_cuda *c = (s_cuda *)be;
    if (s_poisoned(c, err)) return -1;
    s_exec *x = s_exec_get(c, err);
    return x ? s_copy(c, x, dev, host, bytes, true, err) : -1;
}

static int s_download(titan_backend *be, void *host, const void *dev, size_t bytes, titan_error *err)
{
    s_cuda *c = (s_cuda *)be;
    if (s_poisoned(c, err)) return -1;
    s_exec *x = s_exec_get(c, err);
    return x ? s_copy(c, x, host, dev, bytes, false, err) : -1;
}

static int s_mem_alloc(titan_backend *be, size_t bytes, void **dev, titan_error *err)
{
    s_cuda *c = (s_cuda *)be;
    if (s_poisoned(c, err)) return -1;
    return s_dev_get(c, bytes ? bytes : 1, bytes, dev, err);
}

static void s_mem_free(titan_backend *be, void *dev, size_t bytes)
{
    s_cuda *c = (s_cuda *)be;
    titan_devpool_put(c->pool, dev, bytes ? bytes : 1);
}

static size_t s_mem_footprint(titan_backend *be, size_t bytes)
{
    (void)be;
    return titan_devpool_block_size(bytes ? bytes : 1);
}

/* One row block of C = A * B on stream s: row-major C[r0:r0+rows] = A[r0:r0+rows] * B is, in cuBLAS's
 * column-major terms, C^T = B^T * A^T with the operands swapped. */
static cublasStatus_t s_gemm_rows(s_exec *x, int s, titan_dtype dt, size_t rows, size_t k, size_t n,
                                  const void *dA, const void *dB, void *dC)
{
    if (dt == TITAN_DTYPE_FLOAT32) {
        const float one = 1.0f, zero = 0.0f;
        return cublasSgemm(x->blas[s], CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)rows, (int)k, &one, dB, (int)n,
                           dA, (int)k, &zero, dC, (int)n);
    }
    const double one = 1.0, zero = 0.0;
    return cublasDgemm(x->blas[s], CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)rows, (int)k, &one, dB, (int)n, dA,
                       (int)k, &zero, dC, (int)n);
}

static int s_matmul(titan_backend *be, titan_dtype dt, size_t m, size_t k, size_t n, titan_operand a,
                    titan_operand b, titan_result c_out, titan_error *err)
{
    s_cuda *c = (s_cuda *)be;
    if (s_poisoned(c, err)) return -1;
    if (dt != TITAN_DTYPE_FLOAT32 && dt != TITAN_DTYPE_FLOAT64) {
        err->code = "bad_request";
        snprintf(err->msg, sizeof(err->msg), "the CUDA backend multiplies float32 and float64 only");
        return -1;
    }
    if (m > (size_t)INT32_MAX || k > (size_t)INT32_MAX || n > (size_t)INT32_MAX) {
        err->code = "too_large";
        snprintf(err->msg, sizeof(err->msg),
                 "a dimension of %zux%zu times %zux%zu is over 2^31-1, cuBLAS's limit", m, k, k, n);
        return -1;
    }
    s_exec *x = s_exec_get(c, err);
    if (!x) return -1;
    size_t es = dt == TITAN_DTYPE_FLOAT32 ? sizeof(float) : sizeof(double);
    size_t abytes = m * k * es, bbytes = k * n * es, cbytes = m * n * es;
    void *dA = (void *)a.dev, *dB = (void *)b.dev, *dC = c_out.dev;
    void *tA = NULL, *tB = NULL, *tC = NULL; /* pool blocks of this call */
    int rc = -1;
    cudaError_t e = cudaSuccess;
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    const char *what = "";
    /* Each temporary is counted with the others in an out-of-memory reply. */
    uint64_t need = (dA ? 0 : abytes) + (dB ? 0 : bbytes) + (dC ? 0 : cbytes);
    if (!dA && s_dev_get(c, abytes, need, &tA, err)) goto out;
    if (!dB && s_dev_get(c, bbytes, need, &tB, err)) goto out;
    if (!dC && s_dev_get(c, cbytes, need, &tC, err)) goto out;
    if (tA) dA = tA;
    if (tB) dB = tB;
    if (tC) dC = tC;
    if (b.host && s_copy(c, x, dB, b.host, bbytes, true, err)) goto out;
    if (!a.host && !c_out.host) {
        /* Everything is on the device: one call. */
        st = s_gemm_rows(x, 0, dt, m, k, n, dA, dB, dC);
        what = dt == TITAN_DTYPE_FLOAT32 ? "cublasSgemm" : "cublasDgemm";
        if (st == CUBLAS_STATUS_SUCCESS) {
            e = cudaStreamSynchronize(x->stream[0]);
            what = "cudaStreamSynchronize";
        }
    } else {
        /* Row blocks through the staging buffers on two streams: block i's copies overlap block
         * i-1's product, and the host copies into and out of the pinned buffers overlap both. */
        size_t row_bytes = (k > n ? k : n) * es;
        size_t rows = row_bytes <= x->stage_bytes ? x->stage_bytes / row_bytes : 0;
        if (rows == 0) {
            /* A row wider than a staging buffer: copy whole operands (pageable, slower) instead. */
            if (a.host && s_copy(c, x, dA, a.host, abytes, true, err)) goto out;
            st = s_gemm_rows(x, 0, dt, m, k, n, dA, dB, dC);
            what = dt == TITAN_DTYPE_FLOAT32 ? "cublasSgemm" : "cublasDgemm";
            if (st == CUBLAS_STATUS_SUCCESS && c_out.host) {
                if (s_copy(c, x, c_out.host, dC, cbytes, false, err)) goto out;
            } else if (st == CUBLAS_STATUS_SUCCESS) {
                e = cudaStreamSynchronize(x->stream[0]);
                what = "cudaStreamSynchronize";
            }
        } else {
            if (rows > m) rows = m;
            size_t nblocks = (m + rows - 1) / rows;
            size_t pending_off = 0, pending_len = 0; /* block i-1's rows of C, still in stage_out */
            int pending_s = -1;
            for (size_t i = 0; i < nblocks && e == cudaSuccess && st == CUBLAS_STATUS_SUCCESS; i++) {
                int s = (int)(i & 1);
                size_t r0 = i * rows, nr = m - r0 < rows ? m - r0 : rows;
                /* Stream s's previous block (i-2) is done, so both of its buffers are free. */
                what = "cudaStreamSynchronize";
                e = cudaStreamSynchronize(x->stream[s]);
                if (e != cudaSuccess) break;
                if (a.host) {
                    memcpy(x->stage_in[s], (const char *)a.host + r0 * k * es, nr * k * es);
                    what = "cudaMemcpyAsync (to the GPU)";
                    e = cudaMemcpyAsync((char *)dA + r0 * k * es, x->stage_in[s], nr * k * es,
                                        cudaMemcpyHostToDevice, x->stream[s]);
                    if (e != cudaSuccess) break;
                }
                what = dt == TITAN_DTYPE_FLOAT32 ? "cublasSgemm" : "cublasDgemm";
                st = s_gemm_rows(x, s, dt, nr, k, n, (const char *)dA + r0 * k * es, dB,
                                 (char *)dC + r0 * n * es);
                if (st != CUBLAS_STATUS_SUCCESS) break;
                if (c_out.host) {
                    what = "cudaMemcpyAsync (from the GPU)";
                    e = cudaMemcpyAsync(x->stage_out[s], (const char *)dC + r0 * n * es, nr * n * es,
                                        cudaMemcpyDeviceToHost, x->stream[s]);
                    if (e != cudaSuccess) break;
                }
                /* While block i runs, move block i-1's rows out of its pinned buffer. */
                if (pending_s >= 0) {
                    what = "cudaStreamSynchronize";
                    e = cudaStreamSynchronize(x->stream[pending_s]);
                    if (e != cudaSuccess) break;
                    memcpy((char *)c_out.host + pending_off, x->stage_out[pending_s], pending_len);
                    pending_s = -1;
                }
                if (c_out.host) {
                    pending_s = s;
                    pending_off = r0 * n * es;
                    pending_len = nr * n * es;
                }
            }
            for (int s = 0; s < 2 && e == cudaSuccess && st == CUBLAS_STATUS_SUCCESS; s++) {
                what = "cudaStreamSynchronize";
                e = cudaStreamSynchronize(x->stream[s]);
            }
            if (e == cudaSuccess && st == CUBLAS_STATUS_SUCCESS && pending_s >= 0)
                memcpy((char *)c_out.host + pending_off, x->stage_out[pending_s], pending_len);
        }
    }
    if (st != CUBLAS_STATUS_SUCCESS) {
        s_fail_blas(c, err, st, what, 0);
        goto out;
    }
    if (e != cudaSuccess) {
        s_fail_rt(c, err, e, what, 0);
        goto out;
    }
    rc = 0;
out:
    if (rc) {
        /* Leave no work of this call running on the buffers going back to the pool. */
        cudaStreamSynchronize(x->stream[0]);
        cudaStreamSynchronize(x->stream[1]);
    }
    if (tA) titan_devpool_put(c->pool, tA, abytes);
    if (tB) titan_devpool_put(c->pool, tB, bbytes);
    if (tC) titan_devpool_put(c->pool, tC, cbytes);
    return rc;
}

/* The device's figures: NVML's (or cudaMemGetInfo's) sampled at most every S_STATS_INTERVAL_S, by one
 * caller at a time and without the lock; the pool's read on every call, so that they are never stale. */
static void s_stats(titan_backend *be, titan_device_stats *out)
{
    s_cuda *c = (s_cuda *)be;
    double now = titan_clock_mono_s();
    pthread_mutex_lock(&c->stats_lock);
    bool due = now - c->t_stats >= S_STATS_INTERVAL_S;
    if (due) c->t_stats = now; /* this caller samples; the others take the last figures meanwhile */
    titan_device_stats st = c->last;
    pthread_mutex_unlock(&c->stats_lock);
    if (due) {
        memset(&st, 0, sizeof(st));
        titan_nvml_sample(c->nvml, &st);
        if (!st.has_memory && !atomic_load(&c->poisoned) && s_bind(c) == cudaSuccess) {
            size_t fr, tot;
            if (cudaMemGetInfo(&fr, &tot) == cudaSuccess) {
                st.has_memory = true;
                st.memory_total_bytes = tot;
                st.memory_used_bytes = tot - fr;
            }
        }
        pthread_mutex_lock(&c->stats_lock);
        c->last = st;
        pthread_mutex_unlock(&c->stats_lock);
    }
    titan_devpool_stats ps;
    titan_devpool_get_stats(c->pool, &ps);
    uint64_t ws = atomic_load(&c->ws_bytes);
    st.has_pool = true;
    /* Workspaces from the pool are in its in-use bytes already; cuBLAS's own are added. */
    st.pool_held_bytes = ps.in_use_bytes + ps.cached_bytes + (cublasSetWorkspace_v2 ? 0 : ws);
    st.pool_cached_bytes = ps.cached_bytes;
    st.pool_device_allocs = ps.device_allocs;
    st.pool_workspace_bytes = ws;
    *out = st;
}

static bool s_ready(titan_backend *be, char *why, size_t cap)
{
    s_cuda *c = (s_cuda *)be;
    if (!atomic_load(&c->poisoned)) return true;
    pthread_mutex_lock(&c->lock);
    snprintf(why, cap, "%s", c->poison);
    pthread_mutex_unlock(&c->lock);
    return false;
}

static void s_destroy(titan_backend *be)
{
    s_cuda *c = (s_cuda *)be;
    titan_cuda_bert_free_all(c); /* encoders' weights no model released (before the pool goes) */
    /* The executors have stopped; their resources are freed here, from the list. */
    while (c->execs) {
        s_exec *x = c->execs;
        c->execs = x->next;
        s_exec_free(c, x);
    }
    pthread_key_delete(c->exec_key);
    titan_devpool_destroy(&c->pool);
    titan_nvml_close(&c->nvml);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->stats_lock);
    free(c);
}

/* Runs the probe kernel and a 2x2 sgemm: proves that this build has code for the device and that
 * cuBLAS works, before the worker says it is ready. Returns 0, or -errno with err set. */
static int s_self_test(s_cuda *c, char *errbuf, size_t errcap)
{
    titan_error err;
    s_exec *x = s_exec_get(c, &err);
    if (!x) {
        snprintf(errbuf, errcap, "%s", err.msg);
        return -EIO;
    }
    unsigned *dbuf = NULL, host[64];
    cudaError_t e = cudaMalloc((void **)&dbuf, sizeof(host)); /* s_exec_get bound the device */
    if (e == cudaSuccess) e = titan_cuda_probe_launch(x->stream[0], dbuf, 64);
    if (e == cudaSuccess) e = cudaMemcpyAsync(host, dbuf, sizeof(host), cudaMemcpyDeviceToHost, x->stream[0]);
    if (e == cudaSuccess) e = cudaStreamSynchronize(x->stream[0]);
    if (dbuf) cudaFree(dbuf);
    if (e != cudaSuccess) {
        titan_cuda_class cls = titan_cuda_classify((int)e);
        char sm[16];
        const char *cap = c->be.info.cuda_capability;
        size_t o = 0;
        for (const char *q = cap; *q && o + 1 < sizeof(sm); q++)
            if (*q != '.') sm[o++] = *q; /* "5.2" -> "52" */
        sm[o] = '\0';
        if (cls == TITAN_CUDA_NOCODE)
            snprintf(
                errbuf, errcap,
                "this build has no GPU code for %s (compute capability %s; built for sm %s): rebuild with "
                "-Dcuda-arch=%s using a toolkit that supports it (CUDA 11.x or 12.x for Maxwell)",
                c->be.info.name, cap, titan_cuda_archs, sm);
        else
            snprintf(errbuf, errcap, "the GPU self-test kernel failed: %s (%s)", cudaGetErrorName(e),
                     cudaGetErrorString(e));
        return cls == TITAN_CUDA_NOCODE ? -ENOTSUP : -EIO;
    }
    for (unsigned i = 0; i < 64; i++) {
        if (host[i] != i * 3 + 1) {
            snprintf(errbuf, errcap, "the GPU self-test kernel wrote %u at %u, not %u", host[i], i,
                     i * 3 + 1);
            return -EIO;
        }
    }
    const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    float r[4];
    titan_operand oa = {a, NULL}, ob = {b, NULL};
    titan_result oc = {r, NULL};
    if (s_matmul(&c->be, TITAN_DTYPE_FLOAT32, 2, 2, 2, oa, ob, oc, &err)) {
        snprintf(errbuf, errcap, "the cuBLAS self-test failed: %s", err.msg);
        return -EIO;
    }
    if (r[0] != 19 || r[1] != 22 || r[2] != 43 || r[3] != 50) {
        snprintf(errbuf, errcap, "the cuBLAS self-test computed [%g %g; %g %g], not [19 22; 43 50]", r[0],
                 r[1], r[2], r[3]);
        return -EIO;
    }
    return 0;
}

/* The helpers, for cuda_bert.c (cuda_internal.h). */
cudaError_t titan_cuda_i_bind(s_cuda *c)
{
    return s_bind(c);
}

s_exec *titan_cuda_i_exec(s_cuda *c, titan_error *err)
{
    return s_exec_get(c, err);
}

bool titan_cuda_i_poisoned(s_cuda *c, titan_error *err)
{
    return s_poisoned(c, err);
}

int titan_cuda_i_fail_rt(s_cuda *c, titan_error *err, cudaError_t e, const char *what, uint64_t need)
{
    return s_fail_rt(c, err, e, what, need);
}

int titan_cuda_i_fail_blas(s_cuda *c, titan_error *err, cublasStatus_t st, const char *what, uint64_t need)
{
    return s_fail_blas(c, err, st, what, need);
}

int titan_cuda_i_dev_get(s_cuda *c, size_t bytes, uint64_t need, void **p, titan_error *err)
{
    return s_dev_get(c, bytes, need, p, err);
}

int titan_cuda_i_copy(s_cuda *c, s_exec *x, void *dst, const void *src, size_t bytes, bool to_device,
                      titan_error *err)
{
    return s_copy(c, x, dst, src, bytes, to_device, err);
}

static void s_version(char *buf, size_t cap, int v)
{
    snprintf(buf, cap, "%d.%d", v / 1000, (v % 1000) / 10);
}

__attribute__((visibility("default"))) int titan_backend_cuda_open(int index, const titan_cuda_opts *opts,
                                                                   titan_backend **out, char *err,
                                                                   size_t errcap);

int titan_backend_cuda_open(int index, const titan_cuda_opts *opts, titan_backend **out, char *err,
                            size_t errcap)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(err, errcap, "no CUDA device: %s (%s)", cudaGetErrorName(e), cudaGetErrorString(e));
        return titan_cuda_classify((int)e) == TITAN_CUDA_NODEV ? -ENODEV : -EIO;
    }
    if (index < 0 || index >= count) {
        snprintf(err, errcap, "no CUDA device %d: this machine has %d (cuda:0 to cuda:%d)", index, count,
                 count - 1);
        return -ENODEV;
    }
    struct cudaDeviceProp p;
    e = cudaSetDevice(index);
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&p, index);
    if (e != cudaSuccess) {
        snprintf(err, errcap, "CUDA device %d: %s (%s)", index, cudaGetErrorName(e), cudaGetErrorString(e));
        return titan_cuda_classify((int)e) == TITAN_CUDA_NODEV ? -ENODEV : -EIO;
    }
    s_cuda *c = calloc(1, sizeof(*c));
    if (!c) return -ENOMEM;
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return -ENOMEM;
    }
    if (pthread_mutex_init(&c->stats_lock, NULL) != 0 || pthread_key_create(&c->exec_key, NULL) != 0) {
        pthread_mutex_destroy(&c->lock);
        free(c);
        return -ENOMEM;
    }
    c->dev = index;
    c->total_bytes = p.totalGlobalMem;
    c->stage_bytes = S_STAGE_BYTES;
    c->ws_bytes_per_handle = s_workspace_bytes(p.major, p.totalGlobalMem);
    const char *kb = getenv("TITAN_CUDA_STAGE_KB");
    if (kb && atol(kb) >= 4 && atol(kb) <= (1L << 20)) c->stage_bytes = (size_t)atol(kb) << 10;
    titan_backend *be = &c->be;
    snprintf(be->info.name, sizeof(be->info.name), "%s", p.name);
    be->info.backend = "cuda";
    be->info.total_memory_gb = (double)p.totalGlobalMem / 1e9;
    be->info.multi_processor_count = p.multiProcessorCount;
    snprintf(be->info.cuda_capability, sizeof(be->info.cuda_capability), "%d.%d", p.major, p.minor);
    be->info.device_index = index;
    int v = 0;
    if (cudaRuntimeGetVersion(&v) == cudaSuccess)
        s_version(be->info.runtime_version, sizeof(be->info.runtime_version), v);
    if (cudaDeviceGetPCIBusId(be->info.pci_bus_id, (int)sizeof(be->info.pci_bus_id), index) != cudaSuccess)
        be->info.pci_bus_id[0] = '\0';
    char why[256];
    c->nvml = titan_nvml_open(getenv("TITAN_NVML_LIBRARY"), be->info.pci_bus_id, -1, why, sizeof(why));
    /* The driver's own version when NVML tells it ("470.256.02"), else the CUDA version it supports. */
    if (titan_nvml_driver_version(c->nvml, be->info.driver_version, sizeof(be->info.driver_version)) != 0 &&
        cudaDriverGetVersion(&v) == cudaSuccess) {
        char cv[16];
        s_version(cv, sizeof(cv), v);
        snprintf(be->info.driver_version, sizeof(be->info.driver_version), "CUDA %s", cv);
    }
    titan_devpool_ops ops = {s_pool_alloc, s_pool_free, c};
    uint64_t cache = opts && opts->pool_cache_bytes ? opts->pool_cache_bytes : p.totalGlobalMem / 4;
    c->pool = titan_devpool_new(&ops, cache);
    be->matmul = s_matmul;
    be->mem_alloc = s_mem_alloc;
    be->mem_free = s_mem_free;
    be->mem_footprint = s_mem_footprint;
    be->upload = s_upload;
    be->download = s_download;
    be->stats = s_stats;
    be->ready = s_ready;
    be->bert_forward = titan_cuda_bert_forward;
    be->bert_release = titan_cuda_bert_release;
    be->destroy = s_destroy;
    /* Set aside for the executors' cuBLAS workspaces (two handles each): not for resident tensors. */
    int execs = opts && opts->executors > 0 ? opts->executors : 1;
    be->info.reserved_bytes = (uint64_t)execs * 2 * c->ws_bytes_per_handle;
    int rc = c->pool ? s_self_test(c, err, errcap) : -ENOMEM;
    s_exec_release_current(c);
    if (rc) {
        if (rc == -ENOMEM) snprintf(err, errcap, "out of memory");
        s_destroy(be);
        return rc;
    }
    *out = be;
    return 0;
}
