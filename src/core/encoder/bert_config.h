/* bert_config.h - the readers of a BERT model directory's small JSON files, apart from the loading so that the
 * fuzzer (fuzz/fuzz_bertconfig.c) can reach them: config.json (titan_bert_config_parse, in bert.h) and the
 * sentence-transformers files (modules.json, the Pooling module's config.json, sentence_bert_config.json).
 * Each takes the file's text (not NUL-terminated; at most TITAN_BERT_MAX_JSON bytes) and returns 0, or -1 with
 * err (code "bad_model") naming the file, the field and what titan accepts. */
#ifndef TITAN_CORE_BERT_CONFIG_H
#define TITAN_CORE_BERT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "bert.h"

#define TITAN_BERT_MAX_JSON (1u << 20) /* bytes of any of these files */
#define TITAN_BERT_MAX_PATH 200       /* bytes of a module's path in modules.json */

/* The upper bounds config.json's sizes are held to. */
#define TITAN_BERT_MAX_HIDDEN 8192
#define TITAN_BERT_MAX_LAYERS 128
#define TITAN_BERT_MAX_INTERMEDIATE 65536
#define TITAN_BERT_MAX_VOCAB (1 << 22)
#define TITAN_BERT_MAX_POSITIONS 65536
#define TITAN_BERT_MAX_TYPE_VOCAB 1024
#define TITAN_BERT_MAX_LABELS 65536

/* modules.json: a list of {"idx", "name", "path", "type"}. titan runs a Transformer at the directory's top
 * (path ""), then a Pooling module, then optionally a Normalize module; any other module (Dense, LayerNorm, ...)
 * is refused naming its type, since titan's output would differ from the model's. *pool_dir receives the
 * Pooling module's path (relative, checked: no "..", not absolute; at most TITAN_BERT_MAX_PATH bytes). */
int titan_bert_st_modules_parse(const char *json, size_t len, char pool_dir[TITAN_BERT_MAX_PATH + 1],
                                bool *normalize, titan_error *err);

/* The Pooling module's config.json: exactly one of pooling_mode_mean_tokens, pooling_mode_cls_token,
 * pooling_mode_max_tokens true (or a "pooling_mode" string "mean", "cls", "max"); any other mode (weightedmean,
 * lasttoken, mean_sqrt_len_tokens) or several at once is refused naming them. word_embedding_dimension, when
 * present, must be `hidden`. */
int titan_bert_st_pooling_parse(const char *json, size_t len, int hidden, titan_pooling *pool, titan_error *err);

/* sentence_bert_config.json: max_seq_length (an integer >= 1, or null/absent: *max_seq left as it is). */
int titan_bert_st_maxseq_parse(const char *json, size_t len, int *max_seq, titan_error *err);

#endif
