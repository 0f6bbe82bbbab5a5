/* client.h - libtitan's ZeroMQ client: timeouts, Lazy Pirate retries, typed and generic calls. */
#ifndef TITAN_CLIENT_H
#define TITAN_CLIENT_H

#include <stddef.h>

#include "titan/export.h"
#include "titan/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A client owns one socket and is not thread-safe: use one per thread. */
typedef struct titan_client titan_client;
/* A reply: the JSON header (frame 0) plus any binary frames. */
typedef struct titan_reply titan_reply;

typedef struct {
    int timeout_ms; /* per attempt; default 5000; must be > 0 */
    int retries;    /* attempts after the first one times out; default 2; >= 0 */
    void *zmq_ctx;  /* optional ZeroMQ context to share; NULL: the client makes and owns one */
    /* CURVE (encryption and authentication). Keys are 40-character Z85 strings, copied by
     * titan_client_new. server_key is the worker's public key; NULL (default): no CURVE.
     * public_key + secret_key are this client's pair (both or neither; only with server_key);
     * NULL (default) with server_key: a fresh pair is generated for each client. A worker
     * that refuses the key never answers, so a refused client sees -ETIMEDOUT. */
    const char *server_key;
    const char *public_key;
    const char *secret_key;
    /* ZMTP heartbeat interval in ms (0..3600000; 0 = off); the connection is dropped and
     * remade after 3 intervals without traffic. Default 5000. Each attempt's timeout still applies. */
    int heartbeat_ms;
    /* A name for this client on the worker (1 to TITAN_CLIENT_IDENTITY_MAX printable ASCII
     * characters, copied), used as its ZeroMQ routing id. The worker's resident tensors
     * (tensor_put) belong to the client that made them: its CURVE key when CURVE is on, else its
     * routing id. Without an identity that id is per connection, so a retry (which reconnects)
     * loses access to the tensors made before; with one, they stay this client's. Two live clients
     * must not share an identity: without CURVE the newer connection takes the name over (and the
     * replies still due to the older one). With CURVE the worker gives each connection a routing id
     * of its own, so the identity does not matter there: the key owns the tensors. NULL: none. */
    const char *identity;
} titan_client_opts;

#define TITAN_CLIENT_IDENTITY_MAX 64

/* One outgoing binary frame. Frames under 64 KiB are copied when sent; larger ones are
 * sent from the caller's memory without a copy, and the call returns only once ZeroMQ is
 * done with them, so the caller may reuse or free the memory as soon as the call returns. */
typedef struct {
    const void *data;
    size_t size;
} titan_frame;

typedef struct {
    char name[256];
    char backend[16];          /* "cpu" or "cuda" */
    double total_memory_gb;
    int multi_processor_count; /* SMs on a GPU, cores on the CPU */
    char cuda_capability[16];  /* "5.2"; empty on the CPU backend */
} titan_gpu_info;

/* Fills `opts` with the defaults above. */
TITAN_API void titan_client_opts_init(titan_client_opts *opts);

/* Returns a client for `endpoint` (e.g. "tcp://127.0.0.1:5555"), or NULL with errno set:
 * EINVAL for a bad endpoint or option (a key that is not 40 valid Z85 characters, a public key
 * that does not match the secret one), ENOTSUP when libzmq lacks CURVE, ENOMEM. `opts` may be NULL.
 * Connecting is lazy: an absent worker shows up as -ETIMEDOUT on the first call. */
TITAN_API titan_client *titan_client_new(const char *endpoint, const titan_client_opts *opts);
/* Closes the socket (dropping anything unsent) and frees; takes NULL, sets *c to NULL. */
TITAN_API void titan_client_destroy(titan_client **c);

/* Sends `header_json` (a JSON object text) and `nframes` binary frames, and waits
 * for the reply under the timeout/retry policy. On 0, *reply is the caller's
 * (free with titan_reply_destroy), whether the worker answered a result or an
 * error. Errors: -EINVAL, -ETIMEDOUT (no answer after all retries), -ENOMEM, -EPROTO. */
TITAN_API int titan_client_call(titan_client *c, const char *header_json, const titan_frame *frames,
                                size_t nframes, titan_reply **reply);

/* Typed calls return 0, or -EREMOTEIO when the worker answered an error (see
 * titan_client_last_error/_code), -ETIMEDOUT, -EPROTO for a malformed reply, -EINVAL, -ENOMEM. */

/* Pings the worker. If `device` is not NULL, *device gets a malloc'd copy of the
 * worker's "gpu" field (the caller frees it). */
TITAN_API int titan_client_ping(titan_client *c, char **device);
/* Asks the worker for its device. If `raw_json` is not NULL it gets the whole
 * reply header, malloc'd, for the caller to free. */
TITAN_API int titan_client_gpu_info(titan_client *c, titan_gpu_info *info, char **raw_json);
/* Computes out[m x n] = a[m x k] * b[k x n], row-major, of dtype `dt`, sent as
 * binary frames. If *out is not NULL the result is written there (the caller
 * provides m*n elements); if *out is NULL the library mallocs the result and
 * stores it in *out, and the caller frees it with free(). *out is untouched on failure. */
TITAN_API int titan_client_matmul(titan_client *c, titan_dtype dt, size_t m, size_t k, size_t n,
                                  const void *a, const void *b, void **out);

/* Resident tensors (PROTOCOL.md §5.7): data kept in the worker's device memory between calls, named by
 * handles ("t-" and 24 hex digits) that belong to this client. Set titan_client_opts.identity so that
 * they stay this client's across the reconnect a retry makes. */
#define TITAN_TENSOR_REF_MAX 64

/* Stores a row-major tensor of `rank` (1..TITAN_MAX_RANK) dimensions `shape` in the worker; writes its
 * handle into ref. Errors as the typed calls; the worker's "quota_exceeded" comes back as -EREMOTEIO. */
TITAN_API int titan_client_tensor_put(titan_client *c, titan_dtype dt, int rank, const int64_t *shape,
                                      const void *data, char ref[TITAN_TENSOR_REF_MAX]);
/* Reads a resident tensor back. On 0: *dt, *rank and shape[0..*rank) describe it, and *data is a
 * malloc'd copy of its *bytes bytes (the caller frees it). Any output pointer but data may be NULL. */
TITAN_API int titan_client_tensor_get(titan_client *c, const char *ref, titan_dtype *dt, int *rank,
                                      int64_t shape[TITAN_MAX_RANK], void **data, size_t *bytes);
/* Frees a resident tensor. */
TITAN_API int titan_client_tensor_free(titan_client *c, const char *ref);
/* Multiplies two resident matrices and keeps the product resident: writes its handle into c_ref. */
TITAN_API int titan_client_matmul_resident(titan_client *c, const char *a_ref, const char *b_ref,
                                           char c_ref[TITAN_TENSOR_REF_MAX]);

/* The last error of a typed call: the worker's message and stable code
 * ("busy", "bad_request"...), or a local description with code "timeout",
 * "protocol" or "local". Borrowed; valid until the next call on `c`. */
TITAN_API const char *titan_client_last_error(const titan_client *c);
TITAN_API const char *titan_client_last_code(const titan_client *c);
/* How many retries the last call needed (0 when the first attempt was answered). */
TITAN_API int titan_client_last_retries(const titan_client *c);

/* Reply accessors. The header is NUL-terminated JSON text; both are borrowed from `r`. */
TITAN_API const char *titan_reply_header(const titan_reply *r);
TITAN_API size_t titan_reply_frame_count(const titan_reply *r);
/* Returns frame `i` (0 = first frame after the header) and its size, or NULL when out of range. */
TITAN_API const void *titan_reply_frame(const titan_reply *r, size_t i, size_t *size);
/* Frees the reply; takes NULL, sets *r to NULL. */
TITAN_API void titan_reply_destroy(titan_reply **r);

#ifdef __cplusplus
}
#endif

#endif
