/* wp_encode.c - titan's WordPiece tokenizer as a filter, for tests that compare it with HuggingFace's
 * (tests/ref/tokenizer_ref.mjs). Reads one JSON request on stdin, writes one JSON answer on stdout:
 *
 *   {"dir": MODEL_DIR,
 *    "encode": [{"a": TEXT | "a_hex": HEX, "b": TEXT | "b_hex": HEX (optional), "max_len": N, "truncate":
 * BOOL}], "words": [TEXT...],                   the normalizer's and pre-tokenizer's words of each text
 *    "categories": [CODE POINT...],        utf8proc's general category of each
 *    "bench": {"texts": [TEXT...], "rounds": N, "max_len": N}}
 *
 *   {"vocab_size": N, "max_length": N, "unicode_version": "15.0.0",
 *    "encode": [{"ids": [...], "type_ids": [...], "attention_mask": [...]} | {"error": CODE, "message":
 * TEXT}], "words": [[WORD...] | {"error": CODE, "message": TEXT}], "categories": ["Lu"...], "bench":
 * {"texts": N, "rounds": N, "tokens": N, "us_per_text": X, "sanitized": BOOL}} or {"open_error": {"code":
 * CODE, "message": TEXT}} when the tokenizer does not open (exit 0 all the same). Exit status 2 for a
 * malformed request. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <utf8proc.h>

#include "encoder/wordpiece.h"

/* Built with AddressSanitizer: the bench's time is reported, not judged. */
#if defined(__SANITIZE_ADDRESS__)
#define S_SANITIZED 1
#else
#define S_SANITIZED 0
#endif

static int s_hex(const char *h, char **out, size_t *len)
{
    size_t n = strlen(h);
    if (n % 2) return -1;
    char *p = malloc(n / 2 + 1);
    if (!p) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1) {
            free(p);
            return -1;
        }
        p[i] = (char)v;
    }
    *out = p;
    *len = n / 2;
    return 0;
}

/* A text from "KEY" (a JSON string) or "KEY_hex" (bytes in hex): 1 and a malloc'd copy, 0 when neither, -1
 * bad. */
static int s_text(json_t *o, const char *key, char **out, size_t *len)
{
    char hk[16];
    snprintf(hk, sizeof(hk), "%s_hex", key);
    json_t *s = json_object_get(o, key), *h = json_object_get(o, hk);
    if (json_is_string(s)) {
        *len = json_string_length(s);
        *out = malloc(*len + 1);
        if (!*out) return -1;
        memcpy(*out, json_string_value(s), *len);
        return 1;
    }
    if (json_is_string(h)) return s_hex(json_string_value(h), out, len) < 0 ? -1 : 1;
    return 0;
}

static json_t *s_error(const titan_error *e)
{
    return json_pack("{s:s, s:s}", "error", e->code ? e->code : "?", "message", e->msg);
}

static json_t *s_ints(const int32_t *v, size_t n, int ones)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ones ? 1 : v[i]));
    return a;
}

static void s_add_word(void *ctx, const char *w, size_t n)
{
    json_array_append_new((json_t *)ctx, json_stringn(w, n));
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void)
{
    json_error_t je;
    json_t *req = json_loadf(stdin, JSON_ALLOW_NUL, &je);
    if (!json_is_object(req) || !json_is_string(json_object_get(req, "dir"))) {
        fprintf(stderr, "wp_encode: the request must be a JSON object with \"dir\" (%s)\n",
                req ? "" : je.text);
        return 2;
    }
    titan_wordpiece *t = NULL;
    titan_error err = {0};
    json_t *ans = json_object();
    if (titan_wordpiece_open(json_string_value(json_object_get(req, "dir")), &t, &err) < 0) {
        json_object_set_new(ans, "open_error", json_pack("{s:s, s:s}", "code", err.code, "message", err.msg));
        goto done;
    }
    json_object_set_new(ans, "vocab_size", json_integer((json_int_t)titan_wordpiece_vocab_size(t)));
    json_object_set_new(ans, "max_length", json_integer((json_int_t)titan_wordpiece_max_length(t)));
    json_object_set_new(ans, "unicode_version", json_string(utf8proc_unicode_version()));

    json_t *enc = json_object_get(req, "encode"), *v;
    size_t i;
    if (enc) {
        json_t *res = json_array();
        json_array_foreach(enc, i, v)
        {
            char *a = NULL, *b = NULL;
            size_t alen = 0, blen = 0;
            int ra = s_text(v, "a", &a, &alen), rb = s_text(v, "b", &b, &blen);
            if (ra <= 0 || rb < 0) {
                fprintf(stderr, "wp_encode: encode[%zu] needs \"a\" or \"a_hex\"\n", i);
                return 2;
            }
            json_t *ml = json_object_get(v, "max_len");
            size_t max_len = json_is_integer(ml) ? (size_t)json_integer_value(ml) : 0;
            bool truncate = json_is_true(json_object_get(v, "truncate"));
            titan_tokens tk = {0};
            if (titan_wordpiece_encode(t, a, alen, rb ? b : NULL, blen, max_len, truncate, &tk, &err) < 0) {
                json_array_append_new(res, s_error(&err));
            } else {
                /* no padding: every token is attended to */
                json_array_append_new(res, json_pack("{s:o, s:o, s:o}", "ids", s_ints(tk.ids, tk.len, 0),
                                                     "type_ids", s_ints(tk.type_ids, tk.len, 0),
                                                     "attention_mask", s_ints(tk.ids, tk.len, 1)));
            }
            titan_tokens_free(&tk);
            free(a);
            free(b);
        }
        json_object_set_new(ans, "encode", res);
    }

    json_t *words = json_object_get(req, "words");
    if (words) {
        json_t *res = json_array();
        json_array_foreach(words, i, v)
        {
            json_t *w = json_array();
            if (titan_wordpiece_words(t, json_string_value(v), json_string_length(v), s_add_word, w, &err) <
                0) {
                json_decref(w);
                w = s_error(&err);
            }
            json_array_append_new(res, w);
        }
        json_object_set_new(ans, "words", res);
    }

    json_t *cats = json_object_get(req, "categories");
    if (cats) {
        json_t *res = json_array();
        json_array_foreach(cats, i, v)
        {
            json_array_append_new(
                res, json_string(utf8proc_category_string((utf8proc_int32_t)json_integer_value(v))));
        }
        json_object_set_new(ans, "categories", res);
    }

    json_t *bench = json_object_get(req, "bench");
    if (bench) {
        json_t *texts = json_object_get(bench, "texts");
        long rounds = (long)json_integer_value(json_object_get(bench, "rounds"));
        size_t max_len = (size_t)json_integer_value(json_object_get(bench, "max_len")), tokens = 0;
        size_t n = json_array_size(texts);
        double t0 = s_now();
        for (long r = 0; r < rounds; r++) {
            for (i = 0; i < n; i++) {
                json_t *x = json_array_get(texts, i);
                titan_tokens tk = {0};
                if (titan_wordpiece_encode(t, json_string_value(x), json_string_length(x), NULL, 0, max_len,
                                           true, &tk, &err) < 0) {
                    fprintf(stderr, "wp_encode: bench text %zu: %s\n", i, err.msg);
                    return 2;
                }
                tokens += tk.len;
                titan_tokens_free(&tk);
            }
        }
        double dt = s_now() - t0;
        json_object_set_new(ans, "bench",
                            json_pack("{s:I, s:I, s:I, s:f, s:b}", "texts", (json_int_t)n, "rounds",
                                      (json_int_t)rounds, "tokens", (json_int_t)tokens, "us_per_text",
                                      n && rounds ? dt * 1e6 / ((double)n * (double)rounds) : 0.0,
                                      "sanitized", S_SANITIZED));
    }

done:
    json_dumpf(ans, stdout, JSON_COMPACT);
    putchar('\n');
    json_decref(ans);
    json_decref(req);
    titan_wordpiece_free(&t);
    return 0;
}
