/* test_http_api.c - cmocka tests of the /v1 API's parts without HTTP: body translation (http_api.c), answers from
 * replies (floats back bit for bit, base64 decoded here by a decoder of the test's own), error statuses, the peer
 * rule over sockaddr values, bearer tokens and their file (http_auth.c), and the bridge (http_bridge.c) against a
 * ROUTER of the test's own on an inproc endpoint: replies, a full bridge, timeouts, late replies, a close. */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <zmq.h>

#include "http_api.h"
#include "http_auth.h"
#include "http_bridge.h"

/* ---- helpers ---- */

static json_t *s_json(const char *text, size_t len)
{
    json_error_t e;
    json_t *j = json_loadb(text, len, 0, &e);
    if (!j) fail_msg("not JSON (%s): %.*s", e.text, (int)(len > 300 ? 300 : len), text);
    return j;
}

/* Parses body on route; asserts success and returns the ZeroMQ header as JSON. */
static json_t *s_ok(titan_http_route route, const char *body, titan_http_call *call)
{
    titan_http_error err;
    int rc = titan_http_call_parse(route, body, strlen(body), call, &err);
    if (rc != 0) fail_msg("refused %s: %d %s", body, err.status, err.message);
    assert_int_equal(strlen(call->zmq), call->zmq_len);
    return s_json(call->zmq, call->zmq_len);
}

/* Parses body on route; asserts the refusal's status and that its message holds words. */
static void s_refused(titan_http_route route, const char *body, size_t len, unsigned status, const char *words)
{
    titan_http_call call;
    titan_http_error err;
    int rc = titan_http_call_parse(route, body, len, &call, &err);
    if (rc == 0) fail_msg("accepted: %.*s", (int)len, body);
    if (err.status != status || !strstr(err.message, words))
        fail_msg("%.*s: %u '%s' (wanted %u with '%s')", (int)len, body, err.status, err.message, status, words);
    assert_null(call.zmq);
}

static void s_refused_s(titan_http_route route, const char *body, unsigned status, const char *words)
{
    s_refused(route, body, strlen(body), status, words);
}

/* ---- request bodies ---- */

static void test_embeddings_shapes(void **state)
{
    (void)state;
    titan_http_call call;
    json_t *z = s_ok(TITAN_HTTP_EMBEDDINGS, "{\"model\":\"m\",\"input\":\"hello \\u00e9 \\ud83d\\ude00\"}", &call);
    assert_string_equal(json_string_value(json_object_get(z, "op")), "embed");
    assert_string_equal(json_string_value(json_object_get(z, "model")), "m");
    /* The text goes on as it came: the same string once decoded. */
    assert_string_equal(json_string_value(json_object_get(z, "input")), "hello \xc3\xa9 \xf0\x9f\x98\x80");
    assert_true(json_is_true(json_object_get(z, "binary")));
    assert_null(json_object_get(z, "dimensions"));
    assert_int_equal(call.nitems, 1);
    assert_false(call.base64);
    json_decref(z);
    titan_http_call_release(&call);

    z = s_ok(TITAN_HTTP_EMBEDDINGS,
             " {\"input\" : [\"a\", \"b\",\"c\"] , \"model\":\"x/y\", \"encoding_format\":\"base64\", \"dimensions\":256,"
             " \"user\":\"someone\"} \n",
             &call);
    assert_int_equal(call.nitems, 3);
    assert_true(call.base64);
    assert_int_equal(json_integer_value(json_object_get(z, "dimensions")), 256);
    assert_int_equal(json_array_size(json_object_get(z, "input")), 3);
    assert_null(json_object_get(z, "user"));
    assert_null(json_object_get(z, "encoding_format"));
    json_decref(z);
    titan_http_call_release(&call);

    /* One list of token ids is one input; a list of lists, one per list. */
    z = s_ok(TITAN_HTTP_EMBEDDINGS, "{\"model\":\"m\",\"input\":[101, 2023, 0, 2147483647]}", &call);
    assert_int_equal(call.nitems, 1);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(z, "input"), 3)), 2147483647);
    json_decref(z);
    titan_http_call_release(&call);
    z = s_ok(TITAN_HTTP_EMBEDDINGS, "{\"model\":\"m\",\"input\":[[1,2],[3],[4,5,6]],\"encoding_format\":null,"
                                    "\"dimensions\":null,\"user\":null}",
             &call);
    assert_int_equal(call.nitems, 3);
    assert_false(call.base64);
    json_decref(z);
    titan_http_call_release(&call);
}

static void test_embeddings_refusals(void **state)
{
    (void)state;
    titan_http_route E = TITAN_HTTP_EMBEDDINGS;
    s_refused_s(E, "", 400, "empty");
    s_refused_s(E, "  ", 400, "empty");
    s_refused_s(E, "[1]", 400, "must be a JSON object");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\"", 400, "expected ',' or '}'");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\"} x", 400, "more after the JSON object");
    s_refused_s(E, "{\"model\":\"m\"}", 400, "needs \"input\"");
    s_refused_s(E, "{\"input\":\"a\"}", 400, "needs \"model\"");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\",\"temperature\":1}", 400, "no member \"temperature\"");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\",\"model\":\"n\"}", 400, "\"model\" is given twice");
    s_refused_s(E, "{\"model\":1,\"input\":\"a\"}", 400, "\"model\" must be a string");
    s_refused_s(E, "{\"model\":\"\",\"input\":\"a\"}", 400, "\"model\" is empty");
    s_refused_s(E, "{\"model\":null,\"input\":\"a\"}", 400, "\"model\" must be a string");
    s_refused_s(E, "{\"model\":\"m\",\"input\":null}", 400, "must not be null");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[]}", 400, "empty list");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[\"a\",1]}", 400, "input[1] must be a string");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[1,\"a\"]}", 400, "input[1] must be a whole number");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[1,-2]}", 400, "not negative");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[-1]}", 400, "not negative");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[1.5]}", 400, "whole number");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[1e3]}", 400, "whole number");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[2147483648]}", 400, "outside 0 to 2147483647");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[99999999999999999999999]}", 400, "outside");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[007]}", 400, "whole number");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[[1],[]]}", 400, "input[1] is an empty list");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[[1],2]}", 400, "input[1] must be a list of token ids");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[[[1]]]}", 400, "input[0][0] must be a whole number");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[{}]}", 400, "must be a string, a list of strings");
    s_refused_s(E, "{\"model\":\"m\",\"input\":{\"a\":1}}", 400, "must be a string, a list of strings");
    s_refused_s(E, "{\"model\":\"m\",\"input\":[\"a\" \"b\"]}", 400, "expected ',' or ']'");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\",\"encoding_format\":\"int8\"}", 400, "\"float\" or \"base64\"");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\",\"encoding_format\":3}", 400, "\"float\" or \"base64\"");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\",\"dimensions\":0}", 400, "outside 1 to");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\",\"dimensions\":\"8\"}", 400, "whole number");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\",\"user\":5}", 400, "\"user\" must be a string");
    /* Strings: escapes, control characters, UTF-8. */
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\\x\"}", 400, "not a JSON escape");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\\u12\"}", 400, "four hexadecimal digits");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"\\ud800\"}", 400, "without its low surrogate");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"\\udc00x\"}", 400, "lone low surrogate");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"\\u0000\"}", 400, "\\u0000");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"a\tb\"}", 400, "control character (0x09)");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"\xc3\"}", 400, "not valid UTF-8");
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"\xc0\xaf\"}", 400, "not valid UTF-8");       /* overlong '/' */
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"\xed\xa0\x80\"}", 400, "not valid UTF-8");   /* a surrogate */
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"\xf4\x90\x80\x80\"}", 400, "not valid UTF-8"); /* > U+10FFFF */
    s_refused_s(E, "{\"model\":\"m\",\"input\":\"abc", 400, "does not end");
    char longname[400];
    memset(longname, 'a', sizeof(longname));
    char body[600];
    snprintf(body, sizeof(body), "{\"model\":\"%.*s\",\"input\":\"a\"}", TITAN_HTTP_MAX_MODEL + 1, longname);
    s_refused_s(E, body, 400, "longer than 256 bytes");
    /* A NUL byte in the body is no JSON. */
    const char nul[] = "{\"model\":\"m\",\"input\":\"a\0b\"}";
    s_refused(E, nul, sizeof(nul) - 1, 400, "control character (0x00)");
    /* Messages are UTF-8 whatever the body held: a byte after a backslash, a name cut inside a character
     * (fuzz_http_body found the error body lost to them). */
    const char *odd[] = {"{\"model\":\"m\",\"input\":\"a\\\xff\"}",
                         "{\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\xc3\xa9\":1}"};
    for (size_t i = 0; i < 2; i++) {
        titan_http_call call;
        titan_http_error err;
        assert_int_equal(titan_http_call_parse(E, odd[i], strlen(odd[i]), &call, &err), -1);
        size_t len;
        char *eb = titan_http_error_body(&err, &len);
        assert_non_null(eb);
        json_t *j = s_json(eb, len);
        assert_non_null(strstr(json_string_value(json_object_get(json_object_get(j, "error"), "message")), "?"));
        json_decref(j);
        free(eb);
    }
    /* Where: the byte offset of the problem. */
    s_refused_s(E, "{\"model\":\"m\",\"input\":[1,2,}", 400, "at byte 26");
}

static void test_embeddings_item_cap(void **state)
{
    (void)state;
    /* One more list than TITAN_HTTP_MAX_ITEMS: 413, not a slow crawl through memory. */
    size_t n = TITAN_HTTP_MAX_ITEMS + 1;
    size_t cap = 64 + n * 4;
    char *body = malloc(cap);
    size_t o = (size_t)snprintf(body, cap, "{\"model\":\"m\",\"input\":[");
    for (size_t i = 0; i < n; i++) o += (size_t)snprintf(body + o, cap - o, "%s[1]", i ? "," : "");
    o += (size_t)snprintf(body + o, cap - o, "]}");
    s_refused(TITAN_HTTP_EMBEDDINGS, body, o, 413, "more than 65536 items");
    /* Exactly the cap is fine. */
    o = (size_t)snprintf(body, cap, "{\"model\":\"m\",\"input\":[");
    for (size_t i = 0; i < n - 1; i++) o += (size_t)snprintf(body + o, cap - o, "%s[1]", i ? "," : "");
    o += (size_t)snprintf(body + o, cap - o, "]}");
    titan_http_call call;
    titan_http_error err;
    assert_int_equal(titan_http_call_parse(TITAN_HTTP_EMBEDDINGS, body, o, &call, &err), 0);
    assert_int_equal(call.nitems, TITAN_HTTP_MAX_ITEMS);
    titan_http_call_release(&call);
    free(body);
}

static void test_rerank_parse(void **state)
{
    (void)state;
    titan_http_call call;
    const char *body = "{\"model\":\"r\",\"query\":\"q \\\"x\\\"\",\"documents\":[\"one\", \"t\\u00e9wo\",\"\"],"
                       "\"top_n\":2,\"return_documents\":true}";
    json_t *z = s_ok(TITAN_HTTP_RERANK, body, &call);
    assert_string_equal(json_string_value(json_object_get(z, "op")), "rerank");
    assert_string_equal(json_string_value(json_object_get(z, "query")), "q \"x\"");
    assert_int_equal(json_integer_value(json_object_get(z, "top_n")), 2);
    assert_null(json_object_get(z, "return_documents"));
    assert_int_equal(call.nitems, 3);
    assert_true(call.return_documents);
    /* Each document's span within the ZeroMQ header is its JSON string. */
    const char *want[] = {"\"one\"", "\"t\\u00e9wo\"", "\"\""};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(call.doc_len[i], strlen(want[i]));
        assert_memory_equal(call.zmq + call.doc_off[i], want[i], call.doc_len[i]);
    }
    json_decref(z);
    titan_http_call_release(&call);
    z = s_ok(TITAN_HTTP_RERANK, "{\"model\":\"r\",\"query\":\"\",\"documents\":[\"a\"],\"return_documents\":false}",
             &call);
    assert_false(call.return_documents);
    assert_null(call.doc_off);
    assert_null(json_object_get(z, "top_n"));
    json_decref(z);
    titan_http_call_release(&call);

    titan_http_route R = TITAN_HTTP_RERANK;
    s_refused_s(R, "{\"model\":\"r\",\"documents\":[\"a\"]}", 400, "needs \"query\"");
    s_refused_s(R, "{\"model\":\"r\",\"query\":\"q\"}", 400, "needs \"documents\"");
    s_refused_s(R, "{\"model\":\"r\",\"query\":\"q\",\"documents\":[]}", 400, "empty list");
    s_refused_s(R, "{\"model\":\"r\",\"query\":\"q\",\"documents\":[\"a\",{\"text\":\"b\"}]}", 400,
                "documents[1] must be a string");
    s_refused_s(R, "{\"model\":\"r\",\"query\":5,\"documents\":[\"a\"]}", 400, "\"query\" must be a string");
    s_refused_s(R, "{\"model\":\"r\",\"query\":\"q\",\"documents\":[\"a\"],\"top_n\":0}", 400, "outside 1");
    s_refused_s(R, "{\"model\":\"r\",\"query\":\"q\",\"documents\":[\"a\"],\"return_documents\":1}", 400,
                "true or false");
    s_refused_s(R, "{\"model\":\"r\",\"query\":\"q\",\"documents\":[\"a\"],\"input\":\"x\"}", 400, "no member \"input\"");
    s_refused_s(TITAN_HTTP_EMBEDDINGS, "{\"model\":\"r\",\"query\":\"q\"}", 400, "no member \"query\"");

    /* GET /v1/models has no body: list_models. */
    z = s_ok(TITAN_HTTP_MODELS, "", &call);
    assert_string_equal(json_string_value(json_object_get(z, "op")), "list_models");
    json_decref(z);
    titan_http_call_release(&call);
}

/* ---- answers ---- */

/* The test's own base64 decoder (RFC 4648, with padding). Returns the bytes written, or -1. */
static long s_unbase64(const char *s, unsigned char *out, size_t cap)
{
    size_t n = strlen(s), o = 0;
    if (n % 4) return -1;
    for (size_t i = 0; i < n; i += 4) {
        unsigned v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = s[i + k];
            int d = c >= 'A' && c <= 'Z' ? c - 'A'
                    : c >= 'a' && c <= 'z' ? c - 'a' + 26
                    : c >= '0' && c <= '9' ? c - '0' + 52
                    : c == '+' ? 62
                    : c == '/' ? 63
                    : c == '=' ? (pad++, 0)
                               : -1;
            if (d < 0) return -1;
            v = v << 6 | (unsigned)d;
        }
        unsigned char b[3] = {(unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
        for (int k = 0; k < 3 - pad; k++) {
            if (o >= cap) return -1;
            out[o++] = b[k];
        }
    }
    return (long)o;
}

static uint32_t s_rand(uint64_t *st)
{
    *st = *st * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*st >> 32);
}

/* n x d float32 values: random bit patterns (finite only) and the awkward ones. */
static float *s_floats(size_t n, size_t d, uint64_t seed)
{
    static const float special[] = {0.0f, -0.0f, 1e-45f, -1e-45f, 1.17549435e-38f, 3.40282347e38f, -3.40282347e38f,
                                    0.1f, 1.0f / 3.0f, 16777217.0f, 1e16f, -9876543590000000.0f};
    float *v = malloc(n * d * sizeof(float) + 1);
    for (size_t i = 0; i < n * d; i++) {
        if (i < sizeof(special) / sizeof(special[0])) {
            v[i] = special[i];
            continue;
        }
        uint32_t bits;
        float f;
        do {
            bits = s_rand(&seed);
            memcpy(&f, &bits, 4);
        } while (!isfinite(f));
        v[i] = f;
    }
    return v;
}

static char *s_embed_header(size_t n, size_t d, const char *model)
{
    char *h;
    assert_true(asprintf(&h,
                         "{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[%zu,%zu],\"frame\":1},\"model\":\"%s\","
                         "\"dims\":%zu,\"usage\":{\"prompt_tokens\":17,\"total_tokens\":17}}",
                         n, d, model, d) > 0);
    return h;
}

/* Answers an embed call of n inputs with the n x d values v, as the server would. */
static int s_embed_answer(titan_http_call *call, size_t n, size_t d, const float *v, char **out, size_t *len,
                          titan_http_error *err)
{
    char *h = s_embed_header(n, d, "mod\\\"el"); /* JSON text: mod\"el */
    const void *frames[2] = {h, v};
    size_t sizes[2] = {strlen(h), n * d * sizeof(float)};
    int rc = titan_http_call_answer(call, frames, sizes, 2, out, len, err);
    free(h);
    return rc;
}

static void test_embeddings_answer(void **state)
{
    (void)state;
    const size_t n = 3, d = 257;
    float *v = s_floats(n, d, 42);
    for (int b64 = 0; b64 < 2; b64++) {
        titan_http_call call;
        json_t *z = s_ok(TITAN_HTTP_EMBEDDINGS,
                         b64 ? "{\"model\":\"m\",\"input\":[\"a\",\"b\",\"c\"],\"encoding_format\":\"base64\"}"
                             : "{\"model\":\"m\",\"input\":[\"a\",\"b\",\"c\"]}",
                         &call);
        json_decref(z);
        char *out;
        size_t len;
        titan_http_error err;
        assert_int_equal(s_embed_answer(&call, n, d, v, &out, &len, &err), 0);
        assert_int_equal(strlen(out), len);
        json_t *a = s_json(out, len);
        assert_string_equal(json_string_value(json_object_get(a, "object")), "list");
        assert_string_equal(json_string_value(json_object_get(a, "model")), "mod\"el");
        assert_int_equal(json_integer_value(json_object_get(json_object_get(a, "usage"), "prompt_tokens")), 17);
        assert_int_equal(json_integer_value(json_object_get(json_object_get(a, "usage"), "total_tokens")), 17);
        json_t *data = json_object_get(a, "data");
        assert_int_equal(json_array_size(data), n);
        for (size_t i = 0; i < n; i++) {
            json_t *item = json_array_get(data, i);
            assert_string_equal(json_string_value(json_object_get(item, "object")), "embedding");
            assert_int_equal(json_integer_value(json_object_get(item, "index")), i);
            json_t *e = json_object_get(item, "embedding");
            if (b64) {
                unsigned char back[4 * 257];
                assert_int_equal(s_unbase64(json_string_value(e), back, sizeof(back)), 4 * d);
                assert_memory_equal(back, v + i * d, 4 * d);
                continue;
            }
            assert_int_equal(json_array_size(e), d);
            /* Each number's text, read as a double (as clients do) and rounded to float32, is the value bit for
             * bit, -0.0 included: the text is found in the answer and parsed with strtod, not jansson's reals. */
            for (size_t k = 0; k < d; k++) {
                json_t *x = json_array_get(e, k);
                double dv = json_is_integer(x) ? (double)json_integer_value(x) : json_real_value(x);
                float f = (float)dv;
                uint32_t got, want;
                memcpy(&got, &f, 4);
                memcpy(&want, &v[i * d + k], 4);
                if (v[i * d + k] == 0.0f) assert_true(f == 0.0f); /* sign checked below on the text */
                else if (got != want) fail_msg("embedding %zu[%zu]: %.9g read back as %.9g", i, k, v[i * d + k], f);
            }
        }
        if (!b64) {
            assert_non_null(strstr(out, "\"embedding\":[0.0,-0.0,")); /* the signed zero as text */
            assert_null(strstr(out, "NaN"));
        }
        json_decref(a);
        free(out);
        titan_http_call_release(&call);
    }
    free(v);
}

static void test_embeddings_answer_mismatch(void **state)
{
    (void)state;
    titan_http_call call;
    json_decref(s_ok(TITAN_HTTP_EMBEDDINGS, "{\"model\":\"m\",\"input\":[\"a\",\"b\"]}", &call));
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    char *out = NULL;
    size_t len;
    titan_http_error err;
    /* Three embeddings for two inputs. */
    char *h = s_embed_header(3, 2, "m");
    const void *frames[3] = {h, v, v};
    size_t sizes[3] = {strlen(h), 24, 24};
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 2, &out, &len, &err), -1);
    assert_int_equal(err.status, 500);
    assert_non_null(strstr(err.message, "3 embeddings"));
    free(h);
    /* A frame of the wrong size, or a frame too many. */
    h = s_embed_header(2, 4, "m");
    frames[0] = h;
    sizes[0] = strlen(h);
    sizes[1] = 28;
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 2, &out, &len, &err), -1);
    assert_non_null(strstr(err.message, "28 bytes"));
    sizes[1] = 32;
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 3, &out, &len, &err), -1);
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 1, &out, &len, &err), -1);
    /* A non-finite value cannot be JSON. */
    v[5] = NAN;
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 2, &out, &len, &err), -1);
    assert_non_null(strstr(err.message, "non-finite value in embedding 1 (element 1)"));
    v[5] = 6;
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 2, &out, &len, &err), 0);
    free(out);
    free(h);
    /* Not JSON, no header, a wrong dtype. */
    const char *bad[] = {"nope", "[1]", "{\"embeddings\":{\"dtype\":\"float64\",\"shape\":[2,4],\"frame\":1},\"model\":\"m\"}",
                         "{\"embeddings\":[[1]],\"model\":\"m\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        frames[0] = bad[i];
        sizes[0] = strlen(bad[i]);
        assert_int_equal(titan_http_call_answer(&call, frames, sizes, 2, &out, &len, &err), -1);
        assert_int_equal(err.status, 500);
    }
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 0, &out, &len, &err), -1);
    titan_http_call_release(&call);
}

static void test_error_replies(void **state)
{
    (void)state;
    static const struct {
        const char *code;
        unsigned status;
        const char *type;
        int retry;
    } want[] = {
        {"bad_request", 400, "invalid_request_error", 0}, {"not_found", 404, "invalid_request_error", 0},
        {"too_large", 413, "invalid_request_error", 0},   {"busy", 429, "rate_limit_error", 1},
        {"shutting_down", 503, "server_error", 1},        {"internal", 500, "server_error", 0},
        {"device_error", 500, "server_error", 0},         {"timeout", 504, "server_error", 0},
        {"unsupported", 400, "invalid_request_error", 0}, {"unknown_op", 501, "server_error", 0},
        {"brand_new", 500, "server_error", 0},
    };
    titan_http_call call;
    json_decref(s_ok(TITAN_HTTP_EMBEDDINGS, "{\"model\":\"m\",\"input\":\"a\"}", &call));
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        char *h;
        assert_true(asprintf(&h, "{\"error\":\"went wrong \\\"%zu\\\"\",\"code\":\"%s\"}", i, want[i].code) > 0);
        const void *frames[1] = {h};
        size_t sizes[1] = {strlen(h)};
        char *out = NULL;
        size_t len;
        titan_http_error err;
        assert_int_equal(titan_http_call_answer(&call, frames, sizes, 1, &out, &len, &err), -1);
        assert_int_equal(err.status, want[i].status);
        assert_string_equal(err.type, want[i].type);
        assert_string_equal(err.code, want[i].code);
        assert_int_equal(err.retry_after_s, want[i].retry);
        assert_non_null(strstr(err.message, "went wrong"));
        /* The body: {"error": {"message", "type", "code"}}. */
        char *body = titan_http_error_body(&err, &len);
        json_t *j = s_json(body, len);
        json_t *e = json_object_get(j, "error");
        assert_string_equal(json_string_value(json_object_get(e, "code")), want[i].code);
        assert_string_equal(json_string_value(json_object_get(e, "type")), want[i].type);
        assert_string_equal(json_string_value(json_object_get(e, "message")), err.message);
        json_decref(j);
        free(body);
        free(h);
    }
    titan_http_call_release(&call);
    /* A code that is no identifier is not passed on. */
    titan_http_error err;
    titan_http_fail(&err, "bad code\"", "x");
    assert_string_equal(err.code, "internal");
    assert_int_equal(err.status, 500);
}

static void test_rerank_answer(void **state)
{
    (void)state;
    titan_http_call call;
    json_decref(s_ok(TITAN_HTTP_RERANK,
                     "{\"model\":\"r\",\"query\":\"q\",\"documents\":[\"zero\",\"o\\u006ee\",\"two\"],"
                     "\"return_documents\":true}",
                     &call));
    const char *h = "{\"results\":[{\"index\":2,\"score\":3.5,\"relevance_score\":0.970687769248643},"
                    "{\"index\":0,\"score\":-1,\"relevance_score\":0.2689414213699951},"
                    "{\"index\":1,\"score\":null,\"relevance_score\":null}],\"model\":\"r\","
                    "\"usage\":{\"prompt_tokens\":9,\"total_tokens\":9}}";
    const void *frames[1] = {h};
    size_t sizes[1] = {strlen(h)};
    char *out;
    size_t len;
    titan_http_error err;
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 1, &out, &len, &err), 0);
    json_t *a = s_json(out, len);
    json_t *r = json_object_get(a, "results");
    assert_int_equal(json_array_size(r), 3);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(r, 0), "index")), 2);
    assert_true(json_real_value(json_object_get(json_array_get(r, 0), "relevance_score")) == 0.970687769248643);
    assert_true(json_real_value(json_object_get(json_array_get(r, 1), "relevance_score")) == 0.2689414213699951);
    assert_true(json_is_null(json_object_get(json_array_get(r, 2), "relevance_score")));
    assert_null(json_object_get(json_array_get(r, 0), "score"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(r, 0), "document"), "text")),
                        "two");
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(r, 2), "document"), "text")),
                        "one");
    assert_string_equal(json_string_value(json_object_get(a, "model")), "r");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(a, "usage"), "total_tokens")), 9);
    json_decref(a);
    free(out);
    /* An index out of range, and more results than documents. */
    const char *bad[] = {"{\"results\":[{\"index\":3,\"relevance_score\":0.5}],\"model\":\"r\"}",
                         "{\"results\":[{\"index\":-1,\"relevance_score\":0.5}],\"model\":\"r\"}",
                         "{\"results\":[{\"index\":0,\"relevance_score\":\"x\"}],\"model\":\"r\"}",
                         "{\"results\":[{},{},{},{}],\"model\":\"r\"}", "{\"results\":[]}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        frames[0] = bad[i];
        sizes[0] = strlen(bad[i]);
        assert_int_equal(titan_http_call_answer(&call, frames, sizes, 1, &out, &len, &err), -1);
        assert_int_equal(err.status, 500);
    }
    titan_http_call_release(&call);
}

static void test_models_answer(void **state)
{
    (void)state;
    titan_http_call call;
    json_decref(s_ok(TITAN_HTTP_MODELS, "", &call));
    const char *h = "{\"models\":[{\"name\":\"bge\",\"runner\":\"bert\",\"kind\":\"embedding\"},{\"name\":\"t\\\"s\"},"
                    "{\"runner\":\"nameless\"}],\"runner\":\"x\"}";
    const void *frames[1] = {h};
    size_t sizes[1] = {strlen(h)};
    char *out;
    size_t len;
    titan_http_error err;
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 1, &out, &len, &err), 0);
    json_t *a = s_json(out, len), *data = json_object_get(a, "data");
    assert_string_equal(json_string_value(json_object_get(a, "object")), "list");
    assert_int_equal(json_array_size(data), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(data, 0), "id")), "bge");
    assert_string_equal(json_string_value(json_object_get(json_array_get(data, 1), "id")), "t\"s");
    assert_string_equal(json_string_value(json_object_get(json_array_get(data, 0), "object")), "model");
    assert_string_equal(json_string_value(json_object_get(json_array_get(data, 0), "owned_by")), "titan");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(data, 0), "created")), 0);
    json_decref(a);
    free(out);
    /* A worker without --models: an empty list. */
    h = "{\"error\":\"this worker serves no models\",\"code\":\"unsupported\"}";
    frames[0] = h;
    sizes[0] = strlen(h);
    assert_int_equal(titan_http_call_answer(&call, frames, sizes, 1, &out, &len, &err), 0);
    a = s_json(out, len);
    assert_int_equal(json_array_size(json_object_get(a, "data")), 0);
    json_decref(a);
    free(out);
    titan_http_call_release(&call);
}

/* ---- who may call ---- */

static void test_peer_rule(void **state)
{
    (void)state;
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    static const struct {
        const char *addr;
        bool loopback;
    } cases[] = {
        {"127.0.0.1", true},   {"127.255.3.4", true},       {"126.255.255.255", false}, {"128.0.0.1", false},
        {"10.0.0.1", false},   {"0.0.0.0", false},          {"192.168.122.1", false},   {"::1", true},
        {"::", false},         {"::2", false},              {"::ffff:127.0.0.1", true}, {"::ffff:10.0.0.1", false},
        {"fe80::1", false},    {"::127.0.0.1", false}, /* IPv4-compatible, deprecated: not loopback */
        {"2001:db8::1", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct sockaddr *sa = NULL;
        if (inet_pton(AF_INET, cases[i].addr, &a4.sin_addr) == 1) sa = (const struct sockaddr *)&a4;
        else if (inet_pton(AF_INET6, cases[i].addr, &a6.sin6_addr) == 1) sa = (const struct sockaddr *)&a6;
        else fail_msg("bad test address %s", cases[i].addr);
        if (titan_http_peer_is_loopback(sa) != cases[i].loopback)
            fail_msg("%s: loopback should be %d", cases[i].addr, cases[i].loopback);
    }
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    assert_false(titan_http_peer_is_loopback((const struct sockaddr *)&un));
    assert_false(titan_http_peer_is_loopback(NULL));

    /* The rule: tokens bind everyone; without them loopback, or --insecure-http. */
    assert_int_equal(titan_http_access_rule(true, false, false, false), TITAN_HTTP_ACCESS_OK);
    assert_int_equal(titan_http_access_rule(false, false, false, false), TITAN_HTTP_ACCESS_FORBIDDEN);
    assert_int_equal(titan_http_access_rule(false, false, false, true), TITAN_HTTP_ACCESS_OK);
    assert_int_equal(titan_http_access_rule(true, true, false, false), TITAN_HTTP_ACCESS_UNAUTHORIZED);
    assert_int_equal(titan_http_access_rule(false, true, false, true), TITAN_HTTP_ACCESS_UNAUTHORIZED);
    assert_int_equal(titan_http_access_rule(false, true, true, false), TITAN_HTTP_ACCESS_OK);
    assert_int_equal(titan_http_access_rule(true, true, true, false), TITAN_HTTP_ACCESS_OK);
}

static void test_tokens_compare(void **state)
{
    (void)state;
    const char *t = "0123456789abcdef0123";
    assert_true(titan_http_token_equal(t, 20, "0123456789abcdef0123", 20));
    assert_false(titan_http_token_equal(t, 20, "0123456789abcdef0124", 20));
    assert_false(titan_http_token_equal(t, 20, "X123456789abcdef0123", 20));
    assert_false(titan_http_token_equal(t, 19, t, 20)); /* a prefix */
    assert_false(titan_http_token_equal(t, 20, "0123456789abcdef0123\0", 21));
    assert_false(titan_http_token_equal("", 0, t, 20));
    char big[300], big2[300];
    memset(big, 'a', sizeof(big));
    memcpy(big2, big, sizeof(big));
    /* Longer than the pad: equal to nothing, itself included (no token of the file is that long). */
    assert_false(titan_http_token_equal(big, 300, big2, 300));
    assert_true(titan_http_token_equal(big, 256, big2, 256));
    assert_false(titan_http_token_equal(big, 257, big2, 256));

    const char *tok;
    size_t len;
    assert_int_equal(titan_http_bearer("Bearer abc", &tok, &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(tok, "abc", 3);
    assert_int_equal(titan_http_bearer("  bearer \t abc.def  ", &tok, &len), 0);
    assert_int_equal(len, 7);
    assert_memory_equal(tok, "abc.def", 7);
    assert_int_equal(titan_http_bearer("Basic abc", &tok, &len), -EINVAL);
    assert_int_equal(titan_http_bearer("Bearer", &tok, &len), -EINVAL);
    assert_int_equal(titan_http_bearer("Bearer   ", &tok, &len), -EINVAL);
    assert_int_equal(titan_http_bearer("Bearerabc", &tok, &len), -EINVAL);
    assert_int_equal(titan_http_bearer(NULL, &tok, &len), -EINVAL);
}

static char s_dir[64];

static const char *s_file(const char *name, const char *text)
{
    static char path[128];
    char tmp[160];
    snprintf(path, sizeof(path), "%s/%s", s_dir, name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(tmp, 0600);
    assert_int_equal(rename(tmp, path), 0); /* a new inode: seen as changed at once */
    return path;
}

static bool s_check(titan_http_tokens *t, const char *tok)
{
    return titan_http_tokens_check(t, tok, strlen(tok));
}

static void test_token_file(void **state)
{
    (void)state;
    char err[512];
    snprintf(s_dir, sizeof(s_dir), "/tmp/titan-http-api-XXXXXX");
    assert_non_null(mkdtemp(s_dir));
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/none", s_dir);
    assert_null(titan_http_tokens_open(missing, err, sizeof(err)));
    assert_non_null(strstr(err, "No such file"));
    assert_null(titan_http_tokens_open(s_file("empty", "# only a comment\n\n"), err, sizeof(err)));
    assert_non_null(strstr(err, "holds no token"));
    assert_null(titan_http_tokens_open(s_file("short", "tooshort\n"), err, sizeof(err)));
    assert_non_null(strstr(err, ":1: a token is 16 to 256"));
    assert_null(titan_http_tokens_open(s_file("space", "# c\nabcdefgh ijklmnopqrst\n"), err, sizeof(err)));
    assert_non_null(strstr(err, "space:2:"));

    const char *path = s_file("tokens", "# the dashboard\n  aaaaaaaaaaaaaaaa1  \r\n\nbbbbbbbbbbbbbbbb2\n");
    titan_http_tokens *t = titan_http_tokens_open(path, err, sizeof(err));
    assert_non_null(t);
    assert_int_equal(titan_http_tokens_count(t), 2);
    assert_true(s_check(t, "aaaaaaaaaaaaaaaa1"));
    assert_true(s_check(t, "bbbbbbbbbbbbbbbb2"));
    assert_false(s_check(t, "aaaaaaaaaaaaaaaa"));
    assert_false(s_check(t, "cccccccccccccccc3"));
    assert_false(s_check(t, "# the dashboard"));
    /* Changed: the new set, the old token revoked. */
    s_file("tokens", "cccccccccccccccc3\n");
    assert_true(s_check(t, "cccccccccccccccc3"));
    assert_false(s_check(t, "aaaaaaaaaaaaaaaa1"));
    assert_int_equal(titan_http_tokens_count(t), 1);
    /* Broken or gone: nobody, until it is good again. */
    s_file("tokens", "short\n");
    assert_false(s_check(t, "cccccccccccccccc3"));
    assert_int_equal(titan_http_tokens_count(t), 0);
    unlink(path);
    assert_false(s_check(t, "cccccccccccccccc3"));
    s_file("tokens", "dddddddddddddddd4\n");
    assert_true(s_check(t, "dddddddddddddddd4"));
    titan_http_tokens_destroy(&t);
    assert_null(t);
    titan_http_tokens_destroy(NULL);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s_dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- the bridge, against a ROUTER of the test's own ---- */

#define S_EP "inproc://test-http-bridge"

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} s_waiter;

static s_waiter s_w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};

static void s_done(titan_http_work *w)
{
    (void)w;
    pthread_mutex_lock(&s_w.mu);
    s_w.done++;
    pthread_cond_broadcast(&s_w.cv);
    pthread_mutex_unlock(&s_w.mu);
}

static bool s_wait_done(int n, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&s_w.mu);
    while (s_w.done < n)
        if (pthread_cond_timedwait(&s_w.cv, &s_w.mu, &until) != 0) break;
    bool ok = s_w.done >= n;
    pthread_mutex_unlock(&s_w.mu);
    return ok;
}

/* Receives one request on the ROUTER: [id, tag, "", header]; keeps the envelope in env[0..2]. */
static char *s_take(void *router, zmq_msg_t env[3])
{
    for (int i = 0; i < 3; i++) {
        zmq_msg_init(&env[i]);
        assert_true(zmq_msg_recv(&env[i], router, 0) >= 0);
        assert_true(zmq_msg_more(&env[i]));
    }
    assert_int_equal(zmq_msg_size(&env[2]), 0);
    zmq_msg_t h;
    zmq_msg_init(&h);
    assert_true(zmq_msg_recv(&h, router, 0) >= 0);
    assert_false(zmq_msg_more(&h));
    char *text = strndup(zmq_msg_data(&h), zmq_msg_size(&h));
    zmq_msg_close(&h);
    return text;
}

static void s_reply(void *router, zmq_msg_t env[3], const char *hdr)
{
    for (int i = 0; i < 3; i++) assert_true(zmq_msg_send(&env[i], router, ZMQ_SNDMORE) >= 0);
    assert_int_equal(zmq_send(router, hdr, strlen(hdr), 0), (int)strlen(hdr));
}

static void test_bridge(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    assert_int_equal(zmq_bind(router, S_EP), 0);
    char err[256];
    titan_http_bridge *b = titan_http_bridge_new(ctx, S_EP, 2, 400, err, sizeof(err));
    assert_non_null(b);
    static const char body[] = "{\"model\":\"m\",\"input\":\"x\"}";
    titan_http_work w[3];
    memset(w, 0, sizeof(w));
    for (int i = 0; i < 3; i++) {
        w[i].route = TITAN_HTTP_EMBEDDINGS;
        w[i].body = body;
        w[i].len = strlen(body);
        w[i].done = s_done;
    }
    /* Two places: the third is refused until one is free. */
    assert_int_equal(titan_http_bridge_reserve(b), 0);
    assert_int_equal(titan_http_bridge_reserve(b), 0);
    assert_int_equal(titan_http_bridge_reserve(b), -EBUSY);
    titan_http_bridge_submit(b, &w[0]);
    titan_http_bridge_submit(b, &w[1]);
    zmq_msg_t env0[3], env1[3];
    char *h0 = s_take(router, env0);
    char *h1 = s_take(router, env1);
    assert_non_null(strstr(h0, "\"op\":\"embed\""));
    assert_non_null(strstr(h1, "\"binary\":true"));
    /* Answered out of order, each to its own work. */
    s_reply(router, env1, "{\"error\":\"full\",\"code\":\"busy\"}");
    assert_true(s_wait_done(1, 2000));
    assert_int_equal(w[1].status, 429);
    assert_int_equal(w[1].retry_after_s, 1);
    assert_non_null(strstr(w[1].answer, "\"rate_limit_error\""));
    assert_int_equal(w[0].status, 0);
    float v[2] = {0.5f, -2.0f};
    char hdr[256];
    snprintf(hdr, sizeof(hdr), "{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[1,2],\"frame\":1},\"model\":\"m\"}");
    for (int i = 0; i < 3; i++) assert_true(zmq_msg_send(&env0[i], router, ZMQ_SNDMORE) >= 0);
    zmq_send(router, hdr, strlen(hdr), ZMQ_SNDMORE);
    zmq_send(router, v, sizeof(v), 0);
    assert_true(s_wait_done(2, 2000));
    assert_int_equal(w[0].status, 200);
    assert_non_null(strstr(w[0].answer, "\"embedding\":[0.5,-2.0]"));
    free(h0);
    free(h1);
    free(w[0].answer);
    free(w[1].answer);

    /* Places are given back with the answers. A reply that does not come: 504 after the timeout (400 ms), and
     * the late reply lands nowhere. */
    assert_int_equal(titan_http_bridge_reserve(b), 0);
    w[2].status = 0;
    titan_http_bridge_submit(b, &w[2]);
    zmq_msg_t env2[3];
    char *h2 = s_take(router, env2);
    assert_true(s_wait_done(3, 3000));
    assert_int_equal(w[2].status, 504);
    assert_non_null(strstr(w[2].answer, "\"timeout\""));
    free(w[2].answer);
    w[2].answer = NULL;
    s_reply(router, env2, "{\"models\":[]}");
    free(h2);
    /* A bad body never reaches the server: 400 from the bridge itself. */
    static const char bad[] = "{\"model\":\"m\"}";
    titan_http_work wb = {.route = TITAN_HTTP_EMBEDDINGS, .body = bad, .len = strlen(bad), .done = s_done};
    assert_int_equal(titan_http_bridge_reserve(b), 0);
    titan_http_bridge_submit(b, &wb);
    assert_true(s_wait_done(4, 2000));
    assert_int_equal(wb.status, 400);
    free(wb.answer);
    assert_int_equal(w[2].status, 504); /* the late reply changed nothing */

    /* A close answers the work in hand 503, and later works at once. */
    titan_http_work wc = {.route = TITAN_HTTP_MODELS, .done = s_done};
    assert_int_equal(titan_http_bridge_reserve(b), 0);
    titan_http_bridge_submit(b, &wc);
    zmq_msg_t envc[3];
    char *hc = s_take(router, envc);
    assert_non_null(strstr(hc, "list_models"));
    free(hc);
    for (int i = 0; i < 3; i++) zmq_msg_close(&envc[i]);
    titan_http_bridge_close(b);
    assert_true(s_wait_done(5, 2000));
    assert_int_equal(wc.status, 503);
    assert_non_null(strstr(wc.answer, "shutting_down"));
    free(wc.answer);
    assert_int_equal(titan_http_bridge_reserve(b), -ESHUTDOWN);
    titan_http_work wl = {.route = TITAN_HTTP_MODELS, .done = s_done};
    titan_http_bridge_submit(b, &wl); /* reserved before the close, handed over after it */
    assert_true(s_wait_done(6, 100));
    assert_int_equal(wl.status, 503);
    free(wl.answer);
    titan_http_bridge_destroy(&b);
    assert_null(b);
    zmq_close(router);
    /* The bridge's socket is closed: the context ends without waiting. */
    assert_int_equal(zmq_ctx_term(ctx), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embeddings_shapes),
        cmocka_unit_test(test_embeddings_refusals),
        cmocka_unit_test(test_embeddings_item_cap),
        cmocka_unit_test(test_rerank_parse),
        cmocka_unit_test(test_embeddings_answer),
        cmocka_unit_test(test_embeddings_answer_mismatch),
        cmocka_unit_test(test_error_replies),
        cmocka_unit_test(test_rerank_answer),
        cmocka_unit_test(test_models_answer),
        cmocka_unit_test(test_peer_rule),
        cmocka_unit_test(test_tokens_compare),
        cmocka_unit_test(test_token_file),
        cmocka_unit_test(test_bridge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
