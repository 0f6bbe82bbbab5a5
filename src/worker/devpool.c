/* devpool.c - the caching device-memory pool (see devpool.h). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "devpool.h"

typedef struct s_block {
    void *p;
    size_t size; /* block size */
    struct s_block *prev, *next;
} s_block;

struct titan_devpool {
    titan_devpool_ops ops;
    uint64_t max_cached;
    pthread_mutex_t lock;
    s_block *head, *tail; /* cached blocks, most recently returned first */
    s_block *spare;       /* unused list nodes, so that steady state does not malloc either */
    titan_devpool_stats st;
};

size_t titan_devpool_block_size(size_t bytes)
{
    if (bytes <= 256) return 256;
    if (bytes <= ((size_t)1 << 20)) {
        size_t s = 256;
        while (s < bytes)
            s <<= 1;
        return s;
    }
    size_t top = (size_t)1 << 20;
    while (top <= bytes / 2)
        top <<= 1; /* the largest power of two <= bytes */
    size_t step = top / 8;
    size_t n = bytes / step + (bytes % step != 0); /* no wrap near SIZE_MAX */
    if (n > SIZE_MAX / step) return bytes;         /* no rounding at the very top of the address space */
    return n * step;
}

titan_devpool *titan_devpool_new(const titan_devpool_ops *ops, uint64_t max_cached)
{
    titan_devpool *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    if (pthread_mutex_init(&pool->lock, NULL) != 0) {
        free(pool);
        return NULL;
    }
    pool->ops = *ops;
    pool->max_cached = max_cached;
    return pool;
}

static void s_unlink(titan_devpool *pool, s_block *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        pool->head = b->next;
    if (b->next)
        b->next->prev = b->prev;
    else
        pool->tail = b->prev;
    b->prev = b->next = NULL;
    pool->st.cached_bytes -= b->size;
}

static void s_release_node(titan_devpool *pool, s_block *b)
{
    b->next = pool->spare;
    pool->spare = b;
}

/* Frees the least recently returned cached block to the device (lock held). */
static void s_evict_tail(titan_devpool *pool)
{
    s_block *b = pool->tail;
    s_unlink(pool, b);
    pool->ops.free(pool->ops.ctx, b->p);
    pool->st.device_frees++;
    s_release_node(pool, b);
}

static void s_trim_locked(titan_devpool *pool)
{
    while (pool->tail)
        s_evict_tail(pool);
}

int titan_devpool_get(titan_devpool *pool, size_t bytes, void **out, char *msg, size_t cap)
{
    size_t size = titan_devpool_block_size(bytes);
    pthread_mutex_lock(&pool->lock);
    for (s_block *b = pool->head; b; b = b->next) {
        if (b->size != size) continue;
        s_unlink(pool, b);
        *out = b->p;
        s_release_node(pool, b);
        pool->st.hits++;
        pool->st.in_use_bytes += size;
        pthread_mutex_unlock(&pool->lock);
        return 0;
    }
    void *p = NULL;
    char amsg[256] = "";
    int rc = pool->ops.alloc(pool->ops.ctx, size, &p, amsg, sizeof(amsg));
    if (rc == -ENOMEM && pool->head) {
        /* Cached blocks of other sizes may be what stands in the way. */
        pool->st.oom_trims++;
        s_trim_locked(pool);
        amsg[0] = '\0';
        rc = pool->ops.alloc(pool->ops.ctx, size, &p, amsg, sizeof(amsg));
    }
    if (rc == 0) {
        pool->st.device_allocs++;
        pool->st.in_use_bytes += size;
        *out = p;
    } else if (msg && cap) {
        if (rc == -ENOMEM)
            snprintf(
                msg, cap,
                "device out of memory: %zu bytes asked for (a block of %zu) while this worker holds %llu "
                "in use%s%s",
                bytes, size, (unsigned long long)pool->st.in_use_bytes, amsg[0] ? "; " : "", amsg);
        else
            snprintf(msg, cap, "%s", amsg[0] ? amsg : "device allocation failed");
    }
    pthread_mutex_unlock(&pool->lock);
    return rc;
}

void titan_devpool_put(titan_devpool *pool, void *block, size_t bytes)
{
    if (!block) return;
    size_t size = titan_devpool_block_size(bytes);
    pthread_mutex_lock(&pool->lock);
    pool->st.in_use_bytes -= size;
    s_block *b = pool->spare;
    if (b)
        pool->spare = b->next;
    else
        b = malloc(sizeof(*b));
    if (!b || size > pool->max_cached) {
        /* Not kept: no node for it, or the block alone is over the cache's size. */
        if (b) s_release_node(pool, b);
        pool->ops.free(pool->ops.ctx, block);
        pool->st.device_frees++;
        pthread_mutex_unlock(&pool->lock);
        return;
    }
    while (pool->tail && pool->st.cached_bytes + size > pool->max_cached)
        s_evict_tail(pool);
    b->p = block;
    b->size = size;
    b->prev = NULL;
    b->next = pool->head;
    if (pool->head)
        pool->head->prev = b;
    else
        pool->tail = b;
    pool->head = b;
    pool->st.cached_bytes += size;
    pthread_mutex_unlock(&pool->lock);
}

void titan_devpool_trim(titan_devpool *pool)
{
    pthread_mutex_lock(&pool->lock);
    s_trim_locked(pool);
    pthread_mutex_unlock(&pool->lock);
}

void titan_devpool_get_stats(titan_devpool *pool, titan_devpool_stats *out)
{
    pthread_mutex_lock(&pool->lock);
    *out = pool->st;
    pthread_mutex_unlock(&pool->lock);
}

void titan_devpool_destroy(titan_devpool **p)
{
    if (!p || !*p) return;
    titan_devpool *pool = *p;
    s_trim_locked(pool);
    while (pool->spare) {
        s_block *b = pool->spare;
        pool->spare = b->next;
        free(b);
    }
    pthread_mutex_destroy(&pool->lock);
    free(pool);
    *p = NULL;
}
