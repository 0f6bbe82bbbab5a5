/* router.c - routes requests across the backends of compute_backends.yaml (see include/titan/router.h).
 *
 * Each backend has a circuit breaker: `breaker_failures` consecutive failures (a timeout, an
 * unreachable worker, a local device that cannot open) open it for a cool-down; the first request
 * after the cool-down probes it with a ping (half-open) and closes the breaker on an answer, or opens
 * it again for twice as long (up to breaker_max_cooldown_ms). "busy" is not a failure: the backend
 * is alive and full, so the request overflows to the next one.
 *
 * One mutex guards all the state; calls run outside it. Remote calls take a connection from the
 * backend's pool (made on demand, kept up to POOL_MAX), with no retries of their own: the router's
 * failover replaces them. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <zmq.h>

#include "backends_conf.h"
#include "clock.h"
#include "engine.h"
#include "jsonscan.h"
#include "titan/router.h"

#define POOL_MAX 8
#define LAT_RING 128
#define PROBE_TIMEOUT_MS 1000 /* a half-open probe waits at most this (or the backend's timeout) */
#define SPLIT_BLOCK 64        /* split points fall on multiples of this many rows */

typedef struct {
    titan_conf_backend c;
    titan_engine *engine; /* local: opened on first use (and again by a probe after a failure) */
    titan_client *pool[POOL_MAX];
    int npool;
    titan_breaker_state state;
    int failures_in_row;
    int cooldown_ms;   /* the current open period */
    double open_until; /* monotonic ms */
    bool probing;      /* a half-open probe is under way */
    int inflight;
    uint64_t requests, ok, busy, failures, probes;
    double lat[LAT_RING];
    int nlat, latpos;
    double gflops;
    char last_error[256];
    int64_t last_error_ms;
} s_backend;

struct titan_router {
    pthread_mutex_t lock;
    void *zmq_ctx;
    bool own_ctx;
    s_backend *b;
    int n;
    int order[TITAN_CONF_MAX_BACKENDS]; /* by priority, then file order */
    int breaker_failures, cooldown_ms, max_cooldown_ms;
    char *warnings;
};

/* ---- construction ---- */

TITAN_API void titan_router_opts_init(titan_router_opts *opts)
{
    if (opts) memset(opts, 0, sizeof(*opts));
}

static titan_router *s_new(titan_conf *conf, const titan_router_opts *opts, char *err, size_t errcap)
{
    titan_router *r = calloc(1, sizeof(*r));
    if (!r) goto nomem;
    r->b = calloc((size_t)conf->n, sizeof(*r->b));
    size_t wlen = 1;
    int nw = conf->nwarnings < TITAN_CONF_MAX_WARNINGS ? conf->nwarnings : TITAN_CONF_MAX_WARNINGS;
    for (int i = 0; i < nw; i++)
        wlen += strlen(conf->warnings[i]) + 1;
    r->warnings = calloc(1, wlen);
    if (!r->b || !r->warnings) goto nomem;
    for (int i = 0; i < nw; i++) {
        strcat(r->warnings, conf->warnings[i]);
        strcat(r->warnings, "\n");
    }
    r->n = conf->n;
    r->breaker_failures = conf->breaker_failures;
    r->cooldown_ms = conf->breaker_cooldown_ms;
    r->max_cooldown_ms = conf->breaker_max_cooldown_ms;
    for (int i = 0; i < r->n; i++) {
        r->b[i].c = conf->backends[i];
        r->b[i].cooldown_ms = r->cooldown_ms;
        r->order[i] = i;
    }
    /* insertion sort: stable, at most 32 entries */
    for (int i = 1; i < r->n; i++) {
        int v = r->order[i], j = i - 1;
        while (j >= 0 && r->b[r->order[j]].c.priority > r->b[v].c.priority) {
            r->order[j + 1] = r->order[j];
            j--;
        }
        r->order[j + 1] = v;
    }
    if (opts && opts->zmq_ctx) {
        r->zmq_ctx = opts->zmq_ctx;
    } else {
        r->zmq_ctx = zmq_ctx_new();
        if (!r->zmq_ctx) goto nomem;
        r->own_ctx = true;
    }
    if (pthread_mutex_init(&r->lock, NULL) != 0) {
        if (r->own_ctx) zmq_ctx_term(r->zmq_ctx);
        goto nomem;
    }
    free(conf);
    return r;
nomem:
    if (r) {
        free(r->b);
        free(r->warnings);
        free(r);
    }
    free(conf);
    snprintf(err, errcap, "out of memory");
    errno = ENOMEM;
    return NULL;
}

/* Loads the configuration from the file `path`, or from the text `yaml` (named `name` in messages). */
static titan_router *s_new_from(const char *path, const char *yaml, const char *name, const titan_router_opts *opts,
                                char *err, size_t errcap)
{
    char dummy[8];
    if (!err || !errcap) err = dummy, errcap = sizeof(dummy);
    err[0] = '\0';
    if (!path && !yaml) {
        snprintf(err, errcap, name ? "no configuration text given" : "no configuration file given");
        errno = EINVAL;
        return NULL;
    }
    titan_conf *conf = calloc(1, sizeof(*conf));
    if (!conf) {
        snprintf(err, errcap, "out of memory");
        errno = ENOMEM;
        return NULL;
    }
    int rc = path ? titan_conf_load_file(path, conf, err, errcap)
                  : titan_conf_load_string(yaml, strlen(yaml), name, NULL, conf, err, errcap);
    if (rc) {
        free(conf);
        errno = -rc;
        return NULL;
    }
    return s_new(conf, opts, err, errcap);
}

TITAN_API titan_router *titan_router_new_from_file(const char *path, const titan_router_opts *opts, char *err,
                                                   size_t errcap)
{
    return s_new_from(path, NULL, NULL, opts, err, errcap);
}

TITAN_API titan_router *titan_router_new_from_string(const char *yaml, const char *name,
                                                     const titan_router_opts *opts, char *err, size_t errcap)
{
    return s_new_from(NULL, yaml, name ? name : "(string)", opts, err, errcap);
}

TITAN_API void titan_router_destroy(titan_router **rp)
{
    if (!rp || !*rp) return;
    titan_router *r = *rp;
    for (int i = 0; i < r->n; i++) {
        for (int k = 0; k < r->b[i].npool; k++)
            titan_client_destroy(&r->b[i].pool[k]);
        titan_engine_destroy(&r->b[i].engine);
    }
    if (r->own_ctx) zmq_ctx_term(r->zmq_ctx);
    pthread_mutex_destroy(&r->lock);
    free(r->b);
    free(r->warnings);
    free(r);
    *rp = NULL;
}

TITAN_API const char *titan_router_warnings(const titan_router *r)
{
    return r && r->warnings ? r->warnings : "";
}

/* ---- capabilities ---- */

static bool s_offers(const s_backend *b, const char *cap)
{
    if (!cap || !*cap || !b->c.caps_given) return true;
    for (int i = 0; i < b->c.ncaps; i++) {
        if (strcmp(b->c.caps[i], cap) == 0) return true;
        if (strcmp(cap, "inference") == 0 && strcmp(b->c.caps[i], "legacy_inference") == 0) return true;
    }
    return false;
}

/* The capability an op needs: matrix_ops, inference, or none (NULL). */
static const char *s_op_capability(const char *header, char *op, size_t opcap)
{
    const char *v = NULL;
    size_t n = 0;
    op[0] = '\0';
    if (titan_json_find_member(header, strlen(header), "op", SIZE_MAX, &v, &n) != 0 || n < 2 || v[0] != '"')
        return NULL;
    snprintf(op, opcap, "%.*s", (int)(n - 2 < opcap - 1 ? n - 2 : opcap - 1), v + 1);
    if (strcmp(op, "matrix_multiply") == 0) return "matrix_ops";
    if (strcmp(op, "inference") == 0) return "inference";
    return NULL;
}

/* ---- state (all under r->lock) ---- */

static void s_set_error(s_backend *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_set_error(s_backend *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->last_error, sizeof(b->last_error), fmt, ap);
    va_end(ap);
    b->last_error_ms = titan_clock_wall_ms();
}

static void s_latency(s_backend *b, double ms)
{
    b->lat[b->latpos] = ms;
    b->latpos = (b->latpos + 1) % LAT_RING;
    if (b->nlat < LAT_RING) b->nlat++;
}

static void s_succeeded(titan_router *r, s_backend *b)
{
    b->failures_in_row = 0;
    b->state = TITAN_BREAKER_CLOSED;
    b->cooldown_ms = r->cooldown_ms;
}

/* A failure: opens the breaker after breaker_failures in a row; a failed probe reopens it for longer. */
static void s_failed(titan_router *r, s_backend *b, bool probe)
{
    b->failures++;
    b->failures_in_row++;
    if (probe) {
        int next = b->cooldown_ms * 2;
        b->cooldown_ms = next > r->max_cooldown_ms ? r->max_cooldown_ms : next;
    }
    if (probe || b->failures_in_row >= r->breaker_failures) {
        b->state = TITAN_BREAKER_OPEN;
        b->open_until = titan_clock_mono_ms() + b->cooldown_ms;
    }
}

/* ---- talking to one backend (outside the lock) ---- */

/* Opens the local engine if needed. Returns 0 or -errno with the reason in why. */
static int s_engine(titan_router *r, s_backend *b, titan_engine **out, char *why, size_t cap)
{
    pthread_mutex_lock(&r->lock);
    titan_engine *e = b->engine;
    pthread_mutex_unlock(&r->lock);
    if (e) {
        *out = e;
        return 0;
    }
    int rc = titan_engine_new(b->c.device, 0, &e, why, cap);
    if (rc) return rc;
    pthread_mutex_lock(&r->lock);
    if (b->engine) { /* another thread opened it meanwhile */
        titan_engine_destroy(&e);
    } else {
        b->engine = e;
    }
    *out = b->engine;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static titan_client *s_client_take(titan_router *r, s_backend *b, int timeout_ms)
{
    titan_client *c = NULL;
    if (timeout_ms == b->c.timeout_ms) {
        pthread_mutex_lock(&r->lock);
        if (b->npool > 0) c = b->pool[--b->npool];
        pthread_mutex_unlock(&r->lock);
        if (c) return c;
    }
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = timeout_ms;
    o.retries = 0;
    o.zmq_ctx = r->zmq_ctx;
    if (b->c.server_key[0]) {
        o.server_key = b->c.server_key;
        if (b->c.client_secret[0]) {
            o.public_key = b->c.client_public;
            o.secret_key = b->c.client_secret;
        }
    }
    return titan_client_new(b->c.endpoint, &o);
}

/* Puts a healthy connection back (or closes it when the pool is full or it came from a probe). */
static void s_client_give(titan_router *r, s_backend *b, titan_client **c, bool keep)
{
    if (!*c) return;
    if (keep) {
        pthread_mutex_lock(&r->lock);
        if (b->npool < POOL_MAX) {
            b->pool[b->npool++] = *c;
            *c = NULL;
        }
        pthread_mutex_unlock(&r->lock);
    }
    titan_client_destroy(c);
}

/* The "code" of an error reply, into code[cap] ("" for a result). */
static void s_reply_code(const titan_reply *rep, char *code, size_t cap, char *msg, size_t msgcap)
{
    code[0] = '\0';
    if (msg) msg[0] = '\0';
    const char *h = titan_reply_header(rep);
    const char *v = NULL;
    size_t n = 0;
    if (!h || titan_json_find_member(h, strlen(h), "error", SIZE_MAX, &v, &n) != 0) return;
    json_t *root = json_loads(h, 0, NULL);
    const char *c = json_string_value(json_object_get(root, "code"));
    const char *e = json_string_value(json_object_get(root, "error"));
    snprintf(code, cap, "%s", c ? c : "error");
    if (msg) snprintf(msg, msgcap, "%s", e ? e : "error");
    json_decref(root);
}

typedef enum { R_ANSWERED, R_UNSUPPORTED, R_BUSY, R_FAILED } s_result;

/* Sends one request to backend b. R_ANSWERED: *reply is set (a result or a final error answer);
 * R_BUSY: it answered busy; R_FAILED: timeout, unreachable, local failure (why says it). */
static s_result s_send(titan_router *r, s_backend *b, const char *header, const titan_frame *frames,
                       size_t nframes, titan_reply **reply, char *why, size_t whycap, double *ms)
{
    double t0 = titan_clock_mono_ms();
    int rc;
    titan_reply *rep = NULL;
    if (b->c.type == TITAN_CONF_LOCAL) {
        titan_engine *e = NULL;
        rc = s_engine(r, b, &e, why, whycap);
        if (rc) return R_FAILED;
        rc = titan_engine_call(e, header, frames, nframes, &rep);
        if (rc) {
            snprintf(why, whycap, "local %.100s: %.100s", b->c.device, strerror(-rc));
            return R_FAILED;
        }
    } else {
        titan_client *c = s_client_take(r, b, b->c.timeout_ms);
        if (!c) {
            snprintf(why, whycap, "cannot open a connection to %.100s: %.100s", b->c.endpoint,
                     strerror(errno));
            return R_FAILED;
        }
        rc = titan_client_call(c, header, frames, nframes, &rep);
        if (rc) {
            if (rc == -ETIMEDOUT)
                snprintf(why, whycap, "no answer from %.100s within %d ms", b->c.endpoint, b->c.timeout_ms);
            else
                snprintf(why, whycap, "%.100s: %.100s", b->c.endpoint, strerror(-rc));
            titan_client_destroy(&c);
            return R_FAILED;
        }
        s_client_give(r, b, &c, true);
    }
    *ms = titan_clock_mono_ms() - t0;
    char code[32];
    s_reply_code(rep, code, sizeof(code), why, whycap);
    if (strcmp(code, "busy") == 0) {
        titan_reply_destroy(&rep);
        return R_BUSY;
    }
    if (strcmp(code, "shutting_down") == 0) { /* the worker is going away: as unreachable */
        titan_reply_destroy(&rep);
        return R_FAILED;
    }
    *reply = rep;
    /* Another backend may well have what this one lacks (a model, a device): try it first. */
    return strcmp(code, "unsupported") == 0 ? R_UNSUPPORTED : R_ANSWERED;
}

/* Pings backend b (a half-open probe or titan_router_probe). Returns true when it answered. */
static bool s_ping(titan_router *r, s_backend *b, char *why, size_t whycap, double *ms)
{
    double t0 = titan_clock_mono_ms();
    if (b->c.type == TITAN_CONF_LOCAL) {
        titan_engine *e = NULL;
        if (s_engine(r, b, &e, why, whycap) != 0) return false;
        titan_reply *rep = NULL;
        int rc = titan_engine_call(e, "{\"op\":\"ping\"}", NULL, 0, &rep);
        titan_reply_destroy(&rep);
        if (rc) snprintf(why, whycap, "local %.100s: %.100s", b->c.device, strerror(-rc));
        *ms = titan_clock_mono_ms() - t0;
        return rc == 0;
    }
    int tmo = b->c.timeout_ms < PROBE_TIMEOUT_MS ? b->c.timeout_ms : PROBE_TIMEOUT_MS;
    titan_client *c = s_client_take(r, b, tmo);
    if (!c) {
        snprintf(why, whycap, "cannot open a connection to %.100s: %.100s", b->c.endpoint, strerror(errno));
        return false;
    }
    int rc = titan_client_ping(c, NULL);
    *ms = titan_clock_mono_ms() - t0;
    if (rc == 0) {
        titan_client_destroy(&c);
        return true;
    }
    if (rc == -EREMOTEIO) {
        snprintf(why, whycap, "%.100s answered the ping: %.100s", b->c.endpoint, titan_client_last_error(c));
        bool alive = strcmp(titan_client_last_code(c), "shutting_down") != 0;
        titan_client_destroy(&c);
        return alive; /* it answered: alive, even if it refused a ping */
    }
    if (rc == -ETIMEDOUT)
        snprintf(why, whycap, "no answer to a ping from %.100s within %d ms", b->c.endpoint, tmo);
    else
        snprintf(why, whycap, "ping to %.100s: %.100s", b->c.endpoint, strerror(-rc));
    titan_client_destroy(&c);
    return false;
}

/* Probes b and records the outcome. */
static bool s_probe(titan_router *r, s_backend *b)
{
    char why[256] = "";
    double ms = 0;
    bool ok = s_ping(r, b, why, sizeof(why), &ms);
    pthread_mutex_lock(&r->lock);
    b->probes++;
    if (ok) {
        s_latency(b, ms);
        s_succeeded(r, b);
    } else {
        s_set_error(b, "%s", why);
        s_failed(r, b, true);
    }
    pthread_mutex_unlock(&r->lock);
    return ok;
}

/* ---- routing ---- */

enum { PICK_SKIP_FAILED = -1, PICK_SKIP_BUSY = -2, PICK_PROBE = -3, PICK_OK = 0 };

/* Decides (under the lock) whether backend b can take a request now; PICK_OK reserves a slot. */
static int s_pick(titan_router *r, s_backend *b)
{
    if (b->state == TITAN_BREAKER_OPEN) {
        if (titan_clock_mono_ms() < b->open_until) return PICK_SKIP_FAILED;
        b->state = TITAN_BREAKER_HALF_OPEN;
    }
    if (b->state == TITAN_BREAKER_HALF_OPEN) {
        if (b->probing) return PICK_SKIP_FAILED; /* another caller is probing it */
        b->probing = true;
        return PICK_PROBE;
    }
    if (b->c.max_inflight > 0 && b->inflight >= b->c.max_inflight) return PICK_SKIP_BUSY;
    b->inflight++;
    b->requests++;
    return PICK_OK;
}

/* Tries backend index i once. Returns 1 answered (*reply set), 0 skipped or failed (info updated).
 * An "unsupported" answer goes to *fallback (the first one kept), for when no other backend answers. */
static int s_try(titan_router *r, int i, const char *header, const titan_frame *frames, size_t nframes,
                 titan_reply **reply, titan_reply **fallback, titan_route_info *info, double *ms_out)
{
    s_backend *b = &r->b[i];
    pthread_mutex_lock(&r->lock);
    int pick = s_pick(r, b);
    pthread_mutex_unlock(&r->lock);
    if (pick == PICK_PROBE) {
        info->tried++;
        bool ok = s_probe(r, b);
        pthread_mutex_lock(&r->lock);
        b->probing = false;
        pick = ok ? s_pick(r, b) : PICK_SKIP_FAILED;
        pthread_mutex_unlock(&r->lock);
        if (!ok) snprintf(info->error, sizeof(info->error), "%s: %s", b->c.name, b->last_error);
    }
    if (pick == PICK_SKIP_FAILED) {
        info->skipped_failed++;
        return 0;
    }
    if (pick == PICK_SKIP_BUSY) {
        info->skipped_busy++;
        return 0;
    }
    info->tried++;
    char why[256] = "";
    double ms = 0;
    titan_reply *rep = NULL;
    s_result res = s_send(r, b, header, frames, nframes, &rep, why, sizeof(why), &ms);
    pthread_mutex_lock(&r->lock);
    b->inflight--;
    if (res == R_ANSWERED || res == R_UNSUPPORTED) {
        b->ok++;
        s_latency(b, ms);
        s_succeeded(r, b);
    } else if (res == R_BUSY) {
        b->busy++;
        b->failures_in_row = 0; /* alive */
        info->skipped_busy++;
    } else {
        s_set_error(b, "%s", why);
        s_failed(r, b, false);
        info->skipped_failed++;
        snprintf(info->error, sizeof(info->error), "%s: %s", b->c.name, why);
    }
    pthread_mutex_unlock(&r->lock);
    if (res == R_UNSUPPORTED) {
        if (!*fallback) {
            *fallback = rep;
            info->backend = i;
        } else {
            titan_reply_destroy(&rep);
        }
        return 0;
    }
    if (res != R_ANSWERED) return 0;
    *reply = rep;
    if (ms_out) *ms_out = ms;
    info->backend = i;
    return 1;
}

static void s_info_init(titan_route_info *info)
{
    memset(info, 0, sizeof(*info));
    info->backend = -1;
}

/* Routes over the backends in priority order, starting with `first` when >= 0. */
static int s_route(titan_router *r, const char *header, const titan_frame *frames, size_t nframes,
                   const char *capability, int first, titan_reply **reply, titan_route_info *info, double *ms)
{
    char op[64];
    const char *cap = capability ? capability : s_op_capability(header, op, sizeof(op));
    int capable = 0;
    for (int i = 0; i < r->n; i++)
        capable += s_offers(&r->b[i], cap);
    if (!capable) {
        snprintf(info->error, sizeof(info->error),
                 "no backend offers the capability \"%s\"; add it to a backend's capabilities", cap);
        return -ENOTSUP;
    }
    titan_reply *fallback = NULL;
    bool done = first >= 0 && s_try(r, first, header, frames, nframes, reply, &fallback, info, ms);
    for (int k = 0; k < r->n && !done; k++) {
        int i = r->order[k];
        if (i == first || !s_offers(&r->b[i], cap)) continue;
        done = s_try(r, i, header, frames, nframes, reply, &fallback, info, ms);
    }
    if (done) {
        titan_reply_destroy(&fallback);
        info->error[0] = '\0';
        return 0;
    }
    if (fallback) { /* every backend that answered lacks it: that answer is the caller's */
        *reply = fallback;
        info->error[0] = '\0';
        return 0;
    }
    if (info->skipped_busy > 0) {
        snprintf(
            info->error, sizeof(info->error),
            "every backend that offers %s is busy or at its max_inflight (%d busy, %d failed); retry later",
            cap ? cap : "this op", info->skipped_busy, info->skipped_failed);
        return -EBUSY;
    }
    if (!info->error[0])
        snprintf(info->error, sizeof(info->error),
                 "no backend is available: every breaker is open; see `titan backends`");
    else {
        char last[sizeof(info->error)];
        snprintf(last, sizeof(last), "%s", info->error);
        snprintf(info->error, sizeof(info->error), "no backend answered (last: %.400s)", last);
    }
    return -EHOSTUNREACH;
}

TITAN_API int titan_router_call(titan_router *r, const char *header_json, const titan_frame *frames,
                                size_t nframes, const char *capability, titan_reply **reply,
                                titan_route_info *info)
{
    titan_route_info local;
    if (!info) info = &local;
    s_info_init(info);
    if (!r || !header_json || !reply || (nframes && !frames)) {
        snprintf(info->error, sizeof(info->error), "invalid argument");
        return -EINVAL;
    }
    return s_route(r, header_json, frames, nframes, capability, -1, reply, info, NULL);
}

TITAN_API int titan_router_call_on(titan_router *r, size_t i, const char *header_json, const titan_frame *frames,
                                   size_t nframes, titan_reply **reply, titan_route_info *info)
{
    titan_route_info local;
    if (!info) info = &local;
    s_info_init(info);
    if (!r || i >= (size_t)r->n || !header_json || !reply || (nframes && !frames)) {
        snprintf(info->error, sizeof(info->error), "invalid argument");
        return -EINVAL;
    }
    titan_reply *fallback = NULL;
    if (s_try(r, (int)i, header_json, frames, nframes, reply, &fallback, info, NULL)) return 0;
    if (fallback) { /* "unsupported" is an answer like any other here */
        *reply = fallback;
        return 0;
    }
    if (info->skipped_busy) {
        snprintf(info->error, sizeof(info->error), "%s is busy or at its max_inflight; retry later",
                 r->b[i].c.name);
        return -EBUSY;
    }
    if (!info->error[0]) {
        pthread_mutex_lock(&r->lock);
        snprintf(info->error, sizeof(info->error), "%s: out of rotation (breaker open): %.300s", r->b[i].c.name,
                 r->b[i].last_error);
        pthread_mutex_unlock(&r->lock);
    }
    return -EHOSTUNREACH;
}

/* ---- matrix products ---- */

static bool s_json_int_is(const json_t *v, size_t want)
{
    return json_is_integer(v) && json_integer_value(v) >= 0 &&
           (uint64_t)json_integer_value(v) == (uint64_t)want;
}

/* One product on backend `first` (or routed when -1), written to dst (m x n). */
static int s_matmul_into(titan_router *r, int first, titan_dtype dt, size_t m, size_t k, size_t n,
                         const void *a, const void *b, void *dst, titan_route_info *info)
{
    const char *dname = titan_dtype_name(dt);
    size_t es = titan_dtype_size(dt);
    char header[320];
    snprintf(header, sizeof(header),
             "{\"op\":\"matrix_multiply\",\"a\":{\"dtype\":\"%s\",\"shape\":[%zu,%zu],\"frame\":1},"
             "\"b\":{\"dtype\":\"%s\",\"shape\":[%zu,%zu],\"frame\":2}}",
             dname, m, k, dname, k, n);
    titan_frame frames[2] = {{a, m * k * es}, {b, k * n * es}};
    titan_reply *rep = NULL;
    double ms = 0;
    int rc = s_route(r, header, frames, 2, "matrix_ops", first, &rep, info, &ms);
    if (rc) return rc;
    json_t *root = json_loads(titan_reply_header(rep), 0, NULL);
    json_t *res = json_object_get(root, "result");
    json_t *shape = json_object_get(res, "shape");
    const char *rdt = json_string_value(json_object_get(res, "dtype"));
    size_t size = 0;
    const void *data = titan_reply_frame(rep, 0, &size);
    const char *name = r->b[info->backend].c.name;
    if (json_object_get(root, "error")) {
        const char *e = json_string_value(json_object_get(root, "error"));
        const char *c = json_string_value(json_object_get(root, "code"));
        snprintf(info->error, sizeof(info->error), "%s answered %s: %s", name, c ? c : "error", e ? e : "");
        rc = -EREMOTEIO;
    } else if (!json_is_object(res) || !rdt || strcmp(rdt, dname) != 0 || !json_is_array(shape) ||
               json_array_size(shape) != 2 || !s_json_int_is(json_array_get(shape, 0), m) ||
               !s_json_int_is(json_array_get(shape, 1), n) || !data || size != m * n * es) {
        snprintf(info->error, sizeof(info->error), "%s sent a malformed matrix_multiply reply", name);
        rc = -EPROTO;
    } else {
        memcpy(dst, data, size);
        double g = 2.0 * (double)m * (double)k * (double)n / (ms > 1e-3 ? ms : 1e-3) / 1e6;
        pthread_mutex_lock(&r->lock);
        s_backend *be = &r->b[info->backend];
        be->gflops = be->gflops > 0 ? 0.7 * be->gflops + 0.3 * g : g;
        pthread_mutex_unlock(&r->lock);
    }
    json_decref(root);
    titan_reply_destroy(&rep);
    return rc;
}

/* Checks a product's arguments; returns the element counts or -errno. */
static int s_matmul_args(titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b,
                         void **out, size_t *nc)
{
    if (!titan_dtype_name(dt) || !a || !b || !out || m > INT64_MAX || k > INT64_MAX || n > INT64_MAX)
        return -EINVAL;
    int64_t sa[2] = {(int64_t)m, (int64_t)k}, sb[2] = {(int64_t)k, (int64_t)n},
            sc[2] = {(int64_t)m, (int64_t)n};
    size_t x;
    int rc = titan_shape_elems(dt, sa, 2, &x);
    if (rc == 0) rc = titan_shape_elems(dt, sb, 2, &x);
    if (rc == 0) rc = titan_shape_elems(dt, sc, 2, nc);
    return rc;
}

/* Starts a product call: resets info and checks the arguments. Returns 0 and *nc (elements of C) or -errno.
 */
static int s_matmul_check(titan_router *r, titan_dtype dt, size_t m, size_t k, size_t n, const void *a,
                          const void *b, void **out, size_t *nc, titan_route_info *info)
{
    s_info_init(info);
    int rc = r ? s_matmul_args(dt, m, k, n, a, b, out, nc) : -EINVAL;
    if (rc)
        snprintf(info->error, sizeof(info->error),
                 rc == -EOVERFLOW ? "matrix sizes overflow" : "invalid argument");
    return rc;
}

/* The whole product on one routed backend, into *out (malloc'd when NULL). */
static int s_matmul_whole(titan_router *r, titan_dtype dt, size_t m, size_t k, size_t n, const void *a,
                          const void *b, void **out, size_t nc, titan_route_info *info)
{
    void *dst = *out ? *out : malloc(nc * titan_dtype_size(dt));
    if (!dst) {
        snprintf(info->error, sizeof(info->error), "out of memory for the result");
        return -ENOMEM;
    }
    int rc = s_matmul_into(r, -1, dt, m, k, n, a, b, dst, info);
    if (rc == 0)
        *out = dst;
    else if (!*out)
        free(dst);
    return rc;
}

TITAN_API int titan_router_matmul(titan_router *r, titan_dtype dt, size_t m, size_t k, size_t n,
                                  const void *a, const void *b, void **out, titan_route_info *info)
{
    titan_route_info local;
    if (!info) info = &local;
    size_t nc = 0;
    int rc = s_matmul_check(r, dt, m, k, n, a, b, out, &nc, info);
    return rc ? rc : s_matmul_whole(r, dt, m, k, n, a, b, out, nc, info);
}

/* Pings, all at once, the backends offering matrix_ops that have neither answered nor failed yet. */
static void s_probe_unknown(titan_router *r);

typedef struct {
    titan_router *r;
    int backend;
    titan_dtype dt;
    size_t rows, k, n;
    const void *a, *b;
    void *dst;
    titan_route_info info;
    int rc;
} s_part;

static void *s_part_run(void *arg)
{
    s_part *p = arg;
    s_info_init(&p->info);
    p->rc = s_matmul_into(p->r, p->backend, p->dt, p->rows, p->k, p->n, p->a, p->b, p->dst, &p->info);
    return NULL;
}

TITAN_API int titan_router_matmul_split(titan_router *r, titan_dtype dt, size_t m, size_t k, size_t n,
                                        const void *a, const void *b, void **out, titan_route_info *info)
{
    titan_route_info local;
    if (!info) info = &local;
    size_t nc = 0;
    int rc = s_matmul_check(r, dt, m, k, n, a, b, out, &nc, info);
    if (rc) return rc;
    size_t es = titan_dtype_size(dt);

    /* Backends never heard from yet are pinged first (at once), so that a split does not hand rows to
     * a backend that is down and wait out its timeout. */
    s_probe_unknown(r);

    /* The healthy backends that offer matrix_ops, with their shares. */
    int idx[TITAN_CONF_MAX_BACKENDS];
    double share[TITAN_CONF_MAX_BACKENDS];
    int np = 0;
    double gsum = 0, wsum = 0;
    int measured = 0;
    double now = titan_clock_mono_ms();
    pthread_mutex_lock(&r->lock);
    for (int q = 0; q < r->n; q++) {
        int i = r->order[q];
        s_backend *be = &r->b[i];
        if (!s_offers(be, "matrix_ops")) continue;
        if (be->state == TITAN_BREAKER_OPEN && now < be->open_until) continue;
        idx[np++] = i;
        if (be->gflops > 0) {
            gsum += be->gflops;
            wsum += be->c.weight;
            measured++;
        }
    }
    /* Unmeasured backends count as their weight times the measured ones' throughput per unit of weight. */
    double per_weight = measured ? gsum / wsum : 1.0;
    double total = 0;
    for (int q = 0; q < np; q++) {
        s_backend *be = &r->b[idx[q]];
        share[q] = be->gflops > 0 ? be->gflops : be->c.weight * per_weight;
        total += share[q];
    }
    pthread_mutex_unlock(&r->lock);
    if (np == 0) {
        /* Nothing looks healthy: one routed call says why (or finds a backend whose cool-down ended). */
        return s_matmul_whole(r, dt, m, k, n, a, b, out, nc, info);
    }

    /* Rows in proportion to the shares (largest remainders), in blocks of SPLIT_BLOCK rows: BLAS
     * libraries round a row the same way whatever the row count only away from small edge blocks
     * (OpenBLAS 0.3.21 differs within ~30 rows of a split point otherwise), so split points fall
     * on block boundaries and the last part takes the remainder. */
    size_t blocks = (m + SPLIT_BLOCK - 1) / SPLIT_BLOCK, given = 0;
    size_t rows[TITAN_CONF_MAX_BACKENDS];
    double frac[TITAN_CONF_MAX_BACKENDS];
    for (int q = 0; q < np; q++) {
        double want = (double)blocks * share[q] / total;
        rows[q] = (size_t)floor(want);
        frac[q] = want - (double)rows[q];
        given += rows[q];
    }
    while (given < blocks) {
        int best = 0;
        for (int q = 1; q < np; q++)
            if (frac[q] > frac[best]) best = q;
        rows[best]++;
        frac[best] = -1;
        given++;
    }
    size_t left = m;
    int last = -1;
    for (int q = 0; q < np; q++) {
        rows[q] *= SPLIT_BLOCK;
        if (rows[q] > left) rows[q] = left;
        left -= rows[q];
        if (rows[q]) last = q;
    }
    rows[last] += left; /* cannot be needed, but never lose a row */

    void *dst = *out ? *out : malloc(nc * es);
    s_part *parts = calloc((size_t)np, sizeof(*parts));
    pthread_t *th = calloc((size_t)np, sizeof(*th));
    bool *started = calloc((size_t)np, sizeof(*started));
    if (!dst || !parts || !th || !started) {
        if (!*out) free(dst);
        free(parts);
        free(th);
        free(started);
        snprintf(info->error, sizeof(info->error), "out of memory");
        return -ENOMEM;
    }
    size_t row = 0;
    int used = 0;
    for (int q = 0; q < np; q++) {
        if (!rows[q]) continue;
        s_part *p = &parts[used];
        *p = (s_part){
            r,   idx[q], dt, rows[q], k, n, (const char *)a + row * k * es, b, (char *)dst + row * n * es,
            {0}, 0};
        info->part[used].backend = idx[q];
        info->part[used].rows = rows[q];
        info->nparts = used + 1;
        row += rows[q];
        used++;
    }
    /* The first part runs on this thread; the others on their own. */
    for (int q = 1; q < used; q++)
        started[q] = pthread_create(&th[q], NULL, s_part_run, &parts[q]) == 0;
    for (int q = 1; q < used; q++)
        if (!started[q]) s_part_run(&parts[q]);
    s_part_run(&parts[0]);
    for (int q = 1; q < used; q++)
        if (started[q]) pthread_join(th[q], NULL);
    rc = 0;
    for (int q = 0; q < used; q++) {
        info->tried += parts[q].info.tried;
        info->skipped_busy += parts[q].info.skipped_busy;
        info->skipped_failed += parts[q].info.skipped_failed;
        if (parts[q].rc && !rc) {
            rc = parts[q].rc;
            snprintf(info->error, sizeof(info->error), "rows %zu..%zu: %.400s",
                     (size_t)(((const char *)parts[q].a - (const char *)a) / (k * es)),
                     (size_t)(((const char *)parts[q].a - (const char *)a) / (k * es)) + parts[q].rows - 1,
                     parts[q].info.error);
        }
    }
    free(parts);
    free(th);
    free(started);
    if (rc == 0)
        *out = dst;
    else if (!*out)
        free(dst);
    return rc;
}

/* ---- probing and status ---- */

typedef struct {
    titan_router *r;
    int i;
    bool ok;
} s_probe_arg;

static void *s_probe_run(void *arg)
{
    s_probe_arg *p = arg;
    p->ok = s_probe(p->r, &p->r->b[p->i]);
    return NULL;
}

static void s_probe_unknown(titan_router *r)
{
    s_probe_arg args[TITAN_CONF_MAX_BACKENDS];
    pthread_t th[TITAN_CONF_MAX_BACKENDS];
    bool started[TITAN_CONF_MAX_BACKENDS];
    int n = 0;
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < r->n; i++) {
        s_backend *b = &r->b[i];
        if (!s_offers(b, "matrix_ops") || b->ok || b->busy || b->failures || b->probes || b->probing)
            continue;
        b->probing = true;
        args[n++] = (s_probe_arg){r, i, false};
    }
    pthread_mutex_unlock(&r->lock);
    for (int k = 0; k < n; k++) {
        started[k] = pthread_create(&th[k], NULL, s_probe_run, &args[k]) == 0;
        if (!started[k]) s_probe_run(&args[k]);
    }
    for (int k = 0; k < n; k++)
        if (started[k]) pthread_join(th[k], NULL);
    pthread_mutex_lock(&r->lock);
    for (int k = 0; k < n; k++)
        r->b[args[k].i].probing = false;
    pthread_mutex_unlock(&r->lock);
}

TITAN_API int titan_router_probe(titan_router *r)
{
    if (!r) return -EINVAL;
    s_probe_arg args[TITAN_CONF_MAX_BACKENDS];
    pthread_t th[TITAN_CONF_MAX_BACKENDS];
    bool started[TITAN_CONF_MAX_BACKENDS];
    for (int i = 0; i < r->n; i++) {
        args[i] = (s_probe_arg){r, i, false};
        started[i] = pthread_create(&th[i], NULL, s_probe_run, &args[i]) == 0;
        if (!started[i]) s_probe_run(&args[i]);
    }
    int ok = 0;
    for (int i = 0; i < r->n; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        ok += args[i].ok;
    }
    return ok;
}

TITAN_API size_t titan_router_backend_count(const titan_router *r)
{
    return r ? (size_t)r->n : 0;
}

static int s_cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

TITAN_API int titan_router_backend_status(titan_router *r, size_t i, titan_backend_status *out)
{
    if (!r || !out || i >= (size_t)r->n) return -EINVAL;
    titan_backend_status s;
    memset(&s, 0, sizeof(s));
    double lat[LAT_RING];
    int nlat;
    pthread_mutex_lock(&r->lock);
    const s_backend *b = &r->b[i];
    snprintf(s.name, sizeof(s.name), "%s", b->c.name);
    s.type = b->c.type == TITAN_CONF_LOCAL ? TITAN_ROUTE_LOCAL : TITAN_ROUTE_REMOTE;
    snprintf(s.endpoint, sizeof(s.endpoint), "%s", b->c.endpoint);
    snprintf(s.device, sizeof(s.device), "%s", b->c.device);
    for (int k = 0; k < b->c.ncaps; k++) {
        size_t len = strlen(s.capabilities);
        snprintf(s.capabilities + len, sizeof(s.capabilities) - len, "%s%s", k ? "," : "", b->c.caps[k]);
    }
    s.priority = b->c.priority;
    s.weight = b->c.weight;
    s.max_inflight = b->c.max_inflight;
    s.timeout_ms = b->c.timeout_ms;
    s.state = b->state;
    if (s.state == TITAN_BREAKER_OPEN && titan_clock_mono_ms() >= b->open_until)
        s.state = TITAN_BREAKER_HALF_OPEN;
    s.inflight = b->inflight;
    s.requests = b->requests;
    s.ok = b->ok;
    s.busy = b->busy;
    s.failures = b->failures;
    s.probes = b->probes;
    s.gflops = b->gflops;
    snprintf(s.last_error, sizeof(s.last_error), "%s", b->last_error);
    s.last_error_ms = b->last_error_ms;
    nlat = b->nlat;
    memcpy(lat, b->lat, sizeof(double) * (size_t)nlat);
    pthread_mutex_unlock(&r->lock);
    if (nlat > 0) {
        qsort(lat, (size_t)nlat, sizeof(double), s_cmp_double);
        s.p50_ms = lat[(nlat - 1) / 2];
        s.p99_ms = lat[(int)ceil(0.99 * nlat) - 1];
    } else {
        s.p50_ms = s.p99_ms = -1;
    }
    *out = s;
    return 0;
}

TITAN_API const char *titan_breaker_state_name(titan_breaker_state s)
{
    switch (s) {
    case TITAN_BREAKER_CLOSED:
        return "closed";
    case TITAN_BREAKER_OPEN:
        return "open";
    case TITAN_BREAKER_HALF_OPEN:
        return "half-open";
    }
    return "unknown";
}

TITAN_API size_t titan_router_struct_size(const char *name)
{
    if (!name) return 0;
    if (strcmp(name, "titan_route_info") == 0) return sizeof(titan_route_info);
    if (strcmp(name, "titan_backend_status") == 0) return sizeof(titan_backend_status);
    return 0;
}
