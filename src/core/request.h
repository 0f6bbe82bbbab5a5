/* request.h - one decoded request: header DOM, tensors from JSON arrays or binary frames, and the reply. */
#ifndef TITAN_WORKER_REQUEST_H
#define TITAN_WORKER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <zmq.h>

#include "jsonscan.h"
#include "titan/tensor.h"

#define TITAN_MAX_BODY_FRAMES 16 /* header + tensor frames */
#define TITAN_MAX_OUT_FRAMES 4
/* The longest string "id" a reply echoes (bytes of UTF-8): a longer one is refused unechoed, so that
 * a refusal stays small whatever the request (PROTOCOL.md §3). */
#define TITAN_ID_MAX 256

#include "error.h"


typedef struct {
    uint64_t max_request_bytes;
    uint64_t max_result_bytes;
    uint64_t max_inflight_bytes;
} titan_limits;

/* The one set of admission limits' defaults: titan-worker's settings (--max-request-bytes 1G ...; its
 * test checks they agree) and libtitan's in-process engine. */
#define TITAN_DEFAULT_MAX_REQUEST_BYTES (1ULL << 30)
#define TITAN_DEFAULT_MAX_RESULT_BYTES (1ULL << 30)
#define TITAN_DEFAULT_MAX_INFLIGHT_BYTES (4ULL << 30)
void titan_limits_init(titan_limits *l);

/* The checks every request meets before its header is parsed, in this order, for the worker's I/O loop and
 * the engine alike: a header at all; at most TITAN_MAX_BODY_FRAMES frames (`frames` counts the header;
 * SIZE_MAX: more than could be counted); at most max_request_bytes in all (`bytes`: UINT64_MAX when the sum
 * overflowed). Returns 0, or -1 with err set (bad_request, too_large). */
int titan_request_admit(const titan_limits *l, size_t frames, uint64_t bytes, titan_error *err);

/* The "id" of a request refused before its header was parsed, so that the refusal still carries it: read
 * from the first 64 KiB of the header without parsing the rest; a string of at most TITAN_ID_MAX
 * characters or an integer, else NULL (a new reference). */
json_t *titan_request_peek_id(const char *header, size_t len);

typedef struct {
    titan_dtype dtype;
    int rank;
    int64_t shape[TITAN_MAX_RANK];
    size_t elems;
    const void *data;   /* borrowed from a frame, or == owned or owned_pooled */
    void *owned;        /* free() on release; NULL when borrowed */
    void *owned_pooled; /* titan_hostbuf_free() on release (hostpool.h); NULL when borrowed */
    bool binary;      /* came in a binary frame */
    const char *ref;  /* a resident tensor's handle ({"ref": ...}, borrowed from the header); then no data */
} titan_tensor_view;

typedef struct {
    const char *text; /* header bytes (borrowed from frame 0 of the body) */
    size_t text_len;
    zmq_msg_t *frames; /* the body frames after the header (borrowed) */
    size_t nframes;
    bool frame_used[TITAN_MAX_BODY_FRAMES];
    titan_json_split split;
    json_t *hdr;  /* owned */
    const char *op; /* borrowed from hdr */
    json_t *id;     /* borrowed from hdr; NULL when absent */
    int64_t deadline_ms; /* 0 when absent */
    const titan_limits *limits;
    const char *client; /* who sent it, for resident tensors' ownership (borrowed; NULL: anonymous) */
    bool allow_refs;    /* set by an op that takes {"ref": ...} operands before it resolves them */
} titan_request;

/* What a handler answers: a header and up to TITAN_MAX_OUT_FRAMES data frames. */
typedef struct {
    char *hdr; /* malloc'd JSON text */
    size_t hdr_len;
    void *data[TITAN_MAX_OUT_FRAMES]; /* freed after sending: titan_hostbuf_free when pooled, else free() */
    size_t size[TITAN_MAX_OUT_FRAMES];
    bool pooled[TITAN_MAX_OUT_FRAMES]; /* data[i] came from titan_hostbuf_alloc (hostpool.h) */
    size_t ndata;
} titan_out;

/* Decodes header text and body frames. Returns 0, or -1 with err set (bad_request,
 * too_large); the request must be released either way. */
int titan_request_parse(titan_request *req, const char *text, size_t len, zmq_msg_t *frames, size_t nframes,
                        const titan_limits *limits, titan_error *err);
/* Resolves tensor field `name` (a nested JSON array or a binary descriptor). For JSON
 * arrays `json_dtype` is the dtype to parse into. Returns 0 (release the view with
 * titan_tensor_view_release), or -1 with err set. */
int titan_request_tensor(titan_request *req, const char *name, titan_dtype json_dtype, titan_tensor_view *out,
                         titan_error *err);
/* Resolves the elements of the array field `name` (each a nested JSON array parsed as
 * json_dtypes[i], or a binary descriptor) into views[0..*n). Returns 0 (release every view),
 * or -1 with err set and nothing to release. */
int titan_request_tensor_list(titan_request *req, const char *name, const titan_dtype *json_dtypes, int max,
                              titan_tensor_view *views, int *n, titan_error *err);
/* Fails with bad_request when a body frame was not referenced by any descriptor. */
int titan_request_check_frames(titan_request *req, titan_error *err);
void titan_request_release(titan_request *req);
void titan_tensor_view_release(titan_tensor_view *v);

/* A measured figure as JSON: a real when known and finite, else null. Scalars are read by jansson-based
 * clients (libtitan, titan serve), which cannot read NaN or Infinity tokens: PROTOCOL.md 5.2 says a
 * figure that is not finite is null, like an unknown one. Tensor elements keep their tokens. */
json_t *titan_json_figure(bool known, double v);

/* Builds an error reply {"error","code"[,"id"]} into out. Returns 0 or -ENOMEM. */
int titan_out_error(titan_out *out, const titan_error *err, json_t *id);
/* Serializes `obj` (adding "id" when given) into out->hdr; steals obj. Returns 0 or -ENOMEM. */
int titan_out_json(titan_out *out, json_t *obj, json_t *id);
/* A tensor that a JSON reply carries as nested arrays. */
typedef struct {
    const char *key; /* the member it is written as ("result", "output", "outputs") */
    titan_dtype dtype;
    const void *data;
    const int64_t *shape;
    int rank; /* 0: a single number */
} titan_json_part;
/* Builds a reply with tensors as nested JSON arrays (NaN and infinities as the PROTOCOL's tokens)
 * into out->hdr: {"list_key": [T0, T1, ...], ...} when list_key is given, else {"key0": T0, ...};
 * then the members of obj (may be NULL; stolen), then "id" when given. The buffer is sized from
 * titan_tensor_text_bound. Returns 0, -ENOMEM, or -EOVERFLOW when the text cannot be sized. */
int titan_out_json_tensors(titan_out *out, const char *list_key, const titan_json_part *parts, int n, json_t *obj,
                           json_t *id);
void titan_out_release(titan_out *out);
/* Frees out->data[i] as its owner asks (titan_hostbuf_free or free) and sets it to NULL. */
void titan_out_free_data(titan_out *out, size_t i);

#endif
