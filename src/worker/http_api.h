/* http_api.h - the OpenAI-style /v1 routes as pure translations: an HTTP JSON body into the worker's ZeroMQ request,
 * the ZeroMQ reply into the HTTP JSON answer, titan's error codes into HTTP statuses. No sockets, no libmicrohttpd:
 * the bridge (http_bridge.c) and the fuzz target fuzz/fuzz_http_body.c call them as they are. */
#ifndef TITAN_WORKER_HTTP_API_H
#define TITAN_WORKER_HTTP_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    TITAN_HTTP_EMBEDDINGS, /* POST /v1/embeddings: op embed */
    TITAN_HTTP_RERANK,     /* POST /v1/rerank: op rerank */
    TITAN_HTTP_MODELS,     /* GET /v1/models: op list_models */
} titan_http_route;

/* Inputs of one /v1/embeddings request, documents of one /v1/rerank request, at most (docs/PROTOCOL.md, "HTTP
 * API"): what the translation keeps per item is bounded by it, whatever the body's size. */
#define TITAN_HTTP_MAX_ITEMS 65536
/* The longest model name accepted, in bytes (decoded). */
#define TITAN_HTTP_MAX_MODEL 256
/* The largest reply header read back from the server (list_models of a big directory stays far below). */
#define TITAN_HTTP_MAX_REPLY_HEADER (16u << 20)

/* An HTTP error answer: {"error": {"message", "type", "code"}} with status. */
typedef struct {
    unsigned status;   /* 400, 401, 403, 404, 405, 411, 413, 415, 429, 500, 501, 503, 504 */
    const char *type;  /* OpenAI's kind of error: "invalid_request_error", "rate_limit_error"... (static) */
    char code[32];     /* titan's code (docs/PROTOCOL.md section 7) or an HTTP one ("method_not_allowed"...) */
    char message[640]; /* what is wrong and what to do */
    int retry_after_s; /* > 0: the answer carries Retry-After */
} titan_http_error;

/* Fills err for a titan error code: the status and type follow from the code (docs/PROTOCOL.md, "HTTP API"); an
 * unknown code is a 500 and keeps its name when it is a plain identifier. Returns -1, for `return titan_http_fail`. */
int titan_http_fail(titan_http_error *err, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The JSON body of err (malloc'd, *len its length), or NULL when out of memory. */
char *titan_http_error_body(const titan_http_error *err, size_t *len);

/* One /v1 request, translated. */
typedef struct {
    titan_http_route route;
    char *zmq;      /* the ZeroMQ request header: a NUL-terminated JSON object (owned) */
    size_t zmq_len;
    size_t nitems;  /* embeddings: the embeddings the reply must carry; rerank: the documents */
    bool base64;    /* embeddings: "encoding_format": "base64" */
    bool return_documents;      /* rerank */
    uint32_t *doc_off, *doc_len; /* rerank with return_documents: each document's JSON string text within zmq */
} titan_http_call;

/* Translates the body of an HTTP request on `route` (ignored for TITAN_HTTP_MODELS, which has none) into *call,
 * checking it strictly: a JSON object (UTF-8, no duplicate or unknown members) with the route's members and types.
 * The embed request always asks for the binary form (one float32 frame), whichever encoding_format the client
 * wants. Returns 0 (release *call with titan_http_call_release), or -1 with err filled (a 400 or 413 naming the
 * problem and where; a 500 when out of memory); *call is then zeroed. */
int titan_http_call_parse(titan_http_route route, const char *body, size_t len, titan_http_call *call,
                          titan_http_error *err);
/* Translates the server's reply to call (frames[0] the JSON header, then the data frames) into the HTTP answer
 * body: *out (malloc'd JSON) and *out_len. Returns 0, or -1 with err filled: the reply's own error mapped to its
 * status, or a 500 when the reply does not match the request (wrong shape, wrong count, a non-finite value). */
int titan_http_call_answer(const titan_http_call *call, const void *const *frames, const size_t *sizes,
                           size_t nframes, char **out, size_t *out_len, titan_http_error *err);
/* Frees what call owns and zeroes it; takes a zeroed call. */
void titan_http_call_release(titan_http_call *call);

#endif
