/* wordpiece_load.c - opening a WordPiece tokenizer: tokenizer.json, or vocab.txt with tokenizer_config.json;
 * the vocabulary's hash table and the added tokens' trie. Every field is checked; anything titan does not run
 * the way the reference does is refused with what it is and what is supported. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "wordpiece_internal.h"

/* --- the vocabulary --- */

#define S_FNV_INIT 0xcbf29ce484222325ULL

static inline uint64_t s_hash(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

int titan_wp_vocab_init(titan_wp_vocab *v, size_t n)
{
    memset(v, 0, sizeof(*v));
    size_t cap = 16;
    while (cap < 2 * n + 2)
        cap *= 2;
    v->slots = malloc(cap * sizeof(*v->slots));
    if (!v->slots) return -1;
    for (size_t i = 0; i < cap; i++)
        v->slots[i].id = -1;
    v->cap = cap;
    return 0;
}

int titan_wp_vocab_put(titan_wp_vocab *v, const char *key, size_t len, int32_t id)
{
    if (len > TITAN_WORDPIECE_MAX_TOKEN || id < 0) return -1;
    if (2 * (v->n + 1) > v->cap) return -1; /* sized by init */
    uint64_t h = s_hash(S_FNV_INIT, key, len);
    size_t mask = v->cap - 1, i = (size_t)h & mask;
    for (;; i = (i + 1) & mask) {
        titan_wp_slot *s = &v->slots[i];
        if (s->id < 0) break;
        if (s->hash == h && s->len == len && !memcmp(v->keys + s->off, key, len)) {
            s->id = id;
            return 0;
        }
    }
    if (v->keys_len + len > UINT32_MAX) return -1;
    if (v->keys_len + len > v->keys_cap) {
        size_t cap = v->keys_cap ? v->keys_cap : 4096;
        while (cap < v->keys_len + len)
            cap *= 2;
        char *p = realloc(v->keys, cap);
        if (!p) return -1;
        v->keys = p;
        v->keys_cap = cap;
    }
    if (len) memcpy(v->keys + v->keys_len, key, len);
    v->slots[i] = (titan_wp_slot){h, (uint32_t)v->keys_len, (uint32_t)len, id};
    v->keys_len += len;
    v->n++;
    if (len > v->max_len) v->max_len = len;
    return 0;
}

int32_t titan_wp_vocab_find(const titan_wp_vocab *v, const char *pre, size_t plen, const char *s, size_t slen)
{
    if (!v->slots || plen + slen > v->max_len) return -1;
    uint64_t h = s_hash(s_hash(S_FNV_INIT, pre, plen), s, slen);
    size_t mask = v->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        const titan_wp_slot *e = &v->slots[i];
        if (e->id < 0) return -1;
        if (e->hash == h && e->len == plen + slen && !memcmp(v->keys + e->off, pre, plen) &&
            !memcmp(v->keys + e->off + plen, s, slen))
            return e->id;
    }
}

void titan_wp_vocab_free(titan_wp_vocab *v)
{
    free(v->keys);
    free(v->slots);
    memset(v, 0, sizeof(*v));
}

/* --- the added tokens' trie --- */

static int32_t s_trie_node(titan_wp_trie *t, uint8_t byte)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        titan_wp_node *p = realloc(t->nodes, cap * sizeof(*p));
        if (!p) return -1;
        t->nodes = p;
        t->cap = cap;
    }
    t->nodes[t->n] = (titan_wp_node){-1, -1, -1, byte};
    return (int32_t)t->n++;
}

int titan_wp_trie_add(titan_wp_trie *t, const char *s, size_t n, int32_t token)
{
    if (n == 0) return -1;
    if (t->n == 0 && s_trie_node(t, 0) < 0) return -1;
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = t->nodes[cur].child, prev = -1;
        while (c >= 0 && t->nodes[c].byte != b) {
            prev = c;
            c = t->nodes[c].sibling;
        }
        if (c < 0) {
            c = s_trie_node(t, b);
            if (c < 0) return -1;
            if (prev < 0)
                t->nodes[cur].child = c;
            else
                t->nodes[prev].sibling = c;
        }
        cur = c;
    }
    if (t->nodes[cur].token < 0) t->nodes[cur].token = token;
    t->first[(uint8_t)s[0]] = true;
    return 0;
}

int32_t titan_wp_trie_match(const titan_wp_trie *t, const char *s, size_t n, size_t *len)
{
    int32_t best = -1, cur = 0;
    if (t->n == 0) return -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = t->nodes[cur].child;
        while (c >= 0 && t->nodes[c].byte != b)
            c = t->nodes[c].sibling;
        if (c < 0) break;
        cur = c;
        if (t->nodes[c].token >= 0) {
            best = t->nodes[c].token;
            *len = i + 1;
        }
    }
    return best;
}

void titan_wp_trie_free(titan_wp_trie *t)
{
    free(t->nodes);
    memset(t, 0, sizeof(*t));
}

/* --- helpers --- */

static int s_bad(titan_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int s_bad(titan_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err->code = "bad_model";
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return -1;
}

static int s_oom(titan_error *err, const char *name)
{
    return s_bad(err, "%s: out of memory while loading the tokenizer", name);
}

/* Reads a whole regular file of at most `cap` bytes. Returns 0, 1 when it does not exist, or -1 with err. */
static int s_read_file(const char *path, size_t cap, char **buf, size_t *len, titan_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 1;
        return s_bad(err, "%s: cannot open it: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return s_bad(err, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > cap) {
        close(fd);
        return s_bad(err, "%s: %lld bytes, over the limit of %zu for this file", path, (long long)st.st_size,
                     cap);
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *p = malloc(n + 1);
    if (!p) {
        close(fd);
        return s_oom(err, path);
    }
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(p);
            close(fd);
            return s_bad(err, "%s: cannot read it: %s", path,
                         r < 0 ? strerror(e) : "it got shorter while read");
        }
        got += (size_t)r;
    }
    close(fd);
    p[n] = '\0';
    *buf = p;
    *len = n;
    return 0;
}

/* A JSON string's bytes; NULL when `v` is not a string. */
static const char *s_str(const json_t *v, size_t *len)
{
    if (!json_is_string(v)) return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

/* An optional boolean field: 0 and *out (def when absent or null), or -1 with err. */
static int s_bool(const json_t *obj, const char *key, bool def, bool required, bool *out, const char *name,
                  const char *where, titan_error *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required) return s_bad(err, "%s: %s.%s is missing (true or false)", name, where, key);
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) return s_bad(err, "%s: %s.%s must be true or false", name, where, key);
    *out = json_is_true(v);
    return 0;
}

/* An integer field within [lo, hi]. */
static int s_int(const json_t *v, long long lo, long long hi, long long *out, const char *name,
                 const char *what, titan_error *err)
{
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return s_bad(err, "%s: %s must be an integer from %lld to %lld", name, what, lo, hi);
    *out = json_integer_value(v);
    return 0;
}

static char *s_dup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        if (n) memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* --- the parts of a tokenizer --- */

static void s_pieces_free(titan_wp_piece *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++)
        free(p[i].ids);
    free(p);
}

void titan_wordpiece_free(titan_wordpiece **pp)
{
    if (!pp || !*pp) return;
    titan_wordpiece *t = *pp;
    titan_wp_vocab_free(&t->vocab);
    free(t->prefix);
    for (size_t i = 0; t->added && i < t->nadded; i++)
        free(t->added[i].content);
    free(t->added);
    titan_wp_trie_free(&t->raw_trie);
    titan_wp_trie_free(&t->norm_trie);
    s_pieces_free(t->single, t->nsingle);
    s_pieces_free(t->pair, t->npair);
    free(t);
    *pp = NULL;
}

static void s_note_id(titan_wordpiece *t, int32_t id)
{
    if (id > t->max_id) t->max_id = id;
}

static int s_set_unk_prefix(titan_wordpiece *t, const char *unk, size_t unk_len, const char *prefix,
                            size_t plen, const char *name, titan_error *err)
{
    t->unk_id = titan_wp_vocab_find(&t->vocab, "", 0, unk, unk_len);
    if (t->unk_id < 0)
        return s_bad(
            err, "%s: the unknown token \"%.*s\" is not in the vocabulary (an unknown word would have no id)",
            name, (int)(unk_len > 64 ? 64 : unk_len), unk);
    if (plen > TITAN_WORDPIECE_MAX_TOKEN)
        return s_bad(err, "%s: continuing_subword_prefix is %zu bytes, over the limit of %u", name, plen,
                     TITAN_WORDPIECE_MAX_TOKEN);
    t->prefix = s_dup(prefix, plen);
    if (!t->prefix) return s_oom(err, name);
    t->prefix_len = plen;
    return 0;
}

/* model: {"type": "WordPiece", "vocab": {token: id}, "unk_token", "continuing_subword_prefix",
 * "max_input_chars_per_word"} (the reference requires the last four; "type" may be left out). */
static int s_model(titan_wordpiece *t, const json_t *m, const char *name, titan_error *err)
{
    if (!json_is_object(m)) return s_bad(err, "%s: \"model\" is missing or not an object", name);
    json_t *type = json_object_get(m, "type");
    if (type && !json_is_string(type)) return s_bad(err, "%s: model.type must be a string", name);
    if (type && strcmp(json_string_value(type), "WordPiece") != 0)
        return s_bad(
            err,
            "%s: model type \"%.64s\" is not supported: titan's encoders tokenize with WordPiece (BERT and "
            "its family: MiniLM, BGE, E5...); a model with another tokenizer cannot be served natively",
            name, json_string_value(type));
    json_t *vocab = json_object_get(m, "vocab");
    size_t unk_len = 0, plen = 0;
    const char *unk = s_str(json_object_get(m, "unk_token"), &unk_len);
    const char *prefix = s_str(json_object_get(m, "continuing_subword_prefix"), &plen);
    json_t *mc = json_object_get(m, "max_input_chars_per_word");
    if (!json_is_object(vocab)) return s_bad(err, "%s: model.vocab is missing or not an object", name);
    if (!unk) return s_bad(err, "%s: model.unk_token is missing or not a string", name);
    if (!prefix) return s_bad(err, "%s: model.continuing_subword_prefix is missing or not a string", name);
    long long mcv;
    if (s_int(mc, 0, (long long)1 << 40, &mcv, name, "model.max_input_chars_per_word", err) < 0) return -1;
    t->max_chars = (size_t)mcv;

    size_t n = json_object_size(vocab);
    if (n > TITAN_WORDPIECE_MAX_ID)
        return s_bad(err, "%s: model.vocab has %zu tokens, over the limit of %d", name, n,
                     TITAN_WORDPIECE_MAX_ID);
    if (titan_wp_vocab_init(&t->vocab, n) < 0) return s_oom(err, name);
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach(vocab, key, klen, val)
    {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= TITAN_WORDPIECE_MAX_ID)
            return s_bad(err, "%s: model.vocab[\"%.64s\"] must be an integer id from 0 to %d", name, key,
                         TITAN_WORDPIECE_MAX_ID - 1);
        if (klen > TITAN_WORDPIECE_MAX_TOKEN)
            return s_bad(err, "%s: model.vocab has a token of %zu bytes, over the limit of %u (\"%.32s...\")",
                         name, klen, TITAN_WORDPIECE_MAX_TOKEN, key);
        int32_t id = (int32_t)json_integer_value(val);
        if (titan_wp_vocab_put(&t->vocab, key, klen, id) < 0) return s_oom(err, name);
        s_note_id(t, id);
    }
    return s_set_unk_prefix(t, unk, unk_len, prefix, plen, name, err);
}

/* normalizer: null, or {"type": "BertNormalizer", clean_text, handle_chinese_chars, strip_accents (null: as
 * lowercase), lowercase}. */
static int s_normalizer(titan_wordpiece *t, const json_t *n, const char *name, titan_error *err)
{
    if (!n || json_is_null(n)) return 0;
    const char *type = json_is_object(n) ? json_string_value(json_object_get(n, "type")) : NULL;
    if (!type) return s_bad(err, "%s: normalizer must be null or an object with a \"type\"", name);
    if (strcmp(type, "BertNormalizer") != 0)
        return s_bad(err,
                     "%s: normalizer type \"%.64s\" is not supported (supported: BertNormalizer, or none)",
                     name, type);
    t->normalize = true;
    if (s_bool(n, "clean_text", true, true, &t->clean_text, name, "normalizer", err) < 0 ||
        s_bool(n, "handle_chinese_chars", true, true, &t->chinese, name, "normalizer", err) < 0 ||
        s_bool(n, "lowercase", true, true, &t->lowercase, name, "normalizer", err) < 0 ||
        s_bool(n, "strip_accents", t->lowercase, false, &t->strip_accents, name, "normalizer", err) < 0)
        return -1;
    return 0;
}

static int s_pre_tokenizer(titan_wordpiece *t, const json_t *p, const char *name, titan_error *err)
{
    if (!p || json_is_null(p)) return 0;
    const char *type = json_is_object(p) ? json_string_value(json_object_get(p, "type")) : NULL;
    if (!type) return s_bad(err, "%s: pre_tokenizer must be null or an object with a \"type\"", name);
    if (strcmp(type, "BertPreTokenizer") != 0)
        return s_bad(
            err, "%s: pre_tokenizer type \"%.64s\" is not supported (supported: BertPreTokenizer, or none)",
            name, type);
    t->pretokenize = true;
    return 0;
}

/* Gives each added token its id as the reference does (the "id" in the file is not used): the vocabulary's id
 * when the text is in it, else the next one after the vocabulary's size. Then builds the two tries. */
static int s_finish_added(titan_wordpiece *t, const char *name, titan_error *err)
{
    int64_t next = (int64_t)t->vocab.n;
    titan_wp_vocab seen;
    if (titan_wp_vocab_init(&seen, t->nadded) < 0) return s_oom(err, name);
    for (size_t i = 0; i < t->nadded; i++) {
        titan_wp_added *a = &t->added[i];
        bool twice = titan_wp_vocab_find(&seen, "", 0, a->content, a->len) >= 0;
        if (twice || titan_wp_vocab_put(&seen, a->content, a->len, 0) < 0) {
            titan_wp_vocab_free(&seen);
            return twice ? s_bad(err, "%s: added token \"%.64s\" is listed twice", name, a->content)
                         : s_oom(err, name);
        }
        int32_t id = titan_wp_vocab_find(&t->vocab, "", 0, a->content, a->len);
        if (id < 0) {
            if (next >= TITAN_WORDPIECE_MAX_ID) {
                titan_wp_vocab_free(&seen);
                return s_bad(err, "%s: added token \"%.64s\" would get id %lld, over the limit of %d", name,
                             a->content, (long long)next, TITAN_WORDPIECE_MAX_ID - 1);
            }
            id = (int32_t)next++;
        }
        a->id = id;
        s_note_id(t, id);
    }
    titan_wp_vocab_free(&seen);
    /* The reference's matcher holds the special tokens first, then the others, each in the file's order. */
    titan_wp_scratch sc = {0};
    int rc = 0;
    for (int special = 1; special >= 0 && rc == 0; special--) {
        for (size_t i = 0; i < t->nadded && rc == 0; i++) {
            titan_wp_added *a = &t->added[i];
            if (a->special != (bool)special) continue;
            if (!a->normalized) {
                if (titan_wp_trie_add(&t->raw_trie, a->content, a->len, (int32_t)i) < 0)
                    rc = s_oom(err, name);
                continue;
            }
            if (titan_wp_normalize(t, a->content, a->len, &sc) < 0) {
                rc = s_oom(err, name);
            } else if (sc.norm.n == 0) {
                rc = s_bad(err, "%s: added token \"%.64s\" is normalized and its normalized text is empty",
                           name, a->content);
            } else if (titan_wp_trie_add(&t->norm_trie, sc.norm.v, sc.norm.n, (int32_t)i) < 0) {
                rc = s_oom(err, name);
            }
        }
    }
    titan_wp_scratch_free(&sc);
    return rc;
}

/* added_tokens: [{"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"}]. */
static int s_added_tokens(titan_wordpiece *t, const json_t *arr, const char *name, titan_error *err)
{
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return s_bad(err, "%s: added_tokens must be an array", name);
    size_t n = json_array_size(arr);
    if (n > TITAN_WORDPIECE_MAX_ADDED)
        return s_bad(err, "%s: %zu added tokens, over the limit of %u", name, n, TITAN_WORDPIECE_MAX_ADDED);
    t->added = calloc(n ? n : 1, sizeof(*t->added));
    if (!t->added) return s_oom(err, name);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        char where[48];
        snprintf(where, sizeof(where), "added_tokens[%zu]", i);
        size_t len;
        const char *c = s_str(json_is_object(o) ? json_object_get(o, "content") : NULL, &len);
        if (!c) return s_bad(err, "%s: %s needs a \"content\" string", name, where);
        if (len > TITAN_WORDPIECE_MAX_TOKEN)
            return s_bad(err, "%s: %s is %zu bytes, over the limit of %u", name, where, len,
                         TITAN_WORDPIECE_MAX_TOKEN);
        if (titan_wp_utf8_check(c, len) < len) return s_bad(err, "%s: %s is not valid UTF-8", name, where);
        titan_wp_added *a = &t->added[t->nadded];
        if (s_bool(o, "single_word", false, false, &a->single_word, name, where, err) < 0 ||
            s_bool(o, "lstrip", false, false, &a->lstrip, name, where, err) < 0 ||
            s_bool(o, "rstrip", false, false, &a->rstrip, name, where, err) < 0 ||
            s_bool(o, "normalized", true, false, &a->normalized, name, where, err) < 0 ||
            s_bool(o, "special", false, false, &a->special, name, where, err) < 0)
            return -1;
        if (len == 0) continue; /* the reference ignores empty ones */
        a->content = s_dup(c, len);
        if (!a->content) return s_oom(err, name);
        a->len = len;
        t->nadded++;
    }
    return 0;
}

/* A special token's ids for a template. */
static int s_special_piece(titan_wordpiece *t, titan_wp_piece *p, const int32_t *ids, size_t n,
                           const char *name, titan_error *err)
{
    p->kind = TITAN_WP_SPECIAL;
    p->ids = malloc((n ? n : 1) * sizeof(*p->ids));
    if (!p->ids) return s_oom(err, name);
    for (size_t i = 0; i < n; i++) {
        p->ids[i] = ids[i];
        s_note_id(t, ids[i]);
    }
    p->nids = n;
    return 0;
}

/* One TemplateProcessing template: [{"SpecialToken": {"id", "type_id"}} | {"Sequence": {"id": "A"|"B",
 * "type_id"}}]. */
static int s_template(titan_wordpiece *t, const json_t *tpl, const json_t *specials, bool pair,
                      titan_wp_piece **out, size_t *nout, size_t *nadded, const char *name, titan_error *err)
{
    const char *which = pair ? "pair" : "single";
    if (!json_is_array(tpl) || json_array_size(tpl) > 64)
        return s_bad(err, "%s: post_processor.%s must be an array of at most 64 pieces", name, which);
    size_t n = json_array_size(tpl);
    *out = calloc(n ? n : 1, sizeof(**out));
    if (!*out) return s_oom(err, name);
    int seen_a = 0, seen_b = 0;
    *nadded = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(tpl, i), *sp = json_object_get(e, "SpecialToken"),
               *sq = json_object_get(e, "Sequence");
        json_t *body = sp ? sp : sq;
        const char *id = json_string_value(json_object_get(body, "id"));
        long long type_id;
        if (!json_is_object(body) || !id)
            return s_bad(err,
                         "%s: post_processor.%s[%zu] must be {\"SpecialToken\": {\"id\", \"type_id\"}} or "
                         "{\"Sequence\": {\"id\", \"type_id\"}}",
                         name, which, i);
        char what[96];
        snprintf(what, sizeof(what), "post_processor.%s[%zu].type_id", which, i);
        if (s_int(json_object_get(body, "type_id"), 0, 65535, &type_id, name, what, err) < 0) return -1;
        titan_wp_piece *p = &(*out)[i];
        p->type_id = (int32_t)type_id;
        *nout = i + 1;
        if (sq) {
            bool is_a = strcmp(id, "A") == 0, is_b = strcmp(id, "B") == 0;
            if (!is_a && !is_b)
                return s_bad(err, "%s: post_processor.%s[%zu] names sequence \"%.16s\" (A or B)", name, which,
                             i, id);
            p->kind = is_a ? TITAN_WP_SEQ_A : TITAN_WP_SEQ_B;
            seen_a += is_a;
            seen_b += is_b;
            continue;
        }
        json_t *st = json_object_get(specials, id), *ids = json_object_get(st, "ids");
        if (!json_is_array(ids) || json_array_size(ids) > 16)
            return s_bad(err,
                         "%s: post_processor.%s uses special token \"%.64s\", which special_tokens does not "
                         "give with its \"ids\" (at most 16)",
                         name, which, id);
        int32_t v[16];
        size_t nv = json_array_size(ids);
        for (size_t k = 0; k < nv; k++) {
            long long x;
            snprintf(what, sizeof(what), "post_processor.special_tokens[\"%.32s\"].ids[%zu]", id, k);
            if (s_int(json_array_get(ids, k), 0, TITAN_WORDPIECE_MAX_ID - 1, &x, name, what, err) < 0)
                return -1;
            v[k] = (int32_t)x;
        }
        if (s_special_piece(t, p, v, nv, name, err) < 0) return -1;
        *nadded += nv;
    }
    if (seen_a != 1 || seen_b != (pair ? 1 : 0))
        return s_bad(err, "%s: post_processor.%s must use sequence A%s exactly once%s", name, which,
                     pair ? " and sequence B" : "", pair ? "" : " (and not B)");
    return 0;
}

/* The template [CLS] A [SEP] / [CLS] A [SEP] B:1 [SEP]:1, from the ids of cls and sep. */
static int s_bert_templates(titan_wordpiece *t, int32_t cls, int32_t sep, const char *name, titan_error *err)
{
    t->single = calloc(3, sizeof(*t->single));
    t->pair = calloc(5, sizeof(*t->pair));
    if (!t->single || !t->pair) return s_oom(err, name);
    t->nsingle = 3;
    t->npair = 5;
    if (s_special_piece(t, &t->single[0], &cls, 1, name, err) < 0 ||
        s_special_piece(t, &t->single[2], &sep, 1, name, err) < 0 ||
        s_special_piece(t, &t->pair[0], &cls, 1, name, err) < 0 ||
        s_special_piece(t, &t->pair[2], &sep, 1, name, err) < 0 ||
        s_special_piece(t, &t->pair[4], &sep, 1, name, err) < 0)
        return -1;
    t->single[1].kind = TITAN_WP_SEQ_A;
    t->pair[1].kind = TITAN_WP_SEQ_A;
    t->pair[3].kind = TITAN_WP_SEQ_B;
    t->pair[3].type_id = 1;
    t->pair[4].type_id = 1;
    t->added_single = 2;
    t->added_pair = 3;
    return 0;
}

/* Without a post-processor: A alone (type 0), or A then B (type 1), no special tokens. */
static int s_plain_templates(titan_wordpiece *t, const char *name, titan_error *err)
{
    t->single = calloc(1, sizeof(*t->single));
    t->pair = calloc(2, sizeof(*t->pair));
    if (!t->single || !t->pair) return s_oom(err, name);
    t->nsingle = 1;
    t->npair = 2;
    t->single[0].kind = TITAN_WP_SEQ_A;
    t->pair[0].kind = TITAN_WP_SEQ_A;
    t->pair[1].kind = TITAN_WP_SEQ_B;
    t->pair[1].type_id = 1;
    return 0;
}

/* BertProcessing's "sep"/"cls": ["[SEP]", 102]. */
static int s_bert_pair(const json_t *v, const char *key, int32_t *id, const char *name, titan_error *err)
{
    json_t *e = json_object_get(v, key);
    long long x;
    char what[48];
    snprintf(what, sizeof(what), "post_processor.%s[1]", key);
    if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_string(json_array_get(e, 0)))
        return s_bad(err, "%s: post_processor.%s must be [token, id]", name, key);
    if (s_int(json_array_get(e, 1), 0, TITAN_WORDPIECE_MAX_ID - 1, &x, name, what, err) < 0) return -1;
    *id = (int32_t)x;
    return 0;
}

static int s_post_processor(titan_wordpiece *t, const json_t *p, const char *name, titan_error *err)
{
    if (!p || json_is_null(p)) return s_plain_templates(t, name, err);
    const char *type = json_is_object(p) ? json_string_value(json_object_get(p, "type")) : NULL;
    if (!type) return s_bad(err, "%s: post_processor must be null or an object with a \"type\"", name);
    if (strcmp(type, "BertProcessing") == 0) {
        int32_t cls, sep;
        if (s_bert_pair(p, "cls", &cls, name, err) < 0 || s_bert_pair(p, "sep", &sep, name, err) < 0)
            return -1;
        return s_bert_templates(t, cls, sep, name, err);
    }
    if (strcmp(type, "TemplateProcessing") != 0)
        return s_bad(err,
                     "%s: post_processor type \"%.64s\" is not supported (supported: TemplateProcessing, "
                     "BertProcessing, or none)",
                     name, type);
    json_t *specials = json_object_get(p, "special_tokens");
    if (specials && !json_is_object(specials))
        return s_bad(err, "%s: post_processor.special_tokens must be an object", name);
    if (s_template(t, json_object_get(p, "single"), specials, false, &t->single, &t->nsingle,
                   &t->added_single, name, err) < 0)
        return -1;
    return s_template(t, json_object_get(p, "pair"), specials, true, &t->pair, &t->npair, &t->added_pair,
                      name, err);
}

/* truncation: null, or {"max_length", "strategy": "LongestFirst"|"OnlyFirst"|"OnlySecond", "direction":
 * "Right"|"Left", "stride"} (the stride only shapes the overflowing pieces, which titan does not return). */
static int s_truncation(titan_wordpiece *t, const json_t *tr, const char *name, titan_error *err)
{
    if (!tr || json_is_null(tr)) return 0;
    if (!json_is_object(tr)) return s_bad(err, "%s: truncation must be null or an object", name);
    long long max;
    if (s_int(json_object_get(tr, "max_length"), 1, (long long)1 << 30, &max, name, "truncation.max_length",
              err) < 0)
        return -1;
    t->trunc_max = (size_t)max;
    json_t *s = json_object_get(tr, "strategy"), *d = json_object_get(tr, "direction");
    const char *sv = json_string_value(s), *dv = json_string_value(d);
    if (s && !json_is_null(s)) {
        if (sv && (!strcmp(sv, "LongestFirst") || !strcmp(sv, "longest_first")))
            t->strategy = TITAN_WP_LONGEST_FIRST;
        else if (sv && (!strcmp(sv, "OnlyFirst") || !strcmp(sv, "only_first")))
            t->strategy = TITAN_WP_ONLY_FIRST;
        else if (sv && (!strcmp(sv, "OnlySecond") || !strcmp(sv, "only_second")))
            t->strategy = TITAN_WP_ONLY_SECOND;
        else
            return s_bad(err, "%s: truncation.strategy must be LongestFirst, OnlyFirst or OnlySecond", name);
    }
    if (d && !json_is_null(d)) {
        if (dv && (!strcmp(dv, "Right") || !strcmp(dv, "right")))
            t->trunc_left = false;
        else if (dv && (!strcmp(dv, "Left") || !strcmp(dv, "left")))
            t->trunc_left = true;
        else
            return s_bad(err, "%s: truncation.direction must be Right or Left", name);
    }
    return 0;
}

int titan_wordpiece_from_json(const char *text, size_t len, const char *name, titan_wordpiece **out,
                              titan_error *err)
{
    if (!name) name = "tokenizer.json";
    if (len > TITAN_WORDPIECE_MAX_FILE)
        return s_bad(err, "%s: %zu bytes, over the limit of %u", name, len, TITAN_WORDPIECE_MAX_FILE);
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &je);
    if (!root)
        return s_bad(err, "%s: not valid JSON (line %d, column %d: %s)", name, je.line, je.column, je.text);
    titan_wordpiece *t = calloc(1, sizeof(*t));
    int rc = -1;
    if (!t) {
        s_oom(err, name);
        goto out;
    }
    if (!json_is_object(root)) {
        s_bad(err, "%s: not a JSON object", name);
        goto out;
    }
    json_t *version = json_object_get(root, "version");
    if (version && !(json_is_string(version) && !strcmp(json_string_value(version), "1.0"))) {
        s_bad(err, "%s: version must be \"1.0\" (the format of HuggingFace's tokenizers)", name);
        goto out;
    }
    if (s_model(t, json_object_get(root, "model"), name, err) < 0 ||
        s_normalizer(t, json_object_get(root, "normalizer"), name, err) < 0 ||
        s_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), name, err) < 0 ||
        s_added_tokens(t, json_object_get(root, "added_tokens"), name, err) < 0 ||
        s_finish_added(t, name, err) < 0 ||
        s_post_processor(t, json_object_get(root, "post_processor"), name, err) < 0 ||
        s_truncation(t, json_object_get(root, "truncation"), name, err) < 0)
        goto out;
    if (t->trunc_max && t->trunc_max < t->added_pair && t->trunc_max < t->added_single) {
        s_bad(err, "%s: truncation.max_length %zu leaves no room for the template's special tokens", name,
              t->trunc_max);
        goto out;
    }
    *out = t;
    t = NULL;
    rc = 0;
out:
    titan_wordpiece_free(&t);
    json_decref(root);
    return rc;
}

/* --- vocab.txt and tokenizer_config.json --- */

/* A token field of tokenizer_config.json: a string, or an AddedToken object with "content"; def when absent.
 */
static int s_config_token(const json_t *cfg, const char *key, const char *def, const char **out, size_t *len,
                          const char *name, titan_error *err)
{
    json_t *v = json_object_get(cfg, key);
    if (v && json_is_object(v)) v = json_object_get(v, "content");
    if (!v || json_is_null(v)) {
        *out = def;
        *len = strlen(def);
        return 0;
    }
    if (!(*out = s_str(v, len)) || *len == 0 || *len > TITAN_WORDPIECE_MAX_TOKEN)
        return s_bad(err, "%s: %s must be a token (a string, or an object with \"content\")", name, key);
    return 0;
}

static int s_from_vocab_txt(const char *dir, const char *vpath, titan_wordpiece **out, titan_error *err)
{
    char cpath[4096];
    snprintf(cpath, sizeof(cpath), "%s/tokenizer_config.json", dir);
    char *vbuf = NULL, *cbuf = NULL;
    size_t vlen = 0, clen = 0;
    json_t *cfg = NULL;
    titan_wordpiece *t = NULL;
    int rc = -1, r;
    if ((r = s_read_file(vpath, TITAN_WORDPIECE_MAX_FILE, &vbuf, &vlen, err)) != 0) {
        if (r > 0) s_bad(err, "%s: it went away while opening it", vpath);
        goto out;
    }
    if ((r = s_read_file(cpath, TITAN_WORDPIECE_MAX_CONFIG, &cbuf, &clen, err)) < 0) goto out;
    if (r == 0) {
        json_error_t je;
        /* transformers writes model_max_length as a 31-digit integer when there is no limit */
        cfg = json_loadb(cbuf, clen, JSON_DECODE_INT_AS_REAL, &je);
        if (!json_is_object(cfg)) {
            s_bad(err, "%s: not a JSON object (line %d: %s)", cpath, je.line, cfg ? "" : je.text);
            goto out;
        }
    } else {
        cfg = json_object();
        if (!cfg) {
            s_oom(err, cpath);
            goto out;
        }
    }
    t = calloc(1, sizeof(*t));
    if (!t) {
        s_oom(err, vpath);
        goto out;
    }

    /* The lines as Python reads them (universal newlines): \n, \r\n and \r end a line; the id is its number.
     */
    size_t lines = 0;
    for (size_t i = 0; i < vlen; i++)
        if (vbuf[i] == '\n' || (vbuf[i] == '\r' && (i + 1 == vlen || vbuf[i + 1] != '\n'))) lines++;
    if (vlen && vbuf[vlen - 1] != '\n' && vbuf[vlen - 1] != '\r') lines++;
    if (lines > TITAN_WORDPIECE_MAX_ID) {
        s_bad(err, "%s: %zu lines, over the limit of %d tokens", vpath, lines, TITAN_WORDPIECE_MAX_ID);
        goto out;
    }
    if (titan_wp_vocab_init(&t->vocab, lines) < 0) {
        s_oom(err, vpath);
        goto out;
    }
    size_t start = 0, line = 0;
    for (size_t i = 0; i <= vlen; i++) {
        bool eol = i == vlen ? start < vlen : (vbuf[i] == '\n' || vbuf[i] == '\r');
        if (!eol) continue;
        size_t n = i - start;
        if (n > TITAN_WORDPIECE_MAX_TOKEN) {
            s_bad(err, "%s: line %zu is %zu bytes, over the limit of %u for a token", vpath, line + 1, n,
                  TITAN_WORDPIECE_MAX_TOKEN);
            goto out;
        }
        if (titan_wp_utf8_check(vbuf + start, n) < n) {
            s_bad(err, "%s: line %zu is not valid UTF-8", vpath, line + 1);
            goto out;
        }
        if (titan_wp_vocab_put(&t->vocab, vbuf + start, n, (int32_t)line) < 0) {
            s_oom(err, vpath);
            goto out;
        }
        s_note_id(t, (int32_t)line);
        line++;
        if (i < vlen && vbuf[i] == '\r' && i + 1 < vlen && vbuf[i + 1] == '\n') i++;
        start = i + 1;
    }

    /* transformers' BertTokenizer, converted to a fast tokenizer: BertNormalizer(clean_text=True,
     * handle_chinese_chars=tokenize_chinese_chars, strip_accents, lowercase=do_lower_case), BertPreTokenizer,
     * WordPiece("##", 100), the template [CLS] $A [SEP] / $B:1 [SEP]:1, and the special tokens as added
     * tokens. */
    bool basic;
    if (s_bool(cfg, "do_basic_tokenize", true, false, &basic, cpath, "tokenizer_config", err) < 0) goto out;
    if (!basic) {
        s_bad(err, "%s: do_basic_tokenize false is not supported (titan runs BERT's basic tokenizer)", cpath);
        goto out;
    }
    t->normalize = true;
    t->clean_text = true;
    t->pretokenize = true;
    t->max_chars = 100;
    if (s_bool(cfg, "do_lower_case", true, false, &t->lowercase, cpath, "tokenizer_config", err) < 0 ||
        s_bool(cfg, "tokenize_chinese_chars", true, false, &t->chinese, cpath, "tokenizer_config", err) < 0 ||
        s_bool(cfg, "strip_accents", t->lowercase, false, &t->strip_accents, cpath, "tokenizer_config", err) <
            0)
        goto out;
    json_t *mml = json_object_get(cfg, "model_max_length");
    if (mml && !json_is_null(mml)) {
        if (!json_is_number(mml) || json_number_value(mml) < 1) {
            s_bad(err, "%s: model_max_length must be a positive number", cpath);
            goto out;
        }
        /* transformers writes a huge number (1e30) for "no limit" */
        if (json_number_value(mml) <= (double)(1 << 20)) t->trunc_max = (size_t)json_number_value(mml);
    }
    static const char *const keys[] = {"unk_token", "sep_token", "pad_token", "cls_token", "mask_token"};
    static const char *const defs[] = {"[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"};
    const char *tok[5];
    size_t toklen[5];
    for (int i = 0; i < 5; i++)
        if (s_config_token(cfg, keys[i], defs[i], &tok[i], &toklen[i], cpath, err) < 0) goto out;
    int32_t sep = titan_wp_vocab_find(&t->vocab, "", 0, tok[1], toklen[1]);
    int32_t cls = titan_wp_vocab_find(&t->vocab, "", 0, tok[3], toklen[3]);
    if (sep < 0 || cls < 0) {
        s_bad(err, "%s: the %s token \"%.64s\" is not in the vocabulary", vpath, cls < 0 ? "cls" : "sep",
              cls < 0 ? tok[3] : tok[1]);
        goto out;
    }
    if (s_set_unk_prefix(t, tok[0], toklen[0], "##", 2, vpath, err) < 0) goto out;
    t->added = calloc(5, sizeof(*t->added));
    if (!t->added) {
        s_oom(err, vpath);
        goto out;
    }
    for (int i = 0; i < 5; i++) {
        bool dup = false;
        for (size_t k = 0; k < t->nadded; k++)
            dup |= t->added[k].len == toklen[i] && !memcmp(t->added[k].content, tok[i], toklen[i]);
        if (dup) continue;
        titan_wp_added *a = &t->added[t->nadded];
        a->content = s_dup(tok[i], toklen[i]);
        if (!a->content) {
            s_oom(err, vpath);
            goto out;
        }
        a->len = toklen[i];
        a->special = true;
        t->nadded++;
    }
    if (s_finish_added(t, vpath, err) < 0 || s_bert_templates(t, cls, sep, vpath, err) < 0) goto out;
    *out = t;
    t = NULL;
    rc = 0;
out:
    titan_wordpiece_free(&t);
    json_decref(cfg);
    free(vbuf);
    free(cbuf);
    return rc;
}

int titan_wordpiece_open(const char *dir, titan_wordpiece **out, titan_error *err)
{
    char path[4096];
    if (!dir || strlen(dir) > sizeof(path) - 32)
        return s_bad(err, "the model directory's path is missing or too long");
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    char *buf = NULL;
    size_t len = 0;
    int r = s_read_file(path, TITAN_WORDPIECE_MAX_FILE, &buf, &len, err);
    if (r < 0) return -1;
    if (r == 0) {
        int rc = titan_wordpiece_from_json(buf, len, path, out, err);
        free(buf);
        return rc;
    }
    snprintf(path, sizeof(path), "%s/vocab.txt", dir);
    struct stat st;
    if (stat(path, &st) < 0 && errno == ENOENT)
        return s_bad(err,
                     "%s has neither tokenizer.json nor vocab.txt: a BERT model's tokenizer is one of them "
                     "(download it with the model)",
                     dir);
    return s_from_vocab_txt(dir, path, out, err);
}
