/* bert_math.h - the element-wise math of a BERT forward pass, written once for the CPU loops (bert_cpu.c) and
 * the CUDA kernels: each function works on one value or one row, in float32, with plain arithmetic that
 * device code also has (no libm call in the hot functions, so that a loop over them vectorises on the CPU).
 *
 * Accuracy (checked against double-precision libm by tests/unit/test_bert_math.c):
 *   titan_expf     relative error <= 3e-7 (a few ulp) on [-87.33, 88.72]; 0 below (where e^x is denormal),
 *                  +inf above
 *   titan_erff     absolute error <= 4e-7 (Abramowitz & Stegun 7.1.26, 1.5e-7, plus float rounding), relative
 *                  error <= 1e-6 below 0.5
 *   titan_tanhf    absolute error <= 5e-7
 * A few float32 roundings each: test_bert_forward finds whole forward passes within ~1.5e-6 of float64. */
#ifndef TITAN_CORE_BERT_MATH_H
#define TITAN_CORE_BERT_MATH_H

#include <math.h>
#include <stdint.h>

#include "bert.h"

#ifdef __CUDACC__
#define TITAN_HD __host__ __device__
#else
#define TITAN_HD
#endif

/* Reductions over a row keep this many partial sums (one per lane, added in a fixed order at the end): the
 * compiler vectorises them without reassociating, and the result does not depend on the build's flags. */
#define TITAN_LANES 16

static inline TITAN_HD float titan_bits_float(int32_t i)
{
#ifdef __CUDA_ARCH__
    return __int_as_float(i);
#else
    union {
        int32_t i;
        float f;
    } u;
    u.i = i;
    return u.f;
#endif
}

/* e^x: x = n ln2 + r with |r| <= ln2/2 (n rounded by the 1.5 * 2^23 trick, ln2 split in two so that n ln2 is
 * exact), e^r by its Taylor polynomial to r^7/5040 (truncation < 1e-8 relative), times 2^n built in the
 * exponent bits as two factors (n runs from -126 to 128, past one factor's range). */
static inline TITAN_HD float titan_expf(float x)
{
    float xc = x > -87.33f ? x : -87.33f; /* NaN too: n stays in range (NaN is put back at the end) */
    xc = xc < 88.73f ? xc : 88.73f;
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = xc * 1.44269504088896341f + shift;
    float nf = t - shift;
    float r = xc - nf * 0.693359375f;      /* ln2's high part: 9 significant bits, so nf * it is exact */
    r = r - nf * -2.12194440054690583e-4f; /* ln2 - 0.693359375 */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t n = (int32_t)nf, n1 = n / 2;
    float y = p * titan_bits_float((int32_t)((uint32_t)(n1 + 127) << 23)) *
              titan_bits_float((int32_t)((uint32_t)(n - n1 + 127) << 23));
    y = x < -87.33f ? 0.0f : y;
    y = x > 88.73f ? INFINITY : y;
    return x == x ? y : x;
}

/* erf(x): below |x| = 0.5 its Taylor series to x^13 (truncation < 5e-10, relative accuracy kept near 0);
 * above, Abramowitz & Stegun 7.1.26, 1 - (a1 t + ... + a5 t^5) e^(-x^2) with t = 1 / (1 + p |x|) (1.5e-7).
 * Odd. Both are computed and one selected, which vectorises. */
static inline TITAN_HD float titan_erff(float x)
{
    float ax = x < 0.0f ? -x : x;
    float t = 1.0f / (1.0f + 0.3275911f * ax);
    float q = 1.061405429f;
    q = q * t - 1.453152027f;
    q = q * t + 1.421413741f;
    q = q * t - 0.284496736f;
    q = q * t + 0.254829592f;
    float far = 1.0f - q * t * titan_expf(-ax * ax);
    float x2 = ax * ax;
    float s = 1.0f / 9360.0f;
    s = s * x2 - 1.0f / 1320.0f;
    s = s * x2 + 1.0f / 216.0f;
    s = s * x2 - 1.0f / 42.0f;
    s = s * x2 + 1.0f / 10.0f;
    s = s * x2 - 1.0f / 3.0f;
    s = s * x2 + 1.0f;
    float near = 1.12837916709551257f * ax * s; /* 2 / sqrt(pi) */
    float y = ax < 0.5f ? near : far;
    return x < 0.0f ? -y : y;
}

/* tanh(x) = 1 - 2 / (e^(2x) + 1): exact limits +-1 (e^(2x) overflows to inf, or is 0), absolute error a few
 * 1e-8 near 0 where it cancels. */
static inline TITAN_HD float titan_tanhf(float x)
{
    return 1.0f - 2.0f / (titan_expf(2.0f * x) + 1.0f);
}

/* hidden_act "gelu" (HF, torch's default): x/2 (1 + erf(x / sqrt 2)). */
static inline TITAN_HD float titan_gelu_erf(float x)
{
    return 0.5f * x * (1.0f + titan_erff(x * 0.70710678118654752f));
}

/* hidden_act "gelu_new" / "gelu_pytorch_tanh": x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
static inline TITAN_HD float titan_gelu_tanh(float x)
{
    return 0.5f * x * (1.0f + titan_tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

static inline TITAN_HD float titan_relu(float x)
{
    return x > 0.0f ? x : 0.0f;
}

static inline TITAN_HD float titan_act(titan_bert_act act, float x)
{
    return act == TITAN_BERT_GELU        ? titan_gelu_erf(x)
           : act == TITAN_BERT_GELU_TANH ? titan_gelu_tanh(x)
                                         : titan_relu(x);
}

static inline TITAN_HD float titan_row_sum(const float *x, int n)
{
    float acc[TITAN_LANES] = {0};
    int i = 0;
    for (; i + TITAN_LANES <= n; i += TITAN_LANES)
        for (int j = 0; j < TITAN_LANES; j++)
            acc[j] += x[i + j];
    for (int j = 0; i < n; i++, j++)
        acc[j] += x[i];
    float s = 0.0f;
    for (int j = 0; j < TITAN_LANES; j++)
        s += acc[j];
    return s;
}

/* sum over the row of (x - c)^2 */
static inline TITAN_HD float titan_row_sqdev(const float *x, int n, float c)
{
    float acc[TITAN_LANES] = {0};
    int i = 0;
    for (; i + TITAN_LANES <= n; i += TITAN_LANES)
        for (int j = 0; j < TITAN_LANES; j++)
            acc[j] += (x[i + j] - c) * (x[i + j] - c);
    for (int j = 0; i < n; i++, j++)
        acc[j] += (x[i] - c) * (x[i] - c);
    float s = 0.0f;
    for (int j = 0; j < TITAN_LANES; j++)
        s += acc[j];
    return s;
}

static inline TITAN_HD float titan_row_max(const float *x, int n)
{
    float acc[TITAN_LANES];
    for (int j = 0; j < TITAN_LANES; j++)
        acc[j] = x[0];
    int i = 0;
    for (; i + TITAN_LANES <= n; i += TITAN_LANES)
        for (int j = 0; j < TITAN_LANES; j++)
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
    for (int j = 0; i < n; i++, j++)
        acc[j] = x[i] > acc[j] ? x[i] : acc[j];
    float m = acc[0];
    for (int j = 1; j < TITAN_LANES; j++)
        m = acc[j] > m ? acc[j] : m;
    return m;
}

/* y = (x - mean) / sqrt(var + eps) * g + b over n values, the variance biased (torch's LayerNorm), both
 * moments in float by two passes. y may be x. */
static inline TITAN_HD void titan_layernorm_row(float *y, const float *x, const float *g, const float *b,
                                                int n, float eps)
{
    float mean = titan_row_sum(x, n) / (float)n;
    float var = titan_row_sqdev(x, n, mean) / (float)n;
    float inv = 1.0f / sqrtf(var + eps);
    for (int i = 0; i < n; i++)
        y[i] = (x[i] - mean) * inv * g[i] + b[i];
}

/* y = y + bias + res over n values: a dense layer's bias and the residual before its LayerNorm. */
static inline TITAN_HD void titan_bias_residual_row(float *y, const float *bias, const float *res, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = y[i] + bias[i] + res[i];
}

/* y = act(y + bias) over n values: the intermediate dense layer's bias and activation. */
static inline TITAN_HD void titan_bias_act_row(float *y, const float *bias, int n, titan_bert_act act)
{
    if (act == TITAN_BERT_GELU)
        for (int i = 0; i < n; i++)
            y[i] = titan_gelu_erf(y[i] + bias[i]);
    else if (act == TITAN_BERT_GELU_TANH)
        for (int i = 0; i < n; i++)
            y[i] = titan_gelu_tanh(y[i] + bias[i]);
    else
        for (int i = 0; i < n; i++)
            y[i] = titan_relu(y[i] + bias[i]);
}

/* Softmax of one attention row of n scores, of which the first `valid` are real keys and the rest padding:
 * padding gets exactly 0 and takes no part in the max or the sum, as HF's additive mask of the dtype's
 * minimum gives (e^(min - max) is 0 in float32), so a real token's result does not depend on the padding.
 * valid >= 1. */
static inline TITAN_HD void titan_softmax_row(float *p, int n, int valid)
{
    float m = titan_row_max(p, valid);
    for (int i = 0; i < valid; i++)
        p[i] = titan_expf(p[i] - m);
    float inv = 1.0f / titan_row_sum(p, valid);
    for (int i = 0; i < valid; i++)
        p[i] *= inv;
    for (int i = valid; i < n; i++)
        p[i] = 0.0f;
}

/* Pooling of a sequence's real tokens (sentence-transformers' 1_Pooling): begin, add each token's row in
 * order (k = its position), finish with the count of tokens added. */
static inline TITAN_HD void titan_pool_begin(float *acc, int n, titan_pooling mode)
{
    for (int i = 0; i < n; i++)
        acc[i] = mode == TITAN_POOL_MAX ? -INFINITY : 0.0f;
}

static inline TITAN_HD void titan_pool_add(float *acc, const float *row, int n, titan_pooling mode, int k)
{
    if (mode == TITAN_POOL_MEAN)
        for (int i = 0; i < n; i++)
            acc[i] += row[i];
    else if (mode == TITAN_POOL_MAX)
        for (int i = 0; i < n; i++)
            acc[i] = row[i] > acc[i] ? row[i] : acc[i];
    else if (k == 0)
        for (int i = 0; i < n; i++)
            acc[i] = row[i];
}

static inline TITAN_HD void titan_pool_finish(float *acc, int n, titan_pooling mode, int count)
{
    if (mode != TITAN_POOL_MEAN) return;
    float inv = 1.0f / (float)(count > 0 ? count : 1);
    for (int i = 0; i < n; i++)
        acc[i] *= inv;
}

/* x / max(||x||, 1e-12), as torch.nn.functional.normalize (sentence-transformers' Normalize module). */
static inline TITAN_HD void titan_l2_normalize_row(float *x, int n)
{
    float acc[TITAN_LANES] = {0};
    int i = 0;
    for (; i + TITAN_LANES <= n; i += TITAN_LANES)
        for (int j = 0; j < TITAN_LANES; j++)
            acc[j] += x[i + j] * x[i + j];
    for (int j = 0; i < n; i++, j++)
        acc[j] += x[i] * x[i];
    float s = 0.0f;
    for (int j = 0; j < TITAN_LANES; j++)
        s += acc[j];
    float norm = sqrtf(s);
    float inv = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
    for (i = 0; i < n; i++)
        x[i] *= inv;
}

/* The cross-encoder's pooler: y = tanh(y + bias) over n values. */
static inline TITAN_HD void titan_bias_tanh_row(float *y, const float *bias, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = titan_tanhf(y[i] + bias[i]);
}

#endif
