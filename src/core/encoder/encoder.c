/* encoder.c - a BERT-family encoder served: the `embed` and `rerank` requests of a batch, read, tokenized, run
 * through the forward pass together and answered one by one (encoder.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bert_math.h"
#include "encoder.h"
#include "wordpiece.h"

struct titan_encoder {
    titan_bert *model;
    titan_wordpiece *tok;
    titan_encoder_opts opts;
    titan_backend *be; /* its bert_forward runs the model; NULL: the CPU */
    int max_tokens; /* the longest input: the model's max_seq, and the tokenizer's cap when it has a smaller one */
};

void titan_encoder_opts_default(titan_encoder_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->max_batch = 32;
    o->max_batch_tokens = 16384;
    o->max_queue_delay_us = 2000;
    o->queue = 256;
    o->max_inputs = 2048;
}

static int s_opt_int(json_t *m, const char *key, int lo, int hi, int *v, char *err, size_t errcap)
{
    json_t *j = json_object_get(m, key);
    if (!j) return 0;
    if (!json_is_integer(j) || json_integer_value(j) < lo || json_integer_value(j) > hi) {
        snprintf(err, errcap, "\"%s\" must be an integer from %d to %d", key, lo, hi);
        return -1;
    }
    *v = (int)json_integer_value(j);
    return 0;
}

int titan_encoder_opts_parse(json_t *m, titan_encoder_opts *o, char *err, size_t errcap)
{
    if (s_opt_int(m, "max_batch", 1, 4096, &o->max_batch, err, errcap) ||
        s_opt_int(m, "max_batch_tokens", 1, 1 << 22, &o->max_batch_tokens, err, errcap) ||
        s_opt_int(m, "max_queue_delay_us", 0, 1000000, &o->max_queue_delay_us, err, errcap) ||
        s_opt_int(m, "queue", 1, 1 << 20, &o->queue, err, errcap) ||
        s_opt_int(m, "max_inputs", 1, 1 << 16, &o->max_inputs, err, errcap))
        return -1;
    json_t *d = json_object_get(m, "dimensions");
    if (d) {
        if (!json_is_array(d) || json_array_size(d) > TITAN_ENCODER_MAX_DIMS) {
            snprintf(err, errcap, "\"dimensions\" must be an array of at most %d sizes", TITAN_ENCODER_MAX_DIMS);
            return -1;
        }
        o->ndims = 0;
        for (size_t i = 0; i < json_array_size(d); i++) {
            json_t *v = json_array_get(d, i);
            if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65536) {
                snprintf(err, errcap, "\"dimensions\"[%zu] must be a positive size", i);
                return -1;
            }
            o->dims[o->ndims++] = (int)json_integer_value(v);
        }
    }
    return 0;
}

int titan_encoder_open(const char *dir, const titan_encoder_opts *o, titan_backend *be,
                       void (*progress)(void *ctx, const char *line), void *ctx, titan_encoder **out,
                       titan_error *err)
{
    titan_encoder *e = calloc(1, sizeof(*e));
    if (!e) return titan_fail(err, "internal", "out of memory");
    e->opts = *o;
    e->be = be && be->bert_forward ? be : NULL;
    if (titan_bert_load(dir, &e->model, progress, ctx, err) || titan_wordpiece_open(dir, &e->tok, err)) {
        titan_encoder_free(&e);
        return -1;
    }
    const titan_bert_config *c = &e->model->cfg;
    for (int i = 0; i < e->opts.ndims; i++)
        if (e->opts.dims[i] > c->hidden) {
            int d = e->opts.dims[i];
            titan_encoder_free(&e);
            return titan_fail(err, "bad_model", "%s: the manifest's \"dimensions\" has %d, more than the model's %d",
                              dir, d, c->hidden);
        }
    if (titan_wordpiece_vocab_size(e->tok) > (size_t)c->vocab) {
        size_t v = titan_wordpiece_vocab_size(e->tok);
        titan_encoder_free(&e);
        return titan_fail(err, "bad_model",
                          "%s: the tokenizer has ids up to %zu but the model's vocabulary has %d rows: the tokenizer "
                          "is not this model's",
                          dir, v - 1, c->vocab);
    }
    /* The longest input: sentence-transformers' max_seq_length when the directory has one (it overrides the
     * tokenizer's own truncation, as sentence-transformers does: all-MiniLM-L6-v2's tokenizer.json cuts at 128,
     * its sentence_bert_config.json at 256), else the tokenizer's cap, within the position table either way. */
    bool st = c->max_seq > 0 && c->max_seq < c->max_positions;
    e->max_tokens = st ? c->max_seq : c->max_positions;
    size_t tmax = titan_wordpiece_max_length(e->tok);
    if (!st && tmax > 0 && tmax < (size_t)e->max_tokens) e->max_tokens = (int)tmax;
    *out = e;
    return 0;
}

void titan_encoder_free(titan_encoder **p)
{
    titan_encoder *e = p ? *p : NULL;
    if (!e) return;
    if (e->be && e->be->bert_release && e->model) e->be->bert_release(e->be, e->model);
    titan_bert_free(&e->model);
    titan_wordpiece_free(&e->tok);
    free(e);
    *p = NULL;
}

const titan_bert_config *titan_encoder_config(const titan_encoder *e)
{
    return &e->model->cfg;
}

uint64_t titan_encoder_bytes(const titan_encoder *e)
{
    return e->model->weight_bytes;
}

const char *titan_encoder_device(const titan_encoder *e)
{
    return e->be ? e->be->info.backend : "cpu";
}

const char *titan_encoder_kind(const titan_encoder *e)
{
    return e->model->cfg.num_labels > 0 ? "rerank" : "embedding";
}

int titan_encoder_max_tokens(const titan_encoder *e)
{
    return e->max_tokens;
}

/* One sequence of the batch, owned. */
typedef struct {
    int32_t *ids, *type_ids;
    size_t len;
    size_t job; /* whose */
} s_seq;

typedef struct {
    s_seq *v;
    size_t n, cap;
} s_seqs;

/* What a request asked for, besides its sequences. */
typedef struct {
    bool rerank, normalize, binary;
    int dims;
    size_t first, count; /* its sequences: seqs.v[first .. first+count) */
    size_t top_n;
} s_ask;

static int s_push(s_seqs *s, int32_t *ids, int32_t *type_ids, size_t len, size_t job)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        s_seq *v = realloc(s->v, cap * sizeof(*v));
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (s_seq){ids, type_ids, len, job};
    return 0;
}

static void s_drop_from(s_seqs *s, size_t first)
{
    for (size_t i = first; i < s->n; i++) {
        free(s->v[i].ids);
        free(s->v[i].type_ids);
    }
    s->n = first;
}

static int s_tokenize(const titan_encoder *e, const char *a, size_t alen, const char *b, size_t blen, bool truncate,
                      const char *what, size_t job, s_seqs *seqs, titan_error *err)
{
    titan_tokens t = {0};
    titan_error te = {0};
    if (titan_wordpiece_encode(e->tok, a, alen, b, blen, (size_t)e->max_tokens, truncate, &t, &te)) {
        /* The tokenizer's "too_long" is a bad request here: the protocol's codes are fixed. */
        const char *code = te.code && strcmp(te.code, "too_long") == 0 ? "bad_request" : te.code;
        return titan_fail(err, code ? code : "bad_request", "%s: %s%s", what, te.msg,
                          te.code && strcmp(te.code, "too_long") == 0 ? " (send \"truncate\": true to cut it)" : "");
    }
    if (s_push(seqs, t.ids, t.type_ids, t.len, job)) {
        titan_tokens_free(&t);
        return titan_fail(err, "too_large", "out of memory for the batch's inputs");
    }
    return 0;
}

/* A list of token ids, taken as the model's whole input (special tokens included, as a tokenizer gives them). Over
 * the model's length, `truncate` keeps the first max_tokens - 1 ids and the last one (the final [SEP]). */
static int s_ids(const titan_encoder *e, json_t *arr, bool truncate, size_t i, size_t job, s_seqs *seqs,
                 titan_error *err)
{
    size_t n = json_array_size(arr), max = (size_t)e->max_tokens;
    if (n == 0) return titan_fail(err, "bad_request", "input[%zu] is an empty list of token ids", i);
    if (n > max && !truncate)
        return titan_fail(err, "bad_request",
                          "input[%zu] has %zu tokens, more than the model's %zu (send \"truncate\": true to cut it)", i,
                          n, max);
    size_t len = n > max ? max : n;
    int32_t *ids = malloc(len * sizeof(int32_t)), *types = calloc(len, sizeof(int32_t));
    if (!ids || !types) {
        free(ids);
        free(types);
        return titan_fail(err, "too_large", "out of memory for the batch's inputs");
    }
    int vocab = e->model->cfg.vocab;
    for (size_t k = 0; k < len; k++) {
        size_t src = (k == len - 1 && n > len) ? n - 1 : k;
        json_t *v = json_array_get(arr, src);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
            free(ids);
            free(types);
            if (!json_is_integer(v))
                return titan_fail(err, "bad_request", "input[%zu][%zu] is not a token id (an integer)", i, src);
            return titan_fail(err, "bad_request",
                              "input[%zu][%zu]: token id %lld is outside the model's vocabulary (0 to %d)", i, src,
                              (long long)json_integer_value(v), vocab - 1);
        }
        ids[k] = (int32_t)json_integer_value(v);
    }
    if (s_push(seqs, ids, types, len, job)) {
        free(ids);
        free(types);
        return titan_fail(err, "too_large", "out of memory for the batch's inputs");
    }
    return 0;
}

/* Lists of token ids that the request's JSON reader already parsed as a numeric tensor (float32: exact for ids
 * below 2^24): rank 1 is one list, rank 2 a list of equal-length lists. */
static int s_ids_tensor(const titan_encoder *e, const titan_json_span *sp, bool truncate, size_t job, s_seqs *seqs,
                        titan_error *err)
{
    const float *v = sp->data;
    size_t rows = sp->rank == 1 ? 1 : (size_t)sp->shape[0], cols = (size_t)sp->shape[sp->rank - 1];
    if (sp->rank > 2)
        return titan_fail(err, "bad_request", "\"input\" must be a list of token ids or lists of them, not %d-deep",
                          sp->rank);
    if (rows == 0 || cols == 0) return titan_fail(err, "bad_request", "\"input\" is an empty list: send at least one text");
    if (rows > (size_t)e->opts.max_inputs)
        return titan_fail(err, "too_large", "\"input\" has %zu inputs; this model takes at most %d in one request "
                          "(its manifest's max_inputs): split it", rows, e->opts.max_inputs);
    size_t max = (size_t)e->max_tokens;
    if (cols > max && !truncate)
        return titan_fail(err, "bad_request",
                          "input[0] has %zu tokens, more than the model's %zu (send \"truncate\": true to cut it)",
                          cols, max);
    size_t len = cols > max ? max : cols;
    int vocab = e->model->cfg.vocab;
    for (size_t r = 0; r < rows; r++) {
        int32_t *ids = malloc(len * sizeof(int32_t)), *types = calloc(len, sizeof(int32_t));
        if (!ids || !types || s_push(seqs, ids, types, len, job)) {
            free(ids);
            free(types);
            return titan_fail(err, "too_large", "out of memory for the batch's inputs");
        }
        for (size_t k = 0; k < len; k++) {
            size_t src = (k == len - 1 && cols > len) ? cols - 1 : k;
            float f = v[r * cols + src];
            if (!(f >= 0.0f && f < (float)vocab && f == (float)(int32_t)f))
                return titan_fail(err, "bad_request",
                                  "input[%zu][%zu]: %g is not a token id in this model's vocabulary (integers 0 to %d)",
                                  sp->rank == 1 ? (size_t)0 : r, sp->rank == 1 ? r * cols + src : src, (double)f,
                                  vocab - 1);
            ids[k] = (int32_t)f;
        }
    }
    return 0;
}

/* The top-level array member `key` of the request: its JSON reader keeps arrays out of the DOM (they stand as
 * null there) and parses numeric ones as tensors. Returns the span, or NULL when `key` is not an array. */
static const titan_json_span *s_span(const titan_request *req, const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < req->split.nspans; i++)
        if (req->split.spans[i].key_len == n && memcmp(req->split.spans[i].key, key, n) == 0)
            return &req->split.spans[i];
    return NULL;
}

/* A non-numeric array member as a DOM (its values were counted against the header's bound when it was read). */
static json_t *s_span_dom(const titan_json_span *sp, titan_error *err)
{
    json_error_t jerr;
    json_t *v = json_loadb(sp->val, sp->val_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) titan_fail(err, "bad_request", "invalid JSON in \"%.*s\": %s", (int)sp->key_len, sp->key, jerr.text);
    return v;
}

static int s_bool(json_t *hdr, const char *key, bool dflt, bool *v, titan_error *err)
{
    json_t *j = json_object_get(hdr, key);
    if (!j || json_is_null(j)) {
        *v = dflt;
        return 0;
    }
    if (!json_is_boolean(j)) return titan_fail(err, "bad_request", "\"%s\" must be true or false", key);
    *v = json_is_true(j);
    return 0;
}

/* Reads an embed request into its sequences. */
static int s_read_input(const titan_encoder *e, json_t *in, bool truncate, size_t job, s_seqs *seqs,
                        titan_error *err);

static int s_read_embed(const titan_encoder *e, titan_request *req, size_t job, s_ask *ask, s_seqs *seqs,
                        titan_error *err)
{
    json_t *hdr = req->hdr;
    const titan_bert_config *c = &e->model->cfg;
    bool truncate = false;
    if (c->num_labels > 0)
        return titan_fail(err, "unsupported",
                          "this model is a cross-encoder (%d label%s): it answers rerank, not embed; use a "
                          "bi-encoder's directory for embeddings",
                          c->num_labels, c->num_labels == 1 ? "" : "s");
    if (s_bool(hdr, "truncate", false, &truncate, err) || s_bool(hdr, "normalize", c->normalize, &ask->normalize, err) ||
        s_bool(hdr, "binary", false, &ask->binary, err))
        return -1;
    ask->dims = c->hidden;
    json_t *d = json_object_get(hdr, "dimensions");
    if (d && !json_is_null(d)) {
        if (!json_is_integer(d))
            return titan_fail(err, "bad_request", "\"dimensions\" must be an integer (the embedding's size)");
        long long want = json_integer_value(d);
        bool ok = want == c->hidden;
        for (int i = 0; i < e->opts.ndims && !ok; i++) ok = want == e->opts.dims[i];
        if (!ok) {
            char allowed[160];
            size_t off = (size_t)snprintf(allowed, sizeof(allowed), "%d", c->hidden);
            for (int i = 0; i < e->opts.ndims && off < sizeof(allowed); i++)
                off += (size_t)snprintf(allowed + off, sizeof(allowed) - off, ", %d", e->opts.dims[i]);
            return titan_fail(err, "bad_request",
                              "\"dimensions\": %lld is not a size this model gives (it gives %s; a manifest's "
                              "\"dimensions\" lists the sizes a Matryoshka-trained model may be cut to)",
                              want, allowed);
        }
        ask->dims = (int)want;
    }
    const titan_json_span *sp = s_span(req, "input");
    if (sp && sp->status == 0 && sp->data) return s_ids_tensor(e, sp, truncate, job, seqs, err);
    json_t *in = sp ? s_span_dom(sp, err) : json_incref(json_object_get(hdr, "input"));
    if (sp && !in) return -1;
    int rc = s_read_input(e, in, truncate, job, seqs, err);
    json_decref(in);
    return rc;
}

static int s_read_input(const titan_encoder *e, json_t *in, bool truncate, size_t job, s_seqs *seqs, titan_error *err)
{
    if (!in) return titan_fail(err, "bad_request", "send \"input\": a string, a list of strings, or lists of token ids");
    if (json_is_string(in))
        return s_tokenize(e, json_string_value(in), json_string_length(in), NULL, 0, truncate, "input", job, seqs, err);
    if (!json_is_array(in))
        return titan_fail(err, "bad_request", "\"input\" must be a string, a list of strings, or lists of token ids");
    size_t n = json_array_size(in);
    if (n == 0) return titan_fail(err, "bad_request", "\"input\" is an empty list: send at least one text");
    json_t *first = json_array_get(in, 0);
    if (json_is_integer(first)) return s_ids(e, in, truncate, 0, job, seqs, err); /* one list of ids */
    if ((size_t)n > (size_t)e->opts.max_inputs)
        return titan_fail(err, "too_large", "\"input\" has %zu inputs; this model takes at most %d in one request "
                          "(its manifest's max_inputs): split it", n, e->opts.max_inputs);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(in, i);
        char what[48];
        snprintf(what, sizeof(what), "input[%zu]", i);
        int rc;
        if (json_is_string(v) && json_is_string(first))
            rc = s_tokenize(e, json_string_value(v), json_string_length(v), NULL, 0, truncate, what, job, seqs, err);
        else if (json_is_array(v) && json_is_array(first))
            rc = s_ids(e, v, truncate, i, job, seqs, err);
        else
            rc = titan_fail(err, "bad_request",
                            "input[%zu]: \"input\" must be all strings or all lists of token ids, not a mix", i);
        if (rc) return -1;
    }
    return 0;
}

static int s_read_docs(const titan_encoder *e, json_t *hdr, json_t *q, json_t *docs, bool truncate, size_t job,
                       s_ask *ask, s_seqs *seqs, titan_error *err);

static int s_read_rerank(const titan_encoder *e, titan_request *req, size_t job, s_ask *ask, s_seqs *seqs,
                         titan_error *err)
{
    json_t *hdr = req->hdr;
    const titan_bert_config *c = &e->model->cfg;
    bool truncate = false;
    if (c->num_labels == 0)
        return titan_fail(err, "unsupported",
                          "this model is a bi-encoder: it answers embed, not rerank; rerank needs a cross-encoder "
                          "(a BertForSequenceClassification directory with num_labels 1)");
    if (c->num_labels != 1)
        return titan_fail(err, "unsupported",
                          "this cross-encoder has %d labels; rerank needs one score per pair (num_labels 1)",
                          c->num_labels);
    if (s_bool(hdr, "truncate", false, &truncate, err)) return -1;
    json_t *q = json_object_get(hdr, "query");
    if (!json_is_string(q)) return titan_fail(err, "bad_request", "\"query\" must be a string");
    const titan_json_span *sp = s_span(req, "documents");
    json_t *docs = sp && !(sp->status == 0 && sp->data) ? s_span_dom(sp, err) : NULL;
    if (sp && !(sp->status == 0 && sp->data) && !docs) return -1;
    int rc = s_read_docs(e, hdr, q, docs, truncate, job, ask, seqs, err);
    json_decref(docs);
    return rc;
}

static int s_read_docs(const titan_encoder *e, json_t *hdr, json_t *q, json_t *docs, bool truncate, size_t job,
                       s_ask *ask, s_seqs *seqs, titan_error *err)
{
    if (!json_is_array(docs) || json_array_size(docs) == 0)
        return titan_fail(err, "bad_request", "\"documents\" must be a non-empty list of strings");
    size_t n = json_array_size(docs);
    if (n > (size_t)e->opts.max_inputs)
        return titan_fail(err, "too_large", "\"documents\" has %zu documents; this model takes at most %d in one "
                          "request (its manifest's max_inputs): split it", n, e->opts.max_inputs);
    json_t *tn = json_object_get(hdr, "top_n");
    ask->top_n = n;
    if (tn && !json_is_null(tn)) {
        if (!json_is_integer(tn) || json_integer_value(tn) < 1)
            return titan_fail(err, "bad_request", "\"top_n\" must be a positive integer");
        if ((size_t)json_integer_value(tn) < n) ask->top_n = (size_t)json_integer_value(tn);
    }
    ask->rerank = true;
    ask->first = seqs->n;
    for (size_t i = 0; i < n; i++) {
        json_t *dj = json_array_get(docs, i);
        char what[48];
        snprintf(what, sizeof(what), "documents[%zu]", i);
        if (!json_is_string(dj)) return titan_fail(err, "bad_request", "%s must be a string", what);
        if (s_tokenize(e, json_string_value(q), json_string_length(q), json_string_value(dj), json_string_length(dj),
                       truncate, what, job, seqs, err))
            return -1;
    }
    return 0;
}

typedef struct {
    const s_seq *v;
} s_order_ctx;

static int s_by_len(const void *a, const void *b, void *arg)
{
    const s_seq *v = ((s_order_ctx *)arg)->v;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    if (v[x].len != v[y].len) return v[x].len < v[y].len ? -1 : 1;
    return x < y ? -1 : (x > y);
}

/* Runs every sequence through the model in passes of at most max_batch_tokens tokens, shortest first (so that a
 * pass holds sequences of similar lengths), into out[i * width]. A failed pass fails the jobs it held. */
static void s_forward(titan_encoder *e, s_seqs *seqs, float *out, int width, titan_encoder_job *jobs)
{
    size_t n = seqs->n;
    size_t *order = malloc(n * sizeof(size_t));
    titan_bert_input *in = malloc(n * sizeof(titan_bert_input));
    float *tmp = malloc(n * (size_t)width * sizeof(float));
    if (!order || !in || !tmp) {
        for (size_t i = 0; i < n; i++) {
            titan_encoder_job *j = &jobs[seqs->v[i].job];
            if (j->rc == 0) j->rc = titan_fail(&j->err, "too_large", "out of memory for the batch");
        }
        goto out;
    }
    for (size_t i = 0; i < n; i++) order[i] = i;
    s_order_ctx ctx = {seqs->v};
    qsort_r(order, n, sizeof(size_t), s_by_len, &ctx);
    for (size_t start = 0; start < n;) {
        size_t end = start, tokens = 0;
        while (end < n && (end == start || tokens + seqs->v[order[end]].len <= (size_t)e->opts.max_batch_tokens)) {
            tokens += seqs->v[order[end]].len;
            const s_seq *s = &seqs->v[order[end]];
            in[end - start] = (titan_bert_input){s->ids, s->type_ids, s->len};
            end++;
        }
        titan_error ferr = {0};
        int frc = e->be ? e->be->bert_forward(e->be, e->model, in, end - start, false, tmp, &ferr)
                        : titan_bert_forward_cpu(e->model, in, end - start, false, tmp, &ferr);
        if (frc == 0) {
            for (size_t k = start; k < end; k++)
                memcpy(out + order[k] * (size_t)width, tmp + (k - start) * (size_t)width, (size_t)width * sizeof(float));
        } else {
            for (size_t k = start; k < end; k++) {
                titan_encoder_job *j = &jobs[seqs->v[order[k]].job];
                if (j->rc == 0) {
                    j->rc = -1;
                    j->err = ferr;
                }
            }
        }
        start = end;
    }
out:
    free(order);
    free(in);
    free(tmp);
}

static json_t *s_usage(size_t tokens)
{
    return json_pack("{s:I, s:I}", "prompt_tokens", (json_int_t)tokens, "total_tokens", (json_int_t)tokens);
}

static int s_answer_embed(const s_ask *ask, const char *name, const float *res, int width, titan_encoder_job *j)
{
    titan_request *req = j->req;
    size_t n = ask->count, d = (size_t)ask->dims;
    uint64_t bytes = (uint64_t)n * d * sizeof(float);
    if (bytes > req->limits->max_result_bytes)
        return titan_fail(&j->err, "too_large", "the embeddings (%zu x %zu float32) are larger than the limit of %llu "
                          "bytes", n, d, (unsigned long long)req->limits->max_result_bytes);
    float *emb = malloc(bytes ? bytes : 1);
    if (!emb) return titan_fail(&j->err, "too_large", "out of memory for the embeddings");
    for (size_t i = 0; i < n; i++) {
        float *row = emb + i * d;
        memcpy(row, res + (ask->first + i) * (size_t)width, d * sizeof(float));
        if (ask->normalize) titan_l2_normalize_row(row, (int)d);
    }
    json_t *extra = json_pack("{s:s, s:I, s:o}", "model", name, "dims", (json_int_t)d, "usage", s_usage(j->tokens));
    int rc;
    if (ask->binary) {
        json_t *desc = json_pack("{s:s, s:[I,I], s:i}", "dtype", "float32", "shape", (json_int_t)n, (json_int_t)d,
                                 "frame", 1);
        if (extra && desc) json_object_set_new(extra, "embeddings", desc);
        else json_decref(desc);
        rc = extra ? titan_out_json(j->out, extra, req->id) : -ENOMEM;
        if (rc == 0) {
            j->out->data[0] = emb;
            j->out->size[0] = bytes;
            j->out->ndata = 1;
            emb = NULL;
        }
    } else {
        int64_t shape[2] = {(int64_t)n, (int64_t)d};
        titan_json_part part = {"embeddings", TITAN_DTYPE_FLOAT32, emb, shape, 2};
        rc = titan_out_json_tensors(j->out, NULL, &part, 1, extra, req->id);
    }
    free(emb);
    if (rc) return titan_fail(&j->err, "internal", "out of memory for the reply");
    return 0;
}

typedef struct {
    size_t index;
    float score;
} s_scored;

static int s_by_score(const void *a, const void *b)
{
    const s_scored *x = a, *y = b;
    /* Best first; NaN last; ties in the documents' order. */
    bool xn = isnan(x->score), yn = isnan(y->score);
    if (xn != yn) return xn ? 1 : -1;
    if (!xn && x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

static int s_answer_rerank(const s_ask *ask, const char *name, const float *res, int width, titan_encoder_job *j)
{
    size_t n = ask->count;
    s_scored *sc = malloc(n * sizeof(*sc));
    if (!sc) return titan_fail(&j->err, "too_large", "out of memory for the scores");
    for (size_t i = 0; i < n; i++) sc[i] = (s_scored){i, res[(ask->first + i) * (size_t)width]};
    qsort(sc, n, sizeof(*sc), s_by_score);
    json_t *results = json_array();
    for (size_t i = 0; i < ask->top_n && results; i++) {
        double s = sc[i].score;
        double rel = isfinite(s) ? 1.0 / (1.0 + exp(-s)) : (s > 0 ? 1.0 : s < 0 ? 0.0 : NAN);
        json_array_append_new(results, json_pack("{s:I, s:o, s:o}", "index", (json_int_t)sc[i].index, "score",
                                                 titan_json_figure(isfinite(s), s), "relevance_score",
                                                 titan_json_figure(!isnan(rel), rel)));
    }
    free(sc);
    json_t *o = results ? json_pack("{s:o, s:s, s:o}", "results", results, "model", name, "usage", s_usage(j->tokens))
                        : NULL;
    if (!o || titan_out_json(j->out, o, j->req->id)) return titan_fail(&j->err, "internal", "out of memory");
    return 0;
}

void titan_encoder_run(titan_encoder *e, const char *name, titan_encoder_job *jobs, size_t n)
{
    s_seqs seqs = {0};
    s_ask *asks = calloc(n ? n : 1, sizeof(*asks));
    for (size_t i = 0; i < n; i++) {
        jobs[i].rc = 0;
        jobs[i].err = (titan_error){0};
        jobs[i].inputs = jobs[i].tokens = 0;
        if (!asks) {
            jobs[i].rc = titan_fail(&jobs[i].err, "internal", "out of memory");
            continue;
        }
        titan_request *req = jobs[i].req;
        size_t first = seqs.n;
        int rc = strcmp(req->op, "rerank") == 0 ? s_read_rerank(e, req, i, &asks[i], &seqs, &jobs[i].err)
                                                : s_read_embed(e, req, i, &asks[i], &seqs, &jobs[i].err);
        if (rc) {
            s_drop_from(&seqs, first); /* a bad request leaves nothing in the batch */
            jobs[i].rc = -1;
            continue;
        }
        asks[i].first = first;
        asks[i].count = seqs.n - first;
        jobs[i].inputs = asks[i].count;
        for (size_t k = first; k < seqs.n; k++) jobs[i].tokens += seqs.v[k].len;
    }
    const titan_bert_config *c = &e->model->cfg;
    int width = c->num_labels > 0 ? c->num_labels : c->hidden;
    float *res = seqs.n ? malloc(seqs.n * (size_t)width * sizeof(float)) : NULL;
    if (seqs.n && !res) {
        for (size_t i = 0; i < n; i++)
            if (jobs[i].rc == 0) jobs[i].rc = titan_fail(&jobs[i].err, "too_large", "out of memory for the batch");
    } else if (seqs.n) {
        s_forward(e, &seqs, res, width, jobs);
    }
    for (size_t i = 0; i < n && asks; i++) {
        if (jobs[i].rc) continue;
        jobs[i].rc = asks[i].rerank ? s_answer_rerank(&asks[i], name, res, width, &jobs[i])
                                    : s_answer_embed(&asks[i], name, res, width, &jobs[i]);
    }
    free(res);
    s_drop_from(&seqs, 0);
    free(seqs.v);
    free(asks);
}
