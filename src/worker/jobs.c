/* jobs.c - the batch-job consumer: one thread that reads job ids from Redis Streams, runs each job
 * through the worker's own ROUTER (TITAN_SERVER_INPROC) and stores the reply (docs/JOBS.md). */
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
#include "log.h"
#include "request.h"
#include "server.h"

#define BLOCK_MS 500            /* longest XREADGROUP BLOCK: bounds how long stop waits */
#define COMMAND_TIMEOUT_MS 3000 /* any Redis command, BLOCK included */
#define CONNECT_TIMEOUT_MS 1000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define BUSY_RETRY_MS 50       /* wait before resending a job the worker answered "busy" */
#define STOP_GRACE_MS 1500     /* then a stuck Redis call is cut by shutting its socket down */
#define MAX_JOB_FRAMES (TITAN_MAX_BODY_FRAMES - 1)
#define MAX_REPLY_FRAMES TITAN_MAX_BODY_FRAMES
#define MAX_ID_LEN 128

typedef struct {
    char host[256];
    int port;
    int db;
    char user[128];
    char password[256];
    bool has_password;
} s_url;

enum { S_HIGH = 0, S_NORMAL = 1 };

struct titan_jobs_consumer {
    pthread_t thread;
    bool started;
    atomic_int stop;
    pthread_mutex_t lock; /* guards `redis` against the shutdown() in titan_jobs_consumer_stop */
    redisContext *redis;  /* NULL while disconnected */
    void *zmq_ctx;        /* borrowed */
    void *dealer;         /* the thread's socket to TITAN_SERVER_INPROC */
    s_url url;
    char url_text[320]; /* for logs: never the password */
    char stream[2][96];
    char dead[96];
    char job_prefix[96];
    char group[72];
    char consumer[320];
    int visibility_ms, max_attempts, ttl_s;
    bool winding_down; /* the server answered "shutting_down", or the worker is stopping: take no more jobs */
    volatile sig_atomic_t *_Atomic draining; /* main's stop flag (titan_jobs_consumer_watch) */
    bool outage;       /* Redis is away; logged once */
    double outage_since, next_connect;
    int backoff_ms;
    char cursor[2][64]; /* XAUTOCLAIM scan position per stream */
    bool scanned[2];
    double next_reclaim;
};

/* ---- scripts: each step of docs/JOBS.md that touches several keys runs atomically ---- */

/* Step 3 up to running the request. KEYS: job, stream, dead. ARGV: group, entry, max attempts,
 * now ms, consumer, ttl, job id. Replies {"skip", why}, {"dead", attempts, error} or
 * {"run", attempts, header, nframes, frame:1, ...}. An entry no longer pending on this consumer
 * (another worker reclaimed it while it waited here) is left alone; a job that already ended (a
 * duplicate entry) is skipped like a cancelled one rather than run again. */
static const char s_start_lua[] =
    "local job, stream, dead = KEYS[1], KEYS[2], KEYS[3]\n"
    "local group, entry, maxa, now, worker, ttl, id = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], "
    "ARGV[6], ARGV[7]\n"
    "local function drop_frames()\n"
    "  local f = {}\n"
    "  for i = 1, 15 do f[#f + 1] = 'frame:' .. i end\n"
    "  redis.call('HDEL', job, unpack(f))\n"
    "end\n"
    "local mine = redis.call('XPENDING', stream, group, entry, entry, 1, worker)\n"
    "if #mine == 0 then return {'skip', 'no longer pending on this consumer'} end\n"
    "local st = redis.call('HGET', job, 'state')\n"
    "if not st then\n"
    "  redis.call('XACK', stream, group, entry)\n"
    "  return {'skip', 'missing'}\n"
    "end\n"
    "if st == 'cancelled' or st == 'done' or st == 'failed' then\n"
    "  if st == 'cancelled' then\n"
    "    drop_frames()\n"
    "    if redis.call('TTL', job) < 0 then redis.call('EXPIRE', job, ttl) end\n"
    "  end\n"
    "  redis.call('XACK', stream, group, entry)\n"
    "  return {'skip', st}\n"
    "end\n"
    "local n = redis.call('HINCRBY', job, 'attempts', 1)\n"
    "if n > maxa then\n"
    "  local last = redis.call('HGET', job, 'error')\n"
    "  local code = redis.call('HGET', job, 'code') or 'internal'\n"
    "  local text = 'gave up after ' .. (n - 1) .. ' attempts: ' .. (last or "
    "'no attempt ended (the worker running it stopped or crashed)')\n"
    "  redis.call('HSET', job, 'attempts', n - 1, 'state', 'failed', 'finished_ms', now, 'error', text, "
    "'code', code)\n"
    "  drop_frames()\n"
    "  redis.call('EXPIRE', job, ttl)\n"
    "  redis.call('XADD', dead, '*', 'id', id, 'error', text, 'attempts', n - 1)\n"
    "  redis.call('XACK', stream, group, entry)\n"
    "  return {'dead', tostring(n - 1), text}\n"
    "end\n"
    "redis.call('HSET', job, 'state', 'running', 'started_ms', now, 'worker', worker)\n"
    "local hdr = redis.call('HGET', job, 'header')\n"
    "local nf = redis.call('HGET', job, 'nframes')\n"
    "local out = {'run', tostring(n), hdr or false, nf or false}\n"
    "local k = tonumber(nf)\n"
    "if k and k >= 1 and k <= 15 and k == math.floor(k) then\n"
    "  for i = 1, k do out[#out + 1] = redis.call('HGET', job, 'frame:' .. i) or false end\n"
    "end\n"
    "return out\n";

/* The outcome, then XACK, in one step. KEYS: job, stream. ARGV: group, entry, state, now ms, ttl,
 * result header ("" for none), error ("" for none), code, result frame count, frames... */
static const char s_store_lua[] =
    "local job, stream = KEYS[1], KEYS[2]\n"
    "local group, entry, state, now, ttl, rhdr, err, code = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], "
    "ARGV[6], ARGV[7], ARGV[8]\n"
    "local rn = tonumber(ARGV[9])\n"
    "if redis.call('EXISTS', job) == 0 then\n"
    "  redis.call('XACK', stream, group, entry)\n"
    "  return 0\n"
    "end\n"
    "local del = {'result_header', 'result_nframes'}\n"
    "for i = 1, 15 do del[#del + 1] = 'frame:' .. i; del[#del + 1] = 'result:' .. i end\n"
    "redis.call('HDEL', job, unpack(del))\n"
    "local set = {'state', state, 'finished_ms', now}\n"
    "if rhdr ~= '' then\n"
    "  set[#set + 1] = 'result_header'; set[#set + 1] = rhdr\n"
    "  set[#set + 1] = 'result_nframes'; set[#set + 1] = rn\n"
    "  for i = 1, rn do set[#set + 1] = 'result:' .. i; set[#set + 1] = ARGV[9 + i] end\n"
    "end\n"
    "if err ~= '' then\n"
    "  set[#set + 1] = 'error'; set[#set + 1] = err\n"
    "  set[#set + 1] = 'code'; set[#set + 1] = code\n"
    "end\n"
    "redis.call('HSET', job, unpack(set))\n"
    "redis.call('EXPIRE', job, ttl)\n"
    "redis.call('XACK', stream, group, entry)\n"
    "return 1\n";

/* A failed attempt that another attempt may fix: the entry stays pending. KEYS: job. ARGV: error, code. */
static const char s_retry_lua[] = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
                                  "redis.call('HSET', KEYS[1], 'state', 'queued', 'error', ARGV[1], 'code', ARGV[2])\n"
                                  "return 1\n";

/* An attempt that never ran (the worker is shutting down): undo its start. KEYS: job. ARGV: consumer. */
static const char s_revert_lua[] = "if redis.call('HGET', KEYS[1], 'state') ~= 'running' or "
                                   "redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1] then return 0 end\n"
                                   "redis.call('HINCRBY', KEYS[1], 'attempts', -1)\n"
                                   "redis.call('HSET', KEYS[1], 'state', 'queued')\n"
                                   "return 1\n";

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

static int s_hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Copies [s, s+n) into dst (cap bytes), decoding %XX escapes. Returns 0 or -EINVAL. */
static int s_unescape(const char *s, size_t n, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= n) return -EINVAL;
            int a = s_hexval((unsigned char)s[i + 1]), b = s_hexval((unsigned char)s[i + 2]);
            if (a < 0 || b < 0) return -EINVAL;
            ch = a * 16 + b;
            i += 2;
        }
        if (ch == 0 || o + 1 >= cap) return -EINVAL;
        dst[o++] = (char)ch;
    }
    dst[o] = '\0';
    return 0;
}

/* Copies url for an error message, with any USER:PASSWORD@ part masked. */
static void s_redact(const char *url, char *buf, size_t cap)
{
    const char *scheme = strstr(url, "://");
    const char *from = scheme ? scheme + 3 : url;
    const char *at = strrchr(from, '@');
    if (at) snprintf(buf, cap, "%.*s***%s", (int)(from - url), url, at);
    else snprintf(buf, cap, "%s", url);
}

/* Parses redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] into *out (written only on success). */
static int s_url_parse(const char *url_in, s_url *out, char *err, size_t errcap)
{
    char url[320]; /* what error messages show: never the password */
    s_redact(url_in, url, sizeof(url));
    s_url u;
    memset(&u, 0, sizeof(u));
    u.port = 6379;
    const char *p = url_in;
    if (strncmp(p, "redis://", 8) != 0) {
        snprintf(err, errcap, "--redis '%s' must start with redis:// (redis://[[USER]:PASSWORD@]HOST[:PORT][/DB])",
                 url);
        return -EINVAL;
    }
    p += 8;
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@') at = q; /* the last '@': a password may hold one only escaped, but be lenient */
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) {
            snprintf(err, errcap, "--redis: the part before '@' must be ':PASSWORD' or 'USER:PASSWORD'");
            return -EINVAL;
        }
        if (s_unescape(p, (size_t)(colon - p), u.user, sizeof(u.user)) ||
            s_unescape(colon + 1, (size_t)(at - colon - 1), u.password, sizeof(u.password))) {
            snprintf(err, errcap, "--redis: bad user or password (too long, a NUL, or a bad %%XX escape)");
            return -EINVAL;
        }
        u.has_password = true;
        p = at + 1;
    }
    const char *host_end, *after;
    if (*p == '[') {
        host_end = memchr(p, ']', (size_t)(end - p));
        if (!host_end) {
            snprintf(err, errcap, "--redis: an IPv6 host needs its closing ']'");
            return -EINVAL;
        }
        p++;
        after = host_end + 1;
    } else {
        host_end = p;
        while (host_end < end && *host_end != ':') host_end++;
        after = host_end;
    }
    size_t hl = (size_t)(host_end - p);
    if (hl == 0 || hl >= sizeof(u.host)) {
        snprintf(err, errcap, "--redis '%s': missing or overlong host", url);
        return -EINVAL;
    }
    for (size_t i = 0; i < hl; i++) {
        if (!isalnum((unsigned char)p[i]) && !strchr(".-_:%", p[i])) {
            snprintf(err, errcap, "--redis '%s': bad character in the host", url);
            return -EINVAL;
        }
    }
    memcpy(u.host, p, hl);
    if (after < end) {
        if (*after != ':' || after + 1 == end) {
            snprintf(err, errcap, "--redis '%s': expected ':PORT' after the host", url);
            return -EINVAL;
        }
        long port = 0;
        for (const char *q = after + 1; q < end; q++) {
            if (!isdigit((unsigned char)*q) || (port = port * 10 + (*q - '0')) > 65535) {
                snprintf(err, errcap, "--redis '%s': the port must be a number from 1 to 65535", url);
                return -EINVAL;
            }
        }
        if (port < 1) {
            snprintf(err, errcap, "--redis '%s': the port must be a number from 1 to 65535", url);
            return -EINVAL;
        }
        u.port = (int)port;
    }
    if (*end == '?' || *end == '#') {
        snprintf(err, errcap, "--redis '%s': query strings and fragments are not supported", url);
        return -EINVAL;
    }
    if (*end == '/' && end[1]) {
        long db = 0;
        for (const char *q = end + 1; *q; q++) {
            if (!isdigit((unsigned char)*q) || (db = db * 10 + (*q - '0')) > 1000000) {
                snprintf(err, errcap, "--redis '%s': the database after '/' must be a number", url);
                return -EINVAL;
            }
        }
        u.db = (int)db;
    }
    *out = u;
    return 0;
}

int titan_jobs_consumer_check(const titan_config *cfg, char *err, size_t errcap)
{
    if (!cfg->redis_url) return 0;
    s_url u;
    if (cfg->redis_password && strlen(cfg->redis_password) >= sizeof(u.password)) {
        snprintf(err, errcap, "--redis-password is longer than %zu bytes", sizeof(u.password) - 1);
        return -EINVAL;
    }
    return s_url_parse(cfg->redis_url, &u, err, errcap);
}

/* ---- Redis connection ---- */

static void s_disconnect(titan_jobs_consumer *c)
{
    pthread_mutex_lock(&c->lock);
    redisContext *r = c->redis;
    c->redis = NULL;
    pthread_mutex_unlock(&c->lock);
    if (r) redisFree(r);
}

/* Logs the start of an outage once, and drops the connection. */
static void s_lost(titan_jobs_consumer *c, const char *why)
{
    if (!c->outage) {
        c->outage = true;
        c->outage_since = s_mono_ms();
        titan_log(TITAN_LOG_WARN, "jobs: redis %s is unavailable (%s); retrying until it is back", c->url_text, why);
    }
    s_disconnect(c);
}

/* Runs one command. Returns the reply (the caller frees; an error reply included), or NULL when
 * the connection failed, which it then drops. */
static redisReply *s_cmd(titan_jobs_consumer *c, int argc, const char **argv, const size_t *lens)
{
    if (!c->redis) return NULL;
    redisReply *r = redisCommandArgv(c->redis, argc, argv, lens);
    if (!r) {
        char why[160];
        snprintf(why, sizeof(why), "%s", c->redis->errstr[0] ? c->redis->errstr : "connection lost");
        s_lost(c, why);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR && (strncmp(r->str, "LOADING", 7) == 0 || strncmp(r->str, "BUSY ", 5) == 0 ||
                                         strncmp(r->str, "MASTERDOWN", 10) == 0)) {
        /* Redis is up but cannot serve yet (reading its AOF after a restart): an outage too. */
        s_lost(c, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
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

static bool s_is_error(const redisReply *r, const char *prefix)
{
    return r && r->type == REDIS_REPLY_ERROR && (!prefix || strncmp(r->str, prefix, strlen(prefix)) == 0);
}

/* Creates the consumer group on both queues; an existing group is fine. Returns 0 or -1. */
static int s_ensure_groups(titan_jobs_consumer *c)
{
    for (int s = 0; s < 2; s++) {
        /* From 0, not $: jobs submitted before any worker ever ran must still be served. */
        redisReply *r = s_cmdv(c, "XGROUP", "CREATE", c->stream[s], c->group, "0", "MKSTREAM", (char *)NULL);
        if (!r) return -1;
        if (s_is_error(r, NULL) && !s_is_error(r, "BUSYGROUP")) {
            /* e.g. WRONGTYPE: the key exists and is not a stream. Retried like an outage. */
            char why[300];
            snprintf(why, sizeof(why), "cannot create consumer group %s on %s: %s", c->group, c->stream[s], r->str);
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
    struct timeval tv = {CONNECT_TIMEOUT_MS / 1000, (CONNECT_TIMEOUT_MS % 1000) * 1000};
    redisContext *r = redisConnectWithTimeout(c->url.host, c->url.port, tv);
    char why[256] = "";
    if (!r) {
        snprintf(why, sizeof(why), "out of memory");
    } else if (r->err) {
        snprintf(why, sizeof(why), "%s", r->errstr);
        redisFree(r);
        r = NULL;
    }
    if (r) {
        struct timeval ctv = {COMMAND_TIMEOUT_MS / 1000, (COMMAND_TIMEOUT_MS % 1000) * 1000};
        redisSetTimeout(r, ctv);
        redisEnableKeepAlive(r);
        pthread_mutex_lock(&c->lock);
        c->redis = r;
        pthread_mutex_unlock(&c->lock);
        redisReply *rep = NULL;
        if (c->url.has_password) {
            rep = c->url.user[0] ? s_cmdv(c, "AUTH", c->url.user, c->url.password, (char *)NULL)
                                 : s_cmdv(c, "AUTH", c->url.password, (char *)NULL);
            if (rep && rep->type == REDIS_REPLY_ERROR) snprintf(why, sizeof(why), "AUTH refused: %s", rep->str);
            else if (!rep) snprintf(why, sizeof(why), "connection lost during AUTH");
            if (rep) freeReplyObject(rep);
        }
        if (!why[0] && c->url.db != 0) {
            char db[16];
            snprintf(db, sizeof(db), "%d", c->url.db);
            rep = s_cmdv(c, "SELECT", db, (char *)NULL);
            if (rep && rep->type == REDIS_REPLY_ERROR) snprintf(why, sizeof(why), "SELECT %s refused: %s", db, rep->str);
            else if (!rep) snprintf(why, sizeof(why), "connection lost during SELECT");
            if (rep) freeReplyObject(rep);
        }
        if (!why[0]) {
            /* A command that needs a password shows a missing AUTH at once, not on the first job. */
            rep = s_cmdv(c, "PING", (char *)NULL);
            if (rep && rep->type == REDIS_REPLY_ERROR) snprintf(why, sizeof(why), "%s", rep->str);
            else if (!rep) snprintf(why, sizeof(why), "connection lost");
            if (rep) freeReplyObject(rep);
        }
        if (!why[0] && s_ensure_groups(c) != 0) snprintf(why, sizeof(why), "consumer groups not created");
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
    c->backoff_ms = BACKOFF_MIN_MS;
    c->next_connect = 0;
    return 0;
}

/* ---- running one job ---- */

/* Keeps the Redis reply that holds a job's request frames alive while ZeroMQ messages point
 * into it: the consumer holds one reference, and each message sent holds one. */
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
    for (int i = 0; i < o->nframes; i++) zmq_msg_close(&o->frames[i]);
    o->nframes = 0;
}

typedef struct {
    int stream;
    const char *entry;
    const char *id;
    char key[MAX_ID_LEN + 128];
    double next_hb; /* when the entry's idle time must be reset next (monotonic ms) */
} s_entry;

/* Sends ["", header, frames...] without copying the frames. Returns 0 or -errno. */
static int s_send(titan_jobs_consumer *c, s_holder *h, redisReply **parts, int nparts)
{
    if (zmq_send(c->dealer, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) != 0) return -zmq_errno();
    for (int i = 0; i < nparts; i++) {
        zmq_msg_t m;
        atomic_fetch_add(&h->refs, 1);
        /* hiredis gives "" (never NULL) for an empty string, so the pointer is always valid */
        if (zmq_msg_init_data(&m, parts[i]->str, parts[i]->len, s_holder_free_fn, h) != 0) {
            s_holder_release(h);
            return -zmq_errno();
        }
        if (zmq_msg_send(&m, c->dealer, i + 1 < nparts ? ZMQ_SNDMORE : 0) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&m);
            /* A half-sent message cannot be taken back: the socket must go (the caller abandons). */
            return -e;
        }
    }
    return 0;
}

/* Resets the entry's idle time when a third of the visibility timeout has passed since the last
 * reset, so that other workers do not reclaim a job that is still running or waiting for admission.
 * Short jobs never need it. */
static void s_heartbeat(titan_jobs_consumer *c, s_entry *e)
{
    if (s_mono_ms() < e->next_hb || !c->redis) return;
    redisReply *r =
        s_cmdv(c, "XCLAIM", c->stream[e->stream], c->group, c->consumer, "0", e->entry, "JUSTID", (char *)NULL);
    if (r) freeReplyObject(r);
    e->next_hb = s_mono_ms() + c->visibility_ms / 3.0;
}

/* Waits for the reply to the request in flight. Returns 0 with the body in o->frames, or -ECANCELED
 * when stop was asked for and no reply is there. */
static int s_receive(titan_jobs_consumer *c, s_entry *e, s_outcome *o)
{
    for (;;) {
        zmq_pollitem_t it = {c->dealer, 0, ZMQ_POLLIN, 0};
        long wait = (long)(e->next_hb - s_mono_ms()) + 1;
        if (wait > 100) wait = 100;
        if (wait < 1) wait = 1;
        int n = zmq_poll(&it, 1, wait);
        if (n < 0 && zmq_errno() != EINTR) return -zmq_errno();
        if (n > 0 && (it.revents & ZMQ_POLLIN)) break;
        /* The server replies to a request in hand even while it drains, so by the time the
         * consumer is stopped, a reply that is not here will not come. */
        if (s_stopping(c)) return -ECANCELED;
        s_heartbeat(c, e);
    }
    bool first = true;
    int more = 1;
    while (more) {
        zmq_msg_t m;
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
        } else if (o->nframes < MAX_REPLY_FRAMES) {
            o->frames[o->nframes++] = m;
        } else {
            zmq_msg_close(&m);
        }
        first = false;
    }
    return 0;
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
    json_t *h = json_loadb(zmq_msg_data(&o->frames[0]), zmq_msg_size(&o->frames[0]), JSON_ALLOW_NUL, NULL);
    json_t *err = h ? json_object_get(h, "error") : NULL;
    if (!h || !json_is_object(h)) {
        o->kind = O_RETRY;
        snprintf(o->code, sizeof(o->code), "internal");
        snprintf(o->error, sizeof(o->error), "the worker's reply header is not a JSON object");
    } else if (!err) {
        o->kind = O_DONE;
    } else {
        const char *code = json_string_value(json_object_get(h, "code"));
        snprintf(o->code, sizeof(o->code), "%s", code ? code : "internal");
        snprintf(o->error, sizeof(o->error), "%s", json_is_string(err) ? json_string_value(err) : "error");
        if (strcmp(o->code, "busy") == 0) {
            json_decref(h);
            return 1;
        }
        if (strcmp(o->code, "shutting_down") == 0) o->kind = O_REVERT;
        else o->kind = s_final_code(o->code) ? O_FAILED : O_RETRY;
    }
    if (h) json_decref(h);
    return 0;
}

/* Runs the request until it has an outcome other than busy. */
static void s_run(titan_jobs_consumer *c, s_entry *e, s_holder *h, redisReply **parts, int nparts, s_outcome *o)
{
    for (;;) {
        int rc = s_send(c, h, parts, nparts);
        if (rc == -EAGAIN) {
            /* the inproc pipe is full: as good as busy */
            s_nap(c, BUSY_RETRY_MS);
            if (s_stopping(c) || s_draining(c)) {
                o->kind = O_REVERT;
                return;
            }
            s_heartbeat(c, e);
            continue;
        }
        if (rc == 0) rc = s_receive(c, e, o);
        if (rc != 0) {
            o->kind = O_ABANDON;
            if (rc != -ECANCELED)
                titan_log(TITAN_LOG_ERROR, "jobs: cannot pass job %s to the worker: %s", e->id, zmq_strerror(-rc));
            return;
        }
        if (s_classify(o) == 0) return;
        /* busy: the entry stays pending (and ours) while the worker's queue is full */
        s_outcome_clear(o);
        s_nap(c, BUSY_RETRY_MS);
        if (s_stopping(c) || s_draining(c)) {
            o->kind = O_REVERT;
            return;
        }
        s_heartbeat(c, e);
    }
}

/* Runs a script until Redis has answered it, reconnecting as needed. Returns the reply, or NULL
 * once stop was asked for while Redis was away. */
static redisReply *s_cmd_persist(titan_jobs_consumer *c, int argc, const char **argv, const size_t *lens)
{
    for (;;) {
        if (s_connect(c) == 0) {
            redisReply *r = s_cmd(c, argc, argv, lens);
            if (r) return r;
        }
        if (s_stopping(c)) return NULL;
    }
}

/* Writes the outcome to the record and acknowledges the entry (one script). */
static void s_store(titan_jobs_consumer *c, s_entry *e, const s_outcome *o, int attempt)
{
    s_heartbeat(c, e); /* a large result takes a while to reach Redis */
    const char *argv[14 + MAX_REPLY_FRAMES];
    size_t lens[14 + MAX_REPLY_FRAMES];
    int n = 0;
    char now[32], ttl[16], rn[16];
    snprintf(now, sizeof(now), "%lld", s_unix_ms());
    snprintf(ttl, sizeof(ttl), "%d", c->ttl_s);
    bool done = o->kind == O_DONE;
    int nres = o->nframes > 0 ? o->nframes - 1 : 0;
    snprintf(rn, sizeof(rn), "%d", nres);
#define ARG(p, l) (argv[n] = (p), lens[n++] = (l))
#define ARGS(p) ARG(p, strlen(p))
    ARGS("EVAL");
    ARGS(s_store_lua);
    ARGS("2");
    ARGS(e->key);
    ARGS(c->stream[e->stream]);
    ARGS(c->group);
    ARGS(e->entry);
    ARGS(done ? "done" : "failed");
    ARGS(now);
    ARGS(ttl);
    if (o->nframes > 0) ARG(zmq_msg_data((zmq_msg_t *)&o->frames[0]), zmq_msg_size((zmq_msg_t *)&o->frames[0]));
    else ARGS("");
    ARGS(done ? "" : o->error);
    ARGS(done ? "" : o->code);
    ARGS(rn);
    for (int i = 1; i < o->nframes; i++)
        ARG(zmq_msg_data((zmq_msg_t *)&o->frames[i]), zmq_msg_size((zmq_msg_t *)&o->frames[i]));
#undef ARG
#undef ARGS
    redisReply *r = s_cmd_persist(c, n, argv, lens);
    if (!r) {
        titan_log(TITAN_LOG_WARN, "jobs: job %s: stopped before its outcome could be stored; it stays pending",
                  e->id);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR)
        titan_log(TITAN_LOG_WARN, "jobs: job %s: cannot store its outcome: %s; it stays pending", e->id, r->str);
    else if (done)
        titan_log_debug("jobs: job %s done (attempt %d)", e->id, attempt);
    else
        titan_log_debug("jobs: job %s failed (attempt %d, %s: %s)", e->id, attempt, o->code, o->error);
    freeReplyObject(r);
}

/* Runs a small script on the job's record (retry or revert); errors are logged. */
static void s_record_script(titan_jobs_consumer *c, const s_entry *e, const char *lua, const char *a1,
                            const char *a2)
{
    const char *argv[6] = {"EVAL", lua, "1", e->key, a1, a2};
    size_t lens[6];
    int argc = a2 ? 6 : 5;
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    redisReply *r = s_cmd_persist(c, argc, argv, lens);
    if (r && r->type == REDIS_REPLY_ERROR) titan_log(TITAN_LOG_WARN, "jobs: job %s: %s", e->id, r->str);
    if (r) freeReplyObject(r);
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

/* Step 3 of docs/JOBS.md for one stream entry, read from Redis at t_read (monotonic ms). */
static void s_process(titan_jobs_consumer *c, int stream, const redisReply *entry, double t_read)
{
    if (s_stopping(c) || s_draining(c)) return; /* not started: it stays pending for another worker */
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 1 || !s_is_str(entry->element[0])) return;
    s_entry e = {.stream = stream, .entry = entry->element[0]->str, .next_hb = t_read + c->visibility_ms / 3.0};
    const redisReply *fields = entry->elements >= 2 ? entry->element[1] : NULL;
    const redisReply *idr = NULL;
    if (fields && fields->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i + 1 < fields->elements; i += 2)
            if (s_is_str(fields->element[i]) && strcmp(fields->element[i]->str, "id") == 0)
                idr = fields->element[i + 1];
    if (!s_is_str(idr) || !s_valid_id(idr->str, idr->len)) {
        /* Nothing to run (an entry without a usable id, or one deleted from the stream). */
        titan_log(TITAN_LOG_WARN, "jobs: %s entry %s has no valid job id; acknowledged and skipped", c->stream[stream],
                  e.entry);
        redisReply *r = s_cmdv(c, "XACK", c->stream[stream], c->group, e.entry, (char *)NULL);
        if (r) freeReplyObject(r);
        return;
    }
    e.id = idr->str;
    snprintf(e.key, sizeof(e.key), "%s%s", c->job_prefix, e.id);

    char maxa[16], now[32], ttl[16];
    snprintf(maxa, sizeof(maxa), "%d", c->max_attempts);
    snprintf(now, sizeof(now), "%lld", s_unix_ms());
    snprintf(ttl, sizeof(ttl), "%d", c->ttl_s);
    redisReply *r = s_cmdv(c, "EVAL", s_start_lua, "3", e.key, c->stream[stream], c->dead, c->group, e.entry, maxa,
                           now, c->consumer, ttl, e.id, (char *)NULL);
    if (!r) return; /* Redis went away: the entry stays pending */
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !s_is_str(r->element[0])) {
        titan_log(TITAN_LOG_WARN, "jobs: job %s: cannot start it: %s", e.id,
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        return;
    }
    const char *what = r->element[0]->str;
    if (strcmp(what, "skip") == 0) {
        titan_log_debug("jobs: job %s skipped (%s)", e.id, s_is_str(r->element[1]) ? r->element[1]->str : "?");
        freeReplyObject(r);
        return;
    }
    if (strcmp(what, "dead") == 0) {
        titan_log(TITAN_LOG_WARN, "jobs: job %s moved to %s: %s", e.id, c->dead,
                  r->elements >= 3 && s_is_str(r->element[2]) ? r->element[2]->str : "too many attempts");
        freeReplyObject(r);
        return;
    }
    int attempt = s_is_str(r->element[1]) ? atoi(r->element[1]->str) : 0;
    s_outcome o;
    memset(&o, 0, sizeof(o));
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
        o.kind = O_FAILED;
        snprintf(o.code, sizeof(o.code), "bad_request");
        snprintf(o.error, sizeof(o.error), "the job record has no request header");
    } else if (nf < 0) {
        o.kind = O_FAILED;
        snprintf(o.code, sizeof(o.code), "bad_request");
        snprintf(o.error, sizeof(o.error), "the job record's nframes must be a number from 0 to %d",
                 MAX_JOB_FRAMES);
    } else if ((long)r->elements != 4 + nf) {
        o.kind = O_FAILED;
        snprintf(o.code, sizeof(o.code), "bad_request");
        snprintf(o.error, sizeof(o.error), "the job record lacks some of its %ld frames", nf);
    }
    for (long i = 0; o.kind == O_DONE && !o.error[0] && i < nf; i++) {
        if (!s_is_str(r->element[4 + i])) {
            o.kind = O_FAILED;
            snprintf(o.code, sizeof(o.code), "bad_request");
            snprintf(o.error, sizeof(o.error), "the job record lacks frame:%ld", i + 1);
        }
    }
    if (o.kind == O_FAILED) {
        titan_log(TITAN_LOG_WARN, "jobs: job %s attempt %d failed (%s): %s", e.id, attempt, o.code, o.error);
        s_store(c, &e, &o, attempt);
        freeReplyObject(r);
        return;
    }
    s_holder *h = calloc(1, sizeof(*h));
    if (!h) {
        o.kind = O_RETRY;
        snprintf(o.code, sizeof(o.code), "internal");
        snprintf(o.error, sizeof(o.error), "out of memory");
    } else {
        atomic_init(&h->refs, 1);
        h->reply = r;
        redisReply *parts[1 + MAX_JOB_FRAMES]; /* header, frame:1... */
        parts[0] = r->element[2];
        for (long i = 0; i < nf; i++) parts[1 + i] = r->element[4 + i];
        s_run(c, &e, h, parts, 1 + (int)nf, &o);
    }
    /* e.entry and e.id point into r, which h keeps alive until here */
    switch (o.kind) {
    case O_DONE:
    case O_FAILED:
        if (o.kind == O_FAILED)
            titan_log(TITAN_LOG_WARN, "jobs: job %s attempt %d failed (%s): %s", e.id, attempt, o.code, o.error);
        s_store(c, &e, &o, attempt);
        break;
    case O_RETRY:
        titan_log(TITAN_LOG_WARN, "jobs: job %s attempt %d of %d failed (%s): %s; %s", e.id, attempt,
                  c->max_attempts, o.code, o.error,
                  attempt < c->max_attempts ? "it stays pending for another attempt"
                                            : "it goes to the dead-letter stream when next picked up");
        s_record_script(c, &e, s_retry_lua, o.error, o.code);
        break;
    case O_REVERT:
        /* The worker is shutting down: the attempt did not run; another worker reclaims the entry. */
        s_record_script(c, &e, s_revert_lua, c->consumer, NULL);
        c->winding_down = true;
        titan_log(TITAN_LOG_INFO, "jobs: the worker is shutting down; taking no more jobs (job %s stays pending)",
                  e.id);
        break;
    case O_ABANDON:
        titan_log(TITAN_LOG_WARN, "jobs: job %s: stopped while it ran; it stays pending for another worker", e.id);
        break;
    }
    s_outcome_clear(&o);
    if (h) s_holder_release(h);
    else freeReplyObject(r);
}

/* ---- reading the queues ---- */

/* One XAUTOCLAIM step of the reclaim scan. Returns 1 when it processed an entry, 0 when the scan
 * of both streams is complete (or must wait), -1 on a Redis failure. */
static int s_reclaim(titan_jobs_consumer *c)
{
    char idle[16];
    snprintf(idle, sizeof(idle), "%d", c->visibility_ms);
    for (int s = 0; s < 2; s++) {
        while (!c->scanned[s] && !s_stopping(c) && !s_draining(c)) {
            redisReply *r = s_cmdv(c, "XAUTOCLAIM", c->stream[s], c->group, c->consumer, idle, c->cursor[s], "COUNT",
                                   "1", (char *)NULL);
            double t_read = s_mono_ms();
            if (!r) return -1;
            if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !s_is_str(r->element[0]) ||
                r->element[1]->type != REDIS_REPLY_ARRAY) {
                if (s_is_error(r, "NOGROUP")) {
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
            int got = 0;
            for (size_t i = 0; i < entries->elements && !s_stopping(c) && !s_draining(c); i++) {
                titan_log_debug("jobs: reclaimed an entry of %s idle over %d ms", c->stream[s], c->visibility_ms);
                s_process(c, s, entries->element[i], t_read);
                got = 1;
            }
            freeReplyObject(r);
            if (got) return 1;
        }
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

/* Reads new entries, high priority strictly first, and processes them. */
static void s_read(titan_jobs_consumer *c)
{
    redisReply *r = s_cmdv(c, "XREADGROUP", "GROUP", c->group, c->consumer, "COUNT", "1", "STREAMS",
                           c->stream[S_HIGH], ">", (char *)NULL);
    if (r && r->type == REDIS_REPLY_NIL) {
        freeReplyObject(r);
        long wait = (long)(c->next_reclaim - s_mono_ms());
        if (wait > BLOCK_MS) wait = BLOCK_MS;
        if (wait < 1) wait = 1; /* BLOCK 0 would wait forever */
        char block[16];
        snprintf(block, sizeof(block), "%ld", wait);
        r = s_cmdv(c, "XREADGROUP", "GROUP", c->group, c->consumer, "COUNT", "1", "BLOCK", block, "STREAMS",
                   c->stream[S_HIGH], c->stream[S_NORMAL], ">", ">", (char *)NULL);
    }
    double t_read = s_mono_ms();
    if (!r) return;
    if (r->type == REDIS_REPLY_ERROR) {
        if (s_is_error(r, "NOGROUP")) {
            /* The streams were deleted (or Redis came back empty): make the groups again. */
            titan_log(TITAN_LOG_WARN, "jobs: %s; creating the consumer groups again", r->str);
            s_ensure_groups(c);
        } else {
            titan_log(TITAN_LOG_WARN, "jobs: XREADGROUP failed: %s", r->str);
            s_nap(c, BACKOFF_MAX_MS);
        }
        freeReplyObject(r);
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *st = r->element[i];
            if (st->type != REDIS_REPLY_ARRAY || st->elements < 2 || !s_is_str(st->element[0]) ||
                st->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            int s = strcmp(st->element[0]->str, c->stream[S_HIGH]) == 0 ? S_HIGH : S_NORMAL;
            for (size_t k = 0; k < st->element[1]->elements; k++) {
                /* Entries already read stay pending if we stop here; they are reclaimed later. */
                if (s_stopping(c) || s_draining(c)) break;
                s_process(c, s, st->element[1]->element[k], t_read);
            }
        }
    }
    freeReplyObject(r);
}

static void *s_main(void *arg)
{
    titan_jobs_consumer *c = arg;
    for (int s = 0; s < 2; s++) snprintf(c->cursor[s], sizeof(c->cursor[s]), "0-0");
    while (!s_stopping(c)) {
        if (s_draining(c)) {
            s_nap(c, 100);
            continue;
        }
        if (s_connect(c) != 0) continue;
        if (s_mono_ms() >= c->next_reclaim && s_reclaim(c) > 0) continue;
        if (s_stopping(c) || s_draining(c) || !c->redis) continue;
        s_read(c);
    }
    s_disconnect(c);
    zmq_close(c->dealer);
    c->dealer = NULL;
    return NULL;
}

titan_jobs_consumer *titan_jobs_consumer_start(const titan_config *cfg, void *zmq_ctx, char *err, size_t errcap)
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
    if (!cfg->redis_url) {
        snprintf(err, errcap, "jobs: no --redis URL");
        goto fail;
    }
    if (s_url_parse(cfg->redis_url, &c->url, err, errcap) != 0) goto fail;
    if (cfg->redis_password) {
        if (strlen(cfg->redis_password) >= sizeof(c->url.password)) {
            snprintf(err, errcap, "--redis-password is too long");
            goto fail;
        }
        snprintf(c->url.password, sizeof(c->url.password), "%s", cfg->redis_password);
        c->url.has_password = true;
    }
    bool v6 = strchr(c->url.host, ':') != NULL;
    snprintf(c->url_text, sizeof(c->url_text), "redis://%s%s%s:%d/%d", v6 ? "[" : "", c->url.host, v6 ? "]" : "",
             c->url.port, c->url.db);
    const char *prefix = cfg->redis_prefix ? cfg->redis_prefix : "titan";
    snprintf(c->stream[S_HIGH], sizeof(c->stream[S_HIGH]), "{%s}:jobs:high", prefix);
    snprintf(c->stream[S_NORMAL], sizeof(c->stream[S_NORMAL]), "{%s}:jobs", prefix);
    snprintf(c->dead, sizeof(c->dead), "{%s}:dead", prefix);
    snprintf(c->job_prefix, sizeof(c->job_prefix), "{%s}:job:", prefix);
    snprintf(c->group, sizeof(c->group), "%s", cfg->jobs_group ? cfg->jobs_group : "titan-workers");
    char host[256] = "localhost";
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    snprintf(c->consumer, sizeof(c->consumer), "%s:%d", host, (int)getpid());
    c->visibility_ms = cfg->visibility_timeout_ms > 0 ? cfg->visibility_timeout_ms : 60000;
    c->max_attempts = cfg->max_attempts > 0 ? cfg->max_attempts : 3;
    c->ttl_s = cfg->result_ttl_s > 0 ? cfg->result_ttl_s : 86400;
    c->backoff_ms = BACKOFF_MIN_MS;

    c->dealer = zmq_socket(zmq_ctx, ZMQ_DEALER);
    int linger = 0;
    if (!c->dealer || zmq_setsockopt(c->dealer, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
        zmq_connect(c->dealer, TITAN_SERVER_INPROC) != 0) {
        snprintf(err, errcap, "jobs: cannot connect to %s: %s", TITAN_SERVER_INPROC, zmq_strerror(zmq_errno()));
        goto fail;
    }
    titan_log(TITAN_LOG_INFO, "jobs: consuming %s and %s (group %s, consumer %s) from %s", c->stream[S_HIGH],
              c->stream[S_NORMAL], c->group, c->consumer, c->url_text);
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
    pthread_mutex_destroy(&c->lock);
    memset(c->url.password, 0, sizeof(c->url.password));
    free(c);
    *cp = NULL;
}
