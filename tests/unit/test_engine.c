/* test_engine.c - cmocka tests of the in-process engine (src/lib/engine.c): the worker's replies, byte
 * for byte where the protocol fixes them, with no socket; the caller's frames left as they were; threads. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine.h"

#define BLAS_THREADS 2

/* --- helpers --- */

static int group_setup(void **state)
{
    titan_engine *e = NULL;
    char err[256] = "";
    if (titan_engine_new("cpu", BLAS_THREADS, &e, err, sizeof(err)) != 0) {
        fprintf(stderr, "titan_engine_new(cpu): %s\n", err);
        return -1;
    }
    *state = e;
    return 0;
}

static int group_teardown(void **state)
{
    titan_engine *e = *state;
    titan_engine_destroy(&e);
    return 0;
}

/* Runs one request; the call itself must succeed. */
static titan_reply *call(titan_engine *e, const char *hdr, const titan_frame *frames, size_t n)
{
    titan_reply *r = NULL;
    assert_int_equal(titan_engine_call(e, hdr, frames, n, &r), 0);
    assert_non_null(r);
    assert_non_null(titan_reply_header(r));
    return r;
}

/* The reply header as a JSON object (the caller decrefs). */
static json_t *reply_json(const titan_reply *r)
{
    json_error_t jerr;
    json_t *o = json_loads(titan_reply_header(r), 0, &jerr);
    if (!o) fail_msg("reply header is not JSON (%s): %s", jerr.text, titan_reply_header(r));
    assert_true(json_is_object(o));
    return o;
}

/* Asserts that r is an error reply with `code` whose text contains `text`. */
static void assert_error(const titan_reply *r, const char *code, const char *text)
{
    json_t *o = reply_json(r);
    const char *c = json_string_value(json_object_get(o, "code"));
    const char *m = json_string_value(json_object_get(o, "error"));
    if (!c || strcmp(c, code) != 0 || !m || !strstr(m, text))
        fail_msg("expected %s containing '%s', got %s", code, text, titan_reply_header(r));
    assert_int_equal(titan_reply_frame_count(r), 0);
    json_decref(o);
}

/* xorshift64*: a per-caller generator, so threads do not share state. */
static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

/* Uniform in [-1, 1). */
static double rand_unit(uint64_t *s)
{
    return (double)(next_rand(s) >> 11) / (double)(1ULL << 52) - 1.0;
}

static void fill(titan_dtype dt, void *p, size_t count, uint64_t *seed, int integers)
{
    for (size_t i = 0; i < count; i++) {
        double v = integers ? (double)((int)(next_rand(seed) % 11) - 5) : rand_unit(seed);
        if (dt == TITAN_DTYPE_FLOAT32)
            ((float *)p)[i] = (float)v;
        else
            ((double *)p)[i] = v;
    }
}

static double elem(titan_dtype dt, const void *p, size_t i)
{
    return dt == TITAN_DTYPE_FLOAT32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

/* The reference product, in double. */
static double *naive(titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b)
{
    double *c = calloc(m * n, sizeof(double));
    if (!c) return NULL;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) {
            double acc = 0;
            for (size_t p = 0; p < k; p++)
                acc += elem(dt, a, i * k + p) * elem(dt, b, p * n + j);
            c[i * n + j] = acc;
        }
    return c;
}

static size_t dsize(titan_dtype dt)
{
    return dt == TITAN_DTYPE_FLOAT32 ? 4 : 8;
}

static const char *dname(titan_dtype dt)
{
    return dt == TITAN_DTYPE_FLOAT32 ? "float32" : "float64";
}

/* The header of a binary matmul request; id_json is raw JSON text or NULL. */
static void matmul_header(char *buf, size_t cap, titan_dtype dt, size_t m, size_t k, size_t n,
                          const char *id_json)
{
    snprintf(buf, cap,
             "{\"op\":\"matrix_multiply\",%s%s%s\"a\":{\"dtype\":\"%s\",\"shape\":[%zu,%zu],\"frame\":1},"
             "\"b\":{\"dtype\":\"%s\",\"shape\":[%zu,%zu],\"frame\":2}}",
             id_json ? "\"id\":" : "", id_json ? id_json : "", id_json ? "," : "", dname(dt), m, k, dname(dt),
             k, n);
}

/* Checks a binary matmul reply against the reference; returns a description of the first mismatch, or
 * NULL. `tol` 0 asks for exact equality. Uses no cmocka asserts, so threads may call it. */
static const char *check_product(const titan_reply *r, titan_dtype dt, size_t m, size_t k, size_t n,
                                 const void *a, const void *b, double tol, json_t *want_id)
{
    static __thread char why[256];
    json_t *o = json_loads(titan_reply_header(r), 0, NULL);
    json_t *res = o ? json_object_get(o, "result") : NULL;
    if (!res || !json_is_object(res)) {
        snprintf(why, sizeof(why), "not a result: %.200s", titan_reply_header(r));
        goto bad;
    }
    json_t *shape = json_object_get(res, "shape");
    if (strcmp(json_string_value(json_object_get(res, "dtype")) ?: "", dname(dt)) != 0 ||
        json_integer_value(json_object_get(res, "frame")) != 1 || json_array_size(shape) != 2 ||
        json_integer_value(json_array_get(shape, 0)) != (json_int_t)m ||
        json_integer_value(json_array_get(shape, 1)) != (json_int_t)n) {
        snprintf(why, sizeof(why), "wrong descriptor: %.200s", titan_reply_header(r));
        goto bad;
    }
    json_t *id = json_object_get(o, "id");
    if ((want_id && (!id || !json_equal(id, want_id))) || (!want_id && id)) {
        snprintf(why, sizeof(why), "wrong id: %.200s", titan_reply_header(r));
        goto bad;
    }
    size_t size = 0;
    const void *c = titan_reply_frame(r, 0, &size);
    if (titan_reply_frame_count(r) != 1 || !c || size != m * n * dsize(dt)) {
        snprintf(why, sizeof(why), "wrong frame: %zu frames, %zu bytes", titan_reply_frame_count(r), size);
        goto bad;
    }
    double *want = naive(dt, m, k, n, a, b);
    if (!want) {
        snprintf(why, sizeof(why), "out of memory");
        goto bad;
    }
    for (size_t i = 0; i < m * n; i++) {
        double got = elem(dt, c, i);
        if (tol == 0 ? got != want[i] : fabs(got - want[i]) > tol * (1.0 + fabs(want[i]))) {
            snprintf(why, sizeof(why), "c[%zu][%zu] is %.17g, expected %.17g", i / n, i % n, got, want[i]);
            free(want);
            goto bad;
        }
    }
    free(want);
    json_decref(o);
    return NULL;
bad:
    if (o) json_decref(o);
    return why;
}

/* One binary product through the engine, checked. */
static void run_product(titan_engine *e, titan_dtype dt, size_t m, size_t k, size_t n, uint64_t seed,
                        int integers, double tol)
{
    void *a = malloc(m * k * dsize(dt)), *b = malloc(k * n * dsize(dt));
    assert_non_null(a);
    assert_non_null(b);
    fill(dt, a, m * k, &seed, integers);
    fill(dt, b, k * n, &seed, integers);
    char hdr[512];
    matmul_header(hdr, sizeof(hdr), dt, m, k, n, NULL);
    titan_frame f[2] = {{a, m * k * dsize(dt)}, {b, k * n * dsize(dt)}};
    titan_reply *r = call(e, hdr, f, 2);
    const char *why = check_product(r, dt, m, k, n, a, b, tol, NULL);
    if (why) fail_msg("%s %zux%zux%zu: %s", dname(dt), m, k, n, why);
    titan_reply_destroy(&r);
    free(a);
    free(b);
}

/* --- titan_engine_new / destroy --- */

static void test_new_cpu(void **state)
{
    titan_engine *e = NULL;
    char err[256] = "";
    assert_int_equal(titan_engine_new("cpu", 1, &e, err, sizeof(err)), 0);
    assert_non_null(e);
    assert_string_equal(titan_engine_backend(e), "cpu");
    assert_true(strlen(titan_engine_device_name(e)) > 0);
    titan_engine_destroy(&e);
    assert_null(e);
    /* "auto" falls back to the CPU in a build without CUDA. */
    assert_int_equal(titan_engine_new("auto", 0, &e, err, sizeof(err)), 0);
    assert_string_equal(titan_engine_backend(e), "cpu");
    titan_engine_destroy(&e);
}

static void test_new_cuda_fails(void **state)
{
    const char *devices[] = {"cuda:0", "cuda"};
    for (size_t i = 0; i < 2; i++) {
        titan_engine *e = (titan_engine *)(uintptr_t)0x1; /* must stay untouched */
        char err[256] = "";
        int rc = titan_engine_new(devices[i], 0, &e, err, sizeof(err));
        if (rc != -ENOTSUP && rc != -ENODEV)
            fail_msg("%s: rc %d, expected -ENOTSUP or -ENODEV", devices[i], rc);
        assert_ptr_equal(e, (titan_engine *)(uintptr_t)0x1);
        assert_non_null(strstr(err, devices[i]));
    }
}

static void test_new_bad_device(void **state)
{
    const char *devices[] = {"tpu", "", "CPU", "cuda0"};
    for (size_t i = 0; i < sizeof(devices) / sizeof(devices[0]); i++) {
        titan_engine *e = NULL;
        char err[256] = "";
        int rc = titan_engine_new(devices[i], 0, &e, err, sizeof(err));
        assert_int_equal(rc, -ENODEV);
        assert_null(e);
        char quoted[64];
        snprintf(quoted, sizeof(quoted), "'%s'", devices[i]);
        if (!strstr(err, quoted)) fail_msg("error for %s does not name it: '%s'", quoted, err);
    }
}

static void test_new_bad_args(void **state)
{
    titan_engine *e = NULL;
    char err[256] = "";
    assert_int_equal(titan_engine_new(NULL, 0, &e, err, sizeof(err)), -EINVAL);
    assert_true(err[0] != '\0');
    err[0] = '\0';
    assert_int_equal(titan_engine_new("cpu", -1, &e, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "-1"));
    assert_null(e);
    /* No room for a message: still fails cleanly. */
    assert_int_equal(titan_engine_new("tpu", 0, &e, NULL, 0), -ENODEV);
    assert_null(e);
    titan_engine_destroy(NULL);
    titan_engine_destroy(&e);
    assert_null(e);
}

/* --- light ops --- */

static void test_ping(void **state)
{
    titan_engine *e = *state;
    titan_reply *r = call(e, "{\"op\":\"ping\"}", NULL, 0);
    json_t *o = reply_json(r);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "ok");
    assert_string_equal(json_string_value(json_object_get(o, "gpu")), titan_engine_device_name(e));
    assert_string_equal(json_string_value(json_object_get(o, "backend")), "cpu");
    assert_int_equal(json_integer_value(json_object_get(o, "protocol")), 1);
    assert_null(json_object_get(o, "id"));
    assert_int_equal(titan_reply_frame_count(r), 0);
    json_decref(o);
    titan_reply_destroy(&r);
    assert_null(r);

    r = call(e, "{\"op\":\"ping\",\"id\":7}", NULL, 0);
    o = reply_json(r);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "ok");
    assert_int_equal(json_integer_value(json_object_get(o, "id")), 7);
    json_decref(o);
    titan_reply_destroy(&r);
}

static void test_gpu_info(void **state)
{
    titan_engine *e = *state;
    titan_reply *r = call(e, "{\"op\":\"gpu_info\"}", NULL, 0);
    json_t *o = reply_json(r);
    assert_string_equal(json_string_value(json_object_get(o, "name")), titan_engine_device_name(e));
    assert_true(json_number_value(json_object_get(o, "total_memory_gb")) > 0);
    assert_true(json_integer_value(json_object_get(o, "multi_processor_count")) >= 1);
    assert_true(json_is_null(json_object_get(o, "cuda_capability")));
    assert_string_equal(json_string_value(json_object_get(o, "backend")), "cpu");
    /* One executor: the caller's thread. */
    assert_int_equal(json_integer_value(json_object_get(o, "executors")), 1);
    assert_int_equal(json_integer_value(json_object_get(o, "blas_threads")), BLAS_THREADS);
    json_decref(o);
    titan_reply_destroy(&r);
}

static void test_ops_limits(void **state)
{
    titan_engine *e = *state;
    titan_reply *r = call(e, "{\"op\":\"ops\"}", NULL, 0);
    json_t *o = reply_json(r);
    json_t *lim = json_object_get(o, "limits");
    assert_non_null(lim);
    /* The worker's defaults, and no queue. */
    assert_int_equal(json_integer_value(json_object_get(lim, "max_request_bytes")), 1LL << 30);
    assert_int_equal(json_integer_value(json_object_get(lim, "max_result_bytes")), 1LL << 30);
    assert_int_equal(json_integer_value(json_object_get(lim, "queue")), 0);
    assert_string_equal(json_string_value(json_object_get(o, "backend")), "cpu");
    json_decref(o);
    titan_reply_destroy(&r);
}

/* --- matrix_multiply --- */

static void test_matmul_binary_exact(void **state)
{
    titan_engine *e = *state;
    run_product(e, TITAN_DTYPE_FLOAT32, 3, 4, 5, 11, 1, 0);
    run_product(e, TITAN_DTYPE_FLOAT64, 3, 4, 5, 12, 1, 0);
    run_product(e, TITAN_DTYPE_FLOAT32, 1, 1, 1, 13, 1, 0);
    run_product(e, TITAN_DTYPE_FLOAT64, 16, 9, 7, 14, 1, 0);
}

static void test_matmul_binary_random(void **state)
{
    titan_engine *e = *state;
    run_product(e, TITAN_DTYPE_FLOAT32, 33, 17, 29, 21, 0, 1e-5);
    run_product(e, TITAN_DTYPE_FLOAT64, 33, 17, 29, 22, 0, 1e-12);
    run_product(e, TITAN_DTYPE_FLOAT32, 128, 96, 64, 23, 0, 1e-5);
    run_product(e, TITAN_DTYPE_FLOAT64, 128, 96, 64, 24, 0, 1e-12);
}

static void test_matmul_json(void **state)
{
    titan_engine *e = *state;
    titan_reply *r = call(e, "{\"op\":\"matrix_multiply\",\"a\":[[1,2],[3,4]],\"b\":[[5],[6]]}", NULL, 0);
    /* PROTOCOL.md 4.4: JSON results are always written as floats, so 17 reads "17.0". */
    assert_string_equal(titan_reply_header(r), "{\"result\":[[17.0],[39.0]]}");
    assert_int_equal(titan_reply_frame_count(r), 0);
    json_t *o = reply_json(r);
    json_t *res = json_object_get(o, "result");
    assert_int_equal(json_array_size(res), 2);
    assert_true(json_real_value(json_array_get(json_array_get(res, 0), 0)) == 17.0);
    assert_true(json_real_value(json_array_get(json_array_get(res, 1), 0)) == 39.0);
    json_decref(o);
    titan_reply_destroy(&r);

    r = call(e, "{\"op\":\"matrix_multiply\",\"dtype\":\"float64\",\"a\":[[0.5,2]],\"b\":[[2],[0.25]]}", NULL,
             0);
    assert_string_equal(titan_reply_header(r), "{\"result\":[[1.5]]}");
    titan_reply_destroy(&r);
}

static void test_id_echoed(void **state)
{
    titan_engine *e = *state;
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    char hdr[512];
    matmul_header(hdr, sizeof(hdr), TITAN_DTYPE_FLOAT32, 2, 2, 1, "\"req-42\"");
    titan_frame f[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
    titan_reply *r = call(e, hdr, f, 2);
    json_t *want = json_string("req-42");
    const char *why = check_product(r, TITAN_DTYPE_FLOAT32, 2, 2, 1, a, b, 0, want);
    if (why) fail_msg("%s", why);
    json_decref(want);
    titan_reply_destroy(&r);

    r = call(e, "{\"op\":\"matrix_multiply\",\"id\":99,\"a\":[[1,2],[3,4]],\"b\":[[5],[6]]}", NULL, 0);
    assert_string_equal(titan_reply_header(r), "{\"result\":[[17.0],[39.0]],\"id\":99}");
    titan_reply_destroy(&r);

    /* Errors carry it too. */
    r = call(e, "{\"op\":\"matrix_multiply\",\"id\":\"x\",\"a\":[[1,2]],\"b\":[[1,2]]}", NULL, 0);
    assert_error(r, "bad_request", "inner dimensions do not match");
    json_t *o = reply_json(r);
    assert_string_equal(json_string_value(json_object_get(o, "id")), "x");
    json_decref(o);
    titan_reply_destroy(&r);
}

static void test_unknown_op(void **state)
{
    titan_engine *e = *state;
    titan_reply *r = call(e, "{\"op\":\"fly\"}", NULL, 0);
    assert_string_equal(titan_reply_header(r),
                        "{\"error\":\"Unknown operation: fly\",\"code\":\"unknown_op\"}");
    assert_int_equal(titan_reply_frame_count(r), 0);
    titan_reply_destroy(&r);
    r = call(e, "{\"op\":\"fly\",\"id\":\"q\"}", NULL, 0);
    assert_string_equal(titan_reply_header(r),
                        "{\"error\":\"Unknown operation: fly\",\"code\":\"unknown_op\",\"id\":\"q\"}");
    titan_reply_destroy(&r);
}

/* The in-process engine keeps no resident tensors: their ops, a {"ref"} operand and "keep" answer unsupported,
 * with a way out in the message. */
static void test_resident_unsupported(void **state)
{
    titan_engine *e = *state;
    const char *reqs[] = {
        "{\"op\":\"tensor_put\",\"tensor\":[[1,2]]}",
        "{\"op\":\"tensor_get\",\"ref\":\"t-0123456789abcdef01234567\"}",
        "{\"op\":\"tensor_free\",\"all\":true}",
        "{\"op\":\"tensor_list\"}",
        "{\"op\":\"matrix_multiply\",\"a\":{\"ref\":\"t-0123456789abcdef01234567\"},\"b\":[[1]]}",
        "{\"op\":\"matrix_multiply\",\"a\":[[1]],\"b\":[[1]],\"keep\":true}",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        titan_reply *r = call(e, reqs[i], NULL, 0);
        json_t *o = reply_json(r);
        assert_string_equal(json_string_value(json_object_get(o, "code")), "unsupported");
        assert_non_null(strstr(json_string_value(json_object_get(o, "error")), "titan-worker"));
        json_decref(o);
        titan_reply_destroy(&r);
    }
}

static void test_inner_dims_mismatch(void **state)
{
    titan_engine *e = *state;
    double a[6] = {1, 2, 3, 4, 5, 6}, b[4] = {1, 2, 3, 4};
    const char *hdr = "{\"op\":\"matrix_multiply\",\"a\":{\"dtype\":\"float64\",\"shape\":[2,3],\"frame\":1},"
                      "\"b\":{\"dtype\":\"float64\",\"shape\":[2,2],\"frame\":2}}";
    titan_frame f[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
    titan_reply *r = call(e, hdr, f, 2);
    assert_error(r, "bad_request", "inner dimensions do not match: a is 2x3 and b is 2x2");
    titan_reply_destroy(&r);
}

static void test_bad_requests(void **state)
{
    titan_engine *e = *state;
    titan_reply *r = call(e, "hello", NULL, 0);
    assert_error(r, "bad_request", "request header must be a JSON object");
    titan_reply_destroy(&r);
    r = call(e, "{\"op\":\"ping\"", NULL, 0);
    assert_error(r, "bad_request", "invalid JSON");
    titan_reply_destroy(&r);
    r = call(e, "[\"ping\"]", NULL, 0);
    assert_error(r, "bad_request", "request header must be a JSON object");
    titan_reply_destroy(&r);
    r = call(e, "", NULL, 0);
    assert_error(r, "bad_request", "empty request");
    titan_reply_destroy(&r);
    r = call(e, "{\"a\":1}", NULL, 0);
    assert_error(r, "bad_request", "missing \"op\"");
    titan_reply_destroy(&r);
    /* A frame that no descriptor names. */
    float x = 1;
    titan_frame f[1] = {{&x, sizeof(x)}};
    r = call(e, "{\"op\":\"matrix_multiply\",\"a\":[[1]],\"b\":[[1]]}", f, 1);
    assert_error(r, "bad_request", "binary frame 1 is not referenced");
    titan_reply_destroy(&r);
    /* A frame of the wrong size for its descriptor. */
    r = call(e,
             "{\"op\":\"matrix_multiply\",\"a\":{\"dtype\":\"float32\",\"shape\":[2,2],\"frame\":1},\"b\":[["
             "1],[1]]}",
             f, 1);
    assert_error(r, "bad_request", "frame 1 has 4 bytes but 'a'");
    titan_reply_destroy(&r);
}

static void test_deadline(void **state)
{
    titan_engine *e = *state;
    /* No queue: a valid deadline is always met. */
    titan_reply *r =
        call(e, "{\"op\":\"matrix_multiply\",\"deadline_ms\":1,\"a\":[[2]],\"b\":[[3]]}", NULL, 0);
    assert_string_equal(titan_reply_header(r), "{\"result\":[[6.0]]}");
    titan_reply_destroy(&r);
    r = call(e, "{\"op\":\"ping\",\"deadline_ms\":0}", NULL, 0);
    assert_string_equal(
        titan_reply_header(r),
        "{\"error\":\"\\\"deadline_ms\\\" must be an integer from 1 to 86400000\",\"code\":\"bad_request\"}");
    titan_reply_destroy(&r);
    /* A header that fails after its id was read still echoes the id. */
    r = call(e, "{\"op\":\"ping\",\"id\":\"d\",\"deadline_ms\":\"soon\"}", NULL, 0);
    assert_string_equal(titan_reply_header(r),
                        "{\"error\":\"\\\"deadline_ms\\\" must be an integer from 1 to 86400000\","
                        "\"code\":\"bad_request\",\"id\":\"d\"}");
    titan_reply_destroy(&r);
}

static void test_too_many_frames(void **state)
{
    titan_engine *e = *state;
    float x[16] = {0};
    titan_frame f[16];
    for (int i = 0; i < 16; i++)
        f[i] = (titan_frame){&x[i], sizeof(float)};
    titan_reply *r = call(e, "{\"id\":\"m\",\"op\":\"ping\"}", f, 16);
    assert_string_equal(titan_reply_header(r),
                        "{\"error\":\"too many frames: a request has at most 16 (the header "
                        "and 15 tensors)\",\"code\":\"bad_request\",\"id\":\"m\"}");
    titan_reply_destroy(&r);
    /* The worker's bound on an echoed id (the core's titan_request_peek_id): 256 characters are echoed in a
     * refusal, 257 are not (the engine echoed any length before it shared the worker's checks). */
    char hdr[400], id[300];
    memset(id, 'i', sizeof(id));
    id[256] = '\0';
    snprintf(hdr, sizeof(hdr), "{\"id\":\"%s\",\"op\":\"ping\"}", id);
    r = call(e, hdr, f, 16);
    json_t *o = json_loads(titan_reply_header(r), 0, NULL);
    assert_int_equal((int)strlen(json_string_value(json_object_get(o, "id"))), 256);
    json_decref(o);
    titan_reply_destroy(&r);
    id[256] = 'i';
    id[257] = '\0';
    snprintf(hdr, sizeof(hdr), "{\"id\":\"%s\",\"op\":\"ping\"}", id);
    r = call(e, hdr, f, 16);
    o = json_loads(titan_reply_header(r), 0, NULL);
    assert_null(json_object_get(o, "id"));
    assert_string_equal(json_string_value(json_object_get(o, "code")), "bad_request");
    json_decref(o);
    titan_reply_destroy(&r);
}

static void test_too_large(void **state)
{
    titan_engine *e = *state;
    /* 1 GiB of inaccessible address space: refused on its size alone, and never read (a read would fault). */
    size_t big = 1ULL << 30;
    void *p = mmap(NULL, big, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    assert_true(p != MAP_FAILED);
    const char *hdr =
        "{\"op\":\"matrix_multiply\",\"id\":\"tl\",\"a\":{\"dtype\":\"float32\",\"shape\":[16384,16384],"
        "\"frame\":1},\"b\":[[1]]}";
    titan_frame f[1] = {{p, big}};
    titan_reply *r = call(e, hdr, f, 1);
    char want[512];
    snprintf(want, sizeof(want),
             "{\"error\":\"the request has %zu bytes, over this worker's limit of 1073741824 "
             "(max_request_bytes)\","
             "\"code\":\"too_large\",\"id\":\"tl\"}",
             big + strlen(hdr));
    assert_string_equal(titan_reply_header(r), want);
    titan_reply_destroy(&r);
    munmap(p, big);

    /* A result over max_result_bytes, from small operands. */
    float col[32768], row[32768];
    memset(col, 0, sizeof(col));
    memset(row, 0, sizeof(row));
    titan_frame g[2] = {{col, sizeof(col)}, {row, sizeof(row)}};
    char h[512];
    matmul_header(h, sizeof(h), TITAN_DTYPE_FLOAT32, 32768, 1, 32768, NULL);
    r = call(e, h, g, 2);
    assert_error(r, "too_large", "larger than the limit of 1073741824 bytes");
    titan_reply_destroy(&r);
}

static void test_call_bad_args(void **state)
{
    titan_engine *e = *state;
    titan_reply *r = (titan_reply *)(uintptr_t)0x1;
    assert_int_equal(titan_engine_call(e, NULL, NULL, 0, &r), -EINVAL);
    assert_int_equal(titan_engine_call(e, "{\"op\":\"ping\"}", NULL, 1, &r), -EINVAL);
    titan_frame f[1] = {{NULL, 4}};
    assert_int_equal(titan_engine_call(e, "{\"op\":\"ping\"}", f, 1, &r), -EINVAL);
    assert_int_equal(titan_engine_call(NULL, "{\"op\":\"ping\"}", NULL, 0, &r), -EINVAL);
    assert_ptr_equal(r, (titan_reply *)(uintptr_t)0x1);
    assert_int_equal(titan_engine_call(e, "{\"op\":\"ping\"}", NULL, 0, NULL), -EINVAL);
}

static void test_frames_unchanged(void **state)
{
    titan_engine *e = *state;
    const size_t m = 24, k = 40, n = 12;
    uint64_t seed = 77;
    for (int unaligned = 0; unaligned < 2; unaligned++) {
        /* Unaligned frames are legal on the wire (the worker copies them for BLAS). */
        unsigned char *abuf = malloc(m * k * 8 + 1), *bbuf = malloc(k * n * 8 + 1);
        assert_non_null(abuf);
        assert_non_null(bbuf);
        double *a = (double *)(abuf + unaligned), *b = (double *)(bbuf + unaligned);
        double *ta = malloc(m * k * 8), *tb = malloc(k * n * 8);
        assert_non_null(ta);
        assert_non_null(tb);
        fill(TITAN_DTYPE_FLOAT64, ta, m * k, &seed, 0);
        fill(TITAN_DTYPE_FLOAT64, tb, k * n, &seed, 0);
        memcpy(a, ta, m * k * 8);
        memcpy(b, tb, k * n * 8);
        char hdr[512];
        matmul_header(hdr, sizeof(hdr), TITAN_DTYPE_FLOAT64, m, k, n, "5");
        char hdr_copy[512];
        memcpy(hdr_copy, hdr, sizeof(hdr));
        titan_frame f[2] = {{a, m * k * 8}, {b, k * n * 8}};
        titan_reply *r = call(e, hdr, f, 2);
        json_t *want = json_integer(5);
        const char *why = check_product(r, TITAN_DTYPE_FLOAT64, m, k, n, ta, tb, 1e-12, want);
        if (why) fail_msg("unaligned=%d: %s", unaligned, why);
        json_decref(want);
        /* The result is not the caller's memory. */
        size_t size;
        const void *c = titan_reply_frame(r, 0, &size);
        assert_true((const unsigned char *)c + size <= abuf ||
                    (const unsigned char *)c >= abuf + m * k * 8 + 1);
        titan_reply_destroy(&r);
        assert_memory_equal(a, ta, m * k * 8);
        assert_memory_equal(b, tb, k * n * 8);
        assert_memory_equal(hdr, hdr_copy, sizeof(hdr));
        free(abuf);
        free(bbuf);
        free(ta);
        free(tb);
    }
}

/* --- threads --- */

#define NTHREADS 4
#define ITERS 25

typedef struct {
    titan_engine *e;
    int index;
    int ok;            /* products checked and right */
    char failure[320]; /* the first failure */
} s_worker_arg;

static void *s_thread_main(void *p)
{
    s_worker_arg *t = p;
    uint64_t seed = 1000 + (uint64_t)t->index;
    for (int it = 0; it < ITERS; it++) {
        /* Each thread its own shapes and dtypes, so swapped results cannot pass. */
        titan_dtype dt = (t->index + it) % 2 ? TITAN_DTYPE_FLOAT64 : TITAN_DTYPE_FLOAT32;
        size_t m = 5 + (size_t)t->index * 7 + (size_t)it % 3, k = 11 + (size_t)t->index * 3,
               n = 3 + (size_t)t->index * 5 + (size_t)it % 4;
        void *a = malloc(m * k * dsize(dt)), *b = malloc(k * n * dsize(dt));
        if (!a || !b) {
            snprintf(t->failure, sizeof(t->failure), "out of memory");
            free(a);
            free(b);
            return NULL;
        }
        fill(dt, a, m * k, &seed, 0);
        fill(dt, b, k * n, &seed, 0);
        char id[32], hdr[512];
        snprintf(id, sizeof(id), "\"t%d-%d\"", t->index, it);
        matmul_header(hdr, sizeof(hdr), dt, m, k, n, id);
        titan_frame f[2] = {{a, m * k * dsize(dt)}, {b, k * n * dsize(dt)}};
        titan_reply *r = NULL;
        int rc = titan_engine_call(t->e, hdr, f, 2, &r);
        const char *why = NULL;
        if (rc != 0) {
            why = "titan_engine_call failed";
        } else {
            json_t *want = json_loads(id, JSON_DECODE_ANY, NULL);
            why = check_product(r, dt, m, k, n, a, b, dt == TITAN_DTYPE_FLOAT32 ? 1e-5 : 1e-12, want);
            json_decref(want);
        }
        titan_reply_destroy(&r);
        free(a);
        free(b);
        if (why) {
            snprintf(t->failure, sizeof(t->failure), "thread %d iteration %d: %s", t->index, it, why);
            return NULL;
        }
        t->ok++;
    }
    return NULL;
}

static void test_threads(void **state)
{
    titan_engine *e = *state;
    s_worker_arg args[NTHREADS];
    pthread_t th[NTHREADS];
    memset(args, 0, sizeof(args));
    for (int i = 0; i < NTHREADS; i++) {
        args[i].e = e;
        args[i].index = i;
        assert_int_equal(pthread_create(&th[i], NULL, s_thread_main, &args[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < NTHREADS; i++) {
        if (args[i].failure[0]) fail_msg("%s", args[i].failure);
        assert_int_equal(args[i].ok, ITERS);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_cpu),
        cmocka_unit_test(test_new_cuda_fails),
        cmocka_unit_test(test_new_bad_device),
        cmocka_unit_test(test_new_bad_args),
        cmocka_unit_test(test_ping),
        cmocka_unit_test(test_gpu_info),
        cmocka_unit_test(test_ops_limits),
        cmocka_unit_test(test_matmul_binary_exact),
        cmocka_unit_test(test_matmul_binary_random),
        cmocka_unit_test(test_matmul_json),
        cmocka_unit_test(test_id_echoed),
        cmocka_unit_test(test_unknown_op),
        cmocka_unit_test(test_resident_unsupported),
        cmocka_unit_test(test_inner_dims_mismatch),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_too_many_frames),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_call_bad_args),
        cmocka_unit_test(test_frames_unchanged),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
