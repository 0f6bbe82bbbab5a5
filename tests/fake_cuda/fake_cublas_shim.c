/* fake_cublas_shim.c - TEST ONLY: a stand-in libcublas.so.N for the device kit's test
 * (tests/integration/test_device_kit.sh): each cuBLAS function the real titan-backend-cuda.so and bench_gpu
 * import, forwarded to the fake libcudart.so.N (fake_cudart_lib.c), which keeps the one fake device's state.
 * Exported with the symbol version the real libcublas.so.N defines (fake_cublas.map.in). */
#include <stddef.h>

#include <cublas_v2.h>

/* What fake_cudart_lib.c exports for this shim, with the real functions' signatures. */
extern __typeof__(cublasCreate_v2) fake_cublasCreate_v2;
extern __typeof__(cublasDestroy_v2) fake_cublasDestroy_v2;
extern __typeof__(cublasSetStream_v2) fake_cublasSetStream_v2;
extern __typeof__(cublasSgemm_v2) fake_cublasSgemm_v2;
extern __typeof__(cublasDgemm_v2) fake_cublasDgemm_v2;
extern __typeof__(cublasGetVersion_v2) fake_cublasGetVersion_v2;
extern __typeof__(cublasSgemmStridedBatched) fake_cublasSgemmStridedBatched;

cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)
{
    return fake_cublasCreate_v2(handle);
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)
{
    return fake_cublasDestroy_v2(handle);
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId)
{
    return fake_cublasSetStream_v2(handle, streamId);
}

/* The fake's GEMMs need no workspace: the module's own (from its pool) is accepted and left alone, as
 * the real cuBLAS 12+ takes it. */
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!workspace && workspaceSizeInBytes) return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetVersion_v2(cublasHandle_t handle, int *version)
{
    return fake_cublasGetVersion_v2(handle, version);
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                              int n, int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                              const float *beta, float *C, int ldc)
{
    return fake_cublasSgemm_v2(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

cublasStatus_t cublasDgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                              int n, int k, const double *alpha, const double *A, int lda, const double *B,
                              int ldb, const double *beta, double *C, int ldc)
{
    return fake_cublasDgemm_v2(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float *alpha, const float *A, int lda,
                                         long long strideA, const float *B, int ldb, long long strideB,
                                         const float *beta, float *C, int ldc, long long strideC, int batchCount)
{
    return fake_cublasSgemmStridedBatched(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                                          beta, C, ldc, strideC, batchCount);
}
