/* http_api.c - the /v1 routes' translations: HTTP JSON bodies into ZeroMQ requests (a strict scanner that keeps
 * the inputs' text as it came, without a DOM), ZeroMQ replies into OpenAI-shaped answers, codes into statuses. */
#include <endian.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "http_api.h"
#include "titan/tensor.h"

/* ---- errors ---- */

typedef struct {
    const char *code;
    unsigned status;
    const char *type;
    int retry_after_s;
} s_status;

/* titan's codes (docs/PROTOCOL.md section 7) and the HTTP layer's own, with their HTTP status. */
static const s_status s_statuses[] = {
    {"bad_request", 400, "invalid_request_error", 0},
    {"unsupported", 400, "invalid_request_error", 0},
    {"unauthorized", 401, "authentication_error", 0},
    {"forbidden", 403, "permission_error", 0},
    {"not_found", 404, "invalid_request_error", 0},
    {"method_not_allowed", 405, "invalid_request_error", 0},
    {"length_required", 411, "invalid_request_error", 0},
    {"too_large", 413, "invalid_request_error", 0},
    {"unsupported_media_type", 415, "invalid_request_error", 0},
    {"busy", 429, "rate_limit_error", 1},
    {"quota_exceeded", 429, "rate_limit_error", 1},
    {"internal", 500, "server_error", 0},
    {"device_error", 500, "server_error", 0},
    {"unknown_op", 501, "server_error", 0},
    {"shutting_down", 503, "server_error", 1},
    {"not_ready", 503, "server_error", 1},
    {"timeout", 504, "server_error", 0},
};

static bool s_plain_code(const char *code)
{
    size_t n = strlen(code);
    if (n == 0 || n >= sizeof(((titan_http_error *)0)->code)) return false;
    for (size_t i = 0; i < n; i++)
        if (!((code[i] >= 'a' && code[i] <= 'z') || (code[i] >= '0' && code[i] <= '9') || code[i] == '_')) return false;
    return true;
}

static size_t s_utf8_len(const unsigned char *p, const unsigned char *end);

int titan_http_fail(titan_http_error *err, const char *code, const char *fmt, ...)
{
    const s_status *st = NULL;
    for (size_t i = 0; i < sizeof(s_statuses) / sizeof(s_statuses[0]) && !st; i++)
        if (code && strcmp(code, s_statuses[i].code) == 0) st = &s_statuses[i];
    err->status = st ? st->status : 500;
    err->type = st ? st->type : "server_error";
    err->retry_after_s = st ? st->retry_after_s : 0;
    snprintf(err->code, sizeof(err->code), "%s", code && s_plain_code(code) ? code : "internal");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    /* The message goes into JSON: a byte that is no UTF-8 (a client's, or a character cut in two by the room
     * or a precision) becomes '?' (fuzz_http_body's finding: the error body was lost with it). */
    unsigned char *m = (unsigned char *)err->message, *end = m + strlen(err->message);
    while (m < end) {
        size_t n = *m < 0x80 ? 1 : s_utf8_len(m, end);
        if (n) {
            m += n;
        } else {
            *m++ = '?';
        }
    }
    return -1;
}

char *titan_http_error_body(const titan_http_error *err, size_t *len)
{
    json_t *o = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", err->message, "type",
                          err->type ? err->type : "server_error", "code", err->code);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) return NULL;
    size_t n = strlen(text);
    /* One line, for curl users and logs. */
    char *grown = realloc(text, n + 2);
    if (!grown) {
        free(text);
        return NULL;
    }
    grown[n] = '\n';
    grown[n + 1] = '\0';
    *len = n + 1;
    return grown;
}

void titan_http_call_release(titan_http_call *call)
{
    free(call->zmq);
    free(call->doc_off);
    free(call->doc_len);
    memset(call, 0, sizeof(*call));
}

/* ---- an output buffer ---- */

typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} s_buf;

static bool s_reserve(s_buf *b, size_t more)
{
    if (b->oom) return false;
    if (more > SIZE_MAX - b->len - 1) {
        b->oom = true;
        return false;
    }
    size_t need = b->len + more + 1;
    if (need <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

static void s_put(s_buf *b, const void *s, size_t n)
{
    if (!s_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void s_puts(s_buf *b, const char *s)
{
    s_put(b, s, strlen(s));
}

static void s_putu(s_buf *b, unsigned long long v)
{
    char t[24];
    int n = snprintf(t, sizeof(t), "%llu", v);
    s_put(b, t, (size_t)n);
}

/* Writes s (valid UTF-8: it comes from jansson) as a JSON string. */
static void s_put_jstring(s_buf *b, const char *s)
{
    s_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            s_put(b, e, 2);
        } else if (*p < 0x20) {
            char e[8];
            snprintf(e, sizeof(e), "\\u%04x", *p);
            s_put(b, e, 6);
        } else {
            s_put(b, p, 1);
        }
    }
    s_put(b, "\"", 1);
}

/* ---- the body scanner ---- */

/* The scan of one body: where it is, and the error when it fails. */
typedef struct {
    const char *base, *p, *end;
    titan_http_error *err;
} s_in;

static int s_bad(s_in *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int s_bad(s_in *in, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return titan_http_fail(in->err, "bad_request", "invalid JSON body at byte %zu: %s", (size_t)(in->p - in->base),
                           what);
}

static void s_ws(s_in *in)
{
    while (in->p < in->end && (*in->p == ' ' || *in->p == '\t' || *in->p == '\n' || *in->p == '\r')) in->p++;
}

static bool s_at(s_in *in, char c)
{
    return in->p < in->end && *in->p == c;
}

static int s_hex4(const char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                            : 16u;
        if (d == 16) return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

/* Appends code point cp as UTF-8 to dec (when given and there is room; else *over is set). */
static void s_dec_put(char *dec, size_t cap, size_t *dlen, bool *over, const char *bytes, size_t n)
{
    if (!dec) return;
    if (*dlen + n >= cap) {
        *over = true;
        return;
    }
    memcpy(dec + *dlen, bytes, n);
    *dlen += n;
    dec[*dlen] = '\0';
}

/* The length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong forms, no surrogates, at most
 * U+10FFFF), or 0. */
static size_t s_utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

/* Scans the JSON string at in->p (a '"'), checking its escapes (surrogates paired, no \u0000) and its UTF-8.
 * With dec (cap bytes), the decoded text goes there, NUL-terminated, and *over says it did not fit. `what` names
 * the string in errors. Returns 0 with in->p past the closing quote, or -1. */
static int s_string(s_in *in, const char *what, char *dec, size_t cap, bool *over)
{
    size_t dlen = 0;
    bool ov = false;
    if (dec && cap) dec[0] = '\0';
    in->p++; /* the opening quote */
    for (;;) {
        if (in->p >= in->end) return s_bad(in, "%s: the string does not end", what);
        unsigned char c = (unsigned char)*in->p;
        if (c == '"') {
            in->p++;
            break;
        }
        if (c < 0x20) return s_bad(in, "%s: a control character (0x%02x) in a string; escape it", what, c);
        if (c == '\\') {
            if (in->end - in->p < 2) return s_bad(in, "%s: the string does not end", what);
            char e = in->p[1];
            const char *simple = strchr("\"\\/bfnrt", e);
            if (e && simple) {
                static const char out[] = "\"\\/\b\f\n\r\t";
                s_dec_put(dec, cap, &dlen, &ov, &out[simple - "\"\\/bfnrt"], 1);
                in->p += 2;
                continue;
            }
            if (e != 'u')
                return s_bad(in, "%s: a backslash before '%c' (0x%02x) is not a JSON escape", what,
                             e > 0x20 && e < 0x7f ? e : '?', (unsigned char)e);
            unsigned u, u2;
            if (in->end - in->p < 6 || s_hex4(in->p + 2, &u) != 0)
                return s_bad(in, "%s: \\u needs four hexadecimal digits", what);
            in->p += 6;
            unsigned cp = u;
            if (u >= 0xDC00 && u <= 0xDFFF) return s_bad(in, "%s: a lone low surrogate (\\u%04X)", what, u);
            if (u >= 0xD800 && u <= 0xDBFF) {
                if (in->end - in->p < 6 || in->p[0] != '\\' || in->p[1] != 'u' || s_hex4(in->p + 2, &u2) != 0 ||
                    u2 < 0xDC00 || u2 > 0xDFFF)
                    return s_bad(in, "%s: a high surrogate (\\u%04X) without its low surrogate", what, u);
                in->p += 6;
                cp = 0x10000 + ((u - 0xD800) << 10) + (u2 - 0xDC00);
            }
            if (cp == 0) return s_bad(in, "%s: \\u0000 is not accepted in a string", what);
            char b[4];
            size_t n;
            if (cp < 0x80) {
                b[0] = (char)cp;
                n = 1;
            } else if (cp < 0x800) {
                b[0] = (char)(0xC0 | cp >> 6);
                b[1] = (char)(0x80 | (cp & 0x3F));
                n = 2;
            } else if (cp < 0x10000) {
                b[0] = (char)(0xE0 | cp >> 12);
                b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                b[2] = (char)(0x80 | (cp & 0x3F));
                n = 3;
            } else {
                b[0] = (char)(0xF0 | cp >> 18);
                b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                b[3] = (char)(0x80 | (cp & 0x3F));
                n = 4;
            }
            s_dec_put(dec, cap, &dlen, &ov, b, n);
            continue;
        }
        if (c < 0x80) {
            /* A run of plain ASCII, the common case, in one step. */
            const char *s = in->p;
            while (in->p < in->end && (unsigned char)*in->p >= 0x20 && (unsigned char)*in->p < 0x80 && *in->p != '"' &&
                   *in->p != '\\')
                in->p++;
            s_dec_put(dec, cap, &dlen, &ov, s, (size_t)(in->p - s));
            continue;
        }
        size_t n = s_utf8_len((const unsigned char *)in->p, (const unsigned char *)in->end);
        if (!n) return s_bad(in, "%s: the text is not valid UTF-8", what);
        s_dec_put(dec, cap, &dlen, &ov, in->p, n);
        in->p += n;
    }
    if (over) *over = ov;
    return 0;
}

/* Scans a whole number from 0 to max (no sign, fraction or exponent). Returns 0 with *v, or -1. */
static int s_uint(s_in *in, const char *what, uint64_t lo, uint64_t max, uint64_t *v)
{
    const char *s = in->p;
    uint64_t x = 0;
    bool range = false;
    while (in->p < in->end && *in->p >= '0' && *in->p <= '9') {
        unsigned d = (unsigned)(*in->p - '0');
        if (x > (UINT64_MAX - d) / 10) range = true;
        else x = x * 10 + d;
        in->p++;
    }
    size_t n = (size_t)(in->p - s);
    bool frac = in->p < in->end && (*in->p == '.' || *in->p == 'e' || *in->p == 'E');
    if (n == 0 || frac || (n > 1 && s[0] == '0')) {
        in->p = s;
        if (s < in->end && *s == '-')
            return s_bad(in, "%s must be a whole number from %llu to %llu, not negative", what,
                         (unsigned long long)lo, (unsigned long long)max);
        return s_bad(in, "%s must be a whole number from %llu to %llu", what, (unsigned long long)lo,
                     (unsigned long long)max);
    }
    if (range || x < lo || x > max) {
        in->p = s;
        return s_bad(in, "%s is %.*s, outside %llu to %llu", what, n > 24 ? 24 : (int)n, s, (unsigned long long)lo,
                     (unsigned long long)max);
    }
    *v = x;
    return 0;
}

/* Scans the literal word (true, false, null) when it is there. Returns true and steps over it. */
static bool s_word(s_in *in, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(in->end - in->p) < n || memcmp(in->p, word, n) != 0) return false;
    const char *after = in->p + n;
    if (after < in->end && ((*after >= 'a' && *after <= 'z') || (*after >= '0' && *after <= '9'))) return false;
    in->p = after;
    return true;
}

/* After an element of an array: ',' (returns 1), ']' (returns 0, past it), or an error (-1). */
static int s_next(s_in *in, const char *what)
{
    s_ws(in);
    if (s_at(in, ',')) {
        in->p++;
        s_ws(in);
        return 1;
    }
    if (s_at(in, ']')) {
        in->p++;
        return 0;
    }
    return s_bad(in, "expected ',' or ']' in %s", what);
}

/* A span of the body: a member's value as it was written. */
typedef struct {
    const char *s;
    size_t n;
} s_span;

/* "input": a string, a list of strings, a list of token ids, or a list of lists of token ids. Sets *nitems to the
 * embeddings it asks for (a string and one list of ids ask for one). */
static int s_input(s_in *in, size_t *nitems)
{
    const char *shapes = "\"input\" must be a string, a list of strings, a list of token ids, or a list of lists "
                         "of token ids";
    if (s_at(in, '"')) {
        *nitems = 1;
        return s_string(in, "\"input\"", NULL, 0, NULL);
    }
    if (!s_at(in, '[')) return s_bad(in, "%s", shapes);
    in->p++;
    s_ws(in);
    if (s_at(in, ']')) return titan_http_fail(in->err, "bad_request", "\"input\" is an empty list: send at least one text");
    enum { STRINGS, LISTS, IDS } kind;
    if (s_at(in, '"')) kind = STRINGS;
    else if (s_at(in, '[')) kind = LISTS;
    else if (in->p < in->end && ((*in->p >= '0' && *in->p <= '9') || *in->p == '-')) kind = IDS;
    else return s_bad(in, "%s", shapes);
    size_t count = 0;
    char what[64];
    for (int more = 1; more > 0; count++) {
        if (count >= TITAN_HTTP_MAX_ITEMS)
            return titan_http_fail(in->err, "too_large", "\"input\" has more than %d items; split the request",
                                   TITAN_HTTP_MAX_ITEMS);
        snprintf(what, sizeof(what), "input[%zu]", count);
        uint64_t id;
        if (kind == STRINGS) {
            if (!s_at(in, '"'))
                return s_bad(in, "%s must be a string, as input[0] is (the list holds only strings)", what);
            if (s_string(in, what, NULL, 0, NULL)) return -1;
        } else if (kind == IDS) {
            if (s_uint(in, what, 0, INT32_MAX, &id)) return -1;
        } else {
            if (!s_at(in, '['))
                return s_bad(in, "%s must be a list of token ids, as input[0] is (the list holds only lists)", what);
            in->p++;
            s_ws(in);
            if (s_at(in, ']')) return s_bad(in, "%s is an empty list of token ids", what);
            for (size_t j = 0;; j++) {
                char item[80];
                snprintf(item, sizeof(item), "input[%zu][%zu]", count, j);
                if (s_uint(in, item, 0, INT32_MAX, &id)) return -1;
                int r = s_next(in, what);
                if (r < 0) return -1;
                if (r == 0) break;
            }
        }
        more = s_next(in, "\"input\"");
        if (more < 0) return -1;
    }
    *nitems = kind == IDS ? 1 : count;
    return 0;
}

/* "documents": a non-empty list of strings; each one's span goes to docs (grown as needed). */
static int s_documents(s_in *in, s_span **docs, size_t *ndocs)
{
    if (!s_at(in, '[')) return s_bad(in, "\"documents\" must be a list of strings");
    in->p++;
    s_ws(in);
    if (s_at(in, ']'))
        return titan_http_fail(in->err, "bad_request", "\"documents\" is an empty list: send at least one document");
    size_t cap = 0;
    char what[64];
    for (int more = 1; more > 0;) {
        if (*ndocs >= TITAN_HTTP_MAX_ITEMS)
            return titan_http_fail(in->err, "too_large", "\"documents\" has more than %d items; split the request",
                                   TITAN_HTTP_MAX_ITEMS);
        snprintf(what, sizeof(what), "documents[%zu]", *ndocs);
        if (!s_at(in, '"')) return s_bad(in, "%s must be a string", what);
        if (*ndocs == cap) {
            cap = cap ? cap * 2 : 16;
            s_span *grown = realloc(*docs, cap * sizeof(**docs));
            if (!grown) return titan_http_fail(in->err, "internal", "out of memory reading \"documents\"");
            *docs = grown;
        }
        const char *s = in->p;
        if (s_string(in, what, NULL, 0, NULL)) return -1;
        (*docs)[(*ndocs)++] = (s_span){s, (size_t)(in->p - s)};
        more = s_next(in, "\"documents\"");
        if (more < 0) return -1;
    }
    return 0;
}

/* What one request may hold. */
enum { M_MODEL, M_INPUT, M_FORMAT, M_DIMENSIONS, M_USER, M_QUERY, M_DOCUMENTS, M_TOP_N, M_RETURN_DOCS, M_COUNT };
static const char *const s_member_names[M_COUNT] = {"model", "input", "encoding_format", "dimensions", "user",
                                                    "query", "documents", "top_n", "return_documents"};

typedef struct {
    bool seen[M_COUNT];
    s_span val[M_COUNT]; /* each member's value text */
    size_t nitems;
    bool base64, return_documents;
    uint64_t dimensions, top_n;
    bool has_dimensions, has_top_n;
    s_span *docs;
    size_t ndocs;
} s_body;

/* The value of member m at in->p, checked for its type. */
static int s_value(s_in *in, titan_http_route route, int m, s_body *b)
{
    char dec[TITAN_HTTP_MAX_MODEL + 1];
    bool over = false;
    bool null = s_word(in, "null");
    switch (m) {
    case M_MODEL:
        if (null || !s_at(in, '"'))
            return s_bad(in, "\"model\" must be a string naming a model (GET /v1/models lists them)");
        if (s_string(in, "\"model\"", dec, sizeof(dec), &over)) return -1;
        if (over)
            return titan_http_fail(in->err, "bad_request", "\"model\" is longer than %d bytes: no model has such a name",
                                   TITAN_HTTP_MAX_MODEL);
        if (!dec[0]) return titan_http_fail(in->err, "bad_request", "\"model\" is empty: name a model (GET /v1/models)");
        return 0;
    case M_INPUT:
        if (null) return s_bad(in, "\"input\" must not be null");
        return s_input(in, &b->nitems);
    case M_FORMAT:
        if (null) return 0;
        if (!s_at(in, '"')) return s_bad(in, "\"encoding_format\" must be \"float\" or \"base64\"");
        if (s_string(in, "\"encoding_format\"", dec, 16, &over)) return -1;
        if (!over && strcmp(dec, "float") == 0) b->base64 = false;
        else if (!over && strcmp(dec, "base64") == 0) b->base64 = true;
        else
            return titan_http_fail(in->err, "bad_request", "\"encoding_format\" must be \"float\" or \"base64\", not "
                                   "\"%.16s\"", dec);
        return 0;
    case M_DIMENSIONS:
        if (null) return 0;
        b->has_dimensions = true;
        return s_uint(in, "\"dimensions\"", 1, INT32_MAX, &b->dimensions);
    case M_USER:
        if (null) return 0;
        if (!s_at(in, '"')) return s_bad(in, "\"user\" must be a string");
        return s_string(in, "\"user\"", NULL, 0, NULL);
    case M_QUERY:
        if (null || !s_at(in, '"')) return s_bad(in, "\"query\" must be a string");
        return s_string(in, "\"query\"", NULL, 0, NULL);
    case M_DOCUMENTS:
        if (null) return s_bad(in, "\"documents\" must be a list of strings");
        return s_documents(in, &b->docs, &b->ndocs);
    case M_TOP_N:
        if (null) return 0;
        b->has_top_n = true;
        return s_uint(in, "\"top_n\"", 1, INT32_MAX, &b->top_n);
    case M_RETURN_DOCS:
        if (null) return 0;
        if (s_word(in, "true")) b->return_documents = true;
        else if (s_word(in, "false")) b->return_documents = false;
        else return s_bad(in, "\"return_documents\" must be true or false");
        return 0;
    }
    (void)route;
    return s_bad(in, "unexpected member");
}

/* The members each route takes, and its name in errors. */
static const int s_embed_members[] = {M_MODEL, M_INPUT, M_FORMAT, M_DIMENSIONS, M_USER, -1};
static const int s_rerank_members[] = {M_MODEL, M_QUERY, M_DOCUMENTS, M_TOP_N, M_RETURN_DOCS, -1};

/* Scans the body's object: every member known to the route, none twice, each of its type. */
static int s_object(s_in *in, titan_http_route route, s_body *b)
{
    const int *allowed = route == TITAN_HTTP_EMBEDDINGS ? s_embed_members : s_rerank_members;
    const char *path = route == TITAN_HTTP_EMBEDDINGS ? "/v1/embeddings" : "/v1/rerank";
    s_ws(in);
    if (in->p >= in->end)
        return titan_http_fail(in->err, "bad_request", "the body is empty: send a JSON object (%s)", path);
    if (!s_at(in, '{')) return s_bad(in, "the body must be a JSON object");
    in->p++;
    s_ws(in);
    if (s_at(in, '}')) {
        in->p++;
    } else {
        for (;;) {
            s_ws(in);
            if (!s_at(in, '"')) return s_bad(in, "expected a member name in quotes");
            char key[64];
            bool over = false;
            const char *ks = in->p;
            if (s_string(in, "a member name", key, sizeof(key), &over)) return -1;
            int m = -1;
            for (const int *a = allowed; *a >= 0 && m < 0 && !over; a++)
                if (strcmp(key, s_member_names[*a]) == 0) m = *a;
            if (m < 0) {
                char names[160] = "";
                size_t o = 0;
                for (const int *a = allowed; *a >= 0; a++)
                    o += (size_t)snprintf(names + o, sizeof(names) - o, "%s%s", o ? ", " : "", s_member_names[*a]);
                in->p = ks;
                return s_bad(in, "%s takes no member \"%.48s\"%s (it takes %s)", path, key, over ? "..." : "", names);
            }
            if (b->seen[m]) {
                in->p = ks;
                return s_bad(in, "\"%s\" is given twice", key);
            }
            b->seen[m] = true;
            s_ws(in);
            if (!s_at(in, ':')) return s_bad(in, "expected ':' after \"%s\"", key);
            in->p++;
            s_ws(in);
            const char *vs = in->p;
            if (s_value(in, route, m, b)) return -1;
            b->val[m] = (s_span){vs, (size_t)(in->p - vs)};
            s_ws(in);
            if (s_at(in, ',')) {
                in->p++;
                continue;
            }
            if (s_at(in, '}')) {
                in->p++;
                break;
            }
            return s_bad(in, "expected ',' or '}' after \"%s\"", key);
        }
    }
    s_ws(in);
    if (in->p != in->end) return s_bad(in, "there is more after the JSON object");
    int need[3] = {M_MODEL, route == TITAN_HTTP_EMBEDDINGS ? M_INPUT : M_QUERY,
                   route == TITAN_HTTP_EMBEDDINGS ? -1 : M_DOCUMENTS};
    for (int i = 0; i < 3; i++) {
        if (need[i] < 0 || b->seen[need[i]]) continue;
        const char *hint = need[i] == M_MODEL     ? "a model's name (GET /v1/models lists them)"
                           : need[i] == M_INPUT   ? "a string, a list of strings, or lists of token ids"
                           : need[i] == M_QUERY   ? "the text the documents are ranked against"
                                                  : "a list of strings";
        return titan_http_fail(in->err, "bad_request", "%s needs \"%s\": %s", path, s_member_names[need[i]], hint);
    }
    return 0;
}

/* `,"name":` then the member's text as it came. */
static void s_put_member(s_buf *o, const char *name, const s_span *v)
{
    s_puts(o, ",\"");
    s_puts(o, name);
    s_puts(o, "\":");
    s_put(o, v->s, v->n);
}

int titan_http_call_parse(titan_http_route route, const char *body, size_t len, titan_http_call *call,
                          titan_http_error *err)
{
    memset(call, 0, sizeof(*call));
    call->route = route;
    if (route == TITAN_HTTP_MODELS) {
        call->zmq = strdup("{\"op\":\"list_models\"}");
        if (!call->zmq) return titan_http_fail(err, "internal", "out of memory");
        call->zmq_len = strlen(call->zmq);
        return 0;
    }
    s_in in = {body, body, body + len, err};
    s_body b;
    memset(&b, 0, sizeof(b));
    s_buf o = {0};
    int rc = -1;
    if (!body) {
        titan_http_fail(err, "bad_request", "the body is empty: send a JSON object");
        goto out;
    }
    if (s_object(&in, route, &b)) goto out;
    /* The request's texts go on as they came: valid JSON, checked above. */
    if (route == TITAN_HTTP_EMBEDDINGS) {
        s_puts(&o, "{\"op\":\"embed\"");
        s_put_member(&o, "model", &b.val[M_MODEL]);
        s_put_member(&o, "input", &b.val[M_INPUT]);
        if (b.has_dimensions) {
            s_puts(&o, ",\"dimensions\":");
            s_putu(&o, b.dimensions);
        }
        s_puts(&o, ",\"binary\":true}");
        call->nitems = b.nitems;
        call->base64 = b.base64;
    } else {
        s_puts(&o, "{\"op\":\"rerank\"");
        s_put_member(&o, "model", &b.val[M_MODEL]);
        s_put_member(&o, "query", &b.val[M_QUERY]);
        size_t docs_at = o.len + strlen(",\"documents\":");
        s_put_member(&o, "documents", &b.val[M_DOCUMENTS]);
        if (b.has_top_n) {
            s_puts(&o, ",\"top_n\":");
            s_putu(&o, b.top_n);
        }
        s_puts(&o, "}");
        call->nitems = b.ndocs;
        call->return_documents = b.return_documents;
        if (b.return_documents && !o.oom) {
            /* The body is at most a few GiB (--http-max-body-kb), so offsets fit 32 bits; checked all the same. */
            if (o.len > UINT32_MAX) {
                titan_http_fail(err, "too_large", "the request is too large to return its documents");
                goto out;
            }
            call->doc_off = malloc(b.ndocs * sizeof(uint32_t));
            call->doc_len = malloc(b.ndocs * sizeof(uint32_t));
            if (!call->doc_off || !call->doc_len) o.oom = true;
            for (size_t i = 0; i < b.ndocs && !o.oom; i++) {
                call->doc_off[i] = (uint32_t)(docs_at + (size_t)(b.docs[i].s - b.val[M_DOCUMENTS].s));
                call->doc_len[i] = (uint32_t)b.docs[i].n;
            }
        }
    }
    if (o.oom) {
        titan_http_fail(err, "internal", "out of memory translating the request");
        goto out;
    }
    call->zmq = o.p;
    call->zmq_len = o.len;
    o.p = NULL;
    rc = 0;
out:
    free(o.p);
    free(b.docs);
    if (rc) titan_http_call_release(call);
    return rc;
}

/* ---- replies ---- */

static const char s_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Writes n bytes as standard base64 with padding (RFC 4648 section 4). */
static void s_put_base64(s_buf *o, const unsigned char *p, size_t n)
{
    if (!s_reserve(o, (n + 2) / 3 * 4)) return;
    char *w = o->p + o->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *w++ = s_b64[v >> 18];
        *w++ = s_b64[(v >> 12) & 63];
        *w++ = s_b64[(v >> 6) & 63];
        *w++ = s_b64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *w++ = s_b64[v >> 18];
        *w++ = s_b64[(v >> 12) & 63];
        *w++ = i + 1 < n ? s_b64[(v >> 6) & 63] : '=';
        *w++ = '=';
    }
    o->len = (size_t)(w - o->p);
    o->p[o->len] = '\0';
}

/* A non-negative integer member of obj (0 when absent or not one). */
static unsigned long long s_count(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (unsigned long long)json_integer_value(v) : 0;
}

static void s_put_usage(s_buf *o, json_t *h)
{
    json_t *u = json_object_get(h, "usage");
    s_puts(o, "\"usage\":{\"prompt_tokens\":");
    s_putu(o, s_count(u, "prompt_tokens"));
    s_puts(o, ",\"total_tokens\":");
    s_putu(o, s_count(u, "total_tokens"));
    s_puts(o, "}");
}

/* The data of an embed reply: its n x d float32 frame. */
static int s_answer_embeddings(const titan_http_call *call, json_t *h, const void *const *frames, const size_t *sizes,
                               size_t nframes, s_buf *o, titan_http_error *err)
{
    json_t *e = json_object_get(h, "embeddings"), *shape = json_object_get(e, "shape");
    json_t *model = json_object_get(h, "model");
    const char *dtype = json_string_value(json_object_get(e, "dtype"));
    json_t *frame = json_object_get(e, "frame");
    if (!json_is_object(e) || !dtype || strcmp(dtype, "float32") != 0 || json_array_size(shape) != 2 ||
        !json_is_integer(json_array_get(shape, 0)) || !json_is_integer(json_array_get(shape, 1)) ||
        json_integer_value(frame) != 1 || !json_is_string(model))
        return titan_http_fail(err, "internal", "the worker's embed reply has no float32 \"embeddings\" [n, d] in "
                               "frame 1 with its \"model\"");
    json_int_t n = json_integer_value(json_array_get(shape, 0)), d = json_integer_value(json_array_get(shape, 1));
    if (n < 0 || d < 0 || (uint64_t)n != call->nitems)
        return titan_http_fail(err, "internal", "the worker answered %lld embeddings of %lld for %zu inputs",
                               (long long)n, (long long)d, call->nitems);
    size_t nn = (size_t)n, dd = (size_t)d;
    if (nframes != 2 || (dd && nn > SIZE_MAX / 4 / dd) || sizes[1] != nn * dd * 4)
        return titan_http_fail(err, "internal", "the worker's embeddings frame holds %zu bytes, not %zu x %zu float32",
                               nframes == 2 ? sizes[1] : 0, nn, dd);
    const unsigned char *data = frames[1];
    for (size_t i = 0; i < nn * dd; i++) {
        uint32_t bits;
        memcpy(&bits, data + 4 * i, 4);
        bits = le32toh(bits);
        float f;
        memcpy(&f, &bits, 4);
        if (!isfinite(f))
            return titan_http_fail(err, "internal", "the model gave a non-finite value in embedding %zu (element %zu): "
                                   "it cannot be sent as JSON", i / dd, i % dd);
    }
    /* Room for it all at once: each float's text and its comma, or its base64 text, plus each item's frame. */
    size_t per_item = call->base64 ? (dd * 4 + 2) / 3 * 4 : dd * (TITAN_FLOAT32_TEXT_MAX + 1);
    if (per_item > (SIZE_MAX - 4096) / (nn ? nn : 1) - 96)
        return titan_http_fail(err, "too_large", "the embeddings are too large to answer as JSON");
    s_reserve(o, nn * (per_item + 96) + 256 + 6 * strlen(json_string_value(model)));
    s_puts(o, "{\"object\":\"list\",\"data\":[");
    char num[40];
    for (size_t i = 0; i < nn; i++) {
        s_puts(o, i ? ",{\"object\":\"embedding\",\"index\":" : "{\"object\":\"embedding\",\"index\":");
        s_putu(o, i);
        s_puts(o, ",\"embedding\":");
        const unsigned char *row = data + 4 * dd * i;
        if (call->base64) {
            s_puts(o, "\"");
            s_put_base64(o, row, 4 * dd);
            s_puts(o, "\"}");
            continue;
        }
        s_puts(o, "[");
        for (size_t k = 0; k < dd && !o->oom; k++) {
            uint32_t bits;
            memcpy(&bits, row + 4 * k, 4);
            bits = le32toh(bits);
            float f;
            memcpy(&f, &bits, 4);
            int len = titan_format_float32(f, num + 1, sizeof(num) - 1);
            num[0] = ',';
            s_put(o, k ? num : num + 1, (size_t)len + (k ? 1 : 0));
        }
        s_puts(o, "]}");
    }
    s_puts(o, "],\"model\":");
    s_put_jstring(o, json_string_value(model));
    s_puts(o, ",");
    s_put_usage(o, h);
    s_puts(o, "}\n");
    return 0;
}

static int s_answer_rerank(const titan_http_call *call, json_t *h, s_buf *o, titan_http_error *err)
{
    json_t *results = json_object_get(h, "results"), *model = json_object_get(h, "model");
    if (!json_is_array(results) || !json_is_string(model) || json_array_size(results) > call->nitems)
        return titan_http_fail(err, "internal", "the worker's rerank reply has no \"results\" list (at most one per "
                               "document) with its \"model\"");
    s_puts(o, "{\"model\":");
    s_put_jstring(o, json_string_value(model));
    s_puts(o, ",\"results\":[");
    size_t i;
    json_t *r;
    json_array_foreach(results, i, r)
    {
        json_t *idx = json_object_get(r, "index"), *rel = json_object_get(r, "relevance_score");
        if (!json_is_integer(idx) || json_integer_value(idx) < 0 || (uint64_t)json_integer_value(idx) >= call->nitems ||
            !(json_is_number(rel) || json_is_null(rel)))
            return titan_http_fail(err, "internal", "the worker's rerank result %zu has no document index below %zu "
                                   "or no relevance_score", i, call->nitems);
        size_t k = (size_t)json_integer_value(idx);
        s_puts(o, i ? ",{\"index\":" : "{\"index\":");
        s_putu(o, k);
        s_puts(o, ",\"relevance_score\":");
        double v = json_number_value(rel);
        char num[40];
        if (json_is_null(rel) || !isfinite(v)) {
            s_puts(o, "null");
        } else {
            int len = titan_format_float64(v, num, sizeof(num));
            s_put(o, num, (size_t)len);
        }
        if (call->return_documents && call->doc_off) {
            s_puts(o, ",\"document\":{\"text\":");
            s_put(o, call->zmq + call->doc_off[k], call->doc_len[k]);
            s_puts(o, "}");
        }
        s_puts(o, "}");
    }
    s_puts(o, "],");
    s_put_usage(o, h);
    s_puts(o, "}\n");
    return 0;
}

static int s_answer_models(json_t *h, bool none, s_buf *o, titan_http_error *err)
{
    json_t *models = json_object_get(h, "models");
    if (!none && !json_is_array(models))
        return titan_http_fail(err, "internal", "the worker's list_models reply has no \"models\" list");
    s_puts(o, "{\"object\":\"list\",\"data\":[");
    size_t i, k = 0;
    json_t *m;
    json_array_foreach(models, i, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        if (!name) continue;
        s_puts(o, k++ ? ",{\"id\":" : "{\"id\":");
        s_put_jstring(o, name);
        s_puts(o, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"titan\"}");
    }
    s_puts(o, "]}\n");
    return 0;
}

int titan_http_call_answer(const titan_http_call *call, const void *const *frames, const size_t *sizes,
                           size_t nframes, char **out, size_t *out_len, titan_http_error *err)
{
    if (nframes < 1 || !frames[0] || sizes[0] > TITAN_HTTP_MAX_REPLY_HEADER)
        return titan_http_fail(err, "internal", "the worker's reply has no JSON header of at most %u bytes",
                               TITAN_HTTP_MAX_REPLY_HEADER);
    json_error_t jerr;
    json_t *h = json_loadb(frames[0], sizes[0], JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(h)) {
        json_decref(h);
        return titan_http_fail(err, "internal", "the worker's reply is not a JSON object: %s", jerr.text);
    }
    static const char *const ops[] = {"embed", "rerank", "list_models"};
    static const char *const paths[] = {"/v1/embeddings", "/v1/rerank", "/v1/models"};
    s_buf o = {0};
    int rc;
    json_t *e = json_object_get(h, "error");
    const char *code = json_string_value(json_object_get(h, "code"));
    bool no_models = call->route == TITAN_HTTP_MODELS && e && code && strcmp(code, "unsupported") == 0;
    if (e && !no_models) {
        const char *msg = json_string_value(e);
        if (!code) code = "internal";
        if (strcmp(code, "unknown_op") == 0)
            rc = titan_http_fail(err, code, "this titan-worker cannot serve %s: it has no \"%s\" op (%s)",
                                 paths[call->route], ops[call->route], msg ? msg : "unknown op");
        else
            rc = msg && *msg ? titan_http_fail(err, code, "%s", msg)
                             : titan_http_fail(err, code, "the worker answered %.31s without a message", code);
    } else if (call->route == TITAN_HTTP_EMBEDDINGS) {
        rc = s_answer_embeddings(call, h, frames, sizes, nframes, &o, err);
    } else if (call->route == TITAN_HTTP_RERANK) {
        rc = s_answer_rerank(call, h, &o, err);
    } else {
        /* A worker without --models serves none: an empty list, not an error. */
        rc = s_answer_models(h, no_models, &o, err);
    }
    json_decref(h);
    if (rc == 0 && o.oom) rc = titan_http_fail(err, "internal", "out of memory writing the answer");
    if (rc) {
        free(o.p);
        return -1;
    }
    *out = o.p;
    *out_len = o.len;
    return 0;
}
