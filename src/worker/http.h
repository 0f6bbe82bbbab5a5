/* http.h - the worker's HTTP endpoint (libmicrohttpd): /healthz, /readyz, /metrics, and the /v1 API (http_api.h). */
#ifndef TITAN_WORKER_HTTP_H
#define TITAN_WORKER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "metrics.h"

typedef struct titan_http titan_http;

/* Parses an --http value: PORT (on 127.0.0.1), IPV4:PORT or [IPV6]:PORT, PORT 0 to 65535 (0: a
 * free port). Writes the address into *addr (may be NULL, to only check) and returns 0, or -EINVAL
 * with a message for the user in err. */
int titan_http_parse_listen(const char *spec, struct sockaddr_storage *addr, char *err, size_t errcap);

/* The /v1 routes' settings (docs/OPERATIONS.md, "HTTP API"). */
typedef struct {
    uint64_t max_body_bytes; /* one request body, at most (--http-max-body-kb); all bodies held: 8 times it */
    int max_inflight;        /* /v1 requests with the server at once (--http-max-inflight) */
    const char *token_file;  /* --http-token: bearer tokens, one a line; NULL: none */
    bool insecure;           /* --insecure-http: serve /v1 beyond loopback without a token */
} titan_http_opts;

/* Starts serving on spec (checked by titan_http_parse_listen) from libmicrohttpd's own thread,
 * plus a watchdog thread that enforces the request-header and body deadlines (see http.c for the
 * limits), reading m (borrowed: it must outlive the server). The /v1 routes answer 503 until
 * titan_http_attach. Callers block the signals that the main thread alone should take. Returns
 * NULL with a reason in err (the address is in use, say; the token file cannot be read). */
titan_http *titan_http_start(const char *spec, const titan_http_opts *opts, titan_metrics *m, char *err,
                             size_t errcap);
/* Serves the /v1 routes through the worker's server from now on: a bridge thread with a socket on zmq_ctx
 * (the server's, borrowed) connected to its inproc endpoint. Callers block signals as for titan_http_start.
 * Returns 0, or -errno with the reason in err. */
int titan_http_attach(titan_http *h, void *zmq_ctx, char *err, size_t errcap);
/* Stops the bridge (the /v1 requests in hand are answered 503) and closes its socket: call it before the
 * server's context ends. /healthz, /readyz and /metrics go on. Takes NULL; idempotent. */
void titan_http_detach(titan_http *h);
/* The address actually bound, as a URL without a path: "http://127.0.0.1:9100" (borrowed). */
const char *titan_http_url(const titan_http *h);
/* True when the server listens beyond loopback. */
bool titan_http_public(const titan_http *h);
/* Detaches, stops both threads (a request being answered finishes first) and frees; takes NULL, sets *h to NULL. */
void titan_http_stop(titan_http **h);

#endif
