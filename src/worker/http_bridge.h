/* http_bridge.h - the /v1 routes' way into the worker's server: one thread that owns a DEALER on the server's
 * inproc endpoint, translates each HTTP request (http_api.h), sends it with a correlation tag, and hands back the
 * HTTP answer when the reply comes, never blocking libmicrohttpd's thread. */
#ifndef TITAN_WORKER_HTTP_BRIDGE_H
#define TITAN_WORKER_HTTP_BRIDGE_H

#include <stddef.h>

#include "http_api.h"

typedef struct titan_http_bridge titan_http_bridge;
typedef struct titan_http_work titan_http_work;

/* One HTTP request on its way through the bridge. The caller fills the first part; the bridge sets the answer,
 * then calls done exactly once (on its own thread, or on the caller's when the bridge is closed), after which it
 * never touches the work again. */
struct titan_http_work {
    titan_http_route route;
    const char *body; /* borrowed until done */
    size_t len;
    void (*done)(titan_http_work *w);
    void *arg; /* the caller's */
    /* The answer: status, a malloc'd JSON body (NULL when out of memory: answer 500), Retry-After when > 0. */
    unsigned status;
    char *answer;
    size_t answer_len;
    int retry_after_s;
    /* The bridge's own. */
    titan_http_work *next;
};

/* Starts the bridge's thread with a DEALER connected to `endpoint` on zmq_ctx (borrowed; the bridge must be closed
 * before the context ends). At most max_inflight works are held at once (titan_http_bridge_reserve); a reply that
 * has not come reply_timeout_ms after the request was sent is answered 504. Callers block the signals that the main
 * thread alone should take. Returns NULL with the reason in err. */
titan_http_bridge *titan_http_bridge_new(void *zmq_ctx, const char *endpoint, int max_inflight, int reply_timeout_ms,
                                         char *err, size_t errcap);
/* Takes one of the max_inflight places for a work to come. Returns 0, -EBUSY when all are taken (answer 429), or
 * -ESHUTDOWN once the bridge is closed (answer 503). Thread-safe. */
int titan_http_bridge_reserve(titan_http_bridge *b);
/* Hands w over, on a place reserved before. Thread-safe. */
void titan_http_bridge_submit(titan_http_bridge *b, titan_http_work *w);
/* Answers every work in hand 503 "shutting_down" (their done called), closes the DEALER and stops the thread;
 * later works are answered so at once. Call it before the server's context ends. Takes NULL; idempotent. */
void titan_http_bridge_close(titan_http_bridge *b);
/* Closes if needed, and frees; takes NULL and sets *b to NULL. No other thread may use it any more. */
void titan_http_bridge_destroy(titan_http_bridge **b);

#endif
