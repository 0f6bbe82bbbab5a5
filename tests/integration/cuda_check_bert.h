/* cuda_check_bert.h - the BERT model directories that cuda_check (the device kit's GPU check) serves from a CPU and
 * a CUDA worker: written here, in C, with seeded random weights, so that the kit needs neither Python nor a
 * download on the GPU machine. */
#ifndef TITAN_CUDA_CHECK_BERT_H
#define TITAN_CUDA_CHECK_BERT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int hidden, layers, heads, intermediate, vocab, max_positions;
} cc_bert_shape;

/* Writes a bi-encoder's directory `dir` (created): config.json (model_type bert, gelu, mean pooling by default),
 * vocab.txt of `vocab` tokens with tokenizer_config.json, and model.safetensors (F32, HF's names, no pooler) with
 * weights drawn from `seed` like tests/encoder/make_model.py's: matrices uniform with standard deviation 0.02,
 * word embeddings 0.05, LayerNorm weights 1 +- 0.1. Returns 0, or -1 with why. */
int cc_bert_write(const char *dir, const cc_bert_shape *s, uint64_t seed, char *why, size_t cap);
/* Removes what cc_bert_write wrote (the files and the directory). */
void cc_bert_remove(const char *dir);

#endif
