/* batchq.h - the per-model queues of dynamic batching: requests for one model wait here, bounded, until a batch of
 * them is ready for an executor. The I/O thread's only (no locks). PROTOCOL.md 9.1. */
#ifndef TITAN_WORKER_BATCHQ_H
#define TITAN_WORKER_BATCHQ_H

#include <stddef.h>
#include <stdint.h>

#define TITAN_BATCHQ_MODELS 256 /* the registry's limit on models */

typedef struct titan_batchq titan_batchq;

/* One model's batching rules (encoder.h's options). */
typedef struct {
    int max_batch;          /* requests in one batch */
    int64_t max_delay_ns;   /* how long the oldest waits for others while a batch of its model runs */
    int capacity;           /* requests waiting at most */
} titan_batchq_rules;

titan_batchq *titan_batchq_new(void);
/* Frees the queues; the jobs still in them are the caller's (take them with titan_batchq_take_all first). */
void titan_batchq_free(titan_batchq **q);

/* Queues `job` for `model` (at most 128 bytes of name), created with `rules` on first use. Returns 0, -EBUSY when
 * the model's queue holds its capacity, -E2BIG for too many models or too long a name, -ENOMEM. */
int titan_batchq_push(titan_batchq *q, const char *model, const titan_batchq_rules *rules, void *job, int64_t now_ns);

/* Takes the next ready batch into jobs[0..max) (in arrival order) and returns its size (0: none is ready), with
 * the model's name in *model (borrowed until the queue is freed). A model's queue is ready when it holds
 * max_batch requests, when its oldest has waited max_delay_ns, or when no batch of the model is running: a lone
 * request never waits. Models take turns. The batch counts as running until titan_batchq_done. */
size_t titan_batchq_pop(titan_batchq *q, int64_t now_ns, void **jobs, size_t max, const char **model);
/* A batch of `model` finished. */
void titan_batchq_done(titan_batchq *q, const char *model);
/* When, at the earliest, a waiting queue becomes ready by its delay (monotonic ns); -1 when none waits for that. */
int64_t titan_batchq_next_ns(const titan_batchq *q);
/* Requests waiting in all queues. */
size_t titan_batchq_len(const titan_batchq *q);
/* Calls fn for each model's queue: its name and the requests waiting. */
void titan_batchq_each(const titan_batchq *q, void (*fn)(void *arg, const char *model, size_t waiting), void *arg);
/* Takes every waiting job (a drain), into fn; queues stay. */
void titan_batchq_take_all(titan_batchq *q, void (*fn)(void *arg, void *job), void *arg);

#endif
