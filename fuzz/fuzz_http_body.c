/* fuzz_http_body.c - libFuzzer target: the HTTP API's translations (src/worker/http_api.c): the bytes as the body of
 * POST /v1/embeddings and of POST /v1/rerank, each accepted body then answered with a reply made for it; and the
 * bytes as the server's reply to fixed requests (embeddings in float and base64, rerank with documents, models). */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "http_api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Every check failure aborts, which libFuzzer (and the replay runner) report as a crash. */
#define CHECK(cond)                                                                                                  \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "fuzz_http_body: check failed at line %d: %s\n", __LINE__, #cond);                      \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

/* text[0..len) is one JSON value (jansson: UTF-8, no duplicates); returns it, or NULL. */
static json_t *s_json(const char *text, size_t len)
{
    return json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
}

/* An error: a status of the table, a type, a code and a message. */
static void s_check_error(const titan_http_error *e)
{
    CHECK(e->status >= 400 && e->status <= 504);
    CHECK(e->type && *e->type);
    CHECK(e->code[0] && strlen(e->code) < sizeof(e->code));
    CHECK(e->message[0]);
    size_t len = 0;
    char *body = titan_http_error_body(e, &len);
    CHECK(body && strlen(body) == len);
    json_t *j = s_json(body, len);
    CHECK(json_is_object(json_object_get(j, "error")));
    json_decref(j);
    free(body);
}

/* Answers an accepted embeddings call with n x d values made from the bytes; the answer is valid JSON with n items
 * unless a value is not finite. */
static void s_answer_embeddings(const titan_http_call *call, const uint8_t *data, size_t size)
{
    size_t n = call->nitems, d = size % 5;
    size_t bytes = n * d * 4;
    unsigned char *v = malloc(bytes + 1);
    CHECK(v);
    bool finite = true;
    for (size_t i = 0; i < bytes; i++) v[i] = size ? data[i % size] : 0;
    for (size_t i = 0; i < n * d; i++) {
        float f;
        memcpy(&f, v + 4 * i, 4);
        finite &= isfinite(f) != 0;
    }
    char hdr[160];
    snprintf(hdr, sizeof(hdr),
             "{\"embeddings\":{\"dtype\":\"float32\",\"shape\":[%zu,%zu],\"frame\":1},\"model\":\"m\\u00e9\","
             "\"usage\":{\"prompt_tokens\":3,\"total_tokens\":3}}",
             n, d);
    const void *frames[2] = {hdr, v};
    size_t sizes[2] = {strlen(hdr), bytes};
    char *out = NULL;
    size_t len = 0;
    titan_http_error err;
    int rc = titan_http_call_answer(call, frames, sizes, 2, &out, &len, &err);
    CHECK((rc == 0) == finite);
    if (rc == 0) {
        json_t *j = s_json(out, len);
        CHECK(j && json_array_size(json_object_get(j, "data")) == n);
        json_t *e0 = json_object_get(json_array_get(json_object_get(j, "data"), 0), "embedding");
        CHECK(call->base64 ? json_is_string(e0) : json_array_size(e0) == d);
        json_decref(j);
        free(out);
    } else {
        s_check_error(&err);
    }
    free(v);
}

/* Answers an accepted rerank call with results in a fuzz-chosen order; documents come back as sent. */
static void s_answer_rerank(const titan_http_call *call, const uint8_t *data, size_t size)
{
    size_t n = call->nitems < 64 ? call->nitems : 64;
    json_t *results = json_array();
    for (size_t i = 0; i < n; i++) {
        size_t idx = (i + (size ? data[i % size] : 0)) % call->nitems;
        json_array_append_new(results, json_pack("{s:I, s:f, s:f}", "index", (json_int_t)idx, "score", (double)i,
                                                 "relevance_score", 1.0 / (1.0 + (double)i)));
    }
    json_t *h = json_pack("{s:o, s:s}", "results", results, "model", "r");
    char *text = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    CHECK(text);
    const void *frames[1] = {text};
    size_t sizes[1] = {strlen(text)};
    char *out = NULL;
    size_t len = 0;
    titan_http_error err;
    CHECK(titan_http_call_answer(call, frames, sizes, 1, &out, &len, &err) == 0);
    json_t *j = s_json(out, len);
    json_t *res = json_object_get(j, "results");
    CHECK(json_array_size(res) == n);
    for (size_t i = 0; i < n && call->return_documents; i++) {
        json_t *r = json_array_get(res, i);
        size_t k = (size_t)json_integer_value(json_object_get(r, "index"));
        CHECK(k < call->nitems);
        json_t *doc = s_json(call->zmq + call->doc_off[k], call->doc_len[k]);
        CHECK(json_is_string(doc));
        CHECK(json_equal(doc, json_object_get(json_object_get(r, "document"), "text")));
        json_decref(doc);
    }
    json_decref(j);
    free(out);
    free(text);
}

/* (a) The bytes as a request body on each route. */
static void s_bodies(const uint8_t *data, size_t size)
{
    const titan_http_route routes[] = {TITAN_HTTP_EMBEDDINGS, TITAN_HTTP_RERANK};
    for (size_t r = 0; r < 2; r++) {
        titan_http_call call;
        titan_http_error err;
        int rc = titan_http_call_parse(routes[r], (const char *)data, size, &call, &err);
        if (rc != 0) {
            CHECK(call.zmq == NULL && call.doc_off == NULL);
            CHECK(err.status == 400 || err.status == 413 || err.status == 500);
            s_check_error(&err);
            continue;
        }
        /* The request to the server: one JSON object (jansson agrees with the scanner), its op, the model and the
         * route's members, nothing of the body it does not take. */
        CHECK(call.zmq && strlen(call.zmq) == call.zmq_len);
        CHECK(call.nitems >= 1 && call.nitems <= TITAN_HTTP_MAX_ITEMS);
        json_t *z = s_json(call.zmq, call.zmq_len);
        CHECK(json_is_object(z));
        CHECK(json_is_string(json_object_get(z, "model")));
        if (routes[r] == TITAN_HTTP_EMBEDDINGS) {
            CHECK(strcmp(json_string_value(json_object_get(z, "op")), "embed") == 0);
            CHECK(json_is_true(json_object_get(z, "binary")));
            json_t *in = json_object_get(z, "input");
            CHECK(json_is_string(in) || json_array_size(in) >= 1);
            CHECK(json_is_string(in) ? call.nitems == 1
                                     : json_is_integer(json_array_get(in, 0)) ? call.nitems == 1
                                                                              : call.nitems == json_array_size(in));
            s_answer_embeddings(&call, data, size);
        } else {
            CHECK(strcmp(json_string_value(json_object_get(z, "op")), "rerank") == 0);
            CHECK(json_is_string(json_object_get(z, "query")));
            CHECK(json_array_size(json_object_get(z, "documents")) == call.nitems);
            CHECK(!call.return_documents || (call.doc_off && call.doc_len));
            for (size_t i = 0; call.return_documents && i < call.nitems; i++) {
                CHECK((size_t)call.doc_off[i] + call.doc_len[i] <= call.zmq_len);
                json_t *doc = s_json(call.zmq + call.doc_off[i], call.doc_len[i]);
                CHECK(json_equal(doc, json_array_get(json_object_get(z, "documents"), i)));
                json_decref(doc);
            }
            s_answer_rerank(&call, data, size);
        }
        json_decref(z);
        titan_http_call_release(&call);
    }
}

/* (b) The bytes as the server's reply to fixed requests; a data frame sized as the bytes' own descriptor asks (up
 * to 1 MiB), so that the scanner gets past the size check. */
static void s_replies(const uint8_t *data, size_t size)
{
    static const char *const bodies[] = {
        "{\"model\":\"m\",\"input\":[\"a\",\"b\"]}",
        "{\"model\":\"m\",\"input\":[[1,2],[3]],\"encoding_format\":\"base64\"}",
        "{\"model\":\"r\",\"query\":\"q\",\"documents\":[\"x\",\"y\\u00e9\",\"z\"],\"return_documents\":true}",
        "",
    };
    static const titan_http_route routes[] = {TITAN_HTTP_EMBEDDINGS, TITAN_HTTP_EMBEDDINGS, TITAN_HTTP_RERANK,
                                              TITAN_HTTP_MODELS};
    size_t frame_len = 0;
    json_t *h = json_loadb((const char *)data, size, 0, NULL);
    json_t *shape = json_object_get(json_object_get(h, "embeddings"), "shape");
    json_int_t n = json_integer_value(json_array_get(shape, 0)), d = json_integer_value(json_array_get(shape, 1));
    if (n > 0 && d > 0 && n <= (1 << 18) && d <= (1 << 18) && n * d * 4 <= (1 << 20)) frame_len = (size_t)(n * d * 4);
    json_decref(h);
    unsigned char *frame = calloc(1, frame_len + 1);
    CHECK(frame);
    for (size_t i = 0; i < frame_len; i += 4) {
        float f = (float)i * 0.25f;
        memcpy(frame + i, &f, 4);
    }
    for (size_t r = 0; r < sizeof(routes) / sizeof(routes[0]); r++) {
        titan_http_call call;
        titan_http_error err;
        CHECK(titan_http_call_parse(routes[r], bodies[r], strlen(bodies[r]), &call, &err) == 0);
        const void *frames[3] = {data, frame, frame};
        size_t sizes[3] = {size, frame_len, frame_len};
        for (size_t nf = 1; nf <= 3; nf++) {
            char *out = NULL;
            size_t len = 0;
            int rc = titan_http_call_answer(&call, frames, sizes, nf, &out, &len, &err);
            if (rc == 0) {
                json_t *j = s_json(out, len);
                CHECK(json_is_object(j));
                json_decref(j);
                free(out);
            } else {
                s_check_error(&err);
            }
        }
        titan_http_call_release(&call);
    }
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_bodies(data, size);
    s_replies(data, size);
    return 0;
}
