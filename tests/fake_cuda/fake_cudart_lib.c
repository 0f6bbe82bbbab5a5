/* fake_cudart_lib.c - TEST ONLY: the fake CUDA runtime (fake_cuda.c) as a stand-in libcudart.so.N, so that the
 * real titan-backend-cuda.so and bench_gpu, as the device kit carries them (scripts/device-kit.sh), run on a
 * machine without a GPU: tests/integration/test_device_kit.sh puts this library where the kit's own libcudart
 * was, and fake_cublas_shim.c (libcublas.so.N) beside it. It stands in for the driver and the GPU as well.
 *
 * fake_cuda.c is included whole: its runtime functions are exported under the real names, with the symbol
 * version the real libcudart.so.N defines (fake_cudart.map.in). Its cuBLAS functions are renamed fake_cublas*
 * and exported for the shim (one shared state: one device, one set of allocations); its stand-ins for
 * cuda_kernels.cu (titan_cuda_probe_launch, titan_cuda_archs) are renamed out of the way, since the real
 * module carries the real ones. Added here, for what the real binaries import beyond the fake module's needs:
 *
 *   - the kernel registration and launch that nvcc's host stubs call (crt/host_runtime.h,
 *     crt/device_functions.h): __cudaRegisterFatBinary, __cudaRegisterFatBinaryEnd,
 *     __cudaUnregisterFatBinary, __cudaRegisterFunction, __cudaPush/PopCallConfiguration, __cudaGetKernel and
 *     __cudaLaunchKernel (CUDA 13's stubs), cudaLaunchKernel (CUDA 11 and 12's). The one kernel the module
 *     carries, s_probe (cuda_kernels.cu: buf[i] = i * 3 + 1 for i < n), is recognised by its registered
 *     device name and run by fake_cuda.c's probe, and so are cuda_bert.cu's encoder kernels (extern "C" names,
 *     cuda_bert.h's TITAN_BK_NAMES, one titan_cuda_bk argument), run by fake_cuda.c's titan_cuda_bert_launch
 *     (cuda_bert.h's items on the CPU); any other kernel fails with cudaErrorInvalidDeviceFunction.
 *     The fatbinary itself is not read: the probe runs whatever architectures the module was built for;
 *   - cudaGetLastError and cudaPeekAtLastError, which also report a failed launch, as the real ones do;
 *   - what bench_gpu calls: cudaMemcpy, cudaMemset, cublasGetVersion_v2, and cudaDeviceSynchronize around
 *     fake_cuda.c's (for FAKE_CUDA_HANG_N).
 * They use fake_cuda.c only through its functions (the CUDA API and the renamed ones), never its internals, so
 * that fake_cuda.c may change within.
 *
 * Environment, beyond fake_cuda.c's FAKE_CUDA_*:
 *   FAKE_CUDA_HANG_N=N   cudaDeviceSynchronize never returns after an N x N x N GEMM on this thread (only
 *                        bench_gpu calls it: the kit's test makes one benchmark size hang) */
#define cublasCreate_v2 fake_cublasCreate_v2
#define cublasDestroy_v2 fake_cublasDestroy_v2
#define cublasSetStream_v2 fake_cublasSetStream_v2
#define cublasSgemm_v2 s_inner_sgemm
#define cublasDgemm_v2 s_inner_dgemm
#define cudaGetLastError s_inner_get_last_error
#define cudaPeekAtLastError s_inner_peek_last_error
#define cudaDeviceSynchronize s_inner_device_synchronize
#define titan_cuda_probe_launch s_inner_probe_launch
#define titan_cuda_bert_launch s_inner_bert_launch
#define cublasSgemmStridedBatched fake_cublasSgemmStridedBatched
#define titan_cuda_archs fake_cudart_archs_unused
#include "fake_cuda.c"
#undef cublasCreate_v2
#undef cublasDestroy_v2
#undef cublasSetStream_v2
#undef cublasSgemm_v2
#undef cublasDgemm_v2
#undef cudaGetLastError
#undef cudaPeekAtLastError
#undef cudaDeviceSynchronize
#undef titan_cuda_probe_launch
#undef titan_cuda_bert_launch
#undef cublasSgemmStridedBatched
#undef titan_cuda_archs

#include <unistd.h>

/* fake_cuda.c defines cudaDeviceSynchronize from its multi-device version on; before, this file waits on the
 * legacy stream itself. Weak: NULL where fake_cuda.c has none. */
#pragma weak s_inner_device_synchronize

/* The probe kernel's device name (cuda_kernels.cu: static __global__ void s_probe(unsigned *, unsigned)). */
#define S_PROBE_NAME "_Z7s_probePjj"

/* ---- errors from launches ---- */

static __thread cudaError_t t_launch_err;

cudaError_t cudaGetLastError(void)
{
    cudaError_t inner = s_inner_get_last_error(), launch = t_launch_err;
    t_launch_err = cudaSuccess;
    return launch != cudaSuccess ? launch : inner;
}

cudaError_t cudaPeekAtLastError(void)
{
    cudaError_t inner = s_inner_peek_last_error();
    return t_launch_err != cudaSuccess ? t_launch_err : inner;
}

static cudaError_t s_launch_err(cudaError_t e)
{
    if (e != cudaSuccess) t_launch_err = e;
    return e;
}

/* ---- kernel registration ---- */

/* A registered kernel; its address is the cudaKernel_t that __cudaGetKernel hands out. */
struct CUkern_st {
    void **module;
    const void *host_fun;
    char name[128];
    struct CUkern_st *next;
};

static pthread_mutex_t s_klock = PTHREAD_MUTEX_INITIALIZER;
static struct CUkern_st *s_kernels;

void **__cudaRegisterFatBinary(void *fatCubin);
void **__cudaRegisterFatBinary(void *fatCubin)
{
    void **handle = calloc(1, sizeof(void *));
    if (!handle) {
        fprintf(stderr, "fake_cudart: __cudaRegisterFatBinary: out of memory\n");
        abort();
    }
    *handle = fatCubin;
    return handle;
}

void __cudaRegisterFatBinaryEnd(void **fatCubinHandle);
void __cudaRegisterFatBinaryEnd(void **fatCubinHandle)
{
    (void)fatCubinHandle;
}

void __cudaUnregisterFatBinary(void **fatCubinHandle);
void __cudaUnregisterFatBinary(void **fatCubinHandle)
{
    pthread_mutex_lock(&s_klock);
    struct CUkern_st **pp = &s_kernels;
    while (*pp) {
        if ((*pp)->module == fatCubinHandle) {
            struct CUkern_st *k = *pp;
            *pp = k->next;
            free(k);
        } else {
            pp = &(*pp)->next;
        }
    }
    pthread_mutex_unlock(&s_klock);
    free(fatCubinHandle);
}

void __cudaRegisterFunction(void **fatCubinHandle, const char *hostFun, char *deviceFun, const char *deviceName,
                            int thread_limit, uint3 *tid, uint3 *bid, dim3 *bDim, dim3 *gDim, int *wSize);
void __cudaRegisterFunction(void **fatCubinHandle, const char *hostFun, char *deviceFun, const char *deviceName,
                            int thread_limit, uint3 *tid, uint3 *bid, dim3 *bDim, dim3 *gDim, int *wSize)
{
    (void)deviceFun, (void)thread_limit, (void)tid, (void)bid, (void)bDim, (void)gDim, (void)wSize;
    struct CUkern_st *k = calloc(1, sizeof(*k));
    if (!k) {
        fprintf(stderr, "fake_cudart: __cudaRegisterFunction: out of memory\n");
        abort();
    }
    k->module = fatCubinHandle;
    k->host_fun = hostFun;
    snprintf(k->name, sizeof(k->name), "%s", deviceName ? deviceName : "?");
    pthread_mutex_lock(&s_klock);
    k->next = s_kernels;
    s_kernels = k;
    pthread_mutex_unlock(&s_klock);
}

static struct CUkern_st *s_kernel_of(const void *host_fun)
{
    pthread_mutex_lock(&s_klock);
    struct CUkern_st *k = s_kernels;
    while (k && k->host_fun != host_fun) k = k->next;
    pthread_mutex_unlock(&s_klock);
    return k;
}

/* ---- launches ---- */

typedef struct {
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;
} s_launch_config;

static __thread s_launch_config t_configs[8];
static __thread int t_nconfigs;

unsigned __cudaPushCallConfiguration(dim3 gridDim, dim3 blockDim, size_t sharedMem, struct CUstream_st *stream);
unsigned __cudaPushCallConfiguration(dim3 gridDim, dim3 blockDim, size_t sharedMem, struct CUstream_st *stream)
{
    if (t_nconfigs == (int)(sizeof(t_configs) / sizeof(t_configs[0]))) {
        fprintf(stderr, "fake_cudart: __cudaPushCallConfiguration: nested too deep\n");
        return 1; /* non-zero: the stub skips the launch */
    }
    t_configs[t_nconfigs++] = (s_launch_config){gridDim, blockDim, sharedMem, stream};
    return 0;
}

cudaError_t __cudaPopCallConfiguration(dim3 *gridDim, dim3 *blockDim, size_t *sharedMem, void *stream);
cudaError_t __cudaPopCallConfiguration(dim3 *gridDim, dim3 *blockDim, size_t *sharedMem, void *stream)
{
    if (t_nconfigs == 0) return cudaErrorInvalidConfiguration;
    s_launch_config c = t_configs[--t_nconfigs];
    *gridDim = c.grid;
    *blockDim = c.block;
    *sharedMem = c.shmem;
    *(cudaStream_t *)stream = c.stream;
    return cudaSuccess;
}

/* Runs kernel k as the launch describes: only the probe is known. */
static cudaError_t s_launch(const struct CUkern_st *k, dim3 grid, dim3 block, void **args, cudaStream_t stream)
{
    if (!k) {
        fprintf(stderr, "fake_cudart: launch of a kernel that was never registered\n");
        return s_launch_err(cudaErrorInvalidDeviceFunction);
    }
    static const char *const bert_names[TITAN_BK_COUNT] = TITAN_BK_NAMES;
    for (int kind = 0; kind < TITAN_BK_COUNT; kind++) {
        if (strcmp(k->name, bert_names[kind]) != 0) continue;
        /* cuda_bert.cu's kernels take one titan_cuda_bk; the grid must cover every item, as the kernel's
         * launch computes it. */
        if (!args || !args[0]) return s_launch_err(cudaErrorInvalidValue);
        const titan_cuda_bk *a = args[0];
        unsigned long long threads = (unsigned long long)grid.x * grid.y * grid.z * block.x * block.y * block.z;
        if ((long long)threads < titan_cuda_bk_items(kind, a)) {
            fprintf(stderr, "fake_cudart: kernel %s launched with %llu threads for %lld items\n", k->name, threads,
                    titan_cuda_bk_items(kind, a));
            return s_launch_err(cudaErrorInvalidConfiguration);
        }
        return s_launch_err(s_inner_bert_launch(stream, kind, a));
    }
    if (strcmp(k->name, S_PROBE_NAME) != 0) {
        fprintf(stderr, "fake_cudart: no emulation for kernel %s (only %s, cuda_kernels.cu's probe, and cuda_bert.cu's "
                "kernels)\n", k->name, S_PROBE_NAME);
        return s_launch_err(cudaErrorInvalidDeviceFunction);
    }
    if (!args || !args[0] || !args[1]) return s_launch_err(cudaErrorInvalidValue);
    unsigned *buf = *(unsigned **)args[0];
    unsigned n = *(unsigned *)args[1];
    /* Threads past the grid write nothing: the kernel covers i < grid.x * block.x only. */
    unsigned long long threads = (unsigned long long)grid.x * block.x;
    unsigned count = threads < n ? (unsigned)threads : n;
    return s_launch_err(s_inner_probe_launch(stream, buf, count));
}

#if CUDART_VERSION >= 12000
cudaError_t __cudaGetKernel(cudaKernel_t *kernel, const void *hostFun);
cudaError_t __cudaGetKernel(cudaKernel_t *kernel, const void *hostFun)
{
    struct CUkern_st *k = s_kernel_of(hostFun);
    if (!kernel || !k) return cudaErrorInvalidDeviceFunction;
    *kernel = k;
    return cudaSuccess;
}

cudaError_t __cudaLaunchKernel(cudaKernel_t kernel, dim3 gridDim, dim3 blockDim, void **args, size_t sharedMem,
                               cudaStream_t stream);
cudaError_t __cudaLaunchKernel(cudaKernel_t kernel, dim3 gridDim, dim3 blockDim, void **args, size_t sharedMem,
                               cudaStream_t stream)
{
    (void)sharedMem;
    return s_launch(kernel, gridDim, blockDim, args, stream);
}
#endif

cudaError_t cudaLaunchKernel(const void *func, dim3 gridDim, dim3 blockDim, void **args, size_t sharedMem,
                             cudaStream_t stream)
{
    (void)sharedMem;
    return s_launch(s_kernel_of(func), gridDim, blockDim, args, stream);
}

/* ---- what bench_gpu adds ---- */

static __thread int t_last_square_gemm;

cudaError_t cudaDeviceSynchronize(void)
{
    const char *hv = getenv("FAKE_CUDA_HANG_N");
    long hang = hv ? strtol(hv, NULL, 10) : 0;
    if (hang > 0 && t_last_square_gemm == hang) {
        fprintf(stderr, "fake_cudart: FAKE_CUDA_HANG_N=%ld: cudaDeviceSynchronize hangs\n", hang);
        for (;;) pause();
    }
    cudaError_t (*volatile inner)(void) = s_inner_device_synchronize;
    if (inner) return inner();
    return cudaStreamSynchronize(NULL); /* the legacy stream: waits for every stream's work */
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
    /* On the legacy default stream: after all earlier work, and done when it returns. */
    cudaError_t e = cudaMemcpyAsync(dst, src, count, kind, NULL);
    return e == cudaSuccess ? cudaStreamSynchronize(NULL) : e;
}

cudaError_t cudaMemset(void *devPtr, int value, size_t count)
{
    if (count == 0) return cudaSuccess;
    /* A host buffer of the value copied in: fake_cuda.c checks that [devPtr, +count) is device memory. */
    void *tmp = malloc(count);
    if (!tmp) return cudaErrorMemoryAllocation;
    memset(tmp, value, count);
    cudaError_t e = cudaMemcpy(devPtr, tmp, count, cudaMemcpyHostToDevice);
    free(tmp);
    return e;
}

cublasStatus_t fake_cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const float *alpha, const float *A, int lda, const float *B, int ldb,
                                   const float *beta, float *C, int ldc)
{
    t_last_square_gemm = m == n && n == k ? m : 0;
    return s_inner_sgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

cublasStatus_t fake_cublasDgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                   const double *alpha, const double *A, int lda, const double *B, int ldb,
                                   const double *beta, double *C, int ldc)
{
    t_last_square_gemm = m == n && n == k ? m : 0;
    return s_inner_dgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

cublasStatus_t fake_cublasGetVersion_v2(cublasHandle_t h, int *version);
cublasStatus_t fake_cublasGetVersion_v2(cublasHandle_t h, int *version)
{
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!version) return CUBLAS_STATUS_INVALID_VALUE;
#ifdef CUBLAS_VERSION
    *version = CUBLAS_VERSION;
#else
    *version = 0;
#endif
    return CUBLAS_STATUS_SUCCESS;
}
