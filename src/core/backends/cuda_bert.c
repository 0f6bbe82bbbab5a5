/* cuda_bert.c - the BERT encoder's forward pass on the CUDA backend (backend.h's bert_forward and bert_release),
 * the same computation as the CPU's (encoder/bert_cpu.c): the dense layers and attention products with cuBLAS,
 * the element-wise work with cuda_bert.cu's kernels (whose math is encoder/bert_math.h's, shared with the CPU).
 * Only runtime and cuBLAS calls that CUDA 11.4 has (cublasSgemm, cublasSgemmStridedBatched; no stream-ordered
 * allocation): the module is also built with CUDA 11.x for sm_52 (-Dcuda-arch=52).
 *
 * Weights: on a model's first call, all its weights go to the device as one block from the backend's pool (Q, K and
 * V side by side, so that one GEMM makes Q|K|V; the classifier's bias stays on the host), and stay there, keyed by
 * the model's pointer, until bert_release. Two executors that both find none upload one each; the second to finish
 * keeps the first's and gives its own back. Nothing is allocated, freed or waited for under the backend's lock.
 *
 * A call: the inputs are checked as the CPU forward pass checks them (same codes and messages), sorted by length
 * and cut into batches of whole sequences padded to the batch's longest (at most S_CHUNK_TOKENS padded tokens and
 * S_WORKSPACE_CAP bytes of workspace, at least one sequence). One workspace block from the pool holds the largest
 * batch's: per token the hidden state, Q|K|V, the attention context, a dense output and the FFN's intermediate
 * ((6 H + F) floats), per sequence its heads' scores (heads L^2 floats) and its pooled row or logits, and the
 * token ids, types and lengths. Per batch: ids in through the executor's staging buffers, everything on the
 * executor's first stream and its cuBLAS handle, the pooled rows (or logits) back. Padding keys are masked in the
 * softmax (they get exactly 0, as on the CPU where they do not exist), and padding rows are never pooled. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_bert.h"
#include "cuda_internal.h"

/* Padded tokens per batch, and the bytes of a batch's workspace, at most (unless one sequence needs more). */
#define S_CHUNK_TOKENS 4096
#define S_WORKSPACE_CAP ((uint64_t)256 << 20)
/* Each weight starts at a multiple of this many floats (256 bytes: cuBLAS's and the kernels' loads align). */
#define S_ALIGN_FLOATS 64

typedef struct {
    const float *qkv_w, *qkv_b, *ao_w, *ao_b, *ln1_g, *ln1_b, *i_w, *i_b, *o_w, *o_b, *ln2_g, *ln2_b;
} s_layer;

struct titan_cuda_bert_dev {
    const titan_bert *m;
    void *block; /* the pool's block holding every weight */
    size_t bytes;
    const float *word, *pos, *type, *emb_g, *emb_b, *pool_w, *pool_b, *cls_w;
    s_layer *layer;
    int refs;      /* calls using it now */
    bool released; /* bert_release came: the last call frees it */
    titan_cuda_bert_dev *next;
};

/* ---- the inputs: the CPU forward pass's checks, codes and messages (bert_cpu.c) ---- */

/* ---- the weights on the device ---- */

/* The layout of the weights' block: place() returns a piece's offset in floats and records what goes there. */
typedef struct {
    const float *host;
    size_t off, count;
} s_piece;

typedef struct {
    s_piece *v;
    size_t n, cap, total; /* total: floats so far */
} s_layout;

static size_t s_place(s_layout *L, const float *host, size_t count, bool align)
{
    if (align) L->total = (L->total + S_ALIGN_FLOATS - 1) / S_ALIGN_FLOATS * S_ALIGN_FLOATS;
    size_t off = L->total;
    if (L->n < L->cap) L->v[L->n++] = (s_piece){host, off, count};
    L->total += count;
    return off;
}

static void s_dev_free(s_cuda *c, titan_cuda_bert_dev *d)
{
    if (!d) return;
    if (d->block) titan_devpool_put(c->pool, d->block, d->bytes);
    free(d->layer);
    free(d);
}

/* Uploads m's weights into one block from the pool (through the executor's staging buffers). `extra` is what the
 * call needs besides (its workspace), for an out-of-memory reply. */
static titan_cuda_bert_dev *s_upload(s_cuda *c, s_exec *x, const titan_bert *m, uint64_t extra, titan_error *err)
{
    const titan_bert_config *cf = &m->cfg;
    size_t H = (size_t)cf->hidden, F = (size_t)cf->intermediate, NL = (size_t)cf->num_labels;
    titan_cuda_bert_dev *d = calloc(1, sizeof(*d));
    s_layout L = {.cap = 8 + 16 * (size_t)cf->layers};
    L.v = calloc(L.cap, sizeof(s_piece));
    if (d) d->layer = calloc(cf->layers > 0 ? (size_t)cf->layers : 1, sizeof(s_layer));
    if (!d || !L.v || !d->layer) {
        titan_fail(err, "too_large", "out of memory for the layout of the model's weights on the GPU");
        goto fail;
    }
    d->m = m;
    /* Offsets first (the block's address comes after its size). */
    size_t o_word = s_place(&L, m->word_emb, (size_t)cf->vocab * H, true);
    size_t o_pos = s_place(&L, m->pos_emb, (size_t)cf->max_positions * H, true);
    size_t o_type = s_place(&L, m->type_emb, (size_t)cf->type_vocab * H, true);
    size_t o_eg = s_place(&L, m->emb_ln_g, H, true), o_eb = s_place(&L, m->emb_ln_b, H, true);
    size_t (*lo)[12] = calloc(cf->layers > 0 ? (size_t)cf->layers : 1, sizeof(*lo));
    if (!lo) {
        titan_fail(err, "too_large", "out of memory for the layout of the model's weights on the GPU");
        goto fail;
    }
    for (int l = 0; l < cf->layers; l++) {
        const titan_bert_layer *w = &m->layer[l];
        lo[l][0] = s_place(&L, w->q_w, H * H, true); /* Q, K, V weights: one [3H, H] matrix */
        s_place(&L, w->k_w, H * H, false);
        s_place(&L, w->v_w, H * H, false);
        lo[l][1] = s_place(&L, w->q_b, H, true); /* and one [3H] bias */
        s_place(&L, w->k_b, H, false);
        s_place(&L, w->v_b, H, false);
        lo[l][2] = s_place(&L, w->ao_w, H * H, true);
        lo[l][3] = s_place(&L, w->ao_b, H, true);
        lo[l][4] = s_place(&L, w->ln1_g, H, true);
        lo[l][5] = s_place(&L, w->ln1_b, H, true);
        lo[l][6] = s_place(&L, w->i_w, F * H, true);
        lo[l][7] = s_place(&L, w->i_b, F, true);
        lo[l][8] = s_place(&L, w->o_w, H * F, true);
        lo[l][9] = s_place(&L, w->o_b, H, true);
        lo[l][10] = s_place(&L, w->ln2_g, H, true);
        lo[l][11] = s_place(&L, w->ln2_b, H, true);
    }
    size_t o_pw = 0, o_pb = 0, o_cw = 0;
    if (NL > 0) {
        o_pw = s_place(&L, m->pool_w, H * H, true);
        o_pb = s_place(&L, m->pool_b, H, true);
        o_cw = s_place(&L, m->cls_w, NL * H, true);
    }
    d->bytes = L.total * sizeof(float);
    void *blk = NULL;
    if (titan_cuda_i_dev_get(c, d->bytes, d->bytes + extra, &blk, err)) {
        free(lo);
        goto fail;
    }
    d->block = blk;
    float *base = blk;
    d->word = base + o_word;
    d->pos = base + o_pos;
    d->type = base + o_type;
    d->emb_g = base + o_eg;
    d->emb_b = base + o_eb;
    for (int l = 0; l < cf->layers; l++) {
        s_layer *y = &d->layer[l];
        const float **dst[12] = {&y->qkv_w, &y->qkv_b, &y->ao_w,  &y->ao_b, &y->ln1_g, &y->ln1_b,
                                 &y->i_w,   &y->i_b,   &y->o_w,   &y->o_b,  &y->ln2_g, &y->ln2_b};
        for (int j = 0; j < 12; j++) *dst[j] = base + lo[l][j];
    }
    free(lo);
    if (NL > 0) {
        d->pool_w = base + o_pw;
        d->pool_b = base + o_pb;
        d->cls_w = base + o_cw;
    }
    for (size_t i = 0; i < L.n; i++) {
        if (!L.v[i].host) {
            titan_fail(err, "internal", "the model lacks a weight the forward pass needs");
            goto fail;
        }
        if (titan_cuda_i_copy(c, x, base + L.v[i].off, L.v[i].host, L.v[i].count * sizeof(float), true, err))
            goto fail;
    }
    free(L.v);
    return d;
fail:
    free(L.v);
    s_dev_free(c, d);
    return NULL;
}

/* m's weights on the device, uploaded on first use; the caller gives them back with s_weights_put. */
static titan_cuda_bert_dev *s_weights_get(s_cuda *c, s_exec *x, const titan_bert *m, uint64_t extra,
                                          titan_error *err)
{
    pthread_mutex_lock(&c->lock);
    titan_cuda_bert_dev *d = c->berts;
    while (d && d->m != m) d = d->next;
    if (d) d->refs++;
    pthread_mutex_unlock(&c->lock);
    if (d) return d;
    titan_cuda_bert_dev *mine = s_upload(c, x, m, extra, err);
    if (!mine) return NULL;
    pthread_mutex_lock(&c->lock);
    d = c->berts;
    while (d && d->m != m) d = d->next;
    if (d) {
        d->refs++; /* another executor's upload finished first: keep one copy */
    } else {
        mine->refs = 1;
        mine->next = c->berts;
        c->berts = mine;
    }
    pthread_mutex_unlock(&c->lock);
    if (d) {
        s_dev_free(c, mine);
        return d;
    }
    return mine;
}

static void s_weights_put(s_cuda *c, titan_cuda_bert_dev *d)
{
    pthread_mutex_lock(&c->lock);
    bool last = --d->refs == 0 && d->released;
    pthread_mutex_unlock(&c->lock);
    if (last) s_dev_free(c, d);
}

void titan_cuda_bert_release(titan_backend *be, const titan_bert *m)
{
    s_cuda *c = (s_cuda *)be;
    pthread_mutex_lock(&c->lock);
    titan_cuda_bert_dev *d = NULL;
    for (titan_cuda_bert_dev **pp = &c->berts; *pp; pp = &(*pp)->next) {
        if ((*pp)->m == m) {
            d = *pp;
            *pp = d->next;
            break;
        }
    }
    bool now = d && d->refs == 0;
    if (d) d->released = true;
    pthread_mutex_unlock(&c->lock);
    if (now) s_dev_free(c, d);
}

void titan_cuda_bert_free_all(s_cuda *c)
{
    while (c->berts) {
        titan_cuda_bert_dev *d = c->berts;
        c->berts = d->next;
        s_dev_free(c, d);
    }
}

/* ---- the forward pass ---- */

typedef struct {
    s_cuda *c;
    s_exec *x;
    const titan_bert *m;
    const titan_cuda_bert_dev *d;
    int H, F, heads, dh, labels;
    float eps;
    /* the workspace (device) */
    float *hx, *qkv, *ctx, *tmp, *inter, *scores, *res;
    int32_t *ids; /* ids [cap tokens], then types [cap tokens], then lens [cap sequences] */
    const char *what;   /* the failed call, for the reply */
    cublasStatus_t st;  /* its status, when it was cuBLAS's */
    cudaError_t e;      /* or the runtime's */
} s_run;

/* Floats of a batch's workspace for nb sequences padded to L tokens. */
static uint64_t s_ws_floats(const s_run *R, uint64_t nb, uint64_t L)
{
    uint64_t T = nb * L;
    uint64_t w = R->labels > 0 ? (uint64_t)R->labels : 0;
    return T * (6 * (uint64_t)R->H + (uint64_t)R->F) + nb * (uint64_t)R->heads * L * L + nb * w + 2 * T + nb;
}

static bool s_launch(s_run *R, int kind, const titan_cuda_bk *a, const char *what)
{
    cudaError_t e = titan_cuda_bert_launch(R->x->stream[0], kind, a);
    if (e == cudaSuccess) return true;
    R->e = e;
    R->what = what;
    return false;
}

static bool s_blas(s_run *R, cublasStatus_t st, const char *what)
{
    if (st == CUBLAS_STATUS_SUCCESS) return true;
    R->st = st;
    R->what = what;
    return false;
}

/* Y[T, out] (row stride ldy) = X[T, in] (row stride ldx) W^T, W [out, in] row-major: in cuBLAS's column-major
 * view, Y^T = W X^T with W read transposed. */
static bool s_linear(s_run *R, const float *X, int T, int in, int ldx, const float *W, int out, float *Y, int ldy)
{
    const float one = 1.0f, zero = 0.0f;
    return s_blas(R, cublasSgemm(R->x->blas[0], CUBLAS_OP_T, CUBLAS_OP_N, out, T, in, &one, W, in, X, ldx, &zero, Y,
                                 ldy),
                  "cublasSgemm");
}

static bool s_layer_run(s_run *R, const s_layer *w, int nb, int L, const int32_t *lens)
{
    int H = R->H, F = R->F, T = nb * L, dh = R->dh, H3 = 3 * H;
    cublasHandle_t h = R->x->blas[0];
    const float one = 1.0f, zero = 0.0f, scale = 1.0f / sqrtf((float)dh);
    long long sq = (long long)L * H3, ss = (long long)R->heads * L * L;
    if (!s_linear(R, R->hx, T, H, H, w->qkv_w, H3, R->qkv, H3)) return false;
    titan_cuda_bk a = {.rows = T, .cols = H3, .y = R->qkv, .bias = w->qkv_b};
    if (!s_launch(R, TITAN_BK_BIAS, &a, "the Q|K|V bias kernel")) return false;
    /* S = scale Q_h K_h^T per sequence and head ([L, L] row-major is S^T column-major: K_h^T read transposed times
     * Q_h^T), softmax by rows, then ctx_h = S V_h (ctx_h^T = V_h^T S^T). Each product is batched over the heads of
     * one sequence (operands dh floats apart) or over the sequences for one head (L rows apart), whichever makes
     * fewer calls. */
    bool by_seq = nb < R->heads;
    int outer = by_seq ? nb : R->heads, count = by_seq ? R->heads : nb;
    long long s_qkv = by_seq ? dh : sq, s_sc = by_seq ? (long long)L * L : ss, s_ctx = by_seq ? dh : (long long)L * H;
    for (int o = 0; o < outer; o++) {
        size_t b = by_seq ? (size_t)o : 0, hd = by_seq ? 0 : (size_t)o;
        const float *q = R->qkv + b * L * (size_t)H3 + hd * dh, *k = q + H;
        float *sc = R->scores + b * R->heads * (size_t)L * L + hd * L * L;
        if (!s_blas(R, cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, L, L, dh, &scale, k, H3, s_qkv, q, H3,
                                                 s_qkv, &zero, sc, L, s_sc, count),
                    "cublasSgemmStridedBatched (attention scores)"))
            return false;
    }
    a = (titan_cuda_bk){.nseq = nb, .seqlen = L, .heads = R->heads, .y = R->scores, .lens = lens};
    if (!s_launch(R, TITAN_BK_SOFTMAX, &a, "the softmax kernel")) return false;
    for (int o = 0; o < outer; o++) {
        size_t b = by_seq ? (size_t)o : 0, hd = by_seq ? 0 : (size_t)o;
        const float *v = R->qkv + b * L * (size_t)H3 + 2 * (size_t)H + hd * dh;
        const float *sc = R->scores + b * R->heads * (size_t)L * L + hd * L * L;
        if (!s_blas(R, cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, dh, L, L, &one, v, H3, s_qkv, sc, L, s_sc,
                                                 &zero, R->ctx + b * L * (size_t)H + hd * dh, H, s_ctx, count),
                    "cublasSgemmStridedBatched (attention context)"))
            return false;
    }
    if (!s_linear(R, R->ctx, T, H, H, w->ao_w, H, R->tmp, H)) return false;
    a = (titan_cuda_bk){.rows = T, .cols = H, .eps = R->eps, .y = R->tmp, .z = R->hx, .bias = w->ao_b,
                        .gamma = w->ln1_g, .beta = w->ln1_b};
    if (!s_launch(R, TITAN_BK_RESIDUAL_LN, &a, "the residual LayerNorm kernel")) return false;
    if (!s_linear(R, R->hx, T, H, H, w->i_w, F, R->inter, F)) return false;
    a = (titan_cuda_bk){.rows = T, .cols = F, .mode = (int)R->m->cfg.act, .y = R->inter, .bias = w->i_b};
    if (!s_launch(R, TITAN_BK_BIAS_ACT, &a, "the activation kernel")) return false;
    if (!s_linear(R, R->inter, T, F, F, w->o_w, H, R->tmp, H)) return false;
    a = (titan_cuda_bk){.rows = T, .cols = H, .eps = R->eps, .y = R->tmp, .z = R->hx, .bias = w->o_b,
                        .gamma = w->ln2_g, .beta = w->ln2_b};
    return s_launch(R, TITAN_BK_RESIDUAL_LN, &a, "the residual LayerNorm kernel");
}

/* One batch of nb sequences (inputs idx[0..nb)) padded to L tokens: hostint holds room for its ids, types and
 * lengths, hostres for its results. Returns 0, or -1 with err. */
static int s_batch(s_run *R, const titan_bert_input *in, const size_t *idx, int nb, int L, bool normalize,
                   int32_t *hostint, float *hostres, float *out, titan_error *err)
{
    const titan_cuda_bert_dev *d = R->d;
    int H = R->H, T = nb * L;
    int32_t *hid = hostint, *htype = hostint + T, *hlen = hostint + 2 * (size_t)T;
    for (int b = 0; b < nb; b++) {
        const titan_bert_input *s = &in[idx[b]];
        hlen[b] = (int32_t)s->len;
        for (int p = 0; p < L; p++) {
            bool real = (size_t)p < s->len;
            hid[(size_t)b * L + p] = real ? s->ids[p] : 0;
            htype[(size_t)b * L + p] = real && s->type_ids ? s->type_ids[p] : 0;
        }
    }
    int32_t *did = R->ids, *dtype = R->ids + T, *dlen = R->ids + 2 * (size_t)T;
    if (titan_cuda_i_copy(R->c, R->x, did, hostint, (2 * (size_t)T + nb) * sizeof(int32_t), true, err)) return -1;
    titan_cuda_bk a = {.rows = T, .cols = H, .nseq = nb, .seqlen = L, .eps = R->eps, .y = R->hx, .gamma = d->emb_g,
                       .beta = d->emb_b, .word = d->word, .pos = d->pos, .type = d->type, .ids = did,
                       .types = dtype};
    bool ok = s_launch(R, TITAN_BK_EMBED_LN, &a, "the embedding kernel");
    for (int l = 0; ok && l < R->m->cfg.layers; l++) ok = s_layer_run(R, &d->layer[l], nb, L, dlen);
    size_t width;
    if (ok && R->labels > 0) {
        /* The pooler on each sequence's first ([CLS]) row: rows L * H apart in the padded batch. */
        const float one = 1.0f, zero = 0.0f;
        width = (size_t)R->labels;
        ok = s_blas(R, cublasSgemm(R->x->blas[0], CUBLAS_OP_T, CUBLAS_OP_N, H, nb, H, &one, d->pool_w, H, R->hx,
                                   L * H, &zero, R->tmp, H),
                    "cublasSgemm (pooler)");
        a = (titan_cuda_bk){.rows = nb, .cols = H, .y = R->tmp, .bias = d->pool_b};
        ok = ok && s_launch(R, TITAN_BK_BIAS_TANH, &a, "the pooler's tanh kernel");
        ok = ok && s_linear(R, R->tmp, nb, H, H, d->cls_w, R->labels, R->res, R->labels);
    } else if (ok) {
        width = (size_t)H;
        a = (titan_cuda_bk){.cols = H, .nseq = nb, .seqlen = L, .mode = (int)R->m->cfg.pooling, .y = R->res,
                            .x = R->hx, .lens = dlen};
        ok = s_launch(R, TITAN_BK_POOL, &a, "the pooling kernel");
        a = (titan_cuda_bk){.rows = nb, .cols = H, .y = R->res};
        if (ok && normalize) ok = s_launch(R, TITAN_BK_L2NORM, &a, "the normalisation kernel");
    }
    if (ok) {
        /* The copy back may use the executor's second stream: the first's work must be done. */
        R->e = cudaStreamSynchronize(R->x->stream[0]);
        R->what = "cudaStreamSynchronize";
        ok = R->e == cudaSuccess;
    }
    if (!ok) {
        if (R->st != CUBLAS_STATUS_SUCCESS) return titan_cuda_i_fail_blas(R->c, err, R->st, R->what, 0);
        return titan_cuda_i_fail_rt(R->c, err, R->e, R->what, 0);
    }
    if (titan_cuda_i_copy(R->c, R->x, hostres, R->res, (size_t)nb * width * sizeof(float), false, err)) return -1;
    for (int b = 0; b < nb; b++) {
        float *o = out + idx[b] * width;
        const float *r = hostres + (size_t)b * width;
        if (R->labels > 0)
            for (size_t j = 0; j < width; j++) o[j] = r[j] + R->m->cls_b[j];
        else
            memcpy(o, r, width * sizeof(float));
    }
    return 0;
}

static int s_cmp_len(const void *a, const void *b, void *arg)
{
    const titan_bert_input *in = arg;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    if (in[x].len != in[y].len) return in[x].len < in[y].len ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Where the batch starting at order[s] ends: sequences are added while the padded tokens stay within
 * S_CHUNK_TOKENS and the workspace within S_WORKSPACE_CAP; the first always goes in. */
static size_t s_batch_end(const s_run *R, const titan_bert_input *in, const size_t *order, size_t n, size_t s)
{
    size_t e = s + 1;
    while (e < n && e - s < (size_t)INT_MAX) {
        uint64_t nb = e - s + 1, L = in[order[e]].len; /* sorted: the newest is the longest */
        if (nb * L > S_CHUNK_TOKENS || s_ws_floats(R, nb, L) * sizeof(float) > S_WORKSPACE_CAP) break;
        e++;
    }
    return e;
}

int titan_cuda_bert_forward(titan_backend *be, const titan_bert *m, const titan_bert_input *in, size_t n,
                            bool normalize, float *out, titan_error *err)
{
    s_cuda *c = (s_cuda *)be;
    if (!m) return titan_fail(err, "internal", "no model");
    if (titan_bert_check(m, in, n, out, err)) return -1;
    if (titan_cuda_i_poisoned(c, err)) return -1;
    const titan_bert_config *cf = &m->cfg;
    s_run R = {.c = c,
               .m = m,
               .H = cf->hidden,
               .F = cf->intermediate,
               .heads = cf->heads,
               .dh = cf->hidden / cf->heads,
               .labels = cf->num_labels,
               .eps = (float)cf->eps};
    if (n > ((size_t)1 << 31)) return titan_fail(err, "too_large", "%zu inputs are too many for one call", n);
    size_t *order = malloc(n * sizeof(size_t));
    if (!order) return titan_fail(err, "too_large", "out of memory for the order of %zu inputs", n);
    for (size_t i = 0; i < n; i++) order[i] = i;
    qsort_r(order, n, sizeof(size_t), s_cmp_len, (void *)in);

    /* The workspace for the largest batch of each kind (most tokens, most sequences, most scores), and the host
     * buffers. Layout: per token [max_tok x (6 H + F)], scores, logits [max_seq x labels], ids and types
     * [2 x max_tok], lengths [max_seq]. */
    uint64_t max_tok = 0, max_seq = 0, max_scores = 0;
    for (size_t s = 0; s < n;) {
        size_t e = s_batch_end(&R, in, order, n, s);
        uint64_t nb = e - s, L = in[order[e - 1]].len;
        if (nb * L > max_tok) max_tok = nb * L;
        if (nb > max_seq) max_seq = nb;
        if (nb * R.heads * L * L > max_scores) max_scores = nb * R.heads * L * L;
        s = e;
    }
    uint64_t ws_floats = max_tok * (6 * (uint64_t)R.H + (uint64_t)R.F) + max_scores +
                         max_seq * (uint64_t)(R.labels > 0 ? R.labels : 0) + 2 * max_tok + max_seq;
    uint64_t ws_bytes = ws_floats * sizeof(float);
    size_t width = R.labels > 0 ? (size_t)R.labels : (size_t)R.H;
    int rc = -1;
    void *ws = NULL;
    titan_cuda_bert_dev *d = NULL;
    int32_t *hostint = malloc((2 * max_tok + max_seq) * sizeof(int32_t));
    float *hostres = malloc(max_seq * width * sizeof(float));
    if (!hostint || !hostres) {
        titan_fail(err, "too_large", "out of memory for the encoder's host buffers");
        goto out;
    }
    if (max_tok * (6 * (uint64_t)R.H + R.F) > INT_MAX || ws_bytes > SIZE_MAX) {
        titan_fail(err, "too_large", "the encoder's GPU workspace for %" PRIu64 " tokens is too large", max_tok);
        goto out;
    }
    R.x = titan_cuda_i_exec(c, err);
    if (!R.x) goto out;
    d = s_weights_get(c, R.x, m, ws_bytes, err);
    if (!d) goto out;
    R.d = d;
    if (titan_cuda_i_dev_get(c, (size_t)ws_bytes, ws_bytes + d->bytes, &ws, err)) goto out;
    float *f = ws;
    R.hx = f;
    R.qkv = R.hx + max_tok * R.H;
    R.ctx = R.qkv + max_tok * 3 * R.H;
    R.tmp = R.ctx + max_tok * R.H;
    R.inter = R.tmp + max_tok * R.H;
    R.scores = R.inter + max_tok * R.F;
    R.res = R.ctx; /* pooled rows or logits: nb * width floats, within ctx's max_tok * H */
    R.ids = (int32_t *)(f + (ws_floats - 2 * max_tok - max_seq));
    /* Logits may be wider than ctx holds (num_labels over H): they have their own floats. */
    if (R.labels > 0) R.res = R.scores + max_scores;
    for (size_t s = 0; s < n;) {
        size_t e = s_batch_end(&R, in, order, n, s);
        if (s_batch(&R, in, order + s, (int)(e - s), (int)in[order[e - 1]].len, normalize, hostint, hostres, out,
                    err))
            goto out;
        s = e;
    }
    rc = 0;
out:
    if (rc && R.x) {
        /* Leave no work of this call running on the buffers going back to the pool. */
        cudaStreamSynchronize(R.x->stream[0]);
        cudaStreamSynchronize(R.x->stream[1]);
    }
    if (ws) titan_devpool_put(c->pool, ws, (size_t)ws_bytes);
    if (d) s_weights_put(c, d);
    free(hostint);
    free(hostres);
    free(order);
    return rc;
}
