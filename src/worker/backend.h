/* backend.h - the compute backend interface (cpu: OpenBLAS; cuda: cuBLAS, when built). */
#ifndef TITAN_WORKER_BACKEND_H
#define TITAN_WORKER_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "titan/tensor.h"

typedef struct {
    char name[256];             /* device name: the GPU's, or the CPU model */
    const char *backend;        /* "cpu" or "cuda" */
    double total_memory_gb;     /* device memory (host RAM on the CPU), in 1e9 bytes */
    int multi_processor_count;  /* SMs, or cores */
    char cuda_capability[16];   /* "5.2"; empty on the CPU */
} titan_device_info;

/* Live figures of the device (the host, on the CPU backend); each has_* says whether it is known. */
typedef struct {
    bool has_memory;
    uint64_t memory_total_bytes;
    uint64_t memory_used_bytes;
    bool has_utilization;
    double utilization; /* busy share of the device's time, 0..1, over the last sampling window */
    bool has_temperature;
    double temperature_c;
} titan_device_stats;

typedef struct titan_backend titan_backend;
struct titan_backend {
    titan_device_info info;
    /* c[m x n] = a[m x k] * b[k x n], row-major, contiguous. Returns 0 or -errno. */
    int (*gemm)(titan_backend *be, titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b,
                void *c);
    /* Fills *out with what the device can tell now; safe from any thread, cheap enough for every
     * gpu_info (figures may be cached for a fraction of a second). NULL: the backend knows none. */
    void (*stats)(titan_backend *be, titan_device_stats *out);
    void (*destroy)(titan_backend *be);
};

/* Opens the backend named by `device` ("auto", "cpu", "cuda", "cuda:N") with `blas_threads`
 * CPU threads (0: all cores). Returns 0 and *out, -ENODEV when the device does not exist,
 * -ENOTSUP when this build lacks that backend; `err` explains either. */
int titan_backend_open(const char *device, int blas_threads, titan_backend **out, char *err, size_t errcap);
void titan_backend_destroy(titan_backend **be);

/* The CPU backend (backends/cpu.c). */
int titan_backend_cpu_open(int blas_threads, titan_backend **out);

#endif
