/* jsonscan.c - single-pass JSON splitting and nested-array-to-tensor parsing, no DOM for bulk data. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonscan.h"
#include "numfmt.h"

static int s_fail(char *err, size_t errcap, int rc, const char *fmt, ...)
{
    if (err && errcap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errcap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

static inline const char *s_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* Skips a string starting at the opening quote; returns the char after the closing quote or NULL. */
static const char *s_skip_string(const char *p, const char *end)
{
    p++;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            p++;
            if (p >= end) return NULL;
            if (*p == 'u') {
                if (end - p < 5) return NULL;
                for (int i = 1; i <= 4; i++) {
                    char h = p[i];
                    if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F')))
                        return NULL;
                }
                p += 5;
                continue;
            }
            if (!strchr("\"\\/bfnrt", *p) || *p == '\0') return NULL;
        }
        p++;
    }
    return NULL;
}

/* Character classes for skipping: 0 scalar bytes, 1 whitespace, 2 quote, 3 open, 4 close, 5 separator. */
static const unsigned char s_class[256] = {
    [' '] = 1, ['\t'] = 1, ['\r'] = 1, ['\n'] = 1, ['"'] = 2, ['['] = 3, ['{'] = 3,
    [']'] = 4, ['}'] = 4, [','] = 5, [':'] = 5,
};

static const char *s_too_many_values(char *err, size_t errcap)
{
    s_fail(err, errcap, 0,
           "the header has more than %d JSON values and member names outside numeric arrays (the limit)",
           TITAN_JSON_MAX_VALUES);
    return NULL;
}

/* Skips one value; checks bracket structure and depth (the DOM parser checks the rest). With `values`,
 * adds each value and member name to it, and fails past TITAN_JSON_MAX_VALUES. */
static const char *s_skip_value(const char *p, const char *end, int depth0, size_t *values, char *err,
                                size_t errcap)
{
    int depth = depth0;
    char stack[TITAN_JSON_MAX_DEPTH + 1];
    do {
        p = s_ws(p, end);
        if (p >= end) {
            s_fail(err, errcap, 0, "invalid JSON: unexpected end of input");
            return NULL;
        }
        char c = *p;
        if (values && c != ']' && c != '}' && c != ',' && c != ':' && ++*values > TITAN_JSON_MAX_VALUES)
            return s_too_many_values(err, errcap);
        if (c == '"') {
            p = s_skip_string(p, end);
            if (!p) {
                s_fail(err, errcap, 0, "invalid JSON: malformed string");
                return NULL;
            }
        } else if (c == '[' || c == '{') {
            if (depth - depth0 >= TITAN_JSON_MAX_DEPTH || depth >= TITAN_JSON_MAX_DEPTH) {
                s_fail(err, errcap, 0, "JSON nested deeper than %d levels", TITAN_JSON_MAX_DEPTH);
                return NULL;
            }
            stack[depth - depth0] = c == '[' ? ']' : '}';
            depth++;
            p++;
            continue;
        } else if (c == ']' || c == '}') {
            if (depth == depth0 || stack[depth - depth0 - 1] != c) {
                s_fail(err, errcap, 0, "invalid JSON: unbalanced '%c'", c);
                return NULL;
            }
            depth--;
            p++;
        } else if (c == ',' || c == ':') {
            if (depth == depth0) {
                s_fail(err, errcap, 0, "invalid JSON: unexpected '%c'", c);
                return NULL;
            }
            p++;
            continue;
        } else {
            /* a scalar: number, true, false, null; its exact syntax is left to the DOM parser */
            while (p < end && s_class[(unsigned char)*p] == 0) p++;
        }
    } while (depth > depth0);
    return p;
}

/* The length of the UTF-8 sequence at p that JSON text may hold (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF), or 0. */
static size_t s_utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    size_t n;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c == 0xE0)
        n = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
        n = 3;
    else if (c == 0xED)
        n = 3, hi = 0x9F;
    else if (c == 0xF0)
        n = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        n = 4;
    else if (c == 0xF4)
        n = 4, hi = 0x8F;
    else
        return 0;
    if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

static int s_hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char h = p[i];
        int d = h >= '0' && h <= '9'   ? h - '0'
                : h >= 'a' && h <= 'f' ? h - 'a' + 10
                : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Checks a string as jansson would (escapes, UTF-8, surrogate pairs, no \u0000); returns the char after
 * its closing quote, or NULL. */
static const char *s_check_string(const char *p, const char *end)
{
    p++;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (++p >= end) return NULL;
            if (*p == 'u') {
                int u = end - p >= 5 ? s_hex4(p + 1) : -1;
                if (u <= 0 || (u >= 0xDC00 && u <= 0xDFFF))
                    return NULL; /* not hex, NUL, a lone low surrogate */
                p += 5;
                if (u >= 0xD800 && u <= 0xDBFF) {
                    int l = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? s_hex4(p + 2) : -1;
                    if (l < 0xDC00 || l > 0xDFFF) return NULL;
                    p += 6;
                }
                continue;
            }
            if (!*p || !strchr("\"\\/bfnrt", *p)) return NULL;
            p++;
            continue;
        }
        size_t n = s_utf8_len((const unsigned char *)p, (const unsigned char *)end);
        if (n == 0) return NULL;
        p += n;
    }
    return NULL;
}

static const char *s_digits(const char *p, const char *end)
{
    if (p >= end || *p < '0' || *p > '9') return NULL;
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p;
}

/* Checks a number against JSON's grammar; returns the char after it, or NULL. */
static const char *s_check_number(const char *p, const char *end)
{
    if (p < end && *p == '-') p++;
    if (p < end && *p == '0')
        p++;
    else if (!(p = s_digits(p, end)))
        return NULL;
    if (p < end && *p == '.' && !(p = s_digits(p + 1, end))) return NULL;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!(p = s_digits(p, end))) return NULL;
    }
    return p;
}

/* How much of the text at p an error message quotes (the text has no NUL at its end). */
static int s_near(const char *p, const char *end)
{
    return end - p < 16 ? (int)(end - p) : 16;
}

/* Checks that text at p starts with one valid JSON value (RFC 8259, strings as jansson takes them)
 * without building it, nesting at most TITAN_JSON_MAX_DEPTH. Adds to *values what a DOM of it would hold:
 * every string, literal, object and member name, and every number and array inside an object; not the
 * numbers and arrays of nested numeric arrays, which the worker parses straight into tensors. Returns the
 * char after the value, or NULL with err set (also past TITAN_JSON_MAX_VALUES). */
static const char *s_check_json(const char *p, const char *end, size_t *values, char *err, size_t errcap)
{
    char stack[TITAN_JSON_MAX_DEPTH];
    int depth = 0, objects = 0;
    enum { WANT_VALUE, WANT_NAME, WANT_NEXT } want = WANT_VALUE;
    bool opened = false; /* just after '[' or '{': the closer may come */
    for (;;) {
        p = s_ws(p, end);
        if (p >= end) {
            s_fail(err, errcap, 0, "unexpected end of input");
            return NULL;
        }
        char c = *p;
        if (want == WANT_NEXT) {
            if (depth == 0) return p;
            char open = stack[depth - 1];
            if (c == ',') {
                p++;
                want = open == '{' ? WANT_NAME : WANT_VALUE;
                opened = false;
            } else if (c == (open == '{' ? '}' : ']')) {
                p++;
                if (open == '{') objects--;
                if (--depth == 0) return p;
            } else {
                s_fail(err, errcap, 0, "expected ',' or '%c' near '%.*s'", open == '{' ? '}' : ']',
                       s_near(p, end), p);
                return NULL;
            }
            continue;
        }
        if (opened && c == (stack[depth - 1] == '{' ? '}' : ']')) { /* empty */
            p++;
            opened = false;
            if (stack[depth - 1] == '{') objects--;
            if (--depth == 0) return p;
            want = WANT_NEXT;
            continue;
        }
        bool counts = objects > 0 || c == '"' || c == '{' || c == 't' || c == 'f' || c == 'n';
        if (counts && ++*values > TITAN_JSON_MAX_VALUES) return s_too_many_values(err, errcap);
        const char *q = NULL;
        if (want == WANT_NAME) {
            if (c != '"' || !(q = s_check_string(p, end))) {
                s_fail(err, errcap, 0, "expected a member name near '%.*s'", s_near(p, end), p);
                return NULL;
            }
            p = s_ws(q, end);
            if (p >= end || *p != ':') {
                s_fail(err, errcap, 0, "expected ':' after a member name");
                return NULL;
            }
            p++;
            want = WANT_VALUE;
            opened = false;
            continue;
        }
        if (c == '[' || c == '{') {
            if (depth >= TITAN_JSON_MAX_DEPTH) {
                s_fail(err, errcap, 0, "JSON nested deeper than %d levels", TITAN_JSON_MAX_DEPTH);
                return NULL;
            }
            stack[depth++] = c;
            if (c == '{') objects++;
            want = c == '{' ? WANT_NAME : WANT_VALUE;
            opened = true;
            p++;
            continue;
        }
        if (c == '"')
            q = s_check_string(p, end);
        else if (c == '-' || (c >= '0' && c <= '9'))
            q = s_check_number(p, end);
        else if (end - p >= 4 && memcmp(p, "true", 4) == 0)
            q = p + 4;
        else if (end - p >= 5 && memcmp(p, "false", 5) == 0)
            q = p + 5;
        else if (end - p >= 4 && memcmp(p, "null", 4) == 0)
            q = p + 4;
        if (!q) {
            s_fail(err, errcap, 0, "%s near '%.*s'", c == '"' ? "malformed string" : "invalid value",
                   s_near(p, end), p);
            return NULL;
        }
        p = q;
        if (depth == 0) return p;
        want = WANT_NEXT;
        opened = false;
    }
}

static int s_parse_tensor(const char *text, size_t len, titan_dtype dt, size_t max_elems, const char *name,
                          void **data, int64_t shape[TITAN_MAX_RANK], int *rank, size_t *used_out, char *err,
                          size_t errcap);

int titan_json_find_member(const char *text, size_t len, const char *key, size_t max_scan, const char **val,
                           size_t *val_len)
{
    const char *p = text, *end = text + len;
    size_t klen = strlen(key);
    p = s_ws(p, end);
    if (p >= end || *p != '{') return -EINVAL;
    p = s_ws(p + 1, end);
    while (p < end && *p == '"' && (size_t)(p - text) <= max_scan) {
        const char *ks = p;
        p = s_skip_string(p, end);
        if (!p) return -EINVAL;
        bool match = (size_t)(p - ks) == klen + 2 && memcmp(ks + 1, key, klen) == 0;
        p = s_ws(p, end);
        if (p >= end || *p != ':') return -EINVAL;
        p = s_ws(p + 1, end);
        const char *vs = p;
        if (!match && (size_t)(p - text) > max_scan) break;
        p = s_skip_value(p, end, 0, NULL, NULL, 0);
        if (!p) return -EINVAL;
        if (match) {
            *val = vs;
            *val_len = (size_t)(p - vs);
            return 0;
        }
        p = s_ws(p, end);
        if (p < end && *p == ',') p = s_ws(p + 1, end);
    }
    return -ENOENT;
}

static int s_parse_prefix(const char *text, size_t len, titan_dtype dt, size_t max_elems,
                                          void **data, int64_t shape[TITAN_MAX_RANK], int *rank, size_t *used)
{
    return s_parse_tensor(text, len, dt, max_elems, "", data, shape, rank, used, NULL, 0);
}

/* True when text[0..len) is a JSON list of numeric tensors of any shapes ("inputs" of a request, or
 * "outputs" of an inference reply): jansson refuses such a list when it holds NaN or Infinity. */
static bool s_tensor_list(const char *text, size_t len, titan_dtype dt, size_t max_elems)
{
    const char *p = s_ws(text + 1, text + len), *end = text + len;
    if (len < 2 || text[0] != '[' || p >= end || *p == ']') return false;
    for (;;) {
        void *data = NULL;
        int64_t shape[TITAN_MAX_RANK];
        int rank;
        size_t used = 0;
        if (p >= end || *p != '[' ||
            s_parse_prefix(p, (size_t)(end - p), dt, max_elems, &data, shape, &rank, &used) != 0)
            return false;
        free(data);
        p = s_ws(p + used, end);
        if (p < end && *p == ']') return s_ws(p + 1, end) == end;
        if (p >= end || *p != ',') return false;
        p = s_ws(p + 1, end);
    }
}

void titan_json_split_release(titan_json_split *s)
{
    for (size_t i = 0; i < s->nspans; i++) free(s->spans[i].data);
    free(s->rest);
    memset(s, 0, sizeof(*s));
}

int titan_json_split_object(const char *text, size_t len, titan_dtype dt, size_t max_elems, titan_json_split *out,
                            char *err, size_t errcap)
{
    const char *p = text, *end = text + len;
    titan_json_split r;
    memset(&r, 0, sizeof(r));
    p = s_ws(p, end);
    if (p >= end || *p != '{') return s_fail(err, errcap, -EINVAL, "request header must be a JSON object");
    /* The remainder grows with what it holds, never sized from the header's length (whose arrays do not
     * go into it). */
    size_t cap = 256, o = 0, values = 0;
    r.rest = malloc(cap);
    if (!r.rest) return -ENOMEM;
    r.rest[o++] = '{';
    p++;
    p = s_ws(p, end);
    bool first = true;
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            p = s_ws(p, end);
            if (p >= end || *p != '"') {
                titan_json_split_release(&r);
                return s_fail(err, errcap, -EINVAL, "invalid JSON: expected a member name");
            }
            const char *ks = p;
            p = s_skip_string(p, end);
            if (!p) {
                titan_json_split_release(&r);
                return s_fail(err, errcap, -EINVAL, "invalid JSON: malformed member name");
            }
            const char *ke = p;
            p = s_ws(p, end);
            if (p >= end || *p != ':') {
                titan_json_split_release(&r);
                return s_fail(err, errcap, -EINVAL, "invalid JSON: expected ':'");
            }
            p = s_ws(p + 1, end);
            const char *vs = p;
            char serr[256] = "";
            titan_json_span *sp = NULL;
            if (++values > TITAN_JSON_MAX_VALUES) { /* the member's name */
                titan_json_split_release(&r);
                s_too_many_values(serr, sizeof(serr));
                return s_fail(err, errcap, -EINVAL, "%s", serr);
            }
            if (p < end && *p == '[' && r.nspans == TITAN_JSON_MAX_SPANS) {
                titan_json_split_release(&r);
                return s_fail(err, errcap, -EINVAL, "a request may have at most %d top-level array fields",
                              TITAN_JSON_MAX_SPANS);
            }
            if (p < end && *p == '[') {
                sp = &r.spans[r.nspans++];
                memset(sp, 0, sizeof(*sp));
                /* Most arrays are tensors: parse them in this pass. Anything else is only
                 * skipped here; whoever uses it reparses it and reports the precise error. */
                size_t used = 0;
                sp->status = s_parse_prefix(p, (size_t)(end - p), dt, max_elems, &sp->data, sp->shape, &sp->rank, &used);
                values++; /* the null that stands for it in the remainder */
                if (sp->status == 0) {
                    sp->dtype = dt;
                    p += used;
                } else if (sp->status == -E2BIG) {
                    /* refused as too large later, if anything uses it */
                    p = s_skip_value(p, end, 0, NULL, serr, sizeof(serr));
                } else {
                    /* Not a tensor: check it is valid JSON all the same, without a DOM (a list of numeric
                     * tensors may hold NaN and Infinity, which JSON lacks). */
                    char jerr[200] = "";
                    size_t before = values;
                    const char *q = s_check_json(p, end, &values, jerr, sizeof(jerr));
                    if (q) {
                        p = q;
                    } else if (values <= TITAN_JSON_MAX_VALUES &&
                               (q = s_skip_value(p, end, 0, NULL, serr, sizeof(serr))) &&
                               s_tensor_list(vs, (size_t)(q - vs), dt, max_elems)) {
                        p = q;
                        values = before;
                    } else {
                        if (values > TITAN_JSON_MAX_VALUES)
                            snprintf(serr, sizeof(serr), "%s", jerr);
                        else
                            snprintf(serr, sizeof(serr), "invalid JSON in an array: %s", jerr);
                        p = NULL;
                    }
                }
            } else {
                p = s_skip_value(p, end, 0, &values, serr, sizeof(serr));
            }
            if (!p) {
                titan_json_split_release(&r);
                return s_fail(err, errcap, -EINVAL, "%s", serr);
            }
            size_t vlen = sp ? 4 : (size_t)(p - vs), need = o + 1 + (size_t)(ke - ks) + 1 + vlen + 2;
            if (need > cap) {
                while (need > cap)
                    cap *= 2;
                char *grown = realloc(r.rest, cap);
                if (!grown) {
                    titan_json_split_release(&r);
                    return -ENOMEM;
                }
                r.rest = grown;
            }
            if (!first) r.rest[o++] = ',';
            first = false;
            memcpy(r.rest + o, ks, (size_t)(ke - ks));
            o += (size_t)(ke - ks);
            r.rest[o++] = ':';
            if (sp) {
                sp->key = ks + 1;
                sp->key_len = (size_t)(ke - ks - 2);
                sp->val = vs;
                sp->val_len = (size_t)(p - vs);
            }
            memcpy(r.rest + o, sp ? "null" : vs, vlen);
            o += vlen;
            p = s_ws(p, end);
            if (p < end && *p == ',') {
                p++;
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            titan_json_split_release(&r);
            return s_fail(err, errcap, -EINVAL, "invalid JSON: expected ',' or '}' in the request object");
        }
    }
    p = s_ws(p, end);
    if (p != end) {
        titan_json_split_release(&r);
        return s_fail(err, errcap, -EINVAL, "invalid JSON: trailing data after the request object");
    }
    r.rest[o++] = '}'; /* room for it and the NUL was kept */
    r.rest[o] = '\0';
    r.rest_len = o;
    *out = r;
    return 0;
}

static void s_path(char *buf, size_t cap, const char *name, const size_t *idx, int depth)
{
    size_t n = (size_t)snprintf(buf, cap, "%s", name);
    for (int i = 0; i < depth && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "[%zu]", idx[i]);
}

/* How many elements the array at the start of `text` can hold, at most `bound`: its commas + 1, counted up to
 * its closing bracket (a nested array's elements are its commas + 1 as well, rows' separators included). One
 * pass over the text, so that a large operand's buffer is allocated once instead of grown by copies (which
 * left its smaller copies in the heap). Anything but numbers and brackets (a string, an object): 256, and the
 * parse grows the buffer as before. */
static size_t s_count_elements(const char *text, size_t len, size_t bound)
{
    size_t commas = 0;
    int depth = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = text[i];
        if (ch == ',') {
            commas++;
        } else if (ch == '[') {
            depth++;
        } else if (ch == ']') {
            if (--depth <= 0) break;
        } else if (ch == '"' || ch == '{') {
            return bound < 256 ? bound : 256;
        }
    }
    return commas < bound ? commas + 1 : bound;
}

/* Parses a tensor from text; with `used` it stops after the outer ']' and says how far it read. */
static int s_parse_tensor(const char *text, size_t len, titan_dtype dt, size_t max_elems, const char *name,
                          void **data, int64_t shape[TITAN_MAX_RANK], int *rank, size_t *used_out, char *err,
                          size_t errcap)
{
    size_t esize = titan_dtype_size(dt);
    if (esize == 0 || !text || !data || !shape || !rank) return -EINVAL;
    const char *p = text, *end = text + len;
    char path[160];
    size_t idx[TITAN_MAX_RANK + 1] = {0};   /* elements seen so far at each open level */
    int64_t dims[TITAN_MAX_RANK] = {0};     /* 0 = not known yet */
    int depth = 0, r = -1;
    size_t count = 0;
    /* Every element takes at least two characters ("1,"), which bounds the count. The buffer is sized by the
     * array's commas (s_count_elements: text may end long after a short array), and grows should the parse
     * find more, which only malformed text can make it do. */
    size_t bound = len / 2 + 1;
    if (bound > max_elems) bound = max_elems;
    size_t cap = s_count_elements(text, len, bound);
    char *buf = aligned_alloc(64, ((cap ? cap : 1) * esize + 63) & ~(size_t)63);
    if (!buf) return -ENOMEM;
    int rc = -EINVAL;
    bool need_value = false; /* after '[' or ',' */

    p = s_ws(p, end);
    if (p >= end || *p != '[') {
        rc = s_fail(err, errcap, -EINVAL, "'%s' must be a nested array of numbers", name);
        goto fail;
    }
    while (p < end) {
        char c = *p;
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            p++;
            continue;
        }
        if (c == '[') {
            if (depth > 0 && !need_value) goto syntax;
            if (depth >= TITAN_MAX_RANK) {
                rc = s_fail(err, errcap, -EINVAL, "'%s' is nested deeper than %d levels (the most a tensor may have)",
                            name, TITAN_MAX_RANK);
                goto fail;
            }
            if (r >= 0 && depth >= r) {
                s_path(path, sizeof(path), name, idx, depth);
                rc = s_fail(err, errcap, -EINVAL, "ragged array: %s is an array where a number was expected", path);
                goto fail;
            }
            idx[depth] = 0;
            depth++;
            p++;
            need_value = true;
            /* allow "[]" to reach the empty check below */
            const char *q = s_ws(p, end);
            if (q < end && *q == ']') {
                s_path(path, sizeof(path), name, idx, depth - 1);
                rc = s_fail(err, errcap, -EINVAL, "%s is empty: every dimension must be at least 1", path);
                goto fail;
            }
            continue;
        }
        if (c == ']') {
            if (depth == 0 || need_value) goto syntax;
            int lvl = depth - 1;
            size_t n = idx[lvl];
            if (dims[lvl] == 0) {
                dims[lvl] = (int64_t)n;
            } else if ((size_t)dims[lvl] != n) {
                s_path(path, sizeof(path), name, idx, lvl);
                rc = s_fail(err, errcap, -EINVAL, "ragged array: %s has %zu elements but earlier rows have %lld",
                            path, n, (long long)dims[lvl]);
                goto fail;
            }
            depth--;
            p++;
            if (depth == 0) break;
            idx[depth - 1]++;
            need_value = false;
            continue;
        }
        if (c == ',') {
            if (depth == 0 || need_value) goto syntax;
            need_value = true;
            p++;
            continue;
        }
        /* a scalar */
        if (!need_value) goto syntax;
        if (r < 0) {
            r = depth;
        } else if (depth != r) {
            s_path(path, sizeof(path), name, idx, depth);
            rc = s_fail(err, errcap, -EINVAL, "ragged array: %s is a number where an array was expected", path);
            goto fail;
        }
        if (count >= bound) {
            if (count >= max_elems) {
                rc = s_fail(err, errcap, -E2BIG, "'%s' has more than %zu elements (the configured limit)", name,
                            max_elems);
                goto fail;
            }
            goto syntax; /* more elements than characters allow: malformed */
        }
        if (count == cap) {
            size_t ncap = cap > bound / 2 ? bound : 2 * cap;
            char *grown = aligned_alloc(64, (ncap * esize + 63) & ~(size_t)63);
            if (!grown) {
                rc = -ENOMEM;
                goto fail;
            }
            memcpy(grown, buf, count * esize);
            free(buf);
            buf = grown;
            cap = ncap;
        }
        size_t used;
        if (dt == TITAN_DTYPE_FLOAT32)
            used = titan_parse_f32(p, end, (float *)buf + count);
        else
            used = titan_parse_f64(p, end, (double *)buf + count);
        if (used == 0) {
            s_path(path, sizeof(path), name, idx, depth);
            if (c == '"' || c == '{' || c == 't' || c == 'f' || c == 'n')
                rc = s_fail(err, errcap, -EINVAL, "%s is not a number", path);
            else
                rc = s_fail(err, errcap, -EINVAL, "%s is not a valid JSON number", path);
            goto fail;
        }
        p += used;
        if (p < end && !strchr(" \t\r\n,]", *p)) {
            s_path(path, sizeof(path), name, idx, depth);
            rc = s_fail(err, errcap, -EINVAL, "%s is not a valid JSON number", path);
            goto fail;
        }
        count++;
        idx[depth - 1]++;
        need_value = false;
        continue;
    }
    if (depth != 0 || r < 1) goto syntax;
    if (used_out) {
        *used_out = (size_t)(p - text);
    } else {
        p = s_ws(p, end);
        if (p != end) goto syntax;
    }
    for (int i = 0; i < r; i++) shape[i] = dims[i];
    *rank = r;
    *data = buf;
    return 0;
syntax:
    rc = s_fail(err, errcap, -EINVAL, "'%s' is not a well-formed JSON array", name);
fail:
    free(buf);
    return rc;
}

int titan_json_parse_tensor(const char *text, size_t len, titan_dtype dt, size_t max_elems, const char *name,
                            void **data, int64_t shape[TITAN_MAX_RANK], int *rank, char *err, size_t errcap)
{
    return s_parse_tensor(text, len, dt, max_elems, name, data, shape, rank, NULL, err, errcap);
}
