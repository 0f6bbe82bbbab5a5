/* wordpiece.c - encoding with a WordPiece tokenizer, step for step as HuggingFace's tokenizers (0.22) does
 * it:
 *   1. added tokens that are not normalized ([CLS], [SEP]... in BERT) are cut out of the raw text
 *      (leftmost-longest matches; single_word, lstrip and rstrip as the reference applies them);
 *   2. each remaining piece goes through BertNormalizer (clean_text, handle_chinese_chars, strip_accents =
 * NFD and no Mn, lowercase = full lowercase mapping), then normalized added tokens are cut out of it;
 *   3. BertPreTokenizer splits on whitespace (dropped) and punctuation (kept as one-character words);
 *   4. each word becomes the greedy longest-match WordPiece tokens, or [UNK] as a whole when it is longer
 * than max_input_chars_per_word or some part of it matches nothing;
 *   5. truncation (special tokens counted), then the template adds the special tokens and type ids.
 * The tokenizer is only read here. Loading is wordpiece_load.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "wordpiece_internal.h"

/* --- small growable arrays --- */

static int s_i32_reserve(titan_wp_i32 *a, size_t more)
{
    if (more > SIZE_MAX / 8 - a->n) return -1;
    size_t need = a->n + more;
    if (need <= a->cap) return 0;
    size_t cap = a->cap ? a->cap : 64;
    while (cap < need)
        cap *= 2;
    int32_t *p = realloc(a->v, cap * sizeof(*p));
    if (!p) return -1;
    a->v = p;
    a->cap = cap;
    return 0;
}

static int s_i32_push(titan_wp_i32 *a, int32_t x)
{
    if (a->n == a->cap && s_i32_reserve(a, 1) < 0) return -1;
    a->v[a->n++] = x;
    return 0;
}

static int s_bytes_reserve(titan_wp_bytes *b, size_t more)
{
    if (more > SIZE_MAX / 4 - b->n) return -1;
    size_t need = b->n + more;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->v, cap);
    if (!p) return -1;
    b->v = p;
    b->cap = cap;
    return 0;
}

void titan_wp_scratch_free(titan_wp_scratch *s)
{
    free(s->cp.v);
    free(s->cp2.v);
    free(s->norm.v);
    free(s->ids.v);
    memset(s, 0, sizeof(*s));
}

/* --- UTF-8 --- */

size_t titan_wp_utf8_check(const char *str, size_t n)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90; /* overlong */
            else if (c == 0xF4)
                hi = 0x8F; /* past U+10FFFF */
        } else {
            return i;
        }
        if (n - i <= need) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return n;
}

/* Decodes the code point at s (valid UTF-8, checked before) and says how many bytes it took. */
static inline int32_t s_decode(const uint8_t *s, size_t *len)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    if (c < 0xE0) {
        *len = 2;
        return ((int32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (c < 0xF0) {
        *len = 3;
        return ((int32_t)(c & 0x0F) << 12) | ((int32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *len = 4;
    return ((int32_t)(c & 0x07) << 18) | ((int32_t)(s[1] & 0x3F) << 12) | ((int32_t)(s[2] & 0x3F) << 6) |
           (s[3] & 0x3F);
}

static inline size_t s_encode(int32_t cp, char *out)
{
    uint8_t *o = (uint8_t *)out;
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* --- character classes, as the reference defines them (categories from utf8proc) --- */

/* Rust's char::is_whitespace: the White_Space property, which is Zs, Zl, Zp, U+0009..U+000D and U+0085. */
static inline bool s_is_whitespace(int32_t c)
{
    if (c < 0x80) return c == ' ' || (c >= 9 && c <= 13);
    if (c == 0x85) return true;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

/* BertNormalizer's is_control: categories Cc, Cf, Co and Cs, except tab, newline and carriage return. */
static inline bool s_is_control(int32_t c)
{
    if (c == '\t' || c == '\n' || c == '\r') return false;
    if (c < 0x80) return c < 32 || c == 127;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CO ||
           k == UTF8PROC_CATEGORY_CS;
}

/* BertPreTokenizer's is_bert_punc: ASCII punctuation (33-47, 58-64, 91-96, 123-126) or categories P*. */
static inline bool s_is_punct(int32_t c)
{
    if (c < 0x80)
        return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

/* BertNormalizer's is_chinese_char: its fixed list of CJK ideograph blocks. */
static inline bool s_is_cjk(int32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) ||
           (c >= 0x2B920 && c <= 0x2CEAF) || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* The regex crate's \w, used by single_word added tokens: letters, marks, Nd, Nl, Pc and the joiners (its
 * Alphabetic also takes a few symbols with Other_Alphabetic, which this leaves out). */
static bool s_is_word_char(int32_t c)
{
    if (c < 0x80)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (c == 0x200C || c == 0x200D) return true;
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_ME) || k == UTF8PROC_CATEGORY_ND ||
           k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_PC;
}

/* ASCII bytes for the pre-tokenizer: 1 whitespace, 2 punctuation. */
static uint8_t s_ascii_class(uint8_t c)
{
    if (c == ' ' || (c >= 9 && c <= 13)) return 1;
    return s_is_punct(c) ? 2 : 0;
}

/* --- the normalizer --- */

/* Canonical ordering (the last step of NFD): each run of characters with a non-zero combining class is sorted
 * by class, stably. Runs are sorted by counting, so that a long run costs linear time. */
static int s_canonical_order(titan_wp_i32 *a, titan_wp_i32 *tmp)
{
    size_t i = 0, n = a->n;
    int32_t *v = a->v;
    while (i < n) {
        if (utf8proc_get_property(v[i])->combining_class == 0) {
            i++;
            continue;
        }
        size_t j = i + 1;
        bool sorted = true;
        int prev = utf8proc_get_property(v[i])->combining_class;
        while (j < n) {
            int k = utf8proc_get_property(v[j])->combining_class;
            if (k == 0) break;
            if (k < prev) sorted = false;
            prev = k;
            j++;
        }
        if (!sorted) {
            size_t count[257] = {0};
            for (size_t k = i; k < j; k++)
                count[utf8proc_get_property(v[k])->combining_class + 1]++;
            for (int k = 1; k <= 256; k++)
                count[k] += count[k - 1];
            tmp->n = 0;
            if (s_i32_reserve(tmp, j - i) < 0) return -1;
            for (size_t k = i; k < j; k++)
                tmp->v[count[utf8proc_get_property(v[k])->combining_class]++] = v[k];
            memcpy(v + i, tmp->v, (j - i) * sizeof(*v));
        }
        i = j;
    }
    return 0;
}

int titan_wp_normalize(const titan_wordpiece *t, const char *in, size_t len, titan_wp_scratch *s)
{
    const uint8_t *u = (const uint8_t *)in;
    s->norm.n = 0;
    if (!t->normalize) {
        if (s_bytes_reserve(&s->norm, len) < 0) return -1;
        memcpy(s->norm.v, in, len);
        s->norm.n = len;
        return 0;
    }
    size_t i = 0;
    while (i < len && u[i] < 0x80)
        i++;
    if (i == len) { /* ASCII: no Chinese characters, nothing to decompose */
        if (s_bytes_reserve(&s->norm, len) < 0) return -1;
        char *o = s->norm.v;
        size_t n = 0;
        for (i = 0; i < len; i++) {
            uint8_t c = u[i];
            if (t->clean_text) {
                if (s_is_control(c) || c == 0) continue;
                if (c == '\t' || c == '\n' || c == '\r') c = ' ';
            }
            if (t->lowercase && c >= 'A' && c <= 'Z') c = (uint8_t)(c + 32);
            o[n++] = (char)c;
        }
        s->norm.n = n;
        return 0;
    }

    /* clean_text and handle_chinese_chars, into s->cp */
    titan_wp_i32 *a = &s->cp, *b = &s->cp2;
    a->n = 0;
    if (s_i32_reserve(a, len) < 0) return -1;
    for (i = 0; i < len;) {
        size_t l;
        int32_t c = s_decode(u + i, &l);
        i += l;
        if (t->clean_text) {
            if (c == 0 || c == 0xFFFD || s_is_control(c)) continue;
            if (s_is_whitespace(c)) c = ' ';
        }
        if (t->chinese && s_is_cjk(c)) {
            if (s_i32_reserve(a, 3) < 0) return -1;
            a->v[a->n++] = ' ';
            a->v[a->n++] = c;
            a->v[a->n++] = ' ';
        } else if (s_i32_push(a, c) < 0) {
            return -1;
        }
    }

    /* strip_accents: NFD, then no nonspacing marks */
    if (t->strip_accents) {
        b->n = 0;
        if (s_i32_reserve(b, a->n) < 0) return -1;
        for (size_t k = 0; k < a->n; k++) {
            int32_t c = a->v[k];
            if (c < 0xC0) { /* nothing below U+00C0 decomposes */
                if (s_i32_push(b, c) < 0) return -1;
                continue;
            }
            utf8proc_int32_t d[32];
            int bound = 0;
            utf8proc_ssize_t nd = utf8proc_decompose_char(c, d, 32, UTF8PROC_DECOMPOSE, &bound);
            if (nd < 1 || nd > 32) return -1;
            if (s_i32_reserve(b, (size_t)nd) < 0) return -1;
            for (utf8proc_ssize_t q = 0; q < nd; q++)
                b->v[b->n++] = d[q];
        }
        if (s_canonical_order(b, a) < 0) return -1;
        size_t n = 0;
        for (size_t k = 0; k < b->n; k++)
            if (b->v[k] < 0x300 || utf8proc_category(b->v[k]) != UTF8PROC_CATEGORY_MN) b->v[n++] = b->v[k];
        b->n = n;
        titan_wp_i32 *x = a;
        a = b;
        b = x;
    }

    /* lowercase: Rust's char::to_lowercase, the full mapping; its only mapping to more than one character is
     * U+0130's (i and U+0307); utf8proc gives the simple mapping of the rest */
    if (s_bytes_reserve(&s->norm, a->n * 4 + 4) < 0) return -1;
    char *o = s->norm.v;
    size_t n = 0;
    for (size_t k = 0; k < a->n; k++) {
        int32_t c = a->v[k];
        if (t->lowercase) {
            if (c < 0x80) {
                if (c >= 'A' && c <= 'Z') c += 32;
            } else if (c == 0x130) { /* two characters, three bytes: within the four reserved */
                o[n++] = 'i';
                c = 0x307;
            } else {
                c = utf8proc_tolower(c);
            }
        }
        n += s_encode(c, o + n);
    }
    s->norm.n = n;
    return 0;
}

/* --- the model --- */

static int s_wordpiece(const titan_wordpiece *t, const char *w, size_t n, titan_wp_i32 *ids)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++)
        chars += ((uint8_t)w[i] & 0xC0) != 0x80;
    if (chars > t->max_chars) return s_i32_push(ids, t->unk_id);
    size_t mark = ids->n, start = 0, maxkey = t->vocab.max_len;
    while (start < n) {
        size_t plen = start ? t->prefix_len : 0;
        /* Keys longer than the longest in the vocabulary cannot match: start there. */
        size_t end = start;
        if (plen < maxkey) {
            end = n - start > maxkey - plen ? start + (maxkey - plen) : n;
            while (end > start && end < n && ((uint8_t)w[end] & 0xC0) == 0x80)
                end--;
        }
        int32_t id = -1;
        while (end > start) {
            id = titan_wp_vocab_find(&t->vocab, t->prefix, plen, w + start, end - start);
            if (id >= 0) break;
            do
                end--;
            while (end > start && ((uint8_t)w[end] & 0xC0) == 0x80);
        }
        if (id < 0) {
            ids->n = mark;
            return s_i32_push(ids, t->unk_id);
        }
        if (s_i32_push(ids, id) < 0) return -1;
        start = end;
    }
    return 0;
}

/* BertPreTokenizer, then the model on each word (or the model on the whole text when there is no
 * pre-tokenizer). */
static int s_words(const titan_wordpiece *t, const char *s, size_t n,
                   int (*fn)(const titan_wordpiece *t, const char *w, size_t n, void *ctx), void *ctx)
{
    if (n == 0) return 0;
    if (!t->pretokenize) return fn(t, s, n, ctx);
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, w = SIZE_MAX;
    while (i < n) {
        size_t l = 1;
        int cls;
        if (u[i] < 0x80) {
            cls = s_ascii_class(u[i]);
        } else {
            int32_t c = s_decode(u + i, &l);
            cls = s_is_whitespace(c) ? 1 : s_is_punct(c) ? 2 : 0;
        }
        if (cls == 0) {
            if (w == SIZE_MAX) w = i;
        } else {
            if (w != SIZE_MAX && fn(t, s + w, i - w, ctx) < 0) return -1;
            w = SIZE_MAX;
            if (cls == 2 && fn(t, s + i, l, ctx) < 0) return -1;
        }
        i += l;
    }
    if (w != SIZE_MAX && fn(t, s + w, n - w, ctx) < 0) return -1;
    return 0;
}

static int s_model_word(const titan_wordpiece *t, const char *w, size_t n, void *ctx)
{
    return s_wordpiece(t, w, n, ctx);
}

/* --- added tokens --- */

/* The next added token in s[from..n) that the reference's matcher takes, with its span after lstrip/rstrip:
 * returns its index and sets *start, *stop, *next (where to look next), or -1 when there is none. */
static int32_t s_next_added(const titan_wordpiece *t, const titan_wp_trie *trie, const char *s, size_t n,
                            size_t from, size_t gap, size_t *start, size_t *stop)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t p = from;
    while (p < n) {
        if (!trie->first[u[p]]) {
            p++;
            continue;
        }
        size_t mlen;
        int32_t k = titan_wp_trie_match(trie, s + p, n - p, &mlen);
        if (k < 0) {
            p++;
            continue;
        }
        const titan_wp_added *a = &t->added[k];
        size_t b = p, e = p + mlen;
        if (a->single_word) {
            bool word_before = false, word_after = false;
            if (b > 0) {
                size_t q = b - 1, l;
                while (q > 0 && (u[q] & 0xC0) == 0x80)
                    q--;
                word_before = s_is_word_char(s_decode(u + q, &l));
            }
            if (e < n) {
                size_t l;
                word_after = s_is_word_char(s_decode(u + e, &l));
            }
            if (word_before || word_after) { /* not a word of its own: the reference skips past the match */
                p = e;
                continue;
            }
        }
        if (a->lstrip) {
            size_t q = b;
            while (q > gap) {
                size_t r = q - 1, l;
                while (r > 0 && (u[r] & 0xC0) == 0x80)
                    r--;
                if (!s_is_whitespace(s_decode(u + r, &l))) break;
                q = r;
            }
            b = q;
        }
        if (a->rstrip) {
            while (e < n) {
                size_t l;
                if (!s_is_whitespace(s_decode(u + e, &l))) break;
                e += l;
            }
        }
        *start = b;
        *stop = e;
        return k;
    }
    return -1;
}

static int s_normalized_piece(const titan_wordpiece *t, const char *s, size_t n, titan_wp_scratch *sc)
{
    if (n == 0) return 0;
    if (titan_wp_normalize(t, s, n, sc) < 0) return -1;
    const char *v = sc->norm.v;
    size_t len = sc->norm.n, gap = 0, start, stop;
    int32_t k;
    while (t->norm_trie.n > 1 && (k = s_next_added(t, &t->norm_trie, v, len, gap, gap, &start, &stop)) >= 0) {
        if (s_words(t, v + gap, start - gap, s_model_word, &sc->ids) < 0) return -1;
        if (s_i32_push(&sc->ids, t->added[k].id) < 0) return -1;
        gap = stop;
    }
    return s_words(t, v + gap, len - gap, s_model_word, &sc->ids);
}

/* One sequence's tokens (without special tokens) into sc->ids. */
static int s_encode_seq(const titan_wordpiece *t, const char *s, size_t n, titan_wp_scratch *sc)
{
    sc->ids.n = 0;
    size_t gap = 0, start, stop;
    int32_t k;
    while (t->raw_trie.n > 1 && (k = s_next_added(t, &t->raw_trie, s, n, gap, gap, &start, &stop)) >= 0) {
        if (s_normalized_piece(t, s + gap, start - gap, sc) < 0) return -1;
        if (s_i32_push(&sc->ids, t->added[k].id) < 0) return -1;
        gap = stop;
    }
    return s_normalized_piece(t, s + gap, n - gap, sc);
}

/* --- encoding --- */

static int s_check_text(const char *what, const char *s, size_t n, titan_error *err)
{
    if (n > TITAN_WORDPIECE_MAX_TEXT) {
        err->code = "too_large";
        snprintf(err->msg, sizeof(err->msg), "%s is %zu bytes, over the tokenizer's limit of %u: split it",
                 what, n, TITAN_WORDPIECE_MAX_TEXT);
        return -1;
    }
    if (n && !s) {
        err->code = "bad_request";
        snprintf(err->msg, sizeof(err->msg), "%s is NULL with a length of %zu", what, n);
        return -1;
    }
    size_t bad = n ? titan_wp_utf8_check(s, n) : 0;
    if (bad < n) {
        err->code = "bad_request";
        snprintf(err->msg, sizeof(err->msg), "%s is not valid UTF-8 at byte %zu (0x%02x): send UTF-8 text",
                 what, bad, (unsigned)(uint8_t)s[bad]);
        return -1;
    }
    return 0;
}

static const char *s_strategy_name(titan_wp_strategy s)
{
    return s == TITAN_WP_ONLY_FIRST    ? "only_first"
           : s == TITAN_WP_ONLY_SECOND ? "only_second"
                                       : "longest_first";
}

/* How many tokens of each sequence to keep so that la + lb fits `room`, as the reference's truncate_encodings
 * decides. Returns 0, or -1 with err when its strategy cannot do it. */
static int s_truncate(const titan_wordpiece *t, size_t *la, size_t *lb, bool pair, size_t room,
                      titan_error *err)
{
    if (room == 0) {
        *la = *lb = 0;
        return 0;
    }
    size_t total = *la + *lb;
    if (total <= room) return 0;
    size_t remove = total - room;
    if (t->strategy == TITAN_WP_LONGEST_FIRST) {
        if (!pair) {
            *la = room;
            return 0;
        }
        size_t n1 = *la, n2 = *lb;
        bool swap = n1 > n2;
        if (swap) {
            size_t x = n1;
            n1 = n2;
            n2 = x;
        }
        n2 = n1 > room ? n1 : (n1 > room - n1 ? n1 : room - n1);
        if (n1 + n2 > room) {
            n1 = room / 2;
            n2 = n1 + room % 2;
        }
        if (swap) {
            size_t x = n1;
            n1 = n2;
            n2 = x;
        }
        if (n1 < *la) *la = n1;
        if (n2 < *lb) *lb = n2;
        return 0;
    }
    size_t *target = t->strategy == TITAN_WP_ONLY_FIRST ? la : lb;
    if (t->strategy == TITAN_WP_ONLY_SECOND && !pair) {
        err->code = "too_long";
        snprintf(
            err->msg, sizeof(err->msg),
            "the input is %zu tokens, over the limit of %zu, and the tokenizer's truncation (only_second) "
            "shortens only the second text of a pair",
            total, room);
        return -1;
    }
    if (*target <= remove) {
        err->code = "too_long";
        snprintf(
            err->msg, sizeof(err->msg),
            "the tokenizer's truncation (%s) cannot fit the input: %zu tokens must go and the %s text has "
            "only %zu",
            s_strategy_name(t->strategy), remove, target == la ? "first" : "second", *target);
        return -1;
    }
    *target -= remove;
    return 0;
}

int titan_wordpiece_encode(const titan_wordpiece *t, const char *a, size_t alen, const char *b, size_t blen,
                           size_t max_len, bool truncate, titan_tokens *out, titan_error *err)
{
    bool pair = b != NULL;
    if (s_check_text(pair ? "text a" : "the text", a, alen, err) < 0) return -1;
    if (pair && s_check_text("text b", b, blen, err) < 0) return -1;

    titan_wp_scratch sc = {0};
    titan_wp_i32 ea = {0};
    int32_t *ids = NULL, *types = NULL;
    int rc = -1;
    if (s_encode_seq(t, a ? a : "", alen, &sc) < 0) goto oom;
    ea = sc.ids; /* keep A's tokens; B gets a fresh array */
    memset(&sc.ids, 0, sizeof(sc.ids));
    if (pair && s_encode_seq(t, b, blen, &sc) < 0) goto oom;

    size_t la = ea.n, lb = pair ? sc.ids.n : 0;
    size_t nadd = pair ? t->added_pair : t->added_single;
    size_t cap = max_len ? max_len : t->trunc_max;
    size_t a0 = 0, b0 = 0; /* where the kept tokens start (truncation from the left) */
    if (cap && la + lb + nadd > cap) {
        if (!truncate) {
            err->code = "too_long";
            snprintf(err->msg, sizeof(err->msg),
                     "the input is %zu tokens (%zu special), over the limit of %zu: shorten it, or ask for "
                     "truncation",
                     la + lb + nadd, nadd, cap);
            goto out;
        }
        if (cap < nadd) {
            err->code = "bad_request";
            snprintf(err->msg, sizeof(err->msg),
                     "a limit of %zu tokens leaves no room for the %zu special tokens of the template", cap,
                     nadd);
            goto out;
        }
        size_t ka = la, kb = lb;
        if (s_truncate(t, &ka, &kb, pair, cap - nadd, err) < 0) goto out;
        if (t->trunc_left) {
            a0 = la - ka;
            b0 = lb - kb;
        }
        la = ka;
        lb = kb;
    }

    const titan_wp_piece *tpl = pair ? t->pair : t->single;
    size_t ntpl = pair ? t->npair : t->nsingle, total = la + lb + nadd, n = 0;
    ids = malloc((total ? total : 1) * sizeof(*ids));
    types = malloc((total ? total : 1) * sizeof(*types));
    if (!ids || !types) goto oom;
    for (size_t i = 0; i < ntpl; i++) {
        const titan_wp_piece *p = &tpl[i];
        size_t cnt = p->kind == TITAN_WP_SPECIAL ? p->nids : p->kind == TITAN_WP_SEQ_A ? la : lb;
        if (cnt == 0) continue; /* an empty sequence's array may be NULL */
        const int32_t *src = p->kind == TITAN_WP_SPECIAL ? p->ids
                             : p->kind == TITAN_WP_SEQ_A ? ea.v + a0
                                                         : sc.ids.v + b0;
        memcpy(ids + n, src, cnt * sizeof(*ids));
        for (size_t k = 0; k < cnt; k++)
            types[n + k] = p->type_id;
        n += cnt;
    }
    out->ids = ids;
    out->type_ids = types;
    out->len = n;
    ids = types = NULL;
    rc = 0;
    goto out;
oom:
    err->code = "internal";
    snprintf(err->msg, sizeof(err->msg), "out of memory while tokenizing (%zu + %zu bytes of text)", alen,
             blen);
out:
    free(ids);
    free(types);
    free(ea.v);
    titan_wp_scratch_free(&sc);
    return rc;
}

void titan_tokens_free(titan_tokens *t)
{
    if (!t) return;
    free(t->ids);
    free(t->type_ids);
    memset(t, 0, sizeof(*t));
}

typedef struct {
    void (*word)(void *ctx, const char *w, size_t n);
    void *ctx;
} s_words_ctx;

static int s_emit_word(const titan_wordpiece *t, const char *w, size_t n, void *ctx)
{
    s_words_ctx *c = ctx;
    c->word(c->ctx, w, n);
    return 0;
}

int titan_wordpiece_words(const titan_wordpiece *t, const char *text, size_t len,
                          void (*word)(void *ctx, const char *w, size_t n), void *ctx, titan_error *err)
{
    if (s_check_text("the text", text, len, err) < 0) return -1;
    titan_wp_scratch sc = {0};
    s_words_ctx c = {word, ctx};
    int rc = 0;
    if (len && (titan_wp_normalize(t, text, len, &sc) < 0 ||
                s_words(t, sc.norm.v, sc.norm.n, s_emit_word, &c) < 0)) {
        err->code = "internal";
        snprintf(err->msg, sizeof(err->msg), "out of memory while normalizing %zu bytes of text", len);
        rc = -1;
    }
    titan_wp_scratch_free(&sc);
    return rc;
}

int32_t titan_wordpiece_id(const titan_wordpiece *t, const char *token)
{
    size_t n = strlen(token);
    for (size_t i = 0; i < t->nadded; i++)
        if (t->added[i].len == n && !memcmp(t->added[i].content, token, n)) return t->added[i].id;
    return titan_wp_vocab_find(&t->vocab, "", 0, token, n);
}

size_t titan_wordpiece_vocab_size(const titan_wordpiece *t)
{
    return (size_t)t->max_id + 1;
}

size_t titan_wordpiece_max_length(const titan_wordpiece *t)
{
    return t->trunc_max;
}
