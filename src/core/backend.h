/* backend.h - the compute backend interface (cpu: OpenBLAS, here; cuda: cuBLAS, a module loaded at start). */
#ifndef TITAN_WORKER_BACKEND_H
#define TITAN_WORKER_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "titan/tensor.h"

#include "encoder/bert.h"
#include "error.h"

typedef struct {
    char name[256];             /* device name: the GPU's, or the CPU model */
    const char *backend;        /* "cpu" or "cuda" */
    double total_memory_gb;     /* device memory (host RAM on the CPU), in 1e9 bytes */
    int multi_processor_count;  /* SMs, or cores */
    char cuda_capability[16];   /* "5.2"; empty on the CPU */
    int device_index;           /* the CUDA device ordinal; -1 on the CPU */
    char driver_version[32];    /* "470.256.02" (NVML) or "11.4" (CUDA's driver API version); empty: unknown */
    char runtime_version[32];   /* "11.8"; empty on the CPU */
    char pci_bus_id[32];        /* "0000:01:00.0"; empty: unknown */
    uint64_t reserved_bytes;    /* device memory the backend sets aside for its own work (CUDA: the
                                 * executors' cuBLAS workspaces), not for resident tensors; 0 on the CPU */
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
    bool has_power;
    double power_w;
    bool has_clocks;
    double sm_clock_mhz, mem_clock_mhz;
    /* The backend's memory pool (cuda only): bytes held from the device, of which cached for reuse, of
     * which cuBLAS's workspaces (counted also where cuBLAS allocates them itself). */
    bool has_pool;
    uint64_t pool_held_bytes, pool_cached_bytes, pool_device_allocs, pool_workspace_bytes;
} titan_device_stats;

/* A matmul operand: in host memory (a request's frame) or in the backend's memory (a resident
 * tensor, from mem_alloc). Exactly one of the two is set. */
typedef struct {
    const void *host;
    const void *dev;
} titan_operand;

/* Where a matmul's result goes: a host buffer, or backend memory from mem_alloc. */
typedef struct {
    void *host;
    void *dev;
} titan_result;

typedef struct titan_backend titan_backend;
struct titan_backend {
    titan_device_info info;
    /* c[m x n] = a[m x k] * b[k x n], row-major, contiguous, float32 or float64. Safe to call
     * from several executor threads at once. Returns 0, or -1 with err set (too_large when
     * memory ran out, device_error for anything else). */
    int (*matmul)(titan_backend *be, titan_dtype dt, size_t m, size_t k, size_t n, titan_operand a, titan_operand b,
                  titan_result c, titan_error *err);
    /* Backend memory for resident tensors. mem_alloc returns 0 and *dev, or -1 with err set
     * (too_large: the device is out of memory; device_error). mem_free takes what mem_alloc gave
     * and the same size. upload/download copy whole buffers; they return 0 or -1 with err set. */
    int (*mem_alloc)(titan_backend *be, size_t bytes, void **dev, titan_error *err);
    void (*mem_free)(titan_backend *be, void *dev, size_t bytes);
    /* The device bytes that mem_alloc(bytes) really holds (the CUDA pool rounds up to its block
     * sizes), so that the tensor quotas count them. NULL: `bytes`. */
    size_t (*mem_footprint)(titan_backend *be, size_t bytes);
    int (*upload)(titan_backend *be, void *dev, const void *host, size_t bytes, titan_error *err);
    int (*download)(titan_backend *be, void *host, const void *dev, size_t bytes, titan_error *err);
    /* Fills *out with what the device can tell now; safe from any thread, cheap enough for every
     * gpu_info (figures may be cached for a fraction of a second). NULL: the backend knows none. */
    void (*stats)(titan_backend *be, titan_device_stats *out);
    /* False, with the reason in why, when the device can no longer compute (a sticky CUDA error
     * poisoned its context); the worker then reports itself not ready. NULL: always ready. */
    bool (*ready)(titan_backend *be, char *why, size_t cap);
    /* A BERT-family encoder's forward pass on the device (encoder/bert.h's titan_bert_forward_cpu, same inputs,
     * checks and outputs: n x hidden pooled embeddings, L2-normalised when `normalize`, or n x num_labels logits,
     * in host memory). The backend keeps a device copy of m's weights from the first call until bert_release(m).
     * Safe from several executors at once. Returns 0, or -1 with err (too_large: device memory; device_error).
     * NULL: the backend has none, and the CPU forward pass runs. */
    int (*bert_forward)(titan_backend *be, const titan_bert *m, const titan_bert_input *in, size_t n, bool normalize,
                        float *out, titan_error *err);
    /* Frees the device copy of m's weights (before m is freed); takes a model it never saw. */
    void (*bert_release)(titan_backend *be, const titan_bert *m);
    void (*destroy)(titan_backend *be);
};

/* The one device grammar, for titan-worker's --device, compute_backends.yaml's `device` and the
 * in-process engine: "auto", "cpu", "cuda" (device 0) or "cuda:N" with N from 0 to
 * TITAN_DEVICE_INDEX_MAX (backends/select.c). */
typedef enum { TITAN_DEVICE_AUTO, TITAN_DEVICE_CPU, TITAN_DEVICE_CUDA } titan_device_kind;
#define TITAN_DEVICE_INDEX_MAX 255
/* How messages name the grammar. */
#define TITAN_DEVICE_GRAMMAR "auto, cpu, cuda or cuda:N (N: 0 to 255)"
typedef struct {
    titan_device_kind kind;
    int index; /* the CUDA ordinal: 0 for "cuda", N for "cuda:N"; -1 for auto and cpu */
} titan_device_spec;
/* Parses `len` bytes of `text` (no NUL needed). Returns 0 and *out, or -EINVAL. */
int titan_device_parse(const char *text, size_t len, titan_device_spec *out);

void titan_backend_destroy(titan_backend **be);

/* The CPU backend (backends/cpu.c). */
int titan_backend_cpu_open(int blas_threads, titan_backend **out);

#endif
