/* bert_load_check.c - loads a BERT model directory with titan_bert_load and prints a JSON summary on stdout, for
 * tests/integration/test_bert_load.py:
 *   {"config": {hidden, layers, heads, intermediate, max_positions, type_vocab, vocab, eps, act, num_labels,
 *               pooling, normalize, max_seq},
 *    "weight_bytes": N, "progress": [lines heard],
 *    "tensors": {HF name without prefix: {"count": n, "first": [up to 8 floats], "sum": float64 sum,
 *                                         "hash": "hex of sum(bits(x[i]) * (2i + 1)) mod 2^64"}}}
 * Absent optional tensors (the pooler of a bi-encoder) are left out. On an error it prints
 * {"error": message, "code": code} and exits 1.
 * Usage: bert_load_check MODEL_DIR */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "encoder/bert.h"

static void s_progress(void *ctx, const char *line)
{
    json_array_append_new((json_t *)ctx, json_string(line));
}

static void s_tensor(json_t *out, const char *name, const float *x, uint64_t n)
{
    if (!x) return;
    json_t *first = json_array();
    double sum = 0;
    uint64_t hash = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], 4);
        hash += (uint64_t)bits * (2 * i + 1);
        sum += x[i];
        if (i < 8) json_array_append_new(first, json_real(x[i]));
    }
    char h[24];
    snprintf(h, sizeof(h), "%016" PRIx64, hash);
    json_object_set_new(out, name,
                        json_pack("{s:I, s:o, s:f, s:s}", "count", (json_int_t)n, "first", first, "sum", sum, "hash", h));
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    json_t *progress = json_array();
    titan_bert *m = NULL;
    titan_error err = {0};
    if (titan_bert_load(argv[1], &m, s_progress, progress, &err) != 0) {
        json_t *e = json_pack("{s:s, s:s}", "error", err.msg, "code", err.code ? err.code : "(none)");
        if (!e) e = json_pack("{s:s}", "error", "(the message is not UTF-8)");
        json_dumpf(e, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(e);
        json_decref(progress);
        return 1;
    }
    const titan_bert_config *c = &m->cfg;
    static const char *acts[] = {"gelu", "gelu_tanh", "relu"}, *pools[] = {"mean", "cls", "max"};
    json_t *cfg = json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:s, s:i, s:s, s:b, s:i}", "hidden", c->hidden,
                            "layers", c->layers, "heads", c->heads, "intermediate", c->intermediate, "max_positions",
                            c->max_positions, "type_vocab", c->type_vocab, "vocab", c->vocab, "eps", c->eps, "act",
                            acts[c->act], "num_labels", c->num_labels, "pooling", pools[c->pooling], "normalize",
                            c->normalize, "max_seq", c->max_seq);
    json_t *t = json_object();
    uint64_t H = (uint64_t)c->hidden, I = (uint64_t)c->intermediate;
    s_tensor(t, "embeddings.word_embeddings.weight", m->word_emb, (uint64_t)c->vocab * H);
    s_tensor(t, "embeddings.position_embeddings.weight", m->pos_emb, (uint64_t)c->max_positions * H);
    s_tensor(t, "embeddings.token_type_embeddings.weight", m->type_emb, (uint64_t)c->type_vocab * H);
    s_tensor(t, "embeddings.LayerNorm.weight", m->emb_ln_g, H);
    s_tensor(t, "embeddings.LayerNorm.bias", m->emb_ln_b, H);
    for (int i = 0; i < c->layers; i++) {
        const titan_bert_layer *y = &m->layer[i];
        struct {
            const char *n;
            const float *x;
            uint64_t count;
        } w[] = {
            {"attention.self.query.weight", y->q_w, H * H},       {"attention.self.query.bias", y->q_b, H},
            {"attention.self.key.weight", y->k_w, H * H},         {"attention.self.key.bias", y->k_b, H},
            {"attention.self.value.weight", y->v_w, H * H},       {"attention.self.value.bias", y->v_b, H},
            {"attention.output.dense.weight", y->ao_w, H * H},    {"attention.output.dense.bias", y->ao_b, H},
            {"attention.output.LayerNorm.weight", y->ln1_g, H},   {"attention.output.LayerNorm.bias", y->ln1_b, H},
            {"intermediate.dense.weight", y->i_w, I * H},         {"intermediate.dense.bias", y->i_b, I},
            {"output.dense.weight", y->o_w, H * I},               {"output.dense.bias", y->o_b, H},
            {"output.LayerNorm.weight", y->ln2_g, H},             {"output.LayerNorm.bias", y->ln2_b, H},
        };
        for (size_t k = 0; k < sizeof(w) / sizeof(w[0]); k++) {
            char name[96];
            snprintf(name, sizeof(name), "encoder.layer.%d.%s", i, w[k].n);
            s_tensor(t, name, w[k].x, w[k].count);
        }
    }
    s_tensor(t, "pooler.dense.weight", m->pool_w, H * H);
    s_tensor(t, "pooler.dense.bias", m->pool_b, H);
    s_tensor(t, "classifier.weight", m->cls_w, (uint64_t)c->num_labels * H);
    s_tensor(t, "classifier.bias", m->cls_b, (uint64_t)c->num_labels);
    json_t *o = json_pack("{s:o, s:I, s:o, s:o}", "config", cfg, "weight_bytes", (json_int_t)m->weight_bytes,
                          "progress", progress, "tensors", t);
    json_dumpf(o, stdout, JSON_COMPACT);
    putchar('\n');
    json_decref(o);
    titan_bert_free(&m);
    titan_bert_free(&m); /* a second free of the NULL it left is harmless */
    return 0;
}
