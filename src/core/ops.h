/* ops.h - the operations a worker serves, and the context they run in. */
#ifndef TITAN_WORKER_OPS_H
#define TITAN_WORKER_OPS_H

#include <stdbool.h>

#include "backend.h"
#include "models.h"
#include "request.h"
#include "tstore.h"

/* A running worker's live load, for gpu_info. */
typedef struct {
    int queue_depth; /* requests waiting for an executor */
    int inflight;    /* requests running or waiting */
    double uptime_s; /* since the worker started */
} titan_worker_load;

typedef struct {
    titan_backend *backend;
    titan_limits limits;
    int threads;      /* executors */
    int blas_threads;
    int queue;
    char *ping_reply; /* the reply to a ping without "id", built once */
    size_t ping_reply_len;
    /* Set by the worker: fills in its live load (thread-safe); NULL in the in-process engine,
     * whose gpu_info then has no queue_depth, inflight or uptime_s. */
    void (*load)(void *arg, titan_worker_load *out);
    void *load_arg;
    /* The model registry (--models); NULL when the worker serves no models and in the
     * in-process engine: inference and the model ops then answer "unsupported". */
    titan_models *models;
    const char *runner_info; /* "libtorch 1.13.0, cpu", or NULL when no runner is built in */
    /* Resident tensors (tensor_put...); NULL in the in-process engine: those ops answer "unsupported". */
    titan_tstore *tensors;
} titan_worker_ctx;

typedef int (*titan_op_fn)(titan_worker_ctx *w, titan_request *req, titan_out *out, titan_error *err);

typedef struct {
    const char *name;
    titan_op_fn fn;
    bool heavy;          /* runs on an executor thread; light ops run on the I/O thread */
    const char *summary; /* one line for the "ops" listing */
} titan_op;

/* Returns the op named `name`, or NULL. */
const titan_op *titan_op_find(const char *name);

/* Builds cached replies. Returns 0 or -ENOMEM. */
int titan_ops_init(titan_worker_ctx *w);
void titan_ops_fini(titan_worker_ctx *w);

/* Runs a parsed request's op into out (a result or an error reply). Returns 0 on a
 * result, or -1 when out holds an error (err says which, for logging). */
int titan_op_run(titan_worker_ctx *w, const titan_op *op, titan_request *req, titan_out *out, titan_error *err);

#endif
