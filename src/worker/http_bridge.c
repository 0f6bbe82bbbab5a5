/* http_bridge.c - the thread between the HTTP server and the worker's server: HTTP requests in through a locked
 * list and an eventfd, ZeroMQ requests out over one DEALER, each behind a routing frame "hSLOT.SEQ" that the
 * server's reply carries back (an envelope, docs/PROTOCOL.md section 1.1), answers out through each work's done. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <zmq.h>

#include "clock.h"
#include "http_bridge.h"
#include "log.h"

#define S_MAX_REPLY_FRAMES 8 /* a reply's frames after the envelope; an embed reply has 2 */

/* A work sent to the server and waiting for its reply. SEQ changes with every use of the slot, so that a late
 * reply to a work answered otherwise (timed out) never lands on the slot's next work. */
typedef struct {
    titan_http_work *w; /* NULL: free */
    titan_http_call call;
    unsigned seq;
    int64_t deadline_ms;
} s_slot;

struct titan_http_bridge {
    void *zmq_ctx; /* borrowed */
    char endpoint[128];
    void *dealer;  /* the thread's */
    int efd;       /* new works, or a close */
    pthread_t thread;
    bool started, joined;
    pthread_mutex_t mu; /* head, tail, reserved, closing */
    bool mu_ready;
    titan_http_work *head, *tail;
    int reserved, max;
    bool closing;
    int timeout_ms;
    s_slot *slots; /* max of them; the thread's */
};

static void *s_open_dealer(void *ctx, const char *endpoint)
{
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    /* No high-water mark: the works in hand are bounded by max_inflight, and a full pipe would only turn them
     * into refusals the server would not have made. */
    int linger = 0, hwm = 0;
    if (d && (zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
              zmq_setsockopt(d, ZMQ_SNDHWM, &hwm, sizeof(hwm)) != 0 ||
              zmq_setsockopt(d, ZMQ_RCVHWM, &hwm, sizeof(hwm)) != 0 || zmq_connect(d, endpoint) != 0)) {
        zmq_close(d);
        d = NULL;
    }
    return d;
}

/* Gives w its answer and hands it back: the place it held is free from now on. */
static void s_answer(titan_http_bridge *b, titan_http_work *w, unsigned status, char *body, size_t len, int retry)
{
    w->status = status;
    w->answer = body;
    w->answer_len = len;
    w->retry_after_s = retry;
    pthread_mutex_lock(&b->mu);
    b->reserved--;
    pthread_mutex_unlock(&b->mu);
    w->done(w);
}

static void s_answer_error(titan_http_bridge *b, titan_http_work *w, const titan_http_error *e)
{
    size_t len = 0;
    char *body = titan_http_error_body(e, &len);
    s_answer(b, w, e->status, body, len, e->retry_after_s);
}

static void s_answer_code(titan_http_bridge *b, titan_http_work *w, const char *code, const char *msg)
{
    titan_http_error e;
    titan_http_fail(&e, code, "%s", msg);
    s_answer_error(b, w, &e);
}

static void s_slot_free(s_slot *s)
{
    titan_http_call_release(&s->call);
    s->w = NULL;
}

#define S_CLOSING_MSG "the worker is shutting down; retry on another worker or after its restart"

/* Answers every work waiting for a reply with `code`. */
static void s_fail_all(titan_http_bridge *b, const char *code, const char *msg)
{
    for (int i = 0; i < b->max; i++) {
        s_slot *s = &b->slots[i];
        if (!s->w) continue;
        titan_http_work *w = s->w;
        s_slot_free(s);
        s_answer_code(b, w, code, msg);
    }
}

/* The socket failed half way through a message: a new one replaces it, and the replies owed on the old one are
 * lost, so the works waiting for them are answered now. */
static void s_reset(titan_http_bridge *b, int err)
{
    titan_log(TITAN_LOG_ERROR, "http: the socket to the server failed: %s", zmq_strerror(err));
    zmq_close(b->dealer);
    b->dealer = s_open_dealer(b->zmq_ctx, b->endpoint);
    s_fail_all(b, "internal", "the HTTP bridge's socket to the worker's server failed; retry");
}

/* Translates w and sends it; answers it at once when it cannot be sent. */
static void s_send(titan_http_bridge *b, titan_http_work *w)
{
    int idx = -1;
    for (int i = 0; i < b->max && idx < 0; i++)
        if (!b->slots[i].w) idx = i;
    s_slot *s = idx >= 0 ? &b->slots[idx] : NULL;
    if (!s) { /* cannot happen: a work holds a place (reserve) and a place is a slot */
        s_answer_code(b, w, "internal", "no slot for the request");
        return;
    }
    titan_http_error err;
    if (titan_http_call_parse(w->route, w->body, w->len, &s->call, &err) != 0) {
        s_answer_error(b, w, &err);
        return;
    }
    if (!b->dealer) {
        titan_http_call_release(&s->call);
        s_answer_code(b, w, "internal", "the HTTP bridge has no socket to the worker's server; retry");
        return;
    }
    s->seq++;
    char tag[32];
    int tl = snprintf(tag, sizeof(tag), "h%d.%u", idx, s->seq);
    int rc = zmq_send(b->dealer, tag, (size_t)tl, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc < 0) {
        int e = zmq_errno();
        titan_http_call_release(&s->call);
        if (e == EAGAIN)
            s_answer_code(b, w, "busy", "worker busy: the way to its server is full; retry later");
        else
            s_answer_code(b, w, "internal", zmq_strerror(e));
        return;
    }
    s->w = w;
    s->deadline_ms = titan_clock_mono_ms64() + b->timeout_ms;
    /* Once the first frame went, the others go too (a message is all or nothing); a failure here breaks it. */
    if (zmq_send(b->dealer, "", 0, ZMQ_SNDMORE) < 0 || zmq_send(b->dealer, s->call.zmq, s->call.zmq_len, 0) < 0)
        s_reset(b, zmq_errno());
}

/* The slot whose request the routing frame m names, or NULL (a late reply, or not ours). */
static s_slot *s_slot_of(titan_http_bridge *b, zmq_msg_t *m)
{
    char tag[32];
    size_t n = zmq_msg_size(m);
    if (n < 4 || n >= sizeof(tag)) return NULL;
    memcpy(tag, zmq_msg_data(m), n);
    tag[n] = '\0';
    char *dot, *end;
    long idx = strtol(tag + 1, &dot, 10);
    if (tag[0] != 'h' || *dot != '.' || idx < 0 || idx >= b->max) return NULL;
    unsigned long seq = strtoul(dot + 1, &end, 10);
    s_slot *s = &b->slots[idx];
    if (*end || !s->w || seq != s->seq) return NULL;
    return s;
}

/* Takes every reply waiting on the socket to its work, translated. */
static void s_receive(titan_http_bridge *b)
{
    while (b->dealer) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, b->dealer, ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&m);
            if (e == EINTR) continue;
            if (e != EAGAIN) s_reset(b, e);
            return;
        }
        s_slot *s = s_slot_of(b, &m);
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        zmq_msg_t frames[S_MAX_REPLY_FRAMES];
        size_t n = 0;
        bool first = true, broken = false;
        while (more) { /* the rest of a message is there once its first frame is */
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, b->dealer, 0) < 0) {
                int e = zmq_errno();
                zmq_msg_close(&m);
                if (e == EINTR) continue;
                broken = true;
                for (size_t i = 0; i < n; i++) zmq_msg_close(&frames[i]);
                s_reset(b, e);
                break;
            }
            more = zmq_msg_more(&m);
            if (first && zmq_msg_size(&m) == 0) zmq_msg_close(&m); /* the delimiter */
            else if (n < S_MAX_REPLY_FRAMES) frames[n++] = m;
            else zmq_msg_close(&m);
            first = false;
        }
        if (broken) return;
        if (s) {
            const void *data[S_MAX_REPLY_FRAMES];
            size_t size[S_MAX_REPLY_FRAMES];
            for (size_t i = 0; i < n; i++) {
                data[i] = zmq_msg_data(&frames[i]);
                size[i] = zmq_msg_size(&frames[i]);
            }
            titan_http_work *w = s->w;
            char *out = NULL;
            size_t out_len = 0;
            titan_http_error err;
            int rc = titan_http_call_answer(&s->call, data, size, n, &out, &out_len, &err);
            s_slot_free(s);
            if (rc == 0) s_answer(b, w, 200, out, out_len, 0);
            else s_answer_error(b, w, &err);
        }
        for (size_t i = 0; i < n; i++) zmq_msg_close(&frames[i]);
    }
}

/* Answers 504 each work whose reply is overdue; returns the ms until the next deadline, or -1. */
static long s_expire(titan_http_bridge *b)
{
    int64_t now = titan_clock_mono_ms64(), next = -1;
    for (int i = 0; i < b->max; i++) {
        s_slot *s = &b->slots[i];
        if (!s->w) continue;
        if (s->deadline_ms <= now) {
            titan_http_work *w = s->w;
            s_slot_free(s);
            titan_http_error e;
            titan_http_fail(&e, "timeout", "no answer from the worker's server within %d s; the request may still "
                            "run: retry later", b->timeout_ms / 1000);
            s_answer_error(b, w, &e);
            continue;
        }
        if (next < 0 || s->deadline_ms - now < next) next = s->deadline_ms - now;
    }
    return (long)next;
}

static void *s_main(void *arg)
{
    titan_http_bridge *b = arg;
    long timeout = -1;
    for (;;) {
        zmq_pollitem_t items[2] = {{b->dealer, 0, ZMQ_POLLIN, 0}, {NULL, b->efd, ZMQ_POLLIN, 0}};
        int n = b->dealer ? zmq_poll(items, 2, timeout) : zmq_poll(items + 1, 1, timeout);
        if (n < 0 && zmq_errno() != EINTR) {
            /* Only a context ending can fail a poll on sockets this thread owns; it is closed before that. */
            titan_log(TITAN_LOG_ERROR, "http: the bridge cannot poll: %s", zmq_strerror(zmq_errno()));
            usleep(10000);
        }
        uint64_t v;
        if (read(b->efd, &v, sizeof(v)) < 0) { /* nothing new (EAGAIN) */
        }
        pthread_mutex_lock(&b->mu);
        titan_http_work *w = b->head;
        b->head = b->tail = NULL;
        bool closing = b->closing;
        pthread_mutex_unlock(&b->mu);
        while (w) {
            titan_http_work *next = w->next;
            if (closing) s_answer_code(b, w, "shutting_down", S_CLOSING_MSG);
            else s_send(b, w);
            w = next;
        }
        if (closing) break;
        s_receive(b);
        timeout = s_expire(b);
    }
    s_fail_all(b, "shutting_down", S_CLOSING_MSG);
    if (b->dealer) zmq_close(b->dealer);
    b->dealer = NULL;
    return NULL;
}

titan_http_bridge *titan_http_bridge_new(void *zmq_ctx, const char *endpoint, int max_inflight, int reply_timeout_ms,
                                         char *err, size_t errcap)
{
    titan_http_bridge *b = calloc(1, sizeof(*b));
    if (!b || max_inflight < 1) {
        free(b);
        snprintf(err, errcap, "cannot serve the HTTP API: %s", b ? "no place for a request" : "out of memory");
        return NULL;
    }
    b->zmq_ctx = zmq_ctx;
    snprintf(b->endpoint, sizeof(b->endpoint), "%s", endpoint);
    b->max = max_inflight;
    b->timeout_ms = reply_timeout_ms;
    b->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    b->slots = calloc((size_t)max_inflight, sizeof(*b->slots));
    if (b->efd < 0 || !b->slots || pthread_mutex_init(&b->mu, NULL) != 0) {
        snprintf(err, errcap, "cannot serve the HTTP API: %s", strerror(errno ? errno : ENOMEM));
        goto fail;
    }
    b->mu_ready = true;
    b->dealer = s_open_dealer(zmq_ctx, endpoint);
    if (!b->dealer) {
        snprintf(err, errcap, "cannot serve the HTTP API: cannot connect to %s: %s", endpoint,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    int rc = pthread_create(&b->thread, NULL, s_main, b);
    if (rc != 0) {
        snprintf(err, errcap, "cannot serve the HTTP API: cannot start its thread: %s", strerror(rc));
        goto fail;
    }
    b->started = true;
    return b;
fail:
    titan_http_bridge_destroy(&b);
    return NULL;
}

int titan_http_bridge_reserve(titan_http_bridge *b)
{
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    if (b->closing || !b->started) rc = -ESHUTDOWN;
    else if (b->reserved >= b->max) rc = -EBUSY;
    else b->reserved++;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

void titan_http_bridge_submit(titan_http_bridge *b, titan_http_work *w)
{
    w->next = NULL;
    pthread_mutex_lock(&b->mu);
    bool closing = b->closing;
    if (!closing) {
        if (b->tail) b->tail->next = w;
        else b->head = w;
        b->tail = w;
    }
    pthread_mutex_unlock(&b->mu);
    if (closing) {
        /* The thread has gone or is going: nobody else will answer it. */
        s_answer_code(b, w, "shutting_down", S_CLOSING_MSG);
        return;
    }
    uint64_t one = 1;
    if (write(b->efd, &one, sizeof(one)) < 0) { /* the counter is already set: the thread wakes anyway */
    }
}

void titan_http_bridge_close(titan_http_bridge *b)
{
    if (!b || !b->mu_ready) return;
    pthread_mutex_lock(&b->mu);
    b->closing = true;
    pthread_mutex_unlock(&b->mu);
    if (b->started && !b->joined) {
        uint64_t one = 1;
        if (write(b->efd, &one, sizeof(one)) < 0) {
        }
        pthread_join(b->thread, NULL);
        b->joined = true;
    }
    if (b->dealer) { /* never started */
        zmq_close(b->dealer);
        b->dealer = NULL;
    }
}

void titan_http_bridge_destroy(titan_http_bridge **bp)
{
    if (!bp || !*bp) return;
    titan_http_bridge *b = *bp;
    titan_http_bridge_close(b);
    if (b->dealer) zmq_close(b->dealer);
    if (b->efd >= 0) close(b->efd);
    if (b->mu_ready) pthread_mutex_destroy(&b->mu);
    free(b->slots);
    free(b);
    *bp = NULL;
}
