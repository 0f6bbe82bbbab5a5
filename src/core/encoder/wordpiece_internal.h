/* wordpiece_internal.h - what wordpiece.c (encoding) and wordpiece_load.c (loading) share: the tokenizer's
 * structure, the vocabulary's hash table, the added tokens' trie, and the normalizer. Not for other files. */
#ifndef TITAN_CORE_WORDPIECE_INTERNAL_H
#define TITAN_CORE_WORDPIECE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wordpiece.h"

/* The vocabulary: open addressing over an arena of key bytes; id -1 marks an empty slot. */
typedef struct {
    uint64_t hash;
    uint32_t off, len;
    int32_t id;
} titan_wp_slot;

typedef struct {
    char *keys;
    size_t keys_len, keys_cap;
    titan_wp_slot *slots;
    size_t cap, n;  /* cap: a power of two, at least twice n */
    size_t max_len; /* the longest key, in bytes */
} titan_wp_vocab;

/* A byte trie of added tokens' texts: children as sibling lists; `token` indexes the added tokens (-1: none
 * ends here). first[b] says whether some text starts with byte b. */
typedef struct {
    int32_t child, sibling, token;
    uint8_t byte;
} titan_wp_node;

typedef struct {
    titan_wp_node *nodes; /* nodes[0] is the root */
    size_t n, cap;
    bool first[256];
} titan_wp_trie;

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    bool single_word, lstrip, rstrip, normalized, special;
} titan_wp_added;

/* One piece of a post-processing template: a special token's ids, or sequence A or B, with a type id. */
typedef enum { TITAN_WP_SPECIAL, TITAN_WP_SEQ_A, TITAN_WP_SEQ_B } titan_wp_piece_kind;

typedef struct {
    titan_wp_piece_kind kind;
    int32_t type_id;
    int32_t *ids; /* TITAN_WP_SPECIAL only */
    size_t nids;
} titan_wp_piece;

typedef enum { TITAN_WP_LONGEST_FIRST, TITAN_WP_ONLY_FIRST, TITAN_WP_ONLY_SECOND } titan_wp_strategy;

struct titan_wordpiece {
    titan_wp_vocab vocab;
    int32_t unk_id;
    char *prefix; /* continuing_subword_prefix */
    size_t prefix_len;
    size_t max_chars; /* max_input_chars_per_word */

    bool normalize; /* a BertNormalizer is there; its options: */
    bool clean_text, chinese, strip_accents, lowercase;
    bool pretokenize; /* a BertPreTokenizer is there */

    titan_wp_added *added;
    size_t nadded;
    titan_wp_trie raw_trie, norm_trie; /* added tokens matched on the raw text, and on the normalized text */

    titan_wp_piece *single, *pair;
    size_t nsingle, npair;
    size_t added_single, added_pair; /* the special tokens' ids in each template */

    size_t trunc_max; /* 0: no truncation of its own */
    titan_wp_strategy strategy;
    bool trunc_left;

    int32_t max_id;
};

/* Growable arrays for one encoding call (nothing in the tokenizer changes while it encodes). */
typedef struct {
    int32_t *v;
    size_t n, cap;
} titan_wp_i32;

typedef struct {
    char *v;
    size_t n, cap;
} titan_wp_bytes;

typedef struct {
    titan_wp_i32 cp, cp2; /* code points between the normalizer's steps */
    titan_wp_bytes norm;  /* the normalized text of one piece, UTF-8 */
    titan_wp_i32 ids;     /* the tokens of the sequence being encoded */
} titan_wp_scratch;

void titan_wp_scratch_free(titan_wp_scratch *s);

/* The vocabulary. init sizes the table for `n` keys; put adds or replaces (the later id wins, as Python's
 * dict and serde's map do); find looks up prefix + s without building the key. */
int titan_wp_vocab_init(titan_wp_vocab *v, size_t n);
int titan_wp_vocab_put(titan_wp_vocab *v, const char *key, size_t len, int32_t id);
int32_t titan_wp_vocab_find(const titan_wp_vocab *v, const char *pre, size_t plen, const char *s,
                            size_t slen);
void titan_wp_vocab_free(titan_wp_vocab *v);

/* The trie. add keeps the first token given a text (as the reference's matcher prefers the first pattern
 * among equal ones); match returns the token of the longest text at s[0..n) and its length, or -1. */
int titan_wp_trie_add(titan_wp_trie *t, const char *s, size_t n, int32_t token);
int32_t titan_wp_trie_match(const titan_wp_trie *t, const char *s, size_t n, size_t *len);
void titan_wp_trie_free(titan_wp_trie *t);

/* BertNormalizer over valid UTF-8 `in`: the result (UTF-8) in s->norm. Returns 0, or -1 when out of memory.
 */
int titan_wp_normalize(const titan_wordpiece *t, const char *in, size_t len, titan_wp_scratch *s);

/* The offset of the first byte of `s` that is not valid UTF-8 (overlong forms, surrogates and code points
 * past U+10FFFF are invalid), or `n` when all of it is valid. */
size_t titan_wp_utf8_check(const char *s, size_t n);

#endif
