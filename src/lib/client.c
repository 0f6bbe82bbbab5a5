/* client.c - libtitan's ZeroMQ client: a DEALER socket with Lazy Pirate retries, and typed calls. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <jansson.h>
#include <zmq.h>

#include "clock.h"
#include "hostpool.h"
#include "titan/client.h"
#include "reply_internal.h"

#define S_DEFAULT_TIMEOUT_MS 5000
#define S_DEFAULT_RETRIES 2
#define S_MAX_ENDPOINT 1024
/* A reply with more binary frames than this is a protocol error, not an allocation. */
#define S_MAX_REPLY_FRAMES 64
/* Frames this large are sent from the caller's memory without a copy (see s_lent). */
#define S_ZERO_COPY_MIN 65536
/* A CURVE key in Z85 text; the buffers hold the terminating NUL, which ZeroMQ wants too. */
#define S_Z85_KEY_LEN 40
#define S_MAX_HEARTBEAT_MS 3600000
#define S_DEFAULT_HEARTBEAT_MS 5000

/* Counts caller buffers lent to ZeroMQ. A zero-copy frame stays in ZeroMQ's hands until its
 * I/O thread has written it (or dropped it when the socket closed), which can be a little
 * after the reply arrives; every call waits for the count to reach zero before it returns,
 * so the caller may reuse or free its buffers as soon as the call returns. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned lent;
} s_lent;

struct titan_client {
    void *ctx;
    bool own_ctx;
    /* NULL after a failed attempt: the next attempt opens a fresh socket, so a late
     * reply to an abandoned request can never be taken for the answer to a new one. */
    void *sock;
    char *endpoint;
    int timeout_ms;
    int retries;
    int last_retries;
    int heartbeat_ms;
    bool curve;
    char server_key[S_Z85_KEY_LEN + 1];
    char public_key[S_Z85_KEY_LEN + 1];
    char secret_key[S_Z85_KEY_LEN + 1];
    char last_code[32];
    char last_error[512];
    s_lent lent;
    /* opts.identity: the routing id of every socket, so that the worker knows this client across
     * reconnects; then each attempt carries a tag frame, and a late reply to an abandoned attempt
     * (which the worker now routes to the new socket) is recognised and dropped. */
    char identity[TITAN_CLIENT_IDENTITY_MAX + 1];
    size_t identity_len;
    unsigned tag;
};

struct titan_reply {
    char *header; /* NUL-terminated copy of the JSON header frame */
    size_t nframes;
    size_t cap;
    zmq_msg_t *frames; /* received without copying; data borrowed by titan_reply_frame */
};

/* Maps ZeroMQ's private errno values to standard ones, so callers only see -errno they know. */
static int s_errno_from_zmq(int e)
{
    switch (e) {
    case ETERM:
        return ESHUTDOWN;
    case EMTHREAD:
        return EMFILE;
    case EFSM:
        return EPROTO;
    case ENOCOMPATPROTO:
        return EINVAL;
    default:
        return e;
    }
}

/* Records the last error of `c` as `code` plus a printf-style message. */
__attribute__((format(printf, 3, 4))) static void s_set_error(titan_client *c, const char *code,
                                                              const char *fmt, ...)
{
    va_list ap;
    snprintf(c->last_code, sizeof c->last_code, "%s", code);
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
}

/* Clears the per-call state at the start of every call. */
static void s_reset_last(titan_client *c)
{
    c->last_code[0] = '\0';
    c->last_error[0] = '\0';
    c->last_retries = 0;
}

/* Closes the socket of `c`, dropping anything unsent (linger 0); takes a closed one. */
static void s_close_socket(titan_client *c)
{
    if (c->sock) {
        zmq_close(c->sock);
        c->sock = NULL;
    }
}

/* Returns true unless `endpoint` is a tcp:// one whose port is not 1..65535: ZeroMQ
 * accepts such ports on connect and would then retry in vain forever. */
static bool s_tcp_port_ok(const char *endpoint)
{
    if (strncmp(endpoint, "tcp://", 6) != 0) return true;
    const char *colon = strrchr(endpoint, ':');
    if (!colon || colon < endpoint + 6 || colon[1] == '\0') return false;
    long port = 0;
    for (const char *p = colon + 1; *p; p++) {
        if (*p < '0' || *p > '9' || (port = port * 10 + (*p - '0')) > 65535) return false;
    }
    return port >= 1;
}

/* Opens and connects a fresh DEALER socket for `c`. Returns 0 or -errno (-EINVAL: bad endpoint). */
static int s_open_socket(titan_client *c)
{
    int linger = 0;
    int sndtimeo = c->timeout_ms;
    void *s = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!s) return -s_errno_from_zmq(errno);
    int hb_ivl = c->heartbeat_ms, hb_timeout = 3 * c->heartbeat_ms;
    if (zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(s, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) != 0 ||
        (hb_ivl && (zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl) != 0 ||
                    zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout) != 0)) ||
        (c->curve && (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, c->server_key, sizeof c->server_key) != 0 ||
                      zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, c->public_key, sizeof c->public_key) != 0 ||
                      zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, c->secret_key, sizeof c->secret_key) != 0)) ||
        (c->identity_len && zmq_setsockopt(s, ZMQ_ROUTING_ID, c->identity, c->identity_len) != 0) ||
        zmq_connect(s, c->endpoint) != 0) {
        int e = s_errno_from_zmq(errno);
        zmq_close(s);
        return e == EPROTONOSUPPORT ? -EINVAL : -e;
    }
    c->sock = s;
    return 0;
}

/* Sends one part, retrying on EINTR. Returns 0, -EAGAIN when the send timeout passed, or -errno. */
static int s_send_part(void *sock, const void *data, size_t size, int flags)
{
    for (;;) {
        if (zmq_send(sock, data, size, flags) >= 0) return 0;
        if (errno != EINTR) return -s_errno_from_zmq(errno);
    }
}

/* ZeroMQ calls this (on its I/O thread) when it no longer needs a lent buffer. */
static void s_lent_return(void *data, void *hint)
{
    (void)data;
    s_lent *l = hint;
    pthread_mutex_lock(&l->mu);
    if (--l->lent == 0) pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

/* Blocks until ZeroMQ has given back every lent buffer. It always does: once written, or
 * when the closed socket's pipes are torn down. */
static void s_lent_wait(s_lent *l)
{
    pthread_mutex_lock(&l->mu);
    while (l->lent) pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
}

/* Sends one large frame straight from the caller's memory. Returns 0 or -errno. */
static int s_send_lent(titan_client *c, const void *data, size_t size, int flags)
{
    zmq_msg_t m;
    pthread_mutex_lock(&c->lent.mu);
    c->lent.lent++;
    pthread_mutex_unlock(&c->lent.mu);
    /* ZeroMQ only reads the bytes; the cast drops const for its API. */
    if (zmq_msg_init_data(&m, (void *)data, size, s_lent_return, &c->lent) != 0) {
        s_lent_return(NULL, &c->lent);
        return -ENOMEM;
    }
    for (;;) {
        if (zmq_msg_send(&m, c->sock, flags) >= 0) return 0;
        if (errno != EINTR) break;
    }
    int e = s_errno_from_zmq(errno);
    zmq_msg_close(&m); /* gives the buffer back */
    return -e;
}

/* Sends delimiter, header and frames as one multipart message. Returns 0, -ETIMEDOUT or -errno. */
static int s_send_request(titan_client *c, const char *header, size_t hlen, const titan_frame *frames,
                          size_t nframes)
{
    int rc = 0;
    if (c->identity_len) {
        /* An envelope frame the worker echoes back (PROTOCOL.md §2); never JSON-like. */
        char tag[16];
        int n = snprintf(tag, sizeof(tag), "@%08x", ++c->tag);
        rc = s_send_part(c->sock, tag, (size_t)n, ZMQ_SNDMORE);
    }
    if (rc == 0) rc = s_send_part(c->sock, "", 0, ZMQ_SNDMORE);
    if (rc == 0) rc = s_send_part(c->sock, header, hlen, nframes ? ZMQ_SNDMORE : 0);
    for (size_t i = 0; rc == 0 && i < nframes; i++) {
        int flags = i + 1 < nframes ? ZMQ_SNDMORE : 0;
        if (frames[i].size >= S_ZERO_COPY_MIN)
            rc = s_send_lent(c, frames[i].data, frames[i].size, flags);
        else
            rc = s_send_part(c->sock, frames[i].data, frames[i].size, flags);
    }
    /* The send timeout passing means no peer took the request: the same as no answer. */
    return rc == -EAGAIN ? -ETIMEDOUT : rc;
}

/* Waits until the socket of `c` has a message or `deadline` (titan_clock_mono_ms64) passes.
 * Returns 0 when readable, -ETIMEDOUT, or -errno. */
static int s_wait_readable(titan_client *c, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - titan_clock_mono_ms64();
        if (left <= 0) return -ETIMEDOUT;
        zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
        int rc = zmq_poll(&item, 1, (long)left);
        if (rc < 0) {
            if (errno == EINTR) continue;
            return -s_errno_from_zmq(errno);
        }
        if (rc > 0 && (item.revents & ZMQ_POLLIN)) return 0;
    }
}

/* Receives one part into the initialized `msg`, retrying on EINTR. Returns 0 or -errno.
 * The parts of a multipart message arrive together, so this never waits. */
static int s_recv_part(void *sock, zmq_msg_t *msg)
{
    for (;;) {
        if (zmq_msg_recv(msg, sock, ZMQ_DONTWAIT) >= 0) return 0;
        if (errno != EINTR) return -s_errno_from_zmq(errno);
    }
}

/* Appends `msg` (moved, left empty) to the frames of `r`. Returns 0 or -ENOMEM. */
static int s_reply_push(titan_reply *r, zmq_msg_t *msg)
{
    if (r->nframes == r->cap) {
        /* zmq_msg_t may not be moved bytewise: grow into a new array with zmq_msg_move. */
        size_t cap = r->cap ? r->cap * 2 : 4;
        zmq_msg_t *frames = malloc(cap * sizeof *frames);
        if (!frames) return -ENOMEM;
        for (size_t i = 0; i < r->nframes; i++) {
            zmq_msg_init(&frames[i]);
            zmq_msg_move(&frames[i], &r->frames[i]);
            zmq_msg_close(&r->frames[i]);
        }
        free(r->frames);
        r->frames = frames;
        r->cap = cap;
    }
    zmq_msg_init(&r->frames[r->nframes]);
    zmq_msg_move(&r->frames[r->nframes], msg);
    r->nframes++;
    return 0;
}

/* Reads one whole reply (delimiter, header, frames) from the readable socket of `c`.
 * Returns 0 and *out, -EPROTO (last error set), -ENOMEM or -errno. */
static int s_recv_reply(titan_client *c, titan_reply **out)
{
    int rc;
    zmq_msg_t msg;
    titan_reply *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    zmq_msg_init(&msg);

    rc = s_recv_part(c->sock, &msg);
    if (rc) goto out;
    if (c->identity_len) {
        char tag[16];
        int n = snprintf(tag, sizeof(tag), "@%08x", c->tag);
        if (zmq_msg_size(&msg) != (size_t)n || memcmp(zmq_msg_data(&msg), tag, (size_t)n) != 0) {
            /* A reply to an earlier attempt: drop all of it and keep waiting. */
            while (zmq_msg_more(&msg) && s_recv_part(c->sock, &msg) == 0) {
            }
            rc = -EAGAIN;
            goto out;
        }
        if (!zmq_msg_more(&msg)) {
            s_set_error(c, "protocol", "reply from %s has only its tag frame", c->endpoint);
            rc = -EPROTO;
            goto out;
        }
        rc = s_recv_part(c->sock, &msg);
        if (rc) goto out;
    }
    if (zmq_msg_size(&msg) != 0 || !zmq_msg_more(&msg)) {
        s_set_error(c, "protocol", "reply from %s lacks the empty delimiter frame or a header", c->endpoint);
        rc = -EPROTO;
        goto out;
    }
    rc = s_recv_part(c->sock, &msg);
    if (rc) goto out;
    size_t hlen = zmq_msg_size(&msg);
    if (hlen == 0 || memchr(zmq_msg_data(&msg), '\0', hlen)) {
        s_set_error(c, "protocol", "reply from %s has an empty header or one with a NUL byte", c->endpoint);
        rc = -EPROTO;
        goto out;
    }
    r->header = malloc(hlen + 1);
    if (!r->header) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(r->header, zmq_msg_data(&msg), hlen);
    r->header[hlen] = '\0';

    /* s_reply_push empties `msg`, so remember whether more parts follow before it does. */
    for (int more = zmq_msg_more(&msg); more;) {
        if (r->nframes == S_MAX_REPLY_FRAMES) {
            s_set_error(c, "protocol", "reply from %s has more than %d binary frames", c->endpoint,
                        S_MAX_REPLY_FRAMES);
            rc = -EPROTO;
            goto out;
        }
        rc = s_recv_part(c->sock, &msg);
        if (rc) goto out;
        more = zmq_msg_more(&msg);
        rc = s_reply_push(r, &msg);
        if (rc) goto out;
    }
    *out = r;
    r = NULL;
out:
    zmq_msg_close(&msg);
    titan_reply_destroy(&r);
    return rc;
}

/* Runs one request under the timeout/retry policy (Lazy Pirate). Returns 0 and *out,
 * or -ETIMEDOUT/-EPROTO/-ENOMEM/-errno with the last error set. */
static int s_call(titan_client *c, const char *header, const titan_frame *frames, size_t nframes,
                  titan_reply **out)
{
    size_t hlen = strlen(header);
    int rc = 0;
    for (int attempt = 0;; attempt++) {
        c->last_retries = attempt;
        if (!c->sock && (rc = s_open_socket(c)) != 0) break;
        int64_t deadline = titan_clock_mono_ms64() + c->timeout_ms;
        rc = s_send_request(c, header, hlen, frames, nframes);
        do {
            if (rc == 0 || rc == -EAGAIN) rc = s_wait_readable(c, deadline);
            if (rc == 0) rc = s_recv_reply(c, out);
        } while (rc == -EAGAIN);
        if (rc == 0) break;
        /* Any failure leaves the socket in an unknown state (request queued, reply half read). */
        s_close_socket(c);
        if (rc != -ETIMEDOUT || attempt >= c->retries) break;
    }
    /* The caller's frames must be ours again before we return. */
    s_lent_wait(&c->lent);
    if (rc == 0) return 0;
    if (rc == -ETIMEDOUT)
        s_set_error(c, "timeout", "no answer from %s after %d attempt(s) of %d ms%s", c->endpoint,
                    c->last_retries + 1, c->timeout_ms,
                    c->curve ? " (with CURVE, this is also what a worker that refused this client's key, or "
                               "whose key is not the given server key, looks like)"
                             : "");
    else if (rc != -EPROTO)
        s_set_error(c, "local", "request to %s failed: %s", c->endpoint, strerror(-rc));
    return rc;
}

TITAN_API void titan_client_opts_init(titan_client_opts *opts)
{
    if (!opts) return;
    opts->timeout_ms = S_DEFAULT_TIMEOUT_MS;
    opts->retries = S_DEFAULT_RETRIES;
    opts->zmq_ctx = NULL;
    opts->server_key = NULL;
    opts->public_key = NULL;
    opts->secret_key = NULL;
    opts->heartbeat_ms = S_DEFAULT_HEARTBEAT_MS;
    opts->identity = NULL;
}

/* Returns true when `key` is a 40-character Z85 text that decodes. */
static bool s_key_ok(const char *key)
{
    uint8_t bin[32];
    return strlen(key) == S_Z85_KEY_LEN && zmq_z85_decode(bin, key) != NULL;
}

/* Copies the CURVE settings of `o` into `c`, generating a key pair if none is given. Returns 0,
 * -EINVAL for keys that are malformed, inconsistent or given without a server key, -ENOTSUP. */
static int s_setup_curve(titan_client *c, const titan_client_opts *o)
{
    if (!o->server_key) return o->public_key || o->secret_key ? -EINVAL : 0;
    if (!s_key_ok(o->server_key) || !o->public_key != !o->secret_key) return -EINVAL;
    if (!zmq_has("curve")) return -ENOTSUP;
    memcpy(c->server_key, o->server_key, sizeof c->server_key);
    if (o->public_key) {
        /* A public key that is not the secret key's would only show up as a refusal later. */
        char derived[S_Z85_KEY_LEN + 1];
        uint8_t want[32], got[32];
        if (!s_key_ok(o->public_key) || !s_key_ok(o->secret_key) ||
            zmq_curve_public(derived, o->secret_key) != 0 || !zmq_z85_decode(got, derived) ||
            !zmq_z85_decode(want, o->public_key) || memcmp(got, want, 32) != 0)
            return -EINVAL;
        memcpy(c->public_key, o->public_key, sizeof c->public_key);
        memcpy(c->secret_key, o->secret_key, sizeof c->secret_key);
    } else if (zmq_curve_keypair(c->public_key, c->secret_key) != 0) {
        return -s_errno_from_zmq(errno);
    }
    c->curve = true;
    return 0;
}

TITAN_API titan_client *titan_client_new(const char *endpoint, const titan_client_opts *opts)
{
    titan_client_opts o;
    titan_client *c = NULL;
    int rc = -ENOMEM;
    titan_client_opts_init(&o);
    if (opts) o = *opts;
    if (!endpoint || !*endpoint || strlen(endpoint) >= S_MAX_ENDPOINT || !s_tcp_port_ok(endpoint) ||
        o.timeout_ms <= 0 || o.retries < 0 || o.heartbeat_ms < 0 || o.heartbeat_ms > S_MAX_HEARTBEAT_MS) {
        rc = -EINVAL;
        goto fail;
    }
    c = calloc(1, sizeof *c);
    if (!c) goto fail;
    pthread_mutex_init(&c->lent.mu, NULL);
    pthread_cond_init(&c->lent.cv, NULL);
    c->timeout_ms = o.timeout_ms;
    c->retries = o.retries;
    c->heartbeat_ms = o.heartbeat_ms;
    if (o.identity) {
        size_t n = strlen(o.identity);
        bool ok = n >= 1 && n <= TITAN_CLIENT_IDENTITY_MAX;
        for (size_t i = 0; ok && i < n; i++) ok = o.identity[i] > ' ' && o.identity[i] < 0x7f;
        if (!ok) {
            rc = -EINVAL;
            goto fail;
        }
        memcpy(c->identity, o.identity, n + 1);
        c->identity_len = n;
        /* Another client object may have used this identity before (a restarted process): start the
         * tags somewhere else than its, so that its late replies cannot match. */
        if (getrandom(&c->tag, sizeof c->tag, 0) != (ssize_t)sizeof c->tag)
            c->tag = (unsigned)titan_clock_mono_ms64();
    }
    if ((rc = s_setup_curve(c, &o)) != 0) goto fail;
    rc = -ENOMEM;
    c->endpoint = strdup(endpoint);
    if (!c->endpoint) goto fail;
    if (o.zmq_ctx) {
        c->ctx = o.zmq_ctx;
    } else {
        c->ctx = zmq_ctx_new();
        if (!c->ctx) {
            rc = -s_errno_from_zmq(errno ? errno : ENOMEM);
            goto fail;
        }
        c->own_ctx = true;
    }
    /* Connecting now validates the endpoint; the TCP connection itself is made in the background. */
    rc = s_open_socket(c);
    if (rc) goto fail;
    return c;
fail:
    titan_client_destroy(&c);
    errno = -rc;
    return NULL;
}

TITAN_API void titan_client_destroy(titan_client **c)
{
    if (!c || !*c) return;
    titan_client *p = *c;
    s_close_socket(p);
    if (p->own_ctx && p->ctx) {
        /* Every socket of this context is closed with linger 0, so termination cannot block. */
        while (zmq_ctx_term(p->ctx) != 0 && errno == EINTR) {
        }
    }
    free(p->endpoint);
    explicit_bzero(p->secret_key, sizeof p->secret_key);
    pthread_cond_destroy(&p->lent.cv);
    pthread_mutex_destroy(&p->lent.mu);
    free(p);
    *c = NULL;
}

TITAN_API int titan_client_call(titan_client *c, const char *header_json, const titan_frame *frames,
                                size_t nframes, titan_reply **reply)
{
    if (!c) return -EINVAL;
    s_reset_last(c);
    if (!header_json || !*header_json || !reply || (nframes && !frames)) goto inval;
    for (size_t i = 0; i < nframes; i++)
        if (!frames[i].data && frames[i].size) goto inval;
    return s_call(c, header_json, frames, nframes, reply);
inval:
    s_set_error(c, "local", "invalid argument");
    return -EINVAL;
}

/* Parses the header of `r` into a JSON object in *root (the caller's). Returns 0,
 * -EREMOTEIO when the worker answered an error (last error set from it), -EPROTO, -ENOMEM. */
static int s_reply_object(titan_client *c, const titan_reply *r, json_t **root)
{
    json_error_t jerr;
    json_t *j = json_loads(r->header, JSON_REJECT_DUPLICATES, &jerr);
    if (!j || !json_is_object(j)) {
        s_set_error(c, "protocol", "reply from %s is not a JSON object%s%s", c->endpoint, j ? "" : ": ",
                    j ? "" : jerr.text);
        json_decref(j);
        return -EPROTO;
    }
    json_t *err = json_object_get(j, "error");
    if (err) {
        const char *code = json_string_value(json_object_get(j, "code"));
        if (!json_is_string(err)) {
            s_set_error(c, "protocol", "reply from %s has a non-string \"error\"", c->endpoint);
            json_decref(j);
            return -EPROTO;
        }
        /* Every error carries a code in protocol v1; "remote" marks a worker that forgot it. */
        s_set_error(c, code && *code ? code : "remote", "%s", json_string_value(err));
        json_decref(j);
        return -EREMOTEIO;
    }
    *root = j;
    return 0;
}

/* Sends a header-only typed request and parses the reply. Same returns as s_reply_object,
 * plus those of s_call. On 0, *root and *reply are the caller's. */
static int s_typed_call(titan_client *c, const char *header, const titan_frame *frames, size_t nframes,
                        titan_reply **reply, json_t **root)
{
    titan_reply *r = NULL;
    int rc = s_call(c, header, frames, nframes, &r);
    if (rc) return rc;
    rc = s_reply_object(c, r, root);
    if (rc) {
        titan_reply_destroy(&r);
        return rc;
    }
    *reply = r;
    return 0;
}

/* Sets a protocol error about `what` in the reply and returns -EPROTO. */
static int s_proto(titan_client *c, const char *what)
{
    s_set_error(c, "protocol", "malformed reply from %s: %s", c->endpoint, what);
    return -EPROTO;
}

TITAN_API int titan_client_ping(titan_client *c, char **device)
{
    if (!c) return -EINVAL;
    s_reset_last(c);
    titan_reply *r = NULL;
    json_t *root = NULL;
    char *dev = NULL;
    int rc = s_typed_call(c, "{\"op\":\"ping\"}", NULL, 0, &r, &root);
    if (rc) return rc;
    const char *status = json_string_value(json_object_get(root, "status"));
    const char *gpu = json_string_value(json_object_get(root, "gpu"));
    if (!status || strcmp(status, "ok") != 0) {
        rc = s_proto(c, "ping reply lacks \"status\":\"ok\"");
        goto out;
    }
    if (device) {
        if (!gpu) {
            rc = s_proto(c, "ping reply lacks a string \"gpu\"");
            goto out;
        }
        dev = strdup(gpu);
        if (!dev) {
            s_set_error(c, "local", "out of memory");
            rc = -ENOMEM;
            goto out;
        }
        *device = dev;
    }
out:
    json_decref(root);
    titan_reply_destroy(&r);
    return rc;
}

TITAN_API int titan_client_gpu_info(titan_client *c, titan_gpu_info *info, char **raw_json)
{
    if (!c) return -EINVAL;
    s_reset_last(c);
    if (!info) {
        s_set_error(c, "local", "invalid argument");
        return -EINVAL;
    }
    titan_reply *r = NULL;
    json_t *root = NULL;
    titan_gpu_info gi;
    memset(&gi, 0, sizeof gi);
    int rc = s_typed_call(c, "{\"op\":\"gpu_info\"}", NULL, 0, &r, &root);
    if (rc) return rc;

    json_t *name = json_object_get(root, "name");
    json_t *mem = json_object_get(root, "total_memory_gb");
    json_t *mpc = json_object_get(root, "multi_processor_count");
    json_t *cap = json_object_get(root, "cuda_capability");
    json_t *backend = json_object_get(root, "backend");
    if (!json_is_string(name)) {
        rc = s_proto(c, "gpu_info reply lacks a string \"name\"");
        goto out;
    }
    if (!json_is_number(mem) || !isfinite(json_number_value(mem)) || json_number_value(mem) < 0) {
        rc = s_proto(c, "gpu_info reply lacks a number \"total_memory_gb\" >= 0");
        goto out;
    }
    if (!json_is_integer(mpc) || json_integer_value(mpc) < 0 || json_integer_value(mpc) > INT_MAX) {
        rc = s_proto(c, "gpu_info reply lacks an integer \"multi_processor_count\" >= 0");
        goto out;
    }
    if (cap && !json_is_null(cap) && !json_is_string(cap)) {
        rc = s_proto(c, "gpu_info reply has a \"cuda_capability\" that is neither null nor a string");
        goto out;
    }
    if (backend && !json_is_string(backend)) {
        rc = s_proto(c, "gpu_info reply has a non-string \"backend\"");
        goto out;
    }
    snprintf(gi.name, sizeof gi.name, "%s", json_string_value(name));
    gi.total_memory_gb = json_number_value(mem);
    gi.multi_processor_count = (int)json_integer_value(mpc);
    snprintf(gi.cuda_capability, sizeof gi.cuda_capability, "%s",
             json_is_string(cap) ? json_string_value(cap) : "");
    snprintf(gi.backend, sizeof gi.backend, "%s", backend ? json_string_value(backend) : "");
    if (raw_json) {
        char *raw = strdup(r->header);
        if (!raw) {
            s_set_error(c, "local", "out of memory");
            rc = -ENOMEM;
            goto out;
        }
        *raw_json = raw;
    }
    *info = gi;
out:
    json_decref(root);
    titan_reply_destroy(&r);
    return rc;
}

/* Returns true when `v` is a JSON integer equal to `want`. */
static bool s_json_int_is(const json_t *v, size_t want)
{
    return json_is_integer(v) && json_integer_value(v) >= 0 &&
           (uint64_t)json_integer_value(v) == (uint64_t)want;
}

TITAN_API int titan_client_matmul(titan_client *c, titan_dtype dt, size_t m, size_t k, size_t n,
                                  const void *a, const void *b, void **out)
{
    if (!c) return -EINVAL;
    s_reset_last(c);
    const char *dname = titan_dtype_name(dt);
    size_t esize = titan_dtype_size(dt);
    size_t na = 0, nb = 0, nc = 0;
    int rc = -EINVAL;
    if (dname && a && b && out && m <= INT64_MAX && k <= INT64_MAX && n <= INT64_MAX) {
        int64_t sa[2] = {(int64_t)m, (int64_t)k}, sb[2] = {(int64_t)k, (int64_t)n};
        int64_t sc[2] = {(int64_t)m, (int64_t)n};
        rc = titan_shape_elems(dt, sa, 2, &na);
        if (rc == 0) rc = titan_shape_elems(dt, sb, 2, &nb);
        if (rc == 0) rc = titan_shape_elems(dt, sc, 2, &nc);
    }
    if (rc) {
        s_set_error(c, "local", rc == -EOVERFLOW ? "matrix sizes overflow" : "invalid argument");
        return rc;
    }

    char header[320];
    snprintf(header, sizeof header,
             "{\"op\":\"matrix_multiply\",\"a\":{\"dtype\":\"%s\",\"shape\":[%zu,%zu],\"frame\":1},"
             "\"b\":{\"dtype\":\"%s\",\"shape\":[%zu,%zu],\"frame\":2}}",
             dname, m, k, dname, k, n);
    titan_frame frames[2] = {{a, na * esize}, {b, nb * esize}};
    titan_reply *r = NULL;
    json_t *root = NULL;
    rc = s_typed_call(c, header, frames, 2, &r, &root);
    if (rc) return rc;

    json_t *res = json_object_get(root, "result");
    json_t *shape = json_object_get(res, "shape");
    const char *rdt = json_string_value(json_object_get(res, "dtype"));
    size_t size = 0;
    const void *data = titan_reply_frame(r, 0, &size);
    if (!json_is_object(res)) {
        rc = s_proto(c, "matrix_multiply reply lacks a \"result\" tensor descriptor");
    } else if (!rdt || strcmp(rdt, dname) != 0) {
        rc = s_proto(c, "result dtype differs from the request's");
    } else if (!json_is_array(shape) || json_array_size(shape) != 2 ||
               !s_json_int_is(json_array_get(shape, 0), m) || !s_json_int_is(json_array_get(shape, 1), n)) {
        rc = s_proto(c, "result shape is not [m, n]");
    } else if (!s_json_int_is(json_object_get(res, "frame"), 1)) {
        rc = s_proto(c, "result is not in frame 1");
    } else if (!data || size != nc * esize) {
        rc = s_proto(c, "result frame is missing or its size is not m*n*element size");
    }
    if (rc) goto out;
    void *dst = *out ? *out : malloc(size);
    if (!dst) {
        s_set_error(c, "local", "out of memory for a %zu-byte result", size);
        rc = -ENOMEM;
        goto out;
    }
    memcpy(dst, data, size);
    *out = dst;
out:
    json_decref(root);
    titan_reply_destroy(&r);
    return rc;
}

/* A handle goes into a JSON header as it is: only the characters handles are made of. */
static bool s_ref_ok(const char *ref)
{
    size_t n = ref ? strlen(ref) : 0;
    if (n == 0 || n >= TITAN_TENSOR_REF_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = ref[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '-' ||
              ch == '_'))
            return false;
    }
    return true;
}

/* Copies the reply's handle (`obj`."ref") into ref. Returns 0 or -EPROTO. */
static int s_copy_ref(titan_client *c, json_t *obj, char ref[TITAN_TENSOR_REF_MAX])
{
    const char *h = json_string_value(json_object_get(obj, "ref"));
    if (!s_ref_ok(h)) return s_proto(c, "the reply lacks a valid tensor handle \"ref\"");
    snprintf(ref, TITAN_TENSOR_REF_MAX, "%s", h);
    return 0;
}

TITAN_API int titan_client_tensor_put(titan_client *c, titan_dtype dt, int rank, const int64_t *shape,
                                      const void *data, char ref[TITAN_TENSOR_REF_MAX])
{
    if (!c) return -EINVAL;
    s_reset_last(c);
    const char *dname = titan_dtype_name(dt);
    size_t elems = 0;
    if (!dname || !shape || !data || !ref || titan_shape_elems(dt, shape, rank, &elems) != 0) {
        s_set_error(c, "local", "invalid argument: a dtype, a shape of 1 to %d dimensions, data and ref are needed",
                    TITAN_MAX_RANK);
        return -EINVAL;
    }
    char header[512];
    int o = snprintf(header, sizeof header, "{\"op\":\"tensor_put\",\"tensor\":{\"dtype\":\"%s\",\"shape\":[", dname);
    for (int i = 0; i < rank; i++) o += snprintf(header + o, sizeof header - (size_t)o, "%s%lld", i ? "," : "",
                                                 (long long)shape[i]);
    snprintf(header + o, sizeof header - (size_t)o, "],\"frame\":1}}");
    titan_frame frame = {data, elems * titan_dtype_size(dt)};
    titan_reply *r = NULL;
    json_t *root = NULL;
    int rc = s_typed_call(c, header, &frame, 1, &r, &root);
    if (rc) return rc;
    rc = s_copy_ref(c, root, ref);
    json_decref(root);
    titan_reply_destroy(&r);
    return rc;
}

/* Sends {"op": op, "ref": ref} and parses the reply (the typed calls' returns); ref is checked first. */
static int s_ref_call(titan_client *c, const char *op, const char *ref, titan_reply **r, json_t **root)
{
    if (!s_ref_ok(ref)) {
        s_set_error(c, "local", "invalid argument: not a tensor handle");
        return -EINVAL;
    }
    char header[160];
    snprintf(header, sizeof header, "{\"op\":\"%s\",\"ref\":\"%s\"}", op, ref);
    return s_typed_call(c, header, NULL, 0, r, root);
}

TITAN_API int titan_client_tensor_get(titan_client *c, const char *ref, titan_dtype *dt, int *rank,
                                      int64_t shape[TITAN_MAX_RANK], void **data, size_t *bytes)
{
    if (!c) return -EINVAL;
    s_reset_last(c);
    if (!data) {
        s_set_error(c, "local", "invalid argument: a data pointer is needed");
        return -EINVAL;
    }
    titan_reply *r = NULL;
    json_t *root = NULL;
    int rc = s_ref_call(c, "tensor_get", ref, &r, &root);
    if (rc) return rc;
    json_t *res = json_object_get(root, "result");
    json_t *jshape = json_object_get(res, "shape");
    titan_dtype rdt = titan_dtype_from_name(json_string_value(json_object_get(res, "dtype")));
    int64_t sh[TITAN_MAX_RANK];
    size_t n = json_array_size(jshape), elems = 0, size = 0;
    const void *frame = titan_reply_frame(r, 0, &size);
    for (size_t i = 0; i < n && i < TITAN_MAX_RANK; i++) sh[i] = json_integer_value(json_array_get(jshape, i));
    if (rdt == TITAN_DTYPE_INVALID || n < 1 || n > TITAN_MAX_RANK || titan_shape_elems(rdt, sh, (int)n, &elems) ||
        !frame || size != elems * titan_dtype_size(rdt)) {
        rc = s_proto(c, "tensor_get's reply is not one tensor descriptor with its frame");
        goto out;
    }
    void *copy = malloc(size ? size : 1);
    if (!copy) {
        s_set_error(c, "local", "out of memory for a %zu-byte tensor", size);
        rc = -ENOMEM;
        goto out;
    }
    memcpy(copy, frame, size);
    *data = copy;
    if (dt) *dt = rdt;
    if (rank) *rank = (int)n;
    if (shape) memcpy(shape, sh, n * sizeof(int64_t));
    if (bytes) *bytes = size;
out:
    json_decref(root);
    titan_reply_destroy(&r);
    return rc;
}

TITAN_API int titan_client_tensor_free(titan_client *c, const char *ref)
{
    if (!c) return -EINVAL;
    s_reset_last(c);
    titan_reply *r = NULL;
    json_t *root = NULL;
    int rc = s_ref_call(c, "tensor_free", ref, &r, &root);
    if (rc) return rc;
    json_decref(root);
    titan_reply_destroy(&r);
    return 0;
}

TITAN_API int titan_client_matmul_resident(titan_client *c, const char *a_ref, const char *b_ref,
                                           char c_ref[TITAN_TENSOR_REF_MAX])
{
    if (!c) return -EINVAL;
    s_reset_last(c);
    if (!s_ref_ok(a_ref) || !s_ref_ok(b_ref) || !c_ref) {
        s_set_error(c, "local", "invalid argument: two tensor handles and room for the result's are needed");
        return -EINVAL;
    }
    char header[256];
    snprintf(header, sizeof header,
             "{\"op\":\"matrix_multiply\",\"a\":{\"ref\":\"%s\"},\"b\":{\"ref\":\"%s\"},\"keep\":true}", a_ref, b_ref);
    titan_reply *r = NULL;
    json_t *root = NULL;
    int rc = s_typed_call(c, header, NULL, 0, &r, &root);
    if (rc) return rc;
    rc = s_copy_ref(c, json_object_get(root, "result"), c_ref);
    json_decref(root);
    titan_reply_destroy(&r);
    return rc;
}

TITAN_API const char *titan_client_last_error(const titan_client *c)
{
    return c ? c->last_error : "";
}

TITAN_API const char *titan_client_last_code(const titan_client *c)
{
    return c ? c->last_code : "";
}

TITAN_API int titan_client_last_retries(const titan_client *c)
{
    return c ? c->last_retries : 0;
}

TITAN_API const char *titan_reply_header(const titan_reply *r)
{
    return r ? r->header : NULL;
}

TITAN_API size_t titan_reply_frame_count(const titan_reply *r)
{
    return r ? r->nframes : 0;
}

TITAN_API const void *titan_reply_frame(const titan_reply *r, size_t i, size_t *size)
{
    if (!r || i >= r->nframes) return NULL;
    /* zmq_msg_data/size take a non-const message but do not modify it. */
    zmq_msg_t *msg = (zmq_msg_t *)&r->frames[i];
    if (size) *size = zmq_msg_size(msg);
    return zmq_msg_data(msg);
}

TITAN_API void titan_reply_destroy(titan_reply **r)
{
    if (!r || !*r) return;
    titan_reply *p = *r;
    for (size_t i = 0; i < p->nframes; i++)
        zmq_msg_close(&p->frames[i]);
    free(p->frames);
    free(p->header);
    free(p);
    *r = NULL;
}

/* Frees a buffer adopted by titan_reply_adopt once ZeroMQ's message lets it go. */
static void s_adopted_free(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Hands a pooled buffer adopted by titan_reply_adopt_pooled back to the host buffer pool. */
static void s_adopted_pool_free(void *data, void *hint)
{
    (void)hint;
    titan_hostbuf_free(data);
}

/* Frees data[i] as its owner asks and sets it to NULL. */
static void s_adopted_drop(void **data, const bool *pooled, size_t i)
{
    if (pooled && pooled[i])
        titan_hostbuf_free(data[i]);
    else
        free(data[i]);
    data[i] = NULL;
}

int titan_reply_adopt(char **header, void **data, const size_t *sizes, size_t n, titan_reply **out)
{
    return titan_reply_adopt_pooled(header, data, sizes, NULL, n, out);
}

int titan_reply_adopt_pooled(char **header, void **data, const size_t *sizes, const bool *pooled, size_t n,
                             titan_reply **out)
{
    int rc = -EINVAL;
    titan_reply *r = NULL;
    if (!header || !*header || !out || (n && (!data || !sizes)) || n > S_MAX_REPLY_FRAMES) goto out;
    rc = -ENOMEM;
    if (!(r = calloc(1, sizeof *r)) || (n && !(r->frames = calloc(n, sizeof *r->frames)))) goto out;
    r->cap = n;
    r->header = *header;
    *header = NULL;
    for (; r->nframes < n; r->nframes++) {
        size_t i = r->nframes;
        /* zmq_msg_init_data wants data for a non-empty message only; an empty one owns nothing. */
        if (sizes[i] == 0 || !data[i]) {
            zmq_msg_init(&r->frames[i]);
            s_adopted_drop(data, pooled, i);
        } else if (zmq_msg_init_data(&r->frames[i], data[i], sizes[i],
                                     pooled && pooled[i] ? s_adopted_pool_free : s_adopted_free, NULL) != 0) {
            goto out;
        }
        data[i] = NULL;
    }
    *out = r;
    r = NULL;
    rc = 0;
out:
    titan_reply_destroy(&r);
    if (header) {
        free(*header);
        *header = NULL;
    }
    for (size_t i = 0; data && i < n; i++)
        s_adopted_drop(data, pooled, i);
    return rc;
}
