/* hostpool.h - host memory for tensor buffers (results, parsed operands, the CPU backend's resident
 * tensors) from one process-wide caching pool: titan_devpool over the C allocator. A fresh buffer costs
 * a page fault per 4 KiB on first touch (on the VMs titan runs on, tens of ms for a 4 MiB result); a
 * block that comes back from the pool is already mapped. Blocks are sized as devpool sizes them (powers
 * of two to 1 MiB, then eighths), and the free ones kept are bounded (titan_hostpool_set_cap): over the
 * cap, the least recently returned go back to the C library, which unmaps large ones. */
#ifndef TITAN_CORE_HOSTPOOL_H
#define TITAN_CORE_HOSTPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "devpool.h"

/* Free bytes the pool keeps unless told otherwise (the worker's --host-pool-mb). */
#define TITAN_HOSTPOOL_DEFAULT_CAP (256ULL << 20)

/* Bounds the free bytes kept for reuse; 0 keeps none (every buffer is allocated and freed, as without a
 * pool). Trims the cache at once when it holds more. Any thread, any time. */
void titan_hostpool_set_cap(uint64_t max_cached);
uint64_t titan_hostpool_cap(void);

/* A buffer of `bytes` (0 counts as 1), 64-byte aligned, or NULL when out of memory. Its contents are
 * whatever was there. Free it with titan_hostbuf_free only. */
void *titan_hostbuf_alloc(size_t bytes);
/* Returns a buffer to the pool; takes NULL. Any thread (ZeroMQ's I/O threads free reply frames). */
void titan_hostbuf_free(void *p);
/* The same signature as zmq_free_fn: frees data with titan_hostbuf_free, ignores hint. */
void titan_hostbuf_free_fn(void *data, void *hint);

/* The pool's figures: device_allocs and device_frees count calls to the C allocator ("from the OS"),
 * hits the buffers served from the cache. */
void titan_hostpool_get_stats(titan_devpool_stats *out);
/* Frees every cached block. */
void titan_hostpool_trim(void);

#endif
