/* router.h - libtitan's backend router: one call, several compute backends (compute_backends.yaml).
 *
 * The router sends each request to the first healthy backend, in priority order, that has the
 * capability the request needs and room for one more request. A backend that answers "busy", times
 * out or is unreachable is skipped and the next one is tried (overflow and failover). A circuit
 * breaker takes a backend that keeps failing out of rotation, and a half-open probe (a ping) lets it
 * back once it answers again. `type: local` backends run in this process, through the worker's own
 * backend code, without a socket. The file format is docs/OPERATIONS.md, "Routing across backends".
 *
 * A router is thread-safe: several threads may call it at once (each remote call uses its own
 * connection from a small per-backend pool). */
#ifndef TITAN_ROUTER_H
#define TITAN_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "titan/client.h"
#include "titan/export.h"
#include "titan/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct titan_router titan_router;

typedef enum {
    TITAN_ROUTE_LOCAL = 1,  /* in this process */
    TITAN_ROUTE_REMOTE = 2, /* a titan-worker over ZeroMQ */
} titan_route_type;

typedef enum {
    TITAN_BREAKER_CLOSED = 0,    /* in rotation */
    TITAN_BREAKER_OPEN = 1,      /* out of rotation until its cool-down ends */
    TITAN_BREAKER_HALF_OPEN = 2, /* cool-down over: the next request probes it first */
} titan_breaker_state;

typedef struct {
    void *zmq_ctx; /* optional ZeroMQ context to share; NULL: the router makes and owns one */
} titan_router_opts;

/* What a routed call did: where it went and why others were passed over. */
typedef struct {
    int backend;        /* index of the backend that answered, or -1 */
    int tried;          /* backends tried (sent to, or probed), including the one that answered */
    int skipped_busy;   /* backends that answered busy or were at max_inflight */
    int skipped_failed; /* backends that timed out, were unreachable, or whose breaker is open */
    char error[512];    /* why the call failed; "" on success */
    int nparts;         /* titan_router_matmul_split: how the rows were divided, in row order */
    struct {
        int backend; /* the backend first chosen for these rows (another may have taken over) */
        size_t rows;
    } part[32];
} titan_route_info;

/* One backend as the router sees it now. */
typedef struct {
    char name[64];
    titan_route_type type;
    char endpoint[256];     /* remote: the ZeroMQ endpoint; local: "" */
    char device[64];        /* as configured ("cuda:0", "titan-x-vm"...) */
    char capabilities[800]; /* comma-separated; "" = any */
    int priority;
    double weight;
    int max_inflight; /* 0 = no limit */
    int timeout_ms;
    titan_breaker_state state;
    int inflight;
    uint64_t requests; /* calls sent to it (probes excluded) */
    uint64_t ok;       /* answered (a result, or an error the request itself caused) */
    uint64_t busy;     /* answered busy */
    uint64_t failures; /* timed out, unreachable, or failed locally */
    uint64_t probes;   /* half-open and explicit pings */
    double p50_ms;     /* median latency of the last 128 answered calls and probes; < 0 when none */
    double p99_ms;
    double gflops; /* measured matmul throughput (moving average); 0 until measured */
    char last_error[256];
    int64_t last_error_ms; /* Unix time in ms of last_error; 0 when none */
} titan_backend_status;

/* Fills `opts` with the defaults. */
TITAN_API void titan_router_opts_init(titan_router_opts *opts);

/* Reads compute_backends.yaml at `path` and returns a router, or NULL with errno set (EINVAL for
 * a bad file, ENOENT, EACCES, ENOMEM) and a sentence in err[0..errcap) that names the file, the
 * line and the field. No connection is made yet. */
TITAN_API titan_router *titan_router_new_from_file(const char *path, const titan_router_opts *opts, char *err,
                                                   size_t errcap);
/* The same from YAML text; `name` stands for the file in messages (relative key files are read
 * from the current directory). */
TITAN_API titan_router *titan_router_new_from_string(const char *yaml, const char *name,
                                                     const titan_router_opts *opts, char *err, size_t errcap);
/* Frees the router, closing its connections; takes NULL, sets *r to NULL. Calls must have ended. */
TITAN_API void titan_router_destroy(titan_router **r);

/* Warnings of the configuration (unknown fields, which are ignored), one per line, "" when none.
 * Borrowed; valid as long as the router. */
TITAN_API const char *titan_router_warnings(const titan_router *r);

/* Routes one request (as titan_client_call). `capability` names what the backend must offer; NULL
 * derives it from the op: "matrix_ops" for matrix_multiply, "inference" for inference (a backend
 * listing "legacy_inference" offers it too), none for other ops. A backend without a capability
 * list offers everything. Returns 0 with *reply (a result, or an error answer that retrying
 * elsewhere would not change, such as bad_request) or -errno: -EBUSY when every capable backend was
 * busy or full, -EHOSTUNREACH when none answered (timeouts, breakers open, local device missing),
 * -ENOTSUP when no backend has the capability, -EINVAL, -ENOMEM. `info` (may be NULL) says what
 * happened either way. */
TITAN_API int titan_router_call(titan_router *r, const char *header_json, const titan_frame *frames,
                                size_t nframes, const char *capability, titan_reply **reply,
                                titan_route_info *info);

/* Sends the request to backend i only, with no failover, as a routed call would (breaker, half-open
 * probe, max_inflight, statistics): for status pollers and tools that must reach one backend.
 * Returns 0 with *reply (a result or any error answer), -EBUSY (it answered busy or is at
 * max_inflight), -EHOSTUNREACH (it failed or its breaker is open; info->error says which), -EINVAL. */
TITAN_API int titan_router_call_on(titan_router *r, size_t i, const char *header_json, const titan_frame *frames,
                                   size_t nframes, titan_reply **reply, titan_route_info *info);

/* out[m x n] = a[m x k] * b[k x n] on one backend (routed as above). *out as titan_client_matmul:
 * written there when not NULL, else malloc'd. Returns 0, -EREMOTEIO when the backend answered an
 * error (info->error says it), or the errors of titan_router_call. */
TITAN_API int titan_router_matmul(titan_router *r, titan_dtype dt, size_t m, size_t k, size_t n,
                                  const void *a, const void *b, void **out, titan_route_info *info);

/* The same product with the rows of `a` divided among the healthy backends that offer matrix_ops,
 * in proportion to their measured throughput (their `weight` until measured), computed at once and
 * assembled in *out. A part whose backend fails is routed again like a single call. Split points fall
 * on multiples of 64 rows, so each row is rounded as a single backend rounds it wherever the BLAS
 * rounds a row independently of how many rows there are (float32 in OpenBLAS, and float64 with one
 * BLAS thread: then the result is byte-identical); a multithreaded float64 OpenBLAS rounds with its
 * thread and row counts, and may differ in the last bit, as two workers with different --blas-threads
 * do. info->backend is -1; info->tried counts the parts' backends. */
TITAN_API int titan_router_matmul_split(titan_router *r, titan_dtype dt, size_t m, size_t k, size_t n,
                                        const void *a, const void *b, void **out, titan_route_info *info);

/* Pings every backend at once (remote: a ping within its timeout; local: opens the device),
 * updating states and latencies as a half-open probe would. Returns how many answered. */
TITAN_API int titan_router_probe(titan_router *r);

/* The number of backends, in file order. */
TITAN_API size_t titan_router_backend_count(const titan_router *r);
/* Fills *out with backend i's status. Returns 0 or -EINVAL (no such backend). */
TITAN_API int titan_router_backend_status(titan_router *r, size_t i, titan_backend_status *out);
/* The name of a state: "closed", "open", "half-open". */
TITAN_API const char *titan_breaker_state_name(titan_breaker_state s);

/* sizeof the public struct named `name` ("titan_route_info", "titan_backend_status") as this library was
 * built, or 0 for another name: bindings that mirror these structs (the Python client's ctypes layer)
 * check it and refuse a library whose layout is not the one they know. */
TITAN_API size_t titan_router_struct_size(const char *name);

#ifdef __cplusplus
}
#endif

#endif
