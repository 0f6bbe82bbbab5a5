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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_float32_round_trip), cmocka_unit_test(test_float_specials),
        cmocka_unit_test(test_parse_matches_libc), cmocka_unit_test(test_split_object),
        cmocka_unit_test(test_tensor_parse),       cmocka_unit_test(test_shapes_and_dtypes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
