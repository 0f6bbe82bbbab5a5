/* jobs.h - the worker's batch-job consumer: runs jobs from Redis Streams through its own admission (docs/JOBS.md). */
#ifndef TITAN_WORKER_JOBS_H
#define TITAN_WORKER_JOBS_H

#include <signal.h>
#include <stddef.h>

#include "config.h"
#include "metrics.h"

typedef struct titan_jobs_consumer titan_jobs_consumer;

/* Checks the job settings of cfg (the --redis URL above all) without connecting. Returns 0, or
 * -EINVAL with a message for the user in err. A cfg without redis_url passes. */
int titan_jobs_consumer_check(const titan_config *cfg, char *err, size_t errcap);

/* Starts a thread that consumes the job streams named by cfg and sends the jobs, up to
 * cfg->jobs_inflight at once (0: one per executor), to TITAN_SERVER_INPROC over a DEALER on
 * zmq_ctx (borrowed; it must outlive the consumer). Redis need not be up: the thread connects,
 * and reconnects, by itself. Counts each job's outcome and Redis's reachability in metrics (borrowed,
 * may be NULL; it must outlive the consumer). Returns NULL with a reason in err for bad settings or
 * when the thread cannot start. */
titan_jobs_consumer *titan_jobs_consumer_start(const titan_config *cfg, void *zmq_ctx, titan_metrics *metrics,
                                               char *err, size_t errcap);

/* Lets the consumer watch the worker's stop flag (borrowed; it must outlive the consumer): once
 * it is set, the jobs in hand finish (the server drains them; one it answers "shutting_down" has
 * its start undone) and no new job starts. */
void titan_jobs_consumer_watch(titan_jobs_consumer *c, volatile sig_atomic_t *stopping);

/* Stops the thread and frees; takes NULL and sets *c to NULL. Returns within about 2 s. A job
 * whose reply has not come by then is left pending in Redis, for another worker to reclaim after
 * the visibility timeout. Call it before the ZeroMQ context is terminated. */
void titan_jobs_consumer_stop(titan_jobs_consumer **c);

#endif
