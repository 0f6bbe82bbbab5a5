/* bert_cpu.c - the BERT forward pass on the CPU (OpenBLAS), for bert.h's titan_bert_forward_cpu.
 *
 * Layout: the inputs are sorted by length and taken in batches of whole sequences whose tokens are packed one
 * after another, without padding ("T tokens"): every dense layer is one GEMM over the batch's T tokens, and
 * attention runs per sequence and head over that sequence's own tokens, so padding costs nothing and masks
 * nothing (the result is what HF's additive mask gives: e^(min - max) is 0 in float32). A batch's workspace
 * holds, per token, the hidden state, Q|K|V, the attention context, a dense output and the FFN's intermediate
 * ((6 H + F) floats, F = intermediate_size), plus the attention's scratch for one head (K^T, V and 4 rows of
 * scores: ~(2 dh + 4) x longest floats); batches are cut at S_CHUNK_TOKENS tokens (and at S_WORKSPACE_CAP
 * bytes), and at least one sequence always fits. A cross-encoder and CLS pooling read only the first token's
 * final state: their last layer carries only that token past the attention. The element-wise math is
 * bert_math.h's, shared with the CUDA kernels. */
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "bert.h"
#include "hostpool.h"
#include "request.h"

/* The element-wise loops below are written to vectorise (bert_math.h: branch-free selects, lane-wise partial
 * sums), but the build's -O2 leaves loops with a remainder unvectorised and -ftrapping-math stops
 * if-conversion of the selects without AVX-512's masks; this file and the inline math it includes get -O3
 * without trapping math (nothing here reads the floating-point exception flags). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3", "no-trapping-math")
#endif
#include "bert_math.h"

/* The hot loops are compiled for AVX-512, AVX2+FMA and the baseline, chosen at load time (GNU ifunc): the
 * build targets baseline x86-64 (SSE2), where they run 2-10x slower. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define S_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define S_CLONES
#endif

/* Tokens per batch: large enough that the dense GEMMs run near the BLAS's peak, small enough that a batch's
 * activations (15 MiB at MiniLM-L6's sizes) mostly stay in the caches between the GEMMs and the element-wise
 * passes. 256, 1024 and 4096 measured alike on MiniLM-L6 at 32 x 128 tokens, within a shared machine's noise.
 */
#define S_CHUNK_TOKENS 1024
/* A batch's workspace in bytes, at most (unless one sequence alone needs more). */
#define S_WORKSPACE_CAP ((size_t)256 << 20)

typedef struct {
    const titan_bert *m;
    const titan_bert_input *in;
    int H, F, heads, dh, labels; /* hidden, intermediate (FFN), heads, head size, labels */
    float eps;
    /* the batch: sequence b is input idx[b], tokens off[b] .. off[b] + len[b] - 1 of the packed rows */
    const size_t *idx;
    size_t nseq, ntok;
    size_t *off;
    /* workspace */
    float *x;       /* [T, H] hidden state */
    float *qkv;     /* [T, 3H] Q | K | V per token */
    float *ctx;     /* [T, H] attention context */
    float *tmp;     /* [T, H] a dense layer's output */
    float *inter;   /* [T, F] */
    float *scratch; /* s_attn_scratch(longest, dh): the attention's */
    float *logits;  /* [nseq, labels] cross-encoders */
    bool
        compact; /* after a last layer run for the first tokens only: x's row b is sequence b's first token */
} s_batch;

/* Y[T, out] (row stride ldy) = X[T, in] W^T, W being [out, in] as PyTorch stores it. */
static void s_linear(const float *X, int T, int in, const float *W, int out, float *Y, int ldy)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, X, in, W, in, 0.0f, Y, ldy);
}

S_CLONES static void s_embed(const s_batch *B)
{
    const titan_bert *m = B->m;
    int H = B->H;
    for (size_t b = 0; b < B->nseq; b++) {
        const titan_bert_input *in = &B->in[B->idx[b]];
        for (size_t p = 0; p < in->len; p++) {
            float *row = B->x + (B->off[b] + p) * (size_t)H;
            const float *w = m->word_emb + (size_t)in->ids[p] * H;
            const float *pe = m->pos_emb + p * (size_t)H;
            const float *te = m->type_emb + (size_t)(in->type_ids ? in->type_ids[p] : 0) * H;
            for (int i = 0; i < H; i++)
                row[i] = w[i] + pe[i] + te[i];
            titan_layernorm_row(row, row, m->emb_ln_g, m->emb_ln_b, H, B->eps);
        }
    }
}

/* y[r, :n] += bias for each of `rows` rows of stride ld. */
S_CLONES static void s_bias_rows(float *y, size_t rows, int ld, int n, const float *bias)
{
    for (size_t r = 0; r < rows; r++) {
        float *row = y + r * (size_t)ld;
        for (int i = 0; i < n; i++)
            row[i] += bias[i];
    }
}

/* Attention, by hand rather than by cblas_sgemm: per sequence and head the products are small (L x L x dh, dh
 * = 32-64), and OpenBLAS runs each such call on all its threads, whose hand-offs cost more than the
 * arithmetic (4,608 calls for 32 x 128 tokens on MiniLM-L6: a quarter of the forward pass); this loop on one
 * thread is as fast as OpenBLAS on two. GCC's vector extension (16 floats: one AVX-512 register, two AVX2 or
 * four SSE ones) with 4 query rows at a time: scores = q (k scale)^T over a 16-key block, softmax of each
 * row, ctx = P V over a 16-wide block of the head. K is transposed and V copied into scratch first,
 * zero-padded to multiples of 16 (64-byte aligned rows): the padded keys' scores are left out of the softmax,
 * the padded columns of V are not written out. */
typedef float s_v16 __attribute__((vector_size(64)));
#define S_QROWS 4

static size_t s_round16(size_t n)
{
    return (n + 15) / 16 * 16;
}

/* Floats of attention scratch for sequences of up to L tokens and heads of dh: K^T [dh, Lp], V [Lp, dp],
 * scores [S_QROWS, Lp], all multiples of 16 (aligned rows when the scratch is). */
static size_t s_attn_scratch(size_t L, int dh)
{
    return (size_t)dh * s_round16(L) + s_round16(L) * s_round16((size_t)dh) + S_QROWS * s_round16(L);
}

/* Query rows 0 .. nq-1 (stride ldq) of one head against its L keys and values (stride ld). */
S_CLONES static void s_attend_head(const float *q, int ldq, int nq, const float *k, const float *v, int ld,
                                   int L, int dh, float scale, float *ctx, int ldc, float *restrict kt,
                                   float *restrict vc, float *restrict s)
{
    int Lp = (int)s_round16((size_t)L), dp = (int)s_round16((size_t)dh);
    for (int d = 0; d < dh; d++) {
        float *kr = kt + (size_t)d * Lp;
        for (int j = 0; j < L; j++)
            kr[j] = k[(size_t)j * ld + d] * scale;
        for (int j = L; j < Lp; j++)
            kr[j] = 0.0f;
    }
    for (int j = 0; j < L; j++) {
        float *vr = vc + (size_t)j * dp;
        memcpy(vr, v + (size_t)j * ld, (size_t)dh * sizeof(float));
        for (int d = dh; d < dp; d++)
            vr[d] = 0.0f;
    }
    for (int i0 = 0; i0 < nq; i0 += S_QROWS) {
        int nr = nq - i0 < S_QROWS ? nq - i0 : S_QROWS;
        const float *q0 = q + (size_t)i0 * ldq; /* rows past nq repeat row i0 (results unused) */
        const float *q1 = q0 + (nr > 1 ? ldq : 0), *q2 = q0 + (nr > 2 ? 2 * ldq : 0),
                    *q3 = q0 + (nr > 3 ? 3 * ldq : 0);
        float *s0 = s, *s1 = s + Lp, *s2 = s + 2 * (size_t)Lp, *s3 = s + 3 * (size_t)Lp;
        for (int j0 = 0; j0 < Lp; j0 += 16) {
            s_v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int d = 0; d < dh; d++) {
                s_v16 kv = *(const s_v16 *)(kt + (size_t)d * Lp + j0);
                a0 += q0[d] * kv;
                a1 += q1[d] * kv;
                a2 += q2[d] * kv;
                a3 += q3[d] * kv;
            }
            *(s_v16 *)(s0 + j0) = a0;
            *(s_v16 *)(s1 + j0) = a1;
            *(s_v16 *)(s2 + j0) = a2;
            *(s_v16 *)(s3 + j0) = a3;
        }
        for (int r = 0; r < S_QROWS; r++)
            titan_softmax_row(s + (size_t)r * Lp, L, L);
        for (int d0 = 0; d0 < dp; d0 += 16) {
            s_v16 acc[S_QROWS] = {{0}};
            for (int j = 0; j < L; j++) {
                s_v16 vv = *(const s_v16 *)(vc + (size_t)j * dp + d0);
                acc[0] += s0[j] * vv;
                acc[1] += s1[j] * vv;
                acc[2] += s2[j] * vv;
                acc[3] += s3[j] * vv;
            }
            int w = dh - d0 < 16 ? dh - d0 : 16;
            for (int r = 0; r < nr; r++)
                memcpy(ctx + (size_t)(i0 + r) * ldc + d0, &acc[r], (size_t)w * sizeof(float));
        }
    }
}

/* Q, K and V read in place from the Q|K|V rows (stride 3H), each head's context written in place (stride H).
 * first_only: only each sequence's first token is a query, its Q in row b of tmp, its context into row b of
 * ctx. */
static void s_attention(const s_batch *B, bool first_only)
{
    int H = B->H, dh = B->dh, ld = 3 * H;
    float scale = 1.0f / sqrtf((float)dh);
    for (size_t b = 0; b < B->nseq; b++) {
        int L = (int)B->in[B->idx[b]].len;
        const float *base = B->qkv + B->off[b] * (size_t)ld;
        float *kt = B->scratch, *vc = kt + (size_t)dh * s_round16((size_t)L);
        float *s = vc + s_round16((size_t)L) * s_round16((size_t)dh);
        for (int h = 0; h < B->heads; h++) {
            const float *k = base + H + (size_t)h * dh;
            if (first_only)
                s_attend_head(B->tmp + b * (size_t)H + (size_t)h * dh, H, 1, k, k + H, ld, L, dh, scale,
                              B->ctx + b * (size_t)H + (size_t)h * dh, H, kt, vc, s);
            else
                s_attend_head(k - H, ld, L, k, k + H, ld, L, dh, scale,
                              B->ctx + B->off[b] * (size_t)H + (size_t)h * dh, H, kt, vc, s);
        }
    }
}

/* x = LayerNorm(y + bias + x) for each of the T rows. */
S_CLONES static void s_residual_ln(float *x, float *y, size_t T, int H, const float *bias, const float *g,
                                   const float *beta, float eps)
{
    for (size_t t = 0; t < T; t++) {
        float *yr = y + t * (size_t)H, *xr = x + t * (size_t)H;
        titan_bias_residual_row(yr, bias, xr, H);
        titan_layernorm_row(xr, yr, g, beta, H, eps);
    }
}

S_CLONES static void s_bias_act(float *y, size_t T, int F, const float *bias, titan_bert_act act)
{
    for (size_t t = 0; t < T; t++)
        titan_bias_act_row(y + t * (size_t)F, bias, F, act);
}

/* One layer over the batch's T tokens. first_only (the last layer of a cross-encoder or of CLS pooling): only
 * the first token of each sequence is carried past the attention, whose keys and values still come from every
 * token; x is then compacted to one row per sequence. */
static void s_layer(s_batch *B, const titan_bert_layer *L, bool first_only)
{
    int H = B->H, F = B->F, T = (int)B->ntok, R = first_only ? (int)B->nseq : T;
    s_linear(B->x, T, H, L->k_w, H, B->qkv + H, 3 * H);
    s_linear(B->x, T, H, L->v_w, H, B->qkv + 2 * H, 3 * H);
    s_bias_rows(B->qkv + H, B->ntok, 3 * H, H, L->k_b);
    s_bias_rows(B->qkv + 2 * H, B->ntok, 3 * H, H, L->v_b);
    if (first_only) {
        for (size_t b = 0; b < B->nseq;
             b++) /* off[b] >= b: rows move towards the front, none is overwritten unread */
            memmove(B->x + b * (size_t)H, B->x + B->off[b] * (size_t)H, (size_t)H * sizeof(float));
        B->compact = true;
        s_linear(B->x, R, H, L->q_w, H, B->tmp, H);
        s_bias_rows(B->tmp, B->nseq, H, H, L->q_b);
    } else {
        s_linear(B->x, T, H, L->q_w, H, B->qkv, 3 * H);
        s_bias_rows(B->qkv, B->ntok, 3 * H, H, L->q_b);
    }
    s_attention(B, first_only);
    s_linear(B->ctx, R, H, L->ao_w, H, B->tmp, H);
    s_residual_ln(B->x, B->tmp, (size_t)R, H, L->ao_b, L->ln1_g, L->ln1_b, B->eps);
    s_linear(B->x, R, H, L->i_w, F, B->inter, F);
    s_bias_act(B->inter, (size_t)R, F, L->i_b, B->m->cfg.act);
    s_linear(B->inter, R, F, L->o_w, H, B->tmp, H);
    s_residual_ln(B->x, B->tmp, (size_t)R, H, L->o_b, L->ln2_g, L->ln2_b, B->eps);
}

/* The row of x holding sequence b's token p (p = 0 only once x is compact). */
static const float *s_row(const s_batch *B, size_t b, int p)
{
    return B->x + (B->compact ? b : B->off[b] + (size_t)p) * (size_t)B->H;
}

/* Bi-encoders: each sequence's pooled row (L2-normalised when asked) into out[idx[b]]. */
S_CLONES static void s_pool(const s_batch *B, bool normalize, float *out)
{
    int H = B->H;
    titan_pooling mode = B->m->cfg.pooling;
    for (size_t b = 0; b < B->nseq; b++) {
        int L = (int)B->in[B->idx[b]].len;
        float *o = out + B->idx[b] * (size_t)H;
        titan_pool_begin(o, H, mode);
        for (int p = 0; p < (mode == TITAN_POOL_CLS ? 1 : L); p++)
            titan_pool_add(o, s_row(B, b, p), H, mode, p);
        titan_pool_finish(o, H, mode, L);
        if (normalize) titan_l2_normalize_row(o, H);
    }
}

S_CLONES static void s_bias_tanh_rows(float *y, size_t rows, int H, const float *bias)
{
    for (size_t r = 0; r < rows; r++)
        titan_bias_tanh_row(y + r * (size_t)H, bias, H);
}

/* Cross-encoders: pooler tanh(W_p h_CLS + b_p), then the classifier W_c pooled + b_c, into out[idx[b]]. */
static void s_classify(const s_batch *B, float *out)
{
    const titan_bert *m = B->m;
    int H = B->H, nl = B->labels, nb = (int)B->nseq;
    for (size_t b = 0; b < B->nseq; b++)
        memcpy(B->tmp + b * (size_t)H, s_row(B, b, 0), (size_t)H * sizeof(float));
    s_linear(B->tmp, nb, H, m->pool_w, H, B->ctx, H);
    s_bias_tanh_rows(B->ctx, B->nseq, H, m->pool_b);
    s_linear(B->ctx, nb, H, m->cls_w, nl, B->logits, nl);
    for (size_t b = 0; b < B->nseq; b++)
        for (int j = 0; j < nl; j++)
            out[B->idx[b] * (size_t)nl + j] = B->logits[b * (size_t)nl + j] + m->cls_b[j];
}

static int s_cmp_len(const void *a, const void *b, void *arg)
{
    const titan_bert_input *in = arg;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    if (in[x].len != in[y].len) return in[x].len < in[y].len ? -1 : 1;
    return x < y ? -1 : x > y;
}

int titan_bert_forward_cpu(const titan_bert *m, const titan_bert_input *in, size_t n, bool normalize,
                           float *out, titan_error *err)
{
    if (!m) return titan_fail(err, "internal", "no model");
    if (titan_bert_check(m, in, n, out, err)) return -1;
    const titan_bert_config *c = &m->cfg;
    s_batch B = {.m = m,
                 .in = in,
                 .H = c->hidden,
                 .F = c->intermediate,
                 .heads = c->heads,
                 .dh = c->hidden / c->heads,
                 .labels = c->num_labels,
                 .eps = (float)c->eps};
    size_t *order = NULL;
    float *ws = NULL;
    int rc = -1;

    /* Order by length; the longest and the total token count bound the workspace. */
    if (n > ((size_t)1 << 32)) {
        titan_fail(err, "too_large", "%zu inputs are too many for one call", n);
        goto out;
    }
    order = malloc(2 * n * sizeof(size_t));
    if (!order) {
        titan_fail(err, "too_large", "out of memory for the order of %zu inputs", n);
        goto out;
    }
    B.off = order + n;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        order[i] = i;
        total += in[i].len; /* each len <= max_positions < 2^31, n <= 2^32: no overflow */
    }
    qsort_r(order, n, sizeof(size_t), s_cmp_len, (void *)in);
    size_t longest = in[order[n - 1]].len;

    /* Tokens per batch: S_CHUNK_TOKENS, within S_WORKSPACE_CAP, never under the longest sequence. The
     * attention scratch comes first: the workspace is 64-byte aligned, and so are its rows. */
    size_t per_tok = (6 * (size_t)B.H + (size_t)B.F + (size_t)B.labels) * sizeof(float);
    size_t fixed = s_attn_scratch(longest, B.dh) * sizeof(float);
    size_t cap = S_CHUNK_TOKENS;
    if (fixed + cap * per_tok > S_WORKSPACE_CAP)
        cap = fixed < S_WORKSPACE_CAP ? (S_WORKSPACE_CAP - fixed) / per_tok : 0;
    if (cap < longest) cap = longest;
    if (cap > total) cap = total;
    if (cap > (size_t)INT_MAX || cap > (SIZE_MAX - fixed) / per_tok) {
        titan_fail(err, "too_large", "the encoder's workspace for %zu tokens is too large", cap);
        goto out;
    }
    ws = titan_hostbuf_alloc(fixed + cap * per_tok);
    if (!ws) {
        titan_fail(err, "too_large", "out of memory for the encoder's workspace (%zu MiB for %zu tokens)",
                   (fixed + cap * per_tok) >> 20, cap);
        goto out;
    }
    B.scratch = ws;
    B.x = ws + fixed / sizeof(float);
    B.qkv = B.x + cap * B.H;
    B.ctx = B.qkv + cap * 3 * B.H;
    B.tmp = B.ctx + cap * B.H;
    B.inter = B.tmp + cap * B.H;
    B.logits = B.inter + cap * B.F;

    /* Only the first token's final state is used by a cross-encoder and by CLS pooling. */
    bool first_only = B.labels > 0 || c->pooling == TITAN_POOL_CLS;
    for (size_t s = 0; s < n;) {
        /* the next batch: sequences s .. e-1 of the order, at most cap tokens */
        size_t e = s, ntok = 0;
        while (e < n && ntok + in[order[e]].len <= cap) {
            B.off[e - s] = ntok;
            ntok += in[order[e]].len;
            e++;
        }
        B.idx = order + s;
        B.nseq = e - s;
        B.ntok = ntok;
        B.compact = false;
        s_embed(&B);
        for (int l = 0; l < c->layers; l++)
            s_layer(&B, &m->layer[l], l == c->layers - 1 && first_only);
        if (B.labels > 0)
            s_classify(&B, out);
        else
            s_pool(&B, normalize, out);
        s = e;
    }
    rc = 0;
out:
    titan_hostbuf_free(ws);
    free(order);
    return rc;
}
