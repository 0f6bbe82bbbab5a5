/* wordpiece.h - BERT's WordPiece tokenizer, as HuggingFace's tokenizers library (0.22) runs it: added tokens
 * ([CLS], [SEP], [MASK]... wherever they appear in the text), BertNormalizer, BertPreTokenizer, greedy
 * longest-match WordPiece, truncation, and the [CLS] A [SEP] (B [SEP]) template.
 *
 * A model directory holds either
 *   tokenizer.json        HuggingFace's format: model "WordPiece"; normalizer "BertNormalizer" or null;
 *                         pre_tokenizer "BertPreTokenizer" or null; post_processor "TemplateProcessing",
 *                         "BertProcessing" or null; truncation (max_length, strategy, direction);
 * added_tokens. Padding and the decoder are ignored. Anything else is refused, naming what it is. or
 *   vocab.txt             one token a line, the id being the line's number from 0
 *   tokenizer_config.json (optional) do_lower_case, strip_accents, tokenize_chinese_chars, model_max_length,
 *                         unk_token, cls_token, sep_token, pad_token, mask_token: what transformers'
 * BertTokenizer takes, converted as transformers converts it to a fast tokenizer.
 *
 * Unicode (categories, NFD, lowercase) comes from utf8proc. Where its Unicode version differs from the
 * reference's tables, the results differ too; tests/ref/tokenizer_ref.mjs compares every code point and
 * docs/ARCHITECTURE.md ("The WordPiece tokenizer") lists the differences it found.
 *
 * A titan_wordpiece is read-only after it is opened: any number of threads may encode with it at once. */
#ifndef TITAN_CORE_WORDPIECE_H
#define TITAN_CORE_WORDPIECE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* Limits: tokenizer.json or vocab.txt (bytes), tokenizer_config.json (bytes), one input text (bytes), one
 * vocabulary entry or added token (bytes), the number of added tokens, and ids (each id <
 * TITAN_WORDPIECE_MAX_ID). */
#define TITAN_WORDPIECE_MAX_FILE (64u << 20)
#define TITAN_WORDPIECE_MAX_CONFIG (1u << 20)
#define TITAN_WORDPIECE_MAX_TEXT (1u << 20)
#define TITAN_WORDPIECE_MAX_TOKEN 1024u
#define TITAN_WORDPIECE_MAX_ADDED 65536u
#define TITAN_WORDPIECE_MAX_ID (1 << 24)

typedef struct titan_wordpiece titan_wordpiece;

/* One encoding: ids and token type ids, `len` of each, malloc'd (free with titan_tokens_free). There is no
 * padding: every token is attended to. */
typedef struct {
    int32_t *ids;
    int32_t *type_ids;
    size_t len;
} titan_tokens;

/* Opens the tokenizer of the model directory `dir`: tokenizer.json, or else vocab.txt (with
 * tokenizer_config.json when present). Returns 0 and *out, or -1 with err (code "bad_model": the file and
 * what is wrong with it). */
int titan_wordpiece_open(const char *dir, titan_wordpiece **out, titan_error *err);

/* The same from tokenizer.json's text (`len` bytes); `name` names it in errors. */
int titan_wordpiece_from_json(const char *json, size_t len, const char *name, titan_wordpiece **out,
                              titan_error *err);

/* Frees a tokenizer; takes NULL; sets *p to NULL. */
void titan_wordpiece_free(titan_wordpiece **p);

/* Encodes the text `a` (alen bytes of UTF-8), or the pair a, b when b is not NULL, with the special tokens of
 * the template. The length cap is max_len, or when max_len is 0 the tokenizer's own (tokenizer.json's
 * truncation, vocab.txt's model_max_length; none when it has none). Over the cap, `truncate` shortens the
 * input as HuggingFace does (the tokenizer's strategy and direction; longest_first from the right by
 * default); without it the call fails with code "too_long" saying how many tokens the input has and the
 * limit. Invalid UTF-8 fails with code "bad_request" naming the text and the byte offset; a text over
 * TITAN_WORDPIECE_MAX_TEXT bytes with "too_large". Returns 0 and *out (the caller frees it with
 * titan_tokens_free), or -1 with err; *out is untouched on failure. */
int titan_wordpiece_encode(const titan_wordpiece *t, const char *a, size_t alen, const char *b, size_t blen,
                           size_t max_len, bool truncate, titan_tokens *out, titan_error *err);

/* Frees what titan_wordpiece_encode gave; takes a zeroed or freed one. */
void titan_tokens_free(titan_tokens *t);

/* The id of `token` (a NUL-terminated vocabulary entry or added token), or -1. */
int32_t titan_wordpiece_id(const titan_wordpiece *t, const char *token);

/* One more than the largest id the tokenizer can produce (the rows an embedding table needs). */
size_t titan_wordpiece_vocab_size(const titan_wordpiece *t);

/* The tokenizer's own length cap (special tokens included), 0 when it has none. */
size_t titan_wordpiece_max_length(const titan_wordpiece *t);

/* For tests and diagnostics: the words that the normalizer and the pre-tokenizer make of `text`, in order,
 * each handed to `word` (not NUL-terminated; a word may hold U+0000 when clean_text is off). Added tokens are
 * not looked for. Returns 0, or -1 with err (invalid UTF-8, too large). */
int titan_wordpiece_words(const titan_wordpiece *t, const char *text, size_t len,
                          void (*word)(void *ctx, const char *w, size_t n), void *ctx, titan_error *err);

#endif
