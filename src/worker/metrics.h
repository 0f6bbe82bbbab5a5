/* metrics.h - the worker's counters, histograms and state for /metrics, /readyz and gpu_info. */
#ifndef TITAN_WORKER_METRICS_H
#define TITAN_WORKER_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "tstore.h"
#include "ops.h"

/* The worker's state as /readyz tells it. */
typedef enum {
    TITAN_STATE_STARTING = 0, /* the backend or the sockets are not up yet */
    TITAN_STATE_SERVING,
    TITAN_STATE_DRAINING, /* SIGINT/SIGTERM: no new work */
} titan_worker_state;

/* Why the server answered "busy" (titan_busy_rejections_total{reason}). */
typedef enum {
    TITAN_BUSY_QUEUE_FULL = 0, /* every executor busy and the queue full (--queue) */
    TITAN_BUSY_CLIENT_SHARE,   /* the client holds its share of the queue (--max-client-share) */
    TITAN_BUSY_INFLIGHT_BYTES, /* the request bytes in hand (--max-inflight-bytes) */
    TITAN_BUSY_MODEL_QUEUE,    /* an encoder's batching queue is full (its manifest's "queue") */
    TITAN_BUSY_COUNT
} titan_busy_reason;

/* What the job consumer did with a job (titan_jobs_processed_total{outcome}). */
typedef enum {
    TITAN_JOBS_DONE = 0,      /* its result stored */
    TITAN_JOBS_FAILED,        /* ended with a final error */
    TITAN_JOBS_RETRIED,       /* an attempt failed with a retryable error; the job stays pending */
    TITAN_JOBS_DEAD_LETTERED, /* picked up after --max-attempts starts: moved to {PREFIX}:dead */
    TITAN_JOBS_SKIPPED,       /* cancelled, or already ended (a duplicate entry) */
    TITAN_JOBS_OUTCOME_COUNT
} titan_job_outcome;

typedef struct titan_metrics titan_metrics;

/* Creates the metrics of one worker, all zero, in TITAN_STATE_STARTING. Returns NULL when out of memory. */
titan_metrics *titan_metrics_new(void);
/* Frees; takes NULL and sets *m to NULL. Nothing may use the object any more (stop the HTTP server first). */
void titan_metrics_destroy(titan_metrics **m);

/* Settings shown as gauges: executor threads and the queue capacity. */
void titan_metrics_set_limits(titan_metrics *m, int executors, int queue_capacity);
/* Publishes the backend (borrowed; NULL unpublishes it before it is destroyed): build_info's labels and
 * the device gauges come from it from now on. */
void titan_metrics_set_backend(titan_metrics *m, titan_backend *be);
/* The resident tensors' store, for their gauges (NULL: none); borrowed, like the backend. */
void titan_metrics_set_tensors(titan_metrics *m, titan_tstore *ts);
void titan_metrics_set_state(titan_metrics *m, titan_worker_state st);
/* Says that a job consumer runs (the jobs families appear) and whether it reaches Redis now. */
void titan_metrics_set_jobs_redis_up(titan_metrics *m, bool up);

/* The I/O thread's side, for every request: see server.c. `op` and `code` may be any text (or
 * NULL); they are folded into a fixed set of labels, "other" for the rest. No allocation, no lock. */
void titan_metrics_received(titan_metrics *m, uint64_t bytes);
void titan_metrics_replied(titan_metrics *m, const char *op, const char *code, uint64_t duration_ns,
                           uint64_t sent_bytes, bool delivered);
void titan_metrics_queued(titan_metrics *m, uint64_t wait_ns);
void titan_metrics_busy(titan_metrics *m, titan_busy_reason why);
void titan_metrics_set_load(titan_metrics *m, int queue_depth, int running, uint64_t inflight_bytes);
/* Dynamic batching (server.c): a batch of `requests` ran `tokens` tokens (any thread); a request waited wait_ns in
 * its model's queue; a model's queue holds `waiting` requests now (the I/O thread: the first call with a model
 * name adds its series, at most 256). */
void titan_metrics_batch(titan_metrics *m, size_t requests, uint64_t tokens);
void titan_metrics_batch_queued(titan_metrics *m, uint64_t wait_ns);
void titan_metrics_set_model_queue(titan_metrics *m, const char *model, size_t waiting);
/* The job consumer's side. */
void titan_metrics_job(titan_metrics *m, titan_job_outcome outcome);

/* True when the worker is ready for work; else false and a one-line reason in why. While ready,
 * why may still hold a note (a job consumer that cannot reach Redis), or be empty. */
bool titan_metrics_ready(const titan_metrics *m, char *why, size_t cap);
/* The live load for gpu_info, in titan_worker_ctx.load's shape (arg: the titan_metrics). */
void titan_metrics_load(void *arg, titan_worker_load *out);

/* Writes every metric in the Prometheus text format 0.0.4 into *text (the caller's to free) and its
 * length into *len. Returns 0 or -ENOMEM. Safe from any thread while the others update. */
int titan_metrics_render(titan_metrics *m, char **text, size_t *len);

#endif
