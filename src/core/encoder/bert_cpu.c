/* bert_cpu.c - the BERT forward pass on the CPU (OpenBLAS), for bert.h's titan_bert_forward_cpu.
 *
 * Layout: the inputs are sorted by length and taken in batches of whole sequences whose tokens are packed one
 * after another, without padding ("T tokens"): every dense layer is one GEMM over the batch's T tokens, and
 * attention runs per sequence and head over that sequence's own tokens, so padding costs nothing and masks
 * nothing (the result is what HF's additive mask gives: e^(min - max) is 0 in float32). A batch's workspace
 * holds, per token, the hidden state, Q|K|V, the attention context, a dense output and the FFN's intermediate
 * ((6 H + F) floats, F = intermediate_size), plus one head's scores (longest^2 floats); batches are cut at S_CHUNK_TOKENS tokens
 * (and at S_WORKSPACE_CAP bytes), and at least one sequence always fits. The element-wise math is
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
 * sums), but the build's -O2 leaves loops with a remainder unvectorised and -ftrapping-math stops if-conversion
 * of the selects without AVX-512's masks; this file and the inline math it includes get -O3 without trapping
 * math (nothing here reads the floating-point exception flags). */
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
 * activations stay in the caches between the GEMMs and the element-wise passes (tuned on MiniLM-L6). */
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
    float *x;      /* [T, H] hidden state */
    float *qkv;    /* [T, 3H] Q | K | V per token */
    float *ctx;    /* [T, H] attention context */
    float *tmp;    /* [T, H] a dense layer's output */
    float *inter;  /* [T, F] */
    float *scores; /* [longest, longest] one head's attention */
    float *logits; /* [nseq, labels] cross-encoders */
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
            for (int i = 0; i < H; i++) row[i] = w[i] + pe[i] + te[i];
            titan_layernorm_row(row, row, m->emb_ln_g, m->emb_ln_b, H, B->eps);
        }
    }
}

S_CLONES static void s_qkv_bias(const s_batch *B, const titan_bert_layer *L)
{
    int H = B->H;
    for (size_t t = 0; t < B->ntok; t++) {
        float *row = B->qkv + t * 3 * (size_t)H;
        for (int i = 0; i < H; i++) {
            row[i] += L->q_b[i];
            row[H + i] += L->k_b[i];
            row[2 * H + i] += L->v_b[i];
        }
    }
}

S_CLONES static void s_softmax_rows(float *s, int rows, int n)
{
    for (int r = 0; r < rows; r++) titan_softmax_row(s + (size_t)r * n, n, n);
}

/* Per sequence and head: S = Q_h K_h^T / sqrt(dh), softmax by rows, ctx_h = S V_h; Q, K and V read in place
 * from the Q|K|V rows (stride 3H), the context written in place (stride H). */
static void s_attention(const s_batch *B)
{
    int H = B->H, dh = B->dh, ld = 3 * H;
    float scale = 1.0f / sqrtf((float)dh);
    for (size_t b = 0; b < B->nseq; b++) {
        int L = (int)B->in[B->idx[b]].len;
        const float *base = B->qkv + B->off[b] * (size_t)ld;
        for (int h = 0; h < B->heads; h++) {
            const float *q = base + (size_t)h * dh, *k = q + H, *v = q + 2 * H;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, dh, scale, q, ld, k, ld, 0.0f, B->scores,
                        L);
            s_softmax_rows(B->scores, L, L);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, dh, L, 1.0f, B->scores, L, v, ld, 0.0f,
                        B->ctx + B->off[b] * (size_t)H + (size_t)h * dh, H);
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
    for (size_t t = 0; t < T; t++) titan_bias_act_row(y + t * (size_t)F, bias, F, act);
}

static void s_layer(const s_batch *B, const titan_bert_layer *L)
{
    int H = B->H, F = B->F, T = (int)B->ntok;
    s_linear(B->x, T, H, L->q_w, H, B->qkv, 3 * H);
    s_linear(B->x, T, H, L->k_w, H, B->qkv + H, 3 * H);
    s_linear(B->x, T, H, L->v_w, H, B->qkv + 2 * H, 3 * H);
    s_qkv_bias(B, L);
    s_attention(B);
    s_linear(B->ctx, T, H, L->ao_w, H, B->tmp, H);
    s_residual_ln(B->x, B->tmp, B->ntok, H, L->ao_b, L->ln1_g, L->ln1_b, B->eps);
    s_linear(B->x, T, H, L->i_w, F, B->inter, F);
    s_bias_act(B->inter, B->ntok, F, L->i_b, B->m->cfg.act);
    s_linear(B->inter, T, F, L->o_w, H, B->tmp, H);
    s_residual_ln(B->x, B->tmp, B->ntok, H, L->o_b, L->ln2_g, L->ln2_b, B->eps);
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
            titan_pool_add(o, B->x + (B->off[b] + (size_t)p) * H, H, mode, p);
        titan_pool_finish(o, H, mode, L);
        if (normalize) titan_l2_normalize_row(o, H);
    }
}

S_CLONES static void s_bias_tanh_rows(float *y, size_t rows, int H, const float *bias)
{
    for (size_t r = 0; r < rows; r++) titan_bias_tanh_row(y + r * (size_t)H, bias, H);
}

/* Cross-encoders: pooler tanh(W_p h_CLS + b_p), then the classifier W_c pooled + b_c, into out[idx[b]]. */
static void s_classify(const s_batch *B, float *out)
{
    const titan_bert *m = B->m;
    int H = B->H, nl = B->labels, nb = (int)B->nseq;
    for (size_t b = 0; b < B->nseq; b++)
        memcpy(B->tmp + b * (size_t)H, B->x + B->off[b] * (size_t)H, (size_t)H * sizeof(float));
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

static int s_check(const titan_bert *m, const titan_bert_input *in, size_t n, float *out, titan_error *err)
{
    const titan_bert_config *c = &m->cfg;
    if (c->hidden < 1 || c->heads < 1 || c->hidden % c->heads || c->layers < 0 || c->intermediate < 1 ||
        c->max_positions < 1 || c->type_vocab < 1 || c->vocab < 1 || c->num_labels < 0 ||
        (size_t)c->hidden * 3 > INT_MAX)
        return titan_fail(err, "internal", "the model's configuration is inconsistent (hidden %d, heads %d)",
                          c->hidden, c->heads);
    if (c->num_labels > 0 && (!m->pool_w || !m->pool_b || !m->cls_w || !m->cls_b))
        return titan_fail(err, "internal", "the cross-encoder has no pooler or classifier weights");
    if (n == 0 || !in)
        return titan_fail(err, "bad_request", "no inputs: give at least one tokenized text");
    if (!out) return titan_fail(err, "internal", "no output buffer");
    for (size_t i = 0; i < n; i++) {
        const titan_bert_input *x = &in[i];
        if (x->len == 0)
            return titan_fail(err, "bad_request", "input %zu is empty: each input needs at least one token", i);
        if (x->len > (size_t)c->max_positions)
            return titan_fail(err, "bad_request",
                              "input %zu has %zu tokens, over the model's %d positions: truncate it", i, x->len,
                              c->max_positions);
        if (!x->ids) return titan_fail(err, "bad_request", "input %zu has no token ids", i);
        for (size_t p = 0; p < x->len; p++) {
            if (x->ids[p] < 0 || x->ids[p] >= c->vocab)
                return titan_fail(err, "bad_request",
                                  "input %zu: token id %" PRId32 " at position %zu is outside the vocabulary "
                                  "(0..%d)",
                                  i, x->ids[p], p, c->vocab - 1);
            if (x->type_ids && (x->type_ids[p] < 0 || x->type_ids[p] >= c->type_vocab))
                return titan_fail(err, "bad_request",
                                  "input %zu: token type id %" PRId32 " at position %zu is outside 0..%d "
                                  "(the model's type_vocab_size is %d)",
                                  i, x->type_ids[p], p, c->type_vocab - 1, c->type_vocab);
        }
    }
    return 0;
}

int titan_bert_forward_cpu(const titan_bert *m, const titan_bert_input *in, size_t n, bool normalize, float *out,
                           titan_error *err)
{
    if (!m) return titan_fail(err, "internal", "no model");
    if (s_check(m, in, n, out, err)) return -1;
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

    /* Tokens per batch: S_CHUNK_TOKENS, within S_WORKSPACE_CAP, never under the longest sequence. */
    size_t per_tok = (6 * (size_t)B.H + (size_t)B.F + (size_t)B.labels) * sizeof(float);
    size_t fixed = longest * longest * sizeof(float);
    size_t cap = S_CHUNK_TOKENS;
    if (fixed + cap * per_tok > S_WORKSPACE_CAP) cap = fixed < S_WORKSPACE_CAP ? (S_WORKSPACE_CAP - fixed) / per_tok : 0;
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
    B.x = ws;
    B.qkv = B.x + cap * B.H;
    B.ctx = B.qkv + cap * 3 * B.H;
    B.tmp = B.ctx + cap * B.H;
    B.inter = B.tmp + cap * B.H;
    B.logits = B.inter + cap * B.F;
    B.scores = B.logits + cap * B.labels;

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
        s_embed(&B);
        for (int l = 0; l < c->layers; l++) s_layer(&B, &m->layer[l]);
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
