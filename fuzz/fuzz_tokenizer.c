/* fuzz_tokenizer.c - libFuzzer target: the WordPiece tokenizer (src/core/encoder/wordpiece*.c) on arbitrary
 * bytes. byte 0     options: which of two tokenizers, pair or single, truncate or not byte 1     max_len (0:
 * none) the rest   the text (split in two at its middle for a pair) Checks: valid UTF-8 (as utf8proc reads
 * it) encodes unless too long, invalid UTF-8 fails with bad_request; ids are below the vocabulary size, type
 * ids 0 or 1, [CLS] first and [SEP] last; truncation keeps to max_len; the words are non-empty UTF-8. The
 * same bytes are also given to the loader as tokenizer.json text. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "encoder/wordpiece.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                          \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "fuzz_tokenizer: check failed at line %d: %s\n", __LINE__, #cond);               \
            abort();                                                                                         \
        }                                                                                                    \
    } while (0)

/* Two tokenizers over one small vocabulary: BERT uncased (strip accents, Chinese characters, clean text) with
 * a normalized added token, a single_word one and an lstrip/rstrip one; and a cased one without cleaning or
 * Chinese splitting, with truncation from the left (only_second). */
static const char s_vocab[] =
    "\"[PAD]\":0,\"[UNK]\":1,\"[CLS]\":2,\"[SEP]\":3,\"[MASK]\":4,\"a\":5,\"##a\":6,\"b\":7,\"##b\":8,\"ab\":"
    "9,"
    "\"##ab\":10,\"\\u00e9\":11,\"##\\u00e9\":12,\"\\u4e2d\":13,\"##\\u4e2d\":14,\"!\":15,\",\":16,\"the\":"
    "17,"
    "\"##s\":18,\"i\\u0307\":19,\"\\u03c3\":20,\"\\ud83d\\ude00\":21,\"A\":22,\"##A\":23,\"x\":24,\"##x\":25";

static const char *const s_json[2] = {
    "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,"
    "\"added_tokens\":[{\"id\":0,\"content\":\"[PAD]\",\"special\":true,\"normalized\":false},"
    "{\"id\":1,\"content\":\"[UNK]\",\"special\":true,\"normalized\":false},"
    "{\"id\":2,\"content\":\"[CLS]\",\"special\":true,\"normalized\":false},"
    "{\"id\":3,\"content\":\"[SEP]\",\"special\":true,\"normalized\":false},"
    "{\"id\":4,\"content\":\"[MASK]\",\"special\":true,\"normalized\":false},"
    "{\"id\":26,\"content\":\"NewWord\",\"special\":false,\"normalized\":true},"
    "{\"id\":27,\"content\":\"<w>\",\"special\":false,\"normalized\":false,\"single_word\":true},"
    "{\"id\":28,\"content\":\"<s>\",\"special\":true,\"normalized\":false,\"lstrip\":true,\"rstrip\":true}],"
    "\"normalizer\":{\"type\":\"BertNormalizer\",\"clean_text\":true,\"handle_chinese_chars\":true,"
    "\"strip_accents\":null,\"lowercase\":true},\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
    "\"post_processor\":{\"type\":\"BertProcessing\",\"sep\":[\"[SEP]\",3],\"cls\":[\"[CLS]\",2]},"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
    "\"max_input_chars_per_word\":12,\"vocab\":{%s}}}",
    "{\"version\":\"1.0\",\"truncation\":{\"max_length\":9,\"strategy\":\"OnlySecond\",\"direction\":"
    "\"Left\","
    "\"stride\":0},\"added_tokens\":[{\"id\":2,\"content\":\"[CLS]\",\"special\":true,\"normalized\":false},"
    "{\"id\":3,\"content\":\"[SEP]\",\"special\":true,\"normalized\":false}],"
    "\"normalizer\":{\"type\":\"BertNormalizer\",\"clean_text\":false,\"handle_chinese_chars\":false,"
    "\"strip_accents\":true,\"lowercase\":false},\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"[CLS]\","
    "\"type_id\":0}},"
    "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}}],"
    "\"pair\":[{\"SpecialToken\":{\"id\":\"[CLS]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}"
    "},"
    "{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":0}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}},"
    "{\"SpecialToken\":{\"id\":\"[SEP]\",\"type_id\":1}}],\"special_tokens\":{\"[CLS]\":{\"id\":\"[CLS]\","
    "\"ids\":[2],"
    "\"tokens\":[\"[CLS]\"]},\"[SEP]\":{\"id\":\"[SEP]\",\"ids\":[3],\"tokens\":[\"[SEP]\"]}}},"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
    "\"max_input_chars_per_word\":100,\"vocab\":{%s}}}"};

static titan_wordpiece *s_tok[2];

static void s_init(void)
{
    for (int i = 0; i < 2; i++) {
        char buf[8192];
        titan_error err = {0};
        snprintf(buf, sizeof(buf), s_json[i], s_vocab);
        if (titan_wordpiece_from_json(buf, strlen(buf), "fuzz.json", &s_tok[i], &err) != 0) {
            fprintf(stderr, "fuzz_tokenizer: the built-in tokenizer %d does not load: %s\n", i, err.msg);
            abort();
        }
    }
}

/* Valid UTF-8 as utf8proc reads it (an oracle apart from the tokenizer's own check). */
static bool s_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t c;
        utf8proc_ssize_t l = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
        if (l <= 0) return false;
        i += (size_t)l;
    }
    return true;
}

static void s_word(void *ctx, const char *w, size_t n)
{
    CHECK(n > 0);
    CHECK(s_valid((const uint8_t *)w, n));
    (*(size_t *)ctx)++;
}

static void s_encode(const titan_wordpiece *t, const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                     size_t max_len, bool truncate, bool pair)
{
    titan_tokens tk = {0};
    titan_error err = {0};
    bool valid = s_valid(a, alen) && (!pair || s_valid(b, blen));
    int rc = titan_wordpiece_encode(t, (const char *)a, alen, pair ? (const char *)b : NULL, blen, max_len,
                                    truncate, &tk, &err);
    if (!valid) {
        CHECK(rc == -1 && strcmp(err.code, "bad_request") == 0 && strstr(err.msg, "not valid UTF-8"));
        return;
    }
    if (rc != 0) {
        /* too long without truncation, a cap below the specials, or a strategy that cannot fit it */
        CHECK(strcmp(err.code, "too_long") == 0 || strcmp(err.code, "bad_request") == 0);
        CHECK(strcmp(err.code, "bad_request") != 0 || (truncate && max_len < 3));
        return;
    }
    size_t cap = max_len ? max_len : titan_wordpiece_max_length(t);
    if (cap) CHECK(tk.len <= cap);
    CHECK(tk.len >= 2);
    CHECK(tk.ids[0] == 2 && tk.ids[tk.len - 1] == 3);
    for (size_t i = 0; i < tk.len; i++) {
        CHECK(tk.ids[i] >= 0 && (size_t)tk.ids[i] < titan_wordpiece_vocab_size(t));
        CHECK(tk.type_ids[i] == 0 || (pair && tk.type_ids[i] == 1));
        if (i > 0) CHECK(tk.type_ids[i] >= tk.type_ids[i - 1]);
    }
    titan_tokens_free(&tk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s_tok[0]) s_init();
    if (size >= 2) {
        uint8_t opt = data[0];
        const titan_wordpiece *t = s_tok[opt & 1];
        bool pair = opt & 2, truncate = opt & 4;
        size_t max_len = data[1];
        const uint8_t *text = data + 2;
        size_t n = size - 2, half = n / 2;
        if (pair)
            s_encode(t, text, half, text + half, n - half, max_len, truncate, true);
        else
            s_encode(t, text, n, NULL, 0, max_len, truncate, false);
        size_t words = 0;
        titan_error err = {0};
        int rc = titan_wordpiece_words(t, (const char *)text, n, s_word, &words, &err);
        CHECK((rc == 0) == s_valid(text, n));
    }

    /* The bytes as tokenizer.json: refused with bad_model, or a tokenizer that encodes. */
    titan_wordpiece *t = NULL;
    titan_error err = {0};
    if (titan_wordpiece_from_json((const char *)data, size, "fuzz.json", &t, &err) == 0) {
        static const char text[] =
            "Hello, [CLS] W\xc3\xb6rld! \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 a\xcc\x81";
        titan_tokens tk = {0};
        if (titan_wordpiece_encode(t, text, sizeof(text) - 1, text, 5, 0, true, &tk, &err) == 0) {
            for (size_t i = 0; i < tk.len; i++)
                CHECK(tk.ids[i] >= 0 && (size_t)tk.ids[i] < titan_wordpiece_vocab_size(t));
            titan_tokens_free(&tk);
        }
        titan_wordpiece_free(&t);
    } else {
        CHECK(t == NULL && strcmp(err.code, "bad_model") == 0 && err.msg[0]);
    }
    return 0;
}
