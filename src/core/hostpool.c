/* hostpool.c - the host buffer pool (see hostpool.h). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "hostpool.h"

/* The allocator puts a header before each block, outside the pool's block size, that records the size
 * asked of the pool, so that a free needs only the pointer (ZeroMQ's free callback has nothing else).
 * 64 bytes keep the buffer 64-byte aligned. */
#define S_HEADER 64

static titan_devpool *s_pool;
static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t s_cap = TITAN_HOSTPOOL_DEFAULT_CAP;

static int s_alloc(void *ctx, size_t bytes, void **p, char *msg, size_t cap)
{
    (void)ctx;
    unsigned char *b = NULL;
    if (bytes <= SIZE_MAX - 2 * S_HEADER)
        b = aligned_alloc(S_HEADER, S_HEADER + ((bytes + S_HEADER - 1) & ~(size_t)(S_HEADER - 1)));
    if (b) {
        *p = b + S_HEADER;
        return 0;
    }
    if (msg && cap) snprintf(msg, cap, "out of host memory");
    return -ENOMEM;
}

static void s_free(void *ctx, void *p)
{
    (void)ctx;
    free((unsigned char *)p - S_HEADER);
}

static void s_init(void)
{
    titan_devpool_ops ops = {s_alloc, s_free, NULL};
    s_pool = titan_devpool_new(&ops, atomic_load(&s_cap));
}

static titan_devpool *s_get_pool(void)
{
    pthread_once(&s_once, s_init);
    return s_pool;
}

void titan_hostpool_set_cap(uint64_t max_cached)
{
    atomic_store(&s_cap, max_cached);
    titan_devpool *pool = s_get_pool();
    if (pool) titan_devpool_set_max_cached(pool, max_cached);
}

uint64_t titan_hostpool_cap(void)
{
    return atomic_load(&s_cap);
}

void *titan_hostbuf_alloc(size_t bytes)
{
    if (bytes > SIZE_MAX / 2) return NULL; /* no block size this large (and no wrap below) */
    size_t want = bytes ? bytes : 1;
    titan_devpool *pool = s_get_pool();
    unsigned char *p = NULL;
    if (pool) {
        if (titan_devpool_get(pool, want, (void **)&p, NULL, 0) != 0) return NULL;
    } else if (s_alloc(NULL, want, (void **)&p, NULL, 0) != 0) {
        return NULL; /* no pool (out of memory at its creation): plain allocations, marked as such */
    }
    *(size_t *)(p - S_HEADER) = pool ? want : 0;
    return p;
}

void titan_hostbuf_free(void *p)
{
    if (!p) return;
    size_t want = *(size_t *)((unsigned char *)p - S_HEADER);
    if (want)
        titan_devpool_put(s_pool, p, want);
    else
        s_free(NULL, p);
}

void titan_hostbuf_free_fn(void *data, void *hint)
{
    (void)hint;
    titan_hostbuf_free(data);
}

void titan_hostpool_get_stats(titan_devpool_stats *out)
{
    titan_devpool *pool = s_get_pool();
    if (pool)
        titan_devpool_get_stats(pool, out);
    else
        *out = (titan_devpool_stats){0};
}

void titan_hostpool_trim(void)
{
    titan_devpool *pool = s_get_pool();
    if (pool) titan_devpool_trim(pool);
}
