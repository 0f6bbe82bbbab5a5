/* cuda_bert.h - the BERT encoder's kernels on the CUDA backend, written once for the GPU (cuda_bert.cu runs each
 * item in one thread) and for the fake CUDA runtime of the tests (tests/fake_cuda/fake_cuda.c runs the same items
 * in a loop on the CPU), so that tests without a GPU run the kernels' own code. Plain C, also C++ for nvcc.
 *
 * Every kernel takes one titan_cuda_bk by value (the fields it reads are listed with each kind) and does
 * titan_cuda_bk_items() independent items: no item reads what another writes. The math is bert_math.h's, shared
 * with the CPU forward pass (bert_cpu.c). The orchestration (batches, cuBLAS GEMMs, copies) is cuda_bert.c.
 *
 * A batch on the device is padded: nseq sequences of seqlen tokens each (the batch's longest), sequence b's real
 * tokens being the first lens[b]; rows are tokens, [nseq * seqlen, cols] row-major. */
#ifndef TITAN_CORE_CUDA_BERT_H
#define TITAN_CORE_CUDA_BERT_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "encoder/bert_math.h"

typedef enum {
    TITAN_BK_EMBED_LN,    /* row t = word[ids[t]] + pos[t % seqlen] + type[types[t]], LayerNorm(gamma, beta, eps):
                           * y [rows, cols]; items: rows */
    TITAN_BK_BIAS,        /* y[r, i] += bias[i]; items: rows * cols */
    TITAN_BK_RESIDUAL_LN, /* y[r] = y[r] + bias + z[r]; z[r] = LayerNorm(y[r]) (gamma, beta, eps); items: rows */
    TITAN_BK_BIAS_ACT,    /* y[r, i] = act(y[r, i] + bias[i]), act = mode; items: rows * cols */
    TITAN_BK_SOFTMAX,     /* scores y [nseq][heads][seqlen][seqlen]: each row's softmax over its sequence's first
                           * lens[b] keys, padding keys 0; items: nseq * heads * seqlen */
    TITAN_BK_POOL,        /* y[b, i] = pooling (mode) of x's rows b * seqlen .. + lens[b] - 1, column i;
                           * items: nseq * cols */
    TITAN_BK_L2NORM,      /* y[b] = y[b] / max(|y[b]|, 1e-12); items: rows (= nseq) */
    TITAN_BK_BIAS_TANH,   /* y[r, i] = tanh(y[r, i] + bias[i]); items: rows * cols */
    TITAN_BK_COUNT
} titan_bk_kind;

/* The kernels' device names (extern "C" in cuda_bert.cu), by kind: the fake runtime of the device kit's test
 * (fake_cudart_lib.c) recognises a launch by them. */
#define TITAN_BK_NAMES                                                                                            \
    {"titan_bk_embed_ln", "titan_bk_bias", "titan_bk_residual_ln", "titan_bk_bias_act", "titan_bk_softmax",   \
     "titan_bk_pool", "titan_bk_l2norm", "titan_bk_bias_tanh"}

typedef struct {
    int rows, cols;          /* the rows and columns of y (POOL: cols is the hidden size) */
    int nseq, seqlen, heads; /* the padded batch (EMBED_LN, SOFTMAX, POOL) */
    int mode;                /* titan_bert_act (BIAS_ACT) or titan_pooling (POOL) */
    float eps;               /* LayerNorm's */
    float *y, *z;            /* outputs (z: RESIDUAL_LN's) */
    const float *x;          /* POOL's input */
    const float *bias, *gamma, *beta;
    const float *word, *pos, *type; /* EMBED_LN's tables */
    const int32_t *ids, *types;     /* [nseq * seqlen] (EMBED_LN) */
    const int32_t *lens;            /* [nseq] real tokens per sequence (SOFTMAX, POOL) */
} titan_cuda_bk;

static inline TITAN_HD long long titan_cuda_bk_items(int kind, const titan_cuda_bk *a)
{
    switch (kind) {
    case TITAN_BK_EMBED_LN:
    case TITAN_BK_RESIDUAL_LN:
    case TITAN_BK_L2NORM:
        return a->rows;
    case TITAN_BK_BIAS:
    case TITAN_BK_BIAS_ACT:
    case TITAN_BK_BIAS_TANH:
        return (long long)a->rows * a->cols;
    case TITAN_BK_SOFTMAX:
        return (long long)a->nseq * a->heads * a->seqlen;
    case TITAN_BK_POOL:
        return (long long)a->nseq * a->cols;
    default:
        return 0;
    }
}

static inline TITAN_HD void titan_cuda_bk_embed_ln(const titan_cuda_bk *a, long long t)
{
    int H = a->cols;
    float *row = a->y + t * H;
    const float *w = a->word + (long long)a->ids[t] * H;
    const float *pe = a->pos + (long long)(t % a->seqlen) * H;
    const float *te = a->type + (long long)a->types[t] * H;
    for (int i = 0; i < H; i++) row[i] = w[i] + pe[i] + te[i];
    titan_layernorm_row(row, row, a->gamma, a->beta, H, a->eps);
}

static inline TITAN_HD void titan_cuda_bk_residual_ln(const titan_cuda_bk *a, long long r)
{
    int H = a->cols;
    float *yr = a->y + r * H, *zr = a->z + r * H;
    titan_bias_residual_row(yr, a->bias, zr, H);
    titan_layernorm_row(zr, yr, a->gamma, a->beta, H, a->eps);
}

static inline TITAN_HD void titan_cuda_bk_softmax(const titan_cuda_bk *a, long long r)
{
    int L = a->seqlen;
    long long b = r / ((long long)a->heads * L);
    int valid = a->lens[b];
    titan_softmax_row(a->y + r * L, L, valid < 1 ? 1 : valid > L ? L : valid);
}

static inline TITAN_HD void titan_cuda_bk_pool(const titan_cuda_bk *a, long long item)
{
    int H = a->cols;
    long long b = item / H;
    int i = (int)(item % H), len = a->lens[b];
    titan_pooling mode = (titan_pooling)a->mode;
    float *acc = a->y + b * H + i;
    const float *col = a->x + b * (long long)a->seqlen * H + i;
    titan_pool_begin(acc, 1, mode);
    for (int p = 0; p < (mode == TITAN_POOL_CLS ? 1 : len); p++) titan_pool_add(acc, col + (long long)p * H, 1, mode, p);
    titan_pool_finish(acc, 1, mode, len);
}

/* Item `i` of kernel `kind`. */
static inline TITAN_HD void titan_cuda_bk_item(int kind, const titan_cuda_bk *a, long long i)
{
    switch (kind) {
    case TITAN_BK_EMBED_LN:
        titan_cuda_bk_embed_ln(a, i);
        break;
    case TITAN_BK_BIAS:
        a->y[i] += a->bias[i % a->cols];
        break;
    case TITAN_BK_RESIDUAL_LN:
        titan_cuda_bk_residual_ln(a, i);
        break;
    case TITAN_BK_BIAS_ACT:
        titan_bias_act_row(a->y + i, a->bias + i % a->cols, 1, (titan_bert_act)a->mode);
        break;
    case TITAN_BK_SOFTMAX:
        titan_cuda_bk_softmax(a, i);
        break;
    case TITAN_BK_POOL:
        titan_cuda_bk_pool(a, i);
        break;
    case TITAN_BK_L2NORM:
        titan_l2_normalize_row(a->y + i * a->cols, a->cols);
        break;
    case TITAN_BK_BIAS_TANH:
        titan_bias_tanh_row(a->y + i, a->bias + i % a->cols, 1);
        break;
    default:
        break;
    }
}

#ifdef __cplusplus
extern "C" {
#endif
/* Launches kernel `kind` over its items on `stream` (cuda_bert.cu; the fake runtime's own in the tests). Returns
 * the launch's error (cudaGetLastError). */
cudaError_t titan_cuda_bert_launch(cudaStream_t stream, int kind, const titan_cuda_bk *args);
#ifdef __cplusplus
}
#endif

#endif
