/* bert.h - BERT-family encoders from a HuggingFace model directory: the configuration, the weights (float32,
 * from model.safetensors), and the forward pass on the CPU (OpenBLAS). The tokenizer is wordpiece.h; the
 * safetensors reader is safetensors.h; the element-wise math shared with the CUDA kernels is bert_math.h.
 *
 * A model directory, as users download it:
 *   config.json            model_type "bert"; hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
 *                          hidden_act, max_position_embeddings, type_vocab_size, layer_norm_eps, vocab_size; for a
 *                          cross-encoder, architectures ["BertForSequenceClassification"] and num_labels (or id2label)
 *   model.safetensors      F32, F16 or BF16 tensors, names with or without the "bert." prefix
 *   tokenizer.json         (or vocab.txt with tokenizer_config.json)
 *   modules.json, 1_Pooling/config.json, a Normalize module   (sentence-transformers; optional)
 */
#ifndef TITAN_CORE_BERT_H
#define TITAN_CORE_BERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum { TITAN_BERT_GELU, TITAN_BERT_GELU_TANH, TITAN_BERT_RELU } titan_bert_act;
typedef enum { TITAN_POOL_MEAN, TITAN_POOL_CLS, TITAN_POOL_MAX } titan_pooling;

typedef struct {
    int hidden;          /* hidden_size */
    int layers;          /* num_hidden_layers */
    int heads;           /* num_attention_heads (divides hidden) */
    int intermediate;    /* intermediate_size */
    int max_positions;   /* max_position_embeddings */
    int type_vocab;      /* type_vocab_size */
    int vocab;           /* vocab_size */
    double eps;          /* layer_norm_eps */
    titan_bert_act act;  /* hidden_act: "gelu" (erf), "gelu_new"/"gelu_pytorch_tanh" (tanh), "relu" */
    int num_labels;      /* 0: a bi-encoder (embeddings); >= 1: a cross-encoder (BertForSequenceClassification) */
    titan_pooling pooling; /* sentence-transformers' 1_Pooling (mean when absent) */
    bool normalize;      /* a sentence-transformers Normalize module follows the pooling */
    int max_seq;         /* the longest input the model takes (sentence_bert_config.json's max_seq_length when
                          * present, else max_positions) */
} titan_bert_config;

/* One transformer layer's weights, float32. Linear weights are as stored by PyTorch: [out, in], row-major. */
typedef struct {
    const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* attention.self.{query,key,value} [H,H], [H] */
    const float *ao_w, *ao_b;                        /* attention.output.dense [H,H], [H] */
    const float *ln1_g, *ln1_b;                      /* attention.output.LayerNorm [H] */
    const float *i_w, *i_b;                          /* intermediate.dense [I,H], [I] */
    const float *o_w, *o_b;                          /* output.dense [H,I], [H] */
    const float *ln2_g, *ln2_b;                      /* output.LayerNorm [H] */
} titan_bert_layer;

typedef struct titan_bert titan_bert;
struct titan_bert {
    titan_bert_config cfg;
    const float *word_emb;  /* [vocab, H] */
    const float *pos_emb;   /* [max_positions, H] */
    const float *type_emb;  /* [type_vocab, H] */
    const float *emb_ln_g, *emb_ln_b;
    titan_bert_layer *layer; /* cfg.layers of them */
    const float *pool_w, *pool_b; /* pooler.dense [H,H], [H]; NULL when absent (needed by cross-encoders) */
    const float *cls_w, *cls_b;   /* classifier [num_labels, H], [num_labels]; cross-encoders only */
    uint64_t weight_bytes;        /* float32 bytes of all the weights */
    void *priv;                   /* the loader's: the mapping (aligned F32 weights point into it, read-only:
                                   * a model.safetensors rewritten in place while loaded may fault; replace it
                                   * by rename), converted buffers */
};

/* Parses config.json's text (`len` bytes) into *cfg (pooling mean, normalize false, max_seq = max_positions).
 * Returns 0, or -1 with err (code "bad_model") naming the field; a model_type other than "bert" is refused with
 * a message that names it and lists the supported ones. */
int titan_bert_config_parse(const char *json, size_t len, titan_bert_config *cfg, titan_error *err);

/* Loads the model directory `dir`: config.json, the sentence-transformers files when present, model.safetensors
 * (mapped; F32 tensors used in place when aligned, F16/BF16 converted to float32). Every tensor's shape is
 * checked against the config; a missing or mis-shaped tensor is an error naming it. `progress` (may be NULL)
 * hears a line now and then while a large model loads. Returns 0 and *out, or -1 with err (code "bad_model"). */
int titan_bert_load(const char *dir, titan_bert **out, void (*progress)(void *ctx, const char *line), void *ctx,
                    titan_error *err);
/* Frees a model; takes NULL; sets *p to NULL. */
void titan_bert_free(titan_bert **p);

/* One tokenized input: ids and token type ids, `len` of each (no padding); type_ids may be NULL (all 0). */
typedef struct {
    const int32_t *ids;
    const int32_t *type_ids;
    size_t len;
} titan_bert_input;

/* The checks of every forward pass (the CPU's and the CUDA module's): a consistent model, n >= 1 inputs of 1 to
 * max_positions tokens, ids < vocab, type ids < type_vocab (or type_ids NULL: all 0), an output buffer. Returns 0,
 * or -1 with err (bad_request naming the input, position and value; internal for the model). bert_check.c. */
int titan_bert_check(const titan_bert *m, const titan_bert_input *in, size_t n, const float *out, titan_error *err);

/* The forward pass on the CPU, for `n` inputs of any lengths (each 1..cfg.max_positions; ids < vocab; type ids <
 * type_vocab: checked, code "bad_request"). Inputs are sorted by length and run in batches of up to 1024 tokens
 * packed without padding (attention per sequence: no input sees another's tokens or padding; workspace per call
 * ~(6 hidden + intermediate) floats a token, at most 256 MiB unless one input needs more). A bi-encoder writes
 * n x hidden pooled embeddings (L2-normalised when `normalize`), a cross-encoder n x num_labels logits, into `out`.
 * Thread-safe on one model. Returns 0, or -1 with err (code "too_large" when memory runs out). */
int titan_bert_forward_cpu(const titan_bert *m, const titan_bert_input *in, size_t n, bool normalize, float *out,
                           titan_error *err);

#endif
