/* test_devpool.c - cmocka tests of the caching device-memory pool (src/core/devpool.c) over a fake
 * allocator: block sizes, reuse in steady state, the cache's cap and eviction order, out-of-memory
 * trims and errors, destroy, get/put from several threads, and that the allocator never runs under the
 * pool's lock. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "devpool.h"

/* --- the fake device: a byte budget, the live blocks, the order of frees --- */

#define FAKE_MAX_LIVE 4096
#define FAKE_MAX_LOG 64

typedef struct {
    pthread_mutex_t lock;
    uint64_t budget;   /* bytes the device holds */
    uint64_t used;     /* bytes allocated now */
    int fail_rc;       /* when set (a negative errno other than -ENOMEM): every alloc fails with it */
    const char *fail_msg;
    int allocs, frees; /* calls that succeeded */
    struct {
        void *p;
        size_t size;
    } live[FAKE_MAX_LIVE];
    int nlive;
    void *freed[FAKE_MAX_LOG]; /* the first frees, in order */
    int nfreed;
    /* When set, each call checks that the pool's lock is free (another thread can read its stats). */
    struct titan_devpool *watch;
    int locked_calls; /* calls made while the pool held its lock */
} fake_dev;

static void *stats_reader(void *arg)
{
    titan_devpool_stats st;
    titan_devpool_get_stats(arg, &st);
    return NULL;
}

/* Whether another thread can take the pool's lock now: the allocator may wait for the whole device
 * (cudaMalloc, cudaFree), so the pool must never call it with its lock held. */
static void check_unlocked(fake_dev *f)
{
    if (!f->watch) return;
    pthread_t t;
    if (pthread_create(&t, NULL, stats_reader, f->watch) != 0) fail_msg("pthread_create");
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 2;
    if (pthread_timedjoin_np(t, NULL, &dl) != 0) {
        f->locked_calls++;
        pthread_detach(t); /* it finishes once the pool lets go */
    }
}

static int fake_alloc(void *ctx, size_t bytes, void **p, char *msg, size_t cap)
{
    fake_dev *f = ctx;
    check_unlocked(f);
    pthread_mutex_lock(&f->lock);
    if (f->fail_rc) {
        if (f->fail_msg) snprintf(msg, cap, "%s", f->fail_msg);
        pthread_mutex_unlock(&f->lock);
        return f->fail_rc;
    }
    if (f->used + bytes > f->budget || f->nlive == FAKE_MAX_LIVE) {
        snprintf(msg, cap, "fake: out of memory");
        pthread_mutex_unlock(&f->lock);
        return -ENOMEM;
    }
    /* Real memory of the block's size, so that a block handed out twice or freed twice shows (and ASan sees it). */
    void *b = malloc(bytes);
    assert_non_null(b);
    f->live[f->nlive].p = b;
    f->live[f->nlive].size = bytes;
    f->nlive++;
    f->used += bytes;
    f->allocs++;
    *p = b;
    pthread_mutex_unlock(&f->lock);
    return 0;
}

static void fake_free(void *ctx, void *p)
{
    fake_dev *f = ctx;
    check_unlocked(f);
    pthread_mutex_lock(&f->lock);
    int i = 0;
    while (i < f->nlive && f->live[i].p != p) i++;
    if (i == f->nlive) {
        pthread_mutex_unlock(&f->lock);
        fail_msg("the pool freed %p, which the device never gave (or gave and got back already)", p);
    }
    f->used -= f->live[i].size;
    f->live[i] = f->live[--f->nlive];
    if (f->nfreed < FAKE_MAX_LOG) f->freed[f->nfreed++] = p;
    f->frees++;
    pthread_mutex_unlock(&f->lock);
    free(p);
}

static void fake_init(fake_dev *f, uint64_t budget)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    f->budget = budget;
}

static titan_devpool *pool_new(fake_dev *f, uint64_t max_cached)
{
    titan_devpool_ops ops = {fake_alloc, fake_free, f};
    titan_devpool *pool = titan_devpool_new(&ops, max_cached);
    assert_non_null(pool);
    return pool;
}

static titan_devpool_stats stats(titan_devpool *pool)
{
    titan_devpool_stats st;
    titan_devpool_get_stats(pool, &st);
    return st;
}

static void *get_ok(titan_devpool *pool, size_t bytes)
{
    void *p = NULL;
    char msg[512] = "";
    int rc = titan_devpool_get(pool, bytes, &p, msg, sizeof(msg));
    if (rc != 0) fail_msg("get %zu: rc %d: %s", bytes, rc, msg);
    assert_non_null(p);
    return p;
}

/* --- block sizes --- */

static void test_block_size_table(void **state)
{
    (void)state;
    const size_t MiB = (size_t)1 << 20;
    const struct {
        size_t in, out;
    } t[] = {
        {0, 256},
        {1, 256},
        {255, 256},
        {256, 256},
        {257, 512},
        {1000, 1024},
        {1024, 1024},
        {1025, 2048},
        {65535, 65536},
        {65536, 65536},
        {MiB - 1, MiB},
        {MiB, MiB},
        {MiB + 1, MiB + MiB / 8},
        {MiB + MiB / 8, MiB + MiB / 8},
        {MiB + MiB / 8 + 1, MiB + MiB / 4},
        {MiB * 3 / 2, MiB * 3 / 2},
        {2 * MiB - 1, 2 * MiB},
        {2 * MiB, 2 * MiB},
        {2 * MiB + 1, 2 * MiB + MiB / 4},
        {3 * MiB + 1, 3 * MiB + MiB / 4},
        {100 * MiB, 104 * MiB}, /* 64 MiB below: steps of 8 MiB */
        {(size_t)1 << 32, (size_t)1 << 32},
        {((size_t)1 << 32) + 1, ((size_t)1 << 32) + ((size_t)1 << 29)},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        size_t got = titan_devpool_block_size(t[i].in);
        if (got != t[i].out) fail_msg("block_size(%zu) = %zu, expected %zu", t[i].in, got, t[i].out);
    }
}

static int is_pow2(size_t v)
{
    return v && !(v & (v - 1));
}

/* Every size up to 4 MiB around the boundaries, and random ones up to 16 GiB: never smaller than asked,
 * 256 at least, a power of two up to 1 MiB, then a multiple of an eighth of the power of two below,
 * at most 12.5% over (less than one step). */
static void check_block_rule(size_t bytes)
{
    size_t s = titan_devpool_block_size(bytes);
    if (s < bytes || s < 256) fail_msg("block_size(%zu) = %zu is smaller than asked", bytes, s);
    if (bytes <= ((size_t)1 << 20)) {
        if (!is_pow2(s)) fail_msg("block_size(%zu) = %zu is not a power of two", bytes, s);
        if (bytes > 256 && s >= 2 * bytes) fail_msg("block_size(%zu) = %zu: not the next power of two", bytes, s);
        return;
    }
    size_t top = (size_t)1 << 20;
    while (top <= bytes / 2) top *= 2;
    size_t step = top / 8;
    if (s % step != 0) fail_msg("block_size(%zu) = %zu is not a multiple of %zu", bytes, s, step);
    if (s - bytes >= step) fail_msg("block_size(%zu) = %zu is a step or more over", bytes, s);
}

static void test_block_size_rule(void **state)
{
    (void)state;
    for (size_t b = 0; b <= 4096; b++) check_block_rule(b);
    for (int e = 9; e <= 40; e++) {
        size_t p = (size_t)1 << e;
        for (size_t d = 0; d <= 3; d++) {
            check_block_rule(p - d);
            check_block_rule(p + d);
            check_block_rule(p + p / 8 - d);
            check_block_rule(p + p / 8 + d);
        }
    }
    unsigned seed = 12345;
    for (int i = 0; i < 100000; i++) {
        size_t b = ((size_t)rand_r(&seed) << 16 ^ (size_t)rand_r(&seed)) % ((size_t)16 << 30);
        check_block_rule(b);
    }
    /* Same block size, same block: 300 and 400 bytes both take 512. */
    assert_int_equal(titan_devpool_block_size(300), titan_devpool_block_size(400));
}

/* The top of the address space: the rounding must not wrap to a smaller size. */
static void test_block_size_huge(void **state)
{
    (void)state;
    const size_t top = (size_t)1 << (sizeof(size_t) * 8 - 1), step = top / 8;
    check_block_rule(top);
    check_block_rule(top + 1);
    check_block_rule(top + top / 2);
    assert_int_equal(titan_devpool_block_size(SIZE_MAX - step + 1), SIZE_MAX - step + 1); /* 15/16: exact */
    /* Above SIZE_MAX - step + 1 a rounding up would wrap (it once came out 0): the size is taken as it is. */
    const size_t huge[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - step + 2};
    for (size_t i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
        size_t s = titan_devpool_block_size(huge[i]);
        if (s < huge[i]) fail_msg("titan_devpool_block_size(%zu) = %zu, smaller than asked", huge[i], s);
    }
}

/* --- reuse --- */

static void test_steady_state_one_alloc(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 1 << 30);
    titan_devpool *pool = pool_new(&f, 1 << 20);
    const int N = 1000;
    void *first = NULL;
    for (int i = 0; i < N; i++) {
        void *p = get_ok(pool, 5000);
        if (!first) first = p;
        assert_ptr_equal(p, first);
        titan_devpool_stats st = stats(pool);
        assert_int_equal(st.in_use_bytes, 8192);
        assert_int_equal(st.cached_bytes, 0);
        titan_devpool_put(pool, p, 5000);
    }
    titan_devpool_stats st = stats(pool);
    assert_int_equal(st.device_allocs, 1);
    assert_int_equal(st.hits, N - 1);
    assert_int_equal(st.device_frees, 0);
    assert_int_equal(st.in_use_bytes, 0);
    assert_int_equal(st.cached_bytes, 8192);
    assert_int_equal(f.allocs, 1);
    assert_int_equal(f.nlive, 1);
    titan_devpool_destroy(&pool);
    assert_null(pool);
    assert_int_equal(f.nlive, 0);
    assert_int_equal(f.used, 0);
}

static void test_different_sizes(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 1 << 30);
    titan_devpool *pool = pool_new(&f, 64 << 20);
    const size_t sizes[] = {300, 5000, (2 << 20) + 1, 100};
    void *p[4];
    for (int i = 0; i < 4; i++) p[i] = get_ok(pool, sizes[i]);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < i; j++) assert_ptr_not_equal(p[i], p[j]);
    titan_devpool_stats st = stats(pool);
    uint64_t total = 512 + 8192 + (2 << 20) + (1 << 18) + 256;
    assert_int_equal(st.device_allocs, 4);
    assert_int_equal(st.in_use_bytes, total);
    for (int i = 0; i < 4; i++) titan_devpool_put(pool, p[i], sizes[i]);
    st = stats(pool);
    assert_int_equal(st.in_use_bytes, 0);
    assert_int_equal(st.cached_bytes, total);
    /* Each size finds its own block again. */
    for (int i = 3; i >= 0; i--) assert_ptr_equal(get_ok(pool, sizes[i]), p[i]);
    st = stats(pool);
    assert_int_equal(st.hits, 4);
    assert_int_equal(st.device_allocs, 4);
    assert_int_equal(st.cached_bytes, 0);
    for (int i = 0; i < 4; i++) titan_devpool_put(pool, p[i], sizes[i]);
    /* Another request rounding to the same block size takes the same block: 400 -> 512 like 300. */
    assert_ptr_equal(get_ok(pool, 400), p[0]);
    titan_devpool_put(pool, p[0], 400);
    /* A size with no cached block of its size allocates, even with larger ones cached. */
    void *q = get_ok(pool, 1000);
    st = stats(pool);
    assert_int_equal(st.device_allocs, 5);
    assert_int_equal(st.hits, 5);
    titan_devpool_put(pool, q, 1000);
    titan_devpool_trim(pool);
    st = stats(pool);
    assert_int_equal(st.cached_bytes, 0);
    assert_int_equal(st.device_frees, 5);
    assert_int_equal(f.nlive, 0);
    titan_devpool_destroy(&pool);
}

/* --- the cache's cap --- */

static void test_cap_evicts_least_recently_returned(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 1 << 30);
    titan_devpool *pool = pool_new(&f, 4096);
    void *b[4];
    for (int i = 0; i < 4; i++) b[i] = get_ok(pool, 1024);
    for (int i = 0; i < 4; i++) {
        titan_devpool_put(pool, b[i], 1024);
        assert_true(stats(pool).cached_bytes <= 4096);
    }
    assert_int_equal(stats(pool).cached_bytes, 4096);
    assert_int_equal(f.nfreed, 0);
    /* A 2 KiB block returned: the two least recently returned 1 KiB blocks (b[0], b[1]) make room. */
    void *e = get_ok(pool, 2048);
    titan_devpool_put(pool, e, 2048);
    titan_devpool_stats st = stats(pool);
    assert_int_equal(st.cached_bytes, 4096);
    assert_int_equal(st.device_frees, 2);
    assert_int_equal(f.nfreed, 2);
    assert_ptr_equal(f.freed[0], b[0]);
    assert_ptr_equal(f.freed[1], b[1]);
    /* The most recently returned block of a size goes out first. */
    assert_ptr_equal(get_ok(pool, 1024), b[3]);
    assert_ptr_equal(get_ok(pool, 1024), b[2]);
    assert_ptr_equal(get_ok(pool, 2048), e);
    assert_int_equal(stats(pool).cached_bytes, 0);
    titan_devpool_put(pool, b[2], 1024);
    titan_devpool_put(pool, b[3], 1024);
    titan_devpool_put(pool, e, 2048);
    /* Order now (most recent first): e, b[3], b[2]; a 4 KiB block pushes all three out, oldest first. */
    void *g = get_ok(pool, 4096);
    titan_devpool_put(pool, g, 4096);
    st = stats(pool);
    assert_int_equal(st.cached_bytes, 4096);
    assert_int_equal(f.nfreed, 5);
    assert_ptr_equal(f.freed[2], b[2]);
    assert_ptr_equal(f.freed[3], b[3]);
    assert_ptr_equal(f.freed[4], e);
    assert_int_equal(f.nlive, 1);
    titan_devpool_destroy(&pool);
    assert_int_equal(f.nlive, 0);
}

static void test_block_over_cap_freed_at_once(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 1 << 30);
    titan_devpool *pool = pool_new(&f, 4096);
    void *small = get_ok(pool, 1024);
    titan_devpool_put(pool, small, 1024);
    void *big = get_ok(pool, 8192);
    titan_devpool_put(pool, big, 8192);
    titan_devpool_stats st = stats(pool);
    assert_int_equal(st.device_frees, 1);
    assert_int_equal(st.cached_bytes, 1024); /* the small one stays: nothing was evicted for the big one */
    assert_int_equal(f.nfreed, 1);
    assert_ptr_equal(f.freed[0], big);
    assert_int_equal(st.in_use_bytes, 0);
    /* A pool that caches nothing frees every block it gets back. */
    fake_dev f0;
    fake_init(&f0, 1 << 30);
    titan_devpool *none = pool_new(&f0, 0);
    for (int i = 0; i < 3; i++) titan_devpool_put(none, get_ok(none, 300), 300);
    st = stats(none);
    assert_int_equal(st.device_allocs, 3);
    assert_int_equal(st.device_frees, 3);
    assert_int_equal(st.hits, 0);
    assert_int_equal(st.cached_bytes, 0);
    assert_int_equal(f0.nlive, 0);
    titan_devpool_put(none, NULL, 300); /* NULL is taken and ignored */
    assert_int_equal(stats(none).in_use_bytes, 0);
    titan_devpool_destroy(&none);
    titan_devpool_destroy(&pool);
    assert_int_equal(f.nlive, 0);
}

/* Random sizes with a small cap: the cache never holds more than its cap. */
static void test_cap_never_exceeded(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, (uint64_t)1 << 40);
    const uint64_t cap = 100000;
    titan_devpool *pool = pool_new(&f, cap);
    unsigned seed = 7;
    void *held[8] = {0};
    size_t sz[8] = {0};
    for (int i = 0; i < 5000; i++) {
        int k = rand_r(&seed) % 8;
        if (held[k]) {
            titan_devpool_put(pool, held[k], sz[k]);
            held[k] = NULL;
        } else {
            sz[k] = 1 + (size_t)rand_r(&seed) % 70000;
            held[k] = get_ok(pool, sz[k]);
        }
        titan_devpool_stats st = stats(pool);
        if (st.cached_bytes > cap) fail_msg("cached_bytes %llu over the cap", (unsigned long long)st.cached_bytes);
        assert_int_equal(st.device_allocs - st.device_frees, (uint64_t)f.nlive);
        assert_int_equal(st.in_use_bytes + st.cached_bytes, f.used);
    }
    for (int k = 0; k < 8; k++) titan_devpool_put(pool, held[k], sz[k]);
    assert_int_equal(stats(pool).in_use_bytes, 0);
    titan_devpool_destroy(&pool);
    assert_int_equal(f.nlive, 0);
}

/* --- out of memory and errors --- */

static void test_oom_trims_cache_and_succeeds(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 4096);
    titan_devpool *pool = pool_new(&f, 1 << 20);
    void *a = get_ok(pool, 2048), *b = get_ok(pool, 2048);
    titan_devpool_put(pool, a, 2048);
    titan_devpool_put(pool, b, 2048);
    assert_int_equal(f.used, 4096); /* the device is full of cached blocks */
    void *c = get_ok(pool, 4096);
    titan_devpool_stats st = stats(pool);
    assert_int_equal(st.oom_trims, 1);
    assert_int_equal(st.cached_bytes, 0);
    assert_int_equal(st.device_frees, 2);
    assert_int_equal(st.device_allocs, 3);
    assert_int_equal(st.in_use_bytes, 4096);
    assert_int_equal(f.nlive, 1);
    titan_devpool_put(pool, c, 4096);
    titan_devpool_destroy(&pool);
    assert_int_equal(f.nlive, 0);
}

static void test_oom_fails_with_message(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 4096);
    titan_devpool *pool = pool_new(&f, 1 << 20);
    void *c = get_ok(pool, 4096);
    /* Nothing cached to give back: no trim, -ENOMEM. */
    void *p = (void *)0x1;
    char msg[512] = "";
    assert_int_equal(titan_devpool_get(pool, 300, &p, msg, sizeof(msg)), -ENOMEM);
    assert_ptr_equal(p, (void *)0x1); /* *out untouched */
    if (!strstr(msg, "300 bytes")) fail_msg("the message does not say how much was asked for: %s", msg);
    if (!strstr(msg, "4096")) fail_msg("the message does not say what the pool holds: %s", msg);
    assert_non_null(strstr(msg, "fake: out of memory")); /* the allocator's own words follow */
    titan_devpool_stats st = stats(pool);
    assert_int_equal(st.oom_trims, 0);
    assert_int_equal(st.in_use_bytes, 4096);
    assert_int_equal(st.device_allocs, 1);
    /* Cached blocks, but too few: one trim, then -ENOMEM all the same. */
    titan_devpool_put(pool, c, 4096);
    void *d = get_ok(pool, 100);   /* 256: evicts nothing, allocates (4096 + 256 > budget: trims) */
    st = stats(pool);
    assert_int_equal(st.oom_trims, 1);
    msg[0] = '\0';
    assert_int_equal(titan_devpool_get(pool, 5000, &p, msg, sizeof(msg)), -ENOMEM);
    assert_non_null(strstr(msg, "5000 bytes"));
    st = stats(pool);
    assert_int_equal(st.oom_trims, 1); /* nothing cached: no second trim */
    titan_devpool_put(pool, d, 100);
    msg[0] = '\0';
    assert_int_equal(titan_devpool_get(pool, 5000, &p, msg, sizeof(msg)), -ENOMEM);
    st = stats(pool);
    assert_int_equal(st.oom_trims, 2);
    assert_int_equal(st.cached_bytes, 0);
    assert_int_equal(st.in_use_bytes, 0);
    assert_int_equal(f.nlive, 0);
    /* msg may be NULL. */
    assert_int_equal(titan_devpool_get(pool, 5000, &p, NULL, 0), -ENOMEM);
    titan_devpool_destroy(&pool);
}

static void test_other_errors_passed_through(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 1 << 20);
    titan_devpool *pool = pool_new(&f, 1 << 20);
    void *a = get_ok(pool, 1024);
    titan_devpool_put(pool, a, 1024);
    f.fail_rc = -EIO;
    f.fail_msg = "fake: an illegal memory access was encountered";
    void *p = NULL;
    char msg[512] = "";
    assert_int_equal(titan_devpool_get(pool, 2048, &p, msg, sizeof(msg)), -EIO);
    assert_string_equal(msg, "fake: an illegal memory access was encountered");
    titan_devpool_stats st = stats(pool);
    assert_int_equal(st.oom_trims, 0);       /* only out of memory trims */
    assert_int_equal(st.cached_bytes, 1024); /* the cache is left alone */
    assert_int_equal(st.in_use_bytes, 0);
    /* Without the allocator's words, a generic one. */
    f.fail_rc = -ENODEV;
    f.fail_msg = NULL;
    assert_int_equal(titan_devpool_get(pool, 2048, &p, msg, sizeof(msg)), -ENODEV);
    assert_string_equal(msg, "device allocation failed");
    /* A cached block of the size is still served while the device fails. */
    assert_ptr_equal(get_ok(pool, 1024), a);
    f.fail_rc = 0;
    titan_devpool_put(pool, a, 1024);
    titan_devpool_destroy(&pool);
    assert_int_equal(f.nlive, 0);
}

/* --- destroy --- */

static void test_destroy_frees_cached_only(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 1 << 30);
    titan_devpool *pool = pool_new(&f, 1 << 30);
    void *a = get_ok(pool, 1000), *b = get_ok(pool, 70000), *c = get_ok(pool, 3 << 20);
    titan_devpool_put(pool, a, 1000);
    titan_devpool_put(pool, c, 3 << 20);
    assert_int_equal(f.nlive, 3);
    titan_devpool_destroy(&pool);
    assert_null(pool);
    assert_int_equal(f.nlive, 1); /* b is still the caller's */
    assert_ptr_equal(f.live[0].p, b);
    fake_free(&f, b);
    assert_int_equal(f.nlive, 0);
    assert_int_equal(f.used, 0);
    titan_devpool_destroy(&pool); /* *p NULL */
    titan_devpool_destroy(NULL);
}

/* --- threads --- */

#define THREADS 4
#define ROUNDS 2000

typedef struct {
    titan_devpool *pool;
    unsigned seed;
    int id;
    int errors;
} worker_arg;

static void *worker_main(void *p)
{
    worker_arg *w = p;
    void *held[4] = {0};
    size_t sz[4] = {0};
    for (int i = 0; i < ROUNDS; i++) {
        int k = rand_r(&w->seed) % 4;
        if (held[k]) {
            /* The block must still hold what this thread wrote: nobody else was handed it meanwhile. */
            const unsigned char *b = held[k];
            for (size_t j = 0; j < sz[k]; j += 61)
                if (b[j] != (unsigned char)(w->id + 1)) w->errors++;
            titan_devpool_put(w->pool, held[k], sz[k]);
            held[k] = NULL;
        }
        sz[k] = 1 + (size_t)rand_r(&w->seed) % 40000;
        char msg[256];
        if (titan_devpool_get(w->pool, sz[k], &held[k], msg, sizeof(msg)) != 0) {
            w->errors++;
            held[k] = NULL;
            continue;
        }
        memset(held[k], w->id + 1, sz[k]);
    }
    for (int k = 0; k < 4; k++)
        if (held[k]) titan_devpool_put(w->pool, held[k], sz[k]);
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, (uint64_t)1 << 40);
    titan_devpool *pool = pool_new(&f, 256 << 10);
    pthread_t t[THREADS];
    worker_arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (worker_arg){pool, 1000u + (unsigned)i, i, 0};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].errors, 0);
    }
    titan_devpool_stats st = stats(pool);
    assert_int_equal(st.in_use_bytes, 0);
    assert_true(st.cached_bytes <= (256 << 10));
    assert_int_equal(st.cached_bytes, f.used); /* every live block is a cached one */
    assert_int_equal(st.device_allocs - st.device_frees, (uint64_t)f.nlive);
    assert_int_equal(st.device_allocs, (uint64_t)f.allocs);
    assert_int_equal(st.device_frees, (uint64_t)f.frees);
    assert_int_equal(st.hits + st.device_allocs, (uint64_t)THREADS * ROUNDS);
    assert_true(st.hits > 0);
    titan_devpool_destroy(&pool);
    assert_int_equal(f.nlive, 0);
    assert_int_equal(f.used, 0);
}

/* The allocator runs without the pool's lock on every path: a miss, an eviction on put, a block over
 * the cap, the out-of-memory trim and its retry, trim and destroy. */
static void test_allocator_runs_unlocked(void **state)
{
    (void)state;
    fake_dev f;
    fake_init(&f, 8192);
    titan_devpool *pool = pool_new(&f, 4096);
    f.watch = pool;
    void *a = get_ok(pool, 2048), *b = get_ok(pool, 2048);
    titan_devpool_put(pool, a, 2048);
    titan_devpool_put(pool, b, 2048);
    void *c = get_ok(pool, 1024); /* a miss */
    titan_devpool_put(pool, c, 1024); /* evicts a 2 KiB block */
    void *big = get_ok(pool, 6000); /* a miss that trims the cache after out of memory */
    titan_devpool_put(pool, big, 6000); /* over the cap: freed at once */
    void *d = get_ok(pool, 1024);
    titan_devpool_put(pool, d, 1024);
    titan_devpool_trim(pool);
    void *e = get_ok(pool, 512);
    titan_devpool_put(pool, e, 512);
    titan_devpool_stats st = stats(pool);
    assert_true(st.oom_trims >= 1);
    titan_devpool_destroy(&pool);
    assert_int_equal(f.nlive, 0);
    if (f.locked_calls) fail_msg("%d allocator calls ran while the pool held its lock", f.locked_calls);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_size_table),
        cmocka_unit_test(test_block_size_rule),
        cmocka_unit_test(test_block_size_huge),
        cmocka_unit_test(test_steady_state_one_alloc),
        cmocka_unit_test(test_different_sizes),
        cmocka_unit_test(test_cap_evicts_least_recently_returned),
        cmocka_unit_test(test_block_over_cap_freed_at_once),
        cmocka_unit_test(test_cap_never_exceeded),
        cmocka_unit_test(test_oom_trims_cache_and_succeeds),
        cmocka_unit_test(test_oom_fails_with_message),
        cmocka_unit_test(test_other_errors_passed_through),
        cmocka_unit_test(test_destroy_frees_cached_only),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_allocator_runs_unlocked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
