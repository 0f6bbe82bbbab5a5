/* fuzz_reply.c - libFuzzer target: reply encoding (numbers, result arrays, error/JSON builders) and reply decoding. */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "jsonscan.h"
#include "numfmt.h"
#include "request.h"
#include "titan/tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every check failure aborts, which libFuzzer (and the replay runner) report as a crash. */
#define CHECK(cond)                                                                                                  \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "fuzz_reply: check failed at line %d: %s\n", __LINE__, #cond);                          \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

static const char *const s_codes[] = {"bad_request", "unknown_op", "too_large", "busy", "timeout",
                                      "unsupported", "shutting_down", "device_error", "internal", "unauthorized"};

/* Same value, or both NaN (the wire has one NaN: payload and sign are not kept). */
static bool s_same64(double a, double b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return a == b && signbit(a) == signbit(b);
}

static bool s_same32(float a, float b)
{
    return s_same64(a, b);
}

/* (a) Formatting then parsing gives every float32/float64 back, and a finite number's text
 * is a JSON number that a double-based decoder (jansson, Python's json) reads back exactly. */
static void s_numbers(const uint8_t *data, size_t size)
{
    char buf[64];
    for (size_t i = 0; i + 4 <= size && i < 256; i += 4) {
        float f;
        memcpy(&f, data + i, sizeof(f));
        int len = titan_format_float32(f, buf, sizeof(buf));
        CHECK(len > 0 && len < 32 && buf[len] == '\0' && strlen(buf) == (size_t)len);
        /* Found by this target: fixed notation up to 1e16 takes 19 characters, while the
         * worker's JSON result reserved 16 a float32, separator included (a heap overflow). */
        CHECK(len <= TITAN_FLOAT32_TEXT_MAX);
        float back;
        CHECK(titan_parse_f32(buf, buf + len, &back) == (size_t)len);
        CHECK(s_same32(back, f));
        if (isfinite(f)) {
            json_t *j = json_loadb(buf, (size_t)len, JSON_DECODE_ANY, NULL);
            CHECK(j && json_is_real(j));
            CHECK(s_same32((float)json_real_value(j), f));
            json_decref(j);
        }
    }
    for (size_t i = 0; i + 8 <= size && i < 512; i += 8) {
        double d;
        memcpy(&d, data + i, sizeof(d));
        int len = titan_format_float64(d, buf, sizeof(buf));
        CHECK(len > 0 && len < 32 && buf[len] == '\0' && strlen(buf) == (size_t)len);
        CHECK(len <= TITAN_FLOAT64_TEXT_MAX);
        double back;
        CHECK(titan_parse_f64(buf, buf + len, &back) == (size_t)len);
        CHECK(s_same64(back, d));
        if (isfinite(d)) {
            json_t *j = json_loadb(buf, (size_t)len, JSON_DECODE_ANY, NULL);
            CHECK(j && json_is_real(j));
            CHECK(s_same64(json_real_value(j), d));
            json_decref(j);
        }
        /* A float32 parse of a float64 text is the correctly rounded float32 (ties aside, which
         * double rounding may break, so only when the double is exact in float32). */
        float f32;
        CHECK(titan_parse_f32(buf, buf + len, &f32) == (size_t)len);
        if ((double)(float)d == d) CHECK(s_same32(f32, (float)d));
    }
}

/* Encodes a tensor of fuzz-chosen rank (1..8) and shape (mostly dimensions of size 1, where the
 * old bracket count ran short) with the worker's own JSON encoder (titan_out_json_tensors, whose
 * buffer is exactly titan_tensor_text_bound: ASan catches any overrun), then decodes it as a client
 * does (the split takes the array into a tensor, jansson reads the rest). It must give back the
 * shape, every element (NaN as NaN) and the id. The list form ("outputs": [T, T]) must split too. */
static void s_result_roundtrip(titan_dtype dt, const uint8_t *data, size_t size, json_t *id)
{
    size_t isz = titan_dtype_size(dt);
    size_t count = size / isz;
    if (count == 0) return;
    if (count > 256) count = 256;
    int rank = 1 + data[0] % TITAN_MAX_RANK;
    int64_t shape[TITAN_MAX_RANK];
    size_t elems = 1;
    for (int i = 0; i < rank; i++) {
        uint8_t b = (size_t)i + 1 < size ? data[i + 1] : 0;
        size_t d = (b & 3) ? 1 : 1 + (size_t)(b >> 2) % 9;
        if (elems * d > count) d = 1;
        shape[i] = (int64_t)d;
        elems *= d;
    }
    void *c = malloc(elems * isz);
    CHECK(c);
    memcpy(c, data, elems * isz);

    titan_out out;
    memset(&out, 0, sizeof(out));
    titan_json_part part = {"result", dt, c, shape, rank};
    CHECK(titan_out_json_tensors(&out, NULL, &part, 1, NULL, id) == 0);
    CHECK(out.hdr && strlen(out.hdr) == out.hdr_len);
    titan_json_split sp;
    char err[256];
    int rc = titan_json_split_object(out.hdr, out.hdr_len, dt, 1 << 20, &sp, err, sizeof(err));
    if (rc) fprintf(stderr, "fuzz_reply: split failed: %s\n%s\n", err, out.hdr);
    CHECK(rc == 0);
    CHECK(sp.nspans == 1 && sp.spans[0].key_len == 6 && memcmp(sp.spans[0].key, "result", 6) == 0);
    const titan_json_span *s = &sp.spans[0];
    CHECK(s->status == 0 && s->data && s->dtype == dt && s->rank == rank);
    for (int i = 0; i < rank; i++) CHECK(s->shape[i] == shape[i]);
    for (size_t k = 0; k < elems; k++) {
        if (dt == TITAN_DTYPE_FLOAT32)
            CHECK(s_same32(((const float *)s->data)[k], ((const float *)c)[k]));
        else
            CHECK(s_same64(((const double *)s->data)[k], ((const double *)c)[k]));
    }
    json_error_t jerr;
    json_t *rest = json_loadb(sp.rest, sp.rest_len, JSON_REJECT_DUPLICATES, &jerr);
    CHECK(rest && json_is_object(rest) && json_is_null(json_object_get(rest, "result")));
    CHECK(id ? json_equal(json_object_get(rest, "id"), id) : json_object_get(rest, "id") == NULL);
    CHECK(json_object_get(rest, "error") == NULL);
    json_decref(rest);
    titan_json_split_release(&sp);
    titan_out_release(&out);

    /* The list form of inference's outputs, with another member beside it. */
    titan_json_part two[2] = {part, part};
    two[1].rank = 1;
    two[1].shape = &shape[rank - 1];
    CHECK(titan_out_json_tensors(&out, "outputs", two, 2, json_pack("{s:s}", "model", "m"), id) == 0);
    rc = titan_json_split_object(out.hdr, out.hdr_len, dt, 1 << 20, &sp, err, sizeof(err));
    if (rc) fprintf(stderr, "fuzz_reply: list split failed: %s\n%s\n", err, out.hdr);
    CHECK(rc == 0 && sp.nspans == 1);
    rest = json_loadb(sp.rest, sp.rest_len, JSON_REJECT_DUPLICATES, &jerr);
    CHECK(rest && json_is_string(json_object_get(rest, "model")));
    CHECK(id ? json_equal(json_object_get(rest, "id"), id) : json_object_get(rest, "id") == NULL);
    json_decref(rest);
    titan_json_split_release(&sp);
    titan_out_release(&out);
    free(c);
}

/* (b) Any bytes as a reply header: the client's view (split + jansson, then the members
 * it reads) must fail cleanly or give well-typed values. */
static void s_decode_reply(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    titan_json_split sp;
    char err[256];
    if (titan_json_split_object(text, size, TITAN_DTYPE_FLOAT64, 1 << 16, &sp, err, sizeof(err)) == 0) {
        /* each array value becomes null in rest: "[]" grows by two characters */
        CHECK(sp.nspans <= TITAN_JSON_MAX_SPANS && sp.rest && sp.rest_len <= size + 2 * sp.nspans);
        json_t *hdr = json_loadb(sp.rest, sp.rest_len, JSON_REJECT_DUPLICATES, NULL);
        if (hdr) {
            CHECK(json_is_object(hdr));
            for (size_t i = 0; i < sp.nspans; i++) {
                const titan_json_span *s = &sp.spans[i];
                if (s->status == 0) {
                    size_t n;
                    CHECK(titan_shape_elems(s->dtype, s->shape, s->rank, &n) == 0 && n <= (1 << 16));
                    /* every element a client reads must be formattable again */
                    char buf[64];
                    for (size_t k = 0; k < n && k < 16; k++)
                        CHECK(titan_format_float64(((const double *)s->data)[k], buf, sizeof(buf)) > 0);
                }
            }
            json_decref(hdr);
        }
        titan_json_split_release(&sp);
    }
    /* The plain DOM path (s_reply_object in the client): the header as one NUL-free string. */
    json_t *j = json_loadb(text, size, JSON_REJECT_DUPLICATES, NULL);
    if (j && json_is_object(j)) {
        json_t *e = json_object_get(j, "error");
        if (json_is_string(e)) CHECK(json_string_value(e) != NULL);
        json_t *r = json_object_get(j, "result");
        if (json_is_object(r)) {
            titan_dtype dt = titan_dtype_from_name(json_string_value(json_object_get(r, "dtype")));
            (void)titan_dtype_size(dt);
        }
    }
    json_decref(j);
}

/* (c) The worker's reply builders: the bytes as a request header give an id (or an error),
 * and a fuzz-chosen error text and code; the reply must be one valid JSON object that
 * carries them back. */
static void s_builders(const uint8_t *data, size_t size)
{
    titan_limits limits = {.max_request_bytes = 1 << 20, .max_result_bytes = 1 << 20, .max_inflight_bytes = 1 << 22};
    titan_request req;
    titan_error perr = {0};
    int prc = titan_request_parse(&req, (const char *)data, size, NULL, 0, &limits, &perr);
    json_t *id = prc == 0 ? req.id : NULL;
    if (prc != 0) CHECK(perr.code != NULL);

    /* Error text: the bytes themselves (vsnprintf may cut them mid-character at 511). */
    char *msgsrc = malloc(size + 1);
    CHECK(msgsrc);
    memcpy(msgsrc, data, size);
    msgsrc[size] = '\0';
    titan_error err;
    const char *code = size ? (data[size - 1] % 12 < 10 ? s_codes[data[size - 1] % 12] : NULL) : "bad_request";
    titan_fail(&err, code, "%s", msgsrc);
    free(msgsrc);
    if (size && data[0] % 3 == 0) err = perr.code ? perr : err; /* the parser's own error, sometimes */
    json_t *want_msg = json_string(err.msg); /* NULL when the text is not UTF-8 */

    titan_out out;
    memset(&out, 0, sizeof(out));
    /* Data frames of a reply that failed late must be freed by the error builder. */
    out.data[0] = malloc(16);
    out.size[0] = 16;
    out.ndata = 1;
    CHECK(titan_out_error(&out, &err, id) == 0);
    CHECK(out.ndata == 0 && out.hdr && strlen(out.hdr) == out.hdr_len);
    json_error_t jerr;
    json_t *r = json_loadb(out.hdr, out.hdr_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!r) fprintf(stderr, "fuzz_reply: error reply is not JSON (%s): %s\n", jerr.text, out.hdr);
    CHECK(r && json_is_object(r));
    json_t *e = json_object_get(r, "error");
    CHECK(json_is_string(e));
    if (want_msg)
        CHECK(json_equal(e, want_msg));
    else
        CHECK(strcmp(json_string_value(e), "request rejected") == 0);
    CHECK(json_is_string(json_object_get(r, "code")));
    CHECK(strcmp(json_string_value(json_object_get(r, "code")), err.code ? err.code : "internal") == 0);
    CHECK(id ? json_equal(json_object_get(r, "id"), id) : json_object_get(r, "id") == NULL);
    CHECK(json_object_size(r) == (id ? 3u : 2u));
    json_decref(r);
    json_decref(want_msg);
    titan_out_release(&out);

    /* titan_out_json with a fuzz-derived object (the header's DOM, when it parsed). */
    if (prc == 0 || req.hdr) {
        json_t *obj = json_deep_copy(req.hdr);
        CHECK(obj);
        json_t *want = json_deep_copy(obj);
        CHECK(want);
        if (id) json_object_set(want, "id", id);
        CHECK(titan_out_json(&out, obj, id) == 0);
        CHECK(out.hdr && strlen(out.hdr) == out.hdr_len);
        r = json_loadb(out.hdr, out.hdr_len, JSON_REJECT_DUPLICATES, &jerr);
        CHECK(r && json_equal(r, want));
        json_decref(r);
        json_decref(want);
        titan_out_release(&out);
    }

    /* The JSON result form, encoded then decoded, with this id. */
    s_result_roundtrip(TITAN_DTYPE_FLOAT32, data, size, id);
    s_result_roundtrip(TITAN_DTYPE_FLOAT64, data, size, id);
    titan_request_release(&req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_numbers(data, size);
    s_decode_reply(data, size);
    s_builders(data, size);
    return 0;
}
