/* test_codec.c - cmocka tests of the protocol codec: numbers, JSON splitting, tensors, shapes. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "jsonscan.h"
#include "numfmt.h"
#include "titan/titan.h"

static uint64_t s_rng = 88172645463325252ULL;
static uint64_t s_next(void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return s_rng;
}

static void test_float32_round_trip(void **state)
{
    (void)state;
    char buf[64];
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)s_next();
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f)) continue;
        int n = titan_format_float32(f, buf, sizeof(buf));
        assert_true(n > 0);
        float g = 0, h = strtof(buf, NULL);
        assert_int_equal(titan_parse_f32(buf, buf + n, &g), (size_t)n);
        if (memcmp(&f, &g, 4) != 0 || memcmp(&f, &h, 4) != 0) fail_msg("%a formatted as %s reads back %a", f, buf, g);
    }
}

/* The number of significant digits in a formatted number (before any exponent). */
static int s_sig_digits(const char *t)
{
    int n = 0, started = 0, trailing = 0;
    for (; *t && *t != 'e'; t++) {
        if (*t < '0' || *t > '9') continue;
        if (*t != '0') started = 1;
        if (!started) continue;
        n++;
        trailing = *t == '0' ? trailing + 1 : 0;
    }
    return n - trailing;
}

/* float32 text is the shortest that reads back (9 digits at most): no printf precision below the
 * one titan picked gives the same float, except at a power of two (documented in numfmt.c). */
static void test_float32_shortest(void **state)
{
    (void)state;
    char buf[64], alt[64];
    const struct {
        float v;
        const char *text;
    } known[] = {
        {0.1f, "0.1"},          {-1.5f, "-1.5"},           {1e-7f, "1e-7"},          {FLT_MAX, "3.4028235e38"},
        {FLT_MIN, "1.1754944e-38"}, {0x1p-149f, "1e-45"}, {-0x1p-149f, "-1e-45"}, {0x1.fffffcp-127f, "1.1754942e-38"},
        {16777216.0f, "16777216.0"}, {0.3f, "0.3"},        {123456.79f, "123456.79"}, {1e16f, "1e16"},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        titan_format_float32(known[i].v, buf, sizeof(buf));
        if (strcmp(buf, known[i].text) != 0) fail_msg("%a formatted as %s, expected %s", known[i].v, buf, known[i].text);
    }
    int longer = 0;
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)s_next();
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f) || f == 0) continue;
        int n = titan_format_float32(f, buf, sizeof(buf));
        assert_true(n > 0 && n <= TITAN_FLOAT32_TEXT_MAX);
        int nd = s_sig_digits(buf);
        assert_true(nd >= 1 && nd <= 9);
        for (int p = 1; p < nd; p++) {
            snprintf(alt, sizeof(alt), "%.*e", p - 1, (double)f);
            if (strtof(alt, NULL) == f) {
                /* only where f is a power of two may a shorter text be missed */
                uint32_t mant = u & 0x7fffff;
                if (mant != 0) fail_msg("%a formatted as %s, but %s (%d digits) reads back too", f, buf, alt, p);
                longer++;
                break;
            }
        }
    }
    print_message("# %d powers of two of the sample have a shorter text than titan's\n", longer);
}

/* Sets element i of a tensor of dt to the i-th value of a class of awkward values. */
static void s_fill(titan_dtype dt, void *data, size_t elems, int cls)
{
    for (size_t i = 0; i < elems; i++) {
        double v;
        switch (cls) {
        case 0: v = -1.23456789e15 * (double)(i % 7 + 1); break;   /* negatives with exponents */
        case 1: v = (i % 3 == 0) ? NAN : (i % 3 == 1 ? -INFINITY : INFINITY); break;
        case 2: v = dt == TITAN_DTYPE_FLOAT32 ? -0x1.fffffcp-127 * (double)(i % 5 + 1) : -0x1p-1074 * (double)(i % 5 + 1); break;
        case 3: v = dt == TITAN_DTYPE_FLOAT32 ? -FLT_MAX : -DBL_MAX; break; /* the longest finite texts */
        default: v = -(double)(i % 9999991) * 1.0e-5 - 1e-9; break;
        }
        if (dt == TITAN_DTYPE_FLOAT32)
            ((float *)data)[i] = (float)v;
        else
            ((double *)data)[i] = v;
    }
}

/* titan_tensor_text_bound is an upper bound of what titan_tensor_text writes, for every rank 1..8,
 * dimension sizes 1 or large, and every value class; the buffer is exactly the bound, so ASan
 * catches any overflow; the text parses back to the same shape and bits. */
static void test_tensor_text_bound(void **state)
{
    (void)state;
    const titan_dtype dts[2] = {TITAN_DTYPE_FLOAT32, TITAN_DTYPE_FLOAT64};
    for (int d = 0; d < 2; d++) {
        titan_dtype dt = dts[d];
        size_t es = titan_dtype_size(dt);
        for (int rank = 1; rank <= TITAN_MAX_RANK; rank++) {
            /* every pattern of "1" and "large" dims; large shrinks with the count of large dims */
            for (unsigned mask = 0; mask < (1u << rank); mask++) {
                int nlarge = __builtin_popcount(mask);
                int64_t big = nlarge <= 1 ? 2000 : nlarge == 2 ? 45 : nlarge == 3 ? 12 : 3;
                int64_t shape[TITAN_MAX_RANK];
                size_t elems = 1;
                for (int i = 0; i < rank; i++) {
                    shape[i] = (mask >> i) & 1 ? big : 1;
                    elems *= (size_t)shape[i];
                }
                void *data = malloc(elems * es);
                assert_non_null(data);
                for (int cls = 0; cls < 5; cls++) {
                    s_fill(dt, data, elems, cls);
                    size_t bound = titan_tensor_text_bound(dt, shape, rank);
                    assert_true(bound > 0);
                    char *buf = malloc(bound);
                    assert_non_null(buf);
                    char *end = titan_tensor_text(buf, dt, data, shape, rank);
                    size_t len = (size_t)(end - buf);
                    if (len > bound) fail_msg("rank %d mask %x class %d: wrote %zu > bound %zu", rank, mask, cls, len, bound);
                    void *back = NULL;
                    int64_t bshape[TITAN_MAX_RANK];
                    int brank = 0;
                    char err[256];
                    int rc = titan_json_parse_tensor(buf, len, dt, elems, "t", &back, bshape, &brank, err, sizeof(err));
                    if (rc) fail_msg("rank %d mask %x class %d: %s", rank, mask, cls, err);
                    assert_int_equal(brank, rank);
                    assert_memory_equal(bshape, shape, sizeof(int64_t) * (size_t)rank);
                    for (size_t i = 0; i < elems; i++) {
                        double x = dt == TITAN_DTYPE_FLOAT32 ? ((float *)data)[i] : ((double *)data)[i];
                        double y = dt == TITAN_DTYPE_FLOAT32 ? ((float *)back)[i] : ((double *)back)[i];
                        if (!(x == y || (isnan(x) && isnan(y))) || signbit(x) != signbit(y))
                            fail_msg("rank %d element %zu: %a came back %a", rank, i, x, y);
                    }
                    free(back);
                    free(buf);
                }
                free(data);
            }
        }
    }
    /* a scalar, and shapes whose text cannot be sized */
    float one = -FLT_MAX;
    char small[TITAN_FLOAT32_TEXT_MAX + 1];
    assert_int_equal(titan_tensor_text_bound(TITAN_DTYPE_FLOAT32, NULL, 0), TITAN_FLOAT32_TEXT_MAX + 1);
    char *e = titan_tensor_text(small, TITAN_DTYPE_FLOAT32, &one, NULL, 0);
    assert_true(e - small <= TITAN_FLOAT32_TEXT_MAX);
    const int64_t huge[3] = {INT64_MAX / 4, 1 << 20, 1 << 20};
    assert_int_equal(titan_tensor_text_bound(TITAN_DTYPE_FLOAT64, huge, 3), 0);
    const int64_t zero[2] = {3, 0};
    assert_int_equal(titan_tensor_text_bound(TITAN_DTYPE_FLOAT32, zero, 2), 0);
}

static void test_float_specials(void **state)
{
    (void)state;
    char buf[64];
    titan_format_float32(NAN, buf, sizeof(buf));
    assert_string_equal(buf, "NaN");
    titan_format_float32(-INFINITY, buf, sizeof(buf));
    assert_string_equal(buf, "-Infinity");
    titan_format_float32(17.0f, buf, sizeof(buf));
    assert_string_equal(buf, "17.0");
    titan_format_float32(-0.0f, buf, sizeof(buf));
    assert_string_equal(buf, "-0.0");
    titan_format_float32(1e-7f, buf, sizeof(buf));
    assert_non_null(strchr(buf, 'e'));
    titan_format_float64(3.0, buf, sizeof(buf));
    assert_string_equal(buf, "3.0");
    titan_format_float64(0.1, buf, sizeof(buf));
    assert_true(strtod(buf, NULL) == 0.1);
    assert_int_equal(titan_format_float32(1.0f, buf, 8), -ENOSPC);
    float f;
    const char *inf = "Infinity";
    assert_int_equal(titan_parse_f32(inf, inf + 8, &f), 8);
    assert_true(isinf(f) && f > 0);
    const char *big = "1e400";
    assert_int_equal(titan_parse_f32(big, big + 5, &f), 5);
    assert_true(isinf(f));
}

static void test_parse_matches_libc(void **state)
{
    (void)state;
    char buf[64];
    for (int i = 0; i < 500000; i++) {
        double x = ((double)(s_next() % 1000000007) / 1000000007.0 - 0.5) * pow(10, (int)(s_next() % 90) - 45);
        int digits = 1 + (int)(s_next() % 19);
        int n = snprintf(buf, sizeof(buf), "%.*g", digits, x);
        float f, fr = strtof(buf, NULL);
        double d, dr = strtod(buf, NULL);
        assert_int_equal(titan_parse_f32(buf, buf + n, &f), (size_t)n);
        assert_int_equal(titan_parse_f64(buf, buf + n, &d), (size_t)n);
        if (memcmp(&f, &fr, 4) || memcmp(&d, &dr, 8)) fail_msg("%s: got %a/%a want %a/%a", buf, f, d, fr, dr);
    }
    /* exact float32 rounding midpoints must go to even */
    const char *mid = "1.000000059604644775390625"; /* 1 + 2^-24 */
    float f;
    titan_parse_f32(mid, mid + strlen(mid), &f);
    assert_true(f == 1.0f);
    const char *bad[] = {"01", "1.", ".5", "-", "+1", "1e", "nan", "inf", "--1", "0x10"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = titan_parse_f32(bad[i], bad[i] + strlen(bad[i]), &f);
        assert_true(n < strlen(bad[i]));
    }
}

static void test_split_object(void **state)
{
    (void)state;
    titan_json_split sp;
    char err[256];
    const char *t = "{\"op\":\"matrix_multiply\", \"a\" : [[1,2],[3,4]], \"x\":{\"y\":[1]}, \"b\":[[5],[6]]}";
    assert_int_equal(titan_json_split_object(t, strlen(t), TITAN_DTYPE_FLOAT32, 1000, &sp, err, sizeof(err)), 0);
    assert_int_equal(sp.nspans, 2);
    assert_int_equal(sp.spans[0].key_len, 1);
    assert_memory_equal(sp.spans[0].key, "a", 1);
    assert_memory_equal(sp.spans[1].val, "[[5],[6]]", 9);
    assert_string_equal(sp.rest, "{\"op\":\"matrix_multiply\",\"a\":null,\"x\":{\"y\":[1]},\"b\":null}");
    /* numeric arrays arrive parsed */
    assert_non_null(sp.spans[0].data);
    assert_int_equal(sp.spans[0].rank, 2);
    assert_true(((float *)sp.spans[0].data)[3] == 4.0f);
    titan_json_split_release(&sp);
    /* a non-numeric array is kept as text, and invalid JSON inside it is still caught */
    const char *t2 = "{\"op\":\"x\",\"a\":[\"s\", {\"k\":[1]}]}";
    assert_int_equal(titan_json_split_object(t2, strlen(t2), TITAN_DTYPE_FLOAT32, 1000, &sp, err, sizeof(err)), 0);
    assert_int_equal(sp.nspans, 1);
    assert_null(sp.spans[0].data);
    titan_json_split_release(&sp);
    const char *t3 = "{\"op\":\"x\",\"a\":[1, 2,]}";
    assert_int_equal(titan_json_split_object(t3, strlen(t3), TITAN_DTYPE_FLOAT32, 1000, &sp, err, sizeof(err)), -EINVAL);
    const char *bad[] = {"", "[]", "1", "\"op\"", "{", "{\"a\"}", "{\"a\":1,}", "{\"a\":1} {}", "{\"a\":[1,2}",
                         "{\"a\":\"\x01\"}", "{\"a\":\"\\x\"}", "{\"a\":]}", "null"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        assert_int_equal(titan_json_split_object(bad[i], strlen(bad[i]), TITAN_DTYPE_FLOAT32, 1000, &sp, err, sizeof(err)), -EINVAL);
        assert_true(err[0] != 0);
    }
    /* the most array fields, each shorter than the "null" that replaces it */
    char many[1024];
    char *m = many + sprintf(many, "{");
    for (int i = 0; i < TITAN_JSON_MAX_SPANS; i++) m += sprintf(m, "%s\"k%02d\":[]", i ? "," : "", i);
    sprintf(m, "}");
    assert_int_equal(titan_json_split_object(many, strlen(many), TITAN_DTYPE_FLOAT32, 1000, &sp, err, sizeof(err)), 0);
    assert_int_equal(sp.nspans, TITAN_JSON_MAX_SPANS);
    assert_int_equal(strlen(sp.rest), sp.rest_len);
    titan_json_split_release(&sp);
    sprintf(m, ",\"z\":[1]}");
    assert_int_equal(titan_json_split_object(many, strlen(many), TITAN_DTYPE_FLOAT32, 1000, &sp, err, sizeof(err)),
                     -EINVAL);
    /* depth is bounded without recursion */
    size_t depth = 100000;
    char *deep = malloc(depth * 2 + 16);
    char *o = deep;
    o += sprintf(o, "{\"a\":");
    for (size_t i = 0; i < depth; i++) *o++ = '{';
    for (size_t i = 0; i < depth; i++) *o++ = '}';
    *o++ = '}';
    assert_int_equal(titan_json_split_object(deep, (size_t)(o - deep), TITAN_DTYPE_FLOAT32, 1000, &sp, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "nested"));
    free(deep);
}

static int s_tensor(const char *t, titan_dtype dt, size_t max, void **data, int64_t *shape, int *rank, char *err)
{
    return titan_json_parse_tensor(t, strlen(t), dt, max, "a", data, shape, rank, err, 256);
}

static void test_tensor_parse(void **state)
{
    (void)state;
    void *data;
    int64_t shape[TITAN_MAX_RANK];
    int rank;
    char err[256];
    assert_int_equal(s_tensor(" [ [1, 2.5e0] ,[ -3,4 ] ] ", TITAN_DTYPE_FLOAT32, 100, &data, shape, &rank, err), 0);
    assert_int_equal(rank, 2);
    assert_int_equal(shape[0], 2);
    assert_int_equal(shape[1], 2);
    assert_true(((float *)data)[1] == 2.5f && ((float *)data)[2] == -3.0f);
    assert_int_equal((uintptr_t)data % 64, 0);
    free(data);
    assert_int_equal(s_tensor("[[[1],[2]],[[3],[4]]]", TITAN_DTYPE_FLOAT64, 100, &data, shape, &rank, err), 0);
    assert_int_equal(rank, 3);
    assert_true(((double *)data)[3] == 4.0);
    free(data);
    assert_int_equal(s_tensor("[NaN, Infinity, -Infinity]", TITAN_DTYPE_FLOAT32, 100, &data, shape, &rank, err), 0);
    assert_true(isnan(((float *)data)[0]) && isinf(((float *)data)[2]));
    free(data);
    struct {
        const char *text;
        const char *needle;
    } bad[] = {
        {"[[1,2],[3]]", "ragged"},       {"[[1,2],3]", "ragged"},         {"[1,[2]]", "ragged"},
        {"[]", "empty"},                 {"[[]]", "empty"},               {"[[1,\"x\"]]", "a[0][1] is not a number"},
        {"[true]", "not a number"},      {"[null]", "not a number"},      {"[{}]", "not a number"},
        {"[1,]", "well-formed"},         {"[1 2]", "well-formed"},        {"[01]", "not a valid"},
        {"[1", "well-formed"},           {"[1]]", "well-formed"},         {"[[[[[[[[[1]]]]]]]]]", "deeper"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        int rc = s_tensor(bad[i].text, TITAN_DTYPE_FLOAT32, 100, &data, shape, &rank, err);
        if (rc != -EINVAL || !strstr(err, bad[i].needle))
            fail_msg("%s: rc %d, error '%s' lacks '%s'", bad[i].text, rc, err, bad[i].needle);
    }
    assert_int_equal(s_tensor("[1,2,3,4,5]", TITAN_DTYPE_FLOAT32, 4, &data, shape, &rank, err), -E2BIG);
}

static void test_shapes_and_dtypes(void **state)
{
    (void)state;
    size_t n;
    int64_t ok[] = {512, 256};
    assert_int_equal(titan_shape_elems(TITAN_DTYPE_FLOAT32, ok, 2, &n), 0);
    assert_int_equal(n, 512 * 256);
    int64_t zero[] = {3, 0};
    assert_int_equal(titan_shape_elems(TITAN_DTYPE_FLOAT32, zero, 2, &n), -EINVAL);
    int64_t neg[] = {-1, 4};
    assert_int_equal(titan_shape_elems(TITAN_DTYPE_FLOAT32, neg, 2, &n), -EINVAL);
    int64_t huge[] = {INT64_MAX, INT64_MAX};
    assert_int_equal(titan_shape_elems(TITAN_DTYPE_FLOAT64, huge, 2, &n), -EOVERFLOW);
    int64_t bytes_overflow[] = {(int64_t)1 << 62};
    assert_int_equal(titan_shape_elems(TITAN_DTYPE_FLOAT64, bytes_overflow, 1, &n), -EOVERFLOW);
    assert_int_equal(titan_shape_elems(TITAN_DTYPE_FLOAT32, ok, 0, &n), -EINVAL);
    assert_int_equal(titan_shape_elems(TITAN_DTYPE_INVALID, ok, 2, &n), -EINVAL);
    assert_int_equal(titan_dtype_from_name("float32"), TITAN_DTYPE_FLOAT32);
    assert_int_equal(titan_dtype_from_name("float16"), TITAN_DTYPE_INVALID);
    assert_int_equal(titan_dtype_from_name(NULL), TITAN_DTYPE_INVALID);
    assert_string_equal(titan_dtype_name(TITAN_DTYPE_FLOAT64), "float64");
    assert_int_equal(titan_dtype_size(TITAN_DTYPE_FLOAT64), 8);
}

/* A figure of /proc/self/status, in KiB (VmSize: the address space reserved now). */
static long s_status_kb(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') v = strtol(line + n + 1, NULL, 10);
    if (f) fclose(f);
    assert_true(v >= 0);
    return v;
}

/* The finding: 32 tiny arrays in a 100 MB header reserved 6.8 GB of address space, each array's buffer
 * sized for the rest of the header. Memory now follows what is parsed: with the split of a 16 MiB header
 * of 32 one-element arrays held, the process has reserved less than the header's size more. */
static void test_split_memory_follows_content(void **state)
{
    (void)state;
    size_t pad = 16 << 20;
    char *t = malloc(pad + 4096);
    assert_non_null(t);
    char *o = t + sprintf(t, "{");
    for (int i = 0; i < TITAN_JSON_MAX_SPANS; i++)
        o += sprintf(o, "\"k%02d\":[%d],", i, i);
    o += sprintf(o, "\"op\":\"ping\"");
    memset(o, ' ', pad);
    o += pad;
    *o++ = '}';
    size_t len = (size_t)(o - t);
    titan_json_split sp;
    char err[256];
    long before = s_status_kb("VmSize");
    assert_int_equal(titan_json_split_object(t, len, TITAN_DTYPE_FLOAT32, len, &sp, err, sizeof(err)), 0);
    long during = s_status_kb("VmSize");
    assert_int_equal(sp.nspans, TITAN_JSON_MAX_SPANS);
    for (int i = 0; i < TITAN_JSON_MAX_SPANS; i++) {
        assert_int_equal(sp.spans[i].status, 0);
        assert_int_equal(sp.spans[i].rank, 1);
        assert_int_equal(sp.spans[i].shape[0], 1);
        assert_true(((float *)sp.spans[i].data)[0] == (float)i);
    }
    assert_int_equal(sp.rest_len, strlen(sp.rest));
    if ((during - before) * 1024 > (long)len)
        fail_msg("the split of a %zu-byte header reserved %ld KiB more address space", len, during - before);
    titan_json_split_release(&sp);
    /* A tensor parsed from a long text (an array followed by much else) is sized by its elements too. */
    void *data;
    int64_t shape[TITAN_MAX_RANK];
    int rank;
    memcpy(t, "[1,2,3]", 7);
    before = s_status_kb("VmSize");
    size_t used = 0;
    (void)used;
    assert_int_equal(titan_json_split_object(t, 0, TITAN_DTYPE_FLOAT64, len, &sp, err, sizeof(err)), -EINVAL);
    memset(t + 7, ' ', len - 7);
    assert_int_equal(
        titan_json_parse_tensor(t, len, TITAN_DTYPE_FLOAT64, len, "a", &data, shape, &rank, err, sizeof(err)),
        0);
    during = s_status_kb("VmSize");
    assert_int_equal(shape[0], 3);
    assert_true(((double *)data)[2] == 3.0);
    if ((during - before) * 1024 > (long)len)
        fail_msg("parsing [1,2,3] from %zu bytes of text reserved %ld KiB", len, during - before);
    free(data);
    free(t);
}

static int s_split(const char *t, titan_json_split *sp, char *err)
{
    return titan_json_split_object(t, strlen(t), TITAN_DTYPE_FLOAT32, 1 << 24, sp, err, 256);
}

/* The finding: a 36 MB header of 2 million scalar members peaked at 325 MB (jansson's DOM of them). The
 * split counts what a DOM would hold, TITAN_JSON_MAX_VALUES at most: member names and values, everything
 * inside objects, strings and literals; not the numbers of nested numeric arrays. */
static void test_split_values_limit(void **state)
{
    (void)state;
    titan_json_split sp;
    char err[256];
    size_t cap = 64 << 20;
    char *t = malloc(cap);
    assert_non_null(t);
    /* {"op":"x","m1":0,...}: each member is a name and a value. */
    for (int members = TITAN_JSON_MAX_VALUES / 2; members <= TITAN_JSON_MAX_VALUES / 2 + 1; members++) {
        char *o = t + sprintf(t, "{\"op\":\"x\"");
        for (int i = 1; i < members; i++)
            o += sprintf(o, ",\"m%d\":0", i);
        sprintf(o, "}");
        int rc = s_split(t, &sp, err);
        if (members == TITAN_JSON_MAX_VALUES / 2) {
            assert_int_equal(rc, 0);
            titan_json_split_release(&sp);
        } else {
            assert_int_equal(rc, -EINVAL);
            assert_non_null(strstr(err, "16384"));
        }
    }
    /* 2 million members: refused at the limit, long before the end. */
    char *o = t + sprintf(t, "{\"op\":\"ping\"");
    for (int i = 0; i < 2000000; i++)
        o += sprintf(o, ",\"m%07d\":1", i);
    sprintf(o, "}");
    assert_int_equal(s_split(t, &sp, err), -EINVAL);
    assert_non_null(strstr(err, "JSON values"));
    /* Values nested in an object member count. */
    o = t + sprintf(t, "{\"op\":\"x\",\"o\":{\"a\":[");
    for (int i = 0; i < TITAN_JSON_MAX_VALUES; i++)
        o += sprintf(o, "%s1", i ? "," : "");
    sprintf(o, "]}}");
    assert_int_equal(s_split(t, &sp, err), -EINVAL);
    /* In a top-level array: objects, strings and literals count... */
    const char *items[] = {"{}", "\"s\"", "true", "null", "{\"k\":1}"};
    for (size_t k = 0; k < sizeof(items) / sizeof(items[0]); k++) {
        o = t + sprintf(t, "{\"op\":\"x\",\"a\":[");
        for (int i = 0; i < TITAN_JSON_MAX_VALUES; i++)
            o += sprintf(o, "%s%s", i ? "," : "", items[k]);
        sprintf(o, "]}");
        if (s_split(t, &sp, err) != -EINVAL || !strstr(err, "JSON values"))
            fail_msg("an array of %d %s: '%s'", TITAN_JSON_MAX_VALUES, items[k], err);
    }
    /* ... the numbers of nested numeric arrays do not: a list of tensors of different shapes (inference's
     * inputs), with NaN too, and numbers with strings beside them. */
    o = t + sprintf(t, "{\"op\":\"x\",\"inputs\":[[");
    for (int i = 0; i < 100000; i++)
        o += sprintf(o, "%s%d", i ? "," : "", i);
    o += sprintf(o, "],[[1,2],[3,4]],[NaN]]");
    o += sprintf(o, ",\"meta\":[\"tag\",[");
    for (int i = 0; i < 100000; i++)
        o += sprintf(o, "%s%d.5", i ? "," : "", i);
    sprintf(o, "]]}");
    if (s_split(t, &sp, err) != 0) fail_msg("a list of large tensors: %s", err);
    assert_int_equal(sp.nspans, 2);
    assert_null(sp.spans[0].data);
    titan_json_split_release(&sp);
    free(t);
}

/* Top-level arrays that are not tensors are checked as JSON without a DOM, as strictly as jansson did. */
static void test_split_array_check(void **state)
{
    (void)state;
    titan_json_split sp;
    char err[256];
    const char *good[] = {
        "[]",
        "[[]]",
        "[{}]",
        "[\"a\",1]",
        "[{\"k\":[1,{\"x\":null}]},true,false,null,-0.5e+3,0,\"\\u00e9\\ud83d\\ude00\"]",
        "[\"caf\xc3\xa9\",\"\xf0\x9f\x98\x80\",\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"]",
        "[ 1 , [ 2 , 3 ] ]",
        "[[1,2],[3]]",
        "[[NaN],[1,Infinity]]",
        "[1E5,-1e-5,2.5E+0]",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char t[512];
        snprintf(t, sizeof(t), "{\"op\":\"x\",\"a\":%s}", good[i]);
        if (s_split(t, &sp, err) != 0) fail_msg("%s refused: %s", good[i], err);
        titan_json_split_release(&sp);
    }
    const char *bad[] = {
        "[1,]",
        "[,1]",
        "[1 2]",
        "[01,\"a\"]",
        "[1.,\"a\"]",
        "[.5,\"a\"]",
        "[-,\"a\"]",
        "[1e,\"a\"]",
        "[+1,\"a\"]",
        "[tru,\"a\"]",
        "[nul]",
        "[True]",
        "[{\"a\":1,}]",
        "[{\"a\" 1}]",
        "[{1:2}]",
        "[{\"a\":NaN}]",
        "[\"\\x\"]",
        "[\"\\u0000\"]",
        "[\"\\ud800\"]",
        "[\"\\udc00\"]",
        "[\"\\ud800\\u0041\"]",
        "[\"\\u12\"]",
        "[\"\xc3\"]",
        "[\"\xc0\xaf\"]",
        "[\"\xed\xa0\x80\"]",
        "[\"\xf4\x90\x80\x80\"]",
        "[\"\xff\"]",
        "[\"a\x01\"]",
        "[{\"a\":1}}]",
        "[[1,\"a\"]",
        "[1,\"a\"]]",
        "[{\"a\":[}]",
        "[\"a\",1x]",
        "[\"a\",1,NaN]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char t[512];
        int n = snprintf(t, sizeof(t), "{\"op\":\"x\",\"a\":%s", bad[i]);
        /* Without the closing brace, then whole; with no NUL after the text but '#'s, which nothing may read
         * (an error message's quote included). */
        for (int whole = 0; whole < 2; whole++) {
            if (whole) n += snprintf(t + n, sizeof(t) - (size_t)n, "}");
            char *buf = malloc((size_t)n + 32);
            memset(buf, '#', (size_t)n + 32);
            memcpy(buf, t, (size_t)n);
            err[0] = 0;
            int rc =
                titan_json_split_object(buf, (size_t)n, TITAN_DTYPE_FLOAT32, 1 << 24, &sp, err, sizeof(err));
            free(buf);
            if (rc != -EINVAL) {
                titan_json_split_release(&sp);
                fail_msg("%s accepted", bad[i]);
            }
            assert_true(err[0] != 0);
            if (strchr(err, '#')) fail_msg("%s: the message quotes bytes past the text: %s", bad[i], err);
        }
    }
    /* Depth is bounded without recursion in arrays too. */
    size_t depth = 100000;
    char *deep = malloc(depth * 6 + 64);
    char *o = deep + sprintf(deep, "{\"a\":[\"x\",");
    for (size_t i = 0; i < depth; i++)
        o += sprintf(o, "{\"k\":");
    *o = 0;
    assert_int_equal(s_split(deep, &sp, err), -EINVAL);
    assert_non_null(strstr(err, "nested"));
    free(deep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_float32_round_trip),
        cmocka_unit_test(test_float32_shortest),
        cmocka_unit_test(test_tensor_text_bound),
        cmocka_unit_test(test_float_specials),
        cmocka_unit_test(test_parse_matches_libc),
        cmocka_unit_test(test_split_object),
        cmocka_unit_test(test_tensor_parse),
        cmocka_unit_test(test_shapes_and_dtypes),
        cmocka_unit_test(test_split_memory_follows_content),
        cmocka_unit_test(test_split_values_limit),
        cmocka_unit_test(test_split_array_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
