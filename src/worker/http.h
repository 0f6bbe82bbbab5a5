/* http.h - the worker's HTTP endpoint (libmicrohttpd): /healthz, /readyz and /metrics. */
#ifndef TITAN_WORKER_HTTP_H
#define TITAN_WORKER_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "metrics.h"

typedef struct titan_http titan_http;

/* Parses an --http value: PORT (on 127.0.0.1), IPV4:PORT or [IPV6]:PORT, PORT 0 to 65535 (0: a
 * free port). Writes the address into *addr (may be NULL, to only check) and returns 0, or -EINVAL
 * with a message for the user in err. */
int titan_http_parse_listen(const char *spec, struct sockaddr_storage *addr, char *err, size_t errcap);

/* Starts serving on spec (checked by titan_http_parse_listen) from libmicrohttpd's own thread,
 * plus a watchdog thread that enforces the request-header deadline (see http.c for the limits),
 * reading m (borrowed: it must outlive the server). Callers block the signals that the main thread
 * alone should take. Returns NULL with a reason in err (the address is in use, say). */
titan_http *titan_http_start(const char *spec, titan_metrics *m, char *err, size_t errcap);
/* The address actually bound, as a URL without a path: "http://127.0.0.1:9100" (borrowed). */
const char *titan_http_url(const titan_http *h);
/* True when the server listens beyond loopback. */
bool titan_http_public(const titan_http *h);
/* Stops both threads (a request being answered finishes first) and frees; takes NULL, sets *h to NULL. */
void titan_http_stop(titan_http **h);

#endif
