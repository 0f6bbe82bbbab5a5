/* fuzz_bertconfig.c - libFuzzer target: the readers of a BERT model directory's JSON files
 * (src/core/encoder/bert_config.c) on arbitrary bytes: config.json (titan_bert_config_parse), modules.json, the
 * Pooling module's config.json and sentence_bert_config.json. An accepted config must hold the bounds
 * bert_config.h promises (sizes in range, heads dividing hidden, a known activation, labels for cross-encoders
 * only, max_seq = max_positions); an accepted modules.json a relative Pooling path without ".."; a refusal must
 * say why with code bad_model, in UTF-8. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "encoder/bert_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                                  \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "fuzz_bertconfig: check failed at line %d: %s\n", __LINE__, #cond);                     \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

static void s_refused(const titan_error *err)
{
    CHECK(err->code && strcmp(err->code, "bad_model") == 0);
    CHECK(err->msg[0] != '\0');
    json_t *s = json_string(err->msg);
    if (!s) fprintf(stderr, "fuzz_bertconfig: message is not UTF-8: %s\n", err->msg);
    CHECK(s != NULL);
    json_decref(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    titan_error err = {0};

    titan_bert_config c;
    if (titan_bert_config_parse(text, size, &c, &err) == 0) {
        CHECK(c.hidden >= 1 && c.hidden <= TITAN_BERT_MAX_HIDDEN);
        CHECK(c.layers >= 1 && c.layers <= TITAN_BERT_MAX_LAYERS);
        CHECK(c.heads >= 1 && c.hidden % c.heads == 0);
        CHECK(c.intermediate >= 1 && c.intermediate <= TITAN_BERT_MAX_INTERMEDIATE);
        CHECK(c.vocab >= 1 && c.vocab <= TITAN_BERT_MAX_VOCAB);
        CHECK(c.max_positions >= 1 && c.max_positions <= TITAN_BERT_MAX_POSITIONS);
        CHECK(c.type_vocab >= 1 && c.type_vocab <= TITAN_BERT_MAX_TYPE_VOCAB);
        CHECK(c.eps > 0 && c.eps <= 1);
        CHECK(c.act == TITAN_BERT_GELU || c.act == TITAN_BERT_GELU_TANH || c.act == TITAN_BERT_RELU);
        CHECK(c.num_labels >= 0 && c.num_labels <= TITAN_BERT_MAX_LABELS);
        CHECK(c.pooling == TITAN_POOL_MEAN && !c.normalize && c.max_seq == c.max_positions);
        /* the text really says bert */
        json_t *j = json_loadb(text, size, 0, NULL);
        CHECK(j && strcmp(json_string_value(json_object_get(j, "model_type")), "bert") == 0);
        json_decref(j);
    } else {
        s_refused(&err);
    }

    char pool_dir[TITAN_BERT_MAX_PATH + 1];
    bool normalize = true;
    memset(pool_dir, 'x', sizeof(pool_dir));
    if (titan_bert_st_modules_parse(text, size, pool_dir, &normalize, &err) == 0) {
        size_t n = strnlen(pool_dir, sizeof(pool_dir));
        CHECK(n >= 1 && n <= TITAN_BERT_MAX_PATH);
        CHECK(pool_dir[0] != '/' && !strchr(pool_dir, '\\'));
        for (size_t i = 0; i < n; i++) CHECK((unsigned char)pool_dir[i] >= 0x20);
        for (const char *s = pool_dir; *s;) {
            const char *e = strchr(s, '/');
            size_t l = e ? (size_t)(e - s) : strlen(s);
            CHECK(l > 0 && !(l == 2 && s[0] == '.' && s[1] == '.'));
            s += l + (e ? 1 : 0);
        }
    } else {
        s_refused(&err);
    }

    titan_pooling pool = (titan_pooling)-1;
    if (titan_bert_st_pooling_parse(text, size, 64, &pool, &err) == 0)
        CHECK(pool == TITAN_POOL_MEAN || pool == TITAN_POOL_CLS || pool == TITAN_POOL_MAX);
    else
        s_refused(&err);

    int max_seq = -7;
    if (titan_bert_st_maxseq_parse(text, size, &max_seq, &err) == 0)
        CHECK(max_seq == -7 || (max_seq >= 1 && max_seq <= TITAN_BERT_MAX_POSITIONS));
    else
        s_refused(&err);
    return 0;
}
