/* fake_cuda.c - TEST ONLY: the part of the CUDA runtime and cuBLAS that src/core/backends/cuda.c calls,
 * on the CPU, so that the real cuda.c runs inside a real titan-worker on machines without a GPU
 * (tests/integration/test_cuda_fake.py). Linked into titan-backend-cuda-fake.so, never installed, never in
 * the shipped module. Compiled against the toolkit's own headers, so that the types and struct layouts
 * (cudaDeviceProp, the enums, cublas_v2.h's renames) are those cuda.c sees. One translation unit: other
 * fakes build it with #include and renames.
 *
 * The devices: FAKE_CUDA_DEVICES (default 2) of "Fake GeForce GTX TITAN X", compute capability 5.2, 24 SMs,
 * device d at PCI 0000:0{d+1}:00.0, each with its own memory budget. The current device is per thread
 * (default 0), as in CUDA: cudaMalloc allocates on it, and streams and cuBLAS handles belong to the device
 * current when they were made. Pinned host memory belongs to no device. Device memory is host memory with a
 * byte budget, filled with 0xff bytes (NaN) when allocated so that reads of memory never written show up.
 * Every device pointer handed to a copy, a GEMM or the probe kernel must lie inside one live device
 * allocation, else the call fails and counts as invalid (stderr says which). One that lies on another device
 * than the stream's or the handle's is what real CUDA answers with an illegal address (700): invalid, and
 * the context is lost from then on (sticky; one flag for all devices, as a worker uses one). cudaFree of
 * another device's pointer than the calling thread's current one is invalid (cudaErrorInvalidValue).
 *
 * cuBLAS: cublasSgemm/Dgemm with either operand transposed, and cublasSgemmStridedBatched (each GEMM of the batch
 * checked as one call). The encoder's kernels (src/core/backends/cuda_bert.cu) are stood in for by
 * titan_cuda_bert_launch, which checks every buffer the kernel touches and queues the kernel's own items
 * (cuda_bert.h, the same code the GPU runs) to run on the CPU in order when the stream runs.
 *
 * Streams are in-order queues that run when the host waits for them (cudaStreamSynchronize, cudaFree,
 * cudaFreeHost, cudaStreamDestroy, cudaDeviceSynchronize) - the latest moment real CUDA may run them - so
 * that a host read of a pinned buffer before the wait, or a pinned buffer refilled while a copy from it is
 * queued, gives wrong numbers here too. Copies from or to pageable memory are synchronous, as in CUDA.
 * FAKE_CUDA_SYNC=1 runs every operation at once instead.
 *
 * Locks: where cuda.c and devpool.c are built with fake_lockdep.h (the module), the mutexes they take are
 * tracked. A lock-order inversion is reported on stderr (fake_lockdep.c), and a call that waits for the
 * device (cudaMalloc, cudaFree, cudaFreeHost, cudaStreamSynchronize, cudaStreamDestroy,
 * cudaDeviceSynchronize, cublasDestroy) made while the thread holds a tracked mutex is an invalid call: it
 * stalls every thread that wants the mutex. Without fake_lockdep.c linked in, neither is checked.
 *
 * Environment:
 *   FAKE_CUDA_DEVICES=N          how many devices, 1 to 4 (default 2)
 *   FAKE_CUDA_MEM_MB=N           each device's memory, MiB (default 1024)
 *   FAKE_CUDA_NO_DEVICE=1        cudaGetDeviceCount answers cudaErrorNoDevice
 *   FAKE_CUDA_NO_KERNEL=1        the probe kernel answers cudaErrorNoKernelImageForDevice
 *   FAKE_CUDA_STICKY_AFTER=N     the (N+1)-th GEMM call (the start's self-test counts) fails with
 *                                CUBLAS_STATUS_EXECUTION_FAILED and poisons the context: from then on every
 *                                runtime call answers cudaErrorIllegalAddress, every cuBLAS call fails
 *   FAKE_CUDA_STICKY_MALLOC_AFTER=N  the (N+1)-th cudaMalloc (the start's count) fails with
 *                                cudaErrorIllegalAddress and poisons the context the same way
 *   FAKE_CUDA_HOSTALLOC_FAIL=1   cudaHostAlloc answers cudaErrorMemoryAllocation (no pinned memory)
 *   FAKE_CUDA_RUNTIME_VERSION=V  what cudaRuntimeGetVersion says (default 11080: "11.8")
 *   FAKE_CUDA_DRIVER_VERSION=V   what cudaDriverGetVersion says (default 11040: "11.4", a 470 driver)
 *   FAKE_CUDA_SYNC=1             run stream work at once
 *   FAKE_CUDA_REPORT=PATH        at exit, append one JSON line of counters (live allocations, invalid calls,
 *                                per device, pinned buffers at most at once, lock inversions, GEMM calls, batched
 *                                GEMM calls, encoder kernel launches...) */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "cuda_bert.h"

#define FAKE_LOCKDEP_NO_WRAP /* the fake's own locks are not checked */
#include "fake_lockdep.h"

/* fake_lockdep.c is linked into the module, beside cuda.c; where it is not, these are NULL. */
#pragma weak fake_lockdep_held
#pragma weak fake_lockdep_inversions

#define S_NAME "Fake GeForce GTX TITAN X"
#define S_MAX_DEVICES 4
#define S_MAGIC_STREAM 0x5354524du
#define S_MAGIC_EVENT 0x45564e54u
#define S_MAGIC_BLAS 0x424c4153u

/* ---- configuration, read once ---- */

static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static uint64_t s_budget; /* per device */
static int s_ndev = 2;
static bool s_no_device, s_no_kernel, s_sync, s_hostalloc_fail;
static long s_sticky_after = -1, s_sticky_malloc_after = -1;
static int s_runtime_version = 11080, s_driver_version = 11040;

static long s_env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    return *end ? dflt : x;
}

static void s_init(void)
{
    long mb = s_env_long("FAKE_CUDA_MEM_MB", 1024);
    s_budget = (uint64_t)(mb > 0 ? mb : 1024) << 20;
    long nd = s_env_long("FAKE_CUDA_DEVICES", 2);
    if (nd < 1 || nd > S_MAX_DEVICES) {
        fprintf(stderr, "fake_cuda: FAKE_CUDA_DEVICES=%ld is not 1 to %d: 2 devices\n", nd, S_MAX_DEVICES);
        nd = 2;
    }
    s_ndev = (int)nd;
    s_no_device = s_env_long("FAKE_CUDA_NO_DEVICE", 0) != 0;
    s_no_kernel = s_env_long("FAKE_CUDA_NO_KERNEL", 0) != 0;
    s_sync = s_env_long("FAKE_CUDA_SYNC", 0) != 0;
    s_hostalloc_fail = s_env_long("FAKE_CUDA_HOSTALLOC_FAIL", 0) != 0;
    s_sticky_after = s_env_long("FAKE_CUDA_STICKY_AFTER", -1);
    s_sticky_malloc_after = s_env_long("FAKE_CUDA_STICKY_MALLOC_AFTER", -1);
    s_runtime_version = (int)s_env_long("FAKE_CUDA_RUNTIME_VERSION", 11080);
    s_driver_version = (int)s_env_long("FAKE_CUDA_DRIVER_VERSION", 11040);
}

#define S_INIT() pthread_once(&s_once, s_init)

/* ---- state ---- */

typedef struct s_alloc {
    char *p;
    size_t size;
    int dev; /* the device it lies on; -1: pinned host memory */
    struct s_alloc *next;
} s_alloc;

typedef enum { S_OP_COPY, S_OP_GEMM, S_OP_PROBE, S_OP_BERT } s_op_kind;

typedef struct {
    s_op_kind kind;
    void *dst;
    const void *src;
    size_t bytes;
    /* GEMM */
    bool f64;
    bool ta, tb; /* A, B read transposed (CUBLAS_OP_T) */
    int m, n, k, lda, ldb, ldc;
    double alpha, beta;
    const void *A, *B;
    void *C;
    /* probe */
    unsigned *buf;
    unsigned count;
    /* an encoder kernel (cuda_bert.h): its items, run one after another */
    int bert_kind;
    titan_cuda_bk bert;
} s_op;

struct CUstream_st {
    unsigned magic;
    int dev; /* current when it was made */
    pthread_mutex_t lock;
    s_op *ops;
    size_t nops, cap;
    struct CUstream_st *next;
};

struct CUevent_st {
    unsigned magic;
};

struct cublasContext {
    unsigned magic;
    int dev; /* current when it was made: its kernels run there */
    cudaStream_t stream;
    void *ws; /* cublasSetWorkspace's buffer, or NULL: cuBLAS's own */
    size_t ws_bytes;
};

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER; /* allocations, streams, counters */
static s_alloc *s_allocs;
static struct CUstream_st *s_streams;
static uint64_t s_used[S_MAX_DEVICES], s_peak; /* s_peak: the most any one device had in use */
static long s_dev_live[S_MAX_DEVICES], s_dev_allocs_total[S_MAX_DEVICES];
static long s_pinned_live, s_pinned_peak, s_streams_live, s_events_live, s_handles_live;
static long s_oom_count;
static atomic_long s_invalid, s_gemms, s_mallocs, s_locked_waits, s_cross_device, s_batched, s_bert_launches;
static atomic_bool s_sticky;
static __thread cudaError_t t_last;
static __thread int t_dev; /* the calling thread's current device (cudaSetDevice) */

static void s_vbad(const char *fmt, va_list ap)
{
    atomic_fetch_add(&s_invalid, 1);
    fprintf(stderr, "fake_cuda: invalid call: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
}

static void s_bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_bad(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_vbad(fmt, ap);
    va_end(ap);
}

/* Work on one device that touches another device's memory: on a GPU the kernel or copy faults with an
 * illegal address, and the context is lost. An invalid call, and sticky from here on. */
static void s_cross(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_cross(const char *fmt, ...)
{
    atomic_fetch_add(&s_cross_device, 1);
    va_list ap;
    va_start(ap, fmt);
    s_vbad(fmt, ap);
    va_end(ap);
    atomic_store(&s_sticky, true);
}

static cudaError_t s_err(cudaError_t e)
{
    if (e != cudaSuccess) t_last = e;
    return e;
}

/* A call that waits for the device while the calling thread holds one of cuda.c's or devpool.c's mutexes:
 * every thread that wants the mutex waits for the device too (the ZeroMQ loop, the other executors). */
static void s_check_unlocked(const char *fn)
{
    if (!fake_lockdep_held) return;
    char site[128];
    if (fake_lockdep_held(site, sizeof(site)) > 0) {
        atomic_fetch_add(&s_locked_waits, 1);
        s_bad("%s while holding the lock taken at %s", fn, site);
    }
}

/* The allocation holding [p, p+n) of the given kind (lock held), or NULL. */
static s_alloc *s_find_locked(const void *p, size_t n, bool device)
{
    const char *c = p;
    for (s_alloc *a = s_allocs; a; a = a->next) {
        if ((a->dev >= 0) != device) continue;
        if (c >= a->p && c < a->p + a->size) return (n <= (size_t)(a->p + a->size - c)) ? a : NULL;
    }
    return NULL;
}

static bool s_in(const void *p, size_t n, bool device)
{
    pthread_mutex_lock(&s_lock);
    bool ok = s_find_locked(p, n, device) != NULL;
    pthread_mutex_unlock(&s_lock);
    return ok;
}

/* Whether p is inside any device allocation at all (to tell device pointers from host ones). */
static bool s_is_device(const void *p)
{
    return s_in(p, 1, true);
}

/* The device that the device allocation holding p lies on, or -1. */
static int s_dev_of(const void *p)
{
    pthread_mutex_lock(&s_lock);
    s_alloc *a = s_find_locked(p, 1, true);
    int d = a ? a->dev : -1;
    pthread_mutex_unlock(&s_lock);
    return d;
}

/* ---- stream work ---- */

static void s_run_op(const s_op *o)
{
    switch (o->kind) {
    case S_OP_COPY:
        memcpy(o->dst, o->src, o->bytes);
        break;
    case S_OP_PROBE:
        for (unsigned i = 0; i < o->count; i++) o->buf[i] = i * 3u + 1u;
        break;
    case S_OP_GEMM:
        if (o->m == 0 || o->n == 0) break;
        if (o->f64)
            cblas_dgemm(CblasColMajor, o->ta ? CblasTrans : CblasNoTrans, o->tb ? CblasTrans : CblasNoTrans, o->m,
                        o->n, o->k, o->alpha, o->A, o->lda, o->B, o->ldb, o->beta, o->C, o->ldc);
        else
            cblas_sgemm(CblasColMajor, o->ta ? CblasTrans : CblasNoTrans, o->tb ? CblasTrans : CblasNoTrans, o->m,
                        o->n, o->k, (float)o->alpha, o->A, o->lda, o->B, o->ldb, (float)o->beta, o->C, o->ldc);
        break;
    case S_OP_BERT: {
        long long items = titan_cuda_bk_items(o->bert_kind, &o->bert);
        for (long long i = 0; i < items; i++) titan_cuda_bk_item(o->bert_kind, &o->bert, i);
        break;
    }
    }
}

static void s_flush(struct CUstream_st *s)
{
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nops; i++) s_run_op(&s->ops[i]);
    s->nops = 0;
    pthread_mutex_unlock(&s->lock);
}

/* Runs the queued work of every stream of device `dev` (-1: of every device): CUDA's implicit device
 * synchronization (cudaFree, cudaFreeHost, cudaDeviceSynchronize, cublasDestroy). */
static void s_flush_dev(int dev)
{
    pthread_mutex_lock(&s_lock);
    for (struct CUstream_st *s = s_streams; s; s = s->next)
        if (dev < 0 || s->dev == dev) s_flush(s);
    pthread_mutex_unlock(&s_lock);
}

static bool s_stream_ok(cudaStream_t s)
{
    if (!s) return true; /* the legacy default stream */
    pthread_mutex_lock(&s_lock);
    bool ok = false;
    for (struct CUstream_st *x = s_streams; x; x = x->next) ok = ok || x == s;
    pthread_mutex_unlock(&s_lock);
    return ok && s->magic == S_MAGIC_STREAM;
}

/* The device a (valid) stream's work runs on: the legacy default stream is the current device's. */
static int s_stream_dev(cudaStream_t s)
{
    return s ? s->dev : t_dev;
}

/* Queues o on s (or runs it now: the default stream, FAKE_CUDA_SYNC). */
static cudaError_t s_enqueue(cudaStream_t s, const s_op *o)
{
    if (!s || s_sync) {
        if (s) s_flush(s);
        else s_flush_dev(t_dev);
        s_run_op(o);
        return cudaSuccess;
    }
    pthread_mutex_lock(&s->lock);
    if (s->nops == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        s_op *ops = realloc(s->ops, cap * sizeof(*ops));
        if (!ops) {
            pthread_mutex_unlock(&s->lock);
            return cudaErrorMemoryAllocation;
        }
        s->ops = ops;
        s->cap = cap;
    }
    s->ops[s->nops++] = *o;
    pthread_mutex_unlock(&s->lock);
    return cudaSuccess;
}

/* ---- the runtime API ---- */

cudaError_t cudaGetDeviceCount(int *count)
{
    S_INIT();
    if (!count) return s_err(cudaErrorInvalidValue);
    if (s_no_device) {
        *count = 0;
        return s_err(cudaErrorNoDevice);
    }
    *count = s_ndev;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    S_INIT();
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    if (s_no_device) return s_err(cudaErrorNoDevice);
    if (device < 0 || device >= s_ndev) return s_err(cudaErrorInvalidDevice);
    t_dev = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    S_INIT();
    if (!device) return s_err(cudaErrorInvalidValue);
    if (s_no_device) return s_err(cudaErrorNoDevice);
    *device = t_dev;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    S_INIT();
    if (s_no_device) return s_err(cudaErrorNoDevice);
    if (device < 0 || device >= s_ndev) return s_err(cudaErrorInvalidDevice);
    if (!prop) return s_err(cudaErrorInvalidValue);
    memset(prop, 0, sizeof(*prop));
    snprintf(prop->name, sizeof(prop->name), "%s", S_NAME);
    prop->totalGlobalMem = s_budget;
    prop->major = 5;
    prop->minor = 2;
    prop->multiProcessorCount = 24;
    prop->pciDomainID = 0;
    prop->pciBusID = device + 1;
    prop->pciDeviceID = 0;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char *pciBusId, int len, int device)
{
    S_INIT();
    if (device < 0 || device >= s_ndev) return s_err(cudaErrorInvalidDevice);
    if (!pciBusId || len < (int)sizeof("0000:01:00.0")) return s_err(cudaErrorInvalidValue);
    snprintf(pciBusId, (size_t)len, "0000:%02x:00.0", device + 1);
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v)
{
    S_INIT();
    if (!v) return s_err(cudaErrorInvalidValue);
    *v = s_runtime_version;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v)
{
    S_INIT();
    if (!v) return s_err(cudaErrorInvalidValue);
    *v = s_driver_version;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t size)
{
    S_INIT();
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    if (!p) return s_err(cudaErrorInvalidValue);
    s_check_unlocked("cudaMalloc");
    *p = NULL;
    long nth = atomic_fetch_add(&s_mallocs, 1) + 1;
    if (s_sticky_malloc_after >= 0 && nth > s_sticky_malloc_after) {
        /* An earlier kernel's fault, reported by the next call that asks the driver. */
        atomic_store(&s_sticky, true);
        return s_err(cudaErrorIllegalAddress);
    }
    if (size == 0) return cudaSuccess;
    int d = t_dev;
    size_t rounded = (size + 255) & ~(size_t)255;
    pthread_mutex_lock(&s_lock);
    if (rounded > s_budget - s_used[d]) {
        s_oom_count++;
        pthread_mutex_unlock(&s_lock);
        return s_err(cudaErrorMemoryAllocation);
    }
    s_used[d] += rounded;
    pthread_mutex_unlock(&s_lock);
    s_alloc *a = malloc(sizeof(*a));
    char *mem = aligned_alloc(256, rounded);
    if (!a || !mem) {
        free(a);
        free(mem);
        pthread_mutex_lock(&s_lock);
        s_used[d] -= rounded;
        pthread_mutex_unlock(&s_lock);
        return s_err(cudaErrorMemoryAllocation);
    }
    memset(mem, 0xff, rounded); /* NaN in both dtypes: what is read before it is written shows */
    a->p = mem;
    a->size = size;
    a->dev = d;
    pthread_mutex_lock(&s_lock);
    a->next = s_allocs;
    s_allocs = a;
    if (s_used[d] > s_peak) s_peak = s_used[d];
    s_dev_live[d]++;
    s_dev_allocs_total[d]++;
    pthread_mutex_unlock(&s_lock);
    *p = mem;
    return cudaSuccess;
}

/* Unlinks and frees p's allocation of the given kind; false when p is not the start of one. */
static bool s_release(void *p, bool device)
{
    pthread_mutex_lock(&s_lock);
    s_alloc **pp = &s_allocs;
    while (*pp && !((*pp)->p == p && ((*pp)->dev >= 0) == device)) pp = &(*pp)->next;
    s_alloc *a = *pp;
    if (a) {
        *pp = a->next;
        if (device) {
            s_used[a->dev] -= (a->size + 255) & ~(size_t)255;
            s_dev_live[a->dev]--;
        } else {
            s_pinned_live--;
        }
    }
    pthread_mutex_unlock(&s_lock);
    if (!a) return false;
    free(a->p);
    free(a);
    return true;
}

cudaError_t cudaFree(void *p)
{
    S_INIT();
    if (!p) return cudaSuccess;
    s_check_unlocked("cudaFree");
    int d = -1;
    pthread_mutex_lock(&s_lock);
    for (s_alloc *a = s_allocs; a && d < 0; a = a->next)
        if (a->dev >= 0 && a->p == p) d = a->dev;
    pthread_mutex_unlock(&s_lock);
    if (d < 0) {
        s_bad("cudaFree(%p): not a device allocation", p);
        return s_err(cudaErrorInvalidValue);
    }
    if (d != t_dev) {
        /* Freed through the wrong context: a thread that never called cudaSetDevice is on device 0. */
        s_bad("cudaFree(%p): an allocation on device %d, but the calling thread's current device is %d", p, d,
              t_dev);
        return s_err(cudaErrorInvalidValue);
    }
    s_flush_dev(d);
    s_release(p, true);
    return atomic_load(&s_sticky) ? s_err(cudaErrorIllegalAddress) : cudaSuccess;
}

cudaError_t cudaHostAlloc(void **p, size_t size, unsigned int flags)
{
    S_INIT();
    (void)flags;
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    if (!p || size == 0) return s_err(cudaErrorInvalidValue);
    if (s_hostalloc_fail) return s_err(cudaErrorMemoryAllocation);
    s_alloc *a = malloc(sizeof(*a));
    char *mem = aligned_alloc(4096, (size + 4095) & ~(size_t)4095);
    if (!a || !mem) {
        free(a);
        free(mem);
        return s_err(cudaErrorMemoryAllocation);
    }
    memset(mem, 0xff, size);
    a->p = mem;
    a->size = size;
    a->dev = -1;
    pthread_mutex_lock(&s_lock);
    a->next = s_allocs;
    s_allocs = a;
    if (++s_pinned_live > s_pinned_peak) s_pinned_peak = s_pinned_live;
    pthread_mutex_unlock(&s_lock);
    *p = mem;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p)
{
    S_INIT();
    if (!p) return cudaSuccess;
    s_check_unlocked("cudaFreeHost");
    s_flush_dev(-1);
    if (!s_release(p, false)) {
        s_bad("cudaFreeHost(%p): not from cudaHostAlloc", p);
        return s_err(cudaErrorInvalidValue);
    }
    return atomic_load(&s_sticky) ? s_err(cudaErrorIllegalAddress) : cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *fr, size_t *total)
{
    S_INIT();
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    if (!fr || !total) return s_err(cudaErrorInvalidValue);
    pthread_mutex_lock(&s_lock);
    *fr = s_budget - s_used[t_dev];
    *total = s_budget;
    pthread_mutex_unlock(&s_lock);
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void)
{
    S_INIT();
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    s_check_unlocked("cudaDeviceSynchronize");
    s_flush_dev(t_dev);
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *ps, unsigned int flags)
{
    S_INIT();
    (void)flags;
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    if (!ps) return s_err(cudaErrorInvalidValue);
    struct CUstream_st *s = calloc(1, sizeof(*s));
    if (!s) return s_err(cudaErrorMemoryAllocation);
    s->magic = S_MAGIC_STREAM;
    s->dev = t_dev;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_lock(&s_lock);
    s->next = s_streams;
    s_streams = s;
    s_streams_live++;
    pthread_mutex_unlock(&s_lock);
    *ps = s;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    S_INIT();
    if (!s || !s_stream_ok(s)) {
        s_bad("cudaStreamDestroy(%p): not a stream", (void *)s);
        return s_err(cudaErrorInvalidResourceHandle);
    }
    s_check_unlocked("cudaStreamDestroy");
    s_flush(s);
    pthread_mutex_lock(&s_lock);
    struct CUstream_st **pp = &s_streams;
    while (*pp != s) pp = &(*pp)->next;
    *pp = s->next;
    s_streams_live--;
    pthread_mutex_unlock(&s_lock);
    s->magic = 0;
    pthread_mutex_destroy(&s->lock);
    free(s->ops);
    free(s);
    return atomic_load(&s_sticky) ? s_err(cudaErrorIllegalAddress) : cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    S_INIT();
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    if (!s_stream_ok(s)) {
        s_bad("cudaStreamSynchronize(%p): not a stream", (void *)s);
        return s_err(cudaErrorInvalidResourceHandle);
    }
    s_check_unlocked("cudaStreamSynchronize");
    if (s) s_flush(s);
    else s_flush_dev(t_dev);
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned int flags)
{
    S_INIT();
    (void)flags;
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    if (!ev) return s_err(cudaErrorInvalidValue);
    struct CUevent_st *e = calloc(1, sizeof(*e));
    if (!e) return s_err(cudaErrorMemoryAllocation);
    e->magic = S_MAGIC_EVENT;
    pthread_mutex_lock(&s_lock);
    s_events_live++;
    pthread_mutex_unlock(&s_lock);
    *ev = e;
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    S_INIT();
    if (!ev || ev->magic != S_MAGIC_EVENT) {
        s_bad("cudaEventDestroy(%p): not an event", (void *)ev);
        return s_err(cudaErrorInvalidResourceHandle);
    }
    ev->magic = 0;
    free(ev);
    pthread_mutex_lock(&s_lock);
    s_events_live--;
    pthread_mutex_unlock(&s_lock);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind, cudaStream_t stream)
{
    S_INIT();
    if (atomic_load(&s_sticky)) return s_err(cudaErrorIllegalAddress);
    if (!s_stream_ok(stream)) {
        s_bad("cudaMemcpyAsync: %p is not a stream", (void *)stream);
        return s_err(cudaErrorInvalidResourceHandle);
    }
    if (count == 0) return cudaSuccess;
    if (!dst || !src) {
        s_bad("cudaMemcpyAsync: NULL pointer");
        return s_err(cudaErrorInvalidValue);
    }
    if (kind == cudaMemcpyDefault)
        kind = s_is_device(dst) ? (s_is_device(src) ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                : (s_is_device(src) ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToHost && kind != cudaMemcpyDeviceToDevice &&
        kind != cudaMemcpyHostToHost) {
        s_bad("cudaMemcpyAsync: kind %d", (int)kind);
        return s_err(cudaErrorInvalidMemcpyDirection);
    }
    if (dst_dev ? !s_in(dst, count, true) : s_is_device(dst)) {
        s_bad("cudaMemcpyAsync: destination %p + %zu bytes is %s", dst, count,
              dst_dev ? "not inside one device allocation" : "device memory, but the kind says host");
        return s_err(cudaErrorInvalidValue);
    }
    if (src_dev ? !s_in(src, count, true) : s_is_device(src)) {
        s_bad("cudaMemcpyAsync: source %p + %zu bytes is %s", src, count,
              src_dev ? "not inside one device allocation" : "device memory, but the kind says host");
        return s_err(cudaErrorInvalidValue);
    }
    int sd = s_stream_dev(stream);
    for (int i = 0; i < 2; i++) {
        const void *q = i ? src : dst;
        int d = (i ? src_dev : dst_dev) ? s_dev_of(q) : sd;
        if (d != sd) {
            s_cross("cudaMemcpyAsync: the %s %p lies on device %d, the stream %p on device %d",
                    i ? "source" : "destination", q, d, (void *)stream, sd);
            return s_err(cudaErrorIllegalAddress);
        }
    }
    s_op o = {.kind = S_OP_COPY, .dst = dst, .src = src, .bytes = count};
    /* Pageable host memory: CUDA copies it before returning (after the stream's earlier work). */
    bool pageable = (!dst_dev && !s_in(dst, count, false)) || (!src_dev && !s_in(src, count, false));
    if (pageable) {
        if (stream) s_flush(stream);
        else s_flush_dev(t_dev);
        s_run_op(&o);
        return cudaSuccess;
    }
    return s_err(s_enqueue(stream, &o));
}

cudaError_t cudaGetLastError(void)
{
    if (atomic_load(&s_sticky)) return cudaErrorIllegalAddress;
    cudaError_t e = t_last;
    t_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void)
{
    if (atomic_load(&s_sticky)) return cudaErrorIllegalAddress;
    return t_last;
}

static const struct {
    cudaError_t e;
    const char *name, *text;
} s_errors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorNoKernelImageForDevice, "cudaErrorNoKernelImageForDevice",
     "no kernel image is available for execution on the device"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress", "an illegal memory access was encountered"},
};

const char *cudaGetErrorName(cudaError_t e)
{
    for (size_t i = 0; i < sizeof(s_errors) / sizeof(s_errors[0]); i++)
        if (s_errors[i].e == e) return s_errors[i].name;
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e)
{
    for (size_t i = 0; i < sizeof(s_errors) / sizeof(s_errors[0]); i++)
        if (s_errors[i].e == e) return s_errors[i].text;
    return "unrecognized error code";
}

/* ---- what cuda_kernels.cu provides ---- */

const char titan_cuda_archs[] = "75 80 86 89 90";

cudaError_t titan_cuda_probe_launch(cudaStream_t stream, unsigned *buf, unsigned n)
{
    S_INIT();
    if (atomic_load(&s_sticky)) return cudaErrorIllegalAddress;
    /* The real launch's error comes from cudaGetLastError, which also clears it. */
    if (s_no_kernel) return cudaErrorNoKernelImageForDevice;
    if (!s_stream_ok(stream)) {
        s_bad("probe launch: %p is not a stream", (void *)stream);
        return cudaErrorInvalidResourceHandle;
    }
    if (n && !s_in(buf, (size_t)n * sizeof(unsigned), true)) {
        s_bad("probe launch: %p + %u words is not inside one device allocation", (void *)buf, n);
        return cudaErrorInvalidValue;
    }
    if (n && s_dev_of(buf) != s_stream_dev(stream)) {
        s_cross("probe launch: the buffer %p lies on device %d, the stream %p on device %d", (void *)buf,
                s_dev_of(buf), (void *)stream, s_stream_dev(stream));
        return cudaErrorIllegalAddress;
    }
    s_op o = {.kind = S_OP_PROBE, .buf = buf, .count = n};
    return s_enqueue(stream, &o);
}

/* The encoder's kernels (cuda_bert.cu): each item of the same code (cuda_bert.h), run on the CPU in order when the
 * stream runs. Every buffer the kernel touches must lie in one live device allocation on the stream's device. */
static bool s_bert_buf(const char *what, int kind, const void *p, long long count, size_t es, int dev)
{
    if (count <= 0) return true;
    if (!p || !s_in(p, (size_t)count * es, true)) {
        s_bad("encoder kernel %d: %s %p + %lld elements is not inside one device allocation", kind, what, p, count);
        return false;
    }
    if (s_dev_of(p) != dev) {
        s_cross("encoder kernel %d: %s %p lies on device %d, the stream on device %d", kind, what, p, s_dev_of(p),
                dev);
        return false;
    }
    return true;
}

cudaError_t titan_cuda_bert_launch(cudaStream_t stream, int kind, const titan_cuda_bk *a)
{
    S_INIT();
    if (atomic_load(&s_sticky)) return cudaErrorIllegalAddress;
    if (s_no_kernel) return cudaErrorNoKernelImageForDevice;
    if (!s_stream_ok(stream)) {
        s_bad("encoder kernel launch: %p is not a stream", (void *)stream);
        return cudaErrorInvalidResourceHandle;
    }
    if (kind < 0 || kind >= TITAN_BK_COUNT || !a) {
        s_bad("encoder kernel launch: kind %d", kind);
        return cudaErrorInvalidValue;
    }
    int dev = s_stream_dev(stream);
    long long rc = (long long)a->rows * a->cols, T = (long long)a->nseq * a->seqlen, H = a->cols;
    bool ok = true;
    switch (kind) {
    case TITAN_BK_EMBED_LN:
        ok = a->rows == T && s_bert_buf("y", kind, a->y, rc, 4, dev) && s_bert_buf("ids", kind, a->ids, T, 4, dev) &&
             s_bert_buf("types", kind, a->types, T, 4, dev) && s_bert_buf("gamma", kind, a->gamma, H, 4, dev) &&
             s_bert_buf("beta", kind, a->beta, H, 4, dev) && s_bert_buf("word", kind, a->word, H, 4, dev) &&
             s_bert_buf("pos", kind, a->pos, (long long)a->seqlen * H, 4, dev) &&
             s_bert_buf("type", kind, a->type, H, 4, dev);
        break;
    case TITAN_BK_BIAS:
    case TITAN_BK_BIAS_ACT:
    case TITAN_BK_BIAS_TANH:
        ok = s_bert_buf("y", kind, a->y, rc, 4, dev) && s_bert_buf("bias", kind, a->bias, H, 4, dev);
        break;
    case TITAN_BK_RESIDUAL_LN:
        ok = s_bert_buf("y", kind, a->y, rc, 4, dev) && s_bert_buf("z", kind, a->z, rc, 4, dev) &&
             s_bert_buf("bias", kind, a->bias, H, 4, dev) && s_bert_buf("gamma", kind, a->gamma, H, 4, dev) &&
             s_bert_buf("beta", kind, a->beta, H, 4, dev);
        break;
    case TITAN_BK_SOFTMAX:
        ok = s_bert_buf("scores", kind, a->y, T * a->heads * a->seqlen, 4, dev) &&
             s_bert_buf("lens", kind, a->lens, a->nseq, 4, dev);
        break;
    case TITAN_BK_POOL:
        ok = s_bert_buf("y", kind, a->y, (long long)a->nseq * H, 4, dev) && s_bert_buf("x", kind, a->x, T * H, 4, dev) &&
             s_bert_buf("lens", kind, a->lens, a->nseq, 4, dev);
        break;
    case TITAN_BK_L2NORM:
        ok = s_bert_buf("y", kind, a->y, rc, 4, dev);
        break;
    }
    if (!ok) return cudaErrorInvalidValue;
    atomic_fetch_add(&s_bert_launches, 1);
    s_op o = {.kind = S_OP_BERT, .bert_kind = kind, .bert = *a};
    return s_enqueue(stream, &o);
}

/* ---- cuBLAS ---- */

cublasStatus_t cublasCreate_v2(cublasHandle_t *h)
{
    S_INIT();
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    if (atomic_load(&s_sticky) || s_no_device) return CUBLAS_STATUS_NOT_INITIALIZED;
    struct cublasContext *c = calloc(1, sizeof(*c));
    if (!c) return CUBLAS_STATUS_ALLOC_FAILED;
    c->magic = S_MAGIC_BLAS;
    c->dev = t_dev;
    pthread_mutex_lock(&s_lock);
    s_handles_live++;
    pthread_mutex_unlock(&s_lock);
    *h = c;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t h)
{
    S_INIT();
    if (!h || h->magic != S_MAGIC_BLAS) {
        s_bad("cublasDestroy(%p): not a handle", (void *)h);
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    s_check_unlocked("cublasDestroy");
    /* cuBLAS documents an implicit cudaDeviceSynchronize here; the handle's stream may be gone already. */
    s_flush_dev(h->dev);
    h->magic = 0;
    free(h);
    pthread_mutex_lock(&s_lock);
    s_handles_live--;
    pthread_mutex_unlock(&s_lock);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s)
{
    S_INIT();
    if (!h || h->magic != S_MAGIC_BLAS) {
        s_bad("cublasSetStream: %p is not a handle", (void *)h);
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (!s_stream_ok(s)) {
        s_bad("cublasSetStream: %p is not a stream", (void *)s);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (s && s->dev != h->dev) {
        s_bad("cublasSetStream: the stream %p is on device %d, the handle %p on device %d", (void *)s, s->dev,
              (void *)h, h->dev);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

/* The caller's workspace for the handle: it must lie in one allocation on the handle's device, and stay
 * allocated while the handle computes (checked at each GEMM). */
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void *ws, size_t bytes)
{
    S_INIT();
    if (!h || h->magic != S_MAGIC_BLAS) {
        s_bad("cublasSetWorkspace: %p is not a handle", (void *)h);
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (bytes && (!s_in(ws, bytes, true) || s_dev_of(ws) != h->dev)) {
        s_bad("cublasSetWorkspace: %p + %zu bytes is not inside one allocation on the handle's device %d", ws, bytes,
              h->dev);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    h->ws = bytes ? ws : NULL;
    h->ws_bytes = bytes;
    return CUBLAS_STATUS_SUCCESS;
}

/* Whether the column-major rows x cols matrix at p with leading dimension ld lies in one device allocation. */
static bool s_matrix_ok(const void *p, int rows, int cols, int ld, size_t es)
{
    if (rows == 0 || cols == 0) return true;
    size_t elems = (size_t)(cols - 1) * (size_t)ld + (size_t)rows;
    return s_in(p, elems * es, true);
}

static cublasStatus_t s_gemm(bool f64, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                             int k, double alpha, double beta, const void *A, int lda, const void *B, int ldb, void *C,
                             int ldc)
{
    S_INIT();
    const char *fn = f64 ? "cublasDgemm" : "cublasSgemm";
    if (!h || h->magic != S_MAGIC_BLAS) {
        s_bad("%s: %p is not a handle", fn, (void *)h);
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    if (atomic_load(&s_sticky)) return CUBLAS_STATUS_EXECUTION_FAILED;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    bool at = ta == CUBLAS_OP_T, bt = tb == CUBLAS_OP_T;
    /* A is stored m x k (k x m transposed), B k x n (n x k), column-major. */
    int ar = at ? k : m, ac = at ? m : k, br = bt ? n : k, bc = bt ? k : n;
    if (m < 0 || n < 0 || k < 0 || lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) || ldc < (m > 1 ? m : 1)) {
        s_bad("%s: m %d n %d k %d lda %d ldb %d ldc %d", fn, m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (!s_stream_ok(h->stream)) {
        s_bad("%s: the handle's stream %p was destroyed", fn, (void *)h->stream);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (h->ws && !s_in(h->ws, h->ws_bytes, true)) {
        s_bad("%s: the handle's workspace %p (%zu bytes) was freed while the handle computes", fn, h->ws, h->ws_bytes);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    long nth = atomic_fetch_add(&s_gemms, 1) + 1;
    if (s_sticky_after >= 0 && nth > s_sticky_after) {
        /* A kernel fault: the context is lost, and the runtime says so from now on. */
        atomic_store(&s_sticky, true);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    size_t es = f64 ? sizeof(double) : sizeof(float);
    if (!s_matrix_ok(A, ar, ac, lda, es) || !s_matrix_ok(B, br, bc, ldb, es) || !s_matrix_ok(C, m, n, ldc, es)) {
        s_bad("%s: an operand (A %p %dx%d lda %d, B %p %dx%d ldb %d, C %p %dx%d ldc %d) is not inside one device "
              "allocation",
              fn, A, m, k, lda, B, k, n, ldb, C, m, n, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (m && n) {
        const void *ops[3] = {A, B, C};
        for (int i = 0; i < 3; i++) {
            if (i < 2 && k == 0) continue; /* no element of A or B is read */
            int d = s_dev_of(ops[i]);
            if (d != h->dev) {
                /* The kernel runs where the handle was made; the error shows when the runtime is asked. */
                s_cross("%s: %c %p lies on device %d, the handle %p on device %d", fn, "ABC"[i], ops[i], d,
                        (void *)h, h->dev);
                return CUBLAS_STATUS_EXECUTION_FAILED;
            }
        }
    }
    s_op o = {.kind = S_OP_GEMM, .f64 = f64, .ta = at, .tb = bt, .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb,
              .ldc = ldc, .alpha = alpha, .beta = beta, .A = A, .B = B, .C = C};
    return s_enqueue(h->stream, &o) == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

/* cublasSgemmStridedBatched: batchCount GEMMs, operand i at A + i strideA (B, C alike), each checked as one; one
 * call for FAKE_CUDA_STICKY_AFTER's count (s_gemm counts each, so the count is taken back). */
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                         int k, const float *alpha, const float *A, int lda, long long strideA,
                                         const float *B, int ldb, long long strideB, const float *beta, float *C,
                                         int ldc, long long strideC, int batchCount)
{
    if (!alpha || !beta || batchCount < 0) return CUBLAS_STATUS_INVALID_VALUE;
    for (int i = 0; i < batchCount; i++) {
        cublasStatus_t st = s_gemm(false, h, ta, tb, m, n, k, *alpha, *beta, A + i * strideA, lda, B + i * strideB,
                                   ldb, C + i * strideC, ldc);
        if (st != CUBLAS_STATUS_SUCCESS) return st;
        if (i > 0) atomic_fetch_sub(&s_gemms, 1);
    }
    atomic_fetch_add(&s_batched, 1);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                              float *C, int ldc)
{
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    return s_gemm(false, h, ta, tb, m, n, k, *alpha, *beta, A, lda, B, ldb, C, ldc);
}

cublasStatus_t cublasDgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const double *alpha, const double *A, int lda, const double *B, int ldb,
                              const double *beta, double *C, int ldc)
{
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    return s_gemm(true, h, ta, tb, m, n, k, *alpha, *beta, A, lda, B, ldb, C, ldc);
}

/* ---- the report ---- */

static void s_json_longs(FILE *f, const char *key, const long *v)
{
    fprintf(f, ",\"%s\":[", key);
    for (int d = 0; d < s_ndev; d++) fprintf(f, "%s%ld", d ? "," : "", v[d]);
    fprintf(f, "]");
}

__attribute__((destructor)) static void s_report(void)
{
    const char *path = getenv("FAKE_CUDA_REPORT");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    pthread_mutex_lock(&s_lock);
    uint64_t used = 0;
    long live = 0, total = 0;
    for (int d = 0; d < s_ndev; d++) {
        used += s_used[d];
        live += s_dev_live[d];
        total += s_dev_allocs_total[d];
    }
    fprintf(f,
            "{\"devices\":%d,\"device_bytes_in_use\":%llu,\"device_allocs_live\":%ld,\"pinned_live\":%ld,"
            "\"pinned_peak\":%ld,\"streams_live\":%ld,\"events_live\":%ld,\"handles_live\":%ld,"
            "\"device_allocs_total\":%ld,\"peak_bytes\":%llu,\"oom\":%ld,\"gemm_calls\":%ld,\"malloc_calls\":%ld,"
            "\"invalid_calls\":%ld,\"cross_device\":%ld,\"locked_waits\":%ld,\"sticky\":%s,"
            "\"gemm_batched_calls\":%ld,\"bert_launches\":%ld",
            s_ndev, (unsigned long long)used, live, s_pinned_live, s_pinned_peak, s_streams_live, s_events_live,
            s_handles_live, total, (unsigned long long)s_peak, s_oom_count, atomic_load(&s_gemms),
            atomic_load(&s_mallocs), atomic_load(&s_invalid), atomic_load(&s_cross_device),
            atomic_load(&s_locked_waits), atomic_load(&s_sticky) ? "true" : "false", atomic_load(&s_batched),
            atomic_load(&s_bert_launches));
    s_json_longs(f, "device_allocs_total_by_device", s_dev_allocs_total);
    s_json_longs(f, "device_allocs_live_by_device", s_dev_live);
    /* null where fake_lockdep.c is not linked in: nothing was checked */
    if (fake_lockdep_inversions)
        fprintf(f, ",\"lock_inversions\":%ld}\n", fake_lockdep_inversions());
    else
        fprintf(f, ",\"lock_inversions\":null}\n");
    pthread_mutex_unlock(&s_lock);
    fclose(f);
}
