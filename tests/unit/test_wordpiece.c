/* test_wordpiece.c - cmocka tests of the WordPiece tokenizer's edge cases (src/core/encoder/wordpiece*.c):
 * invalid UTF-8 refused with its byte offset, empty inputs, max_input_chars_per_word counted in characters,
 * the greedy longest match, special tokens found inside the text, truncation of singles and pairs
 * (longest_first, only_first, only_second, from the left) and the too_long error, tokenizer.json files
 * refused (unsupported model, normalizer, pre-tokenizer, post-processor; missing fields; bad JSON), missing
 * files, vocab.txt with tokenizer_config.json, canonical ordering on a long run of marks, and encodes from
 * several threads at once. Expected ids are worked out here by hand from the vocabulary below and the rules
 * of the reference (HuggingFace's tokenizers); tests/ref/tokenizer_ref.mjs compares with the reference
 * itself. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "encoder/wordpiece.h"

/* ids: the specials, then words */
enum {
    PAD,
    UNK,
    CLS,
    SEP,
    MASK,
    UN,
    AFF,
    ABLE_S,
    ING_S,
    HELLO,
    WORLD,
    BANG,
    COMMA,
    X,
    XX,
    XXXX_S,
    E_ACUTE,
    CAFE,
    A,
    A_S,
    E_S
};
static const char *const s_vocab[] = {"[PAD]", "[UNK]",  "[CLS]",     "[SEP]", "[MASK]",   "un",
                                      "aff",   "##able", "##ing",     "hello", "world",    "!",
                                      ",",     "x",      "##x",       "##xxx", "\xc3\xa9", "caf\xc3\xa9",
                                      "a",     "##a",    "##\xc3\xa9"};
#define NVOCAB (sizeof(s_vocab) / sizeof(s_vocab[0]))

/* A tokenizer.json: the vocabulary above, BertNormalizer(lowercase, strip_accents), the BERT template, the
 * five special tokens; `edit` (may be NULL) changes the object before it is written. */
static char *s_json(void (*edit)(json_t *root))
{
    json_t *vocab = json_object();
    for (size_t i = 0; i < NVOCAB; i++)
        json_object_set_new(vocab, s_vocab[i], json_integer((json_int_t)i));
    json_t *added = json_array();
    for (int i = 0; i < 5; i++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", i, "content",
                                               s_vocab[i], "single_word", 0, "lstrip", 0, "rstrip", 0,
                                               "normalized", 0, "special", 1));
    json_t *root = json_pack(
        "{s:s, s:n, s:n, s:o, s:{s:s, s:b, s:b, s:n, s:b}, s:{s:s}, s:{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, "
        "s:i}}, "
        "{s:{s:s, s:i}}], s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, s:i}}, {s:{s:s, "
        "s:i}}], "
        "s:{s:{s:s, s:[i], s:[s]}, s:{s:s, s:[i], s:[s]}}}, s:{s:s, s:s, s:s, s:i, s:o}}",
        "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer", "type",
        "BertNormalizer", "clean_text", 1, "handle_chinese_chars", 1, "strip_accents", "lowercase", 1,
        "pre_tokenizer", "type", "BertPreTokenizer", "post_processor", "type", "TemplateProcessing", "single",
        "SpecialToken", "id", "[CLS]", "type_id", 0, "Sequence", "id", "A", "type_id", 0, "SpecialToken",
        "id", "[SEP]", "type_id", 0, "pair", "SpecialToken", "id", "[CLS]", "type_id", 0, "Sequence", "id",
        "A", "type_id", 0, "SpecialToken", "id", "[SEP]", "type_id", 0, "Sequence", "id", "B", "type_id", 1,
        "SpecialToken", "id", "[SEP]", "type_id", 1, "special_tokens", "[CLS]", "id", "[CLS]", "ids", CLS,
        "tokens", "[CLS]", "[SEP]", "id", "[SEP]", "ids", SEP, "tokens", "[SEP]", "model", "type",
        "WordPiece", "unk_token", "[UNK]", "continuing_subword_prefix", "##", "max_input_chars_per_word", 10,
        "vocab", vocab);
    assert_non_null(root);
    if (edit) edit(root);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    assert_non_null(s);
    return s;
}

static titan_wordpiece *s_open(void (*edit)(json_t *root))
{
    char *j = s_json(edit);
    titan_wordpiece *t = NULL;
    titan_error err = {0};
    if (titan_wordpiece_from_json(j, strlen(j), "test.json", &t, &err) != 0) fail_msg("open: %s", err.msg);
    free(j);
    return t;
}

/* Opening must fail with code bad_model and a message containing `needle`. */
static void s_refused(void (*edit)(json_t *root), const char *needle)
{
    char *j = s_json(edit);
    titan_wordpiece *t = NULL;
    titan_error err = {0};
    int rc = titan_wordpiece_from_json(j, strlen(j), "test.json", &t, &err);
    free(j);
    if (rc != -1 || !strstr(err.msg, needle))
        fail_msg("rc %d, message \"%s\", wanted one with \"%s\"", rc, err.msg, needle);
    assert_null(t);
    assert_string_equal(err.code, "bad_model");
}

/* Encodes and compares with the expected ids (terminated by -1) and, when types is not NULL, the type ids. */
static void s_expect(const titan_wordpiece *t, const char *a, const char *b, size_t max_len, const int *ids,
                     const int *types)
{
    titan_tokens tk = {0};
    titan_error err = {0};
    if (titan_wordpiece_encode(t, a, strlen(a), b, b ? strlen(b) : 0, max_len, true, &tk, &err) != 0)
        fail_msg("encode \"%s\": %s", a, err.msg);
    size_t n = 0;
    while (ids[n] >= 0)
        n++;
    char got[512] = "", want[512] = "";
    for (size_t i = 0; i < tk.len && strlen(got) < 480; i++)
        snprintf(got + strlen(got), 16, " %d", tk.ids[i]);
    for (size_t i = 0; i < n && strlen(want) < 480; i++)
        snprintf(want + strlen(want), 16, " %d", ids[i]);
    if (tk.len != n) fail_msg("\"%s\" | \"%s\": ids%s, wanted%s", a, b ? b : "", got, want);
    for (size_t i = 0; i < n; i++) {
        if (tk.ids[i] != ids[i]) fail_msg("\"%s\" | \"%s\": ids%s, wanted%s", a, b ? b : "", got, want);
        if (types && tk.type_ids[i] != types[i])
            fail_msg("\"%s\" | \"%s\": type id %d at %zu, wanted %d", a, b ? b : "", tk.type_ids[i], i,
                     types[i]);
    }
    titan_tokens_free(&tk);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(NULL);
    static const struct {
        const char *text;
        size_t len, offset;
    } cases[] = {
        {"ab\x80", 3, 2},              /* a stray continuation byte */
        {"hello \xc0\xaf", 8, 6},      /* overlong '/' */
        {"x\xe0\x80\xaf", 4, 1},       /* overlong, three bytes */
        {"\xed\xa0\x80 y", 5, 0},      /* a surrogate */
        {"ok \xf4\x90\x80\x80", 7, 3}, /* past U+10FFFF */
        {"ok \xf5\x80\x80\x80", 7, 3},
        {"caf\xc3", 4, 3}, /* cut short */
        {"\xe4\xb8", 2, 0},
        {"a\xe4\xb8z", 4, 1}, /* a continuation byte missing */
        {"\xff", 1, 0},
        {"\xc3\xa9\xc3\xa9\x80", 5, 4},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        titan_tokens tk = {0};
        titan_error err = {0};
        assert_int_equal(titan_wordpiece_encode(t, cases[i].text, cases[i].len, NULL, 0, 0, true, &tk, &err),
                         -1);
        assert_string_equal(err.code, "bad_request");
        char want[64];
        snprintf(want, sizeof(want), "at byte %zu ", cases[i].offset);
        if (!strstr(err.msg, want)) fail_msg("case %zu: \"%s\" does not say \"%s\"", i, err.msg, want);
        assert_null(tk.ids);
        /* the same as the second text of a pair names text b */
        assert_int_equal(titan_wordpiece_encode(t, "ok", 2, cases[i].text, cases[i].len, 0, true, &tk, &err),
                         -1);
        assert_non_null(strstr(err.msg, "text b"));
        assert_non_null(strstr(err.msg, want));
    }
    /* valid edges: U+007F, U+0080, U+07FF, U+0800, U+D7FF, U+E000, U+FFFF, U+10000, U+10FFFF; and NUL */
    static const char valid[] =
        "\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80\x80"
        "\xf4\x8f\xbf\xbf\x00x";
    titan_tokens tk = {0};
    titan_error err = {0};
    assert_int_equal(titan_wordpiece_encode(t, valid, sizeof(valid) - 1, NULL, 0, 0, true, &tk, &err), 0);
    titan_tokens_free(&tk);
    titan_wordpiece_free(&t);
    assert_null(t);
}

static void test_empty(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(NULL);
    s_expect(t, "", NULL, 0, (int[]){CLS, SEP, -1}, (int[]){0, 0});
    s_expect(t, "", "", 0, (int[]){CLS, SEP, SEP, -1}, (int[]){0, 0, 1});
    s_expect(t, " \t\n\r\x0b\x0c\x01 ", NULL, 0, (int[]){CLS, SEP, -1},
             NULL); /* only whitespace and controls */
    s_expect(t, "", "hello", 0, (int[]){CLS, SEP, HELLO, SEP, -1}, (int[]){0, 0, 1, 1});
    titan_tokens tk = {0};
    titan_error err = {0};
    assert_int_equal(titan_wordpiece_encode(t, NULL, 0, NULL, 0, 0, false, &tk, &err), 0);
    assert_int_equal(tk.len, 2);
    titan_tokens_free(&tk);
    titan_tokens_free(&tk); /* twice is fine */
    titan_wordpiece_free(&t);
}

static void test_words(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(NULL);
    /* lowercase, punctuation split off, the greedy longest match, ## pieces */
    s_expect(t, "Hello, WORLD!", NULL, 0, (int[]){CLS, HELLO, COMMA, WORLD, BANG, SEP, -1}, NULL);
    s_expect(t, "unable affing", NULL, 0, (int[]){CLS, UN, ABLE_S, AFF, ING_S, SEP, -1}, NULL);
    /* xxxxx: x, then ##xxx (longest), then ##x */
    s_expect(t, "xxxxx", NULL, 0, (int[]){CLS, X, XXXX_S, XX, SEP, -1}, NULL);
    /* a word with a part that matches nothing is [UNK] as a whole, not x [UNK] */
    s_expect(t, "xq", NULL, 0, (int[]){CLS, UNK, SEP, -1}, NULL);
    /* strip_accents (null: follows lowercase): É -> e, which is not in the vocabulary; é is precomposed in it
     * but NFD takes it apart, so "café" is [UNK] too; the vocabulary's "é" never matches */
    s_expect(t, "\xc3\x89 caf\xc3\xa9", NULL, 0, (int[]){CLS, UNK, UNK, SEP, -1}, NULL);
    titan_wordpiece_free(&t);
}

static void s_no_strip(json_t *root)
{
    json_object_set_new(json_object_get(root, "normalizer"), "strip_accents", json_false());
}

static void test_accents_kept(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(s_no_strip);
    /* precomposed é stays; É lowercases to é */
    s_expect(t, "caf\xc3\xa9 \xc3\x89", NULL, 0, (int[]){CLS, CAFE, E_ACUTE, SEP, -1}, NULL);
    /* e + U+0301 (decomposed) is not the vocabulary's é */
    s_expect(t, "cafe\xcc\x81", NULL, 0, (int[]){CLS, UNK, SEP, -1}, NULL);
    titan_wordpiece_free(&t);
}

/* max_input_chars_per_word is 10: counted in characters, not bytes. */
static void test_max_chars(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(s_no_strip);
    s_expect(t, "xxxxxxxxxx", NULL, 0, (int[]){CLS, X, XXXX_S, XXXX_S, XXXX_S, SEP, -1}, NULL);
    s_expect(t, "xxxxxxxxxxx", NULL, 0, (int[]){CLS, UNK, SEP, -1}, NULL);
    /* é a é a ...: 10 characters in 15 bytes are tokenized; 11 characters are [UNK] */
    s_expect(t,
             "\xc3\xa9"
             "a\xc3\xa9"
             "a\xc3\xa9"
             "a\xc3\xa9"
             "a\xc3\xa9"
             "a",
             NULL, 0, (int[]){CLS, E_ACUTE, A_S, E_S, A_S, E_S, A_S, E_S, A_S, E_S, A_S, SEP, -1}, NULL);
    s_expect(t,
             "\xc3\xa9"
             "a\xc3\xa9"
             "a\xc3\xa9"
             "a\xc3\xa9"
             "a\xc3\xa9"
             "a\xc3\xa9",
             NULL, 0, (int[]){CLS, UNK, SEP, -1}, NULL);
    titan_wordpiece_free(&t);
}

/* Special tokens are cut out of the raw text wherever they are, even inside a word; lowercase ones are not.
 */
static void test_specials_in_text(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(NULL);
    s_expect(t, "hello [MASK] world", NULL, 0, (int[]){CLS, HELLO, MASK, WORLD, SEP, -1}, NULL);
    s_expect(t, "un[SEP]able", NULL, 0, (int[]){CLS, UN, SEP, UNK, SEP, -1}, NULL);
    s_expect(t, "[CLS][CLS]", NULL, 0, (int[]){CLS, CLS, CLS, SEP, -1}, NULL);
    /* [mask] is matched on the raw text only: lowercase it is punctuation and a word */
    s_expect(t, "[mask]", NULL, 0, (int[]){CLS, UNK, UNK, UNK, SEP, -1}, NULL);
    titan_wordpiece_free(&t);
}

static void s_truncation(json_t *root, const char *strategy, const char *direction, int max)
{
    json_object_set_new(root, "truncation",
                        json_pack("{s:s, s:i, s:s, s:i}", "direction", direction, "max_length", max,
                                  "strategy", strategy, "stride", 0));
}
static void s_only_first(json_t *root)
{
    s_truncation(root, "OnlyFirst", "Right", 7);
}
static void s_only_second_left(json_t *root)
{
    s_truncation(root, "OnlySecond", "Left", 7);
}
static void s_longest_left(json_t *root)
{
    s_truncation(root, "LongestFirst", "Left", 5);
}

static void test_truncation(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(NULL);
    /* a: x ##xxx ##x ##x ##x ##x (6 tokens: "xxxxxxxx" is x + xxx + x x x x... worked out below) */
    /* "x x x x x x" is six words of one token each: X */
    const char *six = "x x x x x x", *two = "hello world", *five = "a a a a a";
    s_expect(t, six, NULL, 5, (int[]){CLS, X, X, X, SEP, -1}, NULL);
    s_expect(t, six, NULL, 8, (int[]){CLS, X, X, X, X, X, X, SEP, -1}, NULL);
    s_expect(t, six, NULL, 2, (int[]){CLS, SEP, -1}, NULL);
    /* pair, longest_first, room 5 after the 3 specials: b (2) stays whole, a keeps 3 */
    s_expect(t, six, two, 8, (int[]){CLS, X, X, X, SEP, HELLO, WORLD, SEP, -1},
             (int[]){0, 0, 0, 0, 0, 1, 1, 1});
    s_expect(t, two, six, 8, (int[]){CLS, HELLO, WORLD, SEP, X, X, X, SEP, -1}, NULL);
    /* both long (6 and 5), room 5: the shorter keeps 5/2 = 2, the longer 2 + 1 */
    s_expect(t, six, five, 8, (int[]){CLS, X, X, X, SEP, A, A, SEP, -1}, NULL);
    s_expect(t, five, six, 8, (int[]){CLS, A, A, SEP, X, X, X, SEP, -1}, NULL);
    /* room 4, both long: 2 and 2 */
    s_expect(t, six, five, 7, (int[]){CLS, X, X, SEP, A, A, SEP, -1}, NULL);
    /* room 0 */
    s_expect(t, six, five, 3, (int[]){CLS, SEP, SEP, -1}, NULL);

    /* without truncate: too_long with the counts */
    titan_tokens tk = {0};
    titan_error err = {0};
    assert_int_equal(titan_wordpiece_encode(t, six, strlen(six), two, strlen(two), 8, false, &tk, &err), -1);
    assert_string_equal(err.code, "too_long");
    assert_non_null(strstr(err.msg, "11 tokens"));
    assert_non_null(strstr(err.msg, "limit of 8"));
    assert_null(tk.ids);
    /* fits exactly: no error */
    assert_int_equal(titan_wordpiece_encode(t, six, strlen(six), two, strlen(two), 11, false, &tk, &err), 0);
    assert_int_equal(tk.len, 11);
    titan_tokens_free(&tk);
    /* a cap below the specials */
    assert_int_equal(titan_wordpiece_encode(t, six, strlen(six), two, strlen(two), 2, true, &tk, &err), -1);
    assert_string_equal(err.code, "bad_request");
    /* no cap of its own */
    assert_int_equal(titan_wordpiece_max_length(t), 0);
    titan_wordpiece_free(&t);

    /* the tokenizer's own truncation (max_len 0): OnlyFirst, 7 */
    t = s_open(s_only_first);
    assert_int_equal(titan_wordpiece_max_length(t), 7);
    s_expect(t, six, two, 0, (int[]){CLS, X, X, SEP, HELLO, WORLD, SEP, -1}, NULL);
    /* a cap given overrides it */
    s_expect(t, six, two, 9, (int[]){CLS, X, X, X, X, SEP, HELLO, WORLD, SEP, -1}, NULL);
    /* only_first cannot make it fit when a is too short */
    assert_int_equal(titan_wordpiece_encode(t, two, strlen(two), six, strlen(six), 0, true, &tk, &err), -1);
    assert_string_equal(err.code, "too_long");
    assert_non_null(strstr(err.msg, "only_first"));
    /* single: only_first shortens a */
    s_expect(t, six, NULL, 0, (int[]){CLS, X, X, X, X, X, SEP, -1}, NULL);
    titan_wordpiece_free(&t);

    /* OnlySecond from the left: b keeps its last tokens */
    t = s_open(s_only_second_left);
    s_expect(t, two, "un hello world x", 0, (int[]){CLS, HELLO, WORLD, SEP, WORLD, X, SEP, -1}, NULL);
    /* a single input cannot be shortened by only_second */
    assert_int_equal(titan_wordpiece_encode(t, six, strlen(six), NULL, 0, 0, true, &tk, &err), -1);
    assert_string_equal(err.code, "too_long");
    assert_non_null(strstr(err.msg, "only_second"));
    titan_wordpiece_free(&t);

    /* LongestFirst from the left: a's last tokens */
    t = s_open(s_longest_left);
    s_expect(t, "un hello world x", NULL, 0, (int[]){CLS, HELLO, WORLD, X, SEP, -1}, NULL);
    /* room 2, lengths 4 and 2: one each */
    s_expect(t, "un hello world x", "a a", 0, (int[]){CLS, X, SEP, A, SEP, -1}, NULL);
    titan_wordpiece_free(&t);
}

static void s_bpe(json_t *r)
{
    json_object_set_new(json_object_get(r, "model"), "type", json_string("BPE"));
}
static void s_seq_norm(json_t *r)
{
    json_object_set_new(r, "normalizer", json_pack("{s:s, s:[]}", "type", "Sequence", "normalizers"));
}
static void s_ws_pretok(json_t *r)
{
    json_object_set_new(r, "pre_tokenizer", json_pack("{s:s}", "type", "Whitespace"));
}
static void s_roberta(json_t *r)
{
    json_object_set_new(r, "post_processor", json_pack("{s:s}", "type", "RobertaProcessing"));
}
static void s_no_unk(json_t *r)
{
    json_object_set_new(json_object_get(r, "model"), "unk_token", json_string("<unk>"));
}
static void s_no_vocab(json_t *r)
{
    json_object_del(json_object_get(r, "model"), "vocab");
}
static void s_no_max_chars(json_t *r)
{
    json_object_del(json_object_get(r, "model"), "max_input_chars_per_word");
}
static void s_bad_id(json_t *r)
{
    json_object_set_new(json_object_get(json_object_get(r, "model"), "vocab"), "zz", json_integer(-3));
}
static void s_huge_id(json_t *r)
{
    json_object_set_new(json_object_get(json_object_get(r, "model"), "vocab"), "zz", json_integer(1 << 24));
}
static void s_no_model(json_t *r)
{
    json_object_del(r, "model");
}
static void s_bad_strategy(json_t *r)
{
    s_truncation(r, "Shortest", "Right", 8);
}
static void s_bad_version(json_t *r)
{
    json_object_set_new(r, "version", json_string("2.0"));
}
static void s_lower_missing(json_t *r)
{
    json_object_del(json_object_get(r, "normalizer"), "lowercase");
}
static void s_template_unknown_special(json_t *r)
{
    json_object_del(json_object_get(json_object_get(r, "post_processor"), "special_tokens"), "[SEP]");
}
static void s_template_no_b(json_t *r)
{
    json_array_remove(json_object_get(json_object_get(r, "post_processor"), "pair"), 3);
}
static void s_dup_added(json_t *r)
{
    json_t *a = json_object_get(r, "added_tokens");
    json_array_append(a, json_array_get(a, 0));
}

static void test_refused(void **state)
{
    (void)state;
    s_refused(s_bpe, "model type \"BPE\" is not supported");
    s_refused(s_seq_norm, "normalizer type \"Sequence\" is not supported (supported: BertNormalizer");
    s_refused(s_ws_pretok, "pre_tokenizer type \"Whitespace\" is not supported");
    s_refused(s_roberta, "post_processor type \"RobertaProcessing\" is not supported");
    s_refused(s_no_unk, "\"<unk>\" is not in the vocabulary");
    s_refused(s_no_vocab, "model.vocab is missing");
    s_refused(s_no_max_chars, "max_input_chars_per_word");
    s_refused(s_bad_id, "model.vocab[\"zz\"] must be an integer id");
    s_refused(s_huge_id, "model.vocab[\"zz\"] must be an integer id");
    s_refused(s_no_model, "\"model\" is missing");
    s_refused(s_bad_strategy, "truncation.strategy");
    s_refused(s_bad_version, "version");
    s_refused(s_lower_missing, "normalizer.lowercase is missing");
    s_refused(s_template_unknown_special, "special token \"[SEP]\"");
    s_refused(s_template_no_b, "sequence B exactly once");
    s_refused(s_dup_added, "listed twice");

    titan_wordpiece *t = NULL;
    titan_error err = {0};
    assert_int_equal(titan_wordpiece_from_json("{\"model\": ", 10, "cut.json", &t, &err), -1);
    assert_non_null(strstr(err.msg, "cut.json: not valid JSON"));
    assert_int_equal(titan_wordpiece_from_json("[1]", 3, "arr.json", &t, &err), -1);
    assert_non_null(strstr(err.msg, "not a JSON object"));
    assert_null(t);
}

/* A temporary directory, removed (with the files named) at the end. */
static void s_write(const char *dir, const char *name, const char *text, size_t len)
{
    if (len == SIZE_MAX) len = strlen(text);
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

static void s_rm(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    unlink(p);
}

static void test_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_wordpiece_XXXXXX";
    assert_non_null(mkdtemp(dir));
    titan_wordpiece *t = NULL;
    titan_error err = {0};

    /* nothing there */
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), -1);
    assert_string_equal(err.code, "bad_model");
    assert_non_null(strstr(err.msg, "neither tokenizer.json nor vocab.txt"));
    assert_int_equal(titan_wordpiece_open("/nonexistent/model", &t, &err), -1);
    assert_non_null(strstr(err.msg, "neither"));

    /* vocab.txt with \r\n and \r line ends, no tokenizer_config.json: lowercase, the BERT template */
    static const char vocab[] =
        "[PAD]\r\n[UNK]\r[CLS]\n[SEP]\n[MASK]\nhello\nHello\n##s\n\xe4\xb8\xad\nworld";
    s_write(dir, "vocab.txt", vocab, sizeof(vocab) - 1);
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), 0);
    assert_int_equal(titan_wordpiece_vocab_size(t), 10);
    assert_int_equal(titan_wordpiece_id(t, "world"), 9);
    assert_int_equal(titan_wordpiece_id(t, "[UNK]"), 1);
    assert_int_equal(titan_wordpiece_id(t, "nope"), -1);
    assert_int_equal(titan_wordpiece_max_length(t), 0);
    s_expect(t, "Hellos \xe4\xb8\xad\xe4\xb8\xad [MASK]", NULL, 0, (int[]){2, 5, 7, 8, 8, 4, 3, -1}, NULL);
    titan_wordpiece_free(&t);

    /* tokenizer_config.json: cased, no Chinese splitting, model_max_length 5, another unk token */
    static const char cfg[] =
        "{\"do_lower_case\": false, \"tokenize_chinese_chars\": false, \"model_max_length\": 5,"
        " \"unk_token\": {\"content\": \"[MASK]\"}}";
    s_write(dir, "tokenizer_config.json", cfg, sizeof(cfg) - 1);
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), 0);
    assert_int_equal(titan_wordpiece_max_length(t), 5);
    s_expect(t, "Hellos \xe4\xb8\xad\xe4\xb8\xad x", NULL, 0, (int[]){2, 6, 7, 4, 3, -1}, NULL);
    titan_tokens tk = {0};
    assert_int_equal(titan_wordpiece_encode(t, "hello hello hello hello", 23, NULL, 0, 0, false, &tk, &err),
                     -1);
    assert_string_equal(err.code, "too_long");
    titan_wordpiece_free(&t);

    /* transformers' "no limit" sentinel */
    static const char cfg2[] = "{\"model_max_length\": 1000000000000000019884624838656}";
    s_write(dir, "tokenizer_config.json", cfg2, sizeof(cfg2) - 1);
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), 0);
    assert_int_equal(titan_wordpiece_max_length(t), 0);
    titan_wordpiece_free(&t);

    /* a broken tokenizer_config.json, an unk token missing from the vocabulary */
    s_write(dir, "tokenizer_config.json", "{\"do_lower_case\": 1}", SIZE_MAX);
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), -1);
    assert_non_null(strstr(err.msg, "do_lower_case must be true or false"));
    s_write(dir, "tokenizer_config.json", "{\"unk_token\": \"<unk>\"}", SIZE_MAX);
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), -1);
    assert_non_null(strstr(err.msg, "\"<unk>\" is not in the vocabulary"));
    s_rm(dir, "tokenizer_config.json");

    /* invalid UTF-8 in vocab.txt names the line */
    s_write(dir, "vocab.txt", "[UNK]\n[CLS]\n[SEP]\nab\xff\n", SIZE_MAX);
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), -1);
    assert_non_null(strstr(err.msg, "line 4 is not valid UTF-8"));

    /* tokenizer.json wins over vocab.txt */
    char *j = s_json(NULL);
    s_write(dir, "tokenizer.json", j, strlen(j));
    free(j);
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), 0);
    assert_int_equal(titan_wordpiece_vocab_size(t), NVOCAB);
    titan_wordpiece_free(&t);
    s_write(dir, "tokenizer.json", "{", 1);
    assert_int_equal(titan_wordpiece_open(dir, &t, &err), -1);
    assert_non_null(strstr(err.msg, "tokenizer.json: not valid JSON"));

    s_rm(dir, "tokenizer.json");
    s_rm(dir, "vocab.txt");
    assert_int_equal(rmdir(dir), 0);
}

static void s_collect(void *ctx, const char *w, size_t n)
{
    char *out = ctx;
    size_t l = strlen(out);
    if (l + n + 2 < 4096) {
        memcpy(out + l, w, n);
        out[l + n] = '|';
        out[l + n + 1] = '\0';
    }
}

/* The normalizer's steps seen through titan_wordpiece_words. */
static void test_normalizer(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(s_no_strip);
    titan_error err = {0};
    char out[4096] = "";
    /* İ lowercases to i + U+0307 (Rust's full mapping); Σ to σ even at a word's end (char by char) */
    assert_int_equal(titan_wordpiece_words(t, "\xc4\xb0 \xce\xa3\xce\xa3", 7, s_collect, out, &err), 0);
    assert_string_equal(out, "i\xcc\x87|\xcf\x83\xcf\x83|");
    /* CJK ideographs become words of their own; NUL and U+FFFD go; U+00A0 and U+3000 split */
    out[0] = '\0';
    assert_int_equal(titan_wordpiece_words(t,
                                           "a\xe4\xb8\xad"
                                           "b\x00\xef\xbf\xbd"
                                           "c\xc2\xa0"
                                           "d\xe3\x80\x80"
                                           "e",
                                           17, s_collect, out, &err),
                     0);
    assert_string_equal(out, "a|\xe4\xb8\xad|bc|d|e|");
    titan_wordpiece_free(&t);

    /* strip_accents: NFD reorders marks by combining class. U+1D165 (class 216) and U+1D16D (226) are spacing
     * marks (Mc): kept, so their order shows. A long run of them in the wrong order is sorted in linear time.
     */
    t = s_open(NULL);
    out[0] = '\0';
    assert_int_equal(titan_wordpiece_words(t, "x\xf0\x9d\x85\xad\xf0\x9d\x85\xa5", 9, s_collect, out, &err),
                     0);
    assert_string_equal(out, "x\xf0\x9d\x85\xa5\xf0\x9d\x85\xad|");
    size_t n = 100000;
    char *big = malloc(1 + 8 * n);
    assert_non_null(big);
    big[0] = 'x';
    for (size_t i = 0; i < n; i++)
        memcpy(big + 1 + 8 * i, "\xf0\x9d\x85\xad\xf0\x9d\x85\xa5", 8);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    titan_tokens tk = {0};
    assert_int_equal(titan_wordpiece_encode(t, big, 1 + 8 * n, NULL, 0, 0, true, &tk, &err), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_int_equal(tk.len, 3); /* one word of 200001 characters: [UNK] */
    assert_int_equal(tk.ids[1], UNK);
    titan_tokens_free(&tk);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (s > 5) fail_msg("a run of 200,000 marks took %.1f s to normalize", s);
    free(big);

    /* too large */
    char *huge = calloc(TITAN_WORDPIECE_MAX_TEXT + 1, 1);
    assert_non_null(huge);
    assert_int_equal(
        titan_wordpiece_encode(t, huge, TITAN_WORDPIECE_MAX_TEXT + 1, NULL, 0, 0, true, &tk, &err), -1);
    assert_string_equal(err.code, "too_large");
    free(huge);
    titan_wordpiece_free(&t);
}

/* Added tokens: normalized ones matched on the normalized text; single_word, lstrip and rstrip; one that is
 * not in the vocabulary gets the next id after it. */
static void s_more_added(json_t *r)
{
    json_t *a = json_object_get(r, "added_tokens");
    json_array_append_new(a, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 99, "content", "NewTok",
                                       "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 1, "special",
                                       0));
    json_array_append_new(a, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 98, "content", "<w>",
                                       "single_word", 1, "lstrip", 0, "rstrip", 0, "normalized", 0, "special",
                                       0));
    json_array_append_new(a, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", 97, "content", "<s>",
                                       "single_word", 0, "lstrip", 1, "rstrip", 1, "normalized", 0, "special",
                                       1));
}

static void test_added(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(s_more_added);
    int NEW = NVOCAB, W = NVOCAB + 1, S = NVOCAB + 2;
    assert_int_equal(titan_wordpiece_vocab_size(t), NVOCAB + 3);
    assert_int_equal(titan_wordpiece_id(t, "NewTok"), NEW);
    s_expect(t, "xNEWTOKx", NULL, 0, (int[]){CLS, X, NEW, X, SEP, -1}, NULL);
    /* the second <w> follows a letter: not a word of its own, so it is text (x < w >) */
    s_expect(t, "a <w> x<w>", NULL, 0, (int[]){CLS, A, W, X, UNK, UNK, UNK, SEP, -1}, NULL);
    s_expect(t, "hello   <s>   world", NULL, 0, (int[]){CLS, HELLO, S, WORLD, SEP, -1}, NULL);
    titan_wordpiece_free(&t);
}

/* Four threads encode the same texts at once and get what one thread gets. */
typedef struct {
    titan_wordpiece *t;
    int ok;
} s_thread_arg;

static const char *const s_texts[] = {"Hello, WORLD! unable", "xxxxxxx x [MASK] caf\xc3\xa9", "",
                                      "\xe4\xb8\xad\xe6\x96\x87 hello", "a a a a a a a a a a a a a a"};

static void *s_worker(void *p)
{
    s_thread_arg *a = p;
    titan_tokens ref[5];
    titan_error err;
    a->ok = 1;
    for (int i = 0; i < 5; i++)
        if (titan_wordpiece_encode(a->t, s_texts[i], strlen(s_texts[i]), NULL, 0, 0, true, &ref[i], &err) < 0)
            a->ok = 0;
    for (int r = 0; r < 2000 && a->ok; r++) {
        int i = r % 5;
        titan_tokens tk;
        if (titan_wordpiece_encode(a->t, s_texts[i], strlen(s_texts[i]), s_texts[(i + 1) % 5],
                                   strlen(s_texts[(i + 1) % 5]), 12, true, &tk, &err) < 0) {
            a->ok = 0;
            break;
        }
        titan_tokens_free(&tk);
        if (titan_wordpiece_encode(a->t, s_texts[i], strlen(s_texts[i]), NULL, 0, 0, true, &tk, &err) < 0 ||
            tk.len != ref[i].len || memcmp(tk.ids, ref[i].ids, tk.len * sizeof(int32_t)) != 0)
            a->ok = 0;
        titan_tokens_free(&tk);
    }
    for (int i = 0; i < 5; i++)
        titan_tokens_free(&ref[i]);
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    titan_wordpiece *t = s_open(NULL);
    pthread_t th[4];
    s_thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i].t = t;
        assert_int_equal(pthread_create(&th[i], NULL, s_worker, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_true(args[i].ok);
    }
    titan_wordpiece_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_utf8), cmocka_unit_test(test_empty),
        cmocka_unit_test(test_words),        cmocka_unit_test(test_accents_kept),
        cmocka_unit_test(test_max_chars),    cmocka_unit_test(test_specials_in_text),
        cmocka_unit_test(test_truncation),   cmocka_unit_test(test_refused),
        cmocka_unit_test(test_files),        cmocka_unit_test(test_normalizer),
        cmocka_unit_test(test_added),        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
