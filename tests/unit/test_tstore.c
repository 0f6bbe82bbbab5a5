/* test_tstore.c - cmocka tests of the resident tensor table (src/worker/tstore.c): handles, ownership,
 * the per-client and per-worker byte quotas and the per-client count, quota given back, references that
 * outlive a free, free_all, the list's JSON and the idle TTL; over a fake backend that counts its memory
 * (and can fail an allocation), and over the real CPU backend. */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "backend.h"
#include "tstore.h"

/* --- a fake backend: memory from malloc, counted; mem_alloc can be made to fail --- */

typedef struct {
    titan_backend be; /* first: the backend pointer is this object's */
    int live;         /* blocks allocated and not freed */
    uint64_t live_bytes;
    int allocs, frees;
    int fail_next; /* the next mem_alloc fails */
} fake_be;

static int fake_mem_alloc(titan_backend *be, size_t bytes, void **dev, titan_error *err)
{
    fake_be *f = (fake_be *)be;
    if (f->fail_next) {
        f->fail_next = 0;
        err->code = "too_large";
        snprintf(err->msg, sizeof(err->msg), "fake: device out of memory for %zu bytes", bytes);
        return -1;
    }
    *dev = malloc(bytes ? bytes : 1);
    assert_non_null(*dev);
    f->live++;
    f->live_bytes += bytes;
    f->allocs++;
    return 0;
}

static void fake_mem_free(titan_backend *be, void *dev, size_t bytes)
{
    fake_be *f = (fake_be *)be;
    assert_non_null(dev);
    assert_true(f->live > 0);
    assert_true(f->live_bytes >= bytes);
    f->live--;
    f->live_bytes -= bytes;
    f->frees++;
    free(dev);
}

static void fake_init(fake_be *f)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->be.info.name, sizeof(f->be.info.name), "fake");
    f->be.info.backend = "fake";
    f->be.mem_alloc = fake_mem_alloc;
    f->be.mem_free = fake_mem_free;
}

static titan_tstore_quota quota(uint64_t worker_bytes, uint64_t client_bytes, int client_tensors, double ttl)
{
    titan_tstore_quota q = {worker_bytes, client_bytes, client_tensors, ttl};
    return q;
}

typedef struct {
    uint64_t bytes, count, clients, expired;
} usage_t;

static usage_t usage(titan_tstore *ts)
{
    usage_t u;
    titan_tstore_usage(ts, &u.bytes, &u.count, &u.clients, &u.expired);
    return u;
}

/* Creates and commits a float32 tensor of `elems` elements (1-D) for owner; returns its handle in h
 * (the creator's reference is dropped: the table holds the only one). */
static void put_f32(titan_tstore *ts, const char *owner, int64_t elems, char *h)
{
    titan_tensor_entry *e = NULL;
    titan_error err = {0};
    int64_t shape[1] = {elems};
    if (titan_tstore_create(ts, owner, TITAN_DTYPE_FLOAT32, 1, shape, &e, &err) != 0)
        fail_msg("create %lld floats for %s: %s: %s", (long long)elems, owner, err.code, err.msg);
    assert_non_null(e);
    titan_tstore_commit(ts, e);
    snprintf(h, TITAN_HANDLE_MAX, "%s", e->handle);
    titan_tstore_release(ts, e);
}

/* Expects create to fail with `code`; returns the message. */
static const char *create_fails(titan_tstore *ts, const char *owner, int64_t elems, const char *code,
                                titan_error *err)
{
    titan_tensor_entry *e = NULL;
    int64_t shape[1] = {elems};
    memset(err, 0, sizeof(*err));
    assert_int_equal(titan_tstore_create(ts, owner, TITAN_DTYPE_FLOAT32, 1, shape, &e, err), -1);
    assert_null(e);
    assert_non_null(err->code);
    assert_string_equal(err->code, code);
    return err->msg;
}

static void expect_acquire_fails(titan_tstore *ts, const char *owner, const char *h, const char *code)
{
    titan_tensor_entry *e = NULL;
    titan_error err = {0};
    assert_int_equal(titan_tstore_acquire(ts, owner, h, &e, &err), -1);
    assert_null(e);
    assert_non_null(err.code);
    assert_string_equal(err.code, code);
    assert_non_null(strstr(err.msg, h)); /* the message names the handle */
}

static void sleep_s(double s)
{
    struct timespec t = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&t, &t) != 0) {
    }
}

/* --- tests --- */

static void test_lifecycle_and_handles(void **state)
{
    (void)state;
    fake_be f;
    fake_init(&f);
    titan_tstore_quota q = quota(1 << 20, 1 << 20, 4096, 0);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    assert_non_null(ts);
    assert_memory_equal(titan_tstore_get_quota(ts), &q, sizeof(q));

    titan_tensor_entry *e = NULL;
    titan_error err = {0};
    int64_t shape[2] = {3, 5};
    assert_int_equal(titan_tstore_create(ts, "alice", TITAN_DTYPE_FLOAT64, 2, shape, &e, &err), 0);
    assert_int_equal(e->dtype, TITAN_DTYPE_FLOAT64);
    assert_int_equal(e->rank, 2);
    assert_int_equal(e->shape[0], 3);
    assert_int_equal(e->shape[1], 5);
    assert_int_equal(e->bytes, 3 * 5 * 8);
    assert_non_null(e->dev);
    assert_int_equal(f.live, 1);
    /* "t-" and 24 lowercase hex digits. */
    assert_int_equal(strlen(e->handle), 26);
    assert_memory_equal(e->handle, "t-", 2);
    for (int i = 2; i < 26; i++)
        if (!isxdigit((unsigned char)e->handle[i]) || isupper((unsigned char)e->handle[i]))
            fail_msg("handle %s: '%c' is not a lowercase hex digit", e->handle, e->handle[i]);
    char h[TITAN_HANDLE_MAX];
    snprintf(h, sizeof(h), "%s", e->handle);
    /* Reserved but not listed until committed. */
    usage_t u = usage(ts);
    assert_int_equal(u.bytes, 120);
    assert_int_equal(u.count, 1);
    assert_int_equal(u.clients, 1);
    expect_acquire_fails(ts, "alice", h, "not_found");
    titan_tstore_commit(ts, e);
    titan_tstore_release(ts, e);
    assert_int_equal(f.live, 1); /* the table's reference keeps it */

    titan_tensor_entry *g = NULL;
    assert_int_equal(titan_tstore_acquire(ts, "alice", h, &g, &err), 0);
    assert_ptr_equal(g, e);
    assert_string_equal(g->handle, h);
    titan_tstore_release(ts, g);

    /* Another client's handle, an unknown one. */
    expect_acquire_fails(ts, "bob", h, "unauthorized");
    expect_acquire_fails(ts, "alice", "t-000000000000000000000000", "not_found");
    expect_acquire_fails(ts, "alice", "nonsense", "not_found");
    size_t bytes = 0;
    memset(&err, 0, sizeof(err));
    assert_int_equal(titan_tstore_free(ts, "bob", h, &bytes, &err), -1);
    assert_string_equal(err.code, "unauthorized");
    assert_int_equal(usage(ts).count, 1); /* bob's attempt freed nothing */

    /* Free, then the handle is gone and so is the memory. */
    memset(&err, 0, sizeof(err));
    assert_int_equal(titan_tstore_free(ts, "alice", h, &bytes, &err), 0);
    assert_int_equal(bytes, 120);
    assert_int_equal(f.live, 0);
    expect_acquire_fails(ts, "alice", h, "not_found");
    memset(&err, 0, sizeof(err));
    assert_int_equal(titan_tstore_free(ts, "alice", h, &bytes, &err), -1);
    assert_string_equal(err.code, "not_found");
    u = usage(ts);
    assert_int_equal(u.bytes, 0);
    assert_int_equal(u.count, 0);
    assert_int_equal(u.clients, 0);
    assert_int_equal(u.expired, 0);

    /* Handles differ. */
    char hs[200][TITAN_HANDLE_MAX];
    for (int i = 0; i < 200; i++) {
        put_f32(ts, "alice", 1, hs[i]);
        for (int j = 0; j < i; j++)
            if (strcmp(hs[i], hs[j]) == 0) fail_msg("handle %s given twice", hs[i]);
    }
    assert_int_equal(titan_tstore_free_all(ts, "alice"), 200);
    assert_int_equal(f.live, 0);

    /* A NULL owner is "anonymous". */
    put_f32(ts, NULL, 4, h);
    assert_int_equal(titan_tstore_acquire(ts, "anonymous", h, &g, &err), 0);
    titan_tstore_release(ts, g);
    assert_int_equal(titan_tstore_free_all(ts, NULL), 1);

    /* Bad shapes. */
    int64_t bad[2] = {0, 3};
    memset(&err, 0, sizeof(err));
    assert_int_equal(titan_tstore_create(ts, "alice", TITAN_DTYPE_FLOAT32, 2, bad, &e, &err), -1);
    assert_string_equal(err.code, "bad_request");
    assert_int_equal(titan_tstore_create(ts, "alice", TITAN_DTYPE_FLOAT32, 0, shape, &e, &err), -1);
    assert_string_equal(err.code, "bad_request");
    assert_int_equal(titan_tstore_create(ts, "alice", TITAN_DTYPE_FLOAT32, TITAN_MAX_RANK + 1, shape, &e, &err), -1);
    assert_int_equal(usage(ts).count, 0);

    titan_tstore_destroy(&ts);
    assert_null(ts);
    titan_tstore_destroy(&ts);
    titan_tstore_destroy(NULL);
    assert_int_equal(f.live, 0);
}

static void test_client_byte_quota(void **state)
{
    (void)state;
    fake_be f;
    fake_init(&f);
    titan_tstore_quota q = quota(1 << 20, 40000, 4096, 0);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    char h1[TITAN_HANDLE_MAX], h2[TITAN_HANDLE_MAX], hb[TITAN_HANDLE_MAX];
    put_f32(ts, "alice", 4096, h1); /* 16384 bytes */
    put_f32(ts, "alice", 4096, h2); /* 32768 */
    titan_error err;
    const char *msg = create_fails(ts, "alice", 4096, "quota_exceeded", &err);
    if (!strstr(msg, "--tensor-quota-mb")) fail_msg("the message does not name --tensor-quota-mb: %s", msg);
    if (!strstr(msg, "49152") || !strstr(msg, "40000")) fail_msg("the message lacks the figures: %s", msg);
    /* A tensor over the quota on its own, and exactly up to it. */
    create_fails(ts, "bob", 10001, "quota_exceeded", &err);
    assert_non_null(strstr(err.msg, "--tensor-quota-mb"));
    put_f32(ts, "bob", 10000, hb); /* 40000: exactly the quota */
    create_fails(ts, "bob", 1, "quota_exceeded", &err);
    /* The quota is per client: alice still has 7232 bytes. */
    char h3[TITAN_HANDLE_MAX];
    put_f32(ts, "alice", 1808, h3);
    create_fails(ts, "alice", 1, "quota_exceeded", &err);
    usage_t u = usage(ts);
    assert_int_equal(u.bytes, 80000);
    assert_int_equal(u.count, 4);
    assert_int_equal(u.clients, 2);
    /* Nothing was evicted to make room. */
    titan_tensor_entry *e;
    assert_int_equal(titan_tstore_acquire(ts, "alice", h1, &e, &err), 0);
    titan_tstore_release(ts, e);
    /* Freed, the quota comes back. */
    size_t bytes;
    assert_int_equal(titan_tstore_free(ts, "alice", h2, &bytes, &err), 0);
    put_f32(ts, "alice", 4096, h2);
    assert_int_equal(titan_tstore_free_all(ts, "alice"), 3);
    assert_int_equal(titan_tstore_free_all(ts, "bob"), 1);
    u = usage(ts);
    assert_int_equal(u.bytes, 0);
    assert_int_equal(u.count, 0);
    assert_int_equal(u.clients, 0);
    assert_int_equal(f.live, 0);
    titan_tstore_destroy(&ts);
}

static void test_worker_quota(void **state)
{
    (void)state;
    fake_be f;
    fake_init(&f);
    titan_tstore_quota q = quota(50000, 40000, 4096, 0);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    char ha[TITAN_HANDLE_MAX], hb[TITAN_HANDLE_MAX];
    put_f32(ts, "alice", 8192, ha); /* 32768 */
    put_f32(ts, "bob", 4096, hb);   /* 16384: 49152 in all */
    titan_error err;
    const char *msg = create_fails(ts, "bob", 1024, "quota_exceeded", &err); /* bob: 20480 of 40000, worker: 53248 */
    if (!strstr(msg, "--tensor-memory-mb")) fail_msg("the message does not name --tensor-memory-mb: %s", msg);
    if (strstr(msg, "--tensor-quota-mb")) fail_msg("the worker's limit, not the client's: %s", msg);
    if (!strstr(msg, "53248") || !strstr(msg, "50000")) fail_msg("the message lacks the figures: %s", msg);
    create_fails(ts, "carol", 1024, "quota_exceeded", &err); /* a new client is refused as well */
    assert_non_null(strstr(err.msg, "--tensor-memory-mb"));
    usage_t u = usage(ts);
    assert_int_equal(u.clients, 2); /* the refused client left nothing behind */
    char hc[TITAN_HANDLE_MAX];
    put_f32(ts, "carol", 212, hc); /* 848 bytes: exactly 50000 */
    assert_int_equal(usage(ts).bytes, 50000);
    create_fails(ts, "carol", 1, "quota_exceeded", &err);
    size_t bytes;
    assert_int_equal(titan_tstore_free(ts, "alice", ha, &bytes, &err), 0);
    put_f32(ts, "carol", 1024, hc);
    titan_tstore_destroy(&ts);
    assert_int_equal(f.live, 0);

    /* No memory at all for resident tensors. */
    fake_init(&f);
    q = quota(0, 0, 4096, 0);
    ts = titan_tstore_new(&f.be, &q);
    create_fails(ts, "alice", 1, "quota_exceeded", &err);
    assert_int_equal(usage(ts).clients, 0);
    titan_tstore_destroy(&ts);
}

static void test_client_count(void **state)
{
    (void)state;
    fake_be f;
    fake_init(&f);
    titan_tstore_quota q = quota(1 << 20, 1 << 20, 3, 0);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    char h[4][TITAN_HANDLE_MAX];
    for (int i = 0; i < 3; i++) put_f32(ts, "alice", 1, h[i]);
    titan_error err;
    const char *msg = create_fails(ts, "alice", 1, "quota_exceeded", &err);
    if (!strstr(msg, "--max-tensors")) fail_msg("the message does not name --max-tensors: %s", msg);
    assert_non_null(strstr(msg, "3"));
    put_f32(ts, "bob", 1, h[3]); /* per client */
    /* An uncommitted creation counts too. */
    size_t bytes;
    assert_int_equal(titan_tstore_free(ts, "alice", h[0], &bytes, &err), 0);
    titan_tensor_entry *e;
    int64_t shape[1] = {1};
    assert_int_equal(titan_tstore_create(ts, "alice", TITAN_DTYPE_FLOAT32, 1, shape, &e, &err), 0);
    create_fails(ts, "alice", 1, "quota_exceeded", &err);
    titan_tstore_release(ts, e); /* never committed: all given back */
    assert_int_equal(usage(ts).count, 3);
    put_f32(ts, "alice", 1, h[0]);
    titan_tstore_destroy(&ts);
    assert_int_equal(f.live, 0);

    /* --max-tensors 0: none at all. */
    q = quota(1 << 20, 1 << 20, 0, 0);
    ts = titan_tstore_new(&f.be, &q);
    msg = create_fails(ts, "alice", 1, "quota_exceeded", &err);
    assert_non_null(strstr(msg, "--max-tensors"));
    titan_tstore_destroy(&ts);
}

static void test_failed_alloc_gives_quota_back(void **state)
{
    (void)state;
    fake_be f;
    fake_init(&f);
    titan_tstore_quota q = quota(1 << 20, 4096, 1, 0);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    f.fail_next = 1;
    titan_error err;
    const char *msg = create_fails(ts, "alice", 1024, "too_large", &err); /* the backend's code and words */
    assert_non_null(strstr(msg, "fake: device out of memory"));
    usage_t u = usage(ts);
    assert_int_equal(u.bytes, 0);
    assert_int_equal(u.count, 0);
    assert_int_equal(u.clients, 0);
    assert_int_equal(f.live, 0);
    /* All of the quota (bytes and count) is there again. */
    char h[TITAN_HANDLE_MAX];
    put_f32(ts, "alice", 1024, h);
    u = usage(ts);
    assert_int_equal(u.bytes, 4096);
    assert_int_equal(u.count, 1);
    titan_tstore_destroy(&ts);
    assert_int_equal(f.live, 0);
}

static void test_reference_outlives_free(void **state)
{
    (void)state;
    fake_be f;
    fake_init(&f);
    titan_tstore_quota q = quota(1 << 20, 8192, 4096, 0);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    char h[TITAN_HANDLE_MAX];
    put_f32(ts, "alice", 2048, h); /* 8192: the whole quota */
    titan_tensor_entry *e;
    titan_error err;
    assert_int_equal(titan_tstore_acquire(ts, "alice", h, &e, &err), 0); /* a request uses it */
    size_t bytes = 0;
    assert_int_equal(titan_tstore_free(ts, "alice", h, &bytes, &err), 0);
    assert_int_equal(bytes, 8192);
    /* Unlisted at once, but the memory (and the quota) stays until the request lets go. */
    expect_acquire_fails(ts, "alice", h, "not_found");
    usage_t u = usage(ts);
    assert_int_equal(u.bytes, 8192);
    assert_int_equal(u.count, 1);
    assert_int_equal(f.live, 1);
    json_t *l = titan_tstore_list(ts, "alice");
    assert_int_equal(json_array_size(json_object_get(l, "tensors")), 0);
    assert_int_equal(json_integer_value(json_object_get(l, "worker_bytes")), 8192);
    json_decref(l);
    create_fails(ts, "alice", 1, "quota_exceeded", &err);
    ((float *)e->dev)[2047] = 1.0f; /* still the request's to use */
    assert_int_equal(titan_tstore_free_all(ts, "alice"), 0);
    titan_tstore_release(ts, e);
    u = usage(ts);
    assert_int_equal(u.bytes, 0);
    assert_int_equal(u.count, 0);
    assert_int_equal(u.clients, 0);
    assert_int_equal(f.live, 0);
    put_f32(ts, "alice", 2048, h);
    titan_tstore_destroy(&ts);
    assert_int_equal(f.live, 0);
}

static void test_free_all_only_own(void **state)
{
    (void)state;
    fake_be f;
    fake_init(&f);
    titan_tstore_quota q = quota(1 << 20, 1 << 20, 4096, 0);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    char ha[3][TITAN_HANDLE_MAX], hb[2][TITAN_HANDLE_MAX];
    for (int i = 0; i < 3; i++) put_f32(ts, "alice", 10, ha[i]);
    for (int i = 0; i < 2; i++) put_f32(ts, "bob", 20, hb[i]);
    assert_int_equal(titan_tstore_free_all(ts, "alice"), 3);
    assert_int_equal(titan_tstore_free_all(ts, "alice"), 0);
    assert_int_equal(titan_tstore_free_all(ts, "carol"), 0);
    for (int i = 0; i < 3; i++) expect_acquire_fails(ts, "alice", ha[i], "not_found");
    titan_error err;
    for (int i = 0; i < 2; i++) {
        titan_tensor_entry *e;
        assert_int_equal(titan_tstore_acquire(ts, "bob", hb[i], &e, &err), 0);
        titan_tstore_release(ts, e);
    }
    usage_t u = usage(ts);
    assert_int_equal(u.count, 2);
    assert_int_equal(u.bytes, 160);
    assert_int_equal(u.clients, 1);
    assert_int_equal(f.live, 2);
    titan_tstore_destroy(&ts); /* frees bob's */
    assert_int_equal(f.live, 0);
}

static json_t *find_ref(json_t *tensors, const char *h)
{
    size_t i;
    json_t *t;
    json_array_foreach(tensors, i, t)
    {
        if (strcmp(json_string_value(json_object_get(t, "ref")), h) == 0) return t;
    }
    return NULL;
}

static void test_list_json(void **state)
{
    (void)state;
    fake_be f;
    fake_init(&f);
    titan_tstore_quota q = quota(1 << 20, 1 << 19, 100, 0);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    char h1[TITAN_HANDLE_MAX], h2[TITAN_HANDLE_MAX], hb[TITAN_HANDLE_MAX];
    put_f32(ts, "alice", 6, h1);
    titan_tensor_entry *e;
    titan_error err;
    int64_t shape[3] = {2, 3, 4};
    assert_int_equal(titan_tstore_create(ts, "alice", TITAN_DTYPE_FLOAT64, 3, shape, &e, &err), 0);
    titan_tstore_commit(ts, e);
    snprintf(h2, sizeof(h2), "%s", e->handle);
    titan_tstore_release(ts, e);
    put_f32(ts, "bob", 100, hb);

    json_t *l = titan_tstore_list(ts, "alice");
    assert_non_null(l);
    json_t *tensors = json_object_get(l, "tensors");
    assert_true(json_is_array(tensors));
    assert_int_equal(json_array_size(tensors), 2);
    assert_null(find_ref(tensors, hb)); /* only this client's */
    json_t *t1 = find_ref(tensors, h1), *t2 = find_ref(tensors, h2);
    assert_non_null(t1);
    assert_non_null(t2);
    assert_int_equal(json_object_size(t1), 6);
    assert_string_equal(json_string_value(json_object_get(t1, "dtype")), "float32");
    assert_string_equal(json_string_value(json_object_get(t2, "dtype")), "float64");
    json_t *s1 = json_object_get(t1, "shape"), *s2 = json_object_get(t2, "shape");
    assert_int_equal(json_array_size(s1), 1);
    assert_int_equal(json_integer_value(json_array_get(s1, 0)), 6);
    assert_int_equal(json_array_size(s2), 3);
    for (int i = 0; i < 3; i++) assert_int_equal(json_integer_value(json_array_get(s2, (size_t)i)), shape[i]);
    assert_int_equal(json_integer_value(json_object_get(t1, "bytes")), 24);
    assert_int_equal(json_integer_value(json_object_get(t2, "bytes")), 192);
    json_t *tt[2] = {t1, t2};
    for (int i = 0; i < 2; i++) {
        json_t *age = json_object_get(tt[i], "age_s"), *idle = json_object_get(tt[i], "idle_s");
        assert_true(json_is_real(age));
        assert_true(json_is_real(idle));
        assert_true(json_real_value(age) >= 0 && json_real_value(age) < 10);
        assert_true(json_real_value(idle) >= 0 && json_real_value(idle) <= json_real_value(age) + 1e-9);
    }
    assert_int_equal(json_integer_value(json_object_get(l, "bytes")), 216);
    assert_int_equal(json_integer_value(json_object_get(l, "count")), 2);
    assert_int_equal(json_integer_value(json_object_get(l, "worker_bytes")), 616); /* bob's too */
    json_t *jq = json_object_get(l, "quota");
    assert_true(json_is_object(jq));
    assert_int_equal(json_integer_value(json_object_get(jq, "client_bytes")), 1 << 19);
    assert_int_equal(json_integer_value(json_object_get(jq, "client_tensors")), 100);
    assert_int_equal(json_integer_value(json_object_get(jq, "worker_bytes")), 1 << 20);
    assert_true(json_is_number(json_object_get(jq, "idle_ttl_s")));
    assert_true(json_number_value(json_object_get(jq, "idle_ttl_s")) == 0);
    json_decref(l);

    /* A client holding nothing. */
    l = titan_tstore_list(ts, "carol");
    assert_int_equal(json_array_size(json_object_get(l, "tensors")), 0);
    assert_int_equal(json_integer_value(json_object_get(l, "bytes")), 0);
    assert_int_equal(json_integer_value(json_object_get(l, "count")), 0);
    assert_int_equal(json_integer_value(json_object_get(l, "worker_bytes")), 616);
    json_decref(l);
    assert_int_equal(usage(ts).clients, 2); /* listing does not make carol a client */
    titan_tstore_destroy(&ts);
    assert_int_equal(f.live, 0);
}

static void test_idle_ttl(void **state)
{
    (void)state;
    fake_be f, f0;
    fake_init(&f);
    fake_init(&f0);
    titan_tstore_quota q = quota(1 << 20, 1 << 20, 100, 0.05);
    titan_tstore *ts = titan_tstore_new(&f.be, &q);
    titan_tstore_quota q0 = quota(1 << 20, 1 << 20, 100, 0); /* no TTL: kept */
    titan_tstore *ts0 = titan_tstore_new(&f0.be, &q0);
    char ha[TITAN_HANDLE_MAX], hb[TITAN_HANDLE_MAX], hd[TITAN_HANDLE_MAX], hk[TITAN_HANDLE_MAX];
    put_f32(ts, "alice", 8, ha); /* this create's sweep runs now: the next one not before a second */
    put_f32(ts, "alice", 8, hb);
    put_f32(ts, "alice", 8, hd);
    put_f32(ts0, "alice", 8, hk);
    titan_tensor_entry *held;
    titan_error err;
    assert_int_equal(titan_tstore_acquire(ts, "alice", hb, &held, &err), 0); /* a request holds b */
    sleep_s(1.1);
    titan_tensor_entry *d;
    assert_int_equal(titan_tstore_acquire(ts, "alice", hd, &d, &err), 0); /* a request used d just now */
    titan_tstore_release(ts, d);
    json_t *l = titan_tstore_list(ts, "alice"); /* sweeps: a expired, b in use, d used just now */
    assert_int_equal(json_array_size(json_object_get(l, "tensors")), 2);
    assert_non_null(find_ref(json_object_get(l, "tensors"), hb));
    json_t *jd = find_ref(json_object_get(l, "tensors"), hd);
    assert_non_null(jd);
    assert_true(json_real_value(json_object_get(jd, "age_s")) >= 1.0);
    assert_true(json_real_value(json_object_get(jd, "idle_s")) < 0.05); /* acquire counts as use */
    assert_true(json_number_value(json_object_get(json_object_get(l, "quota"), "idle_ttl_s")) == 0.05);
    json_decref(l);
    usage_t u = usage(ts);
    assert_int_equal(u.expired, 1);
    assert_int_equal(u.count, 2);
    assert_int_equal(u.bytes, 64);
    assert_int_equal(f.live, 2);
    expect_acquire_fails(ts, "alice", ha, "not_found");
    titan_tstore_release(ts, held);
    /* No TTL: still there after the same wait. */
    titan_tensor_entry *k;
    l = titan_tstore_list(ts0, "alice");
    assert_int_equal(json_array_size(json_object_get(l, "tensors")), 1);
    json_decref(l);
    assert_int_equal(titan_tstore_acquire(ts0, "alice", hk, &k, &err), 0);
    titan_tstore_release(ts0, k);
    assert_int_equal(usage(ts0).expired, 0);
    titan_tstore_destroy(&ts0);
    assert_int_equal(f0.live, 0);

    /* b, let go, and d expire at the next sweep: a create (of another client) a second later. */
    sleep_s(1.1);
    char hc[TITAN_HANDLE_MAX];
    put_f32(ts, "bob", 8, hc);
    u = usage(ts);
    assert_int_equal(u.expired, 3);
    assert_int_equal(u.count, 1); /* bob's new one */
    assert_int_equal(u.clients, 1);
    expect_acquire_fails(ts, "alice", hb, "not_found");
    expect_acquire_fails(ts, "alice", hd, "not_found");
    titan_tstore_destroy(&ts);
    assert_int_equal(f.live, 0);
}

/* The real CPU backend: the data goes in and comes back. */
static void test_cpu_backend(void **state)
{
    (void)state;
    titan_backend *be = NULL;
    assert_int_equal(titan_backend_cpu_open(1, &be), 0);
    titan_tstore_quota q = quota(1 << 20, 1 << 20, 10, 0);
    titan_tstore *ts = titan_tstore_new(be, &q);
    double host[12];
    for (int i = 0; i < 12; i++) host[i] = i * 1.5 - 3;
    titan_tensor_entry *e;
    titan_error err = {0};
    int64_t shape[2] = {3, 4};
    assert_int_equal(titan_tstore_create(ts, "alice", TITAN_DTYPE_FLOAT64, 2, shape, &e, &err), 0);
    assert_int_equal(be->upload(be, e->dev, host, e->bytes, &err), 0);
    titan_tstore_commit(ts, e);
    char h[TITAN_HANDLE_MAX];
    snprintf(h, sizeof(h), "%s", e->handle);
    titan_tstore_release(ts, e);
    titan_tensor_entry *g;
    assert_int_equal(titan_tstore_acquire(ts, "alice", h, &g, &err), 0);
    double back[12] = {0};
    assert_int_equal(be->download(be, back, g->dev, g->bytes, &err), 0);
    assert_memory_equal(back, host, sizeof(host));
    titan_tstore_release(ts, g);
    /* Left resident: destroy frees it (ASan would see a leak otherwise). */
    char h2[TITAN_HANDLE_MAX];
    put_f32(ts, "bob", 1000, h2);
    titan_tstore_destroy(&ts);
    titan_backend_destroy(&be);
    assert_null(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle_and_handles),
        cmocka_unit_test(test_client_byte_quota),
        cmocka_unit_test(test_worker_quota),
        cmocka_unit_test(test_client_count),
        cmocka_unit_test(test_failed_alloc_gives_quota_back),
        cmocka_unit_test(test_reference_outlives_free),
        cmocka_unit_test(test_free_all_only_own),
        cmocka_unit_test(test_list_json),
        cmocka_unit_test(test_idle_ttl),
        cmocka_unit_test(test_cpu_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
