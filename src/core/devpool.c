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

/* Blocks taken out of the cache, in eviction order, for the caller to free once it has let go of the lock. */
typedef struct {
    s_block *head, *tail;
} s_dead;

/* Detaches the least recently returned cached block (lock held) onto *dead. */
static void s_evict_tail(titan_devpool *pool, s_dead *dead)
{
    s_block *b = pool->tail;
    s_unlink(pool, b);
    pool->st.device_frees++;
    if (dead->tail)
        dead->tail->next = b;
    else
        dead->head = b;
    dead->tail = b;
}

/* Frees the device memory of the blocks on `dead` (lock NOT held: cudaFree waits for the whole device,
 * and every executor and stats reader takes this lock), then returns their nodes to the spare list. */
static void s_free_dead(titan_devpool *pool, s_dead dead)
{
    if (!dead.head) return;
    for (s_block *b = dead.head; b; b = b->next)
        pool->ops.free(pool->ops.ctx, b->p);
    pthread_mutex_lock(&pool->lock);
    dead.tail->next = pool->spare;
    pool->spare = dead.head;
    pthread_mutex_unlock(&pool->lock);
}

static s_dead s_detach_all_locked(titan_devpool *pool)
{
    s_dead dead = {NULL, NULL};
    while (pool->tail)
        s_evict_tail(pool, &dead);
    return dead;
}

/* The allocator's callbacks run without the pool's lock: they may wait for the device (cudaMalloc and
 * cudaFree synchronize it), and a failing one may take the backend's own locks. */
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
    pthread_mutex_unlock(&pool->lock);
    void *p = NULL;
    char amsg[256] = "";
    int rc = pool->ops.alloc(pool->ops.ctx, size, &p, amsg, sizeof(amsg));
    if (rc == -ENOMEM) {
        /* Cached blocks of other sizes may be what stands in the way. */
        pthread_mutex_lock(&pool->lock);
        s_dead dead = s_detach_all_locked(pool);
        if (dead.head) pool->st.oom_trims++;
        pthread_mutex_unlock(&pool->lock);
        if (dead.head) {
            s_free_dead(pool, dead);
            amsg[0] = '\0';
            rc = pool->ops.alloc(pool->ops.ctx, size, &p, amsg, sizeof(amsg));
        }
    }
    pthread_mutex_lock(&pool->lock);
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
    s_dead dead = {NULL, NULL};
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
        pool->st.device_frees++;
        pthread_mutex_unlock(&pool->lock);
        pool->ops.free(pool->ops.ctx, block);
        return;
    }
    while (pool->tail && pool->st.cached_bytes + size > pool->max_cached)
        s_evict_tail(pool, &dead);
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
    s_free_dead(pool, dead);
}

void titan_devpool_trim(titan_devpool *pool)
{
    pthread_mutex_lock(&pool->lock);
    s_dead dead = s_detach_all_locked(pool);
    pthread_mutex_unlock(&pool->lock);
    s_free_dead(pool, dead);
}

void titan_devpool_set_max_cached(titan_devpool *pool, uint64_t max_cached)
{
    s_dead dead = {NULL, NULL};
    pthread_mutex_lock(&pool->lock);
    pool->max_cached = max_cached;
    while (pool->tail && pool->st.cached_bytes > max_cached)
        s_evict_tail(pool, &dead);
    pthread_mutex_unlock(&pool->lock);
    s_free_dead(pool, dead);
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
    titan_devpool_trim(pool);
    while (pool->spare) {
        s_block *b = pool->spare;
        pool->spare = b->next;
        free(b);
    }
    pthread_mutex_destroy(&pool->lock);
    free(pool);
    *p = NULL;
}
