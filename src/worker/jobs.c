/* jobs.c - the batch-job consumer: one thread that reads job ids from Redis Streams, keeps up to
 * --jobs-inflight of them running through the worker's own ROUTER (TITAN_SERVER_INPROC) and stores
 * their replies (docs/JOBS.md). */
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <zmq.h>

#include "jobs.h"
#include "jsonscan.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "request.h"
#include "server.h"

#define BLOCK_MS 500            /* longest XREADGROUP BLOCK: bounds how long stop waits */
/* A Redis that sends nothing for this long on an open connection is taken as gone (stopped, or cut
 * off); any command, BLOCK included. Not less: a Redis with appendfsync always on a busy disk, or one
 * sending a large job's record on a loaded machine, can be silent for seconds, and a start script
 * whose reply is given up on leaves its job "running" until the visibility timeout. Stop does not wait
 * for it (STOP_GRACE_MS). */
#define COMMAND_TIMEOUT_MS 30000
#define CONNECT_TIMEOUT_MS 1000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define BUSY_RETRY_MS 50   /* wait before resending a job the worker answered "busy" */
#define STOP_GRACE_MS 1500 /* then a stuck Redis call is cut by shutting its socket down */
#define MAX_JOB_FRAMES (TITAN_MAX_BODY_FRAMES - 1)
#define MAX_REPLY_FRAMES TITAN_MAX_BODY_FRAMES
#define MAX_ID_LEN 128
/* With jobs in flight and the queues empty, look for new entries again after 5 ms, doubling up to
 * 200 ms while nothing comes (a slot that frees up looks at once). */
#define IDLE_READ_MIN_MS 5
#define IDLE_READ_MAX_MS 200
/* Bytes of requests (start scripts) or results (store scripts) in one pipeline. Redis runs a
 * pipeline without a break, and no entry's idle time is reset meanwhile: bounding it by bytes,
 * not by jobs, keeps a batch of large jobs from outlasting the visibility timeout. */
#define PIPE_BYTES (4 << 20)
#define STORE_BATCH 64      /* outcomes one store script records */
#define DEFAULT_INFLIGHT 16 /* jobs in hand without --jobs-inflight (or the executors, if more) */

enum { S_HIGH = 0, S_NORMAL = 1 };

typedef struct s_slot s_slot; /* one job in flight */

struct titan_jobs_consumer {
    pthread_t thread;
    bool started;
    atomic_int stop;
    pthread_mutex_t lock; /* guards `redis` against the shutdown() in titan_jobs_consumer_stop */
    redisContext *redis;  /* NULL while disconnected */
    void *zmq_ctx;        /* borrowed */
    void *dealer;         /* the thread's socket to TITAN_SERVER_INPROC */
    s_slot *slots;        /* 2 x inflight: a blocking read of both streams may return COUNT entries of each */
    int nslots, inflight; /* inflight: --jobs-inflight, how many jobs the consumer keeps in hand */
    int used;             /* slots not free */
    int *order;           /* 2 x nslots: the slots of a pipeline, in the order of its replies */
    double next_read;     /* with jobs in flight, when to look for new entries again */
    int idle_read_ms;     /* the wait before that, while reads come back empty */
    double req_bytes;     /* recent request size (peak, decaying): sizes the start pipelines */
    double max_bytes;     /* --max-inflight-bytes: no new job while the requests in hand hold this */
    titan_redis_scripts scripts; /* the scripts' SHA1s on this connection (redis.h) */
    titan_redis_url url;
    char url_text[320]; /* for logs: never the password */
    char prefix[TITAN_REDIS_MAX_PREFIX + 1];
    char stream[2][TITAN_REDIS_MAX_PREFIX + 16];
    char dead[TITAN_REDIS_MAX_PREFIX + 16];
    char group[72];
    char consumer[320];
    int visibility_ms, max_attempts, ttl_s;
    bool winding_down; /* the server answered "shutting_down", or the worker is stopping: take no more jobs */
    volatile sig_atomic_t *_Atomic draining; /* main's stop flag (titan_jobs_consumer_watch) */
    titan_metrics *metrics;                  /* borrowed; may be NULL */
    bool outage;                             /* Redis is away; logged once */
    double outage_since, next_connect;
    int backoff_ms;
    char cursor[2][64]; /* XAUTOCLAIM scan position per stream */
    bool scanned[2];
    double next_reclaim;
};

/* ---- small helpers ---- */

static double s_mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static long long s_unix_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static bool s_stopping(titan_jobs_consumer *c)
{
    return atomic_load(&c->stop) != 0;
}

/* True once the worker is stopping: jobs in hand finish, no new one starts. */
static bool s_draining(titan_jobs_consumer *c)
{
    volatile sig_atomic_t *f = atomic_load(&c->draining);
    if (!c->winding_down && f && *f) {
        c->winding_down = true;
        titan_log(TITAN_LOG_INFO, "jobs: the worker is stopping; taking no more jobs");
    }
    return c->winding_down;
}

/* Sleeps up to ms, in slices, returning early once stop is asked for. */
static void s_nap(titan_jobs_consumer *c, double ms)
{
    double end = s_mono_ms() + ms;
    for (;;) {
        double left = end - s_mono_ms();
        if (left <= 0 || s_stopping(c)) return;
        if (left > 50) left = 50;
        struct timespec ts = {0, (long)(left * 1e6)};
        nanosleep(&ts, NULL);
    }
}

int titan_jobs_consumer_check(const titan_config *cfg, char *err, size_t errcap)
{
    if (!cfg->redis_url) return 0;
    titan_redis_url u;
    char why[400];
    if (titan_redis_url_parse(cfg->redis_url, &u, why, sizeof(why)) != 0) {
        snprintf(err, errcap, "--redis%s%s", why[0] == '\'' ? " " : ": ", why);
        return -EINVAL;
    }
    int rc = 0;
    if (cfg->redis_password && titan_redis_url_set_password(&u, cfg->redis_password) != 0) {
        snprintf(err, errcap, "--redis-password must have 1 to %d bytes", TITAN_REDIS_MAX_CRED);
        rc = -EINVAL;
    }
    titan_redis_url_wipe(&u);
    return rc;
}

/* ---- Redis connection ---- */

static void s_disconnect(titan_jobs_consumer *c)
{
    pthread_mutex_lock(&c->lock);
    redisContext *r = c->redis;
    c->redis = NULL;
    pthread_mutex_unlock(&c->lock);
    c->scripts.loaded = false;
    if (r) redisFree(r);
}

/* Logs the start of an outage once, and drops the connection. */
static void s_lost(titan_jobs_consumer *c, const char *why)
{
    if (!c->outage) {
        c->outage = true;
        c->outage_since = s_mono_ms();
        titan_log(TITAN_LOG_WARN, "jobs: redis %s is unavailable (%s); retrying until it is back",
                  c->url_text, why);
    }
    titan_metrics_set_jobs_redis_up(c->metrics, false);
    s_disconnect(c);
}

/* Reads the reply to the oldest command sent and not yet answered. Returns it (the caller frees; an
 * error reply included), or NULL when the connection failed, which it then drops, together with the
 * replies still owed to later commands. */
static redisReply *s_get(titan_jobs_consumer *c)
{
    if (!c->redis) return NULL;
    void *v = NULL;
    if (redisGetReply(c->redis, &v) != REDIS_OK || !v) {
        char why[160];
        snprintf(why, sizeof(why), "%s", c->redis->errstr[0] ? c->redis->errstr : "connection lost");
        s_lost(c, why);
        return NULL;
    }
    redisReply *r = v;
    if (titan_redis_reply_is_unavailable(r)) {
        /* Redis is up but cannot serve yet (reading its AOF after a restart): an outage too. */
        s_lost(c, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Queues a command, to be sent with the next s_get (pipelining). Returns 0, or -1 when
 * disconnected or out of memory (the connection is then dropped: its pipeline is incomplete). */
static int s_append(titan_jobs_consumer *c, int argc, const char **argv, const size_t *lens)
{
    if (!c->redis) return -1;
    if (redisAppendCommandArgv(c->redis, argc, argv, lens) != REDIS_OK) {
        s_lost(c, "out of memory");
        return -1;
    }
    return 0;
}

/* Runs one command. Returns the reply (the caller frees; an error reply included), or NULL when
 * the connection failed, which it then drops. Never call it with replies still owed (s_append). */
static redisReply *s_cmd(titan_jobs_consumer *c, int argc, const char **argv, const size_t *lens)
{
    if (s_append(c, argc, argv, lens) != 0) return NULL;
    return s_get(c);
}

/* The same with NUL-terminated arguments, NULL-terminated list. */
static redisReply *s_cmdv(titan_jobs_consumer *c, ...)
{
    const char *argv[16];
    size_t lens[16];
    int argc = 0;
    va_list ap;
    va_start(ap, c);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && argc < 16) {
        argv[argc] = a;
        lens[argc++] = strlen(a);
    }
    va_end(ap);
    return s_cmd(c, argc, argv, lens);
}

/* Creates the consumer group on both queues; an existing group is fine. Returns 0 or -1. */
static int s_ensure_groups(titan_jobs_consumer *c)
{
    for (int s = 0; s < 2; s++) {
        /* From 0, not $: jobs submitted before any worker ever ran must still be served. */
        redisReply *r = s_cmdv(c, "XGROUP", "CREATE", c->stream[s], c->group, "0", "MKSTREAM", (char *)NULL);
        if (!r) return -1;
        if (titan_redis_reply_is_error(r, NULL) && !titan_redis_reply_is_error(r, "BUSYGROUP")) {
            /* e.g. WRONGTYPE: the key exists and is not a stream. Retried like an outage. */
            char why[300];
            snprintf(why, sizeof(why), "cannot create consumer group %s on %s: %s", c->group, c->stream[s],
                     r->str);
            freeReplyObject(r);
            s_lost(c, why);
            return -1;
        }
        freeReplyObject(r);
    }
    return 0;
}

/* Connects (AUTH, SELECT, groups) when disconnected, sleeping the backoff first after a failure.
 * Returns 0 when connected. */
static int s_connect(titan_jobs_consumer *c)
{
    if (c->redis) return 0;
    double now = s_mono_ms();
    if (now < c->next_connect) {
        s_nap(c, c->next_connect - now);
        if (s_stopping(c)) return -1;
    }
    titan_redis_timeouts t = {.connect_ms = CONNECT_TIMEOUT_MS, .command_ms = COMMAND_TIMEOUT_MS, .keepalive = true};
    redisContext *r = NULL;
    char why[512] = "";
    if (titan_redis_open(&c->url, &t, &r, why, sizeof(why)) == 0) {
        /* Published before the first command: a stop cuts a login to a frozen Redis short too. */
        pthread_mutex_lock(&c->lock);
        c->redis = r;
        pthread_mutex_unlock(&c->lock);
        if (titan_redis_login(r, &c->url, COMMAND_TIMEOUT_MS, why, sizeof(why)) != 0 && !why[0])
            snprintf(why, sizeof(why), "connection lost");
        if (!why[0]) {
            /* A command that needs a password shows a missing AUTH at once, not on the first job. */
            redisReply *rep = s_cmdv(c, "PING", (char *)NULL);
            if (rep && rep->type == REDIS_REPLY_ERROR)
                snprintf(why, sizeof(why), "%s", rep->str);
            else if (!rep)
                snprintf(why, sizeof(why), "connection lost");
            if (rep) freeReplyObject(rep);
        }
        if (!why[0] && s_ensure_groups(c) != 0) snprintf(why, sizeof(why), "consumer groups not created");
        /* Without the scripts (SCRIPT refused, say) they go by EVAL. */
        int lrc = !why[0] && c->redis ? titan_redis_scripts_load(c->redis, &c->scripts) : 0;
        if (lrc != 0) titan_redis_io_error(c->redis, -lrc, COMMAND_TIMEOUT_MS, why, sizeof(why));
    } else if (!why[0]) {
        snprintf(why, sizeof(why), "cannot connect");
    }
    if (why[0]) {
        s_lost(c, why);
        c->next_connect = s_mono_ms() + c->backoff_ms;
        c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
        return -1;
    }
    if (c->outage)
        titan_log(TITAN_LOG_INFO, "jobs: redis %s is back after %.1f s", c->url_text,
                  (s_mono_ms() - c->outage_since) / 1e3);
    c->outage = false;
    titan_metrics_set_jobs_redis_up(c->metrics, true);
    c->backoff_ms = BACKOFF_MIN_MS;
    c->next_connect = 0;
    return 0;
}

/* ---- running jobs: up to c->inflight at once, each on its own slot ---- */

/* Keeps the Redis reply that holds a job's request frames alive while ZeroMQ messages point
 * into it: the slot holds one reference, and each message sent holds one. */
typedef struct {
    atomic_int refs;
    redisReply *reply;
} s_holder;

static void s_holder_release(s_holder *h)
{
    if (atomic_fetch_sub(&h->refs, 1) == 1) {
        freeReplyObject(h->reply);
        free(h);
    }
}

static void s_holder_free_fn(void *data, void *hint)
{
    (void)data;
    s_holder_release(hint);
}

typedef enum { O_DONE, O_FAILED, O_RETRY, O_REVERT, O_ABANDON } s_kind;

typedef struct {
    s_kind kind;
    zmq_msg_t frames[MAX_REPLY_FRAMES]; /* the reply body: header, tensor frames */
    int nframes;
    char code[32];
    char error[512];
} s_outcome;

static void s_outcome_clear(s_outcome *o)
{
    for (int i = 0; i < o->nframes; i++)
        zmq_msg_close(&o->frames[i]);
    o->nframes = 0;
    o->kind = O_DONE;
    o->code[0] = o->error[0] = '\0';
}

/* A slot's life: FREE -> READ (its entry is ours, not started yet) -> STARTING (its start script
 * is in the pipeline) -> SENT (the request is with the server) <-> BUSY (answered "busy": sent
 * again at retry_at) -> DONE (the outcome is known and waits to be recorded) -> RECORD (logged,
 * its outcome on its way to Redis) -> FREE.
 * All requests go over the one DEALER, each behind a routing frame "jSLOT.SEQ" that the server's
 * reply carries back (an envelope, docs/PROTOCOL.md): SEQ changes with every use of the slot, so a
 * late reply to an abandoned request never lands on the slot's next job. For the server's fair
 * queue the jobs are one client, as they were with one job at a time. */
typedef enum { SL_FREE, SL_READ, SL_STARTING, SL_SENT, SL_BUSY, SL_DONE, SL_RECORD } s_state;

struct s_slot {
    s_state state;
    unsigned seq; /* this use of the slot, in its routing frame */
    int stream;
    char entry[48]; /* the stream entry id: "MS-SEQ", at most 41 characters */
    char id[MAX_ID_LEN + 1];
    char key[MAX_ID_LEN + 128];
    double next_hb;  /* when the entry's idle time must be reset next (monotonic ms) */
    double retry_at; /* BUSY: when to send the request again */
    int attempt;
    s_holder *h; /* the start script's reply: the request header and frames */
    redisReply *parts[1 + MAX_JOB_FRAMES];
    int nparts;
    s_outcome o;
};

/* How many more jobs the consumer may take up now: none while the worker has answered one in hand
 * "busy" (it holds all it takes) or the requests in hand hold --max-inflight-bytes, and no more than
 * fit in what is left of it, so that a deep --jobs-inflight of large jobs neither fills memory nor
 * keeps jobs from other workers. */
static int s_room(const titan_jobs_consumer *c)
{
    if (c->used >= c->inflight) return 0;
    double bytes = 0;
    for (int i = 0; i < c->nslots; i++) {
        const s_slot *sl = &c->slots[i];
        if (sl->state == SL_BUSY) return 0;
        for (int k = 0; k < sl->nparts; k++)
            if (sl->parts[k]) bytes += (double)sl->parts[k]->len;
    }
    if (bytes >= c->max_bytes) return 0;
    int room = c->inflight - c->used;
    /* As many as fit the bytes left at the recent request size; one at a time while that is unknown. */
    double fit = c->req_bytes > 0 ? (c->max_bytes - bytes) / c->req_bytes + 1 : 1;
    return fit < room ? (int)fit : room;
}

static void *s_dealer_open(void *zmq_ctx)
{
    void *d = zmq_socket(zmq_ctx, ZMQ_DEALER);
    int linger = 0;
    if (d && (zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
              zmq_connect(d, TITAN_SERVER_INPROC) != 0)) {
        zmq_close(d);
        d = NULL;
    }
    return d;
}

static s_slot *s_slot_take(titan_jobs_consumer *c)
{
    for (int i = 0; i < c->nslots; i++) {
        s_slot *sl = &c->slots[i];
        if (sl->state != SL_FREE) continue;
        sl->state = SL_READ;
        sl->seq++;
        sl->attempt = 0;
        sl->nparts = 0;
        sl->h = NULL;
        s_outcome_clear(&sl->o);
        c->used++;
        return sl;
    }
    return NULL;
}

static void s_slot_release(titan_jobs_consumer *c, s_slot *sl)
{
    s_outcome_clear(&sl->o);
    if (sl->h) s_holder_release(sl->h);
    sl->h = NULL;
    sl->nparts = 0;
    sl->state = SL_FREE;
    c->used--;
}

/* Sends [tag, "", header, frames...] without copying the frames. Returns 0, -EAGAIN when nothing
 * was sent (the inproc pipe is full), or another -errno: the socket is then unusable. */
static int s_send(titan_jobs_consumer *c, s_slot *sl)
{
    char tag[32];
    int tl = snprintf(tag, sizeof(tag), "j%d.%u", (int)(sl - c->slots), sl->seq);
    if (!c->dealer) return -ENOTSOCK;
    if (zmq_send(c->dealer, tag, (size_t)tl, ZMQ_SNDMORE | ZMQ_DONTWAIT) != tl) return -zmq_errno();
    if (zmq_send(c->dealer, "", 0, ZMQ_SNDMORE) != 0) {
        int e = zmq_errno();
        return e == EAGAIN ? -EPIPE : -e;
    }
    for (int i = 0; i < sl->nparts; i++) {
        zmq_msg_t m;
        atomic_fetch_add(&sl->h->refs, 1);
        /* hiredis gives "" (never NULL) for an empty string, so the pointer is always valid */
        if (zmq_msg_init_data(&m, sl->parts[i]->str, sl->parts[i]->len, s_holder_free_fn, sl->h) != 0) {
            s_holder_release(sl->h);
            return -zmq_errno();
        }
        if (zmq_msg_send(&m, c->dealer, i + 1 < sl->nparts ? ZMQ_SNDMORE : 0) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&m);
            return e == EAGAIN ? -EPIPE : -e;
        }
    }
    return 0;
}

/* The socket failed (err): a half-sent or half-received message cannot be taken back, so a new
 * socket replaces it, and the replies owed on the old one are lost: every job waiting for one is
 * given up, its entry pending for another attempt after the visibility timeout. */
static void s_reset_dealer(titan_jobs_consumer *c, int err)
{
    titan_log(TITAN_LOG_ERROR, "jobs: the socket to the worker failed: %s", zmq_strerror(err));
    if (c->dealer) zmq_close(c->dealer);
    c->dealer = s_dealer_open(c->zmq_ctx);
    for (int i = 0; i < c->nslots; i++) {
        s_slot *sl = &c->slots[i];
        if (sl->state != SL_SENT) continue;
        s_outcome_clear(&sl->o);
        sl->o.kind = O_ABANDON;
        sl->state = SL_DONE;
    }
}

/* Sends the request of sl: SENT, BUSY (the inproc pipe is full: as good as busy), or given up. */
static void s_dispatch(titan_jobs_consumer *c, s_slot *sl)
{
    int rc = s_send(c, sl);
    if (rc == 0) {
        sl->state = SL_SENT;
    } else if (rc == -EAGAIN) {
        sl->state = SL_BUSY;
        sl->retry_at = s_mono_ms() + BUSY_RETRY_MS;
    } else {
        sl->state = SL_SENT; /* given up with the others in s_reset_dealer */
        s_reset_dealer(c, -rc);
    }
}

/* The slot whose request the routing frame m names, or NULL (a stale or foreign reply). */
static s_slot *s_slot_of(titan_jobs_consumer *c, zmq_msg_t *m)
{
    char tag[32];
    size_t n = zmq_msg_size(m);
    if (n < 4 || n >= sizeof(tag)) return NULL;
    memcpy(tag, zmq_msg_data(m), n);
    tag[n] = '\0';
    char *dot, *end;
    long idx = strtol(tag + 1, &dot, 10);
    if (tag[0] != 'j' || *dot != '.' || idx < 0 || idx >= c->nslots) return NULL;
    unsigned long seq = strtoul(dot + 1, &end, 10);
    s_slot *sl = &c->slots[idx];
    if (*end || seq != sl->seq || sl->state != SL_SENT) return NULL;
    return sl;
}

static int s_classify(s_outcome *o);

/* Takes every reply waiting on the socket to its slot: DONE, or BUSY when the answer is "busy".
 * Returns 0, or -errno when the socket failed. */
static int s_collect(titan_jobs_consumer *c)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->dealer, ZMQ_DONTWAIT) < 0) {
            int err = zmq_errno();
            zmq_msg_close(&m);
            if (err == EINTR) continue;
            return err == EAGAIN ? 0 : -err;
        }
        s_slot *sl = s_slot_of(c, &m);
        s_outcome *o = sl ? &sl->o : NULL;
        int more = zmq_msg_more(&m);
        zmq_msg_close(&m);
        bool first = true;
        while (more) { /* the rest of a message is there once its first frame is */
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->dealer, 0) < 0) {
                int err = zmq_errno();
                zmq_msg_close(&m);
                if (err == EINTR) continue;
                return -err;
            }
            more = zmq_msg_more(&m);
            if (first && zmq_msg_size(&m) == 0) {
                zmq_msg_close(&m); /* the delimiter */
            } else if (o && o->nframes < MAX_REPLY_FRAMES) {
                o->frames[o->nframes++] = m;
            } else {
                zmq_msg_close(&m);
            }
            first = false;
        }
        if (!sl) continue;
        if (s_classify(o) == 1) {
            /* busy: the entry stays pending (and ours) while the worker's queue is full */
            s_outcome_clear(o);
            sl->state = SL_BUSY;
            sl->retry_at = s_mono_ms() + BUSY_RETRY_MS;
        } else {
            sl->state = SL_DONE;
        }
    }
}

static bool s_final_code(const char *code)
{
    static const char *final[] = {"bad_request", "unknown_op", "too_large", "unsupported", "unauthorized"};
    for (size_t i = 0; i < sizeof(final) / sizeof(final[0]); i++)
        if (strcmp(code, final[i]) == 0) return true;
    return false;
}

/* Sorts a reply into done / failed / retry / busy (returns 1) / shutting_down. */
static int s_classify(s_outcome *o)
{
    if (o->nframes == 0) {
        o->kind = O_RETRY;
        snprintf(o->code, sizeof(o->code), "internal");
        snprintf(o->error, sizeof(o->error), "the worker sent an empty reply");
        return 0;
    }
    /* Only "error" and "code" matter here, and a result may be large and hold NaN or Infinity tokens,
     * which jansson refuses: find those two members without parsing the rest. */
    const char *txt = zmq_msg_data(&o->frames[0]), *ev = NULL, *cv = NULL;
    size_t len = zmq_msg_size(&o->frames[0]), elen = 0, clen = 0;
    int found = titan_json_find_member(txt, len, "error", len, &ev, &elen);
    if (found == -EINVAL) {
        o->kind = O_RETRY;
        snprintf(o->code, sizeof(o->code), "internal");
        snprintf(o->error, sizeof(o->error), "the worker's reply header is not a JSON object");
        return 0;
    }
    if (found == -ENOENT) {
        o->kind = O_DONE;
        return 0;
    }
    json_t *err = json_loadb(ev, elen, JSON_DECODE_ANY, NULL);
    json_t *code = titan_json_find_member(txt, len, "code", len, &cv, &clen) == 0
                       ? json_loadb(cv, clen, JSON_DECODE_ANY, NULL)
                       : NULL;
    snprintf(o->code, sizeof(o->code), "%s", json_is_string(code) ? json_string_value(code) : "internal");
    snprintf(o->error, sizeof(o->error), "%s", json_is_string(err) ? json_string_value(err) : "error");
    if (err) json_decref(err);
    if (code) json_decref(code);
    if (strcmp(o->code, "busy") == 0) return 1;
    if (strcmp(o->code, "shutting_down") == 0)
        o->kind = O_REVERT;
    else
        o->kind = s_final_code(o->code) ? O_FAILED : O_RETRY;
    return 0;
}

/* Resets the idle time of every entry in hand whose last reset is a third of the visibility
 * timeout ago (pipelined), so that no worker reclaims a job that is still running or waiting for
 * admission. Short jobs never need it. */
static void s_heartbeats(titan_jobs_consumer *c)
{
    if (!c->redis) return;
    double now = s_mono_ms();
    int n = 0;
    for (int i = 0; i < c->nslots; i++) {
        s_slot *sl = &c->slots[i];
        if (sl->state == SL_FREE || sl->state == SL_STARTING || now < sl->next_hb) continue;
        const char *argv[] = {"XCLAIM", c->stream[sl->stream], c->group, c->consumer, "0", sl->entry,
                              "JUSTID"};
        if (s_append(c, 7, argv, NULL) != 0) break;
        sl->next_hb = now + c->visibility_ms / 3.0;
        n++;
    }
    for (int i = 0; i < n; i++) {
        redisReply *r = s_get(c);
        if (!r) break;
        freeReplyObject(r);
    }
}

/* Queues the retry or revert script for sl (an attempt that did not end the job). Returns 0 or -1. */
static int s_append_requeue(titan_jobs_consumer *c, s_slot *sl)
{
    const s_outcome *o = &sl->o;
    if (o->kind == O_RETRY) {
        const char *argv[] = {NULL, NULL, "1", sl->key, o->error, o->code};
        titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_RETRY, argv, NULL);
        return s_append(c, 6, argv, NULL);
    }
    const char *argv[] = {NULL, NULL, "1", sl->key, c->consumer};
    titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_REVERT, argv, NULL);
    return s_append(c, 5, argv, NULL);
}

/* Queues one store script (which also acknowledges the entries) for the n done or failed slots
 * order[0..n). Returns 0 or -1. */
static int s_append_store(titan_jobs_consumer *c, const int *order, int n)
{
    size_t cap = 3 + 2 * (size_t)n + 3 + (size_t)n * (6 + MAX_REPLY_FRAMES);
    const char **argv = malloc(cap * sizeof(*argv));
    size_t *lens = malloc(cap * sizeof(*lens));
    char(*rn)[12] = malloc((size_t)n * sizeof(*rn));
    if (!argv || !lens || !rn) {
        free(argv);
        free(lens);
        free(rn);
        s_lost(c, "out of memory");
        return -1;
    }
    char nkeys[16], now[32], ttl[16];
    snprintf(nkeys, sizeof(nkeys), "%d", 2 * n);
    snprintf(now, sizeof(now), "%lld", s_unix_ms());
    snprintf(ttl, sizeof(ttl), "%d", c->ttl_s);
    int a = 0;
#define ARG(p, l) (argv[a] = (p), lens[a++] = (l))
#define ARGS(p) ARG(p, strlen(p))
    titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_STORE, argv, lens);
    a = 2;
    ARGS(nkeys);
    for (int k = 0; k < n; k++) {
        const s_slot *sl = &c->slots[order[k]];
        ARGS(sl->key);
        ARGS(c->stream[sl->stream]);
    }
    ARGS(c->group);
    ARGS(now);
    ARGS(ttl);
    for (int k = 0; k < n; k++) {
        s_slot *sl = &c->slots[order[k]];
        s_outcome *o = &sl->o;
        bool done = o->kind == O_DONE;
        snprintf(rn[k], sizeof(rn[k]), "%d", o->nframes > 0 ? o->nframes - 1 : 0);
        ARGS(sl->entry);
        ARGS(done ? "done" : "failed");
        if (o->nframes > 0)
            ARG(zmq_msg_data(&o->frames[0]), zmq_msg_size(&o->frames[0]));
        else
            ARGS("");
        ARGS(done ? "" : o->error);
        ARGS(done ? "" : o->code);
        ARGS(rn[k]);
        for (int i = 1; i < o->nframes; i++)
            ARG(zmq_msg_data(&o->frames[i]), zmq_msg_size(&o->frames[i]));
    }
#undef ARG
#undef ARGS
    int rc = s_append(c, a, argv, lens);
    free(argv);
    free(lens);
    free(rn);
    return rc;
}

/* Logs what Redis answered to the outcome of sl. */
static void s_recorded(titan_jobs_consumer *c, const s_slot *sl, const redisReply *r)
{
    const s_outcome *o = &sl->o;
    if (o->kind == O_RETRY || o->kind == O_REVERT) {
        if (r->type == REDIS_REPLY_ERROR)
            titan_log(TITAN_LOG_WARN, "jobs: job %s: %s", sl->id, r->str);
        else if (o->kind == O_RETRY)
            titan_metrics_job(c->metrics, TITAN_JOBS_RETRIED);
    } else if (r->type == REDIS_REPLY_ERROR) {
        titan_log(TITAN_LOG_WARN, "jobs: job %s: cannot store its outcome: %s; it stays pending", sl->id,
                  r->str);
    } else if (o->kind == O_DONE) {
        titan_metrics_job(c->metrics, TITAN_JOBS_DONE);
        titan_log_debug("jobs: job %s done (attempt %d)", sl->id, sl->attempt);
    } else {
        titan_metrics_job(c->metrics, TITAN_JOBS_FAILED);
        titan_log_debug("jobs: job %s failed (attempt %d, %s: %s)", sl->id, sl->attempt, o->code, o->error);
    }
}

/* Logs and records the outcome of every DONE slot, pipelined, then frees them: XACK only with the
 * outcome (the store script). Tries again across Redis outages until stop is asked for; an outcome
 * that could not be recorded by then leaves its entry pending, for another attempt. */
static void s_finish(titan_jobs_consumer *c)
{
    int left = 0;
    for (int i = 0; i < c->nslots; i++) {
        s_slot *sl = &c->slots[i];
        if (sl->state != SL_DONE) continue;
        const s_outcome *o = &sl->o;
        switch (o->kind) {
        case O_DONE:
            break;
        case O_FAILED:
            titan_log(TITAN_LOG_WARN, "jobs: job %s attempt %d failed (%s): %s", sl->id, sl->attempt, o->code,
                      o->error);
            break;
        case O_RETRY:
            titan_log(TITAN_LOG_WARN, "jobs: job %s attempt %d of %d failed (%s): %s; %s", sl->id,
                      sl->attempt, c->max_attempts, o->code, o->error,
                      sl->attempt < c->max_attempts
                          ? "it stays pending for another attempt"
                          : "it goes to the dead-letter stream when next picked up");
            break;
        case O_REVERT:
            /* The worker is shutting down: the attempt did not run; another worker reclaims the entry. */
            c->winding_down = true;
            titan_log(TITAN_LOG_INFO,
                      "jobs: the worker is shutting down; taking no more jobs (job %s stays pending)",
                      sl->id);
            break;
        case O_ABANDON:
            titan_log(TITAN_LOG_WARN,
                      "jobs: job %s: stopped while it ran; it stays pending for another worker", sl->id);
            s_slot_release(c, sl);
            continue;
        }
        sl->state = SL_RECORD; /* logged; to be recorded */
        left++;
    }
    if (!left) return;
    c->next_read = 0; /* slots are free again: look for more work at once */
    c->idle_read_ms = IDLE_READ_MIN_MS;
    for (;;) {
        if (s_connect(c) == 0) {
            s_heartbeats(c); /* a large result takes a while to reach Redis */
            /* One pipeline: the retry and revert scripts one by one, then one store script for up to
             * STORE_BATCH outcomes or about PIPE_BYTES of results. */
            int n = 0, nstore = 0;
            double bytes = 0;
            int *store = c->order + c->nslots; /* the second half of order */
            for (int i = 0; i < c->nslots; i++) {
                s_slot *sl = &c->slots[i];
                if (sl->state != SL_RECORD) continue;
                if (sl->o.kind == O_RETRY || sl->o.kind == O_REVERT) {
                    if (s_append_requeue(c, sl) != 0) break;
                    c->order[n++] = i;
                } else if (nstore < STORE_BATCH && bytes < PIPE_BYTES) {
                    store[nstore++] = i;
                    for (int f = 0; f < sl->o.nframes; f++)
                        bytes += (double)zmq_msg_size(&sl->o.frames[f]);
                }
            }
            bool stored = nstore > 0 && c->redis && s_append_store(c, store, nstore) == 0;
            bool lost = false;
            for (int k = 0; k < n; k++) {
                s_slot *sl = &c->slots[c->order[k]];
                redisReply *r = s_get(c);
                if (!r) { /* Redis went away: the rest is sent again once it is back */
                    lost = true;
                    break;
                }
                if (titan_redis_scripts_missing(&c->scripts, r)) {
                    freeReplyObject(r); /* sent again, by EVAL */
                    continue;
                }
                s_recorded(c, sl, r);
                freeReplyObject(r);
                s_slot_release(c, sl);
                left--;
            }
            redisReply *r = stored && !lost ? s_get(c) : NULL;
            if (r && !titan_redis_scripts_missing(&c->scripts, r)) {
                bool whole = r->type == REDIS_REPLY_ARRAY && r->elements == (size_t)nstore;
                if (!whole && r->type != REDIS_REPLY_ERROR)
                    titan_log(TITAN_LOG_WARN,
                              "jobs: unexpected reply to the store of %d outcomes; they stay "
                              "pending",
                              nstore);
                for (int k = 0; k < nstore; k++) {
                    s_slot *sl = &c->slots[store[k]];
                    if (whole || r->type == REDIS_REPLY_ERROR) s_recorded(c, sl, whole ? r->element[k] : r);
                    s_slot_release(c, sl);
                    left--;
                }
            }
            if (r) freeReplyObject(r);
            if (!left) return;
        }
        if (s_stopping(c) && !c->redis) break; /* connected: NOSCRIPT replies, sent again by EVAL */
    }
    for (int i = 0; i < c->nslots; i++) {
        s_slot *sl = &c->slots[i];
        if (sl->state != SL_RECORD) continue;
        titan_log(TITAN_LOG_WARN,
                  "jobs: job %s: stopped before its outcome could be recorded; it stays pending", sl->id);
        s_slot_release(c, sl);
    }
}

static bool s_valid_id(const char *id, size_t len)
{
    if (len == 0 || len > MAX_ID_LEN) return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_' && id[i] != '.') return false;
    return true;
}

static bool s_is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* Acts on the start script's reply r for sl (takes r): skip, dead-letter, a broken record (failed),
 * or the request sent to the server. */
static void s_started(titan_jobs_consumer *c, s_slot *sl, redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !s_is_str(r->element[0])) {
        titan_log(TITAN_LOG_WARN, "jobs: job %s: cannot start it: %s", sl->id,
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        s_slot_release(c, sl);
        return;
    }
    const char *what = r->element[0]->str;
    if (strcmp(what, "skip") == 0) {
        titan_metrics_job(c->metrics, TITAN_JOBS_SKIPPED);
        titan_log_debug("jobs: job %s skipped (%s)", sl->id,
                        s_is_str(r->element[1]) ? r->element[1]->str : "?");
        freeReplyObject(r);
        s_slot_release(c, sl);
        return;
    }
    if (strcmp(what, "dead") == 0) {
        titan_metrics_job(c->metrics, TITAN_JOBS_DEAD_LETTERED);
        titan_log(TITAN_LOG_WARN, "jobs: job %s moved to %s: %s", sl->id, c->dead,
                  r->elements >= 3 && s_is_str(r->element[2]) ? r->element[2]->str : "too many attempts");
        freeReplyObject(r);
        s_slot_release(c, sl);
        return;
    }
    sl->attempt = s_is_str(r->element[1]) ? atoi(r->element[1]->str) : 0;
    s_outcome *o = &sl->o;
    /* The record as the script read it: {"run", attempts, header, nframes, frame:1...} */
    const redisReply *hdr = r->elements > 2 ? r->element[2] : NULL;
    const redisReply *nfr = r->elements > 3 ? r->element[3] : NULL;
    long nf = -1;
    if (s_is_str(nfr)) {
        char *end;
        nf = strtol(nfr->str, &end, 10);
        if (end == nfr->str || *end || nf < 0 || nf > MAX_JOB_FRAMES) nf = -1;
    } else if (nfr && nfr->type == REDIS_REPLY_NIL) {
        nf = 0;
    }
    if (!s_is_str(hdr)) {
        o->kind = O_FAILED;
        snprintf(o->code, sizeof(o->code), "bad_request");
        snprintf(o->error, sizeof(o->error), "the job record has no request header");
    } else if (nf < 0) {
        o->kind = O_FAILED;
        snprintf(o->code, sizeof(o->code), "bad_request");
        snprintf(o->error, sizeof(o->error), "the job record's nframes must be a number from 0 to %d",
                 MAX_JOB_FRAMES);
    } else if ((long)r->elements != 4 + nf) {
        o->kind = O_FAILED;
        snprintf(o->code, sizeof(o->code), "bad_request");
        snprintf(o->error, sizeof(o->error), "the job record lacks some of its %ld frames", nf);
    }
    for (long i = 0; o->kind == O_DONE && i < nf; i++) {
        if (!s_is_str(r->element[4 + i])) {
            o->kind = O_FAILED;
            snprintf(o->code, sizeof(o->code), "bad_request");
            snprintf(o->error, sizeof(o->error), "the job record lacks frame:%ld", i + 1);
        }
    }
    if (o->kind == O_FAILED) {
        freeReplyObject(r);
        sl->state = SL_DONE;
        return;
    }
    s_holder *h = calloc(1, sizeof(*h));
    if (!h) {
        freeReplyObject(r);
        o->kind = O_RETRY;
        snprintf(o->code, sizeof(o->code), "internal");
        snprintf(o->error, sizeof(o->error), "out of memory");
        sl->state = SL_DONE;
        return;
    }
    atomic_init(&h->refs, 1);
    h->reply = r;
    sl->h = h;
    sl->parts[0] = r->element[2]; /* header, frame:1... */
    for (long i = 0; i < nf; i++)
        sl->parts[1 + i] = r->element[4 + i];
    sl->nparts = 1 + (int)nf;
    double bytes = 0;
    for (int i = 0; i < sl->nparts; i++)
        bytes += (double)sl->parts[i]->len;
    c->req_bytes = bytes > 0.9 * c->req_bytes ? bytes : 0.9 * c->req_bytes;
    if (s_stopping(c) || s_draining(c)) {
        o->kind = O_REVERT; /* started but not sent: undo the start */
        sl->state = SL_DONE;
        return;
    }
    s_dispatch(c, sl);
}

/* Queues one start script for the slots order[from..to) that are SL_READ, and marks them
 * SL_STARTING. Returns how many it queued (0 with none), or -1 when the connection failed. */
static int s_append_start(titan_jobs_consumer *c, int from, int to, const char *maxa, const char *now,
                          const char *ttl)
{
    int n = 0;
    for (int k = from; k < to; k++)
        n += c->slots[c->order[k]].state == SL_READ;
    if (n == 0) return 0;
    size_t cap = 3 + 1 + 2 * (size_t)n + 5 + 2 * (size_t)n;
    const char **argv = malloc(cap * sizeof(*argv));
    if (!argv) {
        s_lost(c, "out of memory");
        return -1;
    }
    char nkeys[16];
    snprintf(nkeys, sizeof(nkeys), "%d", 1 + 2 * n);
    int a = 0;
    titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_START, argv, NULL);
    a = 2;
    argv[a++] = nkeys;
    argv[a++] = c->dead;
    for (int k = from; k < to; k++) {
        s_slot *sl = &c->slots[c->order[k]];
        if (sl->state != SL_READ) continue;
        argv[a++] = sl->key;
        argv[a++] = c->stream[sl->stream];
    }
    argv[a++] = c->group;
    argv[a++] = maxa;
    argv[a++] = now;
    argv[a++] = c->consumer;
    argv[a++] = ttl;
    for (int k = from; k < to; k++) {
        s_slot *sl = &c->slots[c->order[k]];
        if (sl->state != SL_READ) continue;
        argv[a++] = sl->entry;
        argv[a++] = sl->id;
        sl->state = SL_STARTING;
    }
    int rc = s_append(c, a, argv, NULL);
    free(argv);
    return rc == 0 ? n : -1;
}

/* Step 3 of docs/JOBS.md for the entries of one stream (an XREADGROUP or XAUTOCLAIM list) read
 * from Redis at t_read (monotonic ms): the start scripts go pipelined, then each started job's
 * request goes to the server on its slot. With `reclaimed`, entries already in hand are left
 * alone. Returns how many entries it took up. */
static int s_start(titan_jobs_consumer *c, int stream, const redisReply *entries, double t_read,
                   bool reclaimed)
{
    int took = 0;
    /* First the entries without anything to run (no usable id, or deleted from the stream): they
     * are acknowledged one by one, before the pipeline. */
    for (size_t i = 0; i < entries->elements && c->redis; i++) {
        const redisReply *entry = entries->element[i];
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 1 || !s_is_str(entry->element[0])) continue;
        const redisReply *fields = entry->elements >= 2 ? entry->element[1] : NULL;
        const redisReply *idr = NULL;
        if (fields && fields->type == REDIS_REPLY_ARRAY)
            for (size_t k = 0; k + 1 < fields->elements; k += 2)
                if (s_is_str(fields->element[k]) && strcmp(fields->element[k]->str, "id") == 0)
                    idr = fields->element[k + 1];
        if (s_is_str(idr) && s_valid_id(idr->str, idr->len)) continue;
        if (s_stopping(c) || s_draining(c)) break;
        titan_log(TITAN_LOG_WARN, "jobs: %s entry %s has no valid job id; acknowledged and skipped",
                  c->stream[stream], entry->element[0]->str);
        redisReply *r = s_cmdv(c, "XACK", c->stream[stream], c->group, entry->element[0]->str, (char *)NULL);
        if (r) freeReplyObject(r);
        took++;
    }
    char maxa[16], now[32], ttl[16];
    snprintf(maxa, sizeof(maxa), "%d", c->max_attempts);
    snprintf(now, sizeof(now), "%lld", s_unix_ms());
    snprintf(ttl, sizeof(ttl), "%d", c->ttl_s);
    int n = 0;
    for (size_t i = 0; i < entries->elements && c->redis; i++) {
        /* An entry not started when we stop stays pending; another worker reclaims it. */
        if (s_stopping(c) || s_draining(c)) break;
        const redisReply *entry = entries->element[i];
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 1 || !s_is_str(entry->element[0])) continue;
        const redisReply *er = entry->element[0];
        const redisReply *fields = entry->elements >= 2 ? entry->element[1] : NULL;
        const redisReply *idr = NULL;
        if (fields && fields->type == REDIS_REPLY_ARRAY)
            for (size_t k = 0; k + 1 < fields->elements; k += 2)
                if (s_is_str(fields->element[k]) && strcmp(fields->element[k]->str, "id") == 0)
                    idr = fields->element[k + 1];
        if (!s_is_str(idr) || !s_valid_id(idr->str, idr->len) || er->len >= sizeof(c->slots[0].entry))
            continue;
        if (reclaimed) {
            bool mine = false;
            for (int k = 0; k < c->nslots && !mine; k++)
                mine = c->slots[k].state != SL_FREE && c->slots[k].stream == stream &&
                       strcmp(c->slots[k].entry, er->str) == 0;
            if (mine) continue;
        }
        s_slot *sl = s_slot_take(c);
        if (!sl) break; /* cannot happen: reads ask for no more than the free slots */
        sl->stream = stream;
        memcpy(sl->entry, er->str, er->len + 1);
        memcpy(sl->id, idr->str, idr->len + 1);
        titan_redis_key(sl->key, sizeof(sl->key), c->prefix, TITAN_REDIS_KEY_JOB, sl->id);
        sl->next_hb = t_read + c->visibility_ms / 3.0;
        c->order[n++] = (int)(sl - c->slots);
    }
    /* The start scripts go pipelined, in chunks of about PIPE_BYTES of requests (one while the
     * size is unknown), with the idle times of the entries in hand reset between chunks. */
    for (int next = 0; next < n;) {
        if (!c->redis || s_stopping(c) || s_draining(c)) {
            for (int k = next; k < n; k++)
                s_slot_release(c, &c->slots[c->order[k]]); /* they stay pending */
            break;
        }
        int chunk = c->req_bytes > 0 ? (int)(PIPE_BYTES / c->req_bytes) : 1;
        int end = chunk < 1 ? next + 1 : chunk >= n - next ? n : next + chunk;
        for (int pass = 0; pass < 2; pass++) { /* a second by EVAL after NOSCRIPT */
            int sent = s_append_start(c, next, end, maxa, now, ttl);
            if (sent <= 0) break;
            redisReply *r = s_get(c);
            if (r && titan_redis_scripts_missing(&c->scripts, r)) {
                freeReplyObject(r);
                for (int k = next; k < end; k++)
                    if (c->slots[c->order[k]].state == SL_STARTING) c->slots[c->order[k]].state = SL_READ;
                continue;
            }
            bool whole = r && r->type == REDIS_REPLY_ARRAY && r->elements == (size_t)sent;
            if (r && !whole)
                titan_log(TITAN_LOG_WARN, "jobs: cannot start %d jobs: %s; they stay pending", sent,
                          r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            size_t e = 0;
            for (int k = next; k < end; k++) {
                s_slot *sl = &c->slots[c->order[k]];
                if (sl->state != SL_STARTING) continue;
                if (!whole) {
                    s_slot_release(c, sl); /* Redis went away, or refused: the entry stays pending */
                    continue;
                }
                /* Each slot takes its own part of the reply: hiredis frees an array's elements one
                 * by one, and skips those set to NULL. */
                redisReply *part = r->element[e];
                r->element[e++] = NULL;
                s_started(c, sl, part);
                took++;
            }
            if (r) freeReplyObject(r);
            break;
        }
        for (int k = next; k < end; k++) {
            s_state st = c->slots[c->order[k]].state;
            if (st == SL_READ || st == SL_STARTING) s_slot_release(c, &c->slots[c->order[k]]);
        }
        next = end;
        if (next < n) s_heartbeats(c);
    }
    s_finish(c); /* broken records, and starts undone */
    return took;
}

/* Serves the slots in flight for up to wait_ms (less when a reply comes, or a heartbeat or a busy
 * retry is due): sends busy requests again, collects replies, resets idle times, and records the
 * outcomes. Once stop is asked for, a reply that is not there will not come (the server has
 * drained): those jobs stay pending. */
static void s_pump(titan_jobs_consumer *c, double wait_ms)
{
    double now = s_mono_ms();
    for (int i = 0; i < c->nslots; i++) {
        s_slot *sl = &c->slots[i];
        if (sl->state != SL_BUSY || sl->retry_at > now) continue;
        if (s_stopping(c) || s_draining(c)) {
            sl->o.kind = O_REVERT; /* it never ran: undo its start */
            sl->state = SL_DONE;
        } else {
            s_dispatch(c, sl);
        }
    }
    double until = now + (wait_ms > 100 ? 100 : wait_ms);
    bool waiting = false; /* for a reply */
    for (int i = 0; i < c->nslots; i++) {
        s_slot *sl = &c->slots[i];
        if (sl->state == SL_DONE) until = now;
        if (sl->state != SL_SENT && sl->state != SL_BUSY) continue;
        if (sl->next_hb < until) until = sl->next_hb;
        if (sl->state == SL_BUSY && sl->retry_at < until) until = sl->retry_at;
        waiting |= sl->state == SL_SENT;
    }
    long wait = until <= now ? 0 : (long)(until - now) + 1;
    if (waiting) {
        zmq_pollitem_t it = {c->dealer, 0, ZMQ_POLLIN, 0};
        int n = c->dealer ? zmq_poll(&it, 1, wait) : 0;
        if (n > 0 && (it.revents & ZMQ_POLLIN)) {
            int rc = s_collect(c);
            if (rc != 0) s_reset_dealer(c, -rc);
        }
    } else if (wait > 0) {
        s_nap(c, (double)wait);
    }
    if (s_stopping(c)) {
        for (int i = 0; i < c->nslots; i++) {
            s_slot *sl = &c->slots[i];
            if (sl->state == SL_SENT) {
                sl->o.kind = O_ABANDON;
                sl->state = SL_DONE;
            } else if (sl->state == SL_BUSY) {
                sl->o.kind = O_REVERT;
                sl->state = SL_DONE;
            }
        }
    }
    s_heartbeats(c);
    s_finish(c);
}

/* ---- reading the queues ---- */

/* One XAUTOCLAIM step of the reclaim scan, for up to the free slots. Returns 1 when it took up an
 * entry, 0 when the scan of both streams is complete (or must wait), -1 on a Redis failure. */
static int s_reclaim(titan_jobs_consumer *c)
{
    char idle[16], count[16];
    snprintf(idle, sizeof(idle), "%d", c->visibility_ms);
    for (int s = 0; s < 2; s++) {
        while (!c->scanned[s] && !s_stopping(c) && !s_draining(c) && s_room(c) > 0) {
            snprintf(count, sizeof(count), "%d", s_room(c));
            redisReply *r = s_cmdv(c, "XAUTOCLAIM", c->stream[s], c->group, c->consumer, idle, c->cursor[s],
                                   "COUNT", count, (char *)NULL);
            double t_read = s_mono_ms();
            if (!r) return -1;
            if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !s_is_str(r->element[0]) ||
                r->element[1]->type != REDIS_REPLY_ARRAY) {
                if (titan_redis_reply_is_error(r, "NOGROUP")) {
                    s_lost(c, "the consumer group is gone");
                } else {
                    /* Not an outage (a Redis older than 6.2 has no XAUTOCLAIM): keep reading new
                     * entries, and try the scan again later. */
                    titan_log(TITAN_LOG_WARN, "jobs: XAUTOCLAIM on %s failed: %s", c->stream[s],
                              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
                    c->next_reclaim = s_mono_ms() + 10 * BACKOFF_MAX_MS;
                }
                freeReplyObject(r);
                return -1;
            }
            snprintf(c->cursor[s], sizeof(c->cursor[s]), "%s", r->element[0]->str);
            if (strcmp(c->cursor[s], "0-0") == 0) c->scanned[s] = true;
            const redisReply *entries = r->element[1];
            if (entries->elements > 0)
                titan_log_debug("jobs: reclaimed %zu entries of %s idle over %d ms", entries->elements,
                                c->stream[s], c->visibility_ms);
            int got = s_start(c, s, entries, t_read, true);
            freeReplyObject(r);
            if (got > 0) return 1;
        }
        if (!c->scanned[s]) return 0; /* no free slot, stopping or draining: go on later */
    }
    if (c->scanned[0] && c->scanned[1]) {
        int every = c->visibility_ms / 4;
        if (every < 50) every = 50;
        if (every > 1000) every = 1000;
        c->next_reclaim = s_mono_ms() + every;
        for (int s = 0; s < 2; s++) {
            c->scanned[s] = false;
            snprintf(c->cursor[s], sizeof(c->cursor[s]), "0-0");
        }
    }
    return 0;
}

/* Reads new entries for the free slots, high priority strictly first, and starts them. Blocks (a
 * while) only with `block`, when no job is in flight. Returns how many entries it took up. */
static int s_read(titan_jobs_consumer *c, bool block)
{
    char count[16];
    snprintf(count, sizeof(count), "%d", s_room(c) > 0 ? s_room(c) : 1);
    redisReply *r = NULL;
    for (int i = 0; i < 2; i++) { /* once more by EVAL after NOSCRIPT */
        const char *argv[] = {NULL,     NULL,        "2",  c->stream[S_HIGH], c->stream[S_NORMAL],
                              c->group, c->consumer, count};
        titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_READ, argv, NULL);
        r = s_cmd(c, 8, argv, NULL);
        if (!r || !titan_redis_scripts_missing(&c->scripts, r)) break;
        freeReplyObject(r);
        r = NULL;
    }
    if (r && r->type == REDIS_REPLY_NIL && block) {
        freeReplyObject(r);
        long wait = (long)(c->next_reclaim - s_mono_ms());
        if (wait > BLOCK_MS) wait = BLOCK_MS;
        if (wait < 1) wait = 1; /* BLOCK 0 would wait forever */
        char bl[16];
        snprintf(bl, sizeof(bl), "%ld", wait);
        r = s_cmdv(c, "XREADGROUP", "GROUP", c->group, c->consumer, "COUNT", count, "BLOCK", bl, "STREAMS",
                   c->stream[S_HIGH], c->stream[S_NORMAL], ">", ">", (char *)NULL);
    }
    double t_read = s_mono_ms();
    if (!r) return 0;
    if (r->type == REDIS_REPLY_ERROR) {
        if (strstr(r->str, "NOGROUP")) { /* from the script too, whose error text may wrap it */
            /* The streams were deleted (or Redis came back empty): make the groups again. */
            titan_log(TITAN_LOG_WARN, "jobs: %s; creating the consumer groups again", r->str);
            s_ensure_groups(c);
        } else {
            titan_log(TITAN_LOG_WARN, "jobs: XREADGROUP failed: %s", r->str);
            freeReplyObject(r);
            if (c->used > 0)
                s_pump(c, BACKOFF_MAX_MS);
            else
                s_nap(c, BACKOFF_MAX_MS);
            return 0;
        }
        freeReplyObject(r);
        return 0;
    }
    int got = 0;
    if (r->type == REDIS_REPLY_ARRAY) {
        /* COUNT holds per stream: with both streams, up to twice the free slots come back; the
         * slots are twice as many as --jobs-inflight for that. Entries already read stay pending
         * if we stop here; they are reclaimed later. */
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *st = r->element[i];
            if (st->type != REDIS_REPLY_ARRAY || st->elements < 2 || !s_is_str(st->element[0]) ||
                st->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            int s = strcmp(st->element[0]->str, c->stream[S_HIGH]) == 0 ? S_HIGH : S_NORMAL;
            got += s_start(c, s, st->element[1], t_read, false);
        }
    }
    freeReplyObject(r);
    return got;
}

static void *s_main(void *arg)
{
    titan_jobs_consumer *c = arg;
    for (int s = 0; s < 2; s++)
        snprintf(c->cursor[s], sizeof(c->cursor[s]), "0-0");
    while (!s_stopping(c)) {
        bool draining = s_draining(c);
        if (draining && c->used == 0) {
            s_nap(c, 100);
            continue;
        }
        if (!draining && s_connect(c) != 0) {
            if (c->used > 0) s_pump(c, 0);
            continue;
        }
        int got = 0;
        int room = s_room(c);
        if (!draining && c->redis && room > 0 && s_mono_ms() >= c->next_reclaim) got = s_reclaim(c) > 0;
        if (!got && !s_stopping(c) && !s_draining(c) && c->redis && room > 0 &&
            (c->used == 0 || s_mono_ms() >= c->next_read)) {
            got = s_read(c, c->used == 0);
            /* Nothing new while jobs run: look again a little later, or when one ends. */
            if (got) {
                c->idle_read_ms = IDLE_READ_MIN_MS;
            } else {
                c->next_read = s_mono_ms() + c->idle_read_ms;
                c->idle_read_ms =
                    c->idle_read_ms * 2 > IDLE_READ_MAX_MS ? IDLE_READ_MAX_MS : c->idle_read_ms * 2;
            }
        }
        if (c->used > 0) {
            double wait = 100;
            if (got) {
                wait = 0;
            } else if (room > 0 && !s_draining(c)) {
                double next = c->next_read < c->next_reclaim ? c->next_read : c->next_reclaim;
                wait = next - s_mono_ms();
                if (wait < 0) wait = 0;
            }
            s_pump(c, wait);
        }
    }
    if (c->used > 0) s_pump(c, 0); /* replies there are recorded; the rest stays pending */
    s_disconnect(c);
    if (c->dealer) zmq_close(c->dealer);
    c->dealer = NULL;
    return NULL;
}

titan_jobs_consumer *titan_jobs_consumer_start(const titan_config *cfg, void *zmq_ctx, titan_metrics *metrics,
                                               char *err, size_t errcap)
{
    titan_jobs_consumer *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    atomic_init(&c->stop, 0);
    atomic_init(&c->draining, NULL);
    c->zmq_ctx = zmq_ctx;
    c->metrics = metrics;
    if (!cfg->redis_url) {
        snprintf(err, errcap, "jobs: no --redis URL");
        goto fail;
    }
    if (titan_jobs_consumer_check(cfg, err, errcap) != 0 ||
        titan_redis_url_parse(cfg->redis_url, &c->url, NULL, 0) != 0 ||
        (cfg->redis_password && titan_redis_url_set_password(&c->url, cfg->redis_password) != 0))
        goto fail;
    titan_redis_url_name(&c->url, c->url_text, sizeof(c->url_text));
    snprintf(c->prefix, sizeof(c->prefix), "%s", cfg->redis_prefix ? cfg->redis_prefix : TITAN_REDIS_DEFAULT_PREFIX);
    if (!titan_redis_prefix_ok(cfg->redis_prefix ? cfg->redis_prefix : c->prefix) ||
        titan_redis_key(c->stream[S_HIGH], sizeof(c->stream[S_HIGH]), c->prefix, TITAN_REDIS_KEY_QUEUE_HIGH, NULL) < 0 ||
        titan_redis_key(c->stream[S_NORMAL], sizeof(c->stream[S_NORMAL]), c->prefix, TITAN_REDIS_KEY_QUEUE, NULL) < 0 ||
        titan_redis_key(c->dead, sizeof(c->dead), c->prefix, TITAN_REDIS_KEY_DEAD, NULL) < 0) {
        snprintf(err, errcap, "--redis-prefix must be 1 to %d printable characters without spaces, '{' or '}'",
                 TITAN_REDIS_MAX_PREFIX);
        goto fail;
    }
    snprintf(c->group, sizeof(c->group), "%s", cfg->jobs_group ? cfg->jobs_group : TITAN_REDIS_DEFAULT_GROUP);
    char host[256] = "localhost";
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    snprintf(c->consumer, sizeof(c->consumer), "%s:%d", host, (int)getpid());
    c->visibility_ms = cfg->visibility_timeout_ms > 0 ? cfg->visibility_timeout_ms : 60000;
    c->max_attempts = cfg->max_attempts > 0 ? cfg->max_attempts : 3;
    c->ttl_s = cfg->result_ttl_s > 0 ? cfg->result_ttl_s : 86400;
    c->backoff_ms = BACKOFF_MIN_MS;
    c->idle_read_ms = IDLE_READ_MIN_MS;
    c->max_bytes = (double)cfg->max_inflight_bytes;

    /* The jobs are one client of the server: it takes at most one request per executor plus that
     * client's share of its queue at once; more in flight would only come back "busy". */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int executors = cfg->threads > 0 ? cfg->threads : cores > 0 ? (int)cores : 1;
    int admits = executors + cfg->queue * cfg->max_client_share / 100;
    /* The default keeps enough small jobs in hand to hide Redis round trips behind the work; s_room
     * holds back while the worker answers "busy" or the requests in hand fill --max-inflight-bytes. */
    c->inflight = cfg->jobs_inflight > 0         ? cfg->jobs_inflight
                  : executors > DEFAULT_INFLIGHT ? executors
                                                 : DEFAULT_INFLIGHT;
    if (c->inflight > 256) c->inflight = 256;
    if (c->inflight > admits && cfg->jobs_inflight <= 0) {
        c->inflight = admits;
    } else if (c->inflight > admits) {
        titan_log(
            TITAN_LOG_INFO,
            "jobs: --jobs-inflight %d lowered to %d: the worker takes at most that many requests of one "
            "client at once (%d executors and %d%% of --queue %d)",
            c->inflight, admits, executors, cfg->max_client_share, cfg->queue);
        c->inflight = admits;
    }
    titan_log(TITAN_LOG_INFO,
              "jobs: consuming %s and %s (group %s, consumer %s) from %s, up to %d jobs in flight",
              c->stream[S_HIGH], c->stream[S_NORMAL], c->group, c->consumer, c->url_text, c->inflight);
    c->nslots = 2 * c->inflight;
    c->slots = calloc((size_t)c->nslots, sizeof(*c->slots));
    c->order = calloc(2 * (size_t)c->nslots, sizeof(*c->order));
    if (!c->slots || !c->order) {
        snprintf(err, errcap, "out of memory");
        goto fail;
    }
    c->dealer = s_dealer_open(zmq_ctx);
    if (!c->dealer) {
        snprintf(err, errcap, "jobs: cannot connect to %s: %s", TITAN_SERVER_INPROC,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    titan_metrics_set_jobs_redis_up(c->metrics, false); /* until the thread has connected */
    /* Only the main thread takes SIGINT and SIGTERM. The socket moves to the thread with
     * pthread_create, which is a full memory barrier, as ZeroMQ asks. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    int rc = pthread_create(&c->thread, NULL, s_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errcap, "jobs: cannot start the consumer thread: %s", strerror(rc));
        goto fail;
    }
    c->started = true;
    return c;
fail:
    titan_jobs_consumer_stop(&c);
    return NULL;
}

void titan_jobs_consumer_watch(titan_jobs_consumer *c, volatile sig_atomic_t *stopping)
{
    atomic_store(&c->draining, stopping);
}

void titan_jobs_consumer_stop(titan_jobs_consumer **cp)
{
    if (!cp || !*cp) return;
    titan_jobs_consumer *c = *cp;
    if (c->started) {
        atomic_store(&c->stop, 1);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += STOP_GRACE_MS / 1000;
        ts.tv_nsec += (long)(STOP_GRACE_MS % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        if (pthread_timedjoin_np(c->thread, NULL, &ts) != 0) {
            /* A Redis call is stuck (a frozen server): cut its socket so that the call fails now. */
            pthread_mutex_lock(&c->lock);
            if (c->redis) shutdown(c->redis->fd, SHUT_RDWR);
            pthread_mutex_unlock(&c->lock);
            pthread_join(c->thread, NULL);
        }
    } else {
        if (c->dealer) zmq_close(c->dealer);
        if (c->redis) redisFree(c->redis);
    }
    free(c->slots);
    free(c->order);
    pthread_mutex_destroy(&c->lock);
    titan_redis_url_wipe(&c->url);
    free(c);
    *cp = NULL;
}
