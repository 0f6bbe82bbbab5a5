/* server.c - ROUTER I/O loop: receives requests, answers light ops at once, queues heavy ones
 * to executor threads over inproc PAIR sockets, and sends every reply to its own client. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "auth.h"
#include "batchq.h"
#include "clock.h"
#include "fairq.h"
#include "hostpool.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "server.h"

#define MAX_ENVELOPE 8
#define MAX_MSG_FRAMES (MAX_ENVELOPE + TITAN_MAX_BODY_FRAMES + 1)
#define INLINE_HEADER_MAX 65536 /* larger headers are parsed on an executor */
#define MAX_EXECUTORS 256

typedef struct titan_job {
    zmq_msg_t frames[MAX_MSG_FRAMES];
    size_t nframes;   /* frames held */
    size_t dropped;   /* frames beyond MAX_MSG_FRAMES, already closed */
    size_t env;       /* envelope frames, delimiter included */
    size_t bytes;     /* body bytes */
    bool parsed;
    const titan_op *op;
    titan_request req;
    titan_out out;
    bool failed;
    titan_error err;
    json_t *peek_id; /* the "id" of a request refused before it was parsed; owned */
    char owner[TITAN_OWNER_MAX]; /* who sent it, for resident tensors (req.client) */
    bool dispatched;             /* handed to an executor: its reply is never dropped for --max-unread-mb */
    int64_t t_recv;              /* titan_clock_mono_ns */
    struct titan_job *next;
    /* A batch (dynamic batching, batchq.h): its jobs chained by bnext from the first, which an executor gets;
     * bmodel is the encoder they all name (borrowed from the batch queues). */
    struct titan_job *bnext;
    const char *bmodel;
} titan_job;

typedef struct {
    titan_server *srv;
    int index;
    void *sock; /* executor's end */
    pthread_t thread;
    bool started;
    /* A job of this process's Redis consumer that the I/O thread put here while the executor was busy (the
     * look-ahead, s_take_ahead): the executor takes it (atomic exchange) as soon as its job is done, and says
     * so with that job's reply; or the I/O thread takes it back (the drain, or the executor had looked). */
    _Atomic(struct titan_job *) next;
} s_executor;

/* What an executor sends back: the job it has done, and the job it took from its `next` then, and starts
 * now (NULL: none; it waits for the next one over its socket). */
typedef struct {
    struct titan_job *done;
    struct titan_job *next;
} s_done;

struct titan_server {
    titan_worker_ctx *w;
    void *ctx;
    void *router;
    void *pairs[MAX_EXECUTORS]; /* main thread's ends */
    s_executor execs[MAX_EXECUTORS];
    bool busy[MAX_EXECUTORS];
    /* The job each busy executor holds in its `next`, as this thread knows it (NULL: none). Such a job still
     * counts as queued (qlen, and toward its client's share) until its executor starts it. */
    struct titan_job *ahead[MAX_EXECUTORS];
    int nexec;
    int queue_cap;
    int client_cap; /* most requests one client may have queued */
    uint64_t max_inflight_bytes;
    uint64_t inflight_bytes; /* body bytes of queued and running jobs */
    uint64_t max_unread;     /* reply bytes a client may leave unread before its heavy requests get busy */
    struct s_unread **unread; /* per client, the replies not yet written to it (hash table by routing id) */
    size_t unread_buckets, unread_n, unread_sweep_at;
    titan_fairq *queue;      /* waiting jobs, per client in turn */
    int qlen;
    titan_batchq *bq;        /* embed and rerank jobs waiting for their model's next batch */
    bool batch_turn;         /* the batch queues go first at the next dispatch (they take turns with the fair queue) */
    int running;
    bool draining;
    int drain_timeout_ms;
    titan_auth *auth;
    titan_metrics *metrics; /* borrowed */
    void *conn_mon; /* PAIR: the router's disconnections, without CURVE (orphaned resident tensors) */
    char endpoints[2048];
    unsigned long long served, errors, dropped;
};

/* Publishes the queue and what runs, for /metrics and gpu_info; called wherever they change. */
static void s_model_gauge(void *arg, const char *model, size_t waiting)
{
    titan_metrics_set_model_queue(arg, model, waiting);
}

static void s_gauges(titan_server *s)
{
    titan_metrics_set_load(s->metrics, s->qlen + (int)titan_batchq_len(s->bq), s->running, s->inflight_bytes);
    titan_batchq_each(s->bq, s_model_gauge, s->metrics);
}

static void s_job_free(titan_job *j)
{
    if (!j) return;
    for (size_t i = 0; i < j->nframes; i++) zmq_msg_close(&j->frames[i]);
    titan_request_release(&j->req);
    titan_out_release(&j->out);
    if (j->peek_id) json_decref(j->peek_id);
    free(j);
}

/* Fills j->out with an error (for logging, j->err keeps it). */
static void s_job_error(titan_job *j, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void s_job_error(titan_job *j, const char *code, const char *fmt, ...)
{
    j->err.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err.msg, sizeof(j->err.msg), fmt, ap);
    va_end(ap);
    j->failed = true;
    titan_out_release(&j->out);
    if (titan_out_error(&j->out, &j->err, j->req.id ? j->req.id : j->peek_id)) {
        j->out.hdr = strdup("{\"error\":\"out of memory\",\"code\":\"internal\"}");
        j->out.hdr_len = j->out.hdr ? strlen(j->out.hdr) : 0;
    }
}

/* Looks for the "id" of a request that is refused unparsed, so that pipelining clients can
 * match the refusal; only the first 64 KiB of the header are read for it. */
static void s_job_peek_id(titan_job *j)
{
    if (j->req.id || j->peek_id || j->nframes <= j->env) return;
    zmq_msg_t *h = &j->frames[j->env];
    j->peek_id = titan_request_peek_id(zmq_msg_data(h), zmq_msg_size(h));
}

/* Names the client for resident tensors' ownership: its CURVE key when ZAP named one, else its
 * routing id (per connection, unless the client sets a stable ZMQ_ROUTING_ID, as libtitan does). */
static void s_job_owner(titan_job *j)
{
    const char *who = zmq_msg_gets(&j->frames[j->nframes - 1], "User-Id");
    if (who && *who) {
        snprintf(j->owner, sizeof(j->owner), "key:%s", who);
        return;
    }
    const unsigned char *id = zmq_msg_data(&j->frames[0]);
    size_t n = zmq_msg_size(&j->frames[0]), max = (sizeof(j->owner) - 4) / 2;
    memcpy(j->owner, "id:", 3);
    for (size_t i = 0; i < n && i < max; i++) snprintf(j->owner + 3 + 2 * i, 3, "%02x", id[i]);
}

/* Tells the resident tensors which connections closed (without CURVE a client is its routing id, so
 * its tensors become an orphan's: tstore.h). */
static void s_conn_events(titan_server *s)
{
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, s->conn_mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        bool more = zmq_msg_more(&ev);
        if (zmq_msg_size(&ev) == 6) { /* a 16-bit event and a 32-bit value: the descriptor */
            uint16_t event;
            int32_t fd;
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&fd, (char *)zmq_msg_data(&ev) + 2, 4);
            if (event == ZMQ_EVENT_DISCONNECTED) titan_tstore_conn_closed(s->w->tensors, fd);
        }
        zmq_msg_close(&ev);
        while (more) { /* the endpoint */
            zmq_msg_init(&ev);
            if (zmq_msg_recv(&ev, s->conn_mon, 0) < 0) more = false;
            else more = zmq_msg_more(&ev);
            zmq_msg_close(&ev);
        }
    }
}

/* Tells the resident tensors which connection carried j. The disconnections come first: a descriptor
 * is reused only after its close was reported, so none is read as the new connection's. */
static void s_conn_seen(titan_server *s, titan_job *j)
{
    if (!s->conn_mon) return;
    /* The frames from the peer carry its descriptor (the routing id frame that the ROUTER adds does not). */
    int fd = zmq_msg_get(&j->frames[j->nframes - 1], ZMQ_SRCFD);
    /* Only a descriptor can be reused: a job of this process (inproc, -1) skips the monitor's socket,
     * whose empty read costs two system calls. */
    if (fd >= 0) s_conn_events(s);
    s_job_owner(j);
    titan_tstore_conn_seen(s->w->tensors, fd, j->owner);
}

/* Parses the body and finds the op; on failure the job holds the error reply. */
static bool s_job_parse(titan_server *s, titan_job *j)
{
    j->parsed = true;
    size_t body = j->env;
    zmq_msg_t *h = &j->frames[body];
    int prc = titan_request_parse(&j->req, zmq_msg_data(h), zmq_msg_size(h), &j->frames[body + 1],
                                  j->nframes - body - 1, &s->w->limits, &j->err);
    s_job_owner(j);
    j->req.client = j->owner;
    if (prc) {
        titan_error e = j->err;
        s_job_error(j, e.code, "%s", e.msg);
        return false;
    }
    j->op = titan_op_find(j->req.op);
    if (!j->op) {
        s_job_error(j, "unknown_op", "Unknown operation: %s", j->req.op);
        return false;
    }
    return true;
}

/* True, with j answered "timeout", when j waited in the queue past its deadline_ms: it does not run. */
static bool s_job_late(titan_job *j)
{
    if (j->req.deadline_ms <= 0) return false;
    double waited = titan_clock_ms_since(j->t_recv);
    if (waited <= (double)j->req.deadline_ms) return false;
    s_job_error(j, "timeout", "waited %.0f ms in the queue, past its deadline_ms of %lld; retry or use a less busy "
                "backend", waited, (long long)j->req.deadline_ms);
    return true;
}

/* Runs a batch of embed/rerank jobs for one encoder (dynamic batching): each job past its deadline is refused
 * alone, the rest run through the model together (titan_models_encode), and each gets its own reply or error. */
static void s_batch_execute(titan_server *s, titan_job *head)
{
    size_t n = 0, k = 0;
    for (titan_job *j = head; j; j = j->bnext) n++;
    titan_encoder_job *ej = calloc(n, sizeof(*ej));
    titan_job **who = calloc(n, sizeof(*who));
    if (!ej || !who) {
        for (titan_job *j = head; j; j = j->bnext) s_job_error(j, "internal", "out of memory while batching");
        goto out;
    }
    for (titan_job *j = head; j; j = j->bnext) {
        if (s_job_late(j)) continue;
        ej[k] = (titan_encoder_job){.req = &j->req, .out = &j->out};
        who[k++] = j;
    }
    if (k && strcmp(head->req.op, "inference") == 0) titan_models_infer_batch(s->w->models, head->bmodel, ej, k);
    else if (k) titan_models_encode(s->w->models, head->bmodel, ej, k);
    uint64_t tokens = 0;
    for (size_t i = 0; i < k; i++) {
        tokens += ej[i].tokens;
        if (ej[i].rc) {
            titan_error e = ej[i].err;
            s_job_error(who[i], e.code ? e.code : "internal", "%s", e.msg);
        }
    }
    titan_metrics_batch(s->metrics, k, tokens);
out:
    free(ej);
    free(who);
}

/* Runs a job to completion on the calling thread. */
static void s_job_execute(titan_server *s, titan_job *j)
{
    if (j->bmodel) {
        s_batch_execute(s, j);
        return;
    }
    if (!j->parsed && !s_job_parse(s, j)) return;
    if (j->failed) return;
    if (s_job_late(j)) return;
    if (titan_op_run(s->w, j->op, &j->req, &j->out, &j->err)) j->failed = true;
}

/* Replies handed to ZeroMQ and not yet written to their client's connection (nor dropped with it), in
 * bytes, per client: its routing id, as the fair queue counts clients. Each reply frame carries an
 * s_counted hint; ZeroMQ calls s_free_counted once it has written the frame or dropped it, on one of its
 * own I/O threads (or on ours, when a send fails), hence the atomics. The table itself is the I/O
 * thread's. */
#define UNREAD_MSG_OVERHEAD 256 /* what ZeroMQ keeps per message besides its bytes, counted with each reply */
#define UNREAD_SMALL_MAX (1ULL << 20) /* refusals and light replies held unread, at most */

typedef struct s_unread {
    _Atomic uint64_t bytes; /* handed to ZeroMQ and not yet written */
    _Atomic uint64_t small; /* the part of it that is no work's result: refusals, light ops' answers */
    atomic_uint refs;       /* the table's, and one per frame in ZeroMQ's hands */
    struct s_unread *next;  /* hash chain */
    size_t keylen;
    unsigned char key[TITAN_FAIRQ_MAX_KEY];
} s_unread;

typedef struct {
    s_unread *u;
    uint64_t bytes;
    bool small;
} s_counted;

static void s_unread_release(s_unread *u)
{
    if (atomic_fetch_sub(&u->refs, 1) == 1) free(u);
}

/* Uncounts a frame that ZeroMQ has let go of from its client. */
static void s_uncount(s_counted *c)
{
    if (!c) return;
    atomic_fetch_sub(&c->u->bytes, c->bytes);
    if (c->small) atomic_fetch_sub(&c->u->small, c->bytes);
    s_unread_release(c->u);
    free(c);
}

/* ZeroMQ's free function of every reply frame: frees the buffer and uncounts it from its client. */
static void s_free_counted(void *data, void *hint)
{
    free(data);
    s_uncount(hint);
}

/* The same for a frame from the host buffer pool (a result: hostpool.h), on whichever thread ZeroMQ
 * lets it go: the buffer goes back to the pool. */
static void s_free_counted_pooled(void *data, void *hint)
{
    titan_hostbuf_free(data);
    s_uncount(hint);
}

/* The client key of j, as the fair queue uses it: its routing id, or "?" when it has no usable one. */
static void s_client_key(const titan_job *j, const void **key, size_t *len)
{
    *key = zmq_msg_data((zmq_msg_t *)&j->frames[0]);
    *len = zmq_msg_size(&j->frames[0]);
    if (*len == 0 || *len > TITAN_FAIRQ_MAX_KEY) {
        *key = "?";
        *len = 1;
    }
}

static size_t s_unread_bucket(const titan_server *s, const void *key, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ ((const unsigned char *)key)[i]) * 0x100000001b3ULL;
    return (size_t)(h & (s->unread_buckets - 1));
}

/* Forgets the clients with nothing unread, and grows the table when it is crowded. */
static void s_unread_sweep(titan_server *s)
{
    for (size_t b = 0; b < s->unread_buckets; b++) {
        for (s_unread **p = &s->unread[b]; *p;) {
            s_unread *u = *p;
            if (atomic_load(&u->bytes) == 0) {
                *p = u->next;
                s->unread_n--;
                s_unread_release(u);
            } else {
                p = &u->next;
            }
        }
    }
    if (s->unread_n * 2 > s->unread_buckets) {
        size_t n = s->unread_buckets * 2;
        while (s->unread_n * 2 > n) n *= 2;
        s_unread **t = calloc(n, sizeof(*t));
        if (t) {
            s_unread **old = s->unread;
            size_t oldn = s->unread_buckets;
            s->unread = t;
            s->unread_buckets = n;
            for (size_t b = 0; b < oldn; b++) {
                for (s_unread *u = old[b], *next; u; u = next) {
                    next = u->next;
                    size_t nb = s_unread_bucket(s, u->key, u->keylen);
                    u->next = t[nb];
                    t[nb] = u;
                }
            }
            free(old);
        }
    }
    s->unread_sweep_at = s->unread_n * 2 > 1024 ? s->unread_n * 2 : 1024;
}

/* The entry of j's client, created when `create`; NULL when there is none (or no memory). */
static s_unread *s_unread_of(titan_server *s, const titan_job *j, bool create)
{
    const void *key;
    size_t len;
    s_client_key(j, &key, &len);
    for (s_unread *u = s->unread[s_unread_bucket(s, key, len)]; u; u = u->next)
        if (u->keylen == len && memcmp(u->key, key, len) == 0) return u;
    if (!create) return NULL;
    if (s->unread_n >= s->unread_sweep_at) s_unread_sweep(s);
    s_unread *u = calloc(1, sizeof(*u));
    if (!u) return NULL;
    atomic_init(&u->bytes, 0);
    atomic_init(&u->small, 0);
    atomic_init(&u->refs, 1);
    memcpy(u->key, key, len);
    u->keylen = len;
    size_t b = s_unread_bucket(s, key, len);
    u->next = s->unread[b];
    s->unread[b] = u;
    s->unread_n++;
    return u;
}

/* Bytes of replies that j's client has not read yet. */
static uint64_t s_unread_bytes(titan_server *s, const titan_job *j)
{
    s_unread *u = s_unread_of(s, j, false);
    return u ? atomic_load(&u->bytes) : 0;
}

/* Makes m a frame of `size` bytes at data (owned by m from now on: freed once written), counted as
 * `count` bytes unread by u's client (and as small ones when `small`). Returns 0, or -ENOMEM with data
 * still the caller's. */
static int s_msg_counted(zmq_msg_t *m, void *data, size_t size, bool pooled, s_unread *u, uint64_t count,
                         bool small)
{
    s_counted *c = NULL;
    if (u) {
        c = malloc(sizeof(*c));
        if (!c) return -ENOMEM;
        c->u = u;
        c->bytes = count;
        c->small = small;
        atomic_fetch_add(&u->refs, 1);
        atomic_fetch_add(&u->bytes, count);
        if (small) atomic_fetch_add(&u->small, count);
    }
    if (zmq_msg_init_data(m, data, size, pooled ? s_free_counted_pooled : s_free_counted, c) != 0) {
        if (c) free(c);
        if (u) {
            atomic_fetch_sub(&u->bytes, count);
            if (small) atomic_fetch_sub(&u->small, count);
            s_unread_release(u);
        }
        return -ENOMEM;
    }
    return 0;
}

/* Sends the envelope and the reply of j to its client, then frees j. */
static void s_reply(titan_server *s, titan_job *j)
{
    s->served++;
    if (j->failed) {
        s->errors++;
        /* A client can fail every request it sends: at most 20 such lines a second (I/O thread only). */
        static titan_log_limit fail_limit = {.per_sec = 20};
        titan_log_limited(&fail_limit, TITAN_LOG_WARN, "request failed: op=%s code=%s: %s",
                          j->req.op ? j->req.op : "?", j->err.code ? j->err.code : "internal", j->err.msg);
    } else if (titan_log_enabled(TITAN_LOG_DEBUG)) {
        titan_log(TITAN_LOG_DEBUG, "request op=%s bytes=%zu reply_frames=%zu %.3f ms", j->req.op, j->bytes,
                  j->out.ndata, titan_clock_ms_since(j->t_recv));
    }
    if (!j->out.hdr) s_job_error(j, "internal", "the operation produced no reply");
    uint64_t sent = j->out.hdr_len; /* counted now: sending hands the buffers to ZeroMQ */
    for (size_t i = 0; i < j->out.ndata; i++) sent += j->out.size[i];
    int rc = 0;
    bool unread_full = false;
    s_unread *u = s_unread_of(s, j, true);
    /* Work admitted under --max-unread-mb is always sent. Anything else (a refusal, a light op's answer)
     * is small, but a client can ask for such replies without end: once UNREAD_SMALL_MAX of them wait
     * unread for one client, more are dropped. */
    if (!j->dispatched && u && atomic_load(&u->small) >= UNREAD_SMALL_MAX) {
        rc = -1;
        unread_full = true;
    }
    /* Never block the loop: with ROUTER_MANDATORY a gone or saturated client fails the first frame. */
    for (size_t i = 0; i < j->env && rc >= 0; i++)
        rc = zmq_msg_send(&j->frames[i], s->router, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0) {
        zmq_msg_t m;
        /* The reply buffers pass to ZeroMQ without a copy; it frees them once sent. The header frame
         * carries the count of the envelope and of ZeroMQ's bookkeeping of the message. */
        uint64_t count = j->out.hdr_len + UNREAD_MSG_OVERHEAD;
        for (size_t i = 0; i < j->env; i++) count += zmq_msg_size(&j->frames[i]);
        bool whole = false;
        if (s_msg_counted(&m, j->out.hdr, j->out.hdr_len, false, u, count, !j->dispatched) == 0) {
            j->out.hdr = NULL;
            rc = zmq_msg_send(&m, s->router, (j->out.ndata ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
            if (rc < 0) zmq_msg_close(&m);
            whole = rc >= 0 && !j->out.ndata;
            for (size_t i = 0; i < j->out.ndata && rc >= 0; i++) {
                if (s_msg_counted(&m, j->out.data[i], j->out.size[i], j->out.pooled[i], u, j->out.size[i],
                                  !j->dispatched))
                    break;
                j->out.data[i] = NULL;
                j->out.pooled[i] = false;
                rc = zmq_msg_send(&m, s->router, (i + 1 < j->out.ndata ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
                if (rc < 0) zmq_msg_close(&m);
                whole = rc >= 0 && i + 1 == j->out.ndata;
            }
        }
        /* Out of memory half way: end the message, so that the next reply does not join it. */
        if (rc >= 0 && !whole) {
            zmq_send(s->router, "", 0, ZMQ_DONTWAIT);
            rc = -1;
            errno = ENOMEM;
        }
    }
    if (rc < 0) {
        int e = unread_full ? 0 : zmq_errno();
        s->dropped++;
        /* Clients cause these: at most 20 lines a second. */
        static titan_log_limit drop_limit = {.per_sec = 20};
        if (unread_full)
            titan_log_limited(&drop_limit, TITAN_LOG_WARN, "reply dropped (op=%s): the client has not read %llu "
                              "bytes of refusals and small answers", j->req.op ? j->req.op : "?",
                              (unsigned long long)atomic_load(&u->small));
        else if (e == EHOSTUNREACH)
            titan_log_debug("reply dropped: the client has gone (op=%s)", j->req.op ? j->req.op : "?");
        else
            titan_log_limited(&drop_limit, TITAN_LOG_WARN, "reply dropped (op=%s): %s", j->req.op ? j->req.op : "?",
                              e == EAGAIN ? "the client is not reading its replies (send queue full)"
                                          : zmq_strerror(e));
    }
    titan_metrics_replied(s->metrics, j->req.op, j->failed ? j->err.code : NULL,
                          titan_clock_ns_since(j->t_recv), sent, rc >= 0);
    s_job_free(j);
}

static void *s_executor_main(void *arg)
{
    s_executor *e = arg;
    titan_job *j = NULL;
    for (;;) {
        if (!j) {
            int rc = zmq_recv(e->sock, &j, sizeof(j), 0);
            if (rc < 0) {
                if (zmq_errno() == EINTR) continue;
                break;
            }
            if (rc != sizeof(j) || !j) break; /* NULL job: shut down */
        }
        s_job_execute(e->srv, j);
        /* The job taken ahead, if any, is ours from here on; the reply says so before it starts. */
        s_done d = {j, atomic_exchange(&e->next, NULL)};
        while (zmq_send(e->sock, &d, sizeof(d), 0) < 0 && zmq_errno() == EINTR) {
        }
        j = d.next;
    }
    return NULL;
}

/* Answers j busy: its client has `unread` bytes of replies unread, --max-unread-mb or more. */
static void s_refuse_unread(titan_server *s, titan_job *j, uint64_t unread)
{
    s_job_peek_id(j);
    titan_metrics_busy(s->metrics, TITAN_BUSY_CLIENT_SHARE);
    s_job_error(j, "busy", "worker busy: this client has %llu bytes of replies it has not read, over its limit "
                "of %llu (--max-unread-mb); read them before sending more", (unsigned long long)unread,
                (unsigned long long)s->max_unread);
    s_reply(s, j);
}

/* The next ready batch of one model (batchq.h), its jobs chained by bnext, or NULL. */
static titan_job *s_pop_batch(titan_server *s)
{
    void *jobs[4096]; /* a manifest's max_batch is at most 4096 (encoder.c) */
    const char *model = NULL;
    size_t n = titan_batchq_pop(s->bq, titan_clock_mono_ns(), jobs, sizeof(jobs) / sizeof(jobs[0]), &model);
    for (size_t i = 0; i < n; i++) {
        titan_job *j = jobs[i];
        j->bnext = i + 1 < n ? jobs[i + 1] : NULL;
        j->bmodel = model;
        j->dispatched = true;
        uint64_t waited = titan_clock_ns_since(j->t_recv);
        titan_metrics_queued(s->metrics, waited);
        titan_metrics_batch_queued(s->metrics, waited);
    }
    return n ? jobs[0] : NULL;
}

/* The next request of the fair queue, or NULL. */
static titan_job *s_pop_fair(titan_server *s)
{
    while (s->qlen > 0) {
        titan_job *j = titan_fairq_pop(s->queue);
        if (!j) return NULL;
        s->qlen--;
        /* A client that stopped reading since this was queued gets no more work done until it reads. */
        uint64_t unread = s_unread_bytes(s, j);
        if (unread >= s->max_unread) {
            s->inflight_bytes -= j->bytes;
            s_refuse_unread(s, j, unread);
            continue;
        }
        j->dispatched = true;
        titan_metrics_queued(s->metrics, titan_clock_ns_since(j->t_recv));
        return j;
    }
    return NULL;
}

/* Replies to every job of j's chain (one job, or a batch) and frees them. */
static void s_reply_all(titan_server *s, titan_job *j)
{
    if (j->bmodel) titan_batchq_done(s->bq, j->bmodel);
    while (j) {
        titan_job *next = j->bnext;
        s->inflight_bytes -= j->bytes;
        s_reply(s, j);
        j = next;
    }
}

/* True for a job of this process's Redis consumer (jobs_slots.c): it came over inproc (no descriptor),
 * behind the consumer's routing frame "jSLOT.SEQ". The HTTP gateway's requests come over inproc too,
 * behind "hSLOT.SEQ" (http_bridge.c): they are clients' requests. */
static bool s_consumer_job(const titan_job *j)
{
    if (j->env != 3 || zmq_msg_get(&j->frames[j->nframes - 1], ZMQ_SRCFD) >= 0) return false;
    const zmq_msg_t *tag = &j->frames[1];
    return zmq_msg_size(tag) >= 2 && *(const char *)zmq_msg_data((zmq_msg_t *)tag) == 'j';
}

/* The look-ahead, while no executor is idle: the consumer's job at the head of the fair queue goes to the
 * `next` of a busy executor, which starts it as soon as its own job is done instead of after a round trip
 * through this thread (its reply's wake-up here, then this job's there: the jobs bench's small products
 * waited on that longer than they computed). It stays queued (qlen, its client's share) until it starts;
 * deadline_ms is checked then, and a drain takes it back (s_start_drain). Never a client's request (ZeroMQ
 * or HTTP): taken ahead, it could wait behind that executor's product while another executor frees up
 * first. None while a model's queue holds a request: its batches get an executor only when one is idle,
 * and the consumer's jobs would keep them all busy. Returns true when it took the head of the queue
 * (ahead, or refused for its client's unread replies). */
static bool s_take_ahead(titan_server *s)
{
    if (s->draining || titan_batchq_len(s->bq) > 0) return false;
    titan_job *head = titan_fairq_peek(s->queue);
    if (!head || !s_consumer_job(head)) return false;
    int e = -1;
    for (int i = 0; i < s->nexec; i++) {
        if (s->busy[i] && !s->ahead[i]) {
            e = i;
            break;
        }
    }
    if (e < 0) return false;
    titan_job *j = titan_fairq_pop(s->queue);
    uint64_t unread = s_unread_bytes(s, j);
    if (unread >= s->max_unread) {
        s->qlen--;
        s->inflight_bytes -= j->bytes;
        s_refuse_unread(s, j, unread);
        return true;
    }
    j->dispatched = true;
    s->ahead[e] = j;
    atomic_store(&s->execs[e].next, j);
    return true;
}

/* A job taken ahead starts (on its executor, or handed over its socket): it leaves the queue. */
static void s_ahead_started(titan_server *s, int i)
{
    titan_metrics_queued(s->metrics, titan_clock_ns_since(s->ahead[i]->t_recv));
    s->ahead[i] = NULL;
    s->qlen--;
}

/* Hands waiting work to idle executors: the fair queue's requests and the models' batches take turns. */
static void s_dispatch(titan_server *s)
{
    for (;;) {
        int idle = -1;
        for (int i = 0; i < s->nexec; i++) {
            if (!s->busy[i]) {
                idle = i;
                break;
            }
        }
        if (idle < 0 && s_take_ahead(s)) continue;
        if (idle < 0) break;
        titan_job *j = NULL;
        if (s->batch_turn && (j = s_pop_batch(s)) != NULL) s->batch_turn = false;
        else if ((j = s_pop_fair(s)) != NULL) s->batch_turn = true;
        else if ((j = s_pop_batch(s)) != NULL) s->batch_turn = false;
        if (!j) break;
        int sent;
        /* A signal may interrupt the send (the soak's restarts showed one in 60,000 under ASan): try again. */
        while ((sent = zmq_send(s->pairs[idle], &j, sizeof(j), 0)) < 0 && zmq_errno() == EINTR) {
        }
        if (sent != (int)sizeof(j)) {
            int why = sent < 0 ? zmq_errno() : EIO;
            for (titan_job *m = j; m; m = m->bnext)
                s_job_error(m, "internal", "could not hand the request to an executor: %s", zmq_strerror(why));
            s_reply_all(s, j);
            continue;
        }
        s->busy[idle] = true;
        s->running++;
    }
    s_gauges(s);
}

static size_t s_envelope(const titan_job *j)
{
    for (size_t i = 1; i < j->nframes && i < MAX_ENVELOPE; i++) {
        size_t n = zmq_msg_size(&j->frames[i]);
        if (n == 0) return i + 1;
        const unsigned char *d = zmq_msg_data((zmq_msg_t *)&j->frames[i]);
        /* a JSON header is never a routing id: stop at the first frame that looks like one */
        if (n > 255 || d[0] == '{' || d[0] == '[' || d[0] == ' ' || d[0] == '\t' || d[0] == '\n' || d[0] == '\r')
            break;
    }
    return 1;
}

/* Receives one whole message from the ROUTER. Returns the job, or NULL when none is waiting. */
static titan_job *s_receive(titan_server *s)
{
    titan_job *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
    uint64_t bytes = 0;
    for (;;) {
        zmq_msg_t spare;
        zmq_msg_t *m = j->nframes < MAX_MSG_FRAMES ? &j->frames[j->nframes] : &spare;
        zmq_msg_init(m);
        int rc = zmq_msg_recv(m, s->router, j->nframes == 0 && j->dropped == 0 ? ZMQ_DONTWAIT : 0);
        if (rc < 0) {
            zmq_msg_close(m);
            if (j->nframes == 0 && j->dropped == 0) {
                free(j);
                return NULL;
            }
            if (zmq_errno() == EINTR) continue;
            break;
        }
        int more = zmq_msg_more(m);
        bytes += zmq_msg_size(m);
        if (m == &spare) {
            j->dropped++;
            zmq_msg_close(m);
        } else {
            j->nframes++;
        }
        if (!more) break;
    }
    j->t_recv = titan_clock_mono_ns();
    j->env = s_envelope(j);
    for (size_t i = 0; i < j->env && i < j->nframes; i++) bytes -= zmq_msg_size(&j->frames[i]);
    titan_metrics_received(s->metrics, bytes);
    return j;
}

/* With CURVE, true when j came on a connection whose routing id is not the one the ZAP handler gave it
 * (auth.h): libzmq read ZAP's reply before the client's own metadata, whose routing id then won (a race
 * in its handshake, rare). A routing id that a client chose may be another connection's, so that
 * connection gets nothing: j is to be dropped unanswered, and the client's next connection is served. */
static bool s_foreign_routing_id(titan_server *s, const titan_job *j)
{
    if (!s->auth) return false;
    const zmq_msg_t *last = &j->frames[j->nframes - 1];
    const char *who = zmq_msg_gets(last, "User-Id");
    if (!who) return false; /* over inproc: this process's own job consumer */
    const char *rid = zmq_msg_gets(last, TITAN_AUTH_ROUTING_ID);
    size_t n = zmq_msg_size(&j->frames[0]);
    if (rid && strlen(rid) == n && memcmp(rid, zmq_msg_data((zmq_msg_t *)&j->frames[0]), n) == 0) return false;
    s->dropped++;
    static titan_log_limit limit = {.per_sec = 5};
    titan_log_limited(&limit, TITAN_LOG_WARN, "dropped a request unanswered: it came on a connection (key %s) whose "
                      "routing id the worker did not give it; that client should reconnect", who);
    return true;
}

/* Decides what to do with a fresh message: answer now, queue, or refuse. */
/* An embed or rerank request for an encoder, or an inference request for a TorchScript model with max_batch > 1,
 * joins its model's queue, to be merged with others into a batch (batchq.h): bounded by the model's "queue" (busy
 * beyond it) and by --max-inflight-bytes like any request.
 * Returns true when j was taken (queued, or refused); false for requests the fair queue takes. */
static bool s_admit_batch(titan_server *s, titan_job *j)
{
    if (!j->parsed || j->failed || !s->w->models || !j->req.op) return false;
    const char *model = json_string_value(json_object_get(j->req.hdr, "model"));
    titan_encoder_opts o;
    if (!model || !titan_models_batch_opts(s->w->models, model, j->req.op, &o)) return false; /* runs alone */
    if (s->inflight_bytes + j->bytes > s->max_inflight_bytes && s->inflight_bytes > 0) {
        titan_metrics_busy(s->metrics, TITAN_BUSY_INFLIGHT_BYTES);
        s_job_error(j, "busy", "worker busy: %llu bytes of requests in hand, the limit is %llu; retry later or send "
                    "it to another backend", (unsigned long long)s->inflight_bytes,
                    (unsigned long long)s->max_inflight_bytes);
        s_reply(s, j);
        return true;
    }
    titan_batchq_rules r = {o.max_batch, (int64_t)o.max_queue_delay_us * 1000, o.queue};
    int rc = titan_batchq_push(s->bq, model, &r, j, titan_clock_mono_ns());
    if (rc == -EBUSY) {
        titan_metrics_busy(s->metrics, TITAN_BUSY_MODEL_QUEUE);
        s_job_error(j, "busy", "worker busy: %d requests already wait for model '%s', the limit of its queue (its "
                    "manifest's \"queue\"); retry later or send it to another backend", o.queue, model);
        s_reply(s, j);
        return true;
    }
    if (rc) return false; /* out of memory for a new model's queue: it runs unbatched */
    s->inflight_bytes += j->bytes;
    s_dispatch(s);
    return true;
}

static void s_admit(titan_server *s, titan_job *j)
{
    if (s->auth) {
        /* ZAP named the client by its key when it connected; the key may have been revoked since. */
        const char *who = zmq_msg_gets(&j->frames[j->nframes - 1], "User-Id");
        /* No User-Id: the message came over inproc from this process (the job consumer);
         * a TCP peer cannot reach a CURVE socket without passing ZAP, which names it. */
        if (who && !titan_auth_admits(s->auth, who)) {
            s_job_peek_id(j);
            s_job_error(j, "unauthorized", "this client's key is no longer admitted (--allow-keys)");
            s_reply(s, j);
            return;
        }
    }
    /* The core's admission checks (request.c), shared with libtitan's in-process engine. */
    for (size_t i = j->env; i < j->nframes; i++) j->bytes += zmq_msg_size(&j->frames[i]);
    size_t body = j->dropped ? SIZE_MAX : j->nframes - j->env;
    titan_error aerr;
    if (titan_request_admit(&s->w->limits, body, j->bytes, &aerr)) {
        size_t j_dropped = j->dropped;
        if (body) s_job_peek_id(j);
        s_job_error(j, aerr.code, "%s", aerr.msg);
        s_reply(s, j);
        /* libzmq held every frame of it (about 64 bytes each, however many): give the heap back. */
        if (j_dropped > 4096) malloc_trim(0);
        return;
    }
    size_t hdr_len = zmq_msg_size(&j->frames[j->env]);
    if (hdr_len <= INLINE_HEADER_MAX) {
        if (!s_job_parse(s, j) || !j->op->heavy) {
            if (!j->failed) s_job_execute(s, j);
            s_reply(s, j);
            return;
        }
    }
    /* A client that does not read its replies gets no more work done: what it leaves unread stays in
     * memory (light ops above are answered: their replies are small, and bounded in s_reply). */
    uint64_t unread = s_unread_bytes(s, j);
    if (unread >= s->max_unread) {
        s_refuse_unread(s, j, unread);
        return;
    }
    if (s_admit_batch(s, j)) return;
    bool idle = s->running < s->nexec;
    const void *key = zmq_msg_data(&j->frames[0]);
    size_t keylen = zmq_msg_size(&j->frames[0]);
    if (keylen == 0 || keylen > TITAN_FAIRQ_MAX_KEY) keylen = 0; /* no usable routing id: count as one */
    size_t mine = keylen ? titan_fairq_client_len(s->queue, key, keylen) : 0;
    for (int i = 0; keylen && i < s->nexec; i++) /* jobs taken ahead are still queued */
        if (s->ahead[i] && zmq_msg_size(&s->ahead[i]->frames[0]) == keylen &&
            memcmp(zmq_msg_data(&s->ahead[i]->frames[0]), key, keylen) == 0)
            mine++;
    bool over_share = !idle && (int)mine >= s->client_cap;
    if ((!idle && s->qlen >= s->queue_cap) || over_share ||
        (s->inflight_bytes + j->bytes > s->max_inflight_bytes && s->inflight_bytes > 0))
        s_job_peek_id(j);
    if (!idle && s->qlen >= s->queue_cap) {
        titan_metrics_busy(s->metrics, TITAN_BUSY_QUEUE_FULL);
        s_job_error(j, "busy", "worker busy: %d requests running and %d queued; retry later or send it to another "
                    "backend", s->running, s->qlen);
        s_reply(s, j);
        return;
    }
    if (over_share) {
        /* One client may not take the whole queue: the others keep their turn. */
        titan_metrics_busy(s->metrics, TITAN_BUSY_CLIENT_SHARE);
        s_job_error(j, "busy", "worker busy: this client already has %zu requests queued, its share of the queue; "
                    "wait for answers before sending more", mine);
        s_reply(s, j);
        return;
    }
    if (s->inflight_bytes + j->bytes > s->max_inflight_bytes && s->inflight_bytes > 0) {
        titan_metrics_busy(s->metrics, TITAN_BUSY_INFLIGHT_BYTES);
        s_job_error(j, "busy", "worker busy: %llu bytes of requests in hand, the limit is %llu; retry later or send "
                    "it to another backend", (unsigned long long)s->inflight_bytes,
                    (unsigned long long)s->max_inflight_bytes);
        s_reply(s, j);
        return;
    }
    if (titan_fairq_push(s->queue, keylen ? key : "?", keylen ? keylen : 1, j) != 0) {
        s_job_error(j, "internal", "out of memory while queueing the request");
        s_reply(s, j);
        return;
    }
    s->inflight_bytes += j->bytes;
    s->qlen++;
    s_dispatch(s);
}

titan_server *titan_server_new(const titan_config *cfg, titan_worker_ctx *w, titan_metrics *metrics,
                               char *err, size_t errcap)
{
    titan_server *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    s->w = w;
    s->metrics = metrics;
    s->queue_cap = cfg->queue;
    s->client_cap = cfg->queue * cfg->max_client_share / 100;
    if (s->client_cap < 1) s->client_cap = 1;
    s->max_inflight_bytes = cfg->max_inflight_bytes;
    s->max_unread = cfg->max_unread_mb << 20;
    s->unread_buckets = 1024;
    s->unread_sweep_at = 1024;
    s->unread = calloc(s->unread_buckets, sizeof(*s->unread));
    if (!s->unread) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    s->drain_timeout_ms = cfg->drain_timeout_ms;
    s->queue = titan_fairq_new();
    s->bq = titan_batchq_new();
    if (!s->queue || !s->bq) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    s->nexec = w->threads;
    if (s->nexec < 1) s->nexec = 1;
    if (s->nexec > MAX_EXECUTORS) s->nexec = MAX_EXECUTORS;
    s->ctx = zmq_ctx_new();
    if (!s->ctx) goto fail_zmq;
    s->router = zmq_socket(s->ctx, ZMQ_ROUTER);
    if (!s->router) goto fail_zmq;
    /* A peer that sends faster than we admit is held back by TCP once its pipe holds this many. */
    int linger = 1000, rcvhwm = 1000, sndhwm = 100000, mandatory = 1;
    /* The transport drops (and disconnects) a frame over twice the request cap as soon as its size is
     * read, before it takes memory: libzmq holds a whole multipart message before we see any of it,
     * so a looser cap let 30 frames of 8 MB take 240 MB for a worker capped at 1 MB. Frames up to
     * twice the cap still reach us and get a too_large reply with the request's id. */
    int64_t maxmsg = (int64_t)(cfg->max_request_bytes * 2 + (64ULL << 10));
    zmq_setsockopt(s->router, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(s->router, ZMQ_RCVHWM, &rcvhwm, sizeof(rcvhwm));
    zmq_setsockopt(s->router, ZMQ_SNDHWM, &sndhwm, sizeof(sndhwm));
    zmq_setsockopt(s->router, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof(mandatory));
    /* Without CURVE, a client that reconnects with the same routing id (libtitan keeps one per client,
     * so that its resident tensors stay its own) takes the name over from its dead connection; so can
     * any client that copies it, replies included (PROTOCOL.md 1.3). With CURVE the ZAP handler gives
     * each connection a routing id of its own (auth.h), and no connection may take over another's:
     * one whose client's own id won a race against ZAP's (s_foreign_routing_id) must not take the
     * routing id of a live connection either, such as the job consumer's. */
    int handover = cfg->curve_secret ? 0 : 1;
    zmq_setsockopt(s->router, ZMQ_ROUTER_HANDOVER, &handover, sizeof(handover));
    zmq_setsockopt(s->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    /* IPv6 only when asked for: with it on, IPv4 endpoints are reported as [::ffff:a.b.c.d]. */
    for (int i = 0; i < cfg->nbinds; i++) {
        if (strchr(cfg->binds[i], '[')) {
            int ipv6 = 1;
            zmq_setsockopt(s->router, ZMQ_IPV6, &ipv6, sizeof(ipv6));
            break;
        }
    }
    if (cfg->heartbeat_ms > 0) {
        /* ZMTP pings find dead peers (a VM that vanished) and free their pipes. */
        int ivl = cfg->heartbeat_ms, timeout = 3 * cfg->heartbeat_ms;
        zmq_setsockopt(s->router, ZMQ_HEARTBEAT_IVL, &ivl, sizeof(ivl));
        zmq_setsockopt(s->router, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof(timeout));
        zmq_setsockopt(s->router, ZMQ_HEARTBEAT_TTL, &timeout, sizeof(timeout));
    }
    if (titan_auth_setup(s->ctx, s->router, cfg, &s->auth, err, errcap) != 0) goto fail;
    if (!s->auth && w->tensors) {
        /* Unbounded on our side: the monitor must never block ZeroMQ's I/O thread. */
        int unbounded = 0;
        s->conn_mon = zmq_socket(s->ctx, ZMQ_PAIR);
        if (!s->conn_mon || zmq_setsockopt(s->conn_mon, ZMQ_RCVHWM, &unbounded, sizeof(unbounded)) ||
            zmq_socket_monitor(s->router, "inproc://titan-router-conns", ZMQ_EVENT_DISCONNECTED) ||
            zmq_connect(s->conn_mon, "inproc://titan-router-conns"))
            goto fail_zmq;
    }
    size_t off = 0;
    for (int i = 0; i < cfg->nbinds; i++) {
        if (zmq_bind(s->router, cfg->binds[i]) != 0) {
            snprintf(err, errcap, "cannot bind %s: %s%s", cfg->binds[i], zmq_strerror(zmq_errno()),
                     zmq_errno() == EADDRINUSE ? " (another worker may be running; pick another port with --bind)"
                                               : "");
            goto fail;
        }
        char ep[512];
        size_t eplen = sizeof(ep);
        if (zmq_getsockopt(s->router, ZMQ_LAST_ENDPOINT, ep, &eplen) != 0) snprintf(ep, sizeof(ep), "%s", cfg->binds[i]);
        off += (size_t)snprintf(s->endpoints + off, sizeof(s->endpoints) - off, "%s\n", ep);
        if (off >= sizeof(s->endpoints)) off = sizeof(s->endpoints) - 1;
    }
    if (zmq_bind(s->router, TITAN_SERVER_INPROC) != 0) goto fail_zmq;
    for (int i = 0; i < s->nexec; i++) {
        char name[64];
        snprintf(name, sizeof(name), "inproc://titan-exec-%d", i);
        s->pairs[i] = zmq_socket(s->ctx, ZMQ_PAIR);
        s_executor *e = &s->execs[i];
        e->srv = s;
        e->index = i;
        e->sock = zmq_socket(s->ctx, ZMQ_PAIR);
        atomic_init(&e->next, NULL);
        if (!s->pairs[i] || !e->sock || zmq_bind(s->pairs[i], name) || zmq_connect(e->sock, name)) goto fail_zmq;
        if (pthread_create(&e->thread, NULL, s_executor_main, e) != 0) {
            snprintf(err, errcap, "cannot start executor thread %d", i);
            goto fail;
        }
        e->started = true;
    }
    return s;
fail_zmq:
    snprintf(err, errcap, "ZeroMQ setup failed: %s", zmq_strerror(zmq_errno()));
fail:
    titan_server_destroy(&s);
    return NULL;
}

void *titan_server_zmq_ctx(const titan_server *s)
{
    return s->ctx;
}

int titan_server_abandoned(const titan_server *s)
{
    return s->running;
}

const char *titan_server_endpoints(const titan_server *s)
{
    return s->endpoints;
}

void titan_server_counts(const titan_server *s, unsigned long long *served, unsigned long long *errors,
                         unsigned long long *dropped, unsigned long long *refused)
{
    *served = s->served;
    *errors = s->errors;
    *dropped = s->dropped;
    *refused = titan_auth_refused(s->auth);
}

/* Stops taking work: refuses every queued request and starts the drain clock. */
static void s_refuse_draining(titan_server *s, titan_job *j)
{
    s->inflight_bytes -= j->bytes;
    s_job_peek_id(j);
    s_job_error(j, "shutting_down", "the worker is shutting down; retry on another backend or after its restart");
    s_reply(s, j);
}

static void s_refuse_queued(void *arg, void *job)
{
    s_refuse_draining(arg, job);
}

static void s_free_queued(void *arg, void *job)
{
    s_job_free(job);
}

static void s_start_drain(titan_server *s, int64_t *t_drain)
{
    s->draining = true;
    titan_metrics_set_state(s->metrics, TITAN_STATE_DRAINING);
    *t_drain = titan_clock_mono_ns();
    titan_notify_stopping();
    if (s->running || s->qlen || titan_batchq_len(s->bq)) {
        titan_log(TITAN_LOG_INFO, "shutting down: refusing %d queued requests, finishing %d running for up to %d ms "
                  "(signal again to stop at once)", s->qlen + (int)titan_batchq_len(s->bq), s->running,
                  s->drain_timeout_ms);
        titan_notify_status("draining %d requests", s->running);
    }
    titan_job *j;
    while ((j = titan_fairq_pop(s->queue)) != NULL) {
        s->qlen--;
        s_refuse_draining(s, j);
    }
    titan_batchq_take_all(s->bq, s_refuse_queued, s);
    /* The jobs taken ahead are queued too, unless their executor has just started one. */
    for (int i = 0; i < s->nexec; i++) {
        if (!s->ahead[i] || !(j = atomic_exchange(&s->execs[i].next, NULL))) continue;
        s->ahead[i] = NULL;
        s->qlen--;
        s_refuse_draining(s, j);
    }
    s_gauges(s);
}

static void s_collect(titan_server *s, int i)
{
    s_done d = {NULL, NULL};
    int rc = zmq_recv(s->pairs[i], &d, sizeof(d), ZMQ_DONTWAIT);
    if (rc != sizeof(d) || !d.done) return;
    titan_job *next = NULL;
    if (d.next) { /* the executor took its job ahead, and runs it now */
        s_ahead_started(s, i);
    } else if (s->ahead[i] && (next = atomic_exchange(&s->execs[i].next, NULL)) != NULL) {
        /* put there after the executor looked: it goes over the socket, as to an idle executor */
        s_ahead_started(s, i);
        int sent;
        while ((sent = zmq_send(s->pairs[i], &next, sizeof(next), 0)) < 0 && zmq_errno() == EINTR) {
        }
        if (sent != (int)sizeof(next)) {
            int why = sent < 0 ? zmq_errno() : EIO;
            s_job_error(next, "internal", "could not hand the request to an executor: %s", zmq_strerror(why));
            s_reply_all(s, next);
            next = NULL;
        }
    }
    if (!d.next && !next) {
        s->busy[i] = false;
        s->running--;
    }
    s_reply_all(s, d.done);
    s_gauges(s);
}

int titan_server_run(titan_server *s, volatile sig_atomic_t *stop, int wake_fd)
{
    zmq_pollitem_t items[3 + MAX_EXECUTORS];
    memset(items, 0, sizeof(items));
    items[0].socket = s->router;
    items[0].events = ZMQ_POLLIN;
    for (int i = 0; i < s->nexec; i++) {
        items[1 + i].socket = s->pairs[i];
        items[1 + i].events = ZMQ_POLLIN;
    }
    int nitems = 1 + s->nexec;
    if (wake_fd >= 0) {
        items[nitems].fd = wake_fd;
        items[nitems].events = ZMQ_POLLIN;
        nitems++;
    }
    int mon = -1;
    int mon_fd = -1;
    size_t mon_fd_len = sizeof(mon_fd);
    if (s->conn_mon && zmq_getsockopt(s->conn_mon, ZMQ_FD, &mon_fd, &mon_fd_len) == 0) {
        /* Polled by its descriptor, which ZeroMQ makes readable when it has news for the socket, rather than
         * as a socket: zmq_poll asks every socket for its events at each turn (two system calls), and
         * disconnections are rare. s_conn_events reads until nothing is left, so the descriptor signals the
         * next one. */
        mon = nitems++;
        items[mon].fd = mon_fd;
        items[mon].events = ZMQ_POLLIN;
    }
    int rc = 0;
    int wd_ms = titan_notify_watchdog_interval_ms();
    int64_t t_wd = titan_clock_mono_ns(), t_drain = 0;
    /* Serve until stopped, then drain: new requests are answered "shutting_down" while the
     * running ones finish, for at most drain_timeout_ms. */
    for (;;) {
        if (*stop && !s->draining) s_start_drain(s, &t_drain);
        if (s->draining && (s->running == 0 || titan_clock_ms_since(t_drain) >= s->drain_timeout_ms)) break;
        long timeout = -1;
        if (wd_ms > 0) {
            /* wake for the next ping when it is due, not a whole interval after the last event */
            double wd_left = wd_ms - titan_clock_ms_since(t_wd);
            timeout = wd_left > 0 ? (long)wd_left + 1 : 0;
        }
        if (s->draining) {
            long left = (long)(s->drain_timeout_ms - titan_clock_ms_since(t_drain)) + 1;
            if (timeout < 0 || left < timeout) timeout = left;
        }
        if (!s->draining && s->running < s->nexec) {
            /* A model's queue waits for others while a batch of it runs, at most its delay: wake then. */
            int64_t due = titan_batchq_next_ns(s->bq);
            if (due >= 0) {
                int64_t left_ns = due - titan_clock_mono_ns();
                long left = left_ns <= 0 ? 0 : (long)((left_ns + 999999) / 1000000);
                if (timeout < 0 || left < timeout) timeout = left;
            }
        }
        int n = zmq_poll(items, nitems, timeout);
        if (n < 0) {
            if (zmq_errno() == EINTR) continue;
            rc = -zmq_errno();
            titan_log(TITAN_LOG_ERROR, "poll failed: %s", zmq_strerror(-rc));
            break;
        }
        if (wd_ms > 0 && titan_clock_ms_since(t_wd) >= wd_ms) {
            /* The loop is alive and turning: tell systemd's watchdog. */
            titan_notify_watchdog();
            t_wd = titan_clock_mono_ns();
        }
        for (int i = 0; i < s->nexec; i++)
            if (items[1 + i].revents & ZMQ_POLLIN) s_collect(s, i);
        if (mon >= 0 && (items[mon].revents & ZMQ_POLLIN)) s_conn_events(s);
        if (items[0].revents & ZMQ_POLLIN) {
            /* Take a bounded batch so executors' replies are never starved. */
            for (int k = 0; k < 256; k++) {
                titan_job *j = s_receive(s);
                if (!j) break;
                if (s_foreign_routing_id(s, j)) {
                    s_job_free(j);
                    continue;
                }
                s_conn_seen(s, j);
                if (s->draining) {
                    s_job_peek_id(j);
                    s_job_error(j, "shutting_down",
                                "the worker is shutting down; retry on another backend or after its restart");
                    s_reply(s, j);
                } else {
                    s_admit(s, j);
                }
            }
        }
        if (!s->draining) s_dispatch(s);
    }
    if (s->running)
        titan_log(TITAN_LOG_WARN, "drain timeout (%d ms) passed with %d requests still running; exiting without "
                  "their replies", s->drain_timeout_ms, s->running);
    return rc;
}

void titan_server_destroy(titan_server **sp)
{
    if (!sp || !*sp) return;
    titan_server *s = *sp;
    for (int i = 0; i < MAX_EXECUTORS; i++) {
        s_executor *e = &s->execs[i];
        if (e->started) {
            titan_job *none = NULL;
            if (s->busy[i]) {
                /* still computing after the grace period: do not wait on it */
                pthread_detach(e->thread);
            } else {
                zmq_send(s->pairs[i], &none, sizeof(none), 0);
                pthread_join(e->thread, NULL);
                zmq_close(e->sock);
            }
        } else if (e->sock) {
            zmq_close(e->sock);
        }
        if (s->pairs[i] && !(e->started && s->busy[i])) zmq_close(s->pairs[i]);
    }
    titan_job *j;
    while (s->queue && (j = titan_fairq_pop(s->queue)) != NULL) s_job_free(j);
    titan_fairq_destroy(&s->queue);
    if (s->bq) titan_batchq_take_all(s->bq, s_free_queued, NULL);
    titan_batchq_free(&s->bq);
    if (s->conn_mon) zmq_close(s->conn_mon);
    if (s->router) zmq_close(s->router);
    titan_auth_destroy(&s->auth);
    bool detached = false;
    for (int i = 0; i < MAX_EXECUTORS; i++) detached |= s->execs[i].started && s->busy[i];
    /* zmq_ctx_term would wait forever on a detached executor's socket; the process is exiting anyway. */
    if (s->ctx && !detached) zmq_ctx_term(s->ctx);
    /* Frames still in ZeroMQ's hands (none once the context ended) hold their own references. */
    for (size_t b = 0; s->unread && b < s->unread_buckets; b++) {
        for (struct s_unread *u = s->unread[b], *next; u; u = next) {
            next = u->next;
            s_unread_release(u);
        }
    }
    free(s->unread);
    free(s);
    *sp = NULL;
}
