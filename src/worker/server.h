/* server.h - the worker's I/O loop: one ROUTER socket, admission control, executor threads. */
#ifndef TITAN_WORKER_SERVER_H
#define TITAN_WORKER_SERVER_H

#include <signal.h>

#include "config.h"
#include "metrics.h"
#include "ops.h"

typedef struct titan_server titan_server;

/* Binds every endpoint in cfg and starts cfg->threads executors (callers block SIGINT and
 * SIGTERM first so that only the main thread sees them). Every request is counted in metrics
 * (borrowed: it must outlive the server). Returns NULL with a reason in err. */
titan_server *titan_server_new(const titan_config *cfg, titan_worker_ctx *w, titan_metrics *metrics,
                               char *err, size_t errcap);
/* The in-process endpoint on which the worker also serves requests, for its own job
 * consumer (a DEALER on titan_server_zmq_ctx): such requests share the admission limits. */
#define TITAN_SERVER_INPROC "inproc://titan-requests"
/* The ZeroMQ context of the server (borrowed), for sockets that talk to TITAN_SERVER_INPROC. */
void *titan_server_zmq_ctx(const titan_server *s);
/* The endpoints actually bound ("tcp://127.0.0.1:41234"), one per line; borrowed. */
const char *titan_server_endpoints(const titan_server *s);
/* Serves until *stop becomes nonzero; wake_fd (or -1) is polled too, so that a signal
 * handler on any thread can wake the loop by writing to it. Then answers what is queued
 * with "shutting_down", waits for running requests and returns 0, or -errno on a fatal socket error. */
int titan_server_run(titan_server *s, volatile sig_atomic_t *stop, int wake_fd);
/* Requests served, errors answered, replies that could not be delivered, and clients
 * refused by CURVE authentication, so far. */
void titan_server_counts(const titan_server *s, unsigned long long *served, unsigned long long *errors,
                         unsigned long long *dropped, unsigned long long *refused);
/* Requests still running when titan_server_run gave up draining them. */
int titan_server_abandoned(const titan_server *s);
void titan_server_destroy(titan_server **s);

#endif
