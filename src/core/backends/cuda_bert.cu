// cuda_bert.cu - the BERT encoder's kernels (cuda_bert.h): one thread per item, each item's code shared with the
// fake runtime of the tests and its math with the CPU forward pass (encoder/bert_math.h). cuda_bert.c launches
// them between its cuBLAS products. Only what CUDA 11.4 and sm_52 have: plain launches, no cooperative groups.
#include <cuda_runtime.h>

#include "cuda_bert.h"

#define S_THREADS 256

#define S_KERNEL(name, kind)                                                                                    \
    extern "C" __global__ void name(titan_cuda_bk a)                                                             \
    {                                                                                                            \
        long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                          \
        if (i < titan_cuda_bk_items(kind, &a)) titan_cuda_bk_item(kind, &a, i);                                  \
    }

S_KERNEL(titan_bk_embed_ln, TITAN_BK_EMBED_LN)
S_KERNEL(titan_bk_bias, TITAN_BK_BIAS)
S_KERNEL(titan_bk_residual_ln, TITAN_BK_RESIDUAL_LN)
S_KERNEL(titan_bk_bias_act, TITAN_BK_BIAS_ACT)
S_KERNEL(titan_bk_softmax, TITAN_BK_SOFTMAX)
S_KERNEL(titan_bk_pool, TITAN_BK_POOL)
S_KERNEL(titan_bk_l2norm, TITAN_BK_L2NORM)
S_KERNEL(titan_bk_bias_tanh, TITAN_BK_BIAS_TANH)

extern "C" cudaError_t titan_cuda_bert_launch(cudaStream_t stream, int kind, const titan_cuda_bk *args)
{
    if (kind < 0 || kind >= TITAN_BK_COUNT || !args) return cudaErrorInvalidValue;
    long long items = titan_cuda_bk_items(kind, args);
    if (items <= 0) return cudaSuccess;
    long long blocks = (items + S_THREADS - 1) / S_THREADS;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration; // gridDim.x's limit (sm_30 and later)
    dim3 grid((unsigned)blocks), block(S_THREADS);
    switch (kind) {
    case TITAN_BK_EMBED_LN: titan_bk_embed_ln<<<grid, block, 0, stream>>>(*args); break;
    case TITAN_BK_BIAS: titan_bk_bias<<<grid, block, 0, stream>>>(*args); break;
    case TITAN_BK_RESIDUAL_LN: titan_bk_residual_ln<<<grid, block, 0, stream>>>(*args); break;
    case TITAN_BK_BIAS_ACT: titan_bk_bias_act<<<grid, block, 0, stream>>>(*args); break;
    case TITAN_BK_SOFTMAX: titan_bk_softmax<<<grid, block, 0, stream>>>(*args); break;
    case TITAN_BK_POOL: titan_bk_pool<<<grid, block, 0, stream>>>(*args); break;
    case TITAN_BK_L2NORM: titan_bk_l2norm<<<grid, block, 0, stream>>>(*args); break;
    default: titan_bk_bias_tanh<<<grid, block, 0, stream>>>(*args); break;
    }
    return cudaGetLastError();
}
