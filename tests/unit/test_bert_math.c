/* test_bert_math.c - the element-wise math of the BERT forward pass (src/core/encoder/bert_math.h) against
 * double-precision libm and the formulas the functions stand for. The functions are evaluated over arrays in
 * loops compiled as bert_cpu.c compiles its own (-O3 without trapping math, one clone per vector ISA), so
 * that the vectorised code the CPU forward pass runs is what is checked. */
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

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3", "no-trapping-math")
#endif
#include "encoder/bert_math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define S_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define S_CLONES
#endif

enum { F_EXP, F_ERF, F_TANH, F_GELU, F_GELU_TANH, F_RELU };

S_CLONES static void s_map(int f, const float *x, float *y, int n)
{
    switch (f) {
    case F_EXP:
        for (int i = 0; i < n; i++)
            y[i] = titan_expf(x[i]);
        break;
    case F_ERF:
        for (int i = 0; i < n; i++)
            y[i] = titan_erff(x[i]);
        break;
    case F_TANH:
        for (int i = 0; i < n; i++)
            y[i] = titan_tanhf(x[i]);
        break;
    case F_GELU:
        for (int i = 0; i < n; i++)
            y[i] = titan_gelu_erf(x[i]);
        break;
    case F_GELU_TANH:
        for (int i = 0; i < n; i++)
            y[i] = titan_gelu_tanh(x[i]);
        break;
    default:
        for (int i = 0; i < n; i++)
            y[i] = titan_relu(x[i]);
    }
}

S_CLONES static void s_softmax(float *p, int n, int valid)
{
    titan_softmax_row(p, n, valid);
}

S_CLONES static void s_layernorm(float *y, const float *x, const float *g, const float *b, int n, float eps)
{
    titan_layernorm_row(y, x, g, b, n, eps);
}

S_CLONES static void s_normalize(float *x, int n)
{
    titan_l2_normalize_row(x, n);
}

/* n points evenly over [lo, hi] */
static float *s_grid(float lo, float hi, int n)
{
    float *x = malloc((size_t)n * sizeof(float));
    assert_non_null(x);
    for (int i = 0; i < n; i++)
        x[i] = (float)(lo + (hi - lo) * (double)i / (n - 1));
    return x;
}

static double s_gelu(double x)
{
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static double s_gelu_tanh(double x)
{
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

static void test_exp(void **state)
{
    (void)state;
    int n = 2000003;
    float *x = s_grid(-87.33f, 88.72f, n), *y = malloc((size_t)n * sizeof(float));
    s_map(F_EXP, x, y, n);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double e = fabs(y[i] - exp((double)x[i])) / exp((double)x[i]);
        if (e > worst) worst = e;
    }
    printf("# titan_expf: max relative error %.3g on [-87.33, 88.72]\n", worst);
    assert_true(worst <= 3e-7);
    float sp[] = {0.0f, -87.34f, -200.0f, -INFINITY, 88.73f, 89.0f, INFINITY, NAN}, r[8];
    s_map(F_EXP, sp, r, 8);
    assert_true(r[0] == 1.0f);
    assert_true(r[1] == 0.0f && r[2] == 0.0f && r[3] == 0.0f);
    assert_true(isinf(r[4]) && r[4] > 0 && isinf(r[5]) && isinf(r[6]));
    assert_true(isnan(r[7]));
    free(x);
    free(y);
}

static void test_erf_tanh(void **state)
{
    (void)state;
    int n = 1000001;
    float *x = s_grid(-8.0f, 8.0f, n), *y = malloc((size_t)n * sizeof(float));
    s_map(F_ERF, x, y, n);
    double worst = 0;
    for (int i = 0; i < n; i++)
        worst = fmax(worst, fabs(y[i] - erf((double)x[i])));
    printf("# titan_erff: max absolute error %.3g on [-8, 8]\n", worst);
    assert_true(worst <= 4e-7);
    for (int i = 0; i < n; i++) /* relative accuracy near 0 (the series) */
        if (fabs(x[i]) < 0.5f && fabs(y[i] - erf((double)x[i])) > 1e-6 * fabs(erf((double)x[i])))
            fail_msg("erf(%g) = %.9g, want %.9g", x[i], y[i], erf((double)x[i]));
    for (int i = 0; i < n; i++)
        assert_true(y[i] == -y[n - 1 - i]); /* odd, exactly */
    s_map(F_TANH, x, y, n);
    worst = 0;
    for (int i = 0; i < n; i++)
        worst = fmax(worst, fabs(y[i] - tanh((double)x[i])));
    printf("# titan_tanhf: max absolute error %.3g on [-8, 8]\n", worst);
    assert_true(worst <= 5e-7);
    float sp[] = {50.0f, -50.0f, 1e30f, -1e30f}, r[4];
    s_map(F_TANH, sp, r, 4);
    assert_true(r[0] == 1.0f && r[1] == -1.0f && r[2] == 1.0f && r[3] == -1.0f);
    free(x);
    free(y);
}

static void test_activations(void **state)
{
    (void)state;
    int n = 400001;
    float *x = s_grid(-20.0f, 20.0f, n), *y = malloc((size_t)n * sizeof(float));
    /* |error| <= |x|/2 * (the erf or tanh bound) + float rounding of a value of size |x| */
    s_map(F_GELU, x, y, n);
    for (int i = 0; i < n; i++) {
        double tol = 2.5e-7 * fabs(x[i]) + 1.2e-7 * fabs(s_gelu(x[i])) + 1e-30;
        if (!(fabs(y[i] - s_gelu(x[i])) <= tol))
            fail_msg("gelu(%g) = %.9g, want %.9g", x[i], y[i], s_gelu(x[i]));
    }
    s_map(F_GELU_TANH, x, y, n);
    for (int i = 0; i < n; i++) {
        double tol = 2.5e-7 * fabs(x[i]) + 1.2e-7 * fabs(s_gelu_tanh(x[i])) + 1e-30;
        if (!(fabs(y[i] - s_gelu_tanh(x[i])) <= tol))
            fail_msg("gelu_tanh(%g) = %.9g, want %.9g", x[i], y[i], s_gelu_tanh(x[i]));
    }
    s_map(F_RELU, x, y, n);
    for (int i = 0; i < n; i++)
        assert_true(y[i] == (x[i] > 0 ? x[i] : 0.0f));
    free(x);
    free(y);
}

static void test_softmax(void **state)
{
    (void)state;
    srand(7);
    for (int trial = 0; trial < 200; trial++) {
        int n = 1 + rand() % 70, valid = 1 + rand() % n;
        float scale = trial % 3 == 0 ? 80.0f : trial % 3 == 1 ? 5.0f : 0.01f;
        float p[70], q[70];
        for (int i = 0; i < n; i++)
            p[i] = q[i] = scale * ((float)rand() / RAND_MAX - 0.5f) + 1000.0f * (i >= valid);
        s_softmax(p, n, valid);
        double m = -INFINITY, s = 0;
        for (int i = 0; i < valid; i++)
            m = fmax(m, q[i]);
        for (int i = 0; i < valid; i++)
            s += exp((double)q[i] - m);
        for (int i = 0; i < valid; i++) {
            double want = exp((double)q[i] - m) / s;
            /* e^(q - m) with q - m rounded once in float: relative error <= |q - m| 2^-24 + expf's 3e-7 */
            double tol = want * (fabs((double)q[i] - m) * 6e-8 + 1e-6) + 1e-30;
            if (!(fabs(p[i] - want) <= tol))
                fail_msg("softmax row %d [%d] = %.9g, want %.9g", trial, i, p[i], want);
        }
        for (int i = valid; i < n; i++)
            assert_true(p[i] == 0.0f); /* padding: exactly 0 */
    }
}

static void test_layernorm(void **state)
{
    (void)state;
    int n = 384;
    float x[384], y[384], g[384], b[384];
    for (int off = 0; off <= 100; off += 100) {
        srand(3);
        for (int i = 0; i < n; i++) {
            x[i] = off + 2.0f * ((float)rand() / RAND_MAX - 0.5f);
            g[i] = 1.0f + 0.1f * i / n;
            b[i] = 0.01f * (i % 7);
        }
        double mean = 0, var = 0;
        for (int i = 0; i < n; i++)
            mean += x[i];
        mean /= n;
        for (int i = 0; i < n; i++)
            var += (x[i] - mean) * (x[i] - mean);
        var /= n;
        s_layernorm(y, x, g, b, n, 1e-12f);
        /* Two passes in float: the mean is off by ~|mean| * 2^-24 * sqrt(n / 16), the output by that over the
         * standard deviation (~0.58): 2e-5 at an offset of 100, where one pass (E[x^2] - mean^2) is off by
         * ~3e-4. */
        double tol = off ? 2e-5 : 1e-6;
        for (int i = 0; i < n; i++) {
            double want = (x[i] - mean) / sqrt(var + 1e-12) * g[i] + b[i];
            if (!(fabs(y[i] - want) <= tol))
                fail_msg("offset %d: y[%d] = %.9g, want %.9g", off, i, y[i], want);
        }
        s_layernorm(x, x, g, b, n, 1e-12f); /* in place */
        assert_memory_equal(x, y, sizeof(y));
    }
    float c[20], o[20], one[20], zero[20] = {0};
    for (int i = 0; i < 20; i++)
        c[i] = 3.0f, one[i] = 1.0f;
    s_layernorm(o, c, one, zero, 20, 1e-5f); /* constant row: 0, not NaN */
    for (int i = 0; i < 20; i++)
        assert_true(o[i] == 0.0f);
}

static void test_pooling_normalize(void **state)
{
    (void)state;
    float rows[3][5] = {{1, -2, 3, 0, 5}, {4, 0, -1, 0, 5}, {-2, 8, 1, 0, 5}}, acc[5];
    float want_mean[5] = {1, 2, 1, 0, 5}, want_max[5] = {4, 8, 3, 0, 5};
    const titan_pooling modes[3] = {TITAN_POOL_MEAN, TITAN_POOL_MAX, TITAN_POOL_CLS};
    const float *want[3] = {want_mean, want_max, rows[0]};
    for (int m = 0; m < 3; m++) {
        titan_pool_begin(acc, 5, modes[m]);
        for (int k = 0; k < 3; k++)
            titan_pool_add(acc, rows[k], 5, modes[m], k);
        titan_pool_finish(acc, 5, modes[m], 3);
        for (int i = 0; i < 5; i++)
            assert_true(fabsf(acc[i] - want[m][i]) <= 1e-6f);
    }
    float allneg[2][3] = {{-5, -1, -3}, {-4, -2, -9}};
    titan_pool_begin(acc, 3, TITAN_POOL_MAX);
    for (int k = 0; k < 2; k++)
        titan_pool_add(acc, allneg[k], 3, TITAN_POOL_MAX, k);
    assert_true(acc[0] == -4 && acc[1] == -1 && acc[2] == -3);

    float v[37];
    double s = 0;
    for (int i = 0; i < 37; i++)
        v[i] = (float)(i - 18) * 0.37f, s += (double)v[i] * v[i];
    float v0 = v[0];
    s_normalize(v, 37);
    double nn = 0;
    for (int i = 0; i < 37; i++)
        nn += (double)v[i] * v[i];
    assert_true(fabs(sqrt(nn) - 1.0) <= 1e-6);
    assert_true(fabs(v[0] - v0 / sqrt(s)) <= 1e-7);
    float z[19] = {0};
    s_normalize(z, 19); /* a zero vector stays 0 (max(||x||, 1e-12)), not NaN */
    for (int i = 0; i < 19; i++)
        assert_true(z[i] == 0.0f);
    float tiny[2] = {3e-13f, 4e-13f}; /* norm 5e-13 < 1e-12: divided by 1e-12 */
    s_normalize(tiny, 2);
    assert_true(fabsf(tiny[0] - 0.3f) <= 1e-6f && fabsf(tiny[1] - 0.4f) <= 1e-6f);
}

static void test_row_helpers(void **state)
{
    (void)state;
    float y[21], bias[21], res[21];
    for (int i = 0; i < 21; i++)
        y[i] = (float)i, bias[i] = 0.5f, res[i] = -1.0f;
    titan_bias_residual_row(y, bias, res, 21);
    for (int i = 0; i < 21; i++)
        assert_true(y[i] == i - 0.5f);
    for (int i = 0; i < 21; i++)
        y[i] = (float)(i - 10) / 4;
    titan_bias_tanh_row(y, bias, 21);
    for (int i = 0; i < 21; i++)
        assert_true(fabs(y[i] - tanh((i - 10) / 4.0 + 0.5)) <= 5e-7);
    for (int i = 0; i < 21; i++)
        y[i] = (float)(i - 10) / 4;
    titan_bias_act_row(y, bias, 21, TITAN_BERT_GELU);
    for (int i = 0; i < 21; i++)
        assert_true(fabs(y[i] - s_gelu((i - 10) / 4.0 + 0.5)) <= 1e-6);
    for (int i = 0; i < 21; i++)
        y[i] = (float)(i - 10) / 4;
    titan_bias_act_row(y, bias, 21, TITAN_BERT_GELU_TANH);
    for (int i = 0; i < 21; i++)
        assert_true(fabs(y[i] - s_gelu_tanh((i - 10) / 4.0 + 0.5)) <= 1e-6);
    for (int i = 0; i < 21; i++)
        y[i] = (float)(i - 10) / 4;
    titan_bias_act_row(y, bias, 21, TITAN_BERT_RELU);
    for (int i = 0; i < 21; i++)
        assert_true(y[i] == fmaxf((i - 10) / 4.0f + 0.5f, 0.0f));
    assert_true(titan_act(TITAN_BERT_RELU, -1.0f) == 0.0f && titan_act(TITAN_BERT_GELU, 0.0f) == 0.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp),         cmocka_unit_test(test_erf_tanh),
        cmocka_unit_test(test_activations), cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_layernorm),   cmocka_unit_test(test_pooling_normalize),
        cmocka_unit_test(test_row_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
