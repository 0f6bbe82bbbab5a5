/* devpool.h - a caching pool over a device allocator: steady-state requests reuse blocks instead of
 * calling cudaMalloc/cudaFree each time. Plain C, so that it is tested on machines without a GPU. */
#ifndef TITAN_WORKER_DEVPOOL_H
#define TITAN_WORKER_DEVPOOL_H

#include <stddef.h>
#include <stdint.h>

/* The allocator under the pool (cudaMalloc/cudaFree in the CUDA backend). alloc returns 0 and *p,
 * -ENOMEM when the device is out of memory, or another -errno with a message in msg. The pool never
 * calls either with its lock held: both may wait for the whole device, and they may take the caller's
 * own locks. */
typedef struct {
    int (*alloc)(void *ctx, size_t bytes, void **p, char *msg, size_t cap);
    void (*free)(void *ctx, void *p);
    void *ctx;
} titan_devpool_ops;

typedef struct {
    uint64_t in_use_bytes;  /* handed out, in block sizes */
    uint64_t cached_bytes;  /* free blocks kept for reuse */
    uint64_t device_allocs; /* calls to ops.alloc that succeeded, since the start */
    uint64_t device_frees;  /* calls to ops.free */
    uint64_t hits;          /* gets served from the cache */
    uint64_t oom_trims;     /* times the cache was emptied to retry an allocation */
} titan_devpool_stats;

typedef struct titan_devpool titan_devpool;

/* Creates a pool that keeps at most max_cached bytes of free blocks. Returns NULL when out of memory. */
titan_devpool *titan_devpool_new(const titan_devpool_ops *ops, uint64_t max_cached);
/* Frees the cached blocks and the pool; takes NULL and sets *p to NULL. Blocks still handed out are
 * not the pool's any more (the caller frees them, or the device context goes). */
void titan_devpool_destroy(titan_devpool **p);

/* The block size a request of `bytes` gets: powers of two up to 1 MiB, then steps of an eighth
 * of the power of two below (at most 12.5% over). */
size_t titan_devpool_block_size(size_t bytes);

/* Hands out a block of at least `bytes`: a cached one of the same block size, or a new one. When the
 * device is out of memory it frees every cached block and tries once more. Returns 0 and *out,
 * -ENOMEM (msg says how much was asked for and how much the pool holds) or the allocator's error. */
int titan_devpool_get(titan_devpool *pool, size_t bytes, void **out, char *msg, size_t cap);
/* Takes back a block from titan_devpool_get with the same `bytes`; keeps it for reuse unless that
 * would hold more than max_cached, in which case the least recently returned blocks go first. */
void titan_devpool_put(titan_devpool *pool, void *block, size_t bytes);
/* Frees every cached block. */
void titan_devpool_trim(titan_devpool *pool);
/* Changes the bound on cached bytes; the least recently returned blocks over it are freed at once. */
void titan_devpool_set_max_cached(titan_devpool *pool, uint64_t max_cached);
void titan_devpool_get_stats(titan_devpool *pool, titan_devpool_stats *out);

#endif
