/* auth.h - CURVE security for the worker's ROUTER socket: its server key, and a ZAP
 * handler that admits only the client keys found in a directory. */
#ifndef TITAN_WORKER_AUTH_H
#define TITAN_WORKER_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

typedef struct titan_auth titan_auth;

/* Prepares `router` (not yet bound) for cfg's security settings. With cfg->curve_secret:
 * loads the worker's secret certificate (a CZMQ certificate file), starts a ZAP handler on
 * `ctx` that admits the public keys of the certificates in cfg->allow_keys (re-read while
 * the worker runs, so keys can be added or revoked without a restart; every key is admitted
 * when allow_keys is NULL) and makes `router` a CURVE server. Without it: refuses with
 * -EPERM any bind of cfg that is not loopback, unless cfg->insecure (then it logs a warning).
 * Returns 0 and *out (NULL when CURVE is off), or -errno with a reason in err. */
int titan_auth_setup(void *ctx, void *router, const titan_config *cfg, titan_auth **out, char *err, size_t errcap);
/* With CURVE, every admitted connection gets a routing id from the ZAP handler instead of the one
 * its client set: "c-" and 32 random hex digits, never reused, so that no connection (of another
 * key, or of the same) can take another's routing id and its replies. Each message from such a
 * connection also carries that id in its metadata under this property (zmq_msg_gets), so that the
 * I/O thread can check that the ROUTER uses it. */
#define TITAN_AUTH_ROUTING_ID "X-Titan-Routing-Id"
#define TITAN_AUTH_ROUTING_ID_LEN 34
/* True when a connected client's key (Z85, the message's "User-Id" property) is still in
 * --allow-keys, so that revoking a key also stops connections made before; always true
 * without --allow-keys. A false answer counts as a refusal. Thread-safe. */
bool titan_auth_admits(titan_auth *a, const char *z85);
/* Client connections refused so far (thread-safe). */
unsigned long long titan_auth_refused(const titan_auth *a);
/* Stops the ZAP handler and frees; takes NULL, sets *a to NULL. Call before zmq_ctx_term. */
void titan_auth_destroy(titan_auth **a);

#endif
