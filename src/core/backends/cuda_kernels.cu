// cuda_kernels.cu - the CUDA backend's own device code: a probe kernel that proves, at start, that
// this build has code for the GPU it runs on (cuBLAS brings its own kernels for the products).
#include <cuda_runtime.h>

#ifndef TITAN_CUDA_ARCHS
#define TITAN_CUDA_ARCHS "unknown"
#endif

extern "C" const char titan_cuda_archs[] = TITAN_CUDA_ARCHS;

static __global__ void s_probe(unsigned *buf, unsigned n)
{
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) buf[i] = i * 3u + 1u;
}

// Launches the probe on `stream`: buf[i] = i * 3 + 1 for i < n. Returns the launch's error
// (cudaErrorNoKernelImageForDevice when no code here fits the GPU).
extern "C" cudaError_t titan_cuda_probe_launch(cudaStream_t stream, unsigned *buf, unsigned n)
{
    s_probe<<<(n + 127) / 128, 128, 0, stream>>>(buf, n);
    return cudaGetLastError();
}
